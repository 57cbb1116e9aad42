//! The nemesis: plays a schedule's faults on a running cluster, one step at a time (fault,
//! hold, undo, quiet gap), and logs when each started and ended, relative to the run.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cluster::FaultCluster;
use crate::schedule::Fault;
use crate::schedule::Step;
use crate::schedule::Target;
use crate::workload::History;

/// What the nemesis did.
#[derive(Debug, Default)]
pub(crate) struct Log {
    /// `(ms into the run, what)`.
    pub lines: Vec<(u64, String)>,
    /// Faults injected, by kind.
    pub counts: BTreeMap<&'static str, u64>,
    /// `(node, ms into the run)`: when a killed node was started again.
    pub restarts: Vec<(String, u64)>,
}

impl Log {
    fn note(&mut self, h: &History, what: String) {
        self.lines.push((h.now_us() / 1000, what));
    }
}

/// The kind of a fault, as counted.
pub(crate) fn kind(f: &Fault) -> &'static str {
    match f {
        Fault::Partition { .. } => "partition",
        Fault::IsolateLeader => "isolate-leader",
        Fault::Bridge { .. } => "bridge",
        Fault::OneWay { .. } => "one-way",
        Fault::Flap { .. } => "flap",
        Fault::Degrade { .. } => "loss-delay-reorder",
        Fault::Kill { .. } => "kill-9",
        Fault::Pause { .. } => "sigstop",
        Fault::ClockJump { .. } => "clock-jump",
        Fault::DiskFull { .. } => "disk-full",
    }
}

/// Plays `steps` on `c`.
pub(crate) async fn play(c: &mut FaultCluster, steps: &[Step], h: &History) -> Result<Log, String> {
    let mut log = Log::default();
    for step in steps {
        let what = apply(c, &step.fault, step.hold_ms, h, &mut log).await?;
        *log.counts.entry(kind(&step.fault)).or_default() += 1;
        log.note(h, format!("healed: {what}"));
        tokio::time::sleep(Duration::from_millis(step.gap_ms)).await;
    }
    Ok(log)
}

async fn resolve(c: &FaultCluster, t: Target) -> usize {
    match t {
        Target::Node(i) => i,
        Target::Leader => c.leader().await.unwrap_or(0),
    }
}

/// Cuts `side` from every other node, both ways.
fn cut(c: &FaultCluster, side: &[usize]) -> Result<(), String> {
    for a in side {
        for b in (0..c.nodes.len()).filter(|b| !side.contains(b)) {
            c.net().block(*a, b)?;
            c.net().block(b, *a)?;
        }
    }
    Ok(())
}

/// Applies a fault, holds it for `hold_ms`, undoes it; returns its description.
async fn apply(
    c: &mut FaultCluster,
    f: &Fault,
    hold_ms: u64,
    h: &History,
    log: &mut Log,
) -> Result<String, String> {
    let hold = Duration::from_millis(hold_ms);
    let name = |c: &FaultCluster, i: usize| c.nodes[i].name.clone();
    let what = match f {
        Fault::Partition { side } => {
            cut(c, side)?;
            format!("partition {:?} | rest", names(c, side))
        }
        Fault::IsolateLeader => {
            let l = resolve(c, Target::Leader).await;
            cut(c, &[l])?;
            format!("leader {} isolated", name(c, l))
        }
        Fault::Bridge { bridge } => {
            let others: Vec<usize> = (0..c.nodes.len()).filter(|i| i != bridge).collect();
            for a in &others {
                for b in others.iter().filter(|b| *b != a) {
                    c.net().block(*a, *b)?;
                }
            }
            format!("bridge: only {} sees everyone", name(c, *bridge))
        }
        Fault::OneWay { from, to } => {
            for t in to {
                c.net().block(*from, *t)?;
            }
            format!("one-way: {} -> {:?} dropped", name(c, *from), names(c, to))
        }
        Fault::Flap { side, period_ms } => {
            let what = format!("flapping {:?} every {period_ms} ms", names(c, side));
            log.note(h, what.clone());
            flap(c, side, *period_ms, hold).await?;
            return Ok(what);
        }
        Fault::Degrade { node, how } => {
            c.net().degrade(*node, *how)?;
            format!("{} link degraded {how:?}", name(c, *node))
        }
        Fault::Kill { target } => {
            let i = resolve(c, *target).await;
            c.nodes[i].kill();
            format!("{} killed (-9, with its services)", name(c, i))
        }
        Fault::Pause { target } => {
            let i = resolve(c, *target).await;
            c.nodes[i].pause(true)?;
            format!("{} daemon stopped (SIGSTOP) {hold_ms} ms", name(c, i))
        }
        Fault::ClockJump { node, offset_s } => {
            c.nodes[*node].set_clock_offset(*offset_s)?;
            format!("{} wall clock jumped {offset_s:+} s", name(c, *node))
        }
        Fault::DiskFull { node } => {
            let filled = fill(&c.nodes[*node].paths.var_dir())?;
            format!("{} var/ full ({} MiB filler)", name(c, *node), filled >> 20)
        }
    };
    log.note(h, what.clone());
    tokio::time::sleep(hold).await;
    undo(c, f, h, log).await?;
    Ok(what)
}

/// Undoes every fault of the kind of `f` (network faults: all of them).
async fn undo(c: &mut FaultCluster, f: &Fault, h: &History, log: &mut Log) -> Result<(), String> {
    match f {
        Fault::Kill { .. } => {
            let down: Vec<String> = c
                .nodes
                .iter_mut()
                .filter_map(|n| (!n.is_up()).then(|| n.name.clone()))
                .collect();
            restart_dead(c).await?;
            let ms = h.now_us() / 1000;
            log.restarts.extend(down.into_iter().map(|n| (n, ms)));
            Ok(())
        }
        Fault::Pause { .. } => {
            for n in &mut c.nodes {
                if n.is_up() {
                    n.pause(false)?;
                }
            }
            Ok(())
        }
        Fault::ClockJump { node, .. } => c.nodes[*node].set_clock_offset(0),
        Fault::DiskFull { node } => {
            let f = c.nodes[*node].paths.var_dir().join("fill");
            std::fs::remove_file(f).map_err(|e| format!("free the disk: {e}"))
        }
        _ => c.net().heal(),
    }
}

/// Starts every node that is not running.
pub(crate) async fn restart_dead(c: &mut FaultCluster) -> Result<(), String> {
    let bin = c.bin.clone();
    for n in &mut c.nodes {
        if !n.is_up() {
            n.kill();
            n.start(&bin)?;
            n.wait_ready(Duration::from_secs(60)).await?;
        }
    }
    Ok(())
}

async fn flap(
    c: &FaultCluster,
    side: &[usize],
    period_ms: u64,
    hold: Duration,
) -> Result<(), String> {
    let end = tokio::time::Instant::now() + hold;
    let period = Duration::from_millis(period_ms);
    while tokio::time::Instant::now() < end {
        cut(c, side)?;
        tokio::time::sleep(period).await;
        c.net().heal()?;
        tokio::time::sleep(period).await;
    }
    Ok(())
}

/// Writes a filler file in `dir` until the file system is full; returns its size.
pub(crate) fn fill(dir: &std::path::Path) -> Result<u64, String> {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("fill")).map_err(|e| e.to_string())?;
    let chunk = vec![0u8; 1 << 16];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(format!("fill {}: {e}", dir.display())),
        }
    }
    Ok(written)
}

fn names(c: &FaultCluster, idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| c.nodes[i].name.clone()).collect()
}
