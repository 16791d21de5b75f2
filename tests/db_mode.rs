//! Database mode end to end: a real `wharf` process reading its catalog and keys from a real
//! Postgres (fresh database per test), Redis for fan-out, the mock provider upstream.
#![allow(clippy::unwrap_used)]

mod common;

use common::seed;

use common::db::TestDb;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use wharf::config::{KeyType, ModelType, Pricing, ProviderKind};
use wharf::db::crypto::MasterKeys;

const MASTER: &str = common::db::TEST_MASTER_KEYS;
const SECRET: &str = "invalidate-me-please";

struct Seed {
    key_id: uuid::Uuid,
    secret: String,
    org: uuid::Uuid,
    provider: uuid::Uuid,
}

async fn seed(db: &TestDb, mock: &wharf_mock::MockServer) -> Seed {
    let c = common::db::seed_catalog(db, mock, "Acme", "db-chat", "db-slug").await;
    let (key_id, secret) = common::db::seed_key(db, c.org, "k", &[c.model]).await;
    Seed {
        key_id,
        secret,
        org: c.org,
        provider: c.provider,
    }
}

fn db_config(port: u16, admin: u16, dir: &std::path::Path) -> String {
    common::db::node_config(
        port,
        admin,
        dir,
        r#"refresh_interval_seconds = 30

[redis]
url_env = "WHARF_TEST_REDIS_URL"

[control]
invalidation_secret_env = "WHARF_TEST_INVALIDATION_SECRET"
"#,
    )
}

async fn start(mock: &wharf_mock::MockServer, db_url: String) -> Gw {
    Gw::start_custom(
        mock,
        db_config,
        &[
            ("WHARF_TEST_DATABASE_URL", db_url),
            ("WHARF_MASTER_KEYS", MASTER.to_string()),
            ("WHARF_TEST_REDIS_URL", common::db::redis_url()),
            ("WHARF_TEST_INVALIDATION_SECRET", SECRET.to_string()),
        ],
    )
    .await
}

async fn chat(gw: &Gw, key: &str, model: &str) -> (u16, Value) {
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body(model, false))
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn serves_from_postgres_and_direct_sql_changes_apply_within_a_second() {
    let mock = mock().await;
    let db = TestDb::new(true).await;
    let s = seed(&db, &mock).await;
    let gw = start(&mock, db.url()).await;

    let (st, v) = chat(&gw, &s.secret, "db-chat").await;
    assert_eq!(st, 200, "{v}");
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.json().unwrap()["model"], "db-slug");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str()),
        "the decrypted provider credential is injected"
    );
    let v: Value = client()
        .get(gw.url("/v1/models"))
        .bearer_auth(&s.secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["id"], "db-chat");
    assert_eq!(chat(&gw, "wharf_sk_unknown", "db-chat").await.0, 401);

    // A model added with plain SQL (through the loader's helper) and a key granted it.
    let keys = MasterKeys::parse(MASTER).unwrap();
    let _ = keys;
    let m2 = seed::create_model(
        &db.pool,
        s.org,
        "db-chat-2",
        "db-slug-2",
        ModelType::Chat,
        s.provider,
        Pricing::default(),
    )
    .await
    .unwrap();
    let (_, secret2) = seed::create_api_key(
        &db.pool,
        s.org,
        KeyType::Organisation,
        None,
        None,
        "k2",
        &[m2],
    )
    .await
    .unwrap();
    within(Duration::from_secs(2), "new model visible", || async {
        chat(&gw, &secret2, "db-chat-2").await.0 == 200
    })
    .await;
    assert_eq!(
        mock.last_request().unwrap().json().unwrap()["model"],
        "db-slug-2"
    );

    // Revocation by direct SQL reaches the (cached) key within a second.
    assert_eq!(chat(&gw, &s.secret, "db-chat").await.0, 200);
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
        .bind(s.key_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let took = within(Duration::from_secs(1), "revocation", || async {
        chat(&gw, &s.secret, "db-chat").await.0 == 401
    })
    .await;
    let (_, v) = chat(&gw, &s.secret, "db-chat").await;
    assert_eq!(v["error"]["code"], "api_key_revoked", "{v}");
    eprintln!("revocation took {took:?}");

    // Readiness reports the database and Redis.
    within(Duration::from_secs(5), "ready", || async {
        client()
            .get(gw.admin_url("/v1/healthz"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    let v: Value = client()
        .get(gw.admin_url("/v1/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["components"]["database"]["status"], "ok", "{v}");
    assert_eq!(v["components"]["redis"]["status"], "ok", "{v}");

    // Every request left exactly one usage record, in Postgres as in the file.
    let file_ids = || -> Vec<String> {
        std::fs::read_to_string(gw.dir.path().join("usage.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["request_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected = file_ids();
    assert!(expected.len() >= 6, "{expected:?}");
    within(
        Duration::from_secs(5),
        "usage records in Postgres",
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_records")
                .fetch_one(&db.pool)
                .await
                .unwrap();
            n as usize == expected.len()
        },
    )
    .await;
    let tokens: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(output_tokens), 0)::bigint FROM usage_records WHERE status = 200",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(tokens > 0);
}

#[tokio::test]
async fn invalidation_route_needs_the_secret_and_reaches_other_nodes_through_redis() {
    let mock = mock().await;
    let db = TestDb::new(true).await;
    let s = seed(&db, &mock).await;
    let a = start(&mock, db.url()).await;
    let b = start(&mock, db.url()).await;
    for gw in [&a, &b] {
        assert_eq!(chat(gw, &s.secret, "db-chat").await.0, 200);
    }
    // Revoke without notifying anyone (triggers off in this session): both nodes keep the
    // cached key...
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
        .bind(s.key_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(chat(&b, &s.secret, "db-chat").await.0, 200);

    // ...until node A is told; node B hears it through Redis.
    let url = a.url("/v1/internal/cache/invalidate");
    let hash = sha(&s.secret);
    let r = client()
        .post(&url)
        .json(&json!({"key_hashes": [hash]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(&url)
        .header("x-wharf-invalidation-secret", "wrong")
        .json(&json!({"key_hashes": [hash]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(&url)
        .header("x-wharf-invalidation-secret", SECRET)
        .json(&json!({"key_hashes": [hash]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["published"], true, "{v}");
    assert_eq!(chat(&a, &s.secret, "db-chat").await.0, 401);
    within(Duration::from_secs(1), "fan-out to node B", || async {
        chat(&b, &s.secret, "db-chat").await.0 == 401
    })
    .await;
}

#[tokio::test]
async fn invalidation_route_is_absent_without_a_secret() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let r = client()
        .post(gw.url("/v1/internal/cache/invalidate"))
        .header("x-wharf-invalidation-secret", SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn an_outdated_schema_refuses_to_start() {
    let db = TestDb::new(false).await;
    let dir = tempfile::tempdir().unwrap();
    let text = db_config(free_port(), free_port(), dir.path());
    std::fs::write(dir.path().join("wharf.toml"), text).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "-c"])
        .arg(dir.path().join("wharf.toml"))
        .env("WHARF_TEST_DATABASE_URL", db.url())
        .env("WHARF_MASTER_KEYS", MASTER)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wharf migrate"), "{err}");
    // `wharf migrate` fixes it.
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["migrate", "--database-url", &db.url()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// A TCP forwarder that can be cut, standing between the gateway and Postgres.
struct Cuttable {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Cuttable {
    async fn new(target: String) -> Cuttable {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c2, t2) = (cut.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = l.accept().await {
                if c2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                t2.lock().unwrap().push(h);
            }
        });
        Cuttable {
            port,
            cut,
            tasks,
            accept,
        }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test]
async fn postgres_outage_serves_cached_keys_and_503s_the_rest() {
    let mock = mock().await;
    let db = TestDb::new(true).await;
    let s = seed(&db, &mock).await;
    let m = seed::create_model(
        &db.pool,
        s.org,
        "db-chat-3",
        "db-slug-3",
        ModelType::Chat,
        s.provider,
        Pricing::default(),
    )
    .await
    .unwrap();
    let (_, uncached) = seed::create_api_key(
        &db.pool,
        s.org,
        KeyType::Organisation,
        None,
        None,
        "k3",
        &[m],
    )
    .await
    .unwrap();
    let proxy = Cuttable::new(db.host_port()).await;
    let gw = start(&mock, db.url_via(Some(proxy.port))).await;
    assert_eq!(chat(&gw, &s.secret, "db-chat").await.0, 200);

    proxy.cut();
    within(Duration::from_secs(10), "degraded readiness", || async {
        client()
            .get(gw.admin_url("/v1/healthz"))
            .send()
            .await
            .map(|r| r.status() == 503)
            .unwrap_or(false)
    })
    .await;
    // The cached key keeps working, the uncached one gets a clear 503.
    let (st, v) = chat(&gw, &s.secret, "db-chat").await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = chat(&gw, &uncached, "db-chat-3").await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"]["code"], "dependency_unavailable");
}

#[tokio::test]
async fn deployments_and_routing_policies_come_from_postgres() {
    let mock = mock().await;
    let db = TestDb::new(true).await;
    let s = seed(&db, &mock).await;
    let keys = MasterKeys::parse(MASTER).unwrap();
    // A provider that answers 503, made the model's own; its healthy deployment stays.
    let down = seed::create_provider(
        &db.pool,
        s.org,
        "downp",
        ProviderKind::Custom,
        &format!("http://{}/v1", mock.addr()),
        &keys,
        Some(PROVIDER_KEY),
    )
    .await
    .unwrap();
    sqlx::query(
        "UPDATE providers SET extra_headers = '{\"x-mock-status\": \"503\"}' WHERE id = $1",
    )
    .bind(down)
    .execute(&db.pool)
    .await
    .unwrap();
    let model: uuid::Uuid = sqlx::query_scalar("SELECT id FROM models WHERE name = 'db-chat'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE models SET provider_id = $1 WHERE id = $2")
        .bind(down)
        .bind(model)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO model_deployments (organisation_id, model_id, provider_id, slug)
         VALUES ($1, $2, $3, 'db-slug-b')",
    )
    .bind(s.org)
    .bind(model)
    .bind(s.provider)
    .execute(&db.pool)
    .await
    .unwrap();
    let gw = start(&mock, db.url()).await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&s.secret)
        .json(&chat_body("db-chat", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-attempts"], "2");
    assert_eq!(r.headers()["x-wharf-provider"], "mockp");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "db-slug-b");

    // A key routing policy set in SQL: failover only on rate limits, so the 503 passes through.
    sqlx::query(
        "UPDATE api_keys SET routing_policy =
           '{\"routing\":{\"chat\":{\"candidates\":[{\"modelName\":\"db-chat\"}],\"failoverOn\":[\"rate_limit\"]}}}'
         WHERE id = $1",
    )
    .bind(s.key_id)
    .execute(&db.pool)
    .await
    .unwrap();
    within(
        Duration::from_secs(2),
        "the key's policy applies",
        || async { chat(&gw, &s.secret, "db-chat").await.0 == 503 },
    )
    .await;
}

#[tokio::test]
async fn filter_chains_come_from_postgres_and_reload_on_change() {
    let mock = mock().await;
    let db = TestDb::new(true).await;
    let s = seed(&db, &mock).await;
    let gw = start(&mock, db.url()).await;
    let ask = |text: &'static str| {
        let gw = &gw;
        let key = s.secret.clone();
        async move {
            let r = client()
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "db-chat",
                              "messages": [{"role": "user", "content": text}]}))
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
            (st, rid, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(ask("a project-x question").await.0, 200);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("filters/examples/keyword_block.lua")
        .display()
        .to_string();
    sqlx::query(
        "INSERT INTO filters (organisation_id, name, kind, script, settings)
         VALUES ($1, 'kw', 'lua', $2, '{\"vars\": {\"words\": [\"project-x\"]}}')",
    )
    .bind(s.org)
    .bind(&script)
    .execute(&db.pool)
    .await
    .unwrap();
    within(Duration::from_secs(2), "the database filter", || async {
        ask("a project-x question").await.0 == 403
    })
    .await;
    let (st, rid, body) = ask("another project-x question").await;
    assert_eq!(st, 403);
    assert_eq!(body["error"]["code"], "keyword_blocked", "{body}");
    let rec = gw.usage_of(&rid).await;
    assert_eq!(rec["filters"]["decisions"][0]["filter"], "acme/kw", "{rec}");
    assert_eq!(ask("a harmless question").await.0, 200);

    // A row the gateway cannot build is refused at load: the running chain stays.
    sqlx::query("UPDATE filters SET settings = '{\"bogus\": 1}' WHERE name = 'kw'")
        .execute(&db.pool)
        .await
        .unwrap();
    within(Duration::from_secs(2), "the rejected reload", || async {
        let v: Value = client()
            .get(gw.admin_url("/v1/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["components"]["config"]["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("acme/kw") && e.contains("bogus"))
    })
    .await;
    assert_eq!(ask("a project-x question").await.0, 403);

    // Deleting the row ends the chain on the next refresh.
    sqlx::query("DELETE FROM filters WHERE name = 'kw'")
        .execute(&db.pool)
        .await
        .unwrap();
    within(Duration::from_secs(2), "the filter removal", || async {
        ask("a project-x question").await.0 == 200
    })
    .await;
}
