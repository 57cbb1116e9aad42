//! The simulated world of one run: node slots (disk, clock, listener address, running Raft
//! and its inbox), the address book, the network, the recorder the checkers read, and the
//! trace. Shared as `Arc<World>` by every task; each
//! mutex is held only for a few statements and never across an `.await`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use openraft::LogId;
use openraft::ServerState;
use openraft::Vote;
use raft::rpc::AddressedNet;
use raft::rpc::Inbox;
use raft::rpc::RpcCounters;
use raft::Member;
use raft::Node;
use raft::NodeId;
use storage::wal::MemDisk;
use storage::wal::MemDiskFaults;
use storage::wal::WalBackend;
use storage::wal::WalOptions;
use tokio::time::Instant;

use crate::bugs::Bug;
use crate::check::Recorder;
use crate::config::SimConfig;
use crate::net::NetState;
use crate::net::SimTransport;
use crate::net::CLUSTER;
use crate::rng::Rng;
use crate::store::SimDisk;
use crate::store::SimLog;
use crate::store::SimMachine;
use crate::trace::Trace;

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Never started, or left the cluster and had its disk wiped.
    Out,
    /// Running.
    Up,
    /// Crashed; its disk keeps what was synced, and it will be restarted.
    Down,
}

/// A node's wall clock: the epoch plus virtual time, scaled by its drift, plus its offset.
#[derive(Debug, Clone)]
pub struct Clock {
    /// Added to the clock, ms: within ±5 min at start, moved by clock-jump faults.
    pub offset_ms: i64,
    /// Rate error in parts per million of elapsed virtual time (within ±5%).
    pub drift_ppm: i64,
}

/// One machine of the pool.
pub struct Slot {
    /// The node's current name (`n2`, or `n2-r1` after it left and rejoined) and Raft id.
    pub name: String,
    /// The Raft id of the current name (`raft::node_id`): a new one after a rejoin.
    pub id: NodeId,
    /// Where it listens (`n2:7002`; a new port after a restart on a new address). The
    /// machine keeps it when it rejoins under a new name, as a host keeps its port.
    pub addr: String,
    /// How many times it moved its listener.
    pub moves: u32,
    /// The address checks' counters, over all incarnations.
    pub counters: Arc<RpcCounters>,
    /// How many times it left the cluster (and got a new identity).
    pub rejoins: u32,
    /// The simulated disk: survives crashes, replaced by an empty one when the node leaves.
    pub disk: MemDisk,
    /// Crashes of this slot so far (each draws its outcome from its own stream).
    pub crashes: u64,
    /// The incarnation allowed to touch the disk and the network (0: none).
    pub live: Arc<AtomicU64>,
    /// Incarnations started so far.
    pub incarnation: u64,
    /// The running Raft node (`None` while down or out).
    pub node: Option<Node>,
    /// The running incarnation's receiving side (what the transport delivers to).
    pub inbox: Option<Inbox>,
    /// Where the node is in its life.
    pub status: Status,
    /// The node's wall clock, kept across crashes.
    pub clock: Clock,
}

/// Everything of one run.
pub struct World {
    /// What the seed decided.
    pub cfg: SimConfig,
    /// The virtual instant the run began: the origin of `now_us` and trace times.
    pub start: Instant,
    /// Slot labels (`n1`..`n5`): who the trace lines are about.
    pub names: Vec<String>,
    /// Every identity ever given: Raft id -> (slot, name).
    idents: Mutex<BTreeMap<NodeId, (usize, String)>>,
    /// Network parameters, blocked links and the message stream (lock with `net()`).
    pub net: Mutex<NetState>,
    /// One slot per machine, indexed like `names` (lock with `slots()`).
    pub slots: Mutex<Vec<Slot>>,
    /// Listener address -> the slot listening there (when it is up).
    book: Mutex<BTreeMap<String, usize>>,
    /// What the checkers record (lock with `rec()`).
    pub rec: Mutex<Recorder>,
    trace: Mutex<Trace>,
    seq: AtomicU64,
    /// Set when the fault phase ends: tasks the faults spawned stop there.
    pub faults_over: AtomicBool,
    /// Address corruptions still being written (the heal waits for them: one landing after
    /// the faults end would be a fault inside the heal).
    pub corrupting: std::sync::atomic::AtomicUsize,
}

/// Wall-clock epoch of every node's clock (ms): 2023-11-14.
const EPOCH_MS: i64 = 1_700_000_000_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("sim lock poisoned")
}

impl World {
    /// The world of a run of `cfg`, every node out; `keep_trace` keeps the trace lines.
    pub fn new(cfg: SimConfig, keep_trace: bool) -> Arc<World> {
        let names: Vec<String> = (1..=cfg.nodes).map(|i| format!("n{i}")).collect();
        let idents = names
            .iter()
            .enumerate()
            .map(|(i, n)| (raft::node_id(n), (i, n.clone())))
            .collect();
        let mut clock_rng = Rng::stream(cfg.seed, "clock");
        let slots = names
            .iter()
            .enumerate()
            .map(|(idx, name)| {
                let skewed = clock_rng.chance(0.7);
                Slot {
                    name: name.clone(),
                    id: raft::node_id(name),
                    addr: base_addr(idx, 0),
                    moves: 0,
                    counters: Arc::default(),
                    inbox: None,
                    rejoins: 0,
                    disk: new_disk(&cfg, idx),
                    crashes: 0,
                    live: Arc::new(AtomicU64::new(0)),
                    incarnation: 0,
                    node: None,
                    status: Status::Out,
                    clock: Clock {
                        offset_ms: if skewed {
                            clock_rng.between(0, 600_000) as i64 - 300_000
                        } else {
                            0
                        },
                        drift_ppm: if skewed {
                            clock_rng.between(0, 100_000) as i64 - 50_000
                        } else {
                            0
                        },
                    },
                }
            })
            .collect();
        let book = (0..cfg.nodes).map(|i| (base_addr(i, 0), i)).collect();
        Arc::new(World {
            book: Mutex::new(book),
            net: Mutex::new(NetState::new(&cfg)),
            rec: Mutex::new(Recorder::new(cfg.nodes)),
            trace: Mutex::new(Trace::new(keep_trace)),
            cfg,
            start: Instant::now(),
            names,
            idents: Mutex::new(idents),
            slots: Mutex::new(slots),
            seq: AtomicU64::new(0),
            faults_over: AtomicBool::new(false),
            corrupting: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The bug planted in this run, if any.
    pub fn bug(&self) -> Option<Bug> {
        self.cfg.bug
    }

    /// Virtual microseconds since the start of the run.
    pub fn now_us(&self) -> u64 {
        Instant::now().duration_since(self.start).as_micros() as u64
    }

    /// Appends an event to the trace.
    pub fn ev(&self, who: &str, what: fmt::Arguments<'_>) {
        let us = self.now_us();
        lock(&self.trace).event(us, who, what);
    }

    /// Locks the trace (the run reads its hash and lines at the end).
    pub fn trace(&self) -> MutexGuard<'_, Trace> {
        lock(&self.trace)
    }

    /// Locks the recorder (briefly: never across an `.await`).
    pub fn rec(&self) -> MutexGuard<'_, Recorder> {
        lock(&self.rec)
    }

    /// Locks the network state.
    pub fn net(&self) -> MutexGuard<'_, NetState> {
        lock(&self.net)
    }

    /// Locks the node slots.
    pub fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        lock(&self.slots)
    }

    /// A total order of client invocations and returns (finer than virtual time).
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Locks the address book: listener address -> the slot listening there.
    pub fn book(&self) -> MutexGuard<'_, BTreeMap<String, usize>> {
        lock(&self.book)
    }

    /// Node `idx`'s membership record as it should be: its current name and address.
    pub fn member(&self, idx: usize) -> Member {
        let s = &self.slots()[idx];
        Member::new(s.name.clone(), s.addr.clone())
    }

    /// Node `idx` moves its listener to a new port: the address book follows at once,
    /// the cluster's records only once the node announces it (`membership::set_addr`).
    pub fn relisten(&self, idx: usize) -> String {
        let (old, new) = {
            let mut slots = self.slots();
            let s = &mut slots[idx];
            s.moves += 1;
            let new = base_addr(idx, s.moves);
            (std::mem::replace(&mut s.addr, new.clone()), new)
        };
        let mut book = self.book();
        book.remove(&old);
        book.insert(new.clone(), idx);
        drop(book);
        self.ev(
            &self.names[idx],
            format_args!("listens at {new} (was {old})"),
        );
        new
    }

    /// The slot whose current identity is `id` (an old identity reaches nobody).
    pub fn index_of(&self, id: NodeId) -> Option<usize> {
        self.slots().iter().position(|s| s.id == id)
    }

    /// Node `idx`'s current Raft id.
    pub fn id(&self, idx: usize) -> NodeId {
        self.slots()[idx].id
    }

    /// Node `idx`'s current name.
    pub fn ident(&self, idx: usize) -> String {
        self.slots()[idx].name.clone()
    }

    /// The name of a Raft id, current or past.
    pub fn name_of(&self, id: NodeId) -> String {
        match lock(&self.idents).get(&id) {
            Some((_, name)) => name.clone(),
            None if id == 0 => "-".into(),
            None => "?".into(),
        }
    }

    /// A vote as the trace writes it: `T<term>-<leader>`, then `:c` if committed.
    pub fn vote(&self, v: &Vote<NodeId>) -> String {
        format!(
            "T{}-{}{}",
            v.leader_id.term,
            self.name_of(v.leader_id.node_id),
            if v.committed { ":c" } else { "" }
        )
    }

    /// A log id as the trace writes it: `term-leader-index`, or `-` for none.
    pub fn log_id(&self, l: &Option<LogId<NodeId>>) -> String {
        match l {
            None => "-".into(),
            Some(l) => format!(
                "{}-{}-{}",
                l.leader_id.term,
                self.name_of(l.leader_id.node_id),
                l.index
            ),
        }
    }

    /// The running node `idx`, if it is up.
    pub fn node(&self, idx: usize) -> Option<Node> {
        self.slots()[idx].node.clone()
    }

    /// Where node `idx` is in its life.
    pub fn status(&self, idx: usize) -> Status {
        self.slots()[idx].status
    }

    /// Whether `inc` is still the live incarnation of node `idx`.
    pub fn is_live(&self, idx: usize, inc: u64) -> bool {
        self.slots()[idx].live.load(Ordering::Relaxed) == inc
    }

    /// Node `idx`'s wall clock, in ms since the Unix epoch: skewed and drifting.
    pub fn wall_ms(&self, idx: usize) -> u64 {
        let elapsed = (self.now_us() / 1000) as i64;
        let c = self.slots()[idx].clock.clone();
        (EPOCH_MS + c.offset_ms + elapsed + elapsed * c.drift_ppm / 1_000_000).max(0) as u64
    }

    /// The up node that believes it leads with the highest vote, if any.
    pub fn leader(&self) -> Option<(usize, Node)> {
        let mut best: Option<(Vote<NodeId>, usize, Node)> = None;
        for i in 0..self.names.len() {
            let Some(n) = self.node(i) else { continue };
            let m = n.metrics();
            if m.state == ServerState::Leader && best.as_ref().is_none_or(|(v, _, _)| m.vote > *v) {
                best = Some((m.vote, i, n));
            }
        }
        best.map(|(_, i, n)| (i, n))
    }

    /// Starts (or restarts) node `idx` on its disk.
    pub async fn start(self: &Arc<World>, idx: usize) -> Result<Node, String> {
        let (inc, mem, live, id) = {
            let mut slots = self.slots();
            let s = &mut slots[idx];
            assert!(s.node.is_none(), "{} started twice", s.name);
            s.incarnation += 1;
            s.live.store(s.incarnation, Ordering::Relaxed);
            (s.incarnation, s.disk.clone(), s.live.clone(), s.id)
        };
        let name = self.names[idx].clone();
        let opts = WalOptions {
            segment_size: self.cfg.segment_size,
        };
        let wal = WalBackend::open(mem.clone(), opts)
            .await
            .map_err(|e| format!("{name}: opening the log: {e}"))?;
        let disk = SimDisk::new(wal, live, inc, self.bug());
        let (mut log, sm, machine) =
            storage::open(disk).map_err(|e| format!("{name}: open: {e}"))?;
        let on_disk = openraft::RaftLogReader::try_get_log_entries(&mut log, ..)
            .await
            .map_err(|e| format!("{name}: reading the log: {e}"))?;
        let restored = machine.read(|d| d.last_applied);
        let config = machine.read(|d| d.membership.membership().get_joint_config().clone());
        self.rec()
            .on_start_state(idx, &on_disk, restored.map(|l| l.index), config);
        if let Some(at) = restored {
            let h = crate::check::state_hash(&machine);
            self.rec()
                .on_state(self, idx, at.index, h, "restored snapshot");
        }
        self.ev(
            &name,
            format_args!(
                "start incarnation {inc} (snapshot {})",
                self.log_id(&restored)
            ),
        );
        let log = SimLog::new(self.clone(), idx, inc, log);
        let sm = SimMachine::new(self.clone(), idx, inc, sm, machine.clone());
        let counters = self.slots()[idx].counters.clone();
        let book = Arc::new(raft::rpc::AddressBook::default());
        let net = AddressedNet::new(SimTransport::new(self.clone(), idx, inc), CLUSTER, id)
            .with_counters(counters.clone())
            .with_address_book(book.clone());
        let mut inbox = Inbox::new(CLUSTER, id, counters);
        if self.bug() == Some(Bug::RpcTargetUnchecked) {
            inbox = inbox.without_address_check();
        }
        let node = Node::start(id, self.cfg.raft_config(), net, log, sm, machine)
            .await
            .map_err(|e| format!("{name}: start: {e}"))?
            .with_address_book(book);
        {
            let mut slots = self.slots();
            let s = &mut slots[idx];
            // Opening the log takes (virtual) time: the operator may have wiped the disk
            // meanwhile (this incarnation then ran on the old one).
            if s.live.load(Ordering::Relaxed) != inc || !s.disk.is_same(&mem) {
                // Crashed or wiped while starting.
                if s.live.load(Ordering::Relaxed) == inc {
                    s.live.store(0, Ordering::Relaxed);
                }
                drop(slots);
                let n = node.clone();
                tokio::spawn(async move { n.shutdown().await });
                return Err(format!("{name} crashed while starting"));
            }
            s.node = Some(node.clone());
            s.inbox = Some(inbox);
            s.status = Status::Up;
        }
        tokio::spawn(watch_metrics(self.clone(), idx, inc, node.clone()));
        Ok(node)
    }

    /// Power cut on node `idx`: its Raft is dropped, unsynced writes are lost, and nothing of
    /// the old incarnation reaches the disk or the network again.
    pub fn crash(&self, idx: usize, why: &str) {
        let (node, disk, n) = {
            let mut slots = self.slots();
            let s = &mut slots[idx];
            if s.status != Status::Up {
                return;
            }
            s.live.store(0, Ordering::Relaxed);
            s.status = Status::Down;
            s.inbox = None;
            s.crashes += 1;
            (s.node.take(), s.disk.clone(), s.crashes)
        };
        let seed = Rng::stream(self.cfg.seed, &format!("crash.n{}.{n}", idx + 1)).next_u64();
        let r = disk.crash(seed);
        self.rec().stats.crashes += 1;
        self.ev(
            &self.names[idx],
            format_args!(
                "crash ({why}; unsynced writes: {} lost, {} kept{}{}; {} names reverted)",
                r.lost,
                r.kept,
                if r.torn { ", one torn" } else { "" },
                if r.flipped { ", a bit flipped" } else { "" },
                r.names_reverted
            ),
        );
        if let Some(n) = node {
            tokio::spawn(async move { n.shutdown().await });
        }
    }

    /// Node `idx` left the cluster: stop it and give it an empty disk, as `leave` does; it
    /// will rejoin as `nK-rJ` (a new Raft id) unless names are reused.
    pub fn wipe(&self, idx: usize) {
        self.crash(idx, "left the cluster");
        let renamed = {
            let mut slots = self.slots();
            let s = &mut slots[idx];
            s.disk = new_disk(&self.cfg, idx);
            s.status = Status::Out;
            s.rejoins += 1;
            if self.cfg.reuse_names {
                None
            } else {
                s.name = format!("{}-r{}", self.names[idx], s.rejoins);
                s.id = raft::node_id(&s.name);
                Some((s.id, s.name.clone()))
            }
        };
        if let Some((id, name)) = renamed {
            lock(&self.idents).insert(id, (idx, name.clone()));
            self.ev(&self.names[idx], format_args!("will rejoin as {name}"));
        }
        self.rec().on_wipe(idx);
        self.ev(&self.names[idx], format_args!("disk wiped"));
    }
}

/// Node `idx`'s listener address after `moves` moves: `n2:7002`, then `n2:7102`, ... (no
/// two nodes ever share one; clients' `SetNodeAddr` commands use ports 1000..2000).
pub fn base_addr(idx: usize, moves: u32) -> String {
    format!("n{}:{}", idx + 1, 7001 + idx as u32 + 100 * moves)
}

/// Node `idx`'s disk: the seed's sync delay, scaled by the node's own `disk.nK` stream (one
/// node may have a slow disk), and at most an eighth of the minimum election timeout: a vote
/// takes a sync (two when the log starts a segment), and a disk slower than the election
/// timeout stalls elections for good (seeds 381 and 852 found that), which is a matter of
/// configuration, not of the code. A crash tears, loses and corrupts unsynced writes as
/// the seed says.
fn new_disk(cfg: &SimConfig, idx: usize) -> MemDisk {
    let factor = *Rng::stream(cfg.seed, &format!("disk.n{}", idx + 1)).pick(&[1, 1, 2, 5]);
    let sync_us = (cfg.sync_delay_us * factor).min(cfg.election_min_ms * 1000 / 8);
    let disk = MemDisk::new();
    disk.set_faults(MemDiskFaults {
        sync_delay: std::time::Duration::from_micros(sync_us),
        lying_sync: cfg.bug == Some(Bug::LyingSync),
        keep_unsynced: cfg.disk_keep_unsynced,
        tear: cfg.disk_tear,
        flip: cfg.disk_flip,
    });
    disk
}

/// Follows one incarnation's metrics: role changes go to the trace, leaderships to the
/// recorder.
async fn watch_metrics(world: Arc<World>, idx: usize, inc: u64, node: Node) {
    let mut rx = node.raft.metrics();
    drop(node);
    let name = world.names[idx].clone();
    let mut last: Option<(ServerState, Vote<NodeId>)> = None;
    let mut last_membership = None;
    loop {
        if !world.is_live(idx, inc) {
            return;
        }
        let (state, vote, leader, membership) = {
            let m = rx.borrow_and_update();
            (
                m.state,
                m.vote,
                m.current_leader,
                m.membership_config.clone(),
            )
        };
        if last_membership.as_ref() != Some(&membership) {
            let configs: Vec<String> = membership
                .membership()
                .get_joint_config()
                .iter()
                .map(|c| {
                    c.iter()
                        .map(|id| world.name_of(*id))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect();
            let learners: Vec<String> = membership
                .membership()
                .learner_ids()
                .map(|id| world.name_of(id))
                .collect();
            world.ev(
                &name,
                format_args!(
                    "membership at {}: voters [{}] learners [{}]",
                    world.log_id(membership.log_id()),
                    configs.join("] + ["),
                    learners.join(",")
                ),
            );
            last_membership = Some(membership);
        }
        if last != Some((state, vote)) {
            last = Some((state, vote));
            world.ev(
                &name,
                format_args!(
                    "{state:?} vote {} leader {}",
                    world.vote(&vote),
                    leader.map_or("-".into(), |l| world.name_of(l))
                ),
            );
            if state == ServerState::Leader {
                world.rec().on_leader(idx, inc, vote);
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
