//! The web dashboard, end to end through the `wasmkube` binary: `wasmkube up` serves it under
//! `/dashboard/`, and headless Chromium driven by Playwright (`dashboard/web/e2e/flow.mjs`)
//! signs in, watches a `kubectl run` pod go Running, follows its log, scales a Deployment from
//! the page while kubectl checks, and keeps screenshots in `target/dashboard/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use wasmkube_tests::{Process, kubectl, push_samples};

/// What the browser test needs: node, Chromium, and `npm ci` done in `dashboard/web`.
fn browser_tools(web: &Path) -> Option<PathBuf> {
    let chromium = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    (node && chromium.exists() && web.join("node_modules/playwright-core").exists())
        .then_some(chromium)
}

#[tokio::test]
async fn the_dashboard_signs_in_follows_a_pod_and_scales_a_deployment_in_chromium() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let web = root.join("dashboard/web");
    let Some(chromium) = browser_tools(&web) else {
        eprintln!(
            "SKIPPED: needs node, /usr/bin/chromium and `npm ci` in dashboard/web (.ci/run installs them)"
        );
        return Ok(());
    };
    let Some(kubectl) = kubectl() else {
        eprintln!("SKIPPED: kubectl is not installed; the dashboard flow checks with kubectl");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let up = Process::up_in(dir.path(), &[]).await?;
    push_samples(&up.kubeconfig(), dir.path(), &["toolbox"])?;
    let config: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(up.kubeconfig())?)?;
    let token = config["users"][0]["user"]["token"]
        .as_str()
        .context("a token in the admin kubeconfig")?
        .to_owned();
    let artifacts = root.join("target/dashboard");
    let mut flow = tokio::process::Command::new("node");
    flow.arg(web.join("e2e/flow.mjs"))
        .env("DASHBOARD_URL", format!("https://{}/dashboard/", up.addr))
        .env("TOKEN", &token)
        .env("KUBECONFIG", up.kubeconfig())
        .env("KUBECTL", &kubectl)
        .env("IMAGE", "toolbox:v1")
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), flow.output())
        .await
        .context("the browser flow within 5 minutes")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    ensure!(
        out.status.success(),
        "the dashboard flow failed (server log: {})",
        up.log_path().display()
    );
    ensure!(
        stdout.contains("dashboard flows passed"),
        "the flow ran to its end"
    );
    for shot in ["overview.png", "pods.png", "deployments.png"] {
        let png = std::fs::read(artifacts.join(shot))?;
        ensure!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{shot} is a screenshot"
        );
    }
    Ok(())
}
