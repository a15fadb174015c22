//! Validation shared by every kind: names, labels, annotations, owner references
//! (`k8s.io/apimachinery/pkg/api/validation/objectmeta.go`), and the name formats.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use wasmkube_api::selector::{valid_label_key, valid_label_value};

use crate::error::FieldError;
use crate::registry::NameRule;

pub use wasmkube_api::names::{is_dns1035_label, is_dns1123_label, is_dns1123_subdomain};

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Checks a name against a rule, returning the Kubernetes message on failure.
pub fn check_name(rule: NameRule, name: &str) -> Option<&'static str> {
    match rule {
        NameRule::Subdomain if !is_dns1123_subdomain(name) => Some(SUBDOMAIN_MSG),
        NameRule::Label if !is_dns1123_label(name) => Some(LABEL_MSG),
        NameRule::Label1035 if !is_dns1035_label(name) => Some(LABEL1035_MSG),
        NameRule::Path
            if name.contains('/') || name.contains('%') || name == "." || name == ".." =>
        {
            Some("may not contain '/' or '%' or be '.' or '..'")
        }
        _ => None,
    }
}

/// Validates `metadata` of any object.
pub fn object_meta(meta: &ObjectMeta, namespaced: bool, rule: NameRule) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match meta.name.as_deref() {
        None | Some("") => errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(name) => {
            if let Some(msg) = check_name(rule, name) {
                errs.push(FieldError::invalid("metadata.name", name, msg));
            }
        }
    }
    if namespaced && meta.namespace.as_deref().unwrap_or_default().is_empty() {
        errs.push(FieldError::required("metadata.namespace", ""));
    }
    if !namespaced && meta.namespace.as_deref().is_some_and(|ns| !ns.is_empty()) {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    for (k, v) in meta.labels.iter().flatten() {
        if !valid_label_key(k) {
            errs.push(FieldError::invalid(
                "metadata.labels",
                k,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
        if !valid_label_value(v) {
            errs.push(FieldError::invalid(
                "metadata.labels",
                v,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
    }
    let mut total = 0;
    for (k, v) in meta.annotations.iter().flatten() {
        total += k.len() + v.len();
        if !valid_label_key(k) {
            errs.push(FieldError::invalid(
                "metadata.annotations",
                k,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
    }
    if total > 256 * 1024 {
        errs.push(FieldError {
            reason: "FieldValueTooLong",
            field: "metadata.annotations".into(),
            message: "Too long: must have at most 262144 bytes".into(),
        });
    }
    for (i, owner) in meta.owner_references.iter().flatten().enumerate() {
        let path = format!("metadata.ownerReferences[{i}]");
        for (field, value, what) in [
            ("apiVersion", &owner.api_version, "version"),
            ("kind", &owner.kind, "kind"),
            ("name", &owner.name, "name"),
            ("uid", &owner.uid, "uid"),
        ] {
            if value.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{path}.{field}"),
                    "",
                    &format!("{what} must not be empty"),
                ));
            }
        }
    }
    let controllers = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.controller == Some(true))
        .count();
    if controllers > 1 {
        errs.push(FieldError::invalid(
            "metadata.ownerReferences",
            "",
            "Only one reference can have Controller set to true",
        ));
    }
    for (i, f) in meta.finalizers.iter().flatten().enumerate() {
        if !f.contains('/') && !matches!(f.as_str(), "kubernetes" | "orphan" | "foregroundDeletion")
        {
            errs.push(FieldError::invalid(
                format!("metadata.finalizers[{i}]"),
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
    errs
}

/// Validates a list of names that must be unique DNS labels (container names, port names).
pub fn unique_labels<'a>(
    path: &str,
    names: impl Iterator<Item = &'a str>,
    errs: &mut Vec<FieldError>,
) {
    let mut seen = std::collections::HashSet::new();
    for (i, name) in names.enumerate() {
        let p = format!("{path}[{i}].name");
        if name.is_empty() {
            errs.push(FieldError::required(p, ""));
        } else if !is_dns1123_label(name) {
            errs.push(FieldError::invalid(p, name, LABEL_MSG));
        } else if !seen.insert(name) {
            errs.push(FieldError::duplicate(p, name));
        }
    }
}

/// Reports `field` as immutable when `new != old`.
pub fn immutable<T: PartialEq + serde::Serialize>(
    field: &str,
    new: &T,
    old: &T,
    errs: &mut Vec<FieldError>,
) {
    if new != old {
        let shown = serde_json::to_string(new).unwrap_or_default();
        errs.push(FieldError {
            reason: "FieldValueInvalid",
            field: field.to_string(),
            message: format!("Invalid value: {shown}: field is immutable"),
        });
    }
}
