//! What the API server streams from the node: container logs, `exec` sessions and
//! port-forwarding (SPDY/3.1 and WebSocket channels), served on the wasmlet's HTTPS endpoint.
//!
//! ```text
//! apiserver ──pods/log, pods/exec, pods/portforward──► server (TLS, token) ─► logs | exec | portforward
//!                                                                              └─ spdy (framing, zlib headers)
//! ```

pub(crate) mod exec;
pub mod logs;
pub(crate) mod portforward;
pub(crate) mod server;
pub(crate) mod spdy;

/// Closes a WebSocket normally (1000), ignoring a peer that has gone.
pub(crate) async fn close_normally<S>(tx: &mut S)
where
    S: futures::Sink<axum::extract::ws::Message> + Unpin,
{
    use futures::SinkExt as _;
    let frame = axum::extract::ws::CloseFrame {
        code: 1000,
        reason: "".into(),
    };
    let _ = tx
        .send(axum::extract::ws::Message::Close(Some(frame)))
        .await;
}
