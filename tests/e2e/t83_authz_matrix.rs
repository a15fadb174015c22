//! The authorization matrix: seven callers — the admin, a user certificate with no bindings, a
//! ServiceAccount with no bindings, one bound to `view`, one with a namespaced Role, a node
//! (`system:node:n1`, by impersonation) and no credential at all — each try get, list, watch,
//! create, update, patch and delete on pods, Secrets, ConfigMaps and Nodes, and get, update and
//! patch on `pods/status`; every cell must be what kube-apiserver answers (allowed, 403 or
//! 401). Writes are dry runs, so the objects stay as they are for every caller.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use wasmkube_tests::{Process, client_for, raw, wasmkube_command};

/// What kube-apiserver answers: allowed (any code but 401/403), 403 or 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    Ok,
    Forbidden,
    Unauthorized,
}

fn class(code: u16) -> Cell {
    match code {
        401 => Cell::Unauthorized,
        403 => Cell::Forbidden,
        _ => Cell::Ok,
    }
}

const VERBS: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];
const RESOURCES: [&str; 4] = ["pods", "secrets", "configmaps", "nodes"];

/// (resource, verb) → what `who` gets.
fn expected(who: &str) -> BTreeMap<(&'static str, &'static str), Cell> {
    use Cell::{Forbidden as F, Ok as A, Unauthorized as U};
    let mut m = BTreeMap::new();
    for r in RESOURCES.iter().chain(&["pods/status"]) {
        for v in VERBS {
            if *r == "pods/status" && !matches!(v, "get" | "update" | "patch") {
                continue;
            }
            let read = matches!(v, "get" | "list" | "watch");
            let cell = match who {
                "admin" => A,
                "anonymous" => U,
                "user" | "sa-none" => F,
                "sa-view" => match *r {
                    "pods" | "configmaps" | "pods/status" if read => A,
                    _ => F,
                },
                "sa-role" => match *r {
                    "configmaps" => A,
                    _ => F,
                },
                // The Node authorizer (secrets and configmaps its pod names, by name only),
                // the system:node role, and NodeRestriction (no pod creates).
                "node" => match (*r, v) {
                    ("pods", "get" | "list" | "watch" | "delete") => A,
                    ("secrets" | "configmaps", "get") => A,
                    ("nodes", _) => A,
                    ("pods/status", "update" | "patch") => A,
                    _ => F,
                },
                other => panic!("unknown caller {other}"),
            };
            m.insert((*r, v), cell);
        }
    }
    m
}

/// A client from `kubeconfig` changed by `edit`.
async fn client_with(
    kubeconfig: &Path,
    edit: impl FnOnce(&mut kube::Config),
) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    edit(&mut config);
    Ok(kube::Client::try_from(config)?)
}

/// What each cell answers for `client`.
async fn answers(
    client: &kube::Client,
    objects: &BTreeMap<&str, Value>,
) -> Result<BTreeMap<(&'static str, &'static str), Cell>> {
    let mut got = BTreeMap::new();
    let json_ct = "application/json";
    for (r, v) in expected("admin").keys() {
        let (collection, name) = match *r {
            "nodes" => ("/api/v1/nodes".to_owned(), "n1"),
            "pods/status" => ("/api/v1/namespaces/m/pods".to_owned(), "p"),
            "pods" => ("/api/v1/namespaces/m/pods".to_owned(), "p"),
            "secrets" => ("/api/v1/namespaces/m/secrets".to_owned(), "s"),
            _ => ("/api/v1/namespaces/m/configmaps".to_owned(), "c"),
        };
        let object = if *r == "pods/status" {
            format!("{collection}/{name}/status")
        } else {
            format!("{collection}/{name}")
        };
        let current = serde_json::to_vec(&objects[r.trim_end_matches("/status")])?;
        // What a client creates: no server-set metadata.
        let mut fresh = objects[r.trim_end_matches("/status")].clone();
        if let Some(meta) = fresh.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "managedFields",
            ] {
                meta.remove(field);
            }
        }
        let fresh = serde_json::to_vec(&fresh)?;
        let (method, path, ct, body): (&str, String, &str, Vec<u8>) = match *v {
            "get" => ("GET", object, json_ct, vec![]),
            "list" => ("GET", collection, json_ct, vec![]),
            "watch" => (
                "GET",
                format!("{collection}?watch=true&timeoutSeconds=1"),
                json_ct,
                vec![],
            ),
            "create" => ("POST", format!("{collection}?dryRun=All"), json_ct, fresh),
            "update" => ("PUT", format!("{object}?dryRun=All"), json_ct, current),
            "patch" => (
                "PATCH",
                format!("{object}?dryRun=All"),
                "application/merge-patch+json",
                br#"{"metadata":{"labels":{"matrix":"yes"}}}"#.to_vec(),
            ),
            _ => ("DELETE", format!("{object}?dryRun=All"), json_ct, vec![]),
        };
        let (code, answer) = raw(client, method, &path, ct, json_ct, &body).await?;
        tracing::debug!(resource = r, verb = v, code, %answer, "cell");
        got.insert((*r, *v), class(code));
    }
    Ok(got)
}

/// A TokenRequest token for ServiceAccount `m/name`.
async fn token(admin: &kube::Client, name: &str) -> Result<String> {
    let body = serde_json::to_vec(
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
    )?;
    let (code, answer) = raw(
        admin,
        "POST",
        &format!("/api/v1/namespaces/m/serviceaccounts/{name}/token"),
        "application/json",
        "application/json",
        &body,
    )
    .await?;
    ensure!(code == 201, "token for {name}: {answer}");
    Ok(answer["status"]["token"]
        .as_str()
        .context("a token")?
        .to_owned())
}

async fn create(admin: &kube::Client, path: &str, obj: Value) -> Result<()> {
    let (code, answer) = raw(
        admin,
        "POST",
        path,
        "application/json",
        "application/json",
        &serde_json::to_vec(&obj)?,
    )
    .await?;
    ensure!(code == 201, "creating at {path}: {answer}");
    Ok(())
}

#[tokio::test]
async fn every_caller_should_get_what_kube_apiserver_answers_for_every_verb_and_resource()
-> Result<()> {
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let up = Process::up_in(dir.path(), &["--no-wasmlet", "--no-scheduler"]).await?;
    let admin_kc = up.kubeconfig();
    let admin = up.client().await?;
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "m"}}))?,
        )
        .await?;
    create(&admin, "/api/v1/nodes", json!({"metadata": {"name": "n1"}})).await?;
    create(
        &admin,
        "/api/v1/namespaces/m/secrets",
        json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}),
    )
    .await?;
    create(
        &admin,
        "/api/v1/namespaces/m/configmaps",
        json!({"metadata": {"name": "c"}, "data": {"k": "v"}}),
    )
    .await?;
    create(&admin, "/api/v1/namespaces/m/pods", json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1",
        "containers": [{"name": "app", "image": "x.wasm", "envFrom": [{"configMapRef": {"name": "c"}}]}],
        "volumes": [{"name": "v", "secret": {"secretName": "s"}}]}})).await?;
    for sa in ["none", "viewer", "editor"] {
        create(
            &admin,
            "/api/v1/namespaces/m/serviceaccounts",
            json!({"metadata": {"name": sa}}),
        )
        .await?;
    }
    create(
        &admin,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/m/rolebindings",
        json!({"metadata": {"name": "viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": "m"}]}),
    )
    .await?;
    create(&admin, "/apis/rbac.authorization.k8s.io/v1/namespaces/m/roles", json!({"metadata": {"name": "cm"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]})).await?;
    create(
        &admin,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/m/rolebindings",
        json!({"metadata": {"name": "editor"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm"},
        "subjects": [{"kind": "ServiceAccount", "name": "editor", "namespace": "m"}]}),
    )
    .await?;
    // The objects as they are, for creates and updates.
    let mut objects = BTreeMap::new();
    objects.insert(
        "pods",
        serde_json::to_value(Api::<Pod>::namespaced(admin.clone(), "m").get("p").await?)?,
    );
    objects.insert(
        "secrets",
        serde_json::to_value(
            Api::<Secret>::namespaced(admin.clone(), "m")
                .get("s")
                .await?,
        )?,
    );
    objects.insert(
        "configmaps",
        serde_json::to_value(
            Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(admin.clone(), "m")
                .get("c")
                .await?,
        )?,
    );
    objects.insert(
        "nodes",
        serde_json::to_value(Api::<Node>::all(admin.clone()).get("n1").await?)?,
    );

    let user_kc = dir.path().join("user.kubeconfig");
    let server = std::fs::read_to_string(&admin_kc)?
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_owned))
        .context("server")?;
    let out = wasmkube_command(None)
        .args([
            "kubeconfig",
            "user",
            "--client-name",
            "jane",
            "--server",
            &server,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&user_kc, out.stdout)?;

    let with_token = |t: String| move |c: &mut kube::Config| c.auth_info.token = Some(t.into());
    let callers: Vec<(&str, kube::Client)> = vec![
        ("admin", admin.clone()),
        ("user", client_for(&user_kc).await?),
        (
            "sa-none",
            client_with(&admin_kc, with_token(token(&admin, "none").await?)).await?,
        ),
        (
            "sa-view",
            client_with(&admin_kc, with_token(token(&admin, "viewer").await?)).await?,
        ),
        (
            "sa-role",
            client_with(&admin_kc, with_token(token(&admin, "editor").await?)).await?,
        ),
        (
            "node",
            client_with(&admin_kc, |c| {
                c.auth_info.impersonate = Some("system:node:n1".into());
                c.auth_info.impersonate_groups = Some(vec!["system:nodes".into()]);
            })
            .await?,
        ),
        (
            "anonymous",
            client_with(&admin_kc, |c| c.auth_info = Default::default()).await?,
        ),
    ];
    // Bindings reach the authorizer through the watch cache: wait until the viewer can read.
    wasmkube_tests::wait_for(
        "the bindings to take effect",
        std::time::Duration::from_secs(10),
        || async {
            let (code, _) = raw(
                &callers[3].1,
                "GET",
                "/api/v1/namespaces/m/pods",
                "application/json",
                "application/json",
                b"",
            )
            .await
            .ok()?;
            (code == 200).then_some(())
        },
    )
    .await?;
    let results =
        futures::future::join_all(callers.iter().map(|(_, c)| answers(c, &objects))).await;
    let mut wrong = Vec::new();
    for ((who, _), got) in callers.iter().zip(results) {
        let got = got?;
        for (cell, want) in expected(who) {
            if got.get(&cell) != Some(&want) {
                wrong.push(format!(
                    "{who} {} {}: got {:?}, kube-apiserver answers {want:?}",
                    cell.1,
                    cell.0,
                    got.get(&cell)
                ));
            }
        }
    }
    ensure!(wrong.is_empty(), "cells that differ:\n{}", wrong.join("\n"));
    Ok(())
}
