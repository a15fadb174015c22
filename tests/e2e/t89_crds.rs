//! CustomResourceDefinitions through kube-rs: a definition is served at once (`Established`),
//! its objects are pruned, defaulted and validated by its schema with kube-apiserver's
//! messages, listed with its printer columns, watched, patched, their status written through
//! `/status`; an operator written with kube-rs (`#[derive(CustomResource)]`, `Controller`, a
//! finalizer, status updates) reconciles them unmodified; deleting the definition deletes its
//! objects. kubectl (1.27 and 1.33 where installed) sees the same.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::{Controller, watcher};
use kube::{CustomResource, CustomResourceExt as _, ResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use wasmkube_tests::{Cluster, run_kubectl, wait_for};

const SLOW: Duration = Duration::from_secs(30);

/// The `example.wasmkube.io/v1` custom kind `kind` (`plural`), for dynamic clients.
fn resource(kind: &str, plural: &str) -> kube::discovery::ApiResource {
    kube::discovery::ApiResource {
        group: "example.wasmkube.io".into(),
        version: "v1".into(),
        api_version: "example.wasmkube.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Waits until definition `name` is `Established`.
async fn established(crds: &Api<CustomResourceDefinition>, name: &str) -> Result<()> {
    wait_for("the definition Established", SLOW, || async {
        let crd = crds.get(name).await.ok()?;
        crd.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await
}

/// The operator's resource, as an operator author writes it.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "example.wasmkube.io",
    version = "v1",
    kind = "Gadget",
    namespaced,
    status = "GadgetStatus",
    shortname = "gd",
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".spec.size"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#
)]
struct GadgetSpec {
    size: i32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
struct GadgetStatus {
    phase: String,
    observed_size: i32,
}

const FINALIZER: &str = "gadgets.example.wasmkube.io/cleanup";

async fn reconcile(
    g: Arc<Gadget>,
    client: Arc<kube::Client>,
) -> Result<Action, kube::runtime::finalizer::Error<kube::Error>> {
    let ns = g.namespace().unwrap_or_default();
    let api: Api<Gadget> = Api::namespaced((*client).clone(), &ns);
    finalizer(&api, FINALIZER, g, |event| async {
        match event {
            Finalizer::Apply(g) => {
                let status = json!({"status": {"phase": "Ready", "observed_size": g.spec.size}});
                api.patch_status(
                    &g.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await?;
                Ok(Action::await_change())
            }
            Finalizer::Cleanup(_) => Ok(Action::await_change()),
        }
    })
    .await
}

#[tokio::test]
async fn a_kube_rs_operator_should_reconcile_its_custom_resources_unmodified() -> Result<()> {
    let cluster = Cluster::start().await?;
    let c = cluster.client.clone();
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    crds.create(&PostParams::default(), &Gadget::crd()).await?;
    established(&crds, "gadgets.example.wasmkube.io").await?;

    let stop = tokio_util::sync::CancellationToken::new();
    let operator = {
        let (client, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            Controller::new(
                Api::<Gadget>::all(client.clone()),
                watcher::Config::default(),
            )
            .graceful_shutdown_on(stop.cancelled_owned())
            .run(
                reconcile,
                |_, _, _| Action::requeue(Duration::from_secs(1)),
                Arc::new(client),
            )
            .for_each(|r| async move {
                if let Err(e) = r {
                    eprintln!("operator: {e:?}");
                }
            })
            .await;
        })
    };
    let gadgets: Api<Gadget> = Api::namespaced(c.clone(), "default");
    gadgets
        .create(
            &PostParams::default(),
            &Gadget::new("g1", GadgetSpec { size: 3 }),
        )
        .await?;
    let seen = wait_for("the operator's status on g1", SLOW, || async {
        let g = gadgets.get("g1").await.ok()?;
        (g.status.as_ref()?.phase == "Ready").then_some(g)
    })
    .await?;
    ensure!(seen.status.as_ref().map(|s| s.observed_size) == Some(3));
    ensure!(
        seen.finalizers().iter().any(|f| f == FINALIZER),
        "the operator's finalizer: {:?}",
        seen.finalizers()
    );
    // Its deletion waits for the operator's cleanup, then the object goes.
    gadgets.delete("g1", &DeleteParams::default()).await?;
    wait_for("g1 gone after the operator's cleanup", SLOW, || async {
        gadgets.get_opt("g1").await.ok()?.is_none().then_some(())
    })
    .await?;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), operator).await;
    cluster.stop().await
}

fn widget_crd() -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.wasmkube.io"},
        "spec": {"group": "example.wasmkube.io", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"],
                      "categories": ["all"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                    "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Color", "type": "string", "jsonPath": ".spec.color"}],
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"],
                      "x-kubernetes-validations": [{"rule": "!has(self.replicas) || self.replicas <= self.size * 2",
                          "message": "replicas may be at most twice the size"}],
                      "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                        "replicas": {"type": "integer", "minimum": 0}}},
                    "status": {"type": "object", "properties": {"ready": {"type": "boolean"},
                        "replicas": {"type": "integer"}, "selector": {"type": "string"}}}}}}},
                {"name": "v1beta1", "served": true, "storage": false,
                 "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]}
    })
}

#[tokio::test]
async fn a_custom_resource_definition_should_be_served_validated_and_deleted_with_its_objects()
-> Result<()> {
    let cluster = Cluster::start().await?;
    let c = cluster.client.clone();
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    // A definition that cannot work is refused, naming the field.
    let mut bad = widget_crd();
    bad["metadata"]["name"] = json!("wrong.example.wasmkube.io");
    bad["spec"]["versions"][1]["storage"] = json!(true);
    let err = crds
        .create(&PostParams::default(), &serde_json::from_value(bad)?)
        .await
        .expect_err("an invalid definition");
    let text = format!("{err}");
    ensure!(
        text.contains("metadata.name") && text.contains("exactly one version marked as storage"),
        "{text}"
    );

    crds.create(
        &PostParams::default(),
        &serde_json::from_value(widget_crd())?,
    )
    .await?;
    wait_for("Established", SLOW, || async {
        let crd = crds.get("widgets.example.wasmkube.io").await.ok()?;
        let status = crd.status?;
        let established = status
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        (established && status.stored_versions == Some(vec!["v1".into()])).then_some(())
    })
    .await?;

    let ar = resource("Widget", "widgets");
    let widgets: Api<kube::api::DynamicObject> = Api::namespaced_with(c.clone(), "default", &ar);
    let mut events = watcher::watcher(widgets.clone(), watcher::Config::default()).boxed();
    let w: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.wasmkube.io/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 2, "shape": "round"},
        "status": {"ready": true}}))?;
    let made = widgets.create(&PostParams::default(), &w).await?;
    ensure!(
        made.data["spec"]["color"] == "red",
        "defaulted: {:?}",
        made.data
    );
    ensure!(
        made.data["spec"].get("shape").is_none(),
        "pruned: {:?}",
        made.data
    );
    ensure!(
        made.data.get("status").is_none(),
        "status ignored on create: {:?}",
        made.data
    );
    wasmkube_tests::next_within(&mut events, SLOW)
        .await
        .ok_or_else(|| anyhow::anyhow!("a watch event for w1"))?;

    // Schema violations: 422 Invalid naming each field, in kube-apiserver's words.
    let bad: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.wasmkube.io/v1", "kind": "Widget",
        "metadata": {"name": "w2"}, "spec": {"size": 11, "color": "green"}}))?;
    match widgets.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) => {
            ensure!(s.code == 422, "{s:?}");
            ensure!(
                s.message
                    .contains("spec.size in body should be less than or equal to 10")
                    && s.message
                        .contains("spec.color: Unsupported value: \"green\""),
                "{}",
                s.message
            );
        }
        other => anyhow::bail!("an invalid widget: {other:?}"),
    }

    // A CEL rule of the schema (x-kubernetes-validations).
    match widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 9}})),
        )
        .await
    {
        Err(kube::Error::Api(s)) => ensure!(
            s.code == 422
                && s.message.contains(
                    "spec: Invalid value: \"object\": replicas may be at most twice the size"
                ),
            "{s:?}"
        ),
        other => anyhow::bail!("a patch breaking a CEL rule: {other:?}"),
    }

    // Patch the spec; write the status through /status.
    widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}})),
        )
        .await?;
    widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}})),
        )
        .await?;
    let got = widgets.get("w1").await?;
    ensure!(
        got.data["spec"]["size"] == 5 && got.data["status"]["ready"] == true,
        "{:?}",
        got.data
    );
    // The scale subresource, where the definition says (what an autoscaler scales).
    widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 1, "selector": "app=w1"}})),
        )
        .await?;
    widgets
        .patch_scale(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await?;
    let scale = widgets.get_scale("w1").await?;
    ensure!(
        scale.spec.as_ref().and_then(|s| s.replicas) == Some(3)
            && scale
                .status
                .as_ref()
                .map(|s| (s.replicas, s.selector.clone()))
                == Some((1, Some("app=w1".into()))),
        "{scale:?}"
    );
    ensure!(widgets.get("w1").await?.data["spec"]["replicas"] == 3);
    // The other version shows the same object.
    let ar_beta = kube::discovery::ApiResource {
        version: "v1beta1".into(),
        api_version: "example.wasmkube.io/v1beta1".into(),
        ..ar.clone()
    };
    let beta: Api<kube::api::DynamicObject> = Api::namespaced_with(c.clone(), "default", &ar_beta);
    let as_beta = beta.get("w1").await?;
    ensure!(
        as_beta.types.as_ref().map(|t| t.api_version.as_str())
            == Some("example.wasmkube.io/v1beta1")
            && as_beta.data["spec"]["size"] == 5,
        "{as_beta:?}"
    );

    // Printer columns in the Table kubectl asks for.
    let (code, table) = wasmkube_tests::raw(
        &c,
        "GET",
        "/apis/example.wasmkube.io/v1/namespaces/default/widgets",
        "",
        "application/json;as=Table;v=v1;g=meta.k8s.io",
        b"",
    )
    .await?;
    ensure!(code == 200, "{table}");
    let headers: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    ensure!(headers == ["Name", "Size", "Color"], "{headers:?}");
    ensure!(
        table["rows"][0]["cells"] == json!(["w1", 5, "red"]),
        "{table}"
    );

    // Discovery knows it, with its short name.
    let discovery = kube::Discovery::new(c.clone()).run().await?;
    let found = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .any(|(r, _)| r.kind == "Widget");
    ensure!(found, "Widget in discovery");

    if wasmkube_tests::kubectl().is_some() {
        let kc = &cluster.kubeconfig;
        for version in ["1.27", "1.33"] {
            let bin = wasmkube_tests::kubectl_version(version).expect("kubectl");
            let (ok, out, err) = run_kubectl(&bin, kc, &["get", "wd"]).await?;
            ensure!(
                ok && out.contains("SIZE") && out.contains("w1"),
                "kubectl {version} get wd: {out} {err}"
            );
        }
        let bin = wasmkube_tests::kubectl_version("1.33").expect("kubectl");
        // kubectl 1.33 with an empty cache discovers everything in two aggregated requests
        // (`/api`, `/apis`), the custom kind included, instead of one per group version.
        let cache = tempfile::tempdir()?;
        let cache = cache.path().to_string_lossy();
        let (ok, _, log) =
            run_kubectl(&bin, kc, &["--cache-dir", &cache, "get", "wd", "-v=6"]).await?;
        ensure!(
            ok && !log.contains("/apis/apps/v1?")
                && !log.contains("/apis/example.wasmkube.io/v1?timeout"),
            "kubectl get wd with aggregated discovery: {log}"
        );
        // `kubectl explain` reads the published OpenAPI v3 schema (kubectl ≥ 1.28 does so).
        let (ok, out, err) = run_kubectl(&bin, kc, &["explain", "widgets.spec"]).await?;
        ensure!(
            ok && out.contains("size") && out.contains("color"),
            "kubectl explain widgets.spec: {out} {err}"
        );
        // kubectl 1.27 reads the Swagger 2.0 document (`/openapi/v2`, gnostic protobuf): the
        // custom kind and the built-in ones, references followed into nested fields.
        let old = wasmkube_tests::kubectl_version("1.27").expect("kubectl");
        for (path, want) in [
            ("widgets.spec", "size"),
            ("pods.spec.containers.ports", "containerPort"),
        ] {
            let (ok, out, err) =
                run_kubectl(&old, kc, &["explain", path, "--output=plaintext-openapiv2"]).await?;
            ensure!(
                ok && out.contains(want),
                "kubectl 1.27 explain {path} from /openapi/v2: {out} {err}"
            );
        }
    } else {
        eprintln!(
            "SKIPPED: kubectl is not installed; kubectl get of a custom resource not exercised"
        );
    }

    // Deleting the definition deletes its objects, then the definition.
    crds.delete("widgets.example.wasmkube.io", &DeleteParams::default())
        .await?;
    wait_for("the definition and its objects gone", SLOW, || async {
        crds.get_opt("widgets.example.wasmkube.io")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    let (code, _) = wasmkube_tests::raw(
        &c,
        "GET",
        "/apis/example.wasmkube.io/v1/namespaces/default/widgets",
        "",
        "application/json",
        b"",
    )
    .await?;
    ensure!(code == 404, "no longer served: {code}");
    cluster.stop().await
}

#[tokio::test]
async fn kubectl_should_take_a_custom_resource_from_definition_to_deletion() -> Result<()> {
    if wasmkube_tests::kubectl().is_none() {
        eprintln!("SKIPPED: kubectl is not installed; the kubectl CRD lifecycle is not exercised");
        return Ok(());
    };
    let cluster = Cluster::start().await?;
    let kc = cluster.kubeconfig.clone();
    let dir = tempfile::tempdir()?;
    let crd_file = dir.path().join("crd.json");
    std::fs::write(&crd_file, serde_json::to_vec(&widget_crd())?)?;
    let crd_path = crd_file.to_string_lossy();
    let cr = dir.path().join("w.json");
    std::fs::write(
        &cr,
        serde_json::to_vec(
            &json!({"apiVersion": "example.wasmkube.io/v1", "kind": "Widget",
            "metadata": {"name": "k1", "namespace": "default"}, "spec": {"size": 4}}),
        )?,
    )?;
    let cr_path = cr.to_string_lossy();
    let patch = |p: &'static str| ["patch", "widget", "k1", "--type=merge", "-p", p];
    for version in ["1.27", "1.33"] {
        let bin = wasmkube_tests::kubectl_version(version).expect("kubectl");
        let run = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            let (bin, kc) = (bin.clone(), kc.clone());
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_kubectl(&bin, &kc, &args).await
            }
        };
        let (ok, out, err) = run(&["apply", "-f", &crd_path]).await?;
        ensure!(ok, "kubectl {version} apply crd: {out} {err}");
        let (ok, out, err) = run(&[
            "wait",
            "--for",
            "condition=Established",
            "crd/widgets.example.wasmkube.io",
            "--timeout=30s",
        ])
        .await?;
        ensure!(ok, "kubectl {version} wait Established: {out} {err}");
        let (ok, out, err) = run(&["apply", "-f", &cr_path]).await?;
        ensure!(ok, "kubectl {version} apply widget: {out} {err}");
        let (ok, out, err) = run(&["get", "widgets"]).await?;
        ensure!(
            ok && out.contains("SIZE") && out.contains("COLOR") && out.contains("red"),
            "kubectl {version} get widgets: {out} {err}"
        );
        let (ok, out, err) = run(&patch(r#"{"spec":{"size":6}}"#)).await?;
        ensure!(ok, "kubectl {version} patch: {out} {err}");
        let (ok, out, _) = run(&["get", "wd", "k1", "-o", "jsonpath={.spec.size}"]).await?;
        ensure!(
            ok && out.trim() == "6",
            "kubectl {version} patched size: {out}"
        );
        // The schema and a CEL rule refuse, in kube-apiserver's words.
        let (ok, _, err) = run(&patch(r#"{"spec":{"size":0}}"#)).await?;
        ensure!(
            !ok && err.contains("spec.size in body should be greater than or equal to 1"),
            "kubectl {version} invalid patch: {err}"
        );
        let (ok, _, err) = run(&patch(r#"{"spec":{"replicas":20}}"#)).await?;
        ensure!(
            !ok && err.contains("replicas may be at most twice the size"),
            "kubectl {version} CEL refusal: {err}"
        );
        // The definition goes, and its objects with it.
        let (ok, out, err) = run(&[
            "delete",
            "crd",
            "widgets.example.wasmkube.io",
            "--timeout=30s",
        ])
        .await?;
        ensure!(ok, "kubectl {version} delete crd: {out} {err}");
        let (ok, _, err) = run(&["get", "widgets"]).await?;
        // (kubectl's discovery cache may still know the kind; the server no longer serves it.)
        ensure!(
            !ok && (err.contains("the server doesn't have a resource type")
                || err.contains("the server could not find the requested resource")),
            "kubectl {version} after deletion: {err}"
        );
    }
    cluster.stop().await
}

#[tokio::test]
async fn custom_resources_should_be_garbage_collected_and_go_with_their_namespace() -> Result<()> {
    let cluster = Cluster::start().await?;
    let c = cluster.client.clone();
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(widget_crd())?,
    )
    .await?;
    established(&crds, "widgets.example.wasmkube.io").await?;
    let _controllers = cluster.start_controllers_with(|cfg| {
        cfg.controllers = vec!["garbagecollector".into(), "namespace".into()];
    });
    let ar = resource("Widget", "widgets");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "gadgetry"}}))?,
        )
        .await?;
    let widgets: Api<kube::api::DynamicObject> = Api::namespaced_with(c.clone(), "gadgetry", &ar);
    let owner = widgets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "example.wasmkube.io/v1",
                "kind": "Widget", "metadata": {"name": "owner"}, "spec": {"size": 1}}))?,
        )
        .await?;
    // A ConfigMap the widget owns goes when the widget goes.
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(c.clone(), "gadgetry");
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "owned", "ownerReferences": [{
            "apiVersion": "example.wasmkube.io/v1", "kind": "Widget", "name": "owner",
            "uid": owner.metadata.uid}]}}))?,
    )
    .await?;
    widgets.delete("owner", &DeleteParams::default()).await?;
    wait_for("the owned ConfigMap collected", SLOW, || async {
        maps.get_opt("owned").await.ok()?.is_none().then_some(())
    })
    .await?;
    // A widget left in a namespace goes with the namespace.
    widgets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "example.wasmkube.io/v1",
                "kind": "Widget", "metadata": {"name": "left"}, "spec": {"size": 1}}))?,
        )
        .await?;
    namespaces
        .delete("gadgetry", &DeleteParams::default())
        .await?;
    wait_for("the namespace and its widget gone", SLOW, || async {
        namespaces
            .get_opt("gadgetry")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    ensure!(widgets.get_opt("left").await?.is_none());
    cluster.stop().await
}

#[tokio::test]
async fn server_side_apply_should_merge_custom_lists_by_their_list_type() -> Result<()> {
    let cluster = Cluster::start().await?;
    let c = cluster.client.clone();
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let list = |extra: serde_json::Value| {
        let mut s = json!({"type": "array"});
        s.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        s
    };
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "routes.example.wasmkube.io"},
            "spec": {"group": "example.wasmkube.io", "scope": "Namespaced",
                "names": {"plural": "routes", "singular": "route", "kind": "Route"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "properties": {
                            "ports": list(json!({
                                "x-kubernetes-list-type": "map",
                                "x-kubernetes-list-map-keys": ["name", "protocol"],
                                "items": {"type": "object", "required": ["name", "protocol"],
                                    "properties": {"name": {"type": "string"},
                                        "protocol": {"type": "string"},
                                        "port": {"type": "integer"}}}})),
                            "tags": list(json!({"x-kubernetes-list-type": "set",
                                "items": {"type": "string"}})),
                            "hosts": list(json!({"items": {"type": "string"}}))
                        }}}}}}]}
        }))?,
    )
    .await?;
    established(&crds, "routes.example.wasmkube.io").await?;
    let ar = resource("Route", "routes");
    let routes: Api<kube::core::DynamicObject> = Api::namespaced_with(c.clone(), "default", &ar);
    let apply = |manager: &'static str, spec: serde_json::Value, force: bool| {
        let routes = routes.clone();
        async move {
            let obj = json!({"apiVersion": "example.wasmkube.io/v1", "kind": "Route",
                "metadata": {"name": "r"}, "spec": spec});
            let mut pp = PatchParams::apply(manager);
            pp.force = force;
            routes.patch("r", &pp, &Patch::Apply(&obj)).await
        }
    };
    // Two managers own one item each of a `map` list (two keys) and a `set`.
    apply(
        "alpha",
        json!({"ports": [{"name": "web", "protocol": "TCP", "port": 80}], "tags": ["a"]}),
        false,
    )
    .await?;
    let r = apply(
        "beta",
        json!({"ports": [{"name": "web", "protocol": "UDP", "port": 81}], "tags": ["b"]}),
        false,
    )
    .await?;
    let spec = &r.data["spec"];
    assert_eq!(
        spec["ports"],
        json!([{"name": "web", "protocol": "TCP", "port": 80},
               {"name": "web", "protocol": "UDP", "port": 81}]),
        "items told apart by both keys"
    );
    assert_eq!(spec["tags"], json!(["a", "b"]));
    let managed = serde_json::to_value(r.metadata.managed_fields.unwrap_or_default())?;
    let beta = managed
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["manager"] == "beta")
        .expect("beta's entry");
    assert!(
        beta["fieldsV1"]["f:spec"]["f:ports"]
            .as_object()
            .is_some_and(|o| o.contains_key(r#"k:{"name":"web","protocol":"UDP"}"#)),
        "beta owns its item by both keys: {beta}"
    );
    // alpha drops its item: beta's stays.
    let r = apply("alpha", json!({"tags": ["a"]}), false).await?;
    assert_eq!(
        r.data["spec"]["ports"],
        json!([{"name": "web", "protocol": "UDP", "port": 81}])
    );
    // An `atomic` list (the default) is one value: another manager's differing list conflicts.
    apply("alpha", json!({"tags": ["a"], "hosts": ["x"]}), false).await?;
    let err = apply(
        "beta",
        json!({"ports": [{"name": "web", "protocol": "UDP", "port": 81}],
        "tags": ["b"], "hosts": ["y"]}),
        false,
    )
    .await
    .expect_err("a conflict over the atomic list");
    ensure!(
        matches!(&err, kube::Error::Api(e) if e.code == 409 && e.message.contains(".spec.hosts")),
        "{err}"
    );
    Ok(())
}
