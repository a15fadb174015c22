//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/{group}` and each group
//! version's resource list with verbs, short names, categories and subresources.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::registry::Registry;

/// The Kubernetes API version wasmkube is compatible with.
pub(crate) const KUBE_MAJOR: &str = "1";
/// Minor version, matching the `k8s-openapi` feature in use.
pub(crate) const KUBE_MINOR: &str = "33";

/// `/version`.
pub(crate) fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0-wasmkube.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

/// `/api`.
pub(crate) fn core_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    })
}

fn groups(reg: &Registry) -> BTreeMap<&'static str, Vec<&'static str>> {
    let mut g: BTreeMap<&'static str, Vec<&'static str>> = BTreeMap::new();
    for k in reg.all() {
        let info = k.info();
        if !info.group.is_empty() {
            let versions = g.entry(info.group).or_default();
            if !versions.contains(&info.version) {
                versions.push(info.version);
            }
        }
    }
    for r in crate::review::REVIEWS {
        let versions = g.entry(r.group).or_default();
        if !versions.contains(&"v1") {
            versions.push("v1");
        }
    }
    g.insert(crate::metrics::GROUP, vec![crate::metrics::VERSION]);
    g.insert(
        crate::metrics::CUSTOM_GROUP,
        vec![crate::metrics::CUSTOM_VERSION],
    );
    g.insert(
        crate::metrics::EXTERNAL_GROUP,
        vec![crate::metrics::EXTERNAL_VERSION],
    );
    g
}

fn group_json(name: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
}

/// `/apis`.
pub(crate) fn group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = groups(reg).iter().map(|(n, v)| group_json(n, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`.
pub(crate) fn group(reg: &Registry, name: &str) -> Option<Value> {
    let g = groups(reg);
    let versions = g.get(name)?;
    let mut v = group_json(name, versions);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

/// Every verb a resource with all REST operations serves.
pub(crate) const ALL_VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/api/v1` or `/apis/{group}/{version}`.
pub(crate) fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for k in reg.all() {
        let info = k.info();
        if info.group != group || info.version != version {
            continue;
        }
        let mut r = json!({
            "name": info.plural,
            "singularName": info.singular,
            "namespaced": info.namespaced(),
            "kind": info.kind,
            "verbs": ALL_VERBS,
        });
        if !info.short_names.is_empty() {
            r["shortNames"] = json!(info.short_names);
        }
        if !info.categories.is_empty() {
            r["categories"] = json!(info.categories);
        }
        resources.push(r);
        if info.status {
            resources.push(json!({"name": format!("{}/status", info.plural), "singularName": "", "namespaced": info.namespaced(), "kind": info.kind, "verbs": ["get", "patch", "update"]}));
        }
        if info.scale {
            resources.push(json!({"name": format!("{}/scale", info.plural), "singularName": "", "namespaced": info.namespaced(), "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
        for sub in k.subresources() {
            let mut r = json!({"name": format!("{}/{}", info.plural, sub.name), "singularName": "", "namespaced": info.namespaced(), "kind": sub.kind, "verbs": sub.verbs});
            if let Some((group, version)) = sub.group_version {
                r["group"] = json!(group);
                r["version"] = json!(version);
            }
            resources.push(r);
        }
    }
    for r in crate::review::REVIEWS {
        if r.group == group && version == "v1" {
            resources.push(
                json!({"name": r.plural, "singularName": r.plural.trim_end_matches('s'),
                "namespaced": r.namespaced, "kind": r.kind, "verbs": ["create"]}),
            );
        }
    }
    if group == crate::metrics::GROUP && version == crate::metrics::VERSION {
        for (plural, kind, namespaced) in crate::metrics::RESOURCES {
            resources.push(
                json!({"name": plural, "singularName": "", "namespaced": namespaced,
                "kind": kind, "verbs": ["get", "list"]}),
            );
        }
    }
    if group == crate::metrics::CUSTOM_GROUP && version == crate::metrics::CUSTOM_VERSION {
        for resource in ["pods", "services"] {
            for metric in crate::metrics::CUSTOM_METRICS {
                resources.push(
                    json!({"name": format!("{resource}/{metric}"), "singularName": "",
                    "namespaced": true, "kind": "MetricValueList", "verbs": ["get"]}),
                );
            }
        }
    }
    if group == crate::metrics::EXTERNAL_GROUP && version == crate::metrics::EXTERNAL_VERSION {
        for metric in crate::metrics::CUSTOM_METRICS {
            resources.push(
                json!({"name": metric, "singularName": "", "namespaced": true,
                "kind": "ExternalMetricValueList", "verbs": ["get"]}),
            );
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// The media type of aggregated discovery (`apidiscovery.k8s.io`), in the version the client
/// asked for first (`v2`, or `v2beta1` for kubectl 1.26–1.29), if it asked for it.
pub(crate) fn aggregated_type(accept: Option<&str>) -> Option<&'static str> {
    for part in accept?.split(',') {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        if params.first() != Some(&"application/json")
            || !params.contains(&"g=apidiscovery.k8s.io")
            || !params.contains(&"as=APIGroupDiscoveryList")
        {
            continue;
        }
        if params.contains(&"v=v2") {
            return Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
        }
        if params.contains(&"v=v2beta1") {
            return Some(
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
            );
        }
    }
    None
}

/// One group's entry of aggregated discovery: every version's resources, each with its
/// subresources, converted from the per-version resource lists.
fn group_discovery(reg: &Registry, name: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .filter_map(|v| {
            let list = resource_list(reg, name, v)?;
            let entries = list["resources"].as_array().cloned().unwrap_or_default();
            let kind_of = |e: &Value| {
                json!({"group": e.get("group").and_then(Value::as_str).unwrap_or(name),
                       "version": e.get("version").and_then(Value::as_str).unwrap_or(v),
                       "kind": e["kind"]})
            };
            let mut resources: Vec<Value> = Vec::new();
            for e in &entries {
                let full = e["name"].as_str().unwrap_or_default();
                let parent = full.split_once('/').map(|(p, _)| p);
                let has_parent = parent.is_some_and(|p| entries.iter().any(|o| o["name"] == p));
                if let (Some(parent), Some((_, sub)), true) =
                    (parent, full.split_once('/'), has_parent)
                {
                    if let Some(r) = resources.iter_mut().find(|r| r["resource"] == parent) {
                        let subs = r
                            .as_object_mut()
                            .expect("resources are objects")
                            .entry("subresources")
                            .or_insert_with(|| json!([]));
                        if let Some(list) = subs.as_array_mut() {
                            list.push(json!({"subresource": sub, "responseKind": kind_of(e),
                                "verbs": e["verbs"]}));
                        }
                    }
                    continue;
                }
                let mut r = json!({
                    "resource": full,
                    "responseKind": kind_of(e),
                    "scope": if e["namespaced"] == true { "Namespaced" } else { "Cluster" },
                    "singularResource": e["singularName"],
                    "verbs": e["verbs"],
                });
                for k in ["shortNames", "categories"] {
                    if let Some(x) = e.get(k) {
                        r[k] = x.clone();
                    }
                }
                resources.push(r);
            }
            Some(json!({"version": v, "resources": resources, "freshness": "Current"}))
        })
        .collect();
    json!({"metadata": {"name": name, "creationTimestamp": null}, "versions": versions})
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`): for `/api` the
/// core group, for `/apis` every other group — one response where the client would otherwise
/// ask once per group version.
pub(crate) fn aggregated(reg: &Registry, core: bool, api_version: &str) -> Value {
    let items: Vec<Value> = if core {
        vec![group_discovery(reg, "", &["v1"])]
    } else {
        groups(reg)
            .iter()
            .map(|(name, versions)| group_discovery(reg, name, versions))
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version,
           "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_should_be_negotiated_and_nest_subresources() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert!(aggregated_type(Some(kubectl)).is_some_and(|t| t.contains("v=v2;")));
        let old = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert!(aggregated_type(Some(old)).is_some_and(|t| t.contains("v=v2beta1")));
        assert_eq!(aggregated_type(Some("application/json")), None);
        assert_eq!(aggregated_type(None), None);

        let reg = crate::kinds::builtin();
        let apis = aggregated(&reg, false, "apidiscovery.k8s.io/v2");
        let apps = apis["items"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["metadata"]["name"] == "apps"))
            .expect("apps");
        let deployments = apps["versions"][0]["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["resource"] == "deployments"))
            .expect("deployments");
        assert_eq!(deployments["scope"], "Namespaced");
        assert_eq!(deployments["responseKind"]["kind"], "Deployment");
        assert_eq!(deployments["shortNames"], json!(["deploy"]));
        let subs: Vec<&str> = deployments["subresources"]
            .as_array()
            .expect("subresources")
            .iter()
            .filter_map(|s| s["subresource"].as_str())
            .collect();
        assert_eq!(subs, ["status", "scale"]);
        assert_eq!(
            deployments["subresources"][1]["responseKind"]["group"],
            "autoscaling"
        );
        let core = aggregated(&reg, true, "apidiscovery.k8s.io/v2");
        let pods = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["resource"] == "pods"))
            .expect("pods");
        assert!(
            pods["subresources"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["subresource"] == "log"))
        );
    }
}
