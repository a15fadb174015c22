//! The cluster's signed bearer tokens: JSON Web Tokens signed (ES256) with the key every server
//! shares (`pki/sa.key`), so any server checks a token without asking the store, as
//! kube-apiserver checks ServiceAccount tokens. They name nodes (`system:node:NAME`, given when
//! a wasmlet joins) and ServiceAccounts (`system:serviceaccount:NS:NAME`, from the TokenRequest
//! API, with kube-apiserver's `kubernetes.io` claims); the public key is published as a JWKS
//! for OIDC discovery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// `aud`: one audience or several.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// An object a claim names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ObjectClaim {
    pub(crate) name: String,
    pub(crate) uid: String,
}

/// kube-apiserver's private `kubernetes.io` claims of a ServiceAccount token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct KubernetesClaims {
    pub(crate) namespace: String,
    pub(crate) serviceaccount: ObjectClaim,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pod: Option<ObjectClaim>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) secret: Option<ObjectClaim>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Audience,
    iat: i64,
    nbf: i64,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(
        rename = "kubernetes.io",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    kubernetes: Option<KubernetesClaims>,
}

/// What a ServiceAccount token asks for.
pub(crate) struct ServiceAccountToken<'a> {
    pub(crate) claims: KubernetesClaims,
    /// Audiences; empty: the API server's own.
    pub(crate) audiences: &'a [String],
    pub(crate) lifetime: std::time::Duration,
}

/// Signs and checks the cluster's tokens.
pub(crate) struct Tokens {
    signing: EncodingKey,
    checking: DecodingKey,
    validation: Validation,
    /// The key's id (base64url SHA-256 of its public key, as kube-apiserver's `kid`).
    kid: String,
    /// The public key's JWK.
    jwk: serde_json::Value,
    /// Tokens already verified, and what they say.
    remembered: Mutex<HashMap<String, Arc<Verified>>>,
}

/// What a verified token says.
struct Verified {
    sub: String,
    exp: i64,
    kubernetes: Option<KubernetesClaims>,
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
        let public = rcgen::PublicKeyData::subject_public_key_info(&pair);
        let b64 =
            |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
        let kid = b64(&<sha2::Sha256 as sha2::Digest>::digest(&public));
        // The uncompressed P-256 point: 0x04, X (32 bytes), Y (32 bytes).
        let raw = pair.public_key_raw();
        let jwk = serde_json::json!({
            "use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
            "x": b64(raw.get(1..33).unwrap_or_default()), "y": b64(raw.get(33..65).unwrap_or_default()),
        });
        Ok(Tokens {
            signing,
            checking,
            validation,
            kid,
            jwk,
            remembered: Mutex::new(HashMap::new()),
        })
    }

    /// A token naming user `subject`, valid for `lifetime`.
    pub(crate) fn issue(&self, subject: &str, lifetime: std::time::Duration) -> String {
        let iat = now();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: subject.into(),
            aud: Audience::One(AUDIENCE.into()),
            iat,
            nbf: iat,
            exp: iat.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
            jti: None,
            kubernetes: None,
        };
        self.sign(&claims)
    }

    fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signing).expect("an ES256 key signs")
    }

    /// A ServiceAccount token and its expiry (seconds since the epoch).
    pub(crate) fn issue_service_account(&self, t: &ServiceAccountToken<'_>) -> (String, i64) {
        let iat = now();
        let exp = iat.saturating_add(i64::try_from(t.lifetime.as_secs()).unwrap_or(i64::MAX));
        let audiences = if t.audiences.is_empty() {
            vec![AUDIENCE.to_owned()]
        } else {
            t.audiences.to_vec()
        };
        let claims = Claims {
            iss: ISSUER.into(),
            sub: format!(
                "{}{}:{}",
                crate::rbac::SA_PREFIX,
                t.claims.namespace,
                t.claims.serviceaccount.name
            ),
            aud: Audience::Many(audiences),
            iat,
            nbf: iat,
            exp,
            jti: Some(uuid::Uuid::new_v4().to_string()),
            kubernetes: Some(t.claims.clone()),
        };
        (self.sign(&claims), exp)
    }

    /// The claims of a ServiceAccount token for this API server (signed here, in date, for its
    /// audience); whether the objects it names still exist is the caller's to check.
    pub(crate) fn check_service_account(&self, token: &str) -> Option<KubernetesClaims> {
        let v = self.verified(token)?;
        let k = v.kubernetes.clone()?;
        let expected = format!(
            "{}{}:{}",
            crate::rbac::SA_PREFIX,
            k.namespace,
            k.serviceaccount.name
        );
        (v.sub == expected).then_some(k)
    }

    /// The OIDC issuer.
    pub(crate) fn issuer(&self) -> &'static str {
        ISSUER
    }

    /// The public keys, as a JWKS (`/openid/v1/jwks`).
    pub(crate) fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [self.jwk]})
    }

    /// The user a node token names, when this cluster signed it and it is in date.
    pub(crate) fn check(&self, token: &str) -> Option<UserInfo> {
        let v = self.verified(token)?;
        // Node tokens only: ServiceAccount tokens need their objects looked up.
        let node = v.sub.strip_prefix(NODE_PREFIX)?;
        (!node.is_empty() && v.kubernetes.is_none()).then(|| UserInfo {
            name: v.sub.clone(),
            groups: vec![NODES_GROUP.into(), "system:authenticated".into()],
        })
    }

    /// The claims of a token this cluster signed, in date and for its audience: verified once
    /// (an ECDSA check) and remembered until it expires, whichever authenticator asks.
    fn verified(&self, token: &str) -> Option<Arc<Verified>> {
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return None;
        }
        if let Some(v) = self.remembered.lock().expect("tokens lock").get(token) {
            return (now() < v.exp).then(|| Arc::clone(v));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.checking, &self.validation)
            .ok()?
            .claims;
        let v = Arc::new(Verified {
            sub: claims.sub,
            exp: claims.exp,
            kubernetes: claims.kubernetes,
        });
        let mut remembered = self.remembered.lock().expect("tokens lock");
        if remembered.len() >= REMEMBERED {
            remembered.clear();
        }
        remembered.insert(token.to_owned(), Arc::clone(&v));
        Some(v)
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
            aud: Audience::One(AUDIENCE.into()),
            iat: now() - 7200,
            nbf: now() - 7200,
            exp: now() - 3600,
            jti: None,
            kubernetes: None,
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &tokens.signing)
            .expect("signs");
        assert_eq!(tokens.check(&t), None);
    }

    #[test]
    fn a_service_account_token_should_carry_its_claims_and_name_its_account() {
        let tokens = Tokens::new(&key()).expect("key");
        let claims = KubernetesClaims {
            namespace: "team".into(),
            serviceaccount: ObjectClaim {
                name: "ci".into(),
                uid: "u-1".into(),
            },
            pod: None,
            secret: None,
        };
        let (t, exp) = tokens.issue_service_account(&ServiceAccountToken {
            claims: claims.clone(),
            audiences: &[],
            lifetime: std::time::Duration::from_secs(600),
        });
        assert!(exp > now());
        assert_eq!(tokens.check_service_account(&t), Some(claims.clone()));
        assert_eq!(tokens.check(&t), None, "not a node token");
        let (other, _) = tokens.issue_service_account(&ServiceAccountToken {
            claims,
            audiences: &["vault".to_owned()],
            lifetime: std::time::Duration::from_secs(600),
        });
        assert_eq!(
            tokens.check_service_account(&other),
            None,
            "another audience"
        );
        let header = jsonwebtoken::decode_header(&t).expect("header");
        assert_eq!(header.kid.as_deref(), Some(tokens.kid.as_str()));
        assert_eq!(tokens.jwks()["keys"][0]["kid"], tokens.kid.as_str());
    }
}
