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
