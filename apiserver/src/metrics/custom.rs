//! `custom.metrics.k8s.io` and `external.metrics.k8s.io` from the wasmlets' request counts:
//! requests per second and in flight, per pod and per Service (a Service's summed over its
//! pods and the requests nodes hold for it at zero pods).

use super::*;

/// A custom metric of pods (named, or `*` with the query's selector) or of a Service (its
/// pods' values summed).
#[expect(clippy::too_many_arguments, reason = "the parts of one request")]
pub(super) async fn custom(
    api: &Apiserver,
    kubelet: &KubeletTls,
    nodes: &[Node],
    q: &Query,
    namespace: &str,
    resource: &str,
    name: &str,
    metric: &str,
) -> Result<Response, ApiError> {
    if !CUSTOM_METRICS.contains(&metric) {
        return Err(metric_not_found(format!("metric {metric} for {resource}")));
    }
    let pods: Vec<Pod> = cached(api, "pods", Some(namespace)).await?;
    let in_namespace = pods.iter();
    let (selected, described): (Vec<&Pod>, Option<(&str, &str)>) = if resource == "services" {
        let services: Vec<k8s_openapi::api::core::v1::Service> =
            cached(api, "services", Some(namespace)).await?;
        let service = services
            .iter()
            .find(|s| {
                s.metadata.namespace.as_deref() == Some(namespace)
                    && s.metadata.name.as_deref() == Some(name)
            })
            .ok_or_else(|| not_found("services", &format!("{namespace}/{name}")))?;
        (selected_by(service, &pods), Some(("Service", name)))
    } else {
        let picked = in_namespace
            .filter(|p| name == "*" || p.metadata.name.as_deref() == Some(name))
            .filter(|p| selects(q.labels.as_ref(), p.metadata.labels.as_ref()))
            .collect();
        (picked, None)
    };
    let on: BTreeSet<&str> = selected
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
        .collect();
    // A Service's requests may be held by any node (at zero pods), so every node is asked.
    let hosts = endpoints(nodes.iter().filter(|n| {
        ready(n)
            && (described.is_some()
                || n.metadata
                    .name
                    .as_deref()
                    .is_some_and(|name| on.contains(name)))
    }));
    let summaries = scrape(kubelet, hosts).await;
    let measured = requests_of(&selected, &summaries);
    let values: Vec<(Described<'_>, ServiceTotal)> = match described {
        Some((kind, object)) => vec![(
            (kind, Some(namespace.into()), Some(object.into())),
            service_total(namespace, object, metric, &measured, &summaries),
        )],
        None => measured
            .iter()
            .map(|(p, r)| {
                let total = ServiceTotal {
                    value: request_value(metric, r),
                    time: r
                        .time
                        .clone()
                        .unwrap_or_else(|| Time(jiff::Timestamp::now())),
                    window: Some(r.window_seconds.round() as i64),
                };
                let (ns, name) = (p.metadata.namespace.clone(), p.metadata.name.clone());
                (("Pod", ns, name), total)
            })
            .collect(),
    };
    let items: Vec<wasmkube_api::metrics::MetricValue> = values
        .into_iter()
        .map(
            |((kind, namespace, name), total)| wasmkube_api::metrics::MetricValue {
                described_object: k8s_openapi::api::core::v1::ObjectReference {
                    kind: Some(kind.into()),
                    namespace,
                    name,
                    api_version: Some("/v1".into()),
                    ..Default::default()
                },
                metric: wasmkube_api::metrics::MetricIdentifier {
                    name: metric.to_owned(),
                    selector: None,
                },
                timestamp: Some(total.time),
                window_seconds: total.window,
                value: wasmkube_api::metrics::amount_quantity(total.value),
            },
        )
        .collect();
    if items.is_empty() && name != "*" {
        return Err(metric_not_found(format!(
            "metric {metric} for {resource} {name}"
        )));
    }
    Ok(value_list(
        "MetricValueList",
        wasmkube_api::metrics::CUSTOM_GROUP_VERSION,
        items,
    ))
}

/// The kind, namespace and name of an object a custom metric describes.
pub(super) type Described<'a> = (&'a str, Option<String>, Option<String>);

/// An external metric: the request metrics of the namespace's Services (each with a
/// selector), one value per Service whose labels — its own, and `service=NAME` — the query's
/// label selector (the autoscaler's `metric.selector`) matches.
pub(super) async fn external(
    api: &Apiserver,
    kubelet: &KubeletTls,
    nodes: &[Node],
    q: &Query,
    namespace: &str,
    metric: &str,
) -> Result<Response, ApiError> {
    if !CUSTOM_METRICS.contains(&metric) {
        return Err(metric_not_found(format!("external metric {metric}")));
    }
    let services: Vec<k8s_openapi::api::core::v1::Service> =
        cached(api, "services", Some(namespace)).await?;
    let labelled: Vec<(
        &k8s_openapi::api::core::v1::Service,
        BTreeMap<String, String>,
    )> = services
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|s| !s.is_empty())
        })
        .map(|s| {
            let mut labels = s.metadata.labels.clone().unwrap_or_default();
            labels.insert(
                wasmkube_api::metrics::SERVICE_METRIC_LABEL.into(),
                s.metadata.name.clone().unwrap_or_default(),
            );
            (s, labels)
        })
        .filter(|(_, labels)| selects(q.labels.as_ref(), Some(labels)))
        .collect();
    let pods: Vec<Pod> = if labelled.is_empty() {
        Vec::new()
    } else {
        cached(api, "pods", Some(namespace)).await?
    };
    // Requests at zero pods may be held by any node, so every node is asked.
    let summaries = if labelled.is_empty() {
        HashMap::new()
    } else {
        scrape(kubelet, endpoints(nodes.iter().filter(|n| ready(n)))).await
    };
    let mut items: Vec<wasmkube_api::metrics::ExternalMetricValue> = labelled
        .into_iter()
        .map(|(service, labels)| {
            let name = service.metadata.name.as_deref().unwrap_or_default();
            let selected = selected_by(service, &pods);
            let measured = requests_of(&selected, &summaries);
            let total = service_total(namespace, name, metric, &measured, &summaries);
            wasmkube_api::metrics::ExternalMetricValue {
                metric_name: metric.to_owned(),
                metric_labels: labels,
                timestamp: Some(total.time),
                window: total.window,
                value: wasmkube_api::metrics::amount_quantity(total.value),
            }
        })
        .collect();
    items.sort_by(|a, b| a.metric_labels.cmp(&b.metric_labels));
    Ok(value_list(
        "ExternalMetricValueList",
        wasmkube_api::metrics::EXTERNAL_GROUP_VERSION,
        items,
    ))
}

/// The pods a Service selects (none for a Service without a selector).
pub(super) fn selected_by<'a>(
    service: &k8s_openapi::api::core::v1::Service,
    pods: &'a [Pod],
) -> Vec<&'a Pod> {
    let namespace = service.metadata.namespace.as_deref();
    match service.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(sel) if !sel.is_empty() => pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == namespace)
            .filter(|p| {
                let labels = p.metadata.labels.as_ref();
                sel.iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// (pod, its requests) for every pod in `pods` whose node reported them.
pub(super) fn requests_of<'a>(
    pods: &[&'a Pod],
    summaries: &'a HashMap<String, Summary>,
) -> Vec<(&'a Pod, &'a RequestStats)> {
    pods.iter()
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.as_deref()?;
            let stats = summaries.get(node)?.pods.iter().find(|s| {
                Some(s.pod_ref.name.as_str()) == p.metadata.name.as_deref()
                    && Some(s.pod_ref.namespace.as_str()) == p.metadata.namespace.as_deref()
            })?;
            Some((*p, stats.requests.as_ref()?))
        })
        .collect()
}

/// A request metric's value in one pod's stats.
pub(super) fn request_value(metric: &str, r: &RequestStats) -> f64 {
    if metric == wasmkube_api::metrics::REQUESTS_IN_FLIGHT {
        r.in_flight as f64
    } else {
        r.per_second
    }
}

/// A Service's request metric.
pub(super) struct ServiceTotal {
    pub(super) value: f64,
    pub(super) time: Time,
    pub(super) window: Option<i64>,
}

/// A Service's request metric: its pods' values summed and, for requests in flight, what the
/// nodes hold for it at zero pods.
pub(super) fn service_total(
    namespace: &str,
    name: &str,
    metric: &str,
    measured: &[(&Pod, &RequestStats)],
    summaries: &HashMap<String, Summary>,
) -> ServiceTotal {
    let held: u64 = if metric == wasmkube_api::metrics::REQUESTS_IN_FLIGHT {
        summaries
            .values()
            .flat_map(|s| &s.waiting)
            .filter(|w| w.namespace == namespace && w.name == name)
            .map(|w| w.waiting)
            .sum()
    } else {
        0
    };
    ServiceTotal {
        value: measured
            .iter()
            .map(|(_, r)| request_value(metric, r))
            .sum::<f64>()
            + held as f64,
        time: measured
            .iter()
            .filter_map(|(_, r)| r.time.clone())
            .max()
            .unwrap_or_else(|| Time(jiff::Timestamp::now())),
        window: measured
            .first()
            .map(|(_, r)| r.window_seconds.round() as i64),
    }
}
