//! WATCH: a stream of `{"type": ..., "object": ...}` lines — the initial state when no
//! resourceVersion is given, then every change from the store's feed, filtered by selectors
//! (objects moving out of a selector are reported `DELETED`, moving in `ADDED`), with
//! bookmarks, `timeoutSeconds`, and `410 Expired` as an `ERROR` event when the requested
//! revision was compacted.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use std::sync::Arc;

use tokio::sync::watch;
use wasmkube_store::{ChangeKind, Store, WatchError};

use crate::Apiserver;
use crate::cache::{Cacher, Event, Next, Object, Progress};
use crate::error::ApiError;
use crate::list::Selectors;
use crate::request::{Params, Representation, Target};
use crate::table::{IncludeObject, table};

/// How a watch renders objects.
#[derive(Clone)]
struct Render {
    target: Target,
    repr: Representation,
}

impl Render {
    fn event(&self, kind: &str, raw: &[u8], parsed: Option<&Value>) -> Bytes {
        let mut out = Vec::with_capacity(raw.len() + 32);
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"object\":");
        match self.repr {
            Representation::Object => out.extend_from_slice(raw),
            Representation::Metadata => {
                if crate::table::partial_json(raw, &mut out).is_none() {
                    out.extend_from_slice(b"null");
                }
            }
            Representation::Table => {
                let value: Value = match parsed {
                    Some(v) => v.clone(),
                    None => serde_json::from_slice(raw).unwrap_or_default(),
                };
                let rv = value
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or_default();
                let cells = self.target.kind.row(&value);
                let t = table(
                    &self.target.kind.columns(),
                    [(value, cells)],
                    IncludeObject::Metadata,
                    json!({"resourceVersion": rv}),
                );
                out.extend_from_slice(&serde_json::to_vec(&t).expect("JSON serializes"));
            }
        }
        out.extend_from_slice(b"}\n");
        Bytes::from(out)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let info = self.target.kind.info();
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let ev = json!({"type": "BOOKMARK", "object": {"kind": info.kind, "apiVersion": info.api_version(), "metadata": meta}});
        let mut b = serde_json::to_vec(&ev).expect("JSON serializes");
        b.push(b'\n');
        Bytes::from(b)
    }
}

fn error_event(err: &ApiError) -> Bytes {
    let status = err.status_body();
    let mut b = Vec::with_capacity(status.len() + 28);
    b.extend_from_slice(br#"{"type":"ERROR","object":"#);
    b.extend_from_slice(status.trim_ascii_end());
    b.extend_from_slice(b"}\n");
    Bytes::from(b)
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let body = Body::from_stream(futures::StreamExt::map(
        ReceiverStream::new(rx),
        Ok::<Bytes, std::convert::Infallible>,
    ));
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Where a watch's changes come from: the resource's watch cache, or the store's history
/// while the watcher is behind the cache's window (and always for a kind shown from another
/// kind's storage, which has no cache).
struct Feed {
    cache: Option<(Arc<Cacher>, watch::Receiver<Progress>)>,
    /// The store's feed, while the watcher reads from it.
    store: Option<wasmkube_store::Watch>,
    target: Target,
    /// The store key (or prefix) watched.
    key: String,
}

/// Why a feed ended.
enum Ended {
    /// The watcher must relist (410 Gone), for this reason.
    Expired(String),
    /// The server is stopping.
    Closed,
}

impl Feed {
    /// The changes after `position` (at least one, or progress), and the new position.
    ///
    /// # Cancel safety
    /// Cancel safe: changes are taken only when returned.
    async fn next(
        &mut self,
        store: &Store,
        position: u64,
    ) -> Result<(Vec<Arc<Event>>, u64), Ended> {
        loop {
            if let Some(watch) = &mut self.store {
                // Back to the cache as soon as it holds everything after the position.
                if self.cache.as_ref().is_some_and(|(c, _)| c.holds(position)) {
                    self.store = None;
                    continue;
                }
                // A watcher too slow for the live feed drops it and goes on from its position
                // (the cache, or the store's history, kept until compaction) rather than
                // ending with 410 Gone: a relist of every object costs far more than reading
                // what it missed, and under load one relist led to the next.
                let c = match watch.next().await {
                    Ok(c) => c,
                    Err(WatchError::Lagged) => {
                        self.store = None;
                        continue;
                    }
                    Err(e) => return Err(ended(e)),
                };
                let mut events = vec![store_event(&self.target, &c)];
                self.take_ready(&mut events)?;
                let now = events.last().map_or(position, |e| e.revision);
                return Ok((events, now));
            }
            let Some((cache, progress)) = &mut self.cache else {
                // No cache for this kind: the store's watch from the position.
                self.store = Some(watch_store(store, &self.key, position).await?);
                continue;
            };
            progress.borrow_and_update();
            match cache.read_after(position) {
                Next::Events(events, now) if !events.is_empty() || now > position => {
                    return Ok((events, now));
                }
                Next::Events(..) => {
                    if progress.changed().await.is_err() {
                        return Err(Ended::Closed);
                    }
                }
                Next::Behind => self.store = Some(watch_store(store, &self.key, position).await?),
            }
        }
    }

    /// Adds the changes the store's watch has ready to `events`. False when it lagged: the
    /// watch is dropped, and the next read goes on from the last change taken.
    fn take_ready(&mut self, events: &mut Vec<Arc<Event>>) -> Result<bool, Ended> {
        let Some(watch) = &mut self.store else {
            return Ok(true);
        };
        while let Some(c) = watch.try_next() {
            match c {
                Ok(c) => events.push(store_event(&self.target, &c)),
                Err(WatchError::Lagged) => {
                    self.store = None;
                    return Ok(false);
                }
                Err(e) => return Err(ended(e)),
            }
        }
        Ok(true)
    }

    /// Everything up to now: for a bookmark.
    async fn drain(
        &mut self,
        store: &Store,
        position: u64,
    ) -> Result<(Vec<Arc<Event>>, u64), Ended> {
        if self.store.is_some() {
            // Everything up to `published` is in the feed once drained.
            let published = store.published();
            let mut events = Vec::new();
            let now = match self.take_ready(&mut events)? {
                true => published.max(position),
                false => events.last().map_or(position, |e| e.revision),
            };
            return Ok((events, now));
        }
        let Some((cache, _)) = &self.cache else {
            return Ok((Vec::new(), position));
        };
        cache.wait_current(Duration::from_secs(1)).await;
        match cache.read_after(position) {
            Next::Events(events, now) => Ok((events, now)),
            Next::Behind => Ok((Vec::new(), position)),
        }
    }
}

/// The store's changes under `key` after `after`.
async fn watch_store(store: &Store, key: &str, after: u64) -> Result<wasmkube_store::Watch, Ended> {
    match store.watch(key, after).await {
        Ok(watch) => Ok(watch),
        Err(wasmkube_store::Error::Compacted { compacted }) => Err(Ended::Expired(format!(
            "too old resource version: {after} ({compacted})"
        ))),
        Err(e) => Err(Ended::Expired(e.to_string())),
    }
}

fn ended(e: WatchError) -> Ended {
    match e {
        WatchError::Closed => Ended::Closed,
        why @ (WatchError::Lagged | WatchError::Reset) => {
            Ended::Expired(format!("the watch must start again ({why})"))
        }
    }
}

/// A store change as a watch event, in the kind's form.
fn store_event(t: &Target, c: &wasmkube_store::Change) -> Arc<Event> {
    let kind = &t.kind;
    let fields = kind.field_selectors();
    let object = |raw: &bytes::Bytes| -> Arc<Object> {
        if kind.info().stored_as.is_some() {
            // Another kind's storage: shown in this kind's form.
            let v = kind.view_of_stored(serde_json::from_slice(raw).unwrap_or_default());
            let raw = Bytes::from(serde_json::to_vec(&v).expect("JSON serializes"));
            Arc::new(Object::new(c.key.clone(), raw, fields))
        } else {
            Arc::new(Object::new(c.key.clone(), raw.clone(), fields))
        }
    };
    Arc::new(Event {
        revision: c.revision,
        kind: c.kind,
        object: object(&c.value),
        prev: c.prev.as_ref().map(object),
    })
}

impl Apiserver {
    pub(crate) async fn watch(
        &self,
        t: &Target,
        q: &Params,
        repr: Representation,
        name: Option<&str>,
    ) -> Result<Response, ApiError> {
        let sel = Selectors::parse(t, q)?;
        let info = t.kind.info();
        let prefix = info.namespace_prefix(t.namespace.as_deref());
        let exact_key = name.map(|n| info.key(t.namespace.as_deref(), n));
        let key = exact_key.clone().unwrap_or_else(|| prefix.clone());
        let timeout = Params::int("timeoutSeconds", &q.timeout_seconds)?
            .filter(|s| *s > 0)
            .map_or(Duration::from_secs(1800), |s| Duration::from_secs(s as u64));
        let bookmarks = q.bookmarks();
        let render = Render {
            target: t.clone(),
            repr,
        };
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let cache = self.cache_for(t);
        // Subscribed before anything is read, so no change is missed in between.
        let progress = cache.as_ref().map(|c| c.subscribe());

        let rv = q.resource_version.as_deref().filter(|s| !s.is_empty());
        let send_initial = q.send_initial_events() || matches!(rv, None | Some("0"));
        let mut initial = Vec::new();
        let from = if send_initial {
            let mut lq = Params {
                label_selector: q.label_selector.clone(),
                field_selector: q.field_selector.clone(),
                ..Default::default()
            };
            if q.send_initial_events() || rv == Some("0") {
                lq.resource_version = q.resource_version.clone();
            }
            let page = self.page(t, &lq).await?;
            for item in page.items {
                if exact_key.as_ref().is_none_or(|k| *k == item.key()) {
                    initial.push(render.event("ADDED", &item.json(), None));
                }
            }
            page.revision
        } else {
            let rv = rv.expect("checked above");
            let rv = rv
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            // A revision the server has not reached yet: wait briefly, as the watch cache does.
            match &cache {
                Some(c) => self.wait_for_cache(c, rv).await?,
                None => self.wait_for_revision(rv).await?,
            }
            rv
        };
        let mut feed = Feed {
            store: None,
            cache: cache.zip(progress),
            target: t.clone(),
            key,
        };
        if feed.cache.is_none() {
            match watch_store(&self.store, &feed.key, from).await {
                Ok(w) => feed.store = Some(w),
                Err(Ended::Expired(why)) => {
                    tx.try_send(error_event(&ApiError::expired(why)))
                        .expect("fresh channel has room");
                    return Ok(stream_response(rx));
                }
                Err(Ended::Closed) => return Err(ApiError::unavailable("the server is stopping")),
            }
        }
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        let bookmark_every = self.bookmark_interval;
        let initial_end = q.send_initial_events() && bookmarks;
        tokio::spawn(async move {
            for ev in initial {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            if initial_end && tx.send(render.bookmark(from, true)).await.is_err() {
                return;
            }
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval(bookmark_every);
            tick.tick().await;
            let mut position = from;
            loop {
                let (next, bookmark) = tokio::select! {
                    _ = &mut deadline => return,
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = tick.tick(), if bookmarks => (feed.drain(&store, position).await, true),
                    n = feed.next(&store, position) => (n, false),
                };
                let (events, now) = match next {
                    Ok(n) => n,
                    Err(Ended::Expired(why)) => {
                        let _ = tx.send(error_event(&ApiError::expired(why))).await;
                        return;
                    }
                    Err(Ended::Closed) => return,
                };
                for e in &events {
                    if e.revision <= position {
                        continue;
                    }
                    if let Some(ev) = convert(&render, &sel, exact_key.as_deref(), e)
                        && tx.send(ev).await.is_err()
                    {
                        return;
                    }
                }
                position = position.max(now);
                if bookmark && tx.send(render.bookmark(position, false)).await.is_err() {
                    return;
                }
            }
        });
        Ok(stream_response(rx))
    }
}

/// The watch event (if any) a change produces for a watcher with these selectors.
fn convert(render: &Render, sel: &Selectors, exact_key: Option<&str>, e: &Event) -> Option<Bytes> {
    if exact_key.is_some_and(|k| k != e.object.key) {
        return None;
    }
    if sel.is_empty() {
        let kind = match e.kind {
            ChangeKind::Created => "ADDED",
            ChangeKind::Updated => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        };
        return Some(render.event(kind, &e.object.json(), None));
    }
    let old_match = e
        .prev
        .as_ref()
        .is_some_and(|p| sel.matches_attrs(p.attrs()));
    let new_match = sel.matches_attrs(e.object.attrs());
    let kind = match (e.kind, old_match, new_match) {
        (ChangeKind::Created, _, true) => "ADDED",
        (ChangeKind::Updated, true, true) => "MODIFIED",
        (ChangeKind::Updated, false, true) => "ADDED",
        (ChangeKind::Updated, true, false) => {
            // Leaving the selector: the last state that matched, at this event's revision,
            // as kube-apiserver's watch cache reports it.
            let prev = e.prev.as_ref()?;
            let mut last: Value = serde_json::from_slice(&prev.json()).ok()?;
            crate::object::meta_mut(&mut last).insert(
                "resourceVersion".into(),
                serde_json::json!(e.revision.to_string()),
            );
            let raw = serde_json::to_vec(&last).expect("JSON serializes");
            return Some(render.event("DELETED", &raw, Some(&last)));
        }
        (ChangeKind::Deleted, true, _) => "DELETED",
        _ => return None,
    };
    Some(render.event(kind, &e.object.json(), None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmkube_store::{Command, Precondition};

    /// A watcher on the store's feed that falls behind it (a feed of one change, 30 changes
    /// written before it reads) gets every change once, in order, from the history — not a
    /// 410 that makes its client relist.
    #[tokio::test]
    async fn a_watcher_slower_than_the_live_feed_should_read_what_it_missed_from_the_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(wasmkube_store::Config {
            feed_capacity: 1,
            ..wasmkube_store::Config::new(dir.path())
        })
        .await
        .expect("store");
        let kind = crate::kinds::builtin()
            .get("", "v1", "configmaps")
            .expect("configmaps");
        let key = kind.info().namespace_prefix(Some("default"));
        let start = store.published();
        let mut feed = Feed {
            cache: None,
            store: Some(watch_store(&store, &key, start).await.ok().expect("watch")),
            target: Target {
                kind,
                namespace: Some("default".into()),
                name: None,
                subresource: None,
                watch_path: false,
            },
            key: key.clone(),
        };
        let writes = (0..30).map(|i| {
            let value = serde_json::value::to_raw_value(
                &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}"), "namespace": "default"}}),
            )
            .expect("json");
            store.write(Command::Put {
                key: format!("{key}c{i}"),
                value,
                precondition: Precondition::None,
            })
        });
        for w in futures::future::join_all(writes).await {
            w.expect("write");
        }
        let mut position = start;
        let mut seen = Vec::new();
        while seen.len() < 30 {
            let next = tokio::time::timeout(Duration::from_secs(10), feed.next(&store, position))
                .await
                .expect("changes within 10 s");
            let Ok((events, now)) = next else {
                panic!("the watch ended after {} changes", seen.len());
            };
            for e in events {
                assert!(e.revision > position, "in order, once");
                position = e.revision;
                seen.push(e.revision);
            }
            position = position.max(now);
        }
        assert_eq!(seen.len(), 30);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        store.shutdown().await.expect("shutdown");
    }
}
