//! The ClusterRole aggregation controller: a ClusterRole with an `aggregationRule` gets the rules
//! of every ClusterRole its selectors match (in name order, each rule once), as
//! kube-controller-manager's `clusterrole-aggregation` controller keeps `admin`, `edit` and
//! `view`.

use std::sync::Arc;

use crate::workqueue::{Action, Controller};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wasmkube_api::selector::LabelSelector;

/// What the reconciler works with.
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// Every ClusterRole.
    pub roles: Store<ClusterRole>,
}

/// Reconcile errors (retried with back-off).
pub type Error = crate::ReconcileError;

/// The rules `role` aggregates from `all`, or `None` when it has no aggregation rule.
pub fn aggregated(role: &ClusterRole, all: &[Arc<ClusterRole>]) -> Option<Vec<PolicyRule>> {
    let selectors = role
        .aggregation_rule
        .as_ref()?
        .cluster_role_selectors
        .as_ref()?;
    let selectors: Vec<LabelSelector> = selectors
        .iter()
        .filter_map(|s| LabelSelector::from_structured(s).ok())
        .collect();
    let mut sources: Vec<&Arc<ClusterRole>> = all
        .iter()
        .filter(|r| r.name_any() != role.name_any())
        .filter(|r| {
            selectors
                .iter()
                .any(|s| !s.is_empty() && s.matches(r.labels()))
        })
        .collect();
    sources.sort_by_key(|r| r.name_any());
    let mut rules: Vec<PolicyRule> = Vec::new();
    for rule in sources.iter().flat_map(|r| r.rules.iter().flatten()) {
        if !rules.contains(rule) {
            rules.push(rule.clone());
        }
    }
    Some(rules)
}

/// Brings one aggregated ClusterRole's rules up to date.
///
/// # Errors
/// When the API refuses the update.
pub async fn reconcile(role: Arc<ClusterRole>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let Some(rules) = aggregated(&role, &ctx.roles.state()) else {
        return Ok(Action::await_change());
    };
    if role.rules.as_deref().unwrap_or_default() != rules.as_slice() {
        let api: Api<ClusterRole> = Api::all(ctx.client.clone());
        api.patch(
            &role.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "rules": rules })),
        )
        .await?;
        tracing::info!(role = %role.name_any(), rules = rules.len(), "aggregated");
    }
    Ok(Action::await_change())
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let controller = Controller::new(
        Api::<ClusterRole>::all(client.clone()),
        watcher::Config::default(),
    );
    let roles = controller.store();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        roles: roles.clone(),
    });
    // Any ClusterRole's change may change what an aggregating one holds (`view` feeds `edit`,
    // which feeds `admin`): each is reconciled from a cache that holds the change.
    let aggregating = roles.clone();
    let controller = controller
        .related(move |_| crate::refs_where(&aggregating, |r| r.aggregation_rule.is_some()));
    crate::drive(
        controller,
        "clusterrole-aggregation",
        crate::ready(&roles),
        reconcile,
        ctx,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(v: serde_json::Value) -> Arc<ClusterRole> {
        Arc::new(serde_json::from_value(v).expect("role"))
    }

    #[test]
    fn an_aggregating_role_should_get_each_selected_rule_once_in_name_order() {
        let rule = |r: &str| json!({"verbs": ["get"], "apiGroups": [""], "resources": [r]});
        let view = role(json!({"metadata": {"name": "view"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-view": "true"}}]}}));
        let all = vec![
            Arc::clone(&view),
            role(
                json!({"metadata": {"name": "b", "labels": {"to-view": "true"}}, "rules": [rule("pods"), rule("secrets")]}),
            ),
            role(
                json!({"metadata": {"name": "a", "labels": {"to-view": "true"}}, "rules": [rule("secrets")]}),
            ),
            role(json!({"metadata": {"name": "c"}, "rules": [rule("nodes")]})),
        ];
        let rules = aggregated(&view, &all).expect("aggregates");
        let resources: Vec<&str> = rules
            .iter()
            .map(|r| r.resources.as_ref().expect("resources")[0].as_str())
            .collect();
        assert_eq!(resources, ["secrets", "pods"]);
        assert!(aggregated(&all[3], &all).is_none());
    }
}
