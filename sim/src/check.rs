//! The checkers. The stores, the network and the clients report to a [`Recorder`] as the
//! run goes; some properties are checked on the spot, the rest by [`final_checks`].
//!
//! - election: a node's vote never goes back, and no acknowledged vote is lost by a crash
//!   (together: no node votes twice in a term); leaders per term are counted;
//! - log matching: when a node appends an entry, no node holds a different entry under the
//!   same log id; a node that truncates a committed entry gets the same entry back (or a
//!   snapshot covering it);
//! - state machine safety: every node applies the same entry at the same index, and has the
//!   same state after it (also after restoring or installing a snapshot), which is the state
//!   `apply` gives when the committed log is replayed from scratch;
//! - commit quorum: whenever a leader saves an index as committed, the entry there is in
//!   the logs of a majority of the voters of each half of the configuration it commits
//!   under (its latest in its log): the invariant a leader that counts a misaddressed answer
//!   as a member's breaks;
//! - durability: every acknowledged command is in the committed log at the index it was
//!   acknowledged with, and its reply is the one the replay gives;
//! - linearizability of the client history, per cluster parameter (see `linear`);
//! - liveness after the faults stop (the heal phase, in `run`).

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use openraft::Entry;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::Vote;
use raft::MachineData;
use raft::NodeId;
use raft::Reply;
use raft::SharedMachine;
use raft::TypeConfig;

use crate::rng::fnv1a;
use crate::world::World;

/// Hash of the replicated part of a state machine (cluster state and membership).
pub fn state_hash(machine: &SharedMachine) -> u64 {
    machine.read(data_hash)
}

fn data_hash(d: &MachineData) -> u64 {
    let bytes = rmp_serde::to_vec(&(&d.cluster, &d.membership)).expect("state serializes");
    fnv1a(&bytes)
}

fn payload_hash(p: &EntryPayload<TypeConfig>) -> u64 {
    fnv1a(&rmp_serde::to_vec(p).expect("payload serializes"))
}

/// Counters shown in the per-seed summary.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Raft RPCs sent through the simulated network (forwarded proposals not included).
    pub messages: u64,
    /// Requests the network's plan dropped (lost replies and partitioned links not counted).
    pub lost: u64,
    /// Raft RPC requests delivered a second time, later.
    pub duplicated: u64,
    /// Power cuts of any cause (`World::crash`): crash faults, moves, leaves, stopped cores.
    pub crashes: u64,
    /// Partition layout changes fired (isolations and heals included).
    pub partitions: u64,
    /// Wall-clock jump faults fired.
    pub clock_jumps: u64,
    /// Joins completed (`membership::admit`, then its `complete`), warm-up included.
    pub joins: u64,
    /// Nodes whose removal Raft committed, then stopped and wiped.
    pub leaves: u64,
    /// Snapshots a live incarnation installed from a leader.
    pub snapshots_installed: u64,
    /// Writes the cluster answered: committed, with the state machine's reply.
    pub writes_ok: u64,
    /// Writes certainly not applied (node down, rejected).
    pub writes_failed: u64,
    /// Writes with no answer (timeout, not leader, node stopped): may yet be applied.
    pub writes_unknown: u64,
    /// Reads answered (by `read_linearizable`, unless `stale-read` is planted).
    pub reads_ok: u64,
    /// Reads that failed or timed out; they are left out of the checked history.
    pub reads_failed: u64,
    /// Times a node's metrics showed it leading with a new vote (per incarnation).
    pub leaderships: u64,
    /// The highest term any node was seen leading in.
    pub max_term: u64,
    /// Terms in which two different nodes led (openraft's `LeaderId` is `(term, node)`).
    pub shared_terms: u64,
    /// Log ids appended again with another entry (a restarted leader resuming its term).
    pub log_ids_reused: u64,
    /// RPCs the network delivered to another node than the one at their address.
    pub misdelivered: u64,
    /// RPCs refused by an inbox as misaddressed, and replies a sender discarded as coming
    /// from the wrong node or as refusals (the nodes' `RpcCounters`).
    pub rpc_refused: u64,
    /// RPCs nodes sent that were refused or answered by another node (`RpcCounters::misdelivered`).
    pub rpc_misdelivered: u64,
    /// Member addresses corrupted in Raft's membership, and repaired by an announcement.
    pub addr_faults: u64,
    /// Announcements (`membership::set_addr`) that rewrote a node's record: repairs and moves.
    pub addr_repairs: u64,
    /// Restarts on a new listener address.
    pub relistens: u64,
    /// Proposals forwarded by a non-leader, and how many were sent twice.
    pub forwarded: u64,
    /// Forwarded proposals the network sent twice (the command may apply twice).
    pub forwards_duplicated: u64,
    /// Heal phase: virtual ms until every member followed one leader (at most `HEAL_BOUND`).
    pub heal_leader_ms: u64,
    /// Heal phase: virtual ms from that leader to the heal probe committing.
    pub heal_commit_ms: u64,
    /// Register operations handed to the linearizability checker.
    pub lin_ops: u64,
    /// Keys whose linearizability search hit its budget: no verdict.
    pub lin_unchecked_keys: u64,
}

/// One client operation on a register (a cluster parameter): the `linear` crate's.
pub use linear::RegOp;

/// An acknowledged command: what the client was told.
#[derive(Debug, Clone)]
pub struct Acked {
    /// The log index the client was told its command committed at.
    pub index: u64,
    /// Hash of the command, compared with the entry committed at `index`.
    pub payload: u64,
    /// The reply the client got; the replay of the committed log must give the same.
    pub reply: Reply,
    /// Who sent which command, for violation messages.
    pub what: String,
}

struct Applied {
    log_id: LogId<NodeId>,
    payload: u64,
    entry: Entry<TypeConfig>,
    by: String,
}

/// What the run reported, and the violations found on the spot.
pub struct Recorder {
    /// The first 20 violations, in the order found (each also a `FAIL` trace line).
    pub violations: Vec<String>,
    /// The run's counters, for the summary.
    pub stats: Stats,
    /// Every log id ever appended anywhere, with the payload hash first appended under it.
    appended: BTreeMap<(u64, NodeId, u64), u64>,
    /// Each node's log as it is now (index -> log id, payload hash): what its store holds,
    /// re-read from the disk at every start.
    logs: Vec<BTreeMap<u64, (LogId<NodeId>, u64)>>,
    /// The committed log, as learned from applies (applied means committed).
    committed: BTreeMap<u64, Applied>,
    /// The state hash after each index, as first seen, and by whom.
    states: BTreeMap<u64, (u64, String)>,
    /// Per node: committed entries it truncated, by index, until it holds them again or a
    /// snapshot covers them (openraft truncates from its own committed index when a snapshot
    /// it installs conflicts with its log, which can remove entries the snapshot covers).
    truncated: Vec<BTreeMap<u64, LogId<NodeId>>>,
    /// Per node: the highest acknowledged vote (reset when the node is wiped).
    votes: Vec<Option<Vote<NodeId>>>,
    /// Per node: the voter configurations (both halves of a joint one) of the membership
    /// entries in its log, by index; and the configuration its state machine held when it
    /// started, for a log that has none (`None` after a snapshot install: unknown).
    configs: Vec<BTreeMap<u64, Vec<BTreeSet<NodeId>>>>,
    base_config: Vec<Option<Vec<BTreeSet<NodeId>>>>,
    /// Per node: entries up to here are covered by a snapshot or purged (held, not listed).
    covered: Vec<u64>,
    /// Leaders seen per term.
    leaders: BTreeMap<u64, BTreeSet<usize>>,
    /// The client history of register operations, for the linearizability check.
    pub ops: Vec<RegOp>,
    /// Every acknowledged write with an index, for the durability check.
    pub acked: Vec<Acked>,
}

impl Recorder {
    /// An empty recorder for a pool of `nodes` slots.
    pub fn new(nodes: usize) -> Recorder {
        Recorder {
            violations: Vec::new(),
            stats: Stats::default(),
            appended: BTreeMap::new(),
            logs: vec![BTreeMap::new(); nodes],
            truncated: vec![BTreeMap::new(); nodes],
            committed: BTreeMap::new(),
            states: BTreeMap::new(),
            votes: vec![None; nodes],
            configs: vec![BTreeMap::new(); nodes],
            base_config: vec![None; nodes],
            covered: vec![0; nodes],
            leaders: BTreeMap::new(),
            ops: Vec::new(),
            acked: Vec::new(),
        }
    }

    /// Records a violation: a `FAIL` trace line always, the message if fewer than 20 so far.
    pub fn violation(&mut self, w: &World, what: String) {
        w.ev("FAIL", format_args!("{what}"));
        if self.violations.len() < 20 {
            self.violations.push(what);
        }
    }

    /// A live node saved `vote`: it must not be below the highest vote it acknowledged.
    pub fn on_vote_saved(&mut self, w: &World, node: usize, vote: Vote<NodeId>) {
        if let Some(prev) = self.votes[node] {
            // Votes are totally ordered in openraft's default LeaderId mode.
            if vote < prev {
                let what = format!(
                    "election: {} saved vote {} after acknowledging {} (a vote went back: double vote)",
                    w.names[node],
                    w.vote(&vote),
                    w.vote(&prev)
                );
                self.violation(w, what);
            }
        }
        if self.votes[node].is_none_or(|p| vote > p) {
            self.votes[node] = Some(vote);
        }
    }

    /// A node read its vote back at start: below an acknowledged one means a crash lost it.
    pub fn on_vote_read(&mut self, w: &World, node: usize, vote: Option<Vote<NodeId>>) {
        if let Some(prev) = self.votes[node] {
            if vote.is_none_or(|v| v < prev) {
                let what = format!(
                    "election: {} restarted with vote {} but had acknowledged {} (vote lost in a crash)",
                    w.names[node],
                    vote.map_or("none".into(), |v| w.vote(&v)),
                    w.vote(&prev)
                );
                self.violation(w, what);
            }
        }
    }

    /// Node `node` left and its disk was wiped: forget its votes, log and configurations.
    pub fn on_wipe(&mut self, node: usize) {
        self.votes[node] = None;
        self.logs[node].clear();
        self.truncated[node].clear();
        self.configs[node].clear();
        self.base_config[node] = None;
        self.covered[node] = 0;
    }

    /// A node (re)starts with this log on its disk, and this applied state (snapshot).
    pub fn on_start_state(
        &mut self,
        node: usize,
        entries: &[Entry<TypeConfig>],
        applied: Option<u64>,
        config: Vec<BTreeSet<NodeId>>,
    ) {
        self.on_start(node, entries);
        self.configs[node] = entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some((e.log_id.index, m.get_joint_config().clone())),
                _ => None,
            })
            .collect();
        self.base_config[node] = Some(config);
        self.covered[node] = applied.unwrap_or(0);
    }

    /// Node `node`'s log is now `entries`, as read from its disk (see `on_start_state`).
    pub fn on_start(&mut self, node: usize, entries: &[Entry<TypeConfig>]) {
        self.logs[node] = entries
            .iter()
            .map(|e| (e.log_id.index, (e.log_id, payload_hash(&e.payload))))
            .collect();
    }

    /// A node saves `log_id` as committed. On a leader (its vote is its own and committed)
    /// the entry must be held by a majority of each half of its current configuration.
    pub fn on_commit(&mut self, w: &World, node: usize, log_id: LogId<NodeId>) {
        let me = w.id(node);
        let leads = self.votes[node].is_some_and(|v| v.committed && v.leader_id.node_id == me);
        if !leads {
            return;
        }
        let config = match self.configs[node].last_key_value() {
            Some((_, c)) => c.clone(),
            None => match &self.base_config[node] {
                Some(c) => c.clone(),
                None => return,
            },
        };
        let index = log_id.index;
        for voters in &config {
            let holders: Vec<String> = voters
                .iter()
                .filter(|id| {
                    w.index_of(**id).is_some_and(|i| {
                        self.covered[i] >= index
                            || self.logs[i].get(&index).is_some_and(|(l, _)| *l == log_id)
                    })
                })
                .map(|id| w.name_of(*id))
                .collect();
            if holders.len() * 2 <= voters.len() {
                let all: Vec<String> = voters.iter().map(|id| w.name_of(*id)).collect();
                let what = format!(
                    "commit quorum: {} committed {} under voters [{}], but only [{}] hold it",
                    w.names[node],
                    w.log_id(&Some(log_id)),
                    all.join(","),
                    holders.join(",")
                );
                self.violation(w, what);
                return;
            }
        }
    }

    /// Node `node` purged its log up to `upto`: those entries are held but no longer listed.
    pub fn on_purge(&mut self, node: usize, upto: u64) {
        self.covered[node] = self.covered[node].max(upto);
        self.logs[node] = self.logs[node].split_off(&(upto + 1));
    }

    /// Node `node` leads with `vote`: counts leaderships and terms that two nodes led.
    pub fn on_leader(&mut self, node: usize, _inc: u64, vote: Vote<NodeId>) {
        let term = vote.leader_id.term;
        self.stats.leaderships += 1;
        self.stats.max_term = self.stats.max_term.max(term);
        let set = self.leaders.entry(term).or_default();
        set.insert(node);
        if set.len() == 2 {
            self.stats.shared_terms += 1;
        }
    }

    /// Node `node` appends `entries`: checks log matching against every node's log.
    pub fn on_append(&mut self, w: &World, node: usize, entries: &[Entry<TypeConfig>]) {
        for e in entries {
            let key = (
                e.log_id.leader_id.term,
                e.log_id.leader_id.node_id,
                e.log_id.index,
            );
            let h = payload_hash(&e.payload);
            match self.appended.get(&key) {
                None => {
                    self.appended.insert(key, h);
                }
                Some(h0) if *h0 != h => {
                    // A log id reused for another entry: openraft 0.9 lets a restarted
                    // leader resume its term; harmless unless some log still holds the old
                    // entry, which the check below catches.
                    self.stats.log_ids_reused += 1;
                }
                Some(_) => {}
            }
            let clash = self.logs.iter().position(|log| {
                log.get(&e.log_id.index)
                    .is_some_and(|(l, h2)| *l == e.log_id && *h2 != h)
            });
            if let Some(other) = clash {
                let what = format!(
                    "log matching: {} appended an entry under log id {} while {} holds a different entry with that id",
                    w.names[node],
                    w.log_id(&Some(e.log_id)),
                    w.names[other]
                );
                self.violation(w, what);
            }
            if let Some(lost) = self.truncated[node].remove(&e.log_id.index) {
                if lost != e.log_id {
                    let what = format!(
                        "log matching: {} truncated committed entry {} and then appended {} at its index",
                        w.names[node],
                        w.log_id(&Some(lost)),
                        w.log_id(&Some(e.log_id))
                    );
                    self.violation(w, what);
                }
            }
            self.logs[node].insert(e.log_id.index, (e.log_id, h));
            if let EntryPayload::Membership(m) = &e.payload {
                self.configs[node].insert(e.log_id.index, m.get_joint_config().clone());
            }
        }
    }

    /// Node `node` truncates from index `since`: committed entries it removes must come back.
    pub fn on_truncate(
        &mut self,
        _w: &World,
        node: usize,
        since: u64,
        removed: &[Entry<TypeConfig>],
    ) {
        self.logs[node].split_off(&since);
        self.configs[node].split_off(&since);
        for e in removed {
            if self
                .committed
                .get(&e.log_id.index)
                .is_some_and(|c| c.log_id == e.log_id)
            {
                self.truncated[node].insert(e.log_id.index, e.log_id);
            }
        }
    }

    /// Node `node` applied `e`, reaching state hash `state`: all must apply the same entry there.
    pub fn on_apply(
        &mut self,
        w: &World,
        node: usize,
        e: &Entry<TypeConfig>,
        _reply: Option<Reply>,
        state: u64,
    ) {
        let index = e.log_id.index;
        let payload = payload_hash(&e.payload);
        match self.committed.get(&index) {
            None => {
                self.committed.insert(
                    index,
                    Applied {
                        log_id: e.log_id,
                        payload,
                        entry: e.clone(),
                        by: w.names[node].clone(),
                    },
                );
            }
            Some(a) if a.log_id != e.log_id || a.payload != payload => {
                let what = format!(
                    "state machine safety: {} applied {} at index {index}, {} applied {}",
                    w.names[node],
                    w.log_id(&Some(e.log_id)),
                    a.by,
                    w.log_id(&Some(a.log_id))
                );
                self.violation(w, what);
            }
            Some(_) => {}
        }
        self.on_state(w, node, index, state, "applying");
    }

    /// Node `node` has state hash `state` at `index` (`how` it got there): all must agree.
    pub fn on_state(&mut self, w: &World, node: usize, index: u64, state: u64, how: &str) {
        if how != "applying" {
            // A snapshot covers the committed entries up to its index.
            self.truncated[node] = self.truncated[node].split_off(&(index + 1));
            self.covered[node] = self.covered[node].max(index);
            if how == "installed snapshot" {
                // The log was replaced up to there: which configuration the node holds is
                // known again at its next membership entry.
                self.configs[node] = self.configs[node].split_off(&(index + 1));
                self.base_config[node] = None;
            }
        }
        match self.states.get(&index) {
            None => {
                self.states.insert(index, (state, w.names[node].clone()));
            }
            Some((s0, by)) if *s0 != state => {
                let what = format!(
                    "state machine safety: {}'s state at index {index} ({how}) differs from {by}'s",
                    w.names[node]
                );
                self.violation(w, what);
            }
            Some(_) => {}
        }
    }

    /// The highest index known committed.
    pub fn committed_index(&self) -> Option<u64> {
        self.committed.keys().next_back().copied()
    }
}

/// The checks that need the whole run.
pub fn final_checks(w: &World, rec: &mut Recorder) {
    // Replay the committed log from scratch with the production `apply`, and compare every
    // state and every reply seen during the run.
    let mut model = MachineData::default();
    let mut replies: BTreeMap<u64, Reply> = BTreeMap::new();
    let first = rec.committed.keys().next().copied().unwrap_or(0);
    let mut problems = Vec::new();
    for (expected, (index, a)) in (first..).zip(&rec.committed) {
        if *index != expected {
            // A gap only snapshots covered: nothing more to compare against.
            break;
        }
        let (reply, _) = model.apply_entry(&a.entry);
        replies.insert(*index, reply);
        if let Some((h, by)) = rec.states.get(index) {
            if *h != data_hash(&model) {
                problems.push(format!(
                    "state machine safety: {by}'s state at index {index} is not what replaying the committed log gives"
                ));
            }
        }
    }
    for a in &rec.acked {
        match rec.committed.get(&a.index) {
            None => problems.push(format!(
                "durability: {} was acknowledged at index {} but nothing was ever committed there",
                a.what, a.index
            )),
            Some(c) if c.payload != a.payload => problems.push(format!(
                "durability: {} was acknowledged at index {} but {} is committed there",
                a.what,
                a.index,
                w.log_id(&Some(c.log_id))
            )),
            Some(_) => {
                if let Some(r) = replies.get(&a.index) {
                    if *r != a.reply {
                        problems.push(format!(
                            "durability: {} at index {} was answered {:?}, replaying the log answers {:?}",
                            a.what, a.index, a.reply, r
                        ));
                    }
                }
            }
        }
    }
    for p in problems.into_iter().take(10) {
        rec.violation(w, p);
    }
    let ops = std::mem::take(&mut rec.ops);
    rec.stats.lin_ops = ops.len() as u64;
    let result = linear::check(&ops);
    rec.stats.lin_unchecked_keys = result.inconclusive as u64;
    for f in result.failures {
        rec.violation(w, f);
    }
    rec.ops = ops;
}
