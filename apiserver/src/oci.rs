//! The cluster's own OCI registry: the distribution API (`/v2/`) on the API server's port,
//! so wasmlets can pull images with no external registry and `wasmkube image push` has
//! somewhere to put them.
//!
//! Blobs (layers, configs and manifests) are stored content-addressed under
//! `DATA_DIR/registry/blobs/sha256/<hex>`; a repository is a directory of tag files
//! (`repositories/<name>/tags/<tag>` → digest) and manifest links
//! (`repositories/<name>/manifests/<hex>` → media type). Uploads stream to
//! `DATA_DIR/registry/uploads/<uuid>` and are verified against their digest before they become
//! a blob. Errors use the distribution spec's `{"errors":[{code,message}]}` body.
//!
//! Registry content is node-local files, not raft state: with several API servers (a later
//! issue) each serves what was pushed to it.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// The largest manifest accepted (the distribution reference implementation uses 4 MiB).
const MAX_MANIFEST: usize = 4 << 20;

/// The registry's storage.
#[derive(Debug, Clone)]
pub(crate) struct OciRegistry {
    root: PathBuf,
}

/// A distribution-spec error.
struct OciError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl OciError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// `DIGEST_INVALID` (400).
    fn digest_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", message)
    }

    fn io(e: std::io::Error) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            format!("storage error: {e}"),
        )
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let body = json!({"errors": [{"code": self.code, "message": self.message}]});
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

type Result<T> = std::result::Result<T, OciError>;

/// What a `/v2/...` path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Uploads(&'a str),
    Upload(&'a str, &'a str),
}

type MakeRoute<'a> = fn(&'a str, &'a str) -> Route<'a>;

fn parse_route<'a>(path: &'a str) -> Option<Route<'a>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return valid_name(name).then_some(Route::Tags(name));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return valid_name(name).then_some(Route::Uploads(name));
    }
    let makers: [(&str, MakeRoute<'a>); 3] = [
        ("/blobs/uploads/", Route::Upload),
        ("/manifests/", Route::Manifest),
        ("/blobs/", Route::Blob),
    ];
    for (marker, make) in makers {
        if let Some(at) = rest.rfind(marker) {
            let (name, reference) = (&rest[..at], &rest[at + marker.len()..]);
            if valid_name(name) && !reference.is_empty() && !reference.contains('/') {
                return Some(make(name, reference));
            }
            return None;
        }
    }
    None
}

/// Repository names per the distribution spec: lowercase path components joined by `/`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        })
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.starts_with('_'))
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The hex part of a `sha256:` digest, if well-formed.
/// The hex of a `sha256:` digest, or `DIGEST_INVALID`.
fn sha256_hex(digest: &str) -> Result<&str> {
    digest_hex(digest)
        .ok_or_else(|| OciError::digest_invalid(format!("{digest} is not a sha256 digest")))
}

fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

impl OciRegistry {
    /// Storage under `data_dir/registry`.
    pub(crate) fn new(data_dir: &Path) -> std::io::Result<Self> {
        let root = data_dir.join("registry");
        for dir in ["blobs/sha256", "uploads", "repositories"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(Self { root })
    }

    /// Whether `path` belongs to the registry.
    pub(crate) fn serves(path: &str) -> bool {
        path == "/v2" || path.starts_with("/v2/")
    }

    /// Serves one distribution-API request (already authenticated).
    pub(crate) async fn handle(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Body,
    ) -> Response {
        let Some(route) = parse_route(path) else {
            return OciError::new(
                StatusCode::NOT_FOUND,
                "NAME_INVALID",
                format!("no such registry path {path}"),
            )
            .into_response();
        };
        let query = crate::request::QueryPairs::parse(query).unwrap_or_default();
        let param = |k: &str| query.get(k);
        let result = match (method, route) {
            (&Method::GET | &Method::HEAD, Route::Base) => Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{}",
            )
                .into_response()),
            (&Method::GET, Route::Catalog) => self.catalog(),
            (&Method::GET, Route::Tags(name)) => self.tags(name),
            (&Method::GET | &Method::HEAD, Route::Blob(_, digest)) => {
                self.get_blob(digest, method == Method::HEAD).await
            }
            (&Method::DELETE, Route::Blob(..)) => Err(OciError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "blob deletion is not supported",
            )),
            (&Method::POST, Route::Uploads(name)) => {
                self.start_upload(name, param("digest"), param("mount"), body)
                    .await
            }
            (&Method::PATCH, Route::Upload(name, id)) => self.patch_upload(name, id, body).await,
            (&Method::PUT, Route::Upload(name, id)) => {
                self.finish_upload(name, id, param("digest"), body).await
            }
            (&Method::GET, Route::Upload(name, id)) => self.upload_status(name, id),
            (&Method::DELETE, Route::Upload(_, id)) => self.cancel_upload(id),
            (&Method::PUT, Route::Manifest(name, reference)) => {
                self.put_manifest(name, reference, headers, body).await
            }
            (&Method::GET | &Method::HEAD, Route::Manifest(name, reference)) => {
                self.get_manifest(name, reference, method == Method::HEAD)
            }
            (&Method::DELETE, Route::Manifest(name, reference)) => {
                self.delete_manifest(name, reference)
            }
            (m, _) => Err(OciError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                format!("{m} is not supported here"),
            )),
        };
        let mut resp = result.unwrap_or_else(IntoResponse::into_response);
        resp.headers_mut().insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
        resp
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex)
    }

    fn repo(&self, name: &str) -> PathBuf {
        self.root.join("repositories").join(name)
    }

    fn upload_path(&self, id: &str) -> Result<PathBuf> {
        if id.len() != 36 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(OciError::new(
                StatusCode::NOT_FOUND,
                "BLOB_UPLOAD_UNKNOWN",
                "unknown upload",
            ));
        }
        Ok(self.root.join("uploads").join(id))
    }

    fn catalog(&self) -> Result<Response> {
        let mut repos = Vec::new();
        collect_repos(&self.root.join("repositories"), "", &mut repos);
        repos.sort();
        Ok(axum::Json(json!({"repositories": repos})).into_response())
    }

    fn tags(&self, name: &str) -> Result<Response> {
        let dir = self.repo(name).join("tags");
        let entries = std::fs::read_dir(&dir).map_err(|_| {
            OciError::new(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                format!("repository {name} not known"),
            )
        })?;
        let mut tags: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        tags.sort();
        Ok(axum::Json(json!({"name": name, "tags": tags})).into_response())
    }

    async fn get_blob(&self, digest: &str, head: bool) -> Result<Response> {
        let unknown = || {
            OciError::new(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                format!("blob {digest} unknown"),
            )
        };
        let hex = sha256_hex(digest)?;
        let path = self.blob_path(hex);
        let len = tokio::fs::metadata(&path)
            .await
            .map_err(|_| unknown())?
            .len();
        let body = if head {
            Body::empty()
        } else {
            let file = tokio::fs::File::open(&path).await.map_err(|_| unknown())?;
            Body::from_stream(tokio_util::io::ReaderStream::new(file))
        };
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len)
            .header("docker-content-digest", digest)
            .body(body)
            .expect("static headers are valid"))
    }

    async fn start_upload(
        &self,
        name: &str,
        digest: Option<&str>,
        mount: Option<&str>,
        body: Body,
    ) -> Result<Response> {
        if let Some(d) = mount.and_then(|m| digest_hex(m).map(|h| (m, h)))
            && self.blob_path(d.1).exists()
        {
            return Ok(blob_created(name, d.0));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let path = self.upload_path(&id)?;
        append(&path, body).await?;
        if let Some(digest) = digest {
            // Monolithic upload: POST with the whole blob and its digest.
            return self.commit_upload(name, &path, digest).await;
        }
        upload_accepted(name, &id, &path)
    }

    async fn patch_upload(&self, name: &str, id: &str, body: Body) -> Result<Response> {
        let path = self.existing_upload(id)?;
        append(&path, body).await?;
        upload_accepted(name, id, &path)
    }

    async fn finish_upload(
        &self,
        name: &str,
        id: &str,
        digest: Option<&str>,
        body: Body,
    ) -> Result<Response> {
        let path = self.existing_upload(id)?;
        let digest = digest
            .ok_or_else(|| OciError::digest_invalid("the digest query parameter is required"))?;
        append(&path, body).await?;
        self.commit_upload(name, &path, digest).await
    }

    fn upload_status(&self, name: &str, id: &str) -> Result<Response> {
        let path = self.existing_upload(id)?;
        let mut resp = upload_accepted(name, id, &path)?;
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Ok(resp)
    }

    fn cancel_upload(&self, id: &str) -> Result<Response> {
        let path = self.existing_upload(id)?;
        std::fs::remove_file(path).map_err(OciError::io)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    fn existing_upload(&self, id: &str) -> Result<PathBuf> {
        let path = self.upload_path(id)?;
        if !path.exists() {
            return Err(OciError::new(
                StatusCode::NOT_FOUND,
                "BLOB_UPLOAD_UNKNOWN",
                format!("upload {id} unknown"),
            ));
        }
        Ok(path)
    }

    async fn commit_upload(&self, name: &str, upload: &Path, digest: &str) -> Result<Response> {
        let hex = sha256_hex(digest)?;
        let bytes = tokio::fs::read(upload).await.map_err(OciError::io)?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            let _ = tokio::fs::remove_file(upload).await;
            return Err(OciError::digest_invalid(format!(
                "content digest {actual} does not match {digest}"
            )));
        }
        tokio::fs::rename(upload, self.blob_path(hex))
            .await
            .map_err(OciError::io)?;
        Ok(blob_created(name, digest))
    }

    async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response> {
        let bytes = axum::body::to_bytes(body, MAX_MANIFEST)
            .await
            .map_err(|_| {
                OciError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "SIZE_INVALID",
                    format!("manifests are limited to {MAX_MANIFEST} bytes"),
                )
            })?;
        let invalid = |m: String| OciError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", m);
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("manifest is not JSON: {e}")))?;
        let media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| {
                doc.get("mediaType")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned());
        // Every blob an image manifest references must already be here.
        let referenced = doc.get("config").into_iter().chain(
            doc.get("layers")
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten(),
        );
        for desc in referenced {
            let d = desc
                .get("digest")
                .and_then(|d| d.as_str())
                .unwrap_or_default();
            let known = digest_hex(d).is_some_and(|h| self.blob_path(h).exists());
            if !known {
                return Err(OciError::new(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_BLOB_UNKNOWN",
                    format!("blob {d} unknown to registry"),
                ));
            }
        }
        let digest = sha256_digest(&bytes);
        let hex = digest_hex(&digest)
            .expect("computed digests are well-formed")
            .to_owned();
        if let Some(expected) = digest_hex(reference).map(|_| reference)
            && expected != digest
        {
            return Err(invalid(format!(
                "manifest digest {digest} does not match {expected}"
            )));
        } else if digest_hex(reference).is_none() && !valid_tag(reference) {
            return Err(OciError::new(
                StatusCode::BAD_REQUEST,
                "TAG_INVALID",
                format!("{reference:?} is not a valid tag"),
            ));
        }
        let repo = self.repo(name);
        write_atomic(&self.blob_path(&hex), &bytes)?;
        write_atomic(&repo.join("manifests").join(&hex), media_type.as_bytes())?;
        if digest_hex(reference).is_none() {
            write_atomic(&repo.join("tags").join(reference), digest.as_bytes())?;
        }
        Ok(Response::builder()
            .status(StatusCode::CREATED)
            .header(header::LOCATION, format!("/v2/{name}/manifests/{digest}"))
            .header("docker-content-digest", &digest)
            .body(Body::empty())
            .expect("static headers are valid"))
    }

    fn resolve(&self, name: &str, reference: &str) -> Result<String> {
        let unknown = || {
            OciError::new(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!("manifest {name}:{reference} unknown"),
            )
        };
        if digest_hex(reference).is_some() {
            return Ok(reference.to_owned());
        }
        if !valid_tag(reference) {
            return Err(unknown());
        }
        std::fs::read_to_string(self.repo(name).join("tags").join(reference)).map_err(|_| unknown())
    }

    fn get_manifest(&self, name: &str, reference: &str, head: bool) -> Result<Response> {
        let digest = self.resolve(name, reference)?;
        let hex = digest_hex(&digest).ok_or_else(|| {
            OciError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "corrupt tag")
        })?;
        let unknown = || {
            OciError::new(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!("manifest {name}@{digest} unknown"),
            )
        };
        let media_type = std::fs::read_to_string(self.repo(name).join("manifests").join(hex))
            .map_err(|_| unknown())?;
        let bytes = std::fs::read(self.blob_path(hex)).map_err(|_| unknown())?;
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, media_type)
            .header(header::CONTENT_LENGTH, bytes.len())
            .header("docker-content-digest", &digest)
            .body(if head {
                Body::empty()
            } else {
                Body::from(bytes)
            })
            .expect("stored media types are valid header values"))
    }

    fn delete_manifest(&self, name: &str, reference: &str) -> Result<Response> {
        let repo = self.repo(name);
        if digest_hex(reference).is_some() {
            let digest = self.resolve(name, reference)?;
            let hex = digest_hex(&digest).expect("resolved digests are well-formed");
            std::fs::remove_file(repo.join("manifests").join(hex)).map_err(|_| {
                OciError::new(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    format!("manifest {reference} unknown"),
                )
            })?;
            // Tags pointing at it go with it.
            for tag in std::fs::read_dir(repo.join("tags"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if std::fs::read_to_string(tag.path()).is_ok_and(|d| d == digest) {
                    let _ = std::fs::remove_file(tag.path());
                }
            }
        } else {
            self.resolve(name, reference)?;
            std::fs::remove_file(repo.join("tags").join(reference)).map_err(OciError::io)?;
        }
        Ok(StatusCode::ACCEPTED.into_response())
    }
}

fn collect_repos(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let full = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if name == "tags" || name == "manifests" {
            if name == "manifests" && !prefix.is_empty() {
                out.push(prefix.to_owned());
            }
            continue;
        }
        if entry.path().is_dir() {
            collect_repos(&entry.path(), &full, out);
        }
    }
}

async fn append(path: &Path, body: Body) -> Result<()> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(OciError::io)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                format!("reading the upload: {e}"),
            )
        })?;
        file.write_all(&chunk).await.map_err(OciError::io)?;
    }
    file.flush().await.map_err(OciError::io)?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(OciError::io)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(OciError::io)
}

fn upload_accepted(name: &str, id: &str, path: &Path) -> Result<Response> {
    let len = std::fs::metadata(path).map_err(OciError::io)?.len();
    Ok(Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
        .header(header::RANGE, format!("0-{}", len.saturating_sub(1)))
        .header("docker-upload-uuid", id)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("static headers are valid"))
}

fn blob_created(name: &str, digest: &str) -> Response {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
        .header("docker-content-digest", digest)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_names_with_slashes() {
        assert_eq!(parse_route("/v2/"), Some(Route::Base));
        assert_eq!(
            parse_route("/v2/a/b/manifests/v1"),
            Some(Route::Manifest("a/b", "v1"))
        );
        assert_eq!(
            parse_route("/v2/hello/blobs/uploads/"),
            Some(Route::Uploads("hello"))
        );
        assert_eq!(
            parse_route("/v2/x/blobs/uploads/abc"),
            Some(Route::Upload("x", "abc"))
        );
        assert_eq!(
            parse_route("/v2/x/blobs/sha256:00"),
            Some(Route::Blob("x", "sha256:00"))
        );
        assert_eq!(parse_route("/v2/x/tags/list"), Some(Route::Tags("x")));
        assert_eq!(parse_route("/v2/UPPER/manifests/v1"), None);
        assert_eq!(
            parse_route("/v2/../manifests/v1"),
            None,
            "no path traversal"
        );
    }

    #[test]
    fn tags_and_digests_are_validated() {
        assert!(valid_tag("v1.0_rc-1") && valid_tag("latest"));
        assert!(!valid_tag("../x") && !valid_tag("-x") && !valid_tag(""));
        assert!(digest_hex(&sha256_digest(b"x")).is_some());
        assert!(digest_hex("sha256:../../etc").is_none());
    }
}
