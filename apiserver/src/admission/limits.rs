//! The LimitRanger admission plugin: a new pod's containers get the `default` limits and
//! `defaultRequest` requests of their namespace's LimitRanges where they state none (noted in
//! the `kubernetes.io/limit-ranger` annotation), then must stay within each range's `min`,
//! `max` and `maxLimitRequestRatio`, per container and per pod — refused in kube-apiserver's
//! words otherwise. LimitRanges are read from the watch cache.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, LimitRange, LimitRangeItem, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;
use wasmkube_api::ResourceInfo;
use wasmkube_api::quota::{milli, stated};

use super::{Mutating, Operation, Request, Validating};
use crate::cache::Cacher;
use crate::error::ApiError;

const ANNOTATION: &str = "kubernetes.io/limit-ranger";

pub(crate) struct LimitRanger {
    /// LimitRanges, from the watch cache.
    ranges: Arc<Cacher>,
    info: ResourceInfo,
}

impl LimitRanger {
    pub(crate) fn new(ranges: Arc<Cacher>) -> Self {
        LimitRanger {
            ranges,
            info: ResourceInfo::of::<LimitRange>(),
        }
    }

    /// The `type` items of the LimitRanges in `namespace`.
    fn items(&self, namespace: &str, ty: &str) -> Vec<LimitRangeItem> {
        let (objects, _) = self
            .ranges
            .snapshot(&self.info.namespace_prefix(Some(namespace)), None);
        objects
            .iter()
            .filter_map(|o| serde_json::from_slice::<LimitRange>(&o.json()).ok())
            .flat_map(|lr| lr.spec.map(|s| s.limits).unwrap_or_default())
            .filter(|i| i.type_ == ty)
            .collect()
    }
}

fn handles(req: &Request<'_>) -> bool {
    req.operation == Operation::Create && req.is::<Pod>() && req.namespace.is_some()
}

/// Sets what `c` leaves out from `defaults`; the names it set.
fn fill(
    m: &mut Option<BTreeMap<String, Quantity>>,
    defaults: Option<&BTreeMap<String, Quantity>>,
) -> Vec<String> {
    let mut set = Vec::new();
    for (name, q) in defaults.into_iter().flatten() {
        let m = m.get_or_insert_with(Default::default);
        if !m.contains_key(name) {
            m.insert(name.clone(), q.clone());
            set.push(name.clone());
        }
    }
    set
}

#[async_trait::async_trait]
impl Mutating for LimitRanger {
    fn handles(&self, req: &Request<'_>) -> bool {
        handles(req)
    }

    async fn admit(&self, req: &Request<'_>, obj: &mut Value) -> Result<(), ApiError> {
        let items = self.items(req.namespace.unwrap_or_default(), "Container");
        if items.is_empty() {
            return Ok(());
        }
        let Ok(mut pod) = serde_json::from_value::<Pod>(obj.clone()) else {
            // Validation names what is wrong with it.
            return Ok(());
        };
        let mut notes = Vec::new();
        let spec = pod.spec.get_or_insert_with(Default::default);
        let all = spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(spec.containers.iter_mut());
        for c in all {
            let r = c.resources.get_or_insert_with(Default::default);
            let (mut requests, mut limits) = (Vec::new(), Vec::new());
            for item in &items {
                requests.extend(fill(&mut r.requests, item.default_request.as_ref()));
                limits.extend(fill(&mut r.limits, item.default.as_ref()));
            }
            if !requests.is_empty() {
                notes.push(format!(
                    "{} request for container {}",
                    requests.join(", "),
                    c.name
                ));
            }
            if !limits.is_empty() {
                notes.push(format!(
                    "{} limit for container {}",
                    limits.join(", "),
                    c.name
                ));
            }
        }
        if notes.is_empty() {
            return Ok(());
        }
        let annotations = pod
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.insert(
            ANNOTATION.into(),
            format!("LimitRanger plugin set: {}", notes.join("; ")),
        );
        if let (Some(o), Ok(Value::Object(new))) = (obj.as_object_mut(), serde_json::to_value(&pod))
        {
            for key in ["metadata", "spec"] {
                if let Some(v) = new.get(key) {
                    o.insert(key.into(), v.clone());
                }
            }
        }
        Ok(())
    }
}

/// The amount of `name` in `m`, in milli-units.
fn amount(m: Option<&BTreeMap<String, Quantity>>, name: &str) -> Option<(u128, String)> {
    let q = m?.get(name)?;
    Some((milli(q)?, q.0.clone()))
}

/// What one container (or a pod's sum) breaks of `item`, in kube-apiserver's words.
fn check(
    item: &LimitRangeItem,
    kind: &str,
    requests: Option<&BTreeMap<String, Quantity>>,
    limits: Option<&BTreeMap<String, Quantity>>,
    errs: &mut Vec<String>,
) {
    for (name, min) in item.min.iter().flatten() {
        let Some(m) = milli(min) else { continue };
        match amount(requests, name) {
            Some((r, shown)) if r < m => errs.push(format!(
                "minimum {name} usage per {kind} is {}, but request is {shown}",
                min.0
            )),
            None => errs.push(format!(
                "minimum {name} usage per {kind} is {}.  No request is specified",
                min.0
            )),
            _ => {}
        }
    }
    for (name, max) in item.max.iter().flatten() {
        let Some(m) = milli(max) else { continue };
        match amount(limits, name) {
            Some((l, shown)) if l > m => errs.push(format!(
                "maximum {name} usage per {kind} is {}, but limit is {shown}",
                max.0
            )),
            None => errs.push(format!(
                "maximum {name} usage per {kind} is {}.  No limit is specified",
                max.0
            )),
            _ => {}
        }
    }
    for (name, ratio) in item.max_limit_request_ratio.iter().flatten() {
        let (Some(ratio_m), Some((l, _)), Some((r, _))) =
            (milli(ratio), amount(limits, name), amount(requests, name))
        else {
            continue;
        };
        if r > 0 && l * 1000 > ratio_m * r {
            errs.push(format!(
                "{name} max limit to request ratio per {kind} is {}, but provided ratio is {:.6}",
                ratio.0,
                l as f64 / r as f64
            ));
        }
    }
}

fn sum(cs: &[Container], limits: bool) -> BTreeMap<String, Quantity> {
    wasmkube_api::quota::sum(cs, limits)
        .into_iter()
        .map(|(n, v)| {
            let shown = wasmkube_api::quota::format(&n, v);
            (n, Quantity(shown))
        })
        .collect()
}

#[async_trait::async_trait]
impl Validating for LimitRanger {
    fn handles(&self, req: &Request<'_>) -> bool {
        handles(req)
    }

    async fn validate(&self, req: &Request<'_>, obj: Option<&Value>) -> Result<(), ApiError> {
        let ns = req.namespace.unwrap_or_default();
        let (containers, pods) = (self.items(ns, "Container"), self.items(ns, "Pod"));
        if containers.is_empty() && pods.is_empty() {
            return Ok(());
        }
        let Some(pod) = obj.and_then(|o| serde_json::from_value::<Pod>(o.clone()).ok()) else {
            return Ok(());
        };
        let spec = pod.spec.unwrap_or_default();
        let mut errs = Vec::new();
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            for item in &containers {
                check(
                    item,
                    "Container",
                    stated(c, false),
                    stated(c, true),
                    &mut errs,
                );
            }
        }
        if !pods.is_empty() {
            let (requests, limits) = (sum(&spec.containers, false), sum(&spec.containers, true));
            for item in &pods {
                check(item, "Pod", Some(&requests), Some(&limits), &mut errs);
            }
        }
        if errs.is_empty() {
            return Ok(());
        }
        let why = if errs.len() == 1 {
            errs.remove(0)
        } else {
            format!("[{}]", errs.join(", "))
        };
        Err(ApiError::forbidden(req.info, req.name, &why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_container_outside_its_range_should_be_refused_in_kubernetes_words() {
        let item: LimitRangeItem = serde_json::from_value(json!({"type": "Container",
            "min": {"cpu": "100m"}, "max": {"memory": "1Gi"}, "maxLimitRequestRatio": {"cpu": "2"}}))
        .expect("item");
        let q = |v: Value| -> BTreeMap<String, Quantity> {
            serde_json::from_value(v).expect("amounts")
        };
        let mut errs = Vec::new();
        check(
            &item,
            "Container",
            Some(&q(json!({"cpu": "50m"}))),
            Some(&q(json!({"memory": "2Gi", "cpu": "400m"}))),
            &mut errs,
        );
        assert_eq!(
            errs,
            [
                "minimum cpu usage per Container is 100m, but request is 50m",
                "maximum memory usage per Container is 1Gi, but limit is 2Gi",
                "cpu max limit to request ratio per Container is 2, but provided ratio is 8.000000",
            ]
        );
        let mut errs = Vec::new();
        check(&item, "Container", None, None, &mut errs);
        assert_eq!(errs.len(), 2, "{errs:?}");
    }
}
