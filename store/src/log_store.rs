//! [`RaftLogStorage`] on `raft-log`: the raft log is an append-only, chunked write-ahead log
//! of its own, beside the redb state machine.
//!
//! `append` adds the entries to the log's memory (readable at once, as openraft requires) and
//! asks its flush thread for a sync; the thread writes everything queued since its last sync
//! with one `fdatasync`, then fires the flush callbacks. Under load many client writes share
//! one sync; alone, a write costs one small append and one sync, about a third of what a
//! durable redb transaction costs (measured in `bench --store-only`, see the README). Nothing
//! here takes redb's one write lock, so the state machine applies while the log syncs.
//!
//! The state machine commits without syncing; the log replays what a crash lost. It is made
//! durable before a snapshot lets openraft purge the log behind it, and from time to time
//! (see `state_machine.rs`).

use std::fmt::Debug;
use std::io::{self, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    CommittedLeaderId, Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote,
};
use raft_log::RaftLog;
use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::codeq::{Decode, Encode};
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::command::{NodeId, TypeConfig};
use crate::stepout::SyncGuard;
use crate::tables::{LOG, RAFT_META};

/// The raft log's types, as `raft-log` sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Wal;

impl raft_log::Types for Wal {
    type LogId = Id;
    type LogPayload = Payload;
    type Vote = Voted;
    type Callback = Flushed;
    type UserData = ();

    fn log_index(id: &Id) -> u64 {
        id.index
    }

    fn payload_size(p: &Payload) -> u64 {
        p.raw.len() as u64
    }
}

/// A log id, ordered as the entries of one log are: by term, then leader, then index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Id {
    term: u64,
    node: NodeId,
    index: u64,
}

impl From<LogId<NodeId>> for Id {
    fn from(l: LogId<NodeId>) -> Self {
        Id {
            term: l.leader_id.term,
            node: l.leader_id.node_id,
            index: l.index,
        }
    }
}

impl From<Id> for LogId<NodeId> {
    fn from(id: Id) -> Self {
        LogId::new(CommittedLeaderId::new(id.term, id.node), id.index)
    }
}

impl Encode for Id {
    fn encode<W: Write>(&self, mut w: W) -> io::Result<usize> {
        Ok(self.term.encode(&mut w)? + self.node.encode(&mut w)? + self.index.encode(&mut w)?)
    }
}

impl Decode for Id {
    fn decode<R: Read>(mut r: R) -> io::Result<Self> {
        Ok(Id {
            term: u64::decode(&mut r)?,
            node: u64::decode(&mut r)?,
            index: u64::decode(&mut r)?,
        })
    }
}

/// One entry: as openraft hands it over (shared with readers) and as written (JSON).
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    entry: Arc<Entry<TypeConfig>>,
    raw: Arc<[u8]>,
}

impl Payload {
    fn of(entry: Entry<TypeConfig>) -> Payload {
        let raw = serde_json::to_vec(&entry).expect("log entries serialize");
        Payload {
            entry: Arc::new(entry),
            raw: raw.into(),
        }
    }
}

/// Writes `bytes` with a 4-byte length before them.
fn write_framed<W: Write>(mut w: W, bytes: &[u8]) -> io::Result<usize> {
    let len =
        u32::try_from(bytes.len()).map_err(|_| io::Error::other("a log record over 4 GiB"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(bytes)?;
    Ok(bytes.len() + 4)
}

/// Reads what [`write_framed`] wrote and decodes it as JSON.
fn read_framed<R: Read, T: serde::de::DeserializeOwned>(mut r: R) -> io::Result<(Vec<u8>, T)> {
    let bytes = Vec::<u8>::decode(&mut r)?;
    let value = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
    Ok((bytes, value))
}

impl Encode for Payload {
    fn encode<W: Write>(&self, w: W) -> io::Result<usize> {
        write_framed(w, &self.raw)
    }
}

impl Decode for Payload {
    fn decode<R: Read>(r: R) -> io::Result<Self> {
        let (raw, entry) = read_framed(r)?;
        Ok(Payload {
            entry: Arc::new(entry),
            raw: raw.into(),
        })
    }
}

/// A vote, ordered as openraft orders votes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd)]
pub(crate) struct Voted(Vote<NodeId>);

impl Encode for Voted {
    fn encode<W: Write>(&self, w: W) -> io::Result<usize> {
        write_framed(w, &serde_json::to_vec(&self.0).expect("votes serialize"))
    }
}

impl Decode for Voted {
    fn decode<R: Read>(r: R) -> io::Result<Self> {
        Ok(Voted(read_framed(r)?.1))
    }
}

/// Who hears that a flush reached the disk: openraft, or a caller waiting for it.
pub(crate) enum Flushed {
    /// openraft's, for a sync asked for at `asked`, when the guard said `could_step_out`.
    Raft {
        callback: LogFlushed<TypeConfig>,
        asked: std::time::Instant,
        guard: Arc<SyncGuard>,
        could_step_out: bool,
    },
    Waiter(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl raft_log::Callback for Flushed {
    fn send(self, res: io::Result<()>) {
        match self {
            Flushed::Raft {
                callback,
                asked,
                guard,
                could_step_out,
            } => callback.log_io_completed(res.and_then(|()| guard.judge(asked, could_step_out))),
            Flushed::Waiter(tx) => {
                let _ = tx.send(res);
            }
        }
    }
}

impl Debug for Flushed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flushed::Raft { .. } => "Flushed::Raft",
            Flushed::Waiter(_) => "Flushed::Waiter",
        })
    }
}

/// Entries the log keeps in memory for readers (applying, replicating), by count and by
/// encoded bytes; older ones are read from disk. Those of the chunk being written are kept
/// whatever these say (raft-log evicts only entries of chunks already closed).
const CACHE_ENTRIES: usize = 4_096;
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// A chunk file's most records and bytes: a purge removes whole chunks, so these bound the
/// disk a purged log still holds; and every entry of the open chunk stays in memory, encoded
/// and decoded, so they bound the log's memory too (64 MiB chunks held ~120 MB with 10,000
/// pods written: the `memory` benchmark; 8 MiB chunks held 14 MB).
const CHUNK_RECORDS: usize = 2 * 1024;
const CHUNK_BYTES: usize = 2 * 1024 * 1024;

/// The raft log, in `DATA_DIR/raft-log/`.
#[derive(Clone)]
pub struct LogStore {
    log: Arc<Mutex<RaftLog<Wal>>>,
    guard: Arc<SyncGuard>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn read_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying it. A log still kept in the redb file
    /// `db` (as stores before this one kept it) is moved here first.
    ///
    /// # Errors
    /// The directory cannot be used, or a record in it is damaged.
    pub(crate) fn open(dir: &Path, db: &Database) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let mut config = raft_log::Config::new(dir.display());
        config.wal.flush_batch_wait = Some(std::time::Duration::ZERO);
        config.wal.chunk_max_records = Some(CHUNK_RECORDS);
        config.wal.chunk_max_size = Some(CHUNK_BYTES);
        config.wal.read_buffer_size = Some(1024 * 1024);
        config.log_cache_max_items = Some(CACHE_ENTRIES);
        config.log_cache_capacity = Some(CACHE_BYTES);
        let mut log = RaftLog::<Wal>::open(Arc::new(config))?;
        move_from_redb(&mut log, db)?;
        Ok(LogStore {
            log: Arc::new(Mutex::new(log)),
            guard: Arc::new(SyncGuard::new(None, None)),
        })
    }

    /// Judges its syncs with `guard` (a slow one may make this member step out).
    pub(crate) fn guarded(self, guard: Arc<SyncGuard>) -> Self {
        LogStore { guard, ..self }
    }

    fn lock(&self) -> MutexGuard<'_, RaftLog<Wal>> {
        self.log.lock().expect("the raft log lock is not poisoned")
    }

    /// Runs `change` on the log, then waits until it is on disk.
    async fn durably(
        &self,
        change: impl FnOnce(&mut RaftLog<Wal>) -> io::Result<()>,
    ) -> io::Result<()> {
        let synced = {
            let mut log = self.lock();
            change(&mut log)?;
            sync(&mut log)?
        };
        synced.await.map_err(|_| flush_stopped())?
    }
}

/// Asks the log's flush thread to sync everything written so far; the answer says when it has.
fn sync(log: &mut RaftLog<Wal>) -> io::Result<tokio::sync::oneshot::Receiver<io::Result<()>>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    log.flush(true, Some(Flushed::Waiter(tx)))?;
    Ok(rx)
}

fn flush_stopped() -> io::Error {
    io::Error::other("the raft log's flush thread stopped")
}

/// Moves a log kept in redb's `raft_log`/`raft_meta` tables into `log` (when `log` is new and
/// they hold anything), syncs it, then drops the tables.
fn move_from_redb(log: &mut RaftLog<Wal>, db: &Database) -> io::Result<()> {
    let state = log.log_state();
    if state.vote().is_some() || state.last().is_some() || state.purged().is_some() {
        return Ok(());
    }
    let txn = db.begin_read().map_err(io_err)?;
    // Each value is JSON; `committed` was stored as an `Option` of its own.
    fn meta<T: serde::de::DeserializeOwned>(
        txn: &redb::ReadTransaction,
        key: &str,
    ) -> io::Result<Option<T>> {
        let raw = match txn.open_table(RAFT_META) {
            Ok(t) => t.get(key).map_err(io_err)?,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        raw.map(|v| serde_json::from_slice(v.value()).map_err(io_err))
            .transpose()
    }
    let vote: Option<Vote<NodeId>> = meta(&txn, "vote")?;
    let purged: Option<LogId<NodeId>> = meta(&txn, "last_purged")?;
    let committed: Option<LogId<NodeId>> =
        meta::<Option<LogId<NodeId>>>(&txn, "committed")?.flatten();
    let mut entries = Vec::new();
    match txn.open_table(LOG) {
        Ok(t) => {
            for row in t.iter().map_err(io_err)? {
                let (_, raw) = row.map_err(io_err)?;
                let entry: Entry<TypeConfig> =
                    serde_json::from_slice(raw.value()).map_err(io_err)?;
                entries.push((Id::from(entry.log_id), Payload::of(entry)));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(io_err(e)),
    }
    drop(txn);
    if vote.is_none() && purged.is_none() && entries.is_empty() {
        return Ok(());
    }
    if let Some(v) = vote {
        log.save_vote(Voted(v))?;
    }
    if let Some(p) = purged {
        log.purge(Id::from(p))?;
    }
    let count = entries.len();
    log.append(entries)?;
    if let Some(c) = committed {
        log.commit(Id::from(c))?;
    }
    sync(log)?.blocking_recv().map_err(|_| flush_stopped())??;
    let txn = db.begin_write().map_err(io_err)?;
    txn.delete_table(LOG).map_err(io_err)?;
    txn.delete_table(RAFT_META).map_err(io_err)?;
    txn.commit().map_err(io_err)?;
    tracing::info!(
        entries = count,
        "moved the raft log out of the database file into its own log"
    );
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        // Recent entries come from memory; older ones (a follower far behind) from disk.
        let log = self.lock();
        log.read(from, to)
            .map(|r| r.map(|(_, p)| Entry::clone(&p.entry)))
            .collect::<io::Result<Vec<_>>>()
            .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let log = self.lock();
        let state = log.log_state();
        let purged = state.purged().copied().map(LogId::from);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: state.last().copied().map(LogId::from).or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = Voted(*vote);
        self.durably(|log| log.save_vote(vote).map(drop))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().log_state().vote().map(|v| v.0))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced on its own: a stale `committed` after a crash only means less is
        // re-applied at start-up. The next sync takes it along.
        if let Some(c) = committed {
            self.lock().commit(Id::from(c)).map_err(write_err)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .lock()
            .log_state()
            .committed()
            .copied()
            .map(LogId::from))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut log = self.lock();
        // An entry at or below the purge point is applied already (it is in the state
        // machine, and the same entry by raft's log matching); one above it that the log holds
        // replaces the log from there on.
        let purged = log.log_state().purged().map_or(0, |p| p.index + 1);
        let rows: Vec<(Id, Payload)> = entries
            .into_iter()
            .filter(|e| e.log_id.index >= purged)
            .map(|e| (Id::from(e.log_id), Payload::of(e)))
            .collect();
        if let Some((first, _)) = rows.first()
            && log
                .log_state()
                .last()
                .is_some_and(|l| l.index >= first.index)
        {
            log.truncate(first.index).map_err(write_err)?;
        }
        log.append(rows).map_err(write_err)?;
        let flushed = Flushed::Raft {
            callback,
            asked: std::time::Instant::now(),
            could_step_out: self.guard.may_step_out(),
            guard: Arc::clone(&self.guard),
        };
        log.flush(true, Some(flushed)).map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.durably(|log| log.truncate(log_id.index).map(drop))
            .await
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.durably(|log| log.purge(Id::from(log_id)).map(drop))
            .await
            .map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{EntryPayload, Membership};

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[tokio::test]
    async fn a_log_kept_in_redb_should_move_to_the_log_files_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = Database::create(dir.path().join("store.redb")).expect("db");
        // As stores before this one kept it: entries 4..=6 (3 purged), a vote, `committed`.
        let txn = db.begin_write().expect("txn");
        {
            let mut log = txn.open_table(LOG).expect("log table");
            for index in 4..=6 {
                let entry = Entry::<TypeConfig> {
                    log_id: log_id(2, index),
                    payload: if index == 5 {
                        EntryPayload::Membership(Membership::new(
                            vec![std::collections::BTreeSet::from([1])],
                            None,
                        ))
                    } else {
                        EntryPayload::Blank
                    },
                };
                log.insert(index, serde_json::to_vec(&entry).expect("json").as_slice())
                    .expect("insert");
            }
            let mut meta = txn.open_table(RAFT_META).expect("meta table");
            let vote = Vote::new_committed(2, 1);
            for (key, value) in [
                ("vote", serde_json::to_vec(&vote).expect("json")),
                (
                    "committed",
                    serde_json::to_vec(&Some(log_id(2, 5))).expect("json"),
                ),
                (
                    "last_purged",
                    serde_json::to_vec(&log_id(1, 3)).expect("json"),
                ),
            ] {
                meta.insert(key, value.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");

        let raft_log = dir.path().join("raft-log");
        let mut store = {
            let (dir, db) = (raft_log.clone(), Arc::new(db));
            let db2 = Arc::clone(&db);
            let store = tokio::task::spawn_blocking(move || LogStore::open(&dir, &db2))
                .await
                .expect("join")
                .expect("open");
            // The old tables are gone from the database file.
            let read = db.begin_read().expect("read");
            assert!(matches!(
                read.open_table(LOG),
                Err(redb::TableError::TableDoesNotExist(_))
            ));
            assert!(matches!(
                read.open_table(RAFT_META),
                Err(redb::TableError::TableDoesNotExist(_))
            ));
            store
        };
        let check = |store: &mut LogStore| {
            let mut store = store.clone();
            async move {
                assert_eq!(
                    store.read_vote().await.expect("vote"),
                    Some(Vote::new_committed(2, 1))
                );
                assert_eq!(
                    store.read_committed().await.expect("committed"),
                    Some(log_id(2, 5))
                );
                let state = store.get_log_state().await.expect("state");
                assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
                assert_eq!(state.last_log_id, Some(log_id(2, 6)));
                let entries = store.try_get_log_entries(0..100).await.expect("entries");
                assert_eq!(
                    entries.iter().map(|e| e.log_id).collect::<Vec<_>>(),
                    vec![log_id(2, 4), log_id(2, 5), log_id(2, 6)]
                );
                assert!(matches!(entries[1].payload, EntryPayload::Membership(_)));
            }
        };
        check(&mut store).await;
        // And it is in the log's own files: opened again (over an empty database), the same.
        drop(store);
        let other = Database::create(dir.path().join("other.redb")).expect("db");
        let mut again = tokio::task::spawn_blocking(move || LogStore::open(&raft_log, &other))
            .await
            .expect("join")
            .expect("reopen");
        check(&mut again).await;
    }
}
