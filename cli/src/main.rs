//! `wasmkube`: Kubernetes for WebAssembly in one binary.
//!
//! `wasmkube up` runs every component in one process; each component also runs alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "wasmkube", version, about = "Kubernetes for WebAssembly")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole cluster (every component) in this process.
    Up(ServerArgs),
    /// Run the API server alone.
    Apiserver(ServerArgs),
}

#[derive(Args)]
struct ServerArgs {
    /// Directory for cluster state, credentials and the admin kubeconfig.
    #[arg(long, env = "WASMKUBE_DATA_DIR", default_value = "./wasmkube-data")]
    data_dir: PathBuf,
    /// Address the API server listens on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Extra host names or addresses for the serving certificate.
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// Seconds between history compactions.
    #[arg(long, default_value_t = 300)]
    compaction_interval: u64,
}

impl ServerArgs {
    fn config(&self) -> wasmkube_apiserver::Config {
        let mut c = wasmkube_apiserver::Config::new(&self.data_dir);
        c.listen = self.listen;
        c.extra_sans = self.tls_san.clone();
        c.compaction_interval = Duration::from_secs(self.compaction_interval.max(1));
        c
    }
}

/// Cancels `token` on Ctrl-C or SIGTERM.
fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    });
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WASMKUBE_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone());
    match cli.command {
        Command::Up(args) | Command::Apiserver(args) => {
            let running = wasmkube_apiserver::start(args.config(), shutdown)
                .await
                .context("starting the API server")?;
            println!("wasmkube is up: API server https://{}", running.addr);
            println!("export KUBECONFIG={}", running.kubeconfig.display());
            running.wait().await.context("API server")?;
        }
    }
    Ok(())
}
