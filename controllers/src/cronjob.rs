//! The CronJob controller (`cronjob_controllerv2.go`): a Job per scheduled time (standard
//! five-field cron, `@hourly`-style macros, optional `timeZone`), named
//! `<cronjob>-<minutes since the epoch>` so a time is never run twice; `concurrencyPolicy`
//! (Allow, Forbid, Replace), `startingDeadlineSeconds`, `suspend`, and the
//! successful/failed history limits. Cron parsing is the `croner` crate's.

use std::sync::Arc;
use std::time::Duration;

use crate::workqueue::Action;
use croner::Cron;
use jiff::{Timestamp, Zoned};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};

/// The annotation with the time a Job was scheduled for.
pub const SCHEDULED: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// What the reconciler needs.
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// Every Job.
    pub jobs: Store<Job>,
    /// Its events (`SuccessfulCreate`, `SawCompletedJob`, `SuccessfulDelete`, ...).
    pub recorder: wasmkube_client::events::Recorder,
    /// The finished Jobs whose `SawCompletedJob` is recorded, while they are cached.
    pub seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Reconcile errors (retried with back-off).
pub type Error = crate::ReconcileError;

/// Parses a schedule in `tz` (IANA name; UTC when absent).
///
/// # Errors
/// A message naming what is wrong with the schedule or time zone.
pub fn parse(schedule: &str, tz: Option<&str>) -> Result<(Cron, jiff::tz::TimeZone), String> {
    let cron: Cron = schedule
        .parse()
        .map_err(|e| format!("unparseable schedule {schedule:?}: {e}"))?;
    let zone = match tz {
        Some(name) => {
            jiff::tz::TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))?
        }
        None => jiff::tz::TimeZone::UTC,
    };
    Ok((cron, zone))
}

/// The latest scheduled time in `(after, now]`, and the next one after `now`.
pub fn schedule_times(
    cron: &Cron,
    tz: &jiff::tz::TimeZone,
    after: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, Option<Timestamp>) {
    let now_z = Zoned::new(now, tz.clone());
    let latest = cron
        .find_previous_occurrence(&now_z, true)
        .ok()
        .map(|z| z.timestamp())
        .filter(|t| *t > after);
    let next = cron
        .find_next_occurrence(&now_z, false)
        .ok()
        .map(|z| z.timestamp());
    (latest, next)
}

fn job_finished(job: &Job) -> Option<bool> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    if conds
        .iter()
        .any(|c| c.type_ == "Complete" && c.status == "True")
    {
        return Some(true);
    }
    conds
        .iter()
        .any(|c| c.type_ == "Failed" && c.status == "True")
        .then_some(false)
}

/// Makes the world match one CronJob.
///
/// # Errors
/// API failures (retried with back-off).
pub async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if ctx.jobs.wait_until_ready().await.is_err() {
        return Ok(Action::await_change());
    }
    let ns = cj.namespace().unwrap_or_else(|| "default".into());
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let mut owned: Vec<Arc<Job>> = crate::controlled_by(&ctx.jobs, &ns, &uid).collect();
    owned.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let active: Vec<&Arc<Job>> = owned
        .iter()
        .filter(|j| job_finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();
    let cj_ref = || cj.object_ref(&());
    // Jobs the last status listed as active that have since finished.
    let was_active = |j: &Job| {
        cj.status
            .as_ref()
            .and_then(|s| s.active.as_ref())
            .is_some_and(|a| a.iter().any(|r| r.uid == j.metadata.uid))
    };
    {
        // Said once per Job: a reconcile may still read the status from before the last one
        // wrote it.
        let mut seen = ctx.seen.lock().expect("the seen lock is not poisoned");
        for j in owned.iter().filter(|j| was_active(j)) {
            let uid = j.metadata.uid.clone().unwrap_or_default();
            if let Some(ok) = job_finished(j)
                && seen.insert(uid)
            {
                let status = if ok { "Complete" } else { "Failed" };
                let note = format!("Saw completed job: {}, status: {status}", j.name_any());
                ctx.recorder
                    .normal(cj_ref(), "SawCompletedJob", "Complete", note);
            }
        }
        let cached: std::collections::HashSet<String> = ctx
            .jobs
            .state()
            .iter()
            .filter_map(|j| j.metadata.uid.clone())
            .collect();
        seen.retain(|uid| cached.contains(uid));
    }
    let delete_job = |j: &Arc<Job>| {
        let api = jobs_api.clone();
        let name = j.name_any();
        let regarding = cj_ref();
        let recorder = &ctx.recorder;
        async move {
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => recorder.normal(
                    regarding,
                    "SuccessfulDelete",
                    "Delete",
                    format!("Deleted job {name}"),
                ),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => recorder.warning(
                    regarding,
                    "FailedDelete",
                    "Delete",
                    format!("Deleted job: {e}"),
                ),
            }
        }
    };

    let (cron, tz) = match parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(p) => p,
        Err(message) => {
            tracing::warn!(cronjob = %cj.name_any(), %message, "invalid schedule");
            return Ok(Action::await_change());
        }
    };
    let now = Timestamp::now();
    let after = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0);
    let (due, next) = schedule_times(&cron, &tz, after, now);
    let mut last_schedule = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.clone());
    if let Some(at) = due
        && !spec.suspend.unwrap_or(false)
    {
        let too_late = spec
            .starting_deadline_seconds
            .is_some_and(|d| now.duration_since(at).as_secs() > d);
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        let blocked = policy == "Forbid" && !active.is_empty();
        if too_late {
            let note = format!(
                "Missed scheduled time to start a job: {}",
                at.strftime("%a, %d %b %Y %H:%M:%S +0000")
            );
            ctx.recorder
                .warning(cj_ref(), "MissSchedule", "Create", note);
        } else if blocked {
            ctx.recorder.normal(
                cj_ref(),
                "JobAlreadyActive",
                "Create",
                "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            );
        } else {
            if policy == "Replace" {
                for j in &active {
                    delete_job(j).await;
                }
            }
            let template = spec.job_template.clone();
            let meta = template.metadata.unwrap_or_default();
            let job = Job {
                metadata: ObjectMeta {
                    name: Some(format!("{}-{}", cj.name_any(), at.as_second() / 60)),
                    namespace: Some(ns.clone()),
                    labels: meta.labels,
                    annotations: Some(
                        meta.annotations
                            .unwrap_or_default()
                            .into_iter()
                            .chain([(SCHEDULED.to_owned(), at.to_string())])
                            .collect(),
                    ),
                    owner_references: Some(vec![crate::controller_ref(&*cj)]),
                    ..Default::default()
                },
                spec: template.spec,
                status: None,
            };
            match jobs_api.create(&PostParams::default(), &job).await {
                Ok(j) => {
                    let note = format!("Created job {}", j.name_any());
                    ctx.recorder
                        .normal(cj_ref(), "SuccessfulCreate", "Create", note);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    let note = format!("Error creating job: {e}");
                    ctx.recorder
                        .warning(cj_ref(), "FailedCreate", "Create", note);
                    return Err(e.into());
                }
            }
        }
        // A skipped or late time still counts as handled.
        last_schedule = Some(Time(at));
    }

    // History limits: oldest finished jobs beyond the limits go.
    let keep_ok = usize::try_from(spec.successful_jobs_history_limit.unwrap_or(3)).unwrap_or(3);
    let keep_failed = usize::try_from(spec.failed_jobs_history_limit.unwrap_or(1)).unwrap_or(1);
    for (succeeded, keep) in [(true, keep_ok), (false, keep_failed)] {
        let done: Vec<&Arc<Job>> = owned
            .iter()
            .filter(|j| job_finished(j) == Some(succeeded))
            .collect();
        if done.len() > keep {
            for j in &done[..done.len() - keep] {
                delete_job(j).await;
            }
        }
    }

    let last_successful = owned
        .iter()
        .filter(|j| job_finished(j) == Some(true))
        .filter_map(|j| j.status.as_ref()?.completion_time.clone())
        .max_by_key(|t| t.0)
        .or_else(|| {
            cj.status
                .as_ref()
                .and_then(|s| s.last_successful_time.clone())
        });
    let status = CronJobStatus {
        active: (!active.is_empty()).then(|| {
            active
                .iter()
                .map(|j| ObjectReference {
                    api_version: Some("batch/v1".into()),
                    kind: Some("Job".into()),
                    name: Some(j.name_any()),
                    namespace: Some(ns.clone()),
                    uid: j.metadata.uid.clone(),
                    resource_version: j.metadata.resource_version.clone(),
                    field_path: None,
                })
                .collect()
        }),
        last_schedule_time: last_schedule,
        last_successful_time: last_successful,
    };
    crate::write_status(&ctx.client, &*cj, cj.status.as_ref(), &status).await?;
    let wait = next.map_or(Duration::from_secs(60), |t| {
        t.duration_since(Timestamp::now()).unsigned_abs()
    });
    Ok(Action::requeue(
        wait.max(Duration::from_millis(100)) + Duration::from_millis(50),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn the_latest_due_time_and_the_next_one() {
        let (cron, tz) = parse("*/15 * * * *", None).expect("schedule");
        let (due, next) = schedule_times(
            &cron,
            &tz,
            ts("2026-01-01T00:00:00Z"),
            ts("2026-01-01T00:31:10Z"),
        );
        assert_eq!(
            due,
            Some(ts("2026-01-01T00:30:00Z")),
            "only the latest missed time runs"
        );
        assert_eq!(next, Some(ts("2026-01-01T00:45:00Z")));
        let (due, _) = schedule_times(
            &cron,
            &tz,
            ts("2026-01-01T00:30:00Z"),
            ts("2026-01-01T00:31:10Z"),
        );
        assert_eq!(due, None, "already handled");
    }

    #[test]
    fn macros_and_time_zones_parse_and_garbage_does_not() {
        let (cron, tz) = parse("@daily", Some("Europe/Berlin")).expect("schedule");
        let (_, next) = schedule_times(
            &cron,
            &tz,
            ts("2026-01-01T00:00:00Z"),
            ts("2026-01-01T12:00:00Z"),
        );
        assert_eq!(next, Some(ts("2026-01-01T23:00:00Z")), "midnight in Berlin");
        assert!(parse("every tuesday", None).is_err());
        assert!(parse("* * * * *", Some("Mars/Olympus")).is_err());
    }
}
