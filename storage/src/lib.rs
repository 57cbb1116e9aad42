//! Durable storage for `om`'s Raft: the log, the vote, and state machine snapshots.
//!
//! One implementation of openraft's `RaftLogStorage` ([`LogStore`]) and `RaftStateMachine`
//! ([`MachineStore`]) runs over a [`Backend`], the only thing that differs between production
//! and the simulator:
//! - [`wal::WalBackend`]: the write-ahead log ([`wal`]: segmented, checksummed, preallocated,
//!   `fdatasync` group commit), on a real directory ([`wal::FsDisk`], the daemon's
//!   [`DiskBackend`]) or on the simulator's crashable disk ([`wal::MemDisk`]);
//! - [`SledBackend`]: sled 0.34 on disk, what the daemon used before (kept for comparison
//!   in the benchmark and to read stores written by older versions);
//! - [`MemBackend`]: memory, with an explicit [`MemBackend::crash`] that drops every write not
//!   yet synced, for tests.
//!
//! What a store promises openraft: `save_vote`, `append` (before its callback) and `truncate`
//! return only after [`Backend::sync`]; `committed` and `purge` are written without a sync
//! (losing them is safe: the committed index is re-learned from the leader, and purged
//! entries are ignored below `last_purged`). `last_purged` is written before the entries are
//! removed, and never beyond the snapshot known durable: a purge past it (openraft purges a
//! follower's log while the snapshot it installs is being written) is visible at once and
//! written once the snapshot is durable ([`purge_gate`]). The state machine lives in memory ([`raft::SharedMachine`]); it becomes durable
//! as a snapshot (one synced write holding the data, `last_applied` and the membership
//! together), and on open the store restores the last snapshot and openraft re-applies the
//! committed log after it.

// openraft's StorageError is large and its size is not ours to choose.
#![allow(clippy::result_large_err)]

mod backend;
mod log_store;
mod machine_store;
mod mem;
pub mod migrate;
mod purge_gate;
mod sled_backend;
pub mod wal;

pub use backend::Backend;
pub use backend::MetaKey;
pub use backend::Op;
pub use log_store::LogStore;
pub use machine_store::seed;
pub use machine_store::MachineStore;
pub use mem::MemBackend;
pub use mem::MemFaults;
pub use sled_backend::SledBackend;

use std::path::Path;
use std::sync::Arc;

use raft::SharedMachine;

/// The daemon's backend: the write-ahead log in a directory.
pub type DiskBackend = wal::WalBackend<wal::FsDisk>;

/// Opens (or creates) the write-ahead log in `dir`, with the default segment size.
pub async fn open_dir(dir: &Path) -> std::io::Result<DiskBackend> {
    wal::WalBackend::open(wal::FsDisk::open(dir)?, wal::WalOptions::default()).await
}

/// A store opened by [`open`]: the log, the state machine, and the applied state they share.
pub type Opened<B> = (LogStore<B>, MachineStore<B>, Arc<SharedMachine>);

/// Opens the log store and state machine over `backend`, restoring the last snapshot.
pub fn open<B: Backend>(backend: B) -> Result<Opened<B>, std::io::Error> {
    let machine = SharedMachine::new();
    let sm = MachineStore::open(backend.clone(), machine.clone())?;
    let log = LogStore::new(backend, sm.purge_gate());
    Ok((log, sm, machine))
}
