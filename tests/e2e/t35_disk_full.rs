//! A server whose disk fills stops serving and says why, the other servers carry on without
//! it, and nothing acknowledged is lost: with room on its disk again it rejoins and has every
//! write. The small disk is a tmpfs the test mounts (root only; said and skipped otherwise).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;
use wasmkube_tests::{Process, free_port, wait_for};

/// A tmpfs of `mib` MiB at `at`, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, mib: u32) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_path_buf()))
    }

    /// Bytes free.
    fn free(&self) -> Result<u64> {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .output()?;
        String::from_utf8(out.stdout)?
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .context("df output")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn peer_flags(peer: u16, join: Option<(&Process, &Path)>) -> Vec<String> {
    let mut f = vec![
        "--no-wasmlet".to_owned(),
        "--peer-listen".to_owned(),
        format!("127.0.0.1:{peer}"),
    ];
    if let Some((first, token)) = join {
        f.extend([
            "--join".to_owned(),
            format!("https://{}", first.addr),
            "--token-file".to_owned(),
            token.display().to_string(),
        ]);
    }
    f
}

async fn start(data: &Path, flags: &[String]) -> Result<Process> {
    std::fs::create_dir_all(data)?;
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Process::up_with(data, free_port(), &flags).await
}

/// The names of ConfigMaps `fill-*` that `client` lists.
async fn filled(client: &kube::Client) -> Result<std::collections::BTreeSet<String>> {
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    Ok(cms
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .filter(|n| n.starts_with("fill-"))
        .collect())
}

#[tokio::test]
async fn a_server_whose_disk_fills_should_stop_serving_and_the_others_carry_on() -> Result<()> {
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let Some(disk) = SmallDisk::mount(&dir.path().join("small"), 64) else {
        eprintln!("skipped: mounting a tmpfs needs root; the full-disk test did not run");
        return Ok(());
    };
    // The first server (the leader) keeps its data on the small disk; its log beside it.
    let mut first = start(&disk.0, &peer_flags(free_port(), None)).await?;
    let token = disk.0.join("join-token");
    let second = start(
        &dir.path().join("s2"),
        &peer_flags(free_port(), Some((&first, &token))),
    )
    .await?;
    let third = start(
        &dir.path().join("s3"),
        &peer_flags(free_port(), Some((&first, &token))),
    )
    .await?;
    // Leave the first server ~6 MiB.
    let filler = disk.0.join("filler");
    let room = disk.free()?.saturating_sub(6 << 20);
    std::fs::write(&filler, vec![0u8; usize::try_from(room)?])?;

    // Write 100 KB ConfigMaps through the second server until the first one's disk is full.
    let client = second.client().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let payload = "x".repeat(100_000);
    let mut acknowledged = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut exited = None;
    for i in 0..400 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the disk did not fill in time"
        );
        let name = format!("fill-{i:03}");
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": name}, "data": {"payload": payload}}),
        )?;
        // 503/504 while the others elect a leader: kube-rs retries those; anything
        // else that fails is not acknowledged and not counted.
        if cms.create(&PostParams::default(), &cm).await.is_ok() {
            acknowledged.push(name);
        }
        if let Some(status) = first.child.try_wait()? {
            exited = Some(status);
            break;
        }
    }
    let status = exited.context("the first server went on with a full disk")?;
    ensure!(!status.success(), "it exits with a failure: {status}");
    let log = std::fs::read_to_string(disk.0.with_extension("log"))?;
    ensure!(
        log.contains("No space left on device") && log.contains("this server stops serving"),
        "it says why it stopped"
    );

    // The others carry on: writes through them are acknowledged again.
    for i in 0..5 {
        let name = format!("fill-after-{i}");
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        wait_for(
            &format!("write {name} through the survivors"),
            Duration::from_secs(30),
            || async { cms.create(&PostParams::default(), &cm).await.ok() },
        )
        .await?;
        acknowledged.push(name);
    }
    let want: std::collections::BTreeSet<String> = acknowledged.iter().cloned().collect();
    for (server, who) in [(&second, "second"), (&third, "third")] {
        let have = filled(&server.client().await?).await?;
        ensure!(
            want.is_subset(&have),
            "every acknowledged write is on the {who} server: missing {:?}",
            want.difference(&have).collect::<Vec<_>>()
        );
    }

    // With room again, the first server rejoins and has every acknowledged write.
    std::fs::remove_file(&filler)?;
    first.restart().await?;
    let client = first.client().await?;
    wait_for(
        "the restarted server has every acknowledged write",
        Duration::from_secs(60),
        || async {
            let have = filled(&client).await.ok()?;
            want.is_subset(&have).then_some(())
        },
    )
    .await?;
    drop((second, third));
    Ok(())
}
