//! Events (`events.k8s.io/v1`) as client-go's event recorder writes them for
//! kube-controller-manager and the kubelet: a new event per (regarding object, type, reason,
//! action, related object, note), and a repeat within [`SERIES_WINDOW`] of the last one bumps
//! that event's `series` (count, last observed) instead of creating another. Past
//! [`SIMILAR_EVENTS`] different notes alike otherwise within [`SIMILAR_WINDOW`] (a ReplicaSet's
//! "Created pod: …" for each of its pods), the rest are combined into one event whose note
//! starts "(combined from similar events): ", as client-go's `EventCorrelator` combines them.
//! (kube-runtime's `Recorder` leaves the note out of what makes two events the same, so a
//! Deployment's "Scaled up replica set A" and "Scaled down replica set B" showed as the first
//! one, x2.)
//!
//! Events are written in the background, at most [`EventLimits`] per second with a burst
//! (kube-scheduler's and the kubelet's defaults: 50/s, burst 100); past that they wait in a
//! queue of [`QUEUE`] and beyond it are dropped, counted in the log, as client-go's broadcaster
//! drops when its queue of 1,000 is full. Recording never waits for the API server: at 1,000
//! pods/s a `Scheduled` event per pod was every fourth API request (`podstart`).
//!
//! Why not kube-runtime's `Recorder` itself: it keeps every event it wrote for six minutes
//! (the whole event, cloned) and scans all of them on every publish to drop the expired ones.
//! The scheduler records a `Scheduled` event per pod, so at 1,000 pods/s that cache held up
//! to 360,000 events and its scan was 4.4% of the whole server's CPU (`perf`, the `podstart`
//! benchmark's open loop). Here the memory is bounded ([`MAX_REMEMBERED`] keys, a name and a
//! count each) and the expired are dropped at most every [`GC_EVERY`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
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

/// How many events alike but for their note are written one by one within
/// [`SIMILAR_WINDOW`] before the rest are combined (client-go's `maxEvents`, 10; the tenth
/// different note is the first combined).
pub const SIMILAR_EVENTS: usize = 10;

/// How long notes alike count toward [`SIMILAR_EVENTS`] (client-go's 600 s), from the last.
pub const SIMILAR_WINDOW: Duration = Duration::from_secs(600);

/// What a combined event's note starts with, as client-go writes it.
pub const COMBINED: &str = "(combined from similar events): ";

/// How often the expired are dropped at most.
const GC_EVERY: Duration = Duration::from_secs(10);

/// Events waiting for the rate limit at most; more are dropped (client-go's broadcaster
/// queues 1,000).
pub const QUEUE: usize = 1024;

/// How many events a component writes per second at most, after a burst: the kubelet's
/// `eventRecordQPS`/`eventBurst` (`--event-qps`, `--event-burst`), and what kube-scheduler's
/// client allows (`qps` 50, `burst` 100).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventLimits {
    /// Events per second; 0 or less: no limit.
    pub qps: f64,
    /// Events written at once before the rate applies.
    pub burst: u32,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            qps: 50.0,
            burst: 100,
        }
    }
}

/// A token bucket (client-go's `flowcontrol.NewTokenBucketRateLimiter`): `burst` tokens,
/// refilled at `qps` a second.
#[derive(Debug)]
pub struct TokenBucket {
    limits: EventLimits,
    tokens: f64,
    at: tokio::time::Instant,
}

impl TokenBucket {
    /// A full bucket.
    #[must_use]
    pub fn new(limits: EventLimits) -> Self {
        TokenBucket {
            limits,
            tokens: f64::from(limits.burst.max(1)),
            at: tokio::time::Instant::now(),
        }
    }

    fn unlimited(&self) -> bool {
        self.limits.qps <= 0.0
    }

    /// How long from `now` until a token is there (zero when one is).
    #[must_use]
    pub fn wait(&self, now: tokio::time::Instant) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        let tokens = self.tokens_at(now);
        if tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - tokens) / self.limits.qps)
        }
    }

    /// Takes a token at `now`; false (and nothing taken) when none is there.
    pub fn take(&mut self, now: tokio::time::Instant) -> bool {
        if self.unlimited() {
            return true;
        }
        let tokens = self.tokens_at(now);
        if tokens < 1.0 {
            return false;
        }
        self.tokens = tokens - 1.0;
        self.at = now.max(self.at);
        true
    }

    /// Waits until a token is there (without taking it).
    pub async fn ready(&self) {
        let wait = self.wait(tokio::time::Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits for a token and takes it.
    pub async fn acquire(&mut self) {
        while !self.take(tokio::time::Instant::now()) {
            self.ready().await;
        }
    }

    fn tokens_at(&self, now: tokio::time::Instant) -> f64 {
        let refilled = now.saturating_duration_since(self.at).as_secs_f64() * self.limits.qps;
        (self.tokens + refilled).min(f64::from(self.limits.burst.max(1)))
    }
}

/// Counts events dropped for a full queue and logs at exponentially spaced counts, not once
/// per event.
pub fn count_dropped(counter: &AtomicU64, reason: &str) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::warn!(reason, dropped = n, "event queue full; dropping events");
    }
}

/// What makes two events the same (the reporter is the recorder's own).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    reason: String,
    action: String,
    regarding: Reference,
    related: Option<Reference>,
    /// The note; `None` for the combined event of notes alike (and for the key of likeness).
    note: Option<String>,
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

/// The different notes seen for events alike but for their note.
struct Similar {
    notes: HashSet<String>,
    last: Instant,
}

#[derive(Default)]
struct Remembered {
    events: HashMap<Key, Written>,
    similar: HashMap<Key, Similar>,
    next_gc: Option<Instant>,
}

impl Remembered {
    /// The key an event with `note` is written under, and the note it is written with: its
    /// own, or, once [`SIMILAR_EVENTS`] different notes were seen for events alike in the
    /// window, the one combined event's (client-go's `EventAggregator`).
    fn correlate(
        &mut self,
        alike: Key,
        note: Option<String>,
        now: Instant,
    ) -> (Key, Option<String>) {
        if self.similar.len() >= MAX_REMEMBERED {
            self.similar
                .retain(|_, s| now.duration_since(s.last) < SIMILAR_WINDOW);
            if self.similar.len() >= MAX_REMEMBERED {
                self.similar.clear();
            }
        }
        let seen = self
            .similar
            .entry(alike.clone())
            .or_insert_with(|| Similar {
                notes: HashSet::new(),
                last: now,
            });
        if now.duration_since(seen.last) >= SIMILAR_WINDOW {
            seen.notes.clear();
        }
        seen.last = now;
        let text = note.clone().unwrap_or_default();
        if seen.notes.len() < SIMILAR_EVENTS {
            seen.notes.insert(text.clone());
        }
        if seen.notes.len() < SIMILAR_EVENTS {
            return (
                Key {
                    note: Some(text),
                    ..alike
                },
                note,
            );
        }
        (alike, Some(format!("{COMBINED}{text}")))
    }

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
            self.similar
                .retain(|_, s| now.duration_since(s.last) < SIMILAR_WINDOW);
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

/// Records events for one reporter (a controller, the scheduler) through a writer task of its
/// own, rate-limited by [`EventLimits`]; cheap to clone. The writer ends when every clone is
/// dropped.
#[derive(Clone)]
pub struct Recorder {
    tx: tokio::sync::mpsc::Sender<Queued>,
}

/// An event as recorded, waiting for the writer: its time is when it was recorded.
struct Queued {
    ev: Event,
    regarding: ObjectReference,
    at: jiff::Timestamp,
    when: Instant,
}

static DROPPED: AtomicU64 = AtomicU64::new(0);

impl Recorder {
    /// A recorder whose events name `reporter` as `reportingController`/`reportingInstance`,
    /// at the default [`EventLimits`]. Call within a tokio runtime.
    #[must_use]
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self::with_limits(client, reporter, EventLimits::default())
    }

    /// [`Recorder::new`] at `limits`.
    #[must_use]
    pub fn with_limits(client: Client, reporter: Reporter, limits: EventLimits) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Queued>(QUEUE);
        let writer = Writer {
            client,
            reporter,
            remembered: Remembered::default(),
        };
        tokio::spawn(async move {
            let mut writer = writer;
            let mut bucket = TokenBucket::new(limits);
            loop {
                bucket.ready().await;
                let Some(queued) = rx.recv().await else {
                    return;
                };
                bucket.acquire().await;
                if let Err(e) = writer.publish(&queued).await {
                    tracing::debug!(error = %e, reason = %queued.ev.reason, "could not record an event");
                }
            }
        });
        Recorder { tx }
    }

    /// Queues `ev` about `regarding` (in its namespace; `default` for cluster-scoped objects)
    /// for the writer: a new event, or the last one's series bumped when it repeats. Never
    /// waits; dropped, and counted in the log, when the queue is full.
    pub fn record(&self, ev: Event, regarding: ObjectReference) {
        let queued = Queued {
            ev,
            regarding,
            at: jiff::Timestamp::now(),
            when: Instant::now(),
        };
        if let Err(e) = self.tx.try_send(queued) {
            let reason = match &e {
                tokio::sync::mpsc::error::TrySendError::Full(q)
                | tokio::sync::mpsc::error::TrySendError::Closed(q) => q.ev.reason.clone(),
            };
            count_dropped(&DROPPED, &reason);
        }
    }

    /// Records a `Normal` event: `reason` (CamelCase, e.g. `SuccessfulCreate`), the `action`
    /// taken (`Create`), and the note people read (`Created pod: web-0`).
    pub fn normal(&self, regarding: ObjectReference, reason: &str, action: &str, note: String) {
        self.record(event(EventType::Normal, reason, action, note), regarding);
    }

    /// Records a `Warning` event, as [`Recorder::normal`].
    pub fn warning(&self, regarding: ObjectReference, reason: &str, action: &str, note: String) {
        self.record(event(EventType::Warning, reason, action, note), regarding);
    }
}

fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    }
}

/// The writer task's half: the client and what it wrote recently.
struct Writer {
    client: Client,
    reporter: Reporter,
    remembered: Remembered,
}

impl Writer {
    /// Writes a recorded event: a new one, or the last one's series bumped.
    async fn publish(&mut self, queued: &Queued) -> Result<(), kube::Error> {
        let (ev, regarding) = (&queued.ev, &queued.regarding);
        let now = queued.when;
        let alike = Key {
            warning: matches!(ev.type_, EventType::Warning),
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            regarding: regarding.into(),
            related: ev.secondary.as_ref().map(Reference::from),
            note: None,
        };
        let (key, note) = self.remembered.correlate(alike, ev.note.clone(), now);
        let at = MicroTime(queued.at);
        let folded = self.remembered.fold(&key, now);
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
            note,
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
        self.remembered.remember(key, namespace, name, now);
        Ok(())
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
            note: Some("Successfully assigned".into()),
        }
    }

    #[test]
    fn a_token_bucket_should_allow_its_burst_then_its_rate() {
        let mut b = TokenBucket::new(EventLimits {
            qps: 10.0,
            burst: 3,
        });
        let t0 = b.at;
        for _ in 0..3 {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0), "the burst is spent");
        let wait = b.wait(t0);
        assert!(
            wait > Duration::from_millis(99) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        // Idle for long, it holds its burst and no more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.wait(later), Duration::ZERO);
        for _ in 0..3 {
            assert!(b.take(later));
        }
        assert!(!b.take(later));
    }

    #[test]
    fn a_token_bucket_without_a_rate_should_never_wait() {
        let mut b = TokenBucket::new(EventLimits { qps: 0.0, burst: 1 });
        let t0 = tokio::time::Instant::now();
        for _ in 0..1000 {
            assert!(b.take(t0));
        }
        assert_eq!(b.wait(t0), Duration::ZERO);
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

    #[test]
    fn notes_alike_past_ten_should_combine_into_one_event() {
        let mut r = Remembered::default();
        let t0 = Instant::now();
        let alike = Key {
            note: None,
            ..key("web", "SuccessfulCreate")
        };
        let mut own = HashSet::new();
        for i in 0..SIMILAR_EVENTS - 1 {
            let note = format!("Created pod: web-{i}");
            let (k, written) = r.correlate(alike.clone(), Some(note.clone()), t0);
            assert_eq!(written.as_deref(), Some(note.as_str()));
            assert_eq!(k.note.as_deref(), Some(note.as_str()));
            own.insert(k);
        }
        assert_eq!(own.len(), SIMILAR_EVENTS - 1, "one event per note");
        // A repeat of a note already seen keeps its own event (to be folded into).
        let (k, _) = r.correlate(alike.clone(), Some("Created pod: web-0".into()), t0);
        assert!(own.contains(&k));
        // The tenth different note and the ones after go to one combined event.
        let (first, note) = r.correlate(alike.clone(), Some("Created pod: web-9".into()), t0);
        assert_eq!(
            note.as_deref(),
            Some("(combined from similar events): Created pod: web-9")
        );
        assert!(!own.contains(&first));
        let (next, _) = r.correlate(alike.clone(), Some("Created pod: web-10".into()), t0);
        assert_eq!(first, next);
        // Another reason is not alike.
        let other = Key {
            note: None,
            ..key("web", "SuccessfulDelete")
        };
        let (k, note) = r.correlate(other, Some("Deleted pod: web-0".into()), t0);
        assert_eq!(note.as_deref(), Some("Deleted pod: web-0"));
        assert_eq!(k.note.as_deref(), Some("Deleted pod: web-0"));
        // Quiet for the window, notes count afresh.
        let (k, note) = r.correlate(
            alike,
            Some("Created pod: web-11".into()),
            t0 + SIMILAR_WINDOW,
        );
        assert_eq!(note.as_deref(), Some("Created pod: web-11"));
        assert_eq!(k.note.as_deref(), Some("Created pod: web-11"));
    }
}
