//! What the listener grants to connections it has not authenticated yet: connection slots
//! (a global cap and a cap per source IP), the memory their frame buffers may hold (a global
//! budget), handshakes per second per source IP, and a rate limit on the warnings refusals
//! log.
//!
//! A [`Gate`] and a [`Budget`] belong to one run of the accept loop: every connection is
//! closed when the loop ends, so nothing outlives it.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connection slots: at most `max` connections in all and `per_addr` per source IP.
#[derive(Debug)]
pub(crate) struct Gate {
    max: usize,
    per_addr: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    // Only looked up and updated, never iterated into output.
    per_ip: BTreeMap<IpAddr, usize>,
}

/// Why [`Gate::admit`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The global cap is reached.
    Global,
    /// The source IP holds `per_addr` connections already.
    PerAddr,
}

impl Gate {
    /// A gate admitting `max` connections in all (at least 1) and `per_addr` per IP.
    pub(crate) fn new(max: usize, per_addr: usize) -> Arc<Gate> {
        Arc::new(Gate {
            max: max.max(1),
            per_addr: per_addr.max(1),
            open: Mutex::new(Open::default()),
        })
    }

    /// The global cap in force.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Takes a slot for a connection from `ip`; the slot is given back when dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.max {
            return Err(Refusal::Global);
        }
        let n = open.per_ip.entry(ip).or_insert(0);
        if *n >= self.per_addr {
            return Err(Refusal::PerAddr);
        }
        *n += 1;
        open.total += 1;
        Ok(Slot {
            gate: self.clone(),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&ip);
            }
        }
    }
}

/// One admitted connection's place in its [`Gate`].
#[derive(Debug)]
pub(crate) struct Slot {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release(self.ip);
    }
}

/// Bytes that frame buffers of unauthenticated connections may hold together.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What one frame buffer holds of a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    held: usize,
    refused: bool,
}

impl Charge {
    pub(crate) fn new(budget: &Arc<Budget>) -> Charge {
        Charge {
            budget: budget.clone(),
            held: 0,
            refused: false,
        }
    }

    /// Takes `n` more bytes, or fails (and remembers it) when the budget is spent.
    pub(crate) fn grow(&mut self, n: usize) -> io::Result<()> {
        if self.budget.take(n) {
            self.held += n;
            return Ok(());
        }
        self.refused = true;
        Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            "buffer budget of unauthenticated connections spent",
        ))
    }

    /// Whether a growth was refused.
    pub(crate) fn refused(&self) -> bool {
        self.refused
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

/// Handshakes per second per source IP: a token bucket per address, `rate` tokens a
/// second up to a burst of `rate`. Each handshake costs the node a Diffie-Hellman, so a
/// flood from one address is refused before any crypto.
#[derive(Debug)]
pub(crate) struct HandshakeRate {
    rate: f64,
    // Only looked up and updated, never iterated into output.
    buckets: Mutex<BTreeMap<IpAddr, (f64, Instant)>>,
}

/// Addresses tracked at once. When the table is full, addresses whose bucket has refilled
/// (idle ones: forgetting them changes nothing) make room; if none has, a new address is
/// refused until one does, so a flood from many addresses cannot reset anyone's limit.
const MAX_RATE_ADDRS: usize = 4096;

impl HandshakeRate {
    /// `rate` handshakes a second per address (0: no limit).
    pub(crate) fn new(rate: u32) -> HandshakeRate {
        HandshakeRate {
            rate: f64::from(rate),
            buckets: Mutex::new(BTreeMap::new()),
        }
    }

    /// Takes a token for a handshake from `ip` at `now`; `false` when none is left.
    pub(crate) fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() >= MAX_RATE_ADDRS && !b.contains_key(&ip) {
            let rate = self.rate;
            b.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < rate
            });
            if b.len() >= MAX_RATE_ADDRS {
                return false;
            }
        }
        let (tokens, at) = b.entry(ip).or_insert((self.rate, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.rate);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

/// Lets one warning through per `every`, and counts the ones it holds back.
#[derive(Debug)]
pub(crate) struct WarnLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    pub(crate) fn new(every: Duration) -> WarnLimit {
        WarnLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last one)` when a warning may be logged now.
    pub(crate) fn hit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn gate_caps_per_address_and_in_all() {
        let g = Gate::new(3, 2);
        let a1 = g.admit(A).unwrap();
        let _a2 = g.admit(A).unwrap();
        assert_eq!(g.admit(A).unwrap_err(), Refusal::PerAddr);
        let _b1 = g.admit(B).unwrap();
        assert_eq!(g.admit(B).unwrap_err(), Refusal::Global);
        drop(a1);
        let _a3 = g.admit(A).unwrap();
    }

    #[test]
    fn charges_are_given_back() {
        let b = Budget::new(100);
        let mut c1 = Charge::new(&b);
        c1.grow(60).unwrap();
        let mut c2 = Charge::new(&b);
        assert!(c2.grow(50).is_err());
        assert!(c2.refused());
        c2.grow(40).unwrap();
        drop(c1);
        assert_eq!(b.used(), 40);
        drop(c2);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn handshakes_are_limited_per_address_and_refill() {
        let r = HandshakeRate::new(3);
        let t = Instant::now();
        assert!((0..3).all(|_| r.allow(A, t)));
        assert!(!r.allow(A, t));
        assert!(r.allow(B, t), "another address has its own bucket");
        assert!(
            r.allow(A, t + Duration::from_millis(340)),
            "a third of a second: one token"
        );
        assert!(!r.allow(A, t + Duration::from_millis(340)));
        assert!((0..100).all(|_| HandshakeRate::new(0).allow(A, t)));
    }

    #[test]
    fn a_full_table_forgets_idle_addresses_only() {
        let r = HandshakeRate::new(1);
        let t = Instant::now();
        let ip = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..MAX_RATE_ADDRS as u32 {
            assert!(r.allow(ip(i), t));
        }
        // Every bucket is empty: a new address waits, and nobody got a fresh bucket.
        let new = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1));
        assert!(!r.allow(new, t));
        assert!(!r.allow(ip(0), t));
        // A second later they have all refilled: the idle ones make room.
        let later = t + Duration::from_secs(1);
        assert!(r.allow(new, later));
        assert!(r.buckets.lock().unwrap().len() <= 1);
    }

    #[test]
    fn warnings_are_rate_limited_with_a_count() {
        let mut w = WarnLimit::new(Duration::from_secs(5));
        let t = Instant::now();
        assert_eq!(w.hit(t), Some(0));
        assert_eq!(w.hit(t + Duration::from_secs(1)), None);
        assert_eq!(w.hit(t + Duration::from_secs(2)), None);
        assert_eq!(w.hit(t + Duration::from_secs(6)), Some(2));
    }
}
