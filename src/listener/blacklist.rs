//! Blacklist of (sender nodename, source address) pairs that failed handshakes.
//!
//! A pair that fails [`BLACKLIST_THRESHOLD`] consecutive handshakes is blacklisted; its
//! later hellos are refused before any crypto, until the entry expires
//! (`listener.blacklist_ttl`, default 10 minutes: a misconfigured peer or a secret rotated
//! node by node must not cut a member off for good) or an operator clears the blacklist
//! (`om node daemon blacklist clear`). A session whose first record opens resets the pair's
//! count.
//!
//! What a forger cannot do with it:
//! - get a member dropped from another address: the key includes the source address;
//! - cut a member's established session: the blacklist is checked on hellos only;
//! - count toward it with captured traffic: a replayed hello authenticates (and proves
//!   nothing), and records that do not open close their session without being counted;
//!   only hellos that fail for lack of the secret count;
//! - fill the table and slow every frame down: each source address tracks at most
//!   [`NAMES_PER_ADDR`] names of non-members individually (past that, they share one
//!   entry for the address, so made-up names cost one slot), the table holds at most
//!   [`MAX_TRACKED`] pairs, and every operation is a map lookup: a full table is swept of
//!   expired entries at most once a second, and otherwise new pairs are not tracked.

use crate::api::options::AddrDetail;
use crate::api::options::SenderDetail;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Consecutive invalid frames that get a (sender, address) pair blacklisted.
pub const BLACKLIST_THRESHOLD: u32 = 5;
/// Most (sender, address) pairs tracked at once.
pub const MAX_TRACKED: usize = 65_536;
/// Non-member names tracked one by one per source address; the rest share one entry.
pub const NAMES_PER_ADDR: usize = 16;
/// Default of `listener.blacklist_ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// The shared entry of an address's untracked non-member names.
const ANY_NAME: &str = "*";
/// How often a full table is swept of expired entries, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One tracked (sender, address) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairState {
    /// Consecutive invalid frames (stops growing at the threshold).
    pub count: u32,
    /// Whether the pair is blacklisted.
    pub blacklisted: bool,
    /// Frames dropped without decryption since it was blacklisted.
    pub dropped: u64,
    /// The last invalid frame (or the blacklisting): the entry expires a TTL after it.
    last: Instant,
}

/// A row of [`Blacklist::entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlacklistEntry {
    /// Sender nodename as announced in the frame header (`*`: an address's other names).
    pub sender: String,
    /// Source address of the TCP connection.
    pub addr: IpAddr,
    /// Its state.
    pub state: PairState,
}

#[derive(Debug)]
struct Table {
    pairs: BTreeMap<(String, IpAddr), PairState>,
    names_per_addr: BTreeMap<IpAddr, usize>,
    last_sweep: Option<Instant>,
}

/// Thread-safe blacklist shared by all connections of a listener (and across restarts).
#[derive(Debug)]
pub struct Blacklist {
    threshold: u32,
    max_tracked: usize,
    ttl: Mutex<Duration>,
    tracked: AtomicUsize,
    table: Mutex<Table>,
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
            ttl: Mutex::new(DEFAULT_TTL),
            tracked: AtomicUsize::new(0),
            table: Mutex::new(Table {
                pairs: BTreeMap::new(),
                names_per_addr: BTreeMap::new(),
                last_sweep: None,
            }),
        }
    }

    /// Sets how long an entry lives after its last invalid frame (`listener.blacklist_ttl`).
    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock().unwrap_or_else(|p| p.into_inner()) = ttl;
    }

    fn ttl(&self) -> Duration {
        *self.ttl.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key a frame from `sender` at `addr` counts under: its own pair when tracked (or
    /// when there is room for it, or when it is a member), else the address's shared entry.
    fn key(&self, t: &Table, sender: &str, addr: IpAddr, member: bool) -> (String, IpAddr) {
        let own = (sender.to_owned(), addr);
        if member || t.pairs.contains_key(&own) {
            return own;
        }
        if t.names_per_addr.get(&addr).copied().unwrap_or(0) < NAMES_PER_ADDR {
            own
        } else {
            (ANY_NAME.to_owned(), addr)
        }
    }

    fn remove(&self, t: &mut Table, key: &(String, IpAddr)) {
        if t.pairs.remove(key).is_some() {
            self.tracked.fetch_sub(1, Ordering::AcqRel);
            if key.0 != ANY_NAME {
                if let Some(n) = t.names_per_addr.get_mut(&key.1) {
                    *n -= 1;
                    if *n == 0 {
                        t.names_per_addr.remove(&key.1);
                    }
                }
            }
        }
    }

    /// The live state of `key`: an expired entry is removed and reads as absent.
    fn live(&self, t: &mut Table, key: &(String, IpAddr), now: Instant) -> Option<PairState> {
        let st = *t.pairs.get(key)?;
        if now.duration_since(st.last) > self.ttl() {
            self.remove(t, key);
            return None;
        }
        Some(st)
    }

    /// Whether frames from this pair must be dropped; counts the drop when so. `member`:
    /// whether `sender` is a cluster member (members never share an address's entry).
    pub fn check_and_count_drop(&self, sender: &str, addr: IpAddr, member: bool) -> bool {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut t = self.lock();
        let key = self.key(&t, sender, addr, member);
        match self.live(&mut t, &key, Instant::now()) {
            Some(st) if st.blacklisted => {
                t.pairs.get_mut(&key).expect("live").dropped += 1;
                true
            }
            _ => false,
        }
    }

    /// Whether the pair is blacklisted (no counting).
    pub fn is_blacklisted(&self, sender: &str, addr: IpAddr) -> bool {
        self.get(sender, addr).is_some_and(|s| s.blacklisted)
    }

    /// The state of one pair, if tracked and not expired.
    pub fn get(&self, sender: &str, addr: IpAddr) -> Option<PairState> {
        let mut t = self.lock();
        self.live(&mut t, &(sender.to_owned(), addr), Instant::now())
    }

    /// Removes expired entries when the table is full, at most once per [`SWEEP_EVERY`].
    fn sweep_if_full(&self, t: &mut Table, now: Instant) {
        if self.tracked.load(Ordering::Acquire) < self.max_tracked {
            return;
        }
        if t.last_sweep
            .is_some_and(|at| now.duration_since(at) < SWEEP_EVERY)
        {
            return;
        }
        t.last_sweep = Some(now);
        let ttl = self.ttl();
        let expired: Vec<(String, IpAddr)> = t
            .pairs
            .iter()
            .filter(|(_, st)| now.duration_since(st.last) > ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            self.remove(t, k);
        }
    }

    /// Counts an invalid frame; returns true when this frame got the pair blacklisted.
    pub fn record_invalid(&self, sender: &str, addr: IpAddr, member: bool) -> bool {
        let now = Instant::now();
        let mut t = self.lock();
        let key = self.key(&t, sender, addr, member);
        let known = self.live(&mut t, &key, now).is_some();
        if !known {
            self.sweep_if_full(&mut t, now);
            if self.tracked.load(Ordering::Acquire) >= self.max_tracked {
                return false;
            }
            if key.0 != ANY_NAME {
                *t.names_per_addr.entry(addr).or_default() += 1;
            }
            self.tracked.fetch_add(1, Ordering::AcqRel);
        }
        let threshold = self.threshold;
        let st = t.pairs.entry(key).or_insert(PairState {
            count: 0,
            blacklisted: false,
            dropped: 0,
            last: now,
        });
        if st.blacklisted {
            return false;
        }
        st.count = (st.count + 1).min(threshold);
        st.blacklisted = st.count >= threshold;
        st.last = now;
        st.blacklisted
    }

    /// Resets the count of a pair after a valid frame (a blacklisted pair stays blacklisted).
    pub fn record_valid(&self, sender: &str, addr: IpAddr) {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut t = self.lock();
        let key = (sender.to_owned(), addr);
        if t.pairs.get(&key).is_some_and(|st| !st.blacklisted) {
            self.remove(&mut t, &key);
        }
    }

    /// Forgets every pair of `sender` (it became a cluster member).
    pub fn forget_sender(&self, sender: &str) {
        let mut t = self.lock();
        let keys: Vec<(String, IpAddr)> = t
            .pairs
            .keys()
            .filter(|(s, _)| s == sender)
            .cloned()
            .collect();
        for k in &keys {
            self.remove(&mut t, k);
        }
    }

    /// Empties the blacklist (`om node daemon blacklist clear`).
    pub fn clear(&self) {
        let mut t = self.lock();
        t.pairs.clear();
        t.names_per_addr.clear();
        self.tracked.store(0, Ordering::Release);
    }

    /// Number of blacklisted pairs (expired ones included until they are next looked at).
    pub fn blacklisted_count(&self) -> usize {
        self.entries()
            .iter()
            .filter(|e| e.state.blacklisted)
            .count()
    }

    /// All live pairs, ordered by sender then address.
    pub fn entries(&self) -> Vec<BlacklistEntry> {
        let ttl = self.ttl();
        let now = Instant::now();
        self.lock()
            .pairs
            .iter()
            .filter(|(_, st)| now.duration_since(st.last) <= ttl)
            .map(|((sender, addr), st)| BlacklistEntry {
                sender: sender.clone(),
                addr: *addr,
                state: *st,
            })
            .collect()
    }

    /// Data of `blacklist_status` (the seed's shape): each sender nodename with its
    /// highest count of consecutive invalid frames, e.g. `{"node1": 1, "node2": 5}`.
    pub fn summary(&self) -> BTreeMap<String, u32> {
        let mut out: BTreeMap<String, u32> = BTreeMap::new();
        for e in self.entries() {
            let c = out.entry(e.sender).or_default();
            *c = (*c).max(e.state.count);
        }
        out
    }

    /// Data of `blacklist_status` with `detail`: per sender nodename, its highest count,
    /// whether any of its addresses is blacklisted, when that expires, and the per-address
    /// detail.
    ///
    /// ```text
    /// {"node2": {"count": 5, "blacklisted": true, "expires_in_s": 598,
    ///            "addrs": {"10.0.0.2": {"count": 5, "blacklisted": true, "dropped": 12}}}}
    /// ```
    pub fn status(&self) -> BTreeMap<String, SenderDetail> {
        let ttl = self.ttl();
        let now = Instant::now();
        let mut out: BTreeMap<String, SenderDetail> = BTreeMap::new();
        for e in self.entries() {
            let row = out.entry(e.sender.clone()).or_default();
            let st = e.state;
            row.count = row.count.max(st.count);
            if st.blacklisted {
                row.blacklisted = true;
                let left = ttl.saturating_sub(now.duration_since(st.last)).as_secs();
                row.expires_in_s = Some(row.expires_in_s.map_or(left, |s| s.min(left)));
            }
            let addr = AddrDetail {
                count: st.count,
                blacklisted: st.blacklisted,
                dropped: st.dropped,
            };
            row.addrs.insert(e.addr.to_string(), addr);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn five_consecutive_invalid_blacklist_a_pair() {
        let bl = Blacklist::default();
        for i in 1..=4 {
            assert!(!bl.record_invalid("n1", A, true));
            assert_eq!(bl.get("n1", A).unwrap().count, i);
        }
        assert!(!bl.check_and_count_drop("n1", A, true));
        assert!(bl.record_invalid("n1", A, true));
        assert!(bl.check_and_count_drop("n1", A, true));
        assert!(bl.check_and_count_drop("n1", A, true));
        assert_eq!(bl.get("n1", A).unwrap().dropped, 2);
        assert!(!bl.is_blacklisted("n1", B));
        assert_eq!(bl.blacklisted_count(), 1);
        let st = serde_json::to_value(bl.status()).unwrap();
        assert_eq!(st["n1"]["count"], 5);
        assert_eq!(st["n1"]["blacklisted"], true);
        assert_eq!(st["n1"]["addrs"]["127.0.0.1"]["dropped"], 2);
        bl.clear();
        assert!(!bl.check_and_count_drop("n1", A, true));
        assert_eq!(serde_json::to_value(bl.status()).unwrap(), json!({}));
    }

    #[test]
    fn a_valid_frame_resets_the_count() {
        let bl = Blacklist::default();
        for _ in 0..4 {
            bl.record_invalid("n1", A, true);
        }
        bl.record_valid("n1", A);
        assert_eq!(bl.get("n1", A), None);
        for _ in 0..4 {
            assert!(!bl.record_invalid("n1", A, true));
        }
        assert!(!bl.is_blacklisted("n1", A));
        assert_eq!(serde_json::to_value(bl.status()).unwrap()["n1"]["count"], 4);
    }

    #[test]
    fn pairs_are_independent() {
        let bl = Blacklist::default();
        for _ in 0..10 {
            bl.record_invalid("n1", B, true);
        }
        assert!(bl.is_blacklisted("n1", B));
        assert!(!bl.is_blacklisted("n1", A));
        assert!(!bl.check_and_count_drop("n1", A, true));
    }

    #[test]
    fn table_is_bounded_and_keeps_blacklisted_pairs() {
        let bl = Blacklist::new(2, 4);
        bl.record_invalid("bad", A, false);
        bl.record_invalid("bad", A, false);
        for i in 0..10 {
            bl.record_invalid(&format!("n{i}"), A, true);
        }
        assert!(bl.entries().len() <= 4);
        assert!(bl.is_blacklisted("bad", A));
        let bl = Blacklist::new(1, 2);
        bl.record_invalid("x", A, true);
        bl.record_invalid("y", A, true);
        assert!(
            !bl.record_invalid("z", A, true),
            "table full of blacklisted pairs"
        );
        assert_eq!(bl.entries().len(), 2);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let bl = Blacklist::new(2, 100);
        bl.set_ttl(Duration::from_millis(50));
        bl.record_invalid("n1", A, true);
        bl.record_invalid("n1", A, true);
        assert!(bl.check_and_count_drop("n1", A, true));
        assert_eq!(
            serde_json::to_value(bl.summary()).unwrap(),
            json!({"n1": 2})
        );
        std::thread::sleep(Duration::from_millis(80));
        assert!(!bl.check_and_count_drop("n1", A, true), "expired");
        assert_eq!(serde_json::to_value(bl.summary()).unwrap(), json!({}));
        assert!(!bl.record_invalid("n1", A, true), "counting again from 1");
    }

    #[test]
    fn made_up_names_share_one_entry_per_address_but_members_do_not() {
        let bl = Blacklist::new(5, 1000);
        for i in 0..10_000 {
            bl.record_invalid(&format!("fake{i}"), A, false);
        }
        // 16 names of their own, then one shared entry for the address.
        assert_eq!(bl.entries().len(), NAMES_PER_ADDR + 1);
        assert!(bl.is_blacklisted(ANY_NAME, A));
        // Another made-up name from that address is dropped through the shared entry...
        assert!(bl.check_and_count_drop("fake-new", A, false));
        // ...but a member from the same address is not.
        assert!(!bl.check_and_count_drop("n1", A, true));
        bl.record_invalid("n1", A, true);
        assert_eq!(bl.get("n1", A).map(|s| s.count), Some(1));
    }
}
