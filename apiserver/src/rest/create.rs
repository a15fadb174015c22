//! Create (`rest/create.go`): decode once, server-set metadata, admission and the kind's
//! strategy, then a write that must find no object.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use wasmkube_store::{Command, Failure, Outcome, Precondition};

use super::respond_json;
use crate::Apiserver;
use crate::admission::Operation;
use crate::error::ApiError;
use crate::object::{self, meta_mut};
use crate::request::{Call, FieldValidation, Params, Target};

impl Apiserver {
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
        // Decoded in place unless the type fields need setting (absent, or another kind's
        // under a subresource): a clone of the object is 2% of a status write.
        let typed_as_kind = raw.get("apiVersion").and_then(Value::as_str) == Some(&*api_version)
            && raw.get("kind").and_then(Value::as_str) == Some(info.kind);
        let raw = if typed_as_kind {
            std::borrow::Cow::Borrowed(raw)
        } else {
            let mut owned = raw.clone();
            owned["apiVersion"] = json!(api_version);
            owned["kind"] = json!(info.kind);
            std::borrow::Cow::Owned(owned)
        };
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

    pub(super) async fn create(&self, call: &Call<'_>) -> Result<Response, ApiError> {
        let (t, q) = (&call.t, &call.q);
        let raw = call.decode()?;
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
        let req = self.admission_request(t, Operation::Create, &name, None, dry, q.user.as_ref());
        self.admission.mutate(&req, &mut obj).await?;
        t.kind
            .admit(&mut obj, None)
            .map_err(|errs| ApiError::invalid(info, &name, &errs))?;
        self.admission.validate(&req, Some(&obj)).await?;
        let _reserved = self.admission.reserve(&req, &mut obj).await?;
        let key = self.key(t, &name);
        if dry {
            // A dry run stores nothing, but answers as the write would (409 for a taken name).
            if self.store.get(&key).await?.is_some() {
                return Err(ApiError::already_exists(info, &name));
            }
            return Ok(obj);
        }
        let (value, kept) = self.for_storage(t, &key, obj);
        match self
            .store
            .write(Command::Put {
                key,
                value,
                precondition: Precondition::Absent,
            })
            .await?
        {
            Outcome::Written { value, revision } => {
                tracing::debug!(target: "podtrace", kind = %info.kind, object = %format_args!("{}/{}", t.namespace.as_deref().unwrap_or_default(), name), stage = "created");
                self.answer_written(t, kept, revision, &value)
            }
            Outcome::Failed {
                reason: Failure::AlreadyExists,
                ..
            } => Err(ApiError::already_exists(info, &name)),
            other => Err(ApiError::internal(format!(
                "unexpected store outcome {other:?}"
            ))),
        }
    }
}
