//! The Deployment controller (`deployment_controller.go`, `rolling.go`, `recreate.go`): one
//! ReplicaSet per pod template (named `<deployment>-<pod-template-hash>`), rolled with
//! `RollingUpdate` (maxSurge / maxUnavailable) or `Recreate`, revision annotations that
//! `kubectl rollout history/undo` read, history trimmed to `revisionHistoryLimit`, pause, and
//! the status and conditions `kubectl rollout status` waits on (including
//! `ProgressDeadlineExceeded`).
//!
//! The rollout arithmetic ([`rolling`], [`resolve_fenceposts`]) is pure and unit-tested; the
//! reconcile applies it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::workqueue::Action;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

/// The label tying a ReplicaSet (and its pods) to one template.
pub const HASH_LABEL: &str = "pod-template-hash";
/// The revision annotation on Deployments and ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";

/// What the reconciler needs.
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// Every ReplicaSet, from a reflector.
    pub sets: Store<ReplicaSet>,
    /// Its events (`ScalingReplicaSet`).
    pub recorder: wasmkube_client::events::Recorder,
}

/// Reconcile errors (retried with back-off).
pub type Error = crate::ReconcileError;

/// FNV-1a (32-bit), as Kubernetes hashes pod templates.
fn fnv32a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The `pod-template-hash` of a Deployment's template: its hash, spelled with Kubernetes'
/// `SafeEncodeString` alphabet (no vowels, no look-alike digits).
pub fn template_hash(d: &Deployment) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let template = d
        .spec
        .as_ref()
        .map(|s| serde_json::to_vec(&s.template).unwrap_or_default())
        .unwrap_or_default();
    let collision = d
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let mut bytes = template;
    bytes.extend_from_slice(collision.to_string().as_bytes());
    fnv32a(&bytes)
        .to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// `(maxSurge, maxUnavailable)` as pod counts: surge rounds up, unavailability down, and both
/// zero means one may be unavailable (`ResolveFenceposts`).
pub fn resolve_fenceposts(
    replicas: i32,
    surge: Option<&IntOrString>,
    unavailable: Option<&IntOrString>,
) -> (i32, i32) {
    let scaled = |v: Option<&IntOrString>, up: bool| -> i32 {
        match v {
            None => {
                // 25% by default.
                if up {
                    (replicas * 25 + 99) / 100
                } else {
                    replicas * 25 / 100
                }
            }
            Some(IntOrString::Int(n)) => *n,
            Some(IntOrString::String(s)) => {
                let pct: i32 = s.trim_end_matches('%').parse().unwrap_or(0);
                if up {
                    (replicas * pct + 99) / 100
                } else {
                    replicas * pct / 100
                }
            }
        }
    };
    let (s, u) = (scaled(surge, true), scaled(unavailable, false));
    if s == 0 && u == 0 { (0, 1) } else { (s, u) }
}

/// A ReplicaSet's numbers, for the rollout arithmetic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsState {
    /// Its name.
    pub name: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

/// One rolling-update step: the new ReplicaSet's replicas and the old ones' (oldest first).
/// Scaling up the new set comes first; old sets shrink only when no scale-up was possible.
pub fn rolling(
    desired: i32,
    max_surge: i32,
    max_unavailable: i32,
    new: &RsState,
    olds: &[RsState],
) -> (i32, Vec<i32>) {
    let all = new.replicas + olds.iter().map(|o| o.replicas).sum::<i32>();
    // Scale up the new ReplicaSet within the surge budget.
    let new_replicas = if new.replicas > desired {
        desired
    } else if new.replicas < desired {
        let max_total = desired + max_surge;
        if all >= max_total {
            new.replicas
        } else {
            new.replicas + (max_total - all).min(desired - new.replicas)
        }
    } else {
        new.replicas
    };
    let mut old_replicas: Vec<i32> = olds.iter().map(|o| o.replicas).collect();
    if new_replicas != new.replicas {
        return (new_replicas, old_replicas);
    }
    // Scale down old ReplicaSets while keeping minAvailable.
    let min_available = desired - max_unavailable;
    let new_unavailable = new.replicas - new.available;
    let max_scaled_down = all - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return (new_replicas, old_replicas);
    }
    // First the old replicas that are not available anyway.
    let mut scaled = 0;
    for (i, o) in olds.iter().enumerate() {
        if scaled >= max_scaled_down {
            break;
        }
        let unhealthy = (old_replicas[i] - o.available).max(0);
        let n = unhealthy.min(max_scaled_down - scaled);
        old_replicas[i] -= n;
        scaled += n;
    }
    // Then available ones, down to minAvailable.
    let available: i32 = new.available
        + olds
            .iter()
            .zip(&old_replicas)
            .map(|(o, r)| o.available.min(*r))
            .sum::<i32>();
    let mut budget = (available - min_available).min(max_scaled_down - scaled);
    for r in &mut old_replicas {
        if budget <= 0 {
            break;
        }
        let n = (*r).min(budget);
        *r -= n;
        budget -= n;
    }
    (new_replicas, old_replicas)
}

/// Whether a ReplicaSet runs the Deployment's current template (`EqualIgnoreHash`: equal once
/// the `pod-template-hash` label is set aside). Hashes only name ReplicaSets; a rollback's
/// template, copied back from an old ReplicaSet, matches that ReplicaSet here.
pub fn same_template(rs: &ReplicaSet, d: &Deployment) -> bool {
    let Some(mut t) = rs.spec.as_ref().and_then(|s| s.template.clone()) else {
        return false;
    };
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    d.spec
        .as_ref()
        .is_some_and(|s| semantic(&s.template) == semantic(&t))
}

/// A template as Go's semantic equality sees it: empty objects, empty lists and nulls are the
/// same as absent (a Go client round-trip turns `resources` absent into `resources: {}`).
fn semantic(t: &k8s_openapi::api::core::v1::PodTemplateSpec) -> serde_json::Value {
    fn prune(v: serde_json::Value) -> Option<serde_json::Value> {
        match v {
            serde_json::Value::Null => None,
            serde_json::Value::Object(m) => {
                let m: serde_json::Map<_, _> = m
                    .into_iter()
                    .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                    .collect();
                (!m.is_empty()).then_some(serde_json::Value::Object(m))
            }
            serde_json::Value::Array(a) => {
                let a: Vec<_> = a
                    .into_iter()
                    .map(|v| prune(v).unwrap_or(serde_json::Value::Null))
                    .collect();
                (!a.is_empty()).then_some(serde_json::Value::Array(a))
            }
            other => Some(other),
        }
    }
    prune(serde_json::to_value(t).unwrap_or_default()).unwrap_or_default()
}

fn revision(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The ReplicaSet for the Deployment's current template.
pub fn new_replica_set(d: &Deployment, hash: &str, revision: i64) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.into());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.into());
    let mut labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", d.name_any())),
            namespace: d.namespace(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                REVISION.to_owned(),
                revision.to_string(),
            )])),
            owner_references: Some(vec![crate::controller_ref(d)]),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    previous: Option<&DeploymentCondition>,
    now: &Time,
) -> DeploymentCondition {
    let status = if status { "True" } else { "False" };
    let same = previous.filter(|p| p.status == status);
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(
            same.and_then(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone()),
        ),
        last_update_time: Some(
            if same.is_some_and(|p| p.reason.as_deref() == Some(reason)) {
                same.and_then(|p| p.last_update_time.clone())
                    .unwrap_or_else(|| now.clone())
            } else {
                now.clone()
            },
        ),
    }
}

/// Makes the world match one Deployment.
///
/// # Errors
/// API failures (retried by the controller with back-off).
#[expect(
    clippy::too_many_lines,
    reason = "the steps of one sync, in Kubernetes' order"
)]
pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    tracing::debug!(target: "podtrace", kind = "Deployment", object = %format_args!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()), stage = "reconciling");
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_else(|| "default".into());
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let sets_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    if ctx.sets.wait_until_ready().await.is_err() {
        return Ok(Action::await_change());
    }
    let mut owned: Vec<ReplicaSet> = crate::controlled_by(&ctx.sets, &ns, &uid)
        .map(|rs| (*rs).clone())
        .collect();
    owned.sort_by_key(|rs| {
        (
            revision(&rs.metadata),
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        )
    });
    let hash = template_hash(&d);
    let max_old_revision = owned
        .iter()
        .filter(|rs| !same_template(rs, &d))
        .map(|rs| revision(&rs.metadata))
        .max()
        .unwrap_or(0);
    let paused = spec.paused.unwrap_or(false);

    // The ReplicaSet of the current template: found, revived (a rollback), or created.
    let mut new_rs = owned.iter().find(|rs| same_template(rs, &d)).cloned();
    if let Some(rs) = &new_rs
        && revision(&rs.metadata) <= max_old_revision
    {
        let patch =
            json!({"metadata": {"annotations": {REVISION: (max_old_revision + 1).to_string()}}});
        new_rs = Some(
            sets_api
                .patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?,
        );
    }
    if new_rs.is_none() && !paused {
        let rs = new_replica_set(&d, &hash, max_old_revision + 1);
        new_rs = Some(match sets_api.create(&PostParams::default(), &rs).await {
            Ok(rs) => rs,
            Err(kube::Error::Api(s)) if s.code == 409 => sets_api.get(&rs.name_any()).await?,
            Err(e) => return Err(e.into()),
        });
    }
    let olds: Vec<ReplicaSet> = owned
        .iter()
        .filter(|rs| !same_template(rs, &d))
        .cloned()
        .collect();
    let state = |rs: &ReplicaSet| RsState {
        name: rs.name_any(),
        replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        available: rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
    };
    let (max_surge, max_unavailable) = match spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
    {
        Some(ru) => resolve_fenceposts(desired, ru.max_surge.as_ref(), ru.max_unavailable.as_ref()),
        None => resolve_fenceposts(desired, None, None),
    };
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");

    if let Some(new) = &new_rs
        && !paused
    {
        let new_state = state(new);
        let old_states: Vec<RsState> = olds.iter().map(state).collect();
        let (new_target, old_targets) = if recreate {
            let old_running = olds.iter().any(|rs| {
                rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0
                    || rs.status.as_ref().is_some_and(|s| s.replicas > 0)
            });
            if old_running {
                (0, vec![0; olds.len()])
            } else {
                (desired, vec![0; olds.len()])
            }
        } else {
            rolling(desired, max_surge, max_unavailable, &new_state, &old_states)
        };
        let max_replicas = desired + max_surge;
        let scale = |name: String, replicas: i32| {
            let api = sets_api.clone();
            async move {
                let patch = json!({
                    "metadata": {"annotations": {
                        "deployment.kubernetes.io/desired-replicas": desired.to_string(),
                        "deployment.kubernetes.io/max-replicas": max_replicas.to_string()}},
                    "spec": {"replicas": replicas}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
            }
        };
        // `ScalingReplicaSet`, as kube-controller-manager words it.
        let scaled = |name: &str, from: i32, to: i32| {
            let way = if to > from { "up" } else { "down" };
            ctx.recorder.normal(
                d.object_ref(&()),
                "ScalingReplicaSet",
                "Scaling",
                format!("Scaled {way} replica set {name} from {from} to {to}"),
            );
        };
        if new_target != new_state.replicas {
            scale(new_state.name.clone(), new_target).await?;
            scaled(&new_state.name, new_state.replicas, new_target);
        }
        for (o, target) in old_states.iter().zip(old_targets) {
            if target != o.replicas {
                scale(o.name.clone(), target).await?;
                scaled(&o.name, o.replicas, target);
            }
        }
    }

    // Trim history: old, empty ReplicaSets beyond revisionHistoryLimit, oldest first.
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10)).unwrap_or(10);
    let empty_olds: Vec<&ReplicaSet> = olds
        .iter()
        .filter(|rs| {
            rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) == 0
                && rs.status.as_ref().is_none_or(|s| s.replicas == 0)
        })
        .collect();
    if empty_olds.len() > limit {
        for rs in &empty_olds[..empty_olds.len() - limit] {
            match sets_api
                .delete(&rs.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    // Status, from the ReplicaSets' own status.
    let all: Vec<&ReplicaSet> = owned.iter().collect();
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let replicas = sum(&|rs| rs.status.as_ref().map_or(0, |s| s.replicas));
    let ready = sum(&|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let available = sum(&|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
    });
    let new_status = new_rs.as_ref().and_then(|rs| {
        owned
            .iter()
            .find(|o| o.name_any() == rs.name_any())
            .or(Some(rs))
    });
    let updated = new_status
        .and_then(|rs| rs.status.as_ref())
        .map_or(0, |s| s.replicas);
    let new_available = new_status
        .and_then(|rs| rs.status.as_ref())
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let now = Time(jiff::Timestamp::now());
    let previous = d
        .status
        .clone()
        .unwrap_or_default()
        .conditions
        .unwrap_or_default();
    let prev = |t: &str| previous.iter().find(|c| c.type_ == t);
    let min_available = desired - max_unavailable;
    let available_cond = condition(
        "Available",
        available >= min_available,
        if available >= min_available {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        },
        if available >= min_available {
            "Deployment has minimum availability.".into()
        } else {
            "Deployment does not have minimum availability.".into()
        },
        prev("Available"),
        &now,
    );
    let new_name = new_rs
        .as_ref()
        .map(ResourceExt::name_any)
        .unwrap_or_default();
    let complete = updated == desired && replicas == desired && new_available == desired;
    let deadline = Duration::from_secs(
        u64::try_from(spec.progress_deadline_seconds.unwrap_or(600)).unwrap_or(600),
    );
    let progressing = if paused {
        condition(
            "Progressing",
            true,
            "DeploymentPaused",
            "Deployment is paused".into(),
            prev("Progressing"),
            &now,
        )
    } else if complete {
        condition(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            prev("Progressing"),
            &now,
        )
    } else {
        // Progress is any change in the numbers since the last look.
        let last = d.status.as_ref();
        let moved = last.is_none_or(|s| {
            s.updated_replicas.unwrap_or(0) != updated
                || s.available_replicas.unwrap_or(0) != available
                || s.replicas.unwrap_or(0) != replicas
                || s.observed_generation != d.metadata.generation
        });
        let since = prev("Progressing")
            .and_then(|c| c.last_update_time.as_ref())
            .map(|t| t.0);
        let stalled = !moved
            && since.is_some_and(|t| {
                jiff::Timestamp::now().duration_since(t).unsigned_abs() > deadline
            })
            && prev("Progressing")
                .is_some_and(|c| c.reason.as_deref() != Some("NewReplicaSetAvailable"));
        if stalled
            || prev("Progressing")
                .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded") && !moved)
        {
            condition(
                "Progressing",
                false,
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                prev("Progressing"),
                &now,
            )
        } else if moved || prev("Progressing").is_none() {
            let mut c = condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                prev("Progressing"),
                &now,
            );
            c.last_update_time = Some(now.clone());
            c
        } else {
            prev("Progressing").cloned().expect("checked above")
        }
    };
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((replicas - available).max(desired - available).max(0)),
        conditions: Some(vec![available_cond, progressing.clone()]),
        collision_count: d.status.as_ref().and_then(|s| s.collision_count),
        terminating_replicas: None,
    };
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let new_revision = new_rs
        .as_ref()
        .map(|rs| revision(&rs.metadata))
        .unwrap_or(0);
    if new_revision > 0 && revision(&d.metadata) != new_revision {
        let patch = json!({"metadata": {"annotations": {REVISION: new_revision.to_string()}}});
        api.patch(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    let mut comparable = d.status.clone().unwrap_or_default();
    if let Some(cs) = comparable.conditions.as_mut() {
        for c in cs.iter_mut() {
            c.last_update_time = None;
        }
    }
    let mut next = status.clone();
    if let Some(cs) = next.conditions.as_mut() {
        for c in cs.iter_mut() {
            c.last_update_time = None;
        }
    }
    if comparable != next {
        api.patch_status(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    if complete || paused || progressing.reason.as_deref() == Some("ProgressDeadlineExceeded") {
        Ok(Action::await_change())
    } else {
        // Look again in time to notice a stalled rollout.
        Ok(Action::requeue(deadline.min(Duration::from_secs(10))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, replicas: i32, available: i32) -> RsState {
        RsState {
            name: name.into(),
            replicas,
            available,
        }
    }

    #[test]
    fn fenceposts_round_like_kubernetes() {
        assert_eq!(resolve_fenceposts(10, None, None), (3, 2));
        assert_eq!(
            resolve_fenceposts(4, Some(&IntOrString::Int(1)), Some(&IntOrString::Int(0))),
            (1, 0)
        );
        assert_eq!(
            resolve_fenceposts(
                3,
                Some(&IntOrString::String("0%".into())),
                Some(&IntOrString::String("0%".into()))
            ),
            (0, 1)
        );
        assert_eq!(
            resolve_fenceposts(
                3,
                Some(&IntOrString::String("50%".into())),
                Some(&IntOrString::String("50%".into()))
            ),
            (2, 1)
        );
    }

    #[test]
    fn a_rolling_update_surges_then_shrinks_the_old_set_within_max_unavailable() {
        // 3 replicas, maxSurge 1, maxUnavailable 0: the new set grows by one at a time, and the
        // old shrinks only as new pods become available.
        let (new, olds) = rolling(3, 1, 0, &rs("new", 0, 0), &[rs("old", 3, 3)]);
        assert_eq!((new, olds.clone()), (1, vec![3]), "surge one");
        let (new, olds) = rolling(3, 1, 0, &rs("new", 1, 0), &[rs("old", 3, 3)]);
        assert_eq!(
            (new, olds.clone()),
            (1, vec![3]),
            "wait for the new pod to be available"
        );
        let (new, olds) = rolling(3, 1, 0, &rs("new", 1, 1), &[rs("old", 3, 3)]);
        assert_eq!((new, olds.clone()), (1, vec![2]), "one old pod goes");
        let (new, olds) = rolling(3, 1, 0, &rs("new", 1, 1), &[rs("old", 2, 2)]);
        assert_eq!((new, olds), (2, vec![2]), "surge again");
        let (new, olds) = rolling(3, 1, 0, &rs("new", 3, 3), &[rs("old", 1, 1)]);
        assert_eq!((new, olds), (3, vec![0]), "finish");
    }

    #[test]
    fn unavailable_old_pods_are_removed_first() {
        let (new, olds) = rolling(
            4,
            0,
            1,
            &rs("new", 0, 0),
            &[rs("older", 2, 0), rs("old", 2, 2)],
        );
        assert_eq!(
            new, 0,
            "no surge allowed and the total is at the desired count"
        );
        // 4 pods, minAvailable 3: one may go, and it is an unavailable one.
        assert_eq!(
            olds,
            vec![1, 2],
            "unavailable pods go first, within maxUnavailable"
        );
    }

    #[test]
    fn template_hashes_are_stable_and_change_with_the_template() {
        let d = |image: &str| -> Deployment {
            serde_json::from_value(json!({"metadata": {"name": "web", "uid": "u1"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}}))
            .expect("deployment")
        };
        assert_eq!(template_hash(&d("a:1")), template_hash(&d("a:1")));
        assert_ne!(template_hash(&d("a:1")), template_hash(&d("a:2")));
        assert!(
            template_hash(&d("a:1"))
                .bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
        let rs = new_replica_set(&d("a:1"), "abc", 4);
        assert_eq!(rs.metadata.name.as_deref(), Some("web-abc"));
        let owner = &rs.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Deployment", "u1", Some(true))
        );
        assert_eq!(rs.labels().get(HASH_LABEL).map(String::as_str), Some("abc"));
        assert_eq!(revision(&rs.metadata), 4);
        assert!(same_template(&rs, &d("a:1")) && !same_template(&rs, &d("a:2")));
        // What `kubectl rollout undo` sends back has Go's empty `resources: {}`.
        let mut undone = d("a:1");
        if let Some(c) = undone
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .map(|s| &mut s.containers[0])
        {
            c.resources = Some(Default::default());
        }
        assert!(same_template(&rs, &undone));
        let sel = rs
            .spec
            .expect("spec")
            .selector
            .match_labels
            .expect("labels");
        assert_eq!(sel.get(HASH_LABEL).map(String::as_str), Some("abc"));
    }
}
