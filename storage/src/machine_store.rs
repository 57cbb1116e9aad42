//! `MachineStore`: openraft's `RaftStateMachine`, applying through [`raft::SharedMachine`]
//! and keeping snapshots in a [`Backend`]. A stored snapshot never goes back (a build that
//! read the machine before an install finished is not written over the installed one), and
//! each durable snapshot is reported to the [`PurgeGate`], which lets the log's purges
//! through behind it.

use std::io::Cursor;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::Entry;
use openraft::LogId;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::SnapshotMeta;
use openraft::StorageError;
use openraft::StorageIOError;
use openraft::StoredMembership;
use openraft::Vote;
use raft::MachineData;
use raft::Member;
use raft::NodeId;
use raft::Reply;
use raft::SharedMachine;
use raft::TypeConfig;
use serde::Deserialize;
use serde::Serialize;

use crate::backend::Backend;
use crate::backend::MetaKey;
use crate::backend::Op;
use crate::purge_gate::PurgeGate;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// A snapshot as stored: its meta and the encoded [`MachineData`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// The state machine side of the store.
#[derive(Debug, Clone)]
pub struct MachineStore<B> {
    backend: B,
    machine: Arc<SharedMachine>,
    built: Arc<AtomicU64>,
    gate: Arc<PurgeGate>,
    /// The last log id of the newest snapshot written (synced or not).
    newest: Arc<Mutex<Option<LogId<NodeId>>>>,
}

impl<B: Backend> MachineStore<B> {
    /// Opens over `backend`, restoring the last snapshot into `machine`.
    pub fn open(backend: B, machine: Arc<SharedMachine>) -> std::io::Result<MachineStore<B>> {
        let stored = read_stored(&backend)?;
        let last = stored.as_ref().and_then(|s| s.meta.last_log_id);
        let purged = match backend.meta(MetaKey::LastPurged)? {
            Some(b) => rmp_serde::from_slice(&b).map_err(std::io::Error::other)?,
            None => None,
        };
        if let Some(snap) = stored {
            let data = MachineData::from_bytes(&snap.data).map_err(std::io::Error::other)?;
            machine.replace(data);
        }
        Ok(MachineStore {
            backend,
            machine,
            built: Arc::new(AtomicU64::new(0)),
            gate: Arc::new(PurgeGate::new(last, purged)),
            newest: Arc::new(Mutex::new(last)),
        })
    }

    /// The gate the log store of this store purges through.
    pub(crate) fn purge_gate(&self) -> Arc<PurgeGate> {
        self.gate.clone()
    }

    fn stored(&self) -> std::io::Result<Option<StoredSnapshot>> {
        read_stored(&self.backend)
    }

    /// Writes `snap` unless a newer snapshot was written meanwhile, installing `data` in the
    /// machine (an install) at the same moment; then syncs and tells the gate. Returns
    /// whether `snap` was written.
    async fn store(
        &self,
        snap: &StoredSnapshot,
        data: Option<MachineData>,
    ) -> std::io::Result<bool> {
        let bytes = rmp_serde::to_vec(snap).map_err(std::io::Error::other)?;
        let last = snap.meta.last_log_id;
        let written = {
            let mut newest = self.newest.lock().expect("snapshot lock poisoned");
            let write = last >= *newest;
            if write {
                self.backend
                    .write(vec![Op::PutMeta(MetaKey::Snapshot, bytes)])?;
                *newest = last;
            }
            if let Some(data) = data {
                self.machine.replace(data);
            }
            write
        };
        if !written {
            return Ok(false);
        }
        match self.backend.sync().await {
            Ok(()) => {
                self.gate.snapshot_durable(&self.backend, last)?;
                Ok(true)
            }
            Err(e) => {
                self.gate.snapshot_failed(e.to_string());
                Err(e)
            }
        }
    }
}

/// Makes an empty store hold `data` as its snapshot, synced: the first state of a cluster
/// restored from a backup (`raft::backup`), whose membership has one voter. openraft,
/// started on the store, takes the snapshot's last log id as purged and its membership as
/// the config, as on a follower that installed a snapshot. The store also holds that
/// voter's vote for itself in the term of the snapshot's last entry, so that its first
/// election runs in the next term: with no vote it would run in term 1, and a committed
/// vote in the term of the last log id but from a lower node id is below that log id's
/// leader, which openraft asserts never happens. A store with any record is refused.
pub async fn seed<B: Backend>(backend: &B, data: &MachineData) -> std::io::Result<()> {
    let voters: Vec<NodeId> = data.membership.membership().voter_ids().collect();
    let [voter] = voters[..] else {
        return Err(std::io::Error::other(format!(
            "a seeded store has one voter, this membership has {voters:?}"
        )));
    };
    let used = [
        MetaKey::Vote,
        MetaKey::Committed,
        MetaKey::Snapshot,
        MetaKey::LastPurged,
    ]
    .into_iter()
    .map(|k| backend.meta(k))
    .collect::<std::io::Result<Vec<_>>>()?;
    if used.iter().any(Option::is_some) || backend.last_entry()?.is_some() {
        return Err(std::io::Error::other(
            "the store is not empty: only a new store is seeded with a backup",
        ));
    }
    let snapshot_id = match data.last_applied {
        Some(l) => format!("restored-{}-{}", l.leader_id, l.index),
        None => "restored-none".to_string(),
    };
    let meta = SnapshotMeta {
        last_log_id: data.last_applied,
        last_membership: data.membership.clone(),
        snapshot_id,
    };
    let snap = StoredSnapshot {
        meta,
        data: data.to_bytes(),
    };
    let term = data.last_applied.map_or(0, |l| l.leader_id.term);
    let vote = rmp_serde::to_vec(&Vote::new(term, voter)).map_err(std::io::Error::other)?;
    let bytes = rmp_serde::to_vec(&snap).map_err(std::io::Error::other)?;
    backend.write(vec![
        Op::PutMeta(MetaKey::Snapshot, bytes),
        Op::PutMeta(MetaKey::Vote, vote),
    ])?;
    backend.sync().await
}

fn read_stored<B: Backend>(backend: &B) -> std::io::Result<Option<StoredSnapshot>> {
    match backend.meta(MetaKey::Snapshot)? {
        None => Ok(None),
        Some(b) => rmp_serde::from_slice(&b)
            .map(Some)
            .map_err(std::io::Error::other),
    }
}

impl<B: Backend> RaftSnapshotBuilder<TypeConfig> for MachineStore<B> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let (data, last_applied, membership) = self
            .machine
            .read(|d| (d.to_bytes(), d.last_applied, d.membership.clone()));
        let n = self.built.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
            None => format!("none-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let snap = StoredSnapshot { meta, data };
        let written = self
            .store(&snap, None)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(snap.meta.signature()), &e))?;
        // Not written: an install stored a newer snapshot while this one was read; that one
        // is the current snapshot.
        let snap = match written {
            true => snap,
            false => self
                .stored()
                .map_err(|e| StorageIOError::read_snapshot(None, &e))?
                .expect("a newer snapshot was written"),
        };
        Ok(Snapshot {
            meta: snap.meta,
            snapshot: Box::new(Cursor::new(snap.data)),
        })
    }
}

impl<B: Backend> RaftStateMachine<TypeConfig> for MachineStore<B> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        Ok(self
            .machine
            .read(|d| (d.last_applied, d.membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        Ok(self.machine.apply_entries(&entries))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let bytes = snapshot.into_inner();
        let mut data = MachineData::from_bytes(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        // The meta is authoritative for what the snapshot covers.
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        let snap = StoredSnapshot {
            meta: meta.clone(),
            data: data.to_bytes(),
        };
        self.store(&snap, Some(data))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let snap = self
            .stored()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(snap.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
