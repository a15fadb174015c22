//! What the raft log does for a store file that lost its state: while the log still holds
//! every entry, it replays them; once a snapshot has purged the log's start, a store file
//! older than that is refused with the reason.

use std::time::Duration;

use wasmkube_store::{Command, Config, Error, Precondition, Store};

use crate::mvcc::obj;

async fn write_many(store: &Store, n: usize) {
    for i in 0..n {
        store
            .write(Command::Put {
                key: format!("/t/k{i}"),
                value: obj("k", "v"),
                precondition: Precondition::Absent,
            })
            .await
            .expect("write");
    }
}

/// Removes the state machine's file (and the mark a clean shutdown leaves), keeping the log.
fn lose_store_file(dir: &std::path::Path) {
    std::fs::remove_file(dir.join("store.redb")).expect("remove the store file");
    let _ = std::fs::remove_file(dir.join("store.clean"));
}

#[tokio::test]
async fn a_lost_store_file_should_be_rebuilt_from_the_log_until_the_log_is_purged() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(Config::new(dir.path())).await.expect("open");
    write_many(&store, 50).await;
    store.shutdown().await.expect("shutdown");
    drop(store);

    // Every entry is still in the log: the state comes back from it.
    lose_store_file(dir.path());
    let store = Store::open(Config::new(dir.path())).await.expect("reopen");
    let page = store.list("/t/", Default::default()).await.expect("list");
    assert_eq!(page.items.len(), 50, "the log replayed every write");

    // A snapshot lets raft purge the log's start (it keeps the last 1,000 entries).
    write_many(&store, 1_100).await;
    store
        .raft()
        .trigger()
        .snapshot()
        .await
        .expect("trigger a snapshot");
    let mut metrics = store.raft().metrics();
    tokio::time::timeout(Duration::from_secs(30), async {
        while metrics.borrow().purged.is_none() {
            metrics.changed().await.expect("metrics");
        }
    })
    .await
    .expect("the log is purged after the snapshot");
    store.shutdown().await.expect("shutdown");
    drop(store);

    lose_store_file(dir.path());
    match Store::open(Config::new(dir.path())).await {
        Err(Error::Damaged { why, .. }) => assert!(
            why.contains("raft log") && why.contains("starts after"),
            "says why: {why}"
        ),
        Err(e) => panic!("refused, but not as damaged: {e}"),
        Ok(_) => panic!("a store file older than the log's start was served"),
    }
}
