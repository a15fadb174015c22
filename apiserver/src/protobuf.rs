//! Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`) for every kind that
//! has a protobuf schema: request bodies, and responses when a client lists protobuf first in
//! `Accept` (client-go does, and `kubectl` sends its `create` bodies this way since 1.32).
//!
//! One transcoder, driven by Kubernetes' own descriptors (the `generated.proto` files of the
//! API version served, compiled into `proto/k8s-v1.33.binpb`; see `proto/regenerate.sh`): a message is read with
//! `prost-reflect` and walked field by field into the JSON form every other path works on
//! ([`to_json`]), and back ([`from_json`]); the handful of types with their own JSON form —
//! Time, MicroTime, Duration, Quantity, IntOrString, RawExtension — are in [`special`].
//! Unknown fields are an error in both directions, never dropped. A kind without a schema
//! (one registered at run time) answers 415 to a protobuf body, as kube-apiserver does for
//! custom resources, and is served as JSON when JSON is acceptable.
//!
//! The wire form: the magic `k8s\0`, then a `runtime.Unknown` with the object's `typeMeta` and
//! its message in `raw`.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value as Pb};
use serde_json::Value;

use crate::error::ApiError;

mod from_json;
mod special;
mod to_json;

/// The media type.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The prefix of every Kubernetes protobuf object.
pub(crate) const MAGIC: &[u8] = b"k8s\0";

/// Why a body could not be transcoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A field the schema does not have.
    #[error("unknown field {0:?}")]
    UnknownField(String),
    /// Bytes or values that do not fit the schema.
    #[error("{0}")]
    Malformed(String),
    /// The kind has no protobuf schema.
    #[error("{0} has no protobuf form")]
    NoSchema(String),
    /// Not a protobuf message at all.
    #[error(transparent)]
    Decode(#[from] prost::DecodeError),
}

/// The descriptors, with every API kind's message by (group's first label, version, kind).
struct Schema {
    kinds: HashMap<(String, String, String), MessageDescriptor>,
    unknown: MessageDescriptor,
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let bytes = include_bytes!("../proto/k8s-v1.33.binpb");
    let pool = DescriptorPool::decode(bytes.as_slice()).expect("the embedded descriptors decode");
    let mut kinds = HashMap::new();
    for m in pool.all_messages() {
        let mut pkg = m.package_name().rsplit('.');
        let (Some(version), Some(segment)) = (pkg.next(), pkg.next()) else {
            continue;
        };
        if version.starts_with('v') && version[1..].starts_with(|c: char| c.is_ascii_digit()) {
            kinds.insert((segment.into(), version.into(), m.name().into()), m.clone());
        }
    }
    let unknown = pool
        .get_message_by_name("apimachinery.pkg.runtime.Unknown")
        .expect("runtime.Unknown is in the schema");
    Schema { kinds, unknown }
});

/// The message of `kind` in `api_version`, if it has one. Kubernetes names the package after
/// the group's first label (`networking.k8s.io` → `networking`, the core group → `core`);
/// `meta.k8s.io` kinds (Status, lists of API resources, DeleteOptions) are also served as `v1`.
fn message_for(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let segment = match group.split('.').next().unwrap_or_default() {
        "" => "core",
        "internal" => "apiserverinternal",
        first => first,
    };
    let find = |segment: &str| {
        SCHEMA
            .kinds
            .get(&(segment.to_string(), version.to_string(), kind.to_string()))
            .cloned()
    };
    find(segment).or_else(|| (group.is_empty()).then(|| find("meta")).flatten())
}

/// Reads one `k8s\0` envelope into the object's JSON form, `apiVersion` and `kind` included.
fn decode_envelope(body: &[u8]) -> Result<Value, Error> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(|| {
        Error::Malformed("the body does not start with the Kubernetes protobuf magic number".into())
    })?;
    let unknown = DynamicMessage::decode(SCHEMA.unknown.clone(), rest)?;
    let text = |m: &DynamicMessage, name: &str| match m.get_field_by_name(name).as_deref() {
        Some(Pb::String(s)) => s.clone(),
        _ => String::new(),
    };
    if !text(&unknown, "contentEncoding").is_empty() {
        return Err(Error::Malformed(
            "a content encoding inside the envelope is not supported".into(),
        ));
    }
    let (api_version, kind) = match unknown.get_field_by_name("typeMeta").as_deref() {
        Some(Pb::Message(tm)) => (text(tm, "apiVersion"), text(tm, "kind")),
        _ => Default::default(),
    };
    if kind.is_empty() {
        return Err(Error::Malformed(
            "Object 'Kind' is missing in the protobuf envelope".into(),
        ));
    }
    let desc = message_for(&api_version, &kind)
        .ok_or_else(|| Error::NoSchema(format!("{api_version}/{kind}")))?;
    let raw = match unknown.get_field_by_name("raw").as_deref() {
        Some(Pb::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    let msg = DynamicMessage::decode(desc, raw)?;
    let mut obj = to_json::message(&msg)?.unwrap_or_else(|| Value::Object(Default::default()));
    if let Value::Object(o) = &mut obj {
        o.insert("apiVersion".into(), Value::String(api_version));
        o.insert("kind".into(), Value::String(kind));
    }
    Ok(obj)
}

/// Decodes a protobuf request body into its JSON form.
///
/// # Errors
/// 400 when the bytes are not a Kubernetes protobuf object of a known shape (naming the first
/// unknown field); 415 for a kind without a protobuf schema.
pub(crate) fn decode(body: &[u8]) -> Result<Value, ApiError> {
    decode_envelope(body).map_err(|e| match e {
        Error::NoSchema(what) => ApiError::unsupported_media_type(&format!(
            "{MEDIA_TYPE} for {what}, which has no protobuf form (send JSON)"
        )),
        e => ApiError::bad_request(format!("error decoding protobuf body: {e}")),
    })
}

/// Encodes a JSON object (with its `apiVersion` and `kind`) in the protobuf wire form.
///
/// # Errors
/// When the kind has no schema, or the object has a field the schema does not.
pub(crate) fn encode(obj: &Value) -> Result<Vec<u8>, Error> {
    let field = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let desc = message_for(api_version, kind)
        .ok_or_else(|| Error::NoSchema(format!("{api_version}/{kind}")))?;
    let raw = from_json::message(&desc, obj, "")?.encode_to_vec();
    let mut unknown = DynamicMessage::new(SCHEMA.unknown.clone());
    let tm_desc = SCHEMA
        .unknown
        .get_field_by_name("typeMeta")
        .and_then(|f| f.kind().as_message().cloned())
        .expect("Unknown.typeMeta is a message");
    let mut tm = DynamicMessage::new(tm_desc);
    tm.set_field_by_name("apiVersion", Pb::String(api_version.into()));
    tm.set_field_by_name("kind", Pb::String(kind.into()));
    unknown.set_field_by_name("typeMeta", Pb::Message(tm));
    unknown.set_field_by_name("raw", Pb::Bytes(raw.into()));
    unknown.set_field_by_name("contentEncoding", Pb::String(String::new()));
    unknown.set_field_by_name("contentType", Pb::String(String::new()));
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    Ok(out)
}

/// How a client's `Accept` ranks protobuf: `None` when JSON (or nothing) comes first, else
/// whether JSON is acceptable as a fallback.
fn prefers_protobuf(headers: &HeaderMap) -> Option<bool> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    let media = |part: &str| {
        part.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    };
    let is_json = |m: &str| matches!(m, "application/json" | "*/*" | "application/*");
    let mut parts = accept
        .split(',')
        .map(media)
        .filter(|m| m == MEDIA_TYPE || is_json(m));
    if parts.next()? != MEDIA_TYPE {
        return None;
    }
    Some(parts.any(|m| is_json(&m)))
}

/// The encode stage for clients that ask for protobuf first: a whole JSON response (object,
/// list, `Status`) is re-encoded; a kind without a protobuf form stays JSON when the client
/// accepts JSON, and is 406 when it does not. Streams (watches, logs) pass through.
pub(crate) async fn encode_response(headers: &HeaderMap, resp: Response) -> Response {
    let Some(json_ok) = prefers_protobuf(headers) else {
        return resp;
    };
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::internal("the response body could not be read").into_response();
    };
    let encoded = serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| Error::Malformed(e.to_string()))
        .and_then(|v| encode(&v));
    match encoded {
        Ok(pb) => {
            parts
                .headers
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(pb))
        }
        Err(_) if json_ok => Response::from_parts(parts, axum::body::Body::from(bytes)),
        Err(e) => ApiError::not_acceptable(format!(
            "only the following media types are accepted: application/json, application/yaml ({e})"
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests;
