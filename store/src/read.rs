//! Reads straight from redb: point gets, prefix lists (paged, optionally at an older revision
//! reconstructed from the change history), and the revision a read was served at.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use redb::ReadTransaction;

use crate::Error;
use crate::codec::{Change, ChangeKind, decode_value};
use crate::state_machine::{read_compacted, read_revision};
use crate::tables::{CHANGES, KV, SM_META};

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// Its key.
    pub key: String,
    /// The revision that last wrote it (its `resourceVersion`).
    pub revision: u64,
    /// The object JSON, with `metadata.resourceVersion` set.
    pub value: Bytes,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Only keys strictly greater than this (a continue token's position).
    pub start_after: Option<String>,
    /// At most this many items.
    pub limit: Option<usize>,
    /// Read as of this revision instead of the latest.
    pub revision: Option<u64>,
}

/// A page of a list.
#[derive(Debug, Clone)]
pub struct ListResult {
    /// The objects, sorted by key.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at.
    pub revision: u64,
    /// Whether more items follow the last one.
    pub more: bool,
    /// How many items follow, when `more` (Kubernetes' `remainingItemCount`).
    pub remaining: usize,
}

struct Page {
    limit: usize,
    items: Vec<KeyValue>,
    remaining: usize,
}

impl Page {
    fn push(&mut self, key: &str, revision: u64, value: Bytes) {
        if self.items.len() < self.limit {
            self.items.push(KeyValue {
                key: key.to_string(),
                revision,
                value,
            });
        } else {
            self.remaining += 1;
        }
    }
}

pub(crate) struct Position {
    pub(crate) revision: u64,
    pub(crate) compacted: u64,
}

pub(crate) fn position(txn: &ReadTransaction) -> Result<Position, redb::Error> {
    match txn.open_table(SM_META) {
        Ok(meta) => Ok(Position {
            revision: read_revision(&meta)?,
            compacted: read_compacted(&meta)?,
        }),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(Position {
            revision: 0,
            compacted: 0,
        }),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn get(txn: &ReadTransaction, key: &str) -> Result<Option<KeyValue>, redb::Error> {
    let kv = match txn.open_table(KV) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(kv.get(key)?.map(|raw| {
        let (revision, json) = decode_value(raw.value());
        KeyValue {
            key: key.to_string(),
            revision,
            value: Bytes::copy_from_slice(json),
        }
    }))
}

/// The history of keys under `prefix` with revisions in `(after, upto]`, oldest first.
pub(crate) fn history(
    txn: &ReadTransaction,
    prefix: &str,
    after: u64,
    upto: u64,
) -> Result<Vec<Change>, redb::Error> {
    let changes = match txn.open_table(CHANGES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in changes.range::<u64>((Bound::Excluded(after), Bound::Included(upto)))? {
        let (rev, raw) = row?;
        let change = Change::decode(rev.value(), raw.value())
            .ok_or_else(|| redb::Error::Corrupted(format!("change record {}", rev.value())))?;
        if change.key.starts_with(prefix) {
            out.push(change);
        }
    }
    Ok(out)
}

fn revision_of(json: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "resourceVersion")]
        resource_version: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Obj {
        metadata: Option<Meta>,
    }
    serde_json::from_slice::<Obj>(json)
        .ok()
        .and_then(|o| o.metadata?.resource_version?.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn list(
    txn: &ReadTransaction,
    prefix: &str,
    opts: &ListOptions,
) -> Result<ListResult, Error> {
    let pos = position(txn)?;
    let at = opts.revision.unwrap_or(pos.revision);
    if at < pos.revision && at < pos.compacted {
        return Err(Error::Compacted {
            compacted: pos.compacted,
        });
    }
    let kv = match txn.open_table(KV) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(redb::Error::from(e).into()),
    };
    let lower = match &opts.start_after {
        Some(k) if k.as_str() >= prefix => Bound::Excluded(k.as_str()),
        _ => Bound::Included(prefix),
    };
    let mut page = Page {
        limit: opts.limit.unwrap_or(usize::MAX),
        items: Vec::new(),
        remaining: 0,
    };
    // Keys changed after `at` are taken from the history, as they were at `at`.
    let mut overrides: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    if at < pos.revision {
        for change in history(txn, prefix, at, pos.revision)? {
            overrides.entry(change.key).or_insert(match change.kind {
                ChangeKind::Created => None,
                _ => change.prev,
            });
        }
    }
    let mut merged: BTreeMap<String, Bytes> = BTreeMap::new();
    if let Some(kv) = &kv {
        for row in kv.range::<&str>((lower, Bound::Unbounded))? {
            let (key, raw) = row?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            if overrides.contains_key(key) {
                continue;
            }
            let (revision, json) = decode_value(raw.value());
            if overrides.is_empty() {
                page.push(key, revision, Bytes::copy_from_slice(json));
            } else {
                merged.insert(key.to_string(), Bytes::copy_from_slice(json));
            }
        }
    }
    for (key, value) in overrides {
        let after_start = match lower {
            Bound::Excluded(s) => key.as_str() > s,
            _ => true,
        };
        if let (true, Some(value)) = (after_start, value) {
            merged.insert(key, value);
        }
    }
    for (key, value) in merged {
        let revision = revision_of(&value);
        page.push(&key, revision, value);
    }
    let more = page.remaining > 0;
    let (items, remaining) = (page.items, page.remaining);
    Ok(ListResult {
        items,
        revision: at,
        more,
        remaining,
    })
}
