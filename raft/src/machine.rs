//! The applied state machine shared by a store and the [`crate::Node`] handle that reads it.
//!
//! Stores (sled-backed or in-memory) own durability; this module owns what applying a log
//! entry means, so that every store applies entries through the same code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::RwLock;

use openraft::Entry;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::StoredMembership;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::sync::watch;

use crate::apply::apply;
use crate::apply::CommandError;
use crate::apply::Outcome;
use crate::command::ProposalId;
use crate::event::Event;
use crate::event::EventRecord;
use crate::state::ClusterState;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::Reply;
use crate::types::TypeConfig;
use crate::Command;

/// How many events a slow subscriber may fall behind before it is told it lagged.
const EVENT_BACKLOG: usize = 4096;

/// Most replies remembered per proposer session; past it the oldest is forgotten and the
/// session's floor raised above it, so that a late copy is refused, never applied twice.
pub const MAX_PER_SESSION: usize = 1024;

/// Most proposer sessions remembered (one per daemon process that proposed); past it the
/// one used least recently is forgotten.
pub const MAX_SESSIONS: usize = 1024;

/// What the machine knows of one proposer session: below `floor` every proposal was
/// answered (the proposer said so), at or above it the replies of those applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    floor: u64,
    last_used: u64,
    replies: BTreeMap<u64, Reply>,
}

/// The [`Command::Once`] proposals applied, by session: Raft's client sessions (thesis
/// 6.3). Part of the replicated state, so every node answers a copy the same way. Small:
/// a proposer's floor (the oldest proposal it still waits for) drops what it no longer
/// needs, and both maps are bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposals {
    sessions: BTreeMap<u64, Session>,
    /// Counts the `Once` entries applied: when a session was last used.
    applied: u64,
}

/// What to do with one copy of a proposal.
enum Seen {
    /// Never applied: apply it.
    New,
    /// Applied before: its reply.
    Again(Reply),
    /// Below its session's floor: its proposer got an answer already; do nothing.
    Stale,
}

impl Proposals {
    /// How many replies are remembered.
    pub fn len(&self) -> usize {
        self.sessions.values().map(|s| s.replies.len()).sum()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The reply of proposal `id`, if it was applied and is still remembered.
    pub fn get(&self, id: &ProposalId) -> Option<&Reply> {
        self.sessions.get(&id.session)?.replies.get(&id.seq)
    }

    /// Raises `id`'s session floor to `floor` and says what to do with `id`.
    fn see(&mut self, id: &ProposalId, floor: u64) -> Seen {
        self.applied += 1;
        let s = self.sessions.entry(id.session).or_default();
        s.last_used = self.applied;
        if floor > s.floor {
            s.floor = floor;
            s.replies = s.replies.split_off(&floor);
        }
        if id.seq < s.floor {
            return Seen::Stale;
        }
        match s.replies.get(&id.seq) {
            Some(r) => Seen::Again(r.clone()),
            None => Seen::New,
        }
    }

    fn record(&mut self, id: ProposalId, reply: Reply) {
        let s = self.sessions.get_mut(&id.session).expect("seen first");
        assert!(id.seq >= s.floor, "a stale proposal is not applied");
        let fresh = s.replies.insert(id.seq, reply).is_none();
        assert!(fresh, "proposal {id} is recorded once");
        if s.replies.len() > MAX_PER_SESSION {
            let (oldest, _) = s.replies.pop_first().expect("not empty");
            s.floor = oldest + 1;
        }
        if self.sessions.len() > MAX_SESSIONS {
            let idle = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)
                .expect("not empty");
            self.sessions.remove(&idle);
        }
    }
}

/// The state machine's data: what a snapshot contains, and what is rebuilt on restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineData {
    /// Id of the last applied entry.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last membership config applied.
    pub membership: StoredMembership<NodeId, Member>,
    /// The cluster state.
    pub cluster: ClusterState,
    /// The [`Command::Once`] proposals applied, by proposer session.
    #[serde(default)]
    pub proposals: Proposals,
}

impl MachineData {
    /// Applies one log entry; returns the reply for its proposer and the events it caused.
    pub fn apply_entry(&mut self, entry: &Entry<TypeConfig>) -> (Reply, Vec<Event>) {
        if let Some(prev) = self.last_applied {
            assert!(
                entry.log_id > prev,
                "entries are applied in increasing log order: {prev} then {}",
                entry.log_id
            );
        }
        self.last_applied = Some(entry.log_id);
        match &entry.payload {
            EntryPayload::Blank => (Ok(Outcome::default()), Vec::new()),
            EntryPayload::Normal(cmd) => self.apply_command(cmd),
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                let msg = format!("raft membership is now {m}");
                (Ok(Outcome::default()), vec![Event::Log { message: msg }])
            }
        }
    }

    /// Applies `cmd`, unless it is a [`Command::Once`] seen before: a copy of one applied
    /// gets the first copy's reply again, a copy below its session's floor is refused;
    /// neither changes anything.
    fn apply_command(&mut self, cmd: &Command) -> (Reply, Vec<Event>) {
        let Command::Once {
            id,
            floor,
            command: inner,
        } = cmd
        else {
            return apply(&mut self.cluster, cmd);
        };
        let (reply, message) = match self.proposals.see(id, *floor) {
            Seen::New => {
                let (reply, events) = self.apply_command(inner);
                self.proposals.record(*id, reply.clone());
                return (reply, events);
            }
            Seen::Again(first) => (first, "was applied before"),
            Seen::Stale => (
                Err(CommandError::StaleProposal { id: id.to_string() }),
                "was answered already (below its session's floor)",
            ),
        };
        let message = format!(
            "proposal {id} ({}) {message}: not applied again",
            inner.name()
        );
        (reply, vec![Event::Log { message }])
    }

    /// A digest of the replicated part (cluster state, membership and the proposals
    /// remembered): nodes that applied the same entries have the same one. SHA-256, its
    /// first 8 bytes in hex.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let bytes = rmp_serde::to_vec(&(&self.cluster, &self.membership, &self.proposals))
            .expect("machine data always serializes");
        sha2::Sha256::digest(bytes)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Serializes for a snapshot.
    pub fn to_bytes(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("machine data always serializes")
    }

    /// Deserializes a snapshot.
    pub fn from_bytes(bytes: &[u8]) -> Result<MachineData, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// The applied state, its event stream and its applied index, shared between threads.
#[derive(Debug)]
pub struct SharedMachine {
    data: RwLock<MachineData>,
    events: broadcast::Sender<EventRecord>,
    applied: watch::Sender<u64>,
}

impl SharedMachine {
    /// An empty state machine.
    pub fn new() -> Arc<SharedMachine> {
        Arc::new(SharedMachine {
            data: RwLock::new(MachineData::default()),
            events: broadcast::channel(EVENT_BACKLOG).0,
            applied: watch::channel(0).0,
        })
    }

    /// Runs `f` on the applied data under the read lock.
    pub fn read<R>(&self, f: impl FnOnce(&MachineData) -> R) -> R {
        f(&self.data.read().expect("state machine lock poisoned"))
    }

    /// Applies entries in order, publishes their events, and returns one reply per entry.
    pub fn apply_entries<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a Entry<TypeConfig>>,
    ) -> Vec<Reply> {
        let mut replies = Vec::new();
        let mut records = Vec::new();
        let last = {
            let mut data = self.data.write().expect("state machine lock poisoned");
            for entry in entries {
                let (reply, events) = data.apply_entry(entry);
                replies.push(reply);
                records.extend(events.into_iter().map(|event| EventRecord {
                    index: entry.log_id.index,
                    event,
                    replaced: false,
                }));
            }
            data.last_applied.map_or(0, |l| l.index)
        };
        for r in records {
            // No subscriber is fine: events are a view, not a record.
            let _ = self.events.send(r);
        }
        self.applied.send_replace(last);
        replies
    }

    /// Replaces the whole state (snapshot install, or recovery on open).
    pub fn replace(&self, data: MachineData) {
        let last = data.last_applied.map_or(0, |l| l.index);
        let msg = format!("state replaced from snapshot at index {last}");
        *self.data.write().expect("state machine lock poisoned") = data;
        let _ = self.events.send(EventRecord {
            index: last,
            event: Event::Log { message: msg },
            replaced: true,
        });
        self.applied.send_replace(last);
    }

    /// A new subscription to applied events.
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.events.subscribe()
    }

    /// A watch of the last applied log index.
    pub fn applied_index(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}
