//! networking.k8s.io/v1 Ingress and IngressClass.

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use serde_json::{Value, json};

use wasmkube_api::ResourceInfo;

use crate::error::FieldError;
use crate::registry::{NameRule, Registry, Strategy};
use crate::table::{Column, age};

pub(super) fn register(r: &Registry) {
    r.register(IngressStrategy);
    r.register(IngressClassStrategy);
}

struct IngressStrategy;

fn validate_backend(path: &str, b: &IngressBackend, errs: &mut Vec<FieldError>) {
    match (&b.service, &b.resource) {
        (Some(_), Some(_)) => errs.push(FieldError::invalid(
            path,
            "",
            "cannot set both service and resource backends",
        )),
        (None, None) => errs.push(FieldError::invalid(
            path,
            "",
            "resource or service backend is required",
        )),
        (Some(svc), None) => {
            if svc.name.is_empty() {
                errs.push(FieldError::required(format!("{path}.service.name"), ""));
            }
            match &svc.port {
                Some(p) if p.name.is_some() && p.number.is_some() => {
                    errs.push(FieldError::invalid(
                        format!("{path}.service.port"),
                        "",
                        "cannot set both port name & port number",
                    ));
                }
                Some(p) if p.name.is_none() && p.number.is_none() => {
                    errs.push(FieldError::invalid(
                        format!("{path}.service.port"),
                        "",
                        "port name or number is required",
                    ));
                }
                Some(p) if p.number.is_some_and(|n| !(1..=65535).contains(&n)) => {
                    errs.push(FieldError::invalid(
                        format!("{path}.service.port.number"),
                        p.number.unwrap_or_default(),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                Some(_) => {}
                None => errs.push(FieldError::required(format!("{path}.service.port"), "")),
            }
        }
        (None, Some(_)) => {}
    }
}

impl Strategy for IngressStrategy {
    type K = Ingress;

    fn info(&self) -> ResourceInfo {
        ResourceInfo::of::<Ingress>()
            .short_names(&["ing"])
            .with_status()
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    fn validate(&self, ing: &Ingress) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = ing.spec.clone().unwrap_or_default();
        let rules = spec.rules.clone().unwrap_or_default();
        if rules.is_empty() && spec.default_backend.is_none() {
            errs.push(FieldError::invalid(
                "spec",
                "{}",
                "either `defaultBackend` or `rules` must be specified",
            ));
        }
        if let Some(b) = &spec.default_backend {
            validate_backend("spec.defaultBackend", b, &mut errs);
        }
        for (i, rule) in rules.iter().enumerate() {
            if let Some(host) = rule.host.as_deref() {
                let bare = host.strip_prefix("*.").unwrap_or(host);
                if host.parse::<std::net::IpAddr>().is_ok() {
                    errs.push(FieldError::invalid(
                        format!("spec.rules[{i}].host"),
                        host,
                        "must be a DNS name, not an IP address",
                    ));
                } else if bare.is_empty()
                    || bare.contains('*')
                    || !bare.split('.').all(wasmkube_api::names::is_dns1123_label)
                {
                    errs.push(FieldError::invalid(
                        format!("spec.rules[{i}].host"),
                        host,
                        "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character",
                    ));
                }
            }
            for (j, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let at = format!("spec.rules[{i}].http.paths[{j}]");
                match p.path_type.as_str() {
                    "" => errs.push(FieldError::required(
                        format!("{at}.pathType"),
                        "pathType must be specified",
                    )),
                    "Exact" | "Prefix" | "ImplementationSpecific" => {}
                    other => errs.push(FieldError::not_supported(
                        format!("{at}.pathType"),
                        other,
                        &["Exact", "ImplementationSpecific", "Prefix"],
                    )),
                }
                let path = p.path.as_deref().unwrap_or_default();
                if p.path_type != "ImplementationSpecific" && !path.starts_with('/') {
                    errs.push(FieldError::invalid(
                        format!("{at}.path"),
                        path,
                        "must be an absolute path",
                    ));
                }
                validate_backend(&format!("{at}.backend"), &p.backend, &mut errs);
            }
        }
        errs
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Class", "The ingress class of the ingress."),
            Column::new("Hosts", "The hosts the ingress serves."),
            Column::new("Address", "The addresses the ingress is reachable at."),
            Column::new("Ports", "The ports the ingress serves on."),
            Column::age(),
        ]
    }

    fn row(&self, ing: &Ingress) -> Vec<Value> {
        let spec = ing.spec.clone().unwrap_or_default();
        let hosts: Vec<String> = spec
            .rules
            .iter()
            .flatten()
            .map(|r| r.host.clone().unwrap_or_else(|| "*".into()))
            .collect();
        let address: Vec<String> = ing
            .status
            .iter()
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
            .collect();
        let ports = if spec.tls.as_ref().is_some_and(|t| !t.is_empty()) {
            "80, 443"
        } else {
            "80"
        };
        vec![
            json!(spec.ingress_class_name.unwrap_or_else(|| "<none>".into())),
            json!(if hosts.is_empty() {
                "*".to_owned()
            } else {
                hosts.join(",")
            }),
            json!(address.join(",")),
            json!(ports),
            age(ing.metadata.creation_timestamp.as_ref()),
        ]
    }
}

struct IngressClassStrategy;

impl Strategy for IngressClassStrategy {
    type K = IngressClass;

    fn info(&self) -> ResourceInfo {
        ResourceInfo::of::<IngressClass>()
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    fn validate(&self, class: &IngressClass) -> Vec<FieldError> {
        let controller = class
            .spec
            .as_ref()
            .and_then(|s| s.controller.as_deref())
            .unwrap_or_default();
        if controller.is_empty() {
            return vec![FieldError::required("spec.controller", "")];
        }
        Vec::new()
    }

    fn validate_update(&self, new: &IngressClass, old: &IngressClass) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let c = |k: &IngressClass| k.spec.as_ref().and_then(|s| s.controller.clone());
        crate::validation::immutable("spec.controller", &c(new), &c(old), &mut errs);
        errs
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Controller",
                "Controller that is responsible for handling this class",
            ),
            Column::new(
                "Parameters",
                "A reference to a resource with additional parameters",
            ),
            Column::age(),
        ]
    }

    fn row(&self, class: &IngressClass) -> Vec<Value> {
        let spec = class.spec.clone().unwrap_or_default();
        let params = spec
            .parameters
            .map(|p| format!("{}/{}", p.kind, p.name))
            .unwrap_or_else(|| "<none>".into());
        vec![
            json!(spec.controller.unwrap_or_default()),
            json!(params),
            age(class.metadata.creation_timestamp.as_ref()),
        ]
    }
}
