//! Database mode end to end: a real `wharf` process reading its catalog and keys from a real
//! Postgres (fresh database per test), Redis for fan-out, the mock provider upstream.
#![allow(clippy::unwrap_used)]

mod common;

use common::db::TestDb;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use wharf::config::{KeyType, ModelType, Pricing, ProviderKind};
use wharf::db::crypto::MasterKeys;
use wharf::db::load;

const MASTER: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const SECRET: &str = "invalidate-me-please";

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

struct Seed {
    key_id: uuid::Uuid,
    secret: String,
    org: uuid::Uuid,
    provider: uuid::Uuid,
}

async fn seed(db: &TestDb, mock: &wharf::mock::MockServer) -> Seed {
    let keys = MasterKeys::parse(MASTER).unwrap();
    let org = load::create_organisation(&db.pool, "Acme").await.unwrap();
    let provider = load::create_provider(
        &db.pool,
        org,
        "mockp",
        ProviderKind::OpenAi,
        &format!("http://{}/v1", mock.addr()),
        &keys,
        Some(PROVIDER_KEY),
    )
    .await
    .unwrap();
    let pricing = Pricing {
        input: 1_000_000_000,
        output: 2_000_000_000,
        cached: 1_000_000_000,
        reasoning: 2_000_000_000,
        image: 0,
    };
    let model = load::create_model(
        &db.pool,
        org,
        "db-chat",
        "db-slug",
        ModelType::Chat,
        provider,
        pricing,
    )
    .await
    .unwrap();
    let (key_id, secret) = load::create_api_key(
        &db.pool,
        org,
        KeyType::Organisation,
        None,
        None,
        "k",
        &[model],
    )
    .await
    .unwrap();
    Seed {
        key_id,
        secret,
        org,
        provider,
    }
}

fn db_config(port: u16, admin: u16, dir: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
threads = 2
log_level = "warn"
pid_file = "{dir}/wharf.pid"
upgrade_sock = "{dir}/upgrade.sock"

[usage]
path = "{dir}/usage.jsonl"
spill_path = "{dir}/spill.jsonl"

[database]
url_env = "WHARF_TEST_DATABASE_URL"
refresh_interval_seconds = 30

[redis]
url_env = "WHARF_TEST_REDIS_URL"

[control]
invalidation_secret_env = "WHARF_TEST_INVALIDATION_SECRET"
"#,
        dir = dir.display()
    )
}

async fn start(mock: &wharf::mock::MockServer, db_url: String) -> Gw {
    Gw::start_custom(
        mock,
        db_config,
        &[
            ("WHARF_TEST_DATABASE_URL", db_url),
            ("WHARF_MASTER_KEYS", MASTER.to_string()),
            ("WHARF_TEST_REDIS_URL", redis_url()),
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

/// Polls until `f` holds; returns how long it took.
async fn within<F, Fut>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        assert!(
            t.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    t.elapsed()
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
    let m2 = load::create_model(
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
    let (_, secret2) = load::create_api_key(
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
    let m = load::create_model(
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
    let (_, uncached) = load::create_api_key(
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
