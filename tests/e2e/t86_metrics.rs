//! Resource metrics end to end: the wasmlet accounts each container's CPU time and memory,
//! the API server answers `metrics.k8s.io/v1beta1` from the nodes' summaries, and `kubectl
//! top` (1.27 and 1.33 where installed) shows them. A CPU-spinning pod with a 500m limit shows
//! about its limit.

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use wasmkube_api::metrics::{NodeMetrics, PodMetrics};
use wasmkube_api::quantity::{bytes, millicores};
use wasmkube_tests::{Cluster, wait_for};

use crate::t50_wasmlet::{phase, wait_pod};

const SLOW: Duration = Duration::from_secs(60);

fn usage(m: &PodMetrics, container: &str, resource: &str) -> Option<u64> {
    let q = m
        .containers
        .iter()
        .find(|c| c.name == container)?
        .usage
        .get(resource)?;
    if resource == "cpu" {
        millicores(q)
    } else {
        bytes(q)
    }
}

#[tokio::test]
async fn resource_metrics_should_show_what_pods_use_through_the_api_and_kubectl_top() -> Result<()>
{
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let spin = cluster.push_sample("cpuspin").await?;
    let toolbox = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    for (name, app, spec) in [
        (
            "spin",
            "burn",
            json!({"containers": [{"name": "spin", "image": spin,
                "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}]}),
        ),
        (
            "idle",
            "rest",
            json!({"containers": [
                {"name": "a", "image": toolbox, "args": ["forever"]},
                {"name": "b", "image": toolbox, "args": ["forever"]}]}),
        ),
    ] {
        let mut spec = spec;
        spec["nodeName"] = json!(node.name);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app}}, "spec": spec}))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    wait_pod(&pods, "spin", "running", |p| phase(p) == "Running").await?;
    wait_pod(&pods, "idle", "running", |p| phase(p) == "Running").await?;

    // The spinning container uses about its limit; the API reads as metrics-server's.
    let metrics: Api<PodMetrics> = Api::namespaced(c.clone(), "default");
    let spun = wait_for("spin at about its 500m limit", SLOW, || async {
        let m = metrics.get("spin").await.ok()?;
        let cpu = usage(&m, "spin", "cpu")?;
        (350..=650).contains(&cpu).then_some(m)
    })
    .await?;
    let memory = usage(&spun, "spin", "memory").unwrap_or(0);
    ensure!(
        memory > 0 && memory <= 64 << 20,
        "spin's memory is its linear memory, within its limit: {memory}"
    );
    ensure!(spun.timestamp.is_some() && spun.window.ends_with('s'));
    assert_eq!(
        spun.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app"))
            .map(String::as_str),
        Some("burn")
    );

    // Idle containers: both listed, memory held, next to no CPU.
    let idle = metrics.get("idle").await?;
    let names: Vec<&str> = idle.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    for c in ["a", "b"] {
        ensure!(
            usage(&idle, c, "memory").unwrap_or(0) > 0,
            "{c} holds memory"
        );
        ensure!(
            usage(&idle, c, "cpu").unwrap_or(u64::MAX) < 100,
            "{c} is idle"
        );
    }

    // Label and field selectors, and the errors metrics-server gives.
    let burning = metrics
        .list(&ListParams::default().labels("app=burn"))
        .await?;
    let listed: Vec<_> = burning
        .items
        .iter()
        .filter_map(|m| m.metadata.name.clone())
        .collect();
    assert_eq!(listed, ["spin"]);
    let by_name = metrics
        .list(&ListParams::default().fields("metadata.name=idle"))
        .await?;
    assert_eq!(by_name.items.len(), 1);
    match metrics.get("nope").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 404);
            assert!(
                s.message
                    .contains("podmetrics.metrics.k8s.io \"default/nope\" not found"),
                "{}",
                s.message
            );
        }
        other => anyhow::bail!("a missing pod's metrics: {other:?}"),
    }
    let (code, _) = wasmkube_tests::raw(
        &cluster.client,
        "GET",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?watch=true",
        "application/json",
        "application/json",
        b"",
    )
    .await?;
    assert_eq!(code, 405, "metrics cannot be watched");

    // The node: the machine's usage.
    let nodes: Api<NodeMetrics> = Api::all(c.clone());
    let n1 = nodes.get(&node.name).await?;
    let cpu = n1.usage.get("cpu").and_then(millicores).unwrap_or(0);
    let mem = n1.usage.get("memory").and_then(bytes).unwrap_or(0);
    ensure!(cpu > 0 && mem > 0, "node usage: {:?}", n1.usage);

    // kubectl top, oldest and newest installed.
    let versions = crate::t40_kubectl::kubectl_versions();
    let chosen: Vec<_> = versions
        .iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "kubectl.1.27" || n == "kubectl.1.33")
        })
        .cloned()
        .collect();
    let kubectls = if chosen.is_empty() {
        wasmkube_tests::kubectl().into_iter().collect()
    } else {
        chosen
    };
    if kubectls.is_empty() {
        eprintln!("SKIPPED: kubectl is not installed; kubectl top not exercised");
    }
    for kubectl in kubectls {
        let run = |args: &[&str]| {
            tokio::process::Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&cluster.kubeconfig)
                .args(args)
                .output()
        };
        let out = run(&["top", "pods", "--containers"]).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "{}: {}",
            kubectl.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{} top pods --containers:\n{text}", kubectl.display());
        // POD NAME CPU(cores) MEMORY(bytes)
        let spin_line = text
            .lines()
            .find(|l| l.starts_with("spin "))
            .unwrap_or_default();
        let cols: Vec<&str> = spin_line.split_whitespace().collect();
        ensure!(
            cols.len() == 4 && cols[1] == "spin",
            "{}:\n{text}",
            kubectl.display()
        );
        let shown: u64 = cols[2].trim_end_matches('m').parse().unwrap_or(0);
        ensure!(
            (250..=700).contains(&shown),
            "{} shows spin at {}:\n{text}",
            kubectl.display(),
            cols[2]
        );
        ensure!(
            text.lines().filter(|l| l.starts_with("idle ")).count() == 2,
            "{text}"
        );

        let out = run(&["top", "nodes"]).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "{}: {}",
            kubectl.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{} top nodes:\n{text}", kubectl.display());
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{} ", node.name)))
            .unwrap_or_default();
        ensure!(
            line.contains('%') && !line.contains("<unknown>"),
            "{}:\n{text}",
            kubectl.display()
        );
        let out = run(&["top", "pod", "-l", "app=rest"]).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            text.contains("idle") && !text.contains("spin"),
            "{}:\n{text}{}",
            kubectl.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cluster.stop().await
}

/// The samples of a `/metrics` answer, parsed as Prometheus text.
fn parse_metrics(text: &str) -> Result<prometheus_parse::Scrape> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    Ok(prometheus_parse::Scrape::parse(lines)?)
}

fn names(scrape: &prometheus_parse::Scrape) -> std::collections::BTreeSet<&str> {
    scrape.samples.iter().map(|s| s.metric.as_str()).collect()
}

async fn get_text(cluster: &Cluster, path: &str) -> Result<String> {
    let (code, body) = wasmkube_tests::raw(&cluster.client, "GET", path, "", "*/*", b"").await?;
    ensure!(code == 200, "GET {path}: {code} {body}");
    Ok(body
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string()))
}

#[tokio::test]
async fn every_component_should_expose_prometheus_metrics_with_kubernetes_names() -> Result<()> {
    let cluster = Cluster::start_with_control_plane().await?;
    let node = cluster.start_node("n1").await?;
    let (dns, _dns) = cluster.start_dns().await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;

    // A Deployment: the controllers make its pod, the scheduler binds it, the wasmlet runs it.
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(c.clone(), "default");
    deploys
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "app", "image": image, "args": ["forever"]}]}}}
            }))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let running = wait_for("the deployment's pod running", SLOW, || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        list.items.into_iter().find(|p| phase(p) == "Running")
    })
    .await?;
    let pod_name = running.metadata.name.clone().unwrap_or_default();
    let resolver = crate::t70_network::dns_client(dns)?;
    let _ = resolver
        .lookup_ip("kubernetes.default.svc.cluster.local.")
        .await?;

    // The API server's /metrics: in one process, every component's families.
    let text = get_text(&cluster, "/metrics").await?;
    let scrape = parse_metrics(&text)?;
    let found = names(&scrape);
    for name in [
        "apiserver_request_total",
        "apiserver_request_duration_seconds",
        "apiserver_longrunning_requests",
        "etcd_request_duration_seconds",
        "scheduler_schedule_attempts_total",
        "scheduler_scheduling_attempt_duration_seconds",
        "workqueue_work_duration_seconds",
        "controller_runtime_reconcile_total",
        "kubelet_pod_start_duration_seconds",
        "kubelet_running_pods",
        "wasmkube_instantiations_total",
        "coredns_dns_requests_total",
        "coredns_dns_responses_total",
    ] {
        ensure!(
            found.contains(name),
            "{name} missing from /metrics: {found:?}"
        );
    }
    let started = scrape
        .samples
        .iter()
        .find(|s| s.metric == "kubelet_pod_start_duration_seconds")
        .map(|s| &s.value);
    ensure!(
        matches!(started, Some(prometheus_parse::Value::Histogram(b)) if b.iter().any(|b| b.count >= 1.0)),
        "the pod's start is in the histogram: {started:?}"
    );
    let scheduled = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "scheduler_schedule_attempts_total"
                && s.labels.get("result") == Some("scheduled")
        })
        .map(|s| &s.value);
    ensure!(
        matches!(scheduled, Some(prometheus_parse::Value::Counter(n)) if *n >= 1.0),
        "the scheduler counted its binding: {scheduled:?}"
    );
    let created = scrape.samples.iter().any(|s| {
        s.metric == "apiserver_request_total"
            && s.labels.get("verb") == Some("POST")
            && s.labels.get("resource") == Some("deployments")
            && s.labels.get("code") == Some("201")
    });
    ensure!(created, "the Deployment's create is counted:\n{text}");
    let noerror = scrape.samples.iter().any(|s| {
        s.metric == "coredns_dns_responses_total" && s.labels.get("rcode") == Some("NOERROR")
    });
    ensure!(noerror, "the DNS answer is counted");

    // The wasmlet's own endpoints, through the API server's node proxy, as kubectl reads them.
    let node_metrics = get_text(
        &cluster,
        &format!("/api/v1/nodes/{}/proxy/metrics", node.name),
    )
    .await?;
    ensure!(names(&parse_metrics(&node_metrics)?).contains("kubelet_running_pods"));
    let resource = get_text(
        &cluster,
        &format!("/api/v1/nodes/{}/proxy/metrics/resource", node.name),
    )
    .await?;
    let resource = parse_metrics(&resource)?;
    ensure!(
        resource
            .samples
            .iter()
            .any(|s| s.metric == "container_cpu_usage_seconds_total"
                && s.labels.get("pod") == Some(pod_name.as_str())),
        "{pod_name}'s CPU at /metrics/resource"
    );
    match wasmkube_tests::kubectl() {
        None => eprintln!("SKIPPED: kubectl is not installed; kubectl get --raw not exercised"),
        Some(kubectl) => {
            let out = tokio::process::Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&cluster.kubeconfig)
                .args(["get", "--raw", "/metrics"])
                .output()
                .await?;
            ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(names(&parse_metrics(&text)?).contains("apiserver_request_total"));
        }
    }
    cluster.stop().await
}
