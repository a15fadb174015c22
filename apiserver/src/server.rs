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
mod local;
mod startup;

pub use startup::{ComponentKubeconfigs, Running, start};
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
        (_, _) if crate::proxy::route(path).is_some() => {
            let target = crate::proxy::route(path).expect("checked by the guard");
            let body = bytes::Bytes::copy_from_slice(body);
            crate::proxy::serve(&s.api, &s.kubelet, target, method, query, headers, body).await
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
        let api = startup::open(
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

        // A namespace just made is found (the store behind the cache); once it terminates,
        // nothing new goes in it (from the cache, within its lag).
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ending"}});
        let (code, st) = as_admin(&app, "POST", "/api/v1/namespaces", ns).await;
        assert_eq!(code, 201, "{st}");
        let cm = |name: String| serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
        let (code, st) = as_admin(
            &app,
            "POST",
            "/api/v1/namespaces/ending/configmaps",
            cm("first".into()),
        )
        .await;
        assert_eq!(code, 201, "{st}");
        let (code, st) = as_admin(&app, "DELETE", "/api/v1/namespaces/ending", Value::Null).await;
        assert_eq!(code, 200, "{st}");
        assert_eq!(st["status"]["phase"], "Terminating", "{st}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut attempt = 0;
        let refused = loop {
            attempt += 1;
            let name = format!("late-{attempt}");
            let (code, st) = as_admin(
                &app,
                "POST",
                "/api/v1/namespaces/ending/configmaps",
                cm(name),
            )
            .await;
            if code != 201 || std::time::Instant::now() > deadline {
                break (code, st);
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(refused.0, 403, "{}", refused.1);
        assert_eq!(
            refused.1["message"],
            format!(
                "configmaps \"late-{attempt}\" is forbidden: unable to create new content in namespace ending because it is being terminated"
            )
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
