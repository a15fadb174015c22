//! The wasmlet's own HTTPS endpoint (the kubelet's port 10250): the API server reaches it for
//! `pods/log`, as kube-apiserver reaches the kubelet's `/containerLogs`, and for `pods/exec`
//! (`/exec`, a WebSocket the API server splices to the client's).
//!
//! It serves the node's certificate and asks callers for one from the cluster CA: only the
//! cluster's administrators (group `system:masters`, which the API server's kubelet client
//! certificate is in) are served; a caller without a certificate gets 401, any other 403, as
//! the kubelet answers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, RawQuery, State};
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

use crate::pod::PodRegistry;
use crate::pod::stats::Stats;
use crate::streaming::logs::{LogFile, LogOptions, parse_record, read_records, render};

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
        .route("/exec/{namespace}/{pod}/{container}", get(exec))
        .route("/stats/summary", get(summary))
        .route("/metrics", get(metrics))
        .route("/metrics/resource", get(resource_metrics))
        .route(
            "/portForward/{namespace}/{pod}",
            axum::routing::any(port_forward),
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

fn text(status: StatusCode, msg: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
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

async fn exec(
    State(s): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    axum::Extension(caller): axum::Extension<Caller>,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(refused) = refusal(&caller, "exec") {
        return refused;
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).unwrap_or_default();
    let req = crate::streaming::exec::ExecRequest::from_pairs(&pairs);
    let ws = ws.protocols(crate::streaming::exec::PROTOCOLS);
    if ws.selected_protocol().is_none() {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "exec needs one of the WebSocket protocols {}",
                crate::streaming::exec::PROTOCOLS.join(", ")
            ),
        );
    }
    let target = s
        .pods
        .get(&namespace, &pod)
        .and_then(|p| p.running.get(&container).cloned());
    if target.is_none() {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod:?} is not running"),
        );
    }
    ws.on_upgrade(move |socket| crate::streaming::exec::serve(socket, req, target))
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
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller(None));
    if let Some(refused) = refusal(&caller, "portforward") {
        return refused;
    }
    let Some(target) = s.pods.get(&namespace, &pod).and_then(|p| p.forward) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} has no address on this node"),
        );
    };
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
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
    let offers_ours = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == STREAM_PROTOCOL));
    if upgrade != "spdy/3.1" || !offers_ours {
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
    let mut req = req;
    let upgraded = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(io) = upgraded.await {
            serve_spdy(TokioIo::new(io), target).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("x-stream-protocol-version", STREAM_PROTOCOL)
        .body(Body::empty())
        .expect("static headers are valid")
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
    let progress = log.subscribe();
    futures::stream::unfold(
        (progress, offset, false),
        move |(mut progress, mut offset, mut done)| {
            let (log, opts) = (Arc::clone(&log), opts.clone());
            async move {
                loop {
                    if done {
                        return None;
                    }
                    let closed = progress.borrow_and_update().1;
                    let bytes = std::fs::read(log.path()).unwrap_or_default();
                    // The file rotated underneath us: continue from the new file's start.
                    if (bytes.len() as u64) < offset {
                        offset = 0;
                    }
                    let new = &bytes[usize::try_from(offset)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len())..];
                    let complete = new.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                    offset += complete as u64;
                    let records: Vec<_> = new[..complete]
                        .split(|&b| b == b'\n')
                        .filter_map(parse_record)
                        .collect();
                    done = closed;
                    if !records.is_empty() {
                        return Some((Ok(render(&records, &opts)), (progress, offset, done)));
                    }
                    if closed || progress.changed().await.is_err() {
                        done = true;
                    }
                }
            }
        },
    )
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
