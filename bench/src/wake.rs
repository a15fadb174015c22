//! `wake`: scale from zero as a client sees it. `wasmkube up` runs in its own process with the
//! `http-hello` function behind a Service, a NodePort and an Ingress, and an autoscaler that
//! takes it to zero pods when idle (`minReplicas: 0`, `http_requests_in_flight` of the
//! Service). Each round waits until the function is at zero (no pod, no endpoint), then times
//! one request — from the client's connect to the last byte of the response — through the
//! Ingress or the NodePort (alternating), and reads the node's own `X-Wasmkube-Cold-Start`.
//! The image is compiled on the node by a first, uncounted wake.
//!
//! Run: `cargo run --release -p wasmkube-bench --bin wake` (see README). Everything is on
//! loopback; the run is bounded by `--wakes` and `--max-seconds`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmkube_client::create_from_json;
use wasmkube_tests::wait_for;

#[derive(Parser)]
struct Args {
    /// Wakes per path (Ingress, NodePort).
    #[arg(long, default_value_t = 100)]
    wakes: usize,
    /// Upper bound on the whole run.
    #[arg(long, default_value_t = 1500)]
    max_seconds: u64,
    /// Clients of the load step (each with one 1 s request in flight), after the wakes.
    #[arg(long, default_value_t = 4)]
    step: usize,
}

/// One timed request: the client's time to the whole response, and the node's cold start.
async fn request(addr: SocketAddr, host: &str, path: &str) -> Result<(Duration, Option<f64>)> {
    let started = Instant::now();
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.set_nodelay(true)?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp).await?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&resp);
    ensure!(text.starts_with("HTTP/1.1 200"), "answered: {text}");
    let cold = text.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-wasmkube-cold-start")
            .then(|| v.trim().parse().ok())
            .flatten()
    });
    Ok((took, cold))
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

async fn wait_at_zero(deploys: &Api<Deployment>, slices: &Api<EndpointSlice>) -> Result<()> {
    wait_for("the function at zero", Duration::from_secs(120), || async {
        let d = deploys.get("fn").await.ok()?;
        if d.spec.as_ref()?.replicas != Some(0) || d.status.as_ref()?.replicas.unwrap_or(0) != 0 {
            return None;
        }
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=fn"))
            .await
            .ok()?;
        list.items
            .iter()
            .all(|s| s.endpoints.is_empty())
            .then_some(())
    })
    .await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let dir = tempfile::tempdir()?;
    let keep = std::env::var_os("WAKE_VERBOSE").is_some();
    let ingress_port = wasmkube_tests::free_port();
    let node_port: u16 = 30000 + (wasmkube_tests::free_port() % 2000);
    let ingress_flag = format!("127.0.0.1:{ingress_port}");
    let server = wasmkube_tests::Process::up_in_logging(
        dir.path(),
        &[
            "--ingress-listen",
            &ingress_flag,
            "--horizontal-pod-autoscaler-sync-period",
            "1",
        ],
        &std::env::var("WAKE_LOG").unwrap_or_else(|_| "info".into()),
    )
    .await?;
    wasmkube_tests::push_samples(&server.kubeconfig(), dir.path(), &["http-hello"])?;
    let client = server.client().await?;
    create_from_json::<Deployment>(
        &client,
        "default",
        json!({
        "metadata": {"name": "fn"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "fn"}},
            "template": {"metadata": {"labels": {"app": "fn"}},
                "spec": {"automountServiceAccountToken": false,
                    "containers": [{"name": "fn", "image": "http-hello:v1",
                    "ports": [{"containerPort": 8080}]}]}}}}),
    )
    .await
    .context("the Deployment")?;
    create_from_json::<k8s_openapi::api::core::v1::Service>(
        &client,
        "default",
        json!({
        "metadata": {"name": "fn"},
        "spec": {"type": "NodePort", "selector": {"app": "fn"},
            "ports": [{"port": 80, "targetPort": 8080, "nodePort": node_port}]}}),
    )
    .await
    .context("the Service")?;
    create_from_json::<k8s_openapi::api::networking::v1::Ingress>(&client, "default", json!({
        "metadata": {"name": "fn"},
        "spec": {"ingressClassName": "wasmkube", "rules": [{"host": "fn.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "fn", "port": {"number": 80}}}}]}}]}}))
    .await
    .context("the Ingress")?;
    create_from_json::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>(
        &client,
        "default",
        json!({
        "metadata": {"name": "fn"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fn"},
            "minReplicas": 0, "maxReplicas": 8,
            "metrics": [{"type": "Object", "object": {
                "describedObject": {"apiVersion": "v1", "kind": "Service", "name": "fn"},
                "metric": {"name": "http_requests_in_flight"},
                "target": {"type": "AverageValue", "averageValue": "1"}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}}),
    )
    .await
    .context("the HorizontalPodAutoscaler")?;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let ingress: SocketAddr = ingress_flag.parse()?;
    let node: SocketAddr = SocketAddr::from(([127, 0, 0, 1], node_port));
    // Warm-up: the first wake compiles the image on the node.
    wait_at_zero(&deploys, &slices).await?;
    request(ingress, "fn.example", "/")
        .await
        .context("the warm-up wake")?;

    let mut results: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("Ingress", Vec::new(), Vec::new()),
        ("NodePort", Vec::new(), Vec::new()),
    ];
    // From a wake's response to the function being at zero again (sync period 1 s, no
    // stabilization window: what remains is the controllers, the pod's stop and the slices).
    let mut idle_to_zero = Vec::new();
    let mut responded = Instant::now();
    'rounds: for round in 0..args.wakes * 2 {
        if Instant::now() > deadline {
            eprintln!("stopped at the time bound after {round} wakes");
            break 'rounds;
        }
        wait_at_zero(&deploys, &slices).await?;
        if round > 0 {
            idle_to_zero.push(responded.elapsed().as_secs_f64() * 1000.0);
        }
        let (addr, host, slot) = if round % 2 == 0 {
            (ingress, "fn.example", 0)
        } else {
            (node, "fn", 1)
        };
        let (took, cold) = request(addr, host, "/").await?;
        responded = Instant::now();
        if std::env::var_os("WAKE_VERBOSE").is_some() {
            eprintln!(
                "{} {} {:.1} ms (node: {cold:?})",
                jiff::Timestamp::now(),
                results[slot].0,
                took.as_secs_f64() * 1000.0
            );
        }
        results[slot].1.push(took.as_secs_f64() * 1000.0);
        if let Some(c) = cold {
            results[slot].2.push(c);
        }
    }
    // A load step from zero: `step` clients, each with one 1 s request in flight at a time,
    // until as many replicas are Ready; then the load stops and the function goes back to zero.
    wait_at_zero(&deploys, &slices).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<tokio::task::JoinHandle<Result<()>>> = (0..args.step)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let bound = Instant::now() + Duration::from_secs(120);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < bound {
                    request(ingress, "fn.example", "/?sleep=1000").await?;
                }
                Ok(())
            })
        })
        .collect();
    let want = i32::try_from(args.step)?;
    let ready_after = wait_for(
        "the load step's replicas Ready",
        Duration::from_secs(120),
        || async {
            let d = deploys.get("fn").await.ok()?;
            (d.status.as_ref()?.ready_replicas.unwrap_or(0) >= want).then(|| started.elapsed())
        },
    )
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await?.context("a load-step client")?;
    }
    let quiet = Instant::now();
    wait_at_zero(&deploys, &slices).await?;
    let back = quiet.elapsed();
    println!(
        "load step 0 → {} clients (1 s requests in flight, target 1 per replica): {} replicas Ready after {:.0} ms; load stopped → zero after {:.0} ms",
        args.step,
        args.step,
        ready_after.as_secs_f64() * 1000.0,
        back.as_secs_f64() * 1000.0
    );
    if keep {
        let _ = std::fs::copy(server.log_path(), "/tmp/wake-server.log");
    }
    println!(
        "idle → zero (autoscaler sync 1 s, no stabilization window): p50 {:.0} ms, p99 {:.0} ms over {} rounds",
        pct(&mut idle_to_zero, 0.5),
        pct(&mut idle_to_zero, 0.99),
        idle_to_zero.len()
    );
    println!(
        "| path | wakes | client: first request at zero → response, p50 / p99 ms | node: held until an endpoint was ready, p50 / p99 ms |"
    );
    println!("|---|---|---|---|");
    for (path, mut client_ms, mut held_ms) in results {
        let n = client_ms.len();
        let held = if held_ms.is_empty() {
            "—".to_owned()
        } else {
            format!(
                "{:.1} / {:.1}",
                pct(&mut held_ms, 0.5),
                pct(&mut held_ms, 0.99)
            )
        };
        println!(
            "| {path} | {n} | {:.1} / {:.1} | {held} |",
            pct(&mut client_ms, 0.5),
            pct(&mut client_ms, 0.99)
        );
    }
    Ok(())
}
