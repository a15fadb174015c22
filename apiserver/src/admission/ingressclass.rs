//! The DefaultIngressClass admission plugin: a new Ingress that names no class (neither
//! `spec.ingressClassName` nor the older `kubernetes.io/ingress.class` annotation) gets the
//! cluster's default IngressClass — the one annotated
//! `ingressclass.kubernetes.io/is-default-class: "true"`, the newest when several are (then the
//! first by name among those created at once), as kube-apiserver's plugin chooses.

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde_json::{Value, json};
use wasmkube_api::ResourceInfo;
use wasmkube_store::Store;

use super::{Mutating, Operation, Request};
use crate::error::ApiError;

/// The annotation that makes an IngressClass the default.
const DEFAULT_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// The annotation that named an Ingress's class before `spec.ingressClassName`.
const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

pub(crate) struct DefaultIngressClass {
    store: Store,
}

impl DefaultIngressClass {
    pub(crate) fn new(store: Store) -> Self {
        DefaultIngressClass { store }
    }
}

/// The default among `classes`: the newest of those annotated, ties broken by name.
fn default_of(classes: impl IntoIterator<Item = IngressClass>) -> Option<String> {
    classes
        .into_iter()
        .filter(|c| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_ANNOTATION))
                .is_some_and(|v| v == "true")
        })
        .filter_map(|c| {
            let created = c.metadata.creation_timestamp.as_ref().map(|t| t.0);
            Some((created, c.metadata.name?))
        })
        .min_by(|(ta, na), (tb, nb)| tb.cmp(ta).then_with(|| na.cmp(nb)))
        .map(|(_, name)| name)
}

#[async_trait::async_trait]
impl Mutating for DefaultIngressClass {
    fn handles(&self, req: &Request<'_>) -> bool {
        req.operation == Operation::Create && req.is::<Ingress>()
    }

    async fn admit(&self, _req: &Request<'_>, obj: &mut Value) -> Result<(), ApiError> {
        let named = obj
            .pointer("/spec/ingressClassName")
            .is_some_and(|v| !v.is_null())
            || obj
                .pointer("/metadata/annotations")
                .and_then(Value::as_object)
                .is_some_and(|a| a.contains_key(CLASS_ANNOTATION));
        if named {
            return Ok(());
        }
        let info = ResourceInfo::of::<IngressClass>();
        let all = self.store.list(&info.prefix(), Default::default()).await?;
        let classes = all
            .items
            .iter()
            .filter_map(|kv| serde_json::from_slice::<IngressClass>(&kv.value).ok());
        let Some(class) = default_of(classes) else {
            return Ok(());
        };
        // An Ingress without a spec is refused by validation, which names what is missing.
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("ingressClassName".into(), json!(class));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, default: Option<&str>, created: &str) -> IngressClass {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created,
                "annotations": default.map(|d| json!({DEFAULT_ANNOTATION: d}))
                    .unwrap_or(json!({}))},
        }))
        .expect("a valid IngressClass")
    }

    #[test]
    fn the_newest_annotated_class_should_be_the_default() {
        assert_eq!(default_of([class("a", None, "2026-01-01T00:00:00Z")]), None);
        assert_eq!(
            default_of([
                class("old", Some("true"), "2026-01-01T00:00:00Z"),
                class("new", Some("true"), "2026-02-01T00:00:00Z"),
                class(
                    "newest-but-not-default",
                    Some("false"),
                    "2026-03-01T00:00:00Z"
                ),
            ]),
            Some("new".into())
        );
        assert_eq!(
            default_of([
                class("b", Some("true"), "2026-01-01T00:00:00Z"),
                class("a", Some("true"), "2026-01-01T00:00:00Z"),
            ]),
            Some("a".into())
        );
    }
}
