//! MCP servers from Postgres (`mcp_servers`), into the same [`McpServer`] as the file's.
//!
//! Secrets in `env` and `auth_config` are either plain strings or encrypted envelopes
//! (`{"v","alg","key_id","nonce","ciphertext"}`), opened here with the master keys.
//! `auth_config` by `auth_type`: BEARER `{"token"}`; BASIC `{"username","password"}`;
//! OAUTH2 `{"token_url","client_id","client_secret","scope"?,"audience"?,"client_auth"?}`.
//! A row that does not make a valid server is skipped with a warning (never its secrets).

use super::config::{self, McpPricing, McpServer, OAuth2, ServerSpec, UpstreamAuth};
use crate::config::Secret;
use crate::db::crypto::MasterKeys;
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: Uuid,
    organisation_id: Uuid,
    name: String,
    slug: String,
    transport: String,
    url: Option<String>,
    command: Option<String>,
    args: Vec<String>,
    env: Value,
    auth_type: String,
    auth_config: Value,
    timeout_ms: i32,
    max_sessions: i32,
    idle_timeout_ms: i32,
    allowed_tools: Vec<String>,
    blocked_tools: Vec<String>,
    keywords: Vec<String>,
    price_per_call_nanos: i64,
    price_per_input_byte_nanos: i64,
    price_per_output_byte_nanos: i64,
    policies: Value,
    enabled: bool,
}

/// A secret field: a plain string or an envelope.
fn secret(v: Option<&Value>, keys: &MasterKeys, field: &str) -> Result<Secret, String> {
    match v {
        None | Some(Value::Null) => Err(format!("{field}: missing")),
        Some(Value::String(s)) => Ok(Secret::new(s.clone())),
        Some(env @ Value::Object(_)) => keys
            .decrypt(env)
            .map_err(|e| format!("{field}: cannot decrypt: {e}")),
        Some(_) => Err(format!(
            "{field}: must be a string or an encrypted envelope"
        )),
    }
}

fn text(v: &Value, field: &str) -> Option<String> {
    v.get(field).and_then(Value::as_str).map(str::to_string)
}

fn auth(row: &Row, keys: &MasterKeys) -> Result<UpstreamAuth, String> {
    let c = &row.auth_config;
    Ok(match row.auth_type.as_str() {
        "NONE" => UpstreamAuth::None,
        "BEARER" => UpstreamAuth::Bearer(secret(c.get("token"), keys, "auth_config.token")?),
        "BASIC" => {
            let user = text(c, "username").ok_or("auth_config.username: missing")?;
            let pw = secret(c.get("password"), keys, "auth_config.password")?;
            UpstreamAuth::Basic(config::basic_value(&user, pw.expose()))
        }
        "OAUTH2" => UpstreamAuth::OAuth2(OAuth2 {
            token_url: text(c, "token_url").ok_or("auth_config.token_url: missing")?,
            client_id: text(c, "client_id").ok_or("auth_config.client_id: missing")?,
            client_secret: secret(c.get("client_secret"), keys, "auth_config.client_secret")?,
            scope: text(c, "scope"),
            audience: text(c, "audience"),
            basic_auth: text(c, "client_auth").as_deref() != Some("post"),
        }),
        other => return Err(format!("auth_type: `{other}` is not known")),
    })
}

fn build(row: Row, keys: &MasterKeys) -> Result<McpServer, Vec<String>> {
    let auth = auth(&row, keys).map_err(|e| vec![e])?;
    let mut env = Vec::new();
    if let Value::Object(m) = &row.env {
        for (k, v) in m {
            env.push((
                k.clone(),
                secret(Some(v), keys, &format!("env.{k}")).map_err(|e| vec![e])?,
            ));
        }
    }
    let policy = match crate::governance::policy::Policy::from_json(&row.policies) {
        Ok(p) => p.map(Arc::new),
        Err(e) => return Err(vec![format!("policies: {e}")]),
    };
    let nanos = |v: i64| u64::try_from(v).unwrap_or(0);
    config::build_server(ServerSpec {
        id: row.id.to_string(),
        organisation_id: Some(row.organisation_id.to_string()),
        name: row.name,
        slug: row.slug,
        transport: row.transport,
        url: row.url,
        command: row.command,
        args: row.args,
        env,
        auth,
        timeout_ms: u64::try_from(row.timeout_ms).unwrap_or(1).max(1),
        allowed_tools: row.allowed_tools,
        blocked_tools: row.blocked_tools,
        keywords: row.keywords,
        pricing: McpPricing {
            per_call: nanos(row.price_per_call_nanos),
            per_input_byte: nanos(row.price_per_input_byte_nanos),
            per_output_byte: nanos(row.price_per_output_byte_nanos),
        },
        policy,
        enabled: row.enabled,
        max_sessions: usize::try_from(row.max_sessions).unwrap_or(1).max(1),
        idle_timeout_ms: u64::try_from(row.idle_timeout_ms).unwrap_or(1).max(1),
    })
}

/// Every organisation's MCP servers, and one warning per skipped row.
pub async fn load(
    pool: &PgPool,
    keys: &MasterKeys,
) -> Result<(HashMap<String, Vec<Arc<McpServer>>>, Vec<String>), sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, organisation_id, name, slug, transport::text AS transport, url, command,
                args, env, auth_type::text AS auth_type, auth_config, timeout_ms,
                allowed_tools, blocked_tools, keywords, price_per_call_nanos,
                price_per_input_byte_nanos, price_per_output_byte_nanos, policies, enabled,
                max_sessions, idle_timeout_ms
           FROM mcp_servers
          ORDER BY organisation_id, created_at, id",
    )
    .fetch_all(pool)
    .await?;
    let mut out: HashMap<String, Vec<Arc<McpServer>>> = HashMap::new();
    let mut warnings = Vec::new();
    for row in rows {
        let who = format!("MCP server `{}` ({})", row.slug, row.id);
        match build(row, keys) {
            Ok(s) => out
                .entry(s.organisation_id.clone().unwrap_or_default())
                .or_default()
                .push(Arc::new(s)),
            Err(problems) => warnings.push(format!("{who} skipped: {}", problems.join("; "))),
        }
    }
    Ok((out, warnings))
}

/// One row of `mcp_usage_records`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRow {
    pub request_id: String,
    pub call_index: i32,
    pub organisation_id: Option<Uuid>,
    pub team_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub api_key_id: Option<Uuid>,
    pub mcp_server_id: Option<Uuid>,
    pub server_slug: String,
    pub transport: String,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub session_id: Option<String>,
    pub status: i16,
    pub outcome: String,
    pub error_code: Option<String>,
    pub latency_ms: f64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub cost_nanos: i64,
}

fn uuid_of(s: Option<&str>) -> Option<Uuid> {
    s.and_then(|s| Uuid::parse_str(s).ok())
}

fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The owners of a usage record (ids that are not uuids, from the file, become NULL).
pub struct Owners<'a> {
    pub organisation_id: Option<&'a str>,
    pub team_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub api_key_id: Option<&'a str>,
}

impl CallRow {
    pub fn from_call(o: &Owners<'_>, c: &super::McpUsageRecord) -> CallRow {
        CallRow {
            request_id: c.request_id.clone(),
            call_index: i32::try_from(c.call_index).unwrap_or(i32::MAX),
            organisation_id: uuid_of(o.organisation_id),
            team_id: uuid_of(o.team_id),
            user_id: uuid_of(o.user_id),
            api_key_id: uuid_of(o.api_key_id),
            mcp_server_id: uuid_of(Some(&c.mcp_server_id)),
            server_slug: c.server_slug.clone(),
            transport: c.transport.to_string(),
            method: c.method.clone(),
            tool: c.tool.clone(),
            session_id: c.session_id.clone(),
            status: i16::try_from(c.status).unwrap_or(i16::MAX),
            outcome: c.outcome.to_string(),
            error_code: c.error_code.clone(),
            latency_ms: c.latency_ms.max(0.0),
            bytes_in: big(c.bytes_in),
            bytes_out: big(c.bytes_out),
            cost_nanos: big(c.cost_nanos),
        }
    }

    /// A call as it was written to the spill file (`None` when it is not one).
    pub fn from_json(o: &Owners<'_>, v: &Value) -> Option<CallRow> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let transport = s("transport")?;
        config::Transport::parse(&transport)?;
        Some(CallRow {
            request_id: s("request_id")?,
            call_index: i32::try_from(n("call_index")).ok()?,
            organisation_id: uuid_of(o.organisation_id),
            team_id: uuid_of(o.team_id),
            user_id: uuid_of(o.user_id),
            api_key_id: uuid_of(o.api_key_id),
            mcp_server_id: uuid_of(v.get("mcp_server_id").and_then(Value::as_str)),
            server_slug: s("server_slug").unwrap_or_default(),
            transport,
            method: s("method"),
            tool: s("tool"),
            session_id: s("session_id"),
            status: i16::try_from(n("status")).unwrap_or(0),
            outcome: s("outcome").unwrap_or_default(),
            error_code: s("error_code"),
            latency_ms: v
                .get("latency_ms")
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
                .max(0.0),
            bytes_in: big(n("bytes_in")),
            bytes_out: big(n("bytes_out")),
            cost_nanos: big(n("cost_nanos")),
        })
    }
}

/// Writes the MCP calls of a batch of usage records into `mcp_usage_records`.
pub async fn insert_calls(
    pool: &PgPool,
    batch: &[crate::usage::UsageRecord],
) -> Result<u64, sqlx::Error> {
    let mut rows = Vec::new();
    for r in batch {
        let o = Owners {
            organisation_id: r.organisation_id.as_deref(),
            team_id: r.team_id.as_deref(),
            user_id: r.user_id.as_deref(),
            api_key_id: r.api_key_id.as_deref(),
        };
        rows.extend(r.mcp_calls.iter().map(|c| CallRow::from_call(&o, c)));
    }
    insert_rows(pool, &rows).await
}

fn col<T>(rows: &[CallRow], f: impl Fn(&CallRow) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

/// Writes call rows (one statement; a call already stored, by request id and index, is
/// skipped).
pub async fn insert_rows(pool: &PgPool, rows: &[CallRow]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "INSERT INTO mcp_usage_records (request_id, call_index, organisation_id, team_id,
                user_id, api_key_id, mcp_server_id, server_slug, transport, method, tool,
                session_id, status, outcome, error_code, latency_ms, bytes_in, bytes_out,
                cost_nanos)
         SELECT r, i, o, t, u, k, s, sl, tr::mcp_transport, m, tl, se, st, oc, ec, la, bi, bo, co
           FROM UNNEST($1::text[], $2::int[], $3::uuid[], $4::uuid[], $5::uuid[], $6::uuid[],
                       $7::uuid[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                       $13::smallint[], $14::text[], $15::text[], $16::float8[], $17::int8[],
                       $18::int8[], $19::int8[])
                AS x(r, i, o, t, u, k, s, sl, tr, m, tl, se, st, oc, ec, la, bi, bo, co)
         ON CONFLICT (request_id, call_index) DO NOTHING",
    )
    .bind(col(rows, |r| r.request_id.clone()))
    .bind(col(rows, |r| r.call_index))
    .bind(col(rows, |r| r.organisation_id))
    .bind(col(rows, |r| r.team_id))
    .bind(col(rows, |r| r.user_id))
    .bind(col(rows, |r| r.api_key_id))
    .bind(col(rows, |r| r.mcp_server_id))
    .bind(col(rows, |r| r.server_slug.clone()))
    .bind(col(rows, |r| r.transport.clone()))
    .bind(col(rows, |r| r.method.clone()))
    .bind(col(rows, |r| r.tool.clone()))
    .bind(col(rows, |r| r.session_id.clone()))
    .bind(col(rows, |r| r.status))
    .bind(col(rows, |r| r.outcome.clone()))
    .bind(col(rows, |r| r.error_code.clone()))
    .bind(col(rows, |r| r.latency_ms))
    .bind(col(rows, |r| r.bytes_in))
    .bind(col(rows, |r| r.bytes_out))
    .bind(col(rows, |r| r.cost_nanos))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
