//! Services on this node: their config, resource commands, instance actions, jobs and logs,
//! and the requests that reach them (`set_service_config`, `service_action`,
//! `service_logs`, `service_status`, `job_list`, `job_show`, `job_cancel`).
//!
//! What runs where is decided by the leader's orchestrator and enacted by each node's
//! monitor (see [`crate::monitor`]); this module is what both use to act on a node.

pub mod exec;
pub mod host;
pub mod instance;
pub mod jobs;
pub mod log;
pub mod task;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use raft::state::Avail;
use raft::state::LocalExpect;
use raft::Command;

use crate::api;
use crate::api::options;
use crate::api::Action;
use crate::api::ApiError as ActionError;
use crate::model::action;
use crate::model::action::ActionCmd;
use crate::model::action::Step;
use crate::model::action::Verb;
use crate::model::service::ServiceConfig;
use crate::model::service::Topology;
use crate::wire::Doc;
use crate::wire::Status;
pub use host::Host;
use instance::Ctx;
use instance::InstanceRt;
use instance::Transcript;
use jobs::Jobs;
use log::ServiceLogs;

/// The per-daemon state of this module: logs, jobs, instance runtimes, and the flags the
/// monitor sets.
pub struct Local {
    /// Service logs.
    pub logs: ServiceLogs,
    /// Asynchronous actions.
    pub jobs: Arc<Jobs>,
    instances: Mutex<BTreeMap<String, Arc<InstanceRt>>>,
    /// This node cannot reach a majority of the cluster (set by the monitor).
    pub cut_off: AtomicBool,
    /// The daemon is shutting down: the monitor starts nothing.
    pub shutting: AtomicBool,
}

impl Local {
    /// The state of a daemon whose files are under `var` and whose node is `me`; built by
    /// [`Daemon::open`], which owns it.
    pub fn new(var: PathBuf, me: String) -> Local {
        Local {
            logs: ServiceLogs::new(var.clone(), me),
            jobs: Arc::new(Jobs::new(var)),
            instances: Mutex::new(BTreeMap::new()),
            cut_off: AtomicBool::new(false),
            shutting: AtomicBool::new(false),
        }
    }

    /// The runtime of `svc`, created on first use.
    pub fn instance(&self, svc: &str) -> Arc<InstanceRt> {
        self.instances
            .lock()
            .unwrap()
            .entry(svc.to_string())
            .or_insert_with(|| Arc::new(InstanceRt::new(svc)))
            .clone()
    }

    /// Every runtime.
    pub fn instances(&self) -> Vec<Arc<InstanceRt>> {
        self.instances.lock().unwrap().values().cloned().collect()
    }

    /// Forgets `svc`'s runtime (deleted service).
    pub fn forget(&self, svc: &str) {
        self.instances.lock().unwrap().remove(svc);
    }
}

/// The context instance actions run with.
pub fn ctx(host: &Arc<dyn Host>) -> Ctx {
    Ctx {
        host: host.clone(),
        local: host.local().clone(),
        me: host.me(),
    }
}

type Result<T> = std::result::Result<T, ActionError>;

/// How long a service config change may take to commit (an election included).
const PROPOSE_DEADLINE: Duration = Duration::from_secs(10);

fn bad(msg: impl Into<String>) -> ActionError {
    ActionError::new(Status::BadRequest, msg)
}

/// Serves the service and job actions.
pub async fn handle(host: &Arc<dyn Host>, action: Action, o: Doc) -> Result<Doc> {
    match action {
        Action::ServiceAction => service_action(host, api::parse(action, o)?).await,
        Action::ServiceLogs => service_logs(host, api::parse(action, o)?).await,
        Action::ServiceStatus => api::reply(&service_status(host, api::parse(action, o)?)?),
        Action::JobList | Action::JobShow | Action::JobCancel => {
            job_action(host, action, api::parse(action, o)?).await
        }
        other => Err(ActionError::new(
            Status::UnknownAction,
            format!("{other} is not a service action"),
        )),
    }
}

/// `set_service_config`: validates the config, then creates, updates or deletes the service.
///
/// Options: `svcname`, `config` (the INI text), `version` (the version the edit started
/// from: refused if the service moved on), `create` (refuse if it exists), `delete`.
pub async fn set_service_config(host: &Arc<dyn Host>, o: options::SetServiceConfig) -> Result<Doc> {
    let svc = o.svcname;
    raft::apply::check_name("service", &svc).map_err(|e| bad(e.to_string()))?;
    let exists = host.node()?.read(|s| s.services.contains_key(&svc));
    let cmd = if o.delete {
        Command::DeleteService { svc }
    } else {
        let text = o
            .config
            .ok_or_else(|| bad("set_service_config: missing option config"))?;
        ServiceConfig::parse(&text)
            .map_err(|e| bad(format!("invalid config for service {svc}: {e}")))?;
        let expected_version = o.version;
        if o.create {
            Command::CreateService { svc, config: text }
        } else if exists || expected_version.is_some() {
            Command::UpdateService {
                svc,
                config: text,
                expected_version,
            }
        } else {
            Command::CreateService { svc, config: text }
        }
    };
    api::reply(&host.propose(cmd, PROPOSE_DEADLINE).await?)
}

/// `service_action`: runs an instance action on this node (or on `node`), synchronously
/// (`{out, err, ret}`) or as a job (`{job_id}`).
async fn service_action(host: &Arc<dyn Host>, o: options::ServiceAction) -> Result<Doc> {
    let svc = o.svcname.clone();
    let argv = o
        .command
        .as_ref()
        .and_then(options::Argv::words)
        .ok_or_else(|| bad("missing option command (a list such as [\"start\"])"))?;
    if argv[0].parse::<Verb>().is_err() {
        return task::action(host, o, argv).await;
    }
    let cmd = ActionCmd::parse(&argv).map_err(bad)?;
    let sync = o.sync.unwrap_or(true);
    let me = host.me();
    if let Some(node) = o.node.as_deref().filter(|n| *n != me) {
        let timeout = if sync {
            action_timeout(host, &svc)
        } else {
            Duration::from_secs(15)
        };
        return host::ask(&**host, node, Action::ServiceAction, &o, timeout).await;
    }
    let cx = ctx(host);
    // Refuse what cannot run before answering, for jobs too.
    let cfg = current_config(host, &svc)?;
    if let Some(rids) = &cmd.rids {
        for rid in rids {
            if cfg.resource(rid).is_none() {
                return Err(bad(format!("service {svc} has no resource {rid}")));
            }
        }
    }
    let listed = host.node()?.read(|s| {
        cfg.lists(&me)
            || s.services
                .get(&svc)
                .is_some_and(|v| v.instances.contains_key(&me))
    });
    if !listed {
        return Err(bad(format!(
            "service {svc} has no instance on {me}: its nodes are {}",
            cfg.nodes.join(" ")
        )));
    }
    if sync {
        let tr = run_action(&cx, &svc, &cmd, None).await?;
        let (out, err, ret) = (tr.out, tr.err, tr.ret);
        return api::reply(&options::ActionDone {
            node: me,
            out,
            err,
            ret,
        });
    }
    let rt = cx.local.instance(&svc);
    let holds = Arc::new(AtomicBool::new(false));
    let (cx2, svc2, cmd2, holds2) = (cx.clone(), svc.clone(), cmd.clone(), holds.clone());
    let rec = cx
        .local
        .jobs
        .submit(&me, &svc, argv, rt, holds, async move {
            match run_action(&cx2, &svc2, &cmd2, Some(&holds2)).await {
                Ok(tr) => tr,
                Err(e) => Transcript {
                    out: String::new(),
                    err: format!("{e}\n"),
                    ret: 1,
                },
            }
        })
        .map_err(|e| ActionError::new(Status::Error, e.to_string()))?;
    cx.local.logs.info(
        &svc,
        format!("job {} submitted: {}", rec.id, rec.command.join(" ")),
    );
    let job_id = rec.id.clone();
    api::reply(&options::ActionSubmitted {
        node: me,
        job_id,
        job: rec,
    })
}

/// How long a synchronous action may take: every command of a stop then a start.
fn action_timeout(host: &Arc<dyn Host>, svc: &str) -> Duration {
    let per = current_config(host, svc)
        .map(|c| c.resources.iter().map(|r| r.timeout * 3).sum::<Duration>())
        .unwrap_or(Duration::from_secs(60));
    per * 2 + Duration::from_secs(15)
}

pub(crate) fn current_config(host: &Arc<dyn Host>, svc: &str) -> Result<ServiceConfig> {
    let text = host
        .node()?
        .read(|s| s.services.get(svc).map(|v| v.config.clone()))
        .ok_or_else(|| bad(format!("service {svc:?} does not exist")))?;
    ServiceConfig::parse(&text)
        .map_err(|e| ActionError::new(Status::Error, format!("service {svc} config: {e}")))
}

/// Runs an instance action on this node: commits what [`action::before`] asks (a `start`
/// or `stop` sets this node's `local_expect`, so the monitor keeps what the operator did,
/// and a stop freezes the instance first), runs [`Verb::steps`] on the resources, and
/// reports what [`action::judge`] makes of the results.
pub async fn run_action(
    cx: &Ctx,
    svc: &str,
    cmd: &ActionCmd,
    holds_lock: Option<&AtomicBool>,
) -> Result<Transcript> {
    let host = &cx.host;
    let cfg = current_config(host, svc)?;
    let node = host.node()?;
    // Hold the instance lock before changing local_expect, so the monitor's worker acts on
    // the new local_expect only after this action is done.
    let rt = cx.local.instance(svc);
    let mut mem = rt.mem.lock().await;
    if let Some(h) = holds_lock {
        h.store(true, Ordering::SeqCst);
    }
    let (pre, inst) = node.read(|s| {
        let pre = action::before(cmd, cfg.topology, s, svc, &cx.me);
        (pre, action::instance(s, svc, &cx.me))
    });
    for b in pre.map_err(|e| ActionError::new(Status::Error, e))? {
        commit_before(cx, svc, &inst, b).await?;
    }
    let mut tr = Transcript::default();
    cx.local.logs.info(svc, format!("action {cmd} requested"));
    let only = cmd.rids.as_deref();
    let mut commands_ok = true;
    for step in cmd.verb.steps() {
        // The status and check transcripts show their checks; the others, their commands.
        let shown = matches!(cmd.verb, Verb::Status | Verb::Check);
        let out = (shown || *step != Step::Check).then_some(&mut tr);
        commands_ok &= match step {
            Step::Check => {
                rt.check(cx, &mut mem, &cfg, out).await;
                true
            }
            Step::Start => rt.start(cx, &mut mem, &cfg, only, out).await,
            Step::Stop => rt.stop(cx, &mut mem, &cfg, only, out).await,
        };
    }
    if cmd.verb == Verb::Start {
        mem.started_once = true;
    }
    let rids: Vec<String> = cfg.resources.iter().map(|r| r.rid.clone()).collect();
    let ran = action::Ran {
        commands_ok,
        avail: mem.avail,
        res: mem.res.clone(),
    };
    let verdict = action::judge(cmd, &rids, inst.status, &ran);
    tr.ret = verdict.ret;
    if let Some(note) = &verdict.note {
        tr.note(note);
    }
    let now = node.read(|s| action::instance(s, svc, &cx.me));
    if action::must_report(&now, mem.avail, &verdict) {
        let reported = instance::report(
            cx,
            svc,
            mem.avail,
            verdict.status,
            verdict.frozen,
            now.restarts.clone(),
            None,
        );
        if let Err(e) = reported.await {
            tr.note(format!("could not report the instance state: {e}"));
        }
    }
    let lvl = if tr.ret == 0 { "info" } else { "warn" };
    let done = format!("action {cmd} done: ret {}, instance {}", tr.ret, mem.avail);
    cx.local.logs.append(svc, lvl, done);
    Ok(tr)
}

/// Commits one of [`action::before`]'s decisions for `me`'s instance `inst` of `svc`.
async fn commit_before(
    cx: &Ctx,
    svc: &str,
    inst: &raft::state::Instance,
    b: action::Before,
) -> Result<()> {
    match b {
        action::Before::Freeze => {
            let restarts = inst.restarts.clone();
            instance::report(cx, svc, inst.avail, None, Some(true), restarts, None).await
        }
        action::Before::Expect(expect) => {
            let cmd = Command::SetServiceMonitor {
                svc: svc.to_string(),
                node: Some(cx.me.clone()),
                status: None,
                local_expect: Some(expect),
                global_expect: None,
                reset_retries: expect == LocalExpect::Started,
            };
            instance::commit(&cx.host, cmd).await
        }
    }
}

/// `service_logs`: this node's lines (`local`), or every node's merged by time.
///
/// Options: `svcname`, `backlog` (lines, default 50), `node` (only that node), `local`,
/// `cursor` (a number with `local`, else `{node: number}`: return the lines after it),
/// `wait_ms` (with a cursor: wait up to this long for a first line).
async fn service_logs(host: &Arc<dyn Host>, o: options::ServiceLogs) -> Result<Doc> {
    let svc = o.svcname;
    raft::apply::check_name("service", &svc).map_err(|e| bad(e.to_string()))?;
    let backlog = o.backlog.unwrap_or(50) as usize;
    let wait = Duration::from_millis(o.wait_ms.unwrap_or(0).min(60_000));
    let lg = host.local().clone();
    if o.local {
        let at = match o.cursor {
            None => None,
            Some(options::LogCursor::At(n)) => Some(n),
            Some(options::LogCursor::PerNode(_)) => {
                return Err(bad("service_logs: with local, cursor is a line number"))
            }
        };
        return api::reply(&local_logs(&lg, &svc, backlog, at, wait).await);
    }
    let me = host.me();
    let nodes: Vec<(String, String)> = match o.node.as_deref() {
        Some(n) => vec![(n.to_string(), host.member_addr(n)?)],
        None => host.node()?.read(|s| {
            s.nodes
                .iter()
                .map(|(n, r)| (n.clone(), r.addr.clone()))
                .collect()
        }),
    };
    let cursors = match o.cursor {
        Some(options::LogCursor::PerNode(c)) => Some(c),
        Some(options::LogCursor::At(_)) => {
            return Err(bad("service_logs: cursor is a map of node to line number"))
        }
        None => None,
    };
    let follow = cursors.is_some();
    let mut set = tokio::task::JoinSet::new();
    for (n, addr) in nodes {
        let cursor = cursors.as_ref().map(|c| c.get(&n).copied().unwrap_or(0));
        let opts = options::ServiceLogs {
            svcname: svc.clone(),
            backlog: Some(backlog as u64),
            node: None,
            local: true,
            cursor: cursor.map(options::LogCursor::At),
            wait_ms: cursor.map(|_| wait.as_millis() as u64),
        };
        let opts = api::reply(&opts)?;
        let d = host.clone();
        let lg = lg.clone();
        let (is_me, svc) = (n == me, svc.clone());
        set.spawn(async move {
            let r = if is_me {
                Ok(local_logs(&lg, &svc, backlog, cursor, wait).await)
            } else {
                let t = wait + Duration::from_secs(5);
                let answer = d.call_peer(&addr, Action::ServiceLogs, opts, t).await;
                answer.and_then(|data| api::decode_reply(Action::ServiceLogs, data))
            };
            (n, r)
        });
    }
    let mut lines: Vec<log::LogLine> = Vec::new();
    let mut cursor_out = cursors.clone().unwrap_or_default();
    let mut errors = BTreeMap::new();
    let mut grace: Option<tokio::time::Instant> = None;
    loop {
        let next = match grace {
            Some(deadline) => match tokio::time::timeout_at(deadline, set.join_next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => set.join_next().await,
        };
        let Some(joined) = next else { break };
        let Ok((n, r)) = joined else { continue };
        match r {
            Ok(options::LocalLogs { lines: got, cursor }) => {
                if follow && !got.is_empty() && grace.is_none() {
                    // Lines arrived: give the other nodes a moment, then answer. The nodes
                    // still waiting keep their cursor, so nothing is lost.
                    grace = Some(tokio::time::Instant::now() + Duration::from_millis(200));
                }
                lines.extend(got);
                cursor_out.insert(n, cursor);
            }
            Err(e) => {
                errors.insert(n, e.message);
            }
        }
    }
    set.abort_all();
    let mut lines = log::merge(lines);
    if !follow {
        let skip = lines.len().saturating_sub(backlog);
        lines.drain(..skip);
    }
    let (cursor, errors) = (cursor_out, errors);
    api::reply(&options::Logs {
        lines,
        cursor,
        errors,
    })
}

async fn local_logs(
    lg: &Local,
    svc: &str,
    backlog: usize,
    cursor: Option<u64>,
    wait: Duration,
) -> options::LocalLogs {
    let (lines, cursor) = match cursor {
        Some(c) => lg.logs.wait_after(svc, c, wait).await,
        None => lg.logs.backlog(svc, backlog),
    };
    options::LocalLogs { lines, cursor }
}

/// `service_status`: the service, its instances with their nodes' states, and its progress
/// towards `target` (default: its `global_expect`).
fn service_status(
    host: &Arc<dyn Host>,
    o: options::ServiceStatus,
) -> Result<options::ServiceStatusReply> {
    let svc = o.svcname;
    let mut state = host.node()?.read(|s| s.clone());
    let Some(service) = state.services.get(&svc).cloned() else {
        let (exists, detail) = (false, None);
        return Ok(options::ServiceStatusReply {
            svcname: svc,
            exists,
            detail,
        });
    };
    let cfg = ServiceConfig::parse(&service.config);
    let progress = match &cfg {
        Ok(cfg) => {
            if let Some(t) = o.target {
                state.services.get_mut(&svc).expect("exists").global_expect = t;
            }
            let p = crate::model::placement::plan(&state, &svc, cfg).progress;
            use crate::model::placement::Progress as P;
            let state = match p {
                P::Idle => options::ProgressState::Idle,
                P::Reached => options::ProgressState::Reached,
                P::Pending(_) => options::ProgressState::Pending,
                P::Failed(_) => options::ProgressState::Failed,
            };
            options::Progress {
                state,
                reason: p.reason().to_string(),
            }
        }
        Err(e) => options::Progress {
            state: options::ProgressState::Failed,
            reason: format!("invalid config: {e}"),
        },
    };
    let mut nodes: Vec<String> = match &cfg {
        Ok(c) => c.candidates(crate::model::placement::service_members(&state)),
        Err(_) => Vec::new(),
    };
    for n in service.instances.keys() {
        if !nodes.contains(n) {
            nodes.push(n.clone());
        }
    }
    let view = |n: &String| {
        let monitor = state.node_monitors.get(n);
        let v = options::InstanceView {
            instance: service.instances.get(n).cloned().unwrap_or_default(),
            node_status: monitor.map(|m| m.status),
            node_frozen: monitor.map(|m| m.frozen),
        };
        (n.clone(), v)
    };
    let instances = nodes.iter().map(view).collect();
    let up: Vec<String> = service
        .instances
        .iter()
        .filter(|(_, i)| i.avail == Avail::Up)
        .map(|(n, _)| n.clone())
        .collect();
    let avail = match (&cfg, up.len()) {
        (_, 0) => options::ServiceAvail::Down,
        (Ok(c), n) if c.topology == Topology::Failover && n > 1 => options::ServiceAvail::Warn,
        _ => options::ServiceAvail::Up,
    };
    let detail = options::ServiceDetail {
        version: service.version,
        global_expect: service.global_expect,
        topology: cfg
            .as_ref()
            .map(|c| c.topology.to_string())
            .unwrap_or_default(),
        orchestrate: cfg
            .as_ref()
            .map(|c| c.orchestrate.to_string())
            .unwrap_or_default(),
        nodes,
        avail,
        up,
        instances,
        progress,
    };
    let (exists, detail) = (true, Some(detail));
    Ok(options::ServiceStatusReply {
        svcname: svc,
        exists,
        detail,
    })
}

/// `job_list`, `job_show` (`id`), `job_cancel` (`id`), on this node or `node`.
async fn job_action(host: &Arc<dyn Host>, action: Action, o: options::Jobs) -> Result<Doc> {
    if let Some(node) = o.node.as_deref().filter(|n| *n != host.me()) {
        return host::ask(&**host, node, action, &o, Duration::from_secs(15)).await;
    }
    let id = || {
        o.id.as_deref()
            .ok_or_else(|| bad(format!("{action}: missing option id")))
    };
    let jobs = host.local().clone().jobs.clone();
    let err = |e: jobs::JobError| {
        let status = match e {
            jobs::JobError::Io(_) => Status::Error,
            _ => Status::BadRequest,
        };
        ActionError::new(status, e.to_string())
    };
    match action {
        Action::JobList => api::reply(&options::JobList {
            node: host.me(),
            jobs: jobs.list(),
        }),
        Action::JobShow => {
            let (job, out, err) = jobs.show(id()?).map_err(err)?;
            api::reply(&options::JobShown { job, out, err })
        }
        _ => {
            let rec = jobs.cancel(id()?).map_err(err)?;
            host.local()
                .logs
                .warn(&rec.svc, format!("job {} canceled", rec.id));
            api::reply(&options::JobCanceled { job: rec })
        }
    }
}

/// `get_service_monitor`: one service's or every service's monitor in `s`.
pub fn service_monitors(s: &raft::ClusterState, svc: Option<&str>) -> Result<Doc> {
    let view = |v: &raft::state::Service| options::ServiceMonitor {
        global_expect: v.global_expect.clone(),
        instances: v.instances.clone(),
    };
    match svc {
        None => api::reply(
            &s.services
                .iter()
                .map(|(k, v)| (k.clone(), view(v)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        ),
        Some(svc) => match s.services.get(svc) {
            Some(v) => api::reply(&view(v)),
            None => Err(bad(format!("service {svc:?} does not exist"))),
        },
    }
}
