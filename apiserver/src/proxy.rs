//! `pods/proxy` and `services/proxy`: a request to
//! `/api/v1/namespaces/{ns}/pods/{[scheme:]name[:port]}/proxy/{path}` (or
//! `services/{[scheme:]name[:port]}`) is made to that port of the pod (of one ready endpoint
//! of the Service) and the answer streams back, as kube-apiserver's proxy subresources do.
//! Pod IPs are virtual here, so the API server does not dial them: the pod's node does, at its
//! endpoint's `/podProxy` ([`wasmkube_client::proxy`]), through the pod network.
//!
//! As kube-apiserver: a pod port left out is the pod's first declared container port (80 when
//! it declares none); a Service port is its name or number, and an endpoint is picked at
//! random among the ready ones that have it; the caller's credentials are not passed on.

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use rand::Rng;
use wasmkube_client::proxy::{NODE_ANSWER_HEADER, keep_forwarded, pod_proxy_target};

use crate::Apiserver;
use crate::error::ApiError;
use crate::podlog::{KubeletTls, connect_node, load, node_endpoint, node_of};

/// What a proxy request is to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proxied {
    /// `pods/proxy`.
    Pod,
    /// `services/proxy`.
    Service,
}

/// A parsed `pods/proxy` or `services/proxy` path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxyPath<'a> {
    pub kind: Proxied,
    pub namespace: &'a str,
    /// `[scheme:]name[:port]`.
    pub id: &'a str,
    /// Below `proxy/`; `None` for a path ending in `proxy` itself.
    pub path: Option<&'a str>,
    /// The whole request path.
    pub full: &'a str,
}

/// The parts of a `pods/proxy` or `services/proxy` path.
pub(crate) fn route(path_in: &str) -> Option<ProxyPath<'_>> {
    let rest = path_in.strip_prefix("/api/v1/namespaces/")?;
    let (namespace, rest) = rest.split_once('/')?;
    let (kind, rest) = if let Some(r) = rest.strip_prefix("pods/") {
        (Proxied::Pod, r)
    } else {
        (Proxied::Service, rest.strip_prefix("services/")?)
    };
    let (id, rest) = rest.split_once('/')?;
    let tail = rest.strip_prefix("proxy")?;
    let path = match tail {
        "" => None,
        t => Some(t.strip_prefix('/')?),
    };
    (!namespace.is_empty() && !id.is_empty()).then_some(ProxyPath {
        kind,
        namespace,
        id,
        path,
        full: path_in,
    })
}

/// `(scheme, name, port)` of `[scheme:]name[:port]` (apimachinery's `SplitSchemeNamePort`).
fn split_id(id: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => ("", *name, ""),
        [name, port] => ("", *name, *port),
        [scheme, name, port] => (*scheme, *name, *port),
        _ => return None,
    };
    (!name.is_empty() && matches!(scheme, "" | "http" | "https")).then_some((scheme, name, port))
}

/// Where a proxied request goes: a pod's port, on its node.
struct Backend {
    pod: String,
    node: String,
    port: u16,
}

/// Serves a proxy request.
///
/// # Errors
/// 400 for a malformed name or port, an unscheduled pod or one without an address, or the
/// `https` scheme (not offered here); 404 for an unknown pod or Service; 503 when the Service
/// has no ready endpoint with the port or the pod cannot be reached.
pub(crate) async fn serve(
    api: &Apiserver,
    kubelet: &KubeletTls,
    p: ProxyPath<'_>,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let (scheme, name, port) = split_id(p.id)
        .ok_or_else(|| ApiError::bad_request(format!("invalid request {:?}", p.id)))?;
    let path = if let Some(path) = p.path {
        path
    } else {
        // kube-apiserver sends a GET of the bare `proxy` to `proxy/`, so relative links work.
        if *method == Method::GET {
            let location = match query {
                Some(q) if !q.is_empty() => format!("{}/?{q}", p.full),
                _ => format!("{}/", p.full),
            };
            return Ok(Response::builder()
                .status(StatusCode::MOVED_PERMANENTLY)
                .header(header::LOCATION, location)
                .body(Body::empty())
                .expect("a valid redirect"));
        }
        ""
    };
    if scheme == "https" {
        return Err(ApiError::bad_request(
            "proxying with the https scheme is not offered: pods are reached over plain HTTP",
        ));
    }
    let backend = match p.kind {
        Proxied::Pod => pod_backend(api, p.namespace, name, port).await?,
        Proxied::Service => service_backend(api, p.namespace, name, port).await?,
    };
    let host = node_endpoint(api, &backend.node, &backend.pod).await?;
    let target = pod_proxy_target(p.namespace, &backend.pod, backend.port, path, query);
    let tls = connect_node(&host, &target, kubelet).await?;
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::unavailable(format!("error trying to reach service: {e}"))
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(&target)
        .body(http_body_util::Full::new(body))
        .map_err(|e| ApiError::bad_request(format!("a request that cannot be forwarded: {e}")))?;
    *req.headers_mut() = headers.clone();
    keep_forwarded(req.headers_mut());
    req.headers_mut().insert(
        header::HOST,
        header::HeaderValue::from_str(&host).map_err(|e| ApiError::internal(e.to_string()))?,
    );
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(&e))?;
    if resp.headers().contains_key(NODE_ANSWER_HEADER) {
        // The node's own answer, not the pod's: why it could not carry the request.
        return Err(if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            unreachable(&crate::podlog::node_text(resp).await)
        } else {
            crate::podlog::node_error(resp).await
        });
    }
    let mut resp = resp.map(Body::new);
    keep_forwarded(resp.headers_mut());
    Ok(resp)
}

/// The pod `name` and the port to reach: `port`, or its first declared container port, or 80.
async fn pod_backend(
    api: &Apiserver,
    namespace: &str,
    name: &str,
    port: &str,
) -> Result<Backend, ApiError> {
    let pod: Pod = load(api, namespace, name).await?;
    let node = node_of(&pod, name)?;
    if pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(format!(
            "pod {name} has no IP address yet"
        )));
    }
    let port = if port.is_empty() {
        pod.spec
            .iter()
            .flat_map(|s| &s.containers)
            .find_map(|c| c.ports.as_ref()?.first().map(|p| p.container_port))
            .map_or(Some(80), |p| u16::try_from(p).ok())
    } else {
        port.parse().ok()
    }
    .ok_or_else(|| ApiError::bad_request(format!("invalid port {port:?} for pod {name}")))?;
    Ok(Backend {
        pod: name.to_owned(),
        node,
        port,
    })
}

/// A ready endpoint of Service `name` with port `port` (a port's name, or its number): the
/// pod behind it and its target port.
async fn service_backend(
    api: &Apiserver,
    namespace: &str,
    name: &str,
    port: &str,
) -> Result<Backend, ApiError> {
    let none = || ApiError::unavailable(format!("no endpoints available for service {name:?}"));
    let svc: Service = load(api, namespace, name).await?;
    let port_name = match port.parse::<i32>() {
        Ok(number) => svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .find(|p| p.port == number)
            .map(|p| p.name.clone().unwrap_or_default())
            .ok_or_else(|| {
                ApiError::unavailable(format!(
                    "no service port {number} found for service {name:?}"
                ))
            })?,
        Err(_) => port.to_owned(),
    };
    let endpoints: Endpoints = match load(api, namespace, name).await {
        Ok(e) => e,
        Err(e) if e.code == 404 => return Err(none()),
        Err(e) => return Err(e),
    };
    let subsets = endpoints.subsets.unwrap_or_default();
    let mut rng = rand::rng();
    let start = rng.random_range(0..subsets.len().max(1));
    for subset in subsets.iter().cycle().skip(start).take(subsets.len()) {
        let Some(p) = subset
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
        else {
            continue;
        };
        let Ok(target_port) = u16::try_from(p.port) else {
            continue;
        };
        let addresses = subset.addresses.as_deref().unwrap_or_default();
        let first = rng.random_range(0..addresses.len().max(1));
        let picked = addresses
            .iter()
            .cycle()
            .skip(first)
            .take(addresses.len())
            .find_map(|a| {
                let pod = a
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))?;
                Some((pod.name.clone()?, a.node_name.clone()?))
            });
        if let Some((pod, node)) = picked {
            return Ok(Backend {
                pod,
                node,
                port: target_port,
            });
        }
    }
    Err(none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_paths_should_name_the_pod_or_service_and_the_path_below() {
        assert_eq!(
            route("/api/v1/namespaces/default/services/backend:80/proxy/a/b"),
            Some(ProxyPath {
                kind: Proxied::Service,
                namespace: "default",
                id: "backend:80",
                path: Some("a/b"),
                full: "/api/v1/namespaces/default/services/backend:80/proxy/a/b",
            })
        );
        assert_eq!(
            route("/api/v1/namespaces/ns/pods/web/proxy").map(|p| (p.kind, p.path)),
            Some((Proxied::Pod, None))
        );
        assert_eq!(
            route("/api/v1/namespaces/ns/pods/web/proxy/").map(|p| p.path),
            Some(Some(""))
        );
        assert_eq!(route("/api/v1/namespaces/ns/pods/web/proxyx"), None);
        assert_eq!(route("/api/v1/namespaces/ns/pods/web/log"), None);
        assert_eq!(route("/api/v1/namespaces/ns/configmaps/web/proxy/"), None);
    }

    #[test]
    fn ids_should_split_as_apimachinery_splits_them() {
        assert_eq!(split_id("web"), Some(("", "web", "")));
        assert_eq!(split_id("web:8080"), Some(("", "web", "8080")));
        assert_eq!(split_id("http:web:http"), Some(("http", "web", "http")));
        assert_eq!(split_id("ftp:web:21"), None);
        assert_eq!(split_id(":80"), None);
        assert_eq!(split_id("a:b:c:d"), None);
    }
}
