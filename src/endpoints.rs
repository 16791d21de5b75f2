//! Answers the gateway writes itself, on either listener: health, readiness, metrics,
//! status, model lists, key validation. The proxy and the admin listener call these same
//! functions.

use crate::config::VirtualKey;
use crate::control::{Snapshot, State};
use crate::error::{ErrorCode, GatewayError};
use crate::metrics;
use crate::respond::{error as error_reply, Reply};
use bytes::Bytes;
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

/// RFC 3339 of a system time.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `GET /v1/health`: liveness.
pub fn health() -> Reply {
    Reply::json(200, json!({"status": "ok"}))
}

/// `GET /v1/healthz`: readiness with per-component detail.
pub fn healthz(state: &State) -> Reply {
    let snap = state.current();
    let reload_error = state.last_reload_error.read().ok().and_then(|g| g.clone());
    let config = json!({
        "status": "ok",
        "version": snap.version,
        "loaded_at": rfc3339(snap.loaded_at),
        "last_reload_error": reload_error,
    });
    let mut components = json!({ "config": config });
    let mut ok = true;
    if let Some(db) = &state.db {
        let up = db.healthy() && db.pool.load().is_some();
        ok &= up;
        components["database"] = json!({"status": if up { "ok" } else { "down" }});
    }
    if let Some(r) = &state.redis_healthy {
        let up = r.load(std::sync::atomic::Ordering::Relaxed);
        ok &= up;
        components["redis"] = json!({"status": if up { "ok" } else { "down" }});
    }
    Reply::json(
        if ok { 200 } else { 503 },
        json!({"status": if ok { "ok" } else { "degraded" }, "components": components}),
    )
}

/// `GET /metrics`.
pub fn metrics_reply() -> Reply {
    Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        body: Bytes::from(metrics::render()),
    }
}

/// How much `GET /api/status` shows, by who asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusView {
    /// No credential: gateway-wide health only, nothing of any organisation.
    Public,
    /// The operator token or a SUPER_ADMIN: every provider.
    Gateway,
    /// An organisation's ORG_ADMIN or MANAGER token: that organisation's providers only.
    Organisation(String),
}

pub use crate::keys::bearer;

/// Whether `given` is `secret`, compared in constant time (digests of both, so the length
/// does not show either).
pub fn secret_matches(given: &[u8], secret: &crate::config::Secret) -> bool {
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    let a = sha2::Sha256::digest(given);
    let b = sha2::Sha256::digest(secret.expose().as_bytes());
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// Whether the request carries the operator token (`server.operator_token_env`).
pub fn is_operator(snap: &Snapshot, headers: &http::HeaderMap) -> bool {
    match (&snap.config.server.operator_token, bearer(headers)) {
        (Some(secret), Some(given)) => secret_matches(given.as_bytes(), secret),
        _ => false,
    }
}

/// Who asks for `/api/status`: nobody (public), the operator, or an admin API token's user
/// (SUPER_ADMIN: the gateway; others: their organisation). A credential that is none of these
/// is refused with 401, so that a typo does not look like an empty organisation.
pub async fn status_view(state: &State, headers: &http::HeaderMap) -> Result<StatusView, Reply> {
    let Some(token) = bearer(headers) else {
        return Ok(StatusView::Public);
    };
    let snap = state.current();
    if is_operator(&snap, headers) {
        return Ok(StatusView::Gateway);
    }
    let refused = || {
        error_reply(&GatewayError::new(
            ErrorCode::Unauthorized,
            "invalid token: send the operator token or an admin API token",
        ))
    };
    let Ok(pool) = crate::api::pool(state) else {
        return Err(refused());
    };
    match crate::api::bootstrap::authenticate(&pool, token).await {
        Ok(Some(c)) if c.role == crate::api::Role::SuperAdmin => Ok(StatusView::Gateway),
        // A USER reads only its own keys and usage: nothing of the providers.
        Ok(Some(c)) if c.role == crate::api::Role::User => Ok(StatusView::Public),
        Ok(Some(c)) => match c.organisation_id {
            Some(o) => Ok(StatusView::Organisation(o.to_string())),
            None => Err(refused()),
        },
        Ok(None) => Err(refused()),
        Err(e) => Err(e.reply()),
    }
}

/// `GET /api/status`: what a status page polls. Gateway-wide health for everyone; the
/// providers' reachability only for the views that may see them.
pub fn status(state: &State, view: &StatusView) -> Reply {
    let snap = state.current();
    let reach = state
        .reachability
        .read()
        .ok()
        .map(|g| g.clone())
        .unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    let providers: Vec<serde_json::Value> = snap
        .config
        .providers
        .iter()
        .filter(|p| seen.insert(p.status_key()))
        .map(|p| {
            let r = reach.get(&p.status_key());
            json!({
                "name": p.name,
                "organisation_id": p.organisation_id,
                "type": p.kind.as_str(),
                "enabled": p.enabled,
                "credential_configured": p.api_key.is_some(),
                "reachable": r.map(|r| r.reachable),
                "latency_ms": r.and_then(|r| r.latency_ms),
                "checked_at": r.map(|r| r.checked_at.clone()),
                "error": r.and_then(|r| r.error.clone()),
            })
        })
        .collect();
    let all_up = providers
        .iter()
        .all(|p| p["reachable"].as_bool().unwrap_or(true) || p["enabled"] == false);
    let mut v = json!({
        "status": if all_up { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": rfc3339(state.started_at),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "config_version": snap.version,
    });
    let shown: Option<Vec<serde_json::Value>> = match view {
        StatusView::Public => None,
        StatusView::Gateway => Some(providers),
        StatusView::Organisation(org) => Some(
            providers
                .into_iter()
                .filter(|p| p["organisation_id"].as_str() == Some(org.as_str()))
                .collect(),
        ),
    };
    if let Some(ps) = shown {
        v["providers"] = serde_json::Value::Array(ps);
    }
    Reply::json(200, v)
}

/// `GET /v1/models`: the models this key may call, in OpenAI's list shape (only those of
/// providers of `kind` when given).
pub fn models(
    snap: &Snapshot,
    key: &VirtualKey,
    kind: Option<crate::config::ProviderKind>,
) -> Reply {
    let created = unix(snap.loaded_at);
    let data: Vec<serde_json::Value> = snap
        .config
        .model_names(&key.organisation_id)
        .into_iter()
        .filter(|m| m.enabled && key.may_use(&m.name))
        .filter(|m| kind.is_none_or(|k| m.provider.kind == k))
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": created,
                "owned_by": m.provider.name,
            })
        })
        .collect();
    Reply::json(200, json!({"object": "list", "data": data}))
}

/// `POST /v1/keys/validate`. `balances`: the prepaid balances that apply to the key, with
/// what remains of each ([`crate::governance::Governance::balances`]).
pub fn key_info(snap: &Snapshot, key: &VirtualKey, balances: Vec<serde_json::Value>) -> Reply {
    let mut models: Vec<&str> = snap
        .config
        .model_names(&key.organisation_id)
        .into_iter()
        .filter(|m| key.may_use(&m.name))
        .map(|m| m.name.as_str())
        .collect();
    models.dedup();
    models.sort_unstable();
    let expires = key.expires_at.and_then(|t| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
    });
    Reply::json(
        200,
        json!({
            "valid": true,
            "key": {
                "id": key.id,
                "name": key.name,
                "prefix": key.prefix,
                "type": key.kind.as_str(),
                "organisation_id": key.organisation_id,
                "team_id": key.team_id,
                "user_id": key.user_id,
                "expires_at": expires,
            },
            "models": models,
            "mcp_servers": snap.config.mcp.granted(key),
            "balances": balances,
        }),
    )
}
