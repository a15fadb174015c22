//! Background writeback of the state machine's file. Applies commit without syncing (see
//! `Checkpoint` in `state_machine.rs`), which leaves their pages dirty in the kernel's page
//! cache; the durable apply once a second then wrote a second's worth of them out while it
//! held redb's write lock — a stall of every apply, and so of every watcher, of 40–100 ms
//! under load. A thread syncs the file every [`EVERY`] meanwhile, on a descriptor of its
//! own and without any lock of redb's, whenever an apply has written since, so the durable
//! apply finds little left to write.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redb::Database;

/// How often the file is synced while applies write to it.
const EVERY: Duration = Duration::from_millis(50);

/// Starts syncing `path` (the file of `db`) while `db` is open, whenever `unsynced` was set.
pub(crate) fn start(path: &Path, db: &Arc<Database>, unsynced: Arc<AtomicBool>) {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "no background writeback of the store file");
            return;
        }
    };
    let db: Weak<Database> = Arc::downgrade(db);
    let spawned = std::thread::Builder::new()
        .name("store-writeback".into())
        .spawn(move || {
            while db.strong_count() > 0 {
                std::thread::sleep(EVERY);
                if unsynced.swap(false, Ordering::AcqRel)
                    && let Err(error) = file.sync_data()
                {
                    // The durable apply syncs (and reports) for real; this only spreads it out.
                    tracing::debug!(%error, "background writeback of the store file");
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no background writeback of the store file");
    }
}
