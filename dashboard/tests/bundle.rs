//! The committed bundle (`dist/`) is what `web/`'s sources and lock file produce.

use std::path::Path;
use std::process::Command;

#[test]
fn the_embedded_bundle_matches_its_sources() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok || !web.join("node_modules/esbuild").exists() {
        eprintln!(
            "SKIPPED: needs node and `npm ci` in dashboard/web (.ci/run installs both); the bundle was not rebuilt"
        );
        return;
    }
    let out = Command::new("node")
        .args(["build.mjs", "--check"])
        .current_dir(&web)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
