//! The identity of a served kind: group/version/kind, its REST resource name, scope, short
//! names, categories and subresources, as discovery reports them.

use k8s_openapi::{Resource, ResourceScope};

/// Whether objects live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `/namespaces/{ns}/{resource}/{name}`.
    Namespaced,
    /// `/{resource}/{name}`.
    Cluster,
}

/// Describes one served resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Kind, e.g. `Pod`.
    pub kind: &'static str,
    /// Plural resource name used in URLs, e.g. `pods`.
    pub plural: &'static str,
    /// Singular name, e.g. `pod`.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub scope: Scope,
    /// Short names (`po`, `svc`, ...).
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Whether `/status` is served.
    pub status: bool,
    /// Whether `/scale` is served.
    pub scale: bool,
    /// Stored as another resource (`(group, plural)`), as `events.k8s.io/v1` events are
    /// stored as core/v1 events: one object, two API views.
    pub stored_as: Option<(&'static str, &'static str)>,
}

impl ResourceInfo {
    /// The identity of a `k8s-openapi` kind, with no short names, categories or subresources.
    pub fn of<K: Resource>() -> ResourceInfo {
        ResourceInfo {
            group: K::GROUP,
            version: K::VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
            singular: K::KIND.to_ascii_lowercase(),
            scope: if is_namespaced::<K::Scope>() {
                Scope::Namespaced
            } else {
                Scope::Cluster
            },
            short_names: &[],
            categories: &[],
            status: false,
            scale: false,
            stored_as: None,
        }
    }

    /// Stores objects under another resource's keys (see [`ResourceInfo::stored_as`]).
    #[must_use]
    pub fn stored_with<K: Resource>(mut self) -> Self {
        self.stored_as = Some((K::GROUP, K::URL_PATH_SEGMENT));
        self
    }

    /// Adds short names.
    #[must_use]
    pub fn short_names(mut self, names: &'static [&'static str]) -> Self {
        self.short_names = names;
        self
    }

    /// A workload that scales (Deployment, ReplicaSet, StatefulSet, ReplicationController):
    /// these short names, in the `all` category, with `/status` and `/scale`.
    #[must_use]
    pub fn scalable(self, short_names: &'static [&'static str]) -> Self {
        self.short_names(short_names)
            .in_all()
            .with_status()
            .with_scale()
    }

    /// Puts the kind in the `all` category.
    #[must_use]
    pub fn in_all(mut self) -> Self {
        self.categories = &["all"];
        self
    }

    /// Serves the `/status` subresource.
    #[must_use]
    pub fn with_status(mut self) -> Self {
        self.status = true;
        self
    }

    /// Serves the `/scale` subresource.
    #[must_use]
    pub fn with_scale(mut self) -> Self {
        self.scale = true;
        self
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether objects are namespaced.
    pub fn namespaced(&self) -> bool {
        self.scope == Scope::Namespaced
    }

    /// The store key prefix of all objects of this resource (all namespaces).
    pub fn prefix(&self) -> String {
        let (group, plural) = self.stored_as.unwrap_or((self.group, self.plural));
        let group = if group.is_empty() { "core" } else { group };
        format!("/{group}/{plural}/")
    }

    /// The store key prefix of one namespace (or of all objects, for cluster-scoped kinds).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match (self.scope, namespace) {
            (Scope::Namespaced, Some(ns)) => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.namespace_prefix(namespace))
    }
}

/// Whether a scope marker type is the namespaced one; used by [`ResourceInfo::of`].
pub fn is_namespaced<S: ResourceScope>() -> bool {
    std::any::type_name::<S>() == std::any::type_name::<k8s_openapi::NamespaceResourceScope>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Pod};

    #[test]
    fn info_should_follow_k8s_openapi_identity() {
        let pods = ResourceInfo::of::<Pod>();
        assert_eq!((pods.group, pods.version, pods.plural), ("", "v1", "pods"));
        assert!(pods.namespaced());
        assert_eq!(pods.key(Some("default"), "web"), "/core/pods/default/web");
        let deploy = ResourceInfo::of::<Deployment>();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(deploy.key(Some("ns"), "d"), "/apps/deployments/ns/d");
        let events = ResourceInfo::of::<k8s_openapi::api::events::v1::Event>()
            .stored_with::<k8s_openapi::api::core::v1::Event>();
        assert_eq!(
            events.key(Some("ns"), "e"),
            "/core/events/ns/e",
            "one object, two views"
        );
        let ns = ResourceInfo::of::<Namespace>();
        assert!(!ns.namespaced());
        assert_eq!(ns.key(None, "default"), "/core/namespaces/default");
    }
}
