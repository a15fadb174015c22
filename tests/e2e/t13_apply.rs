//! Server-side apply as `kubectl apply --server-side` uses it: create by apply, managedFields,
//! conflicts with another manager, `force`, and removal of fields a manager stops applying.

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use wasmkube_tests::Cluster;

fn config(replicas: i32, with_annotation: bool) -> serde_json::Value {
    let mut v = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ssa"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "ssa"}},
                 "template": {"metadata": {"labels": {"app": "ssa"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
    if with_annotation {
        v["metadata"]["annotations"] = json!({"owner": "alice"});
    }
    v
}

#[tokio::test]
async fn apply_should_track_owners_conflict_and_force() -> Result<()> {
    let cluster = Cluster::start().await?;
    let api: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    let alice = PatchParams::apply("alice");
    let created = api
        .patch("ssa", &alice, &Patch::Apply(config(2, true)))
        .await?;
    ensure!(created.spec.as_ref().and_then(|s| s.replicas) == Some(2));
    let mf = created
        .metadata
        .managed_fields
        .clone()
        .expect("managedFields");
    ensure!(
        mf.len() == 1
            && mf[0].manager.as_deref() == Some("alice")
            && mf[0].operation.as_deref() == Some("Apply")
    );
    let fields = serde_json::to_value(&mf[0].fields_v1)?;
    ensure!(
        fields["f:spec"]["f:replicas"].is_object(),
        "alice owns spec.replicas: {fields}"
    );

    tracing::info!("--- bob applies a different replica count: conflict");
    let bob = PatchParams::apply("bob");
    let err = api
        .patch(
            "ssa",
            &bob,
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ssa"}, "spec": {"replicas": 5}})),
        )
        .await
        .expect_err("conflict");
    match err {
        kube::Error::Api(s) => ensure!(
            s.code == 409
                && s.message.contains("conflict with \"alice\"")
                && s.message.contains(".spec.replicas"),
            "{s:?}"
        ),
        other => anyhow::bail!("unexpected {other:?}"),
    }
    tracing::info!("--- the same value is shared, not a conflict");
    api.patch(
        "ssa",
        &bob,
        &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ssa"}, "spec": {"replicas": 2}})),
    )
    .await?;
    tracing::info!("--- bob forces");
    let forced = api
        .patch(
            "ssa",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ssa"}, "spec": {"replicas": 5}})),
        )
        .await?;
    ensure!(forced.spec.as_ref().and_then(|s| s.replicas) == Some(5));
    let alice_fields = forced
        .metadata
        .managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.manager.as_deref() == Some("alice"))
        .map(|m| serde_json::to_value(m.fields_v1).unwrap_or_default());
    ensure!(
        alice_fields.is_some_and(|f| f["f:spec"].get("f:replicas").is_none()),
        "alice lost spec.replicas"
    );

    tracing::info!("--- alice stops applying her annotation: it is removed");
    let after = api
        .patch(
            "ssa",
            &alice,
            &Patch::Apply({
                let mut c = config(5, false);
                c["spec"].as_object_mut().expect("spec").remove("replicas");
                c
            }),
        )
        .await?;
    ensure!(
        !after
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("owner"),
        "annotation removed"
    );
    ensure!(
        after.spec.as_ref().and_then(|s| s.replicas) == Some(5),
        "bob's replicas stay"
    );

    tracing::info!("--- an update by another client takes ownership without conflict");
    let updated = api
        .patch(
            "ssa",
            &PatchParams {
                field_manager: Some("carol".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await?;
    let carol = updated
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.manager.as_deref() == Some("carol"));
    ensure!(carol.is_some_and(|m| m.operation.as_deref() == Some("Update")));
    let (code, st) = wasmkube_tests::raw(
        &cluster.client,
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/ssa",
        "application/apply-patch+yaml",
        "application/json",
        config(1, false).to_string().as_bytes(),
    )
    .await?;
    ensure!(
        code == 400 && st["reason"] == "BadRequest",
        "fieldManager is required: {st}"
    );
    cluster.stop().await
}
