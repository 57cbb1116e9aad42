//! `om demo`: three real daemons on loopback, joined with the real join request, a few
//! committed commands, the status table, the leader killed, and the status again.

use std::time::Duration;
use std::time::Instant;

use raft::node::Committed;
use raft::state::Avail;
use raft::state::GlobalExpect;
use raft::state::NodeExpect;

use super::local::LocalCluster;
use super::local::LocalNode;
use super::render;
use super::CliError;
use crate::api::options;
use crate::api::options::DaemonStatus;
use crate::api::ApiRequest;

/// Runs the demo with `count` nodes; returns after the show if `exit`, else on Ctrl-C.
pub(super) async fn run(count: usize, exit: bool) -> Result<(), CliError> {
    if count < 3 {
        return Err(CliError::new(format!(
            "--nodes {count}: the demo needs at least 3 nodes to survive a leader loss"
        )));
    }
    let bin = std::env::current_exe().map_err(|e| CliError::new(e.to_string()))?;
    let mut cluster =
        LocalCluster::prepare(bin, count, None).map_err(|e| CliError::new(e.to_string()))?;
    println!(
        "== starting {count} daemons under {}",
        cluster.base().display()
    );
    for n in &cluster.nodes {
        // A short node.down_timeout so the service failover shows within seconds.
        let conf = n.paths.node_conf();
        let text = std::fs::read_to_string(&conf).map_err(|e| CliError::new(e.to_string()))?;
        std::fs::write(
            &conf,
            text.replacen("[node]\n", "[node]\ndown_timeout = 2s\n", 1),
        )
        .map_err(|e| CliError::new(e.to_string()))?;
    }
    cluster.start_all().await.map_err(CliError::new)?;
    for n in &cluster.nodes {
        println!("   {} listening on {}", n.name, n.addr());
    }
    println!("== forming the cluster with `om node daemon join`");
    cluster
        .join_all(&mut |line| println!("   {line}"))
        .await
        .map_err(CliError::new)?;

    println!(
        "== committing a few commands through a follower ({})",
        cluster.nodes[1].name
    );
    let n2 = &cluster.nodes[1];
    // A real process per instance: a sleep whose pid file the check reads.
    let cfg = concat!(
        "[DEFAULT]\nnodes = n1 n2 n3\ntopology = failover\norchestrate = ha\ncheck_interval = 1s\n\n",
        "[app#1]\n",
        "start = sleep 3600 >/dev/null 2>&1 & echo $! > \"$OM_VAR/app.pid\"\n",
        "stop = kill \"$(cat \"$OM_VAR/app.pid\")\" 2>/dev/null; rm -f \"$OM_VAR/app.pid\"; true\n",
        "check = pid=$(cat \"$OM_VAR/app.pid\" 2>/dev/null) && test -n \"$pid\" && kill -0 \"$pid\" 2>/dev/null\n",
    );
    let config = options::SetServiceConfig {
        svcname: "web".into(),
        config: Some(cfg.into()),
        ..Default::default()
    };
    let shown = "{svcname: web, config: <failover app: a sleep with a pid file, on n1 n2 n3>}";
    commit(n2, &config, shown).await?;
    let start = global_expect(GlobalExpect::Started);
    commit(n2, &start, "{svcname: web, global_expect: started}").await?;
    let freeze = node_expect("n3", NodeExpect::Frozen);
    commit(n2, &freeze, "{node: n3, local_expect: frozen}").await?;
    let t0 = Instant::now();
    let on = wait_web(&cluster, None, Duration::from_secs(30)).await?;
    println!(
        "   web is up on {on} ({} ms after the start was committed)",
        t0.elapsed().as_millis()
    );
    show(&cluster).await?;

    let leader = cluster
        .leader()
        .await
        .ok_or_else(|| CliError::new("no leader"))?;
    println!("== killing the leader {leader} (SIGKILL)");
    let killed_at = Instant::now();
    cluster.node(&leader).expect("leader is a node").kill();
    let survivor = cluster
        .nodes
        .iter()
        .find(|n| n.name != leader)
        .expect("3 nodes");
    let mut attempts = 0;
    loop {
        attempts += 1;
        let thaw = node_expect(&survivor.name, NodeExpect::Thawed);
        let r = survivor.ask(&thaw, Duration::from_secs(5)).await;
        if r.is_ok() {
            break;
        }
        if killed_at.elapsed() > Duration::from_secs(30) {
            return Err(CliError::new(format!(
                "no write committed 30s after the leader died: {}",
                r.unwrap_err()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "   a new leader committed a write {} ms after the kill ({attempts} attempts)",
        killed_at.elapsed().as_millis()
    );
    if leader == on {
        let t0 = Instant::now();
        let moved = wait_web(&cluster, Some(&leader), Duration::from_secs(30)).await?;
        println!(
            "   web failed over from {leader} to {moved} {} ms later (node.down_timeout = 2s)",
            t0.elapsed().as_millis()
        );
    }
    show(&cluster).await?;

    if exit {
        stop_service(&cluster).await;
        println!("== done; stopping the daemons");
        return Ok(());
    }
    println!(
        "== the cluster keeps running under {}; Ctrl-C to stop it",
        cluster.base().display()
    );
    let _ = tokio::signal::ctrl_c().await;
    stop_service(&cluster).await;
    println!("\n== stopping the daemons");
    Ok(())
}

/// Waits until `web` is up on one reachable node other than `not`; returns that node.
async fn wait_web(
    cluster: &LocalCluster,
    not: Option<&str>,
    timeout: Duration,
) -> Result<String, CliError> {
    let deadline = Instant::now() + timeout;
    loop {
        for n in &cluster.nodes {
            if Some(n.name.as_str()) == not {
                continue;
            }
            let Ok(st) = n
                .ask(&DaemonStatus::default(), Duration::from_secs(3))
                .await
            else {
                continue;
            };
            let reachable = |node: &str| st.nodes.get(node).is_some_and(|m| m.reachable);
            let up: Vec<String> = st
                .services
                .get("web")
                .into_iter()
                .flat_map(|svc| &svc.instances)
                .filter(|(node, i)| {
                    i.avail == Avail::Up && Some(node.as_str()) != not && reachable(node)
                })
                .map(|(node, _)| node.clone())
                .collect();
            if let [one] = up.as_slice() {
                return Ok(one.clone());
            }
            break;
        }
        if Instant::now() >= deadline {
            return Err(CliError::new(format!(
                "web is not up on one node after {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops the demo service so its processes do not outlive the demo.
async fn stop_service(cluster: &LocalCluster) {
    println!("== stopping the web service");
    for n in &cluster.nodes {
        let stop = global_expect(GlobalExpect::Stopped);
        let r = n.ask(&stop, Duration::from_secs(5)).await;
        if r.is_ok() {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut up = false;
        for n in &cluster.nodes {
            if let Ok(st) = n
                .ask(&DaemonStatus::default(), Duration::from_secs(3))
                .await
            {
                up = st
                    .services
                    .get("web")
                    .is_some_and(|svc| svc.instances.values().any(|i| i.avail == Avail::Up));
                break;
            }
        }
        if !up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The killed leader's instance had no daemon left to stop it.
    for n in &cluster.nodes {
        let pid_file = n.paths.var_dir().join("services/web/app.pid");
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }
}

async fn show(cluster: &LocalCluster) -> Result<(), CliError> {
    for n in &cluster.nodes {
        if let Ok(st) = n
            .ask(&DaemonStatus::default(), Duration::from_secs(5))
            .await
        {
            println!("\n$ om node daemon status   (on {})", n.name);
            print!("{}", render::status_table(&st));
            println!();
            return Ok(());
        }
    }
    Err(CliError::new("no node answered daemon_status"))
}

/// Commits `req` through `node`, printing it as `shown` with the index it committed at.
async fn commit<R>(node: &LocalNode, req: &R, shown: &str) -> Result<(), CliError>
where
    R: ApiRequest<Reply = Committed>,
{
    let r = node
        .ask(req, Duration::from_secs(10))
        .await
        .map_err(|e| CliError::new(format!("{}: {e}", R::ACTION)))?;
    println!("   {} {shown} -> committed at index {}", R::ACTION, r.index);
    Ok(())
}

fn global_expect(target: GlobalExpect) -> options::SetServiceMonitor {
    options::SetServiceMonitor {
        svcname: "web".into(),
        global_expect: Some(target),
        ..Default::default()
    }
}

fn node_expect(node: &str, want: NodeExpect) -> options::SetNodeMonitor {
    options::SetNodeMonitor {
        node: Some(node.into()),
        local_expect: Some(want),
        ..Default::default()
    }
}
