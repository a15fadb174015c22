//! Watching a key prefix from a revision: the retained history first, then the live feed,
//! with no gap and no duplicate between them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::codec::Change;

/// The live change feed: one broadcast channel per watched prefix, so a change wakes only the
/// watchers whose prefix it falls under (a server watches a dozen resources; one shared
/// channel woke every one of them for every write). A reset marker goes to all.
#[derive(Clone)]
pub(crate) struct Feed {
    channels: Arc<Mutex<Vec<Channel>>>,
    capacity: usize,
}

/// A watched prefix and the channel of its changes.
type Channel = (String, broadcast::Sender<Arc<Change>>);

impl Feed {
    /// Each prefix's channel buffers `capacity` changes before its slow watchers lag.
    pub(crate) fn new(capacity: usize) -> Feed {
        Feed {
            channels: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// A receiver of the changes under `prefix`, from now on.
    pub(crate) fn subscribe(&self, prefix: &str) -> broadcast::Receiver<Arc<Change>> {
        let mut channels = self.channels.lock().expect("feed lock");
        if let Some((_, tx)) = channels.iter().find(|(p, _)| p == prefix) {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(self.capacity);
        channels.push((prefix.to_owned(), tx));
        rx
    }

    /// Hands `change` to the watchers of every prefix it falls under.
    pub(crate) fn send(&self, change: Arc<Change>) {
        let mut channels = self.channels.lock().expect("feed lock");
        channels.retain(|(_, tx)| tx.receiver_count() > 0);
        let reset = change.is_reset();
        for (prefix, tx) in channels.iter() {
            if reset || change.key.starts_with(prefix.as_str()) {
                // No receivers left is fine: the channel goes at the next send.
                let _ = tx.send(Arc::clone(&change));
            }
        }
    }
}

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
