//! The resource metrics API, `metrics.k8s.io/v1beta1` (`kubectl top`, the
//! HorizontalPodAutoscaler): NodeMetrics and PodMetrics, get and list with label and field
//! selectors, answered from the nodes' `/stats/summary` — what metrics-server does as an
//! aggregated API, done here by the API server itself when asked. And the custom metrics API,
//! `custom.metrics.k8s.io/v1beta2`, with the request metrics the nodes count
//! (`http_requests_in_flight`, `http_requests_per_second`) for pods and, summed over the pods
//! their selector picks, Services — what a Prometheus adapter would serve. Nothing is stored: each
//! answer asks the nodes concerned (those Ready, and for pods only the nodes they run on),
//! at most [`CONCURRENT_SCRAPES`] at a time, each within [`SCRAPE_TIMEOUT`]; a node that does
//! not answer is left out, as metrics-server leaves it out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Serialize;
use wasmkube_api::metrics::{
    ContainerMetrics, GROUP_VERSION, NodeMetrics, PodMetrics, RequestStats, Summary, Usage,
    cpu_quantity, memory_quantity,
};
use wasmkube_api::selector::LabelSelector;

use crate::Apiserver;
use crate::error::ApiError;
use crate::podlog::KubeletTls;
use crate::rest::respond_json;

mod custom;

use custom::{custom, external};

/// How many nodes one answer asks at once.
pub(crate) const CONCURRENT_SCRAPES: usize = 32;
/// How long a node has to answer (metrics-server's default kubelet request timeout).
pub(crate) const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The API group.
pub(crate) const GROUP: &str = "metrics.k8s.io";
/// Its one version.
pub(crate) const VERSION: &str = "v1beta1";

/// The resources it serves, for discovery: (plural, kind, namespaced).
pub(crate) const RESOURCES: &[(&str, &str, bool)] = &[
    ("nodes", "NodeMetrics", false),
    ("pods", "PodMetrics", true),
];

/// The custom metrics API's group and version.
pub(crate) const CUSTOM_GROUP: &str = "custom.metrics.k8s.io";
pub(crate) const CUSTOM_VERSION: &str = "v1beta2";

/// The custom metrics it serves, each for `pods` and `services`.
pub(crate) const CUSTOM_METRICS: &[&str] = &[
    wasmkube_api::metrics::REQUESTS_IN_FLIGHT,
    wasmkube_api::metrics::REQUESTS_PER_SECOND,
];

/// The external metrics API's group and version.
pub(crate) const EXTERNAL_GROUP: &str = "external.metrics.k8s.io";
pub(crate) const EXTERNAL_VERSION: &str = "v1beta1";

/// What a metrics path asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// `nodes[/NAME]`.
    Nodes(Option<&'a str>),
    /// `[namespaces/NS/]pods[/NAME]`.
    Pods(Option<&'a str>, Option<&'a str>),
    /// custom.metrics.k8s.io: `namespaces/NS/{pods|services}/{NAME|*}/METRIC`.
    Custom {
        namespace: &'a str,
        resource: &'a str,
        name: &'a str,
        metric: &'a str,
    },
    /// external.metrics.k8s.io: `namespaces/NS/METRIC`.
    External { namespace: &'a str, metric: &'a str },
}

/// The target of a `/apis/metrics.k8s.io/v1beta1/...` or
/// `/apis/custom.metrics.k8s.io/v1beta2/...` path.
pub(crate) fn route(path: &str) -> Option<Target<'_>> {
    if let Some(rest) = path.strip_prefix("/apis/custom.metrics.k8s.io/v1beta2/") {
        let segs: Vec<&str> = rest.split('/').collect();
        return match segs.as_slice() {
            [
                "namespaces",
                namespace,
                resource @ ("pods" | "services"),
                name,
                metric,
            ] if !namespace.is_empty() && !name.is_empty() && !metric.is_empty() => {
                Some(Target::Custom {
                    namespace,
                    resource,
                    name,
                    metric,
                })
            }
            _ => None,
        };
    }
    if let Some(rest) = path.strip_prefix("/apis/external.metrics.k8s.io/v1beta1/") {
        return match rest.split('/').collect::<Vec<_>>().as_slice() {
            ["namespaces", namespace, metric] if !namespace.is_empty() && !metric.is_empty() => {
                Some(Target::External { namespace, metric })
            }
            _ => None,
        };
    }
    let rest = path.strip_prefix("/apis/metrics.k8s.io/v1beta1/")?;
    let segs: Vec<&str> = rest.split('/').collect();
    Some(match segs.as_slice() {
        ["nodes"] => Target::Nodes(None),
        ["nodes", name] if !name.is_empty() => Target::Nodes(Some(name)),
        ["pods"] => Target::Pods(None, None),
        ["namespaces", ns, "pods"] if !ns.is_empty() => Target::Pods(Some(ns), None),
        ["namespaces", ns, "pods", name] if !ns.is_empty() && !name.is_empty() => {
            Target::Pods(Some(ns), Some(name))
        }
        _ => return None,
    })
}

/// The query a metrics request may carry.
#[derive(Default)]
struct Query {
    labels: Option<LabelSelector>,
    /// `metadata.name` / `metadata.namespace` equalities of the field selector.
    name: Option<String>,
    namespace: Option<String>,
}

impl Query {
    /// Whether the object the request asks for by `name` (if it names one) is `meta`'s, and
    /// the query's field and label selectors select it.
    fn wants(&self, meta: &ObjectMeta, name: Option<&str>) -> bool {
        let is = |w: &str| meta.name.as_deref() == Some(w);
        name.is_none_or(is)
            && self.name.as_deref().is_none_or(is)
            && selects(self.labels.as_ref(), meta.labels.as_ref())
    }
}

fn parse_query(query: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query::default();
    for (k, v) in crate::request::QueryPairs::parse(query)?.0 {
        match k.as_str() {
            "watch" if v == "true" || v == "1" => {
                return Err(ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "watch is not supported on resources of the metrics.k8s.io API",
                ));
            }
            "labelSelector" if !v.is_empty() => {
                q.labels = Some(v.parse().map_err(
                    |e: wasmkube_api::selector::SelectorError| {
                        ApiError::bad_request(format!("unable to parse requirement: {}", e.0))
                    },
                )?);
            }
            "fieldSelector" if !v.is_empty() => {
                for term in v.split(',') {
                    let (field, value) = term
                        .split_once("==")
                        .or_else(|| term.split_once('='))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!("invalid field selector: {term:?}"))
                        })?;
                    match field.trim() {
                        "metadata.name" => q.name = Some(value.trim().to_owned()),
                        "metadata.namespace" => q.namespace = Some(value.trim().to_owned()),
                        other => {
                            return Err(ApiError::bad_request(format!(
                                "field label not supported: {other}"
                            )));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(q)
}

/// Answers a metrics request.
///
/// # Errors
/// 405 for anything but get and list, 400 for a bad selector, 404 for a named object with no
/// metrics.
pub(crate) async fn answer(
    api: &Apiserver,
    kubelet: &KubeletTls,
    method: &Method,
    target: Target<'_>,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "{} is not supported on resources of the metrics.k8s.io API",
                method.as_str().to_ascii_lowercase()
            ),
        ));
    }
    let q = parse_query(query)?;
    let nodes: Vec<Node> = cached(api, "nodes", None).await?;
    match target {
        Target::Custom {
            namespace,
            resource,
            name,
            metric,
        } => custom(api, kubelet, &nodes, &q, namespace, resource, name, metric).await,
        Target::External { namespace, metric } => {
            external(api, kubelet, &nodes, &q, namespace, metric).await
        }
        Target::Nodes(name) => {
            let wanted: Vec<&Node> = nodes
                .iter()
                .filter(|n| q.wants(&n.metadata, name) && ready(n))
                .collect();
            let summaries = scrape(kubelet, endpoints(wanted.iter().copied())).await;
            let mut items: Vec<NodeMetrics> = wanted
                .iter()
                .filter_map(|n| node_metrics(n, summaries.get(n.metadata.name.as_deref()?)?))
                .collect();
            items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            match name {
                Some(name) => match items.pop() {
                    Some(one) => Ok(object("NodeMetrics", one)),
                    None => Err(not_found("nodemetrics", name)),
                },
                None => Ok(list("NodeMetricsList", "NodeMetrics", items)),
            }
        }
        Target::Pods(namespace, name) => {
            let namespace = namespace.or(q.namespace.as_deref());
            let pods: Vec<Pod> = cached(api, "pods", namespace).await?;
            let wanted: Vec<&Pod> = pods
                .iter()
                .filter(|p| namespace.is_none_or(|ns| p.metadata.namespace.as_deref() == Some(ns)))
                .filter(|p| q.wants(&p.metadata, name))
                .collect();
            let on: BTreeSet<&str> = wanted
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
                .collect();
            let hosts = endpoints(nodes.iter().filter(|n| {
                n.metadata
                    .name
                    .as_deref()
                    .is_some_and(|name| on.contains(name))
                    && ready(n)
            }));
            let summaries = scrape(kubelet, hosts).await;
            let mut items: Vec<PodMetrics> = wanted
                .iter()
                .filter_map(|p| {
                    let node = p.spec.as_ref()?.node_name.as_deref()?;
                    pod_metrics(p, summaries.get(node)?)
                })
                .collect();
            items.sort_by(|a, b| {
                (&a.metadata.namespace, &a.metadata.name)
                    .cmp(&(&b.metadata.namespace, &b.metadata.name))
            });
            match name {
                Some(name) => match items.pop() {
                    Some(one) => Ok(object("PodMetrics", one)),
                    None => Err(not_found(
                        "podmetrics",
                        &format!("{}/{name}", namespace.unwrap_or_default()),
                    )),
                },
                None => Ok(list("PodMetricsList", "PodMetrics", items)),
            }
        }
    }
}

/// A list response of any of the metrics APIs.
fn value_list<T: Serialize>(kind: &str, api_version: &str, items: Vec<T>) -> Response {
    let list = wasmkube_api::metrics::ValueList {
        kind: kind.into(),
        api_version: api_version.into(),
        metadata: Default::default(),
        items,
    };
    respond_json(
        StatusCode::OK,
        &serde_json::to_value(list).expect("metrics serialize"),
        &[],
    )
}

/// The objects of a core/v1 resource (in `namespace`, or all), from the watch cache once it
/// is current.
async fn cached<T: serde::de::DeserializeOwned>(
    api: &Apiserver,
    plural: &str,
    namespace: Option<&str>,
) -> Result<Vec<T>, ApiError> {
    let kind = api
        .registry
        .get("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    let cache = api.caches.of_kind(&*kind);
    if !cache.wait_current(SCRAPE_TIMEOUT).await {
        return Err(ApiError::timeout(format!(
            "the {plural} cache did not catch up"
        )));
    }
    let (objects, _) = cache.snapshot(&kind.info().namespace_prefix(namespace), None);
    Ok(objects
        .iter()
        .filter_map(|o| serde_json::from_slice(&o.json()).ok())
        .collect())
}

fn selects(selector: Option<&LabelSelector>, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    selector.is_none_or(|s| s.matches(labels.unwrap_or(&empty)))
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// (name, endpoint) of each of `nodes` that has an endpoint.
fn endpoints<'a>(nodes: impl Iterator<Item = &'a Node>) -> Vec<(String, String)> {
    nodes
        .filter_map(|n| Some((n.metadata.name.clone()?, crate::podlog::endpoint_of(n)?)))
        .collect()
}

/// The summaries of the nodes at `endpoints`, by node name; nodes that do not answer are
/// left out.
async fn scrape(
    kubelet: &KubeletTls,
    endpoints: Vec<(String, String)>,
) -> HashMap<String, Summary> {
    let asks = endpoints.into_iter().map(|(name, host)| async move {
        let got = tokio::time::timeout(SCRAPE_TIMEOUT, summary_of(&host, kubelet)).await;
        match got {
            Ok(Ok(s)) => Some((name, s)),
            Ok(Err(e)) => {
                tracing::debug!(node = %name, error = %e.message, "no resource metrics");
                None
            }
            Err(_) => {
                tracing::debug!(node = %name, "resource metrics timed out");
                None
            }
        }
    });
    futures::stream::iter(asks)
        .buffer_unordered(CONCURRENT_SCRAPES)
        .filter_map(|r| async move { r })
        .collect()
        .await
}

async fn summary_of(host: &str, kubelet: &KubeletTls) -> Result<Summary, ApiError> {
    let path = "/stats/summary";
    let resp = crate::podlog::get_node(host, path, kubelet).await?;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::internal(format!("reading https://{host}{path}: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::internal(format!("https://{host}{path}: {e}")))
}

/// A window as metav1.Duration shows it (`10s`, `1m30.5s`).
fn window(seconds: Option<f64>) -> String {
    let millis = (seconds.unwrap_or(0.0) * 1000.0).round() as u64;
    let (m, rest) = (millis / 60_000, millis % 60_000);
    let s = if rest % 1000 == 0 {
        format!("{}s", rest / 1000)
    } else {
        format!("{}s", rest as f64 / 1000.0)
    };
    if m > 0 { format!("{m}m{s}") } else { s }
}

fn meta(of: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: of.name.clone(),
        namespace: of.namespace.clone(),
        labels: of.labels.clone(),
        creation_timestamp: Some(Time(jiff::Timestamp::now())),
        ..ObjectMeta::default()
    }
}

fn node_metrics(node: &Node, s: &Summary) -> Option<NodeMetrics> {
    let cpu = s.node.usage.cpu.as_ref()?;
    Some(NodeMetrics {
        metadata: meta(&node.metadata),
        timestamp: cpu.time.clone(),
        window: window(cpu.window_seconds),
        usage: quantities(&s.node.usage)?,
    })
}

fn pod_metrics(pod: &Pod, s: &Summary) -> Option<PodMetrics> {
    let stats = s.pods.iter().find(|p| {
        Some(p.pod_ref.name.as_str()) == pod.metadata.name.as_deref()
            && Some(p.pod_ref.namespace.as_str()) == pod.metadata.namespace.as_deref()
            && pod
                .metadata
                .uid
                .as_deref()
                .is_none_or(|uid| p.pod_ref.uid.is_empty() || p.pod_ref.uid == uid)
    })?;
    let containers: Vec<ContainerMetrics> = stats
        .containers
        .iter()
        .filter_map(|c| {
            Some(ContainerMetrics {
                name: c.name.clone(),
                usage: quantities(&c.usage)?,
            })
        })
        .collect();
    if containers.is_empty() {
        return None;
    }
    let cpu = stats.usage.cpu.as_ref();
    Some(PodMetrics {
        metadata: meta(&pod.metadata),
        timestamp: cpu.and_then(|c| c.time.clone()),
        window: window(cpu.and_then(|c| c.window_seconds)),
        containers,
    })
}

/// metrics.k8s.io's `usage`: CPU in use and the memory working set.
fn quantities(
    u: &Usage,
) -> Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>> {
    Some(
        [
            (
                "cpu".to_owned(),
                cpu_quantity(u.cpu.as_ref()?.usage_nano_cores?),
            ),
            (
                "memory".to_owned(),
                memory_quantity(u.memory.as_ref()?.working_set_bytes?),
            ),
        ]
        .into(),
    )
}

/// An object with its `kind` and `apiVersion`.
fn typed<T: Serialize>(kind: &str, value: T) -> serde_json::Value {
    let mut v = serde_json::to_value(value).expect("metrics serialize");
    if let Some(o) = v.as_object_mut() {
        o.insert("kind".into(), kind.into());
        o.insert("apiVersion".into(), GROUP_VERSION.into());
    }
    v
}

fn object<T: Serialize>(kind: &str, value: T) -> Response {
    respond_json(StatusCode::OK, &typed(kind, value), &[])
}

fn list<T: Serialize>(list_kind: &'static str, kind: &str, items: Vec<T>) -> Response {
    let items: Vec<serde_json::Value> = items.into_iter().map(|i| typed(kind, i)).collect();
    value_list(list_kind, GROUP_VERSION, items)
}

/// 404 for a metric not measured, `what` naming it.
fn metric_not_found(what: String) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the {what}"),
    )
}

fn not_found(resource: &str, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{resource}.metrics.k8s.io \"{name}\" not found"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_should_route_as_metrics_server_serves_them() {
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/nodes"),
            Some(Target::Nodes(None))
        );
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/nodes/n1"),
            Some(Target::Nodes(Some("n1")))
        );
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/pods"),
            Some(Target::Pods(None, None))
        );
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/namespaces/dev/pods/web"),
            Some(Target::Pods(Some("dev"), Some("web")))
        );
        assert_eq!(route("/apis/metrics.k8s.io/v1beta1/namespaces/dev"), None);
        assert_eq!(route("/apis/metrics.k8s.io/v1/nodes"), None);
        assert_eq!(
            route("/apis/external.metrics.k8s.io/v1beta1/namespaces/dev/http_requests_in_flight"),
            Some(Target::External {
                namespace: "dev",
                metric: "http_requests_in_flight"
            })
        );
        assert_eq!(
            route("/apis/external.metrics.k8s.io/v1beta1/namespaces/dev"),
            None
        );
    }

    #[test]
    fn windows_should_read_as_go_durations() {
        assert_eq!(window(Some(10.0)), "10s");
        assert_eq!(window(Some(2.5)), "2.5s");
        assert_eq!(window(Some(90.25)), "1m30.25s");
        assert_eq!(window(None), "0s");
    }

    #[test]
    fn queries_should_refuse_watch_and_unknown_fields() {
        assert!(parse_query(Some("watch=true")).is_err());
        assert!(parse_query(Some("fieldSelector=spec.nodeName%3Dx")).is_err());
        let q = parse_query(Some(
            "labelSelector=app%3Dweb&fieldSelector=metadata.name%3Dp",
        ))
        .expect("parses");
        assert_eq!(q.name.as_deref(), Some("p"));
        let labels: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
        assert!(selects(q.labels.as_ref(), Some(&labels)));
        assert!(!selects(q.labels.as_ref(), None));
    }
}
