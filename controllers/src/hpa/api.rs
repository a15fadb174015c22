//! What the controller reads and writes besides its own objects: the target's `scale`
//! subresource (any kind, found through discovery) and the metrics APIs.

use super::*;

/// What the controller reads of a `scale` subresource.
pub(super) struct ScaleView {
    pub(super) spec_replicas: i32,
    pub(super) status_replicas: i32,
    pub(super) selector: String,
}

impl Ctx {
    /// The API of the kind `target` names, found through discovery (any kind with a `scale`
    /// subresource, custom resources too), remembered per kind.
    pub(super) async fn scale_api(
        &self,
        ns: &str,
        target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
    ) -> Result<Api<kube::api::DynamicObject>, String> {
        let api_version = target
            .api_version
            .clone()
            .unwrap_or_else(|| "apps/v1".into());
        let key = (api_version.clone(), target.kind.clone());
        let known = self.kinds.lock().expect("kinds lock").get(&key).cloned();
        let resource = match known {
            Some(r) => r,
            None => {
                let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
                let gvk = kube::api::GroupVersionKind::gvk(group, version, &target.kind);
                let (r, _) = kube::discovery::pinned_kind(&self.client, &gvk)
                    .await
                    .map_err(|e| format!("{} {api_version}: {e}", target.kind))?;
                self.kinds
                    .lock()
                    .expect("kinds lock")
                    .insert(key, r.clone());
                r
            }
        };
        Ok(Api::namespaced_with(self.client.clone(), ns, &resource))
    }

    pub(super) async fn scale_of(
        &self,
        ns: &str,
        target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
    ) -> Result<ScaleView, String> {
        let scale = self
            .scale_api(ns, target)
            .await?
            .get_scale(&target.name)
            .await
            .map_err(|e| e.to_string())?;
        let status = scale.status.unwrap_or_default();
        Ok(ScaleView {
            spec_replicas: scale.spec.and_then(|s| s.replicas).unwrap_or(0),
            status_replicas: status.replicas,
            selector: status.selector.unwrap_or_default(),
        })
    }

    pub(super) async fn set_scale(
        &self,
        ns: &str,
        target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
        replicas: i32,
    ) -> Result<(), String> {
        self.scale_api(ns, target)
            .await?
            .patch_scale(
                &target.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// A custom metric: `namespaces/{ns}/{resource}/{name}/{metric}` of custom.metrics.k8s.io.
    pub(super) async fn custom(
        &self,
        ns: &str,
        resource: &str,
        name: &str,
        metric: &str,
        selector: Option<&str>,
    ) -> Result<wasmkube_api::metrics::MetricValueList, String> {
        let mut path = format!(
            "/apis/{}/namespaces/{ns}/{resource}/{name}/{metric}",
            wasmkube_api::metrics::CUSTOM_GROUP_VERSION
        );
        if let Some(sel) = selector.filter(|s| !s.is_empty()) {
            let q =
                serde_urlencoded::to_string([("labelSelector", sel)]).map_err(|e| e.to_string())?;
            path = format!("{path}?{q}");
        }
        let req = http::Request::get(&path)
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        self.client
            .request::<wasmkube_api::metrics::MetricValueList>(req)
            .await
            .map_err(|e| e.to_string())
    }

    pub(super) async fn external(
        &self,
        ns: &str,
        metric: &str,
        selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    ) -> Result<Vec<wasmkube_api::metrics::ExternalMetricValue>, String> {
        let mut path = format!(
            "/apis/{}/namespaces/{ns}/{metric}",
            wasmkube_api::metrics::EXTERNAL_GROUP_VERSION
        );
        if let Some(sel) = selector {
            let sel = kube::core::Selector::try_from(sel.clone()).map_err(|e| e.0)?;
            if !sel.selects_all() {
                let q = serde_urlencoded::to_string([("labelSelector", sel.to_string())])
                    .map_err(|e| e.to_string())?;
                path = format!("{path}?{q}");
            }
        }
        let req = http::Request::get(&path)
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        self.client
            .request::<wasmkube_api::metrics::ExternalMetricValueList>(req)
            .await
            .map(|l| l.items)
            .map_err(|e| e.to_string())
    }

    pub(super) async fn pod_metrics(
        &self,
        ns: &str,
        selector: &str,
    ) -> Result<Vec<PodMetrics>, String> {
        let api: Api<PodMetrics> = Api::namespaced(self.client.clone(), ns);
        api.list(&ListParams::default().labels(selector))
            .await
            .map(|l| l.items)
            .map_err(|e| e.to_string())
    }
}
