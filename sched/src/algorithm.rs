//! One scheduling decision, pure: filter the nodes (stopping once enough feasible ones are
//! found, like `percentageOfNodesToScore`), score the feasible ones, pick the best (ties at
//! random), or explain why none fits in kube-scheduler's words.
//!
//! Filter results are cached per equivalence class and node generation (Borg's equivalence
//! classes): pods of one ReplicaSet share a spec, so after the first of them only the nodes
//! that changed since are filtered again.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use rand::Rng;

use crate::framework::{Filter, NodeInfo, PodInfo, Score, Status};

/// Why no node fits (kube-scheduler's `FitError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    /// How many nodes there were.
    pub nodes: usize,
    /// Reason → how many nodes gave it.
    pub reasons: BTreeMap<String, usize>,
}

impl std::fmt::Display for FitError {
    /// `0/3 nodes are available: 1 Insufficient memory, 2 node(s) had untolerated taint {a: b}.`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        if parts.is_empty() {
            return write!(f, "0/{} nodes are available.", self.nodes);
        }
        write!(
            f,
            "0/{} nodes are available: {}.",
            self.nodes,
            parts.join(", ")
        )
    }
}

impl std::error::Error for FitError {}

/// Where a pod goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The chosen node.
    pub node: String,
    /// Nodes filtered.
    pub evaluated: usize,
    /// Nodes that passed.
    pub feasible: usize,
}

/// How many feasible nodes to find before scoring (kube-scheduler's adaptive
/// `percentageOfNodesToScore`: all of a small cluster, at least 100, and a shrinking share —
/// 50% minus 1% per 125 nodes, never under 5% — of a large one).
pub fn feasible_nodes_to_find(total: usize, percentage: Option<u32>) -> usize {
    if total < 100 {
        return total;
    }
    let pct =
        percentage.unwrap_or_else(|| (50usize.saturating_sub(total / 125)).max(5) as u32) as usize;
    (total * pct / 100).max(100).min(total)
}

/// Filter results per (equivalence class, node), valid while the node's generation holds.
#[derive(Debug, Default)]
pub struct EquivalenceCache {
    entries: HashMap<(u64, u64), (u64, Status)>,
    scores: HashMap<(u64, u64), (u64, i64)>,
}

impl EquivalenceCache {
    /// The class of a pod: everything filters read, namely namespace and spec (names and labels
    /// aside, pods of one template are identical there).
    pub fn class_of(pod: &PodInfo) -> u64 {
        let mut h = DefaultHasher::new();
        pod.pod.metadata.namespace.hash(&mut h);
        serde_json::to_string(&pod.pod.spec)
            .unwrap_or_default()
            .hash(&mut h);
        h.finish()
    }

    /// Drops everything (a change filters cannot see through node generations, e.g. a
    /// plugin set change).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.scores.clear();
    }

    /// Forgets a removed node.
    pub fn forget_node(&mut self, node: &str) {
        let id = crate::framework::node_id(node);
        self.entries.retain(|(_, n), _| *n != id);
        self.scores.retain(|(_, n), _| *n != id);
    }
}

/// The plugins a decision runs.
pub struct Profile {
    /// Filters, in order; the first failure decides.
    pub filters: Vec<Box<dyn Filter>>,
    /// Scorers, weighted.
    pub scores: Vec<Box<dyn Score>>,
    /// A fixed `percentageOfNodesToScore` (none: adaptive).
    pub percentage_of_nodes_to_score: Option<u32>,
}

impl Profile {
    /// kube-scheduler's default plugins (those wasmkube has).
    pub fn default_profile() -> Self {
        Self {
            filters: crate::plugins::default_filters(),
            scores: crate::plugins::default_scores(),
            percentage_of_nodes_to_score: None,
        }
    }

    fn run_filters(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        for f in &self.filters {
            let s = f.filter(pod, node);
            if !s.is_success() {
                return s;
            }
        }
        Status::Success
    }

    /// Preemption (kube-scheduler's DefaultPreemption): a node where removing lower-priority
    /// pods lets `pod` fit, and the fewest, lowest-priority victims there — victims are given a
    /// reprieve, highest priority first, whenever the pod still fits with them. Among nodes,
    /// the lowest highest-victim priority wins, then the fewest victims.
    pub fn select_victims(
        &self,
        pod: &PodInfo,
        nodes: &[&NodeInfo],
    ) -> Option<(String, Vec<PodInfo>)> {
        let never = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.preemption_policy.as_deref())
            == Some("Never");
        if never {
            return None;
        }
        let priority = pod.priority();
        let mut best: Option<((i32, usize), String, Vec<PodInfo>)> = None;
        for node in nodes {
            let mut lower: Vec<PodInfo> = node
                .pods
                .values()
                .filter(|p| p.priority() < priority)
                .cloned()
                .collect();
            if lower.is_empty() {
                continue;
            }
            let mut sim = (*node).clone();
            for v in &lower {
                sim.remove_pod(v);
            }
            if !self.run_filters(pod, &sim).is_success() {
                continue;
            }
            lower.sort_by_key(|p| std::cmp::Reverse(p.priority()));
            let mut victims = Vec::new();
            for v in lower {
                sim.add_pod(&v);
                if !self.run_filters(pod, &sim).is_success() {
                    sim.remove_pod(&v);
                    victims.push(v);
                }
            }
            let key = (
                victims
                    .iter()
                    .map(PodInfo::priority)
                    .max()
                    .unwrap_or(i32::MIN),
                victims.len(),
            );
            if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                best = Some((key, node.name().to_owned(), victims));
            }
        }
        best.map(|(_, node, victims)| (node, victims))
    }

    /// Decides where `pod` goes among `nodes`, starting the search at `start` (rotated by the
    /// caller so large clusters are sampled fairly).
    ///
    /// # Errors
    /// [`FitError`] when no node passes the filters.
    pub fn schedule(
        &self,
        pod: &PodInfo,
        nodes: &[&NodeInfo],
        start: usize,
        cache: &mut EquivalenceCache,
    ) -> Result<Decision, FitError> {
        let total = nodes.len();
        let want = feasible_nodes_to_find(total, self.percentage_of_nodes_to_score);
        let class = EquivalenceCache::class_of(pod);
        // Rules about other pods need a cluster-wide snapshot and are never cached per node.
        let interpod = (crate::plugins::interpod::involves_other_pods(pod)
            || nodes.iter().any(|n| n.anti_affinity_pods > 0))
        .then(|| crate::plugins::interpod::InterPod::prepare(pod, nodes));
        let mut feasible: Vec<&NodeInfo> = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut evaluated = 0;
        for i in 0..total {
            if feasible.len() >= want {
                break;
            }
            let node = nodes[(start + i) % total];
            evaluated += 1;
            let key = (class, node.id);
            let status = match cache.entries.get(&key) {
                Some((generation, status)) if *generation == node.generation => status.clone(),
                _ => {
                    let s = self.run_filters(pod, node);
                    cache.entries.insert(key, (node.generation, s.clone()));
                    s
                }
            };
            let status = match (&interpod, status.is_success()) {
                (Some(ctx), true) => ctx.filter(node),
                _ => status,
            };
            if status.is_success() {
                feasible.push(node);
            } else {
                for r in status.reasons() {
                    *reasons.entry(r.clone()).or_default() += 1;
                }
            }
        }
        if feasible.is_empty() {
            return Err(FitError {
                nodes: total,
                reasons,
            });
        }
        let mut best: Option<(&NodeInfo, i64)> = None;
        let mut ties = 0u32;
        let mut rng = rand::rng();
        for node in &feasible {
            let score: i64 = if feasible.len() == 1 {
                0
            } else {
                // Plugin scores depend only on the pod's class and the node: cached per node
                // generation like the filters (Borg's score caching).
                let key = (class, node.id);
                let cached = cache
                    .scores
                    .get(&key)
                    .filter(|(g, _)| *g == node.generation)
                    .map(|(_, s)| *s);
                let plugins = cached.unwrap_or_else(|| {
                    let s: i64 = self
                        .scores
                        .iter()
                        .map(|s| s.weight() * s.score(pod, node))
                        .sum();
                    cache.scores.insert(key, (node.generation, s));
                    s
                });
                plugins + interpod.as_ref().map_or(0, |ctx| 2 * ctx.score(node))
            };
            match best {
                Some((_, b)) if score < b => {}
                Some((_, b)) if score == b => {
                    // Reservoir sampling among equal scores.
                    ties += 1;
                    if rng.random_range(0..=ties) == 0 {
                        best = Some((node, score));
                    }
                }
                _ => {
                    best = Some((node, score));
                    ties = 0;
                }
            }
        }
        let (node, _) = best.expect("feasible is not empty");
        Ok(Decision {
            node: node.name().to_owned(),
            evaluated,
            feasible: feasible.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;

    #[test]
    fn the_failure_message_counts_reasons_like_kube_scheduler() {
        let tainted = node(
            "a",
            json!({"spec": {"taints": [{"key": "gpu", "value": "true", "effect": "NoSchedule"}]}}),
        );
        let small = node(
            "b",
            json!({"status": {"allocatable": {"cpu": "1", "memory": "64Mi", "pods": "110"}}}),
        );
        let small2 = node(
            "c",
            json!({"status": {"allocatable": {"cpu": "1", "memory": "64Mi", "pods": "110"}}}),
        );
        let p = pod(
            json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"memory": "1Gi"}}}]}),
        );
        let err = Profile::default_profile()
            .schedule(
                &p,
                &[&tainted, &small, &small2],
                0,
                &mut EquivalenceCache::default(),
            )
            .expect_err("nothing fits");
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {gpu: true}, 2 Insufficient memory."
        );
    }

    #[test]
    fn the_emptier_node_wins() {
        let mut busy = node("busy", json!({}));
        let mut filler = pod(
            json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1500m", "memory": "3Gi"}}}]}),
        );
        filler.pod.metadata.name = Some("filler".into());
        busy.add_pod(&filler);
        let idle = node("idle", json!({}));
        let p = pod(
            json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "100m"}}}]}),
        );
        let d = Profile::default_profile()
            .schedule(&p, &[&busy, &idle], 0, &mut EquivalenceCache::default())
            .expect("fits");
        assert_eq!(d.node, "idle");
        assert_eq!((d.evaluated, d.feasible), (2, 2));
    }

    #[test]
    fn preemption_picks_the_fewest_lowest_priority_victims() {
        let asking = |name: &str, cpu: &str, priority: i32| {
            let mut p = pod(
                json!({"priority": priority, "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]}),
            );
            p.pod.metadata.name = Some(name.into());
            p
        };
        let mut a = node(
            "a",
            json!({"status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}}),
        );
        a.add_pod(&asking("batch-1", "1", 10));
        a.add_pod(&asking("batch-2", "1", 10));
        let mut b = node(
            "b",
            json!({"status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}}),
        );
        b.add_pod(&asking("prod-1", "1", 1000));
        b.add_pod(&asking("batch-3", "1", 5));
        let urgent = asking("urgent", "1", 500);
        let profile = Profile::default_profile();
        assert!(
            profile
                .schedule(&urgent, &[&a, &b], 0, &mut EquivalenceCache::default())
                .is_err()
        );
        let (node, victims) = profile
            .select_victims(&urgent, &[&a, &b])
            .expect("something can be preempted");
        assert_eq!(
            node, "b",
            "one victim of priority 5 beats one of priority 10"
        );
        assert_eq!(
            victims.iter().map(PodInfo::key).collect::<Vec<_>>(),
            ["default/batch-3"]
        );
        let mut never = urgent.clone();
        never.pod.spec.as_mut().expect("spec").preemption_policy = Some("Never".into());
        assert!(profile.select_victims(&never, &[&a, &b]).is_none());
    }

    #[test]
    fn preferred_anti_affinity_steers_the_choice() {
        let mut a = node("a", json!({}));
        let b = node("b", json!({}));
        let mut existing = pod(json!({}));
        existing.pod.metadata.name = Some("web-1".into());
        existing.pod.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
        a.add_pod(&existing);
        let mut incoming = pod(
            json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}}]}}}),
        );
        incoming.pod.metadata.name = Some("web-2".into());
        let mut cache = EquivalenceCache::default();
        for _ in 0..5 {
            let d = Profile::default_profile()
                .schedule(&incoming, &[&a, &b], 0, &mut cache)
                .expect("fits");
            assert_eq!(d.node, "b", "away from the existing replica, every time");
        }
    }

    #[test]
    fn large_clusters_are_sampled() {
        assert_eq!(feasible_nodes_to_find(50, None), 50);
        assert_eq!(feasible_nodes_to_find(1000, None), 420);
        assert_eq!(feasible_nodes_to_find(5000, None), 500);
        assert_eq!(feasible_nodes_to_find(5000, Some(100)), 5000);
        let nodes: Vec<NodeInfo> = (0..1000)
            .map(|i| node(&format!("n{i}"), json!({})))
            .collect();
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let d = Profile::default_profile()
            .schedule(
                &pod(json!({})),
                &refs,
                990,
                &mut EquivalenceCache::default(),
            )
            .expect("fits");
        assert_eq!(d.evaluated, 420, "stops after enough feasible nodes");
    }

    #[test]
    fn equivalent_pods_reuse_filter_results_until_a_node_changes() {
        struct Counting(std::sync::atomic::AtomicUsize);
        impl Filter for Counting {
            fn name(&self) -> &'static str {
                "Counting"
            }
            fn filter(&self, _: &PodInfo, _: &NodeInfo) -> Status {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Status::Success
            }
        }
        let counter = std::sync::Arc::new(Counting(Default::default()));
        struct Shared(std::sync::Arc<Counting>);
        impl Filter for Shared {
            fn name(&self) -> &'static str {
                "Counting"
            }
            fn filter(&self, p: &PodInfo, n: &NodeInfo) -> Status {
                self.0.filter(p, n)
            }
        }
        let profile = Profile {
            filters: vec![Box::new(Shared(counter.clone()))],
            scores: vec![],
            percentage_of_nodes_to_score: None,
        };
        let mut a = node("a", json!({}));
        let b = node("b", json!({}));
        let mut cache = EquivalenceCache::default();
        let mut first = pod(json!({}));
        first.pod.metadata.name = Some("rs-1".into());
        profile
            .schedule(&first, &[&a, &b], 0, &mut cache)
            .expect("fits");
        let calls = |c: &Counting| c.0.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(calls(&counter), 2);
        a.add_pod(&first);
        let mut second = pod(json!({}));
        second.pod.metadata.name = Some("rs-2".into());
        profile
            .schedule(&second, &[&a, &b], 0, &mut cache)
            .expect("fits");
        assert_eq!(
            calls(&counter),
            3,
            "only the node that changed was filtered again"
        );
    }
}
