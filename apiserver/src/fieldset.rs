//! Field sets as server-side apply tracks them (`managedFields[].fieldsV1`): which leaf
//! fields of an object a manager owns. Paths use the FieldsV1 tokens: `f:<field>`,
//! `k:<merge key JSON>` for items of keyed lists, `v:<value JSON>` for set members, and
//! `.` for a list item itself.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::patch::{ListType, ListTypes};

/// One path to a leaf.
pub(crate) type FieldPath = Vec<String>;

/// A set of leaf paths.
pub(crate) type FieldSet = BTreeSet<FieldPath>;

/// Fields nobody manages: identity and server-set metadata.
fn ignored(path: &[String], key: &str) -> bool {
    match path {
        [] => matches!(key, "apiVersion" | "kind" | "status"),
        [m] if m == "f:metadata" => matches!(
            key,
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
                | "selfLink"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "generateName"
        ),
        _ => false,
    }
}

fn field_names(path: &[String]) -> Vec<String> {
    path.iter()
        .filter_map(|t| t.strip_prefix("f:").map(str::to_string))
        .collect()
}

/// `k:{"key":value,...}` for an item of a keyed list (`None` when it lacks a key).
fn key_token(keys: &[String], item: &Value) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k)?.clone());
    }
    Some(format!("k:{}", Value::Object(m)))
}

/// The leaf paths set in `obj`, whose lists are of the types `lists` says. With
/// `include_status`, `status` is walked too (for the status subresource).
pub(crate) fn of_object(obj: &Value, include_status: bool, lists: ListTypes<'_>) -> FieldSet {
    walk(obj, None, false, include_status, lists).0
}

/// [`of_object`] of `new`, and those of its paths whose value `old` does not have (a leaf that
/// differs or is absent; a list item `old` lacks) — what an update changes, found in one walk
/// of both objects (looking each path up from the root, with its merge keys parsed again, cost
/// a status update more than the rest of its bookkeeping). Without `old` every path changed.
pub(crate) fn of_update(
    new: &Value,
    old: Option<&Value>,
    include_status: bool,
    lists: ListTypes<'_>,
) -> (FieldSet, FieldSet) {
    match old {
        Some(_) => walk(new, old, true, include_status, lists),
        None => {
            let present = of_object(new, include_status, lists);
            (present.clone(), present)
        }
    }
}

/// The paths of `new`, and with `track` those `old` lacks.
fn walk(
    new: &Value,
    old: Option<&Value>,
    track: bool,
    include_status: bool,
    lists: ListTypes<'_>,
) -> (FieldSet, FieldSet) {
    let mut walk = Walk {
        path: Vec::new(),
        present: FieldSet::new(),
        changed: FieldSet::new(),
        track,
        lists,
    };
    if let Value::Object(m) = new {
        for (k, v) in m {
            if ignored(&walk.path, k) && !(include_status && k == "status") {
                continue;
            }
            walk.field(k, v, old.and_then(|o| o.get(k)));
        }
    }
    (walk.present, walk.changed)
}

struct Walk<'l> {
    path: FieldPath,
    present: FieldSet,
    changed: FieldSet,
    track: bool,
    lists: ListTypes<'l>,
}

impl Walk<'_> {
    /// A leaf (or list item) at the current path, changed when `differs`.
    fn leaf(&mut self, path: FieldPath, differs: bool) {
        if self.track && differs {
            self.changed.insert(path.clone());
        }
        self.present.insert(path);
    }

    /// Field `key` of the current path, `v` in the new object, `old` what the old one has there.
    fn field(&mut self, key: &str, v: &Value, old: Option<&Value>) {
        self.path.push(format!("f:{key}"));
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    if ignored(&self.path, k) {
                        continue;
                    }
                    self.field(k, child, old.and_then(|o| o.get(k)));
                }
            }
            Value::Array(items) if !items.is_empty() => {
                let names = field_names(&self.path[..self.path.len() - 1]);
                let old_items = old.and_then(Value::as_array);
                match (self.lists)(&names, key) {
                    ListType::Map(keys) if items.iter().all(|i| key_token(&keys, i).is_some()) => {
                        for item in items {
                            let was = old_items.and_then(|olds| {
                                olds.iter()
                                    .find(|o| keys.iter().all(|k| o.get(k) == item.get(k)))
                            });
                            self.path
                                .push(key_token(&keys, item).expect("checked above"));
                            let mut dot = self.path.clone();
                            dot.push(".".into());
                            self.leaf(dot, was.is_none());
                            if let Value::Object(m) = item {
                                for (k, child) in m {
                                    self.field(k, child, was.and_then(|w| w.get(k)));
                                }
                            }
                            self.path.pop();
                        }
                    }
                    ListType::Set => {
                        for item in items {
                            let mut p = self.path.clone();
                            p.push(format!("v:{item}"));
                            let had = old_items.is_some_and(|olds| olds.contains(item));
                            self.leaf(p, !had);
                        }
                    }
                    _ => self.leaf(self.path.clone(), old != Some(v)),
                }
            }
            _ => self.leaf(self.path.clone(), old != Some(v)),
        }
        self.path.pop();
    }
}

/// The value at a path (`None` when absent). For `.` and `v:` tokens the value is the item.
pub(crate) fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for token in path {
        if let Some(f) = token.strip_prefix("f:") {
            cur = cur.get(f)?;
        } else if let Some(k) = token.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur = cur
                .as_array()?
                .iter()
                .find(|item| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))?;
        } else if let Some(v) = token.strip_prefix("v:") {
            let want: Value = serde_json::from_str(v).ok()?;
            cur = cur.as_array()?.iter().find(|item| **item == want)?;
        } else if token == "." {
            // the item itself
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Removes the field at a path from `obj` (an item for `.`/`v:` paths).
pub(crate) fn remove(obj: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    if last == "." {
        let Some((item, list_path)) = parent_path.split_last() else {
            return;
        };
        remove_item(obj, list_path, item);
        return;
    }
    if last.starts_with("v:") {
        remove_item(obj, parent_path, last);
        return;
    }
    if let Some(f) = last.strip_prefix("f:")
        && let Some(parent) = value_at_mut(obj, parent_path)
        && let Some(m) = parent.as_object_mut()
    {
        m.remove(f);
    }
}

fn remove_item(obj: &mut Value, list_path: &[String], token: &str) {
    let Some(list) = value_at_mut(obj, list_path).and_then(Value::as_array_mut) else {
        return;
    };
    if let Some(k) = token.strip_prefix("k:") {
        if let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) {
            list.retain(|item| !key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)));
        }
    } else if let Some(v) = token.strip_prefix("v:")
        && let Ok(want) = serde_json::from_str::<Value>(v)
    {
        list.retain(|item| *item != want);
    }
}

fn value_at_mut<'a>(obj: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = obj;
    for token in path {
        if let Some(f) = token.strip_prefix("f:") {
            cur = cur.get_mut(f)?;
        } else if let Some(k) = token.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur = cur
                .as_array_mut()?
                .iter_mut()
                .find(|item| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))?;
        } else if token != "." {
            return None;
        }
    }
    Some(cur)
}

/// Encodes a set as a `fieldsV1` tree.
pub(crate) fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for token in path {
            cur = cur
                .entry(token.clone())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("fieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

/// Decodes a `fieldsV1` tree into its leaf paths.
pub(crate) fn from_fields_v1(v: &Value) -> FieldSet {
    fn rec(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    rec(child, path, out);
                    path.pop();
                }
            }
            _ => {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = FieldSet::new();
    rec(v, &mut Vec::new(), &mut out);
    out
}

/// Renders a path for conflict messages: `.spec.containers[name="web"].image`.
pub(crate) fn display(path: &[String]) -> String {
    let mut s = String::new();
    for token in path {
        if let Some(f) = token.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = token.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(kk, kv)| format!("{kk}={kv}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = token.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_should_round_trip_through_fields_v1() {
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"app": "x"}, "finalizers": ["a/b"]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "w:1", "args": ["-v"]}]}}}});
        let set = of_object(&obj, false, &crate::patch::builtin_list_type);
        let leaves: Vec<String> = set.iter().map(|p| display(p)).collect();
        assert!(leaves.contains(&".spec.replicas".to_string()));
        assert!(leaves.contains(&".spec.template.spec.containers[name=\"web\"].image".to_string()));
        assert!(leaves.contains(&".metadata.labels.app".to_string()));
        assert!(
            !leaves.iter().any(|l| l == ".metadata.name"),
            "identity is not managed"
        );
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
        let image = set
            .iter()
            .find(|p| display(p).ends_with("image"))
            .expect("image path");
        assert_eq!(value_at(&obj, image), Some(&json!("w:1")));
    }

    #[test]
    fn an_update_should_change_the_paths_whose_values_the_old_object_lacks() {
        let old = json!({"metadata": {"name": "p", "labels": {"a": "1", "b": "2"}, "finalizers": ["f/1"]},
            "spec": {"containers": [{"name": "x", "image": "x:1"}, {"name": "y", "image": "y:1"}],
                "shape": {"nested": true}},
            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}});
        let new = json!({"metadata": {"name": "p", "labels": {"a": "1", "b": "3"}, "finalizers": ["f/1", "f/2"]},
            "spec": {"containers": [{"name": "x", "image": "x:1"}, {"name": "z", "image": "z:1"}],
                "shape": "flat"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"},
                {"type": "Initialized", "status": "True"}]}});
        let lists = &crate::patch::builtin_list_type;
        let (present, changed) = of_update(&new, Some(&old), true, lists);
        assert_eq!(present, of_object(&new, true, lists));
        // What each path's lookup from the root says.
        let expected: FieldSet = present
            .iter()
            .filter(|p| {
                if p.last().is_some_and(|t| t == "." || t.starts_with("v:")) {
                    value_at(&old, p).is_none()
                } else {
                    value_at(&old, p) != value_at(&new, p)
                }
            })
            .cloned()
            .collect();
        assert_eq!(changed, expected);
        let shown: Vec<String> = changed.iter().map(|p| display(p)).collect();
        for path in [
            ".metadata.labels.b",
            ".spec.shape",
            ".status.phase",
            ".status.conditions[type=\"Ready\"].status",
            ".spec.containers[name=\"z\"].image",
        ] {
            assert!(shown.iter().any(|s| s == path), "{path} changed: {shown:?}");
        }
        for path in [".metadata.labels.a", ".spec.containers[name=\"x\"].image"] {
            assert!(!shown.iter().any(|s| s == path), "{path} kept: {shown:?}");
        }
        assert_eq!(
            of_update(&new, None, true, lists).1,
            present,
            "without an old object everything changed"
        );
    }

    #[test]
    fn remove_should_drop_fields_and_keyed_items() {
        let mut obj = json!({"spec": {"a": 1, "containers": [{"name": "x"}, {"name": "y"}]}, "metadata": {"finalizers": ["f/1", "f/2"]}});
        remove(&mut obj, &["f:spec".into(), "f:a".into()]);
        remove(
            &mut obj,
            &[
                "f:spec".into(),
                "f:containers".into(),
                "k:{\"name\":\"x\"}".into(),
                ".".into(),
            ],
        );
        remove(
            &mut obj,
            &[
                "f:metadata".into(),
                "f:finalizers".into(),
                "v:\"f/1\"".into(),
            ],
        );
        assert_eq!(
            obj,
            json!({"spec": {"containers": [{"name": "y"}]}, "metadata": {"finalizers": ["f/2"]}})
        );
    }
}
