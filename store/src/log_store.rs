//! [`RaftLogStorage`] on redb with group commit.
//!
//! `append` puts the entries in memory (readable at once, as openraft requires) and hands them
//! to one writer thread, which writes everything queued since its last commit in a single
//! durable redb transaction, then fires the flush callbacks. Under load many client writes
//! share one fsync; alone, a write costs one.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use crate::command::{NodeId, TypeConfig};
use crate::tables::{LOG, RAFT_META};

type Barrier = Box<dyn FnOnce(&Database) -> Result<(), redb::Error> + Send>;

/// Work for the writer thread, executed in order.
enum Job {
    Append {
        rows: Vec<(LogId<NodeId>, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    Run {
        f: Barrier,
        done: tokio::sync::oneshot::Sender<Result<(), redb::Error>>,
    },
}

struct Shared {
    /// Appended but not yet durable entries, by index.
    pending: Mutex<BTreeMap<u64, Entry<TypeConfig>>>,
    jobs: mpsc::Sender<Job>,
}

/// The raft log, stored in the shared redb database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    shared: Arc<Shared>,
}

/// A log commit slower than this is reported: every write waits for one.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Reports slow log commits (a slow or failing disk), at most once a minute.
#[derive(Default)]
struct SlowDisk {
    last_said: Option<std::time::Instant>,
    since: u32,
}

impl SlowDisk {
    fn note(&mut self, took: std::time::Duration) {
        if took < SLOW_COMMIT {
            return;
        }
        self.since += 1;
        if self
            .last_said
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60))
        {
            tracing::warn!(
                took_ms = took.as_millis(),
                slow_commits = self.since,
                "the raft log's disk is slow: every write waits for its commit"
            );
            self.last_said = Some(std::time::Instant::now());
            self.since = 0;
        }
    }
}

fn writer(db: Arc<Database>, shared: std::sync::Weak<Shared>, jobs: mpsc::Receiver<Job>) {
    let mut queue = std::collections::VecDeque::new();
    let mut slow = SlowDisk::default();
    while let Ok(first) = jobs.recv() {
        queue.push_back(first);
        while let Ok(more) = jobs.try_recv() {
            queue.push_back(more);
        }
        while let Some(job) = queue.pop_front() {
            match job {
                Job::Append { rows, callback } => {
                    // Group this append with every append queued right behind it.
                    let mut group = vec![(rows, callback)];
                    while let Some(Job::Append { .. }) = queue.front() {
                        if let Some(Job::Append { rows, callback }) = queue.pop_front() {
                            group.push((rows, callback));
                        }
                    }
                    let started = std::time::Instant::now();
                    let result = (|| -> Result<(), redb::Error> {
                        let txn = db.begin_write()?;
                        {
                            let mut table = txn.open_table(LOG)?;
                            for (rows, _) in &group {
                                for (id, raw) in rows {
                                    table.insert(id.index, raw.as_slice())?;
                                }
                            }
                        }
                        txn.commit()?;
                        Ok(())
                    })();
                    slow.note(started.elapsed());
                    if result.is_ok()
                        && let Some(shared) = shared.upgrade()
                    {
                        let mut pending =
                            shared.pending.lock().expect("pending lock is not poisoned");
                        for (rows, _) in &group {
                            for (id, _) in rows {
                                if pending.get(&id.index).is_some_and(|e| e.log_id == *id) {
                                    pending.remove(&id.index);
                                }
                            }
                        }
                    }
                    for (_, callback) in group {
                        callback.log_io_completed(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io::Error::other(e.to_string())),
                        });
                    }
                }
                Job::Run { f, done } => {
                    let _ = done.send(f(&db));
                }
            }
        }
    }
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> Self {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            pending: Mutex::new(BTreeMap::new()),
            jobs: tx,
        });
        let weak = Arc::downgrade(&shared);
        let wdb = db.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer(wdb, weak, rx))
            .expect("spawn the log writer thread");
        LogStore { db, shared }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, redb::Error>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    {
        crate::blocking(&self.db, f).await
    }

    /// Runs `f` on the writer thread, after every append queued before it.
    /// Removes the log entries from `from` to `to`, pending and written, in order with the
    /// writes before; a purge records its `last_purged` log id in the same transaction.
    async fn remove(
        &self,
        from: Bound<u64>,
        to: Bound<u64>,
        last_purged: Option<Vec<u8>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.shared
            .pending
            .lock()
            .expect("pending lock is not poisoned")
            .retain(|i, _| !(from, to).contains(i));
        self.in_order(Box::new(move |db| {
            let txn = db.begin_write()?;
            if let Some(raw) = last_purged {
                txn.open_table(RAFT_META)?
                    .insert("last_purged", raw.as_slice())?;
            }
            txn.open_table(LOG)?
                .retain_in::<u64, _>((from, to), |_, _| false)?;
            txn.commit()?;
            Ok(())
        }))
        .await
        .map_err(write_err)
    }

    async fn in_order(&self, f: Barrier) -> Result<(), redb::Error> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.shared
            .jobs
            .send(Job::Run { f, done })
            .map_err(|_| redb::Error::Io(io::Error::other("log writer stopped")))?;
        wait.await
            .map_err(|_| redb::Error::Io(io::Error::other("log writer stopped")))?
    }

    async fn read_meta<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, redb::Error> {
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(RAFT_META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let Some(raw) = table.get(key)? else {
                return Ok(None);
            };
            serde_json::from_slice(raw.value())
                .map(Some)
                .map_err(|e| redb::Error::Corrupted(format!("raft_meta/{key}: {e}")))
        })
        .await
    }

    async fn write_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), redb::Error> {
        let raw = serde_json::to_vec(value).expect("raft metadata serializes");
        self.blocking(move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)
                .expect("single-process database accepts any durability");
            txn.open_table(RAFT_META)?.insert(key, raw.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }
}

fn read_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        // Pending first: an entry leaves `pending` only after it is in the table, so reading
        // the table second cannot miss it.
        let pending: Vec<Entry<TypeConfig>> = self
            .shared
            .pending
            .lock()
            .expect("pending lock is not poisoned")
            .range(range)
            .map(|(_, e)| e.clone())
            .collect();
        let mut out: BTreeMap<u64, Entry<TypeConfig>> = self
            .blocking(move |db| {
                let txn = db.begin_read()?;
                let table = match txn.open_table(LOG) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
                    Err(e) => return Err(e.into()),
                };
                let mut out = BTreeMap::new();
                for row in table.range::<u64>(range)? {
                    let (index, raw) = row?;
                    let entry: Entry<TypeConfig> = serde_json::from_slice(raw.value())
                        .map_err(|e| redb::Error::Corrupted(format!("raft_log entry: {e}")))?;
                    out.insert(index.value(), entry);
                }
                Ok(out)
            })
            .await
            .map_err(read_err)?;
        for e in pending {
            out.insert(e.log_id.index, e);
        }
        Ok(out.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> =
            self.read_meta("last_purged").await.map_err(read_err)?;
        let last_pending = self
            .shared
            .pending
            .lock()
            .expect("pending lock is not poisoned")
            .last_key_value()
            .map(|(_, e)| e.log_id);
        let last_stored = self
            .blocking(|db| {
                let txn = db.begin_read()?;
                let table = match txn.open_table(LOG) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                match table.last()? {
                    Some((_, raw)) => serde_json::from_slice::<Entry<TypeConfig>>(raw.value())
                        .map(|e| Some(*e.get_log_id()))
                        .map_err(|e| redb::Error::Corrupted(format!("raft_log entry: {e}"))),
                    None => Ok(None),
                }
            })
            .await
            .map_err(read_err)?;
        let last = match (last_pending, last_stored) {
            (Some(p), Some(s)) => Some(if p.index >= s.index { p } else { s }),
            (p, s) => p.or(s),
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta("vote", vote, Durability::Immediate)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta("vote")
            .await
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not durable on its own: a stale `committed` after a crash only means less is
        // re-applied at start-up. The next durable log append persists it.
        self.write_meta("committed", &committed, Durability::None)
            .await
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>("committed")
            .await
            .map_err(read_err)?
            .flatten())
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
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let rows = entries
            .iter()
            .map(|e| {
                (
                    e.log_id,
                    serde_json::to_vec(e).expect("log entries serialize"),
                )
            })
            .collect();
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .expect("pending lock is not poisoned");
            for e in entries {
                pending.insert(e.log_id.index, e);
            }
        }
        self.shared
            .jobs
            .send(Job::Append { rows, callback })
            .map_err(|_| write_err(io::Error::other("log writer stopped")))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.remove(Bound::Included(log_id.index), Bound::Unbounded, None)
            .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let raw = serde_json::to_vec(&log_id).expect("log ids serialize");
        self.remove(Bound::Unbounded, Bound::Included(log_id.index), Some(raw))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_commits_should_be_reported_at_most_once_a_minute() {
        let mut slow = SlowDisk::default();
        slow.note(std::time::Duration::from_millis(5));
        assert!(slow.last_said.is_none(), "a fast commit is not news");
        slow.note(SLOW_COMMIT);
        assert!(slow.last_said.is_some(), "the first slow commit is said");
        assert_eq!(slow.since, 0);
        slow.note(SLOW_COMMIT * 2);
        slow.note(SLOW_COMMIT * 3);
        assert_eq!(
            slow.since, 2,
            "later ones are counted until the next report"
        );
    }
}
