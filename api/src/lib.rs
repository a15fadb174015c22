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
pub mod names;
pub mod quantity;
pub mod resource;
pub mod selector;
pub mod services;

pub use resource::{ResourceInfo, Scope};

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
