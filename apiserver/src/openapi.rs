//! OpenAPI v3 documents, generated from the `k8s-openapi` types' schemas (the `schemars`
//! feature): the `/openapi/v3` index and one document per group version, with the paths,
//! operations (`x-kubernetes-group-version-kind`, `x-kubernetes-action`, the `fieldValidation`
//! parameter kubectl looks for) and component schemas that `kubectl apply` validation and
//! `kubectl explain` read.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use serde_json::{Map, Value, json};

use crate::patch::merge_key;
use crate::registry::Registry;

/// The generated documents, keyed by `api/v1` or `apis/{group}/{version}`.
pub(crate) struct OpenApi {
    docs: BTreeMap<String, (Vec<u8>, String)>,
    /// `/openapi/v2` (JSON, protobuf), made from `docs` when first asked for.
    v2: std::sync::OnceLock<(Vec<u8>, Vec<u8>)>,
}

pub(crate) mod v2;

fn param(name: &str, description: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn write_params() -> Vec<Value> {
    vec![
        param(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
            "string",
        ),
        param(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
            "string",
        ),
        param(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (default), Strict.",
            "string",
        ),
    ]
}

fn list_params() -> Vec<Value> {
    [
        "allowWatchBookmarks",
        "continue",
        "fieldSelector",
        "labelSelector",
        "limit",
        "resourceVersion",
        "resourceVersionMatch",
        "sendInitialEvents",
        "timeoutSeconds",
        "watch",
    ]
    .iter()
    .map(|n| {
        param(
            n,
            "",
            if matches!(*n, "limit" | "timeoutSeconds") {
                "integer"
            } else {
                "string"
            },
        )
    })
    .collect()
}

/// Adds the patch-strategy extensions of keyed lists to a schema tree, so clients that
/// compute strategic merge patches from OpenAPI merge those lists by key.
fn annotate(schemas: &mut Map<String, Value>) {
    let names: Vec<String> = schemas.keys().cloned().collect();
    for name in names {
        let Some(props) = schemas
            .get_mut(&name)
            .and_then(|s| s.get_mut("properties"))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let parent = if name.ends_with(".Container") || name.ends_with(".EphemeralContainer") {
            vec!["containers".to_string()]
        } else if name.ends_with("Spec") && name.contains(".core.v1.Service") {
            vec!["spec".to_string()]
        } else if name.ends_with("Status") {
            vec!["status".to_string()]
        } else {
            Vec::new()
        };
        for (field, schema) in props.iter_mut() {
            if schema.get("type").and_then(Value::as_str) != Some("array") {
                continue;
            }
            if let Some(key) = merge_key(&parent, field) {
                schema["x-kubernetes-patch-merge-key"] = json!(key);
                schema["x-kubernetes-patch-strategy"] = json!("merge");
            } else if field == "finalizers" {
                schema["x-kubernetes-patch-strategy"] = json!("merge");
            }
        }
    }
}

impl OpenApi {
    /// Generates every group version's document.
    pub(crate) fn generate(reg: &Registry) -> OpenApi {
        let mut by_gv: BTreeMap<String, Vec<std::sync::Arc<dyn crate::registry::Kind>>> =
            BTreeMap::new();
        for k in reg.all() {
            let info = k.info();
            let gv = if info.group.is_empty() {
                "api/v1".to_string()
            } else {
                format!("apis/{}/{}", info.group, info.version)
            };
            by_gv.entry(gv).or_default().push(k);
        }
        let mut docs = BTreeMap::new();
        for (gv, kinds) in by_gv {
            let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
            let mut paths = Map::new();
            let mut names = Vec::new();
            for k in &kinds {
                let info = k.info();
                let schema_name = k.schema(&mut generator);
                names.push((schema_name.clone(), info.clone()));
                let gvk = json!({"group": info.group, "version": info.version, "kind": info.kind});
                let obj_ref = json!({"$ref": format!("#/components/schemas/{schema_name}")});
                let ok = |r: &Value| json!({"200": {"description": "OK", "content": {"application/json": {"schema": r}}}});
                let op = |action: &str, verb: &str, params: Vec<Value>, r: &Value| {
                    json!({
                        "operationId": format!("{verb}{}", info.kind),
                        "x-kubernetes-action": action,
                        "x-kubernetes-group-version-kind": gvk,
                        "parameters": params,
                        "responses": ok(r),
                    })
                };
                let base = format!(
                    "/{gv}{}",
                    if info.namespaced() {
                        "/namespaces/{namespace}"
                    } else {
                        ""
                    }
                );
                let mut common = vec![path_param("name")];
                if info.namespaced() {
                    common.push(path_param("namespace"));
                }
                let mut patch_params = write_params();
                patch_params.push(param(
                    "force",
                    "Force is going to \"force\" Apply requests.",
                    "boolean",
                ));
                let mut item = json!({
                    "parameters": common,
                    "get": op("get", "read", vec![], &obj_ref),
                    "put": op("put", "replace", write_params(), &obj_ref),
                    "patch": op("patch", "patch", patch_params, &obj_ref),
                    "delete": op("delete", "delete", vec![param("dryRun", "", "string"), param("gracePeriodSeconds", "", "integer"), param("propagationPolicy", "", "string")], &obj_ref),
                });
                item["patch"]["requestBody"] = json!({"content": {
                    "application/apply-patch+yaml": {"schema": {"type": "object"}},
                    "application/json-patch+json": {"schema": {"type": "object"}},
                    "application/merge-patch+json": {"schema": {"type": "object"}},
                    "application/strategic-merge-patch+json": {"schema": {"type": "object"}}}});
                paths.insert(format!("{base}/{}/{{name}}", info.plural), item);
                let mut coll_params = Vec::new();
                if info.namespaced() {
                    coll_params.push(path_param("namespace"));
                }
                paths.insert(
                    format!("{base}/{}", info.plural),
                    json!({
                        "parameters": coll_params,
                        "get": op("list", "list", list_params(), &json!({"type": "object"})),
                        "post": op("post", "create", write_params(), &obj_ref),
                        "delete": op("deletecollection", "deletecollection", list_params(), &json!({"type": "object"})),
                    }),
                );
                if info.status {
                    paths.insert(
                        format!("{base}/{}/{{name}}/status", info.plural),
                        json!({"get": op("get", "readStatus", vec![], &obj_ref), "put": op("put", "replaceStatus", write_params(), &obj_ref), "patch": op("patch", "patchStatus", write_params(), &obj_ref)}),
                    );
                }
            }
            let mut schemas = generator.take_definitions(true);
            for (name, info) in names {
                if let Some(s) = schemas.get_mut(&name) {
                    s["x-kubernetes-group-version-kind"] =
                        json!([{"group": info.group, "version": info.version, "kind": info.kind}]);
                }
            }
            annotate(&mut schemas);
            let doc = json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": format!("v{}.{}", crate::discovery::KUBE_MAJOR, crate::discovery::KUBE_MINOR)},
                "paths": paths,
                "components": {"schemas": schemas},
            });
            let bytes = serde_json::to_vec(&doc).expect("JSON serializes");
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            docs.insert(gv, (bytes, format!("{:016X}", h.finish())));
        }
        OpenApi {
            docs,
            v2: std::sync::OnceLock::new(),
        }
    }

    /// `/openapi/v2` as JSON and as gnostic protobuf: every group version in one Swagger 2.0
    /// document.
    pub(crate) fn v2(&self) -> &(Vec<u8>, Vec<u8>) {
        self.v2.get_or_init(|| {
            let docs: Vec<Value> = self
                .docs
                .values()
                .filter_map(|(bytes, _)| serde_json::from_slice(bytes).ok())
                .collect();
            let version = format!(
                "v{}.{}.0",
                crate::discovery::KUBE_MAJOR,
                crate::discovery::KUBE_MINOR
            );
            let doc = v2::swagger(docs.iter(), &version);
            (
                serde_json::to_vec(&doc).expect("JSON serializes"),
                v2::protobuf(&doc),
            )
        })
    }

    /// `/openapi/v3`: where each group version's document is.
    pub(crate) fn index(&self) -> Value {
        let paths: Map<String, Value> = self
            .docs
            .iter()
            .map(|(gv, (_, hash))| {
                (
                    gv.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={hash}")}),
                )
            })
            .collect();
        json!({"paths": paths})
    }

    /// `/openapi/v3/{gv}`.
    pub(crate) fn doc(&self, gv: &str) -> Option<&[u8]> {
        self.docs.get(gv).map(|(b, _)| b.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_should_carry_gvk_operations_and_schemas() {
        let api = OpenApi::generate(&crate::kinds::builtin());
        let index = api.index();
        assert!(
            index["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .expect("url")
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        let doc: Value =
            serde_json::from_slice(api.doc("apis/apps/v1").expect("apps/v1")).expect("json");
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(
            patch["parameters"]
                .as_array()
                .expect("params")
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        let deploy = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deploy["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        let containers =
            &doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    }
}
