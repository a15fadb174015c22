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

use wasmkube_store::{ChangeKind, WatchError};

use crate::Apiserver;
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
                let value: Value = match parsed {
                    Some(v) => v.clone(),
                    None => serde_json::from_slice(raw).unwrap_or_default(),
                };
                let partial = crate::table::partial(&value);
                out.extend_from_slice(&serde_json::to_vec(&partial).expect("JSON serializes"));
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
        let timeout = Params::int("timeoutSeconds", &q.timeout_seconds)?
            .filter(|s| *s > 0)
            .map_or(Duration::from_secs(1800), |s| Duration::from_secs(s as u64));
        let bookmarks = q.bookmarks();
        let render = Render {
            target: t.clone(),
            repr,
        };
        let (tx, rx) = mpsc::channel::<Bytes>(256);

        let rv = q.resource_version.as_deref().filter(|s| !s.is_empty());
        let send_initial = q.send_initial_events() || matches!(rv, None | Some("0"));
        let mut initial = Vec::new();
        let from = if send_initial {
            let mut lq = Params {
                label_selector: q.label_selector.clone(),
                field_selector: q.field_selector.clone(),
                ..Default::default()
            };
            if q.send_initial_events() {
                lq.resource_version = q.resource_version.clone();
            }
            let page = self.page(t, &lq).await?;
            for (v, raw) in page.items {
                if exact_key.is_none() || name == crate::object::meta_str(&v, "name") {
                    initial.push(render.event("ADDED", &raw, Some(&v)));
                }
            }
            page.revision
        } else {
            let rv = rv.expect("checked above");
            let rv = rv
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            // A revision the store has not reached yet: wait briefly, as the watch cache does.
            self.wait_for_revision(rv).await?;
            rv
        };
        let mut watch = match self
            .store
            .watch(exact_key.as_deref().unwrap_or(&prefix), from)
            .await
        {
            Ok(w) => w,
            Err(wasmkube_store::Error::Compacted { compacted }) => {
                let err =
                    ApiError::expired(format!("too old resource version: {from} ({compacted})"));
                tx.try_send(error_event(&err))
                    .expect("fresh channel has room");
                return Ok(stream_response(rx));
            }
            Err(e) => return Err(e.into()),
        };
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
            let mut last_sent = from;
            loop {
                let change = tokio::select! {
                    _ = &mut deadline => return,
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = tick.tick(), if bookmarks => {
                        // Everything up to `published` is in our feed; drain it, then mark.
                        let published = store.published();
                        while let Some(next) = watch.try_next() {
                            match next {
                                Ok(c) => {
                                    last_sent = last_sent.max(c.revision);
                                    if let Some(ev) = convert(&render, &sel, exact_key.as_deref(), &c)
                                        && tx.send(ev).await.is_err() {
                                        return;
                                    }
                                }
                                Err(_) => {
                                    let _ = tx.send(error_event(&ApiError::expired("watch fell behind; relist"))).await;
                                    return;
                                }
                            }
                        }
                        last_sent = last_sent.max(published);
                        if tx.send(render.bookmark(last_sent, false)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    c = watch.next() => c,
                };
                match change {
                    Ok(c) => {
                        last_sent = last_sent.max(c.revision);
                        if let Some(ev) = convert(&render, &sel, exact_key.as_deref(), &c)
                            && tx.send(ev).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(why @ (WatchError::Lagged | WatchError::Reset)) => {
                        let _ = tx
                            .send(error_event(&ApiError::expired(format!(
                                "too old resource version: {last_sent} ({why})"
                            ))))
                            .await;
                        return;
                    }
                    Err(WatchError::Closed) => return,
                }
            }
        });
        Ok(stream_response(rx))
    }
}

/// The watch event (if any) a change produces for a watcher with these selectors.
fn convert(
    render: &Render,
    sel: &Selectors,
    exact_key: Option<&str>,
    c: &wasmkube_store::Change,
) -> Option<Bytes> {
    if exact_key.is_some_and(|k| k != c.key) {
        return None;
    }
    let kind = &render.target.kind;
    let converted;
    let c = if kind.info().stored_as.is_some() {
        // Another kind's storage: show the change in this kind's form.
        let view = |b: &[u8]| -> Option<bytes::Bytes> {
            let v: Value = serde_json::from_slice(b).ok()?;
            Some(bytes::Bytes::from(
                serde_json::to_vec(&kind.view_of_stored(v)).ok()?,
            ))
        };
        converted = wasmkube_store::Change {
            value: view(&c.value)?,
            prev: c.prev.as_deref().and_then(view),
            ..c.clone()
        };
        &converted
    } else {
        c
    };
    if sel.is_empty() {
        let kind = match c.kind {
            ChangeKind::Created => "ADDED",
            ChangeKind::Updated => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        };
        return Some(render.event(kind, &c.value, None));
    }
    let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).ok();
    let new = parse(&c.value)?;
    let old_match = c
        .prev
        .as_deref()
        .and_then(parse)
        .is_some_and(|p| sel.matches(&p));
    let new_match = sel.matches(&new);
    let kind = match (c.kind, old_match, new_match) {
        (ChangeKind::Created, _, true) => "ADDED",
        (ChangeKind::Updated, true, true) => "MODIFIED",
        (ChangeKind::Updated, false, true) => "ADDED",
        (ChangeKind::Updated, true, false) => {
            // Leaving the selector: the last state that matched, at this event's revision,
            // as kube-apiserver's watch cache reports it.
            let mut last = c.prev.as_deref().and_then(parse)?;
            crate::object::meta_mut(&mut last).insert(
                "resourceVersion".into(),
                serde_json::json!(c.revision.to_string()),
            );
            let raw = serde_json::to_vec(&last).expect("JSON serializes");
            return Some(render.event("DELETED", &raw, Some(&last)));
        }
        (ChangeKind::Deleted, true, _) => "DELETED",
        _ => return None,
    };
    Some(render.event(kind, &c.value, Some(&new)))
}
