//! Reading only what selectors look at from an object's JSON: `metadata.labels` and a few
//! dotted field paths. Each object level on the way is read as borrowed raw values, so the
//! rest (a pod's spec and managed fields are most of its bytes) is skipped, never built.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use serde_json::value::RawValue;

/// The paths below one object level.
#[derive(Default)]
struct Level {
    children: Vec<(String, Level)>,
    /// The index of the field whose value this is.
    field: Option<usize>,
    /// `metadata.labels`.
    labels: bool,
}

impl Level {
    fn child(&mut self, name: &str) -> &mut Level {
        let at = match self.children.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.children.push((name.to_owned(), Level::default()));
                self.children.len() - 1
            }
        };
        &mut self.children[at].1
    }

    /// Reads this level's paths from `json`; a level that is not an object holds none.
    fn walk(
        &self,
        json: &str,
        labels: &mut BTreeMap<String, String>,
        values: &mut [String],
    ) -> serde_json::Result<()> {
        if !json.trim_start().starts_with('{') {
            return Ok(());
        }
        let members: HashMap<Cow<'_, str>, &RawValue> = serde_json::from_str(json)?;
        for (name, next) in &self.children {
            let Some(raw) = members.get(name.as_str()) else {
                continue;
            };
            if let Some(i) = next.field {
                // As field selectors compare it: a string as is, null as empty, else its JSON.
                values[i] = match serde_json::from_str::<Value>(raw.get())? {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
            } else if next.labels {
                if let Value::Object(found) = serde_json::from_str::<Value>(raw.get())? {
                    *labels = found
                        .into_iter()
                        .filter_map(|(k, v)| match v {
                            Value::String(s) => Some((k, s)),
                            _ => None,
                        })
                        .collect();
                }
            } else {
                next.walk(raw.get(), labels, values)?;
            }
        }
        Ok(())
    }
}

/// `metadata.labels` (string values) and the string form of each of `paths` (absent: empty),
/// read from `raw`; none if `raw` is not JSON.
pub(crate) fn read(raw: &[u8], paths: &[&str]) -> Option<(BTreeMap<String, String>, Vec<String>)> {
    let mut root = Level::default();
    root.child("metadata").child("labels").labels = true;
    for (i, path) in paths.iter().enumerate() {
        let mut level = &mut root;
        for part in path.split('.') {
            level = level.child(part);
        }
        level.field = Some(i);
    }
    let json = std::str::from_utf8(raw).ok()?;
    let mut labels = BTreeMap::new();
    let mut values = vec![String::new(); paths.len()];
    root.walk(json, &mut labels, &mut values).ok()?;
    Some((labels, values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmkube_api::field::FieldSelector;

    /// The reader agrees with parsing the whole object, for present, absent, null, numeric,
    /// nested and non-object fields, and labels with a non-string value.
    #[test]
    fn reading_selected_fields_should_agree_with_parsing_the_whole_object() {
        let objects = [
            serde_json::json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web", "n": 3},
                "managedFields": [{"manager": "x", "fieldsV1": {"f:spec": {}}}]},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}], "priority": 7},
                "status": {"phase": "Running", "podIP": null}}),
            serde_json::json!({"metadata": {"name": "q"}, "spec": "not an object", "status": [1, 2]}),
            serde_json::json!({"kind": "Event", "involvedObject": {"kind": "Pod", "name": "p", "uid": "u"}, "type": "Normal",
                "source": {"component": "wasmlet"}, "metadata": {"name": "e", "namespace": "default", "labels": {}}}),
            serde_json::json!({}),
            serde_json::json!({"metadata": {"name": "r", "labels": null}, "spec": {"nodeName": 5}}),
        ];
        let paths = [
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.priority",
            "status.phase",
            "status.podIP",
            "involvedObject.kind",
            "involvedObject.name",
            "type",
            "source.component",
            "spec.missing.deeper",
        ];
        for obj in &objects {
            let raw = serde_json::to_vec(obj).expect("JSON");
            let (labels, values) = read(&raw, &paths).expect("JSON object");
            assert_eq!(labels, crate::object::labels(obj), "{obj}");
            let whole: Vec<String> = paths
                .iter()
                .map(|p| FieldSelector::field_value(obj, p))
                .collect();
            assert_eq!(values, whole, "{obj}");
        }
        assert!(read(b"{not json", &paths).is_none());
    }
}
