//! Allocates memory in steps and touches it, without ever freeing: with a
//! `resources.limits.memory` the wasmlet stops it and reports `OOMKilled`.

use std::time::Duration;

fn main() {
    let step_mib: usize = std::env::var("STEP_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let pause_ms: u64 = std::env::var("PAUSE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; step_mib << 20];
        // Touch every page so the memory is really used, not just reserved.
        for page in chunk.chunks_mut(4096) {
            page[0] = 1;
        }
        hoard.push(chunk);
        println!("holding {} MiB", hoard.len() * step_mib);
        std::thread::sleep(Duration::from_millis(pause_ms));
    }
}
