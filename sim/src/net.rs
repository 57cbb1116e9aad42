//! The simulated network: openraft's `RaftNetworkFactory` over an in-process router that
//! delivers each RPC by calling the target's `Raft` after a delay on the paused clock, and
//! loses, duplicates, delays (hence reorders) and partitions as the network stream decides.

use std::collections::BTreeSet;
use std::error::Error;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::Raft;
use openraft::RaftNetwork;
use openraft::RaftNetworkFactory;
use raft::Member;
use raft::NodeId;
use raft::TypeConfig;

use crate::config::NetParams;
use crate::config::SimConfig;
use crate::rng::Rng;
use crate::world::Status;
use crate::world::World;

/// The network's mutable state.
pub struct NetState {
    rng: Rng,
    pub params: NetParams,
    /// Directed links that deliver nothing: (from, to).
    pub blocked: BTreeSet<(usize, usize)>,
    next_id: u64,
}

/// What happens to one RPC, decided when it is sent.
struct Plan {
    id: u64,
    delay: Duration,
    lose_request: bool,
    duplicate_after: Option<Duration>,
    lose_response: bool,
    response_delay: Duration,
}

impl NetState {
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

    fn plan(&mut self) -> Plan {
        self.next_id += 1;
        let (loss, dup) = (self.params.loss, self.params.dup);
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
        }
    }
}

/// Gives each incarnation of a node its connections.
pub struct NetFactory {
    world: Arc<World>,
    from: usize,
    inc: u64,
}

impl NetFactory {
    pub fn new(world: Arc<World>, from: usize, inc: u64) -> NetFactory {
        NetFactory { world, from, inc }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetFactory {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> Conn {
        Conn {
            world: self.world.clone(),
            from: self.from,
            inc: self.inc,
            to: target,
        }
    }
}

/// One node's connection to another, by Raft id: it reaches whichever slot has that
/// identity when a message is sent and delivered (an identity retired by a wipe reaches
/// nobody, like a decommissioned host).
pub struct Conn {
    world: Arc<World>,
    from: usize,
    inc: u64,
    to: NodeId,
}

enum Route {
    Open(Raft<TypeConfig>),
    Blocked,
    Down,
}

fn route(world: &World, from: usize, to: usize, to_id: NodeId) -> Route {
    if world.net().blocked.contains(&(from, to)) {
        return Route::Blocked;
    }
    let slots = world.slots();
    match (&slots[to].node, slots[to].status) {
        (Some(n), Status::Up) if slots[to].id == to_id => Route::Open(n.raft.clone()),
        _ => Route::Down,
    }
}

fn timed_out<E: Error>() -> RPCError<NodeId, Member, E> {
    RPCError::Network(NetworkError::new(&io::Error::new(
        io::ErrorKind::TimedOut,
        "rpc timed out",
    )))
}

fn refused<E: Error>() -> RPCError<NodeId, Member, E> {
    RPCError::Unreachable(Unreachable::new(&io::Error::new(
        io::ErrorKind::ConnectionRefused,
        "connection refused",
    )))
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

impl Conn {
    /// Sends `req` to the target through the simulated network and waits for the answer.
    async fn rpc<Req, Resp, E, F, Fut>(
        &self,
        req: Req,
        ttl: Duration,
        deliver: F,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Summary + Clone + Send + 'static,
        Resp: Summary + Send + 'static,
        E: Error + Send + 'static,
        F: Fn(Raft<TypeConfig>, Req) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Resp, RaftError<NodeId, E>>> + Send + 'static,
    {
        let w = &self.world;
        let from_name = w.names[self.from].as_str();
        let to_id = self.to;
        let Some(to) = w.index_of(to_id) else {
            return Err(refused());
        };
        let to_name = w.names[to].as_str();
        let plan = w.net().plan();
        let id = plan.id;
        w.ev(
            from_name,
            format_args!("#{id} -> {to_name} {}", req.summary(w)),
        );
        {
            let mut rec = w.rec();
            rec.stats.messages += 1;
            if plan.lose_request {
                rec.stats.lost += 1;
            }
        }
        if let Some(after) = plan.duplicate_after {
            let (world, from, req, deliver) = (w.clone(), self.from, req.clone(), deliver.clone());
            w.rec().stats.duplicated += 1;
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if let Route::Open(raft) = route(&world, from, to, to_id) {
                    world.ev(&world.names[to], format_args!("#{id} duplicate delivered"));
                    let _ = deliver(raft, req).await;
                }
            });
        }
        tokio::time::sleep(plan.delay).await;
        let raft = match route(w, self.from, to, to_id) {
            Route::Down => {
                w.ev(from_name, format_args!("#{id} refused: {to_name} is down"));
                return Err(refused());
            }
            Route::Blocked => {
                w.ev(from_name, format_args!("#{id} lost in partition"));
                tokio::time::sleep(ttl).await;
                return Err(timed_out());
            }
            Route::Open(_) if plan.lose_request => {
                w.ev(from_name, format_args!("#{id} lost"));
                tokio::time::sleep(ttl).await;
                return Err(timed_out());
            }
            Route::Open(raft) => raft,
        };
        let res = deliver(raft, req).await;
        let resp = match res {
            Err(RaftError::Fatal(f)) => {
                w.ev(to_name, format_args!("#{id} failed: {f}"));
                return Err(refused());
            }
            Err(RaftError::APIError(e)) => Err(e),
            Ok(r) => Ok(r),
        };
        tokio::time::sleep(plan.response_delay).await;
        let blocked = w.net().blocked.contains(&(to, self.from));
        if plan.lose_response || blocked || !w.is_live(self.from, self.inc) {
            w.ev(to_name, format_args!("#{id} reply lost"));
            tokio::time::sleep(ttl).await;
            return Err(timed_out());
        }
        match resp {
            Ok(r) => {
                w.ev(
                    from_name,
                    format_args!("#{id} <- {to_name} {}", r.summary(w)),
                );
                Ok(r)
            }
            Err(e) => {
                w.ev(from_name, format_args!("#{id} <- {to_name} error {e}"));
                Err(RPCError::RemoteError(RemoteError::new(
                    to_id,
                    RaftError::APIError(e),
                )))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc(rpc, option.hard_ttl(), |raft, req| async move {
            raft.append_entries(req).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(rpc, option.hard_ttl(), |raft, req| async move {
            raft.install_snapshot(req).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc(rpc, option.hard_ttl(), |raft, req| async move {
            raft.vote(req).await
        })
        .await
    }
}
