//! The cluster's signed bearer tokens: JSON Web Tokens signed (ES256) with the key every server
//! shares (`pki/sa.key`), so any server checks a token without asking the store, as
//! kube-apiserver checks ServiceAccount tokens. Today they name nodes (`system:node:NAME`,
//! given when a wasmlet joins); ServiceAccount tokens use the same key.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::auth::{Authenticator, UserInfo, bearer_token};
use crate::pki::PkiError;

/// The `iss` of every token this cluster signs (kube-apiserver's default issuer).
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The `aud` of the tokens this cluster signs and accepts.
const AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// The user name prefix of nodes, and their group.
pub(crate) const NODE_PREFIX: &str = "system:node:";
pub(crate) const NODES_GROUP: &str = "system:nodes";
/// Verified tokens remembered (verifying one costs an ECDSA check); past this the memory is
/// cleared and filled again.
const REMEMBERED: usize = 4096;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    iat: i64,
    nbf: i64,
    exp: i64,
}

/// Signs and checks the cluster's tokens.
pub(crate) struct Tokens {
    signing: EncodingKey,
    checking: DecodingKey,
    validation: Validation,
    /// Tokens already verified: their user and expiry (seconds since the epoch).
    remembered: Mutex<HashMap<String, (UserInfo, i64)>>,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Tokens {
    /// With the ECDSA P-256 key `key_pem` (PKCS#8).
    ///
    /// # Errors
    /// When the key cannot be read.
    pub(crate) fn new(key_pem: &str) -> Result<Tokens, PkiError> {
        let pair = rcgen::KeyPair::from_pem(key_pem)?;
        let signing = EncodingKey::from_ec_pem(key_pem.as_bytes()).map_err(PkiError::TokenKey)?;
        let checking = DecodingKey::from_ec_pem(pair.public_key_pem().as_bytes())
            .map_err(PkiError::TokenKey)?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 60;
        Ok(Tokens {
            signing,
            checking,
            validation,
            remembered: Mutex::new(HashMap::new()),
        })
    }

    /// A token naming user `subject`, valid for `lifetime`.
    pub(crate) fn issue(&self, subject: &str, lifetime: std::time::Duration) -> String {
        let iat = now();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: subject.into(),
            aud: AUDIENCE.into(),
            iat,
            nbf: iat,
            exp: iat.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.signing)
            .expect("an ES256 key signs")
    }

    /// The user a token names, when this cluster signed it and it is in date.
    pub(crate) fn check(&self, token: &str) -> Option<UserInfo> {
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return None;
        }
        if let Some((user, exp)) = self.remembered.lock().expect("tokens lock").get(token) {
            return (now() < *exp).then(|| user.clone());
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.checking, &self.validation)
            .ok()?
            .claims;
        // Only node tokens are issued today; any other subject is not ours.
        let node = claims.sub.strip_prefix(NODE_PREFIX)?;
        if node.is_empty() {
            return None;
        }
        let user = UserInfo {
            name: claims.sub.clone(),
            groups: vec![NODES_GROUP.into(), "system:authenticated".into()],
        };
        let mut remembered = self.remembered.lock().expect("tokens lock");
        if remembered.len() >= REMEMBERED {
            remembered.clear();
        }
        remembered.insert(token.to_owned(), (user.clone(), claims.exp));
        Some(user)
    }
}

impl Authenticator for Tokens {
    fn authenticate(&self, req: &Parts) -> Option<UserInfo> {
        self.check(bearer_token(&req.headers)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        rcgen::KeyPair::generate().expect("key").serialize_pem()
    }

    #[test]
    fn a_node_token_should_name_the_node_and_only_its_own_cluster_should_accept_it() {
        let tokens = Tokens::new(&key()).expect("key");
        let t = tokens.issue("system:node:edge-1", std::time::Duration::from_secs(3600));
        let user = tokens.check(&t).expect("accepted");
        assert_eq!(user.name, "system:node:edge-1");
        assert_eq!(user.groups, ["system:nodes", "system:authenticated"]);
        assert_eq!(tokens.check(&t), Some(user), "remembered");
        let other = Tokens::new(&key()).expect("key");
        assert_eq!(other.check(&t), None, "another cluster's key");
        let mut forged = t.clone();
        forged.pop();
        forged.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(tokens.check(&forged), None, "a changed signature");
        assert_eq!(tokens.check("not-a-jwt"), None);
        let admin = tokens.issue("system:admin", std::time::Duration::from_secs(3600));
        assert_eq!(tokens.check(&admin), None, "only node subjects");
    }

    #[test]
    fn an_expired_token_should_be_refused() {
        let tokens = Tokens::new(&key()).expect("key");
        let claims = Claims {
            iss: ISSUER.into(),
            sub: "system:node:old".into(),
            aud: AUDIENCE.into(),
            iat: now() - 7200,
            nbf: now() - 7200,
            exp: now() - 3600,
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &tokens.signing)
            .expect("signs");
        assert_eq!(tokens.check(&t), None);
    }
}
