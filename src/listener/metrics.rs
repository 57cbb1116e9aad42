//! Listener counters (atomics), readable while the listener runs.

use crate::api::status::MetricsSnapshot;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::wire::ErrorKind;

/// Counters of a listener; shared by its connections and kept across restarts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Connections currently open.
    pub open_connections: AtomicU64,
    /// Frames read (empty packets included).
    pub frames: AtomicU64,
    /// Empty packets (dequeue actions).
    pub empty_packets: AtomicU64,
    /// Hellos refused before any crypto because their (sender, address) pair is blacklisted.
    pub dropped_blacklisted: AtomicU64,
    /// Handshakes attempted (one per hello that passed parsing, the blacklist and the
    /// membership check).
    pub decrypt_attempts: AtomicU64,
    /// Sessions opened (handshakes that authenticated).
    pub sessions: AtomicU64,
    /// Requests handed to the handler.
    pub requests: AtomicU64,
    /// Responses queued for sending (handler answers and error answers).
    pub responses: AtomicU64,
    /// Pairs that got blacklisted.
    pub blacklisted: AtomicU64,
    /// Connections accepted and closed at once: the global or per-address cap was reached.
    pub refused_conn_cap: AtomicU64,
    /// Hellos refused because their source IP passed `listener.handshake_rate`.
    pub refused_handshake_rate: AtomicU64,
    /// Connections shed because the process ran out of file descriptors (spare-descriptor trick).
    pub refused_no_fd: AtomicU64,
    /// Connections closed for not completing a handshake within `handshake_timeout`.
    pub closed_handshake_timeout: AtomicU64,
    /// Connections closed because a started frame did not complete within `frame_timeout`.
    pub closed_frame_timeout: AtomicU64,
    /// Connections closed after `idle_timeout` without a frame.
    pub closed_idle_timeout: AtomicU64,
    /// Unauthenticated connections closed because the buffer budget of those was spent.
    pub closed_unauth_budget: AtomicU64,
    rejected: [AtomicU64; ErrorKind::COUNT],
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Metrics {
    /// Adds one to a counter.
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a rejected frame.
    pub fn reject(&self, kind: ErrorKind) {
        self.rejected[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Frames rejected with this kind.
    pub fn rejected(&self, kind: ErrorKind) -> u64 {
        get(&self.rejected[kind.index()])
    }

    /// Frames rejected, all kinds together.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(get).sum()
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            connections: get(&self.connections),
            open_connections: get(&self.open_connections),
            frames: get(&self.frames),
            empty_packets: get(&self.empty_packets),
            dropped_blacklisted: get(&self.dropped_blacklisted),
            decrypt_attempts: get(&self.decrypt_attempts),
            sessions: get(&self.sessions),
            requests: get(&self.requests),
            responses: get(&self.responses),
            blacklisted: get(&self.blacklisted),
            refused_conn_cap: get(&self.refused_conn_cap),
            refused_handshake_rate: get(&self.refused_handshake_rate),
            refused_no_fd: get(&self.refused_no_fd),
            closed_handshake_timeout: get(&self.closed_handshake_timeout),
            closed_frame_timeout: get(&self.closed_frame_timeout),
            closed_idle_timeout: get(&self.closed_idle_timeout),
            closed_unauth_budget: get(&self.closed_unauth_budget),
            rejected: ErrorKind::ALL
                .iter()
                .map(|k| (k.name().to_string(), self.rejected(*k)))
                .filter(|(_, n)| *n != 0)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_kind() {
        let m = Metrics::default();
        m.reject(ErrorKind::Auth);
        m.reject(ErrorKind::Auth);
        m.reject(ErrorKind::BadPayload);
        Metrics::incr(&m.frames);
        assert_eq!(m.rejected(ErrorKind::Auth), 2);
        assert_eq!(m.rejected(ErrorKind::Oversize), 0);
        assert_eq!(m.rejected_total(), 3);
        let s = m.snapshot();
        assert_eq!(s.frames, 1);
        assert_eq!(s.rejected.get("auth"), Some(&2));
        assert_eq!(s.rejected.get("oversize"), None);
    }
}
