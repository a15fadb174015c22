//! A decoded protobuf message → its Kubernetes JSON form, walking the message's descriptor.
//!
//! Go's generated protobuf code writes every non-pointer field, set or not, so a Go client's
//! message carries empty strings and zero numbers where its JSON would leave the field out
//! (`omitempty`). Those are left out here for strings (an empty string means "unset" in every
//! kind served), and for the few non-pointer numbers and booleans where a zero would read as a
//! request ([`GO_ZEROS`]: a host port, node port or probe threshold of 0). Every other number and
//! boolean is kept as sent: pointer fields (`replicas: 0`, `automountServiceAccountToken:
//! false`) are only written when set, and their zero is meaningful.

use base64::Engine as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, MapKey, MessageDescriptor, ReflectMessage, Value as Pb,
};
use serde_json::{Map, Value};

use super::special::{self, Special};
use super::{Error, MAGIC};

/// Non-pointer `omitempty` fields whose Go zero value is left out: (message, field).
const GO_ZEROS: &[(&str, &str)] = &[
    ("ObjectMeta", "generation"),
    ("Container", "stdin"),
    ("Container", "stdinOnce"),
    ("Container", "tty"),
    ("EphemeralContainer", "stdin"),
    ("EphemeralContainer", "stdinOnce"),
    ("EphemeralContainer", "tty"),
    ("ContainerPort", "hostPort"),
    ("VolumeMount", "readOnly"),
    ("ServicePort", "nodePort"),
    ("ServiceSpec", "healthCheckNodePort"),
    ("ServiceSpec", "publishNotReadyAddresses"),
    ("Probe", "initialDelaySeconds"),
    ("Probe", "timeoutSeconds"),
    ("Probe", "periodSeconds"),
    ("Probe", "successThreshold"),
    ("Probe", "failureThreshold"),
    ("DeploymentSpec", "minReadySeconds"),
    ("DeploymentSpec", "paused"),
    ("ReplicaSetSpec", "minReadySeconds"),
    ("DaemonSetSpec", "minReadySeconds"),
    ("StatefulSetSpec", "minReadySeconds"),
];

/// Go structs embedded `json:",inline"`: in protobuf a field of their own, in JSON their fields
/// are the parent's. (message, field).
const INLINE: &[(&str, &str)] = &[
    ("Probe", "handler"),
    ("Volume", "volumeSource"),
    ("PersistentVolumeSpec", "persistentVolumeSource"),
    ("EphemeralContainer", "ephemeralContainerCommon"),
    ("IngressRule", "ingressRuleValue"),
];

/// Whether `field` of `message` is an embedded struct whose fields JSON lifts into `message`.
pub(super) fn is_inline(message: &MessageDescriptor, field: &str) -> bool {
    // `LocalObjectReference` is embedded in every `*KeySelector`, `*EnvSource`, `*Projection`.
    field == "localObjectReference" || INLINE.contains(&(message.name(), field))
}

/// A message's JSON form; `None` when it stands for an absent value (Go's zero time).
pub(super) fn message(m: &DynamicMessage) -> Result<Option<Value>, Error> {
    let desc = m.descriptor();
    if let Some(u) = m.unknown_fields().next() {
        return Err(Error::UnknownField(format!(
            "field number {} of {}",
            u.number(),
            desc.full_name()
        )));
    }
    if let Some(s) = Special::of(&desc) {
        return special(s, m);
    }
    let mut obj = Map::new();
    for (field, value) in m.fields() {
        match field_value(&desc, &field, value)? {
            Some(Value::Object(inner)) if is_inline(&desc, field.name()) => obj.extend(inner),
            Some(v) => {
                obj.insert(special::json_name(&desc, field.name()).to_string(), v);
            }
            None => {}
        }
    }
    Ok(Some(Value::Object(obj)))
}

fn field_value(
    owner: &MessageDescriptor,
    field: &FieldDescriptor,
    value: &Pb,
) -> Result<Option<Value>, Error> {
    Ok(match value {
        Pb::List(items) if items.is_empty() => None,
        Pb::List(items) => Some(Value::Array(
            items
                .iter()
                .map(|v| single(v).map(|v| v.unwrap_or(Value::Null)))
                .collect::<Result<_, _>>()?,
        )),
        Pb::Map(entries) if entries.is_empty() => None,
        Pb::Map(entries) => {
            let mut obj = Map::new();
            for (k, v) in entries {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                obj.insert(key, single(v)?.unwrap_or(Value::Null));
            }
            Some(Value::Object(obj))
        }
        Pb::String(s) if s.is_empty() => None,
        Pb::Bool(false) | Pb::I32(0) | Pb::I64(0)
            if GO_ZEROS.contains(&(owner.name(), field.name())) =>
        {
            None
        }
        v => single(v)?,
    })
}

fn single(v: &Pb) -> Result<Option<Value>, Error> {
    Ok(Some(match v {
        Pb::Bool(b) => Value::Bool(*b),
        Pb::I32(n) | Pb::EnumNumber(n) => Value::from(*n),
        Pb::I64(n) => Value::from(*n),
        Pb::U32(n) => Value::from(*n),
        Pb::U64(n) => Value::from(*n),
        Pb::F32(n) => float(f64::from(*n))?,
        Pb::F64(n) => float(*n)?,
        Pb::String(s) => Value::String(s.clone()),
        Pb::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Pb::Message(m) => return message(m),
        Pb::List(_) | Pb::Map(_) => {
            return Err(Error::Malformed("a list nested in a list".into()));
        }
    }))
}

fn float(n: f64) -> Result<Value, Error> {
    serde_json::Number::from_f64(n)
        .map(Value::Number)
        .ok_or_else(|| Error::Malformed(format!("{n} is not a JSON number")))
}

fn get<'a>(m: &'a DynamicMessage, name: &str) -> Option<&'a Pb> {
    m.fields().find(|(f, _)| f.name() == name).map(|(_, v)| v)
}

fn int(m: &DynamicMessage, name: &str) -> i64 {
    match get(m, name) {
        Some(Pb::I64(n)) => *n,
        Some(Pb::I32(n)) => i64::from(*n),
        _ => 0,
    }
}

fn string<'a>(m: &'a DynamicMessage, name: &str) -> &'a str {
    match get(m, name) {
        Some(Pb::String(s)) => s,
        _ => "",
    }
}

fn special(s: Special, m: &DynamicMessage) -> Result<Option<Value>, Error> {
    Ok(match s {
        Special::Time | Special::MicroTime => {
            if m.fields().next().is_none() {
                return Ok(None);
            }
            let nanos = i32::try_from(int(m, "nanos")).unwrap_or_default();
            special::format_time(int(m, "seconds"), nanos, s == Special::MicroTime)
                .map(Value::String)
        }
        Special::Duration => Some(Value::String(special::format_duration(int(m, "duration")))),
        Special::Quantity => Some(Value::String(string(m, "string").to_string())),
        Special::IntOrString => Some(if int(m, "type") == 1 {
            Value::String(string(m, "strVal").to_string())
        } else {
            Value::from(int(m, "intVal"))
        }),
        Special::Raw => {
            let field = m.descriptor().fields().next().expect("one bytes field");
            match get(m, field.name()) {
                Some(Pb::Bytes(raw)) if !raw.is_empty() => Some(raw_json(raw)?),
                _ => None,
            }
        }
        Special::Items => match get(m, "items") {
            Some(v @ Pb::List(_)) => Some(single_list(v)?),
            _ => Some(Value::Array(Vec::new())),
        },
        Special::OrBool => match get(m, "schema") {
            Some(schema) => single(schema)?,
            None => Some(Value::Bool(matches!(
                get(m, "allows"),
                Some(Pb::Bool(true))
            ))),
        },
        Special::OrArray | Special::OrStringArray => match get(m, "schema") {
            Some(schema) => single(schema)?,
            None => {
                let list = if s == Special::OrArray {
                    "jSONSchemas"
                } else {
                    "property"
                };
                match get(m, list) {
                    Some(v) => Some(single_list(v)?),
                    None => Some(Value::Array(Vec::new())),
                }
            }
        },
    })
}

fn single_list(v: &Pb) -> Result<Value, Error> {
    let Pb::List(items) = v else {
        return Err(Error::Malformed("expected a list".into()));
    };
    Ok(Value::Array(
        items
            .iter()
            .map(|v| single(v).map(|v| v.unwrap_or(Value::Null)))
            .collect::<Result<_, _>>()?,
    ))
}

/// Embedded raw bytes: JSON (how objects embed objects), or a nested protobuf envelope.
fn raw_json(raw: &[u8]) -> Result<Value, Error> {
    if raw.starts_with(MAGIC) {
        return super::decode_envelope(raw);
    }
    serde_json::from_slice(raw)
        .map_err(|e| Error::Malformed(format!("embedded raw object is not JSON: {e}")))
}
