//! Postgres: the source of truth in database mode (SPEC §6).
//!
//! The schema lives in `migrations/` (forward-only, embedded into the binary by [`MIGRATOR`]).
//! `wharf migrate` applies pending migrations with [`migrate`]; a gateway starting in database
//! mode calls [`check_schema`] and refuses to run on an outdated schema instead of failing
//! later on a missing column. sqlx's `_sqlx_migrations` table is the version record.
//!
//! Every committed change to a configuration table is announced on the [`CONFIG_CHANNEL`]
//! notification channel; [`ConfigChange`] is the payload (see
//! `migrations/0005_config_change_notify.sql`).

pub mod crypto;
pub mod load;
pub mod mcp_calls;
mod migrate;
pub mod secrets;
pub mod usage_store;

pub use migrate::{check_schema, expected_version, migrate, migrate_report};

use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

/// The migrations of `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The database pool once the control service has connected it: the narrow handle domains
/// take (never the whole database mode). Empty until the first connection.
pub type PoolSlot = std::sync::Arc<arc_swap::ArcSwapOption<sqlx::PgPool>>;

/// The `LISTEN` channel on which configuration changes are announced.
pub const CONFIG_CHANNEL: &str = "wharf_config";

/// Most connections the pool opens. The gateway reads configuration into in-process caches
/// and writes usage in batches, so a few connections are plenty.
pub const MAX_CONNECTIONS: u32 = 8;

/// How long [`connect`] (and any later acquire) waits for a connection.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Database errors. Messages never contain the connection URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL could not be parsed.
    #[error("invalid database URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// No connection could be made.
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("applying migrations failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The database lacks migrations this build needs.
    #[error(
        "database schema is outdated: {}, this build expects version {expected} \
         (missing: {}); run `wharf migrate` against this database",
        applied_text(*.applied),
        versions_text(.missing)
    )]
    Outdated {
        /// Highest version applied, `None` when no migration ever ran.
        applied: Option<i64>,
        /// Highest version this build embeds.
        expected: i64,
        /// Versions this build embeds that the database has not applied, ascending.
        missing: Vec<i64>,
    },
    /// An applied migration differs from the one this build embeds.
    #[error(
        "migration {version} applied to the database differs from the one in this build; \
         migrations are forward-only: add a new migration instead of editing an applied one"
    )]
    Modified {
        /// The version whose checksum differs.
        version: i64,
    },
    /// A migration failed part-way and left the version record marked as failed.
    #[error(
        "migration {version} failed part-way; repair the database, delete its row from \
         _sqlx_migrations and run `wharf migrate` again"
    )]
    Dirty {
        /// The failed version.
        version: i64,
    },
}

fn applied_text(applied: Option<i64>) -> String {
    match applied {
        Some(v) => format!("applied up to version {v}"),
        None => "no migration applied".to_string(),
    }
}

fn versions_text(versions: &[i64]) -> String {
    versions
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Opens a small pool: at most [`MAX_CONNECTIONS`] connections, [`ACQUIRE_TIMEOUT`] to get
/// one, idle connections closed after 5 minutes, every connection recycled after 30. The
/// first connection is made before returning, so an unreachable database fails here.
pub async fn connect(url: &str) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(DbError::InvalidUrl)?
        .application_name("wharf");
    PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(Some(Duration::from_secs(300)))
        .max_lifetime(Some(Duration::from_secs(1800)))
        .connect_with(options)
        .await
        .map_err(DbError::Connect)
}

/// What changed, as announced on [`CONFIG_CHANNEL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChangeOp {
    Insert,
    Update,
    Delete,
    /// The whole table was emptied: drop everything cached from it.
    Truncate,
}

/// One configuration change notification.
///
/// Payload: `{"table", "op", "id", "organisation_id"}`, plus `"key_hash"` and
/// `"old_key_hash"` for `api_keys` (the row's hash, and the previous one when an UPDATE
/// rotated it), so that a gateway can evict both cache entries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConfigChange {
    /// The table, e.g. `models`.
    pub table: String,
    /// The operation.
    pub op: ChangeOp,
    /// The row's id (`None` for TRUNCATE).
    pub id: Option<String>,
    /// The row's organisation (its own id for `organisations`), when it has one.
    pub organisation_id: Option<String>,
    /// `api_keys` only: the row's key hash (the deleted row's for DELETE).
    #[serde(default)]
    pub key_hash: Option<String>,
    /// `api_keys` only: the hash an UPDATE replaced (rotation).
    #[serde(default)]
    pub old_key_hash: Option<String>,
}

impl ConfigChange {
    /// Parses a notification payload.
    pub fn parse(payload: &str) -> Result<ConfigChange, serde_json::Error> {
        serde_json::from_str(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outdated_message_names_versions_and_command() {
        let e = DbError::Outdated {
            applied: Some(1),
            expected: 5,
            missing: vec![2, 3, 4, 5],
        };
        let msg = e.to_string();
        assert!(msg.contains("applied up to version 1"), "{msg}");
        assert!(msg.contains("expects version 5"), "{msg}");
        assert!(msg.contains("missing: 2, 3, 4, 5"), "{msg}");
        assert!(msg.contains("wharf migrate"), "{msg}");
        let none = DbError::Outdated {
            applied: None,
            expected: 5,
            missing: vec![1, 2, 3, 4, 5],
        };
        assert!(none.to_string().contains("no migration applied"));
    }

    #[test]
    fn parses_change_payloads() {
        let c = ConfigChange::parse(
            r#"{"table" : "api_keys", "op" : "UPDATE", "id" : "k1", "organisation_id" : "o1",
                "key_hash" : "bb", "old_key_hash" : "aa"}"#,
        )
        .expect("api key payload");
        assert_eq!(c.op, ChangeOp::Update);
        assert_eq!(c.key_hash.as_deref(), Some("bb"));
        assert_eq!(c.old_key_hash.as_deref(), Some("aa"));
        let t = ConfigChange::parse(
            r#"{"table" : "models", "op" : "TRUNCATE", "id" : null, "organisation_id" : null}"#,
        )
        .expect("truncate payload");
        assert_eq!(t.op, ChangeOp::Truncate);
        assert_eq!(t.id, None);
        assert_eq!(t.key_hash, None);
    }

    #[test]
    fn embedded_migrations_are_ordered() {
        let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert!(!versions.is_empty());
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(expected_version(), *versions.last().expect("a migration"));
    }
}
