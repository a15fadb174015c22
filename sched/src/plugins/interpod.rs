//! Rules that depend on other pods: inter-pod affinity and anti-affinity (required terms
//! filter, preferred terms score) and topology spread constraints (`DoNotSchedule` filters,
//! `ScheduleAnyway` scores).
//!
//! They need the whole cluster, not one node, so [`InterPod::prepare`] takes a snapshot of the
//! counts per topology domain once per scheduling cycle (kube-scheduler's PreFilter) and the
//! per-node checks read it. Still pure: no IO.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    PodAffinityTerm, TopologySpreadConstraint, WeightedPodAffinityTerm,
};
use wasmkube_api::selector::LabelSelector;

use crate::framework::{MAX_SCORE, NodeInfo, PodInfo, Status};

/// Whether a pod has any rule that involves other pods (otherwise these plugins are skipped
/// and the equivalence cache stays valid).
pub fn involves_other_pods(pod: &PodInfo) -> bool {
    let spec = pod.pod.spec.as_ref();
    let affinity = spec.and_then(|s| s.affinity.as_ref());
    affinity.is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
        || spec
            .and_then(|s| s.topology_spread_constraints.as_ref())
            .is_some_and(|c| !c.is_empty())
}

fn namespace(p: &PodInfo) -> &str {
    p.pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// Whether `term` (of a pod in namespace `ns`) selects `other`.
fn term_selects(term: &PodAffinityTerm, ns: &str, other: &PodInfo) -> bool {
    let namespaces = term
        .namespaces
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| vec![ns.to_owned()]);
    if !namespaces.iter().any(|n| n == namespace(other)) {
        return false;
    }
    let Some(sel) = term
        .label_selector
        .as_ref()
        .and_then(|s| LabelSelector::from_structured(s).ok())
    else {
        return false;
    };
    let empty = Default::default();
    sel.matches(other.pod.metadata.labels.as_ref().unwrap_or(&empty))
}

fn domain<'a>(node: &'a NodeInfo, key: &str) -> Option<&'a str> {
    node.labels().get(key).map(String::as_str)
}

/// The pod's own terms.
fn terms(
    pod: &PodInfo,
) -> (
    Vec<PodAffinityTerm>,
    Vec<PodAffinityTerm>,
    Vec<(i32, PodAffinityTerm)>,
) {
    let a = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.clone())
        .unwrap_or_default();
    let (affinity, anti) = (
        a.pod_affinity.unwrap_or_default(),
        a.pod_anti_affinity.unwrap_or_default(),
    );
    let weighted = |terms: Option<Vec<WeightedPodAffinityTerm>>, sign: i32| {
        terms
            .unwrap_or_default()
            .into_iter()
            .map(move |w| (sign * w.weight, w.pod_affinity_term))
    };
    let preferred = weighted(
        affinity.preferred_during_scheduling_ignored_during_execution,
        1,
    )
    .chain(weighted(
        anti.preferred_during_scheduling_ignored_during_execution,
        -1,
    ))
    .collect();
    (
        affinity
            .required_during_scheduling_ignored_during_execution
            .unwrap_or_default(),
        anti.required_during_scheduling_ignored_during_execution
            .unwrap_or_default(),
        preferred,
    )
}

/// Counts per topology domain, taken once per scheduling cycle.
#[derive(Debug, Default)]
pub struct InterPod {
    /// For each required affinity term: domain value → matching pods.
    affinity: Vec<(String, HashMap<String, usize>)>,
    /// Whether any pod in the cluster matches each affinity term (else the first pod of a
    /// group may go anywhere its own labels satisfy the term).
    affinity_any: Vec<bool>,
    /// For each required anti-affinity term: domain value → matching pods.
    anti: Vec<(String, HashMap<String, usize>)>,
    /// Domains (key, value) where an existing pod's required anti-affinity rejects this pod.
    rejected_by_existing: Vec<(String, String)>,
    /// Per topology spread constraint: key, maxSkew, hard?, domain → matching pods.
    spread: Vec<(String, i32, bool, BTreeMap<String, usize>)>,
    /// Preferred terms: weight (negative: anti), key, domain → matching pods.
    preferred: Vec<(i32, String, HashMap<String, usize>)>,
    self_matches: Vec<bool>,
}

impl InterPod {
    /// Takes the counts the checks need for `pod` over `nodes`.
    pub fn prepare(pod: &PodInfo, nodes: &[&NodeInfo]) -> Self {
        let ns = namespace(pod);
        let (req_aff, req_anti, preferred) = terms(pod);
        let count = |term: &PodAffinityTerm| -> (String, HashMap<String, usize>, bool) {
            let mut m: HashMap<String, usize> = HashMap::new();
            let mut any = false;
            for n in nodes {
                for other in n.pods.values() {
                    if term_selects(term, ns, other) {
                        any = true;
                        if let Some(d) = domain(n, &term.topology_key) {
                            *m.entry(d.to_owned()).or_default() += 1;
                        }
                    }
                }
            }
            (term.topology_key.clone(), m, any)
        };
        let mut s = Self::default();
        for t in &req_aff {
            let (k, m, any) = count(t);
            s.affinity.push((k, m));
            s.affinity_any.push(any);
            s.self_matches.push(term_selects(t, ns, pod));
        }
        for t in &req_anti {
            let (k, m, _) = count(t);
            s.anti.push((k, m));
        }
        for (w, t) in &preferred {
            let (k, m, _) = count(t);
            s.preferred.push((*w, k, m));
        }
        // Existing pods whose required anti-affinity selects this pod.
        for n in nodes {
            for other in n.pods.values() {
                let (_, anti, _) = terms(other);
                for t in anti {
                    if term_selects(&t, namespace(other), pod)
                        && let Some(d) = domain(n, &t.topology_key)
                    {
                        s.rejected_by_existing
                            .push((t.topology_key.clone(), d.to_owned()));
                    }
                }
            }
        }
        let constraints: Vec<TopologySpreadConstraint> = pod
            .pod
            .spec
            .as_ref()
            .and_then(|sp| sp.topology_spread_constraints.clone())
            .unwrap_or_default();
        for c in constraints {
            let sel = c
                .label_selector
                .as_ref()
                .and_then(|s| LabelSelector::from_structured(s).ok())
                .unwrap_or_default();
            let mut m: BTreeMap<String, usize> = BTreeMap::new();
            let empty = Default::default();
            for n in nodes {
                let Some(d) = domain(n, &c.topology_key) else {
                    continue;
                };
                let e = m.entry(d.to_owned()).or_default();
                *e += n
                    .pods
                    .values()
                    .filter(|o| {
                        namespace(o) == ns
                            && sel.matches(o.pod.metadata.labels.as_ref().unwrap_or(&empty))
                    })
                    .count();
            }
            s.spread.push((
                c.topology_key.clone(),
                c.max_skew,
                c.when_unsatisfiable == "DoNotSchedule",
                m,
            ));
        }
        s
    }

    /// The filter: required affinity, required anti-affinity (both ways), hard spread.
    pub fn filter(&self, node: &NodeInfo) -> Status {
        for (i, (key, counts)) in self.affinity.iter().enumerate() {
            let here = domain(node, key)
                .and_then(|d| counts.get(d))
                .copied()
                .unwrap_or(0);
            // The first pod of a group may start it where its own labels satisfy the term.
            let first_of_group =
                !self.affinity_any[i] && self.self_matches[i] && domain(node, key).is_some();
            if here == 0 && !first_of_group {
                return Status::unresolvable("node(s) didn't match pod affinity rules");
            }
        }
        for (key, counts) in &self.anti {
            if domain(node, key)
                .and_then(|d| counts.get(d))
                .copied()
                .unwrap_or(0)
                > 0
            {
                return Status::unschedulable("node(s) didn't match pod anti-affinity rules");
            }
        }
        if self
            .rejected_by_existing
            .iter()
            .any(|(k, v)| domain(node, k) == Some(v.as_str()))
        {
            return Status::unschedulable(
                "node(s) didn't satisfy existing pods anti-affinity rules",
            );
        }
        for (key, max_skew, hard, counts) in &self.spread {
            if !hard {
                continue;
            }
            let Some(d) = domain(node, key) else {
                return Status::unresolvable(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                );
            };
            let min = counts.values().copied().min().unwrap_or(0);
            let here = counts.get(d).copied().unwrap_or(0);
            if (here + 1).saturating_sub(min) > usize::try_from(*max_skew).unwrap_or(1) {
                return Status::unschedulable(
                    "node(s) didn't match pod topology spread constraints",
                );
            }
        }
        Status::Success
    }

    /// The score: preferred (anti-)affinity by weight, soft spread by emptiness of the domain.
    pub fn score(&self, node: &NodeInfo) -> i64 {
        let mut total: i64 = 0;
        for (w, key, counts) in &self.preferred {
            let here = domain(node, key)
                .and_then(|d| counts.get(d))
                .copied()
                .unwrap_or(0);
            total += i64::from(*w) * i64::try_from(here.min(10)).unwrap_or(10) * 10;
        }
        for (key, _, hard, counts) in &self.spread {
            if *hard {
                continue;
            }
            let max = counts.values().copied().max().unwrap_or(0).max(1);
            let here = domain(node, key)
                .and_then(|d| counts.get(d))
                .copied()
                .unwrap_or(0);
            total += MAX_SCORE - i64::try_from(here * 100 / max).unwrap_or(100);
        }
        total.clamp(-MAX_SCORE * 10, MAX_SCORE * 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;

    fn web(name: &str, extra: serde_json::Value) -> PodInfo {
        let mut spec = json!({});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let mut p = pod(spec);
        p.pod.metadata.name = Some(name.into());
        p.pod.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
        p
    }

    fn anti() -> serde_json::Value {
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}})
    }

    #[test]
    fn required_anti_affinity_keeps_replicas_apart_both_ways() {
        let mut a = node("a", json!({}));
        let b = node("b", json!({}));
        a.add_pod(&web("web-1", anti()));
        let incoming = web("web-2", anti());
        let ctx = InterPod::prepare(&incoming, &[&a, &b]);
        assert_eq!(
            ctx.filter(&a).reasons(),
            ["node(s) didn't match pod anti-affinity rules"]
        );
        assert!(ctx.filter(&b).is_success());
        // A plain pod of the same app is kept away by the existing pod's rule.
        let plain = web("web-3", json!({}));
        let ctx = InterPod::prepare(&plain, &[&a, &b]);
        assert_eq!(
            ctx.filter(&a).reasons(),
            ["node(s) didn't satisfy existing pods anti-affinity rules"]
        );
    }

    #[test]
    fn required_affinity_follows_the_group_and_lets_the_first_one_start_it() {
        let aff = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let a = node("a", json!({}));
        let b = node("b", json!({}));
        let first = web("web-1", aff.clone());
        let ctx = InterPod::prepare(&first, &[&a, &b]);
        assert!(
            ctx.filter(&a).is_success() && ctx.filter(&b).is_success(),
            "nothing to follow yet"
        );
        let mut a = a;
        a.add_pod(&first);
        let ctx = InterPod::prepare(&web("web-2", aff), &[&a, &b]);
        assert!(ctx.filter(&a).is_success());
        assert_eq!(
            ctx.filter(&b).reasons(),
            ["node(s) didn't match pod affinity rules"]
        );
    }

    #[test]
    fn hard_topology_spread_limits_the_skew() {
        let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}}]});
        let mut z1 = node("a", json!({"metadata": {"labels": {"zone": "z1"}}}));
        let z2 = node("b", json!({"metadata": {"labels": {"zone": "z2"}}}));
        let nolabel = node("c", json!({}));
        z1.add_pod(&web("web-1", json!({})));
        let ctx = InterPod::prepare(&web("web-2", spread), &[&z1, &z2, &nolabel]);
        assert_eq!(
            ctx.filter(&z1).reasons(),
            ["node(s) didn't match pod topology spread constraints"]
        );
        assert!(ctx.filter(&z2).is_success());
        assert!(!ctx.filter(&nolabel).is_success());
    }

    #[test]
    fn preferred_anti_affinity_scores_emptier_domains_higher() {
        let soft = json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}}]}}});
        let mut a = node("a", json!({}));
        let b = node("b", json!({}));
        a.add_pod(&web("web-1", json!({})));
        let ctx = InterPod::prepare(&web("web-2", soft), &[&a, &b]);
        assert!(ctx.score(&b) > ctx.score(&a));
    }
}
