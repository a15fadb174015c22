//! A kind registered while the API server runs is served at once through every verb, as a
//! CustomResourceDefinition's kind will be: discovery, create, get, list, watch, patch,
//! validation by its strategy, delete — all through kube-rs.

use std::time::Duration;

use anyhow::{Result, ensure};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use wasmkube_apiserver::FieldError;
use wasmkube_apiserver::registry::Strategy;
use wasmkube_apiserver::table::Column;
use wasmkube_tests::Cluster;

/// A test-only namespaced kind, `widgets.test.wasmkube.io/v1`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
struct Widget {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec: Option<WidgetSpec>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
struct WidgetSpec {
    size: i64,
}

impl k8s_openapi::Resource for Widget {
    const API_VERSION: &'static str = "test.wasmkube.io/v1";
    const GROUP: &'static str = "test.wasmkube.io";
    const KIND: &'static str = "Widget";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "widgets";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for Widget {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

struct WidgetStrategy;

impl Strategy for WidgetStrategy {
    type K = Widget;

    fn default(&self, w: &mut Widget) {
        w.spec.get_or_insert(WidgetSpec { size: 1 });
    }

    fn validate(&self, w: &Widget) -> Vec<FieldError> {
        match &w.spec {
            Some(s) if s.size < 0 => vec![FieldError::invalid(
                "spec.size",
                s.size,
                "must be greater than or equal to 0",
            )],
            _ => Vec::new(),
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![Column::int("Size", "The widget's size")]
    }

    fn row(&self, w: &Widget) -> Vec<Value> {
        vec![json!(w.spec.as_ref().map_or(0, |s| s.size))]
    }
}

fn widget(name: &str, size: i64) -> Widget {
    Widget {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(WidgetSpec { size }),
        ..Widget::default()
    }
}

#[tokio::test]
async fn a_kind_registered_at_run_time_should_be_served_through_every_verb() -> Result<()> {
    let cluster = Cluster::start().await?;
    let widgets: Api<Widget> = Api::default_namespaced(cluster.client.clone());
    let before = widgets.list(&ListParams::default()).await;
    ensure!(
        matches!(&before, Err(kube::Error::Api(s)) if s.code == 404),
        "not served before it is registered: {before:?}"
    );

    tracing::info!("--- register while the server runs");
    cluster
        .registry()
        .register_with(WidgetStrategy, |i| i.short_names(&["wd"]));
    let discovery = kube::Discovery::new(cluster.client.clone()).run().await?;
    let found = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .any(|(ar, _)| ar.group == "test.wasmkube.io" && ar.plural == "widgets");
    ensure!(found, "discovery lists widgets.test.wasmkube.io");

    let mut events = watcher(widgets.clone(), watcher::Config::default()).boxed();
    // The watcher lists when polled: wait for its (empty) initial list before writing.
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next()).await?;
        match ev {
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(Ok(watcher::Event::Init)) => {}
            other => anyhow::bail!("the watch starts with an empty list: {other:?}"),
        }
    }

    tracing::info!("--- create, get, list");
    let created = widgets
        .create(&PostParams::default(), &widget("w1", 3))
        .await?;
    ensure!(created.metadata.uid.is_some() && created.kind == "Widget");
    let mut defaulted = widget("w2", 0);
    defaulted.spec = None;
    let w2 = widgets.create(&PostParams::default(), &defaulted).await?;
    ensure!(
        w2.spec.as_ref().map(|s| s.size) == Some(1),
        "the strategy defaulted spec.size: {w2:?}"
    );
    ensure!(widgets.get("w1").await?.spec.map(|s| s.size) == Some(3));
    let names: Vec<String> = widgets
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|w| w.metadata.name)
        .collect();
    ensure!(names == ["w1", "w2"], "list: {names:?}");

    tracing::info!("--- the strategy validates");
    let refused = widgets
        .create(&PostParams::default(), &widget("bad", -1))
        .await;
    ensure!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("spec.size")),
        "{refused:?}"
    );

    tracing::info!("--- patch, then delete; the watch saw all of it");
    let patched = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 7}})),
        )
        .await?;
    ensure!(patched.spec.map(|s| s.size) == Some(7));
    widgets.delete("w1", &DeleteParams::default()).await?;
    ensure!(widgets.get_opt("w1").await?.is_none(), "deleted");

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(|s: &String| s == "delete w1") {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the watch ended"))??;
        match ev {
            watcher::Event::Apply(w) | watcher::Event::InitApply(w) => seen.push(format!(
                "apply {} {}",
                w.metadata.name.unwrap_or_default(),
                w.spec.map_or(0, |s| s.size)
            )),
            watcher::Event::Delete(w) => {
                seen.push(format!("delete {}", w.metadata.name.unwrap_or_default()));
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }
    ensure!(
        seen == ["apply w1 3", "apply w2 1", "apply w1 7", "delete w1"],
        "watch events in order: {seen:?}"
    );
    cluster.stop().await
}
