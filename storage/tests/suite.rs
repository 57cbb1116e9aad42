//! openraft's storage test suite, on every backend: memory, sled, and the write-ahead log
//! (on a real directory, and on the simulated disk with small segments).

use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use openraft::StorageError;
use raft::NodeId;
use raft::TypeConfig;
use storage::wal::MemDisk;
use storage::wal::WalBackend;
use storage::wal::WalOptions;
use storage::DiskBackend;
use storage::LogStore;
use storage::MachineStore;
use storage::MemBackend;
use storage::SledBackend;

struct Mem;

impl StoreBuilder<TypeConfig, LogStore<MemBackend>, MachineStore<MemBackend>, ()> for Mem {
    async fn build(
        &self,
    ) -> Result<((), LogStore<MemBackend>, MachineStore<MemBackend>), StorageError<NodeId>> {
        let (log, sm, _) = storage::open(MemBackend::new()).expect("open mem store");
        Ok(((), log, sm))
    }
}

struct Sled;

impl StoreBuilder<TypeConfig, LogStore<SledBackend>, MachineStore<SledBackend>, tempfile::TempDir>
    for Sled
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            LogStore<SledBackend>,
            MachineStore<SledBackend>,
        ),
        StorageError<NodeId>,
    > {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = SledBackend::open(dir.path()).expect("open sled");
        let (log, sm, _) = storage::open(backend).expect("open sled store");
        Ok((dir, log, sm))
    }
}

#[test]
fn mem_store_passes_openraft_suite() {
    Suite::test_all(Mem).expect("mem store passes the suite")
}

#[test]
fn sled_store_passes_openraft_suite() {
    Suite::test_all(Sled).expect("sled store passes the suite")
}

struct WalOnDisk;

impl StoreBuilder<TypeConfig, LogStore<DiskBackend>, MachineStore<DiskBackend>, tempfile::TempDir>
    for WalOnDisk
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            LogStore<DiskBackend>,
            MachineStore<DiskBackend>,
        ),
        StorageError<NodeId>,
    > {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = storage::open_dir(dir.path()).await.expect("open wal");
        let (log, sm, _) = storage::open(backend).expect("open wal store");
        Ok((dir, log, sm))
    }
}

type SimWal = WalBackend<MemDisk>;

struct WalOnMemDisk;

impl StoreBuilder<TypeConfig, LogStore<SimWal>, MachineStore<SimWal>, ()> for WalOnMemDisk {
    async fn build(
        &self,
    ) -> Result<((), LogStore<SimWal>, MachineStore<SimWal>), StorageError<NodeId>> {
        let opts = WalOptions { segment_size: 4096 };
        let backend = WalBackend::open(MemDisk::new(), opts)
            .await
            .expect("open wal");
        let (log, sm, _) = storage::open(backend).expect("open wal store");
        Ok(((), log, sm))
    }
}

#[test]
fn wal_store_passes_openraft_suite() {
    Suite::test_all(WalOnDisk).expect("wal store passes the suite")
}

#[test]
fn wal_store_on_small_segments_passes_openraft_suite() {
    Suite::test_all(WalOnMemDisk).expect("wal store on 4 KiB segments passes the suite")
}
