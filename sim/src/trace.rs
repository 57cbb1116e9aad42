//! The trace: an ordered log of (virtual time, node, event), hashed as it is written.
//!
//! Only virtual time (tokio's paused clock, relative to the start of the run) and values
//! from ordered collections reach it, so the same seed gives the same bytes and hash.

use std::fmt;
use std::fmt::Write as _;

use crate::rng::fnv1a;

/// The running trace of one run.
#[derive(Debug)]
pub struct Trace {
    hash: u64,
    events: u64,
    /// Kept lines when the run was asked to print its trace (`--replay`, `--trace`).
    lines: Option<Vec<String>>,
    buf: String,
}

impl Trace {
    /// An empty trace; `keep` keeps every line as well as the hash (`--replay`).
    pub fn new(keep: bool) -> Trace {
        Trace {
            hash: 0xcbf2_9ce4_8422_2325,
            events: 0,
            lines: keep.then(Vec::new),
            buf: String::with_capacity(256),
        }
    }

    /// Appends one event at virtual time `us` (microseconds since the start of the run).
    pub fn event(&mut self, us: u64, who: &str, what: fmt::Arguments<'_>) {
        self.buf.clear();
        let _ = write!(
            self.buf,
            "{:>6}.{:06} {:<4} {}",
            us / 1_000_000,
            us % 1_000_000,
            who,
            what
        );
        // Chain the hashes: order matters, not just content.
        self.hash =
            fnv1a(self.buf.as_bytes()) ^ self.hash.rotate_left(5).wrapping_mul(0x0100_0000_01b3);
        self.events += 1;
        if let Some(lines) = &mut self.lines {
            lines.push(self.buf.clone());
        }
    }

    /// The chained hash of every event so far: the same seed gives the same hash.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Events written so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The kept lines (none unless made with `keep`); later calls get none.
    pub fn take_lines(&mut self) -> Vec<String> {
        self.lines.take().unwrap_or_default()
    }
}
