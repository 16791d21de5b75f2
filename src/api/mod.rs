//! The admin API (SPEC §1.3): JSON over HTTP on the admin listener, Postgres as the store.
//!
//! * `/api/admin/*`: SUPER_ADMIN only (organisations, every user, admin tokens, and the
//!   teams, providers, models, MCP servers, api keys, budgets and quotas of every organisation
//!   as read-only lists: [`resources::PLATFORM_LISTS`]).
//! * `/api/organisations/{organisationId}/*`: one organisation's rows (teams, members, users,
//!   invitations, api keys and their grants, providers, provider keys, models, MCP servers,
//!   budgets, quotas, usage, invoices).
//! * `GET /api/openapi.json`: the OpenAPI 3.1 document, generated from [`routes::routes`], the
//!   same table the router matches against.
//!
//! Callers authenticate with `Authorization: Bearer <admin token>`: tokens belong to a `users`
//! row (migration 0007, only the SHA-256 is stored) and act with that user's role. `wharf admin
//! bootstrap` creates the first SUPER_ADMIN and its token ([`bootstrap`]).
//!
//! # Access matrix
//!
//! | resource | SUPER_ADMIN | ORG_ADMIN (own org) | MANAGER (own org) | USER (own org) |
//! |---|---|---|---|---|
//! | `/api/admin/*` (organisations, all users, admin tokens, cross-organisation lists) | all | — | — | — |
//! | organisation itself | read, update | read, update | read | read id, name, slug |
//! | users | all | all (SUPER_ADMIN users are invisible here) | read | read self |
//! | teams | all | all | read + update the teams they belong to | — |
//! | team members | all | all | manage members of their teams | — |
//! | invitations | all | all | — | — |
//! | api keys (+ grants, rotate, revoke) | all | all | keys of their teams and their own: all | read their own |
//! | providers, models (+ deployments), filters, MCP servers | all | all | read | — |
//! | provider keys | all | all | — | — |
//! | budgets, quotas | all | all | read | — |
//! | current windows (`…/usage`, `/usage/limits`), balance top-ups | all | all | read | — |
//! | admin tokens of the organisation's users | all | all | — | — |
//! | usage records and rollups | all | all | rows of their teams and their own | their own rows |
//! | invoices | all | all | rows of their teams and their own | — |
//!
//! "—" answers 403 `forbidden`. A caller of another organisation (and any id not visible to
//! the caller) gets 404 `not_found`, never 403, so existence does not leak.
//!
//! Lists take `limit` (1–500, default 50), `offset`, equality filters of their columns and `q`:
//! a case-insensitive search of the rows' text fields (never of hidden ones).
//!
//! Errors: `{"error":{"code","message","type","field"?}}`; validation errors are 400
//! `invalid_request` naming the `field`.
//!
//! Cache invalidation: every configuration table has NOTIFY triggers (migration 0005), so
//! each write reaches every gateway node within a second; key revocation, rotation and grant
//! changes also go through [`crate::control::apply`] here and [`crate::control::publish`] to
//! the other nodes, so the key cache drops the entry at once.

pub mod auth;
pub mod bootstrap;
pub mod csv;
pub mod keys;
pub mod limits;
pub mod openapi;
pub mod resources;
pub mod routes;
pub mod sql;
pub mod usage;

use crate::control::state::State;
use crate::error::{ErrorCode, GatewayError};
use crate::respond::Reply;
use bytes::Bytes;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;

/// Largest request body the admin API reads.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A user's role (SPEC §1.3), weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    User,
    Manager,
    OrgAdmin,
    SuperAdmin,
}

impl Role {
    /// From the `user_role` enum.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "USER" => Role::User,
            "MANAGER" => Role::Manager,
            "ORG_ADMIN" => Role::OrgAdmin,
            "SUPER_ADMIN" => Role::SuperAdmin,
            _ => return None,
        })
    }

    /// The `user_role` enum value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "USER",
            Role::Manager => "MANAGER",
            Role::OrgAdmin => "ORG_ADMIN",
            Role::SuperAdmin => "SUPER_ADMIN",
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: Uuid,
    pub email: String,
    pub role: Role,
    pub organisation_id: Option<Uuid>,
    pub token_id: Uuid,
}

/// An admin API error: a SPEC §3 code, a message and, for validation errors, the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 400 naming the field: `"<field>: <problem>"`.
    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> ApiError {
        ApiError {
            code: ErrorCode::InvalidRequest,
            message: format!("{field}: {problem}"),
            field: Some(field.to_string()),
        }
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Forbidden, message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            ErrorCode::Unauthorized,
            "an admin token is required: Authorization: Bearer <token>",
        )
    }

    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "admin API internal error");
        ApiError::new(ErrorCode::InternalError, "internal error")
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The JSON reply: SPEC §3 shape, plus `field` for validation errors.
    pub fn reply(&self) -> Reply {
        let mut e = GatewayError::new(self.code, self.message.clone());
        if let Some(f) = &self.field {
            e.extra.push(("field", json!(f)));
        }
        crate::respond::error(&e)
    }
}

/// The field a Postgres constraint error is about, from its detail
/// (`Key (organisation_id, name)=(…) already exists.`) or its constraint name
/// (`teams_name_check`).
fn db_error_field(e: &dyn sqlx::error::DatabaseError, table: Option<&str>) -> Option<String> {
    let pg = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
    if let Some(detail) = pg.and_then(|p| p.detail()) {
        if let Some(rest) = detail.strip_prefix("Key (") {
            if let Some(end) = rest.find(")=") {
                let cols: Vec<&str> = rest[..end].split(',').map(str::trim).collect();
                if let Some(c) = cols
                    .iter()
                    .rev()
                    .find(|c| **c != "organisation_id")
                    .or(cols.first())
                {
                    return Some(c.to_string());
                }
            }
        }
    }
    if let Some(col) = pg.and_then(|p| p.column()) {
        return Some(col.to_string());
    }
    let constraint = e.constraint()?;
    let t = table.or(pg.and_then(|p| p.table()))?;
    let inner = constraint.strip_prefix(t)?.strip_prefix('_')?;
    let inner = inner
        .strip_suffix("_check")
        .or_else(|| inner.strip_suffix("_key"))
        .or_else(|| inner.strip_suffix("_fkey"))?;
    Some(inner.to_string())
}

/// Maps a database error to an API error (constraint violations name the field).
pub fn db_error(e: sqlx::Error) -> ApiError {
    if let sqlx::Error::Database(d) = &e {
        let field = db_error_field(d.as_ref(), None);
        let code = d.code().map(|c| c.to_string()).unwrap_or_default();
        let named = |code: ErrorCode, problem: &str| {
            let f = field.clone().unwrap_or_else(|| "body".to_string());
            ApiError {
                code,
                message: format!("{f}: {problem}"),
                field: Some(f),
            }
        };
        match code.as_str() {
            "23505" => return named(ErrorCode::Conflict, "already exists"),
            "23503" => {
                if d.message().contains("still referenced")
                    || d.message().contains("update or delete")
                {
                    return ApiError::new(
                        ErrorCode::Conflict,
                        "the row is still referenced by other rows",
                    );
                }
                return named(
                    ErrorCode::InvalidRequest,
                    "refers to a row that does not exist",
                );
            }
            "23514" | "23502" => return named(ErrorCode::InvalidRequest, "violates a constraint"),
            "22P02" | "22007" | "22008" | "22003" => {
                return ApiError::new(ErrorCode::InvalidRequest, format!("body: {}", d.message()))
            }
            _ => {}
        }
    }
    if matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) {
        return ApiError::new(
            ErrorCode::DependencyUnavailable,
            "the database is unavailable",
        );
    }
    ApiError::internal(e)
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        db_error(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON reply.
pub fn json_reply(status: u16, v: &Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: Bytes::from(v.to_string()),
    }
}

/// A parsed request.
pub struct Request {
    pub method: http::Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub bearer: Option<String>,
    pub body: Bytes,
}

impl Request {
    /// The last value of a query parameter.
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Everything a handler needs.
pub struct Ctx<'a> {
    pub state: &'a State,
    pub pool: PgPool,
    pub caller: Caller,
    /// The organisation of an org-scoped route (checked visible to the caller).
    pub org: Option<Uuid>,
    pub params: HashMap<&'static str, String>,
    pub req: Request,
}

impl Ctx<'_> {
    /// A path parameter as a uuid (404 when it is not one: nothing has that id).
    pub fn id(&self, name: &str, what: &str) -> ApiResult<Uuid> {
        self.params
            .get(name)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| ApiError::not_found(what))
    }

    /// The organisation of an org-scoped route.
    pub fn org(&self) -> ApiResult<Uuid> {
        self.org
            .ok_or_else(|| ApiError::internal("org-scoped handler without organisation"))
    }

    /// The JSON object body.
    pub fn body_object(&self) -> ApiResult<serde_json::Map<String, Value>> {
        if self.req.body.is_empty() {
            return Err(ApiError::invalid("body", "a JSON object is required"));
        }
        match serde_json::from_slice::<Value>(&self.req.body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ApiError::invalid("body", "must be a JSON object")),
            Err(e) => Err(ApiError::invalid("body", format!("invalid JSON: {e}"))),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hexval = |c: u8| (c as char).to_digit(16);
                match (hexval(b[i + 1]), hexval(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits a query string into decoded pairs.
pub fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

async fn read_request(http: &mut ServerSession) -> ApiResult<Request> {
    let h = http.req_header();
    let method = h.method.clone();
    let path = h.uri.path().to_string();
    let query = parse_query(h.uri.query());
    let bearer = crate::keys::bearer(&h.headers).map(str::to_string);
    let mut body = Vec::new();
    loop {
        match http.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY_BYTES {
                    return Err(ApiError::new(
                        ErrorCode::PayloadTooLarge,
                        format!("the body is larger than {MAX_BODY_BYTES} bytes"),
                    ));
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequestBody,
                    format!("cannot read the body: {e}"),
                ))
            }
        }
    }
    Ok(Request {
        method,
        path,
        query,
        bearer,
        body: Bytes::from(body),
    })
}

/// Whether `/api/...` path belongs to this module (everything but `/api/status`).
pub fn handles(path: &str) -> bool {
    path.starts_with("/api/") && path != "/api/status"
}

/// Answers one admin API request.
pub async fn handle(state: &State, http: &mut ServerSession) -> Reply {
    let req = match read_request(http).await {
        Ok(r) => r,
        Err(e) => return e.reply(),
    };
    match serve(state, req).await {
        Ok(r) => r,
        Err(e) => e.reply(),
    }
}

/// The database pool of the admin API (503 outside database mode or before it connects).
pub fn pool(state: &State) -> ApiResult<PgPool> {
    state
        .db
        .as_ref()
        .and_then(|db| db.pool.load_full())
        .map(|p| (*p).clone())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::DependencyUnavailable,
                "the admin API needs database mode and a reachable database",
            )
        })
}

async fn serve(state: &State, req: Request) -> ApiResult<Reply> {
    let (route, params) = routes::find(&req.method, &req.path)?;
    if matches!(route.op, routes::Op::OpenApi) {
        return Ok(json_reply(200, openapi::document()));
    }
    let pool = pool(state)?;
    if route.access == resources::Access::Public {
        return routes::dispatch_public(&pool, route, &params, &req.body).await;
    }
    let token = req.bearer.clone().ok_or_else(ApiError::unauthorized)?;
    let caller = bootstrap::authenticate(&pool, &token)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    serve_as(state, pool, caller, route, params, req).await
}

/// Runs a matched route for an authenticated caller: organisation visibility, role, then the
/// operation. The admin console calls this (through [`call`]) with the caller of its session,
/// so both enforce exactly the same rules.
async fn serve_as(
    state: &State,
    pool: PgPool,
    caller: Caller,
    route: &'static routes::Route,
    params: HashMap<&'static str, String>,
    req: Request,
) -> ApiResult<Reply> {
    let org = match params.get("organisationId") {
        None => None,
        Some(raw) => {
            let not_found = || ApiError::not_found("organisation");
            let id = Uuid::parse_str(raw).map_err(|_| not_found())?;
            if caller.role != Role::SuperAdmin && caller.organisation_id != Some(id) {
                return Err(not_found());
            }
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM organisations WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&pool)
                    .await?;
            exists.ok_or_else(not_found)?;
            Some(id)
        }
    };
    if !route.access.allows(caller.role) {
        return Err(ApiError::forbidden(format!(
            "{} may not {}",
            caller.role.as_str(),
            route.summary.to_lowercase()
        )));
    }
    let ctx = Ctx {
        state,
        pool,
        caller,
        org,
        params,
        req,
    };
    routes::dispatch(&ctx, route).await
}

/// One admin API operation in process, as `caller`: the same routing, visibility and role
/// checks as a request with that user's token. `path` is an `/api/…` path; `body` a JSON
/// value or nothing.
pub async fn call(
    state: &State,
    caller: &Caller,
    method: http::Method,
    path: &str,
    query: Vec<(String, String)>,
    body: Option<&Value>,
) -> ApiResult<Reply> {
    let (route, params) = routes::find(&method, path)?;
    if matches!(route.op, routes::Op::OpenApi) {
        return Ok(json_reply(200, openapi::document()));
    }
    let pool = pool(state)?;
    let req = Request {
        method,
        path: path.to_string(),
        query,
        bearer: None,
        body: body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
    };
    if route.access == resources::Access::Public {
        return routes::dispatch_public(&pool, route, &params, &req.body).await;
    }
    serve_as(state, pool, caller.clone(), route, params, req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let q = parse_query(Some("a=1&b=x%20y&c=a+b&d&e=%zz"));
        assert_eq!(
            q,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "a b".into()),
                ("d".into(), String::new()),
                ("e".into(), "%zz".into()),
            ]
        );
        assert_eq!(
            parse_query(Some("t=2026-01-01T00%3A00%3A00%2B00%3A00"))[0].1,
            "2026-01-01T00:00:00+00:00"
        );
    }

    #[test]
    fn roles_order() {
        assert!(Role::SuperAdmin > Role::OrgAdmin);
        assert!(Role::OrgAdmin > Role::Manager);
        assert!(Role::Manager > Role::User);
        for r in ["USER", "MANAGER", "ORG_ADMIN", "SUPER_ADMIN"] {
            assert_eq!(Role::parse(r).map(Role::as_str), Some(r));
        }
    }
}
