//! Resources: does the pod fit (requests against allocatable minus what is placed, assumed
//! pods included), and how loaded would the node be.

use crate::framework::{Filter, MAX_SCORE, NodeInfo, PodInfo, Score, Status};

/// Requests of cpu, memory and pods must fit what is left of allocatable.
pub struct NodeResourcesFit;

impl Filter for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        let (want, used, alloc) = (pod.requests, node.requested, node.allocatable);
        let mut reasons = Vec::new();
        if used.pods + 1 > alloc.pods {
            reasons.push("Too many pods".to_owned());
        }
        if want.cpu > 0 && used.cpu + want.cpu > alloc.cpu {
            reasons.push("Insufficient cpu".to_owned());
        }
        if want.memory > 0 && used.memory + want.memory > alloc.memory {
            reasons.push("Insufficient memory".to_owned());
        }
        if reasons.is_empty() {
            Status::Success
        } else {
            Status::Unschedulable(reasons)
        }
    }
}

/// Fractions of cpu and memory in use after placing the pod (kube-scheduler counts a pod
/// without requests as 100m / 200Mi for scoring).
fn fractions(pod: &PodInfo, node: &NodeInfo) -> (f64, f64) {
    let cpu = if pod.requests.cpu == 0 {
        100
    } else {
        pod.requests.cpu
    };
    let mem = if pod.requests.memory == 0 {
        200 << 20
    } else {
        pod.requests.memory
    };
    let frac = |used: u64, want: u64, alloc: u64| {
        if alloc == 0 {
            1.0
        } else {
            ((used + want) as f64 / alloc as f64).min(1.0)
        }
    };
    (
        frac(node.requested.cpu, cpu, node.allocatable.cpu),
        frac(node.requested.memory, mem, node.allocatable.memory),
    )
}

/// Prefers the emptiest node (spreads load).
pub struct LeastAllocated;

impl Score for LeastAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let (cpu, mem) = fractions(pod, node);
        (((1.0 - cpu) + (1.0 - mem)) / 2.0 * MAX_SCORE as f64) as i64
    }
}

/// Prefers nodes whose cpu and memory use stay in proportion.
pub struct BalancedAllocation;

impl Score for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let (cpu, mem) = fractions(pod, node);
        // Standard deviation of the two fractions, as kube-scheduler computes it.
        let std = (cpu - mem).abs() / 2.0;
        ((1.0 - std) * MAX_SCORE as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;

    fn asking(cpu: &str, mem: &str) -> PodInfo {
        pod(
            json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}),
        )
    }

    #[test]
    fn requests_must_fit_what_is_left() {
        let mut n = node(
            "n",
            json!({"status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "2"}}}),
        );
        assert!(
            NodeResourcesFit
                .filter(&asking("600m", "600Mi"), &n)
                .is_success()
        );
        n.add_pod(&asking("600m", "600Mi"));
        let s = NodeResourcesFit.filter(&asking("600m", "600Mi"), &n);
        assert_eq!(s.reasons(), ["Insufficient cpu", "Insufficient memory"]);
        let mut other = asking("1m", "1Mi");
        other.pod.metadata.name = Some("q".into());
        n.add_pod(&other);
        assert_eq!(
            NodeResourcesFit.filter(&asking("1m", "1Mi"), &n).reasons(),
            ["Too many pods"]
        );
    }

    #[test]
    fn emptier_and_balanced_nodes_score_higher() {
        let empty = node("a", json!({}));
        let mut busy = node("b", json!({}));
        busy.add_pod(&asking("1500m", "1Gi"));
        let p = asking("100m", "100Mi");
        assert!(LeastAllocated.score(&p, &empty) > LeastAllocated.score(&p, &busy));
        assert!(BalancedAllocation.score(&p, &empty) > BalancedAllocation.score(&p, &busy));
    }
}
