//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and Kubernetes'
//! strategic merge patch for the built-in kinds, whose list fields merge by key
//! (`patchMergeKey`/`patchStrategy` struct tags in `k8s.io/api`).

use serde_json::{Map, Value};

use crate::error::ApiError;

/// The patch types of `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The patch type of a content type.
    ///
    /// # Errors
    /// 415 for anything else.
    pub fn from_content_type(ct: &str) -> Result<PatchType, ApiError> {
        match ct {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" => Ok(PatchType::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Applies a JSON, merge or strategic patch to `target`.
///
/// # Errors
/// 400 (or 422 for a failed JSON-patch `test`) when the patch is malformed or does not apply.
pub fn apply(kind: PatchType, target: &Value, body: &[u8]) -> Result<Value, ApiError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch).map_err(|e| {
                ApiError::bad_request(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
            let mut doc = target.clone();
            for (i, op) in ops.0.into_iter().enumerate() {
                // As kube-apiserver's JSON patch does, a `test` for null passes on an absent
                // value (kube-rs' finalizer helper tests `/metadata/finalizers` so).
                if let json_patch::PatchOperation::Test(t) = &op
                    && t.value.is_null()
                    && doc.pointer(t.path.as_str()).is_none()
                {
                    continue;
                }
                json_patch::patch(&mut doc, &[op]).map_err(|e| {
                    let why = format!(
                        "the server rejected our request due to an error in our request: \
                         operation '/{i}' failed at path '{}': {}",
                        e.path, e.kind
                    );
                    match e.kind {
                        json_patch::PatchErrorKind::TestFailed => ApiError::unprocessable(why),
                        _ => ApiError::bad_request(why),
                    }
                })?;
            }
            Ok(doc)
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let mut doc = target.clone();
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
        PatchType::Strategic => {
            let Value::Object(p) = patch else {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            };
            let mut doc = target.clone();
            strategic_merge(&mut doc, &p, &mut Vec::new())?;
            Ok(doc)
        }
        PatchType::Apply => Err(ApiError::internal(
            "apply patches are handled by server-side apply",
        )),
    }
}

/// The merge key of a list field, by its name and where it sits.
pub(crate) fn merge_key(path: &[String], field: &str) -> Option<&'static str> {
    let in_container = path.iter().any(|p| {
        matches!(
            p.as_str(),
            "containers" | "initContainers" | "ephemeralContainers"
        )
    });
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "secrets"
        | "resourceClaims"
        | "containerStatuses"
        | "initContainerStatuses" => "name",
        "ports" if in_container => "containerPort",
        "ports" if path.last().is_some_and(|p| p == "spec") => "port",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        "addresses" if path.last().is_some_and(|p| p == "status") => "type",
        "podIPs" | "hostIPs" => "ip",
        _ => return None,
    })
}

/// Lists of scalars that merge as sets instead of being replaced.
fn merges_primitives(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// How a list field merges and which of its parts a manager owns (`x-kubernetes-list-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// Items are objects told apart by these keys (`map`, `x-kubernetes-list-map-keys`; a
    /// built-in kind's patch merge key).
    Map(Vec<String>),
    /// Items are scalars, each present once (`set`).
    Set,
    /// The list is one value, replaced whole (`atomic`).
    Atomic,
}

/// The list type of field `field` below the fields `path`, of some kind.
pub(crate) type ListTypes<'a> = &'a dyn Fn(&[String], &str) -> ListType;

/// The built-in kinds' list types: their patch merge keys, `finalizers` as a set.
pub(crate) fn builtin_list_type(path: &[String], field: &str) -> ListType {
    match merge_key(path, field) {
        Some(k) => ListType::Map(vec![k.to_owned()]),
        None if merges_primitives(field) => ListType::Set,
        None => ListType::Atomic,
    }
}

/// Whether `item` has `keys` with the values `of` has.
fn same_key(keys: &[String], item: &Value, of: &Map<String, Value>) -> bool {
    keys.iter().all(|k| item.get(k) == of.get(k))
}

fn directive_err(msg: String) -> ApiError {
    ApiError::bad_request(format!("unable to apply strategic merge patch: {msg}"))
}

/// Merges `patch` into `doc` strategically. `path` holds the field names above `doc`.
pub(crate) fn strategic_merge(
    doc: &mut Value,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<(), ApiError> {
    merge_by(doc, patch, path, &builtin_list_type)
}

/// [`strategic_merge`] with the list types `lists` (a custom kind's, from its schema).
pub(crate) fn merge_by(
    doc: &mut Value,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
    lists: ListTypes<'_>,
) -> Result<(), ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = patch.clone();
            p.remove("$patch");
            *doc = Value::Object(p);
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(directive_err(format!("unknown patch type {other:?}"))),
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let obj = doc.as_object_mut().expect("made an object above");
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        obj.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, pv) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Value::Array(del)) = (obj.get_mut(field), pv) {
                cur.retain(|v| !del.contains(v));
            }
            continue;
        }
        if pv.is_null() {
            obj.remove(key);
            continue;
        }
        path.push(key.clone());
        let result = merge_field(obj, key, pv, patch, path, lists);
        path.pop();
        result?;
    }
    Ok(())
}

fn merge_field(
    obj: &mut Map<String, Value>,
    key: &str,
    pv: &Value,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
    lists: ListTypes<'_>,
) -> Result<(), ApiError> {
    let parent = &path[..path.len() - 1];
    match pv {
        Value::Object(pm) => {
            let cur = obj.entry(key.to_string()).or_insert(Value::Null);
            merge_by(cur, pm, path, lists)?;
            if cur.is_null() {
                obj.remove(key);
            }
        }
        Value::Array(items) => {
            let order = patch
                .get(&format!("$setElementOrder/{key}"))
                .and_then(Value::as_array);
            let list_type = lists(parent, key);
            if let ListType::Map(keys) = &list_type {
                let replace = items
                    .iter()
                    .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
                let mut cur = match obj.remove(key) {
                    Some(Value::Array(a)) if !replace => a,
                    _ => Vec::new(),
                };
                for item in items {
                    let Value::Object(im) = item else {
                        return Err(directive_err(format!("{key}: list items must be objects")));
                    };
                    if im.get("$patch").and_then(Value::as_str) == Some("replace") {
                        continue;
                    }
                    if let Some(missing) = keys.iter().find(|k| !im.contains_key(k.as_str())) {
                        return Err(directive_err(format!(
                            "map: {im:?} does not contain declared merge key: {missing}"
                        )));
                    }
                    let pos = cur.iter().position(|c| same_key(keys, c, im));
                    if im.get("$patch").and_then(Value::as_str) == Some("delete") {
                        cur.retain(|c| !same_key(keys, c, im));
                        continue;
                    }
                    match pos {
                        Some(i) => merge_by(&mut cur[i], im, path, lists)?,
                        None => {
                            let mut fresh = Value::Object(Map::new());
                            merge_by(&mut fresh, im, path, lists)?;
                            cur.push(fresh);
                        }
                    }
                }
                if let Some(order) = order {
                    let rank = |v: &Value| {
                        order
                            .iter()
                            .position(|o| {
                                o.as_object().is_some_and(|o| {
                                    keys.iter().all(|k| o.contains_key(k.as_str()))
                                        && same_key(keys, v, o)
                                })
                            })
                            .unwrap_or(usize::MAX)
                    };
                    cur.sort_by_key(|v| rank(v));
                }
                obj.insert(key.to_string(), Value::Array(cur));
            } else if list_type == ListType::Set {
                let mut cur = match obj.remove(key) {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                for item in items {
                    if !cur.contains(item) {
                        cur.push(item.clone());
                    }
                }
                obj.insert(key.to_string(), Value::Array(cur));
            } else {
                obj.insert(key.to_string(), pv.clone());
            }
        }
        scalar => {
            obj.insert(key.to_string(), scalar.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(doc: Value, patch: Value) -> Value {
        apply(PatchType::Strategic, &doc, patch.to_string().as_bytes()).expect("patch applies")
    }

    #[test]
    fn strategic_patch_should_merge_containers_by_name() {
        let doc = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}]}}}});
        let out = smp(
            doc,
            json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}]}}}}),
        );
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().expect("list").len(), 2, "b is kept");
        assert_eq!(cs[0]["image"], "a:2");
        assert_eq!(
            cs[0]["env"].as_array().expect("env").len(),
            2,
            "env merges by name"
        );
    }

    #[test]
    fn strategic_patch_should_honour_directives() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}},
                         "spec": {"containers": [{"name": "a"}, {"name": "b"}], "ports": [{"port": 80}, {"port": 81}]}});
        let out = smp(
            doc,
            json!({
            "metadata": {"finalizers": ["c"], "labels": {"x": null}, "$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {"containers": [{"name": "a", "$patch": "delete"}],
                     "$setElementOrder/ports": [{"port": 81}, {"port": 80}], "ports": [{"port": 80, "name": "http"}]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 81}, {"port": 80, "name": "http"}])
        );
    }

    #[test]
    fn strategic_patch_should_replace_unkeyed_lists_and_retain_keys() {
        let doc = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                                   "args": ["a", "b"]}});
        let out = smp(
            doc,
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}, "args": ["c"]}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(out["spec"]["args"], json!(["c"]));
    }

    #[test]
    fn malformed_patches_should_be_bad_requests() {
        let doc = json!({"a": 1});
        assert_eq!(
            apply(PatchType::Merge, &doc, b"{")
                .expect_err("bad json")
                .code,
            400
        );
        assert_eq!(
            apply(PatchType::Json, &doc, b"{\"op\":1}")
                .expect_err("bad ops")
                .code,
            400
        );
        let failed = apply(
            PatchType::Json,
            &doc,
            br#"[{"op":"test","path":"/a","value":2}]"#,
        );
        assert_eq!(failed.expect_err("test op fails").code, 422);
        let missing = apply(PatchType::Json, &doc, br#"[{"op":"remove","path":"/zz"}]"#);
        assert_eq!(missing.expect_err("no such path").code, 400);
    }
}
