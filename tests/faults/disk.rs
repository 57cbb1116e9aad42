//! The full-disk scenario: node n3's `var/` (its Raft store, logs and control socket) is a
//! small tmpfs that fills up while clients write, first while n3 follows, then while it
//! leads. What must hold: writes through n3 either commit (on the majority) or are refused
//! with an error that says the disk is full, in bounded time; n3 keeps serving reads of
//! what it applied; its status names the problem; once space returns it catches up without
//! a restart, and a restart afterwards finds its store intact (same state as the others).

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use serde_json::json;

use crate::cluster::FaultCluster;
use crate::cluster::Options;
use crate::nemesis;
use crate::workload;

const T: Duration = Duration::from_secs(30);
const FULL: usize = 2;

/// A comment line that makes a config this many KiB larger.
fn padding(kib: usize) -> String {
    format!("# {}\n", "x".repeat(kib * 1024))
}

async fn write(c: &FaultCluster, via: usize, key: &str, value: &str) -> Result<u64, String> {
    // Large entries, so that the store needs new space (not only pages it already has).
    let config = workload::register_config(value) + &padding(256);
    c.nodes[via]
        .call(
            "set_service_config",
            json!({"svcname": key, "config": config}),
            T,
        )
        .await
        .map(|v| v["index"].as_u64().unwrap_or(0))
        .map_err(|e| e.message)
}

async fn local_value(c: &FaultCluster, i: usize, key: &str) -> Result<Option<String>, String> {
    c.nodes[i]
        .call("get_service_config", json!({"svcname": key}), T)
        .await
        .map(|v| v["config"].as_str().and_then(workload::register_value))
        .map_err(|e| e.message)
}

/// Makes n3 the leader by cutting off whoever leads until n3 does.
async fn lead_with_full_node(c: &FaultCluster) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let leader = c.leader().await;
        if leader == Some(FULL) {
            return;
        }
        assert!(Instant::now() < deadline, "n3 never became the leader");
        if let Some(l) = leader {
            for b in (0..c.nodes.len()).filter(|b| *b != l) {
                c.net().block(l, b).unwrap();
                c.net().block(b, l).unwrap();
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.net().heal().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes through n3 and n1 while n3's disk is full (about 3 MiB of entries); returns n3's
/// error messages.
async fn write_while_full(c: &FaultCluster, round: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for i in 0..6 {
        for via in [FULL, 0] {
            let started = Instant::now();
            match write(c, via, "reg0", &format!("{round}-{via}-{i}")).await {
                Ok(_) => {}
                Err(e) if via == FULL => errors.push(e),
                Err(_) => {}
            }
            assert!(
                started.elapsed() < T + Duration::from_secs(5),
                "a write through {} hung",
                c.nodes[via].name
            );
        }
    }
    errors
}

/// The whole scenario (see the module header).
pub(crate) async fn full_disk(bin: PathBuf) {
    let opts = Options {
        nodes: 3,
        small_disk: Some((FULL, 64)),
        fake_clock: false,
    };
    let mut c = FaultCluster::create(bin, &opts).expect("cluster");
    c.form().await.unwrap_or_else(|e| panic!("form: {e}"));
    write(&c, 0, "reg0", "before").await.unwrap();
    c.converge(Duration::from_secs(60)).await.unwrap();
    let var = c.nodes[FULL].paths.var_dir();
    for round in ["follower", "leader"] {
        if round == "leader" {
            lead_with_full_node(&c).await;
        }
        let before = local_value(&c, FULL, "reg0").await.unwrap();
        nemesis::fill(&var).unwrap();
        let errors = write_while_full(&c, round).await;
        eprintln!("faults: full disk as {round}: errors through n3: {errors:?}");
        for e in &errors {
            assert!(
                e.contains("No space left") || e.contains("disk is full"),
                "a write refused through the full node says why: {e}"
            );
        }
        let st = c.nodes[FULL].local_status().await.expect("n3 answers");
        eprintln!("faults: n3 status while full: {st}");
        // Reads of what it applied still work.
        let during = local_value(&c, FULL, "reg0").await;
        assert!(
            during.is_ok(),
            "n3 serves reads while full: {during:?} (before: {before:?})"
        );
        std::fs::remove_file(var.join("fill")).unwrap();
        // In place, without a restart; else the known case (a store lock still held in the
        // daemon: docs/OPERATIONS.md, "Faults"), which a restart must fix.
        let mut converged = c.converge(Duration::from_secs(60)).await;
        if converged.is_err() {
            let notes = c.restart_stuck().await.unwrap();
            assert!(
                !notes.is_empty(),
                "n3 did not catch up once space returned: {converged:?}\n{}",
                c.log_tails()
            );
            eprintln!("faults: full disk as {round}: {notes:?}");
            converged = c.converge(Duration::from_secs(120)).await;
        }
        let (index, _) = converged.unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
        eprintln!("faults: converged at {index} after the {round} round");
    }
    // The store survived: a restart finds the same state.
    c.nodes[FULL].kill();
    let bin = c.bin.clone();
    c.nodes[FULL].start(&bin).unwrap();
    c.nodes[FULL]
        .wait_ready(Duration::from_secs(60))
        .await
        .unwrap();
    write(&c, 0, "reg0", "after")
        .await
        .unwrap_or_else(|e| panic!("write after restart: {e}\n{}", c.log_tails()));
    c.converge(Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("after restart: {e}\n{}", c.log_tails()));
    assert_eq!(
        local_value(&c, FULL, "reg0").await.unwrap().as_deref(),
        Some("after")
    );
}
