//! Watches: resume from a resourceVersion with the exact event sequence, selector
//! transitions, bookmarks, `410 Gone` after compaction, and kube-runtime's watcher.

use std::time::Duration;

use anyhow::{Result, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde_json::json;
use wasmkube_tests::{Cluster, wait_for};

fn cm(name: &str, label: &str) -> Result<ConfigMap> {
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"team": label}}}),
    )?)
}

/// The collection's current resourceVersion (a list's).
async fn current_rv(cms: &Api<ConfigMap>) -> Result<String> {
    cms.list(&Default::default())
        .await?
        .metadata
        .resource_version
        .ok_or_else(|| anyhow::anyhow!("a list without a resourceVersion"))
}

async fn next_event(
    s: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin),
) -> Result<(String, String, String)> {
    let ev = tokio::time::timeout(Duration::from_secs(10), s.try_next())
        .await??
        .ok_or_else(|| anyhow::anyhow!("watch ended"))?;
    Ok(match ev {
        WatchEvent::Added(o) => (
            "ADDED".into(),
            o.name_any(),
            o.resource_version().unwrap_or_default(),
        ),
        WatchEvent::Modified(o) => (
            "MODIFIED".into(),
            o.name_any(),
            o.resource_version().unwrap_or_default(),
        ),
        WatchEvent::Deleted(o) => (
            "DELETED".into(),
            o.name_any(),
            o.resource_version().unwrap_or_default(),
        ),
        WatchEvent::Bookmark(b) => (
            "BOOKMARK".into(),
            String::new(),
            b.metadata.resource_version,
        ),
        WatchEvent::Error(e) => ("ERROR".into(), e.reason, e.code.to_string()),
    })
}

#[tokio::test]
async fn watch_should_resume_with_the_exact_sequence_and_follow_selectors() -> Result<()> {
    let cluster = Cluster::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(cluster.client.clone());
    let start = current_rv(&cms).await?;
    let a = cms.create(&PostParams::default(), &cm("a", "red")?).await?;
    let b = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"x": "1"}})),
        )
        .await?;
    cms.create(&PostParams::default(), &cm("b", "blue")?)
        .await?;
    let moved = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "blue"}}})),
        )
        .await?;
    cms.delete("b", &Default::default()).await?;

    tracing::info!("--- replay everything after `start`");
    let mut all = cms.watch(&WatchParams::default(), &start).await?.boxed();
    let mut got = Vec::new();
    for _ in 0..5 {
        let (t, n, rv) = next_event(&mut all).await?;
        got.push((t, n, rv));
    }
    let kinds: Vec<(&str, &str)> = got
        .iter()
        .map(|(t, n, _)| (t.as_str(), n.as_str()))
        .collect();
    ensure!(
        kinds
            == [
                ("ADDED", "a"),
                ("MODIFIED", "a"),
                ("ADDED", "b"),
                ("MODIFIED", "a"),
                ("DELETED", "b")
            ],
        "{kinds:?}"
    );
    ensure!(
        got[0].2 == a.resource_version().expect("rv")
            && got[1].2 == b.resource_version().expect("rv")
    );
    let revs: Vec<u64> = got.iter().map(|g| g.2.parse().unwrap_or(0)).collect();
    ensure!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing revisions {revs:?}"
    );

    tracing::info!("--- a selector watch sees objects leave and enter");
    let mut red = cms
        .watch(&WatchParams::default().labels("team=red"), &start)
        .await?
        .boxed();
    let seq: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(next_event(&mut red).await?.0);
        }
        v
    };
    ensure!(
        seq == ["ADDED", "MODIFIED", "DELETED"],
        "red watch: {seq:?}"
    );
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "red"}}})),
    )
    .await?;
    let (t, n, _) = next_event(&mut red).await?;
    ensure!(t == "ADDED" && n == "a", "entering the selector is ADDED");
    ensure!(moved.labels()["team"] == "blue");

    tracing::info!("--- watch without a version starts with the current state");
    let mut fresh = cms.watch(&WatchParams::default(), "0").await?.boxed();
    let (t, n, _) = next_event(&mut fresh).await?;
    ensure!(t == "ADDED" && n == "a");
    cluster.stop().await
}

#[tokio::test]
async fn compacted_versions_should_be_gone_and_bookmarks_should_advance() -> Result<()> {
    let cluster = Cluster::start_with(|c| {
        c.compaction_interval = Duration::from_millis(300);
        c.bookmark_interval = Duration::from_millis(200);
    })
    .await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(cluster.client.clone());
    let old = cms
        .create(&PostParams::default(), &cm("old", "x")?)
        .await?
        .resource_version()
        .expect("rv");
    tracing::info!("--- keep writing until the old revision is compacted");
    let mut i = 0;
    wait_for(
        "a 410 for the old revision",
        Duration::from_secs(30),
        || {
            i += 1;
            let cms = cms.clone();
            let old = old.clone();
            async move {
                cms.patch(
                    "old",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"i": i.to_string()}})),
                )
                .await
                .ok()?;
                let mut w = cms.watch(&WatchParams::default(), &old).await.ok()?.boxed();
                match tokio::time::timeout(Duration::from_secs(2), w.try_next()).await {
                    Ok(Ok(Some(WatchEvent::Error(e))))
                        if e.code == 410 && e.reason == "Expired" =>
                    {
                        Some(())
                    }
                    _ => None,
                }
            }
        },
    )
    .await?;

    tracing::info!("--- bookmarks carry a current revision");
    let now = current_rv(&cms).await?;
    let mut w = cms.watch(&WatchParams::default(), &now).await?.boxed();
    cms.create(&PostParams::default(), &cm("later", "x")?)
        .await?;
    let mut saw_bookmark = None;
    for _ in 0..10 {
        let (t, _, rv) = next_event(&mut w).await?;
        if t == "BOOKMARK" {
            saw_bookmark = Some(rv.parse::<u64>()?);
            break;
        }
    }
    let bm = saw_bookmark.ok_or_else(|| anyhow::anyhow!("no bookmark"))?;
    ensure!(
        bm >= now.parse::<u64>()?,
        "bookmark {bm} not older than {now}"
    );
    cluster.stop().await
}

#[tokio::test]
async fn kube_runtime_watcher_should_list_and_follow() -> Result<()> {
    let cluster = Cluster::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(cluster.client.clone());
    cms.create(&PostParams::default(), &cm("pre", "x")?).await?;
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = kube::runtime::reflector(writer, watcher(cms.clone(), watcher::Config::default()));
    let task = tokio::spawn(stream.for_each(|_| async {}));
    wait_for("the reflector to see pre", Duration::from_secs(10), || {
        let r = reader.clone();
        async move {
            r.state()
                .iter()
                .any(|c| c.name_any() == "pre")
                .then_some(())
        }
    })
    .await?;
    cms.create(&PostParams::default(), &cm("post", "x")?)
        .await?;
    cms.delete("pre", &Default::default()).await?;
    wait_for("the reflector to follow", Duration::from_secs(10), || {
        let r = reader.clone();
        async move {
            let names: Vec<String> = r.state().iter().map(|c| c.name_any()).collect();
            (names == ["post"]).then_some(())
        }
    })
    .await?;
    task.abort();
    cluster.stop().await
}

/// A watch that starts further back than the watch cache holds (a window of 16 changes here)
/// reads the store's history, then the cache again: every change reaches it once, in order,
/// with the selector's transitions; and lists served from the cache equal a list the store
/// serves at the same revision.
#[tokio::test]
async fn a_watch_behind_the_cache_window_should_get_every_change_once_in_order() -> Result<()> {
    let cluster = Cluster::start_with(|c| c.watch_cache_window = 16).await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(cluster.client.clone());
    let start = current_rv(&cms).await?;
    // What a `team=a` watcher must see, change by change.
    let mut expected: Vec<(String, String)> = Vec::new();
    let team = |i: usize| if i.is_multiple_of(2) { "a" } else { "b" };
    for i in 0..40 {
        cms.create(&PostParams::default(), &cm(&format!("w-{i}"), team(i))?)
            .await?;
        if team(i) == "a" {
            expected.push(("ADDED".into(), format!("w-{i}")));
        }
    }
    for i in 0..20 {
        let flipped = if team(i) == "a" { "b" } else { "a" };
        let patch = json!({"metadata": {"labels": {"team": flipped}}});
        cms.patch(
            &format!("w-{i}"),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        let kind = if flipped == "a" { "ADDED" } else { "DELETED" };
        expected.push((kind.into(), format!("w-{i}")));
    }
    let mut events = cms
        .watch(&WatchParams::default().labels("team=a"), &start)
        .await?
        .boxed();
    for i in 40..80 {
        cms.create(&PostParams::default(), &cm(&format!("w-{i}"), team(i))?)
            .await?;
        if team(i) == "a" {
            expected.push(("ADDED".into(), format!("w-{i}")));
        }
    }
    let mut seen = Vec::new();
    let mut last_rv = start.parse::<u64>()?;
    while seen.len() < expected.len() {
        let (kind, name, rv) = next_event(&mut events).await?;
        ensure!(kind != "ERROR", "the watch failed: {name} {rv}");
        let rv: u64 = rv.parse()?;
        ensure!(
            rv > last_rv,
            "{kind} {name} at {rv} after {last_rv}: out of order or repeated"
        );
        last_rv = rv;
        seen.push((kind, name));
    }
    ensure!(
        seen == expected,
        "events differ: {seen:?}\nexpected {expected:?}"
    );

    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<(String, String)> {
        l.items
            .iter()
            .map(|c| (c.name_any(), c.resource_version().unwrap_or_default()))
            .collect()
    };
    let latest = cms.list(&Default::default()).await?;
    let rv = latest.metadata.resource_version.clone().unwrap_or_default();
    let exact = cms
        .list(
            &kube::api::ListParams::default()
                .at(&rv)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await?;
    let any = cms
        .list(&kube::api::ListParams::default().match_any())
        .await?;
    ensure!(names(latest.clone()).len() == 80, "80 objects listed");
    ensure!(
        names(latest.clone()) == names(exact),
        "the cache's list equals the store's at {rv}"
    );
    ensure!(
        names(latest) == names(any),
        "a resourceVersion=0 list is as current here"
    );
    Ok(())
}
