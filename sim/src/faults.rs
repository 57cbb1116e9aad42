//! The fault schedule: partitions (symmetric and one-way, changing over time), crashes and
//! restarts, wall-clock jumps, corrupted member addresses in Raft's membership (repaired
//! later by the node's announcement), restarts on a new listener address. Drawn up front
//! from the `faults` streams, so that it does not depend on how the run goes; "the leader"
//! and which members an address fault hits are resolved when the fault fires.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use raft::membership;
use raft::membership::MembershipError;
use raft::CommandError;
use raft::Member;
use tokio::time::sleep_until;
use tokio::time::timeout;

use crate::config::SimConfig;
use crate::rng::Rng;
use crate::workload;
use crate::world::Status;
use crate::world::World;

/// Which node a fault hits.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The node in this slot (an index into `World::names`).
    Node(usize),
    /// Whoever leads when the fault fires (a random node if none does).
    Leader,
}

#[derive(Debug, Clone)]
/// One fault of the schedule, fired at its time by [`inject`].
pub enum Fault {
    /// Replace the set of blocked links.
    Partition {
        /// Directed (from, to) slot pairs that deliver nothing from now on (empty: healed).
        blocked: BTreeSet<(usize, usize)>,
        /// How the layout reads in the trace (`split [0, 1, 1]`, `healed`, ...).
        what: String,
    },
    /// Cut `node` off in both directions (resolved at fire time).
    Isolate(Target),
    /// Power cut on the target if it is up; a later `Restart` (or the heal) brings it back.
    Crash(Target),
    /// Restart the node crashed longest ago that is still down (the field is unused: one
    /// `Restart` is scheduled per crash, after its downtime).
    Restart(usize),
    /// A node's wall clock steps, as a bad NTP server would make it.
    ClockJump {
        /// The slot whose clock jumps.
        node: usize,
        /// Added to its clock offset, ms (within ±60 s).
        delta_ms: i64,
    },
    /// A member's address in Raft's membership is rewritten on the leader, bypassing
    /// `membership::set_addr`'s check, as a stale or typo'd record would be: to another
    /// member's address, to a dead one, or swapped with another member's. The draws pick
    /// the members among the leader's, in id order, when it fires.
    AddrCorrupt {
        /// How the record is corrupted.
        kind: AddrFault,
        /// Draw picking the member whose record is rewritten (modulo the member count).
        a: u64,
        /// Draw picking the other member involved (whose address it takes, or the swap partner).
        b: u64,
    },
    /// Every node whose record is wrong announces its address (`membership::set_addr`).
    AddrRepair,
    /// The node is restarted listening on a new port, and announces it.
    Relisten(Target),
}

/// How a member's address record is corrupted.
#[derive(Debug, Clone, Copy)]
pub enum AddrFault {
    /// Set to another member's address (possibly the leader's own).
    Taken,
    /// Set to an address nobody listens at.
    Dead,
    /// Two members' addresses exchanged.
    Swap,
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
    if cfg.addr_fault_gap_ms > 0 {
        let mut r = Rng::stream(cfg.seed, "faults.addr");
        let mut t = 0;
        loop {
            t += r.exp(cfg.addr_fault_gap_ms) + 1;
            if t >= cfg.fault_ms {
                break;
            }
            let kind = *r.pick(&[
                AddrFault::Taken,
                AddrFault::Taken,
                AddrFault::Dead,
                AddrFault::Swap,
            ]);
            let (a, b) = (r.next_u64(), r.next_u64());
            out.push((t, Fault::AddrCorrupt { kind, a, b }));
            // Repaired some time later, or in the heal phase at the latest.
            let after = r.between(200, 4_000);
            if t + after < cfg.fault_ms {
                out.push((t + after, Fault::AddrRepair));
            }
        }
    }
    if cfg.relisten_gap_ms > 0 {
        let mut r = Rng::stream(cfg.seed, "faults.relisten");
        let mut t = 0;
        loop {
            t += r.exp(cfg.relisten_gap_ms) + 1;
            if t >= cfg.fault_ms {
                break;
            }
            let target = if r.chance(0.3) {
                Target::Leader
            } else {
                Target::Node(r.below(n as u64) as usize)
            };
            out.push((t, Fault::Relisten(target)));
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
            Fault::AddrCorrupt { kind, a, b } => {
                tokio::spawn(corrupt_addr(w.clone(), kind, a, b));
            }
            Fault::AddrRepair => {
                for i in 0..w.cfg.nodes {
                    let w = w.clone();
                    tokio::spawn(async move {
                        workload::announce(&w, i, Some(&w.faults_over)).await;
                    });
                }
            }
            Fault::Relisten(t) => {
                let i = resolve(&w, t, &mut r);
                let name = w.ident(i);
                let fits = w
                    .leader()
                    .is_some_and(|(_, l)| records_right(&w, &l) && spare(&w, &l, &[&name]));
                if !fits {
                    w.ev(
                        &w.names[i],
                        format_args!("restart on a new address skipped"),
                    );
                } else if w.status(i) == Status::Up {
                    w.crash(i, "restart on a new address");
                    w.relisten(i);
                    w.rec().stats.relistens += 1;
                    match w.start(i).await {
                        Ok(_) => {
                            let w = w.clone();
                            tokio::spawn(async move {
                                workload::announce(&w, i, Some(&w.faults_over)).await;
                            });
                        }
                        Err(e) => {
                            w.ev(&w.names[i], format_args!("restart failed: {e}"));
                            down.push(i);
                        }
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

/// Rewrites member addresses in the leader's Raft membership (`Node::set_member`, which
/// `membership::set_addr` is built on, without its check). Before writing another member's
/// address, asks `membership::set_addr` for the same change: it must refuse it.
async fn corrupt_addr(w: Arc<World>, kind: AddrFault, a: u64, b: u64) {
    struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    w.corrupting.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight(&w.corrupting);
    if w.faults_over.load(Ordering::SeqCst) {
        return;
    }
    let Some((lidx, leader)) = w.leader() else {
        return;
    };
    let members: Vec<Member> = leader
        .metrics()
        .membership_config
        .membership()
        .nodes()
        .map(|(_, m)| m.clone())
        .collect();
    if members.len() < 2 {
        return;
    }
    let ma = members[(a % members.len() as u64) as usize].clone();
    let others: Vec<&Member> = members.iter().filter(|m| m.name != ma.name).collect();
    let mb = others[(b % others.len() as u64) as usize].clone();
    // One address problem at a time, and only of a member the cluster can do without (the
    // same for a restart on a new address): the nodes find each other through these
    // records, so with several wrong at once no leader may be elected to take the repair,
    // and a configuration that needs a member it cannot
    // reach never commits, and openraft accepts no other change (the repair included) until
    // it does, so a wrong record of a member the quorum needs wedges the cluster for good
    // (README.md, "Bugs found"). The fault models a stale record among redundant members.
    let hit: Vec<&str> = match kind {
        AddrFault::Swap => vec![&ma.name, &mb.name],
        _ => vec![&ma.name],
    };
    if !records_right(&w, &leader) || !spare(&w, &leader, &hit) {
        w.ev(
            "op",
            format_args!("corrupt: skipped, the quorum needs {hit:?}"),
        );
        return;
    }
    let t = Duration::from_millis(w.cfg.client_timeout_ms.max(2_000));
    let writes: Vec<Member> = match kind {
        AddrFault::Taken => {
            // The checked path must refuse what the fault is about to force. (No await
            // between the look-up and set_addr's own check: nothing changes in between.)
            if let Some(holder) = membership::addr_holder(&leader, &mb.addr, &ma.name) {
                let r = timeout(t, membership::set_addr(&leader, &ma.name, &mb.addr)).await;
                if !matches!(
                    r,
                    Ok(Err(MembershipError::Refused(
                        CommandError::AddrTaken { .. }
                    )))
                ) {
                    let what = format!(
                        "membership: set_addr gave {} the address {} that {holder} holds: {r:?}",
                        ma.name, mb.addr
                    );
                    w.rec().violation(&w, what);
                }
            }
            vec![Member::new(ma.name.clone(), mb.addr.clone())]
        }
        AddrFault::Dead => {
            let host = ma.addr.split(':').next().unwrap_or("dead");
            vec![Member::new(ma.name.clone(), format!("{host}:6999"))]
        }
        AddrFault::Swap => vec![
            Member::new(ma.name.clone(), mb.addr.clone()),
            Member::new(mb.name.clone(), ma.addr.clone()),
        ],
    };
    w.rec().stats.addr_faults += 1;
    for m in writes {
        if w.faults_over.load(Ordering::SeqCst) {
            return;
        }
        w.ev(
            "op",
            format_args!(
                "corrupt: record {} at {} via {}",
                m.name, m.addr, w.names[lidx]
            ),
        );
        match timeout(t, leader.set_member(raft::node_id(&m.name), m)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                w.ev("op", format_args!("corrupt: {e}"));
                return;
            }
            Err(_) => {
                w.ev("op", format_args!("corrupt: timed out"));
                return;
            }
        }
    }
}

/// Whether every half of the leader's configuration keeps a majority of voters the leader
/// replicates to (itself, and those that acknowledged all it applied) without `names`, as
/// far as a leader that recently heard from a quorum knows.
fn spare(w: &World, leader: &raft::Node, names: &[&str]) -> bool {
    let m = leader.metrics();
    // A leader cut off from the others still believes its last view of them: only trust one
    // that a quorum acknowledged within an election timeout.
    if m.millis_since_quorum_ack
        .is_none_or(|ms| ms > w.cfg.election_min_ms)
    {
        return false;
    }
    let applied = m.last_applied.map(|l| l.index);
    let membership = m.membership_config.membership();
    let healthy = |v: &u64| {
        let name = membership
            .get_node(v)
            .map(|n| n.name.as_str())
            .unwrap_or("");
        !names.contains(&name)
            && (*v == leader.id
                || m.replication.as_ref().is_some_and(|r| {
                    r.get(v)
                        .cloned()
                        .flatten()
                        .is_some_and(|l| Some(l.index) >= applied)
                }))
    };
    membership
        .get_joint_config()
        .iter()
        .all(|c| c.iter().filter(|v| healthy(v)).count() * 2 > c.len())
}

/// Whether the leader's membership records every current member at the address it listens
/// at (no address problem outstanding).
fn records_right(w: &World, leader: &raft::Node) -> bool {
    let m = leader.metrics();
    let slots = w.slots();
    let right = m
        .membership_config
        .membership()
        .nodes()
        .all(|(id, rec)| slots.iter().all(|s| s.id != *id || s.addr == rec.addr));
    right
}
