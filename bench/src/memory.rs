//! The API server's memory with many running pods, as its process holds it: `wasmkube up` with
//! no other component (`--no-wasmlet --no-scheduler --no-controllers --no-dns`) in its own
//! process; this program creates the pods through the API with kube-rs clients, writes each
//! one's status as a wasmlet reports a running pod, keeps watches open as the components would,
//! and reads the server's resident set (`VmRSS`, and its peak `VmHWM`) from `/proc` at each
//! step.
//!
//! ```sh
//! cargo build --release -p wasmkube && cargo run --release -p wasmkube-bench --bin memory
//! ```
//! Extra flags after `--server-args` go to the server (`--server-args=--store-cache-mib=64`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Pods to create.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Concurrent clients creating them.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Watches of all pods kept open (a scheduler, a controller manager, a wasmlet...).
    #[arg(long, default_value_t = 3)]
    watches: usize,
    /// Flags for the server (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Longest wait for the resident set to settle once the writes stop.
    #[arg(long, default_value_t = 15)]
    settle_seconds: u64,
    /// Upper bound on each phase.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

/// Field `field` (`VmRSS`, `RssAnon`...) of `/proc/PID/status`, in MiB.
fn mib(pid: u32, field: &str) -> f64 {
    wasmkube_tests::proc_status_bytes(&pid.to_string(), field) as f64 / 1048576.0
}

/// A pod as a Deployment's template makes it, bound to `node` (about 1.5 KB of JSON once
/// defaulted, before its status).
fn pod(name: &str, node: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "memory", "tier": "backend", "pod-template-hash": "5d8f9c7b6"},
                     "annotations": {"example.com/owner": "bench"}},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "registry.local/bench/app:1.2.3",
            "args": ["--port=8080", "--log-level=info"], "ports": [{"containerPort": 8080, "name": "http"}],
            "env": [{"name": "MODE", "value": "bench"}, {"name": "REGION", "value": "local"}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}}}]}})
}

/// The status a wasmlet writes for a running pod (conditions, IPs, one container running).
fn running(i: usize) -> serde_json::Value {
    let now = jiff::Timestamp::now().to_string();
    let ip = format!("10.244.{}.{}", i / 250, i % 250 + 2);
    let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    json!({"status": {"phase": "Running", "hostIP": "127.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": now, "qosClass": "Burstable",
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"),
                       cond("ContainersReady"), cond("PodScheduled")],
        "containerStatuses": [{"name": "app", "ready": true, "started": true, "restartCount": 0,
            "image": "registry.local/bench/app:1.2.3", "imageID": "sha256:0123456789abcdef",
            "containerID": format!("wasm://{i:016x}"), "state": {"running": {"startedAt": now}}}]}})
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let max = Duration::from_secs(args.max_seconds);
    let dir = tempfile::tempdir()?;
    let mut flags = vec![
        "--no-wasmlet",
        "--no-scheduler",
        "--no-controllers",
        "--no-dns",
    ];
    flags.extend(args.server_args.iter().map(String::as_str));
    let server = wasmkube_tests::Process::up_in(dir.path(), &flags).await?;
    let pid = server.child.id();
    let client = server.client().await?;
    wasmkube_tests::default_service_account(&client, "default").await?;
    // The resident set, its parts (anonymous: heap, stacks, the allocator's free pages; file:
    // the binary's code and data), and its peak.
    let report = |step: &str| {
        let [rss, anon, file, hwm] = ["VmRSS", "RssAnon", "RssFile", "VmHWM"].map(|f| mib(pid, f));
        println!("| {step} | {rss:.0} | {anon:.0} | {file:.0} | {hwm:.0} |");
    };
    println!("server flags: {}", flags.join(" "));
    println!("| step | RSS (MiB) | anonymous | file | peak RSS |");
    println!("|---|---:|---:|---:|---:|");
    report("started");

    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "sim-0"}}))?,
        )
        .await?;
    // Watches open from the start, as the components' are.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let watching: Vec<_> = (0..args.watches)
        .map(|_| {
            let stream = kube::runtime::watcher(pods.clone(), Default::default());
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while stream.next().await.is_some() {}
            })
        })
        .collect();

    let api = pods.clone();
    let created = wasmkube_tests::fan_out(args.pods, args.clients, max, move |i| {
        let api = api.clone();
        async move {
            let name = format!("mem-{i}");
            api.create(
                &PostParams::default(),
                &serde_json::from_value(pod(&name, "sim-0"))?,
            )
            .await?;
            Ok(())
        }
    })
    .await
    .context("creating pods")?;
    anyhow::ensure!(created <= max, "the creates took over {max:?}");
    report(&format!("{} pods created ({created:.1?})", args.pods));

    let api = pods.clone();
    let written = wasmkube_tests::fan_out(args.pods, args.clients, max, move |i| {
        let api = api.clone();
        async move {
            api.patch_status(
                &format!("mem-{i}"),
                &PatchParams::default(),
                &Patch::Merge(&running(i)),
            )
            .await?;
            Ok(())
        }
    })
    .await
    .context("writing status")?;
    anyhow::ensure!(written <= max, "the status writes took over {max:?}");
    report(&format!("every pod Running ({written:.1?})"));

    let listed = pods.list(&ListParams::default()).await?;
    anyhow::ensure!(
        listed.items.len() == args.pods,
        "listed {} pods",
        listed.items.len()
    );
    drop(listed);
    report("after a full list");

    // What it settles at once the writes stop (the store's history window, caches, memory
    // the allocator hands back a second or two after it was freed): read once a second
    // until the readings have stayed within 1 MiB for three seconds, for `settle_seconds`
    // at most.
    let settling = Instant::now();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let mut readings: Vec<f64> = Vec::new();
    loop {
        every.tick().await;
        readings.push(mib(pid, "VmRSS"));
        let last = &readings[readings.len().saturating_sub(4)..];
        let spread = last.iter().copied().fold(f64::MIN, f64::max)
            - last.iter().copied().fold(f64::MAX, f64::min);
        if (last.len() == 4 && spread < 1.0) || settling.elapsed().as_secs() >= args.settle_seconds
        {
            break;
        }
    }
    report(&format!("settled ({:.0?} later)", settling.elapsed()));
    for w in watching {
        w.abort();
    }
    Ok(())
}
