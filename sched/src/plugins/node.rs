//! Node-level filters: the requested node name, cordoned nodes, readiness, and taints.

use crate::framework::{Filter, MAX_SCORE, NodeInfo, PodInfo, Score, Status, tolerates};
use k8s_openapi::api::core::v1::Taint;

/// `spec.nodeName` must name this node, if set (used when simulating placements).
pub struct NodeName;

impl Filter for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        match pod.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(n) if !n.is_empty() && n != node.name() => {
                Status::unresolvable("node(s) didn't match the requested node name")
            }
            _ => Status::Success,
        }
    }
}

/// Cordoned nodes (`spec.unschedulable`) take no new pods unless they tolerate
/// `node.kubernetes.io/unschedulable:NoSchedule`.
pub struct NodeUnschedulable;

impl Filter for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        let cordoned = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if cordoned && !tolerates_no_schedule(pod, "node.kubernetes.io/unschedulable") {
            return Status::unresolvable("node(s) were unschedulable");
        }
        Status::Success
    }
}

/// Whether the pod tolerates the `NoSchedule` taint `key` that Kubernetes puts on such nodes.
fn tolerates_no_schedule(pod: &PodInfo, key: &str) -> bool {
    let taint = Taint {
        key: key.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    tolerates(pod.tolerations(), &taint)
}

/// A node that is not Ready takes no pods unless they tolerate `node.kubernetes.io/not-ready`
/// (Kubernetes taints such nodes; the message is the one that taint produces).
pub struct NodeReady;

impl Filter for NodeReady {
    fn name(&self) -> &'static str {
        "NodeReady"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        if !node.ready() && !tolerates_no_schedule(pod, "node.kubernetes.io/not-ready") {
            return Status::unresolvable(
                "node(s) had untolerated taint {node.kubernetes.io/not-ready: }",
            );
        }
        Status::Success
    }
}

/// Taints with `NoSchedule`/`NoExecute` the pod does not tolerate rule the node out; untolerated
/// `PreferNoSchedule` taints lower its score.
pub struct TaintToleration;

impl Filter for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        let untolerated = node.taints().iter().find(|t| {
            (t.effect == "NoSchedule" || t.effect == "NoExecute")
                && !tolerates(pod.tolerations(), t)
        });
        match untolerated {
            Some(t) => Status::unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or_default()
            )),
            None => Status::Success,
        }
    }
}

impl Score for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn weight(&self) -> i64 {
        3
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let prefer: Vec<_> = node
            .taints()
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .collect();
        if prefer.is_empty() {
            return MAX_SCORE;
        }
        let bad = prefer
            .iter()
            .filter(|t| !tolerates(pod.tolerations(), t))
            .count() as i64;
        MAX_SCORE - MAX_SCORE * bad / prefer.len() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;

    #[test]
    fn cordoned_and_not_ready_nodes_are_refused_unless_tolerated() {
        let cordoned = node("n", json!({"spec": {"unschedulable": true}}));
        assert_eq!(
            NodeUnschedulable
                .filter(&pod(json!({})), &cordoned)
                .reasons(),
            ["node(s) were unschedulable"]
        );
        let tolerant = pod(
            json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]}),
        );
        assert!(NodeUnschedulable.filter(&tolerant, &cordoned).is_success());

        let down = node(
            "n",
            json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
        );
        assert!(!NodeReady.filter(&pod(json!({})), &down).is_success());
        assert!(
            NodeReady
                .filter(&pod(json!({})), &node("n", json!({})))
                .is_success()
        );
    }

    #[test]
    fn untolerated_taints_name_themselves() {
        let tainted = node(
            "n",
            json!({"spec": {"taints": [{"key": "gpu", "value": "true", "effect": "NoSchedule"}]}}),
        );
        let s = TaintToleration.filter(&pod(json!({})), &tainted);
        assert_eq!(s.reasons(), ["node(s) had untolerated taint {gpu: true}"]);
        let ok = pod(
            json!({"tolerations": [{"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]}),
        );
        assert!(TaintToleration.filter(&ok, &tainted).is_success());
    }

    #[test]
    fn prefer_no_schedule_taints_lower_the_score() {
        let soft = node(
            "n",
            json!({"spec": {"taints": [{"key": "a", "effect": "PreferNoSchedule"}]}}),
        );
        assert_eq!(TaintToleration.score(&pod(json!({})), &soft), 0);
        assert_eq!(
            TaintToleration.score(&pod(json!({})), &node("m", json!({}))),
            MAX_SCORE
        );
    }

    #[test]
    fn a_requested_node_name_must_match() {
        let p = pod(json!({"nodeName": "other"}));
        assert!(!NodeName.filter(&p, &node("n", json!({}))).is_success());
        assert!(NodeName.filter(&p, &node("other", json!({}))).is_success());
    }
}
