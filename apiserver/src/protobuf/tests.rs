use std::collections::BTreeMap;

use axum::http::StatusCode;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost_reflect::Kind;
use serde_json::json;

use super::*;

/// A JSON value for every field of `desc`, each set to a non-zero value of its type, skipping
/// fields that would recurse into a message already being filled.
fn fill(desc: &MessageDescriptor, stack: &mut Vec<String>) -> Value {
    if let Some(s) = special::Special::of(desc) {
        use special::Special as S;
        return match s {
            S::Time => json!("2024-01-02T03:04:05Z"),
            S::MicroTime => json!("2024-01-02T03:04:05.123456Z"),
            S::Duration => json!("1m30s"),
            S::Quantity => json!("1500m"),
            S::IntOrString => json!(8080),
            S::Raw => json!({"f:a": {}}),
            S::Items => json!(["x"]),
            S::OrBool => json!(true),
            S::OrArray | S::OrStringArray => json!(["x"]),
        };
    }
    stack.push(desc.full_name().to_string());
    let mut obj = serde_json::Map::new();
    let mut inline = Vec::new();
    for f in desc.fields() {
        let kind = f.kind();
        let value_kind = if f.is_map() {
            kind.as_message()
                .expect("entry")
                .map_entry_value_field()
                .kind()
        } else {
            kind.clone()
        };
        if let Kind::Message(m) = &value_kind
            && stack.iter().any(|s| s == m.full_name())
        {
            continue;
        }
        let one = match &value_kind {
            Kind::Message(m) => fill(m, stack),
            Kind::String => json!("x"),
            Kind::Bool => json!(true),
            Kind::Bytes => json!("AQI="),
            Kind::Double | Kind::Float => json!(1.5),
            _ => json!(7),
        };
        let v = if f.is_map() {
            json!({"k": one})
        } else if f.is_list() {
            json!([one])
        } else {
            one
        };
        if to_json::is_inline(desc, f.name()) {
            inline.push(v);
        } else {
            obj.insert(special::json_name(desc, f.name()).to_string(), v);
        }
    }
    for v in inline {
        if let Value::Object(o) = v {
            obj.extend(o);
        }
    }
    stack.pop();
    Value::Object(obj)
}

/// The first path where two JSON values differ, for readable failures.
fn first_diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.keys()
                .chain(y.keys())
                .find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_diff(p, q, &format!("{path}.{k}")),
                    // The typed model stamps embedded resources (PVC templates) with their type.
                    (Some(_), None) if matches!(k.as_str(), "apiVersion" | "kind") => None,
                    (p, q) => Some(format!("{path}.{k}: {p:?} vs {q:?}")),
                })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_diff(p, q, &format!("{path}[{i}]"))),
        _ => (a != b).then(|| format!("{path}: {a} vs {b}")),
    }
}

#[test]
fn every_field_of_every_builtin_kind_should_round_trip_and_match_the_typed_model() {
    let registry = crate::kinds::builtin();
    let kinds = registry.all();
    assert!(kinds.len() >= 20, "{} kinds", kinds.len());
    for kind in kinds {
        let info = kind.info();
        // A definition's schema is recursive and its `JSON*` fields hold free-form JSON, which
        // this generator cannot fill with values the typed model accepts.
        if info.kind == "CustomResourceDefinition" {
            continue;
        }
        let api_version = info.api_version();
        let desc = message_for(&api_version, info.kind)
            .unwrap_or_else(|| panic!("{api_version}/{} has a protobuf schema", info.kind));
        let mut obj = fill(&desc, &mut Vec::new());
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(info.kind);

        // The schema's fields are the typed model's, with the same JSON form.
        let typed = kind.decode(&obj).expect("the typed model reads it");
        assert_eq!(typed.unknown, Vec::<String>::new(), "{}", info.kind);
        assert_eq!(first_diff(&typed.object, &obj, info.kind), None);

        // Every field survives protobuf and back.
        let pb = encode(&obj).unwrap_or_else(|e| panic!("{}: {e}", info.kind));
        let back = decode_envelope(&pb).expect("decodes");
        assert_eq!(first_diff(&back, &obj, info.kind), None);

        // And so does a list of them.
        let mut item = obj.clone();
        item.as_object_mut().expect("object").remove("apiVersion");
        item.as_object_mut().expect("object").remove("kind");
        let list = json!({"apiVersion": api_version, "kind": format!("{}List", info.kind),
            "metadata": {"resourceVersion": "7", "continue": "c"}, "items": [item]});
        let pb = encode(&list).unwrap_or_else(|e| panic!("{}List: {e}", info.kind));
        assert_eq!(decode_envelope(&pb).expect("decodes"), list);
    }
}

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

/// A Pod as client-go writes it; with `go_zeros`, the non-pointer fields it sends unset.
fn go_pod(go_zeros: bool) -> core::Pod {
    let zero = |v: i32| go_zeros.then_some(v);
    let q = |s: &str| Quantity {
        string: Some(s.into()),
    };
    let term = core::PodAffinityTerm {
        label_selector: Some(meta::LabelSelector {
            match_labels: BTreeMap::from([("app".into(), "web".into())]),
            ..Default::default()
        }),
        topology_key: Some("kubernetes.io/hostname".into()),
        ..Default::default()
    };
    core::Pod {
        metadata: Some(meta::ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            generate_name: go_zeros.then(String::new),
            generation: go_zeros.then_some(0),
            creation_timestamp: go_zeros.then_some(meta::Time {
                seconds: Some(-62_135_596_800),
                nanos: Some(0),
            }),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            ..Default::default()
        }),
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: Some("app".into()),
                image: Some("registry.local/web:1".into()),
                stdin: go_zeros.then_some(false),
                tty: go_zeros.then_some(false),
                ports: vec![core::ContainerPort {
                    container_port: Some(8080),
                    host_port: zero(0),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }],
                resources: Some(core::ResourceRequirements {
                    limits: BTreeMap::from([
                        ("cpu".into(), q("500m")),
                        ("memory".into(), q("64Mi")),
                    ]),
                    ..Default::default()
                }),
                readiness_probe: Some(core::Probe {
                    handler: Some(core::ProbeHandler {
                        http_get: Some(core::HttpGetAction {
                            path: Some("/healthz".into()),
                            port: Some(IntOrString {
                                r#type: Some(1),
                                int_val: zero(0),
                                str_val: Some("http".into()),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    period_seconds: Some(5),
                    initial_delay_seconds: zero(0),
                    ..Default::default()
                }),
                security_context: Some(core::SecurityContext {
                    run_as_user: Some(1000),
                    run_as_non_root: Some(true),
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(core::Capabilities {
                        drop: vec!["ALL".into()],
                        ..Default::default()
                    }),
                    seccomp_profile: Some(core::SeccompProfile {
                        r#type: Some("RuntimeDefault".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            security_context: Some(core::PodSecurityContext {
                run_as_user: Some(0),
                fs_group: Some(2000),
                sysctls: vec![core::Sysctl {
                    name: Some("net.core.somaxconn".into()),
                    value: Some("1024".into()),
                }],
                ..Default::default()
            }),
            affinity: Some(core::Affinity {
                node_affinity: Some(core::NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(core::NodeSelector {
                        node_selector_terms: vec![core::NodeSelectorTerm {
                            match_expressions: vec![core::NodeSelectorRequirement {
                                key: Some("zone".into()),
                                operator: Some("In".into()),
                                values: vec!["a".into(), "b".into()],
                            }],
                            ..Default::default()
                        }],
                    }),
                    ..Default::default()
                }),
                pod_anti_affinity: Some(core::PodAntiAffinity {
                    preferred_during_scheduling_ignored_during_execution: vec![
                        core::WeightedPodAffinityTerm {
                            weight: Some(100),
                            pod_affinity_term: Some(term),
                        },
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            termination_grace_period_seconds: Some(0),
            automount_service_account_token: Some(false),
            ..Default::default()
        }),
        status: None,
    }
}

fn pod_json() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "containers": [{
                "name": "app", "image": "registry.local/web:1",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                "securityContext": {
                    "capabilities": {"drop": ["ALL"]}, "runAsUser": 1000, "runAsNonRoot": true,
                    "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                    "seccompProfile": {"type": "RuntimeDefault"}
                }
            }],
            "securityContext": {"runAsUser": 0, "fsGroup": 2000,
                "sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]},
            "affinity": {
                "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "zone", "operator": "In", "values": ["a", "b"]}]}]}},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100,
                    "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}},
                        "topologyKey": "kubernetes.io/hostname"}}]}
            },
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false
        }
    })
}

#[test]
fn a_client_go_pod_with_affinity_and_security_context_should_round_trip() {
    // client-go's bytes (with its unset non-pointer fields) read as the JSON a user wrote...
    let body = envelope("v1", "Pod", go_pod(true).encode_to_vec());
    assert_eq!(decode(&body).expect("decodes"), pod_json());
    // ...and what this server writes reads back in another implementation as the same Pod.
    let ours = encode(&pod_json()).expect("encodes");
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(&ours[MAGIC.len()..])
        .expect("an envelope");
    assert_eq!(
        unknown.type_meta.as_ref().and_then(|t| t.kind.as_deref()),
        Some("Pod")
    );
    let pod = core::Pod::decode(unknown.raw.as_deref().unwrap_or_default()).expect("a Pod");
    assert_eq!(pod, go_pod(false));
}

#[test]
fn unknown_fields_should_be_refused_never_dropped() {
    // A field number Pod does not have (99, varint 1) in client-go's bytes.
    let mut raw = go_pod(false).encode_to_vec();
    raw.extend([0x98, 0x06, 0x01]);
    let e = decode(&envelope("v1", "Pod", raw)).expect_err("refused");
    assert_eq!(e.code, 400);
    assert!(
        e.message.contains("field number 99 of api.core.v1.Pod"),
        "{}",
        e.message
    );
    // And a JSON key the schema does not know cannot be written as protobuf.
    let mut pod = pod_json();
    pod["spec"]["containers"][0]["bogus"] = json!(1);
    let e = encode(&pod).expect_err("refused");
    assert!(
        matches!(&e, Error::UnknownField(p) if p == "spec.containers[0].bogus"),
        "{e}"
    );
}

#[test]
fn kinds_without_a_schema_and_bad_envelopes_should_be_refused() {
    let e = decode(&envelope("example.com/v1", "Widget", Vec::new())).expect_err("415");
    assert_eq!(e.code, 415);
    assert_eq!(decode(b"\x00").expect_err("no magic").code, 400);
    assert_eq!(
        decode(&envelope("v1", "", Vec::new()))
            .expect_err("no kind")
            .code,
        400
    );
    assert_eq!(decode(b"k8s\x00\xff\xff").expect_err("garbage").code, 400);
}

#[test]
fn meta_kinds_should_be_found_under_v1_too() {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "pods \"x\" not found", "reason": "NotFound",
        "details": {"name": "x", "kind": "pods"}, "code": 404});
    assert_eq!(
        decode_envelope(&encode(&status).expect("encodes")).expect("decodes"),
        status
    );
    let opts = json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
        "propagationPolicy": "Foreground", "preconditions": {"uid": "u"}});
    assert_eq!(
        decode(&encode(&opts).expect("encodes")).expect("decodes"),
        opts
    );
}

async fn respond_with(accept: &str, body: Value) -> (StatusCode, String, Vec<u8>) {
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT, accept.parse().expect("header"));
    let resp = encode_response(&h, crate::rest::respond_json(StatusCode::OK, &body, &[])).await;
    let status = resp.status();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, ct, bytes.to_vec())
}

#[tokio::test]
async fn responses_should_be_protobuf_when_asked_first_and_json_otherwise() {
    let pod = pod_json();
    let (_, ct, body) = respond_with("application/vnd.kubernetes.protobuf, */*", pod.clone()).await;
    assert_eq!(ct, MEDIA_TYPE);
    assert_eq!(decode(&body).expect("decodes"), pod);
    let (_, ct, _) =
        respond_with("application/json, application/vnd.kubernetes.protobuf", pod).await;
    assert_eq!(ct, "application/json");
    // A kind without a schema falls back to JSON when JSON is acceptable, else 406.
    let widget =
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
    let accept = "application/vnd.kubernetes.protobuf,application/json";
    let (status, ct, body) = respond_with(accept, widget.clone()).await;
    assert_eq!((status, ct.as_str()), (StatusCode::OK, "application/json"));
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json"),
        widget
    );
    let (status, _, _) = respond_with(MEDIA_TYPE, widget).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
}
