//! `status`, `scale` and `pods/binding` subresources, and Table output.

use anyhow::{Result, ensure};
use k8s_openapi::api::{apps, core};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use wasmkube_tests::{Cluster, raw};

use crate::fixtures;

#[tokio::test]
async fn status_and_main_resource_should_not_overwrite_each_other() -> Result<()> {
    let cluster = Cluster::start().await?;
    let pods: Api<core::v1::Pod> = Api::default_namespaced(cluster.client.clone());
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(fixtures::pod("s"))?,
    )
    .await?;
    let st = pods
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Running", "podIP": "10.244.0.9"},
            "spec": {"containers": [{"name": "main", "image": "ignored:2"}]}}),
            ),
        )
        .await?;
    ensure!(st.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
    ensure!(
        st.spec.as_ref().expect("spec").containers[0]
            .image
            .as_deref()
            == Some("registry.local/app:1"),
        "status writes ignore spec"
    );
    let mut p = pods.get("s").await?;
    p.status = Some(Default::default());
    p.spec.as_mut().expect("spec").containers[0].image = Some("registry.local/app:2".into());
    let replaced = pods.replace("s", &PostParams::default(), &p).await?;
    ensure!(
        replaced.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some("10.244.0.9"),
        "spec writes keep status"
    );
    ensure!(
        replaced.spec.expect("spec").containers[0].image.as_deref() == Some("registry.local/app:2")
    );
    cluster.stop().await
}

#[tokio::test]
async fn scale_and_binding_should_work_like_kubernetes() -> Result<()> {
    let cluster = Cluster::start().await?;
    let deploys: Api<apps::v1::Deployment> = Api::default_namespaced(cluster.client.clone());
    let d = fixtures::all("sc")
        .into_iter()
        .find(|f| f.0 == "Deployment")
        .expect("fixture")
        .2;
    deploys
        .create(&PostParams::default(), &serde_json::from_value(d)?)
        .await?;
    let scale = deploys.get_scale("sc").await?;
    ensure!(scale.spec.as_ref().and_then(|s| s.replicas) == Some(1));
    ensure!(scale.status.as_ref().and_then(|s| s.selector.as_deref()) == Some("app=sc"));
    deploys
        .patch_scale(
            "sc",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await?;
    ensure!(deploys.get("sc").await?.spec.expect("spec").replicas == Some(5));
    let bad = deploys
        .patch_scale(
            "sc",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": -1}})),
        )
        .await
        .expect_err("negative");
    ensure!(
        matches!(bad, kube::Error::Api(ref s) if s.code == 422),
        "{bad:?}"
    );

    let pods: Api<core::v1::Pod> = Api::default_namespaced(cluster.client.clone());
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(fixtures::pod("b"))?,
    )
    .await?;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "b"}, "target": {"kind": "Node", "name": "node-1"}});
    let (code, _) = raw(
        &cluster.client,
        "POST",
        "/api/v1/namespaces/default/pods/b/binding",
        "application/json",
        "application/json",
        binding.to_string().as_bytes(),
    )
    .await?;
    ensure!(code == 201, "binding answers 201, got {code}");
    let p = pods.get("b").await?;
    ensure!(p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("node-1"));
    ensure!(
        p.status
            .expect("status")
            .conditions
            .expect("conditions")
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );
    let (code, st) = raw(
        &cluster.client,
        "POST",
        "/api/v1/namespaces/default/pods/b/binding",
        "application/json",
        "application/json",
        binding.to_string().as_bytes(),
    )
    .await?;
    ensure!(code == 409, "a bound pod cannot be bound again: {st}");
    let mut moved = pods.get("b").await?;
    moved.spec.as_mut().expect("spec").node_name = Some("node-2".into());
    let err = pods
        .replace("b", &PostParams::default(), &moved)
        .await
        .expect_err("nodeName is not updatable");
    ensure!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err:?}"
    );
    cluster.stop().await
}

#[tokio::test]
async fn tables_should_have_kubectl_columns() -> Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    for (kind, _, obj) in fixtures::all("tbl") {
        if kind == "Namespace" || kind == "Node" || kind.contains('/') {
            continue;
        }
        let api_version = obj["apiVersion"].as_str().expect("apiVersion");
        let base = if api_version == "v1" {
            "/api/v1".to_string()
        } else {
            format!("/apis/{api_version}")
        };
        let plural = match kind {
            "Endpoints" => "endpoints".to_string(),
            "EndpointSlice" => "endpointslices".to_string(),
            k => format!("{}s", k.to_lowercase()),
        };
        let path = format!("{base}/namespaces/default/{plural}");
        let (code, _) = raw(
            c,
            "POST",
            &path,
            "application/json",
            "application/json",
            obj.to_string().as_bytes(),
        )
        .await?;
        ensure!(code == 201, "{kind} created");
    }
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    for (path, want) in [
        (
            "/api/v1/namespaces/default/pods",
            vec![
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates",
            ],
        ),
        (
            "/apis/apps/v1/namespaces/default/deployments",
            vec![
                "Name",
                "Ready",
                "Up-to-date",
                "Available",
                "Age",
                "Containers",
                "Images",
                "Selector",
            ],
        ),
        (
            "/api/v1/namespaces/default/services",
            vec![
                "Name",
                "Type",
                "Cluster-IP",
                "External-IP",
                "Port(s)",
                "Age",
                "Selector",
            ],
        ),
        (
            "/apis/batch/v1/namespaces/default/jobs",
            vec![
                "Name",
                "Status",
                "Completions",
                "Duration",
                "Age",
                "Containers",
                "Images",
                "Selector",
            ],
        ),
        ("/api/v1/namespaces", vec!["Name", "Status", "Age"]),
        (
            "/api/v1/namespaces/default/configmaps",
            vec!["Name", "Data", "Age"],
        ),
    ] {
        let (code, t) = raw(c, "GET", path, "application/json", accept, b"").await?;
        ensure!(code == 200 && t["kind"] == "Table", "{path}: {t}");
        let cols: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("cols")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default())
            .collect();
        ensure!(cols == want, "{path}: columns {cols:?}");
        let rows = t["rows"].as_array().expect("rows");
        ensure!(!rows.is_empty(), "{path}: rows");
        ensure!(
            rows[0]["cells"].as_array().expect("cells").len() == want.len(),
            "{path}: one cell per column"
        );
        ensure!(rows[0]["object"]["kind"] == "PartialObjectMetadata");
    }
    let (_, t) = raw(
        c,
        "GET",
        "/api/v1/namespaces/default/pods/tbl",
        "application/json",
        accept,
        b"",
    )
    .await?;
    ensure!(
        t["rows"][0]["cells"][0] == "tbl"
            && t["rows"][0]["cells"][1] == "0/1"
            && t["rows"][0]["cells"][2] == "Pending",
        "{t}"
    );
    cluster.stop().await
}

#[tokio::test]
async fn status_apply_and_metadata_only_clients_should_work() -> Result<()> {
    let cluster = Cluster::start().await?;
    let pods: Api<core::v1::Pod> = Api::default_namespaced(cluster.client.clone());
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(fixtures::pod("sa"))?,
    )
    .await?;
    tracing::info!("--- server-side apply to /status, as a kube-rs controller does");
    let applied = pods
        .patch_status(
            "sa",
            &PatchParams::apply("wasmlet"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sa"},
                "status": {"phase": "Running", "podIP": "10.244.1.2"}}),
            ),
        )
        .await?;
    let status = applied.status.clone().expect("status");
    ensure!(
        status.phase.as_deref() == Some("Running")
            && status.pod_ip.as_deref() == Some("10.244.1.2")
    );
    let entry = applied
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.manager.as_deref() == Some("wasmlet"))
        .expect("the applier owns fields");
    ensure!(entry.subresource.as_deref() == Some("status"), "{entry:?}");
    let missing = pods
        .patch_status(
            "nope",
            &PatchParams::apply("wasmlet"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "nope"}, "status": {"phase": "Running"}})),
        )
        .await
        .expect_err("status apply does not create");
    ensure!(
        matches!(missing, kube::Error::Api(ref s) if s.code == 404),
        "{missing:?}"
    );

    tracing::info!("--- metadata-only list, get and watch");
    let meta = pods.list_metadata(&Default::default()).await?;
    ensure!(meta.items.len() == 1 && meta.items[0].metadata.name.as_deref() == Some("sa"));
    let one = pods.get_metadata("sa").await?;
    ensure!(one.metadata.uid == applied.metadata.uid);
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = kube::runtime::reflector(
        writer,
        kube::runtime::watcher(
            Api::<kube::core::PartialObjectMeta<core::v1::Pod>>::default_namespaced(
                cluster.client.clone(),
            ),
            kube::runtime::watcher::Config::default(),
        ),
    );
    let task = tokio::spawn(futures::StreamExt::for_each(stream, |_| async {}));
    wasmkube_tests::wait_for(
        "the metadata reflector",
        std::time::Duration::from_secs(10),
        || {
            let r = reader.clone();
            async move { (r.state().len() == 1).then_some(()) }
        },
    )
    .await?;
    task.abort();

    tracing::info!(
        "--- cluster-scoped objects ignore a namespace in the body, as kube-apiserver does"
    );
    let ns: Api<core::v1::Namespace> = Api::all(cluster.client.clone());
    let created = ns
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "clus", "namespace": "default"}}))?,
        )
        .await?;
    ensure!(created.metadata.namespace.is_none());
    cluster.stop().await
}

#[tokio::test]
async fn recorder_events_should_show_as_core_events() -> Result<()> {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let cluster = Cluster::start().await?;
    let pods: Api<core::v1::Pod> = Api::default_namespaced(cluster.client.clone());
    let pod = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(fixtures::pod("ev"))?,
        )
        .await?;
    let recorder = Recorder::new(
        cluster.client.clone(),
        Reporter {
            controller: "wasmlet".into(),
            instance: Some("node-1".into()),
        },
    );
    let reference = kube::Resource::object_ref(&pod, &());
    let ev = Event {
        type_: EventType::Normal,
        reason: "Started".into(),
        note: Some("Started container main".into()),
        action: "Start".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await?;
    recorder.publish(&ev, &reference).await?;
    tracing::info!(
        "--- the events.k8s.io/v1 event is a core/v1 event too (what kubectl describe reads)"
    );
    let core_events: Api<core::v1::Event> = Api::default_namespaced(cluster.client.clone());
    let found = core_events
        .list(
            &kube::api::ListParams::default()
                .fields("involvedObject.name=ev,involvedObject.kind=Pod"),
        )
        .await?;
    ensure!(
        found.items.len() == 1,
        "one event, updated as a series: {:?}",
        found.items
    );
    let e = &found.items[0];
    ensure!(
        e.message.as_deref() == Some("Started container main")
            && e.reason.as_deref() == Some("Started")
    );
    ensure!(e.reporting_component.as_deref() == Some("wasmlet"));
    ensure!(
        e.series.as_ref().and_then(|s| s.count) == Some(2),
        "series count: {:?}",
        e.series
    );
    let v1_events: Api<k8s_openapi::api::events::v1::Event> =
        Api::default_namespaced(cluster.client.clone());
    let v1 = v1_events
        .get(e.metadata.name.as_deref().expect("name"))
        .await?;
    ensure!(v1.note.as_deref() == Some("Started container main"));
    ensure!(v1.regarding.and_then(|r| r.name).as_deref() == Some("ev"));
    cluster.stop().await
}
