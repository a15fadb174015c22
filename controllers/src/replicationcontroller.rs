//! The ReplicationController controller: ReplicaSet's predecessor, kept by the same sync
//! ([`crate::replicaset`]) — the controller's plain-map selector and status are converted to
//! and from the ReplicaSet shapes, and its pods carry a `ReplicationController` owner reference.

use std::sync::Arc;

use crate::workqueue::Action;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec, ReplicaSetStatus};
use k8s_openapi::api::core::v1::ReplicationController;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::replicaset::{Ctx, Error, sync};

/// The ReplicationController seen as a ReplicaSet.
pub fn as_replica_set(rc: &ReplicationController) -> ReplicaSet {
    let spec = rc.spec.clone().unwrap_or_default();
    let status = rc.status.clone();
    ReplicaSet {
        metadata: rc.metadata.clone(),
        spec: Some(ReplicaSetSpec {
            replicas: spec.replicas,
            min_ready_seconds: spec.min_ready_seconds,
            selector: LabelSelector {
                match_labels: spec.selector,
                match_expressions: None,
            },
            template: spec.template,
        }),
        status: status.map(|s| ReplicaSetStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            observed_generation: s.observed_generation,
            conditions: None,
            terminating_replicas: None,
        }),
    }
}

/// Makes the world match one ReplicationController.
///
/// # Errors
/// API failures (retried with back-off).
pub async fn reconcile(rc: Arc<ReplicationController>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let rs = as_replica_set(&rc);
    let owner = crate::controller_ref(&*rc);
    let (action, status) = sync(&rs, &owner, &ctx).await?;
    if let Some(status) = status {
        let mut current = rs.status.clone().unwrap_or_default();
        current.conditions = None;
        if current != status {
            let api: Api<ReplicationController> = Api::namespaced(
                ctx.client.clone(),
                &rc.namespace().unwrap_or_else(|| "default".into()),
            );
            let patch = json!({"status": {
                "replicas": status.replicas,
                "fullyLabeledReplicas": status.fully_labeled_replicas,
                "readyReplicas": status.ready_replicas,
                "availableReplicas": status.available_replicas,
                "observedGeneration": status.observed_generation,
            }});
            api.patch_status(
                &rc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        }
    }
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_controller_reads_as_a_replica_set_with_a_match_labels_selector() {
        let rc: ReplicationController = serde_json::from_value(json!({"metadata": {"name": "old", "uid": "u"},
            "spec": {"replicas": 2, "selector": {"app": "old"}, "template": {"metadata": {"labels": {"app": "old"}}}},
            "status": {"replicas": 1, "readyReplicas": 1}}))
        .expect("rc");
        let rs = as_replica_set(&rc);
        let spec = rs.spec.expect("spec");
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(
            spec.selector
                .match_labels
                .expect("labels")
                .get("app")
                .map(String::as_str),
            Some("old")
        );
        assert_eq!(rs.status.expect("status").ready_replicas, Some(1));
    }
}
