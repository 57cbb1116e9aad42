//! Appended log entries per second through `RaftLogStorage::append`, durability on: each
//! append returns only after the backend synced. `cargo bench -p storage`.
//!
//! Backends: sled (what the daemon used before), the write-ahead log on a real directory
//! (what it uses now: `fdatasync`), and memory (no disk: the cost of the store itself).
//! Modes: one writer appending 1 entry at a time, one writer appending batches of 64, and 16
//! writers appending 1 entry each concurrently (the flusher's group commit shares a sync
//! among them, as it does among openraft's queued appends).
//!
//! `OM_BENCH_DIR` picks where the on-disk stores go (default: the system temp dir), so the
//! figure can be taken on the disk the daemon will use.

use std::time::Duration;
use std::time::Instant;

use openraft::storage::RaftLogStorageExt;
use openraft::CommittedLeaderId;
use openraft::Entry;
use openraft::EntryPayload;
use openraft::LogId;
use raft::Command;
use raft::TypeConfig;
use storage::Backend;
use storage::LogStore;
use storage::MemBackend;
use storage::SledBackend;

const RUN_FOR: Duration = Duration::from_secs(3);

fn entry(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::SetClusterParam {
            key: "bench.key".into(),
            value: Some(format!("value-{index:08}")),
        }),
    }
}

/// One writer appending batches of `batch` (writer `w` of `writers`, interleaved indexes)
/// for `RUN_FOR`; returns how many entries it appended.
async fn writer<B: Backend>(mut log: LogStore<B>, w: u64, writers: u64, batch: u64) -> u64 {
    let mut round = 0;
    let start = Instant::now();
    while start.elapsed() < RUN_FOR {
        let first = 1 + (round * writers + w) * batch;
        let entries: Vec<_> = (first..first + batch).map(entry).collect();
        log.blocking_append(entries).await.expect("append");
        round += 1;
    }
    round * batch
}

/// Entries per second and entries appended, with `writers` concurrent writers.
async fn run<B: Backend>(backend: B, writers: u64, batch: u64) -> (f64, u64) {
    let (log, _, _) = storage::open(backend).expect("open the store");
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| tokio::spawn(writer(log.clone(), w, writers, batch)))
        .collect();
    let mut n = 0;
    for t in tasks {
        n += t.await.expect("writer");
    }
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

const MODES: [(u64, u64); 3] = [(1, 1), (1, 64), (16, 1)];

fn row(backend: &str, (writers, batch): (u64, u64), (rate, n): (f64, u64)) {
    println!("{backend:<8} {writers:>7} {batch:>6} {rate:>14.0} {n:>10}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let base = std::env::var_os("OM_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    println!(
        "{:<8} {:>7} {:>6} {:>14} {:>10}",
        "backend", "writers", "batch", "entries/s", "entries"
    );
    for mode in MODES {
        let dir = tempfile::tempdir_in(&base).expect("tempdir");
        let sled = SledBackend::open(dir.path()).expect("open sled");
        row("sled", mode, run(sled, mode.0, mode.1).await);
    }
    for mode in MODES {
        let dir = tempfile::tempdir_in(&base).expect("tempdir");
        let wal = storage::open_dir(dir.path()).await.expect("open wal");
        row("wal", mode, run(wal, mode.0, mode.1).await);
    }
    for mode in MODES {
        row("memory", mode, run(MemBackend::new(), mode.0, mode.1).await);
    }
    println!("on-disk stores in: {}", base.display());
}
