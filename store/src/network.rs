//! Raft transport: openraft's three RPCs (append entries, vote, install snapshot) as JSON
//! bodies POSTed to the peer's listener, over HTTPS with mutual TLS when the caller gives a
//! TLS client configuration (the cluster's servers always do), plain HTTP otherwise (tests on
//! loopback). Both ends live here: [`Network`] calls, [`router`] answers.
//!
//! ```text
//! leader ── POST /raft/append | /raft/vote | /raft/snapshot ──► member's peer listener ─► Raft
//!        ◄──────────── 200 JSON Result<response, RaftError> ─────────
//! follower ── POST /store/write (Command) ──► leader's peer listener ─► proposed there
//! ```
//!
//! A member that cannot be reached is `Unreachable` (openraft backs off); an answer that is not
//! the protocol is a `Network` error; a refusal raft itself sends back is a `RemoteError`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openraft::Raft;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::command::{Command, Node, NodeId, Outcome, TypeConfig};
use crate::{Error, Store};

/// The path of append-entries requests on a peer listener.
pub const APPEND: &str = "/raft/append";
/// The path of vote requests.
pub const VOTE: &str = "/raft/vote";
/// The path of install-snapshot requests.
pub const SNAPSHOT: &str = "/raft/snapshot";
/// The path of writes a follower forwards to the leader.
pub const WRITE: &str = "/store/write";

/// The path where the leader answers the log index a linearizable read must wait for.
pub const READ_INDEX: &str = "/store/read-index";
/// The path of membership additions a follower forwards to the leader.
pub const ADD_MEMBER: &str = "/store/add-member";
/// The path where the leader lists the members.
pub const MEMBERS: &str = "/store/members";
/// The path of membership removals a follower forwards to the leader.
pub const REMOVE_MEMBER: &str = "/store/remove-member";

/// How long a forwarded write may take (a leader under load, an election meanwhile).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a read index may take at the leader (one heartbeat round to a majority).
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an addition may take: the new member catches up first (a snapshot of the whole
/// store, then the log).
pub(crate) const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

/// The leader's answer to a request a follower forwards (a write, a read index).
#[derive(Debug, Serialize, Deserialize)]
enum Answer<T> {
    /// Done there.
    Done(T),
    /// The member does not lead (any more); the leader it knows.
    NotLeader(Option<NodeId>),
    /// A membership change the leader refused, and why.
    Refused(String),
    /// Raft or the database failed there, or leadership could not be confirmed.
    Failed(String),
}

impl<T> From<Result<T, Error>> for Answer<T> {
    fn from(result: Result<T, Error>) -> Self {
        match result {
            Ok(value) => Answer::Done(value),
            Err(Error::NotLeader { leader }) => Answer::NotLeader(leader),
            Err(Error::Membership(why)) => Answer::Refused(why),
            // The error and its causes, `: `-separated (the caller's log shows them).
            Err(e) => Answer::Failed(
                std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(": "),
            ),
        }
    }
}

type Http = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Creates [`PeerClient`]s; one connection pool is shared by all of them.
#[derive(Clone)]
pub struct Network {
    http: Http,
    scheme: &'static str,
    /// Peers this member cannot reach (a fault layer for partition tests).
    cut: Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("scheme", &self.scheme)
            .finish()
    }
}

impl Network {
    /// HTTPS with this client configuration (the cluster CA as root, this member's certificate
    /// as client certificate), or plain HTTP without one.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        let (connector, scheme) = match tls {
            Some(tls) => (
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config((*tls).clone())
                    .https_only()
                    .enable_http1()
                    .wrap_connector(http),
                "https",
            ),
            None => (
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(
                        rustls::ClientConfig::builder_with_provider(Arc::new(
                            rustls::crypto::ring::default_provider(),
                        ))
                        .with_safe_default_protocol_versions()
                        .expect("ring supports the default versions")
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                    )
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http),
                "http",
            ),
        };
        Network {
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            scheme,
            cut: Arc::default(),
        }
    }

    /// Makes the peers at these addresses (`host:port` of their peer listeners) unreachable
    /// from this member, as a network partition would: calls to them fail as unreachable
    /// until [`Network::heal`]. Cut both directions (on each side) for a full partition.
    pub fn cut(&self, peers: impl IntoIterator<Item = String>) {
        self.cut.write().expect("cut lock").extend(peers);
    }

    /// Reaches every peer again.
    pub fn heal(&self) {
        self.cut.write().expect("cut lock").clear();
    }
}

/// Why a POST to a member got no answer of the protocol.
#[derive(Debug)]
enum PostError {
    Timeout,
    Unreachable(Box<dyn std::error::Error + Send + Sync>),
    Protocol(Box<dyn std::error::Error + Send + Sync>),
}

impl Network {
    /// POSTs `body` as JSON to `base` + `path` and decodes the JSON answer, within `ttl`.
    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        body: &Req,
        ttl: Duration,
    ) -> Result<Resp, PostError> {
        let peer = base.split_once("://").map_or(base, |(_, a)| a);
        if self.cut.read().expect("cut lock").contains(peer) {
            return Err(PostError::Unreachable(format!("{peer} is cut off").into()));
        }
        let bytes = serde_json::to_vec(body).map_err(|e| PostError::Protocol(e.into()))?;
        let request = http::Request::post(format!("{base}{path}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| PostError::Protocol(e.into()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| PostError::Unreachable(e.into()))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| PostError::Protocol(e.into()))?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body);
                return Err(PostError::Protocol(
                    format!("{base} answered {status}: {text}").into(),
                ));
            }
            serde_json::from_slice(&body).map_err(|e| PostError::Protocol(e.into()))
        };
        tokio::time::timeout(ttl, exchange)
            .await
            .map_err(|_| PostError::Timeout)?
    }

    /// Asks the member at `addr` (the leader) to write `command`.
    pub(crate) async fn forward(&self, addr: &str, command: &Command) -> Result<Outcome, Error> {
        self.ask(addr, WRITE, command, FORWARD_TIMEOUT).await
    }

    /// Asks the leader at `addr` to add member `id` (answered once it has caught up).
    pub(crate) async fn add_member(
        &self,
        addr: &str,
        id: NodeId,
        node: &Node,
    ) -> Result<(), Error> {
        self.ask(addr, ADD_MEMBER, &(id, node), CATCH_UP_TIMEOUT)
            .await
    }

    /// Asks the leader at `addr` for the members as it knows them.
    pub(crate) async fn members(&self, addr: &str) -> Result<Vec<crate::Member>, Error> {
        self.ask(addr, MEMBERS, &(), FORWARD_TIMEOUT).await
    }

    /// Asks the leader at `addr` to remove member `id`.
    pub(crate) async fn remove_member(&self, addr: &str, id: NodeId) -> Result<(), Error> {
        self.ask(addr, REMOVE_MEMBER, &id, FORWARD_TIMEOUT).await
    }

    /// Asks the member at `addr` (the leader) which log index a linearizable read must wait
    /// for (raft's read index: the leader confirms it still leads with a quorum first).
    pub(crate) async fn read_index(&self, addr: &str) -> Result<Option<u64>, Error> {
        // It asks nothing to be applied, so a leader that does not answer soon (stopped, cut
        // off by dropped packets) is as good as none: the caller asks whoever leads next.
        match self.ask(addr, READ_INDEX, &(), READ_INDEX_TIMEOUT).await {
            Err(Error::Timeout(_)) => Err(Error::NotLeader { leader: None }),
            other => other,
        }
    }

    /// POSTs `body` to the leader at `addr` and turns its [`Answer`] back into a result.
    async fn ask<Req: Serialize, T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        ttl: Duration,
    ) -> Result<T, Error> {
        let base = format!("{}://{addr}", self.scheme);
        match self.post(&base, path, body, ttl).await {
            Ok(Answer::Done(value)) => Ok(value),
            Ok(Answer::NotLeader(leader)) => Err(Error::NotLeader { leader }),
            Ok(Answer::Refused(why)) => Err(Error::Membership(why)),
            Ok(Answer::Failed(message)) => Err(Error::Fatal(message.into())),
            // The leader cannot be reached: the caller tries whoever leads next.
            Err(PostError::Unreachable(_)) => Err(Error::NotLeader { leader: None }),
            // No answer in time: the request may have been carried out there.
            Err(PostError::Timeout) => Err(Error::Timeout(ttl)),
            Err(PostError::Protocol(e)) => Err(Error::Fatal(e)),
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network::new(None)
    }
}

/// Calls to one peer, at the address its membership entry names (`host:port`).
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    base: String,
    network: Network,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            target,
            base: format!("{}://{}", self.scheme, node.addr),
            network: self.clone(),
        }
    }
}

impl PeerClient {
    /// POSTs `body` to `path` and decodes the peer's `Result`.
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        body: &Req,
        action: RPCTypes,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let ttl = option.hard_ttl();
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .network
            .post(&self.base, path, body, ttl)
            .await
            .map_err(|e| match e {
                PostError::Timeout => RPCError::Timeout(Timeout {
                    action,
                    id: 0,
                    target: self.target,
                    timeout: ttl,
                }),
                PostError::Unreachable(e) => {
                    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e)))
                }
                PostError::Protocol(e) => {
                    RPCError::Network(NetworkError::new(&std::io::Error::other(e)))
                }
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(APPEND, &rpc, RPCTypes::AppendEntries, &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(SNAPSHOT, &rpc, RPCTypes::InstallSnapshot, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(VOTE, &rpc, RPCTypes::Vote, &option).await
    }
}

/// The peer listener's routes: each raft RPC handed to the member's raft, its `Result`
/// answered as JSON; a forwarded write proposed here (never forwarded again).
pub(crate) fn router(store: Store) -> axum::Router {
    let raft = store.raft().clone();
    let writes = axum::Router::new()
        .route(
            WRITE,
            post(
                |State(store): State<Store>, Json(command): Json<Command>| async move {
                    if store.failure().is_some() {
                        // Nothing proposed: the caller may try whoever leads next.
                        return Json(Answer::NotLeader(None));
                    }
                    Json(Answer::from(store.write_here(command).await))
                },
            ),
        )
        .route(
            READ_INDEX,
            post(|State(store): State<Store>| async move {
                if store.failure().is_some() {
                    return Json(Answer::NotLeader(None));
                }
                Json(Answer::from(store.read_index_here().await))
            }),
        )
        .route(
            ADD_MEMBER,
            post(
                |State(store): State<Store>, Json((id, node)): Json<(NodeId, Node)>| async move {
                    Json(Answer::from(store.add_member_here(id, node).await))
                },
            ),
        )
        .route(
            MEMBERS,
            post(|State(store): State<Store>| async move {
                Json(Answer::Done(store.members_here()))
            }),
        )
        .route(
            REMOVE_MEMBER,
            post(
                |State(store): State<Store>, Json(id): Json<NodeId>| async move {
                    Json(Answer::from(store.remove_member_here(id).await))
                },
            ),
        )
        .with_state(store);
    axum::Router::new()
        .route(
            APPEND,
            post(
                |State(raft): State<Raft<TypeConfig>>,
                 Json(rpc): Json<AppendEntriesRequest<TypeConfig>>| async move {
                    Json(raft.append_entries(rpc).await)
                },
            ),
        )
        .route(
            VOTE,
            post(
                |State(raft): State<Raft<TypeConfig>>, Json(rpc): Json<VoteRequest<NodeId>>| async move {
                    Json(raft.vote(rpc).await)
                },
            ),
        )
        .route(
            SNAPSHOT,
            post(
                |State(raft): State<Raft<TypeConfig>>,
                 Json(rpc): Json<InstallSnapshotRequest<TypeConfig>>| async move {
                    Json(raft.install_snapshot(rpc).await)
                },
            ),
        )
        .with_state(raft)
        .merge(writes)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// Serves this member's peer listener until `shutdown` completes: HTTPS that requires a client
/// certificate `tls` accepts (mutual TLS between the cluster's servers), or plain HTTP without
/// `tls`. A connection whose handshake fails is dropped alone.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let service = hyper_util::service::TowerToHyperService::new(store.peer_router());
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off a moment rather than spin.
                    tracing::warn!(error = %e, "peer listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (service, acceptor) = (service.clone(), acceptor.clone());
        tokio::spawn(async move {
            let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let served = match acceptor {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => {
                        http.serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "peer refused at the TLS handshake");
                        return;
                    }
                },
                None => {
                    http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "peer connection ended");
            }
        });
    }
}

/// The largest RPC body a member accepts: a full batch of entries, or a snapshot chunk as JSON.
const MAX_BODY: usize = 256 << 20;
