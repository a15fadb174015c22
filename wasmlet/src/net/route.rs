//! Where a connection goes: a pod here, a pod on another node (through the tunnel), a
//! Service's endpoint (balanced), a NodePort's; and whether network policy admits it.

use super::*;

impl NodeNet {
    /// Routes a connection from the pod with virtual IP `from` (or from the node, `None`)
    /// to `dest`.
    ///
    /// # Errors
    /// [`Refused`] when the destination is not reachable.
    ///
    /// A pod's connection must be allowed by NetworkPolicy (the source pod's egress rules, the
    /// destination pod's ingress rules) to its endpoint — after a Service resolves, on the port
    /// the pod listens on. Connections the node makes (`from` none: probes, port forwarding,
    /// NodePorts, hostPorts, the Ingress) are not subject to it: Kubernetes always allows
    /// traffic between a pod and its node.
    pub fn route(&self, from: Option<Ipv4Addr>, dest: SocketAddrV4) -> Result<Route, Refused> {
        let target = match self.resolve_service(from, dest) {
            Err(Refused::Refused) => {
                return self
                    .holding_cluster_ip(dest)
                    .map(|(namespace, name)| Route::Held { namespace, name })
                    .ok_or(Refused::Refused);
            }
            other => other?,
        };
        self.routed.fetch_add(1, Ordering::Relaxed);
        if target.is_some() && from.is_some() {
            crate::metrics::connection("service");
        }
        let (endpoint, api) = target.unwrap_or((dest, false));
        if let Some(src) = from {
            self.admit(src, endpoint)?;
        }
        if api {
            Ok(Route::Host(endpoint))
        } else {
            self.route_pod(from, endpoint)
        }
    }

    /// Refuses (counting it) a connection from `src` to `dest` that NetworkPolicy does not
    /// allow; a pod's connection to itself always is.
    pub(crate) fn admit(&self, src: Ipv4Addr, dest: SocketAddrV4) -> Result<(), Refused> {
        if src == *dest.ip() {
            return Ok(());
        }
        let allowed = self.policies.read().expect("net lock").allows(
            src,
            *dest.ip(),
            dest.port(),
            Protocol::Tcp,
        );
        if allowed {
            Ok(())
        } else {
            self.refused_by_policy.fetch_add(1, Ordering::Relaxed);
            crate::metrics::refused();
            Err(Refused::Refused)
        }
    }

    /// A Service IP:port becomes one of its ready endpoints, and whether that is an API
    /// server (the `default/kubernetes` Service, whose endpoints the API servers write
    /// themselves, lists host addresses rather than pods); `Ok(None)` if `dest` is no Service.
    pub(crate) fn resolve_service(
        &self,
        from: Option<Ipv4Addr>,
        dest: SocketAddrV4,
    ) -> Result<Option<(SocketAddrV4, bool)>, Refused> {
        let index = self.services.read().expect("net lock");
        let Some((svc, port)) = index.by_cluster_ip(*dest.ip(), dest.port(), Protocol::Tcp) else {
            if index.is_cluster_ip(*dest.ip()) {
                return Err(Refused::Refused);
            }
            return Ok(None);
        };
        let api = svc.namespace == "default" && svc.name == "kubernetes";
        self.balance(&index, svc, port, from.unwrap_or(self.node_ip))
            .map(|endpoint| Some((endpoint, api)))
    }

    /// The endpoint a connection to node port `port` from `client` goes to.
    ///
    /// # Errors
    /// [`Refused::Refused`] when the port is not (or no longer) a Service's, or it has no
    /// ready endpoint.
    pub fn resolve_node_port(&self, port: u16, client: Ipv4Addr) -> Result<SocketAddrV4, Refused> {
        let index = self.services.read().expect("net lock");
        let (svc, sp) = index
            .by_node_port(port, Protocol::Tcp)
            .ok_or(Refused::Refused)?;
        self.balance(&index, svc, sp, client)
    }

    /// The endpoint a connection to Service `namespace/name` port `port` (by name or number)
    /// goes to, for the Ingress.
    ///
    /// # Errors
    /// [`Refused::Refused`] when there is no such Service port or no ready endpoint.
    pub fn resolve_service_port(
        &self,
        namespace: &str,
        name: &str,
        port: &wasmkube_api::services::PortRef,
        client: Ipv4Addr,
    ) -> Result<SocketAddrV4, Refused> {
        let index = self.services.read().expect("net lock");
        let svc = index.service(namespace, name).ok_or(Refused::Refused)?;
        let sp = svc
            .ports
            .iter()
            .find(|p| port.matches(p))
            .ok_or(Refused::Refused)?;
        self.balance(&index, svc, sp, client)
    }

    pub(crate) fn balance(
        &self,
        index: &ServiceIndex,
        svc: &wasmkube_api::services::ServiceEntry,
        port: &wasmkube_api::services::ServicePort,
        client: Ipv4Addr,
    ) -> Result<SocketAddrV4, Refused> {
        let ready = self.ready_backends(index, svc, port);
        self.pick(
            (svc.namespace.clone(), svc.name.clone(), port.name.clone()),
            svc.affinity_seconds,
            client,
            &ready,
        )
        .ok_or(Refused::Refused)
    }

    /// Chooses a backend of a Service port: the client's sticky one while it lives and is
    /// ready (`sessionAffinity: ClientIP`), else the next in round-robin order.
    pub fn pick(
        &self,
        key: PortKey,
        affinity_seconds: Option<u32>,
        client: Ipv4Addr,
        ready: &[SocketAddrV4],
    ) -> Option<SocketAddrV4> {
        if ready.is_empty() {
            return None;
        }
        let now = Instant::now();
        if let Some(secs) = affinity_seconds {
            let mut sticky = self.affinity.lock().expect("net lock");
            let k = (key.clone(), client);
            if let Some((addr, at)) = sticky.get(&k)
                && now.duration_since(*at) < Duration::from_secs(u64::from(secs))
                && ready.contains(addr)
            {
                let addr = *addr;
                sticky.insert(k, (addr, now));
                return Some(addr);
            }
            let chosen = self.next_round_robin(key, ready);
            sticky.insert(k, (chosen, now));
            return Some(chosen);
        }
        Some(self.next_round_robin(key, ready))
    }

    pub(crate) fn next_round_robin(&self, key: PortKey, ready: &[SocketAddrV4]) -> SocketAddrV4 {
        let mut rr = self.round_robin.lock().expect("net lock");
        let n = rr.entry(key).or_insert(0);
        let chosen = ready[*n % ready.len()];
        *n = n.wrapping_add(1);
        chosen
    }

    /// Routes to a pod IP.
    pub(crate) fn route_pod(
        &self,
        from: Option<Ipv4Addr>,
        dest: SocketAddrV4,
    ) -> Result<Route, Refused> {
        if let Some(backing) = self.local.read().expect("net lock").get(dest.ip()) {
            let real = SocketAddrV4::new(*backing, dest.port());
            if from != Some(*dest.ip()) && self.local_only.lock().expect("net lock").contains(&real)
            {
                return Err(Refused::Refused);
            }
            return Ok(Route::Local(real));
        }
        let peers = self.peers.read().expect("net lock");
        if let Some(p) = peers.iter().find(|p| p.cidr.contains(dest.ip())) {
            return Ok(Route::Remote {
                node: Arc::from(p.node.as_str()),
                tunnel: p.tunnel,
                pod: dest,
            });
        }
        Err(Refused::Denied)
    }
}
