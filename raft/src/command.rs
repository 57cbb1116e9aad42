//! `Command`: every change to the cluster, as it travels in the Raft log.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use crate::secrets::SecretValue;
use crate::state::Avail;
use crate::state::GlobalExpect;
use crate::state::LocalExpect;
use crate::state::MonitorStatus;
use crate::state::NodeExpect;
use crate::state::NodeStatus;

/// A cluster change. Fields that carry time carry the proposer's wall clock, so that
/// [`crate::apply`] stays a pure function of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Names the cluster and makes `node` its first member. Valid once, on an empty state.
    Bootstrap {
        cluster: String,
        node: String,
        addr: String,
        at_ms: u64,
        /// The first member's Raft id, as in [`Command::Join`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Adds `node` to `cluster.nodes` (its Raft membership is changed before this commits).
    /// `id` is the Raft id of the joiner's store incarnation; absent (older proposers), the
    /// id derived from the name ([`crate::node_id`]).
    Join {
        node: String,
        addr: String,
        at_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Removes `node` from `cluster.nodes`, with its monitor and instances.
    Leave { node: String },
    /// Changes a member's listener address (a live `listener.port` change).
    SetNodeAddr { node: String, addr: String },
    /// Sets fields of a node monitor; `None` leaves a field as it is.
    SetNodeMonitor {
        node: String,
        status: Option<NodeStatus>,
        local_expect: Option<NodeExpect>,
        frozen: Option<bool>,
    },
    /// Sets fields of a service monitor: `global_expect` on the service, the others on the
    /// instance of `node` (required when one of them is set).
    SetServiceMonitor {
        svc: String,
        node: Option<String>,
        status: Option<MonitorStatus>,
        local_expect: Option<LocalExpect>,
        global_expect: Option<GlobalExpect>,
        reset_retries: bool,
    },
    /// Clears `start failed` / `stop failed` and the restart counts, on one node or all.
    Clear { svc: String, node: Option<String> },
    /// Creates a service with its config text (version 1).
    CreateService { svc: String, config: String },
    /// Replaces a service's config; with `expected_version`, only if it is still that version.
    UpdateService {
        svc: String,
        config: String,
        expected_version: Option<u64>,
    },
    /// Removes a service and its instances.
    DeleteService { svc: String },
    /// Sets (`Some`) or removes (`None`) a cluster parameter.
    SetClusterParam { key: String, value: Option<String> },
    /// A node reports the state of its instance of `svc`.
    ReportInstance {
        svc: String,
        node: String,
        avail: Avail,
        status: Option<MonitorStatus>,
        frozen: Option<bool>,
        restarts: BTreeMap<String, u32>,
        at_ms: u64,
    },
    /// Rotation, step 1: every node accepts `secret` too (and still uses its secret).
    /// `current` is the proposer's secret in use; it is recorded by the first rotation
    /// (the plan was empty) and ignored after.
    AddSecret {
        secret: SecretValue,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<SecretValue>,
    },
    /// Rotation, step 2: every node uses the accepted secret `key_id` (a fingerprint).
    UseSecret { key_id: String },
    /// Rotation, step 3: no node accepts secret `key_id` any more (not the one in use).
    RemoveSecret { key_id: String },
    /// An operator lets `node` join a cluster whose `cluster.join` is `approve`; the
    /// approval is used up by the node's `Join` (leaders honour it for
    /// [`crate::state::JOIN_APPROVAL_TTL_MS`] after `at_ms`).
    ApproveJoin { node: String, at_ms: u64 },
    /// `cmd`, taking effect at most once however many times it is proposed. openraft
    /// answers "not leader" both to a proposal it refused and to one it appended and then
    /// truncated, which a later leader may still commit (simulator seed 13269); a proposer
    /// that retries after such an answer sends the same `id`, and the state machine applies
    /// the first copy it meets and answers the later ones with the first one's reply
    /// ([`crate::machine::Proposals`]). `floor`: every proposal of this session below it
    /// was answered, so the machine forgets their replies and refuses their late copies.
    Once {
        id: ProposalId,
        #[serde(default)]
        floor: u64,
        command: Box<Command>,
    },
}

/// Names one proposal: a proposer's `session` (drawn at random when it starts, so that a
/// restarted proposer never reuses an id) and its `seq` within that session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    /// The proposer's random session.
    pub session: u64,
    /// Counts the session's proposals.
    pub seq: u64,
}

impl std::fmt::Display for ProposalId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}-{}", self.session, self.seq)
    }
}

impl Command {
    /// `self` proposed at most once under `id`, its session's proposals below `floor`
    /// answered (see [`Command::Once`]).
    pub fn once(self, id: ProposalId, floor: u64) -> Command {
        debug_assert!(floor <= id.seq, "a proposal waits for itself");
        Command::Once {
            id,
            floor,
            command: Box::new(self),
        }
    }

    /// The command itself, without its [`Command::Once`] wrappers.
    pub fn inner(&self) -> &Command {
        let mut cmd = self;
        while let Command::Once { command: c, .. } = cmd {
            cmd = c;
        }
        cmd
    }

    /// The command's name, as logged and counted (a [`Command::Once`] has its command's).
    pub fn name(&self) -> &'static str {
        match self.inner() {
            Command::Once { .. } => unreachable!("inner() has no Once"),
            Command::Bootstrap { .. } => "bootstrap",
            Command::Join { .. } => "join",
            Command::Leave { .. } => "leave",
            Command::SetNodeAddr { .. } => "set_node_addr",
            Command::SetNodeMonitor { .. } => "set_node_monitor",
            Command::SetServiceMonitor { .. } => "set_service_monitor",
            Command::Clear { .. } => "clear",
            Command::CreateService { .. } => "create_service",
            Command::UpdateService { .. } => "update_service",
            Command::DeleteService { .. } => "delete_service",
            Command::SetClusterParam { .. } => "set_cluster_param",
            Command::ReportInstance { .. } => "report_instance",
            Command::AddSecret { .. } => "add_secret",
            Command::UseSecret { .. } => "use_secret",
            Command::RemoveSecret { .. } => "remove_secret",
            Command::ApproveJoin { .. } => "approve_join",
        }
    }
}
