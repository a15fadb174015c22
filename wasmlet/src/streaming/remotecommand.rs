//! The kubelet's remote-command protocol, which `exec` and `attach` share, over both of its
//! transports:
//! - WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`; kubectl 1.30+ and kube-rs): binary
//!   messages whose first byte is the channel (0 stdin, 1 stdout, 2 stderr, 3 status,
//!   4 resize; 255 closes the stream named by the second byte, v5 only).
//! - SPDY/3.1 (`v4.channel.k8s.io`; kubectl up to 1.29, and later ones falling back): the
//!   client opens one stream per channel, named by its `streamType` header (`error`, `stdin`,
//!   `stdout`, `stderr`, `resize`), and the session starts once every expected stream is open.
//!
//! A session's handler sees neither: it reads [`FromClient`] and writes [`ToClient`], ending
//! with one `metav1.Status` (on channel 3, or the `error` stream), after which the transport
//! closes every stream.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::streaming::spdy::{self, Codec, Frame};
use crate::streaming::text;

/// The WebSocket subprotocols served, preferred first: kubectl offers only v5; kube-rs offers
/// v5 and v4 (v4 has no way to close stdin).
pub(crate) const WEBSOCKET_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The stream protocol of a SPDY session (the one whose error stream carries a `Status`).
pub(crate) const SPDY_PROTOCOL: &str = "v4.channel.k8s.io";

/// How long a SPDY client has to open the streams it asked for (the kubelet's default
/// stream-creation timeout).
const STREAM_CREATION: Duration = Duration::from_secs(30);

/// Messages queued each way; a full queue slows the sender (no message is dropped).
const QUEUE: usize = 64;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const CLOSE: u8 = 255;

/// What the caller asked for (`PodExecOptions`, `PodAttachOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Options {
    /// `command` (repeated; exec only), the new instance's `argv`.
    pub command: Vec<String>,
    /// `stdin`.
    pub stdin: bool,
    /// `stdout`.
    pub stdout: bool,
    /// `stderr`.
    pub stderr: bool,
    /// `tty`: there is no terminal here, so stderr is merged into stdout.
    pub tty: bool,
}

impl Options {
    /// Reads a query string.
    pub(crate) fn from_query(query: Option<&str>) -> Self {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query.unwrap_or_default()).unwrap_or_default();
        let flag = |k: &str| {
            pairs
                .iter()
                .any(|(key, v)| key == k && (v == "true" || v == "1"))
        };
        Self {
            command: pairs
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        }
    }

    /// Whether the client reads a separate stderr stream.
    fn separate_stderr(&self) -> bool {
        self.stderr && !self.tty
    }
}

/// What the handler sends the client.
#[derive(Debug)]
pub(crate) enum ToClient {
    /// Bytes on stdout.
    Stdout(Bytes),
    /// Bytes on stderr (stdout under a tty).
    Stderr(Bytes),
    /// The session's end: this `metav1.Status`, then every stream closes.
    Status(Value),
}

/// What the client sends the handler; the input channel closing means the client is gone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FromClient {
    /// Bytes for stdin.
    Stdin(Bytes),
    /// The client's stdin ended.
    StdinEnd,
}

/// A session as the handler sees it.
pub(crate) struct Session {
    /// From the client (closed: the client went away).
    pub input: mpsc::Receiver<FromClient>,
    /// To the client.
    pub output: mpsc::Sender<ToClient>,
}

impl Session {
    fn pair() -> (Self, mpsc::Sender<FromClient>, mpsc::Receiver<ToClient>) {
        let (in_tx, input) = mpsc::channel(QUEUE);
        let (output, out_rx) = mpsc::channel(QUEUE);
        (Self { input, output }, in_tx, out_rx)
    }

    /// Ends the session with `status`.
    pub(crate) async fn finish(&self, status: Value) {
        let _ = self.output.send(ToClient::Status(status)).await;
    }
}

/// Whether one of `headers`' `X-Stream-Protocol-Version` values offers `protocol`.
pub(crate) fn offers(headers: &HeaderMap, protocol: &str) -> bool {
    headers
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == protocol))
}

/// The upgrade a request asks for, lower-cased (`websocket`, `spdy/3.1`).
pub(crate) fn upgrade_of(headers: &HeaderMap) -> String {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Accepts a SPDY/3.1 upgrade negotiating `protocol` and hands the upgraded connection to
/// `serve`; 403 naming the protocol when the client offers another, as the kubelet answers.
pub(crate) fn accept_spdy<F, Fut>(
    req: axum::extract::Request,
    protocol: &'static str,
    serve: F,
) -> Response
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if !offers(req.headers(), protocol) {
        let mut resp = text(
            StatusCode::FORBIDDEN,
            format!("a SPDY/3.1 stream needs the stream protocol {protocol}"),
        );
        resp.headers_mut().insert(
            "x-accepted-stream-protocol-versions",
            header::HeaderValue::from_static(protocol),
        );
        return resp;
    }
    let mut req = req;
    let upgraded = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(io) = upgraded.await {
            serve(TokioIo::new(io)).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("x-stream-protocol-version", protocol)
        .body(Body::empty())
        .expect("static headers are valid")
}

/// Accepts a remote-command upgrade (WebSocket or SPDY/3.1) for `opts` and runs `serve` on the
/// session once the connection is upgraded.
pub(crate) async fn accept<F, Fut>(req: axum::extract::Request, opts: Options, serve: F) -> Response
where
    F: FnOnce(Session) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match upgrade_of(req.headers()).as_str() {
        "websocket" => {
            let (mut parts, _) = req.into_parts();
            let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
                Ok(ws) => ws.protocols(WEBSOCKET_PROTOCOLS),
                Err(e) => return e.into_response(),
            };
            if ws.selected_protocol().is_none() {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "a remote command needs one of the WebSocket protocols {}",
                        WEBSOCKET_PROTOCOLS.join(", ")
                    ),
                );
            }
            ws.on_upgrade(move |socket| serve(over_websocket(socket, &opts)))
        }
        "spdy/3.1" => accept_spdy(req, SPDY_PROTOCOL, move |io| serve(over_spdy(io, opts))),
        _ => text(
            StatusCode::BAD_REQUEST,
            "a remote command needs a WebSocket or SPDY/3.1 upgrade".into(),
        ),
    }
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// A session on a WebSocket.
pub(crate) fn over_websocket(ws: WebSocket, opts: &Options) -> Session {
    let (session, to_handler, mut from_handler) = Session::pair();
    let (mut tx, mut rx) = ws.split();
    // Real servers open with an empty frame on the first stream the client expects.
    let first = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        STATUS
    };
    let stdin = opts.stdin;
    tokio::spawn(async move {
        let writer = async move {
            if tx.send(frame(first, &[])).await.is_err() {
                return;
            }
            while let Some(msg) = from_handler.recv().await {
                let (channel, data) = match msg {
                    ToClient::Stdout(b) => (STDOUT, b),
                    ToClient::Stderr(b) => (STDERR, b),
                    ToClient::Status(status) => {
                        let body = serde_json::to_vec(&status).expect("a status serializes");
                        let _ = tx.send(frame(STATUS, &body)).await;
                        super::close_normally(&mut tx).await;
                        return;
                    }
                };
                if tx.send(frame(channel, &data)).await.is_err() {
                    return;
                }
            }
        };
        let reader = async move {
            while let Some(Ok(msg)) = rx.next().await {
                let data = match msg {
                    Message::Binary(data) => data,
                    Message::Close(_) => break,
                    _ => continue,
                };
                let sent = match (data.first(), data.get(1)) {
                    (Some(&STDIN), _) if stdin => {
                        to_handler.send(FromClient::Stdin(data.slice(1..))).await
                    }
                    (Some(&CLOSE), Some(&STDIN)) => to_handler.send(FromClient::StdinEnd).await,
                    // Resize (no terminal here) and anything unknown.
                    _ => Ok(()),
                };
                if sent.is_err() {
                    break;
                }
            }
            // Dropping `to_handler` tells the handler the client is gone.
        };
        // The session ends when the handler has sent its status, or the client went away.
        tokio::select! {
            () = writer => {}
            () = reader => {}
        }
    });
    session
}

/// The streams of a SPDY session, by the ids the client gave them.
#[derive(Debug, Default)]
struct Streams {
    error: Option<u32>,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

impl Streams {
    /// Records a new stream; false for an unknown stream type.
    fn open(&mut self, kind: &str, id: u32) -> bool {
        let slot = match kind {
            "error" => &mut self.error,
            "stdin" => &mut self.stdin,
            "stdout" => &mut self.stdout,
            "stderr" => &mut self.stderr,
            "resize" => &mut self.resize,
            _ => return false,
        };
        *slot = Some(id);
        true
    }

    /// Whether every stream the client must open for `opts` is open (as the kubelet expects:
    /// the error stream always, resize under a tty).
    fn complete(&self, opts: &Options) -> bool {
        self.error.is_some()
            && (!opts.stdin || self.stdin.is_some())
            && (!opts.stdout || self.stdout.is_some())
            && (!opts.separate_stderr() || self.stderr.is_some())
            && (!opts.tty || self.resize.is_some())
    }
}

/// A session on a SPDY/3.1 connection.
pub(crate) fn over_spdy<T>(io: T, opts: Options) -> Session
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (session, to_handler, from_handler) = Session::pair();
    tokio::spawn(spdy_session(io, opts, to_handler, from_handler));
    session
}

async fn spdy_session<T>(
    io: T,
    opts: Options,
    to_handler: mpsc::Sender<FromClient>,
    mut from_handler: mpsc::Receiver<ToClient>,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut streams = Streams::default();
    let mut last = 0;
    let mut to_handler = Some(to_handler);
    // Stdin not yet taken by the handler: while any waits, the client is not read (so its
    // TCP window slows it) but output keeps flowing, so a guest not reading cannot deadlock.
    let mut pending: VecDeque<FromClient> = VecDeque::new();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION;
    let mut ready = false;
    loop {
        // Whole frames first.
        while pending.is_empty() {
            let frame = match codec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "remote-command session ends");
                    return;
                }
            };
            match frame {
                Frame::SynStream {
                    stream, headers, ..
                } => {
                    last = last.max(stream);
                    let kind = headers
                        .iter()
                        .find(|(k, _)| k == "streamtype")
                        .map(|(_, v)| v.as_str())
                        .unwrap_or_default();
                    let reply = if streams.open(kind, stream) {
                        codec.syn_reply(stream)
                    } else {
                        spdy::rst_stream(stream, spdy::PROTOCOL_ERROR)
                    };
                    if wr.write_all(&reply).await.is_err() {
                        return;
                    }
                }
                Frame::Data { stream, fin, data } if Some(stream) == streams.stdin => {
                    if opts.stdin && !data.is_empty() {
                        pending.push_back(FromClient::Stdin(data));
                    }
                    if fin {
                        pending.push_back(FromClient::StdinEnd);
                    }
                }
                Frame::Ping(id) => {
                    if wr.write_all(&spdy::ping(id)).await.is_err() {
                        return;
                    }
                }
                Frame::GoAway => to_handler = None,
                Frame::RstStream { stream, .. } if Some(stream) == streams.error => {
                    to_handler = None;
                }
                // Resize messages (no terminal here), and the rest.
                Frame::Data { .. } | Frame::RstStream { .. } | Frame::Ignored => {}
            }
        }
        let Some(tx) = &to_handler else {
            // The client is gone: dropping the sender tells the handler.
            return;
        };
        ready = ready || streams.complete(&opts);
        tokio::select! {
            permit = tx.reserve(), if !pending.is_empty() => match permit {
                Ok(permit) => permit.send(pending.pop_front().expect("guarded")),
                // The handler is done reading.
                Err(_) => pending.clear(),
            },
            n = rd.read_buf(&mut buf), if pending.is_empty() => match n {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            msg = from_handler.recv(), if ready => {
                let Some(msg) = msg else { return };
                let frame = match msg {
                    ToClient::Stdout(b) => streams.stdout.map(|s| spdy::data(s, false, &b)),
                    ToClient::Stderr(b) => streams
                        .stderr
                        .or(streams.stdout.filter(|_| opts.tty))
                        .map(|s| spdy::data(s, false, &b)),
                    ToClient::Status(status) => {
                        let body = serde_json::to_vec(&status).expect("a status serializes");
                        let mut end = Vec::new();
                        if let Some(e) = streams.error {
                            end.extend(spdy::data(e, true, &body));
                        }
                        for s in [streams.stdout, streams.stderr].into_iter().flatten() {
                            end.extend(spdy::data(s, true, &[]));
                        }
                        end.extend(spdy::goaway(last));
                        let _ = wr.write_all(&end).await;
                        let _ = wr.flush().await;
                        let _ = wr.shutdown().await;
                        return;
                    }
                };
                if let Some(f) = frame
                    && wr.write_all(&f).await.is_err()
                {
                    return;
                }
            },
            () = tokio::time::sleep_until(deadline), if !ready => {
                tracing::debug!(?streams, "remote-command streams were not opened in time");
                let _ = wr.write_all(&spdy::goaway(last)).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::spdy::tests::syn_stream;
    use serde_json::json;

    #[test]
    fn options_read_the_query() {
        let opts = Options::from_query(Some(
            "command=%2Ftoolbox&command=ls&command=%2Fdata&container=c&stdin=true&stdout=true&tty=true",
        ));
        assert_eq!(opts.command, ["/toolbox", "ls", "/data"]);
        assert!(opts.stdin && opts.stdout && opts.tty && !opts.stderr);
        assert_eq!(Options::from_query(None), Options::default());
    }

    #[test]
    fn a_spdy_session_waits_for_the_streams_asked_for() {
        let opts = Options {
            stdout: true,
            stderr: true,
            ..Options::default()
        };
        let mut s = Streams::default();
        assert!(s.open("error", 1));
        assert!(s.open("stdout", 3));
        assert!(!s.complete(&opts));
        assert!(s.open("stderr", 5));
        assert!(s.complete(&opts));
        assert!(!s.open("bogus", 7));
        // Under a tty stderr is merged, and the resize stream is expected instead.
        let tty = Options { tty: true, ..opts };
        let mut s = Streams::default();
        s.open("error", 1);
        s.open("stdout", 3);
        assert!(!s.complete(&tty));
        s.open("resize", 5);
        assert!(s.complete(&tty));
    }

    /// Reads frames off `io` until `want` says stop.
    async fn frames_until(
        io: &mut tokio::io::DuplexStream,
        codec: &mut Codec,
        mut want: impl FnMut(&Frame) -> bool,
    ) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        loop {
            while let Some(f) = codec.decode(&mut buf).expect("well-formed frames") {
                let stop = want(&f);
                seen.push(f);
                if stop {
                    return seen;
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(10), io.read_buf(&mut buf))
                .await
                .expect("a frame within 10 s")
                .expect("read");
            assert!(n > 0, "the session closed early; saw {seen:?}");
        }
    }

    #[tokio::test]
    async fn a_spdy_session_carries_stdin_output_and_the_status() {
        let (ours, mut client) = tokio::io::duplex(64 * 1024);
        let opts = Options {
            stdin: true,
            stdout: true,
            stderr: true,
            ..Options::default()
        };
        let mut session = over_spdy(ours, opts);
        let mut codec = Codec::new();
        let mut client_codec = crate::streaming::spdy::tests::client_deflate();
        for (id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")] {
            let f = syn_stream(&mut client_codec, id, &[("streamType", kind)]);
            client.write_all(&f).await.unwrap();
        }
        client
            .write_all(&spdy::data(3, true, b"hello"))
            .await
            .unwrap();
        assert_eq!(
            session.input.recv().await,
            Some(FromClient::Stdin(Bytes::from_static(b"hello")))
        );
        assert_eq!(session.input.recv().await, Some(FromClient::StdinEnd));
        session
            .output
            .send(ToClient::Stdout(Bytes::from_static(b"out")))
            .await
            .unwrap();
        session
            .output
            .send(ToClient::Stderr(Bytes::from_static(b"err")))
            .await
            .unwrap();
        session.finish(json!({"status": "Success"})).await;
        let frames = frames_until(&mut client, &mut codec, |f| *f == Frame::GoAway).await;
        let data: Vec<(u32, bool, &[u8])> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Data { stream, fin, data } => Some((*stream, *fin, data.as_ref())),
                _ => None,
            })
            .collect();
        assert_eq!(
            data,
            [
                (5, false, &b"out"[..]),
                (7, false, b"err"),
                (1, true, br#"{"status":"Success"}"#),
                (5, true, b""),
                (7, true, b""),
            ]
        );
    }
}
