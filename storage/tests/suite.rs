//! openraft's storage test suite, on both backends.

use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use openraft::StorageError;
use raft::NodeId;
use raft::TypeConfig;
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
