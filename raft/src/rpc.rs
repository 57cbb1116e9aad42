//! Addressed Raft RPCs: the one Raft network the daemon and the simulator both run.
//!
//! openraft hands its network a target id and the target's [`Member`] record; the record's
//! `addr` is only where the target *should* be listening. An operator's port typo, a stale
//! address book after a restart, or two members recorded on one port make that address
//! reach the wrong node, and a receiver that answers whatever arrives lets a leader count
//! itself (or another member) twice: a commit without a majority. So every RPC names its
//! cluster, its sender and its intended target ([`Addressed`]); the receiver refuses a
//! mismatch ([`Misaddressed`]) and the answer names who answered ([`Reply::responder`]); the
//! sender treats a refusal, or an answer from anyone but the target, as *unreachable*.
//!
//! The transport (TCP frames in the daemon, an in-process router in the simulator) sits
//! behind [`Transport`]; [`AddressedNet`] is openraft's `RaftNetworkFactory` over it, and
//! [`Inbox`] is the receiving side. Neither knows sockets, files or clocks.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::PayloadTooLarge;
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
use serde::Deserialize;
use serde::Serialize;

use crate::types::Member;
use crate::types::NodeId;
use crate::types::TypeConfig;

/// One Raft RPC with the identity of its cluster, its sender and its intended receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addressed<T> {
    /// The cluster name (`cluster.name`) the sender belongs to.
    pub cluster: String,
    /// The sender's Raft id.
    pub from: NodeId,
    /// The Raft id the sender means to reach.
    pub to: NodeId,
    /// The openraft request.
    pub rpc: T,
}

/// The three openraft requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rpc {
    /// `raft_append`.
    Append(AppendEntriesRequest<TypeConfig>),
    /// `raft_vote`.
    Vote(VoteRequest<NodeId>),
    /// `raft_snapshot`; its chunk travels as bytes (MessagePack `bin`), not as an array
    /// of numbers.
    Snapshot(#[serde(with = "snapshot_chunk")] InstallSnapshotRequest<TypeConfig>),
}

/// [`InstallSnapshotRequest`] with its `data` as bytes.
mod snapshot_chunk {
    use openraft::raft::InstallSnapshotRequest;
    use openraft::SnapshotMeta;
    use openraft::Vote;
    use serde::Deserialize;
    use serde::Deserializer;
    use serde::Serialize;
    use serde::Serializer;

    use crate::types::Member;
    use crate::types::NodeId;
    use crate::types::TypeConfig;

    #[derive(Serialize)]
    struct Out<'a> {
        vote: &'a Vote<NodeId>,
        meta: &'a SnapshotMeta<NodeId, Member>,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: &'a [u8],
        done: bool,
    }

    #[derive(Deserialize)]
    struct In {
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, Member>,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        done: bool,
    }

    pub(super) fn serialize<S: Serializer>(
        r: &InstallSnapshotRequest<TypeConfig>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        Out {
            vote: &r.vote,
            meta: &r.meta,
            offset: r.offset,
            data: &r.data,
            done: r.done,
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<InstallSnapshotRequest<TypeConfig>, D::Error> {
        let r = In::deserialize(d)?;
        Ok(InstallSnapshotRequest {
            vote: r.vote,
            meta: r.meta,
            offset: r.offset,
            data: r.data,
            done: r.done,
        })
    }
}

impl Rpc {
    /// The wire action that carries this request.
    pub fn action(&self) -> &'static str {
        match self {
            Rpc::Append(_) => "raft_append",
            Rpc::Vote(_) => "raft_vote",
            Rpc::Snapshot(_) => "raft_snapshot",
        }
    }
}

/// openraft's answer to one request (its own error included: a remote Raft error is an
/// answer, not a network failure).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// To [`Rpc::Append`].
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Rpc::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Rpc::Snapshot`].
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
}

/// Why a receiver refused an RPC without looking at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Misaddressed {
    /// Sent by a member of another cluster.
    #[error("addressed to cluster {got:?}, but this node is in cluster {expected:?}")]
    WrongCluster {
        /// The receiver's cluster.
        expected: String,
        /// The cluster named in the RPC.
        got: String,
    },
    /// Meant for another node: the sender's address book points at the wrong node.
    #[error("addressed to raft id {to}, but this node is raft id {me}")]
    WrongTarget {
        /// The receiver's Raft id.
        me: NodeId,
        /// The Raft id named in the RPC.
        to: NodeId,
    },
}

/// What a receiver sends back: who it is, and its answer or its refusal.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    /// The Raft id of the node that answered.
    pub responder: NodeId,
    /// openraft's answer, or why the RPC was refused.
    pub answer: Result<Answer, Misaddressed>,
}

/// Why a transport could not deliver a request or bring its reply back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No answer (refused, closed, timed out, lost).
    #[error("{addr}: no answer: {reason}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// The receiver refused the RPC as misaddressed (a transport that carries the refusal
    /// as an error status rather than as a [`Reply`]).
    #[error("{addr} refused the rpc: {reason}")]
    Refused {
        /// The address tried.
        addr: String,
        /// The receiver's reason.
        reason: String,
    },
    /// The peer answered with something that is not a [`Reply`].
    #[error("{addr}: bad answer: {reason}")]
    Failed {
        /// The address tried.
        addr: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// Carries one addressed RPC to whatever listens at `target.addr`, and its reply back.
pub trait Transport: Clone + Send + Sync + 'static {
    /// Sends `msg` to `target.addr`, giving up after `ttl`.
    fn send(
        &self,
        target: &Member,
        msg: Addressed<Rpc>,
        ttl: Duration,
    ) -> impl Future<Output = Result<Reply, TransportError>> + Send;
}

/// Addresses members announced to this node that Raft's membership does not record yet.
///
/// openraft accepts one membership change at a time, and a change whose new configuration
/// needs a member it cannot reach (the member moved, or its record is wrong) never commits,
/// so the address repair, itself a membership change, would wait behind it forever. The
/// leader therefore routes RPCs to an announced address at once, through this book, and
/// records it in the membership when it can ([`crate::membership::set_addr`]). A wrong entry
/// is harmless: the node that answers there refuses RPCs not addressed to it.
///
/// An announcement holds only while the membership still records what it recorded when the
/// announcement came: once the record changes, the record is newer than the announcement.
#[derive(Debug, Default)]
pub struct AddressBook {
    /// Member id -> (announced address, the record it overrides).
    announced: std::sync::Mutex<std::collections::BTreeMap<NodeId, (String, String)>>,
}

type Announced = std::collections::BTreeMap<NodeId, (String, String)>;

impl AddressBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Announced> {
        self.announced.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Member `id`, recorded at `recorded`, says it listens at `addr`.
    pub fn announce(&self, id: NodeId, addr: &str, recorded: &str) {
        let mut book = self.lock();
        if addr == recorded {
            book.remove(&id);
        } else {
            book.insert(id, (addr.to_string(), recorded.to_string()));
        }
    }

    /// Raft's membership records member `id`'s address now: the announcement is done.
    pub fn forget(&self, id: NodeId) {
        self.lock().remove(&id);
    }

    /// Where to send member `id`'s RPCs: its announced address while the membership still
    /// records what the announcement overrode, else the recorded one.
    pub fn resolve(&self, id: NodeId, recorded: &str) -> String {
        let mut book = self.lock();
        match book.get(&id) {
            Some((addr, over)) if over == recorded => addr.clone(),
            Some(_) => {
                book.remove(&id);
                recorded.to_string()
            }
            None => recorded.to_string(),
        }
    }
}

/// Counters of the addressing checks, shared by a node's network and inbox.
#[derive(Debug, Default)]
pub struct RpcCounters {
    /// RPCs this node refused as misaddressed.
    pub refused: AtomicU64,
    /// RPCs this node sent that were refused, or answered by another node than the target.
    pub misdelivered: AtomicU64,
}

/// openraft's network factory over a [`Transport`]: one [`AddressedConn`] per target.
#[derive(Clone)]
pub struct AddressedNet<T: Transport> {
    transport: T,
    cluster: String,
    me: NodeId,
    counters: Arc<RpcCounters>,
    book: Arc<AddressBook>,
}

impl<T: Transport> AddressedNet<T> {
    /// The network of node `me` in `cluster`.
    pub fn new(transport: T, cluster: impl Into<String>, me: NodeId) -> AddressedNet<T> {
        AddressedNet {
            transport,
            cluster: cluster.into(),
            me,
            counters: Arc::default(),
            book: Arc::default(),
        }
    }

    /// Shares `book` (the node's [`crate::Node::address_book`]).
    pub fn with_address_book(mut self, book: Arc<AddressBook>) -> AddressedNet<T> {
        self.book = book;
        self
    }

    /// Shares `counters` (the daemon reports them in its status).
    pub fn with_counters(mut self, counters: Arc<RpcCounters>) -> AddressedNet<T> {
        self.counters = counters;
        self
    }
}

/// The most entry bytes one append carries while the target keeps up (etcd's
/// `MaxSizePerMsg`).
///
/// openraft times an append out after one heartbeat interval and then sends the same range
/// again, and a new leader probes a follower with half its log at once. Without a byte
/// limit, entries of a few hundred KiB make every probe miss its deadline (or exceed the
/// frame limit) and the follower never catches up: the cluster cannot commit.
pub const APPEND_BYTES_MAX: usize = 1 << 20;

/// The least the byte budget of an append shrinks to after appends that did not finish.
pub const APPEND_BYTES_MIN: usize = 64 << 10;

/// The RPC channel from one node to one target.
pub struct AddressedConn<T: Transport> {
    net: AddressedNet<T>,
    target: NodeId,
    member: Member,
    /// Entry bytes the next append may carry: halved after an append that failed or was
    /// dropped by openraft's timeout, doubled after one that was answered.
    append_budget: usize,
    /// Set while an append is in flight; still set at the next append when the last one
    /// never returned (openraft dropped it at its deadline).
    append_unfinished: bool,
}

/// The size of `v` as MessagePack with named fields (how the daemon's wire packs it),
/// counted without building it.
pub fn packed_len<T: Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let mut ser = rmp_serde::Serializer::new(&mut count).with_struct_map();
    // Writing to a counter cannot fail; a value serde refuses is counted as far as it got.
    let _ = v.serialize(&mut ser);
    count.0
}

/// How many of `entries`, from the first, fit in `budget` bytes: at least one, so that an
/// entry larger than the budget still travels, alone.
fn entries_within(entries: &[openraft::Entry<TypeConfig>], budget: usize) -> usize {
    // One entry always goes: no need to measure it.
    if entries.len() <= 1 {
        return entries.len();
    }
    let mut used = 0;
    for (n, entry) in entries.iter().enumerate() {
        used += packed_len(entry);
        if used > budget {
            return n.max(1);
        }
    }
    entries.len()
}

impl<T: Transport> RaftNetworkFactory<TypeConfig> for AddressedNet<T> {
    type Network = AddressedConn<T>;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> AddressedConn<T> {
        AddressedConn {
            net: self.clone(),
            target,
            member: node.clone(),
            append_budget: APPEND_BYTES_MAX,
            append_unfinished: false,
        }
    }
}

type RpcResult<R, E = RaftError<NodeId>> = Result<R, RPCError<NodeId, Member, E>>;

impl<T: Transport> AddressedConn<T> {
    /// Sends `rpc` to the target and returns openraft's answer, or an error that openraft
    /// understands: `Unreachable` for no answer, a refusal or a wrong responder (it backs
    /// off and retries), `Network` for an answer of the wrong kind.
    async fn call<E: std::error::Error>(&self, rpc: Rpc, ttl: Duration) -> RpcResult<Answer, E> {
        let msg = Addressed {
            cluster: self.net.cluster.clone(),
            from: self.net.me,
            to: self.target,
            rpc,
        };
        let to = Member::new(
            self.member.name.clone(),
            self.net.book.resolve(self.target, &self.member.addr),
        );
        let sent = self.net.transport.send(&to, msg, ttl).await;
        let misdelivered = |why: String| {
            self.net
                .counters
                .misdelivered
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target = %self.member, "raft rpc misdelivered: {why}");
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why)))
        };
        let reply = match sent {
            Ok(reply) => reply,
            Err(e @ TransportError::Unreachable { .. }) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e @ TransportError::Refused { .. }) => return Err(misdelivered(e.to_string())),
            Err(e @ TransportError::Failed { .. }) => {
                return Err(RPCError::Network(NetworkError::new(&e)))
            }
        };
        if reply.responder != self.target {
            return Err(misdelivered(format!(
                "{} answered as raft id {}, expected {}",
                self.member.addr, reply.responder, self.target
            )));
        }
        reply
            .answer
            .map_err(|refusal| misdelivered(format!("{}: {refusal}", self.member.addr)))
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, Member, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.member.clone(),
            e,
        ))
    }

    fn wrong_kind<E: std::error::Error>(&self) -> RPCError<NodeId, Member, E> {
        let e = std::io::Error::other(format!("{}: answer of the wrong kind", self.member.addr));
        RPCError::Network(NetworkError::new(&e))
    }
}

impl<T: Transport> RaftNetwork<TypeConfig> for AddressedConn<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        // Heartbeats (no entries) say nothing about how many bytes get through in time.
        let carries = !rpc.entries.is_empty();
        if carries {
            if self.append_unfinished {
                self.append_budget = (self.append_budget / 2).max(APPEND_BYTES_MIN);
            }
            let fit = entries_within(&rpc.entries, self.append_budget);
            if fit < rpc.entries.len() {
                // openraft resends at once with at most `fit` entries (and for its next
                // few appends); nothing was sent.
                let hint = PayloadTooLarge::new_entries_hint(fit as u64);
                return Err(RPCError::PayloadTooLarge(hint));
            }
            self.append_unfinished = true;
        }
        let answer = self.call(Rpc::Append(rpc), option.hard_ttl()).await;
        if carries {
            self.append_unfinished = answer.is_err();
            if answer.is_ok() {
                self.append_budget = (self.append_budget * 2).min(APPEND_BYTES_MAX);
            }
        }
        debug_assert!((APPEND_BYTES_MIN..=APPEND_BYTES_MAX).contains(&self.append_budget));
        match answer? {
            Answer::Append(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.wrong_kind()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        match self.call(Rpc::Snapshot(rpc), option.hard_ttl()).await? {
            Answer::Snapshot(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.wrong_kind()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.call(Rpc::Vote(rpc), option.hard_ttl()).await? {
            Answer::Vote(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.wrong_kind()),
        }
    }
}

/// The receiving side: checks the address of each RPC, then hands it to openraft.
#[derive(Clone)]
pub struct Inbox {
    cluster: String,
    me: NodeId,
    counters: Arc<RpcCounters>,
    /// Off only in the simulator's injected bug `rpc-target-unchecked`.
    check: bool,
}

impl Inbox {
    /// The inbox of node `me` in `cluster`, counting into `counters`.
    pub fn new(cluster: impl Into<String>, me: NodeId, counters: Arc<RpcCounters>) -> Inbox {
        Inbox {
            cluster: cluster.into(),
            me,
            counters,
            check: true,
        }
    }

    /// An inbox that answers whatever arrives: the bug this module exists to prevent,
    /// for the simulator to show that its checkers catch it.
    pub fn without_address_check(mut self) -> Inbox {
        self.check = false;
        self
    }

    /// Refuses `msg` unless it names this node's cluster and Raft id.
    pub fn check<R>(&self, msg: &Addressed<R>) -> Result<(), Misaddressed> {
        if !self.check {
            return Ok(());
        }
        let refusal = if msg.cluster != self.cluster {
            Misaddressed::WrongCluster {
                expected: self.cluster.clone(),
                got: msg.cluster.clone(),
            }
        } else if msg.to != self.me {
            Misaddressed::WrongTarget {
                me: self.me,
                to: msg.to,
            }
        } else {
            return Ok(());
        };
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        Err(refusal)
    }

    /// Serves one RPC on `raft`.
    pub async fn serve(&self, raft: &Raft<TypeConfig>, msg: Addressed<Rpc>) -> Reply {
        if let Err(refusal) = self.check(&msg) {
            tracing::warn!(from = msg.from, "refused a raft rpc: {refusal}");
            return Reply {
                responder: self.me,
                answer: Err(refusal),
            };
        }
        // The injected bug answers as whoever was asked for, like a receiver that never
        // learned its own identity.
        let responder = if self.check { self.me } else { msg.to };
        let answer = match msg.rpc {
            Rpc::Append(r) => Answer::Append(raft.append_entries(r).await),
            Rpc::Vote(r) => Answer::Vote(raft.vote(r).await),
            Rpc::Snapshot(r) => Answer::Snapshot(raft.install_snapshot(r).await),
        };
        Reply {
            responder,
            answer: Ok(answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;
    use openraft::Entry;
    use openraft::EntryPayload;
    use openraft::LogId;
    use openraft::Membership;
    use openraft::SnapshotMeta;
    use openraft::StoredMembership;
    use openraft::Vote;
    use std::collections::BTreeMap;

    fn member(n: u64) -> Member {
        Member::new(format!("n{n}"), format!("127.0.0.1:{}", 1200 + n))
    }

    fn membership() -> Membership<NodeId, Member> {
        let nodes: BTreeMap<NodeId, Member> = (1..=3).map(|n| (n, member(n))).collect();
        Membership::new(vec![[1, 2, 3].into()], nodes)
    }

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(4, 1), index)
    }

    fn round_trip(rpc: Rpc) -> (Rpc, Vec<u8>) {
        let msg = Addressed {
            cluster: "c1".into(),
            from: 1,
            to: 2,
            rpc,
        };
        let bytes = rmp_serde::to_vec_named(&msg).unwrap();
        let back: Addressed<Rpc> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!((back.cluster.as_str(), back.from, back.to), ("c1", 1, 2));
        (back.rpc, bytes)
    }

    #[test]
    fn every_rpc_round_trips_through_messagepack() {
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(4, 1),
            prev_log_id: Some(log_id(6)),
            entries: vec![
                Entry {
                    log_id: log_id(7),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(8),
                    payload: EntryPayload::Membership(membership()),
                },
            ],
            leader_commit: Some(log_id(6)),
        };
        let (back, _) = round_trip(Rpc::Append(append.clone()));
        let Rpc::Append(back) = back else { panic!() };
        assert_eq!(format!("{back:?}"), format!("{append:?}"));
        let vote = VoteRequest::new(Vote::new(5, 3), Some(log_id(8)));
        let (back, _) = round_trip(Rpc::Vote(vote.clone()));
        let Rpc::Vote(back) = back else { panic!() };
        assert_eq!(format!("{back:?}"), format!("{vote:?}"));
    }

    fn big_entry(index: u64, kib: usize) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(crate::Command::UpdateService {
                svc: format!("s{index}"),
                config: "x".repeat(kib << 10),
                expected_version: None,
            }),
        }
    }

    #[test]
    fn an_append_carries_what_fits_its_byte_budget_and_never_nothing() {
        let entries: Vec<_> = (1..=20).map(|i| big_entry(i, 256)).collect();
        let one = packed_len(&entries[0]);
        assert!(one > 256 << 10 && one < (256 << 10) + 200, "{one}");
        assert_eq!(
            packed_len(&entries[0]),
            rmp_serde::to_vec_named(&entries[0]).unwrap().len()
        );
        assert_eq!(entries_within(&entries, APPEND_BYTES_MAX), 3);
        assert_eq!(entries_within(&entries, 4 * one), 4);
        assert_eq!(entries_within(&entries, 4 * one - 1), 3);
        // One entry larger than the budget still goes, alone.
        assert_eq!(
            entries_within(&[big_entry(1, 3 << 10)], APPEND_BYTES_MIN),
            1
        );
        assert_eq!(entries_within(&entries[..2], APPEND_BYTES_MAX), 2);
        assert_eq!(entries_within(&[], APPEND_BYTES_MIN), 0);
    }

    /// Answers appends after `delay` (forever when `None`), counting the entries it got.
    #[derive(Clone)]
    struct Slow {
        delay: Arc<std::sync::Mutex<Option<Duration>>>,
        sent: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl Transport for Slow {
        async fn send(
            &self,
            _: &Member,
            msg: Addressed<Rpc>,
            _: Duration,
        ) -> Result<Reply, TransportError> {
            let Rpc::Append(req) = msg.rpc else {
                panic!("only appends here")
            };
            self.sent.lock().unwrap().push(req.entries.len());
            let delay = *self.delay.lock().unwrap();
            match delay {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
            Ok(Reply {
                responder: msg.to,
                answer: Ok(Answer::Append(Ok(AppendEntriesResponse::Success))),
            })
        }
    }

    fn append(entries: Vec<Entry<TypeConfig>>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(4, 1),
            prev_log_id: None,
            entries,
            leader_commit: None,
        }
    }

    #[tokio::test]
    async fn appends_that_miss_their_deadline_shrink_the_next_ones_until_they_get_through() {
        let slow = Slow {
            delay: Arc::new(std::sync::Mutex::new(None)),
            sent: Arc::default(),
        };
        let mut net = AddressedNet::new(slow.clone(), "c1", 1);
        let mut conn = net.new_client(2, &member(2)).await;
        let ttl = Duration::from_millis(80);
        let option = RPCOption::new(ttl);
        let entries: Vec<_> = (1..=20).map(|i| big_entry(i, 256)).collect();
        // What openraft does: time the append out, or resend fewer entries on a hint.
        let send = |n: usize| append(entries[..n].to_vec());
        let mut hints = Vec::new();
        let mut n = 20;
        for _ in 0..6 {
            let r = tokio::time::timeout(ttl, conn.append_entries(send(n), option.clone())).await;
            match r {
                Ok(Err(RPCError::PayloadTooLarge(h))) => {
                    hints.push(h.entries_hint());
                    n = h.entries_hint() as usize;
                }
                Ok(other) => panic!("{other:?}"),
                Err(_) => {}
            }
        }
        // 1 MiB: 3 entries, dropped; 512 KiB: 1, dropped; then 1 (the floor is one entry).
        assert_eq!(hints, [3, 1]);
        assert_eq!(*slow.sent.lock().unwrap(), [3, 1, 1, 1]);
        // Once they get through, the budget grows back to the maximum, step by step.
        *slow.delay.lock().unwrap() = Some(Duration::from_millis(1));
        let mut carried = Vec::new();
        for _ in 0..8 {
            match conn.append_entries(send(20), option.clone()).await {
                Ok(AppendEntriesResponse::Success) => carried.push(20),
                Err(RPCError::PayloadTooLarge(h)) => {
                    let n = h.entries_hint() as usize;
                    conn.append_entries(send(n), option.clone()).await.unwrap();
                    carried.push(n);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(carried, [1, 1, 1, 1, 3, 3, 3, 3]);
        // A heartbeat neither spends nor earns budget.
        conn.append_entries(send(0), option.clone()).await.unwrap();
        assert_eq!(conn.append_budget, APPEND_BYTES_MAX);
    }

    #[test]
    fn a_snapshot_chunk_travels_as_bytes() {
        let data: Vec<u8> = (0..=255).collect();
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(4, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(9)),
                last_membership: StoredMembership::new(Some(log_id(8)), membership()),
                snapshot_id: "s-9".into(),
            },
            offset: 0,
            data: data.clone(),
            done: true,
        };
        let (back, bytes) = round_trip(Rpc::Snapshot(req.clone()));
        let Rpc::Snapshot(back) = back else { panic!() };
        assert_eq!(format!("{back:?}"), format!("{req:?}"));
        // bin8 of 256 bytes does not fit: bin16 marker, length 256, then the bytes as they are.
        let at = bytes
            .windows(3)
            .position(|w| w == [0xc5, 1, 0])
            .expect("a bin16");
        assert_eq!(&bytes[at + 3..at + 3 + 256], &data[..]);
    }
}
