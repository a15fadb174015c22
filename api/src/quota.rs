//! What an object counts against a ResourceQuota, as kube-apiserver's quota evaluators say:
//! every object counts as `count/RESOURCE[.GROUP]` (and the core kinds under their legacy
//! names: `pods`, `services`, `secrets`, ...); a pod that has not finished also counts its
//! containers' `requests.*` (alias the bare name: `cpu`, `memory`) and `limits.*`; a Service
//! counts `services.nodeports` and `services.loadbalancers`. Amounts are milli-units
//! (Kubernetes' `MilliValue`), so CPU, memory and counts add up alike. A scoped quota
//! (`Terminating`, `BestEffort`, `PriorityClass`, ...) tracks only the pods in its scopes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Pod, PodAffinityTerm, ResourceQuotaSpec, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;

/// Resource name → amount in milli-units.
pub type Usage = BTreeMap<String, u128>;

/// The core kinds quota counts under their own names.
const LEGACY: &[&str] = &[
    "pods",
    "services",
    "replicationcontrollers",
    "resourcequotas",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
];

/// A quantity in milli-units (`500m` → 500, `1Gi` → 1073741824000).
pub fn milli(q: &Quantity) -> Option<u128> {
    crate::quantity::millicores(q).map(u128::from)
}

/// A milli-unit amount of `resource` written as Kubernetes writes it (`500m`, `2`, `1Gi`).
pub fn format(resource: &str, milli: u128) -> String {
    if !milli.is_multiple_of(1000) {
        return format!("{milli}m");
    }
    let v = milli / 1000;
    let memory = ["memory", "storage", "ephemeral-storage"]
        .iter()
        .any(|m| resource.ends_with(m));
    if memory && v > 0 {
        for (unit, size) in [
            ("Ti", 1u128 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if v.is_multiple_of(size) {
                return format!("{}{unit}", v / size);
            }
        }
    }
    v.to_string()
}

/// Whether a pod has finished (terminal pods hold no quota).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// An affinity's terms, required and preferred.
fn terms<'a>(
    required: &'a Option<Vec<PodAffinityTerm>>,
    preferred: &'a Option<Vec<WeightedPodAffinityTerm>>,
) -> impl Iterator<Item = &'a PodAffinityTerm> {
    required
        .iter()
        .flatten()
        .chain(preferred.iter().flatten().map(|w| &w.pod_affinity_term))
}

/// Whether the quota is scoped (`scopes` or `scopeSelector`): then it tracks only the pods its
/// scopes match, and no other object.
pub fn is_scoped(spec: &ResourceQuotaSpec) -> bool {
    spec.scopes.as_ref().is_some_and(|s| !s.is_empty())
        || spec
            .scope_selector
            .as_ref()
            .is_some_and(|s| s.match_expressions.as_ref().is_some_and(|e| !e.is_empty()))
}

/// Whether `pod` is in every scope of the quota, as kube-apiserver's pod evaluator decides:
/// `Terminating` (an `activeDeadlineSeconds`), `NotTerminating`, `BestEffort` (no container
/// requests or limits CPU or memory), `NotBestEffort`, `PriorityClass` (`Exists`: any class;
/// `In`/`NotIn` the listed ones; `DoesNotExist`: none), `CrossNamespacePodAffinity`.
pub fn in_scopes(spec: &ResourceQuotaSpec, pod: &Pod) -> bool {
    let listed = spec
        .scopes
        .iter()
        .flatten()
        .map(|s| (s.as_str(), "Exists", &[][..]));
    let selected = spec
        .scope_selector
        .iter()
        .flat_map(|s| s.match_expressions.iter().flatten())
        .map(|e| {
            (
                e.scope_name.as_str(),
                e.operator.as_str(),
                e.values.as_deref().unwrap_or_default(),
            )
        });
    let p = pod.spec.clone().unwrap_or_default();
    let terminating = p.active_deadline_seconds.is_some_and(|s| s >= 0);
    let best_effort = p
        .containers
        .iter()
        .chain(p.init_containers.iter().flatten())
        .all(|c| {
            [false, true].into_iter().all(|limits| {
                stated(c, limits)
                    .is_none_or(|m| !m.contains_key("cpu") && !m.contains_key("memory"))
            })
        });
    let class = p.priority_class_name.unwrap_or_default();
    let cross_namespace = p.affinity.as_ref().is_some_and(|a| {
        let affinity = a.pod_affinity.iter().flat_map(|x| {
            terms(
                &x.required_during_scheduling_ignored_during_execution,
                &x.preferred_during_scheduling_ignored_during_execution,
            )
        });
        let anti = a.pod_anti_affinity.iter().flat_map(|x| {
            terms(
                &x.required_during_scheduling_ignored_during_execution,
                &x.preferred_during_scheduling_ignored_during_execution,
            )
        });
        affinity.chain(anti).any(|t| {
            t.namespaces.as_ref().is_some_and(|n| !n.is_empty()) || t.namespace_selector.is_some()
        })
    });
    listed
        .chain(selected)
        .all(|(scope, op, values)| match scope {
            "Terminating" => terminating,
            "NotTerminating" => !terminating,
            "BestEffort" => best_effort,
            "NotBestEffort" => !best_effort,
            "CrossNamespacePodAffinity" => cross_namespace,
            "PriorityClass" => match op {
                "Exists" => !class.is_empty(),
                "DoesNotExist" => class.is_empty(),
                "In" => values.contains(&class),
                "NotIn" => !values.contains(&class),
                _ => false,
            },
            _ => false,
        })
}

fn add(usage: &mut Usage, name: &str, v: u128) {
    *usage.entry(name.to_owned()).or_default() += v;
}

/// A container's stated `limits`, or its `requests`.
pub fn stated(c: &Container, limits: bool) -> Option<&BTreeMap<String, Quantity>> {
    let r = c.resources.as_ref()?;
    if limits {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    }
}

/// The sum over `cs` of their `limits` (or `requests`), per resource.
pub fn sum(cs: &[Container], limits: bool) -> Usage {
    let mut u = Usage::new();
    for c in cs {
        for (name, q) in stated(c, limits).into_iter().flatten() {
            if let Some(v) = milli(q) {
                add(&mut u, name, v);
            }
        }
    }
    u
}

/// A pod's compute usage: the containers' sum, or an init container's when larger (they run
/// one at a time before the others).
pub fn pod_compute(pod: &Pod) -> Usage {
    let mut usage = Usage::new();
    let Some(spec) = pod.spec.as_ref() else {
        return usage;
    };
    for (limits, prefix) in [(false, "requests."), (true, "limits.")] {
        let mut total = sum(&spec.containers, limits);
        for init in spec.init_containers.iter().flatten() {
            for (name, v) in sum(std::slice::from_ref(init), limits) {
                let cur = total.entry(name).or_default();
                *cur = (*cur).max(v);
            }
        }
        for (name, v) in total {
            add(&mut usage, &format!("{prefix}{name}"), v);
            if !limits {
                add(&mut usage, &name, v);
            }
        }
    }
    usage
}

/// What one object of `plural` in `group` (`obj`, as JSON) uses.
pub fn usage_of(plural: &str, group: &str, obj: &Value) -> Usage {
    let mut usage = Usage::new();
    let count = if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    };
    if group.is_empty() && plural == "pods" {
        let Ok(pod) = serde_json::from_value::<Pod>(obj.clone()) else {
            return usage;
        };
        if is_terminal(&pod) {
            return usage;
        }
        usage = pod_compute(&pod);
    }
    add(&mut usage, &count, 1000);
    if group.is_empty() && LEGACY.contains(&plural) {
        add(&mut usage, plural, 1000);
    }
    if group.is_empty() && plural == "services" {
        let ty = obj
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP");
        if matches!(ty, "NodePort" | "LoadBalancer") {
            let ports = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            add(&mut usage, "services.nodeports", 1000 * ports as u128);
        }
        if ty == "LoadBalancer" {
            add(&mut usage, "services.loadbalancers", 1000);
        }
    }
    usage
}

/// The compute resources a quota may limit that a pod must then state for every container
/// (`requests.cpu`, `limits.memory`, ...), by the bare resource and whether it is a limit.
pub fn compute_resource(name: &str) -> Option<(&str, bool)> {
    match name {
        "cpu" | "memory" | "ephemeral-storage" => Some((name, false)),
        _ => name
            .strip_prefix("requests.")
            .map(|r| (r, false))
            .or_else(|| name.strip_prefix("limits.").map(|r| (r, true)))
            .filter(|(r, _)| matches!(*r, "cpu" | "memory" | "ephemeral-storage")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_should_pick_pods_as_kube_apiserver_does() {
        let spec = |v: serde_json::Value| -> ResourceQuotaSpec {
            serde_json::from_value(v).expect("spec")
        };
        let pod = |v: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({"spec": v})).expect("pod")
        };
        let plain = pod(serde_json::json!({"containers": [{"name": "c"}]}));
        let sized = pod(serde_json::json!({"containers": [{"name": "c",
            "resources": {"requests": {"cpu": "100m"}}}], "priorityClassName": "high"}));
        let job = pod(serde_json::json!({"activeDeadlineSeconds": 60,
            "containers": [{"name": "c"}]}));
        let best = spec(serde_json::json!({"scopes": ["BestEffort"]}));
        assert!(is_scoped(&best));
        assert!(in_scopes(&best, &plain) && !in_scopes(&best, &sized));
        let not_best = spec(serde_json::json!({"scopes": ["NotBestEffort"]}));
        assert!(!in_scopes(&not_best, &plain) && in_scopes(&not_best, &sized));
        let terminating = spec(serde_json::json!({"scopes": ["Terminating", "BestEffort"]}));
        assert!(in_scopes(&terminating, &job) && !in_scopes(&terminating, &plain));
        let high = spec(serde_json::json!({"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}));
        assert!(in_scopes(&high, &sized) && !in_scopes(&high, &plain));
        let none = spec(serde_json::json!({"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "DoesNotExist"}]}}));
        assert!(!in_scopes(&none, &sized) && in_scopes(&none, &plain));
        assert!(!is_scoped(&spec(
            serde_json::json!({"hard": {"pods": "1"}})
        )));
    }
    use serde_json::json;

    #[test]
    fn a_pod_should_count_its_containers_and_the_largest_init_container() {
        let pod = json!({"spec": {
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "500m"}}}]}});
        let u = usage_of("pods", "", &pod);
        assert_eq!(u["requests.cpu"], 2000, "the init container's 2 > 750m");
        assert_eq!(u["cpu"], 2000);
        assert_eq!(u["requests.memory"], 64 * 1024 * 1024 * 1000);
        assert_eq!(u["limits.memory"], 128 * 1024 * 1024 * 1000);
        assert_eq!((u["pods"], u["count/pods"]), (1000, 1000));
        let done = json!({"spec": {"containers": []}, "status": {"phase": "Succeeded"}});
        assert!(usage_of("pods", "", &done).is_empty());
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        let u = usage_of("services", "", &svc);
        assert_eq!((u["services"], u["services.nodeports"]), (1000, 2000));
        assert_eq!(
            usage_of("deployments", "apps", &json!({}))["count/deployments.apps"],
            1000
        );
    }

    #[test]
    fn amounts_should_be_written_as_kubernetes_writes_them() {
        assert_eq!(format("requests.cpu", 500), "500m");
        assert_eq!(format("cpu", 2000), "2");
        assert_eq!(format("limits.memory", 1000 << 30), "1Gi");
        assert_eq!(format("memory", 1_000_000_000_000), "1000000000");
        assert_eq!(format("pods", 3000), "3");
        assert_eq!(compute_resource("limits.cpu"), Some(("cpu", true)));
        assert_eq!(compute_resource("memory"), Some(("memory", false)));
        assert_eq!(compute_resource("pods"), None);
    }
}
