//! Watching a key prefix from a revision: the retained history first, then the live feed,
//! with no gap and no duplicate between them.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::codec::Change;

/// A stream of [`Change`]s under one prefix, in revision order.
///
/// # Cancel safety
/// [`Watch::next`] is cancel safe: a change is only taken from the buffer or the feed when it
/// is returned.
pub struct Watch {
    prefix: String,
    backlog: VecDeque<Arc<Change>>,
    /// Changes at or below this revision were already read from the history.
    seen: u64,
    live: broadcast::Receiver<Arc<Change>>,
}

/// Why a watch ended.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    /// The watcher fell behind the feed and changes were dropped; it must relist
    /// (Kubernetes answers this with 410 Gone).
    #[error("watcher fell too far behind the change feed")]
    Lagged,
    /// This member replaced its state with a snapshot from the leader (it was too far behind
    /// for the log): changes in between were never seen here one by one, so the watcher must
    /// relist (410 Gone, like [`WatchError::Lagged`]).
    #[error("the store was replaced by a snapshot")]
    Reset,
    /// The store is shutting down.
    #[error("store closed")]
    Closed,
}

impl Watch {
    pub(crate) fn new(
        prefix: String,
        history: Vec<Change>,
        seen: u64,
        live: broadcast::Receiver<Arc<Change>>,
    ) -> Self {
        Watch {
            prefix,
            backlog: history.into_iter().map(Arc::new).collect(),
            seen,
            live,
        }
    }

    /// The next change under the prefix.
    ///
    /// # Errors
    /// [`WatchError::Lagged`] when changes were lost; [`WatchError::Reset`] when the store
    /// installed a snapshot; [`WatchError::Closed`] at shutdown.
    pub async fn next(&mut self) -> Result<Arc<Change>, WatchError> {
        if let Some(change) = self.backlog.pop_front() {
            return Ok(change);
        }
        loop {
            match self.live.recv().await {
                Ok(change) if change.is_reset() => return Err(WatchError::Reset),
                Ok(change)
                    if change.revision > self.seen && change.key.starts_with(&self.prefix) =>
                {
                    return Ok(change);
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return Err(WatchError::Lagged),
                Err(broadcast::error::RecvError::Closed) => return Err(WatchError::Closed),
            }
        }
    }

    /// Changes already available without waiting, up to `max`.
    pub fn try_next(&mut self) -> Option<Result<Arc<Change>, WatchError>> {
        if let Some(change) = self.backlog.pop_front() {
            return Some(Ok(change));
        }
        loop {
            match self.live.try_recv() {
                Ok(change) if change.is_reset() => return Some(Err(WatchError::Reset)),
                Ok(change)
                    if change.revision > self.seen && change.key.starts_with(&self.prefix) =>
                {
                    return Some(Ok(change));
                }
                Ok(_) => continue,
                Err(broadcast::error::TryRecvError::Empty) => return None,
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    return Some(Err(WatchError::Lagged));
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    return Some(Err(WatchError::Closed));
                }
            }
        }
    }
}
