//! The wasmlet: wasmkube's kubelet. It registers a Node, watches the pods bound to it through
//! the API server, and runs each pod's containers as WebAssembly instances in its own process
//! with wasmtime.
//!
//! ```text
//! apiserver ──watch pods (spec.nodeName=me)──► pod drivers (worker state machine)
//!     ▲                                            │ pull (oci-client) → compile (cache) →
//!     │                                            ▼ wasmtime Store per container instance
//!     └──── Node, Lease, pod status, Events ◄──────┘
//!     └──── pods/log ──► wasmlet HTTPS /containerLogs
//! ```
//!
//! Like every wasmkube component it talks to the cluster only through the Kubernetes API
//! (kube-rs), so it can join any wasmkube API server:
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasmkube_wasmlet::Error> {
//! let config = wasmkube_wasmlet::Config {
//!     api: wasmkube_client::Source::kubeconfig("/var/lib/wasmkube/kubeconfig"),
//!     ..wasmkube_wasmlet::Config::new("node-1", "/var/lib/wasmkube-node")
//! };
//! wasmkube_wasmlet::run(config, tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerImage, Pod};
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod identity;
mod metrics;
mod net;
mod node;
mod pod;
pub mod runtime;
mod streaming;

pub use pod::worker::Backoff;
pub use runtime::images;
pub use streaming::logs;

use crate::node::NodeFacts;
use crate::pod::{IpPool, NodeCtx, PodRegistry};
use crate::runtime::images::{ClusterRegistry, Images, Registries};
use crate::runtime::{Runtime, RuntimeConfig};

/// How to run a wasmlet.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Node's name.
    pub node_name: String,
    /// Where images, compiled code, pod volumes and logs live.
    pub data_dir: PathBuf,
    /// Where to reach the API servers.
    pub api: wasmkube_client::Source,
    /// The wasmlet's HTTPS endpoint (logs); port 0 picks one.
    pub listen: SocketAddr,
    /// The node address reported as `InternalIP` (none: the listen address, or 127.0.0.1).
    pub address: Option<String>,
    /// The loopback range behind pod IPs (each pod's virtual IP from the node's `podCIDR` is
    /// backed by its own 127.x.y.z; `.1` is the node's relay address).
    pub pod_range: (Ipv4Addr, u8),
    /// The node-to-node tunnel's port on the node address (0 picks one).
    pub tunnel_port: u16,
    /// Reach peers whose node address is not loopback (multi-host clusters).
    pub remote_peers: bool,
    /// The cluster DNS server guests' names are resolved with (kubelet's `--cluster-dns`).
    pub cluster_dns: Option<SocketAddr>,
    /// The cluster domain (kubelet's `--cluster-domain`).
    pub cluster_domain: String,
    /// Where the Ingress listener serves HTTP (none: no Ingress on this node).
    pub ingress_listen: Option<SocketAddr>,
    /// `pods` capacity; also sizes the engine's instance pool.
    pub max_pods: u32,
    /// The largest memory one instance may have (a limit above it is capped).
    pub max_instance_memory: usize,
    /// Crash and image-pull back-off (Kubernetes: 10 s doubling to 5 min).
    pub backoff: Backoff,
    /// Log rotation per container.
    pub rotation: logs::Rotation,
    /// Registries reached over plain HTTP (`host:port`).
    pub insecure_registries: Vec<String>,
    /// Extra labels for the Node (kubelet's `--node-labels`).
    pub node_labels: std::collections::BTreeMap<String, String>,
    /// The Lease's duration (kubelet's `--node-lease-duration-seconds`, 40 s); it is renewed,
    /// and the node status checked, every quarter of it.
    pub lease_duration: std::time::Duration,
    /// The window CPU usage rates are averaged over (cAdvisor's housekeeping interval).
    pub metrics_window: std::time::Duration,
    /// Pods' events written per second at most, after a burst (kubelet's `eventRecordQPS`
    /// 50, `eventBurst` 100; qps 0: no limit).
    pub event_limits: wasmkube_client::events::EventLimits,
}

impl Config {
    /// Defaults for node `node_name` storing its data in `data_dir`.
    pub fn new(node_name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_name: node_name.into(),
            data_dir: data_dir.into(),
            api: wasmkube_client::Source::infer(),
            listen: SocketAddr::from(([127, 0, 0, 1], 10250)),
            address: None,
            pod_range: (Ipv4Addr::new(127, 77, 0, 0), 16),
            tunnel_port: 0,
            remote_peers: false,
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            ingress_listen: None,
            max_pods: 10_000,
            max_instance_memory: 512 << 20,
            backoff: Backoff::default(),
            rotation: logs::Rotation::default(),
            insecure_registries: Vec::new(),
            node_labels: Default::default(),
            lease_duration: node::LEASE_DURATION,
            metrics_window: METRICS_WINDOW,
            event_limits: wasmkube_client::events::EventLimits::default(),
        }
    }
}

/// The reason of the Event a node records when it holds a request for a Service at zero
/// pods (the autoscaler scales its target up when it sees one).
pub const SCALE_FROM_ZERO_REASON: &str = "ScaleFromZero";

/// The default [`Config::metrics_window`].
pub const METRICS_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the wasmlet could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the API server")]
    Client(#[from] wasmkube_client::Error),
    #[error("cannot start the engine")]
    Engine(#[source] wasmtime::Error),
    #[error("cannot register the node")]
    Register(#[source] kube::Error),
    #[error("i/o")]
    Io(#[from] std::io::Error),
    #[error("cannot join the cluster")]
    Join(#[source] Box<wasmkube_client::join::Error>),
}

/// The registries a client configuration implies: the API server's `/v2/` for names without a
/// host, trusting the cluster CA, presenting the same token.
pub fn registries_for(kc: &kube::Config, insecure: Vec<String>) -> Registries {
    use secrecy::ExposeSecret;
    let host = kc
        .cluster_url
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let token = kc
        .auth_info
        .token
        .as_ref()
        .map(|t| t.expose_secret().to_owned())
        .unwrap_or_default();
    let ca_pem =
        wasmkube_client::tls::pem_bundle(kc.root_cert.as_deref().unwrap_or_default()).into_bytes();
    Registries {
        cluster: Some(ClusterRegistry {
            host,
            token,
            ca_pem,
        }),
        insecure,
    }
}

/// Open files: every running container that wrote output holds its log file and a directory
/// for each volume it mounts (every pod's token volume is one), so thousands of pods need more
/// than the usual soft limit. The soft limit goes up to the hard one, and both to `fs.nr_open`
/// where that is allowed (root), as containerd's and the kubelet's service units set
/// `LimitNOFILE`.
fn raise_open_files_limit(max_pods: u32) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let raised = now.maximum.is_some_and(|hard| hard < ceiling)
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(ceiling),
                maximum: Some(ceiling),
            },
        )
        .is_ok();
    if !raised && now.current < now.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: now.maximum,
                maximum: now.maximum,
            },
        );
    }
    let limit = getrlimit(Resource::Nofile).current;
    // A log file and a token volume per pod, and room for connections.
    let wanted = 2 * u64::from(max_pods) + 1024;
    if limit.is_some_and(|l| l < wanted) {
        tracing::warn!(
            open_files = ?limit,
            max_pods,
            "the open files limit is below two per pod and it could not be raised (no CAP_SYS_RESOURCE?): pods beyond it fail with 'Too many open files'"
        );
    } else {
        tracing::debug!(open_files = ?limit, "open files limit");
    }
}

/// Runs the wasmlet until `shutdown`: registers the node, keeps its lease, runs its pods.
///
/// # Errors
/// [`Error`] when it cannot start; once running it retries API failures instead.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    raise_open_files_limit(config.max_pods);
    metrics::init();
    runtime::usage::configure_from_env();
    let conn = wasmkube_client::connect(&config.api).await?;
    std::fs::create_dir_all(&config.data_dir)?;
    let (credentials, conn) = identity::ensure(&config.data_dir, &config.node_name, conn).await?;
    let tls = Arc::new(identity::NodeTls::new(&credentials)?);
    let kc = &conn.config;
    let registries = registries_for(kc, config.insecure_registries.clone());
    let client = conn.client;
    let images = Arc::new(Images::open(&config.data_dir.join("images"), registries)?);
    let runtime = Runtime::new(&RuntimeConfig {
        cache_dir: config.data_dir.join("compiled"),
        // Long-running containers plus headroom for per-request HTTP instances.
        max_instances: config
            .max_pods
            .saturating_add(config.max_pods / 10)
            .saturating_add(16),
        max_memory_bytes: config.max_instance_memory,
    })
    .map_err(Error::Engine)?;

    let address = config.address.clone().unwrap_or_else(|| {
        if config.listen.ip().is_unspecified() {
            "127.0.0.1".into()
        } else {
            config.listen.ip().to_string()
        }
    });
    let pods = Arc::new(PodRegistry::default());
    let stats = Arc::new(pod::stats::Stats::new(
        config.node_name.clone(),
        config.metrics_window,
        Arc::clone(&pods),
    ));
    tokio::spawn(Arc::clone(&stats).run_sampler(shutdown.clone()));
    let (addr, server) = streaming::server::start(
        config.listen,
        Arc::clone(&tls.endpoint),
        Arc::clone(&pods),
        Arc::clone(&stats),
        shutdown.clone(),
    )
    .await?;
    let node_ip: Ipv4Addr = address.parse().unwrap_or(Ipv4Addr::LOCALHOST);
    let tunnel = tokio::net::TcpListener::bind((node_ip, config.tunnel_port)).await?;
    let facts = NodeFacts {
        name: config.node_name.clone(),
        address: address.clone(),
        port: addr.port(),
        max_pods: config.max_pods,
        labels: config.node_labels.clone(),
        tunnel_port: tunnel.local_addr()?.port(),
    };
    let image_list = {
        let images = Arc::clone(&images);
        move || -> Vec<ContainerImage> { images.list() }
    };
    let node = node::register(&client, &facts, image_list())
        .await
        .map_err(Error::Register)?;
    let node_uid = node.metadata.uid.clone().unwrap_or_default();
    let pod_cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .and_then(|c| c.parse().ok());
    let backing = ipnet::Ipv4Net::new(config.pod_range.0, config.pod_range.1.clamp(8, 30))
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
        .trunc();
    let net = Arc::new(
        net::NodeNet::new(backing, pod_cidr, node_ip, Some(Arc::clone(&tls))).with_names(
            net::names::Names::new(config.cluster_dns, &config.cluster_domain),
        ),
    );
    if u64::from(net.capacity()) < u64::from(config.max_pods) {
        tracing::info!(
            pod_cidr = ?pod_cidr,
            addresses = net.capacity(),
            max_pods = config.max_pods,
            "the pod range is smaller than max-pods; pods beyond it run without a network"
        );
    }
    let relay = tokio::net::TcpListener::bind((net.relay_ip(), 0)).await?;
    net.set_relay(relay.local_addr()?);
    tracing::info!(node = %config.node_name, %addr, pod_cidr = ?pod_cidr, "wasmlet registered");

    let tasks = TaskTracker::new();
    tasks.spawn(net::tunnel::serve(
        Arc::clone(&net),
        Arc::clone(&tls),
        tunnel,
        shutdown.clone(),
    ));
    tasks.spawn(Arc::clone(&net).run_relay(relay, shutdown.clone()));
    if let Some(addr) = config.ingress_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(addr = %listener.local_addr()?, "ingress listening");
                tasks.spawn(net::ingress::run(
                    Arc::clone(&net),
                    client.clone(),
                    listener,
                    shutdown.clone(),
                ));
            }
            Err(e) => tracing::warn!(%addr, error = %e, "cannot open the ingress listener"),
        }
    }
    tasks.spawn(net::proxy::run(
        Arc::clone(&net),
        client.clone(),
        config.node_name.clone(),
        config.remote_peers,
        shutdown.clone(),
    ));
    tasks.spawn(net::policy::run(
        Arc::clone(&net),
        client.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(node::heartbeat(
        config.lease_duration,
        client.clone(),
        config.node_name.clone(),
        node_uid,
        shutdown.clone(),
    ));
    let (recorder, recorder_task) = pod::events::Recorder::start(
        client.clone(),
        &config.node_name,
        config.event_limits,
        shutdown.clone(),
    );
    node::record_start(&recorder, &config.node_name);
    tasks.spawn(node::report_status(
        client.clone(),
        facts,
        config.lease_duration / 4,
        image_list,
        recorder.clone(),
        shutdown.clone(),
    ));
    {
        // A request held for a Service at zero pods asks for a replica: an Event the
        // autoscaler acts on at once.
        let recorder = recorder.clone();
        net.set_waker(Box::new(move |ns: &str, name: &str, wake: net::Wake| {
            let (kind, reason, message) = match wake {
                net::Wake::Wanted => (
                    pod::worker::EventType::Normal,
                    SCALE_FROM_ZERO_REASON,
                    "a request is waiting for a ready endpoint".to_owned(),
                ),
                net::Wake::TimedOut => (
                    pod::worker::EventType::Warning,
                    "FailedScaleFromZero",
                    format!(
                        "no endpoint became ready within {} s; the held request was refused",
                        net::HOLD_TIMEOUT.as_secs()
                    ),
                ),
            };
            recorder.service(ns, name, kind, reason, message);
        }));
    }
    stats.set_waiting(Arc::clone(&net.waiting));
    let ctx = Arc::new(NodeCtx {
        client: client.clone(),
        node_name: config.node_name.clone(),
        host_ip: address,
        runtime,
        images,
        recorder,
        pods_dir: config.data_dir.join("pods"),
        claims_dir: config.data_dir.join("claims"),
        backoff: config.backoff,
        rotation: config.rotation,
        ips: Mutex::new(IpPool::new(net.capacity())),
        net,
        pods,
        reads: Arc::default(),
    });
    let drivers = TaskTracker::new();
    let shutdown_pods = CancellationToken::new();
    watch_pods(&ctx, &drivers, &shutdown, &shutdown_pods).await;

    // Shutting down: stop every instance (the pods stay bound; a restarted wasmlet runs them).
    shutdown_pods.cancel();
    drivers.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drivers.wait()).await;
    tasks.close();
    tasks.wait().await;
    let _ = recorder_task.await;
    let _ = server.await;
    Ok(())
}

/// Watches the pods bound to this node and keeps one driver per pod.
async fn watch_pods(
    ctx: &Arc<NodeCtx>,
    drivers: &TaskTracker,
    shutdown: &CancellationToken,
    stop_pods: &CancellationToken,
) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut stream = wasmkube_client::watch::watcher(pods, cfg)
        .default_backoff()
        .boxed();
    let mut running: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    let mut relisted: HashSet<String> = HashSet::new();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            e = stream.next() => match e { Some(e) => e, None => break },
        };
        let apply = |pod: Pod, running: &mut HashMap<String, watch::Sender<Option<Arc<Pod>>>>| {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let pod = Arc::new(pod);
            match running.get(&uid) {
                Some(tx) if !tx.is_closed() => {
                    let _ = tx.send(Some(pod));
                }
                _ => {
                    tracing::debug!(target: "podtrace", kind = "Pod", object = %format_args!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default()), stage = "wasmlet saw");
                    let (tx, rx) = watch::channel(Some(pod));
                    running.insert(uid, tx);
                    let (ctx, stop) = (Arc::clone(ctx), stop_pods.clone());
                    drivers.spawn(async move {
                        tokio::select! {
                            () = pod::run(ctx, rx) => {}
                            () = stop.cancelled() => {}
                        }
                    });
                }
            }
        };
        match event {
            Ok(Event::Apply(pod)) => apply(pod, &mut running),
            Ok(Event::Delete(pod)) => {
                if let Some(tx) = pod.metadata.uid.as_ref().and_then(|u| running.remove(u)) {
                    let _ = tx.send(None);
                }
            }
            Ok(Event::Init) => relisted.clear(),
            Ok(Event::InitApply(pod)) => {
                relisted.insert(pod.metadata.uid.clone().unwrap_or_default());
                apply(pod, &mut running);
            }
            Ok(Event::InitDone) => {
                // Pods that vanished while the watch was down are gone from the API.
                running.retain(|uid, tx| {
                    let keep = relisted.contains(uid);
                    if !keep {
                        let _ = tx.send(None);
                    }
                    keep
                });
            }
            Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
        }
    }
}
