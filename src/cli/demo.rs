//! `om demo`: three real daemons on loopback, joined with the real join request, a few
//! committed commands, the status table, the leader killed, and the status again.

use std::time::Duration;
use std::time::Instant;

use serde_json::json;

use super::local::LocalCluster;
use super::render;
use super::CliError;

/// Runs the demo with `count` nodes; returns after the show if `exit`, else on Ctrl-C.
pub async fn run(count: usize, exit: bool) -> Result<(), CliError> {
    if count < 3 {
        return Err(CliError(format!(
            "--nodes {count}: the demo needs at least 3 nodes to survive a leader loss"
        )));
    }
    let bin = std::env::current_exe().map_err(|e| CliError(e.to_string()))?;
    let mut cluster =
        LocalCluster::prepare(bin, count, None).map_err(|e| CliError(e.to_string()))?;
    println!(
        "== starting {count} daemons under {}",
        cluster.base().display()
    );
    cluster.start_all().await.map_err(CliError)?;
    for n in &cluster.nodes {
        println!("   {} listening on {}", n.name, n.addr());
    }
    println!("== forming the cluster with `om node daemon join`");
    cluster
        .join_all(&mut |line| println!("   {line}"))
        .await
        .map_err(CliError)?;

    println!(
        "== committing a few commands through a follower ({})",
        cluster.nodes[1].name
    );
    let n2 = &cluster.nodes[1];
    let cfg = "[DEFAULT]\nnodes = n1 n2 n3\ntopology = failover\n\n[app#1]\nstart = true\nstop = true\ncheck = true\n";
    let t = Duration::from_secs(10);
    for (action, options) in [
        (
            "set_service_config",
            json!({"svcname": "web", "config": cfg}),
        ),
        (
            "set_service_monitor",
            json!({"svcname": "web", "global_expect": "frozen"}),
        ),
        (
            "set_node_monitor",
            json!({"node": "n3", "local_expect": "frozen"}),
        ),
    ] {
        let r = n2
            .call(action, options.clone(), t)
            .await
            .map_err(|e| CliError(format!("{action}: {e}")))?;
        println!("   {action} {options} -> committed at index {}", r["index"]);
    }
    show(&cluster).await?;

    let leader = cluster
        .leader()
        .await
        .ok_or_else(|| CliError("no leader".into()))?;
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
        let r = survivor
            .call(
                "set_node_monitor",
                json!({"node": survivor.name, "local_expect": "thawed"}),
                Duration::from_secs(5),
            )
            .await;
        if r.is_ok() {
            break;
        }
        if killed_at.elapsed() > Duration::from_secs(30) {
            return Err(CliError(format!(
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
    show(&cluster).await?;

    if exit {
        println!("== done; stopping the daemons");
        return Ok(());
    }
    println!(
        "== the cluster keeps running under {}; Ctrl-C to stop it",
        cluster.base().display()
    );
    let _ = tokio::signal::ctrl_c().await;
    println!("\n== stopping the daemons");
    Ok(())
}

async fn show(cluster: &LocalCluster) -> Result<(), CliError> {
    for n in &cluster.nodes {
        if let Ok(st) = n
            .call("daemon_status", json!({}), Duration::from_secs(5))
            .await
        {
            println!("\n$ om node daemon status   (on {})", n.name);
            print!("{}", render::status_table(&st));
            println!();
            return Ok(());
        }
    }
    Err(CliError("no node answered daemon_status".into()))
}
