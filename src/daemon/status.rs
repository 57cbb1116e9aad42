//! `daemon_status`: the cluster data as this node sees it, merged with each peer's own view.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use serde_json::json;
use serde_json::Map;
use serde_json::Value;

use super::actions::ActionError;
use super::Daemon;
use crate::api::options;

/// How long a peer has to answer its part of a status.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(1000);

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Learner => "learner",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
    }
}

impl Daemon {
    /// This node's own view: Raft role and indexes, threads, listener.
    fn self_view(&self) -> Result<Value, ActionError> {
        let node = self.node()?;
        let m = node.metrics();
        let cfg = self.config();
        // Read together, under the state machine's lock: nodes at one index compare hashes.
        let (applied_index, applied_digest) =
            node.read_machine(|d| (d.last_applied.map(|l| l.index), d.digest()));
        Ok(json!({
            "role": role(m.state),
            // A string: JSON tools round 64-bit integers.
            "raft_id": node.id.to_string(),
            "address": self.advertised_addr(),
            "term": m.current_term,
            "last_log_index": m.last_log_index,
            "last_applied": m.last_applied.map(|l| l.index),
            "snapshot": m.snapshot.map(|l| l.index),
            "purged": m.purged.map(|l| l.index),
            "applied_state": {"index": applied_index, "digest": applied_digest},
            "leader_id": m.current_leader,
            "uptime_s": self.uptime().as_secs(),
            "listener": format!("{}:{}", cfg.listener_addr, cfg.listener_port),
            "listener_problem": self.addr_problem(),
            "rpc_refused": self.rpc_counters.refused.load(Ordering::Relaxed),
            "rpc_misdelivered": self.rpc_counters.misdelivered.load(Ordering::Relaxed),
            "listener_metrics": self.listener.metrics().snapshot(),
            "threads": self.threads.status(),
        }))
    }

    /// The full status; with `local`, only this node's view (what peers ask each other).
    pub async fn status(self: &Arc<Self>, local: bool) -> Result<Value, ActionError> {
        let me = self.name();
        let mine = self.self_view()?;
        if local {
            return Ok(json!({ "node": me, "self": mine }));
        }
        let node = self.node()?;
        let m = node.metrics();
        let membership = m.membership_config.membership().clone();
        let leader = m
            .current_leader
            .and_then(|id| membership.get_node(&id).map(|mb| mb.name.clone()));
        let state = node.read(|s| s.clone());

        // Everyone in the replicated node list or in the Raft membership (learners joining).
        let mut names: Vec<(String, String, &'static str)> = Vec::new();
        for (id, mb) in membership.nodes() {
            let kind = if membership.voter_ids().any(|v| v == *id) {
                "voter"
            } else {
                "learner"
            };
            names.push((mb.name.clone(), mb.addr.clone(), kind));
        }
        for (n, rec) in &state.nodes {
            if !names.iter().any(|(x, _, _)| x == n) {
                names.push((n.clone(), rec.addr.clone(), "none"));
            }
        }
        names.sort();

        let asks = names
            .iter()
            .filter(|(n, _, _)| *n != me)
            .map(|(n, addr, _)| {
                let peers = self.peers.clone();
                let (n, addr) = (n.clone(), addr.clone());
                async move {
                    let r = peers
                        .call(
                            &addr,
                            "daemon_status",
                            json!({ "local": true }),
                            PEER_STATUS_TIMEOUT,
                        )
                        .await;
                    (n, r)
                }
            });
        let answers = futures_join_all(asks).await;

        let mut nodes = Map::new();
        for (name, addr, kind) in &names {
            let mut entry = if *name == me {
                let mut v = mine.clone();
                v["reachable"] = json!(true);
                v
            } else {
                match answers.iter().find(|(n, _)| n == name).map(|(_, r)| r) {
                    // Whoever listens at a member's recorded address is not that member
                    // until it says its name.
                    Some(Ok(data)) if data["node"] != json!(name) => json!({
                        "role": "unknown", "address": addr, "reachable": false,
                        "error": format!("{addr} is answered by {}, not {name}", data["node"]),
                    }),
                    Some(Ok(data)) => {
                        self.peers.saw(name);
                        let mut v = data.get("self").cloned().unwrap_or(json!({}));
                        v["reachable"] = json!(true);
                        v
                    }
                    Some(Err(e)) => {
                        json!({ "role": "unknown", "address": addr, "reachable": false, "error": e.to_string() })
                    }
                    None => json!({ "reachable": false }),
                }
            };
            entry["membership"] = json!(kind);
            entry["in_cluster_nodes"] = json!(state.nodes.contains_key(name));
            if let Some(mon) = state.node_monitors.get(name) {
                entry["monitor"] = json!(mon);
            }
            if let Some(seen) = self.peers.last_seen(name) {
                entry["last_seen_ms"] = json!(seen.as_millis() as u64);
            }
            nodes.insert(name.clone(), entry);
        }
        let services: Map<String, Value> = state
            .services
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    json!({ "version": v.version, "global_expect": v.global_expect, "instances": v.instances }),
                )
            })
            .collect();
        Ok(json!({
            "node": me,
            "cluster": {
                "name": state.name,
                "leader": leader,
                "term": m.current_term,
                "nodes": state.nodes.keys().collect::<Vec<_>>(),
                "params": state.params,
            },
            "nodes": nodes,
            "threads": self.threads.status(),
            "services": services,
        }))
    }
}

/// Runs futures concurrently and collects their outputs in order.
impl Daemon {
    /// `hello`: this node and the agent API versions it speaks.
    pub(super) fn hello(&self, o: options::Hello) -> Result<options::HelloReply, ActionError> {
        let newest = *options::API_VERSIONS
            .last()
            .expect("at least one API version");
        let api_version = match o.api_version {
            None => newest,
            Some(v) if options::API_VERSIONS.contains(&v) => v,
            Some(v) => {
                return Err(ActionError::bad(format!(
                    "hello: api_version {v} is not spoken here; this node speaks {:?}",
                    options::API_VERSIONS
                )))
            }
        };
        Ok(options::HelloReply {
            instance: self.name(),
            host: self.config().advertised_addr(),
            api_version,
            api_versions: options::API_VERSIONS.to_vec(),
        })
    }

    /// `get_nodes`: every node of `cluster.nodes` asked for its own view within `timeout`;
    /// each gets its own result.
    pub(super) async fn get_nodes(
        &self,
        timeout: Duration,
    ) -> Result<Vec<options::NodeResult>, ActionError> {
        let me = self.name();
        let node = self.node()?;
        let state = node.read(|s| s.clone());
        let asks = state.nodes.iter().map(|(name, rec)| {
            let (peers, name, addr, me) = (
                self.peers.clone(),
                name.clone(),
                rec.addr.clone(),
                me.clone(),
            );
            async move {
                if name == me {
                    return (name, Ok(None));
                }
                let r = tokio::time::timeout(
                    timeout,
                    peers.call(&addr, "daemon_status", json!({"local": true}), timeout),
                )
                .await;
                (
                    name,
                    r.map_err(|_| "request timed out".to_string())
                        .and_then(|r| r.map(Some).map_err(|e| e.to_string())),
                )
            }
        });
        let mine = self.self_view()?;
        let mut out = Vec::new();
        for (name, answer) in futures_join_all(asks).await {
            let view = match answer {
                Ok(None) => mine.clone(),
                Ok(Some(data)) if data["node"] == json!(name) => data["self"].clone(),
                Ok(Some(data)) => {
                    out.push(failed(
                        &name,
                        format!("its address is answered by {}", data["node"]),
                    ));
                    continue;
                }
                Err(e) => {
                    out.push(failed(&name, e));
                    continue;
                }
            };
            let instances: Map<String, Value> = state
                .services
                .iter()
                .filter_map(|(svc, s)| {
                    s.instances
                        .get(&name)
                        .map(|i| (svc.clone(), json!(i.status)))
                })
                .collect();
            let mon = state.node_monitors.get(&name);
            out.push(options::NodeResult {
                node: name.clone(),
                success: true,
                error: None,
                data: Some(json!({
                    "state": mon.map_or(json!("unknown"), |m| json!(m.status)),
                    "frozen": mon.is_some_and(|m| m.frozen),
                    "role": view["role"],
                    "instances": instances,
                })),
            });
        }
        Ok(out)
    }
}

fn failed(node: &str, error: String) -> options::NodeResult {
    options::NodeResult {
        node: node.to_string(),
        success: false,
        error: Some(error),
        data: None,
    }
}

pub(super) async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
