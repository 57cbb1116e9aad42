//! `om bench`: committed commands per second and latency at several concurrencies, and the
//! failover time, measured over the real wire against real daemons.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use super::local::LocalCluster;
use super::CliError;
use super::Format;
use crate::api::options;
use crate::api::options::DaemonStatus;
use crate::api::status::OwnStatus;
use crate::config::NodeConfig;
use crate::config::Paths;
use crate::wire::ClientOptions;
use crate::wire::Doc;
use crate::wire::Keyring;

/// `om bench` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Start a local cluster of this many nodes (else use the node under --root).
    #[arg(long)]
    nodes: Option<usize>,
    /// Seconds per concurrency level.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent clients, comma separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Skip the failover measurement.
    #[arg(long)]
    no_failover: bool,
}

struct Target {
    keyring: Keyring,
    sender: String,
    leader_addr: String,
    leader: String,
}

async fn find_target(paths: &Paths) -> Result<Target, CliError> {
    let (_, cfg) =
        NodeConfig::load(&paths.node_conf()).map_err(|e| CliError::new(e.to_string()))?;
    let status = DaemonStatus::default();
    let st = super::call_typed(paths, &status, Duration::from_secs(10)).await?;
    let leader = st
        .cluster
        .leader
        .ok_or_else(|| CliError::new("the cluster has no leader"))?;
    let leader_addr = st
        .nodes
        .get(&leader)
        .map(|m| m.address.clone())
        .ok_or_else(|| CliError::new(format!("no address for leader {leader}")))?;
    Ok(Target {
        keyring: cfg.keyring(),
        sender: cfg.name,
        leader_addr,
        leader,
    })
}

/// The results of one concurrency level.
#[derive(serde::Serialize)]
struct Level {
    clients: usize,
    committed: usize,
    errors: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// How long the cluster took to commit again after its leader was killed.
#[derive(serde::Serialize)]
struct Failover {
    ms: f64,
    attempts: u32,
    via: String,
}

/// What `om bench` prints with `--format json`.
#[derive(serde::Serialize)]
struct Report {
    levels: Vec<Level>,
    failover: Option<Failover>,
}

/// Results of one concurrency level.
fn level(clients: usize, lat: &mut [Duration], elapsed: Duration, errors: u64) -> Level {
    lat.sort();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    Level {
        clients,
        committed: lat.len(),
        errors,
        per_second: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lat.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    }
}

/// The write the benchmark commits: `node`'s monitor thawed (a no-op change).
fn thaw(node: &str) -> Doc {
    let req = options::SetNodeMonitor {
        node: Some(node.to_string()),
        local_expect: Some(raft::state::NodeExpect::Thawed),
        ..Default::default()
    };
    Doc::pack(&req).expect("options pack")
}

/// Sessions the clients of one level share, at most.
const CONNS: usize = 16;

async fn run_level(t: &Target, clients: usize, secs: u64) -> Level {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    // Clients share up to CONNS pipelined sessions, as etcd's benchmark shares --conns: one
    // session per client from one address would run into listener.max_conns_per_addr and
    // listener.handshake_rate, which exist to stop exactly that.
    let sessions: Vec<_> = (0..clients.clamp(1, CONNS))
        .map(|_| ClientOptions::new(&t.leader_addr, t.keyring.clone(), &t.sender).build())
        .collect();
    for i in 0..clients {
        let client = sessions[i % sessions.len()].clone();
        let write = thaw(&t.leader);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = client
                    .request("set_node_monitor", write.clone(), Duration::from_secs(5))
                    .await;
                match r {
                    Ok(resp) if resp.is_ok() => lat.push(t0.elapsed()),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    level(clients, &mut lat, start.elapsed(), errors)
}

/// Runs the benchmark.
pub(super) async fn run(args: BenchArgs, format: Format) -> Result<(), CliError> {
    let root = std::env::var_os("OSVC_ROOT").map(PathBuf::from);
    let mut cluster = None;
    let paths = match args.nodes {
        Some(n) => {
            if n < 1 {
                return Err(CliError::new("--nodes must be at least 1"));
            }
            let bin = std::env::current_exe().map_err(|e| CliError::new(e.to_string()))?;
            let mut c =
                LocalCluster::prepare(bin, n, None).map_err(|e| CliError::new(e.to_string()))?;
            eprintln!(
                "starting a local {n}-node cluster under {}",
                c.base().display()
            );
            c.start_all().await.map_err(CliError::new)?;
            c.join_all(&mut |l| eprintln!("{l}"))
                .await
                .map_err(CliError::new)?;
            let p = c.nodes[0].paths.clone();
            cluster = Some(c);
            p
        }
        None => Paths::new(root.unwrap_or_else(|| PathBuf::from("/"))),
    };
    let target = find_target(&paths).await?;
    eprintln!("leader {} at {}", target.leader, target.leader_addr);
    let mut levels = Vec::new();
    for &c in &args.clients {
        eprintln!("{c} clients for {}s ...", args.seconds);
        levels.push(run_level(&target, c, args.seconds).await);
    }
    let mut failover = None;
    if !args.no_failover {
        match cluster.as_mut() {
            Some(c) if c.nodes.len() >= 3 => failover = Some(measure_failover(c, &target).await?),
            _ => eprintln!("failover is measured only on a cluster started with --nodes 3 or more"),
        }
    }
    let out = Report { levels, failover };
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default()),
        Format::Table => {
            println!(
                "{:>8} {:>10} {:>12} {:>9} {:>9} {:>9} {:>7}",
                "clients", "committed", "commands/s", "p50 ms", "p99 ms", "max ms", "errors"
            );
            for l in &out.levels {
                println!(
                    "{:>8} {:>10} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
                    l.clients, l.committed, l.per_second, l.p50_ms, l.p99_ms, l.max_ms, l.errors
                );
            }
            if let Some(f) = &out.failover {
                println!(
                    "failover: leader killed -> next committed write in {:.0} ms",
                    f.ms
                );
            }
        }
    }
    Ok(())
}

/// Kills the leader and times the first write committed by a survivor.
async fn measure_failover(c: &mut LocalCluster, t: &Target) -> Result<Failover, CliError> {
    let survivors: Vec<(String, String)> = c
        .nodes
        .iter()
        .filter(|n| n.name != t.leader)
        .map(|n| (n.name.clone(), n.addr()))
        .collect();
    let clients: Vec<_> = survivors
        .iter()
        .map(|(_, addr)| Arc::new(ClientOptions::new(addr, t.keyring.clone(), &t.sender).build()))
        .collect();
    // Warm the connections so the measure is Raft's, not TCP's.
    for cl in &clients {
        let _ = cl
            .request(
                "daemon_status",
                Doc::pack(&OwnStatus::ASK).expect("a bool packs"),
                Duration::from_secs(2),
            )
            .await;
    }
    eprintln!("killing leader {} ...", t.leader);
    let start = Instant::now();
    c.node(&t.leader).expect("leader is local").kill();
    let mut attempts = 0;
    loop {
        for (cl, (name, _)) in clients.iter().zip(&survivors) {
            attempts += 1;
            let r = cl
                .request("set_node_monitor", thaw(name), Duration::from_millis(500))
                .await;
            if matches!(&r, Ok(resp) if resp.is_ok()) {
                let ms = start.elapsed().as_secs_f64() * 1000.0;
                let via = name.clone();
                return Ok(Failover { ms, attempts, via });
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(CliError::new(
                "no write committed within 30s of the leader's death",
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
