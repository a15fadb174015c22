//! Node-to-node tunnels: how a connection reaches a pod on another node without kernel
//! routes, CNI or root. The calling wasmlet opens a TCP connection to the peer's tunnel port
//! (node address, advertised in the Node's `wasmkube.dev/tunnel-port` annotation) and sends one
//! line naming the cluster token, the caller's virtual address and the pod it wants:
//!
//! ```text
//! WASMKUBE-TUNNEL/1 <token> <from 10.244.1.7:0> <to 10.244.2.5:8080>\n
//! OK\n | ERR <reason>\n
//! <bytes in both directions>
//! ```
//!
//! The far wasmlet routes `to` among its own pods only, connects from its relay address and
//! records the caller's virtual address, so the pod sees the calling pod's IP as its peer.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::net::NodeNet;

/// The annotation carrying a node's tunnel port.
pub(crate) const PORT_ANNOTATION: &str = "wasmkube.dev/tunnel-port";

const MAGIC: &str = "WASMKUBE-TUNNEL/1";
const MAX_LINE: usize = 512;

async fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::with_capacity(64);
    loop {
        let b = s.read_u8().await?;
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "tunnel header too long",
            ));
        }
    }
    String::from_utf8(line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Opens a tunnel to `dest` (a pod on the node listening at `tunnel`).
///
/// # Errors
/// When the peer cannot be reached or refuses.
pub(crate) async fn open(
    tunnel: SocketAddr,
    token: &str,
    from: SocketAddrV4,
    dest: SocketAddrV4,
) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(tunnel).await?;
    s.set_nodelay(true)?;
    s.write_all(format!("{MAGIC} {token} {from} {dest}\n").as_bytes())
        .await?;
    let reply = read_line(&mut s).await?;
    match reply.strip_prefix("ERR ") {
        None if reply == "OK" => Ok(s),
        Some("refused") => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused by the peer node",
        )),
        Some(why) => Err(std::io::Error::other(format!("tunnel: {why}"))),
        None => Err(std::io::Error::other(format!(
            "tunnel: bad reply {reply:?}"
        ))),
    }
}

/// Serves tunnels into this node's pods until `shutdown`.
pub(crate) async fn serve(net: Arc<NodeNet>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let (conn, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        let net = Arc::clone(&net);
        tokio::spawn(async move {
            if let Err(e) = serve_one(&net, conn).await {
                tracing::debug!(error = %e, "tunnel ended");
            }
        });
    }
}

async fn serve_one(net: &Arc<NodeNet>, mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let line = read_line(&mut conn).await?;
    let mut parts = line.split(' ');
    let (Some(MAGIC), Some(token), Some(from), Some(to), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        conn.write_all(b"ERR bad request\n").await?;
        return Ok(());
    };
    if token != net.token {
        conn.write_all(b"ERR unauthorized\n").await?;
        return Ok(());
    }
    let (Ok(from), Ok(to)) = (from.parse::<SocketAddrV4>(), to.parse::<SocketAddrV4>()) else {
        conn.write_all(b"ERR bad address\n").await?;
        return Ok(());
    };
    match net.accept_tunnel(from, to).await {
        Ok(mut pod) => {
            conn.write_all(b"OK\n").await?;
            tokio::io::copy_bidirectional(&mut conn, &mut pod.stream).await?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            conn.write_all(b"ERR refused\n").await?;
        }
        Err(e) => {
            conn.write_all(format!("ERR {}\n", e.kind()).as_bytes())
                .await?;
        }
    }
    Ok(())
}
