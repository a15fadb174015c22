//! `/openapi/v2`: one Swagger 2.0 document over every group version, made from the OpenAPI v3
//! documents (so the two never disagree, custom resources included), served as JSON and in
//! gnostic's protobuf encoding — what kubectl up to 1.28 (`explain --output
//! plaintext-openapiv2`, client-side validation), Helm and client-go's `OpenAPISchema` read.
//!
//! From v3 to v2: `#/components/schemas/X` becomes `#/definitions/X`; keywords Swagger 2.0
//! has no place for (`nullable`, `oneOf`, `anyOf`, `not`) are dropped, as kube-apiserver drops
//! them when it publishes a CustomResourceDefinition to v2; parameters carry their type
//! inline; a request body is a `body` parameter; responses name their schema directly.

use prost::encoding::{self, WireType};
use serde_json::{Map, Value, json};

/// The schema keywords Swagger 2.0 keeps (and every `x-` extension).
const SCHEMA_KEYWORDS: &[&str] = &[
    "$ref",
    "format",
    "title",
    "description",
    "default",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "required",
    "enum",
    "additionalProperties",
    "type",
    "items",
    "allOf",
    "properties",
    "discriminator",
    "readOnly",
    "example",
];

const V3_REFS: &str = "#/components/schemas/";
const V2_REFS: &str = "#/definitions/";

/// A v3 schema as Swagger 2.0 has it.
fn schema(v3: &Value) -> Value {
    let Some(obj) = v3.as_object() else {
        return v3.clone();
    };
    let mut out = Map::new();
    for (k, v) in obj {
        if !(SCHEMA_KEYWORDS.contains(&k.as_str()) || k.starts_with("x-")) {
            continue;
        }
        let v = match k.as_str() {
            "$ref" => Value::String(
                v.as_str()
                    .map(|r| r.replacen(V3_REFS, V2_REFS, 1))
                    .unwrap_or_default(),
            ),
            "properties" => Value::Object(
                v.as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, s)| (name.clone(), schema(s)))
                    .collect(),
            ),
            "items" | "additionalProperties" if v.is_object() => schema(v),
            "allOf" => Value::Array(v.as_array().into_iter().flatten().map(schema).collect()),
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    // v3 wraps a reference in `allOf` to give it a description; Swagger 2.0 (and kubectl's
    // reader of it) takes `$ref` beside a description.
    if let Some(Value::Array(all)) = out.get("allOf")
        && let [only] = all.as_slice()
        && let Some(r) = only
            .get("$ref")
            .filter(|_| only.as_object().is_some_and(|o| o.len() == 1))
    {
        let r = r.clone();
        out.remove("allOf");
        out.insert("$ref".into(), r);
    }
    Value::Object(out)
}

/// A v3 parameter (`schema: {type}`) as a v2 one (the type inline).
fn parameter(v3: &Value) -> Value {
    let mut p = json!({
        "name": v3["name"],
        "in": v3["in"],
        "description": v3.get("description").cloned().unwrap_or(json!("")),
    });
    if v3["in"] == "path" {
        p["required"] = json!(true);
    }
    if let Some(s) = v3.get("schema").and_then(Value::as_object) {
        for (k, v) in s {
            p[k.as_str()] = v.clone();
        }
    }
    p
}

/// A v3 operation as a v2 one.
fn operation(v3: &Value, method: &str) -> Value {
    let mut params: Vec<Value> = v3["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(parameter)
        .collect();
    let ok = v3.pointer("/responses/200");
    let object = ok
        .and_then(|r| r.pointer("/content/application~1json/schema"))
        .map(schema);
    let mut op = Map::new();
    for k in ["operationId", "description"] {
        if let Some(v) = v3.get(k) {
            op.insert(k.into(), v.clone());
        }
    }
    match (method, v3.get("requestBody")) {
        (_, Some(body)) => {
            let types: Vec<&String> = body["content"]
                .as_object()
                .map(|c| c.keys().collect())
                .unwrap_or_default();
            op.insert("consumes".into(), json!(types));
            params.insert(
                0,
                json!({"name": "body", "in": "body", "required": true, "schema": {"type": "object"}}),
            );
        }
        ("post" | "put", None) => {
            op.insert("consumes".into(), json!(["*/*"]));
            params.insert(
                0,
                json!({"name": "body", "in": "body", "required": true,
                       "schema": object.clone().unwrap_or(json!({"type": "object"}))}),
            );
        }
        _ => {}
    }
    op.insert(
        "produces".into(),
        json!([
            "application/json",
            "application/yaml",
            "application/vnd.kubernetes.protobuf"
        ]),
    );
    op.insert("schemes".into(), json!(["https"]));
    op.insert("parameters".into(), Value::Array(params));
    let mut response = json!({"description": ok.and_then(|r| r.get("description")).cloned().unwrap_or(json!("OK"))});
    if let Some(s) = object {
        response["schema"] = s;
    }
    op.insert(
        "responses".into(),
        json!({"200": response, "401": {"description": "Unauthorized"}}),
    );
    for (k, v) in v3.as_object().into_iter().flatten() {
        if k.starts_with("x-") {
            op.insert(k.clone(), v.clone());
        }
    }
    Value::Object(op)
}

/// The Swagger 2.0 document over `v3_docs` (each a group version's OpenAPI v3 document).
pub(crate) fn swagger<'a>(v3_docs: impl Iterator<Item = &'a Value>, version: &str) -> Value {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for doc in v3_docs {
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            let mut out = Map::new();
            for (k, v) in item.as_object().into_iter().flatten() {
                match k.as_str() {
                    "parameters" => {
                        out.insert(
                            k.clone(),
                            Value::Array(
                                v.as_array().into_iter().flatten().map(parameter).collect(),
                            ),
                        );
                    }
                    "get" | "put" | "post" | "delete" | "patch" | "head" | "options" => {
                        out.insert(k.clone(), operation(v, k));
                    }
                    _ => {}
                }
            }
            paths.insert(path.clone(), Value::Object(out));
        }
        for (name, s) in doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            definitions.entry(name.clone()).or_insert_with(|| schema(s));
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": version},
        "paths": paths,
        "definitions": definitions,
    })
}

/// Writes gnostic's `openapi_v2` messages (protobuf) with prost's field encoders.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn string(&mut self, tag: u32, s: &str) {
        if !s.is_empty() {
            encoding::string::encode(tag, &s.to_owned(), &mut self.0);
        }
    }

    fn strings<'a>(&mut self, tag: u32, items: impl IntoIterator<Item = &'a str>) {
        for s in items {
            encoding::string::encode(tag, &s.to_owned(), &mut self.0);
        }
    }

    fn boolean(&mut self, tag: u32, b: bool) {
        if b {
            encoding::bool::encode(tag, &b, &mut self.0);
        }
    }

    fn double(&mut self, tag: u32, d: f64) {
        encoding::double::encode(tag, &d, &mut self.0);
    }

    fn int64(&mut self, tag: u32, n: i64) {
        encoding::int64::encode(tag, &n, &mut self.0);
    }

    fn message(&mut self, tag: u32, build: impl FnOnce(&mut Pb)) {
        let mut inner = Pb::default();
        build(&mut inner);
        encoding::encode_key(tag, WireType::LengthDelimited, &mut self.0);
        encoding::encode_varint(inner.0.len() as u64, &mut self.0);
        self.0.extend_from_slice(&inner.0);
    }

    /// gnostic's `Any`: the value as YAML text (JSON is YAML).
    fn any(&mut self, tag: u32, v: &Value) {
        self.message(tag, |a| a.string(2, &v.to_string()));
    }

    /// `repeated NamedAny vendor_extension` from the `x-` keys of `obj`.
    fn extensions(&mut self, tag: u32, obj: &Map<String, Value>) {
        for (k, v) in obj.iter().filter(|(k, _)| k.starts_with("x-")) {
            self.message(tag, |n| {
                n.string(1, k);
                n.any(2, v);
            });
        }
    }
}

fn str_of<'a>(obj: &'a Map<String, Value>, k: &str) -> &'a str {
    obj.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// `Schema`.
fn encode_schema(pb: &mut Pb, v: &Value) {
    let Some(s) = v.as_object() else { return };
    pb.string(1, str_of(s, "$ref"));
    pb.string(2, str_of(s, "format"));
    pb.string(3, str_of(s, "title"));
    pb.string(4, str_of(s, "description"));
    if let Some(d) = s.get("default") {
        pb.any(5, d);
    }
    for (tag, k) in [(6, "multipleOf"), (7, "maximum"), (9, "minimum")] {
        if let Some(n) = s.get(k).and_then(Value::as_f64) {
            pb.double(tag, n);
        }
    }
    for (tag, k) in [
        (8, "exclusiveMaximum"),
        (10, "exclusiveMinimum"),
        (16, "uniqueItems"),
        (27, "readOnly"),
    ] {
        pb.boolean(tag, s.get(k).and_then(Value::as_bool).unwrap_or(false));
    }
    for (tag, k) in [
        (11, "maxLength"),
        (12, "minLength"),
        (14, "maxItems"),
        (15, "minItems"),
        (17, "maxProperties"),
        (18, "minProperties"),
    ] {
        if let Some(n) = s.get(k).and_then(Value::as_i64) {
            pb.int64(tag, n);
        }
    }
    pb.string(13, str_of(s, "pattern"));
    pb.strings(
        19,
        crate::object::each(s, "required").filter_map(Value::as_str),
    );
    for e in crate::object::each(s, "enum") {
        pb.any(20, e);
    }
    match s.get("additionalProperties") {
        Some(Value::Bool(b)) => pb.message(21, |a| encoding::bool::encode(2, b, &mut a.0)),
        Some(inner @ Value::Object(_)) => {
            pb.message(21, |a| a.message(1, |x| encode_schema(x, inner)))
        }
        _ => {}
    }
    match s.get("type") {
        Some(Value::String(t)) => pb.message(22, |ti| ti.string(1, t)),
        Some(Value::Array(ts)) => {
            pb.message(22, |ti| ti.strings(1, ts.iter().filter_map(Value::as_str)));
        }
        _ => {}
    }
    match s.get("items") {
        Some(inner @ Value::Object(_)) => {
            pb.message(23, |i| i.message(1, |x| encode_schema(x, inner)))
        }
        Some(Value::Array(all)) => pb.message(23, |i| {
            for inner in all {
                i.message(1, |x| encode_schema(x, inner));
            }
        }),
        _ => {}
    }
    for inner in crate::object::each(s, "allOf") {
        pb.message(24, |x| encode_schema(x, inner));
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        pb.message(25, |p| {
            for (name, inner) in props {
                p.message(1, |n| {
                    n.string(1, name);
                    n.message(2, |x| encode_schema(x, inner));
                });
            }
        });
    }
    pb.string(26, str_of(s, "discriminator"));
    if let Some(e) = s.get("example") {
        pb.any(30, e);
    }
    pb.extensions(31, s);
}

/// A non-body parameter: `QueryParameterSubSchema` (3) or `PathParameterSubSchema` (4) in a
/// `NonBodyParameter`; a body one is a `BodyParameter`. Each wrapped in `Parameter` then
/// `ParametersItem`.
fn encode_parameter(pb: &mut Pb, p: &Value) {
    let Some(obj) = p.as_object() else { return };
    pb.message(1, |param| {
        if str_of(obj, "in") == "body" {
            param.message(1, |b| {
                b.string(1, str_of(obj, "description"));
                b.string(2, str_of(obj, "name"));
                b.string(3, "body");
                b.boolean(
                    4,
                    obj.get("required")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                );
                if let Some(s) = obj.get("schema") {
                    b.message(5, |x| encode_schema(x, s));
                }
            });
            return;
        }
        let path = str_of(obj, "in") == "path";
        param.message(2, |nb| {
            nb.message(if path { 4 } else { 3 }, |q| {
                q.boolean(
                    1,
                    obj.get("required")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                );
                q.string(2, str_of(obj, "in"));
                q.string(3, str_of(obj, "description"));
                q.string(4, str_of(obj, "name"));
                // The type's field number: after `allow_empty_value` in a query parameter.
                let (ty, unique) = if path { (5, 19) } else { (6, 20) };
                q.string(ty, str_of(obj, "type"));
                q.boolean(
                    unique,
                    obj.get("uniqueItems")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                );
            });
        });
    });
}

/// `Operation`.
fn encode_operation(pb: &mut Pb, op: &Value) {
    let Some(o) = op.as_object() else { return };
    let list = |k: &str| {
        crate::object::each(o, k)
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
    };
    pb.string(3, str_of(o, "description"));
    pb.string(5, str_of(o, "operationId"));
    pb.strings(6, list("produces"));
    pb.strings(7, list("consumes"));
    for p in crate::object::each(o, "parameters") {
        pb.message(8, |x| encode_parameter(x, p));
    }
    if let Some(responses) = o.get("responses").and_then(Value::as_object) {
        pb.message(9, |rs| {
            for (code, r) in responses {
                rs.message(1, |named| {
                    named.string(1, code);
                    named.message(2, |value| {
                        value.message(1, |resp| {
                            resp.string(1, r["description"].as_str().unwrap_or_default());
                            if let Some(s) = r.get("schema") {
                                resp.message(2, |item| item.message(1, |x| encode_schema(x, s)));
                            }
                        });
                    });
                });
            }
        });
    }
    pb.strings(10, list("schemes"));
    pb.extensions(13, o);
}

/// The document in gnostic's `openapi_v2.Document` protobuf encoding.
pub(crate) fn protobuf(doc: &Value) -> Vec<u8> {
    let mut pb = Pb::default();
    pb.string(1, doc["swagger"].as_str().unwrap_or("2.0"));
    pb.message(2, |info| {
        info.string(1, doc["info"]["title"].as_str().unwrap_or_default());
        info.string(2, doc["info"]["version"].as_str().unwrap_or_default());
    });
    pb.message(8, |paths| {
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            paths.message(2, |named| {
                named.string(1, path);
                named.message(2, |pi| {
                    for (tag, method) in [
                        (2, "get"),
                        (3, "put"),
                        (4, "post"),
                        (5, "delete"),
                        (6, "options"),
                        (7, "head"),
                        (8, "patch"),
                    ] {
                        if let Some(op) = item.get(method) {
                            pi.message(tag, |x| encode_operation(x, op));
                        }
                    }
                    for p in crate::object::each(item, "parameters") {
                        pi.message(9, |x| encode_parameter(x, p));
                    }
                });
            });
        }
    });
    pb.message(9, |defs| {
        for (name, s) in doc["definitions"].as_object().into_iter().flatten() {
            defs.message(1, |named| {
                named.string(1, name);
                named.message(2, |x| encode_schema(x, s));
            });
        }
    });
    pb.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3() -> Value {
        json!({
            "openapi": "3.0.0",
            "paths": {"/apis/example.com/v1/namespaces/{namespace}/widgets/{name}": {
                "parameters": [{"name": "name", "in": "path", "schema": {"type": "string"}}],
                "get": {"operationId": "readWidget", "x-kubernetes-action": "get",
                        "x-kubernetes-group-version-kind": {"group": "example.com", "version": "v1", "kind": "Widget"},
                        "parameters": [{"name": "pretty", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
                        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/com.example.v1.Widget"}}}}}},
                "patch": {"operationId": "patchWidget", "parameters": [],
                          "requestBody": {"content": {"application/merge-patch+json": {"schema": {"type": "object"}}}},
                          "responses": {"200": {"description": "OK"}}}
            }},
            "components": {"schemas": {"com.example.v1.Widget": {
                "type": "object",
                "x-kubernetes-group-version-kind": [{"group": "example.com", "version": "v1", "kind": "Widget"}],
                "properties": {
                    "spec": {"type": "object", "nullable": true, "anyOf": [{"required": ["a"]}],
                             "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 9}},
                             "required": ["size"]},
                    "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}]}
                }
            }}}
        })
    }

    #[test]
    fn a_v3_document_becomes_swagger_2() {
        let doc = swagger([v3()].iter(), "v1.33.0");
        assert_eq!(doc["swagger"], "2.0");
        let widget = &doc["definitions"]["com.example.v1.Widget"];
        assert_eq!(
            widget["x-kubernetes-group-version-kind"][0]["kind"],
            "Widget"
        );
        let spec = &widget["properties"]["spec"];
        assert!(
            spec.get("nullable").is_none() && spec.get("anyOf").is_none(),
            "{spec}"
        );
        assert_eq!(spec["properties"]["size"]["maximum"], 9);
        assert_eq!(
            widget["properties"]["metadata"],
            json!({"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}),
            "a lone reference in allOf is a plain $ref"
        );
        let item = &doc["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"];
        assert_eq!(
            item["parameters"][0],
            json!({"name": "name", "in": "path", "description": "", "required": true, "type": "string"})
        );
        let get = &item["get"];
        assert_eq!(
            get["responses"]["200"]["schema"]["$ref"],
            "#/definitions/com.example.v1.Widget"
        );
        assert_eq!(get["parameters"][0]["type"], "string");
        assert_eq!(get["x-kubernetes-action"], "get");
        let patch = &item["patch"];
        assert_eq!(patch["consumes"], json!(["application/merge-patch+json"]));
        assert_eq!(patch["parameters"][0]["in"], "body");
    }

    /// Reads one length-delimited field `tag` of a message (the first), for checking the
    /// encoding's shape.
    fn field(msg: &[u8], want: u32) -> Option<&[u8]> {
        let mut buf = msg;
        while !buf.is_empty() {
            let (tag, wire) = encoding::decode_key(&mut buf).ok()?;
            match wire {
                WireType::LengthDelimited => {
                    let len = usize::try_from(encoding::decode_varint(&mut buf).ok()?).ok()?;
                    let (value, rest) = buf.split_at(len);
                    if tag == want {
                        return Some(value);
                    }
                    buf = rest;
                }
                WireType::Varint => {
                    encoding::decode_varint(&mut buf).ok()?;
                }
                WireType::SixtyFourBit => buf = &buf[8..],
                _ => return None,
            }
        }
        None
    }

    #[test]
    fn the_protobuf_has_gnostics_shape() {
        let doc = swagger([v3()].iter(), "v1.33.0");
        let pb = protobuf(&doc);
        assert_eq!(field(&pb, 1), Some(&b"2.0"[..]));
        let info = field(&pb, 2).unwrap();
        assert_eq!(field(info, 2), Some(&b"v1.33.0"[..]));
        // definitions → NamedSchema → name, Schema → vendor_extension → NamedAny → Any.yaml
        let named = field(field(&pb, 9).unwrap(), 1).unwrap();
        assert_eq!(field(named, 1), Some(&b"com.example.v1.Widget"[..]));
        let schema = field(named, 2).unwrap();
        assert_eq!(field(field(schema, 22).unwrap(), 1), Some(&b"object"[..]));
        let ext = field(schema, 31).unwrap();
        assert_eq!(field(ext, 1), Some(&b"x-kubernetes-group-version-kind"[..]));
        let yaml = field(field(ext, 2).unwrap(), 2).unwrap();
        let gvk: Value = serde_json::from_slice(yaml).unwrap();
        assert_eq!(gvk[0]["kind"], "Widget");
        // paths → NamedPathItem → PathItem.get → operationId
        let item = field(field(&pb, 8).unwrap(), 2).unwrap();
        let get = field(field(item, 2).unwrap(), 2).unwrap();
        assert_eq!(field(get, 5), Some(&b"readWidget"[..]));
    }
}
