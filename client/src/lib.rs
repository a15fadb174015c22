//! How wasmkube's components reach the API servers. Every component but the `wasmkube` CLI
//! gets its [`kube::Client`] here, so kubeconfig and in-cluster loading, the list of API
//! servers with fail-over, request retries, the watch helpers and TLS verifiers exist once.
//!
//! ```text
//! Source (kubeconfig | KUBECONFIG, ~/.kube/config | in-cluster) + extra API servers
//!    └─► connect() ─► kube::Config ─► one kube-rs stack per server (auth, TLS, retry 429/503/504)
//!                                      └─► Failover (next server on a refused connection) ─► kube::Client
//!   (a server in this process, `Source::local`: the same layers over its handlers, no socket)
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasmkube_client::Error> {
//! let source = wasmkube_client::Source::kubeconfig("/var/lib/wasmkube/kubeconfig");
//! let conn = wasmkube_client::connect(&source).await?;
//! let version = conn.client.apiserver_version().await;
//! # Ok(()) }
//! ```

pub mod events;
mod failover;
pub mod join;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod proxy;
mod source;
pub mod tls;
pub mod watch;

pub use failover::Servers;
pub use local::Local;
pub use source::{Connection, Error, Source, connect, load};

/// Creates a namespaced `K` from its JSON manifest in `namespace`, and returns it as stored.
///
/// # Errors
/// The API server's refusal (409 when it exists), or [`kube::Error::SerdeError`] when the
/// manifest is not a `K`.
pub async fn create_from_json<K>(
    client: &kube::Client,
    namespace: &str,
    manifest: serde_json::Value,
) -> Result<K, kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let api: kube::Api<K> = kube::Api::namespaced(client.clone(), namespace);
    let obj: K = serde_json::from_value(manifest).map_err(kube::Error::SerdeError)?;
    api.create(&kube::api::PostParams::default(), &obj).await
}
