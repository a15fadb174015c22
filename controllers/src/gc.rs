//! The garbage collector (`garbagecollector.go`): follows `ownerReferences` across every kind
//! the API server lists.
//!
//! - *Background*: an object whose owners are all gone is deleted; one with some owners gone
//!   loses just the dangling references.
//! - *Foreground*: an owner deleted with `propagationPolicy: Foreground` carries the
//!   `foregroundDeletion` finalizer; its dependents are deleted (foreground too), and once none
//!   is left the finalizer is removed, so the API server removes the owner.
//! - *Orphan*: an owner carrying the `orphan` finalizer has its references removed from its
//!   dependents, then the finalizer.
//!
//! The graph is kept from metadata-only watches (`PartialObjectMetadata`) of every kind.
//! An owner missing from the graph is confirmed absent with a live read before anything is
//! deleted, so a lagging watch cannot cause a wrong deletion.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, PartialObjectMeta, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The finalizer of a foreground deletion.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an orphaning deletion.
pub const ORPHAN: &str = "orphan";

/// One object of the graph.
#[derive(Debug, Clone)]
struct Object {
    ar: ApiResource,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

/// The ownership graph.
#[derive(Default)]
struct Graph {
    objects: HashMap<String, Object>,
    /// Owner uid → dependent uids.
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn upsert(&mut self, uid: String, obj: Object) {
        self.remove(&uid);
        for o in &obj.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        self.objects.insert(uid, obj);
    }

    fn remove(&mut self, uid: &str) -> Option<Object> {
        let old = self.objects.remove(uid)?;
        for o in &old.owners {
            if let Some(set) = self.dependents.get_mut(&o.uid) {
                set.remove(uid);
                if set.is_empty() {
                    self.dependents.remove(&o.uid);
                }
            }
        }
        Some(old)
    }

    fn dependents_of(&self, uid: &str) -> Vec<String> {
        self.dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Every kind that can be listed, watched and deleted, from discovery.
async fn watchable(client: &Client) -> Result<Vec<(ApiResource, bool)>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            let ok = [verbs::LIST, verbs::WATCH, verbs::DELETE, verbs::PATCH]
                .iter()
                .all(|v| caps.supports_operation(v));
            if ok && ar.plural != "events" {
                out.push((ar, caps.scope == Scope::Namespaced));
            }
        }
    }
    Ok(out)
}

fn api_for(client: &Client, ar: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

struct Collector {
    client: Client,
    graph: Graph,
    /// Kinds by (apiVersion, kind), to read owners that are not in the graph.
    kinds: HashMap<(String, String), (ApiResource, bool)>,
}

impl Collector {
    /// Whether the owner `r` of an object in `namespace` really exists (a live read).
    async fn owner_exists(&self, r: &OwnerReference, namespace: Option<&str>) -> bool {
        if self.graph.objects.contains_key(&r.uid) {
            return true;
        }
        let Some((ar, namespaced)) = self.kinds.get(&(r.api_version.clone(), r.kind.clone()))
        else {
            // An owner of a kind this server does not serve cannot be checked; keep the object.
            return true;
        };
        let api = api_for(&self.client, ar, if *namespaced { namespace } else { None });
        match api.get_metadata_opt(&r.name).await {
            Ok(Some(meta)) => meta.metadata.uid.as_deref() == Some(r.uid.as_str()),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Looks at one object; returns uids whose state may have changed as a result.
    async fn attempt(&mut self, uid: &str) -> Vec<String> {
        let Some(obj) = self.graph.objects.get(uid).cloned() else {
            return Vec::new();
        };
        let api = api_for(&self.client, &obj.ar, obj.namespace.as_deref());
        let mut touched = Vec::new();

        if obj.deleting && obj.finalizers.iter().any(|f| f == ORPHAN) {
            for dep in self.graph.dependents_of(uid) {
                let Some(d) = self.graph.objects.get(&dep).cloned() else {
                    continue;
                };
                let refs: Vec<&OwnerReference> = d.owners.iter().filter(|o| o.uid != uid).collect();
                let dapi = api_for(&self.client, &d.ar, d.namespace.as_deref());
                set_owners(&dapi, &d.name, &refs).await;
                touched.push(dep);
            }
            self.remove_finalizer(&api, &obj, ORPHAN).await;
            return touched;
        }

        if obj.deleting && obj.finalizers.iter().any(|f| f == FOREGROUND) {
            let deps = self.graph.dependents_of(uid);
            let mut blocking = 0;
            for dep in &deps {
                let Some(d) = self.graph.objects.get(dep).cloned() else {
                    continue;
                };
                if d.owners
                    .iter()
                    .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
                {
                    blocking += 1;
                }
                if !d.deleting {
                    let dapi = api_for(&self.client, &d.ar, d.namespace.as_deref());
                    let params = DeleteParams {
                        propagation_policy: Some(PropagationPolicy::Foreground),
                        ..Default::default()
                    };
                    let _ = dapi.delete(&d.name, &params).await;
                    touched.push(dep.clone());
                }
            }
            if blocking == 0 {
                self.remove_finalizer(&api, &obj, FOREGROUND).await;
            }
            return touched;
        }

        if obj.owners.is_empty() {
            return touched;
        }
        let mut dangling = Vec::new();
        for r in &obj.owners {
            if !self.owner_exists(r, obj.namespace.as_deref()).await {
                dangling.push(r.uid.clone());
            }
        }
        if dangling.is_empty() {
            return touched;
        }
        if dangling.len() == obj.owners.len() {
            if !obj.deleting {
                // Foreground when an owner asked for it (it is waiting on us), else background.
                let params = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    preconditions: Some(Preconditions {
                        uid: Some(uid.to_owned()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&obj.name, &params).await {
                    Ok(_) => {
                        tracing::debug!(kind = %obj.ar.kind, name = %obj.name, "collected an object whose owners are gone")
                    }
                    Err(e) => tracing::debug!(error = %e, name = %obj.name, "could not collect"),
                }
            }
        } else {
            let refs: Vec<&OwnerReference> = obj
                .owners
                .iter()
                .filter(|o| !dangling.contains(&o.uid))
                .collect();
            set_owners(&api, &obj.name, &refs).await;
        }
        touched
    }

    async fn remove_finalizer(&self, api: &Api<DynamicObject>, obj: &Object, finalizer: &str) {
        let rest: Vec<&String> = obj.finalizers.iter().filter(|f| *f != finalizer).collect();
        let _ = api
            .patch(
                &obj.name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"finalizers": rest}})),
            )
            .await;
    }
}

/// Uids to look at, each at most once in the queue.
#[derive(Default)]
struct WorkQueue {
    order: VecDeque<String>,
    queued: HashSet<String>,
}

impl WorkQueue {
    fn push(&mut self, uid: String) {
        if self.queued.insert(uid.clone()) {
            self.order.push_back(uid);
        }
    }

    fn pop(&mut self) -> Option<String> {
        let uid = self.order.pop_front()?;
        self.queued.remove(&uid);
        Some(uid)
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// How often the collector looks for kinds added since it started.
const REDISCOVER: Duration = Duration::from_secs(30);

/// Runs the garbage collector until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let kinds = loop {
        match watchable(&client).await {
            Ok(k) => break k,
            Err(e) => {
                tracing::warn!(error = %e, "discovery failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    let watch = |ar: &ApiResource| {
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client.clone(), ar);
        let ar = ar.clone();
        wasmkube_client::watch::watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |e| (ar.clone(), e))
            .boxed()
    };
    let streams: Vec<_> = kinds.iter().map(|(ar, _)| watch(ar)).collect();
    let mut expected = streams.len();
    let mut events = futures::stream::select_all(streams);
    // Kinds come and go (CustomResourceDefinitions): discovery again every 30 s, as
    // kube-controller-manager's collector resyncs its monitors.
    let mut rediscover = tokio::time::interval(REDISCOVER);
    rediscover.tick().await;
    let mut collector = Collector {
        client: client.clone(),
        graph: Graph::default(),
        kinds: kinds
            .iter()
            .map(|(ar, ns)| ((ar.api_version.clone(), ar.kind.clone()), (ar.clone(), *ns)))
            .collect(),
    };
    let mut synced = 0usize;
    let mut queue = WorkQueue::default();
    loop {
        // Work through the queue between events, but only once every kind has listed.
        let work = synced >= expected && !queue.is_empty();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            ev = events.next() => {
                let Some((ar, ev)) = ev else { return };
                match ev {
                    Ok(Event::Apply(m) | Event::InitApply(m)) => {
                        let uid = m.metadata.uid.clone().unwrap_or_default();
                        let obj = Object {
                            ar,
                            namespace: m.metadata.namespace.clone(),
                            name: m.metadata.name.clone().unwrap_or_default(),
                            owners: m.metadata.owner_references.clone().unwrap_or_default(),
                            deleting: m.metadata.deletion_timestamp.is_some(),
                            finalizers: m.metadata.finalizers.clone().unwrap_or_default(),
                        };
                        let owners: Vec<String> = obj.owners.iter().map(|o| o.uid.clone()).collect();
                        let interesting = !obj.owners.is_empty() || obj.finalizers.iter().any(|f| f == FOREGROUND || f == ORPHAN);
                        collector.graph.upsert(uid.clone(), obj);
                        if interesting {
                            queue.push(uid);
                        }
                        for o in owners {
                            if collector.graph.objects.get(&o).is_some_and(|x| x.deleting) {
                                queue.push(o);
                            }
                        }
                    }
                    Ok(Event::Delete(m)) => {
                        let uid = m.metadata.uid.clone().unwrap_or_default();
                        if let Some(old) = collector.graph.remove(&uid) {
                            // Owners waiting in foreground may now be done; dependents may be orphans.
                            for o in old.owners {
                                queue.push(o.uid);
                            }
                        }
                        for dep in collector.graph.dependents_of(&uid) {
                            queue.push(dep);
                        }
                    }
                    Ok(Event::Init) => {}
                    Ok(Event::InitDone) => synced += 1,
                    Err(e) => tracing::debug!(error = %e, "gc watch failed; retrying"),
                }
            }
            _ = rediscover.tick() => {
                if let Ok(now) = watchable(&client).await {
                    for (ar, namespaced) in now {
                        let key = (ar.api_version.clone(), ar.kind.clone());
                        if let std::collections::hash_map::Entry::Vacant(slot) = collector.kinds.entry(key) {
                            tracing::debug!(kind = %ar.kind, group = %ar.group, "gc: watching a new kind");
                            events.push(watch(&ar));
                            expected += 1;
                            slot.insert((ar, namespaced));
                        }
                    }
                }
            }
            () = std::future::ready(()), if work => {
                let uid = queue.pop().expect("work implies a queued uid");
                for t in collector.attempt(&uid).await {
                    queue.push(t);
                }
            }
        }
    }
}

/// Replaces `name`'s owner references with `refs` (a failure is retried with the next attempt).
async fn set_owners(api: &Api<DynamicObject>, name: &str, refs: &[&OwnerReference]) {
    let patch = json!({"metadata": {"ownerReferences": refs}});
    if let Err(error) = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(%error, name, "could not update owner references");
    }
}
