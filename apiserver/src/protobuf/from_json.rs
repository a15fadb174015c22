//! A Kubernetes JSON object → a protobuf message, walking the message's descriptor. Every
//! key must name a field (`apiVersion` and `kind` excepted: the envelope carries them); a key
//! the schema does not know is an error, never dropped.

use base64::Engine as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value as Pb,
};
use serde_json::Value;

use super::special::{self, Special};
use super::{Error, to_json};

/// `json` as a message of type `desc`; `path` names it in errors.
pub(super) fn message(
    desc: &MessageDescriptor,
    json: &Value,
    path: &str,
) -> Result<DynamicMessage, Error> {
    let mut m = DynamicMessage::new(desc.clone());
    if let Some(s) = Special::of(desc) {
        special(s, &mut m, json, path)?;
        return Ok(m);
    }
    let Value::Object(obj) = json else {
        return Err(mismatch(path, "an object", json));
    };
    // Keys of embedded (`inline`) structs, gathered per embedding field.
    let mut inline: Vec<(FieldDescriptor, serde_json::Map<String, Value>)> = desc
        .fields()
        .filter(|f| to_json::is_inline(desc, f.name()))
        .map(|f| (f, serde_json::Map::new()))
        .collect();
    for (key, v) in obj {
        if v.is_null() {
            continue;
        }
        let name = special::proto_name(desc, key);
        let Some(field) = desc.get_field_by_name(name) else {
            if let Some((_, keys)) = inline
                .iter_mut()
                .find(|(f, _)| f.kind().as_message().is_some_and(|m| knows(m, key)))
            {
                keys.insert(key.clone(), v.clone());
                continue;
            }
            if matches!(key.as_str(), "apiVersion" | "kind") {
                continue;
            }
            return Err(Error::UnknownField(join(path, key)));
        };
        let path = join(path, key);
        let value = field_value(&field, v, &path)?;
        m.set_field(&field, value);
    }
    for (field, keys) in inline {
        if !keys.is_empty() {
            let value = field_value(&field, &Value::Object(keys), path)?;
            m.set_field(&field, value);
        }
    }
    Ok(m)
}

/// Whether a JSON key names a field of `desc` or of a struct embedded in it.
fn knows(desc: &MessageDescriptor, key: &str) -> bool {
    desc.get_field_by_name(special::proto_name(desc, key))
        .is_some()
        || desc.fields().any(|f| {
            to_json::is_inline(desc, f.name())
                && f.kind().as_message().is_some_and(|m| knows(m, key))
        })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn mismatch(path: &str, want: &str, got: &Value) -> Error {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    Error::Malformed(format!("{path}: expected {want}, got {got}"))
}

fn field_value(field: &FieldDescriptor, v: &Value, path: &str) -> Result<Pb, Error> {
    if field.is_map() {
        let Value::Object(obj) = v else {
            return Err(mismatch(path, "an object", v));
        };
        let entry = field.kind();
        let entry = entry.as_message().expect("a map field's kind is its entry");
        let value_kind = entry.map_entry_value_field().kind();
        let mut map = std::collections::HashMap::with_capacity(obj.len());
        for (k, item) in obj {
            map.insert(
                MapKey::String(k.clone()),
                single(&value_kind, item, &join(path, k))?,
            );
        }
        return Ok(Pb::Map(map));
    }
    if field.is_list() {
        let Value::Array(items) = v else {
            return Err(mismatch(path, "a list", v));
        };
        let kind = field.kind();
        return Ok(Pb::List(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| single(&kind, item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ));
    }
    single(&field.kind(), v, path)
}

fn single(kind: &Kind, v: &Value, path: &str) -> Result<Pb, Error> {
    let int = |lo: i64, hi: i64| {
        v.as_i64()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| mismatch(path, "an integer in range", v))
    };
    Ok(match kind {
        Kind::Message(desc) => Pb::Message(message(desc, v, path)?),
        Kind::String => Pb::String(
            v.as_str()
                .ok_or_else(|| mismatch(path, "a string", v))?
                .to_string(),
        ),
        Kind::Bool => Pb::Bool(v.as_bool().ok_or_else(|| mismatch(path, "a boolean", v))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Pb::I32(int(i32::MIN.into(), i32::MAX.into())? as i32)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Pb::I64(int(i64::MIN, i64::MAX)?),
        Kind::Uint32 | Kind::Fixed32 => Pb::U32(int(0, u32::MAX.into())? as u32),
        Kind::Uint64 | Kind::Fixed64 => Pb::U64(
            v.as_u64()
                .ok_or_else(|| mismatch(path, "an unsigned integer", v))?,
        ),
        Kind::Double => Pb::F64(v.as_f64().ok_or_else(|| mismatch(path, "a number", v))?),
        Kind::Float => Pb::F32(v.as_f64().ok_or_else(|| mismatch(path, "a number", v))? as f32),
        Kind::Bytes => {
            let text = v.as_str().ok_or_else(|| mismatch(path, "base64 text", v))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| Error::Malformed(format!("{path}: {e}")))?;
            Pb::Bytes(bytes.into())
        }
        Kind::Enum(_) => Pb::EnumNumber(int(i32::MIN.into(), i32::MAX.into())? as i32),
    })
}

fn set(m: &mut DynamicMessage, name: &str, v: Pb) {
    m.set_field_by_name(name, v);
}

fn special(s: Special, m: &mut DynamicMessage, json: &Value, path: &str) -> Result<(), Error> {
    let desc = m.descriptor();
    let field = |name: &str| {
        desc.get_field_by_name(name)
            .expect("a special message's field")
    };
    match s {
        Special::Time | Special::MicroTime => {
            let text = json
                .as_str()
                .ok_or_else(|| mismatch(path, "an RFC 3339 time", json))?;
            let (seconds, nanos) = special::parse_time(text).ok_or_else(|| {
                Error::Malformed(format!("{path}: {text:?} is not an RFC 3339 time"))
            })?;
            set(m, "seconds", Pb::I64(seconds));
            set(
                m,
                "nanos",
                Pb::I32(if s == Special::MicroTime { nanos } else { 0 }),
            );
        }
        Special::Duration => {
            let text = json
                .as_str()
                .ok_or_else(|| mismatch(path, "a duration", json))?;
            let ns = special::parse_duration(text)
                .ok_or_else(|| Error::Malformed(format!("{path}: {text:?} is not a duration")))?;
            set(m, "duration", Pb::I64(ns));
        }
        Special::Quantity => {
            let text = match json {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => return Err(mismatch(path, "a quantity", other)),
            };
            set(m, "string", Pb::String(text));
        }
        Special::IntOrString => match json {
            Value::String(text) => {
                set(m, "type", Pb::I64(1));
                set(m, "strVal", Pb::String(text.clone()));
            }
            Value::Number(_) => {
                let n = json
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| mismatch(path, "a 32-bit integer", json))?;
                set(m, "type", Pb::I64(0));
                set(m, "intVal", Pb::I32(n));
            }
            other => return Err(mismatch(path, "an integer or a string", other)),
        },
        Special::Raw => {
            let raw = desc.fields().next().expect("one bytes field");
            let bytes = serde_json::to_vec(json).expect("JSON serializes");
            m.set_field(&raw, Pb::Bytes(bytes.into()));
        }
        Special::Items => {
            let f = field("items");
            let v = field_value(&f, json, path)?;
            m.set_field(&f, v);
        }
        Special::OrBool => match json {
            Value::Bool(b) => set(m, "allows", Pb::Bool(*b)),
            other => {
                let f = field("schema");
                let v = field_value(&f, other, path)?;
                m.set_field(&f, v);
                set(m, "allows", Pb::Bool(true));
            }
        },
        Special::OrArray | Special::OrStringArray => {
            let (name, list) = if s == Special::OrArray {
                ("schema", "jSONSchemas")
            } else {
                ("schema", "property")
            };
            let f = field(if json.is_array() { list } else { name });
            let v = field_value(&f, json, path)?;
            m.set_field(&f, v);
        }
    }
    Ok(())
}
