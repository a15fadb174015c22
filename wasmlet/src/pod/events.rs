//! Kubernetes Events about pods, written in the background so a slow API server never stalls
//! a pod worker (the kubelet's event recorder, with `source.component: kubelet`).
//!
//! Like client-go's event correlator, an event identical to one recorded in the last ten
//! minutes (same object, container, type, reason and message: a probe failing every period)
//! bumps that event's `count` and `lastTimestamp` instead of creating another, so
//! `kubectl describe` shows `(x12 over 2m)`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pod::worker::EventType;

/// Events queued beyond this are dropped (and counted in the log), never blocking a worker.
const QUEUE: usize = 1024;

/// How long an identical event is folded into the last one.
const DEDUP_WINDOW: Duration = Duration::from_secs(600);

/// How many recent events are remembered for folding.
const DEDUP_ENTRIES: usize = 4096;

/// What makes two events the same.
type EventKey = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn key_of(e: &Event) -> EventKey {
    (
        e.metadata.namespace.clone().unwrap_or_default(),
        e.involved_object.uid.clone(),
        e.involved_object.field_path.clone(),
        e.type_.clone(),
        e.reason.clone(),
        e.message.clone(),
    )
}

/// The last recorded event of each key: its name, count, and when it was recorded.
#[derive(Default)]
struct Recent(HashMap<EventKey, (String, i32, Instant)>);

impl Recent {
    /// The existing event to fold `e` into, with its next count.
    fn fold(&mut self, e: &Event, now: Instant) -> Option<(String, i32)> {
        let (name, count, at) = self.0.get_mut(&key_of(e))?;
        if now.duration_since(*at) > DEDUP_WINDOW {
            return None;
        }
        *count += 1;
        *at = now;
        Some((name.clone(), *count))
    }

    fn remember(&mut self, e: &Event, now: Instant) {
        if self.0.len() >= DEDUP_ENTRIES {
            self.0
                .retain(|_, (_, _, at)| now.duration_since(*at) <= DEDUP_WINDOW);
            if self.0.len() >= DEDUP_ENTRIES {
                self.0.clear();
            }
        }
        let name = e.metadata.name.clone().unwrap_or_default();
        self.0.insert(key_of(e), (name, 1, now));
    }
}

/// Records events on pods.
#[derive(Clone)]
pub(crate) struct Recorder {
    tx: mpsc::Sender<Event>,
    node: String,
}

impl Recorder {
    /// Starts the writer task; it ends when `shutdown` fires.
    pub(crate) fn start(
        client: Client,
        node: &str,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
        let task = tokio::spawn(async move {
            let mut recent = Recent::default();
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => break,
                    e = rx.recv() => match e { Some(e) => e, None => break },
                };
                let ns = event
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                let now = Instant::now();
                if let Some((name, count)) = recent.fold(&event, now) {
                    let patch = serde_json::json!({
                        "count": count,
                        "lastTimestamp": event.last_timestamp,
                    });
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => continue,
                        // Gone (expired or deleted): record it afresh.
                        Err(e) => tracing::debug!(error = %e, "could not fold an event"),
                    }
                }
                match api.create(&PostParams::default(), &event).await {
                    Ok(_) => recent.remember(&event, now),
                    Err(e) => tracing::debug!(error = %e, "could not record an event"),
                }
            }
        });
        (
            Self {
                tx,
                node: node.to_owned(),
            },
            task,
        )
    }

    /// Records `reason`/`message` about `pod` (optionally about one of its containers).
    pub(crate) fn pod(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: String,
    ) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let involved = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(namespace),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            field_path: container.map(|c| {
                let init = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.init_containers.as_ref())
                    .is_some_and(|ics| ics.iter().any(|ic| ic.name == c));
                if init {
                    format!("spec.initContainers{{{c}}}")
                } else {
                    format!("spec.containers{{{c}}}")
                }
            }),
        };
        self.record(involved, kind, reason, message);
    }

    /// Records `reason`/`message` about Service `namespace/name`.
    pub(crate) fn service(
        &self,
        namespace: &str,
        name: &str,
        kind: EventType,
        reason: &str,
        message: String,
    ) {
        let involved = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        };
        self.record(involved, kind, reason, message);
    }

    fn record(&self, involved: ObjectReference, kind: EventType, reason: &str, message: String) {
        let now = jiff::Timestamp::now();
        let name = involved.name.clone().unwrap_or_default();
        let namespace = involved
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace),
                ..Default::default()
            },
            involved_object: involved,
            reason: Some(reason.to_owned()),
            message: Some(message),
            type_: Some(match kind {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            action: Some(reason.to_owned()),
            ..Default::default()
        };
        if self.tx.try_send(event).is_err() {
            // Like the kubelet's recorder under load, shed events rather than block; say so
            // at exponentially spaced counts, not once per event.
            static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(reason, dropped = n, "event queue full; dropping events");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, message: &str) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                uid: Some("u1".into()),
                field_path: Some("spec.containers{web}".into()),
                ..Default::default()
            },
            reason: Some("Unhealthy".into()),
            message: Some(message.into()),
            type_: Some("Warning".into()),
            ..Default::default()
        }
    }

    #[test]
    fn identical_events_fold_into_the_first_within_the_window() {
        let mut recent = Recent::default();
        let t0 = Instant::now();
        let first = event(
            "p.1",
            "Readiness probe failed: HTTP probe failed with statuscode: 404",
        );
        assert_eq!(recent.fold(&first, t0), None);
        recent.remember(&first, t0);
        let again = event(
            "p.2",
            "Readiness probe failed: HTTP probe failed with statuscode: 404",
        );
        assert_eq!(recent.fold(&again, t0), Some(("p.1".into(), 2)));
        assert_eq!(recent.fold(&again, t0), Some(("p.1".into(), 3)));
        let other = event(
            "p.3",
            "Readiness probe failed: HTTP probe failed with statuscode: 500",
        );
        assert_eq!(
            recent.fold(&other, t0),
            None,
            "another message is another event"
        );
        let later = t0 + DEDUP_WINDOW + Duration::from_secs(1);
        assert_eq!(recent.fold(&again, later), None, "outside the window");
    }
}
