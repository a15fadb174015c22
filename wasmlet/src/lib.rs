//! The wasmlet: wasmkube's kubelet. It registers a Node, watches the pods bound to it through
//! the API server, and runs each pod's containers as WebAssembly instances in its own process
//! with wasmtime.
//!
//! ```text
//! apiserver ──watch pods (spec.nodeName=me)──► pod workers ──► wasmtime Store per container
//!     ▲                                          │
//!     └──────── Node, Lease, pod status, events ◄┘
//! ```

pub mod images;
pub mod instance;
pub mod limits;
pub mod logs;
pub mod runtime;
pub mod spec;
pub mod worker;
