//! `ClusterState`: what every node agrees on, and the value sets of its fields.
//!
//! All maps are `BTreeMap` so that iteration, serialization and therefore snapshots and event
//! order are the same on every node.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde::Serialize;

/// A string outside a field's allowed set; its message names the field, value and choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("invalid {field} {value:?}: allowed values are {allowed}")]
pub struct BadValue {
    /// Which field was being parsed.
    pub field: String,
    /// The rejected input.
    pub value: String,
    /// The allowed values, comma separated.
    pub allowed: String,
}

/// Declares a closed set of values spelled as OpenSVC spells them on the wire and the CLI.
macro_rules! value_set {
    ($(#[$meta:meta])* $name:ident, $field:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub enum $name {
            $($(#[$vmeta])* #[doc = concat!("\n\nSpelled `", $text, "` on the wire and the CLI.")] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire and CLI spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = BadValue;

            fn from_str(s: &str) -> Result<Self, BadValue> {
                // "start failed" and "start_failed" are both accepted: shells dislike spaces.
                let wanted = s.replace('_', " ");
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == wanted)
                    .ok_or_else(|| BadValue {
                        field: $field.to_string(),
                        value: s.to_string(),
                        allowed: $name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                    })
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

value_set!(
    /// The node monitor status: what the node's monitor is doing.
    NodeStatus, "node monitor status" {
        #[default]
        Idle => "idle",
        Freezing => "freezing",
        Thawing => "thawing",
        FreezeFailed => "freeze failed",
        ThawFailed => "thaw failed",
        Maintenance => "maintenance",
        Shutting => "shutting",
        Down => "down",
        // Released by `agent_standby`: runs no instance, stays a member, until
        // `agent_welcome`.
        Standby => "standby",
    }
);

value_set!(
    /// What a node's monitor tries to make the node: thawed (orchestrates) or frozen.
    NodeExpect, "node local_expect" {
        #[default]
        Thawed => "thawed",
        Frozen => "frozen",
    }
);

value_set!(
    /// The service monitor status of one instance.
    MonitorStatus, "service monitor status" {
        #[default]
        Idle => "idle",
        Ready => "ready",
        Starting => "starting",
        Stopping => "stopping",
        Restarting => "restarting",
        StartFailed => "start failed",
        StopFailed => "stop failed",
        Freezing => "freezing",
        Thawing => "thawing",
        Deleting => "deleting",
    }
);

value_set!(
    /// What an instance's monitor tries to make the local instance.
    LocalExpect, "service local_expect" {
        #[default]
        None => "none",
        Started => "started",
        Stopped => "stopped",
    }
);

value_set!(
    /// An instance's availability as last reported by its node.
    Avail, "avail" {
        #[default]
        Unknown => "unknown",
        Up => "up",
        Down => "down",
        Warn => "warn",
        NotApplicable => "n/a",
    }
);

/// The cluster-wide target of a service, which the leader's orchestrator works towards.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum GlobalExpect {
    /// No target: the orchestrator follows the service's `orchestrate` policy.
    #[default]
    None,
    /// Running on as many nodes as the topology wants.
    Started,
    /// Stopped everywhere.
    Stopped,
    /// Frozen everywhere: the orchestrator leaves it alone.
    Frozen,
    /// Thawed everywhere.
    Thawed,
    /// Running on its preferred node (giveback).
    Placed,
    /// Running on this node (switch).
    PlacedAt(String),
    /// The pending global_expect is abandoned.
    Aborted,
    /// Stopped everywhere, then its config removed.
    Deleted,
}

impl GlobalExpect {
    const NAMES: &'static str =
        "none, started, stopped, frozen, thawed, placed, placed@<node>, aborted, deleted";
}

impl fmt::Display for GlobalExpect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GlobalExpect::None => f.write_str("none"),
            GlobalExpect::Started => f.write_str("started"),
            GlobalExpect::Stopped => f.write_str("stopped"),
            GlobalExpect::Frozen => f.write_str("frozen"),
            GlobalExpect::Thawed => f.write_str("thawed"),
            GlobalExpect::Placed => f.write_str("placed"),
            GlobalExpect::PlacedAt(n) => write!(f, "placed@{n}"),
            GlobalExpect::Aborted => f.write_str("aborted"),
            GlobalExpect::Deleted => f.write_str("deleted"),
        }
    }
}

impl FromStr for GlobalExpect {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<Self, BadValue> {
        Ok(match s {
            "none" => GlobalExpect::None,
            "started" => GlobalExpect::Started,
            "stopped" => GlobalExpect::Stopped,
            "frozen" => GlobalExpect::Frozen,
            "thawed" => GlobalExpect::Thawed,
            "placed" => GlobalExpect::Placed,
            "aborted" => GlobalExpect::Aborted,
            "deleted" => GlobalExpect::Deleted,
            other => match other.strip_prefix("placed@") {
                Some(node) if !node.is_empty() => GlobalExpect::PlacedAt(node.to_string()),
                _ => {
                    return Err(BadValue {
                        field: "global_expect".into(),
                        value: s.into(),
                        allowed: GlobalExpect::NAMES.into(),
                    })
                }
            },
        })
    }
}

impl Serialize for GlobalExpect {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GlobalExpect {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

value_set!(
    /// What a member is for (`node.role` in its node.conf, recorded by the member itself).
    NodeRole, "node role" {
        /// Runs service instances and votes.
        #[default]
        Normal => "normal",
        /// Keeps the log and votes, runs no service instance: the third vote that lets two
        /// service nodes survive the loss of either (OpenSVC's arbitrator).
        Witness => "witness",
    }
);

impl NodeRole {
    /// Whether this is the default role (left out of the record's encoding, so that the
    /// state of a cluster without witnesses encodes as before).
    pub fn is_normal(&self) -> bool {
        *self == NodeRole::Normal
    }
}

/// One cluster member as the state machine knows it (`cluster.nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `host:port` of its listener.
    pub addr: String,
    /// Proposer's wall clock (ms since the epoch) when it joined; informational.
    pub joined_at_ms: u64,
    /// The Raft id of the store it joined with (one per store incarnation).
    pub id: u64,
    /// What it is for; placement puts no instance on a witness.
    #[serde(default, skip_serializing_if = "NodeRole::is_normal")]
    pub role: NodeRole,
}

/// A node's monitor: what it is doing and what it is asked to be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMonitor {
    /// What the monitor is doing.
    pub status: NodeStatus,
    /// What the monitor is asked to make the node.
    pub local_expect: NodeExpect,
    /// Whether the node is frozen now.
    pub frozen: bool,
}

/// One service instance: the service as seen on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The instance's monitor status; `start failed` and `stop failed` are the failure flags.
    pub status: MonitorStatus,
    /// What the node's monitor must make this instance.
    pub local_expect: LocalExpect,
    /// Availability as last reported by the node.
    pub avail: Avail,
    /// Whether this instance is frozen.
    pub frozen: bool,
    /// Restarts attempted per resource id since the last clear.
    pub restarts: BTreeMap<String, u32>,
    /// Reporter's wall clock (ms) at the last report.
    pub updated_at_ms: u64,
    /// Counts the orders to start: bumped each time `local_expect` becomes `started`.
    #[serde(default)]
    pub started_gen: u64,
    /// The `started_gen` its node had read when it last reported; `None`: never said (no
    /// report yet, or a node of an older version, whose instances are then waited for
    /// until the node is down or upgraded). Below `started_gen`, the node may be starting
    /// the instance without having said so yet, whatever its last report says.
    #[serde(default)]
    pub reported_gen: Option<u64>,
}

impl Instance {
    /// Told to start since its node last reported: it may be starting now, unseen.
    pub fn start_unreported(&self) -> bool {
        self.reported_gen.unwrap_or(0) < self.started_gen
    }
}

/// A service: its config text, and its instances per node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// The config as the operator wrote it (what `get_service_config` serves).
    pub config: String,
    /// Bumped on every config change; `UpdateService` can require the version it edited.
    pub version: u64,
    /// The cluster-wide target.
    pub global_expect: GlobalExpect,
    /// Instances by node name.
    pub instances: BTreeMap<String, Instance>,
}

/// The whole replicated cluster state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// `cluster.name`, fixed at bootstrap; empty before.
    pub name: String,
    /// Cluster parameters (`section.key` -> value).
    pub params: BTreeMap<String, String>,
    /// Members by node name (`cluster.nodes`).
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Node monitors by node name; every member has one.
    pub node_monitors: BTreeMap<String, NodeMonitor>,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Names of nodes that left. A name is a Raft id (a hash of it), and a node that left
    /// wiped its log: joining again under that name would bring back a member that lost
    /// what it acknowledged, which Raft does not allow. It must rejoin under a new name.
    #[serde(default)]
    pub departed: BTreeSet<String>,
    /// Raft ids of the store incarnations that left: a store with one of these ids never
    /// joins again (its log was wiped), though its name may come back with a new store.
    #[serde(default)]
    pub departed_ids: BTreeSet<u64>,
    /// The secret rotation plan (values travel in the log: the store is private).
    #[serde(default)]
    pub secrets: crate::secrets::Secrets,
    /// Joins an operator approved (`cluster.join = approve`): node name -> when.
    #[serde(default)]
    pub join_approvals: BTreeMap<String, u64>,
}

/// How long a leader honours an approval ([`crate::Command::ApproveJoin`]): an approval
/// nobody used should not let a name in weeks later.
pub const JOIN_APPROVAL_TTL_MS: u64 = 3_600_000;

/// The most approvals waiting to be used: an operator typo loop does not grow the state.
pub const MAX_JOIN_APPROVALS: usize = 64;

/// Who may join (`cluster.join`, a cluster parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinPolicy {
    /// Anyone with the secret (the default, as in the seeds).
    Open,
    /// Only a node an operator approved with `om cluster approve`.
    Approve,
}

impl ClusterState {
    /// Whether member `node` is a witness (`node.role`): it runs no service instance.
    pub fn is_witness(&self, node: &str) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|r| r.role == NodeRole::Witness)
    }

    /// `cluster.join`: who may join.
    pub fn join_policy(&self) -> JoinPolicy {
        match self.params.get("cluster.join").map(String::as_str) {
            Some("approve") => JoinPolicy::Approve,
            _ => JoinPolicy::Open,
        }
    }

    /// Whether `node` may join now (`now_ms`, the leader's clock) under `cluster.join`.
    pub fn join_allowed(&self, node: &str, now_ms: u64) -> bool {
        match self.join_policy() {
            JoinPolicy::Open => true,
            JoinPolicy::Approve => self
                .join_approvals
                .get(node)
                .is_some_and(|at| now_ms.saturating_sub(*at) < JOIN_APPROVAL_TTL_MS),
        }
    }

    /// Whether a `Bootstrap` command has been applied.
    pub fn is_bootstrapped(&self) -> bool {
        !self.name.is_empty()
    }

    /// Panics if a structural invariant does not hold; called after every apply in debug builds.
    pub fn check_invariants(&self) {
        if let Some(broken) = self.broken_invariant() {
            panic!("cluster state invariant broken: {broken}");
        }
    }

    /// The first structural invariant that does not hold, if any: what [`Self::check_invariants`]
    /// asserts, and what a state read from outside (a backup file) is checked against.
    pub fn broken_invariant(&self) -> Option<String> {
        if !self.nodes.keys().eq(self.node_monitors.keys()) {
            return Some("the members and the node monitors are not the same nodes".into());
        }
        if self.is_bootstrapped() && self.nodes.is_empty() {
            return Some("a bootstrapped cluster without a member".into());
        }
        for (svc, s) in &self.services {
            if let Some(node) = s.instances.keys().find(|n| !self.nodes.contains_key(*n)) {
                return Some(format!("instance {svc}@{node} is on no member"));
            }
            if let GlobalExpect::PlacedAt(n) = &s.global_expect {
                if !self.nodes.contains_key(n) {
                    return Some(format!("{svc} is placed@{n}, which is no member"));
                }
            }
        }
        if let Some(used) = &self.secrets.used {
            if !self.secrets.accepted.contains_key(used) {
                return Some("the secret in use is not accepted".into());
            }
        }
        if let Some(fp) = self
            .secrets
            .removed
            .iter()
            .find(|fp| self.secrets.accepted.contains_key(*fp))
        {
            return Some(format!("removed secret {fp} is still accepted"));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_and_print_alike() {
        for v in MonitorStatus::ALL {
            assert_eq!(v.as_str().parse::<MonitorStatus>().unwrap(), *v);
        }
        assert_eq!(
            "start_failed".parse::<MonitorStatus>().unwrap(),
            MonitorStatus::StartFailed
        );
        let e = "bogus".parse::<NodeExpect>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid node local_expect \"bogus\": allowed values are thawed, frozen"
        );
        assert_eq!(
            "placed@n2".parse::<GlobalExpect>().unwrap(),
            GlobalExpect::PlacedAt("n2".into())
        );
        assert!("placed@".parse::<GlobalExpect>().is_err());
    }
}
