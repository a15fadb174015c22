//! `sched`: scheduling throughput with simulated nodes (Node objects created Ready by the
//! benchmark; no wasmlet), at 100, 1,000 and 5,000 nodes.
//!
//! For each size it reports, so the time can be placed:
//! - *decide*: the scheduling algorithm alone on an in-memory snapshot (filters, scores,
//!   equivalence cache), decisions per second;
//! - *create*: how fast the benchmark can create the pods through the API (64 clients);
//! - *end to end*: pods bound per second, from the first create to the last binding seen by a
//!   watch, with the API server in its own process and the scheduler in this one.
//!
//! Run: `cargo build --release -p wasmkube && cargo run --release -p wasmkube-bench --bin sched`.
//! Everything is on loopback; every loop is bounded in count and time.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wasmkube_sched::algorithm::{EquivalenceCache, Profile};
use wasmkube_sched::framework::{NodeInfo, PodInfo};

#[derive(Parser)]
struct Args {
    /// Cluster sizes.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    nodes: Vec<usize>,
    /// Pods scheduled per size.
    #[arg(long, default_value_t = 5000)]
    pods: usize,
    /// Concurrent creators.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Upper bound on each phase.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
}

fn node_json(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
        "kubernetes.io/hostname": name, "kubernetes.io/os": "wasi", "kubernetes.io/arch": "wasm32",
        "topology.kubernetes.io/zone": format!("zone-{}", name.len() % 3)}}})
}

fn node_status() -> serde_json::Value {
    json!({"status": {
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "10000"},
        "capacity": {"cpu": "64", "memory": "256Gi", "pods": "10000"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})
}

fn pod_json(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "sched-bench"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "bench", "uid": "00000000-0000-0000-0000-000000000001", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "hello:v1",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
}

/// The algorithm alone: `pods` decisions over `nodes` in-memory nodes, placing each.
fn decide(nodes: usize, pods: usize) -> f64 {
    let mut infos: Vec<NodeInfo> = (0..nodes)
        .map(|i| {
            let mut n = node_json(&format!("n{i}"));
            n["status"] = node_status()["status"].clone();
            NodeInfo::new(serde_json::from_value(n).expect("node"))
        })
        .collect();
    let profile = Profile::default_profile();
    let mut cache = EquivalenceCache::default();
    let started = Instant::now();
    for i in 0..pods {
        let mut p = pod_json(&format!("p{i}"));
        p["metadata"]["namespace"] = json!("default");
        let pod = PodInfo::new(serde_json::from_value(p).expect("pod"));
        let refs: Vec<&NodeInfo> = infos.iter().collect();
        let d = profile
            .schedule(&pod, &refs, i % nodes, &mut cache)
            .expect("fits");
        let idx = infos
            .iter()
            .position(|n| n.name() == d.node)
            .expect("chosen node exists");
        infos[idx].add_pod(&pod);
    }
    pods as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let max = Duration::from_secs(args.max_seconds);
    println!("| nodes | decide (pods/s) | create (pods/s) | end to end bound (pods/s) |");
    println!("|---:|---:|---:|---:|");
    for &n in &args.nodes {
        let decide_rate = decide(n, args.pods.min(2000));

        let dir = tempfile::tempdir()?;
        let server = wasmkube_tests::Process::up_in(
            dir.path(),
            &["--no-wasmlet", "--no-scheduler", "--no-controllers"],
        )
        .await?;
        let client = server.client().await?;
        // No controller manager runs: the pods' account is made here.
        wasmkube_tests::default_service_account(&client, "default").await?;
        let nodes: Api<Node> = Api::all(client.clone());
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let api = nodes.clone();
        wasmkube_tests::fan_out(n, args.clients, max, move |i| {
            let api = api.clone();
            async move {
                let name = format!("sim-{i}");
                api.create(
                    &PostParams::default(),
                    &serde_json::from_value(node_json(&name))?,
                )
                .await?;
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&node_status()),
                )
                .await?;
                Ok(())
            }
        })
        .await
        .context("creating nodes")?;

        let shutdown = CancellationToken::new();
        tokio::spawn(wasmkube_sched::run_with_client(
            wasmkube_sched::Config::new(),
            client.clone(),
            shutdown.clone(),
        ));
        // Watch for bindings from before the first create.
        let mut events = watcher::watcher(
            pods.clone(),
            watcher::Config::default().labels("app=sched-bench"),
        )
        .boxed();
        let started = Instant::now();
        let api = pods.clone();
        let create_time = wasmkube_tests::fan_out(args.pods, args.clients, max, move |i| {
            let api = api.clone();
            async move {
                api.create(
                    &PostParams::default(),
                    &serde_json::from_value(pod_json(&format!("p-{i}")))?,
                )
                .await?;
                Ok(())
            }
        })
        .await
        .context("creating pods")?;
        let mut bound: HashSet<String> = HashSet::new();
        while bound.len() < args.pods && started.elapsed() < max {
            let left = max.saturating_sub(started.elapsed());
            let Some(ev) = wasmkube_tests::next_within(&mut events, left).await else {
                break;
            };
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev
                && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
            {
                bound.insert(p.metadata.name.unwrap_or_default());
            }
        }
        let e2e = started.elapsed();
        shutdown.cancel();
        println!(
            "| {n} | {decide_rate:.0} | {:.0} | {:.0} ({} of {} bound in {e2e:.1?}) |",
            args.pods as f64 / create_time.as_secs_f64(),
            bound.len() as f64 / e2e.as_secs_f64(),
            bound.len(),
            args.pods
        );
        let _ = pods
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        drop(server);
    }
    Ok(())
}
