//! The node's one wasmtime [`Engine`]: configuration, linking, and compiled artifacts.
//!
//! A module is compiled once per (wasmtime version, engine configuration, digest) and the
//! machine code is kept on disk, so the second pod of an image — and the first pod after a
//! wasmlet restart — starts without compiling (runwasi's `cache_key`). In memory each image
//! is held pre-linked ([`InstancePre`](wasmtime::component::InstancePre)) so starting a
//! container is just `Store::new` + instantiate.

pub mod images;
pub mod instance;
pub(crate) mod limits;
pub mod usage;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::runtime::instance::ContainerState;

/// How often the engine's epoch advances: the unit of CPU accounting and of preemption.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The WASI worlds this runtime runs, as reported in the Node's `nodeInfo`.
pub const SUPPORTED_WORLDS: &[&str] = &["wasi:cli/command@0.2", "wasi:http/proxy@0.2", "wasip1"];

/// Sizing of the engine's pooling allocator.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Directory holding compiled artifacts (`<engine-hash>/<digest>.cwasm`).
    pub cache_dir: PathBuf,
    /// Concurrent component instances: long-running containers plus in-flight HTTP requests.
    pub max_instances: u32,
    /// The largest linear memory any one instance may have; a container's memory limit is
    /// capped by it.
    pub max_memory_bytes: usize,
}

/// What an image turned out to be once compiled.
#[derive(Clone)]
pub enum Prepared {
    /// A `wasi:cli/command` component (or a wasip1 module adapted into one): run to exit.
    Command(CommandPre<ContainerState>),
    /// A `wasi:http/proxy` component: instantiated once per incoming request.
    Http(ProxyPre<ContainerState>),
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Prepared::Command(_) => "Command",
            Prepared::Http(_) => "Http",
        })
    }
}

/// Why an image could not be turned into something runnable. Each is the user's problem
/// (a bad image), reported on the pod, never a wasmlet failure.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("not a WebAssembly binary (no \\0asm header)")]
    NotWasm,
    #[error("the wasip1 module could not be adapted to a component: {0}")]
    Adapt(String),
    #[error("invalid WebAssembly: {0}")]
    Compile(String),
    #[error(
        "the component exports neither wasi:cli/run nor wasi:http/incoming-handler (exports: {0})"
    )]
    NoEntryPoint(String),
    #[error("the component's imports cannot be satisfied: {0}")]
    Link(String),
}

/// The node's engine, its linker, and the prepared images.
pub struct Runtime {
    engine: Engine,
    linker: Linker<ContainerState>,
    cache_dir: PathBuf,
    prepared: Mutex<HashMap<String, Prepared>>,
    /// One compile per digest at a time: the first pods of a new image wait for one compile
    /// instead of each compiling it.
    compiling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    max_memory_bytes: usize,
}

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker.
    ///
    /// # Errors
    /// When the pooling allocator cannot reserve its address space, or the cache directory
    /// cannot be created.
    pub fn new(config: &RuntimeConfig) -> wasmtime::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::new();
        let instances = config.max_instances.max(1);
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(8))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .total_stacks(instances)
            .max_memory_size(config.max_memory_bytes)
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(16);
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            // Slots hold at most max_memory_bytes, so reserving 4 GiB per memory to elide
            // bounds checks would multiply the pool's address space for nothing.
            .memory_reservation(config.max_memory_bytes as u64)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        crate::net::podnet::add_to_linker(&mut linker)?;
        crate::net::names::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;

        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let cache_dir = config.cache_dir.join(format!("{:016x}", hasher.finish()));
        std::fs::create_dir_all(&cache_dir)?;

        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("wasmlet-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;

        Ok(Arc::new(Self {
            engine,
            linker,
            cache_dir,
            prepared: Mutex::new(HashMap::new()),
            compiling: Mutex::new(HashMap::new()),
            max_memory_bytes: config.max_memory_bytes,
        }))
    }

    /// The engine every container of this node runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The largest memory one instance may have.
    pub fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }

    /// Whether an image is already prepared in memory or compiled on disk (no compile needed).
    pub fn is_cached(&self, digest: &str) -> bool {
        self.prepared
            .lock()
            .expect("prepared map lock")
            .contains_key(digest)
            || self.artifact_path(digest).exists()
    }

    /// Turns the image `bytes` (with content digest `digest`) into something runnable,
    /// compiling only if neither memory nor the disk cache has it. CPU-heavy: runs the
    /// compile on a blocking thread.
    ///
    /// # Errors
    /// [`PrepareError`] when the bytes are not a runnable WASI program.
    pub async fn prepare(
        self: &Arc<Self>,
        digest: &str,
        bytes: impl FnOnce() -> std::io::Result<Vec<u8>> + Send + 'static,
    ) -> Result<Prepared, PrepareError> {
        if let Some(p) = self.prepared.lock().expect("prepared map lock").get(digest) {
            return Ok(p.clone());
        }
        let gate = Arc::clone(
            self.compiling
                .lock()
                .expect("compiling map lock")
                .entry(digest.to_owned())
                .or_default(),
        );
        let _turn = gate.lock().await;
        if let Some(p) = self.prepared.lock().expect("prepared map lock").get(digest) {
            return Ok(p.clone());
        }
        let this = Arc::clone(self);
        let key = digest.to_owned();
        let prepared = tokio::task::spawn_blocking(move || {
            let component = this.load_or_compile(&key, bytes)?;
            this.link(&component)
        })
        .await
        .map_err(|e| PrepareError::Compile(format!("compiler task failed: {e}")))??;
        self.prepared
            .lock()
            .expect("prepared map lock")
            .insert(digest.to_owned(), prepared.clone());
        Ok(prepared)
    }

    fn artifact_path(&self, digest: &str) -> PathBuf {
        let name = digest.replace(':', "-");
        self.cache_dir.join(format!("{name}.cwasm"))
    }

    fn load_or_compile(
        &self,
        digest: &str,
        bytes: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> Result<Component, PrepareError> {
        let path = self.artifact_path(digest);
        if path.exists() {
            match deserialize(&self.engine, &path) {
                Ok(c) => return Ok(c),
                // A torn or stale artifact is only a cache miss.
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding cached artifact")
                }
            }
        }
        let bytes =
            bytes().map_err(|e| PrepareError::Compile(format!("reading the image: {e}")))?;
        let component_bytes = to_component(&bytes)?;
        let compiled = self
            .engine
            .precompile_component(&component_bytes)
            .map_err(|e| PrepareError::Compile(format!("{e:#}")))?;
        // Write-then-rename so a crash never leaves a half-written artifact under the real name.
        let tmp = path.with_extension(format!("tmp-{}", std::process::id() ^ rand_suffix()));
        if let Err(e) = std::fs::write(&tmp, &compiled).and_then(|()| std::fs::rename(&tmp, &path))
        {
            tracing::warn!(path = %path.display(), error = %e, "could not cache the compiled artifact");
        }
        deserialize_bytes(&self.engine, &compiled)
            .map_err(|e| PrepareError::Compile(format!("{e:#}")))
    }

    fn link(&self, component: &Component) -> Result<Prepared, PrepareError> {
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| PrepareError::Link(format!("{e:#}")))?;
        let exports_interface = |prefix: &str| exports.iter().any(|e| e.starts_with(prefix));
        if exports_interface("wasi:http/incoming-handler@0.2") {
            return ProxyPre::new(pre)
                .map(Prepared::Http)
                .map_err(|e| PrepareError::Link(format!("{e:#}")));
        }
        if exports_interface("wasi:cli/run@0.2") {
            return CommandPre::new(pre)
                .map(Prepared::Command)
                .map_err(|e| PrepareError::Link(format!("{e:#}")));
        }
        Err(PrepareError::NoEntryPoint(exports.join(", ")))
    }
}

/// A per-call suffix so concurrent compiles of one image never share a temporary file.
fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9)
}

/// A component as is; a wasip1 core module wrapped with the preview1 command adapter, so both
/// run on the same component path (same limits, logs and sockets).
fn to_component(bytes: &[u8]) -> Result<Vec<u8>, PrepareError> {
    // The preamble is `\0asm` + a 4-byte version/layer; layer 1 marks a component.
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PrepareError::NotWasm);
    }
    if bytes[6] == 1 {
        return Ok(bytes.to_vec());
    }
    wit_component::ComponentEncoder::default()
        .module(bytes)
        .and_then(|e| {
            e.adapter(
                "wasi_snapshot_preview1",
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
            )
        })
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| PrepareError::Adapt(format!("{e:#}")))
}

#[expect(
    unsafe_code,
    reason = "wasmtime trusts precompiled artifacts; we only load ones this engine wrote into \
              the wasmlet's own data directory, keyed by the engine's compatibility hash"
)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: see the `expect` reason above.
    unsafe { Component::deserialize_file(engine, path) }
}

#[expect(
    unsafe_code,
    reason = "the bytes were produced by `precompile_component` just now"
)]
fn deserialize_bytes(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: produced by this engine a moment ago.
    unsafe { Component::deserialize(engine, bytes) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(dir: &Path) -> Arc<Runtime> {
        Runtime::new(&RuntimeConfig {
            cache_dir: dir.to_owned(),
            max_instances: 8,
            max_memory_bytes: 64 << 20,
        })
        .expect("engine")
    }

    #[tokio::test]
    async fn commands_and_proxies_are_told_apart_and_cached_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime(dir.path());
        let hello = wasmkube_samples::guest("hello").expect("sample");
        let p = rt
            .prepare("sha256:hello", || Ok(hello.to_vec()))
            .await
            .expect("prepare");
        assert!(matches!(p, Prepared::Command(_)));
        let http = wasmkube_samples::guest("http-hello").expect("sample");
        let p = rt
            .prepare("sha256:http", || Ok(http.to_vec()))
            .await
            .expect("prepare");
        assert!(matches!(p, Prepared::Http(_)));
        assert!(rt.artifact_path("sha256:hello").exists());

        // A fresh runtime (a wasmlet restart) finds the artifact and never reads the image.
        let again = runtime(dir.path());
        assert!(again.is_cached("sha256:hello"));
        let p = again
            .prepare("sha256:hello", || {
                Err(std::io::Error::other("must not be read"))
            })
            .await
            .expect("loaded from the cache");
        assert!(matches!(p, Prepared::Command(_)));
    }

    #[tokio::test]
    async fn concurrent_first_pods_of_an_image_share_one_compile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime(dir.path());
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hello = wasmkube_samples::guest("hello").expect("sample");
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (rt, reads) = (Arc::clone(&rt), Arc::clone(&reads));
                tokio::spawn(async move {
                    rt.prepare("sha256:same", move || {
                        reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Ok(hello.to_vec())
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await.expect("join"), Ok(Prepared::Command(_))));
        }
        assert_eq!(
            reads.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "compiled once"
        );
    }

    #[tokio::test]
    async fn wasip1_modules_are_adapted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime(dir.path());
        let p1 = wasmkube_samples::guest("hello-p1").expect("sample");
        assert_eq!(p1[6], 0, "the sample is a core module");
        let p = rt
            .prepare("sha256:p1", || Ok(p1.to_vec()))
            .await
            .expect("prepare");
        assert!(matches!(p, Prepared::Command(_)));
    }

    #[tokio::test]
    async fn garbage_is_not_wasm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime(dir.path());
        let err = rt
            .prepare("sha256:text", || Ok(b"#!/bin/sh\necho hi\n".to_vec()))
            .await;
        assert!(matches!(err, Err(PrepareError::NotWasm)), "{err:?}");
        let err = rt
            .prepare("sha256:bad", || Ok(b"\0asm\x01\0\0\0\xff\xff".to_vec()))
            .await;
        assert!(
            matches!(err, Err(PrepareError::Adapt(_))),
            "a broken core module: {err:?}"
        );
        let err = rt
            .prepare("sha256:bad2", || Ok(b"\0asm\x0d\0\x01\0\xff\xff".to_vec()))
            .await;
        assert!(
            matches!(err, Err(PrepareError::Compile(_))),
            "a broken component: {err:?}"
        );
    }
}
