//! The watch cache (kube-apiserver's `Cacher`): per stored resource, the current objects and
//! a window of recent changes in memory, fed by one store watch.
//!
//! ```text
//! store ── list + watch(prefix) ──► feeder ──► objects (by key) + events (ring, by revision)
//!                                         └──► progress ──► watchers, lists waiting for a revision
//! ```
//!
//! Lists at `resourceVersion` `0` or `NotOlderThan`, and unset ones after the quorum read (the
//! cache first catches up with what the store has applied), are served from memory; every watch
//! reads the ring after its own position. Selectors match against labels and fields extracted
//! once per object version, so no watcher parses objects. A watcher that falls out of the
//! window, or asks for a revision older than it, continues from the store's history, and gets
//! `410 Gone` only when that is compacted too.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use wasmkube_store::{Change, ChangeKind, ListOptions, Store, Watch, WatchError};

mod attrs;

/// How many recent changes each resource's cache keeps for watchers behind the newest (each
/// holds the object's version it replaced; a watcher further behind reads the store's
/// history).
pub(crate) const DEFAULT_WINDOW: usize = 2048;

/// What selectors look at, extracted once per object version.
#[derive(Debug, Default, Clone)]
pub(crate) struct Attrs {
    /// `metadata.labels`.
    pub(crate) labels: BTreeMap<String, String>,
    /// `metadata.name`, `metadata.namespace` and the kind's selectable fields.
    pub(crate) fields: Vec<(&'static str, String)>,
}

impl Attrs {
    /// Reads them from an object's JSON without parsing the rest.
    fn read(raw: &[u8], fields: &'static [&'static str]) -> Attrs {
        let paths: Vec<&'static str> = ["metadata.name", "metadata.namespace"]
            .into_iter()
            .chain(fields.iter().copied())
            .collect();
        match attrs::read(raw, &paths) {
            Some((labels, values)) => Attrs {
                labels,
                fields: paths.into_iter().zip(values).collect(),
            },
            None => Attrs::default(),
        }
    }

    /// The value of a selectable field (absent: not selectable for this kind).
    pub(crate) fn field(&self, path: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, v)| v.as_str())
    }
}

/// One version of an object, as stored.
#[derive(Debug)]
pub(crate) struct Object {
    /// Its store key.
    pub(crate) key: String,
    /// Its JSON, with `metadata.resourceVersion` set.
    json: Json,
    /// The kind's selectable fields.
    fields: &'static [&'static str],
    /// What selectors look at, read from the JSON when a selector first asks.
    attrs: OnceLock<Attrs>,
}

/// An object's JSON as the cache holds it.
#[derive(Debug)]
enum Json {
    /// As stored: versions within the change window, which watchers read.
    Plain(Bytes),
    /// LZ4 blocks of `len` bytes of JSON: the latest versions of objects that have not
    /// changed within the window, read only by lists and gets. A running pod's JSON takes half
    /// the memory this way (3.7 KB → 1.8 KB).
    Lz4 { block: Box<[u8]>, len: usize },
}

/// Objects smaller than this stay as they are (a compressed block saves little on them).
const COMPRESS_FROM: usize = 512;

impl Object {
    /// An object whose selectable parts are read when first needed.
    pub(crate) fn new(key: String, raw: Bytes, fields: &'static [&'static str]) -> Object {
        Object {
            key,
            json: Json::Plain(raw),
            fields,
            attrs: OnceLock::new(),
        }
    }

    /// Its JSON, decompressed when it is held compressed.
    pub(crate) fn json(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.json {
            Json::Plain(raw) => std::borrow::Cow::Borrowed(raw),
            Json::Lz4 { block, len } => std::borrow::Cow::Owned(
                lz4_flex::block::decompress(block, *len)
                    .expect("the cache decompresses the blocks it compressed"),
            ),
        }
    }

    /// Its JSON's length.
    #[cfg(test)]
    fn len(&self) -> usize {
        match &self.json {
            Json::Plain(raw) => raw.len(),
            Json::Lz4 { len, .. } => *len,
        }
    }

    /// Its JSON as shared bytes (a copy when it is held compressed).
    #[cfg(test)]
    fn bytes(&self) -> Bytes {
        match &self.json {
            Json::Plain(raw) => raw.clone(),
            Json::Lz4 { .. } => Bytes::from(self.json().into_owned()),
        }
    }

    /// The same version held compressed, unless it already is or is too small to gain.
    fn compressed(&self) -> Option<Object> {
        let Json::Plain(raw) = &self.json else {
            return None;
        };
        if raw.len() < COMPRESS_FROM {
            return None;
        }
        let attrs = OnceLock::new();
        if let Some(a) = self.attrs.get() {
            let _ = attrs.set(a.clone());
        }
        Some(Object {
            key: self.key.clone(),
            json: Json::Lz4 {
                block: lz4_flex::block::compress(raw).into_boxed_slice(),
                len: raw.len(),
            },
            fields: self.fields,
            attrs,
        })
    }

    /// What selectors look at.
    pub(crate) fn attrs(&self) -> &Attrs {
        self.attrs
            .get_or_init(|| Attrs::read(&self.json(), self.fields))
    }
}

/// One change, as watchers see it.
#[derive(Debug)]
pub(crate) struct Event {
    /// The revision that made it.
    pub(crate) revision: u64,
    /// What happened.
    pub(crate) kind: ChangeKind,
    /// The object after the change; for a delete, its last state stamped with the delete's
    /// revision.
    pub(crate) object: Arc<Object>,
    /// The object before the change (none for a create).
    pub(crate) prev: Option<Arc<Object>>,
}

/// How far a cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Progress {
    /// It has read its resource from the store at least once.
    pub(crate) loaded: bool,
    /// Every change up to here is applied (its own, and the store's progress elsewhere).
    pub(crate) revision: u64,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Arc<Object>>,
    events: VecDeque<Arc<Event>>,
    /// Every change after `start` (up to `revision`) is in `events`.
    start: u64,
    revision: u64,
}

/// What a watcher at some position reads next.
pub(crate) enum Next {
    /// The changes after the position, and the new position.
    Events(Vec<Arc<Event>>, u64),
    /// The position is older than the window: continue from the store.
    Behind,
}

/// The cache of one stored resource (one key prefix).
pub(crate) struct Cacher {
    prefix: String,
    fields: &'static [&'static str],
    store: Store,
    window: usize,
    state: RwLock<State>,
    progress: watch::Sender<Progress>,
    /// Asks the feeder to account for the store's progress outside this prefix.
    catch_up: Notify,
}

impl Cacher {
    /// The objects under `prefix` (one namespace's, or all), after the key `start_after`
    /// when given, and the revision they are current at.
    pub(crate) fn snapshot(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> (Vec<Arc<Object>>, u64) {
        let s = self.state.read().expect("cache lock");
        let from = match start_after {
            Some(k) if k >= prefix => Bound::Excluded(k),
            _ => Bound::Included(prefix),
        };
        let items = s
            .objects
            .range::<str, _>((from, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| Arc::clone(v))
            .collect();
        (items, s.revision)
    }

    /// The object stored at `key`, if the cache has it.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Object>> {
        self.state
            .read()
            .expect("cache lock")
            .objects
            .get(key)
            .cloned()
    }

    /// Whether every change after `position` is here.
    pub(crate) fn holds(&self, position: u64) -> bool {
        position >= self.state.read().expect("cache lock").start
    }

    /// The changes after `position`.
    pub(crate) fn read_after(&self, position: u64) -> Next {
        let s = self.state.read().expect("cache lock");
        if position < s.start {
            return Next::Behind;
        }
        let first = s.events.partition_point(|e| e.revision <= position);
        Next::Events(
            s.events.range(first..).cloned().collect(),
            s.revision.max(position),
        )
    }

    /// Progress notifications (a new value after every applied change).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Waits until the cache is loaded and has applied `revision`, for at most `timeout`;
    /// returns whether it got there.
    pub(crate) async fn wait_for(&self, revision: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let done = |p: &Progress| p.loaded && p.revision >= revision;
        let mut rx = self.progress.subscribe();
        if done(&rx.borrow_and_update()) {
            return true;
        }
        // The store has it first; the feeder then accounts for it.
        if !self.store.wait_for_revision(revision, timeout).await {
            return false;
        }
        self.catch_up.notify_one();
        tokio::time::timeout_at(deadline, rx.wait_for(done))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until the cache has everything the store has applied now.
    pub(crate) async fn wait_current(&self, timeout: Duration) -> bool {
        self.wait_for(self.store.published(), timeout).await
    }

    /// Keeps the cache current until `shutdown`: loads the resource, then applies its changes;
    /// loads again when its store watch ends early (it fell behind, or the store installed a
    /// snapshot). Watchers older than a reload continue from the store.
    async fn feed(self: Arc<Self>, shutdown: CancellationToken) {
        use backon::Retryable;
        // A load fails when the store stopped, or compacted between the list and the watch:
        // retried with jittered exponential back-off, 100 ms doubling to 5 s.
        let retries = backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        loop {
            let load = || async {
                let list = self
                    .store
                    .list(&self.prefix, ListOptions::default())
                    .await?;
                let watch = self.store.watch(&self.prefix, list.revision).await?;
                Ok::<_, wasmkube_store::Error>((list, watch))
            };
            let load = load.retry(retries).notify(|e, after| {
                tracing::warn!(prefix = %self.prefix, error = %e, ?after, "watch cache cannot load; retrying");
            });
            let (list, mut watch) = tokio::select! {
                () = shutdown.cancelled() => return,
                Ok(loaded) = load => loaded,
            };
            let objects = list
                .items
                .into_iter()
                .map(|kv| {
                    // Outside the window from the start: held compressed.
                    let o = Object::new(kv.key.clone(), kv.value, self.fields);
                    (kv.key, Arc::new(o.compressed().unwrap_or(o)))
                })
                .collect();
            *self.state.write().expect("cache lock") = State {
                objects,
                events: VecDeque::new(),
                start: list.revision,
                revision: list.revision,
            };
            self.progress.send_replace(Progress {
                loaded: true,
                revision: list.revision,
            });
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let step = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    c = watch.next() => c.map(|c| self.apply(&c)),
                    () = self.catch_up.notified() => self.catch_up(&mut watch),
                    _ = tick.tick() => self.catch_up(&mut watch),
                };
                match step {
                    Ok(()) => {}
                    Err(WatchError::Closed) => return,
                    // Behind the live feed: the rest comes from the store's history.
                    Err(WatchError::Lagged) => match self.resume().await {
                        Some(resumed) => watch = resumed,
                        None => break,
                    },
                    Err(e) => {
                        tracing::info!(prefix = %self.prefix, error = %e, "watch cache reloads");
                        break;
                    }
                }
            }
        }
    }

    /// Applies what the watch has, then the store's progress elsewhere: everything up to the
    /// store's published revision is in the watch's feed once drained.
    ///
    /// # Errors
    /// Why the watch ended.
    fn catch_up(&self, watch: &mut Watch) -> Result<(), WatchError> {
        let published = self.store.published();
        while let Some(c) = watch.try_next() {
            let c = c?;
            self.apply(&c);
        }
        let mut s = self.state.write().expect("cache lock");
        if published > s.revision {
            s.revision = published;
            drop(s);
            self.progress
                .send_modify(|p| p.revision = p.revision.max(published));
        }
        Ok(())
    }

    /// A watch of the store from the last change this cache holds (after it lagged behind
    /// the live feed), or `None` when the store cannot give one (compacted past it: reload).
    async fn resume(&self) -> Option<Watch> {
        let revision = self.state.read().expect("cache lock").revision;
        match self.store.watch(&self.prefix, revision).await {
            Ok(watch) => {
                tracing::debug!(prefix = %self.prefix, revision, "watch cache lagged; resumed from the history");
                Some(watch)
            }
            Err(e) => {
                tracing::info!(prefix = %self.prefix, error = %e, "watch cache lagged and cannot resume; reloads");
                None
            }
        }
    }

    fn apply(&self, c: &Change) {
        let object = Arc::new(Object::new(c.key.clone(), c.value.clone(), self.fields));
        let mut s = self.state.write().expect("cache lock");
        let prev = match c.kind {
            ChangeKind::Deleted => s.objects.remove(&c.key),
            _ => s.objects.insert(c.key.clone(), Arc::clone(&object)),
        };
        let prev = prev.or_else(|| {
            c.prev
                .clone()
                .map(|raw| Arc::new(Object::new(c.key.clone(), raw, self.fields)))
        });
        s.events.push_back(Arc::new(Event {
            revision: c.revision,
            kind: c.kind,
            object,
            prev,
        }));
        s.revision = s.revision.max(c.revision);
        while s.events.len() > self.window {
            if let Some(old) = s.events.pop_front() {
                s.start = old.revision;
                // A version leaving the window that is still its object's latest is read only
                // by lists and gets from now on: held compressed.
                if let Some(latest) = s.objects.get_mut(&old.object.key)
                    && Arc::ptr_eq(latest, &old.object)
                    && let Some(small) = old.object.compressed()
                {
                    *latest = Arc::new(small);
                }
            }
        }
        let revision = s.revision;
        drop(s);
        self.progress
            .send_modify(|p| p.revision = p.revision.max(revision));
    }
}

/// The caches of every resource, made on first use.
pub(crate) struct Caches {
    store: Store,
    window: usize,
    shutdown: CancellationToken,
    by_prefix: Mutex<HashMap<String, Arc<Cacher>>>,
}

impl Caches {
    pub(crate) fn new(store: Store, window: usize, shutdown: CancellationToken) -> Caches {
        Caches {
            store,
            window: window.max(1),
            shutdown,
            by_prefix: Mutex::default(),
        }
    }

    /// The cache of `kind`'s resource (keyed by its storage prefix, extracting the fields its
    /// field selectors name), started (loading in the background) when this is its first use.
    pub(crate) fn of_kind(&self, kind: &dyn crate::registry::Kind) -> Arc<Cacher> {
        self.of(&kind.info().prefix(), kind.field_selectors())
    }

    /// The cache of the resource stored under `prefix` whose kind selects on `fields`,
    /// started (loading in the background) when this is its first use. The first caller's
    /// `fields` are the cache's: callers go through [`Caches::of_kind`].
    fn of(&self, prefix: &str, fields: &'static [&'static str]) -> Arc<Cacher> {
        let mut all = self.by_prefix.lock().expect("caches lock");
        if let Some(c) = all.get(prefix) {
            return Arc::clone(c);
        }
        let cacher = Arc::new(Cacher {
            prefix: prefix.to_owned(),
            fields,
            store: self.store.clone(),
            window: self.window,
            state: RwLock::default(),
            progress: watch::Sender::new(Progress::default()),
            catch_up: Notify::new(),
        });
        tokio::spawn(Arc::clone(&cacher).feed(self.shutdown.clone()));
        all.insert(prefix.to_owned(), Arc::clone(&cacher));
        cacher
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmkube_store::{Command, Precondition};

    fn pod(name: &str, node: &str, round: u32) -> Box<serde_json::value::RawValue> {
        serde_json::value::to_raw_value(&serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"round": round.to_string()}},
            "spec": {"nodeName": node}
        }))
        .expect("JSON")
    }

    async fn put(store: &Store, key: String, value: Box<serde_json::value::RawValue>) {
        store
            .write(Command::Put {
                key,
                value,
                precondition: Precondition::None,
            })
            .await
            .expect("write");
    }

    /// (revision, kind, key, value) of each change.
    type Seen = Vec<(u64, String, String, Bytes)>;

    /// Versions that leave the window while still their object's latest, and everything a
    /// load reads, are held compressed; lists, selectors and watchers see the same JSON.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_outside_the_window_should_be_held_compressed_and_read_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(wasmkube_store::Config::new(dir.path()))
            .await
            .expect("store");
        let prefix = "/core/pods/";
        // Big enough to compress (a running pod's status is of this order).
        let pod = |name: &str, node: &str, round: u32| {
            serde_json::value::to_raw_value(&serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "labels": {"round": round.to_string()}},
                "spec": {"nodeName": node},
                "status": {"message": "a running pod's status, conditions and container states ".repeat(12)}
            }))
            .expect("JSON")
        };
        let key = |i: u32| format!("{prefix}default/p{i:02}");
        put(&store, key(0), pod("p00", "n0", 0)).await;
        let shutdown = CancellationToken::new();
        let window = 8;
        let caches = Caches::new(store.clone(), window, shutdown.clone());
        let cache = caches.of(prefix, &["spec.nodeName"]);
        assert!(cache.wait_current(Duration::from_secs(10)).await, "loads");
        let loaded = cache.get(&key(0)).expect("loaded");
        assert!(matches!(loaded.json, Json::Lz4 { .. }), "a load compresses");
        // 20 pods, then 5 of them again: 25 changes through a window of 8.
        for i in 0..20 {
            put(
                &store,
                key(i),
                pod(&format!("p{i:02}"), &format!("n{}", i % 2), 1),
            )
            .await;
        }
        for i in 0..5 {
            put(&store, key(i), pod(&format!("p{i:02}"), "n9", 2)).await;
        }
        assert!(
            cache.wait_current(Duration::from_secs(10)).await,
            "catches up"
        );
        let (objects, _) = cache.snapshot(prefix, None);
        let compressed: Vec<&str> = objects
            .iter()
            .filter(|o| matches!(o.json, Json::Lz4 { .. }))
            .map(|o| o.key.as_str())
            .collect();
        // The last 8 changes (p17..p19, then p00..p04 again) are in the window.
        let expect: Vec<String> = (5..17).map(key).collect();
        assert_eq!(compressed, expect);
        let listed = store
            .list(prefix, ListOptions::default())
            .await
            .expect("list");
        let cached: Vec<(String, Bytes)> =
            objects.iter().map(|o| (o.key.clone(), o.bytes())).collect();
        let stored: Vec<(String, Bytes)> = listed
            .items
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        assert_eq!(cached, stored);
        for o in &objects {
            assert!(o.len() > COMPRESS_FROM);
            let node = o.attrs().field("spec.nodeName").expect("a node");
            let i: u32 = o.key[o.key.len() - 2..].parse().expect("index");
            let want = if i < 5 {
                "n9".to_owned()
            } else {
                format!("n{}", i % 2)
            };
            assert_eq!(node, want, "{}", o.key);
        }
        shutdown.cancel();
    }

    /// The cache's stream of changes equals the store's watch, change for change, while four
    /// writers create, update and delete objects of the resource and of another one, and the
    /// history is compacted under them; its final state equals a list of the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cache_stream_should_equal_the_store_watch_under_concurrent_writes_and_compaction() {
        stream_equals_store(wasmkube_store::Config::new("unused").feed_capacity, true).await;
    }

    /// The same with a live feed of one change: the cache lags behind it all the time and
    /// continues from the store's history each time, never reloading (a reload would empty its
    /// window under the reader).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cache_behind_the_live_feed_should_continue_from_the_history() {
        stream_equals_store(1, false).await;
    }

    async fn stream_equals_store(feed_capacity: usize, compact: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(wasmkube_store::Config {
            feed_capacity,
            ..wasmkube_store::Config::new(dir.path())
        })
        .await
        .expect("store");
        let shutdown = CancellationToken::new();
        let caches = Caches::new(store.clone(), 1 << 20, shutdown.clone());
        let prefix = "/core/pods/";
        put(
            &store,
            format!("{prefix}default/before"),
            pod("before", "n0", 0),
        )
        .await;
        let cache = caches.of(prefix, &["spec.nodeName"]);
        assert!(cache.wait_for(0, Duration::from_secs(10)).await, "loads");
        let (objects, start) = cache.snapshot(prefix, None);
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].attrs().field("spec.nodeName"), Some("n0"));
        // With a short feed, the store's own watch is read once the writes are done (from the
        // history, which is then not compacted).
        let mut from_store = if compact {
            Some(store.watch(prefix, start).await.expect("store watch"))
        } else {
            None
        };

        let mut writers = tokio::task::JoinSet::new();
        for w in 0..4u32 {
            let store = store.clone();
            writers.spawn(async move {
                for i in 0..150u32 {
                    let name = format!("w{w}-{}", i % 40);
                    let key = format!("{prefix}default/{name}");
                    if i % 7 == 6 {
                        let _ = store
                            .write(Command::Delete {
                                key,
                                precondition: Precondition::Present,
                            })
                            .await;
                    } else {
                        put(&store, key, pod(&name, &format!("n{}", i % 3), i)).await;
                    }
                    put(
                        &store,
                        format!("/core/configmaps/default/c{w}"),
                        pod("c", "", i),
                    )
                    .await;
                }
            });
        }
        let compactor = {
            let store = store.clone();
            // Every 25 revisions, 20 times (the writers make about 1,200), history up to 10
            // revisions back is compacted.
            tokio::spawn(async move {
                let mut at = store.published();
                for _ in 0..if compact { 20 } else { 0 } {
                    at += 25;
                    if !store.wait_for_revision(at, Duration::from_secs(10)).await {
                        break;
                    }
                    store.compact(at - 10).await.expect("compact");
                }
            })
        };
        // The cache's reader, as a watcher: everything after its position, as it comes,
        // until the revision it is told is the last.
        let (end_tx, mut end_rx) = watch::channel(u64::MAX);
        let reader = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                let mut progress = cache.subscribe();
                let mut position = start;
                let mut seen: Seen = Vec::new();
                loop {
                    progress.borrow_and_update();
                    match cache.read_after(position) {
                        Next::Events(events, now) => {
                            for e in events {
                                let kind = format!("{:?}", e.kind);
                                seen.push((
                                    e.revision,
                                    kind,
                                    e.object.key.clone(),
                                    e.object.bytes(),
                                ));
                            }
                            position = now;
                        }
                        Next::Behind => panic!("a reader within the window fell behind"),
                    }
                    if position >= *end_rx.borrow_and_update() {
                        return seen;
                    }
                    tokio::select! {
                        _ = progress.changed() => {}
                        _ = end_rx.changed() => {}
                    }
                }
            })
        };
        while let Some(r) = writers.join_next().await {
            r.expect("writer");
        }
        compactor.await.expect("compactor");
        let last = store.published();
        assert!(
            cache.wait_for(last, Duration::from_secs(10)).await,
            "catches up"
        );
        end_tx.send(last).expect("reader listens");
        let read = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the reader reaches the last revision")
            .expect("reader");

        let mut from_store = match from_store.take() {
            Some(w) => w,
            None => store.watch(prefix, start).await.expect("store watch"),
        };
        let mut expected: Seen = Vec::new();
        while expected.last().is_none_or(|(r, ..)| *r < last) {
            let c = match tokio::time::timeout(Duration::from_millis(200), from_store.next()).await
            {
                Ok(c) => c.expect("store watch"),
                Err(_) => break,
            };
            expected.push((
                c.revision,
                format!("{:?}", c.kind),
                c.key.clone(),
                c.value.clone(),
            ));
        }
        let Next::Events(events, now) = cache.read_after(start) else {
            panic!("the window holds every change");
        };
        assert_eq!(now, last);
        let got: Seen = events
            .iter()
            .map(|e| {
                (
                    e.revision,
                    format!("{:?}", e.kind),
                    e.object.key.clone(),
                    e.object.bytes(),
                )
            })
            .collect();
        assert!(got.len() > 400, "{} changes", got.len());
        assert_eq!(got, expected);
        assert_eq!(read, expected);

        let listed = store
            .list(prefix, ListOptions::default())
            .await
            .expect("list");
        let (objects, at) = cache.snapshot(prefix, None);
        assert_eq!(at, last);
        let listed: Vec<(String, Bytes)> = listed
            .items
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        let cached: Vec<(String, Bytes)> =
            objects.iter().map(|o| (o.key.clone(), o.bytes())).collect();
        assert_eq!(cached, listed);
        shutdown.cancel();
    }
}
