//! Pod specs and pod templates: the defaulting and validation that Pods and every workload
//! kind share, and the columns that end the workload kinds' tables.

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, Probe};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use wasmkube_api::selector::LabelSelector as ApiSelector;

use crate::error::FieldError;
use crate::table::{Column, age};
use crate::validation;

fn default_container(c: &mut Container) {
    if c.image_pull_policy.is_none() {
        let image = c.image.as_deref().unwrap_or_default();
        let tag = image.rsplit('/').next().unwrap_or_default();
        let latest = !image.contains('@') && (!tag.contains(':') || tag.ends_with(":latest"));
        c.image_pull_policy = Some(if latest { "Always" } else { "IfNotPresent" }.into());
    }
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy
        .get_or_insert_with(|| "File".into());
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    for probe in [
        &mut c.liveness_probe,
        &mut c.readiness_probe,
        &mut c.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        default_probe(probe);
    }
}

/// `SetDefaults_Probe` and `SetDefaults_HTTPGetAction`: zero or unset takes the default.
fn default_probe(p: &mut Probe) {
    for (field, default) in [
        (&mut p.timeout_seconds, 1),
        (&mut p.period_seconds, 10),
        (&mut p.success_threshold, 1),
        (&mut p.failure_threshold, 3),
    ] {
        if field.is_none_or(|v| v == 0) {
            *field = Some(default);
        }
    }
    if let Some(h) = p.http_get.as_mut() {
        if h.path.as_deref().is_none_or(str::is_empty) {
            h.path = Some("/".into());
        }
        h.scheme.get_or_insert_with(|| "HTTP".into());
    }
}

/// A port given by number or by name (`IANA_SVC_NAME`).
pub(super) fn validate_port_num_or_name(
    field: String,
    port: &IntOrString,
    errs: &mut Vec<FieldError>,
) {
    match port {
        IntOrString::Int(n) if !(1..=65535).contains(n) => errs.push(FieldError::invalid(
            field,
            n,
            "must be between 1 and 65535, inclusive",
        )),
        IntOrString::Int(_) => {}
        IntOrString::String(name) => {
            let ok = (1..=15).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && name.bytes().any(|b| b.is_ascii_lowercase())
                && !name.starts_with('-')
                && !name.ends_with('-')
                && !name.contains("--");
            if !ok {
                errs.push(FieldError::invalid(
                    field,
                    format!("{name:?}"),
                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), at most 15 characters, with at least one letter",
                ));
            }
        }
    }
}

/// `validateProbe` with the per-kind rules of `validateLivenessProbe` and friends.
fn validate_probe(path: &str, kind: &str, p: &Probe, errs: &mut Vec<FieldError>) {
    let handlers = [
        p.exec.is_some(),
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.grpc.is_some(),
    ]
    .into_iter()
    .filter(|h| *h)
    .count();
    match handlers {
        0 => errs.push(FieldError::required(
            path.to_owned(),
            "must specify a handler type",
        )),
        1 => {}
        _ => errs.push(FieldError::forbidden(
            path.to_owned(),
            "may not specify more than 1 handler type",
        )),
    }
    for (name, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        if let Some(v) = v
            && v < 0
        {
            errs.push(FieldError::invalid(
                format!("{path}.{name}"),
                v,
                "must be greater than or equal to 0",
            ));
        }
    }
    if kind != "readinessProbe"
        && let Some(n) = p.success_threshold
        && n != 1
    {
        errs.push(FieldError::invalid(
            format!("{path}.successThreshold"),
            n,
            "must be 1",
        ));
    }
    if let Some(g) = p.termination_grace_period_seconds {
        if kind == "readinessProbe" {
            errs.push(FieldError::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                g,
                "must not be set for readinessProbes",
            ));
        } else if g <= 0 {
            errs.push(FieldError::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                g,
                "must be greater than 0",
            ));
        }
    }
    if let Some(e) = &p.exec
        && e.command.as_ref().is_none_or(Vec::is_empty)
    {
        errs.push(FieldError::required(format!("{path}.exec.command"), ""));
    }
    if let Some(h) = &p.http_get {
        validate_port_num_or_name(format!("{path}.httpGet.port"), &h.port, errs);
        errs.extend(FieldError::not_one_of(
            format!("{path}.httpGet.scheme"),
            h.scheme.as_deref(),
            &["HTTP", "HTTPS"],
        ));
    }
    if let Some(t) = &p.tcp_socket {
        validate_port_num_or_name(format!("{path}.tcpSocket.port"), &t.port, errs);
    }
    if let Some(g) = &p.grpc
        && !(1..=65535).contains(&g.port)
    {
        errs.push(FieldError::invalid(
            format!("{path}.grpc.port"),
            g.port,
            "must be between 1 and 65535, inclusive",
        ));
    }
}

/// `SetDefaults_PodSpec` and the container defaults.
pub(crate) fn default_pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.security_context.get_or_insert_with(Default::default);
    spec.enable_service_links.get_or_insert(true);
    for c in spec.containers.iter_mut() {
        default_container(c);
    }
    for c in spec.init_containers.iter_mut().flatten() {
        default_container(c);
    }
}

fn validate_containers(
    path: &str,
    containers: &[Container],
    init: bool,
    errs: &mut Vec<FieldError>,
) {
    validation::unique_labels(path, containers.iter().map(|c| c.name.as_str()), errs);
    for (i, c) in containers.iter().enumerate() {
        for (kind, probe) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            let Some(probe) = probe else { continue };
            let field = format!("{path}[{i}].{kind}");
            if init {
                // Sidecars (init containers with restartPolicy: Always) are not run yet.
                errs.push(FieldError::forbidden(
                    field,
                    "may not be set for init containers without restartPolicy=Always",
                ));
            } else {
                validate_probe(&field, kind, probe, errs);
            }
        }
        if c.image.as_deref().unwrap_or_default().trim().is_empty() {
            errs.push(FieldError::required(format!("{path}[{i}].image"), ""));
        }
        for (j, p) in c.ports.iter().flatten().enumerate() {
            if !(1..=65535).contains(&p.container_port) {
                errs.push(FieldError::invalid(
                    format!("{path}[{i}].ports[{j}].containerPort"),
                    p.container_port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            errs.extend(FieldError::not_one_of(
                format!("{path}[{i}].ports[{j}].protocol"),
                p.protocol.as_deref(),
                &["SCTP", "TCP", "UDP"],
            ));
        }
        errs.extend(FieldError::not_one_of(
            format!("{path}[{i}].imagePullPolicy"),
            c.image_pull_policy.as_deref(),
            &["Always", "IfNotPresent", "Never"],
        ));
    }
}

/// `ValidatePodSpec`, the parts that matter for wasm pods.
pub(crate) fn validate_pod_spec(path: &str, spec: &PodSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    validate_containers(
        &format!("{path}.containers"),
        &spec.containers,
        false,
        &mut errs,
    );
    if let Some(init) = &spec.init_containers {
        validate_containers(&format!("{path}.initContainers"), init, true, &mut errs);
    }
    errs.extend(FieldError::not_one_of(
        format!("{path}.restartPolicy"),
        spec.restart_policy.as_deref(),
        &["Always", "OnFailure", "Never"],
    ));
    if let Some(g) = spec.termination_grace_period_seconds
        && g < 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            g,
            "must be greater than or equal to 0",
        ));
    }
    if let Some(d) = spec.active_deadline_seconds
        && d <= 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            d,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    let mut volumes = std::collections::HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if !volumes.insert(v.name.as_str()) {
            errs.push(FieldError::duplicate(
                format!("{path}.volumes[{i}].name"),
                &v.name,
            ));
        }
    }
    for (i, c) in spec.containers.iter().enumerate() {
        for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
            if !volumes.contains(m.name.as_str()) {
                errs.push(FieldError {
                    reason: "FieldValueNotFound",
                    field: format!("{path}.containers[{i}].volumeMounts[{j}].name"),
                    message: format!("Not found: \"{}\"", m.name),
                });
            }
        }
    }
    errs
}

/// Defaults a pod template.
pub(crate) fn default_template(t: &mut PodTemplateSpec) {
    if let Some(spec) = t.spec.as_mut() {
        default_pod_spec(spec);
    }
}

/// Validates a pod template against its owner's selector.
pub(crate) fn validate_template(
    path: &str,
    t: &PodTemplateSpec,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match &t.spec {
        Some(spec) => errs.extend(validate_pod_spec(&format!("{path}.spec"), spec)),
        None => errs.push(FieldError::required(format!("{path}.spec"), "")),
    }
    if let Some(sel) = selector {
        let labels = t
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        match wasmkube_api::selector::LabelSelector::from_structured(sel) {
            Ok(s) if s.is_empty() => {}
            Ok(s) if !s.matches(&labels) => errs.push(FieldError::invalid(
                format!("{path}.metadata.labels"),
                format!("{labels:?}"),
                "`selector` does not match template `labels`",
            )),
            Ok(_) => {}
            Err(e) => errs.push(FieldError::invalid("spec.selector", "", &e.to_string())),
        }
    }
    errs
}

/// The Desired, Current and Ready columns of ReplicaSets and ReplicationControllers.
pub(crate) fn replica_columns(ready: &'static str) -> Vec<Column> {
    vec![
        Column::int("Desired", "Replicas is the number of desired replicas."),
        Column::int(
            "Current",
            "Replicas is the most recently observed number of replicas.",
        ),
        Column::int("Ready", ready),
    ]
}

/// The cells of [`replica_columns`].
pub(crate) fn replica_cells(desired: Option<i32>, current: i32, ready: Option<i32>) -> Vec<Value> {
    vec![
        json!(desired.unwrap_or(1)),
        json!(current),
        json!(ready.unwrap_or(0)),
    ]
}

/// The columns that end every workload kind's table: `Age`, then the pod template's
/// `Containers` and `Images`, then, for kinds with one, the `Selector` (all three `-o wide`).
pub(crate) struct WorkloadColumns {
    /// The `Selector` column's description, when the kind's table has one.
    selector: Option<&'static str>,
}

impl WorkloadColumns {
    /// With a `Selector` column described thus.
    pub(crate) const fn with_selector(description: &'static str) -> Self {
        WorkloadColumns {
            selector: Some(description),
        }
    }

    /// Without a `Selector` column.
    pub(crate) const NO_SELECTOR: WorkloadColumns = WorkloadColumns { selector: None };

    /// `head`, then these columns.
    pub(crate) fn columns(&self, mut head: Vec<Column>) -> Vec<Column> {
        head.push(Column::age());
        head.push(Column::new("Containers", "Names of each container in the template.").wide());
        head.push(
            Column::new(
                "Images",
                "Images referenced by each container in the template.",
            )
            .wide(),
        );
        if let Some(description) = self.selector {
            head.push(Column::new("Selector", description).wide());
        }
        head
    }

    /// `head`, then these cells for an object created as `meta` says, with this pod template
    /// and selector.
    pub(crate) fn row(
        &self,
        mut head: Vec<Value>,
        meta: &ObjectMeta,
        template: Option<&PodSpec>,
        selector: Option<&LabelSelector>,
    ) -> Vec<Value> {
        let cs = template
            .map(|s| s.containers.as_slice())
            .unwrap_or_default();
        let names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
        let images: Vec<&str> = cs
            .iter()
            .map(|c| c.image.as_deref().unwrap_or_default())
            .collect();
        head.push(age(meta.creation_timestamp.as_ref()));
        head.push(json!(names.join(",")));
        head.push(json!(images.join(",")));
        if self.selector.is_some() {
            head.push(match selector.map(ApiSelector::from_structured) {
                Some(Ok(sel)) if !sel.is_empty() => json!(sel.to_string()),
                _ => json!("<none>"),
            });
        }
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(containers: Value) -> PodSpec {
        serde_json::from_value(json!({ "containers": containers })).expect("a pod spec")
    }

    #[test]
    fn workload_tables_should_end_with_a_cell_for_every_column() {
        let template =
            spec(json!([{"name": "a", "image": "x.wasm"}, {"name": "b", "image": "y.wasm"}]));
        let selector: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "web"}})).expect("a selector");
        let meta = ObjectMeta::default();
        let with = WorkloadColumns::with_selector("pods");
        let cols = with.columns(vec![Column::new("Ready", "")]);
        let row = with.row(vec![json!("1/1")], &meta, Some(&template), Some(&selector));
        assert_eq!(cols.len(), row.len());
        assert_eq!(
            row[2..],
            [json!("a,b"), json!("x.wasm,y.wasm"), json!("app=web")]
        );
        let empty = with.row(vec![], &meta, None, None);
        assert_eq!(empty[1..], [json!(""), json!(""), json!("<none>")]);
        let without = WorkloadColumns::NO_SELECTOR;
        let cols = without.columns(vec![]);
        assert_eq!(cols.len(), 3);
        assert_eq!(without.row(vec![], &meta, Some(&template), None).len(), 3);
    }

    #[test]
    fn probes_take_the_kubernetes_defaults() {
        let mut s = spec(json!([{"name": "c", "image": "i",
            "readinessProbe": {"httpGet": {"port": 80}, "periodSeconds": 0}}]));
        default_pod_spec(&mut s);
        let p = s.containers[0].readiness_probe.clone().expect("probe");
        assert_eq!(
            (
                p.timeout_seconds,
                p.period_seconds,
                p.success_threshold,
                p.failure_threshold
            ),
            (Some(1), Some(10), Some(1), Some(3))
        );
        let h = p.http_get.expect("httpGet");
        assert_eq!(
            (h.path.as_deref(), h.scheme.as_deref()),
            (Some("/"), Some("HTTP"))
        );
    }

    #[test]
    fn bad_probes_name_each_field() {
        let s: PodSpec = serde_json::from_value(json!({
            "initContainers": [{"name": "init", "image": "i", "readinessProbe": {"exec": {"command": ["x"]}}}],
            "containers": [{"name": "c", "image": "i",
                "livenessProbe": {"httpGet": {"port": 0, "scheme": "FTP"}, "successThreshold": 2},
                "readinessProbe": {"tcpSocket": {"port": "Not_A_Name"}, "exec": {"command": []}, "periodSeconds": -1},
                "startupProbe": {}}]
        }))
        .expect("a pod spec");
        let errs = validate_pod_spec("spec", &s);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for want in [
            "spec.initContainers[0].readinessProbe",
            "spec.containers[0].livenessProbe.successThreshold",
            "spec.containers[0].livenessProbe.httpGet.port",
            "spec.containers[0].livenessProbe.httpGet.scheme",
            "spec.containers[0].readinessProbe",
            "spec.containers[0].readinessProbe.periodSeconds",
            "spec.containers[0].readinessProbe.exec.command",
            "spec.containers[0].readinessProbe.tcpSocket.port",
            "spec.containers[0].startupProbe",
        ] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        let good = spec(json!([{"name": "c", "image": "i",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"port": "http"}},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "terminationGracePeriodSeconds": 5}}]));
        assert!(validate_pod_spec("spec", &good).is_empty());
    }
}
