//! [`Action`]: the closed set of action names, with who may send each.
//!
//! Names are OpenSVC's (so its operators and scripts recognize them), plus the Raft RPCs
//! and a few control-socket helpers. A request's `action` string is parsed here once; the
//! handlers match on the enum.

use std::fmt;
use std::str::FromStr;

use super::ApiError;
use super::Status;

macro_rules! actions {
    ($($(#[$meta:meta])* $variant:ident => $name:literal, $door:ident;)+) => {
        /// Every action of the protocol.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Action {
            $($(#[$meta])* $variant),+
        }

        impl Action {
            /// Every action, in documentation order.
            pub const ALL: &'static [Action] = &[$(Action::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Action::$variant => $name),+
                }
            }

            /// Who may send it.
            pub fn door(self) -> Door {
                match self {
                    $(Action::$variant => Door::$door),+
                }
            }
        }
    };
}

/// Who may send an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The control socket and cluster members.
    Any,
    /// The local control socket only (root on this host).
    Control,
    /// Cluster members only (Raft RPCs).
    Peer,
}

actions! {
    /// This node's and its peers' state.
    DaemonStatus => "daemon_status", Any;
    /// Stop the daemon, or one thread.
    DaemonStop => "daemon_stop", Any;
    /// Start one thread.
    DaemonStart => "daemon_start", Any;
    /// Stop local instances, then the daemon.
    DaemonShutdown => "daemon_shutdown", Any;
    /// The listener's blacklist.
    BlacklistStatus => "blacklist_status", Any;
    /// Forget the blacklist.
    BlacklistClear => "blacklist_clear", Any;
    /// Join a cluster (control) or admit a node (wire).
    Join => "join", Any;
    /// Leave the cluster (control) or evict a node (wire).
    Leave => "leave", Any;
    /// Set fields of a node monitor.
    SetNodeMonitor => "set_node_monitor", Any;
    /// Read node monitors.
    GetNodeMonitor => "get_node_monitor", Any;
    /// Set fields of a service monitor.
    SetServiceMonitor => "set_service_monitor", Any;
    /// Read service monitors.
    GetServiceMonitor => "get_service_monitor", Any;
    /// Clear a service's failed states.
    Clear => "clear", Any;
    /// Read a service's config.
    GetServiceConfig => "get_service_config", Any;
    /// Create, change or delete a service's config.
    SetServiceConfig => "set_service_config", Any;
    /// Run an instance action on a node.
    ServiceAction => "service_action", Any;
    /// Every node's log lines of a service, merged.
    ServiceLogs => "service_logs", Any;
    /// A service's instances and progress towards a target.
    ServiceStatus => "service_status", Any;
    /// A node's asynchronous jobs.
    JobList => "job_list", Any;
    /// One job and its output.
    JobShow => "job_show", Any;
    /// Cancel a job.
    JobCancel => "job_cancel", Any;
    /// Applied events, from a sequence number.
    Events => "events", Any;
    /// The agent API's check-in (Zeek's `notify_agent_hello`): who answers, and which API
    /// versions it speaks; an unknown `api_version` is refused naming them.
    Hello => "hello", Any;
    /// The agent API's `get_nodes`: one status record per node, each with its own result
    /// (a node that does not answer in time is a failed result, not a failed request).
    GetNodes => "get_nodes", Any;
    /// The agent API's `get_configuration`: every service's config and the cluster
    /// parameters, as one document.
    GetConfiguration => "get_configuration", Any;
    /// The agent API's `set_configuration`: make the cluster's configuration that document
    /// (validated in full, one deployment at a time, a result per node).
    SetConfiguration => "set_configuration", Any;
    /// The agent API's `agent_standby`: stop the node's instances, keep it a member.
    AgentStandby => "agent_standby", Any;
    /// The agent API's `agent_welcome`: the node is back to normal duty.
    AgentWelcome => "agent_welcome", Any;
    /// One round trip: the answering node's name, version, work types and connections.
    ControlPing => "control_ping", Any;
    /// One control service command (a line, text or JSON) run by the receiver: what
    /// `connect <node> control` relays.
    ControlCommand => "control_command", Any;
    /// Run a work unit on the receiver, with its payload.
    WorkSubmit => "work_submit", Any;
    /// The receiver's work units.
    WorkStatus => "work_status", Any;
    /// A chunk of a work unit's stdout, from a byte offset.
    WorkResults => "work_results", Any;
    /// Cancel a work unit.
    WorkCancel => "work_cancel", Any;
    /// Cancel a work unit if needed and delete it.
    WorkRelease => "work_release", Any;
    /// Rotation step 1: every node accepts a new secret (control socket).
    ClusterSecretAdd => "cluster_secret_add", Control;
    /// Rotation step 2: every node uses an accepted secret (control socket).
    ClusterSecretUse => "cluster_secret_use", Control;
    /// Rotation step 3: no node accepts a secret any more (control socket).
    ClusterSecretRemove => "cluster_secret_remove", Control;
    /// The rotation plan and, per node, the fingerprints it uses and accepts.
    ClusterSecretList => "cluster_secret_list", Any;
    /// Writes this node's applied state to a backup file on its host (control socket).
    ClusterSnapshotSave => "cluster_snapshot_save", Control;
    /// Makes this node the only member of a new cluster holding a backup's state (control
    /// socket).
    ClusterSnapshotRestore => "cluster_snapshot_restore", Control;
    /// Sets or removes a cluster parameter (`cluster.join`, ...), through Raft.
    ClusterSet => "cluster_set", Any;
    /// Lets a node join a cluster whose `cluster.join` is `approve`.
    ClusterApprove => "cluster_approve", Any;
    /// The joins waiting for an approval, as the leader saw them, and the approvals.
    JoinRequests => "join_requests", Any;
    /// Whether a listener address is free in the cluster (asked by `om node set`).
    CheckListenerAddr => "check_listener_addr", Control;
    /// Testing aid: crash a thread or stop the Raft core.
    DaemonInjectFault => "daemon_inject_fault", Control;
    /// Raft AppendEntries (addressed).
    RaftAppend => "raft_append", Peer;
    /// Raft Vote (addressed).
    RaftVote => "raft_vote", Peer;
    /// Raft InstallSnapshot (addressed).
    RaftSnapshot => "raft_snapshot", Peer;
    /// A command forwarded to the leader (addressed).
    RaftPropose => "raft_propose", Peer;
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = ApiError;

    fn from_str(s: &str) -> Result<Action, ApiError> {
        Action::ALL
            .iter()
            .copied()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Action::ALL
                    .iter()
                    .filter(|a| a.door() != Door::Control || *a == &Action::CheckListenerAddr)
                    .map(|a| a.as_str())
                    .collect();
                ApiError::new(
                    Status::UnknownAction,
                    format!("unknown action {s:?}; known actions: {}", known.join(", ")),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>().unwrap(), *a);
        }
        let mut names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Action::ALL.len());
        let e = "nope".parse::<Action>().unwrap_err();
        assert!(
            e.is(Status::UnknownAction) && e.message.contains("daemon_status"),
            "{e}"
        );
    }
}
