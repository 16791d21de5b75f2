//! Test seeding: rows written straight into the configuration tables, for tests and benches
//! that need an organisation, a provider, a model or a key without going through the admin API.
//! Uses only the crate's public API; the product's own write path is the admin API.
#![allow(dead_code)]

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;
use wharf::config::provider::{build_provider, valid_name, valid_slug, ProviderSpec, NAME_RULE};
use wharf::config::{KeyType, ModelType, Pricing, ProviderKind};
use wharf::db::crypto::{self, MasterKeys};
use wharf::db::load::{LoadError, DISPLAY_PREFIX_LEN};
use wharf::keys;

fn invalid(what: &'static str, problems: Vec<String>) -> LoadError {
    LoadError::Invalid { what, problems }
}

/// The slug [`create_organisation`] derives from a name.
pub fn slugify(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-');
    let out: String = out.chars().take(48).collect();
    if out.is_empty() {
        "org".to_string()
    } else {
        out
    }
}

/// Creates an organisation; its slug is derived from the name (made unique with a random
/// suffix when taken).
pub async fn create_organisation(pool: &PgPool, name: &str) -> Result<Uuid, LoadError> {
    if name.trim().is_empty() {
        return Err(invalid(
            "organisation",
            vec!["name: must not be empty".to_string()],
        ));
    }
    let base = slugify(name);
    for attempt in 0..8 {
        let slug = if attempt == 0 {
            base.clone()
        } else {
            format!("{base}-{}", &Uuid::new_v4().simple().to_string()[..8])
        };
        let id: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO organisations (name, slug) VALUES ($1, $2)
             ON CONFLICT (slug) DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(&slug)
        .fetch_optional(pool)
        .await?;
        if let Some(id) = id {
            return Ok(id);
        }
    }
    Err(invalid(
        "organisation",
        vec![format!("slug: no free slug derived from `{base}`")],
    ))
}

/// Creates a provider (TOML defaults for everything not given) and, with `secret`, its
/// credential: the envelope sealed under the newest master key plus its [`crypto::preview`].
/// The values are checked with the rules of [`build_provider`] before anything is written.
pub async fn create_provider(
    pool: &PgPool,
    org: Uuid,
    name: &str,
    kind: ProviderKind,
    base_url: &str,
    keys: &MasterKeys,
    secret: Option<&str>,
) -> Result<Uuid, LoadError> {
    let spec = ProviderSpec::new(name, kind, base_url);
    build_provider(&spec, Vec::new(), None).map_err(|p| invalid("provider", p))?;
    let envelope = secret.map(|s| keys.encrypt(s)).transpose()?;
    let mut tx = pool.begin().await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO providers (organisation_id, name, provider_type, base_url, timeout_ms)
         VALUES ($1, $2, $3::provider_type, $4, $5) RETURNING id",
    )
    .bind(org)
    .bind(name)
    .bind(kind.as_str())
    .bind(base_url)
    .bind(i32::try_from(spec.timeout_ms).unwrap_or(i32::MAX))
    .fetch_one(&mut *tx)
    .await?;
    if let (Some(envelope), Some(secret)) = (envelope, secret) {
        sqlx::query(
            "INSERT INTO provider_api_keys (organisation_id, provider_id, envelope, preview)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(org)
        .bind(id)
        .bind(envelope)
        .bind(crypto::preview(secret))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

fn price_nanos(field: &str, v: u64, problems: &mut Vec<String>) -> i64 {
    i64::try_from(v).unwrap_or_else(|_| {
        problems.push(format!("pricing.{field}: {v} nanos-USD is too large"));
        0
    })
}

/// Creates a model of `org` served by `provider_id` (a provider of the same organisation).
/// All four prices are stored, so `pricing.cached`/`pricing.reasoning` are taken as given.
pub async fn create_model(
    pool: &PgPool,
    org: Uuid,
    name: &str,
    slug: &str,
    kind: ModelType,
    provider_id: Uuid,
    pricing: Pricing,
) -> Result<Uuid, LoadError> {
    let mut problems = Vec::new();
    if !valid_name(name) {
        problems.push(format!("name: `{name}` {NAME_RULE}"));
    }
    if !valid_slug(slug) {
        problems.push(format!("slug: `{slug}` is not a valid upstream model id"));
    }
    let input = price_nanos("input", pricing.input, &mut problems);
    let output = price_nanos("output", pricing.output, &mut problems);
    let cached = price_nanos("cached", pricing.cached, &mut problems);
    let reasoning = price_nanos("reasoning", pricing.reasoning, &mut problems);
    let image = price_nanos("image", pricing.image, &mut problems);
    if !problems.is_empty() {
        return Err(invalid("model", problems));
    }
    let id = sqlx::query_scalar(
        "INSERT INTO models (organisation_id, name, slug, model_type, provider_id,
                             input_price_nanos, output_price_nanos,
                             cached_input_price_nanos, reasoning_price_nanos, image_price_nanos)
         VALUES ($1, $2, $3, $4::model_type, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(org)
    .bind(name)
    .bind(slug)
    .bind(kind.as_str())
    .bind(provider_id)
    .bind(input)
    .bind(output)
    .bind(cached)
    .bind(reasoning)
    .bind(image)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// Creates a virtual key of `org` granted `models` (models of the same organisation). Returns
/// its id and the secret, which is not stored anywhere (only its SHA-256 hash and a short
/// display prefix are) and must be shown to the caller once.
pub async fn create_api_key(
    pool: &PgPool,
    org: Uuid,
    kind: KeyType,
    team_id: Option<Uuid>,
    user_id: Option<Uuid>,
    name: &str,
    models: &[Uuid],
) -> Result<(Uuid, String), LoadError> {
    let mut problems = Vec::new();
    if name.trim().is_empty() {
        problems.push("name: must not be empty".to_string());
    }
    match kind {
        KeyType::Organisation if team_id.is_some() || user_id.is_some() => {
            problems.push("an ORGANISATION key belongs to no team or user".to_string())
        }
        KeyType::Team if team_id.is_none() || user_id.is_some() => {
            problems.push("a TEAM key needs a team_id and no user_id".to_string())
        }
        KeyType::User if user_id.is_none() => {
            problems.push("a USER key needs a user_id".to_string())
        }
        _ => {}
    }
    if !problems.is_empty() {
        return Err(invalid("api key", problems));
    }
    let mut grants: Vec<Uuid> = models.to_vec();
    grants.sort_unstable();
    grants.dedup();

    let (secret, hash) = keys::generate();
    let prefix: String = secret.chars().take(DISPLAY_PREFIX_LEN).collect();
    let mut tx = pool.begin().await?;
    let found: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM models WHERE organisation_id = $1 AND id = ANY($2)")
            .bind(org)
            .bind(&grants)
            .fetch_all(&mut *tx)
            .await?;
    let missing: Vec<String> = grants
        .iter()
        .filter(|g| !found.contains(g))
        .map(|g| format!("models: {g} is not a model of organisation {org}"))
        .collect();
    if !missing.is_empty() {
        return Err(invalid("api key", missing));
    }
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO api_keys (organisation_id, team_id, user_id, name, key_type, key_prefix, key_hash)
         VALUES ($1, $2, $3, $4, $5::api_key_type, $6, $7) RETURNING id",
    )
    .bind(org)
    .bind(team_id)
    .bind(user_id)
    .bind(name)
    .bind(kind.as_str())
    .bind(&prefix)
    .bind(hash.to_hex())
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO api_key_model_access (organisation_id, api_key_id, model_id)
         SELECT $1, $2, m FROM unnest($3::uuid[]) AS m",
    )
    .bind(org)
    .bind(id)
    .bind(&grants)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((id, secret))
}

/// Sets (or, with `None`, clears) a key's expiry.
pub async fn set_api_key_expiry(
    pool: &PgPool,
    id: Uuid,
    expires_at: Option<OffsetDateTime>,
) -> Result<(), LoadError> {
    let done = sqlx::query("UPDATE api_keys SET expires_at = $2 WHERE id = $1")
        .bind(id)
        .bind(expires_at)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(LoadError::NotFound {
            what: "api key",
            id,
        });
    }
    Ok(())
}

/// Revokes a key (idempotent: revoking a revoked key keeps its first revocation time).
pub async fn revoke_api_key(pool: &PgPool, id: Uuid) -> Result<(), LoadError> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    if done.rows_affected() == 0 {
        return Err(LoadError::NotFound {
            what: "api key",
            id,
        });
    }
    Ok(())
}
