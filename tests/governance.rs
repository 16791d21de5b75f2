//! Governance end to end (SPEC §7): policies, rate limits on one node and across nodes, their
//! answers and headers, through a real `wharf` process in front of the mock provider.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Key secrets of the keys this file adds.
const K1: &str = "gov-key-one";
const K2: &str = "gov-key-two";

/// A `[[keys]]` entry for `secret` with `id`, granted every model, and its policy tables.
fn key(id: &str, secret: &str, policy: &str) -> String {
    format!(
        r#"
[[keys]]
id = "{id}"
hash = "{hash}"
type = "TEAM"
organisation_id = "org_gov"
team_id = "team_gov"
models = ["*"]
{policy}
"#,
        hash = sha(secret)
    )
}

/// A provider and model with a long read timeout (so a hung upstream outlives the tests).
const SLOW: &str = r#"
[[providers]]
name = "slowp"
type = "OPENAI"
base_url = "http://{MOCK}/v1"
api_key_env = "WHARF_TEST_PROVIDER_KEY"
timeout_ms = 30000

[[models]]
name = "chat-slow"
slug = "up-slow"
provider = "slowp"
pricing = { input = 1.0, output = 2.0 }
"#;

async fn start(mock: &wharf_mock::MockServer, extra: &str) -> Gw {
    let extra = extra.replace("{MOCK}", &mock.addr().to_string());
    Gw::start_with(mock, &extra).await
}

async fn chat(gw: &Gw, secret: &str, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

fn h(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

async fn denial(r: reqwest::Response, status: u16, code: &str) -> Value {
    let st = r.status().as_u16();
    let ra = h(&r, "retry-after");
    let v: Value = r.json().await.unwrap();
    assert_eq!(st, status, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    if status == 429 && code != "max_tokens_exceeded" {
        let secs = v["error"]["retry_after"].as_u64().unwrap();
        assert!(secs >= 1, "{v}");
        assert_eq!(ra.as_deref(), Some(secs.to_string().as_str()));
    }
    v
}

#[tokio::test]
async fn rpm_denies_the_request_after_the_limit_with_headers() {
    let mock = mock().await;
    let gw = start(
        &mock,
        &key(
            "k_rpm",
            K1,
            "[keys.policies.ratelimit.requests]\nper_minute = 3",
        ),
    )
    .await;
    for left in [2, 1, 0] {
        let r = chat(&gw, K1, chat_body("chat-a", false), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(h(&r, "x-ratelimit-limit-requests").as_deref(), Some("3"));
        assert_eq!(
            h(&r, "x-ratelimit-remaining-requests"),
            Some(left.to_string())
        );
        assert_eq!(h(&r, "x-ratelimit-reset-requests").as_deref(), Some("1m0s"));
    }
    let r = chat(&gw, K1, chat_body("chat-a", false), &[]).await;
    // The refusal reports the full window and when its oldest request leaves it.
    assert_eq!(h(&r, "x-ratelimit-limit-requests").as_deref(), Some("3"));
    assert_eq!(
        h(&r, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    let reset = h(&r, "x-ratelimit-reset-requests").unwrap();
    // The oldest of the three entered the window moments ago.
    assert!(matches!(reset.as_str(), "1m0s" | "59s" | "58s"), "{reset}");
    let v = denial(r, 429, "rpm_exceeded").await;
    assert_eq!(v["error"]["scope"], "key");
    assert_eq!(v["error"]["limit"], 3);
    assert!(v["error"]["retry_after"].as_u64().unwrap() > 50);
    // Another key is not affected.
    let r = chat(&gw, KEY_GOOD, chat_body("chat-a", false), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "x-ratelimit-limit-requests"), None);
    // The denial is a usage record with its code.
    let recs = gw.usage(5).await;
    assert_eq!(recs[3]["error_code"], "rpm_exceeded");
    assert_eq!(recs[3]["status"], 429);
}

#[tokio::test]
async fn rps_and_burst_deny_with_their_codes() {
    let mock = mock().await;
    let extra = key(
        "k_rps",
        K1,
        "[keys.policies.ratelimit.requests]\nper_second = 2",
    ) + &key(
        "k_burst",
        K2,
        "[keys.policies.ratelimit.requests]\nper_minute = 60\nburst = 2",
    );
    let gw = start(&mock, &extra).await;
    // Per second: two within a second, the third is refused. Retried until three land in
    // the same second (a slow machine may straddle a boundary).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = Instant::now();
        let a = chat(&gw, K1, chat_body("chat-a", false), &[])
            .await
            .status();
        let b = chat(&gw, K1, chat_body("chat-a", false), &[])
            .await
            .status();
        let c = chat(&gw, K1, chat_body("chat-a", false), &[]).await;
        if t.elapsed() < Duration::from_millis(900) && a == 200 && b == 200 {
            denial(c, 429, "rps_exceeded").await;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never three requests in one second"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Burst: two back to back, then one a second (60 per minute).
    for _ in 0..2 {
        assert_eq!(
            chat(&gw, K2, chat_body("chat-a", false), &[])
                .await
                .status(),
            200
        );
    }
    let v = denial(
        chat(&gw, K2, chat_body("chat-a", false), &[]).await,
        429,
        "burst_exceeded",
    )
    .await;
    assert_eq!(v["error"]["limit"], 2);
}

#[tokio::test]
async fn tokens_per_minute_reserve_max_tokens_and_refund_to_actual() {
    let mock = mock().await;
    let gw = start(
        &mock,
        &key(
            "k_tpm",
            K1,
            "[keys.policies.ratelimit.tokens]\nper_minute = 150",
        ),
    )
    .await;
    let body = |max: u64| {
        let mut b = chat_body("chat-a", false);
        b["max_tokens"] = json!(max);
        b
    };
    // A reservation that can never fit is refused up front.
    let v = denial(chat(&gw, K1, body(200), &[]).await, 429, "tpm_exceeded").await;
    assert_eq!(v["error"]["limit"], 150);
    // ~100 reserved; the answer uses a few tokens only.
    let r = chat(&gw, K1, body(100), &[("x-mock-tokens", "5")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "x-ratelimit-limit-tokens").as_deref(), Some("150"));
    let remaining: u64 = h(&r, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 50, "{remaining}");
    let id = h(&r, "x-request-id").unwrap();
    let rec = gw.usage_of(&id).await;
    let actual =
        rec["tokens"]["input"].as_u64().unwrap() + rec["tokens"]["output"].as_u64().unwrap();
    assert!(actual < 40, "{rec}");
    // After the refund a second ~100-token reservation fits (it would not have without it).
    let r = chat(&gw, K1, body(100), &[("x-mock-tokens", "5")]).await;
    assert_eq!(r.status(), 200);
    let remaining2: u64 = h(&r, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        remaining2 + actual,
        remaining,
        "refunded to the actual count"
    );
    // A third does not: two refunded requests + one reservation exceed 150... only before
    // the second's refund; after it, the window holds 2 × actual.
    let id = h(&r, "x-request-id").unwrap();
    gw.usage_of(&id).await;
    let v = denial(chat(&gw, K1, body(140), &[]).await, 429, "tpm_exceeded").await;
    assert_eq!(v["error"]["scope"], "key");
}

#[tokio::test]
async fn payload_limits() {
    let mock = mock().await;
    let gw = start(
        &mock,
        &key(
            "k_pay",
            K1,
            "[keys.policies.ratelimit.payload]\nmax_request_bytes = 300\nmax_tokens = 50",
        ),
    )
    .await;
    let mut b = chat_body("chat-a", false);
    b["max_tokens"] = json!(51);
    let v = denial(
        chat(&gw, K1, b.clone(), &[]).await,
        429,
        "max_tokens_exceeded",
    )
    .await;
    assert_eq!(v["error"]["limit"], 50);
    b["max_tokens"] = json!(50);
    assert_eq!(chat(&gw, K1, b.clone(), &[]).await.status(), 200);
    b["messages"][0]["content"] = json!("x".repeat(400));
    let v = denial(chat(&gw, K1, b, &[]).await, 413, "payload_too_large").await;
    assert_eq!(v["error"]["scope"], "key");
    // Unaffected key.
    let mut b = chat_body("chat-a", false);
    b["max_tokens"] = json!(500);
    assert_eq!(chat(&gw, KEY_GOOD, b, &[]).await.status(), 200);
}

/// Polls until `secret` gets a 200 on `model` (a freed concurrency slot), or fails.
async fn until_admitted(gw: &Gw, secret: &str, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let r = chat(gw, secret, chat_body("chat-slow", false), &[]).await;
        if r.status() == 200 {
            return t.elapsed();
        }
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "concurrency_exceeded", "{v}");
        assert!(t.elapsed() < within, "the slot was not released");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn concurrency_lease_released_on_every_path() {
    let mock = mock().await;
    let gw = start(
        &mock,
        &(SLOW.to_string()
            + &key(
                "k_conc",
                K1,
                "[keys.policies.ratelimit.concurrency]\nmax = 1",
            )),
    )
    .await;
    // One in flight: a second is refused.
    let before = mock.request_count();
    let url = gw.url("/v1/chat/completions");
    let slow = tokio::spawn(async move {
        client()
            .post(url)
            .bearer_auth(K1)
            .header("x-mock-latency-ms", "800")
            .json(&chat_body("chat-slow", false))
            .send()
            .await
            .unwrap()
            .status()
    });
    // Once the provider has the slow request, the slot is held.
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.request_count() == before {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = chat(&gw, K1, chat_body("chat-slow", false), &[]).await;
    let v = denial(r, 429, "concurrency_exceeded").await;
    assert_eq!(v["error"]["limit"], 1);
    assert_eq!(v["error"]["scope"], "key");
    assert_eq!(slow.await.unwrap(), 200);
    until_admitted(&gw, K1, Duration::from_secs(2)).await;

    // Upstream error (connection reset): the slot comes back.
    let r = chat(
        &gw,
        K1,
        chat_body("chat-slow", false),
        &[("x-mock-fault", "reset")],
    )
    .await;
    assert!(r.status().is_server_error(), "{}", r.status());
    until_admitted(&gw, K1, Duration::from_secs(2)).await;

    // Client disconnect while the provider hangs (its timeout is 30 s): the slot comes back
    // long before the provider would time out.
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = c
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(K1)
        .header("x-mock-fault", "hang")
        .json(&chat_body("chat-slow", false))
        .send()
        .await;
    assert!(gone.is_err());
    until_admitted(&gw, K1, Duration::from_secs(5)).await;

    // Client disconnect mid-stream. (The probe above releases its own slot in its post-flight,
    // just after its answer: wait for that before taking the slot again.)
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut r = loop {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(K1)
            .header("x-mock-itl-ms", "500")
            .header("x-mock-tokens", "50")
            .json(&chat_body("chat-slow", true))
            .send()
            .await
            .unwrap();
        if r.status() != 429 || Instant::now() >= deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.status(), 200);
    r.chunk().await.unwrap();
    drop(r);
    until_admitted(&gw, K1, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_narrower_scope_never_loosens_a_broader_one() {
    let mock = mock().await;
    let extra = r#"
[organisations.org_gov.policies.ratelimit.requests]
per_minute = 2
"#
    .to_string()
        + &key(
            "k_loose",
            K1,
            "[keys.policies.ratelimit.requests]\nper_minute = 100",
        )
        + &key("k_other", K2, "");
    let gw = start(&mock, &extra).await;
    assert_eq!(
        chat(&gw, K1, chat_body("chat-a", false), &[])
            .await
            .status(),
        200
    );
    let r = chat(&gw, K2, chat_body("chat-a", false), &[]).await;
    assert_eq!(r.status(), 200);
    // The tightest reading is reported: the organisation's.
    assert_eq!(h(&r, "x-ratelimit-limit-requests").as_deref(), Some("2"));
    assert_eq!(
        h(&r, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    // The key's own 100 per minute does not lift the organisation's 2, for either key.
    for k in [K1, K2] {
        let v = denial(
            chat(&gw, k, chat_body("chat-a", false), &[]).await,
            429,
            "rpm_exceeded",
        )
        .await;
        assert_eq!(v["error"]["scope"], "organisation");
        assert_eq!(v["error"]["limit"], 2);
    }
    // Another organisation is not affected.
    assert_eq!(
        chat(&gw, KEY_GOOD, chat_body("chat-a", false), &[])
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn model_and_global_scopes() {
    let mock = mock().await;
    let extra = r#"
[policies.ratelimit.requests]
per_minute = 4

[[models]]
name = "chat-capped"
slug = "up-capped"
provider = "mock"
[models.policies.ratelimit.requests]
per_minute = 1
"#
    .to_string()
        + &key("k_any", K1, "");
    let gw = start(&mock, &extra).await;
    assert_eq!(
        chat(&gw, K1, chat_body("chat-capped", false), &[])
            .await
            .status(),
        200
    );
    let v = denial(
        chat(&gw, K1, chat_body("chat-capped", false), &[]).await,
        429,
        "rpm_exceeded",
    )
    .await;
    assert_eq!(v["error"]["scope"], "model");
    // The whole gateway: 4 per minute (the refused one did not count).
    for _ in 0..3 {
        assert_eq!(
            chat(&gw, K1, chat_body("chat-a", false), &[])
                .await
                .status(),
            200
        );
    }
    let v = denial(
        chat(&gw, KEY_GOOD, chat_body("chat-a", false), &[]).await,
        429,
        "rpm_exceeded",
    )
    .await;
    assert_eq!(v["error"]["scope"], "global");
}

#[tokio::test]
async fn ip_lists_and_trusted_proxies() {
    let mock = mock().await;
    // Without trusted proxies: the peer (127.0.0.1) is the client; X-Forwarded-For is ignored.
    let extra = key(
        "k_ip",
        K1,
        "[keys.policies.ip]\nallowlist = [\"10.0.0.0/8\"]",
    ) + &key(
        "k_block",
        K2,
        "[keys.policies.ip]\nblocklist = [\"127.0.0.0/8\"]",
    );
    let gw = start(&mock, &extra).await;
    let v = denial(
        chat(
            &gw,
            K1,
            chat_body("chat-a", false),
            &[("x-forwarded-for", "10.1.2.3")],
        )
        .await,
        403,
        "ip_not_allowed",
    )
    .await;
    assert_eq!(v["error"]["scope"], "key");
    denial(
        chat(&gw, K2, chat_body("chat-a", false), &[]).await,
        403,
        "ip_not_allowed",
    )
    .await;
    assert_eq!(
        chat(&gw, KEY_GOOD, chat_body("chat-a", false), &[])
            .await
            .status(),
        200
    );
    drop(gw);

    // With the loopback trusted: the right-most untrusted X-Forwarded-For hop is the client.
    let text = |port, admin, dir: &std::path::Path| {
        config_text(&mock.addr().to_string(), port, admin, dir, &extra).replace(
            "[server]\n",
            "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
        )
    };
    let gw = Gw::start_custom(&mock, text, &[]).await;
    let ok = chat(
        &gw,
        K1,
        chat_body("chat-a", false),
        &[("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    assert_eq!(ok.status(), 200);
    let chain = "10.9.9.9, 192.168.1.1, 127.0.0.5";
    denial(
        chat(
            &gw,
            K1,
            chat_body("chat-a", false),
            &[("x-forwarded-for", chain)],
        )
        .await,
        403,
        "ip_not_allowed",
    )
    .await;
    // The blocklisted loopback is now a proxy, not the client.
    let r = chat(
        &gw,
        K2,
        chat_body("chat-a", false),
        &[("x-forwarded-for", "198.51.100.7")],
    )
    .await;
    assert_eq!(r.status(), 200);
    denial(
        chat(&gw, K2, chat_body("chat-a", false), &[]).await,
        403,
        "ip_not_allowed",
    )
    .await;
}

#[test]
fn policy_errors_name_their_path() {
    let base = config_text("127.0.0.1:1", 1, 2, std::path::Path::new("/tmp"), "");
    let bad = base.clone() + "\n[policies.ratelimit.requests]\nper_minut = 5\n";
    let e = wharf::config::parse(&bad).unwrap_err().to_string();
    assert!(e.contains("policies.ratelimit.requests"), "{e}");
    assert!(e.contains("per_minut"), "{e}");
    let bad = base.clone() + "\n[organisations.o1.policies.ip]\nblocklist = [\"10.0.0.0/40\"]\n";
    let e = wharf::config::parse(&bad).unwrap_err().to_string();
    assert!(e.contains("organisations.o1.policies.ip.blocklist"), "{e}");
    let bad = base.clone() + "\n[governance]\nredis_failure = \"maybe\"\n";
    let e = wharf::config::parse(&bad).unwrap_err().to_string();
    assert!(e.contains("governance.redis_failure"), "{e}");
    let bad = base.replace("[server]\n", "[server]\ntrusted_proxies = [\"nope\"]\n");
    let e = wharf::config::parse(&bad).unwrap_err().to_string();
    assert!(e.contains("server.trusted_proxies[0]"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Redis mode.
// ---------------------------------------------------------------------------------------------

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn zcard(key: &str) -> i64 {
    use fred::prelude::*;
    let c = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build()
        .unwrap();
    c.init().await.unwrap();
    let n: i64 = c.zcard(key).await.unwrap();
    let _ = c.quit().await;
    n
}

async fn redis_gw(mock: &wharf_mock::MockServer, extra: &str, url: String) -> Gw {
    let extra = format!("[redis]\nurl_env = \"WHARF_TEST_REDIS\"\n{extra}");
    Gw::start_custom(
        mock,
        |port, admin, dir| config_text(&mock.addr().to_string(), port, admin, dir, &extra),
        &[("WHARF_TEST_REDIS", url)],
    )
    .await
}

#[tokio::test]
async fn two_nodes_sharing_redis_admit_no_more_than_the_limit() {
    let mock = mock().await;
    // A fresh key id per run: counters in Redis outlive the processes.
    let id = format!("k_{}", uuid::Uuid::new_v4().simple());
    // A generous Redis timeout: this test is about exactness, not about fail-open on a
    // loaded machine.
    let extra = "[governance]\nredis_timeout_ms = 5000\n".to_string()
        + &key(
            &id,
            K1,
            "[keys.policies.ratelimit.requests]\nper_minute = 20\n[keys.policies.ratelimit.concurrency]\nmax = 64",
        );
    let a = redis_gw(&mock, &extra, redis_url()).await;
    let b = redis_gw(&mock, &extra, redis_url()).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let url = if i % 2 == 0 {
            a.url("/v1/chat/completions")
        } else {
            b.url("/v1/chat/completions")
        };
        tasks.push(tokio::spawn(async move {
            let r = client()
                .post(url)
                .bearer_auth(K1)
                .json(&chat_body("chat-a", false))
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (st, v["error"]["code"].as_str().unwrap_or("").to_string())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (st, code) = t.await.unwrap();
        match st {
            200 => ok += 1,
            429 => assert_eq!(code, "rpm_exceeded"),
            other => panic!("unexpected {other} {code}"),
        }
    }
    assert_eq!(ok, 20, "exactly the limit across both nodes");
    // All leases were released on both nodes: 64 concurrent slots are free again (a fresh
    // window is not needed for that: the rpm is spent, so check the lease set directly).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = zcard(&format!("wharf:rl:key:{id}:c")).await;
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} leases left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Neither node fell back to its own counters.
    for gw in [&a, &b] {
        let m = client().get(gw.admin_url("/metrics")).send().await.unwrap();
        let m = m.text().await.unwrap();
        assert!(m.contains("wharf_rate_limited_total"), "{m}");
        let errors = m
            .lines()
            .find_map(|l| l.strip_prefix("wharf_rate_limit_store_errors_total "))
            .unwrap_or("0");
        assert_eq!(errors, "0", "{m}");
    }
}

#[tokio::test]
async fn redis_down_fails_open_or_closed_as_configured() {
    let mock = mock().await;
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let limited = key(
        "k_down",
        K1,
        "[keys.policies.ratelimit.requests]\nper_minute = 2",
    );
    // Closed: 503 before any upstream call.
    let closed = redis_gw(
        &mock,
        &format!("[governance]\nredis_failure = \"closed\"\n{limited}"),
        dead.clone(),
    )
    .await;
    let before = mock.request_count();
    denial(
        chat(&closed, K1, chat_body("chat-a", false), &[]).await,
        503,
        "dependency_unavailable",
    )
    .await;
    assert_eq!(mock.request_count(), before);
    // Keys without limits are not affected.
    assert_eq!(
        chat(&closed, KEY_GOOD, chat_body("chat-a", false), &[])
            .await
            .status(),
        200
    );
    drop(closed);
    // Open: the node's own counters still hold the limit.
    let open = redis_gw(&mock, &limited, dead).await;
    for _ in 0..2 {
        assert_eq!(
            chat(&open, K1, chat_body("chat-a", false), &[])
                .await
                .status(),
            200
        );
    }
    denial(
        chat(&open, K1, chat_body("chat-a", false), &[]).await,
        429,
        "rpm_exceeded",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Budgets and quotas (file mode: in memory).
// ---------------------------------------------------------------------------------------------

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

#[tokio::test]
async fn budget_denies_with_402_at_the_right_request_and_settles_to_usage() {
    let mock = mock().await;
    const LIMIT: u64 = 200_000;
    let extra = format!(
        r#"
[[budgets]]
id = "daily-k1"
owner = "APIKEY"
owner_id = "k_budget"
amount_nanos = {LIMIT}
period = "DAILY"
timezone = "Europe/Paris"
warning_thresholds = [50]
"#
    ) + &key("k_budget", K1, "")
        + &key("k_free", K2, "");
    let gw = start(&mock, &extra).await;
    let mut body = chat_body("chat-a", false);
    body["max_tokens"] = json!(100);
    let est = chat_a_estimate(&body);
    assert!(est > 0 && est < LIMIT / 3, "{est}");
    let mut used = 0u64;
    let mut admitted = 0;
    let mut denied = false;
    for _ in 0..40 {
        let before = mock.request_count();
        let r = chat(&gw, K1, body.clone(), &[("x-mock-tokens", "100")]).await;
        let id = h(&r, "x-request-id").unwrap();
        if used + est > LIMIT {
            // Refused before any upstream call, and the answer says how much is used.
            let v = denial(r, 402, "budget_exceeded").await;
            assert_eq!(mock.request_count(), before);
            assert_eq!(
                v["error"]["used"], used,
                "settled = the usage records' cost"
            );
            assert_eq!(v["error"]["limit"], LIMIT);
            assert_eq!(v["error"]["scope"], "APIKEY");
            denied = true;
            break;
        }
        assert_eq!(r.status(), 200, "{used} + {est} <= {LIMIT}");
        admitted += 1;
        used += gw.usage_of(&id).await["cost_nanos"].as_u64().unwrap();
    }
    assert!(denied && admitted >= 2, "{admitted}");
    // Another key has no budget.
    assert_eq!(chat(&gw, K2, body, &[]).await.status(), 200);
    // The 50 % warning was crossed once, logged and counted.
    let m = client().get(gw.admin_url("/metrics")).send().await.unwrap();
    let m = m.text().await.unwrap();
    assert!(
        m.contains("wharf_budget_warnings_total{kind=\"budget\",threshold=\"50\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn quota_denies_with_429_and_retry_after() {
    let mock = mock().await;
    let extra = r#"
[[quotas]]
id = "team-requests"
owner = "TEAM"
owner_id = "team_gov"
metric = "REQUESTS"
limit = 2
period = "MONTHLY"
timezone = "America/New_York"
"#
    .to_string()
        + &key("k_q1", K1, "")
        + &key("k_q2", K2, "");
    let gw = start(&mock, &extra).await;
    assert_eq!(
        chat(&gw, K1, chat_body("chat-a", false), &[])
            .await
            .status(),
        200
    );
    let r = chat(&gw, K2, chat_body("chat-a", false), &[]).await;
    assert_eq!(r.status(), 200);
    let id = h(&r, "x-request-id").unwrap();
    gw.usage_of(&id).await;
    let v = denial(
        chat(&gw, K1, chat_body("chat-a", false), &[]).await,
        429,
        "quota_exceeded",
    )
    .await;
    assert_eq!(v["error"]["scope"], "TEAM");
    // Until the next month in New York: at most 31 days.
    let secs = v["error"]["retry_after"].as_u64().unwrap();
    assert!(secs <= 31 * 86400, "{secs}");
    // Another team is not affected.
    assert_eq!(
        chat(&gw, KEY_GOOD, chat_body("chat-a", false), &[])
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn file_mode_budget_state_survives_a_restart() {
    let mock = mock().await;
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("budgets.json");
    let cfg = |limit: u64| {
        format!(
            r#"
[governance]
budget_state_path = "{}"

[[budgets]]
id = "persisted"
owner = "APIKEY"
owner_id = "k_persist"
amount_nanos = {limit}
period = "MONTHLY"
"#,
            state.display()
        ) + &key("k_persist", K1, "")
    };
    let mut body = chat_body("chat-a", false);
    body["max_tokens"] = json!(20);
    let est = chat_a_estimate(&body);
    let gw = start(&mock, &cfg(1_000_000_000)).await;
    let mut used = 0;
    for _ in 0..2 {
        let r = chat(&gw, K1, body.clone(), &[("x-mock-tokens", "20")]).await;
        assert_eq!(r.status(), 200);
        let id = h(&r, "x-request-id").unwrap();
        used += gw.usage_of(&id).await["cost_nanos"].as_u64().unwrap();
    }
    // Written shortly after the settles.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let saved: Value = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(json!([]));
        if saved[0]["used"] == used {
            assert_eq!(saved[0]["meter"], "persisted");
            break;
        }
        assert!(Instant::now() < deadline, "{saved}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(gw);
    // A new process with a budget that one more request does not fit in, only because of
    // what the first process spent.
    let gw = start(&mock, &cfg(used + est - 1)).await;
    let v = denial(chat(&gw, K1, body, &[]).await, 402, "budget_exceeded").await;
    assert_eq!(v["error"]["used"], used);
}

// ---------------------------------------------------------------------------------------------
// Database mode: policies from the jsonb columns.
// ---------------------------------------------------------------------------------------------

const MASTER: &str = common::db::TEST_MASTER_KEYS;

fn db_text(port: u16, admin: u16, dir: &std::path::Path) -> String {
    common::db::node_config(port, admin, dir, "")
}

async fn db_gw(mock: &wharf_mock::MockServer, db: &common::db::TestDb) -> Gw {
    Gw::start_custom(
        mock,
        db_text,
        &[
            ("WHARF_TEST_DATABASE_URL", db.url()),
            ("WHARF_MASTER_KEYS", MASTER.to_string()),
        ],
    )
    .await
}

/// An organisation, a provider on the mock, model `db-chat` (input 1, output 2 USD per 1M)
/// and an organisation key granted it: (organisation, key id, secret).
async fn db_seed(
    db: &common::db::TestDb,
    mock: &wharf_mock::MockServer,
) -> (uuid::Uuid, uuid::Uuid, String) {
    let c = common::db::seed_catalog(db, mock, "Gov", "db-chat", "db-slug").await;
    let (key_id, secret) = common::db::seed_key(db, c.org, "k", &[c.model]).await;
    (c.org, key_id, secret)
}

#[tokio::test]
async fn database_policies_of_key_organisation_and_model_apply() {
    use common::seed;
    use wharf::config::{KeyType, ModelType, Pricing, ProviderKind};
    let mock = mock().await;
    let db = common::db::TestDb::migrated().await;
    let keys = wharf::db::crypto::MasterKeys::parse(MASTER).unwrap();
    let org = seed::create_organisation(&db.pool, "Gov").await.unwrap();
    let provider = seed::create_provider(
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
    let model = seed::create_model(
        &db.pool,
        org,
        "db-chat",
        "db-slug",
        ModelType::Chat,
        provider,
        Pricing::default(),
    )
    .await
    .unwrap();
    let (_, secret) = seed::create_api_key(
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
    for (table, policy) in [
        (
            "api_keys",
            json!({"policies": {"ratelimit": {"requests": {"per_minute": 100}}}}),
        ),
        (
            "organisations",
            json!({"policies": {"ratelimit": {"requests": {"per_minute": 2}}}}),
        ),
        (
            "models",
            json!({"policies": {"ratelimit": {"payload": {"max_tokens": 10}}}}),
        ),
    ] {
        sqlx::query(&format!("UPDATE {table} SET policies = $1"))
            .bind(policy)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let gw = db_gw(&mock, &db).await;
    let mut body = chat_body("db-chat", false);
    body["max_tokens"] = json!(11);
    let v = denial(
        chat(&gw, &secret, body, &[]).await,
        429,
        "max_tokens_exceeded",
    )
    .await;
    assert_eq!(v["error"]["scope"], "model");
    for _ in 0..2 {
        let r = chat(&gw, &secret, chat_body("db-chat", false), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(h(&r, "x-ratelimit-limit-requests").as_deref(), Some("2"));
    }
    let v = denial(
        chat(&gw, &secret, chat_body("db-chat", false), &[]).await,
        429,
        "rpm_exceeded",
    )
    .await;
    assert_eq!(v["error"]["scope"], "organisation");
}

#[tokio::test]
async fn database_budget_holds_across_two_nodes_and_settles_to_usage_records() {
    let mock = mock().await;
    let db = common::db::TestDb::migrated().await;
    let (org, key_id, secret) = db_seed(&db, &mock).await;
    let mut body = chat_body("db-chat", false);
    body["max_tokens"] = json!(50);
    // One request reserves about 50 × 2000 + input × 1000 nanos; the budget holds ~4.
    let one = 50 * 2000
        + 1000 * wharf::proxy::body::estimate_input_tokens(&serde_json::to_vec(&body).unwrap());
    let amount = 4 * one + one / 2;
    let budget: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO budgets (organisation_id, scope, scope_id, amount_nanos, period, timezone,
                              warning_thresholds)
         VALUES ($1, 'APIKEY', $2, $3, 'MONTHLY', 'Europe/Paris', '{50}') RETURNING id",
    )
    .bind(org)
    .bind(key_id)
    .bind(amount as i64)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let a = db_gw(&mock, &db).await;
    let b = db_gw(&mock, &db).await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let url = if i % 2 == 0 {
            a.url("/v1/chat/completions")
        } else {
            b.url("/v1/chat/completions")
        };
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
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (402, code) => assert_eq!(code, "budget_exceeded"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((1..=5).contains(&ok), "{ok} admitted");
    // Every reservation is settled and the window's used equals the usage records' cost.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (used, reserved, records) = loop {
        let (used, reserved): (i64, i64) = sqlx::query_as(
            "SELECT used_nanos, reserved_nanos FROM budget_windows WHERE budget_id = $1",
        )
        .bind(budget)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let records: (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), sum(cost_nanos)::bigint FROM usage_records
              WHERE api_key_id = $1 AND status = 200",
        )
        .bind(key_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if reserved == 0 && records.0 == ok {
            break (used, reserved, records.1.unwrap_or(0));
        }
        assert!(
            Instant::now() < deadline,
            "reserved {reserved}, records {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reserved, 0);
    assert_eq!(used, records, "settled = sum of the usage records' cost");
    assert!(used as u64 <= amount + one, "{used} > {amount} + {one}");
    let states: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT state::text FROM budget_reservations WHERE budget_id = $1",
    )
    .bind(budget)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(states, vec!["SETTLED".to_string()]);
    let warned: Vec<i32> = sqlx::query_scalar(
        "SELECT unnest(warned_thresholds) FROM budget_windows WHERE budget_id = $1",
    )
    .bind(budget)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(warned, vec![50], "warned once across both nodes");
}

#[tokio::test]
async fn stale_database_reservations_expire_and_free_their_window() {
    let mock = mock().await;
    let db = common::db::TestDb::migrated().await;
    let (org, key_id, _) = db_seed(&db, &mock).await;
    let budget: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO budgets (organisation_id, scope, scope_id, amount_nanos, period)
         VALUES ($1, 'APIKEY', $2, 1000, 'DAILY') RETURNING id",
    )
    .bind(org)
    .bind(key_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let window: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO budget_windows (budget_id, window_start, window_end, reserved_nanos)
         VALUES ($1, now() - interval '1 hour', now() + interval '1 hour', 700) RETURNING id",
    )
    .bind(budget)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    for (id, expires) in [("gone-node-1", "-1 minute"), ("live-1", "+10 minutes")] {
        sqlx::query(
            "INSERT INTO budget_requests (request_id, expires_at) VALUES ($1, now() + $2::interval)",
        )
        .bind(id)
        .bind(expires)
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO budget_reservations (request_id, budget_id, window_id, amount_nanos, expires_at)
             VALUES ($1, $2, $3, 350, now() + $4::interval)",
        )
        .bind(id)
        .bind(budget)
        .bind(window)
        .bind(expires)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let pool = &db.pool;
    assert_eq!(
        wharf::governance::budget_pg::expire_stale(pool)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        wharf::governance::budget_pg::expire_stale(pool)
            .await
            .unwrap(),
        0
    );
    let reserved: i64 =
        sqlx::query_scalar("SELECT reserved_nanos FROM budget_windows WHERE id = $1")
            .bind(window)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(reserved, 350, "only the stale reservation was given back");
    let state: String = sqlx::query_scalar(
        "SELECT state::text FROM budget_requests WHERE request_id = 'gone-node-1'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(state, "EXPIRED");
}

#[tokio::test]
async fn a_crashed_node_does_not_leak_redis_concurrency_slots() {
    let mock = mock().await;
    let id = format!("k_{}", uuid::Uuid::new_v4().simple());
    let extra = "[governance]\nconcurrency_lease_ttl_seconds = 1\n".to_string()
        + &SLOW.replace("{MOCK}", &mock.addr().to_string())
        + &key(&id, K1, "[keys.policies.ratelimit.concurrency]\nmax = 1");
    let mut a = redis_gw(&mock, &extra, redis_url()).await;
    let b = redis_gw(&mock, &extra, redis_url()).await;
    // Node A holds the only slot (the provider hangs), then dies without releasing it.
    let before = mock.request_count();
    let url = a.url("/v1/chat/completions");
    let hung = tokio::spawn(async move {
        let _ = client()
            .post(url)
            .bearer_auth(K1)
            .header("x-mock-fault", "hang")
            .json(&chat_body("chat-slow", false))
            .send()
            .await;
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.request_count() == before {
        assert!(
            Instant::now() < deadline,
            "the request never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    denial(
        chat(&b, K1, chat_body("chat-slow", false), &[]).await,
        429,
        "concurrency_exceeded",
    )
    .await;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    hung.await.unwrap();
    assert_eq!(
        zcard(&format!("wharf:rl:key:{id}:c")).await,
        1,
        "the dead node's lease"
    );
    // Node B admits again once the lease's TTL has passed.
    let waited = until_admitted(&b, K1, Duration::from_secs(5)).await;
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

/// Sends `n` requests of `secret` to `gw` at once; returns how many were admitted (any other
/// answer fails the test).
async fn wave(gw: &Gw, secret: &'static str, n: usize) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = gw.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let r = client()
                .post(url)
                .bearer_auth(secret)
                .json(&chat_body("chat-a", false))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let st = t.await.unwrap();
        assert_eq!(st, 200, "unexpected {st}");
        ok += 1;
    }
    ok
}

/// Four requests of `K1` through `gw` that the provider never answers (each holds a concurrency
/// slot), once all four have reached the provider.
async fn hang_four(
    mock: &wharf_mock::MockServer,
    gw: &Gw,
    what: &str,
) -> Vec<tokio::task::JoinHandle<()>> {
    let before = mock.request_count();
    let mut hung = Vec::new();
    for _ in 0..4 {
        let url = gw.url("/v1/chat/completions");
        hung.push(tokio::spawn(async move {
            let _ = client()
                .post(url)
                .bearer_auth(K1)
                .header("x-mock-fault", "hang")
                .json(&chat_body("chat-slow", false))
                .send()
                .await;
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.request_count() < before + 4 {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hung
}

#[tokio::test]
async fn a_node_killed_holding_slices_frees_them_within_the_lease_ttl_and_admits_nothing_twice() {
    let mock = mock().await;
    let id = format!("k_{}", uuid::Uuid::new_v4().simple());
    const RPM: usize = 400;
    let extra = "[governance]\nredis_timeout_ms = 5000\nconcurrency_lease_ttl_seconds = 1\n"
        .to_string()
        + &SLOW.replace("{MOCK}", &mock.addr().to_string())
        + &key(
            &id,
            K1,
            &format!(
                "[keys.policies.ratelimit.requests]\nper_minute = {RPM}\n[keys.policies.ratelimit.concurrency]\nmax = 4"
            ),
        );
    let mut a = redis_gw(&mock, &extra, redis_url()).await;
    let b = redis_gw(&mock, &extra, redis_url()).await;
    // Node A serves traffic in concurrent waves: far from the request limit it leases slices
    // of it with spare requests in them.
    let mut on_a = 0;
    for _ in 0..10 {
        on_a += wave(&a, K1, 4).await;
    }
    assert_eq!(on_a, 40);
    // Then A holds every concurrency slot with requests its provider never answers.
    let hung = hang_four(&mock, &a, "the requests never reached the provider").await;
    on_a += 4;
    denial(
        chat(&b, K1, chat_body("chat-slow", false), &[]).await,
        429,
        "concurrency_exceeded",
    )
    .await;
    // A dies holding its slots and whatever its slices had not spent.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    for t in hung {
        t.await.unwrap();
    }
    assert_eq!(
        zcard(&format!("wharf:rl:key:{id}:c")).await,
        4,
        "the dead node's slots"
    );
    // Its slots come back within the lease TTL, and only once: B then holds exactly four.
    let waited = until_admitted(&b, K1, Duration::from_secs(5)).await;
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let mut on_b = 1;
    let hung = hang_four(&mock, &b, "B did not admit four").await;
    on_b += 4;
    denial(
        chat(&b, K1, chat_body("chat-slow", false), &[]).await,
        429,
        "concurrency_exceeded",
    )
    .await;
    for t in &hung {
        t.abort();
    }
    // B's slots are released with their requests; then B spends what is left of the minute.
    until_admitted(&b, K1, Duration::from_secs(5)).await;
    on_b += 1;
    loop {
        let r = chat(&b, K1, chat_body("chat-a", false), &[]).await;
        match r.status().as_u16() {
            200 => on_b += 1,
            429 => {
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"]["code"], "rpm_exceeded", "{v}");
                break;
            }
            other => panic!("unexpected {other}"),
        }
        assert!(
            on_a + on_b <= RPM,
            "{on_a} + {on_b} admitted over the limit of {RPM}"
        );
    }
    // Nothing was admitted twice: the two nodes together stay within the limit, and what the
    // dead node had leased and not spent is at most one slice (1/8 of what was left).
    assert!(on_a + on_b <= RPM, "{on_a} + {on_b} > {RPM}");
    eprintln!("admitted: {on_a} on A, {on_b} on B, of {RPM}");
    assert!(
        on_a + on_b >= RPM - (RPM - 1) / 8,
        "{on_a} + {on_b}: the dead node kept more than one slice"
    );
}
