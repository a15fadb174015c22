//! placeholder
pub mod error;
pub mod kinds;
pub mod registry;
pub mod table;
pub mod validation;
pub mod patch;
pub mod pki;
pub mod request;
