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
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

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
                // A new CA invalidates any old serving certificate.
                let _ = std::fs::remove_file(&crt);
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
                    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
                    // The issuer is rebuilt from the same parameters the CA was made with: its
                    // subject and key identify it, which is all a signed certificate refers to.
                    let issuer = Issuer::new(ca_params()?, ca_key);
                    let server_key = KeyPair::generate()?;
                    let mut params = CertificateParams::new(sans.clone())?;
                    let mut dn = DistinguishedName::new();
                    dn.push(DnType::CommonName, "wasmkube-apiserver");
                    params.distinguished_name = dn;
                    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
                    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
                    let cert = params.signed_by(&server_key, &issuer)?;
                    write_private(&crt, &cert.pem())?;
                    write_private(&key, &server_key.serialize_pem())?;
                    write_private(&pki.join("apiserver.sans"), &sans.join(","))?;
                    (cert.pem(), server_key.serialize_pem())
                }
            };

        let admin_token = match read(&token_path)? {
            Some(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let bytes: [u8; 32] = rand::rng().random();
                let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
                write_private(&token_path, &token)?;
                token
            }
        };
        Ok(Pki {
            ca_pem,
            cert_pem,
            key_pem,
            admin_token,
        })
    }

    /// The admin kubeconfig for a server URL.
    pub fn kubeconfig(&self, server: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: wasmkube\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: wasmkube\n  context:\n    cluster: wasmkube\n    user: admin\n    namespace: default\ncurrent-context: wasmkube\n",
            token = self.admin_token
        )
    }

    /// A rustls server configuration offering HTTP/2 and HTTP/1.1.
    ///
    /// # Errors
    /// When the stored PEM cannot be parsed.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, rustls::Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
