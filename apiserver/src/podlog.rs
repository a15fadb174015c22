//! `GET /api/v1/namespaces/{ns}/pods/{name}/log`: validated here, served by the wasmlet of the
//! pod's node (its HTTPS `/containerLogs` endpoint), streamed back — as kube-apiserver proxies
//! to the kubelet. Like kube-apiserver's default, the node's serving certificate is not
//! verified; the API server shows its kubelet client certificate, which the wasmlet checks.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use rustls::pki_types::ServerName;
use wasmkube_api::resource::ResourceInfo;

use crate::Apiserver;
use crate::error::ApiError;

/// The parameters `pods/log` accepts (`PodLogOptions`), forwarded verbatim once validated.
const PARAMS: &[&str] = &[
    "container",
    "follow",
    "previous",
    "sinceSeconds",
    "sinceTime",
    "timestamps",
    "tailLines",
    "limitBytes",
    "insecureSkipTLSVerifyBackend",
    "pretty",
];

/// Serves `pods/log` for `namespace/name`.
///
/// # Errors
/// A Kubernetes `Status`: 404 for an unknown pod, 400 for a bad parameter, an unknown or
/// unnamed container, or a container that has not started.
pub(crate) async fn pod_log(
    api: &Apiserver,
    kubelet: &KubeletTls,
    namespace: &str,
    name: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let params = crate::request::QueryPairs::parse(query)?;
    let param = |k: &str| params.get(k);
    for (k, v) in &params.0 {
        if !PARAMS.contains(&k.as_str()) {
            continue;
        }
        let numeric = matches!(k.as_str(), "sinceSeconds" | "tailLines" | "limitBytes");
        if numeric
            && v.parse::<i64>()
                .map_or(true, |n| n < 0 || (k == "sinceSeconds" && n == 0))
        {
            return Err(ApiError::bad_request(format!(
                "invalid {k} {v:?}: must be a positive integer"
            )));
        }
        if k == "sinceTime" && v.parse::<jiff::Timestamp>().is_err() {
            return Err(ApiError::bad_request(format!(
                "invalid sinceTime {v:?}: must be RFC3339"
            )));
        }
    }
    if param("sinceSeconds").is_some() && param("sinceTime").is_some() {
        return Err(ApiError::bad_request(
            "at most one of sinceTime or sinceSeconds may be specified",
        ));
    }

    let (pod, container, node_name) =
        pod_container(api, namespace, name, param("container")).await?;
    let current = pod.status.as_ref().and_then(|s| {
        let mut all = s
            .container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
            .chain(s.ephemeral_container_statuses.iter().flatten());
        all.find(|cs| cs.name == container).cloned()
    });
    let previous = param("previous") == Some("true");
    if let Some(cs) = current {
        let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
        if let Some(w) = waiting
            && cs.restart_count == 0
            && !previous
        {
            return Err(ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: {}",
                w.reason.as_deref().unwrap_or("ContainerCreating")
            )));
        }
        if previous && cs.restart_count == 0 {
            return Err(ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{name}\" not found"
            )));
        }
    } else if !previous {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )));
    }

    let host = node_endpoint(api, &node_name, name).await?;

    let mut forward: Vec<(&str, &str)> = params
        .0
        .iter()
        .filter(|(k, _)| {
            PARAMS.contains(&k.as_str())
                && k != "container"
                && k != "pretty"
                && k != "insecureSkipTLSVerifyBackend"
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    forward.sort_unstable();
    let query = serde_urlencoded::to_string(&forward).expect("string pairs encode");
    let path = format!("/containerLogs/{namespace}/{name}/{container}?{query}");
    fetch(&host, &path, kubelet).await
}

/// The pod `namespace/name`.
///
/// # Errors
/// 404 when there is none.
pub(crate) async fn load_pod(
    api: &Apiserver,
    namespace: &str,
    name: &str,
) -> Result<Pod, ApiError> {
    load(api, namespace, name).await
}

/// The namespaced object `namespace/name` of kind `K`, as stored.
///
/// # Errors
/// 404 when there is none.
pub(crate) async fn load<K>(api: &Apiserver, namespace: &str, name: &str) -> Result<K, ApiError>
where
    K: k8s_openapi::Resource + serde::de::DeserializeOwned,
{
    let info = ResourceInfo::of::<K>();
    let stored = api
        .store
        .get(&info.key(Some(namespace), name))
        .await
        .map_err(|e| ApiError::internal(format!("reading the {}: {e}", info.singular)))?
        .ok_or_else(|| ApiError::not_found(&info, name))?;
    serde_json::from_slice(&stored.value)
        .map_err(|e| ApiError::internal(format!("stored {}: {e}", info.singular)))
}

/// The pod's node.
///
/// # Errors
/// 400 for a pod not scheduled yet.
pub(crate) fn node_of(pod: &Pod, name: &str) -> Result<String, ApiError> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))
}

/// The pod, the container a `pods/log|exec` request is about (the only one when not named;
/// init and ephemeral containers by name),
/// and the pod's node.
///
/// # Errors
/// 404 for an unknown pod; 400 for an unknown or unnamed container or an unscheduled pod.
pub(crate) async fn pod_container(
    api: &Apiserver,
    namespace: &str,
    name: &str,
    container: Option<&str>,
) -> Result<(Pod, String, String), ApiError> {
    let pod = load_pod(api, namespace, name).await?;
    let spec = pod.spec.clone().unwrap_or_default();
    let app: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    let ephemeral: Vec<&str> = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    let container = match container.filter(|c| !c.is_empty()) {
        Some(c) if app.contains(&c) || init.contains(&c) || ephemeral.contains(&c) => c.to_owned(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if app.len() == 1 => app[0].to_owned(),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                app.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            if !ephemeral.is_empty() {
                msg.push_str(&format!(
                    " or one of the ephemeral containers: [{}]",
                    ephemeral.join(" ")
                ));
            }
            return Err(ApiError::bad_request(msg));
        }
    };
    let node_name = node_of(&pod, name)?;
    Ok((pod, container, node_name))
}

/// `host:port` of the node's endpoint (its `InternalIP` and `kubeletEndpoint` port).
pub(crate) async fn node_endpoint(
    api: &Apiserver,
    node_name: &str,
    pod: &str,
) -> Result<String, ApiError> {
    let node = read_node(api, node_name).await?.ok_or_else(|| {
        ApiError::internal(format!("node {node_name} of pod {pod} is not registered"))
    })?;
    endpoint_of(&node)
        .ok_or_else(|| ApiError::internal(format!("node {node_name} has no InternalIP address")))
}

/// Node `name` as stored, if there is one.
async fn read_node(api: &Apiserver, name: &str) -> Result<Option<Node>, ApiError> {
    Ok(api
        .store
        .get(&ResourceInfo::of::<Node>().key(None, name))
        .await
        .map_err(|e| ApiError::internal(format!("reading the node: {e}")))?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

/// `host:port` of a node's endpoint, if it has an `InternalIP`.
pub(crate) fn endpoint_of(node: &Node) -> Option<String> {
    let status = node.status.as_ref()?;
    let address = status
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .clone();
    let port = status
        .daemon_endpoints
        .as_ref()
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map_or(10250, |k| k.port);
    Some(if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    })
}

/// How the API server reaches nodes' endpoints: TLS with its kubelet client certificate
/// ([`crate::pki::Pki::kubelet_client`]).
pub(crate) type KubeletTls = std::sync::Arc<rustls::ClientConfig>;

/// A TLS connection to a node's endpoint.
pub(crate) async fn connect_node(
    host: &str,
    path: &str,
    kubelet: &KubeletTls,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ApiError> {
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::internal(format!("Get \"https://{host}{path}\": {e}"))
    };
    let tcp = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| unreachable(&e))?;
    let server_name = ServerName::try_from(
        host.rsplit_once(':')
            .map_or(host, |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_owned(),
    )
    .map_err(|e| unreachable(&e))?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::clone(kubelet))
        .connect(server_name, tcp)
        .await
        .map_err(|e| unreachable(&e))
}

async fn fetch(host: &str, path: &str, kubelet: &KubeletTls) -> Result<Response, ApiError> {
    let resp = get_node(host, path, kubelet).await?;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::new(resp.into_body()))
        .expect("static headers are valid"))
}

/// `GET /api/v1/nodes/{name}/proxy/{path}`: the node endpoint's answer to `GET /{path}`
/// (`kubectl get --raw /api/v1/nodes/N/proxy/metrics/resource`), streamed back.
///
/// # Errors
/// 404 for an unknown node, 503 when it cannot be reached, the node's refusal otherwise.
pub(crate) async fn node_proxy(
    api: &Apiserver,
    kubelet: &KubeletTls,
    node_name: &str,
    path: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let node = read_node(api, node_name)
        .await?
        .ok_or_else(|| ApiError::not_found(&ResourceInfo::of::<Node>(), node_name))?;
    let host = endpoint_of(&node).ok_or_else(|| {
        ApiError::unavailable(format!("node {node_name} has no InternalIP address"))
    })?;
    let target = match query {
        Some(q) if !q.is_empty() => format!("/{path}?{q}"),
        _ => format!("/{path}"),
    };
    let resp = get_node(&host, &target, kubelet).await?;
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(header::HeaderValue::from_static("text/plain"));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::new(resp.into_body()))
        .expect("static headers are valid"))
}

/// `(node, path)` of a `nodes/{name}/proxy/{path}` request.
pub(crate) fn node_proxy_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/v1/nodes/")?;
    let (node, rest) = rest.split_once('/')?;
    let tail = rest.strip_prefix("proxy")?;
    if !tail.is_empty() && !tail.starts_with('/') {
        return None;
    }
    (!node.is_empty()).then(|| (node, tail.trim_start_matches('/')))
}

/// `GET https://{host}{path}` on a node's endpoint; a non-success answer is an error.
pub(crate) async fn get_node(
    host: &str,
    path: &str,
    kubelet: &KubeletTls,
) -> Result<http::Response<hyper::body::Incoming>, ApiError> {
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::internal(format!("Get \"https://{host}{path}\": {e}"))
    };
    let tls = connect_node(host, path, kubelet).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(header::HOST, host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("a well-formed request");
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(&e))?;
    if resp.status() != StatusCode::OK {
        return Err(node_error(resp).await);
    }
    Ok(resp)
}

/// The text of a node's answer (why it refused), trimmed.
pub(crate) async fn node_text(resp: http::Response<hyper::body::Incoming>) -> String {
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&text).trim().to_owned()
}

/// The error a node's non-success answer becomes.
pub(crate) async fn node_error(resp: http::Response<hyper::body::Incoming>) -> ApiError {
    let status = resp.status();
    let msg = node_text(resp).await;
    match status {
        StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => ApiError::bad_request(msg),
        _ => ApiError::internal(format!("the node answered {status}: {msg}")),
    }
}
