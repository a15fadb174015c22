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

const ALL_VERBS: [&str; 8] = [
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
            resources.push(json!({"name": format!("{}/{}", info.plural, sub.name), "singularName": "", "namespaced": info.namespaced(), "kind": sub.kind, "verbs": sub.verbs}));
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
