//! Address allocation: a Service's `clusterIP` from the service CIDR and its `nodePort`s from the
//! node-port range (kube-apiserver's `ipallocator` and `portallocator`), and a Node's `podCIDR`
//! from the cluster CIDR (kube-controller-manager's node IPAM, done here at admission so that a
//! node has its pod range from the moment it exists).
//!
//! What is in use is read from the store on first use and after any Service or Node deletion,
//! and kept in memory between; the Service (or Node) lock is held from choosing a value until the
//! object carrying it is written, so two creates never pick the same address. Like
//! KEP-3070/KEP-3668, dynamic values come from above a small static band that is left for
//! values users ask for explicitly (such as a DNS service at `10.96.0.10`).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Service};
use tokio::sync::{Mutex, MutexGuard};
use wasmkube_api::ResourceInfo;
use wasmkube_store::Store;

use super::{Operation, Request, Reservation, Reserve};
use crate::error::{ApiError, FieldError};

/// The cluster's address plan.
#[derive(Debug, Clone)]
pub struct Network {
    /// Where Service cluster IPs come from (`--service-cluster-ip-range`).
    pub service_cidr: Ipv4Net,
    /// Where node pod ranges come from (`--cluster-cidr`).
    pub cluster_cidr: Ipv4Net,
    /// The prefix length of one node's pod range (`--node-cidr-mask-size`).
    pub node_cidr_mask: u8,
    /// Where `nodePort`s come from (`--service-node-port-range`).
    pub node_ports: RangeInclusive<u16>,
}

impl Default for Network {
    /// kubeadm's defaults: `10.96.0.0/12`, `10.244.0.0/16` in `/24`s, ports 30000-32767.
    fn default() -> Self {
        Network {
            service_cidr: "10.96.0.0/12".parse().expect("valid CIDR"),
            cluster_cidr: "10.244.0.0/16".parse().expect("valid CIDR"),
            node_cidr_mask: 24,
            node_ports: 30000..=32767,
        }
    }
}

impl Network {
    /// The first address after the static band of the service CIDR (`min(max(16, n/16), 256)`).
    fn dynamic_ip_start(&self) -> u32 {
        let size = self.service_size();
        (size / 16).clamp(16, 256).min(size.saturating_sub(2))
    }

    fn service_size(&self) -> u32 {
        1u32.checked_shl(32 - u32::from(self.service_cidr.prefix_len()))
            .unwrap_or(u32::MAX)
    }

    /// The first port after the static node-port band (`min(max(16, n/32), 128)`).
    fn dynamic_port_start(&self) -> u16 {
        let size = u32::from(self.node_ports.end() - self.node_ports.start()) + 1;
        let band = (size / 32).clamp(16, 128).min(size - 1);
        self.node_ports.start() + u16::try_from(band).unwrap_or(0)
    }

    fn service_ip(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_cidr.network()) + offset)
    }

    fn node_subnets(&self) -> u32 {
        let bits = u32::from(
            self.node_cidr_mask
                .saturating_sub(self.cluster_cidr.prefix_len()),
        );
        1u32.checked_shl(bits).unwrap_or(u32::MAX)
    }

    fn node_subnet(&self, index: u32) -> Option<Ipv4Net> {
        self.cluster_cidr
            .subnets(self.node_cidr_mask)
            .ok()?
            .nth(index as usize)
    }
}

#[derive(Default)]
pub(crate) struct ServicesInUse {
    loaded: bool,
    /// Cluster IPs as offsets into the service CIDR, with the owner `ns/name`.
    ips: std::collections::HashMap<u32, String>,
    ports: std::collections::HashMap<u16, String>,
    next_ip: u32,
    next_port: u16,
}

#[derive(Default)]
pub(crate) struct NodesInUse {
    loaded: bool,
    subnets: HashSet<Ipv4Net>,
    next: u32,
}

/// The allocators of one API server.
pub(crate) struct Allocator {
    net: Network,
    services: Mutex<ServicesInUse>,
    nodes: Mutex<NodesInUse>,
    services_stale: AtomicBool,
    nodes_stale: AtomicBool,
}

/// Holds an allocation lock until the object that carries the allocation is written.
pub(crate) enum Held<'a> {
    None,
    Services(#[expect(dead_code, reason = "held for its Drop")] MutexGuard<'a, ServicesInUse>),
    Nodes(#[expect(dead_code, reason = "held for its Drop")] MutexGuard<'a, NodesInUse>),
}

fn owner(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

fn uses_node_ports(svc: &Service) -> bool {
    matches!(
        svc.spec.as_ref().and_then(|s| s.type_.as_deref()),
        Some("NodePort" | "LoadBalancer")
    )
}

impl Allocator {
    pub(crate) fn new(net: Network) -> Self {
        Allocator {
            net,
            services: Mutex::default(),
            nodes: Mutex::default(),
            services_stale: AtomicBool::new(false),
            nodes_stale: AtomicBool::new(false),
        }
    }

    /// Admission for a Service create (`old` is `None`) or update: keeps the addresses it already
    /// had, allocates what its type needs, and refuses addresses that are outside the ranges or
    /// taken. The returned lock must be held until the Service is written.
    pub(crate) async fn admit_service<'a>(
        &'a self,
        store: &Store,
        svc: &mut Service,
        old: Option<&Service>,
        dry_run: bool,
    ) -> Result<Held<'a>, ApiError> {
        let info = ResourceInfo::of::<Service>();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let me = owner(svc);
        let mut used = self.services.lock().await;
        if !used.loaded || self.services_stale.swap(false, Ordering::AcqRel) {
            *used = self.load_services(store, &used).await?;
        }
        let old_spec = old.and_then(|o| o.spec.clone()).unwrap_or_default();
        let node_ports = uses_node_ports(svc);
        let spec = svc.spec.get_or_insert_with(Default::default);
        let mut errs = Vec::new();
        let external = spec.type_.as_deref() == Some("ExternalName");
        // Updates keep what was allocated when the client did not say (`patchAllocatedValues`).
        if spec.cluster_ip.as_deref().unwrap_or_default().is_empty()
            && !external
            && let Some(ip) = old_spec.cluster_ip.clone().filter(|s| !s.is_empty())
        {
            spec.cluster_ip = Some(ip);
            spec.cluster_ips.clone_from(&old_spec.cluster_ips);
        }
        let mut claimed_ip = None;
        match spec.cluster_ip.clone().unwrap_or_default().as_str() {
            _ if external => {}
            "None" => {
                if node_ports {
                    errs.push(FieldError::invalid(
                        "spec.clusterIPs[0]",
                        "None",
                        "may not be set to 'None' for LoadBalancer or NodePort services",
                    ));
                }
                spec.cluster_ips = Some(vec!["None".into()]);
            }
            "" => match self.free_ip(&used) {
                Some(offset) => {
                    let ip = self.net.service_ip(offset).to_string();
                    spec.cluster_ip = Some(ip.clone());
                    spec.cluster_ips = Some(vec![ip]);
                    claimed_ip = Some(offset);
                }
                None => {
                    return Err(ApiError::internal(format!(
                        "failed to allocate a serviceIP: range is full ({})",
                        self.net.service_cidr
                    )));
                }
            },
            given => {
                let unchanged = old_spec.cluster_ip.as_deref() == Some(given);
                match given.parse::<Ipv4Addr>() {
                    Err(_) => errs.push(FieldError::invalid(
                        "spec.clusterIPs[0]",
                        given,
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    )),
                    Ok(_) if unchanged => {}
                    Ok(ip) => {
                        let offset =
                            u32::from(ip).wrapping_sub(u32::from(self.net.service_cidr.network()));
                        if !self.net.service_cidr.contains(&ip)
                            || offset == 0
                            || offset + 1 >= self.net.service_size()
                        {
                            errs.push(FieldError::invalid(
                                "spec.clusterIPs",
                                format!("[]string{{\"{given}\"}}"),
                                &format!(
                                    "failed to allocate IP {given}: the provided IP ({given}) is not in the valid range. The range of valid IPs is {}",
                                    self.net.service_cidr
                                ),
                            ));
                        } else if used.ips.get(&offset).is_some_and(|o| *o != me) {
                            errs.push(FieldError::invalid(
                                "spec.clusterIPs",
                                format!("[]string{{\"{given}\"}}"),
                                &format!("failed to allocate IP {given}: provided IP is already allocated"),
                            ));
                        } else {
                            claimed_ip = Some(offset);
                        }
                    }
                }
                spec.cluster_ips = Some(vec![given.to_owned()]);
            }
        }
        if !external {
            spec.ip_families.get_or_insert_with(|| vec!["IPv4".into()]);
            spec.ip_family_policy
                .get_or_insert_with(|| "SingleStack".into());
        }
        let mut claimed_ports = Vec::new();
        for (i, port) in spec.ports.iter_mut().flatten().enumerate() {
            if !node_ports {
                if port.node_port.is_some() && old.is_none() {
                    errs.push(FieldError::forbidden(
                        format!("spec.ports[{i}].nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    ));
                }
                port.node_port = None;
                continue;
            }
            let previous = old_spec.ports.iter().flatten().find(|p| {
                p.port == port.port && p.protocol == port.protocol && p.node_port.is_some()
            });
            let wanted = port
                .node_port
                .filter(|p| *p != 0)
                .or_else(|| previous.and_then(|p| p.node_port));
            match wanted {
                Some(n) if previous.and_then(|p| p.node_port) == Some(n) => {
                    port.node_port = Some(n);
                }
                Some(n) => {
                    let in_range = u16::try_from(n)
                        .ok()
                        .filter(|p| self.net.node_ports.contains(p));
                    match in_range {
                        None => errs.push(FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            n,
                            &format!(
                                "provided port is not in the valid range. The range of valid ports is {}-{}",
                                self.net.node_ports.start(),
                                self.net.node_ports.end()
                            ),
                        )),
                        Some(p)
                            if used.ports.get(&p).is_some_and(|o| *o != me)
                                || claimed_ports.contains(&p) =>
                        {
                            errs.push(FieldError::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                n,
                                "provided port is already allocated",
                            ))
                        }
                        Some(p) => claimed_ports.push(p),
                    }
                    port.node_port = Some(n);
                }
                None => match self.free_port(&used, &claimed_ports) {
                    Some(p) => {
                        claimed_ports.push(p);
                        port.node_port = Some(i32::from(p));
                    }
                    None => {
                        return Err(ApiError::internal(format!(
                            "failed to allocate a nodePort: range is full ({}-{})",
                            self.net.node_ports.start(),
                            self.net.node_ports.end()
                        )));
                    }
                },
            }
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid(&info, &name, &errs));
        }
        if dry_run {
            return Ok(Held::None);
        }
        // Record what the Service holds now (releasing what it no longer holds); a failed
        // write leaves a stale claim that the next re-read clears.
        used.ips.retain(|_, o| *o != me);
        used.ports.retain(|_, o| *o != me);
        let (ips, ports) = self.held_by(svc);
        if let Some(offset) = ips {
            used.ips.insert(offset, me.clone());
        }
        for p in ports {
            used.ports.insert(p, me.clone());
        }
        if let Some(offset) = claimed_ip {
            used.next_ip = offset + 1;
        }
        if let Some(p) = claimed_ports
            .iter()
            .filter(|p| **p >= self.net.dynamic_port_start())
            .max()
        {
            used.next_port = p.wrapping_add(1);
        }
        Ok(Held::Services(used))
    }

    /// Admission for a Node: gives a node without a pod range the next free one (a node keeps
    /// the one it has). When the cluster CIDR is exhausted the node gets none, as node IPAM
    /// reports `CIDRNotAvailable` and carries on.
    pub(crate) async fn admit_node<'a>(
        &'a self,
        store: &Store,
        node: &mut Node,
        old: Option<&Node>,
        dry_run: bool,
    ) -> Result<Held<'a>, ApiError> {
        let spec = node.spec.get_or_insert_with(Default::default);
        if spec.pod_cidr.as_deref().unwrap_or_default().is_empty() {
            if let Some(old_spec) = old.and_then(|o| o.spec.as_ref())
                && old_spec.pod_cidr.is_some()
            {
                spec.pod_cidr.clone_from(&old_spec.pod_cidr);
                spec.pod_cidrs.clone_from(&old_spec.pod_cidrs);
                return Ok(Held::None);
            }
        } else {
            if let Some(cidr) = spec.pod_cidr.clone() {
                spec.pod_cidrs.get_or_insert_with(|| vec![cidr]);
            }
            if old.is_some() {
                return Ok(Held::None);
            }
        }
        let mut used = self.nodes.lock().await;
        if !used.loaded || self.nodes_stale.swap(false, Ordering::AcqRel) {
            *used = self.load_nodes(store, &used).await?;
        }
        if let Some(given) = spec.pod_cidr.as_deref() {
            if let Ok(net) = given.parse::<Ipv4Net>()
                && !dry_run
            {
                used.subnets.insert(net);
            }
            return Ok(Held::None);
        }
        let total = self.net.node_subnets();
        let found = (0..total).map(|i| (used.next + i) % total).find_map(|i| {
            let net = self.net.node_subnet(i)?;
            (!used.subnets.contains(&net)).then_some((i, net))
        });
        let Some((index, net)) = found else {
            tracing::warn!(
                node = node.metadata.name.as_deref().unwrap_or_default(),
                cluster_cidr = %self.net.cluster_cidr,
                "CIDRNotAvailable: no pod range left for the node"
            );
            return Ok(Held::None);
        };
        let spec = node.spec.get_or_insert_with(Default::default);
        spec.pod_cidr = Some(net.to_string());
        spec.pod_cidrs = Some(vec![net.to_string()]);
        if dry_run {
            return Ok(Held::None);
        }
        used.subnets.insert(net);
        used.next = index + 1;
        Ok(Held::Nodes(used))
    }

    fn free_ip(&self, used: &ServicesInUse) -> Option<u32> {
        let size = self.net.service_size();
        let start = self.net.dynamic_ip_start();
        // Dynamic band first (from the cursor), then the static band.
        let span = size.saturating_sub(1 + start);
        let cursor = used.next_ip.max(start) - start;
        (0..span)
            .map(|i| start + (cursor + i) % span)
            .chain(1..start)
            .find(|o| !used.ips.contains_key(o))
    }

    fn free_port(&self, used: &ServicesInUse, also: &[u16]) -> Option<u16> {
        let start = self.net.dynamic_port_start();
        let end = *self.net.node_ports.end();
        let span = u32::from(end - start) + 1;
        let cursor = u32::from(used.next_port.clamp(start, end) - start);
        (0..span)
            .map(|o| start + u16::try_from((cursor + o) % span).unwrap_or(0))
            .chain(*self.net.node_ports.start()..start)
            .find(|p| !used.ports.contains_key(p) && !also.contains(p))
    }

    /// The cluster IP (as an offset) and node ports a Service holds.
    fn held_by(&self, svc: &Service) -> (Option<u32>, Vec<u16>) {
        let spec = svc.spec.clone().unwrap_or_default();
        let ip = spec
            .cluster_ip
            .as_deref()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
            .filter(|ip| self.net.service_cidr.contains(ip))
            .map(|ip| u32::from(ip) - u32::from(self.net.service_cidr.network()));
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.node_port.and_then(|n| u16::try_from(n).ok()))
            .collect();
        (ip, ports)
    }

    async fn load_services(
        &self,
        store: &Store,
        prev: &ServicesInUse,
    ) -> Result<ServicesInUse, ApiError> {
        let info = ResourceInfo::of::<Service>();
        let all = store.list(&info.prefix(), Default::default()).await?;
        let mut used = ServicesInUse {
            loaded: true,
            next_ip: prev.next_ip,
            next_port: prev.next_port,
            ..Default::default()
        };
        for kv in &all.items {
            let Ok(svc) = serde_json::from_slice::<Service>(&kv.value) else {
                continue;
            };
            let me = owner(&svc);
            let (ips, ports) = self.held_by(&svc);
            if let Some(offset) = ips {
                used.ips.insert(offset, me.clone());
            }
            for p in ports {
                used.ports.insert(p, me.clone());
            }
        }
        Ok(used)
    }

    async fn load_nodes(&self, store: &Store, prev: &NodesInUse) -> Result<NodesInUse, ApiError> {
        let info = ResourceInfo::of::<Node>();
        let all = store.list(&info.prefix(), Default::default()).await?;
        let mut used = NodesInUse {
            loaded: true,
            next: prev.next,
            ..Default::default()
        };
        for kv in &all.items {
            if let Ok(node) = serde_json::from_slice::<Node>(&kv.value)
                && let Some(cidr) = node.spec.and_then(|s| s.pod_cidr)
                && let Ok(net) = cidr.parse()
            {
                used.subnets.insert(net);
            }
        }
        Ok(used)
    }
}

/// A typed copy of an admitted object (the strategy has already decoded it once).
fn typed<K: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Result<K, ApiError> {
    serde_json::from_value(v.clone())
        .map_err(|e| ApiError::internal_with_cause("an admitted object does not decode", &e))
}

/// Reserves what Services and Nodes take from the cluster's address pools: a Service's
/// cluster IPs and node ports (kube-apiserver's Service REST allocators), and the next free pod
/// range of the cluster network for a node without one (kube-controller-manager's node IPAM,
/// done at admission here).
pub(crate) struct AddressPools {
    store: Store,
    alloc: Allocator,
}

impl AddressPools {
    pub(crate) fn new(store: Store, network: Network) -> Self {
        AddressPools {
            store,
            alloc: Allocator::new(network),
        }
    }
}

#[async_trait::async_trait]
impl Reserve for AddressPools {
    fn handles(&self, req: &Request<'_>) -> bool {
        req.is::<Service>() || req.is::<Node>()
    }

    async fn reserve<'a>(
        &'a self,
        req: &Request<'_>,
        obj: &mut serde_json::Value,
    ) -> Result<Option<Reservation<'a>>, ApiError> {
        if req.operation == Operation::Delete {
            return Ok(None);
        }
        let (alloc, store, dry_run) = (&self.alloc, &self.store, req.dry_run);
        let held = if req.is::<Service>() {
            retyped(obj, req.old, async |svc: &mut Service, old| {
                alloc.admit_service(store, svc, old, dry_run).await
            })
            .await?
        } else {
            retyped(obj, req.old, async |node: &mut Node, old| {
                alloc.admit_node(store, node, old, dry_run).await
            })
            .await?
        };
        Ok(held.into_reservation())
    }

    fn released(&self, req: &Request<'_>) {
        if req.operation == Operation::Delete {
            // The next allocation re-reads what is in use.
            let stale = if req.is::<Service>() {
                &self.alloc.services_stale
            } else {
                &self.alloc.nodes_stale
            };
            stale.store(true, Ordering::Release);
        }
    }
}

/// Runs `admit` on `obj` (and its old version) as a `K`, and writes what it changed back.
async fn retyped<'a, K>(
    obj: &mut serde_json::Value,
    old: Option<&serde_json::Value>,
    admit: impl AsyncFnOnce(&mut K, Option<&K>) -> Result<Held<'a>, ApiError>,
) -> Result<Held<'a>, ApiError>
where
    K: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut new: K = typed(obj)?;
    let old = old.map(typed::<K>).transpose()?;
    let held = admit(&mut new, old.as_ref()).await?;
    *obj = serde_json::to_value(&new).expect("typed objects serialize");
    Ok(held)
}

impl<'a> Held<'a> {
    fn into_reservation(self) -> Option<Reservation<'a>> {
        match self {
            Held::None => None,
            held => Some(Reservation::new(held)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_follow_the_keps() {
        let net = Network::default();
        assert_eq!(net.dynamic_ip_start(), 256);
        assert_eq!(net.service_ip(256), Ipv4Addr::new(10, 96, 1, 0));
        assert_eq!(net.dynamic_port_start(), 30000 + 86);
        assert_eq!(net.node_subnets(), 256);
        assert_eq!(
            net.node_subnet(3).map(|n| n.to_string()).as_deref(),
            Some("10.244.3.0/24")
        );
    }

    #[test]
    fn free_values_skip_used_ones_and_wrap() {
        let a = Allocator::new(Network {
            service_cidr: "10.0.0.0/27".parse().expect("cidr"),
            node_ports: 30000..=30031,
            ..Network::default()
        });
        let mut used = ServicesInUse::default();
        // 32 addresses: static band 16, dynamic 16..=30.
        assert_eq!(a.free_ip(&used), Some(16));
        used.ips.insert(16, "x".into());
        used.next_ip = 30;
        assert_eq!(a.free_ip(&used), Some(30));
        for o in 16..31 {
            used.ips.insert(o, "x".into());
        }
        assert_eq!(a.free_ip(&used), Some(1), "falls back to the static band");
        assert_eq!(a.free_port(&used, &[]), Some(30016));
        assert_eq!(a.free_port(&used, &[30016]), Some(30017));
    }
}
