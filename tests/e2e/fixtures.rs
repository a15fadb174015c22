//! A minimal valid object of every served kind.

use serde_json::{Value, json};

pub(crate) fn template(app: &str) -> Value {
    json!({"metadata": {"labels": {"app": app}},
           "spec": {"containers": [{"name": "main", "image": "registry.local/app:1"}]}})
}

pub(crate) fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "demo"}},
           "spec": {"containers": [{"name": "main", "image": "registry.local/app:1"}]}})
}

/// (kind, namespaced, object) for every kind the issue lists.
pub(crate) fn all(name: &str) -> Vec<(&'static str, bool, Value)> {
    let sel = json!({"matchLabels": {"app": name}});
    vec![
        (
            "Namespace",
            false,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        ),
        (
            "Node",
            false,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}),
        ),
        ("Pod", true, pod(name)),
        (
            "Service",
            true,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}),
        ),
        (
            "Endpoints",
            true,
            json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name}}),
        ),
        (
            "ConfigMap",
            true,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}}),
        ),
        (
            "Secret",
            true,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"k": "v"}}),
        ),
        (
            "Event",
            true,
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": name},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"}, "reason": "Tested", "message": "m", "type": "Normal"}),
        ),
        (
            "events.k8s.io/Event",
            true,
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": name},
            "regarding": {"kind": "Pod", "name": "p", "namespace": "default"}, "reason": "Tested", "note": "m",
            "type": "Normal", "action": "Test", "reportingController": "example.com/tester",
            "reportingInstance": "t-1", "eventTime": "2026-01-01T00:00:00.000000Z"}),
        ),
        (
            "ServiceAccount",
            true,
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
        ),
        (
            "Deployment",
            true,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"selector": sel, "template": template(name)}}),
        ),
        (
            "ReplicaSet",
            true,
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
            "spec": {"selector": sel, "template": template(name)}}),
        ),
        (
            "DaemonSet",
            true,
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
            "spec": {"selector": sel, "template": template(name)}}),
        ),
        (
            "StatefulSet",
            true,
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
            "spec": {"selector": sel, "serviceName": name, "template": template(name)}}),
        ),
        (
            "Job",
            true,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "registry.local/job:1"}]}}}}),
        ),
        (
            "CronJob",
            true,
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
            "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "main", "image": "registry.local/job:1"}]}}}}}}),
        ),
        (
            "Lease",
            true,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
            "spec": {"holderIdentity": "me", "leaseDurationSeconds": 40}}),
        ),
        (
            "EndpointSlice",
            true,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": name},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.0.5"]}], "ports": [{"port": 8080}]}),
        ),
    ]
}
