//! The redb tables of the store. One database file holds the raft log and the state machine,
//! so one durable log commit also persists every state-machine apply before it.

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
