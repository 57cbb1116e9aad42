//! The simulated network: the production `raft::rpc::AddressedNet` (openraft's network
//! factory, the one the daemon runs) over [`SimTransport`], an in-process router that
//! resolves a destination by *address*, through the world's address book (which node listens
//! where), and delivers each RPC to that node's `raft::rpc::Inbox` after a delay on the
//! paused clock. The network stream decides each message's fate: loss, duplication, delay
//! (hence reordering), partitions, and now and then delivery to the wrong node, as a stale
//! address, a NAT or a reused port would. What reaches the wrong node is the inbox's
//! business: the production code must refuse it.
//!
//! Forwarded client proposals (a non-leader passing a command on to the leader) travel the
//! same network with their own loss and duplication: [`forward`].

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::Raft;
use openraft::ServerState;
use raft::node::Committed;
use raft::rpc::Addressed;
use raft::rpc::Answer;
use raft::rpc::Inbox;
use raft::rpc::Reply;
use raft::rpc::Rpc;
use raft::rpc::Transport;
use raft::rpc::TransportError;
use raft::Command;
use raft::CommandError;
use raft::Member;
use raft::NodeId;
use raft::ProposeError;
use raft::TypeConfig;

use crate::config::NetParams;
use crate::config::SimConfig;
use crate::rng::Rng;
use crate::world::Status;
use crate::world::World;

/// The cluster name every node's network and inbox use (and `Bootstrap` records).
pub const CLUSTER: &str = "sim";

/// The network's mutable state.
pub struct NetState {
    rng: Rng,
    /// Per-message behaviour now: calm outside the fault phase, `SimConfig::net` in it.
    pub params: NetParams,
    /// Directed links that deliver nothing: (from, to).
    pub blocked: BTreeSet<(usize, usize)>,
    next_id: u64,
}

/// What happens to one message, decided when it is sent.
struct Plan {
    id: u64,
    delay: Duration,
    lose_request: bool,
    duplicate_after: Option<Duration>,
    lose_response: bool,
    response_delay: Duration,
    /// Delivered to another listening node than the one at the address: which one, as a
    /// draw the candidates are indexed by when it arrives.
    misdeliver: Option<u64>,
}

impl NetState {
    /// The network of `cfg`'s seed: calm, no blocked links, until the fault phase begins.
    pub fn new(cfg: &SimConfig) -> NetState {
        NetState {
            rng: Rng::stream(cfg.seed, "net"),
            params: NetParams::calm(),
            blocked: BTreeSet::new(),
            next_id: 0,
        }
    }

    fn delay(&mut self) -> Duration {
        let p = &self.params;
        let (lo, hi, long, long_max) = (
            p.delay_min_us,
            p.delay_max_us,
            p.long_delay,
            p.long_delay_max_us,
        );
        let us = if self.rng.chance(long) {
            self.rng.between(hi, long_max.max(hi))
        } else {
            self.rng.between(lo, hi)
        };
        Duration::from_micros(us)
    }

    /// The fate of one message; `dup` is its duplication probability (forwarded proposals
    /// have their own).
    fn plan(&mut self, dup: f64) -> Plan {
        self.next_id += 1;
        let (loss, misdeliver) = (self.params.loss, self.params.misdeliver);
        Plan {
            id: self.next_id,
            delay: self.delay(),
            lose_request: self.rng.chance(loss),
            duplicate_after: if self.rng.chance(dup) {
                Some(self.delay() * 2)
            } else {
                None
            },
            lose_response: self.rng.chance(loss),
            response_delay: self.delay(),
            misdeliver: if self.rng.chance(misdeliver) {
                Some(self.rng.next_u64())
            } else {
                None
            },
        }
    }
}

/// Where a message sent to an address ends up.
enum Route {
    /// Node `slot` is up and receives it.
    Open(usize, Inbox, Raft<TypeConfig>, raft::Node),
    Blocked,
    /// Nobody listens there (a dead address, or a node that is down).
    Nobody(String),
}

/// Resolves `addr` in the address book when the message arrives: the node listening there,
/// or, when the network misdelivers, another listening node (possibly the sender).
fn route(w: &World, from: usize, addr: &str, misdeliver: Option<u64>) -> Route {
    let slots = w.slots();
    let book = w.book();
    let listening = |i: usize| slots[i].status == Status::Up && slots[i].inbox.is_some();
    let mut to = book.get(addr).copied();
    if let Some(pick) = misdeliver {
        // Every other node that listens somewhere, in slot order (deterministic).
        let others: Vec<usize> = (0..slots.len())
            .filter(|i| Some(*i) != to && listening(*i))
            .collect();
        if !others.is_empty() {
            to = Some(others[(pick % others.len() as u64) as usize]);
        }
    }
    let Some(to) = to else {
        return Route::Nobody(format!("nobody listens at {addr}"));
    };
    if w.net().blocked.contains(&(from, to)) {
        return Route::Blocked;
    }
    match (&slots[to].node, &slots[to].inbox) {
        (Some(n), Some(inbox)) if slots[to].status == Status::Up => {
            Route::Open(to, inbox.clone(), n.raft.clone(), n.clone())
        }
        _ => Route::Nobody(format!("{} is down", w.names[to])),
    }
}

fn unreachable(addr: &str, reason: impl Into<String>) -> TransportError {
    TransportError::Unreachable {
        addr: addr.into(),
        reason: reason.into(),
    }
}

/// One incarnation's side of the router: what its `AddressedNet` sends through.
#[derive(Clone)]
pub struct SimTransport {
    world: Arc<World>,
    from: usize,
    inc: u64,
}

impl SimTransport {
    /// The transport of incarnation `inc` of node `from`: replies to a dead one are lost.
    pub fn new(world: Arc<World>, from: usize, inc: u64) -> SimTransport {
        SimTransport { world, from, inc }
    }
}

impl Transport for SimTransport {
    fn send(
        &self,
        target: &Member,
        msg: Addressed<Rpc>,
        ttl: Duration,
    ) -> impl Future<Output = Result<Reply, TransportError>> + Send {
        let t = self.clone();
        let addr = target.addr.clone();
        async move { t.deliver(&addr, msg, ttl).await }
    }
}

/// A one-line summary of a message, for the trace.
trait Summary {
    fn summary(&self, w: &World) -> String;
}

impl Summary for AppendEntriesRequest<TypeConfig> {
    fn summary(&self, w: &World) -> String {
        format!(
            "append {} prev {} +{} commit {}",
            w.vote(&self.vote),
            w.log_id(&self.prev_log_id),
            self.entries.len(),
            w.log_id(&self.leader_commit)
        )
    }
}

impl Summary for AppendEntriesResponse<NodeId> {
    fn summary(&self, w: &World) -> String {
        match self {
            AppendEntriesResponse::Success => "success".into(),
            AppendEntriesResponse::PartialSuccess(l) => format!("partial {}", w.log_id(l)),
            AppendEntriesResponse::Conflict => "conflict".into(),
            AppendEntriesResponse::HigherVote(v) => format!("higher vote {}", w.vote(v)),
        }
    }
}

impl Summary for VoteRequest<NodeId> {
    fn summary(&self, w: &World) -> String {
        format!(
            "vote {} last {}",
            w.vote(&self.vote),
            w.log_id(&self.last_log_id)
        )
    }
}

impl Summary for VoteResponse<NodeId> {
    fn summary(&self, w: &World) -> String {
        format!(
            "{} {} last {}",
            if self.vote_granted {
                "granted"
            } else {
                "denied"
            },
            w.vote(&self.vote),
            w.log_id(&self.last_log_id)
        )
    }
}

impl Summary for InstallSnapshotRequest<TypeConfig> {
    fn summary(&self, w: &World) -> String {
        format!(
            "snapshot {} upto {} offset {} len {}{}",
            w.vote(&self.vote),
            w.log_id(&self.meta.last_log_id),
            self.offset,
            self.data.len(),
            if self.done { " done" } else { "" }
        )
    }
}

impl Summary for InstallSnapshotResponse<NodeId> {
    fn summary(&self, w: &World) -> String {
        format!("snapshot ack {}", w.vote(&self.vote))
    }
}

/// How a request reads in the trace.
fn rpc_summary(w: &World, rpc: &Rpc) -> String {
    match rpc {
        Rpc::Append(r) => r.summary(w),
        Rpc::Vote(r) => r.summary(w),
        Rpc::Snapshot(r) => r.summary(w),
    }
}

/// How a reply reads in the trace.
fn reply_summary(w: &World, r: &Reply) -> String {
    fn or_error<T: Summary, E: std::fmt::Display>(w: &World, r: &Result<T, E>) -> String {
        match r {
            Ok(t) => t.summary(w),
            Err(e) => format!("error {e}"),
        }
    }
    match &r.answer {
        Err(refusal) => format!("refused: {refusal}"),
        Ok(Answer::Append(a)) => or_error(w, a),
        Ok(Answer::Vote(a)) => or_error(w, a),
        Ok(Answer::Snapshot(a)) => or_error(w, a),
    }
}

impl SimTransport {
    /// Carries `msg` to whoever listens at `addr` and its reply back, as the plan says.
    async fn deliver(
        &self,
        addr: &str,
        msg: Addressed<Rpc>,
        ttl: Duration,
    ) -> Result<Reply, TransportError> {
        let w = &self.world;
        let from_name = w.names[self.from].as_str();
        let to_name = w.name_of(msg.to);
        let plan = {
            let mut net = w.net();
            let dup = net.params.dup;
            net.plan(dup)
        };
        let id = plan.id;
        // Name the address only when it does not lead to the intended node: the usual case
        // stays as short as before.
        let via = match w.book().get(addr) {
            Some(i) if w.slots()[*i].id == msg.to => String::new(),
            Some(i) => format!(" at {addr} ({})", w.names[*i]),
            None => format!(" at {addr} (nobody)"),
        };
        w.ev(
            from_name,
            format_args!("#{id} -> {to_name}{via} {}", rpc_summary(w, &msg.rpc)),
        );
        {
            let mut rec = w.rec();
            rec.stats.messages += 1;
            if plan.lose_request {
                rec.stats.lost += 1;
            }
        }
        if let Some(after) = plan.duplicate_after {
            let (world, from, msg, addr) = (w.clone(), self.from, msg.clone(), addr.to_string());
            let misdeliver = plan.misdeliver;
            w.rec().stats.duplicated += 1;
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if let Route::Open(to, inbox, raft, _) = route(&world, from, &addr, misdeliver) {
                    world.ev(&world.names[to], format_args!("#{id} duplicate delivered"));
                    let _ = inbox.serve(&raft, msg).await;
                }
            });
        }
        tokio::time::sleep(plan.delay).await;
        let (to, inbox, raft) = match route(w, self.from, addr, plan.misdeliver) {
            Route::Nobody(why) => {
                w.ev(from_name, format_args!("#{id} refused: {why}"));
                return Err(unreachable(addr, "connection refused"));
            }
            Route::Blocked => {
                w.ev(from_name, format_args!("#{id} lost in partition"));
                tokio::time::sleep(ttl).await;
                return Err(unreachable(addr, "timed out"));
            }
            Route::Open(..) if plan.lose_request => {
                w.ev(from_name, format_args!("#{id} lost"));
                tokio::time::sleep(ttl).await;
                return Err(unreachable(addr, "timed out"));
            }
            Route::Open(to, inbox, raft, _) => (to, inbox, raft),
        };
        if plan.misdeliver.is_some() {
            w.rec().stats.misdelivered += 1;
            w.ev(&w.names[to], format_args!("#{id} misdelivered here"));
        }
        let reply = inbox.serve(&raft, msg).await;
        tokio::time::sleep(plan.response_delay).await;
        let blocked = w.net().blocked.contains(&(to, self.from));
        if plan.lose_response || blocked || !w.is_live(self.from, self.inc) {
            w.ev(&w.names[to], format_args!("#{id} reply lost"));
            tokio::time::sleep(ttl).await;
            return Err(unreachable(addr, "timed out"));
        }
        let responder = if reply.responder == w.slots()[to].id {
            String::new()
        } else {
            format!(" as {}", w.name_of(reply.responder))
        };
        w.ev(
            from_name,
            format_args!(
                "#{id} <- {}{responder} {}",
                w.names[to],
                reply_summary(w, &reply)
            ),
        );
        Ok(reply)
    }
}

/// What a forwarded proposal came to, as the client sees it.
pub type Forwarded = Result<Result<Committed, CommandError>, ProposeError>;

/// Proposes `cmd` through node `via`: on its leader at once, otherwise `via` forwards it to
/// the leader it knows, at the address its membership records for it, over the simulated
/// network (loss, duplication, partitions, misdelivery). `duplicated` is set when a second
/// copy was sent: the command may then be applied twice. A lost request or reply never
/// answers (the client's timeout decides), as a dropped connection would.
pub async fn forward(
    w: &Arc<World>,
    via: usize,
    cmd: Command,
    duplicated: &AtomicBool,
) -> Forwarded {
    let Some(node) = w.node(via) else {
        return Err(ProposeError::Stopped("node is down".into()));
    };
    let m = node.metrics();
    if m.state == ServerState::Leader {
        return propose(&node, cmd).await;
    }
    let Some(leader_id) = m.current_leader else {
        return Err(ProposeError::NotLeader {
            leader_id: None,
            leader: None,
        });
    };
    let Some(addr) = m
        .membership_config
        .membership()
        .get_node(&leader_id)
        .map(|l| l.addr.clone())
    else {
        return Err(ProposeError::NotLeader {
            leader_id: Some(leader_id),
            leader: None,
        });
    };
    let dup = w.cfg.forward_dup;
    let plan = w.net().plan(dup);
    let id = plan.id;
    let via_name = w.names[via].clone();
    w.ev(
        &via_name,
        format_args!("#{id} forward -> {} at {addr}", w.name_of(leader_id)),
    );
    w.rec().stats.forwarded += 1;
    if let Some(after) = plan.duplicate_after {
        duplicated.store(true, Ordering::Relaxed);
        w.rec().stats.forwards_duplicated += 1;
        let (world, addr, cmd) = (w.clone(), addr.clone(), cmd.clone());
        let misdeliver = plan.misdeliver;
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Route::Open(to, _, _, n) = route(&world, via, &addr, misdeliver) {
                if n.id == leader_id {
                    world.ev(&world.names[to], format_args!("#{id} duplicate forward"));
                    let _ = n.propose(cmd).await;
                }
            }
        });
    }
    tokio::time::sleep(plan.delay).await;
    let n = match route(w, via, &addr, plan.misdeliver) {
        Route::Open(to, _, _, n) if !plan.lose_request => {
            // The forwarded call is addressed too: a node that is not the leader meant
            // refuses it rather than proposing on someone else's behalf.
            if n.id != leader_id {
                w.ev(
                    &w.names[to],
                    format_args!("#{id} forward refused: not {}", w.name_of(leader_id)),
                );
                return Err(ProposeError::NotLeader {
                    leader_id: None,
                    leader: None,
                });
            }
            n
        }
        Route::Nobody(why) => {
            w.ev(&via_name, format_args!("#{id} forward refused: {why}"));
            return Err(ProposeError::NotLeader {
                leader_id: None,
                leader: None,
            });
        }
        _ => {
            w.ev(&via_name, format_args!("#{id} forward lost"));
            return std::future::pending().await;
        }
    };
    let to = w.index_of(n.id).unwrap_or(via);
    let out = propose(&n, cmd).await;
    tokio::time::sleep(plan.response_delay).await;
    if plan.lose_response || w.net().blocked.contains(&(to, via)) || w.node(via).is_none() {
        w.ev(&w.names[to], format_args!("#{id} forward reply lost"));
        return std::future::pending().await;
    }
    out
}

/// A proposal whose refusal by the state machine is an answer, not an error.
pub async fn propose(n: &raft::Node, cmd: Command) -> Forwarded {
    match n.propose(cmd).await {
        Ok(ok) => Ok(Ok(ok)),
        Err(ProposeError::Rejected(e)) => Ok(Err(e)),
        Err(e) => Err(e),
    }
}
