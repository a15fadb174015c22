//! HorizontalPodAutoscaler end to end: an autoscaler on CPU utilization scales a spinning
//! Deployment up to `maxReplicas` from the pods' resource metrics, and back down once the
//! pods idle; its status, conditions and events read as Kubernetes writes them; the v1 view of
//! the same object; `kubectl autoscale` and `kubectl get hpa` where kubectl is installed.

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler as HpaV1;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler as Hpa;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use wasmkube_tests::{Cluster, wait_for};

const SLOW: Duration = Duration::from_secs(120);

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn condition<'a>(hpa: &'a Hpa, type_: &str) -> Option<&'a str> {
    hpa.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// A cluster for the autoscaling tests: one node (`metrics_window` as given, then `adjust`ed),
/// the scheduler, and the controllers evaluating autoscalers every second.
pub(crate) struct Autoscaling {
    pub(crate) cluster: Cluster,
    pub(crate) node: wasmkube_tests::Node,
    _sched: wasmkube_tests::Background,
    _controllers: wasmkube_tests::Background,
}

pub(crate) async fn autoscaling_cluster(
    metrics_window: Duration,
    adjust: impl FnOnce(&mut wasmkube_wasmlet::Config),
) -> Result<Autoscaling> {
    let cluster = Cluster::start().await?;
    let node = cluster
        .start_node_with("n1", |c| {
            c.metrics_window = metrics_window;
            adjust(c);
        })
        .await?;
    let _sched = cluster.start_scheduler();
    let _controllers =
        cluster.start_controllers_with(|c| c.hpa_sync_period = Some(Duration::from_secs(1)));
    Ok(Autoscaling {
        cluster,
        node,
        _sched,
        _controllers,
    })
}

impl Autoscaling {
    /// Stops the cluster (the node and the control plane with it).
    pub(crate) async fn stop(self) -> Result<()> {
        self.cluster.stop().await
    }
}

/// A Deployment `name` of `replicas` pods labelled `app: name`, running `container`.
pub(crate) fn deployment(
    name: &str,
    replicas: i32,
    container: serde_json::Value,
) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [container]}}}
    }))?)
}

#[tokio::test]
async fn an_autoscaler_should_scale_a_spinning_deployment_up_and_an_idle_one_down() -> Result<()> {
    let setup = autoscaling_cluster(Duration::from_secs(2), |_| {}).await?;
    let cluster = &setup.cluster;
    let spin = cluster.push_sample("cpuspin").await?;
    let toolbox = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    deploys
        .create(
            &PostParams::default(),
            &deployment(
                "burn",
                1,
                json!({"name": "app", "image": spin,
                    "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "200m"}}}),
            )?,
        )
        .await?;
    let hpas: Api<Hpa> = Api::namespaced(c.clone(), "default");
    hpas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "burn"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
                "minReplicas": 1, "maxReplicas": 3,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 50}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}
        }))?,
    )
    .await?;

    // ~200% of the request against a 50% target: up to maxReplicas, limited there.
    wait_for("burn scaled up to 3", SLOW, || async {
        let d = deploys.get("burn").await.ok()?;
        (replicas(&d) == 3).then_some(())
    })
    .await?;
    let hpa = wait_for("the autoscaler's status at 3", SLOW, || async {
        let h = hpas.get("burn").await.ok()?;
        let st = h.status.as_ref()?;
        (st.desired_replicas == 3 && st.current_metrics.is_some()).then_some(h)
    })
    .await?;
    assert_eq!(condition(&hpa, "AbleToScale"), Some("True"));
    assert_eq!(condition(&hpa, "ScalingActive"), Some("True"));
    let utilization = hpa
        .status
        .as_ref()
        .and_then(|s| s.current_metrics.as_ref())
        .and_then(|m| m.first())
        .and_then(|m| m.resource.as_ref())
        .and_then(|r| r.current.average_utilization)
        .unwrap_or(0);
    ensure!(
        utilization > 50,
        "spinning pods are above target: {utilization}%"
    );
    ensure!(
        hpa.spec
            .as_ref()
            .and_then(|s| s.behavior.as_ref())
            .is_some(),
        "behavior defaulted"
    );

    // The v1 view of the same object.
    let v1: Api<HpaV1> = Api::namespaced(c.clone(), "default");
    let old = v1.get("burn").await?;
    assert_eq!(
        old.spec
            .as_ref()
            .and_then(|s| s.target_cpu_utilization_percentage),
        Some(50)
    );
    ensure!(
        old.status
            .as_ref()
            .and_then(|s| s.current_cpu_utilization_percentage)
            .is_some()
    );

    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    let rescaled = wait_for("a SuccessfulRescale event", SLOW, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("SuccessfulRescale")
                && e.involved_object.name.as_deref() == Some("burn")
        })
    })
    .await?;
    let note = rescaled.message.unwrap_or_default();
    ensure!(
        note.starts_with("New size: ")
            && note.contains("cpu resource utilization (percentage of request) above target"),
        "{note}"
    );

    if let Some(kubectl) = wasmkube_tests::kubectl() {
        let out = tokio::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(["get", "hpa", "burn"])
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        println!("kubectl get hpa:\n{text}");
        ensure!(
            text.contains("Deployment/burn")
                && text.contains("%/50%")
                && !text.contains("<unknown>"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = tokio::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args([
                "autoscale",
                "deployment",
                "burn",
                "--name",
                "second",
                "--min=1",
                "--max=2",
                "--cpu-percent=80",
            ])
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let second = hpas.get("second").await?;
        assert_eq!(second.spec.as_ref().map(|s| s.max_replicas), Some(2));
        hpas.delete("second", &Default::default()).await?;
    } else {
        eprintln!("SKIPPED: kubectl is not installed; kubectl autoscale/get hpa not exercised");
    }

    // The pods stop spinning: back down to minReplicas.
    deploys
        .patch(
            "burn",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": toolbox, "args": ["forever"]}]}}}})),
        )
        .await?;
    wait_for("burn scaled back down to 1", SLOW, || async {
        let d = deploys.get("burn").await.ok()?;
        (replicas(&d) == 1).then_some(())
    })
    .await?;
    let hpa = hpas.get("burn").await?;
    ensure!(
        hpa.status
            .as_ref()
            .and_then(|s| s.last_scale_time.as_ref())
            .is_some(),
        "lastScaleTime set"
    );
    setup.stop().await
}

#[tokio::test]
async fn an_autoscaler_on_requests_in_flight_should_follow_the_load_of_client_guests() -> Result<()>
{
    let setup = autoscaling_cluster(Duration::from_secs(1), |_| {}).await?;
    let cluster = &setup.cluster;
    let http = cluster.push_sample("http-hello").await?;
    let toolbox = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    deploys
        .create(
            &PostParams::default(),
            &deployment(
                "slow",
                1,
                json!({"name": "web", "image": http, "ports": [{"containerPort": 8080}]}),
            )?,
        )
        .await?;
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(c.clone(), "default");
    let svc = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "slow"},
                "spec": {"selector": {"app": "slow"}, "ports": [{"port": 80, "targetPort": 8080}]}}))?,
        )
        .await?;
    let ip = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    let hpas: Api<Hpa> = Api::namespaced(c.clone(), "default");
    hpas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "slow"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "slow"},
                "minReplicas": 1, "maxReplicas": 4,
                "metrics": [{"type": "Pods", "pods": {"metric": {"name": "http_requests_in_flight"},
                    "target": {"type": "AverageValue", "averageValue": "1"}}},
                    {"type": "External", "external": {"metric": {"name": "http_requests_in_flight",
                        "selector": {"matchLabels": {"service": "slow"}}},
                    "target": {"type": "AverageValue", "averageValue": "1"}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}
        }))?,
    )
    .await?;
    wasmkube_tests::wait_ready_endpoints(c, "slow", 1).await?;

    // Three client guests, each with one 300 ms request in flight at a time.
    deploys
        .create(
            &PostParams::default(),
            &deployment(
                "load",
                3,
                json!({"name": "client", "image": toolbox,
                    "args": ["http-loop", format!("{ip}:80"), "/?sleep=300"]}),
            )?,
        )
        .await?;
    wait_for(
        "slow scaled up to about 3 pods for 3 in flight",
        SLOW,
        || async {
            let d = deploys.get("slow").await.ok()?;
            (replicas(&d) >= 3).then_some(())
        },
    )
    .await?;
    // The Service's requests in flight, as an Object metric would read them.
    let (code, body) = wasmkube_tests::raw(
        c,
        "GET",
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/services/slow/http_requests_in_flight",
        "",
        "application/json",
        b"",
    )
    .await?;
    ensure!(code == 200, "{body}");
    let value = body["items"][0]["value"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        body["items"][0]["describedObject"]["kind"] == "Service",
        "{body}"
    );
    ensure!(!value.is_empty(), "{body}");
    // The same, as an External metric picked by its `service` label.
    let (code, body) = wasmkube_tests::raw(
        c,
        "GET",
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_requests_in_flight?labelSelector=service%3Dslow",
        "",
        "application/json",
        b"",
    )
    .await?;
    ensure!(code == 200, "{body}");
    ensure!(body["kind"] == "ExternalMetricValueList", "{body}");
    let items = body["items"].as_array().cloned().unwrap_or_default();
    ensure!(
        items.len() == 1 && items[0]["metricLabels"]["service"] == "slow",
        "one value, for Service slow: {body}"
    );
    // The autoscaler writes its status after rescaling: wait for both metrics in it.
    wait_for(
        "the Pods and External metrics in the autoscaler's status",
        SLOW,
        || async {
            let hpa = hpas.get("slow").await.ok()?;
            let metrics = hpa.status?.current_metrics?;
            let external = metrics
                .iter()
                .find_map(|m| m.external.as_ref())?
                .current
                .average_value
                .clone()?;
            // Three clients with a request in flight each, over about three replicas.
            let per_replica = wasmkube_api::quantity::millicores(&external)?;
            (metrics.iter().any(|m| m.pods.is_some()) && per_replica >= 300).then_some(())
        },
    )
    .await?;

    // The load stops: back to one.
    deploys.delete("load", &Default::default()).await?;
    wait_for("slow scaled back down to 1", SLOW, || async {
        let d = deploys.get("slow").await.ok()?;
        (replicas(&d) == 1).then_some(())
    })
    .await?;
    setup.stop().await
}
