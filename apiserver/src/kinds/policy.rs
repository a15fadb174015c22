//! policy/v1 PodDisruptionBudget: how many of a set of pods must stay up while pods are
//! evicted (the eviction subresource reads its status; the disruption controller keeps it).

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::error::FieldError;
use crate::registry::{Registry, Strategy};
use crate::table::{Column, age};

pub(super) fn register(r: &Registry) {
    r.register_with(PdbStrategy, |i| i.short_names(&["pdb"]).with_status());
}

struct PdbStrategy;

fn shown(v: Option<&IntOrString>) -> Value {
    match v {
        Some(IntOrString::Int(n)) => Value::from(n.to_string()),
        Some(IntOrString::String(s)) => Value::from(s.clone()),
        None => Value::from("N/A"),
    }
}

/// Checks an int-or-percent budget value (`minAvailable`, `maxUnavailable`).
fn check(field: &str, v: Option<&IntOrString>, errs: &mut Vec<FieldError>) {
    match v {
        Some(IntOrString::Int(n)) if *n < 0 => errs.push(FieldError::invalid(
            field,
            n,
            "must be greater than or equal to 0",
        )),
        Some(IntOrString::String(s)) => {
            let pct = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok());
            match pct {
                None => errs.push(FieldError::invalid(
                    field,
                    s,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                )),
                Some(p) if !(0..=100).contains(&p) => errs.push(FieldError::invalid(
                    field,
                    s,
                    "must not be greater than 100%",
                )),
                Some(_) => {}
            }
        }
        _ => {}
    }
}

impl Strategy for PdbStrategy {
    type K = PodDisruptionBudget;

    fn validate(&self, pdb: &PodDisruptionBudget) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = pdb.spec.clone().unwrap_or_default();
        if spec.min_available.is_some() && spec.max_unavailable.is_some() {
            errs.push(FieldError::invalid(
                "spec",
                serde_json::to_string(&spec).unwrap_or_default(),
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
        check("spec.minAvailable", spec.min_available.as_ref(), &mut errs);
        check(
            "spec.maxUnavailable",
            spec.max_unavailable.as_ref(),
            &mut errs,
        );
        errs.extend(FieldError::not_one_of(
            "spec.unhealthyPodEvictionPolicy",
            spec.unhealthy_pod_eviction_policy.as_deref(),
            &["AlwaysAllow", "IfHealthyBudget"],
        ));
        errs
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Min Available",
                "The minimum number of pods that must be available.",
            ),
            Column::new(
                "Max Unavailable",
                "The maximum number of pods that may be unavailable.",
            ),
            Column::int(
                "Allowed Disruptions",
                "Number of pod disruptions that are currently allowed.",
            ),
            Column::age(),
        ]
    }

    fn row(&self, pdb: &PodDisruptionBudget) -> Vec<Value> {
        let spec = pdb.spec.clone().unwrap_or_default();
        vec![
            shown(spec.min_available.as_ref()),
            shown(spec.max_unavailable.as_ref()),
            Value::from(pdb.status.as_ref().map_or(0, |s| s.disruptions_allowed)),
            age(pdb.metadata.creation_timestamp.as_ref()),
        ]
    }
}
