//! Starting an API server: its credentials, store (alone, or joining a group), the
//! bootstrap objects, the listeners, and the background loops (compaction, the
//! `kubernetes` Service's endpoints); and what it hands back ([`Running`]).

use super::*;

/// A started API server.
/// Kubeconfigs with client certificates for the components that run beside a server: each
/// acts as its own user, with the rights its bootstrap ClusterRole gives.
#[derive(Debug, Clone)]
pub struct ComponentKubeconfigs {
    /// `system:kube-scheduler`.
    pub scheduler: PathBuf,
    /// `system:kube-controller-manager`.
    pub controller_manager: PathBuf,
    /// `system:kube-dns`.
    pub dns: PathBuf,
}

impl ComponentKubeconfigs {
    /// Writes them in `dir` for the server at `url`.
    fn write(dir: &std::path::Path, url: &str) -> Result<Self, Error> {
        let one = |file: &str, user: &str| -> Result<PathBuf, Error> {
            let path = dir.join(file);
            let kubeconfig = crate::pki::user_kubeconfig(dir, url, user, &[])?;
            crate::pki::write_private(&path, &kubeconfig)?;
            Ok(path)
        };
        Ok(ComponentKubeconfigs {
            scheduler: one("scheduler.kubeconfig", "system:kube-scheduler")?,
            controller_manager: one(
                "controller-manager.kubeconfig",
                "system:kube-controller-manager",
            )?,
            dns: one("dns.kubeconfig", "system:kube-dns")?,
        })
    }
}

pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The admin kubeconfig it wrote.
    pub kubeconfig: PathBuf,
    /// The kubeconfigs it wrote for the control-plane components, each with its own identity
    /// (kubeadm's `scheduler.conf`, `controller-manager.conf`).
    pub components: ComponentKubeconfigs,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The admin bearer token.
    pub token: String,
    /// This server for components in its process ([`Source::local`](wasmkube_client::Source::local)).
    pub local: wasmkube_client::Local,
    api: Arc<Apiserver>,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// The kinds the server serves; a kind registered here is served at once (discovery,
    /// OpenAPI, every verb), as a CustomResourceDefinition's kind is.
    pub fn registry(&self) -> &crate::registry::Registry {
        &self.api.registry
    }

    /// The client side of this server's raft transport, to cut it off from other servers in
    /// partition tests ([`wasmkube_store::Network::cut`]).
    pub fn peer_network(&self) -> wasmkube_store::Network {
        self.api.store.network().clone()
    }

    /// Waits until the server has shut down.
    ///
    /// # Errors
    /// When the store failed to close cleanly.
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await.expect("apiserver task does not panic")
    }
}

/// Creates the namespaces every cluster starts with (kube-apiserver's bootstrap controller).
pub(super) async fn bootstrap(api: &Apiserver) -> Result<(), Error> {
    let ns = api
        .registry
        .get("", "v1", "namespaces")
        .expect("namespaces are served")
        .clone();
    let target = Target {
        kind: ns,
        namespace: None,
        name: None,
        subresource: None,
        watch_path: false,
    };
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        let q = Params {
            field_manager: Some("wasmkube-apiserver".into()),
            ..Default::default()
        };
        // (A write waits out an election in the store, so a group electing a leader is fine.)
        match api.create_object(&target, &q, obj, "Update").await {
            Ok(_) => tracing::info!(namespace = name, "created"),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(Error::Io(std::io::Error::other(e.to_string()))),
        }
    }
    Ok(())
}

/// The `kubernetes` Service's cluster IP: the first address of the service range.
pub(super) fn kubernetes_service_ip(config: &Config) -> std::net::Ipv4Addr {
    let range = config.network.service_cidr;
    range.hosts().next().unwrap_or(range.addr())
}

/// The request handlers' state over an opened store, with the default namespaces created.
pub(super) async fn open(
    config: &Config,
    store: Store,
    tokens: Arc<crate::tokens::Tokens>,
    encryption: Arc<crate::encryption::Encryption>,
    shutdown: &CancellationToken,
) -> Result<Arc<Apiserver>, Error> {
    let caches =
        crate::cache::Caches::new(store.clone(), config.watch_cache_window, shutdown.clone());
    let registry = kinds::builtin();
    let rbac = crate::rbac::Rbac::start(&registry, &caches, shutdown.clone());
    let limit_ranges = caches.of_kind(
        &*registry
            .by_kind("", "LimitRange")
            .expect("LimitRanges are registered"),
    );
    let namespaces = caches.of_kind(
        &*registry
            .by_kind("", "Namespace")
            .expect("Namespaces are registered"),
    );
    let admission =
        crate::admission::Chain::standard(&store, namespaces, config.network.clone(), shutdown)
            .mutating(crate::admission::limits::LimitRanger::new(Arc::clone(
                &limit_ranges,
            )))
            .mutating(
                crate::admission::serviceaccount::ServiceAccountAdmission::new(
                    caches.of_kind(
                        &*registry
                            .by_kind("", "ServiceAccount")
                            .expect("ServiceAccounts are registered"),
                    ),
                    store.clone(),
                ),
            )
            .validating(crate::rbac::escalation::Escalation(Arc::clone(&rbac)))
            .validating(crate::nodeauth::NodeRestriction)
            .validating(crate::admission::limits::LimitRanger::new(limit_ranges))
            .validating(crate::admission::quota::QuotaAdmission::new(
                store.clone(),
                caches.of_kind(
                    &*registry
                        .by_kind("", "ResourceQuota")
                        .expect("ResourceQuotas are registered"),
                ),
                Arc::clone(&encryption),
            ));
    let api = Arc::new(Apiserver {
        admission,
        caches,
        store,
        registry,
        rbac,
        tokens,
        encryption,
        shutdown: shutdown.clone(),
        bookmark_interval: config.bookmark_interval,
        openapi: Default::default(),
    });
    bootstrap(&api).await?;
    crate::crd::start(Arc::clone(&api), shutdown.clone());
    crate::rbac::bootstrap::reconcile(&api)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
    Ok(api)
}

/// Starts the API server: credentials, store, default namespaces, listener, kubeconfig.
///
/// # Errors
/// When any of those fails.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    crate::instrument::init();
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)?;
    let recorded = crate::cluster::member_id(dir);
    // A newcomer gets its id and the cluster's credentials before anything is made here.
    let joining = match (&config.join, recorded) {
        (Some(join), None) => Some((join, crate::cluster::fetch_credentials(dir, join).await?)),
        _ => None,
    };
    let node_id = recorded.or(joining.map(|(_, id)| id)).unwrap_or(1);
    let mut hosts = config.extra_sans.clone();
    if !config.listen.ip().is_unspecified() {
        hosts.push(config.listen.ip().to_string());
    }
    // Pods reach the API at the `kubernetes` Service's address, by IP or by name.
    hosts.push(kubernetes_service_ip(&config).to_string());
    hosts.extend(["kubernetes.default", "kubernetes.default.svc.cluster.local"].map(String::from));
    let pki = Pki::load_or_create(dir, &hosts)?;
    let tls = Arc::new(pki.server_config()?);
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let server = host_port(addr);
    let peer = match config.peer_listen {
        Some(at) if at.ip().is_unspecified() => {
            return Err(Error::Config(format!(
                "--peer-listen {at}: give the address the other servers reach this one at"
            )));
        }
        Some(at) => {
            let listener = TcpListener::bind(at).await?;
            let addr = listener.local_addr()?;
            let tls = pki.peer_tls(dir, &addr.ip().to_string())?;
            Some((listener, host_port(addr), tls))
        }
        None if config.join.is_some() || recorded.is_some() => {
            return Err(Error::Config(
                "a server that joins a cluster, or is a member of a group of servers \
                 (DATA_DIR/member-id), needs --peer-listen"
                    .into(),
            ));
        }
        None => None,
    };
    let (encryption, encryption_text) =
        crate::encryption::resolve(dir, config.encryption_provider_config.as_deref())?;
    let encryption = Arc::new(encryption);
    let store = Store::open(wasmkube_store::Config {
        transformer: Some(Arc::new(crate::encryption::Opener(Arc::clone(&encryption)))),
        cache_bytes: config.store_cache_bytes,
        node_id,
        advertise: peer
            .as_ref()
            .map_or_else(|| "127.0.0.1:0".into(), |(_, a, _)| a.clone()),
        api: format!("https://{server}"),
        peer_tls: peer.as_ref().map(|(_, _, tls)| Arc::clone(&tls.client)),
        // A recorded member never starts a group of its own, even with an empty store (one
        // moved aside): it waits for the others to send it the state.
        join: node_id != 1 || recorded.is_some(),
        write_timeout: config.write_timeout,
        max_sync: config.store_max_sync,
        failpoints: config.failpoints,
        ..wasmkube_store::Config::new(dir)
    })
    .await
    .map_err(|e| match e {
        wasmkube_store::Error::Damaged { .. } if recorded.is_some() => Error::Config(format!(
            "{e}. This server is a member of a group: move the file aside (and the raft-log \
             directory beside it, if this still fails) and start it again; it catches up from \
             the other servers"
        )),
        wasmkube_store::Error::Damaged { .. } => Error::Config(format!(
            "{e}. Restore it from a backup (or move it and the raft-log directory beside it \
             aside to start an empty cluster)"
        )),
        e => e.into(),
    })?;
    // Everything this server serves ends at shutdown, or when its store fails (a full disk):
    // it then stops answering, so clients go to another server, and says why.
    let shutdown = shutdown.child_token();
    let tracker = TaskTracker::new();
    let failure = Arc::new(std::sync::OnceLock::new());
    tracker.spawn({
        let (store, shutdown, failure) = (store.clone(), shutdown.clone(), Arc::clone(&failure));
        async move {
            tokio::select! {
                why = store.failed() => {
                    tracing::error!(error = %why, "the store failed: this server stops serving; fix the cause and restart it");
                    let _ = failure.set(why);
                    shutdown.cancel();
                }
                () = shutdown.cancelled() => {}
            }
        }
    });
    let joinable = peer.is_some();
    if let Some((listener, peer_addr, tls)) = peer {
        tracing::info!(addr = %peer_addr, id = node_id, "raft peer listener");
        tracker.spawn(wasmkube_store::network::serve(
            listener,
            store.clone(),
            Some(tls.server),
            shutdown.clone().cancelled_owned(),
        ));
        if let Some((join, id)) = joining {
            tracing::info!(server = %join.server, id, "asking to be added; catching up");
            crate::cluster::become_member(
                dir,
                join,
                &pki,
                id,
                peer_addr,
                format!("https://{server}"),
            )
            .await?;
        }
        store.ready(std::time::Duration::from_secs(120)).await?;
        if recorded.is_none() {
            // The first server of a group is a member too, from now on.
            crate::pki::write_private(&dir.join("member-id"), &node_id.to_string())?;
        }
    }
    let tokens = Arc::new(crate::tokens::Tokens::new(&pki.sa_key_pem)?);
    let api = open(
        &config,
        store.clone(),
        Arc::clone(&tokens),
        encryption,
        &shutdown,
    )
    .await?;
    let rbac = Arc::clone(&api.rbac);
    if !rbac.wait_loaded(std::time::Duration::from_secs(60)).await {
        return Err(Error::Config(
            "the RBAC policy could not be read within 60 s".into(),
        ));
    }
    let kubeconfig = dir.join("kubeconfig");
    crate::pki::write_private(&kubeconfig, &pki.kubeconfig(&format!("https://{server}")))?;
    let components = ComponentKubeconfigs::write(dir, &format!("https://{server}"))?;
    tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "apiserver listening");

    let shared_api = Arc::clone(&api);
    let shared = Arc::new(Shared {
        api: api.clone(),
        authn: Box::new(crate::auth::Any(vec![
            Box::new(crate::auth::X509),
            Box::new(crate::auth::AdminToken::new(pki.admin_token.clone())),
            Box::new(Arc::clone(&tokens)),
            Box::new(crate::serviceaccount::ServiceAccountTokens::new(
                Arc::clone(&tokens),
                &api.registry,
                &api.caches,
            )),
        ])),
        authz: Box::new(crate::nodeauth::NodeAuthorizer::new(
            api.caches
                .of_kind(&*api.registry.get("", "v1", "pods").expect("pods are served")),
            Arc::clone(&rbac),
        )),
        rbac,
        kubelet: pki.kubelet_client(dir)?,
        server,
        oci: OciRegistry::new(dir)?,
        cluster: crate::cluster::Membership::new(dir, store.clone(), &pki, tokens, joinable)?
            .sharing_encryption(encryption_text),
    });
    let app = router(shared);
    let local = local::local(app.clone(), pki.client_verifier()?, shutdown.clone());
    tracker.spawn(crate::kubernetes_service::run(
        Arc::clone(&api),
        kubernetes_service_ip(&config),
        shutdown.clone(),
    ));
    tracker.spawn(compaction(
        store.clone(),
        config.compaction_interval,
        shutdown.clone(),
    ));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let cert =
                    crate::auth::ClientCertificate(wasmkube_client::tls::Peer::of(tls.get_ref().1));
                let svc = TowerToHyperService::new(tower::ServiceExt::map_request(
                    app,
                    move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(cert.clone());
                        req
                    },
                ));
                // hyper's own refusals (too many headers, URI too long, bad request line)
                // get a Status body too.
                let io = crate::conn::StatusOnParseError::new(tls, MAX_HEADER_BYTES);
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .max_buf_size(HEAD_BUFFER)
                    .max_headers(crate::conn::MAX_HEADERS);
                builder
                    .http2()
                    .max_header_list_size(u32::try_from(HEAD_BUFFER).unwrap_or(u32::MAX));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                    }
                }
            });
        }
        tracker.close();
        tracker.wait().await;
        if let Some(why) = failure.get() {
            return Err(Error::Store(wasmkube_store::Error::Stopped(why.clone())));
        }
        store.shutdown().await?;
        tracing::info!("apiserver stopped");
        Ok(())
    });
    Ok(Running {
        addr,
        kubeconfig,
        components,
        ca_pem: pki.ca_pem,
        token: pki.admin_token,
        local,
        api: shared_api,
        task,
    })
}

/// `host:port` of a listener as clients dial it (`[v6]:port`; an unspecified address as
/// 127.0.0.1).
pub(super) fn host_port(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    if addr.is_ipv6() {
        format!("[{host}]:{}", addr.port())
    } else {
        format!("{host}:{}", addr.port())
    }
}

/// Compacts history older than one interval, as kube-apiserver compacts etcd every 5 minutes
/// to the revision it saw one interval ago.
pub(super) async fn compaction(
    store: Store,
    every: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut previous: Option<u64> = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(rev) = previous
            && let Err(e) = store.compact(rev).await
        {
            tracing::warn!(error = %e, "compaction failed");
        }
        match store.revision().await {
            Ok(r) => previous = Some(r),
            Err(e) => tracing::warn!(error = %e, "reading revision failed"),
        }
    }
}
