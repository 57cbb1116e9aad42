//! The agent API's duty states (Zeek's `agent_standby` and `agent_welcome`): a node in
//! `standby` stops its instances and starts none, stays a Raft member and a voter, and is
//! no candidate for placement (the orchestrator moves `orchestrate = ha` services off it);
//! `agent_welcome` puts it back to `idle`, and its instances start again where they are
//! still placed. Standby outlives a daemon restart; a node marked down while in standby
//! comes back `idle`.
//!
//! A witness (`node.role = witness`) stands by for good: the node records its role in its
//! member record, which placement and the monitor read as they read standby.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use raft::state::NodeStatus;
use raft::Command;

use super::actions::ActionError;
use super::Daemon;
use crate::api::options;
use crate::api::Action;
use crate::wire::Status;

/// The longest `agent_standby` waits for the instances to stop.
const MAX_STANDBY_WAIT: Duration = Duration::from_secs(600);

impl Daemon {
    /// `agent_standby`: this node (or `node`, asked to do it) releases its instances.
    pub(super) async fn standby(
        self: &Arc<Self>,
        o: options::AgentStandby,
    ) -> Result<options::AgentState, ActionError> {
        let wait = Duration::from_millis(o.timeout_ms.unwrap_or(60_000)).min(MAX_STANDBY_WAIT);
        if let Some(other) = o.node.as_ref().filter(|n| **n != self.name()) {
            let fwd = options::AgentStandby {
                node: None,
                timeout_ms: o.timeout_ms,
            };
            let wait = wait + Duration::from_secs(5);
            return self
                .ask_member(other, Action::AgentStandby, &fwd, wait)
                .await;
        }
        self.set_duty(NodeStatus::Standby).await?;
        let deadline = Instant::now() + wait;
        loop {
            let state = self.duty_state()?;
            let running: Vec<&String> = state
                .instances
                .iter()
                .filter(|(_, a)| matches!(a.as_str(), "up" | "warn"))
                .map(|(s, _)| s)
                .collect();
            if running.is_empty() {
                return Ok(state);
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = running.iter().map(|s| s.as_str()).collect();
                return Err(ActionError::new(
                    Status::Error,
                    format!(
                        "{} is in standby but still runs {} after {wait:?}: see `om <svc> logs`",
                        state.node,
                        names.join(", ")
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `agent_welcome`: this node (or `node`) is back to normal duty.
    pub(super) async fn welcome(
        self: &Arc<Self>,
        o: options::AgentWelcome,
    ) -> Result<options::AgentState, ActionError> {
        if let Some(other) = o.node.as_ref().filter(|n| **n != self.name()) {
            let back = options::AgentWelcome::default();
            return self
                .ask_member(other, Action::AgentWelcome, &back, Duration::from_secs(15))
                .await;
        }
        if self.duty_state()?.state == NodeStatus::Standby.to_string() {
            self.set_duty(NodeStatus::Idle).await?;
        }
        self.duty_state()
    }

    /// Keeps this node's `node.role` recorded in its member record: checked every 2 s, so
    /// that the start, a join and a live node.conf change are all covered by one loop.
    pub(super) async fn keep_role_recorded(self: Arc<Self>) {
        let mut warned = false;
        loop {
            let (me, want) = (self.name(), self.config().role);
            let recorded = self
                .node()
                .ok()
                .and_then(|n| n.read(|s| s.nodes.get(&me).map(|r| r.role)));
            if recorded.is_some_and(|r| r != want) {
                let cmd = Command::SetNodeRole {
                    node: me,
                    role: want,
                };
                match self.propose(cmd).await {
                    Ok(_) => {
                        warned = false;
                        tracing::info!(role = %want, "node role recorded by the cluster");
                        for rt in self.services.instances() {
                            rt.wake.notify_one();
                        }
                    }
                    // Usually no quorum yet: said once, then at debug.
                    Err(e) if !warned => {
                        warned = true;
                        tracing::warn!(role = %want, "cannot record the node role yet: {e}");
                    }
                    Err(e) => tracing::debug!(role = %want, "cannot record the node role yet: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    async fn set_duty(self: &Arc<Self>, status: NodeStatus) -> Result<(), ActionError> {
        let cmd = Command::SetNodeMonitor {
            node: self.name(),
            status: Some(status),
            local_expect: None,
            frozen: None,
        };
        let committed = self.propose(cmd).await?;
        // Committed through the leader: what this node answers must already show it.
        let _ = self
            .node()?
            .raft
            .wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(Some(committed.index), "the duty change applied here")
            .await;
        tracing::info!(%status, "node duty changed");
        for rt in self.services.instances() {
            rt.wake.notify_one();
        }
        Ok(())
    }

    /// This node's status and its instances' availability, as the state records them.
    fn duty_state(&self) -> Result<options::AgentState, ActionError> {
        let me = self.name();
        self.node()?.read(|s| {
            let status = s
                .node_monitors
                .get(&me)
                .map(|m| m.status)
                .ok_or_else(|| ActionError::bad(format!("{me} is not a cluster member")))?;
            let instances: BTreeMap<String, String> = s
                .services
                .iter()
                .filter_map(|(svc, v)| {
                    let i = v.instances.get(&me)?;
                    Some((svc.clone(), i.avail.to_string()))
                })
                .collect();
            Ok(options::AgentState {
                node: me.clone(),
                state: status.to_string(),
                instances,
            })
        })
    }
}
