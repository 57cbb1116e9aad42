//! `om`: a cluster agent daemon whose cluster state is a replicated state machine on Raft.
//!
//! The binary (`src/main.rs`) is thin; everything it does lives in this library so that
//! integration tests, benchmarks and the fuzzer call the same code.

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod listener;
pub mod logging;
pub mod model;
pub mod monitor;
pub mod services;
pub mod wire;
pub mod work;
