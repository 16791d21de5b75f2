//! OAuth2 client-credentials tokens for MCP servers: fetched on first use, cached until shortly
//! before they expire, refreshed then (or at once when the server rejects one). The cache
//! outlives configuration reloads; concurrent requests wait for one fetch instead of each
//! asking the token endpoint.

use super::config::OAuth2;
use crate::error::{ErrorCode, GatewayError};
use once_cell::sync::Lazy;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Token endpoint timeout.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime assumed when the endpoint gives none.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Clone)]
struct Token {
    value: String,
    refresh_at: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

static CACHE: Lazy<Mutex<HashMap<String, Slot>>> = Lazy::new(Default::default);

fn cache_key(o: &OAuth2) -> String {
    format!(
        "{}\u{0}{}\u{0}{}\u{0}{}",
        o.token_url,
        o.client_id,
        o.scope.as_deref().unwrap_or(""),
        o.audience.as_deref().unwrap_or("")
    )
}

fn slot(o: &OAuth2) -> Slot {
    let mut m = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    m.entry(cache_key(o)).or_default().clone()
}

fn auth_error(msg: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorCode::McpAuthError, msg)
}

/// The access token for `o`: cached, or fetched now.
pub async fn token(client: &reqwest::Client, o: &OAuth2) -> Result<String, GatewayError> {
    let slot = slot(o);
    let mut g = slot.lock().await;
    if let Some(t) = g.as_ref() {
        if Instant::now() < t.refresh_at {
            return Ok(t.value.clone());
        }
    }
    let t = fetch(client, o).await?;
    let v = t.value.clone();
    *g = Some(t);
    Ok(v)
}

/// Forgets the cached token (the server rejected it), unless another request already
/// replaced it with a different one.
pub async fn invalidate(o: &OAuth2, rejected: &str) {
    let slot = slot(o);
    let mut g = slot.lock().await;
    if g.as_ref().is_some_and(|t| t.value == rejected) {
        *g = None;
    }
}

async fn fetch(client: &reqwest::Client, o: &OAuth2) -> Result<Token, GatewayError> {
    if o.client_secret.expose().is_empty() {
        return Err(auth_error(
            "the MCP server's OAuth2 client secret is not configured",
        ));
    }
    let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
    if let Some(s) = &o.scope {
        form.push(("scope", s));
    }
    if let Some(a) = &o.audience {
        form.push(("audience", a));
    }
    let mut req = client.post(&o.token_url).timeout(FETCH_TIMEOUT);
    if o.basic_auth {
        req = req.basic_auth(&o.client_id, Some(o.client_secret.expose()));
    } else {
        form.push(("client_id", &o.client_id));
        form.push(("client_secret", o.client_secret.expose()));
    }
    let resp = req
        .form(&form)
        .send()
        .await
        .map_err(|e| auth_error(format!("the OAuth2 token endpoint failed: {}", short(&e))))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| auth_error(format!("the OAuth2 token endpoint failed: {}", short(&e))))?;
    if !status.is_success() {
        return Err(auth_error(format!(
            "the OAuth2 token endpoint answered {}",
            status.as_u16()
        )));
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| auth_error("the OAuth2 token endpoint answered something that is not JSON"))?;
    let value = v["access_token"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| auth_error("the OAuth2 token endpoint answered no access_token"))?
        .to_string();
    let lifetime = match &v["expires_in"] {
        Value::Number(n) => n.as_u64().map(Duration::from_secs),
        Value::String(s) => s.parse().ok().map(Duration::from_secs),
        _ => None,
    }
    .unwrap_or(DEFAULT_LIFETIME);
    // Refresh a little before expiry: a tenth of the lifetime, at most 30 s early.
    let early = (lifetime / 10).min(Duration::from_secs(30));
    Ok(Token {
        value,
        refresh_at: Instant::now() + lifetime.saturating_sub(early),
    })
}

/// An error's kind without its URL (which may carry a query string).
fn short(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request error"
    }
}
