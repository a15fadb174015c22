//! `wasmkube`: Kubernetes for WebAssembly in one binary.
//!
//! `wasmkube up` runs every component in one process; each component also runs alone.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod demo;

/// mimalloc rather than glibc's malloc: under load (thousands of watch events and JSON
/// objects a second on every thread) glibc's arenas spent ~40% of the CPU in malloc and free.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "wasmkube", version, about = "Kubernetes for WebAssembly")]
// A flag given twice takes its last value (scripts append to a default command line).
#[command(args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole cluster (every component, and a wasmlet for this node) in this process.
    Up(Box<UpArgs>),
    /// Run the API server alone.
    Apiserver(ServerArgs),
    /// Run a wasmlet (the node agent) that joins a cluster.
    Wasmlet(WasmletArgs),
    /// Run the scheduler alone.
    Scheduler(SchedulerArgs),
    /// Run the controller manager alone.
    ControllerManager(ControllerArgs),
    /// Run the cluster DNS server alone.
    Dns(DnsArgs),
    /// Work with images in a registry.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// The cluster's servers (the members of its raft group).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Make kubeconfig files.
    Kubeconfig {
        #[command(subcommand)]
        command: KubeconfigCommand,
    },
}

#[derive(Subcommand)]
enum KubeconfigCommand {
    /// Print a kubeconfig for a user with a client certificate signed by the cluster CA (run on
    /// a server: it reads DATA_DIR/pki); grant it rights with Roles and RoleBindings.
    User(UserArgs),
}

#[derive(Args)]
struct UserArgs {
    /// The server's data directory (its CA signs the certificate).
    #[arg(long, env = "WASMKUBE_DATA_DIR", default_value = "./wasmkube-data")]
    data_dir: PathBuf,
    /// The user name (the certificate's common name).
    #[arg(long)]
    client_name: String,
    /// A group of the user (the certificate's organization); repeat for more.
    #[arg(long = "org")]
    orgs: Vec<String>,
    /// The API server's URL.
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    server: String,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// One line per server: ID, peer address, API address, role, applied log index.
    Members(KubeconfigArg),
    /// Remove a server from the group (stop it first, or it will find itself alone).
    Remove {
        /// The member's ID, as `wasmkube cluster members` shows it.
        id: u64,
        #[command(flatten)]
        kubeconfig: KubeconfigArg,
    },
}

#[derive(Args)]
struct KubeconfigArg {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Push a .wasm file as a wasm OCI artifact (to the cluster's registry unless NAME has a host).
    Push(PushArgs),
}

#[derive(Args)]
struct ServerArgs {
    /// Directory for cluster state, credentials and the admin kubeconfig.
    #[arg(long, env = "WASMKUBE_DATA_DIR", default_value = "./wasmkube-data")]
    data_dir: PathBuf,
    /// Address the API server listens on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Extra host names or addresses for the serving certificate.
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// Seconds between history compactions.
    #[arg(long, default_value_t = 300)]
    compaction_interval: u64,
    /// Where Service cluster IPs come from (virtual addresses; never routed off the node).
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: ipnet::Ipv4Net,
    /// Where each node's pod range (spec.podCIDR) comes from (virtual addresses).
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnet::Ipv4Net,
    /// The prefix length of one node's pod range.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// The range nodePorts come from, FIRST-LAST.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// MiB of memory the store may use to cache its file's pages (redb's page cache; the
    /// operating system still caches the file).
    #[arg(long, default_value_t = wasmkube_apiserver::DEFAULT_STORE_CACHE_BYTES >> 20)]
    store_cache_mib: usize,
    /// Where the other servers reach this one's raft transport (mutual TLS from the cluster
    /// CA). Needed to form or join a group of servers; it writes DATA_DIR/join-token.
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// Join the cluster of this API server (https://HOST:PORT) instead of starting one.
    #[arg(long, requires = "token_file", requires = "peer_listen")]
    join: Option<String>,
    /// The cluster's join token (the first server's DATA_DIR/join-token).
    #[arg(long, requires = "join")]
    token_file: Option<PathBuf>,
    /// An EncryptionConfiguration (apiserver.config.k8s.io/v1) saying which resources are
    /// encrypted in the store, and with which keys (default: DATA_DIR/pki/encryption-config.yaml,
    /// made on first start to encrypt Secrets with AES-GCM; every server needs the same one).
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
}

impl ServerArgs {
    fn config(&self) -> anyhow::Result<wasmkube_apiserver::Config> {
        let mut c = wasmkube_apiserver::Config::new(&self.data_dir);
        c.listen = self.listen;
        c.extra_sans = self.tls_san.clone();
        c.compaction_interval = Duration::from_secs(self.compaction_interval.max(1));
        c.store_cache_bytes = self.store_cache_mib << 20;
        c.peer_listen = self.peer_listen;
        c.encryption_provider_config = self.encryption_provider_config.clone();
        if let (Some(server), Some(file)) = (&self.join, &self.token_file) {
            c.join = Some(wasmkube_apiserver::cluster::Join {
                server: server.trim_end_matches('/').to_owned(),
                token: read_token(file)?,
            });
        }
        let (first, last) = self
            .service_node_port_range
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
            .filter(|(a, b)| a < b)
            .context("--service-node-port-range must look like 30000-32767")?;
        anyhow::ensure!(
            (self.cluster_cidr.prefix_len()..=30).contains(&self.node_cidr_mask_size),
            "--node-cidr-mask-size must be between the --cluster-cidr prefix and 30"
        );
        c.network = wasmkube_apiserver::Network {
            service_cidr: self.service_cluster_ip_range.trunc(),
            cluster_cidr: self.cluster_cidr.trunc(),
            node_cidr_mask: self.node_cidr_mask_size,
            node_ports: first..=last,
        };
        Ok(c)
    }
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    node: NodeArgs,
    /// The local wasmlet's HTTPS endpoint (logs); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    node_listen: SocketAddr,
    /// Do not run a wasmlet in this process (a control plane only).
    #[arg(long)]
    no_wasmlet: bool,
    /// Do not run the scheduler in this process.
    #[arg(long)]
    no_scheduler: bool,
    /// Do not run the controller manager in this process.
    #[arg(long)]
    no_controllers: bool,
    /// Where the cluster DNS answers (UDP and TCP); the local wasmlet resolves pod names there.
    /// Default 127.0.0.1:10053, or a free port when another server on this machine has it.
    #[arg(long)]
    dns_listen: Option<SocketAddr>,
    /// Do not run the cluster DNS in this process.
    #[arg(long)]
    no_dns: bool,
    /// Do not serve Ingresses on this node (by default they are served on 127.0.0.1:8080).
    #[arg(long)]
    no_ingress: bool,
    #[command(flatten)]
    timers: NodeTimerArgs,
    #[command(flatten)]
    election: LeaderElectArgs,
    /// Push the sample programs into the cluster registry and run their manifests.
    #[arg(long)]
    demo: bool,
}

/// Flags shared by `up` and `wasmlet`.
#[derive(Args)]
struct NodeArgs {
    /// The Node's name (default: this machine's host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The loopback range pod IPs come from.
    #[arg(long, default_value = "127.77.0.0/16")]
    pod_range: String,
    /// Pods this node accepts; also sizes the engine's instance pool.
    #[arg(long, default_value_t = 10_000)]
    max_pods: u32,
    /// Registries reached over plain HTTP (host:port), repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Extra Node labels, key=value[,key=value...] (like the kubelet's --node-labels).
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// The node Lease's duration in seconds; it is renewed every quarter of it.
    #[arg(long, default_value_t = 40)]
    node_lease_duration_seconds: u64,
    /// The cluster DNS server pods' names are resolved with (`up` uses its own).
    #[arg(long)]
    cluster_dns: Option<SocketAddr>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The node-to-node tunnel's port on the node address (0 picks one).
    #[arg(long, default_value_t = 0)]
    tunnel_port: u16,
    /// Tunnel to peers whose node address is not loopback (multi-host clusters).
    #[arg(long)]
    remote_peers: bool,
    /// Serve Ingresses (class `wasmkube`) on this address (`up`: 127.0.0.1:8080).
    #[arg(long)]
    ingress_listen: Option<SocketAddr>,
}

/// A join token from a file (a server's `join-token` or `node-token`).
fn read_token(file: &Path) -> anyhow::Result<wasmkube_client::join::JoinToken> {
    let token = std::fs::read_to_string(file)
        .with_context(|| format!("reading the token {}", file.display()))?;
    token
        .parse()
        .with_context(|| format!("the token in {}", file.display()))
}

impl NodeArgs {
    fn config(
        &self,
        data_dir: &Path,
        listen: SocketAddr,
    ) -> anyhow::Result<wasmkube_wasmlet::Config> {
        let mut c = wasmkube_wasmlet::Config::new(
            self.node_name.clone().unwrap_or_else(host_name),
            data_dir,
        );
        c.listen = listen;
        c.pod_range = parse_range(&self.pod_range)?;
        c.max_pods = self.max_pods.max(1);
        c.insecure_registries = self.insecure_registries.clone();
        c.lease_duration = Duration::from_secs(self.node_lease_duration_seconds.max(4));
        c.cluster_dns = self.cluster_dns;
        c.cluster_domain = self.cluster_domain.clone();
        c.tunnel_port = self.tunnel_port;
        c.remote_peers = self.remote_peers;
        c.ingress_listen = self.ingress_listen;
        for pair in &self.node_labels {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("--node-labels: {pair:?} is not key=value"))?;
            c.node_labels.insert(k.to_owned(), v.to_owned());
        }
        Ok(c)
    }
}

#[derive(Args)]
struct WasmletArgs {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Directory for images, compiled code, pod volumes and logs.
    #[arg(long, env = "WASMKUBE_NODE_DIR", default_value = "./wasmkube-node")]
    data_dir: PathBuf,
    /// The wasmlet's HTTPS endpoint (logs).
    #[arg(long, default_value = "127.0.0.1:10250")]
    listen: SocketAddr,
    /// The address reported as the node's InternalIP (default: the listen address).
    #[arg(long)]
    address: Option<String>,
    /// Join the cluster of this API server (https://HOST:PORT) with a node token: the wasmlet
    /// gets credentials of its own (user system:node:NAME) and keeps them in DATA_DIR.
    #[arg(long, requires = "token_file", conflicts_with = "kubeconfig")]
    join: Option<String>,
    /// The node token (a server's DATA_DIR/node-token; its join-token works too).
    #[arg(long, requires = "join")]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Args)]
struct SchedulerArgs {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Schedule pods whose spec.schedulerName is this.
    #[arg(long, default_value = "default-scheduler")]
    scheduler_name: String,
    /// Score this percentage of feasible nodes (default: adaptive, as kube-scheduler).
    #[arg(long)]
    percentage_of_nodes_to_score: Option<u32>,
    #[command(flatten)]
    election: LeaderElectArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// Where a component running alone serves its Prometheus metrics.
#[derive(Args)]
struct MetricsArgs {
    /// Serve `/metrics` (Prometheus text) and `/healthz` over plain HTTP here (none: not
    /// served; `wasmkube up` serves every component's at the API server's `/metrics`).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

impl MetricsArgs {
    async fn serve(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        if let Some(listen) = self.metrics_listen {
            let (addr, _task) = wasmkube_client::metrics::serve(listen, shutdown.clone())
                .await
                .with_context(|| format!("serving metrics on {listen}"))?;
            tracing::info!(%addr, "serving /metrics");
        }
        Ok(())
    }
}

#[derive(Args)]
struct DnsArgs {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where to answer (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:10053")]
    listen: SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    #[command(flatten)]
    metrics: MetricsArgs,
}

#[derive(Args)]
struct ControllerArgs {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    timers: NodeTimerArgs,
    #[command(flatten)]
    election: LeaderElectArgs,
    /// Controllers to run: `*` all, `NAME` that one, `-NAME` not that one (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// The CA (PEM) to publish as `kube-root-ca.crt` in every namespace (default: the
    /// kubeconfig's).
    #[arg(long)]
    root_ca_file: Option<PathBuf>,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// Leader election of the scheduler and the controller manager (their Kubernetes flags).
#[derive(Args)]
struct LeaderElectArgs {
    /// Act only while holding a kube-system Lease, so that of several servers one schedules
    /// and one runs the controllers (`--leader-elect=false`: always act).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Seconds the others wait after the holder's last renewal before taking over.
    #[arg(long, default_value_t = 15.0)]
    leader_elect_lease_duration: f64,
    /// Seconds the holder keeps acting while it cannot renew.
    #[arg(long, default_value_t = 10.0)]
    leader_elect_renew_deadline: f64,
    /// Seconds between attempts to take or renew the Lease.
    #[arg(long, default_value_t = 2.0)]
    leader_elect_retry_period: f64,
}

impl LeaderElectArgs {
    /// The election for Lease `kube-system/NAME`, when enabled; `identity` must be unique
    /// among the candidates (and stable across restarts to get the Lease back at once).
    fn election(
        &self,
        name: &str,
        identity: String,
    ) -> anyhow::Result<Option<wasmkube_client::leader::Election>> {
        if !self.leader_elect {
            return Ok(None);
        }
        let secs = |s: f64, flag: &str| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("--{flag} must be a positive number of seconds"))
        };
        let e = wasmkube_client::leader::Election {
            lease_duration: secs(
                self.leader_elect_lease_duration,
                "leader-elect-lease-duration",
            )?,
            renew_deadline: secs(
                self.leader_elect_renew_deadline,
                "leader-elect-renew-deadline",
            )?,
            retry_period: secs(self.leader_elect_retry_period, "leader-elect-retry-period")?,
            ..wasmkube_client::leader::Election::new(name, identity)
        };
        anyhow::ensure!(
            e.lease_duration > e.renew_deadline && e.renew_deadline > e.retry_period,
            "leader election needs lease duration > renew deadline > retry period"
        );
        Ok(Some(e))
    }
}

/// A candidate identity for a component running alone: this host and a random part.
fn random_identity() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}_{:x}{nanos:x}", host_name(), std::process::id())
}

/// The node lifecycle and autoscaling controllers' timers (kube-controller-manager's flags).
#[derive(Args)]
struct NodeTimerArgs {
    /// Seconds between evaluations of each HorizontalPodAutoscaler.
    #[arg(long, default_value_t = 15)]
    horizontal_pod_autoscaler_sync_period: u64,
    /// Seconds a node may be silent before it is marked Unknown.
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_period: u64,
    /// Seconds pods without their own toleration stay on an unreachable or not-ready node.
    #[arg(long, default_value_t = 300)]
    default_unreachable_toleration_seconds: u64,
    /// Nodes per second whose pods may start being evicted.
    #[arg(long, default_value_t = 0.1)]
    node_eviction_rate: f64,
}

impl NodeTimerArgs {
    fn hpa_sync_period(&self) -> Option<Duration> {
        Some(Duration::from_secs(
            self.horizontal_pod_autoscaler_sync_period.max(1),
        ))
    }

    fn timers(&self) -> wasmkube_controllers::nodelifecycle::Timers {
        wasmkube_controllers::nodelifecycle::Timers {
            grace_period: Duration::from_secs(self.node_monitor_grace_period.max(1)),
            default_toleration: Duration::from_secs(self.default_unreachable_toleration_seconds),
            eviction_rate: self.node_eviction_rate,
            monitor_period: Duration::from_secs(self.node_monitor_grace_period.clamp(1, 40) / 8)
                .max(Duration::from_millis(500)),
        }
    }
}

#[derive(Args)]
struct PushArgs {
    /// The .wasm file (a component or a wasip1 module).
    file: PathBuf,
    /// Where to push it: NAME:TAG for the cluster registry, or HOST/NAME:TAG.
    image: String,
    /// The kubeconfig that locates the cluster (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Registries reached over plain HTTP (host:port), repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
}

/// This machine's host name as a node name (DNS-1123), like the kubelet's default.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches(['-', '.']).to_owned();
    if name.is_empty() {
        "wasmkube-node".to_owned()
    } else {
        name
    }
}

fn parse_range(s: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (ip, prefix) = s
        .split_once('/')
        .context("--pod-range must look like 127.77.0.0/16")?;
    let ip: Ipv4Addr = ip.parse().context("--pod-range address")?;
    let prefix: u8 = prefix.parse().context("--pod-range prefix length")?;
    anyhow::ensure!(
        ip.is_loopback(),
        "--pod-range must be inside 127.0.0.0/8 (pod IPs are loopback addresses)"
    );
    anyhow::ensure!(
        (8..=30).contains(&prefix),
        "--pod-range prefix length must be between 8 and 30"
    );
    Ok((ip, prefix))
}

/// Where a subcommand finds the cluster: `--kubeconfig`, else `KUBECONFIG`, `~/.kube/config`
/// or the in-cluster configuration.
fn source(kubeconfig: Option<PathBuf>) -> wasmkube_client::Source {
    kubeconfig.map_or_else(
        wasmkube_client::Source::infer,
        wasmkube_client::Source::kubeconfig,
    )
}

async fn push(args: PushArgs) -> anyhow::Result<()> {
    let wasm =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    anyhow::ensure!(
        wasm.starts_with(b"\0asm"),
        "{} is not a WebAssembly binary",
        args.file.display()
    );
    let kc = wasmkube_client::load(&source(args.kubeconfig))
        .await
        .context("finding the cluster (set --kubeconfig or KUBECONFIG)")?;
    let registries = wasmkube_wasmlet::registries_for(&kc, args.insecure_registries);
    let target = registries.qualify(&args.image);
    eprint!(
        "pushing {} ({:.1} KiB) to {target} … ",
        args.file.display(),
        wasm.len() as f64 / 1024.0
    );
    let started = std::time::Instant::now();
    let url = wasmkube_wasmlet::images::push(&registries, &args.image, wasm).await?;
    eprintln!("done in {:.0?}", started.elapsed());
    println!("{url}");
    Ok(())
}

/// `wasmkube cluster …`: the membership, through the API server's `/wasmkube/members`.
async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    let (request, kubeconfig) = match command {
        ClusterCommand::Members(k) => (
            http::Request::get(wasmkube_apiserver::cluster::MEMBERS_PATH).body(Vec::new())?,
            k.kubeconfig,
        ),
        ClusterCommand::Remove { id, kubeconfig } => (
            http::Request::delete(format!(
                "{}/{id}",
                wasmkube_apiserver::cluster::MEMBERS_PATH
            ))
            .body(Vec::new())?,
            kubeconfig.kubeconfig,
        ),
    };
    let removing = request.method() == http::Method::DELETE;
    let conn = wasmkube_client::connect(&source(kubeconfig))
        .await
        .context("finding the cluster (set --kubeconfig or KUBECONFIG)")?;
    let answer = conn.client.request_text(request).await?;
    if removing {
        println!("removed");
        return Ok(());
    }
    let members: Vec<wasmkube_apiserver::cluster::MemberStatus> =
        serde_json::from_str(&answer).context("the members list")?;
    let rows: Vec<[String; 5]> = members
        .into_iter()
        .map(|m| {
            [
                m.id.to_string(),
                // A server alone has no peer listener (its store's placeholder address).
                if m.peer.ends_with(":0") {
                    "<none>".into()
                } else {
                    m.peer
                },
                if m.api.is_empty() {
                    "<none>".into()
                } else {
                    m.api
                },
                m.role,
                m.applied
                    .map_or_else(|| "<unknown>".into(), |i| i.to_string()),
            ]
        })
        .collect();
    let header = ["ID", "PEER-ADDRESS", "API-ADDRESS", "ROLE", "APPLIED-INDEX"].map(String::from);
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
    Ok(())
}

/// Cancels `token` on Ctrl-C or SIGTERM.
fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    });
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WASMKUBE_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a terminal: `up 2> file` and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone());
    match cli.command {
        Command::Apiserver(args) => {
            let running = wasmkube_apiserver::start(args.config()?, shutdown)
                .await
                .context("starting the API server")?;
            println!("wasmkube API server: https://{}", running.addr);
            println!("export KUBECONFIG={}", running.kubeconfig.display());
            running.wait().await.context("API server")?;
        }
        Command::Up(args) => {
            let running = wasmkube_apiserver::start(args.server.config()?, shutdown.clone())
                .await
                .context("starting the API server")?;
            println!("wasmkube is up: API server https://{}", running.addr);
            println!("export KUBECONFIG={}", running.kubeconfig.display());
            println!(
                "dashboard: https://{}{}/ (sign in with the kubeconfig's token)",
                running.addr,
                wasmkube_dashboard::PREFIX
            );
            let api = || wasmkube_client::Source::kubeconfig(&running.kubeconfig);
            // Each component acts as its own user (RBAC), as kubeadm's components do.
            let as_user = wasmkube_client::Source::kubeconfig;
            // Stable across restarts: a restarted server gets its own Lease back at once.
            let identity = format!("{}_{}", host_name(), running.addr);
            let scheduler = if args.no_scheduler {
                None
            } else {
                Some(tokio::spawn(wasmkube_sched::run(
                    wasmkube_sched::Config {
                        api: as_user(&running.components.scheduler),
                        leader_election: args
                            .election
                            .election("kube-scheduler", identity.clone())?,
                        ..Default::default()
                    },
                    shutdown.clone(),
                )))
            };
            let controllers = if args.no_controllers {
                None
            } else {
                Some(tokio::spawn(wasmkube_controllers::run(
                    wasmkube_controllers::Config {
                        api: as_user(&running.components.controller_manager),
                        node_timers: args.timers.timers(),
                        hpa_sync_period: args.timers.hpa_sync_period(),
                        leader_election: args
                            .election
                            .election("kube-controller-manager", identity.clone())?,
                        ..Default::default()
                    },
                    shutdown.clone(),
                )))
            };
            let dns = if args.no_dns {
                None
            } else {
                let mut config = wasmkube_dns::Config {
                    api: as_user(&running.components.dns),
                    listen: args
                        .dns_listen
                        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 10053))),
                    domain: args.node.cluster_domain.clone(),
                };
                let dns = match wasmkube_dns::start(&config, shutdown.clone()).await {
                    Err(wasmkube_dns::Error::Io(e))
                        if e.kind() == std::io::ErrorKind::AddrInUse
                            && args.dns_listen.is_none() =>
                    {
                        // Several servers on one machine: the first has the default port.
                        tracing::warn!(listen = %config.listen, "the default DNS port is taken; using a free one");
                        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
                        wasmkube_dns::start(&config, shutdown.clone()).await
                    }
                    other => other,
                }
                .context("starting the cluster DNS")?;
                println!(
                    "cluster DNS: dig @{} -p {} SERVICE.NAMESPACE.svc.{}",
                    dns.addr.ip(),
                    dns.addr.port(),
                    config.domain
                );
                Some(dns)
            };
            let wasmlet = if args.no_wasmlet {
                None
            } else {
                let mut config = args
                    .node
                    .config(&args.server.data_dir.join("node"), args.node_listen)?;
                config.api = api();
                if config.cluster_dns.is_none() {
                    config.cluster_dns = dns.as_ref().map(|d| d.addr);
                }
                if config.ingress_listen.is_none() && !args.no_ingress {
                    config.ingress_listen = Some(SocketAddr::from(([127, 0, 0, 1], 8080)));
                }
                let token = shutdown.clone();
                let task = tokio::spawn(async move { wasmkube_wasmlet::run(config, token).await });
                if args.demo {
                    demo::run(&running.kubeconfig)
                        .await
                        .context("deploying the samples")?;
                }
                Some(task)
            };
            let served = running.wait().await;
            if let Err(e) = &served
                && wasmlet.is_some()
                && !shutdown.is_cancelled()
            {
                // Borg's rule: the node's pods outlive the control plane.
                tracing::error!(error = %format!("{e:#}"), "the API server stopped; this node's pods keep running until wasmkube is stopped");
                shutdown.cancelled().await;
            }
            served.context("API server")?;
            if let Some(task) = scheduler {
                task.await.context("scheduler task")?.context("scheduler")?;
                tracing::debug!("the scheduler stopped");
            }
            if let Some(task) = controllers {
                task.await
                    .context("controller manager task")?
                    .context("controller manager")?;
                tracing::debug!("the controller manager stopped");
            }
            if let Some(task) = wasmlet {
                task.await.context("wasmlet task")?.context("wasmlet")?;
                tracing::debug!("the wasmlet stopped");
            }
            if let Some(dns) = dns {
                dns.wait().await;
                tracing::debug!("the DNS server stopped");
            }
        }
        Command::Wasmlet(args) => {
            let mut config = args.node.config(&args.data_dir, args.listen)?;
            config.api = match (&args.join, &args.token_file) {
                (Some(server), Some(file)) => {
                    let kubeconfig = wasmkube_wasmlet::identity::join(
                        server.trim_end_matches('/'),
                        &read_token(file)?,
                        &config.node_name,
                        &args.data_dir,
                    )
                    .await
                    .context("joining the cluster")?;
                    wasmkube_client::Source::kubeconfig(kubeconfig)
                }
                _ => source(args.kubeconfig),
            };
            config.address = args.address;
            wasmkube_wasmlet::run(config, shutdown)
                .await
                .context("wasmlet")?;
        }
        Command::Dns(args) => {
            args.metrics.serve(&shutdown).await?;
            let config = wasmkube_dns::Config {
                api: source(args.kubeconfig),
                listen: args.listen,
                domain: args.cluster_domain,
            };
            wasmkube_dns::run(config, shutdown)
                .await
                .context("cluster DNS")?;
        }
        Command::Scheduler(args) => {
            args.metrics.serve(&shutdown).await?;
            let config = wasmkube_sched::Config {
                api: source(args.kubeconfig),
                leader_election: args
                    .election
                    .election("kube-scheduler", random_identity())?,
                scheduler_name: args.scheduler_name,
                percentage_of_nodes_to_score: args.percentage_of_nodes_to_score,
            };
            wasmkube_sched::run(config, shutdown)
                .await
                .context("scheduler")?;
        }
        Command::ControllerManager(args) => {
            args.metrics.serve(&shutdown).await?;
            let unknown: Vec<&String> = args
                .controllers
                .iter()
                .filter(|c| {
                    let name = c.strip_prefix('-').unwrap_or(c);
                    name != "*" && !wasmkube_controllers::CONTROLLERS.contains(&name)
                })
                .collect();
            if !unknown.is_empty() {
                anyhow::bail!(
                    "unknown controllers {unknown:?}; known: {}",
                    wasmkube_controllers::CONTROLLERS.join(", ")
                );
            }
            let root_ca = match &args.root_ca_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?,
                ),
                None => None,
            };
            let config = wasmkube_controllers::Config {
                api: source(args.kubeconfig),
                node_timers: args.timers.timers(),
                leader_election: args
                    .election
                    .election("kube-controller-manager", random_identity())?,
                controllers: args.controllers,
                root_ca,
                hpa_sync_period: args.timers.hpa_sync_period(),
            };
            wasmkube_controllers::run(config, shutdown)
                .await
                .context("controller manager")?;
        }
        Command::Image {
            command: ImageCommand::Push(args),
        } => push(args).await?,
        Command::Cluster { command } => cluster(command).await?,
        Command::Kubeconfig {
            command: KubeconfigCommand::User(args),
        } => {
            let kubeconfig = wasmkube_apiserver::pki::user_kubeconfig(
                &args.data_dir,
                &args.server,
                &args.client_name,
                &args.orgs,
            )
            .with_context(|| {
                format!("signing with the cluster CA in {}", args.data_dir.display())
            })?;
            print!("{kubeconfig}");
        }
    }
    Ok(())
}
