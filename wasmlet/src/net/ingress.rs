//! The Ingress front door: an HTTP listener on the node that serves networking.k8s.io/v1
//! Ingresses of the `wasmkube` IngressClass (controller `wasmkube.dev/ingress`), so many
//! wasi:http functions can be exposed on one port.
//!
//! Routing follows the Ingress specification: a rule's host matches exactly or by a leading
//! `*.` wildcard (one label), rules without a host match any; `Exact` paths beat `Prefix`
//! paths, the longest prefix wins and prefixes match whole path elements (`/foo` matches
//! `/foo/bar`, not `/foobar`); `ImplementationSpecific` is a prefix; otherwise the
//! `defaultBackend`, otherwise 404. The chosen Service port is balanced like any Service
//! connection ([`NodeNet::resolve_service_port`]) and the request is forwarded over a pooled
//! HTTP/1.1 connection through the pod network; a wasi:http pod serves it with a fresh
//! instance.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::networking::v1::{
    Ingress, IngressBackend, IngressClass, IngressClassSpec, IngressLoadBalancerIngress,
    IngressLoadBalancerStatus, IngressPortStatus,
};
use kube::api::{Patch, PatchParams, PostParams};

use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use wasmkube_api::services::PortRef;
use wasmkube_client::watch::reflect;

use crate::net::{HOLD_TIMEOUT, NodeNet, Refused};

/// The IngressClass this listener serves.
pub(crate) const CLASS: &str = "wasmkube";
/// Its controller name.
pub(crate) const CONTROLLER: &str = "wasmkube.dev/ingress";
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// Its port.
    pub port: PortRef,
}

#[derive(Debug, Clone)]
struct Route {
    host: Option<String>,
    exact: bool,
    path: String,
    target: Target,
}

/// The routes of every served Ingress.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    routes: Vec<Route>,
    default: Option<Target>,
}

fn target(namespace: &str, b: &IngressBackend) -> Option<Target> {
    let svc = b.service.as_ref()?;
    let port = svc.port.as_ref()?;
    let port = match (&port.name, port.number) {
        (Some(n), _) if !n.is_empty() => PortRef::Name(n.clone()),
        (_, Some(n)) => PortRef::Number(u16::try_from(n).ok()?),
        _ => return None,
    };
    Some(Target {
        namespace: namespace.to_owned(),
        service: svc.name.clone(),
        port,
    })
}

fn host_matches(rule: &str, host: &str) -> bool {
    match rule.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => rule == host,
    }
}

/// Whether `prefix` matches `path` element-wise.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl Routes {
    /// The routes of `ingresses` (already filtered to the served class), oldest first.
    pub(crate) fn build(ingresses: &[Arc<Ingress>]) -> Routes {
        let mut sorted: Vec<&Arc<Ingress>> = ingresses.iter().collect();
        sorted.sort_by_key(|i| {
            (
                i.metadata.creation_timestamp.as_ref().map(|t| t.0),
                i.namespace(),
                i.name_any(),
            )
        });
        let mut routes = Routes::default();
        for ing in sorted {
            let ns = ing.namespace().unwrap_or_default();
            let Some(spec) = &ing.spec else { continue };
            if routes.default.is_none() {
                routes.default = spec.default_backend.as_ref().and_then(|b| target(&ns, b));
            }
            for rule in spec.rules.iter().flatten() {
                for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                    let Some(t) = target(&ns, &p.backend) else {
                        continue;
                    };
                    routes.routes.push(Route {
                        host: rule.host.clone().filter(|h| !h.is_empty()),
                        exact: p.path_type == "Exact",
                        path: p.path.clone().unwrap_or_else(|| "/".into()),
                        target: t,
                    });
                }
            }
        }
        routes
    }

    /// The backend for `host` (no port) and `path`.
    pub(crate) fn route(&self, host: &str, path: &str) -> Option<&Target> {
        let host = host.to_ascii_lowercase();
        // Exact hosts, then wildcards, then rules without a host.
        let rank = |r: &Route| match r.host.as_deref() {
            Some(h) if !h.starts_with("*.") && h == host => Some(0),
            Some(h) if host_matches(h, &host) => Some(1),
            Some(_) => None,
            None => Some(2),
        };
        let mut best: Option<(u8, bool, usize, &Route)> = None;
        for r in &self.routes {
            let Some(hr) = rank(r) else { continue };
            let ok = if r.exact {
                r.path == path
            } else {
                prefix_matches(&r.path, path)
            };
            if !ok {
                continue;
            }
            let key = (hr, !r.exact, usize::MAX - r.path.len());
            if best.as_ref().is_none_or(|(h, e, l, _)| key < (*h, *e, *l)) {
                best = Some((key.0, key.1, key.2, r));
            }
        }
        best.map(|b| &b.3.target).or(self.default.as_ref())
    }
}

/// Idle HTTP/1.1 connections to backends, reused across requests.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<SocketAddrV4, Vec<SendRequest<Incoming>>>>,
}

impl Pool {
    fn take(&self, addr: SocketAddrV4) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(&addr)?;
        while let Some(s) = list.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddrV4, s: SendRequest<Incoming>) {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(addr).or_default();
        if list.len() < 64 {
            list.push(s);
        }
    }
}

struct Shared {
    net: Arc<NodeNet>,
    routes: RwLock<Routes>,
    pool: Pool,
}

type Body = http_body_util::combinators::UnsyncBoxBody<
    bytes::Bytes,
    Box<dyn std::error::Error + Send + Sync>,
>;

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(bytes::Bytes::from(msg.to_owned()))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(shared: Arc<Shared>, client: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().host().map(str::to_owned))
        .unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .filter(|(_, p)| p.parse::<u16>().is_ok())
        .map_or(host.as_str(), |(h, _)| h)
        .to_owned();
    let path = req.uri().path().to_owned();
    let target = shared
        .routes
        .read()
        .expect("routes lock")
        .route(&host, &path)
        .cloned();
    let Some(target) = target else {
        return text(StatusCode::NOT_FOUND, "default backend - 404\n");
    };
    let client_v4 = match client {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => shared.net.node_ip,
    };
    let resolve = || {
        shared
            .net
            .resolve_service_port(&target.namespace, &target.service, &target.port, client_v4)
    };
    let mut cold = None;
    let dest = match resolve() {
        Ok(d) => d,
        Err(Refused::Refused | Refused::Denied) => {
            // A Service at zero pods: hold the request until a replica is ready.
            if !shared.net.holds(&target.namespace, &target.service) {
                return text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
            }
            let started = std::time::Instant::now();
            let ready = shared
                .net
                .wait_for_endpoint(&target.namespace, &target.service, HOLD_TIMEOUT)
                .await;
            match resolve() {
                Ok(d) if ready => {
                    cold = Some(started.elapsed());
                    crate::metrics::cold_start(started.elapsed());
                    d
                }
                _ => {
                    tracing::info!(service = %format_args!("{}/{}", target.namespace, target.service), "no endpoint became ready for a held request");
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no endpoint became ready in time (scale from zero)\n",
                    );
                }
            }
        }
    };
    let resp = forward_request(&shared, dest, client, req).await;
    match cold {
        None => resp,
        Some(took) => with_cold_start(resp, took),
    }
}

/// Marks a response that waited for a replica: `X-Wasmkube-Cold-Start: <ms>`.
fn with_cold_start(mut resp: Response<Body>, took: std::time::Duration) -> Response<Body> {
    let ms = format!("{:.3}", took.as_secs_f64() * 1000.0);
    if let Ok(v) = http::HeaderValue::from_str(&ms) {
        resp.headers_mut().insert("x-wasmkube-cold-start", v);
    }
    resp
}

/// Sends `req` to `dest`: in process to a local wasi:http pod, else over a pooled connection.
async fn forward_request(
    shared: &Shared,
    dest: SocketAddrV4,
    client: IpAddr,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if let Ok(v) = http::HeaderValue::from_str(&client.to_string()) {
        req.headers_mut().append("x-forwarded-for", v);
    }
    req.headers_mut()
        .insert("x-forwarded-proto", http::HeaderValue::from_static("http"));
    let origin = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .unwrap_or_default();
    *req.uri_mut() = origin;
    *req.version_mut() = http::Version::HTTP_11;
    // A wasi:http pod on this node: instantiate it for the request right here.
    if let Ok(route) = shared.net.route(None, dest)
        && let Some(handler) = shared.net.http_handler(&route)
    {
        return handler(req)
            .await
            .map(|b| b.map_err(Into::into).boxed_unsync());
    }
    let sender = match shared.pool.take(dest) {
        Some(s) => s,
        None => match connect(&shared.net, dest).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%dest, error = %e, "ingress: upstream connect failed");
                return text(StatusCode::BAD_GATEWAY, "upstream connect error\n");
            }
        },
    };
    let mut sender = sender;
    match sender.send_request(req).await {
        Ok(resp) => {
            shared.pool.put(dest, sender);
            resp.map(|b| b.map_err(Into::into).boxed_unsync())
        }
        Err(e) => {
            tracing::debug!(%dest, error = %e, "ingress: upstream request failed");
            text(StatusCode::BAD_GATEWAY, "upstream request failed\n")
        }
    }
}

async fn connect(net: &Arc<NodeNet>, dest: SocketAddrV4) -> std::io::Result<SendRequest<Incoming>> {
    let stream = net.dial(None, dest).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Serves Ingresses on `listener` until `shutdown`, keeping routes and Ingress status current.
pub(crate) async fn run(
    net: Arc<NodeNet>,
    client: Client,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    ensure_class(&client).await;
    let shared = Arc::new(Shared {
        net: Arc::clone(&net),
        routes: RwLock::default(),
        pool: Pool::default(),
    });
    let follow = follow(Arc::clone(&shared), client, port, shutdown.clone());
    let serve = serve(Arc::clone(&shared), listener, shutdown.clone());
    tokio::join!(follow, serve);
}

/// Creates the `wasmkube` IngressClass (the default class) if it is missing.
async fn ensure_class(client: &Client) {
    let classes: Api<IngressClass> = Api::all(client.clone());
    let class = IngressClass {
        metadata: kube::api::ObjectMeta {
            name: Some(CLASS.into()),
            annotations: Some([(DEFAULT_CLASS_ANNOTATION.to_owned(), "true".to_owned())].into()),
            ..Default::default()
        },
        spec: Some(IngressClassSpec {
            controller: Some(CONTROLLER.into()),
            parameters: None,
        }),
    };
    match classes.create(&PostParams::default(), &class).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => tracing::warn!(error = %e, "cannot create the wasmkube IngressClass"),
    }
}

async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) {
    loop {
        let (conn, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        let _ = conn.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(shared, peer.ip(), req).await) }
            });
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(conn), service)
                .into_owned();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

/// Whether this listener serves `ing`.
fn ours(ing: &Ingress, classes: &[Arc<IngressClass>]) -> bool {
    let ours_named = |name: &str| {
        classes.iter().any(|c| {
            c.name_any() == name
                && c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER)
        })
    };
    let annotated = ing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/ingress.class"));
    match ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or(annotated.map(String::as_str))
    {
        Some(name) => ours_named(name),
        None => classes.iter().any(|c| {
            c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER)
                && c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                    .is_some_and(|v| v == "true")
        }),
    }
}

async fn follow(shared: Arc<Shared>, client: Client, port: u16, shutdown: CancellationToken) {
    let (ingresses, ing_events) = reflect(Api::<Ingress>::all(client.clone()));
    let (classes, class_events) = reflect(Api::<IngressClass>::all(client.clone()));
    let (ing_stream, class_stream) = (ing_events.map(|_| ()), class_events.map(|_| ()));
    let mut changes = futures::stream::select(ing_stream, class_stream).boxed();
    let address = shared.net.node_ip.to_string();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            next = changes.next() => if next.is_none() { return },
        }
        let classes = classes.state();
        let served: Vec<Arc<Ingress>> = ingresses
            .state()
            .into_iter()
            .filter(|i| ours(i, &classes))
            .collect();
        *shared.routes.write().expect("routes lock") = Routes::build(&served);
        for ing in &served {
            report(&client, ing, &address, port).await;
        }
    }
}

/// Adds this node's address to the Ingress status, once.
async fn report(client: &Client, ing: &Ingress, address: &str, port: u16) {
    let mut current: Vec<IngressLoadBalancerIngress> = ing
        .status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .cloned()
        .collect();
    if current.iter().any(|i| i.ip.as_deref() == Some(address)) {
        return;
    }
    current.push(IngressLoadBalancerIngress {
        ip: Some(address.to_owned()),
        ports: Some(vec![IngressPortStatus {
            port: i32::from(port),
            protocol: "TCP".into(),
            error: None,
        }]),
        hostname: None,
    });
    let status = IngressLoadBalancerStatus {
        ingress: Some(current),
    };
    let api: Api<Ingress> = Api::namespaced(client.clone(), &ing.namespace().unwrap_or_default());
    let patch = serde_json::json!({"status": {"loadBalancer": status}});
    if let Err(e) = api
        .patch_status(
            &ing.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::debug!(ingress = %ing.name_any(), error = %e, "cannot report the ingress address");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ing(name: &str, spec: serde_json::Value) -> Arc<Ingress> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "d"}, "spec": spec,
            }))
            .expect("ingress"),
        )
    }

    fn svc(name: &str) -> serde_json::Value {
        json!({"service": {"name": name, "port": {"number": 80}}})
    }

    #[test]
    fn hosts_and_paths_route_like_the_ingress_spec() {
        let routes = Routes::build(&[ing(
            "a",
            json!({"defaultBackend": svc("fallback"), "rules": [
                {"host": "foo.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": svc("foo-root")},
                    {"path": "/api", "pathType": "Prefix", "backend": svc("foo-api")},
                    {"path": "/api/v1/exact", "pathType": "Exact", "backend": svc("foo-exact")},
                ]}},
                {"host": "*.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": svc("wild")}]}},
                {"http": {"paths": [
                    {"path": "/fn", "pathType": "Prefix", "backend": svc("any-host")}]}},
            ]}),
        )]);
        let to = |h: &str, p: &str| routes.route(h, p).map(|t| t.service.clone());
        assert_eq!(to("foo.example", "/").as_deref(), Some("foo-root"));
        assert_eq!(to("foo.example", "/api").as_deref(), Some("foo-api"));
        assert_eq!(to("foo.example", "/api/x").as_deref(), Some("foo-api"));
        assert_eq!(to("foo.example", "/apix").as_deref(), Some("foo-root"));
        assert_eq!(
            to("foo.example", "/api/v1/exact").as_deref(),
            Some("foo-exact")
        );
        assert_eq!(to("bar.example", "/x").as_deref(), Some("wild"));
        assert_eq!(to("a.b.example", "/fn/1").as_deref(), Some("any-host"));
        assert_eq!(to("other", "/fn").as_deref(), Some("any-host"));
        assert_eq!(to("other", "/nothing").as_deref(), Some("fallback"));
    }

    #[test]
    fn only_our_class_is_served() {
        let class: Arc<IngressClass> = Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "wasmkube", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
                "spec": {"controller": CONTROLLER},
            }))
            .expect("class"),
        );
        let classes = [class];
        assert!(ours(
            &ing("x", json!({"ingressClassName": "wasmkube"})),
            &classes
        ));
        assert!(ours(&ing("x", json!({})), &classes), "the default class");
        assert!(!ours(
            &ing("x", json!({"ingressClassName": "nginx"})),
            &classes
        ));
    }
}
