//! Where a component's client configuration comes from, and the client built from it.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::failover::Servers;
use crate::local::Local;

/// Where to find the cluster: a kubeconfig file, or (by default) `KUBECONFIG`,
/// `~/.kube/config` and then the in-cluster service account, as kube-rs's `Config::infer`
/// and client-go's `rest.InClusterConfig` do; plus further API servers to fail over to.
#[derive(Debug, Clone, Default)]
pub struct Source {
    kubeconfig: Option<PathBuf>,
    servers: Vec<String>,
    local: Option<Local>,
}

impl Source {
    /// `KUBECONFIG`, `~/.kube/config`, then the in-cluster configuration.
    pub fn infer() -> Self {
        Source::default()
    }

    /// This kubeconfig file (its current context).
    pub fn kubeconfig(path: impl Into<PathBuf>) -> Self {
        Source {
            kubeconfig: Some(path.into()),
            servers: Vec::new(),
            local: None,
        }
    }

    /// The configured server runs in this process: requests reach it through `local`, not
    /// a socket (it stays first; the others are still there to fail over to).
    #[must_use]
    pub fn local(mut self, local: Local) -> Self {
        self.local = Some(local);
        self
    }

    /// Further API servers (`https://host:port`) of the same cluster, tried in order when the
    /// configured one refuses connections. They share its credentials and CA.
    #[must_use]
    pub fn servers(mut self, servers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.servers.extend(servers.into_iter().map(Into::into));
        self
    }

    /// The kubeconfig file, when one is named.
    pub fn kubeconfig_path(&self) -> Option<&Path> {
        self.kubeconfig.as_deref()
    }
}

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named kubeconfig could not be read or used.
    #[error("cannot load the kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither a kubeconfig nor the in-cluster configuration was found.
    #[error("cannot find the cluster (no kubeconfig, not in a pod)")]
    Infer(#[source] kube::config::InferConfigError),
    /// An extra API server address is not a URL.
    #[error("bad API server address {0:?}")]
    Server(String),
    /// The client stack could not be built (TLS, credentials).
    #[error("cannot build the client")]
    Client(#[source] kube::Error),
}

/// A client and the configuration it was built from (its credentials and CA, for components
/// that also talk to the cluster's registry).
#[derive(Clone)]
pub struct Connection {
    /// The client, failing over between [`Connection::servers`].
    pub client: kube::Client,
    /// The configuration of the first server.
    pub config: kube::Config,
    /// The API servers the client uses.
    pub servers: Servers,
}

/// Reads the configuration `source` names.
///
/// # Errors
/// When the kubeconfig cannot be read, or there is none and this is not a pod.
pub async fn load(source: &Source) -> Result<kube::Config, Error> {
    match &source.kubeconfig {
        Some(path) => {
            let err = |source| Error::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(err)
        }
        None => kube::Config::infer().await.map_err(Error::Infer),
    }
}

/// Builds the client for `source`.
///
/// # Errors
/// See [`load`]; also when a server address or the TLS configuration is unusable.
pub async fn connect(source: &Source) -> Result<Connection, Error> {
    let config = load(source).await?;
    let mut urls = vec![config.cluster_url.clone()];
    for s in &source.servers {
        let uri: http::Uri = s.parse().map_err(|_| Error::Server(s.clone()))?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(Error::Server(s.clone()));
        }
        if !urls.contains(&uri) {
            urls.push(uri);
        }
    }
    let servers = Servers::new(&config, urls, source.local.as_ref())?;
    if config.cluster_url.scheme_str() == Some("https") {
        servers.follow_endpoints();
    }
    Ok(Connection {
        client: servers.client(&config.default_namespace),
        config,
        servers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: secret}
contexts:
- name: x
  context: {cluster: c, user: u, namespace: team}
current-context: x
"#;

    #[tokio::test]
    async fn a_kubeconfig_source_should_give_its_server_namespace_and_extra_servers() {
        let dir = std::env::temp_dir().join(format!("wk-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("kubeconfig");
        std::fs::write(&path, KUBECONFIG).expect("write kubeconfig");
        let source = Source::kubeconfig(&path).servers(["https://127.0.0.1:2"]);
        let conn = connect(&source).await.expect("connect");
        assert_eq!(conn.config.cluster_url, "https://127.0.0.1:1/");
        assert_eq!(conn.client.default_namespace(), "team");
        assert_eq!(
            conn.servers.urls(),
            ["https://127.0.0.1:1/", "https://127.0.0.1:2/"]
        );
        let bad = Source::kubeconfig(&path).servers(["not a url"]);
        assert!(matches!(connect(&bad).await, Err(Error::Server(_))));
        let missing = Source::kubeconfig(dir.join("absent"));
        let err = connect(&missing).await.err().expect("no such file");
        assert!(err.to_string().contains("absent"), "{err}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
