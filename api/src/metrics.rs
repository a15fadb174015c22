//! Resource metrics: the resource metrics API (`metrics.k8s.io/v1beta1` NodeMetrics and
//! PodMetrics, what `kubectl top` and the HorizontalPodAutoscaler read) and the node summary
//! it is made from (the kubelet's `/stats/summary`, `stats/v1alpha1`, the fields the wasmlet
//! fills).
//!
//! The metrics kinds implement `k8s_openapi::Resource`, so a kube `Api` reads them like any
//! other kind.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta, Time};
use serde::{Deserialize, Serialize};

/// The API group and version.
pub const GROUP_VERSION: &str = "metrics.k8s.io/v1beta1";

/// The usage of a node (`kubectl top node`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeMetrics {
    /// The node's name and labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The end of the window the usage was measured over.
    pub timestamp: Option<Time>,
    /// Its length (a duration such as `10s`).
    #[serde(default)]
    pub window: String,
    /// `cpu` and `memory`.
    #[serde(default)]
    pub usage: BTreeMap<String, Quantity>,
}

/// The usage of a pod's containers (`kubectl top pod`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMetrics {
    /// The pod's name, namespace and labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The end of the window the usage was measured over.
    pub timestamp: Option<Time>,
    /// Its length (a duration such as `10s`).
    #[serde(default)]
    pub window: String,
    /// One entry per running container.
    #[serde(default)]
    pub containers: Vec<ContainerMetrics>,
}

/// One container's usage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerMetrics {
    /// The container's name.
    pub name: String,
    /// `cpu` and `memory`.
    #[serde(default)]
    pub usage: BTreeMap<String, Quantity>,
}

macro_rules! metrics_kind {
    ($ty:ident, $kind:literal, $list:literal, $plural:literal, $scope:ty) => {
        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = GROUP_VERSION;
            const GROUP: &'static str = "metrics.k8s.io";
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "v1beta1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = $scope;
        }

        impl k8s_openapi::ListableResource for $ty {
            const LIST_KIND: &'static str = $list;
        }

        impl k8s_openapi::Metadata for $ty {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

metrics_kind!(
    NodeMetrics,
    "NodeMetrics",
    "NodeMetricsList",
    "nodes",
    k8s_openapi::ClusterResourceScope
);
metrics_kind!(
    PodMetrics,
    "PodMetrics",
    "PodMetricsList",
    "pods",
    k8s_openapi::NamespaceResourceScope
);

/// The custom metrics API's group and version (what the HorizontalPodAutoscaler reads Pods
/// and Object metrics from).
pub const CUSTOM_GROUP_VERSION: &str = "custom.metrics.k8s.io/v1beta2";

/// `wasi:http` requests not finished, per pod (a Pods metric) or summed over a Service's
/// pods (an Object metric): the concurrency Knative's autoscaler scales on.
pub const REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";
/// `wasi:http` requests per second over the metrics window, per pod or per Service.
pub const REQUESTS_PER_SECOND: &str = "http_requests_per_second";

/// One value of a custom metric (`custom.metrics.k8s.io/v1beta2` MetricValue).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    /// The object it describes.
    pub described_object: k8s_openapi::api::core::v1::ObjectReference,
    /// Which metric.
    pub metric: MetricIdentifier,
    /// The end of the window it was measured over.
    pub timestamp: Option<Time>,
    /// The window's length.
    #[serde(default)]
    pub window_seconds: Option<i64>,
    /// The value.
    pub value: Quantity,
}

/// A metric's name (and the selector it was asked with).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricIdentifier {
    /// The metric's name.
    pub name: String,
    /// The selector it was asked with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

/// A list as the metrics APIs answer it: resource metrics (`NodeMetricsList`,
/// `PodMetricsList`, each item with its own `kind` and `apiVersion`), custom and external
/// metric values (`MetricValueList`, `ExternalMetricValueList`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueList<T> {
    /// The list's kind.
    #[serde(default)]
    pub kind: String,
    /// [`GROUP_VERSION`], [`CUSTOM_GROUP_VERSION`] or [`EXTERNAL_GROUP_VERSION`].
    #[serde(default)]
    pub api_version: String,
    /// Empty: metrics have no resource versions.
    #[serde(default)]
    pub metadata: ListMeta,
    /// The values.
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
}

/// A list of custom metric values.
pub type MetricValueList = ValueList<MetricValue>;

/// The external metrics API's group and version (what the HorizontalPodAutoscaler reads
/// External metrics from).
pub const EXTERNAL_GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";

/// The label an external request metric names its Service with (beside the Service's own
/// labels), for a metric selector to pick one Service.
pub const SERVICE_METRIC_LABEL: &str = "service";

/// One value of an external metric (`external.metrics.k8s.io/v1beta1` ExternalMetricValue).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricValue {
    /// The metric's name.
    pub metric_name: String,
    /// The labels of this series (what a metric selector matches).
    #[serde(default)]
    pub metric_labels: std::collections::BTreeMap<String, String>,
    /// The end of the window it was measured over.
    pub timestamp: Option<Time>,
    /// The window's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<i64>,
    /// The value.
    pub value: Quantity,
}

/// A list of external metric values.
pub type ExternalMetricValueList = ValueList<ExternalMetricValue>;

/// A rate or count as a quantity: whole numbers plain, fractions in thousandths (`1500m`).
pub fn amount_quantity(v: f64) -> Quantity {
    let milli = (v * 1000.0).round() as i64;
    if milli % 1000 == 0 {
        Quantity((milli / 1000).to_string())
    } else {
        Quantity(format!("{milli}m"))
    }
}

/// CPU as the API shows it: nanocores (`250000000n`), as metrics-server writes it.
pub fn cpu_quantity(nano_cores: u64) -> Quantity {
    Quantity(format!("{nano_cores}n"))
}

/// Memory as the API shows it: kibibytes when whole (`1024Ki`), else bytes.
pub fn memory_quantity(bytes: u64) -> Quantity {
    if bytes.is_multiple_of(1024) {
        Quantity(format!("{}Ki", bytes / 1024))
    } else {
        Quantity(bytes.to_string())
    }
}

/// A node's summary (`GET /stats/summary` on the wasmlet's endpoint).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The node as a whole (the machine).
    pub node: NodeStats,
    /// Every pod with a running container.
    #[serde(default)]
    pub pods: Vec<PodStats>,
    /// Requests and connections this node holds for Services with no ready endpoint (scale
    /// from zero; not in the kubelet's summary).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<ServiceWaiting>,
}

/// What a node holds for one Service at zero pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceWaiting {
    /// The Service's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Requests and connections held now.
    pub waiting: u64,
}

/// The node's usage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// The node's name.
    pub node_name: String,
    /// The machine's usage, from when the wasmlet started.
    #[serde(flatten)]
    pub usage: Usage,
}

/// What a node, pod or container uses, and since when (the kubelet's `startTime`, `cpu` and
/// `memory`, which its node, pod and container stats each carry).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// When it started.
    pub start_time: Option<Time>,
    /// Its CPU.
    pub cpu: Option<CpuStats>,
    /// Its memory.
    pub memory: Option<MemoryStats>,
}

/// A pod's usage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// Which pod.
    pub pod_ref: PodReference,
    /// Its running containers.
    #[serde(default)]
    pub containers: Vec<ContainerStats>,
    /// The sum of its containers' usage, from when the node started it.
    #[serde(flatten)]
    pub usage: Usage,
    /// Its `wasi:http` requests, for a pod that serves them (not in the kubelet's summary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<RequestStats>,
}

/// The `wasi:http` requests a pod's containers received: what request-driven autoscaling
/// reads (`custom.metrics.k8s.io`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestStats {
    /// The end of the window `perSecond` was measured over.
    pub time: Option<Time>,
    /// The window's length in seconds.
    pub window_seconds: f64,
    /// Requests received, in all.
    pub total: u64,
    /// Requests not finished now.
    pub in_flight: u64,
    /// Requests per second over the window.
    pub per_second: f64,
}

/// Names a pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PodReference {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its uid.
    pub uid: String,
}

/// A container's usage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    /// The container's name.
    pub name: String,
    /// Its usage, from when this start of it began.
    #[serde(flatten)]
    pub usage: Usage,
}

/// CPU usage, as the kubelet reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// The end of the window `usageNanoCores` was measured over.
    pub time: Option<Time>,
    /// Billionths of a core used on average over the window.
    pub usage_nano_cores: Option<u64>,
    /// Cumulative CPU time, in nanoseconds.
    pub usage_core_nano_seconds: Option<u64>,
    /// The window's length in seconds (not in the kubelet's summary: its window is its
    /// housekeeping interval; metrics.k8s.io reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<f64>,
}

/// Memory usage, as the kubelet reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// When it was read.
    pub time: Option<Time>,
    /// What is left (nodes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// All memory in use.
    pub usage_bytes: Option<u64>,
    /// What cannot be reclaimed (what limits and eviction act on; `kubectl top` shows it).
    pub working_set_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_should_read_back_as_kubernetes_parses_them() {
        assert_eq!(cpu_quantity(250_000_000).0, "250000000n");
        assert_eq!(
            crate::quantity::millicores(&cpu_quantity(250_000_000)),
            Some(250)
        );
        assert_eq!(memory_quantity(3 << 20).0, "3072Ki");
        assert_eq!(memory_quantity(1000).0, "1000");
        assert_eq!(
            crate::quantity::bytes(&memory_quantity(3 << 20)),
            Some(3 << 20)
        );
    }
}
