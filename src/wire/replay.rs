//! Replay protection: a timestamp window plus the set of message ids seen inside it.
//!
//! A message is accepted when `now - window <= ts_ms <= now + window` and its
//! `(sender, msg_id)` was not accepted before while still inside the window. Ids are
//! forgotten once their timestamp leaves the window (they would be refused as stale anyway).
//!
//! Ids are kept in a hash set and, for expiry, in time buckets (`window / 60`, at most 1 s
//! wide) ordered by timestamp: accepting a message costs one hash insert and one push, and
//! ids leave a whole bucket at a time once the bucket is entirely older than the window.
//!
//! Memory is bounded by `capacity` ids. When a burst fills it, the oldest bucket is evicted
//! and a floor is raised to the end of that bucket: messages older than the floor are then
//! refused as stale, which shrinks the effective window under heavy load but never lets a
//! replay through. The caller passes `now_ms`, so tests are deterministic; the guard's
//! clock never goes back (a wall clock stepping back is treated as standing still).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::error::WireError;

/// Default replay window: 60 s.
pub const DEFAULT_REPLAY_WINDOW_MS: u64 = 60_000;
/// Default maximum number of remembered message ids (about 40 MB when full).
pub const DEFAULT_REPLAY_CAPACITY: usize = 1_000_000;

/// Remembers recent `(sender, msg_id)` pairs to refuse replays and stale messages.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    floor_ms: u64,
    last_now_ms: u64,
    bucket_ms: u64,
    seen: HashSet<(u32, u64)>,
    buckets: BTreeMap<u64, Vec<(u32, u64)>>,
    names: Interner,
}

/// Width of the expiry buckets for a window: about 60 buckets per window, 1 ms to 1 s.
fn bucket_ms(window_ms: u64) -> u64 {
    (window_ms / 60).clamp(1, 1000)
}

/// Sender names mapped to small ids, recycled when no remembered message uses them.
#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Option<Arc<str>>>,
    live: Vec<u64>,
    free: Vec<u32>,
}

impl Interner {
    fn acquire(&mut self, name: &str) -> u32 {
        let id = match self.ids.get(name) {
            Some(&id) => id,
            None => {
                let name: Arc<str> = Arc::from(name);
                let id = match self.free.pop() {
                    Some(id) => {
                        self.names[id as usize] = Some(name.clone());
                        id
                    }
                    None => {
                        self.names.push(Some(name.clone()));
                        self.live.push(0);
                        (self.names.len() - 1) as u32
                    }
                };
                self.ids.insert(name, id);
                id
            }
        };
        self.live[id as usize] += 1;
        id
    }

    fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    fn release(&mut self, id: u32) {
        let live = &mut self.live[id as usize];
        *live -= 1;
        if *live == 0 {
            if let Some(name) = self.names[id as usize].take() {
                self.ids.remove(&name);
            }
            self.free.push(id);
        }
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        ReplayGuard::new(DEFAULT_REPLAY_WINDOW_MS)
    }
}

impl ReplayGuard {
    /// A guard with the given window and the default capacity.
    pub fn new(window_ms: u64) -> ReplayGuard {
        ReplayGuard::with_capacity(window_ms, DEFAULT_REPLAY_CAPACITY)
    }

    /// A guard with the given window, remembering at most `capacity` ids (at least 1).
    pub fn with_capacity(window_ms: u64, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms,
            capacity: capacity.max(1),
            floor_ms: 0,
            last_now_ms: 0,
            bucket_ms: bucket_ms(window_ms),
            seen: HashSet::new(),
            buckets: BTreeMap::new(),
            names: Interner::default(),
        }
    }

    /// The window in milliseconds.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Changes the window (listener reconfiguration); remembered ids are kept.
    pub fn set_window_ms(&mut self, window_ms: u64) {
        if window_ms == self.window_ms {
            return;
        }
        self.window_ms = window_ms;
        let width = bucket_ms(window_ms);
        if width != self.bucket_ms {
            // Re-bucket what is remembered (rare: only on reconfiguration).
            self.bucket_ms = width;
            let old = std::mem::take(&mut self.buckets);
            for (start, ids) in old {
                let b = start / width * width;
                self.buckets.entry(b).or_default().extend(ids);
            }
        }
    }

    /// Number of remembered ids.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Oldest timestamp currently acceptable because of evictions (0 when none happened).
    pub fn floor_ms(&self) -> u64 {
        self.floor_ms
    }

    /// Whether `(sender, msg_id)` is currently remembered.
    pub fn contains(&self, sender: &str, msg_id: u64) -> bool {
        self.names
            .get(sender)
            .is_some_and(|id| self.seen.contains(&(id, msg_id)))
    }

    /// Accepts a message and remembers it, or refuses it as [`WireError::Stale`] or
    /// [`WireError::Replayed`].
    ///
    /// `now_ms` never goes back for the guard: if the clock steps back, the latest value
    /// seen is used, so ids forgotten under the later clock cannot become acceptable again.
    pub fn check(
        &mut self,
        sender: &str,
        ts_ms: u64,
        msg_id: u64,
        now_ms: u64,
    ) -> Result<(), WireError> {
        self.expire(now_ms);
        let now_ms = self.last_now_ms;
        let low = now_ms.saturating_sub(self.window_ms).max(self.floor_ms);
        let high = now_ms.saturating_add(self.window_ms);
        if ts_ms < low || ts_ms > high {
            return Err(WireError::Stale {
                ts_ms,
                now_ms,
                window_ms: self.window_ms,
            });
        }
        let id = self.names.acquire(sender);
        if !self.seen.insert((id, msg_id)) {
            self.names.release(id);
            return Err(WireError::Replayed {
                sender: sender.to_owned(),
                msg_id,
            });
        }
        let start = ts_ms / self.bucket_ms * self.bucket_ms;
        self.buckets.entry(start).or_default().push((id, msg_id));
        while self.seen.len() > self.capacity {
            let Some((start, ids)) = self.buckets.pop_first() else {
                break;
            };
            self.forget(ids);
            self.floor_ms = self.floor_ms.max(start.saturating_add(self.bucket_ms));
        }
        Ok(())
    }

    /// Forgets ids whose timestamp left the window (whole buckets at a time).
    pub fn expire(&mut self, now_ms: u64) {
        self.last_now_ms = self.last_now_ms.max(now_ms);
        let low = self.last_now_ms.saturating_sub(self.window_ms);
        while let Some(entry) = self.buckets.first_entry() {
            // Every timestamp in the bucket is below start + bucket_ms.
            if entry.key().saturating_add(self.bucket_ms) > low {
                break;
            }
            let ids = entry.remove();
            self.forget(ids);
        }
    }

    fn forget(&mut self, ids: Vec<(u32, u64)>) {
        for key in ids {
            if self.seen.remove(&key) {
                self.names.release(key.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn accepts_fresh_refuses_replay_and_stale() {
        let mut g = ReplayGuard::new(60_000);
        g.check("n1", NOW, 1, NOW).unwrap();
        assert!(matches!(
            g.check("n1", NOW, 1, NOW),
            Err(WireError::Replayed { msg_id: 1, .. })
        ));
        // same id from another sender is fine
        g.check("n2", NOW, 1, NOW).unwrap();
        // edges of the window are inclusive
        g.check("n1", NOW - 60_000, 2, NOW).unwrap();
        g.check("n1", NOW + 60_000, 3, NOW).unwrap();
        assert!(matches!(
            g.check("n1", NOW - 60_001, 4, NOW),
            Err(WireError::Stale { .. })
        ));
        assert!(matches!(
            g.check("n1", NOW + 60_001, 5, NOW),
            Err(WireError::Stale { .. })
        ));
        assert!(!g.contains("n1", 4));
    }

    #[test]
    fn ids_expire_with_the_window_and_names_are_recycled() {
        let mut g = ReplayGuard::new(1_000);
        for i in 0..100 {
            g.check(&format!("n{i}"), NOW, i, NOW).unwrap();
        }
        assert_eq!(g.len(), 100);
        // Buckets are 16 ms wide for a 1 s window: ids go when their bucket is past.
        g.expire(NOW + 1_015);
        assert_eq!(g.len(), 100);
        g.expire(NOW + 1_016);
        assert!(g.is_empty());
        assert!(g.names.ids.is_empty());
        g.check("x", NOW + 1_016, 0, NOW + 1_016).unwrap();
        assert_eq!(g.names.names.len(), 100, "ids are reused, not grown");
        // an expired id is refused as stale, never accepted again
        assert!(matches!(
            g.check("n0", NOW, 0, NOW + 1_016),
            Err(WireError::Stale { .. })
        ));
    }

    #[test]
    fn capacity_raises_the_floor_and_never_admits_a_replay() {
        // 1 s buckets for a 60 s window; one message per bucket.
        let mut g = ReplayGuard::with_capacity(60_000, 10);
        for i in 0..20u64 {
            g.check("n", NOW + i * 1000, i, NOW + 20_000).unwrap();
        }
        assert_eq!(g.len(), 10);
        assert_eq!(g.floor_ms(), NOW + 10_000);
        for i in 0..20u64 {
            let r = g.check("n", NOW + i * 1000, i, NOW + 20_000);
            if i < 10 {
                assert!(matches!(r, Err(WireError::Stale { .. })), "{i}: {r:?}");
            } else {
                assert!(matches!(r, Err(WireError::Replayed { .. })), "{i}: {r:?}");
            }
        }
        // fresher messages are still accepted
        g.check("n", NOW + 30_000, 99, NOW + 30_000).unwrap();
    }

    #[test]
    fn ids_are_kept_while_their_timestamp_is_in_the_window() {
        // A message from the future is remembered until it leaves the window.
        let mut g = ReplayGuard::new(60_000);
        g.check("n", NOW + 60_000, 1, NOW).unwrap();
        g.check("n", NOW, 2, NOW).unwrap();
        assert!(matches!(
            g.check("n", NOW, 2, NOW + 60_000),
            Err(WireError::Replayed { .. })
        ));
        for now in [NOW + 60_000, NOW + 119_000, NOW + 120_000] {
            assert!(
                matches!(
                    g.check("n", NOW + 60_000, 1, now),
                    Err(WireError::Replayed { .. })
                ),
                "{now}"
            );
        }
        g.expire(NOW + 121_000);
        assert!(g.is_empty());
        // The clock stepping back does not bring forgotten ids back into the window.
        assert!(matches!(
            g.check("n", NOW + 60_000, 1, NOW + 100_000),
            Err(WireError::Stale { .. })
        ));
    }

    #[test]
    fn changing_the_window_keeps_what_is_remembered() {
        let mut g = ReplayGuard::new(60_000);
        g.check("n", NOW, 1, NOW).unwrap();
        g.set_window_ms(6_000);
        assert!(matches!(
            g.check("n", NOW, 1, NOW + 10),
            Err(WireError::Replayed { .. })
        ));
        g.expire(NOW + 5_000);
        assert!(g.contains("n", 1));
        g.expire(NOW + 6_200);
        assert!(!g.contains("n", 1));
    }
}
