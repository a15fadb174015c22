//! batch/v1: Job and CronJob.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};

use super::template::{WorkloadColumns, default_template, validate_template};
use crate::error::FieldError;
use crate::registry::{Registry, Strategy};
use crate::table::{Column, age, human_duration};
use crate::validation;

/// Jobs and CronJobs end their tables alike (a CronJob's selector is always `<none>`).
const JOB_COLUMNS: WorkloadColumns =
    WorkloadColumns::with_selector("A label query over pods that should match the pod count.");

/// A Job's pod template: valid as any template, and restarted only `Never` or `OnFailure`
/// (which must be given when `restart_policy_required`).
fn validate_job_template(
    path: &str,
    template: &PodTemplateSpec,
    selector: Option<&LabelSelector>,
    restart_policy_required: bool,
) -> Vec<FieldError> {
    let mut errs = validate_template(path, template, selector);
    let field = format!("{path}.spec.restartPolicy");
    match template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
    {
        Some("Never" | "OnFailure") => {}
        Some(p) => errs.push(FieldError::not_supported(
            field.clone(),
            p,
            &["OnFailure", "Never"],
        )),
        None if restart_policy_required => errs.push(FieldError::required(field, "")),
        None => {}
    }
    errs
}

pub(super) fn register(r: &Registry) {
    r.register_with(JobStrategy, |i| i.in_all().with_status());
    r.register_with(CronJobStrategy, |i| {
        i.short_names(&["cj"]).in_all().with_status()
    });
}

struct JobStrategy;

const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
const JOB_NAME: &str = "batch.kubernetes.io/job-name";

impl Strategy for JobStrategy {
    type K = Job;

    fn default(&self, job: &mut Job) {
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let spec = job.spec.get_or_insert_with(Default::default);
        if spec.completions.is_none() && spec.parallelism.is_none() {
            spec.completions = Some(1);
        }
        spec.parallelism.get_or_insert(1);
        spec.backoff_limit.get_or_insert(6);
        spec.completion_mode
            .get_or_insert_with(|| "NonIndexed".into());
        spec.suspend.get_or_insert(false);
        spec.pod_replacement_policy
            .get_or_insert_with(|| "TerminatingOrFailed".into());
        if spec.manual_selector != Some(true) && spec.selector.is_none() && !uid.is_empty() {
            // `generateSelector`: the job's pods are selected by its uid.
            spec.selector = Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(CONTROLLER_UID.to_string(), uid.clone())])),
                ..Default::default()
            });
            let labels = spec
                .template
                .metadata
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(BTreeMap::new);
            for (k, v) in [
                (CONTROLLER_UID, uid.as_str()),
                ("controller-uid", uid.as_str()),
                (JOB_NAME, name.as_str()),
                ("job-name", name.as_str()),
            ] {
                labels.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
        default_template(&mut spec.template);
    }

    fn validate(&self, job: &Job) -> Vec<FieldError> {
        let spec = job.spec.clone().unwrap_or_default();
        let mut errs = validate_job_template(
            "spec.template",
            &spec.template,
            spec.selector.as_ref(),
            true,
        );
        for (field, v) in [
            ("spec.parallelism", spec.parallelism),
            ("spec.completions", spec.completions),
            ("spec.backoffLimit", spec.backoff_limit),
        ] {
            if let Some(v) = v
                && v < 0
            {
                errs.push(FieldError::invalid(
                    field,
                    v,
                    "must be greater than or equal to 0",
                ));
            }
        }
        if let Some(d) = spec.active_deadline_seconds
            && d <= 0
        {
            errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                d,
                "must be greater than 0",
            ));
        }
        errs
    }

    fn validate_update(&self, new: &Job, old: &Job) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let (Some(n), Some(o)) = (&new.spec, &old.spec) else {
            return errs;
        };
        validation::immutable("spec.selector", &n.selector, &o.selector, &mut errs);
        validation::immutable(
            "spec.completions",
            &n.completions,
            &o.completions,
            &mut errs,
        );
        validation::immutable(
            "spec.completionMode",
            &n.completion_mode,
            &o.completion_mode,
            &mut errs,
        );
        if o.suspend != Some(true) {
            validation::immutable("spec.template", &n.template, &o.template, &mut errs);
        }
        errs
    }

    fn field_selectors(&self) -> &'static [&'static str] {
        &["status.successful"]
    }

    fn columns(&self) -> Vec<Column> {
        JOB_COLUMNS.columns(vec![
            Column::new("Status", "Status of the job."),
            Column::new(
                "Completions",
                "The desired number of successfully finished pods the job should be run with.",
            ),
            Column::new("Duration", "Time required to complete the job."),
        ])
    }

    fn row(&self, job: &Job) -> Vec<Value> {
        let spec = job.spec.clone().unwrap_or_default();
        let st = job.status.clone().unwrap_or_default();
        let cond = |t: &str| {
            st.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == t && c.status == "True")
        };
        let status = if cond("Complete") {
            "Complete"
        } else if cond("Failed") {
            "Failed"
        } else if job.metadata.deletion_timestamp.is_some() {
            "Terminating"
        } else if cond("SuccessCriteriaMet") {
            "SuccessCriteriaMet"
        } else if cond("FailureTarget") {
            "FailureTarget"
        } else if spec.suspend == Some(true) {
            "Suspended"
        } else {
            "Running"
        };
        let completions = match spec.completions {
            Some(c) => format!("{}/{c}", st.succeeded.unwrap_or(0)),
            None => {
                let p = spec.parallelism.unwrap_or(1);
                if p > 1 {
                    format!("{}/1 of {p}", st.succeeded.unwrap_or(0))
                } else {
                    format!("{}/1", st.succeeded.unwrap_or(0))
                }
            }
        };
        let duration = match (&st.start_time, &st.completion_time) {
            (Some(s), Some(c)) => human_duration(c.0.as_second() - s.0.as_second()),
            (Some(s), None) => human_duration(jiff::Timestamp::now().as_second() - s.0.as_second()),
            _ => String::new(),
        };
        JOB_COLUMNS.row(
            vec![json!(status), json!(completions), json!(duration)],
            &job.metadata,
            spec.template.spec.as_ref(),
            spec.selector.as_ref(),
        )
    }
}

struct CronJobStrategy;

/// Accepts the five-field cron syntax and the `@` macros, as `robfig/cron`'s standard parser.
fn valid_schedule(s: &str) -> bool {
    let s = s.trim();
    let s = s
        .strip_prefix("TZ=")
        .or(s.strip_prefix("CRON_TZ="))
        .map_or(s, |rest| rest.split_once(' ').map_or("", |(_, r)| r));
    if let Some(m) = s.strip_prefix('@') {
        return matches!(
            m,
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly"
        ) || m.starts_with("every ");
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    fields.len() == 5
        && fields.iter().all(|f| {
            f.split(',').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | '-' | '?'))
            })
        })
}

impl Strategy for CronJobStrategy {
    type K = CronJob;

    fn default(&self, cj: &mut CronJob) {
        let spec = cj.spec.get_or_insert_with(Default::default);
        spec.concurrency_policy
            .get_or_insert_with(|| "Allow".into());
        spec.suspend.get_or_insert(false);
        spec.successful_jobs_history_limit.get_or_insert(3);
        spec.failed_jobs_history_limit.get_or_insert(1);
        if let Some(js) = spec.job_template.spec.as_mut() {
            default_template(&mut js.template);
        }
    }

    fn validate(&self, cj: &CronJob) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = cj.spec.clone().unwrap_or_default();
        if spec.schedule.is_empty() {
            errs.push(FieldError::required("spec.schedule", ""));
        } else if !valid_schedule(&spec.schedule) {
            errs.push(FieldError::invalid(
                "spec.schedule",
                &spec.schedule,
                "unparseable cron schedule",
            ));
        }
        errs.extend(FieldError::not_one_of(
            "spec.concurrencyPolicy",
            spec.concurrency_policy.as_deref(),
            &["Allow", "Forbid", "Replace"],
        ));
        match spec.job_template.spec.as_ref() {
            Some(js) => {
                errs.extend(validate_job_template(
                    "spec.jobTemplate.spec.template",
                    &js.template,
                    None,
                    false,
                ));
            }
            None => errs.push(FieldError::required("spec.jobTemplate.spec", "")),
        }
        errs
    }

    fn columns(&self) -> Vec<Column> {
        JOB_COLUMNS.columns(vec![
            Column::new(
                "Schedule",
                "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
            ),
            Column::new(
                "Timezone",
                "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones.",
            ),
            Column::new(
                "Suspend",
                "This flag tells the controller to suspend subsequent executions.",
            ),
            Column::int("Active", "A list of pointers to currently running jobs."),
            Column::new(
                "Last Schedule",
                "Information when was the last time the job was successfully scheduled.",
            ),
        ])
    }

    fn row(&self, cj: &CronJob) -> Vec<Value> {
        let spec = cj.spec.clone().unwrap_or_default();
        let st = cj.status.clone().unwrap_or_default();
        JOB_COLUMNS.row(
            vec![
                json!(spec.schedule),
                json!(spec.time_zone.unwrap_or_else(|| "<none>".into())),
                json!(if spec.suspend == Some(true) {
                    "True"
                } else {
                    "False"
                }),
                json!(st.active.as_ref().map_or(0, Vec::len)),
                match &st.last_schedule_time {
                    Some(t) => age(Some(t)),
                    None => json!("<none>"),
                },
            ],
            &cj.metadata,
            spec.job_template
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref()),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::valid_schedule;

    #[test]
    fn schedules_should_parse_like_cron() {
        for ok in [
            "*/5 * * * *",
            "0 0 * * MON-FRI",
            "@hourly",
            "TZ=UTC 0 3 * * *",
        ] {
            assert!(valid_schedule(ok), "{ok}");
        }
        for bad in ["* * *", "@sometimes", "", "a b c d e f"] {
            assert!(!valid_schedule(bad), "{bad}");
        }
    }
}
