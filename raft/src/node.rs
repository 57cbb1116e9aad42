//! `Node`: the handle through which the daemon and the simulator drive one Raft member.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::ChangeMembers;
use openraft::Raft;
use openraft::RaftMetrics;
use openraft::RaftNetworkFactory;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::apply::CommandError;
use crate::apply::Outcome;
use crate::command::Command;
use crate::command::MAX_COMMAND_BYTES;
use crate::event::EventRecord;
use crate::machine::MachineData;
use crate::machine::SharedMachine;
use crate::state::ClusterState;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::TypeConfig;

/// Why a proposal or a membership change did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum ProposeError {
    /// This node is not the leader; the caller should retry on `leader`.
    #[error("this node is not the leader (leader: {})", leader.as_ref().map_or("unknown".to_string(), |m| m.to_string()))]
    NotLeader {
        /// The leader's Raft id, if this node knows it.
        leader_id: Option<NodeId>,
        /// The leader's name and address, if this node knows them.
        leader: Option<Member>,
    },
    /// The command committed but the state machine refused it; nothing changed.
    #[error(transparent)]
    Rejected(CommandError),
    /// Another membership change is still in progress.
    #[error("a membership change is already in progress: {0}")]
    MembershipBusy(String),
    /// The change would leave the cluster without a quorum or is otherwise invalid.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Raft is shutting down or failed.
    #[error("raft stopped: {0}")]
    Stopped(String),
    /// The command is larger than one log entry may be; nothing was proposed.
    #[error(
        "the command is {bytes} bytes, more than a log entry may hold ({limit}); make it smaller"
    )]
    TooLarge {
        /// Its size, packed.
        bytes: usize,
        /// [`crate::command::MAX_COMMAND_BYTES`].
        limit: usize,
    },
}

/// A committed, accepted command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// Log index the command was committed at.
    pub index: u64,
    /// What it did.
    pub outcome: Outcome,
}

/// One Raft member: openraft plus the shared applied state.
#[derive(Clone)]
pub struct Node {
    /// This member's Raft id.
    pub id: NodeId,
    /// The openraft handle, for RPC handlers and metrics.
    pub raft: Raft<TypeConfig>,
    machine: Arc<SharedMachine>,
    book: Arc<crate::rpc::AddressBook>,
}

impl Node {
    /// Starts Raft on the given stores and network. `machine` must be the one `sm` applies to.
    pub async fn start<LS, SM, N>(
        id: NodeId,
        config: openraft::Config,
        network: N,
        log: LS,
        sm: SM,
        machine: Arc<SharedMachine>,
    ) -> Result<Node, ProposeError>
    where
        LS: RaftLogStorage<TypeConfig>,
        SM: RaftStateMachine<TypeConfig>,
        N: RaftNetworkFactory<TypeConfig>,
    {
        let config = config
            .validate()
            .map_err(|e| ProposeError::Stopped(format!("invalid raft config: {e}")))?;
        // A restarted leader must win a new election: see `restart`.
        let log = crate::restart::RestartAsFollower::new(id, log);
        let raft = Raft::new(id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| ProposeError::Stopped(e.to_string()))?;
        Ok(Node {
            id,
            raft,
            machine,
            book: Arc::default(),
        })
    }

    /// Shares `book` with this node's network (the one given to
    /// [`crate::rpc::AddressedNet::with_address_book`]), so that announced addresses reach it.
    pub fn with_address_book(mut self, book: Arc<crate::rpc::AddressBook>) -> Node {
        self.book = book;
        self
    }

    /// Addresses announced to this node that the membership does not record yet.
    pub fn address_book(&self) -> &crate::rpc::AddressBook {
        &self.book
    }

    /// Makes this node the single voter of a new cluster (only on an empty store).
    pub async fn initialize(&self, me: Member) -> Result<(), ProposeError> {
        let members = BTreeMap::from([(self.id, me)]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| ProposeError::Membership(e.to_string()))
    }

    /// Whether the store holds any Raft state (vote or log) already.
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Proposes `cmd`; returns once it is committed and applied, with the state machine's answer.
    pub async fn propose(&self, cmd: Command) -> Result<Committed, ProposeError> {
        let bytes = crate::rpc::packed_len(&cmd);
        if bytes > MAX_COMMAND_BYTES {
            return Err(ProposeError::TooLarge {
                bytes,
                limit: MAX_COMMAND_BYTES,
            });
        }
        let resp = self.raft.client_write(cmd).await.map_err(write_error)?;
        match resp.data {
            Ok(outcome) => Ok(Committed {
                index: resp.log_id.index,
                outcome,
            }),
            Err(e) => Err(ProposeError::Rejected(e)),
        }
    }

    /// Reads the locally applied state (may be stale on a follower).
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        self.machine.read(|d| f(&d.cluster))
    }

    /// Reads the applied data including Raft bookkeeping (last applied, membership).
    pub fn read_machine<R>(&self, f: impl FnOnce(&MachineData) -> R) -> R {
        self.machine.read(f)
    }

    /// Reads the state after confirming leadership with a quorum: linearizable, leader only.
    pub async fn read_linearizable<R>(
        &self,
        f: impl FnOnce(&ClusterState) -> R,
    ) -> Result<R, ProposeError> {
        self.raft.ensure_linearizable().await.map_err(|e| match e {
            RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(fwd)) => {
                ProposeError::NotLeader {
                    leader_id: fwd.leader_id,
                    leader: fwd.leader_node,
                }
            }
            other => ProposeError::Stopped(other.to_string()),
        })?;
        Ok(self.read(f))
    }

    /// Subscribes to the events of entries applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.machine.subscribe()
    }

    /// The shared applied state machine.
    pub fn machine(&self) -> &Arc<SharedMachine> {
        &self.machine
    }

    /// Adds `member` as a learner and waits until it has caught up with the leader's log.
    pub async fn add_learner(&self, id: NodeId, member: Member) -> Result<u64, ProposeError> {
        let resp = self
            .raft
            .add_learner(id, member, true)
            .await
            .map_err(write_error)?;
        Ok(resp.log_id.index)
    }

    /// Adds `member` as a learner without waiting for it to catch up; returns the log index
    /// of the membership entry.
    pub async fn add_learner_nowait(
        &self,
        id: NodeId,
        member: Member,
    ) -> Result<u64, ProposeError> {
        let resp = self
            .raft
            .add_learner(id, member, false)
            .await
            .map_err(write_error)?;
        Ok(resp.log_id.index)
    }

    /// Changes the address recorded for member `id` (its listener moved).
    pub async fn set_member(&self, id: NodeId, member: Member) -> Result<u64, ProposeError> {
        self.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, member)])))
            .await
    }

    /// Makes `ids` voters (they must be learners already), keeping the other voters.
    pub async fn add_voters(&self, ids: BTreeSet<NodeId>) -> Result<u64, ProposeError> {
        self.change_membership(ChangeMembers::AddVoterIds(ids))
            .await
    }

    /// Removes `ids` from the voters and the learners.
    pub async fn remove_members(&self, ids: BTreeSet<NodeId>) -> Result<u64, ProposeError> {
        self.change_membership(ChangeMembers::RemoveVoters(ids.clone()))
            .await?;
        let learners: BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .learner_ids()
            .filter(|l| ids.contains(l))
            .collect();
        if learners.is_empty() {
            return Ok(self.raft.metrics().borrow().last_log_index.unwrap_or(0));
        }
        self.change_membership(ChangeMembers::RemoveNodes(learners))
            .await
    }

    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, Member>,
    ) -> Result<u64, ProposeError> {
        let resp = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(write_error)?;
        Ok(resp.log_id.index)
    }

    /// The current Raft metrics (role, term, leader, indexes, membership).
    pub fn metrics(&self) -> RaftMetrics<NodeId, Member> {
        self.raft.metrics().borrow().clone()
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(fwd)) => ProposeError::NotLeader {
            leader_id: fwd.leader_id,
            leader: fwd.leader_node,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            use openraft::error::ChangeMembershipError as C;
            match c {
                C::InProgress(p) => ProposeError::MembershipBusy(p.to_string()),
                other => ProposeError::Membership(other.to_string()),
            }
        }
        RaftError::Fatal(f) => ProposeError::Stopped(f.to_string()),
    }
}
