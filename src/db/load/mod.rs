//! Database mode: loading the gateway's configuration structures from Postgres (SPEC §6).
//!
//! The gateway runs on the same [`Provider`](crate::config::Provider), [`Model`](crate::config::Model)
//! and [`VirtualKey`](crate::config::VirtualKey) values whether they
//! come from the TOML file or from Postgres, so database mode serves exactly what TOML-only
//! mode serves:
//!
//! * [`load_catalog`] reads the providers and models of every organisation in one consistent
//!   snapshot, decrypting each provider's credential with the
//!   [`MasterKeys`](crate::db::crypto::MasterKeys). A row that would
//!   be rejected in the TOML file (bad base URL, bad header, bad model name, ...) is skipped
//!   with a warning instead of failing the whole load; a credential that cannot be decrypted
//!   leaves its provider without one (`api_key: None`, requests answer
//!   `provider_api_key_not_configured`) plus a warning. Nothing here panics on data.
//! * [`load_key`] reads one virtual key by hash with its model grants: the hot path's cache
//!   miss.
//!
//! Model names are unique per organisation only, so the catalog is keyed by
//! `(organisation id, model name)`; [`model_key`] gives the flat `"<organisation id>/<name>"`
//! form used by [`DbSnapshotParts`].
//!
//! - `rows.rs`: the rows as read, and their conversions to configuration values;
//! - `catalog.rs`: the catalog assembly and [`load_catalog`];
//! - `keys.rs`: [`load_key`] and the display prefix length.

use super::crypto::CryptoError;
use uuid::Uuid;

mod catalog;
mod keys;
pub mod mcp;
mod rows;

pub use catalog::*;
pub use keys::*;
pub use rows::*;

/// Connect timeout of a provider whose options do not set `connect_timeout_ms` (as in TOML).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Idle timeout of a provider whose options do not set `idle_timeout_ms` (as in TOML).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Read timeout of a provider written without one (the `providers.timeout_ms` column default).
pub const DEFAULT_DB_TIMEOUT_MS: u64 = 60_000;

/// Errors of loading and writing configuration rows.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A query failed (includes constraint violations such as a duplicate name).
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// Encrypting or decrypting a credential failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The values given to be written, or a row read back, are not valid.
    #[error("invalid {what}: {}", .problems.join("; "))]
    Invalid {
        /// What was being written or read (`provider`, `model`, `api key`, ...).
        what: &'static str,
        /// Every problem found, each naming its field.
        problems: Vec<String>,
    },
    /// The row to change does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// The kind of row.
        what: &'static str,
        /// Its id.
        id: Uuid,
    },
}

pub(super) fn invalid(what: &'static str, problems: Vec<String>) -> LoadError {
    LoadError::Invalid { what, problems }
}
