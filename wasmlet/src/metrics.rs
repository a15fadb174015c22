//! The wasmlet's Prometheus metrics (its endpoint's `/metrics`; in `wasmkube up` also the API
//! server's), with the kubelet's names where one exists: `kubelet_pod_start_duration_seconds`
//! (from the wasmlet seeing a pod to its phase `Running`), `kubelet_running_pods`,
//! `kubelet_running_containers{container_state}`, cAdvisor's
//! `container_oom_events_total{container, namespace, pod}`; and the wasm ones:
//! `wasmkube_instantiations_total{kind}` (`command`, `http`), the service proxy's
//! `wasmkube_proxy_connections_total{kind}` (`service`: a pod's connection to a Service IP,
//! `node_port`: a NodePort or hostPort connection) and
//! `wasmkube_network_policy_refused_total`, and scale from zero's
//! `wasmkube_cold_starts_total` and `wasmkube_cold_start_duration_seconds` (how long a request
//! or connection was held for a Service at zero pods). Per-container CPU and memory are at
//! `/metrics/resource`.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    container_state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Container {
    container: String,
    namespace: String,
    pod: String,
}

struct Metrics {
    pod_start: Histogram,
    running_pods: Gauge,
    running_containers: Family<State, Gauge>,
    oom: Family<Container, Counter>,
    instantiations: Family<Kind, Counter>,
    connections: Family<Kind, Counter>,
    refused: Counter,
    cold_starts: Histogram,
}

/// Pod start buckets: the kubelet's start at 0.5 s; a wasm pod starts in milliseconds.
const POD_START_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics {
            pod_start: Histogram::new(POD_START_BUCKETS.iter().copied()),
            running_pods: Gauge::default(),
            running_containers: Family::default(),
            oom: Family::default(),
            instantiations: Family::default(),
            connections: Family::default(),
            refused: Counter::default(),
            cold_starts: Histogram::new(POD_START_BUCKETS.iter().copied()),
        };
        let copy = (
            m.pod_start.clone(),
            m.running_pods.clone(),
            m.running_containers.clone(),
            m.oom.clone(),
            m.instantiations.clone(),
            m.connections.clone(),
            m.refused.clone(),
            m.cold_starts.clone(),
        );
        wasmkube_client::metrics::register_once("wasmlet", move |r| {
            let (start, pods, containers, oom, inst, conns, refused, cold) = copy;
            r.register(
                "kubelet_pod_start_duration_seconds",
                "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
                start,
            );
            r.register("kubelet_running_pods", "Number of pods that have a running pod sandbox", pods);
            r.register(
                "kubelet_running_containers",
                "Number of containers currently running",
                containers,
            );
            r.register(
                "container_oom_events",
                "Count of out of memory events observed for the container",
                oom,
            );
            r.register(
                "wasmkube_instantiations",
                "Wasm instances created, by kind (command: a container or exec start; http: one per request).",
                inst,
            );
            r.register(
                "wasmkube_proxy_connections",
                "Connections the service proxy carried, by kind (service: to a Service IP from a pod; node_port: to a NodePort or hostPort).",
                conns,
            );
            r.register(
                "wasmkube_network_policy_refused",
                "Connections refused by NetworkPolicy.",
                refused,
            );
            r.register(
                "wasmkube_cold_start_duration_seconds",
                "How long requests and connections were held for a Service at zero pods until a replica was ready (its count is the cold starts).",
                cold,
            );
        });
        m
    })
}

/// Registers the wasmlet's families.
pub(crate) fn init() {
    metrics();
}

/// A pod reached `Running` `took` after the wasmlet first saw it.
pub(crate) fn pod_started(took: Duration) {
    metrics().pod_start.observe(took.as_secs_f64());
}

/// How many pods and containers run now.
pub(crate) fn running(pods: usize, containers: usize) {
    let m = metrics();
    m.running_pods.set(i64::try_from(pods).unwrap_or(i64::MAX));
    m.running_containers
        .get_or_create(&State {
            container_state: "running",
        })
        .set(i64::try_from(containers).unwrap_or(i64::MAX));
}

/// A container was stopped for exceeding its memory limit.
pub(crate) fn oom_killed(namespace: &str, pod: &str, container: &str) {
    metrics()
        .oom
        .get_or_create(&Container {
            container: container.to_owned(),
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
        })
        .inc();
}

/// An instance was created (`command` or `http`).
pub(crate) fn instantiated(kind: &'static str) {
    metrics().instantiations.get_or_create(&Kind { kind }).inc();
}

/// The proxy carried a connection (`service` or `node_port`).
pub(crate) fn connection(kind: &'static str) {
    metrics().connections.get_or_create(&Kind { kind }).inc();
}

/// A request or connection was held `took` for a Service at zero pods.
pub(crate) fn cold_start(took: Duration) {
    metrics().cold_starts.observe(took.as_secs_f64());
}

/// NetworkPolicy refused a connection.
pub(crate) fn refused() {
    metrics().refused.inc();
}
