//! The ResourceQuota controller: each quota's `status.hard` is its `spec.hard` and its
//! `status.used` what the namespace holds of those resources now — pods (finished ones hold
//! nothing) and their compute requests and limits, and the count of any other kind
//! (`count/deployments.apps`, `services`, `secrets`, ...). Admission raises `used` on each
//! create; this recount gives back what was deleted, on every pod change (the shared
//! informer's) and at least every few seconds for the other kinds.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::workqueue::Action;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, ResourceQuotaStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DynamicObject, ListParams, PostParams};
use kube::discovery::ApiResource;
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use wasmkube_api::quota::{Usage, format, milli, usage_of};

/// How often a quota is recounted when nothing it watches changed.
const RECOUNT: Duration = Duration::from_secs(10);
/// How long a lower count must hold, the quota unchanged, before it is written: admission
/// raises `used` before the object it counts is written, so one count can miss a create in
/// flight; two counts this far apart cannot.
const CONFIRM: Duration = Duration::from_secs(1);

/// What the reconciler works with.
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// Lower counts waiting for confirmation: quota uid → (its resourceVersion, the count,
    /// when it was first seen).
    pub lowering: Mutex<HashMap<String, (String, ResourceQuotaStatus, Instant)>>,
}

/// Whether `new` gives back some of what `old` counted.
fn lowers(old: Option<&ResourceQuotaStatus>, new: &ResourceQuotaStatus) -> bool {
    let old_used = old.and_then(|s| s.used.as_ref());
    new.used.iter().flatten().any(|(k, v)| {
        let before = old_used.and_then(|u| u.get(k)).and_then(milli).unwrap_or(0);
        milli(v).unwrap_or(0) < before
    })
}

/// Reconcile errors (retried with back-off).
pub type Error = crate::ReconcileError;

/// The (plural, group) a quota resource name counts, for kinds other than pods.
fn counted(name: &str) -> Option<(String, String)> {
    if let Some(rest) = name.strip_prefix("count/") {
        let (plural, group) = rest.split_once('.').unwrap_or((rest, ""));
        return Some((plural.to_owned(), group.to_owned()));
    }
    match name {
        "services" | "services.nodeports" | "services.loadbalancers" => {
            Some(("services".into(), String::new()))
        }
        "secrets"
        | "configmaps"
        | "replicationcontrollers"
        | "resourcequotas"
        | "persistentvolumeclaims" => Some((name.to_owned(), String::new())),
        _ => None,
    }
}

/// What the objects of (`plural`, `group`) in `ns` use.
async fn usage_of_kind(
    client: &Client,
    ns: &str,
    plural: &str,
    group: &str,
) -> Result<Usage, Error> {
    let version = if group.is_empty() {
        "v1".to_owned()
    } else {
        match kube::discovery::group(client, group).await {
            Ok(g) => g.preferred_version_or_latest().to_owned(),
            // A group the cluster does not serve holds nothing.
            Err(_) => return Ok(Usage::new()),
        }
    };
    let ar = ApiResource {
        group: group.to_owned(),
        version: version.clone(),
        api_version: if group.is_empty() {
            version
        } else {
            format!("{group}/{version}")
        },
        kind: String::new(),
        plural: plural.to_owned(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Usage::new()),
        Err(e) => return Err(e.into()),
    };
    let mut usage = Usage::new();
    for obj in list.items {
        for (k, v) in usage_of(plural, group, &serde_json::to_value(&obj)?) {
            *usage.entry(k).or_default() += v;
        }
    }
    Ok(usage)
}

/// Recounts one quota from a consistent read of its namespace, and writes the count only if
/// the quota did not change meanwhile (admission raises `used` before each create is written:
/// a count from an older view must not undo that).
///
/// # Errors
/// When the API refuses a read or the status update.
pub async fn reconcile(q: Arc<ResourceQuota>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = q.namespace().unwrap_or_default();
    let quotas: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
    let mut current = match quotas.get(&q.name_any()).await {
        Ok(c) => c,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
        Err(e) => return Err(e.into()),
    };
    let hard = current
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let spec = current.spec.clone().unwrap_or_default();
    // A scoped quota tracks only the pods in its scopes, and nothing else.
    let scoped = wasmkube_api::quota::is_scoped(&spec);
    let mut usage = Usage::new();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for pod in pods.list(&ListParams::default()).await? {
        if scoped && !wasmkube_api::quota::in_scopes(&spec, &pod) {
            continue;
        }
        for (k, v) in usage_of("pods", "", &serde_json::to_value(&pod)?) {
            *usage.entry(k).or_default() += v;
        }
    }
    // Pods (and `count/pods`) were counted above.
    let mut kinds: Vec<(String, String)> = hard
        .keys()
        .filter_map(|k| counted(k))
        .filter(|(plural, group)| !(plural == "pods" && group.is_empty()))
        .filter(|_| !scoped)
        .collect();
    kinds.sort();
    kinds.dedup();
    for (plural, group) in kinds {
        for (k, v) in usage_of_kind(&ctx.client, &ns, &plural, &group).await? {
            *usage.entry(k).or_default() += v;
        }
    }
    let used: BTreeMap<String, Quantity> = hard
        .keys()
        .map(|k| {
            (
                k.clone(),
                Quantity(format(k, usage.get(k).copied().unwrap_or(0))),
            )
        })
        .collect();
    let status = ResourceQuotaStatus {
        hard: Some(hard),
        used: Some(used),
    };
    if current.status.as_ref() != Some(&status) {
        if lowers(current.status.as_ref(), &status) {
            let uid = current.uid().unwrap_or_default();
            let rv = current.resource_version().unwrap_or_default();
            let mut lowering = ctx.lowering.lock().expect("lowering lock");
            match lowering.get(&uid) {
                Some((seen_rv, seen, since))
                    if *seen_rv == rv && *seen == status && since.elapsed() >= CONFIRM =>
                {
                    lowering.remove(&uid);
                }
                Some((seen_rv, seen, _)) if *seen_rv == rv && *seen == status => {
                    return Ok(Action::requeue(CONFIRM));
                }
                _ => {
                    lowering.insert(uid, (rv, status, Instant::now()));
                    return Ok(Action::requeue(CONFIRM));
                }
            }
        }
        current.status = Some(status);
        match quotas
            .replace_status(&q.name_any(), &PostParams::default(), &current)
            .await
        {
            // Admission raised it meanwhile: count again.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
    }
    Ok(Action::requeue(RECOUNT))
}

/// Runs the controller until `shutdown`.
pub async fn run(
    client: Client,
    informers: &crate::informers::Informers,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        lowering: Mutex::default(),
    });
    // A pod's change concerns the quotas of its namespace.
    crate::run_pod_watching(
        client,
        "resourcequota",
        informers.pods.subscribe(),
        ctx,
        |q: &ResourceQuota, pod| q.namespace() == pod.namespace(),
        reconcile,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_names_should_map_to_the_kinds_they_count() {
        assert_eq!(
            counted("count/deployments.apps"),
            Some(("deployments".into(), "apps".into()))
        );
        assert_eq!(
            counted("count/configmaps"),
            Some(("configmaps".into(), String::new()))
        );
        assert_eq!(
            counted("services.nodeports"),
            Some(("services".into(), String::new()))
        );
        assert_eq!(counted("requests.cpu"), None);
        assert_eq!(counted("pods"), None, "pods come from the informer");
    }
}
