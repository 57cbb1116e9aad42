//! Join consent: `cluster.join = approve` makes the leader refuse a join (status
//! `PENDING`) until an operator commits `om cluster approve <node>`; `om cluster
//! join-requests` shows who asked. Also `cluster_set`, the edge where cluster parameters
//! are parsed: only the parameters om acts on are accepted, so a typo is an error, not a
//! parameter nobody reads.
//!
//! Approvals are replicated ([`raft::Command::ApproveJoin`]); the refused requests live in
//! the leader's memory only (bounded): joiners retry every few seconds, so a new leader
//! knows them again almost at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use raft::node::Committed;
use raft::state::JoinPolicy;
use raft::state::JOIN_APPROVAL_TTL_MS;
use raft::Command;
use raft::Node;

use super::actions::ActionError;
use super::Daemon;
use crate::api;
use crate::api::options;
use crate::api::Action;
use crate::clock::now_ms;
use crate::wire::Status;

/// The cluster parameters `cluster_set` accepts, with their allowed values.
pub(super) const CLUSTER_PARAMS: &[(&str, &[&str])] = &[("cluster.join", &["open", "approve"])];

/// Checks that `param` is a cluster parameter om acts on and `value` one it allows.
pub(super) fn check_cluster_param(param: &str, value: Option<&str>) -> Result<(), String> {
    let Some((_, allowed)) = CLUSTER_PARAMS.iter().find(|(k, _)| *k == param) else {
        let known: Vec<&str> = CLUSTER_PARAMS.iter().map(|(k, _)| *k).collect();
        return Err(format!(
            "unknown cluster parameter {param:?}; known: {}",
            known.join(", ")
        ));
    };
    match value {
        Some(v) if !allowed.contains(&v) => Err(format!(
            "invalid value {v:?} for {param}: allowed values are {}",
            allowed.join(", ")
        )),
        _ => Ok(()),
    }
}

/// The most refused joins a leader remembers; the oldest is forgotten first.
const MAX_JOIN_REQUESTS: usize = 64;

/// Joins refused for want of an approval, by node name.
#[derive(Debug, Default)]
pub(super) struct JoinRequests(std::sync::Mutex<BTreeMap<String, options::JoinRequest>>);

impl JoinRequests {
    fn note(&self, node: &str, addr: &str, peer: SocketAddr, now: u64) {
        let mut map = self.0.lock().unwrap();
        if !map.contains_key(node) && map.len() >= MAX_JOIN_REQUESTS {
            let oldest = map
                .values()
                .min_by_key(|r| r.last_ms)
                .map(|r| r.node.clone());
            map.remove(&oldest.expect("the map is full"));
        }
        let r = map
            .entry(node.to_string())
            .or_insert_with(|| options::JoinRequest {
                node: node.to_string(),
                first_ms: now,
                ..Default::default()
            });
        r.addr = addr.to_string();
        r.peer = peer.to_string();
        r.last_ms = now;
        r.attempts += 1;
    }

    fn forget(&self, node: &str) {
        self.0.lock().unwrap().remove(node);
    }

    fn list(&self) -> Vec<options::JoinRequest> {
        let mut v: Vec<_> = self.0.lock().unwrap().values().cloned().collect();
        v.sort_by_key(|r| r.last_ms);
        v
    }
}

impl Daemon {
    /// On the leader, before admitting `joiner`: refuses it with `PENDING` (and remembers
    /// the request) unless `cluster.join` lets it in now.
    pub(super) fn check_consent(
        &self,
        node: &Node,
        joiner: &str,
        addr: &str,
        peer: SocketAddr,
    ) -> Result<(), ActionError> {
        let now = now_ms();
        if node.read(|s| s.join_allowed(joiner, now)) {
            self.join_requests.forget(joiner);
            return Ok(());
        }
        self.join_requests.note(joiner, addr, peer, now);
        tracing::info!(node = %joiner, %addr, "join waits for an approval (cluster.join = approve)");
        Err(ActionError::new(
            Status::Pending,
            format!(
                "joining cluster {} needs an approval (cluster.join = approve): run `om cluster \
                 approve {joiner}` on a member; this node keeps asking",
                self.config().cluster_name
            ),
        ))
    }

    /// `cluster_approve`: commits the approval of `node`'s join.
    pub(super) async fn approve_join(
        &self,
        o: options::ClusterApprove,
    ) -> Result<Committed, ActionError> {
        raft::apply::check_name("node", &o.node).map_err(|e| ActionError::bad(e.to_string()))?;
        self.propose(Command::ApproveJoin {
            node: o.node,
            at_ms: now_ms(),
        })
        .await
    }

    /// `cluster_set`: commits a known cluster parameter after checking its value here.
    pub(super) async fn cluster_set(
        &self,
        o: options::ClusterSet,
    ) -> Result<Committed, ActionError> {
        check_cluster_param(&o.param, o.value.as_deref()).map_err(ActionError::bad)?;
        self.propose(Command::SetClusterParam {
            key: o.param,
            value: o.value,
        })
        .await
    }

    /// `join_requests`: the leader's refused joins and the unused approvals.
    pub(super) async fn join_requests(&self) -> Result<options::JoinRequestsReport, ActionError> {
        let node = self.node()?;
        if let Some(leader) = self.leader_elsewhere(&node)? {
            let data = self
                .ask_leader(
                    &leader,
                    Action::JoinRequests.as_str(),
                    api::reply(&options::JoinRequests {})?,
                    Duration::from_secs(10),
                )
                .await?;
            return api::decode_reply(Action::JoinRequests, data);
        }
        let (policy, approved) = node.read(|s| {
            let approved = s
                .join_approvals
                .iter()
                .map(|(n, at)| options::JoinApproval {
                    node: n.clone(),
                    at_ms: *at,
                    expires_ms: at.saturating_add(JOIN_APPROVAL_TTL_MS),
                })
                .collect();
            (s.join_policy(), approved)
        });
        Ok(options::JoinRequestsReport {
            leader: self.name(),
            policy: match policy {
                JoinPolicy::Open => "open",
                JoinPolicy::Approve => "approve",
            }
            .into(),
            pending: self.join_requests.list(),
            approved,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_joins_are_remembered_within_a_bound() {
        let r = JoinRequests::default();
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        for i in 0..(MAX_JOIN_REQUESTS as u64 + 10) {
            r.note(&format!("n{i}"), "h:1", peer, i);
        }
        r.note("n70", "h:2", peer, 1_000);
        let list = r.list();
        assert_eq!(list.len(), MAX_JOIN_REQUESTS);
        assert_eq!(list[0].node, "n10", "the oldest were forgotten");
        let last = list.last().unwrap();
        assert_eq!(
            (last.node.as_str(), last.addr.as_str(), last.attempts),
            ("n70", "h:2", 2)
        );
        r.forget("n70");
        assert_eq!(r.list().len(), MAX_JOIN_REQUESTS - 1);
    }
}
