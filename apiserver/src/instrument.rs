//! The API server's Prometheus metrics, with kube-apiserver's names and labels:
//! `apiserver_request_total` and `apiserver_request_duration_seconds` (every request but the
//! long-running ones, by verb, group, version, resource, subresource, scope, component and
//! code), `apiserver_longrunning_requests` (watches and streams open now), and the store's
//! `etcd_request_duration_seconds` (see [`wasmkube_store::metrics`]).

use std::sync::OnceLock;
use std::time::Instant;

use axum::body::Body;
use axum::http::Method;
use axum::response::Response;
use http_body_util::BodyExt as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::auth::Attributes;

/// What a request is, as kube-apiserver's metrics label it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    verb: String,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: String,
    component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    #[prometheus(flatten)]
    request: RequestLabels,
    code: String,
}

struct Metrics {
    requests: Family<CodeLabels, Counter>,
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    longrunning: Family<RequestLabels, Gauge>,
}

fn request_histogram() -> Histogram {
    Histogram::new(wasmkube_client::metrics::REQUEST_BUCKETS.iter().copied())
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(request_histogram),
            longrunning: Family::default(),
        };
        let (requests, durations, longrunning) = (
            m.requests.clone(),
            m.durations.clone(),
            m.longrunning.clone(),
        );
        wasmkube_client::metrics::register_once("apiserver", move |r| {
            r.register(
                "apiserver_request",
                "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.",
                requests,
            );
            r.register(
                "apiserver_request_duration_seconds",
                "Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.",
                durations,
            );
            r.register(
                "apiserver_longrunning_requests",
                "Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component.",
                longrunning,
            );
            wasmkube_store::metrics::register(r);
        });
        m
    })
}

/// Registers the API server's families (so `/metrics` lists them before the first request).
pub(crate) fn init() {
    metrics();
}

/// A request being served: its labels and when it started.
pub(crate) struct InFlight {
    labels: RequestLabels,
    started: Instant,
    long_running: bool,
}

impl InFlight {
    /// A request for `path` (`attrs` as the authorizer sees it); `long_running` for watches
    /// and streams.
    pub(crate) fn start(
        method: &Method,
        path: &str,
        attrs: &Attributes,
        apply: bool,
        long_running: bool,
    ) -> Self {
        let resource_request = attrs.is_resource_request();
        let verb = if !resource_request {
            method.as_str().to_owned()
        } else if long_running && attrs.verb != "watch" {
            "CONNECT".to_owned()
        } else {
            match attrs.verb.as_str() {
                "create" => "POST",
                "update" => "PUT",
                "patch" if apply => "APPLY",
                "patch" => "PATCH",
                "delete" | "deletecollection" => "DELETE",
                "get" => "GET",
                "list" => "LIST",
                "watch" => "WATCH",
                _ => method.as_str(),
            }
            .to_owned()
        };
        let scope = if !resource_request {
            ""
        } else if !attrs.name.is_empty() {
            "resource"
        } else if !attrs.namespace.is_empty() {
            "namespace"
        } else {
            "cluster"
        };
        let version = match path
            .trim_matches('/')
            .split('/')
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["api", v, ..] => (*v).to_owned(),
            ["apis", _, v, ..] => (*v).to_owned(),
            _ => String::new(),
        };
        let labels = RequestLabels {
            verb,
            group: attrs.group.clone(),
            version: if resource_request {
                version
            } else {
                String::new()
            },
            resource: attrs.resource.clone(),
            subresource: attrs.subresource.clone(),
            scope: scope.to_owned(),
            component: "apiserver".to_owned(),
        };
        if long_running {
            metrics().longrunning.get_or_create(&labels).inc();
        }
        InFlight {
            labels,
            started: Instant::now(),
            long_running,
        }
    }

    /// Counts the answer; a long-running one stays counted as open until its body ends.
    pub(crate) fn finish(self, resp: Response) -> Response {
        let m = metrics();
        let code = resp.status().as_u16().to_string();
        m.requests
            .get_or_create(&CodeLabels {
                request: self.labels.clone(),
                code,
            })
            .inc();
        if !self.long_running {
            m.durations
                .get_or_create(&self.labels)
                .observe(self.started.elapsed().as_secs_f64());
            return resp;
        }
        let open = Open(self.labels);
        resp.map(move |body| {
            Body::new(body.map_frame(move |f| {
                let _ = &open;
                f
            }))
        })
    }
}

/// Counts a long-running request as open until dropped (with the body that carries it).
struct Open(RequestLabels);

impl Drop for Open {
    fn drop(&mut self) {
        metrics().longrunning.get_or_create(&self.0).dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_should_be_labelled_as_kube_apiserver_labels_them() {
        let path = "/apis/apps/v1/namespaces/dev/deployments";
        let r = InFlight::start(
            &Method::GET,
            path,
            &Attributes::of(&Method::GET, path, false),
            false,
            false,
        );
        assert_eq!(
            (
                r.labels.verb.as_str(),
                r.labels.group.as_str(),
                r.labels.version.as_str(),
                r.labels.resource.as_str(),
                r.labels.scope.as_str()
            ),
            ("LIST", "apps", "v1", "deployments", "namespace")
        );
        let path = "/api/v1/namespaces/dev/pods/p/status";
        let r = InFlight::start(
            &Method::PATCH,
            path,
            &Attributes::of(&Method::PATCH, path, false),
            true,
            false,
        );
        assert_eq!(
            (
                r.labels.verb.as_str(),
                r.labels.subresource.as_str(),
                r.labels.scope.as_str()
            ),
            ("APPLY", "status", "resource")
        );
        let _ = r.finish(Response::new(Body::empty()));
        let text = wasmkube_client::metrics::encode();
        assert!(
            text.contains("apiserver_request_total{verb=\"APPLY\",group=\"\",version=\"v1\",resource=\"pods\",subresource=\"status\",scope=\"resource\",component=\"apiserver\",code=\"200\"}"),
            "{text}"
        );
        let path = "/api/v1/pods";
        let w = InFlight::start(
            &Method::GET,
            path,
            &Attributes::of(&Method::GET, path, true),
            false,
            true,
        );
        let resp = w.finish(Response::new(Body::empty()));
        let open = "apiserver_longrunning_requests{verb=\"WATCH\",group=\"\",version=\"v1\",resource=\"pods\",subresource=\"\",scope=\"cluster\",component=\"apiserver\"}";
        assert!(
            wasmkube_client::metrics::encode().contains(&format!("{open} 1")),
            "open while its body is"
        );
        drop(resp);
        assert!(wasmkube_client::metrics::encode().contains(&format!("{open} 0")));
    }
}
