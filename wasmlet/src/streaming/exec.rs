//! `kubectl exec` on the node: the kubelet's streaming exec over WebSockets with the
//! `v5.channel.k8s.io` protocol (what kubectl 1.30+ speaks; `v4` too; the API server proxies the
//! upgraded connection here).
//!
//! WASI has no processes, so exec runs the container's own command component once more, with
//! the requested command as `argv` and the container's environment, volumes, limits and pod
//! network — `kubectl exec pod -- /toolbox ls /data` runs the toolbox program with those
//! arguments beside the running instance. There is no terminal: `tty` merges stderr into
//! stdout and resize messages are read and dropped.
//!
//! The protocol: binary messages whose first byte is the channel (0 stdin, 1 stdout,
//! 2 stderr, 3 status, 4 resize; 255 closes the stream named by the second byte — the client
//! sends `[255, 0]` at the end of its stdin). When the command ends, its output is flushed,
//! one `metav1.Status` goes on channel 3, and the socket closes with code 1000.

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::runtime::Prepared;
use crate::runtime::instance::{Exit, Launch, SessionIo, run_session};

/// Stdin chunks waiting for the guest to read them.
const STDIN_QUEUE: usize = 64;

/// The subprotocols served, preferred first: kubectl offers only v5; kube-rs offers v5 and
/// v4 (v4 has no way to close stdin).
pub(crate) const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// How much is read from the guest's output per message.
const CHUNK: usize = 32 * 1024;

/// What the caller asked for (`PodExecOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ExecRequest {
    /// `command` (repeated), the new instance's `argv`.
    pub command: Vec<String>,
    /// `stdin`.
    pub stdin: bool,
    /// `stdout`.
    pub stdout: bool,
    /// `stderr`.
    pub stderr: bool,
    /// `tty`.
    pub tty: bool,
}

impl ExecRequest {
    /// Reads the query string's pairs.
    pub(crate) fn from_pairs(pairs: &[(String, String)]) -> Self {
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
}

/// The `metav1.Status` that ends a session: kubectl turns `NonZeroExitCode` into its own exit
/// code and anything else into an error message.
pub(crate) fn final_status(exit: Result<&Exit, &str>, command: &[String]) -> Value {
    match exit {
        Ok(Exit::Code(0)) => json!({"metadata": {}, "status": "Success"}),
        Ok(exit) => {
            let code = exit.code().clamp(0, 255);
            let why = match exit {
                Exit::Trapped(m) | Exit::OomKilled(m) => {
                    format!(": {}", m.lines().next().unwrap_or_default())
                }
                _ => String::new(),
            };
            json!({
                "metadata": {},
                "status": "Failure",
                "message": format!(
                    "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}{why}"
                ),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
            })
        }
        Err(message) => json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
            "code": 500
        }),
    }
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// Runs one exec session on an upgraded socket, for the container whose running instance was
/// prepared as `prepared`/`launch`.
pub(crate) async fn serve(ws: WebSocket, req: ExecRequest, target: Option<(Prepared, Launch)>) {
    let (mut tx, mut rx) = ws.split();
    // Real servers open with an empty frame on the first stream the client expects.
    let first = if req.stdout {
        STDOUT
    } else if req.stderr {
        STDERR
    } else {
        STATUS
    };
    if tx.send(frame(first, &[])).await.is_err() {
        return;
    }
    let (pre, launch) = match target {
        Some((Prepared::Command(pre), launch)) => (pre, launch),
        Some((Prepared::Http(_), _)) => {
            let status = final_status(
                Err(
                    "exec needs a container whose image is a wasi:cli command; this container serves wasi:http (one instance per request)",
                ),
                &req.command,
            );
            finish(&mut tx, &status).await;
            return;
        }
        None => {
            let status = final_status(Err("container not found or not running"), &req.command);
            finish(&mut tx, &status).await;
            return;
        }
    };
    if req.command.is_empty() {
        let status = final_status(Err("you must specify at least one command"), &req.command);
        finish(&mut tx, &status).await;
        return;
    }

    let (guest_in, mut our_in) = tokio::io::duplex(CHUNK);
    let (guest_out, mut our_out) = tokio::io::duplex(CHUNK);
    let (guest_err, mut our_err) = tokio::io::duplex(CHUNK);
    let io = SessionIo {
        stdin: req.stdin.then_some(guest_in),
        stdout: guest_out,
        stderr: guest_err,
    };
    let kill = CancellationToken::new();
    let launch = Launch {
        argv: req.command.clone(),
        ..launch
    };
    let (exit_tx, mut exit_rx) = tokio::sync::oneshot::channel();
    {
        let kill = kill.clone();
        tokio::spawn(async move {
            let exit = run_session(&pre, &launch, io, &kill).await;
            let _ = exit_tx.send(exit.map_err(|e| format!("{e:#}")));
        });
    }
    // Stdin is written by its own task so a guest that does not read cannot stall the socket.
    // Its queue is bounded: when the guest is that far behind, the session stops reading the
    // client (TCP slows it) but keeps forwarding stdout and stderr, so nothing deadlocks.
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<Option<Bytes>>(STDIN_QUEUE);
    let mut held: Option<Option<Bytes>> = None;
    tokio::spawn(async move {
        while let Some(Some(data)) = stdin_rx.recv().await {
            if our_in.write_all(&data).await.is_err() {
                return;
            }
        }
        // `None` (or the session's end) closes the guest's stdin: EOF.
        let _ = our_in.shutdown().await;
    });
    let err_channel = if req.tty { STDOUT } else { STDERR };
    let (mut out_open, mut err_open) = (true, true);
    let mut exit: Option<Result<Exit, String>> = None;
    let mut out_buf = vec![0u8; CHUNK];
    let mut err_buf = vec![0u8; CHUNK];
    loop {
        if exit.is_some() && !out_open && !err_open {
            break;
        }
        tokio::select! {
            permit = stdin_tx.reserve(), if held.is_some() => {
                if let Ok(permit) = permit {
                    permit.send(held.take().expect("guarded"));
                } else {
                    held = None;
                }
            }
            msg = rx.next(), if held.is_none() => match msg {
                Some(Ok(Message::Binary(data))) => match data.first() {
                    Some(&STDIN) if req.stdin => {
                        if let Err(mpsc::error::TrySendError::Full(data)) = stdin_tx.try_send(Some(data.slice(1..))) {
                            held = Some(data);
                        }
                    }
                    Some(&CLOSE) if data.get(1) == Some(&STDIN) => {
                        if let Err(mpsc::error::TrySendError::Full(eof)) = stdin_tx.try_send(None) {
                            held = Some(eof);
                        }
                    }
                    // Resize (no terminal here) and anything unknown.
                    Some(&RESIZE) | Some(_) | None => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The caller went away: stop the command.
                    kill.cancel();
                    return;
                }
                Some(Ok(_)) => {}
            },
            n = our_out.read(&mut out_buf), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => if req.stdout && tx.send(frame(STDOUT, &out_buf[..n])).await.is_err() {
                    kill.cancel();
                    return;
                },
            },
            n = our_err.read(&mut err_buf), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => if (req.stderr || req.tty) && tx.send(frame(err_channel, &err_buf[..n])).await.is_err() {
                    kill.cancel();
                    return;
                },
            },
            e = &mut exit_rx, if exit.is_none() => {
                exit = Some(e.unwrap_or_else(|_| Err("the exec instance vanished".into())));
            }
        }
    }
    let status = match exit.expect("the loop ends after the exit") {
        Ok(exit) => final_status(Ok(&exit), &req.command),
        Err(e) => final_status(Err(&e), &req.command),
    };
    finish(&mut tx, &status).await;
}

async fn finish<S>(tx: &mut S, status: &Value)
where
    S: futures::Sink<Message> + Unpin,
{
    let body = serde_json::to_vec(status).expect("a status serializes");
    let _ = tx.send(frame(STATUS, &body)).await;
    super::close_normally(tx).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_statuses_have_kubernetes_shapes() {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(
            "command=%2Ftoolbox&command=ls&command=%2Fdata&container=c&stdin=true&stdout=true&tty=true",
        )
        .unwrap();
        let req = ExecRequest::from_pairs(&pairs);
        assert_eq!(req.command, ["/toolbox", "ls", "/data"]);
        assert!(req.stdin && req.stdout && req.tty && !req.stderr);

        assert_eq!(
            final_status(Ok(&Exit::Code(0)), &req.command),
            json!({"metadata": {}, "status": "Success"})
        );
        let failed = final_status(Ok(&Exit::Code(3)), &req.command);
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(
            failed["details"]["causes"][0],
            json!({"reason": "ExitCode", "message": "3"})
        );
        let killed = final_status(Ok(&Exit::OomKilled("out of memory".into())), &req.command);
        assert_eq!(killed["details"]["causes"][0]["message"], "137");
        let broken = final_status(Err("no such container"), &req.command);
        assert_eq!(
            (broken["status"].as_str(), broken["message"].as_str()),
            (Some("Failure"), Some("no such container"))
        );
    }
}
