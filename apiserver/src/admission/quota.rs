//! The ResourceQuota admission plugin, as kube-apiserver's: a create in a namespace with
//! quotas adds what the new object uses (`wasmkube_api::quota::usage_of`) to each quota that
//! limits any of it; if that would pass `spec.hard` the request is refused ("exceeded
//! quota"), otherwise the quota's `status.used` is raised first, by compare-and-swap, so
//! concurrent creates cannot both take the last unit. A pod under a quota of compute
//! resources must state them for every container. The quota controller recounts `used` from
//! what exists (deletes are given back there).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;
use wasmkube_api::ResourceInfo;
use wasmkube_api::quota::{Usage, compute_resource, format, milli, stated, usage_of};
use wasmkube_store::{Command, Outcome, Precondition, Store};

use super::{Operation, Request, Validating};
use crate::cache::Cacher;
use crate::encryption::Encryption;
use crate::error::ApiError;

/// How often a quota update is retried after losing a race to another create.
const ATTEMPTS: usize = 16;

pub(crate) struct QuotaAdmission {
    store: Store,
    /// ResourceQuotas, from the watch cache (a create in a namespace without quotas costs no
    /// store read).
    quotas: Arc<Cacher>,
    encryption: Arc<Encryption>,
    info: ResourceInfo,
}

impl QuotaAdmission {
    pub(crate) fn new(store: Store, quotas: Arc<Cacher>, encryption: Arc<Encryption>) -> Self {
        QuotaAdmission {
            store,
            quotas,
            encryption,
            info: ResourceInfo::of::<ResourceQuota>(),
        }
    }

    /// The quotas of `ns` (key, revision, object): from the cache, or from the store when
    /// the cache's copy lost a race.
    async fn quotas(
        &self,
        ns: &str,
        fresh: bool,
    ) -> Result<Vec<(String, u64, ResourceQuota)>, ApiError> {
        let prefix = self.info.namespace_prefix(Some(ns));
        let parse = |key: &str, raw: &[u8]| {
            let q: ResourceQuota = serde_json::from_slice(raw).ok()?;
            let rev = q.metadata.resource_version.as_deref()?.parse().ok()?;
            Some((key.to_owned(), rev, q))
        };
        if fresh {
            let list = self.store.list(&prefix, Default::default()).await?;
            return Ok(list
                .items
                .iter()
                .filter_map(|kv| parse(&kv.key, &kv.value))
                .collect());
        }
        let (objects, _) = self.quotas.snapshot(&prefix, None);
        Ok(objects
            .iter()
            .filter_map(|o| parse(&o.key, &o.json()))
            .collect())
    }
}

fn listed(names: &[&String], amounts: &Usage) -> String {
    names
        .iter()
        .map(|n| format!("{n}={}", format(n, amounts.get(*n).copied().unwrap_or(0))))
        .collect::<Vec<_>>()
        .join(",")
}

/// The compute resources `hard` limits that some container of `pod` leaves unstated:
/// `limits.cpu for: web; requests.memory for: web`.
fn unstated(pod: &Pod, hard: &BTreeMap<String, Quantity>) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let mut missing = Vec::new();
    for name in hard.keys() {
        let Some((resource, limit)) = compute_resource(name) else {
            continue;
        };
        let shown = if name.contains('.') {
            name.clone()
        } else {
            format!("requests.{name}")
        };
        let lacking: Vec<&str> = spec
            .containers
            .iter()
            .filter(|c| !stated(c, limit).is_some_and(|m| m.contains_key(resource)))
            .map(|c| c.name.as_str())
            .collect();
        if !lacking.is_empty()
            && !missing
                .iter()
                .any(|m: &String| m.starts_with(&format!("{shown} ")))
        {
            missing.push(format!("{shown} for: {}", lacking.join(",")));
        }
    }
    (!missing.is_empty()).then(|| missing.join("; "))
}

#[async_trait::async_trait]
impl Validating for QuotaAdmission {
    fn handles(&self, req: &Request<'_>) -> bool {
        req.operation == Operation::Create && req.namespace.is_some() && req.subresource.is_none()
    }

    async fn validate(&self, req: &Request<'_>, obj: Option<&Value>) -> Result<(), ApiError> {
        let Some(obj) = obj else { return Ok(()) };
        let ns = req.namespace.unwrap_or_default();
        // Most namespaces have no quota: then there is nothing to count (a pod is parsed only
        // when there is).
        if self
            .quotas
            .snapshot(&self.info.namespace_prefix(Some(ns)), None)
            .0
            .is_empty()
        {
            return Ok(());
        }
        let usage = usage_of(req.info.plural, req.info.group, obj);
        let pod = req
            .is::<Pod>()
            .then(|| serde_json::from_value::<Pod>(obj.clone()).ok())
            .flatten();
        let mut fresh = false;
        'attempt: for _ in 0..ATTEMPTS {
            // (key, revision, quota, its new status.used) for each quota this create raises.
            let mut raises = Vec::new();
            for (key, revision, q) in self.quotas(ns, fresh).await? {
                let name = q.metadata.name.clone().unwrap_or_default();
                let spec = q.spec.clone().unwrap_or_default();
                // A scoped quota (Terminating, BestEffort, PriorityClass, ...) tracks only
                // the pods in its scopes.
                if wasmkube_api::quota::is_scoped(&spec)
                    && !pod
                        .as_ref()
                        .is_some_and(|p| wasmkube_api::quota::in_scopes(&spec, p))
                {
                    continue;
                }
                let hard = spec.hard.unwrap_or_default();
                if let Some(pod) = &pod
                    && let Some(missing) = unstated(pod, &hard)
                {
                    return Err(ApiError::forbidden(
                        req.info,
                        req.name,
                        &format!("failed quota: {name}: must specify {missing}"),
                    ));
                }
                let limited: Vec<&String> =
                    hard.keys().filter(|k| usage.contains_key(*k)).collect();
                if limited.is_empty() {
                    continue;
                }
                let used: Usage = q
                    .status
                    .as_ref()
                    .and_then(|s| s.used.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), milli(v)?)))
                    .collect();
                let hard_m: Usage = hard
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), milli(v)?)))
                    .collect();
                let over: Vec<&String> = limited
                    .iter()
                    .copied()
                    .filter(|k| {
                        used.get(*k).copied().unwrap_or(0) + usage[*k]
                            > hard_m.get(*k).copied().unwrap_or(0)
                    })
                    .collect();
                if !over.is_empty() && !fresh {
                    // The cache may not have seen the quota controller give units back.
                    fresh = true;
                    continue 'attempt;
                }
                if !over.is_empty() {
                    return Err(ApiError::forbidden(
                        req.info,
                        req.name,
                        &format!(
                            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                            listed(&over, &usage),
                            listed(&over, &used),
                            listed(&over, &hard_m),
                        ),
                    ));
                }
                let mut new_used = used.clone();
                for k in &limited {
                    *new_used.entry((*k).clone()).or_default() += usage[*k];
                }
                raises.push((key, revision, q, hard, new_used));
            }
            if req.dry_run || raises.is_empty() {
                return Ok(());
            }
            let mut lost = false;
            for (key, revision, mut q, hard, used) in raises {
                let status = q.status.get_or_insert_with(Default::default);
                status.hard = Some(hard);
                let shown = status.used.get_or_insert_with(Default::default);
                for (k, v) in used {
                    shown.insert(k.clone(), Quantity(format(&k, v)));
                }
                let value = serde_json::value::to_raw_value(&q).expect("JSON serializes");
                let value = self
                    .encryption
                    .seal(self.info.plural, self.info.group, &key, value);
                match self
                    .store
                    .write(Command::Put {
                        key,
                        value,
                        precondition: Precondition::Revision(revision),
                    })
                    .await?
                {
                    Outcome::Written { .. } => {}
                    _ => {
                        lost = true;
                        break;
                    }
                }
            }
            if !lost {
                return Ok(());
            }
            fresh = true;
        }
        Err(ApiError::conflict(
            &self.info,
            "",
            "too many concurrent updates to the namespace's quotas; try again",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_under_a_compute_quota_should_state_what_it_limits() {
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": [
            {"name": "web", "resources": {"requests": {"cpu": "1"}}},
            {"name": "side"}]}}))
        .expect("pod");
        let hard: BTreeMap<String, Quantity> =
            serde_json::from_value(json!({"cpu": "2", "limits.memory": "1Gi", "pods": "3"}))
                .expect("hard");
        assert_eq!(
            unstated(&pod, &hard).as_deref(),
            Some("requests.cpu for: side; limits.memory for: web,side")
        );
        let counts: BTreeMap<String, Quantity> =
            serde_json::from_value(json!({"pods": "3"})).expect("hard");
        assert_eq!(unstated(&pod, &counts), None);
    }
}
