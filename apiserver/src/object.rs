//! Small helpers over JSON objects: metadata access, timestamps, generated names.

use rand::Rng;
use serde_json::{Map, Value};

/// The current time in Kubernetes' RFC 3339 form (seconds precision, `Z`).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A time `secs` seconds from now, in the same form.
pub fn now_plus(secs: i64) -> String {
    let t = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `metadata` as a map, created if missing.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let o = obj.as_object_mut().expect("objects are JSON objects");
    let m = o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut().expect("made an object above")
}

/// A string field of `metadata`.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// `metadata.resourceVersion` as a revision.
pub fn revision(obj: &Value) -> Option<u64> {
    meta_str(obj, "resourceVersion")?.parse().ok()
}

/// A JSON object, as a value or as its map.
pub trait Fields {
    /// Field `key`, if present.
    fn field(&self, key: &str) -> Option<&Value>;
}

impl Fields for Value {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

impl Fields for Map<String, Value> {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

/// The elements of `obj`'s array field `key` (none when it is absent or not an array).
pub fn each<'a, O: Fields + ?Sized>(
    obj: &'a O,
    key: &str,
) -> impl Iterator<Item = &'a Value> + use<'a, O> {
    obj.field(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// `metadata.finalizers`.
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `metadata.labels`.
pub fn labels(obj: &Value) -> std::collections::BTreeMap<String, String> {
    obj.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A `generateName` suffix: five characters from Kubernetes' alphabet (no vowels, no
/// confusable digits), as `names.SimpleNameGenerator`.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Whether two objects differ outside `metadata` and `status` (a spec change, which bumps
/// `metadata.generation`).
pub fn spec_changed(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    strip(a) != strip(b)
}

/// Whether two objects are equal apart from `metadata.resourceVersion` and `managedFields`
/// timestamps (an update that changes nothing writes nothing).
pub fn same_object(a: &Value, b: &Value) -> bool {
    // Compared in place: cloning both objects to strip the fields cost 2% of the server's
    // CPU under a stream of pod status writes.
    let (Some(ma), Some(mb)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let empty = Value::Object(Map::new());
    let (meta_a, meta_b) = (
        ma.get("metadata").unwrap_or(&empty),
        mb.get("metadata").unwrap_or(&empty),
    );
    equal_but(ma, mb, "metadata", |_, v, w| v == w)
        && match (meta_a.as_object(), meta_b.as_object()) {
            (Some(x), Some(y)) => equal_but(x, y, "resourceVersion", |k, v, w| match (k, v, w) {
                ("managedFields", Value::Array(x), Value::Array(y)) => {
                    x.len() == y.len()
                        && x.iter()
                            .zip(y)
                            .all(|(e, f)| match (e.as_object(), f.as_object()) {
                                (Some(e), Some(f)) => equal_but(e, f, "time", |_, v, w| v == w),
                                _ => e == f,
                            })
                }
                _ => v == w,
            }),
            _ => meta_a == meta_b,
        }
}

/// Whether two maps have the same keys, `skip` aside, and `eq(key, a's value, b's value)` for
/// each.
fn equal_but(
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    skip: &str,
    eq: impl Fn(&str, &Value, &Value) -> bool,
) -> bool {
    let counted = |m: &Map<String, Value>| m.keys().filter(|k| *k != skip).count();
    counted(a) == counted(b)
        && a.iter()
            .filter(|(k, _)| *k != skip)
            .all(|(k, v)| b.get(k).is_some_and(|w| eq(k, v, w)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn generation_should_follow_spec_changes_only() {
        let a = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1}, "status": {"y": 1}});
        let b = json!({"metadata": {"labels": {"a": "2"}}, "spec": {"x": 1}, "status": {"y": 2}});
        let c = json!({"metadata": {}, "spec": {"x": 2}});
        assert!(!spec_changed(&a, &b));
        assert!(spec_changed(&a, &c));
    }

    #[test]
    fn same_object_ignores_the_resource_version_and_managed_field_times_only() {
        let a = json!({"metadata": {"name": "a", "resourceVersion": "1", "managedFields": [
            {"manager": "m", "time": "2026-01-01T00:00:00Z", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"x": 1}});
        let mut b = a.clone();
        b["metadata"]["resourceVersion"] = json!("2");
        b["metadata"]["managedFields"][0]["time"] = json!("2026-02-01T00:00:00Z");
        assert!(same_object(&a, &b));
        let mut no_rv = a.clone();
        no_rv["metadata"]
            .as_object_mut()
            .expect("meta")
            .remove("resourceVersion");
        assert!(same_object(&a, &no_rv));
        for change in [
            json!({"spec": {"x": 2}}),
            json!({"status": {}}),
            json!({"metadata": {"labels": {"a": "b"}}}),
            json!({"metadata": {"managedFields": [{"manager": "n", "time": "2026-01-01T00:00:00Z", "fieldsV1": {"f:spec": {}}}]}}),
            json!({"metadata": {"managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}, "operation": "Update"}]}}),
        ] {
            let mut c = a.clone();
            json_patch::merge(&mut c, &change);
            assert!(!same_object(&a, &c), "{change}");
            assert!(!same_object(&c, &a), "{change}");
        }
        let bare = json!({"spec": {}});
        assert!(same_object(&bare, &json!({"metadata": {}, "spec": {}})));
    }

    #[test]
    fn names_should_use_the_kubernetes_alphabet() {
        let s = name_suffix();
        assert_eq!(s.len(), 5);
        assert!(
            s.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
    }
}
