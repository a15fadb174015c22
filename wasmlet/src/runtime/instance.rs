//! One container instance: a wasmtime `Store` whose WASI context is built from the PodSpec,
//! starting from deny-everything, with the container's limits and log files attached.
//!
//! A `wasi:cli/command` runs to its exit; a `wasi:http/proxy` gets a fresh instance per request
//! (pre-instantiated, from the engine's pool) for as long as the container is up.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::net::names::PodHttp;
use crate::net::podnet::{PodAddress, PodNet, PodNetView, PodSocketsView};
use crate::runtime::limits::{CpuQuota, MemoryLimit};
use crate::runtime::usage::{Metered, Usage};
use crate::streaming::logs::LogFile;

/// Everything a container instance needs, resolved from the PodSpec (pure data).
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// `argv`, `argv[0]` included.
    pub argv: Vec<String>,
    /// The environment, in PodSpec order (later entries win, as in Kubernetes).
    pub env: Vec<(String, String)>,
    /// Directories preopened for the guest.
    pub mounts: Vec<Mount>,
    /// The guest's initial working directory.
    pub working_dir: Option<String>,
    /// `resources.limits.memory` in bytes.
    pub memory_limit: Option<usize>,
    /// `resources.limits.cpu` in millicores.
    pub cpu_limit_millis: Option<u64>,
    /// The pod address its sockets live on (none: no sockets at all).
    pub pod_net: Option<PodAddress>,
    /// What this start of the container uses (every instance made from this launch counts).
    pub usage: Arc<Usage>,
}

/// A host directory the guest sees at `guest_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where the data lives on the node.
    pub host_path: std::path::PathBuf,
    /// Where the guest finds it.
    pub guest_path: String,
    /// Mounted read-only (configMap, secret, downwardAPI, or `readOnly: true`).
    pub read_only: bool,
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The guest returned or called `exit`.
    Code(i32),
    /// The guest trapped (the message names the trap and where).
    Trapped(String),
    /// The guest exceeded its memory limit.
    OomKilled(String),
    /// The wasmlet stopped it (pod deletion, container replaced).
    Killed,
}

impl Exit {
    /// The exit code Kubernetes would show: traps are an abort (134, SIGABRT), OOM kills and
    /// kills are SIGKILL (137).
    pub fn code(&self) -> i32 {
        match self {
            Exit::Code(c) => *c,
            Exit::Trapped(_) => 134,
            Exit::OomKilled(_) | Exit::Killed => 137,
        }
    }
}

/// A failure of the wasmlet, not of the guest.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("cannot mount {guest_path}")]
    Mount {
        guest_path: String,
        #[source]
        source: wasmtime::Error,
    },
    #[error("cannot instantiate")]
    Instantiate(#[source] wasmtime::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The store data of a container instance.
pub struct ContainerState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: PodHttp,
    memory: MemoryLimit,
    cpu: CpuAccount,
    net: Option<PodNet>,
}

impl PodNetView for ContainerState {
    fn pod_sockets(&mut self) -> PodSocketsView<'_> {
        PodSocketsView {
            inner: wasmtime_wasi::sockets::WasiSocketsCtxView {
                ctx: self.wasi.sockets(),
                table: &mut self.table,
            },
            pod: self.net.as_mut(),
        }
    }
}

impl WasiView for ContainerState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ContainerState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Per-instance CPU bookkeeping for the epoch callback.
struct CpuAccount {
    resumed: Instant,
    quota: Option<Arc<Mutex<CpuQuota>>>,
}

/// Ticks between yields for a container without a CPU limit: bounded slices keep a spinning
/// guest from holding a worker thread, so other pods and the wasmlet itself keep running.
const UNLIMITED_SLICE_TICKS: u64 = 10;

/// How much an exec session's guest may write ahead of the caller.
const SESSION_BUDGET: usize = 16 * 1024;

/// Where an instance's stdout and stderr go.
enum Output<'a> {
    /// The container's log (CRI format, per stream), and its stdin if it has one.
    Log(&'a Arc<LogFile>, Option<tokio::io::DuplexStream>),
    /// Memory, both streams together (an exec probe's output).
    Capture(MemoryOutputPipe),
    /// An exec session's streams, stdin included.
    Session(SessionIo),
}

fn new_store(
    engine: &wasmtime::Engine,
    launch: &Launch,
    output: Output<'_>,
    quota: Option<Arc<Mutex<CpuQuota>>>,
) -> Result<Store<ContainerState>, InstanceError> {
    let mut wasi = WasiCtx::builder();
    wasi.args(&launch.argv).envs(&launch.env);
    match output {
        Output::Log(log, stdin) => {
            if let Some(stdin) = stdin {
                wasi.stdin(AsyncStdinStream::new(stdin));
            }
            wasi.stdout(log.stdout()).stderr(log.stderr())
        }
        Output::Capture(pipe) => wasi.stdout(pipe.clone()).stderr(pipe),
        Output::Session(io) => {
            if let Some(stdin) = io.stdin {
                wasi.stdin(AsyncStdinStream::new(stdin));
            }
            wasi.stdout(AsyncStdoutStream::new(SESSION_BUDGET, io.stdout))
                .stderr(AsyncStdoutStream::new(SESSION_BUDGET, io.stderr))
        }
    };
    if let Some(dir) = &launch.working_dir {
        wasi.initial_cwd(dir);
    }
    if launch.pod_net.is_some() {
        // The pod network rewrites every address first; this second guard sees the result and
        // lets nothing but loopback through.
        wasi.allow_tcp(true)
            .socket_addr_check(|addr, _use| Box::pin(async move { addr.ip().is_loopback() }));
    }
    for m in &launch.mounts {
        let perms = if m.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        wasi.preopened_dir(&m.host_path, &m.guest_path, perms)
            .map_err(|source| InstanceError::Mount {
                guest_path: m.guest_path.clone(),
                source,
            })?;
    }
    let limited = quota.is_some();
    let state = ContainerState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        hooks: PodHttp {
            pod: launch.pod_net.clone(),
        },
        memory: MemoryLimit::new(launch.memory_limit, Arc::clone(&launch.usage)),
        cpu: CpuAccount {
            resumed: Instant::now(),
            quota,
        },
        net: launch.pod_net.clone().map(PodNet::new),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.memory);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |mut ctx| {
        let cpu = &mut ctx.data_mut().cpu;
        let now = Instant::now();
        let ran = now.saturating_duration_since(cpu.resumed);
        cpu.resumed = now;
        let sleep = cpu
            .quota
            .as_ref()
            .and_then(|q| q.lock().expect("cpu quota lock").charge(ran, now));
        Ok(match sleep {
            Some(d) => UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(d))),
            None if limited => UpdateDeadline::Yield(1),
            None => UpdateDeadline::Yield(UNLIMITED_SLICE_TICKS),
        })
    });
    Ok(store)
}

fn cpu_quota(launch: &Launch) -> Option<Arc<Mutex<CpuQuota>>> {
    launch
        .cpu_limit_millis
        .map(|m| Arc::new(Mutex::new(CpuQuota::new(m, Instant::now()))))
}

/// Runs a command container to its end, or until `kill` fires.
///
/// # Errors
/// [`InstanceError`] when the wasmlet could not set the instance up; anything the guest does
/// is an [`Exit`].
///
/// # Cancel safety
/// Dropping the future drops the instance (that is how a kill works).
pub async fn run_command(
    pre: &CommandPre<ContainerState>,
    launch: &Launch,
    log: &Arc<LogFile>,
    stdin: Option<tokio::io::DuplexStream>,
    kill: &CancellationToken,
) -> Result<Exit, InstanceError> {
    let exit = run_to_exit(pre, launch, Output::Log(log, stdin), kill).await?;
    if let Exit::Trapped(msg) | Exit::OomKilled(msg) = &exit {
        log.note(msg);
    }
    Ok(exit)
}

/// Instantiates and runs `wasi:cli/run` until the guest ends or `kill` fires.
async fn run_to_exit(
    pre: &CommandPre<ContainerState>,
    launch: &Launch,
    output: Output<'_>,
    kill: &CancellationToken,
) -> Result<Exit, InstanceError> {
    let mut store = new_store(pre.engine(), launch, output, cpu_quota(launch))?;
    let run = Metered::new(
        async {
            let command = pre.instantiate_async(&mut store).await?;
            crate::metrics::instantiated("command");
            command.wasi_cli_run().call_run(&mut store).await
        },
        Arc::clone(&launch.usage),
    );
    let result = tokio::select! {
        r = run => r,
        () = kill.cancelled() => return Ok(Exit::Killed),
    };
    Ok(match result {
        Ok(Ok(())) => Exit::Code(0),
        Ok(Err(())) => Exit::Code(1),
        Err(e) => guest_failure(&e, store.data().memory.oom_killed()),
    })
}

/// The standard streams of an exec session, wired to the caller: the guest reads `stdin`
/// (none: empty) and writes `stdout` and `stderr`; the other ends are the session's.
pub struct SessionIo {
    /// The guest's end of stdin.
    pub stdin: Option<tokio::io::DuplexStream>,
    /// The guest's end of stdout.
    pub stdout: tokio::io::DuplexStream,
    /// The guest's end of stderr.
    pub stderr: tokio::io::DuplexStream,
}

/// Runs the container's command component once more with `launch` (`kubectl exec`: the
/// command as `argv`, the container's environment, mounts, limits and pod network) with its
/// standard streams wired to `io`, until it ends or `kill` fires.
///
/// # Errors
/// [`InstanceError`] when the instance could not be set up.
pub async fn run_session(
    pre: &CommandPre<ContainerState>,
    launch: &Launch,
    io: SessionIo,
    kill: &CancellationToken,
) -> Result<Exit, InstanceError> {
    run_to_exit(pre, launch, Output::Session(io), kill).await
}

/// How much of an exec probe's output is kept (the kubelet keeps 10 KiB); a guest writing
/// more than [`EXEC_OUTPUT_CAPACITY`] traps, which fails the probe.
pub const EXEC_OUTPUT_KEPT: usize = 10 * 1024;
const EXEC_OUTPUT_CAPACITY: usize = 64 * 1024;

/// Runs the container's command component once more with `launch` (an exec probe: the probe's
/// command as `argv`, the container's environment, mounts, limits and pod network), within
/// `timeout`. Returns how it ended (`None`: timed out) and what it wrote to stdout and stderr.
///
/// # Errors
/// [`InstanceError`] when the instance could not be set up.
pub async fn run_exec(
    pre: &CommandPre<ContainerState>,
    launch: &Launch,
    timeout: Duration,
) -> Result<(Option<Exit>, String), InstanceError> {
    let pipe = MemoryOutputPipe::new(EXEC_OUTPUT_CAPACITY);
    let never = CancellationToken::new();
    let run = run_to_exit(pre, launch, Output::Capture(pipe.clone()), &never);
    let exit = match tokio::time::timeout(timeout, run).await {
        Err(_) => None,
        Ok(exit) => Some(exit?),
    };
    let out = pipe.contents();
    let kept = &out[..out.len().min(EXEC_OUTPUT_KEPT)];
    Ok((exit, String::from_utf8_lossy(kept).into_owned()))
}

/// Classifies an error out of the guest: exit, OOM kill, or trap.
fn guest_failure(e: &wasmtime::Error, oom: bool) -> Exit {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return Exit::Code(exit.0);
    }
    if oom {
        let why = e
            .chain()
            .find_map(|c| c.downcast_ref::<crate::runtime::limits::OutOfMemory>())
            .map(ToString::to_string);
        return Exit::OomKilled(why.unwrap_or_else(|| format!("{e:#}")));
    }
    let msg = match e.downcast_ref::<Trap>() {
        Some(trap) => format!("wasm trap: {trap}"),
        None => format!("{e:#}"),
    };
    // The full error carries the guest backtrace; keep the whole thing for the log.
    let detail = format!("{e:?}");
    Exit::Trapped(if detail.len() > msg.len() {
        format!("{msg}\n{detail}")
    } else {
        msg
    })
}

/// Creates a store and instantiates the proxy without running a request: what every request
/// pays before its handler starts.
///
/// # Errors
/// When the instance cannot be created.
pub async fn instantiate_proxy(
    pre: &ProxyPre<ContainerState>,
    launch: &Launch,
    log: &Arc<LogFile>,
) -> Result<(), InstanceError> {
    let mut store = new_store(pre.engine(), launch, Output::Log(log, None), None)?;
    pre.instantiate_async(&mut store)
        .await
        .map_err(InstanceError::Instantiate)?;
    Ok(())
}

type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Removes a pod's in-process HTTP handler when serving stops (however it stops).
struct HandlerRegistration {
    net: Arc<crate::net::NodeNet>,
    addr: std::net::SocketAddrV4,
}

impl Drop for HandlerRegistration {
    fn drop(&mut self) {
        self.net.set_http_handler(self.addr, None);
    }
}

/// Serves a `wasi:http/proxy` container on `listener` until `stop` fires; in-flight requests
/// then get `grace` to finish.
///
/// Returns the first instance failure that should end the container (an OOM kill), or
/// `Ok(Exit::Killed)` once stopped.
///
/// # Errors
/// [`InstanceError`] when the wasmlet could not serve.
pub async fn serve_http(
    pre: ProxyPre<ContainerState>,
    launch: Arc<Launch>,
    log: Arc<LogFile>,
    listener: TcpListener,
    stop: CancellationToken,
    grace: Duration,
) -> Result<Exit, InstanceError> {
    let quota = cpu_quota(&launch);
    let tracker = tokio_util::task::TaskTracker::new();
    let connections = CancellationToken::new();
    // The node's Ingress calls local wasi:http pods in-process, skipping a second HTTP hop.
    let registered = match (&launch.pod_net, listener.local_addr()) {
        (Some(pod), Ok(SocketAddr::V4(addr))) => {
            let (pre, launch2, log, quota) = (
                pre.clone(),
                Arc::clone(&launch),
                Arc::clone(&log),
                quota.clone(),
            );
            let handler: crate::net::HttpHandler = Arc::new(move |req| {
                let (pre, launch, log, quota) = (
                    pre.clone(),
                    Arc::clone(&launch2),
                    Arc::clone(&log),
                    quota.clone(),
                );
                Box::pin(async move { handle(&pre, &launch, &log, quota, req).await })
            });
            pod.net.set_http_handler(addr, Some(handler));
            Some(HandlerRegistration {
                net: Arc::clone(&pod.net),
                addr,
            })
        }
        _ => None,
    };
    loop {
        let (stream, _peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        // Responses go out as headers then body: without NODELAY, delayed ACKs add 40 ms.
        let _ = stream.set_nodelay(true);
        let (pre, launch, log, quota) = (
            pre.clone(),
            Arc::clone(&launch),
            Arc::clone(&log),
            quota.clone(),
        );
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (pre, launch, log, quota) = (
                pre.clone(),
                Arc::clone(&launch),
                Arc::clone(&log),
                quota.clone(),
            );
            async move {
                Ok::<_, std::convert::Infallible>(handle(&pre, &launch, &log, quota, req).await)
            }
        });
        let done = connections.clone();
        tracker.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = done.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(registered);
    drop(listener);
    tracker.close();
    connections.cancel();
    let _ = tokio::time::timeout(grace, tracker.wait()).await;
    Ok(Exit::Killed)
}

async fn handle(
    pre: &ProxyPre<ContainerState>,
    launch: &Launch,
    log: &Arc<LogFile>,
    quota: Option<Arc<Mutex<CpuQuota>>>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let mut store = match new_store(pre.engine(), launch, Output::Log(log, None), quota) {
        Ok(s) => s,
        Err(e) => return plain(500, &format!("{e:#}")),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let prepared = (|| -> wasmtime::Result<_> {
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(tx)?;
        Ok((req, out))
    })();
    let (req, out) = match prepared {
        Ok(p) => p,
        Err(e) => return plain(500, &format!("{e:#}")),
    };
    let pre = pre.clone();
    let log_task = Arc::clone(log);
    // The guest may keep streaming the body after it has set the response, so it runs on.
    let usage = Arc::clone(&launch.usage);
    // In flight until the guest has finished with the request (it may stream the body on).
    let in_flight = usage.request();
    let task = tokio::spawn(Metered::new(
        async move {
            let _in_flight = in_flight;
            let result = match pre.instantiate_async(&mut store).await {
                Ok(proxy) => {
                    crate::metrics::instantiated("http");
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, req, out)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                let exit = guest_failure(&e, store.data().memory.oom_killed());
                if let Exit::Trapped(msg) | Exit::OomKilled(msg) = &exit {
                    log_task.note(msg);
                }
            }
        },
        usage,
    ));
    match rx.await {
        Ok(Ok(resp)) => resp.map(|body| {
            body.map_err(|code| std::io::Error::other(format!("{code:?}")))
                .boxed_unsync()
        }),
        Ok(Err(code)) => plain(500, &format!("the handler failed: {code:?}")),
        Err(_) => {
            let _ = task.await;
            plain(500, "the handler ended without sending a response")
        }
    }
}

fn plain(status: u16, text: &str) -> hyper::Response<ResponseBody> {
    let body = http_body_util::Full::new(Bytes::from(format!("{text}\n")))
        .map_err(|e| match e {})
        .boxed_unsync();
    hyper::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body)
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Prepared, Runtime, RuntimeConfig};
    use crate::streaming::logs::{LogOptions, Rotation, read_records, render};

    struct Fixture {
        _dir: tempfile::TempDir,
        logs: std::path::PathBuf,
        rt: Arc<Runtime>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = Runtime::new(&RuntimeConfig {
            cache_dir: dir.path().join("cache"),
            max_instances: 16,
            max_memory_bytes: 128 << 20,
        })
        .expect("runtime");
        Fixture {
            logs: dir.path().join("logs"),
            _dir: dir,
            rt,
        }
    }

    impl Fixture {
        async fn command(&self, sample: &str) -> CommandPre<ContainerState> {
            let wasm = wasmkube_samples::guest(sample).expect("sample");
            match self
                .rt
                .prepare(sample, || Ok(wasm.to_vec()))
                .await
                .expect("prepare")
            {
                Prepared::Command(pre) => pre,
                Prepared::Http(_) => panic!("{sample} is a command"),
            }
        }

        async fn run(&self, sample: &str, launch: Launch) -> (Exit, String) {
            static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let dir = self.logs.join(format!(
                "{sample}-{}",
                RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let pre = self.command(sample).await;
            let log = LogFile::new(&dir, 0, Rotation::default());
            let exit = run_command(&pre, &launch, &log, None, &CancellationToken::new())
                .await
                .expect("run");
            log.close();
            let out = render(
                &read_records(&dir, 0).expect("records"),
                &LogOptions::default(),
            );
            (exit, String::from_utf8(out).expect("utf8"))
        }
    }

    /// Waits (on the log's change notifications, at most 10 s) until the log contains `needle`.
    async fn wait_for_log(log: &LogFile, needle: &str) {
        let mut progress = log.subscribe();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !std::fs::read_to_string(log.path()).is_ok_and(|t| t.contains(needle)) {
                progress
                    .changed()
                    .await
                    .expect("the log stays open while the guest runs");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the guest never logged {needle:?}"));
    }

    fn argv(args: &[&str]) -> Launch {
        Launch {
            argv: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Launch::default()
        }
    }

    #[tokio::test]
    async fn a_command_prints_and_exits_zero() {
        let f = fixture();
        let mut launch = argv(&["hello", "a", "b"]);
        launch.env.push(("GREETING_TARGET".into(), "tests".into()));
        let (exit, out) = f.run("hello", launch).await;
        assert_eq!(exit, Exit::Code(0));
        assert_eq!(out, "Hello, tests!\nargs: a b\n");
    }

    #[tokio::test]
    async fn exit_codes_traps_and_oom_kills_are_told_apart() {
        let f = fixture();
        // wasip2's `wasi:cli/exit` carries only ok/err, so every failing status reads as 1.
        let (exit, _) = f.run("toolbox", argv(&["toolbox", "exit", "3"])).await;
        assert_eq!(exit, Exit::Code(1));
        let (exit, out) = f
            .run("toolbox", argv(&["toolbox", "panic", "kaboom"]))
            .await;
        assert!(
            matches!(&exit, Exit::Trapped(m) if m.contains("unreachable")),
            "{exit:?}"
        );
        assert!(
            out.contains("kaboom"),
            "the panic message is in the log: {out}"
        );
        let mut hog = argv(&["memhog"]);
        hog.memory_limit = Some(16 << 20);
        let (exit, out) = f.run("memhog", hog).await;
        assert!(matches!(exit, Exit::OomKilled(_)), "{exit:?}");
        assert!(out.contains("holding 4 MiB"), "{out}");
        assert!(
            out.contains("memory limit of 16777216 bytes exceeded"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn volumes_are_preopened_and_read_only_ones_refuse_writes() {
        let f = fixture();
        let rw = tempfile::tempdir().expect("tempdir");
        let ro = tempfile::tempdir().expect("tempdir");
        std::fs::write(ro.path().join("key"), "value").expect("write");
        let mut launch = argv(&[
            "toolbox",
            "cat",
            "/config/key",
            "--",
            "write",
            "/data/out",
            "written",
            "--",
            "write",
            "/config/key",
            "nope",
        ]);
        launch.mounts = vec![
            Mount {
                host_path: rw.path().into(),
                guest_path: "/data".into(),
                read_only: false,
            },
            Mount {
                host_path: ro.path().into(),
                guest_path: "/config".into(),
                read_only: true,
            },
        ];
        let (exit, out) = f.run("toolbox", launch).await;
        assert_eq!(
            std::fs::read_to_string(rw.path().join("out")).expect("written"),
            "written\n"
        );
        assert!(out.starts_with("value\n"), "{out}");
        assert!(
            out.contains("toolbox write: Operation not permitted"),
            "{out}"
        );
        assert_eq!(exit, Exit::Code(1), "writing a read-only mount fails");
        assert_eq!(
            std::fs::read_to_string(ro.path().join("key")).expect("intact"),
            "value"
        );
    }

    #[tokio::test]
    async fn nothing_of_the_host_is_visible() {
        let f = fixture();
        let (exit, out) = f.run("toolbox", argv(&["toolbox", "ls", "/"])).await;
        assert_eq!(exit, Exit::Code(1));
        assert!(
            out.contains("toolbox ls: No such file or directory"),
            "{out}"
        );
        let (_, out) = f.run("toolbox", argv(&["toolbox", "env"])).await;
        assert_eq!(out.trim(), "", "no ambient environment");
    }

    #[tokio::test]
    async fn a_kill_stops_a_spinning_guest_promptly() {
        let f = fixture();
        let pre = f.command("cpuspin").await;
        let log = LogFile::new(&f.logs.join("spin"), 0, Rotation::default());
        let kill = CancellationToken::new();
        let launch = argv(&["cpuspin"]);
        let run = tokio::spawn({
            let (kill, log) = (kill.clone(), Arc::clone(&log));
            async move { run_command(&pre, &launch, &log, None, &kill).await }
        });
        // Kill it mid-computation: once it has reported a second of work.
        wait_for_log(&log, "rate ").await;
        let asked = std::time::Instant::now();
        kill.cancel();
        let exit = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("stops")
            .expect("join");
        assert_eq!(exit.expect("ran"), Exit::Killed);
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "took {:?}",
            asked.elapsed()
        );
    }

    #[tokio::test]
    async fn sockets_live_on_the_pod_ip_and_reach_only_loopback() {
        let f = fixture();
        let third = (std::process::id() % 250) as u8;
        let net = Arc::new(crate::net::NodeNet::new(
            ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 91, third, 0), 24).expect("cidr"),
            Some("10.244.0.0/24".parse().expect("cidr")),
            std::net::Ipv4Addr::LOCALHOST,
            None,
        ));
        let address = |k| {
            let (ip, backing) = net.add_pod(k);
            PodAddress {
                ip,
                backing,
                net: Arc::clone(&net),
                namespace: "default".into(),
            }
        };
        let (server, client_addr) = (address(2), address(3));
        let (server_ip, server_backing) = (server.ip, server.backing);
        let pre = f.command("tcp-echo").await;
        let log = LogFile::new(&f.logs.join("echo"), 0, Rotation::default());
        let kill = CancellationToken::new();
        let mut launch = argv(&["echo"]);
        launch.env.push(("PORT".into(), "7000".into()));
        launch.pod_net = Some(server);
        let server = tokio::spawn({
            let (kill, log) = (kill.clone(), Arc::clone(&log));
            async move { run_command(&pre, &launch, &log, None, &kill).await }
        });
        // The guest bound 0.0.0.0:7000 (it says so); it is reachable on its pod address.
        wait_for_log(&log, "echo listening on").await;
        let mut conn = tokio::net::TcpStream::connect((server_backing, 7000))
            .await
            .expect("connect to the pod IP");
        tokio::io::AsyncWriteExt::write_all(&mut conn, b"ping")
            .await
            .expect("send");
        let mut buf = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut conn, &mut buf)
            .await
            .expect("echo");
        assert_eq!(&buf, b"ping");
        drop(conn);

        // Another pod reaches it by pod IP; an address outside the node is refused in the wasmlet.
        let mut client = argv(&[
            "toolbox",
            "connect",
            &format!("{server_ip}:7000"),
            "hello",
            "pod",
        ]);
        client.pod_net = Some(client_addr);
        let (exit, out) = f.run("toolbox", client.clone()).await;
        assert_eq!((exit, out.as_str()), (Exit::Code(0), "hello pod\n"));
        client.argv = ["toolbox", "connect", "10.0.0.1:80", "x"]
            .map(String::from)
            .to_vec();
        let (exit, out) = f.run("toolbox", client).await;
        assert_eq!(exit, Exit::Code(1));
        assert!(out.contains("toolbox connect: Permission denied"), "{out}");

        // Without a pod IP there are no sockets at all.
        let (_, out) = f
            .run(
                "toolbox",
                argv(&["toolbox", "connect", &format!("{server_ip}:7000"), "x"]),
            )
            .await;
        assert!(out.contains("toolbox connect:"), "{out}");
        kill.cancel();
        assert_eq!(server.await.expect("join").expect("ran"), Exit::Killed);
    }

    #[tokio::test]
    async fn http_requests_get_a_fresh_instance_each() {
        let f = fixture();
        let wasm = wasmkube_samples::guest("http-hello").expect("sample");
        let Prepared::Http(pre) =
            f.rt.prepare("http", || Ok(wasm.to_vec()))
                .await
                .expect("prepare")
        else {
            panic!("http-hello is a proxy");
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = LogFile::new(&f.logs.join("http"), 0, Rotation::default());
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_http(
            pre,
            Arc::new(argv(&["http"])),
            log,
            listener,
            stop.clone(),
            Duration::from_secs(1),
        ));
        for path in ["/one", "/two?x=1"] {
            let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            tokio::io::AsyncWriteExt::write_all(&mut conn, req.as_bytes())
                .await
                .expect("send");
            let mut resp = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut resp)
                .await
                .expect("read");
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
            assert!(
                resp.contains(&format!("Hello from wasmkube! GET {path}")),
                "{resp}"
            );
        }
        stop.cancel();
        assert_eq!(server.await.expect("join").expect("served"), Exit::Killed);
    }
}
