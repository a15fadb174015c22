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
//! ...). Pods, Object and External metrics need a custom or external metrics API, which is
//! not served yet: they report `FailedGet...Metric` and never scale down.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler as Hpa, HorizontalPodAutoscalerCondition,
    HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus, MetricValueStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource as _, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wasmkube_api::metrics::PodMetrics;
use wasmkube_api::quantity::{bytes, millicores};
use wasmkube_api::services::SCALE_FROM_ZERO;

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

/// Where a request for a replica from zero stands when the autoscaler's reconcile comes.
#[derive(Clone)]
enum Wake {
    /// The Event arrived; nothing was written for it.
    Asked,
    /// The target is being scaled from zero as the Event arrived, without waiting for the
    /// controller's queue; this resolves to whether that write applied.
    Waking(futures::future::Shared<futures::future::BoxFuture<'static, bool>>),
}

/// How long (seconds) a node holds a request for a Service at zero pods: a ScaleFromZero
/// Event older than that asks for nothing any more.
const HELD_FOR: i64 = 30;

/// Runs the controller until `shutdown`.
pub(crate) async fn run(
    client: Client,
    pods: Store<Pod>,
    sync_period: Duration,
    shutdown: CancellationToken,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "horizontal-pod-autoscaler".into(),
            instance: None,
        },
    );
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

/// Whether Service `ns/service` should be held for at zero pods: an autoscaler of its
/// namespace with `minReplicas: 0` has an Object metric of it.
fn wants_hold(hpas: &[Arc<Hpa>], ns: &str, service: &str) -> bool {
    hpas.iter()
        .filter(|h| h.namespace().as_deref() == Some(ns))
        .filter(|h| h.spec.as_ref().and_then(|s| s.min_replicas) == Some(0))
        .any(|h| object_services(h).any(|s| s == service))
}

/// Takes the scale-from-zero mark off Services no autoscaler may take to zero any more (it
/// was deleted, or its `minReplicas` raised), every sync period: nodes then refuse their
/// requests at once when they have no endpoint, instead of holding them.
async fn sweep(ctx: Arc<Ctx>, hpas: Store<Hpa>, shutdown: CancellationToken) {
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::all(ctx.client.clone());
    let mut every = tokio::time::interval(ctx.sync_period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if hpas.wait_until_ready().await.is_err() {
            return;
        }
        let Ok(list) = services.list(&ListParams::default()).await else {
            continue;
        };
        let state = hpas.state();
        for svc in list.items {
            let marked = svc
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(SCALE_FROM_ZERO));
            let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
            if !marked || wants_hold(&state, &ns, &name) {
                continue;
            }
            let api: Api<k8s_openapi::api::core::v1::Service> =
                Api::namespaced(ctx.client.clone(), &ns);
            let patch = json!({"metadata": {"annotations": {SCALE_FROM_ZERO: null}}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    ctx.marked
                        .lock()
                        .expect("marked lock")
                        .remove(&(ns.clone(), name.clone()));
                    tracing::info!(namespace = %ns, service = %name, "no autoscaler takes it to zero any more: requests are no longer held");
                }
                Err(e) => {
                    tracing::debug!(%ns, service = %name, error = %e, "cannot unmark a Service")
                }
            }
        }
    }
}

/// The Services an autoscaler's Object metrics describe.
fn object_services(hpa: &Hpa) -> impl Iterator<Item = &str> {
    hpa.spec
        .iter()
        .flat_map(|s| s.metrics.iter().flatten())
        .filter_map(|m| m.object.as_ref())
        .filter(|o| o.described_object.kind == "Service")
        .map(|o| o.described_object.name.as_str())
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
            ctx.event(&hpa, EventType::Warning, "FailedGetScale", &message)
                .await;
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
                ctx.event(&hpa, EventType::Warning, f.reason, &f.message)
                    .await;
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
                ctx.event(&hpa, EventType::Normal, "SuccessfulRescale", &message)
                    .await;
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
                ctx.event(&hpa, EventType::Warning, "FailedRescale", &message)
                    .await;
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
    /// Whether a ScaleFromZero Event asked for a replica of autoscaler `key` (forgotten once
    /// asked), and whether it was given.
    fn take_woken(&self, key: &str) -> Option<Wake> {
        self.woken.lock().expect("woken lock").remove(key)
    }

    /// A ScaleFromZero Event asks `hpa` for a replica: its target is scaled from zero at once
    /// (the same one write its reconcile would make), rather than after the controller's
    /// queue hands the reconcile over — a millisecond or two on every wake.
    fn ask_wake(self: &Arc<Self>, hpa: &Hpa) {
        use futures::FutureExt;
        let ns = hpa.namespace().unwrap_or_default();
        let key = format!("{ns}/{}", hpa.name_any());
        let mut woken = self.woken.lock().expect("woken lock");
        if matches!(woken.get(&key), Some(Wake::Waking(_))) {
            return;
        }
        let Some(spec) = hpa.spec.clone().filter(|s| s.min_replicas == Some(0)) else {
            woken.insert(key, Wake::Asked);
            return;
        };
        let ctx = Arc::clone(self);
        let hpa_key = key.clone();
        let task =
            tokio::spawn(async move { ctx.wake(&hpa_key, &ns, &spec.scale_target_ref).await });
        woken.insert(
            key,
            Wake::Waking(async move { task.await.unwrap_or(false) }.boxed().shared()),
        );
    }

    async fn event(&self, hpa: &Hpa, type_: EventType, reason: &str, note: &str) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Scaling".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &hpa.object_ref(&())).await {
            tracing::debug!(error = %e, "cannot record an event");
        }
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

    /// Annotates Service `ns/service` for scale from zero ([`SCALE_FROM_ZERO`], naming the
    /// autoscaler), once.
    async fn mark_scale_from_zero(&self, ns: &str, service: &str, hpa: &str) {
        let key = (ns.to_owned(), service.to_owned());
        if self.marked.lock().expect("marked lock").contains(&key) {
            return;
        }
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(self.client.clone(), ns);
        let patch = json!({"metadata": {"annotations": {SCALE_FROM_ZERO: hpa}}});
        match services
            .patch(service, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.marked.lock().expect("marked lock").insert(key);
            }
            Err(e) => {
                tracing::debug!(%ns, %service, error = %e, "cannot mark a Service for scale from zero")
            }
        }
    }

    /// A custom metric: `namespaces/{ns}/{resource}/{name}/{metric}` of custom.metrics.k8s.io.
    async fn custom(
        &self,
        ns: &str,
        resource: &str,
        name: &str,
        metric: &str,
        selector: Option<&str>,
    ) -> Result<wasmkube_api::metrics::MetricValueList, String> {
        let mut path = format!(
            "/apis/{}/namespaces/{ns}/{resource}/{name}/{metric}",
            wasmkube_api::metrics::CUSTOM_GROUP_VERSION
        );
        if let Some(sel) = selector.filter(|s| !s.is_empty()) {
            let q =
                serde_urlencoded::to_string([("labelSelector", sel)]).map_err(|e| e.to_string())?;
            path = format!("{path}?{q}");
        }
        let req = http::Request::get(&path)
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        self.client
            .request::<wasmkube_api::metrics::MetricValueList>(req)
            .await
            .map_err(|e| e.to_string())
    }

    async fn external(
        &self,
        ns: &str,
        metric: &str,
        selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    ) -> Result<Vec<wasmkube_api::metrics::ExternalMetricValue>, String> {
        let mut path = format!(
            "/apis/{}/namespaces/{ns}/{metric}",
            wasmkube_api::metrics::EXTERNAL_GROUP_VERSION
        );
        if let Some(sel) = selector {
            let sel = kube::core::Selector::try_from(sel.clone()).map_err(|e| e.0)?;
            if !sel.selects_all() {
                let q = serde_urlencoded::to_string([("labelSelector", sel.to_string())])
                    .map_err(|e| e.to_string())?;
                path = format!("{path}?{q}");
            }
        }
        let req = http::Request::get(&path)
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        self.client
            .request::<wasmkube_api::metrics::ExternalMetricValueList>(req)
            .await
            .map(|l| l.items)
            .map_err(|e| e.to_string())
    }

    async fn pod_metrics(&self, ns: &str, selector: &str) -> Result<Vec<PodMetrics>, String> {
        let api: Api<PodMetrics> = Api::namespaced(self.client.clone(), ns);
        api.list(&ListParams::default().labels(selector))
            .await
            .map(|l| l.items)
            .map_err(|e| e.to_string())
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

/// What the controller reads of a `scale` subresource.
struct ScaleView {
    spec_replicas: i32,
    status_replicas: i32,
    selector: String,
}

impl Ctx {
    /// The API of the kind `target` names, found through discovery (any kind with a `scale`
    /// subresource, custom resources too), remembered per kind.
    async fn scale_api(
        &self,
        ns: &str,
        target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
    ) -> Result<Api<kube::api::DynamicObject>, String> {
        let api_version = target
            .api_version
            .clone()
            .unwrap_or_else(|| "apps/v1".into());
        let key = (api_version.clone(), target.kind.clone());
        let known = self.kinds.lock().expect("kinds lock").get(&key).cloned();
        let resource = match known {
            Some(r) => r,
            None => {
                let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
                let gvk = kube::api::GroupVersionKind::gvk(group, version, &target.kind);
                let (r, _) = kube::discovery::pinned_kind(&self.client, &gvk)
                    .await
                    .map_err(|e| format!("{} {api_version}: {e}", target.kind))?;
                self.kinds
                    .lock()
                    .expect("kinds lock")
                    .insert(key, r.clone());
                r
            }
        };
        Ok(Api::namespaced_with(self.client.clone(), ns, &resource))
    }

    async fn scale_of(
        &self,
        ns: &str,
        target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
    ) -> Result<ScaleView, String> {
        let scale = self
            .scale_api(ns, target)
            .await?
            .get_scale(&target.name)
            .await
            .map_err(|e| e.to_string())?;
        let status = scale.status.unwrap_or_default();
        Ok(ScaleView {
            spec_replicas: scale.spec.and_then(|s| s.replicas).unwrap_or(0),
            status_replicas: status.replicas,
            selector: status.selector.unwrap_or_default(),
        })
    }

    /// Scales the target of autoscaler `key` from zero to one replica in one write that
    /// applies only while it is at zero (a JSON Patch `test` on the scale); whether it applied
    /// (not when the target was not at zero, nor when the write failed: the reconcile then
    /// scales as usual).
    async fn wake(
        &self,
        key: &str,
        ns: &str,
        target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
    ) -> bool {
        tracing::debug!(target: "podtrace", kind = "HorizontalPodAutoscaler", object = %key, stage = "waking");
        let ops: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/spec/replicas", "value": 0},
            {"op": "replace", "path": "/spec/replicas", "value": 1}
        ]))
        .expect("a constant JSON Patch");
        let written = match self.scale_api(ns, target).await {
            Ok(api) => api
                .patch_scale(
                    &target.name,
                    &PatchParams::default(),
                    &Patch::<()>::Json(ops),
                )
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match written {
            Ok(_) => true,
            Err(e) => {
                // 422/409: not at zero (the test failed), or changed meanwhile.
                tracing::debug!(hpa = %key, error = %e, "did not scale from zero at once");
                false
            }
        }
    }

    async fn set_scale(
        &self,
        ns: &str,
        target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
        replicas: i32,
    ) -> Result<(), String> {
        self.scale_api(ns, target)
            .await?
            .patch_scale(
                &target.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// How a pod counts for a resource metric.
#[derive(Debug, PartialEq, Eq)]
enum Group {
    /// Counted with its metric.
    Ready,
    /// Not ready (CPU only): counted at 0% when scaling up, else left out.
    Unready,
    /// No metric: 100% when scaling down, 0% when scaling up.
    Missing,
    /// Deleted or failed: left out.
    Ignored,
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// One pod's metric: its value and the window it was measured over.
#[derive(Clone, Debug)]
struct Sample {
    usage: f64,
    timestamp: Option<jiff::Timestamp>,
    window: Duration,
}

/// `groupPods`: how `pod` counts, given its sample.
fn group(pod: &Pod, metric: Option<&Sample>, cpu: bool, now: jiff::Timestamp) -> Group {
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
fn parse_window(w: &str) -> Duration {
    let (m, s) = match w.split_once('m') {
        Some((m, s)) => (m.parse::<f64>().unwrap_or(0.0), s),
        None => (0.0, w),
    };
    let s = s.trim_end_matches('s').parse::<f64>().unwrap_or(0.0);
    Duration::from_secs_f64((m * 60.0 + s).max(0.0))
}

/// The resource a metric is about and, for ContainerResource, its container.
fn resource_of(
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
fn usage_of(m: &PodMetrics, resource: &str, container: Option<&str>) -> u64 {
    m.containers
        .iter()
        .filter(|c| container.is_none_or(|n| n == c.name))
        .filter_map(|c| c.usage.get(resource))
        .map(|q| amount(resource, q))
        .sum()
}

fn amount(resource: &str, q: &Quantity) -> u64 {
    if resource == "cpu" {
        millicores(q).unwrap_or(0)
    } else {
        bytes(q).unwrap_or(0)
    }
}

/// The pod's request of `resource` (all containers, or the one named); `Err` names a
/// container without one.
fn request_of(pod: &Pod, resource: &str, container: Option<&str>) -> Result<u64, String> {
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
struct Computed {
    replicas: i32,
    shown: f64,
    average: f64,
}

/// `GetResourceReplicas` / `GetMetricReplicas`: replicas for per-pod `samples` against
/// `target` — a utilization of `requests` in percent when given, else an average value.
fn replicas_for(
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
fn recommend(
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
fn recommend_pods(
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
fn recommend_object(
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
fn recommend_external(
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
fn replicas_for_value(
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
fn quantity_value(q: &Quantity) -> f64 {
    millicores(q).map_or(0.0, |m| m as f64 / 1000.0)
}

/// `stabilizeRecommendationWithBehaviors`: the recommendation after the stabilization
/// windows, and whether a scale-down was held back by them.
fn stabilize(
    mem: &mut Memory,
    now: jiff::Timestamp,
    desired: i32,
    current: i32,
    up: &HPAScalingRules,
    down: &HPAScalingRules,
) -> (i32, bool) {
    let window = |r: &HPAScalingRules| {
        jiff::SignedDuration::from_secs(i64::from(r.stabilization_window_seconds.unwrap_or(0)))
    };
    let (up_window, down_window) = (window(up), window(down));
    let longest = up_window.max(down_window);
    mem.recommendations.retain(|(t, _)| *t + longest >= now);
    let mut up_rec = desired;
    let mut down_rec = desired;
    for (t, r) in &mem.recommendations {
        if *t + up_window >= now {
            up_rec = up_rec.min(*r);
        }
        if *t + down_window >= now {
            down_rec = down_rec.max(*r);
        }
    }
    mem.recommendations.push((now, desired));
    let mut recommendation = current;
    if recommendation < up_rec {
        recommendation = up_rec;
    }
    if recommendation > down_rec {
        recommendation = down_rec;
    }
    (
        recommendation,
        desired < current && recommendation > desired,
    )
}

/// `convertDesiredReplicasWithBehaviorRate`: clamps to the rate policies and min/max; the
/// `ScalingLimited` reason and message when something clamped.
#[expect(clippy::too_many_arguments, reason = "the upstream function's inputs")]
fn limit(
    mem: &mut Memory,
    now: jiff::Timestamp,
    desired: i32,
    current: i32,
    min: i32,
    max: i32,
    up: &HPAScalingRules,
    down: &HPAScalingRules,
) -> (i32, Option<(&'static str, &'static str)>) {
    let longest = |r: &HPAScalingRules| {
        r.policies
            .iter()
            .flatten()
            .map(|p| p.period_seconds)
            .max()
            .unwrap_or(0)
    };
    let keep_for = jiff::SignedDuration::from_secs(i64::from(longest(up).max(longest(down))));
    mem.ups.retain(|(t, _)| *t + keep_for >= now);
    mem.downs.retain(|(t, _)| *t + keep_for >= now);
    let changed_within = |events: &[(jiff::Timestamp, i32)], period: i32| -> i32 {
        let p = jiff::SignedDuration::from_secs(i64::from(period));
        events
            .iter()
            .filter(|(t, _)| *t + p > now)
            .map(|(_, n)| n)
            .sum()
    };
    if desired > current {
        let limit = match up.select_policy.as_deref() {
            Some("Disabled") => current,
            select => {
                let proposals = up.policies.iter().flatten().map(|p| {
                    // Replicas at the period's start: what was added since taken off, what
                    // was removed since put back (upstream, since 1.27).
                    let start = current - changed_within(&mem.ups, p.period_seconds)
                        + changed_within(&mem.downs, p.period_seconds);
                    if p.type_ == "Pods" {
                        start + p.value
                    } else {
                        (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32
                    }
                });
                if select == Some("Min") {
                    proposals.min().unwrap_or(i32::MAX)
                } else {
                    proposals.max().unwrap_or(i32::MAX)
                }
            }
        };
        let (allowed, reason) = if limit < max {
            (
                limit,
                (
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                ),
            )
        } else {
            (
                max,
                (
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                ),
            )
        };
        if desired > allowed {
            return (allowed, Some(reason));
        }
    } else if desired < current {
        let limit = match down.select_policy.as_deref() {
            Some("Disabled") => current,
            select => {
                let proposals = down.policies.iter().flatten().map(|p| {
                    let start = current + changed_within(&mem.downs, p.period_seconds)
                        - changed_within(&mem.ups, p.period_seconds);
                    if p.type_ == "Pods" {
                        start - p.value
                    } else {
                        (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32
                    }
                });
                if select == Some("Min") {
                    proposals.max().unwrap_or(i32::MIN)
                } else {
                    proposals.min().unwrap_or(i32::MIN)
                }
            }
        };
        let (allowed, reason) = if limit > min {
            (
                limit,
                (
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate",
                ),
            )
        } else {
            (
                min,
                (
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                ),
            )
        };
        if desired < allowed {
            return (allowed, Some(reason));
        }
    }
    if desired > max {
        return (
            max,
            Some((
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )),
        );
    }
    if desired < min {
        return (
            min,
            Some((
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )),
        );
    }
    (desired, None)
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
