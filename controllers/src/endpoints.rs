//! The Endpoints and EndpointSlice controllers: for every Service with a selector, the pods it
//! selects — ready ones as `addresses`, the others as `notReadyAddresses` — with the Service's
//! ports resolved against the pods (`targetPort` by number or by container-port name). The
//! networking layer reads these to route Service traffic and answer DNS.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::workqueue::Action;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::pod_ready as ready;

/// The field manager the controller applies with.
const MANAGER: &str = "endpoint-controller";
/// The label tying a slice to its Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label naming the controller that manages a slice, and our value for it.
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER_VALUE: &str = "endpointslice-controller.k8s.io";

/// What the reconciler needs.
pub type Ctx = crate::PodsCtx;

/// Reconcile errors (retried with back-off).
pub type Error = crate::ReconcileError;

/// The pod port a Service port targets: a number, or a container port found by name.
pub fn target_port(target: Option<&IntOrString>, port: i32, pod: &Pod) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// A Service port resolved against a pod: (name, port, protocol).
type ResolvedPort = (Option<String>, i32, String);

/// The Endpoints subsets for a Service and the pods it selects (pure).
pub fn subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let spec = svc.spec.clone().unwrap_or_default();
    // Pods are grouped by the resolved port set, as the Kubernetes controller does.
    let mut groups: BTreeMap<Vec<ResolvedPort>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for p in pods {
        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let ports: Option<Vec<ResolvedPort>> = spec
            .ports
            .iter()
            .flatten()
            .map(|sp| {
                target_port(sp.target_port.as_ref(), sp.port, p).map(|tp| {
                    (
                        sp.name.clone(),
                        tp,
                        sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    )
                })
            })
            .collect();
        let Some(ports) = ports else { continue };
        let address = EndpointAddress {
            ip,
            hostname: p
                .spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .filter(|_| {
                    p.spec.as_ref().and_then(|s| s.subdomain.as_deref())
                        == svc.metadata.name.as_deref()
                }),
            node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: p.metadata.name.clone(),
                namespace: p.metadata.namespace.clone(),
                uid: p.metadata.uid.clone(),
                ..Default::default()
            }),
        };
        let entry = groups.entry(ports).or_default();
        if ready(p) {
            entry.0.push(address)
        } else {
            entry.1.push(address)
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name,
                            port,
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            }
        })
        .collect()
}

/// Keeps one Service's Endpoints and EndpointSlice current.
///
/// # Errors
/// API failures (retried with back-off).
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let Some(selector) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty())
    else {
        // Without a selector the endpoints are the user's to manage.
        return Ok(Action::await_change());
    };
    if svc.metadata.deletion_timestamp.is_some() || ctx.pods.wait_until_ready().await.is_err() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(&ns) && p.metadata.deletion_timestamp.is_none()
        })
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        .collect();
    let name = svc.name_any();
    let subsets = subsets(&svc, &pods);
    let endpoints = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: svc.metadata.labels.clone(),
            ..Default::default()
        },
        subsets: Some(subsets.clone()),
    };
    let params = PatchParams::apply(MANAGER).force();
    let mut ep_json = serde_json::to_value(&endpoints)?;
    ep_json["apiVersion"] = "v1".into();
    ep_json["kind"] = "Endpoints".into();
    Api::<Endpoints>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &params, &Patch::Apply(&ep_json))
        .await?;

    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME.into(), name.clone());
    labels.insert(MANAGED_BY.into(), MANAGER_VALUE.into());
    let base = format!(
        "{name}-{}",
        svc.metadata
            .uid
            .as_deref()
            .unwrap_or("0")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(5)
            .collect::<String>()
    );
    // One slice per set of resolved ports (pods whose named ports differ get their own), as
    // the EndpointSlice controller groups them; an empty Service keeps one empty slice.
    let groups: Vec<&EndpointSubset> = subsets.iter().collect();
    let count = groups.len().max(1);
    let slices_api = Api::<EndpointSlice>::namespaced(ctx.client.clone(), &ns);
    let mut wanted = Vec::new();
    for i in 0..count {
        let slice_name = if i == 0 {
            base.clone()
        } else {
            format!("{base}-{i}")
        };
        let subset = groups.get(i);
        let slice_endpoints: Vec<Endpoint> = subset
            .into_iter()
            .flat_map(|s| {
                let r = s.addresses.iter().flatten().map(|a| (a, true));
                let n = s.not_ready_addresses.iter().flatten().map(|a| (a, false));
                r.chain(n).collect::<Vec<_>>()
            })
            .map(|(a, ok)| Endpoint {
                addresses: vec![a.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(ok),
                    serving: Some(ok),
                    terminating: Some(false),
                }),
                hostname: a.hostname.clone(),
                node_name: a.node_name.clone(),
                target_ref: a.target_ref.clone(),
                ..Default::default()
            })
            .collect();
        let slice_ports: Vec<SlicePort> = subset
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|p| SlicePort {
                name: p.name,
                port: Some(p.port),
                protocol: p.protocol,
                app_protocol: None,
            })
            .collect();
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(slice_name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(labels.clone()),
                owner_references: Some(vec![crate::controller_ref(&*svc)]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: slice_endpoints,
            ports: Some(slice_ports),
        };
        let mut slice_json = serde_json::to_value(&slice)?;
        slice_json["apiVersion"] = "discovery.k8s.io/v1".into();
        slice_json["kind"] = "EndpointSlice".into();
        slices_api
            .patch(&slice_name, &params, &Patch::Apply(&slice_json))
            .await?;
        wanted.push(slice_name);
    }
    // Slices of port sets that are gone.
    let lp = ListParams::default().labels(&format!(
        "{SERVICE_NAME}={name},{MANAGED_BY}={MANAGER_VALUE}"
    ));
    for old in slices_api.list(&lp).await?.items {
        let old_name = old.name_any();
        if !wanted.contains(&old_name) {
            match slices_api.delete(&old_name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::await_change())
}

/// Runs the Endpoints/EndpointSlice controller until `shutdown`.
pub async fn run(
    client: Client,
    informers: &crate::informers::Informers,
    shutdown: CancellationToken,
) {
    let (ctx, changes) = Ctx::subscribe(&client, informers);
    let pods = (ctx.pods.clone(), changes);
    // A pod change concerns every Service of its namespace (it may have joined or left one).
    crate::run_pod_watching(
        client,
        "endpoints",
        pods,
        ctx,
        |s: &Service, pod| s.namespace() == pod.namespace(),
        reconcile,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, is_ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if is_ready { "True" } else { "False" }}]}}))
            .expect("pod"),
        )
    }

    #[test]
    fn ready_and_not_ready_pods_with_named_target_ports() {
        let svc: Service = serde_json::from_value(
            json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
            "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}),
        )
        .expect("svc");
        let s = subsets(
            &svc,
            &[
                pod("b", "127.77.0.3", true),
                pod("a", "127.77.0.2", true),
                pod("c", "127.77.0.4", false),
            ],
        );
        assert_eq!(s.len(), 1);
        let ips: Vec<&str> = s[0]
            .addresses
            .iter()
            .flatten()
            .map(|a| a.ip.as_str())
            .collect();
        assert_eq!(ips, ["127.77.0.2", "127.77.0.3"]);
        assert_eq!(s[0].not_ready_addresses.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            s[0].ports.as_ref().expect("ports")[0].port,
            8080,
            "named targetPort resolved"
        );
    }
}
