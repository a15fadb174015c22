//! Server-side apply (`application/apply-patch+yaml`) and the `managedFields` bookkeeping of
//! every write, following the Kubernetes SSA documentation: each field has owners; applying a
//! different value to a field another manager owns is a conflict unless forced; fields a
//! manager applied before and no longer applies are removed if nobody else owns them.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use crate::Apiserver;
use crate::error::ApiError;
use crate::fieldset::{self, FieldSet};
use crate::object::{self, meta_mut, meta_str};
use crate::patch;
use crate::request::{Params, Target, decode_yaml};
use crate::rest::{Stored, respond_json};

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: Option<String>,
    time: Option<String>,
    fields: FieldSet,
}

impl Entry {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time.clone().unwrap_or_else(object::now),
            "fieldsType": "FieldsV1",
            "fieldsV1": fieldset::to_fields_v1(&self.fields),
        });
        if let Some(s) = &self.subresource {
            v["subresource"] = json!(s);
        }
        v
    }
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some(Entry {
                        manager: e.get("manager")?.as_str()?.to_string(),
                        operation: e
                            .get("operation")
                            .and_then(Value::as_str)
                            .unwrap_or("Update")
                            .to_string(),
                        api_version: e
                            .get("apiVersion")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        subresource: e
                            .get("subresource")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        time: e.get("time").and_then(Value::as_str).map(str::to_string),
                        fields: e
                            .get("fieldsV1")
                            .map(fieldset::from_fields_v1)
                            .unwrap_or_default(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn store_entries(obj: &mut Value, list: &[Entry]) {
    let m = meta_mut(obj);
    let kept: Vec<Value> = list
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if kept.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(kept));
    }
}

/// The manager of a request: `fieldManager`, else the User-Agent's program name.
fn manager_of(q: &Params) -> String {
    q.field_manager
        .clone()
        .filter(|m| !m.is_empty())
        .or_else(|| {
            q.user_agent
                .as_deref()
                .and_then(|ua| ua.split('/').next())
                .filter(|s| !s.is_empty())
                .map(|s| s.chars().take(128).collect())
        })
        .unwrap_or_else(|| "unknown".into())
}

impl Apiserver {
    /// Records an `Update` (or create) by the request's manager: it takes ownership of
    /// every field it changed, others lose those fields, and fields that no longer exist
    /// are dropped from every entry.
    pub(crate) fn track_managed_fields(
        &self,
        t: &Target,
        q: &Params,
        operation: &str,
        old: Option<&Value>,
        new: &mut Value,
    ) {
        if operation == "Apply" {
            return;
        }
        let manager = manager_of(q);
        let subresource = t.subresource.clone().filter(|s| s == "status");
        let (present, changed) =
            fieldset::of_update(new, old, true, &|p, f| t.kind.list_type(p, f));
        let api_version = new
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut list = entries(new);
        let mut mine = false;
        for e in &mut list {
            if e.manager == manager && e.operation == "Update" && e.subresource == subresource {
                e.fields.extend(changed.iter().cloned());
                if !changed.is_empty() {
                    e.time = None;
                    e.api_version = api_version.clone();
                }
                mine = true;
            } else {
                e.fields.retain(|p| !changed.contains(p));
            }
            e.fields.retain(|p| present.contains(p));
        }
        if !mine && !changed.is_empty() {
            list.push(Entry {
                manager,
                operation: "Update".into(),
                api_version,
                subresource,
                time: None,
                fields: changed,
            });
        }
        store_entries(new, &list);
    }

    /// PATCH with `application/apply-patch+yaml`.
    pub(crate) async fn server_side_apply(
        &self,
        t: &Target,
        q: &Params,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let info = t.kind.info();
        let name = t.name.as_deref().expect("routed with a name");
        let manager = q
            .field_manager
            .clone()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ApiError::bad_request("fieldManager is required for apply requests"))?;
        let mut applied = decode_yaml(body)?;
        if !applied.is_object() {
            return Err(ApiError::bad_request(
                "the apply configuration must be an object",
            ));
        }
        match meta_str(&applied, "name") {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            Some(_) => {}
            None => {
                meta_mut(&mut applied).insert("name".into(), json!(name));
            }
        }
        for field in ["apiVersion", "kind"] {
            if applied
                .get(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(ApiError::bad_request(format!(
                    "{field} must be set in an apply configuration"
                )));
            }
        }
        let (canonical, warnings) = self.canonical(t, &applied, &[], q)?;
        let status = t.subresource.as_deref() == Some("status");
        let mut owned = fieldset::of_object(&applied, status, &|p, f| t.kind.list_type(p, f));
        owned.retain(|p| fieldset::value_at(&canonical, p).is_some());
        if status {
            // An apply to /status owns only status fields.
            owned.retain(|p| p.first().is_some_and(|f| f == "f:status"));
        }
        let api_version = info.api_version();
        for _ in 0..16 {
            let cur = match self.load(t, name).await {
                Ok(c) => c,
                Err(e) if e.code == 404 && !status => {
                    let mut obj = canonical.clone();
                    store_entries(
                        &mut obj,
                        &[Entry {
                            manager: manager.clone(),
                            operation: "Apply".into(),
                            api_version: api_version.clone(),
                            subresource: None,
                            time: None,
                            fields: owned.clone(),
                        }],
                    );
                    match self.create_object(t, q, obj, "Apply").await {
                        Ok(created) => {
                            return Ok(respond_json(StatusCode::CREATED, &created, &warnings));
                        }
                        Err(e) if e.code == 409 && e.reason == "AlreadyExists" => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            let out = self
                .apply_to(t, q, &cur, &applied, &canonical, &owned, &manager)
                .await;
            match out {
                Err(e)
                    if e.code == 409
                        && e.reason == "Conflict"
                        && e.message.contains("has been modified") =>
                {
                    continue;
                }
                Err(e) => return Err(e),
                Ok(v) => return Ok(respond_json(StatusCode::OK, &v, &warnings)),
            }
        }
        Err(ApiError::retries_exhausted(info, name))
    }

    #[allow(clippy::too_many_arguments, reason = "one apply step over its inputs")]
    async fn apply_to(
        &self,
        t: &Target,
        q: &Params,
        cur: &Stored,
        applied: &Value,
        canonical: &Value,
        owned: &FieldSet,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let info = t.kind.info();
        let name = meta_str(&cur.value, "name").unwrap_or_default().to_string();
        let mut list = entries(&cur.value);
        let subresource = t.subresource.clone().filter(|s| s == "status");
        let is_me = |e: &Entry| {
            e.manager == manager && e.operation == "Apply" && e.subresource == subresource
        };
        let mut conflicts = Vec::new();
        for e in list.iter().filter(|e| !is_me(e)) {
            for p in owned.intersection(&e.fields) {
                // An item marker (`.`) or set member (`v:`) conflicts only by existence.
                let marker = p.last().is_some_and(|t| t == "." || t.starts_with("v:"));
                let differs = if marker {
                    fieldset::value_at(&cur.value, p).is_none()
                } else {
                    fieldset::value_at(&cur.value, p) != fieldset::value_at(canonical, p)
                };
                if differs {
                    conflicts.push((e.manager.clone(), e.api_version.clone(), p.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !q.force() {
            let causes: Vec<crate::error::FieldError> = conflicts
                .iter()
                .map(|(m, v, p)| crate::error::FieldError {
                    reason: "FieldManagerConflict",
                    field: fieldset::display(p),
                    message: format!("conflict with \"{m}\" using {v}"),
                })
                .collect();
            return Err(ApiError::apply_conflict(info, &name, &causes));
        }
        let forced: FieldSet = conflicts.into_iter().map(|(_, _, p)| p).collect();
        let previous: FieldSet = list
            .iter()
            .filter(|e| is_me(e))
            .flat_map(|e| e.fields.clone())
            .collect();
        let others: FieldSet = list
            .iter()
            .filter(|e| !is_me(e))
            .flat_map(|e| e.fields.clone())
            .collect();
        let mut merged = cur.value.clone();
        let mut patch_obj = applied.as_object().cloned().unwrap_or_default();
        if subresource.is_some() {
            patch_obj.retain(|k, _| k == "status");
        } else {
            patch_obj.remove("status");
        }
        if let Some(Value::Object(m)) = patch_obj.get_mut("metadata") {
            m.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "labels" | "annotations" | "finalizers" | "ownerReferences"
                )
            });
        }
        patch::merge_by(&mut merged, &patch_obj, &mut Vec::new(), &|p, f| {
            t.kind.list_type(p, f)
        })?;
        for p in previous.difference(owned) {
            if !others.contains(p) {
                fieldset::remove(&mut merged, p);
            }
        }
        for e in &mut list {
            if !is_me(e) {
                e.fields.retain(|p| !forced.contains(p));
            }
        }
        list.retain(|e| !is_me(e));
        list.push(Entry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            api_version: info.api_version(),
            subresource,
            time: None,
            fields: owned.clone(),
        });
        store_entries(&mut merged, &list);
        let (obj, _) = self.canonical(t, &merged, &[], &Params::default())?;
        let new = self.merge_for_update(t, obj, &cur.value);
        let mut q = Params {
            dry_run: q.dry_run.clone(),
            field_manager: Some(manager.to_string()),
            ..Default::default()
        };
        q.user_agent = None;
        self.commit_update_as(t, &q, cur, new, "Apply").await
    }
}
