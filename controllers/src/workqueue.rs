//! What runs the controllers' reconciles: the triggers of a kube-runtime `Controller` (the
//! reconciled kind's reflector, the children it owns, objects related to it) feeding a work
//! queue that starts a request due now at once, as kube-controller-manager's workqueue does.
//!
//! kube-runtime's own scheduler puts every request, even one due now, through a tokio
//! `DelayQueue`, whose deadlines are rounded up to the next millisecond and fire on the timer's
//! tick: 1–2 ms a controller hop, three hops (autoscaler, Deployment, ReplicaSet) in a scale
//! from zero. Here only a requeue after a delay waits in a timer queue.
//!
//! The rules, each as kube-runtime and client-go's workqueue keep them:
//! - one reconcile of a key at a time; a key asked for while it runs is reconciled once more
//!   when that run ends, however many times it was asked;
//! - a key asked for while a requeue of it waits runs now, and the waiting requeue is dropped;
//! - nothing is reconciled before the reconciled kind's cache holds a full list; what was
//!   asked for until then runs once it does;
//! - a key whose object is gone from the cache is not reconciled (its delete was the change);
//! - after `shutdown` nothing new starts; reconciles running then may finish within a grace
//!   period.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, Stream, StreamExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{DelayQueue, delay_queue};

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile again after `after`, even if nothing changes.
    #[must_use]
    pub const fn requeue(after: Duration) -> Self {
        Self {
            requeue_after: Some(after),
        }
    }

    /// Reconcile again only when a trigger asks.
    #[must_use]
    pub const fn await_change() -> Self {
        Self {
            requeue_after: None,
        }
    }
}

/// How long a reconcile that panicked waits before it runs again.
const AFTER_PANIC: Duration = Duration::from_secs(2);

/// How long the reconciles running at `shutdown` may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A reconciled kind's cache and what asks for its objects to be reconciled.
pub struct Controller<K: Resource<DynamicType = ()> + Clone + 'static> {
    reader: Store<K>,
    triggers: SelectAll<BoxStream<'static, ObjectRef<K>>>,
    /// The reconciled kind's changes, each once the cache holds it (none from `from_parts`).
    own: BoxStream<'static, K>,
    /// What else a change of a reconciled object asks for ([`Controller::related`]).
    related: Vec<Related<K>>,
}

/// A kind a controller watches and caches: typed (no dynamic type), cloneable, sendable.
pub trait Kind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> Kind for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

/// Maps a changed object of the reconciled kind to other objects of that kind to reconcile.
type Related<K> = Box<dyn Fn(&K) -> Vec<ObjectRef<K>> + Send>;

impl<K: Kind> Controller<K> {
    /// Reconciles the objects of `api` that `config` selects, each when it changes.
    pub fn new(api: Api<K>, config: watcher::Config) -> Self {
        let (reader, writer) = reflector::store();
        // The reflector yields a change once its cache holds it, so what a related object's
        // reconcile reads is never older than the change that asked for it.
        let own = watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .touched_objects();
        Self {
            own: ok_or_log::<K, _>(own).boxed(),
            ..Self::from_parts(reader, futures::stream::empty())
        }
    }

    /// Reconciles the objects in `reader` that `triggers` asks for.
    pub(crate) fn from_parts(
        reader: Store<K>,
        triggers: impl Stream<Item = ObjectRef<K>> + Send + 'static,
    ) -> Self {
        let mut all = SelectAll::new();
        all.push(triggers.boxed());
        Self {
            reader,
            triggers: all,
            own: futures::stream::empty().boxed(),
            related: Vec::new(),
        }
    }

    /// The reconciled kind's cache.
    pub fn store(&self) -> Store<K> {
        self.reader.clone()
    }

    /// Also reconciles what `mapper` names for each changed or deleted object of the reconciled
    /// kind, once the cache holds the change (an aggregated ClusterRole when a role it selects
    /// changes). Unlike a second watch of the same kind through [`Controller::watches`], the
    /// related object's reconcile can never read the cache from before the change.
    #[must_use]
    pub fn related<I>(mut self, mapper: impl Fn(&K) -> I + Send + 'static) -> Self
    where
        I: IntoIterator<Item = ObjectRef<K>>,
    {
        self.related
            .push(Box::new(move |o| mapper(o).into_iter().collect()));
        self
    }

    /// Also reconciles the controller (owner with `controller: true`) of each object of a shared
    /// stream when it changes.
    #[must_use]
    pub fn owns_shared_stream<Child: Resource + Send + Sync + 'static>(
        self,
        children: impl Stream<Item = Arc<Child>> + Send + 'static,
    ) -> Self {
        self.trigger(children.filter_map(|child| async move { controller_of::<K, _>(&*child) }))
    }

    /// Also reconciles what `mapper` names for each object of a shared stream.
    #[must_use]
    pub fn watches_shared_stream<Other, I>(
        self,
        others: impl Stream<Item = Arc<Other>> + Send + 'static,
        mapper: impl Fn(Arc<Other>) -> I + Send + 'static,
    ) -> Self
    where
        I: IntoIterator<Item = ObjectRef<K>>,
        I::IntoIter: Send + 'static,
    {
        self.trigger(others.flat_map(move |o| futures::stream::iter(mapper(o))))
    }

    /// Also reconciles what `mapper` names for each object of `api` that `config` selects, when
    /// it changes or is deleted.
    #[must_use]
    pub fn watches<Other, I>(
        self,
        api: Api<Other>,
        config: watcher::Config,
        mapper: impl Fn(Other) -> I + Send + 'static,
    ) -> Self
    where
        Other: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
        I: IntoIterator<Item = ObjectRef<K>>,
        I::IntoIter: Send + 'static,
    {
        let others = watcher(api, config).default_backoff().touched_objects();
        self.trigger(
            ok_or_log::<Other, _>(others).flat_map(move |o| futures::stream::iter(mapper(o))),
        )
    }

    fn trigger(mut self, refs: impl Stream<Item = ObjectRef<K>> + Send + 'static) -> Self {
        self.triggers.push(refs.boxed());
        self
    }
}

/// The objects of a watch stream; a failed watch (retried with back-off) is logged.
fn ok_or_log<K, S>(stream: S) -> impl Stream<Item = K> + Send + use<K, S>
where
    K: Send,
    S: Stream<Item = Result<K, watcher::Error>> + Send,
{
    stream.filter_map(|item| async move {
        item.map_err(|error| {
            let kind = std::any::type_name::<K>();
            tracing::debug!(kind, %error, "watch failed; retrying");
        })
        .ok()
    })
}

/// The object of kind `K` that controls `child` (its owner reference with `controller: true`).
fn controller_of<K, Child>(child: &Child) -> Option<ObjectRef<K>>
where
    K: Resource<DynamicType = ()>,
    Child: Resource,
{
    let meta = child.meta();
    let owner = meta.owner_references.iter().flatten().find(|r| {
        r.controller == Some(true) && r.kind == K::kind(&()) && r.api_version == K::api_version(&())
    })?;
    let named = ObjectRef::new(&owner.name);
    Some(match &meta.namespace {
        Some(ns) => named.within(ns),
        None => named,
    })
}

/// Which keys run, which run again after, which wait for a requeue, which wait for the cache.
struct Queue<T> {
    running: HashSet<T>,
    again: HashSet<T>,
    waiting: HashMap<T, delay_queue::Key>,
    timers: DelayQueue<T>,
    /// Asked for before the cache was ready; `None` once it is.
    early: Option<HashSet<T>>,
}

impl<T: std::hash::Hash + Eq + Clone> Queue<T> {
    fn new() -> Self {
        Self {
            running: HashSet::new(),
            again: HashSet::new(),
            waiting: HashMap::new(),
            timers: DelayQueue::new(),
            early: Some(HashSet::new()),
        }
    }

    /// `key` is asked for: whether it starts now.
    fn ask(&mut self, key: T) -> bool {
        if let Some(early) = &mut self.early {
            early.insert(key);
            return false;
        }
        if self.running.contains(&key) {
            self.again.insert(key);
            return false;
        }
        if let Some(timer) = self.waiting.remove(&key) {
            self.timers.remove(&timer);
        }
        true
    }

    /// The cache is ready: what was asked for until now starts.
    fn ready(&mut self) -> HashSet<T> {
        self.early.take().unwrap_or_default()
    }

    /// The run of `key` ended asking for `next`: whether it starts again now.
    fn ended(&mut self, key: T, next: Action) -> bool {
        self.running.remove(&key);
        if self.again.remove(&key) {
            return true;
        }
        if let Some(after) = next.requeue_after {
            match self.waiting.get(&key) {
                Some(timer) => {
                    if self.timers.deadline(timer) > tokio::time::Instant::now() + after {
                        self.timers.reset(timer, after);
                    }
                }
                None => {
                    let timer = self.timers.insert(key.clone(), after);
                    self.waiting.insert(key, timer);
                }
            }
        }
        false
    }

    /// The next requeue that is due.
    async fn due(&mut self) -> Option<T> {
        let key = futures::future::poll_fn(|cx| self.timers.poll_expired(cx))
            .await?
            .into_inner();
        self.waiting.remove(&key);
        Some(key)
    }
}

/// Reconciles what `controller`'s triggers ask for with `reconcile` until `shutdown`; a failed
/// reconcile asks `error_policy` when to run again.
pub async fn run<K, C, E, Fut>(
    controller: Controller<K>,
    mut reconcile: impl FnMut(Arc<K>, Arc<C>) -> Fut,
    error_policy: impl Fn(Arc<K>, &E, Arc<C>) -> Action,
    ctx: Arc<C>,
    name: &'static str,
    shutdown: CancellationToken,
) where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    C: Send + Sync + 'static,
    E: Send + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    type Ended<K, E> = (ObjectRef<K>, Arc<K>, Option<Result<Action, E>>);
    let Controller {
        reader,
        mut triggers,
        own,
        related,
    } = controller;
    triggers.push(
        own.flat_map(move |o| {
            let mut refs = vec![ObjectRef::from_obj(&o)];
            for map in &related {
                refs.extend(map(&o));
            }
            futures::stream::iter(refs)
        })
        .boxed(),
    );
    let mut queue = Queue::new();
    let mut running: JoinSet<Ended<K, E>> = JoinSet::new();
    let mut start = |key: ObjectRef<K>,
                     queue: &mut Queue<ObjectRef<K>>,
                     running: &mut JoinSet<Ended<K, E>>| {
        let Some(obj) = reader.get(&key) else {
            return;
        };
        queue.running.insert(key.clone());
        let work = AssertUnwindSafe(reconcile(Arc::clone(&obj), Arc::clone(&ctx))).catch_unwind();
        running.spawn(async move { (key, obj, work.await.ok()) });
    };
    let cache = reader.clone();
    let ready = cache.wait_until_ready();
    tokio::pin!(ready);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = &mut ready, if queue.early.is_some() => {
                for key in queue.ready() {
                    start(key, &mut queue, &mut running);
                }
            }
            Some(ended) = running.join_next() => {
                // A reconcile task is aborted only when this loop has ended.
                let (key, obj, result) = ended.expect("reconcile tasks are not aborted");
                let next = match result {
                    Some(Ok(next)) => next,
                    Some(Err(error)) => error_policy(obj, &error, Arc::clone(&ctx)),
                    None => {
                        tracing::error!(controller = name, object = %key, "reconcile panicked");
                        Action::requeue(AFTER_PANIC)
                    }
                };
                if queue.ended(key.clone(), next) {
                    start(key, &mut queue, &mut running);
                }
            }
            Some(key) = triggers.next() => {
                if queue.ask(key.clone()) {
                    start(key, &mut queue, &mut running);
                }
            }
            Some(key) = queue.due() => {
                if queue.ask(key.clone()) {
                    start(key, &mut queue, &mut running);
                }
            }
        }
    }
    let finished = async { while running.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, finished)
        .await
        .is_err()
    {
        tracing::debug!(
            controller = name,
            "reconciles still running after the grace period; stopped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector::store::Writer;
    use std::sync::Mutex;
    use tokio::time::Instant;

    fn object(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn key(name: &str) -> ObjectRef<ConfigMap> {
        ObjectRef::from_obj(&object(name))
    }

    /// A cache holding `names`, ready.
    fn ready_cache(names: &[&str]) -> (Store<ConfigMap>, Writer<ConfigMap>) {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for name in names {
            writer.apply_watcher_event(&watcher::Event::InitApply(object(name)));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        (reader, writer)
    }

    /// Each reconcile: (name, when it started, when it ended).
    type Runs = Arc<Mutex<Vec<(String, Instant, Option<Instant>)>>>;

    struct Harness {
        asks: futures::channel::mpsc::UnboundedSender<ObjectRef<ConfigMap>>,
        runs: Runs,
        /// How many reconciles have started.
        started: tokio::sync::watch::Receiver<usize>,
        /// Reconciles of `held` wait for a permit.
        gate: Arc<tokio::sync::Semaphore>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    /// Runs a controller over `reader` whose reconcile of `held` waits for a permit of the
    /// harness's gate, and answers what `next` says for its run number (0, 1, ...).
    fn harness(
        reader: Store<ConfigMap>,
        held: &'static str,
        next: impl Fn(usize) -> Result<Action, std::io::Error> + Send + Sync + 'static,
    ) -> Harness {
        let (asks, triggers) = futures::channel::mpsc::unbounded();
        let runs: Runs = Arc::default();
        let (count, started) = tokio::sync::watch::channel(0);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let shutdown = CancellationToken::new();
        let controller = Controller::from_parts(reader, triggers);
        let (log, next, count, permits) = (
            Arc::clone(&runs),
            Arc::new(next),
            Arc::new(count),
            Arc::clone(&gate),
        );
        let reconcile = move |obj: Arc<ConfigMap>, _ctx: Arc<()>| {
            let (log, next, count, permits) = (
                Arc::clone(&log),
                Arc::clone(&next),
                Arc::clone(&count),
                Arc::clone(&permits),
            );
            async move {
                let name = obj.metadata.name.clone().unwrap();
                let n = {
                    let mut runs = log.lock().unwrap();
                    runs.push((name.clone(), Instant::now(), None));
                    runs.len() - 1
                };
                count.send_modify(|c| *c += 1);
                if name == held {
                    permits.acquire().await.unwrap().forget();
                }
                log.lock().unwrap()[n].2 = Some(Instant::now());
                next(n)
            }
        };
        let policy = |_: Arc<ConfigMap>, _: &std::io::Error, _: Arc<()>| {
            Action::requeue(Duration::from_secs(2))
        };
        let task = tokio::spawn(run(
            controller,
            reconcile,
            policy,
            Arc::new(()),
            "test",
            shutdown.clone(),
        ));
        Harness {
            asks,
            runs,
            started,
            gate,
            shutdown,
            task,
        }
    }

    /// Lets `d` of the paused clock pass: the runtime moves it on only when every task is idle,
    /// so whatever would run by then has run (nothing waits in real time).
    async fn after(d: Duration) {
        tokio::time::sleep(d).await;
    }

    impl Harness {
        fn ask(&self, name: &str) {
            self.asks.unbounded_send(key(name)).unwrap();
        }

        fn runs(&self) -> Vec<(String, Instant, Option<Instant>)> {
            self.runs.lock().unwrap().clone()
        }

        /// Waits until `n` reconciles have started.
        async fn started(&self, n: usize) {
            let mut started = self.started.clone();
            tokio::time::timeout(Duration::from_secs(600), started.wait_for(|c| *c >= n))
                .await
                .expect("the runs started")
                .expect("the harness runs");
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.gate.add_permits(100);
            self.task.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_due_now_should_start_without_waiting_for_a_timer_tick() {
        let (reader, _writer) = ready_cache(&["a"]);
        let h = harness(reader, "", |_| Ok(Action::await_change()));
        let asked = Instant::now();
        h.ask("a");
        h.started(1).await;
        let runs = h.runs();
        // kube-runtime's scheduler would start it on the next millisecond tick (the paused
        // clock moves on only while nothing can run).
        assert_eq!(runs[0].1, asked, "started at the instant it was asked for");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_asked_for_while_it_runs_should_run_once_more_after_it() {
        let (reader, _writer) = ready_cache(&["a", "b"]);
        let h = harness(reader, "a", |_| Ok(Action::await_change()));
        h.ask("a");
        h.started(1).await;
        for _ in 0..5 {
            h.ask("a");
        }
        h.ask("b");
        h.started(2).await;
        let beside = h.runs();
        assert!(
            beside[1].0 == "b" && beside[0].2.is_none(),
            "another key ran beside it: {beside:?}"
        );
        h.gate.add_permits(1);
        h.started(3).await;
        h.gate.add_permits(1);
        after(Duration::from_secs(10)).await;
        let runs = h.runs();
        let a: Vec<_> = runs.iter().filter(|r| r.0 == "a").collect();
        assert_eq!(
            a.len(),
            2,
            "five asks while it ran made one more run: {runs:?}"
        );
        assert!(
            a[1].1 >= a[0].2.unwrap(),
            "the second run started after the first ended: {runs:?}"
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_requeue_should_wait_and_a_request_should_run_it_at_once() {
        let (reader, _writer) = ready_cache(&["a"]);
        let h = harness(reader, "", |n| {
            Ok(if n == 0 {
                Action::requeue(Duration::from_secs(10))
            } else {
                Action::await_change()
            })
        });
        let t0 = Instant::now();
        h.ask("a");
        h.started(1).await;
        after(Duration::from_secs(1)).await;
        assert_eq!(h.runs().len(), 1, "the requeue waits");
        h.ask("a");
        h.started(2).await;
        after(Duration::from_secs(30)).await;
        let runs = h.runs();
        assert_eq!(runs.len(), 2, "the waiting requeue was dropped: {runs:?}");
        assert!(runs[1].1 - t0 < Duration::from_secs(2), "{runs:?}");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_reconcile_should_run_again_when_the_error_policy_says() {
        let (reader, _writer) = ready_cache(&["a"]);
        let h = harness(reader, "", |n| {
            if n == 0 {
                Err(std::io::Error::other("failed"))
            } else {
                Ok(Action::await_change())
            }
        });
        h.ask("a");
        h.started(2).await;
        let runs = h.runs();
        assert_eq!(runs[1].1 - runs[0].1, Duration::from_secs(2), "{runs:?}");
        after(Duration::from_secs(30)).await;
        assert_eq!(h.runs().len(), 2, "a success asks for nothing more");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_should_run_before_the_cache_is_ready_nor_what_it_does_not_hold() {
        let (reader, mut writer) = reflector::store();
        let h = harness(reader, "", |_| Ok(Action::await_change()));
        h.ask("a");
        h.ask("a");
        h.ask("gone");
        after(Duration::from_secs(5)).await;
        assert!(h.runs().is_empty(), "nothing runs on an empty cache");
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(object("a")));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        h.started(1).await;
        after(Duration::from_secs(5)).await;
        let runs = h.runs();
        assert_eq!(
            runs.len(),
            1,
            "a once, and not what the cache lacks: {runs:?}"
        );
        assert_eq!(runs[0].0, "a");
        h.stop().await;
    }

    #[test]
    fn a_child_should_trigger_only_its_controller_of_the_kind() {
        use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let owner = |kind: &str, name: &str, controller| OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller: Some(controller),
            ..Default::default()
        };
        let mut rs = ReplicaSet::default();
        rs.metadata.namespace = Some("ns".into());
        rs.metadata.owner_references = Some(vec![
            owner("Deployment", "other", false),
            owner("Deployment", "web", true),
        ]);
        let got = controller_of::<Deployment, _>(&rs).expect("a controller");
        assert_eq!(
            (got.name.as_str(), got.namespace.as_deref()),
            ("web", Some("ns"))
        );
        rs.metadata.owner_references = Some(vec![owner("StatefulSet", "web", true)]);
        assert!(controller_of::<Deployment, _>(&rs).is_none());
    }
}
