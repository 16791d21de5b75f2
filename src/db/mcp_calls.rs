//! The MCP calls of usage records, as rows of `mcp_usage_records` (linked to the usage
//! record of their HTTP request by `request_id` and `call_index`).

use crate::types::mcp::Transport;
use crate::types::usage::{McpUsageRecord, UsageRecord};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

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
    pub fn from_call(o: &Owners<'_>, c: &McpUsageRecord) -> CallRow {
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
        Transport::parse(&transport)?;
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
pub async fn insert_calls(pool: &PgPool, batch: &[UsageRecord]) -> Result<u64, sqlx::Error> {
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
