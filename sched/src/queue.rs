//! The scheduling queue (kube-scheduler's `PriorityQueue`), as pure data with explicit time:
//! - *active*: ready to try, highest priority first, then oldest;
//! - *backoff*: failed recently, waiting out a per-pod back-off (1 s doubling to 10 s);
//! - *unschedulable*: no node fitted; moved back when the cluster changes (a node appears or
//!   changes, a pod goes away) or after five minutes at the latest.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::framework::PodInfo;

/// First back-off after a failed attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Back-off cap.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest a pod waits in *unschedulable* without a cluster event.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Queued {
    info: PodInfo,
    attempts: u32,
    seq: u64,
    where_: Where,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    InFlight,
}

/// The queue.
#[derive(Debug, Default)]
pub struct SchedulingQueue {
    pods: HashMap<String, Queued>,
    /// (Reverse(priority), seq, key): the first element is the next to pop.
    active: BTreeSet<(Reverse<i32>, u64, String)>,
    seq: u64,
    /// Set when a cluster event arrives while pods are in flight, so their failures retry at
    /// once instead of parking (kube-scheduler's `moveRequestCycle`).
    moved_during_flight: bool,
}

impl SchedulingQueue {
    /// Adds or updates an unscheduled pod. An update of a parked pod makes it active again
    /// (its spec may now fit); an in-flight pod keeps going with the new object next time.
    pub fn add(&mut self, info: PodInfo) {
        let key = info.key();
        match self.pods.get_mut(&key) {
            Some(q) => {
                q.info = info;
                if matches!(q.where_, Where::Unschedulable(_)) {
                    q.where_ = Where::Active;
                    self.active.insert((Reverse(q.info.priority()), q.seq, key));
                }
            }
            None => {
                self.seq += 1;
                self.active
                    .insert((Reverse(info.priority()), self.seq, key.clone()));
                self.pods.insert(
                    key,
                    Queued {
                        info,
                        attempts: 0,
                        seq: self.seq,
                        where_: Where::Active,
                    },
                );
            }
        }
    }

    /// Forgets a pod (deleted, or bound by someone).
    pub fn remove(&mut self, key: &str) {
        if let Some(q) = self.pods.remove(key) {
            self.active
                .remove(&(Reverse(q.info.priority()), q.seq, key.to_owned()));
        }
    }

    /// The next pod to schedule, marked in flight.
    pub fn pop(&mut self, now: Instant) -> Option<PodInfo> {
        self.flush(now);
        let (_, _, key) = self.active.pop_first()?;
        let q = self.pods.get_mut(&key).expect("active pods are queued");
        q.where_ = Where::InFlight;
        q.attempts += 1;
        Some(q.info.clone())
    }

    /// The attempt for `key` bound it: it leaves the queue.
    pub fn done(&mut self, key: &str) {
        self.pods.remove(key);
    }

    /// The attempt for `key` found no node (`unschedulable`) or hit an error: park it.
    pub fn failed(&mut self, key: &str, unschedulable: bool, now: Instant) {
        let moved = self.moved_during_flight;
        let Some(q) = self.pods.get_mut(key) else {
            return;
        };
        let backoff = backoff_for(q.attempts);
        q.where_ = if unschedulable && !moved {
            Where::Unschedulable(now)
        } else {
            Where::Backoff(now + backoff)
        };
        if !self.pods.values().any(|q| q.where_ == Where::InFlight) {
            self.moved_during_flight = false;
        }
    }

    /// Something changed in the cluster that may let parked pods fit: move them to back-off
    /// (or straight to active when their back-off has passed).
    pub fn cluster_changed(&mut self, now: Instant) {
        for q in self.pods.values_mut() {
            match q.where_ {
                Where::Unschedulable(since) => {
                    q.where_ = Where::Backoff(since + backoff_for(q.attempts))
                }
                Where::InFlight => self.moved_during_flight = true,
                _ => {}
            }
        }
        self.flush(now);
    }

    /// Moves pods whose back-off has passed, and long-parked ones, to active.
    pub fn flush(&mut self, now: Instant) {
        for (key, q) in &mut self.pods {
            let ready = match q.where_ {
                Where::Backoff(until) => until <= now,
                Where::Unschedulable(since) => now.duration_since(since) >= MAX_UNSCHEDULABLE,
                _ => false,
            };
            if ready {
                q.where_ = Where::Active;
                self.active
                    .insert((Reverse(q.info.priority()), q.seq, key.clone()));
            }
        }
    }

    /// When the next back-off or parking period ends, if any.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.pods
            .values()
            .filter_map(|q| match q.where_ {
                Where::Backoff(until) => Some(until),
                Where::Unschedulable(since) => Some(since + MAX_UNSCHEDULABLE),
                _ => None,
            })
            .min()
    }

    /// Pods waiting in *active*.
    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    /// Whether `key` is queued (in any state).
    pub fn contains(&self, key: &str) -> bool {
        self.pods.contains_key(key)
    }
}

fn backoff_for(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (INITIAL_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::pod;
    use serde_json::json;

    fn named(name: &str, priority: i32) -> PodInfo {
        let mut p = pod(json!({"priority": priority}));
        p.pod.metadata.name = Some(name.into());
        p
    }

    #[test]
    fn higher_priority_then_older_pods_come_first() {
        let mut q = SchedulingQueue::default();
        let now = Instant::now();
        q.add(named("low-old", 0));
        q.add(named("high", 100));
        q.add(named("low-new", 0));
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now).map(|p| p.key())).collect();
        assert_eq!(
            order,
            ["default/high", "default/low-old", "default/low-new"]
        );
    }

    #[test]
    fn unschedulable_pods_wait_for_a_cluster_event_then_their_backoff() {
        let mut q = SchedulingQueue::default();
        let t0 = Instant::now();
        q.add(named("p", 0));
        let p = q.pop(t0).expect("active");
        q.failed(&p.key(), true, t0);
        assert!(
            q.pop(t0 + Duration::from_secs(60)).is_none(),
            "parked until something changes"
        );
        q.cluster_changed(t0 + Duration::from_millis(100));
        assert!(
            q.pop(t0 + Duration::from_millis(500)).is_none(),
            "still backing off"
        );
        assert!(
            q.pop(t0 + Duration::from_secs(1)).is_some(),
            "back-off of the first attempt is 1 s"
        );
    }

    #[test]
    fn parked_pods_retry_after_five_minutes_anyway() {
        let mut q = SchedulingQueue::default();
        let t0 = Instant::now();
        q.add(named("p", 0));
        q.pop(t0);
        q.failed("default/p", true, t0);
        assert_eq!(q.next_wakeup(), Some(t0 + MAX_UNSCHEDULABLE));
        assert!(q.pop(t0 + MAX_UNSCHEDULABLE).is_some());
    }

    #[test]
    fn an_event_during_an_attempt_turns_its_failure_into_a_quick_retry() {
        let mut q = SchedulingQueue::default();
        let t0 = Instant::now();
        q.add(named("p", 0));
        q.pop(t0);
        q.cluster_changed(t0);
        q.failed("default/p", true, t0);
        assert!(
            q.pop(t0 + INITIAL_BACKOFF).is_some(),
            "retried after its back-off, not parked"
        );
    }

    #[test]
    fn errors_back_off_exponentially_up_to_the_cap() {
        assert_eq!(backoff_for(1), Duration::from_secs(1));
        assert_eq!(backoff_for(2), Duration::from_secs(2));
        assert_eq!(backoff_for(4), Duration::from_secs(8));
        assert_eq!(backoff_for(9), MAX_BACKOFF);
    }
}
