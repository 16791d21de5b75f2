//! Virtual keys: one key by hash with its grants (the hot path's cache miss).

use super::rows::key_type_from_db;
use super::{invalid, LoadError};
use crate::config::VirtualKey;
use crate::keys::{self, KeyHash};
use crate::types::routing_policy::RoutingPolicy;
use sqlx::PgPool;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// Length of the stored display prefix: [`keys::KEY_PREFIX`] plus 4 characters of the secret.
pub const DISPLAY_PREFIX_LEN: usize = keys::KEY_PREFIX.len() + 4;

#[derive(Debug, sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    organisation_id: Uuid,
    team_id: Option<Uuid>,
    user_id: Option<Uuid>,
    name: String,
    key_type: String,
    key_prefix: String,
    expires_at: Option<OffsetDateTime>,
    revoked: bool,
    routing_policy: serde_json::Value,
    models: Vec<String>,
    mcp_servers: Vec<String>,
    policies: serde_json::Value,
    team_policies: Option<serde_json::Value>,
    organisation_policies: Option<serde_json::Value>,
}

/// One virtual key by hash, with the names of the models it is granted (`all_models` is
/// false: database keys are granted model by model). `None` when no key has this hash.
/// Expired and revoked keys are returned as such (`expires_at`, `revoked`): deciding is the
/// caller's job, so that it can answer with the right error code.
pub async fn load_key(pool: &PgPool, hash: &KeyHash) -> Result<Option<VirtualKey>, LoadError> {
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT k.id, k.organisation_id, k.team_id, k.user_id, k.name,
                k.key_type::text AS key_type, k.key_prefix, k.expires_at,
                k.revoked_at IS NOT NULL AS revoked, k.routing_policy,
                ARRAY(SELECT m.name
                        FROM api_key_model_access a
                        JOIN models m ON m.id = a.model_id
                       WHERE a.api_key_id = k.id
                       ORDER BY m.name) AS models,
                ARRAY(SELECT a.mcp_server_id::text
                        FROM api_key_mcp_access a
                       WHERE a.api_key_id = k.id) AS mcp_servers,
                k.policies,
                (SELECT t.policies FROM teams t WHERE t.id = k.team_id) AS team_policies,
                (SELECT o.policies FROM organisations o WHERE o.id = k.organisation_id)
                    AS organisation_policies
           FROM api_keys k
          WHERE k.key_hash = $1",
    )
    .bind(hash.to_hex())
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let kind = key_type_from_db(&r.key_type).ok_or_else(|| {
        invalid(
            "api key",
            vec![format!("key_type: `{}` is not known", r.key_type)],
        )
    })?;
    let policy = |v: Option<&serde_json::Value>, what: &str| match v {
        None => Ok(None),
        Some(v) => crate::types::policy::Policy::from_json(v)
            .map(|p| p.map(Arc::new))
            .map_err(|e| invalid("api key", vec![format!("{what}: {e}")])),
    };
    let policies = crate::types::policy::KeyPolicies {
        key: policy(Some(&r.policies), "policies")?,
        team: policy(r.team_policies.as_ref(), "team policies")?,
        organisation: policy(r.organisation_policies.as_ref(), "organisation policies")?,
    };
    Ok(Some(VirtualKey {
        id: r.id.to_string(),
        name: Some(r.name),
        prefix: Some(r.key_prefix),
        kind,
        organisation_id: r.organisation_id.to_string(),
        team_id: r.team_id.map(|t| t.to_string()),
        user_id: r.user_id.map(|u| u.to_string()),
        expires_at: r.expires_at.map(OffsetDateTime::unix_timestamp),
        revoked: r.revoked,
        all_models: false,
        models: r.models.into_iter().collect(),
        routing: match RoutingPolicy::parse(&r.routing_policy, "routing_policy") {
            Ok(p) if p.is_empty() => None,
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::warn!(key = %r.id, error = %e, "api key routing policy ignored");
                None
            }
        },
        policies,
        mcp_servers: r.mcp_servers.into_iter().collect(),
    }))
}
