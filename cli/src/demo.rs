//! `wasmkube up --demo`: push the sample programs into the cluster registry and run their
//! manifests, then say what to try.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};

/// Pushes every sample as `NAME:v1` and creates the sample pods (the scheduler places them).
pub(crate) async fn run(kubeconfig: &Path) -> anyhow::Result<()> {
    let kc = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let registries = wasmkube_wasmlet::registries_for(&kc, Vec::new());
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
    let client = Client::try_from(kc)?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
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
    // Give the HTTP sample a moment to come up so the printed URL works at once.
    let ip = wait_for_ip(&pods, "http-hello").await;
    println!();
    println!("Samples deployed. Try:");
    println!("  kubectl get pods -o wide");
    println!("  kubectl logs hello");
    println!("  kubectl logs -f cpuspin");
    println!("  kubectl logs shared-volume -c consumer -f");
    println!("  kubectl describe pod memhog         # OOMKilled");
    println!("  kubectl get pod crashloop -w        # CrashLoopBackOff");
    if let Some(ip) = ip {
        println!("  curl http://{ip}:8080/hello        # the wasi:http sample");
    }
    Ok(())
}

async fn wait_for_ip(pods: &Api<Pod>, name: &str) -> Option<String> {
    let has_ip = |p: Option<&Pod>| p.and_then(|p| p.status.as_ref()?.pod_ip.as_ref()).is_some();
    let wait = kube::runtime::wait::await_condition(pods.clone(), name, has_ip);
    let pod = tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .ok()?
        .ok()??;
    pod.status?.pod_ip
}
