//! Identity and RBAC through the real binary: a user certificate made by `wasmkube kubeconfig
//! user`, refused in kube-apiserver's words until a RoleBinding grants the aggregated `view`
//! role in one namespace; `kubectl auth whoami` / `auth can-i` (with `--list`) where kubectl is
//! installed.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use wasmkube_tests::{Process, client_for, kubectl, wait_for, wasmkube_command};

/// `wasmkube kubeconfig user` for `name` in `orgs`, written beside the data directory.
fn user_kubeconfig(
    up: &Process,
    data: &std::path::Path,
    name: &str,
    orgs: &[&str],
) -> Result<std::path::PathBuf> {
    let server = std::fs::read_to_string(up.kubeconfig())?
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_owned))
        .context("server in the admin kubeconfig")?;
    let mut cmd = wasmkube_command(None);
    cmd.args([
        "kubeconfig",
        "user",
        "--client-name",
        name,
        "--server",
        &server,
    ])
    .arg("--data-dir")
    .arg(data);
    for o in orgs {
        cmd.args(["--org", o]);
    }
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "kubeconfig user: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = data.with_file_name(format!("{name}.kubeconfig"));
    std::fs::write(&path, out.stdout)?;
    Ok(path)
}

fn can_i(verb: &str, resource: &str, namespace: &str) -> SelfSubjectAccessReview {
    SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn a_user_certificate_should_get_exactly_what_its_role_bindings_grant() -> Result<()> {
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let up = Process::up_in(dir.path(), &["--no-wasmlet"]).await?;
    let data = dir.path().join("data");
    let admin = up.client().await?;
    let jane_kc = user_kubeconfig(&up, &data, "jane", &["devs"])?;
    let jane = client_for(&jane_kc).await?;

    // Nothing granted yet: 403 in kube-apiserver's words.
    let pods: Api<Pod> = Api::namespaced(jane.clone(), "default");
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => ensure!(
            s.code == 403
                && s.message
                    == "pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"",
            "refusal: {s:?}"
        ),
        other => anyhow::bail!("a user without bindings listed pods: {other:?}"),
    }

    // The aggregation controller fills `view` from system:aggregate-to-view.
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    wait_for(
        "view to aggregate its rules",
        Duration::from_secs(30),
        || async {
            let view = roles.get("view").await.ok()?;
            view.rules
                .iter()
                .flatten()
                .any(|r| r.resources.iter().flatten().any(|x| x == "pods"))
                .then_some(())
        },
    )
    .await?;

    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "jane-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "jane"}],
    }))?;
    Api::<RoleBinding>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &binding)
        .await?;
    wait_for(
        "the binding to take effect",
        Duration::from_secs(10),
        || async { pods.list(&ListParams::default()).await.ok() },
    )
    .await?;

    // view reads, does not write, and holds in its namespace only.
    let cms: Api<ConfigMap> = Api::namespaced(jane.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}}))?;
    match cms.create(&PostParams::default(), &cm).await {
        Err(kube::Error::Api(s)) => ensure!(s.code == 403, "create refused: {s:?}"),
        other => anyhow::bail!("view created a ConfigMap: {other:?}"),
    }
    match Api::<Pod>::namespaced(jane.clone(), "kube-system")
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) => ensure!(s.code == 403, "other namespace refused: {s:?}"),
        other => anyhow::bail!("a RoleBinding reached another namespace: {other:?}"),
    }

    // The same answers through SelfSubjectAccessReview.
    let reviews: Api<SelfSubjectAccessReview> = Api::all(jane.clone());
    for (verb, ns, want) in [
        ("list", "default", true),
        ("create", "default", false),
        ("list", "kube-system", false),
    ] {
        let r = reviews
            .create(&PostParams::default(), &can_i(verb, "pods", ns))
            .await?;
        ensure!(
            r.status.as_ref().map(|s| s.allowed) == Some(want),
            "can-i {verb} pods -n {ns}: {:?}",
            r.status
        );
    }

    // A namespace admin manages Roles and RoleBindings there, but grants nothing it lacks.
    let team: serde_json::Value = json!({"metadata": {"name": "team"}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .create(&PostParams::default(), &serde_json::from_value(team)?)
        .await?;
    let admin_binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "jane-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "jane"}],
    }))?;
    Api::<RoleBinding>::namespaced(admin.clone(), "team")
        .create(&PostParams::default(), &admin_binding)
        .await?;
    let jane_roles: Api<Role> = Api::namespaced(jane.clone(), "team");
    let role = |name: &str, resource: &str| -> Result<Role> {
        Ok(serde_json::from_value(json!({"metadata": {"name": name},
            "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": [resource]}]}))?)
    };
    let last_error = std::sync::Mutex::new(String::new());
    wait_for(
        "jane to administer team",
        // The binding reaches the authorizer's watch-fed cache; under the full suite's load
        // (a browser test beside it) that has taken more than 30 s on a 2-core machine.
        Duration::from_secs(90),
        || async {
            match jane_roles
                .create(&PostParams::default(), &role("pod-reader", "pods").ok()?)
                .await
            {
                Ok(r) => Some(r),
                Err(e) => {
                    *last_error.lock().expect("lock") = e.to_string();
                    None
                }
            }
        },
    )
    .await
    .with_context(|| format!("the last refusal: {}", last_error.lock().expect("lock")))?;
    match jane_roles
        .create(&PostParams::default(), &role("node-reader", "nodes")?)
        .await
    {
        Err(kube::Error::Api(s)) => ensure!(
            s.code == 403
                && s.message
                    .contains("is attempting to grant RBAC permissions not currently held"),
            "escalation refused: {s:?}"
        ),
        other => anyhow::bail!("a namespace admin granted what it lacks: {other:?}"),
    }
    let to_cluster_admin: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "jane-root"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "jane"}],
    }))?;
    match Api::<RoleBinding>::namespaced(jane.clone(), "team")
        .create(&PostParams::default(), &to_cluster_admin)
        .await
    {
        Err(kube::Error::Api(s)) => ensure!(s.code == 403, "binding cluster-admin refused: {s:?}"),
        other => anyhow::bail!("a namespace admin bound cluster-admin: {other:?}"),
    }

    // kubectl, as users check their rights.
    let Some(kubectl) = kubectl() else {
        eprintln!("kubectl is not installed: the kubectl half of this test did not run");
        return Ok(());
    };
    let run = |args: &[&str]| {
        std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&jane_kc)
            .args(args)
            .output()
    };
    let out = run(&["auth", "whoami", "-o", "json"])?;
    let who: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    ensure!(
        who["status"]["userInfo"]["username"] == "jane"
            && who["status"]["userInfo"]["groups"] == json!(["devs", "system:authenticated"]),
        "whoami: {who}"
    );
    let out = run(&["auth", "can-i", "list", "pods"])?;
    ensure!(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "yes");
    let out = run(&["auth", "can-i", "delete", "pods"])?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "no");
    let out = run(&["auth", "can-i", "--list"])?;
    let list = String::from_utf8_lossy(&out.stdout);
    ensure!(
        list.lines()
            .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "can-i --list:\n{list}"
    );

    // Impersonation: the admin may act as jane; jane may not act as anyone.
    let as_admin = |args: &[&str]| {
        std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(up.kubeconfig())
            .args(args)
            .output()
    };
    let out = as_admin(&["auth", "can-i", "list", "pods", "--as", "jane"])?;
    ensure!(String::from_utf8_lossy(&out.stdout).trim() == "yes");
    let out = as_admin(&["get", "secrets", "--as", "jane"])?;
    ensure!(
        String::from_utf8_lossy(&out.stderr)
            .contains("User \"jane\" cannot list resource \"secrets\""),
        "as jane: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["get", "pods", "--as", "bob"])?;
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains(
            "users \"bob\" is forbidden: User \"jane\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        ),
        "jane as bob: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A kubeconfig like the admin's, with `token` instead of the admin token.
fn token_kubeconfig(up: &Process, token: &str) -> Result<std::path::PathBuf> {
    let admin = std::fs::read_to_string(up.kubeconfig())?;
    let with: String = admin
        .lines()
        .map(|l| match l.trim().strip_prefix("token: ") {
            Some(_) => format!("    token: {token}"),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = up
        .kubeconfig()
        .with_file_name(format!("token-{}.kubeconfig", &token[token.len() - 8..]));
    std::fs::write(&path, with)?;
    Ok(path)
}

#[tokio::test]
async fn a_service_account_token_should_act_as_its_account_while_the_account_exists() -> Result<()>
{
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let up = Process::up_in(dir.path(), &["--no-wasmlet"]).await?;
    let admin = up.client().await?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}}))?,
        )
        .await?;
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(admin.clone(), "team");
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "ci"}}))?,
        )
        .await?;
    let path = "/api/v1/namespaces/team/serviceaccounts/ci/token";
    let request = |seconds: i64| {
        serde_json::to_vec(
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}}),
        )
    };
    let (code, short) = wasmkube_tests::raw(
        &admin,
        "POST",
        path,
        "application/json",
        "application/json",
        &request(60)?,
    )
    .await?;
    ensure!(
        code == 422
            && short["message"]
                .as_str()
                .unwrap_or_default()
                .contains("less than 10 minutes"),
        "{short}"
    );
    let (code, answer) = wasmkube_tests::raw(
        &admin,
        "POST",
        path,
        "application/json",
        "application/json",
        &request(1200)?,
    )
    .await?;
    ensure!(code == 201, "token request: {answer}");
    let token = answer["status"]["token"]
        .as_str()
        .context("a token")?
        .to_owned();
    ensure!(
        answer["status"]["expirationTimestamp"].is_string(),
        "{answer}"
    );

    let ci = client_for(&token_kubeconfig(&up, &token)?).await?;
    let (code, who) = wasmkube_tests::raw(
        &ci,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        "application/json",
        "application/json",
        br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
    )
    .await?;
    ensure!(code == 201, "whoami: {who}");
    ensure!(
        who["status"]["userInfo"]
            == json!({"username": "system:serviceaccount:team:ci",
                      "groups": ["system:serviceaccounts", "system:serviceaccounts:team", "system:authenticated"]}),
        "{who}"
    );
    let pods: Api<Pod> = Api::namespaced(ci.clone(), "team");
    ensure!(
        matches!(pods.list(&ListParams::default()).await, Err(kube::Error::Api(ref s)) if s.code == 403),
        "no binding, no pods"
    );
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "ci-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": "team"}],
    }))?;
    Api::<RoleBinding>::namespaced(admin.clone(), "team")
        .create(&PostParams::default(), &binding)
        .await?;
    wait_for(
        "the account's binding to take effect",
        Duration::from_secs(10),
        || async { pods.list(&ListParams::default()).await.ok() },
    )
    .await?;

    // The issuer's keys verify the token (OIDC discovery).
    let (code, oidc) = wasmkube_tests::raw(
        &ci,
        "GET",
        "/.well-known/openid-configuration",
        "application/json",
        "application/json",
        b"",
    )
    .await?;
    ensure!(
        code == 200
            && oidc["jwks_uri"]
                .as_str()
                .is_some_and(|u| u.ends_with("/openid/v1/jwks")),
        "{oidc}"
    );
    let (code, jwks) = wasmkube_tests::raw(
        &ci,
        "GET",
        "/openid/v1/jwks",
        "application/json",
        "application/json",
        b"",
    )
    .await?;
    ensure!(code == 200 && jwks["keys"][0]["alg"] == "ES256", "{jwks}");

    // A deleted account's tokens stop working.
    accounts.delete("ci", &Default::default()).await?;
    wait_for(
        "the token to be refused",
        Duration::from_secs(10),
        || async {
            match pods.list(&ListParams::default()).await {
                Err(kube::Error::Api(s)) if s.code == 401 => Some(()),
                _ => None,
            }
        },
    )
    .await?;

    if let Some(kubectl) = kubectl() {
        accounts
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "deploy"}}))?,
            )
            .await?;
        let out = std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(up.kubeconfig())
            .args([
                "create",
                "token",
                "deploy",
                "-n",
                "team",
                "--duration",
                "20m",
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "kubectl create token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout)?.trim().to_owned();
        let out = std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(token_kubeconfig(&up, &token)?)
            .args([
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ])
            .output()?;
        ensure!(
            String::from_utf8_lossy(&out.stdout) == "system:serviceaccount:team:deploy",
            "whoami with a kubectl-made token: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("kubectl is not installed: kubectl create token was not tried");
    }
    Ok(())
}
