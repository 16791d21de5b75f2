//! Three gateway processes sharing Postgres and Redis behind a round-robin client: shared rate
//! limits admit exactly the limit, a budget holds across nodes and settles to the usage records,
//! a catalog change reaches every node within a second, and every request leaves exactly one
//! usage record in Postgres.
#![allow(clippy::unwrap_used)]

mod common;

use common::seed;

use common::db::TestDb;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use wharf::config::{KeyType, ModelType, Pricing};

const MASTER: &str = common::db::TEST_MASTER_KEYS;

fn node_config(port: u16, admin: u16, dir: &std::path::Path) -> String {
    common::db::node_config(
        port,
        admin,
        dir,
        r#"
[redis]
url_env = "WHARF_TEST_REDIS_URL"

[governance]
redis_timeout_ms = 5000
"#,
    )
}

async fn node(mock: &wharf_mock::MockServer, db: &TestDb) -> Gw {
    Gw::start_custom(
        mock,
        node_config,
        &[
            ("WHARF_TEST_DATABASE_URL", db.url()),
            ("WHARF_TEST_REDIS_URL", common::db::redis_url()),
            ("WHARF_MASTER_KEYS", MASTER.to_string()),
        ],
    )
    .await
}

struct Seed {
    org: uuid::Uuid,
    provider: uuid::Uuid,
    limited: (uuid::Uuid, String),
    budgeted: (uuid::Uuid, String),
}

async fn seed(db: &TestDb, mock: &wharf_mock::MockServer) -> Seed {
    let c = common::db::seed_catalog(db, mock, "Fleet", "fleet-chat", "fleet-slug").await;
    Seed {
        org: c.org,
        provider: c.provider,
        limited: common::db::seed_key(db, c.org, "limited", &[c.model]).await,
        budgeted: common::db::seed_key(db, c.org, "budgeted", &[c.model]).await,
    }
}

/// Sends `n` requests round-robin over the nodes, all at once; returns (status, error code).
async fn round_robin(nodes: &[Gw], n: usize, key: &str, body: &Value) -> Vec<(u16, String)> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = nodes[i % nodes.len()].url("/v1/chat/completions");
        let (key, body) = (key.to_string(), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = client()
                .post(url)
                .bearer_auth(key)
                .header("x-mock-tokens", "50")
                .json(&body)
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (st, v["error"]["code"].as_str().unwrap_or("").to_string())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn usage_rows(db: &TestDb, key: uuid::Uuid) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 200),
                coalesce(sum(cost_nanos) FILTER (WHERE status = 200), 0)::bigint
           FROM usage_records WHERE api_key_id = $1",
    )
    .bind(key)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn three_nodes_share_limits_budgets_reloads_and_usage() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let s = seed(&db, &mock).await;
    // A shared request limit on one key, a budget of about four requests on the other.
    sqlx::query("UPDATE api_keys SET policies = $1 WHERE id = $2")
        .bind(json!({"policies": {"ratelimit": {"requests": {"per_minute": 25}}}}))
        .bind(s.limited.0)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut body = chat_body("fleet-chat", false);
    body["max_tokens"] = json!(50);
    let one = 50 * 2000
        + 1000 * wharf::proxy::body::estimate_input_tokens(&serde_json::to_vec(&body).unwrap());
    let amount = 4 * one + one / 2;
    let budget: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO budgets (organisation_id, scope, scope_id, amount_nanos, period, timezone)
         VALUES ($1, 'APIKEY', $2, $3, 'MONTHLY', 'UTC') RETURNING id",
    )
    .bind(s.org)
    .bind(s.budgeted.0)
    .bind(amount as i64)
    .fetch_one(&db.pool)
    .await
    .unwrap();

    let nodes = vec![
        node(&mock, &db).await,
        node(&mock, &db).await,
        node(&mock, &db).await,
    ];

    // Shared rate limit: 75 requests over three nodes, exactly 25 admitted.
    let answers = round_robin(&nodes, 75, &s.limited.1, &body).await;
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    for (st, code) in &answers {
        assert!(
            *st == 200 || (*st == 429 && code == "rpm_exceeded"),
            "unexpected {st} {code}"
        );
    }
    assert_eq!(ok, 25, "the limit holds across three nodes");

    // Shared budget: at most one reservation over it, settled to the usage records.
    let answers = round_robin(&nodes, 24, &s.budgeted.1, &body).await;
    let ok_budget = answers.iter().filter(|a| a.0 == 200).count() as i64;
    for (st, code) in &answers {
        assert!(
            *st == 200 || (*st == 402 && code == "budget_exceeded"),
            "unexpected {st} {code}"
        );
    }
    assert!((1..=5).contains(&ok_budget), "{ok_budget} admitted");

    // Every request leaves exactly one usage record, whichever node served it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let limited = usage_rows(&db, s.limited.0).await;
        let budgeted = usage_rows(&db, s.budgeted.0).await;
        let (used, reserved): (i64, i64) = sqlx::query_as(
            "SELECT used_nanos, reserved_nanos FROM budget_windows WHERE budget_id = $1",
        )
        .bind(budget)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if limited.0 == 75 && budgeted.0 == 24 && reserved == 0 && budgeted.2 == used {
            assert_eq!(limited.1, 25);
            assert_eq!(budgeted.1, ok_budget);
            assert!(used as u64 <= amount + one, "{used} > {amount} + {one}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "usage rows limited {limited:?} budgeted {budgeted:?}; window used {used} reserved {reserved}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT request_id) FROM usage_records WHERE api_key_id = ANY($1)",
    )
    .bind(vec![s.limited.0, s.budgeted.0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(ids, 99, "no request recorded twice");

    // A model added in SQL reaches all three nodes within a second.
    let m2 = seed::create_model(
        &db.pool,
        s.org,
        "fleet-new",
        "fleet-new-slug",
        ModelType::Chat,
        s.provider,
        Pricing::default(),
    )
    .await
    .unwrap();
    let (_, secret) = seed::create_api_key(
        &db.pool,
        s.org,
        KeyType::Organisation,
        None,
        None,
        "fresh",
        &[m2],
    )
    .await
    .unwrap();
    let t = Instant::now();
    for gw in &nodes {
        loop {
            let r = client()
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(&secret)
                .json(&chat_body("fleet-new", false))
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "node on port {} did not serve the new model within a second",
                gw.port
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
