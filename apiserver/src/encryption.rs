//! Encryption at rest, as kube-apiserver's `--encryption-provider-config`: an
//! `EncryptionConfiguration` (apiserver.config.k8s.io/v1, the upstream file format) lists, per
//! resource, providers in order — the first encrypts writes, all of them read. Providers:
//! `aesgcm` (AES-GCM with a random nonce per write and the storage key as authenticated data,
//! 16- or 32-byte keys) and `identity` (plain).
//!
//! The store stamps `metadata.resourceVersion` into what it stores, so a sealed object is kept
//! as a small JSON envelope, `{"k8s:enc":"aesgcm:v1:KEY:BASE64(nonce‖ciphertext)",
//! "metadata":{"resourceVersion":"N"}}`; the object's JSON, and so every Secret value, exists
//! only inside the ciphertext — in the raft log, snapshots and the database file alike. The
//! store opens envelopes on every read ([`wasmkube_store::ValueTransformer`]).

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The envelope's marker key (sorted first, so an envelope starts with it).
const MARKER: &str = "k8s:enc";
const ENVELOPE_START: &[u8] = b"{\"k8s:enc\":\"";

/// Where a server keeps the configuration it made (or got when it joined).
pub(crate) fn default_path(dir: &Path) -> std::path::PathBuf {
    dir.join("pki").join("encryption-config.yaml")
}

/// The configuration a server in `dir` uses: `path` when given, else the default file, made
/// on first start; and its text.
///
/// # Errors
/// When it cannot be read, written or used.
pub(crate) fn resolve(
    dir: &Path,
    path: Option<&Path>,
) -> Result<(Encryption, String), crate::Error> {
    let path = match path {
        Some(p) => p.to_owned(),
        None => {
            let p = default_path(dir);
            if !p.exists() {
                crate::pki::write_private(&p, &Encryption::generate())?;
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|source| EncryptionError::Read {
        path: path.clone(),
        source,
    })?;
    Ok((Encryption::parse(&text)?, text))
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an `EncryptionConfiguration` this server can use.
    #[error("encryption configuration: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<RuleSpec>,
}

#[derive(Deserialize)]
struct RuleSpec {
    resources: Vec<String>,
    providers: Vec<ProviderSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderSpec {
    aesgcm: Option<KeysSpec>,
    identity: Option<serde_json::Value>,
    aescbc: Option<serde_json::Value>,
    secretbox: Option<serde_json::Value>,
    kms: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct KeysSpec {
    keys: Vec<KeySpec>,
}

#[derive(Deserialize)]
struct KeySpec {
    name: String,
    secret: String,
}

/// One named AES-GCM key.
struct Key {
    name: String,
    key: LessSafeKey,
}

enum Provider {
    AesGcm(Vec<Key>),
    Identity,
}

struct Rule {
    /// `secrets`, `deployments.apps`, `*.apps`, `*.` (every core resource), `*.*`.
    resources: Vec<String>,
    providers: Vec<Provider>,
}

/// The encryption configuration in force (the default encrypts nothing).
pub struct Encryption {
    rules: Vec<Rule>,
    random: SystemRandom,
}

impl Default for Encryption {
    fn default() -> Self {
        Encryption {
            rules: Vec::new(),
            random: SystemRandom::new(),
        }
    }
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryption")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

fn matches(pattern: &str, plural: &str, group: &str) -> bool {
    let qualified = if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    };
    match pattern.split_once('.') {
        _ if pattern == qualified => true,
        Some(("*", "*")) => true,
        Some(("*", g)) => g == group,
        _ => false,
    }
}

impl Encryption {
    /// Reads an `EncryptionConfiguration` file.
    ///
    /// # Errors
    /// When it cannot be read, or names a provider or key this server cannot use.
    pub fn load(path: &Path) -> Result<Encryption, EncryptionError> {
        let text = std::fs::read_to_string(path).map_err(|source| EncryptionError::Read {
            path: path.to_owned(),
            source,
        })?;
        Encryption::parse(&text)
    }

    /// Parses an `EncryptionConfiguration`.
    ///
    /// # Errors
    /// When it is not one, or names a provider or key this server cannot use.
    pub fn parse(text: &str) -> Result<Encryption, EncryptionError> {
        let invalid = |why: String| EncryptionError::Invalid(why);
        let file: File = serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if file.kind != "EncryptionConfiguration"
            || !file.api_version.starts_with("apiserver.config.k8s.io/")
        {
            return Err(invalid(format!(
                "kind {} in {} is not apiserver.config.k8s.io EncryptionConfiguration",
                file.kind, file.api_version
            )));
        }
        let mut rules = Vec::new();
        for (i, spec) in file.resources.into_iter().enumerate() {
            let mut providers = Vec::new();
            for p in spec.providers {
                if p.aescbc.is_some() || p.secretbox.is_some() || p.kms.is_some() {
                    return Err(invalid(format!(
                        "resources[{i}]: only the aesgcm and identity providers are supported"
                    )));
                }
                match (p.aesgcm, p.identity) {
                    (Some(keys), None) => {
                        let mut out = Vec::new();
                        for k in keys.keys {
                            let raw = base64::engine::general_purpose::STANDARD
                                .decode(k.secret.trim())
                                .map_err(|e| invalid(format!("key {}: {e}", k.name)))?;
                            let alg = match raw.len() {
                                16 => &AES_128_GCM,
                                32 => &AES_256_GCM,
                                n => {
                                    return Err(invalid(format!(
                                        "key {}: an aesgcm key has 16 or 32 bytes, not {n}",
                                        k.name
                                    )));
                                }
                            };
                            let key = UnboundKey::new(alg, &raw)
                                .map_err(|_| invalid(format!("key {}: unusable", k.name)))?;
                            if k.name.is_empty() || k.name.contains(':') {
                                return Err(invalid(format!(
                                    "key name {:?}: non-empty, without ':'",
                                    k.name
                                )));
                            }
                            out.push(Key {
                                name: k.name,
                                key: LessSafeKey::new(key),
                            });
                        }
                        if out.is_empty() {
                            return Err(invalid(format!("resources[{i}]: aesgcm without keys")));
                        }
                        providers.push(Provider::AesGcm(out));
                    }
                    (None, Some(_)) => providers.push(Provider::Identity),
                    _ => {
                        return Err(invalid(format!(
                            "resources[{i}]: each provider entry names exactly one provider"
                        )));
                    }
                }
            }
            rules.push(Rule {
                resources: spec.resources,
                providers,
            });
        }
        Ok(Encryption {
            rules,
            random: SystemRandom::new(),
        })
    }

    /// A configuration that encrypts Secrets with a new random 32-byte key (and reads plain
    /// ones), as `wasmkube up` writes on first start.
    pub fn generate() -> String {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .expect("the system has randomness");
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n      - secrets\n    providers:\n      - aesgcm:\n          keys:\n            - name: key1\n              secret: {}\n      - identity: {{}}\n",
            base64::engine::general_purpose::STANDARD.encode(key)
        )
    }

    /// The key that writes `plural.group`, when one does.
    fn writer(&self, plural: &str, group: &str) -> Option<&Key> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.resources.iter().any(|p| matches(p, plural, group)))?;
        match rule.providers.first()? {
            Provider::AesGcm(keys) => keys.first(),
            Provider::Identity => None,
        }
    }

    fn key_named(&self, name: &str) -> Option<&Key> {
        self.rules
            .iter()
            .flat_map(|r| &r.providers)
            .filter_map(|p| match p {
                Provider::AesGcm(keys) => Some(keys),
                Provider::Identity => None,
            })
            .flatten()
            .find(|k| k.name == name)
    }

    /// The value to store at `key` for an object of `plural.group`: sealed when a rule says
    /// so, as it is otherwise.
    pub(crate) fn seal(
        &self,
        plural: &str,
        group: &str,
        key: &str,
        value: Box<RawValue>,
    ) -> Box<RawValue> {
        let Some(k) = self.writer(plural, group) else {
            return value;
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .expect("the system has randomness");
        let mut data = value.get().as_bytes().to_vec();
        k.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut data,
            )
            .expect("AES-GCM seals any length a store holds");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&data);
        let sealed = format!(
            "aesgcm:v1:{}:{}",
            k.name,
            base64::engine::general_purpose::STANDARD.encode(blob)
        );
        serde_json::value::to_raw_value(&serde_json::json!({ MARKER: sealed, "metadata": {} }))
            .expect("JSON serializes")
    }

    /// The object in a stored value: an envelope opened (with its `resourceVersion` put back),
    /// anything else as it is.
    ///
    /// # Errors
    /// An envelope this configuration has no key for, or that does not authenticate.
    pub(crate) fn open(&self, key: &str, stored: Bytes) -> Result<Bytes, String> {
        if !stored.starts_with(ENVELOPE_START) {
            return Ok(stored);
        }
        #[derive(Deserialize)]
        struct Envelope {
            #[serde(rename = "k8s:enc")]
            sealed: String,
            #[serde(default)]
            metadata: serde_json::Map<String, serde_json::Value>,
        }
        let env: Envelope = serde_json::from_slice(&stored).map_err(|e| e.to_string())?;
        let rest = env
            .sealed
            .strip_prefix("aesgcm:v1:")
            .ok_or("an envelope of an unknown provider")?;
        let (name, blob) = rest.split_once(':').ok_or("a malformed envelope")?;
        let k = self
            .key_named(name)
            .ok_or_else(|| format!("no key named {name} in the encryption configuration"))?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .map_err(|e| e.to_string())?;
        if blob.len() < NONCE_LEN {
            return Err("a malformed envelope".into());
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let mut data = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "a malformed nonce")?;
        let plain = k
            .key
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut data)
            .map_err(|_| format!("the value does not authenticate with key {name}"))?;
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(plain).map_err(|e| e.to_string())?;
        if let Some(rv) = env.metadata.get("resourceVersion")
            && let Some(meta) = obj
                .entry("metadata")
                .or_insert_with(|| serde_json::Value::Object(Default::default()))
                .as_object_mut()
        {
            meta.insert("resourceVersion".into(), rv.clone());
        }
        Ok(Bytes::from(
            serde_json::to_vec(&obj).expect("JSON serializes"),
        ))
    }
}

/// The store's view of [`Encryption`].
pub(crate) struct Opener(pub(crate) Arc<Encryption>);

impl wasmkube_store::ValueTransformer for Opener {
    fn open(&self, key: &str, stored: Bytes) -> Result<Bytes, String> {
        self.0.open(key, stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: serde_json::Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).expect("raw")
    }

    #[test]
    fn a_secret_should_be_sealed_opened_and_bound_to_its_key() {
        let enc = Encryption::parse(&Encryption::generate()).expect("config");
        let secret = serde_json::json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"p": "aHVudGVyMg=="}});
        let sealed = enc.seal(
            "secrets",
            "",
            "/core/secrets/default/s",
            raw(secret.clone()),
        );
        assert!(
            !sealed.get().contains("aHVudGVyMg=="),
            "the value is not in the envelope"
        );
        assert!(sealed.get().as_bytes().starts_with(ENVELOPE_START));
        // The store stamps the envelope's metadata; opening puts the revision back.
        let mut stamped: serde_json::Value = serde_json::from_str(sealed.get()).expect("json");
        stamped["metadata"]["resourceVersion"] = "42".into();
        let stored = Bytes::from(serde_json::to_vec(&stamped).expect("json"));
        let opened: serde_json::Value = serde_json::from_slice(
            &enc.open("/core/secrets/default/s", stored.clone())
                .expect("opens"),
        )
        .expect("json");
        assert_eq!(opened["data"], secret["data"]);
        assert_eq!(opened["metadata"]["resourceVersion"], "42");
        assert!(
            enc.open("/core/secrets/default/other", stored.clone())
                .is_err(),
            "moved to another key, it does not authenticate"
        );
        let other = Encryption::parse(&Encryption::generate()).expect("config");
        assert!(
            other.open("/core/secrets/default/s", stored).is_err(),
            "another key set"
        );
        // Other kinds, and plain values, pass through.
        let cm = raw(serde_json::json!({"kind": "ConfigMap"}));
        assert_eq!(enc.seal("configmaps", "", "/k", cm.clone()).get(), cm.get());
        let plain = Bytes::from_static(b"{\"kind\":\"Secret\"}");
        assert_eq!(enc.open("/k", plain.clone()).expect("plain"), plain);
    }

    #[test]
    fn resources_should_match_as_kube_apiserver_names_them() {
        assert!(matches("secrets", "secrets", ""));
        assert!(matches("deployments.apps", "deployments", "apps"));
        assert!(!matches("deployments", "deployments", "apps"));
        assert!(matches("*.apps", "statefulsets", "apps"));
        assert!(matches("*.", "configmaps", ""));
        assert!(!matches("*.", "deployments", "apps"));
        assert!(matches("*.*", "anything", "any.group"));
        assert!(Encryption::parse("apiVersion: v1\nkind: ConfigMap\n").is_err());
        let bad_key = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: k\n        secret: c2hvcnQ=\n";
        assert!(Encryption::parse(bad_key).is_err());
    }
}
