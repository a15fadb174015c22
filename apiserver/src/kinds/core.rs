//! core/v1 kinds other than Pod and the configuration kinds (`config.rs`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Endpoints, Event, Namespace, NamespaceSpec, NamespaceStatus, Node, ReplicationController,
    Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::pod::PodStrategy;
use crate::error::FieldError;
use crate::registry::{NameRule, Registry, Strategy, Subresource};
use crate::table::{Column, age};
use crate::validation;

pub(super) fn register(r: &Registry) {
    r.register_with(NamespaceStrategy, |i| i.short_names(&["ns"]).with_status());
    r.register_with(NodeStrategy, |i| i.short_names(&["no"]).with_status());
    r.register_with(PodStrategy, |i| {
        i.short_names(&["po"]).in_all().with_status()
    });
    r.register_with(ServiceStrategy, |i| {
        i.short_names(&["svc"]).in_all().with_status()
    });
    r.register_with(EndpointsStrategy, |i| i.short_names(&["ep"]));
    super::config::register(r);
    r.register_with(EventStrategy, |i| i.short_names(&["ev"]));
    r.register_with(ReplicationControllerStrategy, |i| i.scalable(&["rc"]));
}

fn none_if_empty(s: String) -> Value {
    if s.is_empty() {
        json!("<none>")
    } else {
        json!(s)
    }
}

struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    type K = Namespace;

    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn subresources(&self) -> &'static [Subresource] {
        &[Subresource {
            name: "finalize",
            kind: "Namespace",
            verbs: &["update"],
            group_version: None,
            owns: Some("/spec/finalizers"),
        }]
    }

    fn spec_finalizers(&self, ns: &Value) -> usize {
        ns.pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    }

    fn prepare_for_delete(&self, ns: &mut Value) {
        ns["status"]["phase"] = json!("Terminating");
    }

    fn default(&self, ns: &mut Namespace) {
        let name = ns.metadata.name.clone().unwrap_or_default();
        ns.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert("kubernetes.io/metadata.name".into(), name);
        ns.spec
            .get_or_insert_with(NamespaceSpec::default)
            .finalizers
            .get_or_insert_with(|| vec!["kubernetes".into()]);
        ns.status
            .get_or_insert_with(NamespaceStatus::default)
            .phase
            .get_or_insert_with(|| "Active".into());
    }

    fn field_selectors(&self) -> &'static [&'static str] {
        &["status.phase"]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Status", "The status of the namespace"),
            Column::age(),
        ]
    }

    fn row(&self, ns: &Namespace) -> Vec<Value> {
        vec![
            json!(
                ns.status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default()
            ),
            age(ns.metadata.creation_timestamp.as_ref()),
        ]
    }
}

struct NodeStrategy;

impl Strategy for NodeStrategy {
    fn subresources(&self) -> &'static [Subresource] {
        &[Subresource {
            name: "proxy",
            kind: "NodeProxyOptions",
            verbs: crate::registry::PROXY_VERBS,
            group_version: None,
            owns: None,
        }]
    }

    type K = Node;

    fn keeps_status_on_create(&self) -> bool {
        true
    }

    fn field_selectors(&self) -> &'static [&'static str] {
        &["spec.unschedulable"]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Status", "The status of the node"),
            Column::new("Roles", "The roles of the node"),
            Column::age(),
            Column::new("Version", "Kubelet Version reported by the node."),
            Column::new("Internal-IP", "List of internal IPs.").wide(),
            Column::new("External-IP", "List of external IPs.").wide(),
            Column::new("OS-Image", "OS Image reported by the node.").wide(),
            Column::new("Kernel-Version", "Kernel Version reported by the node.").wide(),
            Column::new(
                "Container-Runtime",
                "Container Runtime Version reported by the node.",
            )
            .wide(),
        ]
    }

    fn row(&self, node: &Node) -> Vec<Value> {
        let status = node.status.clone().unwrap_or_default();
        let mut conds: Vec<String> = Vec::new();
        match status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
        {
            Some(c) if c.status == "True" => conds.push("Ready".into()),
            Some(_) => conds.push("NotReady".into()),
            None => conds.push("Unknown".into()),
        }
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            conds.push("SchedulingDisabled".into());
        }
        let roles: Vec<String> = node
            .metadata
            .labels
            .iter()
            .flatten()
            .filter_map(|(k, _)| {
                k.strip_prefix("node-role.kubernetes.io/")
                    .map(str::to_string)
            })
            .collect();
        let info = status.node_info.clone().unwrap_or_default();
        let addr = |kind: &str| {
            status
                .addresses
                .iter()
                .flatten()
                .find(|a| a.type_ == kind)
                .map(|a| a.address.clone())
                .unwrap_or_else(|| "<none>".into())
        };
        vec![
            json!(conds.join(",")),
            none_if_empty(roles.join(",")),
            age(node.metadata.creation_timestamp.as_ref()),
            json!(info.kubelet_version),
            json!(addr("InternalIP")),
            json!(addr("ExternalIP")),
            json!(info.os_image),
            json!(info.kernel_version),
            json!(info.container_runtime_version),
        ]
    }
}

struct ServiceStrategy;

impl Strategy for ServiceStrategy {
    fn subresources(&self) -> &'static [Subresource] {
        &[Subresource {
            name: "proxy",
            kind: "ServiceProxyOptions",
            verbs: crate::registry::PROXY_VERBS,
            group_version: None,
            owns: None,
        }]
    }

    type K = Service;

    fn returns_deleted_object(&self) -> bool {
        true
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Label1035
    }

    fn default(&self, svc: &mut Service) {
        let spec = svc.spec.get_or_insert_with(Default::default);
        spec.type_.get_or_insert_with(|| "ClusterIP".into());
        spec.session_affinity.get_or_insert_with(|| "None".into());
        if spec.type_.as_deref() != Some("ExternalName") {
            spec.internal_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
        }
        for p in spec.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
            // `SetDefaults_Service`: an unset, zero or empty targetPort is the port.
            match &p.target_port {
                None | Some(IntOrString::Int(0)) => p.target_port = Some(IntOrString::Int(p.port)),
                Some(IntOrString::String(s)) if s.is_empty() => {
                    p.target_port = Some(IntOrString::Int(p.port))
                }
                _ => {}
            }
        }
    }

    fn validate(&self, svc: &Service) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = svc.spec.clone().unwrap_or_default();
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !matches!(
            ty,
            "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
        ) {
            errs.push(FieldError::not_supported(
                "spec.type",
                ty,
                &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
            ));
        }
        let ports = spec.ports.clone().unwrap_or_default();
        if ports.is_empty() && ty != "ExternalName" && spec.cluster_ip.as_deref() != Some("None") {
            errs.push(FieldError::required("spec.ports", ""));
        }
        for (i, p) in ports.iter().enumerate() {
            if !(1..=65535).contains(&p.port) {
                errs.push(FieldError::invalid(
                    format!("spec.ports[{i}].port"),
                    p.port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            if ports.len() > 1 && p.name.as_deref().unwrap_or_default().is_empty() {
                errs.push(FieldError::required(format!("spec.ports[{i}].name"), ""));
            }
        }
        errs.extend(FieldError::not_one_of(
            "spec.sessionAffinity",
            spec.session_affinity.as_deref(),
            &["ClientIP", "None"],
        ));
        errs
    }

    fn validate_update(&self, new: &Service, old: &Service) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let old_ip = old.spec.as_ref().and_then(|s| s.cluster_ip.clone());
        let new_ip = new.spec.as_ref().and_then(|s| s.cluster_ip.clone());
        if old_ip.is_some() && new_ip.is_some() {
            validation::immutable("spec.clusterIP", &new_ip, &old_ip, &mut errs);
        }
        errs
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Type", "The type of the service."),
            Column::new("Cluster-IP", "The cluster IP of the service."),
            Column::new("External-IP", "The external IP of the service."),
            Column::new("Port(s)", "The ports of the service."),
            Column::age(),
            Column::new("Selector", "The selector of the service.").wide(),
        ]
    }

    fn row(&self, svc: &Service) -> Vec<Value> {
        let spec = svc.spec.clone().unwrap_or_default();
        let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        let ports: Vec<String> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                match p.node_port {
                    Some(np) => format!("{}:{np}/{proto}", p.port),
                    None => format!("{}/{proto}", p.port),
                }
            })
            .collect();
        let external = match ty.as_str() {
            "ExternalName" => spec.external_name.clone().unwrap_or_default(),
            "LoadBalancer" => "<pending>".into(),
            _ => spec
                .external_ips
                .clone()
                .map(|v| v.join(","))
                .unwrap_or_default(),
        };
        let selector: Vec<String> = spec
            .selector
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        vec![
            json!(ty),
            json!(spec.cluster_ip.unwrap_or_else(|| "<none>".into())),
            none_if_empty(external),
            none_if_empty(ports.join(",")),
            age(svc.metadata.creation_timestamp.as_ref()),
            none_if_empty(selector.join(",")),
        ]
    }
}

struct EndpointsStrategy;

impl Strategy for EndpointsStrategy {
    type K = Endpoints;

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Endpoints", "Endpoints of the service"),
            Column::age(),
        ]
    }

    fn row(&self, ep: &Endpoints) -> Vec<Value> {
        let mut eps = Vec::new();
        for subset in ep.subsets.iter().flatten() {
            for addr in subset.addresses.iter().flatten() {
                match subset.ports.as_ref().filter(|p| !p.is_empty()) {
                    Some(ports) => {
                        for p in ports {
                            eps.push(format!("{}:{}", addr.ip, p.port));
                        }
                    }
                    None => eps.push(addr.ip.clone()),
                }
            }
        }
        let shown = if eps.len() > 3 {
            format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
        } else {
            eps.join(",")
        };
        vec![
            none_if_empty(shown),
            age(ep.metadata.creation_timestamp.as_ref()),
        ]
    }
}

struct EventStrategy;

impl Strategy for EventStrategy {
    type K = Event;

    fn name_rule(&self) -> NameRule {
        NameRule::Path
    }

    fn validate(&self, ev: &Event) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if ev.involved_object.name.is_none() && ev.involved_object.kind.is_none() {
            errs.push(FieldError::required("involvedObject", ""));
        }
        errs.extend(FieldError::not_one_of(
            "type",
            ev.type_.as_deref(),
            &["Normal", "Warning"],
        ));
        errs
    }

    fn field_selectors(&self) -> &'static [&'static str] {
        &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Last Seen", "Time when this Event was last observed."),
            Column::new(
                "Type",
                "Type of this event (Normal, Warning), new types could be added in the future.",
            ),
            Column::new(
                "Reason",
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            Column::new("Object", "The object that this event is about."),
            Column::new("Subobject", "The subobject that this event is about.").wide(),
            Column::new("Source", "The component reporting this event.").wide(),
            Column::new(
                "Message",
                "A human-readable description of the status of this operation.",
            ),
            Column::new(
                "First Seen",
                "The time at which the event was first recorded.",
            )
            .wide(),
            Column::int("Count", "The number of times this event has occurred.").wide(),
            Column::new("Name", "Name of the event.").wide(),
        ]
    }

    fn row(&self, ev: &Event) -> Vec<Value> {
        let event_time = ev.event_time.as_ref().map(|t| Time(t.0));
        let last = ev
            .last_timestamp
            .as_ref()
            .or(event_time.as_ref())
            .or(ev.first_timestamp.as_ref())
            .or(ev.metadata.creation_timestamp.as_ref());
        let obj = format!(
            "{}/{}",
            ev.involved_object
                .kind
                .clone()
                .unwrap_or_default()
                .to_lowercase(),
            ev.involved_object.name.clone().unwrap_or_default()
        );
        let source = ev
            .source
            .as_ref()
            .and_then(|s| s.component.clone())
            .or(ev.reporting_component.clone())
            .unwrap_or_default();
        vec![
            age(last),
            json!(ev.type_.clone().unwrap_or_default()),
            json!(ev.reason.clone().unwrap_or_default()),
            json!(obj),
            json!(ev.involved_object.field_path.clone().unwrap_or_default()),
            json!(source),
            json!(ev.message.clone().unwrap_or_default()),
            age(ev
                .first_timestamp
                .as_ref()
                .or(ev.metadata.creation_timestamp.as_ref())),
            json!(ev.count.unwrap_or(1)),
            json!(ev.metadata.name.clone().unwrap_or_default()),
        ]
    }
}

const RC_COLUMNS: super::template::WorkloadColumns =
    super::template::WorkloadColumns::with_selector(
        "Selector is a label query over pods that should match the Replicas count.",
    );

/// core/v1 ReplicationController: ReplicaSet's predecessor, with a plain-map selector.
struct ReplicationControllerStrategy;

impl Strategy for ReplicationControllerStrategy {
    type K = ReplicationController;

    fn default(&self, rc: &mut ReplicationController) {
        let spec = rc.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        // An empty selector defaults to the template's labels, as Kubernetes does.
        if spec.selector.as_ref().is_none_or(BTreeMap::is_empty) {
            spec.selector = spec
                .template
                .as_ref()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone());
        }
        if let Some(t) = spec.template.as_mut() {
            super::template::default_template(t);
        }
    }

    fn validate(&self, rc: &ReplicationController) -> Vec<FieldError> {
        let spec = rc.spec.clone().unwrap_or_default();
        let mut errs = Vec::new();
        let selector = spec.selector.clone().unwrap_or_default();
        if selector.is_empty() {
            errs.push(FieldError::required("spec.selector", ""));
        }
        match &spec.template {
            Some(t) => {
                let structured = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some(selector),
                    match_expressions: None,
                };
                errs.extend(super::template::validate_template(
                    "spec.template",
                    t,
                    Some(&structured),
                ));
            }
            None => errs.push(FieldError::required("spec.template", "")),
        }
        if spec.replicas.is_some_and(|r| r < 0) {
            errs.push(FieldError::invalid(
                "spec.replicas",
                spec.replicas.unwrap_or(0),
                "must be greater than or equal to 0",
            ));
        }
        errs
    }

    fn columns(&self) -> Vec<Column> {
        RC_COLUMNS.columns(super::template::replica_columns(
            "The number of ready replicas for this replication controller.",
        ))
    }

    fn row(&self, rc: &ReplicationController) -> Vec<Value> {
        let spec = rc.spec.clone().unwrap_or_default();
        let st = rc.status.clone().unwrap_or_default();
        let selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: spec.selector,
            match_expressions: None,
        };
        RC_COLUMNS.row(
            super::template::replica_cells(spec.replicas, st.replicas, st.ready_replicas),
            &rc.metadata,
            spec.template.as_ref().and_then(|t| t.spec.as_ref()),
            Some(&selector),
        )
    }
}
