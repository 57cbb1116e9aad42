//! Services on real `om` daemons with real commands: an app resource that runs a `sleep`
//! and writes its pid file. Start, switch, freeze, failover after kill -9, the split action,
//! restarts exhausted then clear, a frozen node, actions and jobs, merged logs.

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use om::cli::local::LocalCluster;
use om::cli::local::LocalNode;
use serde_json::json;
use serde_json::Value;

const T: Duration = Duration::from_secs(15);
/// `node.down_timeout` of the test clusters.
const DOWN: Duration = Duration::from_secs(2);

const WEB: &str = r#"[DEFAULT]
nodes = n1 n2 n3
topology = failover
orchestrate = ha
check_interval = 1s

[app#1]
start = sleep 300 >/dev/null 2>&1 & echo $! > "$OM_VAR/app.pid"
stop = kill "$(cat "$OM_VAR/app.pid")" 2>/dev/null; rm -f "$OM_VAR/app.pid"; true
check = pid=$(cat "$OM_VAR/app.pid" 2>/dev/null) && test -n "$pid" && test -e /proc/$pid && ! grep -qs '^[0-9]* ([^)]*) Z' /proc/$pid/stat
restart = 2
restart_delay = 200ms
timeout = 10s
"#;

const FLAKY: &str = r#"[DEFAULT]
nodes = n1 n2
orchestrate = ha
check_interval = 1s

[app#1]
start = touch "$OM_VAR/started"
stop = rm -f "$OM_VAR/started"
check = test -f "$OM_VAR/started" && test -f "$OM_VAR/ok"
restart = 1
restart_delay = 200ms
"#;

/// A cluster of `n` daemons with `node.down_timeout = 2s`, formed by join.
async fn cluster(n: usize) -> LocalCluster {
    cluster_with(n, |_| "").await
}

/// [`cluster`], with `extra(i)` added to node i's `[node]` section.
async fn cluster_with(n: usize, extra: impl Fn(usize) -> &'static str) -> LocalCluster {
    let mut c =
        LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), n, None).expect("prepare cluster");
    for (i, node) in c.nodes.iter().enumerate() {
        let conf = node.paths.node_conf();
        let text = std::fs::read_to_string(&conf).unwrap();
        let text = text.replacen(
            "[node]\n",
            &format!(
                "[node]\ndown_timeout = {}ms\n{}",
                DOWN.as_millis(),
                extra(i)
            ),
            1,
        );
        std::fs::write(&conf, text).unwrap();
    }
    c.start_all().await.unwrap();
    c.join_all(&mut |_| {}).await.unwrap();
    c
}

/// Runs the `om` CLI against `node`: exit code, stdout, stderr.
async fn om(node: &LocalNode, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(&node.paths.root)
        .args(args)
        .output()
        .await
        .expect("run om");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the CLI and requires success.
async fn om_ok(node: &LocalNode, args: &[&str]) -> (String, String) {
    let (code, out, err) = om(node, args).await;
    assert_eq!(
        code, 0,
        "om {args:?} on {} failed:\n{out}\n{err}",
        node.name
    );
    (out, err)
}

fn pid_file(node: &LocalNode, svc: &str) -> PathBuf {
    node.paths
        .root
        .join("var/services")
        .join(svc)
        .join("app.pid")
}

/// Whether process `pid` runs (zombies do not count: nothing reaps orphans here).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn app_pid(node: &LocalNode, svc: &str) -> Option<u32> {
    std::fs::read_to_string(pid_file(node, svc))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The nodes where the app of `svc` really runs.
fn running_on(c: &LocalCluster, svc: &str) -> Vec<String> {
    c.nodes
        .iter()
        .filter(|n| app_pid(n, svc).is_some_and(alive))
        .map(|n| n.name.clone())
        .collect()
}

fn kill(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// Kills the apps left by a test (by pid, from the pid files).
struct Apps(Vec<PathBuf>);

impl Drop for Apps {
    fn drop(&mut self) {
        for f in &self.0 {
            if let Some(pid) = std::fs::read_to_string(f)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                kill(pid, "-KILL");
            }
        }
    }
}

/// Polls `f` every 100 ms until it holds, up to `timeout`; panics with `what` otherwise.
async fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t0.elapsed()
}

/// Polls `service_status` on `node` until `f` holds; returns that status.
async fn until_status(
    node: &LocalNode,
    svc: &str,
    what: &str,
    timeout: Duration,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let t0 = Instant::now();
    loop {
        let st = status(node, svc).await;
        if f(&st) {
            return st;
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?}: {what}: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(node: &LocalNode, svc: &str) -> Value {
    node.call("service_status", json!({"svcname": svc}), T)
        .await
        .expect("service_status")
}

fn write_config(c: &LocalCluster, name: &str, text: &str) -> PathBuf {
    let p = c.base().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_service_runs_once_switches_freezes_fails_over_and_logs() {
    let t_all = Instant::now();
    let mut c = cluster(3).await;
    let _apps = Apps(c.nodes.iter().map(|n| pid_file(n, "web")).collect());
    let n1 = &c.nodes[0];

    // A bad config is refused with its section and key, and nothing is committed.
    let bad = write_config(
        &c,
        "bad.conf",
        &WEB.replace("restart = 2", "restart = twice"),
    );
    let (code, _, err) = om(n1, &["web", "create", "--config", bad.to_str().unwrap()]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("section [app#1]: key restart: invalid value \"twice\""),
        "{err}"
    );
    assert!(n1
        .call("get_service_config", json!({"svcname": "web"}), T)
        .await
        .is_err());

    let good = write_config(&c, "web.conf", WEB);
    om_ok(n1, &["web", "create", "--config", good.to_str().unwrap()]).await;
    let (text, err) = om_ok(&c.nodes[2], &["web", "print", "config"]).await;
    assert_eq!(text, WEB);
    assert!(err.contains("version 1"), "{err}");

    // start: runs on exactly one node, the first of `nodes`.
    let (_, err) = om_ok(n1, &["web", "start"]).await;
    assert!(err.contains("started reached"), "{err}");
    until("web runs on n1", T, || running_on(&c, "web") == ["n1"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(running_on(&c, "web"), ["n1"], "still exactly one instance");

    // switch: moves it.
    let (_, err) = om_ok(&c.nodes[2], &["web", "switch", "--to", "n2"]).await;
    assert!(err.contains("placed@n2 reached"), "{err}");
    assert_eq!(running_on(&c, "web"), ["n2"]);

    // freeze: a dead app is left dead; thaw: the monitor restarts it (restart 1/2).
    om_ok(n1, &["web", "freeze"]).await;
    kill(app_pid(&c.nodes[1], "web").unwrap(), "-KILL");
    until_status(n1, "web", "n2 reports web down", T, |st| {
        st["instances"]["n2"]["avail"] == "down"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        running_on(&c, "web").is_empty(),
        "frozen: not restarted, not moved"
    );
    om_ok(n1, &["web", "thaw"]).await;
    until("web restarted on n2", T, || running_on(&c, "web") == ["n2"]).await;
    let st = status(n1, "web").await;
    assert_eq!(st["instances"]["n2"]["restarts"]["app#1"], 1, "{st}");

    // kill -9 of n2's daemon and app: web runs elsewhere within down_timeout + a few s.
    let victim_app = app_pid(&c.nodes[1], "web").unwrap();
    let killed = Instant::now();
    eprintln!(
        "kill at {}",
        om::services::log::format_ts(om::clock::now_ms())
    );
    c.nodes[1].kill();
    kill(victim_app, "-KILL");
    until("web fails over", DOWN + Duration::from_secs(15), || {
        let r = running_on(&c, "web");
        r.len() == 1 && r[0] != "n2"
    })
    .await;
    let failover = killed.elapsed();
    eprintln!("failover after kill -9: {failover:?} (down_timeout {DOWN:?})");
    let survivor = running_on(&c, "web")[0].clone();
    let si = c.nodes.iter().position(|n| n.name == survivor).unwrap();
    let other = if si == 0 { 2 } else { 0 };
    let st = status(&c.nodes[other], "web").await;
    assert_eq!(st["instances"]["n2"]["node_status"], "down", "{st}");
    assert_eq!(st["instances"]["n2"]["local_expect"], "stopped", "{st}");

    // Logs from every reachable node, merged in time order.
    let (out, err) = om_ok(&c.nodes[other], &["web", "logs", "--backlog", "1000"]).await;
    assert!(err.contains("n2"), "n2 is unreachable and said so: {err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("20")).collect();
    if std::env::var_os("OM_TEST_TRACE").is_some() {
        eprintln!("{out}");
    }
    let nodes_seen: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l.split(' ').nth(2)).collect();
    assert!(
        nodes_seen.contains("n1") && nodes_seen.contains("n3"),
        "{nodes_seen:?}\n{out}"
    );
    let stamps: Vec<&str> = lines.iter().map(|l| &l[..23]).collect();
    let mut sorted = stamps.clone();
    sorted.sort();
    assert_eq!(stamps, sorted, "merged in time order");
    assert!(out.contains("orchestrator: "), "{out}");
    assert!(out.contains("is down"), "{out}");
    let (only, _) = om_ok(&c.nodes[other], &["web", "logs", "--node", &survivor]).await;
    assert!(only
        .lines()
        .all(|l| !l.starts_with("20") || l.split(' ').nth(2) == Some(survivor.as_str())));

    // Actions on one node, synchronous and as a job.
    let (out, _) = om_ok(
        &c.nodes[other],
        &["web", "run", "status", "--node", &survivor],
    )
    .await;
    assert!(out.contains("app#1") && out.contains("up"), "{out}");
    let (code, _, _) = om(
        &c.nodes[other],
        &["web", "run", "status", "--node", &c.nodes[other].name],
    )
    .await;
    assert_eq!(
        code, 1,
        "the app is down on the other node: the action says so"
    );
    let (out, _) = om_ok(
        &c.nodes[other],
        &["web", "run", "restart", "--node", &survivor, "--async"],
    )
    .await;
    let job = out.split_whitespace().nth(1).unwrap().to_string();
    let mut state = String::new();
    for _ in 0..150 {
        let (o, _) = om_ok(
            &c.nodes[other],
            &[
                "--format", "json", "node", "jobs", "show", &job, "--node", &survivor,
            ],
        )
        .await;
        let v: Value = serde_json::from_str(&o).unwrap();
        state = v["job"]["state"].as_str().unwrap().to_string();
        if state != "running" {
            assert!(v["out"].as_str().unwrap().contains("app#1: start"), "{v}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "succeeded");
    let (list, _) = om_ok(&c.nodes[si], &["node", "jobs", "list"]).await;
    assert!(list.contains(&job), "{list}");
    until("web runs after the restart job", T, || {
        running_on(&c, "web") == [survivor.clone()]
    })
    .await;

    // The survivor cut off from the majority (n2 dead, the other one stopped) stops its
    // failover instance after down_timeout; with the majority back, it starts it again.
    let other_pid: u32 = std::fs::read_to_string(c.nodes[other].paths.pid_file())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(other_pid, "-STOP");
    let stopped_in = until(
        "the cut-off node stops web",
        DOWN + Duration::from_secs(10),
        || running_on(&c, "web").is_empty(),
    )
    .await;
    kill(other_pid, "-CONT");
    eprintln!("split action stopped the instance {stopped_in:?} after the majority was lost");
    until(
        "web runs again once the majority is back",
        Duration::from_secs(30),
        || running_on(&c, "web").len() == 1,
    )
    .await;

    // A planned daemon stop (SIGTERM) leaves the instance running; after the restart the
    // monitor finds it up and starts no second copy.
    let holder = running_on(&c, "web")[0].clone();
    let hi = c.nodes.iter().position(|n| n.name == holder).unwrap();
    let app = app_pid(&c.nodes[hi], "web").unwrap();
    let daemon_pid: u32 = std::fs::read_to_string(c.nodes[hi].paths.pid_file())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(daemon_pid, "-TERM");
    until("the daemon stops", T, || {
        !c.nodes[hi].paths.control_socket().exists()
    })
    .await;
    assert!(alive(app), "the daemon stop left the app running");
    let bin = c.bin.clone();
    c.nodes[hi].start(&bin).unwrap();
    c.nodes[hi].wait_ready(T).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app_pid(&c.nodes[hi], "web"), Some(app), "not restarted");
    assert!(alive(app));
    assert_eq!(running_on(&c, "web"), std::slice::from_ref(&holder));

    // n2 comes back: it is marked up again and does not start web.
    c.nodes[1].start(&bin).unwrap();
    c.nodes[1].wait_ready(T).await.unwrap();
    let n1 = &c.nodes[0];
    for _ in 0..100 {
        let st = status(n1, "web").await;
        if st["instances"]["n2"]["node_status"] == "idle"
            && st["instances"]["n2"]["avail"] == "down"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let st = status(n1, "web").await;
    assert_eq!(st["instances"]["n2"]["node_status"], "idle", "{st}");
    assert_eq!(running_on(&c, "web").len(), 1, "{st}");

    // delete: stopped everywhere, then gone.
    om_ok(n1, &["web", "delete"]).await;
    assert!(running_on(&c, "web").is_empty());
    assert_eq!(status(n1, "web").await["exists"], false);
    eprintln!("test time: {:?}", t_all.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_check_exhausts_restarts_then_clear_and_frozen_node() {
    let t_all = Instant::now();
    let c = cluster(2).await;
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let cfg = write_config(&c, "flaky.conf", FLAKY);
    om_ok(n1, &["flaky", "create", "--config", cfg.to_str().unwrap()]).await;

    // The check never passes: restart 1/1 on n1, start failed, then the same on n2.
    let (code, _, err) = om(n1, &["flaky", "start", "--timeout", "60s"]).await;
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("cannot be reached"), "{err}");
    assert!(
        err.contains("n1: start failed") && err.contains("n2: start failed"),
        "{err}"
    );
    let st = status(n1, "flaky").await;
    for n in ["n1", "n2"] {
        assert_eq!(st["instances"][n]["status"], "start failed", "{st}");
        assert_eq!(st["instances"][n]["restarts"]["app#1"], 1, "{st}");
    }
    let (logs, _) = om_ok(n2, &["flaky", "logs", "--backlog", "500"]).await;
    assert!(logs.contains("restart 1/1"), "{logs}");
    assert!(
        logs.contains("restart(s) are used up: start failed"),
        "{logs}"
    );

    // logs --follow on n1 prints what happens on n2 as it happens.
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(&n1.paths.root)
        .args(["flaky", "logs", "--follow", "--backlog", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(follow.stdout.take().unwrap()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    om(n2, &["flaky", "run", "status"]).await;
    let seen = tokio::time::timeout(T, async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains(" n2 ") && l.contains("action status requested") {
                return l;
            }
        }
        String::new()
    })
    .await
    .expect("the followed line arrives");
    assert!(!seen.is_empty());
    follow.kill().await.unwrap();

    // edit config: $EDITOR edits a copy, the result is validated and committed.
    let edited = tokio::process::Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(&n2.paths.root)
        .args(["flaky", "edit", "config"])
        .env(
            "EDITOR",
            "sed -i 's/^restart_delay = 200ms/restart_delay = 100ms/'",
        )
        .env_remove("VISUAL")
        .output()
        .await
        .unwrap();
    assert!(edited.status.success(), "{edited:?}");
    let (text, err) = om_ok(n1, &["flaky", "print", "config"]).await;
    assert!(
        text.contains("restart_delay = 100ms") && err.contains("version 2"),
        "{text}{err}"
    );
    let broken = tokio::process::Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(&n2.paths.root)
        .args(["flaky", "edit", "config"])
        .env("EDITOR", "sed -i 's/^restart = 1/restart = -1/'")
        .env_remove("VISUAL")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&broken.stderr);
    assert!(!broken.status.success());
    assert!(err.contains("section [app#1]: key restart"), "{err}");
    assert!(om_ok(n1, &["flaky", "print", "config"])
        .await
        .1
        .contains("version 2"));

    // Fix the cause, clear: it starts again, on the first node.
    for n in [n1, n2] {
        let dir = n.paths.root.join("var/services/flaky");
        std::fs::write(dir.join("ok"), "").unwrap();
    }
    // The failed start stays the target until aborted.
    assert_eq!(status(n1, "flaky").await["global_expect"], "started");
    om_ok(n2, &["flaky", "abort"]).await;
    until_status(n1, "flaky", "abort clears global_expect", T, |st| {
        st["global_expect"] == "none"
    })
    .await;
    om_ok(n2, &["flaky", "clear"]).await;
    let (_, err) = om_ok(n1, &["flaky", "start"]).await;
    assert!(err.contains("up on n1"), "{err}");
    let st = status(n2, "flaky").await;
    assert!(
        st["instances"]["n1"]["restarts"]
            .as_object()
            .unwrap()
            .is_empty(),
        "{st}"
    );

    // A frozen node starts nothing by orchestration: stop, freeze n1, start -> n2.
    om_ok(n1, &["flaky", "stop"]).await;
    om_ok(n1, &["node", "freeze"]).await;
    let (_, err) = om_ok(n2, &["flaky", "start"]).await;
    assert!(err.contains("up on n2"), "{err}");
    let (_, err) = om_ok(n2, &["flaky", "giveback", "--timeout", "10s"]).await;
    // giveback targets the preferred usable node: n1 is frozen, so n2 stays.
    assert!(err.contains("up on n2"), "{err}");
    om_ok(n1, &["node", "thaw"]).await;
    let (_, err) = om_ok(n2, &["flaky", "giveback"]).await;
    assert!(err.contains("up on n1"), "{err}");

    // --local: stop here (this instance is also frozen); ha moves the service to n2.
    let (out, _) = om_ok(n1, &["flaky", "stop", "--local"]).await;
    assert!(out.contains("app#1: stop"), "{out}");
    let st = until_status(n1, "flaky", "ha moves flaky to n2", T, |st| {
        st["up"] == json!(["n2"])
    })
    .await;
    assert_eq!(st["instances"]["n1"]["frozen"], true, "{st}");
    assert_eq!(st["instances"]["n1"]["local_expect"], "stopped", "{st}");
    // A failover instance is not started by hand where another node runs it.
    let (code, _, err) = om(n1, &["flaky", "start", "--local"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("placed on n2"), "{err}");
    eprintln!("test time: {:?}", t_all.elapsed());
}

/// Creates `svc` from `config` (through n1), starts it, and waits until its app runs on
/// exactly one node; that node's index.
async fn start_on_one(c: &LocalCluster, svc: &str, config: &str) -> usize {
    let n1 = &c.nodes[0];
    n1.call(
        "set_service_config",
        json!({"svcname": svc, "config": config}),
        T,
    )
    .await
    .unwrap();
    let start = json!({"svcname": svc, "global_expect": "started"});
    n1.call("set_service_monitor", start, T).await.unwrap();
    let what = format!("{svc} runs on one node");
    until(&what, Duration::from_secs(30), || {
        running_on(c, svc).len() == 1
    })
    .await;
    let owner = running_on(c, svc)[0].clone();
    c.nodes.iter().position(|n| n.name == owner).unwrap()
}

/// A planned `daemon stop` of `node`, waited for until its daemon has exited.
async fn stop_daemon(node: &LocalNode) {
    node.call("daemon_stop", json!({}), T).await.unwrap();
    let sock = node.paths.control_socket();
    until("the daemon exits", T, || !sock.exists()).await;
}

async fn monitor_status(c: &LocalCluster, via: usize, node: &str) -> String {
    let m = c.nodes[via]
        .call("get_node_monitor", json!({"node": node}), T)
        .await
        .unwrap();
    m["status"].as_str().unwrap_or("").to_string()
}

/// A planned `daemon stop` leaves the instance running and nothing fails over (the node is
/// in maintenance); after a restart the node is idle again; `daemon shutdown` stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_stop_leaves_services_running_and_shutdown_stops_them() {
    let c = cluster(3).await;
    let _apps = Apps(c.nodes.iter().map(|n| pid_file(n, "db")).collect());
    let i = start_on_one(&c, "db", WEB).await;
    let owner = c.nodes[i].name.clone();
    let other = (i + 1) % 3;
    let pid = app_pid(&c.nodes[i], "db").unwrap();

    stop_daemon(&c.nodes[i]).await;
    assert_eq!(monitor_status(&c, other, &owner).await, "maintenance");
    // Three times down_timeout: nothing failed over, the app still runs, only there.
    tokio::time::sleep(DOWN * 3).await;
    assert!(alive(pid), "the app survived the daemon stop");
    assert_eq!(
        running_on(&c, "db"),
        std::slice::from_ref(&owner),
        "no failover during a planned stop"
    );

    let bin = c.bin.clone();
    let mut c = c;
    c.nodes[i].start(&bin).unwrap();
    c.nodes[i].wait_ready(T).await.unwrap();
    let t0 = Instant::now();
    while monitor_status(&c, other, &owner).await != "idle" {
        assert!(
            t0.elapsed() < T,
            "{owner} still in maintenance after restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app_pid(&c.nodes[i], "db"), Some(pid));
    assert!(alive(pid));

    c.nodes[i]
        .call("daemon_shutdown", json!({}), T)
        .await
        .unwrap();
    let sock = c.nodes[i].paths.control_socket();
    until(
        "the daemon exits after shutdown",
        Duration::from_secs(30),
        || !sock.exists(),
    )
    .await;
    assert!(!alive(pid), "shutdown stopped the app on {owner}");
}

/// `agent_standby` stops the node's instance, the orchestrator moves the failover service
/// to another node, the node stays a voting member in state `standby` (and keeps it across
/// a daemon restart); `agent_welcome` brings it back to `idle`, and nothing moves back by
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_releases_a_node_and_welcome_takes_it_back() {
    let mut c = cluster(3).await;
    let _apps = Apps(c.nodes.iter().map(|n| pid_file(n, "db")).collect());
    let i = start_on_one(&c, "db", WEB).await;
    let owner = c.nodes[i].name.clone();
    let other = (i + 1) % 3;

    // Asked through another member, as a controller would.
    let st = c.nodes[other]
        .call(
            "agent_standby",
            json!({"node": owner, "timeout_ms": 30000}),
            T * 3,
        )
        .await
        .unwrap();
    assert_eq!(st["node"], json!(owner));
    assert_eq!(st["state"], "standby");
    assert_eq!(st["instances"]["db"], "down", "{st}");
    until("db moved to another node", Duration::from_secs(30), || {
        let on = running_on(&c, "db");
        on.len() == 1 && on[0] != owner
    })
    .await;
    assert_eq!(monitor_status(&c, other, &owner).await, "standby");
    let leader_view = c.nodes[0]
        .call("daemon_status", json!({}), T)
        .await
        .unwrap();
    assert!(
        leader_view["cluster"]["nodes"]
            .as_array()
            .unwrap()
            .contains(&json!(owner)),
        "a standby node stays a member"
    );
    // A planned restart keeps the standby (no maintenance status over it).
    stop_daemon(&c.nodes[i]).await;
    assert_eq!(monitor_status(&c, other, &owner).await, "standby");
    let bin = c.bin.clone();
    c.nodes[i].start(&bin).unwrap();
    c.nodes[i].wait_ready(T).await.unwrap();
    tokio::time::sleep(DOWN).await;
    assert_eq!(monitor_status(&c, other, &owner).await, "standby");
    // Through the CLI, to the node itself: welcome.
    let (out, _) = om_ok(&c.nodes[i], &["node", "welcome", "--format", "json"]).await;
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["state"], "idle", "{out}");
    tokio::time::sleep(DOWN).await;
    let on = running_on(&c, "db");
    assert!(
        on.len() == 1 && on[0] != owner,
        "nothing moved back: {on:?}"
    );
}

/// The empty packet runs the queue: with `check_interval = 60m` an app that died is not
/// noticed, until `om node dequeue actions` makes every instance check now; the restart
/// follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dequeue_actions_runs_the_pending_checks_now() {
    let c = cluster(1).await;
    let n1 = &c.nodes[0];
    let _apps = Apps(vec![pid_file(n1, "lazy")]);
    let config = WEB
        .replace("nodes = n1 n2 n3", "nodes = n1")
        .replace("check_interval = 1s", "check_interval = 60m");
    start_on_one(&c, "lazy", &config).await;
    until_status(n1, "lazy", "the start is over", T, |st| {
        st["progress"]["state"] == "reached" || st["global_expect"] == "none"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = app_pid(n1, "lazy").unwrap();
    kill(first, "-KILL");
    until("the app is gone", T, || !alive(first)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        app_pid(n1, "lazy"),
        Some(first),
        "nothing checked before the dequeue"
    );

    om_ok(n1, &["node", "dequeue", "actions"]).await;
    until(
        "restarted after the dequeue",
        Duration::from_secs(20),
        || app_pid(n1, "lazy").is_some_and(|p| p != first && alive(p)),
    )
    .await;
}

/// Two service nodes and a witness (`node.role = witness`, OpenSVC's arbitrator): the
/// witness votes but runs nothing, even listed first or asked by `switch --to`; when the
/// service's node dies, the other service node takes the service over, the witness's vote
/// making the majority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_service_nodes_and_a_witness_survive_the_loss_of_either_service_node() {
    let mut c = cluster_with(3, |i| if i == 2 { "role = witness\n" } else { "" }).await;
    let _apps = Apps(c.nodes.iter().map(|n| pid_file(n, "web")).collect());
    until_daemon_status(&c.nodes[0], "n3 is recorded as a witness", |st| {
        st["nodes"]["n3"]["node_role"] == "witness" && st["nodes"]["n1"]["node_role"] == "normal"
    })
    .await;
    let (text, _) = om_ok(&c.nodes[0], &["node", "daemon", "status"]).await;
    assert!(
        text.contains("node role") && text.contains("witness"),
        "{text}"
    );

    let config = WEB.replace("nodes = n1 n2 n3", "nodes = n3 n1 n2");
    let i = start_on_one(&c, "web", &config).await;
    assert_eq!(
        c.nodes[i].name, "n1",
        "the first listed node that is no witness"
    );
    let (code, _, err) = om(&c.nodes[1], &["web", "switch", "--to", "n3"]).await;
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("node \"n3\" is a witness"), "{err}");
    assert_eq!(running_on(&c, "web"), ["n1"]);

    let app = app_pid(&c.nodes[0], "web").unwrap();
    c.nodes[0].kill();
    kill(app, "-KILL");
    let deadline = Instant::now() + DOWN + Duration::from_secs(15);
    while running_on(&c, "web") != ["n2"] {
        if Instant::now() > deadline {
            let st = c.nodes[1].call("daemon_status", json!({}), T).await;
            let web = status(&c.nodes[1], "web").await;
            panic!(
                "web did not fail over to n2: {web}\n{st:?}\n{}",
                c.log_tails()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(running_on(&c, "web"), ["n2"], "never on the witness");

    // The role is live: set back to normal in n3's node.conf, it is recorded by itself.
    om_ok(
        &c.nodes[2],
        &["node", "set", "--param", "node.role", "--value", "normal"],
    )
    .await;
    until_daemon_status(&c.nodes[1], "n3 is recorded as a normal node again", |st| {
        st["nodes"]["n3"]["node_role"] == "normal"
    })
    .await;
    let (code, _, err) = om(
        &c.nodes[2],
        &["node", "set", "--param", "node.role", "--value", "arbiter"],
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("allowed values are normal, witness"), "{err}");
}

/// Polls `daemon_status` on `node` until `ok` holds.
async fn until_daemon_status(node: &LocalNode, what: &str, ok: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + T;
    loop {
        let st = node
            .call("daemon_status", json!({}), T)
            .await
            .unwrap_or_default();
        if ok(&st) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {T:?}: {st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
