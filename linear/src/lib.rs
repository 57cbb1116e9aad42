//! Linearizability of the client history, one register (cluster parameter) at a time, with
//! the Wing-Gong-Lowe search: repeatedly pick an operation that may take effect first (one
//! called before every pending operation returned), check it against the register, recurse,
//! and remember (done set, register value) pairs already explored.
//!
//! Operations whose outcome is unknown (the client timed out) have no return: they may take
//! effect any time after their call, or never.
//!
//! A crate of its own so that the deterministic simulator (`sim/`, sequence numbers as time)
//! and the fault suite on real processes (`tests/faults/`, microseconds since its start as
//! time) judge their histories with the same code. Deterministic: nothing iterates a hash
//! set.

use std::collections::BTreeMap;
use std::collections::HashSet;

/// One client operation on a register (a cluster parameter, a service config, ...).
#[derive(Debug, Clone)]
pub struct RegOp {
    /// The register.
    pub key: String,
    /// When the client called, on the history's clock (any increasing count).
    pub call: u64,
    /// When it returned; `None`: the outcome is unknown (timeout, crash): it may take
    /// effect any time after `call`, or never.
    pub ret: Option<u64>,
    /// What it did.
    pub kind: Kind,
}

/// What an operation did to a register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Set (`Some`) or deleted (`None`) the parameter.
    Write(Option<String>),
    /// Read the parameter and saw this.
    Read(Option<String>),
}

/// The verdict over all keys.
#[derive(Debug, Default)]
pub struct Verdict {
    /// One message per register whose history has no linearization.
    pub failures: Vec<String>,
    /// Keys whose search hit the budget (no verdict).
    pub inconclusive: usize,
}

/// States explored per key before giving up without a verdict.
const BUDGET: usize = 2_000_001;

/// Checks every register's history; registers are independent.
pub fn check(ops: &[RegOp]) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&RegOp>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut v = Verdict::default();
    for (key, ops) in by_key {
        match check_key(&ops) {
            Some(true) => {}
            Some(false) => {
                let (cut, prefix) = shortest_failing_prefix(&ops);
                v.failures.push(format!(
                    "linearizability: the history of {key} has no linearization ({} operations); \
                     it breaks when the operation returning at [{cut}] returns; the last operations before:\n{}",
                    ops.len(),
                    describe(&prefix)
                ))
            }
            None => v.inconclusive += 1,
        }
    }
    v
}

/// The history as it stood at sequence number `t`: operations called by then, those not yet
/// returned counted as unknown.
fn prefix(ops: &[&RegOp], t: u64) -> Vec<RegOp> {
    ops.iter()
        .filter(|o| o.call <= t)
        .map(|o| RegOp {
            ret: o.ret.filter(|r| *r <= t),
            ..(*o).clone()
        })
        .collect()
}

/// The first return after which the history cannot be linearized, and the history then.
fn shortest_failing_prefix(ops: &[&RegOp]) -> (u64, Vec<RegOp>) {
    let mut rets: Vec<u64> = ops.iter().filter_map(|o| o.ret).collect();
    rets.sort_unstable();
    let fails = |t: u64| {
        let p = prefix(ops, t);
        let refs: Vec<&RegOp> = p.iter().collect();
        check_key(&refs) == Some(false)
    };
    // Failing is monotone in the prefix: binary search the first failing return.
    let (mut lo, mut hi) = (0, rets.len().saturating_sub(1));
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(rets[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let cut = rets.get(lo).copied().unwrap_or(0);
    (cut, prefix(ops, cut))
}

fn describe(ops: &[RegOp]) -> String {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| o.call);
    let skip = ops.len().saturating_sub(12);
    ops.iter()
        .skip(skip)
        .map(|o| {
            let ret = o.ret.map_or("?".to_string(), |r| r.to_string());
            format!("    [{}, {}] {:?}", o.call, ret, o.kind)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Op {
    call: u64,
    ret: u64,
    write: bool,
    value: u32,
}

/// `Some(linearizable)`, or `None` when the budget ran out.
fn check_key(ops: &[&RegOp]) -> Option<bool> {
    // Values are interned; 0 is "absent", the register's initial value.
    let mut values: BTreeMap<Option<String>, u32> = BTreeMap::new();
    values.insert(None, 0);
    let mut intern = |v: &Option<String>| {
        let n = values.len() as u32;
        *values.entry(v.clone()).or_insert(n)
    };
    let mut read_values = HashSet::new();
    let mut list = Vec::new();
    for o in ops {
        let (write, v) = match &o.kind {
            Kind::Write(v) => (true, intern(v)),
            Kind::Read(v) => (false, intern(v)),
        };
        if !write {
            read_values.insert(v);
        }
        list.push((o, write, v));
    }
    let mut ops: Vec<Op> = list
        .into_iter()
        // A write of unknown outcome whose value nobody read can be taken as never applied.
        .filter(|(o, write, v)| !(*write && o.ret.is_none() && !read_values.contains(v)))
        .map(|(o, write, value)| Op {
            call: o.call,
            ret: o.ret.unwrap_or(u64::MAX),
            write,
            value,
        })
        .collect();
    ops.sort_by_key(|o| o.call);
    let n = ops.len();
    let must: Vec<bool> = ops.iter().map(|o| o.ret != u64::MAX).collect();
    let words = n.div_ceil(64).max(1);
    let mut seen: HashSet<(Vec<u64>, u32)> = HashSet::new();
    // Depth-first search with an explicit stack of (done set, value, next candidate).
    let mut stack: Vec<(Vec<u64>, u32, usize)> = vec![(vec![0; words], 0, 0)];
    while let Some((done, value, from)) = stack.pop() {
        let is_done = |i: usize| done[i / 64] >> (i % 64) & 1 == 1;
        if (0..n).all(|i| !must[i] || is_done(i)) {
            return Some(true);
        }
        // An op may go next only if it was called before every pending op returned.
        let horizon = (0..n)
            .filter(|&i| !is_done(i))
            .map(|i| ops[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        let mut next = None;
        for (i, op) in ops.iter().enumerate().skip(from) {
            if op.call > horizon {
                break;
            }
            if is_done(i) {
                continue;
            }
            let new_value = if op.write {
                op.value
            } else if op.value == value {
                value
            } else {
                continue;
            };
            let mut d = done.clone();
            d[i / 64] |= 1 << (i % 64);
            if seen.insert((d.clone(), new_value)) {
                next = Some((i, d, new_value));
                break;
            }
        }
        if let Some((i, d, new_value)) = next {
            // Come back to this node for the candidates after `i`, then go down.
            stack.push((done, value, i + 1));
            stack.push((d, new_value, 0));
        }
        if seen.len() > BUDGET {
            return None;
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: Option<u64>, kind: Kind) -> RegOp {
        RegOp {
            key: "k".into(),
            call,
            ret,
            kind,
        }
    }

    fn w(v: &str) -> Kind {
        Kind::Write(Some(v.into()))
    }

    fn r(v: Option<&str>) -> Kind {
        Kind::Read(v.map(String::from))
    }

    #[test]
    fn accepts_and_refuses() {
        // Sequential write then read.
        assert!(
            check(&[op(1, Some(2), w("a")), op(3, Some(4), r(Some("a")))])
                .failures
                .is_empty()
        );
        // Stale read after a completed write.
        assert_eq!(
            check(&[op(1, Some(2), w("a")), op(3, Some(4), r(None))])
                .failures
                .len(),
            1
        );
        // Concurrent read may see either.
        assert!(check(&[op(1, Some(4), w("a")), op(2, Some(3), r(None))])
            .failures
            .is_empty());
        assert!(
            check(&[op(1, Some(4), w("a")), op(2, Some(3), r(Some("a")))])
                .failures
                .is_empty()
        );
        // A write of unknown outcome may apply late...
        assert!(check(&[
            op(1, None, w("a")),
            op(2, Some(3), r(None)),
            op(4, Some(5), r(Some("a"))),
        ])
        .failures
        .is_empty());
        // ...but not before it was called.
        assert_eq!(
            check(&[op(1, Some(2), r(Some("a"))), op(3, None, w("a"))])
                .failures
                .len(),
            1
        );
        // Reads going back in time.
        assert_eq!(
            check(&[
                op(1, Some(2), w("a")),
                op(3, Some(4), w("b")),
                op(5, Some(6), r(Some("b"))),
                op(7, Some(8), r(Some("a"))),
            ])
            .failures
            .len(),
            1
        );
    }
}
