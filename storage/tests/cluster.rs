//! A 3-node cluster in one process (tokio, in-memory network): replication, leader loss,
//! and recovery of a sled-backed node from disk.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::Raft;
use openraft::RaftNetwork;
use openraft::RaftNetworkFactory;
use raft::node_id;
use raft::Command;
use raft::Member;
use raft::Node;
use raft::NodeId;
use raft::ProposeError;
use raft::TypeConfig;
use storage::MemBackend;
use storage::SledBackend;

/// Delivers RPCs by direct calls to the registered nodes; a removed node is unreachable.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft<TypeConfig>>>>,
}

struct Conn {
    router: Router,
    target: NodeId,
}

impl Router {
    fn get(&self, id: NodeId) -> Result<Raft<TypeConfig>, Unreachable> {
        self.nodes
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or_else(|| Unreachable::new(&std::io::Error::other(format!("node {id} is down"))))
    }
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> Conn {
        Conn {
            router: self.clone(),
            target,
        }
    }
}

type Rpc<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, Member, E>>;

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        let raft = self.router.get(self.target)?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        let raft = self.router.get(self.target)?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>> {
        let raft = self.router.get(self.target)?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

fn config() -> openraft::Config {
    openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    }
}

async fn start(router: &Router, name: &str, backend: impl storage::Backend) -> Node {
    start_as(router, node_id(name), backend).await
}

async fn start_as(router: &Router, id: NodeId, backend: impl storage::Backend) -> Node {
    let (log, sm, machine) = storage::open(backend).unwrap();
    let node = Node::start(id, config(), router.clone(), log, sm, machine)
        .await
        .unwrap();
    router
        .nodes
        .lock()
        .unwrap()
        .insert(node.id, node.raft.clone());
    node
}

fn member(name: &str) -> Member {
    Member::new(name, format!("{name}:1214"))
}

/// Proposes on whichever node leads, retrying while leadership moves.
async fn propose(nodes: &[&Node], cmd: Command) -> u64 {
    for _ in 0..100 {
        for n in nodes {
            match n.propose(cmd.clone()).await {
                Ok(c) => return c.index,
                Err(ProposeError::NotLeader { .. }) => continue,
                Err(e) => panic!("{cmd:?}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader accepted {cmd:?}");
}

async fn wait_applied(node: &Node, index: u64) {
    node.raft
        .wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(Some(index), "applied")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_survive_leader_loss() {
    let router = Router::default();
    let n1 = start(&router, "n1", MemBackend::new()).await;
    let n2 = start(&router, "n2", MemBackend::new()).await;
    let n3 = start(&router, "n3", MemBackend::new()).await;
    n1.initialize(member("n1")).await.unwrap();
    propose(
        &[&n1],
        Command::Bootstrap {
            id: None,
            cluster: "c1".into(),
            node: "n1".into(),
            addr: "n1:1214".into(),
            at_ms: 0,
        },
    )
    .await;
    for n in [&n2, &n3] {
        let name = if n.id == n2.id { "n2" } else { "n3" };
        n1.add_learner(n.id, member(name)).await.unwrap();
        n1.add_voters(BTreeSet::from([n.id])).await.unwrap();
        propose(
            &[&n1],
            Command::Join {
                id: None,
                node: name.into(),
                addr: format!("{name}:1214"),
                at_ms: 0,
            },
        )
        .await;
    }
    let mut last = 0;
    for i in 0..20 {
        last = propose(
            &[&n1],
            Command::SetClusterParam {
                key: format!("test.k{}", i % 5),
                value: Some(i.to_string()),
            },
        )
        .await;
    }
    for n in [&n1, &n2, &n3] {
        wait_applied(n, last).await;
    }
    let states: Vec<_> = [&n1, &n2, &n3]
        .iter()
        .map(|n| n.read(|s| s.clone()))
        .collect();
    assert_eq!(states[0], states[1]);
    assert_eq!(states[1], states[2]);
    assert_eq!(states[0].nodes.len(), 3);
    assert_eq!(states[0].params["test.k4"], "19");

    // A rejected command commits, is refused identically everywhere, and changes nothing.
    let err = n1
        .propose(Command::Leave {
            node: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ProposeError::Rejected(_)), "{err}");

    // Drop the leader: the two others elect a new one and keep committing.
    let leader = n1.metrics().current_leader.unwrap();
    assert_eq!(leader, n1.id);
    router.nodes.lock().unwrap().remove(&n1.id);
    n1.shutdown().await;
    let idx = propose(
        &[&n2, &n3],
        Command::SetClusterParam {
            key: "test.after".into(),
            value: Some("yes".into()),
        },
    )
    .await;
    for n in [&n2, &n3] {
        wait_applied(n, idx).await;
        assert_eq!(n.read(|s| s.params["test.after"].clone()), "yes");
        assert_eq!(
            n.read(|s| s.params["test.k4"].clone()),
            "19",
            "nothing acknowledged is lost"
        );
    }
    let new_leader = n2.metrics().current_leader.unwrap();
    assert_ne!(new_leader, n1.id);
    n2.shutdown().await;
    n3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_node_recovers_its_state_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let idx = {
        let n1 = start(&router, "n1", SledBackend::open(dir.path()).unwrap()).await;
        n1.initialize(member("n1")).await.unwrap();
        propose(
            &[&n1],
            Command::Bootstrap {
                id: None,
                cluster: "c1".into(),
                node: "n1".into(),
                addr: "n1:1214".into(),
                at_ms: 0,
            },
        )
        .await;
        // Force a snapshot midway so recovery exercises snapshot + log replay.
        propose(
            &[&n1],
            Command::CreateService {
                svc: "web".into(),
                config: "x".into(),
            },
        )
        .await;
        n1.raft.trigger().snapshot().await.unwrap();
        let idx = propose(
            &[&n1],
            Command::SetClusterParam {
                key: "test.k".into(),
                value: Some("v".into()),
            },
        )
        .await;
        n1.shutdown().await;
        router.nodes.lock().unwrap().clear();
        idx
    };
    // sled releases its directory lock when its background flusher notices the drop.
    let mut reopened = SledBackend::open(dir.path());
    for _ in 0..50 {
        if reopened.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        reopened = SledBackend::open(dir.path());
    }
    let n1 = start(&router, "n1", reopened.unwrap()).await;
    assert!(n1.is_initialized().await);
    wait_applied(&n1, idx).await;
    assert_eq!(n1.read(|s| s.params["test.k"].clone()), "v");
    assert_eq!(n1.read(|s| s.services["web"].version), 1);
    // And it still leads and commits.
    propose(&[&n1], Command::DeleteService { svc: "web".into() }).await;
    n1.shutdown().await;
}

/// Both orders of the new id against the old leader's matter: openraft orders votes of one
/// term by node id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_seeded_into_an_empty_store_founds_a_new_cluster() {
    let old_leader = node_id("n1");
    for id in [old_leader - 1, old_leader + 1] {
        seeded_store_leads_and_serves_its_snapshot(id).await;
    }
}

async fn seeded_store_leads_and_serves_its_snapshot(id: NodeId) {
    let router = Router::default();
    let n1 = start(&router, "n1", MemBackend::new()).await;
    n1.initialize(member("n1")).await.unwrap();
    let boot = Command::Bootstrap {
        id: None,
        cluster: "c1".into(),
        node: "n1".into(),
        addr: "n1:1214".into(),
        at_ms: 0,
    };
    propose(&[&n1], boot).await;
    let web = Command::CreateService {
        svc: "web".into(),
        config: "x".into(),
    };
    let backed_up = propose(&[&n1], web).await;
    let (_, file) = raft::backup::encode(&n1.read_machine(|d| d.clone()), "n1", 0);
    n1.shutdown().await;
    router.nodes.lock().unwrap().clear();

    let (_, data) = raft::backup::decode(&file).unwrap();
    let to = raft::backup::NewCluster {
        cluster: "c2",
        node: "r1",
        id,
        addr: "r1:1214",
        at_ms: 1,
    };
    let (data, done) = raft::backup::restore(data, &to).unwrap();
    assert_eq!(done.removed, ["n1"]);
    let backend = MemBackend::new();
    storage::seed(&backend, &data).await.unwrap();
    let again = storage::seed(&backend, &data).await;
    assert!(
        again.is_err(),
        "a store that holds a snapshot is not seeded again"
    );
    let r1 = start_as(&router, id, backend).await;
    assert!(r1.is_initialized().await);
    // It elects itself and commits after the backup's last entry.
    let param = Command::SetClusterParam {
        key: "test.k".into(),
        value: Some("v".into()),
    };
    let idx = propose(&[&r1], param).await;
    assert!(idx > backed_up, "{idx} follows the backup's {backed_up}");
    assert_eq!(r1.read(|s| s.services["web"].version), 1);
    // A new member catches up from the seeded snapshot (the log before it is purged).
    let r2 = start(&router, "r2", MemBackend::new()).await;
    r1.add_learner(node_id("r2"), member("r2")).await.unwrap();
    wait_applied(&r2, idx).await;
    assert_eq!(
        r2.read(|s| (s.name.clone(), s.services.len())),
        ("c2".into(), 1)
    );
    r1.shutdown().await;
    r2.shutdown().await;
}
