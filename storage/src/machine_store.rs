//! `MachineStore`: openraft's `RaftStateMachine`, applying through [`raft::SharedMachine`]
//! and keeping snapshots in a [`Backend`].

use std::io::Cursor;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
}

impl<B: Backend> MachineStore<B> {
    /// Opens over `backend`, restoring the last snapshot into `machine`.
    pub fn open(backend: B, machine: Arc<SharedMachine>) -> std::io::Result<MachineStore<B>> {
        let store = MachineStore {
            backend,
            machine,
            built: Arc::new(AtomicU64::new(0)),
        };
        if let Some(snap) = store.stored()? {
            let data = MachineData::from_bytes(&snap.data).map_err(std::io::Error::other)?;
            store.machine.replace(data);
        }
        Ok(store)
    }

    fn stored(&self) -> std::io::Result<Option<StoredSnapshot>> {
        match self.backend.meta(MetaKey::Snapshot)? {
            None => Ok(None),
            Some(b) => rmp_serde::from_slice(&b)
                .map(Some)
                .map_err(std::io::Error::other),
        }
    }

    async fn store(&self, snap: &StoredSnapshot) -> std::io::Result<()> {
        let bytes = rmp_serde::to_vec(snap).map_err(std::io::Error::other)?;
        self.backend
            .write(vec![Op::PutMeta(MetaKey::Snapshot, bytes)])?;
        self.backend.sync().await
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
        self.store(&snap)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(snap.meta.signature()), &e))?;
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
        self.store(&snap)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.machine.replace(data);
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
