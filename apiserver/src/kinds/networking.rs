//! networking.k8s.io/v1 Ingress, IngressClass and NetworkPolicy.

use k8s_openapi::api::networking::v1::{
    Ingress, IngressBackend, IngressClass, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::error::FieldError;
use crate::registry::{Registry, Strategy};
use crate::table::{Column, age};

pub(super) fn register(r: &Registry) {
    r.register_with(IngressStrategy, |i| i.short_names(&["ing"]).with_status());
    r.register(IngressClassStrategy);
    r.register_with(NetworkPolicyStrategy, |i| i.short_names(&["netpol"]));
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

/// `networking.k8s.io/v1` NetworkPolicy: defaulted and validated as kube-apiserver does; the
/// wasmlets enforce it.
struct NetworkPolicyStrategy;

/// Validates one `ports` entry of a rule.
fn validate_policy_port(at: &str, p: &NetworkPolicyPort, errs: &mut Vec<FieldError>) {
    errs.extend(FieldError::not_one_of(
        format!("{at}.protocol"),
        p.protocol.as_deref(),
        &["SCTP", "TCP", "UDP"],
    ));
    if let Some(port) = &p.port {
        super::template::validate_port_num_or_name(format!("{at}.port"), port, errs);
    }
    if let Some(end) = p.end_port {
        match &p.port {
            Some(IntOrString::Int(start)) if end < *start => errs.push(FieldError::invalid(
                format!("{at}.endPort"),
                end,
                "must be greater than or equal to `port`",
            )),
            Some(IntOrString::Int(_)) => {}
            Some(IntOrString::String(_)) => errs.push(FieldError::forbidden(
                format!("{at}.endPort"),
                "may not be specified when `port` is non-numeric",
            )),
            None => errs.push(FieldError::forbidden(
                format!("{at}.endPort"),
                "may not be specified when `port` is not specified",
            )),
        }
    }
}

/// Validates one peer (`from`/`to` entry) of a rule.
fn validate_policy_peer(at: &str, p: &NetworkPolicyPeer, errs: &mut Vec<FieldError>) {
    let selectors = [&p.pod_selector, &p.namespace_selector];
    for (name, sel) in ["podSelector", "namespaceSelector"]
        .into_iter()
        .zip(selectors)
    {
        if let Some(sel) = sel
            && let Err(e) = wasmkube_api::selector::LabelSelector::from_structured(sel)
        {
            errs.push(FieldError::invalid(format!("{at}.{name}"), "", &e.0));
        }
    }
    match &p.ip_block {
        Some(_) if p.pod_selector.is_some() || p.namespace_selector.is_some() => {
            errs.push(FieldError::forbidden(
                at,
                "may not specify both ipBlock and another peer",
            ));
        }
        Some(block) => {
            let cidr = block.cidr.parse::<ipnet::IpNet>();
            match &cidr {
                Err(_) => errs.push(FieldError::invalid(
                    format!("{at}.ipBlock.cidr"),
                    &block.cidr,
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                )),
                Ok(net) => {
                    for (i, e) in block.except.iter().flatten().enumerate() {
                        let ok = e
                            .parse::<ipnet::IpNet>()
                            .is_ok_and(|x| net.contains(&x) && x.prefix_len() > net.prefix_len());
                        if !ok {
                            errs.push(FieldError::invalid(
                                format!("{at}.ipBlock.except[{i}]"),
                                e,
                                "must be a strict subset of `cidr`",
                            ));
                        }
                    }
                }
            }
        }
        None if p.pod_selector.is_none() && p.namespace_selector.is_none() => {
            errs.push(FieldError::required(at, "must specify a peer"));
        }
        None => {}
    }
}

impl Strategy for NetworkPolicyStrategy {
    type K = NetworkPolicy;

    /// `SetDefaults_NetworkPolicy`: `policyTypes` from the rules, ports' protocol TCP.
    fn default(&self, np: &mut NetworkPolicy) {
        let Some(spec) = np.spec.as_mut() else {
            return;
        };
        if spec.policy_types.as_ref().is_none_or(Vec::is_empty) {
            let mut types = vec!["Ingress".to_owned()];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                types.push("Egress".to_owned());
            }
            spec.policy_types = Some(types);
        }
        let ingress = spec.ingress.iter_mut().flatten().map(|r| &mut r.ports);
        let egress = spec.egress.iter_mut().flatten().map(|r| &mut r.ports);
        for p in ingress.chain(egress).flatten().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
        }
    }

    fn validate(&self, np: &NetworkPolicy) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let Some(spec) = &np.spec else {
            return vec![FieldError::required("spec", "")];
        };
        if let Some(sel) = &spec.pod_selector
            && let Err(e) = wasmkube_api::selector::LabelSelector::from_structured(sel)
        {
            errs.push(FieldError::invalid("spec.podSelector", "", &e.0));
        }
        let types = spec.policy_types.clone().unwrap_or_default();
        if types.len() > 2 {
            errs.push(FieldError::invalid(
                "spec.policyTypes",
                types.join(","),
                "may not specify more than two policyTypes",
            ));
        }
        for (i, t) in types.iter().enumerate() {
            errs.extend(FieldError::not_one_of(
                format!("spec.policyTypes[{i}]"),
                t.as_str(),
                &["Egress", "Ingress"],
            ));
        }
        for (i, rule) in spec.ingress.iter().flatten().enumerate() {
            for (j, p) in rule.ports.iter().flatten().enumerate() {
                validate_policy_port(&format!("spec.ingress[{i}].ports[{j}]"), p, &mut errs);
            }
            for (j, p) in rule.from.iter().flatten().enumerate() {
                validate_policy_peer(&format!("spec.ingress[{i}].from[{j}]"), p, &mut errs);
            }
        }
        for (i, rule) in spec.egress.iter().flatten().enumerate() {
            for (j, p) in rule.ports.iter().flatten().enumerate() {
                validate_policy_port(&format!("spec.egress[{i}].ports[{j}]"), p, &mut errs);
            }
            for (j, p) in rule.to.iter().flatten().enumerate() {
                validate_policy_peer(&format!("spec.egress[{i}].to[{j}]"), p, &mut errs);
            }
        }
        errs
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Pod-Selector",
                "Selects the pods to which this NetworkPolicy object applies.",
            ),
            Column::age(),
        ]
    }

    fn row(&self, np: &NetworkPolicy) -> Vec<Value> {
        let selector = np
            .spec
            .as_ref()
            .and_then(|s| {
                wasmkube_api::selector::LabelSelector::from_structured(s.pod_selector.as_ref()?)
                    .ok()
            })
            .map(|s| s.to_string())
            .unwrap_or_default();
        vec![
            json!(if selector.is_empty() {
                "<none>".to_owned()
            } else {
                selector
            }),
            age(np.metadata.creation_timestamp.as_ref()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(spec: Value) -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).expect("policy")
    }

    #[test]
    fn a_policy_should_be_defaulted_from_its_rules() {
        let mut np = policy(json!({"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}));
        NetworkPolicyStrategy.default(&mut np);
        let spec = np.spec.expect("spec");
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_string(), "Egress".to_string()][..])
        );
        let egress = spec.egress.expect("egress");
        let port = &egress[0].ports.as_ref().expect("ports")[0];
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
    }

    #[test]
    fn bad_peers_and_ports_should_be_named_by_field() {
        let np = policy(json!({
            "podSelector": {},
            "policyTypes": ["Ingress", "Sideways"],
            "ingress": [{
                "from": [{}, {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]},
                              "podSelector": {}},
                         {"ipBlock": {"cidr": "nonsense"}}],
                "ports": [{"port": 80, "endPort": 79}, {"port": "http", "endPort": 90},
                          {"protocol": "ICMP"}],
            }],
        }));
        let fields: Vec<String> = NetworkPolicyStrategy
            .validate(&np)
            .into_iter()
            .map(|e| e.field)
            .collect();
        for want in [
            "spec.policyTypes[1]",
            "spec.ingress[0].from[0]",
            "spec.ingress[0].from[1]",
            "spec.ingress[0].from[2].ipBlock.cidr",
            "spec.ingress[0].ports[0].endPort",
            "spec.ingress[0].ports[1].endPort",
            "spec.ingress[0].ports[2].protocol",
        ] {
            assert!(fields.iter().any(|f| f == want), "{want} in {fields:?}");
        }
    }
}
