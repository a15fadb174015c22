//! `apiextensions.k8s.io/v1` CustomResourceDefinition: defaulting and validation as
//! kube-apiserver's apiextensions strategy does them. Serving the kinds a definition declares
//! is `crate::crd`'s job.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition,
};
use serde_json::Value;
use wasmkube_api::names::{is_dns1035_label, is_dns1123_label, is_dns1123_subdomain};

use crate::error::FieldError;
use crate::registry::{Registry, Strategy};
use crate::table::Column;

/// The group.
pub(crate) const GROUP: &str = "apiextensions.k8s.io";

/// The finalizer a definition carries while its objects are being deleted.
pub(crate) const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

pub(super) fn register(r: &Registry) {
    r.register_with(CrdStrategy, |i| {
        i.short_names(&["crd", "crds"]).with_status()
    });
}

struct CrdStrategy;

/// A kind name as Kubernetes allows it (`^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$`, starting
/// with a letter).
fn is_kind_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.ends_with('-')
}

impl Strategy for CrdStrategy {
    type K = CustomResourceDefinition;

    fn spec_finalizers(&self, obj: &Value) -> usize {
        // Its objects go first: a delete adds the cleanup finalizer (`prepare_for_delete`).
        usize::from(obj["metadata"]["deletionTimestamp"].is_null())
    }

    fn prepare_for_delete(&self, obj: &mut Value) {
        let fins = obj["metadata"].as_object_mut().map(|m| {
            m.entry("finalizers")
                .or_insert_with(|| Value::Array(vec![]))
        });
        if let Some(Value::Array(list)) = fins
            && !list.iter().any(|f| f == CLEANUP_FINALIZER)
        {
            list.push(Value::from(CLEANUP_FINALIZER));
        }
        let now = jiff::Timestamp::now().to_string();
        let terminating = serde_json::json!({
            "type": "Terminating", "status": "True", "reason": "InstanceDeletionPending",
            "message": "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon",
            "lastTransitionTime": now,
        });
        if let Some(status) = obj
            .as_object_mut()
            .map(|o| o.entry("status").or_insert_with(|| serde_json::json!({})))
            && let Some(s) = status.as_object_mut()
        {
            let conditions = s
                .entry("conditions")
                .or_insert_with(|| Value::Array(vec![]));
            if let Value::Array(list) = conditions {
                list.retain(|c| c["type"] != "Terminating");
                list.push(terminating);
            }
        }
    }

    fn default(&self, crd: &mut CustomResourceDefinition) {
        let names = &mut crd.spec.names;
        if names.singular.as_deref().is_none_or(str::is_empty) {
            names.singular = Some(names.kind.to_ascii_lowercase());
        }
        if names.list_kind.as_deref().is_none_or(str::is_empty) {
            names.list_kind = Some(format!("{}List", names.kind));
        }
        if crd.spec.conversion.is_none() {
            crd.spec.conversion = Some(CustomResourceConversion {
                strategy: "None".into(),
                webhook: None,
            });
        }
    }

    fn validate(&self, crd: &CustomResourceDefinition) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = &crd.spec;
        let name = crd.metadata.name.as_deref().unwrap_or_default();
        let want = format!("{}.{}", spec.names.plural, spec.group);
        if name != want {
            errs.push(FieldError::invalid(
                "metadata.name",
                name,
                "must be spec.names.plural+\".\"+spec.group",
            ));
        }
        if spec.group.is_empty() {
            errs.push(FieldError::required("spec.group", ""));
        } else if !is_dns1123_subdomain(&spec.group) {
            errs.push(FieldError::invalid(
                "spec.group",
                &spec.group,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            ));
        } else if !spec.group.contains('.') {
            errs.push(FieldError::invalid(
                "spec.group",
                &spec.group,
                "should be a domain with at least one dot",
            ));
        }
        errs.extend(FieldError::not_one_of(
            "spec.scope",
            spec.scope.as_str(),
            &["Cluster", "Namespaced"],
        ));
        let names = &spec.names;
        if names.plural.is_empty() {
            errs.push(FieldError::required("spec.names.plural", ""));
        } else if !is_dns1123_label(&names.plural) {
            errs.push(FieldError::invalid(
                "spec.names.plural",
                &names.plural,
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            ));
        }
        if let Some(s) = names.singular.as_deref()
            && !is_dns1123_label(s)
        {
            errs.push(FieldError::invalid(
                "spec.names.singular",
                s,
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            ));
        }
        if names.kind.is_empty() {
            errs.push(FieldError::required("spec.names.kind", ""));
        } else if !is_kind_name(&names.kind) {
            errs.push(FieldError::invalid(
                "spec.names.kind",
                &names.kind,
                "may have mixed case, but should otherwise match: ^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$",
            ));
        }
        for (i, s) in names.short_names.iter().flatten().enumerate() {
            if !is_dns1123_label(s) {
                errs.push(FieldError::invalid(
                    format!("spec.names.shortNames[{i}]"),
                    s,
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                ));
            }
        }
        if spec.versions.is_empty() {
            errs.push(FieldError::invalid(
                "spec.versions",
                "null",
                "must have exactly one version marked as storage version",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let storage = spec.versions.iter().filter(|v| v.storage).count();
        if !spec.versions.is_empty() && storage != 1 {
            errs.push(FieldError::invalid(
                "spec.versions",
                format_args!(
                    "{:?}",
                    spec.versions.iter().map(|v| &v.name).collect::<Vec<_>>()
                ),
                "must have exactly one version marked as storage version",
            ));
        }
        if !spec.versions.is_empty() && !spec.versions.iter().any(|v| v.served) {
            errs.push(FieldError::invalid(
                "spec.versions",
                format_args!(
                    "{:?}",
                    spec.versions.iter().map(|v| &v.name).collect::<Vec<_>>()
                ),
                "must have at least one version marked as served",
            ));
        }
        for (i, v) in spec.versions.iter().enumerate() {
            let at = format!("spec.versions[{i}]");
            if !is_dns1035_label(&v.name) {
                errs.push(FieldError::invalid(
                    format!("{at}.name"),
                    &v.name,
                    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
                ));
            }
            if !seen.insert(v.name.as_str()) {
                errs.push(FieldError::duplicate(format!("{at}.name"), &v.name));
            }
            match v
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
            {
                None => errs.push(FieldError::required(
                    format!("{at}.schema.openAPIV3Schema"),
                    "schemas are required",
                )),
                Some(schema) => {
                    let schema = serde_json::to_value(schema).unwrap_or_default();
                    errs.extend(crate::crd::schema::structural_errors(
                        &schema,
                        &format!("{at}.schema.openAPIV3Schema"),
                    ));
                }
            }
            for (j, c) in v.additional_printer_columns.iter().flatten().enumerate() {
                let at = format!("{at}.additionalPrinterColumns[{j}]");
                errs.extend(FieldError::not_one_of(
                    format!("{at}.type"),
                    c.type_.as_str(),
                    &["boolean", "date", "integer", "number", "string"],
                ));
                if !c.json_path.starts_with('.') {
                    errs.push(FieldError::invalid(
                        format!("{at}.jsonPath"),
                        &c.json_path,
                        "must be a simple json path starting with .",
                    ));
                }
            }
        }
        errs
    }

    fn validate_update(
        &self,
        new: &CustomResourceDefinition,
        old: &CustomResourceDefinition,
    ) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if new.spec.group != old.spec.group {
            errs.push(FieldError::invalid(
                "spec.group",
                &new.spec.group,
                "field is immutable",
            ));
        }
        if new.spec.scope != old.spec.scope {
            errs.push(FieldError::invalid(
                "spec.scope",
                &new.spec.scope,
                "field is immutable",
            ));
        }
        errs
    }

    fn columns(&self) -> Vec<Column> {
        vec![Column::date(
            "Created At",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
        )]
    }

    fn row(&self, crd: &CustomResourceDefinition) -> Vec<Value> {
        vec![
            crd.metadata
                .creation_timestamp
                .as_ref()
                .map_or(Value::Null, |t| Value::from(t.0.to_string())),
        ]
    }
}
