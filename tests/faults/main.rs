//! The fault suite on real processes (issue 15), Jepsen style: real `om` daemons, each in
//! its own network and PID namespace on a private bridge, under partitions, lossy and slow
//! links, kill -9, SIGSTOP, wall-clock jumps and a full disk, with concurrent clients
//! through different nodes, checked for linearizability (the simulator's checker, the
//! `linear` crate), lost acknowledged writes, diverging states and a failover service
//! running twice.
//!
//! - `schedules`: what CI runs: `OM_FAULT_SCHEDULES` runs (default 2) of `OM_FAULT_STEPS`
//!   faults (default 4), each on a fresh cluster, from `OM_FAULT_SEED` (default 1: CI plays
//!   the same schedules each run) and the seeds after it, plus the seeds of
//!   `tests/faults/regressions.txt`.
//! - `full_disk`: one node's `var/` fills up under writes, then space returns.
//! - `healed_partition`: a follower cut off from the leader for 14 s catches up promptly.
//! - `long_run` (ignored; `scripts/faults`): schedules for `OM_FAULT_MINUTES`, then a report.
//!
//! Needs root, `ip netns`, `nft` and `unshare`; skips with the reason otherwise. The clock
//! faults need libfaketime (Debian's `libfaketime`); without it they are left out.

mod app;
mod check;
mod cluster;
mod disk;
mod heal;
mod nemesis;
mod net;
mod node;
mod run;
mod schedule;
mod workload;

use std::time::Duration;
use std::time::Instant;

use run::Plan;
use run::Report;

/// One cluster at a time: the machine has two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bin() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_om").into()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `OM_FAULT_SEED`, or one drawn from the clock (the long run explores).
fn first_seed() -> u64 {
    env_u64("OM_FAULT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_007)
            .unwrap_or(1)
    })
}

/// The first seed of the CI run: `OM_FAULT_SEED`, else a fixed one, so that a CI run plays
/// the schedules the last one played (the real processes still time them differently).
const CI_SEED: u64 = 1;

/// The seeds kept because they once showed an anomaly, each with its number of faults
/// (`SEED [STEPS]`; default the CI's).
fn regressions(steps: usize) -> Vec<(u64, usize)> {
    include_str!("regressions.txt")
        .lines()
        .filter_map(|l| l.split('#').next())
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let seed = words.next()?.parse().ok()?;
            let k = words.next().and_then(|w| w.parse().ok()).unwrap_or(steps);
            Some((seed, k))
        })
        .collect()
}

fn plan(seed: u64, steps: usize) -> Plan {
    Plan {
        seed,
        steps,
        nodes: 3,
        clients: 6,
        registers: 3,
        disk: true,
    }
}

/// The machine to this test alone (one cluster at a time), or `None` (the reason printed)
/// when the machine cannot run the suite.
async fn exclusive() -> Option<tokio::sync::MutexGuard<'static, ()>> {
    if let Some(why) = net::unavailable() {
        eprintln!("faults: SKIPPED: {why}");
        return None;
    }
    Some(ONE_AT_A_TIME.lock().await)
}

fn print(r: &Report) {
    eprintln!(
        "faults: seed {} in {} s: ops {:?}; faults {:?}; {} app runs; {} anomalies; {} registers \
         inconclusive",
        r.seed,
        r.seconds,
        r.ops,
        r.faults,
        r.app_runs,
        r.anomalies.len(),
        r.inconclusive
    );
    for n in &r.notes {
        eprintln!("faults: seed {}: {n}", r.seed);
    }
}

/// Runs one plan; a harness error (the cluster could not even form) is an anomaly too.
async fn one(plan: &Plan) -> Report {
    eprintln!(
        "faults: seed {} ({} steps); rerun with OM_FAULT_SEED={} OM_FAULT_SCHEDULES=1 OM_FAULT_STEPS={}",
        plan.seed, plan.steps, plan.seed, plan.steps
    );
    let r = run::run(bin(), plan).await.unwrap_or_else(|e| Report {
        seed: plan.seed,
        anomalies: vec![format!("harness: {e}")],
        ..Report::default()
    });
    print(&r);
    r
}

fn failure(reports: &[Report]) -> Option<String> {
    let bad: Vec<&Report> = reports.iter().filter(|r| !r.anomalies.is_empty()).collect();
    if bad.is_empty() {
        return None;
    }
    let mut text = String::new();
    for r in bad {
        text += &format!("\n=== seed {}: {} anomalies\n", r.seed, r.anomalies.len());
        for (ms, what) in &r.nemesis {
            text += &format!("  {ms:>7} ms  {what}\n");
        }
        for a in &r.anomalies {
            text += &format!("- {a}\n");
        }
    }
    Some(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules() {
    let Some(_one) = exclusive().await else {
        return;
    };
    let count = env_u64("OM_FAULT_SCHEDULES").unwrap_or(2);
    let steps = env_u64("OM_FAULT_STEPS").unwrap_or(4) as usize;
    let first = env_u64("OM_FAULT_SEED").unwrap_or(CI_SEED);
    let mut seeds: Vec<(u64, usize)> = (0..count).map(|i| (first + i, steps)).collect();
    if std::env::var("OM_FAULT_SEED").is_err() {
        seeds.extend(regressions(steps));
    }
    let mut reports = Vec::new();
    for (seed, steps) in seeds {
        reports.push(one(&plan(seed, steps)).await);
    }
    if let Some(f) = failure(&reports) {
        panic!("anomalies:{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk() {
    let Some(_one) = exclusive().await else {
        return;
    };
    disk::full_disk(bin()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healed_partition() {
    let Some(_one) = exclusive().await else {
        return;
    };
    heal::healed_partition(bin()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a long run: scripts/faults"]
async fn long_run() {
    let Some(_one) = exclusive().await else {
        return;
    };
    let minutes = env_u64("OM_FAULT_MINUTES").unwrap_or(10);
    let steps = env_u64("OM_FAULT_STEPS").unwrap_or(12) as usize;
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    let mut seed = first_seed();
    let mut reports = Vec::new();
    while Instant::now() < end {
        reports.push(one(&plan(seed, steps)).await);
        seed += 1;
    }
    let mut ops: std::collections::BTreeMap<String, u64> = Default::default();
    let mut faults: std::collections::BTreeMap<&str, u64> = Default::default();
    for r in &reports {
        r.ops
            .iter()
            .for_each(|(k, v)| *ops.entry(k.clone()).or_default() += v);
        r.faults
            .iter()
            .for_each(|(k, v)| *faults.entry(k).or_default() += v);
    }
    let bad: Vec<u64> = reports
        .iter()
        .filter(|r| !r.anomalies.is_empty())
        .map(|r| r.seed)
        .collect();
    eprintln!(
        "faults: long run: {} schedules in {minutes} min; ops {ops:?}; faults {faults:?}; \
         seeds with anomalies: {bad:?}",
        reports.len()
    );
    if let Some(f) = failure(&reports) {
        panic!("anomalies:{f}");
    }
}
