//! Reading only what selectors look at from an object's JSON: `metadata.labels` and a few
//! dotted field paths, skipping everything else without building it (a pod's spec and
//! managed fields are most of its bytes).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

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
}

/// What was read.
struct Found<'a> {
    labels: &'a mut BTreeMap<String, String>,
    values: &'a mut [String],
}

struct Walk<'l, 'f, 'a> {
    level: &'l Level,
    found: &'f mut Found<'a>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    // A level that is not an object holds none of the paths below it.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let Some((_, next)) = self.level.children.iter().find(|(n, _)| *n == *key) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if let Some(i) = next.field {
                // As field selectors compare it: a string as is, null as empty, else its JSON.
                self.found.values[i] = match map.next_value::<Value>()? {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
            } else if next.labels {
                if let Value::Object(labels) = map.next_value::<Value>()? {
                    *self.found.labels = labels
                        .into_iter()
                        .filter_map(|(k, v)| match v {
                            Value::String(s) => Some((k, s)),
                            _ => None,
                        })
                        .collect();
                }
            } else {
                map.next_value_seed(Walk {
                    level: next,
                    found: self.found,
                })?;
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
    let mut labels = BTreeMap::new();
    let mut values = vec![String::new(); paths.len()];
    let mut found = Found {
        labels: &mut labels,
        values: &mut values,
    };
    let mut de = serde_json::Deserializer::from_slice(raw);
    Walk {
        level: &root,
        found: &mut found,
    }
    .deserialize(&mut de)
    .ok()?;
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
