//! NetworkPolicy, inside the wasmlet (what a CNI's policy agent does): keeps the node's
//! [`PolicyIndex`](wasmkube_api::netpol::PolicyIndex) from watches, which `NodeNet::route`
//! asks for every connection a pod opens and `NodeNet::accept_tunnel` for every connection a
//! tunnel brings in.
//!
//! NetworkPolicies are always watched. Every pod's labels, address and named ports, and the
//! namespaces' labels, are needed only once a policy exists: those watches start with the
//! first policy, so a cluster without policies pays nothing for them. Changes take effect with
//! the watch event that carries them: the next connection is decided by the new state.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use wasmkube_api::netpol::{PodEntry, PolicyIndex};
use wasmkube_client::watch::fold;

use crate::net::NodeNet;

/// Runs the watches until `shutdown`.
pub(crate) async fn run(net: Arc<NodeNet>, client: Client, shutdown: CancellationToken) {
    let (any_policy, mut wanted) = tokio::sync::watch::channel(false);
    let index = Arc::clone(&net.policies);
    let policies = fold(
        Api::<NetworkPolicy>::all(client.clone()),
        Arc::clone(&index),
        |i: &mut PolicyIndex, np: &NetworkPolicy| i.apply_policy(np),
        |i: &mut PolicyIndex, ns: &str, name: &str| i.delete_policy(ns, name),
        move || {
            if !index.read().expect("policy lock").is_empty() {
                any_policy.send_if_modified(|on| !std::mem::replace(on, true));
            }
        },
        shutdown.clone(),
    );
    let selected = async {
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = wanted.wait_for(|on| *on) => if r.is_err() { return },
        }
        tracing::info!("a NetworkPolicy exists: following pods and namespaces");
        let pods = fold(
            Api::<Pod>::all(client.clone()),
            Arc::clone(&net.policies),
            |i: &mut PolicyIndex, pod: &Pod| match PodEntry::of(pod) {
                Some((ip, entry)) => i.apply_pod(ip, entry),
                // No address (yet, or any more): nothing to decide about it.
                None => i.delete_pod(&pod.namespace().unwrap_or_default(), &pod.name_any()),
            },
            |i: &mut PolicyIndex, ns: &str, name: &str| i.delete_pod(ns, name),
            || {},
            shutdown.clone(),
        );
        let namespaces = fold(
            Api::<Namespace>::all(client.clone()),
            Arc::clone(&net.policies),
            |i: &mut PolicyIndex, ns: &Namespace| {
                i.apply_namespace(&ns.name_any(), ns.labels().clone());
            },
            |i: &mut PolicyIndex, _: &str, name: &str| i.delete_namespace(name),
            || {},
            shutdown.clone(),
        );
        tokio::join!(pods, namespaces);
    };
    tokio::join!(policies, selected);
}
