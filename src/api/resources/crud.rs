//! The generic list, get, create, update and delete over a [`Resource`]: validation against
//! the columns, visibility by role, and the SQL.

use super::schema::{Resource, Rows};
use crate::api::sql::{ident, Sql};
use crate::api::{json_reply, ApiError, ApiResult, Ctx, Role};
use crate::respond::Reply;
use serde_json::{json, Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

/// Checks a body against the columns: unknown fields, types, required fields. Returns the
/// checked fields (virtual ones included).
pub fn validate(
    res: &Resource,
    body: &Map<String, Value>,
    creating: bool,
) -> ApiResult<Map<String, Value>> {
    let mut out = Map::new();
    for (k, v) in body {
        let Some(col) = res.columns.iter().find(|c| c.name == k) else {
            return Err(ApiError::invalid(k, "unknown field"));
        };
        let writable = if creating { col.create } else { col.update };
        if !writable {
            return Err(ApiError::invalid(
                k,
                if creating {
                    "cannot be set on create"
                } else {
                    "cannot be changed"
                },
            ));
        }
        if v.is_null() {
            if !col.nullable {
                return Err(ApiError::invalid(k, "must not be null"));
            }
        } else {
            col.ty.check(v).map_err(|p| ApiError::invalid(k, p))?;
        }
        out.insert(k.clone(), v.clone());
    }
    if creating {
        for col in res.columns.iter().filter(|c| c.required) {
            if !out.contains_key(col.name) {
                return Err(ApiError::invalid(col.name, "is required"));
            }
        }
    } else if out.is_empty() {
        return Err(ApiError::invalid("body", "no field to change"));
    }
    Ok(out)
}

/// `SELECT` list of a table alias as one JSON value.
fn row_json(alias: &str) -> String {
    format!("to_jsonb({alias})")
}

/// Removes hidden fields.
pub fn strip(res: &Resource, mut row: Value) -> Value {
    if let Some(m) = row.as_object_mut() {
        for h in res.hidden {
            m.remove(*h);
        }
    }
    row
}

/// `(SELECT team_id FROM team_members WHERE user_id = $n)`.
fn my_teams(q: &mut Sql, user: Uuid) -> String {
    let p = q.arg(user.to_string());
    format!("(SELECT tm.team_id FROM team_members tm WHERE tm.user_id = {p}::uuid)")
}

/// The visibility condition of `rows` for the caller (empty for admins).
pub fn visibility(rows: Rows, role: Role, user: Uuid, q: &mut Sql, alias: &str) -> String {
    if role >= Role::OrgAdmin {
        return String::new();
    }
    match rows {
        Rows::All => String::new(),
        Rows::Teams(col) => {
            let teams = my_teams(q, user);
            format!(" AND {alias}.{} IN {teams}", ident(col))
        }
        Rows::Owner => {
            let me = q.arg(user.to_string());
            if role == Role::Manager {
                let teams = my_teams(q, user);
                format!(" AND ({alias}.team_id IN {teams} OR {alias}.user_id = {me}::uuid)")
            } else {
                format!(" AND {alias}.user_id = {me}::uuid")
            }
        }
        Rows::SelfUser => {
            if role == Role::Manager {
                String::new()
            } else {
                let me = q.arg(user.to_string());
                format!(" AND {alias}.id = {me}::uuid")
            }
        }
    }
}

/// Which rows a list spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The route's organisation (and parent).
    Route,
    /// Every organisation (`/api/admin/…` platform lists, SUPER_ADMIN only).
    Platform,
}

/// ` WHERE …` for rows of `res` visible to the caller under this route (organisation, parent,
/// visibility, and the id when given).
fn where_clause(ctx: &Ctx<'_>, res: &Resource, q: &mut Sql, id: Option<Uuid>) -> ApiResult<()> {
    where_in(ctx, res, q, id, Span::Route)
}

fn where_in(
    ctx: &Ctx<'_>,
    res: &Resource,
    q: &mut Sql,
    id: Option<Uuid>,
    span: Span,
) -> ApiResult<()> {
    q.push(" WHERE true");
    if let (Some(col), Span::Route) = (res.org_column, span) {
        let p = q.arg(ctx.org()?.to_string());
        q.push(&format!(" AND t.{} = {p}::uuid", ident(col)));
        // Super admins are nobody's organisation users: org admins neither see nor change them.
        if let Some(cond) = res.hooks.org_scope {
            q.push(cond);
        }
    }
    if let Some(parent) = &res.parent {
        let pid = ctx.id(parent.param, parent.resource.schema)?;
        let p = q.arg(pid.to_string());
        q.push(&format!(" AND t.{} = {p}::uuid", ident(parent.column)));
    }
    let vis = visibility(res.rows, ctx.caller.role, ctx.caller.user_id, q, "t");
    q.push(&vis);
    if let Some(id) = id {
        let p = q.arg(id.to_string());
        q.push(&format!(" AND t.id = {p}::uuid"));
    }
    Ok(())
}

/// 404 unless the route's parent row exists and is visible.
async fn check_parent(ctx: &Ctx<'_>, res: &Resource, conn: &mut PgConnection) -> ApiResult<()> {
    let Some(parent) = &res.parent else {
        return Ok(());
    };
    let pid = ctx.id(parent.param, parent.resource.schema)?;
    fetch(ctx, parent.resource, pid, conn).await.map(|_| ())
}

/// One visible row (full, hidden fields included) or 404.
pub async fn fetch(
    ctx: &Ctx<'_>,
    res: &Resource,
    id: Uuid,
    conn: &mut PgConnection,
) -> ApiResult<Value> {
    let mut q = Sql::new(format!(
        "SELECT {} FROM {} t",
        row_json("t"),
        ident(res.table)
    ));
    where_clause(ctx, res, &mut q, Some(id))?;
    q.json_row(conn)
        .await?
        .ok_or_else(|| ApiError::not_found(res.schema))
}

/// `limit` and `offset` of a list request.
pub fn page(ctx: &Ctx<'_>) -> ApiResult<(i64, i64)> {
    let limit = match ctx.req.q("limit") {
        None => 50,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    "must be an integer from 1 to 500",
                ))
            }
        },
    };
    let offset = match ctx.req.q("offset") {
        None => 0,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                return Err(ApiError::invalid(
                    "offset",
                    "must be a non-negative integer",
                ))
            }
        },
    };
    Ok((limit, offset))
}

/// ` AND …` for a `?q=` search: rows with a top-level string field (hidden fields left out)
/// that contains the needle, case-insensitively; on platform lists the organisation's slug
/// and name count as well. Blank needles match everything.
fn search_clause(res: &Resource, q: &mut Sql, needle: &str, span: Span) -> String {
    let needle = needle.trim();
    if needle.is_empty() {
        return String::new();
    }
    let n = q.arg(needle.to_lowercase());
    let hidden = q.arg(format!("{{{}}}", res.hidden.join(",")));
    let org = match span {
        Span::Route => String::new(),
        Span::Platform => {
            format!(" OR strpos(lower(o.slug), {n}) > 0 OR strpos(lower(o.name), {n}) > 0")
        }
    };
    format!(
        " AND (EXISTS (SELECT 1 FROM jsonb_each(to_jsonb(t) - {hidden}::text[]) AS f
                 WHERE jsonb_typeof(f.value) = 'string'
                   AND strpos(lower(f.value #>> '{{}}'), {n}) > 0){org})"
    )
}

/// `GET collection`: `{"data": [...], "total", "limit", "offset"}`.
pub async fn list(ctx: &Ctx<'_>, res: &Resource) -> ApiResult<Reply> {
    list_in(ctx, res, Span::Route).await
}

/// `GET /api/admin/{segment}` ([`PLATFORM_LISTS`](super::PLATFORM_LISTS)): rows of every organisation, each with
/// its organisation's slug and name.
pub async fn list_all(ctx: &Ctx<'_>, res: &Resource) -> ApiResult<Reply> {
    if res.org_column.is_none() || res.parent.is_some() || ctx.caller.role != Role::SuperAdmin {
        return Err(ApiError::forbidden(
            "only SUPER_ADMIN lists every organisation",
        ));
    }
    list_in(ctx, res, Span::Platform).await
}

async fn list_in(ctx: &Ctx<'_>, res: &Resource, span: Span) -> ApiResult<Reply> {
    let mut conn = ctx.pool.acquire().await?;
    check_parent(ctx, res, &mut conn).await?;
    let (limit, offset) = page(ctx)?;
    let mut q = Sql::new(String::new());
    where_in(ctx, res, &mut q, None, span)?;
    let by_org = span == Span::Platform;
    for (k, v) in &ctx.req.query {
        if k == "limit" || k == "offset" {
            continue;
        }
        if k == "q" {
            let cond = search_clause(res, &mut q, v, span);
            q.push(&cond);
            continue;
        }
        let known = res.filters.contains(&k.as_str()) || (by_org && k == "organisation_id");
        if !known {
            let mut names: Vec<&str> = res.filters.to_vec();
            if by_org {
                names.push("organisation_id");
            }
            return Err(ApiError::invalid(
                k,
                format!("unknown filter (filters: {}, and q)", names.join(", ")),
            ));
        }
        let p = q.arg(v.clone());
        q.push(&format!(" AND t.{}::text = {p}", ident(k)));
    }
    let (from, row) = match (span, res.org_column) {
        (Span::Platform, Some(col)) => (
            format!(
                " FROM {} t JOIN organisations o ON o.id = t.{}",
                ident(res.table),
                ident(col)
            ),
            format!(
                "{} || jsonb_build_object('organisation_slug', o.slug, 'organisation_name', o.name)",
                row_json("t")
            ),
        ),
        _ => (format!(" FROM {} t", ident(res.table)), row_json("t")),
    };
    let total = q
        .with_text(format!("SELECT count(*){from}{}", q.text))
        .count(&mut conn)
        .await?;
    let lp = q.arg(limit.to_string());
    let op = q.arg(offset.to_string());
    let rows = q
        .with_text(format!(
            "SELECT {row}{from}{} ORDER BY t.created_at, t.id LIMIT {lp}::bigint OFFSET {op}::bigint",
            q.text
        ))
        .json_rows(&mut conn)
        .await?;
    let data: Vec<Value> = rows.into_iter().map(|r| strip(res, r)).collect();
    Ok(json_reply(
        200,
        &json!({"data": data, "total": total, "limit": limit, "offset": offset}),
    ))
}

/// `GET item`.
pub async fn get(ctx: &Ctx<'_>, res: &Resource, id: Uuid) -> ApiResult<Reply> {
    let mut conn = ctx.pool.acquire().await?;
    check_parent(ctx, res, &mut conn).await?;
    let row = fetch(ctx, res, id, &mut conn).await?;
    Ok(json_reply(200, &strip(res, row)))
}

/// Inserts checked fields (organisation and parent added from the route). Returns the full
/// row.
pub async fn insert_row(
    ctx: &Ctx<'_>,
    res: &Resource,
    mut fields: Map<String, Value>,
    conn: &mut PgConnection,
) -> ApiResult<Value> {
    if let Some(col) = res.org_column {
        fields.insert(col.to_string(), json!(ctx.org()?.to_string()));
    }
    if let Some(parent) = &res.parent {
        let pid = ctx.id(parent.param, parent.resource.schema)?;
        fields.insert(parent.column.to_string(), json!(pid.to_string()));
    }
    let cols: Vec<String> = fields.keys().map(|k| ident(k)).collect();
    let cols = cols.join(", ");
    let table = ident(res.table);
    let mut q = Sql::new(String::new());
    let p = q.arg(Value::Object(fields).to_string());
    q.push(&format!(
        "INSERT INTO {table} AS t ({cols}) SELECT {cols} FROM jsonb_populate_record(NULL::{table}, {p}::jsonb) RETURNING {}",
        row_json("t")
    ));
    q.json_row(conn)
        .await?
        .ok_or_else(|| ApiError::internal("INSERT returned no row"))
}

/// Updates checked fields of a visible row. Returns the full row, or 404.
pub async fn update_row(
    ctx: &Ctx<'_>,
    res: &Resource,
    id: Uuid,
    fields: Map<String, Value>,
    conn: &mut PgConnection,
) -> ApiResult<Value> {
    let set: Vec<String> = fields
        .keys()
        .map(|k| format!("{} = r.{}", ident(k), ident(k)))
        .collect();
    let table = ident(res.table);
    let mut q = Sql::new(String::new());
    let p = q.arg(Value::Object(fields).to_string());
    q.push(&format!(
        "UPDATE {table} AS t SET {} FROM jsonb_populate_record(NULL::{table}, {p}::jsonb) AS r",
        set.join(", ")
    ));
    where_clause(ctx, res, &mut q, Some(id))?;
    q.push(&format!(" RETURNING {}", row_json("t")));
    q.json_row(conn)
        .await?
        .ok_or_else(|| ApiError::not_found(res.schema))
}

/// The resource's [`Hooks::prepare`](super::Hooks::prepare), if any.
async fn prepare(
    ctx: &Ctx<'_>,
    res: &Resource,
    fields: &mut Map<String, Value>,
    creating: bool,
    conn: &mut PgConnection,
) -> ApiResult<Map<String, Value>> {
    match res.hooks.prepare {
        Some(prepare) => prepare(ctx, res, fields, creating, conn).await,
        None => Ok(Map::new()),
    }
}

/// The resource's [`Hooks::check_row`](super::Hooks::check_row), if any.
fn check_row(res: &Resource, row: &Value) -> ApiResult<()> {
    res.hooks.check_row.map_or(Ok(()), |check| check(row))
}

/// The resource's [`Hooks::after_change`](super::Hooks::after_change), if any.
async fn after_change(ctx: &Ctx<'_>, res: &Resource, row: &Value) {
    if let Some(after_change) = res.hooks.after_change {
        after_change(ctx, row).await;
    }
}

/// `POST collection`.
pub async fn create(ctx: &Ctx<'_>, res: &Resource) -> ApiResult<Reply> {
    let body = ctx.body_object()?;
    let mut fields = validate(res, &body, true)?;
    let mut tx = ctx.pool.begin().await?;
    check_parent(ctx, res, &mut tx).await?;
    let extra = prepare(ctx, res, &mut fields, true, &mut tx).await?;
    let row = insert_row(ctx, res, fields, &mut tx).await?;
    check_row(res, &row)?;
    tx.commit().await?;
    let mut out = strip(res, row);
    if let Some(m) = out.as_object_mut() {
        m.extend(extra);
    }
    Ok(json_reply(201, &out))
}

/// `PATCH item`.
pub async fn update(ctx: &Ctx<'_>, res: &Resource, id: Uuid) -> ApiResult<Reply> {
    let body = ctx.body_object()?;
    let mut fields = validate(res, &body, false)?;
    let mut tx = ctx.pool.begin().await?;
    check_parent(ctx, res, &mut tx).await?;
    prepare(ctx, res, &mut fields, false, &mut tx).await?;
    let row = update_row(ctx, res, id, fields, &mut tx).await?;
    check_row(res, &row)?;
    if let Some(after_update) = res.hooks.after_update {
        after_update(id, &row, &mut tx).await?;
    }
    tx.commit().await?;
    after_change(ctx, res, &row).await;
    Ok(json_reply(200, &strip(res, row)))
}

/// `DELETE item`: 204.
pub async fn delete(ctx: &Ctx<'_>, res: &Resource, id: Uuid) -> ApiResult<Reply> {
    let mut conn = ctx.pool.acquire().await?;
    check_parent(ctx, res, &mut conn).await?;
    let mut q = Sql::new(format!("DELETE FROM {} AS t", ident(res.table)));
    where_clause(ctx, res, &mut q, Some(id))?;
    q.push(&format!(" RETURNING {}", row_json("t")));
    let row = q
        .json_row(&mut conn)
        .await?
        .ok_or_else(|| ApiError::not_found(res.schema))?;
    drop(conn);
    after_change(ctx, res, &row).await;
    Ok(Reply {
        status: 204,
        content_type: "application/json",
        body: bytes::Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::{API_KEYS, BUDGETS, MODELS, TEAMS};

    #[test]
    fn validation_names_the_field() {
        let body = json!({"name": " ", "description": null});
        let e = validate(&TEAMS, body.as_object().expect("object"), true).expect_err("blank");
        assert_eq!(e.field.as_deref(), Some("name"));
        assert_eq!(e.message, "name: must not be empty");
        let e = validate(&TEAMS, json!({"nope": 1}).as_object().expect("o"), true)
            .expect_err("unknown");
        assert_eq!(e.field.as_deref(), Some("nope"));
        let e = validate(&TEAMS, json!({}).as_object().expect("o"), true).expect_err("required");
        assert_eq!(e.field.as_deref(), Some("name"));
        let e = validate(
            &API_KEYS,
            json!({"key_type": "TEAM"}).as_object().expect("o"),
            false,
        )
        .expect_err("fixed");
        assert_eq!(e.field.as_deref(), Some("key_type"));
        let e = validate(
            &MODELS,
            json!({"name": "m", "slug": "s", "provider_id": "x"})
                .as_object()
                .expect("o"),
            true,
        )
        .expect_err("uuid");
        assert_eq!(e.field.as_deref(), Some("provider_id"));
        let ok = validate(
            &BUDGETS,
            json!({"scope": "ORG", "amount_nanos": 5, "period": "DAILY", "warning_thresholds": [50, 90]})
                .as_object()
                .expect("o"),
            true,
        )
        .expect("valid");
        assert_eq!(ok.len(), 4);
    }

    #[test]
    fn admins_see_everything_others_are_restricted() {
        let me = Uuid::new_v4();
        let mut q = Sql::new("");
        assert_eq!(visibility(Rows::Owner, Role::OrgAdmin, me, &mut q, "t"), "");
        let m = visibility(Rows::Owner, Role::Manager, me, &mut q, "t");
        assert!(m.contains("team_id IN") && m.contains("user_id ="), "{m}");
        let u = visibility(Rows::Owner, Role::User, me, &mut q, "t");
        assert!(u.contains("user_id =") && !u.contains("team_id"), "{u}");
    }
}
