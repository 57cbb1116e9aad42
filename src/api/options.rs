//! One options struct per action (several actions share one where their options are the
//! same), decoded with serde: a missing or malformed option is a `BAD_REQUEST` naming the
//! option, a value outside a closed set names the allowed values. Options a struct does
//! not list are ignored, as docs/PROTOCOL.md promises; `null` means absent.

use raft::node::Committed;
use raft::state::GlobalExpect;
use raft::state::LocalExpect;
use raft::state::MonitorStatus;
use raft::state::NodeExpect;
use raft::state::NodeStatus;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;

use super::Action;
use super::ApiRequest;

/// A `bool` option where `null` or absence mean `false`.
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// `daemon_status` (the reply is [`super::status::ClusterStatus`]; with `local`, see
/// [`super::status::OwnStatus`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DaemonStatus {
    /// Only this node's own view (what peers ask each other).
    #[serde(deserialize_with = "flag")]
    pub local: bool,
}

/// `daemon_stop`, `daemon_start`, `daemon_shutdown`: the whole daemon, or one thread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThreadRef {
    /// One of the daemon's threads (listener, raft, monitor, scheduler, watcher, control).
    pub thread_id: Option<String>,
}

/// The answer to `daemon_stop` and `daemon_shutdown` of the whole daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    /// The node whose daemon stops.
    pub stopping: String,
}

/// The answer to `daemon_stop`, `daemon_start` and `daemon_shutdown` of one thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadChanged {
    /// The thread.
    pub thread_id: String,
    /// Its state now.
    pub state: Option<super::status::ThreadState>,
}

/// The answer to [`InjectFault`], one shape per fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FaultInjected {
    /// The thread's task was aborted; the supervisor restarts it.
    Killed {
        /// The thread.
        thread_id: String,
        /// Always true.
        killed: bool,
    },
    /// The Raft core stopped, as on an openraft fatal error.
    RaftStopped {
        /// `raft`.
        thread_id: String,
        /// Always true.
        raft_stopped: bool,
    },
    /// The listener now drops `blacklisted`'s frames from `addr`.
    Blacklisted {
        /// The sender.
        blacklisted: String,
        /// Its source address.
        addr: std::net::IpAddr,
    },
}

/// `daemon_inject_fault` (control socket, testing aid).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectFault {
    /// The thread to crash (required unless `blacklist` is given).
    #[serde(default)]
    pub thread_id: String,
    /// Instead: the listener drops this sender's frames from `addr`, as after 5 invalid
    /// ones (a link down from one node, for tests of relayed routes).
    #[serde(default)]
    pub blacklist: Option<String>,
    /// The source address for `blacklist` (default 127.0.0.1).
    #[serde(default)]
    pub addr: Option<std::net::IpAddr>,
    /// With `raft`: stop the Raft core itself, as an openraft fatal error does.
    #[serde(default, deserialize_with = "flag")]
    pub fatal: bool,
}

/// `check_listener_addr` (control socket).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckListenerAddr {
    /// `host:port`.
    pub addr: String,
}

impl ApiRequest for CheckListenerAddr {
    const ACTION: Action = Action::CheckListenerAddr;
    type Reply = AddrFree;
}

/// The answer to [`CheckListenerAddr`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrFree {
    /// The address asked about.
    pub addr: String,
    /// Always true in a successful answer (a taken address is an error naming its holder).
    pub free: bool,
}

/// `join` on the control socket: make this node join the cluster `node` belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinCluster {
    /// The cluster secret.
    pub secret: String,
    /// A member: `name` (port 1214) or `host:port`.
    pub node: String,
}

/// `join` over the wire: admit `node` (or, from a member naming itself, its new address).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admit {
    /// The joiner's name (must be the sender's for a non-member).
    pub node: String,
    /// Its listener address (`host:port`); default: the frame's source IP and `port`.
    pub addr: Option<String>,
    /// Its listener port, when `addr` is absent.
    pub port: Option<u16>,
    /// The Raft id of its new store, in decimal (JSON tools round 64-bit integers).
    pub id: Option<String>,
}

/// `leave`: this node leaves, or `node` is evicted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Leave {
    /// The member to remove (default, on the control socket: this node).
    pub node: Option<String>,
    /// Allow a removal that leaves a single voter.
    #[serde(deserialize_with = "flag")]
    pub force: bool,
}

/// The answer to [`Leave`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    /// The node removed.
    pub left: String,
}

impl ApiRequest for Leave {
    const ACTION: Action = Action::Leave;
    type Reply = Left;
}

/// `set_node_monitor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SetNodeMonitor {
    /// The node (default: the receiver).
    pub node: Option<String>,
    /// New monitor status.
    pub status: Option<NodeStatus>,
    /// New local expectation.
    pub local_expect: Option<NodeExpect>,
    /// Frozen or thawed.
    pub frozen: Option<bool>,
}

impl ApiRequest for SetNodeMonitor {
    const ACTION: Action = Action::SetNodeMonitor;
    type Reply = Committed;
}

/// `get_node_monitor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeRef {
    /// One node (default: all).
    pub node: Option<String>,
}

/// `set_service_monitor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetServiceMonitor {
    /// The service.
    pub svcname: String,
    /// The instance's node, for `status` and `local_expect`.
    #[serde(default)]
    pub node: Option<String>,
    /// New instance monitor status.
    #[serde(default)]
    pub status: Option<MonitorStatus>,
    /// New instance local expectation.
    #[serde(default)]
    pub local_expect: Option<LocalExpect>,
    /// New global expectation.
    #[serde(default)]
    pub global_expect: Option<GlobalExpect>,
    /// Forget the restart counts.
    #[serde(default, deserialize_with = "flag")]
    pub reset_retries: bool,
}

impl ApiRequest for SetServiceMonitor {
    const ACTION: Action = Action::SetServiceMonitor;
    type Reply = Committed;
}

/// `get_service_monitor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceFilter {
    /// One service (default: all).
    pub svcname: Option<String>,
    /// Read on the leader once it has confirmed its leadership (as `get_service_config`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub linearizable: bool,
}

/// A service's monitor in a `get_service_monitor` answer (one, or a map of them by
/// service name without `svcname`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceMonitor {
    /// The cluster-wide target.
    pub global_expect: GlobalExpect,
    /// Its instances by node.
    pub instances: std::collections::BTreeMap<String, raft::state::Instance>,
}

/// `clear`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clear {
    /// The service.
    pub svcname: String,
    /// One node's instance (default: all).
    #[serde(default)]
    pub node: Option<String>,
}

impl ApiRequest for Clear {
    const ACTION: Action = Action::Clear;
    type Reply = Committed;
}

/// `get_service_config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRef {
    /// The service.
    pub svcname: String,
    /// Read on the leader once it has confirmed its leadership with a majority (forwarded
    /// there by a follower): the answer reflects every write acknowledged before the request
    /// was sent. Without it, the receiver's applied state, which may lag.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub linearizable: bool,
}

impl ApiRequest for ServiceRef {
    const ACTION: Action = Action::GetServiceConfig;
    type Reply = ServiceConfig;
}

/// The answer to `get_service_config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceConfig {
    /// The service.
    pub svcname: String,
    /// Its config text.
    pub config: String,
    /// Its config version.
    pub version: u64,
}

/// `set_service_config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetServiceConfig {
    /// The service.
    pub svcname: String,
    /// The new config text (not with `delete`).
    #[serde(default)]
    pub config: Option<String>,
    /// Refuse unless the current version is this one.
    #[serde(default)]
    pub version: Option<u64>,
    /// Refuse if the service exists.
    #[serde(default, deserialize_with = "flag")]
    pub create: bool,
    /// Delete the service.
    #[serde(default, deserialize_with = "flag")]
    pub delete: bool,
}

impl ApiRequest for SetServiceConfig {
    const ACTION: Action = Action::SetServiceConfig;
    type Reply = Committed;
}

/// An instance action's argv: a list, or (for hand-typed requests) one space-separated
/// string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Argv {
    /// `["start", "--rid", "app#1"]`.
    List(Vec<String>),
    /// `"start --rid app#1"`.
    Line(String),
}

impl Argv {
    /// The words, or `None` when there are none.
    pub fn words(&self) -> Option<Vec<String>> {
        let words: Vec<String> = match self {
            Argv::List(v) => v.clone(),
            Argv::Line(s) => s.split_whitespace().map(str::to_string).collect(),
        };
        (!words.is_empty()).then_some(words)
    }
}

/// `service_action`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAction {
    /// The service.
    pub svcname: String,
    /// The action and its arguments.
    #[serde(default)]
    pub command: Option<Argv>,
    /// Wait for the result (default) or run it as a job.
    #[serde(default)]
    pub sync: Option<bool>,
    /// The node to run it on (default: the receiver).
    #[serde(default)]
    pub node: Option<String>,
}

/// `service_logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceLogs {
    /// The service.
    pub svcname: String,
    /// Lines per node before the cursor (default 50).
    #[serde(default)]
    pub backlog: Option<u64>,
    /// One node's lines only.
    #[serde(default)]
    pub node: Option<String>,
    /// This node's lines only (what nodes ask each other).
    #[serde(default, deserialize_with = "flag")]
    pub local: bool,
    /// Lines after this cursor.
    #[serde(default)]
    pub cursor: Option<LogCursor>,
    /// Long-poll this long for new lines (at most 60 000).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// Where a log reader stands: a line number on one node (with `local`), or one per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogCursor {
    /// This node's lines after this one.
    At(u64),
    /// Each node's lines after its number.
    PerNode(std::collections::BTreeMap<String, u64>),
}

/// One service log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Wall clock, ms since the epoch.
    pub t: u64,
    /// The node that wrote it.
    pub node: String,
    /// `info`, `warn` or `error`.
    pub lvl: String,
    /// The message (may span lines: command output).
    pub msg: String,
}

/// The answer to `service_logs` with `local`: this node's lines and where they end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalLogs {
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// The cursor after the last of them.
    pub cursor: u64,
}

/// The answer to `service_logs`: every node's lines merged by time, the cursor to follow
/// from on each node, and the nodes that did not answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Logs {
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// Each node's cursor after its last line.
    #[serde(default)]
    pub cursor: std::collections::BTreeMap<String, u64>,
    /// Why a node gave no lines.
    #[serde(default)]
    pub errors: std::collections::BTreeMap<String, String>,
}

/// `service_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The service.
    pub svcname: String,
    /// A global_expect to report progress towards.
    #[serde(default)]
    pub target: Option<GlobalExpect>,
}

impl ApiRequest for ServiceStatus {
    const ACTION: Action = Action::ServiceStatus;
    type Reply = ServiceStatusReply;
}

/// The answer to `service_status`: `exists` false and nothing else for a service that does
/// not exist (a wait for `deleted` ends on it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatusReply {
    /// The service.
    pub svcname: String,
    /// Whether it exists.
    pub exists: bool,
    /// What it is and where it stands, when it exists.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<ServiceDetail>,
}

/// A service that exists, as `service_status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDetail {
    /// Its config version.
    pub version: u64,
    /// What the orchestrator makes of it.
    pub global_expect: GlobalExpect,
    /// `failover` or `flex` (empty when the config does not parse).
    pub topology: String,
    /// `ha`, `start` or `no` (empty when the config does not parse).
    pub orchestrate: String,
    /// The nodes it may run on, in preference order, then any other with an instance.
    pub nodes: Vec<String>,
    /// Its availability over its instances.
    pub avail: ServiceAvail,
    /// The nodes where its instance is up.
    pub up: Vec<String>,
    /// Its instance on each of `nodes`, with that node's monitor.
    pub instances: std::collections::BTreeMap<String, InstanceView>,
    /// How far it is from the target.
    pub progress: Progress,
}

/// An instance as `service_status` shows it: the replicated record and its node's monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    /// The instance (the default record where the node has none yet).
    #[serde(flatten)]
    pub instance: raft::state::Instance,
    /// The node's monitor status, when the node is a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_status: Option<NodeStatus>,
    /// Whether the node is frozen, when it is a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_frozen: Option<bool>,
}

/// A service's progress towards its target (`model::placement::Progress`, as text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Where it stands.
    pub state: ProgressState,
    /// Why, in words.
    pub reason: String,
}

/// A service's availability over its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceAvail {
    /// Up where its topology wants it.
    Up,
    /// Up nowhere.
    Down,
    /// A failover service up on more than one node.
    Warn,
}

impl std::fmt::Display for ServiceAvail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServiceAvail::Up => "up",
            ServiceAvail::Down => "down",
            ServiceAvail::Warn => "warn",
        })
    }
}

/// How far a service is from its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressState {
    /// There is no target (`global_expect` none).
    Idle,
    /// The target is reached.
    Reached,
    /// On its way (the reason says to what it waits for).
    Pending,
    /// It cannot be reached without an operator (the reason says why).
    Failed,
}

impl std::fmt::Display for ProgressState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProgressState::Idle => "idle",
            ProgressState::Reached => "reached",
            ProgressState::Pending => "pending",
            ProgressState::Failed => "failed",
        })
    }
}

/// A job's state (`job.json` and the job actions' answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Its action runs.
    Running,
    /// It ended with exit status 0.
    Succeeded,
    /// It ended with another status.
    Failed,
    /// An operator canceled it (`job_cancel`).
    Canceled,
    /// The daemon stopped while it ran: its end is unknown.
    Lost,
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
            JobState::Lost => "lost",
        })
    }
}

/// A job as stored in `job.json` and listed by `om node jobs list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job id.
    pub id: String,
    /// The node it runs on.
    pub node: String,
    /// The service.
    pub svc: String,
    /// The action and its arguments.
    pub command: Vec<String>,
    /// Where it stands.
    pub state: JobState,
    /// Exit status once finished.
    pub ret: Option<i32>,
    /// When it was submitted (ms since the epoch).
    pub submitted_ms: u64,
    /// When it finished.
    pub finished_ms: Option<u64>,
}

/// The answer to `job_list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    /// The node whose jobs these are.
    pub node: String,
    /// Its jobs, oldest first.
    pub jobs: Vec<JobRecord>,
}

/// The answer to `job_show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobShown {
    /// The job.
    pub job: JobRecord,
    /// Its standard output so far.
    pub out: String,
    /// Its standard error so far.
    pub err: String,
}

/// The answer to `job_cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCanceled {
    /// The job, now canceled.
    pub job: JobRecord,
}

/// The answer to a synchronous `service_action`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionDone {
    /// The node it ran on.
    pub node: String,
    /// The commands' standard output, each introduced by a header line.
    pub out: String,
    /// Their standard error and the monitor's notes.
    pub err: String,
    /// 0 on success.
    pub ret: i32,
}

/// The answer to an asynchronous `service_action` (`sync: false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionSubmitted {
    /// The node it runs on.
    pub node: String,
    /// The job's id (`job_show`).
    pub job_id: String,
    /// The job.
    pub job: JobRecord,
}

/// `job_list`, `job_show`, `job_cancel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Jobs {
    /// The node whose jobs (default: the receiver).
    pub node: Option<String>,
    /// The job (show, cancel).
    pub id: Option<String>,
}

/// `events`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Events {
    /// Events after this sequence number.
    pub since: Option<u64>,
    /// Long-poll this long for new events (at most 60 000).
    pub wait_ms: Option<u64>,
    /// The `epoch` of the answer `since` came from: when the daemon restarted since (its
    /// sequence numbers start again), the answer says `reset` and starts from the oldest.
    pub epoch: Option<String>,
    /// Only events of this kind.
    pub kind: Option<EventKind>,
    /// Only changes about this node (its record, monitor, instances, approval).
    pub node: Option<String>,
    /// Only changes about this service (and its instances).
    pub service: Option<String>,
    /// Only changes whose path starts with this.
    pub prefix: Option<String>,
    /// At most this many events per answer (default and at most 1000; `next` continues).
    pub limit: Option<usize>,
}

impl ApiRequest for Events {
    const ACTION: Action = Action::Events;
    type Reply = EventsReply;
}

/// The answer to `events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsReply {
    /// The events kept by the filter, oldest first.
    pub events: Vec<NumberedEvent>,
    /// The sequence number to ask `since` next (the last one looked at).
    pub next: u64,
    /// The last sequence number given out.
    pub last: u64,
    /// The store's numbering (its Raft id; send it back with `since`).
    pub epoch: String,
    /// Events after `since` are missing (another store, or older than what the node can
    /// rebuild or keeps): this answer starts again from the oldest event kept.
    pub reset: bool,
}

/// An applied event with its local sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberedEvent {
    /// The event's number: its entry's log index and its place among that entry's events
    /// (`index << 16 | n`), the same in every run of the daemon on one store.
    pub seq: u64,
    /// The event and the log index that produced it.
    #[serde(flatten)]
    pub record: raft::EventRecord,
}

/// The kinds of [`raft::Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A field changed.
    Change,
    /// A command was refused.
    Error,
    /// A log line (membership, snapshot install).
    Log,
}

/// The agent API versions this node speaks, oldest first.
pub const API_VERSIONS: &[u32] = &[1];

/// `hello`: the agent API check-in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hello {
    /// The API version the caller speaks; absent: any.
    pub api_version: Option<u32>,
}

/// The answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The answering node (Zeek's `instance`).
    pub instance: String,
    /// Its listener address.
    pub host: String,
    /// The version it answers in (the caller's, or the newest).
    pub api_version: u32,
    /// Every version it speaks.
    pub api_versions: Vec<u32>,
}

impl ApiRequest for Hello {
    const ACTION: Action = Action::Hello;
    type Reply = HelloReply;
}

/// `get_nodes`: no options but the per-node timeout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetNodes {
    /// How long each node has to answer (ms; default 1000, at most 30 000).
    pub timeout_ms: Option<u64>,
}

/// One node's result in a `get_nodes` answer (Zeek's `Result` around a `NodeStatus`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeResult {
    /// The node.
    pub node: String,
    /// Whether it answered.
    pub success: bool,
    /// Why not (`request timed out`, unreachable, ...).
    pub error: Option<String>,
    /// Its status when it answered.
    pub data: Option<super::status::NodeSummary>,
}

impl ApiRequest for GetNodes {
    const ACTION: Action = Action::GetNodes;
    type Reply = Vec<NodeResult>;
}

/// The answer to a wire [`Admit`] of a new node: what the joiner writes into node.conf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admitted {
    /// The cluster it joins.
    pub cluster: ClusterSection,
    /// `listener.*` parameters every member shares.
    pub listener: std::collections::BTreeMap<String, String>,
    /// The leader that admitted it.
    pub leader: String,
}

/// node.conf's `[cluster]` as a joiner receives it (the secret it has already).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSection {
    /// `cluster.name`.
    pub name: String,
    /// `cluster.nodes`, the joiner included.
    pub nodes: Vec<String>,
}

/// The answer to a wire [`Admit`] from a member naming itself: its new address recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrRecorded {
    /// The member.
    pub node: String,
    /// Its listener address now.
    pub addr: String,
}

/// The answer to [`JoinCluster`] once this node reset its Raft state and is catching up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    /// The cluster's name.
    pub cluster: String,
    /// Its members, this node included.
    pub nodes: Vec<String>,
    /// The leader that admitted this node.
    pub leader: String,
}

impl ApiRequest for JoinCluster {
    const ACTION: Action = Action::Join;
    type Reply = Joined;
}

/// One sender in a detailed `blacklist_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderDetail {
    /// Its highest count of consecutive invalid frames, over its addresses.
    pub count: u32,
    /// Whether any of its addresses is blacklisted.
    pub blacklisted: bool,
    /// Seconds until the first of its blacklisted addresses is let in again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
    /// Per source address.
    pub addrs: std::collections::BTreeMap<String, AddrDetail>,
}

/// One (sender, address) pair in a detailed `blacklist_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrDetail {
    /// Consecutive invalid frames.
    pub count: u32,
    /// Whether the pair is blacklisted.
    pub blacklisted: bool,
    /// Frames dropped without decryption since it was blacklisted.
    pub dropped: u64,
}

/// The answer to `blacklist_clear`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlacklistCleared {
    /// How many (sender, address) pairs were blacklisted before.
    pub cleared: usize,
}

/// `blacklist_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlacklistStatus {
    /// Per-address detail and expiry instead of the seed's `{sender: count}`.
    #[serde(deserialize_with = "flag")]
    pub detail: bool,
}

/// `control_ping`: no options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControlPing {
    /// Relay: the receiver pings this node directly and answers with its pong (the route
    /// for a node the sender cannot reach itself). One hop: the receiver never relays on.
    pub target: Option<String>,
}

impl ApiRequest for ControlPing {
    const ACTION: Action = Action::ControlPing;
    type Reply = Pong;
}

/// The answer to [`ControlPing`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    /// The answering node.
    pub node: String,
    /// Its om version.
    pub version: String,
    /// The work types it offers.
    pub worktypes: Vec<String>,
    /// The nodes it reached lately, with the last round trip it measured to each (ms).
    pub connections: std::collections::BTreeMap<String, f64>,
    /// Relayed: the round trip the relaying node measured to the target (ms).
    #[serde(default)]
    pub relayed_ms: Option<f64>,
}

/// `work_submit`: run a unit on the receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkSubmit {
    /// The unit's id (made by the submitting node: the same on both).
    pub unitid: String,
    /// A work type of the receiver's node.conf.
    pub worktype: String,
    /// Extra arguments (only if the work type allows them).
    #[serde(default)]
    pub params: Vec<String>,
    /// Fail the unit if it has not started this long after submission (ms).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// The payload, base64 (standard alphabet, padded).
    #[serde(default)]
    pub payload: String,
    /// The submitting node.
    #[serde(default)]
    pub submitter: String,
}

impl ApiRequest for WorkSubmit {
    const ACTION: Action = Action::WorkSubmit;
    type Reply = WorkUnitStatus;
}

/// A work unit as `work list` shows it: Receptor's field names, plus the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WorkUnitStatus {
    /// The state's number (0 Pending, 1 Running, 2 Succeeded, 3 Failed, 4 Canceled).
    pub state: u8,
    /// The state's name.
    pub state_name: String,
    /// Why it is in that state.
    pub detail: String,
    /// Bytes of stdout so far.
    pub stdout_size: u64,
    /// Its work type.
    pub work_type: String,
    /// The node that executes it.
    pub node: String,
    /// When it was submitted (ms since the epoch).
    pub submitted_ms: u64,
}

/// `work_status`: some or all of the receiver's units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkStatus {
    /// These units (default: all).
    pub unitids: Vec<String>,
}

impl ApiRequest for WorkStatus {
    const ACTION: Action = Action::WorkStatus;
    type Reply = std::collections::BTreeMap<String, WorkUnitStatus>;
}

/// `work_results`: a chunk of a unit's stdout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkResults {
    /// The unit.
    pub unitid: String,
    /// The byte offset to read from.
    #[serde(default)]
    pub startpos: u64,
    /// Wait this long for new bytes when there are none yet (at most 10 000).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

impl ApiRequest for WorkResults {
    const ACTION: Action = Action::WorkResults;
    type Reply = WorkChunk;
}

/// The answer to [`WorkResults`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkChunk {
    /// The bytes, base64.
    pub data: String,
    /// The unit is over and nothing follows these bytes.
    pub done: bool,
}

/// `work_cancel`, `work_release`: one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkUnit {
    /// The unit.
    pub unitid: String,
}

impl ApiRequest for WorkUnit {
    const ACTION: Action = Action::WorkCancel;
    type Reply = WorkUnitStatus;
}

/// `control_command`: a control service command for the receiver to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlLine {
    /// The command, in the text or the JSON form (one-answer commands only).
    pub line: String,
}

impl ApiRequest for ControlLine {
    const ACTION: Action = Action::ControlCommand;
    /// The command's JSON answer.
    type Reply = serde_json::Value;
}

/// `cluster_secret_add` (control socket): the secret every node is to accept.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretAdd {
    /// The new secret (at least 32 printable characters); absent: the daemon generates
    /// 32 random bytes in hex.
    pub secret: Option<String>,
}

impl std::fmt::Debug for SecretAdd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretAdd { secret: <redacted> }")
    }
}

impl ApiRequest for SecretAdd {
    const ACTION: Action = Action::ClusterSecretAdd;
    type Reply = SecretStepDone;
}

/// A step of the secret rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationStep {
    /// Every node accepts a new secret.
    Add,
    /// Every node connects with it.
    Use,
    /// No node accepts an old one any more.
    Remove,
}

/// `cluster_secret_use`, `cluster_secret_remove` (control socket).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretStep {
    /// The secret's key id: its fingerprint, 8 hex digits, as `cluster_secret_list` shows.
    pub key_id: String,
    /// Commit even though some reachable members have not converged on the previous step.
    #[serde(default, deserialize_with = "flag")]
    pub force: bool,
}

/// The answer to a rotation step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretStepDone {
    /// The step committed.
    pub step: RotationStep,
    /// The secret's key id (fingerprint).
    pub key_id: String,
    /// Where the step was committed.
    pub committed: Committed,
    /// Members that did not answer (their convergence is unknown).
    pub unreachable: Vec<String>,
}

/// `cluster_secret_list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretList {
    /// Only this node's installed fingerprints (what nodes ask each other).
    #[serde(deserialize_with = "flag")]
    pub local: bool,
}

impl ApiRequest for SecretList {
    const ACTION: Action = Action::ClusterSecretList;
    type Reply = SecretsReport;
}

/// The fingerprints one node has installed in its keyring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSecrets {
    /// The node.
    pub node: String,
    /// Whether it answered.
    pub reachable: bool,
    /// The key id it uses as a client (`None` when unreachable).
    pub uses: Option<String>,
    /// The key ids it accepts, sorted.
    pub accepts: Vec<String>,
    /// Whether it uses and accepts exactly what the plan says.
    pub converged: bool,
    /// Why it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The committed rotation plan, by key id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretPlan {
    /// The key id every node is to use; `None`: no rotation yet (node.conf's secret).
    pub uses: Option<String>,
    /// The key ids every node is to accept.
    pub accepts: Vec<String>,
    /// The key ids removed for good.
    pub removed: Vec<String>,
}

/// The answer to [`SecretList`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretsReport {
    /// The node that answered.
    pub node: String,
    /// The committed plan.
    pub plan: SecretPlan,
    /// Per node (only the answering node with `local`).
    pub nodes: Vec<NodeSecrets>,
    /// Whether every member is reachable and converged.
    pub converged: bool,
}

/// `cluster_snapshot_save` (control socket): write this node's applied state to `path`, a
/// file on the daemon's host (written 0600, then renamed into place and synced).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSave {
    /// An absolute path.
    pub path: String,
}

impl ApiRequest for SnapshotSave {
    const ACTION: Action = Action::ClusterSnapshotSave;
    type Reply = SnapshotSaved;
}

/// The answer to [`SnapshotSave`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSaved {
    /// Where the backup is.
    pub path: String,
    /// The leader this node followed when it saved; `None`: it knew none, and entries the
    /// cluster committed after its last applied one are not in the backup.
    pub leader: Option<String>,
    /// The backup's header (what `om cluster snapshot status` shows).
    pub header: raft::backup::Header,
}

/// `cluster_snapshot_restore` (control socket): make this node the only member of a new
/// cluster whose state is the backup at `path` (docs/OPERATIONS.md, "Backup and recovery").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRestore {
    /// An absolute path on the daemon's host.
    pub path: String,
    /// Replace a state that has other members or services (they are lost from this node).
    #[serde(default, deserialize_with = "flag")]
    pub force: bool,
}

impl ApiRequest for SnapshotRestore {
    const ACTION: Action = Action::ClusterSnapshotRestore;
    type Reply = SnapshotRestored;
}

/// The answer to [`SnapshotRestore`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRestored {
    /// The new cluster (this node's `cluster.name`).
    pub cluster: String,
    /// The backup's cluster name, when it was another.
    pub renamed_from: Option<String>,
    /// Its only member: this node.
    pub node: String,
    /// This node's new store's Raft id (decimal).
    pub raft_id: String,
    /// The backup's last applied log index; the new cluster's log goes on after it.
    pub index: u64,
    /// The services restored.
    pub services: Vec<String>,
    /// The backup's other members: no longer members, each comes back with `join`.
    pub removed: Vec<String>,
    /// The key id of the backup's rotated secret, which this node now uses (written into
    /// its node.conf); `None`: it keeps its own `cluster.secret`.
    pub secret_in_use: Option<String>,
    /// Whether this node led its new cluster when it answered (it elects itself at once
    /// unless something is wrong: see its log).
    pub leading: bool,
    /// The node the backup was taken on.
    pub taken_on: String,
}

/// `cluster_set`: sets (`value`) or removes (no `value`) a cluster parameter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSet {
    /// `section.key`, e.g. `cluster.join`.
    pub param: String,
    /// The new value; absent or null removes the parameter (its default applies).
    #[serde(default)]
    pub value: Option<String>,
}

impl ApiRequest for ClusterSet {
    const ACTION: Action = Action::ClusterSet;
    type Reply = Committed;
}

/// `cluster_approve`: lets `node` join (`cluster.join = approve`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterApprove {
    /// The joiner's node name, as `join_requests` shows it.
    pub node: String,
}

impl ApiRequest for ClusterApprove {
    const ACTION: Action = Action::ClusterApprove;
    type Reply = Committed;
}

/// `join_requests`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequests {}

impl ApiRequest for JoinRequests {
    const ACTION: Action = Action::JoinRequests;
    type Reply = JoinRequestsReport;
}

/// The leader's view of who asks to join.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequestsReport {
    /// The node that answered (the leader).
    pub leader: String,
    /// `cluster.join`: `open` or `approve`.
    pub policy: String,
    /// Joins refused for want of an approval, most recent last.
    pub pending: Vec<JoinRequest>,
    /// Approvals not used yet.
    pub approved: Vec<JoinApproval>,
}

/// A join the leader refused for want of an approval (kept in its memory only: joiners
/// retry, so a new leader learns them again within seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The joiner's node name.
    pub node: String,
    /// The listener address it gave.
    pub addr: String,
    /// The connection's source address.
    pub peer: String,
    /// When it first and last asked (the leader's clock, ms since the epoch).
    pub first_ms: u64,
    /// See `first_ms`.
    pub last_ms: u64,
    /// How many times it asked.
    pub attempts: u64,
}

/// An approval waiting for its join.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinApproval {
    /// The node approved.
    pub node: String,
    /// When (the approver's clock).
    pub at_ms: u64,
    /// When leaders stop honouring it.
    pub expires_ms: u64,
}

/// `agent_standby` (Zeek's `agent_standby_request`): the node stops its instances and stays
/// a member, in state `standby`, until `agent_welcome`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStandby {
    /// The node (default: the receiver).
    pub node: Option<String>,
    /// How long to wait for its instances to stop (ms; default 60 000, at most 600 000).
    pub timeout_ms: Option<u64>,
}

impl ApiRequest for AgentStandby {
    const ACTION: Action = Action::AgentStandby;
    type Reply = AgentState;
}

/// `agent_welcome` (Zeek's `agent_welcome_request`): the node is part of the topology
/// again (out of `standby`); its instances start again where they are placed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentWelcome {
    /// The node (default: the receiver).
    pub node: Option<String>,
}

impl ApiRequest for AgentWelcome {
    const ACTION: Action = Action::AgentWelcome;
    type Reply = AgentState;
}

/// A node's duty state, after `agent_standby` or `agent_welcome`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// The node.
    pub node: String,
    /// Its node monitor status (`standby`, `idle`, ...).
    pub state: String,
    /// Its instances and their availability as last reported (`down`, `up`, ...).
    pub instances: std::collections::BTreeMap<String, String>,
}

/// The cluster's declarative configuration (Zeek's `Configuration`): every service with its
/// config text, and the cluster parameters. What `get_configuration` answers and
/// `set_configuration` takes, so that get, edit, set round-trips.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Configuration {
    /// Cluster parameters (`section.key` -> value).
    pub params: std::collections::BTreeMap<String, String>,
    /// Services by name -> their config text.
    pub services: std::collections::BTreeMap<String, String>,
}

/// `get_configuration`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetConfiguration {}

impl ApiRequest for GetConfiguration {
    const ACTION: Action = Action::GetConfiguration;
    type Reply = ConfigurationReport;
}

/// The configuration as the receiver has applied it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigurationReport {
    /// The document.
    pub config: Configuration,
    /// Each service's config version.
    pub versions: std::collections::BTreeMap<String, u64>,
    /// Services being deleted (`global_expect = deleted`): not in `config`.
    pub deleting: Vec<String>,
    /// The Raft index the receiver had applied when it answered.
    pub applied: u64,
}

/// `set_configuration`: makes the cluster's configuration `config`: services it does not
/// name are deleted (orchestrated: stopped everywhere first), parameters it does not name
/// are unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SetConfiguration {
    /// The whole configuration.
    pub config: Configuration,
    /// Only say what would change.
    #[serde(deserialize_with = "flag")]
    pub dry_run: bool,
    /// How long each node has to apply it (ms; default 10 000, at most 60 000).
    pub timeout_ms: Option<u64>,
}

impl ApiRequest for SetConfiguration {
    const ACTION: Action = Action::SetConfiguration;
    type Reply = Deployment;
}

/// What `set_configuration` changed, and each node's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Nothing was committed (`dry_run`).
    pub dry_run: bool,
    /// Services created.
    pub created: Vec<String>,
    /// Services whose config changed.
    pub updated: Vec<String>,
    /// Services set to be deleted.
    pub deleted: Vec<String>,
    /// Parameters set (or changed).
    pub params_set: Vec<String>,
    /// Parameters removed.
    pub params_unset: Vec<String>,
    /// The Raft index of the last change (0: nothing changed).
    pub index: u64,
    /// One result per member: whether it applied `index` within `timeout_ms`.
    pub results: Vec<DeployResult>,
}

/// One node's result in a [`Deployment`] (Zeek's `Result`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployResult {
    /// The node.
    pub node: String,
    /// Whether it applied the deployment in time.
    pub success: bool,
    /// Why not.
    pub error: Option<String>,
    /// The index it had applied when last asked.
    pub applied: Option<u64>,
}
