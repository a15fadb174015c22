//! Kubernetes Events about pods, written in the background so a slow API server never stalls
//! a pod worker (the kubelet's event recorder, with `source.component: kubelet`).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::worker::EventType;

/// Events queued beyond this are dropped (and counted in the log), never blocking a worker.
const QUEUE: usize = 1024;

/// Records events on pods.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Event>,
    node: String,
}

impl Recorder {
    /// Starts the writer task; it ends when `shutdown` fires.
    pub fn start(
        client: Client,
        node: &str,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
        let task = tokio::spawn(async move {
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
                if let Err(e) = api.create(&PostParams::default(), &event).await {
                    tracing::debug!(error = %e, "could not record an event");
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
    pub fn pod(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: String,
    ) {
        let now = jiff::Timestamp::now();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
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
            },
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
