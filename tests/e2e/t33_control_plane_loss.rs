//! Losing the whole control plane never kills workloads (Borg's rule): with the API server
//! `kill -9`ed for 60 s, a wasmlet and a cluster DNS that run as their own processes keep every
//! pod running and serving — NodePort → frontend → the `backend` Service by its DNS name →
//! a backend — and when the server returns nothing restarts, nothing is duplicated and
//! nothing is evicted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::json;
use wasmkube_client::create_from_json;
use wasmkube_tests::{KillOnDrop, Process, free_port, node_ready, wait_for, wasmlet_process};

/// How long the control plane stays down (the 60 s).
const OUTAGE: Duration = Duration::from_secs(60);

/// Each pod's uid and restart count.
async fn pods(client: &kube::Client) -> Result<BTreeMap<String, (String, i32)>> {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    Ok(pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|p| {
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum());
            (p.name_any(), (p.uid().unwrap_or_default(), restarts))
        })
        .collect())
}

#[tokio::test]
async fn pods_should_keep_serving_through_a_minute_without_any_api_server() -> Result<()> {
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let mut server = Process::up_with(&data, free_port(), &["--no-wasmlet", "--no-dns"]).await?;
    let kubeconfig = server.kubeconfig();
    let kc = kubeconfig.display().to_string();
    let dns_addr = format!("127.0.0.1:{}", free_port());
    let _dns = KillOnDrop::wasmkube(
        &["dns", "--kubeconfig", &kc, "--listen", &dns_addr],
        &dir.path().join("dns.log"),
    )?;
    let node_dir = dir.path().join("node").display().to_string();
    let _wasmlet = wasmlet_process(
        None,
        "edge-1",
        "127.0.0.1:0",
        &[
            "--kubeconfig",
            &kc,
            "--data-dir",
            &node_dir,
            "--cluster-dns",
            &dns_addr,
        ],
        &dir.path().join("wasmlet.log"),
    )?;
    wasmkube_tests::push_samples(&kubeconfig, dir.path(), &["http-hello", "http-frontend"])?;
    let client = server.client().await?;
    let node_port: u16 = 30000 + free_port() % 2700;
    let deployment = |name: &str, image: &str, replicas: i32| {
        json!({"metadata": {"name": name}, "spec": {"replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                "name": "http", "image": format!("{image}:v1"),
                "ports": [{"name": "http", "containerPort": 8080}]}]}}}})
    };
    create_from_json::<Deployment>(&client, "default", deployment("backend", "http-hello", 2))
        .await?;
    create_from_json::<Deployment>(
        &client,
        "default",
        deployment("frontend", "http-frontend", 1),
    )
    .await?;
    wasmkube_tests::frontend_backend_services(&client, node_port).await?;
    let entry: SocketAddr = format!("127.0.0.1:{node_port}").parse()?;
    let serving = || wasmkube_tests::frontend_serves(entry);
    wait_for(
        "NodePort -> frontend -> backend",
        Duration::from_secs(60),
        serving,
    )
    .await?;
    let before = pods(&client).await?;
    ensure!(before.len() == 3, "three pods: {before:?}");

    tracing::info!("--- kill -9 the only API server for {OUTAGE:?}");
    server.kill9();
    let down = tokio::time::Instant::now();
    let (mut ok, mut failed) = (0, 0);
    while down.elapsed() < OUTAGE {
        let tick = tokio::time::Instant::now();
        match serving().await {
            Some(_) => ok += 1,
            None => failed += 1,
        }
        tokio::time::sleep_until(tick + Duration::from_secs(1)).await;
    }
    ensure!(
        failed == 0 && ok >= 50,
        "every request during the outage is served: {ok} served, {failed} failed"
    );

    tracing::info!("--- the API server returns");
    server.restart().await?;
    let client = server.client().await?;
    // The wasmlet reconnects and reports; nothing restarted, nothing new.
    wait_for("the node Ready again", Duration::from_secs(60), || {
        node_ready(&client, "edge-1")
    })
    .await?;
    ensure!(serving().await.is_some(), "still serving");
    let after = pods(&client).await?;
    ensure!(
        after == before,
        "the same pods, no restarts, none added or evicted: {before:?} then {after:?}"
    );
    Ok(())
}
