//! Node affinity: `nodeSelector` and required node-affinity terms filter; preferred terms
//! score.

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};

use crate::framework::{Filter, MAX_SCORE, NodeInfo, PodInfo, Score, Status};

/// `nodeSelector` and `requiredDuringSchedulingIgnoredDuringExecution`.
pub struct NodeAffinity;

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether `node` satisfies a node selector term (its expressions and fields, all of them).
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.iter().flatten();
    let fields = term.match_fields.iter().flatten();
    let has_any = term
        .match_expressions
        .as_ref()
        .is_some_and(|e| !e.is_empty())
        || term.match_fields.as_ref().is_some_and(|f| !f.is_empty());
    has_any
        && exprs
            .clone()
            .all(|r| requirement_matches(r, node.labels().get(&r.key).map(String::as_str)))
        && fields
            .clone()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node.name())))
}

impl Filter for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        let spec = pod.pod.spec.as_ref();
        let selector_ok = spec
            .and_then(|s| s.node_selector.as_ref())
            .is_none_or(|sel| sel.iter().all(|(k, v)| node.labels().get(k) == Some(v)));
        let required = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.required_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        let affinity_ok =
            required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)));
        if selector_ok && affinity_ok {
            Status::Success
        } else {
            Status::unresolvable("node(s) didn't match Pod's node affinity/selector")
        }
    }
}

impl Score for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn weight(&self) -> i64 {
        2
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let preferred = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        let Some(preferred) = preferred.filter(|p| !p.is_empty()) else {
            return 0;
        };
        let total: i64 = preferred.iter().map(|p| i64::from(p.weight)).sum();
        let got: i64 = preferred
            .iter()
            .filter(|p| term_matches(&p.preference, node))
            .map(|p| i64::from(p.weight))
            .sum();
        if total == 0 {
            0
        } else {
            got * MAX_SCORE / total
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;

    #[test]
    fn node_selector_and_required_terms_filter() {
        let edge = node(
            "e",
            json!({"metadata": {"labels": {"zone": "edge", "gen": "3"}}}),
        );
        let core = node(
            "c",
            json!({"metadata": {"labels": {"zone": "core", "gen": "1"}}}),
        );
        let p = pod(json!({"nodeSelector": {"zone": "edge"}}));
        assert!(NodeAffinity.filter(&p, &edge).is_success());
        assert_eq!(
            NodeAffinity.filter(&p, &core).reasons(),
            ["node(s) didn't match Pod's node affinity/selector"]
        );
        let p = pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["2"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c"]}]}
            ]}}}}),
        );
        assert!(NodeAffinity.filter(&p, &edge).is_success(), "first term");
        assert!(NodeAffinity.filter(&p, &core).is_success(), "second term");
        assert!(!NodeAffinity.filter(&p, &node("x", json!({}))).is_success());
    }

    #[test]
    fn preferred_terms_score_by_weight() {
        let p = pod(
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 3, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["edge"]}]}},
                {"weight": 1, "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}}
            ]}}}),
        );
        let edge = node("e", json!({"metadata": {"labels": {"zone": "edge"}}}));
        let ssd = node("s", json!({"metadata": {"labels": {"ssd": "yes"}}}));
        assert_eq!(NodeAffinity.score(&p, &edge), 75);
        assert_eq!(NodeAffinity.score(&p, &ssd), 25);
    }
}
