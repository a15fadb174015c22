//! The Job controller (`job_controller.go`): run pods until `completions` succeed, at most
//! `parallelism` at a time; give up after `backoffLimit` failures or `activeDeadlineSeconds`
//! (conditions `Failed` with `BackoffLimitExceeded` / `DeadlineExceeded`), report `Complete`
//! (with `SuccessCriteriaMet`, as Kubernetes 1.31+ does) and `completionTime`, and delete
//! finished Jobs after `ttlSecondsAfterFinished`. Failed pods are retried with the Job
//! back-off (10 s doubling, capped at 6 minutes).

use std::sync::Arc;
use std::time::Duration;

use crate::workqueue::Action;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DeleteParams;
use kube::{Api, Resource, ResourceExt};

/// What the reconciler needs.
pub type Ctx = crate::PodOwnerCtx;

/// Reconcile errors (retried with back-off).
pub type Error = crate::ReconcileError;

/// Counts of a Job's pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Running or pending, not being deleted.
    pub active: i32,
    /// Ended successfully.
    pub succeeded: i32,
    /// Ended in failure (plus container restarts under `OnFailure`).
    pub failed: i32,
    /// Active and Ready.
    pub ready: i32,
}

/// What the Job should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create this many pods.
    Create(i32),
    /// Delete this many active pods (parallelism lowered).
    Delete(i32),
    /// Nothing to do now.
    Wait,
    /// Finished successfully.
    Complete,
    /// Finished in failure.
    Fail {
        /// `BackoffLimitExceeded` or `DeadlineExceeded`.
        reason: &'static str,
        /// Kubernetes' message.
        message: &'static str,
    },
}

/// The decision for a Job with these counts (pure).
pub fn step(
    completions: Option<i32>,
    parallelism: i32,
    backoff_limit: i32,
    deadline_passed: bool,
    c: Counts,
) -> Step {
    if c.failed > backoff_limit {
        return Step::Fail {
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit",
        };
    }
    if deadline_passed {
        return Step::Fail {
            reason: "DeadlineExceeded",
            message: "Job was active longer than specified deadline",
        };
    }
    let want_active = match completions {
        Some(n) => {
            if c.succeeded >= n {
                return Step::Complete;
            }
            parallelism.min(n - c.succeeded)
        }
        // A work queue: done once one pod succeeded and none is left running.
        None if c.succeeded > 0 => {
            if c.active == 0 {
                return Step::Complete;
            }
            0
        }
        None => parallelism,
    };
    match c.active.cmp(&want_active) {
        std::cmp::Ordering::Less => Step::Create(want_active - c.active),
        std::cmp::Ordering::Greater if completions.is_some() => {
            Step::Delete(c.active - want_active)
        }
        _ => Step::Wait,
    }
}

/// The pod back-off after `failures` failures (10 s doubling, capped at 6 minutes).
pub fn backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    (Duration::from_secs(10) * 2u32.pow(u32::try_from(failures - 1).unwrap_or(0).min(10)))
        .min(Duration::from_secs(360))
}

fn finished(job: &Job) -> Option<Timestamp> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    conds
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map_or(Timestamp::now(), |t| t.0)
        })
}

fn pod_for(job: &Job) -> Pod {
    let template = job.spec.as_ref().map(|s| s.template.clone());
    let mut pod = crate::pod_from_template(
        job,
        template.unwrap_or_default(),
        crate::controller_ref(job),
    );
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert("batch.kubernetes.io/job-name".into(), job.name_any());
    labels.insert("job-name".into(), job.name_any());
    labels.insert("batch.kubernetes.io/controller-uid".into(), uid);
    pod
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Makes the world match one Job.
///
/// # Errors
/// API failures (retried with back-off).
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = job.spec.clone().unwrap_or_default();
    let now = Timestamp::now();
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if let Some(done) = finished(&job) {
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let expires = done + jiff::SignedDuration::from_secs(i64::from(ttl));
            if now >= expires {
                match jobs
                    .delete(&job.name_any(), &DeleteParams::background())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
                return Ok(Action::await_change());
            }
            return Ok(Action::requeue(
                expires
                    .duration_since(now)
                    .unsigned_abs()
                    .max(Duration::from_millis(100)),
            ));
        }
        return Ok(Action::await_change());
    }
    if ctx.pods.wait_until_ready().await.is_err() {
        return Ok(Action::await_change());
    }
    let owned: Vec<Arc<Pod>> = crate::controlled_by(&ctx.pods, &ns, &uid).collect();
    if !ctx.expectations.satisfied_by(&uid, &owned) {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let active: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none() && !matches!(phase(p), "Succeeded" | "Failed")
        })
        .collect();
    let restarts: i32 = if on_failure {
        active
            .iter()
            .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
            .flatten()
            .map(|c| c.restart_count)
            .sum()
    } else {
        0
    };
    let counts = Counts {
        active: i32::try_from(active.len()).unwrap_or(i32::MAX),
        succeeded: i32::try_from(owned.iter().filter(|p| phase(p) == "Succeeded").count())
            .unwrap_or(i32::MAX),
        failed: i32::try_from(owned.iter().filter(|p| phase(p) == "Failed").count())
            .unwrap_or(i32::MAX)
            + restarts,
        ready: i32::try_from(
            active
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .count(),
        )
        .unwrap_or(i32::MAX),
    };
    let start = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map_or(now, |t| t.0);
    let deadline_passed = spec
        .active_deadline_seconds
        .is_some_and(|d| now.duration_since(start).as_secs() >= d);
    let decision = step(
        spec.completions,
        spec.parallelism.unwrap_or(1),
        spec.backoff_limit.unwrap_or(6),
        deadline_passed,
        counts,
    );

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let job_ref = || job.object_ref(&());
    let control = crate::podcontrol::PodControl {
        pods: &pods,
        recorder: &ctx.recorder,
        owner: job_ref(),
    };
    let mut requeue = None;
    let mut conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut completion_time = None;
    let condition = |type_: &str, reason: &str, message: &str| JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    match &decision {
        Step::Create(n) => {
            // Retry failed pods only after the back-off since the last failure.
            let last_failure = owned
                .iter()
                .filter(|p| phase(p) == "Failed")
                .filter_map(|p| {
                    p.status
                        .as_ref()?
                        .container_statuses
                        .as_ref()?
                        .iter()
                        .filter_map(|c| {
                            c.state
                                .as_ref()?
                                .terminated
                                .as_ref()?
                                .finished_at
                                .as_ref()
                                .map(|t| t.0)
                        })
                        .max()
                })
                .max();
            let wait = last_failure.map_or(Duration::ZERO, |t| {
                backoff(counts.failed).saturating_sub(now.duration_since(t).unsigned_abs())
            });
            if wait > Duration::ZERO {
                requeue = Some(wait);
            } else {
                let template = pod_for(&job);
                let n = usize::try_from(*n).unwrap_or(0);
                let (created, failed) = control.create_all(&vec![template; n]).await;
                if let Some(e) = failed {
                    tracing::warn!(job = %job.name_any(), error = %e, "could not create a pod");
                }
                ctx.expectations.expect_creations(&uid, created);
            }
        }
        Step::Delete(n) => {
            for p in active.iter().take(usize::try_from(*n).unwrap_or(0)) {
                let _ = control.delete(p, &DeleteParams::default()).await;
            }
        }
        Step::Wait => {}
        Step::Complete => {
            conditions.push(condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            conditions.push(condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            completion_time = Some(Time(now));
            ctx.recorder
                .normal(job_ref(), "Completed", "Complete", "Job completed".into());
        }
        Step::Fail { reason, message } => {
            for p in &active {
                let _ = control.delete(p, &DeleteParams::default()).await;
            }
            ctx.recorder
                .warning(job_ref(), reason, "Fail", (*message).to_string());
            conditions.push(condition("FailureTarget", reason, message));
            conditions.push(condition("Failed", reason, message));
        }
    }
    let finishing = matches!(decision, Step::Complete | Step::Fail { .. });
    let status = JobStatus {
        start_time: Some(Time(start)),
        active: Some(if finishing { 0 } else { counts.active }),
        succeeded: Some(counts.succeeded),
        failed: Some(counts.failed),
        ready: Some(counts.ready),
        completion_time: completion_time
            .or_else(|| job.status.as_ref().and_then(|s| s.completion_time.clone())),
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating: Some(
            i32::try_from(
                owned
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_some())
                    .count(),
            )
            .unwrap_or(0),
        ),
        ..Default::default()
    };
    crate::write_status(&ctx.client, &*job, job.status.as_ref(), &status).await?;
    if let Some(d) = spec.active_deadline_seconds
        && !finishing
    {
        let left = Duration::from_secs(u64::try_from(d).unwrap_or(0))
            .saturating_sub(now.duration_since(start).unsigned_abs());
        requeue = Some(
            requeue
                .map_or(left, |r: Duration| r.min(left))
                .max(Duration::from_millis(100)),
        );
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(active: i32, succeeded: i32, failed: i32) -> Counts {
        Counts {
            active,
            succeeded,
            failed,
            ready: 0,
        }
    }

    #[test]
    fn completions_run_at_most_parallelism_pods_at_a_time() {
        assert_eq!(step(Some(5), 2, 6, false, counts(0, 0, 0)), Step::Create(2));
        assert_eq!(step(Some(5), 2, 6, false, counts(2, 2, 0)), Step::Wait);
        assert_eq!(
            step(Some(5), 2, 6, false, counts(1, 4, 0)),
            Step::Wait,
            "only one completion left"
        );
        assert_eq!(step(Some(5), 2, 6, false, counts(0, 4, 0)), Step::Create(1));
        assert_eq!(step(Some(5), 2, 6, false, counts(0, 5, 0)), Step::Complete);
    }

    #[test]
    fn failures_beyond_the_backoff_limit_or_the_deadline_fail_the_job() {
        assert!(matches!(
            step(Some(1), 1, 2, false, counts(0, 0, 3)),
            Step::Fail {
                reason: "BackoffLimitExceeded",
                ..
            }
        ));
        assert_eq!(
            step(Some(1), 1, 2, false, counts(0, 0, 2)),
            Step::Create(1),
            "a retry"
        );
        assert!(matches!(
            step(Some(1), 1, 6, true, counts(1, 0, 0)),
            Step::Fail {
                reason: "DeadlineExceeded",
                ..
            }
        ));
    }

    #[test]
    fn a_work_queue_completes_when_one_succeeded_and_none_runs() {
        assert_eq!(step(None, 3, 6, false, counts(0, 0, 0)), Step::Create(3));
        assert_eq!(step(None, 3, 6, false, counts(2, 1, 0)), Step::Wait);
        assert_eq!(step(None, 3, 6, false, counts(0, 1, 0)), Step::Complete);
    }

    #[test]
    fn retries_back_off_exponentially() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(20), Duration::from_secs(360));
    }
}
