//! The kind registry. Each served kind is one [`Strategy`] — defaulting, validation, which
//! fields are spec and which are status, field selectors, table columns — registered once;
//! all REST plumbing is shared and works on JSON values through the object-safe [`Kind`].
//! This mirrors kube-apiserver's `rest.RESTCreateStrategy`/`RESTUpdateStrategy`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use wasmkube_api::ResourceInfo;

use crate::error::FieldError;
use crate::table::Column;
use crate::validation;

/// How names of a kind are validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most kinds).
    Subdomain,
    /// RFC 1123 label (namespaces).
    Label,
    /// RFC 1035 label (services).
    Label1035,
    /// Any name without `/` or `%` (events, leases).
    Path,
}

/// The per-kind behaviour of the apiserver.
///
/// ### Correctness requirements
/// - [`Strategy::default`] must be idempotent: it runs on every create and update.
/// - [`Strategy::validate`] must report every bad field it finds, not just the first.
pub trait Strategy: Send + Sync + 'static {
    /// The `k8s-openapi` type.
    type K: k8s_openapi::Resource
        + Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
        + schemars::JsonSchema
        + Clone
        + Send
        + Sync
        + 'static;

    /// How names are validated.
    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// Whether a create keeps the client's `status` (nodes do); otherwise it is reset, as
    /// each kind's `PrepareForCreate` does.
    fn keeps_status_on_create(&self) -> bool {
        false
    }

    /// Whether a delete answers with the deleted object rather than a success `Status`
    /// (kube-apiserver's `ReturnDeletedObject`: pods and services).
    fn returns_deleted_object(&self) -> bool {
        false
    }

    /// Subresources beyond `status` and `scale` (pods' `binding`, `log`, `exec`,
    /// `portforward`; namespaces' `finalize`), for discovery and routing.
    fn subresources(&self) -> &'static [Subresource] {
        &[]
    }

    /// Finalizers the kind keeps outside `metadata.finalizers` that also block deletion
    /// (namespaces' `spec.finalizers`).
    fn spec_finalizers(&self, _obj: &Value) -> usize {
        0
    }

    /// The grace period a delete gives the object, `requested` being the client's; 0 deletes
    /// at once (kube-apiserver's `RESTGracefulDeleteStrategy.CheckGracefulDelete`).
    fn delete_grace(&self, _obj: &Value, _requested: Option<i64>) -> i64 {
        0
    }

    /// Whether an update that removes the last finalizer of an object being deleted removes
    /// it (`ShouldDeleteDuringUpdate`); a pod still running waits for its node.
    fn delete_during_update(&self, _obj: &Value) -> bool {
        true
    }

    /// Changes an object being marked for deletion (`BeforeDelete`): a namespace turns
    /// `Terminating`.
    fn prepare_for_delete(&self, _obj: &mut Value) {}

    /// Kubernetes' defaulting (`SetDefaults_*`), on create and update.
    fn default(&self, _obj: &mut Self::K) {}

    /// Kind-specific validation of a new object.
    fn validate(&self, _obj: &Self::K) -> Vec<FieldError> {
        Vec::new()
    }

    /// Kind-specific checks of an update (immutable fields), after [`Strategy::validate`].
    fn validate_update(&self, _new: &Self::K, _old: &Self::K) -> Vec<FieldError> {
        Vec::new()
    }

    /// Field paths usable in `fieldSelector` besides `metadata.name`/`metadata.namespace`.
    fn field_selectors(&self) -> &'static [&'static str] {
        &[]
    }

    /// Converts this kind's JSON to the stored form, for kinds stored as another kind
    /// ([`ResourceInfo::stored_as`]).
    fn to_storage(&self, obj: Value) -> Value {
        obj
    }

    /// Converts the stored form back to this kind's JSON.
    fn view_of_stored(&self, stored: Value) -> Value {
        stored
    }

    /// Table columns after `Name`.
    fn columns(&self) -> Vec<Column>;

    /// The cells for [`Strategy::columns`].
    fn row(&self, obj: &Self::K) -> Vec<Value>;
}

/// A subresource a kind serves beyond `status` and `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subresource {
    /// Its name in the path (`binding`).
    pub name: &'static str,
    /// The kind it accepts or returns (`Binding`).
    pub kind: &'static str,
    /// Its verbs, for discovery.
    pub verbs: &'static [&'static str],
    /// The group and version of `kind` when not the resource's own (`pods/eviction` takes a
    /// policy/v1 Eviction).
    pub group_version: Option<(&'static str, &'static str)>,
    /// The part of the object (a JSON pointer) that only this subresource writes: a `PUT` or
    /// `PATCH` of it changes that part alone, and updates of the object itself keep it as
    /// stored (namespaces' `finalize` and `/spec/finalizers`; pods' `ephemeralcontainers`).
    pub owns: Option<&'static str>,
}

/// The result of decoding a request body into a kind.
pub struct Decoded {
    /// The object, as the typed model serializes it.
    pub object: Value,
    /// Paths of fields the typed model does not know (dropped from `object`).
    pub unknown: Vec<String>,
}

/// The verbs of a `proxy` subresource, as discovery lists them.
pub const PROXY_VERBS: &[&str] = &["create", "delete", "get", "patch", "update"];

/// An object-safe view of a [`Strategy`], working on JSON values.
pub trait Kind: Send + Sync {
    /// Identity.
    fn info(&self) -> &ResourceInfo;
    /// Decodes a JSON object through the typed model.
    ///
    /// # Errors
    /// When the JSON does not fit the kind's schema (a type mismatch, say).
    fn decode(&self, raw: &Value) -> Result<Decoded, serde_json::Error>;
    /// Defaults and validates a new or updated object in place.
    fn admit(&self, obj: &mut Value, old: Option<&Value>) -> Result<(), Vec<FieldError>>;
    /// Supported field selector paths.
    fn field_selectors(&self) -> &'static [&'static str] {
        &[]
    }
    /// See [`Strategy::keeps_status_on_create`].
    fn keeps_status_on_create(&self) -> bool {
        false
    }
    /// See [`Strategy::returns_deleted_object`].
    fn returns_deleted_object(&self) -> bool {
        false
    }
    /// See [`Strategy::subresources`].
    fn subresources(&self) -> &'static [Subresource] {
        &[]
    }
    /// Whether the kind serves subresource `name` beyond `status` and `scale`.
    fn serves(&self, name: &str) -> bool {
        self.subresources().iter().any(|s| s.name == name)
    }
    /// The part of the object subresource `name` owns ([`Subresource::owns`]).
    fn owned_by(&self, name: &str) -> Option<&'static str> {
        self.subresources()
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.owns)
    }
    /// See [`Strategy::spec_finalizers`].
    fn spec_finalizers(&self, _obj: &Value) -> usize {
        0
    }
    /// See [`Strategy::delete_grace`].
    fn delete_grace(&self, _obj: &Value, _requested: Option<i64>) -> i64 {
        0
    }
    /// See [`Strategy::delete_during_update`].
    fn delete_during_update(&self, _obj: &Value) -> bool {
        true
    }
    /// See [`Strategy::prepare_for_delete`].
    fn prepare_for_delete(&self, _obj: &mut Value) {}
    /// See [`Strategy::to_storage`].
    fn to_storage(&self, obj: Value) -> Value;
    /// See [`Strategy::view_of_stored`].
    fn view_of_stored(&self, stored: Value) -> Value;
    /// Table columns, `Name` first.
    fn columns(&self) -> Vec<Column>;
    /// Adds the kind's OpenAPI schema (and those it refers to) to `generator`; returns the
    /// schema name.
    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> String;
    /// Table cells for an object, name first.
    fn row(&self, obj: &Value) -> Vec<Value>;
    /// Where a `scale` subresource reads and writes, when not at the workloads' places
    /// (`spec.replicas`, `status.replicas`, `spec.selector`): a custom resource's.
    fn scale_paths(&self) -> Option<&ScalePaths> {
        None
    }
    /// How the list field `field` below the fields `path` merges in server-side apply (and
    /// which of its parts a manager owns): the built-in kinds' patch merge keys, or a custom
    /// kind's `x-kubernetes-list-type`.
    fn list_type(&self, path: &[String], field: &str) -> crate::patch::ListType {
        crate::patch::builtin_list_type(path, field)
    }
}

/// Where a custom resource keeps what its `scale` subresource shows, as JSON pointers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    /// `specReplicasPath` (`/spec/replicas`).
    pub spec_replicas: String,
    /// `statusReplicasPath` (`/status/replicas`).
    pub status_replicas: String,
    /// `labelSelectorPath` (`/status/selector`): a selector in string form.
    pub label_selector: Option<String>,
}

impl ScalePaths {
    /// A JSON pointer for a simple JSONPath (`.spec.replicas` → `/spec/replicas`).
    pub fn pointer(json_path: &str) -> String {
        json_path.replace('.', "/")
    }
}

struct Registered<S: Strategy> {
    strategy: S,
    info: ResourceInfo,
}

/// The paths of `input`'s fields that decoding dropped (absent from `canonical`), as
/// `a.b[2].c`; `path` holds the segments above, and a path is written only when reported.
fn unknown_fields<'a>(
    input: &'a Value,
    canonical: &Value,
    path: &mut Vec<Segment<'a>>,
    out: &mut Vec<String>,
) {
    match (input, canonical) {
        (Value::Object(i), Value::Object(c)) => {
            for (k, v) in i {
                match c.get(k) {
                    Some(cv) => {
                        path.push(Segment::Field(k));
                        unknown_fields(v, cv, path, out);
                        path.pop();
                    }
                    None if v.is_null() => {}
                    None => {
                        path.push(Segment::Field(k));
                        out.push(render_path(path));
                        path.pop();
                    }
                }
            }
        }
        (Value::Array(i), Value::Array(c)) => {
            for (n, (iv, cv)) in i.iter().zip(c).enumerate() {
                path.push(Segment::Index(n));
                unknown_fields(iv, cv, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// A step of a field path.
enum Segment<'a> {
    Field(&'a str),
    Index(usize),
}

fn render_path(path: &[Segment<'_>]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Segment::Field(k) if s.is_empty() => s.push_str(k),
            Segment::Field(k) => {
                s.push('.');
                s.push_str(k);
            }
            Segment::Index(n) => {
                let _ = write!(s, "[{n}]");
            }
        }
    }
    s
}

impl<S: Strategy> Registered<S> {
    /// Decoded from the tree in place (not from a clone of it, which `from_value` needs).
    fn typed(&self, obj: &Value) -> Result<S::K, serde_json::Error> {
        <S::K as serde::Deserialize>::deserialize(obj)
    }
}

impl<S: Strategy> Kind for Registered<S> {
    fn info(&self) -> &ResourceInfo {
        &self.info
    }

    fn decode(&self, raw: &Value) -> Result<Decoded, serde_json::Error> {
        let typed = self.typed(raw)?;
        let object = serde_json::to_value(&typed)?;
        let mut unknown = Vec::new();
        unknown_fields(raw, &object, &mut Vec::new(), &mut unknown);
        Ok(Decoded { object, unknown })
    }

    fn admit(&self, obj: &mut Value, old: Option<&Value>) -> Result<(), Vec<FieldError>> {
        let mut typed = self
            .typed(obj)
            .map_err(|e| vec![FieldError::invalid("", "object", &e.to_string())])?;
        self.strategy.default(&mut typed);
        let mut errors = validation::object_meta(
            typed.metadata(),
            self.info.namespaced(),
            self.strategy.name_rule(),
        );
        errors.extend(self.strategy.validate(&typed));
        if let Some(old) = old {
            let old_typed = self
                .typed(old)
                .map_err(|e| vec![FieldError::invalid("", "object", &e.to_string())])?;
            errors.extend(self.strategy.validate_update(&typed, &old_typed));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        *obj = serde_json::to_value(&typed).expect("typed objects serialize");
        Ok(())
    }

    delegate::delegate! {
        to self.strategy {
            fn field_selectors(&self) -> &'static [&'static str];
            fn keeps_status_on_create(&self) -> bool;
            fn returns_deleted_object(&self) -> bool;
            fn subresources(&self) -> &'static [Subresource];
            fn spec_finalizers(&self, obj: &Value) -> usize;
            fn delete_grace(&self, obj: &Value, requested: Option<i64>) -> i64;
            fn delete_during_update(&self, obj: &Value) -> bool;
            fn to_storage(&self, obj: Value) -> Value;
            fn view_of_stored(&self, stored: Value) -> Value;
            fn prepare_for_delete(&self, obj: &mut Value);
        }
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> String {
        generator.subschema_for::<S::K>();
        <S::K as schemars::JsonSchema>::schema_name().into_owned()
    }

    fn columns(&self) -> Vec<Column> {
        let mut cols = vec![Column::name()];
        cols.extend(self.strategy.columns());
        cols
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let name = obj["metadata"]["name"].clone();
        let mut cells = vec![name];
        match self.typed(obj) {
            Ok(typed) => cells.extend(self.strategy.row(&typed)),
            Err(_) => cells.extend(self.strategy.columns().iter().map(|_| Value::Null)),
        }
        cells
    }
}

/// All served kinds, looked up by URL or by kind. Kinds can be added while the server runs
/// (a CustomResourceDefinition's, say): readers take a snapshot, writers replace it, so a
/// request sees one consistent set and never waits for a registration.
#[derive(Default)]
pub struct Registry {
    kinds: std::sync::RwLock<Arc<Kinds>>,
}

#[derive(Default, Clone)]
struct Kinds {
    all: Vec<Arc<dyn Kind>>,
    by_resource: HashMap<(String, String, String), usize>,
    generation: u64,
}

impl Registry {
    fn snapshot(&self) -> Arc<Kinds> {
        Arc::clone(&self.kinds.read().expect("registry lock"))
    }

    /// Registers a kind with its type's identity and neither short names, categories nor
    /// subresources; registering a resource again replaces it.
    pub fn register<S: Strategy>(&self, strategy: S) {
        self.register_with(strategy, |i| i);
    }

    /// Registers a kind whose identity `info` completes from its type's (short names,
    /// categories, `status` and `scale`, where it is stored); registering a resource again
    /// replaces it.
    pub fn register_with<S: Strategy>(
        &self,
        strategy: S,
        info: impl FnOnce(ResourceInfo) -> ResourceInfo,
    ) {
        let info = info(ResourceInfo::of::<S::K>());
        self.register_kind(Arc::new(Registered { strategy, info }));
    }

    /// Registers a kind built at run time (a CustomResourceDefinition's version); registering
    /// a resource again replaces it.
    pub fn register_kind(&self, kind: Arc<dyn Kind>) {
        let info = kind.info();
        let key = (
            info.group.to_string(),
            info.version.to_string(),
            info.plural.to_string(),
        );
        let mut guard = self.kinds.write().expect("registry lock");
        let mut next = Kinds::clone(&guard);
        match next.by_resource.get(&key) {
            Some(&i) => next.all[i] = kind,
            None => {
                next.by_resource.insert(key, next.all.len());
                next.all.push(kind);
            }
        }
        next.generation += 1;
        *guard = Arc::new(next);
    }

    /// Stops serving `/{group}/{version}/{plural}`.
    pub fn unregister(&self, group: &str, version: &str, plural: &str) {
        let key = (group.to_string(), version.to_string(), plural.to_string());
        let mut guard = self.kinds.write().expect("registry lock");
        if !guard.by_resource.contains_key(&key) {
            return;
        }
        let mut next = Kinds::clone(&guard);
        next.all.retain(|k| {
            let i = k.info();
            (i.group, i.version, i.plural) != (group, version, plural)
        });
        next.by_resource = next
            .all
            .iter()
            .enumerate()
            .map(|(n, k)| {
                let i = k.info();
                (
                    (
                        i.group.to_string(),
                        i.version.to_string(),
                        i.plural.to_string(),
                    ),
                    n,
                )
            })
            .collect();
        next.generation += 1;
        *guard = Arc::new(next);
    }

    /// The kind served at `/{group}/{version}/{plural}`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<dyn Kind>> {
        let kinds = self.snapshot();
        kinds
            .by_resource
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .map(|&i| Arc::clone(&kinds.all[i]))
    }

    /// Every kind, in registration order.
    pub fn all(&self) -> Vec<Arc<dyn Kind>> {
        self.snapshot().all.clone()
    }

    /// The kind of a `kind` in a group.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<Arc<dyn Kind>> {
        self.snapshot()
            .all
            .iter()
            .find(|k| k.info().group == group && k.info().kind == kind)
            .cloned()
    }

    /// Changes with every registration (caches of derived documents compare it).
    pub fn generation(&self) -> u64 {
        self.snapshot().generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_should_name_each_dropped_path() {
        let input = json!({"spec": {"a": 1, "x": 2, "list": [{"b": 1, "y": 3}]}, "z": null});
        let canonical = json!({"spec": {"a": 1, "list": [{"b": 1}]}});
        let mut out = Vec::new();
        unknown_fields(&input, &canonical, &mut Vec::new(), &mut out);
        assert_eq!(out, ["spec.list[0].y", "spec.x"]);
    }
}
