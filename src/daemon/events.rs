//! The daemon's recent applied events, numbered, for `om node events` long-polls.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use raft::EventRecord;
use serde::Serialize;
use tokio::sync::Notify;

/// How many events are kept for late readers.
const KEEP: usize = 10_000;

/// An event with its local sequence number.
#[derive(Debug, Clone, Serialize)]
pub struct Numbered {
    /// Local sequence number, increasing by one per event.
    pub seq: u64,
    /// The event and the log index that produced it.
    #[serde(flatten)]
    pub record: EventRecord,
}

/// A bounded ring of recent events with a wake-up for waiting readers.
#[derive(Default)]
pub struct EventLog {
    ring: Mutex<(u64, VecDeque<Numbered>)>,
    notify: Notify,
}

impl EventLog {
    /// Appends an event.
    pub fn push(&self, record: EventRecord) {
        let mut g = self.ring.lock().unwrap();
        g.0 += 1;
        let seq = g.0;
        g.1.push_back(Numbered { seq, record });
        if g.1.len() > KEEP {
            g.1.pop_front();
        }
        drop(g);
        self.notify.notify_waiters();
    }

    /// The last sequence number given out.
    pub fn last_seq(&self) -> u64 {
        self.ring.lock().unwrap().0
    }

    /// Events after `since`, waiting up to `wait` for the first one.
    pub async fn since(&self, since: u64, wait: Duration) -> Vec<Numbered> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            {
                let g = self.ring.lock().unwrap();
                let out: Vec<Numbered> = g.1.iter().filter(|e| e.seq > since).cloned().collect();
                if !out.is_empty() {
                    return out;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Vec::new();
            }
        }
    }
}
