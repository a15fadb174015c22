//! The command line: every subcommand's flags, with their defaults, and how each becomes its
//! component's configuration.

use super::*;

#[derive(Parser)]
#[command(name = "wasmkube", version, about = "Kubernetes for WebAssembly")]
// A flag given twice takes its last value (scripts append to a default command line).
#[command(args_override_self = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) enum KubeconfigCommand {
    /// Print a kubeconfig for a user with a client certificate signed by the cluster CA (run on
    /// a server: it reads DATA_DIR/pki); grant it rights with Roles and RoleBindings.
    User(UserArgs),
}

#[derive(Args)]
pub(crate) struct UserArgs {
    /// The server's data directory (its CA signs the certificate).
    #[arg(long, env = "WASMKUBE_DATA_DIR", default_value = "./wasmkube-data")]
    pub(crate) data_dir: PathBuf,
    /// The user name (the certificate's common name).
    #[arg(long)]
    pub(crate) client_name: String,
    /// A group of the user (the certificate's organization); repeat for more.
    #[arg(long = "org")]
    pub(crate) orgs: Vec<String>,
    /// The API server's URL.
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    pub(crate) server: String,
}

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
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
pub(crate) struct KubeconfigArg {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub(crate) kubeconfig: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum ImageCommand {
    /// Push a .wasm file as a wasm OCI artifact (to the cluster's registry unless NAME has a host).
    Push(PushArgs),
}

#[derive(Args)]
pub(crate) struct ServerArgs {
    /// Directory for cluster state, credentials and the admin kubeconfig.
    #[arg(long, env = "WASMKUBE_DATA_DIR", default_value = "./wasmkube-data")]
    pub(crate) data_dir: PathBuf,
    /// Address the API server listens on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub(crate) listen: SocketAddr,
    /// Extra host names or addresses for the serving certificate.
    #[arg(long = "tls-san")]
    pub(crate) tls_san: Vec<String>,
    /// Seconds between history compactions.
    #[arg(long, default_value_t = 300)]
    pub(crate) compaction_interval: u64,
    /// Where Service cluster IPs come from (virtual addresses; never routed off the node).
    #[arg(long, default_value = "10.96.0.0/12")]
    pub(crate) service_cluster_ip_range: ipnet::Ipv4Net,
    /// Where each node's pod range (spec.podCIDR) comes from (virtual addresses).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub(crate) cluster_cidr: ipnet::Ipv4Net,
    /// The prefix length of one node's pod range.
    #[arg(long, default_value_t = 24)]
    pub(crate) node_cidr_mask_size: u8,
    /// The range nodePorts come from, FIRST-LAST.
    #[arg(long, default_value = "30000-32767")]
    pub(crate) service_node_port_range: String,
    /// MiB of memory the store may use to cache its file's pages (redb's page cache; the
    /// operating system still caches the file).
    #[arg(long, default_value_t = wasmkube_apiserver::DEFAULT_STORE_CACHE_BYTES >> 20)]
    pub(crate) store_cache_mib: usize,
    /// Seconds one sync of the raft log may take on a leader of a group that goes on without
    /// it; longer, and this server steps out of the group (it stops serving and says why, the
    /// others elect a leader). 0: never. A server alone only logs a slow sync.
    #[arg(long, default_value_t = wasmkube_apiserver::DEFAULT_STORE_MAX_SYNC.as_secs_f64())]
    pub(crate) store_max_sync: f64,
    /// Tests only: failpoints under DATA_DIR/failpoints/ take effect (`slow-sync`: each sync
    /// of the raft log takes as many more milliseconds as the file says).
    #[arg(long, hide = true)]
    pub(crate) failpoints: bool,
    /// Changes the watch cache keeps per resource for watchers behind the newest
    /// (kube-apiserver's flag); a watcher further behind continues from the store's history.
    #[arg(long, default_value_t = wasmkube_apiserver::DEFAULT_WATCH_CACHE_SIZE)]
    pub(crate) default_watch_cache_size: usize,
    /// Where the other servers reach this one's raft transport (mutual TLS from the cluster
    /// CA). Needed to form or join a group of servers; it writes DATA_DIR/join-token.
    #[arg(long)]
    pub(crate) peer_listen: Option<SocketAddr>,
    /// Join the cluster of this API server (https://HOST:PORT) instead of starting one.
    #[arg(long, requires = "token_file", requires = "peer_listen")]
    pub(crate) join: Option<String>,
    /// The cluster's join token (the first server's DATA_DIR/join-token).
    #[arg(long, requires = "join")]
    pub(crate) token_file: Option<PathBuf>,
    /// An EncryptionConfiguration (apiserver.config.k8s.io/v1) saying which resources are
    /// encrypted in the store, and with which keys (default: DATA_DIR/pki/encryption-config.yaml,
    /// made on first start to encrypt Secrets with AES-GCM; every server needs the same one).
    #[arg(long)]
    pub(crate) encryption_provider_config: Option<PathBuf>,
}

impl ServerArgs {
    pub(crate) fn config(&self) -> anyhow::Result<wasmkube_apiserver::Config> {
        let mut c = wasmkube_apiserver::Config::new(&self.data_dir);
        c.listen = self.listen;
        c.extra_sans = self.tls_san.clone();
        c.compaction_interval = Duration::from_secs(self.compaction_interval.max(1));
        c.store_cache_bytes = self.store_cache_mib << 20;
        c.store_max_sync = (self.store_max_sync > 0.0)
            .then(|| Duration::try_from_secs_f64(self.store_max_sync))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--store-max-sync: {e}"))?;
        c.failpoints = self.failpoints;
        c.watch_cache_window = self.default_watch_cache_size;
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
pub(crate) struct UpArgs {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
    /// The local wasmlet's HTTPS endpoint (logs); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) node_listen: SocketAddr,
    /// Do not run a wasmlet in this process (a control plane only).
    #[arg(long)]
    pub(crate) no_wasmlet: bool,
    /// Do not run the scheduler in this process.
    #[arg(long)]
    pub(crate) no_scheduler: bool,
    /// Do not run the controller manager in this process.
    #[arg(long)]
    pub(crate) no_controllers: bool,
    /// Where the cluster DNS answers (UDP and TCP); the local wasmlet resolves pod names there.
    /// Default 127.0.0.1:10053, or a free port when another server on this machine has it.
    #[arg(long)]
    pub(crate) dns_listen: Option<SocketAddr>,
    /// Do not run the cluster DNS in this process.
    #[arg(long)]
    pub(crate) no_dns: bool,
    /// Do not serve Ingresses on this node (by default they are served on 127.0.0.1:8080).
    #[arg(long)]
    pub(crate) no_ingress: bool,
    #[command(flatten)]
    pub(crate) timers: NodeTimerArgs,
    #[command(flatten)]
    pub(crate) election: LeaderElectArgs,
    /// Push the sample programs into the cluster registry and run their manifests.
    #[arg(long)]
    pub(crate) demo: bool,
}

/// Flags shared by `up` and `wasmlet`.
#[derive(Args)]
pub(crate) struct NodeArgs {
    /// The Node's name (default: this machine's host name).
    #[arg(long)]
    pub(crate) node_name: Option<String>,
    /// The loopback range pod IPs come from.
    #[arg(long, default_value = "127.77.0.0/16")]
    pub(crate) pod_range: String,
    /// Pods this node accepts; also sizes the engine's instance pool.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) max_pods: u32,
    /// Registries reached over plain HTTP (host:port), repeatable.
    #[arg(long = "insecure-registry")]
    pub(crate) insecure_registries: Vec<String>,
    /// Extra Node labels, key=value[,key=value...] (like the kubelet's --node-labels).
    #[arg(long, value_delimiter = ',')]
    pub(crate) node_labels: Vec<String>,
    /// The node Lease's duration in seconds; it is renewed every quarter of it.
    #[arg(long, default_value_t = 40)]
    pub(crate) node_lease_duration_seconds: u64,
    /// The cluster DNS server pods' names are resolved with (`up` uses its own).
    #[arg(long)]
    pub(crate) cluster_dns: Option<SocketAddr>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    pub(crate) cluster_domain: String,
    /// The node-to-node tunnel's port on the node address (0 picks one).
    #[arg(long, default_value_t = 0)]
    pub(crate) tunnel_port: u16,
    /// Tunnel to peers whose node address is not loopback (multi-host clusters).
    #[arg(long)]
    pub(crate) remote_peers: bool,
    /// Serve Ingresses (class `wasmkube`) on this address (`up`: 127.0.0.1:8080).
    #[arg(long)]
    pub(crate) ingress_listen: Option<SocketAddr>,
    /// Pods' events written per second at most (the kubelet's --event-qps; 0: no limit).
    #[arg(long, default_value_t = 50.0)]
    pub(crate) event_qps: f64,
    /// Pods' events written at once before --event-qps applies (the kubelet's --event-burst).
    #[arg(long, default_value_t = 100)]
    pub(crate) event_burst: u32,
}

/// A join token from a file (a server's `join-token` or `node-token`).
pub(crate) fn read_token(file: &Path) -> anyhow::Result<wasmkube_client::join::JoinToken> {
    let token = std::fs::read_to_string(file)
        .with_context(|| format!("reading the token {}", file.display()))?;
    token
        .parse()
        .with_context(|| format!("the token in {}", file.display()))
}

impl NodeArgs {
    pub(crate) fn config(
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
        c.event_limits = wasmkube_client::events::EventLimits {
            qps: self.event_qps,
            burst: self.event_burst,
        };
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
pub(crate) struct WasmletArgs {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Directory for images, compiled code, pod volumes and logs.
    #[arg(long, env = "WASMKUBE_NODE_DIR", default_value = "./wasmkube-node")]
    pub(crate) data_dir: PathBuf,
    /// The wasmlet's HTTPS endpoint (logs).
    #[arg(long, default_value = "127.0.0.1:10250")]
    pub(crate) listen: SocketAddr,
    /// The address reported as the node's InternalIP (default: the listen address).
    #[arg(long)]
    pub(crate) address: Option<String>,
    /// Join the cluster of this API server (https://HOST:PORT) with a node token: the wasmlet
    /// gets credentials of its own (user system:node:NAME) and keeps them in DATA_DIR.
    #[arg(long, requires = "token_file", conflicts_with = "kubeconfig")]
    pub(crate) join: Option<String>,
    /// The node token (a server's DATA_DIR/node-token; its join-token works too).
    #[arg(long, requires = "join")]
    pub(crate) token_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Args)]
pub(crate) struct SchedulerArgs {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Schedule pods whose spec.schedulerName is this.
    #[arg(long, default_value = "default-scheduler")]
    pub(crate) scheduler_name: String,
    /// Score this percentage of feasible nodes (default: adaptive, as kube-scheduler).
    #[arg(long)]
    pub(crate) percentage_of_nodes_to_score: Option<u32>,
    #[command(flatten)]
    pub(crate) election: LeaderElectArgs,
    #[command(flatten)]
    pub(crate) metrics: MetricsArgs,
}

/// Where a component running alone serves its Prometheus metrics.
#[derive(Args)]
pub(crate) struct MetricsArgs {
    /// Serve `/metrics` (Prometheus text) and `/healthz` over plain HTTP here (none: not
    /// served; `wasmkube up` serves every component's at the API server's `/metrics`).
    #[arg(long)]
    pub(crate) metrics_listen: Option<SocketAddr>,
}

impl MetricsArgs {
    pub(crate) async fn serve(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
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
pub(crate) struct DnsArgs {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Where to answer (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:10053")]
    pub(crate) listen: SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    pub(crate) cluster_domain: String,
    #[command(flatten)]
    pub(crate) metrics: MetricsArgs,
}

#[derive(Args)]
pub(crate) struct ControllerArgs {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub(crate) kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) timers: NodeTimerArgs,
    #[command(flatten)]
    pub(crate) election: LeaderElectArgs,
    /// Controllers to run: `*` all, `NAME` that one, `-NAME` not that one (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub(crate) controllers: Vec<String>,
    /// The CA (PEM) to publish as `kube-root-ca.crt` in every namespace (default: the
    /// kubeconfig's).
    #[arg(long)]
    pub(crate) root_ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) metrics: MetricsArgs,
}

/// Leader election of the scheduler and the controller manager (their Kubernetes flags).
#[derive(Args)]
pub(crate) struct LeaderElectArgs {
    /// Act only while holding a kube-system Lease, so that of several servers one schedules
    /// and one runs the controllers (`--leader-elect=false`: always act).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) leader_elect: bool,
    /// Seconds the others wait after the holder's last renewal before taking over.
    #[arg(long, default_value_t = 15.0)]
    pub(crate) leader_elect_lease_duration: f64,
    /// Seconds the holder keeps acting while it cannot renew.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) leader_elect_renew_deadline: f64,
    /// Seconds between attempts to take or renew the Lease.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) leader_elect_retry_period: f64,
}

impl LeaderElectArgs {
    /// The election for Lease `kube-system/NAME`, when enabled; `identity` must be unique
    /// among the candidates (and stable across restarts to get the Lease back at once).
    pub(crate) fn election(
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
pub(crate) fn random_identity() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}_{:x}{nanos:x}", host_name(), std::process::id())
}

/// The node lifecycle and autoscaling controllers' timers (kube-controller-manager's flags).
#[derive(Args)]
pub(crate) struct NodeTimerArgs {
    /// Seconds between evaluations of each HorizontalPodAutoscaler.
    #[arg(long, default_value_t = 15)]
    pub(crate) horizontal_pod_autoscaler_sync_period: u64,
    /// Seconds a node may be silent before it is marked Unknown.
    #[arg(long, default_value_t = 40)]
    pub(crate) node_monitor_grace_period: u64,
    /// Seconds pods without their own toleration stay on an unreachable or not-ready node.
    #[arg(long, default_value_t = 300)]
    pub(crate) default_unreachable_toleration_seconds: u64,
    /// Nodes per second whose pods may start being evicted.
    #[arg(long, default_value_t = 0.1)]
    pub(crate) node_eviction_rate: f64,
}

impl NodeTimerArgs {
    pub(crate) fn hpa_sync_period(&self) -> Option<Duration> {
        Some(Duration::from_secs(
            self.horizontal_pod_autoscaler_sync_period.max(1),
        ))
    }

    pub(crate) fn timers(&self) -> wasmkube_controllers::nodelifecycle::Timers {
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
pub(crate) struct PushArgs {
    /// The .wasm file (a component or a wasip1 module).
    pub(crate) file: PathBuf,
    /// Where to push it: NAME:TAG for the cluster registry, or HOST/NAME:TAG.
    pub(crate) image: String,
    /// The kubeconfig that locates the cluster (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Registries reached over plain HTTP (host:port), repeatable.
    #[arg(long = "insecure-registry")]
    pub(crate) insecure_registries: Vec<String>,
}

/// This machine's host name as a node name (DNS-1123), like the kubelet's default.
pub(crate) fn host_name() -> String {
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

pub(crate) fn parse_range(s: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
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
pub(crate) fn source(kubeconfig: Option<PathBuf>) -> wasmkube_client::Source {
    kubeconfig.map_or_else(
        wasmkube_client::Source::infer,
        wasmkube_client::Source::kubeconfig,
    )
}
