//! Deployments end to end: a rolling update that respects maxSurge/maxUnavailable, the status
//! `kubectl rollout status` waits on, and `kubectl rollout undo` (or the same patch from
//! kube-rs when kubectl is absent) restoring the previous template.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::process::Command;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use wasmkube_tests::{Cluster, wait_for};

const SLOW: Duration = Duration::from_secs(90);

fn image_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers[0].image.clone())
        .unwrap_or_default()
}

async fn rolled_out(deploys: &Api<Deployment>, image: &str) -> Result<Deployment> {
    wait_for(&format!("the rollout to {image}"), SLOW, || async {
        let d = deploys.get("web").await.ok()?;
        let s = d.status.clone()?;
        let done = s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(3)
            && s.replicas == Some(3)
            && s.available_replicas == Some(3)
            && image_of(&d) == image;
        done.then_some(d)
    })
    .await
}

enum Change {
    Set(watcher::Event<ReplicaSet>),
    Deploy(watcher::Event<Deployment>),
}

/// The next change, or an error when the watches end or go quiet for too long.
async fn next(
    changes: &mut futures::stream::BoxStream<'static, Result<Change, watcher::Error>>,
) -> Result<Change> {
    match tokio::time::timeout(SLOW, changes.try_next()).await {
        Ok(Ok(Some(c))) => Ok(c),
        Ok(Ok(None)) => anyhow::bail!("the watches ended"),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => anyhow::bail!("no change for {SLOW:?}"),
    }
}

/// Prints the Deployment, its ReplicaSets and pods, for a stalled rollout.
async fn dump(c: &kube::Client) {
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.clone(), "default");
    if let Ok(d) = deploys.get("web").await {
        eprintln!(
            "deployment: gen {:?} status {:?}",
            d.metadata.generation, d.status
        );
    }
    for rs in sets
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        eprintln!(
            "rs {}: replicas {:?} status {:?}",
            rs.name_any(),
            rs.spec.as_ref().and_then(|s| s.replicas),
            rs.status
        );
    }
    for p in pods
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        eprintln!(
            "pod {} owner {:?} deleting {:?} node {:?} phase {:?} conditions {:?}",
            p.name_any(),
            p.metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].name.clone()),
            p.metadata.deletion_timestamp,
            p.spec.as_ref().and_then(|s| s.node_name.clone()),
            p.status.as_ref().and_then(|s| s.phase.clone()),
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .map(|c| c
                    .iter()
                    .map(|c| format!("{}={}", c.type_, c.status))
                    .collect::<Vec<_>>())
        );
    }
}

#[tokio::test]
async fn a_deployment_rolls_out_within_its_budget_and_rolls_back() -> Result<()> {
    let cluster = Cluster::start_with_control_plane().await?;
    let a = cluster.start_node("node-a").await?;
    let b = cluster.start_node("node-b").await?;
    let v1 = cluster.push_sample("toolbox").await?;
    let v2 = "toolbox:v2".to_owned();
    cluster
        .push(
            &v2,
            wasmkube_samples::guest("toolbox")
                .context("sample")?
                .to_vec(),
        )
        .await?;
    let c = &cluster.client;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {
        "replicas": 3, "selector": {"matchLabels": {"app": "web"}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": v1, "args": ["forever"]}]}}}}))?;
    deploys.create(&PostParams::default(), &d).await?;
    let first = rolled_out(&deploys, &v1).await?;
    assert_eq!(
        first
            .annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    let conds = first.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True"),
        "{conds:?}"
    );
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Progressing"
                && c.reason.as_deref() == Some("NewReplicaSetAvailable")),
        "{conds:?}"
    );
    if let Some(k) = wasmkube_tests::kubectl() {
        let out = Command::new(&k)
            .args([
                "rollout",
                "status",
                "deployment/web",
                "--timeout=60s",
                "--kubeconfig",
            ])
            .arg(&cluster.kubeconfig)
            .output()
            .await?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("successfully rolled out"));
    } else {
        eprintln!("kubectl not installed; checked the rollout through the API only");
    }

    // The events kube-controller-manager records (written in the background): the
    // Deployment's `ScalingReplicaSet`, its ReplicaSet's `SuccessfulCreate`.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.clone(), "default");
    let (scaled, created) = wait_for("the controllers' events", SLOW, || async {
        let all = events.list(&ListParams::default()).await.ok()?.items;
        let of = |kind: &str, reason: &str| -> Vec<String> {
            all.iter()
                .filter(|e| {
                    e.involved_object.kind.as_deref() == Some(kind)
                        && e.reason.as_deref() == Some(reason)
                })
                .filter_map(|e| e.message.clone())
                .collect()
        };
        let (scaled, created) = (
            of("Deployment", "ScalingReplicaSet"),
            of("ReplicaSet", "SuccessfulCreate"),
        );
        // One event per note (a repeat of the same note folds into a series): the
        // ReplicaSet's three pods are three `SuccessfulCreate` events, as client-go writes them.
        (!scaled.is_empty() && created.len() >= 3).then_some((scaled, created))
    })
    .await?;
    assert!(
        scaled
            .iter()
            .any(|m| m.starts_with("Scaled up replica set web-") && m.ends_with(" from 0 to 3")),
        "{scaled:?}"
    );
    assert!(
        created.iter().all(|m| m.starts_with("Created pod: web-")),
        "{created:?}"
    );
    let named: std::collections::BTreeSet<&String> = created.iter().collect();
    assert_eq!(named.len(), created.len(), "a pod named once: {created:?}");

    // Roll to v2, watching the ReplicaSets: never more than replicas+maxSurge pods asked for,
    // never fewer than replicas-maxUnavailable available, at any change the watch reports.
    let set_changes = watcher::watcher(sets.clone(), watcher::Config::default().labels("app=web"))
        .map(|e| e.map(Change::Set));
    let deploy_changes = watcher::watcher(
        deploys.clone(),
        watcher::Config::default().fields("metadata.name=web"),
    )
    .map(|e| e.map(Change::Deploy));
    let mut changes = futures::stream::select(set_changes, deploy_changes).boxed();
    // Both watches have listed before the template changes, so nothing is missed.
    let mut listed = 0;
    let mut current: BTreeMap<String, ReplicaSet> = BTreeMap::new();
    while listed < 2 {
        match next(&mut changes).await? {
            Change::Set(watcher::Event::InitApply(rs)) => {
                current.insert(rs.name_any(), rs);
            }
            Change::Set(watcher::Event::InitDone) | Change::Deploy(watcher::Event::InitDone) => {
                listed += 1
            }
            _ => {}
        }
    }
    deploys.patch("web", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": v2, "args": ["forever"]}]}}}}))).await?;
    let (mut max_total, mut min_available) = (0, i32::MAX);
    loop {
        let change = match next(&mut changes).await {
            Ok(c) => c,
            Err(e) => {
                dump(c).await;
                return Err(e);
            }
        };
        match change {
            Change::Set(watcher::Event::Apply(rs) | watcher::Event::InitApply(rs)) => {
                current.insert(rs.name_any(), rs);
            }
            Change::Set(watcher::Event::Delete(rs)) => {
                current.remove(&rs.name_any());
            }
            Change::Deploy(watcher::Event::Apply(d)) => {
                let s = d.status.clone().unwrap_or_default();
                let done = s.observed_generation >= d.metadata.generation
                    && s.updated_replicas == Some(3)
                    && s.replicas == Some(3)
                    && s.available_replicas == Some(3)
                    && image_of(&d) == v2;
                if done {
                    break;
                }
                continue;
            }
            _ => continue,
        }
        let total: i32 = current
            .values()
            .map(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
            .sum();
        let available: i32 = current
            .values()
            .map(|rs| {
                rs.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0)
            })
            .sum();
        max_total = max_total.max(total);
        min_available = min_available.min(available);
    }
    assert!(
        max_total <= 4,
        "maxSurge 1: at most 4 pods asked for, saw {max_total}"
    );
    assert!(
        min_available >= 3,
        "maxUnavailable 0: never under 3 available, saw {min_available}"
    );
    let second = deploys.get("web").await?;
    assert_eq!(
        second
            .annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("2")
    );
    let list = sets
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items;
    assert_eq!(list.len(), 2, "one ReplicaSet per template");

    // Undo: what `kubectl rollout undo` does — put the previous ReplicaSet's template back.
    match wasmkube_tests::kubectl() {
        Some(k) => {
            let out = Command::new(&k)
                .args(["rollout", "undo", "deployment/web", "--kubeconfig"])
                .arg(&cluster.kubeconfig)
                .output()
                .await?;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => {
            let old = list
                .iter()
                .find(|rs| {
                    rs.annotations()
                        .get("deployment.kubernetes.io/revision")
                        .map(String::as_str)
                        == Some("1")
                })
                .context("revision 1")?;
            let mut template = serde_json::to_value(
                old.spec
                    .as_ref()
                    .and_then(|s| s.template.clone())
                    .context("template")?,
            )?;
            template["metadata"]["labels"]
                .as_object_mut()
                .context("labels")?
                .remove("pod-template-hash");
            let patch: json_patch::Patch = serde_json::from_value(
                json!([{"op": "replace", "path": "/spec/template", "value": template}]),
            )?;
            deploys
                .patch("web", &PatchParams::default(), &Patch::<()>::Json(patch))
                .await?;
        }
    }
    let third = rolled_out(&deploys, &v1).await?;
    assert_eq!(
        third
            .annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("3")
    );
    let list = sets
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items;
    assert_eq!(
        list.len(),
        2,
        "the old ReplicaSet came back instead of a new one"
    );
    let revived = list
        .iter()
        .find(|rs| rs.spec.as_ref().and_then(|s| s.replicas) == Some(3))
        .context("the active set")?;
    assert_eq!(
        revived
            .annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("3")
    );
    a.stop().await?;
    b.stop().await
}

/// The ControllerRevisions `owner` controls, oldest first.
async fn revisions_of(
    c: &kube::Client,
    owner_uid: &str,
) -> Result<Vec<k8s_openapi::api::apps::v1::ControllerRevision>> {
    let api: Api<k8s_openapi::api::apps::v1::ControllerRevision> =
        Api::default_namespaced(c.clone());
    let mut owned: Vec<_> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| r.owner_references().iter().any(|o| o.uid == owner_uid))
        .collect();
    owned.sort_by_key(|r| r.revision);
    Ok(owned)
}

#[tokio::test]
async fn a_stateful_set_keeps_its_template_history_and_rolls_back() -> Result<()> {
    use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
    use k8s_openapi::api::core::v1::Pod;
    let cluster = Cluster::start_with_control_plane().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let sets: Api<StatefulSet> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let template = |mode: &str| {
        json!({"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c",
            "image": image, "args": ["forever"], "env": [{"name": "MODE", "value": mode}]}]}})
    };
    let set = sets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "db",
                "annotations": {"kubernetes.io/change-cause": "first"}},
                "spec": {"replicas": 1, "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}}, "template": template("v1")}}))?,
        )
        .await?;
    let uid = set.metadata.uid.clone().context("a uid")?;
    // The pod's revision label names the set's revision, which is a ControllerRevision.
    let pod_revision = || async {
        pods.get_opt("db-0")
            .await
            .ok()
            .flatten()
            .filter(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && p.metadata.deletion_timestamp.is_none()
            })
            .and_then(|p| p.labels().get("controller-revision-hash").cloned())
    };
    let first = wait_for("db-0 running at the first revision", SLOW, || async {
        let rev = pod_revision().await?;
        let revisions = revisions_of(c, &uid).await.ok()?;
        (revisions.len() == 1 && revisions[0].name_any() == rev).then(|| revisions[0].clone())
    })
    .await?;
    anyhow::ensure!(first.revision == 1, "{first:?}");
    let data = first.data.as_ref().context("data")?;
    anyhow::ensure!(
        data.0["spec"]["template"]["$patch"] == "replace"
            && data.0["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == "v1",
        "{data:?}"
    );
    anyhow::ensure!(
        first
            .annotations()
            .get("kubernetes.io/change-cause")
            .map(String::as_str)
            == Some("first")
    );

    // A new template: a second revision, the pod replaced onto it.
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": template("v2")}})),
    )
    .await?;
    let second = wait_for("db-0 running at a second revision", SLOW, || async {
        let rev = pod_revision().await?;
        let revisions = revisions_of(c, &uid).await.ok()?;
        (revisions.len() == 2 && revisions[1].name_any() == rev && rev != first.name_any())
            .then(|| revisions[1].clone())
    })
    .await?;
    anyhow::ensure!(second.revision == 2, "{second:?}");

    // Undo: kubectl applies the first revision's data; that revision is renumbered 3 and the
    // pod goes back to it (the same patch from kube-rs when kubectl is absent).
    let kubectl = wasmkube_tests::kubectl();
    if let Some(kubectl) = &kubectl {
        let (ok, out, err) = wasmkube_tests::run_kubectl(
            kubectl,
            &cluster.kubeconfig,
            &["rollout", "undo", "statefulset/db"],
        )
        .await?;
        anyhow::ensure!(ok && out.contains("rolled back"), "{out} {err}");
    } else {
        eprintln!("kubectl is not installed; rolled back with kube-rs's patch");
        sets.patch(
            "db",
            &PatchParams::default(),
            &Patch::Strategic(data.0.clone()),
        )
        .await?;
    }
    wait_for(
        "db-0 back at the first revision, renumbered 3",
        SLOW,
        || async {
            let rev = pod_revision().await?;
            let revisions = revisions_of(c, &uid).await.ok()?;
            (revisions.len() == 2
                && rev == first.name_any()
                && revisions[1].name_any() == rev
                && revisions[1].revision == 3)
                .then_some(())
        },
    )
    .await?;
    if let Some(kubectl) = &kubectl {
        let (ok, out, err) = wasmkube_tests::run_kubectl(
            kubectl,
            &cluster.kubeconfig,
            &["rollout", "history", "statefulset/db"],
        )
        .await?;
        let numbers: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.parse::<u32>().is_ok())
            .collect();
        anyhow::ensure!(ok && numbers == ["2", "3"], "{out} {err}");
        let (ok, out, err) = wasmkube_tests::run_kubectl(
            kubectl,
            &cluster.kubeconfig,
            &["get", "controllerrevisions"],
        )
        .await?;
        anyhow::ensure!(
            ok && out.contains("statefulset.apps/db") && out.contains("CONTROLLER"),
            "{out} {err}"
        );
    }

    // A DaemonSet's revisions are named after it and its pods' hash.
    let daemons: Api<DaemonSet> = Api::default_namespaced(c.clone());
    let ds = daemons
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "agent"}, "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers":
                    [{"name": "c", "image": image, "args": ["forever"]}]}}}}))?,
        )
        .await?;
    let ds_uid = ds.metadata.uid.clone().context("a uid")?;
    wait_for("the DaemonSet's revision", SLOW, || async {
        let revisions = revisions_of(c, &ds_uid).await.ok()?;
        let hash = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?
            .items
            .first()?
            .labels()
            .get("controller-revision-hash")?
            .clone();
        (revisions.len() == 1 && revisions[0].name_any() == format!("agent-{hash}")).then_some(())
    })
    .await?;
    node.stop().await
}
