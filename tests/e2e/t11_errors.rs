//! Bad input gets a Kubernetes `Status` with a 4xx code naming what is wrong — never a 5xx —
//! and leaves nothing behind.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::{apps, core};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use wasmkube_tests::{Cluster, raw};

fn status_of(v: &Value) -> (&str, &str) {
    (
        v["kind"].as_str().unwrap_or_default(),
        v["reason"].as_str().unwrap_or_default(),
    )
}

#[tokio::test]
async fn invalid_objects_should_get_422_listing_each_field() -> Result<()> {
    let cluster = Cluster::start().await?;
    let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad_Name"},
        "spec": {"restartPolicy": "Sometimes", "containers": [{"name": "a", "image": ""}, {"name": "a", "image": "x"}]}});
    let (code, st) = raw(
        &cluster.client,
        "POST",
        "/api/v1/namespaces/default/pods",
        "application/json",
        "application/json",
        body.to_string().as_bytes(),
    )
    .await?;
    ensure!(code == 422, "got {code}: {st}");
    ensure!(status_of(&st) == ("Status", "Invalid"));
    let fields: Vec<&str> = st["details"]["causes"]
        .as_array()
        .expect("causes")
        .iter()
        .map(|c| c["field"].as_str().unwrap_or_default())
        .collect();
    for f in [
        "metadata.name",
        "spec.restartPolicy",
        "spec.containers[0].image",
        "spec.containers[1].name",
    ] {
        ensure!(fields.contains(&f), "cause for {f} in {fields:?}");
    }
    ensure!(
        st["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Pod \"Bad_Name\" is invalid: [")
    );
    let pods: Api<core::v1::Pod> = Api::default_namespaced(cluster.client.clone());
    ensure!(
        pods.list(&Default::default()).await?.items.is_empty(),
        "nothing was stored"
    );

    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let (code, st) = raw(
        &cluster.client,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        "application/json",
        "application/json",
        deploy.to_string().as_bytes(),
    )
    .await?;
    ensure!(
        code == 422 && st["details"]["causes"][0]["field"] == "spec.template.metadata.labels",
        "selector mismatch: {st}"
    );
    cluster.stop().await
}

#[tokio::test]
async fn malformed_requests_should_get_4xx_status() -> Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    let long_manager = format!(
        "/api/v1/namespaces/default/configmaps?fieldManager={}",
        "m".repeat(129)
    );
    let big = "x".repeat(1024 * 1024 + 1);
    let big_configmap =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"k": big}})
            .to_string();
    let big_secret =
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "big"}, "stringData": {"k": big}})
            .to_string();
    /// method, path, content type, body, expected code, expected reason
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [u8], u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            b"{not json",
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            b"[1,2]",
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":"notamap"}"#,
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            br#"{"apiVersion":"apps/v1","kind":"ConfigMap","metadata":{"name":"x"}}"#,
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            "application/json",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"bogus":1}"#,
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            "application/vnd.kubernetes.protobuf",
            b"k8s\x00",
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/vnd.kubernetes.protobuf",
            b"\x00",
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/nope/configmaps",
            "application/json",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#,
            404,
            "NotFound",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?labelSelector=a%20b%20c",
            "application/json",
            b"",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?fieldSelector=spec.bogus%3D1",
            "application/json",
            b"",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?limit=abc",
            "application/json",
            b"",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?continue=garbage",
            "application/json",
            b"",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/widgets",
            "application/json",
            b"",
            404,
            "NotFound",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods/nope",
            "application/json",
            b"",
            404,
            "NotFound",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods?dryRun=Sometimes",
            "application/json",
            br#"{}"#,
            422,
            "Invalid",
        ),
        // Options are validated even when the body is clean (`ValidateCreateOptions`).
        (
            "POST",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Bogus",
            "application/json",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"clean"}}"#,
            422,
            "Invalid",
        ),
        (
            "POST",
            long_manager.as_str(),
            "application/json",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"clean"}}"#,
            422,
            "Invalid",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            ";;;==;",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"clean"}}"#,
            415,
            "UnsupportedMediaType",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            "application/json",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup"},"data":{"a":"1","a":"2"}}"#,
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            big_configmap.as_bytes(),
            422,
            "Invalid",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/secrets",
            "application/json",
            big_secret.as_bytes(),
            422,
            "Invalid",
        ),
    ];
    for (method, path, ct, body, want, reason) in cases {
        let (code, st) = raw(c, method, path, ct, "application/json", body).await?;
        ensure!(
            code == want,
            "{method} {path}: got {code}, want {want}: {st}"
        );
        ensure!(
            status_of(&st) == ("Status", reason),
            "{method} {path}: {st}"
        );
    }

    ensure!(
        cms_named(c, &["clean", "dup", "big"]).await?.is_empty(),
        "refused creates stored nothing"
    );

    tracing::info!("--- patches that do not apply");
    let cms: Api<core::v1::ConfigMap> = Api::default_namespaced(c.clone());
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "p"}, "data": {"a": "1"}}))?,
    )
    .await?;
    let path = "/api/v1/namespaces/default/configmaps/p";
    for (ct, body, want) in [
        ("application/merge-patch+json", &b"{bad"[..], 400),
        (
            "application/json-patch+json",
            br#"[{"op":"remove","path":"/nothere"}]"#,
            400,
        ),
        (
            "application/json-patch+json",
            br#"[{"op":"test","path":"/data/a","value":"2"}]"#,
            422,
        ),
        (
            "application/strategic-merge-patch+json",
            br#"{"data":{"a":{"$patch":"explode"}}}"#,
            400,
        ),
        (
            "application/merge-patch+json",
            br#"{"metadata":{"resourceVersion":"1"}}"#,
            409,
        ),
        ("text/plain", b"x", 415),
        (
            "application/json-patch+json",
            br#"[{"op":"replace","path":"","value":[1]}]"#,
            400,
        ),
        ("application/apply-patch+cbor", b"\xa0", 415),
    ] {
        let (code, st) = raw(c, "PATCH", path, ct, "application/json", body).await?;
        ensure!(
            code == want,
            "{ct} {}: got {code}: {st}",
            String::from_utf8_lossy(body)
        );
        ensure!(st["kind"] == "Status");
    }
    ensure!(
        cms.get("p").await?.data.expect("data")["a"] == "1",
        "failed patches changed nothing"
    );

    tracing::info!("--- no token, wrong token");
    let http = reqwest_like_unauthenticated(&cluster).await?;
    ensure!(http == 401, "no token is 401, got {http}");
    cluster.stop().await
}

/// Which of `names` exist as ConfigMaps in `default`.
async fn cms_named(c: &kube::Client, names: &[&str]) -> Result<Vec<String>> {
    let cms: Api<core::v1::ConfigMap> = Api::default_namespaced(c.clone());
    let mut found = Vec::new();
    for n in names {
        if cms.get_opt(n).await?.is_some() {
            found.push((*n).to_owned());
        }
    }
    Ok(found)
}

#[tokio::test]
async fn error_status_bodies_should_be_encoded_as_kube_apiserver_does() -> Result<()> {
    use http_body_util::BodyExt;
    let cluster = Cluster::start().await?;
    let get = |path: &str| {
        http::Request::get(path)
            .header("accept", "application/json")
            .body(kube::client::Body::empty())
            .expect("request")
    };
    let resp = cluster
        .client
        .send(get("/api/v1/namespaces/default/pods/nope"))
        .await?;
    ensure!(resp.status() == 404);
    let body = resp.into_body().collect().await?.to_bytes();
    // Field order kind, apiVersion, metadata, status, message, reason, details, code; the empty
    // group left out; a trailing newline (clients compare these bytes).
    let want = "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"pods \\\"nope\\\" not found\",\"reason\":\"NotFound\",\"details\":{\"name\":\"nope\",\"kind\":\"pods\"},\"code\":404}\n";
    ensure!(
        body == want.as_bytes(),
        "got {:?}\nwant {want:?}",
        String::from_utf8_lossy(&body)
    );

    tracing::info!("--- headers over 1 MiB get a Status, not a bare connection error");
    let big = http::Request::get("/api/v1/namespaces/default/configmaps")
        .header("accept", "application/json")
        .header("x-big", "a".repeat(1024 * 1024 + 10))
        .body(kube::client::Body::empty())?;
    let resp = cluster.client.send(big).await?;
    ensure!(resp.status() == 431, "status {}", resp.status());
    let st: Value = serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())?;
    ensure!(st["kind"] == "Status" && st["code"] == 431, "{st}");

    tracing::info!("--- what hyper refuses before any handler runs gets a Status too");
    let many: String = (0..2000).map(|i| format!("x-h{i}: v\r\n")).collect();
    let long_name = "n".repeat(100_000);
    for (request, want) in [
        (format!("GET /api HTTP/1.1\r\nhost: a\r\n{many}\r\n"), 431),
        (
            format!("GET /api/v1/namespaces/default/pods/{long_name} HTTP/1.1\r\nhost: a\r\n\r\n"),
            414,
        ),
        (
            "GET /api/v1/\x01 HTTP/1.1\r\nhost: a\r\n\r\n".to_string(),
            400,
        ),
        (
            "POST /api/v1/namespaces HTTP/1.1\r\nhost: a\r\ncontent-length: -1\r\n\r\n".to_string(),
            400,
        ),
    ] {
        let answer = raw_tls(cluster.addr, request.as_bytes()).await?;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        ensure!(
            head.starts_with(&format!("HTTP/1.1 {want} ")),
            "want {want}, got {head}"
        );
        let st: Value = serde_json::from_str(body).with_context(|| format!("body {body:?}"))?;
        ensure!(st["kind"] == "Status" && st["code"] == want, "{st}");
    }

    tracing::info!("--- a client that asks for protobuf first gets it, errors included");
    let resp = cluster
        .client
        .send(
            http::Request::get("/api/v1/namespaces/default/pods/nope")
                .header(
                    "accept",
                    "application/vnd.kubernetes.protobuf, application/json",
                )
                .body(kube::client::Body::empty())?,
        )
        .await?;
    ensure!(resp.status() == 404);
    ensure!(
        resp.headers().get("content-type").map(|v| v.as_bytes())
            == Some(b"application/vnd.kubernetes.protobuf".as_slice())
    );
    let body = resp.into_body().collect().await?.to_bytes();
    ensure!(body.starts_with(b"k8s\0"), "the protobuf envelope");

    tracing::info!("--- deleting a Service answers the Service; a ConfigMap a success Status");
    let svcs: Api<core::v1::Service> = Api::default_namespaced(cluster.client.clone());
    svcs.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "gone"}, "spec": {"ports": [{"port": 80}]}}),
        )?,
    )
    .await?;
    let (code, deleted) = raw(
        &cluster.client,
        "DELETE",
        "/api/v1/namespaces/default/services/gone",
        "application/json",
        "application/json",
        b"",
    )
    .await?;
    ensure!(
        code == 200 && deleted["kind"] == "Service" && deleted["metadata"]["name"] == "gone",
        "DELETE of a Service returns the deleted Service: {deleted}"
    );
    let cms: Api<core::v1::ConfigMap> = Api::default_namespaced(cluster.client.clone());
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "gone"}}))?,
    )
    .await?;
    let resp = cluster
        .client
        .send(
            http::Request::delete("/api/v1/namespaces/default/configmaps/gone")
                .body(kube::client::Body::empty())
                .expect("request"),
        )
        .await?;
    let body = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    ensure!(
        text.starts_with(r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","details":{"name":"gone","kind":"configmaps","uid":""#)
            && text.ends_with("\"}}\n"),
        "a success Status without code or empty fields: {text}"
    );
    cluster.stop().await
}

/// Sends a request with a wrong bearer token through a kube client built on a tampered config.
async fn reqwest_like_unauthenticated(cluster: &Cluster) -> Result<u16> {
    let text = std::fs::read_to_string(&cluster.kubeconfig)?.replace(&cluster.token, "wrong-token");
    let path = cluster.dir.path().join("bad-kubeconfig");
    std::fs::write(&path, text)?;
    let client = wasmkube_tests::client_for(&path).await?;
    let (code, st) = raw(
        &client,
        "GET",
        "/api/v1/namespaces",
        "application/json",
        "application/json",
        b"",
    )
    .await?;
    anyhow::ensure!(st["reason"] == "Unauthorized");
    Ok(code)
}

#[tokio::test]
async fn immutable_fields_and_dry_run_should_be_honoured() -> Result<()> {
    let cluster = Cluster::start().await?;
    let deploys: Api<apps::v1::Deployment> = Api::default_namespaced(cluster.client.clone());
    let d: apps::v1::Deployment = serde_json::from_value(
        crate::fixtures::all("imm")
            .into_iter()
            .find(|f| f.0 == "Deployment")
            .expect("fixture")
            .2,
    )?;
    deploys.create(&PostParams::default(), &d).await?;
    let err = deploys
        .patch("imm", &PatchParams::default(), &Patch::Merge(json!({"spec": {"selector": {"matchLabels": {"app": "other"}}, "template": {"metadata": {"labels": {"app": "other"}}}}})))
        .await
        .expect_err("selector is immutable");
    match err {
        kube::Error::Api(s) => ensure!(
            s.code == 422 && s.message.contains("spec.selector"),
            "{s:?}"
        ),
        other => anyhow::bail!("unexpected {other:?}"),
    }

    let cms: Api<core::v1::ConfigMap> = Api::default_namespaced(cluster.client.clone());
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let out = cms
        .create(
            &dry,
            &serde_json::from_value(json!({"metadata": {"name": "dry"}}))?,
        )
        .await?;
    ensure!(
        out.metadata.uid.is_some(),
        "dry run returns the would-be object"
    );
    ensure!(
        cms.get_opt("dry").await?.is_none(),
        "dry run stores nothing"
    );
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "dry"}, "data": {"a": "1"}}))?,
    )
    .await?;
    match cms
        .create(
            &dry,
            &serde_json::from_value(json!({"metadata": {"name": "dry"}}))?,
        )
        .await
    {
        Err(kube::Error::Api(s)) => ensure!(
            s.code == 409 && s.reason == "AlreadyExists",
            "a dry-run create of a taken name answers as the create would: {s:?}"
        ),
        other => anyhow::bail!("a dry-run create of a taken name: {other:?}"),
    }
    let pp = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let patched = cms
        .patch("dry", &pp, &Patch::Merge(json!({"data": {"a": "2"}})))
        .await?;
    ensure!(patched.data.as_ref().expect("data")["a"] == "2");
    ensure!(
        cms.get("dry").await?.data.expect("data")["a"] == "1",
        "dry-run patch stores nothing"
    );
    let dp = kube::api::DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    cms.delete("dry", &dp).await?;
    ensure!(
        cms.get_opt("dry").await?.is_some(),
        "dry-run delete deletes nothing"
    );

    tracing::info!("--- unknown fields warn by default and fail with Strict");
    let (code, _) = raw(
        &cluster.client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        "application/json",
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"lax"},"bogus":1}"#,
    )
    .await?;
    ensure!(
        code == 201,
        "unknown fields are dropped with a warning by default"
    );
    cluster.stop().await
}

#[tokio::test]
async fn deletecollection_health_and_owner_references_should_behave() -> Result<()> {
    let cluster = Cluster::start().await?;
    let cms: Api<core::v1::ConfigMap> = Api::default_namespaced(cluster.client.clone());
    for (name, team) in [("a", "x"), ("b", "x"), ("c", "y")] {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name, "labels": {"team": team}}}))?,
        )
        .await?;
    }
    tracing::info!("--- deletecollection honours dryRun and the selector");
    let lp = kube::api::ListParams::default().labels("team=x");
    let dry = kube::api::DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    cms.delete_collection(&dry, &lp).await?;
    ensure!(
        cms.list(&kube::api::ListParams::default().labels("team"))
            .await?
            .items
            .len()
            == 3,
        "dry run deletes nothing"
    );
    cms.delete_collection(&Default::default(), &lp).await?;
    let left: Vec<String> = cms
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    ensure!(
        left == ["c"],
        "only the selected objects are gone: {left:?}"
    );

    tracing::info!("--- health endpoints answer without credentials");
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let (code, _) = raw(
            &cluster.client,
            "GET",
            path,
            "application/json",
            "application/json",
            b"",
        )
        .await?;
        ensure!(code == 200, "{path}: {code}");
    }

    tracing::info!("--- owner references are validated");
    let (code, st) = raw(
        &cluster.client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        "application/json",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "", "controller": true},
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "d", "uid": "u2", "controller": true}]}})
        .to_string()
        .as_bytes(),
    )
    .await?;
    ensure!(code == 422, "{st}");
    let fields: Vec<&str> = st["details"]["causes"]
        .as_array()
        .expect("causes")
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    ensure!(
        fields.contains(&"metadata.ownerReferences[0].uid")
            && fields.contains(&"metadata.ownerReferences"),
        "{fields:?}"
    );
    cluster.stop().await
}

/// Sends `request` as raw bytes over TLS (no HTTP library in between) and reads the whole
/// answer until the server closes the connection.
async fn raw_tls(addr: std::net::SocketAddr, request: &[u8]) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")?;
    let mut tls = wasmkube_client::tls::insecure_connector()
        .connect(name, tcp)
        .await?;
    tls.write_all(request).await?;
    let mut out = Vec::new();
    // The server may close before reading all of a refused request: what it wrote still counts.
    let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
