//! Pods get their identity: ServiceAccount admission (the account must exist, `default`
//! otherwise), the `kube-api-access-*` token volume, the `kube-root-ca.crt` ConfigMap and the
//! `default` account kept by their controllers, and a guest that uses the API in-cluster —
//! `KUBERNETES_SERVICE_HOST`, the mounted token, HTTPS through the `kubernetes` Service —
//! refused without a binding and answered with one.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, LogParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use wasmkube_tests::{Cluster, wait_for};

const NS: &str = "identity";
const SLOW: Duration = Duration::from_secs(60);
const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn pod(name: &str, node: &str, account: Option<&str>, args: &[&str]) -> Result<Pod> {
    let mut spec = json!({
        "nodeName": node,
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "toolbox:v1", "args": args}],
    });
    if let Some(a) = account {
        spec["serviceAccountName"] = json!(a);
    }
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": spec}),
    )?)
}

/// A client of the cluster presenting `token`.
async fn client_with_token(cluster: &Cluster, token: &str) -> Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.auth_info.token = Some(token.to_owned().into());
    Ok(Client::try_from(config)?)
}

/// The pod's log once it holds `marker`.
async fn log_with(pods: &Api<Pod>, name: &str, marker: &str) -> Result<String> {
    let found = wait_for(
        &format!("{marker:?} in the log of {name}"),
        SLOW,
        || async {
            let log = pods.logs(name, &LogParams::default()).await.ok()?;
            log.contains(marker).then_some(log)
        },
    )
    .await;
    if found.is_err() {
        let log = pods.logs(name, &LogParams::default()).await;
        let status = pods.get(name).await.map(|p| p.status);
        tracing::error!(?log, ?status, "pod {name}");
    }
    found
}

#[tokio::test]
async fn a_pod_should_use_the_api_with_its_mounted_token_only_as_far_as_its_bindings_go()
-> Result<()> {
    let cluster = Cluster::start().await?;
    // The controller manager aggregates `view`'s rules and keeps the accounts and CA maps.
    let _controllers = cluster.start_controllers();
    let node = cluster.start_node("identity-node").await?;
    cluster.push_sample("toolbox").await?;
    let client: Client = cluster.client.clone();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "reader"}}))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    tracing::info!("--- a pod naming no account runs as `default`, with the token volume");
    let files = pods
        .create(
            &PostParams::default(),
            &pod(
                "files",
                &node.name,
                None,
                &[
                    "cat",
                    &format!("{MOUNT}/namespace"),
                    "--",
                    "cat",
                    &format!("{MOUNT}/ca.crt"),
                    "--",
                    "env",
                    "--",
                    "ls",
                    MOUNT,
                ],
            )?,
        )
        .await?;
    let spec = files.spec.context("spec")?;
    ensure!(spec.service_account_name.as_deref() == Some("default"));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name.starts_with("kube-api-access-"))
        .context("the token volume")?;
    let mount = spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .context("the token mount")?;
    ensure!(mount.mount_path == MOUNT && mount.read_only == Some(true));
    let log = log_with(&pods, "files", "token").await?;
    let ca = std::fs::read_to_string(cluster.dir.path().join("pki/ca.crt"))?;
    ensure!(log.starts_with(NS), "the namespace file: {log}");
    ensure!(log.contains(ca.trim()), "ca.crt is the cluster CA: {log}");
    ensure!(
        log.contains("KUBERNETES_SERVICE_HOST=10.96.0.1")
            && log.contains("KUBERNETES_SERVICE_PORT=443")
            && log.contains("KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443"),
        "the kubernetes Service's variables: {log}"
    );
    ensure!(
        log.contains("ca.crt namespace token"),
        "the volume's files: {log}"
    );

    tracing::info!("--- an account that does not exist is refused in kube-apiserver's words");
    let err = pods
        .create(
            &PostParams::default(),
            &pod("ghost", &node.name, Some("ghost"), &["env"])?,
        )
        .await
        .expect_err("no such account");
    match err {
        kube::Error::Api(s) => ensure!(
            s.code == 403
                && s.message
                    == "pods \"ghost\" is forbidden: error looking up service account identity/ghost: serviceaccount \"ghost\" not found",
            "{s:?}"
        ),
        e => anyhow::bail!("{e}"),
    }

    tracing::info!("--- automountServiceAccountToken: false leaves the token out");
    let mut bare = pod("bare", &node.name, Some("reader"), &["kube-get", "/api"])?;
    bare.spec
        .as_mut()
        .context("spec")?
        .automount_service_account_token = Some(false);
    let bare = pods.create(&PostParams::default(), &bare).await?;
    ensure!(
        !bare
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .any(|v| v.name.starts_with("kube-api-access-")),
        "no token volume"
    );
    log_with(&pods, "bare", "reading the token").await?;

    tracing::info!("--- without a binding the guest's list is refused");
    let list = format!("/api/v1/namespaces/{NS}/pods");
    pods.create(
        &PostParams::default(),
        &pod("denied", &node.name, Some("reader"), &["kube-get", &list])?,
    )
    .await?;
    let log = log_with(&pods, "denied", "status ").await?;
    ensure!(
        log.contains("status 403")
            && log.contains(
                "User \\\"system:serviceaccount:identity:reader\\\" cannot list resource \\\"pods\\\" in API group \\\"\\\" in the namespace \\\"identity\\\""
            ),
        "{log}"
    );

    tracing::info!("--- bound to `view`, the guest lists its namespace's pods");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), NS);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "reader-view"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}],
            }))?,
        )
        .await?;
    // Authorization follows the binding within a watch event: wait until it does.
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    wait_for("the binding to take effect", SLOW, || async {
        let review: SubjectAccessReview = serde_json::from_value(json!({
            "spec": {"user": "system:serviceaccount:identity:reader",
                     "groups": ["system:serviceaccounts", "system:authenticated"],
                     "resourceAttributes": {"namespace": NS, "verb": "list", "resource": "pods"}},
        }))
        .ok()?;
        let answer = reviews.create(&PostParams::default(), &review).await.ok()?;
        answer.status?.allowed.then_some(())
    })
    .await?;
    pods.create(
        &PostParams::default(),
        &pod("allowed", &node.name, Some("reader"), &["kube-get", &list])?,
    )
    .await?;
    let log = log_with(&pods, "allowed", "status ").await?;
    ensure!(log.contains("status 200"), "{log}");
    let body: serde_json::Value = serde_json::from_str(
        log.lines()
            .nth(1)
            .context("the body follows the status line")?,
    )?;
    let names: Vec<&str> = body["items"]
        .as_array()
        .context("a PodList")?
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    ensure!(
        names.contains(&"denied") && names.contains(&"allowed"),
        "{names:?}"
    );

    tracing::info!("--- a legacy token Secret is filled, and its token lives as long as it");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "reader-token",
                             "annotations": {"kubernetes.io/service-account.name": "reader"}},
                "type": "kubernetes.io/service-account-token",
            }))?,
        )
        .await?;
    let filled = wait_for("the token Secret to be filled", SLOW, || async {
        let s = secrets.get("reader-token").await.ok()?;
        s.data.as_ref()?.contains_key("token").then_some(s)
    })
    .await?;
    let data = filled.data.context("data")?;
    ensure!(data.get("namespace").map(|b| b.0.as_slice()) == Some(NS.as_bytes()));
    ensure!(data.get("ca.crt").map(|b| b.0.as_slice()) == Some(ca.as_bytes()));
    let token = String::from_utf8(data["token"].0.clone())?;
    let as_reader = client_with_token(&cluster, &token).await?;
    let review: SelfSubjectReview = Api::all(as_reader.clone())
        .create(&PostParams::default(), &Default::default())
        .await?;
    let who = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username);
    ensure!(
        who.as_deref() == Some("system:serviceaccount:identity:reader"),
        "{who:?}"
    );
    secrets
        .delete("reader-token", &DeleteParams::default())
        .await?;
    wait_for("the deleted Secret's token to be refused", SLOW, || async {
        let r = Api::<SelfSubjectReview>::all(as_reader.clone())
            .create(&PostParams::default(), &Default::default())
            .await;
        matches!(r, Err(kube::Error::Api(s)) if s.code == 401).then_some(())
    })
    .await?;

    tracing::info!("--- a pod whose ConfigMap is missing starts once it exists");
    let mut late = pod(
        "late",
        &node.name,
        None,
        &["cat", "/config/greeting", "--", "forever"],
    )?;
    let spec = late.spec.as_mut().context("spec")?;
    spec.volumes
        .get_or_insert_with(Vec::new)
        .push(serde_json::from_value(
            json!({"name": "config", "configMap": {"name": "arrives-later"}}),
        )?);
    spec.containers[0]
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(serde_json::from_value(
            json!({"name": "config", "mountPath": "/config"}),
        )?);
    pods.create(&PostParams::default(), &late).await?;
    wait_for("CreateContainerConfigError", SLOW, || async {
        let p = pods.get("late").await.ok()?;
        let waiting = p
            .status?
            .container_statuses?
            .first()?
            .state
            .clone()?
            .waiting?;
        (waiting.reason.as_deref() == Some("CreateContainerConfigError")).then_some(())
    })
    .await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "arrives-later"},
                                           "data": {"greeting": "hello, late"}}))?,
        )
        .await?;
    log_with(&pods, "late", "hello, late").await?;

    tracing::info!("--- the account and the CA ConfigMap come back when deleted");
    let old_cm = configmaps.get("kube-root-ca.crt").await?.metadata.uid;
    configmaps
        .delete("kube-root-ca.crt", &DeleteParams::default())
        .await?;
    let old_sa = accounts.get("default").await?.metadata.uid;
    accounts.delete("default", &DeleteParams::default()).await?;
    wait_for("both recreated", SLOW, || async {
        let cm = configmaps.get_opt("kube-root-ca.crt").await.ok()??;
        let sa = accounts.get_opt("default").await.ok()??;
        (cm.metadata.uid != old_cm
            && sa.metadata.uid != old_sa
            && cm.data.as_ref()?.get("ca.crt")? == &ca)
            .then_some(())
    })
    .await?;
    cluster.stop().await
}
