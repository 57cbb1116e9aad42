//! A planned daemon stop leaves services running and fails nothing over; a shutdown stops
//! them first. Real daemons, a real `sleep` app with a pid file.

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use om::cli::local::LocalCluster;
use om::cli::local::LocalNode;
use serde_json::json;

const T: Duration = Duration::from_secs(15);

const DB: &str = r#"[DEFAULT]
nodes = n1 n2 n3
topology = failover
orchestrate = ha
check_interval = 1s

[app#1]
start = sleep 300 >/dev/null 2>&1 & echo $! > "$OM_VAR/app.pid"
stop = kill "$(cat "$OM_VAR/app.pid")" 2>/dev/null; rm -f "$OM_VAR/app.pid"; true
check = pid=$(cat "$OM_VAR/app.pid" 2>/dev/null) && test -n "$pid" && test -e /proc/$pid && ! grep -qs '^[0-9]* ([^)]*) Z' /proc/$pid/stat
restart = 1
"#;

fn pid_file(node: &LocalNode) -> PathBuf {
    node.paths.root.join("var/services/db/app.pid")
}

fn app_pid(node: &LocalNode) -> Option<u32> {
    std::fs::read_to_string(pid_file(node))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn running_on(c: &LocalCluster) -> Vec<String> {
    c.nodes
        .iter()
        .filter(|n| app_pid(n).is_some_and(alive))
        .map(|n| n.name.clone())
        .collect()
}

struct KillApps(Vec<PathBuf>);

impl Drop for KillApps {
    fn drop(&mut self) {
        for f in &self.0 {
            if let Some(pid) = std::fs::read_to_string(f)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

async fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn monitor_status(c: &LocalCluster, via: usize, node: &str) -> String {
    let m = c.nodes[via]
        .call("get_node_monitor", json!({"node": node}), T)
        .await
        .unwrap();
    m["status"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_stop_leaves_services_running_and_shutdown_stops_them() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 3, None).unwrap();
    for n in &c.nodes {
        let text = std::fs::read_to_string(n.paths.node_conf()).unwrap();
        std::fs::write(
            n.paths.node_conf(),
            text.replacen("[node]\n", "[node]\ndown_timeout = 2s\n", 1),
        )
        .unwrap();
    }
    c.start_all().await.unwrap();
    c.join_all(&mut |_| {}).await.unwrap();
    let _apps = KillApps(c.nodes.iter().map(pid_file).collect());

    c.nodes[0]
        .call(
            "set_service_config",
            json!({"svcname": "db", "config": DB}),
            T,
        )
        .await
        .unwrap();
    c.nodes[0]
        .call(
            "set_service_monitor",
            json!({"svcname": "db", "global_expect": "started"}),
            T,
        )
        .await
        .unwrap();
    until("db runs on one node", Duration::from_secs(30), || {
        running_on(&c).len() == 1
    })
    .await;
    let owner = running_on(&c)[0].clone();
    let i = c.nodes.iter().position(|n| n.name == owner).unwrap();
    let other = (i + 1) % 3;
    let pid = app_pid(&c.nodes[i]).unwrap();

    // Planned stop: the daemon exits, advertising maintenance; the app keeps running there.
    c.nodes[i].call("daemon_stop", json!({}), T).await.unwrap();
    let sock = c.nodes[i].paths.control_socket();
    until("the daemon exits", T, || !sock.exists()).await;
    assert_eq!(monitor_status(&c, other, &owner).await, "maintenance");
    // Well past down_timeout: nothing failed over, the app still runs, only there.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(alive(pid), "the app survived the daemon stop");
    assert_eq!(
        running_on(&c),
        std::slice::from_ref(&owner),
        "no failover during a planned stop"
    );

    // Back up: the node leaves maintenance and keeps its instance.
    let bin = c.bin.clone();
    c.nodes[i].start(&bin).unwrap();
    c.nodes[i].wait_ready(T).await.unwrap();
    let t0 = Instant::now();
    loop {
        if monitor_status(&c, other, &owner).await == "idle" {
            break;
        }
        assert!(
            t0.elapsed() < T,
            "{owner} still in maintenance after restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app_pid(&c.nodes[i]), Some(pid));
    assert!(alive(pid));

    // Shutdown: the local instance is stopped first.
    c.nodes[i]
        .call("daemon_shutdown", json!({}), T)
        .await
        .unwrap();
    until(
        "the daemon exits after shutdown",
        Duration::from_secs(30),
        || !sock.exists(),
    )
    .await;
    assert!(!alive(pid), "shutdown stopped the app on {owner}");
}
