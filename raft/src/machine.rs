//! The applied state machine shared by a store and the [`crate::Node`] handle that reads it.
//!
//! Stores (sled-backed or in-memory) own durability; this module owns what applying a log
//! entry means, so that every store applies entries through the same code.

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
use crate::apply::Outcome;
use crate::event::Event;
use crate::event::EventRecord;
use crate::state::ClusterState;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::Reply;
use crate::types::TypeConfig;

/// How many events a slow subscriber may fall behind before it is told it lagged.
const EVENT_BACKLOG: usize = 4096;

/// The state machine's data: what a snapshot contains, and what is rebuilt on restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineData {
    /// Id of the last applied entry.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last membership config applied.
    pub membership: StoredMembership<NodeId, Member>,
    /// The cluster state.
    pub cluster: ClusterState,
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
            EntryPayload::Normal(cmd) => apply(&mut self.cluster, cmd),
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                let msg = format!("raft membership is now {m}");
                (Ok(Outcome::default()), vec![Event::Log { message: msg }])
            }
        }
    }

    /// A digest of the replicated part (cluster state and membership): nodes that applied
    /// the same entries have the same one. SHA-256, its first 8 bytes in hex.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let bytes = rmp_serde::to_vec(&(&self.cluster, &self.membership))
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
