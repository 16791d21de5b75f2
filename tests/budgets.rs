//! Budgets end to end (SPEC §7): prepaid balances (file and database mode, top-ups through the
//! admin API, the balance in `/v1/keys/validate`), warning-threshold webhooks, and the admin
//! API's view of current windows, through real `wharf` processes in front of the mock provider.
#![allow(clippy::unwrap_used)]

mod common;

use common::db::TestDb;
use common::*;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const K1: &str = "budget-key-one";

/// A `[[keys]]` entry for `secret` with `id`, granted every model.
fn key(id: &str, secret: &str) -> String {
    format!(
        r#"
[[keys]]
id = "{id}"
hash = "{hash}"
type = "TEAM"
organisation_id = "org_budget"
team_id = "team_budget"
models = ["*"]
"#,
        hash = sha(secret)
    )
}

async fn chat(gw: &Gw, secret: &str, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// `GET /v1/keys/validate` with `secret`: the key's balances.
async fn balances(gw: &Gw, secret: &str) -> Vec<Value> {
    let r = client()
        .get(gw.url("/v1/keys/validate"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["balances"].as_array().unwrap().clone()
}

/// The gateway's reservation for `body` on `chat-a` (input 0.15, output 0.60 USD per 1M).
fn chat_a_estimate(body: &Value) -> u64 {
    let input = wharf::proxy::body::estimate_input_tokens(&serde_json::to_vec(body).unwrap());
    let t = wharf::usage::Tokens {
        input,
        output: body["max_tokens"].as_u64().unwrap_or(0),
        ..Default::default()
    };
    t.cost_nanos(&wharf::config::Pricing {
        input: 150_000_000,
        output: 600_000_000,
        cached: 150_000_000,
        reasoning: 600_000_000,
        image: 0,
    })
}

// ---------------------------------------------------------------------------------------------
// A webhook receiver: a plain HTTP/1.1 server that records each POSTed JSON body.
// ---------------------------------------------------------------------------------------------

/// A delivery's `x-wharf-signature` header and exact body.
type Signed = (Option<String>, Vec<u8>);

struct Receiver {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Vec<Value>>>,
    signed: Arc<Mutex<Vec<Signed>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let signed = Arc::new(Mutex::new(Vec::new()));
        let (store, sigs) = (got.clone(), signed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (store, sigs) = (store.clone(), sigs.clone());
                tokio::spawn(async move {
                    // Several requests may come over one connection.
                    let mut buf = Vec::new();
                    loop {
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse().unwrap())
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            let mut chunk = [0u8; 4096];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Value =
                            serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
                        assert!(head.starts_with("post /hook "), "{head}");
                        let sig = head
                            .lines()
                            .find_map(|l| l.strip_prefix("x-wharf-signature:"))
                            .map(|v| v.trim().to_string());
                        let raw = buf[head_end..head_end + len].to_vec();
                        sigs.lock().unwrap().push((sig, raw));
                        store.lock().unwrap().push(body);
                        buf.drain(..head_end + len);
                        let ok = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
                        if sock.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver { addr, got, signed }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn got(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` deliveries arrived.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        poll(
            Duration::from_secs(10),
            &format!("{n} webhook deliveries"),
            async || {
                let got = self.got();
                (got.len() >= n).then_some(got)
            },
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// File mode.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn file_mode_prepaid_balance_is_spent_shown_and_kept_across_a_restart() {
    let mock = mock().await;
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("budgets.json");
    let mut body = chat_body("chat-a", false);
    body["max_tokens"] = json!(100);
    let est = chat_a_estimate(&body);
    let credit = 3 * est + est / 2;
    let cfg = format!(
        r#"
[governance]
budget_state_path = "{}"

[[budgets]]
id = "credit"
owner = "APIKEY"
owner_id = "k_balance"
amount_nanos = {credit}
"#,
        state.display()
    ) + &key("k_balance", K1);
    let gw = Gw::start_with(&mock, &cfg).await;
    let b = balances(&gw, K1).await;
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0]["id"], "credit");
    assert_eq!(b[0]["owner"], "APIKEY");
    assert_eq!(b[0]["credited_nanos"], credit);
    assert_eq!(b[0]["remaining_nanos"], credit);
    // Spend it: every request that fits is admitted, the first that does not is refused
    // before any upstream call, and says what remains.
    let mut used = 0u64;
    let mut admitted = 0;
    loop {
        let before = mock.request_count();
        let r = chat(&gw, K1, &body, &[("x-mock-tokens", "100")]).await;
        if used + est > credit {
            assert_eq!(r.status(), 402);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
            assert_eq!(v["error"]["remaining"], credit - used, "{v}");
            assert_eq!(v["error"]["limit"], credit, "{v}");
            assert_eq!(mock.request_count(), before, "no upstream call");
            break;
        }
        assert_eq!(r.status(), 200, "{used} + {est} <= {credit}");
        admitted += 1;
        let id = request_id(&r);
        used += gw.usage_of(&id).await["cost_nanos"].as_u64().unwrap();
        assert!(
            admitted <= 4,
            "a balance of 3.5 requests admitted {admitted}"
        );
    }
    assert!(admitted >= 3, "{admitted}");
    let b = balances(&gw, K1).await;
    assert_eq!(b[0]["used_nanos"], used, "used = the usage records' cost");
    assert_eq!(b[0]["reserved_nanos"], 0);
    assert_eq!(b[0]["remaining_nanos"], credit - used);
    // Persisted shortly after the settles, then read by a new process.
    poll(Duration::from_secs(5), "the state file", async || {
        let saved: Value = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())?;
        (saved[0]["used"] == used).then_some(())
    })
    .await;
    drop(gw);
    let gw = Gw::start_with(&mock, &cfg).await;
    let b = balances(&gw, K1).await;
    assert_eq!(b[0]["used_nanos"], used, "kept across the restart");
    assert_eq!(b[0]["remaining_nanos"], credit - used);
    let r = chat(&gw, K1, &body, &[]).await;
    assert_eq!(r.status(), 402);
    // Another key sees no balance.
    assert!(balances(&gw, KEY_GOOD).await.is_empty());
}

#[test]
fn a_quota_needs_a_period_and_a_webhook_needs_a_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    let text = r#"
[governance]
warning_webhook_url = "ftp://example.com/hook"

[[quotas]]
id = "q"
owner = "ORG"
owner_id = "o"
metric = "REQUESTS"
limit = 3
"#;
    std::fs::write(&path, text).unwrap();
    let err = wharf::config::load(path.to_str().unwrap())
        .expect_err("invalid")
        .to_string();
    assert!(err.contains("quotas[0].period: is required"), "{err}");
    assert!(err.contains("governance.warning_webhook_url"), "{err}");
}

#[tokio::test]
async fn warning_webhook_gets_exactly_one_delivery_per_crossing() {
    let mock = mock().await;
    let hook = Receiver::start().await;
    let cfg = format!(
        r#"
[governance]
warning_webhook_url = "{url}"
warning_webhook_secret_env = "WHARF_TEST_HOOK_SECRET"

[[quotas]]
id = "team-requests"
owner = "TEAM"
owner_id = "team_budget"
metric = "REQUESTS"
limit = 10
period = "DAILY"
timezone = "Asia/Tokyo"
warning_thresholds = [20, 50, 80]
"#,
        url = hook.url()
    ) + &key("k_hook", K1);
    let gw = Gw::start_custom(
        &mock,
        |port, admin, dir| config_text(&mock.addr().to_string(), port, admin, dir, &cfg),
        &[("WHARF_TEST_HOOK_SECRET", "hook-secret".to_string())],
    )
    .await;
    // Requests 2, 5 and 8 cross 20 %, 50 % and 80 %.
    for i in 1..=8 {
        let r = chat(&gw, K1, &chat_body("chat-a", false), &[]).await;
        assert_eq!(r.status(), 200);
        gw.usage_of(&request_id(&r)).await;
        if i == 5 {
            // Nothing is delivered twice: by the time 50 % arrives, 20 % came once.
            let got = hook.wait_for(2).await;
            assert_eq!(got.len(), 2, "{got:?}");
        }
    }
    // The worker delivers in order: once 80 % is in, an extra 20 % or 50 % would be too.
    let got = hook.wait_for(3).await;
    let thresholds: Vec<u64> = got
        .iter()
        .map(|w| w["threshold_percent"].as_u64().unwrap())
        .collect();
    assert_eq!(thresholds, vec![20, 50, 80], "{got:?}");
    for (w, used) in got.iter().zip([2, 5, 8]) {
        assert_eq!(w["event"], "budget.warning");
        assert_eq!(w["kind"], "quota");
        assert_eq!(w["id"], "team-requests");
        assert_eq!(w["owner"], "TEAM");
        assert_eq!(w["owner_id"], "team_budget");
        assert_eq!(w["balance"], false);
        assert_eq!(w["limit"], 10);
        assert_eq!(w["used"], used, "{w}");
        // The Tokyo day: starts at 15:00 UTC.
        assert!(
            w["window_start"].as_str().unwrap().ends_with("T15:00:00Z"),
            "{w}"
        );
    }
    // Logged, counted as crossings and as deliveries.
    let m = poll(Duration::from_secs(5), "the delivery metric", async || {
        let m = client()
            .get(gw.admin_url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        m.contains("wharf_budget_warning_webhooks_total{result=\"sent\"} 3")
            .then_some(m)
    })
    .await;
    for t in [20, 50, 80] {
        assert!(
            m.contains(&format!(
                "wharf_budget_warnings_total{{kind=\"quota\",threshold=\"{t}\"}} 1"
            )),
            "{m}"
        );
    }
    assert!(gw.log().contains("budget warning threshold crossed"));
    // Two more requests cross nothing: still three deliveries.
    for _ in 0..2 {
        let r = chat(&gw, K1, &chat_body("chat-a", false), &[]).await;
        gw.usage_of(&request_id(&r)).await;
    }
    assert_eq!(hook.got().len(), 3);
    // Each delivery is signed: HMAC-SHA256 of the exact body under the secret.
    for (sig, raw) in hook.signed.lock().unwrap().iter() {
        let expected = wharf::governance::webhook::sign(b"hook-secret", raw);
        assert_eq!(sig.as_deref(), Some(expected.as_str()));
    }
}

// ---------------------------------------------------------------------------------------------
// Database mode.
// ---------------------------------------------------------------------------------------------

const MASTER: &str = common::db::TEST_MASTER_KEYS;

async fn db_gw(mock: &wharf_mock::MockServer, db: &TestDb, hook: Option<&Receiver>) -> Gw {
    db_gw_with(mock, db, hook, None).await
}

/// The Redis of a database-mode node: its URL and extra `[governance]` lines.
struct WithRedis {
    url: String,
    governance: &'static str,
}

impl WithRedis {
    fn shared() -> Option<WithRedis> {
        Some(WithRedis {
            url: common::db::redis_url(),
            governance: "",
        })
    }
}

/// A database-mode gateway, with the webhook and Redis when asked.
async fn db_gw_with(
    mock: &wharf_mock::MockServer,
    db: &TestDb,
    hook: Option<&Receiver>,
    redis: Option<WithRedis>,
) -> Gw {
    let mut hook = hook
        .map(|h| format!("\n[governance]\nwarning_webhook_url = \"{}\"\n", h.url()))
        .unwrap_or_default();
    let redis_url = redis.as_ref().map(|r| r.url.clone()).unwrap_or_default();
    if let Some(r) = &redis {
        // A generous Redis timeout: the exactness tests are not about fail-open.
        if hook.is_empty() {
            hook.push_str("\n[governance]\n");
        }
        if !r.governance.contains("redis_timeout_ms") {
            hook.push_str("redis_timeout_ms = 5000\n");
        }
        hook.push_str(&format!(
            "{}\n\n[redis]\nurl_env = \"WHARF_TEST_REDIS\"\n",
            r.governance
        ));
    }
    let gw = Gw::start_custom(
        mock,
        |port, admin, dir| common::db::node_config(port, admin, dir, &hook),
        &[
            ("WHARF_TEST_DATABASE_URL", db.url()),
            ("WHARF_MASTER_KEYS", MASTER.to_string()),
            ("WHARF_TEST_REDIS", redis_url),
        ],
    )
    .await;
    // The admin listener answers before the control service has its pool: wait for it.
    poll(Duration::from_secs(10), "the admin API", async || {
        let st = client()
            .get(gw.admin_url("/api/me"))
            .send()
            .await
            .ok()?
            .status();
        (st != 503).then_some(())
    })
    .await;
    gw
}

/// The admin API with the bootstrap SUPER_ADMIN's token.
struct Api {
    base: String,
    token: String,
}

impl Api {
    async fn root(gw: &Gw, db: &TestDb) -> Api {
        let token = wharf::api::bootstrap::bootstrap(&db.pool, Some("root@example.com"))
            .await
            .unwrap()
            .token;
        Api {
            base: gw.admin_url(""),
            token,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rq = client()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let r = rq.send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

/// An organisation, model `db-chat` (input 1, output 2 USD per 1M) on the mock and a key
/// granted it: (organisation, key id, secret).
async fn db_seed(db: &TestDb, mock: &wharf_mock::MockServer) -> (uuid::Uuid, uuid::Uuid, String) {
    let c = common::db::seed_catalog(db, mock, "Budgets", "db-chat", "db-slug").await;
    let (key_id, secret) = common::db::seed_key(db, c.org, "k", &[c.model]).await;
    (c.org, key_id, secret)
}

/// Sum of the cost of the key's successful chat usage records, once there are `n` of them.
async fn records_cost(db: &TestDb, key_id: uuid::Uuid, n: i64) -> i64 {
    poll(Duration::from_secs(10), "the usage records", async || {
        let (count, sum): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), sum(cost_nanos)::bigint FROM usage_records
              WHERE api_key_id = $1 AND status = 200 AND model = 'db-chat'",
        )
        .bind(key_id)
        .fetch_one(&db.pool)
        .await
        .ok()?;
        (count == n).then_some(sum.unwrap_or(0))
    })
    .await
}

#[tokio::test]
async fn database_prepaid_balance_across_two_nodes_topped_up_through_the_admin_api() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let hook = Receiver::start().await;
    let (org, key_id, secret) = db_seed(&db, &mock).await;
    let a = db_gw(&mock, &db, Some(&hook)).await;
    let b = db_gw(&mock, &db, Some(&hook)).await;
    let api = Api::root(&a, &db).await;
    let mut body = chat_body("db-chat", false);
    body["max_tokens"] = json!(50);
    // One request reserves 50 × 2000 + input × 1000 nanos; the balance holds 3.5.
    let one = 50 * 2000
        + 1000 * wharf::proxy::body::estimate_input_tokens(&serde_json::to_vec(&body).unwrap());
    let credit = 3 * one + one / 2;
    let (st, budget) = api
        .post(
            &format!("/api/organisations/{org}/budgets"),
            json!({"name": "credit", "scope": "APIKEY", "scope_id": key_id.to_string(),
                   "amount_nanos": credit, "warning_thresholds": [50]}),
        )
        .await;
    assert_eq!(st, 201, "{budget}");
    assert_eq!(budget["period"], Value::Null, "{budget}");
    let bid = budget["id"].as_str().unwrap().to_string();
    let bal = balances(&a, &secret).await;
    assert_eq!(bal.len(), 1, "{bal:?}");
    assert_eq!(bal[0]["id"], bid.as_str());
    assert_eq!(bal[0]["remaining_nanos"], credit);

    // 16 concurrent requests over both nodes: the balance admits what fits, exactly once.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let url = if i % 2 == 0 { &a } else { &b }.url("/v1/chat/completions");
        let (secret, body) = (secret.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = client()
                .post(url)
                .bearer_auth(secret)
                .header("x-mock-tokens", "50")
                .json(&body)
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (st, v["error"]["code"].as_str().unwrap_or("").to_string())
        }));
    }
    let mut ok = 0i64;
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (402, code) => assert_eq!(code, "budget_exceeded"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((1..=4).contains(&ok), "{ok} admitted");
    let spent = records_cost(&db, key_id, ok).await;
    let usage_path = format!("/api/organisations/{org}/budgets/{bid}/usage");
    let window = poll(Duration::from_secs(10), "every settle", async || {
        let (st, w) = api.get(&usage_path).await;
        assert_eq!(st, 200, "{w}");
        (w["reserved"] == 0 && w["used"] == spent).then_some(w)
    })
    .await;
    assert!(spent as u64 <= credit + one, "{spent} > {credit} + {one}");
    assert_eq!(window["balance"], true);
    assert_eq!(window["window"]["end"], Value::Null);
    assert_eq!(window["limit"], credit);
    assert_eq!(window["remaining"], (credit as i64 - spent).max(0));

    // Spend what the settles gave back (actual costs are below the estimates), until refused
    // before any upstream call.
    let fill = 4 * one;
    let mut denied = false;
    for _ in 0..4 {
        let before = mock.request_count();
        let r = chat(&b, &secret, &body, &[("x-mock-tokens", "50")]).await;
        if r.status() == 402 {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "budget_exceeded");
            assert_eq!(mock.request_count(), before);
            denied = true;
            break;
        }
        assert_eq!(r.status(), 200);
        ok += 1;
    }
    assert!(denied);
    let spent = records_cost(&db, key_id, ok).await;
    poll(Duration::from_secs(10), "every settle", async || {
        let (_, w) = api.get(&usage_path).await;
        (w["reserved"] == 0 && w["used"] == spent).then_some(())
    })
    .await;

    // A top-up counts at once on both nodes (no cache to wait for), and is recorded.
    let (st, t) = api
        .post(
            &format!("/api/organisations/{org}/budgets/{bid}/topups"),
            json!({"amount_nanos": fill, "note": "invoice 42"}),
        )
        .await;
    assert_eq!(st, 201, "{t}");
    assert_eq!(t["credited_after_nanos"], credit + fill);
    assert_eq!(t["balance"]["used_nanos"], spent);
    assert_eq!(
        t["balance"]["remaining_nanos"],
        (credit + fill) as i64 - spent
    );
    let r = chat(&b, &secret, &body, &[("x-mock-tokens", "50")]).await;
    assert_eq!(r.status(), 200, "admitted right after the top-up");
    let r = chat(&a, &secret, &body, &[("x-mock-tokens", "50")]).await;
    assert_eq!(r.status(), 200);
    let spent = records_cost(&db, key_id, ok + 2).await;
    let bal = poll(Duration::from_secs(10), "the settles", async || {
        let bal = balances(&a, &secret).await;
        (bal[0]["used_nanos"] == spent && bal[0]["reserved_nanos"] == 0).then_some(bal)
    })
    .await;
    assert_eq!(bal[0]["credited_nanos"], credit + fill);
    assert_eq!(
        bal[0]["remaining_nanos"],
        (credit + fill) as i64 - spent,
        "{bal:?}"
    );
    let (st, list) = api
        .get(&format!("/api/organisations/{org}/budgets/{bid}/topups"))
        .await;
    assert_eq!(st, 200);
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["data"][0]["note"], "invoice 42");
    assert_eq!(list["data"][0]["amount_nanos"], fill);
    let recorded: i64 = sqlx::query_scalar(
        "SELECT sum(amount_nanos)::bigint FROM budget_topups WHERE budget_id = $1",
    )
    .bind(uuid::Uuid::parse_str(&bid).unwrap())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(recorded as u64, fill);

    // Bad top-ups name the field; a periodic budget cannot be topped up.
    let topups = format!("/api/organisations/{org}/budgets/{bid}/topups");
    for (body, field) in [
        (json!({"amount_nanos": 0}), "amount_nanos"),
        (json!({"amount_nanos": "5"}), "amount_nanos"),
        (json!({"note": "x"}), "amount_nanos"),
        (json!({"amount_nanos": 5, "extra": 1}), "extra"),
    ] {
        let (st, v) = api.post(&topups, body).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let (_, monthly) = api
        .post(
            &format!("/api/organisations/{org}/budgets"),
            json!({"scope": "ORG", "amount_nanos": 10_000_000_000u64, "period": "MONTHLY"}),
        )
        .await;
    let (st, v) = api
        .post(
            &format!(
                "/api/organisations/{org}/budgets/{}/topups",
                monthly["id"].as_str().unwrap()
            ),
            json!({"amount_nanos": 5}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["field"], "period");
    let (st, _) = api
        .post(
            &format!(
                "/api/organisations/{org}/budgets/{}/topups",
                uuid::Uuid::new_v4()
            ),
            json!({"amount_nanos": 5}),
        )
        .await;
    assert_eq!(st, 404);

    // The 50 % warning of the first credit was sent once, by one of the two nodes.
    let got = hook.wait_for(1).await;
    assert_eq!(got[0]["kind"], "budget");
    assert_eq!(got[0]["balance"], true);
    assert_eq!(got[0]["id"], bid.as_str());
    assert_eq!(got[0]["threshold_percent"], 50);
    let n50 = hook
        .got()
        .iter()
        .filter(|w| w["threshold_percent"] == 50 && w["limit"] == credit)
        .count();
    assert_eq!(n50, 1, "{:?}", hook.got());
}

#[tokio::test]
async fn admin_api_shows_current_windows_reservations_and_remaining_capacity() {
    admin_api_windows(None).await;
}

/// With Redis the windows in flight live there: the admin API shows them all the same, and
/// the Postgres ledger holds no reservation.
#[tokio::test]
async fn admin_api_shows_redis_windows_reservations_and_remaining_capacity() {
    admin_api_windows(WithRedis::shared()).await;
}

async fn admin_api_windows(redis: Option<WithRedis>) {
    let fast_path = redis.is_some();
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let (org, key_id, secret) = db_seed(&db, &mock).await;
    let gw = db_gw_with(&mock, &db, None, redis).await;
    let api = Api::root(&gw, &db).await;
    let limit = 1_000_000_000u64;
    let (st, budget) = api
        .post(
            &format!("/api/organisations/{org}/budgets"),
            json!({"scope": "APIKEY", "scope_id": key_id.to_string(), "amount_nanos": limit,
                   "period": "MONTHLY", "timezone": "America/New_York"}),
        )
        .await;
    assert_eq!(st, 201, "{budget}");
    let (st, quota) = api
        .post(
            &format!("/api/organisations/{org}/quotas"),
            json!({"scope": "APIKEY", "scope_id": key_id.to_string(), "metric": "REQUESTS",
                   "limit_value": 100, "period": "DAILY"}),
        )
        .await;
    assert_eq!(st, 201, "{quota}");
    let bpath = format!(
        "/api/organisations/{org}/budgets/{}/usage",
        budget["id"].as_str().unwrap()
    );
    let qpath = format!(
        "/api/organisations/{org}/quotas/{}/usage",
        quota["id"].as_str().unwrap()
    );
    let (st, w) = api.get(&bpath).await;
    assert_eq!(st, 200, "{w}");
    assert_eq!(w["used"], 0);
    assert_eq!(w["remaining"], limit);
    assert_eq!(w["balance"], false);

    // A request in flight holds a reservation, visible with its request id.
    let url = gw.url("/v1/chat/completions");
    let (s2, mut body) = (secret.clone(), chat_body("db-chat", false));
    body["max_tokens"] = json!(40);
    let slow = tokio::spawn(async move {
        client()
            .post(url)
            .bearer_auth(s2)
            .header("x-request-id", "slow-one")
            .header("x-mock-latency-ms", "1500")
            .header("x-mock-tokens", "40")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
    });
    let held = poll(Duration::from_secs(5), "the reservation", async || {
        let (_, w) = api.get(&bpath).await;
        (w["reservations_in_flight"] == 1).then_some(w)
    })
    .await;
    assert!(held["reserved"].as_u64().unwrap() > 0, "{held}");
    // Reservations are keyed by the gateway's own request id, never the client's.
    let held_id = held["reservations"][0]["request_id"]
        .as_str()
        .unwrap_or_default();
    assert!(
        held_id.len() == 32 && held_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{held}"
    );
    assert_eq!(
        held["remaining"].as_u64().unwrap(),
        limit - held["reserved"].as_u64().unwrap()
    );
    let (_, q) = api.get(&qpath).await;
    assert_eq!(q["reserved"], 1, "{q}");
    let in_postgres: i64 = sqlx::query_scalar("SELECT count(*) FROM budget_reservations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(in_postgres, if fast_path { 0 } else { 1 });
    assert_eq!(slow.await.unwrap(), 200);

    // Settled to the usage record's cost.
    let cost = records_cost(&db, key_id, 1).await;
    let w = poll(Duration::from_secs(10), "the settle", async || {
        let (_, w) = api.get(&bpath).await;
        (w["reserved"] == 0 && w["used"] == cost).then_some(w)
    })
    .await;
    assert_eq!(w["remaining"], limit as i64 - cost);
    assert_eq!(w["reservations"], json!([]));
    // Postgres has the settled amount too (flushed moments after the settle).
    poll(Duration::from_secs(10), "the flush", async || {
        let used: i64 = sqlx::query_scalar("SELECT used_nanos FROM budget_windows")
            .fetch_one(&db.pool)
            .await
            .ok()?;
        (used == cost).then_some(())
    })
    .await;
    assert!(w["window"]["start"].as_str().unwrap().ends_with("Z"), "{w}");
    let (_, q) = api.get(&qpath).await;
    assert_eq!(
        (q["used"].clone(), q["remaining"].clone()),
        (json!(1), json!(99))
    );

    // Per owner: both meters of the key, none of another owner.
    let (st, all) = api
        .get(&format!(
            "/api/organisations/{org}/usage/limits?scope=APIKEY&scope_id={key_id}"
        ))
        .await;
    assert_eq!(st, 200, "{all}");
    assert_eq!(all["total"], 2, "{all}");
    let kinds: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["budget", "quota"]);
    let (_, none) = api
        .get(&format!(
            "/api/organisations/{org}/usage/limits?scope=TEAM&scope_id={}",
            uuid::Uuid::new_v4()
        ))
        .await;
    assert_eq!(none["total"], 0, "{none}");
    let (st, v) = api
        .get(&format!("/api/organisations/{org}/usage/limits?scope=KEY"))
        .await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["field"], "scope");
    // Another organisation's id: 404.
    let other = common::seed::create_organisation(&db.pool, "Other")
        .await
        .unwrap();
    let (st, _) = api
        .get(&format!(
            "/api/organisations/{other}/budgets/{}/usage",
            budget["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(st, 404);
    // Documented.
    let doc: Value = client()
        .get(gw.admin_url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for p in [
        "/api/organisations/{organisationId}/budgets/{id}/usage",
        "/api/organisations/{organisationId}/quotas/{id}/usage",
        "/api/organisations/{organisationId}/usage/limits",
        "/api/organisations/{organisationId}/budgets/{id}/topups",
    ] {
        assert!(doc["paths"][p]["get"].is_object(), "{p}");
    }
    assert!(doc["components"]["schemas"]["MeterWindow"].is_object());
}

#[tokio::test]
async fn database_rollover_carries_the_previous_windows_unused_amount() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let c = common::db::seed_catalog(&db, &mock, "Rollover", "db-chat", "db-slug").await;
    let (k_roll, s_roll) = common::db::seed_key(&db, c.org, "roll", &[c.model]).await;
    let (k_plain, s_plain) = common::db::seed_key(&db, c.org, "plain", &[c.model]).await;
    let mut body = chat_body("db-chat", false);
    body["max_tokens"] = json!(50);
    let one = 50 * 2000
        + 1000 * wharf::proxy::body::estimate_input_tokens(&serde_json::to_vec(&body).unwrap());
    // Less than one request's reservation; twice that is more.
    let amount = one * 2 / 3;
    let mut budgets = Vec::new();
    for (key, rollover) in [(k_roll, true), (k_plain, false)] {
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO budgets (organisation_id, scope, scope_id, amount_nanos, period, rollover)
             VALUES ($1, 'APIKEY', $2, $3, 'DAILY', $4) RETURNING id",
        )
        .bind(c.org)
        .bind(key)
        .bind(amount as i64)
        .bind(rollover)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        // Yesterday (UTC) was opened and left everything unused.
        sqlx::query(
            "INSERT INTO budget_windows (budget_id, window_start, window_end)
             SELECT $1, d - interval '1 day', d
               FROM (SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS d) t",
        )
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
        budgets.push(id);
    }
    let gw = db_gw(&mock, &db, None).await;
    let r = chat(&gw, &s_plain, &body, &[]).await;
    assert_eq!(r.status(), 402, "{amount} < {one} without rollover");
    let r = chat(&gw, &s_roll, &body, &[("x-mock-tokens", "50")]).await;
    assert_eq!(r.status(), 200, "{amount} + {amount} carried >= {one}");
    let api = Api::root(&gw, &db).await;
    let w = poll(Duration::from_secs(10), "the settle", async || {
        let (_, w) = api
            .get(&format!(
                "/api/organisations/{}/budgets/{}/usage",
                c.org, budgets[0]
            ))
            .await;
        (w["reserved"] == 0 && w["used"] != 0).then_some(w)
    })
    .await;
    assert_eq!(w["rollover"], amount, "{w}");
    assert_eq!(w["limit"], 2 * amount, "{w}");
    let (_, w) = api
        .get(&format!(
            "/api/organisations/{}/budgets/{}/usage",
            c.org, budgets[1]
        ))
        .await;
    assert_eq!(
        (w["rollover"].clone(), w["limit"].clone()),
        (json!(0), json!(amount))
    );
}

#[tokio::test]
async fn stale_reservations_whose_usage_record_exists_are_settled_to_it() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let (org, key_id, _) = db_seed(&db, &mock).await;
    let pool = &db.pool;
    let budget: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO budgets (organisation_id, scope, scope_id, amount_nanos, period)
         VALUES ($1, 'APIKEY', $2, 10000, 'DAILY') RETURNING id",
    )
    .bind(org)
    .bind(key_id)
    .fetch_one(pool)
    .await
    .unwrap();
    let quota: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO quotas (organisation_id, scope, scope_id, metric, limit_value, period)
         VALUES ($1, 'APIKEY', $2, 'TOKENS', 1000, 'DAILY') RETURNING id",
    )
    .bind(org)
    .bind(key_id)
    .fetch_one(pool)
    .await
    .unwrap();
    let bw: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO budget_windows (budget_id, window_start, window_end, reserved_nanos)
         VALUES ($1, now() - interval '1 hour', now() + interval '1 hour', 700) RETURNING id",
    )
    .bind(budget)
    .fetch_one(pool)
    .await
    .unwrap();
    let qw: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO quota_windows (quota_id, window_start, window_end, reserved)
         VALUES ($1, now() - interval '1 hour', now() + interval '1 hour', 200) RETURNING id",
    )
    .bind(quota)
    .fetch_one(pool)
    .await
    .unwrap();
    // "done" wrote its usage record (then its node died before settling); "lost" did not.
    for rid in ["done", "lost"] {
        let full = format!("{rid}/{}", uuid::Uuid::new_v4().simple());
        sqlx::query(
            "INSERT INTO budget_requests (request_id, expires_at) VALUES ($1, now() - interval '1 minute')",
        )
        .bind(&full)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO budget_reservations (request_id, budget_id, window_id, amount_nanos, expires_at)
             VALUES ($1, $2, $3, 350, now() - interval '1 minute')",
        )
        .bind(&full)
        .bind(budget)
        .bind(bw)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO quota_reservations (request_id, quota_id, window_id, amount, expires_at)
             VALUES ($1, $2, $3, 100, now() - interval '1 minute')",
        )
        .bind(&full)
        .bind(quota)
        .bind(qw)
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO usage_records (request_id, api_key_id, endpoint, status, outcome, input_tokens,
                                    output_tokens, cost_nanos, attempts)
         VALUES ('done', $1, '/v1/chat/completions', 200, 'success', 30, 12, 123,
                 '[{\"provider\": \"mockp\", \"outcome\": \"success\"}]')",
    )
    .bind(key_id)
    .execute(pool)
    .await
    .unwrap();
    use wharf::governance::budget_pg::{expire_stale, settle_stale};
    assert_eq!(
        settle_stale(pool).await.unwrap(),
        2,
        "one budget, one quota"
    );
    assert_eq!(settle_stale(pool).await.unwrap(), 0, "each row once");
    assert_eq!(
        expire_stale(pool).await.unwrap(),
        2,
        "the lost request's two"
    );
    let b: (i64, i64) =
        sqlx::query_as("SELECT used_nanos, reserved_nanos FROM budget_windows WHERE id = $1")
            .bind(bw)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        b,
        (123, 0),
        "settled to the record's cost, the rest given back"
    );
    let q: (i64, i64) = sqlx::query_as("SELECT used, reserved FROM quota_windows WHERE id = $1")
        .bind(qw)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(q, (42, 0), "TOKENS = input + output of the record");
    let states: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT split_part(request_id, '/', 1), state::text, actual_nanos
           FROM budget_requests ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        states,
        vec![
            ("done".into(), "SETTLED".into(), Some(123)),
            ("lost".into(), "EXPIRED".into(), None)
        ]
    );
}

/// The issue's exactness test: two gateway processes sharing Redis and Postgres, 64 concurrent
/// clients on one key. With RPM = 100 the two nodes admit exactly 100 of 192 requests; with a
/// budget of N requests' worth, the total settled cost is at most the budget plus one
/// request's reservation, and the window's `used` is the sum of the usage records' cost.
#[tokio::test]
async fn two_nodes_sharing_redis_and_postgres_hold_rpm_and_budget_exactly() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let c = common::db::seed_catalog(&db, &mock, "Exact", "db-chat", "db-slug").await;
    let (k_rpm, s_rpm) = common::db::seed_key(&db, c.org, "rpm", &[c.model]).await;
    let (k_budget, s_budget) = common::db::seed_key(&db, c.org, "budget", &[c.model]).await;
    sqlx::query("UPDATE api_keys SET policies = $2 WHERE id = $1")
        .bind(k_budget)
        .bind(json!({"policies": {"ratelimit": {"requests": {"per_minute": 1_000_000}}}}))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE api_keys SET policies = $2 WHERE id = $1")
        .bind(k_rpm)
        .bind(json!({"policies": {"ratelimit": {"requests": {"per_minute": 100}}}}))
        .execute(&db.pool)
        .await
        .unwrap();
    let mut body = chat_body("db-chat", false);
    body["max_tokens"] = json!(20);
    let one = 20 * 2000
        + 1000 * wharf::proxy::body::estimate_input_tokens(&serde_json::to_vec(&body).unwrap());
    let amount = 10 * one;
    let budget: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO budgets (organisation_id, scope, scope_id, amount_nanos, period)
         VALUES ($1, 'APIKEY', $2, $3, 'DAILY') RETURNING id",
    )
    .bind(c.org)
    .bind(k_budget)
    .bind(amount as i64)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let a = db_gw_with(&mock, &db, None, WithRedis::shared()).await;
    let b = db_gw_with(&mock, &db, None, WithRedis::shared()).await;
    // 64 clients, each sending `rounds` requests one after the other, half on each node.
    let run = |secret: String, rounds: usize, code: &'static str| {
        let urls = [a.url("/v1/chat/completions"), b.url("/v1/chat/completions")];
        let body = body.clone();
        async move {
            let mut tasks = Vec::new();
            for i in 0..64 {
                let (url, secret, body) = (urls[i % 2].clone(), secret.clone(), body.clone());
                tasks.push(tokio::spawn(async move {
                    let mut ok = 0;
                    for _ in 0..rounds {
                        let r = client()
                            .post(&url)
                            .bearer_auth(&secret)
                            .header("x-mock-tokens", "20")
                            .json(&body)
                            .send()
                            .await
                            .unwrap();
                        let st = r.status().as_u16();
                        let v: Value = r.json().await.unwrap();
                        match st {
                            200 => ok += 1,
                            429 | 402 => assert_eq!(v["error"]["code"], code, "{v}"),
                            other => panic!("unexpected {other}: {v}"),
                        }
                    }
                    ok
                }));
            }
            let mut ok = 0i64;
            for t in tasks {
                ok += t.await.unwrap();
            }
            ok
        }
    };
    // Redis-limiter failures of both nodes (a node that cannot reach Redis in time counts on
    // its own: fail open, not exact).
    let store_errors = async || {
        let mut n = 0;
        for gw in [&a, &b] {
            let m = client().get(gw.admin_url("/metrics")).send().await.unwrap();
            let m = m.text().await.unwrap();
            n += m
                .lines()
                .find_map(|l| l.strip_prefix("wharf_rate_limit_store_errors_total "))
                .map_or(0, |v| v.trim().parse::<u64>().unwrap());
        }
        n
    };
    // The budget first: its key's (unreachable) rate limit also brings up both nodes'
    // Redis connections, so the RPM run below is counted in Redis from its first request.
    let admitted = run(s_budget, 1, "budget_exceeded").await;
    assert!((1..=11).contains(&admitted), "{admitted} admitted");
    let spent = poll(Duration::from_secs(10), "the usage records", async || {
        let (n, sum): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), sum(cost_nanos)::bigint FROM usage_records
              WHERE api_key_id = $1 AND status = 200",
        )
        .bind(k_budget)
        .fetch_one(&db.pool)
        .await
        .ok()?;
        (n == admitted).then_some(sum.unwrap_or(0))
    })
    .await;
    let (used, reserved) = poll(Duration::from_secs(10), "every settle", async || {
        let w: (i64, i64) = sqlx::query_as(
            "SELECT used_nanos, reserved_nanos FROM budget_windows WHERE budget_id = $1",
        )
        .bind(budget)
        .fetch_one(&db.pool)
        .await
        .ok()?;
        (w.1 == 0 && w.0 == spent).then_some(w)
    })
    .await;
    assert_eq!(reserved, 0);
    assert_eq!(used, spent, "window used = sum of the usage records' cost");
    assert!(used as u64 <= amount + one, "{used} > {amount} + {one}");

    let errors_before = store_errors().await;
    let admitted = run(s_rpm, 3, "rpm_exceeded").await;
    assert_eq!(
        store_errors().await,
        errors_before,
        "a node counted on its own"
    );
    assert_eq!(admitted, 100, "RPM 100 across both nodes");
}

/// A daily budget of one dollar on key `key_id`.
async fn daily_budget(db: &TestDb, org: uuid::Uuid, key_id: uuid::Uuid) -> uuid::Uuid {
    sqlx::query_scalar(
        "INSERT INTO budgets (organisation_id, scope, scope_id, amount_nanos, period)
         VALUES ($1, 'APIKEY', $2, 1000000000, 'DAILY') RETURNING id",
    )
    .bind(org)
    .bind(key_id)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// A database-mode node with Redis whose stale-reservation passes run every 200 ms.
async fn sweeping_gw(mock: &wharf_mock::MockServer, db: &TestDb) -> Gw {
    let redis = WithRedis {
        url: common::db::redis_url(),
        governance: "stale_reservation_sweep_ms = 200",
    };
    db_gw_with(mock, db, None, Some(redis)).await
}

/// One chat that must succeed.
async fn chat_ok(gw: &Gw, secret: &str) {
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&chat_body("db-chat", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn redis() -> fred::clients::Client {
    use fred::prelude::*;
    let c = Builder::from_config(Config::from_url(&common::db::redis_url()).unwrap())
        .build()
        .unwrap();
    c.init().await.unwrap();
    c
}

/// A node that died between reserve and settle leaves reservations in Redis: the sweep
/// settles the one whose request wrote its usage record (once: a tombstone keeps a late
/// settle from counting it again) and releases the other, in Redis and in Postgres.
#[tokio::test]
async fn redis_budget_sweep_settles_or_releases_a_dead_nodes_reservations() {
    use fred::prelude::*;
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let (org, key_id, secret) = db_seed(&db, &mock).await;
    let budget = daily_budget(&db, org, key_id).await;
    let gw = sweeping_gw(&mock, &db).await;
    // One request opens the window in Redis.
    chat_ok(&gw, &secret).await;
    let cost = records_cost(&db, key_id, 1).await;
    let start = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .start_of_day()
        .unwrap()
        .timestamp()
        .as_second();
    let key = format!("wharf:bw:b:{budget}:{start}");
    let r = redis().await;
    let used = |r: &fred::clients::Client| {
        let (r, key) = (r.clone(), key.clone());
        async move {
            let v: Vec<Option<i64>> = r.hmget(&key, vec!["used", "reserved"]).await.unwrap();
            (v[0].unwrap_or(-1), v[1].unwrap_or(-1))
        }
    };
    poll(Duration::from_secs(5), "the settle", async || {
        (used(&r).await == (cost, 0)).then_some(())
    })
    .await;
    // The dead node's two reservations, expired long ago.
    let (settled, released) = (
        format!("dead-1/{}", uuid::Uuid::new_v4().simple()),
        format!("dead-2/{}", uuid::Uuid::new_v4().simple()),
    );
    // The dead request's record is written before its reservation appears (a sweep may run
    // at any moment), and the window's `reserved` grows before the reservations do.
    sqlx::query(
        "INSERT INTO usage_records (request_id, organisation_id, api_key_id, endpoint, status,
                                    outcome, cost_nanos, attempts)
         VALUES ('dead-1', $1, $2, '/v1/chat/completions', 200, 'success', 4321,
                 '[{\"provider\": \"p\", \"outcome\": \"success\"}]')",
    )
    .bind(org)
    .bind(key_id)
    .execute(&db.pool)
    .await
    .unwrap();
    let _: i64 = r.hincrby(&key, "reserved", 12000).await.unwrap();
    let _: () = r
        .hset(
            format!("{key}:r"),
            vec![
                (settled.as_str(), "5000|1000"),
                (released.as_str(), "7000|1000"),
            ],
        )
        .await
        .unwrap();
    poll(Duration::from_secs(10), "the sweep", async || {
        (used(&r).await == (cost + 4321, 0)).then_some(())
    })
    .await;
    let tomb: bool = r.hexists(format!("{key}:s"), &settled).await.unwrap();
    assert!(tomb, "the sweep leaves a tombstone");
    let left: i64 = r.hlen(format!("{key}:r")).await.unwrap();
    assert_eq!(left, 0);
    poll(Duration::from_secs(10), "the flush", async || {
        let used: i64 =
            sqlx::query_scalar("SELECT used_nanos FROM budget_windows WHERE budget_id = $1")
                .bind(budget)
                .fetch_one(&db.pool)
                .await
                .ok()?;
        (used == cost + 4321).then_some(())
    })
    .await;
    let _ = r.quit().await;
}

/// Redis configured but unreachable: budgets do not fail open; the node reserves in the
/// Postgres ledger instead, exactly.
#[tokio::test]
async fn redis_unreachable_budgets_fall_back_to_the_postgres_ledger() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let (org, key_id, secret) = db_seed(&db, &mock).await;
    let mut body = chat_body("db-chat", false);
    body["max_tokens"] = json!(50);
    let one = 50 * 2000
        + 1000 * wharf::proxy::body::estimate_input_tokens(&serde_json::to_vec(&body).unwrap());
    let amount = 2 * one + one / 2;
    let budget: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO budgets (organisation_id, scope, scope_id, amount_nanos, period)
         VALUES ($1, 'APIKEY', $2, $3, 'DAILY') RETURNING id",
    )
    .bind(org)
    .bind(key_id)
    .bind(amount as i64)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let gw = db_gw_with(
        &mock,
        &db,
        None,
        Some(WithRedis {
            url: format!("redis://127.0.0.1:{}", free_port()),
            governance: "",
        }),
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .header("x-mock-tokens", "50")
            .json(&body)
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    assert_eq!(codes, vec![200, 200, 402, 402]);
    let cost = records_cost(&db, key_id, 2).await;
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state::text FROM budget_reservations WHERE budget_id = $1")
            .bind(budget)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(states, vec!["SETTLED", "SETTLED"], "reserved in Postgres");
    let used: i64 = poll(Duration::from_secs(10), "the settle", async || {
        let (used, reserved): (i64, i64) = sqlx::query_as(
            "SELECT used_nanos, reserved_nanos FROM budget_windows WHERE budget_id = $1",
        )
        .bind(budget)
        .fetch_one(&db.pool)
        .await
        .ok()?;
        (reserved == 0 && used == cost).then_some(used)
    })
    .await;
    assert!(used as u64 <= amount);
}

/// The Postgres ledger's stale-reservation pass runs on its own timer: an idle node still gives
/// a dead node's expired reservation back.
#[tokio::test]
async fn stale_postgres_reservations_expire_on_a_timer_without_traffic() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let (org, key_id, secret) = db_seed(&db, &mock).await;
    let budget = daily_budget(&db, org, key_id).await;
    let window: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO budget_windows (budget_id, window_start, window_end, reserved_nanos)
         VALUES ($1, now() - interval '3 days', now() - interval '2 days', 350) RETURNING id",
    )
    .bind(budget)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO budget_requests (request_id, expires_at) VALUES ('gone-node', now() - interval '1 minute')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO budget_reservations (request_id, budget_id, window_id, amount_nanos, expires_at)
         VALUES ('gone-node', $1, $2, 350, now() - interval '1 minute')",
    )
    .bind(budget)
    .bind(window)
    .execute(&db.pool)
    .await
    .unwrap();
    let gw = sweeping_gw(&mock, &db).await;
    // One request loads the node's budget list (and starts its timers); then no traffic.
    chat_ok(&gw, &secret).await;
    poll(Duration::from_secs(10), "the timer's pass", async || {
        let (state, reserved): (String, i64) = sqlx::query_as(
            "SELECT r.state::text, w.reserved_nanos FROM budget_reservations r
               JOIN budget_windows w ON w.id = r.window_id WHERE r.request_id = 'gone-node'",
        )
        .fetch_one(&db.pool)
        .await
        .ok()?;
        (state == "EXPIRED" && reserved == 0).then_some(())
    })
    .await;
}

/// A budget deleted while a node still holds amounts to write for it does not hold back the
/// other windows' flush to Postgres.
#[tokio::test]
async fn a_deleted_budget_does_not_block_the_flush_of_the_others() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let (org, key_id, secret) = db_seed(&db, &mock).await;
    let gone = daily_budget(&db, org, key_id).await;
    let kept = daily_budget(&db, org, key_id).await;
    let gw = sweeping_gw(&mock, &db).await;
    // The node loads its budget list and opens both windows.
    chat_ok(&gw, &secret).await;
    // A request in flight holds reservations on both when one budget is deleted (the node
    // drops it from its list at once): it still settles on both.
    let slow = {
        let (url, secret) = (gw.url("/v1/chat/completions"), secret.clone());
        tokio::spawn(async move {
            client()
                .post(url)
                .bearer_auth(secret)
                .header("x-mock-latency-ms", "600")
                .json(&chat_body("db-chat", false))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    sqlx::query("DELETE FROM budgets WHERE id = $1")
        .bind(gone)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(slow.await.unwrap(), 200);
    let cost = records_cost(&db, key_id, 2).await;
    poll(
        Duration::from_secs(10),
        "the kept budget's flush",
        async || {
            let used: i64 =
                sqlx::query_scalar("SELECT used_nanos FROM budget_windows WHERE budget_id = $1")
                    .bind(kept)
                    .fetch_one(&db.pool)
                    .await
                    .ok()?;
            (used == cost).then_some(())
        },
    )
    .await;
}

/// Sends chats with `secret` to `gw` (every 20 ms) until one is answered `want`; fails when
/// none is within `limit`. Returns how long it took and the answer's error code.
async fn until_status(
    gw: &Gw,
    secret: &str,
    want: u16,
    limit: Duration,
    what: &str,
) -> (Duration, Value) {
    let t = std::time::Instant::now();
    loop {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(secret)
            .json(&chat_body("db-chat", false))
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if st == want {
            return (t.elapsed(), v["error"]["code"].clone());
        }
        assert!(
            t.elapsed() < limit,
            "{what}: still {st} after {limit:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A budget (or quota) created, raised, lowered or deleted through the admin API of one node
/// counts on the other node within a second: both reload their meter list on the change
/// notification, as they drop a changed key (the periodic refresh used to take up to 5 s).
async fn budget_changes_count_on_the_other_node_within_a_second(redis: fn() -> Option<WithRedis>) {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let (org, key_id, secret) = db_seed(&db, &mock).await;
    let a = db_gw_with(&mock, &db, None, redis()).await;
    let b = db_gw_with(&mock, &db, None, redis()).await;
    let api = Api::root(&a, &db).await;
    // Both nodes have loaded their (empty) meter list just now.
    chat_ok(&a, &secret).await;
    chat_ok(&b, &secret).await;
    let limit = Duration::from_secs(1);
    let budgets = format!("/api/organisations/{org}/budgets");
    let (st, budget) = api
        .post(
            &budgets,
            json!({"scope": "APIKEY", "scope_id": key_id.to_string(), "amount_nanos": 0,
                   "period": "DAILY"}),
        )
        .await;
    assert_eq!(st, 201, "{budget}");
    let one = format!("{budgets}/{}", budget["id"].as_str().unwrap());
    let (took, code) = until_status(&b, &secret, 402, limit, "a new budget").await;
    assert_eq!(code, "budget_exceeded");
    eprintln!("new budget counted on the other node after {took:?}");

    let (st, v) = api
        .call(
            reqwest::Method::PATCH,
            &one,
            Some(json!({"amount_nanos": 1_000_000_000_000i64})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (took, _) = until_status(&b, &secret, 200, limit, "a raised budget").await;
    eprintln!("raised budget counted after {took:?}");

    let (st, v) = api
        .call(
            reqwest::Method::PATCH,
            &one,
            Some(json!({"amount_nanos": 0})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (took, code) = until_status(&b, &secret, 402, limit, "a lowered budget").await;
    assert_eq!(code, "budget_exceeded");
    eprintln!("lowered budget counted after {took:?}");

    let (st, v) = api.call(reqwest::Method::DELETE, &one, None).await;
    assert!(st == 204 || st == 200, "{st} {v}");
    let (took, _) = until_status(&b, &secret, 200, limit, "a deleted budget").await;
    eprintln!("deleted budget gone after {took:?}");

    let (st, quota) = api
        .post(
            &format!("/api/organisations/{org}/quotas"),
            json!({"scope": "APIKEY", "scope_id": key_id.to_string(), "metric": "REQUESTS",
                   "limit_value": 0, "period": "DAILY"}),
        )
        .await;
    assert_eq!(st, 201, "{quota}");
    let (took, code) = until_status(&b, &secret, 429, limit, "a new quota").await;
    assert_eq!(code, "quota_exceeded");
    eprintln!("new quota counted after {took:?}");
}

#[tokio::test]
async fn a_budget_changed_on_one_node_counts_on_the_other_within_a_second() {
    budget_changes_count_on_the_other_node_within_a_second(|| None).await;
}

/// The same with the Redis fast path of budgets: raising a budget counts within a second too.
#[tokio::test]
async fn a_budget_changed_with_redis_counts_within_a_second() {
    budget_changes_count_on_the_other_node_within_a_second(WithRedis::shared).await;
}

/// A throwaway `redis-server` (no persistence: a restart loses every key) on its own port, so a
/// test can stop, pause and restart it without disturbing the shared Redis.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let mut r = OwnRedis {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it answers.
    fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        for _ in 0..100 {
            let ping = std::process::Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "ping"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&ping.stdout).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not answer", self.port);
    }

    /// Kills the server: every key is gone.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pauses (`STOP`) or resumes (`CONT`) the server: commands time out, keys stay.
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let st = std::process::Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn hget(&self, key: &str, field: &str) -> Option<i64> {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "hget", key, field])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// Two nodes on one Postgres and one Redis, under steady load, through a Redis restart (every
/// key lost) and a Redis pause (scripts time out, then run late): afterwards the Redis window,
/// the Postgres window and the sum of the usage records' cost agree exactly, and the key,
/// with most of its budget left, is still admitted.
#[tokio::test]
async fn after_redis_outages_the_redis_and_postgres_windows_equal_the_records() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let (org, key_id, secret) = db_seed(&db, &mock).await;
    let budget = daily_budget(&db, org, key_id).await;
    let mut redis = OwnRedis::start();
    let node = |redis: &OwnRedis| WithRedis {
        url: redis.url(),
        governance: "redis_timeout_ms = 300",
    };
    let a = db_gw_with(&mock, &db, None, Some(node(&redis))).await;
    let b = db_gw_with(&mock, &db, None, Some(node(&redis))).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..8 {
        let url = if i % 2 == 0 { &a } else { &b }.url("/v1/chat/completions");
        let (secret, stop) = (secret.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut unavailable) = (0i64, 0i64);
            // Bounded: at most 100 s of traffic even if the stop flag were never set.
            for _ in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let r = client()
                    .post(&url)
                    .bearer_auth(&secret)
                    .header("x-mock-latency-ms", "30")
                    .json(&chat_body("db-chat", false))
                    .send()
                    .await
                    .unwrap();
                let st = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                match st {
                    200 => ok += 1,
                    // A window Redis lost between the check and its seed.
                    503 => {
                        assert_eq!(v["error"]["code"], "dependency_unavailable", "{v}");
                        unavailable += 1;
                    }
                    other => panic!("unexpected {other}: {v}"),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, unavailable)
        }));
    }
    let phase = Duration::from_millis(1500);
    tokio::time::sleep(phase).await;
    // Restart: every window, reservation and counter in Redis is lost.
    redis.kill();
    tokio::time::sleep(phase).await;
    redis.restart();
    tokio::time::sleep(2 * phase).await;
    // Pause: scripts time out (and run once Redis resumes); the keys stay.
    redis.signal("STOP");
    tokio::time::sleep(phase).await;
    redis.signal("CONT");
    tokio::time::sleep(2 * phase).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut unavailable) = (0, 0);
    for c in clients {
        let (o, u) = c.await.unwrap();
        ok += o;
        unavailable += u;
    }
    eprintln!("{ok} admitted, {unavailable} answered 503");
    assert!(ok > 100, "{ok} admitted");
    assert!(unavailable * 20 <= ok, "{unavailable} of {ok} answered 503");

    let cost = records_cost(&db, key_id, ok).await;
    let start = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .start_of_day()
        .unwrap()
        .timestamp()
        .as_second();
    let key = format!("wharf:bw:b:{budget}:{start}");
    let mut last = (0, 0, 0, 0);
    let settled = poll_opt(Duration::from_secs(15), async || {
        let (pg_used, pg_reserved): (i64, i64) = sqlx::query_as(
            "SELECT used_nanos, reserved_nanos FROM budget_windows
              WHERE budget_id = $1 AND window_start = to_timestamp($2)",
        )
        .bind(budget)
        .bind(start as f64)
        .fetch_one(&db.pool)
        .await
        .ok()?;
        let r_used = redis.hget(&key, "used").unwrap_or(-1);
        let r_reserved = redis.hget(&key, "reserved").unwrap_or(-1);
        last = (pg_used, pg_reserved, r_used, r_reserved);
        (pg_used == cost && r_used == cost && pg_reserved == 0 && r_reserved == 0).then_some(())
    })
    .await;
    let (pg_used, pg_reserved, r_used, r_reserved) = last;
    assert!(
        settled.is_some(),
        "records {cost}; Postgres used {pg_used} reserved {pg_reserved}; Redis used {r_used} \
         reserved {r_reserved}"
    );
    // The key has most of its dollar left: both nodes admit it.
    chat_ok(&a, &secret).await;
    chat_ok(&b, &secret).await;
    assert!((cost as u64) < 1_000_000_000 / 2, "{cost}");
}

/// Polls `f` (every 50 ms) until it gives a value or `within` passes.
async fn poll_opt<T>(within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
