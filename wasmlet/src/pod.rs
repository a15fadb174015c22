//! The pod driver: runs one [`PodWorker`] against the world. It feeds the worker events
//! (pod updates from the watch, images becoming ready, instances starting and ending, timers)
//! and carries out the effects it returns: pulling and compiling, starting and killing
//! instances, recording events, reporting status, and finally removing the pod.

pub(crate) mod events;
pub(crate) mod probe;
pub(crate) mod registry;
pub(crate) mod spec;
pub(crate) mod stats;
pub(crate) mod status;
mod tasks;
pub(crate) mod worker;

pub(crate) use registry::{IpPool, PodRegistry, Running};

use tasks::{
    ProbeReport, Stdio, VolumeSource, Volumes, grace_period, http_port, instance, open_host_ports,
    prepare, write_status,
};

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use kube::api::{DeleteParams, Preconditions};
use kube::{Api, Client};
use tokio::sync::{OnceCell, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::NodeNet;
use crate::net::podnet::PodAddress;
use crate::pod::events::Recorder;
use crate::pod::probe::{ContainerProbes, Prober};
use crate::pod::spec::PodFacts;
use crate::pod::status::{Addresses, pod_status};
use crate::pod::worker::{
    Backoff, Effect, ImageFailure, PodEvent, PodWorker, Probes, RestartPolicy, Stage,
};
use crate::runtime::images::Images;
use crate::runtime::instance::{Exit, Launch};
use crate::runtime::usage::Usage;
use crate::runtime::{Prepared, Runtime};
use crate::streaming::attach::ContainerStdin;
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
    /// ConfigMap and Secret reads in flight, shared by pods starting together.
    pub reads: Arc<crate::pod::spec::SharedReads>,
}

/// Messages into the driver loop.
enum Internal {
    Event(PodEvent),
    Prepared {
        container: usize,
        result: Result<Box<(Prepared, Launch, String)>, ImageFailure>,
    },
}

/// How many events from a pod's tasks (pulls, instances, timers, probes) wait for its loop;
/// when full, senders wait for room (nothing is dropped), which the loop makes by draining.
const EVENTS: usize = 64;

/// Whether the node lifecycle controller marked `pod` not Ready because its node stopped
/// reporting.
fn marked_unreachable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "Ready" && c.reason.as_deref() == Some(wasmkube_api::NODE_UNREACHABLE_REASON)
        })
}

/// Runs the pod until it has been removed from the API (or vanished from it). `updates`
/// carries the latest pod object; `None` means the pod is gone from the API.
pub(crate) async fn run(ctx: Arc<NodeCtx>, mut updates: watch::Receiver<Option<Arc<Pod>>>) {
    // For kubelet_pod_start_duration_seconds: from here to the first Running.
    let seen = std::time::Instant::now();
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
    let mut containers: Vec<Container> = spec
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
    let mut probes: Vec<ContainerProbes> = containers
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
    ctx.pods.update(&key, |l| {
        l.dir = dir.clone();
        l.uid = pod.metadata.uid.clone().unwrap_or_default();
        l.started.get_or_insert_with(std::time::SystemTime::now);
    });

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
        service_env: ctx.net.services.read().expect("net lock").link_env(
            &ns,
            pod.spec
                .as_ref()
                .and_then(|s| s.enable_service_links)
                .unwrap_or(true),
        ),
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
    let mut start_counted = false;
    // Whether the node's Services were told this pod is ready.
    let mut ready_here = false;

    loop {
        // `kubectl debug`: ephemeral containers in the spec and not yet here (added since, or
        // there when this worker began: a wasmlet that restarts runs the whole pod again) are
        // started once.
        if !finished && pod.metadata.deletion_timestamp.is_none() {
            for c in new_ephemeral(&pod, &containers) {
                let i = worker.add_ephemeral(c.name.clone());
                containers.push(c);
                prepared.push(None);
                kills.push(None);
                probing.push(None);
                probes.push(ContainerProbes::default());
                pending.push_back(PodEvent::EphemeralAdded { container: i });
            }
        }
        while let Some(event) = pending.pop_front() {
            let effects = worker.step(event, Timestamp::now());
            for effect in effects {
                match effect {
                    Effect::Pull { container } => {
                        let volumes = VolumeSource {
                            cell: Arc::clone(&volumes),
                            dir: dir.join("volumes"),
                            claims: ctx.claims_dir.join(&ns),
                            cancel: cancel.clone(),
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
                        // Each start is a new container to the resource metrics.
                        let launch = Launch {
                            usage: Usage::new(),
                            ..launch
                        };
                        let kill = CancellationToken::new();
                        kills[container] = Some(kill.clone());
                        let restart = worker.containers[container].restart_count;
                        let log_dir = dir.join(&containers[container].name);
                        let cname = containers[container].name.clone();
                        // `stdin: true`: Some(stdinOnce).
                        let wants_stdin = containers[container]
                            .stdin
                            .unwrap_or(false)
                            .then(|| containers[container].stdin_once.unwrap_or(false));
                        let port = http_port(&containers[container]);
                        let grace = grace_period(&pod);
                        let ip = address.as_ref().map(|a| a.backing);
                        let (ctx, key, tx) = (Arc::clone(&ctx), key.clone(), tx.clone());
                        tasks.spawn(async move {
                            let log = LogFile::new(&log_dir, restart, ctx.rotation);
                            // A command container asking for stdin gets a pipe attach
                            // sessions write into; others read EOF.
                            let (stdin, guest_stdin) = match (&pre, wants_stdin) {
                                (Prepared::Command(_), Some(once)) => {
                                    let (s, guest) = ContainerStdin::new(once);
                                    (Some(s), Some(guest))
                                }
                                _ => (None, None),
                            };
                            let running = Running {
                                prepared: pre.clone(),
                                launch: launch.clone(),
                                log: Arc::clone(&log),
                                stdin,
                            };
                            ctx.pods.update(&key, |l| {
                                l.running.insert(cname.clone(), running);
                                l.containers
                                    .insert(cname, (restart, Some(Arc::clone(&log))));
                            });
                            let stdio = Stdio {
                                log,
                                stdin: guest_stdin,
                            };
                            instance(pre, launch, stdio, ip, port, grace, container, kill, tx)
                                .await;
                        });
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
            let status = pod_status(
                &pod,
                last_status.as_ref(),
                &worker,
                &addrs,
                Timestamp::now(),
            );
            let ready = is_ready(&status) && pod.metadata.deletion_timestamp.is_none();
            if ready != ready_here
                && let Some(a) = address.as_ref().filter(|_| !host_network)
            {
                ready_here = ready;
                ctx.net
                    .set_ready_here(a.ip, ready.then(|| ready_pod(&pod, &ns)));
            }
            if last_status.as_ref() != Some(&status) {
                if !start_counted && status.phase.as_deref() == Some("Running") {
                    start_counted = true;
                    crate::metrics::pod_started(seen.elapsed());
                }
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
                        // The control plane lost this node for a while and marked the pod not
                        // Ready: now that it hears from it again, say what is true.
                        if marked_unreachable(&p) && last_status.is_some() {
                            let _ = status_tx.send(last_status.clone());
                        }
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
                    if let PodEvent::Started { .. } = &e {
                        tracing::debug!(target: "podtrace", kind = "Pod", object = %format_args!("{ns}/{name}"), stage = "instance started");
                    }
                    if let PodEvent::Exited { container, exit: Exit::OomKilled(_), .. } = &e {
                        crate::metrics::oom_killed(&ns, &name, &containers[*container].name);
                    }
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
                    let result = result.map(|ready| {
                        let (pre, launch, image_id) = *ready;
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
    if ready_here && let Some(a) = &address {
        ctx.net.set_ready_here(a.ip, None);
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

/// The ephemeral containers of `pod` not among `known`, as containers to run (they share a
/// container's fields; `targetContainerName` has no meaning here: a pod's instances share no
/// process namespace).
fn new_ephemeral(pod: &Pod, known: &[Container]) -> Vec<Container> {
    pod.spec
        .iter()
        .flat_map(|s| s.ephemeral_containers.iter().flatten())
        .filter(|e| !known.iter().any(|c| c.name == e.name))
        .filter_map(|e| {
            serde_json::to_value(e)
                .and_then(serde_json::from_value::<Container>)
                .ok()
        })
        .collect()
}

/// Whether a status says the pod is Ready.
fn is_ready(status: &PodStatus) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// What the node's Services need of a ready pod: namespace, labels, container ports.
fn ready_pod(pod: &Pod, namespace: &str) -> crate::net::ReadyPod {
    crate::net::ReadyPod {
        namespace: namespace.to_owned(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ports: pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect(),
    }
}
