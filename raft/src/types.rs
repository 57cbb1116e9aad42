//! The openraft type configuration and the identity of cluster members.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use crate::apply::CommandError;
use crate::apply::Outcome;
use crate::command::Command;
use crate::runtime::OmRuntime;

/// Raft node id: a stable 64-bit hash of the node name (see [`node_id`]).
pub type NodeId = u64;

/// What the state machine answers to one applied log entry.
pub type Reply = Result<Outcome, CommandError>;

openraft::declare_raft_types!(
    /// The openraft type configuration shared by the daemon, the stores and the simulator.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = OmRuntime,
);

/// A Raft member as stored in the membership config: its node name and listener address.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// The node name (`node.name` in node.conf).
    pub name: String,
    /// `host:port` of the node's listener.
    pub addr: String,
}

impl Member {
    /// A member named `name` listening on `addr`.
    pub fn new(name: impl Into<String>, addr: impl Into<String>) -> Self {
        Member {
            name: name.into(),
            addr: addr.into(),
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// The Raft id of the node called `name`: FNV-1a 64 of the name, never 0.
///
/// Every node derives its own id from its name without coordination; the `Join` command
/// refuses a name whose id collides with a member's.
pub fn node_id(name: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    if h == 0 {
        1
    } else {
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("n1"), node_id("n1"));
        assert_ne!(node_id("n1"), node_id("n2"));
        assert_ne!(node_id(""), 0);
        // Pinned so that a change of hash, which would orphan every existing cluster, fails.
        assert_eq!(node_id("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
