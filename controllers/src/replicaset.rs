//! The ReplicaSet controller (`replica_set.go`): keep `spec.replicas` pods matching the
//! selector. Orphans that match are adopted, owned pods that stopped matching are released,
//! surplus pods go in Kubernetes' order (unscheduled, pending, not ready, restarting, newest
//! first), and expectations keep a lagging cache from causing duplicate creates.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::workqueue::Action;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::json;
use wasmkube_api::selector::LabelSelector;

/// Pods created or deleted per reconcile at most (Kubernetes' `burstReplicas`).
const BURST: usize = 500;

/// What the reconciler needs.
pub type Ctx = crate::PodOwnerCtx;

/// Reconcile errors (retried with back-off).
pub type Error = crate::ReconcileError;

/// The controller reference a ReplicaSet puts on its pods.
pub fn controller_ref(rs: &ReplicaSet) -> OwnerReference {
    crate::controller_ref(rs)
}

fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

fn ready_since(p: &Pod) -> Option<jiff::Timestamp> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        c.last_transition_time
            .as_ref()
            .map_or(jiff::Timestamp::UNIX_EPOCH, |t| t.0),
    )
}

/// Whether a ready pod has been ready for `min_ready` by `now`.
pub fn is_available(p: &Pod, min_ready: Duration, now: jiff::Timestamp) -> bool {
    ready_since(p).is_some_and(|since| now.duration_since(since).unsigned_abs() >= min_ready)
}

/// Kubernetes' `ActivePods` order: the first pods are the first to delete.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| !n.is_empty())
    };
    let phase_rank = |p: &Pod| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let restarts = |p: &Pod| -> i32 {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |cs| {
                cs.iter().map(|c| c.restart_count).max().unwrap_or(0)
            })
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    assigned(a)
        .cmp(&assigned(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(is_ready(a).cmp(&is_ready(b)))
        // Ready for less time first.
        .then(ready_since(b).cmp(&ready_since(a)))
        .then(restarts(b).cmp(&restarts(a)))
        .then(created(b).cmp(&created(a)))
}

/// A new pod from the ReplicaSet's template.
pub fn pod_from_template(rs: &ReplicaSet, owner: &OwnerReference) -> Pod {
    let template = rs.spec.as_ref().and_then(|s| s.template.clone());
    crate::pod_from_template(rs, template.unwrap_or_default(), owner.clone())
}

/// The status a ReplicaSet should report for its active, matching, owned pods.
pub fn status_for(rs: &ReplicaSet, pods: &[Arc<Pod>], now: jiff::Timestamp) -> ReplicaSetStatus {
    let spec = rs.spec.clone().unwrap_or_default();
    let min_ready =
        Duration::from_secs(u64::try_from(spec.min_ready_seconds.unwrap_or(0)).unwrap_or(0));
    let template_labels = spec
        .template
        .and_then(|t| t.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(pods.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            let labels = p.labels();
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })),
        ready_replicas: Some(count(&is_ready)),
        available_replicas: Some(count(&|p| is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    }
}

/// Makes the pods match one ReplicaSet (or a ReplicationController seen as one), owning them
/// with `owner`; returns what to do next and the status to report, when computed.
///
/// # Errors
/// API failures (retried by the controller with back-off).
pub(crate) async fn sync(
    rs: &ReplicaSet,
    owner: &OwnerReference,
    ctx: &Ctx,
) -> Result<(Action, Option<ReplicaSetStatus>), Error> {
    let ns = rs.namespace().unwrap_or_else(|| "default".into());
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    if rs.metadata.deletion_timestamp.is_some() {
        ctx.expectations.forget(&uid);
        return Ok((Action::await_change(), None));
    }
    let in_ns: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(&ns))
        .collect();
    let present = |name: &str| {
        in_ns.iter().any(|p| {
            p.metadata.name.as_deref() == Some(name) && p.metadata.deletion_timestamp.is_none()
        })
    };
    if !ctx.expectations.satisfied(&uid, present) {
        // The cache has not caught up with our last creates/deletes; their watch events will
        // trigger us again.
        return Ok((Action::requeue(Duration::from_secs(2)), None));
    }
    let spec = rs.spec.clone().unwrap_or_default();
    let selector = LabelSelector::from_structured(&spec.selector)
        .map_err(|e| Error::Selector(e.to_string()))?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    // Adopt matching orphans; release owned pods that no longer match.
    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for p in &in_ns {
        let matches = !selector.is_empty() && selector.matches(p.labels());
        match controller_uid(&p.metadata) {
            Some(owner) if owner == uid => {
                if matches {
                    owned.push(Arc::clone(p));
                } else {
                    let refs: Vec<_> = p
                        .owner_references()
                        .iter()
                        .filter(|r| r.uid != uid)
                        .cloned()
                        .collect();
                    let patch =
                        json!({"metadata": {"ownerReferences": refs, "uid": p.metadata.uid}});
                    pods.patch(
                        &p.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                }
            }
            None if matches && is_active(p) => {
                let mut refs = p.owner_references().to_vec();
                refs.push(owner.clone());
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": p.metadata.uid}});
                match pods
                    .patch(
                        &p.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(adopted) => owned.push(Arc::new(adopted)),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            _ => {}
        }
    }
    let mut active: Vec<Arc<Pod>> = owned.into_iter().filter(|p| is_active(p)).collect();
    let want = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);

    let control = crate::podcontrol::PodControl {
        pods: &pods,
        recorder: &ctx.recorder,
        owner: crate::owner_object_ref(owner, &ns),
    };
    if active.len() < want {
        let n = (want - active.len()).min(BURST);
        let template = pod_from_template(rs, owner);
        let (created, failed) = control.create_all(&vec![template; n]).await;
        ctx.expectations.expect_creations(&uid, created);
        if let Some(e) = failed {
            return Err(e.into());
        }
    } else if active.len() > want {
        active.sort_by(|a, b| deletion_order(a, b));
        let victims: Vec<Arc<Pod>> = active.drain(..(active.len() - want).min(BURST)).collect();
        ctx.expectations
            .expect_deletions(&uid, victims.iter().map(|p| p.name_any()));
        for v in &victims {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: v.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            if let Err(e) = control.delete(v, &params).await {
                tracing::warn!(pod = %v.name_any(), error = %e, "deleting a surplus pod failed");
                ctx.expectations.deletion_failed(&uid, &v.name_any());
                if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
                    return Err(e.into());
                }
            }
        }
    }

    let now = jiff::Timestamp::now();
    let status = status_for(rs, &active, now);
    // Pods that are ready but not yet available need another look when minReadySeconds pass.
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let action = if min_ready > 0 && status.ready_replicas != status.available_replicas {
        Action::requeue(Duration::from_secs(
            u64::try_from(min_ready).unwrap_or(1).max(1),
        ))
    } else {
        Action::await_change()
    };
    Ok((action, Some(status)))
}

/// Makes the world match one ReplicaSet.
///
/// # Errors
/// API failures (retried by the controller with back-off).
pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    tracing::debug!(target: "podtrace", kind = "ReplicaSet", object = %format_args!("{}/{}", rs.namespace().unwrap_or_default(), rs.name_any()), stage = "reconciling");
    let (action, status) = sync(&rs, &controller_ref(&rs), &ctx).await?;
    if let Some(status) = status {
        crate::write_status(&ctx.client, &*rs, rs.status.as_ref(), &status).await?;
    }
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, v: serde_json::Value) -> Pod {
        let mut base = json!({"metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"containers": []}});
        if let (Some(b), Some(o)) = (base.as_object_mut(), v.as_object()) {
            for (k, val) in o {
                if k == "metadata" {
                    for (mk, mv) in val.as_object().expect("metadata object") {
                        b["metadata"][mk] = mv.clone();
                    }
                } else {
                    b.insert(k.clone(), val.clone());
                }
            }
        }
        serde_json::from_value(base).expect("pod")
    }

    #[test]
    fn surplus_pods_go_unscheduled_then_pending_then_not_ready_then_newest_first() {
        let ready = json!({"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"});
        let running_ready = pod(
            "old-ready",
            json!({"spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running", "conditions": [ready.clone()]}}),
        );
        let newer_ready = pod(
            "new-ready",
            json!({"metadata": {"creationTimestamp": "2026-01-02T00:00:00Z"}, "spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running", "conditions": [ready]}}),
        );
        let not_ready = pod(
            "not-ready",
            json!({"spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running"}}),
        );
        let pending = pod(
            "pending",
            json!({"spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Pending"}}),
        );
        let unscheduled = pod("unscheduled", json!({}));
        let mut all = [running_ready, newer_ready, not_ready, pending, unscheduled];
        all.sort_by(deletion_order);
        let names: Vec<String> = all.iter().map(|p| p.name_any()).collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending",
                "not-ready",
                "new-ready",
                "old-ready"
            ]
        );
    }

    #[test]
    fn pods_come_from_the_template_with_a_controller_reference() {
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "ns", "uid": "u-1"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}
        }))
        .expect("rs");
        let p = pod_from_template(&rs, &controller_ref(&rs));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("ns"));
        let owner = &p.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("ReplicaSet", "u-1", Some(true))
        );
        assert_eq!(
            p.spec.expect("spec").containers[0].image.as_deref(),
            Some("x")
        );
    }

    #[test]
    fn status_counts_ready_and_available_pods() {
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "r", "generation": 3},
            "spec": {"replicas": 2, "minReadySeconds": 60, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}}}
        }))
        .expect("rs");
        let now: jiff::Timestamp = "2026-01-01T00:10:00Z".parse().expect("ts");
        let long_ready = pod(
            "a",
            json!({"metadata": {"labels": {"app": "web"}}, "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
        );
        let just_ready = pod(
            "b",
            json!({"metadata": {"labels": {"app": "web"}}, "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:09:50Z"}]}}),
        );
        let s = status_for(&rs, &[Arc::new(long_ready), Arc::new(just_ready)], now);
        assert_eq!(
            (
                s.replicas,
                s.ready_replicas,
                s.available_replicas,
                s.fully_labeled_replicas
            ),
            (2, Some(2), Some(1), Some(2))
        );
        assert_eq!(s.observed_generation, Some(3));
    }
}
