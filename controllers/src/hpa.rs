//! The HorizontalPodAutoscaler controller (kube-controller-manager's
//! `horizontalpodautoscaling`), autoscaling/v2: every sync period each autoscaler reads its
//! target's `scale` subresource and its pods' resource metrics (`metrics.k8s.io`), computes
//! the replicas each metric asks for with the upstream algorithm (tolerance 0.1; pods without
//! metrics counted at 100% when scaling down and 0% when scaling up; CPU of unready or
//! initializing pods counted at 0% when scaling up; no change that reverses direction),
//! takes the largest, applies `behavior` (stabilization windows over past recommendations,
//! rate policies over past scale events, `selectPolicy`), clamps to min/max, rescales
//! through the `scale` subresource and writes the status with its conditions (`AbleToScale`,
//! `ScalingActive`, `ScalingLimited`) and events (`SuccessfulRescale`, `FailedGetResourceMetric`,
//! ...). Pods, Object and External metrics come from the custom and external metrics APIs
//! the API server serves from the wasmlets' request counts; `minReplicas: 0` scales to zero,
//! and a request held at zero wakes the autoscaler at once (`wake`).
//!
//! | part | what |
//! |---|---|
//! | this module | the controller: reconcile, status, conditions, events |
//! | `replicas` | the replica calculator, per metric |
//! | `behavior` | stabilization windows, rate policies, min/max |
//! | `api` | the target's `scale` subresource and the metrics APIs |
//! | `wake` | scale from zero |

mod api;
mod behavior;
mod replicas;
mod wake;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::workqueue::{Action, Controller};
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler as Hpa, HorizontalPodAutoscalerCondition,
    HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus, MetricValueStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource as _, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wasmkube_api::metrics::PodMetrics;
use wasmkube_api::quantity::{bytes, millicores};
use wasmkube_api::services::SCALE_FROM_ZERO;
use wasmkube_client::events::Recorder;

use self::behavior::*;
use self::replicas::*;
use self::wake::*;

/// `--horizontal-pod-autoscaler-tolerance`.
const TOLERANCE: f64 = 0.1;
/// `--horizontal-pod-autoscaler-cpu-initialization-period`.
const CPU_INITIALIZATION: Duration = Duration::from_secs(300);
/// `--horizontal-pod-autoscaler-initial-readiness-delay`.
const INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);
/// kube-controller-manager's `--horizontal-pod-autoscaler-sync-period`.
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);

/// What the controller keeps between syncs, per autoscaler (as upstream keeps it in memory).
#[derive(Default)]
struct Memory {
    /// (when, replicas) recommendations, for the stabilization windows.
    recommendations: Vec<(jiff::Timestamp, i32)>,
    /// (when, change) scale-ups and scale-downs, for the rate policies.
    ups: Vec<(jiff::Timestamp, i32)>,
    downs: Vec<(jiff::Timestamp, i32)>,
}

/// The controller's context.
pub struct Ctx {
    client: Client,
    pods: Store<Pod>,
    recorder: Recorder,
    sync_period: Duration,
    memory: Mutex<HashMap<String, Memory>>,
    /// Services already annotated for scale from zero (namespace, name).
    marked: Mutex<std::collections::HashSet<(String, String)>>,
    /// (apiVersion, kind) of scale targets → their API resource (from discovery).
    kinds: Mutex<HashMap<(String, String), kube::api::ApiResource>>,
    /// Autoscalers (`namespace/name`) a ScaleFromZero Event asked for a replica since their
    /// last reconcile, and whether that replica is asked for already.
    woken: Arc<Mutex<HashMap<String, Wake>>>,
}

/// Runs the controller until `shutdown`.
pub(crate) async fn run(
    client: Client,
    pods: Store<Pod>,
    sync_period: Duration,
    shutdown: CancellationToken,
) {
    let recorder = crate::recorder(&client, "horizontal-pod-autoscaler");
    let ready = crate::ready(&pods);
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods,
        recorder,
        sync_period,
        memory: Mutex::default(),
        marked: Mutex::default(),
        kinds: Mutex::default(),
        woken: Arc::default(),
    });
    let controller = Controller::new(Api::<Hpa>::all(client.clone()), watcher::Config::default());
    // Scale from zero: a node holding a request for a Service records a ScaleFromZero Event;
    // the autoscalers with an Object metric of that Service are evaluated at once.
    let store = controller.store();
    let sweeping = tokio::spawn(sweep(Arc::clone(&ctx), store.clone(), shutdown.clone()));
    let waker = Arc::clone(&ctx);
    let controller = controller.watches(
        Api::<k8s_openapi::api::core::v1::Event>::all(client),
        watcher::Config::default().fields("reason=ScaleFromZero"),
        move |ev: k8s_openapi::api::core::v1::Event| {
            // Only a request held now asks (not the Events of past wakes a new watch lists).
            let at = ev.last_timestamp.as_ref().map(|t| t.0);
            let recent =
                at.is_some_and(|t| jiff::Timestamp::now().duration_since(t).as_secs() < HELD_FOR);
            let o = ev.involved_object;
            let (ns, name) = (o.namespace.unwrap_or_default(), o.name.unwrap_or_default());
            store
                .state()
                .iter()
                .filter(|h| h.namespace().as_deref() == Some(ns.as_str()))
                .filter(|h| object_services(h).any(|s| s == name))
                .filter(|_| recent)
                .map(|h| {
                    tracing::debug!(target: "podtrace", kind = "HorizontalPodAutoscaler", object = %format_args!("{ns}/{}", h.name_any()), stage = "woken");
                    waker.ask_wake(h);
                    kube::runtime::reflector::ObjectRef::from_obj(&**h)
                })
                .collect::<Vec<_>>()
        },
    );
    crate::drive(
        controller,
        "horizontalpodautoscaling",
        ready,
        reconcile,
        ctx,
        shutdown,
    )
    .await;
    sweeping.abort();
}

/// Why one metric gave no recommendation: the condition reason and message.
#[derive(Debug)]
struct MetricFailure {
    reason: &'static str,
    message: String,
}

/// One metric's recommendation and what it measured.
struct Recommendation {
    replicas: i32,
    status: MetricStatus,
    /// How `SuccessfulRescale` names it (`cpu resource utilization (percentage of request)`).
    describe: String,
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> HorizontalPodAutoscalerCondition {
    HorizontalPodAutoscalerCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(jiff::Timestamp::now())),
    }
}

/// Sets `c` in `conditions`, keeping the transition time when the status did not change.
fn set_condition(
    conditions: &mut Vec<HorizontalPodAutoscalerCondition>,
    mut c: HorizontalPodAutoscalerCondition,
) {
    if let Some(old) = conditions.iter_mut().find(|o| o.type_ == c.type_) {
        if old.status == c.status {
            c.last_transition_time = old.last_transition_time.clone();
        }
        *old = c;
    } else {
        conditions.push(c);
    }
}

/// Reconciles one autoscaler.
///
/// # Errors
/// API failures (retried).
pub async fn reconcile(hpa: Arc<Hpa>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    let ns = hpa.namespace().unwrap_or_default();
    let name = hpa.name_any();
    let key = format!("{ns}/{name}");
    let spec = hpa.spec.clone().unwrap_or_default();
    let hpas: Api<Hpa> = Api::namespaced(ctx.client.clone(), &ns);
    let mut status = hpa.status.clone().unwrap_or_default();
    let mut conditions = status.conditions.clone().unwrap_or_default();
    let target = &spec.scale_target_ref;
    let reference = format!("{}/{}", target.kind, target.name);

    // A node holds a request for a Service of this autoscaler: from zero to one replica
    // first, before reading anything (the write applies only at zero, so it cannot undo
    // another change); the rest of this pass then runs as if it had read zero.
    let woken = ctx.take_woken(&key);
    let mut woke = false;
    if spec.min_replicas == Some(0) {
        match woken.clone() {
            Some(Wake::Waking(write)) => woke = write.await,
            Some(Wake::Asked) => woke = ctx.wake(&key, &ns, target).await,
            None => {}
        }
    }
    let woken = woken.is_some();

    // The target's scale subresource.
    let scale = match ctx.scale_of(&ns, target).await {
        Ok(s) => s,
        Err(e) => {
            let message =
                format!("the HPA controller was unable to get the target's current scale: {e}");
            set_condition(
                &mut conditions,
                condition("AbleToScale", false, "FailedGetScale", message.clone()),
            );
            ctx.event(&hpa, EventType::Warning, "FailedGetScale", &message);
            status.conditions = Some(conditions);
            write_status(&hpas, &hpa, status).await?;
            return Ok(Action::requeue(ctx.sync_period));
        }
    };
    let current = if woke { 0 } else { scale.spec_replicas };
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    if min == 0 {
        // At zero pods the nodes must hold requests for these Services, not refuse them.
        for service in object_services(&hpa) {
            ctx.mark_scale_from_zero(&ns, service, &name).await;
        }
    }
    status.current_replicas = Some(scale.status_replicas);

    let mut desired;
    let mut metric_statuses = Vec::new();
    let mut rescale_reason = String::new();
    if current == 0 && min != 0 {
        // Scaling is turned off by scaling the target to zero.
        desired = 0;
        set_condition(
            &mut conditions,
            condition(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
            ),
        );
    } else {
        if current == 0 && woken {
            // A node holds a request for a Service of this autoscaler at zero pods: one
            // replica now; the metrics are read at the next sync.
            desired = 1;
            rescale_reason = "a request is held for a Service at zero pods".into();
        } else {
            let pods = ctx.pods_of(&ns, &scale.selector);
            let wants_resources = spec
                .metrics
                .iter()
                .flatten()
                .any(|m| resource_of(m).is_some());
            let pod_metrics = if wants_resources {
                ctx.pod_metrics(&ns, &scale.selector).await
            } else {
                Ok(Vec::new())
            };
            let mut best: Option<Recommendation> = None;
            let mut failures = Vec::new();
            for m in spec.metrics.iter().flatten() {
                let recommended = match (m.type_.as_str(), &m.pods, &m.object) {
                    ("Pods", Some(p), _) => {
                        let values = ctx
                            .custom(&ns, "pods", "*", &p.metric.name, Some(&scale.selector))
                            .await;
                        recommend_pods(m, current, &pods, values.map(|l| l.items))
                    }
                    ("External", _, _) if m.external.is_some() => {
                        let e = m.external.as_ref().expect("checked by the guard");
                        let values = ctx
                            .external(&ns, &e.metric.name, e.metric.selector.as_ref())
                            .await;
                        recommend_external(m, current, &pods, values)
                    }
                    ("Object", _, Some(o)) => {
                        let resource = match o.described_object.kind.as_str() {
                            "Service" => "services",
                            "Pod" => "pods",
                            other => other,
                        };
                        let value = ctx
                            .custom(
                                &ns,
                                resource,
                                &o.described_object.name,
                                &o.metric.name,
                                None,
                            )
                            .await
                            .and_then(|l| {
                                l.items
                                    .into_iter()
                                    .next()
                                    .ok_or_else(|| "no value".to_owned())
                            });
                        recommend_object(m, current, &pods, value)
                    }
                    _ => recommend(m, current, &pods, pod_metrics.as_ref()),
                };
                match recommended {
                    Ok(r) => {
                        metric_statuses.push(r.status.clone());
                        if best.as_ref().is_none_or(|b| r.replicas > b.replicas) {
                            best = Some(r);
                        }
                    }
                    Err(f) => failures.push(f),
                }
            }
            for f in &failures {
                ctx.event(&hpa, EventType::Warning, f.reason, &f.message);
            }
            match best {
                None => {
                    let (reason, message) = failures
                        .first()
                        .map(|f| (f.reason, f.message.clone()))
                        .unwrap_or((
                            "FailedComputeMetricsReplicas",
                            "no metrics to scale on".into(),
                        ));
                    set_condition(
                        &mut conditions,
                        condition(
                            "ScalingActive",
                            false,
                            reason,
                            format!("the HPA was unable to compute the replica count: {message}"),
                        ),
                    );
                    status.conditions = Some(conditions);
                    status.current_metrics = None;
                    write_status(&hpas, &hpa, status).await?;
                    return Ok(Action::requeue(ctx.sync_period));
                }
                Some(r) => {
                    desired = r.replicas;
                    // A metric that could not be read might want more: never scale down then.
                    if !failures.is_empty() && desired < current {
                        desired = current;
                    }
                    rescale_reason = if desired > current {
                        format!("{} above target", r.describe)
                    } else {
                        "All metrics below target".into()
                    };
                    set_condition(
                        &mut conditions,
                        condition(
                            "ScalingActive",
                            true,
                            "ValidMetricFound",
                            format!(
                                "the HPA was able to successfully calculate a replica count from {}",
                                r.describe
                            ),
                        ),
                    );
                }
            }
        }
        // Behavior: stabilization, then rate limits and min/max.
        let now = jiff::Timestamp::now();
        let behavior = spec.behavior.clone().unwrap_or_default();
        let up = behavior.scale_up.unwrap_or_default();
        let down = behavior.scale_down.unwrap_or_default();
        let normalized = {
            let mut memory = ctx.memory.lock().expect("hpa memory lock");
            let mem = memory.entry(key.clone()).or_default();
            let (stabilized, held) = stabilize(mem, now, desired, current, &up, &down);
            if held {
                set_condition(
                    &mut conditions,
                    condition(
                        "AbleToScale",
                        true,
                        "ScaleDownStabilized",
                        "recent recommendations were higher than current one, applying the highest recent recommendation".into(),
                    ),
                );
            }
            let (limited, why) = limit(mem, now, stabilized, current, min, max, &up, &down);
            let c = match why {
                Some((reason, message)) => {
                    condition("ScalingLimited", true, reason, message.into())
                }
                None => condition(
                    "ScalingLimited",
                    false,
                    "DesiredWithinRange",
                    "the desired count is within the acceptable range".into(),
                ),
            };
            set_condition(&mut conditions, c);
            limited
        };
        desired = normalized;
    }

    status.desired_replicas = desired;
    status.current_metrics = (!metric_statuses.is_empty()).then_some(metric_statuses);
    status.observed_generation = hpa.metadata.generation;
    if desired != current {
        let set = if woke && desired == 1 {
            Ok(())
        } else {
            ctx.set_scale(&ns, target, desired).await
        };
        match set {
            Ok(()) => {
                let now = jiff::Timestamp::now();
                {
                    let mut memory = ctx.memory.lock().expect("hpa memory lock");
                    let mem = memory.entry(key.clone()).or_default();
                    let change = desired - current;
                    if change > 0 {
                        mem.ups.push((now, change));
                    } else {
                        mem.downs.push((now, -change));
                    }
                }
                status.last_scale_time = Some(Time(now));
                let message = format!("New size: {desired}; reason: {rescale_reason}");
                ctx.event(&hpa, EventType::Normal, "SuccessfulRescale", &message);
                tracing::info!(hpa = %key, target = %reference, from = current, to = desired, "rescaled");
                set_condition(
                    &mut conditions,
                    condition(
                        "AbleToScale",
                        true,
                        "SucceededRescale",
                        format!(
                            "the HPA controller was able to update the target scale to {desired}"
                        ),
                    ),
                );
            }
            Err(e) => {
                let message = format!("failed to rescale {reference}: {e}");
                ctx.event(&hpa, EventType::Warning, "FailedRescale", &message);
                set_condition(
                    &mut conditions,
                    condition(
                        "AbleToScale",
                        false,
                        "FailedUpdateScale",
                        format!("the HPA controller was unable to update the target scale: {e}"),
                    ),
                );
            }
        }
    } else if !conditions
        .iter()
        .any(|c| c.type_ == "AbleToScale" && c.reason.as_deref() == Some("ScaleDownStabilized"))
    {
        set_condition(
            &mut conditions,
            condition(
                "AbleToScale",
                true,
                "ReadyForNewScale",
                "recommended size matches current size".into(),
            ),
        );
    }
    conditions.sort_by_key(|c| match c.type_.as_str() {
        "AbleToScale" => 0,
        "ScalingActive" => 1,
        _ => 2,
    });
    status.conditions = Some(conditions);
    write_status(&hpas, &hpa, status).await?;
    Ok(Action::requeue(ctx.sync_period))
}

impl Ctx {
    fn event(&self, hpa: &Hpa, type_: EventType, reason: &str, note: &str) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Scaling".into(),
            secondary: None,
        };
        self.recorder.record(event, hpa.object_ref(&()));
    }

    fn pods_of(&self, ns: &str, selector: &str) -> Vec<Arc<Pod>> {
        let Ok(selector) = selector.parse::<wasmkube_api::selector::LabelSelector>() else {
            return Vec::new();
        };
        let empty = BTreeMap::new();
        self.pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .filter(|p| selector.matches(p.metadata.labels.as_ref().unwrap_or(&empty)))
            .collect()
    }
}

async fn write_status(
    hpas: &Api<Hpa>,
    hpa: &Hpa,
    status: HorizontalPodAutoscalerStatus,
) -> Result<(), kube::Error> {
    let mut compare = status.clone();
    let old = hpa.status.clone().unwrap_or_default();
    // Transition times aside, nothing changed: no write.
    if let (Some(new), Some(was)) = (compare.conditions.as_mut(), old.conditions.as_ref()) {
        for c in new.iter_mut() {
            if let Some(o) = was.iter().find(|o| o.type_ == c.type_) {
                c.last_transition_time = o.last_transition_time.clone();
            }
        }
    }
    if compare == old {
        return Ok(());
    }
    hpas.patch_status(
        &hpa.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, cpu_request: &str, ready: bool, started_secs_ago: i64) -> Arc<Pod> {
        let start = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(started_secs_ago);
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"containers": [{"name": "c", "image": "i",
                    "resources": {"requests": {"cpu": cpu_request}}}]},
                "status": {"phase": "Running", "startTime": start.to_string(),
                    "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                        "lastTransitionTime": start.to_string()}]}
            }))
            .expect("pod"),
        )
    }

    fn metric(name: &str, cpu: &str) -> PodMetrics {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "timestamp": jiff::Timestamp::now().to_string(), "window": "10s",
            "containers": [{"name": "c", "usage": {"cpu": cpu, "memory": "1Mi"}}]
        }))
        .expect("metric")
    }

    fn cpu_target(percent: i32) -> MetricSpec {
        serde_json::from_value(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": percent}}}))
        .expect("metric")
    }

    #[test]
    fn utilization_should_scale_as_upstream_computes_it() {
        // Two pods at 200% of their 100m request, target 50%: 2 * 4 = 8 replicas.
        let pods = vec![pod("a", "100m", true, 600), pod("b", "100m", true, 600)];
        let metrics = vec![metric("a", "200m"), metric("b", "200m")];
        let r = recommend(&cpu_target(50), 2, &pods, Ok(&metrics)).expect("recommends");
        assert_eq!(r.replicas, 8);
        assert_eq!(
            r.status
                .resource
                .as_ref()
                .and_then(|s| s.current.average_utilization),
            Some(200)
        );
        // Within the tolerance: no change.
        let metrics = vec![metric("a", "52m"), metric("b", "53m")];
        let r = recommend(&cpu_target(50), 2, &pods, Ok(&metrics)).expect("recommends");
        assert_eq!(r.replicas, 2);
        // Scaling down, a pod without metrics counts at 100% of its request: (10+10+100)/300
        // = 40% of a 50% target, 0.8 * 3 → 3 (without it, 2 pods at 10% would ask for 1).
        let three = vec![
            pod("a", "100m", true, 600),
            pod("b", "100m", true, 600),
            pod("c", "100m", true, 600),
        ];
        let metrics = vec![metric("a", "10m"), metric("b", "10m")];
        let r = recommend(&cpu_target(50), 3, &three, Ok(&metrics)).expect("recommends");
        assert_eq!(r.replicas, 3);
        let r = recommend(&cpu_target(50), 2, &three[..2], Ok(&metrics)).expect("recommends");
        assert_eq!(r.replicas, 1);
        // Scaling up, an unready pod counts at 0%: a at 200% and b unready → (200+0)/2 = 100%
        // of 50% → 2 * 2 = 4, not 1 * 4.
        let pods = vec![pod("a", "100m", true, 600), pod("b", "100m", false, 10)];
        let metrics = vec![metric("a", "200m"), metric("b", "5m")];
        let r = recommend(&cpu_target(50), 2, &pods, Ok(&metrics)).expect("recommends");
        assert_eq!(r.replicas, 4);
    }

    #[test]
    fn external_metrics_should_sum_their_series_as_upstream_does() {
        let spec = |target: serde_json::Value| -> MetricSpec {
            serde_json::from_value(json!({"type": "External", "external": {
                "metric": {"name": "http_requests_in_flight",
                           "selector": {"matchLabels": {"service": "fn"}}},
                "target": target}}))
            .expect("spec")
        };
        let value = |v: &str| wasmkube_api::metrics::ExternalMetricValue {
            metric_name: "http_requests_in_flight".into(),
            value: Quantity(v.into()),
            ..Default::default()
        };
        let pods = [pod("a", "100m", true, 600), pod("b", "100m", true, 600)];
        // AverageValue: 7 in flight over 2 replicas at 1 each wants 7.
        let avg = spec(json!({"type": "AverageValue", "averageValue": "1"}));
        let r = recommend_external(&avg, 2, &pods, Ok(vec![value("4"), value("3")])).expect("ok");
        assert_eq!(r.replicas, 7);
        let current = r.status.external.expect("external").current;
        assert_eq!(current.average_value, Some(Quantity("3500m".into())));
        // Within tolerance of the target: unchanged.
        assert_eq!(
            recommend_external(&avg, 2, &pods, Ok(vec![value("2050m")]))
                .expect("ok")
                .replicas,
            2
        );
        // Value: the ratio times the ready pods; from zero, the ratio alone.
        let val = spec(json!({"type": "Value", "value": "2"}));
        assert_eq!(
            recommend_external(&val, 2, &pods, Ok(vec![value("6")]))
                .expect("ok")
                .replicas,
            6
        );
        assert_eq!(
            recommend_external(&val, 0, &[], Ok(vec![value("3")]))
                .expect("ok")
                .replicas,
            2
        );
        // Nothing selected fails the metric rather than reading as zero.
        let f = recommend_external(&avg, 2, &pods, Ok(vec![]))
            .err()
            .expect("fails");
        assert_eq!(f.reason, "FailedGetExternalMetric");
    }

    #[test]
    fn a_missing_request_fails_the_metric() {
        let mut p = (*pod("a", "100m", true, 600)).clone();
        p.spec.as_mut().expect("spec").containers[0].resources = None;
        let f = recommend(
            &cpu_target(50),
            1,
            &[Arc::new(p)],
            Ok(&vec![metric("a", "1m")]),
        )
        .err()
        .expect("fails");
        assert_eq!(f.reason, "FailedGetResourceMetric");
        assert!(
            f.message.contains("missing request for cpu"),
            "{}",
            f.message
        );
    }

    #[test]
    fn behavior_should_stabilize_down_and_rate_limit_up() {
        let rules =
            |v: serde_json::Value| -> HPAScalingRules { serde_json::from_value(v).expect("rules") };
        let up = rules(
            json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
            {"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]}),
        );
        let down = rules(
            json!({"stabilizationWindowSeconds": 300, "selectPolicy": "Max", "policies": [
            {"type": "Percent", "value": 100, "periodSeconds": 15}]}),
        );
        let mut mem = Memory::default();
        let now = jiff::Timestamp::now();
        // From 1 to 20 wanted: at most max(1+4, 1*2) = 5 now.
        let (s, held) = stabilize(&mut mem, now, 20, 1, &up, &down);
        assert_eq!((s, held), (20, false));
        assert_eq!(
            limit(&mut mem, now, s, 1, 1, 10, &up, &down),
            (
                5,
                Some((
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate"
                ))
            )
        );
        // Then wanting 2 within the 300 s window: held at the highest recent recommendation.
        let (s, held) = stabilize(&mut mem, now, 2, 5, &up, &down);
        assert_eq!((s, held), (5, true));
        // Flapping 0 → 1 → 0 four times within a period: scaling up from zero again is not
        // limited (what was removed counts back into the period's start).
        let mut mem = Memory::default();
        for _ in 0..4 {
            mem.ups.push((now, 1));
            mem.downs.push((now, 1));
        }
        assert_eq!(limit(&mut mem, now, 1, 0, 0, 2, &up, &down), (1, None));
        // Beyond max: clamped.
        let mut mem = Memory::default();
        assert_eq!(limit(&mut mem, now, 4, 3, 1, 3, &up, &down).0, 3);
    }

    #[test]
    fn windows_should_parse() {
        assert_eq!(parse_window("10s"), Duration::from_secs(10));
        assert_eq!(parse_window("1m30.5s"), Duration::from_secs_f64(90.5));
    }
}
