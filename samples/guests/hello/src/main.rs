//! The smallest job: greet, show how it was called, exit 0.
//! Built for both wasm32-wasip2 (a `wasi:cli/command` component) and wasm32-wasip1 (a core module).

fn main() {
    let who = std::env::var("GREETING_TARGET").unwrap_or_else(|_| "wasmkube".to_owned());
    println!("Hello, {who}!");
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        println!("args: {}", args.join(" "));
    }
}
