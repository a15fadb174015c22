//! `kubectl exec` on the node: the kubelet's streaming exec, over either transport of the
//! remote-command protocol ([`super::remotecommand`]; the API server proxies the upgraded
//! connection here).
//!
//! WASI has no processes, so exec runs the container's own command component once more, with
//! the requested command as `argv` and the container's environment, volumes, limits and pod
//! network — `kubectl exec pod -- /toolbox ls /data` runs the toolbox program with those
//! arguments beside the running instance. There is no terminal: `tty` merges stderr into
//! stdout and resize messages are read and dropped. When the command ends, its output is
//! flushed and one `metav1.Status` ends the session.

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::runtime::Prepared;
use crate::runtime::instance::{Exit, Launch, SessionIo, run_session};
use crate::streaming::remotecommand::{FromClient, Options, Session, ToClient};

/// How much is read from the guest's output per message.
const CHUNK: usize = 32 * 1024;

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

/// Runs one exec session for the container whose running instance was prepared as
/// `prepared`/`launch`.
pub(crate) async fn serve(session: Session, req: Options, target: Option<(Prepared, Launch)>) {
    let (pre, launch) = match target {
        Some((Prepared::Command(pre), launch)) => (pre, launch),
        Some((Prepared::Http(_), _)) => {
            let status = final_status(
                Err(
                    "exec needs a container whose image is a wasi:cli command; this container serves wasi:http (one instance per request)",
                ),
                &req.command,
            );
            session.finish(status).await;
            return;
        }
        None => {
            let status = final_status(Err("container not found or not running"), &req.command);
            session.finish(status).await;
            return;
        }
    };
    if req.command.is_empty() {
        let status = final_status(Err("you must specify at least one command"), &req.command);
        session.finish(status).await;
        return;
    }

    let (guest_in, our_in) = tokio::io::duplex(CHUNK);
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
    // Stdin is written by its own task so a guest that does not read cannot stall its
    // output; the session's queue is bounded, so a client far ahead of the guest is slowed.
    // The client going away (the input closing) stops the command.
    let Session { mut input, output } = session;
    {
        let gone = kill.clone();
        let mut our_in = Some(our_in);
        tokio::spawn(async move {
            while let Some(msg) = input.recv().await {
                match msg {
                    FromClient::Stdin(data) => {
                        if let Some(w) = &mut our_in
                            && w.write_all(&data).await.is_err()
                        {
                            our_in = None;
                        }
                    }
                    // EOF for the guest.
                    FromClient::StdinEnd => {
                        if let Some(mut w) = our_in.take() {
                            let _ = w.shutdown().await;
                        }
                    }
                }
            }
            gone.cancel();
        });
    }
    let (mut out_open, mut err_open) = (true, true);
    let mut exit: Option<Result<Exit, String>> = None;
    let mut out_buf = vec![0u8; CHUNK];
    let mut err_buf = vec![0u8; CHUNK];
    while exit.is_none() || out_open || err_open {
        let sent = tokio::select! {
            n = our_out.read(&mut out_buf), if out_open => match n {
                Ok(0) | Err(_) => { out_open = false; Ok(()) }
                Ok(n) if req.stdout => output.send(ToClient::Stdout(Bytes::copy_from_slice(&out_buf[..n]))).await.map_err(drop),
                Ok(_) => Ok(()),
            },
            n = our_err.read(&mut err_buf), if err_open => match n {
                Ok(0) | Err(_) => { err_open = false; Ok(()) }
                Ok(n) if req.stderr || req.tty => output.send(ToClient::Stderr(Bytes::copy_from_slice(&err_buf[..n]))).await.map_err(drop),
                Ok(_) => Ok(()),
            },
            e = &mut exit_rx, if exit.is_none() => {
                exit = Some(e.unwrap_or_else(|_| Err("the exec instance vanished".into())));
                Ok(())
            }
        };
        if sent.is_err() {
            // The caller went away: stop the command.
            kill.cancel();
            return;
        }
    }
    let status = match exit.expect("the loop ends after the exit") {
        Ok(exit) => final_status(Ok(&exit), &req.command),
        Err(e) => final_status(Err(&e), &req.command),
    };
    let _ = output.send(ToClient::Status(status)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_statuses_have_kubernetes_shapes() {
        let req = Options::from_query(Some("command=%2Ftoolbox&command=ls&command=%2Fdata"));

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
