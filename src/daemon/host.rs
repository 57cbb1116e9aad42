//! The daemon as the composition root: `Daemon` implements [`Host`], the narrow view that
//! `services` and `monitor` get of it, so they never name `Daemon`.

use std::sync::Arc;
use std::time::Duration;

use crate::wire::Doc;
use raft::node::Committed;
use raft::Command;
use raft::Node;

use super::Daemon;
use crate::api::Action;
use crate::api::ApiError as ActionError;
use crate::config::NodeConfig;
use crate::config::Paths;
use crate::services::host::Pending;
use crate::services::host::Read;
use crate::services::Host;
use crate::services::Local;
use crate::wire::Status;

/// The daemon as its services and monitor see it (the composition root's hand-down).
impl Host for Daemon {
    fn me(&self) -> String {
        self.name()
    }

    fn config(&self) -> NodeConfig {
        Daemon::config(self)
    }

    fn paths(&self) -> &Paths {
        &self.paths
    }

    fn node(&self) -> Result<Node, ActionError> {
        Daemon::node(self)
    }

    fn local(&self) -> &Arc<Local> {
        &self.services
    }

    fn propose(
        &self,
        cmd: Command,
        within: Duration,
    ) -> Pending<'_, Result<Committed, ActionError>> {
        Box::pin(async move {
            match tokio::time::timeout(within, Daemon::propose(self, cmd)).await {
                Ok(answer) => answer,
                Err(_) => Err(ActionError::new(
                    Status::Unavailable,
                    format!("not committed within {within:?}: no majority reachable?"),
                )),
            }
        })
    }

    fn read_linearizable<'a>(
        &'a self,
        action: Action,
        options: Doc,
        read: &'a Read<'a>,
    ) -> Pending<'a, Result<Doc, ActionError>> {
        Box::pin(Daemon::read_linearizable(
            self, action, options, false, read,
        ))
    }

    fn ask_member<'a>(
        &'a self,
        node: &'a str,
        action: Action,
        options: Doc,
        timeout: Duration,
    ) -> Pending<'a, Result<Doc, ActionError>> {
        Box::pin(Daemon::ask_member_doc(self, node, action, options, timeout))
    }

    fn call_peer<'a>(
        &'a self,
        addr: &'a str,
        action: Action,
        options: Doc,
        timeout: Duration,
    ) -> Pending<'a, Result<Doc, ActionError>> {
        Box::pin(async move {
            self.peers
                .call_doc(addr, "", action.as_str(), options, timeout)
                .await
                .map_err(|e| ActionError::new(Status::Unavailable, e.to_string()))
        })
    }

    fn last_seen(&self, node: &str) -> Option<Duration> {
        self.peers.last_seen(node)
    }

    fn dequeued(&self) -> Pending<'_, ()> {
        Box::pin(self.dequeue.notified())
    }
}
