//! Nodes join over the network with a node token, as the README shows (`wasmkube wasmlet
//! --join URL --token-file DATA_DIR/node-token`): each wasmlet is its own process with
//! credentials of its own (`system:node:NAME`), never the admin token; the API server reaches
//! it for logs with its kubelet client certificate, and traffic between the two nodes crosses
//! their mutually authenticated tunnel.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, LogParams};
use serde_json::json;
use wasmkube_client::create_from_json;
use wasmkube_tests::{
    KillOnDrop, Process, free_port, kubectl, node_ready, wait_for, wasmkube_bin, wasmlet_args,
    wasmlet_process,
};

/// The `--join` flags (and data directory) of node `name`, with `token`.
fn join(dir: &Path, server: &str, token: &Path, name: &str) -> [String; 6] {
    [
        "--join".to_owned(),
        format!("https://{server}"),
        "--token-file".to_owned(),
        token.display().to_string(),
        "--data-dir".to_owned(),
        dir.join(name).display().to_string(),
    ]
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test]
async fn wasmlets_should_join_with_a_node_token_and_act_as_their_node() -> Result<()> {
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let server = Process::up_with(&data, free_port(), &["--no-wasmlet", "--no-dns"]).await?;
    let kubeconfig = server.kubeconfig();
    let kc = kubeconfig.display().to_string();
    let node_token = data.join("node-token");
    ensure!(
        node_token.is_file(),
        "the server writes DATA_DIR/node-token"
    );

    // A token with the right CA but the wrong secret is refused, and says so.
    let text = std::fs::read_to_string(&node_token)?;
    let (ca, _) = text.trim().rsplit_once("::").context("token shape")?;
    let bad = dir.path().join("bad-token");
    std::fs::write(&bad, format!("{ca}::not-the-secret\n"))?;
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(wasmkube_bin())
            .args(wasmlet_args(
                "intruder",
                "127.0.0.1:0",
                &join(dir.path(), &server.addr, &bad, "intruder")
                    .each_ref()
                    .map(String::as_str),
            ))
            .output(),
    )
    .await
    .context("a refused join ends")??;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && stderr.contains("Unauthorized"),
        "a wrong node token is refused with 401: {stderr}"
    );

    let dns_addr = format!("127.0.0.1:{}", free_port());
    let _dns = KillOnDrop::wasmkube(
        &["dns", "--kubeconfig", &kc, "--listen", &dns_addr],
        &dir.path().join("dns.log"),
    )?;
    // Two nodes on two loopback addresses, so each has its own NodePorts.
    let mut wasmlets = Vec::new();
    for (name, address) in [("edge-1", "127.0.0.1"), ("edge-2", "127.0.0.2")] {
        let join = join(dir.path(), &server.addr, &node_token, name);
        let mut extra: Vec<&str> = join.iter().map(String::as_str).collect();
        // A short lease: renewed, and the node status checked, every second.
        extra.extend([
            "--cluster-dns",
            &dns_addr,
            "--node-lease-duration-seconds",
            "4",
        ]);
        wasmlets.push(wasmlet_process(
            None,
            name,
            &format!("{address}:0"),
            &extra,
            &dir.path().join(format!("{name}.log")),
        )?);
    }
    let client = server.client().await?;
    for name in ["edge-1", "edge-2"] {
        wait_for(
            &format!("node {name} Ready"),
            Duration::from_secs(60),
            || node_ready(&client, name),
        )
        .await?;
    }

    // The node keeps its status as it is: two lease renewals later (a status check each
    // second), Ready has the same transition time. (Reading its status back through
    // `nodes/status`, which a node may not get, once made it post anew every check.)
    let ready_since = || async {
        let n = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
            .get("edge-1")
            .await
            .ok()?;
        n.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Ready")?
            .last_transition_time
    };
    let since = ready_since()
        .await
        .context("edge-1's Ready transition time")?;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-node-lease");
    let renewed = || async {
        leases
            .get("edge-1")
            .await
            .ok()?
            .spec?
            .renew_time
            .map(|t| t.0)
    };
    let first = renewed().await.context("edge-1's lease")?;
    wait_for("two lease renewals", Duration::from_secs(30), || async {
        renewed()
            .await
            .filter(|t| t.duration_since(first) >= jiff::SignedDuration::from_secs(2))
    })
    .await?;
    ensure!(
        ready_since().await == Some(since),
        "the Ready condition did not transition again"
    );

    // The nodes hold their own credentials, never the admin token.
    let admin = std::fs::read_to_string(data.join("pki").join("admin.token"))?;
    let leaked = files_containing(dir.path().join("edge-1").as_path(), admin.trim());
    ensure!(
        leaked.is_empty(),
        "no node file holds the admin token: {leaked:?}"
    );
    let node_kc = dir.path().join("edge-1").join("wasmlet.kubeconfig");
    let own = std::fs::read_to_string(&node_kc)?;
    ensure!(own.contains("system:node:edge-1"), "{own}");
    // The API knows the node by its name: a node may not change the servers.
    let members = Command::new(wasmkube_bin())
        .args(["cluster", "members", "--kubeconfig"])
        .arg(&node_kc)
        .output()?;
    let stderr = String::from_utf8_lossy(&members.stderr);
    ensure!(
        !members.status.success() && stderr.contains("system:node:edge-1"),
        "the membership is refused to the node, by name: {stderr}"
    );

    wasmkube_tests::push_samples(&kubeconfig, dir.path(), &["http-hello", "http-frontend"])?;
    // The backend on one node, the frontend on the other: frontend → backend crosses nodes.
    let node_port: u16 = 30000 + free_port() % 2700;
    let deployment = |name: &str, image: &str, node: &str| {
        json!({"metadata": {"name": name}, "spec": {"replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "containers": [{"name": "http", "image": format!("{image}:v1"),
                    "ports": [{"name": "http", "containerPort": 8080}]}]}}}})
    };
    create_from_json::<Deployment>(
        &client,
        "default",
        deployment("backend", "http-hello", "edge-1"),
    )
    .await?;
    create_from_json::<Deployment>(
        &client,
        "default",
        deployment("frontend", "http-frontend", "edge-2"),
    )
    .await?;
    wasmkube_tests::frontend_backend_services(&client, node_port).await?;
    let entry: SocketAddr = format!("127.0.0.2:{node_port}").parse()?;
    wait_for(
        "NodePort on edge-2 -> frontend -> tunnel -> backend on edge-1",
        Duration::from_secs(90),
        || wasmkube_tests::frontend_serves(entry),
    )
    .await?;

    // Logs come from the node through the API server's kubelet client certificate.
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let backend = pods
        .list(&ListParams::default().labels("app=backend"))
        .await?
        .items
        .into_iter()
        .next()
        .context("a backend pod")?;
    ensure!(
        backend.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("edge-1"),
        "the backend runs on edge-1"
    );
    let name = backend.name_any();
    pods.logs(&name, &LogParams::default())
        .await
        .context("pods/log through the node's endpoint")?;
    match kubectl() {
        Some(kubectl) => {
            let out = Command::new(kubectl)
                .args(["logs", &name])
                .env("KUBECONFIG", &kubeconfig)
                .output()?;
            ensure!(
                out.status.success(),
                "kubectl logs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => tracing::warn!("kubectl is not on PATH: kubectl logs not checked"),
    }
    drop(wasmlets);
    Ok(())
}
