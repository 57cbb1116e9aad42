//! Clients and the operator: what the cluster is asked to do while the faults rage.
//!
//! Clients propose every kind of cluster command and read cluster parameters; each
//! operation on a parameter is recorded with its call and return (or "unknown" on a
//! timeout) for the linearizability checker, and each acknowledged command for the
//! durability checker. Some proposals go through a non-leader that forwards them
//! (`net::forward`), lossy and sometimes duplicated. The operator removes and re-adds
//! members with the daemon's own protocol (`raft::membership`), the way an admin would with
//! `om node daemon leave|join`; nodes announce a new listener address with it too.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::EntryPayload;
use raft::command::ProposalId;
use raft::membership;
use raft::membership::MembershipError;
use raft::node::Committed;
use raft::state::Avail;
use raft::state::GlobalExpect;
use raft::state::LocalExpect;
use raft::state::MonitorStatus;
use raft::state::NodeExpect;
use raft::state::NodeStatus;
use raft::Command;
use raft::CommandError;
use raft::Node;
use raft::NodeId;
use raft::ProposeError;
use raft::TypeConfig;
use tokio::time::sleep;
use tokio::time::timeout;

use crate::bugs::Bug;
use crate::check::Acked;
use crate::check::RegOp;
use crate::net;
use crate::rng::fnv1a;
use crate::rng::Rng;
use crate::world::Status;
use crate::world::World;
use linear::Kind;

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
    /// Definitely not applied (node down, refused).
    Failed(String),
    /// Not the leader, and where the leader is if known. For a write this is no answer:
    /// openraft also says it of an entry it appended and then truncated, which a later
    /// leader may commit (seed 13269).
    NotLeader(String, Option<NodeId>),
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
        return Outcome::Failed("node is down".into());
    };
    match timeout(Duration::from_millis(w.cfg.client_timeout_ms), f(node)).await {
        Err(_) => Outcome::Unknown("timeout".into()),
        Ok(Ok(t)) => Outcome::Done(t),
        Ok(Err(ProposeError::NotLeader { leader_id, .. })) => Outcome::NotLeader(
            format!(
                "not leader (leader {})",
                leader_id.map_or("?".into(), |l| w.name_of(l))
            ),
            leader_id,
        ),
        Ok(Err(ProposeError::Rejected(e))) => Outcome::Failed(format!("rejected: {e}")),
        Ok(Err(e)) => Outcome::Unknown(e.to_string()),
    }
}

/// One client: a loop of operations until `stop`.
pub async fn client(w: Arc<World>, k: usize, stop: Arc<AtomicBool>) {
    let mut rng = Rng::stream(w.cfg.seed, &format!("client.{k}"));
    let who = format!("c{k}");
    let mut target = rng.below(w.cfg.nodes as u64) as usize;
    let mut opno = 0u64;
    let session = Rng::seed_for(w.cfg.seed, &format!("session.{k}"));
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
                Outcome::Failed(e) | Outcome::NotLeader(e, _) | Outcome::Unknown(e) => {
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
            // Every try of this operation carries one id, as the daemon's retries do.
            // One operation at a time: every earlier one has its answer (the floor).
            let cmd = cmd.once(ProposalId { session, seq: opno }, opno);
            let (out, call, at) = write(&w, &who, &mut rng, target, &cmd).await;
            // write() followed the leader's name itself, and ends on the node it tried last.
            target = at;
            leader_hint = None;
            let ret = w.next_seq();
            record_write(&w, &who, &cmd, out, call, ret);
        }
        redirected = leader_hint.is_some_and(|l| l != target);
        if let Some(l) = leader_hint {
            target = l;
        }
    }
}

/// The register a command writes, and the value.
fn cmd_register(cmd: &Command) -> Option<(String, Option<String>)> {
    match cmd {
        Command::SetClusterParam { key, value } => Some((key.clone(), value.clone())),
        _ => None,
    }
}

/// Where a failed attempt says the leader is.
fn hint<T>(w: &World, out: &Outcome<T>) -> Option<usize> {
    match out {
        Outcome::NotLeader(_, Some(id)) => w.index_of(*id),
        _ => None,
    }
}

/// Tries of one write before its client gives up (the daemon retries for 10 s).
const WRITE_TRIES: usize = 3;

/// One write operation: proposes `cmd` at `target` (or through it, forwarded), and on
/// "not leader" again at the leader it names, with the same [`Command::Once`] id, as the
/// daemon does. Returns the outcome, the call's sequence number and the node tried last.
async fn write(
    w: &Arc<World>,
    who: &str,
    rng: &mut Rng,
    target: usize,
    cmd: &Command,
) -> (Outcome<Result<Committed, CommandError>>, u64, usize) {
    let call = w.next_seq();
    let mut at = target;
    let mut asked_before = false;
    for tries in 1.. {
        // Through the node asked, which forwards it if it does not lead, or straight to
        // the node (which refuses with a leader hint).
        let forwarded = rng.chance(w.cfg.forward);
        let how = if forwarded { "via" } else { "at" };
        let tname = w.ident(at);
        w.ev(who, format_args!("[{call}] propose {how} {tname}: {cmd:?}"));
        let out = propose_once(w, at, forwarded, cmd.clone()).await;
        match (hint(w, &out), out) {
            (Some(leader), Outcome::NotLeader(..)) if tries < WRITE_TRIES => {
                asked_before = true;
                at = leader;
            }
            // A definite refusal after a "not leader" is not definite: the first try may
            // still commit.
            (_, Outcome::Failed(e)) if asked_before => {
                return (Outcome::Unknown(format!("{e}, after not leader")), call, at)
            }
            (_, Outcome::NotLeader(e, _)) => return (Outcome::Unknown(e), call, at),
            (_, out) => return (out, call, at),
        }
    }
    unreachable!("the loop returns")
}

/// One try of a write at (or through) node `at`.
async fn propose_once(
    w: &Arc<World>,
    at: usize,
    forwarded: bool,
    c: Command,
) -> Outcome<Result<Committed, CommandError>> {
    // A forwarded copy sent twice is the same proposal: `Once` applies it once.
    let duplicated = AtomicBool::new(false);
    if forwarded {
        let dup = &duplicated;
        attempt(w, at, |_| async move { net::forward(w, at, c, dup).await }).await
    } else {
        attempt(w, at, |n| async move { net::propose(&n, c).await }).await
    }
}

/// Records a write's outcome: the acknowledged entry to check, and the register operation.
fn record_write(
    w: &World,
    who: &str,
    cmd: &Command,
    out: Outcome<Result<Committed, CommandError>>,
    call: u64,
    ret: u64,
) {
    let register = cmd_register(cmd.inner());
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
                who,
                format_args!("[{ret}] committed at {index:?}: {reply:?}"),
            );
            rec.stats.writes_ok += 1;
            if let Some(index) = index {
                rec.acked.push(Acked {
                    index,
                    payload: payload_hash(cmd),
                    reply: reply.map(|c| c.outcome),
                    what: format!("{who}'s {:?}", cmd.inner()),
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
        Outcome::Failed(e) => {
            w.ev(who, format_args!("[{ret}] failed: {e}"));
            rec.stats.writes_failed += 1;
        }
        Outcome::NotLeader(e, _) | Outcome::Unknown(e) => {
            w.ev(who, format_args!("[{ret}] unknown outcome: {e}"));
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
                started_gen: opt(r).then(|| r.below(4)),
            }
        }
    }
}

/// How long one step of the membership protocol may take before the operator gives up on
/// it (a `complete` that overruns is rolled back by hand).
fn step_timeout(w: &World) -> Duration {
    Duration::from_millis(w.cfg.client_timeout_ms.max(2_000))
}

/// Adds node `idx` to the cluster through the current leader with the daemon's protocol
/// (`raft::membership::admit`, then `Admission::complete`: learner, caught up, voter, `Join`;
/// a failure rolls the learner back). `Err` says where it stopped; the operator tries again.
pub async fn join(w: &Arc<World>, idx: usize) -> Result<(), String> {
    let t = step_timeout(w);
    if w.status(idx) == Status::Out {
        w.start(idx).await?;
    }
    let (lidx, leader) = w.leader().ok_or("no leader")?;
    let me = w.member(idx);
    w.ev(
        "op",
        format_args!("join {} at {} via {}", me.name, me.addr, w.names[lidx]),
    );
    let admission = timeout(t, membership::admit(&leader, &me.name, w.id(idx), &me.addr))
        .await
        .map_err(|_| "admit timed out".to_string())?
        .map_err(|e| format!("admit: {e}"))?;
    // `complete` rolls back on its own failures; if it overruns, it is dropped mid-way, and
    // the rollback is run here, as the daemon's caller would on its deadline.
    match timeout(
        t * 3,
        admission.clone().complete(&leader, w.wall_ms(lidx), t),
    )
    .await
    {
        Ok(Ok(_)) => {
            w.ev("op", format_args!("{} joined", me.name));
            w.rec().stats.joins += 1;
            Ok(())
        }
        Ok(Err(e)) => Err(format!("complete: {e}")),
        Err(_) => {
            let rollback = match timeout(t, admission.rollback(&leader)).await {
                Ok(r) => r,
                Err(_) => "timed out".into(),
            };
            Err(format!("complete timed out; rollback: {rollback}"))
        }
    }
}

/// Removes node `idx` through the current leader (`raft::membership::evict`: voter removed,
/// then `Leave`). Once Raft has committed the removal (the leader's applied membership no
/// longer has it), the node is stopped and its disk wiped, as `om node daemon leave` does;
/// a `Leave` left undone is finished by [`finish_interrupted`].
async fn leave(w: &Arc<World>, idx: usize) -> Result<(), String> {
    let (lidx, leader) = w.leader().ok_or("no leader")?;
    let (id, name) = {
        let s = &w.slots()[idx];
        (s.id, s.name.clone())
    };
    w.ev("op", format_args!("leave {name} via {}", w.names[lidx]));
    let result = timeout(
        step_timeout(w) * 2,
        membership::evict(&leader, &name, false),
    )
    .await;
    let removed = leader.read_machine(|d| d.membership.membership().get_node(&id).is_none());
    if removed {
        w.ev("op", format_args!("{name} left"));
        w.rec().stats.leaves += 1;
        w.wipe(idx);
    }
    match result {
        Err(_) => Err("evict timed out".into()),
        Ok(Err(e)) => Err(format!("evict: {e}")),
        Ok(Ok(())) => Ok(()),
    }
}

/// Completes or undoes what an interrupted step left in one record only (as the daemon's
/// next attempt does): a name in the state that Raft no longer has (its `Leave` was not
/// committed) gets its `Leave`; a member in Raft that never committed its `Join` (a
/// rollback that failed) is evicted, and its node reset to rejoin under a new name.
async fn finish_interrupted(w: &Arc<World>, leader: &raft::Node) -> Result<(), String> {
    let m = leader.metrics();
    // The state lags the log: only judge it once it has caught up.
    if m.last_applied.map(|l| l.index) != m.last_log_index {
        return Ok(());
    }
    let mem = m.membership_config.membership();
    let in_state: BTreeSet<String> = leader.read(|s| s.nodes.keys().cloned().collect());
    let in_raft: BTreeSet<String> = mem.nodes().map(|(_, n)| n.name.clone()).collect();
    let t = step_timeout(w);
    if let Some(name) = in_state.difference(&in_raft).next() {
        w.ev("op", format_args!("finish the leave of {name}"));
        return match timeout(t * 2, membership::evict(leader, name, false)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("evict {name}: {e}")),
            Err(_) => Err(format!("evict {name} timed out")),
        };
    }
    if let Some(name) = in_raft.difference(&in_state).next() {
        let idx = (0..w.cfg.nodes).find(|i| w.ident(*i) == *name);
        w.ev("op", format_args!("undo the half-done join of {name}"));
        let r = timeout(t * 2, membership::evict(leader, name, false)).await;
        let id = raft::node_id(name);
        let removed = leader.read_machine(|d| d.membership.membership().get_node(&id).is_none());
        if let (true, Some(idx)) = (removed, idx) {
            w.wipe(idx);
        }
        return match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("evict {name}: {e}")),
            Err(_) => Err(format!("evict {name} timed out")),
        };
    }
    Ok(())
}

/// The operator: now and then removes a member, and puts back whoever is out; first it
/// finishes whatever an interrupted step left.
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
        if let Err(e) = finish_interrupted(&w, &leader).await {
            w.ev("op", format_args!("gave up for now: {e}"));
            continue;
        }
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

/// Node `idx` announces its listener address to the leader (`membership::set_addr`), as a
/// restarted daemon does, until it is recorded, it is no longer a member, or `stop` (when
/// given). A refusal because another member's record holds the address (two records
/// swapped, which one announcement alone cannot undo) makes the node move to a free port
/// and announce that. Returns whether its record is right.
pub async fn announce(w: &Arc<World>, idx: usize, stop: Option<&AtomicBool>) -> bool {
    loop {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) || w.status(idx) != Status::Up {
            return false;
        }
        match announce_once(w, idx).await {
            Some(right) => return right,
            None => sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One announcement of node `idx`'s address: `Some(whether its record is right)` when that
/// is settled, `None` when it is worth trying again.
async fn announce_once(w: &Arc<World>, idx: usize) -> Option<bool> {
    let me = w.member(idx);
    let Some((lidx, leader)) = w.leader() else {
        // No leader to record it: tell the members, as the daemon does (any member takes
        // an announcement), so that candidates can reach this node.
        for j in (0..w.cfg.nodes).filter(|j| *j != idx) {
            if let Some(n) = w.node(j) {
                membership::note_announcement(&n, &me.name, &me.addr);
            }
        }
        return None;
    };
    let recorded = leader
        .metrics()
        .membership_config
        .membership()
        .get_node(&raft::node_id(&me.name))
        .map(|m| m.addr.clone());
    match recorded {
        None => return Some(false),
        Some(a) if a == me.addr => return Some(true),
        Some(_) => {}
    }
    w.ev(
        &w.names[idx],
        format_args!("announces {} via {}", me.addr, w.names[lidx]),
    );
    match timeout(
        step_timeout(w),
        membership::set_addr(&leader, &me.name, &me.addr),
    )
    .await
    {
        Ok(Ok(())) => {
            w.rec().stats.addr_repairs += 1;
        }
        Ok(Err(MembershipError::Refused(CommandError::AddrTaken { holder, .. }))) => {
            w.ev(
                &w.names[idx],
                format_args!("address {} refused: {holder}'s record holds it", me.addr),
            );
            w.relisten(idx);
        }
        Ok(Err(MembershipError::NotMember { .. })) => return Some(false),
        Ok(Err(e)) => w.ev(&w.names[idx], format_args!("announce failed: {e}")),
        Err(_) => w.ev(&w.names[idx], format_args!("announce timed out")),
    }
    None
}

/// The daemon's re-announcement watchdog for every node (`membership::Reannounce`, ticked
/// each 500 ms by the daemon's listener thread): a node that has known no leader for a
/// while, or whose own record is not its address, makes one announcement, and more later.
/// Its state is lost with the node, as the daemon's is with its process.
pub async fn reannounce_when_stale(w: Arc<World>) {
    let mut dogs = vec![membership::Reannounce::default(); w.cfg.nodes];
    let mut busy: Vec<Option<tokio::task::JoinHandle<()>>> =
        (0..w.cfg.nodes).map(|_| None).collect();
    loop {
        sleep(Duration::from_millis(500)).await;
        for (i, dog) in dogs.iter_mut().enumerate() {
            let node = w.node(i).filter(|_| w.status(i) == Status::Up);
            let Some(node) = node else {
                *dog = membership::Reannounce::default();
                continue;
            };
            if busy[i].as_ref().is_some_and(|h| !h.is_finished()) {
                continue;
            }
            let fine = membership::announcement_settled(&node, w.id(i), &w.member(i).addr);
            if dog.due(tokio::time::Instant::now(), fine) {
                let w = w.clone();
                busy[i] = Some(tokio::spawn(async move {
                    announce_once(&w, i).await;
                }));
            }
        }
    }
}
