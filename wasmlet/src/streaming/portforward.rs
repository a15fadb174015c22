//! `kubectl port-forward` on the node: connections from the client to a pod's ports, made
//! from the node through the pod network (so they reach exactly what another pod would at
//! `PODIP:port`, nothing on the host).
//!
//! Three framings, as the kubelet serves them:
//! - SPDY/3.1 ([`crate::streaming::spdy`]): per forwarded connection the client opens an `error` and a
//!   `data` stream (headers `streamtype`, `port`, `requestid`); data flows as DATA frames, a
//!   failure is text on the error stream. kubectl up to 1.30 speaks it right after an HTTP
//!   upgrade; kubectl 1.31+ tunnels the same bytes through a WebSocket
//!   (`SPDY/3.1+portforward.k8s.io`). Both end up in [`serve_spdy`].
//! - The WebSocket channel protocol (`v4.channel.k8s.io`, kube-rs): the ports come in the
//!   query; port `i` uses channel `2i` for data and `2i+1` for errors, each opened by a frame
//!   carrying the port (little-endian); one connection per port ([`serve_channels`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::net::NodeNet;
use crate::streaming::spdy::{self, Codec, Frame};

/// The WebSocket subprotocol kubectl 1.31+ tunnels SPDY in.
pub(crate) const SPDY_OVER_WEBSOCKET: &str = "SPDY/3.1+portforward.k8s.io";
/// The stream protocol negotiated by a plain SPDY upgrade.
pub(crate) const STREAM_PROTOCOL: &str = "portforward.k8s.io";
/// The channel protocols kube-rs offers.
pub(crate) const CHANNEL_PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "portforward.k8s.io"];

/// How much is read from a pod connection per frame.
const CHUNK: usize = 32 * 1024;

/// The pod connections go to.
#[derive(Clone)]
pub(crate) struct Target {
    /// The node's pod network.
    pub net: Arc<NodeNet>,
    /// The pod's IP (the node's address for `hostNetwork` pods).
    pub pod_ip: Ipv4Addr,
    /// `namespace/name`, for error messages.
    pub pod: String,
}

impl Target {
    async fn connect(&self, port: u16) -> Result<crate::net::Conn, String> {
        self.net
            .dial_from_node(SocketAddrV4::new(self.pod_ip, port))
            .await
            .map_err(|e| {
                format!(
                    "error forwarding port {port} to pod {}: failed to connect to {}:{port}: {e}",
                    self.pod, self.pod_ip
                )
            })
    }
}

/// A forwarded connection's streams, by the client's request id.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
}

/// Frames queued towards the client, and chunks towards one pod connection. When full the
/// sender waits: a slow client slows the pod connections' readers, and a pod that does not
/// read holds up its session (no frame is dropped; SPDY here has no flow control).
const FRAMES: usize = 64;

/// Serves a SPDY/3.1 port-forward session on `io` until the client goes away.
pub(crate) async fn serve_spdy<T>(io: T, target: Target)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out, mut frames) = mpsc::channel::<Vec<u8>>(FRAMES);
    let done = CancellationToken::new();
    let writer = {
        let done = done.clone();
        tokio::spawn(async move {
            while let Some(f) = frames.recv().await {
                if wr.write_all(&f).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
            }
            done.cancel();
        })
    };
    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(CHUNK * 2);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Data streams: where the client's bytes for the pod go (`None`: the client's FIN).
    let mut to_pod: HashMap<u32, (mpsc::Sender<Option<Bytes>>, CancellationToken)> = HashMap::new();
    let mut last_stream = 0;
    'session: loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => match frame {
                    Frame::SynStream {
                        stream, headers, ..
                    } => {
                        last_stream = last_stream.max(stream);
                        let _ = out.send(codec.syn_reply(stream)).await;
                        let header = |k: &str| {
                            headers
                                .iter()
                                .find(|(name, _)| name == k)
                                .map(|(_, v)| v.as_str())
                        };
                        let port = header("port").and_then(|p| p.parse::<u16>().ok());
                        match header("streamtype") {
                            Some("error") => {
                                let id = header("requestid")
                                    .map_or_else(|| stream.to_string(), str::to_owned);
                                pairs.entry(id).or_default().error = Some(stream);
                            }
                            Some("data") => {
                                let id = header("requestid").map_or_else(
                                    || stream.saturating_sub(2).to_string(),
                                    str::to_owned,
                                );
                                let error = pairs.remove(&id).and_then(|p| p.error);
                                let (tx, rx) = mpsc::channel(FRAMES);
                                let cancel = done.child_token();
                                to_pod.insert(stream, (tx, cancel.clone()));
                                tokio::spawn(forward_stream(
                                    target.clone(),
                                    port,
                                    stream,
                                    error,
                                    rx,
                                    out.clone(),
                                    cancel,
                                ));
                            }
                            _ => {
                                let _ = out
                                    .send(spdy::rst_stream(stream, spdy::PROTOCOL_ERROR))
                                    .await;
                            }
                        }
                    }
                    Frame::Data { stream, fin, data } => {
                        if let Some((tx, _)) = to_pod.get(&stream) {
                            if !data.is_empty() {
                                let _ = tx.send(Some(data)).await;
                            }
                            if fin {
                                let _ = tx.send(None).await;
                            }
                        }
                    }
                    Frame::RstStream { stream, .. } => {
                        if let Some((_, cancel)) = to_pod.remove(&stream) {
                            cancel.cancel();
                        }
                    }
                    Frame::Ping(id) => {
                        let _ = out.send(spdy::ping(id)).await;
                    }
                    Frame::GoAway => break 'session,
                    Frame::Ignored => {}
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "port-forward session ends");
                    break 'session;
                }
            }
        }
        tokio::select! {
            () = done.cancelled() => break,
            n = rd.read_buf(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
        }
    }
    let _ = out.send(spdy::goaway(last_stream)).await;
    done.cancel();
    drop(out);
    let _ = writer.await;
}

/// One forwarded connection: dials the pod's port and carries bytes both ways as DATA frames
/// on `data`; a failure is written on the `error` stream.
async fn forward_stream(
    target: Target,
    port: Option<u16>,
    data: u32,
    error: Option<u32>,
    mut from_client: mpsc::Receiver<Option<Bytes>>,
    out: mpsc::Sender<Vec<u8>>,
    cancel: CancellationToken,
) {
    let fail = |message: String| {
        let out = out.clone();
        async move {
            if let Some(e) = error {
                let _ = out.send(spdy::data(e, true, message.as_bytes())).await;
            }
            let _ = out.send(spdy::rst_stream(data, spdy::CANCEL)).await;
        }
    };
    let Some(port) = port else {
        fail("a port-forward stream without a valid port header".into()).await;
        return;
    };
    let conn = match target.connect(port).await {
        Ok(c) => c,
        Err(message) => {
            fail(message).await;
            return;
        }
    };
    let (mut pod_rd, mut pod_wr) = tokio::io::split(conn);
    let to_pod = async {
        while let Some(Some(bytes)) = from_client.recv().await {
            if pod_wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = pod_wr.shutdown().await;
    };
    let from_pod = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match pod_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send(spdy::data(data, false, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
        // The pod closed: so do both streams.
        let _ = out.send(spdy::data(data, true, &[])).await;
        if let Some(e) = error {
            let _ = out.send(spdy::data(e, true, &[])).await;
        }
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        ((), ()) = async { tokio::join!(to_pod, from_pod) } => {}
    }
}

/// Turns a WebSocket whose binary messages carry a byte stream (SPDY tunnelled by kubectl
/// 1.31+) into that byte stream.
pub(crate) fn websocket_bytes(ws: WebSocket) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(CHUNK * 2);
    let (mut rd, mut wr) = tokio::io::split(theirs);
    let (mut tx, mut rx) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        }
        super::close_normally(&mut tx).await;
    });
    ours
}

/// Serves the WebSocket channel protocol (kube-rs) for `ports`: one pod connection per port.
pub(crate) async fn serve_channels(ws: WebSocket, ports: Vec<u16>, target: Target) {
    let (mut tx, mut rx) = ws.split();
    let (out, mut frames) = mpsc::channel::<Message>(FRAMES);
    let mut to_pod: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let done = CancellationToken::new();
    for (i, port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = channels(i);
        for ch in [data_ch, err_ch] {
            let mut init = vec![ch];
            init.extend_from_slice(&port.to_le_bytes());
            let _ = out.send(Message::Binary(Bytes::from(init))).await;
        }
        let (ptx, prx) = mpsc::channel(FRAMES);
        to_pod.push(Some(ptx));
        tokio::spawn(forward_channel(
            target.clone(),
            *port,
            data_ch,
            prx,
            out.clone(),
            done.child_token(),
        ));
    }
    drop(out);
    let writer = tokio::spawn(async move {
        while let Some(m) = frames.recv().await {
            if tx.send(m).await.is_err() {
                return;
            }
        }
        // Every port's connection has ended.
        super::close_normally(&mut tx).await;
    });
    while let Some(Ok(msg)) = rx.next().await {
        match msg {
            Message::Binary(b) if b.len() > 1 => {
                let ch = usize::from(b[0]);
                if ch % 2 == 0
                    && let Some(Some(tx)) = to_pod.get(ch / 2)
                {
                    let _ = tx.send(b.slice(1..)).await;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    done.cancel();
    drop(to_pod);
    let _ = writer.await;
}

/// Port `i`'s data and error channels.
fn channels(i: usize) -> (u8, u8) {
    let data = u8::try_from(2 * i).unwrap_or(u8::MAX - 1);
    (data, data + 1)
}

async fn forward_channel(
    target: Target,
    port: u16,
    data_ch: u8,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Message>,
    cancel: CancellationToken,
) {
    let framed = |ch: u8, bytes: &[u8]| {
        let mut v = Vec::with_capacity(bytes.len() + 1);
        v.push(ch);
        v.extend_from_slice(bytes);
        Message::Binary(Bytes::from(v))
    };
    let conn = match target.connect(port).await {
        Ok(c) => c,
        Err(message) => {
            let _ = out.send(framed(data_ch + 1, message.as_bytes())).await;
            return;
        }
    };
    let (mut pod_rd, mut pod_wr) = tokio::io::split(conn);
    let to_pod = async {
        while let Some(bytes) = from_client.recv().await {
            if pod_wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = pod_wr.shutdown().await;
    };
    let from_pod = async {
        let mut buf = vec![0u8; CHUNK];
        while let Ok(n) = pod_rd.read(&mut buf).await {
            if n == 0 || out.send(framed(data_ch, &buf[..n])).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        () = from_pod => {}
        () = to_pod => {}
    }
}
