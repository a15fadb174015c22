//! Pod networking: address allocation in the API server (cluster IPs, node ports, node pod
//! ranges), and traffic between wasm pods through the wasmlet's network namespace.

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use wasmkube_tests::{Cluster, http_get};

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

// ---- traffic between pods -------------------------------------------------------------------

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, LogParams};
use wasmkube_tests::{Background, Node as TestNode, wait_for};

const SLOW: Duration = Duration::from_secs(60);

/// A cluster with the control plane, the cluster DNS and wasmlets using it.
struct Net {
    cluster: Cluster,
    dns: SocketAddr,
    nodes: Vec<TestNode>,
    _dns: Background,
}

async fn net_cluster(nodes: &[&str]) -> Result<Net> {
    let cluster = Cluster::start_with_control_plane().await?;
    let (dns, guard) = cluster.start_dns().await?;
    let mut started = Vec::new();
    for n in nodes {
        started.push(
            cluster
                .start_node_with(n, |c| c.cluster_dns = Some(dns))
                .await?,
        );
    }
    Ok(Net {
        cluster,
        dns,
        nodes: started,
        _dns: guard,
    })
}

impl Net {
    fn pods(&self) -> Api<Pod> {
        Api::default_namespaced(self.cluster.client.clone())
    }

    async fn pod(
        &self,
        name: &str,
        labels: serde_json::Value,
        spec: serde_json::Value,
    ) -> Result<()> {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels}, "spec": spec,
        }))?;
        self.pods().create(&PostParams::default(), &pod).await?;
        Ok(())
    }

    async fn running(&self, name: &str) -> Result<Pod> {
        let pods = self.pods();
        wait_for(&format!("pod {name} running with an IP"), SLOW, || async {
            let p = pods.get_opt(name).await.ok().flatten()?;
            let st = p.status.as_ref()?;
            (st.phase.as_deref() == Some("Running") && st.pod_ip.is_some()).then_some(p)
        })
        .await
    }

    /// Runs a one-shot pod to its end; returns (phase, logs).
    async fn run(&self, name: &str, spec: serde_json::Value) -> Result<(String, String)> {
        let mut spec = spec;
        spec["restartPolicy"] = json!("Never");
        self.pod(name, json!({}), spec).await?;
        let pods = self.pods();
        let phase = wait_for(&format!("pod {name} to finish"), SLOW, || async {
            let p = pods.get_opt(name).await.ok().flatten()?;
            let phase = p.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        })
        .await?;
        let logs = pods.logs(name, &LogParams::default()).await?;
        Ok((phase, logs))
    }

    /// Waits until the Service's EndpointSlices list `ready` ready endpoints.
    async fn ready_endpoints(&self, service: &str, ready: usize) -> Result<()> {
        wasmkube_tests::wait_ready_endpoints(&self.cluster.client, service, ready).await
    }
}

fn toolbox(image: &str, args: &[&str]) -> serde_json::Value {
    json!({"name": "main", "image": image, "args": args})
}

fn ip_of(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

/// The `local=` addresses in `toolbox serve` replies.
fn locals(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("local=")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn pods_reach_services_by_ip_and_name_with_balancing_and_readiness() -> Result<()> {
    let net = net_cluster(&["n1"]).await?;
    let image = net.cluster.push_sample("toolbox").await?;
    let svcs: Api<Service> = Api::default_namespaced(net.cluster.client.clone());
    let pp = PostParams::default();
    // Three backends behind a named targetPort, with a readiness gate: two on the same port,
    // the third names another port "http" (so it lands in its own EndpointSlice).
    let port_of = |i: usize| if i == 2 { 8081 } else { 8080 };
    for i in 0..3 {
        let port = port_of(i);
        net.pod(
            &format!("backend-{i}"),
            json!({"app": "backend"}),
            json!({
                "readinessGates": [{"conditionType": "wasmkube.test/ready"}],
                "containers": [{"name": "main", "image": image, "args": ["serve", port.to_string()],
                                "ports": [{"name": "http", "containerPort": port}]}],
            }),
        )
        .await?;
    }
    let backends: Vec<Pod> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(net.running(&format!("backend-{i}")).await?);
        }
        v
    };
    let gate = |ok: bool| {
        Patch::Merge(json!({"status": {"conditions": [
            {"type": "wasmkube.test/ready", "status": if ok { "True" } else { "False" }}]}}))
    };
    for i in 0..3 {
        net.pods()
            .patch_status(
                &format!("backend-{i}"),
                &PatchParams::default(),
                &gate(true),
            )
            .await?;
    }
    let backend = svcs
        .create(
            &pp,
            &service(
                "backend",
                json!({"selector": {"app": "backend"}, "ports": [{"port": 80, "targetPort": "http"}]}),
            )?,
        )
        .await?;
    let cluster_ip = backend.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    svcs.create(
        &pp,
        &service(
            "backend-h",
            json!({"clusterIP": "None", "selector": {"app": "backend"},
                   "ports": [{"name": "http", "port": 8080}]}),
        )?,
    )
    .await?;
    svcs.create(
        &pp,
        &service(
            "sticky",
            json!({"selector": {"app": "backend"}, "sessionAffinity": "ClientIP",
                   "ports": [{"port": 80, "targetPort": "http"}]}),
        )?,
    )
    .await?;
    net.ready_endpoints("backend", 3).await?;
    net.ready_endpoints("backend-h", 3).await?;
    net.ready_endpoints("sticky", 3).await?;
    let slices: Api<EndpointSlice> = Api::default_namespaced(net.cluster.client.clone());
    let of_backend = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=backend"))
        .await?
        .items;
    ensure!(
        of_backend.len() == 2,
        "one slice per resolved port set: {:?}",
        of_backend
            .iter()
            .map(|s| (s.metadata.name.clone(), s.ports.clone()))
            .collect::<Vec<_>>()
    );

    let b0 = ip_of(&backends[0]);
    let (phase, log) = net
        .run(
            "client",
            json!({"containers": [toolbox(&image, &[
                "connect-n", "6", "backend:80", "--",
                "connect-n", "1", "backend.default.svc.cluster.local:80", "--",
                "connect-n", "1", &format!("{cluster_ip}:80"), "--",
                "connect-n", "1", "backend-h:8080", "--",
                "connect-n", "1", &format!("{b0}:8080"), "--",
                "connect-n", "4", "sticky:80",
            ])]}),
        )
        .await?;
    ensure!(phase == "Succeeded", "client: {phase}\n{log}");
    let client_ip = ip_of(&net.pods().get("client").await?);
    let got = locals(&log);
    ensure!(got.len() == 14, "{log}");
    ensure!(
        got[10..].iter().all(|l| *l == got[10]),
        "sessionAffinity ClientIP keeps one client on one backend: {log}"
    );
    // Round robin over three ready backends: each answers twice out of six.
    let mut first: Vec<String> = got[..6].to_vec();
    first.sort();
    first.dedup();
    let mut expected: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}:{}", ip_of(p), port_of(i)))
        .collect();
    expected.sort();
    ensure!(first == expected, "spread over {expected:?}: {log}");
    ensure!(
        got[9] == format!("{b0}:8080"),
        "pod IP reaches that pod: {log}"
    );
    ensure!(
        log.lines()
            .filter(|l| l.contains("local="))
            .all(|l| l.contains(&format!("peer={client_ip}:"))),
        "every backend sees the client's pod IP {client_ip}: {log}"
    );

    // Readiness: a backend whose gate goes False gets no new connections.
    net.pods()
        .patch_status("backend-0", &PatchParams::default(), &gate(false))
        .await?;
    net.ready_endpoints("backend", 2).await?;
    let (phase, log) = net
        .run(
            "client2",
            json!({"containers": [toolbox(&image, &["connect-n", "6", "backend:80"])]}),
        )
        .await?;
    ensure!(phase == "Succeeded", "{log}");
    let got = locals(&log);
    ensure!(
        got.len() == 6 && !got.contains(&format!("{b0}:8080")),
        "{log}"
    );

    // Outside the cluster: refused inside the wasmlet, by address and by name.
    let (phase, log) = net
        .run(
            "outside",
            json!({"containers": [toolbox(&image, &["connect", "10.0.0.1:80", "x"])]}),
        )
        .await?;
    ensure!(
        phase == "Failed" && log.contains("Permission denied"),
        "{phase}: {log}"
    );
    let (phase, log) = net
        .run(
            "outside-name",
            json!({"containers": [toolbox(&image, &["connect", "example.com:80", "x"])]}),
        )
        .await?;
    ensure!(
        phase == "Failed" && log.contains("toolbox connect:"),
        "{phase}: {log}"
    );
    net.cluster.stop().await
}

#[tokio::test]
async fn containers_share_localhost_and_localhost_listeners_stay_private() -> Result<()> {
    let net = net_cluster(&["n1"]).await?;
    let image = net.cluster.push_sample("toolbox").await?;
    net.pod(
        "duo",
        json!({}),
        json!({"containers": [
            {"name": "server", "image": image, "args": ["serve", "9000", "127.0.0.1"]},
            {"name": "sidecar", "image": image, "args": ["poll", "127.0.0.1:9000", "300"]},
        ]}),
    )
    .await?;
    let duo = net.running("duo").await?;
    let duo_ip = ip_of(&duo);
    let pods = net.pods();
    let params = LogParams {
        container: Some("sidecar".into()),
        ..Default::default()
    };
    let line = wait_for(
        "the sidecar to reach the server over localhost",
        SLOW,
        || async {
            let log = pods.logs("duo", &params).await.ok()?;
            log.lines()
                .find(|l| l.contains("local="))
                .map(str::to_owned)
        },
    )
    .await?;
    ensure!(
        line.contains(&format!("local={duo_ip}:9000")) && line.contains(&format!("peer={duo_ip}:")),
        "the pod sees its own IP on both ends: {line}"
    );
    let (phase, log) = net
        .run(
            "prober",
            json!({"containers": [toolbox(&image, &["connect", &format!("{duo_ip}:9000"), "x"])]}),
        )
        .await?;
    ensure!(
        phase == "Failed" && log.contains("Connection refused"),
        "a localhost-only listener is not reachable from another pod: {phase}: {log}"
    );
    net.cluster.stop().await
}

#[tokio::test]
async fn traffic_crosses_nodes_through_the_tunnel() -> Result<()> {
    let net = net_cluster(&["n1", "n2"]).await?;
    let image = net.cluster.push_sample("toolbox").await?;
    net.pod(
        "far",
        json!({"app": "far"}),
        json!({"nodeName": "n1", "containers": [
            {"name": "main", "image": image, "args": ["serve", "7070"], "ports": [{"containerPort": 7070}]}]}),
    )
    .await?;
    let far = net.running("far").await?;
    let far_ip = ip_of(&far);
    let svcs: Api<Service> = Api::default_namespaced(net.cluster.client.clone());
    svcs.create(
        &PostParams::default(),
        &service(
            "far",
            json!({"selector": {"app": "far"}, "ports": [{"port": 80, "targetPort": 7070}]}),
        )?,
    )
    .await?;
    net.ready_endpoints("far", 1).await?;
    let (phase, log) = net
        .run(
            "near",
            json!({"nodeName": "n2", "containers": [toolbox(&image, &[
                "connect-n", "1", &format!("{far_ip}:7070"), "--", "connect-n", "1", "far:80"])]}),
        )
        .await?;
    ensure!(phase == "Succeeded", "{phase}: {log}");
    let near = net.pods().get("near").await?;
    let near_ip = ip_of(&near);
    ensure!(near_ip != far_ip && !near_ip.is_empty());
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("local=")).collect();
    ensure!(lines.len() == 2, "{log}");
    for l in lines {
        ensure!(
            l.contains(&format!("local={far_ip}:7070")) && l.contains(&format!("peer={near_ip}:")),
            "the far pod sees the near pod's IP across nodes: {l}"
        );
    }
    drop(net.nodes);
    net.cluster.stop().await
}

// ---- cluster DNS ----------------------------------------------------------------------------

/// A resolver that asks only the cluster DNS, without caching.
pub(crate) fn dns_client(server: SocketAddr) -> Result<hickory_resolver::TokioResolver> {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    let mut ns = NameServerConfig::udp_and_tcp(server.ip());
    for c in &mut ns.connections {
        c.port = server.port();
    }
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.attempts = 1;
    Ok(hickory_resolver::TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], vec![ns]),
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()?)
}

async fn a_records(r: &hickory_resolver::TokioResolver, name: &str) -> Vec<String> {
    let mut ips: Vec<String> = match r.ipv4_lookup(name).await {
        Ok(found) => found
            .answers()
            .iter()
            .filter(|r| r.record_type() == hickory_resolver::proto::rr::RecordType::A)
            .map(|r| r.data.to_string())
            .collect(),
        Err(_) => Vec::new(),
    };
    ips.sort();
    ips
}

/// `dig +short` against the cluster DNS over UDP or TCP, when dig is installed.
async fn dig(server: SocketAddr, name: &str, rtype: &str, tcp: bool) -> Option<String> {
    let mut cmd = tokio::process::Command::new("dig");
    cmd.arg(format!("@{}", server.ip())).args([
        "-p",
        &server.port().to_string(),
        "+short",
        "+time=2",
        "+tries=1",
    ]);
    if tcp {
        cmd.arg("+tcp");
    }
    let out = cmd.args([name, rtype]).output().await.ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test]
async fn cluster_dns_answers_every_record_kind_and_follows_changes() -> Result<()> {
    let net = net_cluster(&["n1"]).await?;
    let image = net.cluster.push_sample("toolbox").await?;
    let svcs: Api<Service> = Api::default_namespaced(net.cluster.client.clone());
    let pp = PostParams::default();
    for i in 0..2 {
        net.pod(
            &format!("db-{i}"),
            json!({"app": "db"}),
            json!({"hostname": format!("db-{i}"), "subdomain": "db",
                   "containers": [{"name": "main", "image": image, "args": ["serve", "5432"],
                                   "ports": [{"name": "pg", "containerPort": 5432}]}]}),
        )
        .await?;
    }
    let db0 = ip_of(&net.running("db-0").await?);
    let db1 = ip_of(&net.running("db-1").await?);
    let web = svcs
        .create(
            &pp,
            &service("web", json!({"selector": {"app": "db"}, "ports": [{"name": "http", "port": 80, "targetPort": 5432}]}))?,
        )
        .await?;
    let web_ip = web.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    svcs.create(
        &pp,
        &service(
            "db",
            json!({"clusterIP": "None", "selector": {"app": "db"},
                              "ports": [{"name": "pg", "port": 5432}]}),
        )?,
    )
    .await?;
    svcs.create(
        &pp,
        &service(
            "ext",
            json!({"type": "ExternalName", "externalName": "example.org"}),
        )?,
    )
    .await?;
    net.ready_endpoints("db", 2).await?;

    let r = dns_client(net.dns)?;
    let zone = "default.svc.cluster.local.";
    let mut both = vec![db0.clone(), db1.clone()];
    both.sort();
    let checks = [
        (format!("web.{zone}"), vec![web_ip.clone()]),
        (format!("db.{zone}"), both.clone()),
        (format!("db-0.db.{zone}"), vec![db0.clone()]),
        (
            format!("{}.default.pod.cluster.local.", db1.replace('.', "-")),
            vec![db1.clone()],
        ),
        (format!("nope.{zone}"), vec![]),
    ];
    for (name, want) in &checks {
        let got = wait_for(&format!("A {name}"), SLOW, || async {
            let got = a_records(&r, name).await;
            (got == *want).then_some(got)
        })
        .await;
        ensure!(
            got.is_ok(),
            "{name}: want {want:?}, got {:?}",
            a_records(&r, name).await
        );
    }
    let srv = r.srv_lookup(format!("_http._tcp.web.{zone}")).await?;
    let srv: Vec<String> = srv.answers().iter().map(|r| r.data.to_string()).collect();
    ensure!(srv == [format!("0 100 80 web.{zone}")], "{srv:?}");
    let srv = r.srv_lookup(format!("_pg._tcp.db.{zone}")).await?;
    let mut srv: Vec<String> = srv.answers().iter().map(|r| r.data.to_string()).collect();
    srv.sort();
    ensure!(
        srv == [
            format!("0 50 5432 db-0.db.{zone}"),
            format!("0 50 5432 db-1.db.{zone}")
        ],
        "{srv:?}"
    );
    let outside = r.ipv4_lookup("example.com.").await;
    ensure!(
        outside.is_err(),
        "names outside the zone are refused: {outside:?}"
    );

    // dig, over UDP and TCP, when it is installed.
    match dig(net.dns, &format!("web.{zone}"), "A", false).await {
        Some(out) => {
            ensure!(out == web_ip, "dig (UDP): {out:?}");
            let out = dig(net.dns, &format!("web.{zone}"), "A", true)
                .await
                .unwrap_or_default();
            ensure!(out == web_ip, "dig +tcp: {out:?}");
            let out = dig(net.dns, &format!("ext.{zone}"), "CNAME", false)
                .await
                .unwrap_or_default();
            ensure!(out == "example.org.", "dig CNAME: {out:?}");
        }
        None => eprintln!("SKIPPED the dig checks: dig is not installed (bind9-dnsutils)"),
    }

    // Answers follow the watch: a deleted Service is gone, a deleted pod leaves the headless set.
    svcs.delete("web", &DeleteParams::default()).await?;
    net.pods().delete("db-1", &DeleteParams::default()).await?;
    wait_for("the deleted Service to stop resolving", SLOW, || async {
        a_records(&r, &format!("web.{zone}"))
            .await
            .is_empty()
            .then_some(())
    })
    .await?;
    wait_for(
        "the headless Service to drop the deleted pod",
        SLOW,
        || async {
            (a_records(&r, &format!("db.{zone}")).await == vec![db0.clone()]).then_some(())
        },
    )
    .await?;

    // Pods resolve names with their namespace's search path.
    let (phase, log) = net
        .run("resolver", json!({"containers": [toolbox(&image, &["connect-n", "1", "db-0.db:5432", "--", "connect-n", "1", "db.default:5432"])]}))
        .await?;
    ensure!(
        phase == "Succeeded" && locals(&log) == [format!("{db0}:5432"), format!("{db0}:5432")],
        "{phase}: {log}"
    );
    net.cluster.stop().await
}

// ---- from the host: NodePort, hostPort, Ingress ------------------------------------------------

#[tokio::test]
async fn node_ports_host_ports_and_ingress_reach_wasm_pods_from_the_host() -> Result<()> {
    let cluster = Cluster::start_with_control_plane().await?;
    let (dns, _dns) = cluster.start_dns().await?;
    let node = cluster
        .start_node_with("n1", |c| {
            c.cluster_dns = Some(dns);
            c.ingress_listen = Some(SocketAddr::new(c.listen.ip(), 0));
        })
        .await?;
    let net = Net {
        cluster,
        dns,
        nodes: Vec::new(),
        _dns,
    };
    let hello = net.cluster.push_sample("http-hello").await?;
    let frontend = net.cluster.push_sample("http-frontend").await?;
    let host_port = wasmkube_tests::free_port();
    for i in 0..3 {
        net.pod(
            &format!("backend-{i}"),
            json!({"app": "backend"}),
            json!({"containers": [{"name": "http", "image": hello,
                                   "ports": [{"name": "http", "containerPort": 8080}]}]}),
        )
        .await?;
    }
    net.pod(
        "frontend",
        json!({"app": "frontend"}),
        json!({"containers": [{"name": "http", "image": frontend,
                               "ports": [{"containerPort": 8080, "hostPort": host_port}]}]}),
    )
    .await?;
    let svcs: Api<Service> = Api::default_namespaced(net.cluster.client.clone());
    let pp = PostParams::default();
    svcs.create(
        &pp,
        &service(
            "backend",
            json!({"selector": {"app": "backend"}, "ports": [{"port": 80, "targetPort": "http"}]}),
        )?,
    )
    .await?;
    let fe = svcs
        .create(
            &pp,
            &service(
                "frontend",
                json!({"type": "NodePort", "selector": {"app": "frontend"}, "ports": [{"port": 80, "targetPort": 8080}]}),
            )?,
        )
        .await?;
    let node_port = fe
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p[0].node_port)
        .context("nodePort")?;
    net.ready_endpoints("backend", 3).await?;
    net.ready_endpoints("frontend", 1).await?;
    let want = "frontend -> backend (200): Hello from wasmkube! GET /from-frontend";

    // NodePort on the node address, from the host.
    let via_node_port = SocketAddr::new(node.address.into(), u16::try_from(node_port)?);
    let (status, body) = wait_for("the NodePort to answer", SLOW, || async {
        http_get(via_node_port, "x", "/")
            .await
            .ok()
            .filter(|(s, _)| *s == 200)
    })
    .await?;
    ensure!(
        status == 200 && body.starts_with(want),
        "NodePort: {status} {body:?}"
    );
    // hostPort.
    let (status, body) =
        http_get(SocketAddr::new(node.address.into(), host_port), "x", "/").await?;
    ensure!(
        status == 200 && body.starts_with(want),
        "hostPort: {status} {body:?}"
    );

    // Ingress: host and path rules in front of both Services.
    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> =
        Api::default_namespaced(net.cluster.client.clone());
    ingresses
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "front-door"},
                "spec": {"ingressClassName": "wasmkube", "rules": [{"host": "fn.example", "http": {"paths": [
                    {"path": "/hello", "pathType": "Prefix",
                     "backend": {"service": {"name": "backend", "port": {"number": 80}}}},
                    {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "frontend", "port": {"number": 80}}}},
                ]}}]},
            }))?,
        )
        .await?;
    let ingress_addr =
        wasmkube_tests::wait_ingress_address(&net.cluster.client, "front-door").await?;
    ensure!(ingress_addr.ip() == std::net::IpAddr::V4(node.address));
    let (status, body) = wait_for("the Ingress to route", SLOW, || async {
        http_get(ingress_addr, "fn.example", "/hello/world")
            .await
            .ok()
            .filter(|(s, _)| *s == 200)
    })
    .await?;
    ensure!(
        status == 200 && body.starts_with("Hello from wasmkube! GET /hello/world"),
        "{body:?}"
    );
    let (status, body) = http_get(ingress_addr, "fn.example", "/").await?;
    ensure!(status == 200 && body.starts_with(want), "{status} {body:?}");
    let (status, _) = http_get(ingress_addr, "elsewhere.example", "/hello").await?;
    ensure!(status == 404, "no rule for the host: {status}");

    // A hostNetwork pod binds on the node's address itself.
    let toolbox_image = net.cluster.push_sample("toolbox").await?;
    let port = wasmkube_tests::free_port();
    net.pod(
        "on-host",
        json!({}),
        json!({"hostNetwork": true, "containers": [toolbox(&toolbox_image, &["serve", &port.to_string()])]}),
    )
    .await?;
    let on_host = net.running("on-host").await?;
    ensure!(
        ip_of(&on_host) == node.address.to_string(),
        "hostNetwork pod IP is the node's"
    );
    let addr = SocketAddr::new(node.address.into(), port);
    let line = wait_for(
        "the hostNetwork pod to listen on the node address",
        SLOW,
        || async {
            use tokio::io::AsyncReadExt;
            let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
            let mut s = String::new();
            conn.read_to_string(&mut s).await.ok()?;
            Some(s)
        },
    )
    .await?;
    ensure!(line.contains(&format!("local={addr}")), "{line}");
    node.stop().await?;
    net.cluster.stop().await
}

#[tokio::test]
async fn the_demo_serves_the_multi_tier_sample_through_node_port_and_ingress() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut up = wasmkube_tests::Process::up_with(
        &dir.path().join("data"),
        wasmkube_tests::free_port(),
        &["--demo"],
    )
    .await?;
    let client = up.client().await?;
    let want = "frontend -> backend (200): Hello from wasmkube! GET /from-frontend";
    let node_port: SocketAddr = "127.0.0.1:30080".parse()?;
    let (_, body) = wait_for("the demo's NodePort to answer", SLOW, || async {
        http_get(node_port, "localhost", "/")
            .await
            .ok()
            .filter(|(s, _)| *s == 200)
    })
    .await?;
    ensure!(body.starts_with(want), "{body:?}");
    let ingress_addr = wasmkube_tests::wait_ingress_address(&client, "front-door").await?;
    let (status, body) = http_get(ingress_addr, "localhost", "/hello/demo").await?;
    ensure!(
        status == 200 && body.starts_with("Hello from wasmkube! GET /hello/demo"),
        "{status} {body:?}"
    );
    let (status, body) = http_get(ingress_addr, "localhost", "/").await?;
    ensure!(status == 200 && body.starts_with(want), "{status} {body:?}");
    // The scale-to-zero function answers on its host, whether it is at zero or not.
    let (status, body) = http_get(ingress_addr, "fn.localhost", "/").await?;
    ensure!(
        status == 200 && body.starts_with("Hello from wasmkube! GET /"),
        "{status} {body:?}"
    );
    up.terminate().await
}

#[tokio::test]
async fn kubectl_exposes_a_deployment_and_routes_an_ingress() -> Result<()> {
    let Some(kubectl) = wasmkube_tests::kubectl() else {
        eprintln!(
            "SKIPPED: kubectl is not installed; the API paths are covered by the kube-rs tests"
        );
        return Ok(());
    };
    let cluster = Cluster::start_with_control_plane().await?;
    let (dns, _dns) = cluster.start_dns().await?;
    let node = cluster
        .start_node_with("n1", |c| {
            c.cluster_dns = Some(dns);
            c.ingress_listen = Some(SocketAddr::new(c.listen.ip(), 0));
        })
        .await?;
    let image = cluster.push_sample("http-hello").await?;
    let run = |args: Vec<String>| {
        let (kubectl, kubeconfig) = (kubectl.clone(), cluster.kubeconfig.clone());
        async move {
            let out = tokio::process::Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(&args)
                .output()
                .await?;
            ensure!(
                out.status.success(),
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    run(s(&[
        "create",
        "deployment",
        "web",
        &format!("--image={image}"),
        "--port=8080",
        "--replicas=2",
    ]))
    .await?;
    run(s(&[
        "expose",
        "deployment",
        "web",
        "--type=NodePort",
        "--port=80",
        "--target-port=8080",
    ]))
    .await?;
    let ip = run(s(&[
        "get",
        "service",
        "web",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]))
    .await?;
    ensure!(
        "10.96.0.0/12"
            .parse::<ipnet::Ipv4Net>()?
            .contains(&ip.parse::<std::net::Ipv4Addr>()?),
        "clusterIP {ip}"
    );
    let port = run(s(&[
        "get",
        "service",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]))
    .await?;
    run(s(&[
        "create",
        "ingress",
        "web",
        "--class=wasmkube",
        "--rule=/*=web:80",
    ]))
    .await?;
    let table = run(s(&["get", "service,ingress", "-o", "wide"])).await?;
    ensure!(
        table.contains(&ip)
            && table.contains(&format!("80:{port}/TCP"))
            && table.contains("wasmkube"),
        "{table}"
    );
    let node_port = SocketAddr::new(node.address.into(), port.trim().parse()?);
    let (_, body) = wait_for(
        "the exposed deployment to answer on its NodePort",
        SLOW,
        || async {
            http_get(node_port, "x", "/k")
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
        },
    )
    .await?;
    ensure!(body.starts_with("Hello from wasmkube! GET /k"), "{body:?}");
    let ingress_addr = wasmkube_tests::wait_ingress_address(&cluster.client, "web").await?;
    let (status, body) = http_get(ingress_addr, "any.host", "/via/ingress").await?;
    ensure!(
        status == 200 && body.starts_with("Hello from wasmkube! GET /via/ingress"),
        "{status} {body:?}"
    );
    node.stop().await?;
    cluster.stop().await
}
