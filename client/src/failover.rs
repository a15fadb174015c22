//! One client over several API servers of the same cluster. Each server gets kube-rs's own
//! stack (base URI, credentials, TLS); requests go to the server that last answered, and move
//! to the next one when it refuses the connection. Only requests that never reached a server
//! are re-sent, so nothing is applied twice; a broken watch ends and its watcher re-lists,
//! which then goes to a live server.
//!
//! A server can also hang (stopped, its disk stalled, packets dropped on the way) without
//! refusing anything. A request unanswered for a few seconds makes the client ask that
//! server's `/readyz`; when that is unanswered too, later requests go to the next server, a
//! read (`GET`, `HEAD`: lists and watches too) is sent there at once, and any other request
//! waits a bounded time and then fails saying it may or may not have been applied. A watch
//! that asked for bookmarks, which a live server sends every 30 s, ends after 75 s of silence,
//! so its watcher re-lists elsewhere.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response, Uri};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder};
use tower::BoxError;
use tower::buffer::BufferLayer;
use tower::retry::RetryLayer;

use crate::local::Local;
use crate::source::Error;

/// The API servers a [`kube::Client`] from [`crate::connect`] fails over between.
#[derive(Clone)]
pub struct Servers {
    inner: Arc<Inner>,
}

struct Inner {
    /// The configuration every server's client is built from (its URL replaced).
    config: kube::Config,
    clients: RwLock<Vec<(Uri, kube::Client)>>,
    /// The server requests go to first: the one that answered last.
    preferred: AtomicUsize,
    timings: Timings,
}

/// When a server counts as hung.
#[derive(Debug, Clone, Copy)]
struct Timings {
    /// A request unanswered this long makes the client check its server.
    suspect_after: Duration,
    /// The check (`GET /readyz`) unanswered this long: the server is hung.
    probe_timeout: Duration,
    /// How long a request that cannot be re-sent waits on a hung server (longer than the
    /// server's own write timeout, 15 s, after which a live server answers 504).
    hung_limit: Duration,
    /// A watch with bookmarks silent this long: its server is gone.
    watch_silence: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            suspect_after: Duration::from_secs(3),
            probe_timeout: Duration::from_secs(2),
            hung_limit: Duration::from_secs(30),
            watch_silence: Duration::from_secs(75),
        }
    }
}

/// kube-rs's retry policy (429/503/504, exponential back-off, honouring `Retry-After`), except
/// that a 429 without `Retry-After` is an answer, not overload — a refused eviction (its
/// disruption budget) comes back at once, as client-go returns it, instead of after minutes.
#[derive(Clone)]
struct Retry(RetryPolicy);

impl<Res> tower::retry::Policy<Request<Body>, Response<Res>, BoxError> for Retry {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Request<Body>,
        result: &mut Result<Response<Res>, BoxError>,
    ) -> Option<Self::Future> {
        if let Ok(resp) = result
            && resp.status() == http::StatusCode::TOO_MANY_REQUESTS
            && !resp.headers().contains_key(http::header::RETRY_AFTER)
        {
            return None;
        }
        self.0.retry(req, result)
    }

    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        <RetryPolicy as tower::retry::Policy<Request<Body>, Response<Res>, BoxError>>::clone_request(
            &mut self.0,
            req,
        )
    }
}

/// The client of a server in this process: kube-rs's layers (base URI, credentials, extra
/// headers) over the [`Local`] service instead of its HTTPS connector, [`Retry`] in front.
/// The stack clones as it is, so unlike [`server_client`] it needs no buffer of its own (the
/// client's is enough): one task hand-off less per request.
fn local_client(config: &kube::Config, local: &Local) -> Result<kube::Client, Error> {
    use kube::client::ConfigExt as _;
    let stack = tower::ServiceBuilder::new()
        .layer(RetryLayer::new(Retry(RetryPolicy::server_retry())))
        .map_err(BoxError::from)
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(Error::Client)?)
        .layer(config.extra_headers_layer().map_err(Error::Client)?)
        .service(local.open(config));
    Ok(kube::Client::new(stack, config.default_namespace.clone()))
}

/// One server's client: kube-rs's default stack with [`Retry`] in front.
fn server_client(config: &kube::Config, url: Uri) -> Result<kube::Client, Error> {
    let mut config = config.clone();
    config.cluster_url = url;
    // Ours instead of kube-rs's own (which would retry a 429 without `Retry-After` first).
    config.default_retry = false;
    let builder = ClientBuilder::try_from(config).map_err(Error::Client)?;
    Ok(builder
        .with_layer(&BufferLayer::new(1024))
        .with_layer(&RetryLayer::new(Retry(RetryPolicy::server_retry())))
        .build())
}

impl Servers {
    /// Clients for `urls` (the first is preferred, and reached through `local` when it is
    /// in this process), sharing `config`'s credentials and CA.
    pub(crate) fn new(
        config: &kube::Config,
        urls: Vec<Uri>,
        local: Option<&Local>,
    ) -> Result<Servers, Error> {
        let clients = urls
            .into_iter()
            .enumerate()
            .map(|(i, u)| {
                let client = match local {
                    Some(local) if i == 0 => local_client(config, local)?,
                    _ => server_client(config, u.clone())?,
                };
                Ok((u, client))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Servers {
            inner: Arc::new(Inner {
                config: config.clone(),
                clients: RwLock::new(clients),
                preferred: AtomicUsize::new(0),
                timings: Timings::default(),
            }),
        })
    }

    /// A client sending through these servers.
    pub(crate) fn client(&self, default_namespace: &str) -> kube::Client {
        kube::Client::new(
            Failover {
                inner: Arc::clone(&self.inner),
            },
            default_namespace,
        )
    }

    /// The servers' URLs, in order.
    pub fn urls(&self) -> Vec<String> {
        self.inner
            .clients
            .read()
            .expect("servers lock")
            .iter()
            .map(|(u, _)| u.to_string())
            .collect()
    }

    /// The server requests currently go to first.
    pub fn preferred(&self) -> String {
        let clients = self.inner.clients.read().expect("servers lock");
        let i = self.inner.preferred.load(Ordering::Relaxed) % clients.len().max(1);
        clients
            .get(i)
            .map(|(u, _)| u.to_string())
            .unwrap_or_default()
    }

    /// Replaces the list (say, from the `default/kubernetes` Endpoints); servers already known
    /// keep their connections.
    ///
    /// # Errors
    /// When a new server's client cannot be built; the list is then unchanged.
    pub fn set(&self, urls: &[Uri]) -> Result<(), Error> {
        if urls.is_empty() {
            return Ok(());
        }
        let current = self.inner.clients.read().expect("servers lock").clone();
        let mut next = Vec::with_capacity(urls.len());
        for u in urls {
            match current.iter().find(|(c, _)| c == u) {
                Some(known) => next.push(known.clone()),
                None => next.push((u.clone(), server_client(&self.inner.config, u.clone())?)),
            }
        }
        *self.inner.clients.write().expect("servers lock") = next;
        self.inner.preferred.store(0, Ordering::Relaxed);
        Ok(())
    }
}

/// How often a client looks at the `default/kubernetes` Endpoints for the API servers.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Servers {
    /// Keeps the list in step with the `default/kubernetes` Endpoints (every API server of the
    /// cluster), polling every ten seconds for as long as a client over these servers lives.
    /// The configured servers always stay (the Endpoints may not list a new server yet);
    /// requests keep going to the one that answered last.
    pub(crate) fn follow_endpoints(&self) {
        let weak = Arc::downgrade(&self.inner);
        let configured: Vec<Uri> = self
            .inner
            .clients
            .read()
            .expect("servers lock")
            .iter()
            .map(|(u, _)| u.clone())
            .collect();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(FOLLOW_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                {
                    let Some(inner) = weak.upgrade() else { return };
                    let servers = Servers { inner };
                    let client = kube::Client::new(
                        Failover {
                            inner: Arc::clone(&servers.inner),
                        },
                        "default",
                    );
                    let endpoints: kube::Api<k8s_openapi::api::core::v1::Endpoints> =
                        kube::Api::namespaced(client, "default");
                    if let Ok(Some(ep)) = endpoints.get_opt("kubernetes").await {
                        let mut urls = configured.clone();
                        for subset in ep.subsets.unwrap_or_default() {
                            let ports = subset.ports.unwrap_or_default();
                            for a in subset.addresses.unwrap_or_default() {
                                for p in &ports {
                                    let host = if a.ip.contains(':') {
                                        format!("[{}]", a.ip)
                                    } else {
                                        a.ip.clone()
                                    };
                                    if let Ok(u) = format!("https://{host}:{}", p.port).parse()
                                        && !urls.contains(&u)
                                    {
                                        urls.push(u);
                                    }
                                }
                            }
                        }
                        if let Err(e) = servers.learn(&urls) {
                            tracing::debug!(error = %e, "API servers from the Endpoints");
                        }
                    }
                }
            }
        });
    }

    /// Replaces the list with `urls` when it differs, keeping requests on the server they go
    /// to now when it is still listed.
    fn learn(&self, urls: &[Uri]) -> Result<(), Error> {
        let current = self.urls();
        let wanted: Vec<String> = urls.iter().map(ToString::to_string).collect();
        if current.len() == wanted.len() && wanted.iter().all(|u| current.contains(u)) {
            return Ok(());
        }
        let preferred = self.preferred();
        self.set(urls)?;
        if let Some(i) = wanted.iter().position(|u| *u == preferred) {
            self.inner.preferred.store(i, Ordering::Relaxed);
        }
        tracing::info!(servers = ?wanted, "API servers");
        Ok(())
    }
}

/// Whether a request failed before any server saw it: the connection was refused or could not
/// be made, so sending it elsewhere cannot apply it twice.
fn never_sent(err: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(legacy) = e.downcast_ref::<hyper_util::client::legacy::Error>()
            && legacy.is_connect()
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::HostUnreachable
            )
        {
            return true;
        }
        source = e.source();
    }
    false
}

fn try_clone(req: &Request<Body>) -> Option<Request<Body>> {
    let body = req.body().try_clone()?;
    let mut copy = Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .version(req.version())
        .body(body)
        .ok()?;
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

#[derive(Clone)]
struct Failover {
    inner: Arc<Inner>,
}

impl tower::Service<Request<Body>> for Failover {
    type Response = Response<Watched>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Watched>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let clients = inner.clients.read().expect("servers lock").clone();
            let n = clients.len();
            let start = inner.preferred.load(Ordering::Relaxed);
            let t = inner.timings;
            let mut next = Some(req);
            for attempt in 0..n {
                let Some(req) = next.take() else { break };
                let i = (start + attempt) % n;
                let (url, client) = &clients[i];
                let spare = (attempt + 1 < n).then(|| try_clone(&req)).flatten();
                let read = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
                let silence = watches_with_bookmarks(req.uri()).then_some(t.watch_silence);
                let sent = client.send(req);
                tokio::pin!(sent);
                let result = match tokio::time::timeout(t.suspect_after, &mut sent).await {
                    Ok(result) => result,
                    Err(_) if answers(client, t.probe_timeout).await => sent.await,
                    Err(_) => {
                        tracing::warn!(server = %url, "API server not answering, moving to the next");
                        // Later requests start at the next server.
                        let _ = inner.preferred.compare_exchange(
                            i,
                            (i + 1) % n,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                        if read && spare.is_some() {
                            next = spare;
                            continue;
                        }
                        match tokio::time::timeout(t.hung_limit, sent).await {
                            Ok(result) => result,
                            Err(_) => {
                                return Err(format!(
                                    "the API server {url} stopped answering; the request may or may not have been applied"
                                )
                                .into());
                            }
                        }
                    }
                };
                match result {
                    Err(e) if spare.is_some() && never_sent(&e) => {
                        tracing::warn!(server = %url, error = %e, "API server unreachable, trying the next");
                        next = spare;
                    }
                    Err(e) => return Err(e.into()),
                    Ok(resp) => {
                        inner.preferred.store(i, Ordering::Relaxed);
                        return Ok(resp.map(|body| Watched::new(body, silence)));
                    }
                }
            }
            Err("no API server configured".into())
        })
    }
}

/// Whether the server behind `client` answers `/readyz` (with anything) within `within`.
async fn answers(client: &kube::Client, within: Duration) -> bool {
    let probe = Request::get("/readyz")
        .body(Body::from(Vec::new()))
        .expect("a static request");
    matches!(
        tokio::time::timeout(within, client.send(probe)).await,
        Ok(Ok(_))
    )
}

/// Whether a request is a watch that asked for bookmarks (so its server speaks regularly).
fn watches_with_bookmarks(uri: &Uri) -> bool {
    let query = uri.query().unwrap_or_default();
    let has = |flag: &str| {
        query
            .split('&')
            .any(|kv| kv == flag || kv == format!("{flag}=true") || kv == format!("{flag}=1"))
    };
    has("watch") && has("allowWatchBookmarks")
}

/// A response body that fails after `silence` without data (for watches with bookmarks), and
/// is otherwise the server's body as it is.
struct Watched {
    body: Body,
    silence: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
}

impl Watched {
    fn new(body: Body, silence: Option<Duration>) -> Self {
        Watched {
            body,
            silence: silence.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        }
    }
}

impl http_body::Body for Watched {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some((d, timer)) = &mut this.silence {
                    timer.as_mut().reset(tokio::time::Instant::now() + *d);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let Some((d, timer)) = &mut this.silence else {
                    return Poll::Pending;
                };
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(format!(
                    "the API server sent nothing for {d:?} on a watch with bookmarks"
                )
                .into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_429_without_retry_after_is_an_answer_and_overload_is_retried() {
        use tower::retry::Policy as _;
        let outcome = |status: u16, retry_after: Option<&str>| {
            let mut resp = Response::builder().status(status);
            if let Some(v) = retry_after {
                resp = resp.header(http::header::RETRY_AFTER, v);
            }
            let mut result: Result<Response<()>, BoxError> = Ok(resp.body(()).unwrap());
            let mut req = Request::builder().uri("/x").body(Body::empty()).unwrap();
            Retry(RetryPolicy::server_retry())
                .retry(&mut req, &mut result)
                .is_some()
        };
        assert!(!outcome(429, None), "a refused eviction comes back at once");
        assert!(outcome(429, Some("1")), "overload is waited out");
        assert!(outcome(503, None) && outcome(504, None));
        assert!(!outcome(409, None) && !outcome(200, None));
    }

    /// A plain-HTTP "API server" that answers every request with `/version`'s shape.
    async fn version_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let body = r#"{"major":"1","minor":"33","gitVersion":"v1.33.0"}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_refused_server_should_fail_over_to_the_next_and_stay_there() {
        // A port nothing listens on: bound, then released.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let (live, _server) = version_server().await;
        let config = kube::Config::new(format!("http://{dead}").parse().expect("url"));
        let urls = vec![
            format!("http://{dead}").parse().expect("url"),
            format!("http://{live}").parse().expect("url"),
        ];
        let servers = Servers::new(&config, urls, None).expect("servers");
        let client = servers.client("default");
        let v = client
            .apiserver_version()
            .await
            .expect("answered by the live server");
        assert_eq!(v.git_version, "v1.33.0");
        assert_eq!(servers.preferred(), format!("http://{live}/"));

        tracing::info!("--- with only the dead server, the error comes back");
        servers
            .set(&[format!("http://{dead}").parse().expect("url")])
            .expect("set");
        let err = client.apiserver_version().await.expect_err("refused");
        assert!(never_sent(&err), "a refused connection: {err:?}");
    }

    /// A server that accepts connections and reads requests but never answers (a stopped
    /// process: the kernel still accepts), or answers a watch's headers and then falls silent.
    async fn hung_server(answer_headers: bool) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = conn.read(&mut buf).await;
                if answer_headers {
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await;
                }
                held.push(conn);
            }
        });
        addr
    }

    fn quick() -> Timings {
        Timings {
            suspect_after: Duration::from_millis(300),
            probe_timeout: Duration::from_millis(300),
            hung_limit: Duration::from_millis(500),
            watch_silence: Duration::from_millis(500),
        }
    }

    fn servers_at(addrs: &[std::net::SocketAddr], timings: Timings) -> Servers {
        let urls: Vec<Uri> = addrs
            .iter()
            .map(|a| format!("http://{a}").parse().expect("url"))
            .collect();
        let mut config = kube::Config::new(urls[0].clone());
        config.read_timeout = None;
        let mut servers = Servers::new(&config, urls, None).expect("servers");
        Arc::get_mut(&mut servers.inner)
            .expect("not shared yet")
            .timings = timings;
        servers
    }

    #[tokio::test]
    async fn a_hung_server_should_be_left_for_the_next_one() {
        let hung = hung_server(false).await;
        let (live, _server) = version_server().await;
        let servers = servers_at(&[hung, live], quick());
        let client = servers.client("default");
        let v = tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
            .await
            .expect("a read does not wait on the hung server")
            .expect("answered by the live server");
        assert_eq!(v.git_version, "v1.33.0");
        assert_eq!(servers.preferred(), format!("http://{live}/"));

        tracing::info!("--- a write on a hung server fails in bounded time, saying so");
        let servers = servers_at(&[hung], quick());
        let post = Request::post("/api/v1/namespaces/default/configmaps")
            .body(b"{}".to_vec())
            .expect("request");
        let err = tokio::time::timeout(
            Duration::from_secs(10),
            servers.client("default").request_text(post),
        )
        .await
        .expect("bounded")
        .expect_err("no answer");
        let text = format!("{err:?}");
        assert!(text.contains("may or may not have been applied"), "{text}");
    }

    #[tokio::test]
    async fn a_watch_with_bookmarks_should_end_when_its_server_falls_silent() {
        use http_body_util::BodyExt;
        let silent = hung_server(true).await;
        let servers = servers_at(&[silent], quick());
        let mut client = Failover {
            inner: Arc::clone(&servers.inner),
        };
        let watch = |q: &str| {
            Request::get(format!("/api/v1/pods?{q}"))
                .body(Body::from(Vec::new()))
                .expect("request")
        };
        let resp = tower::Service::call(&mut client, watch("watch=true&allowWatchBookmarks=true"))
            .await
            .expect("headers");
        let end = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .expect("the silent watch ends");
        assert!(
            end.is_err(),
            "it ends with an error, so the watcher re-lists"
        );

        let resp = tower::Service::call(&mut client, watch("watch=true"))
            .await
            .expect("headers");
        assert!(
            tokio::time::timeout(Duration::from_secs(1), resp.into_body().collect())
                .await
                .is_err(),
            "a watch without bookmarks may be quiet: it is left alone"
        );
    }

    #[tokio::test]
    async fn learning_servers_should_keep_requests_where_they_go() {
        let url = |p: u16| -> Uri { format!("http://127.0.0.1:{p}").parse().expect("url") };
        let config = kube::Config::new(url(1));
        let servers = Servers::new(&config, vec![url(1), url(2)], None).expect("servers");
        servers.inner.preferred.store(1, Ordering::Relaxed);
        servers.learn(&[url(1), url(3), url(2)]).expect("learn");
        assert_eq!(
            servers.urls(),
            [
                "http://127.0.0.1:1/",
                "http://127.0.0.1:3/",
                "http://127.0.0.1:2/"
            ]
        );
        assert_eq!(
            servers.preferred(),
            "http://127.0.0.1:2/",
            "still the same server"
        );
        servers.learn(&[url(2), url(1), url(3)]).expect("learn");
        assert_eq!(servers.urls().len(), 3, "the same set changes nothing");
        assert_eq!(servers.urls()[0], "http://127.0.0.1:1/");
    }
}
