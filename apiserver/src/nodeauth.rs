//! What a node may touch, as kube-apiserver's Node authorizer and NodeRestriction admission
//! plugin decide it.
//!
//! - [`NodeAuthorizer`]: a node (`system:node:NAME` in `system:nodes`) may `get` a Secret,
//!   ConfigMap or PersistentVolumeClaim, and request a token for a ServiceAccount, only when a
//!   pod bound to it refers to that object — the graph of pods to the objects they name is kept
//!   from the pods watch cache, brought up to date when a decision needs it. Everything else is
//!   RBAC's (the `system:node` role).
//! - [`NodeRestriction`]: a node may change only its own Node and Lease, and only pods bound to
//!   it (status updates, deletes, evictions); it may not create pods.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde::Deserialize;
use serde_json::Value;

use crate::admission::{Operation, Request, Validating};
use crate::auth::{Attributes, Authorizer, UserInfo};
use crate::cache::{Cacher, Next};
use crate::error::ApiError;
use crate::tokens::{NODE_PREFIX, NODES_GROUP};

/// The node a user is, if it is one.
pub(crate) fn node_of(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix(NODE_PREFIX)?;
    (!name.is_empty() && user.groups.iter().any(|g| g == NODES_GROUP)).then_some(name)
}

/// The parts of a pod that name other objects (everything else is skipped when parsing).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PodRefs {
    metadata: Meta,
    spec: Spec,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Meta {
    namespace: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Spec {
    node_name: String,
    service_account_name: String,
    volumes: Vec<Value>,
    containers: Vec<Value>,
    init_containers: Vec<Value>,
    image_pull_secrets: Vec<Value>,
}

/// (kind, name) of every object a pod spec names.
fn named(spec: &Spec) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut push = |kind: &'static str, v: Option<&Value>| {
        if let Some(name) = v.and_then(Value::as_str).filter(|n| !n.is_empty()) {
            out.push((kind, name.to_owned()));
        }
    };
    if !spec.service_account_name.is_empty() {
        push(
            "serviceaccounts",
            Some(&Value::String(spec.service_account_name.clone())),
        );
    }
    for s in &spec.image_pull_secrets {
        push("secrets", s.get("name"));
    }
    for v in &spec.volumes {
        push("secrets", v.pointer("/secret/secretName"));
        push("configmaps", v.pointer("/configMap/name"));
        push(
            "persistentvolumeclaims",
            v.pointer("/persistentVolumeClaim/claimName"),
        );
        for src in v
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            push("secrets", src.pointer("/secret/name"));
            push("configmaps", src.pointer("/configMap/name"));
        }
    }
    for c in spec.containers.iter().chain(&spec.init_containers) {
        for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            push("secrets", e.pointer("/valueFrom/secretKeyRef/name"));
            push("configmaps", e.pointer("/valueFrom/configMapKeyRef/name"));
        }
        for e in c
            .get("envFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            push("secrets", e.pointer("/secretRef/name"));
            push("configmaps", e.pointer("/configMapRef/name"));
        }
    }
    out
}

/// (node, kind, namespace, name) → how many pods make that edge.
type Edges = HashMap<(String, &'static str, String, String), usize>;

#[derive(Default)]
struct Graph {
    /// How far the pods cache has been read; `None` until the first read.
    position: Option<u64>,
    /// Each pod's edges, by its key.
    pods: HashMap<String, Vec<(String, &'static str, String, String)>>,
    edges: Edges,
}

impl Graph {
    fn set(&mut self, key: &str, raw: Option<&[u8]>) {
        for e in self.pods.remove(key).unwrap_or_default() {
            if let Some(n) = self.edges.get_mut(&e) {
                *n -= 1;
                if *n == 0 {
                    self.edges.remove(&e);
                }
            }
        }
        let Some(pod) = raw.and_then(|r| serde_json::from_slice::<PodRefs>(r).ok()) else {
            return;
        };
        if pod.spec.node_name.is_empty() {
            return;
        }
        let mine: Vec<_> = named(&pod.spec)
            .into_iter()
            .map(|(kind, name)| {
                (
                    pod.spec.node_name.clone(),
                    kind,
                    pod.metadata.namespace.clone(),
                    name,
                )
            })
            .collect();
        for e in &mine {
            *self.edges.entry(e.clone()).or_default() += 1;
        }
        self.pods.insert(key.to_owned(), mine);
    }
}

/// The Node authorizer, in front of RBAC.
pub(crate) struct NodeAuthorizer {
    pods: Arc<Cacher>,
    graph: Mutex<Graph>,
    rbac: Arc<crate::rbac::Rbac>,
}

impl NodeAuthorizer {
    pub(crate) fn new(pods: Arc<Cacher>, rbac: Arc<crate::rbac::Rbac>) -> Self {
        NodeAuthorizer {
            pods,
            graph: Mutex::default(),
            rbac,
        }
    }

    /// Whether a pod bound to `node` names (`kind`, `namespace`, `name`).
    fn related(&self, node: &str, kind: &'static str, namespace: &str, name: &str) -> bool {
        let mut g = self.graph.lock().expect("graph lock");
        match g.position.map(|p| self.pods.read_after(p)) {
            Some(Next::Events(events, next)) => {
                for e in events {
                    let raw =
                        (e.kind != wasmkube_store::ChangeKind::Deleted).then(|| e.object.json());
                    g.set(&e.object.key, raw.as_deref());
                }
                g.position = Some(next);
            }
            Some(Next::Behind) | None => {
                let (objects, revision) = self.pods.snapshot("", None);
                *g = Graph::default();
                for o in objects {
                    g.set(&o.key, Some(&o.json()));
                }
                g.position = Some(revision);
            }
        }
        g.edges
            .contains_key(&(node.to_owned(), kind, namespace.to_owned(), name.to_owned()))
    }
}

impl Authorizer for NodeAuthorizer {
    fn authorize(&self, user: &UserInfo, a: &Attributes) -> Result<(), ApiError> {
        let Some(node) = node_of(user) else {
            return self.rbac.authorize(user, a);
        };
        let graphed = match (
            a.group.as_str(),
            a.resource.as_str(),
            a.subresource.as_str(),
        ) {
            ("", "secrets" | "configmaps" | "persistentvolumeclaims", "") => {
                // Only reads of single objects; listing them all is not a node's business.
                Some(a.verb == "get")
            }
            ("", "serviceaccounts", "token") => Some(a.verb == "create"),
            _ => None,
        };
        match graphed {
            None => self.rbac.authorize(user, a),
            Some(true) if self.related(node, leak(&a.resource), &a.namespace, &a.name) => Ok(()),
            Some(_) => Err(ApiError::forbidden_request(&user.name, a)),
        }
    }
}

/// The graph's kind names, as `'static` (only the kinds it stores can match).
fn leak(resource: &str) -> &'static str {
    match resource {
        "secrets" => "secrets",
        "configmaps" => "configmaps",
        "persistentvolumeclaims" => "persistentvolumeclaims",
        "serviceaccounts" => "serviceaccounts",
        _ => "",
    }
}

/// The NodeRestriction admission plugin.
pub(crate) struct NodeRestriction;

fn refuse(req: &Request<'_>, why: String) -> ApiError {
    ApiError::forbidden(req.info, req.name, &why)
}

#[async_trait::async_trait]
impl Validating for NodeRestriction {
    fn handles(&self, req: &Request<'_>) -> bool {
        req.user.and_then(node_of).is_some()
            && (req.info.group.is_empty() && matches!(req.info.plural, "pods" | "nodes")
                || req.info.group == "coordination.k8s.io" && req.info.plural == "leases")
    }

    async fn validate(&self, req: &Request<'_>, obj: Option<&Value>) -> Result<(), ApiError> {
        let node = req.user.and_then(node_of).unwrap_or_default();
        let bound_here = |v: Option<&Value>| {
            v.and_then(|o| o.pointer("/spec/nodeName"))
                .and_then(Value::as_str)
                == Some(node)
        };
        if req.is::<Pod>() || (req.info.plural == "pods" && req.info.group.is_empty()) {
            return match (req.operation, req.subresource) {
                (Operation::Create, None) => Err(refuse(
                    req,
                    format!(
                        "pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"
                    ),
                )),
                (Operation::Create, Some("eviction")) if !bound_here(req.old) => Err(refuse(
                    req,
                    format!("node \"{node}\" can only evict pods with spec.nodeName set to itself"),
                )),
                (Operation::Update, _) if !bound_here(req.old) => Err(refuse(
                    req,
                    format!(
                        "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                    ),
                )),
                (Operation::Delete, _) if !bound_here(req.old) => Err(refuse(
                    req,
                    format!(
                        "node \"{node}\" can only delete pods with spec.nodeName set to itself"
                    ),
                )),
                _ => Ok(()),
            };
        }
        let own = if req.is::<Node>() || req.info.plural == "nodes" {
            req.name == node
        } else {
            req.is::<Lease>() && req.namespace == Some("kube-node-lease") && req.name == node
        };
        let _ = obj;
        if own {
            Ok(())
        } else {
            Err(refuse(
                req,
                format!(
                    "node \"{node}\" is not allowed to modify {} \"{}\"",
                    req.info.singular, req.name
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_should_link_its_node_to_what_it_names() {
        let pod = json!({"metadata": {"namespace": "ns"}, "spec": {"nodeName": "edge-1",
            "serviceAccountName": "app",
            "volumes": [{"name": "a", "secret": {"secretName": "tls"}},
                        {"name": "b", "configMap": {"name": "cfg"}},
                        {"name": "c", "projected": {"sources": [{"secret": {"name": "p"}}]}}],
            "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}}],
                            "envFrom": [{"configMapRef": {"name": "all"}}]}]}});
        let mut g = Graph::default();
        g.set(
            "/core/pods/ns/p",
            Some(&serde_json::to_vec(&pod).expect("json")),
        );
        let has = |g: &Graph, kind: &'static str, name: &str| {
            g.edges
                .contains_key(&("edge-1".into(), kind, "ns".into(), name.into()))
        };
        for (kind, name) in [
            ("secrets", "tls"),
            ("configmaps", "cfg"),
            ("secrets", "p"),
            ("secrets", "env"),
            ("configmaps", "all"),
            ("serviceaccounts", "app"),
        ] {
            assert!(has(&g, kind, name), "{kind}/{name}");
        }
        assert!(!has(&g, "secrets", "other"));
        g.set("/core/pods/ns/p", None);
        assert!(g.edges.is_empty(), "a deleted pod takes its edges along");
    }
}
