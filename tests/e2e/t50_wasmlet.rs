//! The wasmlet end to end: a real API server, a real wasmlet, the sample guests pushed to the
//! cluster registry, and everything observed through the Kubernetes API with kube-rs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Event, Node, Pod, Secret};
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde_json::json;
use wasmkube_tests::{Cluster, wait_for};

const SLOW: Duration = Duration::from_secs(60);

pub(crate) async fn create_pod(
    client: &Client,
    node: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<Api<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut spec = spec;
    spec["nodeName"] = json!(node);
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
    pods.create(&PostParams::default(), &pod).await?;
    Ok(pods)
}

pub(crate) async fn wait_pod(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    check: impl Fn(&Pod) -> bool,
) -> Result<Pod> {
    wait_for(&format!("pod {name}: {what}"), SLOW, || async {
        let pod = pods.get_opt(name).await.ok().flatten()?;
        check(&pod).then_some(pod)
    })
    .await
}

pub(crate) fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

pub(crate) fn status_of<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)
}

fn waiting_reason(pod: &Pod, container: &str) -> Option<String> {
    status_of(pod, container)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

pub(crate) async fn events(client: &Client, pod: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    let lp = ListParams::default().fields(&format!("involvedObject.name={pod}"));
    api.list(&lp).await.map(|l| l.items).unwrap_or_default()
}

pub(crate) async fn wait_event(client: &Client, pod: &str, reason: &str) -> Result<Event> {
    wait_for(&format!("a {reason} event on {pod}"), SLOW, || async {
        events(client, pod)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
    })
    .await
}

async fn logs(pods: &Api<Pod>, name: &str, params: &LogParams) -> Result<String> {
    Ok(pods.logs(name, params).await?)
}

#[tokio::test]
async fn the_node_registers_with_wasm_labels_capacity_and_a_lease() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("wasm-1").await?;
    let n: Node = Api::all(cluster.client.clone()).get("wasm-1").await?;
    let labels = n.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("wasi")
    );
    assert_eq!(
        labels.get("kubernetes.io/arch").map(String::as_str),
        Some("wasm32")
    );
    let status = n.status.context("status")?;
    assert_eq!(
        status
            .capacity
            .as_ref()
            .and_then(|c| c.get("pods"))
            .map(|q| q.0.as_str()),
        Some("64")
    );
    assert!(
        status
            .allocatable
            .as_ref()
            .is_some_and(|a| a.contains_key("memory") && a.contains_key("cpu"))
    );
    let info = status.node_info.context("nodeInfo")?;
    assert_eq!(
        (info.operating_system.as_str(), info.architecture.as_str()),
        ("wasi", "wasm32")
    );
    assert!(
        info.container_runtime_version.starts_with("wasmtime://"),
        "{}",
        info.container_runtime_version
    );
    assert!(
        info.os_image.contains("wasi:http/proxy"),
        "{}",
        info.os_image
    );
    let conditions = status.conditions.unwrap_or_default();
    for (t, s) in [
        ("Ready", "True"),
        ("MemoryPressure", "False"),
        ("DiskPressure", "False"),
        ("PIDPressure", "False"),
    ] {
        assert!(
            conditions.iter().any(|c| c.type_ == t && c.status == s),
            "{t}={s} in {conditions:?}"
        );
    }
    assert!(
        status
            .addresses
            .unwrap_or_default()
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == node.address.to_string())
    );

    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let lease = wait_for("the node lease", SLOW, || async {
        leases.get_opt("wasm-1").await.ok().flatten()
    })
    .await?;
    let spec = lease.spec.context("lease spec")?;
    assert_eq!(spec.holder_identity.as_deref(), Some("wasm-1"));
    assert!(spec.renew_time.is_some());
    assert_eq!(
        lease.metadata.owner_references.unwrap_or_default()[0].kind,
        "Node"
    );
    node.stop().await
}

#[tokio::test]
async fn a_job_style_pod_runs_to_completion_with_events_and_logs() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("hello").await?;
    let p1 = cluster.push_sample("hello-p1").await?;
    let spec = json!({"restartPolicy": "Never", "containers": [
        {"name": "hello", "image": image, "args": ["one", "two"], "env": [{"name": "GREETING_TARGET", "value": "e2e"}]}]});
    let pods = create_pod(&cluster.client, &node.name, "hello", spec).await?;
    create_pod(
        &cluster.client,
        &node.name,
        "hello-p1",
        json!({"restartPolicy": "Never", "containers": [{"name": "hello", "image": p1}]}),
    )
    .await?;
    let pod = wait_pod(&pods, "hello", "Succeeded", |p| phase(p) == "Succeeded").await?;
    let cs = status_of(&pod, "hello").context("container status")?;
    let term = cs
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .context("terminated")?;
    assert_eq!(
        (term.exit_code, term.reason.as_deref()),
        (0, Some("Completed"))
    );
    assert!(cs.image_id.contains("@sha256:"), "imageID {}", cs.image_id);
    let status = pod.status.as_ref().context("status")?;
    assert!(
        status.start_time.is_some()
            && status.pod_ip.is_some()
            && status.host_ip == Some(node.address.to_string())
    );
    assert_eq!(
        logs(&pods, "hello", &LogParams::default()).await?,
        "Hello, e2e!\nargs: one two\n"
    );
    for reason in ["Pulling", "Pulled", "Created", "Started"] {
        wait_event(&cluster.client, "hello", reason).await?;
    }
    let started = wait_event(&cluster.client, "hello", "Started").await?;
    assert_eq!(
        started.involved_object.field_path.as_deref(),
        Some("spec.containers{hello}")
    );
    assert_eq!(
        started.source.and_then(|s| s.component).as_deref(),
        Some("kubelet")
    );

    wait_pod(&pods, "hello-p1", "a wasip1 module runs too", |p| {
        phase(p) == "Succeeded"
    })
    .await?;
    assert_eq!(
        logs(&pods, "hello-p1", &LogParams::default()).await?,
        "Hello, wasmkube!\n"
    );
    node.stop().await
}

#[tokio::test]
async fn env_config_maps_secrets_and_volumes_reach_the_guest() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
        "metadata": {"name": "settings"}, "data": {"greeting": "hi there", "color": "blue"}}))?,
    )
    .await?;
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
        "metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}}))?,
        )
        .await?;
    let spec = json!({
        "restartPolicy": "Never",
        "volumes": [
            {"name": "cfg", "configMap": {"name": "settings"}},
            {"name": "sec", "secret": {"secretName": "creds"}},
            {"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "proj", "projected": {"sources": [
                {"configMap": {"name": "settings", "items": [{"key": "greeting", "path": "g"}]}},
                {"secret": {"name": "creds", "items": [{"key": "password", "path": "p"}]}},
                {"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}}
            ]}}
        ],
        "containers": [{
            "name": "tool", "image": image,
            "args": ["env", "--", "cat", "/etc/cfg/greeting", "/etc/sec/password", "/etc/info/name", "--",
                     "cat", "/etc/proj/n", "/etc/proj/g", "/etc/proj/p", "--",
                     "write", "/scratch/f", "$(GREETING)", "--", "cat", "/scratch/f", "--", "write", "/etc/cfg/x", "no"],
            "env": [
                {"name": "PLAIN", "value": "value-$(POD_NAME)"},
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}
            ],
            "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "settings"}}],
            "resources": {"limits": {"memory": "48Mi"}},
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg"},
                {"name": "sec", "mountPath": "/etc/sec"},
                {"name": "info", "mountPath": "/etc/info"},
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "proj", "mountPath": "/etc/proj"}
            ]
        }]
    });
    let pods = create_pod(c, &node.name, "tool", spec).await?;
    // The last command writes into a read-only configMap volume, so the pod fails — after
    // everything else has printed.
    let pod = wait_pod(&pods, "tool", "finished", |p| phase(p) == "Failed").await?;
    let out = logs(&pods, "tool", &LogParams::default()).await?;
    let ip = pod.status.and_then(|s| s.pod_ip).context("podIP")?;
    for line in [
        "PLAIN=value-$(POD_NAME)".to_owned(), // only earlier variables expand, as in Kubernetes
        "GREETING=hi there".into(),
        "PASSWORD=s3cret".into(),
        "POD_NAME=tool".into(),
        "POD_NS=default".into(),
        "NODE=n1".into(),
        format!("POD_IP={ip}"),
        "MEM_MI=48".into(),
        "CFG_color=blue".into(),
        "CFG_greeting=hi there".into(),
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} in:\n{out}");
    }
    assert!(
        out.contains("hi theres3crettool\n"),
        "file contents in:\n{out}"
    );
    assert!(
        out.contains("toolhi theres3cret\n"),
        "a projected volume's three sources in:\n{out}"
    );
    assert!(
        out.contains("hi there\n\ntoolbox write: Operation not permitted"),
        "emptyDir is writable, configMap is not:\n{out}"
    );
    node.stop().await
}

#[tokio::test]
async fn a_crash_loop_backs_off_with_growing_delays() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("crashloop").await?;
    let spec = json!({"containers": [{"name": "crash", "image": image, "env": [{"name": "CRASH_AFTER_MS", "value": "50"}]}]});
    let pods = create_pod(&cluster.client, &node.name, "crash", spec).await?;
    // Record when each restart becomes visible; with a 1 s initial back-off doubling to 4 s the
    // gaps grow: ~0 (first restart is immediate), ~1 s, ~2 s, ~4 s.
    let mut seen: Vec<(i32, Instant)> = Vec::new();
    let mut saw_backoff = false;
    let mut updates = kube::runtime::watcher(
        pods.clone(),
        kube::runtime::watcher::Config::default().fields("metadata.name=crash"),
    )
    .applied_objects()
    .boxed();
    let deadline = Instant::now() + SLOW;
    while seen.last().is_none_or(|(n, _)| *n < 4) {
        let left = deadline.saturating_duration_since(Instant::now());
        let pod = match tokio::time::timeout(left, updates.try_next()).await {
            Ok(Ok(Some(pod))) => pod,
            other => {
                anyhow::bail!("no more pod updates ({other:?}); restarts seen so far: {seen:?}")
            }
        };
        if let Some(cs) = status_of(&pod, "crash") {
            saw_backoff |= waiting_reason(&pod, "crash").as_deref() == Some("CrashLoopBackOff");
            if seen.last().is_none_or(|(n, _)| cs.restart_count > *n) {
                seen.push((cs.restart_count, Instant::now()));
            }
        }
    }
    assert!(saw_backoff, "the pod showed CrashLoopBackOff");
    let at = |n: i32| seen.iter().find(|(c, _)| *c == n).map(|(_, t)| *t);
    let (t2, t3, t4) = (
        at(2).context("restart 2")?,
        at(3).context("restart 3")?,
        at(4).context("restart 4")?,
    );
    let (gap3, gap4) = (t3 - t2, t4 - t3);
    assert!(
        gap3 >= Duration::from_millis(1500),
        "second back-off ~2 s, got {gap3:?}"
    );
    assert!(
        gap4 > gap3 + Duration::from_millis(800),
        "back-off grows: {gap3:?} then {gap4:?}"
    );
    let pod = pods.get("crash").await?;
    assert_eq!(phase(&pod), "Running", "a crash-looping pod is Running");
    let last = status_of(&pod, "crash")
        .and_then(|c| c.last_state.clone())
        .and_then(|s| s.terminated)
        .context("lastState")?;
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    wait_event(&cluster.client, "crash", "BackOff").await?;
    let previous = logs(
        &pods,
        "crash",
        &LogParams {
            previous: true,
            ..Default::default()
        },
    )
    .await?;
    assert!(previous.contains("exiting with status 1"), "{previous}");
    node.stop().await
}

#[tokio::test]
async fn limits_stop_a_memory_hog_and_throttle_a_spinner_while_the_node_carries_on() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let (hog, spin, hello) = (
        cluster.push_sample("memhog").await?,
        cluster.push_sample("cpuspin").await?,
        cluster.push_sample("hello").await?,
    );
    let c = &cluster.client;
    let pods = create_pod(c, &node.name, "hog", json!({"restartPolicy": "Never",
        "containers": [{"name": "hog", "image": hog, "resources": {"limits": {"memory": "16Mi"}}}]})).await?;
    create_pod(c, &node.name, "slow", json!({"containers": [{"name": "spin", "image": spin, "resources": {"limits": {"cpu": "200m"}}}]})).await?;
    create_pod(
        c,
        &node.name,
        "fast",
        json!({"containers": [{"name": "spin", "image": spin}]}),
    )
    .await?;

    let pod = wait_pod(&pods, "hog", "OOMKilled", |p| phase(p) == "Failed").await?;
    let term = status_of(&pod, "hog")
        .and_then(|c| c.state.clone())
        .and_then(|s| s.terminated)
        .context("terminated")?;
    assert_eq!(
        (term.exit_code, term.reason.as_deref()),
        (137, Some("OOMKilled"))
    );
    assert!(
        logs(&pods, "hog", &LogParams::default())
            .await?
            .contains("holding 8 MiB")
    );

    // Each spinner prints its work rate once a second; compare the last few.
    let rates = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let out = pods.logs(name, &LogParams::default()).await.ok()?;
            let rates: Vec<f64> = out
                .lines()
                .filter_map(|l| l.strip_prefix("rate ")?.split(' ').next()?.parse().ok())
                .collect();
            (rates.len() >= 3).then(|| rates[1..].iter().sum::<f64>() / (rates.len() - 1) as f64)
        }
    };
    let slow = wait_for("throttled spinner rates", SLOW, || rates("slow")).await?;
    let fast = wait_for("unthrottled spinner rates", SLOW, || rates("fast")).await?;
    assert!(
        slow < fast * 0.6,
        "200m spinner {slow:.0}/s vs unlimited {fast:.0}/s"
    );

    // The wasmlet kept going: a new pod still runs to completion.
    create_pod(
        c,
        &node.name,
        "after",
        json!({"restartPolicy": "Never", "containers": [{"name": "hello", "image": hello}]}),
    )
    .await?;
    wait_pod(&pods, "after", "Succeeded", |p| phase(p) == "Succeeded").await?;
    node.stop().await
}

#[tokio::test]
async fn traps_bad_images_and_missing_images_are_reported() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let toolbox = cluster.push_sample("toolbox").await?;
    cluster
        .push(
            "not-wasm:v1",
            b"#!/bin/sh\necho this is a shell script\n".to_vec(),
        )
        .await?;
    let c = &cluster.client;
    let pods = create_pod(
        c,
        &node.name,
        "trap",
        json!({"restartPolicy": "Never",
        "containers": [{"name": "t", "image": toolbox, "args": ["panic", "guest", "gave", "up"]}]}),
    )
    .await?;
    create_pod(
        c,
        &node.name,
        "bad",
        json!({"containers": [{"name": "b", "image": "not-wasm:v1"}]}),
    )
    .await?;
    create_pod(
        c,
        &node.name,
        "missing",
        json!({"containers": [{"name": "m", "image": "does-not-exist:v1"}]}),
    )
    .await?;

    let pod = wait_pod(&pods, "trap", "Failed", |p| phase(p) == "Failed").await?;
    let term = status_of(&pod, "t")
        .and_then(|c| c.state.clone())
        .and_then(|s| s.terminated)
        .context("terminated")?;
    assert_eq!(
        (term.exit_code, term.reason.as_deref()),
        (134, Some("Error"))
    );
    assert!(
        term.message
            .as_deref()
            .is_some_and(|m| m.contains("unreachable")),
        "{:?}",
        term.message
    );
    assert!(
        logs(&pods, "trap", &LogParams::default())
            .await?
            .contains("guest gave up")
    );
    let failed = wait_event(c, "trap", "Failed").await?;
    assert!(failed.message.unwrap_or_default().contains("trapped"));

    let pod = wait_pod(&pods, "bad", "CreateContainerError", |p| {
        waiting_reason(p, "b").as_deref() == Some("CreateContainerError")
    })
    .await?;
    let msg = status_of(&pod, "b")
        .and_then(|c| c.state.clone())
        .and_then(|s| s.waiting)
        .and_then(|w| w.message);
    assert!(
        msg.as_deref()
            .is_some_and(|m| m.contains("not a WebAssembly binary")),
        "{msg:?}"
    );
    let event = wait_event(c, "bad", "Failed").await?;
    assert!(
        event
            .message
            .unwrap_or_default()
            .contains("not a WebAssembly binary")
    );

    wait_pod(&pods, "missing", "ErrImagePull", |p| {
        waiting_reason(p, "m").as_deref() == Some("ErrImagePull")
    })
    .await?;
    wait_pod(&pods, "missing", "ImagePullBackOff", |p| {
        waiting_reason(p, "m").as_deref() == Some("ImagePullBackOff")
    })
    .await?;
    let event = wait_event(c, "missing", "Failed").await?;
    assert!(event.message.unwrap_or_default().contains("does-not-exist"));
    assert_eq!(phase(&pods.get("missing").await?), "Pending");
    node.stop().await
}

#[tokio::test]
async fn deleting_a_pod_stops_its_instance_within_the_grace_period() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let spin = cluster.push_sample("cpuspin").await?;
    let pods = create_pod(
        &cluster.client,
        &node.name,
        "spin",
        json!({"terminationGracePeriodSeconds": 30,
        "containers": [{"name": "spin", "image": spin}]}),
    )
    .await?;
    wait_pod(&pods, "spin", "Running", |p| phase(p) == "Running").await?;
    let asked = Instant::now();
    pods.delete("spin", &DeleteParams::default()).await?;
    wait_for("the pod to be removed", Duration::from_secs(30), || async {
        matches!(pods.get_opt("spin").await, Ok(None)).then_some(())
    })
    .await?;
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "removed within the grace period ({:?})",
        asked.elapsed()
    );
    wait_event(&cluster.client, "spin", "Killing").await?;
    node.stop().await
}

#[tokio::test]
async fn an_http_pod_serves_each_request_on_its_pod_ip() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("http-hello").await?;
    let pods = create_pod(
        &cluster.client,
        &node.name,
        "web",
        json!({"containers": [
        {"name": "http", "image": image, "ports": [{"containerPort": 8080}]}]}),
    )
    .await?;
    let pod = wait_pod(&pods, "web", "Ready", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await?;
    let ip: std::net::Ipv4Addr = pod
        .status
        .and_then(|s| s.pod_ip)
        .context("podIP")?
        .parse()?;
    assert!(
        "10.244.0.0/16".parse::<ipnet::Ipv4Net>()?.contains(&ip),
        "pod IPs come from the node's podCIDR: {ip}"
    );
    let addr = node.backing(&cluster.client, ip, 8080).await?;
    for path in ["/a", "/b?c=d"] {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut conn, req.as_bytes()).await?;
        let mut resp = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut resp).await?;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(
            resp.contains(&format!("Hello from wasmkube! GET {path}\n")),
            "{resp}"
        );
    }

    tracing::info!("--- two containers of one pod on one port: the node fails the second start");
    let port = json!([{"containerPort": 8080}]);
    create_pod(
        &cluster.client,
        &node.name,
        "clash",
        json!({"containers": [
            {"name": "a", "image": image, "ports": port},
            {"name": "b", "image": image, "ports": port}]}),
    )
    .await?;
    let pod = wait_pod(&pods, "clash", "one container RunContainerError", |p| {
        ["a", "b"]
            .iter()
            .any(|c| waiting_reason(p, c).as_deref() == Some("RunContainerError"))
    })
    .await?;
    let (failed, other) = if waiting_reason(&pod, "a").as_deref() == Some("RunContainerError") {
        ("a", "b")
    } else {
        ("b", "a")
    };
    let waiting = status_of(&pod, failed)
        .and_then(|c| c.state.clone())
        .and_then(|s| s.waiting)
        .context("waiting")?;
    assert!(
        waiting
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("cannot listen on") && m.contains(":8080")),
        "the node's reason, not a guest trap: {waiting:?}"
    );
    let running = status_of(&pod, other).and_then(|c| c.state.clone());
    assert!(
        running.is_some_and(|s| s.running.is_some()),
        "the other container serves"
    );
    assert_eq!(
        status_of(&pod, failed).map(|c| c.restart_count),
        Some(0),
        "a start the node failed is not a restart"
    );
    let event = wait_for("the Failed event", SLOW, || async {
        events(&cluster.client, "clash")
            .await
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("Failed")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.starts_with("Error: cannot listen on"))
            })
    })
    .await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    node.stop().await
}

#[tokio::test]
async fn a_tcp_server_listens_on_its_pod_ip_and_two_pods_share_a_port() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("tcp-echo").await?;
    let mut ips = Vec::new();
    for name in ["echo-a", "echo-b"] {
        let pods = create_pod(&cluster.client, &node.name, name, json!({"containers": [
            {"name": "echo", "image": image, "env": [{"name": "PORT", "value": "7000"}], "ports": [{"containerPort": 7000}]}]})).await?;
        let pod = wait_pod(&pods, name, "Running", |p| phase(p) == "Running").await?;
        ips.push(
            pod.status
                .and_then(|s| s.pod_ip)
                .context("podIP")?
                .parse::<std::net::Ipv4Addr>()?,
        );
    }
    assert_ne!(ips[0], ips[1]);
    for ip in ips {
        let addr = node.backing(&cluster.client, ip, 7000).await?;
        let mut conn = wait_for("the echo server to listen", SLOW, || async {
            tokio::net::TcpStream::connect(addr).await.ok()
        })
        .await?;
        tokio::io::AsyncWriteExt::write_all(&mut conn, format!("hi {ip}").as_bytes()).await?;
        let mut buf = vec![0u8; format!("hi {ip}").len()];
        tokio::io::AsyncReadExt::read_exact(&mut conn, &mut buf).await?;
        assert_eq!(String::from_utf8(buf)?, format!("hi {ip}"));
    }
    node.stop().await
}

#[tokio::test]
async fn logs_follow_two_containers_sharing_an_empty_dir() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    cluster.push_sample("toolbox").await?;
    let pod: Pod = serde_saphyr::from_str(
        wasmkube_samples::MANIFESTS
            .iter()
            .find(|(f, _)| *f == "shared-volume.yaml")
            .context("sample")?
            .1,
    )?;
    let mut spec = serde_json::to_value(pod.spec)?;
    spec["nodeName"] = json!(node.name);
    let pods = create_pod(&cluster.client, &node.name, "shared-volume", spec).await?;
    wait_pod(&pods, "shared-volume", "Running", |p| phase(p) == "Running").await?;

    let params = LogParams {
        container: Some("consumer".into()),
        follow: true,
        ..Default::default()
    };
    let mut lines = pods.log_stream("shared-volume", &params).await?.lines();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while got.len() < 4 {
            match lines.try_next().await {
                Ok(Some(line)) => got.push(line),
                _ => break,
            }
        }
    })
    .await
    .context("following the consumer's log")?;
    assert!(
        got.len() >= 4 && got.iter().all(|l| l.starts_with("message ")),
        "{got:?}"
    );

    let tail = logs(
        &pods,
        "shared-volume",
        &LogParams {
            container: Some("consumer".into()),
            tail_lines: Some(2),
            timestamps: true,
            ..Default::default()
        },
    )
    .await?;
    let tail: Vec<&str> = tail.lines().collect();
    assert_eq!(tail.len(), 2, "{tail:?}");
    assert!(
        tail.iter().all(|l| l
            .split_once(' ')
            .is_some_and(
                |(ts, rest)| ts.parse::<jiff::Timestamp>().is_ok() && rest.starts_with("message ")
            )),
        "{tail:?}"
    );

    let err = pods
        .logs("shared-volume", &LogParams::default())
        .await
        .expect_err("two containers");
    assert!(err.to_string().contains("a container name must be specified for pod shared-volume, choose one of: [producer consumer]"), "{err}");
    node.stop().await
}

/// Waits for a `reason` event on `pod` whose `count` has reached `count`.
pub(crate) async fn wait_for_event_count(
    client: &Client,
    pod: &str,
    reason: &str,
    count: i32,
) -> Result<Event> {
    wait_for(
        &format!("a {reason} event on {pod} counted {count}"),
        SLOW,
        || async {
            events(client, pod)
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason) && e.count.unwrap_or(0) >= count)
        },
    )
    .await
}
