//! The core/v1 kinds that configure pods: ConfigMap, Secret, ServiceAccount.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use serde_json::{Value, json};

use crate::error::FieldError;
use crate::registry::{Registry, Strategy, Subresource};
use crate::table::{Column, age};
use crate::validation;

pub(super) fn register(r: &Registry) {
    r.register_with(ConfigMapStrategy, |i| i.short_names(&["cm"]));
    r.register(SecretStrategy);
    r.register_with(ServiceAccountStrategy, |i| i.short_names(&["sa"]));
}

fn valid_data_keys<'a>(
    path: &str,
    keys: impl Iterator<Item = &'a String>,
    errs: &mut Vec<FieldError>,
) {
    for k in keys {
        let ok = !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            errs.push(FieldError::invalid(
                path,
                k,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
    }
}

/// The most data a ConfigMap or Secret may hold (`corev1.MaxSecretSize`, 1 MiB).
const MAX_DATA_SIZE: usize = 1024 * 1024;

struct ConfigMapStrategy;

impl Strategy for ConfigMapStrategy {
    type K = ConfigMap;

    fn validate(&self, cm: &ConfigMap) -> Vec<FieldError> {
        let mut errs = Vec::new();
        valid_data_keys("data", cm.data.iter().flatten().map(|(k, _)| k), &mut errs);
        valid_data_keys(
            "binaryData",
            cm.binary_data.iter().flatten().map(|(k, _)| k),
            &mut errs,
        );
        let size: usize = cm
            .data
            .iter()
            .flatten()
            .map(|(_, v)| v.len())
            .sum::<usize>()
            + cm.binary_data
                .iter()
                .flatten()
                .map(|(_, v)| v.0.len())
                .sum::<usize>();
        if size > MAX_DATA_SIZE {
            // The whole object's data, so no field path (`ValidateConfigMap`).
            errs.push(FieldError::too_long("", MAX_DATA_SIZE));
        }
        for k in cm.data.iter().flatten().map(|(k, _)| k) {
            if cm.binary_data.as_ref().is_some_and(|b| b.contains_key(k)) {
                errs.push(FieldError::invalid(
                    "data",
                    k,
                    "duplicate of key present in binaryData",
                ));
            }
        }
        errs
    }

    fn validate_update(&self, new: &ConfigMap, old: &ConfigMap) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if old.immutable == Some(true) {
            validation::immutable("immutable", &new.immutable, &old.immutable, &mut errs);
            if new.data != old.data || new.binary_data != old.binary_data {
                errs.push(FieldError::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        errs
    }

    fn columns(&self) -> Vec<Column> {
        vec![Column::int("Data", "Number of data items"), Column::age()]
    }

    fn row(&self, cm: &ConfigMap) -> Vec<Value> {
        let n = cm.data.as_ref().map_or(0, BTreeMap::len)
            + cm.binary_data.as_ref().map_or(0, BTreeMap::len);
        vec![json!(n), age(cm.metadata.creation_timestamp.as_ref())]
    }
}

struct SecretStrategy;

impl Strategy for SecretStrategy {
    type K = Secret;

    fn default(&self, s: &mut Secret) {
        s.type_.get_or_insert_with(|| "Opaque".into());
        // stringData is write-only: merged into data, as kube-apiserver's conversion does.
        if let Some(sd) = s.string_data.take() {
            let data = s.data.get_or_insert_with(BTreeMap::new);
            for (k, v) in sd {
                data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
            }
        }
    }

    fn validate(&self, s: &Secret) -> Vec<FieldError> {
        let mut errs = Vec::new();
        valid_data_keys("data", s.data.iter().flatten().map(|(k, _)| k), &mut errs);
        let size: usize = s.data.iter().flatten().map(|(_, v)| v.0.len()).sum();
        if size > MAX_DATA_SIZE {
            errs.push(FieldError::too_long("data", MAX_DATA_SIZE));
        }
        errs
    }

    fn validate_update(&self, new: &Secret, old: &Secret) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validation::immutable("type", &new.type_, &old.type_, &mut errs);
        if old.immutable == Some(true) && new.data != old.data {
            errs.push(FieldError::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
        errs
    }

    fn field_selectors(&self) -> &'static [&'static str] {
        &["type"]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Type", "The type of the secret"),
            Column::int("Data", "The number of entries in the secret"),
            Column::age(),
        ]
    }

    fn row(&self, s: &Secret) -> Vec<Value> {
        vec![
            json!(s.type_.clone().unwrap_or_default()),
            json!(s.data.as_ref().map_or(0, BTreeMap::len)),
            age(s.metadata.creation_timestamp.as_ref()),
        ]
    }
}

struct ServiceAccountStrategy;

impl Strategy for ServiceAccountStrategy {
    type K = ServiceAccount;

    fn subresources(&self) -> &'static [Subresource] {
        &[Subresource {
            name: "token",
            kind: "TokenRequest",
            verbs: &["create"],
            group_version: None,
            owns: None,
        }]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::int(
                "Secrets",
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
            ),
            Column::age(),
        ]
    }

    fn row(&self, sa: &ServiceAccount) -> Vec<Value> {
        vec![
            json!(sa.secrets.as_ref().map_or(0, Vec::len)),
            age(sa.metadata.creation_timestamp.as_ref()),
        ]
    }
}
