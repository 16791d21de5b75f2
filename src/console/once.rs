//! One-time views (post/redirect/get for secrets).
//!
//! A form that creates a secret (an API key created or rotated, an invitation link) stores
//! what the answer would show in `console_one_time_views` (migration 0014), encrypted under
//! the master keys and bound to the session, then redirects (303) to `/{org}/once/{id}`. That
//! GET deletes the row as it reads it, so the secret is shown once: a reload shows that it was
//! already shown, and never re-submits the form. A view expires after [`VIEW_SECONDS`].

use super::{Cx, Resp};
use crate::api::{ApiError, ApiResult};
use serde_json::Value;
use uuid::Uuid;

/// How long a one-time view waits to be shown.
pub const VIEW_SECONDS: i64 = 5 * 60;

fn master_keys<'a>(cx: &'a Cx<'_>) -> ApiResult<&'a crate::db::crypto::MasterKeys> {
    Ok(&cx
        .state
        .db
        .as_ref()
        .ok_or_else(|| ApiError::internal("no database mode"))?
        .master_keys)
}

/// Stores `view` for one showing by this session; the redirect to its page.
pub async fn redirect_to(cx: &Cx<'_>, slug: &str, view: &Value) -> ApiResult<Resp> {
    let pool = crate::api::pool(cx.state)?;
    let envelope = master_keys(cx)?
        .encrypt(&view.to_string())
        .map_err(ApiError::internal)?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO console_one_time_views (session_id, envelope, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING id",
    )
    .bind(cx.session.id)
    .bind(envelope)
    .bind(VIEW_SECONDS as f64)
    .fetch_one(&pool)
    .await?;
    // Views never shown are removed as new ones are made.
    sqlx::query("DELETE FROM console_one_time_views WHERE expires_at < now()")
        .execute(&pool)
        .await?;
    Ok(Resp::redirect(&format!("/{slug}/once/{id}")))
}

/// The view `id` of this session, deleted as it is read (`None`: unknown, another session's,
/// already shown or expired).
pub async fn take(cx: &Cx<'_>, id: &str) -> ApiResult<Option<Value>> {
    let Ok(id) = Uuid::parse_str(id) else {
        return Ok(None);
    };
    let pool = crate::api::pool(cx.state)?;
    let envelope: Option<Value> = sqlx::query_scalar(
        "DELETE FROM console_one_time_views
         WHERE id = $1 AND session_id = $2 AND expires_at > now() RETURNING envelope",
    )
    .bind(id)
    .bind(cx.session.id)
    .fetch_optional(&pool)
    .await?;
    let Some(envelope) = envelope else {
        return Ok(None);
    };
    let text = master_keys(cx)?
        .decrypt(&envelope)
        .map_err(ApiError::internal)?;
    serde_json::from_str(text.expose())
        .map(Some)
        .map_err(ApiError::internal)
}
