//! The wasmlet's own HTTPS endpoint (the kubelet's port 10250): the API server reaches it for
//! `pods/log`, as kube-apiserver reaches the kubelet's `/containerLogs`, and for `pods/exec`,
//! `pods/attach` and `pods/portforward` (`/exec`, `/attach`, `/portForward`: upgraded
//! connections the API server splices to the client's).
//!
//! It serves the node's certificate and asks callers for one from the cluster CA: only the
//! cluster's administrators (group `system:masters`, which the API server's kubelet client
//! certificate is in) are served; a caller without a certificate gets 401, any other 403, as
//! the kubelet answers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pod::stats::Stats;
use crate::pod::{PodRegistry, Running};
use crate::streaming::logs::{LogFile, LogOptions, read_records, render};
use crate::streaming::remotecommand::{self, Options};
use crate::streaming::text;

struct Shared {
    pods: Arc<PodRegistry>,
    stats: Arc<Stats>,
}

/// Who called, from the connection's client certificate (none: anonymous).
#[derive(Clone)]
struct Caller(Option<crate::identity::Peer>);

/// The query parameters of `pods/log`, as the API server forwards them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    follow: Option<bool>,
    previous: Option<bool>,
    tail_lines: Option<u64>,
    since_seconds: Option<i64>,
    since_time: Option<String>,
    timestamps: Option<bool>,
    limit_bytes: Option<u64>,
}

/// Binds the endpoint; returns its address and the serving task.
///
/// # Errors
/// When the address cannot be bound or the certificate cannot be made.
pub(crate) async fn start(
    listen: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    pods: Arc<PodRegistry>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), std::io::Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            axum::routing::any(exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            axum::routing::any(attach),
        )
        .route("/stats/summary", get(summary))
        .route("/metrics", get(metrics))
        .route("/metrics/resource", get(resource_metrics))
        .route(
            "/portForward/{namespace}/{pod}",
            axum::routing::any(port_forward),
        )
        .route(
            &format!("{}/{{*rest}}", wasmkube_client::proxy::POD_PROXY_PATH),
            axum::routing::any(pod_proxy),
        )
        .with_state(Arc::new(Shared { pods, stats }));
    let task = tokio::spawn(async move {
        let tracker = TaskTracker::new();
        loop {
            let (tcp, _) = tokio::select! {
                () = shutdown.cancelled() => break,
                r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            };
            let (acceptor, app, shutdown) = (acceptor.clone(), app.clone(), shutdown.clone());
            tracker.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let caller = Caller(crate::identity::Peer::of(tls.get_ref().1));
                let app = app.layer(axum::Extension(caller));
                let conn = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(tls),
                        TowerToHyperService::new(app),
                    )
                    .into_owned();
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
        tracker.close();
    });
    Ok((addr, task))
}

/// `None` for the cluster's administrators; the refusal otherwise (401 without a certificate,
/// 403 with another), worded as the kubelet words it.
fn refusal(caller: &Caller, subresource: &str) -> Option<Response> {
    match &caller.0 {
        None => Some(text(StatusCode::UNAUTHORIZED, "Unauthorized".into())),
        Some(p) if p.is_in(crate::identity::MASTERS_GROUP) => None,
        Some(p) => Some(text(
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden (user={}, verb=get, resource=nodes, subresource={subresource})",
                p.name
            ),
        )),
    }
}

/// `/stats/summary`: the node's and its pods' usage (JSON).
async fn summary(
    State(s): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    if let Some(refused) = refusal(&caller, "stats") {
        return refused;
    }
    let stats = Arc::clone(&s.stats);
    match tokio::task::spawn_blocking(move || stats.summary()).await {
        Ok(summary) => axum::Json(summary).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `/metrics`: the process's Prometheus metrics (the wasmlet's, and in `wasmkube up` every
/// component's).
async fn metrics(
    State(s): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&caller, "metrics") {
        return refused;
    }
    let stats = Arc::clone(&s.stats);
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let encoded = tokio::task::spawn_blocking(move || {
        stats.count_running();
        wasmkube_client::metrics::negotiate(accept.as_deref())
    })
    .await;
    match encoded {
        Ok((body, content_type)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `/metrics/resource`: the same usage as Prometheus text, with the kubelet's names.
async fn resource_metrics(
    State(s): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    if let Some(refused) = refusal(&caller, "metrics") {
        return refused;
    }
    let stats = Arc::clone(&s.stats);
    match tokio::task::spawn_blocking(move || stats.resource_metrics()).await {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `pods/exec`: a WebSocket or SPDY/3.1 remote-command session running the command beside
/// the container's instance.
async fn exec(
    State(s): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    req: axum::extract::Request,
) -> Response {
    let target = (&*s, namespace.as_str(), pod.as_str(), container.as_str());
    remote_command(target, req, "exec", |session, opts, running| {
        crate::streaming::exec::serve(session, opts, Some((running.prepared, running.launch)))
    })
    .await
}

/// `pods/attach`: a WebSocket or SPDY/3.1 remote-command session joined to the running
/// instance's own streams.
async fn attach(
    State(s): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    req: axum::extract::Request,
) -> Response {
    let target = (&*s, namespace.as_str(), pod.as_str(), container.as_str());
    remote_command(target, req, "attach", |session, opts, running| {
        crate::streaming::attach::serve(session, opts, Some(running))
    })
    .await
}

/// A remote-command session (`subresource`) with the running container `(node, namespace,
/// pod, container)`, served by `serve` once upgraded.
async fn remote_command<F, Fut>(
    (s, namespace, pod, container): (&Shared, &str, &str, &str),
    req: axum::extract::Request,
    subresource: &str,
    serve: F,
) -> Response
where
    F: FnOnce(remotecommand::Session, Options, Running) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if let Some(refused) = refuse(&req, subresource) {
        return refused;
    }
    let opts = Options::from_query(req.uri().query());
    let Some(running) = s.running(namespace, pod, container) else {
        return not_running(pod, container);
    };
    remotecommand::accept(req, opts.clone(), move |session| {
        serve(session, opts, running)
    })
    .await
}

impl Shared {
    /// The running instance of `container` in `namespace/pod`.
    fn running(&self, namespace: &str, pod: &str, container: &str) -> Option<Running> {
        self.pods
            .get(namespace, pod)
            .and_then(|p| p.running.get(container).cloned())
    }
}

fn not_running(pod: &str, container: &str) -> Response {
    text(
        StatusCode::BAD_REQUEST,
        format!("container {container:?} in pod {pod:?} is not running"),
    )
}

/// [`refusal`] for the caller a request's connection carries.
fn refuse(req: &axum::extract::Request, subresource: &str) -> Option<Response> {
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller(None));
    refusal(&caller, subresource)
}

/// `pods/proxy` and `services/proxy`: the request, made to the pod's port.
async fn pod_proxy(
    State(s): State<Arc<Shared>>,
    Path(rest): Path<String>,
    req: axum::extract::Request,
) -> Response {
    if let Some(refused) = refuse(&req, "proxy") {
        return refused;
    }
    crate::streaming::proxy::serve(&s.pods, &rest, req).await
}

/// `pods/portforward`: a WebSocket (SPDY tunnelled, or kube-rs's channels) or a plain SPDY/3.1
/// upgrade.
async fn port_forward(
    State(s): State<Arc<Shared>>,
    Path((namespace, pod)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Response {
    use crate::streaming::portforward::{
        CHANNEL_PROTOCOLS, SPDY_OVER_WEBSOCKET, STREAM_PROTOCOL, serve_channels, serve_spdy,
        websocket_bytes,
    };
    use axum::extract::FromRequestParts;
    use axum::extract::ws::WebSocketUpgrade;
    if let Some(refused) = refuse(&req, "portforward") {
        return refused;
    }
    let Some(target) = s.pods.get(&namespace, &pod).and_then(|p| p.forward) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} has no address on this node"),
        );
    };
    let upgrade = remotecommand::upgrade_of(req.headers());
    if upgrade == "websocket" {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(req.uri().query().unwrap_or_default()).unwrap_or_default();
        let ports: Vec<u16> = pairs
            .iter()
            .filter(|(k, _)| k == "ports")
            .flat_map(|(_, v)| v.split(','))
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        let (mut parts, _) = req.into_parts();
        let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws,
            Err(e) => return e.into_response(),
        };
        let ws = ws.protocols(std::iter::once(SPDY_OVER_WEBSOCKET).chain(CHANNEL_PROTOCOLS));
        let selected = ws
            .selected_protocol()
            .and_then(|p| p.to_str().ok())
            .map(str::to_owned);
        return match selected.as_deref() {
            Some(SPDY_OVER_WEBSOCKET) => {
                ws.on_upgrade(move |socket| serve_spdy(websocket_bytes(socket), target))
            }
            Some(_) if !ports.is_empty() => {
                ws.on_upgrade(move |socket| serve_channels(socket, ports, target))
            }
            Some(_) => text(
                StatusCode::BAD_REQUEST,
                "port forwarding over WebSocket channels needs the ports parameter".into(),
            ),
            None => text(
                StatusCode::BAD_REQUEST,
                format!("port forwarding needs the {SPDY_OVER_WEBSOCKET} WebSocket protocol"),
            ),
        };
    }
    if upgrade != "spdy/3.1" {
        let mut resp = text(
            StatusCode::FORBIDDEN,
            "port forwarding needs a SPDY/3.1 upgrade with portforward.k8s.io, or a WebSocket"
                .into(),
        );
        resp.headers_mut().insert(
            "x-accepted-stream-protocol-versions",
            header::HeaderValue::from_static(STREAM_PROTOCOL),
        );
        return resp;
    }
    remotecommand::accept_spdy(req, STREAM_PROTOCOL, move |io| serve_spdy(io, target))
}

async fn container_logs(
    State(s): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    if let Some(refused) = refusal(&caller, "log") {
        return refused;
    }
    let Some(logs) = s.pods.get(&namespace, &pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not running on this node"),
        );
    };
    let Some((current, live)) = logs.containers.get(&container).cloned() else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod:?} has not started"),
        );
    };
    let previous = q.previous.unwrap_or(false);
    let instance = if previous {
        match current.checked_sub(1) {
            Some(n) => n,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("previous terminated container {container:?} in pod {pod:?} not found"),
                );
            }
        }
    } else {
        current
    };
    let dir = logs.dir.join(&container);
    let since = match (&q.since_time, q.since_seconds) {
        (Some(t), _) => t.parse().ok(),
        (None, Some(secs)) => jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(secs))
            .ok(),
        _ => None,
    };
    let opts = LogOptions {
        timestamps: q.timestamps.unwrap_or(false),
        tail_lines: q.tail_lines,
        since,
        limit_bytes: q.limit_bytes,
    };
    // Read what is there now; remember how far, so a follow continues exactly from it.
    let file = crate::streaming::logs::instance_path(&dir, instance);
    let offset = std::fs::metadata(&file).map_or(0, |m| m.len());
    let records = match read_records(&dir, instance) {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("no logs for container {container:?}: {e}"),
            );
        }
    };
    let head = render(&records, &opts);
    let follow = q.follow.unwrap_or(false) && !previous;
    let body = match (follow, live) {
        (true, Some(log)) => {
            let tail = follow_from(log, offset, opts);
            Body::from_stream(
                futures::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(tail),
            )
        }
        _ => Body::from(head),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body)
        .expect("static headers are valid")
}

/// New log lines from `offset` on, until the instance exits.
fn follow_from(
    log: Arc<LogFile>,
    offset: u64,
    opts: LogOptions,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send {
    let opts = LogOptions {
        tail_lines: None,
        ..opts
    };
    crate::streaming::logs::follow(log, offset).map(move |records| Ok(render(&records, &opts)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Peer;

    fn status(caller: Option<Peer>) -> Option<StatusCode> {
        refusal(&Caller(caller), "log").map(|r| r.status())
    }

    #[test]
    fn only_administrators_should_be_served() {
        assert_eq!(status(None), Some(StatusCode::UNAUTHORIZED));
        let node = Peer {
            name: "system:node:b".into(),
            groups: vec!["system:nodes".into()],
        };
        assert_eq!(status(Some(node)), Some(StatusCode::FORBIDDEN));
        let apiserver = Peer {
            name: "kube-apiserver-kubelet-client".into(),
            groups: vec!["system:masters".into()],
        };
        assert_eq!(status(Some(apiserver)), None);
    }
}
