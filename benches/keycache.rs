//! Criterion: the cost of finding a virtual key on the request path, per store — the file's
//! hash map, and a cache hit of the Postgres store (moka) — including the SHA-256 of the secret.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use wharf::config::{self, DatabaseConfig, KeyType, Secret, VirtualKey};
use wharf::control::store::{self, Store};
use wharf::control::DbMode;
use wharf::control::Snapshot;
use wharf::db::crypto::MasterKeys;
use wharf::keys::KeyHash;

const FILE_KEY: &str = "wharf-bench-file-key";
const DB_KEY: &str = "wharf_sk_bench_database_key_0123456789";

fn snapshot() -> Snapshot {
    let text = format!(
        r#"
[[providers]]
name = "p"
type = "OPENAI"
base_url = "http://127.0.0.1:9/v1"

[[models]]
name = "m"
slug = "m"
provider = "p"

[[keys]]
id = "k"
hash = "{}"
organisation_id = "o"
models = ["*"]
"#,
        KeyHash::of(FILE_KEY).to_hex()
    );
    Snapshot::new(
        config::parse(&text).expect("valid configuration"),
        Default::default(),
        1,
    )
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let snap = snapshot();
    let db = rt.block_on(async {
        let db = Arc::new(DbMode::new(
            DatabaseConfig {
                url: Secret::new("postgres://bench@127.0.0.1:1/bench".into()),
                url_env: "DATABASE_URL".into(),
                key_cache_ttl: Duration::from_secs(300),
                negative_cache_ttl: Duration::from_secs(5),
                key_cache_capacity: 100_000,
                refresh_interval: Duration::from_secs(60),
            },
            MasterKeys::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").expect("key"),
        ));
        // Never connected: a cache hit must not touch it.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://bench@127.0.0.1:1/bench")
            .expect("lazy pool");
        db.pool.store(Some(Arc::new(pool)));
        let key = VirtualKey {
            id: "db-key".into(),
            name: None,
            prefix: None,
            kind: KeyType::Organisation,
            organisation_id: "o".into(),
            team_id: None,
            user_id: None,
            expires_at: None,
            revoked: false,
            all_models: true,
            models: Default::default(),
            routing: None,
            policies: Default::default(),
            mcp_servers: Default::default(),
        };
        db.prime(KeyHash::of(DB_KEY), Some(Arc::new(key))).await;
        db
    });
    let stores = store::stores(Some(&db));
    let mut g = c.benchmark_group("key_lookup");
    g.bench_function("file_hit", |b| {
        b.iter(|| {
            rt.block_on(store::find_key(
                &stores,
                &snap,
                KeyHash::of(black_box(FILE_KEY)),
            ))
            .expect("lookup")
            .expect("found")
        })
    });
    g.bench_function("postgres_cache_hit", |b| {
        b.iter(|| {
            rt.block_on(store::find_key(
                &stores,
                &snap,
                KeyHash::of(black_box(DB_KEY)),
            ))
            .expect("lookup")
            .expect("found")
        })
    });
    let pg = store::PgStore { db: db.clone() };
    g.bench_function("postgres_cache_hit_direct", |b| {
        b.iter(|| {
            rt.block_on(pg.key(&snap, KeyHash::of(black_box(DB_KEY))))
                .expect("lookup")
                .expect("found")
        })
    });
    g.bench_function("sha256_only", |b| b.iter(|| KeyHash::of(black_box(DB_KEY))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
