//! `om <svc> ...`: service commands, and `om node freeze|thaw|jobs`.
//!
//! Cluster-wide actions (`start`, `stop`, `freeze`, `thaw`, `switch`, `giveback`,
//! `delete`) set the service's `global_expect` and follow its progress until the target is
//! reached or cannot be; `--local` runs the action on this node only.

use std::io::IsTerminal;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use clap::Args;
use clap::Subcommand;

use super::call_as;
use super::call_typed;
use super::print;
use super::CliError;
use super::Exit;
use super::Format;
use super::Result;
use crate::api::options;
use crate::api::options::ProgressState;
use crate::api::Action;
use crate::config::Paths;
use crate::model::service::ServiceConfig;
use crate::services::log::format_ts;
use raft::state::GlobalExpect;
use raft::state::NodeExpect;
use raft::state::NodeMonitor;
use raft::state::NodeStatus;

/// `om <svc> ...`
/// `om <svc> ...` (`om service <svc> ...`): what to do with the service.
#[derive(Debug, Subcommand)]
pub enum SvcCmd {
    /// Create the service from an INI config file (`-` reads stdin).
    Create {
        #[arg(long)]
        config: PathBuf,
    },
    /// Edit the service config in $EDITOR and commit it.
    Edit {
        #[command(subcommand)]
        what: EditWhat,
    },
    /// Print the service config or status.
    Print {
        #[command(subcommand)]
        what: PrintWhat,
    },
    /// The service status (same as `print status`).
    Status,
    /// Stop the service everywhere, then remove it.
    Delete(WaitArgs),
    /// Start the service where its topology wants it (`--local`: on this node).
    Start(ActArgs),
    /// Stop the service everywhere (it is also frozen); `--local`: on this node.
    Stop(ActArgs),
    /// Freeze the service: the orchestrator and the monitors leave it alone.
    Freeze(ActArgs),
    /// Thaw the service.
    Thaw(ActArgs),
    /// Move a failover service to node N.
    Switch {
        /// The destination node.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Move the service back to its preferred node.
    Giveback(WaitArgs),
    /// Abandon the pending global_expect.
    Abort,
    /// Clear start failed / stop failed and the restart counts.
    Clear {
        /// Only on this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Run an instance action (start, stop, restart, status, freeze, thaw) or a task of
    /// the service (`[task#<name>]`, its arguments after the name) on one node.
    Run {
        /// The action, or the name of one of the service's tasks.
        action: String,
        /// A task's arguments, passed through (`om web run compliance fix --moduleset foo`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
        /// The node (default: this one).
        #[arg(long)]
        node: Option<String>,
        /// Submit it as a job and return its id.
        #[arg(long = "async")]
        async_: bool,
        /// Only these resources (comma separated).
        #[arg(long)]
        rid: Option<String>,
        /// Start a failover instance even if another node may run one.
        #[arg(long)]
        force: bool,
    },
    /// The service logs of every node, merged in time order.
    Logs {
        /// Keep printing new lines.
        #[arg(long)]
        follow: bool,
        /// How many past lines.
        #[arg(long, default_value_t = 50)]
        backlog: u64,
        /// Only this node's lines.
        #[arg(long)]
        node: Option<String>,
    },
}

/// What `edit` edits.
#[derive(Debug, Subcommand)]
pub enum EditWhat {
    /// The config, in $EDITOR.
    Config,
}

/// What `print` prints.
#[derive(Debug, Subcommand)]
pub enum PrintWhat {
    /// The config text (its version goes to stderr).
    Config,
    /// Instances, monitors and progress.
    Status,
}

/// How a cluster-wide action is followed.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Return once the request is committed, without following it.
    #[arg(long)]
    no_wait: bool,
    /// How long to follow it.
    #[arg(long, default_value = "300s")]
    timeout: String,
}

/// Where an action runs, and how it is followed.
#[derive(Debug, Args)]
pub struct ActArgs {
    /// Only on this node.
    #[arg(long)]
    local: bool,
    #[command(flatten)]
    wait: WaitArgs,
}

/// `om node jobs ...`
#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// Jobs of a node, oldest first.
    List {
        #[arg(long)]
        node: Option<String>,
    },
    /// A job with its output.
    Show {
        id: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Cancel a running job.
    Cancel {
        id: String,
        #[arg(long)]
        node: Option<String>,
    },
}

fn parse_timeout(t: &str) -> Result<Duration> {
    raft::apply::parse_duration_ms(t)
        .map(Duration::from_millis)
        .ok_or_else(|| {
            CliError::new(format!(
                "--timeout {t:?}: expected a duration such as 90s or 5m"
            ))
        })
}

/// Runs `om <svc> CMD` (parsed as `om service <svc> CMD`).
pub(super) async fn run(paths: &Paths, format: Format, svc: &str, cmd: SvcCmd) -> Result<()> {
    raft::apply::check_name("service", svc)
        .map_err(|e| CliError::new(format!("{e} (or an unknown command: see `om --help`)")))?;
    let t = Duration::from_secs(15);
    match cmd {
        SvcCmd::Create { config } => {
            let text = if config.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| CliError::new(format!("stdin: {e}")))?;
                s
            } else {
                std::fs::read_to_string(&config)
                    .map_err(|e| CliError::new(format!("{}: {e}", config.display())))?
            };
            let req = options::SetServiceConfig {
                svcname: svc.to_string(),
                config: Some(text),
                create: true,
                ..Default::default()
            };
            let data = call_typed(paths, &req, t).await?;
            print(format, &data, |d| {
                format!("{svc} created (config version {})\n", version(d))
            });
            Ok(())
        }
        SvcCmd::Edit {
            what: EditWhat::Config,
        } => edit_config(paths, svc, format).await,
        SvcCmd::Print {
            what: PrintWhat::Config,
        } => {
            let data = call_typed(paths, &service_ref(svc), t).await?;
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&data).unwrap_or_default()
                ),
                Format::Table => {
                    eprintln!("# {svc} config version {}", data.version);
                    print!("{}", data.config);
                }
            }
            Ok(())
        }
        SvcCmd::Print {
            what: PrintWhat::Status,
        }
        | SvcCmd::Status => {
            let req = options::ServiceStatus {
                svcname: svc.to_string(),
                target: None,
            };
            let data = call_typed(paths, &req, t).await?;
            let Some(detail) = &data.detail else {
                return Err(CliError::new(format!("service {svc} does not exist")));
            };
            print(format, &data, |_| status_table(svc, detail));
            Ok(())
        }
        SvcCmd::Delete(w) => set_global(paths, svc, GlobalExpect::Deleted, &w, format).await,
        SvcCmd::Start(a) if a.local => local_action(paths, svc, "start", format).await,
        SvcCmd::Stop(a) if a.local => local_action(paths, svc, "stop", format).await,
        SvcCmd::Freeze(a) if a.local => local_action(paths, svc, "freeze", format).await,
        SvcCmd::Thaw(a) if a.local => local_action(paths, svc, "thaw", format).await,
        SvcCmd::Start(a) => set_global(paths, svc, GlobalExpect::Started, &a.wait, format).await,
        SvcCmd::Stop(a) => set_global(paths, svc, GlobalExpect::Stopped, &a.wait, format).await,
        SvcCmd::Freeze(a) => set_global(paths, svc, GlobalExpect::Frozen, &a.wait, format).await,
        SvcCmd::Thaw(a) => set_global(paths, svc, GlobalExpect::Thawed, &a.wait, format).await,
        SvcCmd::Switch { to, wait } => {
            set_global(paths, svc, GlobalExpect::PlacedAt(to), &wait, format).await
        }
        SvcCmd::Giveback(w) => set_global(paths, svc, GlobalExpect::Placed, &w, format).await,
        SvcCmd::Abort => {
            let data = call_typed(paths, &global_expect(svc, GlobalExpect::Aborted), t).await?;
            match format {
                Format::Json => print(format, &data, |_| String::new()),
                Format::Table => eprintln!("{svc}: pending global_expect aborted"),
            }
            Ok(())
        }
        SvcCmd::Clear { node } => {
            let req = options::Clear {
                svcname: svc.to_string(),
                node,
            };
            let data = call_typed(paths, &req, t).await?;
            print(format, &data, |d| {
                format!("{svc}: cleared ({} field(s) changed)\n", d.outcome.changed)
            });
            Ok(())
        }
        SvcCmd::Run {
            action,
            args,
            node,
            async_,
            rid,
            force,
        } => {
            let mut command = vec![action];
            command.extend(args);
            if let Some(r) = rid {
                command.push("--rid".into());
                command.push(r);
            }
            if force {
                command.push("--force".into());
            }
            let opts = options::ServiceAction {
                svcname: svc.to_string(),
                command: Some(options::Argv::List(command)),
                sync: Some(!async_),
                node,
            };
            let opts = &opts;
            let (action, t) = (Action::ServiceAction, Duration::from_secs(3600));
            if async_ {
                let d: options::ActionSubmitted = call_as(paths, action, opts, t).await?;
                print(format, &d, |d| {
                    let (id, node) = (&d.job_id, &d.node);
                    format!("job {id} submitted on {node}; follow it with `om node jobs show {id} --node {node}`\n")
                });
                return Ok(());
            }
            finish_action(format, &call_as(paths, action, opts, t).await?)
        }
        SvcCmd::Logs {
            follow,
            backlog,
            node,
        } => logs(paths, svc, follow, backlog, node, format).await,
    }
}

/// Prints a synchronous action's output and exits with its status.
fn finish_action(format: Format, data: &options::ActionDone) -> Result<()> {
    let ret = data.ret;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(data).unwrap_or_default()),
        Format::Table => {
            print!("{}", data.out);
            eprint!("{}", data.err);
        }
    }
    if ret != 0 {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        std::process::exit(ret.clamp(1, 255));
    }
    Ok(())
}

async fn local_action(paths: &Paths, svc: &str, verb: &str, format: Format) -> Result<()> {
    let opts = options::ServiceAction {
        svcname: svc.to_string(),
        command: Some(options::Argv::List(vec![verb.to_string()])),
        sync: Some(true),
        node: None,
    };
    let t = Duration::from_secs(3600);
    let data = call_as(paths, Action::ServiceAction, &opts, t).await?;
    finish_action(format, &data)
}

fn service_ref(svc: &str) -> options::ServiceRef {
    options::ServiceRef {
        svcname: svc.to_string(),
        linearizable: false,
    }
}

fn global_expect(svc: &str, target: GlobalExpect) -> options::SetServiceMonitor {
    options::SetServiceMonitor {
        svcname: svc.to_string(),
        global_expect: Some(target),
        ..Default::default()
    }
}

/// The config version a commit reports, `-` when it reports none.
fn version(c: &raft::node::Committed) -> String {
    c.outcome
        .version
        .map_or_else(|| "-".into(), |v| v.to_string())
}

/// What `om <svc> start|stop|switch|...` prints with `--format json`.
#[derive(serde::Serialize)]
struct TargetSet {
    svcname: String,
    global_expect: GlobalExpect,
    /// The log index it was committed at.
    index: u64,
    /// Whether it was reached (false with --no-wait: not waited for).
    reached: bool,
    /// Seconds from the commit to the answer.
    seconds: f64,
    /// Where the service is up once reached.
    up: Vec<String>,
}

/// Sets `global_expect` and follows the service until it is reached or fails.
async fn set_global(
    paths: &Paths,
    svc: &str,
    target: GlobalExpect,
    w: &WaitArgs,
    format: Format,
) -> Result<()> {
    let timeout = parse_timeout(&w.timeout)?;
    let req = global_expect(svc, target.clone());
    let data = call_typed(paths, &req, Duration::from_secs(15)).await?;
    eprintln!(
        "{svc}: global_expect {target} (committed at index {})",
        data.index
    );
    let started = Instant::now();
    // The JSON answer: what was committed, and whether it was reached (not waited for
    // with --no-wait).
    let done = |reached: bool, up: Vec<String>| {
        let out = TargetSet {
            svcname: svc.to_string(),
            global_expect: target.clone(),
            index: data.index,
            reached,
            seconds: started.elapsed().as_secs_f64(),
            up,
        };
        // The progress lines on stderr were the table form.
        print(format, &out, |_| String::new());
        Ok(())
    };
    if w.no_wait {
        return done(false, Vec::new());
    }
    let mut shown: std::collections::BTreeMap<String, String> = Default::default();
    let mut last_reason = String::new();
    let mut seen_target = false;
    let mut cleared_at: Option<Instant> = None;
    loop {
        let req = options::ServiceStatus {
            svcname: svc.to_string(),
            target: Some(target.clone()),
        };
        match call_typed(paths, &req, Duration::from_secs(10)).await {
            Ok(st) => {
                let Some(st) = st.detail else {
                    if target == GlobalExpect::Deleted {
                        eprintln!("{svc}: deleted in {:.1}s", started.elapsed().as_secs_f64());
                        return done(true, Vec::new());
                    }
                    return Err(CliError::new(format!("service {svc} was deleted")));
                };
                for (n, v) in &st.instances {
                    let i = &v.instance;
                    let line = format!(
                        "local_expect {}, status {}, avail {}{}{}",
                        i.local_expect,
                        i.status,
                        i.avail,
                        if i.frozen { ", frozen" } else { "" },
                        match v.node_status {
                            Some(NodeStatus::Idle) | None => String::new(),
                            Some(other) => format!(", node {other}"),
                        }
                    );
                    if shown.get(n) != Some(&line) {
                        eprintln!("  {n}: {line}");
                        shown.insert(n.clone(), line);
                    }
                }
                let reason = st.progress.reason.clone();
                let ge = &st.global_expect;
                if *ge == target {
                    seen_target = true;
                }
                match st.progress.state {
                    ProgressState::Reached => {
                        let up = st.up.join(", ");
                        let where_ = if up.is_empty() {
                            String::new()
                        } else {
                            format!(" (up on {up})")
                        };
                        eprintln!(
                            "{svc}: {target} reached in {:.1}s{where_}",
                            started.elapsed().as_secs_f64()
                        );
                        return done(true, st.up.clone());
                    }
                    ProgressState::Failed => {
                        return Err(CliError::new(format!(
                            "{svc}: {target} cannot be reached: {reason}; see `om {svc} logs`, \
                             `om {svc} clear` to retry, `om {svc} abort` to give up"
                        )));
                    }
                    ProgressState::Idle | ProgressState::Pending => {}
                }
                if !reason.is_empty() && reason != last_reason {
                    eprintln!("  {reason}");
                    last_reason = reason;
                }
                if *ge != target && *ge != GlobalExpect::None {
                    return Err(CliError::new(format!(
                        "{svc}: superseded by global_expect {ge}"
                    )));
                }
                if *ge == GlobalExpect::None && seen_target {
                    // Cleared without our target being reached: someone aborted it.
                    let at = *cleared_at.get_or_insert_with(Instant::now);
                    if at.elapsed() > Duration::from_secs(3) {
                        return Err(CliError::new(format!("{svc}: {target} was aborted")));
                    }
                }
            }
            Err(e) => eprintln!("  (status: {e})"),
        }
        if started.elapsed() > timeout {
            return Err(CliError::of(
                Exit::Unavailable,
                format!(
                    "{svc}: {target} not reached after {timeout:?}; it stays the target (`om {svc} abort` to give up)"
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn status_table(svc: &str, d: &options::ServiceDetail) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{svc}  {}  orchestrate={}  avail {}  global_expect {}  (config v{})",
        d.topology, d.orchestrate, d.avail, d.global_expect, d.version
    );
    if d.progress.state != ProgressState::Idle {
        let _ = writeln!(
            out,
            "  progress: {} {}",
            d.progress.state, d.progress.reason
        );
    }
    let _ = writeln!(
        out,
        "  {:<12} {:<12} {:<7} {:<13} {:<13} {:<7} {:<7} restarts",
        "node", "node status", "frozen", "local_expect", "status", "avail", "inst frz"
    );
    let yes = |b: bool| if b { "yes" } else { "-" };
    for (n, v) in &d.instances {
        let i = &v.instance;
        let restarts: u32 = i.restarts.values().sum();
        let node_status = v.node_status.map_or("-".to_string(), |s| s.to_string());
        let _ = writeln!(
            out,
            "  {:<12} {:<12} {:<7} {:<13} {:<13} {:<7} {:<7} {restarts}",
            n,
            node_status,
            yes(v.node_frozen == Some(true)),
            i.local_expect.to_string(),
            i.status.to_string(),
            i.avail.to_string(),
            yes(i.frozen),
        );
    }
    out
}

async fn edit_config(paths: &Paths, svc: &str, format: Format) -> Result<()> {
    let data = call_typed(paths, &service_ref(svc), Duration::from_secs(15)).await?;
    let (original, edited) = (data.config, data.version);
    let file = tempfile::Builder::new()
        .prefix(&format!("{svc}."))
        .suffix(".conf")
        .tempfile()
        .map_err(|e| CliError::new(format!("temporary file: {e}")))?;
    std::fs::write(file.path(), &original).map_err(|e| CliError::new(e.to_string()))?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    loop {
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(file.path())
            .status()
            .map_err(|e| CliError::new(format!("cannot run the editor {editor:?}: {e}")))?;
        if !status.success() {
            return Err(CliError::new(format!(
                "the editor {editor:?} failed ({status}); nothing changed"
            )));
        }
        let text =
            std::fs::read_to_string(file.path()).map_err(|e| CliError::new(e.to_string()))?;
        if text == original {
            edited_text(format, svc, false, Some(edited));
            return Ok(());
        }
        if let Err(e) = ServiceConfig::parse(&text) {
            eprintln!("om: invalid config: {e}");
            if std::io::stdin().is_terminal() {
                eprint!("edit again? [Y/n] ");
                let mut answer = String::new();
                let _ = std::io::stdin().read_line(&mut answer);
                if !answer.trim().eq_ignore_ascii_case("n") {
                    continue;
                }
            }
            return Err(CliError::new("nothing changed"));
        }
        let req = options::SetServiceConfig {
            svcname: svc.to_string(),
            config: Some(text),
            version: Some(edited),
            ..Default::default()
        };
        let r = call_typed(paths, &req, Duration::from_secs(15)).await?;
        edited_text(format, svc, true, r.outcome.version);
        return Ok(());
    }
}

/// What `om <svc> edit config` did: on stderr for people, on stdout with `--format json`.
fn edited_text(format: Format, svc: &str, changed: bool, version: Option<u64>) {
    let v = version.map_or_else(|| "-".to_string(), |v| v.to_string());
    match format {
        Format::Json => {
            let done =
                serde_json::json!({ "service": svc, "changed": changed, "version": version });
            print(format, &done, |_| String::new());
        }
        Format::Table if changed => eprintln!("{svc}: config version {v}"),
        Format::Table => eprintln!("{svc}: no change"),
    }
}

async fn logs(
    paths: &Paths,
    svc: &str,
    follow: bool,
    backlog: u64,
    node: Option<String>,
    format: Format,
) -> Result<()> {
    let mut warned = std::collections::BTreeSet::new();
    let mut opts = options::ServiceLogs {
        svcname: svc.to_string(),
        backlog: Some(backlog),
        node,
        local: false,
        cursor: None,
        wait_ms: None,
    };
    let action = Action::ServiceLogs;
    let mut data: options::Logs = call_as(paths, action, &opts, Duration::from_secs(20)).await?;
    loop {
        for (n, e) in &data.errors {
            if warned.insert(n.clone()) {
                eprintln!("om: no logs from {n}: {e}");
            }
        }
        for l in &data.lines {
            match format {
                Format::Json => println!("{}", serde_json::to_string(l).unwrap_or_default()),
                Format::Table => {
                    let msg = l.msg.replace('\n', "\n    ");
                    println!("{} {} {:<5} {msg}", format_ts(l.t), l.node, l.lvl);
                }
            }
        }
        if !follow {
            return Ok(());
        }
        let cursor = std::mem::take(&mut data.cursor);
        opts.backlog = None;
        opts.cursor = Some(options::LogCursor::PerNode(cursor.clone()));
        opts.wait_ms = Some(10_000);
        data = match call_as(paths, action, &opts, Duration::from_secs(30)).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("om: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                options::Logs::default()
            }
        };
        // A node that did not answer keeps its place.
        for (n, at) in cursor {
            data.cursor.entry(n).or_insert(at);
        }
    }
}

/// `om node freeze|thaw`: sets this node's monitor local_expect and waits until it is done.
pub(super) async fn node_freeze(paths: &Paths, freeze: bool, format: Format) -> Result<()> {
    let want = if freeze {
        NodeExpect::Frozen
    } else {
        NodeExpect::Thawed
    };
    let req = options::SetNodeMonitor {
        local_expect: Some(want),
        ..Default::default()
    };
    call_typed(paths, &req, Duration::from_secs(15)).await?;
    let me = crate::config::NodeConfig::load(&paths.node_conf())
        .map_err(|e| CliError::new(e.to_string()))?
        .1
        .name;
    let started = Instant::now();
    loop {
        let req = options::NodeRef {
            node: Some(me.clone()),
        };
        let t = Duration::from_secs(10);
        let m: NodeMonitor = call_as(paths, Action::GetNodeMonitor, &req, t).await?;
        if m.frozen == freeze && m.status == NodeStatus::Idle {
            let done = serde_json::json!({ "node": me, "local_expect": want, "monitor": m });
            match format {
                Format::Json => print(format, &done, |_| String::new()),
                Format::Table => eprintln!("{me}: {want}"),
            }
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(CliError::new(format!(
                "{me} is not {want} after 60s (status {})",
                m.status
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `om node jobs ...`
pub(super) async fn jobs(paths: &Paths, cmd: JobsCmd, format: Format) -> Result<()> {
    let t = Duration::from_secs(20);
    match cmd {
        JobsCmd::List { node } => {
            let req = options::Jobs { node, id: None };
            let data: options::JobList = call_as(paths, Action::JobList, &req, t).await?;
            print(format, &data, |d| {
                use std::fmt::Write;
                let mut out = format!(
                    "{:<10} {:<8} {:<12} {:<20} {:<10} {:<4} submitted\n",
                    "id", "node", "service", "command", "state", "ret"
                );
                for j in &d.jobs {
                    let ret = j.ret.map_or("-".to_string(), |r| r.to_string());
                    let _ = writeln!(
                        out,
                        "{:<10} {:<8} {:<12} {:<20} {:<10} {:<4} {}",
                        j.id,
                        j.node,
                        j.svc,
                        j.command.join(" "),
                        j.state.to_string(),
                        ret,
                        format_ts(j.submitted_ms)
                    );
                }
                out
            });
            Ok(())
        }
        JobsCmd::Show { id, node } => {
            let opts = options::Jobs { node, id: Some(id) };
            let data: options::JobShown = call_as(paths, Action::JobShow, &opts, t).await?;
            print(format, &data, |d| {
                let j = &d.job;
                let ret = j.ret.map_or("-".to_string(), |r| r.to_string());
                let mut text = format!(
                    "job {} on {}: {} {} -> {} (ret {ret})\n",
                    j.id,
                    j.node,
                    j.svc,
                    j.command.join(" "),
                    j.state
                );
                if !d.out.is_empty() {
                    text.push_str(&format!("--- out\n{}\n", d.out.trim_end()));
                }
                if !d.err.is_empty() {
                    text.push_str(&format!("--- err\n{}\n", d.err.trim_end()));
                }
                text
            });
            Ok(())
        }
        JobsCmd::Cancel { id, node } => {
            let opts = options::Jobs { node, id: Some(id) };
            let data: options::JobCanceled = call_as(paths, Action::JobCancel, &opts, t).await?;
            print(format, &data, |d| format!("job {} canceled\n", d.job.id));
            Ok(())
        }
    }
}

/// One row of `om svc ls`.
#[derive(serde::Serialize)]
struct ServiceRow {
    name: String,
    global_expect: GlobalExpect,
    /// The nodes where its instance is up.
    up: Vec<String>,
    /// The nodes with an instance.
    instances: Vec<String>,
}

/// `om svc ls`: every service, its cluster-wide target and where it is up.
pub(super) async fn list(paths: &Paths, format: Format) -> Result<()> {
    let all = options::ServiceFilter::default();
    let t = Duration::from_secs(10);
    let monitors: std::collections::BTreeMap<String, options::ServiceMonitor> =
        call_as(paths, Action::GetServiceMonitor, &all, t).await?;
    let rows: Vec<ServiceRow> = monitors
        .into_iter()
        .map(|(name, m)| ServiceRow {
            name,
            global_expect: m.global_expect,
            up: m
                .instances
                .iter()
                .filter(|(_, i)| i.avail == raft::state::Avail::Up)
                .map(|(n, _)| n.clone())
                .collect(),
            instances: m.instances.into_keys().collect(),
        })
        .collect();
    print(format, &rows, |rows| {
        use std::fmt::Write;
        let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(7);
        let mut out = format!(
            "{:<w$}  {:<14} {:<24} instances\n",
            "service", "global_expect", "up on"
        );
        for r in rows {
            let up = if r.up.is_empty() {
                "-".to_string()
            } else {
                r.up.join(",")
            };
            let _ = writeln!(
                out,
                "{:<w$}  {:<14} {:<24} {}",
                r.name,
                r.global_expect.to_string(),
                up,
                r.instances.join(",")
            );
        }
        if rows.is_empty() {
            out.push_str("(no services)\n");
        }
        out
    });
    Ok(())
}
