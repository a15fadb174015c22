//! [`RaftStateMachine`] on redb: applies [`Command`]s to the `kv` table, records every change
//! in the `changes` table, stamps `metadata.resourceVersion` with the entry's log index, and
//! publishes the changes to the watch feed after the transaction commits.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::codec::{Change, ChangeKind, decode_value, encode_value};
use crate::command::{Command, Failure, Node, NodeId, Outcome, Precondition, TypeConfig};
use crate::tables::{CHANGES, KV, SM_META};

type Membership = StoredMembership<NodeId, Node>;

/// The state machine: current objects plus their change history.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    feed: crate::watch::Feed,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
    published: Arc<watch::Sender<u64>>,
    /// Opens values for the live feed (watchers see objects, not what was stored).
    transform: crate::Transform,
    checkpoint: Arc<Mutex<Checkpoint>>,
}

/// When an apply is also made durable. Applies commit without syncing (the raft log replays
/// what a crash loses), so from time to time one syncs: a restart then replays at most that
/// much of the log, and redb can reuse the pages the applies since freed.
///
/// redb keeps the pages of the commits that did not sync in its write buffer and writes them
/// all out, then syncs, in the durable one, holding its write lock: every apply (and so every
/// watcher) waits meanwhile. Under load, a second of writes made that a 45–58 ms stall once a
/// second, in the tail of every latency; syncing after every [`CHECKPOINT_WRITES`] writes
/// instead makes the stalls shorter as they are more frequent, down to a fixed cost of about
/// 2 ms each (a durable redb commit also writes out what the unsynced ones freed, and the
/// allocator's state): at 1,000 pod creates/s,
/// every 1,000 writes stalled 13.7–15.4 ms, every 500 7.2–8.1 ms, every 250 4.8–5.6 ms — the
/// same time in all per 1,000 writes at 500 as at 1,000 (15 against 14 ms), a third more at
/// 250; store commit p99 8.3–10.1 ms at 500 against 13.5–16.8 ms at 1,000.
struct Checkpoint {
    last: std::time::Instant,
    writes: usize,
}

/// At most this long, or this many writes, between durable applies.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const CHECKPOINT_WRITES: usize = 500;

impl Checkpoint {
    /// Counts `writes` applied; whether this apply should be durable.
    fn due(&mut self, writes: usize) -> bool {
        self.writes += writes;
        if self.writes < CHECKPOINT_WRITES && self.last.elapsed() < CHECKPOINT_EVERY {
            return false;
        }
        self.last = std::time::Instant::now();
        self.writes = 0;
        true
    }
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    data: Vec<u8>,
}

/// The serialized form of a snapshot: every object with its revision.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    revision: u64,
    compacted: u64,
    objects: Vec<(String, u64, Box<RawValue>)>,
}

impl StateMachine {
    /// Tells readers that every change up to `revision` is applied (see `Store::published`).
    fn publish(&self, revision: u64) {
        self.published.send_if_modified(|p| {
            let newer = revision > *p;
            *p = (*p).max(revision);
            newer
        });
    }

    pub(crate) fn new(
        db: Arc<Database>,
        feed: crate::watch::Feed,
        published: Arc<watch::Sender<u64>>,
        transform: crate::Transform,
    ) -> Self {
        StateMachine {
            db,
            feed,
            snapshot: Arc::new(Mutex::new(None)),
            published,
            transform,
            checkpoint: Arc::new(Mutex::new(Checkpoint {
                last: std::time::Instant::now(),
                writes: 0,
            })),
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, redb::Error>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    {
        crate::blocking(&self.db, f).await
    }
}

fn sm_read_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn corrupted(what: &str, e: impl std::fmt::Display) -> redb::Error {
    redb::Error::Corrupted(format!("{what}: {e}"))
}

/// Reads `last_applied` and membership from an open state-machine meta table.
pub(crate) fn read_applied(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<(Option<LogId<NodeId>>, Membership), redb::Error> {
    let last_applied = match table.get("last_applied")? {
        Some(raw) => {
            serde_json::from_slice(raw.value()).map_err(|e| corrupted("last_applied", e))?
        }
        None => None,
    };
    let membership = match table.get("membership")? {
        Some(raw) => serde_json::from_slice(raw.value()).map_err(|e| corrupted("membership", e))?,
        None => Membership::default(),
    };
    Ok((last_applied, membership))
}

/// Reads the compaction point from an open state-machine meta table.
pub(crate) fn read_compacted(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64, redb::Error> {
    read_counter(table, "compacted")
}

/// Reads a big-endian counter (0 when absent) from an open state-machine meta table.
fn read_counter(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<u64, redb::Error> {
    Ok(match table.get(key)? {
        Some(raw) => u64::from_be_bytes(raw.value().try_into().map_err(|e| corrupted(key, e))?),
        None => 0,
    })
}

/// Sets `metadata.resourceVersion` of a JSON object to `revision`. Only the top level and
/// `metadata` are parsed (their members kept as raw JSON text): building the whole tree to
/// change one field was 2% of the server's CPU at 1,000 pod starts a second. Members come out
/// sorted by key, as a `serde_json::Map` writes them.
fn stamp(json: &[u8], revision: u64) -> Option<Vec<u8>> {
    type Members<'a> = std::collections::BTreeMap<String, &'a RawValue>;
    let rv = RawValue::from_string(format!("\"{revision}\"")).expect("a JSON string");
    let mut top: Members<'_> = serde_json::from_slice(json).ok()?;
    let mut meta: Members<'_> = match top.get("metadata") {
        Some(m) => serde_json::from_str(m.get()).ok()?,
        None => Members::new(),
    };
    meta.insert("resourceVersion".into(), &*rv);
    let meta = serde_json::value::to_raw_value(&meta).expect("members serialize");
    top.insert("metadata".into(), &*meta);
    // Sized for the object: it is kept (watch caches, the change feed), and a vector grown by
    // doubling would keep up to twice its length. The stamp adds about 30 bytes.
    let mut out = Vec::with_capacity(json.len() + 48);
    serde_json::to_writer(&mut out, &top).expect("members serialize");
    if out.capacity() > out.len() + 64 {
        out.shrink_to_fit();
    }
    Some(out)
}

struct Tables<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    changes: Table<'t, u64, &'static [u8]>,
    meta: Table<'t, &'static str, &'static [u8]>,
}

/// The object at `key` (revision, JSON) if `precondition` holds for it, else the failed outcome.
fn current(
    t: &Tables<'_>,
    key: &str,
    precondition: Precondition,
) -> Result<Result<Option<(u64, Bytes)>, Outcome>, redb::Error> {
    let current = t.kv.get(key)?.map(|raw| {
        let (rev, json) = decode_value(raw.value());
        (rev, Bytes::copy_from_slice(json))
    });
    Ok(match check(precondition, current.as_ref().map(|c| c.0)) {
        Ok(()) => Ok(current),
        Err(reason) => Err(Outcome::Failed {
            reason,
            current: current.map(|c| c.0),
        }),
    })
}

fn check(precondition: Precondition, current: Option<u64>) -> Result<(), Failure> {
    match (precondition, current) {
        (Precondition::None, _) => Ok(()),
        (Precondition::Absent, None) => Ok(()),
        (Precondition::Absent, Some(_)) => Err(Failure::AlreadyExists),
        (Precondition::Present | Precondition::Revision(_), None) => Err(Failure::NotFound),
        (Precondition::Present, Some(_)) => Ok(()),
        (Precondition::Revision(want), Some(have)) if want == have => Ok(()),
        (Precondition::Revision(_), Some(_)) => Err(Failure::Conflict),
    }
}

/// Reads the revision counter from an open state-machine meta table.
pub(crate) fn read_revision(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64, redb::Error> {
    read_counter(table, "revision")
}

fn execute(
    t: &mut Tables<'_>,
    counter: &mut u64,
    command: Command,
    changes: &mut Vec<Change>,
) -> Result<Outcome, redb::Error> {
    // A write that applies takes the next revision; a failed precondition takes none.
    let revision = *counter + 1;
    match command {
        Command::Put {
            key,
            value,
            precondition,
        } => {
            let current = match current(t, &key, precondition)? {
                Ok(current) => current,
                Err(failed) => return Ok(failed),
            };
            let Some(json) = stamp(value.get().as_bytes(), revision) else {
                return Ok(Outcome::Failed {
                    reason: Failure::Malformed,
                    current: current.map(|c| c.0),
                });
            };
            t.kv.insert(key.as_str(), encode_value(revision, &json).as_slice())?;
            let value = Bytes::from(json);
            let change = Change {
                revision,
                kind: if current.is_some() {
                    ChangeKind::Updated
                } else {
                    ChangeKind::Created
                },
                key,
                value: value.clone(),
                prev: current.map(|c| c.1),
            };
            t.changes.insert(revision, change.encode().as_slice())?;
            changes.push(change);
            *counter = revision;
            Ok(Outcome::Written { revision, value })
        }
        Command::Delete { key, precondition } => {
            let current = match current(t, &key, precondition)? {
                Ok(current) => current,
                Err(failed) => return Ok(failed),
            };
            let Some((_, prev)) = current else {
                return Ok(Outcome::Failed {
                    reason: Failure::NotFound,
                    current: None,
                });
            };
            let json = stamp(&prev, revision).ok_or_else(|| corrupted(&key, "not an object"))?;
            t.kv.remove(key.as_str())?;
            let value = Bytes::from(json);
            let change = Change {
                revision,
                kind: ChangeKind::Deleted,
                key,
                value: value.clone(),
                prev: Some(prev),
            };
            t.changes.insert(revision, change.encode().as_slice())?;
            changes.push(change);
            *counter = revision;
            Ok(Outcome::Written { revision, value })
        }
        Command::Compact { revision: upto } => {
            let compacted = read_compacted(&t.meta)?.max(upto.min(*counter));
            t.changes.retain_in(..=compacted, |_, _| false)?;
            t.meta
                .insert("compacted", compacted.to_be_bytes().as_slice())?;
            Ok(Outcome::Compacted {
                revision: compacted,
            })
        }
    }
}

/// What one apply transaction produced: outcomes per entry, the changes for the feed, and the
/// revision counter after it.
struct Applied {
    outcomes: Vec<Vec<Outcome>>,
    changes: Vec<Change>,
    revision: u64,
}

fn apply_batch(
    db: &Database,
    entries: Vec<Entry<TypeConfig>>,
    durable: bool,
) -> Result<Applied, redb::Error> {
    let mut txn = db.begin_write()?;
    // Durability comes from the raft log: after a crash the log replays whatever this
    // commit lost (see `Checkpoint`).
    if !durable {
        txn.set_durability(Durability::None)
            .expect("single-process database accepts any durability");
    }
    let mut outcomes = Vec::with_capacity(entries.len());
    let mut changes = Vec::new();
    let mut counter;
    {
        let mut t = Tables {
            kv: txn.open_table(KV)?,
            changes: txn.open_table(CHANGES)?,
            meta: txn.open_table(SM_META)?,
        };
        let (mut last_applied, mut membership) = read_applied(&t.meta)?;
        counter = read_revision(&t.meta)?;
        for entry in entries {
            last_applied = Some(entry.log_id);
            outcomes.push(match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    membership = Membership::new(Some(entry.log_id), m);
                    Vec::new()
                }
                EntryPayload::Normal(proposal) => {
                    let mut out = Vec::with_capacity(proposal.commands.len());
                    for command in proposal.commands {
                        out.push(execute(&mut t, &mut counter, command, &mut changes)?);
                    }
                    out
                }
            });
        }
        t.meta
            .insert("revision", counter.to_be_bytes().as_slice())?;
        t.meta.insert(
            "last_applied",
            serde_json::to_vec(&last_applied)
                .expect("log ids serialize")
                .as_slice(),
        )?;
        t.meta.insert(
            "membership",
            serde_json::to_vec(&membership)
                .expect("membership serializes")
                .as_slice(),
        )?;
    }
    txn.commit()?;
    Ok(Applied {
        outcomes,
        changes,
        revision: counter,
    })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            match txn.open_table(SM_META) {
                Ok(table) => read_applied(&table),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok((None, Membership::default())),
                Err(e) => Err(e.into()),
            }
        })
        .await
        .map_err(sm_read_err)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Outcome>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let durable = self
            .checkpoint
            .lock()
            .expect("checkpoint lock is not poisoned")
            .due(
                entries
                    .iter()
                    .map(|e| match &e.payload {
                        EntryPayload::Normal(p) => p.commands.len(),
                        _ => 1,
                    })
                    .sum(),
            );
        let Applied {
            outcomes,
            changes,
            revision,
        } = self
            .blocking(move |db| {
                let started = std::time::Instant::now();
                let applied = apply_batch(db, entries, durable);
                let took = started.elapsed();
                if durable || took > std::time::Duration::from_millis(5) {
                    tracing::debug!(target: "podtrace", durable, micros = took.as_micros(), stage = "store applied");
                }
                applied
            })
            .await
            .map_err(sm_write_err)?;
        if durable {
            crate::metrics::durable_at(revision);
        }
        for change in changes {
            let change = match self.transform.open_change(change.clone()) {
                Ok(opened) => opened,
                Err(error) => {
                    // What this server just applied it can open; if not, watchers see it as
                    // stored and fail to decode it rather than miss it.
                    tracing::error!(%error, key = %change.key, "a change cannot be opened for the feed");
                    change
                }
            };
            // No receivers is fine: nobody is watching.
            self.feed.send(Arc::new(change));
        }
        // Every change up to `revision` is now in the feed (see `Store::published`).
        self.publish(revision);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        })?;
        let meta_owned = meta.clone();
        let revision = body.revision;
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            txn.delete_table(KV)?;
            txn.delete_table(CHANGES)?;
            {
                let mut kv = txn.open_table(KV)?;
                for (key, rev, json) in &body.objects {
                    kv.insert(
                        key.as_str(),
                        encode_value(*rev, json.get().as_bytes()).as_slice(),
                    )?;
                }
                let mut sm = txn.open_table(SM_META)?;
                let last = meta_owned.last_log_id;
                sm.insert(
                    "last_applied",
                    serde_json::to_vec(&last)
                        .expect("log ids serialize")
                        .as_slice(),
                )?;
                sm.insert(
                    "membership",
                    serde_json::to_vec(&meta_owned.last_membership)
                        .expect("membership serializes")
                        .as_slice(),
                )?;
                // History before the snapshot is gone: watches from older revisions must relist.
                sm.insert("revision", body.revision.to_be_bytes().as_slice())?;
                sm.insert(
                    "compacted",
                    body.revision.max(body.compacted).to_be_bytes().as_slice(),
                )?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *self.snapshot.lock().expect("snapshot lock is not poisoned") = Some(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
        // Live watches saw none of the changes the snapshot jumps over: they end and relist.
        self.feed.send(Arc::new(Change::reset(revision)));
        // Readers waiting for a revision the snapshot holds may go on.
        self.publish(revision);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let stored = self
            .snapshot
            .lock()
            .expect("snapshot lock is not poisoned")
            .clone();
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (last_applied, membership, revision, data) = self
            .blocking(|db| {
                // Make every apply so far durable before openraft may purge the log behind it.
                let txn = db.begin_write()?;
                txn.commit()?;
                let txn = db.begin_read()?;
                let (last_applied, membership, revision, compacted) = match txn.open_table(SM_META)
                {
                    Ok(t) => {
                        let (a, m) = read_applied(&t)?;
                        (a, m, read_revision(&t)?, read_compacted(&t)?)
                    }
                    Err(redb::TableError::TableDoesNotExist(_)) => {
                        (None, Membership::default(), 0, 0)
                    }
                    Err(e) => return Err(e.into()),
                };
                let mut objects = Vec::new();
                match txn.open_table(KV) {
                    Ok(kv) => {
                        for row in kv.iter()? {
                            let (key, raw) = row?;
                            let (rev, json) = decode_value(raw.value());
                            let json = String::from_utf8(json.to_vec())
                                .map_err(|e| corrupted(key.value(), e))?;
                            objects.push((
                                key.value().to_string(),
                                rev,
                                RawValue::from_string(json)
                                    .map_err(|e| corrupted(key.value(), e))?,
                            ));
                        }
                    }
                    Err(redb::TableError::TableDoesNotExist(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                let data = serde_json::to_vec(&SnapshotBody {
                    revision,
                    compacted,
                    objects,
                })
                .expect("snapshot body serializes");
                Ok((last_applied, membership, revision, data))
            })
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        crate::metrics::durable_at(revision);
        let snapshot_id = format!(
            "{}-{}",
            last_applied.map(|l| l.leader_id.term).unwrap_or(0),
            last_applied.map(|l| l.index).unwrap_or(0)
        );
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        *self.snapshot.lock().expect("snapshot lock is not poisoned") = Some(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    #[test]
    fn a_stamp_sets_only_the_resource_version() {
        for (input, revision) in [
            (
                json!({"metadata": {"name": "a", "resourceVersion": "3"}, "spec": {"z": [1, {"b": 2, "a": 1}]}}),
                7,
            ),
            (json!({"kind": "Pod", "apiVersion": "v1", "spec": {}}), 12),
            (
                json!({"zeta": 1, "metadata": {"labels": {"x\"y": "é\n"}}, "alpha": null}),
                1,
            ),
        ] {
            let bytes = serde_json::to_vec(&input).expect("encode");
            let out = super::stamp(&bytes, revision).expect("an object");
            let stamped: Value = serde_json::from_slice(&out).expect("valid JSON");
            let mut want = input.clone();
            want["metadata"]["resourceVersion"] = json!(revision.to_string());
            assert_eq!(stamped, want);
            // Written as a serde_json::Map would write it.
            assert_eq!(out, serde_json::to_vec(&want).expect("encode"));
        }
        assert!(super::stamp(b"[1]", 1).is_none());
        assert!(super::stamp(br#"{"metadata": 3}"#, 1).is_none());
    }
}
