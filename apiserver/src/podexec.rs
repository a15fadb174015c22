//! `pods/exec`: validated here, then the client's WebSocket upgrade is proxied to the
//! wasmlet of the pod's node (`/exec` on its HTTPS endpoint) and the two upgraded
//! connections are spliced, as kube-apiserver's upgrade-aware proxy does for the kubelet.
//!
//! Streams are WebSockets with `v5.channel.k8s.io` (kubectl 1.30 and later use it by
//! default); a SPDY upgrade (older kubectl, or its fallback) is refused with a `Status` saying
//! so.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;

use crate::Apiserver;
use crate::error::ApiError;
use crate::podlog::{connect_node, node_endpoint, node_error, pod_container};

/// The WebSocket headers a proxied upgrade carries both ways.
const UPGRADE_HEADERS: &[&str] = &[
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "sec-websocket-extensions",
];

/// `(namespace, name)` of a `pods/exec` path.
pub(crate) fn exec_path(path: &str) -> Option<(&str, &str)> {
    let rest = path
        .trim_end_matches('/')
        .strip_prefix("/api/v1/namespaces/")?
        .strip_suffix("/exec")?;
    let (ns, rest) = rest.split_once('/')?;
    let name = rest.strip_prefix("pods/")?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some((ns, name))
}

fn is_websocket(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Serves `pods/exec` for `namespace/name`.
///
/// # Errors
/// A Kubernetes `Status`: 404 for an unknown pod; 400 for a missing command, a bad container,
/// a finished pod or a container that is not running, or a non-WebSocket request.
pub(crate) async fn pod_exec(
    api: &Apiserver,
    token: &str,
    namespace: &str,
    name: &str,
    mut req: Request,
) -> Result<Response, ApiError> {
    let query = req.uri().query().unwrap_or_default().to_owned();
    let params: Vec<(String, String)> = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let container = params
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.as_str());
    if !params.iter().any(|(k, _)| k == "command") {
        return Err(ApiError::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    let (pod, container, node_name) = pod_container(api, namespace, name, container).await?;
    check_running(&pod, name, &container)?;
    if !is_websocket(&req) {
        return Err(ApiError::bad_request(
            "wasmkube streams exec over WebSockets (v5.channel.k8s.io, the default of kubectl 1.30 and later); SPDY upgrades are not supported",
        ));
    }
    let host = node_endpoint(api, &node_name, name).await?;
    let forward: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "command" | "stdin" | "stdout" | "stderr" | "tty"
            )
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let path = format!(
        "/exec/{namespace}/{name}/{container}?{}",
        serde_urlencoded::to_string(&forward).expect("string pairs encode")
    );
    let tls = connect_node(&host, &path).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| ApiError::internal(format!("the node's endpoint: {e}")))?;
    tokio::spawn(conn.with_upgrades());
    let mut upstream = http::Request::get(&path)
        .header(header::HOST, &host)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket");
    for h in UPGRADE_HEADERS {
        if let Some(v) = req.headers().get(*h) {
            upstream = upstream.header(*h, v);
        }
    }
    let upstream = upstream
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::bad_request(format!("invalid upgrade headers: {e}")))?;
    let resp = sender
        .send_request(upstream)
        .await
        .map_err(|e| ApiError::internal(format!("the node's endpoint: {e}")))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(node_error(resp).await);
    }
    let mut answer = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket");
    for h in UPGRADE_HEADERS {
        if let Some(v) = resp.headers().get(*h) {
            answer = answer.header(*h, v.clone());
        }
    }
    let client = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let (Ok(node_side), Ok(client_side)) = (hyper::upgrade::on(resp).await, client.await)
        else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(
            &mut TokioIo::new(client_side),
            &mut TokioIo::new(node_side),
        )
        .await;
    });
    Ok(answer
        .body(Body::empty())
        .expect("static headers are valid"))
}

/// kubelet's checks before an exec: the pod is not finished and the container runs.
fn check_running(pod: &Pod, name: &str, container: &str) -> Result<(), ApiError> {
    let status = pod.status.clone().unwrap_or_default();
    if let Some(phase) = status
        .phase
        .as_deref()
        .filter(|p| *p == "Succeeded" || *p == "Failed")
    {
        return Err(ApiError::bad_request(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    let running = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == container)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some());
    if !running {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}: it is not running"
        )));
    }
    Ok(())
}
