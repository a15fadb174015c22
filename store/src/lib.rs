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
mod membership;
pub mod metrics;
pub mod network;
mod open;
mod read;
mod state_machine;
mod stepout;
mod tables;
mod watch;
mod writes;

pub use membership::{Member, Role};
use open::CLEAN_MARK;
pub use open::open_storage;
use writes::Pending;
pub use writes::WRITE_TIMEOUT;

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

/// [`Config::cache_bytes`] unless set. Measured with 10,000 and 30,000 pods written through
/// the API (the `memory` benchmark): 32 MiB wrote as fast as 256 MiB (30,000 creates in 4.4
/// against 4.9 s, their status in 7.9 against 8.5 s) and held 300 MiB less.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

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
    /// How many changes the watch feed buffers before slow watchers are told they lagged
    /// ([`WatchError::Lagged`]; they may continue from the history with [`Store::watch`]).
    /// Each buffered change holds its object and the one it replaced.
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
    /// How long one sync of the raft log may take on a leader whose group goes on without it
    /// before this member steps out of the group (its raft stops and it says why); none:
    /// never. See `stepout.rs`.
    pub max_sync: Option<Duration>,
    /// Tests only: the failpoints under `DATA_DIR/failpoints/` take effect (`slow-sync`).
    pub failpoints: bool,
}

/// [`Config::max_sync`] unless set.
pub const MAX_SYNC: Duration = Duration::from_secs(1);

impl Config {
    /// A single-member store in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            node_id: 1,
            advertise: "127.0.0.1:0".into(),
            api: String::new(),
            feed_capacity: 1024,
            cache_bytes: DEFAULT_CACHE_BYTES,
            initial_members: BTreeMap::new(),
            peer_tls: None,
            join: false,
            write_timeout: WRITE_TIMEOUT,
            transformer: None,
            max_sync: Some(MAX_SYNC),
            failpoints: false,
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

impl Store {
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

    /// A point read on the calling thread: one key's lookup touches a few pages that redb's
    /// cache almost always holds, and a hand-off to the blocking pool (a thread woken and
    /// put back to sleep) cost more CPU than the read itself (4% of the server's at 1,000
    /// pods/s).
    fn read_here<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let txn = self.db.begin_read()?;
        f(&txn)
    }

    /// The object at `key`, if any.
    ///
    /// # Errors
    /// [`Error::Db`] on a storage failure.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        let started = std::time::Instant::now();
        let kv = self.read_here(|txn| Ok(read::get(txn, key)?));
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
        self.read_here(|txn| Ok(read::position(txn)?.revision))
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
