//! Builds the guest programs in `guests/` for wasm32-wasip2 (and `hello` also for wasm32-wasip1)
//! with a nested cargo, so the samples are part of every normal build of the workspace.
//! The artifacts land in `OUT_DIR` and `src/lib.rs` embeds them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (artifact file stem, target, name the sample is known by)
const ARTIFACTS: &[(&str, &str, &str)] = &[
    ("hello", "wasm32-wasip2", "hello"),
    ("hello", "wasm32-wasip1", "hello-p1"),
    ("toolbox", "wasm32-wasip2", "toolbox"),
    ("http_hello", "wasm32-wasip2", "http-hello"),
    ("http_frontend", "wasm32-wasip2", "http-frontend"),
    ("tcp-echo", "wasm32-wasip2", "tcp-echo"),
    ("crashloop", "wasm32-wasip2", "crashloop"),
    ("memhog", "wasm32-wasip2", "memhog"),
    ("cpuspin", "wasm32-wasip2", "cpuspin"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let guests = manifest_dir.join("guests");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    watch(&guests);

    ensure_targets(&["wasm32-wasip2", "wasm32-wasip1"]);
    let target_dir = out.join("guests-target");
    cargo(
        &guests,
        &target_dir,
        &["--target", "wasm32-wasip2", "--workspace"],
    );
    cargo(
        &guests,
        &target_dir,
        &["--target", "wasm32-wasip1", "-p", "hello"],
    );

    for (stem, target, name) in ARTIFACTS {
        let built = target_dir
            .join(target)
            .join("release")
            .join(format!("{stem}.wasm"));
        let dest = out.join(format!("{name}.wasm"));
        std::fs::copy(&built, &dest)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", built.display(), dest.display()));
    }
}

/// The wasm targets' standard libraries must be installed. rustup installs the targets listed in
/// `rust-toolchain.toml` only when it installs the toolchain itself, so a machine whose toolchain
/// was already there has none of them: add them through rustup when it is the toolchain manager,
/// and otherwise stop with the exact command to run.
fn ensure_targets(targets: &[&str]) {
    let missing: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| !target_installed(t))
        .collect();
    if missing.is_empty() {
        return;
    }
    println!(
        "cargo:warning=adding the Rust targets the sample guests need: rustup target add {}",
        missing.join(" ")
    );
    let mut cmd = Command::new("rustup");
    cmd.arg("target").arg("add").args(&missing);
    // rustup's proxies set RUSTUP_TOOLCHAIN for the toolchain this build runs on; add to that one.
    if let Some(toolchain) = std::env::var_os("RUSTUP_TOOLCHAIN") {
        cmd.arg("--toolchain").arg(toolchain);
    }
    let added = cmd.status().map(|s| s.success()).unwrap_or(false);
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|t| !target_installed(t))
        .collect();
    assert!(
        added && still.is_empty(),
        "the sample guests need the Rust targets {still:?}, which are not installed and could not be \
         added through rustup; run `rustup target add {}` (or install their standard libraries \
         for this toolchain) and build again",
        missing.join(" ")
    );
}

/// Whether the toolchain building this crate has the standard library for `target`.
fn target_installed(target: &str) -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    sysroot
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir()
}

fn cargo(guests: &Path, target_dir: &Path, args: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(guests)
        .args(["build", "--release", "--locked"])
        .args(args)
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's settings (target, flags, profile) must not leak into the guest build;
    // the jobserver (CARGO_MAKEFLAGS) is kept so both builds share the machine's cores.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let keep = key == "CARGO_HOME" || key == "CARGO_MAKEFLAGS";
        if (key.starts_with("CARGO_") && !keep) || key.starts_with("RUSTC") || key == "RUSTFLAGS" {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd.status().expect("run cargo for the guest programs");
    assert!(
        status.success(),
        "building the sample guests in {} failed ({status}); the compiler's messages are above",
        guests.display()
    );
}

/// Rebuild when a guest's sources change (not when its build output does).
fn watch(guests: &Path) {
    for file in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", guests.join(file).display());
    }
    for entry in std::fs::read_dir(guests)
        .expect("guests directory exists")
        .flatten()
    {
        let path = entry.path();
        if path.join("Cargo.toml").exists() {
            println!(
                "cargo:rerun-if-changed={}",
                path.join("Cargo.toml").display()
            );
            println!("cargo:rerun-if-changed={}", path.join("src").display());
        }
    }
}
