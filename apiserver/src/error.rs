//! The one error type of the apiserver. Every failure leaves as a Kubernetes `Status` object
//! with the reason, code and details kube-apiserver would send (`k8s.io/apimachinery/pkg/api/errors`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use wasmkube_api::ResourceInfo;

/// One invalid field, as in `metav1.StatusCause`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueForbidden`, ...
    pub reason: &'static str,
    /// JSON path of the field, e.g. `spec.containers[0].name`.
    pub field: String,
    /// Human description, formatted as Kubernetes' `field.Error.ErrorBody`.
    pub message: String,
}

impl FieldError {
    /// A required field is missing.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        FieldError {
            reason: "FieldValueRequired",
            field: field.into(),
            message,
        }
    }

    /// A field has a bad value.
    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: \"{value}\": {detail}"),
        }
    }

    /// A field has a value outside a fixed set.
    pub fn not_supported(field: impl Into<String>, value: &str, allowed: &[&str]) -> Self {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        FieldError {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: \"{value}\": supported values: {}",
                allowed.join(", ")
            ),
        }
    }

    /// [`FieldError::not_supported`] for a `value` that is set and not one of `allowed` (the
    /// message lists them in the order given, as Kubernetes' validation does).
    pub fn not_one_of<'a>(
        field: impl Into<String>,
        value: impl Into<Option<&'a str>>,
        allowed: &[&str],
    ) -> Option<Self> {
        let value = value.into()?;
        (!allowed.contains(&value)).then(|| FieldError::not_supported(field, value, allowed))
    }

    /// A field may not be set or changed.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }

    /// A value is longer than `max` bytes.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        FieldError {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: may not be more than {max} bytes"),
        }
    }

    /// A list has two entries with the same key.
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        FieldError {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: \"{value}\""),
        }
    }

    fn body(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// An error answered as a Kubernetes `Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `metav1.StatusReason`.
    pub reason: &'static str,
    /// Human message.
    pub message: String,
    details: Option<Box<Details>>,
    /// What went wrong below this layer, for the server's log only (never sent to clients).
    cause: Option<String>,
}

/// `metav1.StatusDetails`, its fields in kube-apiserver's order, empty ones left out.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Details {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    causes: Vec<Cause>,
    #[serde(skip_serializing_if = "is_zero")]
    retry_after_seconds: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Details {
    /// The object a status is about: `kind` is the resource (plural), as kube-apiserver says.
    pub fn of(info: &ResourceInfo, name: &str) -> Self {
        Details {
            name: name.to_owned(),
            group: info.group.to_owned(),
            kind: info.plural.to_owned(),
            ..Details::default()
        }
    }

    /// With the object's UID.
    #[must_use]
    pub fn uid(mut self, uid: &str) -> Self {
        self.uid = uid.to_owned();
        self
    }
}

/// `metav1.StatusCause`.
#[derive(Debug, Clone, Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    field: String,
}

impl From<&FieldError> for Cause {
    fn from(e: &FieldError) -> Self {
        Cause {
            reason: e.reason,
            message: e.message.clone(),
            field: e.field.clone(),
        }
    }
}

#[derive(Serialize)]
struct EmptyMeta {}

/// `metav1.Status` as kube-apiserver encodes it: `kind, apiVersion, metadata, status, message,
/// reason, details, code`, empty fields left out (clients compare error bodies byte for byte).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusBody<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: EmptyMeta,
    status: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Details>,
    #[serde(skip_serializing_if = "is_zero_code")]
    code: u16,
}

fn is_zero_code(n: &u16) -> bool {
    *n == 0
}

/// The `Status` of a success (a delete that does not return the object), with its trailing
/// newline.
pub fn success(details: &Details) -> Vec<u8> {
    encode(&StatusBody {
        kind: "Status",
        api_version: "v1",
        metadata: EmptyMeta {},
        status: "Success",
        message: "",
        reason: "",
        details: Some(details),
        code: 0,
    })
}

fn encode(status: &StatusBody<'_>) -> Vec<u8> {
    let mut body = serde_json::to_vec(status).expect("a Status serializes");
    body.push(b'\n');
    body
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            cause: None,
        }
    }

    fn with_details(mut self, details: Details) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    fn with_causes(mut self, causes: Vec<Cause>) -> Self {
        self.details.get_or_insert_with(Box::default).causes = causes;
        self
    }

    /// 429 `TooManyRequests` for an eviction a disruption budget refuses, with the budget's
    /// `DisruptionBudget` cause (what `kubectl drain` retries on).
    pub(crate) fn disruption_budget(message: &str, cause: String) -> Self {
        ApiError::new(429, "TooManyRequests", message).with_causes(vec![Cause {
            reason: "DisruptionBudget",
            message: cause,
            field: String::new(),
        }])
    }

    fn qualified(info: &ResourceInfo) -> String {
        if info.group.is_empty() {
            info.plural.to_string()
        } else {
            format!("{}.{}", info.plural, info.group)
        }
    }

    /// 404 NotFound for one object.
    pub fn not_found(info: &ResourceInfo, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", Self::qualified(info)),
        )
        .with_details(Details::of(info, name))
    }

    /// 404 NotFound for a path that serves nothing.
    pub fn no_route(path: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
        .with_causes(vec![Cause {
            reason: "UnexpectedServerResponse",
            message: "404 page not found".into(),
            field: String::new(),
        }])
    }

    /// 409 AlreadyExists.
    pub fn already_exists(info: &ResourceInfo, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", Self::qualified(info)),
        )
        .with_details(Details::of(info, name))
    }

    /// 409 Conflict on a stale resourceVersion or failed precondition.
    pub fn conflict(info: &ResourceInfo, name: &str, why: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                Self::qualified(info)
            ),
        )
        .with_details(Details::of(info, name))
    }

    /// 409 Conflict after a read-modify-write lost the race too many times in a row.
    pub fn retries_exhausted(info: &ResourceInfo, name: &str) -> Self {
        ApiError::conflict(info, name, "too many concurrent updates; please retry")
    }

    /// The message Kubernetes uses for a stale resourceVersion.
    pub const MODIFIED: &'static str = "the object has been modified; please apply your changes to the latest version and try again";

    /// 422 Invalid of request options (`CreateOptions`, `PatchOptions`, ... in `meta.k8s.io`),
    /// as kube-apiserver answers options that fail validation.
    pub fn invalid_options(kind: &'static str, errors: &[FieldError]) -> Self {
        Self::invalid_kind("meta.k8s.io", kind, "", errors)
    }

    /// 422 Invalid listing each bad field.
    pub fn invalid(info: &ResourceInfo, name: &str, errors: &[FieldError]) -> Self {
        Self::invalid_kind(info.group, info.kind, name, errors)
    }

    /// `errors.NewInvalid`: the message names the group-qualified kind.
    pub(crate) fn invalid_kind(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Self {
        let bodies: Vec<String> = errors.iter().map(FieldError::body).collect();
        let joined = if bodies.len() == 1 {
            bodies[0].clone()
        } else {
            format!("[{}]", bodies.join(", "))
        };
        let qualified = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let details = Details {
            // Invalid names the kind, not the resource.
            name: name.to_owned(),
            group: group.to_owned(),
            kind: kind.to_owned(),
            ..Details::default()
        };
        ApiError::new(
            422,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid: {joined}"),
        )
        .with_details(details)
        .with_causes(errors.iter().map(Cause::from).collect())
    }

    /// 422 Invalid without field details (a JSON patch `test` that failed).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        ApiError::new(422, "Invalid", message)
    }

    /// 409 Conflict of server-side apply, one cause per conflicting field.
    pub fn apply_conflict(info: &ResourceInfo, name: &str, causes: &[FieldError]) -> Self {
        let n = causes.len();
        let lines: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.message, c.field))
            .collect();
        let message = if n == 1 {
            format!("Apply failed with 1 conflict: {}", lines[0])
        } else {
            format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
        };
        ApiError::new(409, "Conflict", message)
            .with_details(Details::of(info, name))
            .with_causes(causes.iter().map(Cause::from).collect())
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden.
    pub fn forbidden(info: &ResourceInfo, name: &str, why: &str) -> Self {
        ApiError::new(
            403,
            "Forbidden",
            format!("{} \"{name}\" is forbidden: {why}", Self::qualified(info)),
        )
        .with_details(Details::of(info, name))
    }

    /// 403 Forbidden by the authorizer, in kube-apiserver's words.
    pub fn forbidden_request(user: &str, attrs: &crate::auth::Attributes) -> Self {
        let message = if attrs.is_resource_request() {
            let resource = if attrs.subresource.is_empty() {
                attrs.resource.clone()
            } else {
                format!("{}/{}", attrs.resource, attrs.subresource)
            };
            let scope = if attrs.namespace.is_empty() {
                "at the cluster scope".to_owned()
            } else {
                format!("in the namespace \"{}\"", attrs.namespace)
            };
            // `errors.NewForbidden` names the group-qualified resource (`deployments.apps`).
            let qualified = if attrs.group.is_empty() {
                attrs.resource.clone()
            } else {
                format!("{}.{}", attrs.resource, attrs.group)
            };
            format!(
                "{qualified}{} is forbidden: User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
                if attrs.name.is_empty() {
                    String::new()
                } else {
                    format!(" \"{}\"", attrs.name)
                },
                attrs.verb,
                attrs.group,
            )
        } else {
            format!(
                "forbidden: User \"{user}\" cannot {} path \"{}\"",
                attrs.verb, attrs.path
            )
        };
        ApiError::new(403, "Forbidden", message).with_details(Details {
            name: attrs.name.clone(),
            group: attrs.group.clone(),
            kind: attrs.resource.clone(),
            ..Details::default()
        })
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_supported(info: &ResourceInfo, verb: &str) -> Self {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "{verb} is not supported on resources of kind \"{}\"",
                Self::qualified(info)
            ),
        )
    }

    /// 406 NotAcceptable.
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        ApiError::new(406, "NotAcceptable", message)
    }

    /// 410 Expired: a resourceVersion or continue token older than the retained history.
    pub fn expired(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError::new(413, "RequestEntityTooLarge", message)
    }

    /// 431: the path and headers together are over `limit` bytes. Kubernetes has no reason
    /// for it; the `Status` leaves `reason` out.
    pub fn header_too_large(limit: usize) -> Self {
        ApiError::new(
            431,
            "",
            format!("request header fields too large (limit {limit} bytes)"),
        )
    }

    /// 431 from hyper's own limits: more headers than it parses, or a head over its buffer.
    pub fn too_many_headers(max_headers: usize, max_bytes: usize) -> Self {
        ApiError::new(
            431,
            "",
            format!(
                "request header fields too large (at most {max_headers} headers and {max_bytes} bytes in all)"
            ),
        )
    }

    /// 414: a request URI longer than `limit` bytes. Kubernetes has no reason for it.
    pub fn uri_too_long(limit: usize) -> Self {
        ApiError::new(
            414,
            "",
            format!("request URI too long (limit {limit} bytes)"),
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/apply-patch+yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// 500 InternalError whose `cause` (an error chain) goes to the log, not to the client.
    pub fn internal_with_cause(message: impl Into<String>, cause: &dyn std::error::Error) -> Self {
        let mut e = ApiError::internal(message);
        e.cause = Some(wasmkube_api::error_chain(cause));
        e
    }

    /// The cause to log with a 5xx, if one was recorded.
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    /// The error as a client sees it after the server logged it under `request_id`: a 500
    /// says only which request failed, so the client can quote it and the log has the rest.
    #[must_use]
    pub fn for_client(mut self, request_id: &str) -> Self {
        if self.code == 500 {
            self.message = format!("{} (request {request_id})", self.message);
        }
        self
    }

    /// 409 Conflict for a request that is not about one object (a membership change).
    pub fn conflict_request(message: impl Into<String>) -> Self {
        ApiError::new(409, "Conflict", message)
    }

    /// 503 ServiceUnavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    /// 504 Timeout for a resourceVersion the store has not reached, with the cause client-go's
    /// reflector looks for to relist (`ResourceVersionTooLarge`).
    pub fn too_large_resource_version(rv: u64, current: u64) -> Self {
        ApiError::new(
            504,
            "Timeout",
            format!("Too large resource version: {rv}, current: {current}"),
        )
        .with_details(Details {
            retry_after_seconds: 1,
            ..Details::default()
        })
        .with_causes(vec![Cause {
            reason: "ResourceVersionTooLarge",
            message: "Too large resource version".into(),
            field: String::new(),
        }])
    }

    /// 504 Timeout.
    pub fn timeout(message: impl Into<String>) -> Self {
        ApiError::new(504, "Timeout", message)
    }

    /// The `Status` body, encoded as kube-apiserver does, with its trailing newline.
    pub fn status_body(&self) -> Vec<u8> {
        encode(&StatusBody {
            kind: "Status",
            api_version: "v1",
            metadata: EmptyMeta {},
            status: "Failure",
            message: &self.message,
            reason: self.reason,
            details: self.details.as_deref(),
            code: self.code,
        })
    }

    /// The `Status` object as JSON.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.status_body()).expect("a Status is JSON")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<wasmkube_store::Error> for ApiError {
    fn from(e: wasmkube_store::Error) -> Self {
        match e {
            wasmkube_store::Error::Compacted { compacted } => ApiError::expired(format!(
                "The resourceVersion for the provided list is too old (oldest retained: {compacted})"
            )),
            wasmkube_store::Error::NotLeader { leader } => ApiError::unavailable(format!(
                "no raft leader took the request (leader known here: {leader:?}); the servers may have lost quorum"
            )),
            wasmkube_store::Error::Membership(why) => ApiError::conflict_request(why),
            e @ wasmkube_store::Error::Timeout(_) => ApiError::timeout(e.to_string()),
            // The server's own disk failed: the client should go to another server.
            e @ wasmkube_store::Error::Stopped(_) => ApiError::unavailable(e.to_string()),
            other => ApiError::internal_with_cause("the store failed", &other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.status_body();
        let mut resp = (
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        )
            .into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let budget = self
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "DisruptionBudget"));
        // An eviction a disruption budget refuses says no Retry-After, as kube-apiserver's
        // does: `kubectl drain` reports it and tries again on its own schedule.
        if self.code == 429 && !budget {
            // Clients (client-go, kube-rs's retry policy) wait this long and try again. (Not on
            // a 503 for a leader election: kube-rs would wait a whole second where its own
            // back-off, from 5 ms, retries as soon as a new leader takes writes.)
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
