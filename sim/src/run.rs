//! One run: warm-up, fault phase, heal phase, checks.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use raft::Command;
use raft::ProposeError;
use tokio::time::sleep;
use tokio::time::timeout;
use tokio::time::Instant;

use crate::bugs::Bug;
use crate::check;
use crate::check::Stats;
use crate::config::Options;
use crate::config::SimConfig;
use crate::faults;
use crate::rng::Rng;
use crate::workload;
use crate::world::Status;
use crate::world::World;

/// How long the cluster may take, once the faults stop, to agree on one leader, then to
/// commit a new command, then to bring every member up to it (virtual time, each).
pub const HEAL_BOUND: Duration = Duration::from_secs(10);
/// How long the warm-up may take to assemble the cluster.
const WARMUP_BOUND: Duration = Duration::from_secs(20);

/// What a seed came to.
#[derive(Debug, Clone)]
pub struct SeedResult {
    /// The seed that was run.
    pub seed: u64,
    /// The planted bug, if any (for the replay command).
    pub bug: Option<Bug>,
    /// The trace hash: equal over runs of the same seed (`--determinism`).
    pub hash: u64,
    /// Pool size the seed drew (3 or 5).
    pub nodes: usize,
    /// The checkers' violations, then the run's own failure (liveness, panic); empty: passed.
    pub failures: Vec<String>,
    /// The run's counters.
    pub stats: Stats,
    /// Virtual time the run took, ms (0 after a panic).
    pub virtual_ms: u64,
    /// Trace events written.
    pub events: u64,
    /// The seed's configuration, as `SimConfig`'s `Display` writes it.
    pub config: String,
    /// The trace lines, when `Options::keep_trace` asked for them (empty otherwise).
    pub trace: Vec<String>,
}

impl SeedResult {
    /// Whether the seed passed: no violation and no failure.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

thread_local! {
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Whether this thread is running a seed.
    static IN_RUN: RefCell<bool> = const { RefCell::new(false) };
    /// Woken by the panic hook, so the run ends at the first panic of any task.
    static PANICKED: RefCell<Arc<tokio::sync::Notify>> = RefCell::new(Arc::new(tokio::sync::Notify::new()));
}

/// Installs (once per process) a panic hook that, on a thread running a seed, keeps the
/// first panic message and wakes the run instead of printing; elsewhere it defers to the
/// previous hook.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_RUN.with(|r| *r.borrow()) {
                return previous(info);
            }
            let msg = match info.payload().downcast_ref::<&str>() {
                Some(s) => s.to_string(),
                None => match info.payload().downcast_ref::<String>() {
                    Some(s) => s.clone(),
                    None => "non-string panic".into(),
                },
            };
            let at = info
                .location()
                .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
            if std::env::var_os("SIM_PANICS").is_some() {
                eprintln!(
                    "panic: {msg}{at}\n{}",
                    std::backtrace::Backtrace::force_capture()
                );
            }
            PANIC.with(|p| {
                let mut p = p.borrow_mut();
                if p.is_none() {
                    *p = Some(format!("{msg}{at}"));
                }
            });
            PANICKED.with(|n| n.borrow().notify_one());
        }));
    });
}

/// Runs seed `seed`.
pub fn run_seed(seed: u64, opts: &Options) -> SeedResult {
    let cfg = SimConfig::from_seed(seed, opts);
    let (bug, keep_trace) = (opts.bug, opts.keep_trace);
    let config = cfg.to_string();
    let nodes = cfg.nodes;
    install_panic_hook();
    IN_RUN.with(|r| *r.borrow_mut() = true);
    raft::runtime::seed_thread_rng(Rng::seed_for(seed, "openraft"));
    PANIC.with(|p| p.borrow_mut().take());
    let panicked = Arc::new(tokio::sync::Notify::new());
    PANICKED.with(|n| *n.borrow_mut() = panicked.clone());
    let tokio_seed = Rng::seed_for(seed, "tokio").to_le_bytes();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&tokio_seed))
        .build()
        .expect("tokio runtime");
    let mut world_slot: Option<Arc<World>> = None;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async {
            let w = World::new(cfg, keep_trace);
            world_slot = Some(w.clone());
            // A panicking task (an openraft core, a store) is caught by tokio; the hook wakes
            // this, and the run stops there.
            let r = tokio::select! {
                biased;
                _ = panicked.notified() => {
                    let msg = PANIC.with(|p| p.borrow().clone()).unwrap_or_default();
                    w.ev("FAIL", format_args!("panic: {msg}"));
                    Err(format!("panic: {msg}"))
                }
                r = scenario(&w) => r,
            };
            (r, w.now_us() / 1000)
        })
    }));
    drop(rt);
    raft::runtime::unseed_thread_rng();
    IN_RUN.with(|r| *r.borrow_mut() = false);
    let panic = PANIC.with(|p| p.borrow_mut().take());
    let w = world_slot.expect("the world is built first thing");
    let mut failures = Vec::new();
    let virtual_ms = match outcome {
        Ok((r, ms)) => {
            if let Err(e) = r {
                failures.push(e);
            }
            ms
        }
        Err(_) => {
            failures.push(format!(
                "panic: {}",
                panic.unwrap_or_else(|| "unknown".into())
            ));
            0
        }
    };
    let (stats, violations) = {
        let rec = w.rec();
        (rec.stats.clone(), rec.violations.clone())
    };
    // Violations found on the spot come first: they are usually the cause.
    let mut all = violations;
    all.append(&mut failures);
    let mut trace = w.trace();
    SeedResult {
        seed,
        bug,
        hash: trace.hash(),
        nodes,
        failures: all,
        stats,
        virtual_ms,
        events: trace.events(),
        config,
        trace: trace.take_lines(),
    }
}

async fn scenario(w: &Arc<World>) -> Result<(), String> {
    w.ev(
        "sim",
        format_args!("seed {} bug {:?}: {}", w.cfg.seed, w.cfg.bug, w.cfg),
    );
    timeout(WARMUP_BOUND, warm_up(w))
        .await
        .map_err(|_| format!("warm-up: the cluster did not assemble within {WARMUP_BOUND:?}"))??;

    // Fault phase.
    let base = Instant::now();
    w.ev("sim", format_args!("faults begin"));
    w.net().params = w.cfg.net.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for k in 0..w.cfg.clients {
        workers.push(tokio::spawn(workload::client(w.clone(), k, stop.clone())));
    }
    if w.cfg.membership_gap_ms > 0 {
        workers.push(tokio::spawn(workload::operator(w.clone(), stop.clone())));
    }
    let injector = tokio::spawn(faults::inject(w.clone(), base, faults::schedule(&w.cfg)));
    let watchdog = tokio::spawn(workload::reannounce_when_stale(w.clone()));
    sleep(Duration::from_millis(w.cfg.fault_ms)).await;

    // Heal phase: no new faults, a calm network, everyone restarted.
    injector.abort();
    stop.store(true, Ordering::Relaxed);
    w.faults_over.store(true, Ordering::SeqCst);
    while w.corrupting.load(Ordering::SeqCst) > 0 {
        sleep(Duration::from_millis(5)).await;
    }
    {
        let mut net = w.net();
        net.blocked.clear();
        net.params = crate::config::NetParams::calm();
    }
    w.ev("sim", format_args!("faults end: network healed"));
    for (i, name) in w.names.iter().enumerate() {
        // A Raft core that stopped on a fatal error (openraft 0.9 turns some replication
        // races into one, README "Bugs found") is started again on its store, as the
        // daemon's raft thread does within a second.
        let stopped = w
            .node(i)
            .is_some_and(|n| n.metrics().running_state.is_err());
        if w.status(i) == Status::Up && stopped {
            w.crash(
                i,
                "raft core stopped; restarted on its store as the daemon does",
            );
        }
        if w.status(i) == Status::Down {
            if let Err(e) = w.start(i).await {
                // The operator's last step (the workers are still ending theirs) may have
                // made it leave and wiped its disk meanwhile: it is then out, not ours.
                if w.status(i) != Status::Out {
                    return Err(format!("heal: restarting {name}: {e}"));
                }
                w.ev(name, format_args!("heal: left while restarting: {e}"));
            }
        }
    }
    for h in workers {
        // Every client operation and operator step has a timeout; give them time to end.
        if timeout(Duration::from_secs(60), h).await.is_err() {
            return Err("heal: a client did not finish its last operation".into());
        }
    }
    let healed = heal(w).await;
    watchdog.abort();
    {
        let counters: Vec<_> = w.slots().iter().map(|s| s.counters.clone()).collect();
        let mut rec = w.rec();
        for c in counters {
            rec.stats.rpc_refused += c.refused.load(Ordering::Relaxed);
            rec.stats.rpc_misdelivered += c.misdelivered.load(Ordering::Relaxed);
        }
    }

    let mut rec = w.rec();
    check::final_checks(w, &mut rec);
    healed
}

/// Node 1 bootstraps the cluster; the others join one by one.
async fn warm_up(w: &Arc<World>) -> Result<(), String> {
    let n1 = w.start(0).await?;
    let me = w.member(0);
    n1.initialize(me.clone())
        .await
        .map_err(|e| format!("initialize: {e}"))?;
    while w.leader().is_none() {
        sleep(Duration::from_millis(5)).await;
    }
    let boot = Command::Bootstrap {
        cluster: crate::net::CLUSTER.into(),
        node: me.name.clone(),
        addr: me.addr.clone(),
        at_ms: w.wall_ms(0),
        id: Some(w.id(0)),
    };
    n1.propose(boot)
        .await
        .map_err(|e| format!("bootstrap: {e}"))?;
    for i in 1..w.cfg.nodes {
        while let Err(e) = workload::join(w, i).await {
            w.ev(
                "sim",
                format_args!("warm-up join of {} failed: {e}", w.names[i]),
            );
            sleep(Duration::from_millis(50)).await;
        }
    }
    w.ev("sim", format_args!("cluster assembled"));
    Ok(())
}

/// Members (voters and learners) by the leader's membership config.
fn members(w: &World, leader: &raft::Node) -> BTreeSet<usize> {
    let m = leader.metrics();
    let mem = m.membership_config.membership();
    mem.voter_ids()
        .chain(mem.learner_ids())
        .filter_map(|id| w.index_of(id))
        .collect()
}

/// After the faults: one leader that every member follows, a new command committed, and
/// every member caught up with it, each within [`HEAL_BOUND`].
async fn heal(w: &Arc<World>) -> Result<(), String> {
    // Every node announces its listener address if Raft's record of it is wrong (a
    // corrupted record not repaired yet, or a move not announced yet): the daemon does it
    // at start, so the heal does it before asking anything of the cluster.
    // All at once, as daemons starting on their own do: one node's announcement may need a
    // leader that only another's makes electable.
    let announcing: Vec<_> = (0..w.cfg.nodes)
        .map(|i| {
            let w = w.clone();
            tokio::spawn(async move { timeout(HEAL_BOUND, workload::announce(&w, i, None)).await })
        })
        .collect();
    for (i, h) in announcing.into_iter().enumerate() {
        if !matches!(h.await, Ok(Ok(_))) {
            return Err(format!(
                "liveness: {} could not announce its address within {HEAL_BOUND:?} of the faults ending",
                w.names[i]
            ));
        }
    }
    let t0 = Instant::now();
    let deadline = t0 + HEAL_BOUND;
    let leader = loop {
        if let Some((l, node)) = w.leader() {
            let ms = members(w, &node);
            let agreed = ms.iter().all(|i| {
                w.node(*i)
                    .is_some_and(|n| n.metrics().current_leader == Some(w.id(l)))
            });
            if agreed && ms.contains(&l) {
                break l;
            }
        }
        if Instant::now() >= deadline {
            let views: Vec<String> = (0..w.cfg.nodes)
                .map(|i| match w.node(i) {
                    None => format!("{} {:?}", w.names[i], w.status(i)),
                    Some(n) => {
                        let m = n.metrics();
                        format!(
                            "{} {:?} {} leader {}",
                            w.names[i],
                            m.state,
                            w.vote(&m.vote),
                            m.current_leader.map_or("-".into(), |l| w.name_of(l))
                        )
                    }
                })
                .collect();
            return Err(format!(
                "liveness: no leader followed by every member within {HEAL_BOUND:?} of the faults ending ({})",
                views.join("; ")
            ));
        }
        sleep(Duration::from_millis(5)).await;
    };
    let t1 = Instant::now();
    w.rec().stats.heal_leader_ms = (t1 - t0).as_millis() as u64;
    w.ev("sim", format_args!("healed: {} leads", w.names[leader]));

    // A new command must commit.
    let deadline = t1 + HEAL_BOUND;
    let mut target = leader;
    let probe = Command::SetClusterParam {
        key: "sim.heal".into(),
        value: Some(w.cfg.seed.to_string()),
    };
    let index = loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "liveness: no command committed within {HEAL_BOUND:?} of a leader emerging"
            ));
        }
        let Some(node) = w.node(target) else {
            return Err(format!("heal: {} is not up", w.names[target]));
        };
        match timeout(deadline - Instant::now(), node.propose(probe.clone())).await {
            Err(_) => continue,
            Ok(Ok(c)) => break c.index,
            Ok(Err(ProposeError::NotLeader {
                leader_id: Some(l), ..
            })) => {
                target = w.index_of(l).unwrap_or(target);
                sleep(Duration::from_millis(5)).await;
            }
            Ok(Err(e)) => {
                w.ev("sim", format_args!("heal probe: {e}"));
                sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let t2 = Instant::now();
    w.rec().stats.heal_commit_ms = (t2 - t1).as_millis() as u64;
    w.ev("sim", format_args!("heal probe committed at {index}"));

    // Every member catches up, and they all hold the same state.
    let deadline = t2 + HEAL_BOUND;
    loop {
        // Leadership may still change hands (openraft 0.9 has no pre-vote: a node that was cut
        // off campaigns with a higher term and deposes the leader); only the bound matters.
        let Some((_, lnode)) = w.leader() else {
            if Instant::now() >= deadline {
                return Err(format!(
                    "liveness: no leader {HEAL_BOUND:?} after the heal probe committed"
                ));
            }
            sleep(Duration::from_millis(5)).await;
            continue;
        };
        let ms = members(w, &lnode);
        let lagging: Vec<&str> = ms
            .iter()
            .filter(|i| {
                w.node(**i)
                    .is_none_or(|n| n.metrics().last_applied.is_none_or(|l| l.index < index))
            })
            .map(|i| w.names[*i].as_str())
            .collect();
        if lagging.is_empty() {
            let states: BTreeSet<(u64, u64)> = ms
                .iter()
                .filter_map(|i| w.node(*i))
                .map(|n| {
                    n.read_machine(|d| {
                        (
                            d.last_applied.map_or(0, |l| l.index),
                            crate::rng::fnv1a(&rmp_serde::to_vec(&d.cluster).expect("serializes")),
                        )
                    })
                })
                .collect();
            let indexes: BTreeSet<u64> = states.iter().map(|s| s.0).collect();
            if indexes.len() == 1 {
                if states.len() != 1 {
                    return Err("state machine safety: members differ after converging".into());
                }
                break;
            }
        } else if Instant::now() >= deadline {
            return Err(format!(
                "liveness: {} did not apply the heal probe within {HEAL_BOUND:?}",
                lagging.join(", ")
            ));
        }
        if Instant::now() >= deadline {
            return Err("liveness: members did not converge to one applied index".into());
        }
        sleep(Duration::from_millis(5)).await;
    }
    w.ev("sim", format_args!("converged"));
    // The leader's role is settled by now; note it for the trace.
    if let Some((l, n)) = w.leader() {
        let m = n.metrics();
        debug_assert_eq!(m.state, ServerState::Leader);
        w.ev(
            "sim",
            format_args!("final leader {} {}", w.names[l], w.vote(&m.vote)),
        );
    }
    Ok(())
}
