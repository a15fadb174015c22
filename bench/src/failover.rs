//! `failover`: how long a group of three servers takes to acknowledge writes again after its
//! leader is killed. Three `wasmkube up` processes (API and store only) on loopback; each
//! round finds the leader (`/wasmkube/members`), `kill -9`s it, and times from the kill to the
//! first create acknowledged through a survivor; the killed server is restarted and rejoins
//! before the next round.
//!
//! Run: `cargo run --release -p wasmkube-bench --bin failover` (see README).
//! Everything listens on loopback; rounds and waits are bounded.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;
use wasmkube_tests::{API_ONLY, Process, client_for};

#[derive(Parser)]
struct Args {
    /// Leader kills.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

/// The leader's API port, as `/wasmkube/members` through `client` reports it.
async fn leader(client: &kube::Client) -> Result<u16> {
    let req = http::Request::get("/wasmkube/members").body(Vec::new())?;
    let members: Vec<serde_json::Value> = serde_json::from_str(&client.request_text(req).await?)?;
    members
        .iter()
        .find(|m| m["role"] == "leader")
        .and_then(|m| m["api"].as_str())
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .context("no leader listed")
}

async fn create(client: &kube::Client, name: &str) -> bool {
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let Ok(cm) = serde_json::from_value::<ConfigMap>(json!({"metadata": {"name": name}})) else {
        return false;
    };
    match cms.create(&PostParams::default(), &cm).await {
        Ok(_) => true,
        // An earlier attempt was applied; its answer was lost with the leader.
        Err(kube::Error::Api(s)) => s.code == 409,
        Err(_) => false,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let mut servers = Process::group(dir.path(), 3, API_ONLY).await?;
    let mut times = Vec::new();
    for round in 0..args.rounds {
        let any = client_for(&servers[round % 3].kubeconfig()).await?;
        let port = leader(&any).await?;
        let l = servers
            .iter()
            .position(|s| s.addr.ends_with(&format!(":{port}")))
            .context("the leader is one of ours")?;
        let survivor = client_for(&servers[(l + 1) % 3].kubeconfig()).await?;
        servers[l].kill9();
        let killed = Instant::now();
        let name = format!("after-kill-{round}");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let t = Instant::now();
            let ok = create(&survivor, &name).await;
            if std::env::var_os("FAILOVER_DEBUG").is_some() {
                eprintln!(
                    "  attempt {attempts} at {:?}: {ok} in {:?}",
                    killed.elapsed(),
                    t.elapsed()
                );
            }
            if ok {
                break;
            }
            if killed.elapsed() > Duration::from_secs(30) {
                bail!("no write acknowledged within 30 s of killing the leader");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = killed.elapsed();
        println!("round {round:>2}: leader on :{port} killed, first write after {took:.0?}");
        times.push(took);
        servers[l].restart().await?;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "fail-over over {} leader kills: p50 {:.0} ms, max {:.0} ms (kill -9 to the first acknowledged write through a survivor)",
        times.len(),
        ms(times[times.len() / 2]),
        ms(*times.last().expect("rounds"))
    );
    Ok(())
}
