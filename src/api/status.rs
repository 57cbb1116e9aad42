//! The replies of `daemon_status` and `get_nodes`: one node's own view ([`OwnView`], what
//! peers ask each other), the cluster as one node sees it merged with its peers' views
//! ([`ClusterStatus`], what `om node daemon status` renders), and Zeek's per-node summary
//! ([`NodeSummary`]).
//!
//! Absent values are `null` (not left out) where docs/PROTOCOL.md shows them so; the fields
//! a node adds only when it knows them (`error`, `monitor`, `last_seen_ms`) are left out.

use std::collections::BTreeMap;

use raft::state::GlobalExpect;
use raft::state::Instance;
use raft::state::MonitorStatus;
use raft::state::NodeMonitor;
use serde::Deserialize;
use serde::Serialize;

use super::Action;
use super::ApiRequest;

/// A node's Raft role (`unknown`: it did not answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)] // the variants are Raft's roles, spelled as on the wire
pub enum Role {
    Leader,
    Follower,
    Learner,
    Candidate,
    Shutdown,
    Unknown,
}

impl Role {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Learner => "learner",
            Role::Candidate => "candidate",
            Role::Shutdown => "shutdown",
            Role::Unknown => "unknown",
        }
    }
}

impl From<openraft::ServerState> for Role {
    fn from(s: openraft::ServerState) -> Role {
        use openraft::ServerState as S;
        match s {
            S::Leader => Role::Leader,
            S::Follower => Role::Follower,
            S::Learner => Role::Learner,
            S::Candidate => Role::Candidate,
            S::Shutdown => Role::Shutdown,
        }
    }
}

/// What a daemon thread is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadState {
    /// Running its loop.
    Running,
    /// Asked to stop, not yet exited.
    Stopping,
    /// Not running, on purpose.
    Stopped,
    /// Exited uncleanly; waiting for its backoff before it runs again.
    Restarting,
}

impl ThreadState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadState::Running => "running",
            ThreadState::Stopping => "stopping",
            ThreadState::Stopped => "stopped",
            ThreadState::Restarting => "restarting",
        }
    }
}

/// One daemon thread's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadStatus {
    /// Current state.
    pub state: ThreadState,
    /// Unclean exits restarted since the daemon started.
    pub restarts: u32,
    /// The last unclean exit's reason.
    pub last_error: Option<String>,
}

/// The applied index and the state digest at it, read together: nodes at one index
/// compare digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    /// The last applied log index.
    pub index: Option<u64>,
    /// The digest of the state machine at `index`.
    pub digest: String,
}

/// What a node reports of itself beyond its role and address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftView {
    /// Its Raft id, in decimal: JSON tools round 64-bit integers.
    pub raft_id: String,
    /// Its current term.
    pub term: u64,
    /// The last index in its log.
    pub last_log_index: Option<u64>,
    /// The last index it applied.
    pub last_applied: Option<u64>,
    /// The last index in its snapshot.
    pub snapshot: Option<u64>,
    /// The last index purged from its log.
    pub purged: Option<u64>,
    /// Its applied index and digest.
    pub applied_state: AppliedState,
    /// The Raft id of the leader it follows, in decimal (as `raft_id`).
    pub leader_id: Option<String>,
    /// Seconds since its daemon started.
    pub uptime_s: u64,
    /// The `host:port` it listens on.
    pub listener: String,
    /// Why its listener address is wrong, when it is (bind failed, held by another node).
    pub listener_problem: Option<String>,
    /// Raft RPCs it refused (sender not a member).
    pub rpc_refused: u64,
    /// Raft RPCs it received that named another node.
    pub rpc_misdelivered: u64,
    /// Its listener's counters.
    pub listener_metrics: MetricsSnapshot,
    /// Its daemon threads, by id.
    pub threads: BTreeMap<String, ThreadStatus>,
    /// Its om version (empty from a node older than this field).
    #[serde(default)]
    pub version: String,
    /// The members that checked in with it (`hello` on each session they opened), by name
    /// (empty from a node older than this field).
    #[serde(default)]
    pub check_ins: BTreeMap<String, CheckIn>,
}

/// The last `hello` a member sent a node: sent on each session it opens, so `count` is how
/// many times it connected since the node's daemon started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckIn {
    /// The API version it checked in with.
    pub api_version: u32,
    /// How long ago, in ms.
    pub ago_ms: u64,
    /// Its check-ins since this daemon started.
    pub count: u64,
}

/// A copy of the counters, serializable for status output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// See [`crate::listener::Metrics::connections`].
    pub connections: u64,
    /// See [`crate::listener::Metrics::open_connections`].
    pub open_connections: u64,
    /// See [`crate::listener::Metrics::frames`].
    pub frames: u64,
    /// See [`crate::listener::Metrics::empty_packets`].
    pub empty_packets: u64,
    /// See [`crate::listener::Metrics::dropped_blacklisted`].
    pub dropped_blacklisted: u64,
    /// See [`crate::listener::Metrics::decrypt_attempts`].
    pub decrypt_attempts: u64,
    /// See [`crate::listener::Metrics::sessions`].
    pub sessions: u64,
    /// See [`crate::listener::Metrics::requests`].
    pub requests: u64,
    /// See [`crate::listener::Metrics::responses`].
    pub responses: u64,
    /// See [`crate::listener::Metrics::blacklisted`].
    pub blacklisted: u64,
    /// See [`crate::listener::Metrics::refused_conn_cap`].
    pub refused_conn_cap: u64,
    /// See [`crate::listener::Metrics::refused_handshake_rate`].
    pub refused_handshake_rate: u64,
    /// See [`crate::listener::Metrics::refused_no_fd`].
    pub refused_no_fd: u64,
    /// See [`crate::listener::Metrics::closed_handshake_timeout`].
    pub closed_handshake_timeout: u64,
    /// See [`crate::listener::Metrics::closed_frame_timeout`].
    pub closed_frame_timeout: u64,
    /// See [`crate::listener::Metrics::closed_idle_timeout`].
    pub closed_idle_timeout: u64,
    /// See [`crate::listener::Metrics::closed_unauth_budget`].
    pub closed_unauth_budget: u64,
    /// Rejected frames per error kind name (kinds with a zero count are left out).
    pub rejected: BTreeMap<String, u64>,
}

/// A node's own view: role, address and the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Its Raft role.
    pub role: Role,
    /// The address it advertises.
    pub address: String,
    /// The rest.
    #[serde(flatten)]
    pub raft: RaftView,
}

/// `daemon_status` with `local`: one node's own view, what peers ask each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnStatus {
    local: bool,
}

impl OwnStatus {
    /// The request.
    pub const ASK: OwnStatus = OwnStatus { local: true };
}

impl ApiRequest for OwnStatus {
    const ACTION: Action = Action::DaemonStatus;
    type Reply = OwnView;
}

/// The answer to [`OwnStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnView {
    /// The node that answered (whoever listens at an address is not a member until it
    /// says its name).
    pub node: String,
    /// Its view.
    #[serde(rename = "self")]
    pub view: NodeView,
}

/// How a node takes part in the Raft membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Membership {
    /// It votes.
    Voter,
    /// It receives the log without voting (joining).
    Learner,
    /// In `cluster.nodes` but not in the Raft membership (leaving, or not yet joined).
    None,
}

impl Membership {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Membership::Voter => "voter",
            Membership::Learner => "learner",
            Membership::None => "none",
        }
    }
}

/// One node in a [`ClusterStatus`]: its own view when it answered, else why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Its role (`unknown` when it did not answer).
    pub role: Role,
    /// The address it advertises, or its recorded one when it did not answer.
    pub address: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Why it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its place in the Raft membership.
    pub membership: Membership,
    /// Whether it is in the replicated `cluster.nodes`.
    pub in_cluster_nodes: bool,
    /// What it is for (`node.role` as its member record holds it; `normal` when absent).
    #[serde(default)]
    pub node_role: raft::state::NodeRole,
    /// Its node monitor, from the replicated state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<NodeMonitor>,
    /// Milliseconds since this node last heard from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
    /// Its own view, when it answered.
    #[serde(flatten)]
    pub raft: Option<RaftView>,
}

impl MemberView {
    /// Whether what the state says of this node may be out of date: it does not answer,
    /// or the leader marked it down.
    pub fn stale(&self) -> bool {
        let down = raft::state::NodeStatus::Down;
        !self.reachable || self.monitor.as_ref().is_some_and(|m| m.status == down)
    }
}

/// The cluster section of a [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// `cluster.name`.
    pub name: String,
    /// The leader's name, when there is one.
    pub leader: Option<String>,
    /// The current term.
    pub term: u64,
    /// `cluster.nodes`.
    pub nodes: Vec<String>,
    /// The cluster parameters.
    pub params: BTreeMap<String, String>,
}

/// A service in a [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// Its config version.
    pub version: u64,
    /// Its cluster-wide target.
    pub global_expect: GlobalExpect,
    /// Its instances by node.
    pub instances: BTreeMap<String, Instance>,
}

/// The answer to `daemon_status`: the cluster as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: String,
    /// The cluster.
    pub cluster: ClusterView,
    /// Every member and joining learner, by name.
    pub nodes: BTreeMap<String, MemberView>,
    /// The answering node's threads.
    pub threads: BTreeMap<String, ThreadStatus>,
    /// The services, by name.
    pub services: BTreeMap<String, ServiceSummary>,
}

impl ApiRequest for super::options::DaemonStatus {
    const ACTION: Action = Action::DaemonStatus;
    type Reply = ClusterStatus;
}

/// A node's state in a `get_nodes` answer (Zeek's `NodeStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Its node monitor status.
    pub state: raft::state::NodeStatus,
    /// Whether it is frozen.
    pub frozen: bool,
    /// Its Raft role.
    pub role: Role,
    /// The services with an instance there, and their status.
    pub instances: BTreeMap<String, MonitorStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> OwnView {
        let metrics = MetricsSnapshot::default();
        OwnView {
            node: "n2".into(),
            view: NodeView {
                role: Role::Follower,
                address: "10.0.0.2:1214".into(),
                raft: RaftView {
                    raft_id: "18446744073709551615".into(),
                    term: 4,
                    last_log_index: Some(9),
                    last_applied: Some(9),
                    snapshot: None,
                    purged: None,
                    applied_state: AppliedState {
                        index: Some(9),
                        digest: "ab".into(),
                    },
                    leader_id: Some("1".into()),
                    uptime_s: 3,
                    listener: "0.0.0.0:1214".into(),
                    listener_problem: None,
                    rpc_refused: 0,
                    rpc_misdelivered: 0,
                    listener_metrics: metrics,
                    threads: BTreeMap::new(),
                    version: "0.1.0".into(),
                    check_ins: BTreeMap::new(),
                },
            },
        }
    }

    /// The own view keeps the shape peers and scripts read: `self` holds role, address
    /// and the Raft fields side by side, absent indexes are `null`.
    #[test]
    fn an_own_view_is_flat_under_self_with_nulls() {
        let v = serde_json::to_value(own()).unwrap();
        assert_eq!(v["node"], "n2");
        assert_eq!(v["self"]["role"], "follower");
        assert_eq!(v["self"]["last_applied"], 9);
        assert!(v["self"]["snapshot"].is_null() && v["self"].get("snapshot").is_some());
        assert_eq!(v["self"]["raft_id"], "18446744073709551615");
        // Ids are strings: jq reads numbers as doubles and rounds 64-bit ones.
        assert_eq!(v["self"]["leader_id"], "1");
        assert_eq!(serde_json::from_value::<OwnView>(v).unwrap(), own());
    }

    /// A member that answered carries its view; one that did not has none, and its
    /// entry still decodes.
    #[test]
    fn member_views_with_and_without_an_answer_round_trip() {
        let up = MemberView {
            role: Role::Follower,
            address: "10.0.0.2:1214".into(),
            reachable: true,
            error: None,
            membership: Membership::Voter,
            in_cluster_nodes: true,
            node_role: raft::state::NodeRole::Witness,
            monitor: None,
            last_seen_ms: Some(12),
            raft: Some(own().view.raft),
        };
        let down = MemberView {
            role: Role::Unknown,
            reachable: false,
            error: Some("10.0.0.2:1214: connection refused".into()),
            raft: None,
            ..up.clone()
        };
        for m in [up, down] {
            let v = serde_json::to_value(&m).unwrap();
            assert_eq!(v["reachable"], m.reachable);
            assert_eq!(v.get("term").is_some(), m.raft.is_some(), "{v}");
            assert_eq!(serde_json::from_value::<MemberView>(v).unwrap(), m);
        }
    }
}
