//! `daemon_status`, `get_nodes` and `hello`: the cluster data as this node sees it, merged
//! with each peer's own view.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use super::actions::ActionError;
use super::Daemon;
use crate::api::options;
use crate::api::status::AppliedState;
use crate::api::status::CheckIn;
use crate::api::status::ClusterStatus;
use crate::api::status::ClusterView;
use crate::api::status::MemberView;
use crate::api::status::Membership;
use crate::api::status::NodeSummary;
use crate::api::status::NodeView;
use crate::api::status::OwnStatus;
use crate::api::status::OwnView;
use crate::api::status::RaftView;
use crate::api::status::Role;
use crate::api::status::ServiceSummary;

/// The members' `hello` check-ins heard by this daemon, by sender: a member sends one on
/// every session it opens to this node, so a new one means it (re)connected. Bounded by the
/// membership (only members' check-ins are recorded) and forgotten on restart.
#[derive(Default)]
pub(super) struct CheckIns(std::sync::Mutex<BTreeMap<String, (Instant, u32, u64)>>);

impl CheckIns {
    /// Records a check-in of `sender` in `api_version`.
    pub(super) fn record(&self, sender: &str, api_version: u32) {
        let mut g = self.0.lock().unwrap();
        let before = g.get(sender).map(|c| (c.1, c.2));
        let count = before.map_or(0, |(_, n)| n) + 1;
        g.insert(sender.to_string(), (Instant::now(), api_version, count));
        drop(g);
        // Every session opens with one: only news (a first one, another API version) is
        // worth a line at the default level.
        if before.is_none_or(|(v, _)| v != api_version) {
            tracing::info!(member = sender, api_version, "member checked in");
        } else {
            tracing::debug!(
                member = sender,
                api_version,
                sessions = count,
                "member checked in"
            );
        }
    }

    fn view(&self) -> BTreeMap<String, CheckIn> {
        let g = self.0.lock().unwrap();
        g.iter()
            .map(|(name, (at, api_version, count))| {
                let check_in = CheckIn {
                    api_version: *api_version,
                    ago_ms: at.elapsed().as_millis() as u64,
                    count: *count,
                };
                (name.clone(), check_in)
            })
            .collect()
    }
}

/// How long a peer has to answer its part of a status.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(1000);

impl Daemon {
    /// This node's own view: Raft role and indexes, threads, listener.
    pub(super) fn own_view(&self) -> Result<OwnView, ActionError> {
        let node = self.node()?;
        let m = node.metrics();
        let cfg = self.config();
        // Read together, under the state machine's lock: nodes at one index compare hashes.
        let (index, digest) = node.read_machine(|d| (d.last_applied.map(|l| l.index), d.digest()));
        let raft = RaftView {
            raft_id: node.id.to_string(),
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
            applied_state: AppliedState { index, digest },
            leader_id: m.current_leader.map(|id| id.to_string()),
            uptime_s: self.uptime().as_secs(),
            listener: format!("{}:{}", cfg.listener_addr, cfg.listener_port),
            listener_problem: self.addr_problem(),
            rpc_refused: self.rpc_counters.refused.load(Ordering::Relaxed),
            rpc_misdelivered: self.rpc_counters.misdelivered.load(Ordering::Relaxed),
            listener_metrics: self.listener.metrics().snapshot(),
            threads: self.threads.status(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            check_ins: self.check_ins.view(),
        };
        let view = NodeView {
            role: m.state.into(),
            address: self.advertised_addr(),
            raft,
        };
        Ok(OwnView {
            node: self.name(),
            view,
        })
    }

    /// Everyone in the Raft membership (learners joining) or in the replicated node list,
    /// with their address and membership, by name.
    fn everyone(
        membership: &openraft::Membership<raft::NodeId, raft::Member>,
        state: &raft::state::ClusterState,
    ) -> Vec<(String, String, Membership)> {
        let mut names: Vec<(String, String, Membership)> = membership
            .nodes()
            .map(|(id, mb)| {
                let kind = if membership.voter_ids().any(|v| v == *id) {
                    Membership::Voter
                } else {
                    Membership::Learner
                };
                (mb.name.clone(), mb.addr.clone(), kind)
            })
            .collect();
        for (n, rec) in &state.nodes {
            if !names.iter().any(|(x, _, _)| x == n) {
                names.push((n.clone(), rec.addr.clone(), Membership::None));
            }
        }
        names.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        names
    }

    /// The own views of the nodes at `addrs` (this node's own view for `me`), each within
    /// `timeout`; a node answering under another name is an error.
    async fn own_views(
        self: &Arc<Self>,
        addrs: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Vec<(String, String, Result<OwnView, String>)>, ActionError> {
        let mine = self.own_view()?;
        let me = mine.node.clone();
        let asks = addrs.into_iter().map(|(name, addr)| {
            let peers = self.peers.clone();
            let mine = (name == me).then(|| mine.clone());
            async move {
                let answer = match mine {
                    Some(v) => Ok(v),
                    None => match tokio::time::timeout(
                        timeout,
                        peers.call_typed(&addr, &OwnStatus::ASK, timeout),
                    )
                    .await
                    {
                        Err(_) => Err(format!("{addr}: request timed out")),
                        Ok(Err(e)) => Err(e.to_string()),
                        // Whoever listens at a member's recorded address is not that
                        // member until it says its name.
                        Ok(Ok(v)) if v.node != name => {
                            Err(format!("{addr} is answered by {}, not {name}", v.node))
                        }
                        Ok(Ok(v)) => {
                            peers.saw(&name);
                            Ok(v)
                        }
                    },
                };
                (name, addr, answer)
            }
        });
        Ok(futures_join_all(asks).await)
    }

    /// The full status: the cluster as this node sees it, each node's part from itself.
    pub async fn status(self: &Arc<Self>) -> Result<ClusterStatus, ActionError> {
        let node = self.node()?;
        let m = node.metrics();
        let membership = m.membership_config.membership().clone();
        let leader = m
            .current_leader
            .and_then(|id| membership.get_node(&id).map(|mb| mb.name.clone()));
        let state = node.read(|s| s.clone());
        let names = Self::everyone(&membership, &state);
        let addrs = names
            .iter()
            .map(|(n, a, _)| (n.clone(), a.clone()))
            .collect();
        let mut views = self.own_views(addrs, PEER_STATUS_TIMEOUT).await?;
        let mut nodes = BTreeMap::new();
        for (name, addr, membership) in names {
            let answer = views
                .iter()
                .position(|(n, _, _)| *n == name)
                .map(|i| views.swap_remove(i).2);
            let (role, address, raft, error) = match answer {
                Some(Ok(v)) => (v.view.role, v.view.address, Some(v.view.raft), None),
                Some(Err(e)) => (Role::Unknown, addr, None, Some(e)),
                None => (Role::Unknown, addr, None, Some("no answer".into())),
            };
            let entry = MemberView {
                role,
                address,
                reachable: raft.is_some(),
                error,
                membership,
                in_cluster_nodes: state.nodes.contains_key(&name),
                node_role: state.nodes.get(&name).map(|r| r.role).unwrap_or_default(),
                monitor: state.node_monitors.get(&name).cloned(),
                last_seen_ms: self.peers.last_seen(&name).map(|d| d.as_millis() as u64),
                raft,
            };
            nodes.insert(name, entry);
        }
        let services = state
            .services
            .iter()
            .map(|(k, v)| {
                let summary = ServiceSummary {
                    version: v.version,
                    global_expect: v.global_expect.clone(),
                    instances: v.instances.clone(),
                };
                (k.clone(), summary)
            })
            .collect();
        Ok(ClusterStatus {
            node: self.name(),
            cluster: ClusterView {
                name: state.name.clone(),
                leader,
                term: m.current_term,
                nodes: state.nodes.keys().cloned().collect(),
                params: state.params.clone(),
            },
            nodes,
            threads: self.threads.status(),
            services,
        })
    }
}

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
        self: &Arc<Self>,
        timeout: Duration,
    ) -> Result<Vec<options::NodeResult>, ActionError> {
        let state = self.node()?.read(|s| s.clone());
        let addrs = state
            .nodes
            .iter()
            .map(|(name, rec)| (name.clone(), rec.addr.clone()))
            .collect();
        let views = self.own_views(addrs, timeout).await?;
        let results = views.into_iter().map(|(name, _, answer)| {
            let mon = state.node_monitors.get(&name);
            let (view, mon) = match (answer, mon) {
                (Ok(v), Some(mon)) => (v.view, mon),
                (Ok(_), None) => return failed(&name, "it has no node monitor".into()),
                (Err(e), _) => return failed(&name, e),
            };
            let instances = state
                .services
                .iter()
                .filter_map(|(svc, s)| s.instances.get(&name).map(|i| (svc.clone(), i.status)))
                .collect();
            let summary = NodeSummary {
                state: mon.status,
                frozen: mon.frozen,
                role: view.role,
                instances,
            };
            options::NodeResult {
                node: name.clone(),
                success: true,
                error: None,
                data: Some(summary),
            }
        });
        Ok(results.collect())
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

/// Runs futures concurrently and collects their outputs in order.
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
