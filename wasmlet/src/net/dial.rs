//! Making the connections routes ask for: dialled here or through a peer's tunnel, the
//! relay that carries pods' connections to other nodes, and the counted streams.

use super::*;

/// Serves a node listener (NodePort, hostPort): each connection goes where `target` says for
/// its client address, until `stop`.
pub(crate) async fn forward<F>(
    net: Arc<NodeNet>,
    listener: tokio::net::TcpListener,
    target: F,
    stop: tokio_util::sync::CancellationToken,
) where
    F: Fn(&NodeNet, Ipv4Addr) -> Result<SocketAddrV4, Refused> + Send + Sync + 'static,
{
    let target = Arc::new(target);
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        let (mut conn, peer) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        let client = match peer.ip() {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => net.node_ip,
        };
        let (net, target) = (Arc::clone(&net), Arc::clone(&target));
        crate::metrics::connection("node_port");
        tokio::spawn(async move {
            let _ = conn.set_nodelay(true);
            let dest = match target(&net, client) {
                Ok(d) => d,
                Err(_) => {
                    // A Service at zero pods: hold the connection until a replica is ready.
                    let Some((ns, name)) = net.holding_node_port(port) else {
                        return;
                    };
                    let started = Instant::now();
                    if !net.wait_for_endpoint(&ns, &name, HOLD_TIMEOUT).await {
                        return;
                    }
                    crate::metrics::cold_start(started.elapsed());
                    match target(&net, client) {
                        Ok(d) => d,
                        Err(_) => return,
                    }
                }
            };
            if let Ok(mut far) = net.dial(None, dest).await {
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut far).await;
            }
        });
    }
}

/// A connection the node opened: a TCP stream to a local pod (`Left`), or a tunnel to a pod
/// on another node (`Right`); either reads and writes as a stream.
pub(crate) type Conn = tokio_util::either::Either<TcpStream, Box<crate::net::tunnel::Tunnel>>;

/// A tunnelled connection whose conntrack entry goes away with it.
pub(crate) struct Tracked {
    net: Arc<NodeNet>,
    local: SocketAddr,
}

impl Tracked {
    pub(crate) fn with(self, stream: TcpStream) -> TrackedStream {
        TrackedStream {
            stream,
            _entry: self,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.net
            .inbound
            .lock()
            .expect("net lock")
            .remove(&self.local);
    }
}

/// A stream with its conntrack entry.
pub(crate) struct TrackedStream {
    /// The stream.
    pub(crate) stream: TcpStream,
    _entry: Tracked,
}

pub(crate) fn refused(r: Refused) -> std::io::Error {
    match r {
        Refused::Denied => std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "address is outside the cluster",
        ),
        Refused::Refused => std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "no ready endpoint or listener",
        ),
    }
}

impl NodeNet {
    /// Records that a guest socket bound at `local` is being relayed to `dest`.
    pub fn track_outbound(&self, local: SocketAddr, from: SocketAddrV4, dest: SocketAddrV4) {
        self.outbound
            .lock()
            .expect("net lock")
            .insert(local, (from, dest));
    }

    pub(crate) fn take_outbound(&self, local: SocketAddr) -> Option<(SocketAddrV4, SocketAddrV4)> {
        self.outbound.lock().expect("net lock").remove(&local)
    }

    /// Opens a connection from the pod `from` (virtual, `None` for the node) to the virtual
    /// address `dest`, the way the node does it for NodePorts, Ingress and outgoing HTTP.
    ///
    /// # Errors
    /// When the route is refused or the connection fails.
    pub async fn dial(
        self: &Arc<Self>,
        from: Option<Ipv4Addr>,
        dest: SocketAddrV4,
    ) -> std::io::Result<Conn> {
        let mut route = self.route(from, dest).map_err(refused)?;
        if let Route::Held { namespace, name } = &route {
            let started = Instant::now();
            if !self.wait_for_endpoint(namespace, name, HOLD_TIMEOUT).await {
                return Err(refused(Refused::Refused));
            }
            crate::metrics::cold_start(started.elapsed());
            route = self.route(from, dest).map_err(refused)?;
        }
        self.dial_route(from, route).await
    }

    /// Connects from the node to `dest` — a pod or Service IP through the pod network, or the
    /// node's own address (where `hostNetwork` pods listen) directly — as the kubelet reaches
    /// pods for probes and port forwarding.
    ///
    /// # Errors
    /// When the route is refused or the connection fails.
    pub async fn dial_from_node(self: &Arc<Self>, dest: SocketAddrV4) -> std::io::Result<Conn> {
        if *dest.ip() == self.node_ip {
            let stream = TcpStream::connect(SocketAddr::V4(dest)).await?;
            stream.set_nodelay(true)?;
            return Ok(Conn::Left(stream));
        }
        self.dial(None, dest).await
    }

    /// Opens a routed connection.
    ///
    /// # Errors
    /// When the connection fails.
    pub async fn dial_route(
        self: &Arc<Self>,
        from: Option<Ipv4Addr>,
        route: Route,
    ) -> std::io::Result<Conn> {
        match route {
            Route::Local(real) => {
                let source = from
                    .and_then(|f| self.local.read().expect("net lock").get(&f).copied())
                    .unwrap_or_else(|| self.relay_ip());
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
                let stream = socket.connect(SocketAddr::V4(real)).await?;
                stream.set_nodelay(true)?;
                Ok(Conn::Left(stream))
            }
            Route::Host(api) => {
                let stream = TcpStream::connect(SocketAddr::V4(api)).await?;
                stream.set_nodelay(true)?;
                Ok(Conn::Left(stream))
            }
            Route::Held { .. } => Err(refused(Refused::Refused)),
            Route::Remote { node, tunnel, pod } => {
                let from = SocketAddrV4::new(from.unwrap_or(self.node_ip), 0);
                let tls = self.tls.as_ref().ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "this node has no certificate for tunnels",
                    )
                })?;
                crate::net::tunnel::open(tls, &node, tunnel, from, pod)
                    .await
                    .map(|t| Conn::Right(Box::new(t)))
            }
        }
    }

    /// Serves the tunnel's far end: connects to a local pod for a peer, so that the pod sees
    /// the caller's virtual address.
    ///
    /// # Errors
    /// When `dest` is not a pod here, or the connection fails.
    pub(crate) async fn accept_tunnel(
        self: &Arc<Self>,
        from: SocketAddrV4,
        dest: SocketAddrV4,
    ) -> std::io::Result<TrackedStream> {
        // The sending node checked too; this node's policies decide for its own pods. (A
        // connection another node makes for itself — NodePort, Ingress — is node traffic.)
        let from_pod = self
            .peers
            .read()
            .expect("net lock")
            .iter()
            .any(|p| p.cidr.contains(from.ip()));
        if from_pod {
            self.admit(*from.ip(), dest).map_err(refused)?;
        }
        let Route::Local(real) = self.route_pod(None, dest).map_err(refused)? else {
            return Err(refused(Refused::Denied));
        };
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(self.relay_ip()), 0))?;
        let local = socket.local_addr()?;
        self.inbound.lock().expect("net lock").insert(local, from);
        let tracked = Tracked {
            net: Arc::clone(self),
            local,
        };
        let stream = socket.connect(SocketAddr::V4(real)).await?;
        stream.set_nodelay(true)?;
        Ok(Tracked::with(tracked, stream))
    }

    /// Runs the relay: guest connections to pods on other nodes arrive here (their socket was
    /// pointed at the relay by the pod network) and are carried through a tunnel.
    pub async fn run_relay(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let (mut conn, peer) = tokio::select! {
                () = shutdown.cancelled() => return,
                r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            };
            let Some((from, dest)) = self.take_outbound(peer) else {
                continue;
            };
            let net = Arc::clone(&self);
            tokio::spawn(async move {
                let from_ip = Some(*from.ip());
                match net.dial(from_ip, dest).await {
                    Ok(mut far) => {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut far).await;
                    }
                    Err(e) => tracing::debug!(%dest, error = %e, "relay: no route"),
                }
            });
        }
    }
}
