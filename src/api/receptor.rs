//! The answers of Receptor's control service (docs/CONTROL.md) in Receptor's own spelling
//! (`NodeID`, `Success`, `KnownConnectionCosts`, ...): what `receptorctl` and
//! `om node control` read. The daemon builds them, the CLI renders them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

/// `status`: this node, its measured links, what each node says of its own, the route to
/// each node and what each offers. Every field defaults, as a `status` asked for some
/// fields (`requested_fields`) carries only those.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ReceptorStatus {
    /// This node.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Its om version.
    pub version: String,
    /// CPUs of its host.
    #[serde(rename = "SystemCPUCount")]
    pub system_cpu_count: usize,
    /// Memory of its host, MiB (0: unknown).
    #[serde(rename = "SystemMemoryMiB")]
    pub system_memory_mib: u64,
    /// Its direct links that answered, with their round trip.
    pub connections: Vec<Connection>,
    /// Per node, the round trips it measured to its peers (ms).
    pub known_connection_costs: BTreeMap<String, BTreeMap<String, f64>>,
    /// Per node, the first hop toward it: itself, or the member relaying to it.
    pub routing_table: BTreeMap<String, String>,
    /// What each node offers, this one first.
    pub advertisements: Vec<Advertisement>,
    /// The members reached neither directly nor through another member.
    pub unreachable: BTreeMap<String, Unreachable>,
}

/// A direct link in a [`ReceptorStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Connection {
    /// The peer.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Its round trip, ms.
    pub cost: f64,
}

/// A node's service advertisement in a [`ReceptorStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Advertisement {
    /// The node.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Always `control`.
    pub service: String,
    /// Receptor's connection type: 1, a stream.
    pub conn_type: u8,
    /// When it was heard from (RFC 3339).
    pub time: String,
    /// Always absent: om has no service tags.
    pub tags: Option<BTreeMap<String, String>>,
    /// The work types it runs.
    pub work_commands: Vec<WorkCommand>,
}

/// A work type in an [`Advertisement`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WorkCommand {
    /// The work type.
    pub work_type: String,
    /// Always false: om does not sign work.
    pub secure: bool,
}

/// A member reached neither directly nor through another member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Unreachable {
    /// Both failures.
    pub error: String,
    /// Milliseconds since it last answered this node.
    pub last_seen_ms_ago: Option<u64>,
}

/// `ping`: Receptor's `{Success, From, Time}`, or `{Success: false, From, Error}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PingReply {
    /// It answered.
    Reply(Pong),
    /// It did not.
    Failed(PingFailed),
}

/// The answer of a node that answered a `ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Pong {
    /// Always true.
    pub success: bool,
    /// The node that answered.
    pub from: String,
    /// The round trip, `1.234ms`.
    pub time: String,
    /// The same, as receptorctl also reads it.
    pub time_str: String,
    /// The round trip, ms.
    pub time_ms: f64,
    /// The member that relayed the ping, when the direct link is down.
    pub via: Option<String>,
}

/// A `ping` that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PingFailed {
    /// Always false.
    pub success: bool,
    /// The node pinged.
    pub from: String,
    /// Why it did not answer.
    pub error: String,
}

/// One hop of a `traceroute`; the answer maps `"0"`, `"1"`, ... to hops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Hop {
    /// The node at this hop.
    pub from: String,
    /// The round trip to it, `1.234ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The same, or `-` when it failed.
    pub time_str: String,
    /// Why it could not be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `reload`: node.conf read again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Reloaded {
    /// Always true (a refused node.conf is an error).
    pub success: bool,
    /// `section.key` of every changed parameter that took effect.
    pub applied: Vec<String>,
    /// `section.key` of every changed parameter that waits for the next start.
    pub needs_restart: Vec<String>,
}

/// `work cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkCancelled {
    /// The unit.
    pub cancelled: String,
}

/// `work release` and `work force-release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkReleased {
    /// The unit.
    pub released: String,
}

/// `work submit`, once the unit runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkStarted {
    /// Always `Job Started`.
    pub result: String,
    /// The unit.
    pub unitid: String,
}
