//! Lists: label selectors (equality and set-based), field selectors, `limit`/`continue`
//! paging at one consistent revision, and `resourceVersion` semantics.

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams, VersionMatch};
use serde_json::json;
use wasmkube_tests::{Cluster, raw};

#[tokio::test]
async fn selectors_should_filter_like_kubernetes() -> Result<()> {
    let cluster = Cluster::start().await?;
    let pods: Api<Pod> = Api::default_namespaced(cluster.client.clone());
    for (name, app, tier, node) in [
        ("a", "web", "front", "n1"),
        ("b", "web", "back", "n2"),
        ("c", "db", "back", ""),
        ("d", "db", "", "n1"),
    ] {
        let mut p = json!({"metadata": {"name": name, "labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        if !tier.is_empty() {
            p["metadata"]["labels"]["tier"] = json!(tier);
        }
        if !node.is_empty() {
            p["spec"]["nodeName"] = json!(node);
        }
        pods.create(&PostParams::default(), &serde_json::from_value(p)?)
            .await?;
    }
    let names =
        |l: kube::core::ObjectList<Pod>| l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    for (sel, want) in [
        ("app=web", vec!["a", "b"]),
        ("app!=web", vec!["c", "d"]),
        ("tier in (front,back)", vec!["a", "b", "c"]),
        ("tier notin (back)", vec!["a", "d"]),
        ("tier", vec!["a", "b", "c"]),
        ("!tier", vec!["d"]),
        ("app=db,tier=back", vec!["c"]),
    ] {
        ensure!(
            names(pods.list(&ListParams::default().labels(sel)).await?) == want,
            "labels {sel}"
        );
    }
    for (sel, want) in [
        ("spec.nodeName=n1", vec!["a", "d"]),
        ("spec.nodeName=", vec!["c"]),
        ("metadata.name!=a,spec.nodeName!=n2", vec!["c", "d"]),
        ("status.phase=Pending", vec!["a", "b", "c", "d"]),
    ] {
        ensure!(
            names(pods.list(&ListParams::default().fields(sel)).await?) == want,
            "fields {sel}"
        );
    }
    let all: Api<Pod> = Api::all(cluster.client.clone());
    ensure!(
        all.list(&ListParams::default().labels("app=db"))
            .await?
            .items
            .len()
            == 2,
        "across namespaces"
    );
    cluster.stop().await
}

#[tokio::test]
async fn paging_should_be_consistent_at_the_first_page_revision() -> Result<()> {
    let cluster = Cluster::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(cluster.client.clone());
    for i in 0..10 {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": format!("cm-{i:02}")}, "data": {"v": "1"}}),
            )?,
        )
        .await?;
    }
    let first = cms.list(&ListParams::default().limit(4)).await?;
    ensure!(first.items.len() == 4);
    ensure!(
        first.metadata.remaining_item_count == Some(6),
        "remainingItemCount: {:?}",
        first.metadata.remaining_item_count
    );
    let token = first.metadata.continue_.clone().expect("continue token");
    tracing::info!("--- change the world between pages");
    cms.delete("cm-05", &Default::default()).await?;
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "cm-99"}}))?,
    )
    .await?;
    let mut seen: Vec<String> = first.items.iter().map(|c| c.name_any()).collect();
    let mut token = Some(token);
    while let Some(t) = token {
        let page = cms
            .list(&ListParams::default().limit(4).continue_token(&t))
            .await?;
        ensure!(
            page.metadata.resource_version == first.metadata.resource_version,
            "every page at the same revision"
        );
        seen.extend(page.items.iter().map(|c| c.name_any()));
        token = page.metadata.continue_.clone().filter(|c| !c.is_empty());
    }
    let want: Vec<String> = (0..10).map(|i| format!("cm-{i:02}")).collect();
    ensure!(seen == want, "paged list is the snapshot: {seen:?}");

    tracing::info!("--- exact reads of an older revision");
    let rv = first.metadata.resource_version.clone().expect("rv");
    let exact = cms
        .list(&ListParams::default().at(&rv).matching(VersionMatch::Exact))
        .await?;
    ensure!(exact.items.len() == 10 && exact.items.iter().any(|c| c.name_any() == "cm-05"));
    let now = cms.list(&ListParams::default()).await?;
    ensure!(
        now.items.len() == 10
            && !now.items.iter().any(|c| c.name_any() == "cm-05")
            && now.items.iter().any(|c| c.name_any() == "cm-99")
    );
    let (code, st) = raw(
        &cluster.client,
        "GET",
        &format!(
            "/api/v1/namespaces/default/configmaps?resourceVersion={rv}&resourceVersionMatch=Bogus"
        ),
        "application/json",
        "application/json",
        b"",
    )
    .await?;
    ensure!(
        code == 400 && st["reason"] == "BadRequest",
        "an unknown resourceVersionMatch is rejected: {code} {st}"
    );
    cluster.stop().await
}
