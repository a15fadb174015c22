//! `reads`: list throughput as clients see it, with one API server and with three servers of
//! one raft group (`wasmkube up` processes, API and store only), clients spread over the
//! servers. Each client lists the same 1,000 pod-sized objects (500 per page), either the
//! latest state (`resourceVersion` unset: a read-index round trip on a group) or any state
//! (`resourceVersion=0`).
//!
//! Run: `cargo run --release -p wasmkube-bench --bin reads` (see README).
//! Everything listens on loopback; every load loop is bounded in count and time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use wasmkube_tests::{API_ONLY, Process, client_for};

#[derive(Parser)]
struct Args {
    /// Objects listed.
    #[arg(long, default_value_t = 1000)]
    objects: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Lists per measurement.
    #[arg(long, default_value_t = 400)]
    lists: usize,
    /// Upper bound on each measurement's duration.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
}

/// Lists per second and the p50/p99 latency of `args.lists` lists by `args.clients` clients.
async fn measure(
    args: &Args,
    apis: &[Api<ConfigMap>],
    params: ListParams,
) -> Result<(f64, Duration, Duration)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (api, next, params) = (apis[c % apis.len()].clone(), next.clone(), params.clone());
        let total = args.lists;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total
                && Instant::now() < deadline
            {
                let t = Instant::now();
                let mut page = params.clone();
                loop {
                    let list = api.list(&page).await?;
                    match list.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(c) => page = page.continue_token(&c),
                        None => break,
                    }
                }
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed();
    all.sort();
    let pick = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Ok((
        all.len() as f64 / elapsed.as_secs_f64(),
        pick(0.5),
        pick(0.99),
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    println!(
        "{} clients listing {} pod-sized objects (500 per page), {} lists per row\n",
        args.clients, args.objects, args.lists
    );
    println!("| servers | read | lists/s | p50 ms | p99 ms |");
    println!("|---:|---|---:|---:|---:|");
    for servers in [1, 3] {
        let dir = tempfile::tempdir()?;
        let group = if servers == 1 {
            vec![Process::up_in(dir.path(), API_ONLY).await?]
        } else {
            Process::group(dir.path(), servers, API_ONLY).await?
        };
        let mut apis = Vec::new();
        for p in &group {
            apis.push(Api::<ConfigMap>::default_namespaced(
                client_for(&p.kubeconfig()).await?,
            ));
        }
        // The objects: ConfigMaps about the size of a pod (1.5 KB of data).
        let filler = "x".repeat(1500);
        for i in 0..args.objects {
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": format!("obj-{i}")}, "data": {"d": filler}}),
            )?;
            apis[i % apis.len()]
                .create(&PostParams::default(), &cm)
                .await?;
        }
        for (what, params) in [
            ("latest (rv unset)", ListParams::default().limit(500)),
            ("any (rv=0)", ListParams::default().limit(500).match_any()),
        ] {
            let (rate, p50, p99) = measure(&args, &apis, params).await?;
            println!(
                "| {servers} | {what} | {rate:.0} | {:.1} | {:.1} |",
                p50.as_secs_f64() * 1000.0,
                p99.as_secs_f64() * 1000.0
            );
        }
    }
    Ok(())
}
