//! A restarted leader starts as a follower.
//!
//! openraft 0.9 lets a node whose stored vote is its own committed vote come back from a
//! restart as the leader of that same term, without an election. With our stores that is
//! unsafe, as the simulator showed (sim seeds 1, 4 and 33 at the time):
//! - entries are readable, hence replicated, before they are flushed (openraft requires it);
//!   a leader that loses power before its own flush loses them, resumes its term and gives
//!   their log ids to new entries, while a follower may still hold the old entries under the
//!   same ids and keep them (to Raft, the same log id means the same entry);
//! - `committed` is saved without a sync, so the resumed leader's state machine can be behind
//!   writes it acknowledged before the crash, and `read_linearizable` serves it: a stale read.
//!
//! Handing openraft that vote as not committed makes the node start as a follower: it must
//! win an election in a new term, whose first (blank) entry commits everything before it.
//! Voting is unchanged: votes compare by (term, node id) first, and no other node's vote
//! carries this node's id.

use std::fmt::Debug;
use std::ops::RangeBounds;

use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use openraft::Entry;
use openraft::LogId;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::StorageError;
use openraft::Vote;

use crate::types::NodeId;
use crate::types::TypeConfig;

/// `inner`, except that `read_vote` never returns this node's own committed vote.
pub(crate) struct RestartAsFollower<LS> {
    id: NodeId,
    inner: LS,
}

impl<LS> RestartAsFollower<LS> {
    pub(crate) fn new(id: NodeId, inner: LS) -> Self {
        RestartAsFollower { id, inner }
    }
}

impl<LS: RaftLogStorage<TypeConfig>> RaftLogReader<TypeConfig> for RestartAsFollower<LS> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.inner.try_get_log_entries(range).await
    }
}

impl<LS: RaftLogStorage<TypeConfig>> RaftLogStorage<TypeConfig> for RestartAsFollower<LS> {
    type LogReader = LS::LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.inner.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.inner.get_log_reader().await
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner.save_vote(vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        // openraft reads the vote once, at start-up.
        let vote = self.inner.read_vote().await?;
        Ok(vote.map(|v| {
            if v.committed && v.leader_id.node_id == self.id {
                Vote::new(v.leader_id.term, v.leader_id.node_id)
            } else {
                v
            }
        }))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.inner.save_committed(committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.inner.read_committed().await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.inner.append(entries, callback).await
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner.truncate(log_id).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner.purge(log_id).await
    }
}
