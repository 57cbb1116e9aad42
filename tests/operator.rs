//! Operating om for real, with real processes: `om node daemon start` fails fast with the
//! reason, one daemon per root, a background om.log without colour codes, `om version`,
//! mistyped commands, and join errors that say what happened.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use om::cli::local::free_port;
use om::cli::local::LocalCluster;
use serde_json::json;

const T: Duration = Duration::from_secs(15);

fn om(root: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("OM_SECRET")
        .env_remove("RUST_LOG")
        .output()
        .expect("run om");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A node root with a node.conf on 127.0.0.1:`port`.
fn root(port: u16) -> tempfile::TempDir {
    use std::os::unix::fs::DirBuilderExt;
    let dir = tempfile::Builder::new().prefix("om-op-").tempdir().unwrap();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.path().join("etc"))
        .unwrap();
    std::fs::write(
        dir.path().join("etc/node.conf"),
        format!("[node]\nname = op1\n\n[listener]\naddr = 127.0.0.1\nport = {port}\n"),
    )
    .unwrap();
    dir
}

/// Kills the background daemon of a root when the test ends, passed or not.
struct Background<'a>(&'a Path);

impl Background<'_> {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.0.join("var/run/om.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Background<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with a pid this test's daemon wrote; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn start_fails_at_once_with_the_reason_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = root(port);
    let _guard = Background(dir.path());
    let t0 = Instant::now();
    let (code, _, err) = om(dir.path(), &["node", "daemon", "start"]);
    let took = t0.elapsed();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && err.contains("Address already in use"),
        "the reason is printed: {err}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}: {err}");
    let log = std::fs::read_to_string(dir.path().join("var/log/om.log")).unwrap();
    assert!(
        !log.contains("daemon running"),
        "\"daemon running\" logged before the bind failed:\n{log}"
    );

    // A node.conf that does not parse: the line and what was expected, at once.
    std::fs::write(
        dir.path().join("etc/node.conf"),
        "[node]\nname = op1\n[listener\n",
    )
    .unwrap();
    let t0 = Instant::now();
    let (code, _, err) = om(dir.path(), &["node", "daemon", "start"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("line 3") && err.contains("expected ']'"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_per_root_its_log_has_no_colour_and_typos_get_a_hint() {
    let port = free_port().unwrap();
    let dir = root(port);
    let r = dir.path();
    let bg = Background(r);
    let (code, _, err) = om(r, &["node", "daemon", "start"]);
    assert_eq!(code, 0, "{err}");
    let pid = bg.pid().expect("the daemon wrote its pid");

    // A second daemon on the same root is told who holds it, at once.
    let t0 = Instant::now();
    let (code, out, err) = om(r, &["node", "daemon", "run"]);
    assert_ne!(code, 0, "a second daemon ran: {out}{err}");
    assert!(
        err.contains(&format!(
            "another daemon is running on this root (pid {pid})"
        )),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{err}");

    let log = std::fs::read_to_string(r.join("var/log/om.log")).unwrap();
    assert!(log.contains("daemon running"), "{log}");
    assert!(!log.contains("\x1b["), "ANSI codes in om.log:\n{log}");

    // `om version`, as text and JSON.
    let (code, out, _) = om(r, &["version"]);
    assert_eq!((code, out.trim()), (0, env!("CARGO_PKG_VERSION")));
    let (code, out, _) = om(r, &["--format", "json", "version"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, json!({ "version": env!("CARGO_PKG_VERSION") }));

    // Typos of commands are not taken for a service name.
    let (code, _, err) = om(r, &["nod", "status"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown command nod; did you mean node?"),
        "{err}"
    );
    let (code, _, err) = om(r, &["status"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("did you mean node daemon status?"), "{err}");
    let (code, _, err) = om(r, &["demo1", "print", "config"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("did you mean demo?"), "{err}");
    // ... unless a service has that name: then it is the service.
    let cfg = r.join("demo1.conf");
    std::fs::write(&cfg, "[DEFAULT]\nnodes = *   # every member\n").unwrap();
    let (code, _, err) = om(r, &["demo1", "create", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = om(r, &["demo1", "print", "config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nodes = *"), "{out}");
    // A word far from every command is still a service name (which does not exist).
    let (code, _, err) = om(r, &["webshop", "status"]);
    assert_eq!(code, 1, "{err}");

    let (code, _, err) = om(r, &["node", "daemon", "stop"]);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_errors_say_what_happened() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 3, None).unwrap();
    c.start_all().await.unwrap();
    let secret = om::config::NodeConfig::load(&c.nodes[0].paths.node_conf())
        .unwrap()
        .1
        .secret;
    let join = |node: &str| json!({ "secret": secret, "node": node });
    let n2 = &c.nodes[1];

    // Nothing listens there.
    let closed = free_port().unwrap();
    let e = n2
        .call("join", join(&format!("127.0.0.1:{closed}")), T)
        .await
        .unwrap_err();
    assert!(e.contains("nothing listens at 127.0.0.1:"), "{e}");
    assert!(e.contains("connection refused"), "{e}");

    // Bad addresses are refused before anything is sent.
    let e = n2
        .call("join", join("127.0.0.1:99999"), T)
        .await
        .unwrap_err();
    assert!(e.contains("\"99999\" is not a port"), "{e}");
    let e = n2
        .call("join", join("no-such-host.invalid"), T)
        .await
        .unwrap_err();
    assert!(
        e.contains("does not resolve") && e.contains("host:port"),
        "{e}"
    );

    // A wrong secret: said so, with the blacklist warning and the command to clear it.
    let wrong = json!({
        "secret": "not-the-secret-but-long-enough-0123456789",
        "node": c.nodes[0].addr(),
    });
    let e = n2.call("join", wrong, T).await.unwrap_err();
    assert!(e.contains("the secret is wrong"), "{e}");
    assert!(e.contains("om node daemon blacklist clear"), "{e}");

    // Through the CLI: the same message, no secret in it, exit code 2 (a usage error).
    let (code, _, err) = om(
        &n2.paths.root,
        &[
            "node",
            "daemon",
            "join",
            "--secret",
            &secret,
            "--node",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a port"), "{err}");
    assert!(!err.contains(&secret), "the secret was printed: {err}");

    // A member asking to join its own cluster again is told it is one already.
    om::cli::local::join(&c.nodes[1], &secret, &c.nodes[0].addr(), &mut |_| {})
        .await
        .unwrap();
    for target in [c.nodes[0].addr(), "n1".to_string()] {
        let e = c.nodes[1].call("join", join(&target), T).await.unwrap_err();
        assert!(e.contains("already a member of cluster"), "{target}: {e}");
    }
    // Its own listener is not a cluster to join.
    let e = c.nodes[2]
        .call("join", join(&c.nodes[2].addr()), T)
        .await
        .unwrap_err();
    assert!(e.contains("this node's own listener"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_blacklisted_by_wrong_secrets_is_told_how_to_clear_it() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 2, None).unwrap();
    c.start_all().await.unwrap();
    let secret = om::config::NodeConfig::load(&c.nodes[0].paths.node_conf())
        .unwrap()
        .1
        .secret;
    let wrong = json!({
        "secret": "not-the-secret-but-long-enough-0123456789",
        "node": c.nodes[0].addr(),
    });
    for _ in 0..om::listener::BLACKLIST_THRESHOLD {
        let e = c.nodes[1].call("join", wrong.clone(), T).await.unwrap_err();
        assert!(e.contains("the secret is wrong"), "{e}");
    }
    // Now even the right secret goes unanswered: the message says why and what to run.
    let right = json!({ "secret": secret, "node": c.nodes[0].addr() });
    let e = c.nodes[1].call("join", right, T).await.unwrap_err();
    assert!(e.contains("has blacklisted this node"), "{e}");
    assert!(e.contains("om node daemon blacklist clear"), "{e}");
    c.nodes[0]
        .call("blacklist_clear", json!({}), T)
        .await
        .unwrap();
    om::cli::local::join(&c.nodes[1], &secret, &c.nodes[0].addr(), &mut |_| {})
        .await
        .expect("joins once the blacklist is cleared");
}

/// Each kind of failure has its exit code (docs/OPERATIONS.md, "Exit codes"), and with
/// `--format json` the error is a JSON object on stderr (stdout stays empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_have_their_exit_code_and_a_json_form() {
    let port = free_port().unwrap();
    let dir = root(port);
    let r = dir.path();
    let json_error = |out: &str| -> serde_json::Value {
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };

    // No daemon: 3, as text and as JSON.
    let (code, _, err) = om(r, &["node", "daemon", "status"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.starts_with("om: ") && err.contains("not running"),
        "{err}"
    );
    let (code, out, err) = om(r, &["--format", "json", "node", "daemon", "status"]);
    assert_eq!((code, out.as_str()), (3, ""), "{err}");
    let e = json_error(&err);
    assert_eq!(
        (e["exit"].as_str(), e["code"].as_i64()),
        (Some("not_running"), Some(3))
    );
    assert!(e["error"].as_str().unwrap().contains("not running"), "{e}");

    let (code, _, err) = om(r, &["node", "daemon", "health"]);
    assert_eq!(code, 3, "{err}");

    // A bad value for node.conf, refused before anything is written: 2.
    let (code, out, err) = om(
        r,
        &[
            "--format",
            "json",
            "node",
            "set",
            "--param",
            "listener.port",
            "--value",
            "0",
        ],
    );
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert_eq!(json_error(&err)["exit"], "usage");

    // node set and unset, as JSON.
    let set = [
        "--format",
        "json",
        "node",
        "set",
        "--param",
        "node.down_timeout",
        "--value",
        "3s",
    ];
    let (code, out, err) = om(r, &set);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json_error(&out),
        json!({"param": "node.down_timeout", "value": "3s"})
    );
    let unset = [
        "--format",
        "json",
        "node",
        "unset",
        "--param",
        "node.down_timeout",
    ];
    let (code, out, err) = om(r, &unset);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json_error(&out),
        json!({"param": "node.down_timeout", "value": null})
    );

    // An om.log past 16 MiB is rotated by the start, which then writes a new one.
    let log = r.join("var/log/om.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, vec![b'x'; (16 << 20) + 1]).unwrap();
    let bg = Background(r);
    let (code, out, err) = om(r, &["--format", "json", "node", "daemon", "start"]);
    assert_eq!(code, 0, "{err}");
    let rotated = std::fs::metadata(r.join("var/log/om.log.1")).unwrap().len();
    assert_eq!(rotated, (16 << 20) + 1, "the old log is om.log.1");
    assert!(
        std::fs::metadata(&log).unwrap().len() < 1 << 20,
        "a new om.log"
    );
    let started = json_error(&out);
    assert_eq!(
        started["pid"].as_i64().map(|p| p as i32),
        bg.pid(),
        "{started}"
    );
    assert!(
        started["log"].as_str().unwrap().ends_with("om.log"),
        "{started}"
    );

    // The daemon refuses the input (BAD_REQUEST): 2, its reason in the error.
    let cfg = r.join("bad.conf");
    std::fs::write(&cfg, "[DEFAULT]\nnodes = *\ntopology = sideways\n").unwrap();
    let args = [
        "--format",
        "json",
        "web",
        "create",
        "--config",
        cfg.to_str().unwrap(),
    ];
    let (code, _, err) = om(r, &args);
    assert_eq!(code, 2, "{err}");
    let e = json_error(&err);
    assert_eq!(e["exit"], "usage", "{e}");
    assert!(e["error"].as_str().unwrap().contains("sideways"), "{e}");

    // A request that fails: 1, also in JSON.
    let (code, _, err) = om(r, &["--format", "json", "webshop", "status"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        json_error(&err)["error"]
            .as_str()
            .unwrap()
            .contains("webshop"),
        "{err}"
    );

    // `om svc ls`: every service, in both formats.
    let good = r.join("web.conf");
    std::fs::write(&good, "[DEFAULT]\nnodes = *\n").unwrap();
    let (code, _, err) = om(r, &["web", "create", "--config", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = om(r, &["--format", "json", "svc", "ls"]);
    assert_eq!(code, 0, "{err}");
    let rows = json_error(&out);
    assert_eq!(rows[0]["name"], "web", "{rows}");
    assert_eq!(rows[0]["global_expect"], "none", "{rows}");
    assert_eq!(rows[0]["instances"], json!(["op1"]), "{rows}");
    let (code, out, _) = om(r, &["svc", "ls"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().nth(1).is_some_and(|l| l.starts_with("web ")),
        "{out}"
    );

    // `--watch` redraws until interrupted.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(r)
        .args(["node", "daemon", "status", "--watch", "--interval", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    watch.kill().unwrap();
    let shown = watch.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.matches("quorum ok").count() >= 2, "{shown}");
    assert!(
        shown.contains("\x1b[H\x1b[2J") && shown.contains("behind leader"),
        "{shown}"
    );

    // health: 0 when every check passes; 4 with the failing check named, one JSON doc.
    let (code, out, err) = om(r, &["node", "daemon", "health"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok   quorum") && !out.contains("FAIL"),
        "{out}"
    );
    let (code, _, err) = om(r, &["node", "daemon", "stop", "--thread-id", "scheduler"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = om(r, &["--format", "json", "node", "daemon", "health"]);
    assert_eq!(code, 4, "{out}{err}");
    let h = json_error(&out);
    assert_eq!(h["healthy"], false, "{h}");
    let threads = &h["checks"][0];
    assert_eq!(
        (&threads["check"], &threads["ok"]),
        (&json!("threads"), &json!(false)),
        "{h}"
    );
    assert!(
        threads["detail"].as_str().unwrap().contains("scheduler"),
        "{h}"
    );
    let (code, _, err) = om(r, &["node", "daemon", "start", "--thread-id", "scheduler"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = om(r, &["--format", "json", "node", "daemon", "health"]);
    assert_eq!(
        (code, &json_error(&out)["healthy"]),
        (0, &json!(true)),
        "{out}"
    );

    // drain and undrain are standby and welcome.
    let (code, out, err) = om(r, &["--format", "json", "node", "drain", "--wait", "20"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json_error(&out)["state"], "standby", "{out}");
    let (code, out, err) = om(r, &["--format", "json", "node", "undrain"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json_error(&out)["state"], "idle", "{out}");

    // node get, and a target's outcome, as JSON.
    let (code, out, err) = om(
        r,
        &[
            "--format",
            "json",
            "node",
            "get",
            "--param",
            "listener.port",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let got = json_error(&out);
    assert_eq!(
        got,
        json!({"param": "listener.port", "value": port.to_string(), "default": false})
    );
    let (_, out, _) = om(
        r,
        &[
            "--format",
            "json",
            "node",
            "get",
            "--param",
            "node.down_timeout",
        ],
    );
    assert_eq!(json_error(&out)["default"], true, "{out}");
    let (code, out, err) = om(r, &["--format", "json", "web", "stop", "--timeout", "20s"]);
    assert_eq!(code, 0, "{err}");
    let stopped = json_error(&out);
    assert_eq!(
        (&stopped["global_expect"], &stopped["reached"]),
        (&json!("stopped"), &json!(true)),
        "{stopped}"
    );
    assert!(stopped["index"].as_u64() > Some(0), "{stopped}");
    let (code, out, err) = om(r, &["--format", "json", "web", "thaw", "--no-wait"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_error(&out)["reached"], false, "{out}");

    // Success is 0 and its JSON is the reply, not an error.
    let (code, out, err) = om(r, &["--format", "json", "node", "daemon", "status"]);
    assert_eq!(code, 0, "{err}");
    let st = json_error(&out);
    assert!(
        st.get("error").is_none() && st["nodes"]["op1"]["reachable"] == true,
        "{st}"
    );

    let (code, out, err) = om(r, &["--format", "json", "node", "daemon", "stop"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_error(&out), json!({"stopped": "op1"}));
}

/// Completion scripts and the man page come from the same command tree as the parser.
#[test]
fn completions_and_the_man_page_know_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = om(dir.path(), &["completion", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(
            out.contains("daemon") && out.contains("secret"),
            "{shell}: {out}"
        );
        // `om <svc> ...` is in the same tree: its commands complete too.
        assert!(out.contains("giveback"), "{shell}: {out}");
    }
    // And help sees them, for `om <svc>` as for `om service <svc>`.
    let (code, out, err) = om(dir.path(), &["web", "--help"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("giveback") && out.contains("switch"), "{out}");
    let (code, _, err) = om(dir.path(), &["web", "frobnicate"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("frobnicate"), "{err}");
    let (code, _, err) = om(dir.path(), &["completion", "tcsh"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("possible values"), "{err}");
    let (code, out, err) = om(dir.path(), &["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(".TH om 1") && out.contains("node"), "{out}");
    assert!(out.contains("service"), "{out}");
}

/// Under systemd (`Type=notify`): READY=1 once the listener is bound, WATCHDOG=1 at half
/// the watchdog period, STOPPING=1 on the way out; and the unit `install` writes.
#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let port = free_port().unwrap();
    let dir = root(port);
    let r = dir.path();
    let _bg = Background(r);
    let sock_path = r.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(r)
        .args(["node", "daemon", "run"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut heard = Vec::new();
    let mut buf = [0u8; 256];
    let t0 = Instant::now();
    while heard
        .iter()
        .filter(|m: &&String| m.contains("WATCHDOG=1"))
        .count()
        < 2
    {
        let n = sock.recv(&mut buf).expect("a notification within 15 s");
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        assert!(t0.elapsed() < Duration::from_secs(20), "{heard:?}");
    }
    assert!(heard[0].contains("READY=1"), "READY first: {heard:?}");
    // Ready means served: the control socket answers.
    let (code, _, err) = om(r, &["node", "daemon", "health"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = om(r, &["node", "daemon", "stop"]);
    assert_eq!(code, 0, "{err}");
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1");
    daemon.wait().unwrap();

    let (code, unit, err) = om(r, &["node", "daemon", "install", "--print"]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "LimitNOFILE=",
        "node daemon run",
    ] {
        assert!(unit.contains(line), "{line} missing:\n{unit}");
    }
    assert!(unit.contains(&format!("--root {}", r.display())), "{unit}");
    let units = r.join("units");
    std::fs::create_dir(&units).unwrap();
    let (code, _, err) = om(
        r,
        &[
            "node",
            "daemon",
            "install",
            "--unit-dir",
            units.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(units.join("om.service")).unwrap(),
        unit
    );
    assert!(err.contains("systemctl daemon-reload"), "{err}");
}

/// GETs `path` from `addr` over HTTP/1.0; the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

/// `metrics.addr` serves Prometheus' text format, /livez and /readyz; it is off by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_over_http() {
    let port = free_port().unwrap();
    let dir = root(port);
    let r = dir.path();
    let metrics_port = free_port().unwrap();
    let addr = format!("127.0.0.1:{metrics_port}");
    let (code, _, err) = om(
        r,
        &["node", "set", "--param", "metrics.addr", "--value", "nope"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("expected ip:port"), "{err}");
    let (code, _, err) = om(
        r,
        &["node", "set", "--param", "metrics.addr", "--value", &addr],
    );
    assert_eq!(code, 0, "{err}");
    let _bg = Background(r);
    let (code, _, err) = om(r, &["node", "daemon", "start"]);
    assert_eq!(code, 0, "{err}");
    let cfg = r.join("web.conf");
    std::fs::write(&cfg, "[DEFAULT]\nnodes = *\n").unwrap();
    let (code, _, err) = om(r, &["web", "create", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    assert_eq!(http_get(&addr, "/livez"), (200, "ok\n".into()));
    assert_eq!(http_get(&addr, "/readyz"), (200, "ok\n".into()));
    let (code, body) = http_get(&addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    for want in [
        "# TYPE om_raft_term gauge",
        "om_raft_is_leader 1",
        "om_raft_leader_known 1",
        "# TYPE om_listener_frames_total counter",
        "om_listener_open_connections ",
        "om_thread_running{thread=\"raft\"} 1",
        "om_node_monitor{node=\"op1\",status=\"idle\"} 1",
        "om_instance{service=\"web\",node=\"op1\",avail=",
    ] {
        assert!(body.contains(want), "{want:?} missing:\n{body}");
    }
    // Every sample line is `name{labels} value` with a number.
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    assert_eq!(http_get(&addr, "/nope").0, 404);

    let (code, _, err) = om(r, &["node", "daemon", "stop"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "still served after stop"
    );
}

/// With a peer down, openraft writes five warnings every 500 ms on the leader (172 lines in
/// 20 s before the limit); each line of code now writes at most once per 30 s, and the
/// monitor's own line still says that the node is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_does_not_flood_the_log() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 3, None).unwrap();
    c.start_all().await.unwrap();
    c.join_all(&mut |_| {}).await.unwrap();
    let files: Vec<_> = (0..2)
        .map(|i| c.nodes[i].paths.root.join("daemon.log"))
        .collect();
    let log = |i: usize| std::fs::read_to_string(&files[i]).unwrap();
    let before: Vec<usize> = (0..2).map(|i| log(i).len()).collect();
    c.nodes[2].kill();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let since: String = (0..2).map(|i| log(i)[before[i]..].to_string()).collect();
    let lines = since.lines().count();
    assert!(lines <= 20, "{lines} lines in 15 s after n3 died:\n{since}");
    assert!(since.contains("node n3 is down"), "{since}");
}
