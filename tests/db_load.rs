//! Database mode: loading providers, models and virtual keys from Postgres (`wharf::db::load`),
//! against a real server.
//!
//! Every test creates its own database (`wharf_test_<random>`) through a connection to
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`), applies the migrations
//! with `wharf::db::migrate` and drops the database at the end, even when the test fails. A
//! missing Postgres fails the tests; they never skip.

mod common;

use common::seed;

use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;
use wharf::config::{KeyType, ModelType, Pricing, ProviderKind};
use wharf::db::crypto::MasterKeys;
use wharf::db::load::{self, LoadError};
use wharf::keys::KeyHash;

use common::db::TestDb;

fn master(spec: &[(&str, u8)]) -> MasterKeys {
    use base64::Engine;
    let text = spec
        .iter()
        .map(|(id, b)| {
            format!(
                "{id}:{}",
                base64::engine::general_purpose::STANDARD.encode([*b; 32])
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    MasterKeys::parse(&text).expect("master keys")
}

const SECRET: &str = "sk-test-0123456789abcdWXYZ";

fn pricing(input: u64, output: u64, cached: u64, reasoning: u64) -> Pricing {
    Pricing {
        input,
        output,
        cached,
        reasoning,
        image: 0,
    }
}

/// One organisation with an OpenAI provider (encrypted credential), a chat and an embeddings
/// model, and a key granted the chat model only.
struct Fixture {
    org: Uuid,
    provider: Uuid,
    chat: Uuid,
    embed: Uuid,
    key_id: Uuid,
    key_secret: String,
}

async fn fixture(pool: &PgPool, keys: &MasterKeys) -> Fixture {
    let org = seed::create_organisation(pool, "Acme Corp")
        .await
        .expect("organisation");
    let provider = seed::create_provider(
        pool,
        org,
        "openai",
        ProviderKind::OpenAi,
        "http://127.0.0.1:9/v1",
        keys,
        Some(SECRET),
    )
    .await
    .expect("provider");
    let chat = seed::create_model(
        pool,
        org,
        "gpt-mini",
        "gpt-4o-mini",
        ModelType::Chat,
        provider,
        pricing(150_000_000, 600_000_000, 75_000_000, 600_000_000),
    )
    .await
    .expect("chat model");
    let embed = seed::create_model(
        pool,
        org,
        "embed",
        "text-embedding-3-small",
        ModelType::Embeddings,
        provider,
        pricing(20_000_000, 0, 20_000_000, 0),
    )
    .await
    .expect("embeddings model");
    let (key_id, key_secret) = seed::create_api_key(
        pool,
        org,
        KeyType::Organisation,
        None,
        None,
        "backend",
        &[chat],
    )
    .await
    .expect("api key");
    Fixture {
        org,
        provider,
        chat,
        embed,
        key_id,
        key_secret,
    }
}

#[tokio::test]
async fn catalog_has_providers_with_credentials_and_priced_models() {
    let db = TestDb::migrated().await;
    let keys = master(&[("k1", 1)]);
    let f = fixture(&db.pool, &keys).await;
    let org = f.org.to_string();

    // Stored: the envelope and a preview, never the secret.
    let (envelope, preview): (serde_json::Value, String) = sqlx::query_as(
        "SELECT envelope, preview FROM provider_api_keys WHERE provider_id = $1 AND status = 'ACTIVE'",
    )
    .bind(f.provider)
    .fetch_one(&db.pool)
    .await
    .expect("provider key row");
    assert_eq!(envelope["v"], 1);
    assert_eq!(envelope["alg"], "chacha20poly1305");
    assert_eq!(envelope["key_id"], "k1");
    assert!(!envelope.to_string().contains("0123456789"), "{envelope}");
    assert_eq!(preview, "sk-…WXYZ");

    let cat = load::load_catalog(&db.pool, &keys).await.expect("catalog");
    assert!(cat.warnings.is_empty(), "{:?}", cat.warnings);
    assert_eq!(cat.providers.len(), 1);
    let p = &cat.providers[0];
    assert_eq!(p.name, "openai");
    assert_eq!(p.kind, ProviderKind::OpenAi);
    assert_eq!(p.api_key.as_ref().map(|s| s.expose()), Some(SECRET));
    assert_eq!(p.api_key_env, None);
    assert!(!p.tls);
    assert_eq!(p.host, "127.0.0.1");
    assert_eq!(p.port, 9);
    assert_eq!(p.authority, "127.0.0.1:9");
    assert_eq!(p.base_path, "/v1");
    assert_eq!(p.auth_header, http::header::AUTHORIZATION);
    assert_eq!(p.read_timeout, Duration::from_millis(60_000));
    assert_eq!(p.connect_timeout, Duration::from_millis(5_000));
    assert_eq!(p.idle_timeout, Duration::from_millis(60_000));
    assert!(p.enabled);
    assert_eq!(
        p.addrs.load().as_slice(),
        &["127.0.0.1:9".parse::<std::net::SocketAddr>().expect("addr")]
    );
    assert!(std::ptr::eq(
        cat.provider(&org, "openai").expect("by name").as_ref(),
        p.as_ref()
    ));
    assert_eq!(cat.provider_id(&org, "openai"), Some(f.provider));

    let chat = cat.model(&org, "gpt-mini").expect("chat model");
    assert_eq!(chat.slug, "gpt-4o-mini");
    assert_eq!(chat.kind, ModelType::Chat);
    assert!(chat.enabled);
    assert_eq!(
        chat.pricing,
        pricing(150_000_000, 600_000_000, 75_000_000, 600_000_000)
    );
    assert!(std::ptr::eq(chat.provider.as_ref(), p.as_ref()));
    let embed = cat.model(&org, "embed").expect("embeddings model");
    assert_eq!(embed.kind, ModelType::Embeddings);
    assert_eq!(embed.slug, "text-embedding-3-small");
    assert_eq!(cat.model_id(&org, "gpt-mini"), Some(f.chat));
    assert_eq!(cat.model_id(&org, "embed"), Some(f.embed));
    assert!(cat.model(&org, "nope").is_none());
    assert!(cat.model(&Uuid::new_v4().to_string(), "gpt-mini").is_none());
    let names: Vec<&str> = cat
        .models_of(&org)
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(names, vec!["gpt-mini", "embed"]);
    assert!(cat.organisation_enabled(&org));

    let parts = cat.into_parts();
    assert_eq!(
        parts.model_order,
        vec![format!("{org}/gpt-mini"), format!("{org}/embed")]
    );
    assert_eq!(parts.models.len(), 2);
    assert_eq!(parts.models[&format!("{org}/embed")].name, "embed");
    assert_eq!(parts.providers.len(), 1);
}

#[tokio::test]
async fn null_cached_and_reasoning_prices_fall_back_to_input_and_output() {
    let db = TestDb::migrated().await;
    let keys = master(&[("k1", 1)]);
    let f = fixture(&db.pool, &keys).await;
    sqlx::query(
        "UPDATE models SET cached_input_price_nanos = NULL, reasoning_price_nanos = NULL,
                           image_price_nanos = 40000000, enabled = false
          WHERE id = $1",
    )
    .bind(f.chat)
    .execute(&db.pool)
    .await
    .expect("update prices");
    let cat = load::load_catalog(&db.pool, &keys).await.expect("catalog");
    let m = cat.model(&f.org.to_string(), "gpt-mini").expect("model");
    assert_eq!(
        m.pricing,
        Pricing {
            input: 150_000_000,
            output: 600_000_000,
            cached: 150_000_000,
            reasoning: 600_000_000,
            image: 40_000_000,
        }
    );
    assert!(!m.enabled);
}

#[tokio::test]
async fn key_loads_by_hash_with_its_grants() {
    let db = TestDb::migrated().await;
    let keys = master(&[("k1", 1)]);
    let f = fixture(&db.pool, &keys).await;
    assert!(f.key_secret.starts_with(wharf::keys::KEY_PREFIX));

    // Only the hash and a short prefix are stored.
    let (hash, prefix): (String, String) =
        sqlx::query_as("SELECT key_hash, key_prefix FROM api_keys WHERE id = $1")
            .bind(f.key_id)
            .fetch_one(&db.pool)
            .await
            .expect("key row");
    assert_eq!(hash, KeyHash::of(&f.key_secret).to_hex());
    assert!(f.key_secret.starts_with(&prefix));
    assert_eq!(prefix.len(), wharf::keys::KEY_PREFIX.len() + 4);
    let row_text: String = sqlx::query_scalar("SELECT row_to_json(k)::text FROM api_keys k")
        .fetch_one(&db.pool)
        .await
        .expect("row text");
    assert!(!row_text.contains(&f.key_secret));

    let k = load::load_key(&db.pool, &KeyHash::of(&f.key_secret))
        .await
        .expect("load key")
        .expect("key exists");
    assert_eq!(k.id, f.key_id.to_string());
    assert_eq!(k.organisation_id, f.org.to_string());
    assert_eq!(k.kind, KeyType::Organisation);
    assert_eq!(k.name.as_deref(), Some("backend"));
    assert_eq!(k.prefix.as_deref(), Some(prefix.as_str()));
    assert_eq!(k.team_id, None);
    assert_eq!(k.user_id, None);
    assert_eq!(k.expires_at, None);
    assert!(!k.revoked);
    assert!(!k.all_models);
    assert_eq!(k.models, ["gpt-mini".to_string()].into_iter().collect());
    assert!(k.may_use("gpt-mini"));
    assert!(!k.may_use("embed"));

    // Unknown hash: no key.
    let none = load::load_key(&db.pool, &KeyHash::of("wharf_sk_not-a-key"))
        .await
        .expect("load unknown key");
    assert!(none.is_none());

    // A key with no grant at all.
    let (_, bare) = seed::create_api_key(
        &db.pool,
        f.org,
        KeyType::Organisation,
        None,
        None,
        "bare",
        &[],
    )
    .await
    .expect("bare key");
    let bare = load::load_key(&db.pool, &KeyHash::of(&bare))
        .await
        .expect("load bare")
        .expect("bare exists");
    assert!(bare.models.is_empty());
    assert!(!bare.may_use("gpt-mini"));
}

#[tokio::test]
async fn revoked_and_expiring_keys() {
    let db = TestDb::migrated().await;
    let keys = master(&[("k1", 1)]);
    let f = fixture(&db.pool, &keys).await;
    let hash = KeyHash::of(&f.key_secret);

    let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    seed::set_api_key_expiry(&db.pool, f.key_id, Some(expiry))
        .await
        .expect("set expiry");
    let k = load::load_key(&db.pool, &hash)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(k.expires_at, Some(expiry.unix_timestamp()));
    assert!(!k.revoked);

    let past = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    seed::set_api_key_expiry(&db.pool, f.key_id, Some(past))
        .await
        .expect("set past expiry");
    let k = load::load_key(&db.pool, &hash)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(k.expires_at, Some(past.unix_timestamp()));

    seed::revoke_api_key(&db.pool, f.key_id)
        .await
        .expect("revoke");
    let first: Option<time::OffsetDateTime> =
        sqlx::query_scalar("SELECT revoked_at FROM api_keys WHERE id = $1")
            .bind(f.key_id)
            .fetch_one(&db.pool)
            .await
            .expect("revoked_at");
    // Revoking again is harmless and keeps the first revocation time.
    seed::revoke_api_key(&db.pool, f.key_id)
        .await
        .expect("revoke again");
    let again: Option<time::OffsetDateTime> =
        sqlx::query_scalar("SELECT revoked_at FROM api_keys WHERE id = $1")
            .bind(f.key_id)
            .fetch_one(&db.pool)
            .await
            .expect("revoked_at");
    assert!(first.is_some());
    assert_eq!(first, again);
    let k = load::load_key(&db.pool, &hash)
        .await
        .expect("load")
        .expect("a revoked key is still found");
    assert!(k.revoked);
    assert!(k.may_use("gpt-mini"), "grants stay attached");

    let missing = Uuid::new_v4();
    assert!(matches!(
        seed::revoke_api_key(&db.pool, missing).await,
        Err(LoadError::NotFound { id, .. }) if id == missing
    ));
    assert!(matches!(
        seed::set_api_key_expiry(&db.pool, missing, None).await,
        Err(LoadError::NotFound { .. })
    ));
}

#[tokio::test]
async fn team_and_user_keys_and_grant_checks() {
    let db = TestDb::migrated().await;
    let keys = master(&[("k1", 1)]);
    let f = fixture(&db.pool, &keys).await;
    let team: Uuid = sqlx::query_scalar(
        "INSERT INTO teams (organisation_id, name) VALUES ($1, 'ml') RETURNING id",
    )
    .bind(f.org)
    .fetch_one(&db.pool)
    .await
    .expect("team");
    let user: Uuid = sqlx::query_scalar(
        "INSERT INTO users (organisation_id, email) VALUES ($1, 'a@example.com') RETURNING id",
    )
    .bind(f.org)
    .fetch_one(&db.pool)
    .await
    .expect("user");

    let (_, team_secret) = seed::create_api_key(
        &db.pool,
        f.org,
        KeyType::Team,
        Some(team),
        None,
        "team key",
        &[f.chat, f.embed, f.chat],
    )
    .await
    .expect("team key");
    let k = load::load_key(&db.pool, &KeyHash::of(&team_secret))
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(k.kind, KeyType::Team);
    assert_eq!(k.team_id, Some(team.to_string()));
    assert_eq!(k.user_id, None);
    assert!(k.may_use("gpt-mini") && k.may_use("embed"));

    let (_, user_secret) = seed::create_api_key(
        &db.pool,
        f.org,
        KeyType::User,
        Some(team),
        Some(user),
        "user key",
        &[f.embed],
    )
    .await
    .expect("user key");
    let k = load::load_key(&db.pool, &KeyHash::of(&user_secret))
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(k.kind, KeyType::User);
    assert_eq!(k.user_id, Some(user.to_string()));
    assert_eq!(k.team_id, Some(team.to_string()));

    // Owner rules are checked before writing.
    for (kind, t, u) in [
        (KeyType::Team, None, None),
        (KeyType::User, Some(team), None),
        (KeyType::Organisation, Some(team), None),
    ] {
        assert!(
            matches!(
                seed::create_api_key(&db.pool, f.org, kind, t, u, "x", &[]).await,
                Err(LoadError::Invalid { .. })
            ),
            "{kind:?}"
        );
    }

    // A key cannot be granted another organisation's model.
    let other = seed::create_organisation(&db.pool, "Acme Corp")
        .await
        .expect("second org with the same name");
    assert_ne!(other, f.org);
    let err = seed::create_api_key(
        &db.pool,
        other,
        KeyType::Organisation,
        None,
        None,
        "sneaky",
        &[f.chat],
    )
    .await
    .expect_err("foreign model");
    assert!(err.to_string().contains(&f.chat.to_string()), "{err}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE organisation_id = $1")
        .bind(other)
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(count, 0, "nothing written for a refused key");
}

#[tokio::test]
async fn same_model_name_in_two_organisations_resolves_separately() {
    let db = TestDb::migrated().await;
    let keys = master(&[("k1", 1)]);
    let mut ids = Vec::new();
    for (org_name, url, secret, slug) in [
        (
            "Alpha",
            "https://alpha.example.com",
            "sk-alpha-secret-00001111",
            "gpt-4o",
        ),
        (
            "Beta",
            "http://10.0.0.7:8000/openai",
            "sk-beta-secret-22223333",
            "llama-3",
        ),
    ] {
        let org = seed::create_organisation(&db.pool, org_name)
            .await
            .expect("org");
        let provider = seed::create_provider(
            &db.pool,
            org,
            "main",
            ProviderKind::OpenAi,
            url,
            &keys,
            Some(secret),
        )
        .await
        .expect("provider");
        seed::create_model(
            &db.pool,
            org,
            "assistant",
            slug,
            ModelType::Chat,
            provider,
            pricing(1, 2, 1, 2),
        )
        .await
        .expect("model");
        ids.push(org.to_string());
    }
    let cat = load::load_catalog(&db.pool, &keys).await.expect("catalog");
    assert!(cat.warnings.is_empty(), "{:?}", cat.warnings);
    assert_eq!(cat.providers.len(), 2);
    assert_eq!(cat.model_count(), 2);

    let a = cat.model(&ids[0], "assistant").expect("alpha model");
    let b = cat.model(&ids[1], "assistant").expect("beta model");
    assert_eq!(a.slug, "gpt-4o");
    assert_eq!(b.slug, "llama-3");
    assert_eq!(
        a.provider.api_key.as_ref().map(|s| s.expose()),
        Some("sk-alpha-secret-00001111")
    );
    assert_eq!(
        b.provider.api_key.as_ref().map(|s| s.expose()),
        Some("sk-beta-secret-22223333")
    );
    assert!(a.provider.tls);
    assert_eq!(a.provider.authority, "alpha.example.com");
    assert_eq!(a.provider.base_path, "/v1");
    assert!(
        a.provider.addrs.load().is_empty(),
        "host names resolve later"
    );
    assert_eq!(b.provider.authority, "10.0.0.7:8000");
    assert_eq!(b.provider.base_path, "/openai");
    assert_eq!(cat.models_of(&ids[0]).len(), 1);
    assert_eq!(cat.models_of(&ids[1]).len(), 1);
    assert!(std::ptr::eq(cat.models_of(&ids[1])[0].as_ref(), b.as_ref()));
    let parts = cat.into_parts();
    assert_eq!(parts.models.len(), 2);
    assert_eq!(
        parts.models[&format!("{}/assistant", ids[0])].slug,
        "gpt-4o"
    );
    assert_eq!(
        parts.models[&format!("{}/assistant", ids[1])].slug,
        "llama-3"
    );
}

#[tokio::test]
async fn undecryptable_credentials_load_without_credential_and_warn() {
    let db = TestDb::migrated().await;
    let old = master(&[("old", 1)]);
    let f = fixture(&db.pool, &old).await;
    let org = f.org.to_string();
    // A second provider sealed under a key that stays configured.
    let rotated = master(&[("old", 1), ("new", 2)]);
    let anthropic = seed::create_provider(
        &db.pool,
        f.org,
        "claude",
        ProviderKind::Anthropic,
        "https://api.anthropic.com",
        &rotated,
        Some("sk-ant-fine-44445555"),
    )
    .await
    .expect("anthropic provider");
    let envelope: serde_json::Value =
        sqlx::query_scalar("SELECT envelope FROM provider_api_keys WHERE provider_id = $1")
            .bind(anthropic)
            .fetch_one(&db.pool)
            .await
            .expect("envelope");
    assert_eq!(
        envelope["key_id"], "new",
        "new envelopes use the newest key"
    );

    // Rotation: the set that still lists the old key reads both.
    let cat = load::load_catalog(&db.pool, &rotated)
        .await
        .expect("catalog");
    assert!(cat.warnings.is_empty(), "{:?}", cat.warnings);
    assert_eq!(
        cat.provider(&org, "openai")
            .and_then(|p| p.api_key.as_ref())
            .map(|s| s.expose()),
        Some(SECRET)
    );
    let claude = cat.provider(&org, "claude").expect("claude");
    assert_eq!(claude.auth_header.as_str(), "x-api-key");
    assert_eq!(claude.authority, "api.anthropic.com");

    // The old key dropped: the openai envelope names a key that is no longer configured.
    let only_new = master(&[("new", 2)]);
    let cat = load::load_catalog(&db.pool, &only_new)
        .await
        .expect("catalog loads despite an undecryptable credential");
    let openai = cat.provider(&org, "openai").expect("provider still loaded");
    assert!(openai.api_key.is_none());
    assert_eq!(
        cat.model(&org, "gpt-mini")
            .map(|m| m.provider.api_key.is_none()),
        Some(true)
    );
    assert_eq!(cat.warnings.len(), 1, "{:?}", cat.warnings);
    let w = &cat.warnings[0];
    assert!(w.contains("`openai`"), "{w}");
    assert!(w.contains("master key `old`"), "{w}");
    assert!(w.contains("provider_api_key_not_configured"), "{w}");
    assert!(!w.contains(SECRET), "{w}");
    assert!(
        cat.provider(&org, "claude")
            .and_then(|p| p.api_key.as_ref())
            .is_some(),
        "other providers keep their credential"
    );

    // A tampered envelope: also loaded without credential, with a warning.
    sqlx::query(
        "UPDATE provider_api_keys
            SET envelope = jsonb_set(envelope, '{ciphertext}', to_jsonb('AAAAAAAAAAAAAAAAAAAAAAAAAAAA'::text))
          WHERE provider_id = $1",
    )
    .bind(anthropic)
    .execute(&db.pool)
    .await
    .expect("tamper");
    let cat = load::load_catalog(&db.pool, &rotated)
        .await
        .expect("catalog");
    assert!(cat
        .provider(&org, "claude")
        .map(|p| p.api_key.is_none())
        .unwrap_or(false));
    assert_eq!(cat.warnings.len(), 1, "{:?}", cat.warnings);
    assert!(cat.warnings[0].contains("`claude`"), "{:?}", cat.warnings);
    assert!(
        cat.warnings[0].contains("does not open"),
        "{:?}",
        cat.warnings
    );

    // Garbage that is not an envelope at all (the schema only checks the field names).
    sqlx::query(
        "UPDATE provider_api_keys
            SET envelope = '{\"v\": 1, \"alg\": \"rot13\", \"key_id\": 7, \"nonce\": 1, \"ciphertext\": null}'
          WHERE provider_id = $1",
    )
    .bind(anthropic)
    .execute(&db.pool)
    .await
    .expect("garbage envelope");
    let cat = load::load_catalog(&db.pool, &rotated)
        .await
        .expect("catalog");
    assert!(cat
        .provider(&org, "claude")
        .map(|p| p.api_key.is_none())
        .unwrap_or(false));
    assert_eq!(cat.warnings.len(), 1, "{:?}", cat.warnings);
}

#[tokio::test]
async fn provider_rows_map_like_the_toml_file() {
    let db = TestDb::migrated().await;
    let keys = master(&[("k1", 1)]);
    let org = seed::create_organisation(&db.pool, "Gamma")
        .await
        .expect("org");
    let org_s = org.to_string();
    // No credential at all (e.g. a local vLLM): loaded, no warning.
    let vllm = seed::create_provider(
        &db.pool,
        org,
        "local",
        ProviderKind::Vllm,
        "http://[::1]:8000",
        &keys,
        None,
    )
    .await
    .expect("vllm provider");
    let azure = seed::create_provider(
        &db.pool,
        org,
        "azure",
        ProviderKind::AzureOpenAi,
        "https://x.openai.azure.com",
        &keys,
        Some("azure-key-0000000000001234"),
    )
    .await
    .expect("azure provider");
    sqlx::query(
        "UPDATE providers
            SET options = '{\"api_version\": \"2024-10-21\", \"connect_timeout_ms\": 250, \"idle_timeout_ms\": 9000}',
                extra_headers = '{\"X-Tenant\": \"gamma\"}', timeout_ms = 1500, enabled = false
          WHERE id = $1",
    )
    .bind(azure)
    .execute(&db.pool)
    .await
    .expect("provider options");
    let google = seed::create_provider(
        &db.pool,
        org,
        "gemini",
        ProviderKind::Google,
        "https://generativelanguage.googleapis.com",
        &keys,
        Some("AIzaSy-0000000000000000abcd"),
    )
    .await
    .expect("google provider");
    // A row the TOML file would reject: skipped with a warning, and so is its model.
    seed::create_model(
        &db.pool,
        org,
        "flash",
        "gemini-2.0-flash",
        ModelType::Chat,
        google,
        pricing(1, 1, 1, 1),
    )
    .await
    .expect("model");
    sqlx::query("UPDATE providers SET extra_headers = '{\"Bad Header\": \"x\"}' WHERE id = $1")
        .bind(google)
        .execute(&db.pool)
        .await
        .expect("bad header");

    let cat = load::load_catalog(&db.pool, &keys).await.expect("catalog");
    let local = cat.provider_by_id(vllm).expect("vllm");
    assert!(local.api_key.is_none());
    assert_eq!(local.host, "[::1]");
    assert_eq!(local.base_path, "/v1");
    assert_eq!(local.addrs.load().len(), 1, "IP literal resolved at once");
    let az = cat.provider(&org_s, "azure").expect("azure");
    assert_eq!(az.base_path, "");
    assert_eq!(az.auth_header.as_str(), "api-key");
    assert_eq!(az.api_version.as_deref(), Some("2024-10-21"));
    assert_eq!(az.read_timeout, Duration::from_millis(1500));
    assert_eq!(az.connect_timeout, Duration::from_millis(250));
    assert_eq!(az.idle_timeout, Duration::from_millis(9000));
    assert!(!az.enabled);
    assert_eq!(az.headers.len(), 1);
    assert_eq!(az.headers[0].0.as_str(), "x-tenant");
    assert_eq!(az.headers[0].1, "gamma");
    assert!(cat.provider(&org_s, "gemini").is_none());
    assert!(cat.model(&org_s, "flash").is_none());
    assert_eq!(cat.warnings.len(), 2, "{:?}", cat.warnings);
    assert!(cat.warnings[0].contains("`gemini`"), "{:?}", cat.warnings);
    assert!(
        cat.warnings[0].contains("extra_headers"),
        "{:?}",
        cat.warnings
    );
    assert!(cat.warnings[1].contains("`flash`"), "{:?}", cat.warnings);

    // The create helpers refuse what would not load, before writing anything.
    for (name, url) in [
        ("bad name", "http://x"),
        ("ok", "http://"),
        ("ok", "http://x/?a=b"),
    ] {
        assert!(
            matches!(
                seed::create_provider(&db.pool, org, name, ProviderKind::Custom, url, &keys, None)
                    .await,
                Err(LoadError::Invalid { .. })
            ),
            "{name} {url}"
        );
    }
    assert!(matches!(
        seed::create_model(
            &db.pool,
            org,
            "has space",
            "s",
            ModelType::Chat,
            vllm,
            pricing(0, 0, 0, 0)
        )
        .await,
        Err(LoadError::Invalid { .. })
    ));
    // Organisation-level switch.
    sqlx::query("UPDATE organisations SET enabled = false WHERE id = $1")
        .bind(org)
        .execute(&db.pool)
        .await
        .expect("disable org");
    let cat = load::load_catalog(&db.pool, &keys).await.expect("catalog");
    assert!(!cat.organisation_enabled(&org_s));
}

#[tokio::test]
async fn a_model_pinned_to_another_credential_uses_it() {
    let db = TestDb::migrated().await;
    let keys = master(&[("k1", 1)]);
    let f = fixture(&db.pool, &keys).await;
    let org = f.org.to_string();
    // A second, older credential for the same provider, pinned by the embeddings model.
    let pinned: Uuid = sqlx::query_scalar(
        "INSERT INTO provider_api_keys (organisation_id, provider_id, name, envelope, preview, created_at)
         VALUES ($1, $2, 'batch', $3, 'sk-…9999', now() - interval '1 day') RETURNING id",
    )
    .bind(f.org)
    .bind(f.provider)
    .bind(keys.encrypt("sk-batch-000000009999").expect("encrypt"))
    .fetch_one(&db.pool)
    .await
    .expect("second credential");
    sqlx::query("UPDATE models SET provider_api_key_id = $1 WHERE id = $2")
        .bind(pinned)
        .bind(f.embed)
        .execute(&db.pool)
        .await
        .expect("pin");

    let cat = load::load_catalog(&db.pool, &keys).await.expect("catalog");
    assert!(cat.warnings.is_empty(), "{:?}", cat.warnings);
    let chat = cat.model(&org, "gpt-mini").expect("chat");
    let embed = cat.model(&org, "embed").expect("embed");
    assert_eq!(
        chat.provider.api_key.as_ref().map(|s| s.expose()),
        Some(SECRET),
        "unpinned models use the newest active credential"
    );
    assert_eq!(
        embed.provider.api_key.as_ref().map(|s| s.expose()),
        Some("sk-batch-000000009999")
    );
    assert_eq!(embed.provider.name, "openai");
    assert_eq!(cat.providers.len(), 2, "the pinned instance is listed too");

    // Revoking the pinned credential leaves that model without one, with a warning.
    sqlx::query(
        "UPDATE provider_api_keys SET status = 'REVOKED', revoked_at = now() WHERE id = $1",
    )
    .bind(pinned)
    .execute(&db.pool)
    .await
    .expect("revoke credential");
    let cat = load::load_catalog(&db.pool, &keys).await.expect("catalog");
    assert!(cat
        .model(&org, "embed")
        .map(|m| m.provider.api_key.is_none())
        .unwrap_or(false));
    assert_eq!(cat.warnings.len(), 1, "{:?}", cat.warnings);
    assert!(cat.warnings[0].contains("revoked"), "{:?}", cat.warnings);
}

#[test]
fn organisation_slugs() {
    assert_eq!(seed::slugify("Acme Corp."), "acme-corp");
    assert_eq!(seed::slugify("  --Ünï  "), "n");
    assert_eq!(seed::slugify("***"), "org");
}
