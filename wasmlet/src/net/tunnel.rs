//! Node-to-node tunnels: how a connection reaches a pod on another node without kernel
//! routes, CNI or root. The calling wasmlet opens a TLS connection to the peer's tunnel port
//! (node address, advertised in the Node's `wasmkube.dev/tunnel-port` annotation). Both sides
//! show their node certificate from the cluster CA: the listener serves only callers in
//! `system:nodes`, and the caller checks that the certificate names the node it meant. Then
//! it sends one line naming its virtual address and the pod it wants:
//!
//! ```text
//! WASMKUBE-TUNNEL/2 <from 10.244.1.7:0> <to 10.244.2.5:8080>\n
//! OK\n | ERR <reason>\n
//! <bytes in both directions>
//! ```
//!
//! The far wasmlet routes `to` among its own pods only, connects from its relay address and
//! records the caller's virtual address, so the pod sees the calling pod's IP as its peer.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::identity::{NODES_GROUP, NodeTls, Peer};
use crate::net::NodeNet;

/// A tunnel, from the calling side.
pub(crate) type Tunnel = tokio_rustls::client::TlsStream<TcpStream>;

/// The annotation carrying a node's tunnel port.
pub(crate) const PORT_ANNOTATION: &str = "wasmkube.dev/tunnel-port";

const MAGIC: &str = "WASMKUBE-TUNNEL/2";
const MAX_LINE: usize = 512;

async fn read_line(s: &mut (impl AsyncRead + Unpin)) -> std::io::Result<String> {
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

/// Opens a tunnel to `dest` (a pod on node `node`, listening at `tunnel`).
///
/// # Errors
/// When the peer cannot be reached, is not `node`, or refuses.
pub(crate) async fn open(
    tls: &NodeTls,
    node: &str,
    tunnel: SocketAddr,
    from: SocketAddrV4,
    dest: SocketAddrV4,
) -> std::io::Result<Tunnel> {
    let name = rustls::pki_types::ServerName::try_from(node.to_owned()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("node name {node:?} is not a DNS name"),
        )
    })?;
    let tcp = TcpStream::connect(tunnel).await?;
    tcp.set_nodelay(true)?;
    let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(&tls.tunnel_client))
        .connect(name, tcp)
        .await?;
    s.write_all(format!("{MAGIC} {from} {dest}\n").as_bytes())
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

/// Serves tunnels into this node's pods until `shutdown`, to other nodes only.
pub(crate) async fn serve(
    net: Arc<NodeNet>,
    tls: Arc<NodeTls>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.tunnel_server));
    loop {
        let (conn, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        let (net, acceptor) = (Arc::clone(&net), acceptor.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_one(&net, &acceptor, conn).await {
                tracing::debug!(error = %e, "tunnel ended");
            }
        });
    }
}

async fn serve_one(
    net: &Arc<NodeNet>,
    acceptor: &tokio_rustls::TlsAcceptor,
    conn: TcpStream,
) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut conn = acceptor.accept(conn).await?;
    let peer = Peer::of(conn.get_ref().1);
    if !peer.as_ref().is_some_and(|p| p.is_in(NODES_GROUP)) {
        tracing::warn!(peer = ?peer.map(|p| p.name), "tunnel refused: the caller is not a node");
        conn.write_all(b"ERR forbidden: not a node\n").await?;
        return Ok(());
    }
    let line = read_line(&mut conn).await?;
    let mut parts = line.split(' ');
    let (Some(MAGIC), Some(from), Some(to), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        conn.write_all(b"ERR bad request\n").await?;
        return Ok(());
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::testing::Ca;
    use std::net::Ipv4Addr;

    fn node_tls(ca: &Ca, cn: &str, org: &str, dns: &str) -> NodeTls {
        NodeTls::new(&ca.credentials(cn, org, dns)).expect("tls")
    }

    #[tokio::test]
    async fn only_nodes_of_the_cluster_should_get_through_a_tunnel() {
        let ca = Ca::new();
        let far = Arc::new(node_tls(&ca, "system:node:far", "system:nodes", "far"));
        let near = node_tls(&ca, "system:node:near", "system:nodes", "near");
        let stranger = node_tls(&ca, "jane", "developers", "jane");
        let other_cluster = node_tls(&Ca::new(), "system:node:near", "system:nodes", "near");

        // The far node runs one pod, an echo server.
        let third = u8::try_from(std::process::id() % 250).expect("fits");
        let net = Arc::new(NodeNet::new(
            ipnet::Ipv4Net::new(Ipv4Addr::new(127, 93, third, 0), 24).expect("cidr"),
            Some("10.244.9.0/24".parse().expect("cidr")),
            Ipv4Addr::LOCALHOST,
            Some(Arc::clone(&far)),
        ));
        let (pod_ip, backing) = net.add_pod(3);
        let pod = TcpListener::bind((backing, 0)).await.expect("pod listens");
        let dest = SocketAddrV4::new(pod_ip, pod.local_addr().expect("addr").port());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = pod.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("tunnel");
        let at = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(net, far, listener, shutdown.clone()));
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 7), 0);

        let mut t = open(&near, "far", at, from, dest)
            .await
            .expect("a node gets through");
        t.write_all(b"ping").await.expect("write");
        let mut answer = [0u8; 4];
        t.read_exact(&mut answer).await.expect("echo");
        assert_eq!(&answer, b"ping");

        let refused = open(&stranger, "far", at, from, dest)
            .await
            .expect_err("a certificate that is not a node's");
        assert!(refused.to_string().contains("not a node"), "{refused}");
        assert!(
            open(&other_cluster, "far", at, from, dest).await.is_err(),
            "another cluster's node"
        );
        assert!(
            open(&near, "elsewhere", at, from, dest).await.is_err(),
            "the far end must be the node the caller meant"
        );
        // Without a certificate the handshake fails.
        let tcp = TcpStream::connect(at).await.expect("connect");
        let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(
            wasmkube_client::tls::AnyServerCertificate::new(Arc::new(
                rustls::crypto::ring::default_provider(),
            )),
        ))
        .with_no_client_auth();
        let handshake = tokio_rustls::TlsConnector::from(Arc::new(anonymous))
            .connect(
                rustls::pki_types::ServerName::try_from("far").expect("name"),
                tcp,
            )
            .await;
        let refused = match handshake {
            Err(_) => true,
            // TLS 1.3 finishes the client's side first; the refusal arrives on the first read.
            Ok(mut s) => {
                let _ = s.write_all(b"WASMKUBE-TUNNEL/2 x y\n").await;
                let mut buf = [0u8; 8];
                !matches!(s.read(&mut buf).await, Ok(n) if n > 0)
            }
        };
        assert!(refused, "a caller without a certificate is refused");
        shutdown.cancel();
    }
}
