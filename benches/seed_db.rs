//! Seeds a database for the database-mode rows of the load benchmark (`benches/load.sh`): the
//! same provider (the mock on 127.0.0.1:18080), model and grant as `benches/bench.toml`, held in
//! Postgres instead of the file. Prints the new virtual key on stdout.
//!
//!   cargo run --release --example seed_db -- postgres://…/wharf_bench

use wharf::config::{KeyType, ModelType, Pricing, ProviderKind};
use wharf::db::crypto::MasterKeys;

#[path = "../tests/common/seed.rs"]
mod seed;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .ok_or("usage: seed_db DATABASE_URL (WHARF_MASTER_KEYS in the environment)")?;
    let keys = MasterKeys::parse(&std::env::var("WHARF_MASTER_KEYS")?)?;
    let pool = wharf::db::connect(&url).await?;
    wharf::db::migrate(&pool).await?;
    let org = seed::create_organisation(&pool, "bench").await?;
    let provider = seed::create_provider(
        &pool,
        org,
        "mock",
        ProviderKind::OpenAi,
        // The mock of benches/load.sh unless WHARF_BENCH_MOCK_URL names another.
        &std::env::var("WHARF_BENCH_MOCK_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:18080/v1".into()),
        &keys,
        Some("sk-mock"),
    )
    .await?;
    let pricing = Pricing {
        input: 150_000_000,
        output: 600_000_000,
        cached: 150_000_000,
        reasoning: 600_000_000,
        image: 0,
    };
    let model = seed::create_model(
        &pool,
        org,
        "bench-model",
        "mock-gpt",
        ModelType::Chat,
        provider,
        pricing,
    )
    .await?;
    let (_, secret) = seed::create_api_key(
        &pool,
        org,
        KeyType::Organisation,
        None,
        None,
        "bench",
        &[model],
    )
    .await?;
    println!("{secret}");
    Ok(())
}
