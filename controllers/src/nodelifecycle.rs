//! Node lifecycle (`node_lifecycle_controller.go` with its taint manager): a node whose Lease
//! is not renewed within the grace period gets its conditions set to `Unknown` and the
//! `node.kubernetes.io/unreachable` taints (`NotReady` nodes get `not-ready`); pods on a node
//! with a `NoExecute` taint are evicted once their toleration runs out (default 300 s), so
//! their controllers replace them elsewhere.
//!
//! Borg's lesson: a partition must not start a rescheduling storm. Nodes are tainted
//! `NoExecute` at a limited rate (`node_eviction_rate` per second), and when every node looks
//! down at once — more likely the control plane lost them than all of them died — nothing is
//! evicted. Pods keep running on a node that merely lost the control plane: nothing here
//! touches the node itself.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, EvictParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The taint of a node that stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node that reports NotReady.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Timers of the node lifecycle controller (kube-controller-manager's flags).
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// How often nodes are checked (`--node-monitor-period`, 5 s).
    pub monitor_period: Duration,
    /// A node silent this long is Unknown (`--node-monitor-grace-period`, 40 s).
    pub grace_period: Duration,
    /// How long pods without their own toleration stay on a tainted node
    /// (`--default-unreachable-toleration-seconds`, 300 s).
    pub default_toleration: Duration,
    /// Nodes per second that may get `NoExecute` taints (`--node-eviction-rate`, 0.1).
    pub eviction_rate: f64,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(40),
            default_toleration: Duration::from_secs(300),
            eviction_rate: 0.1,
        }
    }
}

/// When the node last showed life: its Lease's renewal or its Ready heartbeat.
pub fn last_heartbeat(node: &Node, lease: Option<&Lease>) -> Option<Timestamp> {
    let renew = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    renew.max(ready)
}

fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// How long `pod` tolerates the NoExecute taint `key` (none: forever).
pub fn toleration_for(pod: &Pod, key: &str, default: Duration) -> Option<Duration> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_ref());
    let matching = tolerations.into_iter().flatten().find(|t| {
        let key_ok = t.key.as_deref() == Some(key)
            || (t.key.is_none() && t.operator.as_deref() == Some("Exists"));
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == "NoExecute");
        key_ok && effect_ok
    });
    match matching {
        Some(t) => t
            .toleration_seconds
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0))),
        None => Some(default),
    }
}

struct Monitor {
    client: Client,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    timers: Timers,
    /// Token bucket for NoExecute tainting.
    tokens: f64,
    /// Events: `RegisteredNode`, `NodeNotReady` about nodes and their pods,
    /// `TaintManagerEviction`.
    recorder: wasmkube_client::events::Recorder,
    /// The nodes this controller has seen (each gets `RegisteredNode` once).
    registered: std::collections::HashSet<String>,
}

impl Monitor {
    async fn tick(&mut self, elapsed: Duration) {
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.timers.eviction_rate)
            .min(1.0_f64.max(self.timers.eviction_rate));
        let now = Timestamp::now();
        let nodes = self.nodes.state();
        let leases: BTreeMap<String, _> = self
            .leases
            .state()
            .into_iter()
            .filter(|l| l.namespace().as_deref() == Some("kube-node-lease"))
            .map(|l| (l.name_any(), l))
            .collect();
        let mut unhealthy = 0;
        let mut verdicts = Vec::new();
        for node in &nodes {
            let name = node.name_any();
            if self.registered.insert(name.clone()) {
                self.recorder.normal(
                    node.object_ref(&()),
                    "RegisteredNode",
                    "Register",
                    format!("Node {name} event: Registered Node {name} in Controller"),
                );
            }
            let silent = last_heartbeat(node, leases.get(&name).map(|l| &**l))
                .is_none_or(|t| now.duration_since(t).unsigned_abs() > self.timers.grace_period);
            let taint = if silent {
                Some(UNREACHABLE)
            } else if ready_status(node) == Some("False") {
                Some(NOT_READY)
            } else {
                None
            };
            if taint.is_some() {
                unhealthy += 1;
            }
            verdicts.push((node.clone(), silent, taint));
        }
        self.registered.retain(|name| {
            nodes
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(name))
        });
        // Every node down at once looks like a partition of the control plane: do not evict.
        let full_disruption = !nodes.is_empty() && unhealthy == nodes.len() && nodes.len() > 1;
        for (node, silent, taint) in verdicts {
            if let Err(e) = self
                .reconcile_node(&node, silent, taint, full_disruption, now)
                .await
            {
                tracing::warn!(node = %node.name_any(), error = %e, "node lifecycle update failed");
            }
        }
        self.evict(now).await;
    }

    async fn reconcile_node(
        &mut self,
        node: &Node,
        silent: bool,
        taint: Option<&str>,
        full_disruption: bool,
        now: Timestamp,
    ) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let name = node.name_any();
        if silent && ready_status(node) != Some("Unknown") {
            let conditions: Vec<NodeCondition> = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|mut c| {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(Time(now));
                    c
                })
                .collect();
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"conditions": conditions}})),
            )
            .await?;
            tracing::info!(node = %name, "node stopped reporting: conditions Unknown");
            self.recorder.normal(
                node.object_ref(&()),
                "NodeNotReady",
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
        }
        if silent {
            self.mark_pods_not_ready(&name, now).await;
        }
        let existing: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let ours = |t: &Taint| t.key == UNREACHABLE || t.key == NOT_READY;
        let mut wanted: Vec<Taint> = existing.iter().filter(|t| !ours(t)).cloned().collect();
        if let Some(key) = taint {
            wanted.push(Taint {
                key: key.into(),
                effect: "NoSchedule".into(),
                value: None,
                time_added: None,
            });
            let had = existing
                .iter()
                .find(|t| t.key == key && t.effect == "NoExecute")
                .cloned();
            match had {
                Some(t) => wanted.push(t),
                None if !full_disruption && self.tokens >= 1.0 => {
                    self.tokens -= 1.0;
                    wanted.push(Taint {
                        key: key.into(),
                        effect: "NoExecute".into(),
                        value: None,
                        time_added: Some(Time(now)),
                    });
                    tracing::info!(node = %name, taint = key, "tainted NoExecute: its pods will be evicted");
                }
                None => {}
            }
        }
        let same = |a: &[Taint], b: &[Taint]| {
            a.len() == b.len()
                && a.iter()
                    .all(|t| b.iter().any(|u| u.key == t.key && u.effect == t.effect))
        };
        if !same(&existing, &wanted) {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"taints": wanted}})),
            )
            .await?;
        }
        Ok(())
    }

    /// Deletes pods whose toleration of their node's NoExecute taint has run out.
    async fn evict(&self, now: Timestamp) {
        let tainted: BTreeMap<String, (String, Timestamp)> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| {
                let t = n.spec.as_ref()?.taints.as_ref()?.iter().find(|t| {
                    t.effect == "NoExecute" && (t.key == UNREACHABLE || t.key == NOT_READY)
                })?;
                Some((
                    n.name_any(),
                    (t.key.clone(), t.time_added.as_ref().map_or(now, |t| t.0)),
                ))
            })
            .collect();
        if tainted.is_empty() {
            return;
        }
        for pod in self.pods.state() {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some((key, since)) = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .and_then(|n| tainted.get(n))
            else {
                continue;
            };
            let Some(tolerate) = toleration_for(&pod, key, self.timers.default_toleration) else {
                continue;
            };
            if now.duration_since(*since).unsigned_abs() < tolerate {
                continue;
            }
            self.evict_pod(&pod).await;
        }
    }

    /// Evicts one pod through `pods/eviction`, so a PodDisruptionBudget that selects it has its
    /// say. A pod the budget refuses that is not Ready any more (its node stopped answering)
    /// is already unavailable: it is deleted, as the taint manager does, with the
    /// `DisruptionTarget` condition saying why.
    async fn evict_pod(&self, pod: &Pod) {
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            &pod.namespace().unwrap_or_else(|| "default".into()),
        );
        let name = pod.name_any();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        self.recorder.normal(
            pod.object_ref(&()),
            "TaintManagerEviction",
            "Delete",
            format!(
                "Marking for deletion Pod {}/{name}",
                pod.namespace().unwrap_or_default()
            ),
        );
        match api.evict(&name, &EvictParams::default()).await {
            Ok(_) => tracing::info!(pod = %name, ?node, "evicted from a NoExecute-tainted node"),
            Err(kube::Error::Api(e)) if e.code == 429 && !crate::pod_ready(pod) => {
                let condition = json!({"status": {"conditions": [{
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "DeletionByTaintManager",
                    "message": "Taint manager: deleting due to NoExecute taint",
                    "lastTransitionTime": Timestamp::now().to_string(),
                }]}});
                if let Err(e) = api
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Strategic(&condition),
                    )
                    .await
                {
                    tracing::debug!(pod = %name, error = %e, "could not mark the pod's disruption");
                }
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {
                        tracing::info!(pod = %name, ?node, "deleted an unavailable pod its budget would not let go")
                    }
                    Err(e) => tracing::debug!(pod = %name, error = %e, "deletion failed"),
                }
            }
            Err(kube::Error::Api(e)) if e.code == 429 => {
                tracing::info!(pod = %name, ?node, message = %e.message, "eviction refused by its disruption budget; retrying");
            }
            Err(e) => tracing::debug!(pod = %name, error = %e, "eviction failed"),
        }
    }

    /// Sets `Ready` to `False` on the pods of a node that stopped reporting
    /// (`MarkPodsNotReady`): their endpoints stop taking traffic and budgets stop counting them
    /// as healthy. (A node that reports NotReady reports its pods itself.)
    async fn mark_pods_not_ready(&self, node: &str, now: Timestamp) {
        for pod in self.pods.state() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node)
                || !crate::pod_ready(&pod)
            {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(
                self.client.clone(),
                &pod.namespace().unwrap_or_else(|| "default".into()),
            );
            let patch = json!({"status": {"conditions": [{
                "type": "Ready",
                "status": "False",
                "reason": wasmkube_api::NODE_UNREACHABLE_REASON,
                "message": "the pod's node stopped reporting",
                "lastTransitionTime": now.to_string(),
            }]}});
            match api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(pod = %pod.name_any(), node, "marked not Ready: its node is not Ready");
                    self.recorder.warning(
                        pod.object_ref(&()),
                        "NodeNotReady",
                        "NodeNotReady",
                        "Node is not ready".into(),
                    );
                }
                Err(e) => {
                    tracing::debug!(pod = %pod.name_any(), error = %e, "could not mark the pod not Ready")
                }
            }
        }
    }
}

/// Runs the node lifecycle controller until `shutdown`.
pub async fn run(
    client: Client,
    informers: &crate::informers::Informers,
    timers: Timers,
    shutdown: CancellationToken,
) {
    use wasmkube_client::watch::reflect;
    let (nodes, pods) = (informers.nodes.store(), informers.pods.store());
    let (leases, lease_events) =
        reflect(Api::<Lease>::namespaced(client.clone(), "kube-node-lease"));
    let feeds = lease_events.for_each(|_| async {});
    let mut monitor = Monitor {
        recorder: crate::recorder(&client, "node-controller"),
        registered: std::collections::HashSet::new(),
        client,
        nodes: nodes.clone(),
        leases: leases.clone(),
        pods: pods.clone(),
        timers,
        tokens: 1.0,
    };
    let monitor_loop = async move {
        if nodes.wait_until_ready().await.is_err()
            || leases.wait_until_ready().await.is_err()
            || pods.wait_until_ready().await.is_err()
        {
            return;
        }
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(monitor.timers.monitor_period).await;
            let now = tokio::time::Instant::now();
            monitor.tick(now - last).await;
            last = now;
        }
    };
    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = feeds => {}
        () = monitor_loop => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_or_the_ready_heartbeat_counts_whichever_is_newer() {
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {"conditions": [
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}}))
            .expect("node");
        let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": {"renewTime": "2026-01-01T00:05:00.000000Z"}})).expect("lease");
        assert_eq!(
            last_heartbeat(&node, Some(&lease))
                .map(|t| t.to_string())
                .as_deref(),
            Some("2026-01-01T00:05:00Z")
        );
        assert_eq!(
            last_heartbeat(&node, None)
                .map(|t| t.to_string())
                .as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
    }

    #[test]
    fn tolerations_decide_how_long_a_pod_stays() {
        let pod = |tolerations: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}})).expect("pod")
        };
        let default = Duration::from_secs(300);
        assert_eq!(
            toleration_for(&pod(json!([])), UNREACHABLE, default),
            Some(default)
        );
        assert_eq!(
            toleration_for(
                &pod(
                    json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}])
                ),
                UNREACHABLE,
                default
            ),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            toleration_for(&pod(json!([{"operator": "Exists"}])), UNREACHABLE, default),
            None,
            "tolerates forever"
        );
    }
}
