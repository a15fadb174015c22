//! `pods/exec`, `pods/attach` and `pods/portforward`: validated here, then the client's
//! upgrade is proxied to the wasmlet of the pod's node (`/exec`, `/attach`, `/portForward` on
//! its HTTPS endpoint) and the two upgraded connections are spliced, as kube-apiserver's
//! upgrade-aware proxy does for the kubelet.
//!
//! Each takes both upgrades: a WebSocket (exec and attach: `v5.channel.k8s.io`, kubectl 1.30
//! and later; port forwarding: SPDY tunnelled by kubectl 1.31+, channels by kube-rs) or a
//! plain SPDY/3.1 upgrade (kubectl up to 1.29 for exec and attach, 1.30 for port forwarding,
//! and later ones falling back).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;

use crate::Apiserver;
use crate::error::ApiError;
use crate::podlog::{
    KubeletTls, connect_node, load_pod, node_endpoint, node_error, node_of, pod_container,
};

/// The upgrade headers a proxied request carries to the node, and its answer back.
const UPGRADE_HEADERS: &[&str] = &[
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
    "x-accepted-stream-protocol-versions",
];

/// A streaming subresource of pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// `pods/exec`.
    Exec,
    /// `pods/attach`.
    Attach,
    /// `pods/portforward`.
    PortForward,
}

/// `(namespace, name, subresource)` of a `pods/exec` or `pods/portforward` path.
pub(crate) fn stream_path(path: &str) -> Option<(&str, &str, Stream)> {
    let rest = path
        .trim_end_matches('/')
        .strip_prefix("/api/v1/namespaces/")?;
    let (rest, sub) = [
        ("/exec", Stream::Exec),
        ("/attach", Stream::Attach),
        ("/portforward", Stream::PortForward),
    ]
    .into_iter()
    .find_map(|(suffix, sub)| rest.strip_suffix(suffix).map(|r| (r, sub)))?;
    let (ns, rest) = rest.split_once('/')?;
    let name = rest.strip_prefix("pods/")?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some((ns, name, sub))
}

/// The `Upgrade` protocol asked for, lower-cased (`websocket`, `spdy/3.1`).
fn upgrade_of(req: &Request) -> Option<String> {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
}

/// Serves a streaming subresource of `namespace/name`.
///
/// # Errors
/// A Kubernetes `Status` (see [`PodStream::exec`] and [`PodStream::port_forward`]).
pub(crate) async fn serve(
    api: &Apiserver,
    kubelet: &KubeletTls,
    namespace: &str,
    name: &str,
    stream: Stream,
    req: Request,
) -> Result<Response, ApiError> {
    let pod = PodStream {
        api,
        kubelet,
        namespace,
        name,
    };
    match stream {
        Stream::Exec => pod.remote_command(req, "exec").await,
        Stream::Attach => pod.remote_command(req, "attach").await,
        Stream::PortForward => pod.port_forward(req).await,
    }
}

/// A stream asked of one pod, with the credential that reaches its node.
#[derive(Clone, Copy)]
struct PodStream<'a> {
    api: &'a Apiserver,
    kubelet: &'a KubeletTls,
    namespace: &'a str,
    name: &'a str,
}

impl PodStream<'_> {
    /// `pods/exec` and `pods/attach` (`what`): a remote-command session with a container.
    ///
    /// # Errors
    /// 404 for an unknown pod; 400 for a missing command (exec), no stream asked for, a bad
    /// container, a finished pod or a container that is not running, or a request that is no
    /// WebSocket or SPDY/3.1 upgrade.
    async fn remote_command(self, req: Request, what: &str) -> Result<Response, ApiError> {
        let (api, kubelet, namespace, name) = (self.api, self.kubelet, self.namespace, self.name);
        let params = crate::request::QueryPairs::parse(req.uri().query())?;
        let param = |k: &str| params.get(k);
        let exec = what == "exec";
        if exec && param("command").is_none() {
            return Err(ApiError::bad_request(
                "you must specify at least one command for the container",
            ));
        }
        let flag = |k: &str| matches!(param(k), Some("true" | "1"));
        if !flag("stdin") && !flag("stdout") && !flag("stderr") {
            return Err(ApiError::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        let (pod, container, node_name) =
            pod_container(api, namespace, name, param("container")).await?;
        check_running(&pod, name, &container, what)?;
        if !matches!(upgrade_of(&req).as_deref(), Some("websocket" | "spdy/3.1")) {
            return Err(ApiError::bad_request(format!(
                "{what} needs a WebSocket (v5.channel.k8s.io) or SPDY/3.1 (v4.channel.k8s.io) upgrade"
            )));
        }
        let host = node_endpoint(api, &node_name, name).await?;
        let forward: Vec<(&str, &str)> = params
            .0
            .iter()
            .filter(|(k, _)| {
                matches!(k.as_str(), "stdin" | "stdout" | "stderr" | "tty")
                    || (exec && k == "command")
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let path = format!(
            "/{what}/{namespace}/{name}/{container}?{}",
            serde_urlencoded::to_string(&forward).expect("string pairs encode")
        );
        splice(&host, &path, kubelet, req).await
    }

    /// `pods/portforward`.
    ///
    /// # Errors
    /// 404 for an unknown pod; 400 for a pod that is not running or a request that is no upgrade.
    async fn port_forward(self, req: Request) -> Result<Response, ApiError> {
        let (api, kubelet, namespace, name) = (self.api, self.kubelet, self.namespace, self.name);
        let pod = load_pod(api, namespace, name).await?;
        let node_name = node_of(&pod, name)?;
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        if phase != "Running" {
            return Err(ApiError::bad_request(format!(
                "unable to forward ports: pod {name} is not running (phase {phase})"
            )));
        }
        if !matches!(upgrade_of(&req).as_deref(), Some("websocket" | "spdy/3.1")) {
            return Err(ApiError::bad_request(
                "port forwarding needs a WebSocket or SPDY/3.1 upgrade",
            ));
        }
        let host = node_endpoint(api, &node_name, name).await?;
        let path = match req.uri().query() {
            Some(q) => format!("/portForward/{namespace}/{name}?{q}"),
            None => format!("/portForward/{namespace}/{name}"),
        };
        splice(&host, &path, kubelet, req).await
    }
}

/// Replays the client's upgrade request to the node's `path`, answers the client with the
/// node's `101`, and splices the two upgraded connections byte for byte.
async fn splice(
    host: &str,
    path: &str,
    kubelet: &KubeletTls,
    mut req: Request,
) -> Result<Response, ApiError> {
    let protocol = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("websocket"));
    let tls = connect_node(host, path, kubelet).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| ApiError::internal(format!("the node's endpoint: {e}")))?;
    tokio::spawn(conn.with_upgrades());
    let mut upstream = http::Request::builder()
        .method(req.method().clone())
        .uri(path)
        .header(header::HOST, host)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, protocol.clone());
    for h in UPGRADE_HEADERS {
        for v in req.headers().get_all(*h) {
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
        .header(
            header::UPGRADE,
            resp.headers()
                .get(header::UPGRADE)
                .cloned()
                .unwrap_or(protocol),
        );
    for h in UPGRADE_HEADERS {
        for v in resp.headers().get_all(*h) {
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

/// The kubelet's checks before an exec or attach (`what`): the pod is not finished and the
/// container runs.
fn check_running(pod: &Pod, name: &str, container: &str, what: &str) -> Result<(), ApiError> {
    let status = pod.status.clone().unwrap_or_default();
    if let Some(phase) = status
        .phase
        .as_deref()
        .filter(|p| *p == "Succeeded" || *p == "Failed")
    {
        return Err(ApiError::bad_request(format!(
            "cannot {what} into a container in a completed pod; current phase is {phase}"
        )));
    }
    let running = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .chain(status.ephemeral_container_statuses.iter().flatten())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_paths_name_the_pod_and_subresource() {
        assert_eq!(
            stream_path("/api/v1/namespaces/default/pods/web/exec"),
            Some(("default", "web", Stream::Exec))
        );
        assert_eq!(
            stream_path("/api/v1/namespaces/ns/pods/web/portforward/"),
            Some(("ns", "web", Stream::PortForward))
        );
        assert_eq!(
            stream_path("/api/v1/namespaces/ns/pods/web/attach"),
            Some(("ns", "web", Stream::Attach))
        );
        assert_eq!(stream_path("/api/v1/namespaces/ns/pods/web/log"), None);
        assert_eq!(stream_path("/api/v1/namespaces/ns/pods/a/b/exec"), None);
    }
}
