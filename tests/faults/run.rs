//! One run of the suite: a fresh cluster, the registers and the failover service, the
//! clients and the nemesis at once, then healing, final reads and every checker. The
//! [`Report`] counts operations and faults and lists the anomalies.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use serde_json::json;

use crate::app;
use crate::check;
use crate::cluster::FaultCluster;
use crate::cluster::Options;
use crate::nemesis;
use crate::schedule;
use crate::workload;
use crate::workload::Client;
use crate::workload::History;
use crate::workload::Outcome;
use crate::workload::What;

/// How long after a killed node is started again an overlap of the failover app that
/// involves it is the known problem of a returning node (see [`run`]).
const RETURN_WINDOW_MS: u64 = 15_000;

/// What a run does.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub seed: u64,
    pub steps: usize,
    pub nodes: usize,
    pub clients: usize,
    pub registers: usize,
    /// Give node 3 a small `var/` and let the schedule fill it.
    pub disk: bool,
}

/// What a run found.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub seed: u64,
    /// Operations by `kind outcome` (`write ok`, `read unknown`, ...).
    pub ops: BTreeMap<String, u64>,
    pub faults: BTreeMap<&'static str, u64>,
    pub anomalies: Vec<String>,
    /// Known, documented problems seen on the way (not anomalies).
    pub notes: Vec<String>,
    /// Runs of the failover app (how much the exclusivity check had to look at).
    pub app_runs: usize,
    /// Registers whose linearizability search ran out of budget.
    pub inconclusive: usize,
    pub seconds: u64,
    /// Two runs of the failover app at once, before they are judged.
    pub overlaps: Vec<check::Overlap>,
    /// The nemesis's log, for a failure message.
    pub nemesis: Vec<(u64, String)>,
}

/// Runs `plan` with the daemons of `bin`.
pub(crate) async fn run(bin: PathBuf, plan: &Plan) -> Result<Report, String> {
    let started = Instant::now();
    let clock = std::path::Path::new(crate::node::FAKETIME_LIB).exists();
    let opts = Options {
        nodes: plan.nodes,
        small_disk: plan.disk.then_some((plan.nodes - 1, 96)),
        fake_clock: clock,
    };
    let mut c = FaultCluster::create(bin, &opts)?;
    c.form().await?;
    let keys = workload::registers(plan.registers);
    let history = History::new();
    setup(&c, &keys, &history).await?;
    let menu = schedule::Menu {
        nodes: plan.nodes,
        clock,
        disk: c.small_disk,
        max_pause_ms: 3_000,
    };
    let steps = schedule::draw(plan.seed, plan.steps, menu);
    let t0_ns = wall_ns();
    let stop = Arc::new(AtomicBool::new(false));
    let names = guard_nodes(&c);
    let rapid = std::env::var("OM_FAULT_RAPID_SWITCHES").is_ok_and(|v| v == "1");
    let clients: Vec<_> = (0..plan.clients)
        .map(|id| {
            let n = &c.nodes[id % c.nodes.len()];
            let client = Client {
                id,
                node: n.name.clone(),
                paths: n.paths.clone(),
                switches: id == 0 || rapid,
                nodes: names.clone(),
                keys: keys.clone(),
                seed: plan.seed,
            };
            tokio::spawn(workload::run_client(client, history.clone(), stop.clone()))
        })
        .collect();
    let played = nemesis::play(&mut c, &steps, &history).await;
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        let _ = t.await;
    }
    let log = played?;
    let mut report = Report {
        seed: plan.seed,
        faults: log.counts,
        nemesis: log.lines,
        ..Report::default()
    };
    finish(&mut c, &keys, &history, t0_ns, &mut report).await;
    let strict = std::env::var("OM_FAULT_STRICT").is_ok_and(|v| v == "1");
    for o in report.overlaps.drain(..) {
        let ms = o.from_ns / 1_000_000;
        let restarted = log.restarts.iter().any(|(n, at)| {
            (*n == o.a.node || *n == o.b.node) && *at <= ms && ms <= at + RETURN_WINDOW_MS
        });
        if restarted && !strict {
            report.notes.push(format!(
                "known (docs/OPERATIONS.md, \"Faults\"): a node started again after kill -9 ran \
                 the failover service that had moved while it was down: {o}"
            ));
        } else {
            report.anomalies.push(o.to_string());
        }
    }
    report.seconds = started.elapsed().as_secs();
    if !report.anomalies.is_empty() {
        c.keep();
        report.anomalies.push(format!("logs:\n{}", c.log_tails()));
    }
    Ok(report)
}

/// The registers (each created with a first value, in the history) and the failover
/// service, running.
async fn setup(c: &FaultCluster, keys: &[String], h: &History) -> Result<(), String> {
    let t = Duration::from_secs(30);
    let n1 = &c.nodes[0];
    for k in keys {
        let what = What::Write {
            key: k.clone(),
            value: "initial".into(),
        };
        let call_us = h.now_us();
        let outcome = workload::perform(&n1.paths, &what).await;
        if !matches!(outcome, Outcome::Ok { .. }) {
            return Err(format!("create {k}: {outcome:?}"));
        }
        h.ops.lock().unwrap().push(workload::Op {
            client: usize::MAX,
            node: n1.name.clone(),
            what,
            call_us,
            ret_us: h.now_us(),
            outcome,
        });
    }
    let script = c.shared.join("guard.sh");
    std::fs::write(&script, app::script(&c.shared)).map_err(|e| e.to_string())?;
    let config = app::config(&script, &guard_nodes(c));
    n1.call(
        "set_service_config",
        json!({"svcname": workload::GUARD, "config": config}),
        t,
    )
    .await
    .map_err(|e| format!("create {}: {}", workload::GUARD, e.message))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while app::runs(&c.shared, 0).is_empty() {
        if Instant::now() >= deadline {
            return Err(format!(
                "the failover service did not start within 60 s\n{}",
                c.log_tails()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The failover service's nodes: all but the one with the small disk (a node whose disk is
/// full cannot stop its services: docs/OPERATIONS.md, "Faults").
fn guard_nodes(c: &FaultCluster) -> Vec<String> {
    let all = c.nodes.iter().enumerate();
    all.filter(|(i, _)| Some(*i) != c.small_disk)
        .map(|(_, n)| n.name.clone())
        .collect()
}

/// Heals whatever is left, waits for convergence, reads every register everywhere, and
/// runs the checkers.
async fn finish(c: &mut FaultCluster, keys: &[String], h: &History, t0_ns: u64, r: &mut Report) {
    let _ = c.net().heal();
    if let Err(e) = nemesis::restart_dead(c).await {
        r.anomalies.push(format!("a node did not restart: {e}"));
    }
    let mut converged = c.converge(Duration::from_secs(90)).await;
    if converged.is_err() {
        match c.restart_stuck().await {
            Ok(notes) if !notes.is_empty() => {
                r.notes.extend(notes);
                converged = c.converge(Duration::from_secs(120)).await;
            }
            Ok(_) => converged = c.converge(Duration::from_secs(90)).await,
            Err(e) => r.anomalies.push(format!("restart: {e}")),
        }
    }
    if let Err(e) = converged {
        r.anomalies.push(format!("convergence: {e}"));
    }
    final_reads(c, keys, h).await;
    let ops = h.ops.lock().unwrap().clone();
    for op in &ops {
        let kind = match op.what {
            What::Write { .. } => "write",
            What::Read { .. } => "read",
            What::Switch { .. } => "switch",
        };
        let outcome = match op.outcome {
            Outcome::Ok { .. } => "ok",
            Outcome::Failed(_) => "failed",
            Outcome::Unknown(_) => "unknown",
        };
        *r.ops.entry(format!("{kind} {outcome}")).or_default() += 1;
    }
    let (lin, inconclusive) = check::linearizability(&ops);
    r.anomalies.extend(lin);
    r.inconclusive = inconclusive;
    r.anomalies.extend(check::acknowledged_order(&ops));
    r.anomalies.extend(durability(c, &ops).await);
    // The last switch settles before the app's runs are read.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs = app::runs(&c.shared, t0_ns);
    r.app_runs = runs.len();
    r.overlaps = check::exclusivity(&runs);
}

/// A linearizable read of every register through every node, into the history.
async fn final_reads(c: &FaultCluster, keys: &[String], h: &History) {
    for n in &c.nodes {
        for k in keys {
            let what = What::Read { key: k.clone() };
            let call_us = h.now_us();
            let outcome = workload::perform(&n.paths, &what).await;
            h.ops.lock().unwrap().push(workload::Op {
                client: usize::MAX,
                node: n.name.clone(),
                what,
                call_us,
                ret_us: h.now_us(),
                outcome,
            });
        }
    }
}

/// Every node, reading its own state, holds each register at its highest acknowledged
/// version or later.
async fn durability(c: &FaultCluster, ops: &[workload::Op]) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, acked) in check::max_acked_versions(ops) {
        for n in &c.nodes {
            let got = n
                .call(
                    "get_service_config",
                    json!({"svcname": key}),
                    Duration::from_secs(10),
                )
                .await;
            match got.map(|v| v["version"].as_u64()) {
                Ok(Some(v)) if v >= acked => {}
                other => problems.push(format!(
                    "acknowledged write lost: {key} was acknowledged at version {acked}, {} has {other:?}",
                    n.name
                )),
            }
        }
    }
    problems
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
