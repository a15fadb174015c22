//! Real kubectl against `wasmkube up`: apply, get -o yaml, get -w, describe, delete, diff,
//! server-side apply. Skipped with a printed reason when kubectl is not installed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use wasmkube_tests::{Process, free_port};

fn kubectl_path() -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", "command -v kubectl"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<(bool, String)> {
    kubectl_as(Path::new("kubectl"), kubeconfig, args)
}

/// Runs a given kubectl binary; returns success and stdout+stderr.
fn kubectl_as(bin: &Path, kubeconfig: &Path, args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(bin)
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .context("run kubectl")?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

const MANIFEST: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.local/web:1
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  greeting: hello
"#;

#[tokio::test]
async fn kubectl_should_work_end_to_end() -> Result<()> {
    wasmkube_tests::init_tracing();
    let Some(path) = kubectl_path() else {
        println!(
            "SKIPPED kubectl_should_work_end_to_end: kubectl is not installed on this machine"
        );
        return Ok(());
    };
    let (_, version) = kubectl(Path::new("/dev/null"), &["version", "--client"])?;
    tracing::info!(%path, version = %version.lines().next().unwrap_or_default(), "--- using kubectl");
    let (_dir, up, m) = up_with_manifest().await?;
    let kc = up.kubeconfig();
    let m = m.as_str();

    let (ok, out) = kubectl(&kc, &["apply", "-f", m])?;
    ensure!(
        ok && out.contains("deployment.apps/web created") && out.contains("service/web created"),
        "apply: {out}"
    );
    let (ok, out) = kubectl(&kc, &["apply", "-f", m])?;
    ensure!(
        ok && out.contains("deployment.apps/web unchanged"),
        "re-apply: {out}"
    );

    let (ok, out) = kubectl(&kc, &["get", "deployment", "web", "-o", "yaml"])?;
    ensure!(
        ok && out.contains("replicas: 2")
            && out.contains("kubectl.kubernetes.io/last-applied-configuration"),
        "get -o yaml: {out}"
    );
    let (ok, out) = kubectl(&kc, &["get", "deploy,svc,cm"])?;
    ensure!(
        ok && out.contains("deployment.apps/web")
            && out.contains("0/2")
            && out.contains("service/web")
            && out.contains("80/TCP"),
        "get: {out}"
    );

    tracing::info!("--- get -w sees a change");
    let mut watch = Command::new("kubectl")
        .env("KUBECONFIG", &kc)
        .args([
            "get",
            "configmap",
            "settings",
            "-w",
            "-o",
            "jsonpath={.data.greeting}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = watch.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    ensure!(
        rx.recv_timeout(Duration::from_secs(20))? == "hello",
        "initial state"
    );
    let (ok, out) = kubectl(
        &kc,
        &[
            "patch",
            "configmap",
            "settings",
            "-p",
            r#"{"data":{"greeting":"bonjour"}}"#,
        ],
    )?;
    ensure!(ok, "patch: {out}");
    ensure!(
        rx.recv_timeout(Duration::from_secs(20))? == "bonjour",
        "get -w shows the change"
    );
    let _ = watch.kill();
    let _ = watch.wait();

    let (ok, out) = kubectl(&kc, &["describe", "deployment", "web"])?;
    ensure!(
        ok && out.contains("Replicas:")
            && out.contains("2 desired")
            && out.contains("registry.local/web:1"),
        "describe: {out}"
    );

    tracing::info!("--- diff, server-side dry run and server-side apply");
    std::fs::write(m, MANIFEST.replace("replicas: 2", "replicas: 3"))?;
    let (ok, out) = kubectl(&kc, &["diff", "-f", m])?;
    ensure!(
        !ok && out.contains("-  replicas: 2") && out.contains("+  replicas: 3"),
        "diff: {out}"
    );
    let (ok, out) = kubectl(&kc, &["apply", "-f", m, "--dry-run=server"])?;
    ensure!(ok && out.contains("(server dry run)"), "dry run: {out}");
    let (_, out) = kubectl(
        &kc,
        &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"],
    )?;
    ensure!(out == "2", "dry run changed nothing: {out}");
    let (ok, out) = kubectl(
        &kc,
        &["apply", "--server-side", "--force-conflicts", "-f", m],
    )?;
    ensure!(
        ok && out.contains("serverside-applied"),
        "server-side apply: {out}"
    );
    let (_, out) = kubectl(
        &kc,
        &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"],
    )?;
    ensure!(out == "3", "server-side apply took effect: {out}");
    let (ok, out) = kubectl(&kc, &["scale", "deploy", "web", "--replicas=1"])?;
    ensure!(ok && out.contains("scaled"), "scale: {out}");

    tracing::info!("--- explain reads the OpenAPI schema");
    let (ok, out) = kubectl(&kc, &["explain", "deployment.spec.replicas"])?;
    ensure!(
        ok && out.contains("replicas") && out.contains("integer"),
        "explain: {out}"
    );

    tracing::info!("--- generators (kubectl 1.32+ sends these as protobuf)");
    for args in generators("team-a") {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = kubectl(&kc, &args)?;
        ensure!(ok && out.contains("created"), "kubectl {args:?}: {out}");
    }
    let (ok, out) = kubectl(
        &kc,
        &[
            "-n",
            "team-a",
            "get",
            "secret",
            "pw",
            "-o",
            "jsonpath={.type} {.data.pw}",
        ],
    )?;
    ensure!(
        ok && out == "Opaque aHVudGVyMg==",
        "secret defaults and data: {out}"
    );
    let (ok, out) = kubectl(
        &kc,
        &[
            "-n",
            "team-a",
            "get",
            "svc",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.spec.type} {end}",
        ],
    )?;
    ensure!(
        ok && out.contains("edge=NodePort")
            && out.contains("lb=LoadBalancer")
            && out.contains("ext=ExternalName"),
        "service generators: {out}"
    );

    let (ok, out) = kubectl(&kc, &["delete", "-f", m])?;
    ensure!(
        ok && out.contains("deployment.apps \"web\" deleted"),
        "delete: {out}"
    );
    let (ok, out) = kubectl(&kc, &["get", "deploy", "web"])?;
    ensure!(!ok && out.contains("NotFound"), "gone: {out}");
    Ok(())
}

/// `wasmkube up` in a temp dir with [`MANIFEST`] written beside it.
async fn up_with_manifest() -> Result<(tempfile::TempDir, Process, String)> {
    let dir = tempfile::tempdir()?;
    let up = Process::up(&dir.path().join("data"), free_port()).await?;
    let manifest = dir.path().join("app.yaml");
    std::fs::write(&manifest, MANIFEST)?;
    let m = manifest.to_str().expect("utf-8 path").to_string();
    Ok((dir, up, m))
}

/// Every `kubectl create` generator for a kind wasmkube serves, into namespace `ns` (created
/// first; the PriorityClass is named after it).
fn generators(ns: &str) -> Vec<Vec<String>> {
    let high = format!("{ns}-high");
    let cmds: Vec<Vec<&str>> = vec![
        vec!["create", "namespace", ns],
        vec!["create", "configmap", "conf", "--from-literal=a=1"],
        vec![
            "create",
            "secret",
            "generic",
            "pw",
            "--from-literal=pw=hunter2",
        ],
        vec![
            "create",
            "secret",
            "docker-registry",
            "pull",
            "--docker-server=registry.local",
            "--docker-username=u",
            "--docker-password=p",
        ],
        vec!["create", "serviceaccount", "robot"],
        vec![
            "create",
            "deployment",
            "api",
            "--image=registry.local/api:1",
            "--replicas=2",
            "--port=8080",
        ],
        vec![
            "create",
            "job",
            "once",
            "--image=registry.local/job:1",
            "--",
            "run",
            "--fast",
        ],
        vec![
            "create",
            "cronjob",
            "tick",
            "--image=registry.local/job:1",
            "--schedule=*/5 * * * *",
        ],
        vec!["create", "service", "clusterip", "api", "--tcp=80:8080"],
        vec!["create", "service", "nodeport", "edge", "--tcp=80:8080"],
        vec!["create", "service", "loadbalancer", "lb", "--tcp=443:8443"],
        vec![
            "create",
            "service",
            "externalname",
            "ext",
            "--external-name=example.invalid",
        ],
        vec!["create", "ingress", "web", "--rule=web.example/*=api:80"],
        vec![
            "create",
            "priorityclass",
            high.as_str(),
            "--value=1000",
            "--description=generated",
        ],
    ];
    cmds.into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut args: Vec<String> = Vec::new();
            // The namespace itself and the cluster-scoped PriorityClass take no `-n`.
            if i != 0 && c[1] != "priorityclass" {
                args.extend(["-n".to_owned(), ns.to_owned()]);
            }
            args.extend(c.into_iter().map(str::to_owned));
            args
        })
        .collect()
}

/// Every `kubectl.1.NN` installed beside the resolved `kubectl` (this machine has 1.27–1.33).
pub(crate) fn kubectl_versions() -> Vec<std::path::PathBuf> {
    let Some(path) = kubectl_path() else {
        return Vec::new();
    };
    let Ok(real) = std::fs::canonicalize(&path) else {
        return Vec::new();
    };
    let Some(dir) = real.parent() else {
        return Vec::new();
    };
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("kubectl.1."))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[tokio::test]
async fn every_installed_kubectl_version_should_apply_get_describe_and_delete() -> Result<()> {
    wasmkube_tests::init_tracing();
    let versions = kubectl_versions();
    if versions.is_empty() {
        println!(
            "SKIPPED every_installed_kubectl_version...: no kubectl.1.NN binaries beside kubectl"
        );
        return Ok(());
    }
    let (_dir, up, m) = up_with_manifest().await?;
    let kc = up.kubeconfig();
    let m = m.as_str();
    for bin in versions {
        let name = bin
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let ns = name.replace("kubectl.", "v").replace('.', "-");
        tracing::info!("--- {name}");
        for args in [
            vec!["apply", "-f", m],
            vec!["get", "deployment", "web", "-o", "yaml"],
            vec!["describe", "deployment", "web"],
            vec!["explain", "pod.spec.containers.image"],
            vec!["delete", "-f", m],
        ] {
            let (ok, out) = kubectl_as(&bin, &kc, &args)?;
            ensure!(ok, "{name} {args:?}: {out}");
        }
        // Every generator of a served kind (JSON before 1.32, protobuf from 1.32 on).
        for args in generators(&ns) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, out) = kubectl_as(&bin, &kc, &args)?;
            ensure!(ok && out.contains("created"), "{name} {args:?}: {out}");
        }
    }
    Ok(())
}
