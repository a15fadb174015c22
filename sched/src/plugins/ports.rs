//! Host ports: a node can give each (protocol, hostPort) to one pod.

use crate::framework::{Filter, NodeInfo, PodInfo, Status};

/// The pod's host ports must be free on the node.
pub struct NodePorts;

impl Filter for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        if pod.host_ports.iter().any(|p| node.used_ports.contains(p)) {
            return Status::unschedulable(
                "node(s) didn't have free ports for the requested pod ports",
            );
        }
        Status::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;

    #[test]
    fn a_used_host_port_rules_the_node_out() {
        let web = |name: &str| {
            let mut p = pod(
                json!({"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
            );
            p.pod.metadata.name = Some(name.into());
            p
        };
        let mut n = node("n", json!({}));
        assert!(NodePorts.filter(&web("a"), &n).is_success());
        n.add_pod(&web("a"));
        assert!(!NodePorts.filter(&web("b"), &n).is_success());
        assert!(NodePorts.filter(&pod(json!({})), &n).is_success());
    }
}
