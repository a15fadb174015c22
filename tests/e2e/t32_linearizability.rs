//! Linearizability under faults: three API servers of one raft group (in this process, each
//! with its real HTTPS API and raft transport), three kube-rs clients — one per server —
//! running random creates, gets and updates with a resourceVersion on a few ConfigMaps, while
//! a fault schedule cuts servers off from each other through the transport's fault layer
//! (the leader, or any server) and heals them. Each schedule's recorded history is checked
//! by `wasmkube_tests::lincheck`; a failing schedule prints its seed.
//!
//! `LINCHECK_SCHEDULES=N` runs N schedules (default 100; the long mode is 1,000 or more);
//! `LINCHECK_SEED=S` replays schedule S alone.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use wasmkube_tests::lincheck::{Input, Op, Output, violations};
use wasmkube_tests::{Cluster, client_without_retries, free_port, wait_for};

/// Most operations a client runs per schedule (it stops earlier when the faults are over).
const MAX_OPS_PER_CLIENT: usize = 40;

struct Servers {
    clusters: Vec<Cluster>,
    peers: Vec<String>,
    clients: Vec<kube::Client>,
}

impl Servers {
    async fn start() -> Result<Servers> {
        let mut clusters: Vec<Cluster> = Vec::new();
        let mut peers = Vec::new();
        for i in 0..3 {
            let peer = format!("127.0.0.1:{}", free_port());
            let join = match clusters.first() {
                Some(first) => Some(wasmkube_apiserver::cluster::Join {
                    server: format!("https://{}", first.addr),
                    token: std::fs::read_to_string(first.dir.path().join("join-token"))?.parse()?,
                }),
                None => None,
            };
            let peer_addr = peer.parse()?;
            clusters.push(
                Cluster::start_with(move |c| {
                    c.peer_listen = Some(peer_addr);
                    c.join = join;
                    // A server cut off from the majority answers within a second.
                    c.write_timeout = Duration::from_secs(1);
                })
                .await?,
            );
            peers.push(peer);
            tracing::info!(server = i, "started");
        }
        let mut clients = Vec::new();
        for c in &clusters {
            clients.push(client_without_retries(&c.kubeconfig).await?);
        }
        Ok(Servers {
            clusters,
            peers,
            clients,
        })
    }

    /// Cuts server `k` off from the others, both ways.
    fn isolate(&self, k: usize) {
        let others = (0..3).filter(|j| *j != k);
        self.clusters[k]
            .peer_network()
            .cut(others.clone().map(|j| self.peers[j].clone()));
        for j in others {
            self.clusters[j].peer_network().cut([self.peers[k].clone()]);
        }
    }

    fn heal(&self) {
        for c in &self.clusters {
            c.peer_network().heal();
        }
    }

    /// Waits until every server takes a write again.
    async fn recovered(&self, probe: &str) -> Result<()> {
        for (i, client) in self.clients.iter().enumerate() {
            let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
            let name = format!("{probe}-{i}");
            wait_for(
                "a write through every server",
                Duration::from_secs(20),
                || {
                    let (cms, name) = (cms.clone(), name.clone());
                    async move {
                        let cm: ConfigMap =
                            serde_json::from_value(json!({"metadata": {"name": name}})).ok()?;
                        match cms.create(&PostParams::default(), &cm).await {
                            Ok(_) => Some(()),
                            Err(kube::Error::Api(s)) if s.code == 409 => Some(()),
                            Err(_) => None,
                        }
                    }
                },
            )
            .await?;
        }
        Ok(())
    }
}

fn value(cm: &ConfigMap) -> String {
    cm.data
        .as_ref()
        .and_then(|d| d.get("v").cloned())
        .unwrap_or_default()
}

fn rv(cm: &ConfigMap) -> u64 {
    cm.resource_version()
        .and_then(|r| r.parse().ok())
        .unwrap_or_default()
}

/// One call's answer as the model sees it.
fn output(result: Result<ConfigMap, kube::Error>, write: bool) -> Output {
    match result {
        Ok(cm) if write => Output::Written(rv(&cm)),
        Ok(cm) => Output::Read(value(&cm), rv(&cm)),
        Err(kube::Error::Api(s)) if s.code == 404 => Output::NotFound,
        Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
            Output::AlreadyExists
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Output::Conflict,
        // 5xx, timeouts, broken connections: it may or may not have happened.
        Err(_) => Output::Unknown,
    }
}

/// One client's operations on `keys`, recorded into `history`.
async fn client_ops(
    client: kube::Client,
    id: usize,
    keys: Vec<String>,
    seed: u64,
    history: Arc<Mutex<Vec<Op>>>,
    faults_over: tokio_util::sync::CancellationToken,
) {
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut known: Vec<Option<u64>> = vec![None; keys.len()];
    for n in 0..MAX_OPS_PER_CLIENT {
        if faults_over.is_cancelled() && n >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
        let k = rng.random_range(0..keys.len());
        let key = keys[k].clone();
        let v = format!("c{id}-{n}");
        let roll = rng.random_range(0..10);
        let call = Instant::now();
        let (input, out) = if roll < 3 {
            let cm: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": key}, "data": {"v": v}}))
                    .expect("a ConfigMap");
            let r = cms.create(&PostParams::default(), &cm).await;
            if let Ok(cm) = &r {
                known[k] = Some(rv(cm));
            }
            (Input::Create(v), output(r, true))
        } else if roll < 6
            && let Some(expect) = known[k]
        {
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": key, "resourceVersion": expect.to_string()},
                "data": {"v": v}}))
            .expect("a ConfigMap");
            let r = cms.replace(&key, &PostParams::default(), &cm).await;
            known[k] = r.as_ref().ok().map(rv).or(None);
            (Input::Update { value: v, expect }, output(r, true))
        } else {
            let r = cms.get(&key).await;
            known[k] = r.as_ref().ok().map(rv).or(known[k]);
            (Input::Get, output(r, false))
        };
        history.lock().expect("history").push(Op {
            key,
            input,
            output: out,
            call,
            ret: Instant::now(),
        });
    }
}

/// Runs schedule `seed`; the keys that are not linearizable, and the history.
async fn schedule(servers: &Servers, seed: u64) -> Result<(Vec<String>, Vec<Op>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let keys: Vec<String> = (0..2).map(|k| format!("lin-{seed}-{k}")).collect();
    let history = Arc::new(Mutex::new(Vec::new()));
    let faults_over = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for (id, client) in servers.clients.iter().enumerate() {
        tasks.push(tokio::spawn(client_ops(
            client.clone(),
            id,
            keys.clone(),
            seed * 10 + id as u64,
            Arc::clone(&history),
            faults_over.clone(),
        )));
    }
    // Faults while the clients run: a few cuts and heals at random moments.
    for _ in 0..rng.random_range(1..=3) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..400))).await;
        match rng.random_range(0..4) {
            0 => servers.heal(),
            _ => {
                servers.heal();
                servers.isolate(rng.random_range(0..3));
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
    servers.heal();
    faults_over.cancel();
    for t in tasks {
        t.await?;
    }
    servers.heal();
    servers.recovered(&format!("probe-{seed}")).await?;
    // Definite reads after recovery, through every server: a lost write shows here.
    for client in &servers.clients {
        let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
        for key in &keys {
            let call = Instant::now();
            let out = output(cms.get(key).await, false);
            history.lock().expect("history").push(Op {
                key: key.clone(),
                input: Input::Get,
                output: out,
                call,
                ret: Instant::now(),
            });
        }
    }
    let history = history.lock().expect("history").clone();
    Ok((violations(&history), history))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_random_partitions_should_be_linearizable() -> Result<()> {
    let servers = Servers::start().await?;
    let seeds: Vec<u64> = match std::env::var("LINCHECK_SEED") {
        Ok(s) => vec![s.parse()?],
        Err(_) => {
            let n: u64 = std::env::var("LINCHECK_SCHEDULES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(100);
            (1..=n).collect()
        }
    };
    let started = Instant::now();
    let (mut ops, mut unknown) = (0, 0);
    for seed in &seeds {
        let (bad, history) = schedule(&servers, *seed).await?;
        ops += history.len();
        unknown += history
            .iter()
            .filter(|o| o.output == Output::Unknown)
            .count();
        if !bad.is_empty() {
            for op in history.iter().filter(|o| bad.contains(&o.key)) {
                eprintln!("{op:?}");
            }
            bail!("schedule {seed}: {bad:?} not linearizable; replay with LINCHECK_SEED={seed}");
        }
    }
    tracing::info!(
        schedules = seeds.len(),
        ops,
        unknown,
        elapsed = ?started.elapsed(),
        "every history linearizable"
    );
    for c in servers.clusters {
        c.stop().await?;
    }
    Ok(())
}
