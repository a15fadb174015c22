//! The wasmkube API server: the Kubernetes REST API over HTTPS, backed by the raft-replicated
//! redb store. It is the only component that opens the store; every other component is a
//! client of this API, as kube-controller-manager is of kube-apiserver.
//!
//! ```text
//! HTTPS (rustls) ─► authenticate ─► authorize ─► router ─► discovery | object verbs | list | watch
//!   object verbs ─► mutating admission ─► strategy (default, validate) ─► validating admission
//!                ─► reserve (addresses) ─► store (compare-and-swap)
//! ```
//!
//! The kinds live in a [`registry::Registry`] that can gain a kind while the server runs
//! ([`Running::registry`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasmkube_apiserver::Error> {
//! use tokio_util::sync::CancellationToken;
//! let config = wasmkube_apiserver::Config::new("/tmp/wasmkube");
//! let running = wasmkube_apiserver::start(config, CancellationToken::new()).await?;
//! println!("KUBECONFIG={}", running.kubeconfig.display());
//! running.wait().await
//! # }
//! ```

mod admission;
mod apply;
pub mod auth;
mod cache;
pub mod cluster;
mod conn;
mod crd;
mod discovery;
pub mod encryption;
pub mod error;
mod fieldset;
mod instrument;
pub mod kinds;
mod kubernetes_service;
mod list;
mod metrics;
mod nodeauth;
pub mod object;
mod oci;
mod openapi;
pub mod patch;
pub mod pki;
mod podlog;
mod podstream;
mod protobuf;
mod proxy;
mod rbac;
pub mod registry;
pub mod request;
mod rest;
mod review;
mod server;
mod serviceaccount;
pub mod table;
mod tokens;
pub mod validation;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use admission::alloc::Network;
pub use error::{ApiError, FieldError};
pub use server::{ComponentKubeconfigs, Running, start};

use registry::Registry;
use wasmkube_store::Store;

/// [`Config::store_cache_bytes`] unless set.
pub const DEFAULT_STORE_CACHE_BYTES: usize = wasmkube_store::DEFAULT_CACHE_BYTES;

/// [`Config::store_max_sync`] unless set.
pub const DEFAULT_STORE_MAX_SYNC: Duration = wasmkube_store::MAX_SYNC;

/// [`Config::watch_cache_window`] unless set.
pub const DEFAULT_WATCH_CACHE_SIZE: usize = cache::DEFAULT_WINDOW;

/// How to run the API server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory for the store, credentials and the admin kubeconfig.
    pub data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Extra names/addresses for the serving certificate.
    pub extra_sans: Vec<String>,
    /// How often history older than one interval is compacted (kube-apiserver: 5 minutes).
    pub compaction_interval: Duration,
    /// How often watches with `allowWatchBookmarks` get a bookmark.
    pub bookmark_interval: Duration,
    /// How many recent changes the watch cache keeps per resource for watchers that are
    /// behind; one further behind continues from the store's history.
    pub watch_cache_window: usize,
    /// Service, node-port and pod address ranges.
    pub network: Network,
    /// Memory the store's redb may use to cache pages (see [`wasmkube_store::Config`]).
    pub store_cache_bytes: usize,
    /// How long one sync of the raft log may take before a leader steps out of its group
    /// ([`wasmkube_store::Config::max_sync`]; none: never).
    pub store_max_sync: Option<Duration>,
    /// Tests only: the store's failpoints take effect ([`wasmkube_store::Config::failpoints`]).
    pub failpoints: bool,
    /// Where the other servers reach this one's raft transport (mutual TLS); without it the
    /// server is alone and takes no joining servers.
    pub peer_listen: Option<SocketAddr>,
    /// Join this cluster rather than start one (ignored once this server is a member).
    pub join: Option<cluster::Join>,
    /// How long a write or a read of the latest state waits for a majority of the servers
    /// before it fails (504).
    pub write_timeout: Duration,
    /// An `EncryptionConfiguration` file (kube-apiserver's `--encryption-provider-config`);
    /// none: `DATA_DIR/pki/encryption-config.yaml`, made on first start to encrypt Secrets
    /// with a new key (a joining server takes the cluster's).
    pub encryption_provider_config: Option<PathBuf>,
}

impl Config {
    /// Defaults: `127.0.0.1:6443`, compaction every 5 minutes, bookmarks every 30 seconds.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
            extra_sans: Vec::new(),
            compaction_interval: Duration::from_secs(300),
            bookmark_interval: Duration::from_secs(30),
            watch_cache_window: DEFAULT_WATCH_CACHE_SIZE,
            network: Network::default(),
            store_cache_bytes: DEFAULT_STORE_CACHE_BYTES,
            store_max_sync: Some(DEFAULT_STORE_MAX_SYNC),
            failpoints: false,
            peer_listen: None,
            join: None,
            write_timeout: wasmkube_store::WRITE_TIMEOUT,
            encryption_provider_config: None,
        }
    }
}

/// Why the API server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Credentials could not be created or read.
    #[error("credentials")]
    Pki(#[from] pki::PkiError),
    /// TLS configuration failed.
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    /// The store failed.
    #[error("store")]
    Store(#[from] wasmkube_store::Error),
    /// The listener or a file could not be used.
    #[error("I/O")]
    Io(#[from] std::io::Error),
    /// The encryption configuration cannot be used.
    #[error("encryption at rest")]
    Encryption(#[from] encryption::EncryptionError),
    /// Joining the cluster failed.
    #[error("joining the cluster")]
    Join(#[from] wasmkube_client::join::Error),
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
}

/// Runs the API server until `shutdown` is cancelled.
///
/// # Errors
/// When it cannot start, or the store fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    start(config, shutdown).await?.wait().await
}

/// Shared state of the request handlers.
pub struct Apiserver {
    pub(crate) store: Store,
    pub(crate) registry: Registry,
    pub(crate) shutdown: CancellationToken,
    pub(crate) bookmark_interval: Duration,
    pub(crate) openapi: std::sync::Mutex<Option<(u64, Arc<openapi::OpenApi>)>>,
    /// The admission plugins every write passes.
    pub(crate) admission: admission::Chain,
    /// The watch cache of every resource listed or watched so far.
    pub(crate) caches: cache::Caches,
    /// The RBAC policy, from the watch caches.
    pub(crate) rbac: Arc<rbac::Rbac>,
    /// Signs and checks the cluster's tokens.
    pub(crate) tokens: Arc<tokens::Tokens>,
    /// Seals the resources the encryption configuration names before they are written.
    pub(crate) encryption: Arc<encryption::Encryption>,
}

impl Apiserver {
    /// The OpenAPI documents, generated on first use and again after the registry changed.
    pub(crate) fn openapi(&self) -> Arc<openapi::OpenApi> {
        let generation = self.registry.generation();
        let mut cached = self.openapi.lock().expect("openapi lock");
        match &*cached {
            Some((g, doc)) if *g == generation => Arc::clone(doc),
            _ => {
                let doc = Arc::new(openapi::OpenApi::generate(&self.registry));
                *cached = Some((generation, Arc::clone(&doc)));
                doc
            }
        }
    }
}
