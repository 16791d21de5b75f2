//! Virtual keys through the admin API: create (secret shown once), rotate (new secret, same
//! id), revoke/unrevoke, model and MCP grants, rotation history. Every change also drops the
//! key from the key caches of this node at once and of the other nodes through Redis.

use super::resources::{self, fetch, insert_row, strip, validate, API_KEYS};
use super::{json_reply, ApiError, ApiResult, Ctx, Role};
use crate::control::{apply, publish, Invalidation};
use crate::db::load::DISPLAY_PREFIX_LEN;
use crate::respond::Reply;
use serde_json::{json, Value};
use sqlx::PgConnection;
use std::time::Duration;
use uuid::Uuid;

/// Drops keys (by hash, hex) from the caches of every node: this one directly, the others
/// through Redis (the NOTIFY triggers reach them as well).
pub async fn invalidate(state: &crate::control::state::State, hashes: Vec<String>) {
    let inv = Invalidation {
        key_hashes: hashes,
        all_keys: false,
        reload: false,
    };
    apply(state, &inv).await;
    match tokio::time::timeout(Duration::from_secs(2), publish(state, &inv)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "publishing a key invalidation failed"),
        Err(_) => tracing::warn!("publishing a key invalidation timed out"),
    }
}

/// The grant tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Models,
    McpServers,
}

impl Grant {
    fn table(self) -> &'static str {
        match self {
            Grant::Models => "api_key_model_access",
            Grant::McpServers => "api_key_mcp_access",
        }
    }
    fn column(self) -> &'static str {
        match self {
            Grant::Models => "model_id",
            Grant::McpServers => "mcp_server_id",
        }
    }
    fn target(self) -> &'static str {
        match self {
            Grant::Models => "models",
            Grant::McpServers => "mcp_servers",
        }
    }
    /// The body and answer field.
    pub fn field(self) -> &'static str {
        match self {
            Grant::Models => "models",
            Grant::McpServers => "mcp_servers",
        }
    }
}

fn uuids(v: Option<&Value>) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = v
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().and_then(|s| Uuid::parse_str(s).ok()))
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out.dedup();
    out
}

/// Replaces a key's grants of one kind (ids must be rows of the organisation: 400 naming
/// the field otherwise).
async fn set_grants(
    conn: &mut PgConnection,
    org: Uuid,
    key: Uuid,
    grant: Grant,
    ids: &[Uuid],
    by: Uuid,
) -> ApiResult<()> {
    let found: Vec<Uuid> = sqlx::query_scalar(&format!(
        "SELECT id FROM {} WHERE organisation_id = $1 AND id = ANY($2)",
        grant.target()
    ))
    .bind(org)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    if let Some(missing) = ids.iter().find(|i| !found.contains(i)) {
        return Err(ApiError::invalid(
            grant.field(),
            format!("{missing} is not in this organisation"),
        ));
    }
    sqlx::query(&format!(
        "DELETE FROM {} WHERE api_key_id = $1 AND NOT ({} = ANY($2))",
        grant.table(),
        grant.column()
    ))
    .bind(key)
    .bind(ids)
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {} (organisation_id, api_key_id, {}, created_by)
         SELECT $1, $2, g, $4 FROM unnest($3::uuid[]) AS g ON CONFLICT DO NOTHING",
        grant.table(),
        grant.column()
    ))
    .bind(org)
    .bind(key)
    .bind(ids)
    .bind(by)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn grants_of(conn: &mut PgConnection, key: Uuid, grant: Grant) -> ApiResult<Vec<Value>> {
    let (name_col, extra) = match grant {
        Grant::Models => (
            "name",
            "'slug', x.slug, 'model_type', x.model_type, 'enabled', x.enabled",
        ),
        Grant::McpServers => ("name", "'slug', x.slug"),
    };
    let rows: Vec<Value> = sqlx::query_scalar(&format!(
        "SELECT jsonb_build_object('id', x.id, 'name', x.{name_col}, {extra}, 'granted_at', g.created_at)
         FROM {} g JOIN {} x ON x.id = g.{}
         WHERE g.api_key_id = $1 ORDER BY x.{name_col}",
        grant.table(),
        grant.target(),
        grant.column()
    ))
    .bind(key)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}

/// A MANAGER creates keys for the teams they belong to, or their own USER keys.
async fn manager_may_own(
    ctx: &Ctx<'_>,
    conn: &mut PgConnection,
    team: Option<Uuid>,
    user: Option<Uuid>,
) -> ApiResult<()> {
    if ctx.caller.role >= Role::OrgAdmin {
        return Ok(());
    }
    if let Some(team) = team {
        let member: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM team_members WHERE team_id = $1 AND user_id = $2")
                .bind(team)
                .bind(ctx.caller.user_id)
                .fetch_optional(&mut *conn)
                .await?;
        if member.is_some() {
            return Ok(());
        }
        return Err(ApiError {
            field: Some("team_id".into()),
            ..ApiError::forbidden("team_id: a MANAGER creates keys only for their own teams")
        });
    }
    if user == Some(ctx.caller.user_id) {
        return Ok(());
    }
    Err(ApiError {
        field: Some("key_type".into()),
        ..ApiError::forbidden(
            "key_type: a MANAGER creates TEAM keys of their teams or their own USER keys",
        )
    })
}

/// `POST /api-keys`: the answer carries the secret (`key`) once.
pub async fn create(ctx: &Ctx<'_>) -> ApiResult<Reply> {
    let org = ctx.org()?;
    let body = ctx.body_object()?;
    let mut fields = validate(&API_KEYS, &body, true)?;
    let models = uuids(fields.remove("models").as_ref());
    let mcp = uuids(fields.remove("mcp_servers").as_ref());
    let id_of = |k: &str| {
        fields
            .get(k)
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
    };
    let (team, user) = (id_of("team_id"), id_of("user_id"));
    match fields.get("key_type").and_then(Value::as_str) {
        Some("ORGANISATION") if team.is_some() || user.is_some() => {
            return Err(ApiError::invalid(
                if team.is_some() { "team_id" } else { "user_id" },
                "an ORGANISATION key belongs to no team or user",
            ))
        }
        Some("TEAM") if team.is_none() => {
            return Err(ApiError::invalid("team_id", "a TEAM key needs a team_id"))
        }
        Some("TEAM") if user.is_some() => {
            return Err(ApiError::invalid("user_id", "a TEAM key has no user_id"))
        }
        Some("USER") if user.is_none() => {
            return Err(ApiError::invalid("user_id", "a USER key needs a user_id"))
        }
        _ => {}
    }
    let mut tx = ctx.pool.begin().await?;
    manager_may_own(ctx, &mut tx, team, user).await?;
    // Generated exactly as `wharf keygen` and the loader do; only hash and prefix are stored.
    let (secret, hash) = crate::keys::generate();
    let prefix: String = secret.chars().take(DISPLAY_PREFIX_LEN).collect();
    fields.insert("key_hash".into(), json!(hash.to_hex()));
    fields.insert("key_prefix".into(), json!(prefix));
    fields.insert("created_by".into(), json!(ctx.caller.user_id.to_string()));
    let row = insert_row(ctx, &API_KEYS, fields, &mut tx).await?;
    let id = row
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::internal("api key without id"))?;
    set_grants(&mut tx, org, id, Grant::Models, &models, ctx.caller.user_id).await?;
    set_grants(
        &mut tx,
        org,
        id,
        Grant::McpServers,
        &mcp,
        ctx.caller.user_id,
    )
    .await?;
    let m = grants_of(&mut tx, id, Grant::Models).await?;
    let s = grants_of(&mut tx, id, Grant::McpServers).await?;
    tx.commit().await?;
    let mut out = strip(&API_KEYS, row);
    out["key"] = json!(secret);
    out["models"] = json!(m);
    out["mcp_servers"] = json!(s);
    Ok(json_reply(201, &out))
}

fn key_hash(row: &Value) -> Option<String> {
    row.get("key_hash")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// `POST /api-keys/{id}/rotate`: a new secret (`key`, shown once), same id.
pub async fn rotate(ctx: &Ctx<'_>, id: Uuid) -> ApiResult<Reply> {
    let mut conn = ctx.pool.acquire().await?;
    let before = fetch(ctx, &API_KEYS, id, &mut conn).await?;
    drop(conn);
    let secret = crate::db::secrets::rotate_api_key_by(&ctx.pool, id, Some(&ctx.caller.email))
        .await
        .map_err(|e| match e {
            crate::db::secrets::SecretsError::NotFound { .. } => ApiError::not_found("ApiKey"),
            e => ApiError::internal(e),
        })?;
    let mut conn = ctx.pool.acquire().await?;
    let after = fetch(ctx, &API_KEYS, id, &mut conn).await?;
    drop(conn);
    let hashes: Vec<String> = [key_hash(&before), key_hash(&after)]
        .into_iter()
        .flatten()
        .collect();
    invalidate(ctx.state, hashes).await;
    let mut out = strip(&API_KEYS, after);
    out["key"] = json!(secret);
    Ok(json_reply(200, &out))
}

/// `POST /api-keys/{id}/revoke` and `/unrevoke`.
pub async fn set_revoked(ctx: &Ctx<'_>, id: Uuid, revoked: bool) -> ApiResult<Reply> {
    let mut conn = ctx.pool.acquire().await?;
    fetch(ctx, &API_KEYS, id, &mut conn).await?;
    let sql = if revoked {
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 RETURNING to_jsonb(api_keys)"
    } else {
        "UPDATE api_keys SET revoked_at = NULL WHERE id = $1 RETURNING to_jsonb(api_keys)"
    };
    let row: Value = sqlx::query_scalar(sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ApiError::not_found("ApiKey"))?;
    drop(conn);
    invalidate(ctx.state, key_hash(&row).into_iter().collect()).await;
    Ok(json_reply(200, &strip(&API_KEYS, row)))
}

/// `GET /api-keys/{id}/history`: masked prefixes of replaced secrets.
pub async fn history(ctx: &Ctx<'_>, id: Uuid) -> ApiResult<Reply> {
    let mut conn = ctx.pool.acquire().await?;
    fetch(ctx, &API_KEYS, id, &mut conn).await?;
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('id', id, 'previous_prefix', previous_prefix,
                'rotated_at', rotated_at, 'rotated_by', rotated_by)
         FROM api_key_history WHERE api_key_id = $1 ORDER BY rotated_at DESC",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(json_reply(200, &json!({"data": rows, "total": rows.len()})))
}

/// `GET /api-keys/{id}/models` (or `mcp-servers`).
pub async fn get_grants(ctx: &Ctx<'_>, id: Uuid, grant: Grant) -> ApiResult<Reply> {
    let mut conn = ctx.pool.acquire().await?;
    fetch(ctx, &API_KEYS, id, &mut conn).await?;
    let rows = grants_of(&mut conn, id, grant).await?;
    Ok(json_reply(200, &json!({"data": rows, "total": rows.len()})))
}

/// `PUT /api-keys/{id}/models` (or `mcp-servers`): `{"models": [ids]}` replaces the grants.
pub async fn put_grants(ctx: &Ctx<'_>, id: Uuid, grant: Grant) -> ApiResult<Reply> {
    let org = ctx.org()?;
    let body = ctx.body_object()?;
    if let Some(k) = body.keys().find(|k| *k != grant.field()) {
        return Err(ApiError::invalid(k, "unknown field"));
    }
    let v = body
        .get(grant.field())
        .ok_or_else(|| ApiError::invalid(grant.field(), "is required"))?;
    resources::Ty::Uuids
        .check(v)
        .map_err(|p| ApiError::invalid(grant.field(), p))?;
    let ids = uuids(Some(v));
    let mut tx = ctx.pool.begin().await?;
    let row = fetch(ctx, &API_KEYS, id, &mut tx).await?;
    set_grants(&mut tx, org, id, grant, &ids, ctx.caller.user_id).await?;
    let rows = grants_of(&mut tx, id, grant).await?;
    tx.commit().await?;
    invalidate(ctx.state, key_hash(&row).into_iter().collect()).await;
    Ok(json_reply(200, &json!({"data": rows, "total": rows.len()})))
}
