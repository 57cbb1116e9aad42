//! Moving a store written by an older om (sled 0.34 in `var/raft`) to the write-ahead log,
//! once, when the daemon opens it.
//!
//! The log is copied into `var/raft.migrating` and synced, then `var/raft` becomes
//! `var/raft.sled`, `var/raft.migrating` becomes `var/raft` (directory synced) and the old
//! sled files are removed. A crash at any step is finished or redone by the next open: the
//! sled store is removed only once the new one is in its place.

use std::io;
use std::path::Path;
use std::path::PathBuf;

use crate::backend::Backend;
use crate::backend::MetaKey;
use crate::DiskBackend;
use crate::SledBackend;

/// Entries copied per batch: bounds the memory a migration takes.
const CHUNK: u64 = 4096;

/// Whether `dir` holds a sled database (its `conf` and `db` files).
pub fn is_sled_store(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

fn sibling(dir: &Path, suffix: &str) -> io::Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{}: no directory name", dir.display())))?;
    Ok(dir.with_file_name(format!("{}.{suffix}", name.to_string_lossy())))
}

fn sync_parent(dir: &Path) -> io::Result<()> {
    match dir.parent() {
        Some(p) => std::fs::File::open(p)?.sync_all(),
        None => Ok(()),
    }
}

/// Opens the write-ahead log in `dir`, first moving a sled store found there into it.
pub async fn open_migrating(dir: &Path) -> io::Result<DiskBackend> {
    let new = sibling(dir, "migrating")?;
    let old = sibling(dir, "sled")?;
    if !dir.exists() && new.exists() && old.exists() {
        // Interrupted between the two renames.
        std::fs::rename(&new, dir)?;
        sync_parent(dir)?;
    }
    if is_sled_store(dir) {
        if new.exists() {
            std::fs::remove_dir_all(&new)?;
        }
        let copied = copy(dir, &new).await?;
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(dir, &old)?;
        std::fs::rename(&new, dir)?;
        sync_parent(dir)?;
        tracing::info!(
            entries = copied,
            "moved the raft store from sled to the write-ahead log"
        );
    }
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    crate::open_dir(dir).await
}

/// Copies the metadata, snapshot and entries of the sled store in `from` into a new
/// write-ahead log in `to`, durably; returns how many entries.
async fn copy(from: &Path, to: &Path) -> io::Result<u64> {
    let sled = SledBackend::open(from)?;
    let wal = crate::open_dir(to).await?;
    for key in [
        MetaKey::Vote,
        MetaKey::Committed,
        MetaKey::LastPurged,
        MetaKey::Snapshot,
    ] {
        if let Some(v) = sled.meta(key)? {
            wal.write(vec![crate::Op::PutMeta(key, v)])?;
        }
    }
    let mut copied = 0;
    if let Some((last, _)) = sled.last_entry()? {
        let mut start = 0;
        while start <= last {
            let end = start.saturating_add(CHUNK).min(last + 1);
            let batch = sled.entries(start, end)?;
            copied += batch.len() as u64;
            if !batch.is_empty() {
                wal.write(vec![crate::Op::PutEntries(batch)])?;
            }
            start = end;
        }
    }
    wal.sync().await?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Op;

    #[tokio::test]
    async fn a_sled_store_is_moved_into_the_log_with_everything_it_held() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("raft");
        {
            let sled = SledBackend::open(&dir).unwrap();
            let entries = (1..=5000).map(|i| (i, vec![i as u8; 10])).collect();
            sled.write(vec![
                Op::PutMeta(MetaKey::Vote, b"vote".to_vec()),
                Op::PutMeta(MetaKey::Snapshot, b"snap".to_vec()),
                Op::PutEntries(entries),
            ])
            .unwrap();
            sled.sync().await.unwrap();
        }
        assert!(is_sled_store(&dir));
        let wal = open_migrating(&dir).await.unwrap();
        assert!(!is_sled_store(&dir));
        assert!(!root.path().join("raft.sled").exists());
        assert!(!root.path().join("raft.migrating").exists());
        assert_eq!(wal.meta(MetaKey::Vote).unwrap(), Some(b"vote".to_vec()));
        assert_eq!(wal.meta(MetaKey::Snapshot).unwrap(), Some(b"snap".to_vec()));
        let got = wal.entries(0, u64::MAX).unwrap();
        assert_eq!(got.len(), 5000);
        assert_eq!(got[4999], (5000, vec![136u8; 10]));
        drop(wal);
        // A second open finds the log and leaves it alone.
        let wal = open_migrating(&dir).await.unwrap();
        assert_eq!(wal.entries(0, u64::MAX).unwrap().len(), 5000);
    }

    #[tokio::test]
    async fn a_migration_cut_between_the_renames_is_finished() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("raft");
        let wal = crate::open_dir(&root.path().join("raft.migrating"))
            .await
            .unwrap();
        wal.write(vec![Op::PutEntries(vec![(1, b"one".to_vec())])])
            .unwrap();
        wal.sync().await.unwrap();
        drop(wal);
        std::fs::create_dir(root.path().join("raft.sled")).unwrap();
        let wal = open_migrating(&dir).await.unwrap();
        assert_eq!(wal.entries(0, 10).unwrap(), vec![(1, b"one".to_vec())]);
        assert!(!root.path().join("raft.sled").exists());
    }
}
