//! `loadgen`: one load generator for om and etcd, so that the two are measured by the same
//! clients in the same run (scripts/bench-vs-etcd starts etcd and calls this). Every client
//! issues sequential committed writes: om `set_node_monitor` through the wire client, etcd
//! 256 B puts through gRPC; clients are spread over the three members of each cluster. For
//! each concurrency it prints writes/s, p50 and p99 of both, and the ratio of throughputs.

mod etcd;
mod om;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use stats::Level;

#[derive(Debug, Parser)]
#[command(about = "Drives om and etcd with the same clients and prints both")]
struct Args {
    /// The om binary (release build) whose daemons to start.
    #[arg(long)]
    om_bin: Option<PathBuf>,
    /// Where the om roots go (default: a temporary directory, removed at the end).
    #[arg(long)]
    om_base: Option<PathBuf>,
    /// etcd client endpoints, comma separated (host:port).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Concurrent clients per level, comma separated.
    #[arg(long, default_value = "1,64", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Seconds measured per level and system.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of load before the measure starts, per level and system.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Connections (sessions or gRPC channels) per level, at most.
    #[arg(long, default_value_t = om::CONNS)]
    conns: usize,
}

fn cell(l: Option<&Level>, f: impl Fn(&Level) -> String) -> String {
    l.map_or("-".into(), f)
}

fn print_table(rows: &[(usize, Option<Level>, Option<Level>)]) {
    println!(
        "{:<7} | {:>11} {:>9} {:>9} | {:>13} {:>10} {:>10} | {:>7}",
        "clients",
        "om writes/s",
        "om p50",
        "om p99",
        "etcd writes/s",
        "etcd p50",
        "etcd p99",
        "om/etcd"
    );
    for (c, o, e) in rows {
        let ratio = match (o, e) {
            (Some(o), Some(e)) if e.per_second > 0.0 => {
                format!("{:.2}x", o.per_second / e.per_second)
            }
            _ => "-".into(),
        };
        println!(
            "{:<7} | {:>11} {:>9} {:>9} | {:>13} {:>10} {:>10} | {:>7}",
            c,
            cell(o.as_ref(), |l| format!("{:.0}", l.per_second)),
            cell(o.as_ref(), |l| format!("{:.2}ms", l.p50_ms)),
            cell(o.as_ref(), |l| format!("{:.2}ms", l.p99_ms)),
            cell(e.as_ref(), |l| format!("{:.0}", l.per_second)),
            cell(e.as_ref(), |l| format!("{:.2}ms", l.p50_ms)),
            cell(e.as_ref(), |l| format!("{:.2}ms", l.p99_ms)),
            ratio
        );
    }
    for (_, o, e) in rows {
        for (name, l) in [("om", o), ("etcd", e)] {
            if let Some(l) = l.as_ref().filter(|l| l.errors > 0) {
                println!(
                    "{name} at {} clients: {} errors ({} writes)",
                    l.clients, l.errors, l.writes
                );
            }
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let warmup = Duration::from_secs(args.warmup);
    let secs = Duration::from_secs(args.seconds);
    let om = match &args.om_bin {
        Some(bin) => {
            eprintln!("starting 3 om daemons ({})", bin.display());
            let om = om::Om::start(bin.clone(), 3, args.om_base.clone()).await?;
            match om.leader().await {
                Some((name, root)) => eprintln!("om leader {name}, root {}", root.display()),
                None => return Err("the om cluster has no leader".into()),
            }
            Some(om)
        }
        None => None,
    };
    let channels = match args.etcd.is_empty() {
        true => None,
        false => Some(etcd::connect(&args.etcd, args.conns.max(1)).await?),
    };
    let mut rows = Vec::new();
    for &c in &args.clients {
        let mut row = (c, None, None);
        if let Some(om) = &om {
            eprintln!("om: {c} clients, {}s", args.seconds);
            row.1 = Some(om.level(c, args.conns, warmup, secs).await);
        }
        if let Some(ch) = &channels {
            eprintln!("etcd: {c} clients, {}s", args.seconds);
            row.2 = Some(etcd::level(ch, c, warmup, secs).await);
        }
        rows.push(row);
    }
    print_table(&rows);
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.om_bin.is_none() && args.etcd.is_empty() {
        eprintln!("loadgen: nothing to drive: give --om-bin, --etcd, or both");
        std::process::exit(2);
    }
    if let Err(e) = run(args).await {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}
