//! [`Host`]: what the services and the monitor need of the daemon that runs them, and no
//! more: who this node is, its config and files, the replicated state, one way to commit
//! a command within a deadline, the agent API (here, on a member, on a peer's address),
//! and when a peer was last heard from.
//!
//! `Daemon` implements it and hands `Arc<dyn Host>` down (the composition root), so
//! `services` and `monitor` do not name the daemon: the dependencies point one way,
//! `services -> monitor -> daemon`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use raft::node::Committed;
use raft::ClusterState;
use raft::Command;
use raft::Node;

use super::Local;
use crate::api::Action;
use crate::api::ApiError;
use crate::config::NodeConfig;
use crate::config::Paths;
use crate::wire::Doc;

/// A boxed future borrowing the host (trait objects cannot have `async fn`s).
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A read of the replicated state, for [`Host::read_linearizable`].
pub type Read<'a> = dyn Fn(&ClusterState) -> Result<Doc, ApiError> + Send + Sync + 'a;

/// The daemon, as the services and the monitor see it.
pub trait Host: Send + Sync + 'static {
    /// This node's name.
    fn me(&self) -> String;
    /// The running node.conf.
    fn config(&self) -> NodeConfig;
    /// Where this node's files are.
    fn paths(&self) -> &Paths;
    /// The Raft node (the replicated state), if Raft runs.
    fn node(&self) -> Result<Node, ApiError>;
    /// The services' state on this node.
    fn local(&self) -> &Arc<Local>;
    /// Commits `cmd` through the leader, at most once, within `within`; past it, an
    /// `UNAVAILABLE` naming the deadline.
    fn propose(&self, cmd: Command, within: Duration) -> Pending<'_, Result<Committed, ApiError>>;
    /// Reads the state with `read` once the leader confirmed its leadership (on a follower:
    /// `action` with `options` is forwarded to the leader, which runs the same read).
    fn read_linearizable<'a>(
        &'a self,
        action: Action,
        options: Doc,
        read: &'a Read<'a>,
    ) -> Pending<'a, Result<Doc, ApiError>>;
    /// Sends `action` to member `node` and returns its answer's data.
    fn ask_member<'a>(
        &'a self,
        node: &'a str,
        action: Action,
        options: Doc,
        timeout: Duration,
    ) -> Pending<'a, Result<Doc, ApiError>>;
    /// Sends `action` to whoever listens at `addr` (a member's recorded address).
    fn call_peer<'a>(
        &'a self,
        addr: &'a str,
        action: Action,
        options: Doc,
        timeout: Duration,
    ) -> Pending<'a, Result<Doc, ApiError>>;
    /// The listener address of member `node`.
    fn member_addr(&self, node: &str) -> Result<String, ApiError> {
        self.node()?.read(|s| match s.nodes.get(node) {
            Some(r) => Ok(r.addr.clone()),
            None => Err(ApiError::bad(format!(
                "node {node:?} is not a cluster member; members: {}",
                s.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
        })
    }
    /// How long ago `node` last answered this node, if it ever did.
    fn last_seen(&self, node: &str) -> Option<Duration>;
    /// Resolves when an operator asks to run the queued actions now (`om node dequeue`).
    fn dequeued(&self) -> Pending<'_, ()>;
}

/// [`Host::ask_member`] with typed options.
pub async fn ask<O: serde::Serialize>(
    host: &dyn Host,
    node: &str,
    action: Action,
    options: &O,
    timeout: Duration,
) -> Result<Doc, ApiError> {
    let options = crate::api::reply(options)?;
    host.ask_member(node, action, options, timeout).await
}

/// How long a node's own report or expectation may take to commit: `node.down_timeout`
/// (at least 1 s), after which the leader would count the node down anyway.
pub fn commit_limit(cfg: &NodeConfig) -> Duration {
    cfg.down_timeout.max(Duration::from_secs(1))
}
