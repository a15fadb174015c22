//! The PriorityClasses Priority admission reads, kept in memory from a store watch (as
//! kube-apiserver's admission plugin reads them from an informer-backed lister), so a pod
//! create costs no store read. Until the first list has been read the cache says so and
//! admission reads the store itself; a class named by a pod but missing here (just created)
//! is looked up in the store too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::scheduling::v1::PriorityClass;
use tokio_util::sync::CancellationToken;
use wasmkube_api::ResourceInfo;
use wasmkube_store::{ChangeKind, Store};

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
