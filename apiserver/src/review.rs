//! The review APIs: create-only resources that answer a question and store nothing —
//! `SelfSubjectAccessReview` (`kubectl auth can-i`), `SubjectAccessReview`,
//! `LocalSubjectAccessReview`, `SelfSubjectRulesReview` (`kubectl auth can-i --list`) and
//! `SelfSubjectReview` (`kubectl auth whoami`), answered from the RBAC policy.

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::auth::{Attributes, UserInfo};
use crate::error::{ApiError, FieldError};
use crate::rbac::Policy;
use crate::rest::respond_json;

/// A review resource, for routing and discovery.
pub(crate) struct Review {
    pub(crate) group: &'static str,
    pub(crate) plural: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) namespaced: bool,
}

/// Every review resource (all `v1`).
pub(crate) const REVIEWS: &[Review] = &[
    Review {
        group: "authorization.k8s.io",
        plural: "selfsubjectaccessreviews",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
    },
    Review {
        group: "authorization.k8s.io",
        plural: "subjectaccessreviews",
        kind: "SubjectAccessReview",
        namespaced: false,
    },
    Review {
        group: "authorization.k8s.io",
        plural: "localsubjectaccessreviews",
        kind: "LocalSubjectAccessReview",
        namespaced: true,
    },
    Review {
        group: "authorization.k8s.io",
        plural: "selfsubjectrulesreviews",
        kind: "SelfSubjectRulesReview",
        namespaced: false,
    },
    Review {
        group: "authentication.k8s.io",
        plural: "selfsubjectreviews",
        kind: "SelfSubjectReview",
        namespaced: false,
    },
];

/// The review a path names, and its namespace for a namespaced one.
pub(crate) fn route(path: &str) -> Option<(&'static Review, Option<&str>)> {
    let rest = path.strip_prefix("/apis/")?;
    let (group, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("v1/")?;
    let (namespace, plural) = match rest.strip_prefix("namespaces/") {
        Some(r) => {
            let (ns, plural) = r.split_once('/')?;
            (Some(ns), plural)
        }
        None => (None, rest),
    };
    let review = REVIEWS
        .iter()
        .find(|r| r.group == group && r.plural == plural && r.namespaced == namespace.is_some())?;
    Some((review, namespace))
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The attributes a review's `spec` asks about.
fn attributes_of(spec: &Value) -> Result<Attributes, ApiError> {
    let invalid = |field: &str, why: &str| {
        ApiError::invalid_kind(
            "authorization.k8s.io",
            "SubjectAccessReview",
            "",
            &[FieldError::invalid(field.to_owned(), "null", why)],
        )
    };
    match (
        spec.get("resourceAttributes"),
        spec.get("nonResourceAttributes"),
    ) {
        (Some(r), None) if r.is_object() => Ok(Attributes {
            verb: str_at(r, "verb").to_owned(),
            group: str_at(r, "group").to_owned(),
            resource: str_at(r, "resource").to_owned(),
            subresource: str_at(r, "subresource").to_owned(),
            namespace: str_at(r, "namespace").to_owned(),
            name: str_at(r, "name").to_owned(),
            path: String::new(),
        }),
        (None, Some(n)) if n.is_object() => Ok(Attributes {
            verb: str_at(n, "verb").to_owned(),
            group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
            path: str_at(n, "path").to_owned(),
        }),
        (Some(_), Some(_)) => Err(invalid(
            "spec.resourceAttributes",
            "cannot be specified in combination with nonResourceAttributes",
        )),
        _ => Err(invalid(
            "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

/// The user a `SubjectAccessReview` spec names.
fn subject_of(spec: &Value) -> Result<UserInfo, ApiError> {
    let name = str_at(spec, "user").to_owned();
    let groups: Vec<String> = spec
        .get("groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str().map(str::to_owned))
        .collect();
    if name.is_empty() && groups.is_empty() {
        return Err(ApiError::invalid_kind(
            "authorization.k8s.io",
            "SubjectAccessReview",
            "",
            &[FieldError::invalid(
                "spec.user",
                "",
                "at least one of user or group must be specified",
            )],
        ));
    }
    Ok(UserInfo { name, groups })
}

/// `resourceRules` and `nonResourceRules` of `user` in `namespace`.
fn rules_of(policy: &Policy, user: &UserInfo, namespace: &str) -> (Vec<Value>, Vec<Value>) {
    let (mut resource, mut non_resource) = (Vec::new(), Vec::new());
    policy.visit(user, namespace, |r| {
        let entry = if r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
            (
                &mut non_resource,
                json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}),
            )
        } else {
            let mut rule =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if let Some(names) = r.resource_names.as_ref().filter(|n| !n.is_empty()) {
                rule["resourceNames"] = json!(names);
            }
            (&mut resource, rule)
        };
        if !entry.0.contains(&entry.1) {
            entry.0.push(entry.1);
        }
        false
    });
    (resource, non_resource)
}

/// Answers a review `body` posted by `user` (the caller) at `review`.
///
/// # Errors
/// 400 for a body that is not the review's kind, 422 for an incomplete spec.
pub(crate) fn answer(
    review: &Review,
    namespace: Option<&str>,
    method: &Method,
    user: &UserInfo,
    policy: &Policy,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    if method != Method::POST {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({}.{})",
                review.plural, review.group
            ),
        ));
    }
    let mut obj = crate::request::decode_body(headers, body)?.object;
    if obj.get("kind").is_some_and(|k| k != review.kind) {
        return Err(ApiError::bad_request(format!(
            "the body is not a {}",
            review.kind
        )));
    }
    obj["apiVersion"] = json!(format!("{}/v1", review.group));
    obj["kind"] = json!(review.kind);
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    obj["metadata"] = json!({"creationTimestamp": null});
    if let Some(name) = meta.get("name") {
        obj["metadata"]["name"] = name.clone();
    }
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = match review.plural {
        "selfsubjectreviews" => json!({"userInfo": {"username": user.name, "groups": user.groups}}),
        "selfsubjectrulesreviews" => {
            let ns = str_at(&spec, "namespace");
            let (resource, non_resource) = rules_of(policy, user, ns);
            json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false})
        }
        plural => {
            let attrs = attributes_of(&spec)?;
            if let Some(ns) = namespace
                && attrs.namespace != ns
            {
                return Err(ApiError::invalid_kind(
                    review.group,
                    review.kind,
                    "",
                    &[FieldError::invalid(
                        "spec.resourceAttributes.namespace",
                        &attrs.namespace,
                        "must match metadata.namespace",
                    )],
                ));
            }
            let subject = if plural == "selfsubjectaccessreviews" {
                user.clone()
            } else {
                subject_of(&spec)?
            };
            let allowed = policy.allows(&subject, &attrs);
            let mut status = json!({"allowed": allowed});
            if allowed && !subject.is_master() {
                status["reason"] = json!("RBAC: allowed by a role binding");
            }
            status
        }
    };
    if let Some(ns) = namespace {
        obj["metadata"]["namespace"] = json!(ns);
    }
    obj["status"] = status;
    Ok(respond_json(StatusCode::CREATED, &obj, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_paths_should_route_by_group_and_scope() {
        let (r, ns) =
            route("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews").expect("ssar");
        assert_eq!((r.kind, ns), ("SelfSubjectAccessReview", None));
        let (r, ns) =
            route("/apis/authorization.k8s.io/v1/namespaces/dev/localsubjectaccessreviews")
                .expect("lsar");
        assert_eq!((r.kind, ns), ("LocalSubjectAccessReview", Some("dev")));
        assert!(
            route("/apis/authorization.k8s.io/v1/namespaces/dev/selfsubjectaccessreviews")
                .is_none()
        );
        assert!(route("/apis/authentication.k8s.io/v1/selfsubjectreviews").is_some());
        assert!(route("/api/v1/pods").is_none());
    }
}
