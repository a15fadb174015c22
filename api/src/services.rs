//! What Services resolve to: an index of Services and their EndpointSlices, kept up to date
//! from watch events, answering the questions kube-proxy and cluster DNS ask — which Service
//! port owns `clusterIP:port` or a node port, which endpoints back it, which pod has a hostname.
//!
//! Pure data: the wasmlet's service proxy and the DNS server each feed one from their own
//! watches.
//!
//! ```
//! use wasmkube_api::services::{Protocol, ServiceIndex};
//! let mut index = ServiceIndex::default();
//! index.apply_service(&serde_json::from_value(serde_json::json!({
//!     "metadata": {"name": "web", "namespace": "default"},
//!     "spec": {"clusterIP": "10.96.1.1", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
//! })).unwrap());
//! index.apply_slice(&serde_json::from_value(serde_json::json!({
//!     "metadata": {"name": "web-1", "namespace": "default",
//!                  "labels": {"kubernetes.io/service-name": "web"}},
//!     "addressType": "IPv4",
//!     "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true}}],
//!     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
//! })).unwrap());
//! let (svc, port) = index.by_cluster_ip("10.96.1.1".parse().unwrap(), 80, Protocol::Tcp).unwrap();
//! let backends: Vec<_> = index.backends(&svc.namespace, &svc.name, port).collect();
//! assert_eq!(backends[0].addr.to_string(), "10.244.0.5:8080");
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// `TCP` (the default).
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP`.
    Sctp,
}

impl Protocol {
    /// Parses a Kubernetes protocol name (absent means TCP).
    pub fn parse(s: Option<&str>) -> Protocol {
        match s {
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            _ => Protocol::Tcp,
        }
    }

    /// The lowercase name used in SRV records (`_tcp`).
    pub fn srv_label(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// What a Service's `clusterIP` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterIp {
    /// A virtual IP that load-balances.
    Ip(Ipv4Addr),
    /// `None`: a headless Service; DNS answers with the endpoints.
    Headless,
    /// Not allocated (ExternalName, or not yet).
    Unset,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name (empty for a single unnamed port).
    pub name: String,
    /// The port on the cluster IP.
    pub port: u16,
    /// The transport.
    pub protocol: Protocol,
    /// The node port, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// `targetPort`: the pod's port, by number or by a container port's name (default: the
    /// same number as `port`).
    pub target_port: PortRef,
}

impl ServicePort {
    /// The port this Service port reaches on a pod whose containers declare `ports` (name,
    /// number), as the EndpointSlice controller resolves it; `None` when a named target port
    /// is not declared.
    pub fn target_on<'a>(&self, mut ports: impl Iterator<Item = (&'a str, u16)>) -> Option<u16> {
        match &self.target_port {
            PortRef::Number(n) => Some(*n),
            PortRef::Name(name) => ports.find(|(n, _)| n == name).map(|(_, p)| p),
        }
    }
}

/// A reference to a Service port, by number or name (an Ingress backend's `port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    /// `port.number`.
    Number(u16),
    /// `port.name`.
    Name(String),
}

impl PortRef {
    /// Whether `p` is the port referred to.
    pub fn matches(&self, p: &ServicePort) -> bool {
        match self {
            PortRef::Number(n) => p.port == *n,
            PortRef::Name(name) => p.name == *name,
        }
    }
}

/// What the proxy and DNS need of one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The cluster IP.
    pub cluster_ip: ClusterIp,
    /// `spec.externalName` of an ExternalName Service.
    pub external_name: Option<String>,
    /// The ports.
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity_seconds: Option<u32>,
    /// An autoscaler may take it to zero pods ([`SCALE_FROM_ZERO`]): with no ready endpoint,
    /// the node holds new requests and connections until one is ready.
    pub scale_from_zero: bool,
    /// `spec.selector` (none: the Service's endpoints are managed by hand).
    pub selector: Option<BTreeMap<String, String>>,
}

/// The annotation the autoscaler puts on a Service it may scale to zero (the value names the
/// HorizontalPodAutoscaler).
pub const SCALE_FROM_ZERO: &str = "autoscaling.wasmkube.io/scale-from-zero";

/// One endpoint address of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod IP.
    pub ip: Ipv4Addr,
    /// Ready to receive new connections (absent counts as ready).
    pub ready: bool,
    /// The hostname (StatefulSet pods with a matching subdomain).
    pub hostname: Option<String>,
    /// The node the endpoint is on.
    pub node_name: Option<String>,
}

/// An endpoint with the port a Service port resolved to on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend<'a> {
    /// Pod IP and target port.
    pub addr: SocketAddrV4,
    /// The endpoint.
    pub endpoint: &'a Endpoint,
}

#[derive(Debug, Clone, Default)]
struct Slice {
    service: String,
    endpoints: Vec<Endpoint>,
    /// Port name → (port, protocol).
    ports: Vec<(String, u16, Protocol)>,
}

type Key = (String, String);
type PortKey = (Ipv4Addr, u16, Protocol);

/// Services and EndpointSlices by name, with the lookups the data path needs.
#[derive(Debug, Default)]
pub struct ServiceIndex {
    services: HashMap<Key, ServiceEntry>,
    /// (namespace, slice name) → slice.
    slices: HashMap<Key, Slice>,
    /// (namespace, service) → its slice names, in order.
    slices_of: HashMap<Key, BTreeMap<String, ()>>,
    by_cluster_ip: HashMap<PortKey, Key>,
    by_node_port: HashMap<(u16, Protocol), Key>,
}

fn key(ns: &str, name: &str) -> Key {
    (ns.to_owned(), name.to_owned())
}

impl ServiceEntry {
    /// Reads what matters of a Service object.
    pub fn from_service(svc: &Service) -> ServiceEntry {
        let spec = svc.spec.clone().unwrap_or_default();
        let cluster_ip = match spec.cluster_ip.as_deref() {
            Some("None") => ClusterIp::Headless,
            Some(s) => s.parse().map_or(ClusterIp::Unset, ClusterIp::Ip),
            None => ClusterIp::Unset,
        };
        let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(10_800)
        });
        ServiceEntry {
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: svc.metadata.name.clone().unwrap_or_default(),
            cluster_ip,
            external_name: spec
                .external_name
                .filter(|_| spec.type_.as_deref() == Some("ExternalName")),
            ports: spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(ServicePort {
                        name: p.name.clone().unwrap_or_default(),
                        port: u16::try_from(p.port).ok()?,
                        protocol: Protocol::parse(p.protocol.as_deref()),
                        node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
                        target_port: match &p.target_port {
                            Some(IntOrString::String(name)) => PortRef::Name(name.clone()),
                            Some(IntOrString::Int(n)) => PortRef::Number(u16::try_from(*n).ok()?),
                            None => PortRef::Number(u16::try_from(p.port).ok()?),
                        },
                    })
                })
                .collect(),
            affinity_seconds,
            scale_from_zero: svc
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(SCALE_FROM_ZERO)),
            selector: spec.selector.filter(|s| !s.is_empty()),
        }
    }

    /// Whether the Service selects a pod in its namespace with `labels`.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        namespace == self.namespace
            && self
                .selector
                .as_ref()
                .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}

impl ServiceIndex {
    /// Adds or replaces a Service.
    pub fn apply_service(&mut self, svc: &Service) {
        let entry = ServiceEntry::from_service(svc);
        let k = key(&entry.namespace, &entry.name);
        self.unindex(&k);
        if let ClusterIp::Ip(ip) = entry.cluster_ip {
            for p in &entry.ports {
                self.by_cluster_ip
                    .insert((ip, p.port, p.protocol), k.clone());
            }
        }
        for p in &entry.ports {
            if let Some(n) = p.node_port {
                self.by_node_port.insert((n, p.protocol), k.clone());
            }
        }
        self.services.insert(k, entry);
    }

    /// Removes a Service.
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let k = key(namespace, name);
        self.unindex(&k);
        self.services.remove(&k);
    }

    fn unindex(&mut self, k: &Key) {
        if let Some(old) = self.services.get(k) {
            if let ClusterIp::Ip(ip) = old.cluster_ip {
                for p in &old.ports {
                    let pk = (ip, p.port, p.protocol);
                    if self.by_cluster_ip.get(&pk) == Some(k) {
                        self.by_cluster_ip.remove(&pk);
                    }
                }
            }
            for p in &old.ports {
                if let Some(n) = p.node_port
                    && self.by_node_port.get(&(n, p.protocol)) == Some(k)
                {
                    self.by_node_port.remove(&(n, p.protocol));
                }
            }
        }
    }

    /// Adds or replaces an EndpointSlice (IPv4 slices labelled with their Service).
    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        let name = slice.metadata.name.clone().unwrap_or_default();
        self.delete_slice(&ns, &name);
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned()
        else {
            return;
        };
        if slice.address_type != "IPv4" {
            return;
        }
        let endpoints = slice
            .endpoints
            .iter()
            .flat_map(|e| {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                e.addresses.iter().filter_map(move |a| {
                    Some(Endpoint {
                        ip: a.parse().ok()?,
                        ready,
                        hostname: e.hostname.clone(),
                        node_name: e.node_name.clone(),
                    })
                })
            })
            .collect();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.port?).ok()?,
                    Protocol::parse(p.protocol.as_deref()),
                ))
            })
            .collect();
        self.slices_of
            .entry(key(&ns, &service))
            .or_default()
            .insert(name.clone(), ());
        self.slices.insert(
            (ns, name),
            Slice {
                service,
                endpoints,
                ports,
            },
        );
    }

    /// Removes an EndpointSlice.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        if let Some(old) = self.slices.remove(&key(namespace, name)) {
            let sk = key(namespace, &old.service);
            if let Some(names) = self.slices_of.get_mut(&sk) {
                names.remove(name);
                if names.is_empty() {
                    self.slices_of.remove(&sk);
                }
            }
        }
    }

    /// Forgets everything (before a re-list).
    pub fn clear(&mut self) {
        *self = ServiceIndex::default();
    }

    /// A Service by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceEntry> {
        self.services.get(&key(namespace, name))
    }

    /// The environment a pod in `namespace` gets from Services, as the kubelet gives it: the
    /// `default/kubernetes` Service always, the namespace's other Services when `links`
    /// (`enableServiceLinks`), each with a cluster IP: `NAME_SERVICE_HOST`, `NAME_SERVICE_PORT`
    /// (the first port), `NAME_SERVICE_PORT_PORTNAME`, and Docker's link variables
    /// (`NAME_PORT`, `NAME_PORT_443_TCP`, `..._PROTO`, `..._PORT`, `..._ADDR`).
    pub fn link_env(&self, namespace: &str, links: bool) -> Vec<(String, String)> {
        // By name: the namespace's own Service wins over `default/kubernetes`, whichever
        // comes first.
        let mut chosen: BTreeMap<&str, &ServiceEntry> = BTreeMap::new();
        for svc in self.services.values() {
            if !matches!(svc.cluster_ip, ClusterIp::Ip(_)) || svc.ports.is_empty() {
                continue;
            }
            if svc.namespace == "default" && svc.name == "kubernetes" {
                chosen.entry(&svc.name).or_insert(svc);
            } else if svc.namespace == namespace && links {
                chosen.insert(&svc.name, svc);
            }
        }
        let var = |s: &str| s.to_uppercase().replace('-', "_");
        let mut env = Vec::new();
        for svc in chosen.values() {
            let ClusterIp::Ip(ip) = svc.cluster_ip else {
                continue;
            };
            let prefix = var(&svc.name);
            env.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
            env.push((
                format!("{prefix}_SERVICE_PORT"),
                svc.ports[0].port.to_string(),
            ));
            for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                env.push((
                    format!("{prefix}_SERVICE_PORT_{}", var(&p.name)),
                    p.port.to_string(),
                ));
            }
            for (i, p) in svc.ports.iter().enumerate() {
                let proto = p.protocol.srv_label();
                let url = format!("{proto}://{ip}:{}", p.port);
                if i == 0 {
                    env.push((format!("{prefix}_PORT"), url.clone()));
                }
                let port_prefix = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
                env.push((port_prefix.clone(), url));
                env.push((format!("{port_prefix}_PROTO"), proto.to_owned()));
                env.push((format!("{port_prefix}_PORT"), p.port.to_string()));
                env.push((format!("{port_prefix}_ADDR"), ip.to_string()));
            }
        }
        env
    }

    /// Whether any Service lives in `namespace`.
    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.services.keys().any(|(ns, _)| ns == namespace)
    }

    /// The Service port answering on `clusterIP:port`.
    pub fn by_cluster_ip(
        &self,
        ip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
    ) -> Option<(&ServiceEntry, &ServicePort)> {
        let svc = self
            .services
            .get(self.by_cluster_ip.get(&(ip, port, protocol))?)?;
        let p = svc
            .ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)?;
        Some((svc, p))
    }

    /// Whether `ip` is some Service's cluster IP.
    pub fn is_cluster_ip(&self, ip: Ipv4Addr) -> bool {
        self.services
            .values()
            .any(|s| s.cluster_ip == ClusterIp::Ip(ip))
    }

    /// The Service port behind a node port.
    pub fn by_node_port(
        &self,
        port: u16,
        protocol: Protocol,
    ) -> Option<(&ServiceEntry, &ServicePort)> {
        let svc = self
            .services
            .get(self.by_node_port.get(&(port, protocol))?)?;
        let p = svc
            .ports
            .iter()
            .find(|p| p.node_port == Some(port) && p.protocol == protocol)?;
        Some((svc, p))
    }

    /// Every node port in use, with its protocol.
    pub fn node_ports(&self) -> impl Iterator<Item = (u16, Protocol)> + '_ {
        self.by_node_port.keys().copied()
    }

    /// Every endpoint of a Service (all slices, ready or not).
    pub fn endpoints<'a>(
        &'a self,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.slices_of_service(namespace, name)
            .flat_map(|s| s.endpoints.iter())
    }

    /// The endpoints of one Service port with the target port each resolved to, in a stable
    /// order (ready or not; callers choose).
    pub fn backends<'a>(
        &'a self,
        namespace: &str,
        name: &str,
        port: &'a ServicePort,
    ) -> impl Iterator<Item = Backend<'a>> + 'a {
        self.slices_of_service(namespace, name).flat_map(move |s| {
            let target = s
                .ports
                .iter()
                .find(|(n, _, proto)| *n == port.name && *proto == port.protocol)
                .map(|(_, p, _)| *p);
            s.endpoints.iter().filter_map(move |e| {
                Some(Backend {
                    addr: SocketAddrV4::new(e.ip, target?),
                    endpoint: e,
                })
            })
        })
    }

    /// The named ports of a Service's endpoints: (name, port, protocol), for SRV records.
    pub fn endpoint_ports<'a>(
        &'a self,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = (&'a str, u16, Protocol)> + 'a {
        self.slices_of_service(namespace, name)
            .flat_map(|s| s.ports.iter().map(|(n, p, proto)| (n.as_str(), *p, *proto)))
    }

    fn slices_of_service<'a>(
        &'a self,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a Slice> + 'a {
        let ns = namespace.to_owned();
        self.slices_of
            .get(&key(namespace, name))
            .into_iter()
            .flat_map(|names| names.keys())
            .filter_map(move |n| self.slices.get(&(ns.clone(), n.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_should_get_the_kubernetes_service_and_with_links_their_namespace_s() {
        let mut index = ServiceIndex::default();
        for (ns, name, ip, ports) in [
            (
                "default",
                "kubernetes",
                "10.96.0.1",
                json!([{"name": "https", "port": 443}]),
            ),
            (
                "shop",
                "web-api",
                "10.96.3.4",
                json!([{"name": "http", "port": 80}, {"port": 53, "protocol": "UDP"}]),
            ),
            ("shop", "headless", "None", json!([{"port": 1}])),
            ("other", "db", "10.96.5.5", json!([{"port": 5432}])),
        ] {
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name},
                "spec": {"clusterIP": ip, "ports": ports},
            }))
            .expect("service");
            index.apply_service(&svc);
        }
        let env: BTreeMap<String, String> = index.link_env("shop", true).into_iter().collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.96.0.1:443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_ADDR"), Some("10.96.0.1"));
        assert_eq!(get("WEB_API_SERVICE_PORT"), Some("80"));
        assert_eq!(get("WEB_API_SERVICE_PORT_HTTP"), Some("80"));
        assert_eq!(get("WEB_API_PORT_53_UDP"), Some("udp://10.96.3.4:53"));
        assert_eq!(get("WEB_API_PORT_53_UDP_PROTO"), Some("udp"));
        assert!(
            !env.keys()
                .any(|k| k.starts_with("HEADLESS_") || k.starts_with("DB_"))
        );
        let plain: BTreeMap<String, String> = index.link_env("shop", false).into_iter().collect();
        assert!(plain.contains_key("KUBERNETES_SERVICE_HOST"));
        assert!(!plain.keys().any(|k| k.starts_with("WEB_API")));
    }
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    fn slice(
        name: &str,
        service: &str,
        eps: serde_json::Value,
        ports: serde_json::Value,
    ) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4", "endpoints": eps, "ports": ports,
        }))
        .expect("slice")
    }

    #[test]
    fn services_resolve_to_backends_across_slices() {
        let mut idx = ServiceIndex::default();
        idx.apply_service(&svc(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.1.1", "type": "NodePort", "sessionAffinity": "ClientIP",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
        })));
        idx.apply_slice(&slice(
            "web-a",
            "web",
            json!([{"addresses": ["10.244.0.5"], "conditions": {"ready": true}},
                   {"addresses": ["10.244.0.6"], "conditions": {"ready": false}}]),
            json!([{"name": "http", "port": 8080}]),
        ));
        idx.apply_slice(&slice(
            "web-b",
            "web",
            json!([{"addresses": ["10.244.1.5"]}]),
            json!([{"name": "http", "port": 9090}]),
        ));
        let (s, p) = idx
            .by_cluster_ip(Ipv4Addr::new(10, 96, 1, 1), 80, Protocol::Tcp)
            .expect("service port");
        assert_eq!(s.affinity_seconds, Some(10_800));
        let all: Vec<String> = idx
            .backends("ns", "web", p)
            .map(|b| format!("{}/{}", b.addr, b.endpoint.ready))
            .collect();
        assert_eq!(
            all,
            [
                "10.244.0.5:8080/true",
                "10.244.0.6:8080/false",
                "10.244.1.5:9090/true"
            ]
        );
        assert!(idx.by_node_port(30080, Protocol::Tcp).is_some());
        assert!(
            idx.by_cluster_ip(Ipv4Addr::new(10, 96, 1, 1), 81, Protocol::Tcp)
                .is_none()
        );

        // A changed Service drops its old node port; a deleted slice drops its endpoints.
        idx.apply_service(&svc(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.1.1", "ports": [{"name": "http", "port": 80}]},
        })));
        assert!(idx.by_node_port(30080, Protocol::Tcp).is_none());
        idx.delete_slice("ns", "web-a");
        let (_, p) = idx
            .by_cluster_ip(Ipv4Addr::new(10, 96, 1, 1), 80, Protocol::Tcp)
            .expect("service port");
        assert_eq!(idx.backends("ns", "web", p).count(), 1);
        idx.delete_service("ns", "web");
        assert!(
            idx.by_cluster_ip(Ipv4Addr::new(10, 96, 1, 1), 80, Protocol::Tcp)
                .is_none()
        );
        assert!(!idx.is_cluster_ip(Ipv4Addr::new(10, 96, 1, 1)));
    }

    #[test]
    fn headless_and_external_name_services() {
        let mut idx = ServiceIndex::default();
        idx.apply_service(&svc(json!({
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]},
        })));
        idx.apply_service(&svc(json!({
            "metadata": {"name": "ext", "namespace": "ns"},
            "spec": {"type": "ExternalName", "externalName": "example.org"},
        })));
        assert_eq!(
            idx.service("ns", "db").map(|s| s.cluster_ip),
            Some(ClusterIp::Headless)
        );
        assert_eq!(
            idx.service("ns", "ext")
                .and_then(|s| s.external_name.as_deref()),
            Some("example.org")
        );
        assert!(idx.has_namespace("ns") && !idx.has_namespace("other"));
    }
}
