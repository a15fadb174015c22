//! The ServiceAccount admission plugin, as kube-apiserver's: a new pod runs as its namespace's
//! `default` ServiceAccount unless it names one; the account must exist (403 otherwise); the
//! pod gets the account's `imagePullSecrets` when it has none; and, unless the pod or the account
//! says `automountServiceAccountToken: false`, a `kube-api-access-XXXXX` projected volume — a
//! bound token (`token`), the cluster CA (`ca.crt` from the `kube-root-ca.crt` ConfigMap) and
//! the namespace (`namespace`) — mounted read-only at
//! `/var/run/secrets/kubernetes.io/serviceaccount` in every container that has nothing there.
//!
//! Accounts are read from the watch cache. One it does not have is looked for again once the
//! cache has caught up with the store (and, for `default`, as it appears in the cache for up to
//! 1.5 s: the controller that creates it may be a moment behind a new namespace), as
//! kube-apiserver's plugin falls back to live reads.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use rand::Rng;
use serde_json::{Value, json};
use wasmkube_api::ResourceInfo;
use wasmkube_store::Store;

use super::{Mutating, Operation, Request};
use crate::cache::Cacher;
use crate::error::ApiError;

/// Where every container finds its account's credentials.
pub(crate) const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The token volume's name, before its random suffix.
const VOLUME_PREFIX: &str = "kube-api-access-";

/// The token lifetime the volume asks for (kube-apiserver's: one hour and 7 s, the 7 s marking
/// the tokens of this volume).
const TOKEN_SECONDS: i64 = 3607;

/// The annotation that marks a node's mirror of a static pod, which has no account.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// How long the cache may take to catch up with the store.
const CATCH_UP: Duration = Duration::from_secs(1);

/// How long a missing `default` account is waited for.
const DEFAULT_WAIT: Duration = Duration::from_millis(1500);

pub(crate) struct ServiceAccountAdmission {
    /// ServiceAccounts, from the watch cache.
    accounts: Arc<Cacher>,
    store: Store,
    info: ResourceInfo,
}

impl ServiceAccountAdmission {
    pub(crate) fn new(accounts: Arc<Cacher>, store: Store) -> Self {
        ServiceAccountAdmission {
            accounts,
            store,
            info: ResourceInfo::of::<ServiceAccount>(),
        }
    }

    /// The account `ns/name`, from the cache: at once, once the cache has what the store has
    /// now, or (`default`) once it appears there.
    async fn account(&self, ns: &str, name: &str) -> Result<Option<ServiceAccount>, ApiError> {
        let key = self.info.key(Some(ns), name);
        let cached = || {
            self.accounts
                .get(&key)
                .and_then(|o| serde_json::from_slice::<ServiceAccount>(&o.json()).ok())
        };
        if let Some(a) = cached() {
            return Ok(Some(a));
        }
        if !self.accounts.wait_current(CATCH_UP).await {
            // The cache cannot say (still loading): ask the store.
            return Ok(match self.store.get(&key).await? {
                Some(kv) => serde_json::from_slice(&kv.value).ok(),
                None => None,
            });
        }
        if name == "default" {
            let mut changes = self.accounts.subscribe();
            let appeared = async {
                while cached().is_none() {
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(DEFAULT_WAIT, appeared).await;
        }
        Ok(cached())
    }
}

#[async_trait::async_trait]
impl Mutating for ServiceAccountAdmission {
    fn handles(&self, req: &Request<'_>) -> bool {
        req.operation == Operation::Create
            && req.is::<k8s_openapi::api::core::v1::Pod>()
            && req.namespace.is_some()
    }

    async fn admit(&self, req: &Request<'_>, pod: &mut Value) -> Result<(), ApiError> {
        if pod["metadata"]["annotations"]
            .get(MIRROR_ANNOTATION)
            .is_some()
        {
            return Ok(());
        }
        let ns = req.namespace.unwrap_or_default();
        let spec = &mut pod["spec"];
        if !spec.is_object() {
            return Ok(()); // The strategy refuses it.
        }
        let name = [&spec["serviceAccountName"], &spec["serviceAccount"]]
            .into_iter()
            .find_map(|v| v.as_str().filter(|s| !s.is_empty()))
            .unwrap_or("default")
            .to_owned();
        spec["serviceAccountName"] = json!(name);
        let Some(account) = self.account(ns, &name).await? else {
            let pods = ResourceInfo::of::<k8s_openapi::api::core::v1::Pod>();
            return Err(ApiError::forbidden(
                &pods,
                req.name,
                &format!(
                    "error looking up service account {ns}/{name}: serviceaccount \"{name}\" not found"
                ),
            ));
        };
        let automount = spec["automountServiceAccountToken"]
            .as_bool()
            .or(account.automount_service_account_token)
            .unwrap_or(true);
        if automount {
            mount_token(spec);
        }
        let has_pull_secrets = spec["imagePullSecrets"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if !has_pull_secrets
            && let Some(secrets) = account.image_pull_secrets.filter(|s| !s.is_empty())
        {
            spec["imagePullSecrets"] = Value::Array(
                secrets
                    .into_iter()
                    .map(|s| json!({"name": s.name}))
                    .collect(),
            );
        }
        Ok(())
    }
}

/// Adds the token volume (unless one is there) and mounts it in every container with nothing
/// at [`TOKEN_MOUNT_PATH`].
fn mount_token(spec: &mut Value) {
    let existing = spec["volumes"].as_array().and_then(|vs| {
        vs.iter()
            .filter_map(|v| v["name"].as_str())
            .find(|n| n.starts_with(VOLUME_PREFIX))
            .map(str::to_owned)
    });
    let volume = existing.clone().unwrap_or_else(volume_name);
    let mount = json!({"name": volume, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers.iter_mut().filter(|c| c.is_object()) {
            let taken = c["volumeMounts"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["mountPath"] == TOKEN_MOUNT_PATH));
            if taken {
                continue;
            }
            needed = true;
            match c["volumeMounts"].as_array_mut() {
                Some(ms) => ms.push(mount.clone()),
                None => c["volumeMounts"] = json!([mount]),
            }
        }
    }
    if needed && existing.is_none() {
        let v = token_volume(&volume);
        match spec["volumes"].as_array_mut() {
            Some(vs) => vs.push(v),
            None => spec["volumes"] = json!([v]),
        }
    }
}

/// `kube-api-access-` and five characters of the alphabet kube uses for generated names.
fn volume_name() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{VOLUME_PREFIX}{suffix}")
}

fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn every_container_should_mount_one_token_volume() {
        let mut p = pod(json!({
            "initContainers": [{"name": "i", "image": "x"}],
            "containers": [
                {"name": "a", "image": "x", "volumeMounts": [{"name": "d", "mountPath": "/data"}]},
                {"name": "b", "image": "x"},
            ],
            "volumes": [{"name": "d", "emptyDir": {}}],
        }));
        mount_token(&mut p["spec"]);
        let volumes = p["spec"]["volumes"].as_array().expect("volumes");
        assert_eq!(volumes.len(), 2);
        let name = volumes[1]["name"].as_str().expect("name");
        assert!(
            name.starts_with("kube-api-access-") && name.len() == 21,
            "{name}"
        );
        let sources = &volumes[1]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(sources[2]["downwardAPI"]["items"][0]["path"], "namespace");
        for c in [
            &p["spec"]["initContainers"][0],
            &p["spec"]["containers"][0],
            &p["spec"]["containers"][1],
        ] {
            let mounts = c["volumeMounts"].as_array().expect("mounts");
            let m = mounts.last().expect("one mount");
            assert_eq!(m["name"], name);
            assert_eq!(m["mountPath"], TOKEN_MOUNT_PATH);
            assert_eq!(m["readOnly"], true);
        }
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"][0]["name"], "d");
    }

    #[test]
    fn a_container_with_its_own_mount_there_should_keep_it() {
        let mut p = pod(json!({
            "containers": [{"name": "a", "image": "x",
                "volumeMounts": [{"name": "mine", "mountPath": TOKEN_MOUNT_PATH}]}],
            "volumes": [{"name": "mine", "secret": {"secretName": "s"}}],
        }));
        let before = p.clone();
        mount_token(&mut p["spec"]);
        assert_eq!(
            p, before,
            "no container needs the token volume, so none is added"
        );
    }

    #[test]
    fn an_existing_token_volume_should_be_reused() {
        let mut p = pod(json!({
            "containers": [{"name": "a", "image": "x"}],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": []}}],
        }));
        mount_token(&mut p["spec"]);
        assert_eq!(p["spec"]["volumes"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"][0]["name"],
            "kube-api-access-abcde"
        );
    }
}
