//! The scheduler end to end: real wasmlets register nodes, pods without a node get one, and
//! an unschedulable pod is explained in kube-scheduler's words until a fitting node appears.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use wasmkube_tests::{Cluster, wait_for};

const SLOW: Duration = Duration::from_secs(60);

fn pod(name: &str, spec: serde_json::Value) -> Result<Pod> {
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"app": "sched"}}, "spec": spec}),
    )?)
}

#[tokio::test]
async fn pods_without_a_node_are_bound_spread_and_run() -> Result<()> {
    let cluster = Cluster::start().await?;
    let _sched = cluster.start_scheduler();
    let a = cluster.start_node("node-a").await?;
    let b = cluster.start_node("node-b").await?;
    let image = cluster.push_sample("hello").await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    for i in 0..4 {
        let spec = json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": image,
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]});
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), spec)?)
            .await?;
    }
    let placed = wait_for("all four pods to succeed", SLOW, || async {
        let list = pods
            .list(&ListParams::default().labels("app=sched"))
            .await
            .ok()?;
        let done = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
            .count();
        (done == 4).then(|| {
            list.items
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect::<Vec<_>>()
        })
    })
    .await?;
    let nodes: BTreeSet<&str> = placed.iter().map(String::as_str).collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["node-a", "node-b"]),
        "least-allocated spreads the pods: {placed:?}"
    );

    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let scheduled = wait_for("a Scheduled event", SLOW, || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=p0"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Scheduled"))
    })
    .await?;
    let message = scheduled.message.unwrap_or_default();
    assert!(
        message.starts_with("Successfully assigned default/p0 to node-"),
        "{message}"
    );
    a.stop().await?;
    b.stop().await
}

#[tokio::test]
async fn an_unschedulable_pod_is_explained_then_placed_when_a_node_fits() -> Result<()> {
    let cluster = Cluster::start().await?;
    let _sched = cluster.start_scheduler();
    let a = cluster.start_node("small-1").await?;
    let b = cluster.start_node("small-2").await?;
    let image = cluster.push_sample("hello").await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let spec = json!({"restartPolicy": "Never", "nodeSelector": {"size": "big"}, "containers": [{"name": "c", "image": image}]});
    pods.create(&PostParams::default(), &pod("picky", spec)?)
        .await?;

    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let failed = wait_for("a FailedScheduling event", SLOW, || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=picky"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
    })
    .await?;
    assert_eq!(
        failed.message.as_deref(),
        Some("0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.")
    );
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    let cond = wait_for("PodScheduled=False on the pod", SLOW, || async {
        let pending = pods.get("picky").await.ok()?;
        pending
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")
    })
    .await?;
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_deref()),
        ("False", Some("Unschedulable"))
    );

    // A node with room (the right label) joins: the pod is placed there without any retry loop
    // of ours — the node event requeues it.
    let big = cluster
        .start_node_with("big-1", |c| {
            c.node_labels.insert("size".into(), "big".into());
        })
        .await?;
    let done = wait_for("picky to run on big-1", SLOW, || async {
        let p = pods.get("picky").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then_some(p)
    })
    .await?;
    assert_eq!(
        done.spec.and_then(|s| s.node_name).as_deref(),
        Some("big-1")
    );
    for n in [a, b, big] {
        n.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn required_anti_affinity_keeps_replicas_on_different_nodes() -> Result<()> {
    use std::collections::BTreeSet;
    let cluster = Cluster::start().await?;
    let _sched = cluster.start_scheduler();
    let a = cluster.start_node("node-a").await?;
    let b = cluster.start_node("node-b").await?;
    let image = cluster.push_sample("toolbox").await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let spec = json!({"containers": [{"name": "c", "image": image, "args": ["forever"]}],
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "sched"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
    for i in 0..3 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("spread-{i}"), spec.clone())?,
        )
        .await?;
    }
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let failed = wait_for(
        "a FailedScheduling event for the third replica",
        SLOW,
        || async {
            let list = events
                .list(&ListParams::default().fields("reason=FailedScheduling"))
                .await
                .ok()?;
            list.items.into_iter().find(|e| {
                e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("anti-affinity"))
            })
        },
    )
    .await?;
    assert_eq!(
        failed.message.as_deref(),
        Some("0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules.")
    );
    let placed = || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=sched"))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            list.into_iter()
                .filter_map(|p| p.spec?.node_name)
                .collect::<Vec<_>>()
        }
    };
    let two = wait_for("two replicas placed", SLOW, || async {
        let p = placed().await;
        (p.len() == 2).then_some(p)
    })
    .await?;
    assert_eq!(
        two.iter().collect::<BTreeSet<_>>().len(),
        2,
        "on different nodes: {two:?}"
    );
    let c = cluster.start_node("node-c").await?;
    let three = wait_for("the third replica on the new node", SLOW, || async {
        let p = placed().await;
        (p.len() == 3).then_some(p)
    })
    .await?;
    assert!(three.iter().any(|n| n == "node-c"), "{three:?}");
    for n in [a, b, c] {
        n.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_high_priority_pod_preempts_a_lower_priority_one() -> Result<()> {
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let cluster = Cluster::start().await?;
    let _sched = cluster.start_scheduler();
    let node = cluster.start_node("only").await?;
    let image = cluster.push_sample("toolbox").await?;
    let classes: Api<PriorityClass> = Api::all(cluster.client.clone());
    for (name, value) in [("batch", 10), ("prod", 1000)] {
        classes
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}, "value": value}))?,
            )
            .await?;
    }
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    // Allocatable cpu is the machine's core count; ask for most of it.
    let cores = std::thread::available_parallelism()?.get();
    let big = format!("{}m", cores * 1000 - 300);
    let spec = |class: &str| {
        json!({"priorityClassName": class, "containers": [{"name": "c", "image": image, "args": ["forever"],
        "resources": {"requests": {"cpu": big}}}]})
    };
    pods.create(&PostParams::default(), &pod("low", spec("batch"))?)
        .await?;
    let low = wait_for("the batch pod to run", SLOW, || async {
        let p = pods.get("low").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await?;
    assert_eq!(
        low.spec.as_ref().and_then(|s| s.priority),
        Some(10),
        "priority comes from the class"
    );

    pods.create(&PostParams::default(), &pod("high", spec("prod"))?)
        .await?;
    let high = wait_for(
        "the prod pod to run in the batch pod's place",
        SLOW,
        || async {
            let p = pods.get("high").await.ok()?;
            (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
        },
    )
    .await?;
    assert_eq!(
        high.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("only")
    );
    assert!(pods.get_opt("low").await?.is_none(), "the victim is gone");
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let preempted = events
        .list(&ListParams::default().fields("involvedObject.name=low"))
        .await?
        .items;
    assert!(
        preempted
            .iter()
            .any(|e| e.reason.as_deref() == Some("Preempted")),
        "{preempted:?}"
    );

    let bogus = pods
        .create(
            &PostParams::default(),
            &pod("bogus", spec("no-such-class"))?,
        )
        .await
        .expect_err("unknown class");
    assert!(
        bogus
            .to_string()
            .contains("no PriorityClass with name no-such-class was found"),
        "{bogus}"
    );
    node.stop().await
}

#[tokio::test]
async fn priority_admission_follows_priority_classes_as_they_change() -> Result<()> {
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let cluster = Cluster::start().await?;
    let classes: Api<PriorityClass> = Api::all(cluster.client.clone());
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let spec = json!({"containers": [{"name": "c", "image": "x:1"}]});
    // What admission gives a new pod (a dry run: admitted, not stored).
    let admitted = |spec: serde_json::Value| {
        let (pods, dry_run) = (pods.clone(), dry_run.clone());
        async move {
            let p = pods.create(&dry_run, &pod("probe", spec)?).await?;
            let s = p.spec.unwrap_or_default();
            Ok::<_, anyhow::Error>((s.priority, s.priority_class_name))
        }
    };
    assert_eq!(admitted(spec.clone()).await?, (Some(0), None));

    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "everyday"}, "value": 7, "globalDefault": true}),
            )?,
        )
        .await?;
    wait_for("the new global default to apply", SLOW, || async {
        (admitted(spec.clone()).await.ok()? == (Some(7), Some("everyday".into()))).then_some(())
    })
    .await?;
    // A class created just now is found by name at once.
    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "fresh"}, "value": 42}))?,
        )
        .await?;
    let named =
        json!({"priorityClassName": "fresh", "containers": [{"name": "c", "image": "x:1"}]});
    assert_eq!(admitted(named).await?, (Some(42), Some("fresh".into())));
    let missing =
        json!({"priorityClassName": "nope", "containers": [{"name": "c", "image": "x:1"}]});
    let err = admitted(missing)
        .await
        .expect_err("an unknown class is refused");
    assert!(
        format!("{err:#}").contains("no PriorityClass with name nope"),
        "{err:#}"
    );

    classes.delete("everyday", &Default::default()).await?;
    wait_for("the deleted default to stop applying", SLOW, || async {
        (admitted(spec.clone()).await.ok()? == (Some(0), None)).then_some(())
    })
    .await?;
    Ok(())
}
