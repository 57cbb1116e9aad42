//! `Backend`: the small key-value contract both stores are written against.

use std::future::Future;
use std::io;

/// A metadata record kept next to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetaKey {
    /// The last saved vote.
    Vote,
    /// The last known committed log id.
    Committed,
    /// The last purged log id.
    LastPurged,
    /// The current snapshot (meta and data).
    Snapshot,
}

impl MetaKey {
    /// The key's bytes on disk.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            MetaKey::Vote => b"vote",
            MetaKey::Committed => b"committed",
            MetaKey::LastPurged => b"last_purged",
            MetaKey::Snapshot => b"snapshot",
        }
    }
}

/// One write; a batch of them is applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets a metadata record.
    PutMeta(MetaKey, Vec<u8>),
    /// Stores encoded log entries by index.
    PutEntries(Vec<(u64, Vec<u8>)>),
    /// Removes log entries with index >= the given one.
    RemoveFrom(u64),
    /// Removes log entries with index <= the given one.
    RemoveUpTo(u64),
}

/// Ordered key-value storage for the log and its metadata.
///
/// Writes are visible to reads at once and durable only after `sync` returns. Implementations
/// are cheap to clone (handles to one store) and safe to use from several tasks.
pub trait Backend: Clone + Send + Sync + 'static {
    /// Applies `ops` in order (visible now, durable after the next `sync`).
    fn write(&self, ops: Vec<Op>) -> io::Result<()>;

    /// Makes every write so far durable.
    fn sync(&self) -> impl Future<Output = io::Result<()>> + Send;

    /// Reads a metadata record.
    fn meta(&self, key: MetaKey) -> io::Result<Option<Vec<u8>>>;

    /// Encoded entries with `start <= index < end`, in index order.
    fn entries(&self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<u8>)>>;

    /// The encoded entry with the highest index, if any.
    fn last_entry(&self) -> io::Result<Option<(u64, Vec<u8>)>>;
}
