//! The NamespaceLifecycle admission plugin: nothing new is created in a namespace that does not
//! exist or is being terminated, and the namespaces every cluster needs cannot be deleted.
//! Namespaces are read from their watch cache (kube-apiserver's plugin reads an informer's
//! lister), and from the store when the cache does not have one yet (just created).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use serde_json::Value;
use wasmkube_api::ResourceInfo;
use wasmkube_store::Store;

use super::{Operation, Request, Validating};
use crate::cache::Cacher;
use crate::error::ApiError;

/// Namespaces that may not be deleted (kube-apiserver's immortal namespaces).
const IMMORTAL: &[&str] = &["default", "kube-system", "kube-public"];

pub(crate) struct NamespaceLifecycle {
    store: Store,
    cache: Arc<Cacher>,
    namespaces: ResourceInfo,
}

impl NamespaceLifecycle {
    /// The plugin over the Namespaces' watch cache, and the store behind it.
    pub(crate) fn new(store: Store, cache: Arc<Cacher>) -> Self {
        NamespaceLifecycle {
            store,
            cache,
            namespaces: ResourceInfo::of::<Namespace>(),
        }
    }
}

/// Whether a stored Namespace is being terminated (most are not: the phase is looked for
/// before the object is parsed).
fn terminating(json: &[u8]) -> bool {
    json.windows(13).any(|w| w == b"\"Terminating\"")
        && serde_json::from_slice::<Value>(json)
            .ok()
            .and_then(|v| {
                v.pointer("/status/phase")
                    .and_then(Value::as_str)
                    .map(|p| p == "Terminating")
            })
            .unwrap_or(false)
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
        let key = self.namespaces.key(None, ns);
        let is_terminating = match self.cache.get(&key) {
            Some(cached) => terminating(&cached.json()),
            None => match self.store.get(&key).await? {
                Some(kv) => terminating(&kv.value),
                None => return Err(ApiError::not_found(&self.namespaces, ns)),
            },
        };
        if is_terminating {
            return Err(ApiError::forbidden(
                req.info,
                req.name,
                &format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            ));
        }
        Ok(())
    }
}
