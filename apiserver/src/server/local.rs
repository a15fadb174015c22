//! The server's handlers for callers in its own process ([`wasmkube_client::Local`]): each
//! request goes through the same router as one from the listener — with the client
//! certificate the caller's kubeconfig holds, checked against the cluster CA as the TLS
//! handshake checks it — but without a socket, TLS or HTTP framing.

use std::sync::Arc;

use http_body_util::BodyExt as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use tower::ServiceExt as _;
use wasmkube_client::local::{Local, LocalService, RequestBody, stopped};

use super::*;

/// A [`Local`] over `app`, refusing requests once `shutdown` has fired (the server then no
/// longer serves, so clients fail over as from a refused connection).
pub(super) fn local(
    app: Router,
    verifier: Arc<dyn ClientCertVerifier>,
    shutdown: CancellationToken,
) -> Local {
    Local::new(move |cert: Option<CertificateDer<'static>>| {
        let peer = cert.and_then(|cert| match verifier.verify_client_cert(
            &cert,
            &[],
            UnixTime::now(),
        ) {
            Ok(_) => wasmkube_client::tls::Peer::from_der(&cert),
            Err(e) => {
                // As a failed handshake would: the caller gets no identity from it.
                tracing::warn!(error = %e, "an in-process client's certificate is not from the cluster CA");
                None
            }
        });
        let cert = crate::auth::ClientCertificate(peer);
        let (app, shutdown) = (app.clone(), shutdown.clone());
        LocalService::new(tower::service_fn(
            move |mut req: http::Request<RequestBody>| {
                let app = app.clone();
                let refused = shutdown.is_cancelled();
                req.extensions_mut().insert(cert.clone());
                async move {
                    if refused {
                        return Err(stopped());
                    }
                    let resp = app
                        .oneshot(req.map(axum::body::Body::new))
                        .await
                        .unwrap_or_else(|never| match never {});
                    Ok(resp.map(|body| body.map_err(Into::into).boxed_unsync()))
                }
            },
        ))
    })
}
