//! End-to-end tests of the gateway core through real sockets: a `wharf` process in front of the
//! mock provider.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

async fn post(gw: &Gw, path: &str, key: &str, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert!(r.headers().contains_key("x-request-id"));
    let v: Value = r.json().await.unwrap();
    (status, v["error"]["code"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn unary_chat_rewrites_model_injects_credential_and_records_usage() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .header("x-request-id", "client-req-1")
        .header("x-mock-tokens", "7")
        .json(&chat_body("chat-a", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-req-1");
    assert_eq!(r.headers()["x-wharf-provider"], "mock");
    assert_eq!(r.headers()["x-wharf-model"], "chat-a");
    assert_eq!(r.headers()["x-wharf-attempts"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "up-chat-a");
    let usage = v["usage"].clone();
    assert_eq!(usage["completion_tokens"], 7);

    // What the provider saw: the slug, its own key, never the virtual key.
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.json().unwrap()["model"], "up-chat-a");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    assert_eq!(seen.header("host"), Some(gw.mock_addr.as_str()));
    assert!(seen.header("accept-encoding").is_none());
    for (_, v) in &seen.headers {
        assert!(!v.contains(KEY_GOOD), "virtual key leaked upstream");
    }
    assert!(!String::from_utf8_lossy(&seen.body).contains(KEY_GOOD));

    let rec = gw.usage_of("client-req-1").await;
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["outcome"], "success");
    assert_eq!(rec["api_key_id"], "key_good");
    assert_eq!(rec["organisation_id"], "org_1");
    assert_eq!(rec["team_id"], "team_1");
    assert_eq!(rec["model"], "chat-a");
    assert_eq!(rec["upstream_model"], "up-chat-a");
    assert_eq!(rec["provider"], "mock");
    assert_eq!(rec["usage_source"], "provider");
    assert_eq!(rec["tokens"]["input"], usage["prompt_tokens"]);
    assert_eq!(rec["tokens"]["output"], 7);
    let input = usage["prompt_tokens"].as_u64().unwrap();
    // $0.15 / 1M input, $0.60 / 1M output, in nanos.
    let expect = (input * 150_000_000 + 7 * 600_000_000 + 500_000) / 1_000_000;
    assert_eq!(rec["cost_nanos"].as_u64().unwrap(), expect);
    assert_eq!(rec["attempts"].as_array().unwrap().len(), 1);
    assert!(rec["provider_request_id"]
        .as_str()
        .unwrap()
        .starts_with("req_"));
}

#[tokio::test]
async fn streaming_chat_strips_usage_chunk_unless_asked_and_bills_it() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;

    // The client did not ask for usage: the gateway asks, reads it, and removes the chunk.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .header("x-mock-tokens", "5")
        .json(&chat_body("chat-a", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    let data = sse_data(&body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert!(
        !body.contains("prompt_tokens"),
        "usage chunk leaked: {body}"
    );
    let content: String = data
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(!content.is_empty());
    let seen = mock.last_request().unwrap().json().unwrap();
    assert_eq!(seen["stream_options"]["include_usage"], true);
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["stream"], true);
    assert_eq!(rec["usage_source"], "provider");
    assert_eq!(rec["tokens"]["output"], 5);
    assert_eq!(rec["stream_cut"], false);
    assert!(rec["ttfb_ms"].as_f64().is_some());

    // The client asked: the usage chunk stays.
    let mut b = chat_body("chat-a", true);
    b["stream_options"] = json!({"include_usage": true});
    let r = post(&gw, "/v1/chat/completions", KEY_GOOD, &b).await;
    let body = r.text().await.unwrap();
    let usage_chunks: Vec<Value> = sse_data(&body)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter(|v| v["usage"].is_object())
        .collect();
    assert_eq!(usage_chunks.len(), 1);
    assert_eq!(usage_chunks[0]["choices"], json!([]));
}

#[tokio::test]
async fn responses_and_embeddings() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let r = post(
        &gw,
        "/v1/responses",
        KEY_GOOD,
        &json!({"model":"chat-a","input":"hello"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(mock.last_request().unwrap().path, "/v1/responses");
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["tokens"]["output"], v["usage"]["output_tokens"]);

    let r = post(
        &gw,
        "/v1/responses",
        KEY_GOOD,
        &json!({"model":"chat-a","input":"hello","stream":true}),
    )
    .await;
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(body.contains("event: response.completed"));
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["usage_source"], "provider");
    assert!(rec["tokens"]["output"].as_u64().unwrap() > 0);

    let r = post(
        &gw,
        "/v1/embeddings",
        KEY_GOOD,
        &json!({"model":"embed","input":["a b c","d e"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        mock.last_request().unwrap().json().unwrap()["model"],
        "up-embed"
    );
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["tokens"]["input"], v["usage"]["prompt_tokens"]);

    // An embeddings model on the chat route is refused before any upstream call.
    let n = mock.request_count();
    let r = post(
        &gw,
        "/v1/chat/completions",
        KEY_GOOD,
        &chat_body("embed", false),
    )
    .await;
    assert_eq!(error_code(r).await, (400, "invalid_request".into()));
    assert_eq!(mock.request_count(), n);
}

#[tokio::test]
async fn every_credential_form_is_accepted_and_never_forwarded() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let c = client();
    let body = chat_body("chat-a", false);
    let reqs = [
        c.post(gw.url("/v1/chat/completions"))
            .header("authorization", format!("Bearer {KEY_GOOD}")),
        c.post(gw.url("/v1/chat/completions"))
            .header("x-api-key", KEY_GOOD),
        c.post(gw.url("/v1/chat/completions"))
            .header("x-goog-api-key", KEY_GOOD),
        c.post(gw.url(&format!("/v1/chat/completions?key={KEY_GOOD}&foo=bar"))),
    ];
    for rb in reqs {
        let r = rb.json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let seen = mock.last_request().unwrap();
        assert!(!seen.path.contains("key="), "{}", seen.path);
        assert!(seen.header("x-api-key").is_none());
        assert!(seen.header("x-goog-api-key").is_none());
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {PROVIDER_KEY}").as_str())
        );
    }
    assert_eq!(
        mock.last_request().unwrap().path,
        "/v1/chat/completions?foo=bar"
    );
}

#[tokio::test]
async fn key_states_and_grants() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let body = chat_body("chat-a", false);
    let cases = [
        (KEY_EXPIRED, 401, "api_key_expired"),
        (KEY_REVOKED, 401, "api_key_revoked"),
        ("wharf-unknown", 401, "unauthorized"),
    ];
    for (key, st, code) in cases {
        let r = post(&gw, "/v1/chat/completions", key, &body).await;
        assert_eq!(error_code(r).await, (st, code.to_string()), "{key}");
    }
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));

    let r = post(
        &gw,
        "/v1/chat/completions",
        KEY_LIMITED,
        &chat_body("chat-b", false),
    )
    .await;
    assert_eq!(error_code(r).await, (403, "model_not_allowed".into()));
    let r = post(
        &gw,
        "/v1/chat/completions",
        KEY_GOOD,
        &chat_body("nope", false),
    )
    .await;
    assert_eq!(error_code(r).await, (400, "model_not_found".into()));
    let r = post(
        &gw,
        "/v1/chat/completions",
        KEY_GOOD,
        &chat_body("claude", false),
    )
    .await;
    assert_eq!(error_code(r).await, (400, "provider_not_allowed".into()));
    assert_eq!(
        mock.request_count(),
        0,
        "no denied request may reach the provider"
    );

    // /v1/models lists only what the key may call.
    let v: Value = client()
        .get(gw.url("/v1/models"))
        .bearer_auth(KEY_LIMITED)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["chat-a"]);

    let r = client()
        .post(gw.url("/v1/keys/validate"))
        .header("x-api-key", KEY_LIMITED)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["key"]["id"], "key_limited");
    assert_eq!(v["key"]["type"], "USER");
    assert_eq!(v["key"]["user_id"], "user_1");
    assert_eq!(v["models"], json!(["chat-a"]));
    let r = client()
        .post(gw.url("/v1/keys/validate"))
        .bearer_auth(KEY_REVOKED)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (401, "api_key_revoked".into()));

    // Every one of those requests left exactly one usage record (10 requests).
    let recs = gw.usage(10).await;
    assert!(recs
        .iter()
        .any(|r| r["error_code"] == "api_key_expired" && r["denied_by"] == "auth"));
    assert!(recs
        .iter()
        .any(|r| r["error_code"] == "model_not_allowed" && r["api_key_id"] == "key_limited"));
}

#[tokio::test]
async fn bad_input_gets_clear_json_errors() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let c = client();
    let send = |b: Vec<u8>| {
        c.post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY_GOOD)
            .header("content-type", "application/json")
            .body(b)
            .send()
    };
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (
            b"{\"model\":\"chat-a\",".to_vec(),
            400,
            "invalid_request",
            "not valid JSON",
        ),
        (
            br#"{"model":"chat-a","messages":[],"stream":"yes"}"#.to_vec(),
            400,
            "invalid_request",
            "stream",
        ),
        (
            br#"{"model":["chat-a"],"messages":[]}"#.to_vec(),
            400,
            "invalid_request",
            "model",
        ),
        (
            br#"{"model":"chat-a","messages":"hi"}"#.to_vec(),
            400,
            "invalid_request",
            "messages",
        ),
        (
            b"{\"model\":\"chat-a\",\"messages\":[{\"content\":\"\xff\xfe\"}]}".to_vec(),
            400,
            "invalid_request_body",
            "UTF-8",
        ),
        (Vec::new(), 400, "invalid_request_body", "empty"),
        (vec![b' '; 1_100_000], 413, "payload_too_large", "limit"),
    ];
    for (body, st, code, needle) in cases {
        let r = send(body).await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, st, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{needle}: {v}"
        );
    }
    // No body at all (no Content-Length).
    let r = raw(
        gw.port,
        format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_GOOD}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("invalid_request_body"), "{r}");

    // Unknown route and wrong method.
    let r = c.get(gw.url("/v1/nope")).send().await.unwrap();
    assert_eq!(error_code(r).await, (404, "not_found".into()));
    let r = c
        .get(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(error_code(r).await, (405, "method_not_allowed".into()));

    // The gateway is still up and serving.
    let r = post(
        &gw,
        "/v1/chat/completions",
        KEY_GOOD,
        &chat_body("chat-a", false),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn provider_errors_pass_through_unchanged() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    for (st, retry_after) in [("429", Some("7")), ("500", None), ("503", None)] {
        let mut rb = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY_GOOD)
            .header("x-mock-status", st)
            .json(&chat_body("chat-a", false));
        if let Some(ra) = retry_after {
            rb = rb.header("x-mock-retry-after", ra);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status().as_str(), st);
        if let Some(ra) = retry_after {
            assert_eq!(r.headers()["retry-after"], ra);
        }
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let v: Value = r.json().await.unwrap();
        // The provider's own envelope, not the gateway's.
        assert!(v["error"]["message"].is_string());
        assert!(v["error"].get("param").is_some(), "{v}");
        let rec = gw.usage_of(&id).await;
        assert_eq!(rec["status"].as_u64().unwrap().to_string(), st);
        assert_eq!(rec["outcome"], "error");
        assert_eq!(
            rec["attempts"][0]["status"].as_u64().unwrap().to_string(),
            st
        );
    }
}

#[tokio::test]
async fn unreachable_and_silent_upstreams() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        KEY_GOOD,
        &chat_body("dead-chat", false),
    )
    .await;
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(error_code(r).await, (502, "upstream_unreachable".into()));
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["status"], 502);
    assert_eq!(rec["attempts"][0]["error_class"], "connect");

    // The mock holds the request without answering; the provider timeout is 1.5 s.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .header("x-mock-fault", "hang")
        .json(&chat_body("chat-a", false))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(error_code(r).await, (504, "upstream_timeout".into()));
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["error_code"], "upstream_timeout");

    // A connection reset before any answer.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .header("x-mock-fault", "reset")
        .json(&chat_body("chat-a", false))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, 502);
}

#[tokio::test]
async fn mid_stream_upstream_failure_ends_with_an_error_event() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .header("x-mock-fault", "drop-mid-stream")
        .header("x-mock-drop-after", "3")
        .json(&chat_body("chat-a", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut body = Vec::new();
    let mut s = r.bytes_stream();
    while let Some(chunk) = s.next().await {
        match chunk {
            Ok(c) => body.extend_from_slice(&c),
            Err(_) => break,
        }
    }
    let body = String::from_utf8(body).unwrap();
    let data = sse_data(&body);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{body}");
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["stream_cut"], true);
    assert_eq!(rec["outcome"], "upstream_error");
    assert_eq!(rec["usage_source"], "estimated");
    assert!(rec["tokens"]["output"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn client_disconnect_mid_stream_still_bills_what_was_produced() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .header("x-mock-tokens", "200")
        .header("x-mock-itl-ms", "20")
        .json(&chat_body("chat-a", true))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut s = r.bytes_stream();
    let mut got = 0;
    while got < 400 {
        got += s.next().await.unwrap().unwrap().len();
    }
    drop(s); // the client vanishes mid-stream
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["client_disconnected"], true);
    assert_eq!(rec["outcome"], "client_disconnected");
    assert_eq!(rec["usage_source"], "estimated");
    let out = rec["tokens"]["output"].as_u64().unwrap();
    assert!((1..200).contains(&out), "billed {out} of 200 tokens");
    assert!(rec["tokens"]["input"].as_u64().unwrap() > 0);
    assert!(rec["cost_nanos"].as_u64().unwrap() > 0);
    // The gateway is fine afterwards.
    let r = post(
        &gw,
        "/v1/chat/completions",
        KEY_GOOD,
        &chat_body("chat-a", false),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn large_bodies_reach_the_upstream_intact() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    for size in [70 * 1024, 300 * 1024, 1000 * 1024] {
        let text: String = (0..size / 10)
            .map(|i| format!("w{:08}", i))
            .collect::<Vec<_>>()
            .join(" ");
        let body =
            json!({"model":"chat-a","messages":[{"role":"user","content":text}],"temperature":0.2});
        let bytes = serde_json::to_vec(&body).unwrap();
        if bytes.len() > 1_048_576 {
            continue;
        }
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY_GOOD)
            .header("content-type", "application/json")
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "size {size}");
        let seen = mock.last_request().unwrap();
        let expect = String::from_utf8(bytes)
            .unwrap()
            .replace("\"chat-a\"", "\"up-chat-a\"");
        assert_eq!(seen.body.len(), expect.len(), "size {size}");
        assert_eq!(
            std::str::from_utf8(&seen.body).unwrap(),
            expect,
            "size {size}"
        );
        assert_eq!(
            seen.header("content-length").unwrap(),
            expect.len().to_string()
        );
    }

    // A chunked upload under 64 KiB is fine; over it, the gateway needs a Content-Length.
    let small = br#"{"model":"chat-a","messages":[{"role":"user","content":"hi"}]}"#;
    let mut req = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_GOOD}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n", small.len()).into_bytes();
    req.extend_from_slice(small);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = raw(gw.port, &req).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(
        mock.last_request().unwrap().json().unwrap()["model"],
        "up-chat-a"
    );

    let big = format!(
        r#"{{"model":"chat-a","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(100 * 1024)
    );
    let mut req = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_GOOD}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").into_bytes();
    for part in big.as_bytes().chunks(8192) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw(gw.port, &req).await;
    assert!(r.starts_with("HTTP/1.1 411"), "{r}");
    assert!(r.contains("length_required"), "{r}");
}

#[tokio::test]
async fn a_retry_replays_the_whole_large_body() {
    // The provider drops a pooled keep-alive connection without answering (the classic idle
    // close race). Pingora retries on a fresh connection, and the full > 64 KiB body must be
    // replayed, not just the 64 KiB tail Pingora keeps.
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        KEY_GOOD,
        &chat_body("chat-a", false),
    )
    .await;
    assert_eq!(r.status(), 200);
    let accepted = mock.connections_accepted();
    let r = post_large_dropped_once(&gw, "replay-test-1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-attempts"], "2");
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let reqs = mock.requests();
    let last_two = &reqs[reqs.len() - 2..];
    for seen in last_two {
        let v = seen.json().unwrap();
        assert_eq!(v["model"], "up-chat-a");
        assert_eq!(
            v["messages"][0]["content"].as_str().unwrap().len(),
            200 * 1024
        );
    }
    assert_eq!(
        mock.connections_accepted(),
        accepted + 1,
        "retry used a fresh connection"
    );
    let rec = gw.usage_of(&id).await;
    let attempts = rec["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["outcome"], "error");
    assert_eq!(attempts[1]["outcome"], "success");
}

#[tokio::test]
async fn exactly_one_usage_record_per_request() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let mut n = 0;
    for i in 0..6 {
        let r = post(
            &gw,
            "/v1/chat/completions",
            KEY_GOOD,
            &chat_body("chat-a", i % 2 == 0),
        )
        .await;
        assert_eq!(r.status(), 200);
        let _ = r.text().await.unwrap();
        n += 1;
    }
    let _ = post(
        &gw,
        "/v1/chat/completions",
        "bad",
        &chat_body("chat-a", false),
    )
    .await;
    n += 1;
    let _ = client().get(gw.url("/v1/unknown")).send().await.unwrap();
    n += 1;
    // Probes leave no record.
    let _ = client().get(gw.url("/v1/health")).send().await.unwrap();
    let _ = client().get(gw.url("/metrics")).send().await.unwrap();
    let recs = gw.usage(n).await;
    let mut ids: Vec<&str> = recs
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "request ids must be unique");
    let billed: u64 = recs
        .iter()
        .map(|r| r["tokens"]["output"].as_u64().unwrap())
        .sum();
    assert_eq!(billed, 6 * 16);
}

#[tokio::test]
async fn metrics_on_the_proxy_listener_need_the_operator_token() {
    let mock = mock().await;
    let gw = gw_with_server(
        &mock,
        "metrics_on_proxy = true\noperator_token_env = \"WHARF_TEST_OPERATOR_TOKEN\"",
        &[("WHARF_TEST_OPERATOR_TOKEN", "op-secret-token".to_string())],
    )
    .await;
    let c = client();
    let r = c.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(gw.url("/metrics"))
        .bearer_auth(KEY_GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a virtual key is not the operator");
    let r = c
        .get(gw.url("/metrics"))
        .bearer_auth("op-secret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("wharf_requests_total"));
}

#[tokio::test]
async fn health_status_and_metrics() {
    let mock = mock().await;
    let gw = gw_with_server(
        &mock,
        "operator_token_env = \"WHARF_TEST_OPERATOR_TOKEN\"",
        &[("WHARF_TEST_OPERATOR_TOKEN", "op-secret-token".to_string())],
    )
    .await;
    let c = client();
    for url in [gw.url("/v1/health"), gw.admin_url("/v1/health")] {
        let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(v, json!({"status":"ok"}));
    }
    let v: Value = c
        .get(gw.admin_url("/v1/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["components"]["config"]["status"], "ok");
    let _ = post(
        &gw,
        "/v1/chat/completions",
        KEY_GOOD,
        &chat_body("chat-a", false),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // With an operator token configured, the metrics need it on the admin listener too.
    let r = c.get(gw.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let m = c
        .get(gw.admin_url("/metrics"))
        .bearer_auth("op-secret-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "wharf_requests_total",
        "wharf_request_duration_seconds",
        "wharf_gateway_overhead_seconds",
        "wharf_upstream_ttfb_seconds",
        "wharf_tokens_total",
        "wharf_requests_in_flight",
        "wharf_usage_queue_depth",
        "wharf_usage_records_dropped_total",
    ] {
        assert!(m.contains(name), "{name} missing");
    }
    assert!(m.contains(r#"wharf_requests_total{provider="mock",route="/v1/chat/completions",status_class="2xx"} 1"#), "{m}");
    // Not on the proxy listener unless turned on.
    let r = c.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // Without a credential, status is gateway-wide only: nothing of any provider.
    for url in [gw.url("/api/status"), gw.admin_url("/api/status")] {
        let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
        assert!(v.get("providers").is_none(), "{v}");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    }
    let r = c
        .get(gw.url("/api/status"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Reachability probes run at start; the operator sees every provider.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v: Value = c
            .get(gw.url("/api/status"))
            .bearer_auth("op-secret-token")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ps = v["providers"].as_array().unwrap().clone();
        let mock_p = ps.iter().find(|p| p["name"] == "mock").unwrap();
        let dead_p = ps.iter().find(|p| p["name"] == "dead").unwrap();
        if mock_p["reachable"].is_boolean() && dead_p["reachable"].is_boolean() {
            assert_eq!(mock_p["reachable"], true);
            assert_eq!(dead_p["reachable"], false);
            assert!(v["uptime_seconds"].is_u64());
            assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
            assert!(v["started_at"].is_string());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
