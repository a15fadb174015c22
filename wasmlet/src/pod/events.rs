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
use wasmkube_client::events::{EventLimits, TokenBucket, count_dropped};

use crate::pod::worker::EventType;

/// Events queued beyond this are dropped (and counted in the log), never blocking a worker.
const QUEUE: usize = wasmkube_client::events::QUEUE;

/// Scale-from-zero events waiting at most: they are signals the autoscaler acts on, so they
/// pass the pods' events and the rate limit.
const URGENT_QUEUE: usize = 256;

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

/// Records events on pods, Services and this node.
#[derive(Clone)]
pub(crate) struct Recorder {
    tx: mpsc::Sender<Event>,
    urgent: mpsc::Sender<Event>,
    node: String,
}

static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Recorder {
    /// Starts the writer task, which writes pods' events at most `limits` a second (the
    /// kubelet's `--event-qps`/`--event-burst`) and Services' scale-from-zero events first and
    /// at once; it ends when `shutdown` fires.
    pub(crate) fn start(
        client: Client,
        node: &str,
        limits: EventLimits,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
        let (urgent, mut urgent_rx) = mpsc::channel::<Event>(URGENT_QUEUE);
        let task = tokio::spawn(async move {
            let mut recent = Recent::default();
            let mut bucket = TokenBucket::new(limits);
            loop {
                let event = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    Some(e) = urgent_rx.recv() => e,
                    e = async {
                        bucket.ready().await;
                        rx.recv().await
                    } => match e {
                        Some(e) => {
                            bucket.acquire().await;
                            e
                        }
                        None => break,
                    },
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
                urgent,
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

    /// Records `reason`/`message` about this node (the kubelet's node reference: the name
    /// stands for the uid too).
    pub(crate) fn node(&self, kind: EventType, reason: &str, message: String) {
        let involved = ObjectReference {
            kind: Some("Node".into()),
            name: Some(self.node.clone()),
            uid: Some(self.node.clone()),
            ..Default::default()
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
        let event = self.event(involved, kind, reason, message);
        if self.urgent.try_send(event).is_err() {
            count_dropped(&DROPPED, reason);
        }
    }

    fn record(&self, involved: ObjectReference, kind: EventType, reason: &str, message: String) {
        let event = self.event(involved, kind, reason, message);
        if self.tx.try_send(event).is_err() {
            // Like the kubelet's recorder under load, shed events rather than block.
            count_dropped(&DROPPED, reason);
        }
    }

    fn event(
        &self,
        involved: ObjectReference,
        kind: EventType,
        reason: &str,
        message: String,
    ) -> Event {
        let now = jiff::Timestamp::now();
        let name = involved.name.clone().unwrap_or_default();
        let namespace = involved
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        Event {
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

    /// A client whose "API server" answers every request with its own body and sends the
    /// reason of each event it is given to `seen`.
    fn fake_api(seen: mpsc::UnboundedSender<String>) -> Client {
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let seen = seen.clone();
            async move {
                use http_body_util::BodyExt as _;
                let body = req.into_body().collect().await?.to_bytes();
                let ev: Event = serde_json::from_slice(&body).expect("an Event");
                let _ = seen.send(ev.reason.unwrap_or_default());
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http::Response::new(
                    http_body_util::Full::new(body),
                ))
            }
        });
        Client::new(svc, "default")
    }

    #[tokio::test(start_paused = true)]
    async fn pods_events_should_keep_to_the_rate_and_a_wake_should_pass_them() {
        let (tx, mut seen) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let limits = EventLimits { qps: 1.0, burst: 2 };
        let (recorder, task) = Recorder::start(fake_api(tx), "n1", limits, shutdown.clone());
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"}
        }))
        .expect("a pod");
        for i in 0..5 {
            recorder.pod(&pod, None, EventType::Normal, "Started", format!("#{i}"));
        }
        recorder.service(
            "default",
            "fn",
            EventType::Normal,
            "ScaleFromZero",
            "wake".into(),
        );
        // The burst and the wake go at once (virtual time: nothing else is running).
        let mut first = Vec::new();
        for _ in 0..3 {
            first.push(seen.recv().await.expect("written"));
        }
        first.sort();
        assert_eq!(first, ["ScaleFromZero", "Started", "Started"]);
        let at = tokio::time::Instant::now();
        assert_eq!(seen.recv().await.as_deref(), Some("Started"));
        let waited = at.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited <= Duration::from_millis(1100),
            "the third pod event waits for the rate, one a second: {waited:?}"
        );
        // A wake recorded now passes the two pods' events still waiting.
        recorder.service(
            "default",
            "fn",
            EventType::Normal,
            "ScaleFromZero",
            "again".into(),
        );
        assert_eq!(seen.recv().await.as_deref(), Some("ScaleFromZero"));
        assert!(at.elapsed() < Duration::from_millis(1100));
        shutdown.cancel();
        task.await.expect("the writer ends");
    }
}
