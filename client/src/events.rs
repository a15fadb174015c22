//! Events (`events.k8s.io/v1`) as kube-runtime's `Recorder` writes them: a new event per
//! (regarding object, type, reason, action, related object), and a repeat within
//! [`SERIES_WINDOW`] of the last one bumps that event's `series` (count, last observed)
//! instead of creating another, as client-go's event broadcaster does.
//!
//! Why not kube-runtime's `Recorder` itself: it keeps every event it wrote for six minutes
//! (the whole event, cloned) and scans all of them on every publish to drop the expired ones.
//! The scheduler records a `Scheduled` event per pod, so at 1,000 pods/s that cache held up
//! to 360,000 events and its scan was 4.4% of the whole server's CPU (`perf`, the `podstart`
//! benchmark's open loop). Here the memory is bounded ([`MAX_REMEMBERED`] keys, a name and a
//! count each) and the expired are dropped at most every [`GC_EVERY`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};

/// How long a repeat is folded into the last event of its kind (kube-runtime's cache TTL).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// Most events remembered for folding; past it the expired are dropped, then all (a repeat
/// then starts a new event, which loses nothing but the count).
pub const MAX_REMEMBERED: usize = 16_384;

/// How often the expired are dropped at most.
const GC_EVERY: Duration = Duration::from_secs(10);

/// What makes two events the same (the reporter is the recorder's own).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    reason: String,
    action: String,
    regarding: Reference,
    related: Option<Reference>,
}

/// The identifying fields of an `ObjectReference`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Reference([Option<String>; 6]);

impl From<&ObjectReference> for Reference {
    fn from(r: &ObjectReference) -> Self {
        Reference([
            r.api_version.clone(),
            r.kind.clone(),
            r.namespace.clone(),
            r.name.clone(),
            r.uid.clone(),
            r.field_path.clone(),
        ])
    }
}

/// The event last written for a key.
struct Written {
    namespace: String,
    name: String,
    count: i32,
    last: Instant,
}

#[derive(Default)]
struct Remembered {
    events: HashMap<Key, Written>,
    next_gc: Option<Instant>,
}

impl Remembered {
    /// The event a repeat at `now` folds into (namespace, name) and its next count.
    fn fold(&mut self, key: &Key, now: Instant) -> Option<(String, String, i32)> {
        let w = self.events.get_mut(key)?;
        if now.duration_since(w.last) >= SERIES_WINDOW {
            return None;
        }
        w.count += 1;
        w.last = now;
        Some((w.namespace.clone(), w.name.clone(), w.count))
    }

    fn remember(&mut self, key: Key, namespace: String, name: String, now: Instant) {
        let due = self.next_gc.is_none_or(|at| now >= at);
        if due || self.events.len() >= MAX_REMEMBERED {
            self.events
                .retain(|_, w| now.duration_since(w.last) < SERIES_WINDOW);
            self.next_gc = Some(now + GC_EVERY);
            if self.events.len() >= MAX_REMEMBERED {
                self.events.clear();
            }
        }
        self.events.insert(
            key,
            Written {
                namespace,
                name,
                count: 1,
                last: now,
            },
        );
    }
}

/// Publishes events for one reporter (a controller, the scheduler); cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    remembered: Arc<Mutex<Remembered>>,
}

impl Recorder {
    /// A recorder whose events name `reporter` as `reportingController`/`reportingInstance`.
    #[must_use]
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Recorder {
            client,
            reporter,
            remembered: Arc::default(),
        }
    }

    /// Records `ev` about `regarding`, in its namespace (`default` for cluster-scoped
    /// objects): a new event, or the last one's series bumped when it repeats.
    ///
    /// # Errors
    /// The API server's refusal.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = Key {
            warning: matches!(ev.type_, EventType::Warning),
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            regarding: regarding.into(),
            related: ev.secondary.as_ref().map(Reference::from),
        };
        let now = Instant::now();
        let at = MicroTime(jiff::Timestamp::now());
        let folded = self.lock().fold(&key, now);
        if let Some((namespace, name, count)) = folded {
            let series = EventSeries {
                count,
                last_observed_time: at.clone(),
            };
            let patch = serde_json::json!({ "series": series });
            let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Gone (expired or deleted): record it afresh.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let namespace = regarding
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let name = format!(
            "{}.{:x}",
            regarding
                .name
                .as_deref()
                .unwrap_or(&self.reporter.controller),
            at.0.as_nanosecond()
        );
        let event = K8sEvent {
            metadata: ObjectMeta {
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            event_time: Some(at),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(if key.warning { "Warning" } else { "Normal" }.into()),
            ..K8sEvent::default()
        };
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &event).await?;
        self.lock().remember(key, namespace, name, now);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.remembered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, reason: &str) -> Key {
        Key {
            warning: false,
            reason: reason.into(),
            action: "Binding".into(),
            regarding: Reference::from(&ObjectReference {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectReference::default()
            }),
            related: None,
        }
    }

    #[test]
    fn a_repeat_within_the_window_should_fold_into_the_last_event_and_count() {
        let mut r = Remembered::default();
        let t0 = Instant::now();
        r.remember(key("a", "Scheduled"), "default".into(), "a.1".into(), t0);
        assert_eq!(
            r.fold(&key("a", "Scheduled"), t0 + Duration::from_secs(1)),
            Some(("default".into(), "a.1".into(), 2))
        );
        assert_eq!(
            r.fold(&key("a", "Scheduled"), t0 + Duration::from_secs(2)),
            Some(("default".into(), "a.1".into(), 3))
        );
        // Another reason, another object: new events.
        assert_eq!(r.fold(&key("a", "FailedScheduling"), t0), None);
        assert_eq!(r.fold(&key("b", "Scheduled"), t0), None);
        // The window counts from the last repeat.
        assert!(
            r.fold(
                &key("a", "Scheduled"),
                t0 + Duration::from_secs(2) + SERIES_WINDOW - Duration::from_secs(1)
            )
            .is_some()
        );
        assert_eq!(
            r.fold(
                &key("a", "Scheduled"),
                t0 + Duration::from_secs(1) + 3 * SERIES_WINDOW
            ),
            None
        );
    }

    #[test]
    fn remembered_events_should_stay_bounded_and_drop_the_expired() {
        let mut r = Remembered::default();
        let t0 = Instant::now();
        for i in 0..MAX_REMEMBERED + 10 {
            r.remember(
                key(&i.to_string(), "Scheduled"),
                "default".into(),
                format!("{i}.1"),
                t0,
            );
            assert!(r.events.len() <= MAX_REMEMBERED);
        }
        // The newest is still folded into.
        let last = (MAX_REMEMBERED + 9).to_string();
        assert!(r.fold(&key(&last, "Scheduled"), t0).is_some());
        // Past the window and the collection period, one more event leaves only itself.
        let later = t0 + SERIES_WINDOW + GC_EVERY;
        r.remember(
            key("late", "Scheduled"),
            "default".into(),
            "late.1".into(),
            later,
        );
        assert_eq!(r.events.len(), 1);
    }
}
