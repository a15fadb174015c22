//! Table responses (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), which is how
//! kubectl prints `get` output: the server chooses the columns.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

/// A column definition (`metav1.TableColumnDefinition`).
#[derive(Debug, Clone)]
pub struct Column {
    /// Header, e.g. `Ready`.
    pub name: &'static str,
    /// `string`, `integer`, `date`, ...
    pub type_: &'static str,
    /// `name` for the name column.
    pub format: &'static str,
    /// Shown by `kubectl explain`-like tools.
    pub description: &'static str,
    /// 0 = always shown; 1 = only with `-o wide`.
    pub priority: i32,
}

impl Column {
    /// A priority-0 string column.
    pub const fn new(name: &'static str, description: &'static str) -> Column {
        Column {
            name,
            type_: "string",
            format: "",
            description,
            priority: 0,
        }
    }

    /// A priority-0 integer column.
    pub const fn int(name: &'static str, description: &'static str) -> Column {
        Column {
            name,
            type_: "integer",
            format: "",
            description,
            priority: 0,
        }
    }

    /// A priority-0 date column.
    pub const fn date(name: &'static str, description: &'static str) -> Column {
        Column {
            name,
            type_: "date",
            format: "",
            description,
            priority: 0,
        }
    }

    /// A `-o wide` column.
    pub const fn wide(mut self) -> Column {
        self.priority = 1;
        self
    }

    /// The `Name` column every table starts with.
    pub const fn name() -> Column {
        Column {
            name: "Name",
            type_: "string",
            format: "name",
            description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated.",
            priority: 0,
        }
    }

    /// The `Age` column.
    pub const fn age() -> Column {
        Column::new(
            "Age",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
        )
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({"name": self.name, "type": self.type_, "format": self.format,
               "description": self.description, "priority": self.priority})
    }
}

/// Formats a duration as kubectl does (`translateTimestampSince`): `5s`, `3m20s`, `4h`, `12d`.
pub fn human_duration(secs: i64) -> String {
    // `{big}{unit}` with the remainder in the next unit down, when there is one.
    let two = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{small_unit}")
        }
    };
    let secs = secs.max(0);
    let (mins, hours) = (secs / 60, secs / 3600);
    let (days, years) = (hours / 24, hours / 24 / 365);
    match () {
        () if secs < 120 => format!("{secs}s"),
        () if mins < 10 => two(mins, "m", secs % 60, "s"),
        () if mins < 180 => format!("{mins}m"),
        () if hours < 8 => two(hours, "h", mins % 60, "m"),
        () if hours < 48 => format!("{hours}h"),
        () if days < 8 => two(days, "d", hours % 24, "h"),
        () if days < 365 * 2 => format!("{days}d"),
        () if years < 8 => two(years, "y", days % 365, "d"),
        () => format!("{years}y"),
    }
}

/// `<unknown>` or the age of a timestamp.
pub fn age(t: Option<&Time>) -> Value {
    match t {
        Some(t) => Value::String(human_duration(
            Timestamp::now().as_second() - t.0.as_second(),
        )),
        None => Value::String("<unknown>".into()),
    }
}

/// `PartialObjectMetadata` of an object: what metadata-only clients and table rows receive.
pub fn partial(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(Value::Null),
    })
}

/// [`partial`] of an object's JSON, written from it without parsing more than its top level:
/// the metadata is copied as it is (a metadata-only watch of pods renders one per change).
/// `None` when `raw` is not a JSON object.
pub fn partial_json(raw: &[u8], out: &mut Vec<u8>) -> Option<()> {
    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow)]
        metadata: Option<&'a serde_json::value::RawValue>,
    }
    if raw.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let top: Top<'_> = serde_json::from_slice(raw).ok()?;
    out.extend_from_slice(
        br#"{"apiVersion":"meta.k8s.io/v1","kind":"PartialObjectMetadata","metadata":"#,
    );
    out.extend_from_slice(top.metadata.map_or("null", |m| m.get()).as_bytes());
    out.push(b'}');
    Some(())
}

/// What each row carries as `object`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// Nothing.
    None,
    /// `PartialObjectMetadata` (default).
    Metadata,
    /// The full object.
    Object,
}

/// One row of a `Table`: its cells, and the object as `include` asks.
pub fn table_row(obj: Value, cells: Vec<Value>, include: IncludeObject) -> Value {
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => partial(&obj),
        IncludeObject::Object => obj,
    };
    json!({"cells": cells, "object": object})
}

/// Builds a `Table` from columns and (object, cells) rows.
pub fn table(
    columns: &[crate::table::Column],
    rows: impl IntoIterator<Item = (Value, Vec<Value>)>,
    include: IncludeObject,
    list_meta: Value,
) -> Value {
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|(obj, cells)| table_row(obj, cells, include))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns.iter().map(Column::to_json).collect::<Vec<_>>(),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_metadata_from_json_should_equal_the_parsed_partial() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "n", "labels": {"x": "y \"z\""},
                         "resourceVersion": "7"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": {"phase": "Running"}});
        let mut out = Vec::new();
        partial_json(&serde_json::to_vec(&obj).unwrap(), &mut out).expect("an object");
        let got: Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(got, partial(&obj));
        // No metadata: null, as the parsed partial has it; not an object: nothing.
        let mut out = Vec::new();
        partial_json(br#"{"kind":"X"}"#, &mut out).expect("an object");
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            partial(&json!({"kind": "X"}))
        );
        assert!(partial_json(b"[1]", &mut Vec::new()).is_none());
    }

    #[test]
    fn durations_should_print_like_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (3 * 86400, "3d"),
            (53 * 3600, "2d5h"),
            (30 * 86400, "30d"),
            ((3 * 365 + 10) * 86400, "3y10d"),
            (9 * 365 * 86400, "9y"),
        ] {
            assert_eq!(human_duration(secs), want);
        }
    }
}
