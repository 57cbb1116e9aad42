//! Request handling: every action of protocol v1, for the listener and the control socket.
//!
//! Both doors give the same `{action, options}` body and get the same `{status, data,
//! error}` answer. What differs is who asks: the local root user (control socket), a cluster
//! member, or a node that is not a member yet (which may only ask to `join`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raft::membership;
use raft::membership::MembershipError;
use raft::node_id;
use raft::state::GlobalExpect;
use raft::state::LocalExpect;
use raft::state::MonitorStatus;
use raft::state::NodeExpect;
use raft::state::NodeStatus;
use raft::Command;
use raft::ProposeError;
use serde_json::json;
use serde_json::Value;

use super::Daemon;
use super::StopKind;
use crate::wire::status as code;
use crate::wire::ClientError;
use crate::wire::ClientOptions;
use crate::wire::Keyring;
use crate::wire::Request;
use crate::wire::Response;

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The local control socket (root on this host).
    Control,
    /// Another node, authenticated by the listener.
    Peer {
        /// The sender's node name.
        sender: String,
        /// Where the frame came from.
        addr: SocketAddr,
        /// Whether the sender is a cluster member.
        member: bool,
    },
}

/// A failed action: a status code and a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// Response status (see [`crate::wire::status`]).
    pub status: i32,
    /// What went wrong, and what to do about it when we know.
    pub message: String,
}

impl ActionError {
    /// An error with `status` and `message`.
    pub fn new(status: i32, message: impl Into<String>) -> ActionError {
        ActionError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> ActionError {
        ActionError::new(code::BAD_REQUEST, message)
    }
}

impl From<ProposeError> for ActionError {
    fn from(e: ProposeError) -> ActionError {
        let status = match &e {
            ProposeError::NotLeader { .. } | ProposeError::Stopped(_) => code::UNAVAILABLE,
            ProposeError::MembershipBusy(_) => code::UNAVAILABLE,
            ProposeError::Rejected(_) | ProposeError::Membership(_) => code::ERROR,
        };
        ActionError::new(status, e.to_string())
    }
}

type Result<T> = std::result::Result<T, ActionError>;

fn opt_str<'a>(o: &'a Value, key: &str) -> Result<Option<&'a str>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ActionError::bad(format!(
            "option {key} must be a string, got {other}"
        ))),
    }
}

fn req_str<'a>(o: &'a Value, key: &str) -> Result<&'a str> {
    opt_str(o, key)?.ok_or_else(|| ActionError::bad(format!("missing option {key}")))
}

fn opt_bool(o: &Value, key: &str) -> Result<Option<bool>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ActionError::bad(format!(
            "option {key} must be true or false, got {other}"
        ))),
    }
}

fn opt_u64(o: &Value, key: &str) -> Result<Option<u64>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ActionError::bad(format!(
                "option {key} must be a non-negative integer, got {v}"
            ))
        }),
    }
}

/// Parses an optional option with `FromStr`, turning its error into a bad-request message.
fn opt_parse<T: std::str::FromStr>(o: &Value, key: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    opt_str(o, key)?
        .map(|s| s.parse::<T>().map_err(|e| ActionError::bad(e.to_string())))
        .transpose()
}

fn decode<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v).map_err(|e| ActionError::bad(format!("cannot decode {what}: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| ActionError::new(code::INTERNAL, e.to_string()))
}

impl Daemon {
    /// Serves one request.
    pub async fn handle(self: &Arc<Self>, origin: Origin, req: Request) -> Response {
        if let Origin::Peer {
            sender,
            member: true,
            ..
        } = &origin
        {
            self.peers.saw(sender);
        }
        match self.dispatch(&origin, req).await {
            Ok(data) => Response::ok(data),
            Err(e) => Response::err(e.status, e.message),
        }
    }

    async fn dispatch(self: &Arc<Self>, origin: &Origin, req: Request) -> Result<Value> {
        let o = &req.options;
        if let Origin::Peer { member: false, .. } = origin {
            if req.action != "join" {
                return Err(ActionError::new(
                    code::FORBIDDEN,
                    format!(
                        "{} is only served to cluster members; a new node may only join",
                        req.action
                    ),
                ));
            }
        }
        let from_peer = matches!(origin, Origin::Peer { .. });
        match req.action.as_str() {
            "daemon_status" => self.status(opt_bool(o, "local")?.unwrap_or(false)).await,
            "daemon_stop" | "daemon_shutdown" => {
                if opt_str(o, "thread_id")?.is_some() {
                    return self.thread_action(&req.action, o).await;
                }
                let kind = if req.action == "daemon_stop" {
                    StopKind::Stop
                } else {
                    StopKind::Shutdown
                };
                self.request_stop(kind);
                Ok(json!({ "stopping": self.name() }))
            }
            "daemon_start" => self.thread_action(&req.action, o).await,
            "daemon_inject_fault" if !from_peer => {
                let id = req_str(o, "thread_id")?;
                if id == "raft" && opt_bool(o, "fatal")?.unwrap_or(false) {
                    // The Raft core itself stops, as on an openraft fatal error.
                    self.node()?.shutdown().await;
                    return Ok(json!({ "thread_id": id, "raft_stopped": true }));
                }
                self.threads
                    .inject_fault(id)
                    .map_err(|e| ActionError::bad(e.to_string()))?;
                Ok(json!({ "thread_id": id, "killed": true }))
            }
            // `om node set|edit config` ask before writing a new listener address.
            "check_listener_addr" if !from_peer => {
                let addr = req_str(o, "addr")?;
                self.check_addr_free(addr)?;
                Ok(json!({ "addr": addr, "free": true }))
            }
            "blacklist_status" => Ok(self.listener.blacklist().status()),
            "blacklist_clear" => {
                let cleared = self.listener.blacklist().blacklisted_count();
                self.listener.blacklist().clear();
                Ok(json!({ "cleared": cleared }))
            }
            "join" => match origin {
                Origin::Control => self.join_cluster(o).await,
                Origin::Peer {
                    sender,
                    addr,
                    member,
                } => self.admit(sender, *addr, *member, o).await,
            },
            "leave" => match origin {
                Origin::Control => self.leave(o).await,
                Origin::Peer { .. } => {
                    let force = opt_bool(o, "force")?.unwrap_or(false);
                    self.evict(req_str(o, "node")?, force).await
                }
            },
            "set_node_monitor" => {
                let node = opt_str(o, "node")?.map_or_else(|| self.name(), str::to_string);
                let cmd = Command::SetNodeMonitor {
                    node,
                    status: opt_parse::<NodeStatus>(o, "status")?,
                    local_expect: opt_parse::<NodeExpect>(o, "local_expect")?,
                    frozen: opt_bool(o, "frozen")?,
                };
                encode(&self.propose(cmd).await?)
            }
            "get_node_monitor" => {
                let node = self.node()?;
                let monitors = node.read(|s| s.node_monitors.clone());
                match opt_str(o, "node")? {
                    None => encode(&monitors),
                    Some(n) => monitors.get(n).map(encode).unwrap_or_else(|| {
                        Err(ActionError::bad(format!(
                            "node {n:?} is not a cluster member"
                        )))
                    }),
                }
            }
            "set_service_monitor" => {
                let cmd = Command::SetServiceMonitor {
                    svc: req_str(o, "svcname")?.to_string(),
                    node: opt_str(o, "node")?.map(str::to_string),
                    status: opt_parse::<MonitorStatus>(o, "status")?,
                    local_expect: opt_parse::<LocalExpect>(o, "local_expect")?,
                    global_expect: opt_parse::<GlobalExpect>(o, "global_expect")?,
                    reset_retries: opt_bool(o, "reset_retries")?.unwrap_or(false),
                };
                encode(&self.propose(cmd).await?)
            }
            "get_service_monitor" => {
                let node = self.node()?;
                match opt_str(o, "svcname")? {
                    None => node.read(|s| {
                        encode(
                            &s.services
                                .iter()
                                .map(|(k, v)| (k.clone(), json!({"global_expect": v.global_expect, "instances": v.instances})))
                                .collect::<serde_json::Map<_, _>>(),
                        )
                    }),
                    Some(svc) => node.read(|s| match s.services.get(svc) {
                        Some(v) => encode(&json!({"global_expect": v.global_expect, "instances": v.instances})),
                        None => Err(ActionError::bad(format!("service {svc:?} does not exist"))),
                    }),
                }
            }
            "clear" => {
                let cmd = Command::Clear {
                    svc: req_str(o, "svcname")?.to_string(),
                    node: opt_str(o, "node")?.map(str::to_string),
                };
                encode(&self.propose(cmd).await?)
            }
            "get_service_config" => {
                let svc = req_str(o, "svcname")?;
                let node = self.node()?;
                node.read(|s| match s.services.get(svc) {
                    Some(v) => {
                        Ok(json!({ "svcname": svc, "config": v.config, "version": v.version }))
                    }
                    None => Err(ActionError::bad(format!("service {svc:?} does not exist"))),
                })
            }
            // Validates the config (section and key named in errors) before committing.
            "set_service_config" => crate::services::set_service_config(self, o).await,
            "service_action" | "service_logs" | "service_status" | "job_list" | "job_show"
            | "job_cancel" => crate::services::handle(self, &req.action, o).await,
            "events" => {
                let since = opt_u64(o, "since")?.unwrap_or(0);
                let wait = Duration::from_millis(opt_u64(o, "wait_ms")?.unwrap_or(0).min(60_000));
                let events = self.events.since(since, wait).await;
                let next = events.last().map_or(since, |e| e.seq);
                Ok(json!({ "events": events, "next": next, "last": self.events.last_seq() }))
            }
            "raft_append" | "raft_vote" | "raft_snapshot" if from_peer => {
                self.raft_rpc(&req.action, req.options).await
            }
            "raft_propose" if from_peer => {
                let msg: raft::rpc::Addressed<Command> = decode(req.options, "raft_propose")?;
                self.inbox()
                    .check(&msg)
                    .map_err(|e| ActionError::new(code::MISADDRESSED, e.to_string()))?;
                // Only the leader commits; a stale forward gets UNAVAILABLE and is retried.
                let committed = self.node()?.propose(msg.rpc).await?;
                encode(&committed)
            }
            a if a.starts_with("raft_") => Err(ActionError::new(
                code::FORBIDDEN,
                format!("{a} is served to cluster peers only"),
            )),
            other => Err(ActionError::new(
                code::UNKNOWN_ACTION,
                format!(
                    "unknown action {other:?}; known actions: {}",
                    crate::wire::ACTIONS.join(", ")
                ),
            )),
        }
    }

    /// Serves an addressed Raft RPC; a misaddressed one gets `MISADDRESSED`.
    async fn raft_rpc(&self, action: &str, options: Value) -> Result<Value> {
        let msg: raft::rpc::Addressed<raft::rpc::Rpc> = decode(options, action)?;
        if msg.rpc.action() != action {
            return Err(ActionError::bad(format!(
                "{action} carries a {} request",
                msg.rpc.action()
            )));
        }
        let node = self.node()?;
        let reply = self.inbox().serve(&node.raft, msg).await;
        if let Err(refusal) = &reply.answer {
            return Err(ActionError::new(code::MISADDRESSED, refusal.to_string()));
        }
        encode(&reply)
    }

    async fn thread_action(&self, action: &str, o: &Value) -> Result<Value> {
        let id = req_str(o, "thread_id")?;
        let r = if action == "daemon_start" {
            self.threads.start(id)
        } else {
            self.threads.stop(id).await
        };
        r.map_err(|e| ActionError::bad(e.to_string()))?;
        Ok(json!({ "thread_id": id, "state": self.threads.state(id) }))
    }

    /// Control-socket `join`: makes this node join the cluster `node` belongs to.
    async fn join_cluster(self: &Arc<Self>, o: &Value) -> Result<Value> {
        let secret = req_str(o, "secret")?;
        // Checked before anything is sent or wiped: the secret is written to node.conf last.
        crate::config::validate("cluster.secret", secret)
            .map_err(|e| ActionError::bad(e.to_string()))?;
        let given = req_str(o, "node")?;
        // Each failure below says what happened: the operator's next step differs for a
        // typo, a dead member, a wrong secret and a blacklisted node.
        let target = match given.rsplit_once(':') {
            Some((host, port)) => {
                if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                    return Err(ActionError::bad(format!(
                        "--node {given}: {port:?} is not a port (1..=65535): expected a member's \
                         name or host:port"
                    )));
                }
                if host.is_empty() {
                    return Err(ActionError::bad(format!(
                        "--node {given}: no host before the port: expected host:port"
                    )));
                }
                given.to_string()
            }
            None => format!("{given}:{}", crate::config::DEFAULT_PORT),
        };
        let me = self.name();
        let cfg = self.config();
        // Checked before resolving: a member's name may not resolve on this host. Only
        // with a leader: a node evicted while it was down still lists its old cluster.
        let members: Vec<raft::Member> = match self.node() {
            Ok(node) if node.metrics().current_leader.is_some() => node
                .metrics()
                .membership_config
                .nodes()
                .map(|(_, m)| m.clone())
                .collect(),
            _ => Vec::new(),
        };
        let already = |resolved: &[SocketAddr]| -> Result<()> {
            let is_target = |m: &raft::Member| {
                m.name == given
                    || m.addr == target
                    || m.addr
                        .parse::<SocketAddr>()
                        .is_ok_and(|a| resolved.contains(&a))
            };
            if members.len() > 1 && members.iter().any(|m| m.name != me && is_target(m)) {
                let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                return Err(ActionError::bad(format!(
                    "this node is already a member of cluster {} with {given} (members: {}); \
                     nothing to do (to move to another cluster, `om node daemon leave` first)",
                    cfg.cluster_name,
                    names.join(" ")
                )));
            }
            Ok(())
        };
        already(&[])?;
        let resolved: Vec<SocketAddr> =
            match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(&target))
                .await
            {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(e)) => {
                    return Err(ActionError::bad(format!(
                        "--node {given}: the name does not resolve ({e}); give a member's name \
                         that resolves on this host, or its host:port"
                    )))
                }
                Err(_) => {
                    return Err(ActionError::bad(format!(
                        "--node {given}: the name did not resolve within 5s; give the \
                         member's host:port"
                    )))
                }
            };
        already(&resolved)?;
        let bound = *self.bound.lock().unwrap();
        if bound.is_some_and(|b| resolved.contains(&b)) {
            return Err(ActionError::bad(format!(
                "--node {given} is this node's own listener: name a member of the cluster to join"
            )));
        }
        // A node outside the cluster does not know its name: it seals with an empty one.
        let keyring = Keyring::new("", secret.as_bytes());
        let connect = Duration::from_secs(5);
        let client = ClientOptions::new(&target, keyring, me.clone())
            .connect_timeout(connect)
            .connect()
            .await
            .map_err(|e| {
                let why = match &e {
                    ClientError::Connect { source, .. }
                        if source.kind() == std::io::ErrorKind::ConnectionRefused =>
                    {
                        format!(
                            "nothing listens at {target} (connection refused): is om running \
                             there, and is {} its listener.port?",
                            target.rsplit_once(':').map_or("", |(_, p)| p)
                        )
                    }
                    ClientError::Connect { source, .. } => {
                        format!("{target} is unreachable: {source}")
                    }
                    ClientError::Timeout { .. } => format!(
                        "{target} did not accept a connection within {connect:?}: the host is \
                         down or unreachable, or a firewall drops the packets"
                    ),
                    other => other.to_string(),
                };
                ActionError::new(
                    code::UNAVAILABLE,
                    format!("cannot join through {given}: {why}"),
                )
            })?;
        // The store this node joins with is a new Raft member: a new id, sent with the
        // request and recorded once the cluster accepted it.
        let id = super::new_raft_id();
        let addr = (!cfg.listener_addr.is_unspecified()).then(|| cfg.advertised_addr());
        let options =
            json!({ "node": me, "port": cfg.listener_port, "addr": addr, "id": id.to_string() });
        let answer = Duration::from_secs(10);
        let resp = client.request("join", options, answer).await.map_err(|e| {
            let blacklist = format!(
                "after {} frames it cannot decrypt, a member drops this node's frames \
                 unanswered until `om node daemon blacklist clear` is run on it",
                crate::listener::BLACKLIST_THRESHOLD
            );
            let why = match &e {
                ClientError::Closed { .. } => format!(
                    "{target} closed the connection without answering: a member does that to \
                     frames it cannot decrypt, so the secret is wrong: check the secret (and \
                     do not retry blindly: {blacklist})"
                ),
                ClientError::Timeout { .. } => format!(
                    "{target} accepted the connection but did not answer within {answer:?}: \
                     this node is probably blacklisted there ({blacklist}), or the member is \
                     overloaded"
                ),
                other => other.to_string(),
            };
            ActionError::new(
                code::UNAVAILABLE,
                format!("cannot join through {given}: {why}"),
            )
        })?;
        if !resp.is_ok() {
            return Err(ActionError::new(
                resp.status,
                format!(
                    "{target} refused the join: {}",
                    resp.error.unwrap_or_default()
                ),
            ));
        }
        let data = resp.data;
        let cluster = data.get("cluster").cloned().unwrap_or(Value::Null);
        let name = req_str(&cluster, "name")?.to_string();
        let nodes: Vec<String> = decode(
            cluster.get("nodes").cloned().unwrap_or(Value::Null),
            "cluster.nodes",
        )?;
        let listener = data.get("listener").cloned().unwrap_or(json!({}));
        tracing::info!(cluster = %name, via = %target, "join accepted; resetting local raft state");
        self.wipe_raft().await?;
        super::write_store_id(&self.paths, id).map_err(|e| {
            ActionError::new(code::ERROR, format!("cannot record the new raft id: {e}"))
        })?;
        let secret = secret.to_string();
        let cfg = self.edit_config(|doc| {
            doc.set("cluster", "name", &name);
            doc.set("cluster", "secret", &secret);
            doc.set("cluster", "nodes", &nodes.join(" "));
            if let Some(obj) = listener.as_object() {
                for (k, v) in obj {
                    if let Some(v) = v.as_str() {
                        doc.set("listener", k, v);
                    }
                }
            }
        })?;
        self.set_keyring(Keyring::new(
            cfg.cluster_name.clone(),
            cfg.secret.as_bytes(),
        ));
        self.start_raft()
            .await
            .map_err(|e| ActionError::new(code::ERROR, e.to_string()))?;
        self.refresh_members();
        Ok(json!({ "cluster": name, "nodes": nodes, "leader": data.get("leader") }))
    }

    /// Wire `join`: admits `node` into this cluster (on the leader; forwarded otherwise).
    async fn admit(
        self: &Arc<Self>,
        sender: &str,
        peer: SocketAddr,
        member: bool,
        o: &Value,
    ) -> Result<Value> {
        let joiner = req_str(o, "node")?.to_string();
        if !member && joiner != sender {
            return Err(ActionError::new(
                code::FORBIDDEN,
                format!("sender {sender:?} cannot ask to join as {joiner:?}"),
            ));
        }
        raft::apply::check_name("node", &joiner).map_err(|e| ActionError::bad(e.to_string()))?;
        let addr = match opt_str(o, "addr")? {
            Some(a) => a.to_string(),
            None => {
                let port =
                    opt_u64(o, "port")?.ok_or_else(|| ActionError::bad("missing option port"))?;
                format!("{}:{port}", peer.ip())
            }
        };
        // Raft ids travel as decimal strings (JSON tools round 64-bit integers); a joiner
        // that sends none uses the id derived from its name.
        let id = match opt_str(o, "id")? {
            Some(s) => s.parse().map_err(|_| {
                ActionError::bad(format!("option id must be a raft id in decimal, got {s:?}"))
            })?,
            None => node_id(&joiner),
        };
        let node = self.node()?;
        let already = membership::member_id(&node, &joiner).is_some();
        if already && member && sender == joiner {
            // A member asking to join again is telling us its listener moved.
            self.update_member_addr(&joiner, &addr).await?;
            return Ok(json!({ "node": joiner, "addr": addr }));
        }
        if let Some(leader) = self.leader_elsewhere(&node)? {
            let options = json!({ "node": joiner, "addr": addr, "id": id.to_string() });
            return self
                .ask_leader(&leader, "join", options, Duration::from_secs(30))
                .await;
        }
        let guard = self.membership_guard()?;
        let admission = membership::admit(&node, &joiner, id, &addr)
            .await
            .map_err(membership_error)?;
        let mut nodes: Vec<String> = node.read(|s| s.nodes.keys().cloned().collect());
        nodes.push(joiner.clone());
        let catch_up = self.config().join_timeout;
        tokio::spawn(async move {
            let _guard = guard;
            match admission
                .complete(&node, crate::wire::now_ms(), catch_up)
                .await
            {
                Ok(_) => tracing::info!(node = %joiner, "joined"),
                Err(e) => tracing::error!(node = %joiner, "join failed: {e}"),
            }
        });
        let cfg = self.config();
        Ok(json!({
            "cluster": { "name": cfg.cluster_name, "nodes": nodes },
            "listener": {
                "max_frame": cfg.max_frame.to_string(),
                "replay_window": format!("{}ms", cfg.replay_window.as_millis()),
            },
            "leader": self.name(),
        }))
    }

    /// Control-socket `leave`: without `node` (or naming this node), this node leaves its
    /// cluster and becomes a cluster of one; with another `node`, that member is evicted
    /// (the way to remove a dead node), through the leader.
    async fn leave(self: &Arc<Self>, o: &Value) -> Result<Value> {
        let force = opt_bool(o, "force")?.unwrap_or(false);
        match opt_str(o, "node")? {
            Some(n) if n != self.name() => self.evict(n, force).await,
            _ => self.leave_cluster(force).await,
        }
    }

    /// This node leaves its cluster; it becomes a cluster of one.
    async fn leave_cluster(self: &Arc<Self>, force: bool) -> Result<Value> {
        let me = self.name();
        if self.node()?.read(|s| s.nodes.len()) <= 1 {
            return Err(ActionError::bad(format!(
                "{me} is the only member of its cluster: nothing to leave"
            )));
        }
        self.evict(&me, force).await?;
        self.wipe_raft().await?;
        self.edit_config(|doc| doc.set("cluster", "nodes", &me))?;
        self.start_raft()
            .await
            .map_err(|e| ActionError::new(code::ERROR, e.to_string()))?;
        self.refresh_members();
        Ok(json!({ "left": me }))
    }

    /// Wire `leave` (and the local part of `om node daemon leave`): removes `node` from the
    /// Raft membership and from `cluster.nodes`, on the leader.
    async fn evict(self: &Arc<Self>, name: &str, force: bool) -> Result<Value> {
        let node = self.node()?;
        if let Some(leader) = self.leader_elsewhere(&node)? {
            let options = json!({ "node": name, "force": force });
            return self
                .ask_leader(&leader, "leave", options, Duration::from_secs(30))
                .await;
        }
        let _guard = self.membership_guard()?;
        membership::evict(&node, name, force)
            .await
            .map_err(membership_error)?;
        Ok(json!({ "left": name }))
    }
}

/// A membership refusal is the operator's to fix (bad request); Raft trouble keeps its
/// status (unavailable: retry).
pub(crate) fn membership_error(e: MembershipError) -> ActionError {
    match e {
        MembershipError::Raft(p) => ActionError::from(p),
        MembershipError::CatchUp { .. } => ActionError::new(code::UNAVAILABLE, e.to_string()),
        refused => ActionError::bad(refused.to_string()),
    }
}
