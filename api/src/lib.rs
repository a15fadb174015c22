//! What the Kubernetes object model needs beyond the `k8s-openapi` types: the kind registry
//! (group, version, resource, scope, short names), label and field selectors (parse and
//! match), and the keys objects are stored under. Pure data, no IO; shared by the apiserver
//! and every client component.
//!
//! ```
//! use wasmkube_api::selector::LabelSelector;
//! let sel: LabelSelector = "app=web,tier in (frontend, backend),!canary".parse().unwrap();
//! let labels = [("app", "web"), ("tier", "backend")].into_iter()
//!     .map(|(k, v)| (k.to_string(), v.to_string())).collect();
//! assert!(sel.matches(&labels));
//! ```

pub mod field;
pub mod metrics;
pub mod names;
pub mod netpol;
pub mod quantity;
pub mod quota;
pub mod resource;
pub mod selector;
pub mod services;

/// The reason of the `Ready=False` condition the node lifecycle controller puts on the pods of
/// a node that stopped reporting. The node's wasmlet, back in touch, sees it on its pods and
/// writes their status again (the kubelet's periodic status sync does the same upstream).
pub const NODE_UNREACHABLE_REASON: &str = "NodeUnreachable";

pub use resource::{ResourceInfo, Scope};

/// The token of an `Authorization` header value, parsed as kube-apiserver's bearer-token
/// authenticator does: the scheme is case-insensitive and the token is the one word after a
/// single space (`Bearer  x`, with two spaces, carries an empty token: none).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let mut parts = authorization.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares two secrets in time that depends only on their lengths.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error and its causes on one line (`cannot listen on 10.244.0.5:80: address in use`),
/// for logs and messages that must say everything (each layer's `Display` says only its own).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
