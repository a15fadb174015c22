//! Protobuf → JSON for the workload kinds (Pod, Deployment, Job, CronJob), Service, Ingress
//! and IngressClass.
//!
//! Each converter takes its message by value, moves out every field it converts, and then
//! requires the rest to be empty: a field this server does not convert yet (an affinity, a
//! probe, a CSI volume, ...) makes the request fail with 415 instead of being dropped.
//! Go writes non-pointer fields even when zero, so those read as unset when zero; pointer
//! fields (`replicas`, `suspend`, ...) keep an explicit zero.

use std::collections::BTreeMap;

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::batch::v1 as batch;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::networking::v1 as networking;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

type R = Result<Value, ApiError>;

/// Fails when a message still carries fields after conversion took what it understands.
fn rest<M: Message>(m: &M, what: &str) -> Result<(), ApiError> {
    if m.encoded_len() == 0 {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(&format!(
            "{} with {what} fields this server cannot read from protobuf yet (send JSON)",
            super::MEDIA_TYPE
        )))
    }
}

#[derive(Default)]
struct Out(Map<String, Value>);

impl Out {
    fn v(&mut self, k: &str, v: Option<Value>) {
        if let Some(v) = v {
            self.0.insert(k.into(), v);
        }
    }
    /// A string; empty is unset.
    fn s(&mut self, k: &str, v: Option<String>) {
        self.v(k, v.filter(|s| !s.is_empty()).map(Value::String));
    }
    /// A pointer string; an explicit empty string is a value (validation judges it).
    fn ps(&mut self, k: &str, v: Option<String>) {
        self.v(k, v.map(Value::String));
    }
    /// A non-pointer integer; zero is unset.
    fn i(&mut self, k: &str, v: Option<i64>) {
        self.v(k, v.filter(|n| *n != 0).map(|n| json!(n)));
    }
    /// A pointer integer; zero is a value.
    fn pi(&mut self, k: &str, v: Option<i64>) {
        self.v(k, v.map(|n| json!(n)));
    }
    /// A non-pointer boolean; false is unset.
    fn b(&mut self, k: &str, v: Option<bool>) {
        self.v(k, v.filter(|b| *b).map(Value::Bool));
    }
    /// A pointer boolean; false is a value.
    fn pb(&mut self, k: &str, v: Option<bool>) {
        self.v(k, v.map(Value::Bool));
    }
    fn strs(&mut self, k: &str, v: Vec<String>) {
        self.v(k, (!v.is_empty()).then(|| json!(v)));
    }
    fn map(&mut self, k: &str, v: BTreeMap<String, String>) {
        self.v(k, (!v.is_empty()).then(|| json!(v)));
    }
    fn list<T>(&mut self, k: &str, v: Vec<T>, f: fn(T) -> R) -> Result<(), ApiError> {
        if !v.is_empty() {
            let items = v.into_iter().map(f).collect::<Result<Vec<_>, _>>()?;
            self.0.insert(k.into(), Value::Array(items));
        }
        Ok(())
    }
    fn msg<T>(&mut self, k: &str, v: Option<T>, f: fn(T) -> R) -> Result<(), ApiError> {
        if let Some(v) = v {
            let value = f(v)?;
            // An empty nested object (a Go non-pointer struct left zero) is unset.
            if value.as_object().is_none_or(|o| !o.is_empty()) {
                self.0.insert(k.into(), value);
            }
        }
        Ok(())
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn i32s(v: Option<i32>) -> Option<i64> {
    v.map(i64::from)
}

fn quantity(q: k8s_pb::apimachinery::pkg::api::resource::Quantity) -> Value {
    json!(q.string.unwrap_or_default())
}

fn quantities(
    m: BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>,
) -> Option<Value> {
    (!m.is_empty()).then(|| Value::Object(m.into_iter().map(|(k, q)| (k, quantity(q))).collect()))
}

fn int_or_string(v: IntOrString) -> R {
    Ok(match v.r#type {
        Some(1) => json!(v.str_val.unwrap_or_default()),
        _ => json!(v.int_val.unwrap_or_default()),
    })
}

fn meta(m: meta::ObjectMeta) -> R {
    Ok(super::object_meta(&Some(m)))
}

fn label_selector(mut s: meta::LabelSelector) -> R {
    let mut o = Out::default();
    o.map("matchLabels", std::mem::take(&mut s.match_labels));
    o.list(
        "matchExpressions",
        std::mem::take(&mut s.match_expressions),
        |mut r| {
            let mut o = Out::default();
            o.s("key", r.key.take());
            o.s("operator", r.operator.take());
            o.strs("values", std::mem::take(&mut r.values));
            rest(&r, "LabelSelectorRequirement")?;
            Ok(o.done())
        },
    )?;
    rest(&s, "LabelSelector")?;
    Ok(o.done())
}

fn local_ref(o: &mut Out, r: Option<core::LocalObjectReference>) {
    if let Some(r) = r {
        o.s("name", r.name);
    }
}

fn env_var(mut e: core::EnvVar) -> R {
    let mut o = Out::default();
    o.s("name", e.name.take());
    o.s("value", e.value.take());
    o.msg("valueFrom", e.value_from.take(), |mut s| {
        let mut o = Out::default();
        o.msg("fieldRef", s.field_ref.take(), |mut f| {
            let mut o = Out::default();
            o.s("apiVersion", f.api_version.take());
            o.s("fieldPath", f.field_path.take());
            rest(&f, "ObjectFieldSelector")?;
            Ok(o.done())
        })?;
        o.msg("resourceFieldRef", s.resource_field_ref.take(), |mut f| {
            let mut o = Out::default();
            o.s("containerName", f.container_name.take());
            o.s("resource", f.resource.take());
            o.v(
                "divisor",
                f.divisor
                    .take()
                    .map(quantity)
                    .filter(|q| q != "" && q != "0"),
            );
            rest(&f, "ResourceFieldSelector")?;
            Ok(o.done())
        })?;
        o.msg("configMapKeyRef", s.config_map_key_ref.take(), |mut k| {
            let mut o = Out::default();
            local_ref(&mut o, k.local_object_reference.take());
            o.s("key", k.key.take());
            o.pb("optional", k.optional.take());
            rest(&k, "ConfigMapKeySelector")?;
            Ok(o.done())
        })?;
        o.msg("secretKeyRef", s.secret_key_ref.take(), |mut k| {
            let mut o = Out::default();
            local_ref(&mut o, k.local_object_reference.take());
            o.s("key", k.key.take());
            o.pb("optional", k.optional.take());
            rest(&k, "SecretKeySelector")?;
            Ok(o.done())
        })?;
        rest(&s, "EnvVarSource")?;
        Ok(o.done())
    })?;
    rest(&e, "EnvVar")?;
    Ok(o.done())
}

fn env_from(mut e: core::EnvFromSource) -> R {
    let mut o = Out::default();
    o.s("prefix", e.prefix.take());
    o.msg("configMapRef", e.config_map_ref.take(), |mut r| {
        let mut o = Out::default();
        local_ref(&mut o, r.local_object_reference.take());
        o.pb("optional", r.optional.take());
        rest(&r, "ConfigMapEnvSource")?;
        Ok(o.done())
    })?;
    o.msg("secretRef", e.secret_ref.take(), |mut r| {
        let mut o = Out::default();
        local_ref(&mut o, r.local_object_reference.take());
        o.pb("optional", r.optional.take());
        rest(&r, "SecretEnvSource")?;
        Ok(o.done())
    })?;
    rest(&e, "EnvFromSource")?;
    Ok(o.done())
}

fn container(mut c: core::Container) -> R {
    let mut o = Out::default();
    o.s("name", c.name.take());
    o.s("image", c.image.take());
    o.strs("command", std::mem::take(&mut c.command));
    o.strs("args", std::mem::take(&mut c.args));
    o.s("workingDir", c.working_dir.take());
    o.list("ports", std::mem::take(&mut c.ports), |mut p| {
        let mut o = Out::default();
        o.s("name", p.name.take());
        o.i("hostPort", i32s(p.host_port.take()));
        o.pi("containerPort", i32s(p.container_port.take()));
        o.s("protocol", p.protocol.take());
        o.s("hostIP", p.host_ip.take());
        rest(&p, "ContainerPort")?;
        Ok(o.done())
    })?;
    o.list("envFrom", std::mem::take(&mut c.env_from), env_from)?;
    o.list("env", std::mem::take(&mut c.env), env_var)?;
    o.msg("resources", c.resources.take(), |mut r| {
        let mut o = Out::default();
        o.v("limits", quantities(std::mem::take(&mut r.limits)));
        o.v("requests", quantities(std::mem::take(&mut r.requests)));
        rest(&r, "ResourceRequirements")?;
        Ok(o.done())
    })?;
    o.ps("restartPolicy", c.restart_policy.take());
    o.list(
        "volumeMounts",
        std::mem::take(&mut c.volume_mounts),
        |mut m| {
            let mut o = Out::default();
            o.s("name", m.name.take());
            o.b("readOnly", m.read_only.take());
            o.ps("recursiveReadOnly", m.recursive_read_only.take());
            o.s("mountPath", m.mount_path.take());
            o.s("subPath", m.sub_path.take());
            o.ps("mountPropagation", m.mount_propagation.take());
            o.s("subPathExpr", m.sub_path_expr.take());
            rest(&m, "VolumeMount")?;
            Ok(o.done())
        },
    )?;
    o.s("terminationMessagePath", c.termination_message_path.take());
    o.s(
        "terminationMessagePolicy",
        c.termination_message_policy.take(),
    );
    o.s("imagePullPolicy", c.image_pull_policy.take());
    o.msg("livenessProbe", c.liveness_probe.take(), probe)?;
    o.msg("readinessProbe", c.readiness_probe.take(), probe)?;
    o.msg("startupProbe", c.startup_probe.take(), probe)?;
    o.b("stdin", c.stdin.take());
    o.b("stdinOnce", c.stdin_once.take());
    o.b("tty", c.tty.take());
    rest(&c, "Container")?;
    Ok(o.done())
}

/// A probe: the handler is inlined in the JSON form.
fn probe(mut p: core::Probe) -> R {
    let mut o = Out::default();
    if let Some(mut h) = p.handler.take() {
        o.msg("exec", h.exec.take(), |mut e| {
            let mut o = Out::default();
            o.strs("command", std::mem::take(&mut e.command));
            rest(&e, "ExecAction")?;
            Ok(o.done())
        })?;
        o.msg("httpGet", h.http_get.take(), |mut g| {
            let mut o = Out::default();
            o.s("path", g.path.take());
            o.msg("port", g.port.take(), int_or_string)?;
            o.s("host", g.host.take());
            o.s("scheme", g.scheme.take());
            o.list(
                "httpHeaders",
                std::mem::take(&mut g.http_headers),
                |mut h| {
                    let mut o = Out::default();
                    o.s("name", h.name.take());
                    o.ps("value", h.value.take());
                    rest(&h, "HTTPHeader")?;
                    Ok(o.done())
                },
            )?;
            rest(&g, "HTTPGetAction")?;
            Ok(o.done())
        })?;
        o.msg("tcpSocket", h.tcp_socket.take(), |mut t| {
            let mut o = Out::default();
            o.msg("port", t.port.take(), int_or_string)?;
            o.s("host", t.host.take());
            rest(&t, "TCPSocketAction")?;
            Ok(o.done())
        })?;
        o.msg("grpc", h.grpc.take(), |mut g| {
            let mut o = Out::default();
            o.pi("port", i32s(g.port.take()));
            o.ps("service", g.service.take());
            rest(&g, "GRPCAction")?;
            Ok(o.done())
        })?;
        rest(&h, "ProbeHandler")?;
    }
    o.i("initialDelaySeconds", i32s(p.initial_delay_seconds.take()));
    o.i("timeoutSeconds", i32s(p.timeout_seconds.take()));
    o.i("periodSeconds", i32s(p.period_seconds.take()));
    o.i("successThreshold", i32s(p.success_threshold.take()));
    o.i("failureThreshold", i32s(p.failure_threshold.take()));
    o.pi(
        "terminationGracePeriodSeconds",
        p.termination_grace_period_seconds.take(),
    );
    rest(&p, "Probe")?;
    Ok(o.done())
}

fn key_to_path(mut k: core::KeyToPath) -> R {
    let mut o = Out::default();
    o.s("key", k.key.take());
    o.s("path", k.path.take());
    o.pi("mode", i32s(k.mode.take()));
    rest(&k, "KeyToPath")?;
    Ok(o.done())
}

fn volume(mut v: core::Volume) -> R {
    let mut o = Out::default();
    o.s("name", v.name.take());
    if let Some(mut s) = v.volume_source.take() {
        // VolumeSource is inlined into Volume in the JSON form.
        if let Some(mut e) = s.empty_dir.take() {
            // `emptyDir: {}` is meaningful: the key stays even when the object is empty.
            let mut d = Out::default();
            d.s("medium", e.medium.take());
            d.v("sizeLimit", e.size_limit.take().map(quantity));
            rest(&e, "EmptyDirVolumeSource")?;
            o.v("emptyDir", Some(d.done()));
        }
        o.msg("configMap", s.config_map.take(), |mut c| {
            let mut o = Out::default();
            local_ref(&mut o, c.local_object_reference.take());
            o.list("items", std::mem::take(&mut c.items), key_to_path)?;
            o.pi("defaultMode", i32s(c.default_mode.take()));
            o.pb("optional", c.optional.take());
            rest(&c, "ConfigMapVolumeSource")?;
            Ok(o.done())
        })?;
        o.msg("secret", s.secret.take(), |mut c| {
            let mut o = Out::default();
            o.s("secretName", c.secret_name.take());
            o.list("items", std::mem::take(&mut c.items), key_to_path)?;
            o.pi("defaultMode", i32s(c.default_mode.take()));
            o.pb("optional", c.optional.take());
            rest(&c, "SecretVolumeSource")?;
            Ok(o.done())
        })?;
        o.msg("hostPath", s.host_path.take(), |mut h| {
            let mut o = Out::default();
            o.s("path", h.path.take());
            o.v("type", h.r#type.take().map(Value::String));
            rest(&h, "HostPathVolumeSource")?;
            Ok(o.done())
        })?;
        o.msg(
            "persistentVolumeClaim",
            s.persistent_volume_claim.take(),
            |mut p| {
                let mut o = Out::default();
                o.s("claimName", p.claim_name.take());
                o.b("readOnly", p.read_only.take());
                rest(&p, "PersistentVolumeClaimVolumeSource")?;
                Ok(o.done())
            },
        )?;
        rest(&s, "VolumeSource")?;
    }
    rest(&v, "Volume")?;
    Ok(o.done())
}

fn toleration(mut t: core::Toleration) -> R {
    let mut o = Out::default();
    o.s("key", t.key.take());
    o.s("operator", t.operator.take());
    o.s("value", t.value.take());
    o.s("effect", t.effect.take());
    o.pi("tolerationSeconds", t.toleration_seconds.take());
    rest(&t, "Toleration")?;
    Ok(o.done())
}

fn pod_spec(mut s: core::PodSpec) -> R {
    let mut o = Out::default();
    o.list("volumes", std::mem::take(&mut s.volumes), volume)?;
    o.list(
        "initContainers",
        std::mem::take(&mut s.init_containers),
        container,
    )?;
    o.list("containers", std::mem::take(&mut s.containers), container)?;
    o.s("restartPolicy", s.restart_policy.take());
    o.pi(
        "terminationGracePeriodSeconds",
        s.termination_grace_period_seconds.take(),
    );
    o.pi("activeDeadlineSeconds", s.active_deadline_seconds.take());
    o.s("dnsPolicy", s.dns_policy.take());
    o.map("nodeSelector", std::mem::take(&mut s.node_selector));
    o.s("serviceAccountName", s.service_account_name.take());
    o.s("serviceAccount", s.service_account.take());
    o.pb(
        "automountServiceAccountToken",
        s.automount_service_account_token.take(),
    );
    o.s("nodeName", s.node_name.take());
    o.b("hostNetwork", s.host_network.take());
    o.b("hostPID", s.host_pid.take());
    o.b("hostIPC", s.host_ipc.take());
    o.pb("shareProcessNamespace", s.share_process_namespace.take());
    if let Some(sc) = s.security_context.take() {
        // Only the empty PodSecurityContext (what every defaulted pod carries) is understood.
        rest(&sc, "PodSecurityContext")?;
        o.v("securityContext", Some(json!({})));
    }
    o.list(
        "imagePullSecrets",
        std::mem::take(&mut s.image_pull_secrets),
        |mut r| {
            let mut o = Out::default();
            o.s("name", r.name.take());
            rest(&r, "LocalObjectReference")?;
            Ok(o.done())
        },
    )?;
    o.s("hostname", s.hostname.take());
    o.s("subdomain", s.subdomain.take());
    o.s("schedulerName", s.scheduler_name.take());
    o.list(
        "tolerations",
        std::mem::take(&mut s.tolerations),
        toleration,
    )?;
    o.s("priorityClassName", s.priority_class_name.take());
    o.pi("priority", i32s(s.priority.take()));
    o.ps("runtimeClassName", s.runtime_class_name.take());
    o.pb("enableServiceLinks", s.enable_service_links.take());
    o.ps("preemptionPolicy", s.preemption_policy.take());
    o.v("overhead", quantities(std::mem::take(&mut s.overhead)));
    o.pb("setHostnameAsFQDN", s.set_hostname_as_fqdn.take());
    o.pb("hostUsers", s.host_users.take());
    o.ps("hostnameOverride", s.hostname_override.take());
    rest(&s, "PodSpec")?;
    Ok(o.done())
}

fn pod_template(mut t: core::PodTemplateSpec) -> R {
    let mut o = Out::default();
    o.msg("metadata", t.metadata.take(), meta)?;
    o.msg("spec", t.spec.take(), pod_spec)?;
    rest(&t, "PodTemplateSpec")?;
    Ok(o.done())
}

fn job_spec(mut s: batch::JobSpec) -> R {
    let mut o = Out::default();
    o.pi("parallelism", i32s(s.parallelism.take()));
    o.pi("completions", i32s(s.completions.take()));
    o.pi("activeDeadlineSeconds", s.active_deadline_seconds.take());
    o.pi("backoffLimit", i32s(s.backoff_limit.take()));
    o.pi(
        "backoffLimitPerIndex",
        i32s(s.backoff_limit_per_index.take()),
    );
    o.pi("maxFailedIndexes", i32s(s.max_failed_indexes.take()));
    o.msg("selector", s.selector.take(), label_selector)?;
    o.pb("manualSelector", s.manual_selector.take());
    o.msg("template", s.template.take(), pod_template)?;
    o.pi(
        "ttlSecondsAfterFinished",
        i32s(s.ttl_seconds_after_finished.take()),
    );
    o.ps("completionMode", s.completion_mode.take());
    o.pb("suspend", s.suspend.take());
    o.ps("podReplacementPolicy", s.pod_replacement_policy.take());
    o.ps("managedBy", s.managed_by.take());
    rest(&s, "JobSpec")?;
    Ok(o.done())
}

fn service_spec(mut s: core::ServiceSpec) -> R {
    let mut o = Out::default();
    o.list("ports", std::mem::take(&mut s.ports), |mut p| {
        let mut o = Out::default();
        o.s("name", p.name.take());
        o.s("protocol", p.protocol.take());
        o.ps("appProtocol", p.app_protocol.take());
        o.pi("port", i32s(p.port.take()));
        // Go always sends `targetPort` (a non-pointer IntOrString); its zero means unset.
        let target = p.target_port.take().filter(|t| {
            !(t.int_val.unwrap_or(0) == 0 && t.str_val.as_deref().unwrap_or("").is_empty())
        });
        o.msg("targetPort", target, int_or_string)?;
        o.i("nodePort", i32s(p.node_port.take()));
        rest(&p, "ServicePort")?;
        Ok(o.done())
    })?;
    o.map("selector", std::mem::take(&mut s.selector));
    o.s("clusterIP", s.cluster_ip.take());
    o.strs("clusterIPs", std::mem::take(&mut s.cluster_ips));
    o.s("type", s.r#type.take());
    o.strs("externalIPs", std::mem::take(&mut s.external_ips));
    o.s("sessionAffinity", s.session_affinity.take());
    o.s("loadBalancerIP", s.load_balancer_ip.take());
    o.strs(
        "loadBalancerSourceRanges",
        std::mem::take(&mut s.load_balancer_source_ranges),
    );
    o.s("externalName", s.external_name.take());
    o.s("externalTrafficPolicy", s.external_traffic_policy.take());
    o.i("healthCheckNodePort", i32s(s.health_check_node_port.take()));
    o.b(
        "publishNotReadyAddresses",
        s.publish_not_ready_addresses.take(),
    );
    o.strs("ipFamilies", std::mem::take(&mut s.ip_families));
    o.ps("ipFamilyPolicy", s.ip_family_policy.take());
    o.pb(
        "allocateLoadBalancerNodePorts",
        s.allocate_load_balancer_node_ports.take(),
    );
    o.ps("loadBalancerClass", s.load_balancer_class.take());
    o.ps("internalTrafficPolicy", s.internal_traffic_policy.take());
    o.ps("trafficDistribution", s.traffic_distribution.take());
    rest(&s, "ServiceSpec")?;
    Ok(o.done())
}

fn ingress_backend(mut b: networking::IngressBackend) -> R {
    let mut o = Out::default();
    o.msg("service", b.service.take(), |mut s| {
        let mut o = Out::default();
        o.s("name", s.name.take());
        o.msg("port", s.port.take(), |mut p| {
            let mut o = Out::default();
            o.s("name", p.name.take());
            o.i("number", i32s(p.number.take()));
            rest(&p, "ServiceBackendPort")?;
            Ok(o.done())
        })?;
        rest(&s, "IngressServiceBackend")?;
        Ok(o.done())
    })?;
    o.msg("resource", b.resource.take(), |mut r| {
        let mut o = Out::default();
        o.ps("apiGroup", r.api_group.take());
        o.s("kind", r.kind.take());
        o.s("name", r.name.take());
        rest(&r, "TypedLocalObjectReference")?;
        Ok(o.done())
    })?;
    rest(&b, "IngressBackend")?;
    Ok(o.done())
}

fn ingress_spec(mut s: networking::IngressSpec) -> R {
    let mut o = Out::default();
    o.ps("ingressClassName", s.ingress_class_name.take());
    o.msg("defaultBackend", s.default_backend.take(), ingress_backend)?;
    o.list("tls", std::mem::take(&mut s.tls), |mut t| {
        let mut o = Out::default();
        o.strs("hosts", std::mem::take(&mut t.hosts));
        o.s("secretName", t.secret_name.take());
        rest(&t, "IngressTLS")?;
        Ok(o.done())
    })?;
    o.list("rules", std::mem::take(&mut s.rules), |mut r| {
        let mut o = Out::default();
        o.s("host", r.host.take());
        if let Some(mut value) = r.ingress_rule_value.take() {
            o.msg("http", value.http.take(), |mut h| {
                let mut o = Out::default();
                o.list("paths", std::mem::take(&mut h.paths), |mut p| {
                    let mut o = Out::default();
                    o.s("path", p.path.take());
                    o.ps("pathType", p.path_type.take());
                    o.msg("backend", p.backend.take(), ingress_backend)?;
                    rest(&p, "HTTPIngressPath")?;
                    Ok(o.done())
                })?;
                rest(&h, "HTTPIngressRuleValue")?;
                Ok(o.done())
            })?;
            rest(&value, "IngressRuleValue")?;
        }
        rest(&r, "IngressRule")?;
        Ok(o.done())
    })?;
    rest(&s, "IngressSpec")?;
    Ok(o.done())
}

fn stateful_set_spec(mut s: apps::StatefulSetSpec) -> R {
    let mut o = Out::default();
    o.pi("replicas", i32s(s.replicas.take()));
    o.msg("selector", s.selector.take(), label_selector)?;
    o.msg("template", s.template.take(), pod_template)?;
    o.list(
        "volumeClaimTemplates",
        std::mem::take(&mut s.volume_claim_templates),
        |mut c| {
            let mut o = Out::default();
            o.msg("metadata", c.metadata.take(), meta)?;
            o.msg("spec", c.spec.take(), |mut s| {
                let mut o = Out::default();
                o.strs("accessModes", std::mem::take(&mut s.access_modes));
                o.msg("selector", s.selector.take(), label_selector)?;
                o.msg("resources", s.resources.take(), |mut r| {
                    let mut o = Out::default();
                    o.v("limits", quantities(std::mem::take(&mut r.limits)));
                    o.v("requests", quantities(std::mem::take(&mut r.requests)));
                    rest(&r, "VolumeResourceRequirements")?;
                    Ok(o.done())
                })?;
                o.s("volumeName", s.volume_name.take());
                o.ps("storageClassName", s.storage_class_name.take());
                o.ps("volumeMode", s.volume_mode.take());
                o.ps(
                    "volumeAttributesClassName",
                    s.volume_attributes_class_name.take(),
                );
                rest(&s, "PersistentVolumeClaimSpec")?;
                Ok(o.done())
            })?;
            // The claim's status is the server's to set.
            c.status = None;
            rest(&c, "PersistentVolumeClaim")?;
            Ok(o.done())
        },
    )?;
    o.s("serviceName", s.service_name.take());
    o.s("podManagementPolicy", s.pod_management_policy.take());
    o.msg("updateStrategy", s.update_strategy.take(), |mut st| {
        let mut o = Out::default();
        o.s("type", st.r#type.take());
        o.msg("rollingUpdate", st.rolling_update.take(), |mut ru| {
            let mut o = Out::default();
            o.pi("partition", i32s(ru.partition.take()));
            o.msg("maxUnavailable", ru.max_unavailable.take(), int_or_string)?;
            rest(&ru, "RollingUpdateStatefulSetStrategy")?;
            Ok(o.done())
        })?;
        rest(&st, "StatefulSetUpdateStrategy")?;
        Ok(o.done())
    })?;
    o.pi(
        "revisionHistoryLimit",
        i32s(s.revision_history_limit.take()),
    );
    o.i("minReadySeconds", i32s(s.min_ready_seconds.take()));
    o.msg(
        "persistentVolumeClaimRetentionPolicy",
        s.persistent_volume_claim_retention_policy.take(),
        |mut p| {
            let mut o = Out::default();
            o.s("whenDeleted", p.when_deleted.take());
            o.s("whenScaled", p.when_scaled.take());
            rest(&p, "StatefulSetPersistentVolumeClaimRetentionPolicy")?;
            Ok(o.done())
        },
    )?;
    o.msg("ordinals", s.ordinals.take(), |mut ord| {
        let mut o = Out::default();
        o.i("start", i32s(ord.start.take()));
        rest(&ord, "StatefulSetOrdinals")?;
        Ok(o.done())
    })?;
    rest(&s, "StatefulSetSpec")?;
    Ok(o.done())
}

fn decode<M: Message + Default>(raw: &[u8]) -> Result<M, ApiError> {
    M::decode(raw).map_err(super::bad)
}

/// The JSON form of a workload or Service message; `status` is not read (the server sets
/// it on create and keeps its own on main-resource updates).
pub(super) fn to_json(kind: &str, raw: &[u8]) -> Option<R> {
    let conv = || -> R {
        let mut o = Out::default();
        match kind {
            "Pod" => {
                let mut p: core::Pod = decode(raw)?;
                o.msg("metadata", p.metadata.take(), meta)?;
                o.msg("spec", p.spec.take(), pod_spec)?;
            }
            "Ingress" => {
                let mut i: networking::Ingress = decode(raw)?;
                o.msg("metadata", i.metadata.take(), meta)?;
                o.msg("spec", i.spec.take(), ingress_spec)?;
            }
            "IngressClass" => {
                let mut c: networking::IngressClass = decode(raw)?;
                o.msg("metadata", c.metadata.take(), meta)?;
                o.msg("spec", c.spec.take(), |mut s| {
                    let mut o = Out::default();
                    o.s("controller", s.controller.take());
                    o.msg("parameters", s.parameters.take(), |mut p| {
                        let mut o = Out::default();
                        o.ps("apiGroup", p.a_pi_group.take());
                        o.s("kind", p.kind.take());
                        o.s("name", p.name.take());
                        o.ps("scope", p.scope.take());
                        o.ps("namespace", p.namespace.take());
                        rest(&p, "IngressClassParametersReference")?;
                        Ok(o.done())
                    })?;
                    rest(&s, "IngressClassSpec")?;
                    Ok(o.done())
                })?;
            }
            "Service" => {
                let mut s: core::Service = decode(raw)?;
                o.msg("metadata", s.metadata.take(), meta)?;
                o.msg("spec", s.spec.take(), service_spec)?;
            }
            "ReplicaSet" => {
                let mut r: apps::ReplicaSet = decode(raw)?;
                o.msg("metadata", r.metadata.take(), meta)?;
                o.msg("spec", r.spec.take(), |mut s| {
                    let mut o = Out::default();
                    o.pi("replicas", i32s(s.replicas.take()));
                    o.i("minReadySeconds", i32s(s.min_ready_seconds.take()));
                    o.msg("selector", s.selector.take(), label_selector)?;
                    o.msg("template", s.template.take(), pod_template)?;
                    rest(&s, "ReplicaSetSpec")?;
                    Ok(o.done())
                })?;
            }
            "DaemonSet" => {
                let mut d: apps::DaemonSet = decode(raw)?;
                o.msg("metadata", d.metadata.take(), meta)?;
                o.msg("spec", d.spec.take(), |mut s| {
                    let mut o = Out::default();
                    o.msg("selector", s.selector.take(), label_selector)?;
                    o.msg("template", s.template.take(), pod_template)?;
                    o.msg("updateStrategy", s.update_strategy.take(), |mut st| {
                        let mut o = Out::default();
                        o.s("type", st.r#type.take());
                        o.msg("rollingUpdate", st.rolling_update.take(), |mut ru| {
                            let mut o = Out::default();
                            o.msg("maxUnavailable", ru.max_unavailable.take(), int_or_string)?;
                            o.msg("maxSurge", ru.max_surge.take(), int_or_string)?;
                            rest(&ru, "RollingUpdateDaemonSet")?;
                            Ok(o.done())
                        })?;
                        rest(&st, "DaemonSetUpdateStrategy")?;
                        Ok(o.done())
                    })?;
                    o.i("minReadySeconds", i32s(s.min_ready_seconds.take()));
                    o.pi(
                        "revisionHistoryLimit",
                        i32s(s.revision_history_limit.take()),
                    );
                    rest(&s, "DaemonSetSpec")?;
                    Ok(o.done())
                })?;
            }
            "StatefulSet" => {
                let mut d: apps::StatefulSet = decode(raw)?;
                o.msg("metadata", d.metadata.take(), meta)?;
                o.msg("spec", d.spec.take(), stateful_set_spec)?;
            }
            "Deployment" => {
                let mut d: apps::Deployment = decode(raw)?;
                o.msg("metadata", d.metadata.take(), meta)?;
                o.msg("spec", d.spec.take(), |mut s| {
                    let mut o = Out::default();
                    o.pi("replicas", i32s(s.replicas.take()));
                    o.msg("selector", s.selector.take(), label_selector)?;
                    o.msg("template", s.template.take(), pod_template)?;
                    o.msg("strategy", s.strategy.take(), |mut st| {
                        let mut o = Out::default();
                        o.s("type", st.r#type.take());
                        o.msg("rollingUpdate", st.rolling_update.take(), |mut ru| {
                            let mut o = Out::default();
                            o.msg("maxUnavailable", ru.max_unavailable.take(), int_or_string)?;
                            o.msg("maxSurge", ru.max_surge.take(), int_or_string)?;
                            rest(&ru, "RollingUpdateDeployment")?;
                            Ok(o.done())
                        })?;
                        rest(&st, "DeploymentStrategy")?;
                        Ok(o.done())
                    })?;
                    o.i("minReadySeconds", i32s(s.min_ready_seconds.take()));
                    o.pi(
                        "revisionHistoryLimit",
                        i32s(s.revision_history_limit.take()),
                    );
                    o.b("paused", s.paused.take());
                    o.pi(
                        "progressDeadlineSeconds",
                        i32s(s.progress_deadline_seconds.take()),
                    );
                    rest(&s, "DeploymentSpec")?;
                    Ok(o.done())
                })?;
            }
            "Job" => {
                let mut j: batch::Job = decode(raw)?;
                o.msg("metadata", j.metadata.take(), meta)?;
                o.msg("spec", j.spec.take(), job_spec)?;
            }
            "CronJob" => {
                let mut c: batch::CronJob = decode(raw)?;
                o.msg("metadata", c.metadata.take(), meta)?;
                o.msg("spec", c.spec.take(), |mut s| {
                    let mut o = Out::default();
                    o.s("schedule", s.schedule.take());
                    o.ps("timeZone", s.time_zone.take());
                    o.pi(
                        "startingDeadlineSeconds",
                        s.starting_deadline_seconds.take(),
                    );
                    o.s("concurrencyPolicy", s.concurrency_policy.take());
                    o.pb("suspend", s.suspend.take());
                    o.msg("jobTemplate", s.job_template.take(), |mut t| {
                        let mut o = Out::default();
                        o.msg("metadata", t.metadata.take(), meta)?;
                        o.msg("spec", t.spec.take(), job_spec)?;
                        rest(&t, "JobTemplateSpec")?;
                        Ok(o.done())
                    })?;
                    o.pi(
                        "successfulJobsHistoryLimit",
                        i32s(s.successful_jobs_history_limit.take()),
                    );
                    o.pi(
                        "failedJobsHistoryLimit",
                        i32s(s.failed_jobs_history_limit.take()),
                    );
                    rest(&s, "CronJobSpec")?;
                    Ok(o.done())
                })?;
            }
            _ => unreachable!("only called for the kinds above"),
        }
        Ok(o.done())
    };
    matches!(
        kind,
        "Pod"
            | "Service"
            | "Deployment"
            | "ReplicaSet"
            | "DaemonSet"
            | "StatefulSet"
            | "Job"
            | "CronJob"
            | "Ingress"
            | "IngressClass"
    )
    .then(conv)
}
