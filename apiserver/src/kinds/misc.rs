//! coordination.k8s.io/v1 Lease, discovery.k8s.io/v1 EndpointSlice and scheduling.k8s.io/v1
//! PriorityClass.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use serde_json::{Value, json};

use crate::error::FieldError;
use crate::registry::{Registry, Strategy};
use crate::table::{Column, age};
use crate::validation;

pub(super) fn register(r: &Registry) {
    r.register(LeaseStrategy);
    r.register(EndpointSliceStrategy);
    r.register(PriorityClassStrategy);
}

/// The highest value a user-defined PriorityClass may have (higher ones are the system's).
pub(crate) const HIGHEST_USER_PRIORITY: i32 = 1_000_000_000;

/// The built-in classes Kubernetes creates at start-up, and their values.
pub(crate) const SYSTEM_PRIORITY_CLASSES: &[(&str, i32)] = &[
    ("system-node-critical", 2_000_001_000),
    ("system-cluster-critical", 2_000_000_000),
];

struct PriorityClassStrategy;

impl Strategy for PriorityClassStrategy {
    type K = PriorityClass;

    fn default(&self, pc: &mut PriorityClass) {
        pc.preemption_policy
            .get_or_insert_with(|| "PreemptLowerPriority".into());
    }

    fn validate(&self, pc: &PriorityClass) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let name = pc.metadata.name.as_deref().unwrap_or_default();
        if name.starts_with("system-") && !SYSTEM_PRIORITY_CLASSES.iter().any(|(n, _)| *n == name) {
            errs.push(FieldError::forbidden(
                "metadata.name",
                "priority class names with 'system-' prefix are reserved",
            ));
        }
        if pc.value > HIGHEST_USER_PRIORITY && !name.starts_with("system-") {
            errs.push(FieldError::forbidden(
                "value",
                &format!(
                    "maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"
                ),
            ));
        }
        errs.extend(FieldError::not_one_of(
            "preemptionPolicy",
            pc.preemption_policy.as_deref(),
            &["Never", "PreemptLowerPriority"],
        ));
        errs
    }

    fn validate_update(&self, new: &PriorityClass, old: &PriorityClass) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if new.value != old.value {
            errs.push(FieldError::forbidden(
                "value",
                "may not be changed in an update.",
            ));
        }
        if new.preemption_policy != old.preemption_policy {
            errs.push(FieldError::invalid(
                "preemptionPolicy",
                new.preemption_policy.clone().unwrap_or_default(),
                "field is immutable",
            ));
        }
        errs
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Value",
                "Value is the integer value of this priority class.",
            ),
            Column::new(
                "Global-Default",
                "GlobalDefault specifies whether this PriorityClass should be considered as the default priority.",
            ),
            Column::age(),
            Column::new(
                "PreemptionPolicy",
                "PreemptionPolicy is the Policy for preempting pods with lower priority.",
            ),
        ]
    }

    fn row(&self, pc: &PriorityClass) -> Vec<Value> {
        vec![
            json!(pc.value),
            json!(pc.global_default.unwrap_or(false)),
            age(pc.metadata.creation_timestamp.as_ref()),
            json!(pc.preemption_policy.clone().unwrap_or_default()),
        ]
    }
}

struct LeaseStrategy;

impl Strategy for LeaseStrategy {
    type K = Lease;

    fn validate(&self, lease: &Lease) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(d) = lease.spec.as_ref().and_then(|s| s.lease_duration_seconds)
            && d <= 0
        {
            errs.push(FieldError::invalid(
                "spec.leaseDurationSeconds",
                d,
                "must be greater than 0",
            ));
        }
        errs
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Holder", "The holder of the lease."),
            Column::age(),
        ]
    }

    fn row(&self, lease: &Lease) -> Vec<Value> {
        vec![
            json!(
                lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.clone())
                    .unwrap_or_default()
            ),
            age(lease.metadata.creation_timestamp.as_ref()),
        ]
    }
}

struct EndpointSliceStrategy;

impl Strategy for EndpointSliceStrategy {
    type K = EndpointSlice;

    fn validate(&self, s: &EndpointSlice) -> Vec<FieldError> {
        let mut errs = Vec::new();
        errs.extend(FieldError::not_one_of(
            "addressType",
            s.address_type.as_str(),
            &["FQDN", "IPv4", "IPv6"],
        ));
        for (i, ep) in s.endpoints.iter().enumerate() {
            if ep.addresses.is_empty() {
                errs.push(FieldError::required(
                    format!("endpoints[{i}].addresses"),
                    "must contain at least 1 address",
                ));
            }
        }
        errs
    }

    fn validate_update(&self, new: &EndpointSlice, old: &EndpointSlice) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validation::immutable(
            "addressType",
            &new.address_type,
            &old.address_type,
            &mut errs,
        );
        errs
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("AddressType", "The IP protocol for this slice"),
            Column::new("Ports", "The ports for this slice"),
            Column::new("Endpoints", "The addresses of the endpoints for this slice"),
            Column::age(),
        ]
    }

    fn row(&self, s: &EndpointSlice) -> Vec<Value> {
        let ports: Vec<String> = s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.map(|n| n.to_string()))
            .collect();
        let addrs: Vec<String> = s
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.clone())
            .collect();
        let shown = if addrs.len() > 3 {
            format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
        } else {
            addrs.join(",")
        };
        vec![
            json!(s.address_type),
            json!(if ports.is_empty() {
                "<unset>".to_string()
            } else {
                ports.join(",")
            }),
            json!(if shown.is_empty() {
                "<unset>".to_string()
            } else {
                shown
            }),
            age(s.metadata.creation_timestamp.as_ref()),
        ]
    }
}
