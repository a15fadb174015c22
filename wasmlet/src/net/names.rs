//! Names and outgoing HTTP from inside a pod.
//!
//! - `wasi:sockets/ip-name-lookup` is replaced: a guest's `getaddrinfo("backend")` asks the
//!   cluster DNS (`--cluster-dns`) with the pod's search path (`NS.svc.ZONE svc.ZONE ZONE`,
//!   `ndots:5`), never the host's resolver; names outside the cluster domain are refused by the
//!   cluster DNS, so they do not resolve.
//! - `wasi:http` outgoing requests resolve their host the same way and are dialled through the
//!   pod network ([`crate::net::NodeNet::dial`]), so `http://backend/` reaches a Service's
//!   endpoint, on this node or another, and nothing else.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::Name;
use http_body_util::BodyExt;
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress, Network};
use wasmtime_wasi_http::{Error as HttpError, WasiBody, WasiHttpHooks};
use wasmtime_wasi_io::poll::{DynPollable, Pollable, subscribe};

use crate::net::podnet::{PodAddress, PodNetView};

/// Why a name did not resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// No such name (or refused: outside the cluster).
    NotFound,
    /// The cluster DNS did not answer.
    Unavailable,
}

/// The node's resolvers, one per namespace (the search path depends on it).
pub struct Names {
    server: Option<SocketAddr>,
    domain: String,
    resolvers: Mutex<HashMap<String, TokioResolver>>,
}

impl Names {
    /// Resolvers asking `server` (the cluster DNS) about `domain` names.
    pub fn new(server: Option<SocketAddr>, domain: &str) -> Self {
        Names {
            server,
            domain: domain.trim_end_matches('.').to_owned(),
            resolvers: Mutex::default(),
        }
    }

    fn resolver(&self, namespace: &str) -> Option<TokioResolver> {
        let server = self.server?;
        let mut all = self.resolvers.lock().expect("resolvers lock");
        if let Some(r) = all.get(namespace) {
            return Some(r.clone());
        }
        let search: Vec<Name> = [
            format!("{namespace}.svc.{}.", self.domain),
            format!("svc.{}.", self.domain),
            format!("{}.", self.domain),
        ]
        .iter()
        .filter_map(|s| Name::from_str(s).ok())
        .collect();
        let connection = |mut c: ConnectionConfig| {
            c.port = server.port();
            c
        };
        let mut ns = NameServerConfig::udp_and_tcp(server.ip());
        ns.connections = vec![
            connection(ConnectionConfig::udp()),
            connection(ConnectionConfig::tcp()),
        ];
        let mut opts = ResolverOpts::default();
        opts.ndots = 5;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        opts.ip_strategy = LookupIpStrategy::Ipv4Only;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.positive_max_ttl = Some(Duration::from_secs(5));
        opts.negative_max_ttl = Some(Duration::ZERO);
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, search, vec![ns]),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .ok()?;
        all.insert(namespace.to_owned(), resolver.clone());
        Some(resolver)
    }

    /// Resolves `name` for a pod in `namespace`: IP literals and `localhost` directly, the rest
    /// through the cluster DNS.
    ///
    /// # Errors
    /// [`NameError`] when it does not resolve.
    pub async fn resolve(&self, namespace: &str, name: &str) -> Result<Vec<IpAddr>, NameError> {
        let bare = name.trim_end_matches('.');
        if let Ok(ip) = IpAddr::from_str(bare.trim_start_matches('[').trim_end_matches(']')) {
            return Ok(vec![ip]);
        }
        if bare.eq_ignore_ascii_case("localhost") {
            return Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        }
        let resolver = self.resolver(namespace).ok_or(NameError::NotFound)?;
        match resolver.lookup_ip(name).await {
            Ok(found) => {
                let ips: Vec<IpAddr> = found.iter().collect();
                if ips.is_empty() {
                    Err(NameError::NotFound)
                } else {
                    Ok(ips)
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Err(NameError::NotFound),
            Err(e) => {
                tracing::debug!(%name, error = %e, "cluster DNS lookup failed");
                // REFUSED (outside the cluster) and friends: the name does not resolve.
                Err(NameError::NotFound)
            }
        }
    }
}

/// A name lookup in flight or done, as the guest's `resolve-address-stream`.
pub(crate) struct Lookup {
    pending: Option<tokio::task::JoinHandle<Result<Vec<IpAddr>, NameError>>>,
    done: Option<Result<std::vec::IntoIter<IpAddr>, ErrorCode>>,
}

fn error_code(e: NameError) -> ErrorCode {
    match e {
        NameError::NotFound => ErrorCode::NameUnresolvable,
        NameError::Unavailable => ErrorCode::TemporaryResolverFailure,
    }
}

impl Lookup {
    fn settle(&mut self, r: Result<Result<Vec<IpAddr>, NameError>, tokio::task::JoinError>) {
        self.pending = None;
        self.done = Some(match r {
            Ok(Ok(ips)) => Ok(ips.into_iter()),
            Ok(Err(e)) => Err(error_code(e)),
            Err(_) => Err(ErrorCode::TemporaryResolverFailure),
        });
    }
}

#[async_trait::async_trait]
impl Pollable for Lookup {
    async fn ready(&mut self) {
        if let Some(h) = self.pending.as_mut() {
            let r = h.await;
            self.settle(r);
        }
    }
}

/// The `wasi:sockets/ip-name-lookup` version the stock linker defines (and we shadow).
const IP_NAME_LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// Replaces the stock `wasi:sockets/ip-name-lookup` in `linker` with the cluster resolver.
///
/// # Errors
/// When linking fails.
pub(crate) fn add_to_linker<T: PodNetView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut inst = linker.instance(IP_NAME_LOOKUP)?;
    inst.resource(
        "resolve-address-stream",
        ResourceType::host::<Lookup>(),
        |mut store, rep| {
            store
                .data_mut()
                .pod_sockets()
                .inner
                .table
                .delete(Resource::<Lookup>::new_own(rep))?;
            Ok(())
        },
    )?;
    inst.func_wrap(
        "resolve-addresses",
        |mut store, (network, name): (Resource<Network>, String)| {
            let view = store.data_mut().pod_sockets();
            view.inner.table.get(&network)?;
            let Some(pod) = view.pod.as_deref() else {
                return Ok((Err(ErrorCode::AccessDenied),));
            };
            let (net, namespace) = (Arc::clone(&pod.net), pod.namespace.clone());
            let task = tokio::spawn(async move { net.names.resolve(&namespace, &name).await });
            let lookup = Lookup {
                pending: Some(task),
                done: None,
            };
            Ok((Ok(view.inner.table.push(lookup)?),))
        },
    )?;
    inst.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store, (this,): (Resource<Lookup>,)| {
            let view = store.data_mut().pod_sockets();
            let lookup: &mut Lookup = view.inner.table.get_mut(&this)?;
            if let Some(h) = lookup.pending.as_mut() {
                match h.now_or_never() {
                    Some(r) => lookup.settle(r),
                    None => return Ok((Err::<Option<IpAddress>, _>(ErrorCode::WouldBlock),)),
                }
            }
            Ok((match lookup.done.as_mut() {
                Some(Ok(ips)) => Ok(ips.next().map(Into::into)),
                Some(Err(e)) => Err(*e),
                None => Err(ErrorCode::WouldBlock),
            },))
        },
    )?;
    inst.func_wrap(
        "[method]resolve-address-stream.subscribe",
        |mut store, (this,): (Resource<Lookup>,)| {
            let view = store.data_mut().pod_sockets();
            let pollable: Resource<DynPollable> = subscribe(view.inner.table, this)?;
            Ok((pollable,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Outgoing `wasi:http` requests of a pod, routed through the pod network.
pub(crate) struct PodHttp {
    /// The pod's address (none: no network, every request is denied).
    pub pod: Option<PodAddress>,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for PodHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let pod = self.pod.clone();
        Box::new(async move {
            let Some(pod) = pod else {
                return Err(HttpError::HttpRequestDenied);
            };
            send(pod, request, options).await
        })
    }
}

/// A connection a guest's request goes over (plain, or TLS over it).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn send(
    pod: PodAddress,
    mut request: http::Request<WasiBody>,
    options: Option<wasmtime_wasi_http::RequestOptions>,
) -> wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
)> {
    let uri = request.uri().clone();
    // HTTPS is for destinations inside the cluster (the dial refuses any other), verified
    // against the cluster CA: the API server through the `kubernetes` Service, or pods serving
    // certificates from it. (TLS to the world would be outbound traffic, which is off.)
    let https = if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
        None
    } else if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        Some(pod.net.guest_https().ok_or(HttpError::HttpRequestDenied)?)
    } else {
        return Err(HttpError::HttpProtocolError);
    };
    let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
    let port = authority
        .port_u16()
        .unwrap_or(if https.is_some() { 443 } else { 80 });
    let ips = pod
        .net
        .names
        .resolve(&pod.namespace, authority.host())
        .await
        .map_err(|e| match e {
            NameError::NotFound => HttpError::DnsError {
                rcode: Some("NXDOMAIN".into()),
                info_code: None,
            },
            NameError::Unavailable => HttpError::DnsTimeout,
        })?;
    let Some(ip) = ips.into_iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }) else {
        return Err(HttpError::DestinationIpUnroutable);
    };
    let dest = if ip == Ipv4Addr::LOCALHOST {
        SocketAddrV4::new(pod.ip, port)
    } else {
        SocketAddrV4::new(ip, port)
    };
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(Duration::from_secs(30));
    let first_byte = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(Duration::from_secs(600));
    let stream = match tokio::time::timeout(connect_timeout, pod.net.dial(Some(pod.ip), dest)).await
    {
        Err(_) => return Err(HttpError::ConnectionTimeout),
        Ok(Err(e)) => {
            return Err(match e.kind() {
                std::io::ErrorKind::PermissionDenied => HttpError::HttpRequestDenied,
                std::io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
                _ => HttpError::Connect(e),
            });
        }
        Ok(Ok(s)) => s,
    };
    let stream: Box<dyn Io> = match https {
        None => Box::new(stream),
        Some(tls) => {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
            let handshake = tokio_rustls::TlsConnector::from(tls).connect(name, stream);
            match tokio::time::timeout(connect_timeout, handshake).await {
                Err(_) => return Err(HttpError::ConnectionTimeout),
                Ok(Err(e)) => {
                    return Err(HttpError::TlsProtocolError).inspect_err(
                        |_| tracing::debug!(error = %e, "a guest's TLS handshake failed"),
                    );
                }
                Ok(Ok(s)) => Box::new(s),
            }
        }
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    // Origin-form on the wire; the Host header keeps the name the guest used.
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    if !request.headers().contains_key(http::header::HOST)
        && let Ok(v) = http::HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(http::header::HOST, v);
    }
    let response = tokio::time::timeout(first_byte, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)??;
    let response = response.map(|b| b.map_err(HttpError::from).boxed_unsync());
    let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(async move {
        match driver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HttpError::from(e)),
            Err(_) => Err(HttpError::ConnectionTerminated),
        }
    });
    Ok((response, io))
}
