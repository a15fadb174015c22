//! What travels through the raft log: a [`Command`] proposed by the apiserver and the
//! [`Outcome`] the state machine answers with once the entry is applied.

use std::io::Cursor;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

openraft::declare_raft_types!(
    /// The openraft type configuration of the wasmkube store.
    pub TypeConfig:
        D = Proposal,
        R = Vec<Outcome>,
        NodeId = u64,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A raft node id.
pub type NodeId = u64;

/// A member as the group's membership records it: where the other members reach its raft
/// transport, and where clients reach its API server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Its peer listener, `host:port`.
    pub addr: String,
    /// Its API server's URL (`https://host:port`); empty for a store without one (tests).
    #[serde(default)]
    pub api: String,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (api {})", self.addr, self.api)
    }
}

/// A condition that must hold on the current value of a key for a write to apply.
///
/// This is how the apiserver expresses optimistic concurrency: an update carries the
/// `resourceVersion` it was computed from, as kube-apiserver's etcd3 store does with
/// `mod_revision` comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// Apply unconditionally (create-or-replace).
    None,
    /// The key must not exist (create).
    Absent,
    /// The key must exist, with any revision.
    Present,
    /// The key must exist and have been written last at exactly this revision.
    Revision(u64),
}

/// One raft log entry: commands proposed together (group commit) and applied in order in
/// one transaction, each write getting its own revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    /// The commands, applied in order.
    pub commands: Vec<Command>,
}

/// A state-machine command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Write `value` (a JSON object) at `key`. The state machine sets
    /// `metadata.resourceVersion` to the write's revision before storing it.
    Put {
        /// Full key, e.g. `/core/pods/default/web-0`.
        key: String,
        /// The object as JSON.
        value: Box<RawValue>,
        /// What must hold before the write.
        precondition: Precondition,
    },
    /// Remove `key`.
    Delete {
        /// Full key.
        key: String,
        /// What must hold before the delete.
        precondition: Precondition,
    },
    /// Drop the change history up to and including `revision`; watches and consistent
    /// reads from older revisions then fail with [`crate::Error::Compacted`].
    Compact {
        /// Highest revision whose history may be dropped.
        revision: u64,
    },
}

impl Command {
    /// The key a put or delete writes.
    pub fn key(&self) -> Option<&str> {
        match self {
            Command::Put { key, .. } | Command::Delete { key, .. } => Some(key),
            Command::Compact { .. } => None,
        }
    }
}

/// What applying a [`Command`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The write applied at `revision`.
    Written {
        /// The revision of this write.
        revision: u64,
        /// The stored object (for deletes: the last value, stamped with the delete revision).
        value: Bytes,
    },
    /// A precondition failed; nothing was written.
    Failed {
        /// Why.
        reason: Failure,
        /// The current revision of the key, if it exists.
        current: Option<u64>,
    },
    /// The history was compacted up to this revision.
    Compacted {
        /// The new compaction point.
        revision: u64,
    },
}

/// Why a precondition failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// The key exists but the command required it to be absent.
    AlreadyExists,
    /// The key does not exist but the command required it.
    NotFound,
    /// The key was written at a different revision than expected.
    Conflict,
    /// The value was not a JSON object.
    Malformed,
}
