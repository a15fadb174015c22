//! The pod status as the kubelet reports it, computed from the worker's state (pure).

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::pod::worker::{PodWorker, State, Terminated};

/// Node-level facts the status carries.
#[derive(Debug, Clone, Default)]
pub(crate) struct Addresses {
    /// `status.hostIP`.
    pub host_ip: String,
    /// `status.podIP` (empty: none yet).
    pub pod_ip: String,
}

/// The status to report for `pod` given the worker state. A condition keeps its transition
/// time unless it flips. The time comes from `reported`, the status this wasmlet last reported
/// for the pod, and only for a condition it has not reported yet from `pod`'s status in the
/// API (after a wasmlet restart). The kubelet's status manager does the same with its own cache:
/// the API's copy may be an echo of an older write, and taking times from it made two writes
/// in flight answer each other's echoes for ever.
pub(crate) fn pod_status(
    pod: &Pod,
    reported: Option<&PodStatus>,
    worker: &PodWorker,
    addrs: &Addresses,
    now: Timestamp,
) -> PodStatus {
    let spec = pod.spec.as_ref();
    let image_of = |name: &str| {
        spec.into_iter()
            .flat_map(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .chain(s.containers.iter())
                    .map(|c| (&c.name, &c.image))
                    .chain(
                        s.ephemeral_containers
                            .iter()
                            .flatten()
                            .map(|c| (&c.name, &c.image)),
                    )
            })
            .find(|(n, _)| *n == name)
            .and_then(|(_, image)| image.clone())
            .unwrap_or_default()
    };
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    // Init, app or ephemeral containers' statuses.
    let statuses = |init: bool, ephemeral: bool| -> Vec<ContainerStatus> {
        worker
            .containers
            .iter()
            .filter(|c| c.init == init && c.ephemeral == ephemeral)
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: image_of(&c.name),
                image_id: c.image_id.clone().unwrap_or_default(),
                container_id: matches!(c.state, State::Running { .. } | State::Terminated(_))
                    .then(|| format!("wasm://{uid}/{}/{}", c.name, c.restart_count)),
                ready: c.ready,
                started: Some(c.started && matches!(c.state, State::Running { .. })),
                restart_count: i32::try_from(c.restart_count).unwrap_or(i32::MAX),
                state: Some(state(&c.state)),
                last_state: Some(
                    c.last
                        .as_ref()
                        .map(|t| ContainerState {
                            terminated: Some(terminated(t)),
                            ..Default::default()
                        })
                        .unwrap_or_default(),
                ),
                ..Default::default()
            })
            .collect()
    };
    let previous = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    // The kubelet names the containers that hold the pod back.
    let unready: Vec<&str> = worker
        .containers
        .iter()
        .filter(|c| !c.init && !c.ephemeral && !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let unready_message = format!("containers with unready status: [{}]", unready.join(" "));
    let condition = |type_: &str, ok: bool, reason: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        let since = find(reported.and_then(|s| s.conditions.as_ref()), type_)
            .or_else(|| find(previous, type_))
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        PodCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            last_transition_time: Some(since),
            reason: (!ok).then(|| reason.map(str::to_owned)).flatten(),
            message: (!ok && reason == Some("ContainersNotReady") && !unready.is_empty())
                .then(|| unready_message.clone()),
            ..Default::default()
        }
    };
    let phase = worker.phase();
    let done = matches!(
        phase,
        crate::pod::worker::Phase::Succeeded | crate::pod::worker::Phase::Failed
    );
    let containers_ready = worker.containers_ready() && !done;
    // Readiness gates: conditions other components set; the pod is Ready only when all are True.
    let gates_ready = spec
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
        .all(|g| {
            previous
                .into_iter()
                .flatten()
                .any(|c| c.type_ == g.condition_type && c.status == "True")
        });
    let ready = containers_ready && gates_ready;
    let not_ready_reason = if done {
        "PodCompleted"
    } else if containers_ready {
        "ReadinessGatesNotReady"
    } else {
        "ContainersNotReady"
    };
    let init_statuses = statuses(true, false);
    let ephemeral_statuses = statuses(false, true);
    let mut conditions = vec![
        condition("PodReadyToStartContainers", true, None),
        condition(
            "Initialized",
            worker.initialized(),
            Some("ContainersNotInitialized"),
        ),
        condition("Ready", ready, Some(not_ready_reason)),
        condition(
            "ContainersReady",
            containers_ready,
            Some(if done {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ),
        condition("PodScheduled", true, None),
    ];
    // Conditions owned by others (readiness gates, DisruptionTarget, ...) are kept.
    let ours: Vec<String> = conditions.iter().map(|c| c.type_.clone()).collect();
    conditions.extend(
        previous
            .into_iter()
            .flatten()
            .filter(|c| !ours.contains(&c.type_))
            .cloned(),
    );
    PodStatus {
        phase: Some(phase.as_str().to_owned()),
        conditions: Some(conditions),
        host_ip: Some(addrs.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: addrs.host_ip.clone(),
        }]),
        pod_ip: (!addrs.pod_ip.is_empty()).then(|| addrs.pod_ip.clone()),
        pod_ips: (!addrs.pod_ip.is_empty()).then(|| {
            vec![PodIP {
                ip: addrs.pod_ip.clone(),
            }]
        }),
        start_time: worker.start_time.map(Time),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(statuses(false, false)),
        ephemeral_container_statuses: (!ephemeral_statuses.is_empty())
            .then_some(ephemeral_statuses),
        qos_class: pod.status.as_ref().and_then(|s| s.qos_class.clone()),
        ..Default::default()
    }
}

/// The condition of `type_` among `conditions`.
fn find<'a>(conditions: Option<&'a Vec<PodCondition>>, type_: &str) -> Option<&'a PodCondition> {
    conditions?.iter().find(|c| c.type_ == type_)
}

fn state(s: &State) -> ContainerState {
    match s {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some((*reason).to_owned()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(terminated(t)),
            ..Default::default()
        },
    }
}

fn terminated(t: &Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: Some(Time(t.started_at)),
        finished_at: Some(Time(t.finished_at)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::worker::{Backoff, PodEvent, RestartPolicy};
    use crate::runtime::instance::Exit;

    #[test]
    fn a_completed_pod_reports_succeeded_with_terminated_containers() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "hello:v1"}]}
        }))
        .expect("pod");
        let mut w = PodWorker::new(&[], &["c".into()], RestartPolicy::Never, Backoff::default());
        let t0 = Timestamp::from_second(1_700_000_000).expect("ts");
        w.step(PodEvent::Begin, t0);
        w.step(
            PodEvent::ImageReady {
                container: 0,
                result: Ok("reg/hello@sha256:1".into()),
            },
            t0,
        );
        w.step(
            PodEvent::Started {
                container: 0,
                at: t0,
            },
            t0,
        );
        let running = pod_status(
            &pod,
            None,
            &w,
            &Addresses {
                host_ip: "127.0.0.1".into(),
                pod_ip: "127.77.0.2".into(),
            },
            t0,
        );
        assert_eq!(running.phase.as_deref(), Some("Running"));
        let ready = running
            .conditions
            .as_ref()
            .expect("conditions")
            .iter()
            .find(|c| c.type_ == "Ready")
            .cloned()
            .expect("Ready");
        assert_eq!(ready.status, "True");

        let mut pod = pod;
        pod.status = Some(running);
        w.step(
            PodEvent::Exited {
                container: 0,
                exit: Exit::Code(0),
                at: t0,
            },
            t0,
        );
        let later = Timestamp::from_second(1_700_000_100).expect("ts");
        let s = pod_status(&pod, None, &w, &Addresses::default(), later);
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        let cs = &s.container_statuses.as_ref().expect("statuses")[0];
        let t = cs
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("terminated");
        assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
        assert_eq!(cs.image_id, "reg/hello@sha256:1");
        let conds = s.conditions.expect("conditions");
        let ready = conds.iter().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("PodCompleted"))
        );
        assert_eq!(ready.last_transition_time, Some(Time(later)), "flipped now");
        let init = conds
            .iter()
            .find(|c| c.type_ == "Initialized")
            .expect("Initialized");
        assert_eq!(
            init.last_transition_time,
            Some(Time(t0)),
            "unchanged conditions keep their time"
        );
    }

    #[test]
    fn transition_times_should_follow_what_this_wasmlet_reported_not_stale_echoes() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "hello:v1"}]}
        }))
        .expect("pod");
        let mut w = PodWorker::new(
            &[],
            &["c".into()],
            RestartPolicy::Always,
            Backoff::default(),
        );
        let t0 = Timestamp::from_second(1_700_000_000).expect("ts");
        w.step(PodEvent::Begin, t0);
        let waiting = pod_status(&pod, None, &w, &Addresses::default(), t0);
        let ready_of = |s: &PodStatus| {
            s.conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready")
                .map(|c| (c.status.clone(), c.last_transition_time.clone()))
                .expect("Ready")
        };
        assert_eq!(ready_of(&waiting).0, "False");
        w.step(
            PodEvent::ImageReady {
                container: 0,
                result: Ok("reg/hello@sha256:1".into()),
            },
            t0,
        );
        let t1 = Timestamp::from_second(1_700_000_010).expect("ts");
        w.step(
            PodEvent::Started {
                container: 0,
                at: t1,
            },
            t1,
        );
        // The API still shows the older, not-ready status (the echo of an earlier write).
        pod.status = Some(waiting.clone());
        let ready = pod_status(&pod, Some(&waiting), &w, &Addresses::default(), t1);
        assert_eq!(ready_of(&ready), ("True".into(), Some(Time(t1))));
        // Later echoes, stale or fresh, do not move the time this wasmlet reported.
        let t2 = Timestamp::from_second(1_700_000_020).expect("ts");
        for echo in [waiting.clone(), ready.clone(), waiting] {
            pod.status = Some(echo);
            let again = pod_status(&pod, Some(&ready), &w, &Addresses::default(), t2);
            assert_eq!(again, ready, "a fixed point: nothing new to write");
        }
        // A wasmlet that restarts keeps the API's times.
        pod.status = Some(ready.clone());
        let restarted = pod_status(&pod, None, &w, &Addresses::default(), t2);
        assert_eq!(ready_of(&restarted), ("True".into(), Some(Time(t1))));
    }
}
