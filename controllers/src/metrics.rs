//! The controllers' Prometheus metrics: each reconcile, by controller:
//! `workqueue_work_duration_seconds{name}` (kube-controller-manager's name for the time one
//! item takes), and controller-runtime's `controller_runtime_reconcile_total{controller,
//! result}` (`success`, `error`) and `controller_runtime_active_workers{controller}`.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Name {
    name: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Controller {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    controller: &'static str,
    result: &'static str,
}

struct Metrics {
    work: Family<Name, Histogram, fn() -> Histogram>,
    reconciles: Family<Outcome, Counter>,
    active: Family<Controller, Gauge>,
}

fn work_histogram() -> Histogram {
    // client-go's workqueue buckets: 1 µs to 10 s, by tens.
    Histogram::new(exponential_buckets(1e-6, 10.0, 8))
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics {
            work: Family::new_with_constructor(work_histogram),
            reconciles: Family::default(),
            active: Family::default(),
        };
        let (w, r, a) = (m.work.clone(), m.reconciles.clone(), m.active.clone());
        wasmkube_client::metrics::register_once("controllers", move |reg| {
            reg.register(
                "workqueue_work_duration_seconds",
                "How long in seconds processing an item from workqueue takes.",
                w,
            );
            reg.register(
                "controller_runtime_reconcile",
                "Total number of reconciliations per controller",
                r,
            );
            reg.register(
                "controller_runtime_active_workers",
                "Number of currently used workers per controller",
                a,
            );
        });
        m
    })
}

/// Registers the controllers' families.
pub(crate) fn init() {
    metrics();
}

/// A reconcile of `controller` in progress.
pub(crate) struct Reconcile {
    controller: &'static str,
    started: std::time::Instant,
}

impl Reconcile {
    pub(crate) fn start(controller: &'static str) -> Self {
        metrics()
            .active
            .get_or_create(&Controller { controller })
            .inc();
        Reconcile {
            controller,
            started: std::time::Instant::now(),
        }
    }

    /// It ended (`ok`: without an error).
    pub(crate) fn end(self, ok: bool) {
        let m = metrics();
        let took: Duration = self.started.elapsed();
        m.work
            .get_or_create(&Name {
                name: self.controller,
            })
            .observe(took.as_secs_f64());
        m.reconciles
            .get_or_create(&Outcome {
                controller: self.controller,
                result: if ok { "success" } else { "error" },
            })
            .inc();
    }
}

impl Drop for Reconcile {
    fn drop(&mut self) {
        metrics()
            .active
            .get_or_create(&Controller {
                controller: self.controller,
            })
            .dec();
    }
}
