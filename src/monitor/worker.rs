//! The worker of one local instance: makes it what its `local_expect` says, restarts
//! resources found down within their budget, freezes and thaws it, stops it when this node
//! is cut off from the majority, and reports what it sees.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use raft::state::Avail;
use raft::state::GlobalExpect;
use raft::state::Instance;
use raft::state::LocalExpect;
use raft::state::MonitorStatus;

use crate::model::service::ServiceConfig;
use crate::model::service::Topology;
use crate::services::instance::report;
use crate::services::instance::Ctx;
use crate::services::instance::InstanceRt;
use crate::services::instance::Mem;

use super::decide;

/// What the worker does after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The service is gone from this node.
    Exit,
    /// Pass again after this long, or when woken.
    Sleep(Duration),
}

/// Runs passes until the service leaves this node.
pub async fn run(cx: Ctx, rt: Arc<InstanceRt>) {
    loop {
        match step(&cx, &rt).await {
            Next::Exit => return,
            Next::Sleep(d) => {
                tokio::select! {
                    _ = rt.wake.notified() => {}
                    _ = tokio::time::sleep(d) => {}
                }
            }
        }
    }
}

struct Snap {
    version: u64,
    config: String,
    ge: GlobalExpect,
    inst: Option<Instance>,
    node_frozen: bool,
    node_standby: bool,
}

impl Snap {
    /// What a pass reads of `me`'s instance of `svc`; `None` when the service is gone.
    fn read(s: &raft::ClusterState, svc: &str, me: &str) -> Option<Snap> {
        let monitor = s.node_monitors.get(me);
        s.services.get(svc).map(|v| Snap {
            version: v.version,
            config: v.config.clone(),
            ge: v.global_expect.clone(),
            inst: v.instances.get(me).cloned(),
            node_frozen: monitor.is_some_and(|m| m.frozen),
            // A witness (`node.role`) is standing by for good: it runs no instance.
            node_standby: monitor.is_some_and(|m| m.status == raft::state::NodeStatus::Standby)
                || s.is_witness(me),
        })
    }
}

fn read_instance(cx: &Ctx, svc: &str) -> Option<Instance> {
    cx.host.node().ok().and_then(|n| {
        n.read(|s| {
            s.services
                .get(svc)
                .and_then(|v| v.instances.get(&cx.me).cloned())
        })
    })
}

/// In standby (`agent_standby`): stops the instance if anything of it may run; it starts
/// again after `agent_welcome` if its `local_expect` still says started.
async fn release(cx: &Ctx, rt: &InstanceRt, mem: &mut Mem, cfg: &ServiceConfig) {
    if decide::maybe_running(mem.avail, &mem.res) {
        cx.local.logs.info(
            &rt.svc,
            "this node is in standby or a witness (node.role): stopping the instance",
        );
        rt.stop(cx, mem, cfg, None, None).await;
        rt.check(cx, mem, cfg, None).await;
    }
    mem.started_once = false;
}

/// Whether this instance is still placed here by the leader, read after it confirmed
/// its leadership with a majority (a failover instance only; others start from local
/// state). A node back from a partition or a restart acts on a state that may be behind:
/// the service may have moved away meanwhile (the fault suite's anomaly 1, seeds 3529970
/// and 841614713: two instances for up to 121 ms). No answer: not now.
async fn placed_here_now(cx: &Ctx, svc: &str, cfg: &ServiceConfig) -> bool {
    if cfg.topology != Topology::Failover {
        return true;
    }
    let filter = crate::api::options::ServiceFilter {
        svcname: Some(svc.to_string()),
        linearizable: true,
    };
    let Ok(options) = crate::api::reply(&filter) else {
        return false;
    };
    let read = |s: &raft::ClusterState| crate::services::service_monitors(s, Some(svc));
    let action = crate::api::Action::GetServiceMonitor;
    let ask = cx.host.read_linearizable(action, options, &read);
    match tokio::time::timeout(Duration::from_secs(5), ask).await {
        Ok(Ok(view)) => {
            let action = crate::api::Action::GetServiceMonitor;
            let view: Option<crate::api::options::ServiceMonitor> =
                crate::api::decode_reply(action, view).ok();
            let mine = view.as_ref().and_then(|v| v.instances.get(&cx.me));
            let placed = mine.is_some_and(|i| i.local_expect == LocalExpect::Started);
            if !placed {
                cx.local.logs.info(
                    svc,
                    "not starting: the leader places the service elsewhere now",
                );
            }
            placed
        }
        _ => false,
    }
}

/// One pass over the instance: reads the state, decides ([`decide`]) and acts.
pub async fn step(cx: &Ctx, rt: &InstanceRt) -> Next {
    let Ok(node) = cx.host.node() else {
        return Next::Sleep(Duration::from_secs(1));
    };
    let (me, svc) = (cx.me.clone(), rt.svc.clone());
    let Some(mut snap) = node.read(|s| Snap::read(s, &svc, &me)) else {
        return Next::Exit;
    };
    // A witness by its own node.conf already, before its record says so (just joined).
    snap.node_standby |= cx.host.config().role == raft::state::NodeRole::Witness;
    let mut mem = rt.mem.lock().await;
    let Some(cfg) = rt.config(cx, &mut mem, snap.version, &snap.config) else {
        return Next::Sleep(Duration::from_secs(5));
    };
    let inst = snap.inst.clone().unwrap_or_default();
    if decide::leaves(cfg.lists(&me), snap.inst.as_ref(), mem.avail, mem.checked) {
        return Next::Exit;
    }
    let last = decide::Seen {
        failed: mem.seen_failed,
        restarts: mem.seen_restarts,
    };
    let budget = decide::budget(last, &inst);
    if budget.reset {
        mem.started_once = false;
        mem.restart_at.clear();
    }
    if budget.cleared {
        let cleared = "failure flags and restart counts cleared";
        cx.local.logs.info(&svc, cleared);
    }
    (mem.seen_failed, mem.seen_restarts) = (budget.seen.failed, budget.seen.restarts);
    if rt.check_due.swap(false, Ordering::SeqCst) || !mem.checked || budget.cleared {
        rt.check(cx, &mut mem, &cfg, None).await;
    }
    if cx.local.cut_off.load(Ordering::SeqCst) {
        split(cx, rt, &mut mem, &cfg).await;
        // Nothing can be reported, and nothing is started, without a majority.
        return Next::Sleep(Duration::from_secs(1));
    }
    if cx.local.shutting.load(Ordering::SeqCst) {
        return Next::Sleep(Duration::from_secs(1));
    }
    let want_frozen = decide::frozen_target(&snap.ge);
    let frozen = want_frozen.unwrap_or(inst.frozen);
    if want_frozen.is_some_and(|f| f != inst.frozen) {
        let what = if frozen { "freezing" } else { "thawing" };
        cx.local.logs.info(&svc, format!("{what} the instance"));
    }
    if snap.node_standby {
        release(cx, rt, &mut mem, &cfg).await;
    }
    let mut pass = Pass {
        status: None,
        seen_gen: inst.started_gen,
        restarts: inst.restarts.clone(),
        restarted: false,
        next: Duration::from_secs(1),
    };
    match inst.local_expect {
        // In standby nothing starts or stops but by `release`.
        _ if snap.node_standby => {}
        LocalExpect::Started if !decide::failed(&inst) => {
            let hands_off = frozen || snap.node_frozen;
            keep_started(cx, rt, &mut mem, &cfg, &inst, hands_off, &mut pass).await;
        }
        LocalExpect::Stopped if inst.status != MonitorStatus::StopFailed => {
            keep_stopped(cx, rt, &mut mem, &cfg, &inst, &mut pass).await;
        }
        _ => {}
    }
    finish(cx, &svc, &mem, want_frozen, pass).await
}

/// What a pass decided so far: the status to report, the restart counts, when to pass
/// again.
struct Pass {
    status: Option<MonitorStatus>,
    /// The instance's `started_gen` when the pass read it: what its reports answer for.
    seen_gen: u64,
    restarts: BTreeMap<String, u32>,
    restarted: bool,
    next: Duration,
}

/// Cut off from the majority: stops a failover instance that may run if
/// `node.split_action = stop` (another node may take it over).
async fn split(cx: &Ctx, rt: &InstanceRt, mem: &mut Mem, cfg: &ServiceConfig) {
    let failover = cfg.topology == Topology::Failover;
    let running = decide::maybe_running(mem.avail, &mem.res);
    if !decide::split_stops(failover, cx.host.config().split_stop, running) {
        return;
    }
    cx.local.logs.warn(
        &rt.svc,
        "this node is cut off from the cluster majority: stopping the failover instance (node.split_action = stop)",
    );
    rt.stop(cx, mem, cfg, None, None).await;
    rt.check(cx, mem, cfg, None).await;
    mem.split_stopped = true;
    mem.started_once = false;
}

/// `local_expect = started`: starts what is down the first time, then restarts resources
/// found down within their budget.
async fn keep_started(
    cx: &Ctx,
    rt: &InstanceRt,
    mem: &mut Mem,
    cfg: &ServiceConfig,
    inst: &Instance,
    hands_off: bool,
    pass: &mut Pass,
) {
    let svc = &rt.svc;
    let down: Vec<String> = cfg
        .resources
        .iter()
        .filter(|r| mem.res.get(&r.rid) != Some(&Avail::Up))
        .map(|r| r.rid.clone())
        .collect();
    if down.is_empty() {
        mem.started_once = true;
        mem.restart_at.clear();
        return;
    }
    if hands_off {
        // Frozen: the operator keeps hands on; nothing is started.
        return;
    }
    if mem.started_once {
        return restart_down(cx, rt, mem, cfg, &down, pass).await;
    }
    if !placed_here_now(cx, svc, cfg).await {
        // Placed elsewhere meanwhile: the next pass sees it.
        return;
    }
    let why = if mem.split_stopped {
        "starting again after the majority came back (local_expect started)"
    } else {
        "starting (local_expect started)"
    };
    cx.local.logs.info(svc, why);
    let starting = Some(MonitorStatus::Starting);
    let counts = inst.restarts.clone();
    let seen = Some(inst.started_gen);
    let _ = report(cx, svc, mem.avail, starting, None, counts, seen).await;
    rt.start(cx, mem, cfg, Some(&down), None).await;
    mem.started_once = true;
    mem.split_stopped = false;
    rt.check(cx, mem, cfg, None).await;
    pass.status = Some(MonitorStatus::Idle);
}

/// Restarts the resources in `down`, each when [`decide::restart`] says.
async fn restart_down(
    cx: &Ctx,
    rt: &InstanceRt,
    mem: &mut Mem,
    cfg: &ServiceConfig,
    down: &[String],
    pass: &mut Pass,
) {
    let svc = &rt.svc;
    for rid in down {
        let Some(res) = cfg.resource(rid) else {
            continue;
        };
        let used = pass.restarts.get(rid).copied().unwrap_or(0);
        let scheduled = mem.restart_at.get(rid).copied();
        let now = Instant::now();
        match decide::restart(res.restart, res.restart_delay, used, scheduled, now) {
            decide::Restart::Exhausted { budget } => {
                let msg =
                    format!("{rid} is down and its {budget} restart(s) are used up: start failed");
                cx.local.logs.error(svc, msg);
                pass.status = Some(MonitorStatus::StartFailed);
                return;
            }
            decide::Restart::Schedule { n, at } => {
                mem.restart_at.insert(rid.clone(), at);
                let (budget, delay) = (res.restart, res.restart_delay);
                let msg = format!("{rid} is down: restart {n}/{budget} in {delay:?}");
                cx.local.logs.warn(svc, msg);
                pass.next = pass.next.min(delay);
            }
            decide::Restart::Wait(d) => pass.next = pass.next.min(d),
            decide::Restart::Now { .. } if !placed_here_now(cx, svc, cfg).await => return,
            decide::Restart::Now { n } => {
                pass.restarts.insert(rid.clone(), n);
                pass.restarted = true;
                let restarting = Some(MonitorStatus::Restarting);
                let counts = pass.restarts.clone();
                let seen = Some(pass.seen_gen);
                let _ = report(cx, svc, mem.avail, restarting, None, counts, seen).await;
                rt.start(cx, mem, cfg, Some(std::slice::from_ref(rid)), None)
                    .await;
                mem.restart_at.remove(rid);
                rt.check(cx, mem, cfg, None).await;
                pass.status = Some(MonitorStatus::Idle);
                pass.next = Duration::from_millis(100);
            }
        }
    }
}

/// `local_expect = stopped`: stops what may run.
async fn keep_stopped(
    cx: &Ctx,
    rt: &InstanceRt,
    mem: &mut Mem,
    cfg: &ServiceConfig,
    inst: &Instance,
    pass: &mut Pass,
) {
    let svc = &rt.svc;
    if !decide::needs_stop(mem.avail, &mem.res, !cfg.resources.is_empty()) {
        return;
    }
    cx.local.logs.info(svc, "stopping (local_expect stopped)");
    // A start failure stays visible through the stop.
    let keep_failed = inst.status == MonitorStatus::StartFailed;
    if !keep_failed {
        let stopping = Some(MonitorStatus::Stopping);
        let (counts, seen) = (inst.restarts.clone(), Some(inst.started_gen));
        let _ = report(cx, svc, mem.avail, stopping, None, counts, seen).await;
    }
    rt.stop(cx, mem, cfg, None, None).await;
    rt.check(cx, mem, cfg, None).await;
    let still: Vec<&str> = mem
        .res
        .iter()
        .filter(|(_, a)| **a == Avail::Up)
        .map(|(r, _)| r.as_str())
        .collect();
    if !still.is_empty() {
        let msg = format!("stop failed: still up: {}", still.join(", "));
        cx.local.logs.error(svc, msg);
        pass.status = Some(MonitorStatus::StopFailed);
    } else if !keep_failed {
        pass.status = Some(MonitorStatus::Idle);
    }
}

/// Reports what the pass found, against the state as it is now (the pass may have
/// reported), and says when to pass again.
async fn finish(cx: &Ctx, svc: &str, mem: &Mem, want_frozen: Option<bool>, pass: Pass) -> Next {
    let mut next = pass.next;
    let found = decide::Found {
        avail: mem.avail,
        status: pass.status,
        frozen: want_frozen,
        restarts: pass.restarted.then_some(pass.restarts),
        started_gen: pass.seen_gen,
    };
    if let Some(r) = decide::report(read_instance(cx, svc).as_ref(), found) {
        let seen = Some(pass.seen_gen);
        if let Err(e) = report(cx, svc, mem.avail, r.status, r.frozen, r.restarts, seen).await {
            tracing::warn!(svc = %svc, "cannot report the instance state: {e}");
            next = next.min(Duration::from_millis(500));
        }
    }
    if let Some(at) = mem.restart_at.values().min() {
        next = next.min(at.saturating_duration_since(Instant::now()));
    }
    Next::Sleep(next)
}
