//! NetworkPolicy decisions (`networking.k8s.io/v1`), pure: which connections the policies of a
//! cluster allow, from the policies, every pod's labels, address and named ports, and the
//! namespaces' labels. The wasmlet keeps one [`PolicyIndex`] from watches and asks it for every
//! connection a pod opens (and for every connection a tunnel brings in).
//!
//! Kubernetes' semantics: a pod selected by some policy of its namespace with `Ingress` among
//! its `policyTypes` is isolated for ingress — a connection reaches it only if one of those
//! policies' rules allows its source and port; likewise for `Egress` at the source. A pod no
//! policy selects stays open. A rule without `from`/`to` allows every peer, without `ports`
//! every port; peers are pods (`podSelector` in the policy's namespace, `namespaceSelector`,
//! or both together) or address blocks (`ipBlock` with `except`); ports are numbers, ranges
//! (`endPort`) or names of the destination pod's container ports.
//!
//! ```
//! use wasmkube_api::netpol::{PodEntry, PolicyIndex};
//! use wasmkube_api::services::Protocol;
//! let mut index = PolicyIndex::default();
//! let pod = |name: &str, app: &str| PodEntry {
//!     namespace: "shop".into(),
//!     name: name.into(),
//!     labels: [("app".to_string(), app.to_string())].into(),
//!     ports: vec![],
//! };
//! index.apply_pod("10.244.0.2".parse().unwrap(), pod("web", "web"));
//! index.apply_pod("10.244.0.3".parse().unwrap(), pod("db", "db"));
//! let db_only_from_web = serde_json::from_value(serde_json::json!({
//!     "metadata": {"namespace": "shop", "name": "db"},
//!     "spec": {"podSelector": {"matchLabels": {"app": "db"}},
//!              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]},
//! })).unwrap();
//! index.apply_policy(&db_only_from_web);
//! let (web, db) = ("10.244.0.2".parse().unwrap(), "10.244.0.3".parse().unwrap());
//! assert!(index.allows(web, db, 5432, Protocol::Tcp));
//! assert!(!index.allows("127.0.0.1".parse().unwrap(), db, 5432, Protocol::Tcp));
//! assert!(index.allows(db, web, 80, Protocol::Tcp)); // web is selected by no policy
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::selector::LabelSelector;
use crate::services::Protocol;

/// What the policies need to know of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its containers' named ports: (name, number, protocol).
    pub ports: Vec<(String, u16, Protocol)>,
}

impl PodEntry {
    /// From a pod object (`None` without an IPv4 `status.podIP`): its address and entry.
    pub fn of(pod: &k8s_openapi::api::core::v1::Pod) -> Option<(Ipv4Addr, PodEntry)> {
        let ip: Ipv4Addr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
        let ports = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let name = p.name.clone()?;
                let number = u16::try_from(p.container_port).ok()?;
                Some((name, number, Protocol::parse(p.protocol.as_deref())))
            })
            .collect();
        Some((
            ip,
            PodEntry {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                ports,
            },
        ))
    }
}

/// Which namespaces a pod peer may live in.
#[derive(Debug, Clone)]
enum Namespaces {
    /// The policy's own.
    Own,
    /// Those whose labels match.
    Matching(LabelSelector),
}

#[derive(Debug, Clone)]
enum Peer {
    Pods {
        namespaces: Namespaces,
        pods: Option<LabelSelector>,
    },
    Block {
        cidr: Ipv4Net,
        except: Vec<Ipv4Net>,
    },
    /// A peer that matches nothing (an IPv6 block, a selector that does not parse).
    Nothing,
}

#[derive(Debug, Clone)]
enum PortSpec {
    Number(u16, u16),
    Name(String),
}

#[derive(Debug, Clone)]
struct Port {
    protocol: Protocol,
    port: Option<PortSpec>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// `None`: every peer.
    peers: Option<Vec<Peer>>,
    /// `None`: every port.
    ports: Option<Vec<Port>>,
}

#[derive(Debug, Clone)]
struct Policy {
    namespace: String,
    selects: Option<LabelSelector>,
    /// `Some` when `Ingress` is among its types.
    ingress: Option<Vec<Rule>>,
    /// `Some` when `Egress` is among its types.
    egress: Option<Vec<Rule>>,
}

fn selector(
    s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Option<LabelSelector> {
    LabelSelector::from_structured(s).ok()
}

fn peer(p: &NetworkPolicyPeer) -> Peer {
    if let Some(block) = &p.ip_block {
        let Ok(cidr) = block.cidr.parse::<Ipv4Net>() else {
            return Peer::Nothing;
        };
        let except = block
            .except
            .iter()
            .flatten()
            .filter_map(|e| e.parse::<Ipv4Net>().ok())
            .collect();
        return Peer::Block { cidr, except };
    }
    let namespaces = match &p.namespace_selector {
        None => Namespaces::Own,
        Some(s) => match selector(s) {
            Some(s) => Namespaces::Matching(s),
            None => return Peer::Nothing,
        },
    };
    let pods = match &p.pod_selector {
        None => None,
        Some(s) => match selector(s) {
            Some(s) => Some(s),
            None => return Peer::Nothing,
        },
    };
    Peer::Pods { namespaces, pods }
}

fn port(p: &NetworkPolicyPort) -> Port {
    let number = |n: i32| u16::try_from(n).unwrap_or(0);
    Port {
        protocol: Protocol::parse(p.protocol.as_deref()),
        port: p.port.as_ref().map(|port| match port {
            IntOrString::Int(n) => {
                let start = number(*n);
                PortSpec::Number(start, p.end_port.map_or(start, number))
            }
            IntOrString::String(name) => PortSpec::Name(name.clone()),
        }),
    }
}

fn rules<'a>(
    rules: impl Iterator<
        Item = (
            Option<&'a Vec<NetworkPolicyPeer>>,
            Option<&'a Vec<NetworkPolicyPort>>,
        ),
    >,
) -> Vec<Rule> {
    rules
        .map(|(peers, ports)| Rule {
            // An empty list is as good as none: it allows every peer / port.
            peers: peers
                .filter(|p| !p.is_empty())
                .map(|p| p.iter().map(peer).collect()),
            ports: ports
                .filter(|p| !p.is_empty())
                .map(|p| p.iter().map(port).collect()),
        })
        .collect()
}

impl Policy {
    fn of(np: &NetworkPolicy) -> Policy {
        let spec = np.spec.clone().unwrap_or_default();
        let types = spec.policy_types.clone().unwrap_or_default();
        let egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let (ingress_on, egress_on) = if types.is_empty() {
            (true, egress_rules)
        } else {
            (
                types.iter().any(|t| t == "Ingress"),
                types.iter().any(|t| t == "Egress"),
            )
        };
        let empty = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector::default();
        Policy {
            namespace: np.metadata.namespace.clone().unwrap_or_default(),
            selects: selector(spec.pod_selector.as_ref().unwrap_or(&empty)),
            ingress: ingress_on.then(|| {
                rules(
                    spec.ingress
                        .iter()
                        .flatten()
                        .map(|r| (r.from.as_ref(), r.ports.as_ref())),
                )
            }),
            egress: egress_on.then(|| {
                rules(
                    spec.egress
                        .iter()
                        .flatten()
                        .map(|r| (r.to.as_ref(), r.ports.as_ref())),
                )
            }),
        }
    }
}

/// A connection's far end as one side's policies see it.
struct Other<'a> {
    ip: Ipv4Addr,
    pod: Option<&'a PodEntry>,
}

/// The policies, pods and namespaces of a cluster.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    policies: HashMap<(String, String), Policy>,
    pods: HashMap<Ipv4Addr, PodEntry>,
    pod_ips: HashMap<(String, String), Ipv4Addr>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl PolicyIndex {
    /// Whether any policy exists (none: every connection is allowed, and nothing else need be
    /// known).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Adds or replaces a policy.
    pub fn apply_policy(&mut self, np: &NetworkPolicy) {
        let key = (
            np.metadata.namespace.clone().unwrap_or_default(),
            np.metadata.name.clone().unwrap_or_default(),
        );
        self.policies.insert(key, Policy::of(np));
    }

    /// Removes a policy.
    pub fn delete_policy(&mut self, namespace: &str, name: &str) {
        self.policies
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Adds or replaces a pod at `ip` (a pod that moved address leaves its old one).
    pub fn apply_pod(&mut self, ip: Ipv4Addr, pod: PodEntry) {
        let key = (pod.namespace.clone(), pod.name.clone());
        if let Some(old) = self.pod_ips.insert(key, ip)
            && old != ip
        {
            self.pods.remove(&old);
        }
        self.pods.insert(ip, pod);
    }

    /// Removes a pod.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        if let Some(ip) = self
            .pod_ips
            .remove(&(namespace.to_owned(), name.to_owned()))
        {
            self.pods.remove(&ip);
        }
    }

    /// Adds or replaces a namespace's labels.
    pub fn apply_namespace(&mut self, name: &str, labels: BTreeMap<String, String>) {
        self.namespaces.insert(name.to_owned(), labels);
    }

    /// Removes a namespace.
    pub fn delete_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Forgets every pod and namespace (a watch restarts from a fresh list).
    pub fn clear_pods(&mut self) {
        self.pods.clear();
        self.pod_ips.clear();
        self.namespaces.clear();
    }

    /// Forgets every policy.
    pub fn clear_policies(&mut self) {
        self.policies.clear();
    }

    /// Whether a connection from `from` to `to`:`port` is allowed: by the egress policies of the
    /// pod at `from` (if it is one) and the ingress policies of the pod at `to` (if it is one).
    pub fn allows(&self, from: Ipv4Addr, to: Ipv4Addr, port: u16, protocol: Protocol) -> bool {
        if self.policies.is_empty() {
            return true;
        }
        let (src, dst) = (self.pods.get(&from), self.pods.get(&to));
        let egress_ok = src.is_none_or(|s| {
            self.side_allows(
                s,
                Direction::Egress,
                &Other { ip: to, pod: dst },
                dst,
                port,
                protocol,
            )
        });
        egress_ok
            && dst.is_none_or(|d| {
                self.side_allows(
                    d,
                    Direction::Ingress,
                    &Other { ip: from, pod: src },
                    Some(d),
                    port,
                    protocol,
                )
            })
    }

    /// Whether the policies selecting `pod` for `direction` let the connection with `other`
    /// through (`dest` is the connection's destination pod, for named ports).
    fn side_allows(
        &self,
        pod: &PodEntry,
        direction: Direction,
        other: &Other<'_>,
        dest: Option<&PodEntry>,
        port: u16,
        protocol: Protocol,
    ) -> bool {
        let mut isolated = false;
        for policy in self.policies.values() {
            if policy.namespace != pod.namespace
                || !policy
                    .selects
                    .as_ref()
                    .is_some_and(|s| s.matches(&pod.labels))
            {
                continue;
            }
            let rules = match direction {
                Direction::Ingress => policy.ingress.as_ref(),
                Direction::Egress => policy.egress.as_ref(),
            };
            let Some(rules) = rules else { continue };
            isolated = true;
            let allowed = rules.iter().any(|r| {
                r.peers
                    .as_ref()
                    .is_none_or(|peers| peers.iter().any(|p| self.peer_matches(p, policy, other)))
                    && r.ports.as_ref().is_none_or(|ports| {
                        ports.iter().any(|p| port_matches(p, dest, port, protocol))
                    })
            });
            if allowed {
                return true;
            }
        }
        !isolated
    }

    fn peer_matches(&self, peer: &Peer, policy: &Policy, other: &Other<'_>) -> bool {
        match peer {
            Peer::Nothing => false,
            Peer::Block { cidr, except } => {
                cidr.contains(&other.ip) && !except.iter().any(|e| e.contains(&other.ip))
            }
            Peer::Pods { namespaces, pods } => {
                let Some(o) = other.pod else {
                    return false;
                };
                let in_namespace = match namespaces {
                    Namespaces::Own => o.namespace == policy.namespace,
                    Namespaces::Matching(sel) => {
                        let empty = BTreeMap::new();
                        sel.matches(self.namespaces.get(&o.namespace).unwrap_or(&empty))
                    }
                };
                in_namespace && pods.as_ref().is_none_or(|s| s.matches(&o.labels))
            }
        }
    }
}

fn port_matches(p: &Port, dest: Option<&PodEntry>, port: u16, protocol: Protocol) -> bool {
    if p.protocol != protocol {
        return false;
    }
    match &p.port {
        None => true,
        Some(PortSpec::Number(start, end)) => (*start..=*end).contains(&port),
        Some(PortSpec::Name(name)) => dest.is_some_and(|d| {
            d.ports
                .iter()
                .any(|(n, number, proto)| n == name && *number == port && *proto == protocol)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TCP: Protocol = Protocol::Tcp;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> PodEntry {
        PodEntry {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: vec![("http".into(), 8080, TCP)],
        }
    }

    fn policy(ns: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
            .expect("policy")
    }

    /// web (a, app=web), db (a, app=db), client (b, app=client), with namespace labels.
    fn cluster() -> PolicyIndex {
        let mut i = PolicyIndex::default();
        i.apply_pod(ip("10.244.0.1"), pod("a", "web", &[("app", "web")]));
        i.apply_pod(ip("10.244.0.2"), pod("a", "db", &[("app", "db")]));
        i.apply_pod(ip("10.244.1.1"), pod("b", "client", &[("app", "client")]));
        i.apply_namespace("a", [("team".to_string(), "a".to_string())].into());
        i.apply_namespace("b", [("team".to_string(), "b".to_string())].into());
        i
    }

    const WEB: &str = "10.244.0.1";
    const DB: &str = "10.244.0.2";
    const CLIENT: &str = "10.244.1.1";

    #[test]
    fn an_empty_policy_should_deny_all_ingress_to_its_namespace_and_nothing_else() {
        let mut i = cluster();
        assert!(i.allows(ip(CLIENT), ip(WEB), 80, TCP));
        i.apply_policy(&policy("a", "deny", json!({"podSelector": {}})));
        assert!(!i.allows(ip(CLIENT), ip(WEB), 80, TCP));
        assert!(
            !i.allows(ip(WEB), ip(DB), 5432, TCP),
            "even within the namespace"
        );
        assert!(i.allows(ip(WEB), ip(CLIENT), 80, TCP), "egress stays open");
        i.delete_policy("a", "deny");
        assert!(i.allows(ip(CLIENT), ip(WEB), 80, TCP));
    }

    #[test]
    fn pod_and_namespace_selectors_should_pick_the_sources() {
        let mut i = cluster();
        i.apply_policy(&policy(
            "a",
            "db",
            json!({
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
            }),
        ));
        assert!(i.allows(ip(WEB), ip(DB), 5432, TCP));
        assert!(
            !i.allows(ip(CLIENT), ip(DB), 5432, TCP),
            "podSelector alone: own namespace"
        );
        assert!(
            i.allows(ip(CLIENT), ip(WEB), 80, TCP),
            "web is not selected"
        );
        i.apply_policy(&policy(
            "a",
            "from-b",
            json!({
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}],
            }),
        ));
        assert!(i.allows(ip(CLIENT), ip(DB), 5432, TCP), "policies add up");
        // Both selectors in one peer: pods matching one, in namespaces matching the other.
        i.delete_policy("a", "from-b");
        i.apply_policy(&policy(
            "a",
            "from-b",
            json!({
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}},
                                       "podSelector": {"matchLabels": {"app": "other"}}}]}],
            }),
        ));
        assert!(!i.allows(ip(CLIENT), ip(DB), 5432, TCP));
        // Labels change: the decision follows at once.
        i.apply_pod(ip(CLIENT), pod("b", "client", &[("app", "other")]));
        assert!(i.allows(ip(CLIENT), ip(DB), 5432, TCP));
    }

    #[test]
    fn ports_ranges_and_named_ports_should_limit_rules() {
        let mut i = cluster();
        i.apply_policy(&policy(
            "a",
            "web",
            json!({
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"ports": [{"port": 80}, {"port": 9000, "endPort": 9010},
                                       {"port": "http"}, {"port": 53, "protocol": "UDP"}]}],
            }),
        ));
        assert!(i.allows(ip(CLIENT), ip(WEB), 80, TCP));
        assert!(i.allows(ip(CLIENT), ip(WEB), 9005, TCP));
        assert!(!i.allows(ip(CLIENT), ip(WEB), 9011, TCP));
        assert!(i.allows(ip(CLIENT), ip(WEB), 8080, TCP), "the named port");
        assert!(!i.allows(ip(CLIENT), ip(WEB), 53, TCP), "UDP only");
        assert!(!i.allows(ip(CLIENT), ip(WEB), 443, TCP));
    }

    #[test]
    fn egress_rules_and_ip_blocks_should_limit_where_a_pod_connects() {
        let mut i = cluster();
        i.apply_policy(&policy("a", "egress", json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]}}]},
                       {"to": [{"podSelector": {}}], "ports": [{"port": "http"}]}],
        })));
        assert!(i.allows(ip(WEB), ip(DB), 5432, TCP), "in the block");
        assert!(!i.allows(ip(WEB), ip(CLIENT), 5432, TCP), "excepted");
        assert!(
            !i.allows(ip(WEB), ip("127.0.0.1"), 6443, TCP),
            "outside the block"
        );
        assert!(
            i.allows(ip(DB), ip(CLIENT), 5432, TCP),
            "db has no egress policy"
        );
        assert!(
            i.allows(ip(CLIENT), ip(WEB), 80, TCP),
            "ingress to web is open"
        );
        // An egress-only policy with no rules: default-deny egress.
        i.apply_policy(&policy(
            "b",
            "deny-out",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        ));
        assert!(!i.allows(ip(CLIENT), ip(WEB), 80, TCP));
    }

    #[test]
    fn pods_should_come_from_their_objects() {
        let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "a", "name": "web", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9}]}]},
            "status": {"podIP": "10.244.0.7"},
        }))
        .expect("pod");
        let (addr, entry) = PodEntry::of(&p).expect("an address");
        assert_eq!(addr, ip("10.244.0.7"));
        assert_eq!(entry.ports, vec![("http".to_string(), 8080, TCP)]);
        assert_eq!(entry.labels.get("app").map(String::as_str), Some("web"));
    }
}
