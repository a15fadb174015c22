//! Scale to zero and wake: an autoscaler with `minReplicas: 0` on an Object metric of its
//! Service (`http_requests_in_flight`) takes an idle function to zero pods; requests that
//! arrive then — through the Ingress, through a NodePort, from a pod to the Service IP — are held by the node, which asks
//! for a replica (a `ScaleFromZero` Event the autoscaler acts on at once), and forwarded as
//! soon as one is ready: every request of a burst at zero gets a 200, marked with
//! `X-Wasmkube-Cold-Start`; idle again, the function goes back to zero.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler as Hpa;
use k8s_openapi::api::core::v1::{Event, Pod, Service};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmkube_tests::wait_for;

use crate::t87_autoscaling::{autoscaling_cluster, deployment};

const SLOW: Duration = Duration::from_secs(120);

/// `GET /` with `host`: the status and the cold-start header, if any.
async fn get(addr: SocketAddr, host: &str) -> Result<(u16, Option<String>)> {
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(
        format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp).await?;
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    let cold = text.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-wasmkube-cold-start")
            .then(|| v.trim().to_owned())
    });
    Ok((status, cold))
}

async fn at_zero(deploys: &Api<Deployment>, c: &kube::Client) -> Result<()> {
    wait_for("fn scaled to zero", SLOW, || async {
        let d = deploys.get("fn").await.ok()?;
        (d.spec.as_ref()?.replicas == Some(0)).then_some(())
    })
    .await?;
    wasmkube_tests::wait_ready_endpoints(c, "fn", 0).await?;
    // And its pod gone. The API's endpoints can reach zero a moment before the node's own
    // index does, and a request in between reaches the pod still finishing (answered without a
    // cold start); the pod is removed only after its node stopped it, by when the node has long
    // seen the endpoint go.
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    wait_for("fn's pods gone", SLOW, || async {
        let left = pods
            .list(&ListParams::default().labels("app=fn"))
            .await
            .ok()?;
        left.items.is_empty().then_some(())
    })
    .await
}

#[tokio::test]
async fn a_function_at_zero_should_wake_for_requests_through_ingress_and_node_port() -> Result<()> {
    let setup = autoscaling_cluster(Duration::from_secs(1), |c| {
        c.ingress_listen = Some(SocketAddr::new(c.listen.ip(), 0));
    })
    .await?;
    let (cluster, node) = (&setup.cluster, &setup.node);
    let image = cluster.push_sample("http-hello").await?;
    let c = &cluster.client;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    deploys
        .create(
            &PostParams::default(),
            &deployment(
                "fn",
                1,
                json!({"name": "fn", "image": image, "ports": [{"containerPort": 8080}]}),
            )?,
        )
        .await?;
    let services: Api<Service> = Api::namespaced(c.clone(), "default");
    let svc = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "fn"},
                "spec": {"type": "NodePort", "selector": {"app": "fn"},
                    "ports": [{"port": 80, "targetPort": 8080}]}}))?,
        )
        .await?;
    let node_port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.first())
        .and_then(|p| p.node_port)
        .unwrap_or_default();
    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> =
        Api::namespaced(c.clone(), "default");
    ingresses
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "fn"},
                "spec": {"ingressClassName": "wasmkube", "rules": [{"host": "fn.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "fn", "port": {"number": 80}}}}]}}]}}))?,
        )
        .await?;
    let hpas: Api<Hpa> = Api::namespaced(c.clone(), "default");
    hpas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "fn"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fn"},
                "minReplicas": 0, "maxReplicas": 2,
                "metrics": [{"type": "Object", "object": {
                    "describedObject": {"apiVersion": "v1", "kind": "Service", "name": "fn"},
                    "metric": {"name": "http_requests_in_flight"},
                    "target": {"type": "AverageValue", "averageValue": "1"}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}
        }))?,
    )
    .await?;
    let ingress = wasmkube_tests::wait_ingress_address(c, "fn").await?;

    // Idle: to zero, and the Service marked so that nodes hold its requests.
    at_zero(&deploys, c).await?;
    let marked = services.get("fn").await?;
    ensure!(
        marked
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(wasmkube_api::services::SCALE_FROM_ZERO)),
        "the Service is marked for scale from zero"
    );

    // A burst at zero through the Ingress: every request answered, each marked cold.
    let burst = futures::future::join_all((0..5).map(|_| get(ingress, "fn.example"))).await;
    for r in burst {
        let (status, cold) = r?;
        ensure!(status == 200, "a held request answered {status}");
        let ms: f64 = cold.as_deref().unwrap_or_default().parse().unwrap_or(-1.0);
        ensure!(
            ms >= 0.0,
            "X-Wasmkube-Cold-Start on a woken request: {cold:?}"
        );
    }
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    let woke = events
        .list(&ListParams::default().fields("reason=ScaleFromZero"))
        .await?;
    ensure!(
        woke.items
            .iter()
            .any(|e| e.involved_object.kind.as_deref() == Some("Service")
                && e.involved_object.name.as_deref() == Some("fn")),
        "the node asked for a replica with an Event"
    );

    // Idle again: back to zero; then a connection through the NodePort wakes it.
    at_zero(&deploys, c).await?;
    let node_ip = std::net::IpAddr::V4(node.address);
    let (status, _) = get(SocketAddr::new(node_ip, u16::try_from(node_port)?), "fn").await?;
    ensure!(status == 200, "through the NodePort: {status}");

    // Idle again: a pod's connection to the Service IP is held by its node too.
    at_zero(&deploys, c).await?;
    let cluster_ip = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .unwrap_or_default();
    let toolbox = cluster.push_sample("toolbox").await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "caller"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "get", "image": toolbox,
                "args": ["http-get", format!("{cluster_ip}:80"), "/"]}]}}))?,
    )
    .await?;
    let phase = wait_for("the caller pod to finish", SLOW, || async {
        let p = pods.get("caller").await.ok()?;
        let phase = p.status?.phase?;
        (phase == "Succeeded" || phase == "Failed").then_some(phase)
    })
    .await?;
    let log = pods.logs("caller", &Default::default()).await?;
    ensure!(
        phase == "Succeeded",
        "a pod's request to the Service at zero: {phase}: {log}"
    );

    let (code, body) = wasmkube_tests::raw(c, "GET", "/metrics", "", "*/*", b"").await?;
    ensure!(code == 200);
    let text = body.as_str().unwrap_or_default().to_owned();
    let woken = text
        .lines()
        .find(|l| l.starts_with("wasmkube_cold_start_duration_seconds_count"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    ensure!(woken >= 7.0, "cold starts counted: {woken}");

    // No autoscaler takes it to zero any more: the mark goes, so nodes stop holding.
    hpas.patch(
        "fn",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"minReplicas": 1}})),
    )
    .await?;
    wait_for("the scale-from-zero mark removed", SLOW, || async {
        let svc = services.get("fn").await.ok()?;
        (!svc
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(wasmkube_api::services::SCALE_FROM_ZERO)))
        .then_some(())
    })
    .await?;
    setup.stop().await
}
