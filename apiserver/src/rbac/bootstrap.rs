//! The roles and bindings every cluster starts with, after kube-apiserver's bootstrap policy
//! (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`): each server creates the missing ones at
//! start, and adds bootstrap rules and subjects missing from those still annotated
//! `rbac.authorization.kubernetes.io/autoupdate: "true"` (a cluster admin opts out by setting it
//! to `"false"`).

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

use crate::Apiserver;
use crate::error::ApiError;
use crate::kinds::rbac::GROUP;
use crate::request::{Params, Target};
use crate::rest::Cas;

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn read_write() -> Vec<&'static str> {
    READ.iter().chain(WRITE).copied().collect()
}

fn role(name: &str, labels: &[(&str, &str)], aggregate: Option<&str>, rules: Vec<Value>) -> Value {
    let mut labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    labels.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    let mut role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels, "annotations": {AUTOUPDATE: "true"}},
        "rules": rules,
    });
    if let Some(label) = aggregate {
        role["aggregationRule"] =
            json!({"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]});
    }
    role
}

/// The bootstrap ClusterRoles.
pub(crate) fn cluster_roles() -> Vec<Value> {
    let rw = read_write();
    let rw = rw.as_slice();
    vec![
        role(
            "cluster-admin",
            &[],
            None,
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        role(
            "system:discovery",
            &[],
            None,
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:basic-user",
            &[],
            None,
            vec![
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
            ],
        ),
        role(
            "system:public-info-viewer",
            &[],
            None,
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        role(
            "system:monitoring",
            &[],
            None,
            vec![urls(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        role("admin", &[], Some(TO_ADMIN), vec![]),
        role("edit", &[(TO_ADMIN, "true")], Some(TO_EDIT), vec![]),
        role("view", &[(TO_EDIT, "true")], Some(TO_VIEW), vec![]),
        role(
            "system:aggregate-to-admin",
            &[(TO_ADMIN, "true")],
            None,
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                rule(rw, &[GROUP], &["rolebindings", "roles"]),
            ],
        ),
        role(
            "system:aggregate-to-edit",
            &[(TO_EDIT, "true")],
            None,
            vec![
                rule(&["impersonate"], &[""], &["serviceaccounts"]),
                rule(
                    WRITE,
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                ),
                rule(&["create"], &[""], &["pods/eviction"]),
                rule(
                    WRITE,
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
                rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
                rule(
                    WRITE,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                rule(WRITE, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        // What metrics-server's manifest adds: whoever may view may read resource metrics.
        role(
            "system:aggregated-metrics-reader",
            &[(TO_VIEW, "true"), (TO_EDIT, "true"), (TO_ADMIN, "true")],
            None,
            vec![rule(READ, &["metrics.k8s.io"], &["pods", "nodes"])],
        ),
        role(
            "system:aggregate-to-view",
            &[(TO_VIEW, "true")],
            None,
            vec![
                rule(
                    READ,
                    &[""],
                    &[
                        "bindings",
                        "configmaps",
                        "endpoints",
                        "events",
                        "limitranges",
                        "namespaces",
                        "namespaces/status",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                rule(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                rule(
                    READ,
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                rule(
                    READ,
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                rule(
                    READ,
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
            ],
        ),
        role(
            "system:kube-scheduler",
            &[],
            None,
            vec![
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(&["create"], &["coordination.k8s.io"], &["leases"]),
                rule(&["get", "update"], &["coordination.k8s.io"], &["leases"]),
                rule(READ, &[""], &["nodes", "namespaces"]),
                rule(&["delete", "get", "list", "watch"], &[""], &["pods"]),
                rule(&["create"], &[""], &["bindings", "pods/binding"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(
                    READ,
                    &[""],
                    &[
                        "persistentvolumeclaims",
                        "persistentvolumes",
                        "replicationcontrollers",
                        "services",
                    ],
                ),
                rule(READ, &["apps"], &["replicasets", "statefulsets"]),
                rule(READ, &["policy"], &["poddisruptionbudgets"]),
                rule(READ, &["scheduling.k8s.io"], &["priorityclasses"]),
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        role(
            "system:kube-controller-manager",
            &[],
            None,
            vec![
                // One process runs every controller: the union of kube-controller-manager's
                // per-controller roles (the garbage collector and the namespace controller
                // reach every resource).
                rule(&crate::discovery::ALL_VERBS, &["*"], &["*"]),
                // The aggregation controller writes rules it does not hold itself.
                rule(&["escalate"], &[GROUP], &["clusterroles"]),
            ],
        ),
        role(
            "system:node",
            &[],
            None,
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews", "subjectaccessreviews"],
                ),
                rule(READ, &[""], &["services", "endpoints", "namespaces"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    &[
                        "create", "delete", "get", "list", "watch", "patch", "update",
                    ],
                    &[""],
                    &["nodes"],
                ),
                rule(&["patch", "update"], &[""], &["nodes/status"]),
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(
                    &["create", "delete", "get", "list", "watch"],
                    &[""],
                    &["pods"],
                ),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(&["create"], &[""], &["pods/eviction"]),
                // Secrets, ConfigMaps, claims and ServiceAccount tokens: only what a pod bound
                // to the node names (the Node authorizer, `nodeauth.rs`).
                rule(&["get", "list", "watch"], &[""], &["persistentvolumes"]),
                rule(
                    &["create", "delete", "get", "patch", "update"],
                    &["coordination.k8s.io"],
                    &["leases"],
                ),
                // Pulls from the cluster registry (`wasmkube image push` needs push rights:
                // `post`, `put`, `patch` on the same URLs).
                urls(&["get", "head"], &["/v2", "/v2/*"]),
                // The wasmlet is also the node's ingress controller and its network policy
                // agent (what Calico's felix reads: policies, pods and namespaces).
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                rule(
                    &["patch", "update"],
                    &["networking.k8s.io"],
                    &["ingresses/status"],
                ),
                rule(
                    &["create", "get", "list", "watch"],
                    &["networking.k8s.io"],
                    &["ingressclasses"],
                ),
            ],
        ),
        role(
            "system:kube-dns",
            &[],
            None,
            vec![
                rule(
                    &["list", "watch"],
                    &[""],
                    &["endpoints", "services", "pods", "namespaces"],
                ),
                rule(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        role(
            "system:node-proxier",
            &[],
            None,
            vec![
                rule(&["list", "watch"], &[""], &["endpoints", "services"]),
                rule(&["get", "list", "watch"], &[""], &["nodes"]),
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        role(
            "system:service-account-issuer-discovery",
            &[],
            None,
            vec![urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        role(
            "system:auth-delegator",
            &[],
            None,
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
    ]
}

/// A ClusterRoleBinding of ClusterRole `role` (and named after it) to `subjects`.
fn binding(role: &str, subjects: &[(&str, &str)]) -> Value {
    let name = role;
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, name)| match name.split_once('/') {
            Some((ns, sa)) if *kind == "ServiceAccount" => {
                json!({"kind": kind, "name": sa, "namespace": ns})
            }
            _ => json!({"kind": kind, "name": name, "apiGroup": GROUP}),
        })
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                     "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// The bootstrap ClusterRoleBindings: each role with its subjects (a ServiceAccount as
/// `namespace/name`).
const BINDINGS: &[(&str, &[(&str, &str)])] = &[
    ("cluster-admin", &[("Group", "system:masters")]),
    ("system:discovery", &[("Group", "system:authenticated")]),
    ("system:basic-user", &[("Group", "system:authenticated")]),
    (
        "system:public-info-viewer",
        &[
            ("Group", "system:authenticated"),
            ("Group", "system:unauthenticated"),
        ],
    ),
    ("system:monitoring", &[("Group", "system:monitoring")]),
    (
        "system:kube-controller-manager",
        &[("User", "system:kube-controller-manager")],
    ),
    (
        "system:kube-scheduler",
        &[("User", "system:kube-scheduler")],
    ),
    // Nodes are authorized by their group until a Node authorizer narrows each to its own
    // pods' objects.
    ("system:node", &[("Group", "system:nodes")]),
    (
        "system:kube-dns",
        &[
            ("ServiceAccount", "kube-system/kube-dns"),
            ("User", "system:kube-dns"),
        ],
    ),
    ("system:node-proxier", &[("User", "system:kube-proxy")]),
    (
        "system:service-account-issuer-discovery",
        &[("Group", "system:serviceaccounts")],
    ),
];

/// The bootstrap ClusterRoleBindings.
pub(crate) fn cluster_role_bindings() -> Vec<Value> {
    BINDINGS
        .iter()
        .map(|(role, subjects)| binding(role, subjects))
        .collect()
}

/// Creates the missing bootstrap objects and completes the auto-updated ones.
///
/// # Errors
/// When the store refuses a write.
pub(crate) async fn reconcile(api: &Apiserver) -> Result<(), ApiError> {
    for (kind, objects, list) in [
        ("ClusterRole", cluster_roles(), "rules"),
        ("ClusterRoleBinding", cluster_role_bindings(), "subjects"),
    ] {
        let k = api
            .registry
            .by_kind(GROUP, kind)
            .expect("RBAC kinds are registered");
        let target = Target {
            kind: k,
            namespace: None,
            name: None,
            subresource: None,
            watch_path: false,
        };
        for obj in objects {
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let q = Params {
                field_manager: Some("wasmkube-apiserver".into()),
                ..Default::default()
            };
            match api.create_object(&target, &q, obj.clone(), "Update").await {
                Ok(_) => tracing::debug!(kind, %name, "bootstrap policy created"),
                Err(e) if e.code == 409 => complete(api, &target, &name, &obj[list], list).await?,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Adds the bootstrap entries of `list` (`rules` or `subjects`) that `name` lacks, unless it
/// opted out of auto-update.
async fn complete(
    api: &Apiserver,
    target: &Target,
    name: &str,
    wanted: &Value,
    list: &str,
) -> Result<(), ApiError> {
    for _ in 0..5 {
        let cur = api.load(target, name).await?;
        if cur.value["metadata"]["annotations"][AUTOUPDATE] == "false" {
            return Ok(());
        }
        let have = cur.value[list].as_array().cloned().unwrap_or_default();
        let missing: Vec<&Value> = wanted
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| !have.iter().any(|h| same_entry(h, w)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut obj = cur.value.clone();
        obj[list] = Value::Array(
            have.into_iter()
                .chain(missing.into_iter().cloned())
                .collect(),
        );
        if api
            .cas(target, name, cur.rv, Cas::Put(obj))
            .await?
            .is_some()
        {
            tracing::info!(%name, list, "bootstrap policy completed");
            return Ok(());
        }
    }
    Ok(())
}

/// Whether two rules (or subjects) are the same, whatever empty lists they leave out.
fn same_entry(a: &Value, b: &Value) -> bool {
    match (
        serde_json::from_value::<PolicyRule>(a.clone()),
        serde_json::from_value::<PolicyRule>(b.clone()),
    ) {
        (Ok(x), Ok(y)) if a.get("verbs").is_some() => normalize(x) == normalize(y),
        _ => a == b,
    }
}

fn normalize(mut r: PolicyRule) -> PolicyRule {
    for list in [
        &mut r.api_groups,
        &mut r.resources,
        &mut r.resource_names,
        &mut r.non_resource_urls,
    ] {
        if list.as_ref().is_some_and(Vec::is_empty) {
            *list = None;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};

    #[test]
    fn bootstrap_objects_should_be_valid_and_bind_existing_roles() {
        let roles: Vec<ClusterRole> = cluster_roles()
            .into_iter()
            .map(|r| serde_json::from_value(r).expect("a ClusterRole"))
            .collect();
        let names: Vec<&str> = roles
            .iter()
            .map(|r| r.metadata.name.as_deref().unwrap_or_default())
            .collect();
        for b in cluster_role_bindings() {
            let b: ClusterRoleBinding = serde_json::from_value(b).expect("a ClusterRoleBinding");
            assert!(
                names.contains(&b.role_ref.name.as_str()),
                "{}",
                b.role_ref.name
            );
        }
        for name in [
            "cluster-admin",
            "admin",
            "edit",
            "view",
            "system:node",
            "system:kube-scheduler",
        ] {
            assert!(names.contains(&name), "{name}");
        }
    }
}
