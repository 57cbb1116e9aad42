//! The stores as the simulator runs them: the production `LogStore`/`MachineStore` over the
//! production write-ahead log (`storage::wal::WalBackend`) on the crashable simulated disk
//! (`storage::wal::MemDisk`: tears, loses and corrupts unsynced writes), wrapped to (1) cut
//! off a crashed incarnation, (2) report what they do to the checkers, and (3) plant the
//! `--inject-bug` variants.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::Entry;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::SnapshotMeta;
use openraft::StorageError;
use openraft::StoredMembership;
use openraft::Vote;
use raft::Command;
use raft::Member;
use raft::NodeId;
use raft::Reply;
use raft::SharedMachine;
use raft::TypeConfig;
use storage::wal::MemDisk;
use storage::wal::WalBackend;
use storage::Backend;
use storage::LogStore;
use storage::MachineStore;
use storage::MetaKey;
use storage::Op;

use crate::bugs::Bug;
use crate::rng::Rng;
use crate::world::World;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The log of one incarnation: once the node crashed (another incarnation, or none, is
/// live), every operation fails, so a dying Raft cannot write behind the crash.
#[derive(Debug, Clone)]
pub struct SimDisk {
    wal: WalBackend<MemDisk>,
    live: Arc<AtomicU64>,
    inc: u64,
    /// `ack-before-sync`: `sync` returns at once and the real sync runs behind it.
    ack_before_sync: bool,
}

impl SimDisk {
    /// The disk of incarnation `inc`, dead once `live` moves on; `bug` may plant `ack-before-sync`.
    pub fn new(
        wal: WalBackend<MemDisk>,
        live: Arc<AtomicU64>,
        inc: u64,
        bug: Option<Bug>,
    ) -> SimDisk {
        SimDisk {
            wal,
            live,
            inc,
            ack_before_sync: bug == Some(Bug::AckBeforeSync),
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.live.load(Ordering::Relaxed) == self.inc {
            Ok(())
        } else {
            Err(io::Error::other("the node crashed"))
        }
    }
}

impl Backend for SimDisk {
    fn write(&self, ops: Vec<Op>) -> io::Result<()> {
        self.check()?;
        self.wal.write(ops)
    }

    async fn sync(&self) -> io::Result<()> {
        self.check()?;
        if self.ack_before_sync {
            let wal = self.wal.clone();
            tokio::spawn(async move { wal.sync().await });
            return Ok(());
        }
        self.wal.sync().await?;
        self.check()
    }

    fn meta(&self, key: MetaKey) -> io::Result<Option<Vec<u8>>> {
        self.check()?;
        self.wal.meta(key)
    }

    fn entries(&self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        self.check()?;
        self.wal.entries(start, end)
    }

    fn last_entry(&self) -> io::Result<Option<(u64, Vec<u8>)>> {
        self.check()?;
        self.wal.last_entry()
    }
}

/// The production `LogStore`, observed.
pub struct SimLog {
    world: Arc<World>,
    node: usize,
    inc: u64,
    inner: LogStore<SimDisk>,
}

impl SimLog {
    /// Wraps incarnation `inc`'s log store of node `node`; it reports only while that one is live.
    pub fn new(world: Arc<World>, node: usize, inc: u64, inner: LogStore<SimDisk>) -> SimLog {
        SimLog {
            world,
            node,
            inc,
            inner,
        }
    }

    fn live(&self) -> bool {
        self.world.is_live(self.node, self.inc)
    }
}

impl RaftLogReader<TypeConfig> for SimLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        self.inner.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for SimLog {
    type LogReader = LogStore<SimDisk>;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        self.inner.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.inner.get_log_reader().await
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.inner.save_vote(vote).await?;
        if self.live() {
            self.world
                .rec()
                .on_vote_saved(&self.world, self.node, *vote);
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        let mut vote = self.inner.read_vote().await?;
        if self.world.bug() == Some(Bug::ForgetVote) {
            vote = None;
        }
        if self.live() {
            self.world.rec().on_vote_read(&self.world, self.node, vote);
        }
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        if let (true, Some(c)) = (self.live(), committed) {
            self.world.rec().on_commit(&self.world, self.node, c);
        }
        self.inner.save_committed(committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        self.inner.read_committed().await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if self.live() {
            self.world.rec().on_append(&self.world, self.node, &entries);
        }
        self.inner.append(entries, callback).await
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        if self.live() {
            let removed = self.inner.try_get_log_entries(log_id.index..).await?;
            self.world
                .rec()
                .on_truncate(&self.world, self.node, log_id.index, &removed);
        }
        self.inner.truncate(log_id).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.inner.purge(log_id).await?;
        if self.live() {
            self.world.rec().on_purge(self.node, log_id.index);
        }
        Ok(())
    }
}

/// The production `MachineStore`, observed: the state after every applied entry is hashed
/// for the state machine checkers.
pub struct SimMachine {
    world: Arc<World>,
    node: usize,
    inc: u64,
    inner: MachineStore<SimDisk>,
    machine: Arc<SharedMachine>,
    /// `double-apply`: where it draws when to strike, and recent commands to replay.
    bug_rng: Rng,
    recent: VecDeque<Command>,
}

impl SimMachine {
    /// Wraps incarnation `inc`'s state machine store of node `node`, applying into `machine`.
    pub fn new(
        world: Arc<World>,
        node: usize,
        inc: u64,
        inner: MachineStore<SimDisk>,
        machine: Arc<SharedMachine>,
    ) -> SimMachine {
        let bug_rng = Rng::stream(world.cfg.seed, &format!("bug.n{node}.{inc}"));
        SimMachine {
            world,
            node,
            inc,
            inner,
            machine,
            bug_rng,
            recent: VecDeque::new(),
        }
    }

    fn live(&self) -> bool {
        self.world.is_live(self.node, self.inc)
    }

    /// `double-apply`: now and then apply an earlier command once more, after a later one.
    fn replay_old_command(&mut self, cmd: &Command) {
        if self.recent.len() >= 2 && self.bug_rng.chance(0.05) {
            let old =
                self.recent[self.bug_rng.below(self.recent.len() as u64 - 1) as usize].clone();
            let mut data = self.machine.read(|d| d.clone());
            let _ = raft::apply(&mut data.cluster, &old);
            self.machine.replace(data);
        }
        self.recent.push_back(cmd.clone());
        if self.recent.len() > 16 {
            self.recent.pop_front();
        }
    }
}

impl RaftStateMachine<TypeConfig> for SimMachine {
    type SnapshotBuilder = MachineStore<SimDisk>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        self.inner.applied_state().await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            let mut r = self.inner.apply(std::iter::once(entry.clone())).await?;
            if self.world.bug() == Some(Bug::DoubleApply) {
                if let EntryPayload::Normal(cmd) = &entry.payload {
                    self.replay_old_command(cmd);
                }
            }
            if self.live() {
                let h = crate::check::state_hash(&self.machine);
                let reply = r.first().cloned();
                self.world.ev(
                    &self.world.names[self.node],
                    format_args!(
                        "applied {} state {h:016x}",
                        self.world.log_id(&Some(entry.log_id))
                    ),
                );
                self.world
                    .rec()
                    .on_apply(&self.world, self.node, &entry, reply, h);
            }
            replies.append(&mut r);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.inner.get_snapshot_builder().await
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        self.inner.begin_receiving_snapshot().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        self.inner.install_snapshot(meta, snapshot).await?;
        if self.live() {
            let h = crate::check::state_hash(&self.machine);
            let index = meta.last_log_id.map_or(0, |l| l.index);
            let mut rec = self.world.rec();
            rec.stats.snapshots_installed += 1;
            rec.on_state(&self.world, self.node, index, h, "installed snapshot");
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        self.inner.get_current_snapshot().await
    }
}
