//! Placement: from the replicated state and a service's config, the commands that move the
//! service towards its target, and how far it is from it.
//!
//! A pure function of the state, run by the leader's orchestrator every tick: what it
//! decides is committed, applied everywhere, and the next tick starts from there. Each node's
//! monitor then enacts its own instance's `local_expect`.
//!
//! Safety rules, whatever the state (checked by the property tests below):
//! - a failover service is never placed (`local_expect = started`) on two nodes at once;
//! - a failover instance is only placed when no other instance may still be running: every
//!   other instance on a node that is not down has reported itself stopped.

use std::collections::BTreeSet;
use std::fmt::Write;

use raft::state::Avail;
use raft::state::GlobalExpect;
use raft::state::Instance;
use raft::state::LocalExpect;
use raft::state::MonitorStatus;
use raft::state::NodeStatus;
use raft::ClusterState;
use raft::Command;

use super::service::Orchestrate;
use super::service::ServiceConfig;
use super::service::Topology;

/// `switch` and `giveback` (`placed`, `placed@<node>`) do not thaw instances, unlike
/// `start`: a frozen instance refuses them up front, before anything is stopped, instead
/// of never starting (refusals counted as the orchestrator's own).
const PLACING: bool = true;

/// How far a service is from a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// There is no target (`global_expect` none).
    Idle,
    /// The target is reached.
    Reached,
    /// On its way; what it waits for.
    Pending(String),
    /// Cannot be reached without an operator; why.
    Failed(String),
}

impl Progress {
    /// `idle`, `reached`, `pending` or `failed`.
    pub fn state(&self) -> &'static str {
        match self {
            Progress::Idle => "idle",
            Progress::Reached => "reached",
            Progress::Pending(_) => "pending",
            Progress::Failed(_) => "failed",
        }
    }

    /// The explanation, if any.
    pub fn reason(&self) -> &str {
        match self {
            Progress::Pending(r) | Progress::Failed(r) => r,
            _ => "",
        }
    }
}

/// What the orchestrator should commit for one service, and where the service stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Commands to commit in order, each with the reason logged with it.
    pub cmds: Vec<(Command, String)>,
    /// Progress towards the service's `global_expect`.
    pub progress: Progress,
}

/// The view of one service the placement works on.
struct View<'a> {
    state: &'a ClusterState,
    svc: &'a str,
    cfg: &'a ServiceConfig,
    cands: Vec<String>,
    default_instance: Instance,
}

impl<'a> View<'a> {
    fn inst(&self, n: &str) -> &Instance {
        self.state.services[self.svc]
            .instances
            .get(n)
            .unwrap_or(&self.default_instance)
    }

    fn node_status(&self, n: &str) -> Option<NodeStatus> {
        self.state.node_monitors.get(n).map(|m| m.status)
    }

    /// Down (or gone): its instances are not running, by `node.split_action` and kill.
    fn down(&self, n: &str) -> bool {
        matches!(self.node_status(n), None | Some(NodeStatus::Down))
    }

    /// Up and accepting new instances.
    fn usable(&self, n: &str) -> bool {
        !matches!(
            self.node_status(n),
            None | Some(
                NodeStatus::Down
                    | NodeStatus::Maintenance
                    | NodeStatus::Shutting
                    | NodeStatus::Standby
            )
        )
    }

    fn node_frozen(&self, n: &str) -> bool {
        self.state.node_monitors.get(n).is_some_and(|m| m.frozen)
    }

    fn failed(&self, n: &str) -> bool {
        matches!(
            self.inst(n).status,
            MonitorStatus::StartFailed | MonitorStatus::StopFailed
        )
    }

    fn placed(&self, n: &str) -> bool {
        self.inst(n).local_expect == LocalExpect::Started
    }

    /// Whether the instance on `n` may be running now, as far as the cluster knows.
    fn maybe_running(&self, n: &str) -> bool {
        !self.down(n) && (self.placed(n) || self.busy_or_up(n))
    }

    /// Running or acting, whatever its `local_expect`: what still blocks a failover start
    /// once the instance has been told to stop.
    /// Told to start and not heard from since counts as starting: its node may be between
    /// the leader's confirmation and its report (the fault suite's anomaly 2).
    fn busy_or_up(&self, n: &str) -> bool {
        let i = self.inst(n);
        !self.down(n)
            && (matches!(i.avail, Avail::Up | Avail::Warn)
                || i.start_unreported()
                || matches!(
                    i.status,
                    MonitorStatus::Starting
                        | MonitorStatus::Stopping
                        | MonitorStatus::Restarting
                        | MonitorStatus::StopFailed
                ))
    }

    /// Why `n` cannot take a new instance, or `None` if it can. `auto`: an orchestrator
    /// decision (a frozen instance refuses it); otherwise an operator request.
    fn refusal(&self, n: &str, auto: bool) -> Option<String> {
        if self.state.is_witness(n) {
            return Some(format!("{n} is a witness: it runs no service instance"));
        }
        if !self.cands.iter().any(|c| c == n) {
            return Some(format!("{n} is not one of the service's nodes"));
        }
        if !self.usable(n) {
            let st = self
                .node_status(n)
                .map_or("gone".to_string(), |s| s.to_string());
            return Some(format!("{n} is {st}"));
        }
        if self.node_frozen(n) {
            return Some(format!("node {n} is frozen"));
        }
        if self.failed(n) {
            return Some(format!("{n}: {}", self.inst(n).status));
        }
        if auto && self.inst(n).frozen {
            return Some(format!("the instance on {n} is frozen"));
        }
        None
    }

    /// Every node that has an instance or is a candidate: candidates first, in order.
    fn all_nodes(&self) -> Vec<String> {
        let mut out = self.cands.clone();
        for n in self.state.services[self.svc].instances.keys() {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
        out
    }

    fn up(&self, n: &str) -> bool {
        let i = self.inst(n);
        matches!(i.avail, Avail::Up | Avail::NotApplicable) && i.status == MonitorStatus::Idle
    }

    /// Placed instances worth keeping where they are.
    fn keep(&self) -> Vec<String> {
        let mut keep: Vec<String> = self
            .cands
            .iter()
            .filter(|n| {
                let gone = match self.node_status(n) {
                    Some(NodeStatus::Shutting | NodeStatus::Standby) => true,
                    // A daemon stopped for maintenance leaves its instances running: keep
                    // them there, unless known stopped (a shutdown stopped them).
                    Some(NodeStatus::Maintenance) => {
                        matches!(self.inst(n).avail, Avail::Down | Avail::NotApplicable)
                    }
                    _ => false,
                };
                self.placed(n) && !self.down(n) && !gone && !self.failed(n)
            })
            .cloned()
            .collect();
        // Up ones first (a failover service keeps the one that runs), then preference.
        keep.sort_by_key(|n| {
            (
                !self.up(n),
                self.cands.iter().position(|c| c == n).unwrap_or(usize::MAX),
            )
        });
        keep
    }

    /// `first` then `keep`, topped up with eligible candidates, up to the target count.
    fn fill(&self, first: Vec<String>, auto: bool) -> Vec<String> {
        let target = self.cfg.target(self.cands.len());
        let mut d: Vec<String> = Vec::new();
        for n in first {
            if !d.contains(&n) {
                d.push(n);
            }
        }
        d.truncate(target);
        for c in &self.cands {
            if d.len() >= target {
                break;
            }
            if !d.contains(c) && self.refusal(c, auto).is_none() {
                d.push(c.clone());
            }
        }
        d
    }

    fn why_nowhere(&self, auto: bool) -> String {
        let mut s = String::from("no node can run it:");
        if self.cands.is_empty() {
            // Its listed members may all be witnesses (`node.role`): say so.
            let listed = self.cfg.candidates(self.state.nodes.keys());
            if listed.is_empty() {
                s.push_str(" none of its nodes is a cluster member");
            } else {
                let _ = write!(s, " {} only: a witness runs no service", listed.join(", "));
            }
        }
        for c in &self.cands {
            let r = self
                .refusal(c, auto)
                .unwrap_or_else(|| format!("{c} is usable"));
            let _ = write!(s, " {r};");
        }
        s.trim_end_matches(';').to_string()
    }
}

fn set_local(svc: &str, node: &str, le: LocalExpect) -> Command {
    Command::SetServiceMonitor {
        svc: svc.to_string(),
        node: Some(node.to_string()),
        status: None,
        local_expect: Some(le),
        global_expect: None,
        // A new placement gets the full restart budget.
        reset_retries: le == LocalExpect::Started,
    }
}

fn clear_global(svc: &str) -> Command {
    Command::SetServiceMonitor {
        svc: svc.to_string(),
        node: None,
        status: None,
        local_expect: None,
        global_expect: Some(GlobalExpect::None),
        reset_retries: false,
    }
}

/// The members that may run service instances: all but witnesses (`node.role`).
pub fn service_members(state: &ClusterState) -> impl Iterator<Item = &String> {
    state.nodes.keys().filter(|n| !state.is_witness(n))
}

/// The commands that move `svc` towards its target, and its progress.
///
/// `svc` must exist in `state`; `cfg` is its parsed config.
pub fn plan(state: &ClusterState, svc: &str, cfg: &ServiceConfig) -> Plan {
    let view = View {
        state,
        svc,
        cfg,
        cands: cfg.candidates(service_members(state)),
        default_instance: Instance::default(),
    };
    let v = &view;
    let failover = cfg.topology == Topology::Failover;
    let ge = state.services[svc].global_expect.clone();

    // The desired placement, if this mode decides one, and the progress.
    let (desired, progress): (Option<Vec<String>>, Progress) = match &ge {
        GlobalExpect::Aborted => (None, Progress::Reached),
        GlobalExpect::Frozen | GlobalExpect::Thawed => {
            let want = ge == GlobalExpect::Frozen;
            let waiting: Vec<&String> = state.services[svc]
                .instances
                .iter()
                .filter(|(n, i)| !v.down(n) && i.frozen != want)
                .map(|(n, _)| n)
                .collect();
            let p = if waiting.is_empty() {
                Progress::Reached
            } else {
                Progress::Pending(format!("waiting for {}", join(&waiting)))
            };
            (None, p)
        }
        GlobalExpect::None => {
            let d = match cfg.orchestrate {
                Orchestrate::No => None,
                Orchestrate::Start => {
                    let anywhere = v.all_nodes().iter().any(|n| v.placed(n));
                    (!anywhere).then(|| v.fill(Vec::new(), true))
                }
                Orchestrate::Ha => Some(v.fill(v.keep(), true)),
            };
            // Left alone when nowhere to go: a service frozen everywhere stays as it is.
            (d.filter(|d| !d.is_empty()), Progress::Idle)
        }
        GlobalExpect::Started => {
            let d = v.fill(v.keep(), false);
            let p = if d.is_empty() {
                Progress::Failed(v.why_nowhere(false))
            } else {
                started_progress(v, &d, failover)
            };
            (Some(d), p)
        }
        GlobalExpect::Stopped | GlobalExpect::Deleted => {
            let nodes = v.all_nodes();
            let stop_failed: Vec<&String> = nodes
                .iter()
                .filter(|n| !v.down(n) && v.inst(n).status == MonitorStatus::StopFailed)
                .collect();
            let running: Vec<&String> = nodes.iter().filter(|n| v.busy_or_up(n)).collect();
            let unfrozen: Vec<&String> = if ge == GlobalExpect::Stopped {
                state.services[svc]
                    .instances
                    .iter()
                    .filter(|(n, i)| !v.down(n) && !i.frozen)
                    .map(|(n, _)| n)
                    .collect()
            } else {
                Vec::new()
            };
            let p = if !stop_failed.is_empty() {
                Progress::Failed(format!(
                    "stop failed on {}: fix it, then `clear`",
                    join(&stop_failed)
                ))
            } else if !running.is_empty() {
                Progress::Pending(format!("waiting for {} to stop", join(&running)))
            } else if !unfrozen.is_empty() {
                Progress::Pending(format!("waiting for {} to freeze", join(&unfrozen)))
            } else {
                Progress::Reached
            };
            (Some(Vec::new()), p)
        }
        GlobalExpect::Placed | GlobalExpect::PlacedAt(_) => {
            let to = match &ge {
                GlobalExpect::PlacedAt(n) => Some(n.clone()),
                _ => v
                    .cands
                    .iter()
                    .find(|c| v.refusal(c, PLACING).is_none())
                    .cloned(),
            };
            match to {
                None => (None, Progress::Failed(v.why_nowhere(PLACING))),
                Some(to) => match v.refusal(&to, PLACING) {
                    Some(why) => (
                        None,
                        Progress::Failed(format!("cannot place on {to}: {why}")),
                    ),
                    None => {
                        let d = if failover {
                            vec![to.clone()]
                        } else {
                            let mut first = vec![to.clone()];
                            first.extend(v.keep());
                            v.fill(first, PLACING)
                        };
                        let p = started_progress(v, &d, failover);
                        (Some(d), p)
                    }
                },
            }
        }
    };

    let mut cmds: Vec<(Command, String)> = Vec::new();
    let nodes = v.all_nodes();
    let mut stopping: BTreeSet<String> = BTreeSet::new();
    match &desired {
        Some(d) => {
            for n in &nodes {
                if d.contains(n) {
                    continue;
                }
                let i = v.inst(n);
                let stray = failover && v.busy_or_up(n) && i.local_expect == LocalExpect::None;
                if v.placed(n) || stray {
                    let why = if v.down(n) {
                        format!("{n} is down")
                    } else if v.failed(n) {
                        format!("{n}: {}", i.status)
                    } else {
                        format!("placement moves to {}", join(&d.iter().collect::<Vec<_>>()))
                    };
                    if d.is_empty() && ge != GlobalExpect::None {
                        cmds.push((
                            set_local(svc, n, LocalExpect::Stopped),
                            format!("{ge}: stop {n}"),
                        ));
                    } else {
                        cmds.push((
                            set_local(svc, n, LocalExpect::Stopped),
                            format!("stop {n}: {why}"),
                        ));
                    }
                    stopping.insert(n.clone());
                }
            }
        }
        None if failover => {
            // Whatever the mode: a failover service is never placed twice.
            let placed: Vec<String> = nodes.iter().filter(|n| v.placed(n)).cloned().collect();
            if placed.len() > 1 {
                let mut keep = v.keep();
                keep.retain(|n| placed.contains(n));
                let keep = keep.first().cloned().unwrap_or_else(|| placed[0].clone());
                for n in placed.iter().filter(|n| **n != keep) {
                    cmds.push((
                        set_local(svc, n, LocalExpect::Stopped),
                        format!("stop {n}: a failover service runs on one node ({keep})"),
                    ));
                    stopping.insert(n.clone());
                }
            }
        }
        None => {}
    }

    let mut progress = progress;
    if let Some(d) = &desired {
        let starts: Vec<&String> = d.iter().filter(|n| !v.placed(n)).collect();
        if !starts.is_empty() {
            let blockers: Vec<&String> = if failover {
                nodes
                    .iter()
                    .filter(|n| !d.contains(n) && v.busy_or_up(n))
                    .collect()
            } else {
                Vec::new()
            };
            if blockers.is_empty() {
                for n in starts {
                    let why = if ge == GlobalExpect::None {
                        format!("start {n} (orchestrate = {})", cfg.orchestrate)
                    } else {
                        format!("{ge}: start {n}")
                    };
                    cmds.push((set_local(svc, n, LocalExpect::Started), why));
                }
            } else if !matches!(progress, Progress::Failed(_)) && ge != GlobalExpect::None {
                progress = Progress::Pending(format!(
                    "waiting for {} to stop before starting {}",
                    join(&blockers),
                    join(&starts)
                ));
            }
        }
    }

    if progress == Progress::Reached && cmds.is_empty() {
        if ge == GlobalExpect::Deleted {
            cmds.push((
                Command::DeleteService {
                    svc: svc.to_string(),
                },
                "deleted: every instance is stopped".into(),
            ));
        } else if ge != GlobalExpect::None {
            cmds.push((clear_global(svc), format!("{ge} reached")));
        }
    }
    Plan { cmds, progress }
}

/// Progress of a running target: every desired instance up, no other one running.
fn started_progress(v: &View<'_>, d: &[String], failover: bool) -> Progress {
    let not_up: Vec<&String> = d.iter().filter(|n| !(v.placed(n) && v.up(n))).collect();
    let others: Vec<String> = if failover {
        v.all_nodes()
            .into_iter()
            .filter(|n| !d.contains(n) && v.maybe_running(n))
            .collect()
    } else {
        Vec::new()
    };
    // An instance whose stop failed stays up until an operator clears it: the target
    // cannot be reached by waiting.
    let stuck: Vec<&String> = others
        .iter()
        .filter(|n| v.inst(n).status == MonitorStatus::StopFailed)
        .collect();
    if not_up.is_empty() && others.is_empty() {
        Progress::Reached
    } else if !stuck.is_empty() {
        Progress::Failed(format!(
            "stop failed on {}: it may still run; fix it, then `clear`",
            join(&stuck)
        ))
    } else if !others.is_empty() {
        Progress::Pending(format!(
            "waiting for {} to stop",
            join(&others.iter().collect::<Vec<_>>())
        ))
    } else {
        Progress::Pending(format!("waiting for {} to start", join(&not_up)))
    }
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use raft::state::NodeMonitor;
    use raft::state::NodeRecord;
    use raft::state::Service;

    use super::*;
    use raft::state::NodeRole;

    const NODES: &[&str] = &["n1", "n2", "n3", "n4"];

    fn config(topology: Topology, orchestrate: &str, nodes: &str) -> ServiceConfig {
        let topo = match topology {
            Topology::Failover => "failover",
            Topology::Flex => "flex",
        };
        ServiceConfig::parse(&format!(
            "[DEFAULT]\nnodes = {nodes}\ntopology = {topo}\norchestrate = {orchestrate}\n"
        ))
        .unwrap()
    }

    fn cluster(members: &[&str]) -> ClusterState {
        let mut s = ClusterState {
            name: "c".into(),
            ..ClusterState::default()
        };
        for n in members {
            s.nodes.insert(
                n.to_string(),
                NodeRecord {
                    addr: "h:1".into(),
                    joined_at_ms: 0,
                    id: raft::node_id(n),
                    role: NodeRole::Normal,
                },
            );
            s.node_monitors
                .insert(n.to_string(), NodeMonitor::default());
        }
        s.services.insert(
            "svc".into(),
            Service {
                config: String::new(),
                version: 1,
                ..Service::default()
            },
        );
        s
    }

    fn apply_all(state: &mut ClusterState, plan: &Plan) {
        for (cmd, _) in &plan.cmds {
            let (r, _) = raft::apply(state, cmd);
            assert!(r.is_ok(), "the plan's commands are valid: {cmd:?}: {r:?}");
        }
    }

    /// What node `n`'s monitor reports (`edit`), answering every order to start so far.
    fn reported(s: &mut ClusterState, n: &str, edit: impl FnOnce(&mut Instance)) {
        let i = s
            .services
            .get_mut("svc")
            .unwrap()
            .instances
            .get_mut(n)
            .unwrap();
        edit(i);
        i.reported_gen = Some(i.started_gen);
    }

    fn placed(state: &ClusterState) -> Vec<String> {
        state
            .services
            .get("svc")
            .map(|s| {
                s.instances
                    .iter()
                    .filter(|(_, i)| i.local_expect == LocalExpect::Started)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn ha_places_on_the_first_node_then_fails_over_when_it_is_down() {
        let cfg = config(Topology::Failover, "ha", "n2 n1 n3");
        let mut s = cluster(&["n1", "n2", "n3"]);
        let p = plan(&s, "svc", &cfg);
        apply_all(&mut s, &p);
        assert_eq!(placed(&s), ["n2"]);
        // n2 runs it, then goes down.
        let i = s
            .services
            .get_mut("svc")
            .unwrap()
            .instances
            .get_mut("n2")
            .unwrap();
        i.avail = Avail::Up;
        assert!(plan(&s, "svc", &cfg).cmds.is_empty(), "stable");
        s.node_monitors.get_mut("n2").unwrap().status = NodeStatus::Down;
        let p = plan(&s, "svc", &cfg);
        apply_all(&mut s, &p);
        assert_eq!(placed(&s), ["n1"]);
    }

    #[test]
    fn a_witness_is_never_placed_counted_or_switched_to() {
        let mut s = cluster(&["n1", "n2", "w"]);
        s.nodes.get_mut("w").unwrap().role = NodeRole::Witness;
        // Listed first, and `*` for a flex service: neither places it on the witness, and
        // the flex target counts the service nodes only.
        let cfg = config(Topology::Failover, "ha", "w n2 n1");
        let p = plan(&s, "svc", &cfg);
        apply_all(&mut s, &p);
        assert_eq!(placed(&s), ["n2"]);
        let flex = config(Topology::Flex, "ha", "*");
        let mut f = s.clone();
        f.services.get_mut("svc").unwrap().instances.clear();
        let p = plan(&f, "svc", &flex);
        apply_all(&mut f, &p);
        assert_eq!(placed(&f), ["n1", "n2"]);
        // placed@w is refused before it is committed.
        let to_w = Command::SetServiceMonitor {
            svc: "svc".into(),
            node: None,
            status: None,
            local_expect: None,
            global_expect: Some(GlobalExpect::PlacedAt("w".into())),
            reset_retries: false,
        };
        let (r, _) = raft::apply(&mut s, &to_w);
        assert!(
            matches!(r, Err(raft::CommandError::Witness { ref node }) if node == "w"),
            "{r:?}"
        );
        // A service that lists only the witness says why it runs nowhere.
        let mut fresh = cluster(&["n1", "w"]);
        fresh.nodes.get_mut("w").unwrap().role = NodeRole::Witness;
        fresh.services.get_mut("svc").unwrap().global_expect = GlobalExpect::Started;
        let only_w = config(Topology::Failover, "ha", "w");
        let p = plan(&fresh, "svc", &only_w);
        assert!(
            matches!(&p.progress, Progress::Failed(r) if r.contains("w only: a witness runs no service")),
            "{:?}",
            p.progress
        );
    }

    #[test]
    fn a_start_blocked_by_a_failed_stop_elsewhere_fails_instead_of_waiting() {
        let cfg = config(Topology::Failover, "ha", "n1 n2");
        let mut s = cluster(&["n1", "n2"]);
        let svc = s.services.get_mut("svc").unwrap();
        let n2 = svc.instances.entry("n2".into()).or_default();
        n2.avail = Avail::Up;
        n2.status = MonitorStatus::StopFailed;
        n2.local_expect = LocalExpect::Stopped;
        svc.global_expect = GlobalExpect::Started;
        let p = plan(&s, "svc", &cfg);
        assert!(
            matches!(&p.progress, Progress::Failed(r) if r.contains("stop failed on n2")),
            "{p:?}"
        );
        apply_all(&mut s, &p);
        assert!(
            placed(&s).is_empty(),
            "nothing starts beside n2: {:?}",
            p.cmds
        );
    }

    #[test]
    fn a_switch_to_a_frozen_instance_fails_at_once_and_stops_nothing() {
        let cfg = config(Topology::Failover, "ha", "n1 n2");
        let mut s = cluster(&["n1", "n2"]);
        let p = plan(&s, "svc", &cfg);
        apply_all(&mut s, &p);
        let svc = s.services.get_mut("svc").unwrap();
        svc.instances.get_mut("n1").unwrap().avail = Avail::Up;
        svc.instances.entry("n2".into()).or_default().frozen = true;
        svc.global_expect = GlobalExpect::PlacedAt("n2".into());
        let p = plan(&s, "svc", &cfg);
        assert!(
            matches!(&p.progress, Progress::Failed(r) if r.contains("the instance on n2 is frozen")),
            "{p:?}"
        );
        apply_all(&mut s, &p);
        assert_eq!(placed(&s), ["n1"], "n1 keeps running: {:?}", p.cmds);
    }

    #[test]
    fn switch_waits_for_the_old_instance_to_stop() {
        let cfg = config(Topology::Failover, "ha", "n1 n2");
        let mut s = cluster(&["n1", "n2"]);
        let p = plan(&s, "svc", &cfg);
        apply_all(&mut s, &p);
        reported(&mut s, "n1", |i| i.avail = Avail::Up);
        s.services.get_mut("svc").unwrap().global_expect = GlobalExpect::PlacedAt("n2".into());
        let p = plan(&s, "svc", &cfg);
        apply_all(&mut s, &p);
        assert!(placed(&s).is_empty(), "n1 told to stop, n2 not started yet");
        assert!(
            matches!(p.progress, Progress::Pending(ref r) if r.contains("n1")),
            "{p:?}"
        );
        reported(&mut s, "n1", |i| i.avail = Avail::Down);
        let p = plan(&s, "svc", &cfg);
        apply_all(&mut s, &p);
        assert_eq!(placed(&s), ["n2"]);
        reported(&mut s, "n2", |i| i.avail = Avail::Up);
        let p = plan(&s, "svc", &cfg);
        assert_eq!(p.progress, Progress::Reached);
        apply_all(&mut s, &p);
        assert_eq!(s.services["svc"].global_expect, GlobalExpect::None);
    }

    /// The fault suite's anomaly 2: `placed@n3` then `placed@n2` before n3 said anything.
    /// n3 may be between the leader's confirmation and its `starting` report; its last
    /// report (stopped, from before the order) does not count.
    #[test]
    fn a_start_order_not_reported_on_blocks_a_failover_start_elsewhere() {
        let cfg = config(Topology::Failover, "no", "n1 n2 n3");
        let mut s = cluster(&["n1", "n2", "n3"]);
        let to = |s: &mut ClusterState, n: &str| {
            s.services.get_mut("svc").unwrap().global_expect = GlobalExpect::PlacedAt(n.into());
        };
        to(&mut s, "n3");
        let p = plan(&s, "svc", &cfg);
        apply_all(&mut s, &p);
        assert_eq!(placed(&s), ["n3"]);
        to(&mut s, "n2");
        for _ in 0..3 {
            let p = plan(&s, "svc", &cfg);
            apply_all(&mut s, &p);
            assert!(
                placed(&s).is_empty(),
                "n3 told to stop, n2 waits for n3's word"
            );
        }
        reported(&mut s, "n3", |i| i.avail = Avail::Down);
        let p = plan(&s, "svc", &cfg);
        apply_all(&mut s, &p);
        assert_eq!(placed(&s), ["n2"]);
    }

    #[test]
    fn start_failed_everywhere_fails_the_start_and_frozen_nodes_are_skipped() {
        let cfg = config(Topology::Failover, "no", "n1 n2 n3");
        let mut s = cluster(&["n1", "n2", "n3"]);
        s.node_monitors.get_mut("n1").unwrap().frozen = true;
        s.services.get_mut("svc").unwrap().global_expect = GlobalExpect::Started;
        let p = plan(&s, "svc", &cfg);
        apply_all(&mut s, &p);
        assert_eq!(placed(&s), ["n2"], "frozen n1 is skipped");
        reported(&mut s, "n2", |i| i.status = MonitorStatus::StartFailed);
        let p = plan(&s, "svc", &cfg);
        apply_all(&mut s, &p);
        assert_eq!(placed(&s), ["n3"]);
        reported(&mut s, "n3", |i| i.status = MonitorStatus::StartFailed);
        let p = plan(&s, "svc", &cfg);
        assert!(
            matches!(p.progress, Progress::Failed(ref r) if r.contains("node n1 is frozen") && r.contains("n3: start failed")),
            "{p:?}"
        );
    }

    #[test]
    fn flex_runs_target_instances_without_waiting() {
        let cfg = ServiceConfig::parse(
            "[DEFAULT]\nnodes = *\ntopology = flex\nflex_target = 2\norchestrate = ha\n",
        )
        .unwrap();
        let mut s = cluster(&["n1", "n2", "n3"]);
        let p = plan(&s, "svc", &cfg);
        apply_all(&mut s, &p);
        assert_eq!(placed(&s), ["n1", "n2"]);
        s.node_monitors.get_mut("n1").unwrap().status = NodeStatus::Down;
        let p = plan(&s, "svc", &cfg);
        apply_all(&mut s, &p);
        assert_eq!(placed(&s), ["n2", "n3"]);
    }

    // ---- properties ----

    fn arb_instance() -> impl Strategy<Value = Instance> {
        crate::model::arb::instance(&[])
    }

    fn arb_global() -> impl Strategy<Value = GlobalExpect> {
        prop_oneof![
            Just(GlobalExpect::None),
            Just(GlobalExpect::Started),
            Just(GlobalExpect::Stopped),
            Just(GlobalExpect::Frozen),
            Just(GlobalExpect::Thawed),
            Just(GlobalExpect::Placed),
            prop::sample::select(NODES).prop_map(|n| GlobalExpect::PlacedAt(n.to_string())),
            Just(GlobalExpect::Aborted),
            Just(GlobalExpect::Deleted),
        ]
    }

    /// Any cluster of 1..=4 members with any monitors, instances and target, and any
    /// failover config over any subset of nodes (members or not) in any order.
    fn arb_world() -> impl Strategy<Value = (ClusterState, ServiceConfig)> {
        (
            1usize..=4,
            prop::collection::vec((prop::sample::select(NodeStatus::ALL), any::<bool>()), 4),
            prop::collection::vec(prop::option::of(arb_instance()), 4),
            arb_global(),
            Just(NODES.to_vec()).prop_shuffle(),
            1usize..=4,
            any::<bool>(),
            prop::sample::select(vec!["ha", "start", "no"]),
        )
            .prop_map(|(members, mons, insts, ge, order, listed, star, orch)| {
                let mut s = cluster(&NODES[..members]);
                for (i, n) in NODES[..members].iter().enumerate() {
                    let m = s.node_monitors.get_mut(*n).unwrap();
                    m.status = mons[i].0;
                    m.frozen = mons[i].1;
                }
                let svc = s.services.get_mut("svc").unwrap();
                for (i, n) in NODES[..members].iter().enumerate() {
                    if let Some(inst) = &insts[i] {
                        svc.instances.insert(n.to_string(), inst.clone());
                    }
                }
                svc.global_expect = match ge {
                    GlobalExpect::PlacedAt(n) if !s.nodes.contains_key(&n) => GlobalExpect::Placed,
                    g => g,
                };
                let mut nodes = order[..listed].join(" ");
                if star {
                    nodes.push_str(" *");
                }
                let cfg = config(Topology::Failover, orch, &nodes);
                (s, cfg)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// For any state: after the plan, a failover service is placed on at most one node,
        /// and a node is only newly placed when every other instance (on a node that is not
        /// down) has reported itself stopped and idle.
        #[test]
        fn never_two_failover_instances_placed((state, cfg) in arb_world()) {
            let p = plan(&state, "svc", &cfg);
            let before = placed(&state);
            let mut after_state = state.clone();
            apply_all(&mut after_state, &p);
            let after = placed(&after_state);
            prop_assert!(after.len() <= 1, "placed on {:?} after {:?}", after, p.cmds);
            for n in after.iter().filter(|n| !before.contains(n)) {
                let v = View {
                    state: &state,
                    svc: "svc",
                    cfg: &cfg,
                    cands: cfg.candidates(service_members(&state)),
                    default_instance: Instance::default(),
                };
                for other in state.nodes.keys().filter(|o| *o != n) {
                    prop_assert!(!v.busy_or_up(other), "started {n} while {other} may run: {:?}", state.services["svc"].instances.get(other));
                }
                prop_assert!(v.refusal(n, false).is_none(), "{n} refuses: {:?}", v.refusal(n, false));
            }
        }

        /// A plan does not undo itself: the next plan, on the state the first one made,
        /// never stops a node the first one just placed.
        #[test]
        fn plans_do_not_flap((state, cfg) in arb_world()) {
            let before = placed(&state);
            let mut s = state.clone();
            apply_all(&mut s, &plan(&state, "svc", &cfg));
            let new: Vec<String> = placed(&s).into_iter().filter(|n| !before.contains(n)).collect();
            if !s.services.contains_key("svc") {
                return Ok(());
            }
            let again = plan(&s, "svc", &cfg);
            for (cmd, _) in &again.cmds {
                if let Command::SetServiceMonitor { local_expect: Some(LocalExpect::Stopped), node: Some(n), .. } = cmd {
                    prop_assert!(!new.contains(n), "{n} placed then stopped: {:?}", again.cmds);
                }
            }
        }
    }

    /// A step of the simulated cluster.
    #[derive(Debug, Clone)]
    enum Step {
        /// The leader runs the orchestrator.
        Orchestrate,
        /// Node i's monitor enacts its local_expect and reports.
        Monitor(usize),
        /// Node i (daemon and its processes) dies; the leader marks it down.
        Kill(usize),
        /// Node i comes back.
        Revive(usize),
        /// Node i's monitor reads its instance (and the leader confirms it): what it will
        /// act on at its next `Act`, however the state changes meanwhile.
        Look(usize),
        /// Node i's monitor acts on what it read at its last `Look`, then reports.
        Act(usize),
        /// Node i's instance fails: start failed.
        Fail(usize),
        /// The operator clears failures.
        Clear,
        /// The operator sets a global_expect.
        Expect(GlobalExpect),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => Just(Step::Orchestrate),
            6 => (0usize..3).prop_map(Step::Monitor),
            1 => (0usize..3).prop_map(Step::Kill),
            1 => (0usize..3).prop_map(Step::Revive),
            3 => (0usize..3).prop_map(Step::Look),
            3 => (0usize..3).prop_map(Step::Act),
            1 => (0usize..3).prop_map(Step::Fail),
            1 => Just(Step::Clear),
            1 => arb_global().prop_map(Step::Expect),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// A model of the cluster where monitors act on what the state says and report the
        /// truth: at no point do two nodes actually run the failover service.
        #[test]
        fn simulated_cluster_never_runs_a_failover_service_twice(
            steps in prop::collection::vec(arb_step(), 1..120),
            orch in prop::sample::select(vec!["ha", "start", "no"]),
        ) {
            let names = ["n1", "n2", "n3"];
            let cfg = config(Topology::Failover, orch, "n1 n2 n3");
            let mut s = cluster(&names);
            let mut running = [false; 3];
            let mut alive = [true; 3];
            let mut seen: [Option<Instance>; 3] = Default::default();
            for step in steps {
                match step {
                    Step::Orchestrate => {
                        if s.services.contains_key("svc") {
                            let p = plan(&s, "svc", &cfg);
                            apply_all(&mut s, &p);
                        }
                    }
                    Step::Look(i) if alive[i] && s.services.contains_key("svc") => {
                        seen[i] = Some(s.services["svc"].instances.get(names[i]).cloned().unwrap_or_default());
                    }
                    Step::Look(_) => {}
                    Step::Act(i) | Step::Monitor(i) if alive[i] && s.services.contains_key("svc") => {
                        let n = names[i];
                        // One worker: a whole pass ends the one it was in.
                        let looked = seen[i].take();
                        let now = s.services["svc"].instances.get(n).cloned().unwrap_or_default();
                        let inst = match step {
                            Step::Act(_) => match looked { Some(v) => v, None => continue },
                            _ => now,
                        };
                        let failed = matches!(inst.status, MonitorStatus::StartFailed | MonitorStatus::StopFailed);
                        // The most eager monitor: starts whatever it is told to, at once.
                        match inst.local_expect {
                            LocalExpect::Started if !failed => running[i] = true,
                            LocalExpect::Stopped => running[i] = false,
                            _ => {}
                        }
                        let ge = &s.services["svc"].global_expect;
                        let frozen = match ge {
                            GlobalExpect::Frozen | GlobalExpect::Stopped => true,
                            GlobalExpect::Thawed | GlobalExpect::Started => false,
                            _ => inst.frozen,
                        };
                        let cmd = Command::ReportInstance {
                            svc: "svc".into(),
                            node: n.into(),
                            avail: if running[i] { Avail::Up } else { Avail::Down },
                            status: Some(if failed { inst.status } else { MonitorStatus::Idle }),
                            frozen: Some(frozen),
                            restarts: BTreeMap::new(),
                            at_ms: 0,
                            started_gen: Some(inst.started_gen),
                        };
                        raft::apply(&mut s, &cmd).0.unwrap();
                    }
                    Step::Act(_) | Step::Monitor(_) => {}
                    Step::Kill(i) => {
                        alive[i] = false;
                        seen[i] = None;
                        running[i] = false;
                        s.node_monitors.get_mut(names[i]).unwrap().status = NodeStatus::Down;
                    }
                    Step::Revive(i) => {
                        alive[i] = true;
                        s.node_monitors.get_mut(names[i]).unwrap().status = NodeStatus::Idle;
                    }
                    Step::Fail(i) if alive[i] && running[i] && s.services.contains_key("svc") => {
                        seen[i] = None;
                        // The monitor stops what it could not keep up and reports start failed.
                        running[i] = false;
                        let cmd = Command::ReportInstance {
                            svc: "svc".into(),
                            node: names[i].into(),
                            avail: Avail::Down,
                            status: Some(MonitorStatus::StartFailed),
                            frozen: None,
                            restarts: BTreeMap::new(),
                            at_ms: 0,
                            started_gen: None,
                        };
                        raft::apply(&mut s, &cmd).0.unwrap();
                    }
                    Step::Fail(_) => {}
                    Step::Clear => {
                        if s.services.contains_key("svc") {
                            raft::apply(&mut s, &Command::Clear { svc: "svc".into(), node: None }).0.unwrap();
                        }
                    }
                    Step::Expect(ge) => {
                        if s.services.contains_key("svc") {
                            let cmd = Command::SetServiceMonitor {
                                svc: "svc".into(), node: None, status: None, local_expect: None,
                                global_expect: Some(ge), reset_retries: false,
                            };
                            // A placement on a non-member is refused, as on a real cluster.
                            let _ = raft::apply(&mut s, &cmd);
                        }
                    }
                }
                let count = running.iter().filter(|r| **r).count();
                prop_assert!(count <= 1, "running on {:?} in {:?}", running, s.services.get("svc"));
                prop_assert!(placed(&s).len() <= 1);
            }
        }
    }
}
