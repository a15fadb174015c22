//! The scheduling framework's data and extension points, after kube-scheduler's: a pod's
//! requests ([`PodInfo`]), what a node offers and holds ([`NodeInfo`]), and the small
//! [`Filter`] and [`Score`] traits plugins implement over that pure data.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use wasmkube_api::quantity::{bytes, millicores};

/// Amounts of the resources the scheduler accounts for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub cpu: u64,
    /// Bytes.
    pub memory: u64,
    /// Pods.
    pub pods: u64,
}

impl Resources {
    fn add(&mut self, other: Resources) {
        self.cpu += other.cpu;
        self.memory += other.memory;
        self.pods += other.pods;
    }

    fn sub(&mut self, other: Resources) {
        self.cpu = self.cpu.saturating_sub(other.cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.pods = self.pods.saturating_sub(other.pods);
    }
}

/// A pod as the scheduler sees it: the object plus what it asks for.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// The pod.
    pub pod: Pod,
    /// Effective requests: the sum over app containers, at least the largest init container
    /// (Kubernetes' `PodRequests`); a container without requests but with limits asks for its
    /// limits. `pods` is 1.
    pub requests: Resources,
    /// Host ports it wants (protocol, port).
    pub host_ports: BTreeSet<(String, i32)>,
}

impl PodInfo {
    /// Computes what `pod` asks for.
    pub fn new(pod: Pod) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let request = |c: &k8s_openapi::api::core::v1::Container| {
            let res = c.resources.as_ref();
            let get = |name: &str| {
                res.and_then(|r| r.requests.as_ref())
                    .and_then(|m| m.get(name))
                    .or_else(|| {
                        res.and_then(|r| r.limits.as_ref())
                            .and_then(|m| m.get(name))
                    })
            };
            Resources {
                cpu: get("cpu").and_then(millicores).unwrap_or(0),
                memory: get("memory").and_then(bytes).unwrap_or(0),
                pods: 0,
            }
        };
        let mut sum = Resources::default();
        for c in &spec.containers {
            sum.add(request(c));
        }
        for c in spec.init_containers.iter().flatten() {
            let r = request(c);
            sum.cpu = sum.cpu.max(r.cpu);
            sum.memory = sum.memory.max(r.memory);
        }
        sum.pods = 1;
        let host_ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                p.host_port
                    .filter(|hp| *hp > 0)
                    .map(|hp| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), hp))
            })
            .collect();
        Self {
            pod,
            requests: sum,
            host_ports,
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
            self.pod.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// The tolerations of the pod.
    pub fn tolerations(&self) -> &[Toleration] {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default()
    }

    /// Whether the pod has required pod anti-affinity terms.
    pub fn has_required_anti_affinity(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|p| {
                p.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|t| !t.is_empty())
    }

    /// `spec.priority` (0 when unset).
    pub fn priority(&self) -> i32 {
        self.pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
    }
}

/// A node and what is placed on it (bound and assumed pods).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node.
    pub node: Node,
    /// `status.allocatable`.
    pub allocatable: Resources,
    /// Sum of the requests of the pods on it.
    pub requested: Resources,
    /// Host ports in use.
    pub used_ports: BTreeSet<(String, i32)>,
    /// Image names present on the node (`status.images[].names`).
    pub images: BTreeSet<String>,
    /// The pods on it, by key (`ns/name`).
    pub pods: BTreeMap<String, PodInfo>,
    /// Bumped on every change, for caches keyed by node state.
    pub generation: u64,
    /// How many of its pods have required pod anti-affinity (which may reject any newcomer).
    pub anti_affinity_pods: usize,
    /// A hash of the node's name, for cache keys that must not allocate.
    pub id: u64,
}

impl NodeInfo {
    /// A node with nothing on it yet.
    pub fn new(node: Node) -> Self {
        let mut info = Self {
            node: Node::default(),
            allocatable: Resources::default(),
            requested: Resources::default(),
            used_ports: BTreeSet::new(),
            images: BTreeSet::new(),
            pods: BTreeMap::new(),
            generation: 0,
            anti_affinity_pods: 0,
            id: 0,
        };
        info.set_node(node);
        info
    }

    /// Replaces the node object (status, labels, taints), keeping the pods.
    pub fn set_node(&mut self, node: Node) {
        let status = node.status.clone().unwrap_or_default();
        let alloc = status.allocatable.unwrap_or_default();
        self.allocatable = Resources {
            cpu: alloc.get("cpu").and_then(millicores).unwrap_or(0),
            memory: alloc.get("memory").and_then(bytes).unwrap_or(0),
            pods: alloc
                .get("pods")
                .and_then(|q| q.0.parse().ok())
                .unwrap_or(110),
        };
        self.images = status
            .images
            .unwrap_or_default()
            .into_iter()
            .flat_map(|i| i.names.unwrap_or_default())
            .collect();
        self.node = node;
        self.id = node_id(self.name());
        self.generation += 1;
    }

    /// Accounts for `pod` placed here.
    pub fn add_pod(&mut self, pod: &PodInfo) {
        if self.pods.insert(pod.key(), pod.clone()).is_none() {
            self.anti_affinity_pods += usize::from(pod.has_required_anti_affinity());
            self.requested.add(pod.requests);
            self.used_ports.extend(pod.host_ports.iter().cloned());
            self.generation += 1;
        }
    }

    /// Removes `pod` from the accounting.
    pub fn remove_pod(&mut self, pod: &PodInfo) {
        if self.pods.remove(&pod.key()).is_some() {
            self.anti_affinity_pods -= usize::from(pod.has_required_anti_affinity());
            self.requested.sub(pod.requests);
            for p in &pod.host_ports {
                self.used_ports.remove(p);
            }
            self.generation += 1;
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    /// The node's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    /// `spec.taints`.
    pub fn taints(&self) -> &[Taint] {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
    }

    /// Whether the node's Ready condition is True.
    pub fn ready(&self) -> bool {
        self.node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }
}

/// The cache id of a node name.
pub fn node_id(name: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(name)
}

/// What a plugin says about a pod on a node (kube-scheduler's `framework.Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The node is fine for the pod.
    Success,
    /// Not now, but something may change that (resources freed, a taint removed): the pod
    /// goes to the unschedulable queue and is retried on cluster events. One or more reasons.
    Unschedulable(Vec<String>),
    /// Nothing on this node will change that by evicting pods (a selector mismatch): also
    /// tells preemption not to bother with this node.
    UnschedulableAndUnresolvable(Vec<String>),
}

impl Status {
    /// Whether the node passed.
    pub fn is_success(&self) -> bool {
        matches!(self, Status::Success)
    }

    /// The reasons, for the FailedScheduling message.
    pub fn reasons(&self) -> &[String] {
        match self {
            Status::Success => &[],
            Status::Unschedulable(r) | Status::UnschedulableAndUnresolvable(r) => r,
        }
    }

    /// One reason, resolvable by preemption or other cluster changes.
    pub fn unschedulable(reason: impl Into<String>) -> Self {
        Status::Unschedulable(vec![reason.into()])
    }

    /// One reason no preemption on this node can fix.
    pub fn unresolvable(reason: impl Into<String>) -> Self {
        Status::UnschedulableAndUnresolvable(vec![reason.into()])
    }
}

/// A Filter plugin: can the pod run on this node? Pure: no IO, no shared state.
pub trait Filter: Send + Sync {
    /// The plugin's name (as in kube-scheduler's configuration).
    fn name(&self) -> &'static str;
    /// Judges one node.
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status;
}

/// The highest score a plugin gives.
pub const MAX_SCORE: i64 = 100;

/// A Score plugin: how good is this feasible node for the pod, 0..=[`MAX_SCORE`].
pub trait Score: Send + Sync {
    /// The plugin's name.
    fn name(&self) -> &'static str;
    /// The plugin's weight in the total.
    fn weight(&self) -> i64 {
        1
    }
    /// Scores one feasible node.
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64;
}

/// Whether `tolerations` tolerate `taint` (Kubernetes' `ToleratesTaint`).
pub fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => {
                t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
            }
        };
        effect_ok && key_ok && value_ok
    })
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders for plugin tests.
    use super::*;
    use serde_json::{Value, json};

    pub(crate) fn pod(spec: Value) -> PodInfo {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c", "image": "x:1"}]);
        }
        PodInfo::new(
            serde_json::from_value(
                json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec}),
            )
            .expect("pod"),
        )
    }

    pub(crate) fn node(name: &str, extra: Value) -> NodeInfo {
        let mut n = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        merge(&mut n, extra);
        NodeInfo::new(serde_json::from_value(n).expect("node"))
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_sum_containers_cover_init_containers_and_default_to_limits() {
        let p = pod(json!({
            "initContainers": [{"name": "i", "image": "x", "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}}],
            "containers": [
                {"name": "a", "image": "x", "resources": {"requests": {"cpu": "500m", "memory": "100Mi"}}},
                {"name": "b", "image": "x", "resources": {"limits": {"cpu": "1", "memory": "2Gi"}}}
            ]
        }));
        assert_eq!(
            p.requests,
            Resources {
                cpu: 3000,
                memory: (100 << 20) + (2 << 30),
                pods: 1
            }
        );
    }

    #[test]
    fn node_accounting_adds_and_removes_pods_once() {
        let mut n = node("n", json!({}));
        assert_eq!(
            n.allocatable,
            Resources {
                cpu: 2000,
                memory: 4 << 30,
                pods: 110
            }
        );
        let p = pod(
            json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1"}}, "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
        );
        n.add_pod(&p);
        n.add_pod(&p);
        assert_eq!(
            n.requested,
            Resources {
                cpu: 1000,
                memory: 0,
                pods: 1
            }
        );
        assert!(n.used_ports.contains(&("TCP".into(), 8080)));
        n.remove_pod(&p);
        assert_eq!(n.requested, Resources::default());
        assert!(n.used_ports.is_empty());
    }

    #[test]
    fn tolerations_match_like_kubernetes() {
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let t = |v: serde_json::Value| -> Vec<Toleration> {
            serde_json::from_value(v).expect("tolerations")
        };
        assert!(tolerates(
            &t(json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])),
            &taint
        ));
        assert!(tolerates(
            &t(json!([{"key": "dedicated", "operator": "Exists"}])),
            &taint
        ));
        assert!(tolerates(&t(json!([{"operator": "Exists"}])), &taint));
        assert!(!tolerates(
            &t(json!([{"key": "dedicated", "value": "cpu"}])),
            &taint
        ));
        assert!(!tolerates(
            &t(json!([{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}])),
            &taint
        ));
    }
}
