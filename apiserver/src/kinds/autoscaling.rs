//! autoscaling/v2 and autoscaling/v1 HorizontalPodAutoscaler: stored once in the v2 form; v1
//! is a view of it (`pkg/apis/autoscaling/v1` conversion): `targetCPUUtilizationPercentage` is
//! the v2 CPU utilization metric, and what v1 cannot say (other metrics, conditions,
//! `behavior`) rides in the `autoscaling.alpha.kubernetes.io/*` annotations, as upstream keeps
//! it, so an object written in one version reads back whole in the other.

use k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler as HpaV1;
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler as Hpa, MetricSpec, MetricStatus, MetricTarget,
};
use serde_json::{Map, Value, json};

use wasmkube_api::ResourceInfo;

use crate::error::FieldError;
use crate::registry::{Registry, Strategy};
use crate::table::{Column, age};

const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";

pub(super) fn register(r: &Registry) {
    // v2 first: the group's preferred version, as kube-apiserver prefers it.
    r.register_with(HpaStrategy, hpa_info);
    r.register_with(HpaV1Strategy, |i| hpa_info(i).stored_with::<Hpa>());
}

fn hpa_info(i: ResourceInfo) -> ResourceInfo {
    i.short_names(&["hpa"]).in_all().with_status()
}

struct HpaStrategy;

/// The default scale-up rules (`GenerateHPAScaleUpRules`): no stabilization; at most double
/// or add 4 pods per 15 s, whichever is more.
fn default_scale_up() -> Value {
    json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
        {"type": "Pods", "value": 4, "periodSeconds": 15},
        {"type": "Percent", "value": 100, "periodSeconds": 15}]})
}

/// The default scale-down rules: a 300 s stabilization window; any amount per 15 s.
fn default_scale_down() -> Value {
    json!({"stabilizationWindowSeconds": 300, "selectPolicy": "Max", "policies": [
        {"type": "Percent", "value": 100, "periodSeconds": 15}]})
}

fn rules(v: Value) -> HPAScalingRules {
    serde_json::from_value(v).expect("static rules parse")
}

/// Fills the rules of `given` a user left out from `default`.
fn fill_rules(given: &mut HPAScalingRules, default: HPAScalingRules) {
    if given.select_policy.is_none() {
        given.select_policy = default.select_policy;
    }
    if given.policies.is_none() {
        given.policies = default.policies;
    }
    if given.stabilization_window_seconds.is_none() {
        given.stabilization_window_seconds = default.stabilization_window_seconds;
    }
}

fn validate_target(path: &str, t: &MetricTarget, errs: &mut Vec<FieldError>) {
    match t.type_.as_str() {
        "Utilization" => match t.average_utilization {
            Some(u) if u > 0 => {}
            Some(u) => errs.push(FieldError::invalid(
                format!("{path}.averageUtilization"),
                u,
                "must be greater than 0",
            )),
            None => errs.push(FieldError::required(
                format!("{path}.averageUtilization"),
                "must set averageUtilization when metric target type is Utilization",
            )),
        },
        "Value" if t.value.is_none() => errs.push(FieldError::required(
            format!("{path}.value"),
            "must set value when metric target type is Value",
        )),
        "AverageValue" if t.average_value.is_none() => errs.push(FieldError::required(
            format!("{path}.averageValue"),
            "must set averageValue when metric target type is AverageValue",
        )),
        "Value" | "AverageValue" => {}
        other => errs.push(FieldError::not_supported(
            format!("{path}.type"),
            other,
            &["AverageValue", "Utilization", "Value"],
        )),
    }
}

fn validate_metric(path: &str, m: &MetricSpec, errs: &mut Vec<FieldError>) {
    let (field, given) = match m.type_.as_str() {
        "Resource" => ("resource", m.resource.as_ref().map(|r| &r.target)),
        "ContainerResource" => (
            "containerResource",
            m.container_resource.as_ref().map(|r| &r.target),
        ),
        "Pods" => ("pods", m.pods.as_ref().map(|r| &r.target)),
        "Object" => ("object", m.object.as_ref().map(|r| &r.target)),
        "External" => ("external", m.external.as_ref().map(|r| &r.target)),
        other => {
            errs.push(FieldError::not_supported(
                format!("{path}.type"),
                other,
                &[
                    "ContainerResource",
                    "External",
                    "Object",
                    "Pods",
                    "Resource",
                ],
            ));
            return;
        }
    };
    match given {
        None => errs.push(FieldError::required(
            format!("{path}.{field}"),
            &format!(
                "must populate information for the given metric source (type {})",
                m.type_
            ),
        )),
        Some(t) => {
            if matches!(m.type_.as_str(), "Pods") && t.type_ != "AverageValue" {
                errs.push(FieldError::not_supported(
                    format!("{path}.{field}.target.type"),
                    &t.type_,
                    &["AverageValue"],
                ));
            }
            validate_target(&format!("{path}.{field}.target"), t, errs);
        }
    }
}

impl Strategy for HpaStrategy {
    type K = Hpa;

    fn default(&self, hpa: &mut Hpa) {
        let spec = hpa.spec.get_or_insert_with(Default::default);
        spec.min_replicas.get_or_insert(1);
        if spec.metrics.as_ref().is_none_or(Vec::is_empty) {
            spec.metrics = Some(vec![
                serde_json::from_value(json!({"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 80}}}))
                .expect("static metric parses"),
            ]);
        }
        let behavior = spec.behavior.get_or_insert_with(Default::default);
        let up = behavior.scale_up.get_or_insert_with(Default::default);
        fill_rules(up, rules(default_scale_up()));
        let down = behavior.scale_down.get_or_insert_with(Default::default);
        fill_rules(down, rules(default_scale_down()));
    }

    fn validate(&self, hpa: &Hpa) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let Some(spec) = hpa.spec.as_ref() else {
            return vec![FieldError::required("spec", "")];
        };
        let target = &spec.scale_target_ref;
        if target.kind.is_empty() {
            errs.push(FieldError::required("spec.scaleTargetRef.kind", ""));
        }
        if target.name.is_empty() {
            errs.push(FieldError::required("spec.scaleTargetRef.name", ""));
        }
        let min = spec.min_replicas.unwrap_or(1);
        if min < 0 {
            errs.push(FieldError::invalid(
                "spec.minReplicas",
                min,
                "must be greater than or equal to 0",
            ));
        }
        if spec.max_replicas < 1 {
            errs.push(FieldError::invalid(
                "spec.maxReplicas",
                spec.max_replicas,
                "must be greater than 0",
            ));
        }
        if spec.max_replicas < min {
            errs.push(FieldError::invalid(
                "spec.maxReplicas",
                spec.max_replicas,
                "must be greater than or equal to `minReplicas`",
            ));
        }
        let metrics = spec.metrics.as_deref().unwrap_or_default();
        if min == 0
            && !metrics
                .iter()
                .any(|m| m.type_ == "Object" || m.type_ == "External")
        {
            errs.push(FieldError::invalid(
                "spec.minReplicas",
                min,
                "must be greater than or equal to 1 unless an Object or External metric is given",
            ));
        }
        for (i, m) in metrics.iter().enumerate() {
            validate_metric(&format!("spec.metrics[{i}]"), m, &mut errs);
        }
        for (dir, r) in spec
            .behavior
            .iter()
            .flat_map(|b| [("scaleUp", &b.scale_up), ("scaleDown", &b.scale_down)])
        {
            let Some(r) = r else { continue };
            let path = format!("spec.behavior.{dir}");
            if let Some(w) = r.stabilization_window_seconds
                && !(0..=3600).contains(&w)
            {
                errs.push(FieldError::invalid(
                    format!("{path}.stabilizationWindowSeconds"),
                    w,
                    "must be between 0 and 3600",
                ));
            }
            errs.extend(FieldError::not_one_of(
                format!("{path}.selectPolicy"),
                r.select_policy.as_deref(),
                &["Disabled", "Max", "Min"],
            ));
            for (i, p) in r.policies.iter().flatten().enumerate() {
                let pp = format!("{path}.policies[{i}]");
                errs.extend(FieldError::not_one_of(
                    format!("{pp}.type"),
                    p.type_.as_str(),
                    &["Percent", "Pods"],
                ));
                if p.value <= 0 {
                    errs.push(FieldError::invalid(
                        format!("{pp}.value"),
                        p.value,
                        "must be greater than zero",
                    ));
                }
                if !(1..=1800).contains(&p.period_seconds) {
                    errs.push(FieldError::invalid(
                        format!("{pp}.periodSeconds"),
                        p.period_seconds,
                        "must be between 1 and 1800",
                    ));
                }
            }
        }
        errs
    }

    fn columns(&self) -> Vec<Column> {
        hpa_columns()
    }

    fn row(&self, hpa: &Hpa) -> Vec<Value> {
        hpa_row(hpa)
    }
}

fn hpa_columns() -> Vec<Column> {
    vec![
        Column::new(
            "Reference",
            "The scale target reference: the resource being scaled.",
        ),
        Column::new("Targets", "The current and target values of each metric."),
        Column::int("MinPods", "The lower limit for the number of replicas."),
        Column::int("MaxPods", "The upper limit for the number of replicas."),
        Column::int(
            "Replicas",
            "Current number of replicas of pods managed by this autoscaler.",
        ),
        Column::age(),
    ]
}

/// `cpu: 45%/50%`, as kubectl 1.33 prints a metric's current and target (`<unknown>` until
/// the autoscaler has read it).
fn target_text(spec: &MetricSpec, current: Option<&MetricStatus>) -> String {
    let (name, target, now) = match spec.type_.as_str() {
        "Resource" => {
            let r = spec.resource.as_ref();
            (
                r.map(|r| r.name.clone()).unwrap_or_default(),
                r.map(|r| &r.target),
                current
                    .and_then(|c| c.resource.as_ref())
                    .map(|c| &c.current),
            )
        }
        "ContainerResource" => {
            let r = spec.container_resource.as_ref();
            (
                r.map(|r| format!("{}/{}", r.container, r.name))
                    .unwrap_or_default(),
                r.map(|r| &r.target),
                current
                    .and_then(|c| c.container_resource.as_ref())
                    .map(|c| &c.current),
            )
        }
        "Pods" => (
            spec.pods
                .as_ref()
                .map(|p| p.metric.name.clone())
                .unwrap_or_default(),
            spec.pods.as_ref().map(|p| &p.target),
            current.and_then(|c| c.pods.as_ref()).map(|c| &c.current),
        ),
        "Object" => (
            spec.object
                .as_ref()
                .map(|o| o.metric.name.clone())
                .unwrap_or_default(),
            spec.object.as_ref().map(|o| &o.target),
            current.and_then(|c| c.object.as_ref()).map(|c| &c.current),
        ),
        _ => (
            spec.external
                .as_ref()
                .map(|e| e.metric.name.clone())
                .unwrap_or_default(),
            spec.external.as_ref().map(|e| &e.target),
            current
                .and_then(|c| c.external.as_ref())
                .map(|c| &c.current),
        ),
    };
    let Some(target) = target else {
        return "<unknown>".into();
    };
    let unknown = || "<unknown>".to_owned();
    let (now, want) = match target.type_.as_str() {
        "Utilization" => (
            now.and_then(|n| n.average_utilization)
                .map_or_else(unknown, |u| format!("{u}%")),
            format!("{}%", target.average_utilization.unwrap_or_default()),
        ),
        "Value" => (
            now.and_then(|n| n.value.as_ref())
                .map_or_else(unknown, |q| q.0.clone()),
            target
                .value
                .as_ref()
                .map(|q| q.0.clone())
                .unwrap_or_default(),
        ),
        _ => (
            now.and_then(|n| n.average_value.as_ref())
                .map_or_else(unknown, |q| q.0.clone()),
            format!(
                "{} (avg)",
                target
                    .average_value
                    .as_ref()
                    .map(|q| q.0.clone())
                    .unwrap_or_default()
            ),
        ),
    };
    format!("{name}: {now}/{want}")
}

fn hpa_row(hpa: &Hpa) -> Vec<Value> {
    let spec = hpa.spec.clone().unwrap_or_default();
    let status = hpa.status.clone().unwrap_or_default();
    let current = status.current_metrics.unwrap_or_default();
    let metrics = spec.metrics.unwrap_or_default();
    let targets: Vec<String> = metrics
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let cur = current.get(i).filter(|c| c.type_ == m.type_);
            target_text(m, cur)
        })
        .collect();
    let targets = if targets.is_empty() {
        "<none>".to_owned()
    } else if targets.len() > 2 {
        format!(
            "{} + {} more...",
            targets[..2].join(", "),
            targets.len() - 2
        )
    } else {
        targets.join(", ")
    };
    let r = &spec.scale_target_ref;
    vec![
        json!(format!("{}/{}", r.kind, r.name)),
        json!(targets),
        json!(spec.min_replicas.unwrap_or(1)),
        json!(spec.max_replicas),
        json!(status.current_replicas.unwrap_or(0)),
        age(hpa.metadata.creation_timestamp.as_ref()),
    ]
}

struct HpaV1Strategy;

/// The v2 CPU utilization metric of v1's `targetCPUUtilizationPercentage`.
fn cpu_metric(percent: i64) -> Value {
    json!({"type": "Resource", "resource": {"name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": percent}}})
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["type"] == "Utilization"
}

fn annotations(obj: &mut Value) -> &mut Map<String, Value> {
    let meta = obj
        .as_object_mut()
        .expect("an object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .expect("an object")
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("annotations are an object")
}

/// Takes the JSON kept in annotation `key` out of `obj`.
fn take_annotation(obj: &mut Value, key: &str) -> Option<Value> {
    let a = annotations(obj);
    let v = a.remove(key).and_then(|v| {
        v.as_str()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
    });
    if a.is_empty() {
        obj["metadata"]
            .as_object_mut()
            .map(|m| m.remove("annotations"));
    }
    v
}

fn put_annotation(obj: &mut Value, key: &str, v: &Value) {
    annotations(obj).insert(key.to_owned(), json!(v.to_string()));
}

/// v1 → v2 (the stored form).
fn v1_to_v2(mut obj: Value) -> Value {
    let extra = take_annotation(&mut obj, METRICS_ANNOTATION);
    let current_extra = take_annotation(&mut obj, CURRENT_METRICS_ANNOTATION);
    let conditions = take_annotation(&mut obj, CONDITIONS_ANNOTATION);
    let behavior = take_annotation(&mut obj, BEHAVIOR_ANNOTATION);
    let mut spec = obj["spec"].as_object().cloned().unwrap_or_default();
    let mut metrics = Vec::new();
    if let Some(p) = spec
        .remove("targetCPUUtilizationPercentage")
        .and_then(|v| v.as_i64())
    {
        metrics.push(cpu_metric(p));
    }
    if let Some(Value::Array(more)) = extra {
        metrics.extend(more);
    }
    if !metrics.is_empty() {
        spec.insert("metrics".into(), Value::Array(metrics));
    }
    if let Some(b) = behavior {
        spec.insert("behavior".into(), b);
    }
    obj["spec"] = Value::Object(spec);
    if let Some(mut status) = obj.get("status").and_then(Value::as_object).cloned() {
        let mut current = Vec::new();
        if let Some(p) = status
            .remove("currentCPUUtilizationPercentage")
            .and_then(|v| v.as_i64())
        {
            current.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": p}}}));
        }
        if let Some(Value::Array(more)) = current_extra {
            current.extend(more);
        }
        if !current.is_empty() {
            status.insert("currentMetrics".into(), Value::Array(current));
        }
        if let Some(c) = conditions {
            status.insert("conditions".into(), c);
        }
        obj["status"] = Value::Object(status);
    }
    obj["apiVersion"] = json!("autoscaling/v2");
    obj
}

/// Removes the v2 metric list `field` from `map`: the CPU utilization v1 keeps (under `at`,
/// `target` or `current`) and the metrics it keeps only in an annotation.
fn split_cpu(
    map: &mut serde_json::Map<String, Value>,
    field: &str,
    at: &str,
    is_cpu: impl Fn(&Value) -> bool,
) -> (Option<i64>, Vec<Value>) {
    let list = match map.remove(field) {
        Some(Value::Array(m)) => m,
        _ => Vec::new(),
    };
    let (cpu, rest): (Vec<Value>, Vec<Value>) = list.into_iter().partition(|m| is_cpu(m));
    let percent = cpu
        .first()
        .and_then(|m| m["resource"][at]["averageUtilization"].as_i64());
    (percent, rest)
}

/// v2 (the stored form) → v1.
fn v2_to_v1(mut obj: Value) -> Value {
    let mut spec = obj["spec"].as_object().cloned().unwrap_or_default();
    let (cpu, rest) = split_cpu(&mut spec, "metrics", "target", is_cpu_utilization);
    if let Some(p) = cpu {
        spec.insert("targetCPUUtilizationPercentage".into(), json!(p));
    }
    let behavior = spec.remove("behavior");
    obj["spec"] = Value::Object(spec);
    if !rest.is_empty() {
        put_annotation(&mut obj, METRICS_ANNOTATION, &Value::Array(rest));
    }
    if let Some(b) = behavior {
        put_annotation(&mut obj, BEHAVIOR_ANNOTATION, &b);
    }
    if let Some(mut status) = obj.get("status").and_then(Value::as_object).cloned() {
        let (cpu, rest) = split_cpu(&mut status, "currentMetrics", "current", |m| {
            m["type"] == "Resource" && m["resource"]["name"] == "cpu"
        });
        if let Some(p) = cpu {
            status.insert("currentCPUUtilizationPercentage".into(), json!(p));
        }
        let conditions = status.remove("conditions");
        obj["status"] = Value::Object(status);
        if !rest.is_empty() {
            put_annotation(&mut obj, CURRENT_METRICS_ANNOTATION, &Value::Array(rest));
        }
        if let Some(c) = conditions {
            put_annotation(&mut obj, CONDITIONS_ANNOTATION, &c);
        }
    }
    obj["apiVersion"] = json!("autoscaling/v1");
    obj
}

impl Strategy for HpaV1Strategy {
    type K = HpaV1;

    fn default(&self, hpa: &mut HpaV1) {
        let spec = hpa.spec.get_or_insert_with(Default::default);
        spec.min_replicas.get_or_insert(1);
    }

    fn validate(&self, hpa: &HpaV1) -> Vec<FieldError> {
        let v2: Result<Hpa, _> = serde_json::to_value(hpa)
            .map(v1_to_v2)
            .and_then(serde_json::from_value);
        match v2 {
            Ok(mut v2) => {
                HpaStrategy.default(&mut v2);
                HpaStrategy.validate(&v2)
            }
            Err(e) => vec![FieldError::invalid("spec", "", &e.to_string())],
        }
    }

    fn to_storage(&self, obj: Value) -> Value {
        let mut v2 = v1_to_v2(obj);
        // The stored form is defaulted as a v2 write would be.
        if let Ok(mut typed) = serde_json::from_value::<Hpa>(v2.clone()) {
            HpaStrategy.default(&mut typed);
            if let Ok(mut defaulted) = serde_json::to_value(&typed) {
                defaulted["apiVersion"] = json!("autoscaling/v2");
                defaulted["kind"] = json!("HorizontalPodAutoscaler");
                v2 = defaulted;
            }
        }
        v2
    }

    fn view_of_stored(&self, stored: Value) -> Value {
        v2_to_v1(stored)
    }

    fn columns(&self) -> Vec<Column> {
        hpa_columns()
    }

    fn row(&self, hpa: &HpaV1) -> Vec<Value> {
        match serde_json::to_value(hpa)
            .map(v1_to_v2)
            .and_then(serde_json::from_value::<Hpa>)
        {
            Ok(v2) => hpa_row(&v2),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_should_convert_without_losing_anything() {
        let v2 = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [cpu_metric(50),
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "64Mi"}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}},
            "status": {"currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 70}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}]}});
        let v1 = v2_to_v1(v2.clone());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 70);
        assert!(v1["spec"].get("metrics").is_none());
        assert!(
            v1["metadata"]["annotations"][METRICS_ANNOTATION]
                .as_str()
                .is_some_and(|s| s.contains("64Mi"))
        );
        let back = v1_to_v2(v1);
        assert_eq!(back, v2, "a round trip keeps everything");
        let typed: HpaV1 = serde_json::from_value(v2_to_v1(v2)).expect("a valid v1 object");
        assert_eq!(
            typed.spec.and_then(|s| s.target_cpu_utilization_percentage),
            Some(50)
        );
    }

    #[test]
    fn defaults_and_validation_should_follow_kube_apiserver() {
        let mut hpa: Hpa = serde_json::from_value(json!({"metadata": {"name": "x"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3}}))
        .expect("hpa");
        HpaStrategy.default(&mut hpa);
        let spec = hpa.spec.clone().expect("spec");
        assert_eq!(spec.min_replicas, Some(1));
        assert_eq!(
            serde_json::to_value(&spec.metrics).expect("json"),
            json!([cpu_metric(80)])
        );
        let b = spec.behavior.expect("behavior");
        assert_eq!(
            b.scale_down.and_then(|r| r.stabilization_window_seconds),
            Some(300)
        );
        assert_eq!(
            b.scale_up.and_then(|r| r.policies).map(|p| p.len()),
            Some(2)
        );
        assert!(HpaStrategy.validate(&hpa).is_empty());
        let bad: Hpa = serde_json::from_value(json!({"metadata": {"name": "x"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 0,
                "maxReplicas": 3, "metrics": [cpu_metric(0)]}}))
        .expect("hpa");
        let fields: Vec<String> = HpaStrategy
            .validate(&bad)
            .iter()
            .map(|e| e.field.clone())
            .collect();
        assert!(
            fields.contains(&"spec.minReplicas".to_owned()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"spec.metrics[0].resource.target.averageUtilization".to_owned()),
            "{fields:?}"
        );
        assert_eq!(
            target_text(
                &serde_json::from_value(cpu_metric(50)).expect("metric"),
                None
            ),
            "cpu: <unknown>/50%"
        );
    }
}
