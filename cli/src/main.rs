//! `wasmkube`: Kubernetes for WebAssembly in one binary.
//!
//! `wasmkube up` runs every component in one process; each component also runs alone.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod alloc;
mod args;
mod demo;

use args::*;

async fn push(args: PushArgs) -> anyhow::Result<()> {
    let wasm =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    anyhow::ensure!(
        wasm.starts_with(b"\0asm"),
        "{} is not a WebAssembly binary",
        args.file.display()
    );
    let kc = wasmkube_client::load(&source(args.kubeconfig))
        .await
        .context("finding the cluster (set --kubeconfig or KUBECONFIG)")?;
    let registries = wasmkube_wasmlet::registries_for(&kc, args.insecure_registries);
    let target = registries.qualify(&args.image);
    eprint!(
        "pushing {} ({:.1} KiB) to {target} … ",
        args.file.display(),
        wasm.len() as f64 / 1024.0
    );
    let started = std::time::Instant::now();
    let url = wasmkube_wasmlet::images::push(&registries, &args.image, wasm).await?;
    eprintln!("done in {:.0?}", started.elapsed());
    println!("{url}");
    Ok(())
}

/// `wasmkube cluster …`: the membership, through the API server's `/wasmkube/members`.
async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    let (request, kubeconfig) = match command {
        ClusterCommand::Members(k) => (
            http::Request::get(wasmkube_apiserver::cluster::MEMBERS_PATH).body(Vec::new())?,
            k.kubeconfig,
        ),
        ClusterCommand::Remove { id, kubeconfig } => (
            http::Request::delete(format!(
                "{}/{id}",
                wasmkube_apiserver::cluster::MEMBERS_PATH
            ))
            .body(Vec::new())?,
            kubeconfig.kubeconfig,
        ),
    };
    let removing = request.method() == http::Method::DELETE;
    let conn = wasmkube_client::connect(&source(kubeconfig))
        .await
        .context("finding the cluster (set --kubeconfig or KUBECONFIG)")?;
    let answer = conn.client.request_text(request).await?;
    if removing {
        println!("removed");
        return Ok(());
    }
    let members: Vec<wasmkube_apiserver::cluster::MemberStatus> =
        serde_json::from_str(&answer).context("the members list")?;
    let rows: Vec<[String; 5]> = members
        .into_iter()
        .map(|m| {
            [
                m.id.to_string(),
                // A server alone has no peer listener (its store's placeholder address).
                if m.peer.ends_with(":0") {
                    "<none>".into()
                } else {
                    m.peer
                },
                if m.api.is_empty() {
                    "<none>".into()
                } else {
                    m.api
                },
                m.role,
                m.applied
                    .map_or_else(|| "<unknown>".into(), |i| i.to_string()),
            ]
        })
        .collect();
    let header = ["ID", "PEER-ADDRESS", "API-ADDRESS", "ROLE", "APPLIED-INDEX"].map(String::from);
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
    Ok(())
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
                .unwrap_or_else(|_| "info,openraft=warn,raft_log=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a terminal: `up 2> file` and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    alloc::return_freed_memory();
    let cli = Cli::parse();
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone());
    match cli.command {
        Command::Apiserver(args) => {
            let running = wasmkube_apiserver::start(args.config()?, shutdown)
                .await
                .context("starting the API server")?;
            println!("wasmkube API server: https://{}", running.addr);
            println!("export KUBECONFIG={}", running.kubeconfig.display());
            running.wait().await.context("API server")?;
        }
        Command::Up(args) => {
            let running = wasmkube_apiserver::start(args.server.config()?, shutdown.clone())
                .await
                .context("starting the API server")?;
            println!("wasmkube is up: API server https://{}", running.addr);
            println!("export KUBECONFIG={}", running.kubeconfig.display());
            println!(
                "dashboard: https://{}{}/ (sign in with the kubeconfig's token)",
                running.addr,
                wasmkube_dashboard::PREFIX
            );
            // Each component acts as its own user (RBAC), as kubeadm's components do, and
            // reaches this server in process (no socket or TLS), failing over to the
            // others of the cluster when it stops.
            let as_user = |kubeconfig: &std::path::Path| {
                wasmkube_client::Source::kubeconfig(kubeconfig).local(running.local.clone())
            };
            let api = || as_user(&running.kubeconfig);
            // Stable across restarts: a restarted server gets its own Lease back at once.
            let identity = format!("{}_{}", host_name(), running.addr);
            let scheduler = if args.no_scheduler {
                None
            } else {
                Some(tokio::spawn(wasmkube_sched::run(
                    wasmkube_sched::Config {
                        api: as_user(&running.components.scheduler),
                        leader_election: args
                            .election
                            .election("kube-scheduler", identity.clone())?,
                        ..Default::default()
                    },
                    shutdown.clone(),
                )))
            };
            let controllers = if args.no_controllers {
                None
            } else {
                Some(tokio::spawn(wasmkube_controllers::run(
                    wasmkube_controllers::Config {
                        api: as_user(&running.components.controller_manager),
                        node_timers: args.timers.timers(),
                        hpa_sync_period: args.timers.hpa_sync_period(),
                        leader_election: args
                            .election
                            .election("kube-controller-manager", identity.clone())?,
                        ..Default::default()
                    },
                    shutdown.clone(),
                )))
            };
            let dns = if args.no_dns {
                None
            } else {
                let mut config = wasmkube_dns::Config {
                    api: as_user(&running.components.dns),
                    listen: args
                        .dns_listen
                        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 10053))),
                    domain: args.node.cluster_domain.clone(),
                };
                let dns = match wasmkube_dns::start(&config, shutdown.clone()).await {
                    Err(wasmkube_dns::Error::Io(e))
                        if e.kind() == std::io::ErrorKind::AddrInUse
                            && args.dns_listen.is_none() =>
                    {
                        // Several servers on one machine: the first has the default port.
                        tracing::warn!(listen = %config.listen, "the default DNS port is taken; using a free one");
                        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
                        wasmkube_dns::start(&config, shutdown.clone()).await
                    }
                    other => other,
                }
                .context("starting the cluster DNS")?;
                println!(
                    "cluster DNS: dig @{} -p {} SERVICE.NAMESPACE.svc.{}",
                    dns.addr.ip(),
                    dns.addr.port(),
                    config.domain
                );
                Some(dns)
            };
            let wasmlet = if args.no_wasmlet {
                None
            } else {
                let mut config = args
                    .node
                    .config(&args.server.data_dir.join("node"), args.node_listen)?;
                config.api = api();
                if config.cluster_dns.is_none() {
                    config.cluster_dns = dns.as_ref().map(|d| d.addr);
                }
                if config.ingress_listen.is_none() && !args.no_ingress {
                    config.ingress_listen = Some(SocketAddr::from(([127, 0, 0, 1], 8080)));
                }
                let token = shutdown.clone();
                let task = tokio::spawn(async move { wasmkube_wasmlet::run(config, token).await });
                if args.demo {
                    demo::run(&running.kubeconfig)
                        .await
                        .context("deploying the samples")?;
                }
                Some(task)
            };
            let served = running.wait().await;
            if let Err(e) = &served
                && wasmlet.is_some()
                && !shutdown.is_cancelled()
            {
                // Borg's rule: the node's pods outlive the control plane.
                tracing::error!(error = %format!("{e:#}"), "the API server stopped; this node's pods keep running until wasmkube is stopped");
                shutdown.cancelled().await;
            }
            served.context("API server")?;
            if let Some(task) = scheduler {
                task.await.context("scheduler task")?.context("scheduler")?;
                tracing::debug!("the scheduler stopped");
            }
            if let Some(task) = controllers {
                task.await
                    .context("controller manager task")?
                    .context("controller manager")?;
                tracing::debug!("the controller manager stopped");
            }
            if let Some(task) = wasmlet {
                task.await.context("wasmlet task")?.context("wasmlet")?;
                tracing::debug!("the wasmlet stopped");
            }
            if let Some(dns) = dns {
                dns.wait().await;
                tracing::debug!("the DNS server stopped");
            }
        }
        Command::Wasmlet(args) => {
            let mut config = args.node.config(&args.data_dir, args.listen)?;
            config.api = match (&args.join, &args.token_file) {
                (Some(server), Some(file)) => {
                    let kubeconfig = wasmkube_wasmlet::identity::join(
                        server.trim_end_matches('/'),
                        &read_token(file)?,
                        &config.node_name,
                        &args.data_dir,
                    )
                    .await
                    .context("joining the cluster")?;
                    wasmkube_client::Source::kubeconfig(kubeconfig)
                }
                _ => source(args.kubeconfig),
            };
            config.address = args.address;
            wasmkube_wasmlet::run(config, shutdown)
                .await
                .context("wasmlet")?;
        }
        Command::Dns(args) => {
            args.metrics.serve(&shutdown).await?;
            let config = wasmkube_dns::Config {
                api: source(args.kubeconfig),
                listen: args.listen,
                domain: args.cluster_domain,
            };
            wasmkube_dns::run(config, shutdown)
                .await
                .context("cluster DNS")?;
        }
        Command::Scheduler(args) => {
            args.metrics.serve(&shutdown).await?;
            let config = wasmkube_sched::Config {
                api: source(args.kubeconfig),
                leader_election: args
                    .election
                    .election("kube-scheduler", random_identity())?,
                scheduler_name: args.scheduler_name,
                percentage_of_nodes_to_score: args.percentage_of_nodes_to_score,
            };
            wasmkube_sched::run(config, shutdown)
                .await
                .context("scheduler")?;
        }
        Command::ControllerManager(args) => {
            args.metrics.serve(&shutdown).await?;
            let unknown: Vec<&String> = args
                .controllers
                .iter()
                .filter(|c| {
                    let name = c.strip_prefix('-').unwrap_or(c);
                    name != "*" && !wasmkube_controllers::CONTROLLERS.contains(&name)
                })
                .collect();
            if !unknown.is_empty() {
                anyhow::bail!(
                    "unknown controllers {unknown:?}; known: {}",
                    wasmkube_controllers::CONTROLLERS.join(", ")
                );
            }
            let root_ca = match &args.root_ca_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?,
                ),
                None => None,
            };
            let config = wasmkube_controllers::Config {
                api: source(args.kubeconfig),
                node_timers: args.timers.timers(),
                leader_election: args
                    .election
                    .election("kube-controller-manager", random_identity())?,
                controllers: args.controllers,
                root_ca,
                hpa_sync_period: args.timers.hpa_sync_period(),
            };
            wasmkube_controllers::run(config, shutdown)
                .await
                .context("controller manager")?;
        }
        Command::Image {
            command: ImageCommand::Push(args),
        } => push(args).await?,
        Command::Cluster { command } => cluster(command).await?,
        Command::Kubeconfig {
            command: KubeconfigCommand::User(args),
        } => {
            let kubeconfig = wasmkube_apiserver::pki::user_kubeconfig(
                &args.data_dir,
                &args.server,
                &args.client_name,
                &args.orgs,
            )
            .with_context(|| {
                format!("signing with the cluster CA in {}", args.data_dir.display())
            })?;
            print!("{kubeconfig}");
        }
    }
    Ok(())
}
