//! Deliberately broken variants (`--inject-bug NAME`) that the checkers must catch.

use std::fmt;
use std::str::FromStr;

/// A bug the simulator can plant in the system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// The disk acknowledges `sync` without making anything durable
    /// (`MemDiskFaults.lying_sync`): votes and log entries are acknowledged before they are
    /// flushed, and crashes lose them.
    LyingSync,
    /// The log store acknowledges a sync before the disk has finished it (the sync runs
    /// behind the acknowledgement): a crash in between loses acknowledged votes and entries.
    AckBeforeSync,
    /// The state machine now and then applies an earlier command a second time, after a
    /// later one (a replay that forgot where it stopped).
    DoubleApply,
    /// The log store forgets the saved vote on restart, so a node can vote twice in a term.
    ForgetVote,
    /// Clients read the local state of whatever node they ask instead of
    /// `Node::read_linearizable` (a stale-read bug in a read path).
    StaleRead,
    /// Every node's inbox answers whatever RPC arrives, as whoever it was meant for
    /// (`raft::rpc::Inbox::without_address_check`): a leader whose RPC for another member
    /// reaches itself or a third node counts that answer as the member's.
    RpcTargetUnchecked,
}

impl Bug {
    /// Every variant, in `--list-bugs` order; `FromStr` searches it.
    pub const ALL: &'static [Bug] = &[
        Bug::LyingSync,
        Bug::AckBeforeSync,
        Bug::DoubleApply,
        Bug::ForgetVote,
        Bug::StaleRead,
        Bug::RpcTargetUnchecked,
    ];

    /// The `--inject-bug` spelling, also the `Display` form.
    pub fn name(self) -> &'static str {
        match self {
            Bug::LyingSync => "lying-sync",
            Bug::AckBeforeSync => "ack-before-sync",
            Bug::DoubleApply => "double-apply",
            Bug::ForgetVote => "forget-vote",
            Bug::StaleRead => "stale-read",
            Bug::RpcTargetUnchecked => "rpc-target-unchecked",
        }
    }

    /// The one-line explanation `--list-bugs` prints.
    pub fn describe(self) -> &'static str {
        match self {
            Bug::LyingSync => "sync returns before anything is durable; crashes lose acknowledged votes and entries",
            Bug::AckBeforeSync => "the log store acknowledges a sync before the disk finished it; a crash in between loses acknowledged writes",
            Bug::DoubleApply => "the state machine re-applies an earlier command after a later one",
            Bug::ForgetVote => "the log store forgets the saved vote on restart (double voting)",
            Bug::StaleRead => "reads are served from any node's local state, without a leader check",
            Bug::RpcTargetUnchecked => "inboxes answer misaddressed raft rpcs as their intended target (no address check)",
        }
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Bug {
    type Err = String;

    fn from_str(s: &str) -> Result<Bug, String> {
        Bug::ALL
            .iter()
            .copied()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
                format!("unknown bug {s:?}: one of {}", names.join(", "))
            })
    }
}
