//! Watch helpers shared by the components: [`watcher`] is the watch every component's caches
//! are fed from, [`reflect`] caches one kind, [`fold`] keeps any state equal to the objects of one kind, and [`services`]
//! feeds a [`ServiceIndex`] from Services and EndpointSlices. The DNS server and the wasmlet's
//! service proxy both answer from that index.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use wasmkube_api::services::ServiceIndex;

/// kube-runtime's watcher, with each object's `metadata.managedFields` dropped on arrival, as
/// kube-controller-manager's informers trim them: no component reads them, and in a cache they
/// are most of an object's memory (a pod's field sets decode to a tree of maps). They are
/// dropped, not emptied: an update sent from a cached object then leaves the server's
/// `managedFields` as they are, where an empty list would reset them.
pub fn watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    watcher::watcher(api, config).modify(|o| o.meta_mut().managed_fields = None)
}

/// A cache of the objects `api` reaches, and the event stream that fills it (must be polled;
/// it retries with kube-runtime's default back-off). Each event is yielded once the cache holds
/// it, including the end of every relist (`InitDone`), so a consumer that recomputes from the
/// cache on each event never acts on a stale relist.
pub fn reflect<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let events =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    (reader, events)
}

/// Keeps `index` equal to the cluster's Services and EndpointSlices until `shutdown`; calls
/// `changed` after every change.
pub async fn services(
    client: Client,
    index: Arc<RwLock<ServiceIndex>>,
    changed: impl Fn() + Send + Sync + Clone + 'static,
    shutdown: CancellationToken,
) {
    let svcs = fold(
        Api::<Service>::all(client.clone()),
        Arc::clone(&index),
        |idx: &mut ServiceIndex, s: &Service| idx.apply_service(s),
        |idx: &mut ServiceIndex, ns: &str, name: &str| idx.delete_service(ns, name),
        changed.clone(),
        shutdown.clone(),
    );
    let slices = fold(
        Api::<EndpointSlice>::all(client),
        index,
        |idx: &mut ServiceIndex, s: &EndpointSlice| idx.apply_slice(s),
        |idx: &mut ServiceIndex, ns: &str, name: &str| idx.delete_slice(ns, name),
        changed,
        shutdown,
    );
    tokio::join!(svcs, slices);
}

/// Folds the watch events of one kind into a shared state; a re-list replaces what that kind
/// contributed. `delete` gets the namespace and name of what went (only keys are remembered,
/// not objects: a watch of every pod holds no copy of them).
pub async fn fold<K, S, A, D, C>(
    api: Api<K>,
    state: Arc<RwLock<S>>,
    apply: A,
    delete: D,
    changed: C,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    A: Fn(&mut S, &K),
    D: Fn(&mut S, &str, &str),
    C: Fn(),
{
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relist: Option<Vec<K>> = None;
    let mut known: HashSet<(String, String)> = HashSet::new();
    let key = |k: &K| (k.namespace().unwrap_or_default(), k.name_any());
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            e = stream.next() => match e { Some(e) => e, None => return },
        };
        {
            let mut s = state.write().expect("index lock");
            match event {
                Ok(Event::Apply(o)) => {
                    apply(&mut s, &o);
                    known.insert(key(&o));
                }
                Ok(Event::Delete(o)) => {
                    let (ns, name) = key(&o);
                    delete(&mut s, &ns, &name);
                    known.remove(&(ns, name));
                }
                Ok(Event::Init) => relist = Some(Vec::new()),
                Ok(Event::InitApply(o)) => relist.get_or_insert_with(Vec::new).push(o),
                Ok(Event::InitDone) => {
                    for (ns, name) in known.drain() {
                        delete(&mut s, &ns, &name);
                    }
                    for o in relist.take().unwrap_or_default() {
                        apply(&mut s, &o);
                        known.insert(key(&o));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch failed; retrying");
                    continue;
                }
            }
        }
        changed();
    }
}
