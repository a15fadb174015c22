//! Images from registries: Debian's `docker-registry` (distribution) started on loopback, and
//! the cluster's own registry through the real binary's `wasmkube image push`.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{LogParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use wasmkube_tests::{Cluster, Process, free_port, node_ready, wait_for};
use wasmkube_wasmlet::images::Registries;

const SLOW: Duration = Duration::from_secs(60);

/// A `docker-registry` child process serving on a loopback port, removed on drop.
struct DebianRegistry {
    child: std::process::Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Drop for DebianRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Debian's registry, or says why not: absent outside CI is a skip, absent in CI a failure.
async fn debian_registry() -> Result<Option<DebianRegistry>> {
    let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(bin) = bin else {
        anyhow::ensure!(
            std::env::var_os("CI").is_none(),
            "docker-registry is not installed (apt-get install docker-registry)"
        );
        eprintln!(
            "docker-registry not installed; skipping the external-registry test (apt-get install docker-registry)"
        );
        return Ok(None);
    };
    let dir = tempfile::tempdir()?;
    let host = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        ),
    )?;
    let child = Command::new(bin)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let registry = DebianRegistry {
        child,
        host: host.clone(),
        _dir: dir,
    };
    wait_for(
        "docker-registry to listen",
        Duration::from_secs(30),
        || async { tokio::net::TcpStream::connect(&host).await.ok().map(|_| ()) },
    )
    .await?;
    Ok(Some(registry))
}

async fn run_pod(
    client: &Client,
    node: &str,
    name: &str,
    image: &str,
    policy: &str,
) -> Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
        "nodeName": node, "restartPolicy": "Never",
        "containers": [{"name": "c", "image": image, "imagePullPolicy": policy, "args": ["env"]}]}}))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait_for(&format!("{name} Succeeded"), SLOW, || async {
        let p = pods.get(name).await.ok()?;
        (p.status?.phase? == "Succeeded").then_some(())
    })
    .await?;
    Ok(pods.logs(name, &LogParams::default()).await?)
}

#[tokio::test]
async fn pods_pull_from_a_debian_registry_honouring_the_pull_policy() -> Result<()> {
    let Some(registry) = debian_registry().await? else {
        return Ok(());
    };
    let cluster = Cluster::start().await?;
    let host = registry.host.clone();
    let node = cluster
        .start_node_with("n1", |c| c.insecure_registries = vec![host.clone()])
        .await?;
    let external = Registries {
        cluster: None,
        insecure: vec![registry.host.clone()],
    };
    let image = format!("{}/samples/app:v1", registry.host);
    let hello = wasmkube_samples::guest("hello").context("sample")?;
    wasmkube_wasmlet::images::push(&external, &image, hello.to_vec()).await?;
    assert_eq!(
        run_pod(&cluster.client, &node.name, "first", &image, "IfNotPresent").await?,
        "Hello, wasmkube!\nargs: env\n"
    );

    // Retag v1 to different content: IfNotPresent keeps the stored image, Always fetches anew.
    let toolbox = wasmkube_samples::guest("toolbox").context("sample")?;
    wasmkube_wasmlet::images::push(&external, &image, toolbox.to_vec()).await?;
    assert_eq!(
        run_pod(
            &cluster.client,
            &node.name,
            "cached",
            &image,
            "IfNotPresent"
        )
        .await?,
        "Hello, wasmkube!\nargs: env\n"
    );
    let fresh = run_pod(&cluster.client, &node.name, "fresh", &image, "Always").await?;
    assert!(
        fresh.contains("KUBERNETES_SERVICE_HOST=")
            && fresh
                .lines()
                .all(|l| l.is_empty() || l.starts_with("KUBERNETES_")),
        "the toolbox's `env` prints the environment, only the kubernetes Service's: {fresh:?}"
    );
    node.stop().await
}

#[tokio::test]
async fn the_binary_pushes_to_the_cluster_registry_and_its_wasmlet_runs_the_image() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let up = Process::up(&data, free_port()).await?;
    let client = up.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = wait_for("the up's own node", SLOW, || async {
        nodes
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .next()?
            .metadata
            .name
    })
    .await?;

    let file = dir.path().join("hello.wasm");
    std::fs::write(&file, wasmkube_samples::guest("hello").context("sample")?)?;
    let out = Command::new(wasmkube_tests::wasmkube_bin())
        .args(["image", "push"])
        .arg(&file)
        .arg("demo/hello:v2")
        .arg("--kubeconfig")
        .arg(up.kubeconfig())
        .output()?;
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8_lossy(&out.stdout);
    assert!(url.contains("/v2/demo/hello/manifests/sha256:"), "{url}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("done in"),
        "progress is shown"
    );

    let refused = Command::new(wasmkube_tests::wasmkube_bin())
        .args(["image", "push", "/etc/hostname", "x:v1", "--kubeconfig"])
        .arg(up.kubeconfig())
        .output()?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not a WebAssembly binary"));

    let logs = run_pod(
        &client,
        &node,
        "from-cluster-registry",
        "demo/hello:v2",
        "IfNotPresent",
    )
    .await?;
    assert_eq!(logs, "Hello, wasmkube!\nargs: env\n");
    match which_kubectl() {
        Some(kubectl) => {
            let out = Command::new(kubectl)
                .args(["logs", "from-cluster-registry", "--kubeconfig"])
                .arg(up.kubeconfig())
                .output()?;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "Hello, wasmkube!\nargs: env\n"
            );
        }
        None => eprintln!("kubectl not installed; checked logs with kube-rs only"),
    }
    Ok(())
}

fn which_kubectl() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join("kubectl"))
        .find(|p| p.exists())
}

#[tokio::test]
async fn a_standalone_wasmlet_process_joins_the_cluster_and_serves_logs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let up = Process::up(&data, free_port()).await?;
    let client = up.client().await?;
    let (kubeconfig, edge) = (
        up.kubeconfig().display().to_string(),
        dir.path().join("edge").display().to_string(),
    );
    let mut wasmlet = wasmkube_tests::wasmlet_process(
        None,
        "edge-1",
        "127.0.0.1:0",
        &["--kubeconfig", &kubeconfig, "--data-dir", &edge],
        &dir.path().join("edge.log"),
    )?;
    wait_for("node edge-1 Ready", SLOW, || node_ready(&client, "edge-1")).await?;
    let file = dir.path().join("hello.wasm");
    std::fs::write(&file, wasmkube_samples::guest("hello").context("sample")?)?;
    let pushed = Command::new(wasmkube_tests::wasmkube_bin())
        .args(["image", "push"])
        .arg(&file)
        .arg("hello:v1")
        .env("KUBECONFIG", up.kubeconfig())
        .output()?;
    assert!(
        pushed.status.success(),
        "push with $KUBECONFIG: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    // The pod's logs travel apiserver → this separate wasmlet process → back.
    assert_eq!(
        run_pod(&client, "edge-1", "on-edge", "hello:v1", "IfNotPresent").await?,
        "Hello, wasmkube!\nargs: env\n"
    );
    assert!(
        wasmlet.0.try_wait()?.is_none(),
        "the wasmlet is still running"
    );
    Ok(())
}

#[tokio::test]
async fn a_killed_wasmlet_process_makes_its_node_unknown_and_its_pods_move() -> Result<()> {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let fast = [
        "--node-monitor-grace-period",
        "3",
        "--default-unreachable-toleration-seconds",
        "1",
        "--node-eviction-rate",
        "10",
        "--node-lease-duration-seconds",
        "4",
    ];
    let up = Process::up_with(&data, free_port(), &fast).await?;
    let client = up.client().await?;
    let (kubeconfig, edge_dir) = (
        up.kubeconfig().display().to_string(),
        dir.path().join("edge").display().to_string(),
    );
    let mut edge = wasmkube_tests::wasmlet_process(
        None,
        "edge-1",
        "127.0.0.1:0",
        &[
            "--node-labels",
            "role=edge",
            "--node-lease-duration-seconds",
            "4",
            "--kubeconfig",
            &kubeconfig,
            "--data-dir",
            &edge_dir,
        ],
        &dir.path().join("edge.log"),
    )?;
    let nodes: Api<Node> = Api::all(client.clone());
    let home = wait_for("both nodes Ready", SLOW, || async {
        let list = nodes.list(&Default::default()).await.ok()?.items;
        let ready = |n: &Node| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        (list.len() == 2 && list.iter().all(ready)).then(|| {
            list.into_iter()
                .find_map(|n| n.metadata.name.filter(|n| n != "edge-1"))
        })?
    })
    .await?;
    let file = dir.path().join("toolbox.wasm");
    std::fs::write(&file, wasmkube_samples::guest("toolbox").context("sample")?)?;
    let pushed = Command::new(wasmkube_tests::wasmkube_bin())
        .args(["image", "push"])
        .arg(&file)
        .arg("toolbox:v1")
        .arg("--kubeconfig")
        .arg(up.kubeconfig())
        .output()?;
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    sets.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "preference": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["edge"]}]}}]}},
            "containers": [{"name": "c", "image": "toolbox:v1", "args": ["forever"]}]}}}}))?).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let running_on = |node: String| {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&Default::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            list.into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
                })
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count()
        }
    };
    wait_for("both replicas on the edge node", SLOW, || async {
        (running_on("edge-1".into()).await == 2).then_some(())
    })
    .await?;

    // kill -9 the wasmlet: the node goes silent; its pods come back on the other node.
    edge.0.kill()?;
    let _ = edge.0.wait();
    wait_for("edge-1 Unknown", SLOW, || async {
        let n = nodes.get("edge-1").await.ok()?;
        n.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "Unknown")
            .then_some(())
    })
    .await?;
    wait_for("the replicas running on the other node", SLOW, || async {
        (running_on(home.clone()).await == 2).then_some(())
    })
    .await?;
    Ok(())
}
