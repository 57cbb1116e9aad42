//! The crash windows of a follower's snapshot install. openraft 0.9 purges a follower's log
//! up to a snapshot as soon as it queues the snapshot's install, while the state machine
//! worker is still writing it; these tests run that order of calls on the store directly and
//! crash the disk after every step: the store must always reopen into a state openraft
//! starts from (the purge at most the stored snapshot, the log contiguous after the purge,
//! the committed entries re-appliable), with every acknowledged entry still there.
//!
//! Before the purge gate, the purge was written at once and the next sync (here a vote) made
//! it durable ahead of the snapshot: the reopened store could not re-apply its committed
//! entries (the simulator's seeds 4547, 5141, ... of issue 13).

use std::io::Cursor;

use openraft::storage::RaftLogStorage;
use openraft::storage::RaftLogStorageExt;
use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::CommittedLeaderId;
use openraft::Entry;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use openraft::StorageHelper;
use openraft::Vote;
use raft::Command;
use raft::NodeId;
use raft::TypeConfig;
use storage::wal::MemDisk;
use storage::wal::WalBackend;
use storage::wal::WalOptions;
use storage::Backend;
use storage::MemBackend;
use storage::Opened;

fn lid(index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
    range
        .map(|i| Entry {
            log_id: lid(i),
            payload: EntryPayload::Normal(Command::SetClusterParam {
                key: format!("k{}", i % 3),
                value: Some(format!("v{i}")),
            }),
        })
        .collect()
}

/// A disk that can lose power, and the store opened on it.
trait Crashable {
    type B: Backend;
    async fn open(&self) -> Opened<Self::B>;
    /// A power cut: what was not synced is lost.
    fn crash(&self);
}

struct Mem(MemBackend);

impl Crashable for Mem {
    type B = MemBackend;
    async fn open(&self) -> Opened<MemBackend> {
        storage::open(self.0.clone()).expect("open")
    }
    fn crash(&self) {
        self.0.crash();
    }
}

/// The write-ahead log on the simulated disk, small segments so that purges remove files.
struct Wal(MemDisk);

impl Crashable for Wal {
    type B = WalBackend<MemDisk>;
    async fn open(&self) -> Opened<WalBackend<MemDisk>> {
        let opts = WalOptions { segment_size: 4096 };
        let wal = WalBackend::open(self.0.clone(), opts).await.expect("open");
        storage::open(wal).expect("open")
    }
    fn crash(&self) {
        self.0.crash(7);
    }
}

/// The snapshot a leader sends: the state after entries 0..=`upto`.
async fn leader_snapshot(upto: u64) -> Snapshot<TypeConfig> {
    let (_, mut sm, _) = storage::open(MemBackend::new()).expect("open");
    sm.apply(entries(0..=upto)).await.expect("apply");
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build")
}

/// The steps of a follower that holds entries 0..=10 (to 5 in its snapshot, 10 committed) and
/// installs a leader's snapshot up to 20, in openraft's order.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// `install_full_snapshot`: the purge, queued with the install.
    Purge,
    /// Anything that syncs before the worker gets to the install.
    Vote,
    /// The next entry from the leader, appended while the install is pending.
    AppendNext,
    /// The worker installs the snapshot.
    Install,
    /// The append's callback (the entry is acknowledged).
    Acked,
}

const STEPS: [Step; 5] = [
    Step::Purge,
    Step::Vote,
    Step::AppendNext,
    Step::Install,
    Step::Acked,
];

/// Runs the first `n` steps, then crashes; returns whether entry 21 was acknowledged.
async fn run_then_crash<C: Crashable>(c: &C, n: usize) -> bool {
    let (mut log, mut sm, _) = c.open().await;
    log.blocking_append(entries(0..=10)).await.expect("append");
    sm.apply(entries(0..=5)).await.expect("apply");
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    log.save_committed(Some(lid(10))).await.expect("commit");
    log.save_vote(&Vote::new(1, 1)).await.expect("vote");
    let snap = leader_snapshot(20).await;
    let mut pending = None;
    let mut acked = false;
    for step in &STEPS[..n] {
        match step {
            Step::Purge => log.purge(lid(20)).await.expect("purge"),
            Step::Vote => log.save_vote(&Vote::new(2, 2)).await.expect("vote"),
            Step::AppendNext => {
                let mut l = log.clone();
                pending = Some(tokio::spawn(async move {
                    l.blocking_append(entries(21..=21)).await.expect("append")
                }));
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                }
                let h = pending.as_ref().expect("spawned");
                assert!(
                    !h.is_finished(),
                    "an entry after the purged gap was acknowledged before the snapshot"
                );
            }
            Step::Install => {
                let data = Box::new(Cursor::new(snap.snapshot.get_ref().clone()));
                sm.install_snapshot(&snap.meta, data)
                    .await
                    .expect("install");
            }
            Step::Acked => {
                pending.take().expect("spawned").await.expect("append task");
                acked = true;
            }
        }
    }
    if let Some(h) = pending {
        h.abort();
    }
    c.crash();
    acked
}

/// Opens the crashed store as openraft does and checks that it can start from it.
async fn check_startable<C: Crashable>(c: &C, acked: bool, after: usize) {
    let (mut log, mut sm, _) = c.open().await;
    if let Err(e) = StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
    {
        panic!("after {:?}: openraft cannot start: {e}", &STEPS[..after]);
    }
    let ls = log.get_log_state().await.expect("log state");
    let snap = sm.get_current_snapshot().await.expect("snapshot");
    let snap_last = snap.and_then(|s| s.meta.last_log_id);
    assert!(
        ls.last_purged_log_id <= snap_last,
        "after {:?}: purged to {:?} past the snapshot {:?}",
        &STEPS[..after],
        ls.last_purged_log_id,
        snap_last
    );
    let (applied, _) = sm.applied_state().await.expect("applied");
    assert!(
        applied >= Some(lid(10)),
        "the committed entries are applied"
    );
    let from = ls.last_purged_log_id.map_or(0, |l| l.index + 1);
    let last = ls.last_log_id.map_or(0, |l| l.index);
    let held = log.try_get_log_entries(from..=last).await.expect("read");
    let contiguous = held.iter().zip(from..).all(|(e, i)| e.log_id.index == i);
    assert!(
        contiguous && held.len() as u64 == (last + 1).saturating_sub(from),
        "after {:?}: the log after the purge has a gap",
        &STEPS[..after]
    );
    if acked {
        assert_eq!(
            ls.last_log_id,
            Some(lid(21)),
            "the acknowledged entry is kept"
        );
    }
}

async fn every_crash_point<C: Crashable>(make: impl Fn() -> C) {
    for n in 0..=STEPS.len() {
        let c = make();
        let acked = run_then_crash(&c, n).await;
        check_startable(&c, acked, n).await;
    }
}

#[tokio::test]
async fn a_crash_anywhere_in_a_snapshot_install_leaves_a_startable_store_in_memory() {
    every_crash_point(|| Mem(MemBackend::new())).await;
}

#[tokio::test]
async fn a_crash_anywhere_in_a_snapshot_install_leaves_a_startable_log() {
    every_crash_point(|| Wal(MemDisk::new())).await;
}

/// The purge waits for the snapshot, not for ever: once the snapshot is durable, the purge
/// is written (and, reopened, the log starts after the snapshot).
#[tokio::test]
async fn the_purge_is_written_once_the_snapshot_is_durable() {
    let c = Wal(MemDisk::new());
    assert!(run_then_crash(&c, STEPS.len()).await);
    let (mut log, _, _) = c.open().await;
    let ls = log.get_log_state().await.expect("log state");
    assert_eq!(ls.last_purged_log_id, Some(lid(20)));
    assert_eq!(ls.last_log_id, Some(lid(21)));
}

/// A snapshot that cannot be stored fails the append waiting for it instead of leaving it
/// waiting for ever (openraft then stops, and the store is reopened).
#[tokio::test]
async fn a_failed_snapshot_fails_the_append_waiting_for_it() {
    let disk = MemBackend::new();
    let (mut log, mut sm, _) = storage::open(disk.clone()).expect("open");
    log.blocking_append(entries(0..=10)).await.expect("append");
    let snap = leader_snapshot(20).await;
    log.purge(lid(20)).await.expect("purge");
    let mut l = log.clone();
    let waiting =
        tokio::spawn(async move { l.blocking_append(entries(21..=21)).await.map(|_| ()) });
    disk.set_faults(storage::MemFaults {
        sync_delay: std::time::Duration::from_millis(10),
        ..Default::default()
    });
    let install = tokio::spawn(async move {
        let data = Box::new(Cursor::new(snap.snapshot.into_inner()));
        sm.install_snapshot(&snap.meta, data).await
    });
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    disk.crash();
    assert!(install.await.expect("install task").is_err());
    // Bounded so that the bug this guards against (a wait that never ends) fails the test.
    let waited = tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
        .await
        .expect("the append still waits for a snapshot that failed");
    assert!(waited.expect("append task").is_err());
}
