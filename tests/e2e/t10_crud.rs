//! Every served kind round-trips through kube-rs `Api<K>`: create, get, list, watch, update
//! (replace), 409 on a stale update, patch (merge, JSON, strategic), delete.

use std::fmt::Debug;
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{apps, batch, coordination, core, discovery};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use wasmkube_tests::Cluster;

use crate::fixtures;

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

async fn round_trip<K>(api: Api<K>, fixture: Value, deleted_at_once: bool) -> Result<()>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&()).to_string();
    tracing::info!("--- {kind}: create");
    let obj: K = serde_json::from_value(fixture)?;
    let name = obj.name_any();
    let created = api.create(&PostParams::default(), &obj).await?;
    ensure!(created.meta().uid.is_some(), "{kind}: uid set");
    ensure!(
        created.meta().creation_timestamp.is_some(),
        "{kind}: creationTimestamp set"
    );
    let rv0: u64 = created.resource_version().unwrap_or_default().parse()?;
    ensure!(rv0 > 0, "{kind}: resourceVersion set");

    let mut events = api
        .watch(
            &WatchParams::default().fields(&format!("metadata.name={name}")),
            &rv0.to_string(),
        )
        .await?
        .boxed();

    tracing::info!("--- {kind}: get and list");
    let got = api.get(&name).await?;
    ensure!(
        got.meta().uid == created.meta().uid,
        "{kind}: get returns the created object"
    );
    let list = api.list(&ListParams::default()).await?;
    ensure!(
        list.items.iter().any(|o| o.name_any() == name),
        "{kind}: list contains it"
    );
    ensure!(
        list.metadata
            .resource_version
            .as_deref()
            .unwrap_or_default()
            .parse::<u64>()?
            >= rv0
    );

    tracing::info!("--- {kind}: replace, then a stale replace");
    let mut upd = got.clone();
    upd.meta_mut()
        .labels
        .get_or_insert_with(Default::default)
        .insert("step".into(), "replace".into());
    let replaced = api.replace(&name, &PostParams::default(), &upd).await?;
    ensure!(
        replaced
            .resource_version()
            .unwrap_or_default()
            .parse::<u64>()?
            > rv0,
        "{kind}: rv grows"
    );
    let stale = api
        .replace(&name, &PostParams::default(), &upd)
        .await
        .expect_err("stale update");
    ensure!(
        api_code(&stale) == Some(409),
        "{kind}: stale update is 409, got {stale:?}"
    );

    tracing::info!("--- {kind}: merge, JSON and strategic patches");
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"merge": "yes"}}})),
    )
    .await?;
    let jp: json_patch::Patch = serde_json::from_value(
        json!([{"op": "add", "path": "/metadata/annotations", "value": {"json": "yes"}}]),
    )?;
    api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(jp))
        .await?;
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"metadata": {"labels": {"strategic": "yes"}}})),
    )
    .await?;
    let got = api.get(&name).await?;
    let labels = got.labels();
    for (k, v) in [("step", "replace"), ("merge", "yes"), ("strategic", "yes")] {
        ensure!(
            labels.get(k).map(String::as_str) == Some(v),
            "{kind}: label {k} after patches: {labels:?}"
        );
    }
    ensure!(
        got.annotations().get("json").map(String::as_str) == Some("yes"),
        "{kind}: JSON patch applied"
    );

    tracing::info!("--- {kind}: delete");
    api.delete(&name, &DeleteParams::default()).await?;
    if deleted_at_once {
        let gone = api.get(&name).await.expect_err("deleted");
        ensure!(
            api_code(&gone) == Some(404),
            "{kind}: get after delete is 404"
        );
    } else {
        let still = api.get(&name).await?;
        ensure!(
            still.meta().deletion_timestamp.is_some(),
            "{kind}: deletion is pending"
        );
    }

    tracing::info!("--- {kind}: the watch saw every step");
    let want: &[&str] = if deleted_at_once {
        &["MODIFIED", "MODIFIED", "MODIFIED", "MODIFIED", "DELETED"]
    } else {
        &["MODIFIED", "MODIFIED", "MODIFIED", "MODIFIED", "MODIFIED"]
    };
    let mut seen = Vec::new();
    while seen.len() < want.len() {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next()).await??;
        match ev {
            Some(WatchEvent::Added(_)) => seen.push("ADDED"),
            Some(WatchEvent::Modified(_)) => seen.push("MODIFIED"),
            Some(WatchEvent::Deleted(_)) => seen.push("DELETED"),
            Some(WatchEvent::Bookmark(_)) => {}
            Some(WatchEvent::Error(e)) => anyhow::bail!("{kind}: watch error {e:?}"),
            None => anyhow::bail!("{kind}: watch ended after {seen:?}"),
        }
    }
    ensure!(seen == want, "{kind}: watch events {seen:?}, want {want:?}");
    Ok(())
}

#[tokio::test]
async fn every_kind_should_round_trip_through_kube_rs() -> Result<()> {
    let cluster = Cluster::start().await?;
    let c = cluster.client.clone();
    for (kind, _, obj) in fixtures::all("rt") {
        match kind {
            "Namespace" => {
                round_trip(Api::<core::v1::Namespace>::all(c.clone()), obj, false).await?
            }
            "Node" => round_trip(Api::<core::v1::Node>::all(c.clone()), obj, true).await?,
            "Pod" => {
                round_trip(
                    Api::<core::v1::Pod>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "Service" => {
                round_trip(
                    Api::<core::v1::Service>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "Endpoints" => {
                round_trip(
                    Api::<core::v1::Endpoints>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "ConfigMap" => {
                round_trip(
                    Api::<core::v1::ConfigMap>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "Secret" => {
                round_trip(
                    Api::<core::v1::Secret>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "Event" => {
                round_trip(
                    Api::<core::v1::Event>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "events.k8s.io/Event" => {
                round_trip(
                    Api::<k8s_openapi::api::events::v1::Event>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "ServiceAccount" => {
                round_trip(
                    Api::<core::v1::ServiceAccount>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "Deployment" => {
                round_trip(
                    Api::<apps::v1::Deployment>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "ReplicaSet" => {
                round_trip(
                    Api::<apps::v1::ReplicaSet>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "DaemonSet" => {
                round_trip(
                    Api::<apps::v1::DaemonSet>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "StatefulSet" => {
                round_trip(
                    Api::<apps::v1::StatefulSet>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "Job" => {
                round_trip(
                    Api::<batch::v1::Job>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "CronJob" => {
                round_trip(
                    Api::<batch::v1::CronJob>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "Lease" => {
                round_trip(
                    Api::<coordination::v1::Lease>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            "EndpointSlice" => {
                round_trip(
                    Api::<discovery::v1::EndpointSlice>::default_namespaced(c.clone()),
                    obj,
                    true,
                )
                .await?
            }
            other => anyhow::bail!("no round trip for {other}"),
        }
    }
    cluster.stop().await
}

#[tokio::test]
async fn defaults_and_generation_should_follow_kubernetes() -> Result<()> {
    let cluster = Cluster::start().await?;
    let deploys: Api<apps::v1::Deployment> = Api::default_namespaced(cluster.client.clone());
    let d: apps::v1::Deployment = serde_json::from_value(
        fixtures::all("gen")
            .into_iter()
            .find(|f| f.0 == "Deployment")
            .expect("fixture")
            .2,
    )?;
    let d = deploys.create(&PostParams::default(), &d).await?;
    let spec = d.spec.clone().expect("spec");
    ensure!(spec.replicas == Some(1));
    ensure!(spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("RollingUpdate"));
    ensure!(spec.revision_history_limit == Some(10) && spec.progress_deadline_seconds == Some(600));
    let pod_spec = spec.template.spec.expect("template spec");
    ensure!(pod_spec.restart_policy.as_deref() == Some("Always"));
    ensure!(pod_spec.termination_grace_period_seconds == Some(30));
    ensure!(d.metadata.generation == Some(1));

    let labelled = deploys
        .patch(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await?;
    ensure!(
        labelled.metadata.generation == Some(1),
        "a metadata change keeps the generation"
    );
    let scaled = deploys
        .patch(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await?;
    ensure!(
        scaled.metadata.generation == Some(2),
        "a spec change bumps the generation"
    );
    let status = deploys
        .patch_status(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 3, "observedGeneration": 2}})),
        )
        .await?;
    ensure!(
        status.metadata.generation == Some(2),
        "a status change keeps the generation"
    );

    let services: Api<core::v1::Service> = Api::default_namespaced(cluster.client.clone());
    let svc = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "tp"},
            "spec": {"ports": [{"port": 80, "targetPort": 0}]}}))?,
        )
        .await?;
    let port = &svc.spec.expect("spec").ports.expect("ports")[0];
    ensure!(
        port.target_port
            == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80)),
        "a zero targetPort defaults to the port: {port:?}"
    );
    ensure!(port.protocol.as_deref() == Some("TCP"));

    let pods: Api<core::v1::Pod> = Api::default_namespaced(cluster.client.clone());
    let p = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"generateName": "web-"},
        "spec": {"containers": [{"name": "c", "image": "x:latest"}]}}))?,
        )
        .await?;
    let name = p.name_any();
    ensure!(
        name.starts_with("web-") && name.len() == 9,
        "generateName gives web-xxxxx, got {name}"
    );
    ensure!(p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"));
    let c = &p.spec.as_ref().expect("spec").containers[0];
    ensure!(
        c.image_pull_policy.as_deref() == Some("Always"),
        ":latest pulls always"
    );
    cluster.stop().await
}

#[tokio::test]
async fn finalizers_should_delay_deletion_until_removed() -> Result<()> {
    let cluster = Cluster::start().await?;
    let cms: Api<core::v1::ConfigMap> = Api::default_namespaced(cluster.client.clone());
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
        )?,
    )
    .await?;
    let resp = cms.delete("held", &DeleteParams::default()).await?;
    ensure!(resp.is_left(), "a held object is returned, not a Status");
    let held = cms.get("held").await?;
    ensure!(
        held.metadata.deletion_timestamp.is_some(),
        "deletionTimestamp set"
    );
    let add = cms
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["example.com/hold", "example.com/new"]}}),
            ),
        )
        .await
        .expect_err("no new finalizers during deletion");
    ensure!(api_code(&add) == Some(422));
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    let gone = cms
        .get("held")
        .await
        .expect_err("gone after the last finalizer");
    ensure!(api_code(&gone) == Some(404));

    tracing::info!("--- foreground deletion holds the owner with foregroundDeletion");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "fg"}}))?,
    )
    .await?;
    cms.delete("fg", &DeleteParams::foreground()).await?;
    let fg = cms.get("fg").await?;
    ensure!(fg.metadata.finalizers == Some(vec!["foregroundDeletion".to_string()]));
    cluster.stop().await
}

#[tokio::test]
async fn a_new_ingress_without_a_class_should_get_the_default_class() -> Result<()> {
    use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    let classes: Api<IngressClass> = Api::all(c.clone());
    let ingresses: Api<Ingress> = Api::default_namespaced(c.clone());
    let class_of = |i: &Ingress| i.spec.as_ref().and_then(|s| s.ingress_class_name.clone());
    let ingress = |name: &str, annotations: Value| -> Result<Ingress> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
        }))?)
    };
    let pp = PostParams::default();
    // No default class: none is set.
    let none = ingresses
        .create(&pp, &ingress("before", json!({}))?)
        .await?;
    ensure!(class_of(&none).is_none(), "{:?}", none.spec);
    for (name, default) in [("plain", "false"), ("house", "true")] {
        classes
            .create(
                &pp,
                &serde_json::from_value(json!({
                    "metadata": {"name": name,
                        "annotations": {"ingressclass.kubernetes.io/is-default-class": default}},
                    "spec": {"controller": "example.com/ingress"},
                }))?,
            )
            .await?;
    }
    // The DefaultIngressClass admission plugin names the default class on create.
    let got = ingresses.create(&pp, &ingress("after", json!({}))?).await?;
    ensure!(class_of(&got).as_deref() == Some("house"), "{:?}", got.spec);
    // A class named the older way (the annotation) is left as it is.
    let annotated = ingresses
        .create(
            &pp,
            &ingress("annotated", json!({"kubernetes.io/ingress.class": "plain"}))?,
        )
        .await?;
    ensure!(class_of(&annotated).is_none(), "{:?}", annotated.spec);
    // Only creates are defaulted: an update of the first one keeps it without a class.
    let updated = ingresses
        .patch(
            "before",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await?;
    ensure!(class_of(&updated).is_none(), "{:?}", updated.spec);
    cluster.stop().await
}
