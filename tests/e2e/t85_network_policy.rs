//! NetworkPolicy end to end, asserted by real connections between guests on two wasmlets:
//! default-deny, allow by pod label (following a label change), allow by namespace, ports,
//! egress deny, through a Service and across the node-to-node tunnel. Each probe is a
//! `toolbox connect-n` exec'd in the client pod (its network namespace); the servers are
//! `toolbox serve` containers that answer with one line.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{AttachParams, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use wasmkube_tests::{Cluster, wait_for};

const SLOW: Duration = Duration::from_secs(60);

async fn create(client: &Client, ns: &str, value: serde_json::Value) -> Result<()> {
    let kind = value["kind"].as_str().unwrap_or_default().to_owned();
    match kind.as_str() {
        "Pod" => {
            Api::<Pod>::namespaced(client.clone(), ns)
                .create(&PostParams::default(), &serde_json::from_value(value)?)
                .await?;
        }
        "Service" => {
            Api::<Service>::namespaced(client.clone(), ns)
                .create(&PostParams::default(), &serde_json::from_value(value)?)
                .await?;
        }
        "NetworkPolicy" => {
            Api::<NetworkPolicy>::namespaced(client.clone(), ns)
                .create(&PostParams::default(), &serde_json::from_value(value)?)
                .await?;
        }
        "Namespace" => {
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &serde_json::from_value(value)?)
                .await?;
        }
        other => anyhow::bail!("no {other}"),
    }
    Ok(())
}

fn toolbox_pod(
    name: &str,
    node: &str,
    labels: serde_json::Value,
    servers: &[u16],
) -> serde_json::Value {
    let mut containers =
        vec![json!({"name": "client", "image": "toolbox:v1", "args": ["forever"]})];
    for port in servers {
        containers.push(json!({
            "name": format!("serve-{port}"), "image": "toolbox:v1",
            "args": ["serve", port.to_string()],
            "ports": [{"containerPort": port, "name": format!("p{port}")}],
        }));
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": labels},
           "spec": {"nodeName": node, "containers": containers}})
}

/// Whether pod `ns/from` can open a connection to `target` (and gets the server's line).
async fn reaches(client: &Client, ns: &str, from: &str, target: &str) -> Result<bool> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let p = pods
        .exec(
            from,
            ["toolbox", "connect-n", "1", target],
            &AttachParams::default().container("client").stderr(true),
        )
        .await?;
    let (out, err, _) = crate::t53_exec::finish(p).await?;
    if out.contains("local=") {
        return Ok(true);
    }
    ensure!(
        err.to_lowercase().contains("refused"),
        "{ns}/{from} → {target}: neither an answer nor a refusal: {out:?} {err:?}"
    );
    Ok(false)
}

/// Waits until `ns/from` → `target` is `allowed` (policies take effect with a watch event).
async fn expect(client: &Client, ns: &str, from: &str, target: &str, allowed: bool) -> Result<()> {
    let what = format!(
        "{ns}/{from} → {target} to be {}",
        if allowed { "allowed" } else { "refused" }
    );
    wait_for(&what, SLOW, || async {
        match reaches(client, ns, from, target).await {
            Ok(r) if r == allowed => Some(()),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "probe failed");
                None
            }
        }
    })
    .await
}

async fn pod_ip(client: &Client, ns: &str, name: &str) -> Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("{ns}/{name} running"), SLOW, || async {
        let p = pods.get(name).await.ok()?;
        let s = p.status?;
        (s.phase.as_deref() == Some("Running")
            && s.container_statuses.iter().flatten().all(|c| c.ready))
        .then_some(s.pod_ip?)
    })
    .await
}

#[tokio::test]
async fn network_policies_should_decide_which_guests_may_connect() -> Result<()> {
    let cluster = Cluster::start().await?;
    // The endpoints controller makes the Service's slices.
    let _controllers = cluster.start_controllers();
    let a = cluster.start_node("np-a").await?;
    let b = cluster.start_node("np-b").await?;
    cluster.push_sample("toolbox").await?;
    let c = cluster.client.clone();
    create(
        &c,
        "",
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "np", "labels": {"team": "np"}}}),
    )
    .await?;
    create(
        &c,
        "",
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "other", "labels": {"team": "other"}}}),
    )
    .await?;
    create(
        &c,
        "np",
        toolbox_pod("web", &a.name, json!({"app": "web"}), &[8080, 9090]),
    )
    .await?;
    create(
        &c,
        "np",
        toolbox_pod("db", &a.name, json!({"app": "db"}), &[5432]),
    )
    .await?;
    create(
        &c,
        "np",
        toolbox_pod(
            "client",
            &a.name,
            json!({"app": "client", "role": "frontend"}),
            &[],
        ),
    )
    .await?;
    create(
        &c,
        "np",
        toolbox_pod("stranger", &b.name, json!({"app": "stranger"}), &[]),
    )
    .await?;
    create(
        &c,
        "other",
        toolbox_pod("outsider", &b.name, json!({"app": "outsider"}), &[]),
    )
    .await?;
    let web = pod_ip(&c, "np", "web").await?;
    let db = pod_ip(&c, "np", "db").await?;
    for (ns, name) in [("np", "client"), ("np", "stranger"), ("other", "outsider")] {
        pod_ip(&c, ns, name).await?;
    }
    let web80 = format!("{web}:8080");
    let web90 = format!("{web}:9090");
    let db5432 = format!("{db}:5432");

    tracing::info!("--- no policy: everything is open (same node and across the tunnel)");
    expect(&c, "np", "client", &web80, true).await?;
    expect(&c, "np", "stranger", &web80, true).await?;
    expect(&c, "other", "outsider", &db5432, true).await?;

    tracing::info!("--- default-deny ingress in np");
    create(
        &c,
        "np",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny"}, "spec": {"podSelector": {}}}),
    )
    .await?;
    expect(&c, "np", "client", &web80, false).await?;
    expect(&c, "np", "stranger", &web80, false).await?;
    expect(&c, "other", "outsider", &db5432, false).await?;

    tracing::info!("--- allow from a label, on one port only");
    create(
        &c,
        "np",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "web-from-frontend"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}],
                              "ports": [{"port": "p8080"}]}]}}),
    )
    .await?;
    expect(&c, "np", "client", &web80, true).await?;
    expect(&c, "np", "client", &web90, false).await?;
    expect(&c, "np", "stranger", &web80, false).await?;
    tracing::info!("--- the stranger becomes a frontend: its next connection is allowed");
    Api::<Pod>::namespaced(c.clone(), "np")
        .patch(
            "stranger",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"role": "frontend"}}})),
        )
        .await?;
    expect(&c, "np", "stranger", &web80, true).await?;

    tracing::info!("--- allow from a namespace");
    create(&c, "np", json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "db-from-other"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "other"}}}]}]}})).await?;
    expect(&c, "other", "outsider", &db5432, true).await?;
    expect(&c, "np", "client", &db5432, false).await?;

    tracing::info!("--- through a Service, the policy sees the pod and its port");
    create(&c, "np", json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})).await?;
    let svc = wait_for("the web Service's IP", SLOW, || async {
        Api::<Service>::namespaced(c.clone(), "np")
            .get("web")
            .await
            .ok()?
            .spec?
            .cluster_ip
    })
    .await?;
    let svc80 = format!("{svc}:80");
    expect(&c, "np", "client", &svc80, true).await?;
    expect(&c, "other", "outsider", &svc80, false).await?;

    tracing::info!("--- egress deny in other");
    create(
        &c,
        "other",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "no-egress"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}),
    )
    .await?;
    expect(&c, "other", "outsider", &db5432, false).await?;

    tracing::info!("--- policies deleted: what they refused is open again");
    for (ns, name) in [("np", "default-deny"), ("other", "no-egress")] {
        Api::<NetworkPolicy>::namespaced(c.clone(), ns)
            .delete(name, &DeleteParams::default())
            .await?;
    }
    // The egress is open again; web still admits only frontends on p8080.
    expect(&c, "other", "outsider", &db5432, true).await?;
    expect(&c, "other", "outsider", &web90, false).await?;
    let policies: Vec<String> = Api::<NetworkPolicy>::namespaced(c.clone(), "np")
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    ensure!(policies.len() == 2, "{policies:?}");
    drop((a, b));
    cluster.stop().await.context("stop")
}
