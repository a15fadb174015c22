//! Runs for a moment, complains and exits non-zero: under `restartPolicy: Always` the wasmlet
//! restarts it with growing back-off (`CrashLoopBackOff`).

use std::time::Duration;

fn main() {
    let ms = std::env::var("CRASH_AFTER_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    println!("starting; will crash in {ms} ms");
    std::thread::sleep(Duration::from_millis(ms));
    eprintln!("something went wrong, exiting with status 1");
    std::process::exit(1);
}
