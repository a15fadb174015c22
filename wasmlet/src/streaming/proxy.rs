//! `pods/proxy` (and `services/proxy`, which the API server resolves to a pod) on the node: a
//! request the API server sends to `/podProxy/{namespace}/{pod}/{port}/{path}` is made to the
//! pod's port through the pod network, and the pod's answer streams back.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use wasmkube_client::proxy::{NODE_ANSWER_HEADER, keep_forwarded};

use crate::pod::PodRegistry;
use crate::streaming::text;

/// Sends `req` (its path below `/podProxy/`: `rest`) to the pod's port and answers with what
/// the pod answers; else, marked with [`NODE_ANSWER_HEADER`], 400 for a malformed path, 404
/// for a pod without an address here, 503 when the pod's port cannot be reached.
pub(crate) async fn serve(pods: &PodRegistry, rest: &str, req: axum::extract::Request) -> Response {
    let mut resp = carry(pods, rest, req).await;
    if let Err(resp) = &mut resp {
        resp.headers_mut()
            .insert(NODE_ANSWER_HEADER, HeaderValue::from_static("true"));
    }
    resp.unwrap_or_else(|e| e)
}

async fn carry(
    pods: &PodRegistry,
    rest: &str,
    req: axum::extract::Request,
) -> Result<Response, Response> {
    let mut parts = rest.splitn(4, '/');
    let (Some(namespace), Some(pod), Some(port)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "expected /podProxy/{namespace}/{pod}/{port}/{path}".into(),
        ));
    };
    let path = parts.next().unwrap_or_default();
    let Ok(port) = port.parse::<u16>() else {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("invalid port {port:?}"),
        ));
    };
    let Some(target) = pods.get(namespace, pod).and_then(|p| p.forward) else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} has no address on this node"),
        ));
    };
    let unreachable = |message: String| text(StatusCode::SERVICE_UNAVAILABLE, message);
    let conn = target
        .net
        .dial_from_node(std::net::SocketAddrV4::new(target.pod_ip, port))
        .await
        .map_err(|e| unreachable(format!("dial tcp {}:{port}: {e}", target.pod_ip)))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
        .await
        .map_err(|e| unreachable(format!("pod {namespace}/{pod} port {port}: {e}")))?;
    tokio::spawn(connection);
    let (head, body) = req.into_parts();
    let mut uri = format!("/{path}");
    if let Some(q) = head.uri.query() {
        uri.push('?');
        uri.push_str(q);
    }
    let Ok(uri) = uri.parse::<Uri>() else {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("invalid path {uri:?}"),
        ));
    };
    let mut out = http::Request::new(body);
    *out.method_mut() = head.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = head.headers;
    keep_forwarded(out.headers_mut());
    let host = format!("{}:{port}", target.pod_ip);
    if let Ok(host) = HeaderValue::from_str(&host) {
        out.headers_mut().insert(http::header::HOST, host);
    }
    let resp = sender
        .send_request(out)
        .await
        .map_err(|e| unreachable(format!("pod {namespace}/{pod} port {port}: {e}")))?;
    let mut resp = resp.map(Body::new);
    keep_forwarded(resp.headers_mut());
    Ok(resp)
}
