//! Joining a cluster with a join token, as k3s does: the token names the cluster CA by its
//! SHA-256 and carries a secret. A newcomer fetches the CA without trusting anyone
//! (`GET /wasmkube/cacerts`), keeps it only when its hash is the token's, and from then on
//! talks to the server over TLS verified by that CA, showing the secret as a bearer token.
//!
//! ```text
//! token = wk1::<sha256 of ca.crt, hex>::<secret>
//! newcomer ── GET /wasmkube/cacerts (unverified TLS) ──► server: ca.crt ── hash checked
//!          ── POST /wasmkube/join (CA-verified, Bearer secret) ──► credentials
//! ```
//!
//! A server joins with `DATA_DIR/join-token`; a node (a wasmlet) joins with
//! `DATA_DIR/node-token`, whose secret only buys node credentials ([`join_node`]).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Where a newcomer fetches the cluster CA, unauthenticated.
pub const CA_PATH: &str = "/wasmkube/cacerts";
/// Where a node is given its credentials (`POST`, [`NodeRequest`] → [`NodeCredentials`]).
pub const NODE_JOIN_PATH: &str = "/wasmkube/join-node";

/// What a joining node asks for.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRequest {
    /// The Node's name.
    pub node_name: String,
}

/// A node's own credentials: user `system:node:NAME` in group `system:nodes`.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCredentials {
    /// A bearer token for the API (and the cluster registry).
    pub token: String,
    /// A certificate from the cluster CA (PEM), client and server, for node tunnels and the
    /// node's own endpoint.
    pub certificate: String,
    /// Its private key (PEM).
    pub key: String,
    /// The cluster CA (PEM).
    pub ca: String,
}

impl fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCredentials").finish_non_exhaustive()
    }
}

impl NodeCredentials {
    /// A kubeconfig for API server `server` with these credentials.
    pub fn kubeconfig(&self, server: &str, node: &str) -> String {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: wasmkube\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: system:node:{node}\n  user:\n    token: {token}\ncontexts:\n- name: wasmkube\n  context:\n    cluster: wasmkube\n    user: system:node:{node}\ncurrent-context: wasmkube\n",
            token = self.token
        )
    }
}

const PREFIX: &str = "wk1";

/// A cluster join token: the CA's hash and the join secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    ca_sha256: String,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_sha256", &self.ca_sha256)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}::{}::{}", self.ca_sha256, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let mut parts = s.trim().splitn(3, "::");
        match (parts.next(), parts.next(), parts.next()) {
            (Some(PREFIX), Some(hash), Some(secret))
                if hash.len() == 64
                    && hash.bytes().all(|b| b.is_ascii_hexdigit())
                    && !secret.is_empty() =>
            {
                Ok(JoinToken {
                    ca_sha256: hash.to_ascii_lowercase(),
                    secret: secret.to_owned(),
                })
            }
            _ => Err(Error::Token),
        }
    }
}

impl JoinToken {
    /// The token for a cluster whose CA certificate is `ca_pem`.
    pub fn new(ca_pem: &str, secret: impl Into<String>) -> JoinToken {
        JoinToken {
            ca_sha256: hex::encode(Sha256::digest(ca_pem.as_bytes())),
            secret: secret.into(),
        }
    }

    /// The secret a joining server shows.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Whether `ca_pem` is the CA this token names.
    pub fn names(&self, ca_pem: &str) -> bool {
        hex::encode(Sha256::digest(ca_pem.as_bytes())) == self.ca_sha256
    }
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The token is not `wk1::<64 hex digits>::<secret>`.
    #[error("the join token is malformed (expected wk1::<sha256 of the CA>::<secret>)")]
    Token,
    /// The server's CA is not the one the token names: another cluster, or someone in between.
    #[error("the server's CA does not match the join token")]
    CaMismatch,
    /// The server URL or the CA certificate is unusable.
    #[error("cannot reach {server}: {why}")]
    Setup {
        /// The server.
        server: String,
        /// Why.
        why: String,
    },
    /// The request failed or was refused.
    #[error("{server} answered the request for {path} with an error")]
    Request {
        /// The server.
        server: String,
        /// The path.
        path: String,
        /// The cause (a `Status` for a refusal).
        #[source]
        source: kube::Error,
    },
}

/// A client for `server` (`https://host:port`), verified by `ca_pem`.
fn client(server: &str, ca_pem: &str) -> Result<kube::Client, Error> {
    let setup = |why: String| Error::Setup {
        server: server.to_owned(),
        why,
    };
    let url: http::Uri = server.parse().map_err(|_| setup("not a URL".into()))?;
    let mut config = kube::Config::new(url);
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(format!("the CA certificate: {e}")))?;
    config.root_cert = Some(certs);
    kube::Client::try_from(config).map_err(|e| setup(e.to_string()))
}

/// `GET path` from `server` over TLS that verifies nothing: only for the CA, which the
/// caller then checks against the token. The body.
async fn get_unverified(server: &str, path: &str) -> Result<String, Error> {
    use http_body_util::BodyExt;
    let failed = |why: String| Error::Setup {
        server: server.to_owned(),
        why,
    };
    let url: http::Uri = server.parse().map_err(|_| failed("not a URL".into()))?;
    let (Some(host), Some(authority)) = (url.host(), url.authority()) else {
        return Err(failed("not a URL with a host".into()));
    };
    let host = host.trim_matches(['[', ']']).to_owned();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), url.port_u16().unwrap_or(443)))
        .await
        .map_err(|e| failed(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|e| failed(format!("server name: {e}")))?;
    let tls = crate::tls::insecure_connector()
        .connect(name, tcp)
        .await
        .map_err(|e| failed(format!("TLS: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| failed(e.to_string()))?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, authority.as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| failed(e.to_string()))?;
    let resp = sender
        .send_request(request)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(failed(format!("{path} answered {status}")));
    }
    String::from_utf8(body.to_vec()).map_err(|e| failed(e.to_string()))
}

/// Sends a request with a JSON body (or none) and `bearer` as credential, to a server
/// verified by `ca_pem`; the answer's body.
///
/// # Errors
/// [`Error::Setup`] for a bad URL or CA; [`Error::Request`] when the server refuses or is
/// not reached.
pub async fn call(
    server: &str,
    ca_pem: &str,
    bearer: &str,
    method: http::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<String, Error> {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::AUTHORIZATION, format!("Bearer {bearer}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body.map(|b| b.to_string().into_bytes()).unwrap_or_default());
    send(server, ca_pem, request).await
}

/// Sends `request` to `server` (verified by `ca_pem`); the body.
async fn send(
    server: &str,
    ca_pem: &str,
    request: http::Result<http::Request<Vec<u8>>>,
) -> Result<String, Error> {
    let request = request.map_err(|e| Error::Setup {
        server: server.to_owned(),
        why: e.to_string(),
    })?;
    let path = request.uri().path().to_owned();
    client(server, ca_pem)?
        .request_text(request)
        .await
        .map_err(|source| Error::Request {
            server: server.to_owned(),
            path,
            source,
        })
}

/// Fetches the cluster CA from `server` and checks it against `token`.
///
/// # Errors
/// [`Error::CaMismatch`] when the server's CA is not the token's; otherwise as [`call`].
pub async fn cluster_ca(server: &str, token: &JoinToken) -> Result<String, Error> {
    let pem = get_unverified(server, CA_PATH).await?;
    if token.names(&pem) {
        Ok(pem)
    } else {
        Err(Error::CaMismatch)
    }
}

/// Writes a file readable only by its owner (credentials), replacing it whole: a temporary
/// file, synced, renamed over it. Creates the directory.
///
/// # Errors
/// When the directory or file cannot be written.
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Joins node `node` to the cluster `server` belongs to: checks the server's CA against
/// `token` (the node token or the cluster join token) and asks for the node's credentials.
///
/// # Errors
/// [`Error::CaMismatch`] when the server is not the token's cluster; otherwise as [`call`].
pub async fn join_node(
    server: &str,
    token: &JoinToken,
    node: &str,
) -> Result<NodeCredentials, Error> {
    let ca = cluster_ca(server, token).await?;
    let body = serde_json::to_value(NodeRequest {
        node_name: node.to_owned(),
    })
    .expect("serializes");
    let answer = call(
        server,
        &ca,
        token.secret(),
        http::Method::POST,
        NODE_JOIN_PATH,
        Some(&body),
    )
    .await?;
    serde_json::from_str(&answer).map_err(|e| Error::Setup {
        server: server.to_owned(),
        why: format!("it answered the node join with something else: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_should_name_its_ca_and_survive_a_round_trip_through_text() {
        let token = JoinToken::new("-----BEGIN CERTIFICATE-----\nabc\n", "s3cret");
        let text = token.to_string();
        assert!(text.starts_with("wk1::"), "{text}");
        let parsed: JoinToken = format!("{text}\n").parse().expect("parses");
        assert_eq!(parsed, token);
        assert!(parsed.names("-----BEGIN CERTIFICATE-----\nabc\n"));
        assert!(!parsed.names("-----BEGIN CERTIFICATE-----\nabd\n"));
        assert_eq!(parsed.secret(), "s3cret");
        assert!(
            !format!("{parsed:?}").contains("s3cret"),
            "Debug hides the secret"
        );
        for bad in [
            "",
            "wk1::abc::s",
            "wk2::{h}::s",
            "wk1::{h}::",
            "K10{h}::server:s",
        ] {
            let bad = bad.replace("{h}", &"a".repeat(64));
            assert!(bad.parse::<JoinToken>().is_err(), "{bad:?}");
        }
    }
}
