//! Appended log entries per second through `RaftLogStorage::append`, durability on: each
//! append returns only after the backend synced. `cargo bench -p storage`.
//!
//! `OM_BENCH_DIR` picks where the sled database goes (default: the system temp dir), so the
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

/// Appends batches of `batch` entries for `RUN_FOR`; returns entries per second.
async fn run<B: Backend>(backend: B, batch: u64) -> (f64, u64) {
    let mut log = LogStore::new(backend);
    let mut next = 1;
    let start = Instant::now();
    while start.elapsed() < RUN_FOR {
        let entries: Vec<_> = (next..next + batch).map(entry).collect();
        log.blocking_append(entries).await.expect("append");
        next += batch;
    }
    let n = next - 1;
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let base = std::env::var_os("OM_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    println!(
        "{:<8} {:>6} {:>14} {:>10}",
        "backend", "batch", "entries/s", "entries"
    );
    for batch in [1, 64] {
        let dir = tempfile::tempdir_in(&base).expect("tempdir");
        let (rate, n) = run(SledBackend::open(dir.path()).expect("open sled"), batch).await;
        println!("{:<8} {:>6} {:>14.0} {:>10}", "sled", batch, rate, n);
    }
    for batch in [1, 64] {
        let (rate, n) = run(MemBackend::new(), batch).await;
        println!("{:<8} {:>6} {:>14.0} {:>10}", "memory", batch, rate, n);
    }
    println!("sled dir: {}", base.display());
}
