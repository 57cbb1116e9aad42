//! The `om` daemon: one Raft member serving the listener and the control socket.
//!
//! It owns the node's lifecycle: reading node.conf, opening the Raft store, starting Raft
//! (bootstrapping a one-node cluster when alone), swapping its Raft state on join and leave,
//! and stopping cleanly. Request handling lives in [`actions`].

pub mod actions;
pub(crate) mod backup;
mod configuration;
mod consent;
pub mod control;
pub mod events;
mod host;
mod metrics;
pub mod peers;
pub mod raftnet;
pub mod rotation;
mod standby;
pub mod status;
pub mod systemd;
pub mod threads;
pub mod watcher;
pub mod work;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::sync::Weak;
use std::time::Duration;
use std::time::Instant;

use raft::node::Committed;
use raft::node_id;
use raft::Command;
use raft::Member;
use raft::Node;
use raft::NodeId;
use raft::ProposeError;
use tokio::sync::watch;

use crate::clock::now_ms;
use crate::config;
use crate::config::IniDoc;
use crate::config::NodeConfig;
use crate::config::Paths;
use crate::listener::BoxFuture;
use crate::listener::Handler;
use crate::listener::Listener;
use crate::listener::ListenerConfig;
use crate::listener::ListenerHandle;
use crate::listener::RequestCtx;
use crate::wire::Doc;
use crate::wire::Keyring;
use crate::wire::Request;
use crate::wire::Response;
use crate::wire::Status;
use actions::ActionError;
use actions::Origin;
use events::EventLog;
use peers::Peers;
use threads::Supervisor;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
// Each variant's `#[error]` text is its documentation, naming every field.
#[allow(missing_docs)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot open the raft store in {path}: {reason}")]
    Store { path: String, reason: String },
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("control socket {path}: {reason}")]
    Control { path: String, reason: String },
    #[error("another daemon is running on this root (pid {pid})")]
    AlreadyRunning { pid: u32 },
}

/// How the daemon was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// Leave local service instances running (planned restart).
    Stop,
    /// Stop local service instances first.
    Shutdown,
}

/// Raft timing for a LAN/loopback cluster: failover well under a second.
pub fn raft_config(cluster: &str) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster.to_string(),
        heartbeat_interval: 80,
        election_timeout_min: 250,
        election_timeout_max: 500,
        max_payload_entries: 512,
        // A chunk travels as MessagePack `bin` in one message: keep it well under max_frame.
        snapshot_max_chunk_size: 256 * 1024,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
        ..Default::default()
    }
}

/// The running daemon.
pub struct Daemon {
    /// Where this node's files are.
    pub paths: Paths,
    pub(crate) config: RwLock<(IniDoc, NodeConfig)>,
    /// Held by whoever writes node.conf or replaces the running config from it: a reload
    /// that read the file just before an edit would otherwise put the old file back.
    pub(crate) conf_writer: Mutex<()>,
    node: RwLock<Option<Node>>,
    node_gen: watch::Sender<u64>,
    /// Connections to the other nodes.
    pub peers: Arc<Peers>,
    /// The Raft id of the current store (`var/raft.id`); set by `start_raft`.
    raft_id: std::sync::atomic::AtomicU64,
    /// Raft RPCs refused as misaddressed, here and by the peers this node sent to.
    pub rpc_counters: Arc<raft::rpc::RpcCounters>,
    /// Node names the listener accepts frames from (besides `join`).
    pub members: Arc<RwLock<BTreeSet<String>>>,
    /// The daemon's threads.
    pub threads: Supervisor,
    /// Serializes membership changes driven by this node while it leads.
    membership_lock: Arc<tokio::sync::Mutex<()>>,
    /// Recent applied events.
    pub events: EventLog,
    /// The event subscription `start_raft` took before Raft started, for the pump.
    pending_events: Mutex<Option<tokio::sync::broadcast::Receiver<raft::EventRecord>>>,
    /// The members' `hello` check-ins, by sender (see [`status::CheckIns`]).
    check_ins: status::CheckIns,
    stop: watch::Sender<Option<StopKind>>,
    /// The listener's state (blacklist, counters, keyring), kept across rebinds.
    pub listener: Listener,
    /// Bumped to make the listener thread rebind (address, port or limits changed).
    rebind: watch::Sender<u64>,
    /// Where the listener is bound now, if it is.
    pub bound: Mutex<Option<std::net::SocketAddr>>,
    /// Why this node's listener address is not what node.conf says, or is not recorded by
    /// the cluster yet (shown in status); `None` when all is well.
    addr_problem: Mutex<Option<String>>,
    /// Woken by an empty packet or `om node dequeue actions`: run the queued actions now.
    pub dequeue: tokio::sync::Notify,
    /// Held while a `set_configuration` deployment runs on this node (the leader).
    deploying: tokio::sync::Mutex<()>,
    /// Joins this node refused, as leader, for want of an approval.
    join_requests: consent::JoinRequests,
    /// The services' state on this node: logs, jobs, instance runtimes, monitor flags.
    pub services: Arc<crate::services::Local>,
    /// This node's work units (`work submit` and the `work_*` actions).
    pub work: Arc<crate::work::Work>,
    /// The last round trip measured to each peer (ms) and when (ms since the epoch), by
    /// `ping` and `status` on the control socket.
    pub rtt: Mutex<std::collections::BTreeMap<String, (f64, u64)>>,
    /// Names this process's proposals, so that a retry is applied at most once.
    proposal_ids: ProposalIds,
    started: Instant,
}

/// Draws [`raft::command::ProposalId`]s (a random session per process, then a counter)
/// and knows which proposals still wait for an answer: the oldest is the floor each
/// proposal carries, below which the state machine forgets replies.
#[derive(Debug)]
struct ProposalIds {
    session: u64,
    /// The next seq, and the seqs of the proposals waiting.
    state: Mutex<(u64, BTreeSet<u64>)>,
}

impl ProposalIds {
    fn new() -> ProposalIds {
        ProposalIds {
            session: rand::random(),
            state: Mutex::new((0, BTreeSet::new())),
        }
    }

    /// A new proposal's id and floor; it waits until the guard drops.
    fn start(&self) -> (raft::command::ProposalId, u64, Waiting<'_>) {
        let mut st = self.state.lock().unwrap();
        let seq = st.0;
        st.0 += 1;
        st.1.insert(seq);
        let floor = *st.1.first().expect("this one waits");
        let id = raft::command::ProposalId {
            session: self.session,
            seq,
        };
        (id, floor, Waiting { ids: self, seq })
    }
}

/// A proposal waiting for its answer; dropping it (answered, given up, or the caller's
/// future dropped) lets the floor pass it.
struct Waiting<'a> {
    ids: &'a ProposalIds,
    seq: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.ids.state.lock().unwrap().1.remove(&self.seq);
    }
}

impl Daemon {
    /// Loads node.conf (creating a one-node cluster identity if it has none) and opens Raft.
    pub async fn open(paths: Paths) -> Result<Arc<Daemon>, DaemonError> {
        let (mut doc, mut cfg) = NodeConfig::load(&paths.node_conf())?;
        for (section, key, _) in doc.entries() {
            let key = format!("{section}.{key}");
            if let Some(why) = config::retired(&key) {
                tracing::warn!("node.conf: {key} is ignored: {why}");
            }
        }
        if cfg.has_cluster() {
            if cfg.secret_file.is_none() {
                config::check_secret_mode(&paths.node_conf())?;
            }
        } else {
            // A node that was never in a cluster starts as a cluster of its own, the way a
            // fresh OpenSVC node does; `join` replaces this identity.
            doc.set("node", "name", &cfg.name);
            if cfg.cluster_name.is_empty() {
                doc.set("cluster", "name", "default");
            }
            config::place_secrets(&mut doc, &random_secret(), &[])?;
            doc.set("cluster", "nodes", &cfg.name);
            config::save(&paths.node_conf(), &doc)?;
            cfg = NodeConfig::from_doc(&doc)?;
        }
        let keyring = cfg.keyring();
        let members: BTreeSet<String> = cfg
            .nodes
            .iter()
            .cloned()
            .chain([cfg.name.clone()])
            .collect();
        let members = Arc::new(RwLock::new(members));
        let daemon = Arc::new_cyclic(|me: &Weak<Daemon>| Daemon {
            listener: Listener::new(
                cfg.name.clone(),
                keyring.clone(),
                members.clone(),
                Arc::new(ListenerDoor(me.clone())),
            ),
            rebind: watch::channel(0).0,
            bound: Mutex::new(None),
            addr_problem: Mutex::new(None),
            dequeue: tokio::sync::Notify::new(),
            work: crate::work::Work::open(paths.var_dir(), cfg.name.clone()),
            services: Arc::new(crate::services::Local::new(
                paths.var_dir(),
                cfg.name.clone(),
            )),
            rtt: Mutex::new(std::collections::BTreeMap::new()),
            peers: Arc::new(Peers::new(cfg.name.clone(), keyring)),
            rpc_counters: Arc::default(),
            raft_id: std::sync::atomic::AtomicU64::new(0),
            members,
            paths,
            config: RwLock::new((doc, cfg)),
            conf_writer: Mutex::new(()),
            join_requests: Default::default(),
            deploying: tokio::sync::Mutex::new(()),
            node: RwLock::new(None),
            node_gen: watch::channel(0).0,
            threads: Supervisor::new(),
            membership_lock: Arc::new(tokio::sync::Mutex::new(())),
            events: EventLog::default(),
            pending_events: Mutex::new(None),
            check_ins: Default::default(),
            stop: watch::channel(None).0,
            proposal_ids: ProposalIds::new(),
            started: Instant::now(),
        });
        daemon.start_raft(None).await?;
        Ok(daemon)
    }

    /// This daemon as the services and the monitor see it.
    pub fn host(self: &Arc<Self>) -> Arc<dyn crate::services::Host> {
        self.clone()
    }

    /// The current config.
    pub fn config(&self) -> NodeConfig {
        self.config.read().unwrap().1.clone()
    }

    /// This node's name.
    pub fn name(&self) -> String {
        self.config.read().unwrap().1.name.clone()
    }

    /// How long the daemon has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The address peers reach this node's listener at.
    pub fn advertised_addr(&self) -> String {
        self.config().advertised_addr()
    }

    /// Refuses `addr` as this node's listener address when another member holds it:
    /// Raft RPCs meant for one would reach the other.
    pub fn check_addr_free(&self, addr: &str) -> Result<(), ActionError> {
        let node = self.node()?;
        match raft::membership::addr_holder(&node, addr, &self.name()) {
            Some(holder) => Err(ActionError::new(
                Status::BadRequest,
                format!(
                    "listener address {addr} is member {holder}'s; two members cannot share \
                     one address: pick another listener.port (or listener.addr)"
                ),
            )),
            None => Ok(()),
        }
    }

    /// The Raft node, if Raft is running.
    pub fn node(&self) -> Result<Node, ActionError> {
        self.node.read().unwrap().clone().ok_or_else(|| {
            ActionError::new(Status::Unavailable, "raft is not running on this node")
        })
    }

    /// The receiving side of this node's Raft RPCs: refuses what is not addressed to it.
    pub fn inbox(&self) -> raft::rpc::Inbox {
        let cfg = self.config();
        raft::rpc::Inbox::new(cfg.cluster_name, self.raft_id(), self.rpc_counters.clone())
    }

    /// The Raft id of this node's current store incarnation.
    pub fn raft_id(&self) -> NodeId {
        self.raft_id.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens the store and starts Raft; bootstraps a one-node cluster if this node is alone.
    /// `seed`: the state a new store starts from (a restored backup, `raft::backup`).
    async fn start_raft(&self, seed: Option<raft::MachineData>) -> Result<(), DaemonError> {
        let cfg = self.config();
        let dir = self.paths.raft_dir();
        let store_err = |reason: String| DaemonError::Store {
            path: dir.display().to_string(),
            reason,
        };
        // Before the store is created or migrated: a sled store without an id file is an old
        // one.
        let id = store_id(&self.paths, &cfg.name).map_err(|e| store_err(e.to_string()))?;
        self.raft_id.store(id, std::sync::atomic::Ordering::Relaxed);
        // The store (FsDisk) creates or narrows var/raft to 0700: the log and snapshots
        // carry the rotated cluster secrets.
        let backend = open_store(&dir)
            .await
            .map_err(|e| store_err(e.to_string()))?;
        if let Some(data) = seed {
            storage::seed(&backend, &data)
                .await
                .map_err(|e| store_err(e.to_string()))?;
        }
        let (mut log, sm, machine) =
            storage::open(backend).map_err(|e| store_err(e.to_string()))?;
        // Before Raft starts: it applies the committed log again as it starts, and the
        // pump must see every event after the history.
        *self.pending_events.lock().unwrap() = Some(machine.subscribe());
        self.rebuild_events(id, &mut log, &machine)
            .await
            .map_err(|e| store_err(format!("cannot read the log for its events: {e}")))?;
        let book = Arc::new(raft::rpc::AddressBook::default());
        let net = raftnet::raft_net(
            self.peers.clone(),
            &cfg.cluster_name,
            id,
            self.rpc_counters.clone(),
        )
        .with_address_book(book.clone());
        let node = Node::start(id, raft_config(&cfg.cluster_name), net, log, sm, machine)
            .await
            .map_err(|e| DaemonError::Raft(e.to_string()))?
            .with_address_book(book);
        let alone = cfg.nodes.iter().all(|n| *n == cfg.name);
        if !node.is_initialized().await && alone {
            tracing::info!(cluster = %cfg.cluster_name, "initializing a one-node cluster");
            node.initialize(Member::new(&cfg.name, self.advertised_addr()))
                .await
                .map_err(|e| DaemonError::Raft(e.to_string()))?;
        }
        *self.node.write().unwrap() = Some(node.clone());
        self.node_gen.send_modify(|g| *g += 1);
        if alone {
            self.bootstrap_state(&node, &cfg).await?;
        }
        Ok(())
    }

    /// Numbers the events of the committed entries after the store's snapshot again, as
    /// the run before this one did (docs/PROTOCOL.md, `events`).
    async fn rebuild_events(
        &self,
        id: NodeId,
        log: &mut storage::LogStore<storage::DiskBackend>,
        machine: &raft::SharedMachine,
    ) -> Result<(), openraft::StorageError<NodeId>> {
        use openraft::storage::RaftLogStorage;
        use openraft::RaftLogReader;
        let base = machine.read(|d| d.clone());
        let from = base.last_applied.map_or(0, |l| l.index);
        let committed = log.read_committed().await?.map_or(0, |l| l.index);
        let entries = match committed > from {
            true => log.try_get_log_entries(from + 1..=committed).await?,
            false => Vec::new(),
        };
        let history = events::history(base, &entries);
        self.events.reopen(&id.to_string(), from, history);
        Ok(())
    }

    /// Commits the `Bootstrap` command of a new one-node cluster, once it leads.
    async fn bootstrap_state(&self, node: &Node, cfg: &NodeConfig) -> Result<(), DaemonError> {
        if node.read(|s| s.is_bootstrapped()) {
            return Ok(());
        }
        let _ = node
            .raft
            .wait(Some(Duration::from_secs(10)))
            .current_leader(node.id, "one-node cluster elects itself")
            .await;
        let cmd = Command::Bootstrap {
            cluster: cfg.cluster_name.clone(),
            node: cfg.name.clone(),
            addr: self.advertised_addr(),
            at_ms: now_ms(),
            id: Some(node.id),
        };
        match node.propose(cmd).await {
            Ok(_) | Err(ProposeError::Rejected(raft::CommandError::AlreadyBootstrapped { .. })) => {
                Ok(())
            }
            Err(e) => Err(DaemonError::Raft(format!("bootstrap: {e}"))),
        }
    }

    /// Stops Raft and deletes its store (the node is moving to another cluster).
    async fn wipe_raft(&self) -> Result<(), ActionError> {
        let old = self.node.write().unwrap().take();
        if let Some(node) = old {
            node.shutdown().await;
        }
        let dir = self.paths.raft_dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                ActionError::new(
                    Status::Error,
                    format!("cannot remove {}: {e}", dir.display()),
                )
            })?;
        }
        let id_file = self.paths.raft_id_file();
        match std::fs::remove_file(&id_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ActionError::new(
                Status::Error,
                format!("cannot remove {}: {e}", id_file.display()),
            )),
            _ => Ok(()),
        }
    }

    /// Rewrites node.conf with `edit` applied, and makes it the running config.
    pub fn edit_config(&self, edit: impl FnOnce(&mut IniDoc)) -> Result<NodeConfig, ActionError> {
        self.try_edit_config(|doc| {
            edit(doc);
            Ok(())
        })
    }

    /// [`Daemon::edit_config`] with an edit that can fail (one that writes the secret file).
    pub fn try_edit_config(
        &self,
        edit: impl FnOnce(&mut IniDoc) -> Result<(), config::ConfigError>,
    ) -> Result<NodeConfig, ActionError> {
        let _writer = self.conf_writer.lock().unwrap();
        let path = self.paths.node_conf();
        let _file =
            config::lock_conf(&path).map_err(|e| ActionError::new(Status::Error, e.to_string()))?;
        let mut guard = self.config.write().unwrap();
        // From the file, not the running config: an `om node set` the watcher has not
        // loaded yet is kept. A file that no longer parses (the watcher refused it) is
        // replaced by the running config with the edit.
        let mut doc = match NodeConfig::load(&path) {
            Ok((doc, _)) => doc,
            Err(e) => {
                tracing::warn!("node.conf does not load ({e}); editing the running config");
                guard.0.clone()
            }
        };
        edit(&mut doc).map_err(|e| ActionError::new(Status::Error, e.to_string()))?;
        let cfg = NodeConfig::from_doc(&doc)
            .map_err(|e| ActionError::new(Status::BadRequest, e.to_string()))?;
        config::save(&self.paths.node_conf(), &doc)
            .map_err(|e| ActionError::new(Status::Error, e.to_string()))?;
        *guard = (doc, cfg.clone());
        Ok(cfg)
    }

    /// Proposes `cmd`, forwarding it to the leader when this node does not lead, and
    /// retrying while an election runs (up to 10 s); applied at most once however many
    /// tries reach a leader ([`Command::Once`]).
    pub async fn propose(&self, cmd: Command) -> Result<Committed, ActionError> {
        // Every try below carries the same id: "not leader" may follow an append that a
        // later leader commits, and the retry must not apply the command a second time.
        let (id, floor, _waiting) = self.proposal_ids.start();
        let cmd = cmd.once(id, floor);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let node = self.node()?;
            let err = match node.propose(cmd.clone()).await {
                Ok(c) => return Ok(c),
                Err(ProposeError::NotLeader {
                    leader: Some(leader),
                    leader_id: Some(leader_id),
                }) => {
                    let msg = raft::rpc::Addressed {
                        cluster: self.config().cluster_name,
                        from: node.id,
                        to: leader_id,
                        rpc: cmd.clone(),
                    };
                    let options = crate::api::reply(&msg)?;
                    match self
                        .ask_leader(&leader, "raft_propose", options, Duration::from_secs(10))
                        .await
                    {
                        Ok(data) => {
                            return data.decode().map_err(|e| {
                                ActionError::new(
                                    Status::Error,
                                    format!("bad answer from {leader}: {e}"),
                                )
                            })
                        }
                        // The address book points elsewhere: retry, it may be fixed by then.
                        Err(e) if e.is(Status::Misaddressed) => ActionError::new(
                            Status::Unavailable,
                            format!("leader {}: {}", leader.name, e.message),
                        ),
                        Err(e) => e,
                    }
                }
                Err(e) => ActionError::from(e),
            };
            if !err.is(Status::Unavailable) || Instant::now() >= deadline {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Serves a read on the leader after it confirmed its leadership with a majority and
    /// applied up to its commit index (openraft's `ensure_linearizable`, Raft's ReadIndex);
    /// a follower forwards `action` with `options` to the leader, whose answer it returns.
    /// A forwarded request (`forwarded`) is never forwarded again. Retries while an election
    /// runs (up to 10 s), like [`Daemon::propose`].
    pub async fn read_linearizable(
        &self,
        action: crate::api::Action,
        options: Doc,
        forwarded: bool,
        read: impl Fn(&raft::ClusterState) -> Result<Doc, ActionError>,
    ) -> Result<Doc, ActionError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let node = self.node()?;
            let left = deadline.saturating_duration_since(Instant::now());
            let confirmed = tokio::time::timeout(left, node.read_linearizable(|_| ()))
                .await
                .unwrap_or_else(|_| {
                    Err(ProposeError::Stopped(
                        "leadership not confirmed in time".into(),
                    ))
                });
            let err = match confirmed {
                Ok(()) => return node.read(&read),
                Err(ProposeError::NotLeader {
                    leader: Some(leader),
                    ..
                }) if !forwarded => {
                    let t = left.max(Duration::from_millis(100));
                    match self
                        .ask_leader(&leader, action.as_str(), options.clone(), t)
                        .await
                    {
                        Err(e) if e.is(Status::Misaddressed) => {
                            ActionError::new(Status::Unavailable, e.message)
                        }
                        answer => return answer,
                    }
                }
                Err(e) => ActionError::from(e),
            };
            if !err.is(Status::Unavailable) || Instant::now() >= deadline {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the daemon to stop; `run` returns once it has.
    pub fn request_stop(&self, kind: StopKind) {
        self.stop.send_replace(Some(kind));
    }

    /// Recomputes the listener's member set: node.conf, the replicated nodes, Raft membership.
    fn refresh_members(&self) {
        let cfg = self.config();
        let mut set: BTreeSet<String> = cfg
            .nodes
            .iter()
            .cloned()
            .chain([cfg.name.clone()])
            .collect();
        if let Ok(node) = self.node() {
            node.read(|s| set.extend(s.nodes.keys().cloned()));
            let m = node.metrics();
            set.extend(m.membership_config.nodes().map(|(_, mb)| mb.name.clone()));
        }
        let mut members = self.members.write().unwrap();
        // A sender judged while it was not a member had its frames opened with the join
        // key; those failures say nothing about it now that it is one.
        for joined in set.difference(&members) {
            self.listener.blacklist().forget_sender(joined);
        }
        *members = set;
    }

    /// Keeps node.conf's `cluster.nodes` equal to the replicated member list.
    fn sync_conf_nodes(&self) {
        let Ok(node) = self.node() else { return };
        if !node.read(|s| s.is_bootstrapped()) {
            return;
        }
        let nodes = node.read(|s| s.nodes.keys().cloned().collect::<Vec<_>>());
        if nodes != self.config().nodes {
            let value = nodes.join(" ");
            if let Err(e) = self.edit_config(|doc| doc.set("cluster", "nodes", &value)) {
                tracing::warn!("cannot update cluster.nodes in node.conf: {e}");
            }
        }
    }

    /// Follows applied events: the event log, the member set, node.conf's node list.
    async fn pump_events(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> Result<(), String> {
        let mut generation = self.node_gen.subscribe();
        // A Raft core that stopped on a fatal error never comes back by itself (openraft 0.9
        // turns some replication races into fatal errors): this thread reports it as its
        // own failure, and its restart starts Raft again on the same store.
        if let Ok(node) = self.node() {
            if let Err(fatal) = node.metrics().running_state {
                tracing::error!("raft had stopped ({fatal}); starting it again on its store");
                self.restart_raft().await.map_err(|e| e.to_string())?;
            }
        }
        loop {
            self.refresh_members();
            self.sync_conf_nodes();
            self.sync_secrets();
            let Ok(node) = self.node() else {
                tokio::select! {
                    _ = generation.changed() => continue,
                    _ = stop.changed() => return Ok(()),
                }
            };
            let stashed = self.pending_events.lock().unwrap().take();
            let mut rx = stashed.unwrap_or_else(|| node.subscribe());
            let mut lagged = false;
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Ok(rec) => {
                            if std::mem::take(&mut lagged) {
                                self.events.lost_before(&rec);
                            }
                            let touches = |of: fn(&raft::Subject) -> bool| match &rec.event {
                                raft::Event::Change { subject, .. } => of(subject),
                                raft::Event::Log { .. } => true,
                                raft::Event::Error { .. } => false,
                            };
                            let touches_members =
                                touches(|s| matches!(s, raft::Subject::Node { .. }));
                            let touches_secrets = touches(|s| matches!(s, raft::Subject::Secrets));
                            self.events.push(rec);
                            if touches_members {
                                self.refresh_members();
                                self.sync_conf_nodes();
                            }
                            if touches_secrets {
                                self.sync_secrets();
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!("event pump lagged by {n} events");
                            lagged = true;
                            self.refresh_members();
                            self.sync_conf_nodes();
                            self.sync_secrets();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    _ = generation.changed() => break,
                    _ = stop.changed() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if let Err(fatal) = node.metrics().running_state {
                            return Err(format!("raft stopped: {fatal}"));
                        }
                    }
                }
            }
        }
    }

    /// Stops Raft (if it still runs) and starts it again on the same store.
    /// The stopped node stays in place until the new one replaces it, so status requests
    /// keep answering (role `shutdown`) meanwhile.
    async fn restart_raft(&self) -> Result<(), DaemonError> {
        if let Ok(node) = self.node() {
            node.shutdown().await;
        }
        self.start_raft(None).await
    }

    /// Runs until stopped: the listener, the control socket and the background threads.
    pub async fn run(self: Arc<Self>) -> Result<(), DaemonError> {
        control::check_not_running(&self.paths)?;
        std::fs::create_dir_all(self.paths.run_dir()).map_err(|e| DaemonError::Control {
            path: self.paths.run_dir().display().to_string(),
            reason: e.to_string(),
        })?;
        raise_fd_limit();

        // Bind once here so that a port in use is a start-up error, not a restart loop.
        let first = self.bind_listener().await?;
        let d = self.clone();
        let first = Arc::new(Mutex::new(Some(first)));
        self.threads.spawn(
            "listener",
            Arc::new(move |stop| {
                let d = d.clone();
                let first = first.lock().unwrap().take();
                Box::pin(async move { d.listener_thread(first, stop).await })
            }),
        );
        let d = self.clone();
        self.threads.spawn(
            "watcher",
            Arc::new(move |stop| Box::pin(watcher::run(d.clone(), stop))),
        );
        let control = control::ControlServer::bind(&self.paths.control_socket()).map_err(|e| {
            DaemonError::Control {
                path: self.paths.control_socket().display().to_string(),
                reason: e.to_string(),
            }
        })?;
        let d = self.clone();
        self.threads.spawn(
            "control",
            Arc::new(move |stop| {
                let d = d.clone();
                let control = control.clone();
                Box::pin(async move { control.serve(d, stop).await })
            }),
        );
        let d = self.clone();
        self.threads.spawn(
            "raft",
            Arc::new(move |stop| Box::pin(d.clone().pump_events(stop))),
        );
        let _metrics =
            match self.config().metrics_addr {
                Some(addr) => Some(metrics::MetricsServer::start(&self, addr).map_err(
                    |reason| DaemonError::Listen {
                        addr: addr.to_string(),
                        reason,
                    },
                )?),
                None => None,
            };
        // Only now: an operator reading the log must not see "running" before a failed bind.
        tracing::info!(
            node = %self.name(),
            root = %self.paths.root.display(),
            listener = ?*self.bound.lock().unwrap(),
            "daemon running"
        );
        systemd::ready();
        let host = self.host();
        self.threads.spawn(
            "monitor",
            Arc::new(move |stop| Box::pin(crate::monitor::monitor_loop(host.clone(), stop))),
        );
        let host = self.host();
        self.threads.spawn(
            "scheduler",
            Arc::new(move |stop| Box::pin(crate::monitor::scheduler_loop(host.clone(), stop))),
        );
        let d = self.clone();
        tokio::spawn(async move { d.leave_maintenance().await });
        tokio::spawn(self.clone().keep_role_recorded());

        let mut stop = self.stop.subscribe();
        let kind = loop {
            tokio::select! {
                _ = stop.changed() => {
                    if let Some(k) = *stop.borrow() { break k; }
                }
                _ = tokio::signal::ctrl_c() => break StopKind::Stop,
                _ = sigterm() => break StopKind::Stop,
            }
        };
        tracing::info!(?kind, "daemon stopping");
        systemd::stopping();
        if kind == StopKind::Shutdown {
            crate::monitor::stop_local_instances(&self.host()).await;
        }
        self.advertise_maintenance().await;
        for id in threads::THREAD_IDS.iter().rev() {
            let _ = self.threads.stop(id).await;
        }
        if let Ok(node) = self.node() {
            node.shutdown().await;
        }
        let _ = std::fs::remove_file(self.paths.control_socket());
        let _ = std::fs::remove_file(self.paths.pid_file());
        Ok(())
    }

    /// Binds the listener on the configured address and limits.
    async fn bind_listener(&self) -> Result<ListenerHandle, DaemonError> {
        let lc = listener_config(&self.config());
        let handle = self
            .listener
            .start(&lc)
            .await
            .map_err(|e| DaemonError::Listen {
                addr: format!("{}:{}", lc.addr, lc.port),
                reason: e.to_string(),
            })?;
        *self.bound.lock().unwrap() = Some(handle.local_addr());
        Ok(handle)
    }

    /// The `listener` thread: owns the bound port; rebinds when asked; closes it when stopped.
    /// If the thread dies, its handle is dropped and the port closes with it.
    async fn listener_thread(
        self: &Arc<Self>,
        first: Option<ListenerHandle>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut rebind = self.rebind.subscribe();
        rebind.mark_unchanged();
        let mut handle = match first {
            Some(h) => h,
            None => self.bind_listener().await.map_err(|e| e.to_string())?,
        };
        // Whatever the local records say, the leader may hold a stale address for this
        // node (set while it was down, or forced): tell it where this node listens now.
        let d = self.clone();
        tokio::spawn(async move { d.announce_address().await });
        let mut watchdog = raft::membership::Reannounce::default();
        let mut reannouncing: Option<tokio::task::JoinHandle<()>> = None;
        let result = loop {
            tokio::select! {
                _ = stop.changed() => break Ok(()),
                _ = rebind.changed() => {
                    handle = self.rebind_or_revert(handle).await?;
                    self.announce_if_moved();
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if handle.is_finished() {
                        break Err("the accept loop ended".to_string());
                    }
                    if reannouncing.as_ref().is_none_or(|h| h.is_finished()) {
                        reannouncing = self.reannounce_if_stale(&mut watchdog);
                    }
                }
            }
        };
        handle.shutdown().await;
        *self.bound.lock().unwrap() = None;
        result
    }

    /// Moves the listener to the configured address; when that bind fails, goes back to
    /// the old address (the running config says so again, status tells why).
    async fn rebind_or_revert(&self, old: ListenerHandle) -> Result<ListenerHandle, String> {
        let was = old.local_addr();
        old.shutdown().await;
        *self.bound.lock().unwrap() = None;
        let err = match self.bind_listener().await {
            Ok(h) => return Ok(h),
            Err(e) => e,
        };
        tracing::error!("{err}; back on {was}");
        self.set_addr_problem(Some(format!("{err}; still listening on {was}")));
        {
            let mut guard = self.config.write().unwrap();
            guard.1.listener_addr = was.ip();
            guard.1.listener_port = was.port();
        }
        self.bind_listener().await.map_err(|e| e.to_string())
    }

    /// Announces the listener address once bound, if the cluster records another one.
    fn announce_if_moved(self: &Arc<Self>) {
        let Ok(node) = self.node() else { return };
        let recorded = raft::membership::recorded_addr(&node, self.raft_id());
        if recorded.is_some_and(|a| a != self.advertised_addr()) {
            let d = self.clone();
            tokio::spawn(async move { d.announce_address().await });
        }
    }

    /// One announcement of this node's address when for a while it has known no leader
    /// (the leader may hold a wrong address for it and so never reach it), or its own view
    /// records another address for it (a leader's record overwritten: a leader always knows
    /// itself). `raft::membership::Reannounce` decides when; a refusal is shown by status.
    fn reannounce_if_stale(
        self: &Arc<Self>,
        watchdog: &mut raft::membership::Reannounce,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let node = self.node().ok()?;
        let addr = self.advertised_addr();
        let fine = raft::membership::announcement_settled(&node, self.raft_id(), &addr);
        if !watchdog.due(tokio::time::Instant::now(), fine) {
            return None;
        }
        let d = self.clone();
        Some(tokio::spawn(async move {
            match d.update_member_addr(&d.name(), &addr).await {
                Ok(()) => {
                    tracing::info!(%addr, "no leader reached this node, or its record was stale: announced its address to the cluster");
                    d.set_addr_problem(None);
                }
                Err(e) if e.is(Status::BadRequest) => {
                    tracing::error!(%addr, "the cluster refused this node's address: {e}");
                    d.set_addr_problem(Some(format!("the cluster refused {addr}: {e}")));
                }
                Err(e) => tracing::debug!(%addr, "announcing this node's address: {e}"),
            }
        }))
    }

    /// Has the leader record this node's new listener address (in the Raft membership, so
    /// peers reconnect, and in `cluster.nodes`). Retried with backoff until recorded or
    /// refused (a refusal is the operator's to fix); meanwhile status shows why.
    pub async fn announce_address(self: Arc<Self>) {
        let (name, addr) = (self.name(), self.advertised_addr());
        let mut backoff = Duration::from_millis(200);
        while self.advertised_addr() == addr {
            match self.update_member_addr(&name, &addr).await {
                Ok(()) => {
                    tracing::info!(%addr, "new listener address recorded by the cluster");
                    self.set_addr_problem(None);
                    return;
                }
                Err(e) if e.is(Status::BadRequest) => {
                    tracing::error!(%addr, "the cluster refused the new listener address: {e}");
                    self.set_addr_problem(Some(format!("the cluster refused {addr}: {e}")));
                    return;
                }
                Err(e) => {
                    tracing::warn!(%addr, "cannot record the new address yet: {e}");
                    self.set_addr_problem(Some(format!("announcing {addr}: {e}; retrying")));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Records (or clears) what is wrong with this node's listener address.
    pub fn set_addr_problem(&self, problem: Option<String>) {
        *self.addr_problem.lock().unwrap() = problem;
    }

    /// What is wrong with this node's listener address, if anything.
    pub fn addr_problem(&self) -> Option<String> {
        self.addr_problem.lock().unwrap().clone()
    }

    /// `None` when this node leads; else the leader's member record (an error when there
    /// is no leader right now).
    pub fn leader_elsewhere(&self, node: &Node) -> Result<Option<Member>, ActionError> {
        let m = node.metrics();
        if m.current_leader == Some(node.id) {
            return Ok(None);
        }
        m.current_leader
            .and_then(|id| m.membership_config.membership().get_node(&id).cloned())
            .map(Some)
            .ok_or_else(|| ActionError::new(Status::Unavailable, "no leader right now; retry"))
    }

    /// Sends a request to the leader; its error answers keep their status.
    pub async fn ask_leader(
        &self,
        leader: &Member,
        action: &str,
        options: Doc,
        timeout: Duration,
    ) -> Result<Doc, ActionError> {
        self.peers
            .call_doc(&leader.addr, "", action, options, timeout)
            .await
            .map_err(|e| match e {
                peers::PeerError::Failed {
                    status, message, ..
                } => ActionError::new(status, message),
                unreachable => ActionError::new(
                    Status::Unavailable,
                    format!("leader {}: {unreachable}", leader.name),
                ),
            })
    }

    /// The recorded listener address of member `node`; the error lists the members.
    pub fn member_addr(&self, node: &str) -> Result<String, ActionError> {
        self.node()?.read(|s| match s.nodes.get(node) {
            Some(r) => Ok(r.addr.clone()),
            None => Err(ActionError::bad(format!(
                "node {node:?} is not a cluster member; members: {}",
                s.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
        })
    }

    /// Sends `action` with `options` to member `node` and decodes its answer as `T`, the
    /// action's reply type; its error answers keep their status, prefixed with the node.
    pub async fn ask_member<T: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        action: crate::api::Action,
        options: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<T, ActionError> {
        let options = crate::api::reply(options)?;
        let data = self.ask_member_doc(node, action, options, timeout).await?;
        crate::api::decode_reply(action, data)
    }

    /// [`Daemon::ask_member`] with options already encoded.
    pub async fn ask_member_doc(
        &self,
        node: &str,
        action: crate::api::Action,
        options: Doc,
        timeout: Duration,
    ) -> Result<Doc, ActionError> {
        let addr = self.member_addr(node)?;
        self.peers
            .call_doc(&addr, "", action.as_str(), options, timeout)
            .await
            .map_err(|e| match e {
                peers::PeerError::Failed {
                    status, message, ..
                } => ActionError::new(status, format!("{node}: {message}")),
                unreachable => ActionError::new(
                    Status::Unavailable,
                    format!("{node} is unreachable: {unreachable}"),
                ),
            })
    }

    /// The right to change the membership, held by one change at a time on the leader.
    pub fn membership_guard(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, ActionError> {
        self.membership_lock.clone().try_lock_owned().map_err(|_| {
            ActionError::new(
                Status::Unavailable,
                "another membership change is in progress; retry when it is done",
            )
        })
    }

    /// Records `addr` as member `name`'s listener address: on the leader directly, else by
    /// a `join` from the member itself, which the leader treats as an address update.
    /// Refused when another member holds `addr`. For this node's own announcements.
    pub async fn update_member_addr(&self, name: &str, addr: &str) -> Result<(), ActionError> {
        let node = self.node()?;
        match self.leader_elsewhere(&node) {
            Ok(leader) => self.record_member_addr(&node, leader, name, addr).await,
            // A node the leader cannot reach (its recorded address is wrong) never hears of
            // a leader: any member forwards the announcement to its own.
            Err(no_leader) => {
                let options = announcement(name, addr)?;
                self.ask_any_member(&node, options).await.map_err(|e| {
                    ActionError::new(Status::Unavailable, format!("{no_leader}; {}", e.message))
                })
            }
        }
    }

    /// A member's announcement received from it: recorded through the leader, never
    /// passed on to other members (the member asks them itself; passed on, an announcement
    /// reaching a node through a record that holds that node's own address would loop).
    pub async fn relay_member_addr(&self, name: &str, addr: &str) -> Result<(), ActionError> {
        let node = self.node()?;
        let leader = self.leader_elsewhere(&node).map_err(|e| {
            let noted = format!(
                "{}; noted: this node sends {name}'s RPCs to {addr}",
                e.message
            );
            ActionError::new(Status::Unavailable, noted)
        })?;
        self.record_member_addr(&node, leader, name, addr).await
    }

    /// `set_addr` on this node when it leads (`leader` is `None`), else a `join` naming the
    /// member sent to `leader`.
    async fn record_member_addr(
        &self,
        node: &Node,
        leader: Option<Member>,
        name: &str,
        addr: &str,
    ) -> Result<(), ActionError> {
        match leader {
            None => raft::membership::set_addr(node, name, addr)
                .await
                .map_err(actions::membership_error),
            Some(leader) => self
                .ask_leader(
                    &leader,
                    "join",
                    announcement(name, addr)?,
                    Duration::from_secs(10),
                )
                .await
                .map(drop),
        }
    }

    /// Sends an address announcement (`join` naming this node) to each other member in
    /// turn until one takes it.
    async fn ask_any_member(&self, node: &Node, options: Doc) -> Result<(), ActionError> {
        let (me, my_addr) = (self.name(), self.advertised_addr());
        let mut last = ActionError::new(Status::Unavailable, "no other member to ask");
        for (_, member) in node.metrics().membership_config.nodes() {
            // A record holding this node's own address (swapped records) leads back here.
            if member.name == me || member.addr == my_addr {
                continue;
            }
            match self
                .ask_leader(member, "join", options.clone(), Duration::from_secs(3))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is(Status::BadRequest) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Makes the listener rebind with the current config.
    pub fn rebind_listener(&self) {
        self.rebind.send_modify(|g| *g += 1);
    }

    /// On a planned stop, tell the cluster this node is in maintenance (best effort, 2 s).
    async fn advertise_maintenance(&self) {
        let me = self.name();
        let standby = self.node().ok().is_some_and(|n| {
            n.read(|s| {
                s.node_monitors
                    .get(&me)
                    .is_some_and(|m| m.status == raft::state::NodeStatus::Standby)
            })
        });
        if standby {
            // Standby outlives a restart: it is the operator's until agent_welcome.
            return;
        }
        let cmd = Command::SetNodeMonitor {
            node: self.name(),
            status: Some(raft::state::NodeStatus::Maintenance),
            local_expect: None,
            frozen: None,
        };
        if tokio::time::timeout(Duration::from_secs(2), self.propose(cmd))
            .await
            .is_err()
        {
            tracing::warn!("could not advertise maintenance within 2s");
        }
    }

    /// After a restart, clear the maintenance status this node advertised when it stopped.
    async fn leave_maintenance(&self) {
        for _ in 0..600 {
            if let Ok(node) = self.node() {
                let me = self.name();
                let status = node.read(|s| s.node_monitors.get(&me).map(|m| m.status));
                match status {
                    Some(raft::state::NodeStatus::Maintenance) => {
                        let cmd = Command::SetNodeMonitor {
                            node: me,
                            status: Some(raft::state::NodeStatus::Idle),
                            local_expect: None,
                            frozen: None,
                        };
                        if self.propose(cmd).await.is_ok() {
                            return;
                        }
                    }
                    Some(_) => return,
                    None => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The listener's IP for address fix-ups.
    pub fn listener_ip(&self) -> IpAddr {
        self.config().listener_addr
    }

    /// Installs a new cluster keyring everywhere and forgets old blacklist verdicts.
    pub fn set_keyring(&self, keyring: Keyring) {
        self.peers.set_keyring(keyring.clone());
        self.listener.set_keyring(keyring);
        self.listener.blacklist().clear();
    }
}

/// Raises the soft file-descriptor limit to the hard one: every connection costs one, and
/// the listener's connection cap is lowered to what the soft limit leaves.
fn raise_fd_limit() {
    match crate::listener::fdlimit::raise_nofile() {
        Ok((before, after)) => tracing::info!(
            soft_before = before.soft,
            soft = after.soft,
            hard = after.hard,
            "file-descriptor limit (RLIMIT_NOFILE)"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file-descriptor limit"),
    }
}

/// The listener settings node.conf asks for.
pub fn listener_config(cfg: &NodeConfig) -> ListenerConfig {
    ListenerConfig {
        addr: cfg.listener_addr.to_string(),
        port: cfg.listener_port,
        max_frame: u32::try_from(cfg.max_frame).unwrap_or(u32::MAX),
        max_conns: cfg.max_conns,
        max_conns_per_addr: cfg.max_conns_per_addr,
        handshake_rate: cfg.handshake_rate,
        handshake_timeout: cfg.handshake_timeout,
        frame_timeout: cfg.frame_timeout,
        idle_timeout: cfg.idle_timeout,
        blacklist_ttl: cfg.blacklist_ttl,
        ..ListenerConfig::default()
    }
}

/// The listener's door into the daemon (weak, so the daemon can be dropped).
struct ListenerDoor(Weak<Daemon>);

impl Handler for ListenerDoor {
    fn dequeue_actions(&self) {
        if let Some(d) = self.0.upgrade() {
            d.dequeue.notify_one();
            tracing::info!("empty packet: dequeue actions");
        }
    }

    fn handle(&self, ctx: RequestCtx, req: Request) -> BoxFuture<Response> {
        let daemon = self.0.upgrade();
        Box::pin(async move {
            match daemon {
                Some(d) => {
                    let origin = Origin::Peer {
                        sender: ctx.sender,
                        addr: ctx.peer,
                        member: ctx.member,
                    };
                    d.handle(origin, req).await
                }
                None => Response::err(Status::Unavailable, "the daemon is stopping"),
            }
        })
    }
}

async fn sigterm() {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// The Raft id of the store under `paths`: read from `var/raft.id`; for a new store a
/// random one, so that every store incarnation is a distinct Raft member (a node that left
/// and wiped its log can rejoin under its old name); for a store made before ids were per
/// store, the hash of the node name it has always used.
fn store_id(paths: &Paths, name: &str) -> std::io::Result<NodeId> {
    let file = paths.raft_id_file();
    match std::fs::read_to_string(&file) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|e| std::io::Error::other(format!("{}: not a raft id: {e}", file.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let legacy = paths.raft_dir().join("conf").exists();
            let id = if legacy { node_id(name) } else { new_raft_id() };
            write_store_id(paths, id)?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// Records `id` as the Raft id of the next store (durably: a restart must not change it).
pub(crate) fn write_store_id(paths: &Paths, id: NodeId) -> std::io::Result<()> {
    let file = paths.raft_id_file();
    std::fs::create_dir_all(file.parent().expect("var/ has a parent"))?;
    config::write_durably(&file, format!("{id}\n").as_bytes())
}

/// A random Raft id for a new store incarnation (never 0).
pub(crate) fn new_raft_id() -> NodeId {
    rand::random::<u64>().max(1)
}

/// Opens the store (moving a sled store of an older version into it first), waiting
/// briefly for a previous handle of this process (a Raft being restarted) to let go of it.
async fn open_store(dir: &std::path::Path) -> std::io::Result<storage::DiskBackend> {
    let mut tries = 0;
    loop {
        match storage::migrate::open_migrating(dir).await {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// 32 random bytes in hex (64 characters).
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `join` options by which a member announces its listener address.
fn announcement(name: &str, addr: &str) -> Result<Doc, ActionError> {
    crate::api::reply(&crate::api::options::Admit {
        node: name.to_string(),
        addr: Some(addr.to_string()),
        port: None,
        id: None,
    })
}
