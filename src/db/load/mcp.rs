//! MCP servers from Postgres (`mcp_servers`), into the same [`McpServer`] as the file's.
//!
//! Secrets in `env` and `auth_config` are either plain strings or encrypted envelopes
//! (`{"v","alg","key_id","nonce","ciphertext"}`), opened here with the master keys.
//! `auth_config` by `auth_type`: BEARER `{"token"}`; BASIC `{"username","password"}`;
//! OAUTH2 `{"token_url","client_id","client_secret","scope"?,"audience"?,"client_auth"?}`.
//! A row that does not make a valid server is skipped with a warning (never its secrets).

use crate::config::mcp::{self as config, McpPricing, McpServer, OAuth2, ServerSpec, UpstreamAuth};
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
    let policy = match crate::types::policy::Policy::from_json(&row.policies) {
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
