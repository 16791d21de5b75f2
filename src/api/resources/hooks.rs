//! The kind-specific behaviour of resources beyond the column table: secrets made on create,
//! fields checked or derived before a write, rows checked before commit, caches invalidated
//! after. Each resource of the catalog names its [`Hooks`]; the generic CRUD reaches this
//! module only through them.

use super::catalog::RESERVED_SLUGS;
use super::schema::{HookFuture, Hooks, Resource};
use crate::api::sql::ident;
use crate::api::{ApiError, ApiResult, Ctx};
use serde_json::{json, Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

/// Organisations: slugs that name paths of the admin listener are refused.
pub static ORGANISATION: Hooks = Hooks {
    prepare: Some(prepare_organisation),
    ..Hooks::NONE
};

/// Users (platform and organisation): super admins are nobody's organisation users, and a
/// user that is no longer ACTIVE loses its console sessions.
pub static USER: Hooks = Hooks {
    org_scope: Some(" AND t.role <> 'SUPER_ADMIN'"),
    prepare: Some(prepare_user),
    after_update: Some(end_sessions_unless_active),
    ..Hooks::NONE
};

/// Invitations: the token is made on create and shown once.
pub static INVITATION: Hooks = Hooks {
    prepare: Some(prepare_invitation),
    ..Hooks::NONE
};

/// Admin tokens: the token is made on create and shown once.
pub static ADMIN_TOKEN: Hooks = Hooks {
    prepare: Some(prepare_admin_token),
    ..Hooks::NONE
};

/// API keys (created by `api::keys`): a changed or deleted key leaves the key caches.
pub static API_KEY: Hooks = Hooks {
    after_change: Some(invalidate_key),
    ..Hooks::NONE
};

/// Provider keys: the secret is encrypted under the master keys.
pub static PROVIDER_KEY: Hooks = Hooks {
    prepare: Some(prepare_provider_key),
    ..Hooks::NONE
};

/// Budgets and quotas: the scope must name a row of the organisation.
pub static BUDGET: Hooks = Hooks {
    prepare: Some(prepare_budget),
    ..Hooks::NONE
};

/// Filters: built like a `[[filters]]` entry before the row is committed.
pub static FILTER: Hooks = Hooks {
    check_row: Some(check_filter),
    ..Hooks::NONE
};

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn prepare_organisation<'a>(
    _ctx: &'a Ctx<'_>,
    _res: &'a Resource,
    fields: &'a mut Map<String, Value>,
    _creating: bool,
    _conn: &'a mut PgConnection,
) -> HookFuture<'a, ApiResult<Map<String, Value>>> {
    Box::pin(async move {
        if let Some(slug) = fields.get("slug").and_then(Value::as_str) {
            if RESERVED_SLUGS.contains(&slug) {
                return Err(ApiError::invalid(
                    "slug",
                    "is reserved (a path of the admin listener)",
                ));
            }
        }
        Ok(Map::new())
    })
}

fn prepare_user<'a>(
    _ctx: &'a Ctx<'_>,
    res: &'a Resource,
    fields: &'a mut Map<String, Value>,
    _creating: bool,
    _conn: &'a mut PgConnection,
) -> HookFuture<'a, ApiResult<Map<String, Value>>> {
    Box::pin(async move {
        if res.org_column.is_some()
            && fields.get("role").and_then(Value::as_str) == Some("SUPER_ADMIN")
        {
            return Err(ApiError::invalid("role", "must not be SUPER_ADMIN"));
        }
        Ok(Map::new())
    })
}

/// A user that is no longer ACTIVE loses its console sessions, so that reactivating it does
/// not bring an old session back.
fn end_sessions_unless_active<'a>(
    id: Uuid,
    row: &'a Value,
    conn: &'a mut PgConnection,
) -> HookFuture<'a, ApiResult<()>> {
    Box::pin(async move {
        if row.get("status").and_then(Value::as_str) != Some("ACTIVE") {
            sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    })
}

fn prepare_invitation<'a>(
    ctx: &'a Ctx<'_>,
    _res: &'a Resource,
    fields: &'a mut Map<String, Value>,
    creating: bool,
    _conn: &'a mut PgConnection,
) -> HookFuture<'a, ApiResult<Map<String, Value>>> {
    Box::pin(async move {
        let mut extra = Map::new();
        if creating {
            let token = crate::api::bootstrap::random_token("wharf_inv_");
            fields.insert(
                "token_hash".into(),
                json!(crate::keys::KeyHash::of(&token).to_hex()),
            );
            fields.insert("invited_by".into(), json!(ctx.caller.user_id.to_string()));
            if !fields.contains_key("expires_at") {
                let at = time::OffsetDateTime::now_utc() + time::Duration::days(7);
                fields.insert(
                    "expires_at".into(),
                    json!(at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()),
                );
            }
            extra.insert("token".into(), json!(token));
        }
        Ok(extra)
    })
}

fn prepare_admin_token<'a>(
    _ctx: &'a Ctx<'_>,
    _res: &'a Resource,
    fields: &'a mut Map<String, Value>,
    creating: bool,
    _conn: &'a mut PgConnection,
) -> HookFuture<'a, ApiResult<Map<String, Value>>> {
    Box::pin(async move {
        let mut extra = Map::new();
        if creating {
            let token = crate::api::bootstrap::random_token(crate::api::bootstrap::TOKEN_PREFIX);
            fields.insert(
                "token_hash".into(),
                json!(crate::keys::KeyHash::of(&token).to_hex()),
            );
            fields.insert(
                "token_prefix".into(),
                json!(crate::api::bootstrap::display_prefix(&token)),
            );
            extra.insert("token".into(), json!(token));
        }
        Ok(extra)
    })
}

fn prepare_provider_key<'a>(
    ctx: &'a Ctx<'_>,
    _res: &'a Resource,
    fields: &'a mut Map<String, Value>,
    creating: bool,
    _conn: &'a mut PgConnection,
) -> HookFuture<'a, ApiResult<Map<String, Value>>> {
    Box::pin(async move {
        if let Some(secret) = fields.remove("secret") {
            let secret = secret.as_str().unwrap_or_default().to_string();
            let keys = &ctx
                .state
                .db
                .as_ref()
                .ok_or_else(|| ApiError::internal("no database mode"))?
                .master_keys;
            let envelope = keys.encrypt(&secret).map_err(ApiError::internal)?;
            fields.insert("envelope".into(), envelope);
            fields.insert("preview".into(), json!(crate::db::crypto::preview(&secret)));
            if !creating {
                fields.insert("rotated_at".into(), json!(now_rfc3339()));
            }
        }
        match fields.get("status").and_then(Value::as_str) {
            Some("REVOKED") => {
                fields.insert("revoked_at".into(), json!(now_rfc3339()));
            }
            Some(_) => {
                fields.insert("revoked_at".into(), Value::Null);
            }
            None => {}
        }
        Ok(Map::new())
    })
}

fn prepare_budget<'a>(
    ctx: &'a Ctx<'_>,
    _res: &'a Resource,
    fields: &'a mut Map<String, Value>,
    creating: bool,
    conn: &'a mut PgConnection,
) -> HookFuture<'a, ApiResult<Map<String, Value>>> {
    Box::pin(async move {
        if creating {
            let org = ctx.org()?;
            let scope = fields
                .get("scope")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let scope_id = fields
                .get("scope_id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok());
            let table = match scope.as_str() {
                "ORG" => {
                    if scope_id.is_some_and(|s| s != org) {
                        return Err(ApiError::invalid(
                            "scope_id",
                            "an ORG scope is the organisation itself",
                        ));
                    }
                    fields.insert("scope_id".into(), json!(org.to_string()));
                    None
                }
                "TEAM" => Some("teams"),
                "USER" => Some("users"),
                _ => Some("api_keys"),
            };
            if let Some(table) = table {
                let Some(sid) = scope_id else {
                    return Err(ApiError::invalid("scope_id", "is required for this scope"));
                };
                let found: Option<i32> = sqlx::query_scalar(&format!(
                    "SELECT 1 FROM {} WHERE id = $1 AND organisation_id = $2",
                    ident(table)
                ))
                .bind(sid)
                .bind(org)
                .fetch_optional(&mut *conn)
                .await?;
                if found.is_none() {
                    return Err(ApiError::invalid(
                        "scope_id",
                        format!("no such {scope} in this organisation"),
                    ));
                }
            }
        }
        Ok(Map::new())
    })
}

/// The gateway builds the row the way it builds `[[filters]]`: a filter it could not load
/// (unknown setting, script that does not compile) is refused here, not at the next catalog
/// refresh.
fn check_filter(row: &Value) -> ApiResult<()> {
    let text = |k: &str| row[k].as_str().map(str::to_string);
    let strings = |k: &str| -> Vec<String> {
        row[k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let parsed = crate::db::load::FilterRow {
        id: Uuid::nil(),
        organisation_id: None,
        organisation_slug: None,
        name: text("name").unwrap_or_default(),
        kind: text("kind").unwrap_or_default(),
        script: text("script"),
        position: row["position"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0),
        on_error: text("on_error").unwrap_or_default(),
        read_only: row["read_only"].as_bool().unwrap_or(false),
        phases: row["phases"].is_array().then(|| strings("phases")),
        scope_keys: strings("scope_keys"),
        scope_models: strings("scope_models"),
        settings: row["settings"].clone(),
    };
    let raw = crate::filters::config::from_db_rows(&[parsed])
        .map_err(|e| ApiError::invalid("filter", e.join("; ")))?;
    let mut errs = Vec::new();
    let _ = crate::filters::build(&raw, &mut errs);
    match errs.first() {
        None => Ok(()),
        Some(_) => Err(ApiError::invalid("filter", errs.join("; "))),
    }
}

/// A changed or deleted key leaves this node's key cache at once and the other nodes' through
/// Redis.
fn invalidate_key<'a>(ctx: &'a Ctx<'_>, row: &'a Value) -> HookFuture<'a, ()> {
    Box::pin(async move {
        if let Some(h) = row.get("key_hash").and_then(Value::as_str) {
            crate::api::keys::invalidate(ctx.state, vec![h.to_string()]).await;
        }
    })
}
