//! Images: wasm OCI artifacts (the CNCF wasm layout — config
//! `application/vnd.wasm.config.v0+json`, one `application/wasm` layer) pulled with
//! `oci-client`, verified by digest, and stored content-addressed on the node.
//!
//! A name without a registry host (`hello:v1`) means the cluster's own registry (the API
//! server's `/v2/`). `imagePullPolicy` is honoured: `IfNotPresent` uses a stored image,
//! `Always` asks the registry for the current digest and downloads only what changed, `Never`
//! never asks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The layer media type of the CNCF wasm OCI artifact layout.
pub const WASM_LAYER: &str = "application/wasm";
/// The config media type of the CNCF wasm OCI artifact layout.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Layer media types accepted on pull (the CNCF layout and the older wasm-to-oci / runwasi ones).
const ACCEPTED_LAYERS: &[&str] = &[
    WASM_LAYER,
    oci_client::manifest::WASM_LAYER_MEDIA_TYPE,
    "application/vnd.module.wasm.content.layer.v1+wasm",
];

/// The registry built into the cluster's API server.
#[derive(Debug, Clone)]
pub struct ClusterRegistry {
    /// `host:port` of the API server.
    pub host: String,
    /// The bearer token to present.
    pub token: String,
    /// The cluster CA (PEM) that signed the API server's certificate.
    pub ca_pem: Vec<u8>,
}

/// Where images come from and go.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    /// The cluster registry, for names without a host.
    pub cluster: Option<ClusterRegistry>,
    /// Registries spoken to over plain HTTP (`host:port`), like containerd's insecure registries.
    pub insecure: Vec<String>,
}

impl Registries {
    /// The fully qualified reference for `image` (registry host added, `:latest` defaulted).
    pub fn qualify(&self, image: &str) -> String {
        let first = image.split('/').next().unwrap_or_default();
        let has_host = image.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        let mut full = match (&self.cluster, has_host) {
            (Some(c), false) => format!("{}/{image}", c.host),
            _ => image.to_owned(),
        };
        let last = full.rsplit('/').next().unwrap_or_default();
        if !last.contains(':') && !last.contains('@') {
            full.push_str(":latest");
        }
        full
    }

    fn client(&self) -> Client {
        let mut config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            read_timeout: Some(Duration::from_secs(60)),
            connect_timeout: Some(Duration::from_secs(10)),
            ..ClientConfig::default()
        };
        if let Some(c) = &self.cluster {
            config
                .extra_root_certificates
                .push(oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: c.ca_pem.clone(),
                });
        }
        Client::new(config)
    }

    fn auth(&self, reference: &Reference) -> RegistryAuth {
        match &self.cluster {
            Some(c) if reference.registry() == c.host => RegistryAuth::Bearer(c.token.clone()),
            _ => RegistryAuth::Anonymous,
        }
    }
}

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Check the registry every time.
    Always,
    /// Use a stored image if there is one.
    IfNotPresent,
    /// Only ever use a stored image.
    Never,
}

impl PullPolicy {
    /// The PodSpec field, defaulted as Kubernetes does (`Always` for `:latest` or no tag).
    pub fn parse(policy: Option<&str>, image: &str) -> Self {
        match policy {
            Some("Always") => Self::Always,
            Some("Never") => Self::Never,
            Some("IfNotPresent") => Self::IfNotPresent,
            _ => {
                let last = image.rsplit('/').next().unwrap_or_default();
                if last.contains('@') || (last.contains(':') && !last.ends_with(":latest")) {
                    Self::IfNotPresent
                } else {
                    Self::Always
                }
            }
        }
    }
}

/// A stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The qualified reference it was pulled as.
    pub reference: String,
    /// `repository@sha256:<manifest digest>`, what `containerStatus.imageID` shows.
    pub image_id: String,
    /// The wasm layer's digest: the content key (and compile-cache key).
    pub layer_digest: String,
    /// The wasm layer's size in bytes.
    pub size: u64,
}

/// What fetching an image involved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// It was already on the node.
    Present,
    /// It was downloaded, taking this long.
    Pulled(Duration),
}

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0:?} is not a valid image reference: {1}")]
    InvalidReference(String, String),
    #[error("image {0:?} is not present with pull policy of Never")]
    NeverPull(String),
    #[error("failed to pull image {reference:?}: {message}")]
    Registry { reference: String, message: String },
    #[error("image {reference:?} has no wasm layer (layers: {layers})")]
    NotWasm { reference: String, layers: String },
    #[error("image {reference:?}: layer digest {expected} does not match the content ({actual})")]
    Digest {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("storing image {0:?}")]
    Store(String, #[source] std::io::Error),
}

/// The node's image store.
pub struct Images {
    dir: PathBuf,
    registries: Registries,
    client: Client,
    refs: Mutex<HashMap<String, Image>>,
    /// One pull per reference at a time; the others then find it stored.
    pulling: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl Images {
    /// Opens the store in `dir` (blobs and the reference index live there).
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn open(dir: &Path, registries: Registries) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        // reqwest (inside oci-client) uses the process-wide rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let refs = std::fs::read(dir.join("refs.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(Self {
            dir: dir.to_owned(),
            client: registries.client(),
            registries,
            refs: Mutex::new(refs),
            pulling: Mutex::new(HashMap::new()),
        })
    }

    /// The registries in use.
    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    /// Where a layer's bytes are stored.
    pub fn layer_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Every stored image, as the Node's `status.images` lists them.
    pub fn list(&self) -> Vec<k8s_openapi::api::core::v1::ContainerImage> {
        let refs = self.refs.lock().expect("refs lock");
        let mut list: Vec<_> = refs
            .values()
            .map(|i| k8s_openapi::api::core::v1::ContainerImage {
                names: Some(vec![i.image_id.clone(), i.reference.clone()]),
                size_bytes: i64::try_from(i.size).ok(),
            })
            .collect();
        list.sort_by(|a, b| a.names.cmp(&b.names));
        list
    }

    /// The stored image for `image`, if any.
    pub fn stored(&self, image: &str) -> Option<Image> {
        let reference = self.registries.qualify(image);
        let found = self
            .refs
            .lock()
            .expect("refs lock")
            .get(&reference)
            .cloned();
        found.filter(|i| self.layer_path(&i.layer_digest).exists())
    }

    /// Makes `image` present on the node per `policy`.
    ///
    /// # Errors
    /// [`PullError`] when the image cannot be had; the pod shows `ErrImagePull`.
    pub async fn ensure(
        &self,
        image: &str,
        policy: PullPolicy,
    ) -> Result<(Image, Fetched), PullError> {
        let qualified = self.registries.qualify(image);
        let reference: Reference = qualified.parse().map_err(|e: oci_client::ParseError| {
            PullError::InvalidReference(image.to_owned(), e.to_string())
        })?;
        let gate = std::sync::Arc::clone(
            self.pulling
                .lock()
                .expect("pulling lock")
                .entry(qualified.clone())
                .or_default(),
        );
        let _turn = gate.lock().await;
        let stored = self.stored(image);
        match (policy, stored) {
            (PullPolicy::Never, None) => return Err(PullError::NeverPull(image.to_owned())),
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(i)) => {
                return Ok((i, Fetched::Present));
            }
            (PullPolicy::Always, Some(i)) => {
                // The registry decides whether the tag still points at what we have.
                let auth = self.registries.auth(&reference);
                let digest = self
                    .client
                    .fetch_manifest_digest(&reference, &auth)
                    .await
                    .map_err(|e| registry_error(&qualified, &e))?;
                if i.image_id.ends_with(&digest) {
                    return Ok((i, Fetched::Present));
                }
            }
            _ => {}
        }
        let started = Instant::now();
        let image = self.pull(&qualified, &reference).await?;
        Ok((image, Fetched::Pulled(started.elapsed())))
    }

    async fn pull(&self, qualified: &str, reference: &Reference) -> Result<Image, PullError> {
        let auth = self.registries.auth(reference);
        let data = self
            .client
            .pull(reference, &auth, ACCEPTED_LAYERS.to_vec())
            .await
            .map_err(|e| registry_error(qualified, &e))?;
        let manifest = data.manifest.as_ref();
        let layers: Vec<&ImageLayer> = data
            .layers
            .iter()
            .filter(|l| ACCEPTED_LAYERS.contains(&l.media_type.as_str()))
            .collect();
        let [layer] = layers.as_slice() else {
            return Err(PullError::NotWasm {
                reference: qualified.to_owned(),
                layers: data
                    .layers
                    .iter()
                    .map(|l| l.media_type.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let actual = format!("sha256:{:x}", Sha256::digest(&layer.data));
        let expected = manifest
            .and_then(|m| m.layers.iter().find(|d| d.media_type == layer.media_type))
            .map(|d| d.digest.clone())
            .unwrap_or_else(|| actual.clone());
        if expected != actual {
            return Err(PullError::Digest {
                reference: qualified.to_owned(),
                expected,
                actual,
            });
        }
        let path = self.layer_path(&actual);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &layer.data)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| PullError::Store(qualified.to_owned(), e))?;
        let image = Image {
            reference: qualified.to_owned(),
            image_id: format!(
                "{}/{}@{}",
                reference.registry(),
                reference.repository(),
                data.digest.unwrap_or_default()
            ),
            layer_digest: actual,
            size: layer.data.len() as u64,
        };
        let snapshot = {
            let mut refs = self.refs.lock().expect("refs lock");
            refs.insert(qualified.to_owned(), image.clone());
            serde_json::to_vec(&*refs).expect("image refs serialize")
        };
        let index = self.dir.join("refs.json");
        let tmp = index.with_extension("tmp");
        std::fs::write(&tmp, snapshot)
            .and_then(|()| std::fs::rename(&tmp, &index))
            .map_err(|e| PullError::Store(qualified.to_owned(), e))?;
        Ok(image)
    }
}

fn registry_error(reference: &str, e: &oci_client::errors::OciDistributionError) -> PullError {
    PullError::Registry {
        reference: reference.to_owned(),
        message: e.to_string(),
    }
}

/// Pushes `wasm` as a CNCF wasm OCI artifact to `image` (qualified against `registries`).
/// Returns the manifest URL (with its digest).
///
/// # Errors
/// When the reference is invalid or the registry refuses the push.
pub async fn push(
    registries: &Registries,
    image: &str,
    wasm: Vec<u8>,
) -> Result<String, PullError> {
    let qualified = registries.qualify(image);
    let reference: Reference = qualified.parse().map_err(|e: oci_client::ParseError| {
        PullError::InvalidReference(image.to_owned(), e.to_string())
    })?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let layer_digest = format!("sha256:{:x}", Sha256::digest(&wasm));
    let os = if wasm.get(6) == Some(&1) {
        "wasip2"
    } else {
        "wasip1"
    };
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": os,
        "layerDigests": [layer_digest],
        "created": jiff::Timestamp::now().to_string(),
    });
    let config = Config::new(
        config.to_string().into_bytes(),
        WASM_CONFIG.to_owned(),
        None,
    );
    let layer = ImageLayer::new(wasm, WASM_LAYER.to_owned(), None);
    let client = registries.client();
    let auth = registries.auth(&reference);
    let pushed = client
        .push(&reference, &[layer], config, &auth, None)
        .await
        .map_err(|e| registry_error(&qualified, &e))?;
    Ok(pushed.manifest_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cluster() -> Registries {
        Registries {
            cluster: Some(ClusterRegistry {
                host: "127.0.0.1:6443".into(),
                token: "t".into(),
                ca_pem: Vec::new(),
            }),
            insecure: Vec::new(),
        }
    }

    #[test]
    fn names_without_a_host_mean_the_cluster_registry() {
        let r = with_cluster();
        assert_eq!(r.qualify("hello:v1"), "127.0.0.1:6443/hello:v1");
        assert_eq!(r.qualify("team/hello"), "127.0.0.1:6443/team/hello:latest");
        assert_eq!(r.qualify("ghcr.io/org/app:1"), "ghcr.io/org/app:1");
        assert_eq!(r.qualify("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(
            r.qualify("127.0.0.1:5000/app@sha256:ab"),
            "127.0.0.1:5000/app@sha256:ab"
        );
    }

    #[test]
    fn pull_policy_defaults_like_kubernetes() {
        assert_eq!(PullPolicy::parse(None, "hello"), PullPolicy::Always);
        assert_eq!(PullPolicy::parse(None, "hello:latest"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::parse(None, "hello:v1"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::parse(None, "localhost:5000/hello"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::parse(Some("Never"), "hello:v1"),
            PullPolicy::Never
        );
    }
}
