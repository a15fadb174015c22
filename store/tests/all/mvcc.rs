use std::time::Duration;

use serde_json::json;
use wasmkube_store::{
    ChangeKind, Command, Config, Error, Failure, ListOptions, Outcome, Precondition, Store,
};

pub(crate) fn obj(name: &str, data: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(&json!({"metadata": {"name": name}, "data": data}))
        .expect("raw json")
}

async fn put(store: &Store, key: &str, data: &str, pre: Precondition) -> Outcome {
    store
        .write(Command::Put {
            key: key.into(),
            value: obj(key, data),
            precondition: pre,
        })
        .await
        .expect("write")
}

pub(crate) fn rev(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Written { revision, .. } => *revision,
        other => panic!("expected a write, got {other:?}"),
    }
}

fn rv_of(bytes: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(bytes).expect("json");
    v["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string()
}

#[tokio::test]
async fn writes_should_stamp_revisions_and_compare_and_swap() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(Config::new(dir.path())).await.expect("open");
    let a1 = put(&store, "/t/a", "1", Precondition::Absent).await;
    let r1 = rev(&a1);
    let got = store.get("/t/a").await.expect("get").expect("present");
    assert_eq!(got.revision, r1);
    assert_eq!(rv_of(&got.value), r1.to_string());

    let dup = put(&store, "/t/a", "x", Precondition::Absent).await;
    assert_eq!(
        dup,
        Outcome::Failed {
            reason: Failure::AlreadyExists,
            current: Some(r1)
        }
    );
    let r2 = rev(&put(&store, "/t/a", "2", Precondition::Revision(r1)).await);
    assert!(r2 > r1);
    let stale = put(&store, "/t/a", "3", Precondition::Revision(r1)).await;
    assert_eq!(
        stale,
        Outcome::Failed {
            reason: Failure::Conflict,
            current: Some(r2)
        }
    );
    let del = store
        .write(Command::Delete {
            key: "/t/a".into(),
            precondition: Precondition::Revision(r2),
        })
        .await
        .expect("delete");
    let r3 = rev(&del);
    if let Outcome::Written { value, .. } = &del {
        assert_eq!(
            rv_of(value),
            r3.to_string(),
            "deleted object carries the delete revision"
        );
    }
    assert!(store.get("/t/a").await.expect("get").is_none());
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn list_should_page_and_read_past_revisions() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(Config::new(dir.path())).await.expect("open");
    for i in 0..5 {
        put(&store, &format!("/t/ns/{i}"), "v1", Precondition::Absent).await;
    }
    put(&store, "/t/other", "x", Precondition::Absent).await;
    let first = store
        .list(
            "/t/ns/",
            ListOptions {
                limit: Some(2),
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(first.items.len(), 2);
    assert!(first.more);
    assert_eq!(first.remaining, 3);
    let at = first.revision;

    // Change the world, then read page two at the first page's revision.
    put(&store, "/t/ns/2", "v2", Precondition::Present).await;
    store
        .write(Command::Delete {
            key: "/t/ns/3".into(),
            precondition: Precondition::Present,
        })
        .await
        .expect("delete");
    put(&store, "/t/ns/9", "new", Precondition::Absent).await;
    let second = store
        .list(
            "/t/ns/",
            ListOptions {
                start_after: Some(first.items[1].key.clone()),
                limit: Some(10),
                revision: Some(at),
            },
        )
        .await
        .expect("list at revision");
    let keys: Vec<_> = second.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["/t/ns/2", "/t/ns/3", "/t/ns/4"]);
    assert!(
        second.items[0].value.windows(4).any(|w| w == b"\"v1\""),
        "old value of /t/ns/2"
    );
    assert!(!second.more);

    let now = store
        .list("/t/ns/", ListOptions::default())
        .await
        .expect("list");
    let keys: Vec<_> = now.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        ["/t/ns/0", "/t/ns/1", "/t/ns/2", "/t/ns/4", "/t/ns/9"]
    );
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn watch_should_replay_history_then_follow_and_expire_after_compaction() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(Config::new(dir.path())).await.expect("open");
    let start = store.revision().await.expect("rev");
    let r1 = rev(&put(&store, "/w/a", "1", Precondition::Absent).await);
    put(&store, "/x/ignored", "1", Precondition::Absent).await;
    let r2 = rev(&put(&store, "/w/a", "2", Precondition::Present).await);

    let mut watch = store.watch("/w/", start).await.expect("watch");
    let e1 = watch.next().await.expect("event");
    assert_eq!((e1.revision, e1.kind), (r1, ChangeKind::Created));
    let e2 = watch.next().await.expect("event");
    assert_eq!((e2.revision, e2.kind), (r2, ChangeKind::Updated));
    assert!(e2.prev.is_some());

    let r3 = rev(&store
        .write(Command::Delete {
            key: "/w/a".into(),
            precondition: Precondition::None,
        })
        .await
        .expect("delete"));
    let e3 = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("live event in time")
        .expect("event");
    assert_eq!((e3.revision, e3.kind), (r3, ChangeKind::Deleted));

    let compacted = store.compact(r2).await.expect("compact");
    assert_eq!(compacted, r2);
    match store.watch("/w/", start).await {
        Err(Error::Compacted { compacted }) => assert_eq!(compacted, r2),
        Err(other) => panic!("expected Compacted, got {other:?}"),
        Ok(_) => panic!("expected Compacted, got a watch"),
    }
    let mut from_r2 = store
        .watch("/w/", r2)
        .await
        .expect("watch from compaction point");
    assert_eq!(from_r2.next().await.expect("event").revision, r3);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn store_should_keep_every_write_across_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut revs = Vec::new();
    {
        let store = Store::open(Config::new(dir.path())).await.expect("open");
        for i in 0..20 {
            revs.push(rev(&put(
                &store,
                &format!("/p/{i:02}"),
                "v",
                Precondition::Absent,
            )
            .await));
        }
        store.shutdown().await.expect("shutdown");
    }
    let store = Store::open(Config::new(dir.path())).await.expect("reopen");
    let all = store
        .list("/p/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(all.items.len(), 20);
    for (item, r) in all.items.iter().zip(&revs) {
        assert_eq!(item.revision, *r);
    }
    let next = rev(&put(&store, "/p/new", "v", Precondition::Absent).await);
    assert!(
        next > *revs.last().expect("some"),
        "revisions keep increasing after restart"
    );
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn waiting_for_a_revision_should_end_when_it_is_published() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(Config::new(dir.path())).await.expect("open");
    let now = store.revision().await.expect("rev");
    assert!(
        store
            .wait_for_revision(now, Duration::from_millis(10))
            .await
    );
    assert!(
        !store
            .wait_for_revision(now + 1, Duration::from_millis(50))
            .await,
        "not there yet"
    );
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .wait_for_revision(now + 1, Duration::from_secs(10))
                .await
        })
    };
    put(&store, "/r/a", "1", Precondition::Absent).await;
    assert!(
        waiter.await.expect("join"),
        "a write publishes the next revision"
    );
    store.shutdown().await.expect("shutdown");
}
