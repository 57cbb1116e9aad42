//! Daemon threads and live reconfiguration, with real `om` processes on loopback.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use om::cli::local::LocalCluster;
use serde_json::json;
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

fn om(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("run om")
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn thread(c: &LocalCluster, i: usize, id: &str) -> Value {
    let st = c.nodes[i]
        .call("daemon_status", json!({"local": true}), T)
        .await
        .unwrap();
    st["self"]["threads"][id].clone()
}

async fn three() -> LocalCluster {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 3, None).unwrap();
    c.start_all().await.unwrap();
    c.join_all(&mut |_| {}).await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_thread_stops_starts_and_survives_a_crash() {
    let c = three().await;
    let port = c.nodes[2].port;
    assert!(port_open(port));

    let r = c.nodes[2]
        .call("daemon_stop", json!({"thread_id": "listener"}), T)
        .await
        .unwrap();
    assert_eq!(r["state"], "stopped");
    eventually("n3's port closes", T, || !port_open(port)).await;
    // The others keep a quorum and commit.
    c.nodes[0]
        .call(
            "set_service_config",
            json!({"svcname": "a", "config": "[DEFAULT]\nnodes = *\n"}),
            T,
        )
        .await
        .unwrap();

    let r = c.nodes[2]
        .call("daemon_start", json!({"thread_id": "listener"}), T)
        .await
        .unwrap();
    assert_eq!(r["state"], "running");
    eventually("n3's port opens again", T, || port_open(port)).await;

    // Unknown thread ids are a clear error that lists the valid ones.
    let e = c.nodes[2]
        .call("daemon_stop", json!({"thread_id": "nope"}), T)
        .await
        .unwrap_err();
    assert!(
        e.contains("valid thread ids are") && e.contains("listener"),
        "{e}"
    );

    // A crashed listener task is restarted by the supervisor, and the restart is counted.
    c.nodes[2]
        .call("daemon_inject_fault", json!({"thread_id": "listener"}), T)
        .await
        .unwrap();
    let deadline = Instant::now() + T;
    loop {
        let t = thread(&c, 2, "listener").await;
        if t["restarts"] == 1 && t["state"] == "running" && port_open(port) {
            assert!(
                t["last_error"].as_str().unwrap().contains("injected"),
                "{t}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "listener not restarted: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And n3 is still a working member: a write through it commits.
    c.nodes[2]
        .call(
            "set_service_config",
            json!({"svcname": "b", "config": "[DEFAULT]\nnodes = *\n"}),
            T,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_set_listener_port_rebinds_live_and_bad_config_is_refused() {
    let c = three().await;
    let root = c.nodes[1].paths.root.clone();
    let old = c.nodes[1].port;
    let new = om::cli::local::free_port().unwrap();

    // Validation: unknown key and bad value are refused, the file untouched.
    let before = std::fs::read_to_string(c.nodes[1].paths.node_conf()).unwrap();
    let out = om(
        &root,
        &["node", "set", "--param", "listener.prot", "--value", "1"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown parameter \"listener.prot\""));
    let out = om(
        &root,
        &[
            "node",
            "set",
            "--param",
            "listener.port",
            "--value",
            "99999",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected a port in 1..=65535"));
    assert_eq!(
        std::fs::read_to_string(c.nodes[1].paths.node_conf()).unwrap(),
        before
    );

    let start = Instant::now();
    let out = om(
        &root,
        &[
            "node",
            "set",
            "--param",
            "listener.port",
            "--value",
            &new.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("n2 answers on its new port", Duration::from_secs(2), || {
        port_open(new)
    })
    .await;
    eprintln!("rebound in {:?}", start.elapsed());
    eventually("old port closed", T, || !port_open(old)).await;
    let got = om(&root, &["node", "get", "--param", "listener.port"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), new.to_string());

    // Still a member: the leader records the new address and reaches n2 there.
    let want = format!("127.0.0.1:{new}");
    let deadline = Instant::now() + T;
    loop {
        let st = c.nodes[0]
            .call("daemon_status", json!({}), T)
            .await
            .unwrap();
        let n2 = &st["nodes"]["n2"];
        if n2["address"] == want.as_str() && n2["reachable"] == true && n2["role"] == "follower" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 not reachable at {want}: {n2}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = c.nodes[0]
        .call(
            "set_service_config",
            json!({"svcname": "after-move", "config": "[DEFAULT]\nnodes = *\n"}),
            T,
        )
        .await
        .unwrap();
    let idx = r["index"].as_u64().unwrap();
    c.nodes[1]
        .wait_applied(idx, T)
        .await
        .expect("n2 replicates after the move");

    // A node.conf that no longer parses is refused; the running config stays.
    std::fs::write(c.nodes[1].paths.node_conf(), "[listener\nport = 1\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(port_open(new), "still listening on the running port");
    let st = c.nodes[1]
        .call("daemon_status", json!({"local": true}), T)
        .await
        .unwrap();
    assert_eq!(st["self"]["listener"], format!("127.0.0.1:{new}"));
    assert!(
        c.nodes[1].log_tail().contains("node.conf refused"),
        "{}",
        c.nodes[1].log_tail()
    );
}

#[test]
fn node_conf_edits_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/node.conf"),
        "# mine\n[node]\nname = a1\n",
    )
    .unwrap();
    let out = om(
        dir.path(),
        &[
            "node",
            "set",
            "--param",
            "node.down_timeout",
            "--value",
            "3s",
        ],
    );
    assert!(out.status.success());
    let out = om(dir.path(), &["node", "get", "--param", "node.down_timeout"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3s");
    let out = om(dir.path(), &["node", "get", "--param", "listener.port"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1214",
        "defaults are shown"
    );
    let out = om(
        dir.path(),
        &["node", "unset", "--param", "node.down_timeout"],
    );
    assert!(out.status.success());
    let out = om(dir.path(), &["node", "print", "config"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "# mine\n[node]\nname = a1\n"
    );
    // edit config with an "editor" that breaks the file: refused, nothing saved.
    let out = Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(dir.path())
        .args(["node", "edit", "config"])
        .env("EDITOR", "sh -c 'echo \"garbage line\" >> \"$0\"'")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused, nothing saved"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("etc/node.conf")).unwrap(),
        "# mine\n[node]\nname = a1\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_core_stopped_by_a_fatal_error_is_started_again() {
    let c = three().await;
    let r = c.nodes[2]
        .call(
            "daemon_inject_fault",
            json!({"thread_id": "raft", "fatal": true}),
            T,
        )
        .await
        .unwrap();
    assert_eq!(r["raft_stopped"], true);
    // The raft thread notices, fails, and its restart reopens Raft on the same store.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = thread(&c, 2, "raft").await;
        if t["restarts"].as_u64().unwrap_or(0) >= 1 && t["state"] == "running" {
            assert!(
                t["last_error"].as_str().unwrap().contains("raft stopped"),
                "{t}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "raft thread not restarted: {t}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = c.nodes[0]
        .call(
            "set_service_config",
            json!({"svcname": "after-fatal", "config": "[DEFAULT]\nnodes = n1\n"}),
            T,
        )
        .await
        .unwrap();
    let idx = r["index"].as_u64().unwrap();
    c.nodes[2]
        .wait_applied(idx, Duration::from_secs(30))
        .await
        .expect("n3 replicates after its raft restart");
    let st = c.nodes[2]
        .call("daemon_status", json!({"local": true}), T)
        .await
        .unwrap();
    assert_eq!(st["self"]["role"], "follower");
}

/// Opens `n` connections to `port` and keeps them; those the listener refuses are kept too
/// (closed by the peer), as an attacker would.
fn flood(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_under_ulimit_1024_survives_1500_idle_connections() {
    // This process holds the 1500 client ends.
    om::listener::fdlimit::raise_nofile().unwrap();
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 1, None).unwrap();
    let conf = c.nodes[0].paths.node_conf();
    let mut text = std::fs::read_to_string(&conf).unwrap();
    // Let the descriptor limit be the cap that binds, not the per-address one.
    text.push_str("max_conns_per_addr = 4096\nhandshake_timeout = 6s\n");
    std::fs::write(&conf, text).unwrap();
    c.nodes[0].start_with_nofile(&c.bin.clone(), 1024).unwrap();
    c.nodes[0].wait_ready(T).await.unwrap();
    let (_, cfg) = om::config::NodeConfig::load(&conf).unwrap();
    let keyring = om::wire::Keyring::new(cfg.cluster_name.clone(), cfg.secret.as_bytes());
    let peer = om::wire::ClientOptions::new(c.nodes[0].addr(), keyring.clone(), "n1").build();
    let status = json!({"local": true});
    assert!(peer
        .request("daemon_status", status.clone(), T)
        .await
        .unwrap()
        .is_ok());

    let started = Instant::now();
    let held = flood(c.nodes[0].port, 1500);
    eprintln!(
        "{} connections opened in {:?}",
        held.len(),
        started.elapsed()
    );
    assert!(held.len() > 1024, "only {} connections opened", held.len());

    // The control socket answers, and so does the TCP port to an established peer.
    let st = c.nodes[0]
        .call("daemon_status", status.clone(), T)
        .await
        .unwrap();
    let m = &st["self"]["listener_metrics"];
    eprintln!("during the flood: {m}");
    assert!(m["open_connections"].as_u64().unwrap() < 1024 - 64, "{m}");
    assert!(m["refused_conn_cap"].as_u64().unwrap() > 0, "{m}");
    let r = peer
        .request("daemon_status", status.clone(), T)
        .await
        .unwrap();
    assert!(r.is_ok());
    assert!(c.nodes[0].is_running());

    // The idle ones are closed by the handshake timeout; then new peers get in again.
    let deadline = Instant::now() + T;
    let m = loop {
        let st = c.nodes[0]
            .call("daemon_status", status.clone(), T)
            .await
            .unwrap();
        let m = st["self"]["listener_metrics"].clone();
        if m["open_connections"] == 1 {
            break m;
        }
        assert!(Instant::now() < deadline, "flood not reaped: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let shed =
        m["closed_handshake_timeout"].as_u64().unwrap() + m["refused_conn_cap"].as_u64().unwrap();
    assert!(shed >= 1500, "{m}");
    let fresh = om::wire::ClientOptions::new(c.nodes[0].addr(), keyring, "n1").build();
    assert!(fresh
        .request("daemon_status", status, T)
        .await
        .unwrap()
        .is_ok());
    assert!(peer
        .request("daemon_status", json!({"local": true}), T)
        .await
        .unwrap()
        .is_ok());
    drop(held);
}

/// A member added to `cluster.nodes` by editing node.conf is let in at once: the watcher
/// refreshes the listener's member set (it used to wait for the next applied event, and
/// a join racing the watcher could leave the leader locked out for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_to_node_conf_by_hand_is_let_in() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 1, None).unwrap();
    c.start_all().await.unwrap();
    let conf = c.nodes[0].paths.node_conf();
    let cfg = om::config::NodeConfig::load(&conf).unwrap().1;
    let keyring = om::wire::Keyring::new(&cfg.cluster_name, cfg.secret.as_bytes());
    let ask = || async {
        let client = om::wire::ClientOptions::new(c.nodes[0].addr(), keyring.clone(), "nx")
            .connect()
            .await;
        match client {
            Ok(cl) => cl.request("hello", json!({}), T).await.map(|r| r.is_ok()),
            Err(e) => Err(e),
        }
    };
    let before = ask().await;
    assert!(
        !matches!(before, Ok(true)),
        "a stranger was served before the edit: {before:?}"
    );
    let text = std::fs::read_to_string(&conf).unwrap();
    let edited = text.replace(
        &format!("nodes = {}", cfg.name),
        &format!("nodes = {} nx", cfg.name),
    );
    assert_ne!(text, edited, "node.conf lists the node: {text}");
    std::fs::write(&conf, edited).unwrap();
    let deadline = Instant::now() + T;
    loop {
        let now = ask().await;
        if matches!(now, Ok(true)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nx is still refused after the edit: {now:?}\n{}",
            c.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
