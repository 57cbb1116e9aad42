//! Receptor's control service on real `om` daemons: the greeting, the text and JSON command
//! forms next to the agent API's `{action, options}`, `status`, `ping`, `traceroute`,
//! `reload`, and work units submitted here and on a peer, read from an offset after the
//! executing node was killed and restarted, canceled, released, force-released; the
//! adversary's lines (10 MB, `../` ids, unknown work types, payloads over the limit).
//! One three-node cluster serves every check, to keep the test short.

use std::time::Duration;
use std::time::Instant;

use om::cli::local::LocalCluster;
use om::cli::local::LocalNode;
use serde_json::json;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;

const T: Duration = Duration::from_secs(15);

const WORKTYPES: &str = "
[worktype#cat]
command = cat

[worktype#echo]
command = echo
params = true

[worktype#slow]
command = sleep 300
";

/// An open control connection, past the greeting.
struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    greeting: String,
}

impl Conn {
    async fn open(node: &LocalNode) -> Conn {
        let s = UnixStream::connect(node.paths.control_socket())
            .await
            .expect("connect to the control socket");
        let (rd, wr) = s.into_split();
        let mut c = Conn {
            rd: BufReader::new(rd),
            wr,
            greeting: String::new(),
        };
        c.greeting = c.line().await;
        c
    }

    async fn send(&mut self, line: &str) {
        self.wr.write_all(line.as_bytes()).await.unwrap();
        self.wr.write_all(b"\n").await.unwrap();
    }

    async fn line(&mut self) -> String {
        let mut s = String::new();
        tokio::time::timeout(T, self.rd.read_line(&mut s))
            .await
            .expect("an answer in time")
            .unwrap();
        s.trim_end().to_string()
    }

    async fn ask(&mut self, line: &str) -> String {
        self.send(line).await;
        self.line().await
    }

    /// Everything until the server closes the connection.
    async fn rest(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        tokio::time::timeout(T, self.rd.read_to_end(&mut out))
            .await
            .expect("the stream ends in time")
            .unwrap();
        out
    }
}

/// One command on a new connection; its answer line.
async fn ask(node: &LocalNode, line: &str) -> String {
    Conn::open(node).await.ask(line).await
}

/// One command answered with JSON.
async fn ask_json(node: &LocalNode, line: &str) -> Value {
    let a = ask(node, line).await;
    serde_json::from_str(&a).unwrap_or_else(|e| panic!("{line}: not JSON ({e}): {a}"))
}

/// `work submit`: sends `line`, the payload, EOF; returns the unit id or the error line.
async fn submit(node: &LocalNode, line: &str, payload: &[u8]) -> Result<String, String> {
    let mut c = Conn::open(node).await;
    let first = c.ask(line).await;
    if first.starts_with("ERROR") {
        return Err(first);
    }
    assert!(first.starts_with("Work unit created with ID "), "{first}");
    // A payload over the limit is refused while it is being sent: the write may fail.
    let _ = c.wr.write_all(payload).await;
    let _ = c.wr.shutdown().await;
    let last = c.line().await;
    let v: Value = serde_json::from_str(&last).map_err(|_| last.clone())?;
    assert_eq!(v["result"], "Job Started", "{v}");
    Ok(v["unitid"].as_str().unwrap().to_string())
}

/// `work results`: the stdout bytes from `pos` (after the "Streaming results" line).
async fn results(node: &LocalNode, id: &str, pos: u64) -> String {
    let mut c = Conn::open(node).await;
    let head = c.ask(&format!("work results {id} {pos}")).await;
    assert_eq!(head, format!("Streaming results for work unit {id}"));
    String::from_utf8(c.rest().await).unwrap()
}

async fn unit(node: &LocalNode, id: &str) -> Value {
    ask_json(node, &format!("work list {id}")).await
}

async fn until_state(node: &LocalNode, id: &str, state: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let u = unit(node, id).await;
        if u["StateName"] == state {
            return u;
        }
        assert!(t0.elapsed() < T, "unit {id} never {state}: {u}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn three_nodes() -> LocalCluster {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 3, None).unwrap();
    for n in &c.nodes {
        let conf = n.paths.node_conf();
        let text = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, text + WORKTYPES).unwrap();
    }
    c.start_all().await.unwrap();
    c.join_all(&mut |_| {}).await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receptor_commands_and_work_units_on_a_three_node_cluster() {
    let t_all = Instant::now();
    let c = three_nodes().await;
    let bin = c.bin.clone();
    let n1 = &c.nodes[0];

    commands_in_both_forms(n1).await;
    adversary_lines(n1).await;
    local_units(n1).await;
    reload_reports(n1).await;
    connect_relays(n1).await;
    cli(n1).await;
    python_client(n1).await;
    opensvc_rows(n1, &c.nodes[1]).await;
    link_down(&c.nodes[0], &c.nodes[2]).await;

    // A unit on n2, submitted from n1 (JSON form, with a ttl), and one that never ends.
    let done = submit(
        n1,
        r#"{"command":"work","subcommand":"submit","node":"n2","worktype":"cat","ttl":"30s"}"#,
        b"0123456789",
    )
    .await
    .unwrap();
    let st = until_state(n1, &done, "Succeeded").await;
    assert_eq!(st["Node"], "n2", "{st}");
    let running = submit(n1, "work submit n2 slow", b"").await.unwrap();
    until_state(n1, &running, "Running").await;
    let stray = submit(n1, "work submit n2 slow", b"").await.unwrap();
    assert!(ask(n1, "work submit n2 nope")
        .await
        .starts_with("Work unit created"));
    let e = submit(n1, "work submit n2 nope", b"x").await.unwrap_err();
    assert!(e.contains("worktype \"nope\" is not offered by n2"), "{e}");

    // n2 dies and comes back: the finished unit's stdout is read from an offset through
    // n1; the unit that was running is failed with the reason.
    let mut c = c;
    c.nodes[1].kill();
    let e = ask(&c.nodes[0], &format!("work release {stray}")).await;
    assert!(e.starts_with("ERROR") && e.contains("force-release"), "{e}");
    assert_eq!(
        ask_json(&c.nodes[0], &format!("work force-release {stray}")).await,
        json!({ "released": stray })
    );
    let listed = ask_json(&c.nodes[0], "work list").await;
    assert!(
        listed[&running]["Detail"]
            .as_str()
            .unwrap()
            .contains("last known"),
        "{listed}"
    );
    c.nodes[1].start(&bin).unwrap();
    c.nodes[1].wait_ready(T).await.unwrap();
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    assert_eq!(results(n1, &done, 3).await, "3456789");
    assert_eq!(results(n2, &done, 8).await, "89");
    let failed = until_state(n1, &running, "Failed").await;
    assert!(
        failed["Detail"]
            .as_str()
            .unwrap()
            .contains("daemon stopped"),
        "{failed}"
    );
    assert_eq!(
        ask_json(n1, &format!("work release {done}")).await,
        json!({ "released": done })
    );
    assert!(ask(n2, &format!("work list {done}"))
        .await
        .contains("unknown unitid"));
    let e = ask(n1, &format!("work results {done} 0")).await;
    assert!(
        e.starts_with("ERROR") && e.contains("unknown unitid"),
        "{e}"
    );
    println!("control test: {:?}", t_all.elapsed());
}

/// `status`, `ping`, `traceroute` in the text and the JSON forms, and `{action, options}`
/// on the same connection.
async fn commands_in_both_forms(n1: &LocalNode) {
    let mut conn = Conn::open(n1).await;
    assert_eq!(conn.greeting, "Receptor Control, node n1");
    let st: Value = serde_json::from_str(&conn.ask("status").await).unwrap();
    assert_eq!(st["NodeID"], "n1");
    assert!(st["SystemCPUCount"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["SystemMemoryMiB"].as_u64().unwrap() > 0, "{st}");
    let conns = st["Connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2, "{st}");
    assert_eq!(conns[0]["NodeID"], "n2");
    assert!(conns[0]["Cost"].as_f64().unwrap() > 0.0, "{st}");
    assert_eq!(st["RoutingTable"]["n2"], "n2");
    let ads = st["Advertisements"].as_array().unwrap();
    let n2_ad = ads
        .iter()
        .find(|a| a["NodeID"] == "n2")
        .expect("n2 advertised");
    let types: Vec<&str> = n2_ad["WorkCommands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["WorkType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["cat", "echo", "slow"], "{st}");
    let st: Value = serde_json::from_str(&conn.ask(r#"{"command":"status"}"#).await).unwrap();
    assert_eq!(st["NodeID"], "n1");
    // What receptorctl asks first.
    let v: Value = serde_json::from_str(
        &conn
            .ask(r#"{"command":"status","requested_fields":["Version"]}"#)
            .await,
    )
    .unwrap();
    assert_eq!(v, json!({ "Version": env!("CARGO_PKG_VERSION") }));
    let e = conn.ask(r#"{"command":"work","subcommand":"submit","node":"n2","worktype":"cat","signwork":"true"}"#).await;
    assert!(e.starts_with("ERROR: signwork"), "{e}");
    // What receptorctl asks first.
    let v: Value = serde_json::from_str(
        &conn
            .ask(r#"{"command":"status","requested_fields":["Version"]}"#)
            .await,
    )
    .unwrap();
    assert_eq!(v, json!({ "Version": env!("CARGO_PKG_VERSION") }));
    let api: Value = serde_json::from_str(
        &conn
            .ask(r#"{"action":"daemon_status","options":{"local":true}}"#)
            .await,
    )
    .unwrap();
    assert_eq!(
        (api["status"].as_i64(), &api["data"]["node"]),
        (Some(0), &json!("n1"))
    );
    let p: Value = serde_json::from_str(&conn.ask("ping n2").await).unwrap();
    assert_eq!(
        (&p["Success"], &p["From"]),
        (&json!(true), &json!("n2")),
        "{p}"
    );
    assert!(p["TimeMs"].as_f64().unwrap() > 0.0);
    let p: Value =
        serde_json::from_str(&conn.ask(r#"{"command":"ping","target":"localhost"}"#).await)
            .unwrap();
    assert_eq!(p["From"], "n1", "{p}");
    let p: Value = serde_json::from_str(&conn.ask("ping n9").await).unwrap();
    assert_eq!(p["Success"], false);
    assert!(
        p["Error"].as_str().unwrap().contains("members: n1, n2, n3"),
        "{p}"
    );
    let tr: Value = serde_json::from_str(&conn.ask("traceroute n2").await).unwrap();
    assert_eq!(
        (&tr["0"]["From"], &tr["1"]["From"]),
        (&json!("n1"), &json!("n2")),
        "{tr}"
    );
}

/// Lines an adversary sends: each gets an `ERROR` naming what is wrong.
async fn adversary_lines(n1: &LocalNode) {
    let mut conn = Conn::open(n1).await;
    for (line, want) in [
        ("fly", "unknown command \"fly\""),
        (
            "work cancel ../../etc/passwd",
            "unitid \"../../etc/passwd\"",
        ),
        ("work results abc -1", "startpos"),
        ("work list zzz", "unknown unitid \"zzz\""),
        ("ping", "missing parameter target"),
        (
            r#"{"command":"work","subcommand":"submit","node":"n1","worktype":"cat","user":"root"}"#,
            "unknown parameter \"user\"",
        ),
        (
            "work submit localhost nope",
            "worktype \"nope\" is not offered by n1; its work types: cat, echo, slow",
        ),
        ("work submit ../n2 cat", "node \"../n2\""),
    ] {
        let a = conn.ask(line).await;
        assert!(a.starts_with("ERROR: ") && a.contains(want), "{line}: {a}");
    }
    // An `{action}` line with a bad body keeps the agent API's answer shape.
    let a: Value = serde_json::from_str(&conn.ask(r#"{"action":"nope"}"#).await).unwrap();
    assert_eq!(a["status"], 2, "{a}");
    // 10 MB without a newline: refused, and the connection is closed.
    let big = vec![b'a'; 10 << 20];
    let _ = conn.wr.write_all(&big).await;
    let a = conn.line().await;
    assert!(a.starts_with("ERROR: line longer than"), "{a}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(T, conn.rd.read_to_end(&mut rest))
        .await
        .unwrap();
    // Closed with our unread bytes in its buffer: the end or a reset, nothing more.
    assert!(closed.is_err() || rest.is_empty(), "{closed:?}");
    // Connections are capped: the one past the cap is told so.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut held = Vec::new();
    for _ in 0..om::control::MAX_CONNS {
        held.push(Conn::open(n1).await);
    }
    assert!(held
        .iter()
        .all(|c| c.greeting == "Receptor Control, node n1"));
    let refused = Conn::open(n1).await;
    assert_eq!(
        refused.greeting,
        "ERROR: 256 control connections are open, the most served at once"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ask(n1, "status").await.starts_with('{'));
    // A payload over the 8 MiB limit.
    let e = submit(n1, "work submit localhost cat", &vec![b'x'; (8 << 20) + 1])
        .await
        .unwrap_err();
    assert!(e.contains("payload: more than 8388608 bytes"), "{e}");
}

/// Units on the node that is asked: results, params, cancel of a command that never ends.
async fn local_units(n1: &LocalNode) {
    let id = submit(n1, "work submit localhost cat", b"hello\nworld\n")
        .await
        .unwrap();
    assert_eq!(results(n1, &id, 0).await, "hello\nworld\n");
    assert_eq!(results(n1, &id, 6).await, "world\n");
    assert_eq!(results(n1, &id, 100).await, "");
    let st = unit(n1, &id).await;
    assert_eq!(
        (st["State"].as_u64(), st["StdoutSize"].as_u64()),
        (Some(2), Some(12)),
        "{st}"
    );
    let echo = submit(
        n1,
        r#"{"command":"work","subcommand":"submit","node":"localhost","worktype":"echo","params":"a;b $(id)"}"#,
        b"",
    )
    .await
    .unwrap();
    assert_eq!(results(n1, &echo, 0).await, "a;b $(id)\n");
    let e = submit(
        n1,
        r#"{"command":"work","subcommand":"submit","node":"localhost","worktype":"cat","params":"-n"}"#,
        b"",
    )
    .await
    .unwrap_err();
    assert!(e.contains("params: work type cat takes none"), "{e}");
    // A command that never ends: its results follow until it is canceled.
    let slow = submit(n1, "work submit localhost slow", b"").await.unwrap();
    until_state(n1, &slow, "Running").await;
    let follower = {
        let mut c = Conn::open(n1).await;
        c.ask(&format!("work results {slow} 0")).await;
        tokio::spawn(async move { c.rest().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !follower.is_finished(),
        "results of a running unit follow it"
    );
    assert_eq!(
        ask_json(n1, &format!("work cancel {slow}")).await,
        json!({ "cancelled": slow })
    );
    assert!(follower.await.unwrap().is_empty());
    assert_eq!(unit(n1, &slow).await["StateName"], "Canceled");
    let e = ask(n1, &format!("work cancel {slow}")).await;
    assert!(e.contains("only a pending or running unit"), "{e}");
    for u in [&id, &echo, &slow] {
        assert_eq!(
            ask_json(n1, &format!("work release {u}")).await,
            json!({ "released": u })
        );
    }
}

/// `reload` says what it applied and what needs a restart.
async fn reload_reports(n1: &LocalNode) {
    // The watcher would apply the edit on its own: stopped, so `reload` is what applies it.
    n1.call("daemon_stop", json!({"thread_id": "watcher"}), T)
        .await
        .unwrap();
    let conf = n1.paths.node_conf();
    let before = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        format!("{before}\n[worktype#late]\ncommand = wc -c\n"),
    )
    .unwrap();
    let r = ask_json(n1, "reload").await;
    assert_eq!(r["Applied"], json!(["worktype#late.command"]), "{r}");
    let id = submit(n1, "work submit localhost late", b"abc")
        .await
        .unwrap();
    assert_eq!(results(n1, &id, 0).await.trim(), "3");
    ask(n1, &format!("work release {id}")).await;
    let renamed = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("name = n1", "name = n1b");
    std::fs::write(&conf, renamed).unwrap();
    let e = ask(n1, "reload").await;
    assert!(
        e.starts_with("ERROR") && e.contains("needs a daemon restart"),
        "{e}"
    );
    std::fs::write(&conf, &before).unwrap();
    let r = ask_json(n1, r#"{"command":"reload"}"#).await;
    assert_eq!(r["Applied"], json!(["worktype#late.command"]), "{r}");
    n1.call("daemon_start", json!({"thread_id": "watcher"}), T)
        .await
        .unwrap();
}

/// `connect n2 control`: n2's greeting, then n2 answers; `localhost` greets again.
async fn connect_relays(n1: &LocalNode) {
    let mut conn = Conn::open(n1).await;
    assert_eq!(conn.ask("connect localhost control").await, "Connecting");
    assert_eq!(conn.line().await, "Receptor Control, node n1");
    // receptorctl sends its tlsclient, `None` when it has none.
    assert_eq!(conn.ask("connect n2 control None").await, "Connecting");
    assert_eq!(conn.line().await, "Receptor Control, node n2");
    let st: Value = serde_json::from_str(&conn.ask("status").await).unwrap();
    assert_eq!(st["NodeID"], "n2");
    let p: Value = serde_json::from_str(&conn.ask("ping localhost").await).unwrap();
    assert_eq!(p["From"], "n2", "localhost is the node that answers: {p}");
    let e = conn.ask("work list ../x").await;
    assert!(e.starts_with("ERROR: unitid"), "{e}");
    let e = conn.ask("work submit n3 cat").await;
    assert!(
        e.contains("through `connect n2`, a unit is submitted to n2"),
        "{e}"
    );
    let e = conn.ask("connect n3 control").await;
    assert!(e.starts_with("ERROR") && e.contains("not relayed"), "{e}");
    // A unit submitted through the session is n2's: it runs there, n1 keeps no record.
    let created = conn.ask("work submit localhost cat").await;
    let id = created
        .strip_prefix("Work unit created with ID ")
        .and_then(|r| r.strip_suffix(". Send stdin data and EOF."))
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();
    conn.wr.write_all(b"over the bridge").await.unwrap();
    conn.wr.shutdown().await.unwrap();
    let done: Value = serde_json::from_str(&conn.line().await).unwrap();
    assert_eq!(done["unitid"], json!(id));
    let mut conn = Conn::open(n1).await;
    conn.ask("connect n2 control").await;
    conn.line().await;
    let head = conn.ask(&format!("work results {id} 5")).await;
    assert_eq!(head, format!("Streaming results for work unit {id}"));
    assert_eq!(
        String::from_utf8(conn.rest().await).unwrap(),
        "over the bridge"[5..]
    );
    assert!(ask(n1, &format!("work list {id}"))
        .await
        .contains("unknown unitid"));
    let mut conn = Conn::open(n1).await;
    conn.ask("connect n2 control").await;
    conn.line().await;
    let st: Value = serde_json::from_str(&conn.ask(&format!("work list {id}")).await).unwrap();
    assert_eq!(
        (&st["StateName"], &st["Node"]),
        (&json!("Succeeded"), &json!("n2")),
        "{st}"
    );
    let e = conn.ask("work results zzz 0").await;
    assert!(e.contains("unknown unitid \"zzz\" on n2"), "{e}");
    let r: Value = serde_json::from_str(&conn.ask(&format!("work release {id}")).await).unwrap();
    assert_eq!(r, json!({ "released": id }));
    let e = ask(n1, "connect n9 control").await;
    assert!(
        e.starts_with("ERROR") && e.contains("not a cluster member"),
        "{e}"
    );
}

/// Runs `om --root <n1> args...`, with `stdin` as its standard input.
async fn om(node: &LocalNode, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(&node.paths.root)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `om node control ...` in receptorctl's shape, tables and JSON.
async fn cli(n1: &LocalNode) {
    let (code, out, err) = om(n1, &["node", "control", "status"], b"").await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("Node ID: n1\n") && out.contains("cat, echo, slow"),
        "{out}"
    );
    let (_, out, _) = om(
        n1,
        &[
            "--format", "json", "node", "control", "--node", "n2", "status",
        ],
        b"",
    )
    .await;
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["NodeID"], "n2");
    let (code, out, _) = om(
        n1,
        &[
            "node",
            "control",
            "ping",
            "n2",
            "--count",
            "2",
            "--delay-ms",
            "10",
        ],
        b"",
    )
    .await;
    assert_eq!(
        (code, out.matches("Reply from n2 in ").count()),
        (0, 2),
        "{out}"
    );
    let (code, _, err) = om(n1, &["node", "control", "ping", "n9", "--count", "1"], b"").await;
    assert!(code != 0 && err.contains("no reply from n9"), "{err}");
    let (code, out, err) = om(
        n1,
        &[
            "--format",
            "json",
            "node",
            "control",
            "--node",
            "n2",
            "work",
            "submit",
            "cat",
            "--payload",
            "-",
        ],
        b"through the cli",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap()["unitid"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, out, _) = om(
        n1,
        &["node", "control", "work", "results", &id, "--startpos", "8"],
        b"",
    )
    .await;
    assert_eq!(out, "the cli");
    let (_, out, _) = om(
        n1,
        &["node", "control", "--node", "n2", "work", "list"],
        b"",
    )
    .await;
    assert!(out.contains(&id) && out.contains("Succeeded"), "{out}");
    let (code, out, err) = om(n1, &["node", "control", "work", "release", &id], b"").await;
    assert_eq!(
        (code, out.trim()),
        (0, format!("Released {id}").as_str()),
        "{err}"
    );
    let (code, _, err) = om(n1, &["node", "control", "work", "cancel", "../x"], b"").await;
    assert!(code != 0 && err.contains("unitid \"../x\""), "{err}");
    let (code, out, err) = om(
        n1,
        &[
            "node", "control", "work", "submit", "echo", "--params", "x y", "-f",
        ],
        b"",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Result: Job Started") && out.ends_with("x y\n"),
        "{out}"
    );
}

/// The Python client class against the real node.
async fn python_client(n1: &LocalNode) {
    let script = r#"
import json, os, sys
from om_control import OmControl, ControlError
c = OmControl(os.environ["OM_SOCK"])
c.connect()
out = {"node": c.node_id, "status": c.simple_command("status")["NodeID"]}
out["ping"] = c.simple_command({"command": "ping", "target": "n2"})["From"]
out["api"] = c.api("daemon_status", {"local": True})["data"]["node"]
unit = c.submit_work("cat", b"py payload", node="n2")["unitid"]
out["results"] = c.get_work_results(unit, 3).decode()
out["state"] = c.simple_command("work list " + unit)["StateName"]
try:
    c.simple_command("work cancel ../etc")
except ControlError as e:
    out["error"] = str(e)
out["released"] = c.simple_command("work release " + unit)["released"] == unit
c.connect_to_service("n2")
out["relayed"] = c.simple_command("status")["NodeID"]
print(json.dumps(out))
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env(
            "PYTHONPATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python"),
        )
        .env("OM_SOCK", n1.paths.control_socket())
        .output()
        .await
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        v,
        json!({
            "node": "n1", "status": "n1", "ping": "n2", "api": "n1",
            "results": "payload", "state": "Succeeded",
            "error": "unitid \"../etc\": expected 1 to 32 ASCII letters and digits",
            "released": true, "relayed": "n2",
        })
    );
}

const SVC: &str = "[DEFAULT]
nodes = n1 n2
orchestrate = no

[app#1]
start = true
stop = true
check = false

[task#compliance]
command = printf '%s|'
timeout = 10s
";

/// The OpenSVC rows: a service-defined task with its arguments passed through, and
/// `set_service_monitor` without `node` (the receiver's instance).
async fn opensvc_rows(n1: &LocalNode, n2: &LocalNode) {
    let c = n1
        .call(
            "set_service_config",
            json!({"svcname": "web", "config": SVC}),
            T,
        )
        .await
        .unwrap();
    // Committed on the leader: each node knows the service once it applied the entry.
    let index = c["index"].as_u64().unwrap();
    n1.wait_applied(index, T).await.unwrap();
    n2.wait_applied(index, T).await.unwrap();
    let argv = json!(["compliance", "fix", "--moduleset", "foo"]);
    let r = n1
        .call(
            "service_action",
            json!({"svcname": "web", "command": argv}),
            T,
        )
        .await
        .unwrap();
    assert_eq!(
        (&r["out"], &r["ret"], &r["node"]),
        (&json!("fix|--moduleset|foo|"), &json!(0), &json!("n1")),
        "{r}"
    );
    let r = n1
        .call(
            "service_action",
            json!({"svcname": "web", "command": argv, "node": "n2"}),
            T,
        )
        .await
        .unwrap();
    assert_eq!(
        (&r["out"], &r["node"]),
        (&json!("fix|--moduleset|foo|"), &json!("n2")),
        "{r}"
    );
    let e = n1
        .call(
            "service_action",
            json!({"svcname": "web", "command": ["audit"]}),
            T,
        )
        .await
        .unwrap_err();
    assert!(
        e.contains("unknown action \"audit\"") && e.contains("tasks of web: compliance"),
        "{e}"
    );
    let (code, out, err) = om(
        n1,
        &["web", "run", "compliance", "fix", "--moduleset", "foo"],
        b"",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("fix|--moduleset|foo|"), "{out}");
    let job = n1
        .call(
            "service_action",
            json!({"svcname": "web", "command": argv, "sync": false}),
            T,
        )
        .await
        .unwrap();
    let id = job["job_id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    loop {
        let j = n1.call("job_show", json!({"id": id}), T).await.unwrap();
        if j["job"]["state"] == "succeeded" {
            assert_eq!(j["out"], "fix|--moduleset|foo|");
            break;
        }
        assert!(t0.elapsed() < T, "the task job did not finish: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The seed's request names no node: the receiver's instance.
    let c = n1
        .call(
            "set_service_monitor",
            json!({"svcname": "web", "local_expect": "stopped"}),
            T,
        )
        .await
        .unwrap();
    n1.wait_applied(c["index"].as_u64().unwrap(), T)
        .await
        .unwrap();
    let m = n1
        .call("get_service_monitor", json!({"svcname": "web"}), T)
        .await
        .unwrap();
    assert_eq!(m["instances"]["n1"]["local_expect"], "stopped", "{m}");
    assert_eq!(m["instances"]["n2"]["local_expect"], "none", "{m}");
    n1.call(
        "set_service_config",
        json!({"svcname": "web", "delete": true}),
        T,
    )
    .await
    .unwrap();
}

/// n3 drops n1's frames (what its listener does after 5 invalid ones): n1 pings, traces
/// and routes to n3 through n2; once n3 forgets, the link is direct again.
async fn link_down(n1: &LocalNode, n3: &LocalNode) {
    n3.call("daemon_inject_fault", json!({"blacklist": "n1"}), T)
        .await
        .unwrap();
    // A connection that authenticated before keeps working: the listener restarts, every
    // peer reconnects, and n1's new connections are dropped.
    n3.call("daemon_stop", json!({"thread_id": "listener"}), T)
        .await
        .unwrap();
    n3.call("daemon_start", json!({"thread_id": "listener"}), T)
        .await
        .unwrap();
    let p = ask_json(n1, "ping n3").await;
    assert_eq!(
        (&p["Success"], &p["From"], &p["Via"]),
        (&json!(true), &json!("n3"), &json!("n2")),
        "{p}"
    );
    let tr = ask_json(n1, "traceroute n3").await;
    let path: Vec<&Value> = (0..3).map(|i| &tr[i.to_string()]["From"]).collect();
    assert_eq!(path, [&json!("n1"), &json!("n2"), &json!("n3")], "{tr}");
    let st = ask_json(n1, "status").await;
    assert_eq!(st["RoutingTable"], json!({"n2": "n2", "n3": "n2"}), "{st}");
    assert_eq!(st["Connections"].as_array().unwrap().len(), 1, "{st}");
    assert!(
        st["Advertisements"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["NodeID"] == "n3"),
        "{st}"
    );
    n3.call("blacklist_clear", json!({}), T).await.unwrap();
    let t0 = Instant::now();
    loop {
        let p = ask_json(n1, "ping n3").await;
        if p["Success"] == true && p["Via"].is_null() {
            break;
        }
        assert!(t0.elapsed() < T, "the direct link did not come back: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
