//! A group of three members on loopback, talking over the raft transport's HTTP listeners.

use std::collections::BTreeMap;
use std::time::Duration;

use wasmkube_store::{Command, Config, Failure, Outcome, Precondition, Store};

use super::mvcc::{obj, rev};

/// Three members in their own directories, each serving its peer listener.
async fn three(dirs: &[tempfile::TempDir; 3]) -> Vec<Store> {
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        members.insert(id, l.local_addr().expect("addr").to_string());
        listeners.push(l);
    }
    let mut stores = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let config = Config {
            node_id: id,
            advertise: members[&id].clone(),
            initial_members: members.clone(),
            ..Config::new(dirs[i].path())
        };
        let store = Store::open(config).await.expect("open");
        let router = store.peer_router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        stores.push(store);
    }
    for s in &stores {
        s.ready(Duration::from_secs(30)).await.expect("a leader");
    }
    stores
}

#[tokio::test]
async fn three_members_should_elect_one_leader_forward_follower_writes_and_read_linearizably() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let stores = three(&dirs).await;
    let leader = stores[0]
        .raft()
        .current_leader()
        .await
        .expect("a leader is known");
    let (lead, follower) = {
        let l = usize::try_from(leader - 1).expect("small id");
        (&stores[l], &stores[(l + 1) % 3])
    };
    for i in 0..20 {
        let key = format!("/core/configmaps/default/c{i}");
        lead.write(Command::Put {
            key: key.clone(),
            value: obj(&key, "x"),
            precondition: Precondition::Absent,
        })
        .await
        .expect("the leader writes");
    }
    // A follower's write reaches the leader over the raft transport, and it sees its own
    // write at once.
    let out = follower
        .write(Command::Put {
            key: "/core/configmaps/default/via-follower".into(),
            value: obj("via-follower", "x"),
            precondition: Precondition::Absent,
        })
        .await
        .expect("a follower's write is forwarded");
    let forwarded = rev(&out);
    assert!(
        follower
            .get("/core/configmaps/default/via-follower")
            .await
            .expect("get")
            .is_some(),
        "the follower has applied its own write when it answers"
    );
    // A precondition that fails on the leader fails for the follower's caller too.
    let again = follower
        .write(Command::Put {
            key: "/core/configmaps/default/via-follower".into(),
            value: obj("via-follower", "y"),
            precondition: Precondition::Absent,
        })
        .await
        .expect("answered");
    assert!(
        matches!(
            again,
            Outcome::Failed {
                reason: Failure::AlreadyExists,
                ..
            }
        ),
        "{again:?}"
    );
    // A linearizable read on any member sees every write acknowledged before it.
    let key = "/core/configmaps/default/linear";
    lead.write(Command::Put {
        key: key.into(),
        value: obj("linear", "x"),
        precondition: Precondition::Absent,
    })
    .await
    .expect("the leader writes");
    for s in &stores {
        s.linearize().await.expect("read index");
        assert!(
            s.get(key).await.expect("get").is_some(),
            "read after read index"
        );
    }
    let last = lead.revision().await.expect("revision");
    assert!(forwarded < last);
    // Every member applies every write, with the same revisions.
    for s in &stores {
        assert!(
            s.wait_for_revision(last, Duration::from_secs(10)).await,
            "a member applies up to revision {last}"
        );
        let page = s
            .list("/core/configmaps/default/", Default::default())
            .await
            .expect("list");
        assert_eq!(page.items.len(), 22);
        assert_eq!(page.revision, last);
    }
    for s in &stores {
        s.shutdown().await.expect("shutdown");
    }
}
