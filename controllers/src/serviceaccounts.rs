//! What every namespace holds for its pods' identities, as kube-controller-manager's
//! `serviceaccount` and `root-ca-cert-publisher` controllers keep it:
//!
//! - a `default` ServiceAccount (recreated when deleted), which pods without one run as;
//! - the `kube-root-ca.crt` ConfigMap with the cluster CA (`ca.crt`), which every pod's
//!   service-account token volume projects so that a guest can verify the API server.
//!
//! Both are one controller over Namespaces that also watches the object it keeps, so a deleted
//! or edited one is put back at once. The `serviceaccount-token` controller fills Secrets of
//! the legacy type `kubernetes.io/service-account-token` that ask for a token (annotation
//! `kubernetes.io/service-account.name`) with `token`, `ca.crt` and `namespace`: the token is
//! a TokenRequest bound to the Secret, valid while the Secret and the account live (legacy
//! tokens never expire; this one is asked for 2^32 seconds).

use std::fmt::Debug;
use std::sync::Arc;

use crate::workqueue::{Action, Controller};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// The ConfigMap holding the cluster CA in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

/// The ServiceAccount every namespace has.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// The Secret type that holds a legacy ServiceAccount token.
pub const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";

/// The annotations naming a token Secret's account.
const ACCOUNT_NAME: &str = "kubernetes.io/service-account.name";
const ACCOUNT_UID: &str = "kubernetes.io/service-account.uid";

/// The lifetime asked for a legacy token (the most TokenRequest grants).
const LEGACY_TOKEN_SECONDS: i64 = 1 << 32;

/// kube-controller-manager's description of the CA ConfigMap.
const ROOT_CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// Keeps a `default` ServiceAccount in every live namespace until `shutdown`.
pub async fn run_serviceaccount(client: Client, shutdown: CancellationToken) {
    let want = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT_SERVICE_ACCOUNT.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    // Any ServiceAccount named `default` will do: users may change it (automount, pull secrets).
    per_namespace(client, "serviceaccount", want, |_, _| true, shutdown).await;
}

/// Keeps the `kube-root-ca.crt` ConfigMap, holding `ca` (PEM), in every live namespace until
/// `shutdown`.
pub async fn run_root_ca_publisher(client: Client, ca: String, shutdown: CancellationToken) {
    let want = root_ca_configmap(ca);
    let same =
        |have: &ConfigMap, want: &ConfigMap| have.data == want.data && have.binary_data.is_none();
    per_namespace(client, "root-ca-cert-publisher", want, same, shutdown).await;
}

fn root_ca_configmap(ca: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CA_CONFIGMAP.into()),
            annotations: Some(
                [(
                    "kubernetes.io/description".into(),
                    ROOT_CA_DESCRIPTION.into(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        data: Some([("ca.crt".into(), ca)].into()),
        ..Default::default()
    }
}

struct TokenCtx {
    client: Client,
    ca: Option<String>,
}

/// Fills legacy token Secrets (see the module's description) until `shutdown`; `ca` is the
/// cluster CA for their `ca.crt`.
pub async fn run_token_secrets(client: Client, ca: Option<String>, shutdown: CancellationToken) {
    let secrets = Controller::new(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default().fields(&format!("type={TOKEN_SECRET_TYPE}")),
    );
    let ctx = Arc::new(TokenCtx { client, ca });
    let synced = || futures::future::ready(());
    crate::drive(
        secrets,
        "serviceaccount-token",
        synced,
        fill_token,
        ctx,
        shutdown,
    )
    .await;
}

async fn fill_token(secret: Arc<Secret>, ctx: Arc<TokenCtx>) -> Result<Action, kube::Error> {
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let Some(account) = annotations.get(ACCOUNT_NAME) else {
        return Ok(Action::await_change());
    };
    let has = |k: &str| secret.data.as_ref().is_some_and(|d| d.contains_key(k));
    if secret.metadata.deletion_timestamp.is_some() || has("token") {
        return Ok(Action::await_change());
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(sa) = accounts.get_opt(account).await? else {
        // kube-controller-manager waits for the account; so does this (its creation does not
        // wake us, so look again).
        return Ok(Action::requeue(std::time::Duration::from_secs(5)));
    };
    if let Some(uid) = annotations.get(ACCOUNT_UID)
        && Some(uid) != sa.metadata.uid.as_ref()
    {
        return Ok(Action::await_change()); // Made for an account since deleted.
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(LEGACY_TOKEN_SECONDS),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
                name: Some(name.clone()),
                uid: secret.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let token = match accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
    {
        Ok(t) => t.status.map(|s| s.token).unwrap_or_default(),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => {
            return Ok(Action::await_change()); // The Secret or the account went.
        }
        Err(e) => return Err(e),
    };
    let mut data = serde_json::Map::new();
    data.insert("token".into(), b64(token.as_bytes()));
    data.insert("namespace".into(), b64(ns.as_bytes()));
    if let Some(ca) = &ctx.ca {
        data.insert("ca.crt".into(), b64(ca.as_bytes()));
    }
    let patch = serde_json::json!({
        "metadata": {
            "annotations": {ACCOUNT_UID: sa.metadata.uid},
            // Written only over the Secret this token is bound to.
            "resourceVersion": secret.metadata.resource_version,
        },
        "data": data,
    });
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    match secrets
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

/// `bytes` as a Secret's `data` holds them (base64).
fn b64(bytes: &[u8]) -> serde_json::Value {
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())).unwrap_or_default()
}

struct Ctx<K> {
    client: Client,
    want: K,
    same: fn(&K, &K) -> bool,
}

/// Runs controller `controller`: every live namespace holds an object like `want` (its name);
/// one that differs by `same` is replaced.
async fn per_namespace<K>(
    client: Client,
    controller: &'static str,
    want: K,
    same: fn(&K, &K) -> bool,
    shutdown: CancellationToken,
) where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug
        + Send
        + Sync
        + 'static,
{
    let name = want.name_any();
    let kept = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let controller_of = Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(Api::<K>::all(client.clone()), kept, |o: K| {
        o.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns))
    });
    let ctx = Arc::new(Ctx { client, want, same });
    // It reads no cache: nothing to wait for.
    let synced = || futures::future::ready(());
    crate::drive(controller_of, controller, synced, reconcile, ctx, shutdown).await;
}

async fn reconcile<K>(ns: Arc<Namespace>, ctx: Arc<Ctx<K>>) -> Result<Action, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::await_change());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns.name_any());
    let name = ctx.want.name_any();
    let written = match api.get_opt(&name).await? {
        None => api
            .create(&PostParams::default(), &ctx.want)
            .await
            .map(drop),
        Some(have) if (ctx.same)(&have, &ctx.want) => Ok(()),
        Some(have) => {
            let mut put = ctx.want.clone();
            put.meta_mut().resource_version = have.resource_version();
            api.replace(&name, &PostParams::default(), &put)
                .await
                .map(drop)
        }
    };
    match written {
        Ok(()) => Ok(Action::await_change()),
        // Someone wrote it meanwhile (its watch event brings us back), or the namespace
        // began terminating (403) or went away.
        Err(kube::Error::Api(s)) if matches!(s.code, 409 | 403 | 404) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_configmap_should_hold_the_bundle_under_ca_crt() {
        let cm = root_ca_configmap("PEM".into());
        assert_eq!(cm.metadata.name.as_deref(), Some("kube-root-ca.crt"));
        assert_eq!(
            cm.data
                .as_ref()
                .and_then(|d| d.get("ca.crt"))
                .map(String::as_str),
            Some("PEM")
        );
        assert!(
            cm.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("kubernetes.io/description"))
        );
    }
}
