//! A service instance on this node: its resources' commands, their last checked status, and
//! the reports it commits.
//!
//! One [`InstanceRt`] per local service; its mutex serializes everything that runs the
//! service's commands (the monitor's worker, `service_action`, jobs, shutdown), so two
//! starts never overlap.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use raft::state::Avail;
use raft::state::MonitorStatus;
use raft::Command;
use tokio::sync::Notify;

use super::exec;
use super::exec::PidSlot;
use super::Local;
use crate::api::ApiError as ActionError;
use crate::model::service::Resource;
use crate::model::service::ServiceConfig;
use crate::services::host::commit_limit;
use crate::services::Host;

/// What a series of commands printed, for `service_action` answers and jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    /// Standard output of the commands, each introduced by a header line.
    pub out: String,
    /// Standard error of the commands, and the monitor's own notes.
    pub err: String,
    /// 0 on success.
    pub ret: i32,
}

impl Transcript {
    /// Appends a note to `err`.
    pub fn note(&mut self, msg: impl AsRef<str>) {
        self.err.push_str(msg.as_ref());
        if !self.err.ends_with('\n') {
            self.err.push('\n');
        }
    }
}

/// The local runtime of one service.
pub struct InstanceRt {
    /// The service name.
    pub svc: String,
    /// The action lock and the monitor's memory of the instance.
    pub mem: tokio::sync::Mutex<Mem>,
    /// Wakes the instance's worker (state change, check due, shutdown).
    pub wake: Notify,
    /// The scheduler asks for a check.
    pub check_due: AtomicBool,
    /// When the scheduler asked last, and the interval it uses.
    pub schedule: Mutex<(Option<Instant>, Duration)>,
    /// The process group of the command running now, for cancellation.
    pub running: PidSlot,
}

/// What the monitor remembers of an instance between passes.
#[derive(Debug, Default)]
pub struct Mem {
    /// The parsed config and its version.
    pub cfg: Option<(u64, Arc<ServiceConfig>)>,
    /// The config version whose parse error was logged.
    pub bad_version: Option<u64>,
    /// The last check of each resource.
    pub res: BTreeMap<String, Avail>,
    /// Aggregate of `res`; `Unknown` before the first check.
    pub avail: Avail,
    /// Whether a check ran since the worker started.
    pub checked: bool,
    /// A start was attempted (or the instance was seen up) since `local_expect` became
    /// `started`: a resource found down from now on uses its restart budget.
    pub started_once: bool,
    /// Stopped by `node.split_action`; the next start is not a restart.
    pub split_stopped: bool,
    /// When each pending restart is due.
    pub restart_at: BTreeMap<String, Instant>,
    /// The replicated status and restart counts seen on the last pass, to notice a clear.
    pub seen_failed: bool,
    /// See `seen_failed`.
    pub seen_restarts: bool,
}

/// Everything the instance's commands need from the daemon.
#[derive(Clone)]
pub struct Ctx {
    /// The daemon.
    pub host: Arc<dyn Host>,
    /// Its local service runtime.
    pub local: Arc<Local>,
    /// This node's name.
    pub me: String,
}

/// The aggregate availability of resource statuses.
pub fn aggregate(res: &BTreeMap<String, Avail>, cfg: &ServiceConfig) -> Avail {
    if cfg.resources.is_empty() {
        return Avail::NotApplicable;
    }
    let up = cfg
        .resources
        .iter()
        .filter(|r| res.get(&r.rid) == Some(&Avail::Up))
        .count();
    if up == cfg.resources.len() {
        Avail::Up
    } else if up == 0 {
        if cfg.resources.iter().all(|r| res.contains_key(&r.rid)) {
            Avail::Down
        } else {
            Avail::Unknown
        }
    } else {
        Avail::Warn
    }
}

impl InstanceRt {
    /// A runtime for `svc`.
    pub fn new(svc: &str) -> InstanceRt {
        InstanceRt {
            svc: svc.to_string(),
            mem: tokio::sync::Mutex::new(Mem::default()),
            wake: Notify::new(),
            check_due: AtomicBool::new(false),
            schedule: Mutex::new((None, crate::model::service::DEFAULT_CHECK_INTERVAL)),
            running: Arc::new(Mutex::new(None)),
        }
    }

    /// Asks the worker for a check now.
    pub fn request_check(&self) {
        self.check_due.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn env(&self, cx: &Ctx, rid: &str, action: &str) -> Vec<(String, String)> {
        vec![
            ("OM_SVCNAME".into(), self.svc.clone()),
            ("OM_RID".into(), rid.to_string()),
            ("OM_ACTION".into(), action.to_string()),
            ("OM_NODENAME".into(), cx.me.clone()),
            (
                "OM_VAR".into(),
                cx.local.logs.svc_dir(&self.svc).display().to_string(),
            ),
            (
                "OSVC_ROOT".into(),
                cx.host.paths().root.display().to_string(),
            ),
        ]
    }

    /// Runs one command of a resource, logging it; `quiet` logs only failures (checks).
    async fn run(
        &self,
        cx: &Ctx,
        res: &Resource,
        action: &str,
        cmd: &str,
        quiet: bool,
        tr: Option<&mut Transcript>,
    ) -> exec::Output {
        let dir = cx.local.logs.svc_dir(&self.svc);
        let _ = std::fs::create_dir_all(&dir);
        let out = exec::run_sh(
            cmd,
            &self.env(cx, &res.rid, action),
            &dir,
            res.timeout,
            Some(&self.running),
        )
        .await;
        if !quiet {
            let mut msg = format!(
                "{}: {action}: `{cmd}` exited {} in {:.2}s",
                res.rid,
                out.ret,
                out.elapsed.as_secs_f64()
            );
            for (name, text) in [("out", &out.out), ("err", &out.err)] {
                let t = text.trim_end();
                if !t.is_empty() {
                    let t: String = t.chars().take(4000).collect();
                    let _ = write!(msg, "\n  {name}: {}", t.replace('\n', "\n  "));
                }
            }
            if out.ok() {
                cx.local.logs.info(&self.svc, msg);
            } else {
                cx.local.logs.warn(&self.svc, msg);
            }
        }
        if let Some(tr) = tr {
            let _ = writeln!(tr.out, "{}: {action}: {cmd}", res.rid);
            tr.out.push_str(&out.out);
            tr.err.push_str(&out.err);
        }
        out
    }

    /// Runs every resource's check; updates `mem` and logs status changes.
    pub async fn check(
        &self,
        cx: &Ctx,
        mem: &mut Mem,
        cfg: &ServiceConfig,
        mut tr: Option<&mut Transcript>,
    ) -> Avail {
        for res in &cfg.resources {
            let o = self
                .run(cx, res, "check", &res.check, true, tr.as_deref_mut())
                .await;
            let now = if o.ok() { Avail::Up } else { Avail::Down };
            let before = mem.res.insert(res.rid.clone(), now);
            if before != Some(now) {
                let why = if o.timed_out {
                    format!(" (check timed out after {:?})", res.timeout)
                } else if o.ok() {
                    String::new()
                } else {
                    format!(" (check exited {})", o.ret)
                };
                let lvl = if now == Avail::Up || before.is_none() {
                    "info"
                } else {
                    "warn"
                };
                cx.local
                    .logs
                    .append(&self.svc, lvl, format!("{} is {now}{why}", res.rid));
            }
        }
        mem.res.retain(|rid, _| cfg.resource(rid).is_some());
        mem.checked = true;
        let avail = aggregate(&mem.res, cfg);
        if avail != mem.avail {
            cx.local.logs.info(
                &self.svc,
                format!("instance avail {} -> {avail}", mem.avail),
            );
        }
        mem.avail = avail;
        if let Some(tr) = tr {
            for res in &cfg.resources {
                let _ = writeln!(tr.out, "{:<12} {}", res.rid, mem.res[&res.rid]);
            }
            let _ = writeln!(tr.out, "{:<12} {avail}", "avail");
        }
        avail
    }

    /// Starts the resources that are not up (only `only` when given), in config order.
    /// Returns whether every start command succeeded.
    pub async fn start(
        &self,
        cx: &Ctx,
        mem: &mut Mem,
        cfg: &ServiceConfig,
        only: Option<&[String]>,
        mut tr: Option<&mut Transcript>,
    ) -> bool {
        let mut ok = true;
        for res in &cfg.resources {
            if only.is_some_and(|o| !o.contains(&res.rid)) {
                continue;
            }
            if mem.res.get(&res.rid) == Some(&Avail::Up) {
                continue;
            }
            let o = self
                .run(cx, res, "start", &res.start, false, tr.as_deref_mut())
                .await;
            if !o.ok() {
                ok = false;
                // Later resources usually depend on earlier ones.
                break;
            }
        }
        ok
    }

    /// Stops the resources that are up (or all of `only`), in reverse config order.
    /// Returns whether every stop command succeeded.
    pub async fn stop(
        &self,
        cx: &Ctx,
        mem: &mut Mem,
        cfg: &ServiceConfig,
        only: Option<&[String]>,
        mut tr: Option<&mut Transcript>,
    ) -> bool {
        let mut ok = true;
        for res in cfg.resources.iter().rev() {
            if only.is_some_and(|o| !o.contains(&res.rid)) {
                continue;
            }
            if mem.res.get(&res.rid) == Some(&Avail::Down) {
                continue;
            }
            let o = self
                .run(cx, res, "stop", &res.stop, false, tr.as_deref_mut())
                .await;
            ok &= o.ok();
        }
        ok
    }

    /// The parsed config of `version`, from cache or by parsing `text`.
    pub fn config(
        &self,
        cx: &Ctx,
        mem: &mut Mem,
        version: u64,
        text: &str,
    ) -> Option<Arc<ServiceConfig>> {
        if let Some((v, c)) = &mem.cfg {
            if *v == version {
                return Some(c.clone());
            }
        }
        match ServiceConfig::parse(text) {
            Ok(c) => {
                let c = Arc::new(c);
                self.schedule.lock().unwrap().1 = c.check_interval;
                mem.cfg = Some((version, c.clone()));
                Some(c)
            }
            Err(e) => {
                if mem.bad_version != Some(version) {
                    mem.bad_version = Some(version);
                    cx.local.logs.error(
                        &self.svc,
                        format!("config version {version} is invalid, nothing is done: {e}"),
                    );
                }
                None
            }
        }
    }
}

/// Commits a report of this node's instance of `svc` and waits until it is applied here.
/// `seen`: the instance's `started_gen` in the state the monitor decided on (the leader
/// counts an order to start no report covered as a start in progress); `None` for an
/// operator's action, which answers for no order.
pub async fn report(
    cx: &Ctx,
    svc: &str,
    avail: Avail,
    status: Option<MonitorStatus>,
    frozen: Option<bool>,
    restarts: BTreeMap<String, u32>,
    seen: Option<u64>,
) -> Result<(), ActionError> {
    commit(
        &cx.host,
        Command::ReportInstance {
            svc: svc.to_string(),
            node: cx.me.clone(),
            avail,
            status,
            frozen,
            restarts,
            at_ms: crate::clock::now_ms(),
            started_gen: seen,
        },
    )
    .await
}

/// Proposes `cmd` and waits (up to 5 s) until this node has applied it, so that what the
/// monitor reads next includes it.
///
/// Gives up after `node.down_timeout` (at least 1 s): without a majority a proposal never
/// commits, and the monitor must not hang on it (it has a split action to run).
pub async fn commit(host: &Arc<dyn Host>, cmd: Command) -> Result<(), ActionError> {
    let c = host.propose(cmd, commit_limit(&host.config())).await?;
    if let Ok(node) = host.node() {
        let _ = node
            .raft
            .wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(Some(c.index), "local apply")
            .await;
    }
    Ok(())
}
