//! First-start credentials in the data directory: a cluster CA, the apiserver's serving
//! certificate signed by it, and the admin bearer token; plus the admin kubeconfig.

use std::path::{Path, PathBuf};

use base64::Engine;
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Why credentials could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating a key or certificate.
    #[error("certificate generation failed")]
    Cert(#[from] rcgen::Error),
    /// The token signing key (`pki/sa.key`) is not an ECDSA P-256 key.
    #[error("the token signing key (pki/sa.key) is unusable")]
    TokenKey(#[source] jsonwebtoken::errors::Error),
    /// Building a TLS configuration from the credentials.
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
}

/// A leaf certificate from the cluster CA (whose key is `ca_key_pem`) for `sans`, named `cn`
/// (a user name, for client certificates) in organization `org` (a group), for these uses;
/// its PEM and its key's PEM.
fn issue(
    ca_key_pem: &str,
    sans: Vec<String>,
    (cn, org): (&str, Option<&str>),
    uses: Vec<rcgen::ExtendedKeyUsagePurpose>,
) -> Result<(String, String), PkiError> {
    // The issuer is rebuilt from the same parameters the CA was made with: its subject and key
    // identify it, which is all a signed certificate refers to.
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(ca_key_pem)?);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    params.distinguished_name = dn;
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    params.extended_key_usages = uses;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A raft member's TLS towards the other members: the listener requires a client certificate
/// from the cluster CA, and the client shows one and trusts only that CA.
pub struct PeerTls {
    /// For the peer listener.
    pub server: std::sync::Arc<rustls::ServerConfig>,
    /// For calls to the other members.
    pub client: std::sync::Arc<rustls::ClientConfig>,
}

fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM chain.
fn parse_certs(
    pem: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| rustls::Error::General(e.to_string()))
}

/// The private key of a PEM key.
fn parse_key(pem: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| rustls::Error::General(e.to_string()))
}

/// The cluster's credentials.
#[derive(Clone)]
pub struct Pki {
    /// CA certificate (PEM), for clients.
    pub ca_pem: String,
    /// Serving certificate chain (PEM).
    pub cert_pem: String,
    /// Serving key (PEM).
    pub key_pem: String,
    /// The admin bearer token.
    pub admin_token: String,
    /// The CA's key (PEM), for servers that join.
    pub(crate) ca_key_pem: String,
    /// The key that signs the cluster's bearer tokens (ECDSA P-256, PKCS#8 PEM, `pki/sa.key`,
    /// the same on every server, as kube-apiserver's `--service-account-signing-key-file`).
    pub(crate) sa_key_pem: String,
}

/// A node's credentials: a bearer token and a client certificate, both naming
/// `system:node:NAME` in group `system:nodes`.
pub(crate) struct NodeIdentity {
    /// Certificate (PEM): client and server, for the API's streaming calls and node tunnels.
    pub(crate) cert_pem: String,
    /// Its key (PEM).
    pub(crate) key_pem: String,
}

/// 32 random bytes as URL-safe base64: a bearer token or secret.
pub(crate) fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.into(),
            source,
        }),
    }
}

/// Writes a file readable only by its owner.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    wasmkube_client::join::write_private(path, contents.as_bytes()).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

/// The API server's client certificate towards wasmlets, in `pki/`.
const KUBELET_CLIENT: &str = "apiserver-kubelet-client.crt";

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "wasmkube-ca");
    params.distinguished_name = dn;
    params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    Ok(params)
}

/// A kubeconfig for user `name` in groups `orgs` with a client certificate signed by the CA in
/// `dir/pki` (kubeadm's `kubeconfig user --client-name --org`); nothing in `dir` changes. What
/// the user may do is RBAC's.
///
/// # Errors
/// When the CA cannot be read or the certificate made.
pub fn user_kubeconfig(
    dir: &Path,
    server: &str,
    name: &str,
    orgs: &[String],
) -> Result<String, PkiError> {
    let pki = dir.join("pki");
    let missing = |path: PathBuf| PkiError::Io {
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no cluster CA here"),
        path,
    };
    let ca_pem = read(&pki.join("ca.crt"))?.ok_or_else(|| missing(pki.join("ca.crt")))?;
    let ca_key_pem = read(&pki.join("ca.key"))?.ok_or_else(|| missing(pki.join("ca.key")))?;
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&ca_key_pem)?);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    for org in orgs {
        dn.push(DnType::OrganizationName, org.as_str());
    }
    params.distinguished_name = dn;
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: wasmkube\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\ncontexts:\n- name: {name}@wasmkube\n  context:\n    cluster: wasmkube\n    user: {name}\n    namespace: default\ncurrent-context: {name}@wasmkube\n",
        ca = b64(&ca_pem),
        crt = b64(&cert.pem()),
        key = b64(&key.serialize_pem()),
    ))
}

impl Pki {
    /// Loads the credentials from `dir/pki`, creating whatever is missing. `hosts` are the
    /// names and addresses the serving certificate must cover (beyond localhost/127.0.0.1).
    ///
    /// # Errors
    /// File access or generation failures.
    pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Pki, PkiError> {
        let pki = dir.join("pki");
        let (ca_crt, ca_key) = (pki.join("ca.crt"), pki.join("ca.key"));
        let (crt, key) = (pki.join("apiserver.crt"), pki.join("apiserver.key"));
        let token_path = pki.join("admin.token");

        let (ca_pem, ca_key_pem) = match (read(&ca_crt)?, read(&ca_key)?) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let key = KeyPair::generate()?;
                let cert = ca_params()?.self_signed(&key)?;
                write_private(&ca_crt, &cert.pem())?;
                write_private(&ca_key, &key.serialize_pem())?;
                // A new CA invalidates any old serving, peer or kubelet-client certificate.
                for stale in [
                    crt.as_path(),
                    &pki.join("peer.crt"),
                    &pki.join(KUBELET_CLIENT),
                ] {
                    let _ = std::fs::remove_file(stale);
                }
                (cert.pem(), key.serialize_pem())
            }
        };

        let mut sans = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default.svc".to_string(),
        ];
        for h in hosts {
            if !sans.contains(h) {
                sans.push(h.clone());
            }
        }
        let (cert_pem, key_pem) =
            match (read(&crt)?, read(&key)?, read(&pki.join("apiserver.sans"))?) {
                (Some(c), Some(k), Some(s)) if s == sans.join(",") => (c, k),
                _ => {
                    let (cert, server_key) = issue(
                        &ca_key_pem,
                        sans.clone(),
                        ("wasmkube-apiserver", None),
                        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
                    )?;
                    write_private(&crt, &cert)?;
                    write_private(&key, &server_key)?;
                    write_private(&pki.join("apiserver.sans"), &sans.join(","))?;
                    (cert, server_key)
                }
            };

        let admin_token = match read(&token_path)? {
            Some(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let token = random_token();
                write_private(&token_path, &token)?;
                token
            }
        };
        let sa_key_pem = match read(&pki.join("sa.key"))? {
            Some(k) if KeyPair::from_pem(&k).is_ok() => k,
            _ => {
                let k = KeyPair::generate()?.serialize_pem();
                write_private(&pki.join("sa.key"), &k)?;
                k
            }
        };
        Ok(Pki {
            ca_pem,
            cert_pem,
            key_pem,
            admin_token,
            ca_key_pem,
            sa_key_pem,
        })
    }

    /// A new certificate for node `name` (`system:node:NAME`, group `system:nodes`, the node
    /// name as its DNS name), as the kubelet's client certificate is made.
    ///
    /// # Errors
    /// Generation failures.
    pub(crate) fn node_identity(&self, name: &str) -> Result<NodeIdentity, PkiError> {
        let (cert_pem, key_pem) = issue(
            &self.ca_key_pem,
            vec![name.to_owned()],
            (&format!("system:node:{name}"), Some("system:nodes")),
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        Ok(NodeIdentity { cert_pem, key_pem })
    }

    /// How this server reaches the wasmlets' endpoints (logs, exec, port-forward): with a
    /// client certificate in group `system:masters` (`pki/apiserver-kubelet-client.crt`, as
    /// kube-apiserver's `--kubelet-client-certificate`). The wasmlet's serving certificate is
    /// not checked, as kube-apiserver does without `--kubelet-certificate-authority`.
    ///
    /// # Errors
    /// File access, generation, or stored PEM that cannot be parsed.
    pub fn kubelet_client(
        &self,
        dir: &Path,
    ) -> Result<std::sync::Arc<rustls::ClientConfig>, PkiError> {
        let pki = dir.join("pki");
        let (crt, key) = (
            pki.join(KUBELET_CLIENT),
            pki.join("apiserver-kubelet-client.key"),
        );
        let (cert_pem, key_pem) = match (read(&crt)?, read(&key)?) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let (c, k) = issue(
                    &self.ca_key_pem,
                    Vec::new(),
                    ("kube-apiserver-kubelet-client", Some("system:masters")),
                    vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
                )?;
                write_private(&crt, &c)?;
                write_private(&key, &k)?;
                (c, k)
            }
        };
        let provider = provider();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(
                wasmkube_client::tls::AnyServerCertificate::new(provider),
            ))
            .with_client_auth_cert(parse_certs(&cert_pem)?, parse_key(&key_pem)?)?;
        Ok(std::sync::Arc::new(config))
    }

    /// The admin kubeconfig for a server URL.
    pub fn kubeconfig(&self, server: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: wasmkube\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: wasmkube\n  context:\n    cluster: wasmkube\n    user: admin\n    namespace: default\ncurrent-context: wasmkube\n",
            token = self.admin_token
        )
    }

    /// This server's raft peer credentials for the peer listener at `host` (`DATA_DIR/pki/
    /// peer.crt`, from the cluster CA, valid as server and as client; made on first use and
    /// when the host changes), and the TLS configurations built on them.
    ///
    /// # Errors
    /// File access, generation, or a CA that cannot be parsed.
    pub fn peer_tls(&self, dir: &Path, host: &str) -> Result<PeerTls, PkiError> {
        let pki = dir.join("pki");
        let (crt, key, hosts) = (
            pki.join("peer.crt"),
            pki.join("peer.key"),
            pki.join("peer.sans"),
        );
        let (cert_pem, key_pem) = match (read(&crt)?, read(&key)?, read(&hosts)?) {
            (Some(c), Some(k), Some(h)) if h == host => (c, k),
            _ => {
                let (c, k) = issue(
                    &self.ca_key_pem,
                    vec![host.to_owned()],
                    ("wasmkube-peer", None),
                    vec![
                        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                    ],
                )?;
                write_private(&crt, &c)?;
                write_private(&key, &k)?;
                write_private(&hosts, host)?;
                (c, k)
            }
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in parse_certs(&self.ca_pem)? {
            roots.add(c)?;
        }
        let roots = std::sync::Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::clone(&roots),
            provider(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let (chain, private) = (parse_certs(&cert_pem)?, parse_key(&key_pem)?);
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), private.clone_key())?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private)?;
        Ok(PeerTls {
            server: std::sync::Arc::new(server),
            client: std::sync::Arc::new(client),
        })
    }

    /// How the API server checks a client certificate: optional (tokens work too), but one
    /// that is shown must come from the cluster CA.
    ///
    /// # Errors
    /// When the stored CA cannot be parsed.
    pub fn client_verifier(
        &self,
    ) -> Result<std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier>, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for c in parse_certs(&self.ca_pem)? {
            roots.add(c)?;
        }
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))
    }

    /// A rustls server configuration offering HTTP/2 and HTTP/1.1.
    ///
    /// # Errors
    /// When the stored PEM cannot be parsed.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, rustls::Error> {
        let (certs, key) = (parse_certs(&self.cert_pem)?, parse_key(&self.key_pem)?);
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(self.client_verifier()?)
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS handshake and one byte each way over an in-memory connection.
    async fn exchange(
        client: std::sync::Arc<rustls::ClientConfig>,
        server: std::sync::Arc<rustls::ServerConfig>,
    ) -> std::io::Result<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, b) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(async move {
            let mut tls = tokio_rustls::TlsAcceptor::from(server).accept(b).await?;
            let byte = tls.read_u8().await?;
            tls.write_u8(byte + 1).await?;
            tls.flush().await?;
            std::io::Result::Ok(())
        });
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, a)
            .await?;
        tls.write_u8(41).await?;
        tls.flush().await?;
        let answer = tls.read_u8().await;
        let _ = serve.await;
        answer
    }

    #[tokio::test]
    async fn peers_should_need_a_certificate_from_the_cluster_ca() {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = Pki::load_or_create(dir.path(), &[]).expect("create");
        let peer = pki.peer_tls(dir.path(), "127.0.0.1").expect("peer tls");
        assert_eq!(
            exchange(
                std::sync::Arc::clone(&peer.client),
                std::sync::Arc::clone(&peer.server)
            )
            .await
            .expect("members talk"),
            42
        );
        let again = pki.peer_tls(dir.path(), "127.0.0.1").expect("reloaded");
        assert_eq!(
            exchange(again.client, std::sync::Arc::clone(&peer.server))
                .await
                .expect("the stored certificate is reused"),
            42
        );
        // Trusting the CA is not enough: a client without a certificate is refused.
        let mut roots = rustls::RootCertStore::empty();
        for c in parse_certs(&pki.ca_pem).expect("ca") {
            roots.add(c).expect("root");
        }
        let anonymous = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert!(
            exchange(std::sync::Arc::new(anonymous), peer.server)
                .await
                .is_err()
        );
    }

    #[test]
    fn credentials_should_be_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = Pki::load_or_create(dir.path(), &[]).expect("create");
        let b = Pki::load_or_create(dir.path(), &[]).expect("load");
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.cert_pem, b.cert_pem);
        assert_eq!(a.admin_token, b.admin_token);
        assert!(a.server_config().is_ok());
        let c = Pki::load_or_create(dir.path(), &["node1.example".into()]).expect("new SAN");
        assert_eq!(a.ca_pem, c.ca_pem);
        assert_ne!(
            a.cert_pem, c.cert_pem,
            "a new host needs a new serving certificate"
        );
        assert!(
            a.kubeconfig("https://127.0.0.1:6443")
                .contains(&a.admin_token)
        );
    }
}
