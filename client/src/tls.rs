//! TLS pieces the components share.

use std::sync::{Arc, OnceLock};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Accepts any server certificate while still checking the handshake's signatures: what the
/// kubelet does for HTTPS probes (`InsecureSkipVerify`) and kube-apiserver does towards a
/// kubelet's self-signed serving certificate when no `--kubelet-certificate-authority` is set.
#[derive(Debug)]
pub struct AnyServerCertificate(Arc<CryptoProvider>);

impl AnyServerCertificate {
    /// With `provider`'s signature algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        AnyServerCertificate(provider)
    }
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration (ring, safe protocol versions, no client certificate) that accepts
/// any server certificate; built once per process.
pub fn insecure_client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate::new(provider)))
            .with_no_client_auth();
        Arc::new(config)
    }))
}

/// A connector for [`insecure_client_config`].
pub fn insecure_connector() -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(insecure_client_config())
}

/// The caller a verified client certificate names: its common name is the user, its
/// organizations the groups (kube-apiserver's x509 authenticator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The certificate's common name (the user).
    pub name: String,
    /// Its organizations (the groups).
    pub groups: Vec<String>,
}

impl Peer {
    /// The first certificate of a verified TLS connection's peer.
    pub fn of(conn: &rustls::CommonState) -> Option<Peer> {
        Peer::from_der(conn.peer_certificates()?.first()?)
    }

    /// The subject of a DER certificate.
    pub fn from_der(der: &[u8]) -> Option<Peer> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())?
            .to_owned();
        let groups = subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(str::to_owned))
            .collect();
        Some(Peer { name, groups })
    }

    /// Whether the peer is in `group`.
    pub fn is_in(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// `certificates` (DER, as `kube::Config::root_cert` holds them) as one PEM bundle.
pub fn pem_bundle(certificates: &[Vec<u8>]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for der in certificates {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}
