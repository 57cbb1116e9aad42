//! What a seed decides about a run: cluster size, Raft timeouts, fault rates, workload.

use std::fmt;

use crate::bugs::Bug;
use crate::rng::Rng;

/// Per-message network behaviour (the partition schedule is separate, in `faults`).
#[derive(Debug, Clone, PartialEq)]
pub struct NetParams {
    /// Probability that a request, or independently its response, is lost.
    pub loss: f64,
    /// Probability that a request is delivered a second time, later.
    pub dup: f64,
    /// One-way delay, uniform in `delay_min_us..=delay_max_us`.
    pub delay_min_us: u64,
    /// Upper end of the normal delay, µs; long delays start there.
    pub delay_max_us: u64,
    /// Probability that a message takes a long way round (up to `long_delay_max_us`), which
    /// reorders it behind later ones.
    pub long_delay: f64,
    /// Upper end of a long delay, µs.
    pub long_delay_max_us: u64,
    /// Probability that a message reaches another listening node than the one at its
    /// address (the sender included), as a stale address or a reused port would.
    pub misdeliver: f64,
}

impl NetParams {
    /// The network of the heal phase: no loss, no duplicates, short delays.
    pub fn calm() -> NetParams {
        NetParams {
            loss: 0.0,
            dup: 0.0,
            delay_min_us: 200,
            delay_max_us: 2_000,
            long_delay: 0.0,
            long_delay_max_us: 0,
            misdeliver: 0.0,
        }
    }
}

/// How to run a seed (not drawn from the seed).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Plant this bug.
    pub bug: Option<Bug>,
    /// Keep the trace lines (for printing), not only their hash.
    pub keep_trace: bool,
    /// A node that left (and had its disk wiped) rejoins under its old name, hence its old
    /// Raft id, as the daemon allows today. Off by default: reusing a Raft id for an empty
    /// store is a known bug (README.md, "Bugs found"); by default it rejoins as `n2-r1`, ...
    pub reuse_names: bool,
}

/// Everything a seed decides before the run starts.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed every random stream of the run derives from.
    pub seed: u64,
    /// The planted bug (`Options::bug`), if any.
    pub bug: Option<Bug>,
    /// Wiped nodes rejoin under their old name and Raft id (`Options::reuse_names`).
    pub reuse_names: bool,
    /// Raft timing, batching and snapshots exactly as the daemon sets them.
    pub daemon_timing: bool,
    /// Nodes in the pool (3 or 5); all are voters after the warm-up.
    pub nodes: usize,
    /// openraft's heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Lower end of openraft's randomized election timeout, ms; disk syncs take at most an eighth.
    pub election_min_ms: u64,
    /// Upper end of the election timeout, ms (also the snapshot install timeout, at least 200).
    pub election_max_ms: u64,
    /// openraft `SnapshotPolicy::LogsSinceLast`.
    pub snapshot_every: u64,
    /// openraft `max_in_snapshot_log_to_keep`: entries left in the log behind a snapshot.
    pub keep_logs: u64,
    /// openraft `snapshot_max_chunk_size`: bytes per InstallSnapshot RPC.
    pub snapshot_chunk: u64,
    /// openraft `max_payload_entries`: most entries per AppendEntries RPC.
    pub max_payload_entries: u64,
    /// Length of the fault phase, virtual ms.
    pub fault_ms: u64,
    /// Per-message behaviour in the fault phase (warm-up and heal use `NetParams::calm`).
    pub net: NetParams,
    /// Mean gap between changes of the partition layout (0 = no partitions).
    pub partition_gap_ms: u64,
    /// Mean gap between crashes (0 = no crashes).
    pub crash_gap_ms: u64,
    /// How long a crashed node stays down, uniform in this range.
    pub downtime_ms: (u64, u64),
    /// Probability that a crash takes the current leader rather than a random node.
    pub crash_leader: f64,
    /// Each disk sync takes this long, so crashes land while writes are unsynced.
    pub sync_delay_us: u64,
    /// What a crash does to the simulated disk's unsynced writes (`storage::wal::MemDisk`):
    /// the probability that each survives, whether the last may survive torn, and the
    /// probability that a bit of what survived unsynced is flipped.
    pub disk_keep_unsynced: f64,
    /// Whether the last unsynced write of a file may survive a crash torn.
    pub disk_tear: bool,
    /// Probability that a crash flips one bit in the unsynced bytes that survived.
    pub disk_flip: f64,
    /// The write-ahead log's segment size (small ones roll and purge often).
    pub segment_size: u64,
    /// Mean gap between membership changes (0 = none).
    pub membership_gap_ms: u64,
    /// Mean gap between wall-clock jumps on some node (0 = none).
    pub clock_jump_gap_ms: u64,
    /// Mean gap between corruptions of a member's address in Raft's membership (another
    /// member's, a dead one, or two swapped), each repaired later (0 = none).
    pub addr_fault_gap_ms: u64,
    /// Mean gap between restarts of a node on a new listener address (0 = none).
    pub relisten_gap_ms: u64,
    /// Probability that a client's proposal goes through a non-leader that forwards it.
    pub forward: f64,
    /// Probability that a forwarded proposal is sent twice.
    pub forward_dup: f64,
    /// Concurrent clients (1..=4) reading and writing registers in the fault phase.
    pub clients: usize,
    /// Mean think time of a client between operations.
    pub client_gap_ms: u64,
    /// A client gives up on an operation after this long: the outcome is then unknown.
    pub client_timeout_ms: u64,
    /// Cluster parameter keys used as linearizable registers.
    pub keys: usize,
}

impl SimConfig {
    /// The configuration of `seed`, drawn from its `config` stream.
    pub fn from_seed(seed: u64, opts: &Options) -> SimConfig {
        let mut r = Rng::stream(seed, "config");
        let nodes = if r.chance(0.5) { 3 } else { 5 };
        let mut heartbeat_ms = r.between(20, 100);
        let mut election_min_ms = heartbeat_ms * r.between(3, 6);
        let mut election_max_ms = election_min_ms + election_min_ms * r.between(1, 3) / 2;
        let mut snapshot_every = *r.pick(&[8, 20, 50, 200, 5000]);
        let mut keep_logs = *r.pick(&[0, 3, 10, 100]);
        let mut snapshot_chunk = *r.pick(&[64, 512, 4096, 1 << 20]);
        // (Not 1: a learner then catches up one entry per round trip and sync, which with slow
        // disks outlasts the heal bound; seed 3117 at the time.)
        let mut max_payload_entries = *r.pick(&[4, 4, 64, 300]);
        // A quarter of the seeds run the daemon's own settings (src/daemon/mod.rs,
        // `raft_config`).
        let daemon_timing = r.chance(0.25);
        if daemon_timing {
            heartbeat_ms = 100;
            election_min_ms = 300;
            election_max_ms = 600;
            max_payload_entries = 512;
            snapshot_chunk = 256 * 1024;
            snapshot_every = 10_000;
            keep_logs = openraft::Config::default().max_in_snapshot_log_to_keep;
        }
        let fault_ms = r.between(8_000, 20_000);
        // Each fault class is on in about two thirds of the seeds, at a random strength, so
        // that some seeds isolate one class and others pile them up.
        let on = |r: &mut Rng| r.chance(0.65);
        let loss = if on(&mut r) {
            *r.pick(&[0.01, 0.05, 0.15, 0.3])
        } else {
            0.0
        };
        let dup = if on(&mut r) {
            *r.pick(&[0.01, 0.05, 0.2])
        } else {
            0.0
        };
        let delay_min_us = r.between(50, 2_000);
        let delay_max_us = delay_min_us + *r.pick(&[500, 5_000, 20_000, 80_000]);
        let long_delay = if on(&mut r) {
            *r.pick(&[0.005, 0.02, 0.1])
        } else {
            0.0
        };
        let long_delay_max_us = r.between(100_000, 1_500_000);
        let partition_gap_ms = if on(&mut r) { r.between(300, 4_000) } else { 0 };
        let crash_gap_ms = if on(&mut r) { r.between(500, 5_000) } else { 0 };
        let down_lo = r.between(10, 1_000);
        let downtime_ms = (down_lo, down_lo + r.between(0, 3_000));
        let crash_leader = *r.pick(&[0.0, 0.3, 0.7]);
        let sync_delay_us = *r.pick(&[0, 0, 100, 1_000, 5_000, 20_000]);
        let membership_gap_ms = if on(&mut r) {
            r.between(1_000, 6_000)
        } else {
            0
        };
        let clock_jump_gap_ms = if on(&mut r) {
            r.between(1_000, 8_000)
        } else {
            0
        };
        // Drawn after the older fields, so that adding them did not move those.
        let misdeliver = if on(&mut r) {
            *r.pick(&[0.002, 0.01, 0.05])
        } else {
            0.0
        };
        let addr_fault_gap_ms = if on(&mut r) {
            r.between(1_000, 6_000)
        } else {
            0
        };
        let relisten_gap_ms = if on(&mut r) {
            r.between(1_500, 8_000)
        } else {
            0
        };
        let forward = if on(&mut r) {
            *r.pick(&[0.2, 0.5, 1.0])
        } else {
            0.0
        };
        let forward_dup = if forward > 0.0 && on(&mut r) {
            *r.pick(&[0.02, 0.1, 0.3])
        } else {
            0.0
        };
        let clients = r.between(1, 4) as usize;
        let client_gap_ms = r.between(5, 150);
        let client_timeout_ms = r.between(500, 4_000);
        let keys = r.between(2, 6) as usize;
        // The disk's crash behaviour has its own stream: adding it moved nothing above.
        let mut d = Rng::stream(seed, "disk.faults");
        let disk_keep_unsynced = *d.pick(&[0.0, 0.3, 0.7, 1.0]);
        let disk_tear = d.chance(0.7);
        let disk_flip = *d.pick(&[0.0, 0.0, 0.2, 0.5]);
        let segment_size = *d.pick(&[4096, 16 << 10, 64 << 10, 1 << 20]);
        SimConfig {
            seed,
            bug: opts.bug,
            reuse_names: opts.reuse_names,
            daemon_timing,
            nodes,
            heartbeat_ms,
            election_min_ms,
            election_max_ms,
            snapshot_every,
            keep_logs,
            snapshot_chunk,
            max_payload_entries,
            fault_ms,
            net: NetParams {
                loss,
                dup,
                delay_min_us,
                delay_max_us,
                long_delay,
                long_delay_max_us,
                misdeliver,
            },
            partition_gap_ms,
            crash_gap_ms,
            downtime_ms,
            crash_leader,
            sync_delay_us,
            disk_keep_unsynced,
            disk_tear,
            disk_flip,
            segment_size,
            membership_gap_ms,
            clock_jump_gap_ms,
            addr_fault_gap_ms,
            relisten_gap_ms,
            forward,
            forward_dup,
            clients,
            client_gap_ms,
            client_timeout_ms,
            keys,
        }
    }

    /// The openraft configuration of every node.
    pub fn raft_config(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: crate::net::CLUSTER.into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            install_snapshot_timeout: self.election_max_ms.max(200),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs,
            snapshot_max_chunk_size: self.snapshot_chunk,
            max_payload_entries: self.max_payload_entries,
            purge_batch_size: if self.daemon_timing {
                openraft::Config::default().purge_batch_size
            } else {
                1
            },
            ..openraft::Config::default()
        }
    }
}

impl fmt::Display for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = &self.net;
        write!(
            f,
            "{} nodes{}, heartbeat {}ms, election {}..{}ms, batch {}, snapshot every {} keep {} chunk {}, \
             faults {}ms: loss {} dup {} delay {}..{}us long {}@{}us, partitions every {}ms, \
             crashes every {}ms down {}..{}ms (leader {}), sync {}us, disk keeps {} tears {} flips {} \
             segments {}B, membership every {}ms, \
             clock jumps every {}ms, misdelivery {}, address faults every {}ms, relistens every {}ms, \
             forwarding {} dup {}; {} clients every {}ms timeout {}ms on {} keys",
            self.nodes,
            if self.daemon_timing {
                " (daemon timing)"
            } else {
                ""
            },
            self.heartbeat_ms,
            self.election_min_ms,
            self.election_max_ms,
            self.max_payload_entries,
            self.snapshot_every,
            self.keep_logs,
            self.snapshot_chunk,
            self.fault_ms,
            n.loss,
            n.dup,
            n.delay_min_us,
            n.delay_max_us,
            n.long_delay,
            n.long_delay_max_us,
            self.partition_gap_ms,
            self.crash_gap_ms,
            self.downtime_ms.0,
            self.downtime_ms.1,
            self.crash_leader,
            self.sync_delay_us,
            self.disk_keep_unsynced,
            self.disk_tear,
            self.disk_flip,
            self.segment_size,
            self.membership_gap_ms,
            self.clock_jump_gap_ms,
            n.misdeliver,
            self.addr_fault_gap_ms,
            self.relisten_gap_ms,
            self.forward,
            self.forward_dup,
            self.clients,
            self.client_gap_ms,
            self.client_timeout_ms,
            self.keys,
        )
    }
}
