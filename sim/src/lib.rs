//! The deterministic simulator of `om`'s replicated state machine.
//!
//! It runs N nodes of the `raft` crate on the production stores (`storage::LogStore` and
//! `storage::MachineStore` over the write-ahead log on the crashable `storage::wal::MemDisk`)
//! in one thread, on a tokio
//! runtime with paused time and seeded randomness, under a seeded schedule of network and
//! disk faults, crashes and membership changes, with clients whose history is checked for
//! linearizability. See README.md.

#[cfg(not(tokio_unstable))]
compile_error!(
    "sim needs `--cfg tokio_unstable` (tokio's rng_seed): run cargo from sim/ (sim/.cargo/config.toml \
     sets it), or pass `--config sim/.cargo/config.toml` with `--manifest-path sim/Cargo.toml`"
);

pub mod bugs;
pub mod check;
pub mod config;
pub mod faults;
pub mod net;
pub mod rng;
pub mod run;
pub mod store;
pub mod trace;
pub mod workload;
pub mod world;

pub use bugs::Bug;
pub use config::Options;
pub use run::run_seed;
pub use run::SeedResult;
