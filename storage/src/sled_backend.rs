//! `SledBackend`: the log and metadata in a sled 0.34 database on disk.
//!
//! sled's flush writes and syncs its log file (with `sync_file_range` on Linux): a write
//! acknowledged after `sync` survives the process being killed; surviving a power cut also
//! depends on the drive honouring the sync.

use std::io;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use crate::backend::Backend;
use crate::backend::MetaKey;
use crate::backend::Op;

/// A [`Backend`] on a sled database directory.
#[derive(Debug, Clone)]
pub struct SledBackend {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

/// How long [`SledBackend::open`] waits for the database's file lock while another handle
/// in this process is going away: sled's I/O threads release it a little after the last
/// `Db` handle drops (the migration test, reopening at once, failed 6 times in 40).
const LOCK_WAIT: Duration = Duration::from_secs(2);

impl SledBackend {
    /// Opens (or creates) the database in `dir`, waiting up to [`LOCK_WAIT`] for its lock.
    pub fn open(dir: &Path) -> io::Result<SledBackend> {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match Self::try_open(dir) {
                // sled reports a held lock only in its message.
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => return r,
            }
        }
    }

    fn try_open(dir: &Path) -> io::Result<SledBackend> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // We sync when openraft needs it; sled's own timer would only add fsyncs.
            .flush_every_ms(None)
            .open()
            .map_err(to_io)?;
        let log = db.open_tree("log").map_err(to_io)?;
        let meta = db.open_tree("meta").map_err(to_io)?;
        Ok(SledBackend { db, log, meta })
    }
}

fn to_io(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

impl Backend for SledBackend {
    fn write(&self, ops: Vec<Op>) -> io::Result<()> {
        for op in ops {
            match op {
                Op::PutMeta(k, v) => {
                    self.meta.insert(k.as_bytes(), v).map_err(to_io)?;
                }
                Op::PutEntries(es) => {
                    let mut batch = sled::Batch::default();
                    for (i, e) in es {
                        batch.insert(&i.to_be_bytes(), e);
                    }
                    self.log.apply_batch(batch).map_err(to_io)?;
                }
                Op::RemoveFrom(i) => {
                    let mut batch = sled::Batch::default();
                    for k in self.log.range(i.to_be_bytes()..).keys() {
                        batch.remove(k.map_err(to_io)?);
                    }
                    self.log.apply_batch(batch).map_err(to_io)?;
                }
                Op::RemoveUpTo(i) => {
                    let mut batch = sled::Batch::default();
                    for k in self.log.range(..=i.to_be_bytes()).keys() {
                        batch.remove(k.map_err(to_io)?);
                    }
                    self.log.apply_batch(batch).map_err(to_io)?;
                }
            }
        }
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        self.db.flush_async().await.map_err(to_io)?;
        Ok(())
    }

    fn meta(&self, key: MetaKey) -> io::Result<Option<Vec<u8>>> {
        Ok(self
            .meta
            .get(key.as_bytes())
            .map_err(to_io)?
            .map(|v| v.to_vec()))
    }

    fn entries(&self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.log
            .range(start.to_be_bytes()..end.to_be_bytes())
            .map(|kv| {
                let (k, v) = kv.map_err(to_io)?;
                Ok((index_of(&k)?, v.to_vec()))
            })
            .collect()
    }

    fn last_entry(&self) -> io::Result<Option<(u64, Vec<u8>)>> {
        match self.log.last().map_err(to_io)? {
            None => Ok(None),
            Some((k, v)) => Ok(Some((index_of(&k)?, v.to_vec()))),
        }
    }
}

fn index_of(key: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| io::Error::other(format!("log key of {} bytes, expected 8", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}
