//! Passwords and invitations: the sign-in side of users, shared by the admin API and the
//! admin console.
//!
//! * Passwords are stored as argon2id PHC strings in `users.password_hash` (never returned).
//!   `PUT /api/me/password` sets the caller's own; ORG_ADMIN sets those of their organisation's
//!   users (`PUT /api/organisations/{organisationId}/users/{id}/password`), SUPER_ADMIN anyone's
//!   (`PUT /api/admin/users/{id}/password`).
//! * Invitations (`organisation_invitations`, created through the API with a token shown
//!   once) are read with `GET /api/invitations/{token}` and accepted with
//!   `POST /api/invitations/{token}/accept` (`{"name", "password"}`): no admin token, the
//!   invitation token is the credential. Acceptance creates the ACTIVE user with the invited
//!   role, joins the invited team, and marks the invitation accepted, in one transaction.

use super::resources::{fetch, ADMIN_USERS, USERS};
use super::{json_reply, ApiError, ApiResult, Ctx};
use crate::error::ErrorCode;
use crate::keys::KeyHash;
use crate::respond::Reply;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in bytes (hashing cost is bounded).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Checks a new password (400 naming `field`).
pub fn check_password(field: &str, password: &str) -> ApiResult<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// An argon2id PHC string of a password (random salt). Runs off the async workers.
pub async fn hash_password(password: &str) -> ApiResult<String> {
    let pw = password.to_string();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(pw.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

/// A hash that no password matches, verified when the user is unknown so that unknown and
/// known e-mails take the same time.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3Ouih1qTc3QvJ6Hx2nyjWrM5Dh0l0jDsmzwZcHqzE2I";

/// Whether `password` matches a PHC string. Runs off the async workers.
pub async fn verify_password(hash: Option<String>, password: &str) -> bool {
    let pw = password.to_string();
    let known = hash.is_some();
    let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
    let ok = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    ok && known
}

/// Sets a user's password and ends the user's console sessions, all but `keep` (the console
/// session changing its own user's password, which stays signed in).
pub async fn set_password(
    pool: &PgPool,
    user: Uuid,
    password: &str,
    keep: Option<Uuid>,
) -> ApiResult<()> {
    check_password("password", password)?;
    let hash = hash_password(password).await?;
    let mut tx = pool.begin().await?;
    let done = sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(user)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("User"));
    }
    sqlx::query("DELETE FROM console_sessions WHERE user_id = $1 AND id IS DISTINCT FROM $2")
        .bind(user)
        .bind(keep)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The user signing in with `email` and `password`: `None` for an unknown e-mail, a wrong
/// password, a user without password or one that is not ACTIVE. Records the sign-in time.
pub async fn check_login(pool: &PgPool, email: &str, password: &str) -> ApiResult<Option<Uuid>> {
    let row: Option<(Uuid, Option<String>, String)> = sqlx::query_as(
        "SELECT id, password_hash, status::text FROM users WHERE lower(email) = lower($1)",
    )
    .bind(email.trim())
    .fetch_optional(pool)
    .await?;
    let (id, hash, status) = match row {
        Some((id, hash, status)) => (Some(id), hash, status),
        None => (None, None, String::new()),
    };
    let ok = verify_password(hash, password).await;
    match id {
        Some(id) if ok && status == "ACTIVE" => {
            sqlx::query("UPDATE users SET last_login_at = now() WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
            Ok(Some(id))
        }
        _ => Ok(None),
    }
}

/// Whose password a `PUT …/password` route sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordOf {
    /// The caller.
    Me,
    /// A user of the route's organisation (`{id}`).
    OrgUser,
    /// Any user (`/api/admin/users/{id}`).
    AnyUser,
}

/// `PUT …/password` with `{"password": "…"}`: 204.
pub async fn put_password(ctx: &Ctx<'_>, of: PasswordOf) -> ApiResult<Reply> {
    let body = ctx.body_object()?;
    if let Some(k) = body.keys().find(|k| *k != "password") {
        return Err(ApiError::invalid(k, "unknown field"));
    }
    let password = body
        .get("password")
        .ok_or_else(|| ApiError::invalid("password", "is required"))?
        .as_str()
        .ok_or_else(|| ApiError::invalid("password", "must be a string"))?;
    check_password("password", password)?;
    let user = match of {
        PasswordOf::Me => ctx.caller.user_id,
        PasswordOf::OrgUser | PasswordOf::AnyUser => {
            let res = if of == PasswordOf::OrgUser {
                &USERS
            } else {
                &ADMIN_USERS
            };
            let id = ctx.id("id", res.schema)?;
            let mut conn = ctx.pool.acquire().await?;
            // Visibility exactly as for reading the user (404 when not visible).
            fetch(ctx, res, id, &mut conn).await?;
            id
        }
    };
    // Changing one's own password keeps the console session doing it (a console caller's
    // token id is its session id; an admin token's matches no session): every other
    // session of the user ends.
    let keep = (user == ctx.caller.user_id).then_some(ctx.caller.token_id);
    set_password(&ctx.pool, user, password, keep).await?;
    Ok(Reply {
        status: 204,
        content_type: "application/json",
        body: bytes::Bytes::new(),
    })
}

/// A pending invitation, as its token holder sees it.
#[derive(Debug, Clone)]
pub struct Invitation {
    pub id: Uuid,
    pub organisation_id: Uuid,
    pub organisation_name: String,
    pub organisation_slug: String,
    pub email: String,
    pub role: String,
    pub expires_at: time::OffsetDateTime,
}

impl Invitation {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "organisation": {"id": self.organisation_id.to_string(),
                "name": self.organisation_name, "slug": self.organisation_slug},
            "email": self.email,
            "role": self.role,
            "expires_at": self.expires_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        })
    }
}

type InvitationRow = (
    Uuid,
    Uuid,
    String,
    String,
    String,
    String,
    time::OffsetDateTime,
    Option<time::OffsetDateTime>,
    Option<time::OffsetDateTime>,
    Option<Uuid>,
    Option<String>,
);

const INVITATION_SQL: &str =
    "SELECT i.id, o.id, o.name, o.slug, i.email, i.role::text, i.expires_at, i.accepted_at,
            i.revoked_at, i.team_id, i.team_role::text
     FROM organisation_invitations i JOIN organisations o ON o.id = i.organisation_id
     WHERE i.token_hash = $1";

fn usable(row: InvitationRow) -> ApiResult<(Invitation, Option<Uuid>, Option<String>)> {
    let (id, org, name, slug, email, role, expires_at, accepted, revoked, team, team_role) = row;
    if accepted.is_some() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "this invitation was already accepted",
        ));
    }
    if revoked.is_some() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "this invitation was revoked",
        ));
    }
    if expires_at <= time::OffsetDateTime::now_utc() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "this invitation has expired",
        ));
    }
    Ok((
        Invitation {
            id,
            organisation_id: org,
            organisation_name: name,
            organisation_slug: slug,
            email,
            role,
            expires_at,
        },
        team,
        team_role,
    ))
}

/// The pending invitation of a token (404 when unknown, accepted, revoked or expired).
pub async fn invitation(pool: &PgPool, token: &str) -> ApiResult<Invitation> {
    let row: Option<InvitationRow> = sqlx::query_as(INVITATION_SQL)
        .bind(KeyHash::of(token).to_hex())
        .fetch_optional(pool)
        .await?;
    let row = row.ok_or_else(|| ApiError::not_found("invitation"))?;
    Ok(usable(row)?.0)
}

/// Accepts an invitation: creates the ACTIVE user with the invited role and `password`, joins
/// the invited team, marks the invitation accepted. Returns the new user's id.
pub async fn accept(
    pool: &PgPool,
    token: &str,
    name: Option<&str>,
    password: &str,
) -> ApiResult<(Uuid, Invitation)> {
    check_password("password", password)?;
    let hash = hash_password(password).await?;
    let mut tx = pool.begin().await?;
    let row: Option<InvitationRow> = sqlx::query_as(&format!("{INVITATION_SQL} FOR UPDATE OF i"))
        .bind(KeyHash::of(token).to_hex())
        .fetch_optional(&mut *tx)
        .await?;
    let row = row.ok_or_else(|| ApiError::not_found("invitation"))?;
    let (inv, team, team_role) = usable(row)?;
    let name = name.map(str::trim).filter(|n| !n.is_empty());
    let user: Uuid = sqlx::query_scalar(
        "INSERT INTO users (organisation_id, email, name, password_hash, role, status)
         VALUES ($1, $2, $3, $4, $5::user_role, 'ACTIVE') RETURNING id",
    )
    .bind(inv.organisation_id)
    .bind(&inv.email)
    .bind(name)
    .bind(hash)
    .bind(&inv.role)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => ApiError {
            code: ErrorCode::Conflict,
            message: "email: a user with this e-mail already exists".into(),
            field: Some("email".into()),
        },
        _ => super::db_error(e),
    })?;
    if let Some(team) = team {
        sqlx::query(
            "INSERT INTO team_members (organisation_id, team_id, user_id, team_role)
             VALUES ($1, $2, $3, coalesce($4, 'MEMBER')::team_role)",
        )
        .bind(inv.organisation_id)
        .bind(team)
        .bind(user)
        .bind(team_role)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE organisation_invitations SET accepted_at = now(), accepted_by = $2 WHERE id = $1",
    )
    .bind(inv.id)
    .bind(user)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((user, inv))
}

/// `GET /api/invitations/{token}`.
pub async fn get_invitation(pool: &PgPool, token: &str) -> ApiResult<Reply> {
    Ok(json_reply(200, &invitation(pool, token).await?.to_json()))
}

/// `POST /api/invitations/{token}/accept` with `{"name"?, "password"}`: 201 with the user.
pub async fn post_accept(pool: &PgPool, token: &str, body: &[u8]) -> ApiResult<Reply> {
    let body: serde_json::Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(ApiError::invalid("body", "must be a JSON object")),
        Err(e) => return Err(ApiError::invalid("body", format!("invalid JSON: {e}"))),
    };
    if let Some(k) = body
        .keys()
        .find(|k| !["name", "password"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(k, "unknown field"));
    }
    let password = body
        .get("password")
        .ok_or_else(|| ApiError::invalid("password", "is required"))?
        .as_str()
        .ok_or_else(|| ApiError::invalid("password", "must be a string"))?;
    let name = match body.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(ApiError::invalid("name", "must be a string")),
    };
    let (user, inv) = accept(pool, token, name, password).await?;
    Ok(json_reply(
        201,
        &json!({
            "user_id": user.to_string(),
            "email": inv.email,
            "role": inv.role,
            "organisation": inv.to_json()["organisation"],
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").await.expect("hash");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(Some(h.clone()), "correct horse").await);
        assert!(!verify_password(Some(h), "wrong horse").await);
        assert!(!verify_password(None, "anything").await);
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert_eq!(
            check_password("password", "short")
                .expect_err("short")
                .field
                .as_deref(),
            Some("password")
        );
    }
}
