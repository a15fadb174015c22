//! Shared informers: one watch and one cache per kind that several controllers read, as
//! kube-controller-manager's shared informer factory does, instead of one watch and one full
//! copy of every pod per controller.
//!
//! Controllers take a cache and a stream of the objects it touched ([`Informer::subscribe`])
//! before [`Informers::run`] starts the watches; each object is yielded once the cache holds
//! it, and each deleted object once the cache has dropped it (kube-runtime's shared streams
//! carry only applied objects: a StatefulSet waiting for a pod to be gone, or a quota counting
//! pods, would never hear of the delete). Subscribers that fall behind slow the watch down
//! (bounded buffers, nothing dropped).

use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::stream::BoxStream;
use futures::{SinkExt, Stream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio_util::sync::CancellationToken;

/// How many touched objects wait for the slowest subscriber before the watch waits.
const BUFFER: usize = 4096;

/// One kind's shared cache.
pub struct Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    reader: Store<K>,
    /// Taken by [`Informers::run`].
    writer: Mutex<Option<reflector::store::Writer<K>>>,
    /// Where each subscriber hears of deleted objects; taken by [`Informers::run`].
    deleted: Mutex<Vec<mpsc::Sender<Arc<K>>>>,
}

/// The objects a cache touched: applied ones, then deleted ones, each once the cache holds the
/// change.
pub type Touched<K> = BoxStream<'static, Arc<K>>;

impl<K: crate::workqueue::Kind> Informer<K> {
    fn new() -> Self {
        let (reader, writer) = reflector::store_shared(BUFFER);
        Informer {
            reader,
            writer: Mutex::new(Some(writer)),
            deleted: Mutex::default(),
        }
    }

    /// The cache, for a reader that needs no change notifications.
    pub fn store(&self) -> Store<K> {
        self.reader.clone()
    }

    /// The cache and the objects it touches from now on (must be polled).
    ///
    /// # Panics
    /// After [`Informers::run`] has started the watch.
    pub fn subscribe(&self) -> (Store<K>, Touched<K>) {
        let writer = self.writer.lock().expect("informer lock");
        let applied: ReflectHandle<K> = writer
            .as_ref()
            .expect("subscribe before the informers run")
            .subscribe()
            .expect("a shared store");
        let (tx, deleted) = mpsc::channel(BUFFER);
        self.deleted.lock().expect("informer lock").push(tx);
        (
            self.reader.clone(),
            futures::stream::select(applied, deleted).boxed(),
        )
    }

    /// Keeps the cache filled from one watch of every `K` until the stream ends.
    fn drive(&self, client: &Client) -> impl Stream<Item = ()> + Send + 'static {
        let writer = self
            .writer
            .lock()
            .expect("informer lock")
            .take()
            .expect("an informer runs once");
        let subscribers = std::mem::take(&mut *self.deleted.lock().expect("informer lock"));
        let events = wasmkube_client::watch::watcher(
            Api::<K>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect_shared(writer);
        // The reflector yields an event once its cache holds it.
        futures::stream::unfold(
            (events.boxed(), subscribers),
            |(mut events, mut subscribers)| async move {
                match events.next().await? {
                    Ok(watcher::Event::Delete(obj)) => {
                        let obj = Arc::new(obj);
                        for s in &mut subscribers {
                            // A subscriber that is gone has stopped.
                            let _ = s.send(Arc::clone(&obj)).await;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, kind = K::kind(&()).as_ref(), "shared watch failed; retrying");
                    }
                }
                Some(((), (events, subscribers)))
            },
        )
    }
}

/// The shared caches of the controller manager.
pub struct Informers {
    client: Client,
    /// Every pod.
    pub pods: Informer<Pod>,
    /// Every node.
    pub nodes: Informer<Node>,
    /// Every ReplicaSet.
    pub replicasets: Informer<ReplicaSet>,
    /// Every Job.
    pub jobs: Informer<Job>,
}

impl Informers {
    /// Caches not yet filled; controllers subscribe, then [`Informers::run`] starts them.
    pub fn new(client: &Client) -> Arc<Self> {
        Arc::new(Informers {
            client: client.clone(),
            pods: Informer::new(),
            nodes: Informer::new(),
            replicasets: Informer::new(),
            jobs: Informer::new(),
        })
    }

    /// Watches every shared kind until `shutdown`.
    ///
    /// Its first poll only yields: run beside the controllers (`join!`), every controller
    /// subscribes in its own first poll, before the watches take the caches' writers.
    pub async fn run(&self, shutdown: CancellationToken) {
        tokio::task::yield_now().await;
        let all = futures::stream::select_all([
            self.pods.drive(&self.client).boxed(),
            self.nodes.drive(&self.client).boxed(),
            self.replicasets.drive(&self.client).boxed(),
            self.jobs.drive(&self.client).boxed(),
        ]);
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = all.for_each(|()| async {}) => {}
        }
    }
}
