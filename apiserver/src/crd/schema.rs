//! Structural schemas of custom resources (`openAPIV3Schema`, as JSON): pruning of unknown
//! fields, defaulting and validation, with kube-apiserver's messages.

use serde_json::{Map, Value};

use crate::error::FieldError;

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool) == Some(true)
}

fn preserves_unknown(schema: &Value) -> bool {
    flag(schema, "x-kubernetes-preserve-unknown-fields")
}

/// What is wrong with a schema as a structural schema (the parts this server relies on):
/// the root is an object, every field below says its type (or is int-or-string, or keeps
/// unknown fields).
pub(crate) fn structural_errors(schema: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {}
        None | Some("") => errs.push(FieldError::required(
            format!("{path}.type"),
            "must not be empty at the root",
        )),
        Some(other) => errs.push(FieldError::invalid(
            format!("{path}.type"),
            other,
            "must be object at the root",
        )),
    }
    walk_structural(schema, path, &mut errs);
    errs
}

fn walk_structural(schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let children = schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (format!("{path}.properties[{k}]"), v))
        .chain(
            schema
                .get("items")
                .filter(|i| i.is_object())
                .map(|i| (format!("{path}.items"), i)),
        )
        .chain(
            schema
                .get("additionalProperties")
                .filter(|i| i.is_object())
                .map(|i| (format!("{path}.additionalProperties"), i)),
        );
    for (at, child) in children {
        let typed = child
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty());
        if !typed && !flag(child, "x-kubernetes-int-or-string") && !preserves_unknown(child) {
            errs.push(FieldError::required(
                format!("{at}.type"),
                "must not be empty for specified object fields",
            ));
        }
        walk_structural(child, &at, errs);
    }
}

/// Removes the fields the schema does not know, naming each; `apiVersion`, `kind` and
/// `metadata` stay at the root and in embedded resources.
pub(crate) fn prune(
    value: &mut Value,
    schema: &Value,
    path: &str,
    root: bool,
    dropped: &mut Vec<String>,
) {
    match value {
        Value::Object(map) => {
            let embedded = root || flag(schema, "x-kubernetes-embedded-resource");
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keep_all = preserves_unknown(schema)
                || schema.get("additionalProperties") == Some(&Value::Bool(true));
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let at = join(path, &key);
                if embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    if let Some(s) = properties.and_then(|p| p.get(&key))
                        && key != "metadata"
                        && let Some(v) = map.get_mut(&key)
                    {
                        prune(v, s, &at, false, dropped);
                    }
                    continue;
                }
                let sub = properties.and_then(|p| p.get(&key)).or(additional);
                match sub {
                    Some(s) => {
                        if let Some(v) = map.get_mut(&key) {
                            prune(v, s, &at, false, dropped);
                        }
                    }
                    None if keep_all => {}
                    None => {
                        map.remove(&key);
                        dropped.push(at);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items").filter(|i| i.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item, s, &format!("{path}[{i}]"), false, dropped);
                }
            }
        }
        _ => {}
    }
}

/// Fills in the schema's `default`s for absent fields (and inside them).
pub(crate) fn default(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (key, s) in props {
                    if !map.contains_key(key)
                        && let Some(d) = s.get("default")
                    {
                        map.insert(key.clone(), d.clone());
                    }
                    if let Some(v) = map.get_mut(key) {
                        default(v, s);
                    }
                }
            }
            if let Some(s) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                let known: Vec<String> = map
                    .keys()
                    .filter(|k| {
                        !schema
                            .get("properties")
                            .and_then(Value::as_object)
                            .is_some_and(|p| p.contains_key(*k))
                    })
                    .cloned()
                    .collect();
                for k in known {
                    if let Some(v) = map.get_mut(&k) {
                        default(v, s);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items").filter(|i| i.is_object()) {
                for item in items {
                    default(item, s);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Checks `value` against `schema`, adding one error per bad field.
pub(crate) fn validate(value: &Value, schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if value.is_null() {
        if !flag(schema, "nullable")
            && let Some(t) = schema.get("type").and_then(Value::as_str)
            && !t.is_empty()
        {
            errs.push(FieldError::invalid(
                path,
                "null",
                &format!("{path} in body must be of type {t}: \"null\""),
            ));
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(value.is_string() || is_type(value, "integer")) {
            errs.push(FieldError::invalid(
                path,
                type_name(value),
                &format!(
                    "{path} in body must be of type integer,string: \"{}\"",
                    type_name(value)
                ),
            ));
            return;
        }
    } else if let Some(t) = schema.get("type").and_then(Value::as_str)
        && !t.is_empty()
        && !is_type(value, t)
    {
        errs.push(FieldError::invalid(
            path,
            type_name(value),
            &format!(
                "{path} in body must be of type {t}: \"{}\"",
                type_name(value)
            ),
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed.iter().map(shown).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        errs.push(FieldError::not_supported(path, &shown(value), &names));
    }
    if let Some(n) = value.as_f64() {
        let exclusive_min = flag(schema, "exclusiveMinimum");
        let exclusive_max = flag(schema, "exclusiveMaximum");
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && (n < min || (exclusive_min && n == min))
        {
            let rel = if exclusive_min {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errs.push(FieldError::invalid(
                path,
                shown(value),
                &format!("{path} in body should be {rel} {}", number(min)),
            ));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && (n > max || (exclusive_max && n == max))
        {
            let rel = if exclusive_max {
                "less than"
            } else {
                "less than or equal to"
            };
            errs.push(FieldError::invalid(
                path,
                shown(value),
                &format!("{path} in body should be {rel} {}", number(max)),
            ));
        }
        if let Some(m) = schema.get("multipleOf").and_then(Value::as_f64)
            && m > 0.0
            && (n / m).fract() != 0.0
        {
            errs.push(FieldError::invalid(
                path,
                shown(value),
                &format!("{path} in body should be a multiple of {}", number(m)),
            ));
        }
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            errs.push(FieldError {
                reason: "FieldValueTooLong",
                message: format!("{path}: Too long: may not be more than {max} bytes"),
                field: path.to_owned(),
            });
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && chars < min
        {
            errs.push(FieldError::invalid(
                path,
                s,
                &format!("{path} in body should be at least {min} chars long"),
            ));
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(p) {
                Ok(re) if !re.is_match(s) => errs.push(FieldError::invalid(
                    path,
                    s,
                    &format!("{path} in body should match '{p}'"),
                )),
                Ok(_) => {}
                Err(_) => errs.push(FieldError::invalid(
                    path,
                    s,
                    &format!("{path}: the schema's pattern '{p}' does not compile"),
                )),
            }
        }
        if let Some(f) = schema.get("format").and_then(Value::as_str)
            && let Some(why) = bad_format(f, s)
        {
            errs.push(FieldError::invalid(
                path,
                s,
                &format!("{path} in body must be of type {f}: \"{s}\"{why}"),
            ));
        }
    }
    match value {
        Value::Array(items) => validate_array(items, schema, path, errs),
        Value::Object(map) => validate_object(map, schema, path, errs),
        _ => {}
    }
}

fn number(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

/// Why `s` is not of format `f` (`None`: it is, or the format is not checked).
fn bad_format(f: &str, s: &str) -> Option<&'static str> {
    let ok = match f {
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.parse::<jiff::civil::Date>().is_ok(),
        "uuid" => uuid::Uuid::parse_str(s).is_ok(),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.parse::<ipnet::IpNet>().is_ok(),
        "byte" => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        _ => true,
    };
    (!ok).then_some("")
}

fn validate_array(items: &[Value], schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let n = items.len() as u64;
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && n > max
    {
        errs.push(FieldError {
            reason: "FieldValueTooMany",
            message: format!("{path}: Too many: {n}: must have at most {max} items"),
            field: path.to_owned(),
        });
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && n < min
    {
        errs.push(FieldError::invalid(
            path,
            n,
            &format!("{path} in body should have at least {min} items"),
        ));
    }
    if let Some(s) = schema.get("items").filter(|i| i.is_object()) {
        for (i, item) in items.iter().enumerate() {
            validate(item, s, &format!("{path}[{i}]"), errs);
        }
    }
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    errs.push(FieldError::duplicate(format!("{path}[{i}]"), &shown(item)));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let key_of = |item: &Value| -> Vec<Value> {
                keys.iter()
                    .map(|k| item.get(*k).cloned().unwrap_or(Value::Null))
                    .collect()
            };
            for (i, item) in items.iter().enumerate() {
                let k = key_of(item);
                if items[..i].iter().any(|o| key_of(o) == k) {
                    let shown_key: Map<String, Value> = keys
                        .iter()
                        .zip(k)
                        .map(|(name, v)| ((*name).to_owned(), v))
                        .collect();
                    errs.push(FieldError::duplicate(
                        format!("{path}[{i}]"),
                        &Value::Object(shown_key).to_string(),
                    ));
                }
            }
        }
        _ => {}
    }
}

fn validate_object(
    map: &Map<String, Value>,
    schema: &Value,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    for r in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(r) {
            errs.push(FieldError::required(join(path, r), ""));
        }
    }
    let n = map.len() as u64;
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && n > max
    {
        errs.push(FieldError {
            reason: "FieldValueTooMany",
            message: format!("{path}: Too many: {n}: must have at most {max} items"),
            field: path.to_owned(),
        });
    }
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && n < min
    {
        errs.push(FieldError::invalid(
            path,
            n,
            &format!("{path} in body should have at least {min} properties"),
        ));
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (k, v) in map {
        if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(s) = properties.and_then(|p| p.get(k)).or(additional) {
            validate(v, s, &join(path, k), errs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$"},
                "port": {"x-kubernetes-int-or-string": true},
                "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
        }})
    }

    #[test]
    fn unknown_fields_should_be_pruned_and_named() {
        let mut v = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a"},
            "spec": {"size": 1, "extra": 1, "free": {"anything": [1]}, "labels": {"a": "b"}},
            "junk": true});
        let mut dropped = Vec::new();
        prune(&mut v, &schema(), "", true, &mut dropped);
        dropped.sort();
        assert_eq!(dropped, ["junk", "spec.extra"]);
        assert_eq!(v["spec"]["free"]["anything"], json!([1]));
        assert_eq!(v["spec"]["labels"]["a"], "b");
        assert_eq!(v["metadata"]["name"], "a");
    }

    #[test]
    fn defaults_and_validation_should_speak_as_kube_apiserver() {
        let mut v = json!({"spec": {"size": 1}});
        default(&mut v, &schema());
        assert_eq!(v["spec"]["color"], "red");
        let mut errs = Vec::new();
        validate(&v, &schema(), "", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");

        let bad = json!({"spec": {"size": 11, "color": "green", "name": "Abcdefg",
            "port": true, "tags": ["a", "a"]}, "status": {"ready": "yes"}});
        let mut errs = Vec::new();
        validate(&bad, &schema(), "", &mut errs);
        let messages: Vec<String> = errs.iter().map(|e| e.message.clone()).collect();
        let all = messages.join("\n");
        for want in [
            "spec.size in body should be less than or equal to 10",
            "supported values: \"red\", \"blue\"",
            "spec.name: Too long: may not be more than 5 bytes",
            "spec.name in body should match '^[a-z]+$'",
            "spec.port in body must be of type integer,string: \"boolean\"",
            "status.ready in body must be of type boolean: \"string\"",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert!(
            errs.iter()
                .any(|e| e.reason == "FieldValueDuplicate" && e.field == "spec.tags[1]")
        );
        let mut errs = Vec::new();
        validate(&json!({"spec": {}}), &schema(), "", &mut errs);
        assert_eq!(errs[0].field, "spec.size");
        assert_eq!(errs[0].reason, "FieldValueRequired");
    }

    #[test]
    fn schemas_should_be_structural() {
        assert!(structural_errors(&schema(), "s").is_empty());
        let errs = structural_errors(
            &json!({"type": "object", "properties": {"a": {"properties": {}}}}),
            "s",
        );
        assert_eq!(errs[0].field, "s.properties[a].type");
        assert!(!structural_errors(&json!({"type": "string"}), "s").is_empty());
    }
}
