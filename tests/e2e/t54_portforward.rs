//! `pods/portforward` end to end: kube-rs's WebSocket channels, and real kubectl — SPDY
//! tunnelled in a WebSocket (kubectl 1.31+) and plain SPDY/3.1 (kubectl 1.28, when installed
//! beside it) — through the API server's upgrade proxy to the wasmlet, which connects from
//! the node to the pod's port through the pod network. Everything stays on loopback.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use wasmkube_tests::Cluster;

use crate::t50_wasmlet::{create_pod, phase, wait_pod};

/// One HTTP/1.1 request over `conn`, the whole answer back.
async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    conn: &mut S,
    path: &str,
) -> Result<String> {
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: pod\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_string(&mut answer))
        .await
        .context("the answer in time")??;
    Ok(answer)
}

/// Runs `kubectl port-forward pod/web :8080` and returns it with the local port it chose.
async fn kubectl_forward(
    kubectl: &std::path::Path,
    kubeconfig: &std::path::Path,
) -> Result<(tokio::process::Child, u16)> {
    let mut child = tokio::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["port-forward", "--address", "127.0.0.1", "pod/web", ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("kubectl prints where it forwards from")??
        .context("a line")?;
    // "Forwarding from 127.0.0.1:41234 -> 8080"
    let port = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("a local port in {line:?}"))?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, port))
}

#[tokio::test]
async fn port_forward_reaches_a_pods_port_from_kube_rs_and_kubectl() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("http-hello").await?;
    let c = &cluster.client;
    let pods = create_pod(
        c,
        &node.name,
        "web",
        serde_json::json!({"containers": [{"name": "web", "image": image,
            "ports": [{"containerPort": 8080}]}]}),
    )
    .await?;
    wait_pod(&pods, "web", "running", |p| phase(p) == "Running").await?;

    // kube-rs: WebSocket channels, two ports, one of them with nothing listening.
    let mut pf = pods.portforward("web", &[8080, 9999]).await?;
    let mut conn = pf.take_stream(8080).context("a stream for 8080")?;
    let answer = get(&mut conn, "/via-kube-rs").await?;
    assert!(
        answer.starts_with("HTTP/1.1 200")
            && answer.contains("Hello from wasmkube! GET /via-kube-rs\n"),
        "{answer}"
    );
    let error = pf.take_error(9999).context("an error channel for 9999")?;
    let message = tokio::time::timeout(Duration::from_secs(30), error)
        .await
        .context("the error in time")?
        .unwrap_or_default();
    assert!(
        message.contains("error forwarding port 9999 to pod default/web"),
        "{message}"
    );
    drop(conn);
    pf.abort();

    let Some(kubectl) = wasmkube_tests::kubectl() else {
        eprintln!(
            "SKIPPED: kubectl is not installed; port-forward is covered through kube-rs above"
        );
        return node.stop().await;
    };
    // kubectl as installed (1.31+ tunnels SPDY in a WebSocket), then 1.28 (plain SPDY).
    let mut kubectls = vec![kubectl.clone()];
    if let Some(old) = std::fs::canonicalize(&kubectl)
        .ok()
        .and_then(|k| k.parent().map(|d| d.join("kubectl.1.28")))
        .filter(|k| k.is_file())
    {
        kubectls.push(old);
    } else {
        eprintln!("kubectl.1.28 not found beside kubectl: plain SPDY port-forward not exercised");
    }
    for bin in kubectls {
        let (mut child, port) = kubectl_forward(&bin, &cluster.kubeconfig).await?;
        for i in 0..3 {
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let answer = get(&mut conn, &format!("/kubectl/{i}")).await?;
            ensure!(
                answer.contains(&format!("Hello from wasmkube! GET /kubectl/{i}\n")),
                "{}: {answer}",
                bin.display()
            );
        }
        child.kill().await?;
    }
    node.stop().await
}
