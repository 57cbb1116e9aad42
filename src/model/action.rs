//! Instance actions (`om <svc> start|stop|restart|status|check|freeze|thaw`) as decisions:
//! the verb parsed once into [`Verb`], what must be committed before the commands run
//! ([`before`]), the checks, starts and stops to run ([`Verb::steps`]), and what their
//! results mean for the instance ([`judge`]).
//!
//! `services::run_action` is the executor: it holds the instance lock, commits what
//! [`before`] returns, runs the steps on the resources, and reports what [`judge`] says.
//! Everything here is a pure function of its arguments, so the property tests below can
//! try every verb against every instance state.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use raft::state::Avail;
use raft::state::Instance;
use raft::state::LocalExpect;
use raft::state::MonitorStatus;
use raft::state::NodeStatus;
use raft::ClusterState;

use super::service::Topology;

/// An instance action's verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verb {
    /// Start the resources (and keep the instance started: `local_expect = started`).
    Start,
    /// Stop them (and keep it stopped and frozen).
    Stop,
    /// Stop, then start; the monitor's expectations are left as they are.
    Restart,
    /// Run the checks; exit status 0 when the instance is up.
    Status,
    /// The same as `status`.
    Check,
    /// Freeze the instance: the orchestrator leaves it alone.
    Freeze,
    /// Thaw it.
    Thaw,
}

impl Verb {
    /// Every verb, in the order the help lists them.
    pub const ALL: [Verb; 7] = [
        Verb::Start,
        Verb::Stop,
        Verb::Restart,
        Verb::Status,
        Verb::Check,
        Verb::Freeze,
        Verb::Thaw,
    ];

    /// The wire and CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
            Verb::Status => "status",
            Verb::Check => "check",
            Verb::Freeze => "freeze",
            Verb::Thaw => "thaw",
        }
    }

    /// Every spelling, comma-separated, for error messages.
    pub fn list() -> String {
        Verb::ALL.map(Verb::as_str).join(", ")
    }

    /// What the executor runs, in order.
    pub fn steps(self) -> &'static [Step] {
        use Step::*;
        match self {
            Verb::Status | Verb::Check | Verb::Freeze | Verb::Thaw => &[Check],
            Verb::Start => &[Check, Start, Check],
            Verb::Stop => &[Check, Stop, Check],
            Verb::Restart => &[Check, Stop, Check, Start, Check],
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verb {
    type Err = String;

    fn from_str(s: &str) -> Result<Verb, String> {
        Verb::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown action {s:?}; actions: {}", Verb::list()))
    }
}

/// One thing the executor does to the resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Run the checks (the last one's result is the instance's availability).
    Check,
    /// Run the start commands.
    Start,
    /// Run the stop commands.
    Stop,
}

/// A parsed `service_action` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionCmd {
    /// What to do.
    pub verb: Verb,
    /// `--rid a,b`: only these resources.
    pub rids: Option<Vec<String>>,
    /// `--force`: start a failover instance even if another node may run one.
    pub force: bool,
}

impl ActionCmd {
    /// Parses `[verb, --rid R, --force]`.
    pub fn parse(argv: &[String]) -> Result<ActionCmd, String> {
        let Some(verb) = argv.first() else {
            return Err(format!("empty command; actions: {}", Verb::list()));
        };
        let mut cmd = ActionCmd {
            verb: verb.parse()?,
            rids: None,
            force: false,
        };
        let mut rest = argv[1..].iter();
        while let Some(a) = rest.next() {
            match a.as_str() {
                "--force" => cmd.force = true,
                "--rid" => {
                    let v = rest.next().ok_or("--rid needs a value")?;
                    cmd.rids = Some(v.split(',').map(str::to_string).collect());
                }
                other => return Err(format!("unknown argument {other:?} for {verb}")),
            }
        }
        Ok(cmd)
    }

    /// On the whole instance, not some of its resources.
    pub fn whole(&self) -> bool {
        self.rids.is_none()
    }
}

impl fmt::Display for ActionCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rids {
            Some(r) => write!(f, "{} --rid {}", self.verb, r.join(",")),
            None => write!(f, "{}", self.verb),
        }
    }
}

/// What is committed before the commands run, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Before {
    /// Report the instance frozen, so the orchestrator does not place it here meanwhile.
    Freeze,
    /// Set this node's `local_expect` (with `reset_retries` for a start), so the monitor
    /// keeps what the operator did.
    Expect(LocalExpect),
}

/// What must be committed before `cmd` runs on `me`'s instance of `svc`, or why it must
/// not run: a whole start of a failover service is refused while another node that is not
/// down runs it or is meant to (unless forced).
pub fn before(
    cmd: &ActionCmd,
    topology: Topology,
    state: &ClusterState,
    svc: &str,
    me: &str,
) -> Result<Vec<Before>, String> {
    if !cmd.whole() {
        return Ok(Vec::new());
    }
    let inst = instance(state, svc, me);
    match cmd.verb {
        Verb::Start => {
            let elsewhere = running_elsewhere(state, svc, me);
            if topology == Topology::Failover && !cmd.force && !elsewhere.is_empty() {
                return Err(format!(
                    "{svc} is a failover service placed on {}: move it with `om {svc} switch --to {me}` (or --force)",
                    elsewhere.join(", "),
                ));
            }
            Ok(vec![Before::Expect(LocalExpect::Started)])
        }
        Verb::Stop if inst.frozen => Ok(vec![Before::Expect(LocalExpect::Stopped)]),
        Verb::Stop => Ok(vec![Before::Freeze, Before::Expect(LocalExpect::Stopped)]),
        _ => Ok(Vec::new()),
    }
}

/// `me`'s instance of `svc` as the state has it (the default when it has none).
pub fn instance(state: &ClusterState, svc: &str, me: &str) -> Instance {
    state
        .services
        .get(svc)
        .and_then(|v| v.instances.get(me).cloned())
        .unwrap_or_default()
}

/// The other nodes, not down, whose instance of `svc` is up or meant to be started.
fn running_elsewhere(state: &ClusterState, svc: &str, me: &str) -> Vec<String> {
    let Some(service) = state.services.get(svc) else {
        return Vec::new();
    };
    let not_down = |n: &str| {
        state
            .node_monitors
            .get(n)
            .is_some_and(|m| m.status != NodeStatus::Down)
    };
    service
        .instances
        .iter()
        .filter(|(n, i)| {
            n.as_str() != me
                && not_down(n)
                && (i.local_expect == LocalExpect::Started
                    || matches!(i.avail, Avail::Up | Avail::Warn))
        })
        .map(|(n, _)| n.clone())
        .collect()
}

/// What the executor saw: whether every start and stop command succeeded, and the
/// availability of the instance and of each resource after the last check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// Every start and stop command returned 0.
    pub commands_ok: bool,
    /// The instance's availability after the last check.
    pub avail: Avail,
    /// Each resource's, after the last check.
    pub res: BTreeMap<String, Avail>,
}

/// What an action's results mean: its exit status and note, and the monitor fields to
/// report for the instance (`None`: unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// 0 on success.
    pub ret: i32,
    /// Why it failed, for the transcript.
    pub note: Option<String>,
    /// The instance's monitor status.
    pub status: Option<MonitorStatus>,
    /// Whether the instance is frozen.
    pub frozen: Option<bool>,
}

/// Judges what `cmd` did: `rids` are the instance's resources in config order, `was` its
/// monitor status before the action.
pub fn judge(cmd: &ActionCmd, rids: &[String], was: MonitorStatus, ran: &Ran) -> Verdict {
    let up = |a: Avail| matches!(a, Avail::Up | Avail::NotApplicable);
    let whole = cmd.whole();
    let mut v = Verdict::default();
    match cmd.verb {
        Verb::Status | Verb::Check if !up(ran.avail) => v.ret = 1,
        Verb::Status | Verb::Check => {}
        Verb::Freeze | Verb::Thaw => v.frozen = Some(cmd.verb == Verb::Freeze),
        Verb::Start => {
            let started = match &cmd.rids {
                None => up(ran.avail),
                Some(only) => only.iter().all(|r| ran.res.get(r) == Some(&Avail::Up)),
            };
            if !ran.commands_ok || !started {
                v.ret = 1;
                v.note = Some(format!("start failed: instance is {}", ran.avail));
                v.status = whole.then_some(MonitorStatus::StartFailed);
            } else if whole {
                v.status = Some(MonitorStatus::Idle);
                v.frozen = Some(false);
            }
        }
        Verb::Stop => {
            let still_up: Vec<&str> = rids
                .iter()
                .filter(|r| cmd.rids.as_ref().is_none_or(|o| o.contains(r)))
                .filter(|r| ran.res.get(*r) != Some(&Avail::Down))
                .map(String::as_str)
                .collect();
            if !ran.commands_ok || !still_up.is_empty() {
                v.ret = 1;
                v.note = Some(format!("stop failed: still up: {}", still_up.join(", ")));
                v.status = whole.then_some(MonitorStatus::StopFailed);
            } else if whole {
                // A start failure stays visible until a start succeeds or it is cleared.
                v.status = (was != MonitorStatus::StartFailed).then_some(MonitorStatus::Idle);
                v.frozen = Some(true);
            }
        }
        Verb::Restart if !ran.commands_ok || !up(ran.avail) => {
            v.ret = 1;
            v.note = Some(format!("restart failed: instance is {}", ran.avail));
        }
        Verb::Restart => {}
    }
    v
}

/// Whether the instance must be reported: the state does not hold what the action found.
pub fn must_report(now: &Instance, avail: Avail, v: &Verdict) -> bool {
    now.avail != avail
        || v.status.is_some_and(|st| st != now.status)
        || v.frozen.is_some_and(|f| f != now.frozen)
}

#[cfg(test)]
mod tests;
