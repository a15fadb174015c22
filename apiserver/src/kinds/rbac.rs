//! rbac.authorization.k8s.io/v1: Role, ClusterRole, RoleBinding, ClusterRoleBinding, validated
//! as kube-apiserver's `ValidateRole`/`ValidateRoleBinding` do. Who may grant what
//! (escalation prevention) is the RBAC admission check in [`crate::rbac`].

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use serde_json::{Value, json};

use crate::error::FieldError;
use crate::registry::{NameRule, Registry, Strategy};
use crate::table::{Column, age};

/// The API group of RBAC objects, and of `User`/`Group` subjects.
pub(crate) const GROUP: &str = "rbac.authorization.k8s.io";

pub(super) fn register(r: &Registry) {
    r.register(RoleStrategy);
    r.register(ClusterRoleStrategy);
    r.register(RoleBindingStrategy);
    r.register(ClusterRoleBindingStrategy);
}

/// `rules[i]` checks; `namespaced` rules may not name non-resource URLs.
fn validate_rules(rules: Option<&[PolicyRule]>, namespaced: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, rule) in rules.unwrap_or_default().iter().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        if rule.verbs.is_empty() {
            errs.push(FieldError::required(
                at("verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = rule.non_resource_urls.as_deref().unwrap_or_default();
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        if !urls.is_empty() {
            if namespaced {
                errs.push(FieldError::invalid(
                    at("nonResourceURLs"),
                    format!("{urls:?}"),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            } else if !groups.is_empty() || !resources.is_empty() {
                errs.push(FieldError::invalid(
                    at("nonResourceURLs"),
                    format!("{urls:?}"),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if groups.is_empty() {
            errs.push(FieldError::required(
                at("apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if resources.is_empty() {
            errs.push(FieldError::required(
                at("resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
    errs
}

/// `roleRef` and `subjects` checks; a RoleBinding may name a Role or a ClusterRole.
fn validate_binding(
    role_ref: &RoleRef,
    subjects: Option<&[Subject]>,
    namespaced: bool,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if role_ref.api_group != GROUP {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &role_ref.api_group,
            &[GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&role_ref.kind.as_str()) {
        errs.push(FieldError::not_supported(
            "roleRef.kind",
            &role_ref.kind,
            kinds,
        ));
    }
    if role_ref.name.is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    }
    for (i, s) in subjects.unwrap_or_default().iter().enumerate() {
        let at = |f: &str| format!("subjects[{i}].{f}");
        if s.name.is_empty() {
            errs.push(FieldError::required(at("name"), ""));
        }
        let group = s.api_group.as_deref().unwrap_or_default();
        match s.kind.as_str() {
            "ServiceAccount" => {
                if !group.is_empty() {
                    errs.push(FieldError::not_supported(at("apiGroup"), group, &[""]));
                }
                if !namespaced && s.namespace.as_deref().is_none_or(str::is_empty) {
                    errs.push(FieldError::required(at("namespace"), ""));
                }
            }
            "User" | "Group" => {
                if group != GROUP {
                    errs.push(FieldError::not_supported(at("apiGroup"), group, &[GROUP]));
                }
            }
            other => errs.push(FieldError::not_supported(
                at("kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
    errs
}

/// `roleRef` may not change ("cannot change roleRef").
fn role_ref_unchanged(new: &RoleRef, old: &RoleRef) -> Vec<FieldError> {
    if new == old {
        return Vec::new();
    }
    vec![FieldError::invalid(
        "roleRef",
        format!(
            "rbac.RoleRef{{APIGroup:\"{}\", Kind:\"{}\", Name:\"{}\"}}",
            new.api_group, new.kind, new.name
        ),
        "cannot change roleRef",
    )]
}

/// Roles' table: `Created At` (RFC 3339), as kubectl shows them.
fn role_columns() -> Vec<Column> {
    vec![Column::date(
        "Created At",
        "Time when this Role was created.",
    )]
}

fn created_at(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Value {
    json!(
        meta.creation_timestamp
            .as_ref()
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    )
}

/// Bindings' table: the role, age, and (wide) its users, groups and service accounts.
fn binding_columns() -> Vec<Column> {
    vec![
        Column::new(
            "Role",
            "Role is the Role or ClusterRole referenced by this binding.",
        ),
        Column::age(),
        Column::new("Users", "Users in the binding.").wide(),
        Column::new("Groups", "Groups in the binding.").wide(),
        Column::new("ServiceAccounts", "ServiceAccounts in the binding.").wide(),
    ]
}

fn binding_row(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    role_ref: &RoleRef,
    subjects: Option<&[Subject]>,
) -> Vec<Value> {
    let of = |kind: &str| -> Value {
        let names: Vec<String> = subjects
            .unwrap_or_default()
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| match (kind, s.namespace.as_deref()) {
                ("ServiceAccount", Some(ns)) => format!("{ns}:{}", s.name),
                _ => s.name.clone(),
            })
            .collect();
        json!(names.join(", "))
    };
    vec![
        json!(format!("{}/{}", role_ref.kind, role_ref.name)),
        age(meta.creation_timestamp.as_ref()),
        of("User"),
        of("Group"),
        of("ServiceAccount"),
    ]
}

struct RoleStrategy;

impl Strategy for RoleStrategy {
    type K = Role;

    fn name_rule(&self) -> NameRule {
        NameRule::Path
    }

    fn validate(&self, role: &Role) -> Vec<FieldError> {
        validate_rules(role.rules.as_deref(), true)
    }

    fn columns(&self) -> Vec<Column> {
        role_columns()
    }

    fn row(&self, role: &Role) -> Vec<Value> {
        vec![created_at(&role.metadata)]
    }
}

struct ClusterRoleStrategy;

impl Strategy for ClusterRoleStrategy {
    type K = ClusterRole;

    fn name_rule(&self) -> NameRule {
        NameRule::Path
    }

    fn validate(&self, role: &ClusterRole) -> Vec<FieldError> {
        let mut errs = validate_rules(role.rules.as_deref(), false);
        for (i, s) in role
            .aggregation_rule
            .iter()
            .flat_map(|a| a.cluster_role_selectors.iter().flatten())
            .enumerate()
        {
            if let Err(e) = wasmkube_api::selector::LabelSelector::from_structured(s) {
                errs.push(FieldError::invalid(
                    format!("aggregationRule.clusterRoleSelectors[{i}]"),
                    "",
                    &e.to_string(),
                ));
            }
        }
        errs
    }

    fn columns(&self) -> Vec<Column> {
        role_columns()
    }

    fn row(&self, role: &ClusterRole) -> Vec<Value> {
        vec![created_at(&role.metadata)]
    }
}

struct RoleBindingStrategy;

impl Strategy for RoleBindingStrategy {
    type K = RoleBinding;

    fn name_rule(&self) -> NameRule {
        NameRule::Path
    }

    fn validate(&self, b: &RoleBinding) -> Vec<FieldError> {
        validate_binding(&b.role_ref, b.subjects.as_deref(), true)
    }

    fn validate_update(&self, new: &RoleBinding, old: &RoleBinding) -> Vec<FieldError> {
        role_ref_unchanged(&new.role_ref, &old.role_ref)
    }

    fn columns(&self) -> Vec<Column> {
        binding_columns()
    }

    fn row(&self, b: &RoleBinding) -> Vec<Value> {
        binding_row(&b.metadata, &b.role_ref, b.subjects.as_deref())
    }
}

struct ClusterRoleBindingStrategy;

impl Strategy for ClusterRoleBindingStrategy {
    type K = ClusterRoleBinding;

    fn name_rule(&self) -> NameRule {
        NameRule::Path
    }

    fn validate(&self, b: &ClusterRoleBinding) -> Vec<FieldError> {
        validate_binding(&b.role_ref, b.subjects.as_deref(), false)
    }

    fn validate_update(
        &self,
        new: &ClusterRoleBinding,
        old: &ClusterRoleBinding,
    ) -> Vec<FieldError> {
        role_ref_unchanged(&new.role_ref, &old.role_ref)
    }

    fn columns(&self) -> Vec<Column> {
        binding_columns()
    }

    fn row(&self, b: &ClusterRoleBinding) -> Vec<Value> {
        binding_row(&b.metadata, &b.role_ref, b.subjects.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn rules_should_be_checked_as_kube_apiserver_does() {
        let rules: Vec<PolicyRule> = serde_json::from_value(json!([
            {"verbs": [], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"], "nonResourceURLs": ["/healthz"]},
            {"verbs": ["get"]},
        ]))
        .expect("rules");
        assert_eq!(
            fields(&validate_rules(Some(&rules), true)),
            [
                "rules[0].verbs",
                "rules[1].nonResourceURLs",
                "rules[2].apiGroups",
                "rules[2].resources"
            ]
        );
        assert_eq!(
            fields(&validate_rules(Some(&rules), false)),
            ["rules[0].verbs", "rules[2].apiGroups", "rules[2].resources"]
        );
    }

    #[test]
    fn bindings_should_name_a_role_and_well_formed_subjects() {
        let role_ref = |kind: &str| RoleRef {
            api_group: GROUP.into(),
            kind: kind.into(),
            name: "view".into(),
        };
        let subjects: Vec<Subject> = serde_json::from_value(json!([
            {"kind": "ServiceAccount", "name": "sa"},
            {"kind": "User", "name": "jane", "apiGroup": GROUP},
            {"kind": "Group", "name": "devs"},
            {"kind": "Robot", "name": "r"},
        ]))
        .expect("subjects");
        assert_eq!(
            fields(&validate_binding(&role_ref("Role"), Some(&subjects), true)),
            ["subjects[2].apiGroup", "subjects[3].kind"]
        );
        assert_eq!(
            fields(&validate_binding(&role_ref("Role"), Some(&subjects), false)),
            [
                "roleRef.kind",
                "subjects[0].namespace",
                "subjects[2].apiGroup",
                "subjects[3].kind"
            ]
        );
        assert!(role_ref_unchanged(&role_ref("Role"), &role_ref("Role")).is_empty());
        assert_eq!(
            fields(&role_ref_unchanged(
                &role_ref("ClusterRole"),
                &role_ref("Role")
            )),
            ["roleRef"]
        );
    }
}
