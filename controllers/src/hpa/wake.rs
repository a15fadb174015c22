//! Scale from zero: a ScaleFromZero Event asks an autoscaler for a replica, which is written
//! at once; Services an autoscaler may take to zero are marked so nodes hold their requests,
//! and unmarked when none may any more.

use super::*;

/// Where a request for a replica from zero stands when the autoscaler's reconcile comes.
#[derive(Clone)]
pub(super) enum Wake {
    /// The Event arrived; nothing was written for it.
    Asked,
    /// The target is being scaled from zero as the Event arrived, without waiting for the
    /// controller's queue; this resolves to whether that write applied.
    Waking(futures::future::Shared<futures::future::BoxFuture<'static, bool>>),
}

/// How long (seconds) a node holds a request for a Service at zero pods: a ScaleFromZero
/// Event older than that asks for nothing any more.
pub(super) const HELD_FOR: i64 = 30;

/// Whether Service `ns/service` should be held for at zero pods: an autoscaler of its
/// namespace with `minReplicas: 0` has an Object metric of it.
pub(super) fn wants_hold(hpas: &[Arc<Hpa>], ns: &str, service: &str) -> bool {
    hpas.iter()
        .filter(|h| h.namespace().as_deref() == Some(ns))
        .filter(|h| h.spec.as_ref().and_then(|s| s.min_replicas) == Some(0))
        .any(|h| object_services(h).any(|s| s == service))
}

/// Takes the scale-from-zero mark off Services no autoscaler may take to zero any more (it
/// was deleted, or its `minReplicas` raised), every sync period: nodes then refuse their
/// requests at once when they have no endpoint, instead of holding them.
pub(super) async fn sweep(ctx: Arc<Ctx>, hpas: Store<Hpa>, shutdown: CancellationToken) {
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::all(ctx.client.clone());
    let mut every = tokio::time::interval(ctx.sync_period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if hpas.wait_until_ready().await.is_err() {
            return;
        }
        let Ok(list) = services.list(&ListParams::default()).await else {
            continue;
        };
        let state = hpas.state();
        for svc in list.items {
            let marked = svc
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(SCALE_FROM_ZERO));
            let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
            if !marked || wants_hold(&state, &ns, &name) {
                continue;
            }
            let api: Api<k8s_openapi::api::core::v1::Service> =
                Api::namespaced(ctx.client.clone(), &ns);
            let patch = json!({"metadata": {"annotations": {SCALE_FROM_ZERO: null}}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    ctx.marked
                        .lock()
                        .expect("marked lock")
                        .remove(&(ns.clone(), name.clone()));
                    tracing::info!(namespace = %ns, service = %name, "no autoscaler takes it to zero any more: requests are no longer held");
                }
                Err(e) => {
                    tracing::debug!(%ns, service = %name, error = %e, "cannot unmark a Service")
                }
            }
        }
    }
}

/// The Services an autoscaler's Object metrics describe.
pub(super) fn object_services(hpa: &Hpa) -> impl Iterator<Item = &str> {
    hpa.spec
        .iter()
        .flat_map(|s| s.metrics.iter().flatten())
        .filter_map(|m| m.object.as_ref())
        .filter(|o| o.described_object.kind == "Service")
        .map(|o| o.described_object.name.as_str())
}

impl Ctx {
    /// Whether a ScaleFromZero Event asked for a replica of autoscaler `key` (forgotten once
    /// asked), and whether it was given.
    pub(super) fn take_woken(&self, key: &str) -> Option<Wake> {
        self.woken.lock().expect("woken lock").remove(key)
    }

    /// A ScaleFromZero Event asks `hpa` for a replica: its target is scaled from zero at once
    /// (the same one write its reconcile would make), from the watch's mapper, without waiting
    /// for the reconcile to be handed over and to get that far.
    pub(super) fn ask_wake(self: &Arc<Self>, hpa: &Hpa) {
        use futures::FutureExt;
        let ns = hpa.namespace().unwrap_or_default();
        let key = format!("{ns}/{}", hpa.name_any());
        let mut woken = self.woken.lock().expect("woken lock");
        if matches!(woken.get(&key), Some(Wake::Waking(_))) {
            return;
        }
        let Some(spec) = hpa.spec.clone().filter(|s| s.min_replicas == Some(0)) else {
            woken.insert(key, Wake::Asked);
            return;
        };
        let ctx = Arc::clone(self);
        let hpa_key = key.clone();
        let task =
            tokio::spawn(async move { ctx.wake(&hpa_key, &ns, &spec.scale_target_ref).await });
        woken.insert(
            key,
            Wake::Waking(async move { task.await.unwrap_or(false) }.boxed().shared()),
        );
    }

    /// Annotates Service `ns/service` for scale from zero ([`SCALE_FROM_ZERO`], naming the
    /// autoscaler), once.
    pub(super) async fn mark_scale_from_zero(&self, ns: &str, service: &str, hpa: &str) {
        let key = (ns.to_owned(), service.to_owned());
        if self.marked.lock().expect("marked lock").contains(&key) {
            return;
        }
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(self.client.clone(), ns);
        let patch = json!({"metadata": {"annotations": {SCALE_FROM_ZERO: hpa}}});
        match services
            .patch(service, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.marked.lock().expect("marked lock").insert(key);
            }
            Err(e) => {
                tracing::debug!(%ns, %service, error = %e, "cannot mark a Service for scale from zero")
            }
        }
    }

    /// Scales the target of autoscaler `key` from zero to one replica in one write that
    /// applies only while it is at zero (a JSON Patch `test` on the scale); whether it applied
    /// (not when the target was not at zero, nor when the write failed: the reconcile then
    /// scales as usual).
    pub(super) async fn wake(
        &self,
        key: &str,
        ns: &str,
        target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
    ) -> bool {
        tracing::debug!(target: "podtrace", kind = "HorizontalPodAutoscaler", object = %key, stage = "waking");
        let ops: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/spec/replicas", "value": 0},
            {"op": "replace", "path": "/spec/replicas", "value": 1}
        ]))
        .expect("a constant JSON Patch");
        let written = match self.scale_api(ns, target).await {
            Ok(api) => api
                .patch_scale(
                    &target.name,
                    &PatchParams::default(),
                    &Patch::<()>::Json(ops),
                )
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match written {
            Ok(_) => true,
            Err(e) => {
                // 422/409: not at zero (the test failed), or changed meanwhile.
                tracing::debug!(hpa = %key, error = %e, "did not scale from zero at once");
                false
            }
        }
    }
}
