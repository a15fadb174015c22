//! Expectations (Kubernetes' `ControllerExpectations`): what a controller has asked for and
//! not yet seen in its cache. Until the cache catches up, the controller must not act on the
//! stale view — otherwise a lagging watch would make it create the same pods twice.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Expectations older than this are dropped (Kubernetes: 5 minutes), so a lost watch event
/// cannot wedge a controller forever.
pub const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Pending {
    creations: HashSet<String>,
    deletions: HashSet<String>,
    since: Instant,
}

/// Per-owner pending creations and deletions, by object name.
#[derive(Debug, Default)]
pub struct Expectations {
    owners: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    /// Records that `owner` created these objects.
    pub fn expect_creations(&self, owner: &str, names: impl IntoIterator<Item = String>) {
        self.entry(owner, |p| p.creations.extend(names));
    }

    /// Records that `owner` deleted these objects.
    pub fn expect_deletions(&self, owner: &str, names: impl IntoIterator<Item = String>) {
        self.entry(owner, |p| p.deletions.extend(names));
    }

    fn entry(&self, owner: &str, f: impl FnOnce(&mut Pending)) {
        let mut owners = self.owners.lock().expect("expectations lock");
        let p = owners.entry(owner.to_owned()).or_insert_with(|| Pending {
            creations: HashSet::new(),
            deletions: HashSet::new(),
            since: Instant::now(),
        });
        p.since = Instant::now();
        f(p);
    }

    /// A deletion that failed will not be observed (Kubernetes' `DeletionObserved` on error):
    /// stop waiting for it.
    pub fn deletion_failed(&self, owner: &str, name: &str) {
        if let Some(p) = self
            .owners
            .lock()
            .expect("expectations lock")
            .get_mut(owner)
        {
            p.deletions.remove(name);
        }
    }

    /// Whether the cache has caught up with everything `owner` did: every created name is
    /// `present`, every deleted one is not. Settled names are forgotten.
    pub fn satisfied(&self, owner: &str, present: impl Fn(&str) -> bool) -> bool {
        let mut owners = self.owners.lock().expect("expectations lock");
        let Some(p) = owners.get_mut(owner) else {
            return true;
        };
        p.creations.retain(|n| !present(n));
        p.deletions.retain(|n| present(n));
        let done = (p.creations.is_empty() && p.deletions.is_empty())
            || p.since.elapsed() > EXPECTATIONS_TTL;
        if done {
            owners.remove(owner);
        }
        done
    }

    /// [`satisfied`](Self::satisfied), where present means named among `seen`.
    pub fn satisfied_by<K: kube::Resource>(&self, owner: &str, seen: &[std::sync::Arc<K>]) -> bool {
        self.satisfied(owner, |name| {
            seen.iter().any(|o| o.meta().name.as_deref() == Some(name))
        })
    }

    /// Forgets an owner (it was deleted).
    pub fn forget(&self, owner: &str) {
        self.owners.lock().expect("expectations lock").remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsatisfied_until_the_cache_shows_every_create_and_delete() {
        let e = Expectations::default();
        assert!(e.satisfied("rs", |_| false), "nothing pending");
        e.expect_creations("rs", ["a".to_owned(), "b".to_owned()]);
        e.expect_deletions("rs", ["old".to_owned()]);
        assert!(!e.satisfied("rs", |n| n == "a" || n == "old"));
        assert!(
            !e.satisfied("rs", |n| n == "b" || n == "old"),
            "a was seen already; old is still there"
        );
        assert!(e.satisfied("rs", |n| n == "b"));
    }
}
