//! `pods/exec` end to end: kube-rs's WebSocket exec (v5.channel.k8s.io) and real kubectl,
//! through the API server's upgrade proxy to the wasmlet, which runs the container's own
//! command component with the exec'd arguments beside the running instance.

use anyhow::{Context, Result, ensure};
use kube::api::{AttachParams, AttachedProcess};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmkube_tests::Cluster;

use crate::t50_wasmlet::{create_pod, phase, status_of, wait_pod};

/// Everything an exec printed, and its final status.
pub(crate) async fn finish(
    mut p: AttachedProcess,
) -> Result<(
    String,
    String,
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Status,
)> {
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = p.stdout() {
        s.read_to_string(&mut out).await?;
    }
    if let Some(mut s) = p.stderr() {
        s.read_to_string(&mut err).await?;
    }
    let status = p
        .take_status()
        .context("a status channel")?
        .await
        .context("a final status")?;
    Ok((out, err, status))
}

#[tokio::test]
async fn exec_runs_commands_in_a_running_container_with_its_volumes_and_streams() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let http = cluster.push_sample("http-hello").await?;
    let hello = cluster.push_sample("hello").await?;
    let c = &cluster.client;
    let pods = create_pod(
        c,
        &node.name,
        "box",
        json!({
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [
                {"name": "main", "image": image, "args": ["forever"],
                 "env": [{"name": "GREETING", "value": "hi"}],
                 "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
                {"name": "web", "image": http}
            ]
        }),
    )
    .await?;
    wait_pod(&pods, "box", "running", |p| phase(p) == "Running").await?;
    let stdout = AttachParams::default().container("main").stderr(true);

    // argv, env and the container's volume, seen by a second instance beside the first.
    let p = pods
        .exec(
            "box",
            [
                "/toolbox",
                "args",
                "--",
                "write",
                "/scratch/note",
                "$GREETING",
            ],
            &stdout,
        )
        .await?;
    let (out, _, status) = finish(p).await?;
    assert_eq!(out, "/toolbox args -- write /scratch/note $GREETING\n");
    assert_eq!(status.status.as_deref(), Some("Success"));
    let p = pods
        .exec(
            "box",
            ["/toolbox", "cat", "/scratch/note", "--", "env"],
            &stdout,
        )
        .await?;
    let (out, _, _) = finish(p).await?;
    assert!(
        out.starts_with("$GREETING\n"),
        "the file the first exec wrote: {out:?}"
    );
    assert!(
        out.contains("GREETING=hi\n"),
        "the container's env: {out:?}"
    );

    // Standard input, to its end (v5 closes stdin with a close signal).
    let mut p = pods
        .exec(
            "box",
            ["/toolbox", "cat", "-"],
            &AttachParams::default()
                .container("main")
                .stdin(true)
                .stderr(false),
        )
        .await?;
    let mut stdin = p.stdin().context("stdin")?;
    stdin.write_all(b"line one\nline two\n").await?;
    stdin.shutdown().await?;
    drop(stdin);
    let (out, _, status) = finish(p).await?;
    assert_eq!(out, "line one\nline two\n\n");
    assert_eq!(status.status.as_deref(), Some("Success"));

    // More stdin than the session queues (64 chunks): the session waits for the guest to read,
    // and every byte arrives in order.
    let mut p = pods
        .exec(
            "box",
            ["/toolbox", "cat", "-"],
            &AttachParams::default()
                .container("main")
                .stdin(true)
                .stderr(false),
        )
        .await?;
    let mut stdin = p.stdin().context("stdin")?;
    let chunk: String = (0..1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut sent = String::new();
    for i in 0..400 {
        let line = format!("{i:04} {chunk}\n");
        stdin.write_all(line.as_bytes()).await?;
        sent.push_str(&line);
    }
    stdin.shutdown().await?;
    drop(stdin);
    let (out, _, status) = finish(p).await?;
    assert_eq!(status.status.as_deref(), Some("Success"));
    assert!(
        out.starts_with(&sent),
        "all {} bytes of stdin came back in order ({} came)",
        sent.len(),
        out.len()
    );

    // A failing command: stderr, and the exit code in the status as kubectl reads it.
    let p = pods
        .exec("box", ["/toolbox", "cat", "/nope"], &stdout)
        .await?;
    let (_, err, status) = finish(p).await?;
    assert!(err.contains("toolbox cat: No such file"), "stderr: {err:?}");
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let causes = status.details.and_then(|d| d.causes).unwrap_or_default();
    assert_eq!(causes[0].reason.as_deref(), Some("ExitCode"));
    assert_eq!(causes[0].message.as_deref(), Some("1"));

    // A wasi:http container has no command to run: a clear failure.
    let p = pods
        .exec("box", ["/x"], &AttachParams::default().container("web"))
        .await?;
    let (_, _, status) = finish(p).await?;
    assert!(
        status.message.unwrap_or_default().contains("wasi:http"),
        "the reason is given"
    );

    // A finished pod, an unknown container, no command: 4xx before any upgrade.
    let done = create_pod(
        c,
        &node.name,
        "done",
        json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": hello}]}),
    )
    .await?;
    wait_pod(&done, "done", "succeeded", |p| phase(p) == "Succeeded").await?;
    for (pod, container, command) in [
        ("done", "c", vec!["/x"]),
        ("box", "nope", vec!["/x"]),
        ("box", "main", vec![]),
    ] {
        let err = pods
            .exec(pod, command, &AttachParams::default().container(container))
            .await
            .err()
            .with_context(|| format!("exec into {pod}/{container} is refused"))?;
        let text = format!("{err:#}");
        ensure!(
            text.contains("400") || text.contains("Bad Request"),
            "{pod}/{container}: {text}"
        );
    }

    // Real kubectl (1.30+ streams over WebSockets by default).
    match wasmkube_tests::kubectl() {
        None => {
            eprintln!("SKIPPED: kubectl is not installed; exec is covered through kube-rs above")
        }
        Some(kubectl) => {
            // The API server runs in this process: kubectl must not block its runtime.
            let run = |args: &[&str]| {
                tokio::process::Command::new(&kubectl)
                    .arg("--kubeconfig")
                    .arg(&cluster.kubeconfig)
                    .args(args)
                    .output()
            };
            let out = run(&[
                "exec",
                "box",
                "-c",
                "main",
                "--",
                "/toolbox",
                "cat",
                "/scratch/note",
            ])
            .await?;
            ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout), "$GREETING\n\n");
            let out = run(&[
                "exec", "box", "-c", "main", "--", "/toolbox", "cat", "/nope",
            ])
            .await?;
            assert_eq!(out.status.code(), Some(1), "the command's exit code");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("command terminated with exit code 1"), "{err}");
        }
    }
    let pod = pods.get("box").await?;
    assert_eq!(
        status_of(&pod, "main").map(|s| s.restart_count),
        Some(0),
        "exec never disturbs the running instance"
    );
    node.stop().await
}

/// Reads `stdout` until it has printed `want`, for up to 30 s.
async fn read_until(stdout: &mut (impl AsyncReadExt + Unpin), want: &str) -> Result<String> {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while !seen.contains(want) {
            let n = stdout.read(&mut buf).await?;
            ensure!(n > 0, "stdout ended before {want:?}; saw {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Ok(())
    })
    .await
    .with_context(|| format!("{want:?} within 30 s; saw {seen:?}"))??;
    Ok(seen)
}

#[tokio::test]
async fn attach_joins_a_running_container_and_older_kubectl_streams_over_spdy() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    // `lines` echoes each line of stdin until it ends; `stdinOnce` ends it with the first session.
    let cat = |name: String, once: bool| {
        let (c, node, image) = (c.clone(), node.name.clone(), image.clone());
        async move {
            create_pod(
                &c,
                &node,
                &name,
                json!({
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": image, "args": ["lines"],
                                    "stdin": true, "stdinOnce": once}]
                }),
            )
            .await
        }
    };
    let pods = cat("once".into(), true).await?;
    cat("kept".into(), false).await?;
    create_pod(
        c,
        &node.name,
        "box",
        json!({"containers": [{"name": "main", "image": image, "args": ["forever"]}]}),
    )
    .await?;
    for name in ["once", "kept", "box"] {
        wait_pod(&pods, name, "running", |p| phase(p) == "Running").await?;
    }
    let attach = AttachParams::default()
        .container("main")
        .stdin(true)
        .stdout(true)
        .stderr(false);

    // kube-rs (WebSocket v5): what is typed reaches the running instance, its output comes
    // back; closing stdin under stdinOnce ends the container, and the session with Success.
    let mut p = pods.attach("once", &attach).await?;
    let mut stdin = p.stdin().context("stdin")?;
    let mut stdout = p.stdout().context("stdout")?;
    stdin.write_all(b"hello attach\n").await?;
    read_until(&mut stdout, "hello attach\n").await?;
    stdin.shutdown().await?;
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await?;
    let status = p
        .take_status()
        .context("a status channel")?
        .await
        .context("a final status")?;
    assert_eq!(status.status.as_deref(), Some("Success"), "{status:?}");
    wait_pod(&pods, "once", "succeeded once its stdin closed", |p| {
        phase(p) == "Succeeded"
    })
    .await?;

    // Without stdinOnce stdin stays open across sessions: a second one reaches the same instance.
    for word in ["first", "second"] {
        let mut p = pods.attach("kept", &attach).await?;
        let mut stdin = p.stdin().context("stdin")?;
        let mut stdout = p.stdout().context("stdout")?;
        stdin.write_all(format!("{word}\n").as_bytes()).await?;
        let seen = read_until(&mut stdout, &format!("{word}\n")).await?;
        assert!(
            !seen.contains("first") || word == "first",
            "output from before the session is not replayed: {seen:?}"
        );
        stdin.shutdown().await?;
        drop((stdin, stdout, p));
    }
    let kept = pods.get("kept").await?;
    assert_eq!(
        phase(&kept),
        "Running",
        "closing one session's stdin ends nothing"
    );

    // Real kubectl: 1.27 streams exec and attach over SPDY/3.1, 1.33 over WebSockets.
    let versions: Vec<_> = ["1.27", "1.33"]
        .into_iter()
        .filter_map(|v| wasmkube_tests::kubectl_version(v).map(|bin| (v, bin)))
        .collect();
    if versions.is_empty() {
        eprintln!("SKIPPED: kubectl is not installed; attach is covered through kube-rs above");
    }
    for (version, kubectl) in versions {
        let run = |args: Vec<String>, input: Option<Vec<u8>>| {
            let (kubectl, kubeconfig) = (kubectl.clone(), cluster.kubeconfig.clone());
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                wasmkube_tests::run_kubectl_with_input(
                    &kubectl,
                    &kubeconfig,
                    &args,
                    input.as_deref(),
                )
                .await
            }
        };
        let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let (ok, out, err) = run(words("exec box -c main -- /toolbox args a b"), None).await?;
        ensure!(ok, "kubectl {version} exec: {err}");
        assert_eq!(out, "/toolbox args a b\n", "kubectl {version}");
        let (ok, _, err) = run(words("exec box -c main -- /toolbox cat /nope"), None).await?;
        assert!(!ok, "kubectl {version}: a failing command fails");
        assert!(
            err.contains("command terminated with exit code 1"),
            "kubectl {version}: {err}"
        );
        let line = format!("typed into kubectl {version}\n");
        let (ok, out, err) = run(
            words("exec -i box -c main -- /toolbox cat -"),
            Some(line.clone().into_bytes()),
        )
        .await?;
        ensure!(ok, "kubectl {version} exec -i: {err}");
        assert!(out.starts_with(&line), "kubectl {version} exec -i: {out:?}");

        let pod = format!("attach-{}", version.replace('.', "-"));
        cat(pod.clone(), true).await?;
        wait_pod(&pods, &pod, "running", |p| phase(p) == "Running").await?;
        let (ok, out, err) = run(
            vec![
                "attach".into(),
                "-i".into(),
                pod.clone(),
                "-c".into(),
                "main".into(),
            ],
            Some(line.clone().into_bytes()),
        )
        .await?;
        ensure!(ok, "kubectl {version} attach -i: {err}");
        assert!(
            out.contains(&line),
            "kubectl {version} attach: {out:?} {err:?}"
        );
        wait_pod(&pods, &pod, "succeeded after kubectl's stdin ended", |p| {
            phase(p) == "Succeeded"
        })
        .await?;
    }
    node.stop().await
}

/// The state of ephemeral container `name` of `pod`, when the node has reported one.
fn ephemeral_state(
    pod: &k8s_openapi::api::core::v1::Pod,
    name: &str,
) -> Option<k8s_openapi::api::core::v1::ContainerState> {
    pod.status
        .as_ref()?
        .ephemeral_container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == name)?
        .state
        .clone()
}

#[tokio::test]
async fn ephemeral_containers_run_once_in_a_running_pod_as_kubectl_debug_adds_them() -> Result<()> {
    use kube::api::{Patch, PatchParams};
    let cluster = Cluster::start().await?;
    let node = cluster.start_node("n1").await?;
    let image = cluster.push_sample("toolbox").await?;
    let c = &cluster.client;
    let pods = create_pod(
        c,
        &node.name,
        "box",
        json!({
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{"name": "main", "image": image,
                "args": ["append", "/scratch/mark", "from-main", "--", "forever"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]
        }),
    )
    .await?;
    wait_pod(&pods, "box", "running", |p| phase(p) == "Running").await?;

    // What `kubectl debug box --image=... --target=main` sends: a strategic merge patch of the
    // `ephemeralcontainers` subresource. The debugger shares the pod's volumes.
    let debugger = json!({"spec": {"ephemeralContainers": [{"name": "debugger", "image": image,
        "targetContainerName": "main", "args": ["cat", "/scratch/mark"],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]}});
    pods.patch_subresource(
        "ephemeralcontainers",
        "box",
        &PatchParams::default(),
        &Patch::Strategic(debugger),
    )
    .await?;
    let pod = wait_pod(&pods, "box", "the debugger completed", |p| {
        ephemeral_state(p, "debugger").is_some_and(|s| s.terminated.is_some())
    })
    .await?;
    let ended = ephemeral_state(&pod, "debugger")
        .and_then(|s| s.terminated)
        .context("terminated")?;
    ensure!(
        ended.exit_code == 0 && ended.reason.as_deref() == Some("Completed"),
        "{ended:?}"
    );
    ensure!(phase(&pod) == "Running", "the pod runs on");
    let logs = pods
        .logs(
            "box",
            &kube::api::LogParams {
                container: Some("debugger".into()),
                ..Default::default()
            },
        )
        .await?;
    ensure!(logs.contains("from-main"), "{logs:?}");

    // What may not be done: remove or change one, add one with ports or no image, or add one
    // through the pod itself (its ephemeral containers stay as they were).
    let refused = |r: kube::Result<k8s_openapi::api::core::v1::Pod>| match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        Ok(_) => (200, String::new()),
        Err(e) => (0, e.to_string()),
    };
    let (code, message) = refused(
        pods.patch_subresource(
            "ephemeralcontainers",
            "box",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ephemeralContainers": []}})),
        )
        .await,
    );
    ensure!(
        code == 422 && message.contains("may not be removed"),
        "{code} {message}"
    );
    let (code, message) = refused(
        pods.patch_subresource(
            "ephemeralcontainers",
            "box",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"ephemeralContainers": [{"name": "bad",
                "image": image, "ports": [{"containerPort": 80}]}]}})),
        )
        .await,
    );
    ensure!(
        code == 422 && message.contains("cannot be set for an Ephemeral Container"),
        "{code} {message}"
    );
    let through_pod = pods
        .patch(
            "box",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"ephemeralContainers": [{"name": "sneaky",
                "image": image}]}})),
        )
        .await?;
    let names: Vec<String> = through_pod
        .spec
        .iter()
        .flat_map(|s| s.ephemeral_containers.iter().flatten())
        .map(|e| e.name.clone())
        .collect();
    ensure!(names == ["debugger"], "{names:?}");

    // Real kubectl: `kubectl debug` adds one and waits for it.
    if let Some(kubectl) = wasmkube_tests::kubectl() {
        let (ok, out, err) = wasmkube_tests::run_kubectl(
            &kubectl,
            &cluster.kubeconfig,
            &[
                "debug",
                "box",
                "--image",
                &image,
                "-c",
                "dbg",
                "--profile=general",
                "--",
                "/toolbox",
                "args",
                "--",
                "via-kubectl",
            ],
        )
        .await?;
        ensure!(ok, "{out} {err}");
        let pod = wait_pod(&pods, "box", "kubectl's debugger completed", |p| {
            ephemeral_state(p, "dbg").is_some_and(|s| s.terminated.is_some())
        })
        .await?;
        let (ok, out, err) = wasmkube_tests::run_kubectl(
            &kubectl,
            &cluster.kubeconfig,
            &["logs", "box", "-c", "dbg"],
        )
        .await?;
        ensure!(
            ok && out.contains("via-kubectl"),
            "{out} {err} {:?}",
            pod.status
        );
    } else {
        eprintln!("kubectl is not installed; ephemeral containers were added through kube-rs only");
    }
    node.stop().await
}
