//! The Postgres usage store (`wharf::db::usage_store`) against a real server: batch inserts
//! and daily rollups, idempotence, spilling to disk through an outage and replaying after it.
//!
//! Every test creates its own migrated database through `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); a missing Postgres fails the tests.

mod common;

use common::db::TestDb;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::task::{AbortHandle, JoinHandle};
use uuid::Uuid;
use wharf::config::Pricing;
use wharf::db::usage_store::{PgUsageStore, UsageStoreError, WriteOutcome};
use wharf::usage::{Attempt, Tokens, UsageRecord, UsageSource};

const ORG: &str = "0b3c9d2e-1f4a-4b5c-8d6e-7f8091a2b3c4";
const TEAM: &str = "1c4d0e3f-2a5b-4c6d-9e7f-8091a2b3c4d5";
const USER: &str = "2d5e1f40-3b6c-4d7e-af80-91a2b3c4d5e6";
const KEY_A: &str = "3e6f2051-4c7d-4e8f-b091-a2b3c4d5e6f7";
const KEY_B: &str = "4f703162-5d8e-4f90-82a2-b3c4d5e6f708";
const KEY_POISON: &str = "50814273-6e9f-4a01-93b3-c4d5e6f70819";

const PRICING: Pricing = Pricing {
    input: 150_000_000,
    output: 600_000_000,
    cached: 75_000_000,
    reasoning: 600_000_000,
    image: 0,
};

/// Start times over three UTC days; the last one is 2025-03-06 in UTC.
const TIMES: [&str; 4] = [
    "2025-03-04T08:00:00Z",
    "2025-03-04T23:59:59Z",
    "2025-03-05T12:30:00Z",
    "2025-03-05T23:30:00-02:00",
];

/// A record of the test batches: `i` picks the key, model, day and kind (success, upstream
/// error, stream).
fn record(prefix: &str, i: u64) -> UsageRecord {
    let key = if i % 2 == 0 { KEY_A } else { KEY_B };
    let (model, provider, ptype, slug) = if (i / 2) % 2 == 0 {
        ("chat-a", "mock", "OPENAI", "up-chat-a")
    } else {
        ("claude", "anthropic", "ANTHROPIC", "claude-x")
    };
    let error = i % 4 == 3;
    let stream = i % 3 == 0;
    let tokens = if error {
        Tokens::default()
    } else {
        Tokens {
            input: 100 + i,
            output: 10 + i,
            cached_input: i,
            reasoning: i / 2,
            total: 110 + 2 * i,
            images: 0,
        }
    };
    let mut attempts = Vec::new();
    if error || i % 5 == 0 {
        attempts.push(Attempt {
            provider: "dead".into(),
            model: "up-dead".into(),
            outcome: "error",
            error_class: Some("connect"),
            status: None,
            latency_ms: 1.5,
        });
    }
    attempts.push(Attempt {
        provider: provider.into(),
        model: slug.into(),
        outcome: if error { "error" } else { "success" },
        error_class: if error { Some("status_5xx") } else { None },
        status: Some(if error { 502 } else { 200 }),
        latency_ms: 8.0 + i as f64,
    });
    UsageRecord {
        request_id: format!("{prefix}-{i:03}"),
        timestamp: TIMES[(i as usize / 4) % TIMES.len()].into(),
        organisation_id: Some(ORG.into()),
        team_id: (key == KEY_A).then(|| TEAM.to_string()),
        user_id: (key == KEY_B).then(|| USER.to_string()),
        api_key_id: Some(key.into()),
        method: "POST".into(),
        endpoint: "/v1/chat/completions".into(),
        model: Some(model.into()),
        provider: Some(provider.into()),
        provider_type: Some(ptype),
        upstream_model: Some(slug.into()),
        stream,
        status: if error { 502 } else { 200 },
        outcome: if error { "upstream_error" } else { "success" },
        error_code: error.then(|| "upstream_error".to_string()),
        latency_ms: 10.5 + i as f64,
        ttfb_ms: stream.then_some(2.25 + i as f64),
        gateway_overhead_us: 40 + i,
        tokens,
        usage_source: if error {
            UsageSource::None
        } else {
            UsageSource::Provider
        },
        cost_nanos: tokens.cost_nanos(&PRICING),
        pricing: Some(PRICING),
        attempts,
        provider_request_id: (!error).then(|| format!("chatcmpl-{i}")),
        stream_cut: error && stream,
        request_bytes: 300 + i,
        response_bytes: if error { 0 } else { 900 + i },
        // Clients may send one X-Request-Id for many requests: never an identity.
        client_request_id: Some("client-same".into()),
        ..Default::default()
    }
}

fn batch(prefix: &str, range: std::ops::Range<u64>) -> Vec<UsageRecord> {
    range.map(|i| record(prefix, i)).collect()
}

/// A denied request (no key, no model) and one from configuration-file mode (ids that are
/// not uuids).
fn odd_records() -> Vec<UsageRecord> {
    vec![
        UsageRecord {
            request_id: "denied-1".into(),
            timestamp: "2025-03-04T09:00:00Z".into(),
            method: "POST".into(),
            endpoint: "/v1/chat/completions".into(),
            status: 401,
            outcome: "error",
            error_code: Some("invalid_api_key".into()),
            denied_by: Some("auth"),
            latency_ms: 0.25,
            gateway_overhead_us: 250,
            request_bytes: 80,
            response_bytes: 120,
            ..Default::default()
        },
        UsageRecord {
            request_id: "toml-1".into(),
            timestamp: "2025-03-04T10:00:00Z".into(),
            organisation_id: Some("org_demo".into()),
            team_id: Some("team_demo".into()),
            api_key_id: Some("key_demo".into()),
            method: "POST".into(),
            endpoint: "/v1/embeddings".into(),
            model: Some("embed".into()),
            provider: Some("mock".into()),
            provider_type: Some("OPENAI"),
            upstream_model: Some("up-embed".into()),
            status: 200,
            outcome: "success",
            latency_ms: 4.0,
            tokens: Tokens {
                input: 7,
                total: 7,
                ..Default::default()
            },
            usage_source: UsageSource::Estimated,
            cost_nanos: 140,
            ..Default::default()
        },
    ]
}

/// Rollup identity in these tests: UTC day, key, model (organisation, team, user and provider
/// follow from key and model here).
type RollKey = (String, Option<Uuid>, Option<String>);

#[derive(Debug, Default, Clone, PartialEq)]
struct Roll {
    requests: i64,
    errors: i64,
    input: i64,
    output: i64,
    cached: i64,
    reasoning: i64,
    cost: i64,
    latency: f64,
    ttfb: f64,
}

fn utc_day(ts: &str) -> String {
    let t = OffsetDateTime::parse(ts, &Rfc3339).expect("RFC 3339 timestamp");
    t.to_offset(time::UtcOffset::UTC).date().to_string()
}

/// The rollups `records` should produce (each request id once).
fn expected_rollups(records: &[UsageRecord]) -> BTreeMap<RollKey, Roll> {
    let mut seen = BTreeSet::new();
    let mut out: BTreeMap<RollKey, Roll> = BTreeMap::new();
    for r in records {
        if !seen.insert(r.request_id.clone()) {
            continue;
        }
        let key = (
            utc_day(&r.timestamp),
            r.api_key_id
                .as_deref()
                .and_then(|k| Uuid::parse_str(k).ok()),
            r.model.clone(),
        );
        let e = out.entry(key).or_default();
        e.requests += 1;
        e.errors += i64::from(r.outcome != "success");
        e.input += r.tokens.input as i64;
        e.output += r.tokens.output as i64;
        e.cached += r.tokens.cached_input as i64;
        e.reasoning += r.tokens.reasoning as i64;
        e.cost += r.cost_nanos as i64;
        e.latency += r.latency_ms;
        e.ttfb += r.ttfb_ms.unwrap_or(0.0);
    }
    out
}

async fn rollups(pool: &PgPool) -> BTreeMap<RollKey, Roll> {
    let rows = sqlx::query(
        "SELECT to_char(bucket_start AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day,
                bucket_start = date_trunc('day', bucket_start, 'UTC') AS midnight,
                api_key_id, model, requests, errors, input_tokens, output_tokens,
                cached_input_tokens, reasoning_tokens, cost_nanos, latency_ms_sum, ttfb_ms_sum
         FROM usage_rollups WHERE granularity = 'DAY'",
    )
    .fetch_all(pool)
    .await
    .expect("read rollups");
    let mut out = BTreeMap::new();
    for r in rows {
        assert!(
            r.get::<bool, _>("midnight"),
            "bucket starts at UTC midnight"
        );
        let key = (
            r.get::<String, _>("day"),
            r.get::<Option<Uuid>, _>("api_key_id"),
            r.get::<Option<String>, _>("model"),
        );
        let roll = Roll {
            requests: r.get("requests"),
            errors: r.get("errors"),
            input: r.get("input_tokens"),
            output: r.get("output_tokens"),
            cached: r.get("cached_input_tokens"),
            reasoning: r.get("reasoning_tokens"),
            cost: r.get("cost_nanos"),
            latency: r.get("latency_ms_sum"),
            ttfb: r.get("ttfb_ms_sum"),
        };
        assert!(
            out.insert(key.clone(), roll).is_none(),
            "one rollup row per day x key x model: {key:?}"
        );
    }
    out
}

async fn count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM usage_records")
        .fetch_one(pool)
        .await
        .expect("count usage records")
}

async fn stored_ids(pool: &PgPool) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>("SELECT request_id FROM usage_records")
        .fetch_all(pool)
        .await
        .expect("read request ids")
        .into_iter()
        .collect()
}

/// Request ids of the spill file's lines, in order.
fn spilled_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("spill line is JSON");
            v["request_id"].as_str().expect("request_id").to_string()
        })
        .collect()
}

fn ids(records: &[UsageRecord]) -> BTreeSet<String> {
    records.iter().map(|r| r.request_id.clone()).collect()
}

/// A TCP proxy in front of Postgres whose connections can be cut.
struct CutProxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
    accept: JoinHandle<()>,
}

struct ProxyState {
    open: bool,
    conns: Vec<AbortHandle>,
}

impl CutProxy {
    async fn start(upstream: String) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(Mutex::new(ProxyState {
            open: true,
            conns: Vec::new(),
        }));
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut s = st.lock().expect("proxy state");
                if !s.open {
                    // Refused: closed before a byte is exchanged.
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                s.conns.push(task.abort_handle());
            }
        });
        CutProxy {
            port,
            state,
            accept,
        }
    }

    /// Drops every connection and refuses new ones.
    fn cut(&self) {
        let mut s = self.state.lock().expect("proxy state");
        s.open = false;
        for c in s.conns.drain(..) {
            c.abort();
        }
    }

    /// Accepts connections again.
    fn restore(&self) {
        self.state.lock().expect("proxy state").open = true;
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn pool_via(db: &TestDb, proxy: &CutProxy) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&db.url_via(Some(proxy.port)))
        .await
        .expect("connect through the proxy")
}

#[tokio::test]
async fn batch_is_stored_with_every_field_and_daily_rollups() {
    let db = TestDb::new(true).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = PgUsageStore::new(db.pool.clone(), dir.path().join("spill.jsonl"));

    let mut records = batch("req", 0..16);
    records.extend(odd_records());
    let n = records.len() as i64;
    let out = store.write(&records).await.expect("write");
    assert_eq!(out, WriteOutcome::Written(n as u64));
    assert_eq!(count(&db.pool).await, n);
    assert!(!store.spill_path().exists(), "nothing spilled");
    let same: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_records WHERE client_request_id = 'client-same'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count by client id");
    assert_eq!(same, 16, "one client id over 16 requests keeps 16 records");

    // A streamed success with a failed attempt before it (i = 0) and an upstream error (i = 3).
    let r = sqlx::query("SELECT * FROM usage_records WHERE request_id = 'req-000'")
        .fetch_one(&db.pool)
        .await
        .expect("req-000");
    let src = &records[0];
    assert_eq!(
        r.get::<OffsetDateTime, _>("created_at"),
        time::macros::datetime!(2025-03-04 08:00:00 UTC)
    );
    assert_eq!(
        r.get::<Option<Uuid>, _>("organisation_id"),
        Some(Uuid::parse_str(ORG).expect("uuid"))
    );
    assert_eq!(
        r.get::<Option<Uuid>, _>("team_id"),
        Some(Uuid::parse_str(TEAM).expect("uuid"))
    );
    assert_eq!(r.get::<Option<Uuid>, _>("user_id"), None);
    assert_eq!(
        r.get::<Option<Uuid>, _>("api_key_id"),
        Some(Uuid::parse_str(KEY_A).expect("uuid"))
    );
    assert_eq!(r.get::<String, _>("method"), "POST");
    assert_eq!(r.get::<String, _>("endpoint"), "/v1/chat/completions");
    assert_eq!(
        r.get::<Option<String>, _>("provider").as_deref(),
        Some("mock")
    );
    assert_eq!(
        r.get::<Option<String>, _>("provider_type").as_deref(),
        Some("OPENAI")
    );
    assert_eq!(
        r.get::<Option<String>, _>("model").as_deref(),
        Some("chat-a")
    );
    assert_eq!(
        r.get::<Option<String>, _>("upstream_model").as_deref(),
        Some("up-chat-a")
    );
    assert!(r.get::<bool, _>("stream"));
    assert_eq!(r.get::<i16, _>("status"), 200);
    assert_eq!(r.get::<String, _>("outcome"), "success");
    assert_eq!(r.get::<Option<String>, _>("error_code"), None);
    assert_eq!(r.get::<f64, _>("latency_ms"), 10.5);
    assert_eq!(r.get::<Option<f64>, _>("ttfb_ms"), Some(2.25));
    assert_eq!(r.get::<i64, _>("overhead_us"), 40);
    assert_eq!(r.get::<i64, _>("input_tokens"), 100);
    assert_eq!(r.get::<i64, _>("output_tokens"), 10);
    assert_eq!(r.get::<i64, _>("cached_input_tokens"), 0);
    assert_eq!(r.get::<i64, _>("total_tokens"), 110);
    assert_eq!(r.get::<i64, _>("embedding_tokens"), 0);
    assert_eq!(r.get::<String, _>("usage_source"), "provider");
    assert_eq!(r.get::<i64, _>("cost_nanos"), src.cost_nanos as i64);
    assert!(src.cost_nanos > 0);
    assert_eq!(
        r.get::<Option<serde_json::Value>, _>("pricing"),
        Some(
            serde_json::json!({"input": 150_000_000u64, "output": 600_000_000u64,
            "cached": 75_000_000u64, "reasoning": 600_000_000u64, "image": 0})
        )
    );
    let attempts: serde_json::Value = r.get("attempts");
    assert_eq!(
        attempts,
        serde_json::to_value(&src.attempts).expect("attempts JSON")
    );
    assert_eq!(attempts.as_array().map(Vec::len), Some(2));
    assert_eq!(attempts[0]["error_class"], "connect");
    assert_eq!(
        r.get::<Option<String>, _>("provider_request_id").as_deref(),
        Some("chatcmpl-0")
    );
    assert!(!r.get::<bool, _>("stream_cut"));
    assert_eq!(r.get::<i64, _>("request_bytes"), 300);
    assert_eq!(r.get::<i64, _>("response_bytes"), 900);

    let r = sqlx::query("SELECT * FROM usage_records WHERE request_id = 'req-003'")
        .fetch_one(&db.pool)
        .await
        .expect("req-003");
    assert_eq!(r.get::<i16, _>("status"), 502);
    assert_eq!(r.get::<String, _>("outcome"), "upstream_error");
    assert_eq!(
        r.get::<Option<String>, _>("error_code").as_deref(),
        Some("upstream_error")
    );
    assert!(r.get::<bool, _>("stream"));
    assert!(r.get::<bool, _>("stream_cut"));
    assert_eq!(r.get::<String, _>("usage_source"), "none");
    assert_eq!(
        r.get::<Option<Uuid>, _>("user_id"),
        Some(Uuid::parse_str(USER).expect("uuid"))
    );
    assert_eq!(r.get::<Option<Uuid>, _>("team_id"), None);
    assert_eq!(r.get::<Option<String>, _>("provider_request_id"), None);

    // The last start time is 23:30 at -02:00, i.e. 01:30 UTC the next day.
    let t: OffsetDateTime =
        sqlx::query_scalar("SELECT created_at FROM usage_records WHERE request_id = 'req-012'")
            .fetch_one(&db.pool)
            .await
            .expect("req-012");
    assert_eq!(t, time::macros::datetime!(2025-03-06 01:30:00 UTC));

    let r = sqlx::query("SELECT * FROM usage_records WHERE request_id = 'denied-1'")
        .fetch_one(&db.pool)
        .await
        .expect("denied-1");
    assert_eq!(
        r.get::<Option<String>, _>("denied_by").as_deref(),
        Some("auth")
    );
    assert_eq!(r.get::<i16, _>("status"), 401);
    assert_eq!(r.get::<Option<String>, _>("model"), None);
    assert_eq!(r.get::<Option<serde_json::Value>, _>("pricing"), None);
    assert_eq!(
        r.get::<serde_json::Value, _>("attempts"),
        serde_json::json!([])
    );

    // Configuration-file ids are not uuids: the uuid columns stay NULL.
    let r = sqlx::query("SELECT * FROM usage_records WHERE request_id = 'toml-1'")
        .fetch_one(&db.pool)
        .await
        .expect("toml-1");
    for col in ["organisation_id", "team_id", "user_id", "api_key_id"] {
        assert_eq!(r.get::<Option<Uuid>, _>(col), None, "{col}");
    }
    assert_eq!(r.get::<i64, _>("embedding_tokens"), 7);
    assert_eq!(r.get::<String, _>("usage_source"), "estimated");

    // Rollups: summed per UTC day x key x model.
    let got = rollups(&db.pool).await;
    let want = expected_rollups(&records);
    assert_eq!(got, want);
    // Hourly rollups: on the hour, and summing to the daily ones.
    let (off_hour, hours, mismatched): (i64, i64, i64) = sqlx::query_as(
        "SELECT
           (SELECT count(*) FROM usage_rollups WHERE granularity = 'HOUR'
               AND bucket_start <> date_trunc('hour', bucket_start, 'UTC')),
           (SELECT count(*) FROM usage_rollups WHERE granularity = 'HOUR'),
           (SELECT count(*) FROM (
               SELECT date_trunc('day', bucket_start, 'UTC') AS d, dims_key,
                      sum(requests) AS r, sum(errors) AS e, sum(cost_nanos) AS c,
                      sum(input_tokens) AS i, sum(output_tokens) AS o
                 FROM usage_rollups WHERE granularity = 'HOUR' GROUP BY 1, 2) h
             FULL JOIN (
               SELECT bucket_start AS d, dims_key, requests::numeric AS r, errors::numeric AS e,
                      cost_nanos::numeric AS c, input_tokens::numeric AS i,
                      output_tokens::numeric AS o
                 FROM usage_rollups WHERE granularity = 'DAY') dd USING (d, dims_key)
            WHERE (h.r, h.e, h.c, h.i, h.o) IS DISTINCT FROM (dd.r, dd.e, dd.c, dd.i, dd.o))",
    )
    .fetch_one(&db.pool)
    .await
    .expect("hourly rollups");
    assert_eq!(off_hour, 0, "hourly buckets start on the hour");
    assert!(hours >= got.len() as i64, "{hours} hourly rows");
    assert_eq!(mismatched, 0, "hourly rollups sum to the daily ones");
    let day4_a_chat = &got[&(
        "2025-03-04".to_string(),
        Some(Uuid::parse_str(KEY_A).expect("uuid")),
        Some("chat-a".to_string()),
    )];
    // i = 0 and 4 are key A, chat-a; i = 4 falls on the second start time, same day.
    assert_eq!(day4_a_chat.requests, 2);
    assert_eq!(day4_a_chat.input, 100 + 104);
    assert_eq!(
        day4_a_chat.cost,
        (records[0].cost_nanos + records[4].cost_nanos) as i64
    );
    assert!(got.contains_key(&(
        "2025-03-06".to_string(),
        Some(Uuid::parse_str(KEY_A).expect("uuid")),
        Some("chat-a".to_string())
    )));
    let errors: i64 = got.values().map(|r| r.errors).sum();
    assert_eq!(errors, 4 + 1, "four upstream errors and one denied request");
    let requests: i64 = got.values().map(|r| r.requests).sum();
    assert_eq!(requests, n);
}

#[tokio::test]
async fn writing_a_batch_again_changes_nothing() {
    let db = TestDb::new(true).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = PgUsageStore::new(db.pool.clone(), dir.path().join("spill.jsonl"));
    let mut records = batch("req", 0..12);
    records.extend(odd_records());
    let n = records.len() as u64;

    assert_eq!(
        store.write(&records).await.expect("write"),
        WriteOutcome::Written(n)
    );
    let rolled = rollups(&db.pool).await;
    assert_eq!(
        store.write(&records).await.expect("write again"),
        WriteOutcome::Written(0)
    );
    assert_eq!(count(&db.pool).await, n as i64);
    assert_eq!(rollups(&db.pool).await, rolled);

    // A batch overlapping the stored one, with a record repeated inside it: only the new
    // records count, once each.
    let mut mixed = batch("req", 8..20);
    mixed.push(record("req", 15));
    assert_eq!(
        store.write(&mixed).await.expect("write mixed"),
        WriteOutcome::Written(8)
    );
    assert_eq!(count(&db.pool).await, n as i64 + 8);
    let mut all = records.clone();
    all.extend(mixed);
    assert_eq!(rollups(&db.pool).await, expected_rollups(&all));
    assert!(!store.spill_path().exists(), "nothing spilled");
}

#[tokio::test]
async fn outage_spills_to_disk_and_replay_stores_everything_once() {
    let db = TestDb::new(true).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let spill = dir.path().join("usage").join("spill.jsonl");
    let proxy = CutProxy::start(db.host_port()).await;
    let pool = pool_via(&db, &proxy).await;
    let store = PgUsageStore::new(pool.clone(), spill.clone())
        .with_timeout(Duration::from_secs(5))
        .with_backoff(Duration::ZERO, Duration::ZERO);
    // Nothing pending: a replay is a no-op.
    assert_eq!(store.replay_spill().await.expect("empty replay"), 0);

    let a = batch("a", 0..10);
    assert_eq!(
        store.write(&a).await.expect("write a"),
        WriteOutcome::Written(10)
    );

    proxy.cut();
    let b = batch("b", 0..10);
    assert_eq!(
        store.write(&b).await.expect("write b"),
        WriteOutcome::Spilled(10)
    );
    // A batch that was partly stored before the cut (a-000..a-004) plus new records.
    let mut c = batch("a", 0..5);
    c.extend(batch("c", 0..10));
    assert_eq!(
        store.write(&c).await.expect("write c"),
        WriteOutcome::Spilled(15)
    );
    let mut in_file: Vec<String> = b.iter().map(|r| r.request_id.clone()).collect();
    in_file.extend(c.iter().map(|r| r.request_id.clone()));
    assert_eq!(spilled_ids(&spill), in_file);

    // Still down: the replay fails and keeps the file as it was.
    let err = store
        .replay_spill()
        .await
        .expect_err("replay during the outage");
    assert!(
        matches!(err, UsageStoreError::Db(_) | UsageStoreError::Timeout(_)),
        "{err:?}"
    );
    assert_eq!(spilled_ids(&spill), in_file);

    proxy.restore();
    let replayed = store.replay_spill().await.expect("replay");
    assert_eq!(replayed, 25, "every spilled line left the file");
    assert_eq!(
        std::fs::metadata(&spill).expect("spill file").len(),
        0,
        "spill file truncated"
    );
    let mut all = a.clone();
    all.extend(b.clone());
    all.extend(c.clone());
    let want = ids(&all);
    assert_eq!(want.len(), 30);
    assert_eq!(count(&db.pool).await, 30);
    assert_eq!(stored_ids(&db.pool).await, want);
    assert_eq!(rollups(&db.pool).await, expected_rollups(&all));
    // Replaying again is cheap and changes nothing.
    assert_eq!(store.replay_spill().await.expect("second replay"), 0);
    assert_eq!(count(&db.pool).await, 30);

    // With a back-off, the first failure makes the store skip the database for a while:
    // batches go straight to disk and replays wait.
    let slow_spill = dir.path().join("slow.jsonl");
    let slow = PgUsageStore::new(pool.clone(), slow_spill.clone())
        .with_backoff(Duration::from_secs(60), Duration::from_secs(60));
    proxy.cut();
    let d = batch("d", 0..4);
    assert_eq!(
        slow.write(&d).await.expect("write d"),
        WriteOutcome::Spilled(4)
    );
    proxy.restore();
    let e = batch("e", 0..4);
    let started = Instant::now();
    assert_eq!(
        slow.write(&e).await.expect("write e"),
        WriteOutcome::Spilled(4)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        slow.replay_spill().await.expect("replay while backing off"),
        0
    );
    assert_eq!(spilled_ids(&slow_spill).len(), 8);
    assert_eq!(count(&db.pool).await, 30);

    // A store started later on the same spill file replays what an earlier one left.
    let later = PgUsageStore::new(db.pool.clone(), slow_spill.clone());
    assert_eq!(later.replay_spill().await.expect("replay at start"), 8);
    all.extend(d);
    all.extend(e);
    assert_eq!(count(&db.pool).await, 38);
    assert_eq!(stored_ids(&db.pool).await, ids(&all));
    assert_eq!(rollups(&db.pool).await, expected_rollups(&all));
}

#[tokio::test]
async fn replay_survives_torn_lines_bad_values_and_poison_records() {
    let db = TestDb::new(true).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let spill = dir.path().join("spill.jsonl");
    let store = PgUsageStore::new(db.pool.clone(), spill.clone())
        .with_backoff(Duration::from_secs(60), Duration::from_secs(60));

    // Two records whose costs cannot be summed in one rollup row (bigint overflow): the
    // database rejects the batch, which is spilled without starting a back-off.
    let poison: Vec<UsageRecord> = (0..2)
        .map(|i| UsageRecord {
            request_id: format!("poison-{i}"),
            timestamp: "2025-03-04T08:00:00Z".into(),
            api_key_id: Some(KEY_POISON.into()),
            model: Some("chat-a".into()),
            endpoint: "/v1/chat/completions".into(),
            status: 200,
            outcome: "success",
            cost_nanos: u64::MAX,
            ..Default::default()
        })
        .collect();
    assert_eq!(
        store.write(&poison).await.expect("write poison"),
        WriteOutcome::Spilled(2)
    );
    let good = batch("good", 0..3);
    assert_eq!(
        store.write(&good).await.expect("write after a data error"),
        WriteOutcome::Written(3)
    );

    // Lines a crash or a stray writer could leave, and values Postgres would refuse as is.
    let mut weird = serde_json::to_value(record("weird", 1)).expect("record JSON");
    weird["request_id"] = format!("w{}", "x".repeat(300)).into();
    weird["model"] = "nul\u{0}model".into();
    weird["status"] = 65535.into();
    weird["usage_source"] = "bogus".into();
    weird["latency_ms"] = serde_json::Value::Null;
    weird["attempts"][0]["provider"] = "de\u{0}ad".into();
    let plain = serde_json::to_string(&record("plain", 2)).expect("record JSON");
    let extra = format!(
        "\n{}\nnot json at all\n{{\"request_id\": 5}}\n{plain}\n{{\"request_id\": \"torn",
        weird
    );
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&spill)
            .expect("open spill");
        f.write_all(extra.as_bytes()).expect("append lines");
    }
    // A later spill starts on a fresh line after the torn one.
    let proxy = CutProxy::start(db.host_port()).await;
    let cut_pool = pool_via(&db, &proxy).await;
    proxy.cut();
    let down = PgUsageStore::new(cut_pool, spill.clone());
    let late = batch("late", 0..2);
    assert_eq!(
        down.write(&late).await.expect("spill late"),
        WriteOutcome::Spilled(2)
    );
    let text = std::fs::read_to_string(&spill).expect("spill file");
    assert!(
        text.contains("\"torn\n{\"request_id\":\"late-000\""),
        "{text}"
    );

    // poison-0, poison-1, weird, plain, late-000, late-001 parse; poison-1 cannot be stored.
    let replayed = store.replay_spill().await.expect("replay");
    assert_eq!(replayed, 5);
    assert_eq!(std::fs::metadata(&spill).expect("spill").len(), 0);
    let rejected = std::fs::read_to_string(store.rejected_path()).expect("rejected file");
    let rejected: Vec<&str> = rejected.lines().collect();
    assert_eq!(rejected.len(), 4, "{rejected:#?}");
    assert!(rejected[0].contains("poison-1"), "{rejected:#?}");
    assert_eq!(rejected[1], "not json at all");
    assert_eq!(rejected[2], "{\"request_id\": 5}");
    assert_eq!(rejected[3], "{\"request_id\": \"torn");

    let stored = stored_ids(&db.pool).await;
    let weird_id = format!("w{}", "x".repeat(199));
    for id in [
        "poison-0",
        "plain-002",
        "late-000",
        "late-001",
        "good-000",
        weird_id.as_str(),
    ] {
        assert!(stored.contains(id), "{id} stored");
    }
    assert!(!stored.contains("poison-1"));
    assert_eq!(stored.len(), 3 + 5);
    let r = sqlx::query("SELECT * FROM usage_records WHERE request_id = $1")
        .bind(&weird_id)
        .fetch_one(&db.pool)
        .await
        .expect("weird record");
    assert_eq!(
        r.get::<Option<String>, _>("model").as_deref(),
        Some("nulmodel")
    );
    assert_eq!(r.get::<i16, _>("status"), i16::MAX);
    assert_eq!(r.get::<String, _>("usage_source"), "none");
    assert_eq!(r.get::<f64, _>("latency_ms"), 0.0);
    assert_eq!(
        r.get::<serde_json::Value, _>("attempts")[0]["provider"],
        "dead"
    );

    // Replaying the same lines again (a crash before the file was truncated) adds nothing.
    let rolled = rollups(&db.pool).await;
    std::fs::write(&spill, format!("{plain}\n")).expect("rewrite spill");
    let again = PgUsageStore::new(db.pool.clone(), spill.clone());
    assert_eq!(again.replay_spill().await.expect("replay again"), 1);
    assert_eq!(count(&db.pool).await, 8);
    assert_eq!(rollups(&db.pool).await, rolled);
}
