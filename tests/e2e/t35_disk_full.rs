//! Disk faults. A server whose disk fills stops serving and says why, the other servers carry
//! on without it, and nothing acknowledged is lost: with room on its disk again it rejoins and
//! has every write (the small disk is a tmpfs the test mounts; root only, said and skipped
//! otherwise). A server whose store file is damaged (torn or corrupted pages redb cannot
//! repair) refuses to start and says what to do; a member started again without the file
//! catches up from the others instead of starting a group of its own. A leader whose disk
//! turns slow (the store's slow-sync failpoint) steps out, says why, and the others lead on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;
use wasmkube_tests::{Process, configmap_names, create_configmap_within, free_port, wait_for};

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

/// Creates ConfigMaps `PREFIX-N` (each with `payload`) through `client` until `failing` exits,
/// within `within`; the names acknowledged go to `acknowledged`. Checks that it exited with a
/// failure and that its log (`DATA_DIR.log`) says each of `says`.
async fn write_until_it_stops(
    client: &kube::Client,
    prefix: &str,
    payload: &str,
    failing: &mut Process,
    within: Duration,
    acknowledged: &mut Vec<String>,
    says: &[&str],
) -> Result<()> {
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let deadline = tokio::time::Instant::now() + within;
    let mut attempt = 0;
    let status = loop {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{} went on serving",
            failing.addr
        );
        // A new name each time: a write that failed may still have been applied.
        let name = format!("{prefix}-{attempt:03}");
        attempt += 1;
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": name}, "data": {"payload": payload}}),
        )?;
        // 503/504 while the others elect a leader: kube-rs retries those; anything else that
        // fails is not acknowledged and not counted.
        if cms.create(&PostParams::default(), &cm).await.is_ok() {
            acknowledged.push(name);
        }
        if let Some(status) = failing.child.try_wait()? {
            break status;
        }
    };
    ensure!(!status.success(), "it exits with a failure: {status}");
    let log = std::fs::read_to_string(failing.data_dir.with_extension("log"))?;
    for said in says {
        ensure!(log.contains(said), "it says why it stopped: {said:?}");
    }
    Ok(())
}

/// The servers left carry on: five more writes through `client` are acknowledged, and
/// `survivors` hold every acknowledged write; then `stopped`, its fault cleared, restarts,
/// rejoins and holds them too.
async fn the_others_carry_on_and_it_rejoins(
    client: &kube::Client,
    prefix: &str,
    mut acknowledged: Vec<String>,
    survivors: &[&Process],
    stopped: &mut Process,
) -> Result<()> {
    for i in 0..5 {
        let name = format!("{prefix}-after-{i}");
        create_configmap_within(client, &name, Duration::from_secs(30)).await?;
        acknowledged.push(name);
    }
    let want: std::collections::BTreeSet<String> = acknowledged.into_iter().collect();
    for server in survivors {
        let have = configmap_names(&server.client().await?, prefix).await?;
        ensure!(
            want.is_subset(&have),
            "every acknowledged write is on {}: missing {:?}",
            server.addr,
            want.difference(&have).collect::<Vec<_>>()
        );
    }
    stopped.restart().await?;
    let client = stopped.client().await?;
    wait_for(
        "the restarted server has every acknowledged write",
        Duration::from_secs(60),
        || async {
            let have = configmap_names(&client, prefix).await.ok()?;
            want.is_subset(&have).then_some(())
        },
    )
    .await?;
    Ok(())
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
    let mut acknowledged = Vec::new();
    write_until_it_stops(
        &client,
        "fill",
        &"x".repeat(100_000),
        &mut first,
        Duration::from_secs(180),
        &mut acknowledged,
        &["No space left on device", "this server stops serving"],
    )
    .await?;
    // With room again, the first server rejoins (after the others carried on).
    std::fs::remove_file(&filler)?;
    the_others_carry_on_and_it_rejoins(
        &client,
        "fill",
        acknowledged,
        &[&second, &third],
        &mut first,
    )
    .await
}

/// Overwrites every page of a redb file after its header with noise.
fn damage(file: &Path) -> Result<()> {
    use rand::Rng;
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(file)?.len();
    let mut noise = vec![0u8; usize::try_from(len.saturating_sub(4096))?];
    rand::rng().fill(&mut noise[..]);
    let mut f = std::fs::OpenOptions::new().write(true).open(file)?;
    f.seek(SeekFrom::Start(4096))?;
    f.write_all(&noise)?;
    f.sync_all()?;
    Ok(())
}

/// Waits until the server behind `client` holds every change up to `revision` durably in its
/// store file (`wasmkube_store_durable_revision`).
async fn durable_at_least(client: &kube::Client, revision: u64) -> Result<()> {
    wait_for(
        "the writes durable in the store file",
        Duration::from_secs(30),
        || async {
            let text = client
                .request_text(http::Request::get("/metrics").body(Vec::new()).ok()?)
                .await
                .ok()?;
            let durable: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("wasmkube_store_durable_revision "))?
                .trim()
                .parse()
                .ok()?;
            (durable >= revision).then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn a_member_with_a_damaged_store_should_refuse_to_start_and_recover_from_the_others()
-> Result<()> {
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let mut servers = Process::group(dir.path(), 3, &["--no-wasmlet", "--no-dns"]).await?;
    let client = servers[1].client().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let mut acknowledged = std::collections::BTreeSet::new();
    let mut last = 0;
    for i in 0..20 {
        let name = format!("fill-{i:03}");
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        let made = cms.create(&PostParams::default(), &cm).await?;
        last = made
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or("0")
            .parse()?;
        acknowledged.insert(name);
    }
    // Applies reach the store file unsynced and are made durable about once a second (the
    // raft log replays the rest after a crash). redb keeps its last two durable commits and
    // falls back to the older when the newer is damaged: with only one holding data, the
    // member would start from the empty one and replay its log (which still has everything).
    // Two durable commits with data, then, so that nothing in the file is usable.
    let first = servers[0].client().await?;
    durable_at_least(&first, last).await?;
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "fill-020"}}))?;
    let made = cms.create(&PostParams::default(), &cm).await?;
    acknowledged.insert("fill-020".to_owned());
    let last: u64 = made
        .metadata
        .resource_version
        .as_deref()
        .unwrap_or("0")
        .parse()?;
    durable_at_least(&first, last).await?;
    // The first server (the leader) dies and its store file is found damaged.
    servers[0].kill9();
    let file = servers[0].data_dir.join("store.redb");
    damage(&file)?;
    ensure!(
        servers[0].restart().await.is_err(),
        "a damaged store is not served"
    );
    let log = std::fs::read_to_string(servers[0].data_dir.with_extension("log"))?;
    ensure!(
        log.contains("is damaged") && log.contains("move the file aside"),
        "it says why, and what to do"
    );
    // The others go on.
    for i in 0..5 {
        let name = format!("fill-after-{i}");
        create_configmap_within(&client, &name, Duration::from_secs(30)).await?;
        acknowledged.insert(name);
    }
    // Moved aside, the member starts empty and never starts a group of its own: with the
    // others down it serves nothing; once they are back it catches up from them and has
    // every acknowledged write.
    std::fs::rename(&file, file.with_extension("damaged"))?;
    let (first, others) = servers.split_at_mut(1);
    for s in others.iter_mut() {
        s.kill9();
    }
    let readyz = wasmkube_tests::client_without_retries(&first[0].kubeconfig()).await?;
    let (restarted, alone) = tokio::join!(first[0].restart(), async {
        // An observation window, not a wait: /readyz is asked every 100 ms for 3 s.
        let mut served_alone = false;
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut every = tokio::time::interval(Duration::from_millis(100));
        while every.tick().await < until {
            let probe = readyz.request_text(http::Request::get("/readyz").body(Vec::new())?);
            served_alone |= matches!(
                tokio::time::timeout(Duration::from_millis(300), probe).await,
                Ok(Ok(_))
            );
        }
        for s in others.iter_mut() {
            s.restart().await?;
        }
        anyhow::Ok(served_alone)
    });
    restarted?;
    ensure!(
        !alone?,
        "the emptied member did not serve on its own while the others were down"
    );
    let have = configmap_names(&servers[0].client().await?, "fill-").await?;
    ensure!(
        acknowledged.is_subset(&have),
        "the recovered member has every acknowledged write: missing {:?}",
        acknowledged.difference(&have).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test]
async fn a_leader_whose_disk_is_slow_should_step_out_and_the_others_lead() -> Result<()> {
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    // Syncs over half a second make a leader step out; the failpoint slows this one's disk.
    let flags = |join: Option<(&Process, &Path)>| {
        let mut f = peer_flags(free_port(), join);
        f.extend(["--failpoints", "--store-max-sync", "0.5"].map(str::to_owned));
        f
    };
    let first = start(&dir.path().join("s1"), &flags(None)).await?;
    let token = dir.path().join("s1").join("join-token");
    let second = start(&dir.path().join("s2"), &flags(Some((&first, &token)))).await?;
    let third = start(&dir.path().join("s3"), &flags(Some((&first, &token)))).await?;
    let mut servers = [first, second, third];
    let leader_api = wait_for("a leader of three", Duration::from_secs(30), || async {
        let members = crate::t31_servers::members(&servers[0].kubeconfig()).ok()?;
        (members.len() == 3)
            .then(|| members.into_iter().find(|m| m.3 == "leader"))
            .flatten()
            .map(|m| m.2)
    })
    .await?;
    let slow = servers
        .iter()
        .position(|s| leader_api.ends_with(&s.addr))
        .context("the leader is one of the three")?;
    let other = (slow + 1) % 3;
    let client = servers[other].client().await?;
    let mut acknowledged = Vec::new();
    for i in 0..3 {
        let name = format!("slow-before-{i}");
        create_configmap_within(&client, &name, Duration::from_secs(30)).await?;
        acknowledged.push(name);
    }

    // The leader's disk turns slow: each sync of its log takes a second longer.
    let failpoint = servers[slow].data_dir.join("failpoints");
    std::fs::create_dir_all(&failpoint)?;
    std::fs::write(failpoint.join("slow-sync"), "1000")?;
    write_until_it_stops(
        &client,
        "slow",
        "",
        &mut servers[slow],
        Duration::from_secs(60),
        &mut acknowledged,
        &["more than the 500ms allowed", "this server stops serving"],
    )
    .await?;
    // Its disk fixed, it rejoins (after the other two led on).
    std::fs::remove_file(failpoint.join("slow-sync"))?;
    let [a, b, c] = &mut servers;
    let (stopped, survivors) = match slow {
        0 => (a, [&*b, &*c]),
        1 => (b, [&*a, &*c]),
        _ => (c, [&*a, &*b]),
    };
    the_others_carry_on_and_it_rejoins(&client, "slow", acknowledged, &survivors, stopped).await
}
