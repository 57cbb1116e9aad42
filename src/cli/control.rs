//! `om node control`: Receptor's control service from the command line, in the shape of
//! `receptorctl` (status, ping, traceroute, reload, work list|submit|results|cancel|release),
//! with human tables or `--format json` (the control service's answers as they are).
//!
//! `--node N` is the node a command is about: a unit is submitted to run on N; the other
//! commands are answered by N's control service, through `connect N control`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use clap::Subcommand;
use serde_json::json;
use serde_json::Value;

use super::print;
use super::CliError;
use super::Format;
use super::Result;
use crate::api::options::WorkUnitStatus;
use crate::api::receptor::Hop;
use crate::api::receptor::PingReply;
use crate::api::receptor::ReceptorStatus;
use crate::api::receptor::Reloaded;
use crate::api::receptor::WorkStarted;
use crate::config::Paths;
use crate::control::session::Session;

/// `om node control ...`
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The node the command is about (default: this node): `work submit` runs the unit
    /// there; the other commands are answered by its control service.
    #[arg(long)]
    pub node: Option<String>,
    #[command(subcommand)]
    pub cmd: ControlCmd,
}

/// The control service commands.
#[derive(Debug, Subcommand)]
pub enum ControlCmd {
    /// The node, its connections and their round trips, and what each node offers.
    Status,
    /// Round trips to a node.
    Ping {
        /// A member, or `localhost`.
        target: String,
        /// How many round trips (1..=1000).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
        /// Pause between them, in ms (0..=60000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=60000))]
        delay_ms: u64,
    },
    /// The path to a node.
    Traceroute {
        /// A member, or `localhost`.
        target: String,
    },
    /// Re-read node.conf now: what was applied and what needs a restart.
    Reload,
    /// Work units.
    Work {
        #[command(subcommand)]
        cmd: WorkCmd,
    },
}

/// `om node control work ...`
#[derive(Debug, Subcommand)]
pub enum WorkCmd {
    /// Units known to the node (one unit with its id).
    List {
        /// One unit.
        unitid: Option<String>,
    },
    /// Submit a unit of a work type (of the node it runs on, --node).
    Submit {
        /// The work type (a `[worktype#<name>]` of that node's node.conf).
        worktype: String,
        /// The payload file, `-` for stdin (default: an empty payload).
        #[arg(long)]
        payload: Option<PathBuf>,
        /// Extra arguments for the command (the work type must have `params = true`).
        #[arg(long)]
        params: Option<String>,
        /// Fail the unit if it has not started within this (e.g. 90s, 10m, 2h).
        #[arg(long)]
        ttl: Option<String>,
        /// Print the unit's results as they come, until it ends.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Print a unit's stdout from a byte offset, following it until the unit ends.
    Results {
        /// The unit.
        unitid: String,
        /// The byte offset to start from.
        #[arg(long, default_value_t = 0)]
        startpos: u64,
    },
    /// Cancel units (their commands are killed).
    Cancel {
        /// The units.
        #[arg(required = true)]
        unitids: Vec<String>,
    },
    /// Delete units (canceled first if needed).
    Release {
        /// Forget them here even if the node they run on cannot be reached.
        #[arg(long)]
        force: bool,
        /// The units.
        #[arg(required = true)]
        unitids: Vec<String>,
    },
}

const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `om node control`.
pub(super) async fn run(paths: &Paths, args: ControlArgs, format: Format) -> Result<()> {
    let node = args.node;
    match args.cmd {
        ControlCmd::Work {
            cmd:
                WorkCmd::Submit {
                    worktype,
                    payload,
                    params,
                    ttl,
                    follow,
                },
        } => {
            submit(
                paths,
                node,
                (worktype, payload, params, ttl),
                follow,
                format,
            )
            .await
        }
        ControlCmd::Work {
            cmd: WorkCmd::Results { unitid, startpos },
        } => {
            if node.is_some() {
                return Err(CliError::new(
                    "work results: read a unit's results on the node it was submitted on (no --node)",
                ));
            }
            results(paths, &unitid, startpos).await
        }
        ControlCmd::Ping {
            target,
            count,
            delay_ms,
        } => {
            let mut s = session(paths, node.as_deref()).await?;
            ping(
                &mut s,
                &target,
                count,
                Duration::from_millis(delay_ms),
                format,
            )
            .await
        }
        cmd => {
            let mut s = session(paths, node.as_deref()).await?;
            one_answer(&mut s, cmd, format).await
        }
    }
}

async fn session(paths: &Paths, node: Option<&str>) -> Result<Session> {
    let mut s = Session::open(paths, TIMEOUT).await?;
    if let Some(n) = node.filter(|n| *n != s.node) {
        s.connect(n).await?;
    }
    Ok(s)
}

async fn one_answer(s: &mut Session, cmd: ControlCmd, format: Format) -> Result<()> {
    let work =
        |sub: &str, unitid: &str| json!({"command": "work", "subcommand": sub, "unitid": unitid});
    match cmd {
        ControlCmd::Status => {
            let st: ReceptorStatus = ask(s, &json!({"command": "status"})).await?;
            print(format, &st, status_table);
        }
        ControlCmd::Traceroute { target } => {
            let cmd = json!({"command": "traceroute", "target": target});
            let tr: BTreeMap<String, Hop> = ask(s, &cmd).await?;
            print(format, &tr, traceroute_table);
        }
        ControlCmd::Reload => {
            let r: Reloaded = ask(s, &json!({"command": "reload"})).await?;
            print(format, &r, |r| {
                format!(
                    "Applied: {}\nNeeds a restart: {}\n",
                    words(&r.applied),
                    words(&r.needs_restart)
                )
            });
        }
        ControlCmd::Work {
            cmd: WorkCmd::List { unitid },
        } => {
            let mut c = json!({"command": "work", "subcommand": "list"});
            if let Some(id) = &unitid {
                c["unitid"] = json!(id);
            }
            match unitid {
                Some(id) => {
                    let unit: Option<WorkUnitStatus> = ask(s, &c).await?;
                    let table = unit.iter().map(|u| (id.clone(), u.clone())).collect();
                    print(format, &unit, |_| units_table(&table));
                }
                None => {
                    let units: BTreeMap<String, WorkUnitStatus> = ask(s, &c).await?;
                    print(format, &units, units_table);
                }
            }
        }
        ControlCmd::Work {
            cmd: WorkCmd::Cancel { unitids },
        } => {
            for id in unitids {
                let v = s.command(&work("cancel", &id)).await?;
                print(format, &v, |_| format!("Cancelled {id}\n"));
            }
        }
        ControlCmd::Work {
            cmd: WorkCmd::Release { force, unitids },
        } => {
            let sub = if force { "force-release" } else { "release" };
            for id in unitids {
                let v = s.command(&work(sub, &id)).await?;
                print(format, &v, |_| format!("Released {id}\n"));
            }
        }
        other => unreachable!("served by run: {other:?}"),
    }
    Ok(())
}

async fn ping(
    s: &mut Session,
    target: &str,
    count: u32,
    delay: Duration,
    format: Format,
) -> Result<()> {
    let mut answers = Vec::new();
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(delay).await;
        }
        let p: PingReply = ask(s, &json!({"command": "ping", "target": target})).await?;
        if format == Format::Table {
            match &p {
                PingReply::Reply(p) => println!("Reply from {} in {}", p.from, p.time),
                PingReply::Failed(p) => println!("Error: {}", p.error),
            }
        }
        answers.push(p);
    }
    // The table form was printed reply by reply.
    print(format, &answers, |_| String::new());
    if answers.iter().all(|p| matches!(p, PingReply::Failed(_))) {
        return Err(CliError::new(format!("no reply from {target}")));
    }
    Ok(())
}

async fn submit(
    paths: &Paths,
    node: Option<String>,
    (worktype, payload, params, ttl): (String, Option<PathBuf>, Option<String>, Option<String>),
    follow: bool,
    format: Format,
) -> Result<()> {
    let mut cmd = json!({
        "command": "work", "subcommand": "submit",
        "node": node.unwrap_or_else(|| "localhost".into()), "worktype": worktype,
    });
    if let Some(p) = params {
        cmd["params"] = json!(p);
    }
    if let Some(t) = ttl {
        cmd["ttl"] = json!(t);
    }
    let s = Session::open(paths, TIMEOUT).await?;
    let answer = match payload {
        Some(p) if p.as_os_str() == "-" => s.submit(&cmd, &mut tokio::io::stdin()).await?,
        Some(p) => {
            let mut f = tokio::fs::File::open(&p)
                .await
                .map_err(|e| CliError::new(format!("--payload {}: {e}", p.display())))?;
            s.submit(&cmd, &mut f).await?
        }
        None => s.submit(&cmd, &mut tokio::io::empty()).await?,
    };
    let answer: WorkStarted = serde_json::from_value(answer)
        .map_err(|e| CliError::new(format!("bad answer to work submit: {e}")))?;
    let id = answer.unitid.clone();
    print(format, &answer, |a| {
        format!("Result: {}\nWork unit ID: {id}\n", a.result)
    });
    if follow {
        results(paths, &id, 0).await?;
    }
    Ok(())
}

async fn results(paths: &Paths, unitid: &str, startpos: u64) -> Result<()> {
    let s = Session::open(paths, TIMEOUT).await?;
    s.results(unitid, startpos, &mut tokio::io::stdout())
        .await?;
    Ok(())
}

fn words(list: &[String]) -> String {
    if list.is_empty() {
        "-".into()
    } else {
        list.join(", ")
    }
}

/// Sends `cmd` and decodes its one-line answer.
async fn ask<T: serde::de::DeserializeOwned>(s: &mut Session, cmd: &Value) -> Result<T> {
    let answer = s.command(cmd).await?;
    serde_json::from_value(answer)
        .map_err(|e| CliError::new(format!("bad answer to {}: {e}", cmd["command"])))
}

/// `status` in receptorctl's layout.
pub(super) fn status_table(st: &ReceptorStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Node ID: {}", st.node_id);
    let _ = writeln!(out, "Version: {}", st.version);
    let _ = writeln!(out, "System CPU Count: {}", st.system_cpu_count);
    let _ = writeln!(out, "System Memory MiB: {}\n", st.system_memory_mib);
    let _ = writeln!(out, "{:<12} {:<10}", "Connection", "Cost (ms)");
    for c in &st.connections {
        let _ = writeln!(out, "{:<12} {:<10}", c.node_id, c.cost);
    }
    let _ = writeln!(out, "\n{:<12} Known Connections", "Known Node");
    for (n, conns) in &st.known_connection_costs {
        let list: Vec<String> = conns.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(out, "{n:<12} {{{}}}", list.join(", "));
    }
    let _ = writeln!(out, "\n{:<12} Via", "Route");
    for (n, via) in &st.routing_table {
        let _ = writeln!(out, "{n:<12} {via}");
    }
    let _ = writeln!(
        out,
        "\n{:<12} {:<9} {:<8} {:<21} {:<6} Work Types",
        "Node", "Service", "Type", "Last Seen", "Tags"
    );
    for a in &st.advertisements {
        let types: Vec<String> = a
            .work_commands
            .iter()
            .map(|w| w.work_type.clone())
            .collect();
        let _ = writeln!(
            out,
            "{:<12} {:<9} {:<8} {:<21} {:<6} {}",
            a.node_id,
            a.service,
            "Stream",
            a.time,
            "-",
            words(&types)
        );
    }
    for (n, why) in &st.unreachable {
        let _ = writeln!(out, "\nUnreachable: {n}: {}", why.error);
    }
    out
}

fn traceroute_table(tr: &BTreeMap<String, Hop>) -> String {
    let mut out = String::new();
    let mut hops: Vec<(u64, &Hop)> = tr
        .iter()
        .filter_map(|(k, v)| k.parse().ok().map(|i| (i, v)))
        .collect();
    hops.sort_by_key(|(i, _)| *i);
    for (i, h) in hops {
        match &h.error {
            Some(e) => {
                let _ = writeln!(out, "{i}: {} error: {e}", h.from);
            }
            None => {
                let time = h.time.as_deref().unwrap_or("-");
                let _ = writeln!(out, "{i}: {} in {time}", h.from);
            }
        }
    }
    out
}

fn units_table(units: &BTreeMap<String, WorkUnitStatus>) -> String {
    let mut out = format!(
        "{:<10} {:<8} {:<12} {:<10} {:>10}  Detail\n",
        "Unit", "Node", "Work Type", "State", "Stdout"
    );
    for (id, u) in units {
        let _ = writeln!(
            out,
            "{id:<10} {:<8} {:<12} {:<10} {:>10}  {}",
            u.node, u.work_type, u.state_name, u.stdout_size, u.detail
        );
    }
    out
}
