//! The pod driver: runs one [`PodWorker`] against the world. It feeds the worker events
//! (pod updates from the watch, images becoming ready, instances starting and ending, timers)
//! and carries out the effects it returns: pulling and compiling, starting and killing
//! instances, recording events, reporting status, and finally removing the pod.

pub(crate) mod events;
pub(crate) mod probe;
pub(crate) mod spec;
pub(crate) mod status;
pub(crate) mod worker;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{OnceCell, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::NodeNet;
use crate::net::podnet::PodAddress;
use crate::pod::events::Recorder;
use crate::pod::probe::{ContainerProbes, ProbeKind, Prober};
use crate::pod::spec::{PodFacts, Sources};
use crate::pod::status::{Addresses, pod_status};
use crate::pod::worker::{
    Backoff, Effect, EventType, ImageFailure, PodEvent, PodWorker, Probes, RestartPolicy, Stage,
};
use crate::runtime::images::{Fetched, Images, PullPolicy};
use crate::runtime::instance::{InstanceError, Launch, run_command, serve_http};
use crate::runtime::{Prepared, Runtime};
use crate::streaming::logs::{LogFile, Rotation};

/// What every pod driver of the node shares.
pub(crate) struct NodeCtx {
    /// The API client.
    pub client: Client,
    /// This node's name.
    pub node_name: String,
    /// This node's address (`status.hostIP`).
    pub host_ip: String,
    /// The engine.
    pub runtime: Arc<Runtime>,
    /// The image store.
    pub images: Arc<Images>,
    /// The event recorder.
    pub recorder: Recorder,
    /// `<data dir>/pods`.
    pub pods_dir: PathBuf,
    /// `<data dir>/claims`: persistent per-claim directories (outlive pods).
    pub claims_dir: PathBuf,
    /// Crash and pull back-off.
    pub backoff: Backoff,
    /// Log rotation.
    pub rotation: Rotation,
    /// Pod address offsets.
    pub ips: Mutex<IpPool>,
    /// The node's pod network.
    pub net: Arc<NodeNet>,
    /// Live log files, for `follow`.
    pub pods: Arc<PodRegistry>,
}

/// Pod address offsets: offset `k` is the `k`-th address of the node's pod CIDR and of its
/// loopback range alike (`.0` and `.1` are the network and the node's own relay address).
#[derive(Debug)]
pub(crate) struct IpPool {
    capacity: u32,
    next: u32,
    used: std::collections::HashSet<u32>,
}

impl IpPool {
    /// A pool of `capacity` offsets, from 2.
    pub(crate) fn new(capacity: u32) -> Self {
        Self {
            capacity,
            next: 0,
            used: Default::default(),
        }
    }

    /// A free offset, if any.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        for _ in 0..self.capacity {
            let offset = 2 + self.next;
            self.next = (self.next + 1) % self.capacity.max(1);
            if self.used.insert(offset) {
                return Some(offset);
            }
        }
        None
    }

    /// Returns an offset to the pool.
    pub(crate) fn release(&mut self, offset: u32) {
        self.used.remove(&offset);
    }
}

/// The pods this node runs, keyed by (namespace, name): where each one's logs are, its
/// running instances and its address; what the node's endpoint serves (`pods/log`,
/// `pods/exec`, `pods/portforward`).
#[derive(Default)]
pub(crate) struct PodRegistry {
    pods: Mutex<HashMap<(String, String), PodEntry>>,
}

/// One pod on this node: its log directories and live files, running instances, address.
#[derive(Clone, Default)]
pub(crate) struct PodEntry {
    /// `<pods dir>/<ns>_<name>_<uid>`.
    pub dir: PathBuf,
    /// Container name → (current restart index, its live log file while running).
    pub containers: HashMap<String, (u32, Option<Arc<LogFile>>)>,
    /// Container name → its prepared image and launch while an instance runs (for exec).
    pub running: HashMap<String, (Prepared, Launch)>,
    /// Where port forwarding connects (none before the pod has an address).
    pub forward: Option<crate::streaming::portforward::Target>,
}

impl PodRegistry {
    /// The logs of a pod, if it runs here.
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<PodEntry> {
        self.pods
            .lock()
            .expect("pod registry lock")
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    fn update(&self, key: &(String, String), f: impl FnOnce(&mut PodEntry)) {
        f(self
            .pods
            .lock()
            .expect("pod registry lock")
            .entry(key.clone())
            .or_default());
    }

    fn remove(&self, key: &(String, String)) {
        self.pods.lock().expect("pod registry lock").remove(key);
    }
}

/// Messages into the driver loop.
enum Internal {
    Event(PodEvent),
    Prepared {
        container: usize,
        result: Result<(Prepared, Launch, String), ImageFailure>,
    },
}

/// How many events from a pod's tasks (pulls, instances, timers, probes) wait for its loop;
/// when full, senders wait for room (nothing is dropped), which the loop makes by draining.
const EVENTS: usize = 64;

/// Runs the pod until it has been removed from the API (or vanished from it). `updates`
/// carries the latest pod object; `None` means the pod is gone from the API.
pub(crate) async fn run(ctx: Arc<NodeCtx>, mut updates: watch::Receiver<Option<Arc<Pod>>>) {
    let Some(mut pod) = updates.borrow_and_update().clone() else {
        return;
    };
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let key = (ns.clone(), name.clone());
    let dir = ctx.pods_dir.join(format!("{ns}_{name}_{uid}"));
    let spec = pod.spec.clone().unwrap_or_default();
    let containers: Vec<Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .cloned()
        .collect();
    let init: Vec<String> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    let app: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
    let mut worker = PodWorker::new(
        &init,
        &app,
        RestartPolicy::parse(spec.restart_policy.as_deref()),
        ctx.backoff,
    );
    let probes: Vec<ContainerProbes> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < init.len() {
                return ContainerProbes::default();
            }
            let p = ContainerProbes::of(c);
            worker.set_probes(
                i,
                Probes {
                    startup: p.startup.is_some(),
                    liveness: p.liveness.is_some(),
                    readiness: p.readiness.is_some(),
                },
            );
            p
        })
        .collect();
    ctx.pods.update(&key, |l| l.dir = dir.clone());

    // A pod that finished before this wasmlet started is not run again.
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    let host_network = spec.host_network == Some(true);
    let offset = if finished || host_network {
        None
    } else {
        ctx.ips.lock().expect("ip pool lock").allocate()
    };
    let address = match offset {
        Some(k) => {
            let (ip, backing) = ctx.net.add_pod(k);
            Some(PodAddress {
                ip,
                backing,
                net: Arc::clone(&ctx.net),
                namespace: ns.clone(),
            })
        }
        // `hostNetwork` pods use the node's address.
        None if host_network && !finished => Some(PodAddress {
            ip: ctx.net.node_ip,
            backing: ctx.net.node_ip,
            net: Arc::clone(&ctx.net),
            namespace: ns.clone(),
        }),
        None => None,
    };
    if let Some(a) = &address {
        let target = crate::streaming::portforward::Target {
            net: Arc::clone(&ctx.net),
            pod_ip: a.ip,
            pod: format!("{ns}/{name}"),
        };
        ctx.pods.update(&key, |l| l.forward = Some(target));
    }
    let addrs = Addresses {
        host_ip: ctx.host_ip.clone(),
        pod_ip: address
            .as_ref()
            .map(|a| a.ip.to_string())
            .unwrap_or_default(),
    };
    let facts = PodFacts {
        host_ip: addrs.host_ip.clone(),
        pod_ip: addrs.pod_ip.clone(),
        node_name: ctx.node_name.clone(),
    };

    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel::<Internal>(EVENTS);
    let (status_tx, status_rx) = watch::channel::<Option<PodStatus>>(None);
    tasks.spawn(write_status(
        ctx.client.clone(),
        ns.clone(),
        name.clone(),
        status_rx,
        cancel.clone(),
    ));

    if let Some(a) = &address
        && !host_network
    {
        open_host_ports(&ctx, &pod, a, &tasks, &cancel);
    }

    let mut prepared: Vec<Option<(Prepared, Launch)>> = vec![None; containers.len()];
    let mut kills: Vec<Option<CancellationToken>> = vec![None; containers.len()];
    let mut probing: Vec<Option<CancellationToken>> = vec![None; containers.len()];
    // Written once, by the first container that needs them (a task, not the loop).
    let volumes: Arc<OnceCell<Volumes>> = Arc::default();
    let mut gone_from_api = false;
    let mut removed = false;
    let mut pending = VecDeque::new();
    if !finished {
        pending.push_back(PodEvent::Begin);
    }
    let mut last_status: Option<PodStatus> = None;

    loop {
        while let Some(event) = pending.pop_front() {
            let effects = worker.step(event, Timestamp::now());
            for effect in effects {
                match effect {
                    Effect::Pull { container } => {
                        let volumes = VolumeSource {
                            cell: Arc::clone(&volumes),
                            dir: dir.join("volumes"),
                            claims: ctx.claims_dir.join(&ns),
                        };
                        tasks.spawn(prepare(
                            Arc::clone(&ctx),
                            Arc::clone(&pod),
                            containers[container].clone(),
                            container,
                            volumes,
                            facts.clone(),
                            address.clone(),
                            tx.clone(),
                        ));
                    }
                    Effect::Start { container } => {
                        let Some((pre, launch)) = prepared[container].clone() else {
                            continue;
                        };
                        let kill = CancellationToken::new();
                        kills[container] = Some(kill.clone());
                        let restart = worker.containers[container].restart_count;
                        let log_dir = dir.join(&containers[container].name);
                        let log = match LogFile::create(&log_dir, restart, ctx.rotation) {
                            Ok(l) => l,
                            Err(e) => {
                                kills[container] = None;
                                pending.push_back(PodEvent::StartFailed {
                                    container,
                                    reason: "CreateContainerError",
                                    message: format!("cannot create the log file: {e}"),
                                });
                                continue;
                            }
                        };
                        let cname = containers[container].name.clone();
                        let (pre2, launch2) = (pre.clone(), launch.clone());
                        ctx.pods.update(&key, |l| {
                            l.running.insert(cname.clone(), (pre2, launch2));
                            l.containers
                                .insert(cname, (restart, Some(Arc::clone(&log))));
                        });
                        let port = http_port(&containers[container]);
                        let grace = grace_period(&pod);
                        tasks.spawn(instance(
                            pre,
                            launch,
                            log,
                            address.as_ref().map(|a| a.backing),
                            port,
                            grace,
                            container,
                            kill,
                            tx.clone(),
                        ));
                    }
                    Effect::Kill { container } => {
                        if let Some(k) = kills[container].take() {
                            k.cancel();
                        }
                    }
                    Effect::Probe {
                        container,
                        instance,
                    } => {
                        let Some(a) = &address else { continue };
                        let stop = cancel.child_token();
                        if let Some(old) = probing[container].replace(stop.clone()) {
                            old.cancel();
                        }
                        let prober = Prober {
                            net: Arc::clone(&ctx.net),
                            pod_ip: a.ip,
                            exec: prepared[container].clone(),
                        };
                        let report = Arc::new(ProbeReport {
                            tx: tx.clone(),
                            recorder: ctx.recorder.clone(),
                            pod: Arc::clone(&pod),
                            name: containers[container].name.clone(),
                            container,
                            instance,
                        });
                        let probes = probes[container].clone();
                        tasks.spawn(async move {
                            tokio::select! {
                                () = stop.cancelled() => {}
                                () = crate::pod::probe::run(prober, probes, report) => {}
                            }
                        });
                    }
                    Effect::StopProbes { container } => {
                        if let Some(stop) = probing[container].take() {
                            stop.cancel();
                        }
                    }
                    Effect::After { delay, event } => {
                        let (tx, cancel) = (tx.clone(), cancel.clone());
                        tasks.spawn(async move {
                            tokio::select! {
                                () = cancel.cancelled() => {}
                                () = tokio::time::sleep(delay) => { let _ = tx.send(Internal::Event(event)).await; }
                            }
                        });
                    }
                    Effect::Event {
                        container,
                        kind,
                        reason,
                        message,
                    } => {
                        let c = container.map(|i| containers[i].name.as_str());
                        ctx.recorder.pod(&pod, c, kind, reason, message);
                    }
                    // Every container has stopped: leave the loop, say goodbye to the API
                    // and clean up.
                    Effect::Remove => removed = true,
                }
            }
        }
        if !finished && worker.stage != Stage::Gone {
            let status = pod_status(&pod, &worker, &addrs, Timestamp::now());
            if last_status.as_ref() != Some(&status) {
                last_status = Some(status.clone());
                let _ = status_tx.send(Some(status));
            }
        }
        let deleting = pod.metadata.deletion_timestamp.is_some() || gone_from_api;
        if removed || (finished && deleting) {
            break;
        }
        tokio::select! {
            changed = updates.changed() => {
                let latest = if changed.is_ok() { updates.borrow_and_update().clone() } else { None };
                match latest {
                    Some(p) => {
                        let deleted = p.metadata.deletion_timestamp.is_some();
                        pod = p;
                        if deleted {
                            pending.push_back(PodEvent::Delete);
                        }
                    }
                    None => {
                        gone_from_api = true;
                        pending.push_back(PodEvent::Delete);
                    }
                }
            }
            Some(msg) = rx.recv() => match msg {
                Internal::Event(e) => {
                    if let PodEvent::Exited { container, .. } | PodEvent::StartFailed { container, .. } = &e {
                        kills[*container] = None;
                        let cname = containers[*container].name.clone();
                        ctx.pods.update(&key, |l| {
                            l.running.remove(&cname);
                            if let Some(entry) = l.containers.get_mut(&cname) {
                                entry.1 = None;
                            }
                        });
                    }
                    pending.push_back(e);
                }
                Internal::Prepared { container, result } => {
                    let result = result.map(|(pre, launch, image_id)| {
                        prepared[container] = Some((pre, launch));
                        image_id
                    });
                    pending.push_back(PodEvent::ImageReady { container, result });
                }
            },
        }
    }

    // Everything has stopped: say goodbye to the API, then clean up.
    cancel.cancel();
    for k in kills.iter().flatten() {
        k.cancel();
    }
    if !gone_from_api {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %name, namespace = %ns, error = %e, "could not remove the pod")
            }
        }
    }
    tasks.close();
    tasks.wait().await;
    if let (Some(k), Some(a)) = (offset, &address) {
        ctx.net.remove_pod(a.ip);
        ctx.ips.lock().expect("ip pool lock").release(k);
    }
    ctx.pods.remove(&key);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Probe results into the pod's loop; each failed attempt is an `Unhealthy` event.
struct ProbeReport {
    tx: mpsc::Sender<Internal>,
    recorder: Recorder,
    pod: Arc<Pod>,
    name: String,
    container: usize,
    instance: u32,
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
fn open_host_ports(
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
fn http_port(c: &Container) -> u16 {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(8080)
}

fn grace_period(pod: &Pod) -> Duration {
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
async fn prepare(
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
            .clone()
            .map_err(config_error)?;
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
        );
        let mut launch = crate::pod::spec::launch(&pod, &c, &volumes, &facts, &mut sources)
            .await
            .map_err(config_error)?;
        launch.pod_net = address;
        Ok((prepared, launch, stored.image_id))
    }
    .await;
    let _ = tx.send(Internal::Prepared { container, result }).await;
}

/// Runs one container instance: a command to its exit, or an HTTP proxy until killed.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
async fn instance(
    pre: Prepared,
    launch: Launch,
    log: Arc<LogFile>,
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
    let ended = match pre {
        Prepared::Command(pre) => {
            let _ = tx.send(started(Timestamp::now())).await;
            run_command(&pre, &launch, &log, &kill).await
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
struct VolumeSource {
    cell: Arc<OnceCell<Volumes>>,
    dir: PathBuf,
    claims: PathBuf,
}

/// Volume name → (host directory, read-only), or why they could not be prepared.
type Volumes = Result<HashMap<String, (PathBuf, bool)>, crate::pod::spec::ConfigError>;

impl VolumeSource {
    async fn get(&self, ctx: &NodeCtx, pod: &Pod, facts: &PodFacts) -> &Volumes {
        self.cell
            .get_or_init(|| async {
                let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                let mut sources = Sources::new(ctx.client.clone(), ns);
                crate::pod::spec::volumes(pod, &self.dir, &self.claims, facts, &mut sources).await
            })
            .await
    }
}

/// Posts the latest status whenever it changes (coalescing bursts).
async fn write_status(
    client: Client,
    ns: String,
    name: String,
    mut rx: watch::Receiver<Option<PodStatus>>,
    cancel: CancellationToken,
) {
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let Some(status) = rx.borrow_and_update().clone() else {
            continue;
        };
        let patch = json!({"status": status});
        if let Err(e) = pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            match e {
                kube::Error::Api(s) if s.code == 404 => return,
                e => {
                    tracing::warn!(pod = %name, namespace = %ns, error = %e, "pod status update failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_are_unique_and_reused_after_release() {
        let mut pool = IpPool::new(5);
        let got: Vec<_> = std::iter::from_fn(|| pool.allocate()).collect();
        assert_eq!(got, [2, 3, 4, 5, 6]);
        pool.release(got[2]);
        assert_eq!(pool.allocate(), Some(got[2]));
        assert_eq!(pool.allocate(), None);
    }
}
