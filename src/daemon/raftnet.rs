//! openraft's network over the listener: the addressed RPCs of [`raft::rpc`] carried as
//! `raft_append`, `raft_vote` and `raft_snapshot` requests on the peers' long-lived
//! sessions, encoded as MessagePack straight from openraft's types (no JSON tree).
//!
//! Addressing (who the RPC is for, who answered) is checked by [`raft::rpc`], the code the
//! simulator runs too; this module only moves the bytes. openraft retries and backs off by
//! itself; a failed call is reported as unreachable, never retried here.

use std::sync::Arc;
use std::time::Duration;

use raft::rpc::Addressed;
use raft::rpc::AddressedNet;
use raft::rpc::Reply;
use raft::rpc::Rpc;
use raft::rpc::RpcCounters;
use raft::rpc::Transport;
use raft::rpc::TransportError;
use raft::Member;
use raft::NodeId;

use super::peers::PeerError;
use super::peers::Peers;
use crate::wire::Doc;
use crate::wire::Status;

/// The daemon's Raft network: addressed RPCs over [`Peers`].
pub type RaftNet = AddressedNet<PeerTransport>;

/// Builds the Raft network of node `me` in `cluster`.
pub fn raft_net(
    peers: Arc<Peers>,
    cluster: &str,
    me: NodeId,
    counters: Arc<RpcCounters>,
) -> RaftNet {
    AddressedNet::new(PeerTransport { peers }, cluster, me).with_counters(counters)
}

/// Carries addressed RPCs as wire requests to whatever node listens at an address.
#[derive(Clone)]
pub struct PeerTransport {
    peers: Arc<Peers>,
}

impl Transport for PeerTransport {
    async fn send(
        &self,
        target: &Member,
        msg: Addressed<Rpc>,
        ttl: Duration,
    ) -> Result<Reply, TransportError> {
        let addr = target.addr.as_str();
        let failed = |reason: String| TransportError::Failed {
            addr: addr.to_string(),
            reason,
        };
        let action = msg.rpc.action();
        let msg_to = msg.to;
        // MessagePack straight from openraft's types (snapshot chunks as `bin`).
        let options = Doc::pack(&msg).map_err(failed)?;
        let data = self
            .peers
            .call_doc(addr, &target.name, action, options, ttl)
            .await
            .map_err(|e| match e {
                PeerError::Unreachable { .. } => TransportError::Unreachable {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                },
                PeerError::Failed {
                    status, message, ..
                } if status == Status::Misaddressed.wire() => TransportError::Refused {
                    addr: addr.to_string(),
                    reason: message,
                },
                other => failed(other.to_string()),
            })?;
        let reply: Reply = data.decode().map_err(failed)?;
        // Only an answer from the node meant counts as hearing from it (node-down marking).
        if reply.responder == msg_to && reply.answer.is_ok() {
            self.peers.saw(&target.name);
        }
        Ok(reply)
    }
}
