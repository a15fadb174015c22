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
