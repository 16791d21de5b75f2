//! A throwaway, migrated Postgres database per test (dropped at the end).
#![allow(dead_code, clippy::unwrap_used)]

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// The Redis the tests share (`REDIS_URL`, default 127.0.0.1:6379).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database-mode gateway's configuration: `[server]` on the given ports, `[usage]` files in
/// `dir`, `[database]` at the URL in `WHARF_TEST_DATABASE_URL`, then `extra` (more sections,
/// or more `[database]` settings first).
pub fn node_config(port: u16, admin: u16, dir: &std::path::Path, extra: &str) -> String {
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
{extra}"#,
        dir = dir.display()
    )
}

/// A database-mode gateway with Redis fan-out, once its admin API answers (the admin listener
/// is up before the control service has its pool).
pub async fn admin_node(mock: &wharf_mock::MockServer, db: &TestDb) -> super::Gw {
    admin_node_with(mock, db, "").await
}

/// [`admin_node`] with more `[server]` settings (`server_extra`, lines ending in `\n`).
pub async fn admin_node_with(
    mock: &wharf_mock::MockServer,
    db: &TestDb,
    server_extra: &str,
) -> super::Gw {
    let gw = super::Gw::start_custom(
        mock,
        |port, admin, dir| {
            node_config(
                port,
                admin,
                dir,
                "refresh_interval_seconds = 30\n\n[redis]\nurl_env = \"WHARF_TEST_REDIS_URL\"\n",
            )
            .replacen("[server]\n", &format!("[server]\n{server_extra}"), 1)
        },
        &[
            ("WHARF_TEST_DATABASE_URL", db.url()),
            ("WHARF_MASTER_KEYS", TEST_MASTER_KEYS.to_string()),
            ("WHARF_TEST_REDIS_URL", redis_url()),
        ],
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let st = super::client()
            .get(gw.admin_url("/api/me"))
            .send()
            .await
            .unwrap()
            .status();
        if st != 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "admin API not ready: {}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw
}

pub fn admin_options() -> PgConnectOptions {
    PgConnectOptions::from_str(&database_url()).expect("DATABASE_URL is a Postgres URL")
}

pub async fn admin_connection() -> sqlx::PgConnection {
    let o = admin_options();
    match tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect_with(&o),
    )
    .await
    {
        Ok(Ok(c)) => c,
        other => panic!(
            "Postgres is required by these tests and is not reachable at {}:{} ({other:?}); \
             `make test` starts one (scripts/services.sh), or set DATABASE_URL",
            o.get_host(),
            o.get_port()
        ),
    }
}

pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A fresh database, migrated unless `migrated` is false.
    pub async fn new(migrated: bool) -> TestDb {
        let name = format!("wharf_test_{}", uuid::Uuid::new_v4().simple());
        let mut a = admin_connection().await;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut a)
            .await
            .unwrap();
        let _ = a.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(admin_options().database(&name))
            .await
            .unwrap();
        if migrated {
            wharf::db::migrate(&pool).await.unwrap();
        }
        TestDb { name, pool }
    }

    /// A fresh, empty database (no migrations).
    pub async fn empty() -> TestDb {
        TestDb::new(false).await
    }

    /// A fresh database with every migration applied.
    pub async fn migrated() -> TestDb {
        TestDb::new(true).await
    }

    /// The URL of this database (same server and user as DATABASE_URL).
    pub fn url(&self) -> String {
        self.url_via(None)
    }

    /// The URL of this database through another port (a proxy in front of the server).
    pub fn url_via(&self, port: Option<u16>) -> String {
        let o = admin_options();
        let user = o.get_username();
        let host = o.get_host();
        let port = port.unwrap_or(o.get_port());
        format!("postgres://{user}@{host}:{port}/{}", self.name)
    }

    pub fn host_port(&self) -> String {
        let o = admin_options();
        format!("{}:{}", o.get_host(), o.get_port())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop the database from a fresh runtime: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut a = admin_connection().await;
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut a)
                    .await;
            });
        })
        .join();
    }
}

/// The master key the database-mode tests encrypt provider credentials with.
pub const TEST_MASTER_KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// What [`seed_catalog`] created.
pub struct SeededCatalog {
    pub org: uuid::Uuid,
    pub provider: uuid::Uuid,
    pub model: uuid::Uuid,
}

/// An organisation `org_name`, an OpenAI provider `mockp` on the mock (credential
/// [`super::PROVIDER_KEY`], encrypted under [`TEST_MASTER_KEYS`]) and a chat model `model`
/// (upstream `slug`) priced 1 USD input / 2 USD output per 1M tokens.
pub async fn seed_catalog(
    db: &TestDb,
    mock: &wharf_mock::MockServer,
    org_name: &str,
    model: &str,
    slug: &str,
) -> SeededCatalog {
    use super::seed;
    use wharf::config::{ModelType, Pricing, ProviderKind};
    let keys = wharf::db::crypto::MasterKeys::parse(TEST_MASTER_KEYS).unwrap();
    let org = seed::create_organisation(&db.pool, org_name).await.unwrap();
    let provider = seed::create_provider(
        &db.pool,
        org,
        "mockp",
        ProviderKind::OpenAi,
        &format!("http://{}/v1", mock.addr()),
        &keys,
        Some(super::PROVIDER_KEY),
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
    let model = seed::create_model(
        &db.pool,
        org,
        model,
        slug,
        ModelType::Chat,
        provider,
        pricing,
    )
    .await
    .unwrap();
    SeededCatalog {
        org,
        provider,
        model,
    }
}

/// An organisation key granted `models`: (key id, secret).
pub async fn seed_key(
    db: &TestDb,
    org: uuid::Uuid,
    name: &str,
    models: &[uuid::Uuid],
) -> (uuid::Uuid, String) {
    super::seed::create_api_key(
        &db.pool,
        org,
        wharf::config::KeyType::Organisation,
        None,
        None,
        name,
        models,
    )
    .await
    .unwrap()
}
