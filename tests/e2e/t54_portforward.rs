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

/// `GET`/`POST` `path` through the API server with kube-rs's client: the status and body.
async fn through_api(c: &kube::Client, method: &str, path: &str) -> Result<(u16, String)> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(b"ping".to_vec())?;
    match c.request_text(req).await {
        Ok(text) => Ok((200, text)),
        Err(kube::Error::Api(s)) => Ok((s.code, s.message)),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test]
async fn proxy_subresources_reach_a_pods_port_and_a_services_endpoint() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("http-hello").await?;
    let pods = create_pod(
        &cluster.client,
        &node.name,
        "web",
        serde_json::json!({"containers": [{"name": "web", "image": image,
            "ports": [{"containerPort": 8080}]}]}),
    )
    .await?;
    wait_pod(&pods, "web", "running", |p| phase(p) == "Running").await?;
    // A 503 is an answer here: kube-rs's retry policy would try it again for a minute (client-go
    // retries only an answer with `Retry-After`, which these do not carry).
    let c = &wasmkube_tests::client_without_retries(&cluster.kubeconfig).await?;
    let base = "/api/v1/namespaces/default";

    // A pod: its first declared port when none is named, or the one given; method, path and
    // query go through.
    let (code, body) = through_api(c, "GET", &format!("{base}/pods/web/proxy/a/b?x=1")).await?;
    ensure!(
        code == 200 && body.contains("GET /a/b?x=1"),
        "{code} {body}"
    );
    let (code, body) = through_api(c, "POST", &format!("{base}/pods/web:8080/proxy/post")).await?;
    ensure!(code == 200 && body.contains("POST /post"), "{code} {body}");
    // Nothing listening: 503, with why.
    let (code, body) = through_api(c, "GET", &format!("{base}/pods/web:9999/proxy/")).await?;
    ensure!(
        code == 503
            && body.starts_with("error trying to reach service: dial tcp ")
            && body.contains(":9999"),
        "{code} {body}"
    );
    let (code, _) = through_api(c, "GET", &format!("{base}/pods/absent/proxy/")).await?;
    ensure!(code == 404, "{code}");
    let (code, _) = through_api(c, "GET", &format!("{base}/pods/ftp:web:21/proxy/")).await?;
    ensure!(code == 400, "{code}");

    // A Service: by port name or number, to an endpoint's target port. Endpoints written by
    // hand (a Service without a selector), so only the API server's part is tested here.
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(c.clone(), "default");
    services
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "front"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))?,
        )
        .await?;
    let (code, body) = through_api(c, "GET", &format!("{base}/services/front:80/proxy/")).await?;
    ensure!(
        code == 503 && body.contains("no endpoints available for service \"front\""),
        "{code} {body}"
    );
    let pod_ip = pods
        .get("web")
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .context("the pod's IP")?;
    let endpoints: kube::Api<k8s_openapi::api::core::v1::Endpoints> =
        kube::Api::namespaced(c.clone(), "default");
    endpoints
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "front"},
                "subsets": [{"addresses": [{"ip": pod_ip, "nodeName": node.name,
                    "targetRef": {"kind": "Pod", "namespace": "default", "name": "web"}}],
                    "ports": [{"name": "http", "port": 8080}]}]}))?,
        )
        .await?;
    for id in ["front:80", "front:http", "http:front:http"] {
        let (code, body) =
            through_api(c, "GET", &format!("{base}/services/{id}/proxy/svc")).await?;
        ensure!(
            code == 200 && body.contains("GET /svc"),
            "{id}: {code} {body}"
        );
    }
    let (code, body) = through_api(c, "GET", &format!("{base}/services/front:81/proxy/")).await?;
    ensure!(
        code == 503 && body.contains("no service port 81"),
        "{code} {body}"
    );

    // kubectl's way in: `get --raw`, and `kubectl proxy`'s bare `.../proxy` is redirected to
    // `.../proxy/` (kube-apiserver's answer, so relative links resolve).
    let (code, location) = {
        let req =
            http::Request::get(format!("{base}/services/front:http/proxy?q=1")).body(Vec::new())?;
        let resp = c.send(req.map(kube::client::Body::from)).await?;
        let location = resp
            .headers()
            .get(http::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        (resp.status().as_u16(), location)
    };
    ensure!(
        code == 301
            && location.as_deref() == Some(&*format!("{base}/services/front:http/proxy/?q=1")),
        "{code} {location:?}"
    );
    if let Some(kubectl) = wasmkube_tests::kubectl() {
        let out = tokio::process::Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args([
                "get",
                "--raw",
                &format!("{base}/services/front:http/proxy/kubectl"),
            ])
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && stdout.contains("GET /kubectl"),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("kubectl is not installed; the proxy was exercised through kube-rs only");
    }
    node.stop().await
}
