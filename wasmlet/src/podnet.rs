//! The pod's network namespace, first cut: `wasi:sockets/tcp` wrapped so a guest's sockets live
//! on its pod IP and nowhere else.
//!
//! Every TCP call goes to wasmtime-wasi's own implementation (`WasiSocketsCtxView`) except:
//! - `start-bind`: `0.0.0.0`, `127.0.0.1` and the pod IP all become the pod IP, so two pods can
//!   listen on the same port and a guest never binds a host-wide address;
//! - `start-connect`: `127.0.0.1` means this pod; the socket is bound to the pod IP first, so
//!   the peer sees the pod's identity; anything that is not a loopback address is refused
//!   inside the wasmlet (`access-denied`) before a packet is sent;
//! - `remote-address`: `invalid-state` on a reset connection becomes `connection-reset`, since
//!   wasi-libc aborts the guest on `invalid-state` (see shared/reference/feasibility.md).
//!
//! The stock `socket_addr_check` stays as a second guard and sees the rewritten address.
//! UDP and name lookup stay off. The networking issue extends this to virtual pod/service IPs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::bindings::sockets::network::{
    self, ErrorCode, IpAddressFamily, IpSocketAddress, Network,
};
use wasmtime_wasi::p2::bindings::sockets::tcp::{self, ShutdownType};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, DynPollable, SocketError, SocketResult, TcpSocket,
};
use wasmtime_wasi::sockets::WasiSocketsCtxView;

/// A pod's addresses as its sockets see them.
#[derive(Debug, Clone, Copy)]
pub struct PodNet {
    /// The pod IP (a loopback address on this node).
    pub ip: Ipv4Addr,
}

impl PodNet {
    /// Where a guest's bind really goes.
    pub fn bind_address(&self, requested: SocketAddr) -> Result<SocketAddr, ErrorCode> {
        match requested.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() || v4 == Ipv4Addr::LOCALHOST || v4 == self.ip => {
                Ok(SocketAddr::new(IpAddr::V4(self.ip), requested.port()))
            }
            _ => Err(ErrorCode::AddressNotBindable),
        }
    }

    /// Where a guest's connect really goes.
    pub fn connect_address(&self, requested: SocketAddr) -> Result<SocketAddr, ErrorCode> {
        match requested.ip() {
            IpAddr::V4(v4) if v4 == Ipv4Addr::LOCALHOST => {
                Ok(SocketAddr::new(IpAddr::V4(self.ip), requested.port()))
            }
            // Pod IPs are loopback addresses; nothing else is reachable from a pod yet.
            IpAddr::V4(v4) if v4.is_loopback() => Ok(requested),
            _ => Err(ErrorCode::AccessDenied),
        }
    }
}

/// The linker marker for the wrapped interfaces.
pub struct PodSockets;

impl HasData for PodSockets {
    type Data<'a> = PodSocketsView<'a>;
}

/// The stock socket context plus this pod's addresses.
pub struct PodSocketsView<'a> {
    inner: WasiSocketsCtxView<'a>,
    pod: Option<PodNet>,
}

/// Store data that has a pod network.
pub trait PodNetView: WasiView {
    /// The pod's network, if it has one.
    fn pod_net(&self) -> Option<PodNet>;
}

/// Shadows the stock `wasi:sockets/tcp` and `network` in `linker` with the pod-aware ones.
///
/// # Errors
/// When linking fails.
pub fn add_to_linker<T: PodNetView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    fn view<T: PodNetView>(state: &mut T) -> PodSocketsView<'_> {
        let pod = state.pod_net();
        let ctx = state.ctx();
        PodSocketsView {
            inner: WasiSocketsCtxView {
                ctx: ctx.ctx.sockets(),
                table: ctx.table,
            },
            pod,
        }
    }
    tcp::add_to_linker::<T, PodSockets>(linker, view::<T>)?;
    network::add_to_linker::<T, PodSockets>(linker, &Default::default(), view::<T>)?;
    linker.allow_shadowing(false);
    Ok(())
}

fn denied(code: ErrorCode) -> SocketError {
    code.into()
}

impl PodSocketsView<'_> {
    fn pod(&self) -> SocketResult<PodNet> {
        self.pod.ok_or_else(|| denied(ErrorCode::AccessDenied))
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
        let addr = self
            .pod()?
            .bind_address(local_address.into())
            .map_err(denied)?;
        self.inner.start_bind(this, network, addr.into()).await
    }

    fn finish_bind(&mut self, this: Resource<TcpSocket>) -> SocketResult<()> {
        self.inner.finish_bind(this)
    }

    fn start_connect(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<Network>,
        remote_address: IpSocketAddress,
    ) -> SocketResult<()> {
        let pod = self.pod()?;
        let addr = pod.connect_address(remote_address.into()).map_err(denied)?;
        // Connect from the pod IP, so the peer sees who is calling.
        if self
            .inner
            .local_address(Resource::new_borrow(this.rep()))
            .is_err()
        {
            let from = SocketAddr::new(IpAddr::V4(pod.ip), 0);
            let bind = self.inner.start_bind(
                Resource::new_borrow(this.rep()),
                Resource::new_borrow(network.rep()),
                from.into(),
            );
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
            self.inner.finish_bind(Resource::new_borrow(this.rep()))?;
        }
        self.inner.start_connect(this, network, addr.into())
    }

    fn finish_connect(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> SocketResult<(Resource<DynInputStream>, Resource<DynOutputStream>)> {
        self.inner.finish_connect(this)
    }

    async fn start_listen(&mut self, this: Resource<TcpSocket>) -> SocketResult<()> {
        self.inner.start_listen(this).await
    }

    fn finish_listen(&mut self, this: Resource<TcpSocket>) -> SocketResult<()> {
        self.inner.finish_listen(this)
    }

    fn accept(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> SocketResult<(
        Resource<TcpSocket>,
        Resource<DynInputStream>,
        Resource<DynOutputStream>,
    )> {
        self.inner.accept(this)
    }

    fn local_address(&mut self, this: Resource<TcpSocket>) -> SocketResult<IpSocketAddress> {
        self.inner.local_address(this)
    }

    fn remote_address(&mut self, this: Resource<TcpSocket>) -> SocketResult<IpSocketAddress> {
        self.inner
            .remote_address(this)
            .map_err(|e| match e.downcast_ref() {
                Some(ErrorCode::InvalidState) => denied(ErrorCode::ConnectionReset),
                _ => e,
            })
    }

    fn is_listening(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<bool> {
        self.inner.is_listening(this)
    }

    fn address_family(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<IpAddressFamily> {
        self.inner.address_family(this)
    }

    fn set_listen_backlog_size(
        &mut self,
        this: Resource<TcpSocket>,
        value: u64,
    ) -> SocketResult<()> {
        self.inner.set_listen_backlog_size(this, value)
    }

    fn keep_alive_enabled(&mut self, this: Resource<TcpSocket>) -> SocketResult<bool> {
        self.inner.keep_alive_enabled(this)
    }

    fn set_keep_alive_enabled(
        &mut self,
        this: Resource<TcpSocket>,
        value: bool,
    ) -> SocketResult<()> {
        self.inner.set_keep_alive_enabled(this, value)
    }

    fn keep_alive_idle_time(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64> {
        self.inner.keep_alive_idle_time(this)
    }

    fn set_keep_alive_idle_time(
        &mut self,
        this: Resource<TcpSocket>,
        value: u64,
    ) -> SocketResult<()> {
        self.inner.set_keep_alive_idle_time(this, value)
    }

    fn keep_alive_interval(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64> {
        self.inner.keep_alive_interval(this)
    }

    fn set_keep_alive_interval(
        &mut self,
        this: Resource<TcpSocket>,
        value: u64,
    ) -> SocketResult<()> {
        self.inner.set_keep_alive_interval(this, value)
    }

    fn keep_alive_count(&mut self, this: Resource<TcpSocket>) -> SocketResult<u32> {
        self.inner.keep_alive_count(this)
    }

    fn set_keep_alive_count(&mut self, this: Resource<TcpSocket>, value: u32) -> SocketResult<()> {
        self.inner.set_keep_alive_count(this, value)
    }

    fn hop_limit(&mut self, this: Resource<TcpSocket>) -> SocketResult<u8> {
        self.inner.hop_limit(this)
    }

    fn set_hop_limit(&mut self, this: Resource<TcpSocket>, value: u8) -> SocketResult<()> {
        self.inner.set_hop_limit(this, value)
    }

    fn receive_buffer_size(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64> {
        self.inner.receive_buffer_size(this)
    }

    fn set_receive_buffer_size(
        &mut self,
        this: Resource<TcpSocket>,
        value: u64,
    ) -> SocketResult<()> {
        self.inner.set_receive_buffer_size(this, value)
    }

    fn send_buffer_size(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64> {
        self.inner.send_buffer_size(this)
    }

    fn set_send_buffer_size(&mut self, this: Resource<TcpSocket>, value: u64) -> SocketResult<()> {
        self.inner.set_send_buffer_size(this, value)
    }

    fn subscribe(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<Resource<DynPollable>> {
        self.inner.subscribe(this)
    }

    fn shutdown(
        &mut self,
        this: Resource<TcpSocket>,
        shutdown_type: ShutdownType,
    ) -> SocketResult<()> {
        self.inner.shutdown(this, shutdown_type)
    }

    fn drop(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<()> {
        tcp::HostTcpSocket::drop(&mut self.inner, this)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodNet {
        PodNet {
            ip: Ipv4Addr::new(127, 77, 0, 5),
        }
    }

    #[test]
    fn binds_land_on_the_pod_ip() {
        let p = pod();
        for requested in ["0.0.0.0:8080", "127.0.0.1:8080", "127.77.0.5:8080"] {
            assert_eq!(
                p.bind_address(requested.parse().expect("addr")),
                Ok("127.77.0.5:8080".parse().expect("addr"))
            );
        }
        assert_eq!(
            p.bind_address("127.77.0.6:80".parse().expect("addr")),
            Err(ErrorCode::AddressNotBindable)
        );
        assert_eq!(
            p.bind_address("[::]:80".parse().expect("addr")),
            Err(ErrorCode::AddressNotBindable)
        );
    }

    #[test]
    fn connects_reach_loopback_pods_only() {
        let p = pod();
        assert_eq!(
            p.connect_address("127.0.0.1:7".parse().expect("addr")),
            Ok("127.77.0.5:7".parse().expect("addr"))
        );
        assert_eq!(
            p.connect_address("127.77.0.9:7".parse().expect("addr")),
            Ok("127.77.0.9:7".parse().expect("addr"))
        );
        for outside in ["10.0.0.1:80", "192.168.1.1:80", "8.8.8.8:53", "[::1]:80"] {
            assert_eq!(
                p.connect_address(outside.parse().expect("addr")),
                Err(ErrorCode::AccessDenied),
                "{outside}"
            );
        }
    }
}
