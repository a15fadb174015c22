//! RBAC authorization, as kube-apiserver's RBAC authorizer: a request is allowed when a rule of
//! a role bound to the caller (a ClusterRoleBinding anywhere, a RoleBinding in the request's
//! namespace) covers its verb, API group, resource/subresource and name, or its non-resource
//! path. Members of `system:masters` may do anything, as kube-apiserver's privileged-group
//! authorizer says.
//!
//! Decisions read a [`Policy`] built from the watch caches of the four RBAC resources and
//! swapped whole after each change — no store read per request.

pub(crate) mod bootstrap;
pub(crate) mod escalation;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::{Attributes, Authorizer, UserInfo};
use crate::cache::{Cacher, Caches, Next};
use crate::error::ApiError;
use crate::registry::Registry;

/// The user name prefix of ServiceAccounts (`system:serviceaccount:NS:NAME`).
pub(crate) const SA_PREFIX: &str = "system:serviceaccount:";

/// One binding: who, and which role.
#[derive(Debug, Clone)]
struct Binding {
    /// The binding's namespace (for ServiceAccount subjects without one); empty for cluster
    /// bindings.
    namespace: String,
    subjects: Vec<Subject>,
    role_ref: RoleRef,
}

/// Every role and binding, indexed for decisions.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    /// By (namespace, name).
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_bindings: Vec<Binding>,
    /// By namespace.
    bindings: HashMap<String, Vec<Binding>>,
}

/// Whether `subject` names `user` (`appliesToUser`).
fn applies_to(subject: &Subject, user: &UserInfo, binding_namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user.name,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_namespace);
            user.name
                .strip_prefix(SA_PREFIX)
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(n, name)| n == ns && name == subject.name)
        }
        _ => false,
    }
}

fn has(list: Option<&[String]>, want: &str) -> bool {
    list.unwrap_or_default()
        .iter()
        .any(|v| v == "*" || v == want)
}

/// Whether `rule` covers the request (`RuleAllows`).
pub(crate) fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    if !rule.verbs.iter().any(|v| v == "*" || *v == a.verb) {
        return false;
    }
    if !a.is_resource_request() {
        return rule
            .non_resource_urls
            .iter()
            .flatten()
            .any(|u| match u.strip_suffix('*') {
                Some(prefix) => a.path.starts_with(prefix),
                None => *u == a.path,
            });
    }
    if !has(rule.api_groups.as_deref(), &a.group) {
        return false;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource = rule.resources.iter().flatten().any(|r| {
        r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(&a.subresource))
    });
    resource
        && rule
            .resource_names
            .as_deref()
            .is_none_or(|names| names.is_empty() || names.contains(&a.name))
}

impl Policy {
    fn role_rules(&self, role_ref: &RoleRef, namespace: &str) -> &[PolicyRule] {
        let rules = match role_ref.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&role_ref.name),
            "Role" => self
                .roles
                .get(&(namespace.to_owned(), role_ref.name.clone())),
            _ => None,
        };
        rules.map_or(&[], Vec::as_slice)
    }

    /// The rules that apply to `user` in `namespace` (cluster-wide ones too); stops early when
    /// `visit` returns true, and says whether it did (`VisitRulesFor`).
    pub(crate) fn visit(
        &self,
        user: &UserInfo,
        namespace: &str,
        mut visit: impl FnMut(&PolicyRule) -> bool,
    ) -> bool {
        let local = if namespace.is_empty() {
            None
        } else {
            self.bindings.get(namespace)
        };
        self.cluster_bindings
            .iter()
            .chain(local.into_iter().flatten())
            .filter(|b| b.subjects.iter().any(|s| applies_to(s, user, &b.namespace)))
            .any(|b| {
                self.role_rules(&b.role_ref, &b.namespace)
                    .iter()
                    .any(&mut visit)
            })
    }

    /// The rules of ClusterRole `name` (none when it does not exist).
    pub(crate) fn cluster_role_rules(&self, name: &str) -> Vec<PolicyRule> {
        self.cluster_roles.get(name).cloned().unwrap_or_default()
    }

    /// The rules of Role `name` in `namespace` (none when it does not exist).
    pub(crate) fn role_rules_in(&self, namespace: &str, name: &str) -> Vec<PolicyRule> {
        self.roles
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Whether `user` may do what `a` asks.
    pub(crate) fn allows(&self, user: &UserInfo, a: &Attributes) -> bool {
        user.is_master() || self.visit(user, &a.namespace, |r| rule_allows(r, a))
    }

    fn build(caches: &[Arc<Cacher>; 4]) -> Policy {
        let mut p = Policy::default();
        for role in objects::<ClusterRole>(&caches[0]) {
            p.cluster_roles.insert(
                role.metadata.name.unwrap_or_default(),
                role.rules.unwrap_or_default(),
            );
        }
        for role in objects::<Role>(&caches[1]) {
            p.roles.insert(
                (
                    role.metadata.namespace.unwrap_or_default(),
                    role.metadata.name.unwrap_or_default(),
                ),
                role.rules.unwrap_or_default(),
            );
        }
        for b in objects::<ClusterRoleBinding>(&caches[2]) {
            p.cluster_bindings.push(Binding {
                namespace: String::new(),
                subjects: b.subjects.unwrap_or_default(),
                role_ref: b.role_ref,
            });
        }
        for b in objects::<RoleBinding>(&caches[3]) {
            let namespace = b.metadata.namespace.unwrap_or_default();
            p.bindings
                .entry(namespace.clone())
                .or_default()
                .push(Binding {
                    namespace,
                    subjects: b.subjects.unwrap_or_default(),
                    role_ref: b.role_ref,
                });
        }
        p
    }
}

fn objects<K: DeserializeOwned>(cache: &Cacher) -> Vec<K> {
    cache
        .snapshot("", None)
        .0
        .iter()
        .filter_map(|o| match serde_json::from_slice(&o.json()) {
            Ok(k) => Some(k),
            Err(error) => {
                tracing::warn!(key = %o.key, %error, "an RBAC object does not parse; ignored");
                None
            }
        })
        .collect()
}

/// The RBAC authorizer, its policy kept current from the watch caches.
pub(crate) struct Rbac {
    policy: RwLock<Arc<Policy>>,
    loaded: watch::Sender<bool>,
}

impl Rbac {
    /// Starts following the RBAC resources in `caches` until `shutdown`.
    pub(crate) fn start(
        registry: &Registry,
        caches: &Caches,
        shutdown: CancellationToken,
    ) -> Arc<Rbac> {
        let rbac = Arc::new(Rbac {
            policy: RwLock::default(),
            loaded: watch::Sender::new(false),
        });
        let cache = |kind: &str| {
            let k = registry
                .by_kind(crate::kinds::rbac::GROUP, kind)
                .expect("RBAC kinds are registered");
            caches.of_kind(&*k)
        };
        let caches = [
            cache("ClusterRole"),
            cache("Role"),
            cache("ClusterRoleBinding"),
            cache("RoleBinding"),
        ];
        tokio::spawn(Arc::clone(&rbac).follow(caches, shutdown));
        rbac
    }

    async fn follow(self: Arc<Self>, caches: [Arc<Cacher>; 4], shutdown: CancellationToken) {
        let mut progress: Vec<_> = caches.iter().map(|c| c.subscribe()).collect();
        let mut positions = [None::<u64>; 4];
        loop {
            let loaded = progress.iter_mut().all(|p| p.borrow_and_update().loaded);
            if loaded {
                // Rebuild when any resource changed since the last build.
                let mut changed = false;
                for (cache, pos) in caches.iter().zip(positions.iter_mut()) {
                    match pos.map(|p| cache.read_after(p)) {
                        Some(Next::Events(events, next)) => {
                            changed |= !events.is_empty();
                            *pos = Some(next);
                        }
                        Some(Next::Behind) | None => {
                            changed = true;
                            *pos = Some(cache.snapshot("", None).1);
                        }
                    }
                }
                if changed {
                    let policy = Arc::new(Policy::build(&caches));
                    *self.policy.write().expect("policy lock") = policy;
                }
                self.loaded
                    .send_if_modified(|l| !std::mem::replace(l, true));
            }
            let changes =
                futures::future::select_all(progress.iter_mut().map(|p| Box::pin(p.changed())));
            tokio::select! {
                () = shutdown.cancelled() => return,
                (r, _, _) = changes => if r.is_err() { return },
            }
        }
    }

    /// Waits (at most `timeout`) until the policy has been read once; whether it was.
    pub(crate) async fn wait_loaded(&self, timeout: Duration) -> bool {
        let mut rx = self.loaded.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|l| *l))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The policy as last read.
    pub(crate) fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read().expect("policy lock"))
    }
}

impl Authorizer for Rbac {
    fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), ApiError> {
        if self.policy().allows(user, attrs) {
            Ok(())
        } else {
            Err(ApiError::forbidden_request(&user.name, attrs))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn rule(v: serde_json::Value) -> PolicyRule {
        serde_json::from_value(v).expect("rule")
    }

    fn attrs(method: Method, path: &str) -> Attributes {
        Attributes::of(&method, path, false)
    }

    #[test]
    fn rules_should_match_verbs_groups_resources_subresources_and_names() {
        let pods =
            rule(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}));
        assert!(rule_allows(
            &pods,
            &attrs(Method::GET, "/api/v1/namespaces/a/pods/web")
        ));
        assert!(rule_allows(&pods, &attrs(Method::GET, "/api/v1/pods")));
        assert!(!rule_allows(
            &pods,
            &attrs(Method::DELETE, "/api/v1/namespaces/a/pods/web")
        ));
        assert!(
            !rule_allows(
                &pods,
                &attrs(Method::GET, "/api/v1/namespaces/a/pods/web/log")
            ),
            "a subresource needs its own rule"
        );
        assert!(!rule_allows(
            &pods,
            &attrs(Method::GET, "/apis/apps/v1/deployments")
        ));
        let logs = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/log"]}));
        assert!(rule_allows(
            &logs,
            &attrs(Method::GET, "/api/v1/namespaces/a/pods/web/log")
        ));
        assert!(!rule_allows(
            &logs,
            &attrs(Method::GET, "/api/v1/namespaces/a/pods/web")
        ));
        let named = rule(
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cfg"]}),
        );
        assert!(rule_allows(
            &named,
            &attrs(Method::GET, "/api/v1/namespaces/a/configmaps/cfg")
        ));
        assert!(!rule_allows(
            &named,
            &attrs(Method::GET, "/api/v1/namespaces/a/configmaps/other")
        ));
        let urls = rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]}));
        assert!(rule_allows(&urls, &attrs(Method::GET, "/healthz")));
        assert!(rule_allows(&urls, &attrs(Method::GET, "/apis/apps")));
        assert!(!rule_allows(&urls, &attrs(Method::GET, "/version")));
        assert!(
            !rule_allows(&urls, &attrs(Method::GET, "/api/v1/pods")),
            "not a resource rule"
        );
    }

    #[test]
    fn bindings_should_apply_to_users_groups_and_service_accounts_in_their_scope() {
        let mut p = Policy::default();
        p.cluster_roles.insert(
            "view".into(),
            vec![rule(
                json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}),
            )],
        );
        p.roles.insert(
            ("dev".into(), "cm-writer".into()),
            vec![rule(
                json!({"verbs": ["create"], "apiGroups": [""], "resources": ["configmaps"]}),
            )],
        );
        let subject = |kind: &str, name: &str, ns: Option<&str>| Subject {
            kind: kind.into(),
            name: name.into(),
            namespace: ns.map(Into::into),
            api_group: None,
        };
        let role_ref = |kind: &str, name: &str| RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: kind.into(),
            name: name.into(),
        };
        p.cluster_bindings.push(Binding {
            namespace: String::new(),
            subjects: vec![subject("Group", "viewers", None)],
            role_ref: role_ref("ClusterRole", "view"),
        });
        p.bindings.entry("dev".into()).or_default().push(Binding {
            namespace: "dev".into(),
            subjects: vec![
                subject("ServiceAccount", "ci", None),
                subject("User", "jane", None),
            ],
            role_ref: role_ref("Role", "cm-writer"),
        });
        p.bindings.entry("dev".into()).or_default().push(Binding {
            namespace: "dev".into(),
            subjects: vec![subject("User", "bob", None)],
            role_ref: role_ref("ClusterRole", "view"),
        });
        let list_pods = |ns: &str| attrs(Method::GET, &format!("/api/v1/namespaces/{ns}/pods"));
        let create_cm =
            |ns: &str| attrs(Method::POST, &format!("/api/v1/namespaces/{ns}/configmaps"));
        let viewer = user("v", &["viewers", "system:authenticated"]);
        assert!(p.allows(&viewer, &list_pods("any")));
        assert!(p.allows(&viewer, &attrs(Method::GET, "/api/v1/pods")));
        assert!(!p.allows(&viewer, &create_cm("dev")));
        let ci = user("system:serviceaccount:dev:ci", &[]);
        assert!(p.allows(&ci, &create_cm("dev")));
        assert!(
            !p.allows(&ci, &create_cm("prod")),
            "a RoleBinding holds in its namespace only"
        );
        assert!(!p.allows(
            &user("system:serviceaccount:prod:ci", &[]),
            &create_cm("dev")
        ));
        let bob = user("bob", &[]);
        assert!(
            p.allows(&bob, &list_pods("dev")),
            "a ClusterRole bound in one namespace"
        );
        assert!(!p.allows(&bob, &list_pods("prod")));
        assert!(!p.allows(&bob, &attrs(Method::GET, "/api/v1/pods")));
        assert!(p.allows(&user("root", &["system:masters"]), &create_cm("prod")));
        assert!(!p.allows(&user("nobody", &[]), &list_pods("dev")));
    }
}
