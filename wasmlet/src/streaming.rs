//! What the API server streams from the node: container logs, `exec` and `attach` sessions
//! and port-forwarding (SPDY/3.1 and WebSockets), served on the wasmlet's HTTPS endpoint.
//!
//! ```text
//! apiserver ──pods/log, exec, attach, portforward──► server (TLS) ─► logs | exec | attach | portforward
//!                                       exec, attach ─► remotecommand (WebSocket or SPDY) ─┘
//!                                                        └─ spdy (framing, zlib headers)
//! ```

pub(crate) mod attach;
pub(crate) mod exec;
pub mod logs;
pub(crate) mod portforward;
pub(crate) mod proxy;
pub(crate) mod remotecommand;
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

/// A plain-text answer, as the kubelet gives its refusals.
pub(crate) fn text(status: axum::http::StatusCode, msg: String) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        msg,
    )
        .into_response()
}
