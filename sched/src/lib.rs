//! The scheduler: places pods that have no node yet, like kube-scheduler, as an out-of-tree
//! client of the API server.
//!
//! ```text
//! watch pods + nodes (kube-runtime watcher) ─► cache (nodes, placed and assumed pods)
//!                       └─► queue (active / backoff / unschedulable)
//! pop ─► Profile::schedule (filters → scores, equivalence cache) ─► assume ─► bind (async,
//!        pods/binding) ─► confirmed by the watch, or forgotten and retried
//!    └─► no fit: FailedScheduling event + PodScheduled=False, parked until the cluster changes
//! ```
//!
//! Plugins ([`framework::Filter`], [`framework::Score`]) are pure functions of a pod and a
//! node; all IO is in this file.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasmkube_sched::Error> {
//! let config = wasmkube_sched::Config {
//!     api: wasmkube_client::Source::kubeconfig("/var/lib/wasmkube/kubeconfig"),
//!     ..Default::default()
//! };
//! wasmkube_sched::run(config, tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KEvent, EventType, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wasmkube_client::events::Recorder;

pub mod algorithm;
pub mod framework;
mod metrics;
pub mod plugins;
pub mod queue;

use crate::algorithm::{EquivalenceCache, Profile};
use crate::framework::{NodeInfo, PodInfo};
use crate::queue::SchedulingQueue;

/// How to run the scheduler.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to reach the API servers.
    pub api: wasmkube_client::Source,
    /// Pods with this `spec.schedulerName` are ours.
    pub scheduler_name: String,
    /// A fixed `percentageOfNodesToScore` (none: adaptive, as kube-scheduler).
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Schedule only while holding this Lease (kube-scheduler's `--leader-elect`), so that
    /// one of several schedulers acts; none: always.
    pub leader_election: Option<wasmkube_client::leader::Election>,
}

impl Config {
    /// The default scheduler.
    pub fn new() -> Self {
        Self {
            api: wasmkube_client::Source::infer(),
            scheduler_name: "default-scheduler".into(),
            percentage_of_nodes_to_score: None,
            leader_election: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

/// Why it could not run: the API servers cannot be reached (no configuration).
pub use wasmkube_client::Error;

/// Nodes and the pods placed on them (bound or assumed).
#[derive(Default)]
struct Cache {
    nodes: BTreeMap<String, NodeInfo>,
    /// Pod key → (node, pod, assumed-but-not-yet-seen-bound).
    placed: HashMap<String, (String, PodInfo, bool)>,
}

impl Cache {
    fn place(&mut self, node: &str, pod: PodInfo, assumed: bool) {
        let key = pod.key();
        self.unplace(&key);
        if let Some(n) = self.nodes.get_mut(node) {
            n.add_pod(&pod);
        }
        self.placed.insert(key, (node.to_owned(), pod, assumed));
    }

    fn unplace(&mut self, key: &str) -> bool {
        match self.placed.remove(key) {
            Some((node, pod, _)) => {
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.remove_pod(&pod);
                }
                true
            }
            None => false,
        }
    }

    fn set_node(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        match self.nodes.get_mut(&name) {
            Some(n) => n.set_node(node),
            None => {
                let mut info = NodeInfo::new(node);
                for (n, pod, _) in self.placed.values() {
                    if *n == name {
                        info.add_pod(pod);
                    }
                }
                self.nodes.insert(name, info);
            }
        }
    }
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

struct Scheduler {
    cfg: Config,
    client: Client,
    recorder: Recorder,
    profile: Profile,
    cache: Cache,
    queue: SchedulingQueue,
    equivalence: EquivalenceCache,
    next_start: usize,
    /// Bind results from the bind tasks; when full, a bind task waits (the loop drains it).
    binds: mpsc::Sender<Bound>,
}

impl Scheduler {
    fn pod_event(&mut self, pod: Pod) {
        let info = PodInfo::new(pod);
        let key = info.key();
        let spec = info.pod.spec.as_ref();
        let node = spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        match node {
            Some(node) => {
                self.queue.remove(&key);
                if terminal(&info.pod) {
                    if self.cache.unplace(&key) {
                        self.queue.cluster_changed(Instant::now());
                    }
                } else {
                    self.cache.place(&node, info, false);
                }
            }
            None => {
                let ours = spec
                    .and_then(|s| s.scheduler_name.as_deref())
                    .unwrap_or("default-scheduler")
                    == self.cfg.scheduler_name;
                let assumed = self.cache.placed.get(&key).is_some_and(|(_, _, a)| *a);
                if ours && !assumed && info.pod.metadata.deletion_timestamp.is_none() {
                    tracing::debug!(target: "podtrace", kind = "Pod", object = %key, stage = "queued");
                    self.queue.add(info);
                }
            }
        }
    }

    fn pod_deleted(&mut self, pod: &Pod) {
        let key = PodInfo::new(pod.clone()).key();
        self.queue.remove(&key);
        if self.cache.unplace(&key) {
            self.queue.cluster_changed(Instant::now());
        }
    }

    fn schedule_one(&mut self) {
        let now = Instant::now();
        let Some(pod) = self.queue.pop(now) else {
            return;
        };
        let key = pod.key();
        let nodes: Vec<&NodeInfo> = self.cache.nodes.values().collect();
        self.next_start = self.next_start.wrapping_add(1);
        let start = if nodes.is_empty() {
            0
        } else {
            self.next_start % nodes.len()
        };
        match self
            .profile
            .schedule(&pod, &nodes, start, &mut self.equivalence)
        {
            Ok(decision) => {
                tracing::debug!(pod = %key, node = %decision.node, evaluated = decision.evaluated, feasible = decision.feasible, "scheduled");
                tracing::debug!(target: "podtrace", kind = "Pod", object = %key, stage = "decided");
                self.cache.place(&decision.node, pod.clone(), true);
                let (client, tx) = (self.client.clone(), self.binds.clone());
                tokio::spawn(async move {
                    let result = bind(&client, &pod, &decision.node).await;
                    let _ = tx.send((pod, decision.node, result, now)).await;
                });
            }
            Err(fit) => {
                self.queue.failed(&key, true, now);
                metrics::attempt(&self.cfg.scheduler_name, "unschedulable", now.elapsed());
                let message = fit.to_string();
                tracing::debug!(pod = %key, %message, "unschedulable");
                self.report_unschedulable(&pod, message);
                if let Some((node, victims)) = self.profile.select_victims(&pod, &nodes) {
                    self.preempt(&pod, &node, victims);
                }
            }
        }
    }

    fn bound(&mut self, (pod, node, result, started): Bound) {
        let key = pod.key();
        let outcome = if result.is_ok() { "scheduled" } else { "error" };
        metrics::attempt(&self.cfg.scheduler_name, outcome, started.elapsed());
        match result {
            Ok(()) => {
                tracing::debug!(target: "podtrace", kind = "Pod", object = %key, stage = "bind answered");
                self.queue.done(&key);
                let message = format!("Successfully assigned {key} to {node}");
                self.event(&pod, EventType::Normal, "Scheduled", "Binding", message);
            }
            Err(e) => {
                self.cache.unplace(&key);
                self.queue.cluster_changed(Instant::now());
                if matches!(&e, kube::Error::Api(s) if s.code == 404) {
                    self.queue.remove(&key);
                    return;
                }
                tracing::warn!(pod = %key, %node, error = %e, "binding failed");
                self.queue.failed(&key, false, Instant::now());
                self.event(
                    &pod,
                    EventType::Warning,
                    "FailedScheduling",
                    "Scheduling",
                    format!("Binding rejected: {e}"),
                );
            }
        }
    }

    /// Evicts `victims` so `pod` fits on `node` once they are gone; the pod waits for that with
    /// `status.nominatedNodeName` set (Borg: prod preempts batch).
    fn preempt(&self, pod: &PodInfo, node: &str, victims: Vec<PodInfo>) {
        tracing::info!(pod = %pod.key(), %node, victims = victims.len(), "preempting lower-priority pods");
        for v in victims {
            let note = format!("Preempted by pod {} on node {node}", pod.key());
            self.event(&v, EventType::Normal, "Preempted", "Preempting", note);
            let client = self.client.clone();
            tokio::spawn(async move {
                let pods: Api<Pod> = Api::namespaced(
                    client,
                    v.pod.metadata.namespace.as_deref().unwrap_or("default"),
                );
                let name = v.pod.metadata.name.clone().unwrap_or_default();
                if let Err(e) = pods.delete(&name, &Default::default()).await {
                    tracing::debug!(error = %e, "could not delete a preemption victim");
                }
            });
        }
        self.patch_status(pod, json!({"status": {"nominatedNodeName": node}}));
    }

    fn report_unschedulable(&self, pod: &PodInfo, message: String) {
        self.event(
            pod,
            EventType::Warning,
            "FailedScheduling",
            "Scheduling",
            message.clone(),
        );
        // PodScheduled=False with the reason, as kubectl describe shows it.
        self.patch_status(
            pod,
            json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                "lastTransitionTime": jiff::Timestamp::now().to_string(),
            }]}}),
        );
    }

    /// Merge-patches `pod`'s status in the background (the next decision does not wait).
    fn patch_status(&self, pod: &PodInfo, status: serde_json::Value) {
        let ns = pod.pod.metadata.namespace.as_deref().unwrap_or("default");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let name = pod.pod.metadata.name.clone().unwrap_or_default();
        tokio::spawn(async move {
            let _ = pods
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await;
        });
    }

    fn event(&self, pod: &PodInfo, type_: EventType, reason: &str, action: &str, note: String) {
        let event = KEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        self.recorder.record(event, pod.pod.object_ref(&()));
    }
}

async fn bind(client: &Client, pod: &PodInfo, node: &str) -> Result<(), kube::Error> {
    let ns = pod.pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.pod.metadata.name.as_deref().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}
    });
    pods.create_subresource::<_, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &binding,
    )
    .await?;
    Ok(())
}

/// Runs the scheduler until `shutdown`.
///
/// # Errors
/// [`Error`] when it cannot reach the cluster at start.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let client = wasmkube_client::connect(&cfg.api).await?.client;
    match cfg.leader_election.clone() {
        Some(election) => {
            election
                .run(client.clone(), shutdown, |leading| {
                    run_with_client(cfg.clone(), client.clone(), leading)
                })
                .await;
        }
        None => run_with_client(cfg, client, shutdown).await,
    }
    Ok(())
}

/// Bind results waiting for the scheduling loop.
const BINDS_IN_FLIGHT: usize = 1024;

/// A binding's answer: the pod, its node, the result, and when its scheduling attempt began.
type Bound = (PodInfo, String, Result<(), kube::Error>, Instant);

/// Runs the scheduler with an existing client until `shutdown`.
pub async fn run_with_client(cfg: Config, client: Client, shutdown: CancellationToken) {
    let reporter = Reporter {
        controller: cfg.scheduler_name.clone(),
        instance: Some(format!("{}-{}", cfg.scheduler_name, std::process::id())),
    };
    metrics::init();
    let (tx, mut binds) = mpsc::channel(BINDS_IN_FLIGHT);
    let mut profile = Profile::default_profile();
    profile.percentage_of_nodes_to_score = cfg.percentage_of_nodes_to_score;
    let mut s = Scheduler {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        cfg,
        profile,
        cache: Cache::default(),
        queue: SchedulingQueue::default(),
        equivalence: EquivalenceCache::default(),
        next_start: 0,
        binds: tx,
    };
    let mut pods = wasmkube_client::watch::watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .boxed();
    let mut nodes =
        wasmkube_client::watch::watcher(Api::<Node>::all(client), watcher::Config::default())
            .default_backoff()
            .boxed();
    let (mut pods_synced, mut nodes_synced) = (false, false);
    tracing::info!(scheduler = %s.cfg.scheduler_name, "scheduler started");
    loop {
        let wakeup = s
            .queue
            .next_wakeup()
            .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600));
        let ready = pods_synced && nodes_synced && s.queue.active_len() > 0;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            ev = pods.next() => match ev {
                Some(Ok(Event::Apply(p) | Event::InitApply(p))) => s.pod_event(p),
                Some(Ok(Event::Delete(p))) => s.pod_deleted(&p),
                Some(Ok(Event::Init)) => {
                    // A relist: rebuild placements from what the list says (assumed pods stay).
                    s.cache.placed.retain(|_, (_, _, assumed)| *assumed);
                    for n in s.cache.nodes.values_mut() {
                        let node = n.node.clone();
                        *n = NodeInfo::new(node);
                    }
                    let assumed: Vec<(String, PodInfo)> = s.cache.placed.values().map(|(n, p, _)| (n.clone(), p.clone())).collect();
                    for (n, p) in assumed {
                        s.cache.place(&n, p, true);
                    }
                    s.equivalence.clear();
                }
                Some(Ok(Event::InitDone)) => pods_synced = true,
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                None => break,
            },
            ev = nodes.next() => match ev {
                Some(Ok(Event::Apply(n) | Event::InitApply(n))) => {
                    s.cache.set_node(n);
                    s.queue.cluster_changed(Instant::now());
                }
                Some(Ok(Event::Delete(n))) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    s.cache.nodes.remove(&name);
                    s.equivalence.forget_node(&name);
                }
                Some(Ok(Event::Init)) => {}
                Some(Ok(Event::InitDone)) => {
                    nodes_synced = true;
                    s.queue.cluster_changed(Instant::now());
                }
                Some(Err(e)) => tracing::warn!(error = %e, "node watch failed; retrying"),
                None => break,
            },
            Some(bound) = binds.recv() => s.bound(bound),
            () = std::future::ready(()), if ready => s.schedule_one(),
            () = tokio::time::sleep_until(wakeup) => s.queue.flush(Instant::now()),
        }
    }
}
