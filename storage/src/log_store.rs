//! `LogStore`: openraft's `RaftLogStorage` over a [`Backend`], its purges held behind the
//! durable snapshot by the [`PurgeGate`] it shares with the [`MachineStore`](crate::MachineStore).

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::OnceLock;

use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use openraft::Entry;
use openraft::LogId;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::StorageError;
use openraft::StorageIOError;
use openraft::Vote;
use raft::NodeId;
use raft::TypeConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::backend::MetaKey;
use crate::backend::Op;
use crate::purge_gate::PurgeGate;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The Raft log, vote and committed index, stored in a [`Backend`].
///
/// `append` writes the entries and hands its callback to a flusher task, so openraft can
/// submit the next entries while the previous ones are being synced; the flusher makes one
/// sync cover every append queued behind it (group commit) and only then runs their
/// callbacks, in order. A purge beyond the durable snapshot is deferred (see
/// [`crate::purge_gate`]).
#[derive(Debug, Clone)]
pub struct LogStore<B> {
    backend: B,
    flusher: Arc<OnceLock<mpsc::UnboundedSender<LogFlushed<TypeConfig>>>>,
    gate: Arc<PurgeGate>,
}

impl<B: Backend> LogStore<B> {
    /// A log store over `backend`, purging through the state machine's `gate`.
    pub(crate) fn new(backend: B, gate: Arc<PurgeGate>) -> LogStore<B> {
        LogStore {
            backend,
            flusher: Arc::new(OnceLock::new()),
            gate,
        }
    }

    /// The flusher's queue, starting the flusher on first use (inside the runtime).
    fn flusher(&self) -> &mpsc::UnboundedSender<LogFlushed<TypeConfig>> {
        self.flusher.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(flush_loop(self.backend.clone(), rx));
            tx
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, key: MetaKey) -> std::io::Result<Option<T>> {
        match self.backend.meta(key)? {
            None => Ok(None),
            Some(bytes) => rmp_serde::from_slice(&bytes)
                .map(Some)
                .map_err(std::io::Error::other),
        }
    }

    fn put_meta<T: Serialize>(&self, key: MetaKey, value: &T) -> std::io::Result<()> {
        let bytes = rmp_serde::to_vec(value).map_err(std::io::Error::other)?;
        self.backend.write(vec![Op::PutMeta(key, bytes)])
    }

    /// The purge reads honour (a deferred one included).
    fn last_purged(&self) -> Option<LogId<NodeId>> {
        self.gate.purged()
    }
}

/// Syncs once for every batch of queued appends, then acknowledges them in order.
async fn flush_loop<B: Backend>(
    backend: B,
    mut rx: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>,
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let synced = backend.sync().await;
        for callback in batch.drain(..) {
            let result = match &synced {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            callback.log_io_completed(result);
        }
    }
}

fn decode(index: u64, bytes: &[u8]) -> Result<Entry<TypeConfig>> {
    let e: Entry<TypeConfig> = rmp_serde::from_slice(bytes)
        .map_err(|err| StorageIOError::read_log_at_index(index, &err))?;
    assert_eq!(
        e.log_id.index, index,
        "log entry stored under its own index"
    );
    Ok(e)
}

impl<B: Backend> RaftLogReader<TypeConfig> for LogStore<B> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        // Entries at or below last_purged may linger after a crash mid-purge: never serve them.
        let floor = self.last_purged().map_or(0, |l| l.index + 1);
        let raw = self
            .backend
            .entries(start.max(floor), end)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        raw.iter().map(|(i, b)| decode(*i, b)).collect()
    }

    /// What replication reads: a prefix of `[start, end)`. A range that starts below the
    /// purge floor has no such prefix: the entries above the floor would be sent after a
    /// prev_log_id they do not follow, and a follower would append them across a gap (found
    /// by the simulator, seed 6904: a replication read racing a purge). Nothing is served
    /// then; openraft retries and sends a snapshot once it sees the purge.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let floor = self.last_purged().map_or(0, |l| l.index + 1);
        if start < floor {
            return Ok(Vec::new());
        }
        let mut entries = self.try_get_log_entries(start..end).await?;
        let contiguous = entries
            .iter()
            .zip(start..)
            .take_while(|(e, want)| e.log_id.index == *want)
            .count();
        entries.truncate(contiguous);
        Ok(entries)
    }
}

impl<B: Backend> RaftLogStorage<TypeConfig> for LogStore<B> {
    type LogReader = LogStore<B>;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged = self.last_purged();
        let last = match self
            .backend
            .last_entry()
            .map_err(|e| StorageIOError::read_logs(&e))?
        {
            Some((i, bytes)) if last_purged.is_none_or(|p| i > p.index) => {
                Some(decode(i, &bytes)?.log_id)
            }
            _ => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.put_meta(MetaKey::Vote, vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        // The vote must be durable before we answer anyone with it: double voting otherwise.
        self.backend
            .sync()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        Ok(self
            .get_meta(MetaKey::Vote)
            .map_err(|e| StorageIOError::read_vote(&e))?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.put_meta(MetaKey::Committed, &committed)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>(MetaKey::Committed)
            .map_err(|e| StorageIOError::read(&e))?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        for e in entries {
            let bytes = rmp_serde::to_vec(&e).map_err(|err| StorageIOError::write_logs(&err))?;
            batch.push((e.log_id.index, bytes));
        }
        // Entries after a deferred purge past the log's end wait for the snapshot, and the
        // purge it let through is durable before them: no gap on disk after a crash.
        let waited = match batch.first() {
            Some(&(first, _)) => self
                .gate
                .wait_contiguous(&self.backend, first)
                .await
                .map_err(|e| StorageIOError::write_logs(&e))?,
            None => false,
        };
        if waited {
            self.backend
                .sync()
                .await
                .map_err(|e| StorageIOError::write_logs(&e))?;
        }
        self.backend
            .write(vec![Op::PutEntries(batch)])
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // openraft counts an entry towards the commit quorum once the callback runs: only
        // after it is durable, which the flusher sees to.
        if let Err(mpsc::error::SendError(callback)) = self.flusher().send(callback) {
            callback.log_io_completed(Err(std::io::Error::other("log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.backend
            .write(vec![Op::RemoveFrom(log_id.index)])
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.backend
            .sync()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    /// Written without a sync when the durable snapshot covers it (losing it is safe),
    /// deferred until one does otherwise (openraft purges a follower's log while the
    /// snapshot it installs is still being written).
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.gate
            .purge(&self.backend, log_id)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
