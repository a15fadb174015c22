//! The pod worker's state machine: what Kubernetes' kubelet decides for one pod, as pure data.
//!
//! [`PodWorker::step`] takes an event (an image became ready, a container exited, a back-off
//! elapsed, the pod was deleted) and returns the effects to carry out (pull, start, kill,
//! wait, report an event). The driver in [`crate::pod`] does the IO; everything here is
//! testable without wasmtime or an API server.
//!
//! Lifecycle, as the kubelet has it: init containers run one at a time, in order, each to a
//! successful exit; then all app containers start. Containers restart per `restartPolicy`
//! with the kubelet's crash back-off (first restart at once, then 10 s doubling to 5 min,
//! forgotten after 10 minutes of running). Deletion kills everything, then the pod is removed.

use std::time::Duration;

use jiff::Timestamp;

use crate::pod::probe::ProbeKind;
use crate::runtime::instance::Exit;

/// How soon after a failed pull the status shows `ImagePullBackOff`.
const PULL_BACKOFF_VISIBLE: Duration = Duration::from_secs(1);

/// `restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartPolicy {
    /// Restart whenever a container ends.
    Always,
    /// Restart when a container fails.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Parses the PodSpec field (the API server has defaulted it to `Always`).
    pub(crate) fn parse(s: Option<&str>) -> Self {
        match s {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }

    fn restarts(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// The crash/pull back-off schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay (kubelet: 10 s).
    pub initial: Duration,
    /// The cap (kubelet: 5 min).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// A run at least this long forgets the back-off (kubelet: twice the cap).
    fn reset_after(self) -> Duration {
        self.max * 2
    }
}

/// How a container ended, as the status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Terminated {
    /// Exit code (traps 134, kills 137).
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    /// The trap or OOM message, if any.
    pub message: Option<String>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
}

/// A container's state in the pod status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// Not running: `ContainerCreating`, `PodInitializing`, `ErrImagePull`, `ImagePullBackOff`,
    /// `CrashLoopBackOff`, `CreateContainerError`.
    Waiting {
        /// Kubernetes' reason string.
        reason: &'static str,
        /// Details.
        message: Option<String>,
    },
    /// Running since `started_at`.
    Running {
        /// When the instance started.
        started_at: Timestamp,
    },
    /// Ended and not restarting (or not yet).
    Terminated(Terminated),
}

/// One container of the pod.
#[derive(Debug, Clone)]
pub(crate) struct Container {
    /// Its name in the PodSpec.
    pub name: String,
    /// An init container.
    pub init: bool,
    /// An ephemeral container (`kubectl debug`): added to a running pod, never restarted, not
    /// part of the pod's readiness or phase.
    pub ephemeral: bool,
    /// Current state.
    pub state: State,
    /// The previous instance's end (`lastState`).
    pub last: Option<Terminated>,
    /// Restarts so far.
    pub restart_count: u32,
    /// Whether it is ready: running, started, and its readiness probe (if any) succeeded.
    pub ready: bool,
    /// Whether it has started: running and its startup probe (if any) succeeded.
    pub started: bool,
    /// Which probes it has.
    pub probes: Probes,
    /// The instance probe results belong to (its `restart_count` when it started).
    instance: u32,
    /// The resolved image (digest) once pulled.
    pub image_id: Option<String>,
    /// Current crash back-off delay (none: restart at once).
    crash_delay: Option<Duration>,
    /// Current image-pull back-off delay.
    pull_delay: Option<Duration>,
    /// Whether an image is ready to run.
    pulled: bool,
    /// Waiting for a back-off timer (a start is due when it fires).
    backing_off: bool,
    /// The last start failed on the host's side: the retry is not a restart.
    start_failed: bool,
}

impl Container {
    fn new(name: String, init: bool, first: bool) -> Self {
        let reason = if init || first {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        Self {
            name,
            init,
            ephemeral: false,
            state: State::Waiting {
                reason,
                message: None,
            },
            last: None,
            restart_count: 0,
            ready: false,
            started: false,
            probes: Probes::default(),
            instance: 0,
            image_id: None,
            crash_delay: None,
            start_failed: false,
            pull_delay: None,
            pulled: false,
            backing_off: false,
        }
    }

    fn is_running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    /// Container `i`'s instance is gone: not ready, not started, no more probes.
    fn instance_ended(&mut self, i: usize, fx: &mut Vec<Effect>) {
        self.ready = false;
        self.started = false;
        if self.probes.any() {
            fx.push(Effect::StopProbes { container: i });
        }
    }
}

/// Which probes a container has (the prober runs them; the worker acts on their results).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Probes {
    /// `startupProbe`.
    pub startup: bool,
    /// `livenessProbe`.
    pub liveness: bool,
    /// `readinessProbe`.
    pub readiness: bool,
}

impl Probes {
    fn any(self) -> bool {
        self.startup || self.liveness || self.readiness
    }
}

/// Where the pod is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Running init container `n`.
    Init(usize),
    /// App containers started.
    Main,
    /// Deleted: stopping containers.
    Terminating,
    /// Everything has stopped after deletion; the pod can be removed.
    Gone,
}

/// An input to the state machine.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PodEvent {
    /// The worker was created: begin.
    Begin,
    /// A container's image is ready (`Ok(image_id)`) or failed to pull or compile.
    ImageReady {
        /// Index into [`PodWorker::containers`].
        container: usize,
        /// Digest, or the reason and message of the failure.
        result: Result<String, ImageFailure>,
    },
    /// An instance has started.
    Started {
        /// Which container.
        container: usize,
        /// When.
        at: Timestamp,
    },
    /// An instance ended.
    Exited {
        /// Which container.
        container: usize,
        /// How.
        exit: Exit,
        /// When.
        at: Timestamp,
    },
    /// A failed pull is now waiting out its back-off (`ErrImagePull` becomes `ImagePullBackOff`).
    PullBackOff {
        /// Which container.
        container: usize,
    },
    /// A container's back-off has elapsed: retry.
    BackoffOver {
        /// Which container.
        container: usize,
    },
    /// A probe's result changed (after its thresholds).
    Probe {
        /// Which container.
        container: usize,
        /// The instance probed (its `restart_count` when it started); older results are void.
        instance: u32,
        /// Which probe.
        kind: ProbeKind,
        /// Its new result.
        healthy: bool,
    },
    /// The node could not start an instance (its sandbox or listener failed): the
    /// guest never ran. Retried with the crash back-off.
    StartFailed {
        /// Which container.
        container: usize,
        /// `CreateContainerError` (nothing was created) or `RunContainerError`.
        reason: &'static str,
        /// What failed.
        message: String,
    },
    /// An ephemeral container was added to the pod's spec: pull and start it.
    EphemeralAdded {
        /// Which container.
        container: usize,
    },
    /// The pod was deleted.
    Delete,
}

/// Why an image could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageFailure {
    /// `ErrImagePull` (retried with back-off) or `CreateContainerError` (not a runnable wasm).
    pub reason: &'static str,
    /// What went wrong.
    pub message: String,
}

/// Event type (`Normal` / `Warning`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    /// Informational.
    Normal,
    /// Something failed.
    Warning,
}

/// Something for the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// Pull and prepare the container's image.
    Pull {
        /// Which container.
        container: usize,
    },
    /// Start an instance.
    Start {
        /// Which container.
        container: usize,
    },
    /// Stop an instance (deletion, a failed liveness or startup probe).
    Kill {
        /// Which container.
        container: usize,
    },
    /// Start probing a container instance.
    Probe {
        /// Which container.
        container: usize,
        /// The instance (its `restart_count`), echoed in its results.
        instance: u32,
    },
    /// Stop probing a container (its instance ended).
    StopProbes {
        /// Which container.
        container: usize,
    },
    /// Deliver `event` after `delay`.
    After {
        /// How long.
        delay: Duration,
        /// What to deliver.
        event: PodEvent,
    },
    /// Record a Kubernetes Event on the pod.
    Event {
        /// The container it is about, if any.
        container: Option<usize>,
        /// Normal or Warning.
        kind: EventType,
        /// `Pulled`, `Created`, `Started`, `Killing`, `BackOff`, `Failed`, ...
        reason: &'static str,
        /// Human-readable text.
        message: String,
    },
    /// Everything stopped after deletion: remove the pod from the API.
    Remove,
}

impl Effect {
    /// A Normal event about container `i`.
    fn normal(i: usize, reason: &'static str, message: String) -> Self {
        Self::Event {
            container: Some(i),
            kind: EventType::Normal,
            reason,
            message,
        }
    }

    /// A Warning event about container `i`.
    fn warning(i: usize, reason: &'static str, message: String) -> Self {
        Self::Event {
            container: Some(i),
            kind: EventType::Warning,
            reason,
            message,
        }
    }
}

/// The state of one pod on this node.
#[derive(Debug, Clone)]
pub(crate) struct PodWorker {
    /// How many of [`PodWorker::containers`] are the spec's init and app containers (the
    /// ephemeral ones come after).
    regular: usize,
    /// Init containers first, then app containers, in PodSpec order.
    pub containers: Vec<Container>,
    /// Lifecycle stage.
    pub stage: Stage,
    /// `restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// Crash and pull back-off schedule.
    pub backoff: Backoff,
    /// When the pod's first container started being set up (`status.startTime`).
    pub start_time: Option<Timestamp>,
    initialized: bool,
}

/// `phase` as Kubernetes computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not all containers have started.
    Pending,
    /// At least one container runs or will be restarted.
    Running,
    /// All containers ended successfully and won't restart.
    Succeeded,
    /// All containers ended, at least one failed, and none will restart.
    Failed,
}

impl Phase {
    /// The API string.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

impl PodWorker {
    /// A worker for a pod with these init and app container names.
    pub(crate) fn new(
        init: &[String],
        app: &[String],
        restart_policy: RestartPolicy,
        backoff: Backoff,
    ) -> Self {
        let containers = init
            .iter()
            .map(|n| Container::new(n.clone(), true, true))
            .chain(
                app.iter()
                    .map(|n| Container::new(n.clone(), false, init.is_empty())),
            )
            .collect::<Vec<_>>();
        Self {
            regular: containers.len(),
            containers,
            stage: Stage::Init(0),
            restart_policy,
            backoff,
            start_time: None,
            initialized: false,
        }
    }

    /// Tells the worker which probes container `i` has.
    pub(crate) fn set_probes(&mut self, i: usize, probes: Probes) {
        self.containers[i].probes = probes;
    }

    /// Deleted: the pod is stopping or gone.
    fn stopping(&self) -> bool {
        matches!(self.stage, Stage::Terminating | Stage::Gone)
    }

    fn inits(&self) -> usize {
        self.containers.iter().filter(|c| c.init).count()
    }

    fn apps(&self) -> std::ops::Range<usize> {
        self.inits()..self.regular
    }

    /// Adds ephemeral container `name` (its pull follows [`PodEvent::EphemeralAdded`]);
    /// returns its index.
    pub(crate) fn add_ephemeral(&mut self, name: String) -> usize {
        let mut c = Container::new(name, false, true);
        c.ephemeral = true;
        self.containers.push(c);
        self.containers.len() - 1
    }

    /// Whether all init containers have completed.
    pub(crate) fn initialized(&self) -> bool {
        self.initialized
    }

    /// Whether every app container is ready.
    pub(crate) fn containers_ready(&self) -> bool {
        self.apps().all(|i| self.containers[i].ready)
    }

    /// Feeds one event; returns what to do.
    pub(crate) fn step(&mut self, event: PodEvent, now: Timestamp) -> Vec<Effect> {
        let mut fx = Vec::new();
        match event {
            PodEvent::Begin => {
                self.start_time.get_or_insert(now);
                self.enter_stage(&mut fx);
            }
            PodEvent::ImageReady { container, result } => {
                self.image_ready(container, result, &mut fx)
            }
            PodEvent::Started { container, at } => {
                if self.stage == Stage::Terminating || self.stage == Stage::Gone {
                    fx.push(Effect::Kill { container });
                }
                let c = &mut self.containers[container];
                c.state = State::Running { started_at: at };
                c.instance = c.restart_count;
                c.started = !c.probes.startup;
                c.ready = !c.init && c.started && !c.probes.readiness;
                let name = c.name.clone();
                fx.push(Effect::normal(
                    container,
                    "Started",
                    format!("Started container {name}"),
                ));
                if !c.init && c.probes.any() {
                    fx.push(Effect::Probe {
                        container,
                        instance: c.instance,
                    });
                }
            }
            PodEvent::Exited {
                container,
                exit,
                at,
            } => self.exited(container, exit, at, &mut fx),
            PodEvent::StartFailed {
                container,
                reason,
                message,
            } => self.start_failed(container, reason, message, &mut fx),
            PodEvent::PullBackOff { container } => {
                let c = &mut self.containers[container];
                if c.backing_off
                    && let State::Waiting { reason, message } = &mut c.state
                    && *reason == "ErrImagePull"
                {
                    *reason = "ImagePullBackOff";
                    let image_message = message.take().unwrap_or_default();
                    *message = Some(format!("Back-off pulling image: {image_message}"));
                    fx.push(Effect::normal(
                        container,
                        "BackOff",
                        format!("Back-off pulling image for container {}", c.name),
                    ));
                }
            }
            PodEvent::BackoffOver { container } => {
                let stopping = self.stopping();
                let c = &mut self.containers[container];
                if !c.backing_off || stopping {
                    return fx;
                }
                c.backing_off = false;
                if c.pulled {
                    // `restartCount` counts instances started after the first; a start that
                    // failed on the node's side started nothing.
                    if !std::mem::take(&mut c.start_failed) {
                        c.restart_count += 1;
                    }
                    fx.push(Effect::Start { container });
                } else {
                    fx.push(Effect::Pull { container });
                }
            }
            PodEvent::Probe {
                container,
                instance,
                kind,
                healthy,
            } => self.probed(container, instance, kind, healthy, &mut fx),
            PodEvent::EphemeralAdded { container } => {
                if !self.stopping() {
                    fx.push(Effect::Pull { container });
                }
            }
            PodEvent::Delete => {
                if self.stopping() {
                    return fx;
                }
                self.stage = Stage::Terminating;
                for (i, c) in self.containers.iter_mut().enumerate() {
                    c.backing_off = false;
                    if c.is_running() {
                        fx.push(Effect::normal(
                            i,
                            "Killing",
                            format!("Stopping container {}", c.name),
                        ));
                        fx.push(Effect::Kill { container: i });
                    }
                }
                self.maybe_gone(&mut fx);
            }
        }
        fx
    }

    fn enter_stage(&mut self, fx: &mut Vec<Effect>) {
        let first = match self.stage {
            Stage::Init(n) if n < self.inits() => n..n + 1,
            Stage::Init(_) => {
                self.stage = Stage::Main;
                self.initialized = true;
                self.apps()
            }
            _ => return,
        };
        for i in first {
            fx.push(Effect::Pull { container: i });
        }
    }

    fn image_ready(
        &mut self,
        i: usize,
        result: Result<String, ImageFailure>,
        fx: &mut Vec<Effect>,
    ) {
        if self.stopping() {
            return;
        }
        let backoff = self.backoff;
        let c = &mut self.containers[i];
        match result {
            Ok(image_id) => {
                c.pulled = true;
                c.pull_delay = None;
                c.image_id = Some(image_id);
                if let State::Waiting { reason, .. } = &mut c.state
                    && matches!(*reason, "ErrImagePull" | "ImagePullBackOff")
                {
                    *reason = "ContainerCreating";
                }
                fx.push(Effect::normal(
                    i,
                    "Created",
                    format!("Created container {}", c.name),
                ));
                fx.push(Effect::Start { container: i });
            }
            Err(failure) => {
                let delay = next_delay(c.pull_delay, backoff);
                c.pull_delay = Some(delay);
                c.backing_off = true;
                c.state = State::Waiting {
                    reason: failure.reason,
                    message: Some(failure.message.clone()),
                };
                fx.push(Effect::warning(i, "Failed", failure.message));
                if failure.reason == "ErrImagePull" {
                    // The kubelet's next sync finds the image in back-off.
                    fx.push(Effect::After {
                        delay: PULL_BACKOFF_VISIBLE.min(delay),
                        event: PodEvent::PullBackOff { container: i },
                    });
                }
                fx.push(Effect::After {
                    delay,
                    event: PodEvent::BackoffOver { container: i },
                });
            }
        }
    }

    fn exited(&mut self, i: usize, exit: Exit, at: Timestamp, fx: &mut Vec<Effect>) {
        let started_at = match &self.containers[i].state {
            State::Running { started_at } => *started_at,
            _ => at,
        };
        let (reason, message) = match &exit {
            Exit::Code(0) => ("Completed", None),
            Exit::Code(_) | Exit::Killed => ("Error", None),
            Exit::Trapped(m) => ("Error", Some(m.clone())),
            Exit::OomKilled(m) => ("OOMKilled", Some(m.clone())),
        };
        let term = Terminated {
            exit_code: exit.code(),
            reason: reason.to_owned(),
            message,
            started_at,
            finished_at: at,
        };
        let backoff = self.backoff;
        let terminating = self.stopping();
        let c = &mut self.containers[i];
        c.instance_ended(i, fx);
        c.state = State::Terminated(term.clone());
        if terminating {
            self.maybe_gone(fx);
            return;
        }
        let failed = term.exit_code != 0;
        if let Exit::Trapped(m) | Exit::OomKilled(m) = &exit {
            fx.push(Effect::warning(
                i,
                "Failed",
                format!(
                    "Container {} {}: {}",
                    c.name,
                    if reason == "OOMKilled" {
                        "was OOM-killed"
                    } else {
                        "trapped"
                    },
                    first_line(m)
                ),
            ));
        }
        if c.ephemeral {
            // Run once: an ephemeral container is never restarted.
            return;
        }
        if c.init {
            if !failed {
                if let Stage::Init(n) = self.stage {
                    self.stage = Stage::Init(n + 1);
                }
                self.enter_stage(fx);
                return;
            }
            // A failed init container restarts unless the pod never restarts anything.
            if self.restart_policy == RestartPolicy::Never {
                return;
            }
        } else if !self.restart_policy.restarts(term.exit_code) {
            return;
        }
        // Restart, after the crash back-off if it is in force.
        let ran = at.duration_since(started_at).unsigned_abs();
        if ran >= backoff.reset_after() {
            c.crash_delay = None;
        }
        c.last = Some(term);
        match c.crash_delay {
            None => {
                c.restart_count += 1;
                c.crash_delay = Some(backoff.initial);
                c.state = State::Waiting {
                    reason: "ContainerCreating",
                    message: None,
                };
                fx.push(Effect::Start { container: i });
            }
            Some(delay) => {
                c.crash_delay = Some(next_delay(Some(delay), backoff));
                c.backing_off = true;
                let message = format!(
                    "back-off {} restarting failed container={} pod",
                    fmt_secs(delay),
                    c.name
                );
                c.state = State::Waiting {
                    reason: "CrashLoopBackOff",
                    message: Some(message.clone()),
                };
                let message = format!("Back-off restarting failed container {}", c.name);
                warn_and_retry(fx, i, "BackOff", message, delay);
            }
        }
    }

    /// The node failed to start an instance: the container waits with the kubelet's reason
    /// and message, a `Failed` event says why, and the start is retried after the back-off.
    fn start_failed(
        &mut self,
        i: usize,
        reason: &'static str,
        message: String,
        fx: &mut Vec<Effect>,
    ) {
        let backoff = self.backoff;
        let terminating = self.stopping();
        let c = &mut self.containers[i];
        c.instance_ended(i, fx);
        c.state = State::Waiting {
            reason,
            message: Some(message.clone()),
        };
        if terminating {
            self.maybe_gone(fx);
            return;
        }
        if c.ephemeral {
            fx.push(Effect::warning(i, "Failed", format!("Error: {message}")));
            return;
        }
        let delay = next_delay(c.crash_delay, backoff);
        c.crash_delay = Some(delay);
        c.backing_off = true;
        c.start_failed = true;
        warn_and_retry(fx, i, "Failed", format!("Error: {message}"), delay);
    }

    /// Acts on a probe result, as the kubelet's sync does: readiness sets `ready`, a startup
    /// success lets the other probes run, a liveness or startup failure kills the instance
    /// (which then restarts per `restartPolicy`, with the crash back-off).
    fn probed(
        &mut self,
        i: usize,
        instance: u32,
        kind: ProbeKind,
        healthy: bool,
        fx: &mut Vec<Effect>,
    ) {
        if self.stopping() {
            return;
        }
        let c = &mut self.containers[i];
        if c.instance != instance || !c.is_running() {
            return;
        }
        match (kind, healthy) {
            (ProbeKind::Startup, true) => {
                c.started = true;
                c.ready = !c.probes.readiness;
            }
            (ProbeKind::Readiness, ready) => c.ready = c.started && ready,
            (ProbeKind::Liveness, true) => {}
            (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                c.ready = false;
                let which = if kind == ProbeKind::Startup {
                    "startup"
                } else {
                    "liveness"
                };
                fx.push(Effect::normal(
                    i,
                    "Killing",
                    format!(
                        "Container {} failed {which} probe, will be restarted",
                        c.name
                    ),
                ));
                fx.push(Effect::StopProbes { container: i });
                fx.push(Effect::Kill { container: i });
            }
        }
    }

    fn maybe_gone(&mut self, fx: &mut Vec<Effect>) {
        if self.stage == Stage::Terminating && !self.containers.iter().any(Container::is_running) {
            self.stage = Stage::Gone;
            fx.push(Effect::Remove);
        }
    }

    /// The pod phase (kubelet `getPhase`).
    pub(crate) fn phase(&self) -> Phase {
        let init_failed_for_good = self.restart_policy == RestartPolicy::Never
            && self
                .containers
                .iter()
                .any(|c| c.init && matches!(&c.state, State::Terminated(t) if t.exit_code != 0));
        if init_failed_for_good {
            return Phase::Failed;
        }
        if matches!(self.stage, Stage::Init(_)) {
            return Phase::Pending;
        }
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for i in self.apps() {
            let c = &self.containers[i];
            match &c.state {
                State::Running { .. } => running += 1,
                State::Terminated(t) => {
                    stopped += 1;
                    if t.exit_code == 0 {
                        succeeded += 1;
                    }
                }
                State::Waiting { .. } if c.last.is_some() => stopped += 1,
                State::Waiting { .. } => waiting += 1,
            }
        }
        if waiting > 0 {
            return Phase::Pending;
        }
        if running > 0 {
            return Phase::Running;
        }
        if stopped == 0 {
            return Phase::Pending;
        }
        let restarting = self.apps().any(|i| {
            self.containers[i].backing_off
                || matches!(self.containers[i].state, State::Waiting { .. })
        });
        if self.restart_policy == RestartPolicy::Always || restarting {
            return Phase::Running;
        }
        if stopped == succeeded {
            Phase::Succeeded
        } else {
            Phase::Failed
        }
    }
}

fn next_delay(current: Option<Duration>, backoff: Backoff) -> Duration {
    match current {
        None => backoff.initial,
        Some(d) => (d * 2).min(backoff.max),
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m0s", s / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// A warning event about container `i`, and its start again after `delay`.
fn warn_and_retry(
    fx: &mut Vec<Effect>,
    i: usize,
    reason: &'static str,
    message: String,
    delay: std::time::Duration,
) {
    fx.push(Effect::warning(i, reason, message));
    fx.push(Effect::After {
        delay,
        event: PodEvent::BackoffOver { container: i },
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid")
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    fn worker(init: &[&str], app: &[&str], policy: RestartPolicy) -> PodWorker {
        PodWorker::new(&names(init), &names(app), policy, Backoff::default())
    }

    /// The containers the effects start.
    fn starts(fx: &[Effect]) -> Vec<usize> {
        containers(fx, |e| match e {
            Effect::Start { container } => Some(*container),
            _ => None,
        })
    }

    /// The containers whose images the effects pull.
    fn pulls(fx: &[Effect]) -> Vec<usize> {
        containers(fx, |e| match e {
            Effect::Pull { container } => Some(*container),
            _ => None,
        })
    }

    fn containers(fx: &[Effect], pick: impl Fn(&Effect) -> Option<usize>) -> Vec<usize> {
        fx.iter().filter_map(pick).collect()
    }

    fn timer(fx: &[Effect]) -> Option<Duration> {
        fx.iter().find_map(|e| match e {
            Effect::After {
                delay,
                event: PodEvent::BackoffOver { .. },
            } => Some(*delay),
            _ => None,
        })
    }

    /// A pod of these app containers, begun, with every image pulled.
    fn pulled_worker(app: &[&str], policy: RestartPolicy) -> PodWorker {
        let mut w = worker(&[], app, policy);
        w.step(PodEvent::Begin, ts(0));
        for i in 0..app.len() {
            pulled(&mut w, i);
        }
        w
    }

    fn pulled(w: &mut PodWorker, i: usize) -> Vec<Effect> {
        w.step(
            PodEvent::ImageReady {
                container: i,
                result: Ok(format!("sha256:{i}")),
            },
            ts(0),
        )
    }

    fn run(w: &mut PodWorker, i: usize, from: i64, to: i64, how: Exit) -> Vec<Effect> {
        start(w, i, from);
        exit(w, i, how, to)
    }

    #[test]
    fn init_containers_run_in_order_before_the_app_containers() {
        let mut w = worker(&["a", "b"], &["main", "side"], RestartPolicy::Always);
        assert_eq!(pulls(&w.step(PodEvent::Begin, ts(0))), vec![0]);
        assert_eq!(w.phase(), Phase::Pending);
        assert_eq!(starts(&pulled(&mut w, 0)), vec![0]);
        assert_eq!(
            pulls(&run(&mut w, 0, 0, 1, Exit::Code(0))),
            vec![1],
            "then the second init"
        );
        assert!(!w.initialized());
        assert_eq!(starts(&pulled(&mut w, 1)), vec![1]);
        assert_eq!(
            pulls(&run(&mut w, 1, 1, 2, Exit::Code(0))),
            vec![2, 3],
            "then all app containers"
        );
        assert!(w.initialized());
        pulled(&mut w, 2);
        pulled(&mut w, 3);
        start(&mut w, 2, 3);
        assert_eq!(
            w.phase(),
            Phase::Pending,
            "one app container is still waiting"
        );
        start(&mut w, 3, 3);
        assert_eq!(w.phase(), Phase::Running);
        assert!(w.containers_ready());
    }

    #[test]
    fn a_failed_init_container_fails_a_never_restarting_pod() {
        let mut w = worker(&["setup"], &["main"], RestartPolicy::Never);
        w.step(PodEvent::Begin, ts(0));
        pulled(&mut w, 0);
        let fx = run(&mut w, 0, 0, 1, Exit::Code(1));
        assert!(pulls(&fx).is_empty() && starts(&fx).is_empty());
        assert_eq!(w.phase(), Phase::Failed);
    }

    #[test]
    fn a_job_style_pod_succeeds_or_fails_with_its_containers() {
        let mut w = pulled_worker(&["a", "b"], RestartPolicy::Never);
        run(&mut w, 0, 0, 1, Exit::Code(0));
        start(&mut w, 1, 0);
        assert_eq!(w.phase(), Phase::Running);
        run(&mut w, 1, 0, 2, Exit::Code(0));
        assert_eq!(w.phase(), Phase::Succeeded);
        let State::Terminated(t) = &w.containers[1].state else {
            panic!("terminated")
        };
        assert_eq!((t.exit_code, t.reason.as_str()), (0, "Completed"));

        let mut w = pulled_worker(&["a"], RestartPolicy::Never);
        run(&mut w, 0, 0, 1, Exit::OomKilled("limit".into()));
        assert_eq!(w.phase(), Phase::Failed);
        let State::Terminated(t) = &w.containers[0].state else {
            panic!("terminated")
        };
        assert_eq!((t.exit_code, t.reason.as_str()), (137, "OOMKilled"));
    }

    #[test]
    fn crashes_restart_at_once_then_with_doubling_backoff_up_to_the_cap() {
        let mut w = pulled_worker(&["crash"], RestartPolicy::Always);
        let fx = run(&mut w, 0, 0, 1, Exit::Code(1));
        assert_eq!(starts(&fx), vec![0], "the first restart is immediate");
        assert_eq!(w.containers[0].restart_count, 1);
        let mut delays = Vec::new();
        let mut t = 1;
        for _ in 0..7 {
            let fx = run(&mut w, 0, t, t + 1, Exit::Code(1));
            t += 1;
            assert!(starts(&fx).is_empty());
            let delay = timer(&fx).expect("back-off timer");
            delays.push(delay.as_secs());
            assert!(matches!(
                w.containers[0].state,
                State::Waiting {
                    reason: "CrashLoopBackOff",
                    ..
                }
            ));
            assert_eq!(w.phase(), Phase::Running, "a crash-looping pod is Running");
            assert_eq!(
                starts(&w.step(PodEvent::BackoffOver { container: 0 }, ts(t))),
                vec![0]
            );
        }
        assert_eq!(delays, vec![10, 20, 40, 80, 160, 300, 300]);
        let last = w.containers[0].last.as_ref().expect("lastState");
        assert_eq!(last.exit_code, 1);
        assert_eq!(w.containers[0].restart_count, 8);
    }

    #[test]
    fn ten_minutes_of_running_forgets_the_backoff() {
        let mut w = pulled_worker(&["c"], RestartPolicy::Always);
        run(&mut w, 0, 0, 1, Exit::Code(1));
        let fx = run(&mut w, 0, 1, 2, Exit::Code(1));
        assert_eq!(timer(&fx), Some(Duration::from_secs(10)));
        w.step(PodEvent::BackoffOver { container: 0 }, ts(12));
        let fx = run(&mut w, 0, 12, 12 + 601, Exit::Code(1));
        assert_eq!(starts(&fx), vec![0], "restarted at once after a long run");
    }

    #[test]
    fn on_failure_restarts_only_failures() {
        let mut w = pulled_worker(&["c"], RestartPolicy::OnFailure);
        assert_eq!(
            starts(&run(&mut w, 0, 0, 1, Exit::Trapped("boom".into()))),
            vec![0]
        );
        assert!(starts(&run(&mut w, 0, 1, 2, Exit::Code(0))).is_empty());
        assert_eq!(w.phase(), Phase::Succeeded);
    }

    #[test]
    fn pull_failures_back_off_and_show_image_pull_backoff() {
        let mut w = worker(&[], &["c"], RestartPolicy::Always);
        w.step(PodEvent::Begin, ts(0));
        let failure = ImageFailure {
            reason: "ErrImagePull",
            message: "manifest unknown".into(),
        };
        let fx = w.step(
            PodEvent::ImageReady {
                container: 0,
                result: Err(failure.clone()),
            },
            ts(0),
        );
        assert!(matches!(
            w.containers[0].state,
            State::Waiting {
                reason: "ErrImagePull",
                ..
            }
        ));
        assert_eq!(timer(&fx), Some(Duration::from_secs(10)));
        w.step(PodEvent::PullBackOff { container: 0 }, ts(1));
        assert!(matches!(
            w.containers[0].state,
            State::Waiting {
                reason: "ImagePullBackOff",
                ..
            }
        ));
        assert_eq!(
            pulls(&w.step(PodEvent::BackoffOver { container: 0 }, ts(10))),
            vec![0]
        );
        let fx = w.step(
            PodEvent::ImageReady {
                container: 0,
                result: Err(failure),
            },
            ts(10),
        );
        assert_eq!(
            timer(&fx),
            Some(Duration::from_secs(20)),
            "pull back-off doubles too"
        );
        assert_eq!(w.phase(), Phase::Pending);
    }

    #[test]
    fn deletion_kills_running_containers_then_removes_the_pod() {
        let mut w = pulled_worker(&["a", "b"], RestartPolicy::Always);
        start(&mut w, 0, 1);
        start(&mut w, 1, 1);
        let fx = w.step(PodEvent::Delete, ts(2));
        let kills: Vec<_> = fx
            .iter()
            .filter(|e| matches!(e, Effect::Kill { .. }))
            .collect();
        assert_eq!(kills.len(), 2);
        assert!(!fx.contains(&Effect::Remove));
        let fx = exit(&mut w, 0, Exit::Killed, 2);
        assert!(starts(&fx).is_empty(), "no restarts while terminating");
        let fx = exit(&mut w, 1, Exit::Killed, 2);
        assert_eq!(fx, vec![Effect::Remove]);
        assert_eq!(w.stage, Stage::Gone);
    }

    #[test]
    fn deleting_a_pod_with_nothing_running_removes_it_at_once() {
        let mut w = worker(&[], &["a"], RestartPolicy::Always);
        w.step(PodEvent::Begin, ts(0));
        assert_eq!(w.step(PodEvent::Delete, ts(1)), vec![Effect::Remove]);
        // A pull finishing late starts nothing.
        assert!(pulled(&mut w, 0).is_empty());
    }

    fn probe(w: &mut PodWorker, instance: u32, kind: ProbeKind, healthy: bool) -> Vec<Effect> {
        w.step(
            PodEvent::Probe {
                container: 0,
                instance,
                kind,
                healthy,
            },
            ts(5),
        )
    }

    fn started(w: &mut PodWorker, at: i64) -> Vec<Effect> {
        start(w, 0, at)
    }

    fn start(w: &mut PodWorker, container: usize, at: i64) -> Vec<Effect> {
        w.step(
            PodEvent::Started {
                container,
                at: ts(at),
            },
            ts(at),
        )
    }

    fn exit(w: &mut PodWorker, container: usize, exit: Exit, at: i64) -> Vec<Effect> {
        w.step(
            PodEvent::Exited {
                container,
                exit,
                at: ts(at),
            },
            ts(at),
        )
    }

    /// A one-container pod with these probes, pulled and started at second 1; the effects of
    /// the start.
    fn probed(policy: RestartPolicy, kinds: &[ProbeKind]) -> (PodWorker, Vec<Effect>) {
        let mut w = worker(&[], &["web"], policy);
        w.set_probes(
            0,
            Probes {
                startup: kinds.contains(&ProbeKind::Startup),
                liveness: kinds.contains(&ProbeKind::Liveness),
                readiness: kinds.contains(&ProbeKind::Readiness),
            },
        );
        w.step(PodEvent::Begin, ts(0));
        pulled(&mut w, 0);
        let fx = started(&mut w, 1);
        (w, fx)
    }

    #[test]
    fn readiness_and_startup_probes_decide_ready() {
        let (mut w, fx) = probed(
            RestartPolicy::Always,
            &[
                ProbeKind::Startup,
                ProbeKind::Liveness,
                ProbeKind::Readiness,
            ],
        );
        assert!(fx.contains(&Effect::Probe {
            container: 0,
            instance: 0
        }));
        assert!(!w.containers[0].started && !w.containers_ready());
        probe(&mut w, 0, ProbeKind::Readiness, true);
        assert!(!w.containers_ready(), "readiness counts only once started");
        probe(&mut w, 0, ProbeKind::Startup, true);
        assert!(w.containers[0].started);
        assert!(
            !w.containers_ready(),
            "still waiting for a readiness success"
        );
        probe(&mut w, 0, ProbeKind::Readiness, true);
        assert!(w.containers_ready());
        probe(&mut w, 0, ProbeKind::Readiness, false);
        assert!(!w.containers_ready());
        assert_eq!(w.phase(), Phase::Running, "not ready is still running");
    }

    #[test]
    fn a_container_without_readiness_probe_is_ready_once_started() {
        let (w, _) = probed(RestartPolicy::Always, &[ProbeKind::Liveness]);
        assert!(w.containers_ready() && w.containers[0].started);
    }

    #[test]
    fn a_failed_liveness_probe_kills_and_restarts_with_back_off() {
        let (mut w, _) = probed(RestartPolicy::Always, &[ProbeKind::Liveness]);
        let fx = probe(&mut w, 0, ProbeKind::Liveness, false);
        assert!(fx.contains(&Effect::Kill { container: 0 }));
        assert!(fx.iter().any(
            |e| matches!(e, Effect::Event { reason: "Killing", message, .. }
            if message == "Container web failed liveness probe, will be restarted")
        ));
        let fx = exit(&mut w, 0, Exit::Killed, 6);
        assert!(fx.contains(&Effect::StopProbes { container: 0 }));
        assert_eq!(starts(&fx), vec![0], "the first restart is immediate");
        let last = w.containers[0].last.clone().expect("lastState");
        assert_eq!((last.exit_code, last.reason.as_str()), (137, "Error"));
        assert_eq!(w.containers[0].restart_count, 1);
        // A late result from the killed instance changes nothing.
        started(&mut w, 7);
        assert!(probe(&mut w, 0, ProbeKind::Liveness, false).is_empty());
        // The next failure waits out the crash back-off.
        probe(&mut w, 1, ProbeKind::Liveness, false);
        let fx = exit(&mut w, 0, Exit::Killed, 8);
        assert_eq!(timer(&fx), Some(Duration::from_secs(10)));
    }

    #[test]
    fn a_failed_startup_probe_kills_and_probes_stop_on_deletion() {
        let (mut w, _) = probed(RestartPolicy::Never, &[ProbeKind::Startup]);
        let fx = probe(&mut w, 0, ProbeKind::Startup, false);
        assert!(fx.iter().any(
            |e| matches!(e, Effect::Event { reason: "Killing", message, .. }
            if message.contains("failed startup probe"))
        ));
        run(&mut w, 0, 1, 2, Exit::Killed);
        assert_eq!(w.phase(), Phase::Failed, "restartPolicy Never: no restart");

        let (mut w, _) = probed(RestartPolicy::Always, &[ProbeKind::Readiness]);
        w.step(PodEvent::Delete, ts(2));
        assert!(probe(&mut w, 0, ProbeKind::Readiness, true).is_empty());
        assert!(!w.containers_ready());
    }

    #[test]
    fn a_host_side_start_failure_should_wait_with_its_reason_and_retry_without_a_restart() {
        let mut w = PodWorker::new(
            &[],
            &["app".into()],
            RestartPolicy::Always,
            Backoff::default(),
        );
        w.step(PodEvent::Begin, ts(0));
        let fx = w.step(
            PodEvent::ImageReady {
                container: 0,
                result: Ok("sha256:x".into()),
            },
            ts(0),
        );
        assert!(fx.contains(&Effect::Start { container: 0 }));
        let fx = w.step(
            PodEvent::StartFailed {
                container: 0,
                reason: "RunContainerError",
                message: "cannot listen on 10.0.0.1:80".into(),
            },
            ts(1),
        );
        assert_eq!(
            w.containers[0].state,
            State::Waiting {
                reason: "RunContainerError",
                message: Some("cannot listen on 10.0.0.1:80".into())
            }
        );
        assert!(fx.iter().any(|e| matches!(e, Effect::Event { reason: "Failed", message, .. } if message == "Error: cannot listen on 10.0.0.1:80")));
        assert!(fx.contains(&Effect::After {
            delay: Backoff::default().initial,
            event: PodEvent::BackoffOver { container: 0 }
        }));
        assert_eq!(w.phase(), Phase::Pending);
        let fx = w.step(PodEvent::BackoffOver { container: 0 }, ts(11));
        assert_eq!(fx, vec![Effect::Start { container: 0 }]);
        assert_eq!(w.containers[0].restart_count, 0, "nothing had started");
    }

    #[test]
    fn an_ephemeral_container_runs_once_beside_the_pod_without_changing_its_phase() {
        let mut w = pulled_worker(&["app"], RestartPolicy::Always);
        start(&mut w, 0, 1);
        let ready = w.containers_ready();
        let e = w.add_ephemeral("debugger".into());
        assert_eq!(e, 1);
        assert_eq!(
            pulls(&w.step(PodEvent::EphemeralAdded { container: e }, ts(2))),
            [e]
        );
        assert_eq!(starts(&pulled(&mut w, e)), [e]);
        start(&mut w, e, 3);
        assert_eq!(w.phase(), Phase::Running);
        assert_eq!(w.containers_ready(), ready, "not part of readiness");
        // It ends with an error: terminated for good, no back-off, the pod runs on.
        let fx = exit(&mut w, e, Exit::Code(1), 4);
        assert!(starts(&fx).is_empty() && timer(&fx).is_none(), "{fx:?}");
        assert!(matches!(w.containers[e].state, State::Terminated(ref t) if t.exit_code == 1));
        assert_eq!(w.phase(), Phase::Running);
        // Deleting the pod stops only what still runs.
        let fx = w.step(PodEvent::Delete, ts(5));
        assert_eq!(
            containers(&fx, |f| match f {
                Effect::Kill { container } => Some(*container),
                _ => None,
            }),
            [0]
        );
    }
}
