//! CustomResourceDefinitions served: what kube-apiserver's apiextensions server does, inside
//! this API server. [`start`] follows the definitions in the watch cache and registers one
//! [`CustomKind`] per served version in the kind registry (so every REST path, discovery,
//! OpenAPI and the watch caches serve it at once), keeps each definition's status
//! (`NamesAccepted`, `Established`, `acceptedNames`, `storedVersions`), and, when a definition
//! is deleted, deletes its objects before letting it go.
//!
//! A custom kind works on JSON through its structural schema ([`schema`]): unknown fields are
//! pruned, defaults filled in, values validated with kube-apiserver's messages; its table
//! columns are the definition's `additionalPrinterColumns` (JSONPath). Versions share one
//! storage (`None` conversion: only `apiVersion` changes).

pub(crate) mod schema;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use jsonpath_rust::JsonPath as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wasmkube_api::ResourceInfo;
use wasmkube_api::resource::Scope;

use crate::Apiserver;
use crate::error::FieldError;
use crate::kinds::apiextensions::{CLEANUP_FINALIZER, GROUP};
use crate::registry::{Decoded, Kind, NameRule, ScalePaths};
use crate::request::{Params, Target};
use crate::table::Column;

/// A name for the life of the process: kinds and columns name themselves with `&'static str`,
/// and a definition's names live as long as it is served. Each distinct string is kept once.
fn intern(s: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .expect("intern lock");
    if let Some(&known) = names.get(s) {
        return known;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

fn intern_all(list: &[String]) -> &'static [&'static str] {
    let v: Vec<&'static str> = list.iter().map(|s| intern(s)).collect();
    Box::leak(v.into_boxed_slice())
}

/// One served version of a custom resource.
pub(crate) struct CustomKind {
    info: ResourceInfo,
    /// `GROUP/STORAGE-VERSION`, the `apiVersion` objects are stored with.
    storage_api_version: String,
    /// `openAPIV3Schema`.
    schema: Value,
    /// Printer columns: the column and its JSONPath (`$`-rooted).
    columns: Vec<(Column, String)>,
    /// Whether `/status` is served (then a create or update of the object ignores `status`).
    status: bool,
    /// Where `/scale` reads and writes, when it is served.
    scale: Option<ScalePaths>,
}

impl CustomKind {
    /// The kind of version `version` of `crd`.
    fn of(crd: &CustomResourceDefinition, version: &str) -> Option<CustomKind> {
        let spec = &crd.spec;
        let v = spec.versions.iter().find(|v| v.name == version)?;
        let storage = spec.versions.iter().find(|v| v.storage)?;
        let names = &spec.names;
        let subresources = v.subresources.as_ref();
        let status = subresources.is_some_and(|s| s.status.is_some());
        let scale = subresources
            .and_then(|s| s.scale.as_ref())
            .map(|s| ScalePaths {
                spec_replicas: ScalePaths::pointer(&s.spec_replicas_path),
                status_replicas: ScalePaths::pointer(&s.status_replicas_path),
                label_selector: s.label_selector_path.as_deref().map(ScalePaths::pointer),
            });
        let info = ResourceInfo {
            group: intern(&spec.group),
            version: intern(&v.name),
            kind: intern(&names.kind),
            plural: intern(&names.plural),
            singular: names
                .singular
                .clone()
                .unwrap_or_else(|| names.kind.to_ascii_lowercase()),
            scope: if spec.scope == "Cluster" {
                Scope::Cluster
            } else {
                Scope::Namespaced
            },
            short_names: intern_all(names.short_names.as_deref().unwrap_or_default()),
            categories: intern_all(names.categories.as_deref().unwrap_or_default()),
            status,
            scale: scale.is_some(),
            // Other versions show the storage version's objects with their own apiVersion.
            stored_as: (!v.storage).then(|| (intern(&spec.group), intern(&names.plural))),
        };
        let schema = v
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        let columns = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| {
                let column = Column {
                    name: intern(&c.name),
                    type_: intern(&c.type_),
                    format: intern(c.format.as_deref().unwrap_or_default()),
                    description: intern(c.description.as_deref().unwrap_or_default()),
                    priority: c.priority.unwrap_or(0),
                };
                (column, format!("${}", c.json_path))
            })
            .collect::<Vec<_>>();
        let columns = if columns.is_empty() {
            vec![(
                Column::date("Age", Column::age().description),
                "$.metadata.creationTimestamp".to_owned(),
            )]
        } else {
            columns
        };
        Some(CustomKind {
            info,
            storage_api_version: format!("{}/{}", spec.group, storage.name),
            schema,
            columns,
            status,
            scale,
        })
    }

    fn with_api_version(&self, mut obj: Value, api_version: String) -> Value {
        if let Some(m) = obj.as_object_mut() {
            m.insert("apiVersion".into(), Value::String(api_version));
        }
        obj
    }
}

impl Kind for CustomKind {
    fn info(&self) -> &ResourceInfo {
        &self.info
    }

    fn decode(&self, raw: &Value) -> Result<Decoded, serde_json::Error> {
        let mut object = raw.clone();
        if !object.is_object() {
            return Err(serde::de::Error::custom(format!(
                "expected an object for {}",
                self.info.kind
            )));
        }
        // The metadata must be an ObjectMeta; it is kept as the client sent it (normalized).
        let meta: ObjectMeta = serde_json::from_value(raw["metadata"].clone()).or_else(|e| {
            if raw["metadata"].is_null() {
                Ok(ObjectMeta::default())
            } else {
                Err(e)
            }
        })?;
        object["metadata"] = serde_json::to_value(meta)?;
        let mut unknown = Vec::new();
        schema::prune(&mut object, &self.schema, "", true, &mut unknown);
        Ok(Decoded { object, unknown })
    }

    fn admit(&self, obj: &mut Value, old: Option<&Value>) -> Result<(), Vec<FieldError>> {
        let meta: ObjectMeta = serde_json::from_value(obj["metadata"].clone())
            .map_err(|e| vec![FieldError::invalid("metadata", "object", &e.to_string())])?;
        let mut errors =
            crate::validation::object_meta(&meta, self.info.namespaced(), NameRule::Subdomain);
        schema::default(obj, &self.schema);
        schema::validate(obj, old, &self.schema, "", &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn keeps_status_on_create(&self) -> bool {
        // Without a status subresource, `status` is an ordinary field.
        !self.status
    }

    fn to_storage(&self, obj: Value) -> Value {
        self.with_api_version(obj, self.storage_api_version.clone())
    }

    fn view_of_stored(&self, stored: Value) -> Value {
        self.with_api_version(stored, self.info.api_version())
    }

    fn columns(&self) -> Vec<Column> {
        let mut cols = vec![Column::name()];
        cols.extend(self.columns.iter().map(|(c, _)| c.clone()));
        cols
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> String {
        let name = format!(
            "{}.{}.{}",
            self.info
                .group
                .split('.')
                .rev()
                .collect::<Vec<_>>()
                .join("."),
            self.info.version,
            self.info.kind
        );
        let meta = generator.subschema_for::<ObjectMeta>();
        let mut schema = self.schema.clone();
        if let Some(props) = schema
            .as_object_mut()
            .map(|s| s.entry("properties").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
        {
            props.insert(
                "apiVersion".into(),
                json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}),
            );
            props.insert(
                "kind".into(),
                json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}),
            );
            props.insert("metadata".into(), meta.to_value());
        }
        generator.definitions_mut().insert(name.clone(), schema);
        name
    }

    fn scale_paths(&self) -> Option<&ScalePaths> {
        self.scale.as_ref()
    }

    fn list_type(&self, path: &[String], field: &str) -> crate::patch::ListType {
        if path.first().is_some_and(|p| p == "metadata") {
            return crate::patch::builtin_list_type(path, field);
        }
        schema::list_type(&self.schema, path, field)
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let mut cells = vec![obj["metadata"]["name"].clone()];
        for (column, path) in &self.columns {
            let found = obj
                .query(path)
                .ok()
                .and_then(|v| v.first().map(|v| (*v).clone()));
            cells.push(match (found, column.type_) {
                (None, _) => Value::Null,
                (Some(v), "string") if !v.is_string() => Value::String(match v {
                    Value::Array(a) => a
                        .iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                }),
                (Some(v), _) => v,
            });
        }
        cells
    }
}

/// What is served for one definition: its spec as last registered, and the versions.
struct Served {
    spec: Value,
    versions: Vec<String>,
    group: String,
    plural: String,
}

/// Starts following the definitions until `shutdown`.
pub(crate) fn start(api: Arc<Apiserver>, shutdown: CancellationToken) {
    let kind = api
        .registry
        .by_kind(GROUP, "CustomResourceDefinition")
        .expect("CustomResourceDefinitions are registered");
    tokio::spawn(follow(api, kind, shutdown));
}

/// When work is left (a deleted definition's objects still going, a status write that
/// failed), the follower looks again after a back-off from this...
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// ...doubling up to this.
const RETRY_MAX: Duration = Duration::from_secs(5);

async fn follow(api: Arc<Apiserver>, kind: Arc<dyn Kind>, shutdown: CancellationToken) {
    let cache = api.caches.of_kind(&*kind);
    let mut progress = cache.subscribe();
    let mut served: HashMap<String, Served> = HashMap::new();
    let mut retry = RETRY_FIRST;
    loop {
        let mut again = false;
        if progress.borrow_and_update().loaded {
            let crds: Vec<CustomResourceDefinition> = cache
                .snapshot("", None)
                .0
                .iter()
                .filter_map(|o| serde_json::from_slice(&o.json()).ok())
                .collect();
            again = sync(&api, &kind, &crds, &mut served).await;
        }
        // A change of the definitions wakes it at once; leftover work after the back-off.
        let backoff = tokio::time::sleep(retry);
        retry = if again {
            (retry * 2).min(RETRY_MAX)
        } else {
            RETRY_FIRST
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = progress.changed() => if r.is_err() { return },
            () = backoff, if again => {}
        }
    }
}

/// Brings the registry and the definitions' status in line with `crds`; whether something is
/// left to do (objects of a deleted definition still being deleted).
async fn sync(
    api: &Apiserver,
    kind: &Arc<dyn Kind>,
    crds: &[CustomResourceDefinition],
    served: &mut HashMap<String, Served>,
) -> bool {
    let mut again = false;
    let names: HashSet<String> = crds
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    // Definitions gone: their kinds go too.
    served.retain(|name, s| {
        if names.contains(name) {
            return true;
        }
        for v in &s.versions {
            api.registry.unregister(&s.group, v, &s.plural);
        }
        false
    });
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let spec = serde_json::to_value(&crd.spec).unwrap_or_default();
        let conflict = kind_conflict(crd, crds);
        if conflict.is_none() && served.get(&name).is_none_or(|s| s.spec != spec) {
            let versions: Vec<String> = crd
                .spec
                .versions
                .iter()
                .filter(|v| v.served)
                .map(|v| v.name.clone())
                .collect();
            if let Some(old) = served.get(&name) {
                for v in old.versions.iter().filter(|v| !versions.contains(v)) {
                    api.registry.unregister(&old.group, v, &old.plural);
                }
            }
            for v in &versions {
                if let Some(k) = CustomKind::of(crd, v) {
                    api.registry.register_kind(Arc::new(k));
                }
            }
            tracing::info!(crd = %name, ?versions, "serving custom resources");
            served.insert(
                name.clone(),
                Served {
                    spec,
                    versions,
                    group: crd.spec.group.clone(),
                    plural: crd.spec.names.plural.clone(),
                },
            );
        }
        if let Err(e) = write_status(api, kind, crd, conflict.as_deref()).await {
            tracing::debug!(crd = %name, error = %e.message, "could not write the definition's status");
            again = true;
        }
        if crd.metadata.deletion_timestamp.is_some()
            && crd
                .metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == CLEANUP_FINALIZER)
        {
            match clean_up(api, kind, crd).await {
                Ok(done) => again |= !done,
                Err(e) => {
                    tracing::debug!(crd = %name, error = %e.message, "deleting custom resources");
                    again = true;
                }
            }
        }
    }
    again
}

/// Another definition of the same group that already uses this one's kind or list kind.
fn kind_conflict(
    crd: &CustomResourceDefinition,
    all: &[CustomResourceDefinition],
) -> Option<String> {
    let created = |c: &CustomResourceDefinition| {
        (
            c.metadata.creation_timestamp.as_ref().map(|t| t.0),
            c.metadata.name.clone(),
        )
    };
    all.iter()
        .filter(|o| o.metadata.name != crd.metadata.name && o.spec.group == crd.spec.group)
        .filter(|o| created(o) < created(crd))
        .find_map(|o| {
            if o.spec.names.kind == crd.spec.names.kind {
                Some(format!("\"{}\" is already in use", crd.spec.names.kind))
            } else if o.spec.names.list_kind == crd.spec.names.list_kind {
                Some(format!(
                    "\"{}\" is already in use",
                    crd.spec.names.list_kind.clone().unwrap_or_default()
                ))
            } else {
                None
            }
        })
}

fn target(kind: &Arc<dyn Kind>, name: &str, subresource: Option<&str>) -> Target {
    Target {
        kind: Arc::clone(kind),
        namespace: None,
        name: Some(name.to_owned()),
        subresource: subresource.map(str::to_owned),
        watch_path: false,
    }
}

/// Sets a condition in a status's `conditions`, keeping its transition time when its status
/// did not change.
fn set_condition(
    conditions: &mut Vec<Value>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
) {
    let status = if status { "True" } else { "False" };
    let now = jiff::Timestamp::now().to_string();
    match conditions.iter_mut().find(|c| c["type"] == type_) {
        Some(c) => {
            if c["status"] != status {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        None => conditions.push(json!({"type": type_, "status": status, "reason": reason,
            "message": message, "lastTransitionTime": now})),
    }
}

/// Writes the status a definition should have, when it differs.
async fn write_status(
    api: &Apiserver,
    kind: &Arc<dyn Kind>,
    crd: &CustomResourceDefinition,
    conflict: Option<&str>,
) -> Result<(), crate::ApiError> {
    let name = crd.metadata.name.as_deref().unwrap_or_default();
    let raw = serde_json::to_value(crd).unwrap_or_default();
    let mut status = raw["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    match conflict {
        None => {
            set_condition(
                &mut conditions,
                "NamesAccepted",
                true,
                "NoConflicts",
                "no conflicts found",
            );
            set_condition(
                &mut conditions,
                "Established",
                true,
                "InitialNamesAccepted",
                "the initial names have been accepted",
            );
            status["acceptedNames"] = raw["spec"]["names"].clone();
        }
        Some(why) => {
            set_condition(&mut conditions, "NamesAccepted", false, "KindConflict", why);
            set_condition(
                &mut conditions,
                "Established",
                false,
                "NotAccepted",
                "not all names are accepted",
            );
            if status["acceptedNames"].is_null() {
                status["acceptedNames"] = json!({"kind": "", "plural": ""});
            }
        }
    }
    status["conditions"] = Value::Array(conditions);
    let mut stored: Vec<Value> = status["storedVersions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(v) = crd.spec.versions.iter().find(|v| v.storage)
        && !stored.iter().any(|s| s == v.name.as_str())
    {
        stored.push(json!(v.name));
    }
    status["storedVersions"] = Value::Array(stored);
    let same = |a: &Value, b: &Value| strip_times(a) == strip_times(b);
    if same(&status, &raw["status"]) {
        return Ok(());
    }
    let t = target(kind, name, Some("status"));
    let cur = api.load(&t, name).await?;
    let mut new = cur.value.clone();
    new["status"] = status;
    api.commit_update(&t, &Params::internal(), &cur, new)
        .await
        .map(|_| ())
}

fn strip_times(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(list) = v.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in list {
            if let Some(m) = c.as_object_mut() {
                m.remove("lastTransitionTime");
            }
        }
    }
    v
}

/// Deletes a deleted definition's objects (their own finalizers honoured); once none is left,
/// removes the cleanup finalizer so the definition goes. Whether it is done.
async fn clean_up(
    api: &Apiserver,
    kind: &Arc<dyn Kind>,
    crd: &CustomResourceDefinition,
) -> Result<bool, crate::ApiError> {
    let name = crd.metadata.name.as_deref().unwrap_or_default();
    let storage = crd
        .spec
        .versions
        .iter()
        .find(|v| v.storage)
        .map(|v| v.name.clone());
    let objects = match storage
        .as_deref()
        .and_then(|v| api.registry.get(&crd.spec.group, v, &crd.spec.names.plural))
    {
        Some(custom) => {
            let prefix = custom.info().prefix();
            let items = api.store.list(&prefix, Default::default()).await?;
            let mut left = 0;
            for kv in items.items {
                left += 1;
                let obj: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
                if obj["metadata"]["deletionTimestamp"].is_string() {
                    continue;
                }
                let t = Target {
                    kind: Arc::clone(&custom),
                    namespace: obj["metadata"]["namespace"].as_str().map(str::to_owned),
                    name: obj["metadata"]["name"].as_str().map(str::to_owned),
                    subresource: None,
                    watch_path: false,
                };
                match api.delete(&t, &Default::default()).await {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            left
        }
        None => 0,
    };
    if objects > 0 {
        return Ok(false);
    }
    let t = target(kind, name, None);
    let cur = api.load(&t, name).await?;
    let mut new = cur.value.clone();
    if let Some(list) = new["metadata"]["finalizers"].as_array_mut() {
        list.retain(|f| f != CLEANUP_FINALIZER);
    }
    api.commit_update(&t, &Params::internal(), &cur, new)
        .await?;
    tracing::info!(crd = %name, "custom resources deleted; the definition goes");
    Ok(true)
}
