//! Delete and delete-collection (`rest/delete.go`): preconditions, propagation policy,
//! finalizers and graceful deletion decide between marking the object and removing it.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{Cas, respond, respond_json};
use crate::Apiserver;
use crate::admission::Operation;
use crate::error::ApiError;
use crate::object::{self, meta_mut, meta_str};
use crate::request::{Call, Params, Target};

/// What a delete answers: the object (still there with a `deletionTimestamp`, or as it was for
/// kinds that return the deleted object), or a success `Status`.
pub(crate) enum Deleted {
    /// The object.
    Object(Value),
    /// A success `Status` about it.
    Status(crate::error::Details),
}

impl Deleted {
    pub(super) fn into_response(self) -> Response {
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
    /// Who asks.
    pub(crate) user: Option<crate::auth::UserInfo>,
}

impl DeleteOptions {
    pub(crate) fn parse(call: &Call<'_>) -> Result<DeleteOptions, ApiError> {
        let q = &call.q;
        let mut o = DeleteOptions {
            grace: Params::int("gracePeriodSeconds", &q.grace_period_seconds)?,
            dry_run: q.dry_run()?,
            policy: q.propagation_policy.clone(),
            user: q.user.clone(),
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
        if !call.bytes().iter().all(u8::is_ascii_whitespace) {
            o.merge(&call.decode()?.object);
        }
        o.checked()
    }

    /// Takes what a `DeleteOptions` object (a delete's body, an Eviction's `deleteOptions`)
    /// sets over what is set already.
    pub(crate) fn merge(&mut self, v: &Value) {
        if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
            self.grace = Some(g);
        }
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            self.policy = Some(p.to_string());
        }
        if let Some(orphan) = v.get("orphanDependents").and_then(Value::as_bool) {
            self.policy
                .get_or_insert_with(|| if orphan { "Orphan" } else { "Background" }.into());
        }
        if let Some(pre) = v.get("preconditions") {
            self.uid = pre.get("uid").and_then(Value::as_str).map(str::to_string);
            self.rv = pre
                .get("resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        if let Some(d) = v.get("dryRun").and_then(Value::as_array) {
            self.dry_run |= d.iter().any(|x| x == "All");
        }
    }

    /// The options, once their propagation policy is known to be one Kubernetes defines.
    pub(crate) fn checked(self) -> Result<DeleteOptions, ApiError> {
        if let Some(p) = self.policy.as_deref()
            && !matches!(p, "Orphan" | "Background" | "Foreground")
        {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
        Ok(self)
    }
}

/// Finalizers that block deletion: `metadata.finalizers`, and those the kind keeps elsewhere.
pub(super) fn pending_finalizers(t: &Target, obj: &Value) -> usize {
    object::finalizers(obj).len() + t.kind.spec_finalizers(obj)
}

impl Apiserver {
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
            let req = self.admission_request(
                t,
                Operation::Delete,
                name,
                Some(&cur.value),
                opts.dry_run,
                opts.user.as_ref(),
            );
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
                match self.cas(t, name, cur.rv, Cas::Put(new)).await? {
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

    pub(super) async fn delete_collection(&self, call: &Call<'_>) -> Result<Response, ApiError> {
        let (t, q) = (&call.t, &call.q);
        let opts = DeleteOptions::parse(call)?;
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
}
