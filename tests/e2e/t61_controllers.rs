//! The controller manager end to end, with the scheduler and real wasmlets: ReplicaSets keep
//! their replicas (replacement, scaling, adoption), namespaces are emptied and removed, and
//! every namespace gets its default ServiceAccount.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use wasmkube_tests::{Cluster, wait_for, wait_for_events};

const SLOW: Duration = Duration::from_secs(60);

async fn running_owned(pods: &Api<Pod>, uid: &str) -> Vec<Pod> {
    let list = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|r| r.uid == uid && r.controller == Some(true))
        })
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect()
}

#[tokio::test]
async fn a_replica_set_keeps_its_replicas_replaces_scales_and_adopts() -> Result<()> {
    let cluster = Cluster::start_with_control_plane().await?;
    let a = cluster.start_node("node-a").await?;
    let b = cluster.start_node("node-b").await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image, "args": ["forever"]}]}});

    // An orphan that matches is adopted instead of a new pod being made for it.
    let orphan: Pod = serde_json::from_value(
        json!({"metadata": {"name": "orphan", "labels": {"app": "web"}}, "spec": template["spec"]}),
    )?;
    pods.create(&PostParams::default(), &orphan).await?;
    let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template}}))?;
    let uid = sets
        .create(&PostParams::default(), &rs)
        .await?
        .metadata
        .uid
        .unwrap_or_default();
    let three = wait_for("3 running replicas", SLOW, || async {
        let owned = running_owned(&pods, &uid).await;
        (owned.len() == 3).then_some(owned)
    })
    .await?;
    assert!(
        three.iter().any(|p| p.name_any() == "orphan"),
        "the orphan was adopted"
    );
    wait_for("status readyReplicas 3", SLOW, || async {
        let s = sets.get("web").await.ok()?.status?;
        (s.ready_replicas == Some(3) && s.replicas == 3 && s.observed_generation == Some(1))
            .then_some(())
    })
    .await?;

    // A deleted pod is replaced.
    let victim = three
        .iter()
        .find(|p| p.name_any() != "orphan")
        .map(ResourceExt::name_any)
        .unwrap_or_default();
    pods.delete(&victim, &DeleteParams::default()).await?;
    wait_for("a replacement", SLOW, || async {
        let owned = running_owned(&pods, &uid).await;
        (owned.len() == 3 && owned.iter().all(|p| p.name_any() != victim)).then_some(())
    })
    .await?;

    // Scale up through the scale subresource (what `kubectl scale` uses), then down.
    sets.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 5}})),
    )
    .await?;
    wait_for("5 replicas", SLOW, || async {
        (running_owned(&pods, &uid).await.len() == 5).then_some(())
    })
    .await?;
    sets.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 1}})),
    )
    .await?;
    wait_for("1 replica and no pod left terminating", SLOW, || async {
        let all = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?
            .items;
        (all.len() == 1 && running_owned(&pods, &uid).await.len() == 1).then_some(())
    })
    .await?;
    let status = wait_for("status replicas 1", SLOW, || async {
        let s = sets.get("web").await.ok()?.status?;
        (s.replicas == 1).then_some(s)
    })
    .await?;
    assert_eq!(
        status.observed_generation,
        Some(3),
        "two scale changes bumped the generation"
    );
    a.stop().await?;
    b.stop().await
}

#[tokio::test]
async fn a_deleted_namespace_is_emptied_then_removed_and_new_ones_get_a_service_account()
-> Result<()> {
    let cluster = Cluster::start_with_control_plane().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let namespaces: Api<Namespace> = Api::all(c.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "doomed"}}))?,
        )
        .await?;
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), "doomed");
    wait_for("the default ServiceAccount", SLOW, || async {
        sas.get_opt("default").await.ok().flatten()
    })
    .await?;

    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "doomed");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"k": "v"}}))?,
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "doomed");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": image, "args": ["forever"]}]}}))?,
    )
    .await?;
    wait_for("the pod to run", SLOW, || async {
        (pods.get("p").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await?;

    namespaces
        .delete("doomed", &DeleteParams::default())
        .await?;
    let ns = namespaces.get("doomed").await?;
    assert_eq!(
        ns.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    wait_for("the namespace to be gone", SLOW, || async {
        matches!(namespaces.get_opt("doomed").await, Ok(None)).then_some(())
    })
    .await?;
    assert!(cms.get_opt("cfg").await?.is_none());
    assert!(
        pods.get_opt("p").await?.is_none(),
        "the pod was stopped and removed by its wasmlet"
    );
    node.stop().await
}

#[tokio::test]
async fn deleting_owners_collects_dependents_in_the_background_foreground_or_orphans_them()
-> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::PropagationPolicy;
    let cluster = Cluster::start_with_control_plane().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let template = |app: &str| json!({"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": image, "args": ["forever"]}]}});
    let running = |app: &'static str| {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            list.into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count()
        }
    };

    // Background (kubectl's default): the Deployment goes at once, then its ReplicaSet and pods.
    deploys.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "bg"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "bg"}}, "template": template("bg")}}))?).await?;
    wait_for("2 running bg pods", SLOW, || async {
        (running("bg").await == 2).then_some(())
    })
    .await?;
    deploys.delete("bg", &DeleteParams::background()).await?;
    wait_for(
        "the bg ReplicaSet and pods to be collected",
        SLOW,
        || async {
            let rs = sets
                .list(&ListParams::default().labels("app=bg"))
                .await
                .ok()?
                .items;
            let ps = pods
                .list(&ListParams::default().labels("app=bg"))
                .await
                .ok()?
                .items;
            (rs.is_empty() && ps.is_empty()).then_some(())
        },
    )
    .await?;

    // Orphan: the ReplicaSet goes, its pod stays, without the owner reference.
    sets.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "keep"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "keep"}}, "template": template("keep")}}))?).await?;
    wait_for("the keep pod", SLOW, || async {
        (running("keep").await == 1).then_some(())
    })
    .await?;
    sets.delete(
        "keep",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            ..Default::default()
        },
    )
    .await?;
    let orphan = wait_for("the ReplicaSet gone, the pod orphaned", SLOW, || async {
        sets.get_opt("keep").await.ok()?.is_none().then_some(())?;
        let p = pods
            .list(&ListParams::default().labels("app=keep"))
            .await
            .ok()?
            .items
            .into_iter()
            .next()?;
        p.metadata
            .owner_references
            .as_ref()
            .is_none_or(Vec::is_empty)
            .then_some(p)
    })
    .await?;
    assert!(
        orphan.metadata.deletion_timestamp.is_none(),
        "the orphaned pod keeps running"
    );

    // Foreground: the ReplicaSet waits (deletionTimestamp + finalizer) until its pod is gone.
    sets.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "fg"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "fg"}}, "template": template("fg")}}))?).await?;
    wait_for("the fg pod", SLOW, || async {
        (running("fg").await == 1).then_some(())
    })
    .await?;
    sets.delete("fg", &DeleteParams::foreground()).await?;
    let waiting = sets.get("fg").await?;
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert!(
        waiting
            .finalizers()
            .iter()
            .any(|f| f == "foregroundDeletion")
    );
    wait_for("the fg pod and then its ReplicaSet to go", SLOW, || async {
        let ps = pods
            .list(&ListParams::default().labels("app=fg"))
            .await
            .ok()?
            .items;
        (ps.is_empty() && sets.get_opt("fg").await.ok()?.is_none()).then_some(())
    })
    .await?;
    node.stop().await
}

#[tokio::test]
async fn a_silent_node_goes_unknown_and_its_pods_come_back_on_the_others() -> Result<()> {
    use k8s_openapi::api::core::v1::Node;
    let cluster = Cluster::start().await?;
    let _sched = cluster.start_scheduler();
    let _ctrl = cluster.start_controllers_with(|c| {
        c.node_timers = wasmkube_controllers::nodelifecycle::Timers {
            monitor_period: Duration::from_millis(300),
            grace_period: Duration::from_secs(3),
            default_toleration: Duration::from_secs(1),
            eviction_rate: 10.0,
        };
    });
    let doomed = cluster.start_node("doomed").await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    // `guarded` has a budget that cannot be met once its node is gone.
    for app in ["web", "guarded"] {
        sets.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": app},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": image, "args": ["forever"]}]}}}}))?).await?;
    }
    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(c.clone(), "default");
    budgets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "guarded"},
                "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "guarded"}}}}))?,
        )
        .await?;
    let on = |node: &'static str| {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app in (web, guarded)"))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            list.into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count()
        }
    };
    wait_for("all four pods on the first node", SLOW, || async {
        (on("doomed").await == 4).then_some(())
    })
    .await?;
    // What `kubectl describe node` shows of a node's start: the wasmlet's `Starting` and
    // `NodeReady`, the node lifecycle controller's `RegisteredNode`.
    let node = ("Node", "doomed");
    let started = wait_for_events(c, "default", node, "Starting", SLOW).await?;
    assert_eq!(started, ["Starting wasmlet."]);
    let ready = wait_for_events(c, "default", node, "NodeReady", SLOW).await?;
    assert_eq!(ready, ["Node doomed status is now: NodeReady"]);
    let registered = wait_for_events(c, "default", node, "RegisteredNode", SLOW).await?;
    assert_eq!(
        registered,
        ["Node doomed event: Registered Node doomed in Controller"]
    );
    let survivor = cluster.start_node("survivor").await?;

    // The wasmlet goes away: no more lease renewals.
    doomed.stop().await?;
    let nodes: Api<Node> = Api::all(c.clone());
    let node = wait_for("the node to go Unknown and be tainted", SLOW, || async {
        let n = nodes.get("doomed").await.ok()?;
        let unknown = n
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "Unknown");
        let tainted = n
            .spec
            .as_ref()?
            .taints
            .as_ref()?
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute");
        (unknown && tainted).then_some(n)
    })
    .await?;
    let reason = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .and_then(|c| c.reason);
    assert_eq!(reason.as_deref(), Some("NodeStatusUnknown"));
    let said = wait_for_events(c, "default", ("Node", "doomed"), "NodeNotReady", SLOW).await?;
    assert_eq!(said, ["Node doomed status is now: NodeNotReady"]);
    let back = wait_for("the pods to come back on the survivor", SLOW, || async {
        (on("survivor").await == 4).then_some(())
    })
    .await;
    if back.is_err() {
        for p in pods.list(&ListParams::default()).await?.items {
            eprintln!(
                "POD {} node={:?} del={:?} phase={:?}",
                p.name_any(),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                p.metadata.deletion_timestamp,
                p.status.as_ref().and_then(|s| s.phase.clone())
            );
        }
    }
    back?;
    // The old pods, Terminating on the silent node: marked not Ready, and gone through
    // `pods/eviction` — allowed without a budget, or (already unavailable) deleted when their
    // budget refused.
    for p in pods
        .list(&ListParams::default().labels("app in (web, guarded)"))
        .await?
        .items
    {
        if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some("doomed") {
            continue;
        }
        let conditions = p.status.and_then(|s| s.conditions).unwrap_or_default();
        let of = |t: &str| conditions.iter().find(|c| c.type_ == t);
        assert_eq!(
            of("Ready").map(|c| c.status.as_str()),
            Some("False"),
            "{conditions:?}"
        );
        let app = p.metadata.labels.unwrap_or_default()["app"].clone();
        let expected = if app == "web" {
            "EvictionByEvictionAPI"
        } else {
            "DeletionByTaintManager"
        };
        assert_eq!(
            of("DisruptionTarget").and_then(|c| c.reason.as_deref()),
            Some(expected),
            "{app}: {conditions:?}"
        );
    }
    survivor.stop().await
}

#[tokio::test]
async fn jobs_complete_fail_at_the_backoff_limit_and_expire_after_their_ttl() -> Result<()> {
    use k8s_openapi::api::batch::v1::Job;
    let cluster = Cluster::start_with_control_plane().await?;
    let node = cluster.start_node("n1").await?;
    let hello = cluster.push_sample("hello").await?;
    let toolbox = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let job = |name: &str,
               image: &str,
               args: serde_json::Value,
               extra: serde_json::Value|
     -> Result<Job> {
        let mut spec = json!({"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": image, "args": args}]}}});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        Ok(serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": spec}),
        )?)
    };
    let condition = |name: &'static str, type_: &'static str| {
        let jobs = jobs.clone();
        async move {
            let j = jobs.get_opt(name).await.ok()??;
            let cond = j
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == type_ && c.status == "True")?
                .clone();
            Some((j, cond))
        }
    };

    jobs.create(
        &PostParams::default(),
        &job(
            "three",
            &hello,
            json!([]),
            json!({"completions": 3, "parallelism": 2}),
        )?,
    )
    .await?;
    let (done, _) = wait_for("job three Complete", SLOW, || {
        condition("three", "Complete")
    })
    .await?;
    let status = done.status.unwrap_or_default();
    assert_eq!((status.succeeded, status.active), (Some(3), Some(0)));
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    let ran = pods
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=three"))
        .await?
        .items;
    assert_eq!(ran.len(), 3, "exactly the completions, no duplicates");
    // The Job controller's events, as `kubectl describe job` shows them.
    let created = wait_for_events(c, "default", ("Job", "three"), "SuccessfulCreate", SLOW).await?;
    assert!(
        created.iter().all(|m| m.starts_with("Created pod: three-")),
        "{created:?}"
    );
    let completed = wait_for_events(c, "default", ("Job", "three"), "Completed", SLOW).await?;
    assert_eq!(completed, ["Job completed"]);

    jobs.create(
        &PostParams::default(),
        &job(
            "broken",
            &toolbox,
            json!(["exit", "1"]),
            json!({"backoffLimit": 0}),
        )?,
    )
    .await?;
    let (_, failed) = wait_for("job broken Failed", SLOW, || condition("broken", "Failed")).await?;
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    let warned = wait_for_events(
        c,
        "default",
        ("Job", "broken"),
        "BackoffLimitExceeded",
        SLOW,
    )
    .await?;
    assert_eq!(warned, ["Job has reached the specified backoff limit"]);

    jobs.create(
        &PostParams::default(),
        &job(
            "brief",
            &hello,
            json!([]),
            json!({"ttlSecondsAfterFinished": 1}),
        )?,
    )
    .await?;
    wait_for("job brief Complete", SLOW, || {
        condition("brief", "Complete")
    })
    .await?;
    wait_for(
        "job brief and its pod to be gone after the TTL",
        SLOW,
        || async {
            let gone = jobs.get_opt("brief").await.ok()?.is_none();
            let left = pods
                .list(&ListParams::default().labels("batch.kubernetes.io/job-name=brief"))
                .await
                .ok()?
                .items;
            (gone && left.is_empty()).then_some(())
        },
    )
    .await?;
    node.stop().await
}

#[tokio::test]
async fn a_daemon_set_follows_nodes_as_they_join() -> Result<()> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use std::collections::BTreeSet;
    let cluster = Cluster::start_with_control_plane().await?;
    let first = cluster.start_node("first").await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let sets: Api<DaemonSet> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    sets.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
        "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": image, "args": ["forever"]}]}}}}))?).await?;
    let placed = || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=agent"))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            list.into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter_map(|p| p.spec?.node_name)
                .collect::<Vec<_>>()
        }
    };
    wait_for("a daemon on the first node", SLOW, || async {
        (placed().await == ["first"]).then_some(())
    })
    .await?;
    let second = cluster.start_node("second").await?;
    wait_for("a daemon on each node", SLOW, || async {
        let on = placed().await;
        (on.len() == 2 && on.iter().collect::<BTreeSet<_>>().len() == 2).then_some(())
    })
    .await?;
    wait_for("status: 2 desired, 2 ready", SLOW, || async {
        let s = sets.get("agent").await.ok()?.status?;
        (s.desired_number_scheduled == 2 && s.number_ready == 2).then_some(())
    })
    .await?;
    let created = wait_for_events(
        c,
        "default",
        ("DaemonSet", "agent"),
        "SuccessfulCreate",
        SLOW,
    )
    .await?;
    assert!(
        created.iter().all(|m| m.starts_with("Created pod: agent-")),
        "{created:?}"
    );
    first.stop().await?;
    second.stop().await
}

#[tokio::test]
async fn stateful_set_ordinals_come_up_in_order_and_keep_their_storage() -> Result<()> {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use kube::api::LogParams;
    let cluster = Cluster::start_with_control_plane().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let sets: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    sets.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
        "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}],
        "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": image,
            "args": ["append", "/data/boots", "boot", "--", "cat", "/data/boots", "--", "forever"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}}}))?).await?;
    let ready_at = |p: &Pod| -> Option<jiff::Timestamp> {
        p.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "True")?
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
    };
    let all = wait_for("db-0, db-1 and db-2 ready", SLOW, || async {
        let mut out = Vec::new();
        for i in 0..3 {
            let p = pods.get_opt(&format!("db-{i}")).await.ok()??;
            ready_at(&p)?;
            out.push(p);
        }
        Some(out)
    })
    .await?;
    for pair in all.windows(2) {
        let created = pair[1]
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_default();
        let previous_ready = ready_at(&pair[0]).unwrap_or_default();
        // Timestamps have one-second resolution: created no earlier than the second the previous became ready.
        assert!(
            created.as_second() >= previous_ready.as_second(),
            "{} created before {} was ready",
            pair[1].name_any(),
            pair[0].name_any()
        );
    }
    let created = wait_for_events(
        c,
        "default",
        ("StatefulSet", "db"),
        "SuccessfulCreate",
        SLOW,
    )
    .await?;
    // Each create is its own message (events fold by reason and object, so the last counts).
    assert!(
        created.iter().all(
            |m| m.starts_with("create Pod db-") && m.ends_with(" in StatefulSet db successful")
        ),
        "{created:?}"
    );
    let spec = all[1].spec.clone().unwrap_or_default();
    assert_eq!(
        (spec.hostname.as_deref(), spec.subdomain.as_deref()),
        (Some("db-1"), Some("db"))
    );

    // db-0 is replaced under the same name and finds what its predecessor wrote.
    let old_uid = all[0].metadata.uid.clone();
    pods.delete("db-0", &DeleteParams::default()).await?;
    wait_for("a new db-0 that saw the old data", SLOW, || async {
        let p = pods.get_opt("db-0").await.ok()??;
        if p.metadata.uid == old_uid || ready_at(&p).is_none() {
            return None;
        }
        let out = pods.logs("db-0", &LogParams::default()).await.ok()?;
        (out.matches("boot").count() == 2).then_some(())
    })
    .await?;
    node.stop().await
}

#[tokio::test]
async fn a_cron_job_starts_a_job_at_the_next_minute() -> Result<()> {
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    let cluster = Cluster::start_with_control_plane().await?;
    let node = cluster.start_node("n1").await?;
    let hello = cluster.push_sample("hello").await?;
    let c = &cluster.client;
    let crons: Api<CronJob> = Api::namespaced(c.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    crons.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Forbid",
        "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": hello}]}}}}}}))?).await?;
    // The first run is at the next minute boundary: up to a minute away.
    let job = wait_for(
        "a Job of the CronJob to complete",
        Duration::from_secs(120),
        || async {
            let list = jobs.list(&ListParams::default()).await.ok()?.items;
            list.into_iter().find(|j| {
                j.name_any().starts_with("tick-")
                    && j.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c.type_ == "Complete" && c.status == "True")
                        })
            })
        },
    )
    .await?;
    assert!(
        job.annotations()
            .contains_key("batch.kubernetes.io/cronjob-scheduled-timestamp")
    );
    assert!(
        job.owner_references()
            .iter()
            .any(|r| r.kind == "CronJob" && r.name == "tick")
    );
    wait_for("lastScheduleTime and lastSuccessfulTime", SLOW, || async {
        let s = crons.get("tick").await.ok()?.status?;
        (s.last_schedule_time.is_some() && s.last_successful_time.is_some()).then_some(())
    })
    .await?;
    let created =
        wait_for_events(c, "default", ("CronJob", "tick"), "SuccessfulCreate", SLOW).await?;
    assert!(
        created.iter().all(|m| m.starts_with("Created job tick-")),
        "{created:?}"
    );
    let saw = wait_for_events(c, "default", ("CronJob", "tick"), "SawCompletedJob", SLOW).await?;
    assert!(
        saw.iter()
            .any(|m| *m == format!("Saw completed job: {}, status: Complete", job.name_any())),
        "{saw:?}"
    );
    node.stop().await
}

#[tokio::test]
async fn endpoints_and_slices_follow_the_pods_a_service_selects() -> Result<()> {
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let cluster = Cluster::start_with_control_plane().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let services: Api<Service> = Api::namespaced(c.clone(), "default");
    services.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}))?).await?;
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    sets.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image, "args": ["forever"],
            "ports": [{"name": "http", "containerPort": 8080}]}]}}}}))?).await?;
    let endpoints: Api<Endpoints> = Api::namespaced(c.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), "default");
    let ready_ips = || {
        let endpoints = endpoints.clone();
        async move {
            let ep = endpoints.get_opt("web").await.ok()??;
            let subset = ep.subsets?.into_iter().next()?;
            let port = subset.ports?.first()?.port;
            Some((subset.addresses.unwrap_or_default().len(), port))
        }
    };
    assert_eq!(
        wait_for("2 ready endpoints on port 8080", SLOW, || async {
            ready_ips().await.filter(|(n, _)| *n == 2)
        })
        .await?,
        (2, 8080)
    );
    let slice = wait_for("an EndpointSlice with 2 ready endpoints", SLOW, || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .ok()?
            .items;
        let s = list.into_iter().next()?;
        (s.endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .count()
            == 2)
            .then_some(s)
    })
    .await?;
    assert_eq!(slice.address_type, "IPv4");
    sets.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 1}})),
    )
    .await?;
    wait_for("1 endpoint after scaling down", SLOW, || async {
        ready_ips().await.filter(|(n, _)| *n == 1)
    })
    .await?;
    node.stop().await
}

#[tokio::test]
async fn a_replication_controller_keeps_and_scales_its_pods() -> Result<()> {
    use k8s_openapi::api::core::v1::ReplicationController;
    let cluster = Cluster::start_with_control_plane().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let rcs: Api<ReplicationController> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    rcs.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "legacy"},
        "spec": {"replicas": 2, "selector": {"app": "legacy"},
        "template": {"metadata": {"labels": {"app": "legacy"}}, "spec": {"containers": [{"name": "c", "image": image, "args": ["forever"]}]}}}}))?).await?;
    let owned = || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=legacy"))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            list.into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.owner_references()
                        .iter()
                        .any(|r| r.kind == "ReplicationController" && r.name == "legacy")
                })
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count()
        }
    };
    wait_for("2 pods owned by the controller", SLOW, || async {
        (owned().await == 2).then_some(())
    })
    .await?;
    let scale = rcs.get_scale("legacy").await?;
    assert_eq!(
        scale.status.and_then(|s| s.selector).as_deref(),
        Some("app=legacy")
    );
    rcs.patch_scale(
        "legacy",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 1}})),
    )
    .await?;
    wait_for("1 pod and status replicas 1", SLOW, || async {
        let s = rcs.get("legacy").await.ok()?.status?;
        (owned().await == 1 && s.replicas == 1 && s.ready_replicas == Some(1)).then_some(())
    })
    .await?;
    node.stop().await
}

#[tokio::test]
async fn a_wasmlet_back_in_touch_reports_the_pods_the_control_plane_marked_unreachable()
-> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let pods = crate::t50_wasmlet::create_pod(
        &cluster.client,
        &node.name,
        "steady",
        json!({"containers": [{"name": "c", "image": image, "args": ["forever"]}]}),
    )
    .await?;
    let ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    crate::t50_wasmlet::wait_pod(&pods, "steady", "Ready", |p| {
        ready(p).is_some_and(|(s, _)| s == "True")
    })
    .await?;
    // What the node lifecycle controller writes while it cannot hear from the node.
    let mark = json!({"status": {"conditions": [{"type": "Ready", "status": "False",
        "reason": wasmkube_api::NODE_UNREACHABLE_REASON}]}});
    pods.patch_status("steady", &PatchParams::default(), &Patch::Strategic(&mark))
        .await?;
    let pod = crate::t50_wasmlet::wait_pod(&pods, "steady", "Ready again from its wasmlet", |p| {
        ready(p).is_some_and(|(s, _)| s == "True")
    })
    .await?;
    assert_ne!(
        ready(&pod).and_then(|(_, r)| r).as_deref(),
        Some(wasmkube_api::NODE_UNREACHABLE_REASON)
    );
    node.stop().await
}
