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
use crate::state::NodeRole;
use crate::state::NodeStatus;

/// The largest command, packed, that [`crate::Node::propose`] accepts: a service config at
/// its limit ([`crate::apply::MAX_CONFIG_LEN`]) with room to spare. Every entry must reach
/// every follower in one append within openraft's deadline, so there is a limit.
pub const MAX_COMMAND_BYTES: usize = 2 << 20;

/// A cluster change. Fields that carry time carry the proposer's wall clock, so that
/// [`crate::apply`] stays a pure function of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Names the cluster and makes `node` its first member. Valid once, on an empty state.
    Bootstrap {
        /// The cluster's name.
        cluster: String,
        /// The first member.
        node: String,
        /// Its listener address (`host:port`).
        addr: String,
        /// When it was proposed (proposer's clock, ms since the epoch).
        at_ms: u64,
        /// The first member's Raft id, as in [`Command::Join`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Adds `node` to `cluster.nodes` (its Raft membership is changed before this commits).
    Join {
        /// The joiner.
        node: String,
        /// Its listener address (`host:port`).
        addr: String,
        /// When it was proposed.
        at_ms: u64,
        /// The Raft id of the joiner's store incarnation; absent (older proposers), the id
        /// derived from the name ([`crate::node_id`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Removes `node` from `cluster.nodes`, with its monitor and instances.
    Leave {
        /// The member that leaves.
        node: String,
    },
    /// Changes a member's listener address (a live `listener.port` change).
    SetNodeAddr {
        /// The member.
        node: String,
        /// Its new address (`host:port`), held by no other member.
        addr: String,
    },
    /// Sets fields of a node monitor; `None` leaves a field as it is.
    SetNodeMonitor {
        /// The member whose monitor changes.
        node: String,
        /// What the monitor is doing.
        status: Option<NodeStatus>,
        /// What the monitor tries to make the node.
        local_expect: Option<NodeExpect>,
        /// Whether the node orchestrates nothing.
        frozen: Option<bool>,
    },
    /// Records a member's role (proposed by the member, from its `node.role`).
    SetNodeRole {
        /// The member.
        node: String,
        /// Its role.
        role: NodeRole,
    },
    /// Sets fields of a service monitor: `global_expect` on the service, the others on the
    /// instance of `node` (required when one of them is set); `None` leaves a field as it is.
    SetServiceMonitor {
        /// The service.
        svc: String,
        /// The node of the instance that `status`, `local_expect` and `reset_retries` change.
        node: Option<String>,
        /// What the instance's monitor is doing.
        status: Option<MonitorStatus>,
        /// What the node's monitor tries to make the instance.
        local_expect: Option<LocalExpect>,
        /// What the orchestrator tries to make the service, cluster-wide.
        global_expect: Option<GlobalExpect>,
        /// Zero the instance's restart counts.
        reset_retries: bool,
    },
    /// Clears `start failed` / `stop failed` and the restart counts, on one node or all.
    Clear {
        /// The service.
        svc: String,
        /// The node of the instance to clear; `None`: every instance.
        node: Option<String>,
    },
    /// Creates a service with its config text (version 1).
    CreateService {
        /// The new service's name.
        svc: String,
        /// Its config, as INI text.
        config: String,
    },
    /// Replaces a service's config; with `expected_version`, only if it is still that version.
    UpdateService {
        /// The service.
        svc: String,
        /// The new config, as INI text.
        config: String,
        /// The version the edit started from.
        expected_version: Option<u64>,
    },
    /// Removes a service and its instances.
    DeleteService {
        /// The service.
        svc: String,
    },
    /// Sets (`Some`) or removes (`None`) a cluster parameter.
    SetClusterParam {
        /// The parameter, as `section.key`.
        key: String,
        /// Its new value; `None` removes it.
        value: Option<String>,
    },
    /// A node reports the state of its instance of `svc`.
    ReportInstance {
        /// The service.
        svc: String,
        /// The reporting node.
        node: String,
        /// The availability its resources' checks found.
        avail: Avail,
        /// What the instance's monitor is doing, if it changed.
        status: Option<MonitorStatus>,
        /// Whether the instance is frozen, if it changed.
        frozen: Option<bool>,
        /// Restarts per resource since the last clear.
        restarts: BTreeMap<String, u32>,
        /// When the node checked.
        at_ms: u64,
        /// The instance's `started_gen` the node had read when it decided what it
        /// reports (absent from older versions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started_gen: Option<u64>,
    },
    /// Rotation, step 1: every node accepts `secret` too (and still uses its secret).
    AddSecret {
        /// The secret to accept.
        secret: SecretValue,
        /// The proposer's secret in use; it is recorded by the first rotation (the plan was
        /// empty) and ignored after.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<SecretValue>,
    },
    /// Rotation, step 2: every node uses the accepted secret `key_id`.
    UseSecret {
        /// The secret's fingerprint.
        key_id: String,
    },
    /// Rotation, step 3: no node accepts secret `key_id` any more (not the one in use).
    RemoveSecret {
        /// The secret's fingerprint.
        key_id: String,
    },
    /// An operator lets `node` join a cluster whose `cluster.join` is `approve`; the
    /// approval is used up by the node's `Join` (leaders honour it for
    /// [`crate::state::JOIN_APPROVAL_TTL_MS`] after `at_ms`).
    ApproveJoin {
        /// The node allowed to join.
        node: String,
        /// When the operator approved it.
        at_ms: u64,
    },
    /// `cmd`, taking effect at most once however many times it is proposed. openraft
    /// answers "not leader" both to a proposal it refused and to one it appended and then
    /// truncated, which a later leader may still commit (simulator seed 13269); a proposer
    /// that retries after such an answer sends the same `id`, and the state machine applies
    /// the first copy it meets and answers the later ones with the first one's reply
    /// ([`crate::machine::Proposals`]).
    Once {
        /// The proposal's session and sequence number.
        id: ProposalId,
        /// Every proposal of this session below it was answered, so the machine forgets
        /// their replies and refuses their late copies.
        #[serde(default)]
        floor: u64,
        /// The command proposed.
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
            Command::SetNodeRole { .. } => "set_node_role",
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
