//! The Postgres schema (`migrations/`) and `wharf::db`, against a real server.
//!
//! Every test creates its own database (`wharf_test_<random>`) through a connection to
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`) and drops it at the end,
//! even when the test fails. A missing Postgres fails the tests; they never skip.

mod common;

use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use std::time::Duration;
use uuid::Uuid;
use wharf::db::{self, DbError};

use common::db::TestDb;

/// The SQLSTATE and constraint name of a failed statement.
fn sql_error<T: std::fmt::Debug>(r: Result<T, sqlx::Error>) -> (String, String) {
    match r {
        Err(sqlx::Error::Database(e)) => (
            e.code().map(|c| c.into_owned()).unwrap_or_default(),
            e.constraint().unwrap_or_default().to_string(),
        ),
        other => panic!("expected a database error, got {other:?}"),
    }
}

const UNIQUE_VIOLATION: &str = "23505";
const CHECK_VIOLATION: &str = "23514";
const FOREIGN_KEY_VIOLATION: &str = "23503";

fn hash(seed: &str) -> String {
    wharf::keys::KeyHash::of(seed).to_hex()
}

async fn org(pool: &PgPool, slug: &str) -> Uuid {
    sqlx::query_scalar("INSERT INTO organisations (name, slug) VALUES ($1, $1) RETURNING id")
        .bind(slug)
        .fetch_one(pool)
        .await
        .expect("insert organisation")
}

async fn team(pool: &PgPool, org: Uuid, name: &str) -> Uuid {
    sqlx::query_scalar("INSERT INTO teams (organisation_id, name) VALUES ($1, $2) RETURNING id")
        .bind(org)
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("insert team")
}

async fn user(pool: &PgPool, org: Uuid, email: &str) -> Uuid {
    sqlx::query_scalar("INSERT INTO users (organisation_id, email) VALUES ($1, $2) RETURNING id")
        .bind(org)
        .bind(email)
        .fetch_one(pool)
        .await
        .expect("insert user")
}

async fn insert_key(
    pool: &PgPool,
    org: Uuid,
    key_type: &str,
    team: Option<Uuid>,
    user: Option<Uuid>,
    secret: &str,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO api_keys (organisation_id, team_id, user_id, name, key_type, key_prefix, key_hash)
         VALUES ($1, $2, $3, 'key', $4::api_key_type, 'wharf_sk_ab', $5) RETURNING id",
    )
    .bind(org)
    .bind(team)
    .bind(user)
    .bind(key_type)
    .bind(hash(secret))
    .fetch_one(pool)
    .await
}

async fn insert_provider(
    pool: &PgPool,
    org: Uuid,
    kind: &str,
    name: &str,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO providers (organisation_id, name, provider_type, base_url)
         VALUES ($1, $2, $3::provider_type, 'https://api.example.com/v1') RETURNING id",
    )
    .bind(org)
    .bind(name)
    .bind(kind)
    .fetch_one(pool)
    .await
}

async fn insert_provider_key(pool: &PgPool, org: Uuid, provider: Uuid) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO provider_api_keys (organisation_id, provider_id, envelope, preview)
         VALUES ($1, $2, $3, 'sk-...abcd') RETURNING id",
    )
    .bind(org)
    .bind(provider)
    .bind(json!({"v": 1, "alg": "chacha20poly1305", "key_id": "k1", "nonce": "bm9uY2U=", "ciphertext": "Y2lwaGVy"}))
    .fetch_one(pool)
    .await
    .expect("insert provider key")
}

async fn insert_model(
    pool: &PgPool,
    org: Uuid,
    provider: Uuid,
    name: &str,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO models (organisation_id, provider_id, name, slug, model_type, input_price_nanos, output_price_nanos)
         VALUES ($1, $2, $3, 'gpt-4o-mini', 'chat', 150000000, 600000000) RETURNING id",
    )
    .bind(org)
    .bind(provider)
    .bind(name)
    .fetch_one(pool)
    .await
}

#[tokio::test]
async fn every_table_and_enum_exists() {
    let t = TestDb::migrated().await;
    let mut tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&t.pool)
    .await
    .expect("list tables");
    tables.retain(|n| n != "_sqlx_migrations");
    let mut expected = vec![
        "organisations",
        "users",
        "organisation_invitations",
        "teams",
        "team_members",
        "api_keys",
        "api_key_history",
        "providers",
        "provider_api_keys",
        "models",
        "model_deployments",
        "api_key_model_access",
        "mcp_servers",
        "api_key_mcp_access",
        "usage_rollups",
        "usage_records",
        "mcp_usage_records",
        "budgets",
        "budget_windows",
        "quotas",
        "quota_windows",
        "budget_requests",
        "budget_reservations",
        "quota_reservations",
        "admin_tokens",
        "filters",
        "console_sessions",
        "budget_topups",
        "console_one_time_views",
    ];
    expected.sort_unstable();
    assert_eq!(tables, expected);

    let enums: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT t.typname::text, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
         FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
         JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = 'public' GROUP BY t.typname ORDER BY 1",
    )
    .fetch_all(&t.pool)
    .await
    .expect("list enums");
    let get = |name: &str| -> Vec<String> {
        enums
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, labels)| labels.clone())
            .unwrap_or_else(|| panic!("enum {name} missing; have {enums:?}"))
    };
    assert_eq!(
        get("user_role"),
        ["SUPER_ADMIN", "ORG_ADMIN", "MANAGER", "USER"]
    );
    assert_eq!(get("api_key_type"), ["ORGANISATION", "TEAM", "USER"]);
    assert_eq!(
        get("provider_type"),
        [
            "OPENAI",
            "ANTHROPIC",
            "GOOGLE",
            "AZURE_OPENAI",
            "VLLM",
            "CUSTOM"
        ]
    );
    assert_eq!(
        get("model_type"),
        [
            "chat",
            "reasoning",
            "image",
            "embeddings",
            "audio",
            "moderation",
            "transcription",
            "tts"
        ]
    );
    assert_eq!(get("mcp_transport"), ["STREAMABLE_HTTP", "SSE", "STDIO"]);
    assert_eq!(get("mcp_auth_type"), ["NONE", "BEARER", "BASIC", "OAUTH2"]);
    assert_eq!(get("limit_scope"), ["ORG", "TEAM", "USER", "APIKEY"]);
    assert_eq!(
        get("limit_period"),
        ["DAILY", "WEEKLY", "MONTHLY", "QUARTERLY"]
    );
    assert_eq!(
        get("quota_metric"),
        [
            "REQUESTS",
            "TOKENS",
            "TOKENS_IN",
            "TOKENS_OUT",
            "ERRORS",
            "COST",
            "LATENCY_MS"
        ]
    );
    assert_eq!(
        get("reservation_state"),
        ["RESERVED", "SETTLED", "RELEASED", "EXPIRED"]
    );
    for name in [
        "user_status",
        "team_role",
        "provider_key_status",
        "usage_granularity",
        "budget_request_state",
    ] {
        assert!(!get(name).is_empty());
    }

    // The indexes the hot queries use.
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public'")
            .fetch_all(&t.pool)
            .await
            .expect("list indexes");
    for name in [
        "api_keys_key_hash_key",
        "models_organisation_name_key",
        "usage_records_request_id_key",
        "usage_records_org_created_idx",
        "usage_records_key_created_idx",
        "budget_windows_budget_start_key",
        "quota_windows_quota_start_key",
        "budget_reservations_expiry_idx",
        "quota_reservations_expiry_idx",
    ] {
        assert!(indexes.iter().any(|i| i == name), "index {name} missing");
    }
}

#[tokio::test]
async fn api_key_owner_rules() {
    let t = TestDb::migrated().await;
    let p = &t.pool;
    let o = org(p, "acme").await;
    let other = org(p, "other").await;
    let tm = team(p, o, "research").await;
    let other_team = team(p, other, "research").await;
    let u = user(p, o, "ada@example.com").await;

    let (code, constraint) = sql_error(insert_key(p, o, "TEAM", None, None, "a").await);
    assert_eq!(
        (code.as_str(), constraint.as_str()),
        (CHECK_VIOLATION, "api_keys_owner_check")
    );
    let (code, _) = sql_error(insert_key(p, o, "USER", Some(tm), None, "b").await);
    assert_eq!(code, CHECK_VIOLATION, "USER key without user_id");
    let (code, _) = sql_error(insert_key(p, o, "ORGANISATION", Some(tm), None, "c").await);
    assert_eq!(code, CHECK_VIOLATION, "ORGANISATION key with a team");

    insert_key(p, o, "TEAM", Some(tm), None, "d")
        .await
        .expect("TEAM key with its team");
    insert_key(p, o, "USER", Some(tm), Some(u), "e")
        .await
        .expect("USER key with its user and team");
    insert_key(p, o, "ORGANISATION", None, None, "f")
        .await
        .expect("ORGANISATION key");

    // A key cannot point at another organisation's team.
    let (code, _) = sql_error(insert_key(p, o, "TEAM", Some(other_team), None, "g").await);
    assert_eq!(code, FOREIGN_KEY_VIOLATION);

    // Hashes are unique and must be 64 lower-case hex characters.
    let (code, constraint) = sql_error(insert_key(p, other, "ORGANISATION", None, None, "f").await);
    assert_eq!(
        (code.as_str(), constraint.as_str()),
        (UNIQUE_VIOLATION, "api_keys_key_hash_key")
    );
    let bad = sqlx::query(
        "INSERT INTO api_keys (organisation_id, name, key_type, key_prefix, key_hash)
         VALUES ($1, 'k', 'ORGANISATION', 'x', 'not-a-hash')",
    )
    .bind(o)
    .execute(p)
    .await;
    assert_eq!(sql_error(bad).0, CHECK_VIOLATION);

    // The lookup the gateway does on every cache miss.
    let row = sqlx::query(
        "SELECT id, key_type::text AS key_type, team_id FROM api_keys WHERE key_hash = $1",
    )
    .bind(hash("d"))
    .fetch_one(p)
    .await
    .expect("key by hash");
    assert_eq!(row.get::<String, _>("key_type"), "TEAM");
    assert_eq!(row.get::<Option<Uuid>, _>("team_id"), Some(tm));
}

#[tokio::test]
async fn model_names_are_unique_per_organisation() {
    let t = TestDb::migrated().await;
    let p = &t.pool;
    let a = org(p, "a").await;
    let b = org(p, "b").await;
    let pa = insert_provider(p, a, "OPENAI", "openai")
        .await
        .expect("provider a");
    let pb = insert_provider(p, b, "OPENAI", "openai")
        .await
        .expect("provider b");

    insert_model(p, a, pa, "gpt-mini")
        .await
        .expect("first model");
    let (code, constraint) = sql_error(insert_model(p, a, pa, "gpt-mini").await);
    assert_eq!(
        (code.as_str(), constraint.as_str()),
        (UNIQUE_VIOLATION, "models_organisation_name_key")
    );
    insert_model(p, b, pb, "gpt-mini")
        .await
        .expect("the same name in another organisation");
    // Two names may share one slug.
    insert_model(p, a, pa, "gpt-mini-governed")
        .await
        .expect("second name, same slug");
    // A model cannot use another organisation's provider.
    assert_eq!(
        sql_error(insert_model(p, a, pb, "cross").await).0,
        FOREIGN_KEY_VIOLATION
    );
    // A model's provider key must belong to the model's provider.
    let pka = insert_provider_key(p, a, pa).await;
    let pa2 = insert_provider(p, a, "ANTHROPIC", "anthropic")
        .await
        .expect("second provider");
    let wrong = sqlx::query(
        "INSERT INTO models (organisation_id, provider_id, provider_api_key_id, name, slug)
         VALUES ($1, $2, $3, 'claude', 'claude-sonnet')",
    )
    .bind(a)
    .bind(pa2)
    .bind(pka)
    .execute(p)
    .await;
    assert_eq!(sql_error(wrong).0, FOREIGN_KEY_VIOLATION);
}

#[tokio::test]
async fn provider_type_is_unique_per_organisation() {
    let t = TestDb::migrated().await;
    let p = &t.pool;
    let a = org(p, "a").await;
    let b = org(p, "b").await;
    insert_provider(p, a, "OPENAI", "openai")
        .await
        .expect("first");
    let (code, constraint) = sql_error(insert_provider(p, a, "OPENAI", "openai-2").await);
    assert_eq!(
        (code.as_str(), constraint.as_str()),
        (UNIQUE_VIOLATION, "providers_organisation_type_key")
    );
    insert_provider(p, a, "ANTHROPIC", "anthropic")
        .await
        .expect("another type");
    insert_provider(p, b, "OPENAI", "openai")
        .await
        .expect("same type, other organisation");

    // Provider key envelopes must carry every field.
    let provider = insert_provider(p, a, "VLLM", "vllm").await.expect("vllm");
    let bad = sqlx::query(
        "INSERT INTO provider_api_keys (organisation_id, provider_id, envelope) VALUES ($1, $2, $3)",
    )
    .bind(a)
    .bind(provider)
    .bind(json!({"v": 1, "alg": "chacha20poly1305", "ciphertext": "x"}))
    .execute(p)
    .await;
    assert_eq!(sql_error(bad).0, CHECK_VIOLATION);
}

#[tokio::test]
async fn reservations_are_idempotent_by_request() {
    let t = TestDb::migrated().await;
    let p = &t.pool;
    let o = org(p, "acme").await;
    let budget: Uuid = sqlx::query_scalar(
        "INSERT INTO budgets (organisation_id, scope, scope_id, amount_nanos, period, warning_thresholds)
         VALUES ($1, 'ORG', $1, 5000000000, 'MONTHLY', '{50,80,100}') RETURNING id",
    )
    .bind(o)
    .fetch_one(p)
    .await
    .expect("budget");
    let window: Uuid = sqlx::query_scalar(
        "INSERT INTO budget_windows (budget_id, window_start, window_end)
         VALUES ($1, '2026-01-01T00:00:00Z', '2026-02-01T00:00:00Z') RETURNING id",
    )
    .bind(budget)
    .fetch_one(p)
    .await
    .expect("window");
    let dup_window = sqlx::query(
        "INSERT INTO budget_windows (budget_id, window_start, window_end)
         VALUES ($1, '2026-01-01T00:00:00Z', '2026-02-01T00:00:00Z')",
    )
    .bind(budget)
    .execute(p)
    .await;
    assert_eq!(
        sql_error(dup_window),
        (
            UNIQUE_VIOLATION.to_string(),
            "budget_windows_budget_start_key".to_string()
        )
    );

    sqlx::query(
        "INSERT INTO budget_requests (request_id, organisation_id, estimate_nanos, expires_at)
         VALUES ('req-1', $1, 1000, now() + interval '5 minutes')",
    )
    .bind(o)
    .execute(p)
    .await
    .expect("budget request");
    let reserve = "INSERT INTO budget_reservations (request_id, budget_id, window_id, amount_nanos, expires_at)
                   VALUES ('req-1', $1, $2, 1000, now() + interval '5 minutes')";
    sqlx::query(reserve)
        .bind(budget)
        .bind(window)
        .execute(p)
        .await
        .expect("first reservation");
    let again = sqlx::query(reserve)
        .bind(budget)
        .bind(window)
        .execute(p)
        .await;
    assert_eq!(
        sql_error(again),
        (
            UNIQUE_VIOLATION.to_string(),
            "budget_reservations_request_budget_key".to_string()
        )
    );
    let retried = sqlx::query(&format!(
        "{reserve} ON CONFLICT (request_id, budget_id) DO NOTHING"
    ))
    .bind(budget)
    .bind(window)
    .execute(p)
    .await
    .expect("idempotent retry");
    assert_eq!(retried.rows_affected(), 0);

    // Settling needs the actual amount; negative amounts are refused.
    let settle =
        sqlx::query("UPDATE budget_reservations SET state = 'SETTLED' WHERE request_id = 'req-1'")
            .execute(p)
            .await;
    assert_eq!(sql_error(settle).0, CHECK_VIOLATION);
    sqlx::query(
        "UPDATE budget_reservations SET state = 'SETTLED', actual_nanos = 800 WHERE request_id = 'req-1'",
    )
    .execute(p)
    .await
    .expect("settle");
    let negative = sqlx::query("UPDATE budget_windows SET used_nanos = -1 WHERE id = $1")
        .bind(window)
        .execute(p)
        .await;
    assert_eq!(sql_error(negative).0, CHECK_VIOLATION);

    // Quotas: the same idempotency rule.
    let quota: Uuid = sqlx::query_scalar(
        "INSERT INTO quotas (organisation_id, scope, scope_id, metric, limit_value, period)
         VALUES ($1, 'ORG', $1, 'TOKENS', 1000000, 'DAILY') RETURNING id",
    )
    .bind(o)
    .fetch_one(p)
    .await
    .expect("quota");
    let qwindow: Uuid = sqlx::query_scalar(
        "INSERT INTO quota_windows (quota_id, window_start, window_end)
         VALUES ($1, '2026-01-01T00:00:00Z', '2026-01-02T00:00:00Z') RETURNING id",
    )
    .bind(quota)
    .fetch_one(p)
    .await
    .expect("quota window");
    let qreserve =
        "INSERT INTO quota_reservations (request_id, quota_id, window_id, amount, expires_at)
                    VALUES ('req-1', $1, $2, 500, now() + interval '5 minutes')";
    sqlx::query(qreserve)
        .bind(quota)
        .bind(qwindow)
        .execute(p)
        .await
        .expect("quota reservation");
    let again = sqlx::query(qreserve)
        .bind(quota)
        .bind(qwindow)
        .execute(p)
        .await;
    assert_eq!(
        sql_error(again),
        (
            UNIQUE_VIOLATION.to_string(),
            "quota_reservations_request_quota_key".to_string()
        )
    );

    // The expiry worker's query finds the stale RESERVED rows only.
    sqlx::query("UPDATE quota_reservations SET expires_at = now() - interval '1 minute'")
        .execute(p)
        .await
        .expect("age the reservation");
    let stale: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM quota_reservations WHERE state = 'RESERVED' AND expires_at < now()",
    )
    .fetch_one(p)
    .await
    .expect("stale reservations");
    assert_eq!(stale, 1);

    // An ORG-scoped budget names its own organisation.
    let other = org(p, "other").await;
    let wrong_scope = sqlx::query(
        "INSERT INTO budgets (organisation_id, scope, scope_id, amount_nanos, period)
         VALUES ($1, 'ORG', $2, 1, 'DAILY')",
    )
    .bind(o)
    .bind(other)
    .execute(p)
    .await;
    assert_eq!(sql_error(wrong_scope).0, CHECK_VIOLATION);
}

async fn next_change(listener: &mut PgListener) -> Value {
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification within 5 s")
        .expect("listener works");
    assert_eq!(n.channel(), db::CONFIG_CHANNEL);
    let change = db::ConfigChange::parse(n.payload()).expect("payload parses as ConfigChange");
    assert!(!change.table.is_empty());
    serde_json::from_str(n.payload()).expect("payload is JSON")
}

#[tokio::test]
async fn config_changes_are_notified() {
    let t = TestDb::migrated().await;
    let p = &t.pool;
    let o = org(p, "acme").await;
    let provider = insert_provider(p, o, "OPENAI", "openai")
        .await
        .expect("provider");

    let mut listener = PgListener::connect_with(p).await.expect("listener");
    listener.listen(db::CONFIG_CHANNEL).await.expect("LISTEN");
    let org_id = o.to_string();

    // api_keys: the payload carries the hash so that a gateway can evict its cache entry.
    let key = insert_key(p, o, "ORGANISATION", None, None, "secret-1")
        .await
        .expect("key");
    assert_eq!(
        next_change(&mut listener).await,
        json!({"table": "api_keys", "op": "INSERT", "id": key.to_string(),
               "organisation_id": org_id, "key_hash": hash("secret-1"), "old_key_hash": null})
    );
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
        .bind(key)
        .execute(p)
        .await
        .expect("revoke");
    assert_eq!(
        next_change(&mut listener).await,
        json!({"table": "api_keys", "op": "UPDATE", "id": key.to_string(),
               "organisation_id": org_id, "key_hash": hash("secret-1"), "old_key_hash": null})
    );
    // Rotation: both the new and the replaced hash.
    sqlx::query("UPDATE api_keys SET key_hash = $2, rotated_at = now() WHERE id = $1")
        .bind(key)
        .bind(hash("secret-2"))
        .execute(p)
        .await
        .expect("rotate");
    assert_eq!(
        next_change(&mut listener).await,
        json!({"table": "api_keys", "op": "UPDATE", "id": key.to_string(),
               "organisation_id": org_id, "key_hash": hash("secret-2"),
               "old_key_hash": hash("secret-1")})
    );
    // An UPDATE that changes nothing sends nothing: the next notification is the DELETE.
    sqlx::query("UPDATE api_keys SET name = name WHERE id = $1")
        .bind(key)
        .execute(p)
        .await
        .expect("no-op update");
    sqlx::query("DELETE FROM api_keys WHERE id = $1")
        .bind(key)
        .execute(p)
        .await
        .expect("delete key");
    assert_eq!(
        next_change(&mut listener).await,
        json!({"table": "api_keys", "op": "DELETE", "id": key.to_string(),
               "organisation_id": org_id, "key_hash": hash("secret-2"), "old_key_hash": null})
    );

    // models
    let model = insert_model(p, o, provider, "gpt-mini")
        .await
        .expect("model");
    let expected = |op: &str| json!({"table": "models", "op": op, "id": model.to_string(), "organisation_id": org_id});
    assert_eq!(next_change(&mut listener).await, expected("INSERT"));
    sqlx::query("UPDATE models SET enabled = false WHERE id = $1")
        .bind(model)
        .execute(p)
        .await
        .expect("disable model");
    assert_eq!(next_change(&mut listener).await, expected("UPDATE"));
    sqlx::query("DELETE FROM models WHERE id = $1")
        .bind(model)
        .execute(p)
        .await
        .expect("delete model");
    assert_eq!(next_change(&mut listener).await, expected("DELETE"));

    // Nothing is announced before commit, and a rolled-back change is never announced.
    let mut tx = p.begin().await.expect("begin");
    sqlx::query("UPDATE providers SET timeout_ms = 1000 WHERE id = $1")
        .bind(provider)
        .execute(&mut *tx)
        .await
        .expect("update provider");
    tx.rollback().await.expect("rollback");
    // organisations carry their own id as organisation_id.
    sqlx::query("UPDATE organisations SET name = 'Acme Ltd' WHERE id = $1")
        .bind(o)
        .execute(p)
        .await
        .expect("rename organisation");
    assert_eq!(
        next_change(&mut listener).await,
        json!({"table": "organisations", "op": "UPDATE", "id": org_id, "organisation_id": org_id})
    );

    // Every configuration table is wired.
    let wired: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT event_object_table::text FROM information_schema.triggers
         WHERE trigger_name LIKE '%\\_notify\\_%' ORDER BY 1",
    )
    .fetch_all(p)
    .await
    .expect("list triggers");
    let mut expected_tables = vec![
        "organisations",
        "teams",
        "team_members",
        "users",
        "api_keys",
        "providers",
        "provider_api_keys",
        "models",
        "model_deployments",
        "api_key_model_access",
        "mcp_servers",
        "api_key_mcp_access",
        "budgets",
        "quotas",
        "filters",
    ];
    expected_tables.sort_unstable();
    assert_eq!(wired, expected_tables);
}

/// A migrator holding only the first embedded migration (read from a copy of its file, so its
/// checksum is the real one).
async fn first_migration_only() -> (sqlx::migrate::Migrator, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files: Vec<std::path::PathBuf> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
            .expect("read migrations/")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
    files.sort();
    let first = files.first().expect("at least one migration");
    std::fs::copy(
        first,
        dir.path().join(first.file_name().expect("file name")),
    )
    .expect("copy first migration");
    let m = sqlx::migrate::Migrator::new(dir.path())
        .await
        .expect("migrator over the first migration");
    (m, dir)
}

#[tokio::test]
async fn check_schema_reports_outdated_until_migrated() {
    let t = TestDb::empty().await;
    let versions: Vec<i64> = db::MIGRATOR.iter().map(|m| m.version).collect();
    let expected = db::expected_version();
    assert!(versions.len() >= 2, "the test needs two migrations or more");

    match db::check_schema(&t.pool).await {
        Err(DbError::Outdated {
            applied,
            expected: e,
            missing,
        }) => {
            assert_eq!(applied, None);
            assert_eq!(e, expected);
            assert_eq!(missing, versions);
        }
        other => panic!("expected Outdated on an empty database, got {other:?}"),
    }

    let (first, _dir) = first_migration_only().await;
    first.run(&t.pool).await.expect("apply the first migration");
    let err = db::check_schema(&t.pool)
        .await
        .expect_err("only the first migration ran");
    match &err {
        DbError::Outdated {
            applied,
            expected: e,
            missing,
        } => {
            assert_eq!(*applied, Some(versions[0]));
            assert_eq!(*e, expected);
            assert_eq!(missing.as_slice(), &versions[1..]);
        }
        other => panic!("expected Outdated, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("wharf migrate"), "{msg}");
    assert!(
        msg.contains(&format!("expects version {expected}")),
        "{msg}"
    );

    db::migrate(&t.pool).await.expect("apply the rest");
    db::check_schema(&t.pool).await.expect("up to date");
    db::migrate(&t.pool)
        .await
        .expect("migrating again is a no-op");
    db::check_schema(&t.pool).await.expect("still up to date");
}

#[tokio::test]
async fn check_schema_reports_edited_and_failed_migrations() {
    let t = TestDb::migrated().await;
    let first = db::MIGRATOR
        .iter()
        .map(|m| m.version)
        .min()
        .expect("a migration");
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea WHERE version = $1")
        .bind(first)
        .execute(&t.pool)
        .await
        .expect("tamper with the checksum");
    match db::check_schema(&t.pool).await {
        Err(DbError::Modified { version }) => assert_eq!(version, first),
        other => panic!("expected Modified, got {other:?}"),
    }
    match db::migrate(&t.pool).await {
        Err(DbError::Modified { version }) => assert_eq!(version, first),
        other => panic!("expected migrate to refuse, got {other:?}"),
    }

    let last = db::expected_version();
    sqlx::query("UPDATE _sqlx_migrations SET success = false WHERE version = $1")
        .bind(last)
        .execute(&t.pool)
        .await
        .expect("mark the last migration failed");
    match db::check_schema(&t.pool).await {
        Err(DbError::Dirty { version }) => assert_eq!(version, last),
        other => panic!("expected Dirty, got {other:?}"),
    }
}

#[tokio::test]
async fn schema_from_a_newer_build_is_accepted() {
    let t = TestDb::migrated().await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990101000000, 'future', true, '\\x00'::bytea, 0)",
    )
    .execute(&t.pool)
    .await
    .expect("record a future migration");
    db::check_schema(&t.pool)
        .await
        .expect("unknown newer versions are tolerated");
}

#[tokio::test]
async fn deleting_an_organisation_removes_its_configuration() {
    let t = TestDb::migrated().await;
    let p = &t.pool;
    let o = org(p, "acme").await;
    let keep = org(p, "keep").await;
    let tm = team(p, o, "research").await;
    let u = user(p, o, "ada@example.com").await;
    sqlx::query("INSERT INTO team_members (organisation_id, team_id, user_id, team_role) VALUES ($1, $2, $3, 'ADMIN')")
        .bind(o)
        .bind(tm)
        .bind(u)
        .execute(p)
        .await
        .expect("member");
    let key = insert_key(p, o, "TEAM", Some(tm), None, "k")
        .await
        .expect("key");
    let provider = insert_provider(p, o, "OPENAI", "openai")
        .await
        .expect("provider");
    let pkey = insert_provider_key(p, o, provider).await;
    let model: Uuid = sqlx::query_scalar(
        "INSERT INTO models (organisation_id, provider_id, provider_api_key_id, name, slug)
         VALUES ($1, $2, $3, 'gpt', 'gpt-4o') RETURNING id",
    )
    .bind(o)
    .bind(provider)
    .bind(pkey)
    .fetch_one(p)
    .await
    .expect("model");
    sqlx::query(
        "INSERT INTO model_deployments (organisation_id, model_id, provider_id, provider_api_key_id, slug, weight, priority)
         VALUES ($1, $2, $3, $4, 'gpt-4o-2024-08-06', 3, 1)",
    )
    .bind(o)
    .bind(model)
    .bind(provider)
    .bind(pkey)
    .execute(p)
    .await
    .expect("deployment");
    sqlx::query("INSERT INTO api_key_model_access (organisation_id, api_key_id, model_id) VALUES ($1, $2, $3)")
        .bind(o)
        .bind(key)
        .bind(model)
        .execute(p)
        .await
        .expect("model grant");
    let server: Uuid = sqlx::query_scalar(
        "INSERT INTO mcp_servers (organisation_id, name, slug, transport, url, auth_type, allowed_tools)
         VALUES ($1, 'Docs', 'docs', 'STREAMABLE_HTTP', 'https://mcp.example.com/mcp', 'BEARER', '{search}')
         RETURNING id",
    )
    .bind(o)
    .fetch_one(p)
    .await
    .expect("mcp server");
    sqlx::query("INSERT INTO api_key_mcp_access (organisation_id, api_key_id, mcp_server_id) VALUES ($1, $2, $3)")
        .bind(o)
        .bind(key)
        .bind(server)
        .execute(p)
        .await
        .expect("mcp grant");
    // A STDIO server needs a command; an HTTP one a URL.
    let stdio = sqlx::query(
        "INSERT INTO mcp_servers (organisation_id, name, slug, transport) VALUES ($1, 'Local', 'local', 'STDIO')",
    )
    .bind(o)
    .execute(p)
    .await;
    assert_eq!(sql_error(stdio).0, CHECK_VIOLATION);

    // A provider still used by a model cannot be deleted on its own.
    let in_use = sqlx::query("DELETE FROM providers WHERE id = $1")
        .bind(provider)
        .execute(p)
        .await;
    assert_eq!(sql_error(in_use).0, FOREIGN_KEY_VIOLATION);

    sqlx::query("DELETE FROM organisations WHERE id = $1")
        .bind(o)
        .execute(p)
        .await
        .expect("delete organisation");
    for table in [
        "users",
        "teams",
        "team_members",
        "api_keys",
        "providers",
        "provider_api_keys",
        "models",
        "model_deployments",
        "api_key_model_access",
        "mcp_servers",
        "api_key_mcp_access",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(p)
            .await
            .expect("count");
        assert_eq!(n, 0, "{table} keeps rows of a deleted organisation");
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM organisations WHERE id = $1")
        .bind(keep)
        .fetch_one(p)
        .await
        .expect("count");
    assert_eq!(left, 1);
}

#[tokio::test]
async fn usage_records_and_rollups() {
    let t = TestDb::migrated().await;
    let p = &t.pool;
    let o = Uuid::new_v4();
    let insert = "INSERT INTO usage_records
        (request_id, organisation_id, api_key_id, endpoint, provider, provider_type, model, upstream_model,
         stream, status, outcome, latency_ms, ttfb_ms, overhead_us, input_tokens, output_tokens,
         cached_input_tokens, reasoning_tokens, total_tokens, usage_source, cost_nanos, pricing, attempts,
         provider_request_id, stream_cut, client_disconnected)
        VALUES ($1, $2, $3, '/v1/chat/completions', 'openai', 'OPENAI', 'gpt-mini', 'gpt-4o-mini',
         true, 200, 'success', 812.5, 120.25, 95, 1200, 300, 200, 40, 1500, 'provider', 123456,
         '{\"input\": 150000000}', '[{\"provider\": \"openai\", \"outcome\": \"ok\"}]', 'chatcmpl-1', false, false)
        ON CONFLICT (request_id) DO NOTHING";
    // Usage rows have no foreign keys: they outlive the keys and organisations they name.
    let first = sqlx::query(insert)
        .bind("req-1")
        .bind(o)
        .bind(Uuid::new_v4())
        .execute(p)
        .await
        .expect("usage record");
    assert_eq!(first.rows_affected(), 1);
    let retried = sqlx::query(insert)
        .bind("req-1")
        .bind(o)
        .bind(Uuid::new_v4())
        .execute(p)
        .await
        .expect("retried batch");
    assert_eq!(retried.rows_affected(), 0, "request_id is unique");
    let bad_source = sqlx::query(
        "INSERT INTO usage_records (request_id, endpoint, status, outcome, usage_source)
         VALUES ('req-2', '/v1/embeddings', 200, 'success', 'guessed')",
    )
    .execute(p)
    .await;
    assert_eq!(sql_error(bad_source).0, CHECK_VIOLATION);

    sqlx::query(
        "INSERT INTO mcp_usage_records (request_id, organisation_id, server_slug, transport, method, tool, status, outcome, bytes_in, bytes_out, cost_nanos)
         VALUES ('req-1', $1, 'docs', 'STREAMABLE_HTTP', 'tools/call', 'search', 200, 'success', 120, 4096, 1000)",
    )
    .bind(o)
    .execute(p)
    .await
    .expect("mcp usage record");

    // Rollups: NULL dimensions fold into dims_key, so repeated upserts accumulate in one row.
    let upsert = "INSERT INTO usage_rollups
        (granularity, bucket_start, organisation_id, team_id, model, provider, requests, errors, input_tokens, output_tokens, cost_nanos, latency_ms_sum)
        VALUES ('HOUR', '2026-01-01T10:00:00Z', $1, NULL, 'gpt-mini', 'openai', 1, $2, 100, 20, 5000, 12.5)
        ON CONFLICT (granularity, bucket_start, dims_key) DO UPDATE SET
            requests = usage_rollups.requests + EXCLUDED.requests,
            errors = usage_rollups.errors + EXCLUDED.errors,
            input_tokens = usage_rollups.input_tokens + EXCLUDED.input_tokens,
            output_tokens = usage_rollups.output_tokens + EXCLUDED.output_tokens,
            cost_nanos = usage_rollups.cost_nanos + EXCLUDED.cost_nanos,
            latency_ms_sum = usage_rollups.latency_ms_sum + EXCLUDED.latency_ms_sum";
    for errors in [0i64, 1] {
        sqlx::query(upsert)
            .bind(o)
            .bind(errors)
            .execute(p)
            .await
            .expect("rollup upsert");
    }
    let (rows, requests, errors, cost): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(requests)::bigint, sum(errors)::bigint, sum(cost_nanos)::bigint FROM usage_rollups",
    )
    .fetch_one(p)
    .await
    .expect("rollup totals");
    assert_eq!((rows, requests, errors, cost), (1, 2, 1, 10000));
}

#[tokio::test]
async fn connect_fails_fast_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    // The listener is dropped: nothing listens on `port` any more.
    let url = format!("postgres://wharf:secret-password@127.0.0.1:{port}/none");
    let started = std::time::Instant::now();
    let err = db::connect(&url).await.expect_err("nothing listens there");
    assert!(matches!(err, DbError::Connect(_)), "{err:?}");
    assert!(started.elapsed() < db::ACQUIRE_TIMEOUT + Duration::from_secs(5));
    assert!(!err.to_string().contains("secret-password"), "{err}");
    assert!(matches!(
        db::connect("postgres://127.0.0.1:notaport/db").await,
        Err(DbError::InvalidUrl(_))
    ));
}

#[tokio::test]
async fn connect_and_migrate_through_the_public_api() {
    let t = TestDb::empty().await;
    let url = t.url();
    let pool = db::connect(&url).await.expect("connect");
    db::migrate(&pool).await.expect("migrate");
    db::check_schema(&pool).await.expect("up to date");
    let app: String = sqlx::query_scalar("SELECT current_setting('application_name')")
        .fetch_one(&pool)
        .await
        .expect("application_name");
    assert_eq!(app, "wharf");
    pool.close().await;
}
