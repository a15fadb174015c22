//! `kubectl attach` on the node: a session joined to a running container's own streams, over
//! either transport of the remote-command protocol ([`super::remotecommand`]).
//!
//! Output is what the container writes from the moment of attaching, read from its log as it
//! grows (stdout and stderr kept apart; merged under `tty`). Input goes to the container's
//! stdin, which exists only for a container with `stdin: true`: the wasmlet then gives the
//! instance a pipe ([`ContainerStdin`]) that attach sessions write into, kept open across
//! sessions, or closed when the first session that attached to it ends under `stdinOnce`, as
//! the container runtimes do. A container without one takes no input (what an attached
//! client types is read and dropped). The session ends with `Success` when the instance
//! exits, or when the client goes away.

use std::sync::Arc;

use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::Mutex;

use crate::pod::registry::Running;
use crate::streaming::remotecommand::{FromClient, Options, Session, ToClient};

/// How much a container's stdin buffers before a writer waits for the guest to read.
const STDIN_BUFFER: usize = 64 * 1024;

/// The write end of a container instance's stdin.
#[derive(Debug)]
pub(crate) struct ContainerStdin {
    writer: Mutex<Option<DuplexStream>>,
    /// `stdinOnce`: closed when the first session attached to it ends.
    once: bool,
}

impl ContainerStdin {
    /// A new pipe: the shared write end, and the guest's read end.
    pub(crate) fn new(once: bool) -> (Arc<Self>, DuplexStream) {
        let (guest, ours) = tokio::io::duplex(STDIN_BUFFER);
        let stdin = Self {
            writer: Mutex::new(Some(ours)),
            once,
        };
        (Arc::new(stdin), guest)
    }

    /// Writes `data`; false once stdin is closed or the guest has gone.
    async fn write(&self, data: &[u8]) -> bool {
        let mut writer = self.writer.lock().await;
        let Some(w) = writer.as_mut() else {
            return false;
        };
        if w.write_all(data).await.is_err() {
            *writer = None;
            return false;
        }
        true
    }

    /// Closes stdin: the guest reads EOF.
    async fn close(&self) {
        if let Some(mut w) = self.writer.lock().await.take() {
            let _ = w.shutdown().await;
        }
    }

    /// A session that wrote to stdin ended: under `stdinOnce` that closes it.
    async fn session_ended(&self) {
        if self.once {
            self.close().await;
        }
    }
}

/// Runs one attach session to the running container `running` (none: not running).
pub(crate) async fn serve(session: Session, opts: Options, running: Option<Running>) {
    let Some(running) = running else {
        session
            .finish(json!({
                "metadata": {},
                "status": "Failure",
                "message": "container not found or not running",
                "reason": "BadRequest",
                "code": 400
            }))
            .await;
        return;
    };
    let Session { mut input, output } = session;
    let stdin = running.stdin.filter(|_| opts.stdin);
    // Output from now on: the log's current end, then what it gains.
    let offset = std::fs::metadata(running.log.path()).map_or(0, |m| m.len());
    let mut records = Box::pin(crate::streaming::logs::follow(
        Arc::clone(&running.log),
        offset,
    ));
    let exited = loop {
        tokio::select! {
            batch = records.next() => {
                let Some(batch) = batch else { break true };
                for r in batch {
                    let msg = match (r.stderr, opts.tty) {
                        (false, _) if opts.stdout => ToClient::Stdout(r.written().into()),
                        (true, true) if opts.stdout => ToClient::Stdout(r.written().into()),
                        (true, false) if opts.stderr => ToClient::Stderr(r.written().into()),
                        _ => continue,
                    };
                    if output.send(msg).await.is_err() {
                        break;
                    }
                }
                if output.is_closed() {
                    break false;
                }
            }
            msg = input.recv() => match msg {
                Some(FromClient::Stdin(data)) => {
                    if let Some(s) = &stdin {
                        s.write(&data).await;
                    }
                }
                Some(FromClient::StdinEnd) => {
                    if let Some(s) = &stdin {
                        s.session_ended().await;
                    }
                }
                // The client went away.
                None => break false,
            },
        }
    };
    if let Some(s) = &stdin {
        s.session_ended().await;
    }
    if exited {
        let _ = output
            .send(ToClient::Status(
                json!({"metadata": {}, "status": "Success"}),
            ))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn stdin_stays_open_across_sessions_unless_once() {
        let (stdin, mut guest) = ContainerStdin::new(false);
        assert!(stdin.write(b"one ").await);
        stdin.session_ended().await;
        assert!(stdin.write(b"two").await);
        stdin.close().await;
        assert!(!stdin.write(b"three").await);
        let mut got = String::new();
        guest.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "one two");

        let (once, mut guest) = ContainerStdin::new(true);
        assert!(once.write(b"only").await);
        once.session_ended().await;
        assert!(
            !once.write(b"more").await,
            "stdinOnce closes after one session"
        );
        let mut got = String::new();
        guest.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "only");
    }
}
