//! The StatefulSet controller (`stateful_set_control.go`): pods with stable ordinal names
//! (`<set>-0`, `<set>-1`, ...), started in order — each only once all lower ordinals are
//! Running and Ready (`OrderedReady`; `Parallel` skips the wait) — and removed from the
//! highest ordinal down. Each pod gets `hostname`/`subdomain` for its DNS name and, per
//! `volumeClaimTemplates` entry, a `persistentVolumeClaim` volume named `<claim>-<pod>`,
//! which the wasmlet realises as a directory on the node that outlives the pod. Template
//! changes roll from the highest ordinal down to `partition`, one pod at a time.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use crate::workqueue::Action;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};

/// The label carrying a pod's template revision.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What the reconciler needs.
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// Every pod.
    pub pods: Store<Pod>,
    /// Its events (`SuccessfulCreate`, `SuccessfulDelete`, `FailedCreate`).
    pub recorder: wasmkube_client::events::Recorder,
}

/// Reconcile errors (retried with back-off).
pub type Error = crate::ReconcileError;

/// The template revision.
pub fn revision(set: &StatefulSet) -> String {
    let mut h = DefaultHasher::new();
    serde_json::to_string(&set.spec.as_ref().map(|s| &s.template))
        .unwrap_or_default()
        .hash(&mut h);
    format!("{}-{:x}", set.name_any(), h.finish() & 0xff_ffff_ffff)
}

/// The pod with ordinal `i`.
pub fn pod_for(set: &StatefulSet, i: i32, rev: &str) -> Pod {
    let spec = set.spec.clone().unwrap_or_default();
    let name = format!("{}-{i}", set.name_any());
    let meta = spec.template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert("statefulset.kubernetes.io/pod-name".into(), name.clone());
    labels.insert("apps.kubernetes.io/pod-index".into(), i.to_string());
    labels.insert(REVISION_LABEL.into(), rev.into());
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    pod_spec.hostname = Some(name.clone());
    if !spec.service_name.clone().unwrap_or_default().is_empty() {
        pod_spec.subdomain = spec.service_name.clone();
    }
    for claim in spec.volume_claim_templates.iter().flatten() {
        let claim_name = claim.metadata.name.clone().unwrap_or_default();
        let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
        volumes.retain(|v| v.name != claim_name);
        volumes.push(Volume {
            name: claim_name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: format!("{claim_name}-{name}"),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![crate::controller_ref(set)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

fn running_and_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One step toward the desired pods (pure): which ordinal to create, or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the pod with this ordinal.
    Create(i32),
    /// Delete the pod with this ordinal.
    Delete(i32),
    /// Wait for pods to become ready or finish terminating.
    Wait,
    /// Everything matches.
    Done,
}

/// What to do next, given each ordinal's state (`None`: no pod; `Some((ready, terminating,
/// failed, current_revision))`).
pub fn next_step(
    replicas: i32,
    parallel: bool,
    partition: i32,
    pods: &BTreeMap<i32, (bool, bool, bool, bool)>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    // Failed pods are replaced.
    for (i, (_, terminating, failed, _)) in pods {
        if *failed && !*terminating {
            steps.push(Step::Delete(*i));
        }
    }
    if !steps.is_empty() {
        return steps;
    }
    // Scale up in order.
    for i in 0..replicas {
        match pods.get(&i) {
            None => {
                steps.push(Step::Create(i));
                if !parallel {
                    return steps;
                }
            }
            Some((ready, _, _, _)) if !ready && !parallel => return vec![Step::Wait],
            _ => {}
        }
    }
    if !steps.is_empty() {
        return steps;
    }
    // Scale down from the highest ordinal, one at a time unless parallel.
    let surplus: Vec<i32> = pods
        .keys()
        .rev()
        .copied()
        .filter(|i| *i >= replicas)
        .collect();
    for i in &surplus {
        let (_, terminating, _, _) = pods[i];
        if terminating {
            if !parallel {
                return vec![Step::Wait];
            }
            continue;
        }
        steps.push(Step::Delete(*i));
        if !parallel {
            return steps;
        }
    }
    if !steps.is_empty() {
        return steps;
    }
    // Roll out a new template from the highest ordinal down to the partition, one at a time,
    // with everything else ready.
    let all_ready = (0..replicas).all(|i| pods.get(&i).is_some_and(|p| p.0));
    for i in (partition.max(0)..replicas).rev() {
        if let Some((_, terminating, _, current)) = pods.get(&i)
            && !current
        {
            if *terminating || !all_ready {
                return vec![Step::Wait];
            }
            return vec![Step::Delete(i)];
        }
    }
    vec![Step::Done]
}

/// Makes the world match one StatefulSet.
///
/// # Errors
/// API failures (retried with back-off).
pub async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if ctx.pods.wait_until_ready().await.is_err() {
        return Ok(Action::await_change());
    }
    let ns = set.namespace().unwrap_or_else(|| "default".into());
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let rev = revision(&set);
    let prefix = format!("{}-", set.name_any());
    let owned: Vec<Arc<Pod>> = crate::controlled_by(&ctx.pods, &ns, &uid).collect();
    let mut by_ordinal: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
    for p in &owned {
        if let Some(i) = p
            .name_any()
            .strip_prefix(&prefix)
            .and_then(|s| s.parse::<i32>().ok())
        {
            by_ordinal.insert(i, Arc::clone(p));
        }
    }
    let states: BTreeMap<i32, (bool, bool, bool, bool)> = by_ordinal
        .iter()
        .map(|(i, p)| {
            let failed = matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Failed" | "Succeeded")
            );
            (
                *i,
                (
                    running_and_ready(p),
                    p.metadata.deletion_timestamp.is_some(),
                    failed,
                    p.labels().get(REVISION_LABEL) == Some(&rev),
                ),
            )
        })
        .collect();
    if crate::history::behind(
        &set.metadata,
        set.status.as_ref().and_then(|s| s.observed_generation),
    ) {
        let live = owned
            .iter()
            .filter_map(|p| p.labels().get(REVISION_LABEL).cloned())
            .chain(set.status.as_ref().and_then(|s| s.current_revision.clone()))
            .collect();
        crate::history::record(
            &ctx.client,
            &*set,
            crate::history::Current {
                name: &rev,
                hash: rev.strip_prefix(&prefix).unwrap_or(&rev),
                template: &spec.template,
                limit: spec.revision_history_limit,
                live,
            },
        )
        .await?;
    }
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let on_delete = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.type_.as_deref())
        == Some("OnDelete");
    let partition = if on_delete {
        i32::MAX
    } else {
        spec.update_strategy
            .as_ref()
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0)
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let set_ref = || kube::Resource::object_ref(&*set, &());
    for step in next_step(replicas, parallel, partition, &states) {
        match step {
            Step::Create(i) => {
                let pod = pod_for(&set, i, &rev);
                let name = pod.name_any();
                // kube-controller-manager's wording (`StatefulPodControl`).
                let what = format!("create Pod {name} in StatefulSet {}", set.name_any());
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(_) => ctx.recorder.normal(
                        set_ref(),
                        "SuccessfulCreate",
                        "Create",
                        format!("{what} successful"),
                    ),
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        ctx.recorder.warning(
                            set_ref(),
                            "FailedCreate",
                            "Create",
                            format!("{what} failed error: {e}"),
                        );
                        return Err(e.into());
                    }
                }
            }
            Step::Delete(i) => {
                let name = format!("{prefix}{i}");
                let what = format!("delete Pod {name} in StatefulSet {}", set.name_any());
                match pods.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => ctx.recorder.normal(
                        set_ref(),
                        "SuccessfulDelete",
                        "Delete",
                        format!("{what} successful"),
                    ),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => ctx.recorder.warning(
                        set_ref(),
                        "FailedDelete",
                        "Delete",
                        format!("{what} failed error: {e}"),
                    ),
                }
            }
            Step::Wait | Step::Done => {}
        }
    }
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(
            by_ordinal
                .values()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && f(p))
                .count(),
        )
        .unwrap_or(0)
    };
    let status = StatefulSetStatus {
        replicas: count(&|_| true),
        ready_replicas: Some(count(&running_and_ready)),
        available_replicas: Some(count(&running_and_ready)),
        current_replicas: Some(count(&|p| p.labels().get(REVISION_LABEL) == Some(&rev))),
        updated_replicas: Some(count(&|p| p.labels().get(REVISION_LABEL) == Some(&rev))),
        current_revision: Some(rev.clone()),
        update_revision: Some(rev),
        observed_generation: set.metadata.generation,
        collision_count: Some(0),
        conditions: None,
    };
    crate::write_status(&ctx.client, &*set, set.status.as_ref(), &status).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pods(states: &[(i32, bool)]) -> BTreeMap<i32, (bool, bool, bool, bool)> {
        states
            .iter()
            .map(|(i, ready)| (*i, (*ready, false, false, true)))
            .collect()
    }

    #[test]
    fn ordinals_start_in_order_each_after_the_previous_is_ready() {
        assert_eq!(next_step(3, false, 0, &pods(&[])), vec![Step::Create(0)]);
        assert_eq!(
            next_step(3, false, 0, &pods(&[(0, false)])),
            vec![Step::Wait]
        );
        assert_eq!(
            next_step(3, false, 0, &pods(&[(0, true)])),
            vec![Step::Create(1)]
        );
        assert_eq!(
            next_step(3, false, 0, &pods(&[(0, true), (1, true), (2, true)])),
            vec![Step::Done]
        );
        assert_eq!(
            next_step(3, true, 0, &pods(&[])),
            vec![Step::Create(0), Step::Create(1), Step::Create(2)],
            "Parallel"
        );
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first_one_at_a_time() {
        assert_eq!(
            next_step(1, false, 0, &pods(&[(0, true), (1, true), (2, true)])),
            vec![Step::Delete(2)]
        );
        let mut terminating = pods(&[(0, true), (1, true), (2, true)]);
        terminating.insert(2, (true, true, false, true));
        assert_eq!(next_step(1, false, 0, &terminating), vec![Step::Wait]);
    }

    #[test]
    fn a_new_template_rolls_from_the_top_down_to_the_partition() {
        let mut old = pods(&[(0, true), (1, true), (2, true)]);
        for v in old.values_mut() {
            v.3 = false;
        }
        assert_eq!(next_step(3, false, 0, &old), vec![Step::Delete(2)]);
        assert_eq!(next_step(3, false, 2, &old), vec![Step::Delete(2)]);
        old.get_mut(&2).expect("pod 2").3 = true;
        assert_eq!(
            next_step(3, false, 2, &old),
            vec![Step::Done],
            "ordinals below the partition keep the old template"
        );
    }

    #[test]
    fn pods_get_stable_names_dns_identity_and_claims() {
        let set: StatefulSet = serde_json::from_value(json!({"metadata": {"name": "db", "namespace": "ns", "uid": "u"},
            "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                     "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}}))
        .expect("set");
        let p = pod_for(&set, 2, "rev");
        assert_eq!(p.metadata.name.as_deref(), Some("db-2"));
        let spec = p.spec.expect("spec");
        assert_eq!(
            (spec.hostname.as_deref(), spec.subdomain.as_deref()),
            (Some("db-2"), Some("db"))
        );
        let claim = spec
            .volumes
            .expect("volumes")
            .into_iter()
            .find(|v| v.name == "data")
            .and_then(|v| v.persistent_volume_claim)
            .expect("claim");
        assert_eq!(claim.claim_name, "data-db-2");
    }
}
