//! Clients and the operator: what the cluster is asked to do while the faults rage.
//!
//! Clients propose every kind of cluster command and read cluster parameters; each
//! operation on a parameter is recorded with its call and return (or "unknown" on a
//! timeout) for the linearizability checker, and each acknowledged command for the
//! durability checker. The operator removes and re-adds members, the way an admin would
//! with `om node daemon leave|join`.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::EntryPayload;
use raft::node::Committed;
use raft::state::Avail;
use raft::state::GlobalExpect;
use raft::state::LocalExpect;
use raft::state::MonitorStatus;
use raft::state::NodeExpect;
use raft::state::NodeStatus;
use raft::Command;
use raft::Node;
use raft::NodeId;
use raft::ProposeError;
use raft::TypeConfig;
use tokio::time::sleep;
use tokio::time::timeout;

use crate::bugs::Bug;
use crate::check::Acked;
use crate::check::RegOp;
use crate::linear::Kind;
use crate::rng::fnv1a;
use crate::rng::Rng;
use crate::world::Status;
use crate::world::World;

/// The register keys clients work on.
pub fn key(i: usize) -> String {
    format!("sim.k{i}")
}

fn payload_hash(cmd: &Command) -> u64 {
    let p: EntryPayload<TypeConfig> = EntryPayload::Normal(cmd.clone());
    fnv1a(&rmp_serde::to_vec(&p).expect("payload serializes"))
}

/// What one attempt came to.
enum Outcome<T> {
    Done(T),
    /// Definitely not applied (not the leader, node down), and where the leader is if known.
    Failed(String, Option<NodeId>),
    /// Unknown: timed out or the node stopped mid-way.
    Unknown(String),
}

/// Runs `f` against node `idx` with the client timeout.
async fn attempt<T, F, Fut>(w: &World, idx: usize, f: F) -> Outcome<T>
where
    F: FnOnce(Node) -> Fut,
    Fut: Future<Output = Result<T, ProposeError>>,
{
    let Some(node) = w.node(idx) else {
        return Outcome::Failed("node is down".into(), None);
    };
    match timeout(Duration::from_millis(w.cfg.client_timeout_ms), f(node)).await {
        Err(_) => Outcome::Unknown("timeout".into()),
        Ok(Ok(t)) => Outcome::Done(t),
        Ok(Err(ProposeError::NotLeader { leader_id, .. })) => Outcome::Failed(
            format!(
                "not leader (leader {})",
                leader_id.map_or("?".into(), |l| w.name_of(l))
            ),
            leader_id,
        ),
        Ok(Err(ProposeError::Rejected(e))) => Outcome::Failed(format!("rejected: {e}"), None),
        Ok(Err(e)) => Outcome::Unknown(e.to_string()),
    }
}

/// One client: a loop of operations until `stop`.
pub async fn client(w: Arc<World>, k: usize, stop: Arc<AtomicBool>) {
    let mut rng = Rng::stream(w.cfg.seed, &format!("client.{k}"));
    let who = format!("c{k}");
    let mut target = rng.below(w.cfg.nodes as u64) as usize;
    let mut opno = 0u64;
    let mut redirected = false;
    while !stop.load(Ordering::Relaxed) {
        // Think, unless the last attempt was turned away with the leader's name: then retry
        // there at once, as a client library would.
        if !redirected {
            sleep(Duration::from_millis(rng.exp(w.cfg.client_gap_ms) + 1)).await;
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        opno += 1;
        // Ask the node we believe leads; sometimes anyone.
        if rng.chance(0.1) || w.status(target) != Status::Up {
            target = rng.below(w.cfg.nodes as u64) as usize;
        }
        let tname = w.ident(target);
        let roll = rng.below(100);
        let key_i = rng.below(w.cfg.keys as u64) as usize;
        let leader_hint;
        if roll < 40 {
            // Read a register.
            let k = key(key_i);
            let call = w.next_seq();
            w.ev(&who, format_args!("[{call}] read {k} at {tname}"));
            let stale = w.bug() == Some(Bug::StaleRead);
            let kk = k.clone();
            let out = attempt(&w, target, |n| async move {
                if stale {
                    Ok(n.read(|s| s.params.get(&kk).cloned()))
                } else {
                    n.read_linearizable(|s| s.params.get(&kk).cloned()).await
                }
            })
            .await;
            let ret = w.next_seq();
            leader_hint = hint(&w, &out);
            match out {
                Outcome::Done(v) => {
                    w.ev(&who, format_args!("[{ret}] read {k} = {v:?}"));
                    let mut rec = w.rec();
                    rec.stats.reads_ok += 1;
                    rec.ops.push(RegOp {
                        key: k,
                        call,
                        ret: Some(ret),
                        kind: Kind::Read(v),
                    });
                }
                Outcome::Failed(e, _) | Outcome::Unknown(e) => {
                    w.ev(&who, format_args!("[{ret}] read {k} failed: {e}"));
                    w.rec().stats.reads_failed += 1;
                }
            }
        } else {
            let cmd = if roll < 75 {
                let value = if rng.chance(0.1) {
                    None
                } else {
                    Some(format!("c{k}-{opno}"))
                };
                Command::SetClusterParam {
                    key: key(key_i),
                    value,
                }
            } else {
                other_command(&w, &mut rng, target)
            };
            let register = match &cmd {
                Command::SetClusterParam { key, value } => Some((key.clone(), value.clone())),
                _ => None,
            };
            let what = format!("{cmd:?}");
            let call = w.next_seq();
            w.ev(&who, format_args!("[{call}] propose at {tname}: {what}"));
            let c = cmd.clone();
            let out = attempt(&w, target, |n| async move {
                match n.propose(c).await {
                    Ok(ok) => Ok(Ok(ok)),
                    Err(ProposeError::Rejected(e)) => Ok(Err(e)),
                    Err(e) => Err(e),
                }
            })
            .await;
            let ret = w.next_seq();
            leader_hint = hint(&w, &out);
            let mut rec = w.rec();
            match out {
                Outcome::Done(reply) => {
                    let index = match &reply {
                        Ok(Committed { index, .. }) => Some(*index),
                        // A refused command has no index to check; the reply is still checked
                        // by the replay through the state, not here.
                        Err(_) => None,
                    };
                    w.ev(
                        &who,
                        format_args!("[{ret}] committed at {index:?}: {reply:?}"),
                    );
                    rec.stats.writes_ok += 1;
                    if let Some(index) = index {
                        rec.acked.push(Acked {
                            index,
                            payload: payload_hash(&cmd),
                            reply: reply.map(|c| c.outcome),
                            what: format!("{who}'s {what}"),
                        });
                    }
                    if let Some((key, value)) = register {
                        rec.ops.push(RegOp {
                            key,
                            call,
                            ret: Some(ret),
                            kind: Kind::Write(value),
                        });
                    }
                }
                Outcome::Failed(e, _) => {
                    w.ev(&who, format_args!("[{ret}] failed: {e}"));
                    rec.stats.writes_failed += 1;
                }
                Outcome::Unknown(e) => {
                    w.ev(&who, format_args!("[{ret}] unknown outcome: {e}"));
                    rec.stats.writes_unknown += 1;
                    if let Some((key, value)) = register {
                        rec.ops.push(RegOp {
                            key,
                            call,
                            ret: None,
                            kind: Kind::Write(value),
                        });
                    }
                }
            }
        }
        redirected = leader_hint.is_some_and(|l| l != target);
        if let Some(l) = leader_hint {
            target = l;
        }
    }
}

/// Where a failed attempt says the leader is.
fn hint<T>(w: &World, out: &Outcome<T>) -> Option<usize> {
    match out {
        Outcome::Failed(_, Some(id)) => w.index_of(*id),
        _ => None,
    }
}

/// A random cluster command other than a parameter write, proposed at node `at`.
fn other_command(w: &World, r: &mut Rng, at: usize) -> Command {
    let node = w.ident(r.below(w.names.len() as u64) as usize);
    let svc = format!("s{}", r.below(3));
    let opt = |r: &mut Rng| r.chance(0.5);
    match r.below(9) {
        0 => Command::SetNodeMonitor {
            node,
            status: opt(r).then(|| *r.pick(NodeStatus::ALL)),
            local_expect: opt(r).then(|| *r.pick(NodeExpect::ALL)),
            frozen: opt(r).then(|| r.chance(0.5)),
        },
        1 => Command::SetServiceMonitor {
            svc,
            node: Some(node.clone()),
            status: opt(r).then(|| *r.pick(MonitorStatus::ALL)),
            local_expect: opt(r).then(|| *r.pick(LocalExpect::ALL)),
            global_expect: opt(r).then(|| {
                r.pick(&[
                    GlobalExpect::Started,
                    GlobalExpect::Stopped,
                    GlobalExpect::Frozen,
                    GlobalExpect::PlacedAt(node),
                ])
                .clone()
            }),
            reset_retries: r.chance(0.3),
        },
        2 => Command::Clear {
            svc,
            node: opt(r).then_some(node),
        },
        3 => Command::CreateService {
            svc,
            config: format!("[DEFAULT]\nid = {}\n", r.below(1000)),
        },
        4 => Command::UpdateService {
            svc,
            config: format!("[DEFAULT]\nid = {}\n", r.below(1000)),
            expected_version: opt(r).then(|| r.between(1, 4)),
        },
        5 => Command::DeleteService { svc },
        6 => Command::SetNodeAddr {
            node: node.clone(),
            addr: format!("{node}:{}", r.between(1000, 2000)),
        },
        _ => {
            let mut restarts = BTreeMap::new();
            if r.chance(0.5) {
                restarts.insert("app#1".to_string(), r.below(4) as u32);
            }
            Command::ReportInstance {
                svc,
                node: w.ident(at),
                avail: *r.pick(Avail::ALL),
                status: opt(r).then(|| *r.pick(MonitorStatus::ALL)),
                frozen: opt(r).then(|| r.chance(0.5)),
                restarts,
                // The proposer's skewed wall clock.
                at_ms: w.wall_ms(at),
            }
        }
    }
}

/// Adds node `idx` to the cluster through the current leader: learner, voter, then the
/// `Join` command. `Err` says where it stopped; the operator tries again later.
pub async fn join(w: &Arc<World>, idx: usize) -> Result<(), String> {
    let t = Duration::from_millis(w.cfg.client_timeout_ms.max(2_000));
    if w.status(idx) == Status::Out {
        w.start(idx).await?;
    }
    let (lidx, leader) = w.leader().ok_or("no leader")?;
    let (id, member, name) = {
        let s = &w.slots()[idx];
        (s.id, s.member.clone(), s.name.clone())
    };
    w.ev("op", format_args!("join {name} via {}", w.names[lidx]));
    let voters: BTreeSet<u64> = leader
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    if !voters.contains(&id) {
        timeout(t, leader.add_learner(id, member.clone()))
            .await
            .map_err(|_| "add_learner timed out".to_string())?
            .map_err(|e| format!("add_learner: {e}"))?;
        timeout(t, leader.add_voters(BTreeSet::from([id])))
            .await
            .map_err(|_| "add_voters timed out".to_string())?
            .map_err(|e| format!("add_voters: {e}"))?;
    }
    let cmd = Command::Join {
        node: name.clone(),
        addr: member.addr.clone(),
        at_ms: w.wall_ms(lidx),
    };
    match timeout(t, leader.propose(cmd)).await {
        Err(_) => Err("join command timed out".into()),
        Ok(Ok(_)) | Ok(Err(ProposeError::Rejected(_))) => {
            w.ev("op", format_args!("{name} joined"));
            w.rec().stats.joins += 1;
            Ok(())
        }
        Ok(Err(e)) => Err(format!("join command: {e}")),
    }
}

/// Removes node `idx` through the current leader, in the daemon's order (`evict`): the
/// membership change, then the `Leave` command. Once the change is committed the node is
/// stopped and its disk wiped, as `om node daemon leave` does.
async fn leave(w: &Arc<World>, idx: usize) -> Result<(), String> {
    let t = Duration::from_millis(w.cfg.client_timeout_ms.max(2_000));
    let (lidx, leader) = w.leader().ok_or("no leader")?;
    let (id, name) = {
        let s = &w.slots()[idx];
        (s.id, s.name.clone())
    };
    w.ev("op", format_args!("leave {name} via {}", w.names[lidx]));
    timeout(t, leader.remove_members(BTreeSet::from([id])))
        .await
        .map_err(|_| "remove_members timed out".to_string())?
        .map_err(|e| format!("remove_members: {e}"))?;
    w.ev("op", format_args!("{name} left"));
    w.rec().stats.leaves += 1;
    w.wipe(idx);
    match timeout(t, leader.propose(Command::Leave { node: name.clone() })).await {
        Err(_) => Err("leave command timed out".into()),
        Ok(Ok(_)) | Ok(Err(ProposeError::Rejected(_))) => Ok(()),
        Ok(Err(e)) => Err(format!("leave command: {e}")),
    }
}

/// The operator: now and then removes a member, and puts back whoever is out.
pub async fn operator(w: Arc<World>, stop: Arc<AtomicBool>) {
    let mut rng = Rng::stream(w.cfg.seed, "operator");
    let min_voters = if w.cfg.nodes == 3 { 2 } else { 3 };
    while !stop.load(Ordering::Relaxed) {
        sleep(Duration::from_millis(rng.exp(w.cfg.membership_gap_ms) + 1)).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Some((_, leader)) = w.leader() else {
            continue;
        };
        let voters: BTreeSet<u64> = leader
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        let out: Vec<usize> = (0..w.cfg.nodes)
            .filter(|i| !voters.contains(&w.id(*i)))
            .collect();
        let result = if !out.is_empty() && (rng.chance(0.7) || voters.len() <= min_voters) {
            let idx = *rng.pick(&out);
            join(&w, idx).await
        } else if voters.len() > min_voters {
            let ins: Vec<usize> = (0..w.cfg.nodes)
                .filter(|i| voters.contains(&w.id(*i)))
                .collect();
            let idx = *rng.pick(&ins);
            leave(&w, idx).await
        } else {
            Ok(())
        };
        if let Err(e) = result {
            w.ev("op", format_args!("gave up for now: {e}"));
        }
    }
}
