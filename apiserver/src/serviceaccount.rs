//! ServiceAccount identities, as kube-apiserver gives them: the TokenRequest API
//! (`serviceaccounts/{name}/token`, `kubectl create token`) signs a JWT for the account,
//! optionally bound to a Pod or Secret; a request bearing one acts as
//! `system:serviceaccount:NS:NAME` (groups `system:serviceaccounts`,
//! `system:serviceaccounts:NS`) for as long as the account — and the object it is bound to —
//! still exists with the same uid (`--service-account-lookup`), checked against the watch
//! caches, not the store.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use serde_json::{Value, json};
use wasmkube_api::ResourceInfo;

use crate::Apiserver;
use crate::auth::{AUTHENTICATED, Authenticator, UserInfo, bearer_token};
use crate::cache::{Cacher, Caches};
use crate::error::{ApiError, FieldError};
use crate::registry::Registry;
use crate::request::Call;
use crate::rest::respond_json;
use crate::tokens::{KubernetesClaims, ObjectClaim, ServiceAccountToken, Tokens};

/// The default lifetime of a requested token (kube-apiserver's one hour).
const DEFAULT_SECONDS: i64 = 3600;
/// The shortest lifetime a token may be asked for.
const MIN_SECONDS: i64 = 600;

/// The groups of ServiceAccount `namespace`/* users.
pub(crate) fn groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{namespace}"),
        AUTHENTICATED.into(),
    ]
}

/// The uid of the object stored at `key`, from `cache`.
fn uid_at(cache: &Cacher, key: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Meta {
        metadata: Uid,
    }
    #[derive(serde::Deserialize)]
    struct Uid {
        uid: String,
    }
    let o = cache.get(key)?;
    serde_json::from_slice::<Meta>(&o.json())
        .ok()
        .map(|m| m.metadata.uid)
}

/// Authenticates ServiceAccount tokens.
pub(crate) struct ServiceAccountTokens {
    tokens: Arc<Tokens>,
    accounts: (ResourceInfo, Arc<Cacher>),
    pods: (ResourceInfo, Arc<Cacher>),
    secrets: (ResourceInfo, Arc<Cacher>),
}

impl ServiceAccountTokens {
    pub(crate) fn new(tokens: Arc<Tokens>, registry: &Registry, caches: &Caches) -> Self {
        let cache = |info: ResourceInfo| {
            let kind = registry
                .by_kind(info.group, info.kind)
                .expect("core kinds are registered");
            (info, caches.of_kind(&*kind))
        };
        ServiceAccountTokens {
            tokens,
            accounts: cache(ResourceInfo::of::<ServiceAccount>()),
            pods: cache(ResourceInfo::of::<Pod>()),
            secrets: cache(ResourceInfo::of::<Secret>()),
        }
    }

    fn exists(
        &self,
        (info, cache): &(ResourceInfo, Arc<Cacher>),
        ns: &str,
        o: &ObjectClaim,
    ) -> bool {
        uid_at(cache, &info.key(Some(ns), &o.name)).is_some_and(|uid| uid == o.uid)
    }
}

impl Authenticator for ServiceAccountTokens {
    fn authenticate(&self, req: &Parts) -> Option<UserInfo> {
        let k = self
            .tokens
            .check_service_account(bearer_token(&req.headers)?)?;
        let ns = k.namespace.as_str();
        let live = self.exists(&self.accounts, ns, &k.serviceaccount)
            && k.pod
                .as_ref()
                .is_none_or(|p| self.exists(&self.pods, ns, p))
            && k.secret
                .as_ref()
                .is_none_or(|s| self.exists(&self.secrets, ns, s));
        live.then(|| UserInfo {
            name: format!("{}{ns}:{}", crate::rbac::SA_PREFIX, k.serviceaccount.name),
            groups: groups(ns),
        })
    }
}

fn invalid(name: &str, field: &str, value: impl std::fmt::Display, why: &str) -> ApiError {
    ApiError::invalid_kind(
        "authentication.k8s.io",
        "TokenRequest",
        name,
        &[FieldError::invalid(field, value, why)],
    )
}

impl Apiserver {
    /// The object stored at `key`: from its watch cache (when that has it, with uid `uid` if
    /// one is wanted), else from the store. A node asks for a token per pod start; this spares
    /// the store two reads each.
    async fn cached_or_stored(
        &self,
        kind: &dyn crate::registry::Kind,
        key: &str,
        uid: Option<&str>,
    ) -> Result<Option<Value>, ApiError> {
        if let Some(o) = self.caches.of_kind(kind).get(key)
            && let Ok(v) = serde_json::from_slice::<Value>(&o.json())
            && uid.is_none_or(|u| v["metadata"]["uid"] == u)
        {
            return Ok(Some(v));
        }
        match self.store.get(key).await? {
            Some(kv) => serde_json::from_slice(&kv.value)
                .map(Some)
                .map_err(|e| ApiError::internal(format!("stored object is not JSON: {e}"))),
            None => Ok(None),
        }
    }

    /// `POST .../serviceaccounts/{name}/token`: a signed token for the account.
    pub(crate) async fn token_request(&self, call: &Call<'_>) -> Result<Response, ApiError> {
        let t = &call.t;
        let name = t.name.as_deref().expect("routed with a name");
        let ns = t.namespace.clone().unwrap_or_default();
        let account_key = t.kind.info().key(Some(&ns), name);
        let account = self
            .cached_or_stored(&*t.kind, &account_key, None)
            .await?
            .ok_or_else(|| ApiError::not_found(t.kind.info(), name))?;
        let mut req = call.decode()?.object;
        if req.get("kind").is_some_and(|k| k != "TokenRequest") {
            return Err(ApiError::bad_request("the body is not a TokenRequest"));
        }
        let spec = req.get("spec").cloned().unwrap_or_else(|| json!({}));
        let seconds = spec
            .get("expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(DEFAULT_SECONDS);
        if seconds < MIN_SECONDS {
            return Err(invalid(
                name,
                "spec.expirationSeconds",
                seconds,
                "may not specify a duration less than 10 minutes",
            ));
        }
        if seconds > 1 << 32 {
            return Err(invalid(
                name,
                "spec.expirationSeconds",
                seconds,
                "may not specify a duration larger than 2^32 seconds",
            ));
        }
        let audiences: Vec<String> = crate::object::each(&spec, "audiences")
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        let mut claims = KubernetesClaims {
            namespace: ns.clone(),
            serviceaccount: ObjectClaim {
                name: name.to_owned(),
                uid: account["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            },
            pod: None,
            secret: None,
        };
        if let Some(bound) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
            let kind = bound
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let object = bound
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let info = match kind {
                "Pod" => ResourceInfo::of::<Pod>(),
                "Secret" => ResourceInfo::of::<Secret>(),
                other => {
                    return Err(ApiError::invalid_kind(
                        "authentication.k8s.io",
                        "TokenRequest",
                        name,
                        &[FieldError::not_supported(
                            "spec.boundObjectRef.kind",
                            other,
                            &["Pod", "Secret"],
                        )],
                    ));
                }
            };
            let want_uid = bound
                .get("uid")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty());
            let bound_kind = self
                .registry
                .by_kind("", info.kind)
                .expect("core kinds are registered");
            let stored = self
                .cached_or_stored(&*bound_kind, &info.key(Some(&ns), object), want_uid)
                .await?
                .ok_or_else(|| ApiError::not_found(&info, object))?;
            let uid = stored["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if let Some(want) = bound
                .get("uid")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                && want != uid
            {
                return Err(ApiError::conflict(
                    &info,
                    object,
                    &format!(
                        "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                ));
            }
            // NodeRestriction: a node asks only for tokens bound to its own pods.
            if let Some(node) = call.q.user.as_ref().and_then(crate::nodeauth::node_of)
                && (kind != "Pod" || stored["spec"]["nodeName"] != node)
            {
                return Err(ApiError::forbidden(
                    t.kind.info(),
                    name,
                    if kind == "Pod" {
                        "node requested token bound to a pod scheduled on a different node"
                    } else {
                        "node requested token not bound to a pod"
                    },
                ));
            }
            let claim = Some(ObjectClaim {
                name: object.to_owned(),
                uid: uid.clone(),
            });
            if kind == "Pod" {
                claims.pod = claim;
            } else {
                claims.secret = claim;
            }
            req["spec"]["boundObjectRef"]["uid"] = json!(uid);
        }
        if claims.pod.is_none()
            && let Some(_node) = call.q.user.as_ref().and_then(crate::nodeauth::node_of)
        {
            return Err(ApiError::forbidden(
                t.kind.info(),
                name,
                "node requested token not bound to a pod",
            ));
        }
        let (token, exp) = self.tokens.issue_service_account(&ServiceAccountToken {
            claims,
            audiences: &audiences,
            lifetime: Duration::from_secs(u64::try_from(seconds).unwrap_or(0)),
        });
        let expires = jiff::Timestamp::from_second(exp)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        req["apiVersion"] = json!("authentication.k8s.io/v1");
        req["kind"] = json!("TokenRequest");
        req["metadata"] =
            json!({"name": name, "namespace": ns, "creationTimestamp": crate::object::now()});
        req["spec"]["expirationSeconds"] = json!(seconds);
        req["spec"]["audiences"] = json!(if audiences.is_empty() {
            vec![self.tokens.issuer().to_owned()]
        } else {
            audiences
        });
        req["status"] = json!({"token": token, "expirationTimestamp": expires});
        Ok(respond_json(StatusCode::CREATED, &req, &[]))
    }
}

/// `/.well-known/openid-configuration` for the API server at `server` (host:port).
pub(crate) fn openid_configuration(tokens: &Tokens, server: &str) -> Value {
    json!({
        "issuer": tokens.issuer(),
        "jwks_uri": format!("https://{server}/openid/v1/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    })
}
