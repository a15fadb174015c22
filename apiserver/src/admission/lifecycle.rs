//! The NamespaceLifecycle admission plugin: nothing new is created in a namespace that does not
//! exist or is being terminated, and the namespaces every cluster needs cannot be deleted.

use k8s_openapi::api::core::v1::Namespace;
use serde_json::Value;
use wasmkube_api::ResourceInfo;
use wasmkube_store::Store;

use super::{Operation, Request, Validating};
use crate::error::ApiError;

/// Namespaces that may not be deleted (kube-apiserver's immortal namespaces).
const IMMORTAL: &[&str] = &["default", "kube-system", "kube-public"];

pub(crate) struct NamespaceLifecycle {
    store: Store,
    namespaces: ResourceInfo,
}

impl NamespaceLifecycle {
    pub(crate) fn new(store: Store) -> Self {
        NamespaceLifecycle {
            store,
            namespaces: ResourceInfo::of::<Namespace>(),
        }
    }
}

#[async_trait::async_trait]
impl Validating for NamespaceLifecycle {
    fn handles(&self, req: &Request<'_>) -> bool {
        match req.operation {
            Operation::Create => req.namespace.is_some() && req.subresource.is_none(),
            Operation::Delete => req.is::<Namespace>(),
            Operation::Update => false,
        }
    }

    async fn validate(&self, req: &Request<'_>, _obj: Option<&Value>) -> Result<(), ApiError> {
        if req.operation == Operation::Delete {
            if IMMORTAL.contains(&req.name) {
                return Err(ApiError::forbidden(
                    req.info,
                    req.name,
                    "this namespace may not be deleted",
                ));
            }
            return Ok(());
        }
        let ns = req.namespace.unwrap_or_default();
        let Some(kv) = self.store.get(&self.namespaces.key(None, ns)).await? else {
            return Err(ApiError::not_found(&self.namespaces, ns));
        };
        // Most namespaces are active: look for the phase before parsing.
        if kv.value.windows(13).any(|w| w == b"\"Terminating\"") {
            let v: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
            if v.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
                return Err(ApiError::forbidden(
                    req.info,
                    req.name,
                    &format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    ),
                ));
            }
        }
        Ok(())
    }
}
