//! The object verbs: get, create, update, patch, delete, and the `status`, `scale`,
//! `binding` and namespace `finalize` subresources. Lists and watches are in
//! [`crate::list`] and [`crate::watch`].
//!
//! The flow follows kube-apiserver's generic registry (`rest/create.go`, `rest/update.go`,
//! `rest/delete.go`): decode → metadata → mutating admission → strategy (default, validate)
//! → validating admission → reserve → store (compare-and-swap on `resourceVersion`).

mod create;
mod delete;
mod eviction;
mod subresources;
mod update;

pub(crate) use delete::DeleteOptions;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use wasmkube_store::{Command, Failure, Outcome, Precondition};

use crate::Apiserver;
use crate::admission::{Operation, Request as AdmissionRequest};
use crate::error::ApiError;
use crate::object;
use crate::patch::PatchType;
use crate::request::{Call, Params, Representation, Target, negotiate, parse_path};
use crate::table::{IncludeObject, table};

/// An object read from the store.
pub(crate) struct Stored {
    pub(crate) value: Value,
    pub(crate) rv: u64,
}

/// A JSON response with optional `Warning` headers.
pub(crate) fn respond(
    status: StatusCode,
    body: impl Into<axum::body::Body>,
    warnings: &[String],
) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            h.append(header::WARNING, v);
        }
    }
    resp
}

pub(crate) fn respond_json(status: StatusCode, body: &Value, warnings: &[String]) -> Response {
    respond(
        status,
        serde_json::to_vec(body).expect("JSON serializes"),
        warnings,
    )
}

/// A compare-and-swap write against the revision an object was read at.
pub(crate) enum Cas {
    /// Store this object.
    Put(Value),
    /// Remove the object.
    Delete,
}

impl Apiserver {
    /// Writes `name` only if it is still at revision `rv`. `Ok(None)` means it changed in
    /// between (the caller re-reads and retries, or answers 409); a vanished object is 404.
    pub(crate) async fn cas(
        &self,
        t: &Target,
        name: &str,
        rv: u64,
        op: Cas,
    ) -> Result<Option<Value>, ApiError> {
        let key = self.key(t, name);
        let precondition = Precondition::Revision(rv);
        let (command, written) = match op {
            Cas::Put(obj) => {
                let (value, kept) = self.for_storage(t, &key, obj);
                let command = Command::Put {
                    value,
                    key,
                    precondition,
                };
                (command, Some(kept))
            }
            Cas::Delete => (Command::Delete { key, precondition }, None),
        };
        match self.store.write(command).await? {
            Outcome::Written { value, revision } => match written {
                Some(kept) => Ok(Some(self.answer_written(t, kept, revision, &value)?)),
                None => {
                    // Whatever request removed it, the object itself is gone.
                    let req = AdmissionRequest {
                        subresource: None,
                        ..self.admission_request(t, Operation::Delete, name, None, false, None)
                    };
                    self.admission.released(&req);
                    Ok(Some(self.decode_stored(t, &value)?))
                }
            },
            Outcome::Failed {
                reason: Failure::NotFound,
                ..
            } => Err(ApiError::not_found(t.kind.info(), name)),
            Outcome::Failed { .. } => Ok(None),
            other => Err(ApiError::internal(format!(
                "unexpected store outcome {other:?}"
            ))),
        }
    }

    /// What a write of `obj` (in the kind's form) stores at `key`, and the object to answer
    /// with once it is written ([`Apiserver::answer_written`]): the object itself, except for
    /// kinds stored as another kind, which are read back from what was stored.
    pub(crate) fn for_storage(
        &self,
        t: &Target,
        key: &str,
        obj: Value,
    ) -> (Box<serde_json::value::RawValue>, Option<Value>) {
        if t.kind.info().stored_as.is_some() {
            (self.seal(t, key, &t.kind.to_storage(obj)), None)
        } else {
            (self.seal(t, key, &obj), Some(obj))
        }
    }

    /// The answer to a write the store took at `revision`: the object kept by
    /// [`Apiserver::for_storage`] with that `resourceVersion` — what the store keeps, as it
    /// only stamps the revision — without parsing the `stored` bytes again.
    pub(crate) fn answer_written(
        &self,
        t: &Target,
        kept: Option<Value>,
        revision: u64,
        stored: &[u8],
    ) -> Result<Value, ApiError> {
        let Some(mut obj) = kept else {
            return self.decode_stored(t, stored);
        };
        object::meta_mut(&mut obj).insert("resourceVersion".into(), json!(revision.to_string()));
        Ok(obj)
    }

    /// What is stored at `key` for `obj` of `t`'s kind: the object's JSON, sealed when the
    /// encryption configuration names the kind.
    pub(crate) fn seal(
        &self,
        t: &Target,
        key: &str,
        obj: &Value,
    ) -> Box<serde_json::value::RawValue> {
        let info = t.kind.info();
        let raw = serde_json::value::to_raw_value(obj).expect("JSON serializes");
        self.encryption.seal(info.plural, info.group, key, raw)
    }

    /// Parses a stored object into the target kind's form.
    pub(crate) fn decode_stored(&self, t: &Target, raw: &[u8]) -> Result<Value, ApiError> {
        let stored: Value = serde_json::from_slice(raw)
            .map_err(|e| ApiError::internal(format!("stored object is not JSON: {e}")))?;
        Ok(if t.kind.info().stored_as.is_some() {
            t.kind.view_of_stored(stored)
        } else {
            stored
        })
    }

    /// Routes one API request.
    pub(crate) async fn handle_api(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
        q: Params,
    ) -> Result<Response, ApiError> {
        let _ = query;
        let Some(t) = parse_path(&self.registry, path) else {
            return Err(ApiError::no_route(path));
        };
        let repr = negotiate(headers)?;
        let options = match method {
            Method::POST => Some("CreateOptions"),
            Method::PUT => Some("UpdateOptions"),
            Method::PATCH => Some("PatchOptions"),
            _ => None,
        };
        if let Some(kind) = options {
            q.validate_write(kind)?;
        }
        let call = Call::new(t, q, headers, body);
        let (t, q) = (&call.t, &call.q);
        let info = t.kind.info();
        let sub = t.subresource.as_deref();
        let named = t.name.is_some();
        // A subresource that owns a part of the object (`finalize`, `ephemeralcontainers`),
        // with the verbs it serves.
        let owning = sub
            .and_then(|s| t.kind.subresources().iter().find(|x| x.name == s))
            .filter(|x| x.owns.is_some())
            .map(|x| x.verbs);
        let owning_serves = |verb: &str| owning.is_some_and(|v| v.contains(&verb));
        match (&method, named, sub) {
            (&Method::GET, false, None) if q.is_watch() || t.watch_path => {
                self.watch(t, q, repr, None).await
            }
            (&Method::GET, true, None) if t.watch_path || q.is_watch() => {
                self.watch(t, q, repr, t.name.as_deref()).await
            }
            (&Method::GET, false, None) => self.list(t, q, repr).await,
            (&Method::GET, true, sub)
                if sub.is_none() || sub == Some("status") || owning_serves("get") =>
            {
                if q.resource_version.as_deref().is_none_or(str::is_empty) {
                    self.linearize().await?;
                }
                self.get(t, repr).await
            }
            (&Method::GET, true, Some("scale")) if info.scale => self.get_scale(t).await,
            (&Method::POST, false, None) if t.namespace.is_some() || !info.namespaced() => {
                self.create(&call).await
            }
            (&Method::POST, true, Some("eviction")) if t.kind.serves("eviction") => {
                self.evict(&call).await
            }
            (&Method::POST, true, Some("binding")) if t.kind.serves("binding") => {
                self.bind(&call).await
            }
            (&Method::POST, true, Some("token")) if t.kind.serves("token") => {
                self.token_request(&call).await
            }
            (&Method::PUT, true, None) => self.update(&call).await,
            (&Method::PUT, true, Some("status")) if info.status => self.update(&call).await,
            (&Method::PUT, true, Some(_)) if owning_serves("update") => self.update(&call).await,
            (&Method::PATCH, true, Some(_)) if owning_serves("patch") => self.patch(&call).await,
            (&Method::PUT, true, Some("scale")) if info.scale => {
                let scale = call.decode()?.object;
                self.set_scale(t, q, scale, None).await
            }
            (&Method::PATCH, true, Some("scale")) if info.scale => {
                let pt = call.patch_type()?;
                if pt == PatchType::Apply {
                    return Err(ApiError::unsupported_media_type(
                        "application/apply-patch+yaml (on scale)",
                    ));
                }
                self.set_scale(t, q, Value::Null, Some((pt, body))).await
            }
            (&Method::PATCH, true, None) => self.patch(&call).await,
            (&Method::PATCH, true, Some("status")) if info.status => self.patch(&call).await,
            (&Method::DELETE, true, None) => {
                let opts = DeleteOptions::parse(&call)?;
                Ok(self.delete(t, &opts).await?.into_response())
            }
            (&Method::DELETE, false, None) if t.namespace.is_some() || !info.namespaced() => {
                self.delete_collection(&call).await
            }
            (_, true, Some(other))
                if owning.is_none()
                    && !matches!(other, "status" | "scale" | "binding" | "eviction" | "token") =>
            {
                Err(ApiError::no_route(path))
            }
            _ => Err(ApiError::method_not_supported(info, method.as_str())),
        }
    }

    /// What the admission plugins see of a request on `t`.
    pub(crate) fn admission_request<'a>(
        &self,
        t: &'a Target,
        operation: Operation,
        name: &'a str,
        old: Option<&'a Value>,
        dry_run: bool,
        user: Option<&'a crate::auth::UserInfo>,
    ) -> AdmissionRequest<'a> {
        AdmissionRequest {
            operation,
            info: t.kind.info(),
            namespace: t.namespace.as_deref(),
            name,
            subresource: t.subresource.as_deref(),
            old,
            dry_run,
            user,
        }
    }

    pub(crate) fn key(&self, t: &Target, name: &str) -> String {
        t.kind.info().key(t.namespace.as_deref(), name)
    }

    /// Reads the named object.
    pub(crate) async fn load(&self, t: &Target, name: &str) -> Result<Stored, ApiError> {
        let kv = self
            .store
            .get(&self.key(t, name))
            .await?
            .ok_or_else(|| ApiError::not_found(t.kind.info(), name))?;
        Ok(Stored {
            value: self.decode_stored(t, &kv.value)?,
            rv: kv.revision,
        })
    }

    async fn get(&self, t: &Target, repr: Representation) -> Result<Response, ApiError> {
        let name = t.name.as_deref().expect("routed with a name");
        let cur = self.load(t, name).await?;
        let body = match repr {
            Representation::Object => cur.value,
            Representation::Metadata => crate::table::partial(&cur.value),
            Representation::Table => {
                let cells = t.kind.row(&cur.value);
                table(
                    &t.kind.columns(),
                    [(cur.value, cells)],
                    IncludeObject::Metadata,
                    json!({"resourceVersion": cur.rv.to_string()}),
                )
            }
        };
        Ok(respond_json(StatusCode::OK, &body, &[]))
    }
}
