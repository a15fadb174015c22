//! How wasmkube's components reach the API servers. Every component but the `wasmkube` CLI
//! gets its [`kube::Client`] here, so kubeconfig and in-cluster loading, the list of API
//! servers with fail-over, request retries, the watch helpers and TLS verifiers exist once.
//!
//! ```text
//! Source (kubeconfig | KUBECONFIG, ~/.kube/config | in-cluster) + extra API servers
//!    └─► connect() ─► kube::Config ─► one kube-rs stack per server (auth, TLS, retry 429/503/504)
//!                                      └─► Failover (next server on a refused connection) ─► kube::Client
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasmkube_client::Error> {
//! let source = wasmkube_client::Source::kubeconfig("/var/lib/wasmkube/kubeconfig");
//! let conn = wasmkube_client::connect(&source).await?;
//! let version = conn.client.apiserver_version().await;
//! # Ok(()) }
//! ```

mod failover;
mod source;
pub mod tls;
pub mod watch;

pub use failover::Servers;
pub use source::{Connection, Error, Source, connect, load};
