//! Test kit for end-to-end tests: an in-process API server on a free loopback port, the real
//! `wasmkube` binary as a child process, kube-rs clients for both, and condition waits.

pub mod lincheck;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio_util::sync::CancellationToken;

/// Logs to the test output once per process.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WASMKUBE_LOG")
                .unwrap_or_else(|_| "info,openraft=warn,raft_log=warn,kube=warn,hyper=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A kube-rs client for a kubeconfig file, exactly as a user's program would build it.
///
/// # Errors
/// When the kubeconfig cannot be read or is invalid.
pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig).context("read kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// [`client_for`] without kube-rs's retries of 503/504 (a retried update can answer 409 for
/// a change its first attempt made), for tests that record exactly what each call saw.
///
/// # Errors
/// When the kubeconfig cannot be read or is invalid.
pub async fn client_without_retries(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig).context("read kubeconfig")?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_secs(10));
    Ok(kube::Client::try_from(config)?)
}

/// An API server running inside the test process.
pub struct Cluster {
    /// Its data directory.
    pub dir: tempfile::TempDir,
    /// A client for it.
    pub client: kube::Client,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The admin token.
    pub token: String,
    shutdown: CancellationToken,
    running: Option<wasmkube_apiserver::Running>,
    control_plane: Vec<Background>,
    publishing_root_ca: std::sync::atomic::AtomicBool,
}

/// The controllers a [`Cluster`] runs on its own (the rest come with `start_controllers`).
const IDENTITY_CONTROLLERS: &[&str] = &["serviceaccount", "root-ca-cert-publisher"];

/// Runs one of [`IDENTITY_CONTROLLERS`] until `shutdown`.
fn start_identity_controller(
    client: &kube::Client,
    name: &str,
    root_ca: Option<String>,
    shutdown: &CancellationToken,
) {
    let config = wasmkube_controllers::Config {
        controllers: vec![name.to_owned()],
        root_ca,
        ..Default::default()
    };
    let (c, stop) = (client.clone(), shutdown.child_token());
    tokio::spawn(async move { wasmkube_controllers::run_with_client(c, &config, stop).await });
}

impl Cluster {
    /// Starts an API server with default settings.
    ///
    /// # Errors
    /// When it cannot start.
    pub async fn start() -> Result<Cluster> {
        Self::start_with(|_| {}).await
    }

    /// Starts an API server after letting the caller adjust its configuration.
    ///
    /// # Errors
    /// When it cannot start.
    pub async fn start_with(
        adjust: impl FnOnce(&mut wasmkube_apiserver::Config),
    ) -> Result<Cluster> {
        init_tracing();
        let dir = tempfile::tempdir()?;
        let mut config = wasmkube_apiserver::Config::new(dir.path());
        config.listen = "127.0.0.1:0".parse().expect("loopback address");
        adjust(&mut config);
        let shutdown = CancellationToken::new();
        let running = wasmkube_apiserver::start(config, shutdown.clone()).await?;
        let client = client_for(&running.kubeconfig).await?;
        // A pod needs its namespace's `default` ServiceAccount (ServiceAccount admission): the
        // controller that keeps it always runs, as in every cluster. (The `kube-root-ca.crt`
        // ConfigMaps its token volume projects come with the first node.)
        start_identity_controller(&client, "serviceaccount", None, &shutdown);
        Ok(Cluster {
            addr: running.addr,
            kubeconfig: running.kubeconfig.clone(),
            token: running.token.clone(),
            dir,
            client,
            shutdown,
            running: Some(running),
            control_plane: Vec::new(),
            publishing_root_ca: Default::default(),
        })
    }

    /// Shuts the server down cleanly.
    ///
    /// # Errors
    /// When the store did not close cleanly.
    /// The API server's kinds (register one to serve it at once).
    ///
    /// # Panics
    /// After [`Cluster::stop`].
    pub fn registry(&self) -> &wasmkube_apiserver::registry::Registry {
        self.running
            .as_ref()
            .expect("the API server runs")
            .registry()
    }

    /// The API server as components in this process reach it (no socket), and the
    /// kubeconfigs it wrote for them.
    ///
    /// # Panics
    /// After [`Cluster::stop`].
    pub fn in_process(
        &self,
    ) -> (
        wasmkube_client::Local,
        wasmkube_apiserver::ComponentKubeconfigs,
    ) {
        let running = self.running.as_ref().expect("the API server runs");
        (running.local.clone(), running.components.clone())
    }

    /// The client side of its raft transport, for cutting it off from other servers.
    ///
    /// # Panics
    /// After [`Cluster::stop`].
    pub fn peer_network(&self) -> wasmkube_store::Network {
        self.running
            .as_ref()
            .expect("the API server runs")
            .peer_network()
    }

    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A wasmlet running inside the test process, joined to a [`Cluster`].
pub struct Node {
    /// The Node's name.
    pub name: String,
    /// Its data directory.
    pub dir: tempfile::TempDir,
    /// The loopback range behind its pod IPs.
    pub pod_range: (std::net::Ipv4Addr, u8),
    /// Its node address (the range's `.1`): NodePorts and hostPorts listen here.
    pub address: std::net::Ipv4Addr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), wasmkube_wasmlet::Error>>>,
}

impl Node {
    /// Starts an in-process wasmlet named `name` against the cluster of `kubeconfig` with
    /// test-friendly settings (see [`Cluster::start_node`]), adjusted by `adjust`.
    ///
    /// # Errors
    /// When it does not register and become Ready in time.
    pub async fn start(
        kubeconfig: &Path,
        client: &kube::Client,
        name: &str,
        adjust: impl FnOnce(&mut wasmkube_wasmlet::Config),
    ) -> Result<Node> {
        let dir = tempfile::tempdir()?;
        let mut config = wasmkube_wasmlet::Config {
            api: wasmkube_client::Source::kubeconfig(kubeconfig),
            ..wasmkube_wasmlet::Config::new(name, dir.path())
        };
        config.pod_range = random_pod_range();
        // Each node has its own loopback address, so NodePorts of parallel tests do not clash.
        let address = std::net::Ipv4Addr::from(u32::from(config.pod_range.0) + 1);
        config.listen = std::net::SocketAddr::from((address, 0));
        config.max_pods = 64;
        config.max_instance_memory = 128 << 20;
        // Renew the lease (and check the node status) every second, so node-failure tests can
        // use a grace period of a few seconds.
        config.lease_duration = Duration::from_secs(4);
        config.backoff = wasmkube_wasmlet::Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(4),
        };
        adjust(&mut config);
        let pod_range = config.pod_range;
        let address = match config.listen.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => address,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(wasmkube_wasmlet::run(config, shutdown.clone()));
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
        wait_for(
            &format!("node {name} Ready"),
            Duration::from_secs(30),
            || async {
                let node = nodes.get_opt(name).await.ok().flatten()?;
                let ready = node
                    .status?
                    .conditions?
                    .into_iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                ready.then_some(())
            },
        )
        .await?;
        Ok(Node {
            name: name.to_owned(),
            dir,
            pod_range,
            address,
            shutdown,
            task: Some(task),
        })
    }

    /// The loopback address behind a pod IP of this node, so the test (the host) can reach a pod
    /// directly, as a node-local tool would. Pod IPs are virtual; this never returns anything
    /// but loopback.
    ///
    /// # Errors
    /// When the node has no pod range or the IP is not in it.
    pub async fn backing(
        &self,
        client: &kube::Client,
        pod_ip: std::net::Ipv4Addr,
        port: u16,
    ) -> Result<std::net::SocketAddr> {
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
        let node = nodes.get(&self.name).await?;
        let cidr: ipnet::Ipv4Net = node
            .spec
            .and_then(|s| s.pod_cidr)
            .context("the node has a podCIDR")?
            .parse()?;
        anyhow::ensure!(cidr.contains(&pod_ip), "{pod_ip} is not in {cidr}");
        let offset = u32::from(pod_ip) - u32::from(cidr.network());
        let real = std::net::Ipv4Addr::from(u32::from(self.pod_range.0) + offset);
        anyhow::ensure!(real.is_loopback(), "{real} is not loopback");
        Ok(std::net::SocketAddr::from((real, port)))
    }

    /// Stops the wasmlet (its instances end; the pods stay bound).
    ///
    /// # Errors
    /// When the wasmlet failed.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await??;
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A component running in the test process; dropping this stops it.
pub struct Background(CancellationToken);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A pod-IP range no other test is likely to use: 127.R.S.0/24 with random R, S.
pub fn random_pod_range() -> (std::net::Ipv4Addr, u8) {
    use rand::Rng;
    let mut rng = rand::rng();
    (
        std::net::Ipv4Addr::new(
            127,
            rng.random_range(100..=250),
            rng.random_range(0..=255),
            0,
        ),
        24,
    )
}

impl Cluster {
    /// Starts a wasmlet named `name` with test-friendly settings: a small pool, its own pod
    /// range, and a short crash back-off (1 s doubling to 4 s).
    ///
    /// # Errors
    /// When it does not register and become Ready in time.
    pub async fn start_node(&self, name: &str) -> Result<Node> {
        self.start_node_with(name, |_| {}).await
    }

    /// Like [`start_node`](Self::start_node), after letting the caller adjust the config.
    ///
    /// # Errors
    /// When it does not register and become Ready in time.
    pub async fn start_node_with(
        &self,
        name: &str,
        adjust: impl FnOnce(&mut wasmkube_wasmlet::Config),
    ) -> Result<Node> {
        self.publish_root_ca()?;
        Node::start(&self.kubeconfig, &self.client, name, adjust).await
    }

    /// Starts the `root-ca-cert-publisher` (once): the token volume of every pod projects the
    /// `kube-root-ca.crt` ConfigMap it keeps.
    fn publish_root_ca(&self) -> Result<()> {
        if !self
            .publishing_root_ca
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let ca = std::fs::read_to_string(self.dir.path().join("pki/ca.crt"))?;
            start_identity_controller(
                &self.client,
                "root-ca-cert-publisher",
                Some(ca),
                &self.shutdown,
            );
        }
        Ok(())
    }

    /// Starts an API server with the scheduler and the controller manager beside it (they stop
    /// with the cluster).
    ///
    /// # Errors
    /// When it cannot start.
    pub async fn start_with_control_plane() -> Result<Cluster> {
        let mut cluster = Self::start().await?;
        cluster.control_plane = vec![cluster.start_scheduler(), cluster.start_controllers()];
        Ok(cluster)
    }

    /// Starts the cluster DNS in this process on a free loopback port; it stops when the guard
    /// drops.
    ///
    /// # Errors
    /// When it cannot start.
    pub async fn start_dns(&self) -> Result<(std::net::SocketAddr, Background)> {
        let shutdown = CancellationToken::new();
        let mut config = wasmkube_dns::Config::new();
        config.listen = "127.0.0.1:0".parse().expect("loopback address");
        let running =
            wasmkube_dns::start_with_client(self.client.clone(), &config, shutdown.clone()).await?;
        let addr = running.addr;
        tokio::spawn(running.wait());
        Ok((addr, Background(shutdown)))
    }

    /// Starts the scheduler in this process; it stops when the returned guard drops.
    pub fn start_scheduler(&self) -> Background {
        let shutdown = CancellationToken::new();
        let config = wasmkube_sched::Config::new();
        tokio::spawn(wasmkube_sched::run_with_client(
            config,
            self.client.clone(),
            shutdown.clone(),
        ));
        Background(shutdown)
    }

    /// Starts the controller manager in this process; it stops when the guard drops.
    pub fn start_controllers(&self) -> Background {
        self.start_controllers_with(|_| {})
    }

    /// Like [`start_controllers`](Self::start_controllers), after adjusting the config.
    pub fn start_controllers_with(
        &self,
        adjust: impl FnOnce(&mut wasmkube_controllers::Config),
    ) -> Background {
        if let Err(e) = self.publish_root_ca() {
            tracing::warn!(error = %e, "no cluster CA to publish");
        }
        let shutdown = CancellationToken::new();
        let mut config = wasmkube_controllers::Config {
            controllers: std::iter::once("*".to_string())
                .chain(IDENTITY_CONTROLLERS.iter().map(|c| format!("-{c}")))
                .collect(),
            root_ca: std::fs::read_to_string(self.dir.path().join("pki/ca.crt")).ok(),
            ..Default::default()
        };
        adjust(&mut config);
        // Through the client crate, as `wasmkube up` connects them (its retry policy included).
        let source = wasmkube_client::Source::kubeconfig(&self.kubeconfig);
        let token = shutdown.clone();
        tokio::spawn(async move {
            match wasmkube_client::connect(&source).await {
                Ok(c) => wasmkube_controllers::run_with_client(c.client, &config, token).await,
                Err(e) => tracing::error!(error = %e, "the controllers cannot connect"),
            }
        });
        Background(shutdown)
    }

    /// Pushes the sample guest `sample` to the cluster registry as `sample:v1`; returns that
    /// image name.
    ///
    /// # Errors
    /// When the push fails.
    pub async fn push_sample(&self, sample: &str) -> Result<String> {
        let wasm =
            wasmkube_samples::guest(sample).with_context(|| format!("no sample {sample}"))?;
        let image = format!("{sample}:v1");
        self.push(&image, wasm.to_vec()).await?;
        Ok(image)
    }

    /// Pushes `bytes` to the cluster registry as `image`.
    ///
    /// # Errors
    /// When the push fails.
    pub async fn push(&self, image: &str, bytes: Vec<u8>) -> Result<()> {
        let config =
            wasmkube_client::load(&wasmkube_client::Source::kubeconfig(&self.kubeconfig)).await?;
        let registries = wasmkube_wasmlet::registries_for(&config, Vec::new());
        wasmkube_wasmlet::images::push(&registries, image, bytes).await?;
        Ok(())
    }
}

/// The `wasmkube` binary built by this workspace (or `$WASMKUBE_BIN`).
///
/// # Panics
/// When it cannot be found: `cargo test` builds it because `cli` has integration tests.
pub fn wasmkube_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WASMKUBE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> (tests) or target/<profile>/pods (benchmarks)
    let dir = exe.parent().expect("executable directory");
    let bin = [
        dir.parent().map(|d| d.join("wasmkube")),
        Some(dir.join("wasmkube")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.exists());
    bin.unwrap_or_else(|| {
        panic!(
            "the wasmkube binary is not built next to {}; run `cargo test --workspace` (or `cargo build [--release] -p wasmkube`)",
            exe.display()
        )
    })
}

/// A free loopback port for a server the test starts later (bound and released).
///
/// It comes from 20000–29999: below the kernel's ephemeral range (32768 and up by default),
/// which every `:0` bind and every outgoing connection on the machine draws from, so no other
/// test's client or server can take the port between this pick and the server's own bind
/// (a clean-clone CI run once lost a server's port that way), and below the NodePort range.
/// Each pick in this process is a different port, starting at a random one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 10_000;
    static NEXT: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(rand::random::<u32>() % SPAN));
    for _ in 0..SPAN {
        let port =
            u16::try_from(LOW + next.fetch_add(1, Ordering::Relaxed) % SPAN).expect("below 30000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// Waits until Service `service` (namespace `default`) has exactly `ready` ready endpoints
/// across its EndpointSlices.
///
/// # Errors
/// When that does not happen within a minute.
pub async fn wait_ready_endpoints(
    client: &kube::Client,
    service: &str,
    ready: usize,
) -> Result<()> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slices: kube::Api<EndpointSlice> = kube::Api::default_namespaced(client.clone());
    let lp =
        kube::api::ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    wait_for(
        &format!("{ready} ready endpoints of {service}"),
        Duration::from_secs(60),
        || async {
            let list = slices.list(&lp).await.ok()?;
            let n = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                .count();
            (n == ready).then_some(())
        },
    )
    .await
}

/// Waits until Ingress `name` (namespace `default`) reports an address and port in its status.
///
/// # Errors
/// When that does not happen within a minute.
pub async fn wait_ingress_address(
    client: &kube::Client,
    name: &str,
) -> Result<std::net::SocketAddr> {
    use k8s_openapi::api::networking::v1::Ingress;
    let ingresses: kube::Api<Ingress> = kube::Api::default_namespaced(client.clone());
    wait_for(
        &format!("the address of Ingress {name}"),
        Duration::from_secs(60),
        || async {
            let lb = ingresses
                .get(name)
                .await
                .ok()?
                .status?
                .load_balancer?
                .ingress?
                .into_iter()
                .next()?;
            let port = u16::try_from(lb.ports?.first()?.port).ok()?;
            Some(std::net::SocketAddr::new(lb.ip?.parse().ok()?, port))
        },
    )
    .await
}

/// The `kubectl` on `PATH`, if any.
pub fn kubectl() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

/// `kubectl.VERSION` (`1.27`, `1.33`) beside the `kubectl` on `PATH`, or that `kubectl` when
/// there is no such version; `None` without kubectl.
pub fn kubectl_version(version: &str) -> Option<PathBuf> {
    let default = kubectl()?;
    let versioned = default.with_file_name(format!("kubectl.{version}"));
    Some(if versioned.exists() {
        versioned
    } else {
        default
    })
}

/// Runs kubectl `bin` against `kubeconfig` without blocking the thread (an API server may be
/// running on it): whether it succeeded, its stdout, its stderr.
///
/// # Errors
/// When kubectl cannot be started.
pub async fn run_kubectl(
    bin: &Path,
    kubeconfig: &Path,
    args: &[&str],
) -> Result<(bool, String, String)> {
    run_kubectl_with_input(bin, kubeconfig, args, None).await
}

/// [`run_kubectl`] with `input` on kubectl's stdin (closed after it), and a two-minute limit.
///
/// # Errors
/// When kubectl cannot be started, or runs longer than two minutes.
pub async fn run_kubectl_with_input(
    bin: &Path,
    kubeconfig: &Path,
    args: &[&str],
    input: Option<&[u8]>,
) -> Result<(bool, String, String)> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input).await?;
        // Dropping it closes kubectl's stdin.
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("kubectl {args:?} ran for two minutes"))??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The `wasmkube` binary as a command, run inside network namespace `netns` (`ip netns exec`)
/// when one is given.
pub fn wasmkube_command(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(wasmkube_bin());
            c
        }
        None => Command::new(wasmkube_bin()),
    }
}

/// `wasmkube up` as a child process.
pub struct Process {
    /// The child.
    pub child: Child,
    /// Its listen address.
    pub addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The flags it was started with beyond the defaults.
    extra: Vec<String>,
    /// The network namespace it runs in (`ip netns exec`), if not this one.
    netns: Option<String>,
    /// Its `WASMKUBE_LOG` filter.
    log_filter: String,
}

/// The log filter of servers the tests start.
const LOG_FILTER: &str = "info,openraft=warn,raft_log=warn";

impl Process {
    /// `n` servers of one cluster, each `wasmkube up` with `extra` in `dir/s{i}` on free ports:
    /// the first with `--peer-listen`, the others also with `--join` and its token.
    ///
    /// # Errors
    /// When one does not start or join within 60 s.
    pub async fn group(dir: &Path, n: usize, extra: &[&str]) -> Result<Vec<Process>> {
        let mut servers: Vec<Process> = Vec::with_capacity(n);
        for i in 0..n {
            let data = dir.join(format!("s{i}"));
            std::fs::create_dir_all(&data)?;
            let peer = format!("127.0.0.1:{}", free_port());
            let mut flags: Vec<String> = extra.iter().map(|f| (*f).to_owned()).collect();
            flags.extend(["--peer-listen".to_owned(), peer]);
            if let Some(first) = servers.first() {
                flags.extend([
                    "--join".to_owned(),
                    format!("https://{}", first.addr),
                    "--token-file".to_owned(),
                    first.data_dir.join("join-token").display().to_string(),
                ]);
            }
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            servers.push(Self::up_with(&data, free_port(), &flags).await?);
        }
        Ok(servers)
    }

    /// Starts it again (after [`Process::kill9`] or [`Process::terminate`]) with the same
    /// address, data and flags, and waits until it is ready.
    ///
    /// # Errors
    /// When it does not become ready within 60 s.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let again = Self::spawn_up(
            self.netns.as_deref(),
            &self.data_dir,
            &self.addr,
            &extra,
            &self.log_filter,
        )
        .await?;
        // The old child is already reaped; dropping it changes nothing.
        drop(std::mem::replace(self, again));
        Ok(())
    }

    /// Starts `wasmkube up` on `data_dir` and waits until `/readyz` answers.
    ///
    /// # Errors
    /// When it exits or does not become ready within 60 s.
    pub async fn up(data_dir: &Path, port: u16) -> Result<Process> {
        Self::up_with(data_dir, port, &[]).await
    }

    /// [`up_with`](Self::up_with) on a free port with its data in `dir/data`.
    ///
    /// # Errors
    /// When it exits or does not become ready within 60 s.
    pub async fn up_in(dir: &Path, extra: &[&str]) -> Result<Process> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        Self::up_with(&data, free_port(), extra).await
    }

    /// [`up`](Self::up) with extra flags (e.g. `--no-wasmlet`).
    ///
    /// # Errors
    /// When it exits or does not become ready within 60 s.
    pub async fn up_with(data_dir: &Path, port: u16, extra: &[&str]) -> Result<Process> {
        Self::spawn_up(
            None,
            data_dir,
            &format!("127.0.0.1:{port}"),
            extra,
            LOG_FILTER,
        )
        .await
    }

    /// [`up_in`](Self::up_in) with its own `WASMKUBE_LOG` filter (benchmarks read the
    /// `podtrace` events from its log, `DIR/data.log`).
    ///
    /// # Errors
    /// When it exits or does not become ready within 60 s.
    pub async fn up_in_logging(dir: &Path, extra: &[&str], log_filter: &str) -> Result<Process> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let addr = format!("127.0.0.1:{}", free_port());
        Self::spawn_up(None, &data, &addr, extra, log_filter).await
    }

    /// Its log (stderr).
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    /// [`up_with`](Self::up_with) inside network namespace `netns` (`ip netns exec`), listening
    /// at `addr` there.
    ///
    /// # Errors
    /// When it exits or does not become ready within 60 s.
    pub async fn up_in_netns(
        netns: &str,
        data_dir: &Path,
        addr: &str,
        extra: &[&str],
    ) -> Result<Process> {
        Self::spawn_up(Some(netns), data_dir, addr, extra, LOG_FILTER).await
    }

    async fn spawn_up(
        netns: Option<&str>,
        data_dir: &Path,
        addr: &str,
        extra: &[&str],
        log_filter: &str,
    ) -> Result<Process> {
        let log = std::fs::File::create(data_dir.with_extension("log"))?;
        let (net, prefix) = random_pod_range();
        let mut command = wasmkube_command(netns);
        let child = command
            .args(["up", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", addr])
            .args([
                "--pod-range",
                &format!("{net}/{prefix}"),
                "--max-pods",
                "256",
                // Free ports, so parallel tests' clusters do not clash.
                "--dns-listen",
                "127.0.0.1:0",
                "--ingress-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("WASMKUBE_LOG", log_filter)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn wasmkube")?;
        let mut p = Process {
            child,
            addr: addr.to_owned(),
            data_dir: data_dir.to_path_buf(),
            extra: extra.iter().map(|f| (*f).to_owned()).collect(),
            netns: netns.map(str::to_owned),
            log_filter: log_filter.to_owned(),
        };
        p.wait_ready(Duration::from_secs(60)).await?;
        Ok(p)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.data_dir.with_extension("log"))
                    .unwrap_or_default();
                // The error, not the backtrace that follows it.
                let log = log.split("\nStack backtrace:").next().unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                bail!(
                    "wasmkube exited early: {status}; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if self.data_dir.join("kubeconfig").exists()
                && let Ok(c) = client_for(&self.data_dir.join("kubeconfig")).await
                && c.apiserver_version().await.is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("wasmkube not ready after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig")
    }

    /// A client for it.
    ///
    /// # Errors
    /// When the kubeconfig is unusable.
    pub async fn client(&self) -> Result<kube::Client> {
        client_for(&self.kubeconfig()).await
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    ///
    /// # Errors
    /// When it does not exit cleanly within 30 s.
    pub async fn terminate(&mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                bail!("wasmkube exited with {status} after SIGTERM");
            }
            if tokio::time::Instant::now() > deadline {
                self.kill9();
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "wasmkube did not stop within 30 s of SIGTERM; its log ends:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The next item of a watch stream within `left`; `None` when the stream ends or fails, or time
/// runs out.
pub async fn next_within<T, E>(
    events: &mut (impl futures::Stream<Item = std::result::Result<T, E>> + Unpin),
    left: Duration,
) -> Option<T> {
    use futures::StreamExt as _;
    match tokio::time::timeout(left, events.next()).await {
        Ok(Some(Ok(item))) => Some(item),
        _ => None,
    }
}

/// A field of `/proc/{pid}/status` counted in KiB (`VmRSS`, `VmHWM`), in bytes; `pid`
/// `"self"` reads this process. 0 when it cannot be read.
pub fn proc_status_bytes(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// CPU time (user + system) a process has used so far; `pid` `"self"` reads this process.
/// Zero when it cannot be read. Resolution: the kernel's clock tick (10 ms at 100 Hz).
pub fn proc_cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    // Linux reports these in USER_HZ, 100 a second on every architecture it supports.
    Duration::from_millis(ticks * 10)
}

/// Runs `f(i)` for `i` in `0..n` on `clients` concurrent workers, each taking the next index,
/// until all ran or `max` passed; returns how long it took.
///
/// # Errors
/// The first error of `f`.
pub async fn fan_out<F, Fut>(n: usize, clients: usize, max: Duration, f: F) -> Result<Duration>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let started = std::time::Instant::now();
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let f = std::sync::Arc::new(f);
    let workers: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (next, f) = (std::sync::Arc::clone(&next), std::sync::Arc::clone(&f));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || started.elapsed() > max {
                        return anyhow::Ok(());
                    }
                    f(i).await?;
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    Ok(started.elapsed())
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
///
/// # Errors
/// When the condition does not hold in time.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until events with `reason` about the `kind` object `name` in `ns` exist (read as
/// core/v1 Events, as `kubectl describe` does); returns their messages.
///
/// # Errors
/// When none comes within `timeout`.
pub async fn wait_for_events(
    client: &kube::Client,
    ns: &str,
    (kind, name): (&str, &str),
    reason: &str,
    timeout: Duration,
) -> Result<Vec<String>> {
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("a {reason} event about {kind} {name}"),
        timeout,
        || async {
            let found: Vec<String> = events
                .list(&kube::api::ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| {
                    e.involved_object.kind.as_deref() == Some(kind)
                        && e.involved_object.name.as_deref() == Some(name)
                        && e.reason.as_deref() == Some(reason)
                })
                .filter_map(|e| e.message)
                .collect();
            (!found.is_empty()).then_some(found)
        },
    )
    .await
}

/// Sends a raw request through a kube client (auth and TLS as configured) and returns the
/// status code and the body parsed as JSON (or as a string when it is not JSON).
///
/// # Errors
/// Transport failures.
pub async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    accept: &str,
    body: &[u8],
) -> Result<(u16, serde_json::Value)> {
    use http_body_util::BodyExt;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .header("accept", accept)
        .body(kube::client::Body::from(body.to_vec()))?;
    let resp = client.send(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    Ok((status, value))
}

/// A plain HTTP/1.1 GET (what curl does): (status, body).
///
/// # Errors
/// When the connection fails.
pub async fn http_get(addr: std::net::SocketAddr, host: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp).await?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Chunked bodies: keep only the text lines.
    let body = if resp
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.lines()
            .filter(|l| !l.is_empty() && u64::from_str_radix(l.trim(), 16).is_err())
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        body
    };
    Ok((status, body))
}

/// `wasmkube up` flags for the API server and store alone (the benchmarks' servers).
pub const API_ONLY: &[&str] = &[
    "--no-wasmlet",
    "--no-scheduler",
    "--no-controllers",
    "--no-dns",
    "--no-ingress",
];

/// A child process killed (and reaped) when this is dropped.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// `wasmkube ARGS` as a child process, its stderr to `log`.
    ///
    /// # Errors
    /// When the log cannot be created or the binary not started.
    pub fn wasmkube(args: &[&str], log: &Path) -> Result<KillOnDrop> {
        Self::wasmkube_in(None, args, log)
    }

    /// [`wasmkube`](Self::wasmkube) inside network namespace `netns` (`ip netns exec`).
    ///
    /// # Errors
    /// When the log cannot be created or the binary not started.
    pub fn wasmkube_in(netns: Option<&str>, args: &[&str], log: &Path) -> Result<KillOnDrop> {
        let mut command = wasmkube_command(netns);
        Ok(KillOnDrop(
            command
                .args(args)
                .env("WASMKUBE_LOG", "info,openraft=warn,raft_log=warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log)?)
                .spawn()?,
        ))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `Some` once Node `name` reports its `Ready` condition `True`.
pub async fn node_ready(client: &kube::Client, name: &str) -> Option<()> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let n = nodes.get_opt(name).await.ok().flatten()?;
    n.status?
        .conditions?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
        .then_some(())
}

/// Pushes the sample guests `images` (as `NAME:v1`) into the cluster registry with `wasmkube
/// image push`, writing their files into `dir`.
///
/// # Errors
/// When a sample is missing or a push fails.
pub fn push_samples(kubeconfig: &Path, dir: &Path, images: &[&str]) -> Result<()> {
    for image in images {
        let file = dir.join(format!("{image}.wasm"));
        std::fs::write(&file, wasmkube_samples::guest(image).context("sample")?)?;
        let pushed = Command::new(wasmkube_bin())
            .args(["image", "push"])
            .arg(&file)
            .arg(format!("{image}:v1"))
            .env("KUBECONFIG", kubeconfig)
            .output()?;
        anyhow::ensure!(
            pushed.status.success(),
            "push {image}: {}",
            String::from_utf8_lossy(&pushed.stderr)
        );
    }
    Ok(())
}

/// The Services of the frontend → backend sample (pods labelled `app: frontend|backend`,
/// port `http`): `backend` in the cluster, `frontend` on NodePort `node_port`.
///
/// # Errors
/// When the API refuses one.
pub async fn frontend_backend_services(client: &kube::Client, node_port: u16) -> Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use wasmkube_client::create_from_json;
    create_from_json::<Service>(
        client,
        "default",
        serde_json::json!({"metadata": {"name": "backend"},
        "spec": {"selector": {"app": "backend"}, "ports": [{"port": 80, "targetPort": "http"}]}}),
    )
    .await?;
    create_from_json::<Service>(
        client,
        "default",
        serde_json::json!({"metadata": {"name": "frontend"},
        "spec": {"type": "NodePort", "selector": {"app": "frontend"},
                 "ports": [{"port": 80, "targetPort": "http", "nodePort": node_port}]}}),
    )
    .await?;
    Ok(())
}

/// `Some(body)` once the frontend sample at `entry` answers through the backend.
pub async fn frontend_serves(entry: std::net::SocketAddr) -> Option<String> {
    match http_get(entry, "frontend", "/").await {
        Ok((200, body)) if body.contains("frontend -> backend (200)") => Some(body),
        _ => None,
    }
}

/// The names of the ConfigMaps in `default` that start with `prefix`, read through `client`.
///
/// # Errors
/// When the list fails.
pub async fn configmap_names(
    client: &kube::Client,
    prefix: &str,
) -> Result<std::collections::BTreeSet<String>> {
    use kube::ResourceExt;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::default_namespaced(client.clone());
    Ok(cms
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// Creates an empty ConfigMap `name` in `default` through `client`, trying again for up to
/// `within` (an election, a server leaving); `Ok` once one attempt is acknowledged.
///
/// # Errors
/// When no attempt is acknowledged in time.
pub async fn create_configmap_within(
    client: &kube::Client,
    name: &str,
    within: Duration,
) -> Result<()> {
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::default_namespaced(client.clone());
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    wait_for(
        &format!("ConfigMap {name} acknowledged"),
        within,
        || async {
            cms.create(&kube::api::PostParams::default(), &cm)
                .await
                .ok()
        },
    )
    .await?;
    Ok(())
}

/// The arguments of `wasmkube wasmlet` for node `name` listening at `listen`: 32 pods, a
/// pod range no other test is likely to use, then `extra` (how it reaches the cluster, its
/// data directory, ...).
pub fn wasmlet_args(name: &str, listen: &str, extra: &[&str]) -> Vec<String> {
    let (net, prefix) = random_pod_range();
    let mut args: Vec<String> = [
        "wasmlet",
        "--node-name",
        name,
        "--listen",
        listen,
        "--max-pods",
        "32",
        "--pod-range",
        &format!("{net}/{prefix}"),
    ]
    .map(str::to_owned)
    .into();
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

/// [`wasmlet_args`] as a child process, inside network namespace `netns` when one is given;
/// its stderr to `log`.
///
/// # Errors
/// When the log cannot be created or the binary not started.
pub fn wasmlet_process(
    netns: Option<&str>,
    name: &str,
    listen: &str,
    extra: &[&str],
    log: &Path,
) -> Result<KillOnDrop> {
    let args = wasmlet_args(name, listen, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    KillOnDrop::wasmkube_in(netns, &args, log)
}

/// Creates namespace `ns`'s `default` ServiceAccount unless it exists, for servers that run
/// without the controller manager (whose `serviceaccount` controller keeps it): pods are
/// admitted only with their account.
///
/// # Errors
/// When the API refuses.
pub async fn default_service_account(client: &kube::Client, ns: &str) -> Result<()> {
    let sas: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(client.clone(), ns);
    let sa = serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}}))?;
    match sas.create(&Default::default(), &sa).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
