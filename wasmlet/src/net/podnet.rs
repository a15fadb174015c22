//! The pod's network namespace: `wasi:sockets/tcp` wrapped so a guest's sockets live on its
//! pod IP and reach only what the pod network routes ([`crate::net`]).
//!
//! Every TCP call goes to wasmtime-wasi's own implementation (`WasiSocketsCtxView`) except:
//! - `start-bind`: `0.0.0.0`, `127.0.0.1` and the pod IP all become the pod's loopback address,
//!   so two pods can listen on the same port; a listener bound to `127.0.0.1` is marked
//!   localhost-only and other pods are refused;
//! - `start-connect`: `127.0.0.1` means this pod; pod IPs, Service IPs (load-balanced) and pods
//!   on other nodes (through the relay and a tunnel) are routed by the node; the socket is bound
//!   to the pod's address first, so the peer sees who is calling; anything else is refused
//!   inside the wasmlet (`access-denied`) before a packet is sent;
//! - `local-address` / `remote-address` report virtual addresses: the pod IP, the Service IP
//!   that was dialled, the calling pod's IP; `invalid-state` on a reset connection becomes
//!   `connection-reset`, since wasi-libc aborts the guest on `invalid-state` (see
//!   shared/reference/feasibility.md).
//!
//! The stock `socket_addr_check` stays as a second guard and sees the rewritten address.
//! UDP stays off.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::network::{
    self, ErrorCode, IpAddressFamily, IpSocketAddress, Network,
};
use wasmtime_wasi::p2::bindings::sockets::tcp::{self, HostTcpSocket as _, ShutdownType};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, DynPollable, SocketError, SocketResult, TcpSocket,
};
use wasmtime_wasi::sockets::WasiSocketsCtxView;

use crate::net::{NodeNet, Refused, Route};

/// A pod's addresses: its virtual IP, the loopback address behind it, and the node network.
#[derive(Clone)]
pub struct PodAddress {
    /// The pod IP (virtual).
    pub ip: Ipv4Addr,
    /// The loopback address that backs it.
    pub backing: Ipv4Addr,
    /// The node's network.
    pub net: Arc<NodeNet>,
    /// The pod's namespace (its DNS search path).
    pub namespace: String,
}

impl std::fmt::Debug for PodAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (on {})", self.ip, self.backing)
    }
}

/// A pod's addresses and socket bookkeeping, one per container instance.
pub(crate) struct PodNet {
    /// The pod IP (virtual).
    pub ip: Ipv4Addr,
    /// The loopback address that backs it.
    pub backing: Ipv4Addr,
    /// The node's network.
    pub net: Arc<NodeNet>,
    /// The pod's namespace.
    pub namespace: String,
    sockets: HashMap<u32, SockInfo>,
}

#[derive(Debug, Default)]
struct SockInfo {
    local_only: bool,
    /// The virtual peer a connected socket reports.
    peer: Option<SocketAddr>,
    /// A localhost-only listener's loopback address.
    listening: Option<SocketAddrV4>,
}

impl PodNet {
    /// The network of a pod at `addr`.
    pub(crate) fn new(addr: PodAddress) -> Self {
        PodNet {
            ip: addr.ip,
            backing: addr.backing,
            net: addr.net,
            namespace: addr.namespace,
            sockets: HashMap::new(),
        }
    }

    /// Where a guest's bind really goes, and whether it is localhost-only.
    pub(crate) fn bind_address(
        &self,
        requested: SocketAddr,
    ) -> Result<(SocketAddr, bool), ErrorCode> {
        match requested.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() || v4 == self.ip => Ok((
                SocketAddr::new(IpAddr::V4(self.backing), requested.port()),
                false,
            )),
            IpAddr::V4(v4) if v4 == Ipv4Addr::LOCALHOST => Ok((
                SocketAddr::new(IpAddr::V4(self.backing), requested.port()),
                true,
            )),
            _ => Err(ErrorCode::AddressNotBindable),
        }
    }

    /// Where a guest's connect really goes.
    pub(crate) fn connect_route(&self, requested: SocketAddr) -> Result<Route, ErrorCode> {
        let SocketAddr::V4(v4) = requested else {
            return Err(ErrorCode::AccessDenied);
        };
        let dest = if *v4.ip() == Ipv4Addr::LOCALHOST {
            SocketAddrV4::new(self.ip, v4.port())
        } else {
            v4
        };
        self.net.route(Some(self.ip), dest).map_err(|r| match r {
            Refused::Denied => ErrorCode::AccessDenied,
            Refused::Refused => ErrorCode::ConnectionRefused,
        })
    }
}

impl Drop for PodNet {
    /// An instance that ends (or is killed) drops its store without dropping each socket:
    /// its localhost-only listeners are gone with it.
    fn drop(&mut self) {
        for info in self.sockets.values() {
            if let Some(addr) = info.listening {
                self.net.set_local_only(addr, false);
            }
        }
    }
}

/// The linker marker for the wrapped interfaces.
pub(crate) struct PodSockets;

impl HasData for PodSockets {
    type Data<'a> = PodSocketsView<'a>;
}

/// The stock socket context plus this pod's network.
pub(crate) struct PodSocketsView<'a> {
    /// The stock implementation.
    pub inner: WasiSocketsCtxView<'a>,
    /// The pod's network (none: no sockets).
    pub pod: Option<&'a mut PodNet>,
}

/// Store data that has a pod network.
pub(crate) trait PodNetView: Send {
    /// The stock sockets and the pod network, borrowed together.
    fn pod_sockets(&mut self) -> PodSocketsView<'_>;
}

/// Shadows the stock `wasi:sockets/tcp` and `network` in `linker` with the pod-aware ones.
///
/// # Errors
/// When linking fails.
pub(crate) fn add_to_linker<T: PodNetView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    fn view<T: PodNetView>(state: &mut T) -> PodSocketsView<'_> {
        state.pod_sockets()
    }
    tcp::add_to_linker::<T, PodSockets>(linker, view::<T>)?;
    network::add_to_linker::<T, PodSockets>(linker, &Default::default(), view::<T>)?;
    linker.allow_shadowing(false);
    Ok(())
}

fn denied(code: ErrorCode) -> SocketError {
    code.into()
}

fn borrow<T: 'static>(r: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(r.rep())
}

impl PodSocketsView<'_> {
    fn pod(&mut self) -> SocketResult<&mut PodNet> {
        self.pod
            .as_deref_mut()
            .ok_or_else(|| denied(ErrorCode::AccessDenied))
    }

    /// Binds an unbound socket to the pod's address (any port), so a connect is made from it.
    fn bind_for_connect(
        &mut self,
        this: &Resource<TcpSocket>,
        network: &Resource<Network>,
    ) -> SocketResult<()> {
        if self.inner.local_address(borrow(this)).is_ok() {
            return Ok(());
        }
        let from = SocketAddr::new(IpAddr::V4(self.pod()?.backing), 0);
        let bind = self
            .inner
            .start_bind(borrow(this), borrow(network), from.into());
        // Binding an unbound socket completes immediately (no await point in the stock
        // implementation's bind), so polling it once is enough.
        let polled = {
            let mut bind = std::pin::pin!(bind);
            bind.as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        };
        match polled {
            std::task::Poll::Ready(r) => r?,
            std::task::Poll::Pending => return Err(denied(ErrorCode::WouldBlock)),
        }
        self.inner.finish_bind(borrow(this))
    }
}

impl network::Host for PodSocketsView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.inner, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.inner, err)
    }
}

impl network::HostNetwork for PodSocketsView<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.inner, this)
    }
}

impl tcp::Host for PodSocketsView<'_> {}

impl tcp::HostTcpSocket for PodSocketsView<'_> {
    async fn start_bind(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<Network>,
        local_address: IpSocketAddress,
    ) -> SocketResult<()> {
        let pod = self.pod()?;
        let (addr, local_only) = pod.bind_address(local_address.into()).map_err(denied)?;
        pod.sockets.entry(this.rep()).or_default().local_only = local_only;
        self.inner.start_bind(this, network, addr.into()).await
    }

    fn start_connect(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<Network>,
        remote_address: IpSocketAddress,
    ) -> SocketResult<()> {
        let requested: SocketAddr = remote_address.into();
        let route = self.pod()?.connect_route(requested).map_err(denied)?;
        self.bind_for_connect(&this, &network)?;
        let relayed = match route {
            Route::Local(real) | Route::Host(real) => Err(SocketAddr::V4(real)),
            Route::Remote { pod, .. } => Ok(pod),
            // A Service at zero pods: the relay holds the connection and routes the Service
            // address again once it has a ready endpoint.
            Route::Held { .. } => match requested {
                SocketAddr::V4(v4) => Ok(v4),
                SocketAddr::V6(_) => return Err(denied(ErrorCode::AccessDenied)),
            },
        };
        let target = match relayed {
            Err(direct) => direct,
            Ok(dest) => {
                // Through the relay: it finds the destination by this socket's address.
                let local: SocketAddr = self.inner.local_address(borrow(&this))?.into();
                let pod = self.pod()?;
                let relay = pod
                    .net
                    .relay()
                    .ok_or_else(|| denied(ErrorCode::AccessDenied))?;
                let from = SocketAddrV4::new(pod.ip, local.port());
                pod.net.track_outbound(local, from, dest);
                relay
            }
        };
        self.pod()?.sockets.entry(this.rep()).or_default().peer = Some(requested);
        self.inner.start_connect(this, network, target.into())
    }

    async fn start_listen(&mut self, this: Resource<TcpSocket>) -> SocketResult<()> {
        let rep = this.rep();
        self.inner.start_listen(this).await?;
        let local: SocketAddr = self.inner.local_address(Resource::new_borrow(rep))?.into();
        let pod = self.pod()?;
        let info = pod.sockets.entry(rep).or_default();
        if info.local_only
            && let SocketAddr::V4(v4) = local
        {
            info.listening = Some(v4);
            pod.net.set_local_only(v4, true);
        }
        Ok(())
    }

    fn accept(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> SocketResult<(
        Resource<TcpSocket>,
        Resource<DynInputStream>,
        Resource<DynOutputStream>,
    )> {
        let rep = this.rep();
        let accepted = self.inner.accept(this)?;
        let pod = self.pod()?;
        let local_only = pod.sockets.get(&rep).is_some_and(|i| i.local_only);
        if !local_only {
            return Ok(accepted);
        }
        let backing = pod.backing;
        // A localhost-only listener takes connections from its own pod only (others are
        // refused at connect time; this is the second guard).
        let peer: Option<SocketAddr> = self
            .inner
            .remote_address(borrow(&accepted.0))
            .ok()
            .map(Into::into);
        if peer.is_some_and(|p| p.ip() == IpAddr::V4(backing)) {
            return Ok(accepted);
        }
        let (sock, input, output) = accepted;
        let _ = self.inner.table.delete(input);
        let _ = self.inner.table.delete(output);
        let _ = tcp::HostTcpSocket::drop(&mut self.inner, sock);
        Err(denied(ErrorCode::WouldBlock))
    }

    fn local_address(&mut self, this: Resource<TcpSocket>) -> SocketResult<IpSocketAddress> {
        let real: SocketAddr = self.inner.local_address(this)?.into();
        let pod = self.pod()?;
        Ok(match real {
            SocketAddr::V4(v4) if *v4.ip() == pod.backing => {
                SocketAddr::new(IpAddr::V4(pod.ip), v4.port())
            }
            other => other,
        }
        .into())
    }

    fn remote_address(&mut self, this: Resource<TcpSocket>) -> SocketResult<IpSocketAddress> {
        let rep = this.rep();
        let real: SocketAddr = self
            .inner
            .remote_address(this)
            .map_err(|e| match e.downcast_ref() {
                Some(ErrorCode::InvalidState) => denied(ErrorCode::ConnectionReset),
                _ => e,
            })?
            .into();
        let pod = self.pod()?;
        if let Some(peer) = pod.sockets.get(&rep).and_then(|i| i.peer) {
            return Ok(peer.into());
        }
        Ok(pod.net.virtual_of(real).into())
    }

    // What the pod's network does not change: wasmtime-wasi's own socket behaviour.
    delegate::delegate! {
        to self.inner {
            fn finish_bind(&mut self, this: Resource<TcpSocket>) -> SocketResult<()>;
            fn finish_connect(&mut self, this: Resource<TcpSocket>) -> SocketResult<(Resource<DynInputStream>, Resource<DynOutputStream>)>;
            fn finish_listen(&mut self, this: Resource<TcpSocket>) -> SocketResult<()>;
            fn is_listening(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<bool>;
            fn address_family(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<IpAddressFamily>;
            fn set_listen_backlog_size(&mut self, this: Resource<TcpSocket>, value: u64) -> SocketResult<()>;
            fn keep_alive_enabled(&mut self, this: Resource<TcpSocket>) -> SocketResult<bool>;
            fn set_keep_alive_enabled(&mut self, this: Resource<TcpSocket>, value: bool) -> SocketResult<()>;
            fn keep_alive_idle_time(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64>;
            fn set_keep_alive_idle_time(&mut self, this: Resource<TcpSocket>, value: u64) -> SocketResult<()>;
            fn keep_alive_interval(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64>;
            fn set_keep_alive_interval(&mut self, this: Resource<TcpSocket>, value: u64) -> SocketResult<()>;
            fn keep_alive_count(&mut self, this: Resource<TcpSocket>) -> SocketResult<u32>;
            fn set_keep_alive_count(&mut self, this: Resource<TcpSocket>, value: u32) -> SocketResult<()>;
            fn hop_limit(&mut self, this: Resource<TcpSocket>) -> SocketResult<u8>;
            fn set_hop_limit(&mut self, this: Resource<TcpSocket>, value: u8) -> SocketResult<()>;
            fn receive_buffer_size(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64>;
            fn set_receive_buffer_size(&mut self, this: Resource<TcpSocket>, value: u64) -> SocketResult<()>;
            fn send_buffer_size(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64>;
            fn set_send_buffer_size(&mut self, this: Resource<TcpSocket>, value: u64) -> SocketResult<()>;
            fn subscribe(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<Resource<DynPollable>>;
            fn shutdown(&mut self, this: Resource<TcpSocket>, shutdown_type: ShutdownType) -> SocketResult<()>;
        }
    }

    fn drop(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<()> {
        if let Some(pod) = self.pod.as_deref_mut()
            && let Some(info) = pod.sockets.remove(&this.rep())
            && let Some(addr) = info.listening
        {
            pod.net.set_local_only(addr, false);
        }
        tcp::HostTcpSocket::drop(&mut self.inner, this)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodNet {
        let net = Arc::new(NodeNet::new(
            "127.77.0.0/24".parse().expect("cidr"),
            Some("10.244.0.0/24".parse().expect("cidr")),
            Ipv4Addr::LOCALHOST,
            None,
        ));
        let (ip, backing) = net.add_pod(5);
        net.add_pod(9);
        PodNet::new(PodAddress {
            ip,
            backing,
            net,
            namespace: "default".into(),
        })
    }

    #[test]
    fn binds_land_on_the_pod_address() {
        let p = pod();
        for (requested, local_only) in [
            ("0.0.0.0:8080", false),
            ("127.0.0.1:8080", true),
            ("10.244.0.5:8080", false),
        ] {
            assert_eq!(
                p.bind_address(requested.parse().expect("addr")),
                Ok(("127.77.0.5:8080".parse().expect("addr"), local_only))
            );
        }
        for other in ["10.244.0.6:80", "127.77.0.5:80", "[::]:80"] {
            assert_eq!(
                p.bind_address(other.parse().expect("addr")),
                Err(ErrorCode::AddressNotBindable)
            );
        }
    }

    #[test]
    fn connects_reach_pods_only() {
        let p = pod();
        assert_eq!(
            p.connect_route("127.0.0.1:7".parse().expect("addr")),
            Ok(Route::Local("127.77.0.5:7".parse().expect("addr")))
        );
        assert_eq!(
            p.connect_route("10.244.0.9:7".parse().expect("addr")),
            Ok(Route::Local("127.77.0.9:7".parse().expect("addr")))
        );
        for outside in [
            "10.0.0.1:80",
            "192.168.1.1:80",
            "8.8.8.8:53",
            "[::1]:80",
            "127.77.0.9:7",
        ] {
            assert_eq!(
                p.connect_route(outside.parse().expect("addr")),
                Err(ErrorCode::AccessDenied),
                "{outside}"
            );
        }
    }

    #[test]
    fn a_dropped_instance_takes_its_localhost_only_marks_with_it() {
        let mut p = pod();
        let listener: SocketAddrV4 = "127.77.0.5:9000".parse().expect("addr");
        p.net.set_local_only(listener, true);
        p.sockets.insert(
            1,
            SockInfo {
                local_only: true,
                peer: None,
                listening: Some(listener),
            },
        );
        let net = Arc::clone(&p.net);
        let from_other = || {
            net.route(
                Some(Ipv4Addr::new(10, 244, 0, 9)),
                "10.244.0.5:9000".parse().expect("addr"),
            )
        };
        assert_eq!(from_other(), Err(Refused::Refused));
        drop(p);
        assert!(
            from_other().is_ok(),
            "a restarted container may listen on 0.0.0.0:9000"
        );
    }
}
