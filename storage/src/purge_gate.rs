//! `PurgeGate`: the log's purge never reaches the disk ahead of the snapshot that covers it.
//!
//! openraft 0.9 installs a snapshot on a follower in one engine step: it queues the install
//! on its state machine worker and purges the log up to the snapshot
//! (`following_handler::install_full_snapshot`; a `PurgeLog` command waits for nothing), so
//! the purge reaches the log store while the worker is still writing the snapshot. Written
//! at once, the purge could be made durable by any later sync (a vote, an append) before the
//! snapshot is, and a crash in between left a log purged past the stored snapshot: the
//! entries the node must re-apply after it are gone and it cannot start (simulator seeds
//! 4547, 5141, 5678, 6388, 7264, 8809, 12687, 13165). Dropping such a log on open is not a
//! way out: entries a follower acknowledged may be needed for a commit.
//!
//! The gate, shared by the [`LogStore`](crate::LogStore) and the
//! [`MachineStore`](crate::MachineStore) of one store, knows the last log id of the snapshot
//! known durable, the purge written to the backend, and a purge openraft asked for beyond
//! the durable snapshot (deferred). Reads honour the deferred purge at once (openraft and the
//! storage suite see the purge they asked for); it is written when the state machine reports
//! a durable snapshot covering it. While a purge is deferred, an append whose entries would
//! follow a gap on disk (the deferred purge point is past the log's end) waits for that
//! snapshot, and the purge is synced before those entries are written: on disk, after any
//! crash, the purge is at most the snapshot and the log is contiguous after the purge.

use std::io;

use openraft::LogId;
use raft::NodeId;
use tokio::sync::watch;

use crate::backend::Backend;
use crate::backend::MetaKey;
use crate::backend::Op;

/// What the gate knows; see the module header.
#[derive(Debug, Clone, Default)]
struct GateState {
    /// The last log id of the snapshot known durable.
    snapshot: Option<LogId<NodeId>>,
    /// The purge written to the backend.
    written: Option<LogId<NodeId>>,
    /// A purge beyond `snapshot`, visible to reads, not written yet.
    deferred: Option<LogId<NodeId>>,
    /// Why storing a snapshot failed: appends waiting for one give up.
    failed: Option<String>,
}

/// The purge floor of one store, held back behind its durable snapshot.
#[derive(Debug)]
pub(crate) struct PurgeGate {
    state: watch::Sender<GateState>,
}

/// The writes that purge the log up to `upto`: the floor first, then the entries.
fn purge_ops(upto: &LogId<NodeId>) -> io::Result<Vec<Op>> {
    let floor = rmp_serde::to_vec(upto).map_err(io::Error::other)?;
    Ok(vec![
        Op::PutMeta(MetaKey::LastPurged, floor),
        Op::RemoveUpTo(upto.index),
    ])
}

impl PurgeGate {
    /// A gate over a store whose durable snapshot ends at `snapshot` and whose log was
    /// purged up to `written` (both as read at open).
    pub(crate) fn new(snapshot: Option<LogId<NodeId>>, written: Option<LogId<NodeId>>) -> Self {
        let (state, _) = watch::channel(GateState {
            snapshot,
            written,
            ..GateState::default()
        });
        PurgeGate { state }
    }

    /// The purge reads honour: the deferred one if any, else the one written.
    pub(crate) fn purged(&self) -> Option<LogId<NodeId>> {
        let s = self.state.borrow();
        s.deferred.or(s.written)
    }

    /// Purges up to `upto`: written to `backend` now if the durable snapshot covers it,
    /// deferred otherwise.
    pub(crate) fn purge<B: Backend>(&self, backend: &B, upto: LogId<NodeId>) -> io::Result<()> {
        let mut result = Ok(());
        self.state.send_modify(|s| {
            let visible = s.deferred.or(s.written);
            assert!(
                visible <= Some(upto),
                "purge never goes back: {visible:?} then {upto}"
            );
            s.deferred = Some(upto);
            result = write_covered(s, backend);
        });
        result
    }

    /// The snapshot ending at `last` is durable: writes what of a deferred purge it covers.
    pub(crate) fn snapshot_durable<B: Backend>(
        &self,
        backend: &B,
        last: Option<LogId<NodeId>>,
    ) -> io::Result<()> {
        let mut result = Ok(());
        self.state.send_modify(|s| {
            s.snapshot = s.snapshot.max(last);
            result = write_covered(s, backend);
        });
        result
    }

    /// Storing a snapshot failed: appends waiting for a durable snapshot fail too (the store
    /// must be reopened, see [`crate::wal`]).
    pub(crate) fn snapshot_failed(&self, why: String) {
        self.state.send_modify(|s| s.failed = Some(why));
    }

    /// Waits until entries from index `first` can be written without following a gap on
    /// disk. Returns whether it waited: a purge was written meanwhile, which the caller makes
    /// durable before its entries.
    pub(crate) async fn wait_contiguous<B: Backend>(
        &self,
        backend: &B,
        first: u64,
    ) -> io::Result<bool> {
        if self.state.borrow().deferred.is_none() {
            return Ok(false);
        }
        let mut rx = self.state.subscribe();
        let mut waited = false;
        loop {
            let s = rx.borrow_and_update().clone();
            if s.deferred.is_none() {
                return Ok(waited);
            }
            if let Some(why) = s.failed {
                return Err(io::Error::other(format!(
                    "waiting for a snapshot to cover a purge: {why}"
                )));
            }
            // The next index the log on disk can take without a gap.
            let last = backend.last_entry()?.map(|(i, _)| i);
            let next = last.max(s.written.map(|w| w.index)).map_or(0, |i| i + 1);
            if first <= next {
                return Ok(waited);
            }
            waited = true;
            if rx.changed().await.is_err() {
                return Err(io::Error::other("the store was closed"));
            }
        }
    }
}

/// Writes the part of `s.deferred` that `s.snapshot` covers, if more than `s.written`.
fn write_covered<B: Backend>(s: &mut GateState, backend: &B) -> io::Result<()> {
    let Some(deferred) = s.deferred else {
        return Ok(());
    };
    let covered = match s.snapshot {
        Some(snap) => deferred.min(snap),
        None => return Ok(()),
    };
    if Some(covered) > s.written {
        backend.write(purge_ops(&covered)?)?;
        s.written = Some(covered);
    }
    if Some(deferred) <= s.written {
        s.deferred = None;
    }
    Ok(())
}
