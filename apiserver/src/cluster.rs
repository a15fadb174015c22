//! The servers of one cluster: the join token, a newcomer joining (its side and the serving
//! side), and the membership endpoints `wasmkube cluster` uses.
//!
//! ```text
//! newcomer                                     any server of the cluster
//!   GET  /wasmkube/cacerts ─────────────────►  ca.crt (public; checked against the token)
//!   POST /wasmkube/join   (Bearer secret) ──►  its id, the CA and its key, admin token
//!   opens its store (joining), serves its peer listener
//!   POST /wasmkube/members (admin) ─────────►  the leader adds it: learner, catch-up, voter
//! ```
//!
//! The first server that listens for peers writes `DATA_DIR/join-token`; so does every server
//! that joined. Every server writes `DATA_DIR/node-token`, whose secret only buys a node's
//! credentials:
//!
//! ```text
//! wasmlet --join                               any server of the cluster
//!   GET  /wasmkube/cacerts ─────────────────►  ca.crt (checked against the token)
//!   POST /wasmkube/join-node (Bearer secret) ►  a token and a certificate for
//!                                              system:node:NAME (group system:nodes)
//! ``` A joined server records its id in `DATA_DIR/member-id` once it is a member,
//! and on restart rejoins the group from its store instead of asking again.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use wasmkube_client::join::{self, JoinToken};
use wasmkube_store::{NodeId, Role, Store};

use crate::error::ApiError;
use crate::rest::respond_json;

/// Where a newcomer is given its credentials.
pub(crate) const JOIN_PATH: &str = "/wasmkube/join";
/// The membership: `GET` lists, `POST` adds, `DELETE …/ID` removes.
pub const MEMBERS_PATH: &str = "/wasmkube/members";

/// Joining an existing cluster (`--join URL --token-file FILE`).
#[derive(Debug, Clone)]
pub struct Join {
    /// An API server of the cluster, `https://host:port`.
    pub server: String,
    /// The cluster's join token.
    pub token: JoinToken,
}

/// What a newcomer is given.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Credentials {
    id: NodeId,
    ca_cert: String,
    ca_key: String,
    admin_token: String,
    join_secret: String,
    node_secret: String,
    sa_key: String,
    /// The `EncryptionConfiguration` every server must share (older servers send none).
    #[serde(default)]
    encryption_config: Option<String>,
}

/// A member to add (`POST /wasmkube/members`).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewMember {
    id: NodeId,
    peer: String,
    api: String,
}

/// One member as `GET /wasmkube/members` lists it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Its raft id.
    pub id: NodeId,
    /// Its peer listener.
    pub peer: String,
    /// Its API server.
    pub api: String,
    /// `leader`, `follower` or `learner`.
    pub role: String,
    /// The last log index applied there (as far as the answering server knows).
    pub applied: Option<u64>,
}

/// How long a node's token lasts (the kubelet's client certificate: a year).
const NODE_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// The cluster's secret `DATA_DIR/pki/NAME` (`join.secret`, `node.secret`), made on first use.
fn secret(dir: &Path, name: &str) -> Result<String, crate::pki::PkiError> {
    let path = dir.join("pki").join(name);
    if let Ok(s) = std::fs::read_to_string(&path)
        && !s.trim().is_empty()
    {
        return Ok(s.trim().to_owned());
    }
    let secret = crate::pki::random_token();
    crate::pki::write_private(&path, &secret)?;
    Ok(secret)
}

/// The serving side: who may join, and the membership.
pub(crate) struct Membership {
    store: Store,
    /// `None`: this server takes no newcomers (it has no peer listener).
    secret: Option<String>,
    /// Buys a node's credentials (and so does the join secret).
    node_secret: String,
    pki: crate::pki::Pki,
    tokens: std::sync::Arc<crate::tokens::Tokens>,
    /// Ids given to newcomers that may not be members yet.
    promised: Mutex<BTreeSet<NodeId>>,
    /// The encryption configuration in force, which newcomers get too.
    encryption_config: Option<String>,
}

impl Membership {
    /// For a server in `dir` with these credentials, signing node tokens with `tokens`;
    /// writes `DATA_DIR/node-token`, and with a peer listener it takes newcomers and writes
    /// `DATA_DIR/join-token`.
    pub(crate) fn new(
        dir: &Path,
        store: Store,
        pki: &crate::pki::Pki,
        tokens: std::sync::Arc<crate::tokens::Tokens>,
        joinable: bool,
    ) -> Result<Membership, crate::Error> {
        let node_secret = secret(dir, "node.secret")?;
        let token = JoinToken::new(&pki.ca_pem, node_secret.clone());
        crate::pki::write_private(&dir.join("node-token"), &format!("{token}\n"))?;
        let secret = if joinable {
            let secret = secret(dir, "join.secret")?;
            let token = JoinToken::new(&pki.ca_pem, secret.clone());
            crate::pki::write_private(&dir.join("join-token"), &format!("{token}\n"))?;
            Some(secret)
        } else {
            None
        };
        Ok(Membership {
            store,
            secret,
            node_secret,
            pki: pki.clone(),
            tokens,
            promised: Mutex::new(BTreeSet::new()),
            encryption_config: None,
        })
    }

    /// Newcomers get `config` (an `EncryptionConfiguration`) with the credentials.
    pub(crate) fn sharing_encryption(mut self, config: String) -> Self {
        self.encryption_config = Some(config);
        self
    }

    /// `GET /wasmkube/cacerts`: the cluster CA, to anyone (it is checked against the token).
    pub(crate) fn ca(&self) -> Response {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            self.pki.ca_pem.clone(),
        )
            .into_response()
    }

    /// `POST /wasmkube/join-node`: a node showing the node secret (or the join secret), or an
    /// administrator, gets credentials for `system:node:NAME`.
    pub(crate) fn join_node(
        &self,
        headers: &HeaderMap,
        user: Option<&crate::auth::UserInfo>,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let shown = crate::auth::bearer_token(headers).unwrap_or_default();
        let secret_shown = [Some(&self.node_secret), self.secret.as_ref()]
            .into_iter()
            .flatten()
            .any(|s| wasmkube_api::secrets_equal(shown.as_bytes(), s.as_bytes()));
        if !secret_shown && !user.is_some_and(crate::auth::UserInfo::is_master) {
            return Err(match user {
                Some(u) => ApiError::forbidden_request(
                    &u.name,
                    &crate::auth::Attributes::of(&Method::POST, join::NODE_JOIN_PATH, false),
                ),
                None => ApiError::unauthorized(),
            });
        }
        let request: join::NodeRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("a node join is {{nodeName}}: {e}")))?;
        let name = request.node_name;
        if !wasmkube_api::names::is_dns1123_subdomain(&name) {
            return Err(ApiError::invalid_options(
                "NodeRequest",
                &[crate::error::FieldError::invalid(
                    "nodeName",
                    &name,
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                     characters, '-' or '.', and must start and end with an alphanumeric character",
                )],
            ));
        }
        let identity = self
            .pki
            .node_identity(&name)
            .map_err(|e| ApiError::internal_with_cause("cannot issue the node certificate", &e))?;
        let credentials = join::NodeCredentials {
            token: self.tokens.issue(
                &format!("{}{name}", crate::tokens::NODE_PREFIX),
                NODE_TOKEN_LIFETIME,
            ),
            certificate: identity.cert_pem,
            key: identity.key_pem,
            ca: self.pki.ca_pem.clone(),
        };
        tracing::info!(node = %name, "a node joined");
        Ok(respond_json(
            StatusCode::OK,
            &serde_json::to_value(credentials).expect("serializes"),
            &[],
        ))
    }

    /// `POST /wasmkube/join`: a newcomer showing the join secret gets an id and the cluster's
    /// credentials.
    pub(crate) fn join(&self, headers: &HeaderMap) -> Result<Response, ApiError> {
        let Some(secret) = &self.secret else {
            return Err(ApiError::bad_request(
                "this server takes no joining servers: it was started without --peer-listen",
            ));
        };
        let shown = crate::auth::bearer_token(headers).unwrap_or_default();
        if !wasmkube_api::secrets_equal(shown.as_bytes(), secret.as_bytes()) {
            return Err(ApiError::unauthorized());
        }
        let id = {
            let mut promised = self.promised.lock().expect("not poisoned");
            let known = self
                .store
                .members_here()
                .iter()
                .map(|m| m.id)
                .max()
                .unwrap_or(0);
            let id = known.max(promised.last().copied().unwrap_or(0)) + 1;
            promised.insert(id);
            id
        };
        tracing::info!(id, "a server is joining");
        let credentials = Credentials {
            id,
            ca_cert: self.pki.ca_pem.clone(),
            ca_key: self.pki.ca_key_pem.clone(),
            admin_token: self.pki.admin_token.clone(),
            join_secret: secret.clone(),
            node_secret: self.node_secret.clone(),
            sa_key: self.pki.sa_key_pem.clone(),
            encryption_config: self.encryption_config.clone(),
        };
        Ok(respond_json(
            StatusCode::OK,
            &serde_json::to_value(credentials).expect("serializes"),
            &[],
        ))
    }

    /// The membership endpoints for an authenticated caller.
    pub(crate) async fn members(
        &self,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        match (method, path.strip_prefix(MEMBERS_PATH)) {
            (&Method::GET, Some("")) => {
                let members: Vec<MemberStatus> = self
                    .store
                    .members()
                    .await
                    .into_iter()
                    .map(|m| MemberStatus {
                        id: m.id,
                        peer: m.addr,
                        api: m.api,
                        role: match m.role {
                            Role::Leader => "leader",
                            Role::Follower => "follower",
                            Role::Learner => "learner",
                        }
                        .into(),
                        applied: m.matched,
                    })
                    .collect();
                Ok(respond_json(
                    StatusCode::OK,
                    &serde_json::to_value(members).expect("serializes"),
                    &[],
                ))
            }
            (&Method::POST, Some("")) => {
                let new: NewMember = serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!("a member is {{id, peer, api}}: {e}"))
                })?;
                self.store
                    .add_member(
                        new.id,
                        wasmkube_store::Node {
                            addr: new.peer,
                            api: new.api,
                        },
                    )
                    .await?;
                tracing::info!(id = new.id, "member added");
                Ok(respond_json(StatusCode::OK, &serde_json::json!({}), &[]))
            }
            (&Method::DELETE, Some(id)) if id.starts_with('/') => {
                let id: NodeId = id[1..].parse().map_err(|_| {
                    ApiError::bad_request(format!("{:?} is not a member id", &id[1..]))
                })?;
                self.store.remove_member(id).await?;
                tracing::info!(id, "member removed");
                Ok(respond_json(StatusCode::OK, &serde_json::json!({}), &[]))
            }
            _ => Err(ApiError::no_route(path)),
        }
    }
}

/// The newcomer's first step: checks the server's CA against the token and asks for
/// credentials, which it writes into `dir/pki` (replacing any of its own). Its id.
///
/// # Errors
/// When the server cannot be reached, is not the token's cluster, or refuses.
pub(crate) async fn fetch_credentials(dir: &Path, join: &Join) -> Result<NodeId, crate::Error> {
    let ca = join::cluster_ca(&join.server, &join.token).await?;
    let answer = join::call(
        &join.server,
        &ca,
        join.token.secret(),
        Method::POST,
        JOIN_PATH,
        None,
    )
    .await?;
    let c: Credentials = serde_json::from_str(&answer).map_err(|e| {
        crate::Error::Io(std::io::Error::other(format!(
            "{} answered the join with something else: {e}",
            join.server
        )))
    })?;
    let pki = dir.join("pki");
    for stale in ["apiserver.crt", "peer.crt", "apiserver-kubelet-client.crt"] {
        let _ = std::fs::remove_file(pki.join(stale));
    }
    crate::pki::write_private(&pki.join("ca.crt"), &c.ca_cert)?;
    crate::pki::write_private(&pki.join("ca.key"), &c.ca_key)?;
    crate::pki::write_private(&pki.join("admin.token"), &c.admin_token)?;
    crate::pki::write_private(&pki.join("join.secret"), &c.join_secret)?;
    crate::pki::write_private(&pki.join("node.secret"), &c.node_secret)?;
    crate::pki::write_private(&pki.join("sa.key"), &c.sa_key)?;
    if let Some(config) = &c.encryption_config {
        crate::pki::write_private(&crate::encryption::default_path(dir), config)?;
    }
    Ok(c.id)
}

/// The newcomer's last step, once its peer listener serves: asks the cluster to add it
/// (answered when it has caught up), then records its id in `dir/member-id`.
///
/// # Errors
/// When the cluster refuses or cannot be reached.
pub(crate) async fn become_member(
    dir: &Path,
    join: &Join,
    pki: &crate::pki::Pki,
    id: NodeId,
    peer: String,
    api: String,
) -> Result<(), crate::Error> {
    let body = serde_json::to_value(NewMember { id, peer, api }).expect("serializes");
    // The cluster waits out an election itself (the store asks whoever leads).
    join::call(
        &join.server,
        &pki.ca_pem,
        &pki.admin_token,
        Method::POST,
        MEMBERS_PATH,
        Some(&body),
    )
    .await?;
    crate::pki::write_private(&dir.join("member-id"), &id.to_string())?;
    Ok(())
}

/// The id this server has in its group: recorded when it joined, 1 for the server that
/// started the group.
pub(crate) fn member_id(dir: &Path) -> Option<NodeId> {
    std::fs::read_to_string(dir.join("member-id"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}
