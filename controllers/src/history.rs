//! ControllerRevisions (`controller_history.go`): the pod-template history of a StatefulSet
//! or DaemonSet, which `kubectl rollout history` lists and `kubectl rollout undo` restores.
//!
//! Each distinct template is one ControllerRevision named `<owner>-<hash>`, controlled by the
//! owner, labelled with the template's labels and `controller-revision-hash`, annotated as the
//! owner is (so `kubernetes.io/change-cause` shows in the history), numbered one past the
//! newest. Its `data` is the patch that restores the template —
//! `{"spec": {"template": {..., "$patch": "replace"}}}` — which kubectl applies as a
//! strategic merge patch on undo; the template then matches that revision again, which is
//! renumbered the newest rather than copied. Revisions no pod uses beyond
//! `revisionHistoryLimit` (default 10) are deleted, the oldest first.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

/// The label naming a revision's hash.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// How many unused revisions are kept when the owner does not say.
pub const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// The `data` a revision keeps of `template`: the strategic merge patch that restores it.
#[must_use]
pub fn data_of(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(t) = t.as_object_mut() {
        t.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// Whether the owner's history may be behind its template: its spec changed since its status
/// was last written, or it has no status yet. (Only then is the history read.)
#[must_use]
pub fn behind(meta: &ObjectMeta, observed_generation: Option<i64>) -> bool {
    observed_generation.is_none() || observed_generation != meta.generation
}

/// One owner's template, to be recorded.
pub struct Current<'a> {
    /// The revision's name, `<owner>-<hash>`.
    pub name: &'a str,
    /// Its hash.
    pub hash: &'a str,
    /// The template.
    pub template: &'a PodTemplateSpec,
    /// `revisionHistoryLimit`.
    pub limit: Option<i32>,
    /// Revisions still in use (by the owner's status or its pods), never deleted.
    pub live: HashSet<String>,
}

/// Records `current` as `owner`'s newest revision and trims its history; returns the
/// revision's number.
///
/// # Errors
/// API failures.
pub async fn record<K>(client: &Client, owner: &K, current: Current<'_>) -> Result<i64, kube::Error>
where
    K: Resource<DynamicType = ()>,
{
    let ns = owner.namespace().unwrap_or_else(|| "default".into());
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let mut owned: Vec<ControllerRevision> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| {
            r.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect();
    owned.sort_by_key(|r| r.revision);
    let newest = owned.last().map_or(0, |r| r.revision);
    let number = match owned.iter().find(|r| r.name_any() == current.name) {
        Some(r) if r.revision == newest => newest,
        Some(_) => {
            // The template is back to an older one (a rollback): that revision is the newest.
            let number = newest + 1;
            api.patch(
                current.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"revision": number})),
            )
            .await?;
            if let Some(r) = owned.iter_mut().find(|r| r.name_any() == current.name) {
                r.revision = number;
            }
            number
        }
        None => {
            let number = newest + 1;
            let mut labels: BTreeMap<String, String> = current
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(HASH_LABEL.into(), current.hash.into());
            let revision = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(current.name.into()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: owner.meta().annotations.clone(),
                    owner_references: Some(vec![crate::controller_ref(owner)]),
                    ..ObjectMeta::default()
                },
                data: Some(RawExtension(data_of(current.template))),
                revision: number,
            };
            match api.create(&PostParams::default(), &revision).await {
                Ok(created) => owned.push(created),
                // Written by an earlier pass whose list did not show it yet.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
            number
        }
    };
    let limit = usize::try_from(current.limit.unwrap_or(DEFAULT_HISTORY_LIMIT)).unwrap_or(0);
    let mut live = current.live;
    live.insert(current.name.to_owned());
    owned.sort_by_key(|r| r.revision);
    let unused: Vec<&ControllerRevision> = owned
        .iter()
        .filter(|r| !live.contains(&r.name_any()))
        .collect();
    for old in unused.iter().take(unused.len().saturating_sub(limit)) {
        match api.delete(&old.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_should_be_the_patch_that_replaces_the_template() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "db"}},
            "spec": {"containers": [{"name": "c", "image": "x:v1"}]},
        }))
        .expect("a template");
        let d = data_of(&t);
        assert_eq!(d["spec"]["template"]["$patch"], "replace");
        assert_eq!(d["spec"]["template"]["metadata"]["labels"]["app"], "db");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            "x:v1"
        );
        assert_eq!(
            d.as_object().map(|o| o.len()),
            Some(1),
            "only spec.template"
        );
    }
}
