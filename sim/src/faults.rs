//! The fault schedule: partitions (symmetric and one-way, changing over time), crashes and
//! restarts, wall-clock jumps. Drawn up front from the `faults` stream, so that it does not
//! depend on how the run goes; "the leader" is resolved when the fault fires.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::sleep_until;

use crate::config::SimConfig;
use crate::rng::Rng;
use crate::world::Status;
use crate::world::World;

/// Which node a fault hits.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Node(usize),
    /// Whoever leads when the fault fires (a random node if none does).
    Leader,
}

#[derive(Debug, Clone)]
pub enum Fault {
    /// Replace the set of blocked links.
    Partition {
        blocked: BTreeSet<(usize, usize)>,
        what: String,
    },
    /// Cut `node` off in both directions (resolved at fire time).
    Isolate(Target),
    Crash(Target),
    /// Restart every crashed node that has been down at least its downtime.
    Restart(usize),
    ClockJump {
        node: usize,
        delta_ms: i64,
    },
}

/// (virtual ms, fault), in time order.
pub fn schedule(cfg: &SimConfig) -> Vec<(u64, Fault)> {
    let mut out = Vec::new();
    let n = cfg.nodes;
    if cfg.partition_gap_ms > 0 {
        let mut r = Rng::stream(cfg.seed, "faults.partition");
        let mut t = 0;
        loop {
            t += r.exp(cfg.partition_gap_ms) + 1;
            if t >= cfg.fault_ms {
                break;
            }
            let fault = match r.below(6) {
                0 => Fault::Partition {
                    blocked: BTreeSet::new(),
                    what: "healed".into(),
                },
                1 => {
                    // Symmetric split into two sides.
                    let side: Vec<bool> = (0..n).map(|_| r.chance(0.5)).collect();
                    let mut blocked = BTreeSet::new();
                    for a in 0..n {
                        for b in 0..n {
                            if side[a] != side[b] {
                                blocked.insert((a, b));
                            }
                        }
                    }
                    let what = format!(
                        "split {:?}",
                        side.iter().map(|s| *s as u8).collect::<Vec<_>>()
                    );
                    Fault::Partition { blocked, what }
                }
                2 => {
                    // One-way: some links deliver in one direction only.
                    let mut blocked = BTreeSet::new();
                    for _ in 0..r.between(1, n as u64) {
                        let a = r.below(n as u64) as usize;
                        let b = r.below(n as u64) as usize;
                        if a != b {
                            blocked.insert((a, b));
                        }
                    }
                    Fault::Partition {
                        blocked,
                        what: "one-way links".into(),
                    }
                }
                3 => {
                    // A bridge: two sides that both still reach one node.
                    let bridge = r.below(n as u64) as usize;
                    let side: Vec<bool> = (0..n).map(|_| r.chance(0.5)).collect();
                    let mut blocked = BTreeSet::new();
                    for a in 0..n {
                        for b in 0..n {
                            if a != bridge && b != bridge && side[a] != side[b] {
                                blocked.insert((a, b));
                            }
                        }
                    }
                    Fault::Partition {
                        blocked,
                        what: format!("bridge through n{}", bridge + 1),
                    }
                }
                4 => Fault::Isolate(Target::Leader),
                _ => Fault::Isolate(Target::Node(r.below(n as u64) as usize)),
            };
            out.push((t, fault));
        }
    }
    if cfg.crash_gap_ms > 0 {
        let mut r = Rng::stream(cfg.seed, "faults.crash");
        let mut t = 0;
        loop {
            t += r.exp(cfg.crash_gap_ms) + 1;
            if t >= cfg.fault_ms {
                break;
            }
            let target = if r.chance(cfg.crash_leader) {
                Target::Leader
            } else {
                Target::Node(r.below(n as u64) as usize)
            };
            out.push((t, Fault::Crash(target)));
            let down = r.between(cfg.downtime_ms.0, cfg.downtime_ms.1);
            if t + down < cfg.fault_ms {
                out.push((t + down, Fault::Restart(0)));
            }
        }
    }
    if cfg.clock_jump_gap_ms > 0 {
        let mut r = Rng::stream(cfg.seed, "faults.clock");
        let mut t = 0;
        loop {
            t += r.exp(cfg.clock_jump_gap_ms) + 1;
            if t >= cfg.fault_ms {
                break;
            }
            let node = r.below(n as u64) as usize;
            let delta_ms = r.between(0, 120_000) as i64 - 60_000;
            out.push((t, Fault::ClockJump { node, delta_ms }));
        }
    }
    // Stable sort: same-time faults keep their stream order.
    out.sort_by_key(|(t, _)| *t);
    out
}

fn resolve(w: &World, t: Target, r: &mut Rng) -> usize {
    match t {
        Target::Node(i) => i,
        Target::Leader => match w.leader() {
            Some((i, _)) => i,
            None => r.below(w.cfg.nodes as u64) as usize,
        },
    }
}

/// Plays the schedule, starting at `base` (the start of the fault phase).
pub async fn inject(w: Arc<World>, base: tokio::time::Instant, plan: Vec<(u64, Fault)>) {
    let mut r = Rng::stream(w.cfg.seed, "faults.resolve");
    // Crashed nodes, oldest first; each restart brings back the oldest.
    let mut down: Vec<usize> = Vec::new();
    for (at, fault) in plan {
        sleep_until(base + Duration::from_millis(at)).await;
        match fault {
            Fault::Partition { blocked, what } => {
                w.ev("net", format_args!("partition: {what} {blocked:?}"));
                w.rec().stats.partitions += 1;
                w.net().blocked = blocked;
            }
            Fault::Isolate(t) => {
                let i = resolve(&w, t, &mut r);
                let mut blocked = BTreeSet::new();
                for j in 0..w.cfg.nodes {
                    if j != i {
                        blocked.insert((i, j));
                        blocked.insert((j, i));
                    }
                }
                w.ev("net", format_args!("partition: isolate {}", w.names[i]));
                w.rec().stats.partitions += 1;
                w.net().blocked = blocked;
            }
            Fault::Crash(t) => {
                let i = resolve(&w, t, &mut r);
                if w.status(i) == Status::Up {
                    w.crash(i, "power cut");
                    down.push(i);
                }
            }
            Fault::Restart(_) => {
                down.retain(|i| w.status(*i) == Status::Down);
                if !down.is_empty() {
                    let i = down.remove(0);
                    if let Err(e) = w.start(i).await {
                        w.ev(&w.names[i], format_args!("restart failed: {e}"));
                    }
                }
            }
            Fault::ClockJump { node, delta_ms } => {
                w.slots()[node].clock.offset_ms += delta_ms;
                w.rec().stats.clock_jumps += 1;
                w.ev(
                    &w.names[node],
                    format_args!("wall clock jumps {delta_ms}ms"),
                );
            }
        }
    }
}
