//! The object verbs: get, create, update, patch, delete, and the `status`, `scale`,
//! `binding` and namespace `finalize` subresources. Lists and watches are in
//! [`crate::list`] and [`crate::watch`].
//!
//! The flow follows kube-apiserver's generic registry (`rest/create.go`, `rest/update.go`,
//! `rest/delete.go`): decode → metadata → strategy (default, validate) → store
//! (compare-and-swap on `resourceVersion`).

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use wasmkube_store::{Command, Failure, Outcome, Precondition};

use crate::Apiserver;
use crate::admission::{Operation, Request as AdmissionRequest};
use crate::error::ApiError;
use crate::object::{self, meta_mut, meta_str};
use crate::patch::{self, PatchType};
use crate::request::{
    FieldValidation, Params, Representation, Target, content_type, decode_body, negotiate,
    parse_path,
};
use crate::table::{IncludeObject, table};

/// An object read from the store.
pub(crate) struct Stored {
    pub(crate) value: Value,
    pub(crate) rv: u64,
}

/// A JSON response with optional `Warning` headers.
pub(crate) fn respond(status: StatusCode, body: Vec<u8>, warnings: &[String]) -> Response {
    let mut resp = (status, body).into_response();
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

/// What a delete answers: the object (still there with a `deletionTimestamp`, or as it was for
/// kinds that return the deleted object), or a success `Status`.
pub(crate) enum Deleted {
    /// The object.
    Object(Value),
    /// A success `Status` about it.
    Status(crate::error::Details),
}

impl Deleted {
    fn into_response(self) -> Response {
        match self {
            Deleted::Object(v) => respond_json(StatusCode::OK, &v, &[]),
            Deleted::Status(d) => respond(StatusCode::OK, crate::error::success(&d), &[]),
        }
    }
}

/// The delete options of a request: body (`DeleteOptions`) and query combined.
#[derive(Debug, Default)]
pub(crate) struct DeleteOptions {
    pub(crate) grace: Option<i64>,
    pub(crate) uid: Option<String>,
    pub(crate) rv: Option<String>,
    pub(crate) policy: Option<String>,
    pub(crate) dry_run: bool,
}

impl DeleteOptions {
    pub(crate) fn parse(q: &Params, body: &[u8]) -> Result<DeleteOptions, ApiError> {
        let mut o = DeleteOptions {
            grace: Params::int("gracePeriodSeconds", &q.grace_period_seconds)?,
            dry_run: q.dry_run()?,
            policy: q.propagation_policy.clone(),
            ..Default::default()
        };
        if let Some(orphan) = q.orphan_dependents.as_deref() {
            o.policy.get_or_insert_with(|| {
                if orphan == "true" {
                    "Orphan"
                } else {
                    "Background"
                }
                .into()
            });
        }
        if !body.iter().all(u8::is_ascii_whitespace) {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?;
            if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
                o.grace = Some(g);
            }
            if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
                o.policy = Some(p.to_string());
            }
            if let Some(orphan) = v.get("orphanDependents").and_then(Value::as_bool) {
                o.policy
                    .get_or_insert_with(|| if orphan { "Orphan" } else { "Background" }.into());
            }
            if let Some(pre) = v.get("preconditions") {
                o.uid = pre.get("uid").and_then(Value::as_str).map(str::to_string);
                o.rv = pre
                    .get("resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            if let Some(d) = v.get("dryRun").and_then(Value::as_array) {
                o.dry_run |= d.iter().any(|x| x == "All");
            }
        }
        if let Some(p) = o.policy.as_deref()
            && !matches!(p, "Orphan" | "Background" | "Foreground")
        {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
        Ok(o)
    }
}

/// Finalizers that block deletion: `metadata.finalizers`, and those the kind keeps elsewhere.
fn pending_finalizers(t: &Target, obj: &Value) -> usize {
    object::finalizers(obj).len() + t.kind.spec_finalizers(obj)
}

/// A compare-and-swap write against the revision an object was read at.
pub(crate) enum Cas<'a> {
    /// Store this object.
    Put(&'a Value),
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
        op: Cas<'_>,
    ) -> Result<Option<Value>, ApiError> {
        let key = self.key(t, name);
        let precondition = Precondition::Revision(rv);
        let command = match op {
            Cas::Put(obj) => Command::Put {
                key,
                value: serde_json::value::to_raw_value(&t.kind.to_storage(obj.clone()))
                    .expect("JSON serializes"),
                precondition,
            },
            Cas::Delete => Command::Delete { key, precondition },
        };
        let deleting = matches!(op, Cas::Delete);
        match self.store.write(command).await? {
            Outcome::Written { value, .. } => {
                if deleting {
                    // Whatever request removed it, the object itself is gone.
                    let req = AdmissionRequest {
                        subresource: None,
                        ..self.admission_request(t, Operation::Delete, name, None, false)
                    };
                    self.admission.released(&req);
                }
                Ok(Some(self.decode_stored(t, &value)?))
            }
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
        let info = t.kind.info();
        let sub = t.subresource.as_deref();
        let named = t.name.is_some();
        match (&method, named, sub) {
            (&Method::GET, false, None) if q.is_watch() || t.watch_path => {
                self.watch(&t, &q, repr, None).await
            }
            (&Method::GET, true, None) if t.watch_path || q.is_watch() => {
                let name = t.name.clone();
                self.watch(&t, &q, repr, name.as_deref()).await
            }
            (&Method::GET, false, None) => self.list(&t, &q, repr).await,
            (&Method::GET, true, None | Some("status")) => self.get(&t, repr).await,
            (&Method::GET, true, Some("scale")) if info.scale => self.get_scale(&t).await,
            (&Method::POST, false, None) if t.namespace.is_some() || !info.namespaced() => {
                self.create(&t, &q, headers, body).await
            }
            (&Method::POST, true, Some("binding")) if t.kind.serves("binding") => {
                self.bind(&t, body).await
            }
            (&Method::PUT, true, None) => self.update(&t, &q, headers, body).await,
            (&Method::PUT, true, Some("status")) if info.status => {
                self.update(&t, &q, headers, body).await
            }
            (&Method::PUT, true, Some("finalize")) if t.kind.serves("finalize") => {
                self.update(&t, &q, headers, body).await
            }
            (&Method::PUT, true, Some("scale")) if info.scale => {
                let scale = decode_body(&t, headers, body)?.object;
                self.set_scale(&t, &q, scale, None).await
            }
            (&Method::PATCH, true, Some("scale")) if info.scale => {
                let pt = PatchType::from_content_type(&content_type(headers)?)?;
                if pt == PatchType::Apply {
                    return Err(ApiError::unsupported_media_type(
                        "application/apply-patch+yaml (on scale)",
                    ));
                }
                self.set_scale(&t, &q, Value::Null, Some((pt, body))).await
            }
            (&Method::PATCH, true, None) => self.patch(&t, &q, headers, body).await,
            (&Method::PATCH, true, Some("status")) if info.status => {
                self.patch(&t, &q, headers, body).await
            }
            (&Method::DELETE, true, None) => {
                let opts = DeleteOptions::parse(&q, body)?;
                Ok(self.delete(&t, &opts).await?.into_response())
            }
            (&Method::DELETE, false, None) if t.namespace.is_some() || !info.namespaced() => {
                self.delete_collection(&t, &q, body).await
            }
            (_, true, Some(other))
                if !matches!(other, "status" | "scale" | "binding" | "finalize") =>
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
    ) -> AdmissionRequest<'a> {
        AdmissionRequest {
            operation,
            info: t.kind.info(),
            namespace: t.namespace.as_deref(),
            name,
            subresource: t.subresource.as_deref(),
            old,
            dry_run,
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

    /// Checks `apiVersion`/`kind`, decodes through the typed model and handles unknown and
    /// `duplicate` fields per `fieldValidation`.
    pub(crate) fn canonical(
        &self,
        t: &Target,
        raw: &Value,
        duplicates: &[String],
        q: &Params,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let info = t.kind.info();
        if !raw.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        let mut raw = raw.clone();
        let api_version = info.api_version();
        match raw.get("apiVersion").and_then(Value::as_str) {
            Some(v) if !v.is_empty() && v != api_version && t.subresource.is_none() => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
            _ => {}
        }
        match raw.get("kind").and_then(Value::as_str) {
            Some(k) if !k.is_empty() && k != info.kind && t.subresource.is_none() => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    info.kind
                )));
            }
            _ => {}
        }
        raw["apiVersion"] = json!(api_version);
        raw["kind"] = json!(info.kind);
        let decoded = t.kind.decode(&raw).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                info.kind, info.version, info.kind
            ))
        })?;
        let mut warnings = Vec::new();
        if !decoded.unknown.is_empty() || !duplicates.is_empty() {
            let msgs: Vec<String> = duplicates
                .iter()
                .map(|p| format!("duplicate field \"{p}\""))
                .chain(
                    decoded
                        .unknown
                        .iter()
                        .map(|p| format!("unknown field \"{p}\"")),
                )
                .collect();
            match q.field_validation()? {
                FieldValidation::Strict => {
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        msgs.join(", ")
                    )));
                }
                FieldValidation::Warn => warnings = msgs,
                FieldValidation::Ignore => {}
            }
        }
        Ok((decoded.object, warnings))
    }

    async fn create(
        &self,
        t: &Target,
        q: &Params,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let raw = decode_body(t, headers, body)?;
        let (obj, warnings) = self.canonical(t, &raw.object, &raw.duplicates, q)?;
        let created = self.create_object(t, q, obj, "Update").await?;
        Ok(respond_json(StatusCode::CREATED, &created, &warnings))
    }

    /// Creates a decoded object: server-set metadata, strategy, namespace checks, store.
    pub(crate) async fn create_object(
        &self,
        t: &Target,
        q: &Params,
        mut obj: Value,
        operation: &str,
    ) -> Result<Value, ApiError> {
        let info = t.kind.info();
        let dry = q.dry_run()?;
        let name = {
            let m = meta_mut(&mut obj);
            if info.namespaced() {
                let ns = t.namespace.clone().unwrap_or_default();
                match m.get("namespace").and_then(Value::as_str) {
                    Some(b) if !b.is_empty() && b != ns => {
                        return Err(ApiError::bad_request(
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ));
                    }
                    _ => {}
                }
                m.insert("namespace".into(), json!(ns));
            } else {
                // `EnsureObjectNamespaceMatchesRequestNamespace`: cluster-scoped objects have none.
                m.remove("namespace");
            }
            if m.get("resourceVersion")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
            {
                return Err(ApiError::bad_request(
                    "resourceVersion should not be set on objects to be created",
                ));
            }
            let mut name = m
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if name.is_empty()
                && let Some(g) = m.get("generateName").and_then(Value::as_str)
                && !g.is_empty()
            {
                name = format!("{g}{}", object::name_suffix());
                m.insert("name".into(), json!(name));
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(object::now()));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("selfLink");
            if info.status {
                m.insert("generation".into(), json!(1));
            }
            name
        };
        if !t.kind.keeps_status_on_create()
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        self.track_managed_fields(t, q, operation, None, &mut obj);
        let req = self.admission_request(t, Operation::Create, &name, None, dry);
        self.admission.mutate(&req, &mut obj).await?;
        t.kind
            .admit(&mut obj, None)
            .map_err(|errs| ApiError::invalid(info, &name, &errs))?;
        self.admission.validate(&req, Some(&obj)).await?;
        let _reserved = self.admission.reserve(&req, &mut obj).await?;
        if dry {
            return Ok(obj);
        }
        let value =
            serde_json::value::to_raw_value(&t.kind.to_storage(obj)).expect("JSON serializes");
        match self
            .store
            .write(Command::Put {
                key: self.key(t, &name),
                value,
                precondition: Precondition::Absent,
            })
            .await?
        {
            Outcome::Written { value, .. } => self.decode_stored(t, &value),
            Outcome::Failed {
                reason: Failure::AlreadyExists,
                ..
            } => Err(ApiError::already_exists(info, &name)),
            other => Err(ApiError::internal(format!(
                "unexpected store outcome {other:?}"
            ))),
        }
    }

    /// Builds the object an update writes: the client's object with server-owned metadata
    /// and, depending on the subresource, the other half (spec or status) of the current one.
    pub(crate) fn merge_for_update(&self, t: &Target, mut new: Value, cur: &Value) -> Value {
        let info = t.kind.info();
        {
            let cm = cur.get("metadata").cloned().unwrap_or_default();
            let m = meta_mut(&mut new);
            for field in [
                "uid",
                "creationTimestamp",
                "namespace",
                "name",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match cm.get(field) {
                    Some(v) => m.insert(field.into(), v.clone()),
                    None => m.remove(field),
                };
            }
            if !m.contains_key("managedFields")
                && let Some(mf) = cm.get("managedFields")
            {
                m.insert("managedFields".into(), mf.clone());
            }
        }
        let obj = new.as_object_mut().expect("objects are JSON objects");
        let cur_obj = cur.as_object().cloned().unwrap_or_default();
        match t.subresource.as_deref() {
            Some("status") => {
                // Status writes may not touch anything else (`PrepareForUpdate` of status strategies).
                obj.retain(|k, _| {
                    matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                });
                for (k, v) in &cur_obj {
                    if !matches!(k.as_str(), "metadata" | "status") {
                        obj.insert(k.clone(), v.clone());
                    }
                }
            }
            Some("finalize") => {
                // Only `spec.finalizers` comes from the request.
                let fins = obj.get("spec").and_then(|s| s.get("finalizers")).cloned();
                let mut merged = cur_obj.clone();
                merged.insert(
                    "metadata".into(),
                    obj.get("metadata").cloned().unwrap_or_default(),
                );
                let spec = merged.entry("spec").or_insert_with(|| json!({}));
                match fins {
                    Some(f) => spec["finalizers"] = f,
                    None => {
                        if let Some(s) = spec.as_object_mut() {
                            s.remove("finalizers");
                        }
                    }
                }
                *obj = merged;
            }
            _ if info.status => match cur_obj.get("status") {
                Some(s) => {
                    obj.insert("status".into(), s.clone());
                }
                None => {
                    obj.remove("status");
                }
            },
            _ => {}
        }
        new
    }

    /// Validates and writes an update computed from `cur`, or deletes the object when the
    /// update removed its last finalizer during deletion.
    pub(crate) async fn commit_update(
        &self,
        t: &Target,
        q: &Params,
        cur: &Stored,
        new: Value,
    ) -> Result<Value, ApiError> {
        self.commit_update_as(t, q, cur, new, "Update").await
    }

    /// [`Apiserver::commit_update`] recording `operation` in `managedFields`.
    pub(crate) async fn commit_update_as(
        &self,
        t: &Target,
        q: &Params,
        cur: &Stored,
        mut new: Value,
        operation: &str,
    ) -> Result<Value, ApiError> {
        let info = t.kind.info();
        let name = meta_str(&cur.value, "name").unwrap_or_default().to_string();
        let dry = q.dry_run()?;
        let req = self.admission_request(t, Operation::Update, &name, Some(&cur.value), dry);
        self.admission.mutate(&req, &mut new).await?;
        t.kind
            .admit(&mut new, Some(&cur.value))
            .map_err(|errs| ApiError::invalid(info, &name, &errs))?;
        self.admission.validate(&req, Some(&new)).await?;
        let _reserved = self.admission.reserve(&req, &mut new).await?;
        if meta_str(&cur.value, "deletionTimestamp").is_some() {
            let old: std::collections::HashSet<String> =
                object::finalizers(&cur.value).into_iter().collect();
            if object::finalizers(&new).iter().any(|f| !old.contains(f)) {
                return Err(ApiError::invalid(
                    info,
                    &name,
                    &[crate::error::FieldError::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        if info.status {
            let generation = cur
                .value
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let next = if object::spec_changed(&new, &cur.value) {
                generation + 1
            } else {
                generation
            };
            meta_mut(&mut new).insert("generation".into(), json!(next));
        }
        meta_mut(&mut new).insert("resourceVersion".into(), json!(cur.rv.to_string()));
        if object::same_object(&new, &cur.value) {
            return Ok(cur.value.clone());
        }
        self.track_managed_fields(t, q, operation, Some(&cur.value), &mut new);
        let finished = meta_str(&cur.value, "deletionTimestamp").is_some()
            && pending_finalizers(t, &new) == 0
            && t.kind.delete_during_update(&new);
        if dry {
            return Ok(new);
        }
        let op = if finished {
            Cas::Delete
        } else {
            Cas::Put(&new)
        };
        match self.cas(t, &name, cur.rv, op).await? {
            Some(value) if !finished => Ok(value),
            Some(_) => Ok(new),
            None => Err(ApiError::conflict(info, &name, ApiError::MODIFIED)),
        }
    }

    async fn update(
        &self,
        t: &Target,
        q: &Params,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let info = t.kind.info();
        let name = t.name.as_deref().expect("routed with a name");
        let raw = decode_body(t, headers, body)?;
        let (obj, warnings) = self.canonical(t, &raw.object, &raw.duplicates, q)?;
        match meta_str(&obj, "name") {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        if let (Some(ns), Some(b)) = (t.namespace.as_deref(), meta_str(&obj, "namespace"))
            && !b.is_empty()
            && b != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let expected = match meta_str(&obj, "resourceVersion") {
            None | Some("") => None,
            Some(s) => Some(s.parse::<u64>().map_err(|_| {
                ApiError::invalid(
                    info,
                    name,
                    &[crate::error::FieldError::invalid(
                        "metadata.resourceVersion",
                        s,
                        "must be a number",
                    )],
                )
            })?),
        };
        for _ in 0..16 {
            let cur = self.load(t, name).await?;
            if let Some(rv) = expected
                && rv != cur.rv
            {
                return Err(ApiError::conflict(info, name, ApiError::MODIFIED));
            }
            let new = self.merge_for_update(t, obj.clone(), &cur.value);
            match self.commit_update(t, q, &cur, new).await {
                // An unconditional update retries against the newer object.
                Err(e) if e.code == 409 && expected.is_none() => continue,
                Err(e) => return Err(e),
                Ok(out) => return Ok(respond_json(StatusCode::OK, &out, &warnings)),
            }
        }
        Err(ApiError::retries_exhausted(info, name))
    }

    async fn patch(
        &self,
        t: &Target,
        q: &Params,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let pt = PatchType::from_content_type(&content_type(headers)?)?;
        if pt == PatchType::Apply {
            return self.server_side_apply(t, q, body).await;
        }
        let info = t.kind.info();
        let name = t.name.as_deref().expect("routed with a name");
        for _ in 0..16 {
            let cur = self.load(t, name).await?;
            let patched = patch::apply(pt, &cur.value, body)?;
            if !patched.is_object() {
                return Err(ApiError::bad_request("the patch must leave a JSON object"));
            }
            let pinned = object::revision(&patched).filter(|rv| *rv != cur.rv);
            if pinned.is_some()
                || (meta_str(&patched, "resourceVersion").is_some()
                    && object::revision(&patched).is_none())
            {
                return Err(ApiError::conflict(info, name, ApiError::MODIFIED));
            }
            if meta_str(&patched, "name").is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    meta_str(&patched, "name").unwrap_or_default()
                )));
            }
            let (obj, warnings) = self.canonical(t, &patched, &[], q)?;
            let new = self.merge_for_update(t, obj, &cur.value);
            match self.commit_update(t, q, &cur, new).await {
                Err(e) if e.code == 409 && e.reason == "Conflict" => continue,
                Err(e) => return Err(e),
                Ok(out) => return Ok(respond_json(StatusCode::OK, &out, &warnings)),
            }
        }
        Err(ApiError::retries_exhausted(info, name))
    }

    /// Deletes one object (`rest/delete.go` `BeforeDelete`): graceful pods and objects with
    /// finalizers get a `deletionTimestamp`; everything else goes at once.
    pub(crate) async fn delete(
        &self,
        t: &Target,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let info = t.kind.info();
        let name = t.name.as_deref().expect("routed with a name");
        for _ in 0..16 {
            let cur = self.load(t, name).await?;
            let req =
                self.admission_request(t, Operation::Delete, name, Some(&cur.value), opts.dry_run);
            self.admission.validate(&req, None).await?;
            let uid = meta_str(&cur.value, "uid").unwrap_or_default().to_string();
            if let Some(want) = &opts.uid
                && *want != uid
            {
                return Err(ApiError::conflict(
                    info,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                    ),
                ));
            }
            if let Some(want) = &opts.rv
                && *want != cur.rv.to_string()
            {
                return Err(ApiError::conflict(
                    info,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in meta: {}",
                        cur.rv
                    ),
                ));
            }
            let mut new = cur.value.clone();
            let mut fins = object::finalizers(&new);
            match opts.policy.as_deref() {
                Some("Foreground") => {
                    fins.retain(|f| f != "orphan");
                    if !fins.iter().any(|f| f == "foregroundDeletion") {
                        fins.push("foregroundDeletion".into());
                    }
                }
                Some("Orphan") => {
                    fins.retain(|f| f != "foregroundDeletion");
                    if !fins.iter().any(|f| f == "orphan") {
                        fins.push("orphan".into());
                    }
                }
                _ => {}
            }
            let grace = t.kind.delete_grace(&cur.value, opts.grace);
            let graceful = grace > 0;
            let deleting = meta_str(&cur.value, "deletionTimestamp").is_some();
            let blocked = !fins.is_empty() || pending_finalizers(t, &cur.value) > fins.len();
            if blocked || graceful {
                if deleting && !graceful && object::finalizers(&cur.value) == fins {
                    // Already being deleted and nothing to change.
                    return Ok(Deleted::Object(cur.value));
                }
                let m = meta_mut(&mut new);
                if !deleting || graceful {
                    let current_grace = m.get("deletionGracePeriodSeconds").and_then(Value::as_i64);
                    // A deletion may only shorten an existing grace period.
                    if !deleting || current_grace.is_none_or(|g| grace < g) {
                        m.insert("deletionTimestamp".into(), json!(object::now_plus(grace)));
                        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    }
                }
                if fins.is_empty() {
                    m.remove("finalizers");
                } else {
                    m.insert("finalizers".into(), json!(fins));
                }
                t.kind.prepare_for_delete(&mut new);
                if opts.dry_run {
                    return Ok(Deleted::Object(new));
                }
                match self.cas(t, name, cur.rv, Cas::Put(&new)).await? {
                    Some(value) => return Ok(Deleted::Object(value)),
                    None => continue,
                }
            }
            // kube-apiserver's `ReturnDeletedObject`: some kinds answer with the deleted object.
            let answer = |value: Value| {
                if t.kind.returns_deleted_object() {
                    Deleted::Object(value)
                } else {
                    Deleted::Status(crate::error::Details::of(info, name).uid(&uid))
                }
            };
            if opts.dry_run {
                return Ok(answer(cur.value));
            }
            match self.cas(t, name, cur.rv, Cas::Delete).await? {
                Some(value) => return Ok(answer(value)),
                None => continue,
            }
        }
        Err(ApiError::retries_exhausted(info, name))
    }

    async fn delete_collection(
        &self,
        t: &Target,
        q: &Params,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let opts = DeleteOptions::parse(q, body)?;
        let (items, rv) = self.select(t, q).await?;
        let mut out = Vec::new();
        for item in items {
            let name = meta_str(&item, "name").unwrap_or_default().to_string();
            let mut one = t.clone();
            one.name = Some(name);
            match self.delete(&one, &opts).await {
                Ok(Deleted::Status(_)) => out.push(item),
                Ok(Deleted::Object(v)) => out.push(v),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let info = t.kind.info();
        let list = json!({
            "kind": format!("{}List", info.kind), "apiVersion": info.api_version(),
            "metadata": {"resourceVersion": rv.to_string()}, "items": out,
        });
        Ok(respond_json(StatusCode::OK, &list, &[]))
    }

    async fn bind(&self, t: &Target, body: &[u8]) -> Result<Response, ApiError> {
        let info = t.kind.info();
        let name = t.name.as_deref().expect("routed with a name");
        let binding: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding Binding: {e}")))?;
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if node.is_empty() {
            return Err(ApiError::invalid(
                info,
                name,
                &[crate::error::FieldError::required("target.name", "")],
            ));
        }
        for _ in 0..16 {
            let cur = self.load(t, name).await?;
            if meta_str(&cur.value, "deletionTimestamp").is_some() {
                return Err(ApiError::conflict(
                    info,
                    name,
                    &format!("pod {name} is being deleted, cannot be assigned to a host"),
                ));
            }
            match cur.value.pointer("/spec/nodeName").and_then(Value::as_str) {
                Some(n) if !n.is_empty() => {
                    return Err(ApiError::conflict(
                        info,
                        name,
                        &format!("pod {name} is already assigned to node \"{n}\""),
                    ));
                }
                _ => {}
            }
            let mut new = cur.value.clone();
            new["spec"]["nodeName"] = json!(node);
            let conds = new["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut conds: Vec<Value> = conds
                .into_iter()
                .filter(|c| c["type"] != "PodScheduled")
                .collect();
            conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": object::now()}));
            new["status"]["conditions"] = json!(conds);
            if self.cas(t, name, cur.rv, Cas::Put(&new)).await?.is_some() {
                let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
                return Ok(respond_json(StatusCode::CREATED, &status, &[]));
            }
        }
        Err(ApiError::retries_exhausted(info, name))
    }

    fn scale_of(&self, t: &Target, obj: &Value) -> Value {
        let raw = obj.pointer("/spec/selector").cloned().unwrap_or_default();
        // ReplicationControllers select with a plain map; the apps kinds with a LabelSelector.
        let structured =
            if raw.get("matchLabels").is_some() || raw.get("matchExpressions").is_some() {
                raw
            } else {
                json!({"matchLabels": raw})
            };
        let sel = serde_json::from_value(structured)
            .ok()
            .and_then(|s| wasmkube_api::selector::LabelSelector::from_structured(&s).ok())
            .map(|s| s.to_string())
            .unwrap_or_default();
        let m = obj.get("metadata").cloned().unwrap_or_default();
        let _ = t;
        json!({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                         "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
            "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
            "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": sel},
        })
    }

    async fn get_scale(&self, t: &Target) -> Result<Response, ApiError> {
        let cur = self
            .load(t, t.name.as_deref().expect("routed with a name"))
            .await?;
        Ok(respond_json(
            StatusCode::OK,
            &self.scale_of(t, &cur.value),
            &[],
        ))
    }

    async fn set_scale(
        &self,
        t: &Target,
        q: &Params,
        put: Value,
        patch: Option<(PatchType, &[u8])>,
    ) -> Result<Response, ApiError> {
        let info = t.kind.info();
        let name = t.name.as_deref().expect("routed with a name");
        for _ in 0..16 {
            let cur = self.load(t, name).await?;
            let scale = match patch {
                Some((pt, body)) => patch::apply(pt, &self.scale_of(t, &cur.value), body)?,
                None => put.clone(),
            };
            let replicas = scale
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if replicas < 0 {
                return Err(ApiError::invalid(
                    info,
                    name,
                    &[crate::error::FieldError::invalid(
                        "spec.replicas",
                        replicas,
                        "must be greater than or equal to 0",
                    )],
                ));
            }
            if let Some(rv) = object::revision(&scale)
                && rv != cur.rv
            {
                return Err(ApiError::conflict(info, name, ApiError::MODIFIED));
            }
            let mut new = cur.value.clone();
            new["spec"]["replicas"] = json!(replicas);
            let mut main = t.clone();
            main.subresource = None;
            match self.commit_update(&main, q, &cur, new).await {
                Err(e) if e.code == 409 && patch.is_some() => continue,
                Err(e) => return Err(e),
                Ok(out) => return Ok(respond_json(StatusCode::OK, &self.scale_of(t, &out), &[])),
            }
        }
        Err(ApiError::retries_exhausted(info, name))
    }
}
