//! The Priority admission plugin, and the PriorityClasses it reads, kept in memory from a store watch (as
//! kube-apiserver's admission plugin reads them from an informer-backed lister), so a pod
//! create costs no store read. Until the first list has been read the cache says so and
//! admission reads the store itself; a class named by a pod but missing here (just created)
//! is looked up in the store too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wasmkube_api::ResourceInfo;
use wasmkube_store::{ChangeKind, Store};

use super::{Mutating, Operation, Request};
use crate::error::ApiError;

/// The Priority admission plugin: a new pod's `priority` (and `preemptionPolicy`) come from its
/// `priorityClassName`, or the global-default class, or 0; a priority given directly that
/// disagrees is refused.
pub(crate) struct Priority {
    store: Store,
    classes: Arc<PriorityClasses>,
}

impl Priority {
    pub(crate) fn new(store: Store, classes: Arc<PriorityClasses>) -> Self {
        Priority { store, classes }
    }

    /// (class to record, value, preemption policy) for a pod naming `class_name`.
    async fn resolve(
        &self,
        req: &Request<'_>,
        class_name: &str,
    ) -> Result<(Option<String>, i32, Option<String>), ApiError> {
        let info = ResourceInfo::of::<PriorityClass>();
        if class_name.is_empty() {
            let default = match self.classes.global_default() {
                Some(cached) => cached,
                None => {
                    let all = self.store.list(&info.prefix(), Default::default()).await?;
                    all.items
                        .iter()
                        .filter_map(|kv| serde_json::from_slice::<PriorityClass>(&kv.value).ok())
                        .filter(|pc| pc.global_default == Some(true))
                        .min_by_key(|pc| pc.value)
                }
            };
            return Ok(match default {
                Some(pc) => (pc.metadata.name.clone(), pc.value, pc.preemption_policy),
                None => (None, 0, None),
            });
        }
        if let Some((_, v)) = crate::kinds::misc::SYSTEM_PRIORITY_CLASSES
            .iter()
            .find(|(n, _)| *n == class_name)
        {
            return Ok((None, *v, None));
        }
        if let Some(pc) = self.classes.get(class_name) {
            return Ok((None, pc.value, pc.preemption_policy));
        }
        let Some(kv) = self.store.get(&info.key(None, class_name)).await? else {
            return Err(ApiError::forbidden(
                req.info,
                req.name,
                &format!("no PriorityClass with name {class_name} was found"),
            ));
        };
        let pc: PriorityClass = serde_json::from_slice(&kv.value).map_err(|e| {
            ApiError::internal_with_cause("a stored PriorityClass is unreadable", &e)
        })?;
        Ok((None, pc.value, pc.preemption_policy))
    }
}

#[async_trait::async_trait]
impl Mutating for Priority {
    fn handles(&self, req: &Request<'_>) -> bool {
        req.operation == Operation::Create && req.is::<Pod>()
    }

    async fn admit(&self, req: &Request<'_>, obj: &mut Value) -> Result<(), ApiError> {
        let class_name = obj
            .pointer("/spec/priorityClassName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let (class, value, policy) = self.resolve(req, &class_name).await?;
        // A pod without a spec is refused by validation, which names the missing fields.
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        if let Some(given) = spec.get("priority").and_then(Value::as_i64)
            && given != i64::from(value)
        {
            return Err(ApiError::forbidden(
                req.info,
                req.name,
                &format!(
                    "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
                ),
            ));
        }
        spec.insert("priority".into(), json!(value));
        spec.insert(
            "preemptionPolicy".into(),
            json!(policy.unwrap_or_else(|| "PreemptLowerPriority".into())),
        );
        if let Some(c) = class {
            spec.insert("priorityClassName".into(), json!(c));
        }
        Ok(())
    }
}

/// The PriorityClasses by name (`None` until the first list).
#[derive(Default)]
pub(crate) struct PriorityClasses {
    classes: RwLock<Option<HashMap<String, PriorityClass>>>,
}

impl PriorityClasses {
    /// The global-default class (`Some(None)`: there is none); `None` until synced.
    pub(crate) fn global_default(&self) -> Option<Option<PriorityClass>> {
        let classes = self.classes.read().expect("priority cache lock");
        let all = classes.as_ref()?;
        // Kubernetes takes the lowest value when several claim to be the default.
        Some(
            all.values()
                .filter(|pc| pc.global_default == Some(true))
                .min_by_key(|pc| pc.value)
                .cloned(),
        )
    }

    /// The class `name`, if the cache has it.
    pub(crate) fn get(&self, name: &str) -> Option<PriorityClass> {
        self.classes
            .read()
            .expect("priority cache lock")
            .as_ref()?
            .get(name)
            .cloned()
    }

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        let name = key.rsplit('/').next().unwrap_or_default().to_owned();
        let mut classes = self.classes.write().expect("priority cache lock");
        let all = classes.get_or_insert_with(HashMap::new);
        match value.and_then(|v| serde_json::from_slice::<PriorityClass>(v).ok()) {
            Some(pc) => {
                all.insert(name, pc);
            }
            None => {
                all.remove(&name);
            }
        }
    }

    /// Keeps the cache from the store until `shutdown`: list, then watch from the list's
    /// revision; relists when the watch breaks.
    pub(crate) fn run(self: Arc<Self>, store: Store, shutdown: CancellationToken) {
        let prefix = ResourceInfo::of::<PriorityClass>().prefix();
        tokio::spawn(async move {
            loop {
                let synced = async {
                    let list = store.list(&prefix, Default::default()).await.ok()?;
                    let fresh: HashMap<String, PriorityClass> = list
                        .items
                        .iter()
                        .filter_map(|kv| serde_json::from_slice::<PriorityClass>(&kv.value).ok())
                        .filter_map(|pc| Some((pc.metadata.name.clone()?, pc)))
                        .collect();
                    *self.classes.write().expect("priority cache lock") = Some(fresh);
                    let mut watch = store.watch(&prefix, list.revision).await.ok()?;
                    while let Ok(change) = watch.next().await {
                        let value =
                            (change.kind != ChangeKind::Deleted).then_some(&change.value[..]);
                        self.apply(&change.key, value);
                    }
                    Some(())
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = synced => {}
                }
                // The watch broke (lagged, compacted): forget and relist shortly.
                *self.classes.write().expect("priority cache lock") = None;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_global_default_wins_and_deletes_forget() {
        let cache = PriorityClasses::default();
        assert_eq!(cache.global_default(), None, "not synced yet");
        let class = |name: &str, value: i32, default: bool| {
            serde_json::to_vec(&serde_json::json!({
                "metadata": {"name": name}, "value": value, "globalDefault": default
            }))
            .unwrap()
        };
        cache.apply("/registry/priorityclasses/a", Some(&class("a", 100, true)));
        cache.apply("/registry/priorityclasses/b", Some(&class("b", 50, true)));
        cache.apply("/registry/priorityclasses/c", Some(&class("c", 10, false)));
        let default = cache.global_default().flatten().expect("a default");
        assert_eq!(default.metadata.name.as_deref(), Some("b"));
        assert_eq!(cache.get("c").map(|c| c.value), Some(10));
        cache.apply("/registry/priorityclasses/b", None);
        cache.apply("/registry/priorityclasses/a", None);
        assert_eq!(cache.global_default(), Some(None));
    }
}
