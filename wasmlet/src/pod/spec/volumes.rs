//! A pod's volumes as directories on the node: emptyDir, hostPath, configMap, secret,
//! downwardAPI, projected (with service-account tokens, renewed before they expire) and
//! claims; read-only where Kubernetes makes them so, written atomically as the kubelet does.

use super::*;

/// A service-account token a projected volume holds, renewed before it expires (as the
/// kubelet's token manager: at 80% of its lifetime, and at least daily).
#[derive(Debug, Clone)]
pub(crate) struct TokenFile {
    /// The file (under the volume's directory).
    pub path: PathBuf,
    /// The account it is for.
    pub account: String,
    /// What was asked for (audiences, lifetime, the pod it is bound to).
    pub request: TokenRequest,
    /// When to ask again.
    pub renew_at: Instant,
}

/// The longest a token is kept before it is renewed.
pub(super) const TOKEN_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// When a token issued at `issued`, valid for `lifetime`, is renewed.
pub(crate) fn renew_at(issued: Instant, lifetime: Duration) -> Instant {
    issued + (lifetime.mul_f64(0.8)).min(TOKEN_MAX_AGE)
}

/// Asks for a token of `account`; the token and when to renew it.
///
/// # Errors
/// [`ConfigError`] when the API refuses (the account is gone, the node may not ask).
pub(crate) async fn request_token(
    accounts: &Api<ServiceAccount>,
    account: &str,
    request: &TokenRequest,
) -> Result<(String, Instant), ConfigError> {
    let issued = Instant::now();
    let answer = accounts
        .create_token_request(account, &Default::default(), request)
        .await
        .map_err(|e| {
            ConfigError(format!(
                "failed to fetch token for service account {account:?}: {e}"
            ))
        })?;
    let status = answer
        .status
        .ok_or_else(|| ConfigError("the TokenRequest has no status".into()))?;
    let now = jiff::Timestamp::now();
    let lifetime = status.expiration_timestamp.0.duration_since(now);
    let lifetime = Duration::try_from(lifetime).unwrap_or_default();
    Ok((status.token, renew_at(issued, lifetime)))
}

/// The TokenRequest for `projection` in `pod`, bound to it.
pub(super) fn token_request(pod: &Pod, projection: &ServiceAccountTokenProjection) -> TokenRequest {
    TokenRequest {
        spec: TokenRequestSpec {
            audiences: projection.audience.iter().cloned().collect(),
            expiration_seconds: Some(projection.expiration_seconds.unwrap_or(3600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    }
}

/// Materialises the pod's volumes under `dir` (`<kind>/<name>`); returns, per volume name, its
/// directory and whether Kubernetes mounts it read-only.
///
/// # Errors
/// [`ConfigError`] for a missing ConfigMap/Secret (non-optional), a missing hostPath, or a
/// volume type the wasmlet does not provide.
pub(crate) async fn volumes(
    pod: &Pod,
    dir: &Path,
    claims: &Path,
    facts: &PodFacts,
    sources: &mut Sources,
) -> Result<HashMap<String, (PathBuf, bool)>, ConfigError> {
    // Tokens are asked for while the rest is prepared (each is an API round trip).
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let wanted: Vec<(PathBuf, &ServiceAccountTokenProjection)> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .flat_map(|v| {
            let d = dir.join("projected").join(&v.name);
            v.projected
                .iter()
                .flat_map(|p| p.sources.iter().flatten())
                .filter_map(|p| p.service_account_token.as_ref())
                .map(move |t| (d.clone(), t))
        })
        .collect();
    let accounts = sources.accounts.clone();
    let requests: Vec<TokenRequest> = wanted.iter().map(|(_, t)| token_request(pod, t)).collect();
    let tokens = futures::future::join_all(
        requests
            .iter()
            .map(|r| request_token(&accounts, &account, r)),
    );
    let mut writes = Writes::default();
    let (tokens, out) = tokio::join!(
        tokens,
        materialise(pod, dir, claims, facts, sources, &mut writes)
    );
    let out = out?;
    for (((d, projection), request), token) in wanted.into_iter().zip(requests).zip(tokens) {
        let (token, renew_at) = token?;
        writes.file(&d, &projection.path, token.into_bytes())?;
        sources.tokens.push(TokenFile {
            path: d.join(&projection.path),
            account: account.clone(),
            request,
            renew_at,
        });
    }
    // Directories and files off the async threads: with thousands of pods starting, mkdir
    // and create cost ~0.2 ms each on this kind of disk.
    tokio::task::spawn_blocking(move || writes.apply())
        .await
        .map_err(|e| ConfigError(format!("preparing volumes: {e}")))??;
    Ok(out)
}

/// The filesystem work of preparing a pod's volumes, gathered while their contents are read
/// and then done in one go.
#[derive(Default)]
pub(super) struct Writes(Vec<Write>);

pub(super) enum Write {
    /// Create the directory (and its parents); the name for errors.
    Dir(PathBuf, String),
    /// Empty the directory, or create it.
    Fresh(PathBuf, String),
    /// A hostPath that must be a directory already.
    MustBeDir(PathBuf),
    /// Write a file under a directory.
    File(PathBuf, String, Vec<u8>),
}

impl Writes {
    /// Writes `bytes` to `rel` under `d` (relative, without `..`).
    fn file(&mut self, d: &Path, rel: &str, bytes: Vec<u8>) -> Result<(), ConfigError> {
        if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Err(ConfigError(format!(
                "volume file path {rel:?} must be relative without '..'"
            )));
        }
        self.0
            .push(Write::File(d.to_owned(), rel.to_owned(), bytes));
        Ok(())
    }

    fn apply(self) -> Result<(), ConfigError> {
        let io = |what: &str, e: std::io::Error| ConfigError(format!("{what}: {e}"));
        for w in self.0 {
            match w {
                Write::Dir(d, what) => std::fs::create_dir_all(&d).map_err(|e| io(&what, e))?,
                Write::Fresh(d, what) => {
                    let _ = std::fs::remove_dir_all(&d);
                    std::fs::create_dir_all(&d).map_err(|e| io(&what, e))?;
                }
                Write::MustBeDir(p) if p.is_dir() => {}
                Write::MustBeDir(p) => {
                    return Err(ConfigError(format!(
                        "hostPath type check failed: {} is not a directory",
                        p.display()
                    )));
                }
                Write::File(d, rel, bytes) => {
                    let path = d.join(&rel);
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| io(&rel, e))?;
                    }
                    std::fs::write(&path, bytes).map_err(|e| io(&rel, e))?;
                }
            }
        }
        Ok(())
    }
}

/// Every volume but the tokens in it, its filesystem work added to `writes`.
pub(super) async fn materialise(
    pod: &Pod,
    dir: &Path,
    claims: &Path,
    facts: &PodFacts,
    sources: &mut Sources,
    writes: &mut Writes,
) -> Result<HashMap<String, (PathBuf, bool)>, ConfigError> {
    let mut out = HashMap::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let entry = if v.empty_dir.is_some() {
            let d = dir.join("empty-dir").join(&v.name);
            writes.0.push(Write::Dir(d.clone(), v.name.clone()));
            (d, false)
        } else if let Some(c) = &v.persistent_volume_claim {
            // A claim is a directory on the node that outlives the pod (StatefulSet storage).
            if c.claim_name.is_empty()
                || c.claim_name.contains('/')
                || c.claim_name.starts_with('.')
            {
                return Err(ConfigError(format!(
                    "volume {:?}: invalid claimName {:?}",
                    v.name, c.claim_name
                )));
            }
            let d = claims.join(&c.claim_name);
            writes.0.push(Write::Dir(d.clone(), v.name.clone()));
            (d, c.read_only.unwrap_or(false))
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            writes.0.push(match h.type_.as_deref() {
                Some("DirectoryOrCreate") => Write::Dir(p.clone(), h.path.clone()),
                _ => Write::MustBeDir(p.clone()),
            });
            (p, false)
        } else if v.config_map.is_some()
            || v.secret.is_some()
            || v.downward_api.is_some()
            || v.projected.is_some()
        {
            let d = dir.join("projected").join(&v.name);
            // Rebuilt from scratch so deleted keys disappear.
            writes.0.push(Write::Fresh(d.clone(), v.name.clone()));
            project(pod, v, &d, facts, sources, writes).await?;
            (d, true)
        } else {
            return Err(ConfigError(format!(
                "volume {:?}: only emptyDir, hostPath, configMap, secret, downwardAPI, projected and persistentVolumeClaim volumes are supported",
                v.name
            )));
        };
        out.insert(v.name.clone(), entry);
    }
    Ok(out)
}

pub(super) async fn project(
    pod: &Pod,
    v: &Volume,
    d: &Path,
    facts: &PodFacts,
    sources: &mut Sources,
    writes: &mut Writes,
) -> Result<(), ConfigError> {
    // A volume's own source, or each of a projected volume's.
    let own = (
        v.config_map
            .as_ref()
            .map(|c| (c.name.as_str(), &c.items, c.optional)),
        v.secret.as_ref().map(|s| {
            (
                s.secret_name.as_deref().unwrap_or_default(),
                &s.items,
                s.optional,
            )
        }),
        v.downward_api.as_ref().map(|a| &a.items),
    );
    let projected = v
        .projected
        .iter()
        .flat_map(|p| p.sources.iter().flatten())
        .map(|p| {
            (
                p.config_map
                    .as_ref()
                    .map(|c| (c.name.as_str(), &c.items, c.optional)),
                p.secret
                    .as_ref()
                    .map(|s| (s.name.as_str(), &s.items, s.optional)),
                p.downward_api.as_ref().map(|a| &a.items),
            )
        });
    for (config_map, secret, downward) in std::iter::once(own).chain(projected) {
        if let Some((name, items, optional)) = config_map {
            let data = sources.configmap(name).await?.cloned();
            let what = format!("configmap {name:?}");
            write_keys(writes, d, data, items, optional.unwrap_or(false), &what)?;
        }
        if let Some((name, items, optional)) = secret {
            let data = sources.secret(name).await?.cloned();
            let what = format!("secret {name:?}");
            write_keys(writes, d, data, items, optional.unwrap_or(false), &what)?;
        }
        if let Some(items) = downward {
            write_downward(writes, pod, d, items.iter().flatten(), facts)?;
        }
    }
    Ok(())
}

pub(super) fn write_keys(
    writes: &mut Writes,
    d: &Path,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: &Option<Vec<KeyToPath>>,
    optional: bool,
    what: &str,
) -> Result<(), ConfigError> {
    let Some(data) = data else {
        return if optional {
            Ok(())
        } else {
            Err(ConfigError(format!("{what} not found")))
        };
    };
    match items {
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => writes.file(d, &item.path, v.clone())?,
                    None if optional => {}
                    None => return Err(ConfigError(format!("{what} has no key {:?}", item.key))),
                }
            }
        }
        None => {
            for (k, v) in &data {
                writes.file(d, k, v.clone())?;
            }
        }
    }
    Ok(())
}

pub(super) fn write_downward<'a>(
    writes: &mut Writes,
    pod: &Pod,
    d: &Path,
    items: impl Iterator<Item = &'a DownwardAPIVolumeFile>,
    facts: &PodFacts,
) -> Result<(), ConfigError> {
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            field_value(pod, f, facts)?
        } else if let Some(r) = &item.resource_field_ref {
            resource_value(pod, None, r)?
        } else {
            continue;
        };
        writes.file(d, &item.path, value.into_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_should_be_renewed_at_four_fifths_of_its_life_and_at_least_daily() {
        let t = Instant::now();
        assert_eq!(
            renew_at(t, Duration::from_secs(3600)),
            t + Duration::from_secs(2880)
        );
        assert_eq!(
            renew_at(t, Duration::from_secs(365 * 24 * 3600)),
            t + Duration::from_secs(24 * 3600)
        );
        assert_eq!(renew_at(t, Duration::ZERO), t);
    }
}
