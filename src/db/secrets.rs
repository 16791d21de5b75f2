//! Secret maintenance: master-key rotation of provider credential envelopes, virtual key rotation.
//!
//! * [`rotate_envelopes`] (`wharf secrets rotate`) re-seals every encrypted envelope the schema
//!   holds under the newest master key (SPEC §6): the `provider_api_keys.envelope` column and
//!   the envelopes nested in `mcp_servers.env` and `mcp_servers.auth_config`. Envelopes already
//!   under the newest key are left alone; one that cannot be opened is reported and left as it
//!   is, and never stops the others. Everything happens in one transaction, so a database
//!   error leaves every row as it was.
//!
//!   The usual sequence: append the new key to `WHARF_MASTER_KEYS` on every gateway (they keep
//!   opening old envelopes), run the rotation, check that nothing failed, then drop the old key.
//!   The gateways hear about the changed rows through the change notifications and reload.
//! * [`rotate_api_key`] gives a virtual key a new secret and keeps its id, so grants, budgets
//!   and usage stay attached (SPEC §1.2). The replaced hash and a masked form of the replaced
//!   display prefix go to `api_key_history`. The `api_keys` change notification carries both
//!   the old and the new hash, so every gateway evicts both cache entries.
//! * [`unrevoke_api_key`] undoes a revocation (`api_keys.revoked_at`, set by the admin API;
//!   the tests revoke with `tests/common/seed.rs`'s `revoke_api_key`).

use super::crypto::{self, CryptoError, MasterKeys};
use super::load::DISPLAY_PREFIX_LEN;
use super::DbError;
use crate::keys;
use serde_json::Value;
use sqlx::PgPool;
use std::fmt;
use uuid::Uuid;

/// Errors of secret maintenance. Messages never contain secrets or key material.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// Connecting, or checking the schema, failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The master keys are missing or malformed, or sealing failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The row to change does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// The kind of row.
        what: &'static str,
        /// Its id.
        id: Uuid,
    },
}

/// What [`rotate_envelopes`] did. Counts are of envelopes (an MCP server may hold several).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotateReport {
    /// Envelopes re-sealed under the newest master key.
    pub rotated: u64,
    /// Envelopes that were already under the newest master key (left alone).
    pub already_current: u64,
    /// Ids of the rows (`provider_api_keys` or `mcp_servers`) holding an envelope that could
    /// not be opened, each listed once. Those envelopes are left as they were.
    pub failed: Vec<String>,
    /// One line per envelope that could not be opened: table, row id, where in the row, and
    /// why (the reason names master key ids, never key material).
    pub errors: Vec<String>,
}

impl RotateReport {
    /// True when no envelope failed to open.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

impl fmt::Display for RotateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "re-encrypted {} envelope(s), {} already under the newest master key, {} row(s) failed",
            self.rotated,
            self.already_current,
            self.failed.len()
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// True for a JSON value shaped like a credential envelope (see [`crypto`]).
fn is_envelope(v: &Value) -> bool {
    v.as_object().is_some_and(|o| {
        ["v", "alg", "key_id", "nonce", "ciphertext"]
            .iter()
            .all(|k| o.contains_key(*k))
    })
}

/// Per-row tally of [`reseal`].
#[derive(Default)]
struct Tally {
    rotated: u64,
    current: u64,
    /// (where in the row, why).
    failed: Vec<(String, CryptoError)>,
}

/// Re-seals every envelope in `value` (the value itself, or nested in objects and arrays)
/// that is not under the newest master key. `path` names `value` in messages.
fn reseal(value: &mut Value, keys: &MasterKeys, path: &str, tally: &mut Tally) {
    if is_envelope(value) {
        if crypto::envelope_key_id(value) == Some(keys.newest_id()) {
            tally.current += 1;
            return;
        }
        match keys
            .decrypt(value)
            .and_then(|secret| keys.encrypt(secret.expose()))
        {
            Ok(sealed) => {
                *value = sealed;
                tally.rotated += 1;
            }
            Err(e) => tally.failed.push((path.to_string(), e)),
        }
        return;
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                reseal(v, keys, &format!("{path}.{k}"), tally);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                reseal(v, keys, &format!("{path}[{i}]"), tally);
            }
        }
        _ => {}
    }
}

/// Adds a row's tally to the report.
fn record(report: &mut RotateReport, table: &str, id: Uuid, tally: Tally) {
    report.rotated += tally.rotated;
    report.already_current += tally.current;
    if tally.failed.is_empty() {
        return;
    }
    report.failed.push(id.to_string());
    for (path, e) in tally.failed {
        tracing::warn!(table, %id, field = %path, error = %e, "cannot re-encrypt envelope");
        report.errors.push(format!("{table} {id} {path}: {e}"));
    }
}

/// `wharf secrets rotate`: re-encrypts every provider credential envelope
/// (`provider_api_keys.envelope`) and every envelope nested in MCP server settings
/// (`mcp_servers.env`, `mcp_servers.auth_config`) under the newest master key of `keys`.
/// Envelopes already under it are left alone; an envelope that cannot be opened (unknown key
/// id, wrong key material, modified or malformed envelope) is reported in
/// [`RotateReport::failed`] and left as it is, and the others are still rotated. One
/// transaction: a database error rolls everything back.
pub async fn rotate_envelopes(
    pool: &PgPool,
    keys: &MasterKeys,
) -> Result<RotateReport, SecretsError> {
    let mut report = RotateReport::default();
    let mut tx = pool.begin().await?;

    let provider_keys: Vec<(Uuid, Value)> =
        sqlx::query_as("SELECT id, envelope FROM provider_api_keys ORDER BY id FOR UPDATE")
            .fetch_all(&mut *tx)
            .await?;
    for (id, mut envelope) in provider_keys {
        let mut tally = Tally::default();
        reseal(&mut envelope, keys, "envelope", &mut tally);
        if tally.rotated > 0 {
            sqlx::query("UPDATE provider_api_keys SET envelope = $2 WHERE id = $1")
                .bind(id)
                .bind(&envelope)
                .execute(&mut *tx)
                .await?;
        }
        record(&mut report, "provider_api_keys", id, tally);
    }

    let servers: Vec<(Uuid, Value, Value)> =
        sqlx::query_as("SELECT id, env, auth_config FROM mcp_servers ORDER BY id FOR UPDATE")
            .fetch_all(&mut *tx)
            .await?;
    for (id, mut env, mut auth_config) in servers {
        let mut tally = Tally::default();
        reseal(&mut env, keys, "env", &mut tally);
        reseal(&mut auth_config, keys, "auth_config", &mut tally);
        if tally.rotated > 0 {
            sqlx::query("UPDATE mcp_servers SET env = $2, auth_config = $3 WHERE id = $1")
                .bind(id)
                .bind(&env)
                .bind(&auth_config)
                .execute(&mut *tx)
                .await?;
        }
        record(&mut report, "mcp_servers", id, tally);
    }

    tx.commit().await?;
    Ok(report)
}

/// The whole `wharf secrets rotate --database-url URL` command: reads the master keys from
/// [`crypto::MASTER_KEYS_ENV`], connects, checks that the schema is up to date, and runs
/// [`rotate_envelopes`].
pub async fn rotate_envelopes_at(database_url: &str) -> Result<RotateReport, SecretsError> {
    let keys = MasterKeys::from_env()?;
    let pool = super::connect(database_url).await?;
    super::check_schema(&pool).await?;
    let report = rotate_envelopes(&pool, &keys).await;
    pool.close().await;
    report
}

/// Masked form of a stored display prefix for the history: at most
/// [`DISPLAY_PREFIX_LEN`] characters of it, then `…`.
pub fn masked_prefix(prefix: &str) -> String {
    let mut out: String = prefix.chars().take(DISPLAY_PREFIX_LEN).collect();
    out.push('…');
    out
}

/// Rotates a virtual key: a new secret (returned, to be shown once; only its hash and display
/// prefix are stored), same id, so grants, budgets and usage stay attached. The replaced hash
/// and masked display prefix are recorded in `api_key_history`. The key's state is kept: a
/// revoked key stays revoked (rotate, then [`unrevoke_api_key`], to reissue a leaked key).
pub async fn rotate_api_key(pool: &PgPool, id: Uuid) -> Result<String, SecretsError> {
    rotate_api_key_by(pool, id, None).await
}

/// [`rotate_api_key`], recording who rotated the key (`rotated_by` in the history).
pub async fn rotate_api_key_by(
    pool: &PgPool,
    id: Uuid,
    rotated_by: Option<&str>,
) -> Result<String, SecretsError> {
    let mut tx = pool.begin().await?;
    let old: Option<(String, String)> =
        sqlx::query_as("SELECT key_prefix, key_hash FROM api_keys WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((old_prefix, old_hash)) = old else {
        return Err(SecretsError::NotFound {
            what: "api key",
            id,
        });
    };
    let (secret, hash) = keys::generate();
    let prefix: String = secret.chars().take(DISPLAY_PREFIX_LEN).collect();
    sqlx::query(
        "UPDATE api_keys SET key_hash = $2, key_prefix = $3, rotated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(hash.to_hex())
    .bind(&prefix)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO api_key_history (api_key_id, previous_prefix, previous_hash, rotated_at, rotated_by)
         VALUES ($1, $2, $3, now(), $4)",
    )
    .bind(id)
    .bind(masked_prefix(&old_prefix))
    .bind(&old_hash)
    .bind(rotated_by)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(secret)
}

/// Makes a revoked key usable again (idempotent: unrevoking an active key changes nothing).
/// Expiry is separate: an expired key stays expired.
pub async fn unrevoke_api_key(pool: &PgPool, id: Uuid) -> Result<(), SecretsError> {
    let done = sqlx::query("UPDATE api_keys SET revoked_at = NULL WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(SecretsError::NotFound {
            what: "api key",
            id,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(spec: &[(&str, u8)]) -> MasterKeys {
        use base64::Engine;
        let s = spec
            .iter()
            .map(|(id, b)| {
                format!(
                    "{id}:{}",
                    base64::engine::general_purpose::STANDARD.encode([*b; 32])
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        MasterKeys::parse(&s).expect("keys")
    }

    #[test]
    fn reseal_walks_nested_values() {
        let old = keys(&[("k1", 1)]);
        let both = keys(&[("k1", 1), ("k2", 2)]);
        let mut v = json!({
            "PLAIN": "not a secret",
            "TOKEN": old.encrypt("tok").expect("encrypt"),
            "list": [old.encrypt("a").expect("encrypt"), both.encrypt("b").expect("encrypt")],
            "bad": {"v": 1, "alg": "chacha20poly1305", "key_id": "k0", "nonce": "", "ciphertext": ""},
        });
        let mut tally = Tally::default();
        reseal(&mut v, &both, "env", &mut tally);
        assert_eq!(tally.rotated, 2);
        assert_eq!(tally.current, 1);
        assert_eq!(tally.failed.len(), 1);
        assert_eq!(tally.failed[0].0, "env.bad");
        assert_eq!(v["PLAIN"], "not a secret");
        assert_eq!(v["TOKEN"]["key_id"], "k2");
        assert_eq!(v["list"][0]["key_id"], "k2");
        assert_eq!(v["bad"]["key_id"], "k0");
        let new_only = keys(&[("k2", 2)]);
        assert_eq!(new_only.decrypt(&v["TOKEN"]).expect("open").expose(), "tok");
        assert_eq!(new_only.decrypt(&v["list"][0]).expect("open").expose(), "a");
    }

    #[test]
    fn masked_prefix_is_short() {
        let (secret, _) = keys::generate();
        let prefix: String = secret.chars().take(DISPLAY_PREFIX_LEN).collect();
        let masked = masked_prefix(&prefix);
        assert!(masked.starts_with(keys::KEY_PREFIX));
        assert!(masked.ends_with('…'));
        assert_eq!(masked.chars().count(), DISPLAY_PREFIX_LEN + 1);
        // Even a full secret stored by mistake is cut down.
        let masked = masked_prefix(&secret);
        assert!(!masked.contains(&secret));
        assert_eq!(masked.chars().count(), DISPLAY_PREFIX_LEN + 1);
        assert_eq!(masked_prefix(""), "…");
    }

    #[test]
    fn report_display_lists_errors() {
        let r = RotateReport {
            rotated: 2,
            already_current: 1,
            failed: vec!["x".into()],
            errors: vec!["provider_api_keys x envelope: bad".into()],
        };
        let s = r.to_string();
        assert!(s.contains("re-encrypted 2"), "{s}");
        assert!(s.contains("1 already"), "{s}");
        assert!(s.contains("provider_api_keys x envelope: bad"), "{s}");
        assert!(!r.is_complete());
    }
}
