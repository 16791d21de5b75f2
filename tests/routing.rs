//! Routing and failover through real sockets (SPEC §5): deployments, the fault matrix, policies,
//! several provider credentials, distributions and ejection.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const KEY_ROUTE: &str = "wharf-test-route";
const KEY_POLICY: &str = "wharf-test-policy";

/// A listener whose accept queue is full: connecting to it times out.
struct Blackhole {
    port: u16,
    _listener: std::net::TcpListener,
    _held: Vec<std::net::TcpStream>,
}

fn blackhole() -> Blackhole {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    // Fill the accept queue; once it is full, further SYNs are dropped.
    for _ in 0..512 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    Blackhole {
        port: addr.port(),
        _listener: listener,
        _held: held,
    }
}

/// The faults of the matrix: (name, provider settings that produce it, expected error class).
const FAULTS: [(&str, &str, &str); 7] = [
    ("refused", "", "connect"),
    (
        "reset",
        r#"headers = { "x-mock-fault" = "reset" }"#,
        "connect",
    ),
    ("ctimeout", "connect_timeout_ms = 300", "timeout"),
    (
        "fbtimeout",
        r#"timeout_ms = 400
headers = { "x-mock-fault" = "hang" }"#,
        "timeout",
    ),
    (
        "429",
        r#"headers = { "x-mock-status" = "429", "x-mock-retry-after" = "7" }"#,
        "rate_limit",
    ),
    ("500", r#"headers = { "x-mock-status" = "500" }"#, "5xx"),
    ("503", r#"headers = { "x-mock-status" = "503" }"#, "5xx"),
];

fn fault_config(mock: &str, dead: u16, hole: u16) -> String {
    let mut out = String::new();
    for (name, settings, _) in FAULTS {
        let base = match name {
            "refused" => format!("http://127.0.0.1:{dead}/v1"),
            "ctimeout" => format!("http://127.0.0.1:{hole}/v1"),
            _ => format!("http://{mock}/v1"),
        };
        out.push_str(&format!(
            r#"
[[providers]]
name = "f-{name}"
type = "OPENAI"
base_url = "{base}"
api_key_env = "WHARF_TEST_PROVIDER_KEY"
{settings}

[[models]]
name = "fm-{name}"
slug = "up-{name}"
provider = "f-{name}"
pricing = {{ input = 1.0, output = 2.0 }}
deployments = [{{ provider = "mock", slug = "up-ok" }}]

[[models]]
name = "fu-{name}"
slug = "up-{name}"
provider = "f-{name}"
deployments = [{{ provider = "anthropic", slug = "claude-ok" }}]
"#
        ));
    }
    out.push_str(&format!(
        r#"
[[providers]]
name = "f-drop"
type = "OPENAI"
base_url = "http://{mock}/v1"
api_key_env = "WHARF_TEST_PROVIDER_KEY"
headers = {{ "x-mock-fault" = "drop-mid-stream", "x-mock-drop-after" = "2" }}

[[models]]
name = "fm-drop"
slug = "up-drop"
provider = "f-drop"
deployments = [{{ provider = "mock", slug = "up-ok" }}]

[[keys]]
id = "key_route"
hash = "{route}"
organisation_id = "org_1"
models = ["*"]
"#,
        route = sha(KEY_ROUTE)
    ));
    out
}

async fn start_faults(mock: &wharf_mock::MockServer, hole: u16) -> Gw {
    let dead = free_port();
    let m = mock.addr().to_string();
    Gw::start_custom(
        mock,
        |port, admin, dir| config_text(&m, port, admin, dir, &fault_config(&m, dead, hole)),
        &[],
    )
    .await
}

async fn post(gw: &Gw, key: &str, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

fn attempt_classes(rec: &Value) -> Vec<String> {
    rec["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{}:{}",
                a["provider"].as_str().unwrap_or(""),
                a["error_class"].as_str().unwrap_or("ok")
            )
        })
        .collect()
}

#[tokio::test]
async fn fault_matrix_fails_over_before_the_first_byte() {
    let mock = mock().await;
    let hole = blackhole();
    let gw = start_faults(&mock, hole.port).await;
    let mut ids = Vec::new();
    for (name, _, class) in FAULTS {
        for stream in [false, true] {
            for unified in [false, true] {
                let (path, model, healthy) = if unified {
                    ("/v1/llm/chat", format!("fu-{name}"), "anthropic")
                } else {
                    ("/v1/chat/completions", format!("fm-{name}"), "mock")
                };
                let what = format!("{name} stream={stream} unified={unified}");
                let r = post(&gw, KEY_ROUTE, path, &chat_body(&model, stream)).await;
                assert_eq!(r.status(), 200, "{what}");
                // A 429's Retry-After ejects the deployment at once: the group's next request
                // goes straight to the healthy deployment.
                let ejected = name == "429" && stream;
                // A reset on a pooled connection is first retried on the same deployment (it
                // cannot be told from a stale keep-alive), so `reset` may take one more.
                let attempts: usize = header(&r, "x-wharf-attempts").parse().unwrap();
                let want = if ejected {
                    1..=1
                } else if name == "reset" {
                    2..=3
                } else {
                    2..=2
                };
                assert!(want.contains(&attempts), "{what}: {attempts} attempts");
                assert_eq!(header(&r, "x-wharf-provider"), healthy, "{what}");
                assert_eq!(header(&r, "x-wharf-model"), model, "{what}");
                let id = header(&r, "x-request-id").to_string();
                let text = r.text().await.unwrap();
                if stream {
                    let data = sse_data(&text);
                    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{what}");
                    assert!(
                        data.iter().any(|d| d.contains("chat.completion.chunk")),
                        "{what}: {text}"
                    );
                } else if unified {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(v["provider"], "anthropic", "{what}: {v}");
                    assert!(v["output_tokens"].as_u64().unwrap() > 0, "{what}");
                } else {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(v["model"], "up-ok", "{what}: {v}");
                }
                let rec = gw.usage_of(&id).await;
                let mut want = vec![format!("f-{name}:{class}"); attempts - 1];
                want.push(format!("{healthy}:ok"));
                assert_eq!(attempt_classes(&rec), want, "{what}");
                assert_eq!(rec["status"], 200, "{what}");
                assert_eq!(rec["provider"], healthy, "{what}");
                assert_eq!(rec["outcome"], "success", "{what}");
                assert!(
                    rec["tokens"]["output"].as_u64().unwrap() > 0,
                    "{what}: {rec}"
                );
                ids.push(id);
            }
        }
    }
    // Exactly one usage record per request.
    let recs = gw.usage(ids.len()).await;
    for id in &ids {
        assert_eq!(recs.iter().filter(|r| r["request_id"] == *id).count(), 1);
    }
}

#[tokio::test]
async fn no_failover_after_the_first_byte() {
    let mock = mock().await;
    let hole = blackhole();
    let gw = start_faults(&mock, hole.port).await;
    // Streaming: a final SSE error event and a clean end; one attempt; the record says cut.
    let r = post(
        &gw,
        KEY_ROUTE,
        "/v1/chat/completions",
        &chat_body("fm-drop", true),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-wharf-attempts"), "1");
    let id = header(&r, "x-request-id").to_string();
    let text = r.text().await.unwrap();
    let data = sse_data(&text);
    assert!(
        data.last().unwrap().contains("\"error\""),
        "last event must be an error: {text}"
    );
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["stream_cut"], true, "{rec}");
    assert_eq!(rec["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(rec["provider"], "f-drop");

    // Unary: the header went out, the body is cut; still one attempt and one record.
    let r = post(
        &gw,
        KEY_ROUTE,
        "/v1/chat/completions",
        &chat_body("fm-drop", false),
    )
    .await;
    let id = header(&r, "x-request-id").to_string();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await;
    assert!(
        body.is_err() || serde_json::from_slice::<Value>(&body.unwrap()).is_err(),
        "a cut unary body must not parse"
    );
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["attempts"].as_array().unwrap().len(), 1);
    gw.usage(2).await;
}

#[tokio::test]
async fn large_body_replayed_intact_on_the_second_attempt() {
    let mock = mock().await;
    let hole = blackhole();
    let gw = start_faults(&mock, hole.port).await;
    let big = "lorem ipsum dolor sit amet ".repeat(8 * 1024); // ~216 KiB
    let body = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": big}], "max_tokens": 5});
    for model in ["fm-503", "fm-reset"] {
        let r = post(&gw, KEY_ROUTE, "/v1/chat/completions", &body(model)).await;
        assert_eq!(r.status(), 200, "{model}: {}", gw.log());
        assert_ne!(header(&r, "x-wharf-attempts"), "1");
        let failed_over: Value = r.json().await.unwrap();
        let direct: Value = post(&gw, KEY_GOOD, "/v1/chat/completions", &body("chat-a"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(failed_over["model"], "up-ok");
        assert!(direct["usage"]["prompt_tokens"].as_u64().unwrap() > 40_000);
        assert_eq!(
            failed_over["usage"]["prompt_tokens"], direct["usage"]["prompt_tokens"],
            "the second attempt must carry the whole body"
        );
    }
}

#[tokio::test]
async fn policies_fall_back_across_models_and_families() {
    let mock = mock().await;
    let m = mock.addr().to_string();
    let extra = format!(
        r#"
[[providers]]
name = "down"
type = "OPENAI"
base_url = "http://{m}/v1"
api_key_env = "WHARF_TEST_PROVIDER_KEY"
headers = {{ "x-mock-status" = "503" }}

[[models]]
name = "primary"
slug = "up-primary"
provider = "down"

[[models]]
name = "emb-down"
slug = "up-emb"
type = "embeddings"
provider = "down"

[[keys]]
id = "key_policy"
hash = "{policy}"
organisation_id = "org_1"
models = ["primary", "claude", "chat-a", "chat-b", "emb-down", "embed"]
routing = {{ chat = {{ strategy = "failover", candidates = [{{ modelName = "primary", priority = 1 }}, {{ modelName = "claude", priority = 2 }}], failoverOn = ["5xx", "timeout"], maxRetries = 2, retryDelayMs = 10, nativeFallback = {{ openai = ["chat-b"] }} }}, embeddings = {{ candidates = [{{ modelName = "emb-down" }}, {{ modelName = "embed" }}], failoverOn = ["rate_limit"] }} }}

[routing.organisations.org_1]
chat = {{ candidates = [{{ modelName = "dead-chat" }}, {{ modelName = "chat-a" }}] }}
"#,
        policy = sha(KEY_POLICY)
    );
    let gw = Gw::start_with(&mock, &extra).await;

    // Unified: the candidate of another family answers, in the OpenAI shape.
    for stream in [false, true] {
        let r = post(
            &gw,
            KEY_POLICY,
            "/v1/llm/chat",
            &chat_body("primary", stream),
        )
        .await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-wharf-provider"), "anthropic");
        assert_eq!(header(&r, "x-wharf-model"), "claude");
        assert_eq!(header(&r, "x-wharf-attempts"), "2");
        let id = header(&r, "x-request-id").to_string();
        let text = r.text().await.unwrap();
        if stream {
            assert_eq!(sse_data(&text).last().unwrap(), "[DONE]");
        }
        let rec = gw.usage_of(&id).await;
        assert_eq!(attempt_classes(&rec), vec!["down:5xx", "anthropic:ok"]);
        assert_eq!(rec["model"], "claude");
    }

    // Native route: only its family; `nativeFallback.openai` is the fallback.
    let r = post(
        &gw,
        KEY_POLICY,
        "/v1/chat/completions",
        &chat_body("primary", false),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-wharf-model"), "chat-b");
    assert_eq!(header(&r, "x-wharf-provider"), "mock");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "up-chat-b");

    // A trigger the rule does not name: no failover; the provider's 503 passes through.
    let r = post(
        &gw,
        KEY_POLICY,
        "/v1/embeddings",
        &json!({"model": "emb-down", "input": "hi"}),
    )
    .await;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "x-wharf-attempts"), "1");

    // The organisation's policy applies to keys without one of their own.
    let r = post(
        &gw,
        KEY_GOOD,
        "/v1/chat/completions",
        &chat_body("dead-chat", false),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-wharf-model"), "chat-a");
    assert_eq!(header(&r, "x-wharf-attempts"), "2");
}

#[tokio::test]
async fn a_rejected_credential_is_set_aside() {
    let mock = mock().await;
    let m = mock.addr().to_string();
    let extra = format!(
        r#"
[[providers]]
name = "two-keys"
type = "OPENAI"
base_url = "http://{m}/v1"
api_key_env = "WHARF_TEST_WRONG_KEY"
api_key_envs = ["WHARF_TEST_PROVIDER_KEY"]

[[models]]
name = "keyed"
slug = "up-keyed"
provider = "two-keys"

[[keys]]
id = "key_route"
hash = "{route}"
organisation_id = "org_1"
models = ["*"]
"#,
        route = sha(KEY_ROUTE)
    );
    let gw = Gw::start_custom(
        &mock,
        |port, admin, dir| config_text(&m, port, admin, dir, &extra),
        &[("WHARF_TEST_WRONG_KEY", "sk-wrong".to_string())],
    )
    .await;
    let mut attempts = Vec::new();
    for _ in 0..6 {
        let r = post(
            &gw,
            KEY_ROUTE,
            "/v1/chat/completions",
            &chat_body("keyed", false),
        )
        .await;
        assert_eq!(r.status(), 200);
        attempts.push(header(&r, "x-wharf-attempts").to_string());
    }
    // The wrong key is tried at most once, then set aside.
    assert_eq!(
        attempts.iter().filter(|a| *a == "2").count(),
        1,
        "{attempts:?}"
    );
    assert!(gw.log().contains("credential set aside"), "{}", gw.log());
}

async fn spread(gw: &Gw, model: &str, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let c = client();
    let mut futs = Vec::new();
    for _ in 0..(n / 50) {
        let reqs = (0..50).map(|_| {
            c.post(gw.url("/v1/chat/completions"))
                .bearer_auth(KEY_ROUTE)
                .json(&json!({"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}))
                .send()
        });
        futs.push(futures_util::future::join_all(reqs).await);
    }
    for batch in futs {
        for r in batch {
            let r = r.unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            *counts
                .entry(v["model"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    counts
}

#[tokio::test]
async fn round_robin_and_weighted_distributions() {
    let mock = mock().await;
    let m = mock.addr().to_string();
    let extra = format!(
        r#"
[[models]]
name = "rr"
slug = "rr-a"
provider = "mock"
strategy = "round_robin"
deployments = [{{ provider = "mock", slug = "rr-b" }}, {{ provider = "mock", slug = "rr-c" }}]

[[models]]
name = "wt"
slug = "wt-a"
provider = "mock"
weight = 3
strategy = "weighted"
deployments = [{{ provider = "mock", slug = "wt-b", weight = 1 }}]

[[keys]]
id = "key_route"
hash = "{route}"
organisation_id = "org_1"
models = ["*"]
"#,
        route = sha(KEY_ROUTE)
    );
    let gw = Gw::start_custom(
        &mock,
        |port, admin, dir| config_text(&m, port, admin, dir, &extra),
        &[],
    )
    .await;
    let rr = spread(&gw, "rr", 1000).await;
    for slug in ["rr-a", "rr-b", "rr-c"] {
        let n = rr.get(slug).copied().unwrap_or(0);
        assert!((323..=343).contains(&n), "round robin {rr:?}");
    }
    let wt = spread(&gw, "wt", 1000).await;
    let a = wt.get("wt-a").copied().unwrap_or(0);
    // 750 expected; 5 standard deviations of a binomial(1000, 0.75) is about 68.
    assert!((680..=820).contains(&a), "weighted {wt:?}");
    assert_eq!(a + wt.get("wt-b").copied().unwrap_or(0), 1000);
    let metrics = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("wharf_routing_decisions_total{strategy=\"round_robin\"} 1000"));
    assert!(metrics.contains("wharf_routing_decisions_total{strategy=\"weighted\"} 1000"));
}

#[tokio::test]
async fn an_ejected_deployment_gets_no_traffic_until_its_cooldown_ends() {
    let mock = mock().await;
    let m = mock.addr().to_string();
    let text = |port: u16, admin: u16, dir: &std::path::Path, failing: bool| {
        let headers = if failing {
            r#"headers = { "x-mock-status" = "503" }"#
        } else {
            ""
        };
        let extra = format!(
            r#"
[routing]
failure_threshold = 1
cooldown_ms = 1500

[[providers]]
name = "flaky"
type = "OPENAI"
base_url = "http://{m}/v1"
api_key_env = "WHARF_TEST_PROVIDER_KEY"
{headers}

[[models]]
name = "ej"
slug = "ej-a"
provider = "flaky"
deployments = [{{ provider = "mock", slug = "ej-b" }}]

[[keys]]
id = "key_route"
hash = "{route}"
organisation_id = "org_1"
models = ["*"]
"#,
            route = sha(KEY_ROUTE)
        );
        config_text(&m, port, admin, dir, &extra)
    };
    let gw = Gw::start_custom(&mock, |p, a, d| text(p, a, d, true), &[]).await;
    let ask = || async {
        let r = post(
            &gw,
            KEY_ROUTE,
            "/v1/chat/completions",
            &chat_body("ej", false),
        )
        .await;
        assert_eq!(r.status(), 200);
        let attempts = header(&r, "x-wharf-attempts").to_string();
        let v: Value = r.json().await.unwrap();
        (v["model"].as_str().unwrap().to_string(), attempts)
    };
    // The first request fails over and ejects `flaky`.
    assert_eq!(ask().await, ("ej-b".to_string(), "2".to_string()));
    let ejected_at = Instant::now();
    // During the cooldown, no traffic reaches it: one attempt each, straight to ej-b.
    while ejected_at.elapsed() < Duration::from_millis(1000) {
        assert_eq!(ask().await, ("ej-b".to_string(), "1".to_string()));
    }
    // `flaky` recovers (reload keeps the router's state: same deployments).
    std::fs::write(
        gw.config_path(),
        text(gw.port, gw.admin, gw.dir.path(), false),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // After the cooldown, the probe goes to flaky and succeeds; it takes traffic again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (model, attempts) = ask().await;
        if model == "ej-a" {
            assert_eq!(attempts, "1");
            break;
        }
        assert!(Instant::now() < deadline, "ej-a never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ejected_at.elapsed() >= Duration::from_millis(1400));
    assert_eq!(ask().await.0, "ej-a");
    let metrics = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("wharf_deployment_ejections_total{model=\"ej\",provider=\"flaky\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("wharf_failovers_total{class=\"5xx\",provider=\"flaky\"} 1"));
}

#[tokio::test]
async fn bad_routing_configuration_is_rejected_with_its_path() {
    let mock = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"
[[models]]
name = "x"
slug = "x"
provider = "mock"
strategy = "fastest""#,
            "strategy: unknown routing strategy `fastest`",
        ),
        (
            r#"
[[models]]
name = "x"
slug = "x"
provider = "mock"
deployments = [{ provider = "nowhere" }]"#,
            "deployments[0].provider: no provider named `nowhere`",
        ),
        (
            r#"
[routing.organisations.org_1]
chat = { failoverOn = ["sometimes"] }"#,
            "routing.organisations.org_1.chat.failoverOn[0]",
        ),
    ];
    for (extra, want) in cases {
        let text = config_text(&mock.addr().to_string(), 1, 2, dir.path(), extra);
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("check")
            .arg(&path)
            .env("WHARF_TEST_PROVIDER_KEY", PROVIDER_KEY)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(err.contains(want), "{err} should contain {want}");
    }
}

/// Active health checks: a replica that fails its `GET /health` is left out of routing plans,
/// so no request spends an attempt on it (passive ejection alone would fail one over first).
#[tokio::test]
async fn a_replica_failing_its_health_check_gets_no_attempts() {
    let mock = mock().await;
    let m = mock.addr().to_string();
    let dead = free_port();
    let extra = format!(
        r#"
[[providers]]
name = "hc-up"
type = "OPENAI"
base_url = "http://{m}/v1"
api_key_env = "WHARF_TEST_PROVIDER_KEY"
health_check = {{ path = "/health", interval_ms = 100, timeout_ms = 500 }}

[[providers]]
name = "hc-down"
type = "OPENAI"
base_url = "http://127.0.0.1:{dead}/v1"
api_key_env = "WHARF_TEST_PROVIDER_KEY"
health_check = {{ path = "/health", interval_ms = 100, timeout_ms = 500 }}

[[models]]
name = "hc"
slug = "up-1"
provider = "hc-down"
strategy = "round_robin"
deployments = [{{ provider = "hc-up", slug = "up-2" }}]

[[keys]]
id = "key_route"
hash = "{route}"
organisation_id = "org_1"
models = ["*"]
"#,
        route = sha(KEY_ROUTE)
    );
    let gw = Gw::start_custom(
        &mock,
        |port, admin, dir| config_text(&m, port, admin, dir, &extra),
        &[],
    )
    .await;
    // Both checks have run once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = client()
            .get(gw.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("wharf_upstream_healthy{provider=\"hc-down\"} 0")
            && metrics.contains("wharf_upstream_healthy{provider=\"hc-up\"} 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no health checks: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..6 {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY_ROUTE)
            .json(&json!({"model": "hc", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let (attempts, provider) = (
            header(&r, "x-wharf-attempts").to_string(),
            header(&r, "x-wharf-provider").to_string(),
        );
        let status = r.status();
        assert_eq!(status, 200, "request {i}: {}", r.text().await.unwrap());
        assert_eq!(attempts, "1", "request {i}");
        assert_eq!(provider, "hc-up", "request {i}");
    }
}
