//! Admin tokens: generation, authentication, and `wharf admin bootstrap` (the first
//! SUPER_ADMIN and its token).

use super::{ApiResult, Caller, Role};
use crate::keys::KeyHash;
use rand::RngCore;
use sqlx::PgPool;
use uuid::Uuid;

/// Prefix of every admin token.
pub const TOKEN_PREFIX: &str = "wharf_adm_";

/// E-mail of the bootstrap super admin when none is given.
pub const DEFAULT_EMAIL: &str = "admin@localhost";

/// `prefix` + 256 random bits, hex.
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The stored display prefix of a token: its prefix plus 4 characters.
pub fn display_prefix(token: &str) -> String {
    token.chars().take(TOKEN_PREFIX.len() + 4).collect()
}

/// The caller a token belongs to (`None`: unknown, revoked or expired token, or a user that
/// is not ACTIVE).
pub async fn authenticate(pool: &PgPool, token: &str) -> ApiResult<Option<Caller>> {
    let hash = KeyHash::of(token).to_hex();
    let row: Option<(Uuid, Uuid, String, String, Option<Uuid>)> = sqlx::query_as(
        "SELECT t.id, u.id, u.email, u.role::text, u.organisation_id
         FROM admin_tokens t JOIN users u ON u.id = t.user_id
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL
           AND (t.expires_at IS NULL OR t.expires_at > now()) AND u.status = 'ACTIVE'",
    )
    .bind(&hash)
    .fetch_optional(pool)
    .await?;
    let Some((token_id, user_id, email, role, organisation_id)) = row else {
        return Ok(None);
    };
    let Some(role) = Role::parse(&role) else {
        return Ok(None);
    };
    // At most one write a minute per token.
    sqlx::query(
        "UPDATE admin_tokens SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(token_id)
    .execute(pool)
    .await?;
    Ok(Some(Caller {
        user_id,
        email,
        role,
        organisation_id,
        token_id,
    }))
}

/// What `wharf admin bootstrap` did.
#[derive(Debug)]
pub struct Bootstrapped {
    pub user_id: Uuid,
    pub email: String,
    /// Whether the user was created now (else a token was added to an existing super admin).
    pub created: bool,
    /// The new admin token (shown once).
    pub token: String,
}

/// Creates the first SUPER_ADMIN (when there is none) and a new admin token for it. When a
/// super admin exists, a token is issued only when `email` names one (recovery of a lost
/// token by someone with database access); otherwise this fails.
pub async fn bootstrap(pool: &PgPool, email: Option<&str>) -> Result<Bootstrapped, String> {
    crate::db::check_schema(pool)
        .await
        .map_err(|e| e.to_string())?;
    let wanted = email.unwrap_or(DEFAULT_EMAIL).trim().to_string();
    if wanted.find('@').is_none_or(|i| i == 0) {
        return Err(format!("`{wanted}` is not an e-mail address"));
    }
    let fail = |e: sqlx::Error| format!("database: {e}");
    let mut tx = pool.begin().await.map_err(fail)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('wharf_admin_bootstrap'))")
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    let admins: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, email FROM users WHERE role = 'SUPER_ADMIN' ORDER BY created_at",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(fail)?;
    let (user_id, email, created) = if admins.is_empty() {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO users (email, name, role, status)
             VALUES ($1, 'Super admin', 'SUPER_ADMIN', 'ACTIVE') RETURNING id",
        )
        .bind(&wanted)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => format!(
                "a user with e-mail {wanted} exists and is not a super admin; choose another --email"
            ),
            _ => fail(e),
        })?;
        (id, wanted, true)
    } else {
        match (
            email,
            admins.iter().find(|(_, e)| e.eq_ignore_ascii_case(&wanted)),
        ) {
            (Some(_), Some((id, e))) => (*id, e.clone(), false),
            _ => {
                return Err(format!(
                    "a super admin already exists ({}); pass --email with its address to issue \
                     another token for it",
                    admins
                        .iter()
                        .map(|(_, e)| e.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        }
    };
    let token = random_token(TOKEN_PREFIX);
    sqlx::query(
        "INSERT INTO admin_tokens (user_id, name, token_prefix, token_hash)
         VALUES ($1, 'bootstrap', $2, $3)",
    )
    .bind(user_id)
    .bind(display_prefix(&token))
    .bind(KeyHash::of(&token).to_hex())
    .execute(&mut *tx)
    .await
    .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    Ok(Bootstrapped {
        user_id,
        email,
        created,
        token,
    })
}

/// `wharf admin bootstrap`: connects, bootstraps (and sets the console password when one is
/// given), prints the token once.
pub async fn run(
    database_url: &str,
    email: Option<&str>,
    password: Option<&str>,
) -> Result<String, String> {
    if let Some(p) = password {
        super::auth::check_password("password", p).map_err(|e| e.message)?;
    }
    let pool = crate::db::connect(database_url)
        .await
        .map_err(|e| e.to_string())?;
    let b = bootstrap(&pool, email).await;
    let pw = match (&b, password) {
        (Ok(b), Some(p)) => super::auth::set_password(&pool, b.user_id, p, None)
            .await
            .map(|_| true)
            .map_err(|e| e.message),
        _ => Ok(false),
    };
    pool.close().await;
    let b = b?;
    let pw = pw?;
    Ok(format!(
        "{} super admin {} ({})\n{}admin token (shown once, store it now): {}\n",
        if b.created { "created" } else { "existing" },
        b.email,
        b.user_id,
        if pw { "console password set\n" } else { "" },
        b.token
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_and_random() {
        let a = random_token(TOKEN_PREFIX);
        let b = random_token(TOKEN_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(display_prefix(&a).len(), TOKEN_PREFIX.len() + 4);
        assert!(a.starts_with(&display_prefix(&a)));
    }
}
