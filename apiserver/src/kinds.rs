//! The built-in kinds, one strategy each, grouped by API group.

pub(crate) mod apiextensions;
mod apps;
mod autoscaling;
mod batch;
mod config;
mod core;
mod events;
pub(crate) mod misc;
mod networking;
pub(crate) mod pod;
pub(crate) mod policy;
mod quota;
pub(crate) mod rbac;
mod template;

use crate::registry::Registry;

/// Every kind wasmkube serves.
pub fn builtin() -> Registry {
    let r = Registry::default();
    core::register(&r);
    apps::register(&r);
    autoscaling::register(&r);
    batch::register(&r);
    misc::register(&r);
    networking::register(&r);
    events::register(&r);
    rbac::register(&r);
    quota::register(&r);
    apiextensions::register(&r);
    policy::register(&r);
    r
}

/// The identity of namespaces, which the apiserver itself consults on every namespaced create.
pub fn namespace_info() -> wasmkube_api::ResourceInfo {
    wasmkube_api::ResourceInfo::of::<k8s_openapi::api::core::v1::Namespace>()
}
