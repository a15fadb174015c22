//! Prometheus metrics: one registry per process, which every component registers its
//! families in when it starts (with the names and labels Kubernetes' components use where
//! one exists), exposed as the Prometheus text format: by the API server at `/metrics` (in
//! `wasmkube up` that is every component of the process), by the wasmlet on its endpoint, and
//! by a component running alone at `--metrics-listen`.
//!
//! Families are made with [`prometheus_client`]; register them once per process with
//! [`register_once`] (a second in-process instance of a component, as tests start, shares
//! them).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

struct Global {
    registry: Registry,
    registered: HashSet<&'static str>,
}

fn global() -> &'static Mutex<Global> {
    static GLOBAL: OnceLock<Mutex<Global>> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        Mutex::new(Global {
            registry: Registry::default(),
            registered: HashSet::new(),
        })
    })
}

/// Registers a component's families under `what`, once per process.
pub fn register_once(what: &'static str, register: impl FnOnce(&mut Registry)) {
    let mut g = global().lock().expect("metrics registry lock");
    if g.registered.insert(what) {
        register(&mut g.registry);
    }
}

/// The content type of [`encode`]'s output: the Prometheus text format, as Kubernetes'
/// components serve it by default.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The content type of [`encode_openmetrics`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every registered family, as OpenMetrics text.
pub fn encode_openmetrics() -> String {
    let mut out = String::new();
    let g = global().lock().expect("metrics registry lock");
    prometheus_client::encoding::text::encode(&mut out, &g.registry)
        .expect("writing to a String does not fail");
    out
}

/// Every registered family, in the Prometheus text format (version 0.0.4): what a scraper
/// that does not ask for OpenMetrics, or any text-format parser, reads.
pub fn encode() -> String {
    to_text_format(&encode_openmetrics())
}

/// The body and content type for a scraper whose `Accept` header is `accept`: OpenMetrics
/// when it asks for it, the text format otherwise.
pub fn negotiate(accept: Option<&str>) -> (String, &'static str) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (encode_openmetrics(), OPENMETRICS_CONTENT_TYPE)
    } else {
        (encode(), CONTENT_TYPE)
    }
}

/// OpenMetrics text as the Prometheus text format: counter families take their samples'
/// `_total` name in `# HELP` and `# TYPE`, `unknown` is `untyped`, and `# UNIT` and `# EOF`
/// go (prometheus-client writes nothing else the text format lacks).
fn to_text_format(open: &str) -> String {
    let counters: HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|t| t.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                let tail = if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                out.push_str(prefix);
                out.push_str(&name);
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Histogram buckets for request latencies, as kube-apiserver's
/// `apiserver_request_duration_seconds` has them, with sub-5 ms buckets in front: most
/// requests here take less.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0,
    4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// Serves `/metrics` (and `/healthz`) over plain HTTP on `listen` until `shutdown`, for a
/// component that runs alone.
///
/// # Errors
/// When `listen` cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|headers: http::HeaderMap| async move {
                let accept = headers
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let (body, content_type) = negotiate(accept);
                ([(http::header::CONTENT_TYPE, content_type)], body)
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn families_should_register_once_and_encode_as_openmetrics() {
        let c = Counter::<u64>::default();
        for _ in 0..2 {
            let c = c.clone();
            register_once("test", move |r| {
                r.register("wasmkube_test_things", "Things counted.", c);
            });
        }
        c.inc_by(3);
        let open = encode_openmetrics();
        assert!(
            open.contains("# TYPE wasmkube_test_things counter"),
            "{open}"
        );
        assert!(open.contains("wasmkube_test_things_total 3"), "{open}");
        assert!(open.ends_with("# EOF\n"));
        assert_eq!(open.matches("# TYPE wasmkube_test_things ").count(), 1);
        let text = encode();
        assert!(
            text.contains("# HELP wasmkube_test_things_total Things counted."),
            "{text}"
        );
        assert!(
            text.contains("# TYPE wasmkube_test_things_total counter"),
            "{text}"
        );
        assert!(text.contains("wasmkube_test_things_total 3"), "{text}");
        assert!(!text.contains("# EOF"));
    }
}
