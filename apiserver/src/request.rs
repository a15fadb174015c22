//! Decoding a request: which resource the path names, the query parameters, the body, and
//! what representation the client accepts.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::registry::{Kind, Registry};

/// What a resource path names.
#[derive(Clone)]
pub struct Target {
    /// The kind served there.
    pub kind: Arc<dyn Kind>,
    /// The namespace, for namespaced paths.
    pub namespace: Option<String>,
    /// The object name, if the path names one.
    pub name: Option<String>,
    /// `status`, `scale`, `binding`, `finalize`, ...
    pub subresource: Option<String>,
    /// The legacy `/watch/` path prefix was used.
    pub watch_path: bool,
}

/// Parses `/api/v1/...` and `/apis/{group}/{version}/...`.
///
/// Returns `None` when the path is not a resource path this server serves.
pub fn parse_path(registry: &Registry, path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let mut namespace = None;
    let rest = match rest {
        // `/namespaces/{ns}/{resource}...` unless the resource is a namespace subresource.
        ["namespaces", ns, resource, tail @ ..]
            if registry
                .get(group, version, resource)
                .is_some_and(|k| k.info().namespaced()) =>
        {
            namespace = Some(ns.to_string());
            let mut v = vec![*resource];
            v.extend_from_slice(tail);
            v
        }
        other => other.to_vec(),
    };
    let (resource, name, subresource) = match rest.as_slice() {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return None,
    };
    let kind = registry.get(group, version, resource)?;
    if kind.info().namespaced() != namespace.is_some() && !(namespace.is_none() && name.is_none()) {
        // A namespaced kind named without a namespace, or a cluster kind inside one.
        return None;
    }
    Some(Target {
        kind,
        namespace,
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
        watch_path,
    })
}

/// Query parameters of every verb (`metav1.ListOptions`, `CreateOptions`, `PatchOptions`, ...).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Params {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<String>,
    #[serde(rename = "continue")]
    pub continue_: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub watch: Option<String>,
    pub allow_watch_bookmarks: Option<String>,
    pub send_initial_events: Option<String>,
    pub timeout_seconds: Option<String>,
    pub dry_run: Option<String>,
    pub field_manager: Option<String>,
    pub field_validation: Option<String>,
    pub force: Option<String>,
    pub grace_period_seconds: Option<String>,
    pub propagation_policy: Option<String>,
    pub orphan_dependents: Option<String>,
    pub include_object: Option<String>,
    pub pretty: Option<String>,
    pub timeout: Option<String>,
    /// The request's User-Agent (default field manager); not a query parameter.
    #[serde(skip)]
    pub user_agent: Option<String>,
    /// Who asks (authenticated, after impersonation); not a query parameter.
    #[serde(skip)]
    pub user: Option<crate::auth::UserInfo>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | ""))
}

impl Params {
    /// The parameters of the API server's own writes (its field manager).
    pub(crate) fn internal() -> Params {
        Params {
            field_manager: Some("kube-apiserver".into()),
            ..Default::default()
        }
    }

    /// Parses a raw query string.
    ///
    /// # Errors
    /// 400 when a parameter is malformed.
    pub fn parse(query: Option<&str>) -> Result<Params, ApiError> {
        // `dryRun` may repeat; any value means dry run (`All` is the only defined one).
        let map: serde_json::Map<String, Value> = QueryPairs::parse(query)?
            .0
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        serde_json::from_value(Value::Object(map))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))
    }

    /// Whether this is a watch.
    pub fn is_watch(&self) -> bool {
        flag(&self.watch)
    }

    /// `dryRun=All`.
    ///
    /// # Errors
    /// 400 for any value other than `All`.
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.dry_run.as_deref() {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "Invalid dry run value: {other:?}; supported values: \"All\""
            ))),
        }
    }

    /// `allowWatchBookmarks`.
    pub fn bookmarks(&self) -> bool {
        flag(&self.allow_watch_bookmarks)
    }

    /// `sendInitialEvents`.
    pub fn send_initial_events(&self) -> bool {
        flag(&self.send_initial_events)
    }

    /// `force` (server-side apply).
    pub fn force(&self) -> bool {
        flag(&self.force)
    }

    /// A non-negative integer parameter.
    ///
    /// # Errors
    /// 400 when present but not an integer.
    pub fn int(name: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
        match v.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => s
                .parse::<i64>()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid value for {name}: {s:?}"))),
        }
    }

    /// Validates the options of a write as kube-apiserver does before reading the body
    /// (`ValidateCreateOptions`, `ValidateUpdateOptions`, `ValidatePatchOptions`): `dryRun`,
    /// `fieldManager` and `fieldValidation`. `kind` is the options kind named in the error.
    ///
    /// # Errors
    /// 422 Invalid naming each bad option.
    pub fn validate_write(&self, kind: &'static str) -> Result<(), ApiError> {
        use crate::error::FieldError;
        let mut errs = Vec::new();
        if let Some(manager) = self.field_manager.as_deref() {
            if manager.len() > FIELD_MANAGER_MAX_LEN {
                errs.push(FieldError::too_long("fieldManager", FIELD_MANAGER_MAX_LEN));
            }
            for (i, c) in manager.char_indices() {
                if c.is_control() {
                    errs.push(FieldError::invalid(
                        "fieldManager",
                        manager,
                        &format!("invalid character U+{:04X} (at position {i})", u32::from(c)),
                    ));
                }
            }
        }
        if let Some(d) = self.dry_run.as_deref()
            && d != "All"
        {
            errs.push(FieldError::not_supported("dryRun", d, &["All"]));
        }
        errs.extend(FieldError::not_one_of(
            "fieldValidation",
            self.field_validation.as_deref(),
            &["", "Ignore", "Strict", "Warn"],
        ));
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid_options(kind, &errs))
        }
    }

    /// `fieldValidation`: Ignore, Warn (default) or Strict.
    ///
    /// # Errors
    /// 400 for any other value.
    pub fn field_validation(&self) -> Result<FieldValidation, ApiError> {
        match self.field_validation.as_deref() {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
            ))),
        }
    }
}

/// The longest `fieldManager` (`metav1validation.FieldManagerMaxLength`).
const FIELD_MANAGER_MAX_LEN: usize = 128;

/// What to do with fields the schema does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop silently.
    Ignore,
    /// Drop and warn (`Warning` header).
    Warn,
    /// Reject with 400.
    Strict,
}

/// The media type of a request body, lower-cased without parameters; `application/json` when
/// the header is absent (as kube-apiserver assumes).
///
/// # Errors
/// 415 when the header is not a media type (`mime.ParseMediaType` fails in kube-apiserver).
pub fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok("application/json".into());
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::unsupported_media_type("(not text)"))?;
    let mut parts = text.split(';');
    let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+*'%`|~".contains(&b))
    };
    let well_formed = media
        .split_once('/')
        .is_some_and(|(kind, sub)| token(kind) && token(sub))
        && parts.all(|p| {
            let p = p.trim();
            p.is_empty() || p.split_once('=').is_some_and(|(k, _)| token(k.trim()))
        });
    if !well_formed {
        return Err(ApiError::unsupported_media_type(text));
    }
    Ok(media)
}

/// A routed write request as its handler sees it: the target it names, its query, and its
/// body as received (decoded by the handler, once, for the media type the client sent).
pub(crate) struct Call<'a> {
    /// The kind, namespace, name and subresource named by the path.
    pub t: Target,
    /// The query parameters.
    pub q: Params,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

impl<'a> Call<'a> {
    pub(crate) fn new(t: Target, q: Params, headers: &'a HeaderMap, body: &'a [u8]) -> Self {
        Call {
            t,
            q,
            headers,
            body,
        }
    }

    /// The body parsed into a JSON object.
    pub(crate) fn decode(&self) -> Result<Body, ApiError> {
        decode_body(self.headers, self.body)
    }

    /// The body's bytes as received.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.body
    }

    /// How a PATCH body is to be applied, from its `Content-Type`.
    pub(crate) fn patch_type(&self) -> Result<crate::patch::PatchType, ApiError> {
        crate::patch::PatchType::from_content_type(&content_type(self.headers)?)
    }
}

/// A request body parsed into a JSON object.
pub struct Body {
    /// The object.
    pub object: Value,
    /// Paths of keys given more than once (the last one wins, as in kube-apiserver; Strict
    /// field validation refuses them).
    pub duplicates: Vec<String>,
}

/// Parses a JSON, YAML or protobuf body into a JSON object.
///
/// # Errors
/// 400 on malformed input; 415 on an unsupported media type.
pub fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Body, ApiError> {
    let ct = content_type(headers)?;
    let value: Value = match ct.as_str() {
        crate::protobuf::MEDIA_TYPE => crate::protobuf::decode(body)?,
        "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON body: {e}")))?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let text = std::str::from_utf8(body)
                .map_err(|e| ApiError::bad_request(format!("body is not UTF-8: {e}")))?;
            serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML body: {e}")))?
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let duplicates = if matches!(ct.as_str(), "application/json" | "*/*") {
        duplicate_fields(body)
    } else {
        Vec::new()
    };
    Ok(Body {
        object: value,
        duplicates,
    })
}

/// The paths (`metadata.labels.app`, `spec.containers[0].name`) of object keys that appear
/// twice in a JSON document; `serde_json::Value` keeps only the last.
pub fn duplicate_fields(json: &[u8]) -> Vec<String> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    struct Scan<'a> {
        path: String,
        out: &'a mut Vec<String>,
    }

    impl<'de> DeserializeSeed<'de> for Scan<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Scan<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
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
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            while seq
                .next_element_seed(Scan {
                    path: format!("{}[{i}]", self.path),
                    out: &mut *self.out,
                })?
                .is_some()
            {
                i += 1;
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                let path = if self.path.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", self.path)
                };
                if !seen.insert(key) {
                    self.out.push(path.clone());
                }
                map.next_value_seed(Scan {
                    path,
                    out: &mut *self.out,
                })?;
            }
            Ok(())
        }
    }

    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(json);
    let _ = Scan {
        path: String::new(),
        out: &mut out,
    }
    .deserialize(&mut de);
    out
}

/// Parses YAML or JSON text (apply patches are YAML, JSON being a subset).
///
/// # Errors
/// 400 on malformed input.
pub fn decode_yaml(body: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("body is not UTF-8: {e}")))?;
    serde_saphyr::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// What representation the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// The object or list as JSON.
    Object,
    /// A `meta.k8s.io/v1` Table.
    Table,
    /// `meta.k8s.io/v1` PartialObjectMetadata (and `...List`): metadata only.
    Metadata,
}

/// Picks the representation from `Accept`, as kube-apiserver's content negotiation does for
/// the forms wasmkube serves.
///
/// # Errors
/// 406 when only unsupported media types (CBOR, say) are acceptable.
pub fn negotiate(headers: &HeaderMap) -> Result<Representation, ApiError> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Representation::Object);
    };
    let mut any_json = false;
    for part in accept.split(',') {
        let mut it = part.split(';').map(str::trim);
        let media = it.next().unwrap_or_default().to_ascii_lowercase();
        let params: Vec<&str> = it.collect();
        let is_json = matches!(
            media.as_str(),
            "application/json"
                | "*/*"
                | "application/*"
                | "application/yaml"
                | crate::protobuf::MEDIA_TYPE
        );
        if !is_json {
            continue;
        }
        let table = params.iter().any(|p| p.eq_ignore_ascii_case("as=Table"));
        let metadata = params.iter().any(|p| {
            p.eq_ignore_ascii_case("as=PartialObjectMetadata")
                || p.eq_ignore_ascii_case("as=PartialObjectMetadataList")
        });
        let v1 = params.contains(&"v=v1") || !params.iter().any(|p| p.starts_with("v="));
        if table && v1 {
            return Ok(Representation::Table);
        }
        if metadata && v1 {
            return Ok(Representation::Metadata);
        }
        if !params.iter().any(|p| p.starts_with("as=")) {
            any_json = true;
        }
    }
    if any_json {
        Ok(Representation::Object)
    } else {
        Err(ApiError::not_acceptable(format!(
            "only the following media types are accepted: application/json, application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io (got {accept:?})"
        )))
    }
}

/// A query's parameters as sent, in order: for the endpoints that read them one by one
/// (logs, exec and attach, metrics).
#[derive(Debug, Default)]
pub(crate) struct QueryPairs(pub(crate) Vec<(String, String)>);

impl QueryPairs {
    /// Parses a raw query string.
    ///
    /// # Errors
    /// 400 when it is not `application/x-www-form-urlencoded`.
    pub(crate) fn parse(query: Option<&str>) -> Result<QueryPairs, ApiError> {
        serde_urlencoded::from_str(query.unwrap_or_default())
            .map(QueryPairs)
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))
    }

    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_should_resolve_namespaced_cluster_and_subresources() {
        let reg = crate::kinds::builtin();
        let t = parse_path(&reg, "/api/v1/namespaces/default/pods/web/status").expect("pod status");
        assert_eq!(t.kind.info().plural, "pods");
        assert_eq!(
            (
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            (Some("default"), Some("web"), Some("status"))
        );
        let t = parse_path(&reg, "/api/v1/namespaces/kube-system").expect("namespace");
        assert_eq!(
            (t.kind.info().plural, t.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let t = parse_path(&reg, "/api/v1/namespaces/x/finalize").expect("finalize");
        assert_eq!(t.subresource.as_deref(), Some("finalize"));
        let t = parse_path(&reg, "/apis/apps/v1/deployments").expect("all namespaces");
        assert!(t.namespace.is_none() && t.name.is_none());
        let t = parse_path(&reg, "/api/v1/watch/namespaces/default/pods").expect("watch path");
        assert!(t.watch_path);
        assert!(parse_path(&reg, "/apis/apps/v1/namespaces/default/widgets").is_none());
        assert!(
            parse_path(&reg, "/api/v1/pods/x").is_none(),
            "a namespaced object needs a namespace"
        );
    }

    #[test]
    fn duplicate_keys_should_be_named_by_path() {
        let body = br#"{"metadata":{"name":"a","labels":{"x":"1","x":"2"}},"data":{},"data":{"k":"v"},"list":[{"n":1,"n":2}]}"#;
        assert_eq!(
            duplicate_fields(body),
            ["metadata.labels.x", "data", "list[0].n"]
        );
        assert!(duplicate_fields(br#"{"a":{"b":1},"c":{"b":2}}"#).is_empty());
    }

    #[test]
    fn content_types_should_be_media_types() {
        let ct = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().expect("header"));
            content_type(&h)
        };
        assert_eq!(
            content_type(&HeaderMap::new()).expect("absent"),
            "application/json"
        );
        assert_eq!(
            ct("Application/JSON; charset=utf-8").expect("ok"),
            "application/json"
        );
        assert_eq!(
            ct("application/apply-patch+yaml").expect("ok"),
            "application/apply-patch+yaml"
        );
        for bad in [";;;==;", "", "json", "application/", "a/b; =x", "a b/c"] {
            assert_eq!(ct(bad).expect_err(bad).code, 415, "{bad:?}");
        }
    }

    #[test]
    fn write_options_should_be_validated_like_kube_apiserver() {
        let q = Params::parse(Some("fieldValidation=Bogus")).expect("parse");
        let e = q.validate_write("CreateOptions").expect_err("bogus");
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert!(e.message.starts_with("CreateOptions.meta.k8s.io \"\" is invalid: fieldValidation: Unsupported value: \"Bogus\""), "{}", e.message);
        let long = format!("fieldManager={}", "m".repeat(129));
        let e = Params::parse(Some(&long))
            .expect("parse")
            .validate_write("PatchOptions")
            .expect_err("long");
        assert!(
            e.message
                .contains("fieldManager: Too long: may not be more than 128 bytes"),
            "{}",
            e.message
        );
        let ok = format!(
            "fieldManager={}&fieldValidation=Strict&dryRun=All",
            "m".repeat(128)
        );
        Params::parse(Some(&ok))
            .expect("parse")
            .validate_write("UpdateOptions")
            .expect("valid");
    }

    #[test]
    fn accept_should_choose_table_or_object() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json".parse().expect("hdr"));
        assert_eq!(negotiate(&h).expect("ok"), Representation::Table);
        h.insert(header::ACCEPT, "application/json".parse().expect("hdr"));
        assert_eq!(negotiate(&h).expect("ok"), Representation::Object);
        h.insert(
            header::ACCEPT,
            "application/vnd.kubernetes.protobuf".parse().expect("hdr"),
        );
        assert_eq!(negotiate(&h).expect("ok"), Representation::Object);
        h.insert(header::ACCEPT, "application/cbor".parse().expect("hdr"));
        assert_eq!(negotiate(&h).expect_err("406").code, 406);
    }
}
