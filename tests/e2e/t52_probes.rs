//! Probes end to end: startup, liveness and readiness probes run by the wasmlet against real
//! guests (HTTP, TCP and exec), observed through the API — container `ready`/`started`, the
//! pod's `Ready` condition, EndpointSlice readiness, restarts, and the kubelet's events.
//! The guests' health is flipped by files in a hostPath directory the test owns.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use wasmkube_tests::{Cluster, wait_ready_endpoints};

use crate::t50_wasmlet::{create_pod, events, phase, status_of, wait_event, wait_pod};

fn ready_condition(pod: &Pod) -> Option<(String, Option<String>)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.message.clone()))
}

fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|(s, _)| s == "True")
}

#[tokio::test]
async fn a_readiness_probe_gates_ready_and_the_service_endpoints() -> Result<()> {
    let cluster = Cluster::start_with_control_plane().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let health = tempfile::tempdir()?;
    let c = &cluster.client;
    let services: Api<Service> = Api::default_namespaced(c.clone());
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}
            }))?,
        )
        .await?;
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "nodeName": node.name,
            "volumes": [{"name": "health", "hostPath": {"path": health.path(), "type": "Directory"}}],
            "containers": [{
                "name": "web", "image": image, "args": ["httpd", "8080", "/health"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "volumeMounts": [{"name": "health", "mountPath": "/health"}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                                   "periodSeconds": 1, "failureThreshold": 1}
            }]
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;

    // Running, but not ready: the probe gets 404 until the file exists.
    let pod = wait_pod(&pods, "web", "running, not ready", |p| {
        phase(p) == "Running" && status_of(p, "web").is_some_and(|s| s.started == Some(true))
    })
    .await?;
    assert!(!status_of(&pod, "web").context("status")?.ready);
    let failed = wait_event(c, "web", "Unhealthy").await?;
    assert_eq!(
        failed.message.as_deref(),
        Some("Readiness probe failed: HTTP probe failed with statuscode: 404")
    );
    let pod = pods.get("web").await?;
    assert_eq!(
        ready_condition(&pod),
        Some((
            "False".into(),
            Some("containers with unready status: [web]".into())
        ))
    );
    wait_ready_endpoints(c, "web", 0).await?;

    std::fs::write(health.path().join("ready"), "ok")?;
    wait_pod(&pods, "web", "ready", is_ready).await?;
    wait_ready_endpoints(c, "web", 1).await?;

    std::fs::remove_file(health.path().join("ready"))?;
    let pod = wait_pod(&pods, "web", "not ready again", |p| !is_ready(p)).await?;
    assert_eq!(phase(&pod), "Running");
    assert_eq!(
        status_of(&pod, "web").context("status")?.restart_count,
        0,
        "readiness never restarts"
    );
    wait_ready_endpoints(c, "web", 0).await?;
    // Repeated failures fold into one event with a count, as the kubelet's recorder does.
    let folded = crate::t50_wasmlet::wait_for_event_count(c, "web", "Unhealthy", 2).await?;
    assert!(folded.count.unwrap_or(0) >= 2);
    node.stop().await
}

#[tokio::test]
async fn liveness_and_startup_probes_restart_a_container() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let health = tempfile::tempdir()?;
    std::fs::write(health.path().join("alive"), "yes")?;
    let c = &cluster.client;
    let pods = create_pod(
        c,
        &node.name,
        "live",
        json!({
            "volumes": [{"name": "health", "hostPath": {"path": health.path(), "type": "Directory"}}],
            "containers": [{
                "name": "web", "image": image, "args": ["httpd", "8080", "/health"],
                "volumeMounts": [{"name": "health", "mountPath": "/health"}],
                "startupProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                "livenessProbe": {"exec": {"command": ["/toolbox", "cat", "/health/alive"]},
                                  "periodSeconds": 1, "failureThreshold": 2}
            }]
        }),
    )
    .await?;
    // The startup probe passes (TCP), then liveness (exec) keeps passing: started and ready.
    wait_pod(&pods, "live", "started and ready", |p| {
        status_of(p, "web").is_some_and(|s| s.started == Some(true) && s.ready)
    })
    .await?;

    std::fs::remove_file(health.path().join("alive"))?;
    let killing = wait_event(c, "live", "Killing").await?;
    assert_eq!(
        killing.message.as_deref(),
        Some("Container web failed liveness probe, will be restarted")
    );
    let unhealthy = events(c, "live")
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("Unhealthy"))
        .context("an Unhealthy event")?;
    let message = unhealthy.message.unwrap_or_default();
    assert!(
        message.starts_with("Liveness probe failed: toolbox cat:"),
        "the exec probe's output: {message}"
    );
    std::fs::write(health.path().join("alive"), "yes")?;
    let pod = wait_pod(&pods, "live", "restarted and ready again", |p| {
        status_of(p, "web").is_some_and(|s| s.restart_count >= 1 && s.ready)
    })
    .await?;
    let last = status_of(&pod, "web")
        .and_then(|s| s.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .context("lastState.terminated")?;
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (137, Some("Error"))
    );

    // A startup probe that never passes: killed, and with restartPolicy Never the pod fails.
    let pods = create_pod(
        c,
        &node.name,
        "nostart",
        json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "web", "image": image, "args": ["forever"],
                "startupProbe": {"httpGet": {"port": 9999, "path": "/up"},
                                 "periodSeconds": 1, "failureThreshold": 2}
            }]
        }),
    )
    .await?;
    let pod = wait_pod(&pods, "nostart", "failed", |p| phase(p) == "Failed").await?;
    let status = status_of(&pod, "web").context("status")?;
    assert_eq!(status.started, Some(false));
    let term = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .context("terminated")?;
    assert_eq!(term.exit_code, 137);
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("podIP")?;
    let want = format!(
        "Startup probe failed: Get \"http://{ip}:9999/up\": dial tcp {ip}:9999: connect: connection refused"
    );
    let killed = "Container web failed startup probe, will be restarted";
    // Events are posted in the background: wait for both rather than read once.
    wasmkube_tests::wait_for(
        "the startup probe's events",
        std::time::Duration::from_secs(30),
        || async {
            let messages: Vec<String> = events(c, "nostart")
                .await
                .into_iter()
                .filter_map(|e| e.message)
                .collect();
            (messages.contains(&want) && messages.iter().any(|m| m == killed)).then_some(())
        },
    )
    .await?;
    node.stop().await
}
