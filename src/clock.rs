//! The wall clock, read in one place: timestamps shown to operators and kept in records
//! (job and log times, join deadlines). Nothing in the replicated state machine reads it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Current wall clock in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
