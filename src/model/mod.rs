//! The pure parts of orchestration: a service's config as parsed from its INI text
//! ([`service`]), placement, the leader's decision of where each service runs
//! ([`placement`]), and the decisions of an instance action ([`action`]).
//!
//! No I/O and nothing of the daemon: this module depends on `raft` (the state it reads and
//! the commands it returns) and on [`crate::config::ini`] (the INI text) only, so the
//! property tests, the monitor and the simulator can all drive the same decisions.

pub mod action;
#[cfg(test)]
pub(crate) mod arb;
pub mod placement;
pub mod service;
