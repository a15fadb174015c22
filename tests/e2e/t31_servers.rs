//! Three servers on one raft group, started as the README shows (`--peer-listen`, `--join
//! URL --token-file FILE`), each its own `wasmkube up` process: any server answers any
//! request with the same resourceVersions, and the group survives `kill -9` of its leader
//! without losing an acknowledged write.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;
use wasmkube_tests::{Process, free_port, kubectl, wait_for, wasmkube_bin};

/// One server's flags: `--no-wasmlet --peer-listen …`, and `--join … --token-file …` for
/// all but the first.
fn flags(peer: u16, join: Option<(u16, &Path)>) -> Vec<String> {
    let mut f: Vec<String> = [
        "--no-wasmlet",
        "--peer-listen",
        &format!("127.0.0.1:{peer}"),
        // Short leases, so the test sees the scheduler move when its server dies.
        "--leader-elect-lease-duration",
        "2",
        "--leader-elect-renew-deadline",
        "1.5",
        "--leader-elect-retry-period",
        "0.25",
    ]
    .map(str::to_owned)
    .into();
    if let Some((api, first)) = join {
        f.extend([
            "--join".to_owned(),
            format!("https://127.0.0.1:{api}"),
            "--token-file".to_owned(),
            first.join("join-token").display().to_string(),
        ]);
    }
    f
}

async fn start(data: &Path, api: u16, flags: &[String]) -> Result<Process> {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Process::up_with(data, api, &flags).await
}

/// `wasmkube cluster members` through `kubeconfig`: (id, peer, api, role) per line.
pub(crate) fn members(kubeconfig: &Path) -> Result<Vec<(u64, String, String, String)>> {
    let out = std::process::Command::new(wasmkube_bin())
        .args(["cluster", "members", "--kubeconfig"])
        .arg(kubeconfig)
        .output()?;
    ensure!(
        out.status.success(),
        "cluster members: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut lines = text.lines();
    ensure!(
        lines
            .next()
            .is_some_and(|h| h.split_whitespace().collect::<Vec<_>>()
                == ["ID", "PEER-ADDRESS", "API-ADDRESS", "ROLE", "APPLIED-INDEX"]),
        "header: {text}"
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            ensure!(f.len() == 5, "a member line has five columns: {l:?}");
            Ok((f[0].parse()?, f[1].into(), f[2].into(), f[3].into()))
        })
        .collect()
}

async fn create(client: &kube::Client, name: &str) -> Result<ConfigMap> {
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": name}}))?;
    Ok(cms.create(&PostParams::default(), &cm).await?)
}

/// The holder of Lease `kube-system/name`, once some server holds it.
async fn holder(client: &kube::Client, name: &str) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-system");
    leases
        .get(name)
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// Every ConfigMap `prefix-*` with its resourceVersion, read through `client`.
async fn listed(client: &kube::Client, prefix: &str) -> Result<BTreeMap<String, String>> {
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    Ok(cms
        .list(&Default::default())
        .await?
        .items
        .iter()
        .filter(|c| c.name_any().starts_with(prefix))
        .map(|c| (c.name_any(), c.resource_version().unwrap_or_default()))
        .collect())
}

#[tokio::test]
async fn three_servers_should_answer_alike_and_outlive_their_leader() -> Result<()> {
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let apis = [free_port(), free_port(), free_port()];
    let peers = [free_port(), free_port(), free_port()];
    let data: Vec<_> = (1..=3).map(|i| dir.path().join(format!("d{i}"))).collect();
    for d in &data {
        std::fs::create_dir_all(d)?;
    }
    let all_flags: Vec<Vec<String>> = (0..3)
        .map(|i| flags(peers[i], (i > 0).then(|| (apis[0], data[0].as_path()))))
        .collect();
    let mut servers = Vec::new();
    for i in 0..3 {
        servers.push(start(&data[i], apis[i], &all_flags[i]).await?);
    }
    let token = std::fs::read_to_string(data[0].join("join-token"))?;
    ensure!(
        token.starts_with("wk1::"),
        "the first server wrote the join token"
    );

    let listed_members = members(&servers[2].kubeconfig())?;
    ensure!(
        listed_members
            .iter()
            .map(|(id, peer, api, _)| (*id, peer.clone(), api.clone()))
            .collect::<Vec<_>>()
            == (0..3)
                .map(|i| (
                    i as u64 + 1,
                    format!("127.0.0.1:{}", peers[i]),
                    format!("https://127.0.0.1:{}", apis[i])
                ))
                .collect::<Vec<_>>(),
        "every server is a member: {listed_members:?}"
    );
    let roles: Vec<&str> = listed_members.iter().map(|m| m.3.as_str()).collect();
    ensure!(
        roles.iter().filter(|r| **r == "leader").count() == 1
            && roles.iter().filter(|r| **r == "follower").count() == 2,
        "one leader, two followers: {roles:?}"
    );

    // Writes through every server; reads through every other see them at once, alike.
    let clients = [
        servers[0].client().await?,
        servers[1].client().await?,
        servers[2].client().await?,
    ];
    for i in 0..12 {
        let via = &clients[i % 3];
        let cm = create(via, &format!("w-{i}")).await?;
        let reader: Api<ConfigMap> = Api::default_namespaced(clients[(i + 1) % 3].clone());
        let read = reader.get(&cm.name_any()).await.with_context(|| {
            format!(
                "read w-{i} through server {} right after the write",
                (i + 1) % 3 + 1
            )
        })?;
        ensure!(
            read.resource_version() == cm.resource_version(),
            "the same resourceVersion on every server"
        );
    }
    let first = listed(&clients[0], "w-").await?;
    ensure!(first.len() == 12);
    for c in &clients[1..] {
        ensure!(listed(c, "w-").await? == first, "lists agree");
    }
    if let Some(kubectl) = kubectl() {
        let out = std::process::Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(servers[1].kubeconfig())
            .args(["get", "configmap", "w-0", "-o", "jsonpath={.data.k}"])
            .output()?;
        ensure!(
            out.stdout == b"w-0",
            "kubectl through a follower: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("kubectl is not installed: the kubectl read through a follower is skipped");
    }

    // The kubernetes Service's Endpoints list every API server.
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(clients[1].clone(), "default");
    let mut want: Vec<u16> = apis.to_vec();
    want.sort_unstable();
    wait_for(
        "Endpoints with every server",
        Duration::from_secs(20),
        || async {
            let ep = endpoints.get("kubernetes").await.ok()?;
            let mut ports: Vec<u16> = ep
                .subsets
                .unwrap_or_default()
                .iter()
                .flat_map(|s| s.ports.clone().unwrap_or_default())
                .filter_map(|p| u16::try_from(p.port).ok())
                .collect();
            ports.sort_unstable();
            (ports == want).then_some(())
        },
    )
    .await?;
    let svc = Api::<k8s_openapi::api::core::v1::Service>::namespaced(clients[2].clone(), "default")
        .get("kubernetes")
        .await?;
    ensure!(
        svc.spec.and_then(|s| s.cluster_ip).as_deref() == Some("10.96.0.1"),
        "the kubernetes Service has the service range's first address"
    );

    // One scheduler and one controller manager act: each Lease has one holder, a server.
    let scheduler = wait_for("a scheduler leads", Duration::from_secs(20), || {
        holder(&clients[0], "kube-scheduler")
    })
    .await?;
    wait_for(
        "a controller manager leads",
        Duration::from_secs(20),
        || holder(&clients[0], "kube-controller-manager"),
    )
    .await?;
    let scheduling = apis
        .iter()
        .position(|p| scheduler.ends_with(&format!("_127.0.0.1:{p}")))
        .with_context(|| format!("{scheduler} is one of the servers"))?;

    // kill -9 the leader: the survivors elect another and take writes again.
    let leader = listed_members
        .iter()
        .position(|m| m.3 == "leader")
        .context("a leader")?;
    servers[leader].kill9();
    let survivor = &clients[(leader + 1) % 3];
    let killed_at = tokio::time::Instant::now();
    wait_for(
        "a write through a survivor",
        Duration::from_secs(20),
        || async {
            match create(survivor, "after-kill").await {
                Ok(_) => Some(()),
                // An earlier attempt was written, though its answer was lost with the leader.
                Err(e) if e.to_string().contains("already exists") => Some(()),
                Err(_) => None,
            }
        },
    )
    .await?;
    tracing::info!(elapsed = ?killed_at.elapsed(), "first write after the leader was killed");
    let after = members(&servers[(leader + 2) % 3].kubeconfig())?;
    ensure!(
        after
            .iter()
            .any(|m| m.3 == "leader" && m.0 != leader as u64 + 1),
        "another server leads: {after:?}"
    );

    // Had the killed server scheduled, a survivor's scheduler takes over within the lease.
    if scheduling == leader {
        let gone = scheduler.clone();
        let next = wait_for("another scheduler leads", Duration::from_secs(20), || {
            let gone = gone.clone();
            async move {
                holder(survivor, "kube-scheduler")
                    .await
                    .filter(|h| *h != gone)
            }
        })
        .await?;
        tracing::info!(from = %scheduler, to = %next, "the scheduler moved");
    }

    // The killed server comes back with the same command line and catches up.
    servers[leader] = start(&data[leader], apis[leader], &all_flags[leader]).await?;
    let back = servers[leader].client().await?;
    let names = listed(&back, "").await?;
    ensure!(
        first.keys().all(|k| names.contains_key(k)) && names.contains_key("after-kill"),
        "the restarted server holds every acknowledged write"
    );
    ensure!(
        members(&servers[leader].kubeconfig())?.len() == 3,
        "it is still a member"
    );
    Ok(())
}

#[tokio::test]
async fn clients_should_leave_a_stopped_server_for_another() -> Result<()> {
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let servers = Process::group(dir.path(), 3, &["--no-wasmlet", "--no-dns"]).await?;
    // A component's client: the first server, then the others (as the client crate learns
    // them from the `default/kubernetes` Endpoints).
    let source = wasmkube_client::Source::kubeconfig(servers[0].kubeconfig())
        .servers(servers[1..].iter().map(|s| format!("https://{}", s.addr)));
    let conn = wasmkube_client::connect(&source).await?;
    create(&conn.client, "before-stop").await?;
    ensure!(conn.servers.preferred() == format!("https://{}/", servers[0].addr));

    // SIGSTOP: the kernel still accepts its connections, nothing answers them.
    let pid = servers[0].child.id().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()?;
    let started = std::time::Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(30), listed(&conn.client, "before-stop"))
        .await
        .context("a read leaves the stopped server")??;
    let took = started.elapsed();
    ensure!(
        first.contains_key("before-stop"),
        "answered by another server: {first:?}"
    );
    // Checked while it is still stopped: once it runs again, a request it held (the client's
    // Endpoints poll) may be answered and make it preferred again, rightly. A response the
    // stopped server sent just before it stopped can do the same when its task runs late (a
    // loaded CI machine): each further read that leaves it must then move the preference
    // again, so the check reads until it holds, within 30 s.
    let stopped = format!("https://{}/", servers[0].addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while conn.servers.preferred() == stopped {
        ensure!(
            std::time::Instant::now() < deadline,
            "later requests go to another server"
        );
        let again =
            tokio::time::timeout(Duration::from_secs(30), listed(&conn.client, "before-stop"))
                .await
                .context("a read leaves the stopped server")??;
        ensure!(
            again.contains_key("before-stop"),
            "answered by another server"
        );
    }
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()?;
    tracing::info!(?took, "read answered elsewhere");
    create(&conn.client, "after-stop").await?;
    Ok(())
}

/// `SelfSubjectReview`: who the server takes the client for.
async fn whoami(client: &kube::Client) -> Result<String, kube::Error> {
    let req = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#.to_vec())
        .expect("a static request");
    let review: serde_json::Value = client.request(req).await?;
    Ok(review["status"]["userInfo"]["username"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// What `wasmkube up` does for its scheduler, controller manager, DNS server and wasmlet: they
/// reach the API server in their process without a socket, as the users their kubeconfigs
/// name, and leave it for the next server once it stops.
#[tokio::test]
async fn an_in_process_client_should_act_as_its_kubeconfig_user_and_leave_its_stopped_server()
-> Result<()> {
    let cluster = wasmkube_tests::Cluster::start().await?;
    let other = wasmkube_tests::Cluster::start().await?;
    let (local, components) = cluster.in_process();
    let as_user =
        |kubeconfig: &Path| wasmkube_client::Source::kubeconfig(kubeconfig).local(local.clone());
    let scheduler = wasmkube_client::connect(&as_user(&components.scheduler)).await?;
    ensure!(whoami(&scheduler.client).await? == "system:kube-scheduler");
    // Its rights are the scheduler's (RBAC), not more: it may bind pods, not read Secrets.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(scheduler.client.clone(), "default");
    ensure!(
        matches!(secrets.list(&Default::default()).await, Err(kube::Error::Api(ref s)) if s.code == 403),
        "the scheduler reads no Secrets"
    );
    let admin = wasmkube_client::connect(&as_user(&cluster.kubeconfig)).await?;
    ensure!(
        whoami(&admin.client).await? == "system:admin",
        "the token is sent"
    );
    create(&admin.client, "in-process").await?;
    // A certificate from another cluster's CA names nobody here, as in a TLS handshake.
    let (_, strangers) = other.in_process();
    let stranger = wasmkube_client::connect(&as_user(&strangers.scheduler)).await?;
    ensure!(
        matches!(whoami(&stranger.client).await, Err(kube::Error::Api(ref s)) if s.code == 401),
        "another CA's certificate is refused"
    );

    // Once the server stops, requests go to the next server: here a plain-HTTP one that
    // answers `/version` alone, so its answer shows where the request went.
    let next = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let next_url = format!("http://{}", next.local_addr()?);
    let version = axum::Router::new().route(
        "/version",
        axum::routing::get(|| async {
            axum::Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-next"}))
        }),
    );
    tokio::spawn(async move { axum::serve(next, version).await });
    let with_next =
        wasmkube_client::connect(&as_user(&cluster.kubeconfig).servers([next_url])).await?;
    ensure!(whoami(&with_next.client).await? == "system:admin");
    ensure!(with_next.client.apiserver_version().await?.git_version != "v1.33.0-next");
    cluster.stop().await?;
    match whoami(&admin.client).await {
        Err(kube::Error::Service(e)) => ensure!(
            format!("{e:?}").contains("ConnectionRefused"),
            "a stopped server refuses: {e:?}"
        ),
        other => anyhow::bail!("a stopped server answered: {other:?}"),
    }
    ensure!(
        with_next.client.apiserver_version().await?.git_version == "v1.33.0-next",
        "the next server answers"
    );
    other.stop().await
}
