//! `pods`: the wasmlet's numbers.
//!
//! 1. create→Running latency of a pod whose image is already compiled (p50/p99), measured the
//!    way a user sees it: from the create call returning to the watch showing `Running`;
//! 2. wasi:http per-request cost: store + instantiate alone, and whole requests over loopback;
//! 3. density: how many idle long-running pods one wasmlet holds, and its memory per pod.
//!
//! Run: `cargo run --release -p wasmkube-bench --bin pods` (see README). Everything is on
//! loopback (pod IPs are 127.x addresses); every loop is bounded in count and time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wasmkube_wasmlet::logs::{LogFile, Rotation};
use wasmkube_wasmlet::runtime::instance::{Launch, serve_http};
use wasmkube_wasmlet::runtime::{Prepared, Runtime, RuntimeConfig};

#[derive(Parser)]
struct Args {
    /// Pods for the create→Running latency run (one at a time).
    #[arg(long, default_value_t = 200)]
    latency_pods: usize,
    /// wasi:http requests.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Idle pods for the density run (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    density_pods: usize,
    /// Concurrent creates during the density run.
    #[arg(long, default_value_t = 32)]
    density_clients: usize,
    /// Upper bound on each phase.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

fn pct(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn idle_pod(name: &str, node: &str, image: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench"}},
        // No service-account token volume (as `podstart`): each mounted volume holds an open
        // directory per instance, and 10,000 pods with one, plus their log files, exceed a
        // 20,000 open-files limit.
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "idle", "image": image, "args": ["forever"]}]}
    }))?)
}

fn is_running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Times create→Running for `n` pods, one at a time, with a watch observing the status.
async fn latency(
    pods: &Api<Pod>,
    node: &str,
    image: &str,
    prefix: &str,
    n: usize,
    max: Duration,
) -> Result<Vec<Duration>> {
    let mut events = watcher::watcher(
        pods.clone(),
        watcher::Config::default().labels("bench=latency"),
    )
    .boxed();
    let mut out = Vec::with_capacity(n);
    let deadline = Instant::now() + max;
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        let mut pod = idle_pod(&name, node, image)?;
        pod.metadata.labels = Some([("bench".to_owned(), "latency".to_owned())].into());
        pods.create(&PostParams::default(), &pod).await?;
        let created = Instant::now();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let ev = tokio::time::timeout(remaining, events.try_next())
                .await
                .context("latency run timed out")??;
            if let Some(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev
                && p.metadata.name.as_deref() == Some(&name)
                && is_running(&p)
            {
                out.push(created.elapsed());
                break;
            }
        }
    }
    Ok(out)
}

/// Store + instantiate of the wasi:http sample, and whole requests over one keep-alive connection.
async fn http(requests: usize, max: Duration) -> Result<(Vec<Duration>, Vec<Duration>, f64)> {
    let dir = tempfile::tempdir()?;
    let rt = Runtime::new(&RuntimeConfig {
        cache_dir: dir.path().join("c"),
        max_instances: 64,
        max_memory_bytes: 64 << 20,
    })
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let wasm = wasmkube_samples::guest("http-hello").context("sample")?;
    let Prepared::Http(pre) = rt.prepare("http", || Ok(wasm.to_vec())).await? else {
        anyhow::bail!("not a proxy")
    };

    // Instantiation alone.
    let mut inst = Vec::new();
    let log = LogFile::new(&dir.path().join("log"), 0, Rotation::default());
    let launch = Arc::new(Launch {
        argv: vec!["http".into()],
        ..Launch::default()
    });
    for _ in 0..requests.min(2000) {
        let t = Instant::now();
        wasmkube_wasmlet::runtime::instance::instantiate_proxy(&pre, &launch, &log).await?;
        inst.push(t.elapsed());
    }

    // Whole requests through the wasmlet's server, over loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve_http(
        pre,
        launch,
        log,
        listener,
        stop.clone(),
        Duration::from_secs(1),
    ));
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut reqs = Vec::with_capacity(requests);
    let started = Instant::now();
    for _ in 0..requests {
        if started.elapsed() > max {
            break;
        }
        send.ready().await?;
        let t = Instant::now();
        let req = http::Request::get("/bench")
            .header("host", "bench")
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let resp = send.send_request(req).await?;
        anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
        http_body_util::BodyExt::collect(resp.into_body()).await?;
        reqs.push(t.elapsed());
    }
    let rps = reqs.len() as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = server.await;
    Ok((inst, reqs, rps))
}

/// Creates `n` idle pods with `clients` concurrent creators and waits for all to run.
async fn density(
    pods: &Api<Pod>,
    node: &str,
    image: &str,
    n: usize,
    clients: usize,
    max: Duration,
) -> Result<(usize, Duration)> {
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..clients.max(1) {
        let (pods, next, node, image) = (
            pods.clone(),
            Arc::clone(&next),
            node.to_owned(),
            image.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n || started.elapsed() > max {
                    return anyhow::Ok(());
                }
                pods.create(
                    &PostParams::default(),
                    &idle_pod(&format!("idle-{i}"), &node, &image)?,
                )
                .await?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    // Count Running pods from a watch until all are up (or time runs out).
    let mut running: HashMap<String, bool> = HashMap::new();
    let mut events =
        watcher::watcher(pods.clone(), watcher::Config::default().labels("app=bench")).boxed();
    while running.values().filter(|r| **r).count() < n && started.elapsed() < max {
        let left = max.saturating_sub(started.elapsed());
        let Some(ev) = wasmkube_tests::next_within(&mut events, left).await else {
            break;
        };
        if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev
            && let Some(name) = p.metadata.name.clone()
            && name.starts_with("idle-")
        {
            running.insert(name, is_running(&p));
        }
    }
    let up = running.values().filter(|r| **r).count();
    let took = started.elapsed();
    if up < n {
        // Say what the others are doing, grouped: phase, node, container state.
        let mut stuck: HashMap<String, usize> = HashMap::new();
        for p in pods
            .list(&ListParams::default().labels("app=bench"))
            .await?
            .items
            .iter()
            .filter(|p| !is_running(p))
        {
            let status = p.status.clone().unwrap_or_default();
            let state = status
                .container_statuses
                .iter()
                .flatten()
                .map(|c| format!("{:?}", c.state))
                .collect::<Vec<_>>()
                .join(";");
            let key = format!(
                "phase={:?} node={:?} conditions={:?} state={state}",
                status.phase,
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                status
                    .conditions
                    .iter()
                    .flatten()
                    .map(|c| format!("{}={}", c.type_, c.status))
                    .collect::<Vec<_>>()
            );
            *stuck.entry(key).or_default() += 1;
        }
        for (what, count) in stuck {
            eprintln!("not Running: {count} × {what}");
        }
    }
    Ok((up, took))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let max = Duration::from_secs(args.max_seconds);

    let (inst, reqs, rps) = http(args.requests, max)
        .await
        .context("the wasi:http run")?;
    println!(
        "wasi:http  store+instantiate p50 {:?} p99 {:?} ({} samples)",
        pct(inst.clone(), 0.5),
        pct(inst, 0.99),
        args.requests.min(2000)
    );
    println!(
        "wasi:http  request (1 keep-alive connection) p50 {:?} p99 {:?}, {rps:.0} req/s",
        pct(reqs.clone(), 0.5),
        pct(reqs, 0.99)
    );

    // The API server runs as its own process (`wasmkube up --no-wasmlet`), so this process's
    // memory is the wasmlet's (plus the benchmark's client).
    let dir = tempfile::tempdir()?;
    // One node with a /16 pod range, so every pod of the density run gets a pod IP.
    let server = wasmkube_tests::Process::up_in(
        dir.path(),
        &["--no-wasmlet", "--node-cidr-mask-size", "16"],
    )
    .await?;
    let client = server.client().await?;
    let max_pods = u32::try_from(args.density_pods.max(args.latency_pods) + 64)?;
    let node = wasmkube_tests::Node::start(&server.kubeconfig(), &client, "bench", |c| {
        c.max_pods = max_pods;
        c.pod_range = (
            std::net::Ipv4Addr::new(127, c.pod_range.0.octets()[1], 0, 0),
            16,
        );
    })
    .await?;
    let cluster = Pusher {
        kubeconfig: server.kubeconfig(),
    };
    let image = cluster.push_sample("toolbox").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Warm up: the first pod pulls and compiles the image; every later one starts from the cache.
    latency(&pods, &node.name, &image, "warm", 1, max).await?;
    let lat = latency(&pods, &node.name, &image, "lat", args.latency_pods, max).await?;
    println!(
        "pod create→Running (cached image, 1 at a time) p50 {:?} p99 {:?} ({} pods)",
        pct(lat.clone(), 0.5),
        pct(lat.clone(), 0.99),
        lat.len()
    );

    if args.density_pods > 0 {
        let before = wasmkube_tests::proc_status_bytes("self", "VmRSS");
        let (up, took) = density(
            &pods,
            &node.name,
            &image,
            args.density_pods,
            args.density_clients,
            max,
        )
        .await?;
        let after = wasmkube_tests::proc_status_bytes("self", "VmRSS");
        let apiserver = wasmkube_tests::proc_status_bytes(&server.child.id().to_string(), "VmRSS");
        println!(
            "density: {up}/{} idle pods Running in {took:.1?}; wasmlet RSS {:.0} MiB → {:.0} MiB = {:.1} KiB per pod; API server process RSS {:.0} MiB",
            args.density_pods,
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            after.saturating_sub(before) as f64 / 1024.0 / up.max(1) as f64,
            apiserver as f64 / 1048576.0
        );
    }
    node.stop().await?;
    drop(server);
    Ok(())
}

/// Pushes sample images to the cluster registry of a kubeconfig.
struct Pusher {
    kubeconfig: std::path::PathBuf,
}

impl Pusher {
    async fn push_sample(&self, sample: &str) -> Result<String> {
        let config =
            wasmkube_client::load(&wasmkube_client::Source::kubeconfig(&self.kubeconfig)).await?;
        let registries = wasmkube_wasmlet::registries_for(&config, Vec::new());
        let image = format!("{sample}:v1");
        let wasm = wasmkube_samples::guest(sample).context("sample")?;
        wasmkube_wasmlet::images::push(&registries, &image, wasm.to_vec()).await?;
        Ok(image)
    }
}
