//! Store integration tests: openraft's storage conformance suite against the redb log store
//! and state machine, and the MVCC behaviour the apiserver relies on.

mod mvcc;
mod recovery;
mod replication;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use wasmkube_store::{LogStore, NodeId, StateMachine, TypeConfig};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) =
            wasmkube_store::open_storage(&dir.path().join("store.redb")).expect("open storage");
        Ok((dir, log, sm))
    }
}

#[test]
fn redb_storage_should_pass_openraft_suite() {
    Suite::test_all(RedbBuilder).expect("openraft storage suite");
}
