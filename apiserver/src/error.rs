//! The one error type of the apiserver. Every failure leaves as a Kubernetes `Status` object
//! with the reason, code and details kube-apiserver would send (`k8s.io/apimachinery/pkg/api/errors`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

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

    /// A field may not be set or changed.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
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
    details: Option<serde_json::Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
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
        .with_details(json!({"name": name, "group": info.group, "kind": info.plural}))
    }

    /// 404 NotFound for a path that serves nothing.
    pub fn no_route(path: &str) -> Self {
        ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
            .with_details(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]}))
    }

    /// 409 AlreadyExists.
    pub fn already_exists(info: &ResourceInfo, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", Self::qualified(info)),
        )
        .with_details(json!({"name": name, "group": info.group, "kind": info.plural}))
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
        .with_details(json!({"name": name, "group": info.group, "kind": info.plural}))
    }

    /// 409 Conflict after a read-modify-write lost the race too many times in a row.
    pub fn retries_exhausted(info: &ResourceInfo, name: &str) -> Self {
        ApiError::conflict(info, name, "too many concurrent updates; please retry")
    }

    /// The message Kubernetes uses for a stale resourceVersion.
    pub const MODIFIED: &'static str = "the object has been modified; please apply your changes to the latest version and try again";

    /// 422 Invalid listing each bad field.
    pub fn invalid(info: &ResourceInfo, name: &str, errors: &[FieldError]) -> Self {
        let bodies: Vec<String> = errors.iter().map(FieldError::body).collect();
        let joined = if bodies.len() == 1 {
            bodies[0].clone()
        } else {
            format!("[{}]", bodies.join(", "))
        };
        let causes: Vec<_> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
            .collect();
        ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {joined}", info.kind),
        )
        .with_details(
            json!({"name": name, "group": info.group, "kind": info.kind, "causes": causes}),
        )
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
        let causes: Vec<_> = causes
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
            .collect();
        ApiError::new(409, "Conflict", message).with_details(
            json!({"name": name, "group": info.group, "kind": info.plural, "causes": causes}),
        )
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
        .with_details(json!({"name": name, "group": info.group, "kind": info.plural}))
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

    /// 503 ServiceUnavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    /// 504 Timeout for a resourceVersion the store has not reached, with the cause client-go's
    /// reflector looks for to relist (`ResourceVersionTooLarge`).
    pub fn too_large_resource_version(rv: u64, current: u64) -> Self {
        ApiError::new(504, "Timeout", format!("Too large resource version: {rv}, current: {current}"))
            .with_details(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}))
    }

    /// 504 Timeout.
    pub fn timeout(message: impl Into<String>) -> Self {
        ApiError::new(504, "Timeout", message)
    }

    /// The `Status` object.
    pub fn status(&self) -> serde_json::Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
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
                "this apiserver is not the raft leader (leader: {leader:?})"
            )),
            other => {
                let mut msg = other.to_string();
                let mut src = std::error::Error::source(&other);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                ApiError::internal(msg)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.status()).expect("status serializes");
        let mut resp = (
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        )
            .into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}
