//! `bench`: pod-sized creates per second through the Kubernetes API (kube-rs clients over
//! HTTPS to `wasmkube up` in its own process) with 1, 16 and 64 concurrent clients, then the
//! same write pattern against the store layer alone and against a single-member etcd
//! (Debian's `etcd-server`), side by side.
//!
//! Run: `cargo run --release -p wasmkube-bench --features etcd --bin bench` (see README).
//! Everything listens on loopback; every load loop is bounded in count and time.

#[cfg(feature = "etcd")]
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Creates per concurrency level.
    #[arg(long, default_value_t = 3000)]
    count: usize,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Upper bound on each level's duration.
    #[arg(long, default_value_t = 30)]
    max_seconds: u64,
    /// The etcd binary (skipped when missing).
    #[arg(long, default_value = "etcd")]
    etcd: String,
    /// Servers (and store members, and etcd members) in the group; clients are spread over
    /// them. 1: a server alone.
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// Store clients write through the leader only (by default they are spread over the
    /// members, and followers forward to the leader).
    #[arg(long)]
    to_leader: bool,
    /// Measure only the store column (for quick experiments on the store).
    #[arg(long)]
    store_only: bool,
    /// Measure only the API column.
    #[arg(long, conflicts_with = "store_only")]
    api_only: bool,
    /// Create as an ordinary user (a client certificate from `wasmkube kubeconfig user`, bound
    /// in `default` to `system:aggregate-to-edit`, the rules `edit` aggregates — the API-only
    /// server runs no aggregation controller), so every request is decided by RBAC; by
    /// default as the admin (group `system:masters`, which RBAC does not consult).
    #[arg(long)]
    as_user: bool,
}

/// A kubeconfig for user `bench`, allowed what `edit` allows in `default`, on `server`.
async fn user_kubeconfig(server: &wasmkube_tests::Process) -> Result<std::path::PathBuf> {
    let admin_kc = server.kubeconfig();
    let data = admin_kc.parent().context("the data directory")?;
    let url = std::fs::read_to_string(&admin_kc)?
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_owned))
        .context("the server's URL")?;
    let out = wasmkube_tests::wasmkube_command(None)
        .args([
            "kubeconfig",
            "user",
            "--client-name",
            "bench",
            "--server",
            &url,
        ])
        .arg("--data-dir")
        .arg(data)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubeconfig user: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = data.join("bench.kubeconfig");
    std::fs::write(&path, out.stdout)?;
    let admin = wasmkube_tests::client_for(&admin_kc).await?;
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "bench-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:aggregate-to-edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bench"}],
    }))?;
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::default_namespaced(admin)
        .create(&PostParams::default(), &binding)
        .await?;
    let user = Api::<Pod>::default_namespaced(wasmkube_tests::client_for(&path).await?);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let probe: Pod = serde_json::from_value(pod("bench-probe"))?;
    wasmkube_tests::wait_for(
        "the bench user to be allowed",
        Duration::from_secs(60),
        || async { user.create(&dry, &probe).await.ok().map(|_| ()) },
    )
    .await?;
    Ok(path)
}

/// A realistic pod (about 1.5 KB of JSON once defaulted).
fn pod(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "bench", "tier": "backend", "pod-template-hash": "5d8f9c7b6"},
                     "annotations": {"example.com/owner": "bench"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/bench/app:1.2.3",
            "args": ["--port=8080", "--log-level=info"], "ports": [{"containerPort": 8080, "name": "http"}],
            "env": [{"name": "MODE", "value": "bench"}, {"name": "REGION", "value": "local"}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]}],
            "volumes": [{"name": "config", "configMap": {"name": "app-config"}}]}})
}

struct Stats {
    ops: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

fn stats(mut lat: Vec<Duration>, elapsed: Duration) -> Stats {
    lat.sort();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Stats {
        ops: lat.len(),
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

/// Runs `clients` workers, each calling `op(i)` for its share of `count` indices, bounded by
/// `max`; returns per-operation latencies.
async fn drive<F, Fut>(clients: usize, count: usize, max: Duration, op: F) -> Result<Stats>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + max;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count || Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                op(c, i).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(stats(all, start.elapsed()))
}

async fn bench_api(args: &Args, clients: usize, round: usize) -> Result<Stats> {
    let dir = tempfile::tempdir()?;
    let servers = if args.servers > 1 {
        wasmkube_tests::Process::group(dir.path(), args.servers, wasmkube_tests::API_ONLY).await?
    } else {
        vec![wasmkube_tests::Process::up_in(dir.path(), wasmkube_tests::API_ONLY).await?]
    };
    // No controller manager runs: the pods' account is made here.
    wasmkube_tests::default_service_account(&servers[0].client().await?, "default").await?;
    let mut kubeconfigs = Vec::new();
    for server in &servers {
        kubeconfigs.push(if args.as_user {
            user_kubeconfig(server).await?
        } else {
            server.kubeconfig()
        });
    }
    let mut apis = Vec::new();
    for c in 0..clients {
        let client = wasmkube_tests::client_for(&kubeconfigs[c % servers.len()]).await?;
        apis.push(Api::<Pod>::default_namespaced(client));
    }
    let apis = Arc::new(apis);
    let s = drive(
        clients,
        args.count,
        Duration::from_secs(args.max_seconds),
        move |c, i| {
            let apis = apis.clone();
            async move {
                let p: Pod = serde_json::from_value(pod(&format!("bench-{round}-{i}")))?;
                apis[c]
                    .create(&PostParams::default(), &p)
                    .await
                    .context("create")?;
                Ok(())
            }
        },
    )
    .await?;
    drop(servers);
    Ok(s)
}

/// `n` store members in this process, in `dir`, talking over the raft transport (plain HTTP
/// on loopback, as the etcd members do); one member alone when `n` is 1.
async fn store_group(dir: &std::path::Path, n: usize) -> Result<Vec<wasmkube_store::Store>> {
    if n <= 1 {
        return Ok(vec![
            wasmkube_store::Store::open(wasmkube_store::Config::new(dir)).await?,
        ]);
    }
    let mut listeners = Vec::new();
    let mut members = std::collections::BTreeMap::new();
    for id in 1..=n as u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        members.insert(id, l.local_addr()?.to_string());
        listeners.push(l);
    }
    let mut stores = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let store = wasmkube_store::Store::open(wasmkube_store::Config {
            node_id: id,
            advertise: members[&id].clone(),
            initial_members: members.clone(),
            ..wasmkube_store::Config::new(dir.join(format!("m{id}")))
        })
        .await?;
        tokio::spawn(wasmkube_store::network::serve(
            listener,
            store.clone(),
            None,
            std::future::pending(),
        ));
        stores.push(store);
    }
    for s in &stores {
        s.ready(Duration::from_secs(30)).await?;
    }
    Ok(stores)
}

async fn bench_store(args: &Args, clients: usize) -> Result<Stats> {
    let dir = tempfile::tempdir()?;
    let stores = Arc::new(store_group(dir.path(), args.servers).await?);
    let value = serde_json::to_string(&pod("x"))?;
    let to_leader = args.to_leader;
    let s = {
        let stores = stores.clone();
        drive(
            clients,
            args.count,
            Duration::from_secs(args.max_seconds),
            move |c, i| {
                let store = if to_leader {
                    stores
                        .iter()
                        .find(|s| s.leads())
                        .unwrap_or(&stores[0])
                        .clone()
                } else {
                    stores[c % stores.len()].clone()
                };
                let value = serde_json::value::RawValue::from_string(value.clone());
                async move {
                    store
                        .write(wasmkube_store::Command::Put {
                            key: format!("/core/pods/default/bench-{i}"),
                            value: value?,
                            precondition: wasmkube_store::Precondition::Absent,
                        })
                        .await?;
                    Ok(())
                }
            },
        )
        .await?
    };
    for store in stores.iter() {
        store.shutdown().await?;
    }
    Ok(s)
}

#[cfg(feature = "etcd")]
struct Etcd {
    children: Vec<Child>,
    endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

#[cfg(feature = "etcd")]
impl Drop for Etcd {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `n` etcd members on loopback, each its own process (fsync on, etcd's default).
#[cfg(feature = "etcd")]
async fn start_etcd(bin: &str, n: usize) -> Result<Etcd> {
    let dir = tempfile::tempdir()?;
    let ports: Vec<(u16, u16)> = (0..n)
        .map(|_| (wasmkube_tests::free_port(), wasmkube_tests::free_port()))
        .collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut etcd = Etcd {
        children: Vec::new(),
        endpoints: Vec::new(),
        _dir: dir,
    };
    for (i, (port, peer)) in ports.iter().enumerate() {
        let client_url = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(etcd._dir.path().join(format!("m{i}")))
            .args(["--name", &format!("m{i}")])
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-state", "new", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {bin}"))?;
        etcd.children.push(child);
        etcd.endpoints.push(format!("127.0.0.1:{port}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = etcd_client::Client::connect(&etcd.endpoints, None).await
            && c.put("/bench/ready", "1", None).await.is_ok()
        {
            return Ok(etcd);
        }
        anyhow::ensure!(Instant::now() < deadline, "etcd did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(not(feature = "etcd"))]
async fn bench_etcd(_args: &Args, _clients: usize) -> Result<Option<Stats>> {
    eprintln!("etcd comparison skipped: build with `--features etcd` (needs protoc)");
    Ok(None)
}

#[cfg(feature = "etcd")]
async fn bench_etcd(args: &Args, clients: usize) -> Result<Option<Stats>> {
    let etcd = match start_etcd(&args.etcd, args.servers.max(1)).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("etcd comparison skipped: {e:#}");
            return Ok(None);
        }
    };
    let mut conns = Vec::new();
    for c in 0..clients {
        // Spread over the members, as the API benchmark spreads clients over servers.
        let endpoint = etcd.endpoints[c % etcd.endpoints.len()].as_str();
        conns.push(
            etcd_client::Client::connect([endpoint], None)
                .await?
                .kv_client(),
        );
    }
    let conns = Arc::new(conns);
    let value = serde_json::to_vec(&pod("x"))?;
    let s = drive(
        clients,
        args.count,
        Duration::from_secs(args.max_seconds),
        move |c, i| {
            let mut kv = conns[c].clone();
            let value = value.clone();
            async move {
                kv.put(format!("/registry/pods/default/bench-{i}"), value, None)
                    .await?;
                Ok(())
            }
        },
    )
    .await?;
    drop(etcd);
    Ok(Some(s))
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Logs go to stderr; the table goes to stdout.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    println!(
        "pod-sized creates ({} per level, at most {} s per level), {} server(s) / store member(s) / etcd member(s), API clients as {}\n",
        args.count,
        args.max_seconds,
        args.servers.max(1),
        if args.as_user {
            "user bench (RBAC: edit)"
        } else {
            "the admin"
        }
    );
    println!(
        "| clients | API creates/s | API p50 ms | API p99 ms | store writes/s | store p99 ms | etcd puts/s | etcd p99 ms | store/etcd |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (round, &c) in args.clients.iter().enumerate() {
        if args.store_only {
            let store = bench_store(&args, c).await?;
            println!(
                "| {c} | - | - | - | {:.0} | {} | - | - | - |",
                store.rate(),
                ms(store.p99)
            );
            continue;
        }
        let api = bench_api(&args, c, round).await?;
        if args.api_only {
            println!(
                "| {c} | {:.0} | {} | {} | - | - | - | - | - |",
                api.rate(),
                ms(api.p50),
                ms(api.p99)
            );
            continue;
        }
        let store = bench_store(&args, c).await?;
        let etcd = bench_etcd(&args, c).await?;
        let (erate, ep99, ratio) = match &etcd {
            Some(e) => (
                format!("{:.0}", e.rate()),
                ms(e.p99),
                format!("{:.2}x", store.rate() / e.rate()),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        println!(
            "| {c} | {:.0} | {} | {} | {:.0} | {} | {erate} | {ep99} | {ratio} |",
            api.rate(),
            ms(api.p50),
            ms(api.p99),
            store.rate(),
            ms(store.p99),
        );
        let _ = (api.ops, store.ops);
    }
    Ok(())
}
