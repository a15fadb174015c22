//! The scheduler's Prometheus metrics, with kube-scheduler's names:
//! `scheduler_schedule_attempts_total{result, profile}` and
//! `scheduler_scheduling_attempt_duration_seconds{result, profile}` (from taking the pod off
//! the queue to the binding's answer; `result` is `scheduled`, `unschedulable` or `error`).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Attempt {
    result: &'static str,
    profile: String,
}

struct Metrics {
    attempts: Family<Attempt, Counter>,
    durations: Family<Attempt, Histogram, fn() -> Histogram>,
}

fn attempt_histogram() -> Histogram {
    // kube-scheduler's: 1 ms doubling, 15 buckets.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics {
            attempts: Family::default(),
            durations: Family::new_with_constructor(attempt_histogram),
        };
        let (a, d) = (m.attempts.clone(), m.durations.clone());
        wasmkube_client::metrics::register_once("scheduler", move |r| {
            r.register(
                "scheduler_schedule_attempts",
                "Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem.",
                a,
            );
            r.register(
                "scheduler_scheduling_attempt_duration_seconds",
                "Scheduling attempt latency in seconds (scheduling algorithm + binding)",
                d,
            );
        });
        m
    })
}

/// Registers the scheduler's families.
pub(crate) fn init() {
    metrics();
}

/// One attempt ended with `result` after `took`.
pub(crate) fn attempt(profile: &str, result: &'static str, took: Duration) {
    let m = metrics();
    let labels = Attempt {
        result,
        profile: profile.to_owned(),
    };
    m.attempts.get_or_create(&labels).inc();
    m.durations
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
}
