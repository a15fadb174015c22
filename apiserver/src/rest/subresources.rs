//! The `binding` and `scale` subresources (status and finalize are updates of the object,
//! in [`super::update`]).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{Cas, respond_json};
use crate::Apiserver;
use crate::error::ApiError;
use crate::object::{self, meta_str};
use crate::patch::{self, PatchType};
use crate::request::{Call, Params, Target};

impl Apiserver {
    pub(super) async fn bind(&self, call: &Call<'_>) -> Result<Response, ApiError> {
        let t = &call.t;
        let info = t.kind.info();
        let name = t.name.as_deref().expect("routed with a name");
        let binding = call.decode()?.object;
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
            if self.cas(t, name, cur.rv, Cas::Put(new)).await?.is_some() {
                tracing::debug!(target: "podtrace", kind = %info.kind, object = %format_args!("{}/{}", t.namespace.as_deref().unwrap_or_default(), name), stage = "bound");
                let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
                return Ok(respond_json(StatusCode::CREATED, &status, &[]));
            }
        }
        Err(ApiError::retries_exhausted(info, name))
    }

    pub(super) fn scale_of(&self, t: &Target, obj: &Value) -> Value {
        let m = obj.get("metadata").cloned().unwrap_or_default();
        let metadata = json!({"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]});
        if let Some(paths) = t.kind.scale_paths() {
            // A custom resource's, where its definition says.
            let selector = paths
                .label_selector
                .as_deref()
                .and_then(|p| obj.pointer(p))
                .and_then(Value::as_str)
                .unwrap_or_default();
            return json!({
                "kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": metadata,
                "spec": {"replicas": obj.pointer(&paths.spec_replicas).cloned().unwrap_or(json!(0))},
                "status": {"replicas": obj.pointer(&paths.status_replicas).cloned().unwrap_or(json!(0)),
                           "selector": selector},
            });
        }
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
        json!({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": metadata,
            "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
            "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": sel},
        })
    }

    pub(super) async fn get_scale(&self, t: &Target) -> Result<Response, ApiError> {
        let cur = self
            .load(t, t.name.as_deref().expect("routed with a name"))
            .await?;
        Ok(respond_json(
            StatusCode::OK,
            &self.scale_of(t, &cur.value),
            &[],
        ))
    }

    pub(super) async fn set_scale(
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
            match t.kind.scale_paths() {
                Some(paths) => set_pointer(&mut new, &paths.spec_replicas, json!(replicas)),
                None => new["spec"]["replicas"] = json!(replicas),
            }
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

/// Sets the value at JSON pointer `at`, making the objects on the way.
fn set_pointer(doc: &mut Value, at: &str, value: Value) {
    let mut here = doc;
    let parts: Vec<&str> = at.split('/').skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        if !here.is_object() {
            *here = json!({});
        }
        let map = here.as_object_mut().expect("made an object");
        if i + 1 == parts.len() {
            map.insert((*part).to_owned(), value);
            return;
        }
        here = map.entry((*part).to_owned()).or_insert_with(|| json!({}));
    }
}
