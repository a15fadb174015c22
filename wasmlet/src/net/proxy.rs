//! kube-proxy's job, inside the wasmlet: keeps the node's [`ServiceIndex`] current from
//! watches of Services and EndpointSlices, opens a listener on the node address for every
//! NodePort, and learns the other nodes' pod ranges and tunnels from the Node objects.
//!
//! Changes take effect with the watch event that carries them: the next connection routes by
//! the new state; nothing restarts.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use wasmkube_api::services::Protocol;

use crate::net::{NodeNet, Peer, forward};

/// Runs the proxy's watches until `shutdown`. Peers on non-loopback addresses are used only
/// when `remote_peers` is set.
pub(crate) async fn run(
    net: Arc<NodeNet>,
    client: Client,
    node_name: String,
    remote_peers: bool,
    shutdown: CancellationToken,
) {
    let node_ports = Arc::new(NodePorts::default());
    let sync = {
        let (net, node_ports, shutdown) =
            (Arc::clone(&net), Arc::clone(&node_ports), shutdown.clone());
        move || {
            node_ports.sync(&net, &shutdown);
            net.services_changed();
        }
    };
    let services = wasmkube_client::watch::services(
        client.clone(),
        Arc::clone(&net.services),
        sync,
        shutdown.clone(),
    );
    let peers = follow_peers(
        Arc::clone(&net),
        client,
        node_name,
        remote_peers,
        shutdown.clone(),
    );
    tokio::join!(services, peers);
    node_ports.close();
}

/// Keeps the peer list (other nodes' pod ranges and tunnels) from the Node objects.
async fn follow_peers(
    net: Arc<NodeNet>,
    client: Client,
    node_name: String,
    remote_peers: bool,
    shutdown: CancellationToken,
) {
    let (reader, events) = wasmkube_client::watch::reflect(Api::<Node>::all(client));
    let mut stream = events.boxed();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            e = stream.next() => match e {
                Some(Ok(_)) => {}
                Some(Err(e)) => { tracing::warn!(error = %e, "node watch failed; retrying"); continue }
                None => return,
            },
        }
        let peers = reader
            .state()
            .iter()
            .filter(|n| n.name_any() != node_name)
            .filter_map(|n| peer_of(n))
            .filter(|p| remote_peers || p.tunnel.ip().is_loopback())
            .collect();
        net.set_peers(peers);
    }
}

/// A node's pod range and tunnel, if it advertises both.
pub(crate) fn peer_of(n: &Node) -> Option<Peer> {
    let cidr = n.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
    let ip: IpAddr = n
        .status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    let port: u16 = n
        .metadata
        .annotations
        .as_ref()?
        .get(crate::net::tunnel::PORT_ANNOTATION)?
        .parse()
        .ok()?;
    Some(Peer {
        node: n.name_any(),
        cidr,
        tunnel: SocketAddr::new(ip, port),
    })
}

/// The NodePort listeners on the node address.
#[derive(Default)]
struct NodePorts {
    open: Mutex<HashMap<u16, CancellationToken>>,
}

impl NodePorts {
    /// Opens a listener for every TCP node port in the index and closes the others.
    fn sync(&self, net: &Arc<NodeNet>, shutdown: &CancellationToken) {
        let wanted: Vec<u16> = net
            .services
            .read()
            .expect("net lock")
            .node_ports()
            .filter(|(_, proto)| *proto == Protocol::Tcp)
            .map(|(p, _)| p)
            .collect();
        let mut open = self.open.lock().expect("node ports lock");
        open.retain(|port, stop| {
            let keep = wanted.contains(port);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for port in wanted {
            if open.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(IpAddr::V4(net.node_ip), port);
            let listener = match std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot open the node port");
                    continue;
                }
            };
            let stop = shutdown.child_token();
            open.insert(port, stop.clone());
            tokio::spawn(forward(
                Arc::clone(net),
                listener,
                move |net: &NodeNet, client| net.resolve_node_port(port, client),
                stop,
            ));
        }
    }

    fn close(&self) {
        for (_, stop) in self.open.lock().expect("node ports lock").drain() {
            stop.cancel();
        }
    }
}
