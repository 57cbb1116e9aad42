//! What the raft crate's test files share.

use raft::apply;
use raft::ClusterState;
use raft::Command;

/// A cluster `c` bootstrapped by n1 at `h:1`.
pub(crate) fn bootstrapped() -> ClusterState {
    let mut s = ClusterState::default();
    let boot = Command::Bootstrap {
        id: None,
        cluster: "c".into(),
        node: "n1".into(),
        addr: "h:1".into(),
        at_ms: 0,
    };
    apply(&mut s, &boot)
        .0
        .expect("a first bootstrap is accepted");
    s
}
