//! The monitor and the scheduler: the daemon threads that make services run where the
//! cluster agreed.
//!
//! - `monitor`, on every node: one worker per local instance enacting its `local_expect`
//!   ([`worker`]); the node monitor's own freeze and thaw; detection of this node being cut
//!   off from the majority (then `node.split_action`). On the leader, also: marking silent
//!   nodes down after `node.down_timeout`, and the orchestrator, which commits the
//!   [`crate::model::placement`] decisions of every service.
//! - `scheduler`, on every node: asks the workers for their periodic checks and purges old
//!   job results.

mod decide;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use raft::event::Field;
use raft::event::FieldValue;
use raft::state::Avail;
use raft::state::LocalExpect;
use raft::state::NodeExpect;
use raft::state::NodeStatus;
use raft::Command;
use raft::Event;
use raft::Node;
use raft::ProposeError;
use raft::Subject;
use tokio::sync::broadcast;
use tokio::sync::watch;

use crate::model::service::ServiceConfig;
use crate::services;
use crate::services::host::commit_limit;
use crate::services::instance::Ctx;
use crate::services::Host;

/// A node in maintenance (daemon stopped on purpose, services left running) is marked down
/// only after this long without news, so a planned restart does not move its services.
pub const MAINTENANCE_GRACE: Duration = Duration::from_secs(60);

/// How long without a majority before `node.split_action`: 3/4 of `node.down_timeout`.
pub fn split_delay(down_timeout: Duration) -> Duration {
    down_timeout * 3 / 4
}

/// How often the monitor makes a pass without being woken by an event.
const TICK: Duration = Duration::from_millis(200);

/// For `om node daemon shutdown`: stops every local service instance (after telling the
/// cluster this node is shutting, so the orchestrator moves failover services elsewhere),
/// and keeps the monitor from starting anything until the daemon exits.
pub async fn stop_local_instances(host: &Arc<dyn Host>) {
    let cx = services::ctx(host);
    cx.local.shutting.store(true, Ordering::SeqCst);
    let shutting = Command::SetNodeMonitor {
        node: cx.me.clone(),
        status: Some(NodeStatus::Shutting),
        local_expect: None,
        frozen: None,
    };
    if host
        .propose(shutting, Duration::from_secs(3))
        .await
        .is_err()
    {
        tracing::warn!("could not advertise the shutting status within 3s");
    }
    let Ok(node) = host.node() else { return };
    let svcs: Vec<(String, u64, String)> = node.read(|s| {
        s.services
            .iter()
            .map(|(n, v)| (n.clone(), v.version, v.config.clone()))
            .collect()
    });
    for (svc, version, text) in svcs {
        let rt = cx.local.instance(&svc);
        let mut mem = rt.mem.lock().await;
        let Some(cfg) = rt.config(&cx, &mut mem, version, &text) else {
            continue;
        };
        let has_instance = node.read(|s| {
            s.services
                .get(&svc)
                .is_some_and(|v| v.instances.contains_key(&cx.me))
        });
        if !cfg.lists(&cx.me) && !has_instance {
            continue;
        }
        rt.check(&cx, &mut mem, &cfg, None).await;
        if mem.res.values().all(|a| *a == Avail::Down) {
            continue;
        }
        cx.local
            .logs
            .info(&svc, "daemon shutdown: stopping the instance");
        rt.stop(&cx, &mut mem, &cfg, None, None).await;
        let avail = rt.check(&cx, &mut mem, &cfg, None).await;
        let restarts = node.read(|s| {
            s.services
                .get(&svc)
                .and_then(|v| v.instances.get(&cx.me))
                .map(|i| (i.restarts.clone(), i.started_gen))
                .unwrap_or_default()
        });
        let (restarts, seen) = restarts;
        let r = services::instance::report(&cx, &svc, avail, None, None, restarts, Some(seen));
        if tokio::time::timeout(Duration::from_secs(3), r)
            .await
            .is_err()
        {
            tracing::warn!(svc = %svc, "could not report the stopped instance");
        }
    }
}

/// Leader-side memory between passes.
#[derive(Default)]
struct LeaderMem {
    /// Since when this node leads (None: it does not).
    since: Option<Instant>,
    /// Last error logged per service, not to repeat it every pass.
    last_error: BTreeMap<String, String>,
}

/// Memory of the quorum watch.
struct QuorumWatch {
    last_ok: Instant,
    cut_off: bool,
}

/// Parsed configs, by service, re-parsed when the version changes.
#[derive(Default)]
struct Configs(BTreeMap<String, (u64, Option<Arc<ServiceConfig>>)>);

impl Configs {
    fn get(&mut self, svc: &str, version: u64, text: &str) -> Option<Arc<ServiceConfig>> {
        match self.0.get(svc) {
            Some((v, c)) if *v == version => c.clone(),
            _ => {
                let c = ServiceConfig::parse(text).ok().map(Arc::new);
                self.0.insert(svc.to_string(), (version, c.clone()));
                c
            }
        }
    }
}

/// The `monitor` thread (registered by the daemon): one worker per local instance, the
/// node monitor, the quorum watch; on the leader, down-marking and the orchestrator. Runs
/// until `stop` turns true.
pub async fn monitor_loop(
    host: Arc<dyn Host>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let cx = services::ctx(&host);
    let mut workers: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut leader = LeaderMem::default();
    // The quorum watch runs on its own: proposals below may wait, it must not.
    let quorum_task = {
        let (host, cx) = (host.clone(), cx.clone());
        tokio::spawn(async move {
            let mut q = QuorumWatch {
                last_ok: Instant::now(),
                cut_off: false,
            };
            loop {
                if let Ok(node) = host.node() {
                    watch_quorum(&host, &cx, &node, &mut q);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut configs = Configs::default();
    let mut sub: Option<(Node, broadcast::Receiver<raft::EventRecord>)> = None;
    let result = loop {
        let node = match host.node() {
            Ok(n) => n,
            Err(_) => {
                tokio::select! {
                    _ = stop.changed() => if *stop.borrow() { break Ok(()) },
                    _ = tokio::time::sleep(TICK) => {}
                }
                continue;
            }
        };
        let same = sub
            .as_ref()
            .is_some_and(|(n, _)| Arc::ptr_eq(n.machine(), node.machine()));
        if !same {
            sub = Some((node.clone(), node.subscribe()));
        }
        let rx = &mut sub.as_mut().expect("subscribed").1;

        // Wait for an event or the tick.
        let mut events = Vec::new();
        tokio::select! {
            _ = stop.changed() => if *stop.borrow() { break Ok(()) },
            _ = tokio::time::sleep(TICK) => {}
            ev = rx.recv() => match ev {
                Ok(e) => events.push(e),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => { sub = None; continue; }
            },
        }
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }

        let metrics = node.metrics();
        let is_leader = metrics.current_leader == Some(node.id)
            && metrics.state == openraft::ServerState::Leader;
        log_events(&cx, &events, is_leader);

        // Workers: one per service with an instance or a place on this node.
        let wanted: Vec<String> = node
            .read(|s| {
                s.services
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.clone(),
                            v.version,
                            v.config.clone(),
                            // An instance here outside `nodes` (config changed) still
                            // needs a worker while it is placed or may run.
                            v.instances.get(&cx.me).is_some_and(|i| {
                                i.local_expect == LocalExpect::Started
                                    || matches!(i.avail, Avail::Up | Avail::Warn)
                            }),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .into_iter()
            .filter(|(n, v, text, busy)| {
                *busy || configs.get(n, *v, text).is_some_and(|c| c.lists(&cx.me))
            })
            .map(|(n, ..)| n)
            .collect();
        configs
            .0
            .retain(|svc, _| node.read(|s| s.services.contains_key(svc)));
        workers.retain(|svc, h| {
            if h.is_finished() {
                if !wanted.contains(svc) {
                    cx.local.forget(svc);
                }
                false
            } else {
                true
            }
        });
        for svc in &wanted {
            if !workers.contains_key(svc) {
                let rt = cx.local.instance(svc);
                workers.insert(svc.clone(), tokio::spawn(worker::run(cx.clone(), rt)));
            }
        }
        if !events.is_empty() {
            for rt in cx.local.instances() {
                rt.wake.notify_one();
            }
        }

        let cut_off = cx.local.cut_off.load(Ordering::SeqCst);
        if !cut_off {
            node_self(&host, &cx, &node).await;
        }
        if is_leader && !cut_off {
            let since = *leader.since.get_or_insert_with(Instant::now);
            mark_down(&host, &cx, &node, since).await;
            orchestrate(&host, &cx, &node, &mut configs, &mut leader).await;
        } else {
            leader.since = None;
        }
    };
    quorum_task.abort();
    cx.local.cut_off.store(false, Ordering::SeqCst);
    for (_, h) in workers {
        h.abort();
    }
    result
}

/// Logs, in the service logs, the changes of this node's instances (on this node) and the
/// service-wide changes (on the leader).
fn log_events(cx: &Ctx, events: &[raft::EventRecord], is_leader: bool) {
    for rec in events {
        let Event::Change {
            subject,
            field: Some(field),
            old,
            new,
            ..
        } = &rec.event
        else {
            continue;
        };
        let show = |v: &Option<FieldValue>| v.as_ref().map_or("-".into(), |v| v.to_string());
        match subject {
            // The avail changes are logged by the check that found them, with the reason.
            Subject::Instance { service, node } if *node == cx.me && *field != Field::Avail => {
                let line = format!("{field}: {} -> {}", show(old), show(new));
                cx.local.logs.info(service, line);
            }
            Subject::Service { service }
                if is_leader && matches!(field, Field::GlobalExpect | Field::Version) =>
            {
                let line = format!("{field}: {} -> {}", show(old), show(new));
                cx.local.logs.info(service, line);
            }
            _ => {}
        }
    }
}

/// Decides whether this node can reach a majority; flips `cut_off` after `down_timeout`.
fn watch_quorum(host: &Arc<dyn Host>, cx: &Ctx, node: &Node, q: &mut QuorumWatch) {
    let metrics = node.metrics();
    let is_leader =
        metrics.current_leader == Some(node.id) && metrics.state == openraft::ServerState::Leader;
    let down_timeout = host.config().down_timeout;
    let membership = metrics.membership_config.membership();
    let voters: Vec<(raft::NodeId, String)> = membership
        .voter_ids()
        .map(|id| {
            let name = membership
                .get_node(&id)
                .map(|m| m.name.clone())
                .unwrap_or_default();
            (id, name)
        })
        .collect();
    let age = |name: &str| host.last_seen(name).unwrap_or(Duration::MAX);
    // How long ago this node last had a majority: for a leader, the age of the news from
    // the voter that completes a majority (itself counting as fresh); for a follower, the
    // age of the news from its leader.
    let contact: Option<Duration> = if voters.len() <= 1 {
        Some(Duration::ZERO)
    } else if is_leader {
        let mut ages: Vec<Duration> = voters
            .iter()
            .map(|(id, name)| {
                if *id == node.id {
                    Duration::ZERO
                } else {
                    age(name)
                }
            })
            .collect();
        ages.sort();
        Some(ages[voters.len() / 2])
    } else {
        metrics
            .current_leader
            .filter(|l| *l != node.id)
            .and_then(|l| membership.get_node(&l).map(|m| m.name.clone()))
            .map(|name| age(&name))
    };
    let now = Instant::now();
    if let Some(at) = contact.and_then(|a| now.checked_sub(a)) {
        q.last_ok = q.last_ok.max(at);
    }
    // A little before the majority marks this node down (after down_timeout), so that its
    // failover instances are stopped, or stopping, when they start elsewhere.
    let cut_off = now.duration_since(q.last_ok) > split_delay(down_timeout);
    if cut_off != q.cut_off {
        q.cut_off = cut_off;
        cx.local.cut_off.store(cut_off, Ordering::SeqCst);
        if cut_off {
            tracing::warn!(
                "no contact with a cluster majority for {:?}: this node is cut off",
                split_delay(down_timeout)
            );
        } else {
            tracing::info!("contact with the cluster majority is back");
        }
        for rt in cx.local.instances() {
            rt.wake.notify_one();
        }
    }
}

/// This node's own monitor: freeze and thaw as its `local_expect` says, and leave a stale
/// `shutting` status.
async fn node_self(host: &Arc<dyn Host>, cx: &Ctx, node: &Node) {
    let Some(m) = node.read(|s| s.node_monitors.get(&cx.me).cloned()) else {
        return;
    };
    // Standby is the operator's until `agent_welcome` (a freeze waits for it too).
    if matches!(
        m.status,
        NodeStatus::Down | NodeStatus::Maintenance | NodeStatus::Standby
    ) {
        return;
    }
    let set = |status: Option<NodeStatus>, frozen: Option<bool>| Command::SetNodeMonitor {
        node: cx.me.clone(),
        status,
        local_expect: None,
        frozen,
    };
    let want = m.local_expect == NodeExpect::Frozen;
    let result = if m.status == NodeStatus::Shutting {
        if cx.local.shutting.load(Ordering::SeqCst) {
            return;
        }
        propose(host, set(Some(NodeStatus::Idle), None)).await
    } else if want != m.frozen {
        let (doing, word) = if want {
            (NodeStatus::Freezing, "freezing")
        } else {
            (NodeStatus::Thawing, "thawing")
        };
        tracing::info!("node {word}");
        match propose(host, set(Some(doing), None)).await {
            Ok(()) => propose(host, set(Some(NodeStatus::Idle), Some(want))).await,
            Err(e) => Err(e),
        }
    } else if matches!(m.status, NodeStatus::Freezing | NodeStatus::Thawing) {
        propose(host, set(Some(NodeStatus::Idle), None)).await
    } else {
        return;
    };
    if let Err(e) = result {
        tracing::warn!("node monitor: {e}");
    }
    for rt in cx.local.instances() {
        rt.wake.notify_one();
    }
}

/// On the leader: marks nodes silent for `down_timeout` down (in maintenance: after
/// [`MAINTENANCE_GRACE`]), and down nodes heard from again idle.
async fn mark_down(host: &Arc<dyn Host>, cx: &Ctx, node: &Node, leader_since: Instant) {
    let down_timeout = host.config().down_timeout;
    let monitors = node.read(|s| s.node_monitors.clone());
    let since_leader = leader_since.elapsed();
    for (name, m) in monitors {
        if name == cx.me {
            continue;
        }
        let silent = host
            .last_seen(&name)
            .map_or(since_leader, |e| e.min(since_leader));
        let status = if m.status == NodeStatus::Down {
            if silent < (down_timeout / 2).max(Duration::from_millis(300)) {
                NodeStatus::Idle
            } else {
                continue;
            }
        } else {
            let limit = if m.status == NodeStatus::Maintenance {
                down_timeout.max(MAINTENANCE_GRACE)
            } else {
                down_timeout
            };
            if silent > limit {
                NodeStatus::Down
            } else {
                continue;
            }
        };
        let cmd = Command::SetNodeMonitor {
            node: name.clone(),
            status: Some(status),
            local_expect: None,
            frozen: None,
        };
        match leader_propose(host, node, cmd).await {
            Ok(()) => {
                let msg = if status == NodeStatus::Down {
                    format!(
                        "node {name} is down: silent for {:.1}s",
                        silent.as_secs_f64()
                    )
                } else {
                    format!("node {name} is back")
                };
                tracing::warn!("{msg}");
                let svcs: Vec<String> = node.read(|s| {
                    s.services
                        .iter()
                        .filter(|(_, v)| v.instances.contains_key(&name))
                        .map(|(n, _)| n.clone())
                        .collect()
                });
                for svc in svcs {
                    cx.local.logs.warn(&svc, msg.clone());
                }
            }
            Err(e) => tracing::warn!("cannot mark {name} {status}: {e}"),
        }
    }
}

/// On the leader: commits every service's placement decisions.
async fn orchestrate(
    host: &Arc<dyn Host>,
    cx: &Ctx,
    node: &Node,
    configs: &mut Configs,
    mem: &mut LeaderMem,
) {
    let state = node.read(|s| s.clone());
    for (svc, service) in &state.services {
        let Some(cfg) = configs.get(svc, service.version, &service.config) else {
            continue;
        };
        let plan = crate::model::placement::plan(&state, svc, &cfg);
        for (cmd, why) in plan.cmds {
            match leader_propose(host, node, cmd).await {
                Ok(()) => {
                    cx.local.logs.info(svc, format!("orchestrator: {why}"));
                    mem.last_error.remove(svc);
                }
                Err(ProposeError::NotLeader { .. }) => return,
                Err(e) => {
                    let msg = format!("orchestrator: cannot commit \"{why}\": {e}");
                    if mem.last_error.get(svc) != Some(&msg) {
                        cx.local.logs.error(svc, msg.clone());
                        mem.last_error.insert(svc.clone(), msg);
                    }
                    break;
                }
            }
        }
    }
}

/// Proposes through the leader, giving up after [`commit_limit`].
async fn propose(host: &Arc<dyn Host>, cmd: Command) -> Result<(), String> {
    let within = commit_limit(&host.config());
    host.propose(cmd, within)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Proposes on this node as the leader (no forwarding, no retry: a leader that lost its
/// leadership has nothing to do), giving up after [`commit_limit`].
async fn leader_propose(
    host: &Arc<dyn Host>,
    node: &Node,
    cmd: Command,
) -> Result<(), ProposeError> {
    match tokio::time::timeout(commit_limit(&host.config()), node.propose(cmd)).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(ProposeError::Stopped(
            "not committed in time: no majority?".into(),
        )),
    }
}

/// The `scheduler` thread (registered by the daemon): asks the workers for their periodic
/// checks and purges old job results, until `stop` turns true.
pub async fn scheduler_loop(
    host: Arc<dyn Host>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let lg = host.local().clone();
    let mut last_purge: Option<Instant> = None;
    loop {
        // The queue an empty packet (`om node dequeue actions`) runs at once: every
        // instance's next status check, with the pass of its worker that follows.
        let dequeued = tokio::select! {
            _ = stop.changed() => if *stop.borrow() { return Ok(()) } else { false },
            _ = tokio::time::sleep(Duration::from_millis(250)) => false,
            _ = host.dequeued() => true,
        };
        let now = Instant::now();
        if dequeued {
            let instances = lg.instances();
            tracing::info!(
                "dequeue: checking {} local instance(s) now",
                instances.len()
            );
            for rt in instances {
                rt.schedule.lock().unwrap().0 = Some(now);
                rt.request_check();
            }
            continue;
        }
        for rt in lg.instances() {
            let due = {
                let mut sch = rt.schedule.lock().unwrap();
                let due = sch.0.is_none_or(|last| now.duration_since(last) >= sch.1);
                if due {
                    sch.0 = Some(now);
                }
                due
            };
            if due {
                rt.request_check();
            }
        }
        if last_purge.is_none_or(|t| now.duration_since(t) > Duration::from_secs(600)) {
            last_purge = Some(now);
            let jobs = lg.jobs.clone();
            let removed = tokio::task::spawn_blocking(move || jobs.purge())
                .await
                .unwrap_or(0);
            if removed > 0 {
                tracing::info!("purged {removed} old job results");
            }
        }
    }
}
