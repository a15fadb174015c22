//! Byte layouts of the redb tables: stored values and change records.

use bytes::Bytes;

/// A stored object: the revision that last wrote it, then its JSON.
pub(crate) fn encode_value(revision: u64, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&revision.to_be_bytes());
    out.extend_from_slice(json);
    out
}

/// Splits a stored object into revision and JSON.
pub(crate) fn decode_value(raw: &[u8]) -> (u64, &[u8]) {
    let (rev, json) = raw.split_at(8);
    (
        u64::from_be_bytes(rev.try_into().expect("split_at(8) yields 8 bytes")),
        json,
    )
}

/// The kind of change one revision made to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The key did not exist before.
    Created,
    /// The key existed and was overwritten.
    Updated,
    /// The key was removed.
    Deleted,
}

/// One entry of the change history, and one event of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The revision that made this change.
    pub revision: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The key changed.
    pub key: String,
    /// The value after the change; for deletes, the last value stamped with the delete revision.
    pub value: Bytes,
    /// The value before the change (absent for creates).
    pub prev: Option<Bytes>,
}

/// The key of the feed's reset marker: no object key starts with a NUL byte.
const RESET_KEY: &str = "\0reset";

impl Change {
    /// The marker a member sends down its feed after installing a snapshot at `revision`:
    /// every watch ends there and its watcher relists ([`crate::WatchError::Reset`]).
    pub(crate) fn reset(revision: u64) -> Change {
        Change {
            revision,
            kind: ChangeKind::Updated,
            key: RESET_KEY.to_owned(),
            value: Bytes::new(),
            prev: None,
        }
    }

    /// Whether this is the reset marker.
    pub(crate) fn is_reset(&self) -> bool {
        self.key == RESET_KEY
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let prev = self.prev.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(13 + self.key.len() + self.value.len() + prev.len());
        out.push(match (self.kind, self.prev.is_some()) {
            (ChangeKind::Created, _) => 0,
            (ChangeKind::Updated, _) => 1,
            (ChangeKind::Deleted, _) => 2,
        });
        for part in [self.key.as_bytes(), &self.value[..], prev] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    pub(crate) fn decode(revision: u64, raw: &[u8]) -> Option<Change> {
        let (&tag, mut rest) = raw.split_first()?;
        let mut parts = Vec::with_capacity(3);
        for _ in 0..3 {
            if rest.len() < 4 {
                return None;
            }
            let (len, tail) = rest.split_at(4);
            let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
            if tail.len() < len {
                return None;
            }
            let (part, tail) = tail.split_at(len);
            parts.push(part);
            rest = tail;
        }
        let kind = match tag {
            0 => ChangeKind::Created,
            1 => ChangeKind::Updated,
            2 => ChangeKind::Deleted,
            _ => return None,
        };
        Some(Change {
            revision,
            kind,
            key: String::from_utf8(parts[0].to_vec()).ok()?,
            value: Bytes::copy_from_slice(parts[1]),
            prev: (kind != ChangeKind::Created).then(|| Bytes::copy_from_slice(parts[2])),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_should_round_trip_through_its_encoding() {
        for change in [
            Change {
                revision: 7,
                kind: ChangeKind::Created,
                key: "/core/pods/default/a".into(),
                value: Bytes::from_static(b"{}"),
                prev: None,
            },
            Change {
                revision: 9,
                kind: ChangeKind::Deleted,
                key: "/core/pods/default/a".into(),
                value: Bytes::from_static(b"{\"a\":1}"),
                prev: Some(Bytes::from_static(b"{}")),
            },
        ] {
            assert_eq!(
                Change::decode(change.revision, &change.encode()),
                Some(change)
            );
        }
    }

    #[test]
    fn value_should_keep_its_revision() {
        let raw = encode_value(42, b"{\"x\":1}");
        assert_eq!(decode_value(&raw), (42, &b"{\"x\":1}"[..]));
    }
}
