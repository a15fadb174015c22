//! A TCP echo server over `wasi:sockets` (plain `std::net`; wasi-libc maps it onto wasi:sockets).
//! Listens on `0.0.0.0:$PORT` (default 7000) and echoes every byte back, one connection at a time.

use std::io::{Read, Write};
use std::net::TcpListener;

fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "7000".to_owned());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}"))?;
    println!("echo listening on {}", listener.local_addr()?);
    for conn in listener.incoming() {
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
    Ok(())
}
