//! The `default/kubernetes` Service, its Endpoints and EndpointSlices, which list every API
//! server of the cluster, as kube-apiserver's bootstrap controller and endpoint reconcilers
//! keep them. Pods reach the API through the Service (the proxy reads the slices: one per API
//! port, `kubernetes` for the first, `kubernetes-PORT` for others); components (through the
//! client crate) learn the list of servers to fail over between from the Endpoints.
//!
//! The server whose store leads the raft group reconciles (one writer, no fights): every few
//! seconds it compares the Endpoints with the membership's API addresses and writes the
//! difference.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Apiserver;
use crate::request::{Params, Target};

const NAME: &str = "kubernetes";

/// How often the leader's server compares the Endpoints with the membership.
const EVERY: Duration = Duration::from_secs(5);

fn target(api: &Apiserver, group: &str, plural: &str) -> Target {
    Target {
        kind: api
            .registry
            .get(group, "v1", plural)
            .expect("built-in kinds are served")
            .clone(),
        namespace: Some("default".into()),
        name: Some(NAME.into()),
        subresource: None,
        watch_path: false,
    }
}

/// The EndpointSlices (name → object) for these Endpoints subsets: one per port.
fn slices(subsets: &Value) -> Vec<(String, Value)> {
    subsets
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, subset)| {
            let port = subset["ports"][0]["port"].as_u64().unwrap_or_default();
            let name = if i == 0 {
                NAME.to_owned()
            } else {
                format!("{NAME}-{port}")
            };
            let endpoints: Vec<Value> = subset["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| json!({"addresses": [a["ip"]], "conditions": {"ready": true}}))
                .collect();
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": "default",
                             "labels": {"kubernetes.io/service-name": NAME,
                                        "endpointslice.kubernetes.io/managed-by": "kube-apiserver"}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": subset["ports"],
            });
            (name, slice)
        })
        .collect()
}

/// Makes the object `want` names hold `want`'s `fields`: creates it, or updates those fields.
async fn ensure(
    api: &Apiserver,
    mut t: Target,
    name: &str,
    want: Value,
    fields: &[&str],
) -> Result<(), crate::ApiError> {
    t.name = Some(name.to_owned());
    match api.load(&t, name).await {
        Ok(cur) if fields.iter().all(|f| cur.value.get(*f) == want.get(*f)) => Ok(()),
        Ok(cur) => {
            let mut new = cur.value.clone();
            for f in fields {
                new[*f] = want[*f].clone();
            }
            api.commit_update(&t, &Params::internal(), &cur, new)
                .await?;
            tracing::info!(
                kind = t.kind.info().kind,
                name,
                "the API servers' endpoints changed"
            );
            Ok(())
        }
        Err(e) if e.code == 404 => match api
            .create_object(&t, &Params::internal(), want, "Update")
            .await
        {
            Err(e) if e.code != 409 => Err(e),
            _ => Ok(()),
        },
        Err(e) => Err(e),
    }
}

/// The Endpoints subsets for these API server URLs: one subset per port, addresses sorted.
fn subsets(urls: &[String]) -> Value {
    let mut by_port: std::collections::BTreeMap<u16, std::collections::BTreeSet<String>> =
        Default::default();
    for url in urls {
        if let Ok(uri) = url.parse::<http::Uri>()
            && let (Some(host), Some(port)) = (uri.host(), uri.port_u16())
        {
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            if ip.parse::<std::net::IpAddr>().is_ok() {
                by_port.entry(port).or_default().insert(ip.to_owned());
            }
        }
    }
    Value::Array(
        by_port
            .into_iter()
            .map(|(port, ips)| {
                json!({
                    "addresses": ips.into_iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                    "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
                })
            })
            .collect(),
    )
}

/// One reconciliation: the Service exists (at `cluster_ip`, the service range's first
/// address, as in Kubernetes, or any when that is taken), the Endpoints list `urls`.
async fn reconcile(
    api: &Apiserver,
    urls: &[String],
    cluster_ip: std::net::Ipv4Addr,
) -> Result<(), crate::ApiError> {
    let want = subsets(urls);
    let Some(first_port) = want.pointer("/0/ports/0/port").and_then(Value::as_u64) else {
        return Ok(());
    };
    let service = target(api, "", "services");
    match api.load(&service, NAME).await {
        Ok(_) => {}
        Err(e) if e.code == 404 => {
            let mut svc = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": NAME, "namespace": "default",
                             "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"type": "ClusterIP", "sessionAffinity": "None",
                         "clusterIP": cluster_ip.to_string(),
                         "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                    "targetPort": first_port}]},
            });
            let mut created = api
                .create_object(&service, &Params::internal(), svc.clone(), "Update")
                .await;
            if matches!(&created, Err(e) if e.code == 422) {
                // The first address went to a Service made before this one: take any.
                svc["spec"]
                    .as_object_mut()
                    .expect("spec is an object")
                    .remove("clusterIP");
                created = api
                    .create_object(&service, &Params::internal(), svc, "Update")
                    .await;
            }
            match created {
                Ok(_) => tracing::info!("created the default/kubernetes Service"),
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    }
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": NAME, "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": want,
    });
    ensure(
        api,
        target(api, "", "endpoints"),
        NAME,
        endpoints,
        &["subsets"],
    )
    .await?;
    let slices = slices(&want);
    let t = target(api, "discovery.k8s.io", "endpointslices");
    for (name, slice) in &slices {
        ensure(api, t.clone(), name, slice.clone(), &["endpoints", "ports"]).await?;
    }
    // Slices of ports no server listens on any more go.
    let prefix = api.key(&t, NAME);
    for kv in api.store.list(&prefix, Default::default()).await?.items {
        let name = kv.key.rsplit('/').next().unwrap_or_default();
        if (name == NAME || name.starts_with(&format!("{NAME}-")))
            && !slices.iter().any(|(n, _)| n == name)
        {
            api.store
                .write(wasmkube_store::Command::Delete {
                    key: kv.key.clone(),
                    precondition: wasmkube_store::Precondition::Revision(kv.revision),
                })
                .await?;
        }
    }
    Ok(())
}

/// Keeps the Service and Endpoints until `shutdown`, while this server's store leads.
pub(crate) async fn run(
    api: Arc<Apiserver>,
    cluster_ip: std::net::Ipv4Addr,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if api.store.leads() {
            let urls: Vec<String> = api
                .store
                .members_here()
                .into_iter()
                .map(|m| m.api)
                .filter(|a| !a.is_empty())
                .collect();
            if let Err(e) = reconcile(&api, &urls, cluster_ip).await {
                tracing::debug!(error = %e, "reconciling default/kubernetes");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_port_should_get_its_own_slice() {
        let s = slices(&subsets(&[
            "https://127.0.0.1:6444".into(),
            "https://127.0.0.1:6443".into(),
            "https://127.0.0.2:6443".into(),
        ]));
        let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["kubernetes", "kubernetes-6444"]);
        assert_eq!(
            s[0].1["endpoints"],
            json!([{"addresses": ["127.0.0.1"], "conditions": {"ready": true}},
                   {"addresses": ["127.0.0.2"], "conditions": {"ready": true}}])
        );
        assert_eq!(
            s[1].1["ports"],
            json!([{"name": "https", "port": 6444, "protocol": "TCP"}])
        );
        assert_eq!(
            s[0].1["metadata"]["labels"]["kubernetes.io/service-name"],
            "kubernetes"
        );
    }

    #[test]
    fn subsets_should_group_servers_by_port() {
        let s = subsets(&[
            "https://127.0.0.1:6444".into(),
            "https://127.0.0.2:6443".into(),
            "https://127.0.0.1:6443".into(),
            "https://[::1]:6443".into(),
            "https://not-an-ip:6443".into(),
        ]);
        assert_eq!(
            s,
            json!([
                {"addresses": [{"ip": "127.0.0.1"}, {"ip": "127.0.0.2"}, {"ip": "::1"}],
                 "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]},
                {"addresses": [{"ip": "127.0.0.1"}],
                 "ports": [{"name": "https", "port": 6444, "protocol": "TCP"}]},
            ])
        );
    }
}
