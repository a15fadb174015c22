//! Structural schemas of custom resources (`openAPIV3Schema`, as JSON): pruning of unknown
//! fields, defaulting and validation, with kube-apiserver's messages.

use std::sync::Arc;

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
    for (i, rule) in rules(schema).enumerate() {
        if let Err(e) = compile(rule.rule) {
            errs.push(FieldError::invalid(
                format!("{path}.x-kubernetes-validations[{i}].rule"),
                rule.rule,
                &format!("compilation failed: {e}"),
            ));
        }
    }
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

/// Checks `value` against `schema`, adding one error per bad field; `old` is the value an
/// update replaces (for `oldSelf` in transition rules).
pub(crate) fn validate(
    value: &Value,
    old: Option<&Value>,
    schema: &Value,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
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
            errs.push(FieldError::too_long(
                path,
                usize::try_from(max).unwrap_or(usize::MAX),
            ));
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
    let before = errs.len();
    match value {
        Value::Array(items) => validate_array(items, schema, path, errs),
        Value::Object(map) => validate_object(map, old, schema, path, errs),
        _ => {}
    }
    // Rules run on values that are otherwise valid, as kube-apiserver's do.
    if errs.len() == before {
        check_rules(value, old, schema, path, errs);
    }
}

/// One `x-kubernetes-validations` rule.
struct Rule<'a> {
    rule: &'a str,
    message: Option<&'a str>,
    message_expression: Option<&'a str>,
    field_path: Option<&'a str>,
    reason: Option<&'a str>,
}

fn rules(schema: &Value) -> impl Iterator<Item = Rule<'_>> {
    crate::object::each(schema, "x-kubernetes-validations").filter_map(|r| {
        Some(Rule {
            rule: r.get("rule")?.as_str()?,
            message: r.get("message").and_then(Value::as_str),
            message_expression: r.get("messageExpression").and_then(Value::as_str),
            field_path: r.get("fieldPath").and_then(Value::as_str),
            reason: r.get("reason").and_then(Value::as_str),
        })
    })
}

/// Compiles a CEL expression. The parser (ANTLR-generated) can panic on some malformed
/// input instead of answering an error; a rule from a client must never take the server down,
/// so that is caught and reported as a compile error.
fn compile(rule: &str) -> Result<cel_interpreter::Program, String> {
    std::panic::catch_unwind(|| cel_interpreter::Program::compile(rule))
        .map_err(|_| "syntax error".to_owned())?
        .map_err(|e| e.to_string())
}

/// A JSON value as CEL sees it (whole numbers are `int`).
fn cel_value(v: &Value) -> cel_interpreter::Value {
    use cel_interpreter::Value as Cel;
    use cel_interpreter::objects::{Key, Map as CelMap};
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => n
                .as_u64()
                .map_or_else(|| Cel::Float(n.as_f64().unwrap_or_default()), Cel::UInt),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(a) => Cel::List(Arc::new(a.iter().map(cel_value).collect())),
        Value::Object(m) => Cel::Map(CelMap {
            map: Arc::new(
                m.iter()
                    .map(|(k, v)| (Key::String(Arc::new(k.clone())), cel_value(v)))
                    .collect(),
            ),
        }),
    }
}

/// Evaluates the schema's CEL rules with `self` (and `oldSelf` on an update; a rule that
/// uses `oldSelf` is a transition rule and runs only then).
fn check_rules(
    value: &Value,
    old: Option<&Value>,
    schema: &Value,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    for rule in rules(schema) {
        let transition = rule.rule.contains("oldSelf");
        if transition && old.is_none() {
            continue;
        }
        let Ok(program) = compile(rule.rule) else {
            continue;
        };
        let mut context = cel_interpreter::Context::default();
        context.add_variable_from_value("self", cel_value(value));
        if let Some(o) = old {
            context.add_variable_from_value("oldSelf", cel_value(o));
        }
        let at = match rule.field_path {
            Some(f) => format!("{path}{f}"),
            None => path.to_owned(),
        };
        let shown_type = type_name(value);
        match program.execute(&context) {
            Ok(cel_interpreter::Value::Bool(true)) => {}
            Ok(cel_interpreter::Value::Bool(false)) => {
                let message = rule
                    .message_expression
                    .and_then(|e| compile(e).ok())
                    .and_then(|p| match p.execute(&context) {
                        Ok(cel_interpreter::Value::String(s)) if !s.is_empty() => {
                            Some(s.to_string())
                        }
                        _ => None,
                    })
                    .or_else(|| rule.message.map(str::to_owned))
                    .unwrap_or_else(|| format!("failed rule: {}", rule.rule));
                let mut e = FieldError::invalid(&at, shown_type, &message);
                match rule.reason {
                    Some("FieldValueForbidden") => {
                        e.reason = "FieldValueForbidden";
                        e.message = format!("Forbidden: {message}");
                    }
                    Some("FieldValueRequired") => {
                        e.reason = "FieldValueRequired";
                        e.message = format!("Required value: {message}");
                    }
                    Some("FieldValueDuplicate") => {
                        e.reason = "FieldValueDuplicate";
                        e.message = format!("Duplicate value: {message}");
                    }
                    _ => {}
                }
                errs.push(e);
            }
            Ok(other) => errs.push(FieldError::invalid(
                &at,
                shown_type,
                &format!("rule compiled to a non-boolean: {other:?}"),
            )),
            Err(e) => errs.push(FieldError::invalid(
                &at,
                shown_type,
                &format!("rule evaluation error: {e}"),
            )),
        }
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

/// A count of `n` items or properties against the schema's `[max, min]` limits, worded as
/// kube-apiserver words them (its "at most" message says items for both).
fn count_limits(
    n: u64,
    schema: &Value,
    [max_key, min_key]: [&str; 2],
    noun: &str,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    if let Some(max) = schema.get(max_key).and_then(Value::as_u64)
        && n > max
    {
        errs.push(FieldError {
            reason: "FieldValueTooMany",
            message: format!("Too many: {n}: must have at most {max} items"),
            field: path.to_owned(),
        });
    }
    if let Some(min) = schema.get(min_key).and_then(Value::as_u64)
        && n < min
    {
        errs.push(FieldError::invalid(
            path,
            n,
            &format!("{path} in body should have at least {min} {noun}"),
        ));
    }
}

fn validate_array(items: &[Value], schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let n = items.len() as u64;
    count_limits(n, schema, ["maxItems", "minItems"], "items", path, errs);
    if let Some(s) = schema.get("items").filter(|i| i.is_object()) {
        for (i, item) in items.iter().enumerate() {
            validate(item, None, s, &format!("{path}[{i}]"), errs);
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
            let keys: Vec<&str> = crate::object::each(schema, "x-kubernetes-list-map-keys")
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
    old: Option<&Value>,
    schema: &Value,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    for r in crate::object::each(schema, "required").filter_map(Value::as_str) {
        if !map.contains_key(r) {
            errs.push(FieldError::required(join(path, r), ""));
        }
    }
    let n = map.len() as u64;
    count_limits(
        n,
        schema,
        ["maxProperties", "minProperties"],
        "properties",
        path,
        errs,
    );
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (k, v) in map {
        if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(s) = properties.and_then(|p| p.get(k)).or(additional) {
            validate(v, old.and_then(|o| o.get(k)), s, &join(path, k), errs);
        }
    }
}

/// The `x-kubernetes-list-type` of the list `field` below the fields `path` (list items are
/// passed through): `map` by its `x-kubernetes-list-map-keys`, `set`, or `atomic` — the
/// default, as in kube-apiserver, for a list that declares none.
pub(crate) fn list_type(schema: &Value, path: &[String], field: &str) -> crate::patch::ListType {
    use crate::patch::ListType;
    let mut cur = schema;
    for name in path
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(field))
    {
        // Through the items of a list on the way.
        while cur.get("type").and_then(Value::as_str) == Some("array") {
            let Some(items) = cur.get("items") else {
                return ListType::Atomic;
            };
            cur = items;
        }
        let next = cur
            .pointer(&format!(
                "/properties/{}",
                name.replace('~', "~0").replace('/', "~1")
            ))
            .or_else(|| cur.get("additionalProperties").filter(|a| a.is_object()));
        let Some(next) = next else {
            return ListType::Atomic;
        };
        cur = next;
    }
    match cur.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("map") => ListType::Map(
            crate::object::each(cur, "x-kubernetes-list-map-keys")
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        Some("set") => ListType::Set,
        _ => ListType::Atomic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_types_come_from_the_schema_through_items_and_maps() {
        use crate::patch::ListType;
        let schema = serde_json::json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "rules": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["host"],
                "items": {"type": "object", "properties": {
                    "paths": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}}},
            "labels": {"type": "object", "additionalProperties": {"type": "array", "x-kubernetes-list-type": "set"}},
            "plain": {"type": "array", "items": {"type": "string"}}}}}});
        let at = |path: &[&str], f: &str| {
            let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
            list_type(&schema, &path, f)
        };
        assert_eq!(at(&["spec"], "rules"), ListType::Map(vec!["host".into()]));
        assert_eq!(at(&["spec", "rules"], "paths"), ListType::Set);
        assert_eq!(at(&["spec", "labels"], "anything"), ListType::Set);
        assert_eq!(at(&["spec"], "plain"), ListType::Atomic);
        assert_eq!(at(&["spec"], "unknown"), ListType::Atomic);
    }
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
        validate(&v, None, &schema(), "", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");

        let bad = json!({"spec": {"size": 11, "color": "green", "name": "Abcdefg",
            "port": true, "tags": ["a", "a"]}, "status": {"ready": "yes"}});
        let mut errs = Vec::new();
        validate(&bad, None, &schema(), "", &mut errs);
        let messages: Vec<String> = errs
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
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
        validate(&json!({"spec": {}}), None, &schema(), "", &mut errs);
        assert_eq!(errs[0].field, "spec.size");
        assert_eq!(errs[0].reason, "FieldValueRequired");
    }

    #[test]
    fn cel_rules_should_check_self_and_transitions() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.min <= self.max", "message": "min must not exceed max"},
                {"rule": "self.mode == oldSelf.mode", "message": "mode is immutable", "reason": "FieldValueForbidden"},
                {"rule": "size(self.name) > 2", "fieldPath": ".name"}],
            "properties": {"min": {"type": "integer"}, "max": {"type": "integer"},
                           "mode": {"type": "string"}, "name": {"type": "string"}}}}});
        let good = json!({"spec": {"min": 1, "max": 2, "mode": "a", "name": "abc"}});
        let mut errs = Vec::new();
        validate(&good, None, &schema, "", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let bad = json!({"spec": {"min": 3, "max": 2, "mode": "b", "name": "ab"}});
        let mut errs = Vec::new();
        validate(&bad, Some(&good), &schema, "", &mut errs);
        let messages: Vec<String> = errs
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        assert_eq!(
            messages,
            [
                "spec: Invalid value: \"object\": min must not exceed max",
                "spec: Forbidden: mode is immutable",
                "spec.name: Invalid value: \"object\": failed rule: size(self.name) > 2",
            ]
        );
        // A transition rule does not run on create.
        let mut errs = Vec::new();
        validate(
            &json!({"spec": {"min": 1, "max": 2, "mode": "b", "name": "abc"}}),
            None,
            &schema,
            "",
            &mut errs,
        );
        assert!(errs.is_empty(), "{errs:?}");
        // A rule that does not compile is refused with its definition.
        let broken = json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.a >"}]});
        assert!(
            structural_errors(&broken, "s")
                .iter()
                .any(|e| e.field == "s.x-kubernetes-validations[0].rule")
        );
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
