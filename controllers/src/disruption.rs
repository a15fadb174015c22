//! The disruption controller (`pkg/controller/disruption`): keeps each PodDisruptionBudget's
//! status — the pods it expects, how many are healthy, how many must be, and so how many
//! disruptions (evictions) are allowed now. The API server's eviction subresource takes from
//! `disruptionsAllowed` and notes the pod in `disruptedPods`; this controller forgets those
//! notes once the pod is gone or after two minutes. A budget in percentages or with
//! `maxUnavailable` counts the replicas its pods' controllers ask for (a Deployment's for its
//! ReplicaSets), so a pod not made yet counts as unavailable; an integer `minAvailable`
//! counts the pods there are.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::workqueue::Action;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::pod_ready as ready;

/// How long an eviction's note in `disruptedPods` counts the pod as already disrupted.
const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

/// What the reconciler needs.
pub type Ctx = crate::PodsCtx;

/// Reconcile errors (retried with back-off).
pub type Error = crate::ReconcileError;

/// An int-or-percent of `of`, rounded up (as `GetScaledValueFromIntOrPercent(..., true)`).
fn scaled(v: &IntOrString, of: i32) -> i32 {
    match v {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            (pct * f64::from(of) / 100.0).ceil() as i32
        }
    }
}

/// The budget's arithmetic: (expected pods, desired healthy), from the pods it selects.
pub fn desired(pdb: &PodDisruptionBudget, expected: i32) -> i32 {
    let spec = pdb.spec.clone().unwrap_or_default();
    match (&spec.min_available, &spec.max_unavailable) {
        (Some(min), _) => scaled(min, expected),
        (None, Some(max)) => (expected - scaled(max, expected)).max(0),
        // Neither: policy/v1 defaults to minAvailable 1.
        (None, None) => 1,
    }
}

/// Whether the budget counts the pods its pods' controllers ask for (a percentage or
/// `maxUnavailable`) rather than the pods there are (an integer `minAvailable`), as upstream:
/// a pod not made yet then still counts as unavailable.
fn counts_controllers(pdb: &PodDisruptionBudget) -> bool {
    let spec = pdb.spec.clone().unwrap_or_default();
    spec.max_unavailable.is_some() || matches!(spec.min_available, Some(IntOrString::String(_)))
}

/// The controlling owner of a pod: (kind, name).
fn controller_of(pod: &Pod) -> Option<(String, String)> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.clone(), o.name.clone()))
}

/// The replicas a workload asks for (`spec.replicas`, default 1); a ReplicaSet's Deployment
/// speaks for it, as upstream's finders.
async fn replicas_of(client: &Client, ns: &str, kind: &str, name: &str) -> Option<i32> {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
    use k8s_openapi::api::core::v1::ReplicationController;
    match kind {
        "ReplicaSet" => {
            let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .ok()??;
            let deployment = rs
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                .map(|o| o.name.clone());
            match deployment {
                Some(d) => Api::<Deployment>::namespaced(client.clone(), ns)
                    .get_opt(&d)
                    .await
                    .ok()??
                    .spec
                    .map(|s| s.replicas.unwrap_or(1)),
                None => rs.spec.map(|s| s.replicas.unwrap_or(1)),
            }
        }
        "StatefulSet" => Api::<StatefulSet>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .ok()??
            .spec
            .map(|s| s.replicas.unwrap_or(1)),
        "ReplicationController" => Api::<ReplicationController>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .ok()??
            .spec
            .map(|s| s.replicas.unwrap_or(1)),
        _ => None,
    }
}

/// What the controllers of `selected` ask for, each counted once; `None` when a pod has no
/// controller whose replicas can be read (the pods there are count then).
async fn expected_from_controllers(
    client: &Client,
    ns: &str,
    selected: &[Arc<Pod>],
) -> Option<i32> {
    let owners: std::collections::BTreeSet<(String, String)> = selected
        .iter()
        .map(|p| controller_of(p))
        .collect::<Option<_>>()?;
    let mut total = 0;
    for (kind, name) in &owners {
        total += replicas_of(client, ns, kind, name).await?;
    }
    Some(total)
}

/// The status a budget should have for the pods it selects, at `now`; `controllers`: what
/// the pods' controllers ask for, when the budget counts that (see [`counts_controllers`]).
pub fn status_of(
    pdb: &PodDisruptionBudget,
    selected: &[Arc<Pod>],
    controllers: Option<i32>,
    now: jiff::Timestamp,
) -> PodDisruptionBudgetStatus {
    let old = pdb.status.clone().unwrap_or_default();
    // Evictions still in flight: the pod is not gone yet, and the note is recent.
    let disrupted: BTreeMap<String, Time> = old
        .disrupted_pods
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, at)| {
            let alive = selected
                .iter()
                .any(|p| p.name_any() == *name && p.metadata.deletion_timestamp.is_none());
            alive
                && now.duration_since(at.0).as_secs()
                    < i64::try_from(DELETION_TIMEOUT.as_secs()).unwrap_or(i64::MAX)
        })
        .collect();
    let live: Vec<&Arc<Pod>> = selected
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let expected = controllers.unwrap_or_else(|| i32::try_from(live.len()).unwrap_or(i32::MAX));
    let healthy = live
        .iter()
        .filter(|p| ready(p) && !disrupted.contains_key(&p.name_any()))
        .count();
    let healthy = i32::try_from(healthy).unwrap_or(i32::MAX);
    let want = desired(pdb, expected);
    let allowed = (healthy - want).max(0);
    let condition = |ok: bool| Condition {
        type_: "DisruptionAllowed".into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: if ok {
            "SufficientPods"
        } else {
            "InsufficientPods"
        }
        .into(),
        message: String::new(),
        observed_generation: pdb.metadata.generation,
        last_transition_time: old
            .conditions
            .iter()
            .flatten()
            .find(|c| {
                c.type_ == "DisruptionAllowed" && c.status == if ok { "True" } else { "False" }
            })
            .map_or(Time(now), |c| c.last_transition_time.clone()),
    };
    PodDisruptionBudgetStatus {
        current_healthy: healthy,
        desired_healthy: want,
        expected_pods: expected,
        disruptions_allowed: allowed,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        observed_generation: pdb.metadata.generation,
        conditions: Some(vec![condition(allowed > 0)]),
    }
}

fn selects(pdb: &PodDisruptionBudget, pod: &Pod) -> bool {
    if pod.namespace() != pdb.namespace() {
        return false;
    }
    let Some(sel) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    wasmkube_api::selector::LabelSelector::from_structured(sel).is_ok_and(|s| s.matches(&labels))
}

/// Reconciles one budget.
///
/// # Errors
/// API failures (retried).
pub async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = pdb.namespace().unwrap_or_default();
    let selected: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| selects(&pdb, p))
        .collect();
    let controllers = if counts_controllers(&pdb) && !selected.is_empty() {
        expected_from_controllers(&ctx.client, &ns, &selected).await
    } else {
        None
    };
    let now = jiff::Timestamp::now();
    let status = status_of(&pdb, &selected, controllers, now);
    let strip = |s: &PodDisruptionBudgetStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    if pdb.status.as_ref().map(strip) != Some(strip(&status)) {
        let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({"status": status});
        api.patch_status(
            &pdb.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    // Notes of evictions expire: look again when the oldest would.
    Ok(if status.disrupted_pods.is_some() {
        Action::requeue(Duration::from_secs(10))
    } else {
        Action::await_change()
    })
}

/// Runs the controller until `shutdown`.
pub async fn run(
    client: Client,
    informers: &crate::informers::Informers,
    shutdown: CancellationToken,
) {
    let (ctx, changes) = Ctx::subscribe(&client, informers);
    let pods = (ctx.pods.clone(), changes);
    // A pod change concerns the budgets of its namespace that select it.
    crate::run_pod_watching(
        client,
        "disruption",
        pods,
        ctx,
        |b: &PodDisruptionBudget, pod| selects(b, pod),
        reconcile,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, is_ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d", "labels": {"app": "web"}},
                "status": {"conditions": [{"type": "Ready", "status": if is_ready { "True" } else { "False" }}]}}))
            .expect("pod"),
        )
    }

    fn pdb(spec: serde_json::Value) -> PodDisruptionBudget {
        serde_json::from_value(
            json!({"metadata": {"name": "b", "namespace": "d", "generation": 1},
            "spec": spec}),
        )
        .expect("pdb")
    }

    #[test]
    fn budgets_should_allow_what_the_healthy_pods_spare() {
        let now = jiff::Timestamp::now();
        let three = [pod("a", true), pod("b", true), pod("c", false)];
        let min = pdb(json!({"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}));
        let s = status_of(&min, &three, None, now);
        assert_eq!(
            (
                s.expected_pods,
                s.current_healthy,
                s.desired_healthy,
                s.disruptions_allowed
            ),
            (3, 2, 1, 1)
        );
        let pct = pdb(json!({"minAvailable": "50%", "selector": {}}));
        assert_eq!(status_of(&pct, &three, None, now).desired_healthy, 2);
        // Counted against what the controllers ask for: 4 wanted, 2 healthy, 50% → 2 desired.
        let s = status_of(&pct, &three, Some(4), now);
        assert_eq!(
            (s.expected_pods, s.desired_healthy, s.disruptions_allowed),
            (4, 2, 0)
        );
        let max = pdb(json!({"maxUnavailable": 1, "selector": {}}));
        let s = status_of(&max, &three, None, now);
        assert_eq!((s.desired_healthy, s.disruptions_allowed), (2, 0));
        assert_eq!(
            s.conditions.expect("conditions")[0].reason,
            "InsufficientPods"
        );
        // A pod an eviction took is not healthy any more until it is gone.
        let mut taken = min.clone();
        taken.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: Some([("a".to_owned(), Time(now))].into()),
            ..Default::default()
        });
        let s = status_of(&taken, &three, None, now);
        assert_eq!((s.current_healthy, s.disruptions_allowed), (1, 0));
        // ...nor after the note expired.
        let later = now + jiff::SignedDuration::from_secs(121);
        assert_eq!(status_of(&taken, &three, None, later).current_healthy, 2);
    }
}
