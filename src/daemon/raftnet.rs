//! openraft's network over the listener: `raft_append`, `raft_vote` and `raft_snapshot`
//! requests on the peers' long-lived encrypted connections.
//!
//! openraft retries and backs off by itself; a failed call is reported as `Unreachable`
//! (no answer) or `Network` (an error answer), never retried here.

use std::sync::Arc;
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
use openraft::RaftNetwork;
use openraft::RaftNetworkFactory;
use raft::Member;
use raft::NodeId;
use raft::TypeConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::peers::PeerError;
use super::peers::Peers;

/// Builds one [`RaftConn`] per target.
#[derive(Clone)]
pub struct RaftNet {
    /// Shared connections.
    pub peers: Arc<Peers>,
}

/// The Raft RPC channel to one member.
pub struct RaftConn {
    peers: Arc<Peers>,
    target: Member,
}

impl RaftNetworkFactory<TypeConfig> for RaftNet {
    type Network = RaftConn;

    async fn new_client(&mut self, _target: NodeId, node: &Member) -> RaftConn {
        RaftConn {
            peers: self.peers.clone(),
            target: node.clone(),
        }
    }
}

type Rpc<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, Member, E>>;

impl RaftConn {
    async fn call<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error>(
        &self,
        action: &str,
        req: &Req,
        ttl: Duration,
    ) -> Rpc<Resp, E> {
        let options =
            serde_json::to_value(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let data = self
            .peers
            .call(&self.target.addr, action, options, ttl)
            .await
            .map_err(|e| match e {
                PeerError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                PeerError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
            })?;
        self.peers.saw(&self.target.name);
        serde_json::from_value(data).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetwork<TypeConfig> for RaftConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        self.call("raft_append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call("raft_snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>> {
        self.call("raft_vote", &rpc, option.hard_ttl()).await
    }
}
