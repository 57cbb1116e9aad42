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
use raft::Command;

use super::Daemon;
use super::StopKind;
use crate::api;
use crate::api::action::Door;
use crate::api::options;
use crate::api::Action;
use crate::wire::ClientError;
use crate::wire::ClientOptions;
use crate::wire::Doc;
use crate::wire::Keyring;
use crate::wire::RefusalCode;
use crate::wire::Request;
use crate::wire::Response;
use crate::wire::Status;

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

impl Origin {
    /// The sender's name when it is a cluster member.
    fn member(&self) -> Option<&str> {
        match self {
            Origin::Peer {
                sender,
                member: true,
                ..
            } => Some(sender),
            _ => None,
        }
    }
}

/// A failed action: the API's error.
pub use crate::api::ApiError as ActionError;

type Result<T> = std::result::Result<T, ActionError>;

impl Daemon {
    /// Serves one request.
    pub async fn handle(self: &Arc<Self>, origin: Origin, req: Request) -> Response {
        if let Some(sender) = origin.member() {
            self.peers.saw(sender);
        }
        match self.dispatch(&origin, req).await {
            Ok(data) => Response::ok(data),
            Err(e) => Response::err(e.status, e.message),
        }
    }

    async fn dispatch(self: &Arc<Self>, origin: &Origin, req: Request) -> Result<Doc> {
        let action: Action = req.action.parse()?;
        match (origin, action.door()) {
            (Origin::Peer { member: false, .. }, _) if action != Action::Join => {
                return Err(ActionError::new(
                    Status::Forbidden,
                    format!("{action} is only served to cluster members; a new node may only join"),
                ))
            }
            (Origin::Control, Door::Peer) => {
                return Err(ActionError::new(
                    Status::Forbidden,
                    format!("{action} is served to cluster peers only"),
                ))
            }
            (Origin::Peer { .. }, Door::Control) => {
                return Err(ActionError::new(
                    Status::Forbidden,
                    format!("{action} is served on the local control socket only"),
                ))
            }
            _ => {}
        }
        let o = req.options;
        // The Raft RPCs go from MessagePack straight into openraft's types and back.
        if let Action::RaftAppend | Action::RaftVote | Action::RaftSnapshot = action {
            return self.raft_rpc(action, o).await;
        }
        self.serve_action(origin, action, o).await
    }

    async fn serve_action(
        self: &Arc<Self>,
        origin: &Origin,
        action: Action,
        o: Doc,
    ) -> Result<Doc> {
        let from_peer = matches!(origin, Origin::Peer { .. });
        match action {
            Action::DaemonStatus => {
                let opts: options::DaemonStatus = api::parse(action, o)?;
                if opts.local {
                    api::reply(&self.own_view()?)
                } else {
                    api::reply(&self.status().await?)
                }
            }
            Action::DaemonStop | Action::DaemonShutdown | Action::DaemonStart => {
                let opts: options::ThreadRef = api::parse(action, o)?;
                if let Some(id) = opts.thread_id {
                    return self.thread_action(action, &id).await;
                }
                let kind = match action {
                    Action::DaemonStop => StopKind::Stop,
                    Action::DaemonShutdown => StopKind::Shutdown,
                    _ => return Err(ActionError::bad("daemon_start needs option thread_id")),
                };
                self.request_stop(kind);
                api::reply(&options::Stopping {
                    stopping: self.name(),
                })
            }
            Action::DaemonInjectFault => {
                let opts: options::InjectFault = api::parse(action, o)?;
                if let Some(sender) = &opts.blacklist {
                    let addr = opts.addr.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
                    let bl = self.listener.blacklist();
                    for _ in 0..64 {
                        if bl.is_blacklisted(sender, addr) {
                            return api::reply(&options::FaultInjected::Blacklisted {
                                blacklisted: sender.clone(),
                                addr,
                            });
                        }
                        bl.record_invalid(sender, addr, true);
                    }
                    return Err(ActionError::new(
                        Status::Error,
                        format!("{sender} at {addr} could not be blacklisted (the list is full)"),
                    ));
                }
                if opts.thread_id == "raft" && opts.fatal {
                    // The Raft core itself stops, as on an openraft fatal error.
                    self.node()?.shutdown().await;
                    return api::reply(&options::FaultInjected::RaftStopped {
                        thread_id: opts.thread_id,
                        raft_stopped: true,
                    });
                }
                self.threads
                    .inject_fault(&opts.thread_id)
                    .map_err(|e| ActionError::bad(e.to_string()))?;
                api::reply(&options::FaultInjected::Killed {
                    thread_id: opts.thread_id,
                    killed: true,
                })
            }
            Action::ClusterSecretAdd => {
                let opts: options::SecretAdd = api::parse(action, o)?;
                api::reply(&self.secret_add(opts.secret).await?)
            }
            Action::ClusterSecretUse | Action::ClusterSecretRemove => {
                let opts: options::SecretStep = api::parse(action, o)?;
                api::reply(&self.secret_step(action, opts).await?)
            }
            Action::ClusterSecretList => {
                let opts: options::SecretList = api::parse(action, o)?;
                api::reply(&self.secret_list(opts.local).await?)
            }
            Action::ClusterSnapshotSave => {
                api::reply(&self.snapshot_save(api::parse(action, o)?).await?)
            }
            Action::ClusterSnapshotRestore => {
                api::reply(&self.snapshot_restore(api::parse(action, o)?).await?)
            }
            Action::ClusterSet => api::reply(&self.cluster_set(api::parse(action, o)?).await?),
            Action::GetConfiguration => {
                let _: options::GetConfiguration = api::parse(action, o)?;
                api::reply(&self.get_configuration()?)
            }
            Action::SetConfiguration => {
                api::reply(&self.set_configuration(api::parse(action, o)?).await?)
            }
            Action::AgentStandby => api::reply(&self.standby(api::parse(action, o)?).await?),
            Action::AgentWelcome => api::reply(&self.welcome(api::parse(action, o)?).await?),
            Action::ClusterApprove => api::reply(&self.approve_join(api::parse(action, o)?).await?),
            Action::JoinRequests => {
                let _: options::JoinRequests = api::parse(action, o)?;
                api::reply(&self.join_requests().await?)
            }
            // `om node set|edit config` ask before writing a new listener address.
            Action::CheckListenerAddr => {
                let opts: options::CheckListenerAddr = api::parse(action, o)?;
                self.check_addr_free(&opts.addr)?;
                api::reply(&options::AddrFree {
                    addr: opts.addr,
                    free: true,
                })
            }
            Action::BlacklistStatus => {
                let opts: options::BlacklistStatus = api::parse(action, o)?;
                let bl = self.listener.blacklist();
                if opts.detail {
                    api::reply(&bl.status())
                } else {
                    api::reply(&bl.summary())
                }
            }
            Action::BlacklistClear => {
                let cleared = self.listener.blacklist().blacklisted_count();
                self.listener.blacklist().clear();
                api::reply(&options::BlacklistCleared { cleared })
            }
            Action::Join => match origin {
                Origin::Control => self.join_cluster(api::parse(action, o)?).await,
                Origin::Peer {
                    sender,
                    addr,
                    member,
                } => {
                    self.admit(sender, *addr, *member, api::parse(action, o)?)
                        .await
                }
            },
            Action::Leave => {
                let opts: options::Leave = api::parse(action, o)?;
                let left = match (origin, opts.node) {
                    (Origin::Control, Some(n)) if n != self.name() => {
                        self.evict(&n, opts.force).await?
                    }
                    (Origin::Control, _) => self.leave_cluster(opts.force).await?,
                    (Origin::Peer { .. }, Some(n)) => self.evict(&n, opts.force).await?,
                    (Origin::Peer { .. }, None) => {
                        return Err(ActionError::bad("leave over the wire needs option node"))
                    }
                };
                api::reply(&left)
            }
            Action::SetNodeMonitor => {
                let opts: options::SetNodeMonitor = api::parse(action, o)?;
                let cmd = Command::SetNodeMonitor {
                    node: opts.node.unwrap_or_else(|| self.name()),
                    status: opts.status,
                    local_expect: opts.local_expect,
                    frozen: opts.frozen,
                };
                api::reply(&self.propose(cmd).await?)
            }
            Action::GetNodeMonitor => {
                let opts: options::NodeRef = api::parse(action, o)?;
                let monitors = self.node()?.read(|s| s.node_monitors.clone());
                match opts.node {
                    None => api::reply(&monitors),
                    Some(n) => monitors.get(&n).map(api::reply).unwrap_or_else(|| {
                        Err(ActionError::bad(format!(
                            "node {n:?} is not a cluster member"
                        )))
                    }),
                }
            }
            Action::SetServiceMonitor => {
                let opts: options::SetServiceMonitor = api::parse(action, o)?;
                // `status` and `local_expect` are an instance's: without `node`, the
                // receiver's (the seed's request names no node).
                let instance_field = opts.status.is_some() || opts.local_expect.is_some();
                let node = opts.node.or_else(|| instance_field.then(|| self.name()));
                let cmd = Command::SetServiceMonitor {
                    svc: opts.svcname,
                    node,
                    status: opts.status,
                    local_expect: opts.local_expect,
                    global_expect: opts.global_expect,
                    reset_retries: opts.reset_retries,
                };
                api::reply(&self.propose(cmd).await?)
            }
            Action::GetServiceMonitor => {
                let opts: options::ServiceFilter = api::parse(action, o)?;
                if opts.linearizable {
                    let forward = api::reply(&opts)?;
                    let svc = opts.svcname.as_deref();
                    return self
                        .read_linearizable(action, forward, from_peer, |s| {
                            crate::services::service_monitors(s, svc)
                        })
                        .await;
                }
                self.node()?
                    .read(|s| crate::services::service_monitors(s, opts.svcname.as_deref()))
            }
            Action::Clear => {
                let opts: options::Clear = api::parse(action, o)?;
                let cmd = Command::Clear {
                    svc: opts.svcname,
                    node: opts.node,
                };
                api::reply(&self.propose(cmd).await?)
            }
            Action::GetServiceConfig => {
                let opts: options::ServiceRef = api::parse(action, o)?;
                let svc = opts.svcname.clone();
                let read = |s: &raft::ClusterState| match s.services.get(&svc) {
                    Some(v) => api::reply(&options::ServiceConfig {
                        config: v.config.clone(),
                        version: v.version,
                        svcname: svc.clone(),
                    }),
                    None => Err(ActionError::bad(format!("service {svc:?} does not exist"))),
                };
                if opts.linearizable {
                    let forward = api::reply(&opts)?;
                    return self
                        .read_linearizable(action, forward, from_peer, read)
                        .await;
                }
                self.node()?.read(read)
            }
            // Validates the config (section and key named in errors) before committing.
            Action::SetServiceConfig => {
                crate::services::set_service_config(&self.host(), api::parse(action, o)?).await
            }
            Action::ServiceAction
            | Action::ServiceLogs
            | Action::ServiceStatus
            | Action::JobList
            | Action::JobShow
            | Action::JobCancel => crate::services::handle(&self.host(), action, o).await,
            Action::Hello => {
                let reply = self.hello(api::parse(action, o)?)?;
                if let Some(sender) = origin.member() {
                    self.check_ins.record(sender, reply.api_version);
                }
                api::reply(&reply)
            }
            Action::GetNodes => {
                let opts: options::GetNodes = api::parse(action, o)?;
                let t = Duration::from_millis(opts.timeout_ms.unwrap_or(1000).clamp(1, 30_000));
                api::reply(&self.get_nodes(t).await?)
            }
            Action::Events => {
                let opts: options::Events = api::parse(action, o)?;
                let epoch = self.events.epoch();
                let reset = self
                    .events
                    .missed(opts.epoch.as_deref(), opts.since.unwrap_or(0));
                let since = if reset { 0 } else { opts.since.unwrap_or(0) };
                let wait = Duration::from_millis(opts.wait_ms.unwrap_or(0).min(60_000));
                let filter = super::events::Filter {
                    kind: opts.kind,
                    node: opts.node,
                    service: opts.service,
                    prefix: opts.prefix,
                };
                let limit = opts.limit.unwrap_or(1000).clamp(1, 1000);
                let (events, next) = self.events.since(since, wait, &filter, limit).await;
                let last = self.events.last_seq();
                api::reply(&options::EventsReply {
                    events,
                    next,
                    last,
                    epoch: epoch.to_string(),
                    reset,
                })
            }
            Action::ControlPing => {
                let opts: options::ControlPing = api::parse(action, o)?;
                match opts.target.filter(|t| *t != self.name()) {
                    Some(t) => api::reply(&super::control::service::relay_ping(self, &t).await?),
                    None => api::reply(&self.pong()),
                }
            }
            Action::ControlCommand => {
                let opts: options::ControlLine = api::parse(action, o)?;
                super::control::service::relayed(self, &opts.line).await
            }
            Action::WorkSubmit
            | Action::WorkStatus
            | Action::WorkResults
            | Action::WorkCancel
            | Action::WorkRelease => super::work::serve(self, action, o).await,
            Action::RaftAppend | Action::RaftVote | Action::RaftSnapshot => {
                unreachable!("{action} is served by dispatch")
            }
            Action::RaftPropose => {
                let msg: raft::rpc::Addressed<Command> = api::parse(action, o)?;
                self.inbox()
                    .check(&msg)
                    .map_err(|e| ActionError::new(Status::Misaddressed, e.to_string()))?;
                debug_assert!(from_peer, "the door check admits peers only");
                // Only the leader commits; a stale forward gets UNAVAILABLE and is retried.
                api::reply(&self.node()?.propose(msg.rpc).await?)
            }
        }
    }

    /// The answer to `control_ping`: who answers, and the round trips it measured lately.
    pub fn pong(&self) -> options::Pong {
        let cfg = self.config();
        let recent = crate::clock::now_ms().saturating_sub(60_000);
        let connections = self
            .rtt
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, (_, at))| **n != cfg.name && *at >= recent)
            .map(|(n, (ms, _))| (n.clone(), *ms))
            .collect();
        options::Pong {
            node: cfg.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            worktypes: cfg.worktypes.keys().cloned().collect(),
            connections,
            relayed_ms: None,
        }
    }

    /// Serves an addressed Raft RPC; a misaddressed one gets `MISADDRESSED`.
    async fn raft_rpc(&self, action: Action, options: Doc) -> Result<Doc> {
        let msg: raft::rpc::Addressed<raft::rpc::Rpc> = api::parse(action, options)?;
        if msg.rpc.action() != action.as_str() {
            return Err(ActionError::bad(format!(
                "{action} carries a {} request",
                msg.rpc.action()
            )));
        }
        let node = self.node()?;
        let reply = self.inbox().serve(&node.raft, msg).await;
        if let Err(refusal) = &reply.answer {
            return Err(ActionError::new(Status::Misaddressed, refusal.to_string()));
        }
        Doc::pack(&reply).map_err(|e| ActionError::new(Status::Internal, e))
    }

    async fn thread_action(&self, action: Action, id: &str) -> Result<Doc> {
        let r = if action == Action::DaemonStart {
            self.threads.start(id)
        } else {
            self.threads.stop(id).await
        };
        r.map_err(|e| ActionError::bad(e.to_string()))?;
        api::reply(&options::ThreadChanged {
            thread_id: id.to_string(),
            state: self.threads.state(id),
        })
    }

    /// Control-socket `join`: makes this node join the cluster `node` belongs to.
    async fn join_cluster(self: &Arc<Self>, o: options::JoinCluster) -> Result<Doc> {
        let secret = o.secret.as_str();
        // Checked before anything is sent or wiped: the secret is written to node.conf last.
        crate::config::validate("cluster.secret", secret)
            .map_err(|e| ActionError::bad(e.to_string()))?;
        let given = o.node.as_str();
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
                    ClientError::Refused { refusal, .. } => match refusal.code {
                        Some(RefusalCode::Auth) => format!(
                            "{target} refused the handshake: the secret is wrong (not this cluster's): \
                             check the secret, and do not retry blindly: after {} refused \
                             handshakes a member refuses this node from this address until the \
                             entry expires (listener.blacklist_ttl, 10m by default) or `om node \
                             daemon blacklist clear` is run on it",
                            crate::listener::BLACKLIST_THRESHOLD
                        ),
                        Some(RefusalCode::Blacklisted) => format!(
                            "{target} has blacklisted this node: {}",
                            refusal.reason
                        ),
                        _ => format!("{target} refused the session: {}", refusal.reason),
                    },
                    other => other.to_string(),
                };
                ActionError::new(
                    Status::Unavailable,
                    format!("cannot join through {given}: {why}"),
                )
            })?;
        // The store this node joins with is a new Raft member: a new id, sent with the
        // request and recorded once the cluster accepted it.
        let id = super::new_raft_id();
        let addr = (!cfg.listener_addr.is_unspecified()).then(|| cfg.advertised_addr());
        let options = Doc::pack(&options::Admit {
            node: me.clone(),
            addr,
            port: Some(cfg.listener_port),
            id: Some(id.to_string()),
        })
        .map_err(|e| ActionError::new(Status::Internal, e))?;
        let answer = Duration::from_secs(10);
        let resp = client.request("join", options, answer).await.map_err(|e| {
            let why = match &e {
                ClientError::Timeout { .. } => format!(
                    "{target} opened a session but did not answer within {answer:?}: the \
                     member is overloaded or its Raft core is stuck; see its om.log"
                ),
                other => other.to_string(),
            };
            ActionError::new(
                Status::Unavailable,
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
        let admitted: options::Admitted = api::decode_reply(Action::Join, resp.data)?;
        let options::ClusterSection { name, nodes } = admitted.cluster;
        let listener = admitted.listener;
        tracing::info!(cluster = %name, via = %target, "join accepted; resetting local raft state");
        // Not while a restore or a leave replaces the store too.
        let _guard = self.membership_guard()?;
        self.wipe_raft().await?;
        super::write_store_id(&self.paths, id).map_err(|e| {
            ActionError::new(Status::Error, format!("cannot record the new raft id: {e}"))
        })?;
        let secret = secret.to_string();
        let cfg = self.try_edit_config(|doc| {
            doc.set("cluster", "name", &name);
            // The cluster joined has its own rotation plan; it arrives with the log.
            crate::config::place_secrets(doc, &secret, &[])?;
            doc.set("cluster", "nodes", &nodes.join(" "));
            for (k, v) in &listener {
                doc.set("listener", k, v);
            }
            Ok(())
        })?;
        // The members and the key first: the leader replicates to this node as soon as it
        // has answered, and frames from a sender the listener does not know yet would count
        // toward blacklisting the leader here while Raft starts.
        self.refresh_members();
        self.set_keyring(cfg.keyring());
        self.start_raft(None)
            .await
            .map_err(|e| ActionError::new(Status::Error, e.to_string()))?;
        self.refresh_members();
        api::reply(&options::Joined {
            cluster: name,
            nodes,
            leader: admitted.leader,
        })
    }

    /// Wire `join`: admits `node` into this cluster (on the leader; forwarded otherwise).
    async fn admit(
        self: &Arc<Self>,
        sender: &str,
        peer: SocketAddr,
        member: bool,
        o: options::Admit,
    ) -> Result<Doc> {
        let joiner = o.node;
        if !member && joiner != sender {
            return Err(ActionError::new(
                Status::Forbidden,
                format!("sender {sender:?} cannot ask to join as {joiner:?}"),
            ));
        }
        raft::apply::check_name("node", &joiner).map_err(|e| ActionError::bad(e.to_string()))?;
        let addr = match (o.addr, o.port) {
            (Some(a), _) => a,
            (None, Some(port)) => format!("{}:{port}", peer.ip()),
            (None, None) => return Err(ActionError::bad("join: missing option addr or port")),
        };
        // Raft ids travel as decimal strings (JSON tools round 64-bit integers); a joiner
        // that sends none uses the id derived from its name.
        let id = match &o.id {
            Some(s) => s.parse().map_err(|_| {
                ActionError::bad(format!("option id must be a raft id in decimal, got {s:?}"))
            })?,
            None => node_id(&joiner),
        };
        let node = self.node()?;
        let already = membership::member_id(&node, &joiner).is_some();
        if already && member && sender == joiner {
            // A member asking to join again is telling us its listener moved.
            membership::note_announcement(&node, &joiner, &addr);
            self.relay_member_addr(&joiner, &addr).await?;
            return api::reply(&options::AddrRecorded { node: joiner, addr });
        }
        if let Some(leader) = self.leader_elsewhere(&node)? {
            let fwd = options::Admit {
                node: joiner,
                addr: Some(addr),
                port: None,
                id: Some(id.to_string()),
            };
            return self
                .ask_leader(&leader, "join", api::reply(&fwd)?, Duration::from_secs(30))
                .await;
        }
        self.check_consent(&node, &joiner, &addr, peer)?;
        let guard = self.membership_guard()?;
        let admission = membership::admit(&node, &joiner, id, &addr)
            .await
            .map_err(membership_error)?;
        let mut nodes: Vec<String> = node.read(|s| s.nodes.keys().cloned().collect());
        nodes.push(joiner.clone());
        let catch_up = self.config().join_timeout;
        tokio::spawn(async move {
            let _guard = guard;
            let done = admission.complete(&node, crate::clock::now_ms(), catch_up);
            match done.await {
                Ok(_) => tracing::info!(node = %joiner, "joined"),
                Err(e) => tracing::error!(node = %joiner, "join failed: {e}"),
            }
        });
        let cfg = self.config();
        api::reply(&options::Admitted {
            cluster: options::ClusterSection {
                name: cfg.cluster_name.clone(),
                nodes,
            },
            listener: [("max_frame".to_string(), cfg.max_frame.to_string())].into(),
            leader: self.name(),
        })
    }

    /// This node leaves its cluster; it becomes a cluster of one.
    async fn leave_cluster(self: &Arc<Self>, force: bool) -> Result<options::Left> {
        let me = self.name();
        if self.node()?.read(|s| s.nodes.len()) <= 1 {
            return Err(ActionError::bad(format!(
                "{me} is the only member of its cluster: nothing to leave"
            )));
        }
        self.evict(&me, force).await?;
        // Not while a restore or a join replaces the store too.
        let _guard = self.membership_guard()?;
        self.wipe_raft().await?;
        self.edit_config(|doc| doc.set("cluster", "nodes", &me))?;
        self.start_raft(None)
            .await
            .map_err(|e| ActionError::new(Status::Error, e.to_string()))?;
        self.refresh_members();
        Ok(options::Left { left: me })
    }

    /// Wire `leave` (and the local part of `om node daemon leave`): removes `node` from the
    /// Raft membership and from `cluster.nodes`, on the leader.
    async fn evict(self: &Arc<Self>, name: &str, force: bool) -> Result<options::Left> {
        let node = self.node()?;
        if let Some(leader) = self.leader_elsewhere(&node)? {
            let fwd = options::Leave {
                node: Some(name.to_string()),
                force,
            };
            let data = self
                .ask_leader(&leader, "leave", api::reply(&fwd)?, Duration::from_secs(30))
                .await?;
            return api::decode_reply(Action::Leave, data);
        }
        let _guard = self.membership_guard()?;
        membership::evict(&node, name, force)
            .await
            .map_err(membership_error)?;
        Ok(options::Left {
            left: name.to_string(),
        })
    }
}

/// A membership refusal is the operator's to fix (bad request); Raft trouble keeps its
/// status (unavailable: retry).
pub(crate) fn membership_error(e: MembershipError) -> ActionError {
    match e {
        MembershipError::Raft(p) => ActionError::from(p),
        MembershipError::CatchUp { .. } => ActionError::new(Status::Unavailable, e.to_string()),
        refused => ActionError::bad(refused.to_string()),
    }
}
