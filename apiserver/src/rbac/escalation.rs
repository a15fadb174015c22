//! RBAC escalation prevention, as kube-apiserver's RBAC storage does: a Role or ClusterRole may
//! only hold rules its writer holds (unless they may `escalate` it), and a binding may only
//! grant a role whose rules its writer holds (unless they may `bind` it). Members of
//! `system:masters` may do both.

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::Value;

use super::{Policy, Rbac};
use crate::admission::{Operation, Request, Validating};
use crate::auth::{Attributes, UserInfo};
use crate::error::ApiError;

pub(crate) struct Escalation(pub(crate) Arc<Rbac>);

/// Whether `owner` rules cover one single-valued request of a rule (`ruleCovers`).
fn one_covered(owner: &[PolicyRule], verb: &str, group: &str, resource: &str, name: &str) -> bool {
    let has =
        |list: &Option<Vec<String>>, v: &str| list.iter().flatten().any(|x| x == "*" || x == v);
    owner.iter().any(|o| {
        o.verbs.iter().any(|x| x == "*" || x == verb)
            && has(&o.api_groups, group)
            && o.resources.iter().flatten().any(|r| {
                r == "*"
                    || r == resource
                    || resource
                        .split_once('/')
                        .is_some_and(|(_, sub)| r.strip_prefix("*/") == Some(sub))
            })
            && o.resource_names
                .as_ref()
                .is_none_or(|n| n.is_empty() || n.iter().any(|x| x == name))
    })
}

fn url_covered(owner: &[PolicyRule], verb: &str, url: &str) -> bool {
    owner.iter().any(|o| {
        o.verbs.iter().any(|x| x == "*" || x == verb)
            && o.non_resource_urls
                .iter()
                .flatten()
                .any(|u| match u.strip_suffix('*') {
                    Some(prefix) => url.starts_with(prefix),
                    None => u == url,
                })
    })
}

/// The rules of `wanted` that `owner` does not cover (`ConfirmNoEscalation`).
pub(crate) fn uncovered(owner: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<PolicyRule> {
    wanted
        .iter()
        .filter(|w| {
            let names: Vec<&str> = match w.resource_names.as_deref() {
                Some(n) if !n.is_empty() => n.iter().map(String::as_str).collect(),
                _ => vec![""],
            };
            let covered = w.verbs.iter().all(|verb| {
                w.non_resource_urls
                    .iter()
                    .flatten()
                    .all(|u| url_covered(owner, verb, u))
                    && w.api_groups.iter().flatten().all(|g| {
                        w.resources
                            .iter()
                            .flatten()
                            .all(|r| names.iter().all(|n| one_covered(owner, verb, g, r, n)))
                    })
            });
            !covered
        })
        .cloned()
        .collect()
}

/// The rules `user` holds in `namespace` (cluster-wide ones too).
fn held(policy: &Policy, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
    let mut rules = Vec::new();
    policy.visit(user, namespace, |r| {
        rules.push(r.clone());
        false
    });
    rules
}

fn refusal(req: &Request<'_>, user: &UserInfo, missing: &[PolicyRule]) -> ApiError {
    let rules: Vec<String> = missing
        .iter()
        .map(|r| serde_json::to_string(r).unwrap_or_default())
        .collect();
    ApiError::forbidden(
        req.info,
        req.name,
        &format!(
            "user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            user.groups,
            rules.join("\n")
        ),
    )
}

#[async_trait::async_trait]
impl Validating for Escalation {
    fn handles(&self, req: &Request<'_>) -> bool {
        req.operation != Operation::Delete
            && req.subresource.is_none()
            && (req.is::<Role>()
                || req.is::<ClusterRole>()
                || req.is::<RoleBinding>()
                || req.is::<ClusterRoleBinding>())
    }

    async fn validate(&self, req: &Request<'_>, obj: Option<&Value>) -> Result<(), ApiError> {
        let (Some(user), Some(obj)) = (req.user, obj) else {
            // The server's own writes (bootstrap policy) carry no user.
            return Ok(());
        };
        if user.is_master() {
            return Ok(());
        }
        let policy = self.0.policy();
        let namespace = req.namespace.unwrap_or_default();
        // The verb that lets a writer skip the check, and the rules the object would grant.
        let (verb, resource, name, wanted) = if req.is::<Role>() || req.is::<ClusterRole>() {
            let rules: Vec<PolicyRule> =
                serde_json::from_value(obj.get("rules").cloned().unwrap_or(Value::Null))
                    .unwrap_or_default();
            ("escalate", req.info.plural, req.name.to_owned(), rules)
        } else {
            let kind = obj["roleRef"]["kind"].as_str().unwrap_or_default();
            let role = obj["roleRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let rules = if kind == "ClusterRole" {
                policy.cluster_role_rules(&role)
            } else {
                policy.role_rules_in(namespace, &role)
            };
            let resource = if kind == "ClusterRole" {
                "clusterroles"
            } else {
                "roles"
            };
            ("bind", resource, role, rules)
        };
        let may = Attributes {
            verb: verb.into(),
            group: crate::kinds::rbac::GROUP.into(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: namespace.into(),
            name,
            path: String::new(),
        };
        if policy.allows(user, &may) {
            return Ok(());
        }
        let missing = uncovered(&held(&policy, user, namespace), &wanted);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(refusal(req, user, &missing))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: Value) -> Vec<PolicyRule> {
        serde_json::from_value(v).expect("rules")
    }

    #[test]
    fn a_rule_should_be_covered_only_by_rules_that_allow_all_it_allows() {
        let owner = rules(json!([
            {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "configmaps"]},
            {"verbs": ["*"], "apiGroups": ["apps"], "resources": ["*"]},
            {"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"]},
            {"verbs": ["get"], "nonResourceURLs": ["/healthz/*"]},
        ]));
        let ok = rules(json!([
            {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["delete", "create"], "apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"]},
            {"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"]},
            {"verbs": ["get"], "nonResourceURLs": ["/healthz/etcd"]},
        ]));
        assert!(uncovered(&owner, &ok).is_empty());
        let too_much = rules(json!([
            {"verbs": ["delete"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]},
            {"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"], "apiGroups": ["*"], "resources": ["pods"]},
            {"verbs": ["get"], "nonResourceURLs": ["/metrics"]},
        ]));
        assert_eq!(uncovered(&owner, &too_much).len(), 5);
    }
}
