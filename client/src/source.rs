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
    /// The first of them, when it runs in this process.
    local: Option<Local>,
}

impl Connection {
    /// The same API servers (the one in this process too, if any) with the credentials of
    /// another kubeconfig: how a wasmlet goes on as its node once it has the node's own.
    pub fn with_credentials(&self, kubeconfig: impl Into<PathBuf>) -> Source {
        Source {
            kubeconfig: Some(kubeconfig.into()),
            servers: self.servers.urls(),
            local: self.local.clone(),
        }
    }
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
        local: source.local.clone(),
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

    #[tokio::test]
    async fn a_local_server_should_take_the_requests_and_stay_with_other_credentials() {
        use std::sync::{Arc, Mutex};
        // An "API server in this process" that notes, per request, whether the caller showed a
        // certificate and its bearer token, and answers `/version`.
        type Seen = Arc<Mutex<Vec<(bool, Option<String>)>>>;
        let seen: Seen = Arc::default();
        let local = {
            let seen = Arc::clone(&seen);
            crate::Local::new(move |cert| {
                let (seen, has_cert) = (Arc::clone(&seen), cert.is_some());
                crate::local::LocalService::new(tower::service_fn(
                    move |req: http::Request<kube::client::Body>| {
                        let auth = req
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        seen.lock().expect("lock").push((has_cert, auth));
                        async move {
                            use http_body_util::BodyExt as _;
                            let body = http_body_util::Full::new(bytes::Bytes::from_static(
                                br#"{"major":"1","minor":"33","gitVersion":"v1.33.0-local"}"#,
                            ))
                            .map_err(|never| match never {})
                            .boxed_unsync();
                            Ok(http::Response::new(body))
                        }
                    },
                ))
            })
        };
        let dir = std::env::temp_dir().join(format!("wk-client-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let admin = dir.join("admin");
        std::fs::write(&admin, KUBECONFIG).expect("write kubeconfig");
        let node = dir.join("node");
        std::fs::write(
            &node,
            KUBECONFIG.replace("token: secret", "token: node-secret"),
        )
        .expect("write kubeconfig");
        let conn = connect(&Source::kubeconfig(&admin).local(local))
            .await
            .expect("connect");
        let v = conn.client.apiserver_version().await.expect("answered");
        assert_eq!(
            v.git_version, "v1.33.0-local",
            "no socket: 127.0.0.1:1 is closed"
        );
        let as_node = connect(&conn.with_credentials(&node))
            .await
            .expect("connect as the node");
        let v = as_node.client.apiserver_version().await.expect("answered");
        assert_eq!(v.git_version, "v1.33.0-local");
        assert_eq!(
            *seen.lock().expect("lock"),
            [
                (false, Some("Bearer secret".to_owned())),
                (false, Some("Bearer node-secret".to_owned()))
            ]
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
