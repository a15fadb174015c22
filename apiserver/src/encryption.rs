//! Encryption at rest, as kube-apiserver's `--encryption-provider-config`: an
//! `EncryptionConfiguration` (apiserver.config.k8s.io/v1, the upstream file format) lists, per
//! resource, providers in order — the first encrypts writes, all of them read. Providers:
//! `aesgcm` (AES-GCM with a random nonce per write and the storage key as authenticated data,
//! 16- or 32-byte keys), `aescbc` (AES-CBC with PKCS#7 padding and a random IV, 16-, 24- or
//! 32-byte keys; unauthenticated, as upstream, which no longer recommends it), `secretbox`
//! (XSalsa20-Poly1305, 32-byte keys) and `identity` (plain). `kms` needs a KMS plugin, which
//! this server cannot talk to, and is refused.
//!
//! The store stamps `metadata.resourceVersion` into what it stores, so a sealed object is kept
//! as a small JSON envelope, `{"k8s:enc":"PROVIDER:v1:KEY:BASE64(nonce‖ciphertext)",
//! "metadata":{"resourceVersion":"N"}}`; the object's JSON, and so every Secret value, exists
//! only inside the ciphertext — in the raft log, snapshots and the database file alike. The
//! store opens envelopes on every read ([`wasmkube_store::ValueTransformer`]).

use std::path::Path;
use std::sync::Arc;

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockCipher, BlockDecryptMut, BlockEncryptMut, KeyInit, KeyIvInit as _};
use base64::Engine as _;
use bytes::Bytes;
use crypto_secretbox::aead::Aead as _;
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
    aescbc: Option<KeysSpec>,
    secretbox: Option<KeysSpec>,
    identity: Option<serde_json::Value>,
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

/// A provider that encrypts, by the name its envelopes carry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    AesGcm,
    AesCbc,
    SecretBox,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AesGcm => "aesgcm",
            Kind::AesCbc => "aescbc",
            Kind::SecretBox => "secretbox",
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        [Kind::AesGcm, Kind::AesCbc, Kind::SecretBox]
            .into_iter()
            .find(|k| k.name() == name)
    }

    /// The key from its bytes, or why these bytes are no key of this kind.
    fn cipher(self, raw: &[u8]) -> Result<Cipher, String> {
        Ok(match (self, raw.len()) {
            (Kind::AesGcm, 16) => Cipher::Gcm(Box::new(gcm_key(&AES_128_GCM, raw))),
            (Kind::AesGcm, 32) => Cipher::Gcm(Box::new(gcm_key(&AES_256_GCM, raw))),
            (Kind::AesCbc, 16 | 24 | 32) => Cipher::Cbc(raw.to_vec()),
            (Kind::SecretBox, 32) => Cipher::SecretBox(
                crypto_secretbox::XSalsa20Poly1305::new_from_slice(raw).map_err(|_| "unusable")?,
            ),
            (Kind::AesGcm, n) => return Err(format!("an aesgcm key has 16 or 32 bytes, not {n}")),
            (Kind::AesCbc, n) => {
                return Err(format!("an aescbc key has 16, 24 or 32 bytes, not {n}"));
            }
            (Kind::SecretBox, n) => {
                return Err(format!("a secretbox key has 32 bytes, not {n}"));
            }
        })
    }
}

fn gcm_key(alg: &'static ring::aead::Algorithm, raw: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(alg, raw).expect("the length was checked"))
}

enum Cipher {
    Gcm(Box<LessSafeKey>),
    Cbc(Vec<u8>),
    SecretBox(crypto_secretbox::XSalsa20Poly1305),
}

const CBC_IV_LEN: usize = 16;
const SECRETBOX_NONCE_LEN: usize = 24;

impl Cipher {
    /// `nonce‖ciphertext` of `plain`; AES-GCM also authenticates `aad` (the storage key).
    fn seal(&self, random: &SystemRandom, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let fill = |n: usize| {
            let mut nonce = vec![0u8; n];
            random.fill(&mut nonce).expect("the system has randomness");
            nonce
        };
        match self {
            Cipher::Gcm(key) => {
                let mut blob = fill(NONCE_LEN);
                let nonce = Nonce::try_assume_unique_for_key(&blob).expect("nonce length");
                let mut data = plain.to_vec();
                key.seal_in_place_append_tag(nonce, Aad::from(aad), &mut data)
                    .expect("AES-GCM seals any length a store holds");
                blob.extend_from_slice(&data);
                blob
            }
            Cipher::Cbc(key) => {
                let mut blob = fill(CBC_IV_LEN);
                let data = cbc_seal(key, &blob, plain);
                blob.extend_from_slice(&data);
                blob
            }
            Cipher::SecretBox(key) => {
                let mut blob = fill(SECRETBOX_NONCE_LEN);
                let data = key
                    .encrypt(crypto_secretbox::Nonce::from_slice(&blob), plain)
                    .expect("secretbox seals any length a store holds");
                blob.extend_from_slice(&data);
                blob
            }
        }
    }

    /// The plain text of `nonce‖ciphertext`, if it opens with this key.
    fn open(&self, aad: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
        match self {
            Cipher::Gcm(key) => {
                let (nonce, sealed) = blob.split_at_checked(NONCE_LEN)?;
                let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
                let mut data = sealed.to_vec();
                let plain = key.open_in_place(nonce, Aad::from(aad), &mut data).ok()?;
                Some(plain.to_vec())
            }
            Cipher::Cbc(key) => {
                let (iv, sealed) = blob.split_at_checked(CBC_IV_LEN)?;
                cbc_open(key, iv, sealed)
            }
            Cipher::SecretBox(key) => {
                let (nonce, sealed) = blob.split_at_checked(SECRETBOX_NONCE_LEN)?;
                key.decrypt(crypto_secretbox::Nonce::from_slice(nonce), sealed)
                    .ok()
            }
        }
    }
}

/// AES-CBC with PKCS#7 padding, by the key's length (16, 24 or 32 bytes, checked when the key
/// was read).
fn cbc_seal(key: &[u8], iv: &[u8], plain: &[u8]) -> Vec<u8> {
    fn with<C: BlockEncryptMut + BlockCipher + KeyInit>(
        key: &[u8],
        iv: &[u8],
        plain: &[u8],
    ) -> Vec<u8> {
        cbc::Encryptor::<C>::new_from_slices(key, iv)
            .expect("key and IV lengths were checked")
            .encrypt_padded_vec_mut::<Pkcs7>(plain)
    }
    match key.len() {
        16 => with::<aes::Aes128>(key, iv, plain),
        24 => with::<aes::Aes192>(key, iv, plain),
        _ => with::<aes::Aes256>(key, iv, plain),
    }
}

fn cbc_open(key: &[u8], iv: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    fn with<C: BlockDecryptMut + BlockCipher + KeyInit>(
        key: &[u8],
        iv: &[u8],
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        cbc::Decryptor::<C>::new_from_slices(key, iv)
            .ok()?
            .decrypt_padded_vec_mut::<Pkcs7>(sealed)
            .ok()
    }
    match key.len() {
        16 => with::<aes::Aes128>(key, iv, sealed),
        24 => with::<aes::Aes192>(key, iv, sealed),
        _ => with::<aes::Aes256>(key, iv, sealed),
    }
}

/// One named key of an encrypting provider.
struct Key {
    kind: Kind,
    name: String,
    cipher: Cipher,
}

enum Provider {
    Encrypting(Vec<Key>),
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

/// The keys of one provider entry.
fn read_keys(kind: Kind, specs: &[KeySpec]) -> Result<Vec<Key>, String> {
    if specs.is_empty() {
        return Err("no keys".into());
    }
    specs
        .iter()
        .map(|k| {
            if k.name.is_empty() || k.name.contains(':') {
                return Err(format!("key name {:?}: non-empty, without ':'", k.name));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(k.secret.trim())
                .map_err(|e| format!("key {}: {e}", k.name))?;
            let cipher = kind
                .cipher(&raw)
                .map_err(|why| format!("key {}: {why}", k.name))?;
            Ok(Key {
                kind,
                name: k.name.clone(),
                cipher,
            })
        })
        .collect()
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
                if p.kms.is_some() {
                    return Err(invalid(format!(
                        "resources[{i}]: the kms provider needs a KMS plugin, which this server \
                         cannot use; use aesgcm, aescbc, secretbox or identity"
                    )));
                }
                let encrypting = [
                    (Kind::AesGcm, p.aesgcm),
                    (Kind::AesCbc, p.aescbc),
                    (Kind::SecretBox, p.secretbox),
                ]
                .into_iter()
                .filter_map(|(kind, keys)| keys.map(|k| (kind, k)))
                .collect::<Vec<_>>();
                let provider = match (encrypting.as_slice(), p.identity) {
                    ([(kind, keys)], None) => {
                        Provider::Encrypting(read_keys(*kind, &keys.keys).map_err(|why| {
                            invalid(format!("resources[{i}].{}: {why}", kind.name()))
                        })?)
                    }
                    ([], Some(_)) => Provider::Identity,
                    _ => {
                        return Err(invalid(format!(
                            "resources[{i}]: each provider entry names exactly one provider"
                        )));
                    }
                };
                providers.push(provider);
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
            Provider::Encrypting(keys) => keys.first(),
            Provider::Identity => None,
        }
    }

    fn key_named(&self, kind: Kind, name: &str) -> Option<&Key> {
        self.rules
            .iter()
            .flat_map(|r| &r.providers)
            .filter_map(|p| match p {
                Provider::Encrypting(keys) => Some(keys),
                Provider::Identity => None,
            })
            .flatten()
            .find(|k| k.kind == kind && k.name == name)
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
        let blob = k
            .cipher
            .seal(&self.random, key.as_bytes(), value.get().as_bytes());
        let sealed = format!(
            "{}:v1:{}:{}",
            k.kind.name(),
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
        let mut parts = env.sealed.splitn(4, ':');
        let (Some(provider), Some("v1"), Some(name), Some(blob)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("a malformed envelope".into());
        };
        let kind = Kind::from_name(provider)
            .ok_or_else(|| format!("an envelope of an unknown provider {provider}"))?;
        let k = self.key_named(kind, name).ok_or_else(|| {
            format!("no {provider} key named {name} in the encryption configuration")
        })?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .map_err(|e| e.to_string())?;
        let plain = k
            .cipher
            .open(key.as_bytes(), &blob)
            .ok_or_else(|| format!("the value does not open with {provider} key {name}"))?;
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&plain).map_err(|e| e.to_string())?;
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

    fn config(providers: &str) -> String {
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        )
    }

    fn provider(kind: &str, name: &str, bytes: usize) -> String {
        let secret = base64::engine::general_purpose::STANDARD.encode(vec![7u8; bytes]);
        format!("  - {kind}:\n      keys:\n      - name: {name}\n        secret: {secret}\n")
    }

    #[test]
    fn every_encrypting_provider_should_round_trip_and_rotate() {
        let secret = raw(serde_json::json!({"kind": "Secret", "data": {"p": "aHVudGVyMg=="}}));
        let mut sealed_by = Vec::new();
        for (kind, sizes) in [
            ("aesgcm", &[16, 32][..]),
            ("aescbc", &[16, 24, 32][..]),
            ("secretbox", &[32][..]),
        ] {
            for &bytes in sizes {
                let enc = Encryption::parse(&config(&provider(kind, "k", bytes))).expect(kind);
                let sealed = enc.seal("secrets", "", "/s", secret.clone());
                assert!(
                    sealed.get().contains(&format!("\"{kind}:v1:k:")),
                    "{}",
                    sealed.get()
                );
                assert!(!sealed.get().contains("aHVudGVyMg=="));
                let opened = enc
                    .open("/s", Bytes::from(sealed.get().to_owned()))
                    .expect("opens");
                let v: serde_json::Value = serde_json::from_slice(&opened).expect("json");
                assert_eq!(v["data"]["p"], "aHVudGVyMg==", "{kind} {bytes}");
                sealed_by.push((kind, bytes, sealed));
            }
            let wrong = Encryption::parse(&config(
                &provider(kind, "k", sizes[0]).replace("Bwc", "CAg"),
            ))
            .expect("other key");
            let (_, _, last) = sealed_by.last().expect("sealed");
            assert!(
                wrong
                    .open("/s", Bytes::from(last.get().to_owned()))
                    .is_err(),
                "a {kind} value does not open with another key"
            );
        }
        // Rotation: a new first provider writes, the old ones still read.
        let rotated = Encryption::parse(&config(&format!(
            "{}{}{}  - identity: {{}}\n",
            provider("secretbox", "new", 32),
            provider("aescbc", "k", 32),
            provider("aesgcm", "k", 32)
        )))
        .expect("rotated");
        for (kind, bytes, sealed) in &sealed_by {
            let opened = rotated.open("/s", Bytes::from(sealed.get().to_owned()));
            match (*kind, *bytes) {
                // Its key "k" is gone from the rotated file: it cannot be read.
                ("secretbox", _) => assert!(opened.is_err()),
                (_, 32) => assert!(
                    opened.is_ok(),
                    "{kind} written before the rotation still reads"
                ),
                _ => {}
            }
        }
        assert!(
            rotated
                .seal("secrets", "", "/s", secret)
                .get()
                .contains("secretbox:v1:new:")
        );
        let kms = Encryption::parse(&config("  - kms:\n      name: plugin\n")).expect_err("kms");
        assert!(kms.to_string().contains("KMS plugin"), "{kms}");
        let short = Encryption::parse(&config(&provider("secretbox", "k", 16))).expect_err("short");
        assert!(short.to_string().contains("32 bytes"), "{short}");
    }
}
