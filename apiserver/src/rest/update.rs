//! Update and patch (`rest/update.go`): the client's object merged with what the server
//! owns, admission and the kind's strategy, then a compare-and-swap write; an update that
//! removes the last finalizer of an object being deleted deletes it.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::delete::pending_finalizers;
use super::{Cas, Stored, respond_json};
use crate::Apiserver;
use crate::admission::Operation;
use crate::error::ApiError;
use crate::object::{self, meta_mut, meta_str};
use crate::patch::{self, PatchType};
use crate::request::{Call, Params, Target};

/// Sets (or, with `None`, removes) the field at JSON pointer `at` (`/spec/finalizers`),
/// creating the objects above it.
fn set_at(obj: &mut Value, at: &str, value: Option<Value>) {
    let Some((parent, field)) = at.rsplit_once('/') else {
        return;
    };
    let mut here = obj;
    for seg in parent.split('/').filter(|s| !s.is_empty()) {
        if !here.get(seg).is_some_and(Value::is_object) {
            if value.is_none() {
                return;
            }
            here[seg] = json!({});
        }
        here = &mut here[seg];
    }
    if let Some(o) = here.as_object_mut() {
        match value {
            Some(v) => {
                o.insert(field.to_owned(), v);
            }
            None => {
                o.remove(field);
            }
        }
    }
}

impl Apiserver {
    /// Builds the object an update writes: the client's object with server-owned metadata
    /// and, depending on the subresource, the other half (spec or status) of the current one.
    pub(crate) fn merge_for_update(&self, t: &Target, mut new: Value, cur: &Value) -> Value {
        let info = t.kind.info();
        let empty = serde_json::Map::new();
        let cur_obj = cur.as_object().unwrap_or(&empty);
        {
            let cm = cur_obj
                .get("metadata")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
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
        match t.subresource.as_deref() {
            Some("status") => {
                // Status writes may not touch anything else (`PrepareForUpdate` of status strategies).
                obj.retain(|k, _| {
                    matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                });
                for (k, v) in cur_obj {
                    if !matches!(k.as_str(), "metadata" | "status") {
                        obj.insert(k.clone(), v.clone());
                    }
                }
            }
            Some(sub) if t.kind.owned_by(sub).is_some() => {
                // Only the part the subresource owns comes from the request (namespaces'
                // `finalize`, pods' `ephemeralcontainers`).
                let at = t.kind.owned_by(sub).expect("checked by the guard");
                let part = new.pointer(at).cloned();
                let mut merged = Value::Object(cur_obj.clone());
                merged["metadata"] = new.get("metadata").cloned().unwrap_or_default();
                set_at(&mut merged, at, part);
                return merged;
            }
            Some(_) => {}
            None => {
                if info.status {
                    match cur_obj.get("status") {
                        Some(s) => {
                            obj.insert("status".into(), s.clone());
                        }
                        None => {
                            obj.remove("status");
                        }
                    }
                }
                // What a subresource owns stays as stored.
                for at in t.kind.subresources().iter().filter_map(|s| s.owns) {
                    let kept = cur.pointer(at).cloned();
                    set_at(&mut new, at, kept);
                }
            }
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
        let req = self.admission_request(
            t,
            Operation::Update,
            &name,
            Some(&cur.value),
            dry,
            q.user.as_ref(),
        );
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
        if finished {
            return match self.cas(t, &name, cur.rv, Cas::Delete).await? {
                Some(_) => Ok(new),
                None => Err(ApiError::conflict(info, &name, ApiError::MODIFIED)),
            };
        }
        match self.cas(t, &name, cur.rv, Cas::Put(new)).await? {
            Some(value) => {
                tracing::debug!(target: "podtrace", kind = %info.kind, object = %format_args!("{}/{name}", t.namespace.as_deref().unwrap_or_default()), stage = "updated", subresource = t.subresource.as_deref().unwrap_or_default());
                Ok(value)
            }
            None => Err(ApiError::conflict(info, &name, ApiError::MODIFIED)),
        }
    }

    pub(super) async fn update(&self, call: &Call<'_>) -> Result<Response, ApiError> {
        let (t, q) = (&call.t, &call.q);
        let info = t.kind.info();
        let name = t.name.as_deref().expect("routed with a name");
        let raw = call.decode()?;
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

    pub(super) async fn patch(&self, call: &Call<'_>) -> Result<Response, ApiError> {
        let (t, q) = (&call.t, &call.q);
        let pt = call.patch_type()?;
        if pt == PatchType::Apply {
            return self.server_side_apply(t, q, call.bytes()).await;
        }
        let info = t.kind.info();
        let name = t.name.as_deref().expect("routed with a name");
        for _ in 0..16 {
            let cur = self.load(t, name).await?;
            let patched = patch::apply(pt, &cur.value, call.bytes())?;
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
}
