//! Secrets encrypted at rest through the real binary: after writing one, no file of the data
//! directory (the redb file with its raft log, snapshots, everything) holds its value, while a
//! ConfigMap's value is found there (the search works); the Secret reads back across
//! restarts, and across a key rotation done the upstream way (new key first, rewrite, drop
//! the old key).

use std::path::Path;

use anyhow::{Result, ensure};
use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;
use wasmkube_tests::{Process, free_port};

/// Whether any file under `dir` contains `needle`.
fn found_in(dir: &Path, needle: &[u8]) -> Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if found_in(&path, needle)? {
                return Ok(true);
            }
        } else if std::fs::read(&path)?
            .windows(needle.len())
            .any(|w| w == needle)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn config(keys: &[(&str, [u8; 32])]) -> String {
    let keys: String = keys
        .iter()
        .map(|(name, k)| {
            format!(
                "            - name: {name}\n              secret: {}\n",
                base64::engine::general_purpose::STANDARD.encode(k)
            )
        })
        .collect();
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n      - secrets\n    providers:\n      - aesgcm:\n          keys:\n{keys}      - identity: {{}}\n"
    )
}

async fn secret_value(up: &Process) -> Result<String> {
    let secrets: Api<Secret> = Api::default_namespaced(up.client().await?);
    let s = secrets.get("db").await?;
    let v = s
        .data
        .unwrap_or_default()
        .remove("password")
        .map(|b| b.0)
        .unwrap_or_default();
    Ok(String::from_utf8(v)?)
}

#[tokio::test]
async fn a_secret_value_should_be_nowhere_in_the_data_directory() -> Result<()> {
    wasmkube_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = free_port();
    let value = format!("hunter2-{}", uuid::Uuid::new_v4().simple());
    let plain = format!("visible-{}", uuid::Uuid::new_v4().simple());
    let mut up = Process::up_with(&data, port, &["--no-wasmlet"]).await?;
    let client = up.client().await?;
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "db"}, "stringData": {"password": value}}),
    )?;
    Api::<Secret>::default_namespaced(client.clone())
        .create(&PostParams::default(), &secret)
        .await?;
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"k": plain}}))?;
    Api::<ConfigMap>::default_namespaced(client.clone())
        .create(&PostParams::default(), &cm)
        .await?;
    ensure!(secret_value(&up).await? == value, "the Secret reads back");
    up.terminate().await?;

    let encoded = base64::engine::general_purpose::STANDARD.encode(&value);
    ensure!(
        found_in(&data, plain.as_bytes())?,
        "a ConfigMap value is in the store (the search works)"
    );
    ensure!(
        !found_in(&data, value.as_bytes())?,
        "the Secret value is nowhere in the data directory"
    );
    ensure!(!found_in(&data, encoded.as_bytes())?, "nor its base64 form");

    // Rotation: the generated key1 and a new key2 (first, so it writes); rewrite; key2 alone.
    let generated = std::fs::read_to_string(data.join("pki/encryption-config.yaml"))?;
    let key1: Vec<u8> = generated
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret: "))
        .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
        .transpose()?
        .unwrap_or_default();
    let key1: [u8; 32] = key1
        .try_into()
        .map_err(|_| anyhow::anyhow!("a 32-byte key"))?;
    let key2 = [7u8; 32];
    let both = dir.path().join("both.yaml");
    std::fs::write(&both, config(&[("key2", key2), ("key1", key1)]))?;
    let flag = |p: &Path| p.to_string_lossy().into_owned();
    let mut up = Process::up_with(
        &data,
        port,
        &["--no-wasmlet", "--encryption-provider-config", &flag(&both)],
    )
    .await?;
    ensure!(secret_value(&up).await? == value, "read with the old key");
    let secrets: Api<Secret> = Api::default_namespaced(up.client().await?);
    let mut s = secrets.get("db").await?;
    s.metadata.annotations = Some([("rotated".to_owned(), "yes".to_owned())].into());
    secrets.replace("db", &PostParams::default(), &s).await?;
    up.terminate().await?;
    let only_new = dir.path().join("new.yaml");
    std::fs::write(&only_new, config(&[("key2", key2)]))?;
    let mut up = Process::up_with(
        &data,
        port,
        &[
            "--no-wasmlet",
            "--encryption-provider-config",
            &flag(&only_new),
        ],
    )
    .await?;
    ensure!(
        secret_value(&up).await? == value,
        "rewritten with the new key, read without the old"
    );
    up.terminate().await?;
    ensure!(
        !found_in(&data, value.as_bytes())?,
        "still nowhere after the rotation"
    );
    Ok(())
}
