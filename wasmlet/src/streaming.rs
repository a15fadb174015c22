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
