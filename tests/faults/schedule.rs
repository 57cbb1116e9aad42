//! Fault schedules drawn from a seed: which fault, on which nodes, for how long, and the
//! quiet gap after it. The same seed gives the same schedule (the processes' timing is the
//! kernel's, so a rerun replays the faults, not every interleaving).

use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;

use crate::net::Degrade;

/// Who a process fault hits: resolved when the fault starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The node that leads when the fault starts.
    Leader,
    /// A node by index.
    Node(usize),
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// `side` cannot talk to the other nodes, both ways.
    Partition { side: Vec<usize> },
    /// The leader cannot talk to anyone, both ways.
    IsolateLeader,
    /// Every pair but those through `bridge` is cut: `bridge` alone sees everyone.
    Bridge { bridge: usize },
    /// Packets from `from` to each of `to` are dropped; the other way flows.
    OneWay { from: usize, to: Vec<usize> },
    /// `side` is cut off and healed every `period_ms`, over and over.
    Flap { side: Vec<usize>, period_ms: u64 },
    /// A node's outgoing link loses, delays and reorders packets.
    Degrade { node: usize, how: Degrade },
    /// SIGKILL of the whole node during writes, restarted when the fault ends.
    Kill { target: Target },
    /// SIGSTOP of the daemon (not its services), SIGCONT when the fault ends.
    Pause { target: Target },
    /// The node's wall clock jumps by `offset_s` (and back when the fault ends).
    ClockJump { node: usize, offset_s: i64 },
    /// The node's `var/` fills up; space returns when the fault ends.
    DiskFull { node: usize },
}

/// A fault held for `hold_ms`, then `gap_ms` without faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub fault: Fault,
    pub hold_ms: u64,
    pub gap_ms: u64,
}

/// What the schedule may use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Menu {
    pub nodes: usize,
    /// Clock faults (libfaketime present).
    pub clock: bool,
    /// The node with the small disk, if any.
    pub disk: Option<usize>,
    /// Pauses stay shorter than this (the failover check assumes the paused daemon's
    /// services are not taken over: below `node.down_timeout`).
    pub max_pause_ms: u64,
}

/// `steps` faults drawn from `seed`.
pub(crate) fn draw(seed: u64, steps: usize, menu: Menu) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..steps)
        .map(|_| {
            let fault = fault(&mut rng, menu);
            let hold_ms = match fault {
                Fault::Pause { .. } => rng.gen_range(800..menu.max_pause_ms.max(900)),
                Fault::Flap { .. } => rng.gen_range(4_000..9_000),
                _ => rng.gen_range(2_000..8_000),
            };
            Step {
                fault,
                hold_ms,
                gap_ms: rng.gen_range(1_500..4_000),
            }
        })
        .collect()
}

fn fault(rng: &mut StdRng, menu: Menu) -> Fault {
    let n = menu.nodes;
    let node = |rng: &mut StdRng| rng.gen_range(0..n);
    let target = |rng: &mut StdRng| {
        if rng.gen_bool(0.5) {
            Target::Leader
        } else {
            Target::Node(rng.gen_range(0..n))
        }
    };
    loop {
        return match rng.gen_range(0..11) {
            0 => Fault::Partition {
                side: minority(rng, n),
            },
            1 => Fault::IsolateLeader,
            2 if n >= 3 => Fault::Bridge { bridge: node(rng) },
            3 => {
                let from = node(rng);
                let to = (0..n).filter(|&i| i != from && rng.gen_bool(0.7)).collect();
                Fault::OneWay { from, to }
            }
            4 => Fault::Flap {
                side: minority(rng, n),
                period_ms: rng.gen_range(300..1_500),
            },
            5 => Fault::Degrade {
                node: node(rng),
                how: Degrade {
                    loss_pct: rng.gen_range(0..40),
                    delay_ms: rng.gen_range(0..300),
                    reorder_pct: rng.gen_range(0..30),
                },
            },
            6 | 7 => Fault::Kill {
                target: target(rng),
            },
            8 => Fault::Pause {
                target: target(rng),
            },
            9 if menu.clock => Fault::ClockJump {
                node: node(rng),
                offset_s: *[-3_600, -90, 90, 86_400]
                    .get(rng.gen_range(0..4))
                    .expect("in range"),
            },
            10 if menu.disk.is_some() => Fault::DiskFull {
                node: menu.disk.expect("checked"),
            },
            _ => continue,
        };
    }
}

/// A random minority of `n` nodes (at least one).
fn minority(rng: &mut StdRng, n: usize) -> Vec<usize> {
    let size = rng.gen_range(1..=(n - 1) / 2).max(1);
    let mut all: Vec<usize> = (0..n).collect();
    let mut side = Vec::new();
    for _ in 0..size {
        side.push(all.remove(rng.gen_range(0..all.len())));
    }
    side.sort_unstable();
    side
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule() {
        let menu = Menu {
            nodes: 3,
            clock: true,
            disk: Some(2),
            max_pause_ms: 3_000,
        };
        assert_eq!(draw(7, 20, menu), draw(7, 20, menu));
        assert_ne!(draw(7, 20, menu), draw(8, 20, menu));
        for s in draw(9, 200, menu) {
            if let Fault::Pause { .. } = s.fault {
                assert!(s.hold_ms < 3_000);
            }
            if let Fault::Partition { side } = s.fault {
                assert_eq!(side.len(), 1, "a minority of 3");
            }
        }
    }
}
