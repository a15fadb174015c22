//! Admission: the stages between authorization and the store, as kube-apiserver's admission
//! chain. Each plugin is a small type behind one of three traits, run in this order on every
//! create, update and delete:
//!
//! ```text
//! mutating (Priority) ─► the kind's strategy (default, validate) ─► validating (NamespaceLifecycle)
//!                    ─► reserve (ServiceIPs/NodePorts, NodeCIDR: claims held until the write) ─► store
//! ```
//!
//! Plugins choose the requests they handle ([`Request`]); the generic handlers never name a
//! kind. A plugin that needs cluster state reads it from the store or from a cache it keeps.

pub(crate) mod alloc;
mod ingressclass;
mod lifecycle;
pub(crate) mod limits;
pub(crate) mod priority;
pub(crate) mod quota;
pub(crate) mod serviceaccount;

use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use wasmkube_api::ResourceInfo;
use wasmkube_store::Store;

use crate::error::ApiError;

/// What a request does to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Create,
    Update,
    Delete,
}

/// What a plugin sees of a request (`admission.Attributes`).
#[derive(Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) operation: Operation,
    pub(crate) info: &'a ResourceInfo,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) name: &'a str,
    pub(crate) subresource: Option<&'a str>,
    /// The stored object, for updates and deletes.
    pub(crate) old: Option<&'a Value>,
    pub(crate) dry_run: bool,
    /// Who asks (none for the server's own writes).
    pub(crate) user: Option<&'a crate::auth::UserInfo>,
}

impl Request<'_> {
    /// Whether the request is about `K` itself (not a subresource of it).
    pub(crate) fn is<K: k8s_openapi::Resource>(&self) -> bool {
        self.info.group == K::GROUP && self.info.kind == K::KIND && self.subresource.is_none()
    }
}

/// Changes an object before the strategy validates it.
#[async_trait::async_trait]
pub(crate) trait Mutating: Send + Sync {
    /// Whether this plugin acts on `req`.
    fn handles(&self, req: &Request<'_>) -> bool;
    /// Changes `obj`, or refuses the request.
    async fn admit(&self, req: &Request<'_>, obj: &mut Value) -> Result<(), ApiError>;
}

/// Accepts or refuses a validated object (or, for a delete, the request).
#[async_trait::async_trait]
pub(crate) trait Validating: Send + Sync {
    /// Whether this plugin acts on `req`.
    fn handles(&self, req: &Request<'_>) -> bool;
    /// Refuses the request, or lets it through. `obj` is `None` for deletes.
    async fn validate(&self, req: &Request<'_>, obj: Option<&Value>) -> Result<(), ApiError>;
}

/// A claim on something scarce, held until the object is written (its `Drop` releases the
/// lock that serializes claims).
pub(crate) struct Reservation<'a>(
    #[expect(dead_code, reason = "held for its Drop")] Box<dyn Send + 'a>,
);

impl<'a> Reservation<'a> {
    pub(crate) fn new(held: impl Send + 'a) -> Self {
        Reservation(Box::new(held))
    }
}

/// Claims what an object needs (a Service's cluster IP and node ports, a node's pod range)
/// after validation, so a refused object claims nothing.
#[async_trait::async_trait]
pub(crate) trait Reserve: Send + Sync {
    /// Whether this plugin acts on `req`.
    fn handles(&self, req: &Request<'_>) -> bool;
    /// Fills in and claims what `obj` needs, or refuses what it asks for.
    async fn reserve<'a>(
        &'a self,
        req: &Request<'_>,
        obj: &mut Value,
    ) -> Result<Option<Reservation<'a>>, ApiError>;
    /// An object this plugin handles left the store: what it held is free again.
    fn released(&self, req: &Request<'_>);
}

/// The plugins, in order.
#[derive(Default)]
pub(crate) struct Chain {
    mutating: Vec<Box<dyn Mutating>>,
    validating: Vec<Box<dyn Validating>>,
    reserving: Vec<Box<dyn Reserve>>,
}

impl Chain {
    /// kube-apiserver's default plugins that wasmkube has: NamespaceLifecycle, Priority,
    /// DefaultIngressClass, and the allocation of Service addresses and node pod ranges.
    pub(crate) fn standard(
        store: &Store,
        namespaces: Arc<crate::cache::Cacher>,
        network: alloc::Network,
        shutdown: &CancellationToken,
    ) -> Chain {
        let classes = Arc::new(priority::PriorityClasses::default());
        Arc::clone(&classes).run(store.clone(), shutdown.clone());
        Chain::default()
            .mutating(priority::Priority::new(store.clone(), classes))
            .mutating(ingressclass::DefaultIngressClass::new(store.clone()))
            .validating(lifecycle::NamespaceLifecycle::new(
                store.clone(),
                namespaces,
            ))
            .reserving(alloc::AddressPools::new(store.clone(), network))
    }

    /// Adds a mutating plugin after the others.
    #[must_use]
    pub(crate) fn mutating(mut self, p: impl Mutating + 'static) -> Self {
        self.mutating.push(Box::new(p));
        self
    }

    /// Adds a validating plugin after the others.
    #[must_use]
    pub(crate) fn validating(mut self, p: impl Validating + 'static) -> Self {
        self.validating.push(Box::new(p));
        self
    }

    /// Adds a reserving plugin after the others.
    #[must_use]
    pub(crate) fn reserving(mut self, p: impl Reserve + 'static) -> Self {
        self.reserving.push(Box::new(p));
        self
    }

    /// Runs the mutating plugins that handle `req`.
    ///
    /// # Errors
    /// The first refusal.
    pub(crate) async fn mutate(&self, req: &Request<'_>, obj: &mut Value) -> Result<(), ApiError> {
        for p in self.mutating.iter().filter(|p| p.handles(req)) {
            p.admit(req, obj).await?;
        }
        Ok(())
    }

    /// Runs the validating plugins that handle `req`.
    ///
    /// # Errors
    /// The first refusal.
    pub(crate) async fn validate(
        &self,
        req: &Request<'_>,
        obj: Option<&Value>,
    ) -> Result<(), ApiError> {
        for p in self.validating.iter().filter(|p| p.handles(req)) {
            p.validate(req, obj).await?;
        }
        Ok(())
    }

    /// Runs the reserving plugins that handle `req`; the claims hold while the result lives.
    ///
    /// # Errors
    /// The first refusal (earlier claims are dropped with it).
    pub(crate) async fn reserve(
        &self,
        req: &Request<'_>,
        obj: &mut Value,
    ) -> Result<Vec<Reservation<'_>>, ApiError> {
        let mut held = Vec::new();
        for p in self.reserving.iter().filter(|p| p.handles(req)) {
            held.extend(p.reserve(req, obj).await?);
        }
        Ok(held)
    }

    /// Tells the reserving plugins that an object left the store.
    pub(crate) fn released(&self, req: &Request<'_>) {
        for p in self.reserving.iter().filter(|p| p.handles(req)) {
            p.released(req);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    /// Records the order plugins ran in.
    struct Step(&'static str, Arc<Mutex<Vec<&'static str>>>, bool);

    #[async_trait::async_trait]
    impl Mutating for Step {
        fn handles(&self, req: &Request<'_>) -> bool {
            req.operation == Operation::Create
        }
        async fn admit(&self, _req: &Request<'_>, obj: &mut Value) -> Result<(), ApiError> {
            self.1.lock().expect("log").push(self.0);
            obj["seen"] = json!(self.0);
            if self.2 {
                return Err(ApiError::bad_request(self.0));
            }
            Ok(())
        }
    }

    fn req(info: &ResourceInfo, operation: Operation) -> Request<'_> {
        Request {
            operation,
            info,
            namespace: Some("default"),
            name: "x",
            subresource: None,
            old: None,
            dry_run: false,
            user: None,
        }
    }

    #[tokio::test]
    async fn mutating_plugins_should_run_in_order_and_stop_at_the_first_refusal() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let chain = Chain::default()
            .mutating(Step("a", Arc::clone(&log), false))
            .mutating(Step("b", Arc::clone(&log), true))
            .mutating(Step("c", Arc::clone(&log), false));
        let info = ResourceInfo::of::<k8s_openapi::api::core::v1::ConfigMap>();
        let mut obj = json!({});
        let err = chain
            .mutate(&req(&info, Operation::Create), &mut obj)
            .await
            .expect_err("b refuses");
        assert_eq!(err.message, "b");
        assert_eq!(*log.lock().expect("log"), ["a", "b"]);
        assert_eq!(obj["seen"], "b");

        chain
            .mutate(&req(&info, Operation::Update), &mut obj)
            .await
            .expect("no plugin handles updates");
        assert_eq!(log.lock().expect("log").len(), 2);
    }
}
