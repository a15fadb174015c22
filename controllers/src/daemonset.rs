//! The DaemonSet controller (`daemon_controller.go`): one pod per eligible node. Eligible means
//! the node matches the template's `nodeSelector` and its `NoSchedule`/`NoExecute` taints are
//! tolerated (DaemonSet pods tolerate the node-condition taints, as Kubernetes adds them).
//! Pods are pinned with a required node affinity on `metadata.name` and placed by the
//! scheduler, as Kubernetes does since 1.12. A new template rolls out node by node within
//! `maxUnavailable`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crate::workqueue::{Action, Controller};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DeleteParams;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::expectations::Expectations;

/// The label carrying the template revision of a DaemonSet's pods.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What the reconciler needs.
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// Every pod.
    pub pods: Store<Pod>,
    /// Every node.
    pub nodes: Store<Node>,
    /// Pending creates/deletes per DaemonSet uid.
    pub expectations: Expectations,
    /// Its events (`SuccessfulCreate`, `SuccessfulDelete`, `FailedCreate`).
    pub recorder: wasmkube_client::events::Recorder,
}

/// Reconcile errors (retried with back-off).
pub type Error = crate::ReconcileError;

/// Tolerations every DaemonSet pod gets (Kubernetes adds these so daemons survive node trouble).
fn daemon_tolerations() -> Vec<Toleration> {
    [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
    .into_iter()
    .map(|(key, effect)| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    })
    .collect()
}

fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let key_ok = t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key);
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let value_ok = t.operator.as_deref() == Some("Exists")
            || t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default();
        key_ok && effect_ok && value_ok
    })
}

/// Whether the DaemonSet should run a pod on `node`.
pub fn eligible(ds: &DaemonSet, node: &Node) -> bool {
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let labels = node.labels();
    let selector_ok = spec
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let mut tolerations = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
    tolerations.extend(daemon_tolerations());
    let taints_ok = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_none_or(|ts| {
            ts.iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .all(|t| tolerated(&tolerations, t))
        });
    selector_ok && taints_ok
}

/// The template revision (a hash of the pod template).
pub fn revision(ds: &DaemonSet) -> String {
    let mut h = DefaultHasher::new();
    serde_json::to_string(&ds.spec.as_ref().map(|s| &s.template))
        .unwrap_or_default()
        .hash(&mut h);
    format!("{:x}", h.finish() & 0xff_ffff_ffff)
}

fn pod_for(ds: &DaemonSet, node: &str, rev: &str) -> Pod {
    let template = ds.spec.as_ref().map(|s| s.template.clone());
    let mut pod =
        crate::pod_from_template(ds, template.unwrap_or_default(), crate::controller_ref(ds));
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(REVISION_LABEL.into(), rev.into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.tolerations
        .get_or_insert_with(Vec::new)
        .extend(daemon_tolerations());
    // Pinned to the node by affinity; the scheduler binds it (Kubernetes >= 1.12).
    let affinity = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}});
    spec.affinity = serde_json::from_value(affinity).ok();
    pod
}

/// The node a DaemonSet pod is for: bound, or pinned by affinity.
fn target_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Makes the world match one DaemonSet.
///
/// # Errors
/// API failures (retried with back-off).
pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if ctx.pods.wait_until_ready().await.is_err() || ctx.nodes.wait_until_ready().await.is_err() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_else(|| "default".into());
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let owned: Vec<Arc<Pod>> = crate::controlled_by(&ctx.pods, &ns, &uid)
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    if !ctx.expectations.satisfied_by(&uid, &owned) {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let rev = revision(&ds);
    if crate::history::behind(
        &ds.metadata,
        ds.status.as_ref().and_then(|s| s.observed_generation),
    ) {
        let name_of = |hash: &str| format!("{}-{hash}", ds.name_any());
        let live = owned
            .iter()
            .filter_map(|p| p.labels().get(REVISION_LABEL).map(|h| name_of(h)))
            .collect();
        let spec = ds.spec.clone().unwrap_or_default();
        crate::history::record(
            &ctx.client,
            &*ds,
            crate::history::Current {
                name: &name_of(&rev),
                hash: &rev,
                template: &spec.template,
                limit: spec.revision_history_limit,
                live,
            },
        )
        .await?;
    }
    let nodes = ctx.nodes.state();
    let wanted: BTreeMap<String, bool> = nodes
        .iter()
        .map(|n| (n.name_any(), eligible(&ds, n)))
        .collect();
    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    for p in &owned {
        if let Some(n) = target_node(p) {
            by_node.entry(n).or_default().push(Arc::clone(p));
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut to_create = Vec::new();
    let mut to_delete: Vec<Arc<Pod>> = Vec::new();
    for (node, should) in &wanted {
        let here = by_node.get(node).cloned().unwrap_or_default();
        if *should && here.is_empty() {
            to_create.push(node.clone());
        } else if !*should {
            to_delete.extend(here);
        } else if here.len() > 1 {
            to_delete.extend(here.into_iter().skip(1));
        }
    }
    // Pods for nodes that no longer exist.
    for (node, here) in &by_node {
        if !wanted.contains_key(node) {
            to_delete.extend(here.iter().cloned());
        }
    }
    // Rolling update: replace old-revision pods, at most maxUnavailable nodes at a time.
    let max_unavailable = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .filter(|u| u.type_.as_deref() != Some("OnDelete"))
        .map(|u| {
            match u
                .rolling_update
                .as_ref()
                .and_then(|r| r.max_unavailable.as_ref())
            {
                Some(IntOrString::Int(n)) => *n,
                Some(IntOrString::String(s)) => {
                    let pct: i32 = s.trim_end_matches('%').parse().unwrap_or(0);
                    (i32::try_from(wanted.values().filter(|w| **w).count()).unwrap_or(0) * pct
                        / 100)
                        .max(1)
                }
                None => 1,
            }
        })
        .unwrap_or(1);
    let on_delete = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        == Some("OnDelete");
    if !on_delete {
        let unavailable = wanted
            .iter()
            .filter(|(_, w)| **w)
            .filter(|(n, _)| {
                !by_node
                    .get(*n)
                    .is_some_and(|ps| ps.iter().any(|p| ready(p)))
            })
            .count();
        let mut budget = usize::try_from(max_unavailable)
            .unwrap_or(1)
            .saturating_sub(unavailable);
        for (node, here) in &by_node {
            if budget == 0 {
                break;
            }
            if wanted.get(node) == Some(&true)
                && let Some(old) = here
                    .iter()
                    .find(|p| p.labels().get(REVISION_LABEL) != Some(&rev))
                && ready(old)
            {
                to_delete.push(Arc::clone(old));
                budget -= 1;
            }
        }
    }
    let control = crate::podcontrol::PodControl {
        pods: &pods,
        recorder: &ctx.recorder,
        owner: kube::Resource::object_ref(&*ds, &()),
    };
    let new_pods: Vec<Pod> = to_create.iter().map(|n| pod_for(&ds, n, &rev)).collect();
    let (created, _) = control.create_all(&new_pods).await;
    ctx.expectations.expect_creations(&uid, created);
    ctx.expectations
        .expect_deletions(&uid, to_delete.iter().map(|p| p.name_any()));
    for p in &to_delete {
        let _ = control.delete(p, &DeleteParams::default()).await;
    }

    let count = |f: &dyn Fn(&str, &[Arc<Pod>]) -> bool| -> i32 {
        i32::try_from(
            wanted
                .iter()
                .filter(|(n, w)| {
                    **w && f(n, by_node.get(*n).map(Vec::as_slice).unwrap_or_default())
                })
                .count(),
        )
        .unwrap_or(0)
    };
    let status = DaemonSetStatus {
        desired_number_scheduled: i32::try_from(wanted.values().filter(|w| **w).count())
            .unwrap_or(0),
        current_number_scheduled: count(&|_, ps| !ps.is_empty()),
        number_ready: count(&|_, ps| ps.iter().any(|p| ready(p))),
        number_available: Some(count(&|_, ps| ps.iter().any(|p| ready(p)))),
        number_unavailable: Some(count(&|_, ps| !ps.iter().any(|p| ready(p)))),
        updated_number_scheduled: Some(count(&|_, ps| {
            ps.iter()
                .any(|p| p.labels().get(REVISION_LABEL) == Some(&rev))
        })),
        number_misscheduled: i32::try_from(
            by_node
                .keys()
                .filter(|n| wanted.get(*n) != Some(&true))
                .count(),
        )
        .unwrap_or(0),
        observed_generation: ds.metadata.generation,
        collision_count: None,
        conditions: None,
    };
    crate::write_status(&ctx.client, &*ds, ds.status.as_ref(), &status).await?;
    Ok(Action::await_change())
}

/// Runs the DaemonSet controller until `shutdown`.
pub async fn run(
    client: Client,
    informers: &crate::informers::Informers,
    shutdown: CancellationToken,
) {
    let (pods, pod_stream) = informers.pods.subscribe();
    let (nodes, node_stream) = informers.nodes.subscribe();
    let (pods_ready, nodes_ready) = (crate::ready(&pods), crate::ready(&nodes));
    let synced = move || {
        let (pods, nodes) = (pods_ready(), nodes_ready());
        async move {
            pods.await;
            nodes.await;
        }
    };
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods,
        nodes,
        expectations: Expectations::default(),
        recorder: crate::recorder(&client, "daemonset-controller"),
    });
    let controller = Controller::new(Api::<DaemonSet>::all(client), watcher::Config::default());
    // Any node change may change where daemons belong: look at every DaemonSet.
    let sets = controller.store();
    let controller = controller
        .owns_shared_stream(pod_stream)
        .watches_shared_stream(node_stream, move |_node| crate::refs_where(&sets, |_| true));
    crate::drive(controller, "daemonset", synced, reconcile, ctx, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(spec: serde_json::Value) -> DaemonSet {
        serde_json::from_value(json!({"metadata": {"name": "agent", "uid": "u"}, "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": spec}}})).expect("ds")
    }

    fn node(extra: serde_json::Value) -> Node {
        let mut n = json!({"metadata": {"name": "n1", "labels": {"role": "edge"}}});
        if let (Some(a), Some(b)) = (n.as_object_mut(), extra.as_object()) {
            a.extend(b.clone());
        }
        serde_json::from_value(n).expect("node")
    }

    #[test]
    fn node_selector_and_taints_decide_eligibility() {
        let plain = ds(json!({"containers": []}));
        assert!(eligible(&plain, &node(json!({}))));
        assert!(!eligible(
            &ds(json!({"containers": [], "nodeSelector": {"role": "core"}})),
            &node(json!({}))
        ));
        let tainted = node(
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        assert!(!eligible(&plain, &tainted));
        let tolerant = ds(
            json!({"containers": [], "tolerations": [{"key": "dedicated", "operator": "Exists"}]}),
        );
        assert!(eligible(&tolerant, &tainted));
        let unreachable = node(
            json!({"spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}}),
        );
        assert!(
            eligible(&plain, &unreachable),
            "daemons tolerate node-condition taints"
        );
    }

    #[test]
    fn pods_are_pinned_to_their_node_by_affinity() {
        let p = pod_for(&ds(json!({"containers": []})), "n7", "abc");
        assert_eq!(target_node(&p).as_deref(), Some("n7"));
        assert_eq!(
            p.labels().get(REVISION_LABEL).map(String::as_str),
            Some("abc")
        );
        assert!(
            p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none(),
            "the scheduler binds it"
        );
    }
}
