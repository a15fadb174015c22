//! Node maintenance: `kubectl drain` cordons a node and evicts its pods through
//! `pods/eviction`, which a PodDisruptionBudget guards (429 until the disruption controller
//! sees the replacement healthy elsewhere); the pods come back on the other node, and
//! `kubectl uncordon` opens the node again.

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, ListParams, PostParams};
use serde_json::json;
use wasmkube_tests::{Cluster, wait_for};

use crate::t87_autoscaling::deployment;

const SLOW: Duration = Duration::from_secs(120);

/// kubectl's combined output, and whether it succeeded.
async fn kubectl(
    bin: &std::path::Path,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> Result<(bool, String)> {
    let (ok, out, err) = wasmkube_tests::run_kubectl(bin, kubeconfig, args).await?;
    Ok((ok, format!("{out}{err}")))
}

async fn running_on(pods: &Api<Pod>) -> Result<Vec<(String, String, bool)>> {
    Ok(pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (
                p.metadata.name.clone().unwrap_or_default(),
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                ready,
            )
        })
        .collect())
}

#[tokio::test]
async fn kubectl_drain_should_respect_a_disruption_budget_and_move_the_pods() -> Result<()> {
    let Some(bin) = wasmkube_tests::kubectl_version("1.33") else {
        eprintln!("SKIPPED: kubectl is not installed; kubectl drain not exercised");
        return Ok(());
    };
    let cluster = Cluster::start_with_control_plane().await?;
    let node_a = cluster.start_node("node-a").await?;
    let node_b = cluster.start_node("node-b").await?;
    let kc = cluster.kubeconfig.clone();
    let c = &cluster.client;
    let toolbox = cluster.push_sample("toolbox").await?;
    // Both replicas on node-a: node-b is cordoned while they are placed.
    let (ok, out) = kubectl(&bin, &kc, &["cordon", "node-b"]).await?;
    ensure!(ok, "cordon: {out}");
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(c.clone(), "default");
    deploys
        .create(
            &PostParams::default(),
            &deployment(
                "web",
                2,
                json!({"name": "c", "image": toolbox, "args": ["forever"]}),
            )?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    wait_for("two web pods Ready on node-a", SLOW, || async {
        let on = running_on(&pods).await.ok()?;
        (on.len() == 2 && on.iter().all(|(_, n, r)| n == "node-a" && *r)).then_some(())
    })
    .await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), "default");
    budgets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "web"},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}))?,
        )
        .await?;
    wait_for("the budget allows one disruption", SLOW, || async {
        let s = budgets.get("web").await.ok()?.status?;
        (s.disruptions_allowed == 1 && s.current_healthy == 2 && s.desired_healthy == 1)
            .then_some(())
    })
    .await?;
    let (ok, out) = kubectl(&bin, &kc, &["get", "pdb", "web"]).await?;
    ensure!(ok && out.contains("ALLOWED DISRUPTIONS"), "get pdb: {out}");

    let (ok, out) = kubectl(&bin, &kc, &["uncordon", "node-b"]).await?;
    ensure!(ok, "uncordon: {out}");
    let (ok, out) = kubectl(
        &bin,
        &kc,
        &["drain", "node-a", "--ignore-daemonsets", "--timeout=100s"],
    )
    .await?;
    ensure!(ok, "drain: {out}");
    // The two evictions went one at a time: the second waited for the budget.
    ensure!(
        out.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "the budget held an eviction back: {out}"
    );
    ensure!(out.contains("node/node-a drained"), "{out}");
    let on = running_on(&pods).await?;
    ensure!(
        on.len() == 2 && on.iter().all(|(_, n, _)| n == "node-b"),
        "the pods moved to node-b: {on:?}"
    );
    let nodes: Api<Node> = Api::all(c.clone());
    let a = nodes.get("node-a").await?;
    ensure!(
        a.spec.and_then(|s| s.unschedulable) == Some(true),
        "node-a cordoned"
    );

    // Through kube-rs: with the budget at zero an eviction is refused with 429.
    wait_for("both pods Ready on node-b", SLOW, || async {
        let on = running_on(&pods).await.ok()?;
        (on.len() == 2 && on.iter().all(|(_, _, r)| *r)).then_some(())
    })
    .await?;
    budgets
        .patch(
            "web",
            &Default::default(),
            &kube::api::Patch::Merge(json!({"spec": {"minAvailable": 2}})),
        )
        .await?;
    wait_for("the budget allows none", SLOW, || async {
        let b = budgets.get("web").await.ok()?;
        let s = b.status?;
        (s.observed_generation == b.metadata.generation && s.disruptions_allowed == 0).then_some(())
    })
    .await?;
    let victim = running_on(&pods).await?[0].0.clone();
    // (A client that does not retry 429s itself.)
    let plain = wasmkube_tests::client_without_retries(&kc).await?;
    let plain_pods: Api<Pod> = Api::namespaced(plain, "default");
    match plain_pods.evict(&victim, &EvictParams::default()).await {
        Err(kube::Error::Api(s)) => ensure!(s.code == 429, "{s:?}"),
        other => anyhow::bail!("an eviction past the budget: {other:?}"),
    }
    // A pod that is not Ready may go while its budget is met (IfHealthyBudget); a healthy
    // one may not take the budget below its minimum.
    budgets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "sick"},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "sick"}}}}))?,
        )
        .await?;
    for (name, probe_port) in [("fine", None), ("ill", Some(9))] {
        let mut container = json!({"name": "c", "image": toolbox, "args": ["forever"]});
        if let Some(port) = probe_port {
            container["readinessProbe"] = json!({"tcpSocket": {"port": port}, "periodSeconds": 1});
        }
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"app": "sick"}},
                "spec": {"containers": [container]}}),
            )?,
        )
        .await?;
    }
    wait_for("the sick budget: 2 expected, 1 healthy", SLOW, || async {
        let s = budgets.get("sick").await.ok()?.status?;
        (s.expected_pods == 2 && s.current_healthy == 1 && s.desired_healthy == 1).then_some(())
    })
    .await?;
    match plain_pods.evict("fine", &EvictParams::default()).await {
        Err(kube::Error::Api(s)) => ensure!(s.code == 429, "{s:?}"),
        other => anyhow::bail!("evicting the only healthy pod: {other:?}"),
    }
    plain_pods.evict("ill", &EvictParams::default()).await?;
    let (ok, out) = kubectl(&bin, &kc, &["uncordon", "node-a"]).await?;
    ensure!(ok, "uncordon: {out}");
    let a = nodes.get("node-a").await?;
    ensure!(
        a.spec.and_then(|s| s.unschedulable) != Some(true),
        "node-a open again"
    );
    node_a.stop().await?;
    node_b.stop().await?;
    cluster.stop().await
}

#[tokio::test]
async fn a_percentage_or_max_unavailable_budget_counts_the_pods_the_controller_asks_for()
-> Result<()> {
    let cluster = Cluster::start().await?;
    let _sched = cluster.start_scheduler();
    let _ctrl = cluster.start_controllers();
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "capped"}}))?,
        )
        .await?;
    // A quota lets only two of the three replicas be made.
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(c.clone(), "capped");
    quotas
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "two"}, "spec": {"hard": {"pods": "2"}}}),
            )?,
        )
        .await?;
    let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(c.clone(), "capped");
    sets.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": image, "args": ["forever"]}]}}}}))?,
    )
    .await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), "capped");
    for (name, spec) in [
        ("max", json!({"maxUnavailable": 1})),
        ("pct", json!({"minAvailable": "60%"})),
        ("int", json!({"minAvailable": 1})),
    ] {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
        budgets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?,
            )
            .await?;
    }
    // (expected, desired healthy, healthy, allowed): the missing replica counts against the
    // first two (3 expected, as the ReplicaSet asks); the integer budget counts the 2 pods.
    for (name, want) in [
        ("max", (3, 2, 2, 0)),
        ("pct", (3, 2, 2, 0)),
        ("int", (2, 1, 2, 1)),
    ] {
        wait_for(&format!("budget {name} at {want:?}"), SLOW, || async {
            let s = budgets.get(name).await.ok()?.status?;
            let got = (
                s.expected_pods,
                s.desired_healthy,
                s.current_healthy,
                s.disruptions_allowed,
            );
            (got == want).then_some(())
        })
        .await?;
    }
    node.stop().await
}
