//! `sim`: runs seeds of the deterministic simulator. See README.md.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use clap::Parser;
use sim::Bug;
use sim::SeedResult;

/// Runs the cluster under seeded hostile schedules and checks it.
#[derive(Parser, Debug)]
#[command(name = "sim", version)]
struct Args {
    /// Run this seed (repeatable).
    #[arg(long)]
    seed: Vec<u64>,
    /// Run a range of seeds: `A..B` (B excluded) or `A..=B` (repeatable).
    #[arg(long, value_parser = parse_range)]
    seeds: Vec<(u64, u64)>,
    /// Run one seed and print its whole trace (to stdout, or to --trace-file).
    #[arg(long, value_name = "SEED")]
    replay: Option<u64>,
    /// Where --replay writes the trace.
    #[arg(long)]
    trace_file: Option<PathBuf>,
    /// Run every seed of this range twice and compare the trace hashes.
    #[arg(long, value_parser = parse_range, value_name = "A..B")]
    determinism: Option<(u64, u64)>,
    /// Plant a deliberate bug (see --list-bugs).
    #[arg(long, value_name = "NAME")]
    inject_bug: Option<Bug>,
    /// Succeed only if some seed fails (stops at the first failure); for --inject-bug.
    #[arg(long)]
    expect_failure: bool,
    /// List the --inject-bug variants.
    #[arg(long)]
    list_bugs: bool,
    /// Wiped nodes rejoin under their old name (same Raft id): reproduces a known bug.
    #[arg(long)]
    reuse_names: bool,
    /// Do not also run the seeds of regressions.txt.
    #[arg(long)]
    no_regressions: bool,
    /// Do not append failing seeds to regressions.txt.
    #[arg(long)]
    no_record: bool,
    /// Worker threads (default: the number of CPUs).
    #[arg(long, short)]
    jobs: Option<usize>,
    /// Print only failures and the summary.
    #[arg(long, short)]
    quiet: bool,
    /// Also print each seed's configuration and counters.
    #[arg(long, short)]
    verbose: bool,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{s:?} is not a range like 1..1000 or 1..=1000");
    if let Some((a, b)) = s.split_once("..=") {
        let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        return Ok((a, b.checked_add(1).ok_or_else(bad)?));
    }
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

fn regressions_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("regressions.txt")
}

/// Seeds of regressions.txt: one per line, `#` starts a comment.
fn regressions() -> Vec<u64> {
    let text = std::fs::read_to_string(regressions_path()).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split('#').next())
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|w| w.parse().ok())
        .collect()
}

fn record_regression(seed: u64, why: &str) {
    if regressions().contains(&seed) {
        return;
    }
    let line = format!(
        "{seed} # {}\n",
        why.lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(120)
            .collect::<String>()
    );
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(regressions_path())
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = r {
        eprintln!("could not record seed {seed} in regressions.txt: {e}");
    }
}

fn replay_command(r: &SeedResult, args: &Args) -> String {
    let bug = r
        .bug
        .map_or(String::new(), |b| format!(" --inject-bug {b}"));
    let rejoin = if args.reuse_names {
        " --reuse-names"
    } else {
        ""
    };
    format!(
        "cd sim && cargo run --release -- --replay {}{bug}{rejoin}",
        r.seed
    )
}

fn print_result(r: &SeedResult, args: &Args) {
    if args.expect_failure && args.quiet {
        // The summary line says which seed caught the bug and how.
        return;
    }
    let status = if r.ok() { "ok" } else { "FAILED" };
    if !r.ok() || !args.quiet {
        println!(
            "seed {} {status} {}n {:016x} ({:.1}s virtual, {} events)",
            r.seed,
            r.nodes,
            r.hash,
            r.virtual_ms as f64 / 1000.0,
            r.events
        );
    }
    if args.verbose {
        println!("  config: {}", r.config);
        println!("  stats: {:?}", r.stats);
    }
    if !r.ok() {
        for f in &r.failures {
            println!("  {}", f.replace('\n', "\n  "));
        }
        println!("  replay: {}", replay_command(r, args));
    }
}

/// Runs `seeds` on `jobs` threads; calls `each` on the results in seed-list order.
fn run_all(
    seeds: &[u64],
    opts: &sim::Options,
    jobs: usize,
    stop_at_failure: bool,
    mut each: impl FnMut(&SeedResult),
) -> Vec<SeedResult> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(usize, SeedResult)>();
    let mut out: Vec<Option<SeedResult>> = vec![None; seeds.len()];
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn_scoped(s, move || loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { return };
                    let r = sim::run_seed(seed, opts);
                    if stop_at_failure && !r.ok() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    if tx.send((i, r)).is_err() {
                        return;
                    }
                })
                .expect("spawn worker");
        }
        drop(tx);
        let mut printed = 0;
        for (i, r) in rx {
            out[i] = Some(r);
            while let Some(Some(r)) = out.get(printed) {
                each(r);
                printed += 1;
            }
        }
        // With an early stop, results after a gap are printed too.
        for r in out.iter().skip(printed).flatten() {
            each(r);
        }
    });
    out.into_iter().flatten().collect()
}

/// One line of counters summed over the seeds.
fn print_totals(results: &[SeedResult]) {
    let mut t = sim::check::Stats::default();
    let mut virt = 0;
    for r in results {
        let s = &r.stats;
        virt += r.virtual_ms;
        t.messages += s.messages;
        t.lost += s.lost;
        t.duplicated += s.duplicated;
        t.crashes += s.crashes;
        t.partitions += s.partitions;
        t.clock_jumps += s.clock_jumps;
        t.joins += s.joins;
        t.leaves += s.leaves;
        t.snapshots_installed += s.snapshots_installed;
        t.writes_ok += s.writes_ok;
        t.writes_unknown += s.writes_unknown;
        t.reads_ok += s.reads_ok;
        t.leaderships += s.leaderships;
        t.shared_terms += s.shared_terms;
        t.log_ids_reused += s.log_ids_reused;
        t.lin_ops += s.lin_ops;
        t.lin_unchecked_keys += s.lin_unchecked_keys;
        t.misdelivered += s.misdelivered;
        t.rpc_refused += s.rpc_refused;
        t.rpc_misdelivered += s.rpc_misdelivered;
        t.addr_faults += s.addr_faults;
        t.addr_repairs += s.addr_repairs;
        t.relistens += s.relistens;
        t.forwarded += s.forwarded;
        t.forwards_duplicated += s.forwards_duplicated;
        t.heal_leader_ms = t.heal_leader_ms.max(s.heal_leader_ms);
        t.heal_commit_ms = t.heal_commit_ms.max(s.heal_commit_ms);
    }
    println!(
        "totals: {:.0}s virtual; {} messages ({} lost, {} duplicated), {} crashes, {} partition changes, \
         {} clock jumps, {} joins, {} leaves, {} snapshots installed; {} writes acknowledged ({} unknown), \
         {} linearizable reads, {} register ops checked ({} keys inconclusive); {} leaderships, \
         {} terms with two leaders, {} log ids reused; addressing: {} misdelivered, {} refused by inboxes, \
         {} answers discarded by senders, {} address records corrupted, {} announced, {} relistens, \
         {} proposals forwarded ({} twice); heal: leader within {}ms, commit within {}ms (worst)",
        virt as f64 / 1000.0,
        t.messages,
        t.lost,
        t.duplicated,
        t.crashes,
        t.partitions,
        t.clock_jumps,
        t.joins,
        t.leaves,
        t.snapshots_installed,
        t.writes_ok,
        t.writes_unknown,
        t.reads_ok,
        t.lin_ops,
        t.lin_unchecked_keys,
        t.leaderships,
        t.shared_terms,
        t.log_ids_reused,
        t.misdelivered,
        t.rpc_refused,
        t.rpc_misdelivered,
        t.addr_faults,
        t.addr_repairs,
        t.relistens,
        t.forwarded,
        t.forwards_duplicated,
        t.heal_leader_ms,
        t.heal_commit_ms,
    );
}

fn options(args: &Args) -> sim::Options {
    sim::Options {
        bug: args.inject_bug,
        keep_trace: false,
        reuse_names: args.reuse_names,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list_bugs {
        for b in Bug::ALL {
            println!("{:<14} {}", b.name(), b.describe());
        }
        return ExitCode::SUCCESS;
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    if let Some(seed) = args.replay {
        let opts = sim::Options {
            keep_trace: true,
            ..options(&args)
        };
        let r = sim::run_seed(seed, &opts);
        let text = r.trace.join("\n") + "\n";
        match &args.trace_file {
            Some(p) => {
                if let Err(e) = std::fs::write(p, text) {
                    eprintln!("writing {}: {e}", p.display());
                    return ExitCode::FAILURE;
                }
            }
            None => print!("{text}"),
        }
        println!("config: {}", r.config);
        println!("stats: {:?}", r.stats);
        print_result(
            &r,
            &Args {
                quiet: false,
                verbose: false,
                ..args
            },
        );
        return if r.ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }

    let started = Instant::now();
    if let Some((a, b)) = args.determinism {
        let seeds: Vec<u64> = (a..b).flat_map(|s| [s, s]).collect();
        let results = run_all(&seeds, &options(&args), jobs, false, |_| {});
        let mut hashes: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for r in &results {
            hashes.entry(r.seed).or_default().push(r.hash);
        }
        let mut bad = 0;
        for (seed, h) in &hashes {
            if h.windows(2).all(|w| w[0] == w[1]) {
                if !args.quiet {
                    println!("seed {seed} deterministic {:016x}", h[0]);
                }
            } else {
                bad += 1;
                println!(
                    "seed {seed} NOT DETERMINISTIC: {}",
                    h.iter()
                        .map(|x| format!("{x:016x}"))
                        .collect::<Vec<_>>()
                        .join(" vs ")
                );
            }
        }
        println!(
            "determinism: {} seeds run twice, {} diverged ({:.1}s)",
            hashes.len(),
            bad,
            started.elapsed().as_secs_f64()
        );
        return if bad == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }

    let mut seeds: Vec<u64> = args.seed.clone();
    for (a, b) in &args.seeds {
        seeds.extend(*a..*b);
    }
    if seeds.is_empty() {
        seeds.extend(1..101);
    }
    let mut seen = BTreeSet::new();
    if args.inject_bug.is_none() && !args.no_regressions {
        let reg = regressions();
        if !reg.is_empty() && !args.quiet {
            println!("also replaying {} seeds from regressions.txt", reg.len());
        }
        seeds.extend(reg);
    }
    seeds.retain(|s| seen.insert(*s));

    let stop_at_failure = args.expect_failure;
    let results = run_all(&seeds, &options(&args), jobs, stop_at_failure, |r| {
        print_result(r, &args)
    });
    let failed: Vec<&SeedResult> = results.iter().filter(|r| !r.ok()).collect();
    let secs = started.elapsed().as_secs_f64();
    if !args.quiet || args.verbose {
        print_totals(&results);
    }
    println!(
        "{} passed, {} failed ({:.1}s, {:.1} seeds/s on {jobs} threads)",
        results.len() - failed.len(),
        failed.len(),
        secs,
        results.len() as f64 / secs
    );
    if args.expect_failure {
        return match failed.first() {
            Some(r) => {
                println!(
                    "expected failure: {} caught at seed {}: {}",
                    args.inject_bug.map_or("-".into(), |b| b.to_string()),
                    r.seed,
                    r.failures[0].lines().next().unwrap_or("")
                );
                ExitCode::SUCCESS
            }
            None => {
                println!("expected a failure, but every seed passed: the checkers missed the bug");
                ExitCode::FAILURE
            }
        };
    }
    if !failed.is_empty() && !args.no_record && args.inject_bug.is_none() {
        for r in &failed {
            record_regression(r.seed, &r.failures[0]);
        }
        println!("failing seeds recorded in sim/regressions.txt");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
