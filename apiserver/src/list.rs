//! LIST: selectors, `limit`/`continue` paging at a consistent revision, `resourceVersion`
//! semantics (`""` latest, `"0"` any, `N` not older than N, `Exact`), and Table output.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};

use wasmkube_api::field::FieldSelector;
use wasmkube_api::selector::LabelSelector;
use wasmkube_store::ListOptions;

use crate::Apiserver;
use crate::cache::{Attrs, Cacher, Object};
use crate::error::ApiError;
use crate::object;
use crate::request::{Params, Representation, Target};
use crate::rest::respond;
use crate::table::{Column, IncludeObject, table_row};

/// Parsed `labelSelector` and `fieldSelector`.
pub(crate) struct Selectors {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

impl Selectors {
    pub(crate) fn parse(t: &Target, q: &Params) -> Result<Selectors, ApiError> {
        fn parse<S: std::str::FromStr<Err: std::fmt::Display>>(
            text: Option<&str>,
        ) -> Result<S, ApiError> {
            text.unwrap_or_default()
                .parse()
                .map_err(|e: S::Err| ApiError::bad_request(e.to_string()))
        }
        let labels: LabelSelector = parse(q.label_selector.as_deref())?;
        let fields: FieldSelector = parse(q.field_selector.as_deref())?;
        fields
            .check(t.kind.field_selectors())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Selectors { labels, fields })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        (self.labels.is_empty() || self.labels.matches(&object::labels(obj)))
            && (self.fields.is_empty() || self.fields.matches(obj))
    }

    /// [`Selectors::matches`] on the parts a cache extracted.
    pub(crate) fn matches_attrs(&self, attrs: &Attrs) -> bool {
        (self.labels.is_empty() || self.labels.matches(&attrs.labels))
            && (self.fields.is_empty() || self.fields.matches_fields(|p| attrs.field(p)))
    }
}

/// A continue token: the revision of the first page and the last key returned.
#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    v: String,
    rv: u64,
    start: String,
}

fn encode_continue(rv: u64, start: &str) -> String {
    let c = Continue {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: start.into(),
    };
    base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(&c).expect("token serializes"))
}

fn decode_continue(token: &str) -> Result<Continue, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()
        .and_then(|b| serde_json::from_slice::<Continue>(&b).ok())
        .filter(|c| c.v == "meta.k8s.io/v1")
        .ok_or_else(|| ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))
}

/// One listed object: its JSON as served, parsed when the caller needs the value.
pub(crate) struct Listed {
    /// Its key and JSON (decompressed only as it is written out).
    object: Arc<Object>,
    value: Option<Value>,
}

impl Listed {
    /// Its store key.
    pub(crate) fn key(&self) -> &str {
        &self.object.key
    }

    /// Its JSON.
    pub(crate) fn json(&self) -> std::borrow::Cow<'_, [u8]> {
        self.object.json()
    }

    pub(crate) fn into_value(self) -> Value {
        match self.value {
            Some(v) => v,
            None => self.parse(),
        }
    }

    fn parse(&self) -> Value {
        serde_json::from_slice(&self.json()).unwrap_or_default()
    }
}

/// One page of selected objects.
pub(crate) struct Page {
    pub(crate) items: Vec<Listed>,
    pub(crate) revision: u64,
    pub(crate) continue_: Option<String>,
    pub(crate) remaining: Option<usize>,
}

/// Which state a read asks for (`resourceVersion`, `resourceVersionMatch`, `continue`).
enum ReadAt {
    /// The most recent state (a quorum read).
    Latest,
    /// Any state (`resourceVersion=0`).
    Any,
    /// A state at least this recent.
    NotOlderThan(u64),
    /// Exactly this revision.
    Exact(u64),
    /// The next page of an earlier list.
    Continue(Continue),
}

impl ReadAt {
    fn of(q: &Params) -> Result<ReadAt, ApiError> {
        if let Some(token) = q.continue_.as_deref().filter(|c| !c.is_empty()) {
            if q.resource_version
                .as_deref()
                .is_some_and(|rv| !rv.is_empty())
            {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            return Ok(ReadAt::Continue(decode_continue(token)?));
        }
        match (
            q.resource_version.as_deref(),
            q.resource_version_match.as_deref(),
        ) {
            (None | Some(""), None | Some("")) => Ok(ReadAt::Latest),
            (None | Some(""), Some(m)) => Err(ApiError::bad_request(format!(
                "resourceVersionMatch \"{m}\" is forbidden unless resourceVersion is provided"
            ))),
            (Some("0"), None | Some("NotOlderThan")) => Ok(ReadAt::Any),
            (Some("0"), Some("Exact")) => Err(ApiError::bad_request(
                "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
            )),
            (Some(rv), m) => {
                let rv: u64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?;
                match m {
                    Some("Exact") => Ok(ReadAt::Exact(rv)),
                    None | Some("NotOlderThan") => Ok(ReadAt::NotOlderThan(rv)),
                    Some(other) => Err(ApiError::bad_request(format!(
                        "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                    ))),
                }
            }
        }
    }
}

/// How long a read waits for a revision this server has not applied yet.
const REVISION_WAIT: Duration = Duration::from_secs(3);

impl Apiserver {
    /// The watch cache of the kind's resource; none for a kind shown from another kind's
    /// storage (its selectors look at the converted form).
    pub(crate) fn cache_for(&self, t: &Target) -> Option<std::sync::Arc<Cacher>> {
        let info = t.kind.info();
        if info.stored_as.is_some() {
            return None;
        }
        Some(self.caches.of_kind(&*t.kind))
    }

    /// Waits until the cache has `rv` (as a `NotOlderThan` read requires).
    pub(crate) async fn wait_for_cache(&self, cache: &Cacher, rv: u64) -> Result<(), ApiError> {
        if cache.wait_for(rv, REVISION_WAIT).await {
            Ok(())
        } else {
            Err(ApiError::too_large_resource_version(
                rv,
                self.store.published(),
            ))
        }
    }

    /// Reads one page of a list, as the parameters ask: from the watch cache unless it asks
    /// for an exact revision or continues an earlier list.
    pub(crate) async fn page(&self, t: &Target, q: &Params) -> Result<Page, ApiError> {
        let sel = Selectors::parse(t, q)?;
        let limit = Params::int("limit", &q.limit)?
            .filter(|l| *l > 0)
            .map(|l| l as usize);
        let at = ReadAt::of(q)?;
        if let Some(cache) = self.cache_for(t) {
            match at {
                ReadAt::Latest => {
                    self.linearize().await?;
                    if !cache.wait_current(REVISION_WAIT).await {
                        return Err(ApiError::timeout(
                            "the watch cache did not catch up with the store in time",
                        ));
                    }
                }
                ReadAt::Any => self.wait_for_cache(&cache, 0).await?,
                ReadAt::NotOlderThan(rv) => self.wait_for_cache(&cache, rv).await?,
                ReadAt::Exact(_) | ReadAt::Continue(_) => {
                    return self.page_from_store(t, &sel, limit, at).await;
                }
            }
            return Ok(self.page_from_cache(t, &cache, &sel, limit));
        }
        if let ReadAt::Latest = at {
            self.linearize().await?;
        }
        if let ReadAt::NotOlderThan(rv) = at {
            self.wait_for_revision(rv).await?;
        }
        self.page_from_store(t, &sel, limit, at).await
    }

    fn page_from_cache(
        &self,
        t: &Target,
        cache: &Cacher,
        sel: &Selectors,
        limit: Option<usize>,
    ) -> Page {
        let prefix = t.kind.info().namespace_prefix(t.namespace.as_deref());
        let (objects, revision) = cache.snapshot(&prefix, None);
        let mut items = Vec::new();
        let mut rest = objects.iter();
        for o in rest.by_ref() {
            if !sel.is_empty() && !sel.matches_attrs(o.attrs()) {
                continue;
            }
            items.push(Listed {
                object: Arc::clone(o),
                value: None,
            });
            if limit.is_some_and(|l| items.len() >= l) {
                break;
            }
        }
        let more = if sel.is_empty() {
            rest.len()
        } else {
            rest.filter(|o| sel.matches_attrs(o.attrs())).count()
        };
        let continue_ = (more > 0).then(|| {
            let last = items.last().map(Listed::key).unwrap_or_default();
            encode_continue(revision, last.strip_prefix(&prefix).unwrap_or_default())
        });
        Page {
            items,
            revision,
            continue_,
            remaining: (more > 0 && sel.is_empty()).then_some(more),
        }
    }

    async fn page_from_store(
        &self,
        t: &Target,
        sel: &Selectors,
        limit: Option<usize>,
        read: ReadAt,
    ) -> Result<Page, ApiError> {
        let prefix = t.kind.info().namespace_prefix(t.namespace.as_deref());
        let continuing = matches!(read, ReadAt::Continue(_));
        let (at, mut start) = match read {
            ReadAt::Continue(c) => {
                self.wait_for_revision(c.rv).await?;
                (Some(c.rv), Some(format!("{prefix}{}", c.start)))
            }
            ReadAt::Exact(rv) => {
                self.wait_for_revision(rv).await?;
                (Some(rv), None)
            }
            ReadAt::Latest | ReadAt::Any | ReadAt::NotOlderThan(_) => (None, None),
        };
        let mut items = Vec::new();
        let mut revision = None;
        let mut last_key = None;
        let mut remaining = None;
        loop {
            let want = limit.map(|l| l - items.len());
            let page = self
                .store
                .list(&prefix, ListOptions { start_after: start.clone(), limit: want, revision: at.or(revision) })
                .await
                .map_err(|e| match e {
                    wasmkube_store::Error::Compacted { .. } if continuing => ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                    ),
                    wasmkube_store::Error::Compacted { compacted } => {
                        ApiError::expired(format!("too old resource version: {} ({compacted})", at.unwrap_or(0)))
                    }
                    other => other.into(),
                })?;
            revision.get_or_insert(page.revision);
            let aliased = t.kind.info().stored_as.is_some();
            for kv in &page.items {
                last_key = Some(kv.key.clone());
                let value = self.decode_stored(t, &kv.value)?;
                if sel.matches(&value) {
                    let raw = if aliased {
                        bytes::Bytes::from(serde_json::to_vec(&value).expect("JSON serializes"))
                    } else {
                        kv.value.clone()
                    };
                    items.push(Listed {
                        object: Arc::new(Object::new(kv.key.clone(), raw, &[])),
                        value: Some(value),
                    });
                }
            }
            start = last_key.clone();
            if !page.more {
                break;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                if sel.is_empty() {
                    remaining = Some(page.remaining);
                }
                let rel = last_key
                    .as_deref()
                    .unwrap_or_default()
                    .strip_prefix(&prefix)
                    .unwrap_or_default()
                    .to_string();
                return Ok(Page {
                    items,
                    revision: revision.expect("set by the first page"),
                    continue_: Some(encode_continue(revision.expect("set"), &rel)),
                    remaining,
                });
            }
        }
        Ok(Page {
            items,
            revision: revision.unwrap_or(0),
            continue_: None,
            remaining,
        })
    }

    /// Waits briefly for the store to reach `rv`, as a `NotOlderThan` read requires.
    /// Waits until this server has applied every write acknowledged anywhere before now, for a
    /// read of the most recent state (`resourceVersion` unset: kube-apiserver's quorum read).
    /// Free for a server alone.
    pub(crate) async fn linearize(&self) -> Result<(), ApiError> {
        if !self.store.alone() {
            self.store.linearize().await?;
        }
        Ok(())
    }

    pub(crate) async fn wait_for_revision(&self, rv: u64) -> Result<(), ApiError> {
        if self
            .store
            .wait_for_revision(rv, Duration::from_secs(3))
            .await
        {
            Ok(())
        } else {
            Err(ApiError::too_large_resource_version(
                rv,
                self.store.published(),
            ))
        }
    }

    /// All objects matching the request's selectors, and the revision they were read at.
    pub(crate) async fn select(
        &self,
        t: &Target,
        q: &Params,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        let mut q2 = Params {
            label_selector: q.label_selector.clone(),
            field_selector: q.field_selector.clone(),
            ..Default::default()
        };
        q2.resource_version = None;
        let page = self.page(t, &q2).await?;
        Ok((
            page.items.into_iter().map(Listed::into_value).collect(),
            page.revision,
        ))
    }

    pub(crate) async fn list(
        &self,
        t: &Target,
        q: &Params,
        repr: Representation,
    ) -> Result<Response, ApiError> {
        let info = t.kind.info();
        let page = self.page(t, q).await?;
        let mut meta = json!({"resourceVersion": page.revision.to_string()});
        if let Some(c) = &page.continue_ {
            meta["continue"] = json!(c);
        }
        if let Some(r) = page.remaining {
            meta["remainingItemCount"] = json!(r);
        }
        match repr {
            Representation::Table => {
                let include = match q.include_object.as_deref() {
                    Some("None") => IncludeObject::None,
                    Some("Object") => IncludeObject::Object,
                    _ => IncludeObject::Metadata,
                };
                // Members in the order a whole `Table` value prints them, rows last so they
                // can follow one by one.
                let columns: Vec<Value> = t.kind.columns().iter().map(Column::to_json).collect();
                let head = format!(
                    "{{\"apiVersion\":\"meta.k8s.io/v1\",\"columnDefinitions\":{},\"kind\":\"Table\",\"metadata\":{},\"rows\":[",
                    Value::Array(columns),
                    meta
                );
                let kind = Arc::clone(&t.kind);
                let row = move |item: Listed, out: &mut Vec<u8>| {
                    let obj = item.into_value();
                    let cells = kind.row(&obj);
                    serde_json::to_writer(out, &table_row(obj, cells, include))
                        .expect("JSON serializes");
                };
                Ok(streamed(head.into_bytes(), page.items, b"]}".to_vec(), row))
            }
            Representation::Metadata => {
                let head = br#"{"apiVersion":"meta.k8s.io/v1","items":["#.to_vec();
                let tail = list_tail("PartialObjectMetadataList", &meta);
                let row = |item: Listed, out: &mut Vec<u8>| {
                    if crate::table::partial_json(&item.json(), out).is_none() {
                        out.extend_from_slice(b"null");
                    }
                };
                Ok(streamed(head, page.items, tail, row))
            }
            Representation::Object => {
                let head = format!("{{\"apiVersion\":\"{}\",\"items\":[", info.api_version());
                let tail = list_tail(&format!("{}List", info.kind), &meta);
                let spliced = |item: Listed, out: &mut Vec<u8>| out.extend_from_slice(&item.json());
                Ok(streamed(head.into_bytes(), page.items, tail, spliced))
            }
        }
    }
}

/// The end of a list after its items: `],"kind":KIND,"metadata":META}`.
fn list_tail(kind: &str, meta: &Value) -> Vec<u8> {
    format!("],\"kind\":\"{kind}\",\"metadata\":{meta}}}").into_bytes()
}

/// A 200 answer streaming [`list_body`].
fn streamed(
    head: Vec<u8>,
    items: Vec<Listed>,
    tail: Vec<u8>,
    write: impl Fn(Listed, &mut Vec<u8>) + Send + 'static,
) -> Response {
    respond(
        StatusCode::OK,
        axum::body::Body::from_stream(list_body(head, items, tail, write)),
        &[],
    )
}

/// Bytes of a streamed list body per chunk (items are whole within a chunk; one bigger item is
/// a chunk of its own).
const LIST_CHUNK: usize = 64 * 1024;

/// A list's JSON as a stream of chunks: `head`, the items each written by `write` (an object
/// list splices them in as stored, decompressed one at a time; a Table writes one row each),
/// comma-separated, `tail`. The server holds about one chunk per list in flight rather than
/// the whole response (a list of 10,000 running pods is 37 MB; their parsed values for a
/// Table several times that).
fn list_body(
    head: Vec<u8>,
    items: Vec<Listed>,
    tail: Vec<u8>,
    write: impl Fn(Listed, &mut Vec<u8>) + Send + 'static,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> + Send + 'static {
    let items = items.into_iter().enumerate();
    futures::stream::unfold(
        (Some(head), items, Some(tail), write),
        |(mut head, mut items, mut tail, write)| async move {
            let mut chunk = head.take().unwrap_or_default();
            while chunk.len() < LIST_CHUNK {
                let Some((i, item)) = items.next() else {
                    // After the last item: the tail, then the end.
                    chunk.extend_from_slice(&tail.take()?);
                    break;
                };
                if i > 0 {
                    chunk.push(b',');
                }
                write(item, &mut chunk);
            }
            Some((Ok(bytes::Bytes::from(chunk)), (head, items, tail, write)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// The chunks make the whole list, each item whole and within one chunk, at most one
    /// item past the chunk size.
    #[tokio::test]
    async fn a_streamed_list_should_be_the_whole_list_in_bounded_chunks() {
        for n in [0usize, 1, 5, 200] {
            let items: Vec<Listed> = (0..n)
                .map(|i| {
                    let raw = serde_json::to_vec(&json!({"metadata": {"name": format!("o{i}")},
                        "data": {"k": "v".repeat(1 + i * 37 % 3000)}}))
                    .expect("JSON");
                    Listed {
                        object: Arc::new(Object::new(format!("/k/o{i}"), raw.into(), &[])),
                        value: None,
                    }
                })
                .collect();
            let want: Vec<Value> = items
                .iter()
                .map(|i| serde_json::from_slice(&i.json()).unwrap())
                .collect();
            let splice = |item: Listed, out: &mut Vec<u8>| out.extend_from_slice(&item.json());
            let chunks: Vec<bytes::Bytes> =
                list_body(b"{\"items\":[".to_vec(), items, b"]}".to_vec(), splice)
                    .map(|c| c.expect("infallible"))
                    .collect()
                    .await;
            assert!(chunks.iter().all(|c| !c.is_empty()));
            assert!(
                chunks.iter().all(|c| c.len() < LIST_CHUNK + 4_000),
                "bounded"
            );
            if n == 200 {
                assert!(chunks.len() > 1, "{} chunks", chunks.len());
            }
            let whole: Vec<u8> = chunks.concat();
            let got: Value = serde_json::from_slice(&whole).expect("one JSON document");
            assert_eq!(got, json!({"items": want}), "{n} items");
        }
    }
}
