//! Pods.

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use serde_json::{Value, json};

use super::template::{default_pod_spec, validate_pod_spec};
use crate::error::FieldError;
use crate::registry::{Strategy, Subresource};
use crate::table::{Column, age};

fn qos_class(spec: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in &spec.containers {
        let req = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .unwrap_or_default();
        let lim = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        if !req.is_empty() || !lim.is_empty() {
            any = true;
        }
        for res in ["cpu", "memory"] {
            match (lim.get(res), req.get(res)) {
                (Some(l), Some(r)) if l == r => {}
                (Some(_), None) => {}
                _ => guaranteed = false,
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// The `Status` column of `kubectl get pods` (`printPod`).
pub(crate) fn pod_status_reason(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let mut reason = status
        .reason
        .clone()
        .or(status.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let mut initializing = false;
    let inits = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map_or(0, Vec::len);
    for (i, cs) in status.init_container_statuses.iter().flatten().enumerate() {
        let state = cs.state.clone().unwrap_or_default();
        if let Some(t) = &state.terminated {
            if t.exit_code == 0 {
                continue;
            }
            reason = match &t.reason {
                Some(r) if !r.is_empty() => format!("Init:{r}"),
                _ => format!("Init:ExitCode:{}", t.exit_code),
            };
        } else if let Some(w) = state.waiting.as_ref().and_then(|w| w.reason.clone())
            && !w.is_empty()
            && w != "PodInitializing"
        {
            reason = format!("Init:{w}");
        } else {
            reason = format!("Init:{i}/{inits}");
        }
        initializing = true;
        break;
    }
    if !initializing {
        let mut has_running = false;
        for cs in status.container_statuses.iter().flatten().rev() {
            let state = cs.state.clone().unwrap_or_default();
            if let Some(w) = state.waiting.as_ref().and_then(|w| w.reason.clone()) {
                reason = w;
            } else if let Some(t) = &state.terminated {
                reason = t
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("ExitCode:{}", t.exit_code));
            } else if state.running.is_some() && cs.ready {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if pod.metadata.deletion_timestamp.is_some() {
        reason = if status.reason.as_deref() == Some("NodeLost") {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}

/// Pods.
pub(crate) struct PodStrategy;

/// Whether a pod is bound to a node and not finished: its deletion waits for the node.
fn running_on_a_node(pod: &Value) -> bool {
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    bound && !finished
}

impl Strategy for PodStrategy {
    type K = Pod;

    fn returns_deleted_object(&self) -> bool {
        true
    }

    fn subresources(&self) -> &'static [Subresource] {
        &[
            Subresource {
                name: "eviction",
                kind: "Eviction",
                verbs: &["create"],
                group_version: Some(("policy", "v1")),
                owns: None,
            },
            Subresource {
                name: "binding",
                kind: "Binding",
                verbs: &["create"],
                group_version: None,
                owns: None,
            },
            Subresource {
                name: "log",
                kind: "Pod",
                verbs: &["get"],
                group_version: None,
                owns: None,
            },
            Subresource {
                name: "exec",
                kind: "PodExecOptions",
                verbs: &["create", "get"],
                group_version: None,
                owns: None,
            },
            Subresource {
                name: "attach",
                kind: "PodAttachOptions",
                verbs: &["create", "get"],
                group_version: None,
                owns: None,
            },
            Subresource {
                name: "portforward",
                kind: "PodPortForwardOptions",
                verbs: &["create", "get"],
                group_version: None,
                owns: None,
            },
            Subresource {
                name: "proxy",
                kind: "PodProxyOptions",
                verbs: crate::registry::PROXY_VERBS,
                group_version: None,
                owns: None,
            },
            Subresource {
                name: "ephemeralcontainers",
                kind: "Pod",
                verbs: &["get", "patch", "update"],
                group_version: None,
                owns: Some("/spec/ephemeralContainers"),
            },
        ]
    }

    /// A pod bound to a node and not finished gets its grace period (the client's, else
    /// `terminationGracePeriodSeconds`, else 30 s) so the node can stop it; others go at once.
    fn delete_grace(&self, pod: &Value, requested: Option<i64>) -> i64 {
        if !running_on_a_node(pod) {
            return 0;
        }
        requested
            .or_else(|| {
                pod.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30)
            .max(0)
    }

    fn delete_during_update(&self, pod: &Value) -> bool {
        !running_on_a_node(pod)
    }

    fn default(&self, pod: &mut Pod) {
        let spec = pod.spec.get_or_insert_with(Default::default);
        default_pod_spec(spec);
        // What the ServiceAccount admission plugin adds to every pod (Priority admission runs
        // at create, where PriorityClasses can be read).
        if spec.service_account_name.is_none() {
            spec.service_account_name = spec
                .service_account
                .clone()
                .or_else(|| Some("default".into()));
        }
        spec.service_account = spec.service_account_name.clone();
        let qos = qos_class(spec);
        let status = pod.status.get_or_insert_with(PodStatus::default);
        status.phase.get_or_insert_with(|| "Pending".into());
        status.qos_class.get_or_insert_with(|| qos.into());
    }

    fn validate(&self, pod: &Pod) -> Vec<FieldError> {
        match &pod.spec {
            Some(spec) => validate_pod_spec("spec", spec),
            None => vec![FieldError::required("spec", "")],
        }
    }

    fn validate_update(&self, new: &Pod, old: &Pod) -> Vec<FieldError> {
        // Only images, activeDeadlineSeconds, tolerations (additions) may change; nodeName is
        // set only through `pods/binding` (`ValidatePodUpdate`).
        let (Some(n), Some(o)) = (&new.spec, &old.spec) else {
            return Vec::new();
        };
        let mut n = n.clone();
        for (nc, oc) in n.containers.iter_mut().zip(&o.containers) {
            nc.image = oc.image.clone();
        }
        for (nc, oc) in n
            .init_containers
            .iter_mut()
            .flatten()
            .zip(o.init_containers.iter().flatten())
        {
            nc.image = oc.image.clone();
        }
        n.active_deadline_seconds = o.active_deadline_seconds;
        n.tolerations = o.tolerations.clone();
        n.termination_grace_period_seconds = o.termination_grace_period_seconds;
        // Ephemeral containers are checked on their own (`ValidatePodEphemeralContainersUpdate`).
        let added = std::mem::replace(&mut n.ephemeral_containers, o.ephemeral_containers.clone());
        let ephemeral = validate_ephemeral(&n, added.as_deref().unwrap_or_default(), o);
        if !ephemeral.is_empty() {
            return ephemeral;
        }
        if &n != o {
            return vec![FieldError::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            )];
        }
        Vec::new()
    }

    fn field_selectors(&self) -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Ready",
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            Column::new(
                "Status",
                "The aggregate status of the containers in this pod.",
            ),
            Column::new(
                "Restarts",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            Column::age(),
            Column::new(
                "IP",
                "IP address allocated to the pod. Routable at least within the cluster.",
            )
            .wide(),
            Column::new(
                "Node",
                "NodeName is a request to schedule this pod onto a specific node.",
            )
            .wide(),
            Column::new(
                "Nominated Node",
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
            )
            .wide(),
            Column::new(
                "Readiness Gates",
                "If specified, all readiness gates will be evaluated for pod readiness.",
            )
            .wide(),
        ]
    }

    fn row(&self, pod: &Pod) -> Vec<Value> {
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let statuses = status.container_statuses.clone().unwrap_or_default();
        let ready = statuses.iter().filter(|c| c.ready).count();
        let restarts: i32 = statuses.iter().map(|c| c.restart_count).sum();
        let gates = spec
            .readiness_gates
            .as_ref()
            .map_or("<none>".to_string(), |g| {
                let conds = status.conditions.clone().unwrap_or_default();
                let true_count = g
                    .iter()
                    .filter(|gate| {
                        conds
                            .iter()
                            .any(|c| c.type_ == gate.condition_type && c.status == "True")
                    })
                    .count();
                format!("{true_count}/{}", g.len())
            });
        vec![
            json!(format!("{ready}/{}", spec.containers.len())),
            json!(pod_status_reason(pod)),
            json!(restarts.to_string()),
            age(pod.metadata.creation_timestamp.as_ref()),
            json!(status.pod_ip.unwrap_or_else(|| "<none>".into())),
            json!(spec.node_name.unwrap_or_else(|| "<none>".into())),
            json!(
                status
                    .nominated_node_name
                    .unwrap_or_else(|| "<none>".into())
            ),
            json!(gates),
        ]
    }
}

/// The checks of `kubectl debug`'s ephemeral containers: those already there stay as they are;
/// a new one has a unique name, an image, none of what only regular containers have (ports,
/// probes, lifecycle hooks, resources), and a `targetContainerName` naming a container.
fn validate_ephemeral(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    new: &[k8s_openapi::api::core::v1::EphemeralContainer],
    old: &k8s_openapi::api::core::v1::PodSpec,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let path = "spec.ephemeralContainers";
    let before = old.ephemeral_containers.as_deref().unwrap_or_default();
    for was in before {
        match new.iter().find(|c| c.name == was.name) {
            None => errs.push(FieldError::forbidden(
                path,
                &format!(
                    "existing ephemeral containers {:?} may not be removed",
                    was.name
                ),
            )),
            Some(now) if now != was => errs.push(FieldError::forbidden(
                path,
                &format!(
                    "existing ephemeral containers {:?} may not be changed",
                    was.name
                ),
            )),
            Some(_) => {}
        }
    }
    let regular: Vec<&str> = spec
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| c.name.as_str()),
        )
        .collect();
    let mut seen: Vec<&str> = regular.clone();
    for (i, c) in new.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if seen.contains(&c.name.as_str()) {
            errs.push(FieldError::duplicate(format!("{at}.name"), &c.name));
        }
        seen.push(&c.name);
        if before.iter().any(|b| b.name == c.name) {
            continue;
        }
        if let Some(why) = crate::validation::check_name(crate::registry::NameRule::Label, &c.name)
        {
            errs.push(FieldError::invalid(
                format!("{at}.name"),
                format!("{:?}", c.name),
                why,
            ));
        }
        if c.image.as_deref().is_none_or(str::is_empty) {
            errs.push(FieldError::required(format!("{at}.image"), ""));
        }
        let only_regular = [
            ("ports", c.ports.is_some()),
            ("livenessProbe", c.liveness_probe.is_some()),
            ("readinessProbe", c.readiness_probe.is_some()),
            ("startupProbe", c.startup_probe.is_some()),
            ("lifecycle", c.lifecycle.is_some()),
            (
                "resources",
                c.resources
                    .as_ref()
                    .is_some_and(|r| *r != Default::default()),
            ),
        ];
        for (field, set) in only_regular {
            if set {
                errs.push(FieldError::forbidden(
                    format!("{at}.{field}"),
                    "cannot be set for an Ephemeral Container",
                ));
            }
        }
        if let Some(target) = c.target_container_name.as_deref()
            && !regular.contains(&target)
        {
            errs.push(FieldError::invalid(
                format!("{at}.targetContainerName"),
                format!("{target:?}"),
                "must be the name of a container in the pod",
            ));
        }
    }
    errs
}
