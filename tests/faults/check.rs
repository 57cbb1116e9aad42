//! The checkers, over the recorded history and what the processes left behind:
//!
//! - linearizability of every register (the `linear` crate, the simulator's checker);
//! - acknowledged writes: commit indexes and register versions follow real time (a write
//!   acknowledged before another was called has the smaller index and, on one register, the
//!   smaller version), no two acknowledged writes of one register share a version, and
//!   after healing every node holds every register at least at its highest acknowledged
//!   version (no acknowledged write lost);
//! - at most one instance of the failover service at any time, from the app's own
//!   heartbeats (see [`crate::app`]), not from om's status.
//!
//! Convergence of the applied states is checked by [`crate::cluster::FaultCluster::converge`].

use std::collections::BTreeMap;

use linear::Kind;
use linear::RegOp;

use crate::app::Run;
use crate::workload::Op;
use crate::workload::Outcome;
use crate::workload::What;

/// The history as the linearizability checker sees it: register operations only; a read
/// that failed tells nothing, a write that may have happened has no return.
pub(crate) fn register_ops(ops: &[Op]) -> Vec<RegOp> {
    let mut out = Vec::new();
    for op in ops {
        let (key, kind) = match (&op.what, &op.outcome) {
            (What::Write { key, value }, Outcome::Ok { .. } | Outcome::Unknown(_)) => {
                (key, Kind::Write(Some(value.clone())))
            }
            (What::Read { key }, Outcome::Ok { value, .. }) => (key, Kind::Read(value.clone())),
            _ => continue,
        };
        let ret = matches!(op.outcome, Outcome::Ok { .. }).then_some(op.ret_us);
        out.push(RegOp {
            key: key.clone(),
            call: op.call_us,
            ret,
            kind,
        });
    }
    out
}

/// Linearizability failures, and how many registers had no verdict within the budget.
pub(crate) fn linearizability(ops: &[Op]) -> (Vec<String>, usize) {
    let v = linear::check(&register_ops(ops));
    (v.failures, v.inconclusive)
}

struct Acked<'a> {
    op: &'a Op,
    key: Option<&'a str>,
    index: u64,
    version: Option<u64>,
}

fn acked(ops: &[Op]) -> Vec<Acked<'_>> {
    ops.iter()
        .filter_map(|op| match (&op.what, &op.outcome) {
            (What::Read { .. }, _) => None,
            (
                w,
                Outcome::Ok {
                    index: Some(index),
                    version,
                    ..
                },
            ) => Some(Acked {
                op,
                key: match w {
                    What::Write { key, .. } => Some(key.as_str()),
                    _ => None,
                },
                index: *index,
                version: *version,
            }),
            _ => None,
        })
        .collect()
}

/// Acknowledged writes against real time: indexes, versions, duplicates.
pub(crate) fn acknowledged_order(ops: &[Op]) -> Vec<String> {
    let mut acks = acked(ops);
    acks.sort_by_key(|a| a.op.ret_us);
    let mut problems = Vec::new();
    // The latest acknowledged write returned before each one was called: its index must be
    // smaller (a sweep over writes sorted by return).
    let mut by_call: Vec<&Acked> = acks.iter().collect();
    by_call.sort_by_key(|a| a.op.call_us);
    let mut done = 0;
    let mut max_before: Option<&Acked> = None;
    for b in &by_call {
        while done < acks.len() && acks[done].op.ret_us < b.op.call_us {
            if max_before.is_none_or(|m| acks[done].index > m.index) {
                max_before = Some(&acks[done]);
            }
            done += 1;
        }
        if let Some(a) = max_before.filter(|a| a.index >= b.index) {
            problems.push(format!(
                "commit order: {:?} (client {} via {}) acknowledged at index {} before {:?} \
                 (client {} via {}) was called, which got index {}",
                a.op.what,
                a.op.client,
                a.op.node,
                a.index,
                b.op.what,
                b.op.client,
                b.op.node,
                b.index
            ));
        }
    }
    let mut versions: BTreeMap<(&str, u64), &Acked> = BTreeMap::new();
    for a in &acks {
        let (Some(key), Some(v)) = (a.key, a.version) else {
            continue;
        };
        if let Some(other) = versions.insert((key, v), a) {
            problems.push(format!(
                "lost update: {:?} and {:?} were both acknowledged as version {v} of {key}",
                other.op.what, a.op.what
            ));
        }
    }
    problems.truncate(20);
    problems
}

/// The highest acknowledged version of each register.
pub(crate) fn max_acked_versions(ops: &[Op]) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for a in acked(ops) {
        if let (Some(k), Some(v)) = (a.key, a.version) {
            let e = out.entry(k.to_string()).or_default();
            *e = (*e).max(v);
        }
    }
    out
}

/// Two runs of the failover app on different nodes at once.
#[derive(Debug, Clone)]
pub(crate) struct Overlap {
    pub a: Run,
    pub b: Run,
    /// When the later run started (ns into the run) and for how long both ran.
    pub from_ns: u64,
    pub ms: u64,
}

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "two instances of the failover service: {} (run {}) and {} (run {}) both ran for \
             {} ms (from {} ms into the run)",
            self.a.node,
            self.a.id,
            self.b.node,
            self.b.id,
            self.ms,
            self.from_ns / 1_000_000
        )
    }
}

/// Overlapping runs of the failover app on different nodes (each run: its first and last
/// heartbeat, so a reported overlap is certain; one shorter than a beat may be missed).
pub(crate) fn exclusivity(runs: &[Run]) -> Vec<Overlap> {
    let mut sorted: Vec<&Run> = runs.iter().collect();
    sorted.sort_by_key(|r| r.first_ns);
    let mut out = Vec::new();
    for (i, a) in sorted.iter().enumerate() {
        for b in &sorted[i + 1..] {
            if b.first_ns >= a.last_ns {
                break;
            }
            if a.node != b.node {
                out.push(Overlap {
                    a: (*a).clone(),
                    b: (*b).clone(),
                    from_ns: b.first_ns,
                    ms: (a.last_ns.min(b.last_ns) - b.first_ns) / 1_000_000,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, value: &str, call: u64, ret: u64, index: u64, version: u64) -> Op {
        Op {
            client: 0,
            node: "n1".into(),
            what: What::Write {
                key: key.into(),
                value: value.into(),
            },
            call_us: call,
            ret_us: ret,
            outcome: Outcome::Ok {
                index: Some(index),
                version: Some(version),
                value: None,
            },
        }
    }

    #[test]
    fn acknowledged_writes_follow_real_time() {
        let ok = [write("r", "a", 0, 10, 5, 1), write("r", "b", 20, 30, 6, 2)];
        assert!(acknowledged_order(&ok).is_empty());
        let back = [write("r", "a", 0, 10, 6, 1), write("r", "b", 20, 30, 5, 2)];
        assert_eq!(acknowledged_order(&back).len(), 1);
        let same = [write("r", "a", 0, 10, 5, 1), write("r", "b", 5, 30, 6, 1)];
        assert!(acknowledged_order(&same)[0].contains("lost update"));
        assert_eq!(max_acked_versions(&ok)["r"], 2);
    }

    #[test]
    fn overlapping_runs_on_two_nodes_are_found() {
        let run = |node: &str, id: &str, first_ns, last_ns| Run {
            node: node.into(),
            id: id.into(),
            first_ns,
            last_ns,
        };
        let apart = [run("n1", "1", 0, 100), run("n2", "2", 150, 300)];
        assert!(exclusivity(&apart).is_empty());
        let same_node = [run("n1", "1", 0, 100), run("n1", "2", 50, 300)];
        assert!(exclusivity(&same_node).is_empty());
        let both = [
            run("n1", "1", 0, 200_000_000),
            run("n2", "2", 100_000_000, 300_000_000),
        ];
        assert_eq!(exclusivity(&both).len(), 1);
    }
}
