//! [`RaftLogStorage`] on redb: every append is one durable write transaction, and the
//! flush callback fires only after `commit()` returned.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use crate::command::{NodeId, TypeConfig};
use crate::tables::{LOG, RAFT_META};

/// The raft log, stored in the shared redb database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> Self {
        LogStore { db }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, redb::Error>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .expect("redb task does not panic")
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
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(LOG) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for row in table.range::<u64>(range)? {
                let (_, raw) = row?;
                out.push(
                    serde_json::from_slice(raw.value())
                        .map_err(|e| redb::Error::Corrupted(format!("raft_log entry: {e}")))?,
                );
            }
            Ok(out)
        })
        .await
        .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> =
            self.read_meta("last_purged").await.map_err(read_err)?;
        let last = self
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
        let rows: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| {
                (
                    e.get_log_id().index,
                    serde_json::to_vec(&e).expect("log entries serialize"),
                )
            })
            .collect();
        let result = self
            .blocking(move |db| {
                let txn = db.begin_write()?;
                {
                    let mut table = txn.open_table(LOG)?;
                    for (index, raw) in &rows {
                        table.insert(*index, raw.as_slice())?;
                    }
                }
                txn.commit()?;
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?
                .retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let raw = serde_json::to_vec(&log_id).expect("log ids serialize");
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(RAFT_META)?
                .insert("last_purged", raw.as_slice())?;
            txn.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(write_err)
    }
}
