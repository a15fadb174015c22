//! Cluster DNS: an authoritative server for the cluster domain (`cluster.local`), fed by
//! watching Services, EndpointSlices and Pods through the API server, answering on UDP and TCP.
//!
//! ```text
//! apiserver ──watch Services, EndpointSlices, Pods──► ServiceIndex + PodIps
//!                                                          │ (read per query)
//! dig / wasmlet resolvers ──UDP, TCP──► hickory-server ──► Zone::answer
//! ```
//!
//! Answers change with the watch event that changes them; TTLs are 5 s as CoreDNS's.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasmkube_dns::Error> {
//! let config = wasmkube_dns::Config {
//!     api: wasmkube_client::Source::kubeconfig("/var/lib/wasmkube/kubeconfig"),
//!     ..Default::default()
//! };
//! wasmkube_dns::run(config, tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

mod metrics;
pub mod zone;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_server::Server;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use wasmkube_api::services::ServiceIndex;
use wasmkube_client::watch;

use crate::zone::{Answer, PodIps, Zone};

/// How to run the DNS server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to reach the API servers.
    pub api: wasmkube_client::Source,
    /// Where to answer (UDP and TCP); loopback by default.
    pub listen: SocketAddr,
    /// The cluster domain.
    pub domain: String,
}

impl Config {
    /// Defaults: `127.0.0.1:10053`, `cluster.local`.
    pub fn new() -> Self {
        Config {
            api: wasmkube_client::Source::infer(),
            listen: SocketAddr::from(([127, 0, 0, 1], 10053)),
            domain: "cluster.local".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

/// Why the DNS server could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API servers cannot be reached (no configuration).
    #[error("cannot reach the API server")]
    Client(#[from] wasmkube_client::Error),
    /// The cluster domain is not a DNS name.
    #[error("bad cluster domain")]
    Domain(#[source] hickory_proto::ProtoError),
    /// The sockets could not be opened.
    #[error("i/o")]
    Io(#[from] std::io::Error),
}

/// The state queries are answered from.
struct Handler {
    zone: Zone,
    services: Arc<RwLock<ServiceIndex>>,
    pods: Arc<RwLock<PodIps>>,
    serial: Arc<AtomicU32>,
    /// `dns://ADDR`, the metrics' `server` label.
    server: String,
    /// The cluster domain with its dot, the metrics' `zone` label.
    zone_name: String,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let started = std::time::Instant::now();
        let info = self.answer(request, response).await;
        let qtype = match request.queries.queries() {
            [q] => q.query_type().to_string(),
            _ => "other".to_owned(),
        };
        metrics::answered(metrics::Answered {
            server: &self.server,
            zone: &self.zone_name,
            proto: request.protocol().to_string().to_ascii_lowercase(),
            ipv6: request.src().is_ipv6(),
            qtype,
            // CoreDNS's spelling: NOERROR, NXDOMAIN, SERVFAIL, REFUSED, FORMERR.
            rcode: format!("{:?}", info.response_code).to_ascii_uppercase(),
            took: started.elapsed(),
        });
        info
    }
}

impl Handler {
    async fn answer<R: ResponseHandler>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut meta = Metadata::response_from_request(&request.metadata);
        let query = match request.queries.queries() {
            [q] if request.metadata.message_type == MessageType::Query
                && request.metadata.op_code == OpCode::Query =>
            {
                q
            }
            _ => {
                meta.response_code = ResponseCode::FormErr;
                return send(&mut response, builder.build_no_records(meta)).await;
            }
        };
        let answer = {
            let services = self.services.read().expect("index lock");
            let pods = self.pods.read().expect("pods lock");
            let name: hickory_proto::rr::Name = query.name().into();
            self.zone
                .answer(&services, &pods, &name, query.query_type())
        };
        meta.authoritative = true;
        let soa: Vec<Record> = vec![self.zone.soa(self.serial.load(Ordering::Relaxed))];
        match answer {
            Answer::Records(answers, additionals) => {
                let msg = builder.build(meta, answers.iter(), [], [], additionals.iter());
                send(&mut response, msg).await
            }
            Answer::NoData => {
                let msg = builder.build(meta, [], [], soa.iter(), []);
                send(&mut response, msg).await
            }
            Answer::NxDomain => {
                meta.response_code = ResponseCode::NXDomain;
                let msg = builder.build(meta, [], [], soa.iter(), []);
                send(&mut response, msg).await
            }
            Answer::Refused => {
                meta.authoritative = false;
                meta.response_code = ResponseCode::Refused;
                send(&mut response, builder.build_no_records(meta)).await
            }
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    msg: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "cannot send a DNS response");
            let mut metadata = Metadata::new(0, MessageType::Response, OpCode::Query);
            metadata.response_code = ResponseCode::ServFail;
            hickory_proto::op::Header {
                metadata,
                counts: Default::default(),
            }
            .into()
        }
    }
}

/// A running DNS server.
pub struct Running {
    /// The address it answers on (UDP and TCP).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until it stops.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Runs the DNS server until `shutdown`.
///
/// # Errors
/// When it cannot reach the cluster or open its sockets.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    start(&config, shutdown).await?.wait().await;
    Ok(())
}

/// Starts the DNS server with the configured kubeconfig; returns once it listens.
///
/// # Errors
/// When it cannot reach the cluster or open its sockets.
pub async fn start(config: &Config, shutdown: CancellationToken) -> Result<Running, Error> {
    let client = wasmkube_client::connect(&config.api).await?.client;
    start_with_client(client, config, shutdown).await
}

/// Binds UDP and TCP on the same port; port 0 picks one free for both (retrying when the TCP
/// side of the port UDP got is taken).
async fn bind(
    listen: SocketAddr,
) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener, SocketAddr), Error> {
    let mut attempts = 0;
    loop {
        let udp = tokio::net::UdpSocket::bind(listen).await?;
        let addr = udp.local_addr()?;
        match tokio::net::TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp, addr)),
            Err(e) if listen.port() == 0 && attempts < 16 => {
                attempts += 1;
                tracing::debug!(%addr, error = %e, "TCP side taken; picking another port");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Starts the DNS server with `client`; returns once it listens.
///
/// # Errors
/// When the domain is invalid or the sockets cannot be opened.
pub async fn start_with_client(
    client: Client,
    config: &Config,
    shutdown: CancellationToken,
) -> Result<Running, Error> {
    let zone = Zone::new(&config.domain).map_err(Error::Domain)?;
    let (udp, tcp, addr) = bind(config.listen).await?;
    let services = Arc::new(RwLock::new(ServiceIndex::default()));
    let pods = Arc::new(RwLock::new(PodIps::default()));
    let serial = Arc::new(AtomicU32::new(1));
    let bump = {
        let serial = Arc::clone(&serial);
        move || {
            serial.fetch_add(1, Ordering::Relaxed);
        }
    };
    let feed_services = watch::services(
        client.clone(),
        Arc::clone(&services),
        bump.clone(),
        shutdown.clone(),
    );
    let feed_pods = watch::fold(
        Api::<Pod>::all(client),
        Arc::clone(&pods),
        |p: &mut PodIps, pod: &Pod| {
            let ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .and_then(|ip| match ip {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                });
            p.apply(&pod.namespace().unwrap_or_default(), &pod.name_any(), ip);
        },
        |p: &mut PodIps, ns: &str, name: &str| p.delete(ns, name),
        bump,
        shutdown.clone(),
    );
    metrics::init();
    let mut server = Server::new(Handler {
        zone,
        services,
        pods,
        serial,
        server: format!("dns://{addr}"),
        zone_name: format!("{}.", config.domain.trim_end_matches('.')),
    });
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 4096);
    tracing::info!(%addr, domain = %config.domain, "cluster DNS listening");
    let task = tokio::spawn(async move {
        let feeds = async {
            tokio::join!(feed_services, feed_pods);
        };
        tokio::select! {
            () = feeds => {}
            () = shutdown.cancelled() => {}
        }
        let _ = server.shutdown_gracefully().await;
    });
    Ok(Running { addr, task })
}
