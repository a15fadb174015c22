//! LimitRange and ResourceQuota through the real binary: defaults land on a pod (with the
//! LimitRanger annotation), a container over the range's max is refused, a quota refuses the
//! pod that would pass it in kube-apiserver's words, its `status.used` follows creates and
//! deletes; `kubectl create quota` where kubectl is installed.

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Pod, ResourceQuota};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use wasmkube_tests::{Process, kubectl, wait_for};

fn pod(name: &str, resources: serde_json::Value) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "hello.wasm", "resources": resources}]},
    }))?)
}

async fn used(quotas: &Api<ResourceQuota>, name: &str, resource: &str) -> Option<String> {
    let q = quotas.get(name).await.ok()?;
    Some(q.status?.used?.get(resource)?.0.clone())
}

#[tokio::test]
async fn limit_ranges_and_quotas_should_default_refuse_and_count_pods() -> Result<()> {
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let up = Process::up_in(dir.path(), &["--no-wasmlet"]).await?;
    let client = up.client().await?;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}}))?,
        )
        .await?;
    let ranges: Api<LimitRange> = Api::namespaced(client.clone(), "team");
    ranges
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "defaults"}, "spec": {"limits": [
                {"type": "Container", "default": {"cpu": "500m", "memory": "128Mi"},
                 "defaultRequest": {"cpu": "100m"}, "max": {"memory": "256Mi"}}]}}),
            )?,
        )
        .await?;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "team");
    let quota: ResourceQuota = serde_json::from_value(json!({"metadata": {"name": "small"},
        "spec": {"hard": {"pods": "2", "requests.cpu": "1", "limits.memory": "512Mi"}}}))?;
    quotas.create(&PostParams::default(), &quota).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");

    // The range's defaults land on a pod that states nothing (the cache may still be loading
    // the range just made: wait for the defaults).
    let first = wait_for(
        "the LimitRange defaults on a pod",
        Duration::from_secs(10),
        || async {
            let p = pods
                .create(&PostParams::default(), &pod("one", json!({})).ok()?)
                .await
                .ok()?;
            let r = p.spec.as_ref()?.containers[0].resources.clone()?;
            if r.limits.is_none() {
                pods.delete("one", &DeleteParams::default()).await.ok()?;
                return None;
            }
            Some(p)
        },
    )
    .await?;
    let r = first
        .spec
        .as_ref()
        .and_then(|s| s.containers[0].resources.clone())
        .unwrap_or_default();
    let limits = r.limits.unwrap_or_default();
    let requests = r.requests.unwrap_or_default();
    ensure!(
        (
            limits["cpu"].0.as_str(),
            limits["memory"].0.as_str(),
            requests["cpu"].0.as_str()
        ) == ("500m", "128Mi", "100m"),
        "defaults: {limits:?} {requests:?}"
    );
    ensure!(
        first
            .metadata
            .annotations
            .unwrap_or_default()
            .get("kubernetes.io/limit-ranger")
            .is_some_and(|a| a.starts_with("LimitRanger plugin set: ")),
        "the LimitRanger annotation"
    );

    // Over the range's max.
    match pods
        .create(
            &PostParams::default(),
            &pod("big", json!({"limits": {"memory": "1Gi"}}))?,
        )
        .await
    {
        Err(kube::Error::Api(s)) => ensure!(
            s.code == 403
                && s.message
                    == "pods \"big\" is forbidden: maximum memory usage per Container is 256Mi, but limit is 1Gi",
            "{s:?}"
        ),
        other => anyhow::bail!("a container over the max was admitted: {other:?}"),
    }

    // The quota: a second pod fits, a third does not.
    pods.create(&PostParams::default(), &pod("two", json!({}))?)
        .await?;
    match pods
        .create(&PostParams::default(), &pod("three", json!({}))?)
        .await
    {
        Err(kube::Error::Api(s)) => ensure!(
            s.code == 403
                && s.message
                    == "pods \"three\" is forbidden: exceeded quota: small, requested: pods=1, used: pods=2, limited: pods=2",
            "{s:?}"
        ),
        other => anyhow::bail!("the quota let a third pod in: {other:?}"),
    }
    ensure!(
        used(&quotas, "small", "requests.cpu").await.as_deref() == Some("200m"),
        "cpu requests counted"
    );
    ensure!(
        used(&quotas, "small", "limits.memory").await.as_deref() == Some("256Mi"),
        "memory limits counted"
    );

    // A delete gives its share back (the quota controller recounts, and writes a lower count
    // once it held for a second; under the whole suite's load that has taken over 20 s).
    pods.delete("one", &DeleteParams::default()).await?;
    wait_for(
        "the quota to give the pod back",
        Duration::from_secs(60),
        || async { (used(&quotas, "small", "pods").await.as_deref() == Some("1")).then_some(()) },
    )
    .await?;
    pods.create(&PostParams::default(), &pod("three", json!({}))?)
        .await?;

    tracing::info!("--- a scoped quota counts only the pods in its scopes");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "scoped"}}))?,
        )
        .await?;
    let scoped_quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "scoped");
    scoped_quotas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "best-effort"},
                "spec": {"hard": {"pods": "1"}, "scopes": ["BestEffort"]}}))?,
        )
        .await?;
    let scoped_pods: Api<Pod> = Api::namespaced(client.clone(), "scoped");
    wait_for(
        "the first best-effort pod",
        Duration::from_secs(10),
        || async {
            scoped_pods
                .create(&PostParams::default(), &pod("be-1", json!({})).ok()?)
                .await
                .ok()
        },
    )
    .await?;
    wait_for(
        "best-effort pods=1 used",
        Duration::from_secs(30),
        || async { (used(&scoped_quotas, "best-effort", "pods").await? == "1").then_some(()) },
    )
    .await?;
    let refused = scoped_pods
        .create(&PostParams::default(), &pod("be-2", json!({}))?)
        .await;
    ensure!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403
            && s.message.contains("exceeded quota: best-effort")),
        "a second best-effort pod: {refused:?}"
    );
    scoped_pods
        .create(
            &PostParams::default(),
            &pod("sized", json!({"requests": {"cpu": "100m"}}))?,
        )
        .await
        .map_err(|e| anyhow::anyhow!("a pod outside the scope is not counted: {e}"))?;

    if let Some(kubectl) = kubectl() {
        // Every namespace holds the controller manager's `kube-root-ca.crt`, which counts.
        let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(up.client().await?, "team");
        wait_for(
            "kube-root-ca.crt in team",
            Duration::from_secs(30),
            || async { configmaps.get_opt("kube-root-ca.crt").await.ok().flatten() },
        )
        .await?;
        let out = std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(up.kubeconfig())
            .args([
                "-n",
                "team",
                "create",
                "quota",
                "objects",
                "--hard=count/configmaps=2",
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "kubectl create quota: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(up.kubeconfig())
            .args(["-n", "team", "create", "configmap", "a"])
            .output()?;
        ensure!(
            out.status.success(),
            "the first ConfigMap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(up.kubeconfig())
            .args(["-n", "team", "create", "configmap", "b"])
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains("exceeded quota: objects, requested: count/configmaps=1, used: count/configmaps=2, limited: count/configmaps=2"),
            "the second ConfigMap: {err}"
        );
    } else {
        eprintln!("kubectl is not installed: kubectl create quota was not tried");
    }
    Ok(())
}
