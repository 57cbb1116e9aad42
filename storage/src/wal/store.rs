//! `WalBackend`: the [`Backend`] contract kept by the write-ahead log.
//!
//! `write` encodes each op as records and appends them to the current segment with one
//! positioned write (visible to reads at once, through the page cache); `sync` makes
//! everything written before it durable: `fdatasync` of every segment written since the
//! last sync, `fsync` of the directory if a segment was created, the snapshot file if a new
//! one is pending, and only then the removal of purged segments. Syncs are serialized, and a
//! sync finding its writes already covered by one that ran meanwhile returns at once (group
//! commit across callers). A failed sync poisons the store: after an `fsync` error the page
//! cache may have dropped the dirty pages, so nothing more is written or acknowledged until
//! the store is opened again and re-reads the disk.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use super::disk::Disk;
use super::disk::DiskFile;
use super::record;
use super::record::Record;
use super::scan;
use super::scan::What;
use super::snapshot;
use crate::backend::Backend;
use crate::backend::MetaKey;
use crate::backend::Op;

/// How the log is cut into files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// Bytes preallocated per segment (a bigger record gets a bigger segment).
    pub segment_size: u64,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            segment_size: 8 << 20,
        }
    }
}

/// Where an entry's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    seq: u64,
    off: u64,
    len: u32,
    seed: u32,
}

#[derive(Debug)]
struct Seg<F> {
    file: F,
    /// The highest entry index ever written in it: it may go once that is purged.
    max_index: Option<u64>,
    scheduled: bool,
}

#[derive(Debug)]
struct State<F> {
    segs: BTreeMap<u64, Seg<F>>,
    /// The current segment, the next write offset in it, its size, the last record's crc.
    cur: u64,
    pos: u64,
    cap: u64,
    crc: u32,
    max_seq: u64,
    entries: BTreeMap<u64, Loc>,
    meta: BTreeMap<MetaKey, Vec<u8>>,
    purged: Option<u64>,
    snapshot: Option<Arc<Vec<u8>>>,
    snapshot_dirty: bool,
    /// Write calls so far, and how many of them a completed sync covers.
    writes: u64,
    durable: u64,
    dirty: BTreeSet<u64>,
    dir_dirty: bool,
    /// Segments to remove once a sync covers the write that purged them.
    deletions: Vec<(u64, u64)>,
    failed: Option<String>,
}

struct Shared<D: Disk> {
    disk: D,
    opts: WalOptions,
    st: Mutex<State<D::File>>,
    sync_lock: tokio::sync::Mutex<()>,
}

/// The log store's [`Backend`]: a segmented, checksummed, append-only log on a [`Disk`].
pub struct WalBackend<D: Disk> {
    sh: Arc<Shared<D>>,
}

impl<D: Disk> Clone for WalBackend<D> {
    fn clone(&self) -> Self {
        WalBackend {
            sh: self.sh.clone(),
        }
    }
}

impl<D: Disk> std::fmt::Debug for WalBackend<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.sh.lock();
        f.debug_struct("WalBackend")
            .field("segments", &st.segs.keys().collect::<Vec<_>>())
            .field("entries", &st.entries.len())
            .field("writes", &st.writes)
            .field("durable", &st.durable)
            .finish()
    }
}

impl<D: Disk> Shared<D> {
    fn lock(&self) -> MutexGuard<'_, State<D::File>> {
        self.st.lock().expect("wal state lock poisoned")
    }
}

fn fail(why: &str) -> io::Error {
    io::Error::other(format!("the log store failed earlier ({why}); reopen it"))
}

impl<F: DiskFile> State<F> {
    fn empty() -> State<F> {
        State {
            segs: BTreeMap::new(),
            cur: 0,
            pos: 0,
            cap: 0,
            crc: 0,
            max_seq: 0,
            entries: BTreeMap::new(),
            meta: BTreeMap::new(),
            purged: None,
            snapshot: None,
            snapshot_dirty: false,
            writes: 0,
            durable: 0,
            dirty: BTreeSet::new(),
            dir_dirty: false,
            deletions: Vec::new(),
            failed: None,
        }
    }

    /// Applies one record (written now or read back) to the in-memory view.
    fn apply(&mut self, seq: u64, item: &scan::Item) {
        match &item.what {
            What::Entry(i) => {
                let loc = Loc {
                    seq,
                    off: item.off,
                    len: item.len,
                    seed: item.seed,
                };
                self.entries.insert(*i, loc);
                let seg = self.segs.get_mut(&seq).expect("record of a known segment");
                seg.max_index = seg.max_index.max(Some(*i));
                // openraft never appends at or below a purge, its test suite does: the
                // purge point then moves below the entry, so that no segment holding a
                // live entry is ever taken for purged.
                if self.purged >= Some(*i) {
                    self.purged = i.checked_sub(1);
                }
            }
            What::Meta(k, v) => {
                self.meta.insert(*k, v.clone());
            }
            What::TruncateFrom(i) => {
                self.entries.split_off(i);
                // What older segments hold from `i` on is dead for good (entries written
                // again go to the current segment): they may go once `i - 1` is purged.
                for seg in self.segs.values_mut() {
                    if seg.max_index.is_some_and(|m| m >= *i) {
                        seg.max_index = i.checked_sub(1);
                    }
                }
            }
            What::PurgeTo(i) => {
                self.entries = self.entries.split_off(&(i + 1));
                self.purged = self.purged.max(Some(*i));
            }
            What::Floor(p) => self.purged = *p,
        }
        debug_assert!(
            self.entries
                .first_key_value()
                .is_none_or(|(i, _)| Some(*i) > self.purged),
            "every live entry is above the purge point"
        );
    }

    /// The records that restate everything but the entries: a new segment starts with them,
    /// so that older segments can be removed once their entries are purged. (Entries those
    /// segments held are gone with them; purges of entries still on disk are in the
    /// segments that hold them or later ones, which stay.)
    fn checkpoint(&self) -> Vec<Record<'_>> {
        let mut out: Vec<Record<'_>> = self
            .meta
            .iter()
            .map(|(k, v)| Record::Meta { key: *k, value: v })
            .collect();
        out.push(Record::Floor(self.purged));
        out
    }

    /// Marks for removal the oldest segments whose entries are all purged (never the
    /// current one), to go once write `at` is durable.
    fn schedule_deletions(&mut self, at: u64) {
        let purged = self.purged;
        for (seq, seg) in self.segs.iter_mut() {
            if *seq == self.cur {
                break;
            }
            if seg.scheduled {
                continue;
            }
            if seg.max_index.is_some_and(|m| Some(m) > purged) {
                break;
            }
            seg.scheduled = true;
            self.deletions.push((*seq, at));
        }
    }
}

/// A record about to be written, with what it changes once it is.
struct Pending<'a> {
    record: Record<'a>,
    what: What,
}

fn pending_of(op: &Op) -> Vec<Pending<'_>> {
    match op {
        Op::PutMeta(MetaKey::Snapshot, _) => Vec::new(),
        Op::PutMeta(key, value) => vec![Pending {
            record: Record::Meta { key: *key, value },
            what: What::Meta(*key, value.clone()),
        }],
        Op::PutEntries(es) => es
            .iter()
            .map(|(index, data)| Pending {
                record: Record::Entry {
                    index: *index,
                    data,
                },
                what: What::Entry(*index),
            })
            .collect(),
        Op::RemoveFrom(i) => vec![Pending {
            record: Record::TruncateFrom(*i),
            what: What::TruncateFrom(*i),
        }],
        Op::RemoveUpTo(i) => vec![Pending {
            record: Record::PurgeTo(*i),
            what: What::PurgeTo(*i),
        }],
    }
}

impl<D: Disk> WalBackend<D> {
    /// Opens the log on `disk`: reads it back, cuts it where it stops being valid, makes
    /// what it kept durable, and starts a new segment for this incarnation's writes.
    pub async fn open(disk: D, opts: WalOptions) -> io::Result<WalBackend<D>> {
        assert!(opts.segment_size >= 4096, "segments of at least 4 KiB");
        let rec = scan::recover(&disk)?;
        for note in &rec.notes {
            tracing::warn!("write-ahead log: {note}");
        }
        let mut st = State::empty();
        for s in &rec.segments {
            st.segs.insert(
                s.seq,
                Seg {
                    file: s.file.clone(),
                    max_index: None,
                    scheduled: false,
                },
            );
            for item in &s.items {
                st.apply(s.seq, item);
            }
            (st.cur, st.crc) = (s.seq, s.end_crc);
        }
        st.max_seq = rec.max_seq;
        for seq in rec.dropped.iter().rev() {
            disk.remove(&scan::segment_name(*seq))?;
        }
        if disk.list()?.iter().any(|n| n == snapshot::SNAPSHOT_TMP) {
            disk.remove(snapshot::SNAPSHOT_TMP)?;
        }
        // What was read back may have been in the page cache only (the process died, the
        // machine did not): make it durable before anything is built on it.
        for seg in st.segs.values() {
            seg.file.sync().await?;
        }
        disk.sync_dir().await?;
        st.snapshot = snapshot::read(&disk)?.map(Arc::new);
        st.writes = 1;
        roll(&disk, &opts, &mut st, 0)?;
        st.schedule_deletions(1);
        Ok(WalBackend {
            sh: Arc::new(Shared {
                disk,
                opts,
                st: Mutex::new(st),
                sync_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The sequence numbers of the segments in use, oldest first.
    pub fn segments(&self) -> Vec<u64> {
        self.sh.lock().segs.keys().copied().collect()
    }

    /// The disk the log is on.
    pub fn disk(&self) -> &D {
        &self.sh.disk
    }

    fn read_locs(&self, locs: Vec<(u64, Loc, D::File)>) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::with_capacity(locs.len());
        let mut k = 0;
        while k < locs.len() {
            // One read for a run of records that follow each other in one segment.
            let mut j = k + 1;
            while j < locs.len()
                && locs[j].1.seq == locs[k].1.seq
                && locs[j].1.off == locs[j - 1].1.off + u64::from(locs[j - 1].1.len)
            {
                j += 1;
            }
            let start = locs[k].1.off;
            let end = locs[j - 1].1.off + u64::from(locs[j - 1].1.len);
            let mut buf = vec![0; (end - start) as usize];
            locs[k].2.read_at(start, &mut buf)?;
            for (index, loc, _) in &locs[k..j] {
                out.push((
                    *index,
                    entry_at(&buf, (loc.off - start) as usize, *index, loc)?,
                ));
            }
            k = j;
        }
        Ok(out)
    }
}

/// The entry data of the record at `rel` of `buf`, checked against its crc again: a record
/// that rotted since it was written is an error, never served.
fn entry_at(buf: &[u8], rel: usize, index: u64, loc: &Loc) -> io::Result<Vec<u8>> {
    let slice = &buf[..rel + loc.len as usize];
    match record::decode(slice, rel, Some(loc.seed)) {
        record::Decoded::Valid {
            record: Record::Entry { index: i, data },
            ..
        } if i == index => Ok(data.to_vec()),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "log entry {index} in {} at offset {}: {other:?}",
                scan::segment_name(loc.seq),
                loc.off
            ),
        )),
    }
}

/// Starts a new segment holding the header and the checkpoint, with room for a record of
/// `need` bytes.
fn roll<D: Disk>(
    disk: &D,
    opts: &WalOptions,
    st: &mut State<D::File>,
    need: usize,
) -> io::Result<()> {
    let seq = st.max_seq + 1;
    let header = Record::Header {
        seq,
        prev_seq: st.cur,
        prev_crc: st.crc,
    };
    let mut buf = Vec::new();
    let mut crc = record::encode(&mut buf, 0, &header);
    for r in st.checkpoint() {
        crc = record::encode(&mut buf, crc, &r);
    }
    let cap = opts.segment_size.max((buf.len() + need) as u64);
    let file = disk.create(&scan::segment_name(seq))?;
    file.allocate(cap)?;
    file.write_at(0, &buf)?;
    st.segs.insert(
        seq,
        Seg {
            file,
            max_index: None,
            scheduled: false,
        },
    );
    (st.cur, st.pos, st.cap, st.crc, st.max_seq) = (seq, buf.len() as u64, cap, crc, seq);
    st.dirty.insert(seq);
    st.dir_dirty = true;
    Ok(())
}

impl<D: Disk> WalBackend<D> {
    /// Appends the records of `ops` to the current segment, rolling to a new one when a
    /// record does not fit; returns the write's number.
    fn append(&self, st: &mut State<D::File>, ops: &[Op]) -> io::Result<u64> {
        let pending: Vec<Pending<'_>> = ops.iter().flat_map(pending_of).collect();
        for p in &pending {
            let len = record::encoded_len(&p.record) - record::FRAME;
            if len > record::MAX_PAYLOAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a log record of {len} bytes (at most {})",
                        record::MAX_PAYLOAD
                    ),
                ));
            }
        }
        st.writes += 1;
        let mut buf = Vec::new();
        let mut done: Vec<scan::Item> = Vec::new();
        for p in &pending {
            let need = record::encoded_len(&p.record);
            if st.pos + (buf.len() + need) as u64 > st.cap {
                self.flush(st, &mut buf, &mut done)?;
                roll(&self.sh.disk, &self.sh.opts, st, need)?;
            }
            let off = st.pos + buf.len() as u64;
            let seed = st.crc;
            st.crc = record::encode(&mut buf, seed, &p.record);
            let item = scan::Item {
                off,
                len: need as u32,
                seed,
                what: p.what.clone(),
            };
            done.push(item);
        }
        self.flush(st, &mut buf, &mut done)?;
        Ok(st.writes)
    }

    /// Writes `buf` at the current position and applies the records it holds.
    fn flush(
        &self,
        st: &mut State<D::File>,
        buf: &mut Vec<u8>,
        done: &mut Vec<scan::Item>,
    ) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let file = st.segs[&st.cur].file.clone();
        if let Err(e) = file.write_at(st.pos, buf) {
            st.failed = Some(format!("write: {e}"));
            return Err(e);
        }
        st.pos += buf.len() as u64;
        assert!(st.pos <= st.cap, "a segment is never written past its size");
        st.dirty.insert(st.cur);
        let seq = st.cur;
        for item in done.drain(..) {
            st.apply(seq, &item);
        }
        buf.clear();
        Ok(())
    }

    /// Everything one sync does, captured under the lock.
    fn capture(&self, st: &mut State<D::File>) -> SyncJob<D::File> {
        let files = std::mem::take(&mut st.dirty)
            .into_iter()
            .map(|seq| st.segs[&seq].file.clone())
            .collect();
        let snapshot = if st.snapshot_dirty {
            st.snapshot_dirty = false;
            st.snapshot.clone()
        } else {
            None
        };
        let target = st.writes;
        let (now, later): (Vec<_>, Vec<_>) = st.deletions.iter().partition(|(_, at)| *at <= target);
        st.deletions = later;
        SyncJob {
            target,
            files,
            dir: std::mem::take(&mut st.dir_dirty),
            snapshot,
            deletions: now.into_iter().map(|(seq, _)| seq).collect(),
        }
    }

    async fn run(&self, job: &SyncJob<D::File>) -> io::Result<()> {
        for f in &job.files {
            f.sync().await?;
        }
        if job.dir {
            self.sh.disk.sync_dir().await?;
        }
        if let Some(s) = &job.snapshot {
            snapshot::write(&self.sh.disk, s).await?;
        }
        // Oldest first, each removal durable before the next: the segments left on disk
        // are always a suffix of the chain, never a chain with a hole.
        for seq in &job.deletions {
            self.sh.disk.remove(&scan::segment_name(*seq))?;
            self.sh.disk.sync_dir().await?;
            self.sh.lock().segs.remove(seq);
        }
        Ok(())
    }
}

/// The files, directory, snapshot and removals one sync covers.
struct SyncJob<F> {
    target: u64,
    files: Vec<F>,
    dir: bool,
    snapshot: Option<Arc<Vec<u8>>>,
    deletions: Vec<u64>,
}

impl<D: Disk> Backend for WalBackend<D> {
    fn write(&self, ops: Vec<Op>) -> io::Result<()> {
        let mut st = self.sh.lock();
        if let Some(why) = &st.failed {
            return Err(fail(why));
        }
        let at = match self.append(&mut st, &ops) {
            Ok(at) => at,
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => return Err(e),
            Err(e) => {
                // Records may be half written and the chain has moved on: stop here.
                st.failed = Some(format!("write: {e}"));
                return Err(e);
            }
        };
        for op in ops {
            match op {
                Op::PutMeta(MetaKey::Snapshot, v) => {
                    st.snapshot = Some(Arc::new(v));
                    st.snapshot_dirty = true;
                }
                Op::RemoveUpTo(_) => st.schedule_deletions(at),
                _ => {}
            }
        }
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        let want = {
            let st = self.sh.lock();
            if let Some(why) = &st.failed {
                return Err(fail(why));
            }
            st.writes
        };
        let _serial = self.sh.sync_lock.lock().await;
        let job = {
            let mut st = self.sh.lock();
            if let Some(why) = &st.failed {
                return Err(fail(why));
            }
            if st.durable >= want {
                return Ok(());
            }
            self.capture(&mut st)
        };
        let done = self.run(&job).await;
        let mut st = self.sh.lock();
        match done {
            Ok(()) => {
                assert!(job.target >= st.durable, "syncs are serialized");
                st.durable = job.target;
                Ok(())
            }
            Err(e) => {
                st.failed = Some(format!("sync: {e}"));
                Err(e)
            }
        }
    }

    fn meta(&self, key: MetaKey) -> io::Result<Option<Vec<u8>>> {
        let st = self.sh.lock();
        Ok(match key {
            MetaKey::Snapshot => st.snapshot.as_ref().map(|s| s.to_vec()),
            k => st.meta.get(&k).cloned(),
        })
    }

    fn entries(&self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let locs = {
            let st = self.sh.lock();
            st.entries
                .range(start..end)
                .map(|(i, l)| (*i, *l, st.segs[&l.seq].file.clone()))
                .collect()
        };
        self.read_locs(locs)
    }

    fn last_entry(&self) -> io::Result<Option<(u64, Vec<u8>)>> {
        let last = {
            let st = self.sh.lock();
            st.entries
                .last_key_value()
                .map(|(i, l)| vec![(*i, *l, st.segs[&l.seq].file.clone())])
        };
        match last {
            None => Ok(None),
            Some(locs) => Ok(self.read_locs(locs)?.pop()),
        }
    }
}
