//! Secret maintenance against a real Postgres (`wharf::db::secrets`): master-key rotation of
//! the encrypted envelopes, virtual key rotation and unrevocation.
//!
//! Every test creates its own migrated database (see `common::db::TestDb`); a missing
//! Postgres fails the tests, they never skip.

mod common;

use common::seed;

use common::db::TestDb;
use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;
use wharf::config::{KeyType, ModelType, Pricing, ProviderKind};
use wharf::db::crypto::MasterKeys;
use wharf::db::load::{self, DISPLAY_PREFIX_LEN};
use wharf::db::secrets::{self, RotateReport, SecretsError};
use wharf::keys::{KeyHash, KEY_PREFIX};

/// Two master keys: `k1` (old) and `k2` (new), as `WHARF_MASTER_KEYS` entries.
struct Keys {
    k1: String,
    k2: String,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            k1: format!("k1:{}", MasterKeys::generate_key()),
            k2: format!("k2:{}", MasterKeys::generate_key()),
        }
    }
    fn old(&self) -> MasterKeys {
        MasterKeys::parse(&self.k1).expect("k1")
    }
    fn both(&self) -> MasterKeys {
        MasterKeys::parse(&format!("{},{}", self.k1, self.k2)).expect("k1,k2")
    }
    fn new_only(&self) -> MasterKeys {
        MasterKeys::parse(&self.k2).expect("k2")
    }
}

async fn envelope_of(pool: &PgPool, id: Uuid) -> Value {
    sqlx::query_scalar("SELECT envelope FROM provider_api_keys WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("envelope")
}

async fn provider_key_ids(pool: &PgPool, provider: Uuid) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT id FROM provider_api_keys WHERE provider_id = $1 ORDER BY id")
        .bind(provider)
        .fetch_all(pool)
        .await
        .expect("provider key ids")
}

async fn add_provider_key(pool: &PgPool, org: Uuid, provider: Uuid, envelope: &Value) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO provider_api_keys (organisation_id, provider_id, name, envelope, preview)
         VALUES ($1, $2, $3, $4, '…') RETURNING id",
    )
    .bind(org)
    .bind(provider)
    .bind(format!("extra-{}", Uuid::new_v4().simple()))
    .bind(envelope)
    .fetch_one(pool)
    .await
    .expect("insert provider key")
}

async fn add_mcp_server(pool: &PgPool, org: Uuid, slug: &str, env: &Value, auth: &Value) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO mcp_servers (organisation_id, name, slug, transport, url, env, auth_type, auth_config)
         VALUES ($1, $2, $2, 'STREAMABLE_HTTP', 'https://mcp.example.com/mcp', $3, 'BEARER', $4)
         RETURNING id",
    )
    .bind(org)
    .bind(slug)
    .bind(env)
    .bind(auth)
    .fetch_one(pool)
    .await
    .expect("insert MCP server")
}

async fn mcp_secrets(pool: &PgPool, id: Uuid) -> (Value, Value) {
    sqlx::query_as("SELECT env, auth_config FROM mcp_servers WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("MCP server")
}

fn open(keys: &MasterKeys, envelope: &Value) -> String {
    keys.decrypt(envelope)
        .expect("envelope opens")
        .expose()
        .to_string()
}

fn tamper(envelope: &Value) -> Value {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut ct = b64
        .decode(envelope["ciphertext"].as_str().expect("ciphertext"))
        .expect("base64");
    ct[0] ^= 1;
    let mut bad = envelope.clone();
    bad["ciphertext"] = json!(b64.encode(ct));
    bad
}

#[tokio::test]
async fn rotate_envelopes_reseals_everything_under_the_newest_key() {
    let t = TestDb::new(true).await;
    let p = &t.pool;
    let keys = Keys::new();
    let old = keys.old();

    let org_a = seed::create_organisation(p, "Acme").await.expect("org");
    let org_b = seed::create_organisation(p, "Globex").await.expect("org");
    let openai = seed::create_provider(
        p,
        org_a,
        "openai",
        ProviderKind::OpenAi,
        "https://api.openai.com",
        &old,
        Some("sk-proj-acme-0123456789abcdefWXYZ"),
    )
    .await
    .expect("provider");
    let anthropic = seed::create_provider(
        p,
        org_b,
        "anthropic",
        ProviderKind::Anthropic,
        "https://api.anthropic.com",
        &old,
        Some("sk-ant-globex-0123456789abcd"),
    )
    .await
    .expect("provider");
    let extra = add_provider_key(
        p,
        org_a,
        openai,
        &old.encrypt("sk-second-acme-credential").expect("encrypt"),
    )
    .await;
    // Already under the newest key: left alone.
    let current_envelope = keys.both().encrypt("sk-already-new").expect("encrypt");
    let current = add_provider_key(p, org_b, anthropic, &current_envelope).await;
    let mcp = add_mcp_server(
        p,
        org_a,
        "tools",
        &json!({
            "API_TOKEN": old.encrypt("mcp-env-token").expect("encrypt"),
            "MODE": "plain, not a secret",
        }),
        &json!({"token": old.encrypt("mcp-bearer-token").expect("encrypt")}),
    )
    .await;
    let previews: Vec<String> =
        sqlx::query_scalar("SELECT preview FROM provider_api_keys ORDER BY id")
            .fetch_all(p)
            .await
            .expect("previews");

    let report = secrets::rotate_envelopes(p, &keys.both())
        .await
        .expect("rotate");
    assert_eq!(
        report,
        RotateReport {
            rotated: 5,
            already_current: 1,
            failed: vec![],
            errors: vec![],
        },
        "{report}"
    );
    assert!(report.is_complete());

    // Every envelope is now under k2 and opens with k2 alone.
    let envelopes: Vec<(Uuid, Value)> =
        sqlx::query_as("SELECT id, envelope FROM provider_api_keys ORDER BY id")
            .fetch_all(p)
            .await
            .expect("envelopes");
    assert_eq!(envelopes.len(), 4);
    for (id, envelope) in &envelopes {
        assert_eq!(envelope["key_id"], "k2", "provider key {id}");
    }
    let k2 = keys.new_only();
    assert_eq!(
        open(&k2, &envelope_of(p, extra).await),
        "sk-second-acme-credential"
    );
    assert_eq!(envelope_of(p, current).await, current_envelope);
    assert_eq!(open(&k2, &envelope_of(p, current).await), "sk-already-new");
    let (env, auth) = mcp_secrets(p, mcp).await;
    assert_eq!(env["API_TOKEN"]["key_id"], "k2");
    assert_eq!(open(&k2, &env["API_TOKEN"]), "mcp-env-token");
    assert_eq!(env["MODE"], "plain, not a secret");
    assert_eq!(auth["token"]["key_id"], "k2");
    assert_eq!(open(&k2, &auth["token"]), "mcp-bearer-token");
    // Previews are untouched.
    let after: Vec<String> =
        sqlx::query_scalar("SELECT preview FROM provider_api_keys ORDER BY id")
            .fetch_all(p)
            .await
            .expect("previews");
    assert_eq!(after, previews);

    // The gateway's loader reads the credentials with the new key alone.
    let catalog = load::load_catalog(p, &k2).await.expect("catalog");
    assert!(catalog.warnings.is_empty(), "{:?}", catalog.warnings);
    let first_openai = provider_key_ids(p, openai).await;
    assert_eq!(first_openai.len(), 2);
    let a = catalog
        .provider(&org_a.to_string(), "openai")
        .expect("openai provider");
    let a_key = a.api_key.as_ref().expect("openai credential").expose();
    assert!(
        a_key == "sk-proj-acme-0123456789abcdefWXYZ" || a_key == "sk-second-acme-credential",
        "unexpected credential"
    );
    let b = catalog
        .provider(&org_b.to_string(), "anthropic")
        .expect("anthropic provider");
    assert!(b.api_key.is_some());

    // Nothing left to do the second time.
    let again = secrets::rotate_envelopes(p, &keys.both())
        .await
        .expect("rotate again");
    assert_eq!(
        again,
        RotateReport {
            rotated: 0,
            already_current: 6,
            failed: vec![],
            errors: vec![],
        }
    );
    // And the rows were not rewritten.
    assert_eq!(open(&k2, &envelope_of(p, current).await), "sk-already-new");
}

#[tokio::test]
async fn rotate_envelopes_reports_what_cannot_be_opened_and_rotates_the_rest() {
    let t = TestDb::new(true).await;
    let p = &t.pool;
    let keys = Keys::new();
    let old = keys.old();

    let org = seed::create_organisation(p, "Initech").await.expect("org");
    let provider = seed::create_provider(
        p,
        org,
        "openai",
        ProviderKind::OpenAi,
        "https://api.openai.com",
        &old,
        Some("sk-good-credential-0001"),
    )
    .await
    .expect("provider");
    let good = provider_key_ids(p, provider).await[0];
    let corrupted_envelope = tamper(&old.encrypt("sk-corrupted").expect("encrypt"));
    let corrupted = add_provider_key(p, org, provider, &corrupted_envelope).await;
    let stranger = MasterKeys::parse(&format!("k0:{}", MasterKeys::generate_key())).expect("k0");
    let unknown_envelope = stranger.encrypt("sk-unknown-key").expect("encrypt");
    let unknown = add_provider_key(p, org, provider, &unknown_envelope).await;
    let another = add_provider_key(
        p,
        org,
        provider,
        &old.encrypt("sk-another-good").expect("encrypt"),
    )
    .await;
    let bad_nested = tamper(&old.encrypt("mcp-corrupted").expect("encrypt"));
    let mcp = add_mcp_server(
        p,
        org,
        "half-broken",
        &json!({"GOOD": old.encrypt("mcp-good").expect("encrypt"), "BAD": bad_nested}),
        &json!({}),
    )
    .await;

    let report = secrets::rotate_envelopes(p, &keys.both())
        .await
        .expect("rotate");
    assert_eq!(report.rotated, 3, "{report}");
    assert_eq!(report.already_current, 0, "{report}");
    let mut failed = report.failed.clone();
    failed.sort_unstable();
    let mut expected = vec![corrupted.to_string(), unknown.to_string(), mcp.to_string()];
    expected.sort_unstable();
    assert_eq!(failed, expected);
    assert!(!report.is_complete());
    assert_eq!(report.errors.len(), 3, "{report}");
    let text = report.to_string();
    for id in &expected {
        assert!(text.contains(id.as_str()), "{text}");
    }
    assert!(text.contains("env.BAD"), "{text}");
    assert!(text.contains("k0"), "{text}");
    for secret in [
        "sk-corrupted",
        "sk-unknown-key",
        "mcp-corrupted",
        "mcp-good",
    ] {
        assert!(!text.contains(secret), "{text}");
    }

    // The failed envelopes are left exactly as they were; the others are rotated.
    assert_eq!(envelope_of(p, corrupted).await, corrupted_envelope);
    assert_eq!(envelope_of(p, unknown).await, unknown_envelope);
    let k2 = keys.new_only();
    assert_eq!(
        open(&k2, &envelope_of(p, good).await),
        "sk-good-credential-0001"
    );
    assert_eq!(open(&k2, &envelope_of(p, another).await), "sk-another-good");
    let (env, _) = mcp_secrets(p, mcp).await;
    assert_eq!(open(&k2, &env["GOOD"]), "mcp-good");
    assert_eq!(env["BAD"], bad_nested);

    // A second run rotates nothing more and still reports the broken rows.
    let again = secrets::rotate_envelopes(p, &keys.both())
        .await
        .expect("rotate again");
    assert_eq!(again.rotated, 0);
    assert_eq!(again.already_current, 3);
    let mut failed = again.failed;
    failed.sort_unstable();
    assert_eq!(failed, expected);
}

/// The next `api_keys` change notification.
async fn next_api_key_change(listener: &mut PgListener) -> Value {
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .expect("a notification within 5 s")
            .expect("listener");
        let v: Value = serde_json::from_str(n.payload()).expect("JSON payload");
        if v["table"] == "api_keys" {
            return v;
        }
    }
}

#[tokio::test]
async fn rotate_api_key_keeps_the_id_and_records_history() {
    let t = TestDb::new(true).await;
    let p = &t.pool;
    let keys = Keys::new();
    let org = seed::create_organisation(p, "Umbrella").await.expect("org");
    let provider = seed::create_provider(
        p,
        org,
        "openai",
        ProviderKind::OpenAi,
        "https://api.openai.com",
        &keys.old(),
        Some("sk-provider"),
    )
    .await
    .expect("provider");
    let model = seed::create_model(
        p,
        org,
        "gpt-4o",
        "gpt-4o",
        ModelType::Chat,
        provider,
        Pricing::default(),
    )
    .await
    .expect("model");
    let (id, old_secret) =
        seed::create_api_key(p, org, KeyType::Organisation, None, None, "ci", &[model])
            .await
            .expect("api key");
    let old_hash = KeyHash::of(&old_secret);
    let old_prefix: String = old_secret.chars().take(DISPLAY_PREFIX_LEN).collect();

    let mut listener = PgListener::connect_with(p).await.expect("listener");
    listener.listen("wharf_config").await.expect("listen");

    let new_secret = secrets::rotate_api_key(p, id).await.expect("rotate");
    assert!(new_secret.starts_with(KEY_PREFIX));
    assert_ne!(new_secret, old_secret);
    let new_hash = KeyHash::of(&new_secret);
    assert_ne!(new_hash, old_hash);

    // Gateways are told both hashes so they evict both cache entries.
    let change = next_api_key_change(&mut listener).await;
    assert_eq!(change["op"], "UPDATE");
    assert_eq!(change["id"], id.to_string());
    assert_eq!(change["key_hash"], new_hash.to_hex());
    assert_eq!(change["old_key_hash"], old_hash.to_hex());

    assert!(load::load_key(p, &old_hash)
        .await
        .expect("load old")
        .is_none());
    let key = load::load_key(p, &new_hash)
        .await
        .expect("load new")
        .expect("the rotated key");
    assert_eq!(key.id, id.to_string());
    assert!(key.models.contains("gpt-4o"));
    assert_eq!(key.models.len(), 1);
    assert!(!key.revoked);
    let new_prefix: String = new_secret.chars().take(DISPLAY_PREFIX_LEN).collect();
    assert_eq!(key.prefix.as_deref(), Some(new_prefix.as_str()));

    let (stored_hash, rotated): (String, bool) =
        sqlx::query_as("SELECT key_hash, rotated_at IS NOT NULL FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_one(p)
            .await
            .expect("api key row");
    assert_eq!(stored_hash, new_hash.to_hex());
    assert!(rotated);

    let history: Vec<(Uuid, String, String, Option<String>)> = sqlx::query_as(
        "SELECT api_key_id, previous_prefix, previous_hash, rotated_by
           FROM api_key_history ORDER BY rotated_at, id",
    )
    .fetch_all(p)
    .await
    .expect("history");
    assert_eq!(history.len(), 1);
    let (key_id, masked, previous_hash, rotated_by) = &history[0];
    assert_eq!(*key_id, id);
    assert_eq!(*previous_hash, old_hash.to_hex());
    assert_eq!(*rotated_by, None);
    assert_eq!(*masked, format!("{old_prefix}…"));
    assert!(masked.chars().count() <= DISPLAY_PREFIX_LEN + 1);
    assert!(!masked.contains(&old_secret));
    assert!(!masked.contains(&new_secret));

    // Rotating again, naming who did it, adds a second row; the key keeps its id.
    let third = secrets::rotate_api_key_by(p, id, Some("admin@example.com"))
        .await
        .expect("rotate again");
    assert!(load::load_key(p, &new_hash).await.expect("load").is_none());
    let key = load::load_key(p, &KeyHash::of(&third))
        .await
        .expect("load")
        .expect("key");
    assert_eq!(key.id, id.to_string());
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT previous_hash, rotated_by FROM api_key_history WHERE api_key_id = $1
          ORDER BY rotated_at, previous_hash = $2 DESC",
    )
    .bind(id)
    .bind(old_hash.to_hex())
    .fetch_all(p)
    .await
    .expect("history");
    assert_eq!(rows.len(), 2);
    assert!(rows.contains(&(new_hash.to_hex(), Some("admin@example.com".to_string()))));

    // Grants are still attached to the same id.
    let grants: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_key_model_access WHERE api_key_id = $1")
            .bind(id)
            .fetch_one(p)
            .await
            .expect("grants");
    assert_eq!(grants, 1);

    // No key with this id.
    let missing = Uuid::new_v4();
    match secrets::rotate_api_key(p, missing).await {
        Err(SecretsError::NotFound { id, .. }) => assert_eq!(id, missing),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM api_key_history")
        .fetch_one(p)
        .await
        .expect("count");
    assert_eq!(n, 2);
}

#[tokio::test]
async fn unrevoke_restores_a_revoked_key() {
    let t = TestDb::new(true).await;
    let p = &t.pool;
    let org = seed::create_organisation(p, "Hooli").await.expect("org");
    let (id, secret) =
        seed::create_api_key(p, org, KeyType::Organisation, None, None, "batch", &[])
            .await
            .expect("api key");
    let hash = KeyHash::of(&secret);

    seed::revoke_api_key(p, id).await.expect("revoke");
    let key = load::load_key(p, &hash).await.expect("load").expect("key");
    assert!(key.revoked);

    // Rotating a revoked key keeps it revoked (the usual answer to a leak: revoke, rotate,
    // then unrevoke with the new secret).
    let new_secret = secrets::rotate_api_key(p, id).await.expect("rotate");
    let new_hash = KeyHash::of(&new_secret);
    let key = load::load_key(p, &new_hash)
        .await
        .expect("load")
        .expect("key");
    assert!(key.revoked);

    secrets::unrevoke_api_key(p, id).await.expect("unrevoke");
    let key = load::load_key(p, &new_hash)
        .await
        .expect("load")
        .expect("key");
    assert!(!key.revoked);
    assert_eq!(key.id, id.to_string());

    // Idempotent.
    secrets::unrevoke_api_key(p, id)
        .await
        .expect("unrevoke again");
    let key = load::load_key(p, &new_hash)
        .await
        .expect("load")
        .expect("key");
    assert!(!key.revoked);

    let missing = Uuid::new_v4();
    match secrets::unrevoke_api_key(p, missing).await {
        Err(SecretsError::NotFound { id, .. }) => assert_eq!(id, missing),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn rotate_command_reads_the_master_keys_and_checks_the_schema() {
    let t = TestDb::new(true).await;
    let keys = Keys::new();
    let org = seed::create_organisation(&t.pool, "Vandelay")
        .await
        .expect("org");
    let provider = seed::create_provider(
        &t.pool,
        org,
        "openai",
        ProviderKind::OpenAi,
        "https://api.openai.com",
        &keys.old(),
        Some("sk-vandelay-credential"),
    )
    .await
    .expect("provider");
    // The only test in this file that touches the environment.
    std::env::set_var(
        wharf::db::crypto::MASTER_KEYS_ENV,
        format!("{},{}", keys.k1, keys.k2),
    );
    let report = secrets::rotate_envelopes_at(&t.url())
        .await
        .expect("rotate");
    assert_eq!(report.rotated, 1);
    let id = provider_key_ids(&t.pool, provider).await[0];
    assert_eq!(
        open(&keys.new_only(), &envelope_of(&t.pool, id).await),
        "sk-vandelay-credential"
    );

    // An unmigrated database is refused before anything is touched.
    let empty = TestDb::new(false).await;
    match secrets::rotate_envelopes_at(&empty.url()).await {
        Err(SecretsError::Db(wharf::db::DbError::Outdated { .. })) => {}
        other => panic!("expected an outdated schema, got {other:?}"),
    }
}
