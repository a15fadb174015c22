//! `net`: the pod network's numbers.
//!
//! 1. HTTP: requests/s and p50/p99 latency for the `http-hello` wasi:http sample through the
//!    node's Ingress listener and its NodePort (and straight to the pod, for reference), side by
//!    side with `wasmtime serve` serving the same component when a `wasmtime` binary is found
//!    (`--wasmtime PATH`, `$WASMTIME`, or `PATH`);
//! 2. connections: TCP connections per second from one pod to a Service (round-robin over 3
//!    pods), on the same node and across nodes (through the tunnel), timed inside the guest;
//! 3. DNS: queries per second the cluster DNS answers over UDP.
//!
//! Run: `cargo run --release -p wasmkube-bench --bin net` (see README). Everything is on
//! loopback; every loop is bounded in count and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, LogParams};
use serde_json::json;
use wasmkube_client::create_from_json;
use wasmkube_tests::{Cluster, wait_for};

#[derive(Parser)]
struct Args {
    /// Concurrent keep-alive connections for the HTTP runs.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Requests per HTTP run.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// TCP connections per connection run.
    #[arg(long, default_value_t = 3000)]
    tcp_connections: usize,
    /// DNS clients (each with one query in flight).
    #[arg(long, default_value_t = 32)]
    dns_clients: usize,
    /// Seconds of DNS load.
    #[arg(long, default_value_t = 5)]
    dns_seconds: u64,
    /// The `wasmtime` CLI to compare with (default: $WASMTIME, then PATH).
    #[arg(long)]
    wasmtime: Option<std::path::PathBuf>,
    /// Upper bound on each phase.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
}

fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// One HTTP load run: `conns` keep-alive connections share `total` GETs.
struct HttpRun {
    rate: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

async fn http_load(
    addr: SocketAddr,
    host: &str,
    conns: usize,
    total: usize,
    max: Duration,
) -> Result<HttpRun> {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (next, errors, host) = (Arc::clone(&next), Arc::clone(&errors), host.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            while next.fetch_add(1, Ordering::Relaxed) < total as u64 && started.elapsed() < max {
                let req = http::Request::get("/bench")
                    .header(http::header::HOST, &host)
                    .body(Empty::<bytes::Bytes>::new())?;
                let t = Instant::now();
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        if ok {
                            lat.push(t.elapsed());
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let took = started.elapsed();
    Ok(HttpRun {
        rate: all.len() as f64 / took.as_secs_f64(),
        p50: pct(&mut all, 0.50),
        p99: pct(&mut all, 0.99),
        errors: errors.load(Ordering::Relaxed),
    })
}

fn find_wasmtime(arg: Option<std::path::PathBuf>) -> Option<std::path::PathBuf> {
    arg.or_else(|| std::env::var_os("WASMTIME").map(Into::into))
        .or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("wasmtime"))
                    .find(|f| f.is_file())
            })
        })
}

/// `wasmtime serve` on a free loopback port, serving `wasm`.
async fn wasmtime_serve(
    bin: &std::path::Path,
    wasm: &[u8],
) -> Result<(tokio::process::Child, SocketAddr, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("http-hello.wasm");
    std::fs::write(&file, wasm)?;
    let addr: SocketAddr = format!("127.0.0.1:{}", wasmkube_tests::free_port()).parse()?;
    let child = tokio::process::Command::new(bin)
        .arg("serve")
        // The component imports wasi:cli (environment, stdio), which `serve` adds with -S cli.
        .args(["-S", "cli"])
        .arg("--addr")
        .arg(addr.to_string())
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting wasmtime serve")?;
    wait_for(
        "wasmtime serve to listen",
        Duration::from_secs(60),
        || async { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
    )
    .await?;
    Ok((child, addr, dir))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WASMKUBE_LOG")
                .unwrap_or_else(|_| "off".into()),
        )
        .init();
    let args = Args::parse();
    let max = Duration::from_secs(args.max_seconds);
    let cluster = Cluster::start_with_control_plane().await?;
    let (dns, _dns) = cluster.start_dns().await?;
    let n1 = cluster
        .start_node_with("n1", |c| {
            c.cluster_dns = Some(dns);
            c.ingress_listen = Some(SocketAddr::new(c.listen.ip(), 0));
            c.max_pods = 200;
        })
        .await?;
    let n2 = cluster
        .start_node_with("n2", |c| {
            c.cluster_dns = Some(dns);
            c.max_pods = 200;
        })
        .await?;
    let client = cluster.client.clone();
    let hello = cluster.push_sample("http-hello").await?;
    let toolbox = cluster.push_sample("toolbox").await?;

    // ---- 1. HTTP ------------------------------------------------------------------------------
    create_from_json::<Pod>(&client, "default", json!({"metadata": {"name": "hello", "labels": {"app": "hello"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "http", "image": hello, "ports": [{"containerPort": 8080}]}]}})).await?;
    create_from_json::<Service>(
        &client,
        "default",
        json!({"metadata": {"name": "hello"}, "spec": {"type": "NodePort",
        "selector": {"app": "hello"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
    )
    .await?;
    create_from_json::<Ingress>(&client, "default", json!({"metadata": {"name": "hello"}, "spec": {"rules": [{"http": {"paths": [
        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "hello", "port": {"number": 80}}}}]}}]}})).await?;
    wasmkube_tests::wait_ready_endpoints(&client, "hello", 1).await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod_ip: std::net::Ipv4Addr = pods
        .get("hello")
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .context("pod IP")?
        .parse()?;
    let direct = n1.backing(&client, pod_ip, 8080).await?;
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let node_port = svcs
        .get("hello")
        .await?
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p[0].node_port)
        .context("nodePort")?;
    let node_port = SocketAddr::new(n1.address.into(), u16::try_from(node_port)?);
    let ingress = wasmkube_tests::wait_ingress_address(&client, "hello").await?;
    let mut rows = Vec::new();
    // Warm up each path (compiled code, pooled upstream connections), then measure.
    for (name, addr) in [
        ("pod (direct)", direct),
        ("NodePort", node_port),
        ("Ingress", ingress),
    ] {
        http_load(addr, "bench", args.connections, 500, max).await?;
        rows.push((
            name.to_owned(),
            http_load(addr, "bench", args.connections, args.requests, max).await?,
        ));
    }
    let wasmtime = find_wasmtime(args.wasmtime.clone());
    let mut wasmtime_rate = None;
    if let Some(bin) = &wasmtime {
        let wasm = wasmkube_samples::guest("http-hello").context("sample")?;
        let (_child, addr, _dir) = wasmtime_serve(bin, wasm).await?;
        http_load(addr, "bench", args.connections, 500, max).await?;
        let run = http_load(addr, "bench", args.connections, args.requests, max).await?;
        wasmtime_rate = Some(run.rate);
        rows.push(("`wasmtime serve` (same component)".to_owned(), run));
    }
    println!(
        "\nHTTP: http-hello, {} keep-alive connections, {} requests each run",
        args.connections, args.requests
    );
    println!("| path | req/s | p50 ms | p99 ms | errors | vs wasmtime serve |");
    println!("|---|---|---|---|---|---|");
    for (name, r) in &rows {
        let vs = wasmtime_rate.map_or("n/a".to_owned(), |w| format!("{:.2}x", r.rate / w));
        println!(
            "| {name} | {:.0} | {} | {} | {} | {vs} |",
            r.rate,
            ms(r.p50),
            ms(r.p99),
            r.errors
        );
    }
    if wasmtime.is_none() {
        println!(
            "(wasmtime CLI not found: `cargo install wasmtime-cli@48.0.8 --locked` and pass --wasmtime or put it on PATH)"
        );
    }

    // ---- 2. connections pod -> Service -> pod ---------------------------------------------------
    for i in 0..3 {
        create_from_json::<Pod>(&client, "default", json!({"metadata": {"name": format!("echo-{i}"), "labels": {"app": "echo"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": toolbox, "args": ["serve", "9000"]}]}})).await?;
    }
    create_from_json::<Service>(
        &client,
        "default",
        json!({"metadata": {"name": "echo"}, "spec": {
        "selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 9000}]}}),
    )
    .await?;
    wasmkube_tests::wait_ready_endpoints(&client, "echo", 3).await?;
    println!(
        "\nConnections: toolbox connect-n -> Service echo (3 pods, round robin), timed in the guest"
    );
    println!("| client on | connections | conn/s | mean ms per connection |");
    println!("|---|---|---|---|");
    for (node, label) in [("n1", "same node"), ("n2", "other node (tunnel)")] {
        let name = format!("client-{node}");
        create_from_json::<Pod>(
            &client,
            "default",
            json!({"metadata": {"name": name}, "spec": {"nodeName": node, "restartPolicy": "Never",
            "containers": [{"name": "main", "image": toolbox,
                "args": ["connect-n", args.tcp_connections.to_string(), "echo:80", "quiet"]}]}}),
        )
        .await?;
        wait_for(&format!("{name} to finish"), max, || async {
            let p = pods.get_opt(&name).await.ok().flatten()?;
            matches!(p.status?.phase.as_deref(), Some("Succeeded" | "Failed")).then_some(())
        })
        .await?;
        let log = pods.logs(&name, &LogParams::default()).await?;
        let micros: f64 = log
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "connect-n: {} connections in ",
                    args.tcp_connections
                ))
            })
            .and_then(|r| r.strip_suffix(" us"))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("client log: {log}"))?;
        let n = args.tcp_connections as f64;
        println!(
            "| {label} | {} | {:.0} | {:.3} |",
            args.tcp_connections,
            n / (micros / 1e6),
            micros / 1000.0 / n
        );
    }

    // ---- 3. DNS queries/s ------------------------------------------------------------------------
    for i in 0..50 {
        create_from_json::<Service>(
            &client,
            "default",
            json!({"metadata": {"name": format!("svc-{i}")}, "spec": {
            "selector": {"app": "none"}, "ports": [{"port": 80}]}}),
        )
        .await?;
    }
    let name = "svc-49.default.svc.cluster.local.";
    wait_for(
        "the DNS to know the services",
        Duration::from_secs(30),
        || async { query(dns, name).await.ok().filter(|answers| *answers > 0) },
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..args.dns_clients {
        let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
        clients.push(tokio::spawn(async move {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            sock.connect(dns).await?;
            let mut buf = vec![0u8; 1500];
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let q = message(
                    &format!("svc-{}.default.svc.cluster.local.", i % 50),
                    u16::try_from(i % 65536).unwrap_or(0),
                )?;
                i += 7;
                sock.send(&q).await?;
                match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
                    Ok(Ok(_)) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => continue,
                }
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.dns_seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let took = started.elapsed();
    for t in clients {
        t.await??;
    }
    println!(
        "\nDNS: {} UDP clients, one query in flight each, {:.1} s: {:.0} queries/s answered",
        args.dns_clients,
        took.as_secs_f64(),
        answered.load(Ordering::Relaxed) as f64 / took.as_secs_f64()
    );

    n1.stop().await?;
    n2.stop().await?;
    cluster.stop().await
}

fn message(name: &str, id: u16) -> Result<Vec<u8>> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    Ok(m.to_vec()?)
}

/// One A query; returns the number of answers.
async fn query(server: SocketAddr, name: &str) -> Result<usize> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    sock.connect(server).await?;
    sock.send(&message(name, 1)?).await?;
    let mut buf = vec![0u8; 1500];
    let n = tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await??;
    let m = hickory_proto::op::Message::from_vec(&buf[..n])?;
    Ok(m.answers.len())
}
