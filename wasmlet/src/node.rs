//! The Node object and its heartbeats: registration, a `kube-node-lease` Lease renewed every
//! 10 s, and periodic status updates (capacity, conditions, images), as the kubelet does.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::runtime::SUPPORTED_WORLDS;

/// Default lease duration (kubelet: 40 s); the lease is renewed every quarter of it, and the
/// node status is checked as often.
pub(crate) const LEASE_DURATION: Duration = Duration::from_secs(40);
/// How often the node status is posted when nothing changed.
pub(crate) const STATUS_UPDATE: Duration = Duration::from_secs(60);
/// Below this much available memory the node reports MemoryPressure (kubelet's
/// `memory.available<100Mi` hard eviction threshold).
const MEMORY_PRESSURE_BYTES: u64 = 100 << 20;

/// The facts the Node object is built from.
#[derive(Debug, Clone)]
pub(crate) struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// Its address (`InternalIP`).
    pub address: String,
    /// The port of the wasmlet's HTTPS endpoint (logs).
    pub port: u16,
    /// `pods` capacity.
    pub max_pods: u32,
    /// Extra labels (`--node-labels`).
    pub labels: BTreeMap<String, String>,
    /// The node-to-node tunnel's port.
    pub tunnel_port: u16,
}

fn annotations(facts: &NodeFacts) -> BTreeMap<String, String> {
    [
        (
            "wasmkube.dev/wasi-worlds".to_owned(),
            SUPPORTED_WORLDS.join(","),
        ),
        (
            crate::net::tunnel::PORT_ANNOTATION.to_owned(),
            facts.tunnel_port.to_string(),
        ),
    ]
    .into()
}

pub(crate) fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Builds the node's status (pure apart from reading /proc).
pub(crate) fn node_status(
    facts: &NodeFacts,
    images: Vec<ContainerImage>,
    previous: Option<&NodeStatus>,
) -> NodeStatus {
    let now = Time(jiff::Timestamp::now());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = meminfo("MemTotal:").unwrap_or(0);
    let available = meminfo("MemAvailable:").unwrap_or(u64::MAX);
    let resources: BTreeMap<String, Quantity> = [
        ("cpu".to_owned(), Quantity(cpus.to_string())),
        (
            "memory".to_owned(),
            Quantity(format!("{}Ki", memory / 1024)),
        ),
        ("pods".to_owned(), Quantity(facts.max_pods.to_string())),
        ("ephemeral-storage".to_owned(), Quantity("0".into())),
    ]
    .into();
    let condition = |type_: &str, status: bool, reason: &str, message: &str| {
        let status = if status { "True" } else { "False" };
        let since = previous
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_ && c.status == status))
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        NodeCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(since),
        }
    };
    let pressure = available < MEMORY_PRESSURE_BYTES;
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: facts.address.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: facts.name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(facts.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "wasm32".into(),
            operating_system: "wasi".into(),
            os_image: format!("wasmkube wasmlet ({})", SUPPORTED_WORLDS.join(", ")),
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
            container_runtime_version: "wasmtime://48.0.8".into(),
            kubelet_version: format!("v1.33.0-wasmkube.{}", env!("CARGO_PKG_VERSION")),
            kube_proxy_version: String::new(),
            machine_id: read_trimmed("/etc/machine-id"),
            system_uuid: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            ..Default::default()
        }),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                pressure,
                if pressure {
                    "KubeletHasInsufficientMemory"
                } else {
                    "KubeletHasSufficientMemory"
                },
                if pressure {
                    "wasmlet has insufficient memory available"
                } else {
                    "wasmlet has sufficient memory available"
                },
            ),
            condition(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "wasmlet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "wasmlet has sufficient PID available",
            ),
            condition(
                "Ready",
                true,
                "KubeletReady",
                "wasmlet is posting ready status",
            ),
        ]),
        images: Some(images),
        ..Default::default()
    }
}

fn labels(facts: &NodeFacts) -> BTreeMap<String, String> {
    let name = facts.name.as_str();
    let mut labels: BTreeMap<String, String> = facts.labels.clone();
    labels.extend(
        [
            ("kubernetes.io/os", "wasi"),
            ("kubernetes.io/arch", "wasm32"),
            ("beta.kubernetes.io/os", "wasi"),
            ("beta.kubernetes.io/arch", "wasm32"),
            ("kubernetes.io/hostname", name),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    labels
}

/// Registers the node (or takes over an existing Node object of the same name) and posts its
/// first status. Returns the Node as registered (uid, pod range).
///
/// # Errors
/// When the API server refuses.
pub(crate) async fn register(
    client: &Client,
    facts: &NodeFacts,
    images: Vec<ContainerImage>,
) -> Result<Node, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(facts.name.clone()),
            labels: Some(labels(facts)),
            annotations: Some(annotations(facts)),
            ..Default::default()
        },
        ..Default::default()
    };
    let existing = match nodes.create(&PostParams::default(), &node).await {
        Ok(n) => n,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch =
                json!({"metadata": {"labels": labels(facts), "annotations": annotations(facts)}});
            nodes
                .patch(&facts.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?
        }
        Err(e) => return Err(e),
    };
    let status = node_status(facts, images, existing.status.as_ref());
    nodes
        .patch_status(
            &facts.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    Ok(existing)
}

/// Renews the node's Lease every quarter of `duration` until `shutdown`.
pub(crate) async fn heartbeat(
    duration: Duration,
    client: Client,
    name: String,
    node_uid: String,
    shutdown: CancellationToken,
) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        if let Err(e) = renew(&leases, &name, &node_uid, duration).await {
            tracing::warn!(error = %e, node = %name, "lease renewal failed");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(duration / 4) => {}
        }
    }
}

async fn renew(
    leases: &Api<Lease>,
    name: &str,
    node_uid: &str,
    duration: Duration,
) -> Result<(), kube::Error> {
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    let now = MicroTime(jiff::Timestamp::now());
    match leases.get_opt(name).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(now);
            spec.holder_identity = Some(name.to_owned());
            spec.lease_duration_seconds = Some(seconds);
            leases.replace(name, &PostParams::default(), &lease).await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.to_owned(),
                        uid: node_uid.to_owned(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.to_owned()),
                    lease_duration_seconds: Some(seconds),
                    renew_time: Some(now.clone()),
                    acquire_time: Some(now),
                    ..Default::default()
                }),
            };
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

/// The events the kubelet records about its node when it starts: `Starting`, then each
/// condition's status (`NodeHasSufficientMemory`, ..., `NodeReady`).
pub(crate) fn record_start(recorder: &crate::pod::events::Recorder, node: &str) {
    use crate::pod::worker::EventType::Normal;
    recorder.node(Normal, "Starting", "Starting wasmlet.".into());
    for status in [
        "NodeHasSufficientMemory",
        "NodeHasNoDiskPressure",
        "NodeHasSufficientPID",
        "NodeReady",
    ] {
        recorder.node(
            Normal,
            status,
            format!("Node {node} status is now: {status}"),
        );
    }
}

/// Checks the node status every `check` and posts it when someone else changed it (the node
/// lifecycle controller marking it Unknown) or every [`STATUS_UPDATE`], until `shutdown`;
/// Ready again after that, it records `NodeReady` as the kubelet does.
pub(crate) async fn report_status(
    client: Client,
    facts: NodeFacts,
    check: Duration,
    images: impl Fn() -> Vec<ContainerImage> + Send,
    recorder: crate::pod::events::Recorder,
    shutdown: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client);
    let mut posted = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(check) => {}
        }
        // The Node itself, as the kubelet reads it: a node may patch `nodes/status` but not
        // get it (system:node's rules), and a refused read looked like a node never Ready,
        // posted again every check with new transition times.
        let previous = match nodes.get(&facts.name).await {
            Ok(n) => n.status,
            Err(e) => {
                tracing::debug!(error = %e, node = %facts.name, "reading the node failed");
                continue;
            }
        };
        let ready = previous
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready && posted.elapsed() < STATUS_UPDATE {
            continue;
        }
        posted = tokio::time::Instant::now();
        let status = node_status(&facts, images(), previous.as_ref());
        let patch = json!({"status": status});
        match nodes
            .patch_status(&facts.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) if !ready => recorder.node(
                crate::pod::worker::EventType::Normal,
                "NodeReady",
                format!("Node {} status is now: NodeReady", facts.name),
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, node = %facts.name, "node status update failed"),
        }
    }
}
