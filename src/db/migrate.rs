//! Applying migrations and checking that a database is up to date.

use super::{DbError, MIGRATOR};
use sqlx::migrate::{MigrateError, Migration};
use sqlx::PgPool;
use std::collections::BTreeMap;

/// Postgres `undefined_table`.
const UNDEFINED_TABLE: &str = "42P01";

fn embedded() -> impl Iterator<Item = &'static Migration> {
    MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
}

/// Highest migration version this build embeds (0 when it embeds none).
pub fn expected_version() -> i64 {
    embedded().map(|m| m.version).max().unwrap_or(0)
}

/// Applies every pending migration, each in its own transaction, under sqlx's advisory lock
/// so that several nodes migrating at once apply each migration exactly once.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await.map_err(|e| match e {
        MigrateError::VersionMismatch(version) => DbError::Modified { version },
        MigrateError::Dirty(version) => DbError::Dirty { version },
        MigrateError::Execute(e) => DbError::Query(e),
        e => DbError::Migrate(e),
    })
}

/// The versions recorded as applied (none before the first migration).
async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, DbError> {
    match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
    {
        Ok(v) => Ok(v),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_TABLE) => {
            Ok(Vec::new())
        }
        Err(e) => Err(DbError::Query(e)),
    }
}

/// [`migrate`], answering what it applied: `(version, description)` of each migration this
/// run applied, oldest first (empty when the schema was already up to date).
pub async fn migrate_report(pool: &PgPool) -> Result<Vec<(i64, String)>, DbError> {
    let before = applied_versions(pool).await?;
    migrate(pool).await?;
    let after = applied_versions(pool).await?;
    Ok(embedded()
        .filter(|m| !before.contains(&m.version) && after.contains(&m.version))
        .map(|m| (m.version, m.description.to_string()))
        .collect())
}

/// Checks that every migration this build embeds was applied, unchanged and successfully.
///
/// Versions present in the database but unknown to this build (a newer build migrated it)
/// are accepted with a warning: migrations are additive, so an older gateway keeps working
/// during a rolling upgrade.
pub async fn check_schema(pool: &PgPool) -> Result<(), DbError> {
    let rows: Vec<(i64, bool, Vec<u8>)> =
        match sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_TABLE) => {
                Vec::new()
            }
            Err(e) => return Err(DbError::Query(e)),
        };
    let applied: BTreeMap<i64, (bool, Vec<u8>)> = rows
        .into_iter()
        .map(|(version, success, checksum)| (version, (success, checksum)))
        .collect();
    if let Some((&version, _)) = applied.iter().find(|(_, (success, _))| !success) {
        return Err(DbError::Dirty { version });
    }

    let mut missing = Vec::new();
    for m in embedded() {
        match applied.get(&m.version) {
            None => missing.push(m.version),
            Some((_, checksum)) if checksum.as_slice() != &*m.checksum => {
                return Err(DbError::Modified { version: m.version });
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        missing.sort_unstable();
        return Err(DbError::Outdated {
            applied: applied.keys().next_back().copied(),
            expected: expected_version(),
            missing,
        });
    }

    let unknown: Vec<i64> = applied
        .keys()
        .copied()
        .filter(|v| !embedded().any(|m| m.version == *v))
        .collect();
    if !unknown.is_empty() {
        tracing::warn!(
            versions = ?unknown,
            expected = expected_version(),
            "the database has migrations this build does not know (applied by a newer build)"
        );
    }
    Ok(())
}
