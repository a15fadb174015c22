//! An API server in the same process as its caller, reached without a socket: `wasmkube up`
//! gives the scheduler, controller manager, DNS server and wasmlet it runs beside its API
//! server a [`Local`], so their requests go through the same handlers (authentication, RBAC,
//! admission, the store) without TCP, TLS and HTTP framing on both sides — what
//! kube-apiserver's loopback client config does for its own in-process controllers.
//!
//! A [`Local`] stands for the first server of a [`crate::Source`]; the caller's identity is
//! what its kubeconfig says (the client certificate, which the API server verifies against
//! its CA as a TLS handshake would, or the bearer token). Once that server has stopped, a
//! request fails as a refused connection would, so the client fails over to the next server.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use kube::client::Body;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tower::BoxError;

/// A request body to a [`Local`] server (kube-rs's).
pub type RequestBody = Body;

/// A response body from a [`Local`] server.
pub type LocalBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The requests of one caller to a [`Local`] server.
pub type LocalService =
    tower::util::BoxCloneSyncService<Request<Body>, Response<LocalBody>, BoxError>;

type Open = dyn Fn(Option<CertificateDer<'static>>) -> LocalService + Send + Sync;

/// An API server in this process.
#[derive(Clone)]
pub struct Local {
    open: Arc<Open>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Local")
    }
}

impl Local {
    /// A server whose `open` gives the service for a caller that presents this client
    /// certificate (or none); the server checks it.
    pub fn new(
        open: impl Fn(Option<CertificateDer<'static>>) -> LocalService + Send + Sync + 'static,
    ) -> Self {
        Local {
            open: Arc::new(open),
        }
    }

    /// The service for the caller `config` names.
    pub(crate) fn open(&self, config: &kube::Config) -> LocalService {
        (self.open)(client_certificate(&config.auth_info))
    }
}

/// The client certificate of a kubeconfig user (inline or in a file), if it has one.
fn client_certificate(auth: &kube::config::AuthInfo) -> Option<CertificateDer<'static>> {
    use base64::Engine as _;
    let pem = match (&auth.client_certificate_data, &auth.client_certificate) {
        (Some(data), _) => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok()?,
        (None, Some(path)) => std::fs::read(path).ok()?,
        (None, None) => return None,
    };
    CertificateDer::from_pem_slice(&pem).ok()
}

/// The error a request to a stopped [`Local`] server ends with: a refused connection, which
/// the fail-over client answers by trying the next server.
pub fn stopped() -> BoxError {
    Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "the API server in this process has stopped",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_certificate_should_come_from_the_data_or_the_file() {
        let der = b"not really DER but carried as is".to_vec();
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
        );
        let inline = kube::config::AuthInfo {
            client_certificate_data: Some(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                &pem,
            )),
            ..Default::default()
        };
        assert_eq!(
            client_certificate(&inline).map(|c| c.to_vec()),
            Some(der.clone())
        );
        let path = std::env::temp_dir().join(format!("wk-local-cert-{}", std::process::id()));
        std::fs::write(&path, &pem).expect("write");
        let file = kube::config::AuthInfo {
            client_certificate: Some(path.display().to_string()),
            ..Default::default()
        };
        assert_eq!(client_certificate(&file).map(|c| c.to_vec()), Some(der));
        std::fs::remove_file(&path).expect("clean up");
        assert!(client_certificate(&kube::config::AuthInfo::default()).is_none());
    }
}
