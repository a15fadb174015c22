//! Namespace lifecycle (the namespace controller): a deleted namespace — `Terminating`,
//! holding the `kubernetes` finalizer — has its content deleted, kind by kind as discovery
//! lists them, and is then finalized (the API server removes it once no finalizer is left).

use std::sync::Arc;
use std::time::Duration;

use crate::workqueue::{Action, Controller};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

/// The finalizer the API server puts on every namespace.
pub const FINALIZER: &str = "kubernetes";

/// What the reconciler needs.
pub struct Ctx {
    /// The API client.
    pub client: Client,
}

/// Reconcile errors (retried with back-off).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed")]
    Api(#[from] kube::Error),
}

/// Every namespaced resource that can be listed and deleted, from discovery.
async fn namespaced_resources(client: &Client) -> Result<Vec<ApiResource>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope == Scope::Namespaced
                && caps.supports_operation(verbs::LIST)
                && caps.supports_operation(verbs::DELETE)
                && ar.plural != "events"
            {
                out.push(ar);
            }
        }
    }
    // Events go last, so what the deletions record is cleaned up too.
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope == Scope::Namespaced && ar.plural == "events" {
                out.push(ar);
            }
        }
    }
    Ok(out)
}

/// Deletes what is in a Terminating namespace; finalizes it once empty.
///
/// # Errors
/// API failures (retried with back-off).
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = ns.name_any();
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let mut remaining = 0usize;
    for ar in namespaced_resources(&ctx.client).await? {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, &ar);
        let items = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => continue,
            Err(e) => return Err(e.into()),
        };
        if items.is_empty() {
            continue;
        }
        remaining += items.len();
        match api
            .delete_collection(&DeleteParams::background(), &ListParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => {
                for item in items {
                    let _ = api
                        .delete(&item.name_any(), &DeleteParams::background())
                        .await;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    if remaining > 0 {
        // Graceful deletions (pods on nodes) take a moment; look again.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let mut finalized = (*ns).clone();
    finalized
        .spec
        .get_or_insert_with(Default::default)
        .finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// Runs the namespace controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
    });
    let controller = Controller::new(Api::<Namespace>::all(client), watcher::Config::default());
    // It reads no cache: nothing to wait for.
    let synced = || futures::future::ready(());
    crate::drive(controller, "namespace", synced, reconcile, ctx, shutdown).await;
}
