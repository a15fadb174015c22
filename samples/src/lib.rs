//! The sample guest programs and their manifests.
//!
//! The guests in `samples/guests/` are real Rust programs built for wasm32-wasip2 (and `hello`
//! also for wasm32-wasip1) by this crate's build script, so they exist after any normal
//! `cargo build`. `wasmkube up --demo` pushes them to the cluster registry as `NAME:v1` and applies
//! the manifests; the end-to-end tests run them as pods.
//!
//! ```
//! let hello = wasmkube_samples::guest("hello").expect("hello is a sample");
//! assert_eq!(&hello[..4], b"\0asm");
//! ```

/// A sample guest program.
#[derive(Debug, Clone, Copy)]
pub struct Guest {
    /// The image name it is pushed under (with tag `v1`).
    pub name: &'static str,
    /// The `.wasm` bytes: a component for wasip2 guests, a core module for `hello-p1`.
    pub wasm: &'static [u8],
}

macro_rules! guests {
    ($($name:literal),* $(,)?) => {
        /// Every sample guest.
        pub const GUESTS: &[Guest] = &[$(Guest {
            name: $name,
            wasm: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".wasm")),
        }),*];
    };
}

guests!(
    "hello",
    "hello-p1",
    "toolbox",
    "http-hello",
    "http-frontend",
    "tcp-echo",
    "crashloop",
    "memhog",
    "cpuspin"
);

/// The `.wasm` bytes of the sample called `name`.
pub fn guest(name: &str) -> Option<&'static [u8]> {
    GUESTS.iter().find(|g| g.name == name).map(|g| g.wasm)
}

/// The multi-tier sample (several documents: Deployments, Services, an Ingress, a Pod).
pub const MULTI_TIER: (&str, &str) = (
    "multi-tier.yaml",
    include_str!("../manifests/multi-tier.yaml"),
);

/// The scale-to-zero sample: a wasi:http function (Deployment, Service, Ingress on
/// `fn.localhost`) with an autoscaler that takes it to zero pods when idle.
pub const FUNCTION: (&str, &str) = ("function.yaml", include_str!("../manifests/function.yaml"));

/// The sample manifests, by file name (YAML, one Pod each).
pub const MANIFESTS: &[(&str, &str)] = &[
    ("hello.yaml", include_str!("../manifests/hello.yaml")),
    ("hello-p1.yaml", include_str!("../manifests/hello-p1.yaml")),
    (
        "http-hello.yaml",
        include_str!("../manifests/http-hello.yaml"),
    ),
    ("tcp-echo.yaml", include_str!("../manifests/tcp-echo.yaml")),
    (
        "crashloop.yaml",
        include_str!("../manifests/crashloop.yaml"),
    ),
    ("memhog.yaml", include_str!("../manifests/memhog.yaml")),
    ("cpuspin.yaml", include_str!("../manifests/cpuspin.yaml")),
    (
        "shared-volume.yaml",
        include_str!("../manifests/shared-volume.yaml"),
    ),
];
