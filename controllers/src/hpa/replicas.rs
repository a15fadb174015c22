//! The replica calculator (`replica_calculator.go`): how many replicas each metric asks for,
//! from its pods' samples or an object's value, with the tolerance and the rules for pods
//! without metrics, unready or initializing.

use super::*;

/// How a pod counts for a resource metric.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Group {
    /// Counted with its metric.
    Ready,
    /// Not ready (CPU only): counted at 0% when scaling up, else left out.
    Unready,
    /// No metric: 100% when scaling down, 0% when scaling up.
    Missing,
    /// Deleted or failed: left out.
    Ignored,
}

pub(super) fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// One pod's metric: its value and the window it was measured over.
#[derive(Clone, Debug)]
pub(super) struct Sample {
    pub(super) usage: f64,
    pub(super) timestamp: Option<jiff::Timestamp>,
    pub(super) window: Duration,
}

/// `groupPods`: how `pod` counts, given its sample.
pub(super) fn group(pod: &Pod, metric: Option<&Sample>, cpu: bool, now: jiff::Timestamp) -> Group {
    if pod.metadata.deletion_timestamp.is_some()
        || pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
    {
        return Group::Ignored;
    }
    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending") {
        return Group::Unready;
    }
    let Some(metric) = metric else {
        return Group::Missing;
    };
    if !cpu {
        return Group::Ready;
    }
    let start = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0);
    let (Some(ready), Some(start)) = (ready_condition(pod), start) else {
        return Group::Unready;
    };
    let transition = ready
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(start);
    let secs = |d: Duration| jiff::SignedDuration::try_from(d).unwrap_or_default();
    let unready = if start + secs(CPU_INITIALIZATION) > now {
        // Initializing: unready, or the metric's window reaches back before it became ready.
        let stamp = metric.timestamp.unwrap_or(now);
        ready.status == "False" || stamp < transition + secs(metric.window)
    } else {
        ready.status == "False" && start + secs(INITIAL_READINESS_DELAY) > transition
    };
    if unready {
        Group::Unready
    } else {
        Group::Ready
    }
}

/// `10s`, `1m30.5s` as a duration.
pub(super) fn parse_window(w: &str) -> Duration {
    let (m, s) = match w.split_once('m') {
        Some((m, s)) => (m.parse::<f64>().unwrap_or(0.0), s),
        None => (0.0, w),
    };
    let s = s.trim_end_matches('s').parse::<f64>().unwrap_or(0.0);
    Duration::from_secs_f64((m * 60.0 + s).max(0.0))
}

/// The resource a metric is about and, for ContainerResource, its container.
pub(super) fn resource_of(
    m: &MetricSpec,
) -> Option<(
    String,
    Option<String>,
    &k8s_openapi::api::autoscaling::v2::MetricTarget,
)> {
    match m.type_.as_str() {
        "Resource" => m
            .resource
            .as_ref()
            .map(|r| (r.name.clone(), None, &r.target)),
        "ContainerResource" => m
            .container_resource
            .as_ref()
            .map(|r| (r.name.clone(), Some(r.container.clone()), &r.target)),
        _ => None,
    }
}

/// Usage of `resource` (millicores or bytes) in a pod's metric, summed over its containers
/// (or the one named).
pub(super) fn usage_of(m: &PodMetrics, resource: &str, container: Option<&str>) -> u64 {
    m.containers
        .iter()
        .filter(|c| container.is_none_or(|n| n == c.name))
        .filter_map(|c| c.usage.get(resource))
        .map(|q| amount(resource, q))
        .sum()
}

pub(super) fn amount(resource: &str, q: &Quantity) -> u64 {
    if resource == "cpu" {
        millicores(q).unwrap_or(0)
    } else {
        bytes(q).unwrap_or(0)
    }
}

/// The pod's request of `resource` (all containers, or the one named); `Err` names a
/// container without one.
pub(super) fn request_of(
    pod: &Pod,
    resource: &str,
    container: Option<&str>,
) -> Result<u64, String> {
    let mut total = 0;
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        if container.is_some_and(|n| n != c.name) {
            continue;
        }
        let r = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .ok_or_else(|| {
                format!(
                    "missing request for {resource} in container {} of Pod {}",
                    c.name,
                    pod.metadata.name.as_deref().unwrap_or_default()
                )
            })?;
        total += amount(resource, r);
    }
    Ok(total)
}

/// What a metric's readings come to: the replicas they ask for, the value the status shows
/// (utilization in percent, or the average), and the raw average per pod.
pub(super) struct Computed {
    pub(super) replicas: i32,
    pub(super) shown: f64,
    pub(super) average: f64,
}

/// `GetResourceReplicas` / `GetMetricReplicas`: replicas for per-pod `samples` against
/// `target` — a utilization of `requests` in percent when given, else an average value.
pub(super) fn replicas_for(
    current: i32,
    pods: &[Arc<Pod>],
    samples: &HashMap<String, Sample>,
    cpu: bool,
    requests: Option<&HashMap<String, f64>>,
    target: f64,
) -> Result<Computed, String> {
    let now = jiff::Timestamp::now();
    // name → (usage, request), and the groups.
    let mut counted: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let (mut unready, mut missing) = (Vec::new(), Vec::new());
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let request = requests.and_then(|r| r.get(&name).copied()).unwrap_or(0.0);
        let sample = samples.get(&name);
        match group(pod, sample, cpu, now) {
            Group::Ignored => {}
            Group::Unready => unready.push((name, request)),
            Group::Missing => missing.push((name, request)),
            Group::Ready => {
                counted.insert(name, (sample.map_or(0.0, |s| s.usage), request));
            }
        }
    }
    if counted.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let utilization = requests.is_some();
    // The ratio of usage to target over `set`, and what the status shows.
    let ratio = |set: &BTreeMap<String, (f64, f64)>| -> (f64, f64) {
        let usage: f64 = set.values().map(|(u, _)| u).sum();
        if utilization {
            let requests: f64 = set.values().map(|(_, r)| r).sum();
            let util = if requests > 0.0 {
                usage * 100.0 / requests
            } else {
                0.0
            };
            (util / target, util)
        } else {
            let avg = usage / set.len() as f64;
            (if target > 0.0 { avg / target } else { 0.0 }, avg)
        }
    };
    let ready_count = counted.len() as f64;
    let (usage_ratio, shown) = ratio(&counted);
    let average = counted.values().map(|(u, _)| u).sum::<f64>() / counted.len() as f64;
    let rebalance_unready = !unready.is_empty() && usage_ratio > 1.0;
    let replicas = if !rebalance_unready && missing.is_empty() {
        if (1.0 - usage_ratio).abs() <= TOLERANCE {
            current
        } else {
            (usage_ratio * ready_count).ceil() as i32
        }
    } else {
        let mut filled = counted.clone();
        for (name, request) in &missing {
            let usage = if usage_ratio < 1.0 {
                if utilization { *request } else { target }
            } else {
                0.0
            };
            filled.insert(name.clone(), (usage, *request));
        }
        if rebalance_unready {
            for (name, request) in &unready {
                filled.insert(name.clone(), (0.0, *request));
            }
        }
        let (new_ratio, _) = ratio(&filled);
        if (1.0 - new_ratio).abs() <= TOLERANCE
            || (usage_ratio < 1.0 && new_ratio > 1.0)
            || (usage_ratio > 1.0 && new_ratio < 1.0)
        {
            current
        } else {
            let n = (new_ratio * filled.len() as f64).ceil() as i32;
            if (new_ratio < 1.0 && n > current) || (new_ratio > 1.0 && n < current) {
                current
            } else {
                n
            }
        }
    };
    Ok(Computed {
        replicas,
        shown,
        average,
    })
}

/// A resource metric's recommendation (`Resource`, `ContainerResource`) from the pods'
/// resource metrics.
pub(super) fn recommend(
    m: &MetricSpec,
    current: i32,
    pods: &[Arc<Pod>],
    metrics: Result<&Vec<PodMetrics>, &String>,
) -> Result<Recommendation, MetricFailure> {
    let Some((resource, container, target)) = resource_of(m) else {
        return Err(MetricFailure {
            reason: "FailedGetExternalMetric",
            message: "unable to get external metric: no external metrics API is served".into(),
        });
    };
    let fail = |message: String| MetricFailure {
        reason: if container.is_some() {
            "FailedGetContainerResourceMetric"
        } else {
            "FailedGetResourceMetric"
        },
        message,
    };
    let metrics = metrics.map_err(|e| {
        fail(format!(
            "unable to get metrics for resource {resource}: unable to fetch metrics from resource metrics API: {e}"
        ))
    })?;
    if pods.is_empty() {
        return Err(fail(format!(
            "unable to get metrics for resource {resource}: no pods returned by selector while calculating replica count"
        )));
    }
    let samples: HashMap<String, Sample> = metrics
        .iter()
        .filter_map(|pm| {
            Some((
                pm.metadata.name.clone()?,
                Sample {
                    usage: usage_of(pm, &resource, container.as_deref()) as f64,
                    timestamp: pm.timestamp.as_ref().map(|t| t.0),
                    window: parse_window(&pm.window),
                },
            ))
        })
        .collect();
    let utilization = target.type_ == "Utilization";
    let requests = if utilization {
        let mut r = HashMap::new();
        for pod in pods {
            let request = request_of(pod, &resource, container.as_deref())
                .map_err(|e| fail(format!("failed to get {resource} utilization: {e}")))?;
            r.insert(
                pod.metadata.name.clone().unwrap_or_default(),
                request as f64,
            );
        }
        Some(r)
    } else {
        None
    };
    let target_value = if utilization {
        f64::from(target.average_utilization.unwrap_or(100))
    } else {
        target
            .average_value
            .as_ref()
            .or(target.value.as_ref())
            .map_or(0.0, |q| amount(&resource, q) as f64)
    };
    let c = replicas_for(
        current,
        pods,
        &samples,
        resource == "cpu",
        requests.as_ref(),
        target_value,
    )
    .map_err(|e| {
        fail(format!(
            "unable to get metrics for resource {resource}: {e}"
        ))
    })?;
    let value = if resource == "cpu" {
        Quantity(format!("{}m", c.average.round() as u64))
    } else {
        Quantity(format!("{}", c.average.round() as u64))
    };
    let current_value = MetricValueStatus {
        average_utilization: utilization.then_some(c.shown.round() as i32),
        average_value: Some(value),
        value: None,
    };
    let status: MetricStatus = match &container {
        None => serde_json::from_value(json!({"type": "Resource", "resource": {"name": resource, "current": current_value}})),
        Some(cn) => serde_json::from_value(json!({"type": "ContainerResource", "containerResource": {"name": resource, "container": cn, "current": current_value}})),
    }
    .expect("a metric status");
    let describe = match (&container, utilization) {
        (None, true) => format!("{resource} resource utilization (percentage of request)"),
        (None, false) => format!("{resource} resource"),
        (Some(cn), true) => format!(
            "{resource} container resource utilization (percentage of request) of container {cn}"
        ),
        (Some(cn), false) => format!("{resource} container resource of container {cn}"),
    };
    Ok(Recommendation {
        replicas: c.replicas,
        status,
        describe,
    })
}

/// A Pods metric's recommendation (`GetMetricReplicas`: an average value per pod) from the
/// custom metrics API's values for the target's pods.
pub(super) fn recommend_pods(
    m: &MetricSpec,
    current: i32,
    pods: &[Arc<Pod>],
    values: Result<Vec<wasmkube_api::metrics::MetricValue>, String>,
) -> Result<Recommendation, MetricFailure> {
    let spec = m
        .pods
        .as_ref()
        .expect("validated: a Pods metric has its source");
    let name = &spec.metric.name;
    let fail = |message: String| MetricFailure {
        reason: "FailedGetPodsMetric",
        message: format!("unable to get metric {name}: {message}"),
    };
    let values = values.map_err(fail)?;
    let samples: HashMap<String, Sample> = values
        .iter()
        .filter_map(|v| {
            Some((
                v.described_object.name.clone()?,
                Sample {
                    usage: quantity_value(&v.value),
                    timestamp: v.timestamp.as_ref().map(|t| t.0),
                    window: Duration::from_secs(v.window_seconds.unwrap_or(0).max(0) as u64),
                },
            ))
        })
        .collect();
    let target = spec
        .target
        .average_value
        .as_ref()
        .map_or(0.0, quantity_value);
    let c = replicas_for(current, pods, &samples, false, None, target).map_err(fail)?;
    let status: MetricStatus = serde_json::from_value(json!({"type": "Pods", "pods": {
        "metric": {"name": name}, "current": {"averageValue": wasmkube_api::metrics::amount_quantity(c.average)}}}))
    .expect("a metric status");
    Ok(Recommendation {
        replicas: c.replicas,
        status,
        describe: format!("pods metric {name}"),
    })
}

/// An Object metric's recommendation (`GetObjectMetricReplicas` for a `Value` target,
/// `GetObjectPerPodMetricReplicas` for `AverageValue`) from the object's value.
pub(super) fn recommend_object(
    m: &MetricSpec,
    current: i32,
    pods: &[Arc<Pod>],
    value: Result<wasmkube_api::metrics::MetricValue, String>,
) -> Result<Recommendation, MetricFailure> {
    let spec = m
        .object
        .as_ref()
        .expect("validated: an Object metric has its source");
    let name = &spec.metric.name;
    let object = format!(
        "{}/{}",
        spec.described_object.kind, spec.described_object.name
    );
    let v = value
        .map(|v| quantity_value(&v.value))
        .map_err(|message| MetricFailure {
            reason: "FailedGetObjectMetric",
            message: format!("unable to get metric {name}: {object} on {message}"),
        })?;
    let (replicas, current_value) = replicas_for_value(&spec.target, v, current, pods);
    let status: MetricStatus = serde_json::from_value(json!({"type": "Object", "object": {
        "metric": {"name": name}, "describedObject": spec.described_object, "current": current_value}}))
    .expect("a metric status");
    Ok(Recommendation {
        replicas,
        status,
        describe: format!("{name} metric on {object}"),
    })
}

/// An External metric's recommendation (`GetExternalMetricReplicas` for a `Value` target,
/// `GetExternalPerPodMetricReplicas` for `AverageValue`) from the values its selector picked,
/// summed.
pub(super) fn recommend_external(
    m: &MetricSpec,
    current: i32,
    pods: &[Arc<Pod>],
    values: Result<Vec<wasmkube_api::metrics::ExternalMetricValue>, String>,
) -> Result<Recommendation, MetricFailure> {
    let spec = m
        .external
        .as_ref()
        .expect("validated: an External metric has its source");
    let name = &spec.metric.name;
    let fail = |message: String| MetricFailure {
        reason: "FailedGetExternalMetric",
        message: format!("unable to get external metric {name}: {message}"),
    };
    let values = values.map_err(fail)?;
    if values.is_empty() {
        return Err(fail("no metrics returned from external metrics API".into()));
    }
    let v: f64 = values.iter().map(|v| quantity_value(&v.value)).sum();
    let (replicas, current_value) = replicas_for_value(&spec.target, v, current, pods);
    let status: MetricStatus = serde_json::from_value(json!({"type": "External", "external": {
        "metric": spec.metric, "current": current_value}}))
    .expect("a metric status");
    Ok(Recommendation {
        replicas,
        status,
        describe: format!("external metric {name}"),
    })
}

/// The replicas a metric's value `v` asks for against `target`, and its current value for
/// the status: for `AverageValue`, `v` per replica (scaled to `ceil(v / target)` unless
/// within tolerance); for `Value`, the ratio to the target times the ready pods.
pub(super) fn replicas_for_value(
    target: &k8s_openapi::api::autoscaling::v2::MetricTarget,
    v: f64,
    current: i32,
    pods: &[Arc<Pod>],
) -> (i32, serde_json::Value) {
    if target.type_ == "AverageValue" {
        let per_replica = target.average_value.as_ref().map_or(0.0, quantity_value);
        let wanted = if per_replica > 0.0 {
            (v / per_replica).ceil() as i32
        } else {
            current
        };
        let ratio = if current > 0 && per_replica > 0.0 {
            v / (per_replica * f64::from(current))
        } else {
            f64::INFINITY
        };
        let replicas = if current > 0 && (1.0 - ratio).abs() <= TOLERANCE {
            current
        } else {
            wanted
        };
        let average = if current > 0 {
            v / f64::from(current)
        } else {
            v
        };
        (
            replicas,
            json!({"averageValue": wasmkube_api::metrics::amount_quantity(average)}),
        )
    } else {
        let wanted = target.value.as_ref().map_or(0.0, quantity_value);
        let ratio = if wanted > 0.0 { v / wanted } else { 1.0 };
        let ready = pods
            .iter()
            .filter(|p| ready_condition(p).is_some_and(|c| c.status == "True"))
            .count() as f64;
        let replicas = if (1.0 - ratio).abs() <= TOLERANCE {
            current
        } else if current == 0 {
            ratio.ceil() as i32
        } else {
            (ratio * ready).ceil() as i32
        };
        (
            replicas,
            json!({"value": wasmkube_api::metrics::amount_quantity(v)}),
        )
    }
}

/// A quantity as a number (`1500m` is 1.5, `64Mi` is 67108864).
pub(super) fn quantity_value(q: &Quantity) -> f64 {
    millicores(q).map_or(0.0, |m| m as f64 / 1000.0)
}
