//! The node's side of the pod network: which virtual address is which pod, where Service IPs
//! lead, how to reach pods on other nodes.
//!
//! Pod and Service IPs are virtual: a pod's IP comes from the node's `podCIDR` (`10.244.N.k`)
//! and is backed by a loopback address from the node's pod range (`127.x.y.k`); Service IPs
//! exist only in the [`ServiceIndex`]. Every connection a pod (or the node, for NodePorts and
//! Ingress) makes is routed here before any socket is touched:
//!
//! ```text
//! dest ── own pod IP ───────────────► this pod's loopback address
//!      ── Service IP:port ── pick a ready endpoint (round robin / ClientIP) ──┐
//!      ── pod IP on this node ──────► its loopback address   ◄───────────────┤
//!      ── pod IP in a peer's podCIDR ► tunnel to that node's wasmlet ◄───────┘
//!      ── anything else ────────────► refused, nothing is sent
//! ```
//!
//! Connection tracking tables let the pod sockets report virtual addresses: a guest sees its
//! own pod IP as its local address, the Service IP it dialled as its peer, and the calling
//! pod's IP on accepted connections, even when the bytes went through the relay or a tunnel.
//!
//! Here: the node's tables ([`NodeNet`]); `route` decides where a connection goes, `dial`
//! makes it (here, through a tunnel, through the relay), `hold` keeps it at a Service with no
//! ready endpoint until one is ready (scale from zero).

mod dial;
mod hold;
pub(crate) mod ingress;
pub(crate) mod names;
pub(crate) mod podnet;
pub(crate) mod policy;
pub(crate) mod proxy;
mod route;

pub(crate) use dial::{Conn, forward};
pub(crate) use hold::{HOLD_TIMEOUT, Waiting, Wake, Waker};
pub(crate) mod tunnel;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::net::{TcpSocket, TcpStream};
use wasmkube_api::services::{Protocol, ServiceIndex};

/// Why a connection was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The address maps to nothing in the cluster (and outbound traffic is off).
    Denied,
    /// The address is a pod or Service, but nothing may take the connection (no ready
    /// endpoints, or a localhost-only listener).
    Refused,
}

/// Where a connection to a virtual address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A pod on this node, at its loopback address.
    Local(SocketAddrV4),
    /// A pod on another node, through that node's tunnel.
    Remote {
        /// The other node's name (its tunnel certificate names it).
        node: Arc<str>,
        /// The other node's tunnel endpoint.
        tunnel: SocketAddr,
        /// The pod's virtual address.
        pod: SocketAddrV4,
    },
    /// An API server, reached from the node (the `kubernetes` Service).
    Host(SocketAddrV4),
    /// A Service that may be at zero pods and has no ready endpoint: the connection is held
    /// (accepted by the node, its bytes kept) until one is ready, then routed again.
    Held {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
    },
}

/// Another node's pod range and tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The node.
    pub node: String,
    /// Its `podCIDR`.
    pub cidr: Ipv4Net,
    /// Its tunnel endpoint (node address and tunnel port).
    pub tunnel: SocketAddr,
}

/// A response body from an in-process HTTP handler.
pub(crate) type HttpBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::io::Error>;

/// A `wasi:http` pod's handler, callable in-process (the Ingress uses it instead of a second
/// HTTP hop when the endpoint is on this node).
pub(crate) type HttpHandler = Arc<
    dyn Fn(
            hyper::Request<hyper::body::Incoming>,
        ) -> std::pin::Pin<Box<dyn Future<Output = hyper::Response<HttpBody>> + Send>>
        + Send
        + Sync,
>;

/// A Service port: (namespace, name, port name).
pub(crate) type PortKey = (String, String, String);

/// The pod network of this node.
pub struct NodeNet {
    /// The node's pod range, when the API server gave it one; without one, pod IPs are the
    /// loopback addresses themselves.
    pod_cidr: Option<Ipv4Net>,
    /// The node's loopback pod range.
    backing: Ipv4Net,
    /// The node address (NodePorts and hostPorts listen here; `hostNetwork` pods use it).
    pub node_ip: Ipv4Addr,
    /// The node's certificate, for tunnels (none: no tunnels, in tests).
    tls: Option<Arc<crate::identity::NodeTls>>,
    /// The relay listener's address (for guest connections to other nodes).
    relay: OnceLock<SocketAddr>,
    /// The tunnel listener's port.
    pub tunnel_port: OnceLock<u16>,
    /// Virtual pod IP → loopback address, for pods on this node.
    local: RwLock<HashMap<Ipv4Addr, Ipv4Addr>>,
    /// Loopback address → virtual pod IP.
    reverse: RwLock<HashMap<Ipv4Addr, Ipv4Addr>>,
    /// Services and endpoints.
    pub services: Arc<RwLock<ServiceIndex>>,
    /// Name resolution for pods.
    pub names: crate::net::names::Names,
    round_robin: Mutex<HashMap<PortKey, usize>>,
    affinity: Mutex<HashMap<(PortKey, Ipv4Addr), (SocketAddrV4, Instant)>>,
    /// Other nodes.
    peers: RwLock<Vec<Peer>>,
    /// Loopback addresses of listeners bound to `127.0.0.1` (reachable from their pod only).
    local_only: Mutex<HashSet<SocketAddrV4>>,
    /// Accepted-side conntrack: the real peer a pod sees → the virtual peer it should see.
    inbound: Mutex<HashMap<SocketAddr, SocketAddrV4>>,
    /// Relay conntrack: a guest socket's real local address → (virtual source, destination).
    outbound: Mutex<HashMap<SocketAddr, (SocketAddrV4, SocketAddrV4)>>,
    /// Counts connections routed, for tests and metrics.
    pub routed: AtomicUsize,
    /// NetworkPolicies, with the pods and namespaces they select from (`net/policy.rs`).
    pub policies: Arc<RwLock<wasmkube_api::netpol::PolicyIndex>>,
    /// Counts connections NetworkPolicies refused.
    pub refused_by_policy: AtomicUsize,
    /// In-process handlers of `wasi:http` pods, by their loopback listen address.
    http: RwLock<HashMap<SocketAddrV4, HttpHandler>>,
    /// What is held for Services at zero pods (scale from zero).
    pub(crate) waiting: Arc<Waiting>,
    /// Pods on this node that are ready, by virtual IP, as this node knows it before any
    /// EndpointSlice says so.
    ready_here: RwLock<HashMap<Ipv4Addr, ReadyPod>>,
    /// Fires after every change of Services or endpoints.
    changed: tokio::sync::Notify,
    /// Asks for a replica of a Service at zero pods (set at start: an Event the autoscaler
    /// reacts to).
    waker: OnceLock<Waker>,
}

/// A ready pod on this node: what a Service needs to select it and find its target port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadyPod {
    /// Its namespace.
    pub namespace: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its containers' ports: (name, number).
    pub ports: Vec<(String, u16)>,
}

impl NodeNet {
    /// The network of a node with pod range `backing` (loopback) and `pod_cidr` (virtual).
    pub fn new(
        backing: Ipv4Net,
        pod_cidr: Option<Ipv4Net>,
        node_ip: Ipv4Addr,
        tls: Option<Arc<crate::identity::NodeTls>>,
    ) -> Self {
        NodeNet {
            pod_cidr,
            backing,
            node_ip,
            tls,
            relay: OnceLock::new(),
            tunnel_port: OnceLock::new(),
            local: RwLock::default(),
            reverse: RwLock::default(),
            services: Arc::default(),
            names: crate::net::names::Names::new(None, "cluster.local"),
            round_robin: Mutex::default(),
            affinity: Mutex::default(),
            peers: RwLock::default(),
            local_only: Mutex::default(),
            inbound: Mutex::default(),
            outbound: Mutex::default(),
            routed: AtomicUsize::new(0),
            policies: Arc::default(),
            refused_by_policy: AtomicUsize::new(0),
            http: RwLock::default(),
            waiting: Arc::default(),
            ready_here: RwLock::default(),
            changed: tokio::sync::Notify::new(),
            waker: OnceLock::new(),
        }
    }

    /// Says whether the pod at `ip` on this node is ready (`Some`) or not (`None`), as soon
    /// as the node knows it. A Service that may be at zero pods and has no ready endpoint yet
    /// forwards to such a pod at once: a woken request does not wait for the pod's status to
    /// reach the API server and come back as an EndpointSlice.
    pub(crate) fn set_ready_here(&self, ip: Ipv4Addr, pod: Option<ReadyPod>) {
        let changed = {
            let mut ready = self.ready_here.write().expect("net lock");
            match pod {
                Some(p) => ready.insert(ip, p.clone()).as_ref() != Some(&p),
                None => ready.remove(&ip).is_some(),
            }
        };
        if changed {
            self.services_changed();
        }
    }

    /// The ready endpoints of a Service port: those its EndpointSlices list; for a Service
    /// that may be at zero pods and has none listed yet, the ready pods here it selects.
    fn ready_backends(
        &self,
        index: &ServiceIndex,
        svc: &wasmkube_api::services::ServiceEntry,
        port: &wasmkube_api::services::ServicePort,
    ) -> Vec<SocketAddrV4> {
        let listed: Vec<SocketAddrV4> = index
            .backends(&svc.namespace, &svc.name, port)
            .filter(|b| b.endpoint.ready)
            .map(|b| b.addr)
            .collect();
        if !listed.is_empty() || !svc.scale_from_zero {
            return listed;
        }
        let mut here: Vec<SocketAddrV4> = self
            .ready_here
            .read()
            .expect("net lock")
            .iter()
            .filter(|(_, p)| svc.selects(&p.namespace, &p.labels))
            .filter_map(|(ip, p)| {
                let target = port.target_on(p.ports.iter().map(|(n, p)| (n.as_str(), *p)))?;
                Some(SocketAddrV4::new(*ip, target))
            })
            .collect();
        here.sort();
        here
    }

    /// Resolves pod names with `names`.
    #[must_use]
    pub fn with_names(mut self, names: crate::net::names::Names) -> Self {
        self.names = names;
        self
    }

    /// The node's loopback address for traffic it originates (range base + 1).
    pub fn relay_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.backing.network()) + 1)
    }

    /// How many pod addresses this node has (offsets `2..size-1` of both ranges).
    pub fn capacity(&self) -> u32 {
        let size = |n: &Ipv4Net| 1u32 << (32 - u32::from(n.prefix_len()));
        let backing = size(&self.backing);
        self.pod_cidr
            .map_or(backing, |c| backing.min(size(&c)))
            .saturating_sub(3)
    }

    /// The virtual and loopback addresses of pod offset `k`, registered as this node's.
    pub fn add_pod(&self, offset: u32) -> (Ipv4Addr, Ipv4Addr) {
        let backing = Ipv4Addr::from(u32::from(self.backing.network()) + offset);
        let virt = self
            .pod_cidr
            .map_or(backing, |c| Ipv4Addr::from(u32::from(c.network()) + offset));
        self.local.write().expect("net lock").insert(virt, backing);
        self.reverse
            .write()
            .expect("net lock")
            .insert(backing, virt);
        (virt, backing)
    }

    /// Forgets a pod's addresses.
    pub fn remove_pod(&self, virt: Ipv4Addr) {
        if let Some(b) = self.local.write().expect("net lock").remove(&virt) {
            self.reverse.write().expect("net lock").remove(&b);
        }
    }

    /// The peers (other nodes) now known.
    pub fn set_peers(&self, peers: Vec<Peer>) {
        *self.peers.write().expect("net lock") = peers;
    }

    /// The relay listener's address, once it runs.
    pub fn set_relay(&self, addr: SocketAddr) {
        let _ = self.relay.set(addr);
    }

    /// The relay listener's address.
    pub fn relay(&self) -> Option<SocketAddr> {
        self.relay.get().copied()
    }

    /// The virtual address a real (loopback) one stands for, as a pod should see it.
    pub fn virtual_of(&self, real: SocketAddr) -> SocketAddr {
        if let Some(v) = self.inbound.lock().expect("net lock").get(&real) {
            return SocketAddr::V4(*v);
        }
        let SocketAddr::V4(v4) = real else {
            return real;
        };
        if *v4.ip() == self.relay_ip() {
            // Node-originated traffic (NodePort, Ingress) appears to come from the node.
            return SocketAddr::new(IpAddr::V4(self.node_ip), v4.port());
        }
        match self.reverse.read().expect("net lock").get(v4.ip()) {
            Some(v) => SocketAddr::new(IpAddr::V4(*v), v4.port()),
            None => real,
        }
    }

    /// The TLS client configuration for guests' `https://` requests (none: no cluster CA
    /// known, so none are made).
    pub(crate) fn guest_https(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.as_ref().map(|t| Arc::clone(&t.guest_https))
    }

    /// Whether `ip` is a pod on this node (virtual address).
    pub fn is_local_pod(&self, ip: Ipv4Addr) -> bool {
        self.local.read().expect("net lock").contains_key(&ip)
    }

    /// Registers (or with `None` removes) the in-process handler of a `wasi:http` pod
    /// listening on `backing`.
    pub fn set_http_handler(&self, backing: SocketAddrV4, handler: Option<HttpHandler>) {
        let mut all = self.http.write().expect("net lock");
        match handler {
            Some(h) => all.insert(backing, h),
            None => all.remove(&backing),
        };
    }

    /// The in-process handler for a routed destination, if it is a local `wasi:http` pod.
    pub fn http_handler(&self, route: &Route) -> Option<HttpHandler> {
        match route {
            Route::Local(real) => self.http.read().expect("net lock").get(real).cloned(),
            Route::Remote { .. } | Route::Host(_) | Route::Held { .. } => None,
        }
    }

    /// Marks a listener on `backing` as bound to localhost (or clears the mark).
    pub fn set_local_only(&self, backing: SocketAddrV4, on: bool) {
        let mut set = self.local_only.lock().expect("net lock");
        if on {
            set.insert(backing);
        } else {
            set.remove(&backing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn net() -> NodeNet {
        NodeNet::new(
            "127.50.0.0/24".parse().expect("cidr"),
            Some("10.244.3.0/24".parse().expect("cidr")),
            Ipv4Addr::LOCALHOST,
            None,
        )
    }

    /// A request for Service `d/fn`, held (the task answers whether an endpoint came).
    async fn hold(n: &Arc<NodeNet>) -> tokio::task::JoinHandle<bool> {
        let waiter = {
            let n = Arc::clone(n);
            tokio::spawn(async move {
                n.wait_for_endpoint("d", "fn", Duration::from_secs(30))
                    .await
            })
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            while n.waiting.snapshot().is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the request is held");
        waiter
    }

    #[tokio::test]
    async fn a_service_at_zero_should_hold_requests_until_an_endpoint_is_ready() {
        let n = Arc::new(net());
        let told: Arc<Mutex<Vec<Wake>>> = Arc::default();
        let seen = Arc::clone(&told);
        n.set_waker(Box::new(move |ns: &str, name: &str, w: Wake| {
            assert_eq!((ns, name), ("d", "fn"));
            seen.lock().expect("lock").push(w);
        }));
        n.services.write().expect("lock").apply_service(
            &serde_json::from_value(json!({
                "metadata": {"name": "fn", "namespace": "d",
                             "annotations": {wasmkube_api::services::SCALE_FROM_ZERO: "fn"}},
                "spec": {"clusterIP": "10.96.1.2", "ports": [{"port": 80}]},
            }))
            .expect("svc"),
        );
        assert!(n.holds("d", "fn"));
        // No endpoint comes: asked for once, then given up, nothing left held.
        assert!(
            !n.wait_for_endpoint("d", "fn", Duration::from_millis(50))
                .await
        );
        assert_eq!(*told.lock().expect("lock"), [Wake::Wanted, Wake::TimedOut]);
        assert!(n.waiting.snapshot().is_empty());
        // An endpoint becomes ready while a request is held: it goes on at once.
        let waiter = hold(&n).await;
        assert_eq!(n.waiting.snapshot()[0].waiting, 1);
        n.services.write().expect("lock").apply_slice(
            &serde_json::from_value(json!({
                "metadata": {"name": "fn-1", "namespace": "d",
                             "labels": {"kubernetes.io/service-name": "fn"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.3.7"]}],
                "ports": [{"port": 8080}],
            }))
            .expect("slice"),
        );
        n.services_changed();
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released")
            .expect("task");
        assert!(woke);
        assert!(n.waiting.snapshot().is_empty());
    }

    #[tokio::test]
    async fn a_held_service_should_take_a_ready_pod_here_before_its_endpoint_slice() {
        let n = Arc::new(net());
        let service = |held: bool| -> k8s_openapi::api::core::v1::Service {
            let annotations = if held {
                json!({wasmkube_api::services::SCALE_FROM_ZERO: "fn"})
            } else {
                json!({})
            };
            serde_json::from_value(json!({
                "metadata": {"name": "fn", "namespace": "d", "annotations": annotations},
                "spec": {"clusterIP": "10.96.1.2", "selector": {"app": "fn"},
                         "ports": [{"port": 80, "targetPort": "http"}]},
            }))
            .expect("svc")
        };
        n.services
            .write()
            .expect("lock")
            .apply_service(&service(true));
        let svc_addr = SocketAddrV4::new(Ipv4Addr::new(10, 96, 1, 2), 80);
        // At zero: a connection to the Service IP is held, not refused.
        assert_eq!(
            n.route(None, svc_addr),
            Ok(Route::Held {
                namespace: "d".into(),
                name: "fn".into()
            })
        );
        let (ip, _) = n.add_pod(7);
        let pod = |ns: &str, app: &str| ReadyPod {
            namespace: ns.into(),
            labels: [("app".to_owned(), app.to_owned())].into(),
            ports: vec![("http".into(), 8080)],
        };
        // Pods the Service does not select do not count.
        n.set_ready_here(ip, Some(pod("d", "other")));
        n.set_ready_here(Ipv4Addr::new(10, 244, 3, 8), Some(pod("e", "fn")));
        assert!(!n.has_ready_endpoint("d", "fn"));
        let waiter = hold(&n).await;
        // The pod here turns ready: the held request goes on without an EndpointSlice, to
        // the named target port.
        n.set_ready_here(ip, Some(pod("d", "fn")));
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released")
            .expect("task");
        assert!(woke);
        let to_pod = SocketAddrV4::new(ip, 8080);
        assert_eq!(
            n.route(None, svc_addr),
            Ok(Route::Local(SocketAddrV4::new(
                Ipv4Addr::new(127, 50, 0, 7),
                8080
            )))
        );
        assert_eq!(
            n.resolve_service_port(
                "d",
                "fn",
                &wasmkube_api::services::PortRef::Number(80),
                Ipv4Addr::LOCALHOST
            ),
            Ok(to_pod)
        );
        // A Service not at zero waits for its EndpointSlice, as kube-proxy does.
        n.services
            .write()
            .expect("lock")
            .apply_service(&service(false));
        assert_eq!(n.route(None, svc_addr), Err(Refused::Refused));
        // Not ready any more: held again.
        n.services
            .write()
            .expect("lock")
            .apply_service(&service(true));
        n.set_ready_here(ip, None);
        assert!(matches!(n.route(None, svc_addr), Ok(Route::Held { .. })));
    }

    #[test]
    fn pods_services_and_peers_route() {
        let n = net();
        let (a, a_back) = n.add_pod(5);
        assert_eq!(a, Ipv4Addr::new(10, 244, 3, 5));
        assert_eq!(a_back, Ipv4Addr::new(127, 50, 0, 5));
        n.set_peers(vec![Peer {
            node: "other".into(),
            cidr: "10.244.4.0/24".parse().expect("cidr"),
            tunnel: "127.51.0.1:9999".parse().expect("addr"),
        }]);
        {
            let mut idx = n.services.write().expect("lock");
            idx.apply_service(
                &serde_json::from_value(json!({
                    "metadata": {"name": "web", "namespace": "d"},
                    "spec": {"clusterIP": "10.96.1.1", "ports": [{"port": 80}]},
                }))
                .expect("svc"),
            );
            idx.apply_slice(
                &serde_json::from_value(json!({
                    "metadata": {"name": "web-1", "namespace": "d",
                                 "labels": {"kubernetes.io/service-name": "web"}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": ["10.244.3.5"]}, {"addresses": ["10.244.4.9"]},
                                  {"addresses": ["10.244.3.6"], "conditions": {"ready": false}}],
                    "ports": [{"port": 8080}],
                }))
                .expect("slice"),
            );
        }
        let to = |s: &str| s.parse::<SocketAddrV4>().expect("addr");
        assert_eq!(
            n.route(None, to("10.244.3.5:80")),
            Ok(Route::Local(to("127.50.0.5:80")))
        );
        assert!(matches!(
            n.route(None, to("10.244.4.2:80")),
            Ok(Route::Remote { .. })
        ));
        assert_eq!(n.route(None, to("10.0.0.1:80")), Err(Refused::Denied));
        assert_eq!(n.route(None, to("8.8.8.8:53")), Err(Refused::Denied));
        assert_eq!(n.route(None, to("10.96.1.1:81")), Err(Refused::Refused));
        // Round robin over the two ready endpoints; the not-ready one gets nothing.
        let picks: HashSet<String> = (0..4)
            .map(|_| format!("{:?}", n.route(None, to("10.96.1.1:80"))))
            .collect();
        assert_eq!(picks.len(), 2, "{picks:?}");
        // A localhost-only listener is reachable from its own pod only.
        n.set_local_only(to("127.50.0.5:9090"), true);
        assert_eq!(n.route(None, to("10.244.3.5:9090")), Err(Refused::Refused));
        assert!(n.route(Some(a), to("10.244.3.5:9090")).is_ok());
        assert_eq!(
            n.virtual_of("127.50.0.5:4000".parse().expect("addr")),
            "10.244.3.5:4000".parse::<SocketAddr>().expect("addr")
        );
    }

    #[test]
    fn client_ip_affinity_sticks() {
        let n = net();
        let ready = [
            "10.244.3.5:1".parse().expect("a"),
            "10.244.3.6:1".parse().expect("a"),
        ];
        let key = || ("d".to_string(), "s".to_string(), String::new());
        let first = n.pick(key(), Some(60), Ipv4Addr::new(10, 244, 3, 9), &ready);
        for _ in 0..5 {
            assert_eq!(
                n.pick(key(), Some(60), Ipv4Addr::new(10, 244, 3, 9), &ready),
                first
            );
        }
        // Without affinity, the same client is spread.
        let spread: HashSet<_> = (0..4)
            .map(|_| n.pick(key(), None, Ipv4Addr::new(10, 244, 3, 9), &ready))
            .collect();
        assert_eq!(spread.len(), 2);
    }
}
