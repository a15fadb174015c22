//! The binary's command line. (Also makes `cargo test` build the `wasmkube` binary, which
//! the end-to-end tests in `tests/` drive.)

use std::process::Command;

#[test]
fn help_should_list_every_component() {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmkube"))
        .arg("--help")
        .output()
        .expect("run wasmkube");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "up",
        "apiserver",
        "wasmlet",
        "scheduler",
        "controller-manager",
        "image",
    ] {
        assert!(text.contains(sub), "--help mentions {sub}: {text}");
    }
}

#[test]
fn a_bad_flag_should_fail_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmkube"))
        .args(["up", "--listen", "not-an-address"])
        .output()
        .expect("run wasmkube");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value"));
}
