//! Native routes of the other families through real sockets: Anthropic Messages, Gemini
//! generateContent, legacy OpenAI completions. Each: unary, streaming, usage, error shapes,
//! credential hygiene.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

fn anthropic_body(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 64, "stream": stream,
           "messages": [{"role": "user", "content": "Say hello"}]})
}

fn gemini_body() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]})
}

#[tokio::test]
async fn anthropic_messages_unary_and_streaming() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let c = client();
    let r = c
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY_GOOD)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .json(&anthropic_body("claude", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], "claude-x");
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(PROVIDER_KEY));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        seen.header("anthropic-beta"),
        Some("prompt-caching-2024-07-31")
    );
    assert!(seen.header("authorization").is_none());
    assert_eq!(seen.json().unwrap()["model"], "claude-x");
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["usage_source"], "provider");
    assert_eq!(rec["tokens"]["output"], v["usage"]["output_tokens"]);
    assert_eq!(rec["provider_type"], "ANTHROPIC");

    // Streaming: usage from message_start (input) and message_delta (cumulative output).
    let r = c
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY_GOOD)
        .header("x-mock-tokens", "9")
        .json(&anthropic_body("claude", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(body.contains("event: message_start"));
    assert!(body.contains("event: message_stop"));
    // The default anthropic-version is supplied when the client sends none.
    assert_eq!(
        mock.last_request().unwrap().header("anthropic-version"),
        Some("2023-06-01")
    );
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["tokens"]["output"], 9);
    assert!(rec["tokens"]["input"].as_u64().unwrap() > 0);
    assert_eq!(rec["stream_cut"], false);

    // count_tokens is the provider's.
    let r = c
        .post(gw.url("/v1/messages/count_tokens"))
        .header("x-api-key", KEY_GOOD)
        .json(&json!({"model":"claude","messages":[{"role":"user","content":"hello there"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        mock.last_request().unwrap().path,
        "/v1/messages/count_tokens"
    );
}

#[tokio::test]
async fn anthropic_route_errors_use_anthropic_envelope() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let c = client();
    for (key, model, status, code) in [
        (KEY_GOOD, "chat-a", 400, "provider_not_allowed"),
        (KEY_GOOD, "nope", 400, "model_not_found"),
        ("bad", "claude", 401, "unauthorized"),
    ] {
        let r = c
            .post(gw.url("/v1/messages"))
            .header("x-api-key", key)
            .json(&anthropic_body(model, false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["type"].is_string());
        assert!(v["error"]["message"].is_string());
    }
    // max_tokens is required by the Messages API.
    let r = c
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY_GOOD)
        .json(&json!({"model":"claude","messages":[]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_tokens"));
    // Provider errors pass through in the provider's own shape.
    let r = c
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY_GOOD)
        .header("x-mock-status", "429")
        .json(&anthropic_body("claude", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    // The OpenAI route refuses the Anthropic model.
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .json(&chat_body("claude", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn gemini_generate_and_stream() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let c = client();
    let r = c
        .post(gw.url("/v1beta/models/gem:generateContent"))
        .header("x-goog-api-key", KEY_GOOD)
        .json(&gemini_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert!(v["candidates"][0]["content"]["parts"][0]["text"].is_string());
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1beta/models/gem-up:generateContent");
    assert_eq!(seen.header("x-goog-api-key"), Some(PROVIDER_KEY));
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["model"], "gem");
    assert_eq!(
        rec["tokens"]["input"],
        v["usageMetadata"]["promptTokenCount"]
    );

    // ?key= is accepted, never forwarded; alt=sse is kept; CRLF events pass through.
    let r = c
        .post(gw.url(&format!(
            "/v1beta/models/gem:streamGenerateContent?alt=sse&key={KEY_GOOD}"
        )))
        .header("x-mock-tokens", "6")
        .json(&gemini_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(body.contains("\r\n\r\n"), "CRLF framing lost");
    let seen = mock.last_request().unwrap();
    assert_eq!(
        seen.path,
        "/v1beta/models/gem-up:streamGenerateContent?alt=sse"
    );
    assert!(!seen.path.contains(KEY_GOOD));
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["stream"], true);
    assert_eq!(rec["usage_source"], "provider");
    assert_eq!(rec["tokens"]["output"], 6);

    // Wrong family and unknown model, on the Gemini route.
    let r = c
        .post(gw.url("/v1beta/models/chat-a:generateContent"))
        .header("x-goog-api-key", KEY_GOOD)
        .json(&gemini_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "provider_not_allowed");
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    let r = c
        .post(gw.url("/v1beta/models/gem:generateContent"))
        .header("x-goog-api-key", KEY_GOOD)
        .json(&json!({"contents": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn legacy_completions_unary_and_streaming() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let c = client();
    let r = c
        .post(gw.url("/v1/completions"))
        .bearer_auth(KEY_GOOD)
        .json(&json!({"model":"chat-a","prompt":"Once upon a time"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(mock.last_request().unwrap().path, "/v1/completions");
    let r = c
        .post(gw.url("/v1/completions"))
        .bearer_auth(KEY_GOOD)
        .header("x-mock-tokens", "4")
        .json(&json!({"model":"chat-a","prompt":"Once","stream":true}))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert!(
        !body.contains("prompt_tokens"),
        "usage chunk leaked: {body}"
    );
    assert_eq!(
        mock.last_request().unwrap().json().unwrap()["stream_options"]["include_usage"],
        true
    );
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["tokens"]["output"], 4);
    assert_eq!(rec["usage_source"], "provider");
}
