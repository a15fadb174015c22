//! The `pods/eviction` subresource (`registry/core/pod/storage/eviction.go`): a pod is deleted
//! only if the PodDisruptionBudget that selects it allows one more disruption, which the
//! eviction takes from the budget's status before deleting; otherwise 429, which `kubectl
//! drain` retries.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::delete::DeleteOptions;
use super::respond_json;
use crate::Apiserver;
use crate::error::ApiError;
use crate::request::{Call, Params, Target};

/// How a budget's `disruptedPods` entry is written (RFC 3339, seconds).
fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

/// 429 after too many lost races, as kube-apiserver answers them.
fn retry_later(what: &str) -> ApiError {
    ApiError::new(
        429,
        "TooManyRequests",
        format!("too many concurrent {what}; please retry"),
    )
}

/// Whether a budget (policy/v1: an empty selector selects every pod, a missing one none)
/// selects a pod with `labels`.
fn selects(pdb: &Value, labels: &std::collections::BTreeMap<String, String>) -> bool {
    let Some(sel) = pdb.pointer("/spec/selector") else {
        return false;
    };
    serde_json::from_value(sel.clone())
        .ok()
        .and_then(|s| wasmkube_api::selector::LabelSelector::from_structured(&s).ok())
        .is_some_and(|s| s.matches(labels))
}

impl Apiserver {
    pub(super) async fn evict(&self, call: &Call<'_>) -> Result<Response, ApiError> {
        let t = &call.t;
        let name = t.name.as_deref().expect("routed with a name");
        let eviction = call.decode()?.object;
        if let Some(n) = eviction.pointer("/metadata/name").and_then(Value::as_str)
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "name in URL does not match name in Eviction object: {name} vs {n}"
            )));
        }
        let mut opts = DeleteOptions {
            user: call.q.user.clone(),
            ..Default::default()
        };
        if let Some(given) = eviction.get("deleteOptions") {
            opts.merge(given);
        }
        let opts = opts.checked()?;
        let pod = self.load(t, name).await?.value;
        let phase = pod.pointer("/status/phase").and_then(Value::as_str);
        // Pods that are not running, or already going, are not protected by a budget.
        let ignore_budget = pod.pointer("/metadata/deletionTimestamp").is_some()
            || matches!(phase, Some("Succeeded" | "Failed" | "Pending"));
        tracing::debug!(pod = %name, ?phase, ignore_budget, "eviction");
        if !ignore_budget {
            self.take_disruption(t, name, &pod, opts.dry_run).await?;
        }
        if !opts.dry_run && pod.pointer("/metadata/deletionTimestamp").is_none() {
            self.mark_disruption_target(t, name).await?;
        }
        self.delete(t, &opts).await?;
        Ok(respond_json(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            &[],
        ))
    }

    /// Records on the pod why it is going, as kube-apiserver does before an eviction deletes:
    /// the `DisruptionTarget` condition (`EvictionByEvictionAPI`).
    async fn mark_disruption_target(&self, pods: &Target, name: &str) -> Result<(), ApiError> {
        let target = Target {
            subresource: Some("status".into()),
            ..pods.clone()
        };
        for _ in 0..16 {
            let cur = self.load(&target, name).await?;
            let mut new = cur.value.clone();
            let condition = json!({
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "EvictionByEvictionAPI",
                "message": "Eviction API: evicting",
                "lastTransitionTime": now(),
            });
            let conditions = new["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut conditions: Vec<Value> = conditions
                .into_iter()
                .filter(|c| c["type"] != "DisruptionTarget")
                .collect();
            conditions.push(condition);
            new["status"]["conditions"] = Value::Array(conditions);
            if self.commit_or_retry(&target, &cur, new).await? {
                return Ok(());
            }
        }
        Err(retry_later("updates of the pod"))
    }

    /// Commits `new` over `cur` as the API server's own write: `Ok(false)` when another write
    /// came first (409), to read again and retry.
    async fn commit_or_retry(
        &self,
        target: &Target,
        cur: &crate::rest::Stored,
        new: Value,
    ) -> Result<bool, ApiError> {
        match self
            .commit_update(target, &Params::internal(), cur, new)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Takes one allowed disruption from the budget that selects `pod`, or refuses.
    async fn take_disruption(
        &self,
        pods: &Target,
        name: &str,
        pod: &Value,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        let Some(kind) = self.registry.by_kind("policy", "PodDisruptionBudget") else {
            return Ok(());
        };
        let labels: std::collections::BTreeMap<String, String> = pod
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        for _ in 0..16 {
            let prefix = kind.info().namespace_prefix(pods.namespace.as_deref());
            let budgets: Vec<Value> = self
                .store
                .list(&prefix, Default::default())
                .await?
                .items
                .iter()
                .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                .filter(|b| selects(b, &labels))
                .collect();
            let budget = match budgets.as_slice() {
                [] => return Ok(()),
                [one] => one,
                _ => {
                    return Err(ApiError::new(
                        500,
                        "InternalError",
                        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                    ));
                }
            };
            let budget_name = budget
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let status = budget.get("status").cloned().unwrap_or_default();
            let count = |f: &str| status.get(f).and_then(Value::as_i64).unwrap_or(0);
            // A pod that is not Ready does not count as healthy: it may go without taking a
            // disruption — always (`AlwaysAllow`), or while the budget is met
            // (`IfHealthyBudget`, the default), as upstream decides.
            let ready = pod
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
            if !ready {
                let policy = budget
                    .pointer("/spec/unhealthyPodEvictionPolicy")
                    .and_then(Value::as_str)
                    .unwrap_or("IfHealthyBudget");
                let met = count("desiredHealthy") > 0
                    && count("currentHealthy") >= count("desiredHealthy");
                if policy == "AlwaysAllow" || met {
                    return Ok(());
                }
            }
            let generation = budget
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if count("observedGeneration") < generation {
                return Err(ApiError::disruption_budget(
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    format!(
                        "The disruption budget {budget_name} is still being processed by the server."
                    ),
                ));
            }
            let allowed = count("disruptionsAllowed");
            if allowed <= 0 {
                let (need, have) = (count("desiredHealthy"), count("currentHealthy"));
                return Err(ApiError::disruption_budget(
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    format!(
                        "The disruption budget {budget_name} needs {need} healthy pods and has {have} currently"
                    ),
                ));
            }
            if dry_run {
                return Ok(());
            }
            let target = Target {
                kind: std::sync::Arc::clone(&kind),
                namespace: pods.namespace.clone(),
                name: Some(budget_name.clone()),
                subresource: Some("status".into()),
                watch_path: false,
            };
            let cur = self.load(&target, &budget_name).await?;
            if cur.value.get("status") != budget.get("status") {
                continue;
            }
            let mut new = cur.value.clone();
            new["status"]["disruptionsAllowed"] = json!(allowed - 1);
            if !new["status"]["disruptedPods"].is_object() {
                new["status"]["disruptedPods"] = json!({});
            }
            new["status"]["disruptedPods"][name] = json!(now());
            if self.commit_or_retry(&target, &cur, new).await? {
                return Ok(());
            }
        }
        Err(retry_later("evictions"))
    }
}
