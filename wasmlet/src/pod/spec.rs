//! From a PodSpec to what an instance needs: argv, environment (`env`, `envFrom`, `valueFrom`
//! with ConfigMaps, Secrets, `fieldRef` and `resourceFieldRef`), volumes materialised as
//! directories on the node, and limits. Kubernetes' rules throughout: later env entries win,
//! `$(VAR)` references expand (`$$` escapes), configMap/secret/downwardAPI volumes are
//! read-only.
//!
//! ConfigMaps and Secrets are read through the API, and service-account tokens asked for
//! (TokenRequest, bound to the pod); everything else is pure.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, ObjectFieldSelector, Pod,
    ResourceFieldSelector, Secret, ServiceAccount, ServiceAccountTokenProjection, Volume,
};
use kube::Api;

use crate::runtime::instance::{Launch, Mount};
use wasmkube_api::quantity::{bytes, millicores};

mod volumes;

pub(crate) use volumes::{TokenFile, request_token, volumes};

/// Why a container cannot be configured (`CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(pub String);

/// The data of a ConfigMap or Secret, keys to bytes.
type Data = BTreeMap<String, Vec<u8>>;

/// Binary entries, then string entries on top (a Secret's `stringData` wins over its `data`;
/// a ConfigMap's `data` and `binaryData` never share a key).
fn merged(
    binary: Option<BTreeMap<String, k8s_openapi::ByteString>>,
    strings: Option<BTreeMap<String, String>>,
) -> Data {
    let mut all: Data = binary
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    all.extend(
        strings
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    all
}

/// Reads ConfigMaps and Secrets of the pod's namespace, once each.
pub(crate) struct Sources {
    configmaps: Api<ConfigMap>,
    secrets: Api<Secret>,
    /// Where tokens are asked for.
    pub(crate) accounts: Api<ServiceAccount>,
    namespace: String,
    cache: HashMap<(&'static str, String), Option<Data>>,
    shared: Arc<SharedReads>,
    /// The token files written, to renew before they expire.
    pub(crate) tokens: Vec<TokenFile>,
}

/// What a read of one ConfigMap or Secret gives.
type Read = Result<Option<Data>, ConfigError>;

/// The node's reads of ConfigMaps and Secrets in flight, shared by the pods that start at the
/// same time: a pod that needs an object another pod is reading joins that read instead of
/// making its own (every pod's token volume reads its namespace's `kube-root-ca.crt`). The
/// answer is as fresh as a read of its own would be; nothing is kept once it arrives.
#[derive(Default)]
pub(crate) struct SharedReads(std::sync::Mutex<HashMap<ReadKey, InFlight>>);

/// (kind, namespace, name).
type ReadKey = (&'static str, String, String);
type InFlight = futures::future::Shared<BoxFuture<'static, Read>>;

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl SharedReads {
    /// Reads `kind` `namespace/name` through `get`, or joins the read of it in flight.
    async fn read(
        self: &Arc<Self>,
        kind: &'static str,
        namespace: &str,
        name: &str,
        get: BoxFuture<'static, Read>,
    ) -> Read {
        use futures::FutureExt as _;
        let key = (kind, namespace.to_owned(), name.to_owned());
        let read = {
            let mut inflight = self.0.lock().expect("reads lock");
            match inflight.get(&key) {
                Some(r) => r.clone(),
                None => {
                    let (me, key2) = (Arc::clone(self), key.clone());
                    let read: BoxFuture<'static, Read> = Box::pin(async move {
                        let answer = get.await;
                        me.0.lock().expect("reads lock").remove(&key2);
                        answer
                    });
                    let read = read.shared();
                    inflight.insert(key, read.clone());
                    read
                }
            }
        };
        read.await
    }
}

impl Sources {
    /// Sources in `namespace`, sharing reads in flight through `shared`.
    pub(crate) fn new(client: kube::Client, namespace: &str, shared: Arc<SharedReads>) -> Self {
        Self {
            configmaps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client.clone(), namespace),
            accounts: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            cache: HashMap::new(),
            shared,
            tokens: Vec::new(),
        }
    }

    async fn lookup<K>(
        &mut self,
        kind: &'static str,
        api: Api<K>,
        name: &str,
        data: fn(K) -> Data,
    ) -> Result<Option<&Data>, ConfigError>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let key = (kind, name.to_owned());
        if !self.cache.contains_key(&key) {
            let owned = name.to_owned();
            let get: BoxFuture<'static, Read> = Box::pin(async move {
                let obj = api
                    .get_opt(&owned)
                    .await
                    .map_err(|e| ConfigError(format!("reading {kind} {owned:?}: {e}")))?;
                Ok(obj.map(data))
            });
            let got = self.shared.read(kind, &self.namespace, name, get).await?;
            self.cache.insert(key.clone(), got);
        }
        Ok(self.cache[&key].as_ref())
    }

    async fn configmap(&mut self, name: &str) -> Result<Option<&Data>, ConfigError> {
        let api = self.configmaps.clone();
        self.lookup("configmap", api, name, |cm: ConfigMap| {
            merged(cm.binary_data, cm.data)
        })
        .await
    }

    async fn secret(&mut self, name: &str) -> Result<Option<&Data>, ConfigError> {
        let api = self.secrets.clone();
        self.lookup("secret", api, name, |s: Secret| {
            merged(s.data, s.string_data)
        })
        .await
    }
}

/// The node-side facts `fieldRef` can name.
#[derive(Debug, Clone, Default)]
pub(crate) struct PodFacts {
    /// `status.hostIP`.
    pub host_ip: String,
    /// `status.podIP`.
    pub pod_ip: String,
    /// `spec.nodeName`.
    pub node_name: String,
    /// The variables Services give the pod's containers (see `ServiceIndex::link_env`),
    /// before their own `env`.
    pub service_env: Vec<(String, String)>,
}

/// Resolves the launch description of `container` of `pod`.
///
/// # Errors
/// [`ConfigError`] for a missing (non-optional) ConfigMap, Secret or key, a bad field path,
/// or a volume mount naming no volume.
pub(crate) async fn launch(
    pod: &Pod,
    container: &Container,
    volumes: &HashMap<String, (PathBuf, bool)>,
    facts: &PodFacts,
    sources: &mut Sources,
) -> Result<Launch, ConfigError> {
    let mut env: Vec<(String, String)> = facts.service_env.clone();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(r) = &from.config_map_ref {
            (
                sources.configmap(&r.name).await?.cloned(),
                r.optional.unwrap_or(false),
                format!("configmap {:?}", r.name),
            )
        } else if let Some(r) = &from.secret_ref {
            (
                sources.secret(&r.name).await?.cloned(),
                r.optional.unwrap_or(false),
                format!("secret {:?}", r.name),
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(
                        &mut env,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
            None if optional => {}
            None => return Err(ConfigError(format!("{what} not found"))),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(r) = &from.config_map_key_ref {
                    let data = sources.configmap(&r.name).await?;
                    key_value(data, &r.key, &r.name, r.optional, "ConfigMap", ns(pod))?
                } else if let Some(r) = &from.secret_key_ref {
                    let data = sources.secret(&r.name).await?;
                    key_value(data, &r.key, &r.name, r.optional, "Secret", ns(pod))?
                } else if let Some(f) = &from.field_ref {
                    Some(field_value(pod, f, facts)?)
                } else if let Some(r) = &from.resource_field_ref {
                    Some(resource_value(pod, Some(container), r)?)
                } else {
                    None
                }
            }
            (Some(v), None) => Some(expand(v, &env)),
            (None, None) => Some(String::new()),
        };
        if let Some(v) = value {
            set(&mut env, var.name.clone(), v);
        }
    }

    let mut argv: Vec<String> = match &container.command {
        Some(cmd) if !cmd.is_empty() => cmd.iter().map(|a| expand(a, &env)).collect(),
        _ => vec![container.name.clone()],
    };
    argv.extend(container.args.iter().flatten().map(|a| expand(a, &env)));

    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let (dir, always_ro) = volumes.get(&m.name).ok_or_else(|| {
            ConfigError(format!(
                "volume mount {:?} names no volume of the pod",
                m.name
            ))
        })?;
        let host_path = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                if sub.split('/').any(|c| c == "..") || sub.starts_with('/') {
                    return Err(ConfigError(format!(
                        "subPath {sub:?} must be a relative path without '..'"
                    )));
                }
                let p = dir.join(sub);
                std::fs::create_dir_all(&p)
                    .map_err(|e| ConfigError(format!("subPath {sub:?}: {e}")))?;
                p
            }
            None => dir.clone(),
        };
        mounts.push(Mount {
            host_path,
            guest_path: m.mount_path.clone(),
            read_only: *always_ro || m.read_only.unwrap_or(false),
        });
    }

    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    Ok(Launch {
        argv,
        env,
        mounts,
        working_dir: container.working_dir.clone(),
        memory_limit: limits
            .and_then(|l| l.get("memory"))
            .and_then(bytes)
            .map(|b| b as usize),
        cpu_limit_millis: limits.and_then(|l| l.get("cpu")).and_then(millicores),
        pod_net: None,
        usage: Default::default(),
    })
}

/// One key of a ConfigMap's or Secret's data for `valueFrom` (Kubernetes' messages when it is
/// missing; `None` when missing and optional).
fn key_value(
    data: Option<&BTreeMap<String, Vec<u8>>>,
    key: &str,
    name: &str,
    optional: Option<bool>,
    kind: &str,
    namespace: &str,
) -> Result<Option<String>, ConfigError> {
    match (data.and_then(|d| d.get(key)), optional.unwrap_or(false)) {
        (Some(v), _) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
        (None, true) => Ok(None),
        (None, false) if data.is_none() => Err(ConfigError(format!(
            "{} {name:?} not found",
            kind.to_ascii_lowercase()
        ))),
        (None, false) => Err(ConfigError(format!(
            "couldn't find key {key} in {kind} {namespace}/{name}"
        ))),
    }
}

fn ns(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// Expands `$(NAME)` from `env`; `$$` is a literal `$`; unknown references stay as written.
pub(crate) fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix("$(")
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..end + 3]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The value of a `fieldRef` (the paths the downward API supports).
pub(crate) fn field_value(
    pod: &Pod,
    f: &ObjectFieldSelector,
    facts: &PodFacts,
) -> Result<String, ConfigError> {
    let meta = &pod.metadata;
    let path = f.field_path.as_str();
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => ns(pod).to_owned(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => render_map(&meta.labels),
        "metadata.annotations" => render_map(&meta.annotations),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        _ => match keyed("metadata.labels['", &meta.labels)
            .or_else(|| keyed("metadata.annotations['", &meta.annotations))
        {
            Some(v) => v,
            None => {
                return Err(ConfigError(format!(
                    "unsupported fieldRef fieldPath {path:?}"
                )));
            }
        },
    };
    Ok(value)
}

/// `key="value"` lines, sorted, as the downward API writes label and annotation files.
fn render_map(map: &Option<BTreeMap<String, String>>) -> String {
    map.iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of a `resourceFieldRef`, divided by its divisor and rounded up, as Kubernetes does.
/// An unset limit reads as the node's allocatable, which the wasmlet does not know here; it
/// reads as 0 (no limit).
pub(crate) fn resource_value(
    pod: &Pod,
    container: Option<&Container>,
    r: &ResourceFieldSelector,
) -> Result<String, ConfigError> {
    let spec = pod.spec.as_ref();
    let target = match (&r.container_name, container) {
        (Some(name), _) if !name.is_empty() => spec
            .and_then(|s| s.containers.iter().find(|c| &c.name == name))
            .ok_or_else(|| {
                ConfigError(format!("resourceFieldRef names unknown container {name:?}"))
            })?,
        (_, Some(c)) => c,
        _ => {
            return Err(ConfigError(
                "resourceFieldRef needs a containerName here".into(),
            ));
        }
    };
    let (section, resource) = r
        .resource
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("unsupported resource {:?}", r.resource)))?;
    let resources = target.resources.as_ref();
    let q = match section {
        "limits" => resources.and_then(|x| x.limits.as_ref()),
        "requests" => resources.and_then(|x| x.requests.as_ref()),
        _ => {
            return Err(ConfigError(format!(
                "unsupported resource {:?}",
                r.resource
            )));
        }
    }
    .and_then(|m| m.get(resource));
    let Some(q) = q else { return Ok("0".into()) };
    let value = match resource {
        "cpu" => {
            let divisor = r
                .divisor
                .as_ref()
                .and_then(millicores)
                .unwrap_or(1000)
                .max(1);
            millicores(q).unwrap_or(0).div_ceil(divisor)
        }
        "memory" | "ephemeral-storage" => {
            let divisor = r.divisor.as_ref().and_then(bytes).unwrap_or(1).max(1);
            bytes(q).unwrap_or(0).div_ceil(divisor)
        }
        other => return Err(ConfigError(format!("unsupported resource {other:?}"))),
    };
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn references_expand_and_escape_like_kubernetes() {
        let e = env(&[("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &e), "1-two");
        assert_eq!(expand("$$(A) costs $5", &e), "$(A) costs $5");
        assert_eq!(expand("$(MISSING) stays", &e), "$(MISSING) stays");
        assert_eq!(expand("unterminated $(A", &e), "unterminated $(A");
    }

    #[test]
    fn field_refs_read_pod_metadata_and_node_facts() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "x"}},
            "spec": {"containers": [], "serviceAccountName": "sa"}
        }))
        .expect("pod");
        let facts = PodFacts {
            host_ip: "127.0.0.1".into(),
            pod_ip: "127.77.0.2".into(),
            node_name: "n1".into(),
            ..Default::default()
        };
        let get = |p: &str| {
            field_value(
                &pod,
                &ObjectFieldSelector {
                    field_path: p.into(),
                    api_version: None,
                },
                &facts,
            )
        };
        assert_eq!(get("metadata.name").as_deref(), Ok("p"));
        assert_eq!(get("metadata.namespace").as_deref(), Ok("ns"));
        assert_eq!(get("metadata.labels['app']").as_deref(), Ok("x"));
        assert_eq!(get("metadata.labels").as_deref(), Ok("app=\"x\""));
        assert_eq!(get("spec.nodeName").as_deref(), Ok("n1"));
        assert_eq!(get("status.podIP").as_deref(), Ok("127.77.0.2"));
        assert_eq!(get("spec.serviceAccountName").as_deref(), Ok("sa"));
        assert!(get("spec.containers").is_err());
    }

    #[test]
    fn resource_field_refs_divide_and_round_up() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}}]}
        }))
        .expect("pod");
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        let sel = |res: &str, div: Option<&str>| ResourceFieldSelector {
            resource: res.into(),
            divisor: div.map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
            container_name: None,
        };
        assert_eq!(
            resource_value(&pod, Some(c), &sel("limits.memory", Some("1Mi"))).as_deref(),
            Ok("64")
        );
        assert_eq!(
            resource_value(&pod, Some(c), &sel("limits.cpu", None)).as_deref(),
            Ok("1")
        );
        assert_eq!(
            resource_value(&pod, Some(c), &sel("limits.cpu", Some("1m"))).as_deref(),
            Ok("250")
        );
        assert_eq!(
            resource_value(&pod, Some(c), &sel("requests.cpu", None)).as_deref(),
            Ok("0")
        );
    }
}
