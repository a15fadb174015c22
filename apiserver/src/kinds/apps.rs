//! apps/v1: Deployment, ReplicaSet, DaemonSet, StatefulSet, ControllerRevision.

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy,
    ReplicaSet, RollingUpdateDaemonSet, RollingUpdateDeployment, RollingUpdateStatefulSetStrategy,
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::template::{
    WorkloadColumns, default_template, replica_cells, replica_columns, validate_template,
};
use crate::error::FieldError;
use crate::registry::{Registry, Strategy};
use crate::table::Column;
use crate::validation;

const DEPLOYMENT_COLUMNS: WorkloadColumns = WorkloadColumns::with_selector(
    "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
);
const REPLICASET_COLUMNS: WorkloadColumns = WorkloadColumns::with_selector(
    "Selector is a label query over pods that should match the replica count.",
);
const DAEMONSET_COLUMNS: WorkloadColumns =
    WorkloadColumns::with_selector("A label query over pods that are managed by the daemon set.");

pub(super) fn register(r: &Registry) {
    r.register_with(DeploymentStrategy_, |i| i.scalable(&["deploy"]));
    r.register_with(ReplicaSetStrategy, |i| i.scalable(&["rs"]));
    r.register_with(DaemonSetStrategy, |i| {
        i.short_names(&["ds"]).in_all().with_status()
    });
    r.register_with(StatefulSetStrategy, |i| i.scalable(&["sts"]));
    r.register(ControllerRevisionStrategy);
}

/// A StatefulSet's or DaemonSet's pod-template history (`ValidateControllerRevision`): `data`
/// is required and never changes; `revision` is not negative.
struct ControllerRevisionStrategy;

impl Strategy for ControllerRevisionStrategy {
    type K = ControllerRevision;

    fn validate(&self, r: &ControllerRevision) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if r.data.is_none() {
            errs.push(FieldError::required("data", ""));
        }
        if r.revision < 0 {
            errs.push(FieldError::invalid(
                "revision",
                r.revision,
                "must be greater than or equal to 0",
            ));
        }
        errs
    }

    fn validate_update(
        &self,
        new: &ControllerRevision,
        old: &ControllerRevision,
    ) -> Vec<FieldError> {
        let mut errs = self.validate(new);
        validation::immutable("data", &new.data, &old.data, &mut errs);
        errs
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Controller", "Controller of the object"),
            Column::int("Revision", "Revision of the ControllerRevision"),
            Column::age(),
        ]
    }

    fn row(&self, r: &ControllerRevision) -> Vec<Value> {
        // kubectl's `<kind>.<group>/<name>` of the controller, `<none>` without one.
        let controller = r
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map_or_else(
                || "<none>".to_owned(),
                |o| {
                    let group = o.api_version.split_once('/').map_or("", |(g, _)| g);
                    let kind = o.kind.to_ascii_lowercase();
                    if group.is_empty() {
                        format!("{kind}/{}", o.name)
                    } else {
                        format!("{kind}.{group}/{}", o.name)
                    }
                },
            );
        vec![
            json!(controller),
            json!(r.revision),
            crate::table::age(r.metadata.creation_timestamp.as_ref()),
        ]
    }
}

/// Shared checks of workload kinds: a selector that is non-empty and matches the template,
/// non-negative replicas, and an immutable selector.
fn validate_workload(
    selector: Option<&LabelSelector>,
    template: &PodTemplateSpec,
    replicas: Option<i32>,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match selector {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(s)
            if s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|m| m.is_empty()) =>
        {
            errs.push(FieldError::invalid(
                "spec.selector",
                "{}",
                "empty selector is invalid for deployment",
            ))
        }
        Some(_) => {}
    }
    errs.extend(validate_template("spec.template", template, selector));
    if let Some(r) = replicas
        && r < 0
    {
        errs.push(FieldError::invalid(
            "spec.replicas",
            r,
            "must be greater than or equal to 0",
        ));
    }
    errs
}

fn selector_immutable(new: Option<&LabelSelector>, old: Option<&LabelSelector>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validation::immutable("spec.selector", &new, &old, &mut errs);
    errs
}

#[allow(
    non_camel_case_types,
    reason = "DeploymentStrategy is the k8s-openapi type name"
)]
struct DeploymentStrategy_;

impl Strategy for DeploymentStrategy_ {
    type K = Deployment;

    fn default(&self, d: &mut Deployment) {
        let spec = d.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        let strategy = spec
            .strategy
            .get_or_insert_with(DeploymentStrategy::default);
        strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if strategy.type_.as_deref() == Some("RollingUpdate") {
            let ru = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDeployment::default);
            ru.max_surge
                .get_or_insert(IntOrString::String("25%".into()));
            ru.max_unavailable
                .get_or_insert(IntOrString::String("25%".into()));
        }
        default_template(&mut spec.template);
    }

    fn validate(&self, d: &Deployment) -> Vec<FieldError> {
        let spec = d.spec.clone().unwrap_or_default();
        let mut errs = validate_workload(Some(&spec.selector), &spec.template, spec.replicas);
        errs.extend(FieldError::not_one_of(
            "spec.strategy.type",
            spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
            &["Recreate", "RollingUpdate"],
        ));
        if spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate")
            && spec
                .strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
                .is_some()
        {
            errs.push(FieldError::forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            ));
        }
        errs
    }

    fn validate_update(&self, new: &Deployment, old: &Deployment) -> Vec<FieldError> {
        selector_immutable(
            new.spec.as_ref().map(|s| &s.selector),
            old.spec.as_ref().map(|s| &s.selector),
        )
    }

    fn columns(&self) -> Vec<Column> {
        DEPLOYMENT_COLUMNS.columns(vec![
            Column::new("Ready", "Number of the pod with ready state"),
            Column::int("Up-to-date", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            Column::int("Available", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
        ])
    }

    fn row(&self, d: &Deployment) -> Vec<Value> {
        let spec = d.spec.clone().unwrap_or_default();
        let st = d.status.clone().unwrap_or_default();
        DEPLOYMENT_COLUMNS.row(
            vec![
                json!(format!(
                    "{}/{}",
                    st.ready_replicas.unwrap_or(0),
                    spec.replicas.unwrap_or(1)
                )),
                json!(st.updated_replicas.unwrap_or(0)),
                json!(st.available_replicas.unwrap_or(0)),
            ],
            &d.metadata,
            spec.template.spec.as_ref(),
            Some(&spec.selector),
        )
    }
}

struct ReplicaSetStrategy;

impl Strategy for ReplicaSetStrategy {
    type K = ReplicaSet;

    fn default(&self, rs: &mut ReplicaSet) {
        let spec = rs.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        if let Some(t) = spec.template.as_mut() {
            default_template(t);
        }
    }

    fn validate(&self, rs: &ReplicaSet) -> Vec<FieldError> {
        let spec = rs.spec.clone().unwrap_or_default();
        let template = spec.template.clone().unwrap_or_default();
        validate_workload(Some(&spec.selector), &template, spec.replicas)
    }

    fn validate_update(&self, new: &ReplicaSet, old: &ReplicaSet) -> Vec<FieldError> {
        selector_immutable(
            new.spec.as_ref().map(|s| &s.selector),
            old.spec.as_ref().map(|s| &s.selector),
        )
    }

    fn field_selectors(&self) -> &'static [&'static str] {
        &["status.replicas"]
    }

    fn columns(&self) -> Vec<Column> {
        REPLICASET_COLUMNS.columns(replica_columns(
            "The number of ready replicas for this replica set.",
        ))
    }

    fn row(&self, rs: &ReplicaSet) -> Vec<Value> {
        let spec = rs.spec.clone().unwrap_or_default();
        let st = rs.status.clone().unwrap_or_default();
        REPLICASET_COLUMNS.row(
            replica_cells(spec.replicas, st.replicas, st.ready_replicas),
            &rs.metadata,
            spec.template.as_ref().and_then(|t| t.spec.as_ref()),
            Some(&spec.selector),
        )
    }
}

struct DaemonSetStrategy;

impl Strategy for DaemonSetStrategy {
    type K = DaemonSet;

    fn default(&self, ds: &mut DaemonSet) {
        let spec = ds.spec.get_or_insert_with(Default::default);
        spec.revision_history_limit.get_or_insert(10);
        let us = spec
            .update_strategy
            .get_or_insert_with(DaemonSetUpdateStrategy::default);
        us.type_.get_or_insert_with(|| "RollingUpdate".into());
        if us.type_.as_deref() == Some("RollingUpdate") {
            let ru = us
                .rolling_update
                .get_or_insert_with(RollingUpdateDaemonSet::default);
            ru.max_unavailable.get_or_insert(IntOrString::Int(1));
            ru.max_surge.get_or_insert(IntOrString::Int(0));
        }
        default_template(&mut spec.template);
    }

    fn validate(&self, ds: &DaemonSet) -> Vec<FieldError> {
        let spec = ds.spec.clone().unwrap_or_default();
        let mut errs = validate_workload(Some(&spec.selector), &spec.template, None);
        if let Some(p) = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            && p != "Always"
        {
            errs.push(FieldError::not_supported(
                "spec.template.spec.restartPolicy",
                p,
                &["Always"],
            ));
        }
        errs
    }

    fn validate_update(&self, new: &DaemonSet, old: &DaemonSet) -> Vec<FieldError> {
        selector_immutable(
            new.spec.as_ref().map(|s| &s.selector),
            old.spec.as_ref().map(|s| &s.selector),
        )
    }

    fn columns(&self) -> Vec<Column> {
        DAEMONSET_COLUMNS.columns(vec![
            Column::int(
                "Desired",
                "The total number of nodes that should be running the daemon pod.",
            ),
            Column::int(
                "Current",
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
            ),
            Column::int(
                "Ready",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            Column::int(
                "Up-to-date",
                "The total number of nodes that are running updated daemon pod",
            ),
            Column::int(
                "Available",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
            ),
            Column::new(
                "Node Selector",
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
        ])
    }

    fn row(&self, ds: &DaemonSet) -> Vec<Value> {
        let spec = ds.spec.clone().unwrap_or_default();
        let st = ds.status.clone().unwrap_or_default();
        let node_selector: Vec<String> = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.node_selector.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        DAEMONSET_COLUMNS.row(
            vec![
                json!(st.desired_number_scheduled),
                json!(st.current_number_scheduled),
                json!(st.number_ready),
                json!(st.updated_number_scheduled.unwrap_or(0)),
                json!(st.number_available.unwrap_or(0)),
                json!(if node_selector.is_empty() {
                    "<none>".to_string()
                } else {
                    node_selector.join(",")
                }),
            ],
            &ds.metadata,
            spec.template.spec.as_ref(),
            Some(&spec.selector),
        )
    }
}

struct StatefulSetStrategy;

impl Strategy for StatefulSetStrategy {
    type K = StatefulSet;

    fn default(&self, ss: &mut StatefulSet) {
        let spec = ss.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.pod_management_policy
            .get_or_insert_with(|| "OrderedReady".into());
        let us = spec
            .update_strategy
            .get_or_insert_with(StatefulSetUpdateStrategy::default);
        us.type_.get_or_insert_with(|| "RollingUpdate".into());
        if us.type_.as_deref() == Some("RollingUpdate") {
            us.rolling_update
                .get_or_insert_with(RollingUpdateStatefulSetStrategy::default)
                .partition
                .get_or_insert(0);
        }
        let retention = spec
            .persistent_volume_claim_retention_policy
            .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
        retention
            .when_deleted
            .get_or_insert_with(|| "Retain".into());
        retention.when_scaled.get_or_insert_with(|| "Retain".into());
        default_template(&mut spec.template);
    }

    fn validate(&self, ss: &StatefulSet) -> Vec<FieldError> {
        let spec = ss.spec.clone().unwrap_or_default();
        // Containers may mount the claims of volumeClaimTemplates by name.
        let mut template = spec.template.clone();
        if let Some(pod) = template.spec.as_mut() {
            for claim in spec.volume_claim_templates.iter().flatten() {
                let name = claim.metadata.name.clone().unwrap_or_default();
                let volumes = pod.volumes.get_or_insert_with(Vec::new);
                if !volumes.iter().any(|v| v.name == name) {
                    volumes.push(k8s_openapi::api::core::v1::Volume {
                        name,
                        persistent_volume_claim: Some(Default::default()),
                        ..Default::default()
                    });
                }
            }
        }
        let mut errs = validate_workload(Some(&spec.selector), &template, spec.replicas);
        errs.extend(FieldError::not_one_of(
            "spec.podManagementPolicy",
            spec.pod_management_policy.as_deref(),
            &["OrderedReady", "Parallel"],
        ));
        errs
    }

    fn validate_update(&self, new: &StatefulSet, old: &StatefulSet) -> Vec<FieldError> {
        let (Some(n), Some(o)) = (&new.spec, &old.spec) else {
            return Vec::new();
        };
        // `ValidateStatefulSetUpdate`: only replicas, template, updateStrategy, ordinals,
        // minReadySeconds, revisionHistoryLimit and the retention policy may change.
        let mut n = n.clone();
        n.replicas = o.replicas;
        n.template = o.template.clone();
        n.update_strategy = o.update_strategy.clone();
        n.min_ready_seconds = o.min_ready_seconds;
        n.revision_history_limit = o.revision_history_limit;
        n.persistent_volume_claim_retention_policy =
            o.persistent_volume_claim_retention_policy.clone();
        n.ordinals = o.ordinals.clone();
        if &n != o {
            return vec![FieldError::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            )];
        }
        Vec::new()
    }

    fn columns(&self) -> Vec<Column> {
        WorkloadColumns::NO_SELECTOR.columns(vec![Column::new(
            "Ready",
            "Number of the pod with ready state",
        )])
    }

    fn row(&self, ss: &StatefulSet) -> Vec<Value> {
        let spec = ss.spec.clone().unwrap_or_default();
        let st = ss.status.clone().unwrap_or_default();
        WorkloadColumns::NO_SELECTOR.row(
            vec![json!(format!(
                "{}/{}",
                st.ready_replicas.unwrap_or(0),
                spec.replicas.unwrap_or(1)
            ))],
            &ss.metadata,
            spec.template.spec.as_ref(),
            None,
        )
    }
}
