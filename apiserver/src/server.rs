//! Serving: the TLS listener, authentication, the top-level router, start-up (credentials,
//! store, default namespaces, kubeconfig) and the compaction loop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use wasmkube_store::Store;

use crate::error::ApiError;
use crate::oci::OciRegistry;
use crate::pki::Pki;
use crate::request::{Params, Target};
use crate::rest::respond_json;
use crate::{Apiserver, Config, Error, discovery, kinds};

/// Largest accepted request body (etcd's default request limit is 1.5 MiB; objects are
/// capped there, with room for patches and apply configurations).
const MAX_BODY: usize = 3 * 1024 * 1024;

struct Shared {
    api: Arc<Apiserver>,
    token: String,
    server: String,
    oci: OciRegistry,
}

/// The router: public health and version endpoints, everything else behind the bearer token.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(shared)
        // A bug must cost one request a 500 Status, not the connection and its watches.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("request handler panicked");
                ApiError::internal("the server panicked while handling the request").into_response()
            },
        ))
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let public = matches!(
        path.as_str(),
        "/healthz" | "/livez" | "/readyz" | "/version"
    ) || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/");
    if !public && !authenticated(&parts.headers, &s.token) {
        if OciRegistry::serves(&path) {
            // Registry clients (docker, oras, oci-client) expect a challenge.
            let mut resp = ApiError::unauthorized().into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"wasmkube\""),
            );
            return resp;
        }
        return ApiError::unauthorized().into_response();
    }
    if OciRegistry::serves(&path) {
        // Blobs stream: they are not subject to the API's request-size limit.
        return s
            .oci
            .handle(
                &parts.method,
                &path,
                parts.uri.query(),
                &parts.headers,
                body,
            )
            .await;
    }
    if let Some((ns, name, stream)) = crate::podstream::stream_path(&path)
        && matches!(parts.method, Method::GET | Method::POST)
    {
        // Streams: the request is upgraded, not read.
        let (ns, name) = (ns.to_owned(), name.to_owned());
        let req = Request::from_parts(parts, body);
        return crate::podstream::serve(&s.api, &s.token, &ns, &name, stream, req)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::too_large(format!("request body too large (limit {MAX_BODY} bytes)"))
                .into_response();
        }
    };
    let result = route(
        &s,
        &parts.method,
        &path,
        parts.uri.query(),
        &parts.headers,
        &body,
    )
    .await;
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            if e.code >= 500 && e.code != 504 {
                tracing::error!(method = %parts.method, %path, error = %e, "request failed");
            }
            e.into_response()
        }
    };
    tracing::debug!(method = %parts.method, %path, status = resp.status().as_u16(), "request");
    resp
}

/// A bearer token, or (for registry clients) HTTP basic auth with the token as the password.
fn authenticated(headers: &axum::http::HeaderMap, token: &str) -> bool {
    use base64::Engine as _;
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(t) = value.strip_prefix("Bearer ") {
        return constant_time_eq(t.trim().as_bytes(), token.as_bytes());
    }
    value
        .strip_prefix("Basic ")
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(_, password)| password.to_owned())
        })
        .is_some_and(|password| constant_time_eq(password.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn route(
    s: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let get = |v: serde_json::Value| Ok(respond_json(StatusCode::OK, &v, &[]));
    let trimmed = path.trim_end_matches('/');
    match (method, trimmed) {
        (&Method::GET, "/healthz" | "/livez") => Ok((StatusCode::OK, "ok").into_response()),
        (&Method::GET, "/readyz") => {
            let ok = s
                .api
                .store
                .raft()
                .metrics()
                .borrow()
                .current_leader
                .is_some();
            if ok {
                Ok((StatusCode::OK, "ok").into_response())
            } else {
                Ok((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "[-]raft not ready: no leader\nreadyz check failed",
                )
                    .into_response())
            }
        }
        (&Method::GET, "/version") => get(discovery::version()),
        (&Method::GET, "/openapi/v3") => get(s.api.openapi().index()),
        (&Method::GET, "/openapi/v2") => {
            let mut resp = (StatusCode::OK, crate::openapi::v2_protobuf()).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static(
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ),
            );
            Ok(resp)
        }
        (&Method::GET, p) if p.starts_with("/openapi/v3/") => {
            match s.api.openapi().doc(&p["/openapi/v3/".len()..]) {
                Some(doc) => Ok(crate::rest::respond(StatusCode::OK, doc.to_vec(), &[])),
                None => Err(ApiError::no_route(path)),
            }
        }
        (&Method::GET, "/api") => get(discovery::core_versions(&s.server)),
        (&Method::GET, "/apis") => get(discovery::group_list(&s.api.registry)),
        (&Method::GET, "/api/v1") => {
            get(discovery::resource_list(&s.api.registry, "", "v1").expect("core/v1 is served"))
        }
        (&Method::GET, p) if p.starts_with("/apis/") && p.matches('/').count() == 2 => {
            let group = &p["/apis/".len()..];
            discovery::group(&s.api.registry, group)
                .map_or_else(|| Err(ApiError::no_route(path)), get)
        }
        (&Method::GET, p) if p.starts_with("/apis/") && p.matches('/').count() == 3 => {
            let mut it = p["/apis/".len()..].split('/');
            let (g, v) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
            discovery::resource_list(&s.api.registry, g, v)
                .map_or_else(|| Err(ApiError::no_route(path)), get)
        }
        (&Method::GET, p) if pod_log_path(p).is_some() => {
            let (ns, name) = pod_log_path(p).expect("checked by the guard");
            crate::podlog::pod_log(&s.api, &s.token, ns, name, query).await
        }
        (_, p) if p.starts_with("/api/") || p.starts_with("/apis/") => {
            let mut q = Params::parse(query)?;
            q.user_agent = headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            s.api
                .handle_api(method.clone(), path, query, headers, body, q)
                .await
        }
        _ => Err(ApiError::no_route(path)),
    }
}

/// `(namespace, name)` of a `pods/log` path.
fn pod_log_path(path: &str) -> Option<(&str, &str)> {
    let rest = path
        .strip_prefix("/api/v1/namespaces/")?
        .strip_suffix("/log")?;
    let (ns, rest) = rest.split_once('/')?;
    let name = rest.strip_prefix("pods/")?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some((ns, name))
}

/// A started API server.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The admin kubeconfig it wrote.
    pub kubeconfig: PathBuf,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The admin bearer token.
    pub token: String,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Waits until the server has shut down.
    ///
    /// # Errors
    /// When the store failed to close cleanly.
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await.expect("apiserver task does not panic")
    }
}

/// Creates the namespaces every cluster starts with (kube-apiserver's bootstrap controller).
async fn bootstrap(api: &Apiserver) -> Result<(), Error> {
    let ns = api
        .registry
        .get("", "v1", "namespaces")
        .expect("namespaces are served")
        .clone();
    let target = Target {
        kind: ns,
        namespace: None,
        name: None,
        subresource: None,
        watch_path: false,
    };
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        let q = Params {
            field_manager: Some("wasmkube-apiserver".into()),
            ..Default::default()
        };
        match api.create_object(&target, &q, obj, "Update").await {
            Ok(_) => tracing::info!(namespace = name, "created"),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(Error::Io(std::io::Error::other(e.to_string()))),
        }
    }
    Ok(())
}

/// Starts the API server: credentials, store, default namespaces, listener, kubeconfig.
///
/// # Errors
/// When any of those fails.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    std::fs::create_dir_all(&config.data_dir)?;
    let mut hosts = config.extra_sans.clone();
    if !config.listen.ip().is_unspecified() {
        hosts.push(config.listen.ip().to_string());
    }
    let pki = Pki::load_or_create(&config.data_dir, &hosts)?;
    let tls = Arc::new(pki.server_config()?);
    let store = Store::open(wasmkube_store::Config::new(&config.data_dir)).await?;
    let api = Arc::new(Apiserver {
        store: store.clone(),
        registry: kinds::builtin(),
        shutdown: shutdown.clone(),
        bookmark_interval: config.bookmark_interval,
        openapi: Default::default(),
        alloc: crate::alloc::Allocator::new(config.network.clone()),
        priority: Default::default(),
    });
    Arc::clone(&api.priority).run(store.clone(), shutdown.clone());
    bootstrap(&api).await?;
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let server = if addr.is_ipv6() {
        format!("[{host}]:{}", addr.port())
    } else {
        format!("{host}:{}", addr.port())
    };
    let kubeconfig = config.data_dir.join("kubeconfig");
    crate::pki::write_private(&kubeconfig, &pki.kubeconfig(&format!("https://{server}")))?;
    tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "apiserver listening");

    let shared = Arc::new(Shared {
        api: api.clone(),
        token: pki.admin_token.clone(),
        server,
        oci: OciRegistry::new(&config.data_dir)?,
    });
    let app = router(shared);
    let tracker = TaskTracker::new();
    tracker.spawn(compaction(
        store.clone(),
        config.compaction_interval,
        shutdown.clone(),
    ));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = TowerToHyperService::new(app);
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                    }
                }
            });
        }
        tracker.close();
        tracker.wait().await;
        store.shutdown().await?;
        tracing::info!("apiserver stopped");
        Ok(())
    });
    Ok(Running {
        addr,
        kubeconfig,
        ca_pem: pki.ca_pem,
        token: pki.admin_token,
        task,
    })
}

/// Compacts history older than one interval, as kube-apiserver compacts etcd every 5 minutes
/// to the revision it saw one interval ago.
async fn compaction(store: Store, every: std::time::Duration, shutdown: CancellationToken) {
    let mut previous: Option<u64> = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(rev) = previous
            && let Err(e) = store.compact(rev).await
        {
            tracing::warn!(error = %e, "compaction failed");
        }
        match store.revision().await {
            Ok(r) => previous = Some(r),
            Err(e) => tracing::warn!(error = %e, "reading revision failed"),
        }
    }
}
