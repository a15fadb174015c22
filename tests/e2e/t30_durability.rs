//! The real binary keeps every object across a clean restart, and every acknowledged write
//! across `kill -9` in the middle of a write load.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use wasmkube_tests::{Process, free_port};

#[tokio::test]
async fn restart_should_keep_every_object() -> Result<()> {
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = free_port();
    let mut up = Process::up(&data, port).await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(up.client().await?);
    let mut written = BTreeMap::new();
    for i in 0..25 {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("keep-{i}")}, "data": {"i": i.to_string()}}),
        )?;
        let c = cms.create(&PostParams::default(), &cm).await?;
        written.insert(c.name_any(), c.resource_version().expect("rv"));
    }
    tracing::info!("--- SIGTERM shuts down cleanly");
    up.terminate().await?;
    // stderr went to a file, not a terminal: plain text, no colour codes.
    let log = std::fs::read_to_string(data.with_extension("log"))?;
    ensure!(
        log.contains("shutting down"),
        "the log file has the server's lines"
    );
    ensure!(
        !log.contains('\x1b'),
        "log lines written to a file carry no ANSI escape codes"
    );
    let up = Process::up(&data, port).await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(up.client().await?);
    let after: BTreeMap<String, String> = cms
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        // (The controller manager's `kube-root-ca.crt` lives here too.)
        .filter(|c| c.name_any().starts_with("keep-"))
        .map(|c| (c.name_any(), c.resource_version().expect("rv")))
        .collect();
    ensure!(
        after == written,
        "every object, at the same resourceVersion"
    );
    let next = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "after"}}))?,
        )
        .await?;
    let max = written
        .values()
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .max()
        .unwrap_or(0);
    ensure!(
        next.resource_version().expect("rv").parse::<u64>()? > max,
        "revisions keep growing"
    );
    Ok(())
}

#[tokio::test]
async fn kill_9_mid_load_should_lose_no_acknowledged_write() -> Result<()> {
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = free_port();
    let mut up = Process::up(&data, port).await?;
    let client = up.client().await?;
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for w in 0..8 {
        let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            // Bounded: at most 2,000 writes per writer.
            for i in 0..2000 {
                if stop.is_cancelled() {
                    break;
                }
                let name = format!("w{w}-{i}");
                let cm: ConfigMap = serde_json::from_value(
                    json!({"metadata": {"name": name}, "data": {"payload": "x".repeat(512)}}),
                )
                .expect("configmap");
                match cms.create(&PostParams::default(), &cm).await {
                    Ok(c) => {
                        acked
                            .lock()
                            .expect("lock")
                            .insert(name, c.resource_version().unwrap_or_default());
                    }
                    Err(_) => break, // the server died under us
                }
            }
        }));
    }
    tracing::info!("--- let the load run, then kill -9 while it is writing");
    wasmkube_tests::wait_for("200 acknowledged writes", Duration::from_secs(60), || {
        let n = acked.lock().expect("lock").len();
        async move { (n >= 200).then_some(()) }
    })
    .await?;
    up.kill9();
    stop.cancel();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().expect("lock").clone();
    tracing::info!(
        acknowledged = acked.len(),
        "--- restart and check every acknowledged object"
    );
    let up = Process::up(&data, port).await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(up.client().await?);
    let present: BTreeMap<String, ConfigMap> = cms
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|c| (c.name_any(), c))
        .collect();
    let mut missing = Vec::new();
    for (name, rv) in &acked {
        match present.get(name) {
            Some(c) if c.resource_version().as_deref() == Some(rv.as_str()) => {
                ensure!(
                    c.data.as_ref().is_some_and(|d| d["payload"].len() == 512),
                    "{name}: data intact"
                );
            }
            Some(c) => anyhow::bail!(
                "{name}: resourceVersion {rv} became {:?}",
                c.resource_version()
            ),
            None => missing.push(name.clone()),
        }
    }
    ensure!(
        missing.is_empty(),
        "{} acknowledged writes lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    ensure!(acked.len() >= 200);
    Ok(())
}
