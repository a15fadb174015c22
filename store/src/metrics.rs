//! The store's request latencies, as kube-apiserver reports its etcd client's:
//! `etcd_request_duration_seconds{operation, type}` — `operation` one of `get`, `list`,
//! `create`, `update`, `delete`, `compact`; `type` the resource's storage prefix
//! (`/core/pods`). The families live here; the API server registers them
//! ([`register`]) in its process's registry.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    operation: String,
    r#type: String,
}

/// Latency buckets (etcd's client buckets start at 5 ms; a local redb commit takes less).
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0,
    1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

/// Latency histograms by label set.
type Durations = Family<Labels, Histogram, fn() -> Histogram>;

fn durations() -> &'static Durations {
    static DURATIONS: OnceLock<Durations> = OnceLock::new();
    DURATIONS.get_or_init(|| Family::new_with_constructor(histogram))
}

fn durable() -> &'static Gauge {
    static DURABLE: OnceLock<Gauge> = OnceLock::new();
    DURABLE.get_or_init(Gauge::default)
}

/// Registers the store's families in `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(
        "etcd_request_duration_seconds",
        "Etcd request latency in seconds for each operation and object type.",
        durations().clone(),
    );
    registry.register(
        "wasmkube_store_durable_revision",
        "The newest revision the state machine's file holds durably; a crash replays the raft log from there.",
        durable().clone(),
    );
}

/// Records that the state machine's file holds everything up to `revision` durably.
pub(crate) fn durable_at(revision: u64) {
    durable().set(i64::try_from(revision).unwrap_or(i64::MAX));
}

/// The storage prefix of `key` (`/core/pods/default/web` → `/core/pods`).
fn kind_of(key: &str) -> String {
    let mut parts = key.trim_start_matches('/').splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(group), Some(plural)) if !plural.is_empty() => format!("/{group}/{plural}"),
        (Some(group), _) if !group.is_empty() => format!("/{group}"),
        _ => "/".to_owned(),
    }
}

/// Records one request.
pub(crate) fn observe(operation: &str, key: &str, took: Duration) {
    durations()
        .get_or_create(&Labels {
            operation: operation.to_owned(),
            r#type: kind_of(key),
        })
        .observe(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_should_be_typed_by_their_resource_prefix() {
        assert_eq!(kind_of("/core/pods/default/web"), "/core/pods");
        assert_eq!(kind_of("/apps/deployments/"), "/apps/deployments");
        assert_eq!(kind_of("/core/"), "/core");
        assert_eq!(kind_of(""), "/");
    }
}
