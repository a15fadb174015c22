//! A group of three members on loopback, talking over the raft transport's HTTP listeners.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use wasmkube_store::{Command, Config, Failure, Outcome, Precondition, Store};

use super::mvcc::{obj, rev};

/// Writes ConfigMap `name` (which must not exist) with `data` through `store`.
async fn create(store: &Store, name: &str, data: &str) -> Result<Outcome, wasmkube_store::Error> {
    let key = format!("/core/configmaps/default/{name}");
    store
        .write(Command::Put {
            value: obj(name, data),
            key,
            precondition: Precondition::Absent,
        })
        .await
}

/// `n` loopback listeners for peer traffic, and their addresses.
async fn listeners(n: usize) -> (Vec<tokio::net::TcpListener>, Vec<String>) {
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..n {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        addrs.push(l.local_addr().expect("addr").to_string());
        listeners.push(l);
    }
    (listeners, addrs)
}

/// Opens a member and serves its peer listener for the rest of the test.
async fn member(config: Config, listener: tokio::net::TcpListener, tls: Option<&Tls>) -> Store {
    let config = Config {
        peer_tls: tls.map(|t| Arc::clone(&t.client)),
        ..config
    };
    let store = Store::open(config).await.expect("open");
    tokio::spawn(wasmkube_store::network::serve(
        listener,
        store.clone(),
        tls.map(|t| Arc::clone(&t.server)),
        std::future::pending(),
    ));
    store
}

/// A member alone in `dirs[0]` (its own group), and members waiting to join in the others;
/// their peer addresses.
async fn first_and_joiners(dirs: &[tempfile::TempDir]) -> (Vec<Store>, Vec<String>) {
    let (listeners, addrs) = listeners(dirs.len()).await;
    let mut stores = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let config = Config {
            node_id: i as u64 + 1,
            advertise: addrs[i].clone(),
            join: i > 0,
            ..Config::new(dirs[i].path())
        };
        stores.push(member(config, listener, None).await);
    }
    (stores, addrs)
}

/// Three members in their own directories, each serving its peer listener (over mutual TLS
/// when `tls` gives each member's server and client configurations).
async fn three(dirs: &[tempfile::TempDir; 3], tls: Option<&Tls>) -> Vec<Store> {
    three_with(dirs, tls, |c| c).await.0
}

/// [`three`] with each member's configuration adjusted; also their peer addresses.
async fn three_with(
    dirs: &[tempfile::TempDir; 3],
    tls: Option<&Tls>,
    adjust: impl Fn(Config) -> Config,
) -> (Vec<Store>, Vec<String>) {
    let (listeners, addrs) = listeners(3).await;
    let members: BTreeMap<u64, String> = (1..).zip(addrs.iter().cloned()).collect();
    let mut stores = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let config = adjust(Config {
            node_id: i as u64 + 1,
            advertise: addrs[i].clone(),
            initial_members: members.clone(),
            ..Config::new(dirs[i].path())
        });
        stores.push(member(config, listener, tls).await);
    }
    for s in &stores {
        s.ready(Duration::from_secs(30)).await.expect("a leader");
    }
    (stores, addrs)
}

/// One member certificate from a test CA (valid for 127.0.0.1, as server and as client), and
/// the TLS configurations built from it.
struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    roots: Arc<rustls::RootCertStore>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn test_pki() -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer};
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.clone().self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).expect("member cert");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let roots = Arc::new(roots);
    let chain = vec![cert.der().clone()];
    let private =
        || rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("private key");
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .expect("client verifier");
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), private())
        .expect("server config");
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(Arc::clone(&roots))
        .with_client_auth_cert(chain, private())
        .expect("client config");
    Tls {
        server: Arc::new(server),
        client: Arc::new(client),
        roots,
    }
}

#[tokio::test]
async fn three_members_should_elect_one_leader_forward_follower_writes_and_read_linearizably() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let stores = three(&dirs, None).await;
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
    let out = create(follower, "via-follower", "x")
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
    let again = create(follower, "via-follower", "y")
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

#[tokio::test]
async fn members_should_talk_over_mutual_tls_and_refuse_a_peer_without_a_certificate() {
    let tls = test_pki();
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let stores = three(&dirs, Some(&tls)).await;
    let leader = stores[0].raft().current_leader().await.expect("a leader");
    let follower = &stores[usize::try_from(leader % 3).expect("small")];
    let out = create(follower, "tls", "x")
        .await
        .expect("forwarded over mutual TLS");
    for s in &stores {
        assert!(
            s.wait_for_revision(rev(&out), Duration::from_secs(10))
                .await
        );
    }
    // A client that trusts the CA but shows no certificate gets no answer.
    let addr = stores[0]
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&1)
        .expect("member 1")
        .addr
        .clone();
    let anonymous = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(Arc::clone(&tls.roots))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let answered = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(anonymous))
            .connect(name, tcp)
            .await?;
        tls.write_all(b"POST /raft/vote HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
            .await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        std::io::Result::Ok(buf)
    }
    .await;
    match answered {
        Err(_) => {}
        Ok(bytes) => assert!(
            bytes.is_empty(),
            "answered: {}",
            String::from_utf8_lossy(&bytes)
        ),
    }
    for s in &stores {
        s.shutdown().await.expect("shutdown");
    }
}

#[tokio::test]
async fn a_group_should_grow_from_one_member_by_adding_learners_that_catch_up_then_vote() {
    use wasmkube_store::Role;
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let (stores, addrs) = first_and_joiners(&dirs).await;
    let first = &stores[0];
    // History written while the group has one member, which the newcomers must catch up on.
    for i in 0..50 {
        let key = format!("/core/configmaps/default/early-{i}");
        first
            .write(Command::Put {
                key: key.clone(),
                value: obj(&key, "x"),
                precondition: Precondition::Absent,
            })
            .await
            .expect("write alone");
    }
    let early = first.revision().await.expect("revision");
    for id in [2u64, 3] {
        first
            .add_member(
                id,
                wasmkube_store::Node {
                    addr: addrs[usize::try_from(id - 1).expect("small")].clone(),
                    api: String::new(),
                },
            )
            .await
            .expect("add a member");
    }
    let members = first.members().await;
    assert_eq!(
        members.iter().map(|m| (m.id, m.role)).collect::<Vec<_>>(),
        [(1, Role::Leader), (2, Role::Follower), (3, Role::Follower)],
        "{members:?}"
    );
    // The leader learns what each holds from the next replication round.
    first
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| {
                m.replication
                    .as_ref()
                    .is_some_and(|r| r.len() == 3 && r.values().all(Option::is_some))
            },
            "every member's replicated index is known",
        )
        .await
        .expect("replication progress");
    let members = first.members().await;
    assert!(members.iter().all(|m| m.matched.is_some()), "{members:?}");
    for s in &stores[1..] {
        s.ready(Duration::from_secs(30)).await.expect("a leader");
        assert!(
            s.wait_for_revision(early, Duration::from_secs(10)).await,
            "a newcomer holds the history written before it joined"
        );
    }
    // A newcomer takes writes too (forwarded to the leader).
    let out = create(&stores[2], "late", "x").await.expect("forwarded");
    for s in &stores {
        assert!(
            s.wait_for_revision(rev(&out), Duration::from_secs(10))
                .await
        );
        let page = s
            .list("/core/configmaps/default/", Default::default())
            .await
            .expect("list");
        assert_eq!(page.items.len(), 51);
    }
    for s in &stores {
        s.shutdown().await.expect("shutdown");
    }
}

#[tokio::test]
async fn a_member_added_after_the_log_was_purged_should_catch_up_from_a_snapshot() {
    let dirs = [(); 2].map(|()| tempfile::tempdir().expect("tempdir"));
    let (stores, addrs) = first_and_joiners(&dirs).await;
    let (first, second) = (&stores[0], &stores[1]);
    for i in 0..100 {
        create(first, &format!("before-{i}"), "x")
            .await
            .expect("write alone");
    }
    // Snapshot everything and drop the log behind it: only a snapshot can bring a newcomer up.
    let applied = first
        .raft()
        .metrics()
        .borrow()
        .last_applied
        .expect("applied")
        .index;
    // (A metrics guard must never be held across an await: bind what it shows first.)
    first.raft().trigger().snapshot().await.expect("snapshot");
    let last = first.raft().metrics().borrow().last_applied;
    first
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .snapshot(last.expect("applied"), "snapshot built")
        .await
        .expect("snapshot");
    first
        .raft()
        .trigger()
        .purge_log(applied)
        .await
        .expect("purge");
    let snapshot = first.raft().metrics().borrow().snapshot;
    first
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .purged(snapshot, "log purged")
        .await
        .expect("purged");
    let revision = first.revision().await.expect("revision");
    // A watcher on the newcomer, open before it catches up, must learn that it missed changes.
    let mut watch = second
        .watch("/core/configmaps/", 0)
        .await
        .expect("watch the newcomer");
    first
        .add_member(
            2,
            wasmkube_store::Node {
                addr: addrs[1].clone(),
                api: String::new(),
            },
        )
        .await
        .expect("add after purge");
    second.ready(Duration::from_secs(30)).await.expect("leader");
    assert!(
        second
            .wait_for_revision(revision, Duration::from_secs(10))
            .await
    );
    let page = second
        .list("/core/configmaps/default/", Default::default())
        .await
        .expect("list");
    assert_eq!((page.items.len(), page.revision), (100, revision));
    assert!(
        second.raft().metrics().borrow().snapshot.is_some(),
        "the newcomer installed a snapshot"
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the watch ends");
    assert_eq!(
        ended.map(|c| c.revision),
        Err(wasmkube_store::WatchError::Reset),
        "the watcher relists instead of missing what the snapshot jumped over"
    );
    for s in &stores {
        s.shutdown().await.expect("shutdown");
    }
}

#[tokio::test]
async fn membership_changes_should_be_forwarded_to_the_leader_and_refuse_what_would_break_the_group()
 {
    use wasmkube_store::{Error, Node, Role};
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let (stores, addrs) = first_and_joiners(&dirs).await;
    let node = |i: usize| Node {
        addr: addrs[i].clone(),
        api: format!("https://api-{i}"),
    };
    stores[0].add_member(2, node(1)).await.expect("add 2");
    stores[1]
        .ready(Duration::from_secs(30))
        .await
        .expect("leader");
    // Through a follower: it asks the leader.
    stores[1]
        .add_member(3, node(2))
        .await
        .expect("add 3 through 2");
    stores[1]
        .add_member(3, node(2))
        .await
        .expect("adding the same member again changes nothing");
    assert!(
        matches!(
            stores[1].add_member(3, node(0)).await,
            Err(Error::Membership(_))
        ),
        "an id taken by another address is refused"
    );
    let members = stores[0].members().await;
    assert_eq!(
        members
            .iter()
            .map(|m| (m.id, m.role, m.api.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, Role::Leader, ""),
            (2, Role::Follower, "https://api-1"),
            (3, Role::Follower, "https://api-2"),
        ]
    );
    let view = |members: Vec<wasmkube_store::Member>| {
        members
            .into_iter()
            .map(|m| (m.id, m.role, m.matched.is_some()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        view(stores[2].members().await),
        view(stores[0].members_here()),
        "a follower answers with the leader's view"
    );
    stores[1]
        .remove_member(3)
        .await
        .expect("remove 3 through 2");
    assert!(matches!(
        stores[1].remove_member(9).await,
        Err(Error::Membership(_))
    ));
    assert_eq!(
        stores[0]
            .members()
            .await
            .iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    let out = create(&stores[1], "after-removal", "x")
        .await
        .expect("two members still write");
    assert!(
        stores[0]
            .wait_for_revision(rev(&out), Duration::from_secs(10))
            .await
    );
    stores[0].remove_member(2).await.expect("remove 2");
    assert!(
        matches!(stores[0].remove_member(1).await, Err(Error::Membership(_))),
        "the last voter stays"
    );
    create(&stores[0], "alone-again", "x")
        .await
        .expect("a group of one writes");
    for s in &stores {
        s.shutdown().await.expect("shutdown");
    }
}

#[tokio::test]
async fn a_leader_cut_off_from_its_majority_should_acknowledge_nothing_while_the_majority_goes_on()
{
    use wasmkube_store::Error;
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let (stores, addrs) = three_with(&dirs, None, |c| Config {
        write_timeout: Duration::from_secs(2),
        ..c
    })
    .await;
    let leader_id = stores[0]
        .raft()
        .metrics()
        .borrow()
        .current_leader
        .expect("a leader");
    let l = usize::try_from(leader_id - 1).expect("small");
    let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    create(&stores[l], "before", "x")
        .await
        .expect("write before");

    // The partition: the leader alone on one side.
    stores[l]
        .network()
        .cut(others.iter().map(|i| addrs[*i].clone()));
    for i in &others {
        stores[*i].network().cut([addrs[l].clone()]);
    }
    let majority = &stores[others[0]];
    majority
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.current_leader.is_some_and(|id| id != leader_id),
            "the majority elects another leader",
        )
        .await
        .expect("a new leader");
    let mut acknowledged = vec!["before".to_owned()];
    for i in 0..5 {
        let name = format!("majority-{i}");
        create(&stores[others[i % 2]], &name, "x")
            .await
            .expect("the majority writes");
        acknowledged.push(name);
    }
    // The old leader acknowledges nothing: no majority answers it.
    let refused = create(&stores[l], "minority", "x").await;
    assert!(
        matches!(refused, Err(Error::Timeout(_) | Error::NotLeader { .. })),
        "{refused:?}"
    );
    let read = stores[l].linearize().await;
    assert!(
        matches!(read, Err(Error::Timeout(_) | Error::NotLeader { .. })),
        "no linearizable read without a majority: {read:?}"
    );

    stores[l].network().heal();
    for i in &others {
        stores[*i].network().heal();
    }
    let revision = majority.revision().await.expect("revision");
    for s in &stores {
        assert!(
            s.wait_for_revision(revision, Duration::from_secs(10)).await,
            "every member catches up"
        );
    }
    stores[l].linearize().await.expect("healed: reads again");
    let lists: Vec<Vec<String>> = futures::future::join_all(stores.iter().map(|s| async {
        s.linearize().await.expect("linearize");
        s.list("/core/configmaps/default/", Default::default())
            .await
            .expect("list")
            .items
            .iter()
            .map(|kv| kv.key.rsplit('/').next().unwrap_or_default().to_owned())
            .collect()
    }))
    .await;
    assert!(
        lists.iter().all(|l| *l == lists[0]),
        "one history: {lists:?}"
    );
    for name in &acknowledged {
        assert!(
            lists[0].contains(name),
            "{name} was acknowledged and is kept"
        );
    }
    for s in &stores {
        s.shutdown().await.expect("shutdown");
    }
}
