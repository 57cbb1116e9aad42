//! The command line: parses arguments, talks to the local daemon over the control socket,
//! prints tables or JSON, and turns every error into one clear message.

mod backup;
mod bench;
mod configuration;
mod consent;
mod control;
mod demo;
pub mod local;
mod nodeconf;
pub mod render;
mod rotation;
mod svc;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;

use crate::api::options;
use crate::api::options::SenderDetail;
use crate::api::status::OwnStatus;
use crate::api::Action;
use crate::config::Paths;
use crate::control::ControlClient;
use crate::wire::Doc;

/// `om`: cluster agent.
#[derive(Debug, Parser)]
#[command(
    name = "om",
    version,
    about = "Cluster agent daemon and its command line",
    after_help = "Services: om <svc> create|start|stop|freeze|thaw|switch|giveback|abort|clear|run|logs|status|print config|edit config|delete\n(`om <svc> ...` is `om service <svc> ...`; a service named like a command is reached that way)"
)]
pub struct Cli {
    /// Root directory for etc/ and var/ (default: $OSVC_ROOT, else /).
    #[arg(long, global = true, env = "OSVC_ROOT", default_value = "/")]
    pub root: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The command.
    #[command(subcommand)]
    pub cmd: Top,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human tables.
    Table,
    /// JSON, for scripts.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Top {
    /// Node and daemon commands.
    Node {
        /// The subcommand.
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Cluster-wide commands.
    Cluster {
        /// The subcommand.
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Start a local 3-node cluster on loopback, show it, kill its leader, show it again.
    Demo {
        /// Stop after the show instead of running until Ctrl-C.
        #[arg(long)]
        exit: bool,
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Measure committed commands per second, latency and failover time.
    Bench(bench::BenchArgs),
    /// Print om's version.
    Version,
    /// Print a shell completion script: `om completion bash > /etc/bash_completion.d/om`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `om man > /usr/local/share/man/man1/om.1`.
    Man,
    /// Commands on all services (`om svc ls`); `svc` is not a service name here.
    #[command(name = "svc")]
    Services {
        /// The subcommand.
        #[command(subcommand)]
        cmd: ServicesCmd,
    },
    /// `om <svc> CMD`, written here in full: the commands on one service
    /// (`om <svc> --help`). `om` reads a first word that is no command as a service name.
    Service {
        /// The service.
        #[arg(value_name = "SVC")]
        svc: String,
        /// What to do with it.
        #[command(subcommand)]
        cmd: svc::SvcCmd,
    },
}

/// `om svc ...`
#[derive(Debug, Subcommand)]
pub enum ServicesCmd {
    /// List every service: its cluster-wide target and where it is up.
    Ls,
}

/// `om node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Daemon control.
    Daemon {
        /// The subcommand.
        #[command(subcommand)]
        cmd: DaemonCmd,
    },
    /// Print the cluster's applied events (`--follow` to keep printing new ones).
    Events(EventsArgs),
    /// Set a node.conf parameter (validated; the daemon applies it live).
    Set {
        /// SECTION.KEY, e.g. listener.port.
        #[arg(long)]
        param: String,
        /// The new value.
        #[arg(long)]
        value: String,
    },
    /// Print a node.conf parameter's value (or its default).
    Get {
        /// SECTION.KEY, e.g. listener.port.
        #[arg(long)]
        param: String,
    },
    /// Remove a node.conf parameter (back to its default).
    Unset {
        /// SECTION.KEY, e.g. listener.port.
        #[arg(long)]
        param: String,
    },
    /// `om node print config`: print node.conf.
    Print {
        /// The word `config`.
        what: String,
    },
    /// `om node edit config`: edit node.conf with $EDITOR, validated before it is saved.
    Edit {
        /// The word `config`.
        what: String,
    },
    /// Run the node's queued actions now (sends the empty packet to the local listener).
    Dequeue {
        /// The word `actions`.
        what: String,
    },
    /// Receptor's control service: status, ping, traceroute, reload, work units.
    Control(control::ControlArgs),
    /// Freeze this node: its monitor starts nothing by orchestration.
    Freeze,
    /// Thaw this node.
    Thaw,
    /// Release this node (the agent API's agent_standby; om3's and Nomad's `drain`): stop
    /// its instances, move failover services elsewhere, stay a member; waits until its
    /// instances are down.
    #[command(visible_alias = "drain")]
    Standby {
        /// How long to wait for the instances to stop (seconds).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=600))]
        wait: u64,
    },
    /// Back to normal duty after `standby` (agent_welcome; `undrain`).
    #[command(visible_alias = "undrain")]
    Welcome,
    /// Asynchronous service actions (`om <svc> run ACTION --async`).
    Jobs {
        /// The subcommand.
        #[command(subcommand)]
        cmd: svc::JobsCmd,
    },
}

/// `om node events` options.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep printing new events (and wait through a daemon restart).
    #[arg(long)]
    follow: bool,
    /// Start after this sequence number.
    #[arg(long)]
    since: Option<u64>,
    /// Only events of this kind.
    #[arg(long, value_enum)]
    kind: Option<crate::api::options::EventKind>,
    /// Only changes about this node.
    #[arg(long)]
    node: Option<String>,
    /// Only changes about this service.
    #[arg(long)]
    service: Option<String>,
    /// Only changes whose path starts with this (e.g. `services.web.instances`).
    #[arg(long)]
    path: Option<String>,
}

/// `om cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Rotate the cluster secret without downtime: add, then use, then remove.
    Secret {
        /// The subcommand.
        #[command(subcommand)]
        cmd: rotation::SecretCmd,
    },
    /// The cluster's configuration as one document: services and parameters.
    Config {
        /// The subcommand.
        #[command(subcommand)]
        cmd: configuration::ConfigCmd,
    },
    /// Backups of the cluster state, and rebuilding after losing a majority.
    Snapshot {
        /// The subcommand.
        #[command(subcommand)]
        cmd: backup::SnapshotCmd,
    },
    /// Cluster parameters and join approvals.
    #[command(flatten)]
    Param(consent::ParamCmd),
}

/// `om node daemon ...`
#[derive(Debug, Subcommand)]
pub enum DaemonCmd {
    /// Run the daemon in the foreground.
    Run,
    /// Start the daemon in the background (or one of its threads with --thread-id).
    Start {
        /// The thread to start (listener, monitor, ...), instead of the daemon.
        #[arg(long)]
        thread_id: Option<String>,
    },
    /// Stop the daemon, leaving services running (or one thread with --thread-id).
    Stop {
        /// The thread to stop (listener, monitor, ...), instead of the daemon.
        #[arg(long)]
        thread_id: Option<String>,
    },
    /// Stop local service instances, then the daemon.
    Shutdown,
    /// Stop then start the daemon.
    Restart,
    /// Write the systemd unit that runs this node's daemon (Type=notify, watchdog,
    /// LimitNOFILE), then print the systemctl commands that enable it.
    Install {
        /// Where to write `om.service`.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
        /// Print the unit instead of writing it.
        #[arg(long)]
        print: bool,
    },
    /// Check this node: daemon answering, threads running, a leader, a quorum, its
    /// listener; exit 0 when healthy, 4 (unavailable) when not, 3 when not running.
    Health,
    /// Show the cluster data: threads, nodes (role, how far each trails the leader,
    /// version), services; `(stale, AGE)` marks what a down node last reported.
    Status {
        /// Redraw every INTERVAL seconds until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between redraws with --watch.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
    },
    /// Join the cluster that node N belongs to.
    Join {
        /// The cluster's secret; `-` reads it from stdin. Prefer --secret-file or the
        /// OM_SECRET environment variable: a value given here shows in `ps` to every user.
        #[arg(long, env = "OM_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// A file whose first line is the cluster's secret (keep it 0600).
        #[arg(long, conflicts_with = "secret")]
        secret_file: Option<std::path::PathBuf>,
        /// A member: its name (default port) or host:port.
        #[arg(long)]
        node: String,
        /// With `cluster.join = approve`: how long to keep asking until a member runs
        /// `om cluster approve` (seconds).
        #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86400))]
        approval_wait: u64,
    },
    /// Leave the cluster, or with --node remove another member (a dead one, say).
    Leave {
        /// The member to remove (default: this node).
        #[arg(long)]
        node: Option<String>,
        /// Allow a removal that leaves a single voter.
        #[arg(long)]
        force: bool,
    },
    /// The listener's blacklist.
    Blacklist {
        /// The subcommand.
        #[command(subcommand)]
        cmd: BlacklistCmd,
    },
}

/// `om node daemon blacklist ...`
#[derive(Debug, Subcommand)]
pub enum BlacklistCmd {
    /// Show the senders and their counts of consecutive invalid frames.
    Status {
        /// Per source address, with whether it is blacklisted and when that expires.
        #[arg(long)]
        detail: bool,
    },
    /// Empty the blacklist.
    Clear,
}

/// What kind of failure ended a command: its exit code (docs/OPERATIONS.md, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// 1: the request failed: the cluster refused it, or the action it ran failed.
    Failed,
    /// 2: the command line or an input is wrong (a usage error, a `BAD_REQUEST`).
    Usage,
    /// 3: no daemon answers on this node's control socket.
    NotRunning,
    /// 4: the cluster cannot serve it now: no leader or quorum, a member unreachable, a
    /// deadline passed. Retrying later may work.
    Unavailable,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            Exit::Failed => 1,
            Exit::Usage => USAGE_EXIT,
            Exit::NotRunning => 3,
            Exit::Unavailable => 4,
        }
    }
}

/// A CLI failure: printed as `om: <message>` (with `--format json`, as
/// `{"error", "exit", "code"}`) on stderr, and exits with its [`Exit`] code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// What went wrong, and what to do about it when we know.
    pub message: String,
    /// Its kind.
    pub exit: Exit,
}

impl CliError {
    /// A failed request or action (exit 1).
    pub fn new(message: impl Into<String>) -> CliError {
        CliError::of(Exit::Failed, message)
    }

    /// A failure of kind `exit`.
    pub fn of(exit: Exit, message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            exit,
        }
    }
}

impl From<crate::control::ControlError> for CliError {
    fn from(e: crate::control::ControlError) -> CliError {
        use crate::control::ControlError as C;
        let exit = match &e {
            C::NotRunning { .. } => Exit::NotRunning,
            C::Timeout(_) => Exit::Unavailable,
            _ => Exit::Failed,
        };
        CliError::of(exit, e.to_string())
    }
}

impl From<crate::api::ApiError> for CliError {
    fn from(e: crate::api::ApiError) -> CliError {
        use crate::wire::Status as S;
        let exit = match crate::wire::Status::from_code(e.status) {
            Some(S::BadRequest) => Exit::Usage,
            Some(S::Unavailable | S::Pending) => Exit::Unavailable,
            _ => Exit::Failed,
        };
        CliError::of(exit, e.message)
    }
}

type Result<T> = std::result::Result<T, CliError>;

/// Exit code of a command line that names no command (clap's code for usage errors).
const USAGE_EXIT: i32 = 2;

/// `om [--root R] [--format F] WORD ...` where WORD is no command becomes
/// `om ... service WORD ...`, as om3 reads `om <path> <action>`: the service commands are
/// in the one command tree that help, completions and the man page see. Returns the words,
/// and WORD when it was read as a service name.
fn service_shorthand(
    mut args: Vec<std::ffi::OsString>,
) -> (Vec<std::ffi::OsString>, Option<String>) {
    use clap::CommandFactory;
    let mut i = 1;
    while let Some(a) = args.get(i).map(|a| a.to_string_lossy()) {
        match a.as_ref() {
            "--root" | "--format" => i += 2,
            a if a.starts_with("--root=") || a.starts_with("--format=") => i += 1,
            _ => break,
        }
    }
    // Not UTF-8: no command either, and clap says so.
    let Some(word) = args.get(i).and_then(|w| w.to_str()).map(str::to_string) else {
        return (args, None);
    };
    let top = Cli::command();
    if word.starts_with('-') || word == "help" || top.find_subcommand(&word).is_some() {
        return (args, None);
    }
    args.insert(i, "service".into());
    (args, Some(word))
}

/// Parses the command line and runs it; returns the process exit code.
pub fn main() -> i32 {
    let (args, shorthand) = service_shorthand(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let asked_help = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            // `om status`: a mistyped command read as a service name with no command.
            let hint = shorthand
                .as_deref()
                .filter(|_| !asked_help)
                .and_then(command_suggestion);
            if let Some(hint) = hint {
                let word = shorthand.unwrap_or_default();
                eprintln!("om: unknown command {word}; did you mean {hint}?");
                return USAGE_EXIT;
            }
            e.exit()
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("OM_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder.worker_threads(n);
    }
    let rt = builder.enable_all().build().expect("tokio runtime");
    if let Top::Service { svc, cmd } = &cli.cmd {
        let creates = matches!(cmd, svc::SvcCmd::Create { .. });
        let paths = Paths::new(&cli.root);
        if let Some(hint) = rt.block_on(mistyped_command(&paths, svc, creates)) {
            eprintln!("om: {hint}");
            return USAGE_EXIT;
        }
    }
    let format = cli.format;
    match rt.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            report(format, &e);
            e.exit.code()
        }
    }
}

/// Writes generated text to stdout (a closed pipe is an error, not a panic).
fn write_out(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    std::io::stdout()
        .write_all(bytes)
        .map_err(|e| CliError::new(format!("stdout: {e}")))
}

/// What `om node daemon install` did (its `--format json` answer).
#[derive(serde::Serialize)]
struct Installed {
    /// Where the unit was written; `None` with `--print`.
    path: Option<String>,
    /// The unit's text.
    unit: String,
    /// What to run next.
    next: &'static str,
}

/// `om node daemon install`: the unit for this root and this binary.
fn install(
    paths: &Paths,
    unit_dir: &std::path::Path,
    print_only: bool,
    format: Format,
) -> Result<()> {
    let bin = std::env::current_exe().map_err(|e| CliError::new(format!("this binary: {e}")))?;
    let root = std::path::absolute(&paths.root)
        .map_err(|e| CliError::new(format!("{}: {e}", paths.root.display())))?;
    let unit = crate::daemon::systemd::unit(&bin, &root);
    let next = "systemctl daemon-reload && systemctl enable --now om";
    let mut done = Installed {
        path: None,
        unit,
        next,
    };
    if !print_only {
        let path = unit_dir.join("om.service");
        std::fs::write(&path, &done.unit)
            .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
        done.path = Some(path.display().to_string());
    }
    match (format, &done.path) {
        (Format::Json, _) => print(format, &done, |_| String::new()),
        (Format::Table, None) => write_out(done.unit.as_bytes())?,
        (Format::Table, Some(path)) => eprintln!("wrote {path}; now: {next}"),
    }
    Ok(())
}

/// One check of `om node daemon health`.
#[derive(serde::Serialize)]
struct Check {
    check: &'static str,
    ok: bool,
    detail: String,
}

/// The checks of `om node daemon health` on the status `st` of this node.
fn health_checks(st: &crate::api::status::ClusterStatus) -> Vec<Check> {
    let stopped: Vec<&str> = st
        .threads
        .iter()
        .filter(|(_, t)| t.state != crate::api::status::ThreadState::Running)
        .map(|(id, _)| id.as_str())
        .collect();
    let quorum = render::quorum_line(st);
    let me = st.nodes.get(&st.node).and_then(|m| m.raft.as_ref());
    let listener = me.and_then(|r| r.listener_problem.clone());
    let check = |check, ok, detail: String| Check { check, ok, detail };
    vec![
        check(
            "threads",
            stopped.is_empty(),
            match stopped.is_empty() {
                true => "all running".into(),
                false => format!("not running: {}", stopped.join(", ")),
            },
        ),
        check(
            "member",
            st.cluster.nodes.contains(&st.node),
            format!("{} in cluster {}", st.node, st.cluster.name),
        ),
        check(
            "leader",
            st.cluster.leader.is_some(),
            st.cluster.leader.clone().unwrap_or_else(|| "none".into()),
        ),
        check("quorum", quorum.starts_with("quorum ok"), quorum),
        check(
            "listener",
            listener.is_none(),
            listener.unwrap_or_else(|| "bound".into()),
        ),
    ]
}

/// `om node daemon health`: the checks, then exit 0 or 4.
async fn health(paths: &Paths, format: Format) -> Result<()> {
    let st = call_typed(
        paths,
        &options::DaemonStatus::default(),
        Duration::from_secs(10),
    )
    .await?;
    let checks = health_checks(&st);
    let healthy = checks.iter().all(|c| c.ok);
    #[derive(serde::Serialize)]
    struct Health<'a> {
        healthy: bool,
        checks: &'a [Check],
    }
    let report = Health {
        healthy,
        checks: &checks,
    };
    print(format, &report, |h| {
        let mut out = String::new();
        for c in h.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            out.push_str(&format!("{mark} {:<9} {}\n", c.check, c.detail));
        }
        out
    });
    if healthy {
        Ok(())
    } else {
        // Already reported, on stdout: only the exit code is left to give.
        Err(CliError::of(Exit::Unavailable, ""))
    }
}

/// The one error policy: a failure is a line on stderr, or with `--format json` a JSON
/// object there, `{"error", "exit", "code"}`; stdout holds only replies.
fn report(format: Format, e: &CliError) {
    if e.message.is_empty() {
        return;
    }
    match format {
        Format::Table => eprintln!("om: {e}"),
        Format::Json => {
            #[derive(serde::Serialize)]
            struct Failure<'a> {
                error: &'a str,
                exit: Exit,
                code: i32,
            }
            let doc = Failure {
                error: &e.message,
                exit: e.exit,
                code: e.exit.code(),
            };
            eprintln!("{}", serde_json::to_string(&doc).unwrap_or_default());
        }
    }
}

/// Levenshtein distance between `a` and `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// What the operator probably meant by a first word clap took for a service name: a
/// top-level command within edit distance 2, or a `node daemon` / `node` command typed
/// without its prefix. `None` when nothing is close.
pub fn command_suggestion(word: &str) -> Option<String> {
    use clap::CommandFactory;
    let top = Cli::command();
    let names = |c: &clap::Command| -> Vec<String> {
        c.get_subcommands()
            .map(|s| s.get_name().to_string())
            .chain(c.has_subcommands().then(|| "help".to_string()))
            .collect()
    };
    let close = names(&top)
        .into_iter()
        .map(|n| (edit_distance(word, &n), n))
        .filter(|(d, _)| *d <= 2)
        .min();
    if let Some((_, name)) = close {
        return Some(name);
    }
    let node = top.find_subcommand("node")?;
    let daemon = node.find_subcommand("daemon")?;
    if daemon.find_subcommand(word).is_some() {
        return Some(format!("node daemon {word}"));
    }
    node.find_subcommand(word).map(|_| format!("node {word}"))
}

/// `Some(message)` when `om WORD ...` names no service and WORD looks like a mistyped
/// command: running it as a service command would only say the service does not exist.
async fn mistyped_command(paths: &Paths, word: &str, creates: bool) -> Option<String> {
    // Creating is how a service with such a name comes to exist.
    if creates {
        return None;
    }
    let suggestion = command_suggestion(word)?;
    // A service may carry a name close to a command: it wins. Without a daemon there is
    // no service to run anyway, so the hint is the useful answer.
    let req = options::ServiceRef {
        svcname: word.to_string(),
        linearizable: false,
    };
    let exists = ControlClient::new(paths)
        .call(&req, Duration::from_secs(5))
        .await
        .is_ok();
    (!exists).then(|| format!("unknown command {word}; did you mean {suggestion}?"))
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let paths = Paths::new(&cli.root);
    let format = cli.format;
    match cli.cmd {
        Top::Demo { exit, nodes } => demo::run(nodes, exit).await,
        Top::Bench(args) => bench::run(args, format).await,
        Top::Services {
            cmd: ServicesCmd::Ls,
        } => svc::list(&paths, format).await,
        Top::Completion { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "om", &mut script);
            write_out(&script)
        }
        Top::Man => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(|e| CliError::new(format!("man page: {e}")))?;
            write_out(&page)
        }
        Top::Version => {
            let version = env!("CARGO_PKG_VERSION");
            let shown = std::collections::BTreeMap::from([("version", version)]);
            print(format, &shown, |_| format!("{version}\n"));
            Ok(())
        }
        Top::Cluster {
            cmd: ClusterCmd::Secret { cmd },
        } => rotation::run(&paths, cmd, format).await,
        Top::Cluster {
            cmd: ClusterCmd::Snapshot { cmd },
        } => backup::run(&paths, cmd, format).await,
        Top::Cluster {
            cmd: ClusterCmd::Param(cmd),
        } => consent::run(&paths, cmd, format).await,
        Top::Cluster {
            cmd: ClusterCmd::Config { cmd },
        } => configuration::run(&paths, cmd, format).await,
        Top::Node {
            cmd: NodeCmd::Events(args),
        } => events(&paths, args, format).await,
        Top::Node {
            cmd: NodeCmd::Daemon { cmd },
        } => daemon_cmd(&paths, cmd, format).await,
        Top::Node {
            cmd: NodeCmd::Set { param, value },
        } => nodeconf::set(&paths, &param, Some(&value), format).await,
        Top::Node {
            cmd: NodeCmd::Unset { param },
        } => nodeconf::set(&paths, &param, None, format).await,
        Top::Node {
            cmd: NodeCmd::Get { param },
        } => nodeconf::get(&paths, &param, format),
        Top::Node {
            cmd: NodeCmd::Print { what },
        } => nodeconf::config_word(&what).and_then(|()| nodeconf::print(&paths, format)),
        Top::Node {
            cmd: NodeCmd::Edit { what },
        } => {
            nodeconf::config_word(&what)?;
            nodeconf::edit(&paths, format).await
        }
        Top::Node {
            cmd: NodeCmd::Dequeue { what },
        } => nodeconf::dequeue(&paths, &what, format).await,
        Top::Node {
            cmd: NodeCmd::Control(args),
        } => control::run(&paths, args, format).await,
        Top::Node {
            cmd: NodeCmd::Freeze,
        } => svc::node_freeze(&paths, true, format).await,
        Top::Node { cmd: NodeCmd::Thaw } => svc::node_freeze(&paths, false, format).await,
        Top::Node {
            cmd: NodeCmd::Standby { wait },
        } => {
            let req = options::AgentStandby {
                node: None,
                timeout_ms: Some(wait * 1000),
            };
            let data = call_typed(&paths, &req, Duration::from_secs(wait + 10)).await?;
            print(format, &data, render::kv);
            Ok(())
        }
        Top::Node {
            cmd: NodeCmd::Welcome,
        } => {
            let req = options::AgentWelcome::default();
            let data = call_typed(&paths, &req, Duration::from_secs(20)).await?;
            print(format, &data, render::kv);
            Ok(())
        }
        Top::Node {
            cmd: NodeCmd::Jobs { cmd },
        } => svc::jobs(&paths, cmd, format).await,
        Top::Service { svc, cmd } => svc::run(&paths, format, &svc, cmd).await,
    }
}

/// Sends the typed request `req` on the control socket; its reply, or the daemon's error.
async fn call_typed<R: crate::api::ApiRequest>(
    paths: &Paths,
    req: &R,
    timeout: Duration,
) -> Result<R::Reply> {
    call_as(paths, R::ACTION, req, timeout).await
}

/// Sends `action` with the options struct `options` (one several actions share) on the
/// control socket; its answer read as `T`, the action's reply type.
async fn call_as<T: serde::de::DeserializeOwned>(
    paths: &Paths,
    action: Action,
    options: &impl serde::Serialize,
    timeout: Duration,
) -> Result<T> {
    let options = crate::api::reply(options)?;
    // Not through `ControlClient::call`: a daemon that is not running has its own exit code.
    let resp = ControlClient::new(paths)
        .request(action.as_str(), options, timeout)
        .await?;
    if !resp.is_ok() {
        let message = resp
            .error
            .unwrap_or_else(|| format!("{action} failed with status {}", resp.status));
        return Err(crate::api::ApiError::new(resp.status, message).into());
    }
    Ok(crate::api::decode_reply(action, resp.data)?)
}

/// Asks the daemon to join through `node`; while the cluster answers that the join waits
/// for an approval, says so once and asks again every 2 s, for at most `wait`.
async fn join_until_approved(
    paths: &Paths,
    secret: &str,
    node: &str,
    wait: Duration,
) -> Result<options::Joined> {
    let deadline = std::time::Instant::now() + wait;
    let mut told = false;
    loop {
        let req = options::JoinCluster {
            secret: secret.to_string(),
            node: node.to_string(),
        };
        let why = match ControlClient::new(paths)
            .call(&req, Duration::from_secs(40))
            .await
        {
            Ok(joined) => return Ok(joined),
            Err(e) if e.is(crate::wire::Status::Pending) => e.message,
            Err(e) => return Err(e.into()),
        };
        if std::time::Instant::now() >= deadline {
            let why = format!("no approval within {wait:?}: {why}");
            return Err(CliError::of(Exit::Unavailable, why));
        }
        if !told {
            eprintln!("{why}");
            eprintln!("waiting for the approval (up to {wait:?}; --approval-wait) ...");
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The secret `join` uses: from `--secret-file`, `--secret -` (stdin), `OM_SECRET` or
/// `--secret S`, checked for strength before anything is sent.
fn join_secret(secret: Option<String>, file: Option<std::path::PathBuf>) -> Result<String> {
    let secret = read_secret(secret, file)?.ok_or_else(|| {
        CliError::of(
            Exit::Usage,
            "join needs the cluster secret: --secret-file FILE, --secret - (stdin), \
             OM_SECRET=... or --secret S",
        )
    })?;
    if secret.is_empty() {
        return Err(CliError::new("join: the cluster secret is empty"));
    }
    crate::config::validate("cluster.secret", &secret).map_err(|e| CliError::new(e.to_string()))?;
    Ok(secret)
}

/// A secret from `--secret-file` (its first line), `--secret -` (stdin) or `--secret S`;
/// `None` when neither is given.
fn read_secret(secret: Option<String>, file: Option<std::path::PathBuf>) -> Result<Option<String>> {
    let read_line = |text: String| text.lines().next().unwrap_or("").trim().to_string();
    Ok(Some(match (secret, file) {
        (_, Some(path)) => read_line(
            std::fs::read_to_string(&path)
                .map_err(|e| CliError::new(format!("--secret-file {}: {e}", path.display())))?,
        ),
        (Some(s), None) if s == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| CliError::new(format!("--secret -: cannot read stdin: {e}")))?;
            read_line(text)
        }
        (Some(s), None) => s,
        (None, None) => return Ok(None),
    }))
}

/// Prints `data` as JSON or as the table `table` makes of it.
fn print<T: serde::Serialize + ?Sized>(format: Format, data: &T, table: impl FnOnce(&T) -> String) {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(data).unwrap_or_default()),
        Format::Table => print!("{}", table(data)),
    }
}

async fn daemon_cmd(paths: &Paths, cmd: DaemonCmd, format: Format) -> Result<()> {
    let t = Duration::from_secs(10);
    match cmd {
        DaemonCmd::Run => {
            let (_, cfg) = crate::config::NodeConfig::load(&paths.node_conf())
                .map_err(|e| CliError::new(e.to_string()))?;
            crate::logging::init(cfg.log_level);
            let _root_lock = crate::daemon::control::lock_root(paths)
                .map_err(|e| CliError::new(e.to_string()))?;
            let daemon = crate::daemon::Daemon::open(paths.clone())
                .await
                .map_err(|e| CliError::new(e.to_string()))?;
            daemon.run().await.map_err(|e| CliError::new(e.to_string()))
        }
        DaemonCmd::Start {
            thread_id: Some(id),
        } => {
            let req = options::ThreadRef {
                thread_id: Some(id),
            };
            let data: options::ThreadChanged = call_as(paths, Action::DaemonStart, &req, t).await?;
            print(format, &data, render::kv);
            Ok(())
        }
        DaemonCmd::Start { thread_id: None } => start_background(paths, format).await,
        DaemonCmd::Stop {
            thread_id: Some(id),
        } => {
            let req = options::ThreadRef {
                thread_id: Some(id),
            };
            let data: options::ThreadChanged = call_as(paths, Action::DaemonStop, &req, t).await?;
            print(format, &data, render::kv);
            Ok(())
        }
        DaemonCmd::Stop { thread_id: None } => {
            stop_and_wait(paths, Action::DaemonStop, format).await
        }
        DaemonCmd::Shutdown => stop_and_wait(paths, Action::DaemonShutdown, format).await,
        DaemonCmd::Restart => {
            stop_and_wait(paths, Action::DaemonStop, Format::Table).await?;
            start_background(paths, format).await
        }
        DaemonCmd::Health => health(paths, format).await,
        DaemonCmd::Install { unit_dir, print } => install(paths, &unit_dir, print, format),
        DaemonCmd::Status { watch, interval } => {
            let req = options::DaemonStatus::default();
            loop {
                let data = call_typed(paths, &req, t).await?;
                if watch && format == Format::Table {
                    // Home and clear, then the table: a redraw in place.
                    print!("\x1b[H\x1b[2J");
                }
                print(format, &data, render::status_table);
                if !watch {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(interval)).await;
            }
        }
        DaemonCmd::Join {
            secret,
            secret_file,
            node,
            approval_wait,
        } => {
            let secret = join_secret(secret, secret_file)?;
            eprintln!("asking {node} to admit this node ...");
            let wait = Duration::from_secs(approval_wait);
            let data = join_until_approved(paths, &secret, &node, wait).await?;
            eprintln!(
                "accepted into cluster {} (leader {}); catching up ...",
                data.cluster, data.leader
            );
            let me = crate::config::NodeConfig::load(&paths.node_conf())
                .map_err(|e| CliError::new(e.to_string()))?
                .1
                .name;
            local::wait_joined(paths, &me, Duration::from_secs(60), &mut |l| {
                eprintln!("{l}")
            })
            .await
            .map_err(|e| CliError::new(format!("{e}: see the daemon log")))?;
            eprintln!("{me} is a member of cluster {}", data.cluster);
            // The progress lines above were the table form.
            print(format, &data, |_| String::new());
            Ok(())
        }
        DaemonCmd::Leave { node, force } => {
            let req = options::Leave { node, force };
            let left = call_typed(paths, &req, Duration::from_secs(40)).await?;
            print(format, &left, render::kv);
            Ok(())
        }
        DaemonCmd::Blacklist { cmd } => {
            let pretty = |d: &Doc| serde_json::to_string_pretty(d).unwrap_or_default() + "\n";
            let detail = match cmd {
                BlacklistCmd::Status { detail } => detail,
                BlacklistCmd::Clear => {
                    let none = options::BlacklistStatus::default();
                    let data: options::BlacklistCleared =
                        call_as(paths, Action::BlacklistClear, &none, t).await?;
                    print(format, &data, render::kv);
                    return Ok(());
                }
            };
            let req = options::BlacklistStatus { detail };
            let action = Action::BlacklistStatus;
            // The table is the JSON: a map of senders, with their detail when asked.
            let data = if detail {
                let d: BTreeMap<String, SenderDetail> = call_as(paths, action, &req, t).await?;
                crate::api::reply(&d)
            } else {
                let d: BTreeMap<String, u32> = call_as(paths, action, &req, t).await?;
                crate::api::reply(&d)
            };
            let data = data.map_err(|e| CliError::new(e.message))?;
            print(format, &data, pretty);
            Ok(())
        }
    }
}

/// Whether the daemon under `paths` answers on its control socket.
async fn answers(paths: &Paths) -> bool {
    ControlClient::new(paths)
        .call(&OwnStatus::ASK, Duration::from_secs(2))
        .await
        .is_ok()
}

async fn start_background(paths: &Paths, format: Format) -> Result<()> {
    if answers(paths).await {
        return Err(CliError::new("the daemon is already running"));
    }
    let log = paths.log_file();
    std::fs::create_dir_all(log.parent().expect("log has a parent"))
        .map_err(|e| CliError::new(e.to_string()))?;
    crate::logging::rotate(
        &log,
        crate::logging::ROTATE_AT,
        crate::logging::KEEP_ROTATED,
    )
    .map_err(|e| CliError::new(format!("rotating {}: {e}", log.display())))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| CliError::new(format!("{}: {e}", log.display())))?;
    // Where this start's lines begin: older runs' errors are not this start's reason.
    let offset = out.metadata().map(|m| m.len()).unwrap_or(0);
    let bin = std::env::current_exe().map_err(|e| CliError::new(e.to_string()))?;
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(bin)
        .arg("--root")
        .arg(&paths.root)
        .args(["node", "daemon", "run"])
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().map_err(|e| CliError::new(e.to_string()))?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .map_err(|e| CliError::new(format!("cannot start the daemon: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    eprint!("starting the daemon ");
    loop {
        if answers(paths).await {
            eprintln!(" running; log: {}", log.display());
            #[derive(serde::Serialize)]
            struct Running {
                pid: u32,
                log: std::path::PathBuf,
            }
            let running = Running {
                pid: child.id(),
                log,
            };
            print(format, &running, |_| String::new());
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!();
            let reason =
                start_failure(&log, offset).unwrap_or_else(|| "it printed no reason".to_string());
            return Err(CliError::new(format!(
                "the daemon exited at start ({status}): {reason}; log: {}",
                log.display()
            )));
        }
        if Instant::now() >= deadline {
            eprintln!();
            return Err(CliError::new(format!(
                "the daemon (pid {}) did not answer within 20s; see {}",
                child.id(),
                log.display()
            )));
        }
        eprint!(".");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Why a daemon started in the background exited: from its lines of om.log (those after
/// `offset`), the `om: ...` line its `main` printed last, else the last ERROR line, else
/// the last line. ANSI colour codes are stripped (a log written by an older build).
fn start_failure(log: &std::path::Path, offset: u64) -> Option<String> {
    let bytes = std::fs::read(log).ok()?;
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    let text = strip_ansi(&String::from_utf8_lossy(&bytes[start..]));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let pick = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("om: "))
        .or_else(|| lines.iter().rev().find(|l| l.contains("ERROR")).copied())
        .or_else(|| lines.last().copied())?;
    Some(pick.to_string())
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn stop_and_wait(paths: &Paths, action: Action, format: Format) -> Result<()> {
    let whole = options::ThreadRef::default();
    let stopping: options::Stopping =
        call_as(paths, action, &whole, Duration::from_secs(10)).await?;
    eprint!("stopping the daemon ");
    let deadline = Instant::now() + Duration::from_secs(30);
    while paths.control_socket().exists() {
        if Instant::now() >= deadline {
            eprintln!();
            return Err(CliError::new("the daemon did not stop within 30s"));
        }
        eprint!(".");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(" stopped");
    let stopped = std::collections::BTreeMap::from([("stopped", stopping.stopping)]);
    print(format, &stopped, |_| String::new());
    Ok(())
}

async fn events(paths: &Paths, args: EventsArgs, format: Format) -> Result<()> {
    let mut ask = crate::api::options::Events {
        since: args.since,
        kind: args.kind,
        node: args.node,
        service: args.service,
        prefix: args.path,
        ..Default::default()
    };
    let control = ControlClient::new(paths);
    let mut waiting = false;
    loop {
        ask.wait_ms = Some(if args.follow { 10_000 } else { 0 });
        let reply = match control.call(&ask, Duration::from_secs(15)).await {
            Ok(r) => r,
            // Following through a daemon restart: wait for it, then resume.
            Err(e) if args.follow => {
                if !waiting {
                    eprintln!("waiting for the daemon ({e}) ...");
                    waiting = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(CliError::new(e.to_string())),
        };
        waiting = false;
        if reply.reset {
            eprintln!(
                "some events are missing (a new store, or older than the node keeps): \
                 starting again from the oldest kept"
            );
        }
        for e in &reply.events {
            match format {
                Format::Json => println!("{}", serde_json::to_string(e).unwrap_or_default()),
                Format::Table => println!("{:>6} {:>6}  {}", e.seq, e.record.index, e.record.event),
            }
        }
        ask.since = Some(reply.next);
        ask.epoch = Some(reply.epoch);
        if !args.follow {
            return Ok(());
        }
    }
}
