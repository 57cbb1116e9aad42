//! Blacklist of (sender nodename, source address) pairs that sent invalid frames.
//!
//! A pair that sends [`BLACKLIST_THRESHOLD`] consecutive invalid frames is blacklisted; its
//! later frames are dropped before any crypto, until an operator clears the blacklist
//! (`om node daemon blacklist clear`) — entries do not expire by themselves, as in OpenSVC.
//! A valid frame from a pair that is not blacklisted resets its count. Keying by source
//! address too means a forger using a member's name from another address only gets its own
//! pair blacklisted, never the member's.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] pairs are tracked. When the table is full,
//! the pairs that are counting but not blacklisted are forgotten first; if every tracked
//! pair is blacklisted, new pairs are not tracked (their frames are still refused one by one,
//! only not blacklisted).

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Consecutive invalid frames that get a (sender, address) pair blacklisted.
pub const BLACKLIST_THRESHOLD: u32 = 5;
/// Most (sender, address) pairs tracked at once.
pub const MAX_TRACKED: usize = 65_536;

/// One tracked (sender, address) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PairState {
    /// Consecutive invalid frames (stops growing at the threshold).
    pub count: u32,
    /// Whether the pair is blacklisted.
    pub blacklisted: bool,
    /// Frames dropped without decryption since it was blacklisted.
    pub dropped: u64,
}

/// A row of [`Blacklist::entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlacklistEntry {
    /// Sender nodename as announced in the frame header.
    pub sender: String,
    /// Source address of the TCP connection.
    pub addr: IpAddr,
    /// Its state.
    pub state: PairState,
}

/// Thread-safe blacklist shared by all connections of a listener (and across restarts).
#[derive(Debug)]
pub struct Blacklist {
    threshold: u32,
    max_tracked: usize,
    tracked: AtomicUsize,
    pairs: Mutex<BTreeMap<String, BTreeMap<IpAddr, PairState>>>,
}

impl Default for Blacklist {
    fn default() -> Self {
        Blacklist::new(BLACKLIST_THRESHOLD, MAX_TRACKED)
    }
}

impl Blacklist {
    /// A blacklist with the given threshold (at least 1) and table size.
    pub fn new(threshold: u32, max_tracked: usize) -> Blacklist {
        Blacklist {
            threshold: threshold.max(1),
            max_tracked,
            tracked: AtomicUsize::new(0),
            pairs: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<IpAddr, PairState>>> {
        self.pairs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recount(&self, map: &BTreeMap<String, BTreeMap<IpAddr, PairState>>) {
        let n = map.values().map(|m| m.len()).sum();
        self.tracked.store(n, Ordering::Release);
    }

    /// Whether frames from this pair must be dropped; counts the drop when so.
    pub fn check_and_count_drop(&self, sender: &str, addr: IpAddr) -> bool {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut map = self.lock();
        match map.get_mut(sender).and_then(|m| m.get_mut(&addr)) {
            Some(st) if st.blacklisted => {
                st.dropped += 1;
                true
            }
            _ => false,
        }
    }

    /// Whether the pair is blacklisted (no counting).
    pub fn is_blacklisted(&self, sender: &str, addr: IpAddr) -> bool {
        self.get(sender, addr).is_some_and(|s| s.blacklisted)
    }

    /// The state of one pair, if tracked.
    pub fn get(&self, sender: &str, addr: IpAddr) -> Option<PairState> {
        self.lock().get(sender).and_then(|m| m.get(&addr)).copied()
    }

    /// Counts an invalid frame; returns true when this frame got the pair blacklisted.
    pub fn record_invalid(&self, sender: &str, addr: IpAddr) -> bool {
        let mut map = self.lock();
        let known = map.get(sender).is_some_and(|m| m.contains_key(&addr));
        if !known && self.tracked.load(Ordering::Acquire) >= self.max_tracked {
            for m in map.values_mut() {
                m.retain(|_, st| st.blacklisted);
            }
            map.retain(|_, m| !m.is_empty());
            self.recount(&map);
            if self.tracked.load(Ordering::Acquire) >= self.max_tracked {
                return false;
            }
        }
        let st = map
            .entry(sender.to_owned())
            .or_default()
            .entry(addr)
            .or_default();
        if st.blacklisted {
            return false;
        }
        st.count = (st.count + 1).min(self.threshold);
        st.blacklisted = st.count >= self.threshold;
        let newly = st.blacklisted;
        if !known {
            self.tracked.fetch_add(1, Ordering::AcqRel);
        }
        newly
    }

    /// Resets the count of a pair after a valid frame (a blacklisted pair stays blacklisted).
    pub fn record_valid(&self, sender: &str, addr: IpAddr) {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut map = self.lock();
        let Some(m) = map.get_mut(sender) else {
            return;
        };
        if m.get(&addr).is_some_and(|st| !st.blacklisted) {
            m.remove(&addr);
            if m.is_empty() {
                map.remove(sender);
            }
            self.tracked.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Empties the blacklist (`om node daemon blacklist clear`).
    pub fn clear(&self) {
        let mut map = self.lock();
        map.clear();
        self.tracked.store(0, Ordering::Release);
    }

    /// Number of blacklisted pairs.
    pub fn blacklisted_count(&self) -> usize {
        self.lock()
            .values()
            .flat_map(|m| m.values())
            .filter(|s| s.blacklisted)
            .count()
    }

    /// All tracked pairs, ordered by sender then address.
    pub fn entries(&self) -> Vec<BlacklistEntry> {
        self.lock()
            .iter()
            .flat_map(|(sender, m)| {
                m.iter().map(move |(addr, st)| BlacklistEntry {
                    sender: sender.clone(),
                    addr: *addr,
                    state: *st,
                })
            })
            .collect()
    }

    /// Data of `blacklist_status`: per sender nodename, its highest count, whether any of
    /// its addresses is blacklisted, and the per-address detail.
    ///
    /// ```text
    /// {"node2": {"count": 5, "blacklisted": true,
    ///            "addrs": {"10.0.0.2": {"count": 5, "blacklisted": true, "dropped": 12}}}}
    /// ```
    pub fn status(&self) -> Value {
        let map = self.lock();
        let mut out = Map::new();
        for (sender, addrs) in map.iter() {
            let mut a = Map::new();
            let mut count = 0;
            let mut any = false;
            for (addr, st) in addrs {
                count = count.max(st.count);
                any |= st.blacklisted;
                a.insert(
                    addr.to_string(),
                    json!({"count": st.count, "blacklisted": st.blacklisted, "dropped": st.dropped}),
                );
            }
            out.insert(
                sender.clone(),
                json!({"count": count, "blacklisted": any, "addrs": a}),
            );
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn five_consecutive_invalid_blacklist_a_pair() {
        let bl = Blacklist::default();
        for i in 1..=4 {
            assert!(!bl.record_invalid("n1", A));
            assert_eq!(bl.get("n1", A).unwrap().count, i);
        }
        assert!(!bl.check_and_count_drop("n1", A));
        assert!(bl.record_invalid("n1", A));
        assert!(bl.check_and_count_drop("n1", A));
        assert!(bl.check_and_count_drop("n1", A));
        assert_eq!(bl.get("n1", A).unwrap().dropped, 2);
        assert!(!bl.is_blacklisted("n1", B));
        assert_eq!(bl.blacklisted_count(), 1);
        let st = bl.status();
        assert_eq!(st["n1"]["count"], 5);
        assert_eq!(st["n1"]["blacklisted"], true);
        assert_eq!(st["n1"]["addrs"]["127.0.0.1"]["dropped"], 2);
        bl.clear();
        assert!(!bl.check_and_count_drop("n1", A));
        assert_eq!(bl.status(), json!({}));
    }

    #[test]
    fn a_valid_frame_resets_the_count() {
        let bl = Blacklist::default();
        for _ in 0..4 {
            bl.record_invalid("n1", A);
        }
        bl.record_valid("n1", A);
        assert_eq!(bl.get("n1", A), None);
        for _ in 0..4 {
            assert!(!bl.record_invalid("n1", A));
        }
        assert!(!bl.is_blacklisted("n1", A));
        assert_eq!(bl.status()["n1"]["count"], 4);
    }

    #[test]
    fn pairs_are_independent() {
        let bl = Blacklist::default();
        for _ in 0..10 {
            bl.record_invalid("n1", B);
        }
        assert!(bl.is_blacklisted("n1", B));
        assert!(!bl.is_blacklisted("n1", A));
        assert!(!bl.check_and_count_drop("n1", A));
    }

    #[test]
    fn table_is_bounded_and_keeps_blacklisted_pairs() {
        let bl = Blacklist::new(2, 4);
        bl.record_invalid("bad", A);
        bl.record_invalid("bad", A);
        for i in 0..10 {
            bl.record_invalid(&format!("n{i}"), A);
        }
        assert!(bl.entries().len() <= 4);
        assert!(bl.is_blacklisted("bad", A));
        let bl = Blacklist::new(1, 2);
        bl.record_invalid("x", A);
        bl.record_invalid("y", A);
        assert!(
            !bl.record_invalid("z", A),
            "table full of blacklisted pairs"
        );
        assert_eq!(bl.entries().len(), 2);
    }
}
