//! `--format json` on every command: each leaf of the command tree (`om <svc> ...` is in
//! it as `om service <svc> ...`; walked from clap, so a new command fails here until it is
//! listed) runs
//! against two real daemons, and its output parses as JSON: stdout on success, the error
//! object `{"error", "exit", "code"}` on stderr on failure, with the documented exit code.
//! Commands that stream print one document per line. The few commands whose output is by
//! nature not JSON are listed with the reason.

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;
use om::cli::local::LocalCluster;
use serde_json::Value;

/// Commands whose output is not a document: what they print instead.
const NOT_JSON: &[(&str, &str)] = &[
    (
        "node daemon run",
        "runs the daemon in the foreground: its output is the log",
    ),
    (
        "demo",
        "a narrated walk through a local cluster, until Ctrl-C",
    ),
    (
        "bench",
        "a long measurement (its --format json is checked by tests/operator.rs)",
    ),
    ("completion", "a shell script"),
    ("man", "a roff man page"),
    (
        "node control work results",
        "the unit's stdout byte for byte, as receptorctl's `work results`",
    ),
];

fn leaves(c: &clap::Command, path: &mut Vec<String>, out: &mut BTreeSet<String>) {
    let subs: Vec<&clap::Command> = c
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .collect();
    if subs.is_empty() {
        out.insert(path.join(" "));
    }
    for s in subs {
        path.push(s.get_name().to_string());
        leaves(s, path, out);
        path.pop();
    }
}

/// Every command of the tree (`om <svc> X` is `service X` there).
fn every_command() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    leaves(&om::cli::Cli::command(), &mut Vec::new(), &mut out);
    out
}

/// Runs `om --format json ARGS` on `root`; checks the output is JSON of the right kind and
/// the exit code is `code`; returns the document.
fn run(root: &Path, args: &[&str], code: i32) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(root)
        .arg("--format")
        .arg("json")
        .args(args)
        .env("EDITOR", "true")
        .output()
        .expect("run om");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let got = out.status.code().unwrap_or(-1);
    assert_eq!(
        got, code,
        "om {args:?}: exit {got}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    if code == 0 {
        parse(&stdout)
            .unwrap_or_else(|e| panic!("om {args:?}: stdout is not JSON ({e}):\n{stdout}"))
    } else {
        let v: Value = serde_json::from_str(&stderr)
            .unwrap_or_else(|e| panic!("om {args:?}: stderr is not JSON ({e}):\n{stderr}"));
        assert!(
            v["error"].is_string() && v["code"].is_i64(),
            "om {args:?}: {v}"
        );
        assert_eq!(v["code"], code, "om {args:?}: {v}");
        v
    }
}

/// One document, or one per line (the commands that stream: `node events`, `<svc> logs`),
/// returned as an array.
fn parse(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(text).or_else(|e| {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() < 2 {
            return Err(e);
        }
        let docs: Result<Vec<Value>, _> = lines.iter().map(|l| serde_json::from_str(l)).collect();
        docs.map(Value::Array)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_speaks_json() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 2, None).unwrap();
    let conf = c.nodes[0].paths.node_conf();
    let text = std::fs::read_to_string(&conf).unwrap() + "\n[worktype#cat]\ncommand = cat\n";
    std::fs::write(&conf, text).unwrap();
    c.start_all().await.unwrap();
    c.join_all(&mut |_| {}).await.unwrap();
    let r1 = c.nodes[0].paths.root.clone();
    let r2 = c.nodes[1].paths.root.clone();
    let base = c.base().to_path_buf();
    let file = |name: &str, text: &str| {
        let p = base.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let svc_conf = file("web.conf", "[DEFAULT]\nnodes = n1 n2\n");
    let payload = file("payload", "hello\n");
    let backup = base.join("backup.snap").to_str().unwrap().to_string();
    let unit_dir = base.join("units");
    std::fs::create_dir_all(&unit_dir).unwrap();
    let unit_dir = unit_dir.to_str().unwrap().to_string();
    let mut ran = BTreeSet::new();
    let mut step = |path: &str, root: &Path, args: &[&str], code: i32| -> Value {
        ran.insert(path.to_string());
        run(root, args, code)
    };

    step("version", &r1, &["version"], 0);
    step("node daemon status", &r1, &["node", "daemon", "status"], 0);
    step("node daemon health", &r1, &["node", "daemon", "health"], 0);
    let args = [
        "node",
        "daemon",
        "install",
        "--print",
        "--unit-dir",
        &unit_dir,
    ];
    step("node daemon install", &r1, &args, 0);
    step(
        "node daemon blacklist status",
        &r1,
        &["node", "daemon", "blacklist", "status"],
        0,
    );
    step(
        "node daemon blacklist clear",
        &r1,
        &["node", "daemon", "blacklist", "clear"],
        0,
    );
    step("node events", &r1, &["node", "events", "--since", "0"], 0);
    step(
        "node get",
        &r1,
        &["node", "get", "--param", "listener.port"],
        0,
    );
    step(
        "node set",
        &r1,
        &["node", "set", "--param", "nope.x", "--value", "1"],
        2,
    );
    let args = [
        "node",
        "set",
        "--param",
        "node.log_level",
        "--value",
        "debug",
    ];
    step("node set", &r1, &args, 0);
    step(
        "node unset",
        &r1,
        &["node", "unset", "--param", "node.log_level"],
        0,
    );
    step("node print", &r1, &["node", "print", "config"], 0);
    step("node edit", &r1, &["node", "edit", "config"], 0);
    step("node dequeue", &r1, &["node", "dequeue", "actions"], 0);
    step(
        "node control status",
        &r1,
        &["node", "control", "status"],
        0,
    );
    step(
        "node control ping",
        &r1,
        &["node", "control", "ping", "n2"],
        0,
    );
    step(
        "node control traceroute",
        &r1,
        &["node", "control", "traceroute", "n2"],
        0,
    );
    step(
        "node control reload",
        &r1,
        &["node", "control", "reload"],
        0,
    );
    let args = [
        "node",
        "control",
        "work",
        "submit",
        "cat",
        "--payload",
        &payload,
    ];
    let unit = step("node control work submit", &r1, &args, 0);
    let unit = unit["unitid"].as_str().expect("a unit id").to_string();
    step(
        "node control work list",
        &r1,
        &["node", "control", "work", "list"],
        0,
    );
    step(
        "node control work cancel",
        &r1,
        &["node", "control", "work", "cancel", &unit],
        1, // it is over already: a JSON error
    );
    let args = ["node", "control", "work", "release", &unit];
    step("node control work release", &r1, &args, 0);
    step("node freeze", &r1, &["node", "freeze"], 0);
    step("node thaw", &r1, &["node", "thaw"], 0);
    step("node standby", &r2, &["node", "standby", "--wait", "10"], 0);
    step("node welcome", &r2, &["node", "welcome"], 0);

    step(
        "service create",
        &r1,
        &["web", "create", "--config", &svc_conf],
        0,
    );
    step("svc ls", &r1, &["svc", "ls"], 0);
    step("service print config", &r1, &["web", "print", "config"], 0);
    step("service print status", &r1, &["web", "print", "status"], 0);
    step("service status", &r1, &["web", "status"], 0);
    step("service edit config", &r1, &["web", "edit", "config"], 0);
    step("service start", &r1, &["web", "start"], 0);
    step("service switch", &r1, &["web", "switch", "--to", "n2"], 0);
    step("service giveback", &r1, &["web", "giveback"], 0);
    step("service freeze", &r1, &["web", "freeze"], 0);
    step("service thaw", &r1, &["web", "thaw"], 0);
    step("service stop", &r1, &["web", "stop"], 0);
    step("service abort", &r1, &["web", "abort"], 0);
    step("service clear", &r1, &["web", "clear"], 0);
    step("service logs", &r1, &["web", "logs"], 0);
    step("service run", &r1, &["web", "run", "status"], 0);
    let job = step("service run", &r1, &["web", "run", "status", "--async"], 0);
    let job = job["job_id"].as_str().expect("a job id").to_string();
    step("node jobs list", &r1, &["node", "jobs", "list"], 0);
    step("node jobs show", &r1, &["node", "jobs", "show", &job], 0);
    step(
        "node jobs cancel",
        &r1,
        &["node", "jobs", "cancel", "no-such-job"],
        2,
    );
    step("service delete", &r1, &["web", "delete"], 0);

    step(
        "cluster set",
        &r1,
        &[
            "cluster",
            "set",
            "--param",
            "cluster.join",
            "--value",
            "open",
        ],
        0,
    );
    step(
        "cluster get",
        &r1,
        &["cluster", "get", "--param", "cluster.join"],
        0,
    );
    step(
        "cluster unset",
        &r1,
        &["cluster", "unset", "--param", "cluster.join"],
        0,
    );
    step("cluster approve", &r1, &["cluster", "approve", "n9"], 0);
    step(
        "cluster join-requests",
        &r1,
        &["cluster", "join-requests"],
        0,
    );
    let doc = step("cluster config get", &r1, &["cluster", "config", "get"], 0);
    let doc = file("config.json", &doc["config"].to_string());
    let args = ["cluster", "config", "set", &doc, "--dry-run"];
    step("cluster config set", &r1, &args, 0);
    step(
        "cluster secret list",
        &r1,
        &["cluster", "secret", "list"],
        0,
    );
    step("cluster secret add", &r1, &["cluster", "secret", "add"], 0);
    step(
        "cluster secret use",
        &r1,
        &["cluster", "secret", "use", "00000000"],
        2,
    );
    step(
        "cluster secret remove",
        &r1,
        &["cluster", "secret", "remove", "00000000"],
        2,
    );
    step(
        "cluster snapshot save",
        &r1,
        &["cluster", "snapshot", "save", &backup],
        0,
    );
    step(
        "cluster snapshot status",
        &r1,
        &["cluster", "snapshot", "status", &backup],
        0,
    );
    step(
        "cluster snapshot restore",
        &r1,
        &["cluster", "snapshot", "restore", &backup],
        1,
    );

    let n1 = c.nodes[0].addr();
    step(
        "node daemon join",
        &r2,
        &["node", "daemon", "join", "--node", &n1],
        2,
    );
    let args = ["node", "daemon", "stop", "--thread-id", "scheduler"];
    step("node daemon stop", &r2, &args, 0);
    let args = ["node", "daemon", "start", "--thread-id", "scheduler"];
    step("node daemon start", &r2, &args, 0);
    step(
        "node daemon restart",
        &r2,
        &["node", "daemon", "restart"],
        0,
    );
    step(
        "node daemon leave",
        &r1,
        &["node", "daemon", "leave", "--node", "n2", "--force"],
        0,
    );
    step(
        "node daemon shutdown",
        &r2,
        &["node", "daemon", "shutdown"],
        0,
    );

    let listed: BTreeSet<String> = NOT_JSON.iter().map(|(c, _)| c.to_string()).collect();
    let missing: Vec<String> = every_command()
        .into_iter()
        .filter(|c| !ran.contains(c) && !listed.contains(c))
        .collect();
    assert!(
        missing.is_empty(),
        "commands not checked for JSON: {missing:?}"
    );
}
