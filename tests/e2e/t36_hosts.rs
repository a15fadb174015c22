//! Servers and a wasmlet on hosts of their own: network namespaces this test makes (`ip netns
//! add`), each joined by a veth pair to a bridge in one more namespace, with addresses from a
//! /24 of the test's own; the test process reaches them through a veth of its own. Partitions
//! are the kernel's: a host's port on the bridge set down. Nothing else is ever dialled.
//! Needs root and iproute2 (said and skipped otherwise).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;
use wasmkube_client::create_from_json;
use wasmkube_tests::{
    Process, configmap_names, create_configmap_within, free_port, kubectl, node_ready, wait_for,
    wasmlet_process,
};

/// Hosts `1..=n` on a bridge, addresses `10.231.S.i/24`; the test process is `10.231.S.254`.
struct Lab {
    id: u32,
    subnet: u32,
    hosts: usize,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Lab {
    fn new(hosts: usize) -> Option<Lab> {
        let id = std::process::id() % 10_000;
        let lab = Lab {
            id,
            subnet: 20 + id % 200,
            hosts,
        };
        let bridge = lab.bridge();
        if !ip(&["netns", "add", &bridge]) {
            return None;
        }
        let me = format!("wkl{id}");
        let up = format!("up{id}");
        let ok = ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])
            && ip(&["-n", &bridge, "link", "set", "br0", "up"])
            && ip(&[
                "link", "add", &me, "type", "veth", "peer", "name", &up, "netns", &bridge,
            ])
            && ip(&["addr", "add", &format!("{}/24", lab.ip(254)), "dev", &me])
            && ip(&["link", "set", &me, "up"])
            && ip(&["-n", &bridge, "link", "set", &up, "master", "br0"])
            && ip(&["-n", &bridge, "link", "set", &up, "up"])
            && (1..=hosts).all(|i| lab.add_host(i));
        ok.then_some(lab)
    }

    fn bridge(&self) -> String {
        format!("wk{}br", self.id)
    }

    /// Host `i`'s network namespace.
    fn ns(&self, i: usize) -> String {
        format!("wk{}h{i}", self.id)
    }

    /// Host `i`'s address.
    fn ip(&self, i: usize) -> String {
        format!("10.231.{}.{i}", self.subnet)
    }

    fn add_host(&self, i: usize) -> bool {
        let (ns, bridge, port) = (self.ns(i), self.bridge(), format!("p{i}"));
        ip(&["netns", "add", &ns])
            && ip(&["-n", &ns, "link", "set", "lo", "up"])
            && ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &bridge,
            ])
            && ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.ip(i)),
                "dev",
                "eth0",
            ])
            && ip(&["-n", &ns, "link", "set", "eth0", "up"])
            && ip(&["-n", &bridge, "link", "set", &port, "master", "br0"])
            && ip(&["-n", &bridge, "link", "set", &port, "up"])
    }

    /// Cuts host `i` off (its bridge port down) or joins it again.
    fn link(&self, i: usize, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        ensure!(
            ip(&["-n", &self.bridge(), "link", "set", &format!("p{i}"), state]),
            "set p{i} {state}"
        );
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 1..=self.hosts {
            ip(&["netns", "del", &self.ns(i)]);
        }
        // Deleting the bridge's namespace deletes the test process's veth with its peer.
        ip(&["netns", "del", &self.bridge()]);
        ip(&["link", "del", &format!("wkl{}", self.id)]);
    }
}

#[tokio::test]
async fn servers_and_a_node_on_their_own_hosts_should_survive_a_kernel_partition() -> Result<()> {
    wasmkube_tests::init_tracing();
    let Some(lab) = Lab::new(4) else {
        eprintln!(
            "skipped: network namespaces need root and iproute2; the multi-host test did not run"
        );
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let data = |i: usize| dir.path().join(format!("h{i}"));
    // Three servers on hosts 1-3, the same ports on each: they are separate hosts.
    let first = {
        std::fs::create_dir_all(data(1))?;
        let flags = [
            "--no-wasmlet",
            "--no-dns",
            "--peer-listen",
            &format!("{}:7001", lab.ip(1)),
        ];
        Process::up_in_netns(&lab.ns(1), &data(1), &format!("{}:6443", lab.ip(1)), &flags).await?
    };
    let join = format!("https://{}:6443", lab.ip(1));
    let mut servers = vec![first];
    for i in 2..=3 {
        std::fs::create_dir_all(data(i))?;
        let token = data(1).join("join-token").display().to_string();
        let peer = format!("{}:7001", lab.ip(i));
        let flags = [
            "--no-wasmlet",
            "--no-dns",
            "--peer-listen",
            &peer,
            "--join",
            &join,
            "--token-file",
            &token,
        ];
        servers.push(
            Process::up_in_netns(&lab.ns(i), &data(i), &format!("{}:6443", lab.ip(i)), &flags)
                .await?,
        );
    }

    // A node on host 4 joins over the network with the node token.
    let node_dir = data(4).display().to_string();
    let node_token = data(1).join("node-token").display().to_string();
    let listen = format!("{}:10250", lab.ip(4));
    let _wasmlet = wasmlet_process(
        Some(&lab.ns(4)),
        "host-4",
        &listen,
        &[
            "--join",
            &join,
            "--token-file",
            &node_token,
            "--data-dir",
            &node_dir,
        ],
        &dir.path().join("host-4.log"),
    )?;
    let client = servers[1].client().await?;
    wait_for("node host-4 Ready", Duration::from_secs(60), || {
        node_ready(&client, "host-4")
    })
    .await?;
    wasmkube_tests::push_samples(&servers[0].kubeconfig(), dir.path(), &["http-hello"])?;
    create_from_json::<Deployment>(
        &client,
        "default",
        json!({"metadata": {"name": "hello"}, "spec": {"replicas": 1,
            "selector": {"matchLabels": {"app": "hello"}},
            "template": {"metadata": {"labels": {"app": "hello"}}, "spec": {"containers": [{
                "name": "http", "image": "http-hello:v1",
                "ports": [{"name": "http", "containerPort": 8080}]}]}}}}),
    )
    .await?;
    let node_port: u16 = 30000 + free_port() % 2700;
    create_from_json::<k8s_openapi::api::core::v1::Service>(
        &client,
        "default",
        json!({"metadata": {"name": "hello"},
        "spec": {"type": "NodePort", "selector": {"app": "hello"},
                 "ports": [{"port": 80, "targetPort": "http", "nodePort": node_port}]}}),
    )
    .await?;
    // Real packets across the bridge to the node's address.
    let entry: std::net::SocketAddr = format!("{}:{node_port}", lab.ip(4)).parse()?;
    let serving = || async {
        matches!(
            wasmkube_tests::http_get(entry, "hello", "/").await,
            Ok((200, _))
        )
        .then_some(())
    };
    wait_for("NodePort on host-4", Duration::from_secs(60), serving).await?;

    // Host 1 (the first server, the leader) cut off by the kernel.
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let mut acknowledged = std::collections::BTreeSet::new();
    for i in 0..3 {
        let name = format!("part-before-{i}");
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        cms.create(&PostParams::default(), &cm).await?;
        acknowledged.insert(name);
    }
    lab.link(1, false)?;
    for i in 0..5 {
        let name = format!("part-during-{i}");
        create_configmap_within(&client, &name, Duration::from_secs(30)).await?;
        acknowledged.insert(name);
    }
    // The minority side answers a write with a 5xx, never a success.
    match kubectl() {
        Some(kubectl) => {
            let out = Command::new("ip")
                .args(["netns", "exec", &lab.ns(1)])
                .arg(kubectl)
                .arg("--kubeconfig")
                .arg(servers[0].kubeconfig())
                .args([
                    "--request-timeout=60s",
                    "create",
                    "configmap",
                    "part-minority",
                ])
                .output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(
                !out.status.success()
                    && ["ServiceUnavailable", "Timeout", "not committed"]
                        .iter()
                        .any(|w| stderr.contains(w)),
                "the cut-off server refuses the write with a 5xx: {stderr}"
            );
        }
        None => tracing::warn!("kubectl is not on PATH: the minority write was not tried"),
    }
    ensure!(
        serving().await.is_some(),
        "the node keeps serving through the partition"
    );

    // Joined again, host 1 catches up and never acknowledged the minority write.
    lab.link(1, true)?;
    let rejoined = servers[0].client().await?;
    let have = wait_for(
        "host 1 has every acknowledged write",
        Duration::from_secs(60),
        || async {
            let have = configmap_names(&rejoined, "part-").await.ok()?;
            acknowledged.is_subset(&have).then_some(have)
        },
    )
    .await?;
    ensure!(
        !have.contains("part-minority"),
        "the minority write was never applied: {have:?}"
    );
    let everywhere = configmap_names(&servers[2].client().await?, "part-").await?;
    ensure!(
        everywhere == have,
        "the servers agree: {have:?} vs {everywhere:?}"
    );
    ensure!(
        Path::new(&node_dir).join("wasmlet.kubeconfig").exists(),
        "the node joined with its own credentials"
    );
    Ok(())
}
