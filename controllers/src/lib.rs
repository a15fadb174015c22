//! The controller manager: the control loops that keep the cluster at its desired state, each
//! an out-of-tree client of the API server built on kube-runtime's watchers and reflectors,
//! whose reconciles a [`workqueue`] runs (a request due now starts at once) — like
//! kube-controller-manager.
//!
//! | controller | keeps |
//! |---|---|
//! | [`cronjob`] | a Job per scheduled time, concurrency policy, history limits |
//! | [`daemonset`] | one pod per eligible node, rolled node by node |
//! | [`deployment`] | one ReplicaSet per template, rolled (RollingUpdate / Recreate), revisions, status |
//! | [`statefulset`] | ordinal pods started in order, per-pod claims, rolled top-down |
//! | [`replicationcontroller`] | the same for ReplicationControllers |
//! | [`replicaset`] | `spec.replicas` pods per ReplicaSet (adopt, release, expectations) |
//! | [`job`] | pods run to `completions` within `parallelism`, back-off limit, deadline, TTL |
//! | [`endpoints`] | Endpoints and EndpointSlices from Services' selectors and pod readiness |
//! | [`gc`] | dependents of deleted owners collected (background, foreground, orphan) |
//! | [`nodelifecycle`] | silent nodes marked Unknown and tainted; their pods evicted, rate-limited |
//! | [`clusterrole_aggregation`] | aggregated ClusterRoles (`admin`, `edit`, `view`) hold the rules of the roles they select |
//! | [`resourcequota`] | each ResourceQuota's `status.used`, recounted from what its namespace holds |
//! | [`namespace`] | Terminating namespaces emptied and finalized |
//! | [`serviceaccounts`] | a `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap in every namespace; legacy token Secrets filled |
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasmkube_controllers::Error> {
//! let config = wasmkube_controllers::Config {
//!     api: wasmkube_client::Source::kubeconfig("/var/lib/wasmkube/kubeconfig"),
//!     ..Default::default()
//! };
//! wasmkube_controllers::run(config, tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use crate::workqueue::{Action, Controller};
use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

pub mod clusterrole_aggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod expectations;
pub mod gc;
pub mod history;
pub mod hpa;
pub mod informers;
pub mod job;
mod metrics;
pub mod namespace;
pub mod nodelifecycle;
mod podcontrol;
pub mod replicaset;
pub mod replicationcontroller;
pub mod resourcequota;
pub mod serviceaccounts;
pub mod statefulset;
pub mod workqueue;

/// How to run the controller manager.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where to reach the API servers.
    pub api: wasmkube_client::Source,
    /// Timers of the node lifecycle controller.
    pub node_timers: nodelifecycle::Timers,
    /// Run the controllers only while holding this Lease (kube-controller-manager's
    /// `--leader-elect`), so that one of several controller managers acts; none: always.
    pub leader_election: Option<wasmkube_client::leader::Election>,
    /// Which controllers run (kube-controller-manager's `--controllers`): `*` all, `NAME`
    /// that one, `-NAME` not that one; empty: all.
    pub controllers: Vec<String>,
    /// The cluster CA (PEM) the `root-ca-cert-publisher` puts in every namespace
    /// (`--root-ca-file`); none: the CA of the kubeconfig [`Config::api`] names.
    pub root_ca: Option<String>,
    /// How often each HorizontalPodAutoscaler is evaluated
    /// (`--horizontal-pod-autoscaler-sync-period`); none: [`hpa::SYNC_PERIOD`], 15 s.
    pub hpa_sync_period: Option<Duration>,
}

impl Config {
    /// Defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether controller `name` runs (see [`Config::controllers`]).
    pub fn enabled(&self, name: &str) -> bool {
        if self.controllers.is_empty() {
            return true;
        }
        if self
            .controllers
            .iter()
            .any(|c| c.strip_prefix('-') == Some(name))
        {
            return false;
        }
        self.controllers.iter().any(|c| c == name || c == "*")
    }
}

/// Every controller's name, as `--controllers` takes them.
pub const CONTROLLERS: &[&str] = &[
    "nodelifecycle",
    "deployment",
    "statefulset",
    "cronjob",
    "replicaset",
    "replicationcontroller",
    "job",
    "garbagecollector",
    "clusterrole-aggregation",
    "resourcequota",
    "daemonset",
    "endpoint",
    "namespace",
    "serviceaccount",
    "serviceaccount-token",
    "root-ca-cert-publisher",
    "horizontalpodautoscaling",
    "disruption",
];

/// Why it could not run: the API servers cannot be reached (no configuration).
pub use wasmkube_client::Error;

/// Runs every controller until `shutdown`.
///
/// # Errors
/// [`Error`] when the cluster cannot be reached at start.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let connection = wasmkube_client::connect(&config.api).await?;
    let client = connection.client;
    let mut config = config;
    if config.root_ca.is_none() {
        config.root_ca = connection
            .config
            .root_cert
            .as_deref()
            .map(wasmkube_client::tls::pem_bundle);
    }
    match &config.leader_election {
        Some(election) => {
            election
                .run(client.clone(), shutdown, |leading| {
                    let (client, config) = (client.clone(), config.clone());
                    async move { run_with_client(client, &config, leading).await }
                })
                .await;
        }
        None => run_with_client(client, &config, shutdown).await,
    }
    Ok(())
}

/// Runs every controller with an existing client until `shutdown`.
pub async fn run_with_client(client: Client, config: &Config, shutdown: CancellationToken) {
    tracing::info!("controller manager started");
    metrics::init();
    // Every controller subscribes before the shared watches start.
    let shared = informers::Informers::new(&client);
    let i = &*shared;
    let on = |name: &'static str, run| stopped(config.enabled(name), name, run);
    let root_ca = config.root_ca.clone();
    if root_ca.is_none() && config.enabled("root-ca-cert-publisher") {
        tracing::warn!("no cluster CA known: the root-ca-cert-publisher does not run");
    }
    tokio::join!(
        on(
            "nodelifecycle",
            Box::pin(nodelifecycle::run(
                client.clone(),
                i,
                config.node_timers,
                shutdown.clone()
            ))
        ),
        on(
            "deployment",
            Box::pin(run_owning::<apps::Deployment, apps::ReplicaSet, _, _, _>(
                client.clone(),
                &i.replicasets,
                "deployment",
                |client: Client, sets| deployment::Ctx {
                    recorder: recorder(&client, "deployment-controller"),
                    client,
                    sets,
                },
                deployment::reconcile,
                shutdown.clone(),
            ))
        ),
        on(
            "statefulset",
            Box::pin(run_owning::<apps::StatefulSet, core::Pod, _, _, _>(
                client.clone(),
                &i.pods,
                "statefulset",
                |client: Client, pods| statefulset::Ctx {
                    recorder: recorder(&client, "statefulset-controller"),
                    client,
                    pods,
                },
                statefulset::reconcile,
                shutdown.clone(),
            ))
        ),
        on(
            "cronjob",
            Box::pin(run_owning::<batch::CronJob, batch::Job, _, _, _>(
                client.clone(),
                &i.jobs,
                "cronjob",
                |client: Client, jobs| cronjob::Ctx {
                    recorder: recorder(&client, "cronjob-controller"),
                    client,
                    jobs,
                    seen: std::sync::Mutex::default(),
                },
                cronjob::reconcile,
                shutdown.clone(),
            ))
        ),
        on(
            "replicaset",
            Box::pin(run_pod_owner(
                client.clone(),
                i,
                "replicaset",
                replicaset::reconcile,
                shutdown.clone()
            ))
        ),
        on(
            "replicationcontroller",
            Box::pin(run_pod_owner(
                client.clone(),
                i,
                "replicationcontroller",
                replicationcontroller::reconcile,
                shutdown.clone()
            ))
        ),
        on(
            "job",
            Box::pin(run_pod_owner(
                client.clone(),
                i,
                "job",
                job::reconcile,
                shutdown.clone()
            ))
        ),
        on(
            "garbagecollector",
            Box::pin(gc::run(client.clone(), shutdown.clone()))
        ),
        on(
            "clusterrole-aggregation",
            Box::pin(clusterrole_aggregation::run(
                client.clone(),
                shutdown.clone()
            ))
        ),
        on(
            "resourcequota",
            Box::pin(resourcequota::run(client.clone(), i, shutdown.clone()))
        ),
        on(
            "daemonset",
            Box::pin(daemonset::run(client.clone(), i, shutdown.clone()))
        ),
        on(
            "endpoint",
            Box::pin(endpoints::run(client.clone(), i, shutdown.clone()))
        ),
        on(
            "horizontalpodautoscaling",
            Box::pin(hpa::run(
                client.clone(),
                i.pods.store(),
                config.hpa_sync_period.unwrap_or(hpa::SYNC_PERIOD),
                shutdown.clone()
            ))
        ),
        on(
            "namespace",
            Box::pin(namespace::run(client.clone(), shutdown.clone()))
        ),
        on(
            "disruption",
            Box::pin(disruption::run(client.clone(), i, shutdown.clone()))
        ),
        on(
            "serviceaccount",
            Box::pin(serviceaccounts::run_serviceaccount(
                client.clone(),
                shutdown.clone()
            ))
        ),
        on(
            "serviceaccount-token",
            Box::pin(serviceaccounts::run_token_secrets(
                client.clone(),
                root_ca.clone(),
                shutdown.clone()
            ))
        ),
        stopped(
            root_ca.is_some() && config.enabled("root-ca-cert-publisher"),
            "root-ca-cert-publisher",
            Box::pin(serviceaccounts::run_root_ca_publisher(
                client,
                root_ca.unwrap_or_default(),
                shutdown.clone()
            ))
        ),
        stopped(true, "informers", Box::pin(shared.run(shutdown))),
    );
    tracing::info!("controller manager stopped");
}

/// `run` if `enabled`, then a log line saying that controller `name` stopped (a shutdown that
/// hangs names the controller that holds it).
async fn stopped(
    enabled: bool,
    name: &'static str,
    run: std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>,
) {
    if !enabled {
        return;
    }
    run.await;
    tracing::debug!(controller = name, "stopped");
}

/// Why a reconcile failed (it is retried with back-off).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API request failed.
    #[error("API request failed")]
    Api(#[from] kube::Error),
    /// An object could not be serialized.
    #[error("serializing")]
    Json(#[from] serde_json::Error),
    /// A label selector is not valid.
    #[error("invalid selector: {0}")]
    Selector(String),
}

/// The controller reference `owner` puts on what it creates (kube-rs's `controller_owner_ref`,
/// with `controller` and `blockOwnerDeletion` set).
///
/// # Panics
/// When `owner` has no name or uid, which every object read from the API has.
pub(crate) fn controller_ref<K: Resource<DynamicType = ()>>(
    owner: &K,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    owner
        .controller_owner_ref(&())
        .expect("objects from the API have a name and a uid")
}

/// A new pod from `template`, named after `owner` and controlled by `owner_ref` (labels,
/// annotations and finalizers from the template, as kube-controller-manager's
/// `GetPodFromTemplate`).
pub(crate) fn pod_from_template<K: Resource>(
    owner: &K,
    template: core::PodTemplateSpec,
    owner_ref: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> core::Pod {
    let meta = template.metadata.unwrap_or_default();
    core::Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                owner.meta().name.as_deref().unwrap_or_default()
            )),
            namespace: owner.meta().namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner_ref]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The objects in `cache`, in namespace `ns`, whose controller is the object with `uid`.
pub(crate) fn controlled_by<'a, K>(
    cache: &Store<K>,
    ns: &'a str,
    uid: &'a str,
) -> impl Iterator<Item = Arc<K>> + 'a
where
    K: Resource + Clone + 'a,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    cache
        .state()
        .into_iter()
        .filter(move |o| o.meta().namespace.as_deref() == Some(ns))
        .filter(move |o| {
            o.meta()
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.uid == uid && r.controller == Some(true))
        })
}

/// Writes `status` to `obj`'s status subresource (a merge patch), unless `current` already
/// equals it.
pub(crate) async fn write_status<K, S>(
    client: &Client,
    obj: &K,
    current: Option<&S>,
    status: &S,
) -> Result<(), kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
    S: PartialEq + serde::Serialize,
{
    if current == Some(status) {
        return Ok(());
    }
    let meta = obj.meta();
    let api: Api<K> = Api::namespaced(
        client.clone(),
        meta.namespace.as_deref().unwrap_or("default"),
    );
    api.patch_status(
        meta.name.as_deref().unwrap_or_default(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&serde_json::json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// Every controller's error policy: log the failure and reconcile again after 2 s — unless
/// the controller manager is stopping (a graceful shutdown waits until nothing is queued, and
/// requests to a stopped API server fail forever).
pub(crate) fn retry_later<K, E: std::fmt::Display, C>(
    controller: &'static str,
    shutdown: CancellationToken,
) -> impl Fn(Arc<K>, &E, Arc<C>) -> Action {
    move |_obj, error, _ctx| {
        if shutdown.is_cancelled() {
            return Action::await_change();
        }
        tracing::warn!(controller, %error, "reconcile failed");
        Action::requeue(Duration::from_secs(2))
    }
}

/// What a controller that reads pods reconciles with (Endpoints, disruption budgets).
pub struct PodsCtx {
    /// The API client.
    pub client: Client,
    /// Every pod.
    pub pods: Store<k8s_openapi::api::core::v1::Pod>,
}

impl PodsCtx {
    /// A context over the shared pod informer, and the stream of its changes (for
    /// `watches_shared_stream`).
    pub(crate) fn subscribe(
        client: &Client,
        informers: &informers::Informers,
    ) -> (
        Arc<Self>,
        informers::Touched<k8s_openapi::api::core::v1::Pod>,
    ) {
        let (pods, changes) = informers.pods.subscribe();
        let ctx = Self {
            client: client.clone(),
            pods,
        };
        (Arc::new(ctx), changes)
    }
}

/// Whether a pod's `Ready` condition is true.
pub(crate) fn pod_ready(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// An event recorder reporting as `controller` (kube-controller-manager's names:
/// `replicaset-controller`, `deployment-controller`, ...).
pub(crate) fn recorder(client: &Client, controller: &str) -> wasmkube_client::events::Recorder {
    wasmkube_client::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: controller.into(),
            instance: None,
        },
    )
}

/// The object an owner reference in namespace `ns` names, for an event about it.
pub(crate) fn owner_object_ref(
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ns: &str,
) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(owner.api_version.clone()),
        kind: Some(owner.kind.clone()),
        name: Some(owner.name.clone()),
        namespace: Some(ns.to_owned()),
        uid: Some(owner.uid.clone()),
        ..Default::default()
    }
}

/// What a controller of pods (ReplicaSet, ReplicationController, Job) reconciles with.
pub struct PodOwnerCtx {
    /// The API client.
    pub client: Client,
    /// Its events (`SuccessfulCreate`, `SuccessfulDelete`, `FailedCreate`).
    pub recorder: wasmkube_client::events::Recorder,
    /// Every pod, from a reflector.
    pub pods: Store<k8s_openapi::api::core::v1::Pod>,
    /// Pending pod creates/deletes per owner uid.
    pub expectations: expectations::Expectations,
}

/// Runs a controller of pods over `K` with a [`PodOwnerCtx`] until `shutdown`.
pub(crate) async fn run_pod_owner<K, E, Fut>(
    client: Client,
    informers: &informers::Informers,
    name: &'static str,
    reconcile: impl FnMut(Arc<K>, Arc<PodOwnerCtx>) -> Fut,
    shutdown: CancellationToken,
) where
    K: workqueue::Kind,
    E: std::error::Error + Send + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    let reporter = match name {
        "replicationcontroller" => "replication-controller".to_owned(),
        other => format!("{other}-controller"),
    };
    let ctx = move |client: Client, pods| PodOwnerCtx {
        recorder: recorder(&client, &reporter),
        client,
        pods,
        expectations: expectations::Expectations::default(),
    };
    run_owning::<K, k8s_openapi::api::core::v1::Pod, _, _, _>(
        client,
        &informers.pods,
        name,
        ctx,
        reconcile,
        shutdown,
    )
    .await;
}

/// `reconcile`, started only once `synced()` resolves (the caches it reads hold a full
/// list). A controller reconciling from a cache still empty acts as if nothing existed: after a
/// restart a ReplicaSet controller would create every replica again. After `shutdown`, or
/// waiting when it comes, a reconcile does nothing and asks for nothing more: a graceful
/// shutdown waits for every reconcile in flight and every one queued, and caches whose
/// watches stopped never fill.
pub(crate) fn when_synced<K, C, E, Fut, S, SFut>(
    name: &'static str,
    synced: S,
    shutdown: CancellationToken,
    mut reconcile: impl FnMut(Arc<K>, Arc<C>) -> Fut,
) -> impl FnMut(Arc<K>, Arc<C>) -> futures::future::BoxFuture<'static, Result<Action, E>>
where
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    S: Fn() -> SFut,
    SFut: Future<Output = ()> + Send + 'static,
{
    move |obj, ctx| {
        let ready = synced();
        let work = reconcile(obj, ctx);
        let shutdown = shutdown.clone();
        Box::pin(async move {
            tracing::trace!(controller = name, "reconcile");
            let done = tokio::select! {
                () = ready, if !shutdown.is_cancelled() => {
                    let counted = crate::metrics::Reconcile::start(name);
                    let done = work.await;
                    counted.end(done.is_ok());
                    done
                }
                () = shutdown.cancelled() => Ok(Action::await_change()),
            };
            tracing::trace!(controller = name, "reconciled");
            done
        })
    }
}

/// Runs a [`Controller`] over `K` with the context `make_ctx` builds from the client
/// and the cache of `Child` objects, triggered by `K` and by the `Child` objects of that
/// reflector — so a trigger never arrives before the cache holds the change that caused it.
pub(crate) async fn run_owning<K, Child, C, E, Fut>(
    client: Client,
    children: &informers::Informer<Child>,
    name: &'static str,
    make_ctx: impl FnOnce(Client, Store<Child>) -> C,
    reconcile: impl FnMut(Arc<K>, Arc<C>) -> Fut,
    shutdown: CancellationToken,
) where
    K: workqueue::Kind,
    Child: workqueue::Kind,
    C: Send + Sync + 'static,
    E: std::error::Error + Send + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    let (reader, children) = children.subscribe();
    let ctx = Arc::new(make_ctx(client.clone(), reader.clone()));
    let controller = Controller::new(Api::<K>::all(client), watcher::Config::default())
        .owns_shared_stream(children);
    drive(controller, name, ready(&reader), reconcile, ctx, shutdown).await;
}

/// The objects in `store` that `keep` accepts, as references to reconcile: what a watch of
/// another kind maps its event to.
pub(crate) fn refs_where<K>(
    store: &Store<K>,
    keep: impl Fn(&K) -> bool,
) -> Vec<kube::runtime::reflector::ObjectRef<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    store
        .state()
        .iter()
        .filter(|o| keep(o))
        .map(|o| kube::runtime::reflector::ObjectRef::from_obj(&**o))
        .collect()
}

/// A function whose future resolves once `store` holds a full list (for [`when_synced`]).
pub(crate) fn ready<K>(
    store: &Store<K>,
) -> impl Fn() -> futures::future::BoxFuture<'static, ()> + Clone + use<K>
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let store = store.clone();
    move || {
        let store = store.clone();
        Box::pin(async move {
            let _ = store.wait_until_ready().await;
        })
    }
}

/// Runs a [`Controller`] over every `K` with `ctx`, also triggered by each pod change (from
/// `pods`, a subscription to the shared pod informer) for the `K`s the pod `concerns` —
/// reconciles wait until the pod cache is full.
pub(crate) async fn run_pod_watching<K, C, E, Fut>(
    client: Client,
    name: &'static str,
    (pods, changes): (
        Store<k8s_openapi::api::core::v1::Pod>,
        informers::Touched<k8s_openapi::api::core::v1::Pod>,
    ),
    ctx: Arc<C>,
    concerns: impl Fn(&K, &k8s_openapi::api::core::v1::Pod) -> bool + Send + 'static,
    reconcile: impl FnMut(Arc<K>, Arc<C>) -> Fut,
    shutdown: CancellationToken,
) where
    K: workqueue::Kind,
    C: Send + Sync + 'static,
    E: std::error::Error + Send + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    let controller = Controller::new(Api::<K>::all(client), watcher::Config::default());
    let objects = controller.store();
    let controller = controller.watches_shared_stream(changes, move |pod| {
        refs_where(&objects, |k| concerns(k, &pod))
    });
    drive(controller, name, ready(&pods), reconcile, ctx, shutdown).await;
}

/// Runs `controller` until `shutdown`: each reconcile waits for `synced`, failures are logged
/// and retried after 2 s.
pub(crate) async fn drive<K, C, E, Fut, S, SFut>(
    controller: Controller<K>,
    name: &'static str,
    synced: S,
    reconcile: impl FnMut(Arc<K>, Arc<C>) -> Fut,
    ctx: Arc<C>,
    shutdown: CancellationToken,
) where
    K: workqueue::Kind,
    C: Send + Sync + 'static,
    E: std::error::Error + Send + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    S: Fn() -> SFut,
    SFut: Future<Output = ()> + Send + 'static,
{
    workqueue::run(
        controller,
        when_synced(name, synced, shutdown.clone(), reconcile),
        retry_later(name, shutdown.clone()),
        ctx,
        name,
        shutdown,
    )
    .await;
}
