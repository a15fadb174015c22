//! Pod networking: address allocation in the API server (cluster IPs, node ports, node pod
//! ranges), and traffic between wasm pods through the wasmlet's network namespace.

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use wasmkube_tests::Cluster;

fn service(name: &str, spec: serde_json::Value) -> Result<Service> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

#[tokio::test]
async fn services_and_nodes_should_get_addresses_from_their_ranges() -> Result<()> {
    let cluster = Cluster::start().await?;
    let svcs: Api<Service> = Api::default_namespaced(cluster.client.clone());
    let pp = PostParams::default();
    let web = svcs
        .create(
            &pp,
            &service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
            )?,
        )
        .await?;
    let spec = web.spec.clone().unwrap_or_default();
    let ip: std::net::Ipv4Addr = spec.cluster_ip.as_deref().unwrap_or_default().parse()?;
    ensure!(
        "10.96.0.0/12".parse::<ipnet::Ipv4Net>()?.contains(&ip),
        "clusterIP {ip} from the service CIDR"
    );
    ensure!(spec.cluster_ips == Some(vec![ip.to_string()]));
    ensure!(spec.ip_families == Some(vec!["IPv4".to_string()]));

    // A fixed address in the static band, then the same address again: 422 naming the field.
    let dns = svcs
        .create(
            &pp,
            &service(
                "dns",
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}),
            )?,
        )
        .await?;
    ensure!(dns.spec.and_then(|s| s.cluster_ip).as_deref() == Some("10.96.0.10"));
    let taken = svcs
        .create(
            &pp,
            &service(
                "dns2",
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}),
            )?,
        )
        .await;
    match taken {
        Err(kube::Error::Api(e)) => ensure!(
            e.code == 422
                && e.message.contains("spec.clusterIPs")
                && e.message.contains("already allocated"),
            "{e:?}"
        ),
        other => anyhow::bail!("a taken clusterIP was accepted: {other:?}"),
    }
    let outside = svcs
        .create(
            &pp,
            &service(
                "far",
                json!({"clusterIP": "192.168.0.1", "ports": [{"port": 53}]}),
            )?,
        )
        .await;
    ensure!(
        matches!(&outside, Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains("not in the valid range")),
        "{outside:?}"
    );

    // Headless keeps None; NodePort gets a port from the range, kept across a replace.
    let headless = svcs
        .create(
            &pp,
            &service(
                "db",
                json!({"clusterIP": "None", "ports": [{"port": 5432}]}),
            )?,
        )
        .await?;
    ensure!(headless.spec.and_then(|s| s.cluster_ips) == Some(vec!["None".to_string()]));
    let np = svcs
        .create(
            &pp,
            &service(
                "np",
                json!({"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80}]}),
            )?,
        )
        .await?;
    let port = np
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p[0].node_port);
    ensure!(
        port.is_some_and(|p| (30000..=32767).contains(&p)),
        "{port:?}"
    );
    let mut again = np.clone();
    if let Some(p) = again.spec.as_mut().and_then(|s| s.ports.as_mut()) {
        p[0].node_port = None;
    }
    again.spec.as_mut().expect("spec").cluster_ip = None;
    let replaced = svcs.replace("np", &pp, &again).await?;
    ensure!(
        replaced
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p[0].node_port)
            == port,
        "a replace without nodePort keeps it"
    );
    ensure!(replaced.spec.and_then(|s| s.cluster_ip) == np.spec.and_then(|s| s.cluster_ip));
    let clash = svcs
        .create(
            &pp,
            &service(
                "np2",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}),
            )?,
        )
        .await;
    ensure!(
        matches!(&clash, Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains("spec.ports[0].nodePort")),
        "{clash:?}"
    );
    // Back to ClusterIP frees the port for someone else.
    svcs.patch(
        "np",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
    )
    .await?;
    svcs.create(
        &pp,
        &service(
            "np2",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}),
        )?,
    )
    .await?;
    // Deleting a Service frees its address.
    svcs.delete("dns", &DeleteParams::default()).await?;
    svcs.create(
        &pp,
        &service(
            "dns2",
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}),
        )?,
    )
    .await?;

    // Nodes get distinct /24s from the cluster CIDR and keep them.
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let mut cidrs = Vec::new();
    for n in ["n1", "n2"] {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": n}}))?;
        let made = nodes.create(&pp, &node).await?;
        cidrs.push(made.spec.and_then(|s| s.pod_cidr).unwrap_or_default());
    }
    ensure!(
        cidrs[0] != cidrs[1] && cidrs.iter().all(|c| c.starts_with("10.244.")),
        "{cidrs:?}"
    );
    let mut n1 = nodes.get("n1").await?;
    n1.spec.as_mut().expect("spec").pod_cidr = None;
    n1.spec.as_mut().expect("spec").pod_cidrs = None;
    let n1 = nodes.replace("n1", &pp, &n1).await?;
    ensure!(n1.spec.and_then(|s| s.pod_cidr).as_deref() == Some(cidrs[0].as_str()));
    cluster.stop().await
}
