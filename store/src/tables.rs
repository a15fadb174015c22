//! The redb tables of the store's state machine. The raft log lives in its own files
//! (`log_store.rs`); `raft_log` and `raft_meta` are where stores before it kept the log, read
//! once to move it there.

use redb::TableDefinition;

/// Raft log entries by index, JSON-encoded.
pub(crate) const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft bookkeeping: `vote`, `committed`, `last_purged`.
pub(crate) const RAFT_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");
/// Current objects by key: 8-byte big-endian revision, then JSON.
pub(crate) const KV: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("kv");
/// Change history by revision (see [`crate::Change`]).
pub(crate) const CHANGES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("changes");
/// State-machine bookkeeping: `last_applied`, `membership`, `compacted`.
pub(crate) const SM_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sm_meta");
