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
        "building the sample guests failed ({status}); is the wasm32-wasip2/wasip1 target installed? \
         (rust-toolchain.toml lists them; `rustup target add wasm32-wasip2 wasm32-wasip1`)"
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
