//! A tiny busybox for pods: each argument group (separated by `--`) is one command, run in order.
//!
//! ```text
//! toolbox env -- cat /etc/config/greeting -- ls /data -- write /data/x hello -- sleep 500
//! ```
//!
//! Commands: `env`, `args`, `pwd`, `cat FILE..` (`-`: stdin), `lines` (echo each line of
//! stdin as it arrives, until it ends), `tick MS` (print `tick N` every MS milliseconds, forever), `ls DIR`, `write FILE TEXT..`, `append FILE TEXT..`,
//! `sleep MS`, `exit CODE`, `panic MSG..`, `connect HOST:PORT TEXT..` (send, print the reply), `produce FILE` (append a numbered line every 200 ms,
//! forever), `consume FILE` (print the file's new lines as they arrive, forever), `forever`
//! (idle forever), `serve PORT [ADDR]` (answer every connection with one line naming the local
//! and peer addresses, forever), `poll HOST:PORT MS` (connect every MS milliseconds and print
//! the reply, forever), `connect-n N HOST:PORT [quiet]` (connect N times, print each first line; the time taken goes
//! to stderr), `httpd PORT DIR` (a tiny HTTP/1.1 server: `GET /x` answers 200 with the file
//! `DIR/x`, 404 when there is none; for probes whose health a test flips by writing files),
//! `http-loop HOST:PORT PATH` (GET PATH over HTTP/1.1 again and again, one at a time, forever,
//! printing each status line: load for request-driven autoscaling), `http-get HOST:PORT PATH`
//! (one GET; prints the status line and fails unless it is 200),
//! `kube-get PATH` (GET `PATH` from the API server with the pod's in-cluster configuration —
//! `KUBERNETES_SERVICE_HOST`/`_PORT` and the mounted service-account token — over
//! `wasi:http`; prints `status CODE` and the body).
//! Used by the multi-container samples and the end-to-end tests.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for group in args.split(|a| a == "--") {
        let Some((cmd, rest)) = group.split_first() else { continue };
        if let Err(e) = run(cmd, rest) {
            eprintln!("toolbox {cmd}: {e}");
            std::process::exit(2);
        }
    }
}

fn run(cmd: &str, rest: &[String]) -> std::io::Result<()> {
    match cmd {
        "env" => {
            let mut vars: Vec<(String, String)> = std::env::vars().collect();
            vars.sort();
            for (k, v) in vars {
                println!("{k}={v}");
            }
        }
        "args" => println!("{}", std::env::args().collect::<Vec<_>>().join(" ")),
        "pwd" => println!("{}", std::env::current_dir()?.display()),
        "cat" => {
            for f in rest {
                if f == "-" {
                    // Standard input (`kubectl exec -i`), to its end.
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text)?;
                    print!("{text}");
                } else {
                    print!("{}", std::fs::read_to_string(f)?);
                }
            }
            println!();
        }
        "tick" => {
            // A numbered line every MS milliseconds, forever (a log to follow).
            let ms = number(rest)?;
            for n in 1.. {
                println!("tick {n}");
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        "lines" => {
            // Each line of stdin as it arrives (`kubectl attach -i`), until stdin ends.
            for line in std::io::stdin().lines() {
                println!("{}", line?);
                std::io::stdout().flush()?;
            }
        }
        "ls" => {
            let dir = rest.first().map(String::as_str).unwrap_or(".");
            let mut names: Vec<String> = std::fs::read_dir(dir)?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            names.sort();
            println!("{}", names.join(" "));
        }
        "write" | "append" => {
            let (file, text) = rest.split_first().ok_or_else(|| usage("FILE TEXT"))?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(cmd == "append")
                .truncate(cmd == "write")
                .open(file)?;
            writeln!(f, "{}", text.join(" "))?;
        }
        "sleep" => std::thread::sleep(Duration::from_millis(number(rest)?)),
        "exit" => std::process::exit(number(rest)? as i32),
        "panic" => panic!("{}", rest.join(" ")),
        "produce" => {
            let file = rest.first().ok_or_else(|| usage("FILE"))?;
            for n in 1.. {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(file)?;
                writeln!(f, "message {n}")?;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        "consume" => {
            let file = rest.first().ok_or_else(|| usage("FILE"))?;
            let mut offset = 0u64;
            loop {
                if let Ok(mut f) = std::fs::File::open(file) {
                    f.seek(SeekFrom::Start(offset))?;
                    let mut new = String::new();
                    offset += f.read_to_string(&mut new)? as u64;
                    print!("{new}");
                    std::io::stdout().flush()?;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        "connect" => {
            // connect HOST:PORT TEXT..: send the text, close the write side, print the reply.
            let (addr, text) = rest.split_first().ok_or_else(|| usage("HOST:PORT TEXT"))?;
            let mut conn = std::net::TcpStream::connect(addr.as_str())?;
            conn.write_all(text.join(" ").as_bytes())?;
            conn.shutdown(std::net::Shutdown::Write)?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply)?;
            println!("{reply}");
        }
        "serve" => {
            let port = rest.first().ok_or_else(|| usage("PORT [ADDR]"))?;
            let addr = rest.get(1).map(String::as_str).unwrap_or("0.0.0.0");
            let listener = std::net::TcpListener::bind(format!("{addr}:{port}"))?;
            println!("serving on {}", listener.local_addr()?);
            std::io::stdout().flush()?;
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                let local = conn.local_addr().map(|a| a.to_string()).unwrap_or_default();
                let _ = writeln!(conn, "local={local} peer={peer}");
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        }
        "poll" => {
            let (addr, rest) = rest.split_first().ok_or_else(|| usage("HOST:PORT MS"))?;
            let every = Duration::from_millis(number(rest)?);
            loop {
                match first_line(addr) {
                    Ok(line) => println!("{addr}: {line}"),
                    Err(e) => println!("{addr}: error: {e}"),
                }
                std::io::stdout().flush()?;
                std::thread::sleep(every);
            }
        }
        "http-loop" => {
            // http-loop HOST:PORT PATH: GET PATH over and over, one request at a time, forever
            // (load for request-driven autoscaling); prints each status line.
            let (addr, rest) = rest.split_first().ok_or_else(|| usage("HOST:PORT PATH"))?;
            let path = rest.first().map(String::as_str).unwrap_or("/");
            loop {
                match http_get_status(addr, path) {
                    Ok(status) => println!("{status}"),
                    Err(e) => println!("error: {e}"),
                }
                std::io::stdout().flush()?;
            }
        }
        "http-get" => {
            // http-get HOST:PORT PATH: one GET; prints the status line, fails unless 200.
            let (addr, rest) = rest.split_first().ok_or_else(|| usage("HOST:PORT PATH"))?;
            let status = http_get_status(addr, rest.first().map_or("/", String::as_str))?;
            println!("{status}");
            if status.split_whitespace().nth(1) != Some("200") {
                std::process::exit(1);
            }
        }
        "connect-n" => {
            let n = number(rest)?;
            let addr = rest.get(1).ok_or_else(|| usage("N HOST:PORT [quiet]"))?;
            let quiet = rest.get(2).is_some_and(|q| q == "quiet");
            let started = std::time::Instant::now();
            for _ in 0..n {
                let line = first_line(addr)?;
                if !quiet {
                    println!("{line}");
                }
            }
            eprintln!("connect-n: {n} connections in {} us", started.elapsed().as_micros());
        }
        "httpd" => {
            let (port, dir) = match rest {
                [port, dir, ..] => (port, dir),
                _ => return Err(usage("PORT DIR")),
            };
            let listener = std::net::TcpListener::bind(format!("0.0.0.0:{port}"))?;
            println!("httpd on {} serving {dir}", listener.local_addr()?);
            std::io::stdout().flush()?;
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = http_answer(conn, dir);
            }
        }
        "kube-get" => {
            let path = rest.first().ok_or_else(|| usage("PATH"))?;
            let (status, body) = kube_get(path).map_err(std::io::Error::other)?;
            println!("status {status}");
            println!("{body}");
        }
        "forever" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        other => return Err(usage(&format!("unknown command {other:?}"))),
    }
    Ok(())
}

/// Where a pod finds its service-account credentials.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// GETs `path` from the API server as client-go's in-cluster configuration does: the
/// `kubernetes` Service's address from the environment, the pod's token as a bearer token.
/// The host verifies the server against the cluster CA (`ca.crt` in the same directory).
fn kube_get(path: &str) -> Result<(u16, String), String> {

    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .map_err(|_| "not in a cluster: KUBERNETES_SERVICE_HOST is not set")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT")
        .map_err(|_| "not in a cluster: KUBERNETES_SERVICE_PORT is not set")?;
    let token = std::fs::read_to_string(format!("{SERVICE_ACCOUNT_DIR}/token"))
        .map_err(|e| format!("reading the token: {e}"))?;
    let headers = [
        ("authorization".into(), format!("Bearer {}", token.trim()).into_bytes()),
        ("accept".into(), b"application/json".to_vec()),
    ];
    guest_http::get(
        wasi::http::types::Scheme::Https,
        &format!("{host}:{port}"),
        path,
        &headers,
    )
}

/// Answers one HTTP request on `conn` from the files under `dir`, then closes.
fn http_answer(mut conn: std::net::TcpStream, dir: &str) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        if conn.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or("/").trim_start_matches('/');
    let file = if path.is_empty() || path.contains("..") {
        None
    } else {
        std::fs::read(format!("{dir}/{path}")).ok()
    };
    let (status, body) = match file {
        Some(body) => ("200 OK", body),
        None => ("404 Not Found", format!("no {path}\n").into_bytes()),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(&body)?;
    conn.flush()
}

/// Connects and returns the first line the server sends.
fn first_line(addr: &str) -> std::io::Result<String> {
    let mut conn = std::net::TcpStream::connect(addr)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    Ok(reply.lines().next().unwrap_or_default().to_owned())
}

fn number(rest: &[String]) -> std::io::Result<u64> {
    rest.first().and_then(|n| n.parse().ok()).ok_or_else(|| usage("NUMBER"))
}

fn usage(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("expected {what}"))
}

/// One `GET path` to `addr` with `Connection: close`: the response's status line.
fn http_get_status(addr: &str, path: &str) -> std::io::Result<String> {
    let mut conn = std::net::TcpStream::connect(addr)?;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    Ok(reply.lines().next().unwrap_or_default().to_owned())
}
