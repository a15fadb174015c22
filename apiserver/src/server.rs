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

use crate::auth::{Attributes, Authenticator, Authorizer};
use crate::error::ApiError;
use crate::oci::OciRegistry;
use crate::pki::Pki;
use crate::request::{Params, Target};
use crate::rest::respond_json;
use crate::{Apiserver, Config, Error, discovery, kinds};

/// Largest accepted request body (etcd's default request limit is 1.5 MiB; objects are
/// capped there, with room for patches and apply configurations).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// The most a request's path and headers may take, as kube-apiserver (Go's `MaxHeaderBytes`).
/// Requests over it get a 431 `Status` from [`handle`]; the connection's buffer is larger
/// ([`HEAD_BUFFER`]) so that they reach it instead of being cut off by hyper with no body.
const MAX_HEADER_BYTES: usize = 1024 * 1024;
const HEAD_BUFFER: usize = 4 * MAX_HEADER_BYTES;

struct Shared {
    api: Arc<Apiserver>,
    /// Who is asking (the admin token, node tokens).
    authn: Box<dyn Authenticator>,
    /// Whether they may.
    authz: Box<dyn Authorizer>,
    /// The RBAC policy, for the review APIs.
    rbac: Arc<crate::rbac::Rbac>,
    /// How this server reaches wasmlets' endpoints (its kubelet client certificate).
    kubelet: Arc<rustls::ClientConfig>,
    server: String,
    oci: OciRegistry,
    /// Joining servers and the membership.
    cluster: crate::cluster::Membership,
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

/// Serves one request and counts it (`apiserver_request_total`, durations, long-running).
async fn handle(state: State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path();
    let query = req.uri().query();
    let watch = is_watch(query);
    let attrs = Attributes::of(req.method(), path, watch);
    let follow = query
        .unwrap_or_default()
        .split('&')
        .any(|kv| kv == "follow=true" || kv == "follow=1");
    let long_running = watch
        || (follow && attrs.subresource == "log")
        || crate::podstream::stream_path(path).is_some();
    let apply = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
    let counted =
        crate::instrument::InFlight::start(req.method(), path, &attrs, apply, long_running);
    // Writes as they arrive and leave, for the per-pod trace (`podtrace=debug`).
    let traced = (req.method() != Method::GET
        && tracing::enabled!(target: "podtrace", tracing::Level::DEBUG))
    .then(|| format!("{} {path}", req.method()));
    if let Some(request) = &traced {
        tracing::debug!(target: "podtrace", request, stage = "request received");
    }
    let resp = counted.finish(serve(state, req, &attrs, watch).await);
    if let Some(request) = traced {
        tracing::debug!(target: "podtrace", request, code = resp.status().as_u16(), stage = "request answered");
    }
    resp
}

/// The web dashboard's page and bundle: public, as the page holds no data (every API call it
/// makes carries the signed-in user's token).
fn dashboard(path: &str) -> Response {
    use wasmkube_dashboard::Response as Dashboard;
    match wasmkube_dashboard::respond(path) {
        Dashboard::Asset(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            a.body,
        )
            .into_response(),
        Dashboard::Redirect(to) => {
            (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, to)]).into_response()
        }
        Dashboard::NotFound => ApiError::no_route(path).into_response(),
    }
}

/// Serves a request the authorizer sees as `attrs` (`watch`: a watch was asked for).
async fn serve(
    State(s): State<Arc<Shared>>,
    req: Request,
    attrs: &Attributes,
    watch: bool,
) -> Response {
    let (parts, body) = req.into_parts();
    let head = parts.uri.path_and_query().map_or(0, |p| p.as_str().len())
        + parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head > MAX_HEADER_BYTES {
        return ApiError::header_too_large(MAX_HEADER_BYTES).into_response();
    }
    let path = parts.uri.path().to_string();
    if wasmkube_dashboard::serves(&path) && matches!(parts.method, Method::GET | Method::HEAD) {
        return dashboard(&path);
    }
    let public = matches!(
        path.as_str(),
        "/healthz"
            | "/livez"
            | "/readyz"
            | "/version"
            // The joining server checks the CA against its token; the join checks the secret.
            | wasmkube_client::join::CA_PATH
            | crate::cluster::JOIN_PATH
            | wasmkube_client::join::NODE_JOIN_PATH
    ) || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/");
    let user = match s.authn.authenticate(&parts) {
        Some(u) => match crate::auth::impersonate(&*s.authz, u, &parts.headers) {
            Ok(u) => Some(u),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    if !public {
        let Some(user) = &user else {
            let mut resp = ApiError::unauthorized().into_response();
            if OciRegistry::serves(&path) {
                // Registry clients (oras, oci-client) expect a challenge.
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"wasmkube\""),
                );
            }
            return resp;
        };
        // The registry's paths (`/v2/...`) are non-resource URLs: a pull is `get`/`head`, a
        // push `post`/`put`/`patch`, a delete `delete` on them.
        if let Err(e) = s.authz.authorize(user, attrs) {
            return e.into_response();
        }
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
        return crate::podstream::serve(&s.api, &s.kubelet, &ns, &name, stream, req)
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
        user.as_ref(),
        &parts.method,
        &path,
        parts.uri.query(),
        &parts.headers,
        &body,
    )
    .await;
    let resp = match result {
        Ok(r) => r,
        Err(e) if e.code == 500 => {
            // The client learns which request failed; the log has why.
            let id = uuid::Uuid::new_v4().to_string();
            tracing::error!(request = %id, method = %parts.method, %path, error = %e, cause = e.cause().unwrap_or_default(), "request failed");
            let mut resp = e.for_client(&id).into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
                resp.headers_mut().insert("audit-id", v);
            }
            resp
        }
        Err(e) => {
            if e.code >= 500 {
                // Unavailable or timed out (no leader, no majority): the client retries.
                tracing::warn!(method = %parts.method, %path, code = e.code, error = %e, "request not served");
            }
            e.into_response()
        }
    };
    // The encode stage: clients that ask for protobuf first get it.
    let resp = if watch {
        resp
    } else {
        crate::protobuf::encode_response(&parts.headers, resp).await
    };
    tracing::debug!(method = %parts.method, %path, status = resp.status().as_u16(), "request");
    resp
}

/// Whether the query asks for a watch (`watch=true`, `watch=1`).
fn is_watch(query: Option<&str>) -> bool {
    query
        .unwrap_or_default()
        .split('&')
        .any(|kv| matches!(kv, "watch" | "watch=true" | "watch=1"))
}

async fn route(
    s: &Shared,
    user: Option<&crate::auth::UserInfo>,
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
            if let Some(why) = s.api.store.failure() {
                return Ok((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("[-]store failed: {why}\nreadyz check failed"),
                )
                    .into_response());
            }
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
        (&Method::GET, "/metrics") => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let (body, content_type) = wasmkube_client::metrics::negotiate(accept);
            Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
        }
        (&Method::GET, "/.well-known/openid-configuration") => get(
            crate::serviceaccount::openid_configuration(&s.api.tokens, &s.server),
        ),
        (&Method::GET, "/openid/v1/jwks") => {
            let mut resp = respond_json(StatusCode::OK, &s.api.tokens.jwks(), &[]);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/jwk-set+json"),
            );
            Ok(resp)
        }
        (&Method::GET, wasmkube_client::join::CA_PATH) => Ok(s.cluster.ca()),
        (&Method::POST, crate::cluster::JOIN_PATH) => s.cluster.join(headers),
        (&Method::POST, wasmkube_client::join::NODE_JOIN_PATH) => {
            s.cluster.join_node(headers, user, body)
        }
        (_, p)
            if p == crate::cluster::MEMBERS_PATH
                || p.starts_with(&format!("{}/", crate::cluster::MEMBERS_PATH)) =>
        {
            // Changing the servers is the administrators' business, not a node's.
            match user {
                Some(u) if u.is_master() => s.cluster.members(method, p, body).await,
                Some(u) => Err(ApiError::forbidden_request(
                    &u.name,
                    &Attributes::of(method, p, false),
                )),
                None => Err(ApiError::unauthorized()),
            }
        }
        (&Method::GET, "/openapi/v3") => get(s.api.openapi().index()),
        (&Method::GET, "/openapi/v2") => {
            // Protobuf when asked for (kubectl, client-go), else JSON, as kube-apiserver.
            let openapi = s.api.openapi();
            let (json, pb) = openapi.v2();
            let protobuf = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("protobuf"));
            let (body, content_type) = if protobuf {
                (
                    pb.clone(),
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                )
            } else {
                (json.clone(), "application/json")
            };
            let mut resp = (StatusCode::OK, body).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static(content_type),
            );
            Ok(resp)
        }
        (&Method::GET, p) if p.starts_with("/openapi/v3/") => {
            match s.api.openapi().doc(&p["/openapi/v3/".len()..]) {
                Some(doc) => Ok(crate::rest::respond(StatusCode::OK, doc.to_vec(), &[])),
                None => Err(ApiError::no_route(path)),
            }
        }
        (&Method::GET, "/api" | "/apis") => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            match discovery::aggregated_type(accept) {
                Some(media) => {
                    let version = if media.contains("v=v2beta1") {
                        "apidiscovery.k8s.io/v2beta1"
                    } else {
                        "apidiscovery.k8s.io/v2"
                    };
                    let body = discovery::aggregated(&s.api.registry, path == "/api", version);
                    let bytes = serde_json::to_vec(&body).expect("JSON serializes");
                    Ok(([(header::CONTENT_TYPE, media)], bytes).into_response())
                }
                None if path == "/api" => get(discovery::core_versions(&s.server)),
                None => get(discovery::group_list(&s.api.registry)),
            }
        }
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
        (&Method::GET, p)
            if crate::podlog::node_proxy_path(path).is_some()
                && p.starts_with("/api/v1/nodes/") =>
        {
            let (node, rest) = crate::podlog::node_proxy_path(path).expect("checked by the guard");
            crate::podlog::node_proxy(&s.api, &s.kubelet, node, rest, query).await
        }
        (&Method::GET, p) if pod_log_path(p).is_some() => {
            let (ns, name) = pod_log_path(p).expect("checked by the guard");
            crate::podlog::pod_log(&s.api, &s.kubelet, ns, name, query).await
        }
        (_, p) if crate::metrics::route(p).is_some() => {
            let target = crate::metrics::route(p).expect("checked by the guard");
            crate::metrics::answer(&s.api, &s.kubelet, method, target, query).await
        }
        (_, p) if crate::review::route(p).is_some() => {
            let (review, namespace) = crate::review::route(p).expect("checked by the guard");
            let user = user.ok_or_else(ApiError::unauthorized)?;
            crate::review::answer(
                review,
                namespace,
                method,
                user,
                &s.rbac.policy(),
                headers,
                body,
            )
        }
        (_, p) if p.starts_with("/api/") || p.starts_with("/apis/") => {
            let mut q = Params::parse(query)?;
            q.user_agent = headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            q.user = user.cloned();
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
/// Kubeconfigs with client certificates for the components that run beside a server: each
/// acts as its own user, with the rights its bootstrap ClusterRole gives.
#[derive(Debug, Clone)]
pub struct ComponentKubeconfigs {
    /// `system:kube-scheduler`.
    pub scheduler: PathBuf,
    /// `system:kube-controller-manager`.
    pub controller_manager: PathBuf,
    /// `system:kube-dns`.
    pub dns: PathBuf,
}

impl ComponentKubeconfigs {
    /// Writes them in `dir` for the server at `url`.
    fn write(dir: &std::path::Path, url: &str) -> Result<Self, Error> {
        let one = |file: &str, user: &str| -> Result<PathBuf, Error> {
            let path = dir.join(file);
            let kubeconfig = crate::pki::user_kubeconfig(dir, url, user, &[])?;
            crate::pki::write_private(&path, &kubeconfig)?;
            Ok(path)
        };
        Ok(ComponentKubeconfigs {
            scheduler: one("scheduler.kubeconfig", "system:kube-scheduler")?,
            controller_manager: one(
                "controller-manager.kubeconfig",
                "system:kube-controller-manager",
            )?,
            dns: one("dns.kubeconfig", "system:kube-dns")?,
        })
    }
}

pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The admin kubeconfig it wrote.
    pub kubeconfig: PathBuf,
    /// The kubeconfigs it wrote for the control-plane components, each with its own identity
    /// (kubeadm's `scheduler.conf`, `controller-manager.conf`).
    pub components: ComponentKubeconfigs,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The admin bearer token.
    pub token: String,
    api: Arc<Apiserver>,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// The kinds the server serves; a kind registered here is served at once (discovery,
    /// OpenAPI, every verb), as a CustomResourceDefinition's kind is.
    pub fn registry(&self) -> &crate::registry::Registry {
        &self.api.registry
    }

    /// The client side of this server's raft transport, to cut it off from other servers in
    /// partition tests ([`wasmkube_store::Network::cut`]).
    pub fn peer_network(&self) -> wasmkube_store::Network {
        self.api.store.network().clone()
    }

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
        // (A write waits out an election in the store, so a group electing a leader is fine.)
        match api.create_object(&target, &q, obj, "Update").await {
            Ok(_) => tracing::info!(namespace = name, "created"),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(Error::Io(std::io::Error::other(e.to_string()))),
        }
    }
    Ok(())
}

/// The `kubernetes` Service's cluster IP: the first address of the service range.
fn kubernetes_service_ip(config: &Config) -> std::net::Ipv4Addr {
    let range = config.network.service_cidr;
    range.hosts().next().unwrap_or(range.addr())
}

/// The request handlers' state over an opened store, with the default namespaces created.
async fn open(
    config: &Config,
    store: Store,
    tokens: Arc<crate::tokens::Tokens>,
    encryption: Arc<crate::encryption::Encryption>,
    shutdown: &CancellationToken,
) -> Result<Arc<Apiserver>, Error> {
    let caches =
        crate::cache::Caches::new(store.clone(), config.watch_cache_window, shutdown.clone());
    let registry = kinds::builtin();
    let rbac = crate::rbac::Rbac::start(&registry, &caches, shutdown.clone());
    let limit_ranges = caches.of_kind(
        &*registry
            .by_kind("", "LimitRange")
            .expect("LimitRanges are registered"),
    );
    let admission = crate::admission::Chain::standard(&store, config.network.clone(), shutdown)
        .mutating(crate::admission::limits::LimitRanger::new(Arc::clone(
            &limit_ranges,
        )))
        .mutating(
            crate::admission::serviceaccount::ServiceAccountAdmission::new(
                caches.of_kind(
                    &*registry
                        .by_kind("", "ServiceAccount")
                        .expect("ServiceAccounts are registered"),
                ),
                store.clone(),
            ),
        )
        .validating(crate::rbac::escalation::Escalation(Arc::clone(&rbac)))
        .validating(crate::nodeauth::NodeRestriction)
        .validating(crate::admission::limits::LimitRanger::new(limit_ranges))
        .validating(crate::admission::quota::QuotaAdmission::new(
            store.clone(),
            caches.of_kind(
                &*registry
                    .by_kind("", "ResourceQuota")
                    .expect("ResourceQuotas are registered"),
            ),
            Arc::clone(&encryption),
        ));
    let api = Arc::new(Apiserver {
        admission,
        caches,
        store,
        registry,
        rbac,
        tokens,
        encryption,
        shutdown: shutdown.clone(),
        bookmark_interval: config.bookmark_interval,
        openapi: Default::default(),
    });
    bootstrap(&api).await?;
    crate::crd::start(Arc::clone(&api), shutdown.clone());
    crate::rbac::bootstrap::reconcile(&api)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
    Ok(api)
}

/// Starts the API server: credentials, store, default namespaces, listener, kubeconfig.
///
/// # Errors
/// When any of those fails.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    crate::instrument::init();
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)?;
    let recorded = crate::cluster::member_id(dir);
    // A newcomer gets its id and the cluster's credentials before anything is made here.
    let joining = match (&config.join, recorded) {
        (Some(join), None) => Some((join, crate::cluster::fetch_credentials(dir, join).await?)),
        _ => None,
    };
    let node_id = recorded.or(joining.map(|(_, id)| id)).unwrap_or(1);
    let mut hosts = config.extra_sans.clone();
    if !config.listen.ip().is_unspecified() {
        hosts.push(config.listen.ip().to_string());
    }
    // Pods reach the API at the `kubernetes` Service's address, by IP or by name.
    hosts.push(kubernetes_service_ip(&config).to_string());
    hosts.extend(["kubernetes.default", "kubernetes.default.svc.cluster.local"].map(String::from));
    let pki = Pki::load_or_create(dir, &hosts)?;
    let tls = Arc::new(pki.server_config()?);
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let server = host_port(addr);
    let peer = match config.peer_listen {
        Some(at) if at.ip().is_unspecified() => {
            return Err(Error::Config(format!(
                "--peer-listen {at}: give the address the other servers reach this one at"
            )));
        }
        Some(at) => {
            let listener = TcpListener::bind(at).await?;
            let addr = listener.local_addr()?;
            let tls = pki.peer_tls(dir, &addr.ip().to_string())?;
            Some((listener, host_port(addr), tls))
        }
        None if config.join.is_some() || recorded.is_some() => {
            return Err(Error::Config(
                "a server that joins a cluster, or is a member of a group of servers \
                 (DATA_DIR/member-id), needs --peer-listen"
                    .into(),
            ));
        }
        None => None,
    };
    let (encryption, encryption_text) =
        crate::encryption::resolve(dir, config.encryption_provider_config.as_deref())?;
    let encryption = Arc::new(encryption);
    let store = Store::open(wasmkube_store::Config {
        transformer: Some(Arc::new(crate::encryption::Opener(Arc::clone(&encryption)))),
        cache_bytes: config.store_cache_bytes,
        node_id,
        advertise: peer
            .as_ref()
            .map_or_else(|| "127.0.0.1:0".into(), |(_, a, _)| a.clone()),
        api: format!("https://{server}"),
        peer_tls: peer.as_ref().map(|(_, _, tls)| Arc::clone(&tls.client)),
        // A recorded member never starts a group of its own, even with an empty store (one
        // moved aside): it waits for the others to send it the state.
        join: node_id != 1 || recorded.is_some(),
        write_timeout: config.write_timeout,
        ..wasmkube_store::Config::new(dir)
    })
    .await
    .map_err(|e| match e {
        wasmkube_store::Error::Damaged { .. } if recorded.is_some() => Error::Config(format!(
            "{e}. This server is a member of a group: move the file aside (and the raft-log \
             directory beside it, if this still fails) and start it again; it catches up from \
             the other servers"
        )),
        wasmkube_store::Error::Damaged { .. } => Error::Config(format!(
            "{e}. Restore it from a backup (or move it and the raft-log directory beside it \
             aside to start an empty cluster)"
        )),
        e => e.into(),
    })?;
    // Everything this server serves ends at shutdown, or when its store fails (a full disk):
    // it then stops answering, so clients go to another server, and says why.
    let shutdown = shutdown.child_token();
    let tracker = TaskTracker::new();
    let failure = Arc::new(std::sync::OnceLock::new());
    tracker.spawn({
        let (store, shutdown, failure) = (store.clone(), shutdown.clone(), Arc::clone(&failure));
        async move {
            tokio::select! {
                why = store.failed() => {
                    tracing::error!(error = %why, "the store failed: this server stops serving; fix the cause and restart it");
                    let _ = failure.set(why);
                    shutdown.cancel();
                }
                () = shutdown.cancelled() => {}
            }
        }
    });
    let joinable = peer.is_some();
    if let Some((listener, peer_addr, tls)) = peer {
        tracing::info!(addr = %peer_addr, id = node_id, "raft peer listener");
        tracker.spawn(wasmkube_store::network::serve(
            listener,
            store.clone(),
            Some(tls.server),
            shutdown.clone().cancelled_owned(),
        ));
        if let Some((join, id)) = joining {
            tracing::info!(server = %join.server, id, "asking to be added; catching up");
            crate::cluster::become_member(
                dir,
                join,
                &pki,
                id,
                peer_addr,
                format!("https://{server}"),
            )
            .await?;
        }
        store.ready(std::time::Duration::from_secs(120)).await?;
        if recorded.is_none() {
            // The first server of a group is a member too, from now on.
            crate::pki::write_private(&dir.join("member-id"), &node_id.to_string())?;
        }
    }
    let tokens = Arc::new(crate::tokens::Tokens::new(&pki.sa_key_pem)?);
    let api = open(
        &config,
        store.clone(),
        Arc::clone(&tokens),
        encryption,
        &shutdown,
    )
    .await?;
    let rbac = Arc::clone(&api.rbac);
    if !rbac.wait_loaded(std::time::Duration::from_secs(60)).await {
        return Err(Error::Config(
            "the RBAC policy could not be read within 60 s".into(),
        ));
    }
    let kubeconfig = dir.join("kubeconfig");
    crate::pki::write_private(&kubeconfig, &pki.kubeconfig(&format!("https://{server}")))?;
    let components = ComponentKubeconfigs::write(dir, &format!("https://{server}"))?;
    tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "apiserver listening");

    let shared_api = Arc::clone(&api);
    let shared = Arc::new(Shared {
        api: api.clone(),
        authn: Box::new(crate::auth::Any(vec![
            Box::new(crate::auth::X509),
            Box::new(crate::auth::AdminToken::new(pki.admin_token.clone())),
            Box::new(Arc::clone(&tokens)),
            Box::new(crate::serviceaccount::ServiceAccountTokens::new(
                Arc::clone(&tokens),
                &api.registry,
                &api.caches,
            )),
        ])),
        authz: Box::new(crate::nodeauth::NodeAuthorizer::new(
            api.caches
                .of_kind(&*api.registry.get("", "v1", "pods").expect("pods are served")),
            Arc::clone(&rbac),
        )),
        rbac,
        kubelet: pki.kubelet_client(dir)?,
        server,
        oci: OciRegistry::new(dir)?,
        cluster: crate::cluster::Membership::new(dir, store.clone(), &pki, tokens, joinable)?
            .sharing_encryption(encryption_text),
    });
    let app = router(shared);
    tracker.spawn(crate::kubernetes_service::run(
        Arc::clone(&api),
        kubernetes_service_ip(&config),
        shutdown.clone(),
    ));
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
                let cert =
                    crate::auth::ClientCertificate(wasmkube_client::tls::Peer::of(tls.get_ref().1));
                let svc = TowerToHyperService::new(tower::ServiceExt::map_request(
                    app,
                    move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(cert.clone());
                        req
                    },
                ));
                // hyper's own refusals (too many headers, URI too long, bad request line)
                // get a Status body too.
                let io = crate::conn::StatusOnParseError::new(tls, MAX_HEADER_BYTES);
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .max_buf_size(HEAD_BUFFER)
                    .max_headers(crate::conn::MAX_HEADERS);
                builder
                    .http2()
                    .max_header_list_size(u32::try_from(HEAD_BUFFER).unwrap_or(u32::MAX));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
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
        if let Some(why) = failure.get() {
            return Err(Error::Store(wasmkube_store::Error::Stopped(why.clone())));
        }
        store.shutdown().await?;
        tracing::info!("apiserver stopped");
        Ok(())
    });
    Ok(Running {
        addr,
        kubeconfig,
        components,
        ca_pem: pki.ca_pem,
        token: pki.admin_token,
        api: shared_api,
        task,
    })
}

/// `host:port` of a listener as clients dial it (`[v6]:port`; an unspecified address as
/// 127.0.0.1).
fn host_port(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    if addr.is_ipv6() {
        format!("[{host}]:{}", addr.port())
    } else {
        format!("{host}:{}", addr.port())
    }
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

#[cfg(test)]
mod tests {
    //! The request pipeline through the router, one request at a time (`oneshot`): each stage
    //! refuses what it should, with the `Status` a client expects.

    use super::*;
    use crate::auth::AllowAuthenticated;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    const TOKEN: &str = "test-token";

    async fn pipeline(
        authz: Box<dyn Authorizer>,
    ) -> (Router, tempfile::TempDir, CancellationToken) {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::new(dir.path());
        let shutdown = CancellationToken::new();
        let store = Store::open(wasmkube_store::Config::new(dir.path()))
            .await
            .expect("store");
        let pki = Pki::load_or_create(dir.path(), &[]).expect("pki");
        let tokens = Arc::new(crate::tokens::Tokens::new(&pki.sa_key_pem).expect("key"));
        let api = open(
            &config,
            store.clone(),
            Arc::clone(&tokens),
            Arc::default(),
            &shutdown,
        )
        .await
        .expect("apiserver");
        let rbac = Arc::clone(&api.rbac);
        let shared = Arc::new(Shared {
            api,
            rbac,
            authn: Box::new(crate::auth::Any(vec![
                Box::new(crate::auth::AdminToken::new(TOKEN)),
                Box::new(Arc::clone(&tokens)),
            ])),
            authz,
            kubelet: pki.kubelet_client(dir.path()).expect("kubelet client"),
            server: "127.0.0.1:6443".into(),
            oci: OciRegistry::new(dir.path()).expect("registry"),
            cluster: crate::cluster::Membership::new(
                dir.path(),
                store.clone(),
                &pki,
                tokens,
                false,
            )
            .expect("membership"),
        });
        (router(shared), dir, shutdown)
    }

    async fn send(
        app: &Router,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let body = if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        };
        let resp = app
            .clone()
            .oneshot(req.body(body).expect("request"))
            .await
            .expect("infallible");
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (code, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    fn admin() -> Option<&'static str> {
        Some("Bearer test-token")
    }

    async fn as_admin(
        app: &Router,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        send(app, method, path, admin(), body).await
    }

    #[tokio::test]
    async fn requests_without_a_valid_credential_should_get_401() {
        let (app, _dir, stop) = pipeline(Box::new(AllowAuthenticated)).await;
        let path = "/api/v1/namespaces/default/configmaps";
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer  test-token"),
            // `anyone:test-token`: no basic authentication on the API.
            Some("Basic YW55b25lOnRlc3QtdG9rZW4="),
        ] {
            let (code, st) = send(&app, "GET", path, auth, Value::Null).await;
            assert_eq!(
                (code, st["reason"].as_str()),
                (401, Some("Unauthorized")),
                "{auth:?}"
            );
        }
        let (code, _) = send(
            &app,
            "GET",
            path,
            Some("bearer test-token"),
            serde_json::Value::Null,
        )
        .await;
        assert_eq!(code, 200, "the scheme is case-insensitive");
        let (code, _) = send(&app, "GET", "/healthz", None, Value::Null).await;
        assert_eq!(code, 200, "health needs no credential");
        // The registry too: a bearer token or a client certificate, never basic credentials.
        for auth in [None, Some("Basic YW55b25lOnRlc3QtdG9rZW4=")] {
            let (code, _) = send(&app, "GET", "/v2/", auth, Value::Null).await;
            assert_eq!(code, 401, "registry with {auth:?}");
        }
        let (code, _) = send(&app, "GET", "/v2/", admin(), Value::Null).await;
        assert_eq!(code, 200, "the registry with the admin's bearer token");
        stop.cancel();
    }

    #[tokio::test]
    async fn headers_over_a_mebibyte_should_get_a_431_status() {
        let (app, _dir, stop) = pipeline(Box::new(AllowAuthenticated)).await;
        let req = |size: usize| {
            Request::builder()
                .uri("/api/v1/namespaces/default/configmaps")
                .header(header::AUTHORIZATION, "Bearer test-token")
                .header("x-big", "a".repeat(size))
                .body(Body::empty())
                .expect("request")
        };
        let resp = app
            .clone()
            .oneshot(req(MAX_HEADER_BYTES))
            .await
            .expect("infallible");
        assert_eq!(resp.status().as_u16(), 431);
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let st: serde_json::Value = serde_json::from_slice(&bytes).expect("a Status");
        assert_eq!(
            (st["kind"].as_str(), st["code"].as_u64()),
            (Some("Status"), Some(431))
        );
        let resp = app
            .clone()
            .oneshot(req(64 * 1024))
            .await
            .expect("infallible");
        assert_eq!(resp.status().as_u16(), 200, "large but within the limit");
        stop.cancel();
    }

    /// Lets everything but writes to ConfigMaps.
    struct NoConfigMapWrites;

    impl Authorizer for NoConfigMapWrites {
        fn authorize(
            &self,
            user: &crate::auth::UserInfo,
            attrs: &Attributes,
        ) -> Result<(), ApiError> {
            if attrs.resource == "configmaps" && attrs.verb != "get" && attrs.verb != "list" {
                return Err(ApiError::forbidden_request(&user.name, attrs));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_authorizer_should_see_the_verb_and_refuse_with_403() {
        let (app, _dir, stop) = pipeline(Box::new(NoConfigMapWrites)).await;
        let cm =
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let (code, st) = as_admin(&app, "POST", "/api/v1/namespaces/default/configmaps", cm).await;
        assert_eq!(code, 403);
        assert_eq!(
            st["message"],
            "configmaps is forbidden: User \"system:admin\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"default\""
        );
        let (code, _) = as_admin(
            &app,
            "GET",
            "/api/v1/namespaces/default/configmaps",
            Value::Null,
        )
        .await;
        assert_eq!(code, 200);
        stop.cancel();
    }

    #[tokio::test]
    async fn admission_and_strategy_should_refuse_in_order() {
        let (app, _dir, stop) = pipeline(Box::new(AllowAuthenticated)).await;
        let cm =
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let (code, st) = as_admin(&app, "POST", "/api/v1/namespaces/nowhere/configmaps", cm).await;
        assert_eq!(
            (code, st["reason"].as_str()),
            (404, Some("NotFound")),
            "NamespaceLifecycle: {st}"
        );

        let (code, st) = as_admin(&app, "DELETE", "/api/v1/namespaces/default", Value::Null).await;
        assert_eq!(code, 403, "{st}");
        assert_eq!(
            st["message"],
            "namespaces \"default\" is forbidden: this namespace may not be deleted"
        );

        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"priorityClassName": "missing", "containers": [{"name": "c", "image": "i"}]}});
        let (code, st) = as_admin(&app, "POST", "/api/v1/namespaces/default/pods", pod).await;
        assert_eq!(
            code, 403,
            "Priority refuses an unknown class before validation: {st}"
        );

        // (ServiceAccount admission needs the pod's account; the controller manager makes it.)
        let sa = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
        let (code, st) = as_admin(
            &app,
            "POST",
            "/api/v1/namespaces/default/serviceaccounts",
            sa,
        )
        .await;
        assert_eq!(code, 201, "{st}");
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}});
        let (code, st) = as_admin(&app, "POST", "/api/v1/namespaces/default/pods", pod).await;
        assert_eq!(
            (code, st["reason"].as_str()),
            (422, Some("Invalid")),
            "the strategy validates: {st}"
        );
        assert_eq!(st["details"]["causes"][0]["field"], "spec.containers");

        let svc = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
        let (code, st) = as_admin(&app, "POST", "/api/v1/namespaces/default/services", svc).await;
        assert_eq!(code, 201, "{st}");
        assert!(
            st["spec"]["clusterIP"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("10.96.")),
            "a cluster IP was reserved: {st}"
        );
        stop.cancel();
    }
}
