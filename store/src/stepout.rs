//! A leader whose disk is slow steps out of its group.
//!
//! openraft 0.9's core waits for each sync of its own log before it runs its next command,
//! heartbeats included, and has no leadership transfer: a leader whose disk syncs slowly keeps
//! leading, and every write of the group waits for that disk. So every sync of this member's
//! raft log is timed from the moment it was asked for. One that takes longer than
//! [`crate::Config::max_sync`] while this member led a group that goes on without it (at least
//! three voters, and a majority of them other than this one answering) fails as a storage
//! error: this member's raft stops, the server serves nothing and says why
//! ([`crate::Store::failure`]), and the others elect a leader among themselves. It takes part
//! again once restarted, as after a full disk. Alone, or when the group needs it for a
//! majority, a slow sync is logged (as etcd logs a slow `fdatasync`) and nothing more.
//!
//! The failpoint (`Config::failpoints`, for tests): while `DATA_DIR/failpoints/slow-sync`
//! holds a number, each sync of the log takes that many more milliseconds.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use openraft::ServerState;

use openraft::Raft;

use crate::command::{NodeId, TypeConfig};

/// What decides whether a slow sync makes this member step out.
pub(crate) struct SyncGuard {
    limit: Option<Duration>,
    /// Whether the group went on without this member, as of the last look at raft's metrics.
    may_step_out: AtomicBool,
    failpoint: Option<PathBuf>,
    last_warned: Mutex<Option<Instant>>,
}

/// How often a slow sync is logged at most, when it changes nothing.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl SyncGuard {
    /// A guard with `limit` (none: never step out) and, when `failpoint`, the slow-sync
    /// failpoint under `data_dir`.
    pub(crate) fn new(limit: Option<Duration>, failpoint: Option<PathBuf>) -> Self {
        SyncGuard {
            limit,
            may_step_out: AtomicBool::new(false),
            failpoint,
            last_warned: Mutex::new(None),
        }
    }

    /// Whether a slow sync asked for now would make this member step out.
    pub(crate) fn may_step_out(&self) -> bool {
        self.may_step_out.load(Ordering::Relaxed)
    }

    /// Judges a sync asked for at `asked` that has just completed, when `could_step_out` was
    /// [`SyncGuard::may_step_out`] then. Runs on the log's flush thread.
    ///
    /// # Errors
    /// The sync was slow and the group goes on without this member.
    pub(crate) fn judge(&self, asked: Instant, could_step_out: bool) -> io::Result<()> {
        if let Some(ms) = self.failpoint.as_ref().and_then(|f| {
            std::fs::read_to_string(f)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        }) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let took = asked.elapsed();
        if took <= limit {
            return Ok(());
        }
        if could_step_out {
            return Err(io::Error::other(format!(
                "a sync of the raft log took {took:.1?}, more than the {limit:?} allowed \
                 (--store-max-sync): this leader steps out so that the other servers lead; \
                 check this server's disk, then restart it"
            )));
        }
        let mut last = self
            .last_warned
            .lock()
            .expect("the warn lock is not poisoned");
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                took = ?took,
                allowed = ?limit,
                "slow sync of the raft log; this server stays (alone, a follower, or needed for a majority)"
            );
        }
        Ok(())
    }

    /// Keeps [`SyncGuard::may_step_out`] current from `raft`'s metrics until raft stops. A
    /// follower answers if its matched log index is the leader's last, or changed within the
    /// limit.
    pub(crate) async fn watch(&self, raft: Raft<TypeConfig>) {
        let Some(window) = self.limit else {
            return;
        };
        let mut metrics = raft.metrics();
        let mut seen: std::collections::BTreeMap<NodeId, (u64, Instant)> = Default::default();
        loop {
            let can = {
                let m = metrics.borrow_and_update();
                let now = Instant::now();
                let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
                let last = m.last_log_index.unwrap_or(0);
                let answering = m
                    .replication
                    .iter()
                    .flatten()
                    .filter(|(id, _)| **id != m.id && voters.contains(id))
                    .filter(|(id, matched)| {
                        let index = matched.map_or(0, |l| l.index);
                        let at = seen.entry(**id).or_insert((index, now));
                        if at.0 != index {
                            *at = (index, now);
                        }
                        index >= last || now.duration_since(at.1) <= window
                    })
                    .count();
                m.state == ServerState::Leader && voters.len() >= 3 && answering > voters.len() / 2
            };
            self.may_step_out.store(can, Ordering::Relaxed);
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(window / 2) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_sync_should_fail_only_where_the_group_goes_on_without_this_member() {
        let guard = SyncGuard::new(Some(Duration::from_millis(50)), None);
        let long_ago = Instant::now()
            .checked_sub(Duration::from_millis(200))
            .expect("the clock is past 200 ms");
        let e = guard
            .judge(long_ago, true)
            .expect_err("a slow leader that may step out does");
        assert!(e.to_string().contains("steps out"), "{e}");
        assert!(guard.judge(long_ago, false).is_ok(), "needed: it stays");
        assert!(guard.judge(Instant::now(), true).is_ok(), "a quick sync");
        let never = SyncGuard::new(None, None);
        assert!(never.judge(long_ago, true).is_ok(), "no limit");
    }

    #[test]
    fn the_failpoint_should_slow_each_sync_while_its_file_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("slow-sync");
        let guard = SyncGuard::new(Some(Duration::from_millis(30)), Some(file.clone()));
        assert!(
            guard.judge(Instant::now(), true).is_ok(),
            "no file: no delay"
        );
        std::fs::write(&file, "60").expect("write the failpoint");
        assert!(guard.judge(Instant::now(), true).is_err(), "60 ms > 30 ms");
    }
}
