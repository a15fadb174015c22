//! The tasks a pod driver spawns for its worker's effects: preparing a container (volumes,
//! image, configuration), running an instance, opening host ports, writing status, and
//! reporting probe results. Each reports back to the driver's loop as an [`Internal`] event.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{OnceCell, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Internal, NodeCtx};
use crate::net::NodeNet;
use crate::net::podnet::PodAddress;
use crate::pod::events::Recorder;
use crate::pod::probe::ProbeKind;
use crate::pod::spec::{PodFacts, Sources};
use crate::pod::worker::{EventType, ImageFailure, PodEvent};
use crate::runtime::Prepared;
use crate::runtime::images::{Fetched, PullPolicy};
use crate::runtime::instance::{InstanceError, Launch, run_command, serve_http};
use crate::streaming::logs::LogFile;

/// Probe results into the pod's loop; each failed attempt is an `Unhealthy` event.
pub(super) struct ProbeReport {
    pub(super) tx: mpsc::Sender<Internal>,
    pub(super) recorder: Recorder,
    pub(super) pod: Arc<Pod>,
    pub(super) name: String,
    pub(super) container: usize,
    pub(super) instance: u32,
}

impl crate::pod::probe::Report for ProbeReport {
    fn result(&self, kind: ProbeKind, healthy: bool) {
        let event = Internal::Event(PodEvent::Probe {
            container: self.container,
            instance: self.instance,
            kind,
            healthy,
        });
        // A result change is never dropped: with the queue full it waits for room.
        if let Err(mpsc::error::TrySendError::Full(event)) = self.tx.try_send(event) {
            let tx = self.tx.clone();
            tokio::spawn(async move { tx.send(event).await });
        }
    }

    fn failed(&self, kind: ProbeKind, message: &str) {
        self.recorder.pod(
            &self.pod,
            Some(&self.name),
            EventType::Warning,
            "Unhealthy",
            format!("{} probe failed: {message}", kind.name()),
        );
    }
}

/// Opens a listener on the node address for every `hostPort`, forwarding to the pod, until
/// `cancel` (the pod's end). A port already taken is reported as a warning event.
pub(super) fn open_host_ports(
    ctx: &Arc<NodeCtx>,
    pod: &Arc<Pod>,
    address: &PodAddress,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) {
    let ports = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"));
    for p in ports {
        let (Some(host), Ok(target)) = (
            p.host_port.and_then(|h| u16::try_from(h).ok()),
            u16::try_from(p.container_port),
        ) else {
            continue;
        };
        let listen = SocketAddr::new(IpAddr::V4(ctx.net.node_ip), host);
        let listener = match std::net::TcpListener::bind(listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
        {
            Ok(l) => l,
            Err(e) => {
                ctx.recorder.pod(
                    pod,
                    None,
                    EventType::Warning,
                    "FailedHostPort",
                    format!("cannot listen on hostPort {listen}: {e}"),
                );
                continue;
            }
        };
        let dest = std::net::SocketAddrV4::new(address.ip, target);
        tasks.spawn(crate::net::forward(
            Arc::clone(&ctx.net),
            listener,
            move |_: &NodeNet, _| Ok(dest),
            cancel.clone(),
        ));
    }
}

/// The port a `wasi:http/proxy` container is served on: its first TCP `containerPort`, else 8080.
pub(super) fn http_port(c: &Container) -> u16 {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(8080)
}

pub(super) fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Pulls the image, compiles it, and resolves the container's configuration.
#[expect(clippy::too_many_arguments, reason = "one spawned task's inputs")]
pub(super) async fn prepare(
    ctx: Arc<NodeCtx>,
    pod: Arc<Pod>,
    c: Container,
    container: usize,
    volumes: VolumeSource,
    facts: PodFacts,
    address: Option<PodAddress>,
    tx: mpsc::Sender<Internal>,
) {
    let result = async {
        let config_error = |e: crate::pod::spec::ConfigError| ImageFailure {
            reason: "CreateContainerConfigError",
            message: e.0,
        };
        let volumes = volumes
            .get(&ctx, &pod, &facts)
            .await
            .map_err(config_error)?
            .clone();
        let image = c.image.clone().unwrap_or_default();
        let policy = PullPolicy::parse(c.image_pull_policy.as_deref(), &image);
        if policy != PullPolicy::IfNotPresent || ctx.images.stored(&image).is_none() {
            ctx.recorder.pod(
                &pod,
                Some(&c.name),
                EventType::Normal,
                "Pulling",
                format!("Pulling image {image:?}"),
            );
        }
        let (stored, fetched) =
            ctx.images
                .ensure(&image, policy)
                .await
                .map_err(|e| ImageFailure {
                    reason: "ErrImagePull",
                    message: e.to_string(),
                })?;
        let message = match fetched {
            Fetched::Present => format!("Container image {image:?} already present on machine"),
            Fetched::Pulled(took) => {
                format!(
                    "Successfully pulled image {image:?} in {took:?}. Image size: {} bytes.",
                    stored.size
                )
            }
        };
        ctx.recorder
            .pod(&pod, Some(&c.name), EventType::Normal, "Pulled", message);
        let path = ctx.images.layer_path(&stored.layer_digest);
        let prepared = ctx
            .runtime
            .prepare(&stored.layer_digest, move || std::fs::read(path))
            .await
            .map_err(|e| ImageFailure {
                reason: "CreateContainerError",
                message: format!("image {image:?}: {e}"),
            })?;
        let mut sources = Sources::new(
            ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            Arc::clone(&ctx.reads),
        );
        let mut launch = crate::pod::spec::launch(&pod, &c, &volumes, &facts, &mut sources)
            .await
            .map_err(config_error)?;
        launch.pod_net = address;
        Ok(Box::new((prepared, launch, stored.image_id)))
    }
    .await;
    let _ = tx.send(Internal::Prepared { container, result }).await;
}

/// Where a container instance's standard streams go.
pub(super) struct Stdio {
    /// Its log (stdout and stderr).
    pub log: Arc<LogFile>,
    /// Its stdin (none: EOF).
    pub stdin: Option<tokio::io::DuplexStream>,
}

/// Runs one container instance: a command to its exit, or an HTTP proxy until killed.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
pub(super) async fn instance(
    pre: Prepared,
    launch: Launch,
    stdio: Stdio,
    ip: Option<std::net::Ipv4Addr>,
    port: u16,
    grace: Duration,
    container: usize,
    kill: CancellationToken,
    tx: mpsc::Sender<Internal>,
) {
    let started = |at| Internal::Event(PodEvent::Started { container, at });
    // A failure on the node's side (sandbox, mounts, listener) is not the guest's exit.
    let host_failure = |message: String| {
        Internal::Event(PodEvent::StartFailed {
            container,
            reason: "RunContainerError",
            message,
        })
    };
    let Stdio { log, stdin } = stdio;
    let ended = match pre {
        Prepared::Command(pre) => {
            let _ = tx.send(started(Timestamp::now())).await;
            run_command(&pre, &launch, &log, stdin, &kill).await
        }
        Prepared::Http(pre) => {
            let addr = SocketAddr::new(
                IpAddr::V4(ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST)),
                port,
            );
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let _ = tx.send(started(Timestamp::now())).await;
                    log.note(&format!("serving wasi:http on http://{addr}/"));
                    serve_http(
                        pre,
                        Arc::new(launch),
                        Arc::clone(&log),
                        listener,
                        kill,
                        grace,
                    )
                    .await
                }
                Err(e) => Err(InstanceError::Listen { addr, source: e }),
            }
        }
    };
    log.close();
    let report = match ended {
        Ok(exit) => Internal::Event(PodEvent::Exited {
            container,
            exit,
            at: Timestamp::now(),
        }),
        Err(e) => {
            let message = wasmkube_api::error_chain(&e);
            log.note(&message);
            host_failure(message)
        }
    };
    let _ = tx.send(report).await;
}

/// The pod's volumes, prepared by the first container task that needs them and shared by
/// the rest (they read ConfigMaps and Secrets through the API, so never in the pod's loop).
pub(super) struct VolumeSource {
    pub(super) cell: Arc<OnceCell<Volumes>>,
    pub(super) dir: PathBuf,
    pub(super) claims: PathBuf,
    /// The pod's end, which stops the renewal of its tokens.
    pub(super) cancel: CancellationToken,
}

/// Volume name → (host directory, read-only).
pub(super) type Volumes = HashMap<String, (PathBuf, bool)>;

impl VolumeSource {
    /// The volumes, prepared on first success: a failure (an object missing, the API busy) is
    /// not kept, so the container's next attempt after its back-off tries again.
    async fn get(
        &self,
        ctx: &NodeCtx,
        pod: &Pod,
        facts: &PodFacts,
    ) -> Result<&Volumes, crate::pod::spec::ConfigError> {
        self.cell
            .get_or_try_init(|| async {
                let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                let mut sources = Sources::new(ctx.client.clone(), ns, Arc::clone(&ctx.reads));
                let volumes =
                    crate::pod::spec::volumes(pod, &self.dir, &self.claims, facts, &mut sources)
                        .await?;
                tracing::debug!(target: "podtrace", kind = "Pod", object = %format_args!("{ns}/{}", pod.metadata.name.as_deref().unwrap_or_default()), stage = "volumes ready");
                if !sources.tokens.is_empty() {
                    tokio::spawn(renew_tokens(
                        sources.accounts.clone(),
                        std::mem::take(&mut sources.tokens),
                        ctx.recorder.clone(),
                        Arc::new(pod.clone()),
                        self.cancel.clone(),
                    ));
                }
                Ok(volumes)
            })
            .await
    }
}

/// How long a failed renewal waits before the next try.
const TOKEN_RETRY: Duration = Duration::from_secs(10);

/// Renews the pod's projected tokens before they expire, until `cancel`: each file is replaced
/// whole (written beside it, then renamed), so a guest never reads half a token.
async fn renew_tokens(
    accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount>,
    mut files: Vec<crate::pod::spec::TokenFile>,
    recorder: crate::pod::events::Recorder,
    pod: Arc<Pod>,
    cancel: CancellationToken,
) {
    loop {
        let Some(next) = files.iter().map(|f| f.renew_at).min() else {
            return;
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(next.into()) => {}
        }
        let now = std::time::Instant::now();
        for f in files.iter_mut().filter(|f| f.renew_at <= now) {
            let renewed = crate::pod::spec::request_token(&accounts, &f.account, &f.request)
                .await
                .and_then(|(token, renew_at)| {
                    replace_file(&f.path, token.as_bytes()).map_err(|e| {
                        crate::pod::spec::ConfigError(format!("{}: {e}", f.path.display()))
                    })?;
                    Ok(renew_at)
                });
            f.renew_at = match renewed {
                Ok(at) => at,
                Err(e) => {
                    if cancel.is_cancelled() {
                        return;
                    }
                    recorder.pod(
                        &pod,
                        None,
                        EventType::Warning,
                        "FailedMount",
                        format!("token renewal: {e}"),
                    );
                    std::time::Instant::now() + TOKEN_RETRY
                }
            };
        }
    }
}

/// Replaces `path` with `bytes` in one step (a new file renamed over it).
fn replace_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".renewing");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// How long a pod's first status waits while it is still `Pending`.
const FIRST_PENDING_HOLD: Duration = Duration::from_millis(100);

fn pending(status: &Option<PodStatus>) -> bool {
    status
        .as_ref()
        .is_some_and(|s| s.phase.as_deref() == Some("Pending"))
}

/// Posts the latest status whenever it changes (coalescing bursts: a change made while a
/// write is in flight goes out when it returns, with whatever changed after it).
///
/// A pod's first status waits while it is `Pending`, up to [`FIRST_PENDING_HOLD`], for its
/// containers to start: a pod whose image is ready gets one write (`Running`) rather than
/// `Pending` with `Running` queued behind it.
pub(super) async fn write_status(
    client: Client,
    ns: String,
    name: String,
    mut rx: watch::Receiver<Option<PodStatus>>,
    cancel: CancellationToken,
) {
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let mut first = true;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        if std::mem::take(&mut first) && pending(&rx.borrow()) {
            let started = tokio::time::timeout(FIRST_PENDING_HOLD, rx.wait_for(|s| !pending(s)));
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = started => {}
            }
        }
        let Some(status) = rx.borrow_and_update().clone() else {
            continue;
        };
        let phase = status.phase.clone().unwrap_or_default();
        let patch = json!({"status": status});
        let written = pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        tracing::debug!(target: "podtrace", kind = "Pod", object = %format_args!("{ns}/{name}"), stage = "status written", %phase);
        if let Err(e) = written {
            match e {
                kube::Error::Api(s) if s.code == 404 => return,
                e => {
                    tracing::warn!(pod = %name, namespace = %ns, error = %e, "pod status update failed")
                }
            }
        }
    }
}
