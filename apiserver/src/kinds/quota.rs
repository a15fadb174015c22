//! core/v1 LimitRange and ResourceQuota: the objects the LimitRanger and ResourceQuota
//! admission plugins (`admission/limits.rs`, `admission/quota.rs`) enforce, and the quota
//! controller keeps `status.used` of.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LimitRange, ResourceQuota};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Value, json};

use wasmkube_api::quota::milli;

use crate::error::FieldError;
use crate::registry::{Registry, Strategy};
use crate::table::{Column, age};

pub(super) fn register(r: &Registry) {
    r.register_with(LimitRangeStrategy, |i| i.short_names(&["limits"]));
    r.register_with(ResourceQuotaStrategy, |i| {
        i.short_names(&["quota"]).with_status()
    });
}

type Amounts = BTreeMap<String, Quantity>;

fn quantities(path: &str, m: Option<&Amounts>, errs: &mut Vec<FieldError>) {
    for (name, q) in m.into_iter().flatten() {
        if milli(q).is_none() {
            errs.push(FieldError::invalid(
                format!("{path}[{name}]"),
                &q.0,
                "must be a valid, non-negative quantity",
            ));
        }
    }
}

struct LimitRangeStrategy;

impl Strategy for LimitRangeStrategy {
    type K = LimitRange;

    /// `SetDefaults_LimitRangeItem`: a container's default limit is its max, its default
    /// request the default limit, else the min.
    fn default(&self, lr: &mut LimitRange) {
        for item in lr.spec.iter_mut().flat_map(|s| s.limits.iter_mut()) {
            if item.type_ != "Container" {
                continue;
            }
            let max = item.max.clone().unwrap_or_default();
            let default = item.default.get_or_insert_with(Default::default);
            for (name, q) in max {
                default.entry(name).or_insert(q);
            }
            let from = item.default.clone().unwrap_or_default();
            let min = item.min.clone().unwrap_or_default();
            let request = item.default_request.get_or_insert_with(Default::default);
            for (name, q) in from.into_iter().chain(min) {
                request.entry(name).or_insert(q);
            }
            if item.default.as_ref().is_some_and(BTreeMap::is_empty) {
                item.default = None;
            }
            if item
                .default_request
                .as_ref()
                .is_some_and(BTreeMap::is_empty)
            {
                item.default_request = None;
            }
        }
    }

    fn validate(&self, lr: &LimitRange) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (i, item) in lr.spec.iter().flat_map(|s| s.limits.iter()).enumerate() {
            let at = |f: &str| format!("spec.limits[{i}].{f}");
            errs.extend(FieldError::not_one_of(
                at("type"),
                item.type_.as_str(),
                &["Container", "PersistentVolumeClaim", "Pod"],
            ));
            for (f, m) in [
                ("min", &item.min),
                ("max", &item.max),
                ("default", &item.default),
                ("defaultRequest", &item.default_request),
                ("maxLimitRequestRatio", &item.max_limit_request_ratio),
            ] {
                quantities(&at(f), m.as_ref(), &mut errs);
            }
            let get =
                |m: &Option<Amounts>, n: &str| m.as_ref().and_then(|m| m.get(n)).and_then(milli);
            for (name, q) in item.min.iter().flatten() {
                if let (Some(min), Some(max)) = (milli(q), get(&item.max, name))
                    && min > max
                {
                    errs.push(FieldError::invalid(
                        format!("{}[{name}]", at("min")),
                        &q.0,
                        &format!(
                            "min value {} is greater than max value {}",
                            q.0,
                            item.max
                                .as_ref()
                                .and_then(|m| m.get(name))
                                .map_or("", |q| q.0.as_str())
                        ),
                    ));
                }
            }
            for (name, q) in item.default.iter().flatten() {
                if let (Some(d), Some(max)) = (milli(q), get(&item.max, name))
                    && d > max
                {
                    errs.push(FieldError::invalid(
                        format!("{}[{name}]", at("default")),
                        &q.0,
                        "default value is greater than max value",
                    ));
                }
            }
        }
        errs
    }

    fn columns(&self) -> Vec<Column> {
        vec![Column::date(
            "Created At",
            "Time when this LimitRange was created.",
        )]
    }

    fn row(&self, lr: &LimitRange) -> Vec<Value> {
        vec![json!(
            lr.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_default()
        )]
    }
}

struct ResourceQuotaStrategy;

impl Strategy for ResourceQuotaStrategy {
    type K = ResourceQuota;

    fn validate(&self, q: &ResourceQuota) -> Vec<FieldError> {
        let mut errs = Vec::new();
        quantities(
            "spec.hard",
            q.spec.as_ref().and_then(|s| s.hard.as_ref()),
            &mut errs,
        );
        errs
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::age(),
            Column::new(
                "Request",
                "Request represents a minimum amount of cpu/memory that a container may consume.",
            ),
            Column::new(
                "Limit",
                "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
            ),
        ]
    }

    fn row(&self, q: &ResourceQuota) -> Vec<Value> {
        let st = q.status.clone().unwrap_or_default();
        let (hard, used) = (st.hard.unwrap_or_default(), st.used.unwrap_or_default());
        let cell = |limits: bool| -> Value {
            let parts: Vec<String> = hard
                .iter()
                .filter(|(n, _)| n.starts_with("limits.") == limits)
                .map(|(n, h)| {
                    let u = used.get(n).map_or("0", |q| q.0.as_str());
                    format!("{n}: {u}/{}", h.0)
                })
                .collect();
            json!(parts.join(", "))
        };
        vec![
            age(q.metadata.creation_timestamp.as_ref()),
            cell(false),
            cell(true),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_limit_range_should_default_as_kubernetes_does() {
        let mut lr: LimitRange = serde_json::from_value(json!({"spec": {"limits": [
            {"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "64Mi"}, "default": {"memory": "256Mi"}}]}}))
        .expect("lr");
        LimitRangeStrategy.default(&mut lr);
        let item = &lr.spec.expect("spec").limits[0];
        let d = item.default.as_ref().expect("default");
        assert_eq!(
            (d["cpu"].0.as_str(), d["memory"].0.as_str()),
            ("2", "256Mi")
        );
        let r = item.default_request.as_ref().expect("defaultRequest");
        assert_eq!(
            (r["cpu"].0.as_str(), r["memory"].0.as_str()),
            ("2", "256Mi")
        );
    }

    #[test]
    fn limit_ranges_and_quotas_should_be_validated() {
        let lr: LimitRange = serde_json::from_value(json!({"spec": {"limits": [
            {"type": "Node", "min": {"cpu": "2"}, "max": {"cpu": "1"}}]}}))
        .expect("lr");
        let fields: Vec<String> = LimitRangeStrategy
            .validate(&lr)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["spec.limits[0].type", "spec.limits[0].min[cpu]"]);
        let q: ResourceQuota =
            serde_json::from_value(json!({"spec": {"hard": {"pods": "two"}}})).expect("q");
        assert_eq!(ResourceQuotaStrategy.validate(&q).len(), 1);
    }
}
