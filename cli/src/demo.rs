//! `wasmkube up --demo`: push the sample programs into the cluster registry and run their
//! manifests, then say what to try.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::PostParams;
use kube::{Api, Client};
use wasmkube_client::create_from_json;

/// Pushes every sample as `NAME:v1` and creates the sample pods (the scheduler places them).
pub(crate) async fn run(kubeconfig: &Path) -> anyhow::Result<()> {
    let conn = wasmkube_client::connect(&wasmkube_client::Source::kubeconfig(kubeconfig)).await?;
    let registries = wasmkube_wasmlet::registries_for(&conn.config, Vec::new());
    for guest in wasmkube_samples::GUESTS {
        let image = format!("{}:v1", guest.name);
        wasmkube_wasmlet::images::push(&registries, &image, guest.wasm.to_vec())
            .await
            .with_context(|| format!("pushing {image}"))?;
        eprintln!(
            "pushed {image} ({:.1} KiB)",
            guest.wasm.len() as f64 / 1024.0
        );
    }
    let client = conn.client;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (file, yaml) in wasmkube_samples::MANIFESTS {
        let pod: Pod = serde_saphyr::from_str(yaml).with_context(|| format!("parsing {file}"))?;
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => eprintln!(
                "created pod/{}",
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("creating {file}")),
        }
    }
    for (file, yaml) in [wasmkube_samples::MULTI_TIER, wasmkube_samples::FUNCTION] {
        create_documents(&client, file, yaml).await?;
    }
    let ready = wait_for_frontend(&client).await;
    println!();
    println!("Samples deployed. Try:");
    println!("  kubectl get pods,svc,ingress -o wide");
    println!("  kubectl logs hello");
    println!("  kubectl logs -f cpuspin");
    println!("  kubectl logs shared-volume -c consumer -f");
    println!("  kubectl logs duo -c sidecar            # two containers over localhost");
    println!("  kubectl describe pod memhog         # OOMKilled");
    println!("  kubectl get pod crashloop -w        # CrashLoopBackOff");
    println!("  curl http://127.0.0.1:30080/        # NodePort: frontend -> backend by DNS name");
    println!("  curl http://127.0.0.1:8080/hello    # Ingress: one port, many wasi:http functions");
    println!(
        "  kubectl get deploy fn               # the function idles at 0 pods (autoscaler, minReplicas 0)"
    );
    println!(
        "  curl -i -H 'Host: fn.localhost' http://127.0.0.1:8080/   # woken: X-Wasmkube-Cold-Start"
    );
    println!("  kubectl top pods; kubectl get hpa   # resource metrics, autoscalers");
    if !ready {
        println!("  (the frontend is still starting; the URLs answer in a moment)");
    }
    Ok(())
}

/// Waits (briefly) until the frontend Service has a ready endpoint, so the URLs work at once.
async fn wait_for_frontend(client: &Client) -> bool {
    use futures::{StreamExt, TryStreamExt};
    use kube::runtime::WatchStreamExt;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let cfg =
        kube::runtime::watcher::Config::default().labels("kubernetes.io/service-name=frontend");
    let mut ready = kube::runtime::watcher(slices, cfg)
        .applied_objects()
        .try_filter(|s| {
            let ok = s
                .endpoints
                .iter()
                .any(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true));
            futures::future::ready(ok)
        })
        .boxed();
    matches!(
        tokio::time::timeout(Duration::from_secs(10), ready.try_next()).await,
        Ok(Ok(Some(_)))
    )
}

/// Creates every document of a multi-document sample (kept as it is when it exists).
async fn create_documents(client: &Client, file: &str, yaml: &str) -> anyhow::Result<()> {
    for doc in yaml.split("\n---\n") {
        let obj: serde_json::Value =
            serde_saphyr::from_str(doc).with_context(|| format!("parsing {file}"))?;
        let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let created = match kind.as_str() {
            "Deployment" => create_from_json::<Deployment>(client, "default", obj)
                .await
                .map(drop),
            "Service" => create_from_json::<Service>(client, "default", obj)
                .await
                .map(drop),
            "Ingress" => create_from_json::<Ingress>(client, "default", obj)
                .await
                .map(drop),
            "Pod" => create_from_json::<Pod>(client, "default", obj)
                .await
                .map(drop),
            "HorizontalPodAutoscaler" => create_from_json::<
                k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler,
            >(client, "default", obj)
            .await
            .map(drop),
            other => anyhow::bail!("{file}: unexpected kind {other}"),
        };
        match created {
            // Left from an earlier demo: kept as it is.
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating {kind}/{name} from {file}"));
            }
        }
        eprintln!("created {}/{name}", kind.to_lowercase());
    }
    Ok(())
}
