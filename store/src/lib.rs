//! The wasmkube store: an MVCC key-value store for Kubernetes objects on [redb], replicated
//! by [openraft]. Only the apiserver opens it, as only kube-apiserver talks to etcd.
//!
//! ```text
//! apiserver ─propose(Command)─► openraft ─► LogStore (raft-log WAL, synced) ─► StateMachine (redb)
//!                                                                              └─► change feed ─► Watch
//! ```
//!
//! - Every write goes through the raft log; concurrent writes are batched into one entry
//!   (group commit). The state machine gives each write the next global revision, which
//!   becomes the object's `metadata.resourceVersion`. The caller is answered after the entry
//!   is durable in the log and applied. The log is a write-ahead log of its own
//!   (`DATA_DIR/raft-log/`); the state machine commits to redb without syncing and is made
//!   durable from time to time, the log replaying what a crash lost.
//! - Updates and deletes compare-and-swap on the revision ([`Precondition::Revision`]).
//! - Lists read a consistent redb snapshot and report the revision they were read at; a list
//!   at an older revision is rebuilt from the change history.
//! - Watches replay the retained history after a revision, then follow the live feed.
//!   History is dropped by [`Store::compact`]; reading behind it is [`Error::Compacted`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasmkube_store::Error> {
//! use wasmkube_store::{Command, Config, Precondition, Store};
//! let store = Store::open(Config::new("/tmp/wasmkube-data")).await?;
//! let value = serde_json::value::to_raw_value(&serde_json::json!({"metadata": {"name": "a"}}))
//!     .expect("json");
//! store.write(Command::Put { key: "/core/configmaps/default/a".into(), value,
//!                            precondition: Precondition::Absent }).await?;
//! let page = store.list("/core/configmaps/default/", Default::default()).await?;
//! assert_eq!(page.items.len(), 1);
//! # Ok(()) }
//! ```

mod codec;
mod command;
mod log_store;
pub mod metrics;
pub mod network;
mod read;
mod state_machine;
mod tables;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use std::time::Duration;

use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, InitializeError, RaftError,
};
use openraft::{ChangeMembers, Raft, SnapshotPolicy};
use redb::{Database, ReadableDatabase};
use tokio::sync::{mpsc, oneshot, watch as notify};

pub use codec::{Change, ChangeKind};
pub use command::{Command, Failure, Node, NodeId, Outcome, Precondition, Proposal, TypeConfig};
pub use log_store::LogStore;
pub use network::Network;
pub use read::{KeyValue, ListOptions, ListResult};
pub use state_machine::StateMachine;
pub use watch::{Watch, WatchError};

/// Runs `f` on the database on tokio's blocking pool (redb's calls block on disk).
pub(crate) async fn blocking<T, F>(db: &Arc<Database>, f: F) -> Result<T, redb::Error>
where
    T: Send + 'static,
    F: FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
{
    let db = Arc::clone(db);
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .expect("redb task does not panic")
}

/// [`Config::cache_bytes`] unless set.
pub const DEFAULT_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// How to open a store.
#[derive(Clone)]
pub struct Config {
    /// Directory holding `store.redb`.
    pub data_dir: PathBuf,
    /// This member's raft id.
    pub node_id: NodeId,
    /// This member's address, as other members would reach it.
    pub advertise: String,
    /// This member's API server URL, recorded in the membership for clients
    /// ([`Member::api`]).
    pub api: String,
    /// How many changes the watch feed buffers before slow watchers are told to relist.
    pub feed_capacity: usize,
    /// Memory redb may use to cache pages of `store.redb` (redb's own default is 1 GiB, which
    /// a busy server fills: every revision of every object passes through it). The operating
    /// system's page cache still holds the file.
    pub cache_bytes: usize,
    /// The members of a new multi-member group, id to peer address (`host:port` of their
    /// [`network::router`] listeners), this member among them. Empty: a group of this member
    /// alone. Ignored when the store already holds a group.
    pub initial_members: BTreeMap<NodeId, String>,
    /// TLS towards the other members (the cluster CA, this member's client certificate);
    /// plain HTTP without it.
    pub peer_tls: Option<Arc<rustls::ClientConfig>>,
    /// This member joins a group that exists elsewhere: it starts no group of its own and
    /// waits for the leader to add it ([`Store::add_member`]).
    pub join: bool,
    /// How long a write or a linearizable read may wait for a majority before it fails with
    /// [`Error::Timeout`].
    pub write_timeout: Duration,
    /// Opens values that were transformed before they were written (none: values are read
    /// as stored).
    pub transformer: Option<Arc<dyn ValueTransformer>>,
}

impl Config {
    /// A single-member store in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            node_id: 1,
            advertise: "127.0.0.1:0".into(),
            api: String::new(),
            feed_capacity: 16 * 1024,
            cache_bytes: DEFAULT_CACHE_BYTES,
            initial_members: BTreeMap::new(),
            peer_tls: None,
            join: false,
            write_timeout: WRITE_TIMEOUT,
            transformer: None,
        }
    }
}

/// Store errors. Each variant is a different thing for the caller to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database file could not be used.
    #[error("database error")]
    Db(#[from] redb::Error),
    /// The requested revision is older than the retained history; relist.
    #[error("revision has been compacted (oldest retained: {compacted})")]
    Compacted {
        /// The compaction point.
        compacted: u64,
    },
    /// This member is not the raft leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// A write was not committed in time (no majority reachable); it may still be applied.
    #[error(
        "the write was not committed within {0:?}; the servers may have lost their majority, and it may still be applied"
    )]
    Timeout(Duration),
    /// A membership change was refused (an id already taken, the last voter removed).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Raft stopped; the process should exit.
    #[error("raft failed")]
    Fatal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store file is damaged (a torn or corrupted page redb could not repair); nothing
    /// is served from it.
    #[error("the store file {path} is damaged: {why}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What redb found.
        why: String,
    },
    /// This member's raft stopped on a failure of its own (a storage error: disk full, an I/O
    /// error); it takes part in nothing until restarted ([`Store::failure`]).
    #[error("this server's store stopped ({0}); it serves nothing until it is restarted")]
    Stopped(String),
    /// A stored value could not be opened by [`Config::transformer`].
    #[error("the value stored at {key} cannot be read: {why}")]
    Unreadable {
        /// Its key.
        key: String,
        /// Why.
        why: String,
    },
}

impl From<redb::DatabaseError> for Error {
    fn from(e: redb::DatabaseError) -> Self {
        Error::Db(e.into())
    }
}

impl From<redb::StorageError> for Error {
    fn from(e: redb::StorageError) -> Self {
        Error::Db(e.into())
    }
}

impl From<redb::TransactionError> for Error {
    fn from(e: redb::TransactionError) -> Self {
        Error::Db(e.into())
    }
}

/// Turns a stored value into the object it holds, for values the writer transformed before
/// writing (encryption at rest: the API server seals a Secret into an envelope before it
/// reaches the raft log, and gives the store this to open envelopes on every read — `get`,
/// `list`, watch history and the live feed — so the log, the snapshots and the database file
/// hold only what was written). Values it does not recognise pass through.
pub trait ValueTransformer: Send + Sync {
    /// The object stored at `key` as `stored`.
    ///
    /// # Errors
    /// A description of why the value cannot be opened (an unknown key, a forged value).
    fn open(&self, key: &str, stored: Bytes) -> Result<Bytes, String>;
}

/// An optional [`ValueTransformer`].
#[derive(Clone, Default)]
pub(crate) struct Transform(Option<Arc<dyn ValueTransformer>>);

impl Transform {
    pub(crate) fn open(&self, key: &str, stored: Bytes) -> Result<Bytes, Error> {
        match &self.0 {
            Some(t) => t.open(key, stored).map_err(|why| Error::Unreadable {
                key: key.to_owned(),
                why,
            }),
            None => Ok(stored),
        }
    }

    /// `change` with its values opened.
    pub(crate) fn open_change(&self, mut c: Change) -> Result<Change, Error> {
        if self.0.is_some() {
            c.value = self.open(&c.key, std::mem::take(&mut c.value))?;
            if let Some(prev) = c.prev.take() {
                c.prev = Some(self.open(&c.key, prev)?);
            }
        }
        Ok(c)
    }

    fn open_all(&self, items: &mut [KeyValue]) -> Result<(), Error> {
        if self.0.is_some() {
            for kv in items {
                kv.value = self.open(&kv.key, std::mem::take(&mut kv.value))?;
            }
        }
        Ok(())
    }
}

/// Builds a bare log store and state machine over a fresh database file, for openraft's
/// storage conformance suite (`openraft::testing::Suite`).
///
/// # Errors
/// [`Error::Db`] when the file cannot be created.
pub fn open_storage(path: &std::path::Path) -> Result<(LogStore, StateMachine), Error> {
    let db = Arc::new(Database::create(path)?);
    let feed = watch::Feed::new(16);
    let log = open_log_blocking(&path.with_extension("log"), &db)?;
    Ok((
        log,
        StateMachine::new(
            db,
            feed,
            Arc::new(notify::Sender::new(0)),
            Transform::default(),
        ),
    ))
}

/// Opens the raft log in `dir`; a log that cannot be read is [`Error::Damaged`].
fn open_log_blocking(dir: &std::path::Path, db: &Database) -> Result<LogStore, Error> {
    LogStore::open(dir, db).map_err(|e| Error::Damaged {
        path: dir.to_path_buf(),
        why: e.to_string(),
    })
}

/// Opens the raft log in `dir` (off the async threads: it replays its files).
async fn open_log(dir: PathBuf, db: Arc<Database>) -> Result<LogStore, Error> {
    tokio::task::spawn_blocking(move || open_log_blocking(&dir, &db))
        .await
        .expect("opening the raft log does not panic")
}

/// Refuses a state machine older than the start of the log: what lies between is in neither
/// (a store file restored from an old copy, or rolled back by redb past a damaged commit,
/// after the log was purged).
async fn check_log_covers(
    log: &LogStore,
    sm: &StateMachine,
    data_dir: &std::path::Path,
) -> Result<(), Error> {
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    let (applied, _) = sm
        .clone()
        .applied_state()
        .await
        .map_err(|e| Error::Fatal(Box::new(e)))?;
    let purged = log
        .clone()
        .get_log_state()
        .await
        .map_err(|e| Error::Fatal(Box::new(e)))?
        .last_purged_log_id;
    match purged {
        Some(p) if applied.is_none_or(|a| a.index < p.index) => Err(Error::Damaged {
            path: data_dir.join("store.redb"),
            why: format!(
                "it holds the changes up to raft log index {}, but the raft log in {} starts after {}",
                applied.map_or(0, |a| a.index),
                data_dir.join("raft-log").display(),
                p.index
            ),
        }),
        _ => Ok(()),
    }
}

/// An open store: a raft member plus direct read access to its state machine.
#[derive(Clone)]
pub struct Store {
    id: NodeId,
    raft: Raft<TypeConfig>,
    network: Network,
    db: Arc<Database>,
    feed: watch::Feed,
    published: Arc<notify::Sender<u64>>,
    proposer: mpsc::Sender<Pending>,
    /// Membership changes made here go one at a time (raft takes one at a time).
    membership: Arc<tokio::sync::Mutex<()>>,
    /// [`Config::write_timeout`].
    write_timeout: Duration,
    /// [`Config::transformer`].
    transform: Transform,
    /// [`Config::data_dir`].
    data_dir: PathBuf,
}

/// A command waiting to be proposed, and where its outcome goes.
type Pending = (Command, oneshot::Sender<Result<Outcome, Error>>);

/// Voters a group grows to; further members stay learners (raft's quorum gains nothing from
/// more, and every write waits for a majority of them).
const MAX_VOTERS: usize = 5;

/// One member of the group, as [`Store::members`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Its raft id.
    pub id: NodeId,
    /// Its peer listener's address.
    pub addr: String,
    /// Its API server's URL (empty when it has none).
    pub api: String,
    /// What it is in the group.
    pub role: Role,
    /// The last log index it holds: this member's applied index for itself; for others, the
    /// index replicated to them (known on the leader only).
    pub matched: Option<u64>,
}

/// A member's part in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// Leads: proposes every write.
    Leader,
    /// Votes and replicates.
    Follower,
    /// Replicates without a vote.
    Learner,
}

/// A refused membership change as a store error.
fn membership_refused(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::Membership(e.to_string())
        }
        e => Error::Fatal(Box::new(e)),
    }
}

/// Runs a membership change, again while one made before is still committing (raft takes
/// one change at a time; an earlier leader's may still be in flight), for up to 30 seconds.
async fn one_change<T, F, Fut>(change: F) -> Result<(), Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, RaftError<NodeId, ClientWriteError<NodeId, Node>>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match change().await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(membership_refused(e)),
        }
    }
}

/// A file a clean shutdown leaves beside the store file; without it, the next open checks
/// the whole file.
const CLEAN_MARK: &str = "store.clean";

/// [`Config::write_timeout`] unless set.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a member waits to apply a write it forwarded to the leader.
const FORWARD_APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Most commands in one raft entry.
const MAX_BATCH: usize = 512;

/// Proposals in flight at once in a group of several members. One at a time is the purest
/// group commit, and what a member alone does (the `bench` program: 16 clients write 40% less
/// with four in flight, from more and smaller fsyncs); but a group then waits a whole
/// replication round trip (leader fsync, follower fsync) per batch, and with a few in flight
/// raft pipelines them (64 clients: 4,940 to 8,103 writes/s on three members).
const IN_FLIGHT: usize = 4;

/// Group commit at the proposer: every command that arrives while [`IN_FLIGHT`] proposals are
/// in flight goes into the next raft entry together, so concurrent writers share one log
/// append, one fsync and one apply transaction.
async fn propose(raft: Raft<TypeConfig>, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let alone = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .nth(1)
            .is_none();
        // Alone, a proposal takes every slot: one at a time.
        let need = if alone { IN_FLIGHT } else { 1 };
        let Ok(slot) = Arc::clone(&slots)
            .acquire_many_owned(u32::try_from(need).unwrap_or(1))
            .await
        else {
            return;
        };
        let mut waiters = Vec::with_capacity(16);
        let mut commands = Vec::with_capacity(16);
        commands.push(first.0);
        waiters.push(first.1);
        while commands.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((c, w)) => {
                    commands.push(c);
                    waiters.push(w);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let batch = commands.len();
            let started = std::time::Instant::now();
            let result = raft.client_write(Proposal { commands }).await;
            drop(slot);
            tracing::debug!(target: "podtrace", batch, micros = started.elapsed().as_micros(), stage = "store committed");
            match result {
                Ok(resp) => {
                    for (w, outcome) in waiters.into_iter().zip(resp.data) {
                        let _ = w.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    let leader = match &e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                            Some(f.leader_id)
                        }
                        _ => None,
                    };
                    for w in waiters {
                        let _ = w.send(Err(match leader {
                            Some(leader) => Error::NotLeader { leader },
                            None => Error::Fatal(e.to_string().into()),
                        }));
                    }
                }
            }
        });
    }
}

impl Store {
    /// Opens (or creates) the store in `config.data_dir`, starts its raft member, initializes a
    /// single-member group on first start, and waits until it leads.
    ///
    /// # Errors
    /// [`Error::Db`] when the file cannot be opened (for example, another process holds it).
    pub async fn open(config: Config) -> Result<Store, Error> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::Db(redb::Error::Io(e)))?;
        let path = config.data_dir.join("store.redb");
        let cache = config.cache_bytes;
        let shown = path.clone();
        let clean = config.data_dir.join(CLEAN_MARK);
        let db = tokio::task::spawn_blocking(move || {
            let existed = path.exists();
            let mut db = Database::builder().set_cache_size(cache).create(&path)?;
            // After a crash, every page is checked: the state machine commits without syncing,
            // so redb's own recovery may not read what the crash (or the disk) damaged.
            if existed && std::fs::remove_file(&clean).is_err() {
                db.check_integrity()?;
            }
            Ok::<_, redb::DatabaseError>(db)
        })
        .await
        .expect("open does not panic")
        .map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)) => {
                Error::Damaged { path: shown, why }
            }
            e => Error::from(e),
        })?;
        let db = Arc::new(db);
        let feed = watch::Feed::new(config.feed_capacity);
        let log = open_log(config.data_dir.join("raft-log"), db.clone()).await?;
        let published = Arc::new(notify::Sender::new(0));
        let transform = Transform(config.transformer.clone());
        let sm = StateMachine::new(
            db.clone(),
            feed.clone(),
            published.clone(),
            transform.clone(),
        );
        let raft_config = openraft::Config {
            cluster_name: "wasmkube".into(),
            // Followers call an election after 0.15–0.3 s without a heartbeat (three to six
            // beats late); a vote is granted only once the voter's own leader has been silent
            // that long too (the `failover` benchmark measures kill to first write).
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            max_payload_entries: 1024,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(20_000),
            max_in_snapshot_log_to_keep: 1_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Fatal(Box::new(e)))?;
        check_log_covers(&log, &sm, &config.data_dir).await?;
        let network = Network::new(config.peer_tls.clone());
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network.clone(),
            log,
            sm,
        )
        .await
        .map_err(|e| Error::Fatal(Box::new(e)))?;
        let single = config.initial_members.is_empty() && !config.join;
        let members: BTreeMap<NodeId, Node> = if single {
            BTreeMap::from([(config.node_id, config.advertise.clone())])
        } else {
            config.initial_members.clone()
        }
        .into_iter()
        .map(|(id, addr)| {
            let api = if id == config.node_id {
                config.api.clone()
            } else {
                String::new()
            };
            (id, Node { addr, api })
        })
        .collect();
        if !config.join {
            match raft.initialize(members).await {
                Ok(()) => {}
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {} // restart
                Err(e) => return Err(Error::Fatal(Box::new(e))),
            }
        }
        let (proposer, pending) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(propose(raft.clone(), pending));
        let store = Store {
            id: config.node_id,
            raft,
            network,
            db,
            feed,
            published,
            proposer,
            membership: Arc::default(),
            write_timeout: config.write_timeout,
            transform,
            data_dir: config.data_dir.clone(),
        };
        let current = store.revision().await?;
        store.published.send_modify(|p| *p = (*p).max(current));
        if store.alone() {
            store.ready(Duration::from_secs(60)).await?;
        }
        Ok(store)
    }

    /// Whether this member is the group's only voter (a group of one, or one about to be
    /// joined by others): it elects itself without anyone to talk to.
    pub fn alone(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let mut voters = m.membership_config.membership().voter_ids();
        voters.next() == Some(self.id) && voters.next().is_none()
    }

    /// Waits until the group has a leader and this member has applied every entry it held
    /// when it started, so reads see every write acknowledged before. [`Store::open`] does
    /// this itself for a member alone ([`Store::alone`]); a member of a larger group first
    /// serves its [`network::router`], then waits here.
    ///
    /// # Errors
    /// [`Error::Fatal`] when that does not happen within `timeout`.
    pub async fn ready(&self, timeout: Duration) -> Result<(), Error> {
        let fatal = |e| Error::Fatal(Box::new(e));
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map_err(fatal)?;
        // The leader's first entry of its term commits everything before it; wait until
        // it is applied so reads after `open` see every acknowledged write.
        if let Some(index) = metrics.last_log_index {
            self.raft
                .wait(Some(timeout))
                .applied_index_at_least(Some(index), "replay the log")
                .await
                .map_err(fatal)?;
        }
        Ok(())
    }

    /// Proposes a command through the leader and waits until it is durable and applied there:
    /// a follower forwards it to the leader over the raft transport (and again to a new
    /// leader, a few times, when leadership moves meanwhile).
    ///
    /// # Errors
    /// [`Error::NotLeader`] when no leader takes it; [`Error::Timeout`] when it is not
    /// committed within [`Config::write_timeout`] (a leader cut off from its majority: the
    /// write may still be applied if it reached one); [`Error::Fatal`] when raft stopped.
    pub async fn write(&self, command: Command) -> Result<Outcome, Error> {
        self.unless_stopped()?;
        let key = command.key().map(str::to_owned);
        let operation = match &command {
            Command::Put {
                precondition: Precondition::Absent,
                ..
            } => "create",
            Command::Put { .. } => "update",
            Command::Delete { .. } => "delete",
            Command::Compact { .. } => "compact",
        };
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.write_timeout, self.write_through_leader(command))
            .await
            .map_err(|_| Error::Timeout(self.write_timeout));
        metrics::observe(
            operation,
            key.as_deref().unwrap_or_default(),
            started.elapsed(),
        );
        let result = result?;
        match self.why_failed(result)? {
            Outcome::Written { revision, value } => Ok(Outcome::Written {
                revision,
                value: self
                    .transform
                    .open(key.as_deref().unwrap_or_default(), value)?,
            }),
            other => Ok(other),
        }
    }

    /// Why raft stopped on its own (a storage failure, such as a full disk), if it did;
    /// `None` while it runs and after a clean shutdown.
    pub fn failure(&self) -> Option<String> {
        match &self.raft.metrics().borrow().running_state {
            Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Waits until raft stops on a failure of its own ([`Store::failure`]); why. Never
    /// returns for a store that runs until it is shut down.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes.
    pub async fn failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(why) = self.failure() {
                return why;
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    fn unless_stopped(&self) -> Result<(), Error> {
        self.failure()
            .map_or(Ok(()), |why| Err(Error::Stopped(why)))
    }

    /// A fatal error says why, when raft stopped on a failure of its own.
    fn why_failed<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        match (result, self.failure()) {
            (Err(Error::Fatal(_)), Some(why)) => Err(Error::Stopped(why)),
            (result, _) => result,
        }
    }

    async fn write_through_leader(&self, command: Command) -> Result<Outcome, Error> {
        if self.alone() {
            return self.write_here(command).await;
        }
        let command = &command;
        self.with_leader(|leader| async move {
            if leader == self.id {
                self.write_here(command.clone()).await
            } else {
                self.forward(leader, command).await
            }
        })
        .await
    }

    /// Runs `attempt` against whoever leads (this member or another), waiting out an election
    /// and following "not the leader" answers, until one answers otherwise. Only refusals are
    /// retried (a member that does not lead, a leader that cannot be reached), never a request
    /// whose answer was lost, so nothing is proposed twice. The caller bounds it in time.
    async fn with_leader<T, F, Fut>(&self, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut(NodeId) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut hint: Option<NodeId> = None;
        loop {
            // (The metrics guard must not live across an await: raft's core would block on it.)
            let current = self.raft.metrics().borrow().current_leader;
            let Some(leader) = hint.take().or(current) else {
                let _ = self
                    .raft
                    .wait(Some(Duration::from_millis(500)))
                    .metrics(|m| m.current_leader.is_some(), "a leader")
                    .await;
                continue;
            };
            match attempt(leader).await {
                Err(Error::NotLeader { leader: next }) => {
                    hint = next.filter(|n| *n != leader);
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                other => return other,
            }
        }
    }

    /// Sends `command` to member `leader` to be written there.
    async fn forward(&self, leader: NodeId, command: &Command) -> Result<Outcome, Error> {
        let Some(addr) = self.peer_addr(leader) else {
            return Err(Error::NotLeader { leader: None });
        };
        let outcome = self.network.forward(&addr, command).await?;
        // Read-your-writes on this member too: answer once it has applied the write.
        if let Outcome::Written { revision, .. } | Outcome::Compacted { revision } = &outcome
            && !self
                .wait_for_revision(*revision, FORWARD_APPLY_TIMEOUT)
                .await
        {
            return Err(Error::Fatal(
                format!("revision {revision} was written but not applied here in time").into(),
            ));
        }
        Ok(outcome)
    }

    /// Waits until this member has applied every write acknowledged anywhere before the call,
    /// so a read that follows is linearizable (raft's read index: the leader confirms with a
    /// quorum that it still leads; a follower asks the leader over the raft transport).
    ///
    /// # Errors
    /// [`Error::NotLeader`] when no leader can confirm; [`Error::Fatal`] when raft stopped.
    pub async fn linearize(&self) -> Result<(), Error> {
        self.unless_stopped()?;
        let result = tokio::time::timeout(self.write_timeout, self.linearize_through_leader())
            .await
            .map_err(|_| Error::Timeout(self.write_timeout))?;
        self.why_failed(result)
    }

    async fn linearize_through_leader(&self) -> Result<(), Error> {
        let index = self
            .with_leader(|leader| async move {
                if leader == self.id {
                    self.read_index_here().await
                } else {
                    let addr = self
                        .peer_addr(leader)
                        .ok_or(Error::NotLeader { leader: None })?;
                    self.network.read_index(&addr).await
                }
            })
            .await?;
        if let Some(index) = index {
            self.raft
                .wait(Some(FORWARD_APPLY_TIMEOUT))
                .applied_index_at_least(Some(index), "linearizable read")
                .await
                .map_err(|e| Error::Fatal(Box::new(e)))?;
        }
        Ok(())
    }

    /// The read index, when this member leads.
    pub(crate) async fn read_index_here(&self) -> Result<Option<u64>, Error> {
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map(|id| id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    leader: f.leader_id,
                })
            }
            // Leading, but no majority answers: as good as no leader (a partition).
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(Error::NotLeader { leader: None })
            }
            Err(e) => Err(Error::Fatal(Box::new(e))),
        }
    }

    /// Adds member `id` to the group: as a learner first, answered once it has caught up (the
    /// log, or a snapshot when the log behind it is purged), then as a voter while the group
    /// has fewer than five. A follower asks the leader to do it. Adding a member again with
    /// the same addresses succeeds and changes nothing.
    ///
    /// # Errors
    /// [`Error::Membership`] when the id is taken by another address; [`Error::NotLeader`]
    /// when no leader takes the change; [`Error::Fatal`] when it fails.
    pub async fn add_member(&self, id: NodeId, node: Node) -> Result<(), Error> {
        let node = &node;
        let add = self.with_leader(|leader| async move {
            if leader == self.id {
                self.add_member_here(id, node.clone()).await
            } else {
                let addr = self
                    .peer_addr(leader)
                    .ok_or(Error::NotLeader { leader: None })?;
                self.network.add_member(&addr, id, node).await
            }
        });
        tokio::time::timeout(network::CATCH_UP_TIMEOUT, add)
            .await
            .map_err(|_| Error::Timeout(network::CATCH_UP_TIMEOUT))?
    }

    /// [`Store::add_member`] on the leader.
    pub(crate) async fn add_member_here(&self, id: NodeId, node: Node) -> Result<(), Error> {
        let existing = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config.membership().get_node(&id).cloned()
        };
        if let Some(existing) = existing
            && existing != node
        {
            return Err(Error::Membership(format!(
                "member {id} is already {existing}"
            )));
        }
        let _one_at_a_time = self.membership.lock().await;
        one_change(|| self.raft.add_learner(id, node.clone(), true)).await?;
        let voters = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        tracing::debug!(id, voters, "learner caught up");
        if voters < MAX_VOTERS {
            one_change(|| {
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
            })
            .await?;
        }
        Ok(())
    }

    /// Removes member `id` from the group (a voter stops voting and leaves with it); a
    /// follower asks the leader to do it. The last voter cannot be removed.
    ///
    /// # Errors
    /// [`Error::Membership`] when `id` is not a member or is the last voter;
    /// [`Error::NotLeader`] when no leader takes the change; [`Error::Fatal`] when it fails.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), Error> {
        let remove = self.with_leader(|leader| async move {
            if leader == self.id {
                self.remove_member_here(id).await
            } else {
                let addr = self
                    .peer_addr(leader)
                    .ok_or(Error::NotLeader { leader: None })?;
                self.network.remove_member(&addr, id).await
            }
        });
        tokio::time::timeout(self.write_timeout, remove)
            .await
            .map_err(|_| Error::Timeout(self.write_timeout))?
    }

    /// [`Store::remove_member`] on the leader.
    pub(crate) async fn remove_member_here(&self, id: NodeId) -> Result<(), Error> {
        let _one_at_a_time = self.membership.lock().await;
        let (known, voters) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            (
                membership.get_node(&id).is_some(),
                membership
                    .voter_ids()
                    .collect::<std::collections::BTreeSet<_>>(),
            )
        };
        if !known {
            return Err(Error::Membership(format!("{id} is not a member")));
        }
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Error::Membership(format!(
                    "{id} is the last voter; the group would have no quorum"
                )));
            }
            one_change(|| {
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters([id].into()), false)
            })
            .await?;
        } else {
            one_change(|| {
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
            })
            .await?;
        }
        Ok(())
    }

    /// Whether this member leads the group now.
    pub fn leads(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// The leader, when it is another member.
    fn leader_elsewhere(&self) -> Option<NodeId> {
        // (The metrics guard must not live across an await: raft's core would block on it.)
        let current = self.raft.metrics().borrow().current_leader;
        current.filter(|l| *l != self.id)
    }

    /// The group's members, by id, as the leader knows them (it alone knows how far each has
    /// replicated); as this member knows them when the leader cannot be asked.
    pub async fn members(&self) -> Vec<Member> {
        if let Some(leader) = self.leader_elsewhere()
            && let Some(addr) = self.peer_addr(leader)
        {
            match self.network.members(&addr).await {
                Ok(members) => return members,
                Err(e) => tracing::debug!(error = %e, "the leader's view of the members"),
            }
        }
        self.members_here()
    }

    /// The group's members as this member knows them, by id.
    pub fn members_here(&self) -> Vec<Member> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched = m.replication.clone().unwrap_or_default();
        membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                addr: node.addr.clone(),
                api: node.api.clone(),
                role: if m.current_leader == Some(*id) {
                    Role::Leader
                } else if voters.contains(id) {
                    Role::Follower
                } else {
                    Role::Learner
                },
                matched: if *id == self.id {
                    m.last_applied.map(|l| l.index)
                } else {
                    matched.get(id).copied().flatten().map(|l| l.index)
                },
            })
            .collect()
    }

    /// The peer address of member `id`, from the current membership.
    fn peer_addr(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// Proposes a command on this member, which must lead.
    ///
    /// # Errors
    /// [`Error::NotLeader`] when another member leads; [`Error::Fatal`] when raft stopped.
    pub(crate) async fn write_here(&self, command: Command) -> Result<Outcome, Error> {
        let (tx, rx) = oneshot::channel();
        self.proposer
            .send((command, tx))
            .await
            .map_err(|_| Error::Fatal("the store is shut down".into()))?;
        rx.await
            .map_err(|_| Error::Fatal("the store is shut down".into()))?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> Result<T, Error> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            f(&txn)
        })
        .await
        .expect("read task does not panic")
    }

    /// The object at `key`, if any.
    ///
    /// # Errors
    /// [`Error::Db`] on a storage failure.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        let started = std::time::Instant::now();
        let owned = key.to_string();
        let kv = self.read(move |txn| Ok(read::get(txn, &owned)?)).await;
        metrics::observe("get", key, started.elapsed());
        let mut kv = kv?;
        self.transform.open_all(kv.as_mut_slice())?;
        Ok(kv)
    }

    /// The current revision (the last applied log index).
    ///
    /// # Errors
    /// [`Error::Db`] on a storage failure.
    pub async fn revision(&self) -> Result<u64, Error> {
        self.read(|txn| Ok(read::position(txn)?.revision)).await
    }

    /// Objects whose key starts with `prefix`, sorted by key.
    ///
    /// # Errors
    /// [`Error::Compacted`] when `opts.revision` is older than the retained history.
    pub async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, Error> {
        let started = std::time::Instant::now();
        let owned = prefix.to_string();
        let list = self.read(move |txn| read::list(txn, &owned, &opts)).await;
        metrics::observe("list", prefix, started.elapsed());
        let mut list = list?;
        self.transform.open_all(&mut list.items)?;
        Ok(list)
    }

    /// Changes under `prefix` after revision `after`.
    ///
    /// # Errors
    /// [`Error::Compacted`] when changes after `after` are no longer retained.
    pub async fn watch(&self, prefix: &str, after: u64) -> Result<Watch, Error> {
        // Subscribe before reading the history: a change committed in between shows up in
        // both and is dropped from the live side by revision.
        let live = self.feed.subscribe(prefix);
        let prefix = prefix.to_string();
        let p = prefix.clone();
        let (history, seen) = self
            .read(move |txn| {
                let pos = read::position(txn)?;
                if after < pos.compacted {
                    return Err(Error::Compacted {
                        compacted: pos.compacted,
                    });
                }
                Ok((
                    read::history(txn, &p, after, pos.revision)?,
                    pos.revision.max(after),
                ))
            })
            .await?;
        let history = history
            .into_iter()
            .map(|c| self.transform.open_change(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Watch::new(prefix, history, seen, live))
    }

    /// The compaction point: watches and lists from older revisions fail.
    ///
    /// # Errors
    /// [`Error::Db`] on a storage failure.
    pub async fn compacted(&self) -> Result<u64, Error> {
        self.read(|txn| Ok(read::position(txn)?.compacted)).await
    }

    /// Drops the change history up to `revision` (through raft, like every write).
    ///
    /// # Errors
    /// As [`Store::write`].
    pub async fn compact(&self, revision: u64) -> Result<u64, Error> {
        match self.write(Command::Compact { revision }).await? {
            Outcome::Compacted { revision } => Ok(revision),
            other => unreachable!("compact answered {other:?}"),
        }
    }

    /// The revision up to which every change has been handed to the watch feed. A watcher
    /// that drained its feed after reading this has seen every change at or below it, so
    /// it may report this revision in a bookmark.
    pub fn published(&self) -> u64 {
        *self.published.borrow()
    }

    /// Waits until the store has applied and published `revision`, for at most `timeout`.
    /// Returns whether it got there.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes.
    pub async fn wait_for_revision(&self, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.published.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The routes of this member's peer listener: the raft RPCs and writes forwarded by the
    /// other members (see [`network`]).
    pub fn peer_router(&self) -> axum::Router {
        network::router(self.clone())
    }

    /// The raft transport's client side (for partition tests: [`Network::cut`]).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The raft handle, for metrics and membership.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Stops raft and makes every applied change durable.
    ///
    /// # Errors
    /// [`Error::Fatal`] when raft did not stop cleanly.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| Error::Fatal(Box::new(e)))?;
        let db = self.db.clone();
        let clean = self.data_dir.join(CLEAN_MARK);
        tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            db.begin_write()?.commit()?;
            std::fs::write(clean, b"")?;
            Ok(())
        })
        .await
        .expect("final commit does not panic")?;
        Ok(())
    }
}
