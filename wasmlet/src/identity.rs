//! The node's own identity: user `system:node:NAME` in group `system:nodes`, as a kubelet has.
//!
//! A wasmlet gets it once and keeps it in `DATA_DIR/node-credentials.json`:
//! - joining with a node token (`wasmkube wasmlet --join URL --token-file FILE`, see
//!   [`join`]): it never holds more than its own credentials;
//! - or, started with other credentials (an administrator's kubeconfig, as `wasmkube up`
//!   does), by asking the API server for them with those credentials ([`ensure`]), and from
//!   then on using its own.
//!
//! The token goes to the API (and the cluster registry); the certificate is the wasmlet's on
//! its endpoint (logs, exec, port-forward; only callers in `system:masters` are served) and
//! on node tunnels (mutual TLS, peers must be in `system:nodes`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use wasmkube_client::join::{self, NodeCredentials, write_private};

use crate::Error;

const FILE: &str = "node-credentials.json";
/// The kubeconfig with the node's own credentials, in the data directory.
pub const KUBECONFIG: &str = "wasmlet.kubeconfig";

/// The group every node is in.
pub(crate) const NODES_GROUP: &str = "system:nodes";
/// The group of the cluster's administrators (the API server's kubelet client is in it).
pub(crate) const MASTERS_GROUP: &str = "system:masters";

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    node: String,
    credentials: NodeCredentials,
}

/// A verified TLS peer: the user and groups its certificate names.
pub(crate) use wasmkube_client::tls::Peer;

/// The TLS configurations built on the node's certificate.
pub struct NodeTls {
    /// For the tunnel listener: a client certificate from the cluster CA is required.
    pub(crate) tunnel_server: Arc<rustls::ServerConfig>,
    /// For tunnels to other nodes: shows this node's certificate, trusts only the cluster CA.
    pub(crate) tunnel_client: Arc<rustls::ClientConfig>,
    /// For the wasmlet's endpoint: HTTP/2 and HTTP/1.1, a client certificate is asked for.
    pub(crate) endpoint: Arc<rustls::ServerConfig>,
    /// For guests' `https://` requests inside the cluster (`wasi:http`): trusts only the
    /// cluster CA, shows no certificate.
    pub(crate) guest_https: Arc<rustls::ClientConfig>,
}

fn tls_error(e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(format!(
        "the node's credentials: {e}"
    )))
}

impl NodeTls {
    /// From the node's credentials.
    ///
    /// # Errors
    /// When the certificate, key or CA cannot be parsed.
    pub fn new(c: &NodeCredentials) -> Result<NodeTls, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(c.certificate.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(tls_error)?;
        let key = PrivateKeyDer::from_pem_slice(c.key.as_bytes()).map_err(tls_error)?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(c.ca.as_bytes()) {
            roots.add(ca.map_err(tls_error)?).map_err(tls_error)?;
        }
        let roots = Arc::new(roots);
        let verifier = |anonymous: bool| {
            let b = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::clone(&roots),
                Arc::clone(&provider),
            );
            if anonymous {
                b.allow_unauthenticated().build()
            } else {
                b.build()
            }
            .map_err(tls_error)
        };
        let server = |anonymous: bool| -> Result<rustls::ServerConfig, Error> {
            rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(tls_error)?
                .with_client_cert_verifier(verifier(anonymous)?)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(tls_error)
        };
        let mut endpoint = server(true)?;
        endpoint.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tunnel_client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(Arc::clone(&roots))
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(tls_error)?;
        let mut guest_https = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(Arc::clone(&roots))
            .with_no_client_auth();
        guest_https.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(NodeTls {
            tunnel_server: Arc::new(server(false)?),
            tunnel_client: Arc::new(tunnel_client),
            endpoint: Arc::new(endpoint),
            guest_https: Arc::new(guest_https),
        })
    }
}

/// The credentials stored in `dir` for node `node`.
fn load(dir: &Path, node: &str) -> Option<NodeCredentials> {
    let stored: Stored = serde_json::from_slice(&std::fs::read(dir.join(FILE)).ok()?).ok()?;
    (stored.node == node).then_some(stored.credentials)
}

fn store(dir: &Path, node: &str, credentials: &NodeCredentials) -> Result<(), Error> {
    let stored = Stored {
        node: node.to_owned(),
        credentials: credentials.clone(),
    };
    write_private(
        &dir.join(FILE),
        &serde_json::to_vec(&stored).expect("serializes"),
    )?;
    Ok(())
}

/// Joins node `node` to the cluster of `server` with a node (or join) token, keeps its
/// credentials in `dir`, and writes `dir/wasmlet.kubeconfig` with them; its path. A node that already
/// has credentials for this cluster keeps them.
///
/// # Errors
/// When the server cannot be reached, is not the token's cluster, or refuses.
pub async fn join(
    server: &str,
    token: &join::JoinToken,
    node: &str,
    dir: &Path,
) -> Result<PathBuf, Error> {
    let credentials = match load(dir, node) {
        Some(c) if token.names(&c.ca) => c,
        _ => {
            let c = join::join_node(server, token, node)
                .await
                .map_err(|e| Error::Join(Box::new(e)))?;
            store(dir, node, &c)?;
            tracing::info!(node, %server, "joined the cluster");
            c
        }
    };
    let path = dir.join(KUBECONFIG);
    write_private(&path, credentials.kubeconfig(server, node).as_bytes())?;
    Ok(path)
}

/// The node's credentials, and a connection that uses them: the stored ones when they are for
/// this node and the cluster `conn` reaches, otherwise new ones asked of the API server with
/// `conn`'s credentials.
///
/// # Errors
/// When the API server refuses (the credentials are not an administrator's) or cannot be
/// reached, or the new kubeconfig cannot be used.
pub(crate) async fn ensure(
    dir: &Path,
    node: &str,
    conn: wasmkube_client::Connection,
) -> Result<(NodeCredentials, wasmkube_client::Connection), Error> {
    let same_ca = |c: &NodeCredentials| {
        let ours: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(c.ca.as_bytes())
            .filter_map(|d| d.ok().map(|d| d.to_vec()))
            .collect();
        // The CA the client configuration trusts (DER), if it names one.
        conn.config
            .root_cert
            .as_ref()
            .is_none_or(|theirs| theirs.is_empty() || ours == *theirs)
    };
    let credentials = match load(dir, node) {
        Some(c) if same_ca(&c) => c,
        _ => {
            let body = serde_json::to_vec(&join::NodeRequest {
                node_name: node.to_owned(),
            })
            .expect("serializes");
            let request = http::Request::post(join::NODE_JOIN_PATH)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .expect("a well-formed request");
            let answer = conn
                .client
                .request_text(request)
                .await
                .map_err(Error::Register)?;
            let c: NodeCredentials = serde_json::from_str(&answer).map_err(tls_error)?;
            store(dir, node, &c)?;
            tracing::info!(node, "got the node's own credentials");
            c
        }
    };
    let own = {
        use secrecy::ExposeSecret;
        conn.config
            .auth_info
            .token
            .as_ref()
            .is_some_and(|t| t.expose_secret() == credentials.token)
    };
    if own {
        return Ok((credentials, conn));
    }
    // From here on the node acts as itself, on the same servers.
    let path = dir.join(KUBECONFIG);
    let server = conn.config.cluster_url.to_string();
    write_private(
        &path,
        credentials
            .kubeconfig(server.trim_end_matches('/'), node)
            .as_bytes(),
    )?;
    let conn = wasmkube_client::connect(&conn.with_credentials(&path)).await?;
    Ok((credentials, conn))
}

/// A throwaway cluster CA for tests.
#[cfg(test)]
pub(crate) mod testing {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    };
    use wasmkube_client::join::NodeCredentials;

    /// A CA that issues credentials.
    pub(crate) struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        pub(crate) fn new() -> Ca {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let pem = params.clone().self_signed(&key).expect("ca").pem();
            Ca {
                pem,
                issuer: Issuer::new(params, key),
            }
        }

        /// Credentials for user `cn` in group `org`, with DNS name `dns`.
        pub(crate) fn credentials(&self, cn: &str, org: &str, dns: &str) -> NodeCredentials {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(vec![dns.to_owned()]).expect("params");
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            dn.push(DnType::OrganizationName, org);
            params.distinguished_name = dn;
            params.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            NodeCredentials {
                token: String::new(),
                certificate: params.signed_by(&key, &self.issuer).expect("cert").pem(),
                key: key.serialize_pem(),
                ca: self.pem.clone(),
            }
        }
    }
}
