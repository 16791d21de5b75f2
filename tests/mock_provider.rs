//! End-to-end tests of the mock OpenAI provider over real sockets.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wharf::mock::{MockConfig, MockServer};

const KEY: &str = "sk-test-key-123456";

async fn start(cfg: MockConfig) -> MockServer {
    MockServer::start("127.0.0.1:0", cfg)
        .await
        .expect("mock server starts")
}

async fn start_default() -> MockServer {
    start(MockConfig::default()).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client builds")
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Say hello to the gateway"}]}
        ],
        "stream": stream
    })
}

async fn post(server: &MockServer, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{}", server.url(), path))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .expect("request succeeds")
}

/// `data:` payloads of an SSE body, in order.
fn sse_data(text: &str) -> Vec<String> {
    sse_events(text).into_iter().map(|(_, data)| data).collect()
}

/// `(event name, data)` pairs of an SSE body, checking the framing.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    assert!(text.ends_with("\n\n"), "SSE body ends with a blank line");
    text.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_owned());
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            (name, data.expect("every event has data"))
        })
        .collect()
}

fn parse(data: &str) -> Value {
    serde_json::from_str(data).expect("event data is JSON")
}

/// Writes raw bytes and reads until the server closes the connection.
async fn raw_exchange(server: &MockServer, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr())
        .await
        .expect("connect to mock");
    stream.write_all(request).await.expect("write request");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("server closes the connection")
        .expect("read response");
    String::from_utf8(out).expect("response is UTF-8")
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_request_id(resp: &reqwest::Response) {
    let id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id header");
    let hex = id.strip_prefix("req_").expect("req_ prefix");
    assert_eq!(hex.len(), 32);
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(resp.headers().contains_key("openai-processing-ms"));
}

#[tokio::test]
async fn chat_unary_shape_and_usage() {
    let server = start_default().await;
    let resp = post(&server, "/v1/chat/completions", &chat_body(false)).await;
    assert_eq!(resp.status(), 200);
    assert_request_id(&resp);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.expect("JSON body");

    let id = body["id"].as_str().expect("id");
    assert!(id.starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().expect("created") > 1_600_000_000);
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["system_fingerprint"], "fp_mock");
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["refusal"].is_null());
    assert!(choice["logprobs"].is_null());
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().expect("content");
    assert!(content.starts_with("Hello from the mock provider"));
    assert_eq!(content.split(' ').count(), 16);

    // "You are terse." = 14 chars -> 4 + 3; "Say hello to the gateway" = 24 -> 6 + 3.
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], 16);
    assert_eq!(usage["completion_tokens"], 16);
    assert_eq!(usage["total_tokens"], 32);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["prompt_tokens_details"]["audio_tokens"], 0);
    for key in [
        "reasoning_tokens",
        "audio_tokens",
        "accepted_prediction_tokens",
        "rejected_prediction_tokens",
    ] {
        assert_eq!(usage["completion_tokens_details"][key], 0, "{key}");
    }

    let recorded = server.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(
        recorded[0].header("Authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(recorded[0].json(), Some(chat_body(false)));
}

#[tokio::test]
async fn chat_token_knobs_and_caps() {
    let server = start_default().await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(KEY)
        .header("x-mock-tokens", "5")
        .json(&chat_body(false))
        .send()
        .await
        .expect("request");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the mock provider."
    );

    let mut capped = chat_body(false);
    capped["max_tokens"] = json!(3);
    let body: Value = post(&server, "/v1/chat/completions", &capped)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from the");
}

#[tokio::test]
async fn chat_stream_without_usage() {
    let server = start_default().await;
    let resp = post(&server, "/v1/chat/completions", &chat_body(true)).await;
    assert_eq!(resp.status(), 200);
    assert_request_id(&resp);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let text = resp.text().await.expect("body");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    // role chunk + 16 tokens + finish chunk + [DONE]
    assert_eq!(data.len(), 19);

    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| parse(d)).collect();
    let id = chunks[0]["id"].clone();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["model"], "gpt-4o-mini");
        assert_eq!(chunk["system_fingerprint"], "fp_mock");
        assert!(chunk.get("usage").is_none(), "no usage field: {chunk}");
        assert_eq!(chunk["choices"].as_array().map(Vec::len), Some(1));
        assert!(chunk["choices"][0]["logprobs"].is_null());
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": "", "refusal": null})
    );
    assert!(chunks[0]["choices"][0]["finish_reason"].is_null());
    let content: String = chunks[1..17]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .expect("token delta")
                .to_owned()
        })
        .collect();
    assert!(content.starts_with("Hello from the mock provider."));
    assert_eq!(
        chunks[1]["choices"][0]["delta"],
        json!({"content": "Hello "})
    );
    let last = &chunks[17];
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn chat_stream_with_include_usage() {
    let server = start_default().await;
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(KEY)
        .header("x-mock-tokens", "4")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("body");
    let data = sse_data(&text);
    // role + 4 tokens + finish + usage + [DONE]
    assert_eq!(data.len(), 8);
    assert_eq!(data[7], "[DONE]");
    let chunks: Vec<Value> = data[..7].iter().map(|d| parse(d)).collect();
    for chunk in &chunks[..6] {
        assert!(chunk["usage"].is_null(), "usage: null on {chunk}");
        assert!(chunk.get("usage").is_some(), "usage present on {chunk}");
    }
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    let usage_chunk = &chunks[6];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 16);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 4);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 20);
    assert_eq!(
        usage_chunk["usage"]["completion_tokens_details"]["reasoning_tokens"],
        0
    );
}

#[tokio::test]
async fn stream_options_require_stream() {
    let server = start_default().await;
    let mut body = chat_body(false);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(&server, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("JSON");
    assert_eq!(err["error"]["param"], "stream_options");
}

#[tokio::test]
async fn responses_unary() {
    let server = start_default().await;
    let body = json!({"model": "gpt-4o", "input": "Tell me a story", "instructions": "Be brief."});
    let resp = post(&server, "/v1/responses", &body).await;
    assert_eq!(resp.status(), 200);
    assert_request_id(&resp);
    let body: Value = resp.json().await.expect("JSON");
    assert!(body["id"].as_str().expect("id").starts_with("resp_"));
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["instructions"], "Be brief.");
    assert!(body["created_at"].as_u64().is_some());
    assert!(body["error"].is_null());
    assert!(body["incomplete_details"].is_null());
    let output = body["output"].as_array().expect("output");
    assert_eq!(output.len(), 1);
    let item = &output[0];
    assert_eq!(item["type"], "message");
    assert!(item["id"].as_str().expect("item id").starts_with("msg_"));
    assert_eq!(item["status"], "completed");
    assert_eq!(item["role"], "assistant");
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(item["content"][0]["annotations"], json!([]));
    let text = item["content"][0]["text"].as_str().expect("text");
    assert_eq!(text.split(' ').count(), 16);
    // "Tell me a story" = 15 chars -> 4 + 3; "Be brief." = 9 -> 3 + 3.
    let usage = &body["usage"];
    assert_eq!(usage["input_tokens"], 13);
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["output_tokens"], 16);
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(usage["total_tokens"], 29);

    // Array input works too.
    let body = json!({
        "model": "gpt-4o",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "abcdefgh"}]}],
        "max_output_tokens": 2
    });
    let body: Value = post(&server, "/v1/responses", &body)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(body["usage"]["input_tokens"], 5);
    assert_eq!(body["usage"]["output_tokens"], 2);
    assert_eq!(body["status"], "incomplete");
    assert_eq!(body["incomplete_details"]["reason"], "max_output_tokens");
}

#[tokio::test]
async fn responses_stream() {
    let server = start_default().await;
    let body = json!({"model": "gpt-4o", "input": "Tell me a story", "stream": true});
    let resp = client()
        .post(format!("{}/v1/responses", server.url()))
        .bearer_auth(KEY)
        .header("x-mock-tokens", "3")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.expect("body");
    assert!(!text.contains("[DONE]"));
    let events = sse_events(&text);
    let names: Vec<&str> = events
        .iter()
        .map(|(name, _)| name.as_deref().expect("named event"))
        .collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let payloads: Vec<Value> = events.iter().map(|(_, d)| parse(d)).collect();
    for (i, (payload, name)) in payloads.iter().zip(&names).enumerate() {
        assert_eq!(payload["type"], *name);
        assert_eq!(payload["sequence_number"], i as u64);
    }
    assert_eq!(payloads[0]["response"]["status"], "in_progress");
    assert!(payloads[0]["response"]["usage"].is_null());
    let deltas: String = payloads[4..7]
        .iter()
        .map(|p| p["delta"].as_str().expect("delta").to_owned())
        .collect();
    assert_eq!(deltas, "Hello from the");
    assert_eq!(payloads[7]["text"], "Hello from the");
    assert_eq!(payloads[4]["item_id"], payloads[2]["item"]["id"]);

    let done = &payloads[10]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["id"], payloads[0]["response"]["id"]);
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello from the");
    assert_eq!(done["usage"]["input_tokens"], 7);
    assert_eq!(done["usage"]["output_tokens"], 3);
    assert_eq!(done["usage"]["total_tokens"], 10);
}

#[tokio::test]
async fn embeddings() {
    let server = start(MockConfig {
        embedding_dim: 12,
        ..MockConfig::default()
    })
    .await;
    let body = json!({"model": "text-embedding-3-small", "input": ["hello world", "bye"]});
    let resp = post(&server, "/v1/embeddings", &body).await;
    assert_eq!(resp.status(), 200);
    let first: Value = resp.json().await.expect("JSON");
    assert_eq!(first["object"], "list");
    assert_eq!(first["model"], "text-embedding-3-small");
    let data = first["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        assert_eq!(item["embedding"].as_array().map(Vec::len), Some(12));
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    // "hello world" = 11 chars -> 3; "bye" -> 1.
    assert_eq!(
        first["usage"],
        json!({"prompt_tokens": 4, "total_tokens": 4})
    );

    // Deterministic.
    let again: Value = post(&server, "/v1/embeddings", &body)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(again["data"], first["data"]);

    // base64 of little-endian f32s, and `dimensions`.
    let body = json!({
        "model": "m", "input": "hello world", "encoding_format": "base64", "dimensions": 4
    });
    let b64: Value = post(&server, "/v1/embeddings", &body)
        .await
        .json()
        .await
        .expect("JSON");
    let encoded = b64["data"][0]["embedding"].as_str().expect("base64 string");
    assert_eq!(encoded.len(), 24); // 16 bytes

    // Token-array input.
    let body = json!({"model": "m", "input": [[1, 2, 3], [4, 5]]});
    let tokens: Value = post(&server, "/v1/embeddings", &body)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(tokens["usage"]["prompt_tokens"], 5);

    let resp = post(
        &server,
        "/v1/embeddings",
        &json!({"model": "m", "input": 5}),
    )
    .await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn models() {
    let server = start_default().await;
    let resp = client()
        .get(format!("{}/v1/models", server.url()))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().expect("data");
    assert_eq!(data[0]["id"], "mock-gpt");
    for model in data {
        assert_eq!(model["object"], "model");
        assert_eq!(model["owned_by"], "wharf-mock");
        assert!(model["created"].as_u64().is_some());
    }

    let one: Value = client()
        .get(format!("{}/v1/models/mock-gpt", server.url()))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(one["id"], "mock-gpt");
    let missing = client()
        .get(format!("{}/v1/models/nope", server.url()))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn auth_wrong_and_missing_key() {
    let server = start(MockConfig {
        api_key: Some(KEY.to_owned()),
        ..MockConfig::default()
    })
    .await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth("sk-wrong-key-000000")
        .json(&chat_body(false))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);
    assert_request_id(&resp);
    let err: Value = resp.json().await.expect("JSON");
    let message = err["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("Incorrect API key provided"),
        "{message}"
    );
    assert!(!message.contains("sk-wrong-key-000000"), "key is masked");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(err["error"]["param"].is_null());
    assert_eq!(err["error"]["code"], "invalid_api_key");

    let resp = client()
        .get(format!("{}/v1/models", server.url()))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);

    let resp = post(&server, "/v1/chat/completions", &chat_body(false)).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let server = start_default().await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("JSON");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(err["error"]["message"]
        .as_str()
        .expect("message")
        .contains("could not parse the JSON body"));
    assert!(err["error"]["code"].is_null());
    assert!(err["error"]["param"].is_null());

    let resp = post(&server, "/v1/chat/completions", &json!({"model": "m"})).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("JSON");
    assert_eq!(err["error"]["param"], "messages");

    let resp = post(
        &server,
        "/v1/chat/completions",
        &json!({"model": 1, "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("JSON");
    assert_eq!(err["error"]["param"], "model");

    let resp = post(&server, "/v1/nope", &json!({})).await;
    assert_eq!(resp.status(), 404);
    let err: Value = resp.json().await.expect("JSON");
    assert_eq!(err["error"]["message"], "Invalid URL (POST /v1/nope)");

    let resp = client()
        .get(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let err: Value = resp.json().await.expect("JSON");
    assert_eq!(err["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn forced_statuses() {
    let server = start_default().await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(KEY)
        .header("x-mock-status", "429")
        .json(&chat_body(true))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_request_id(&resp);
    let err: Value = resp.json().await.expect("JSON");
    assert_eq!(err["error"]["type"], "requests");
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");
    assert!(err["error"]["param"].is_null());

    let resp = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(KEY)
        .header("x-mock-status", "429")
        .header("x-mock-retry-after", "7")
        .json(&chat_body(false))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers()["retry-after"], "7");

    for (status, kind) in [(500, "server_error"), (503, "service_unavailable")] {
        let resp = client()
            .post(format!("{}/v1/responses", server.url()))
            .bearer_auth(KEY)
            .header("x-mock-status", status.to_string())
            .json(&json!({"model": "m", "input": "x"}))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), status);
        let err: Value = resp.json().await.expect("JSON");
        assert_eq!(err["error"]["type"], kind);
        assert!(err["error"]["message"].as_str().is_some());
    }
}

#[tokio::test]
async fn latency_and_stream_timing_knobs() {
    let server = start_default().await;
    let started = Instant::now();
    let resp = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(KEY)
        .header("x-mock-latency-ms", "150")
        .json(&chat_body(false))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let processing: u64 = resp.headers()["openai-processing-ms"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    assert!(processing >= 150);

    let started = Instant::now();
    let resp = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(KEY)
        .header("x-mock-ttft-ms", "300")
        .header("x-mock-itl-ms", "20")
        .header("x-mock-tokens", "3")
        .json(&chat_body(true))
        .send()
        .await
        .expect("request");
    // The head comes before the first token.
    assert!(started.elapsed() < Duration::from_millis(300));
    let mut stream = resp.bytes_stream();
    let first = stream
        .next()
        .await
        .expect("a first event")
        .expect("no error");
    let ttft = started.elapsed();
    assert!(ttft >= Duration::from_millis(300), "{ttft:?}");
    assert!(String::from_utf8_lossy(&first).contains("\"role\":\"assistant\""));
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.expect("no error"));
    }
    // 6 events in total: role, 3 tokens, finish, [DONE] -> 5 gaps.
    assert!(started.elapsed() >= Duration::from_millis(300 + 5 * 20));
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn fault_reset_is_a_client_error() {
    let server = start_default().await;
    let result = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(KEY)
        .header("x-mock-fault", "reset")
        .json(&chat_body(false))
        .send()
        .await;
    assert!(result.is_err(), "reset must fail the request");
    assert_eq!(server.request_count(), 1);

    // A raw client sees ECONNRESET or EOF without any response bytes.
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream
        .write_all(
            b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\nx-mock-fault: reset\r\n\r\n",
        )
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf).await {
        Ok(n) => assert_eq!(n, 0, "no response bytes"),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

#[tokio::test]
async fn fault_close_and_hang() {
    let server = start_default().await;
    let out = raw_exchange(
        &server,
        b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\nx-mock-fault: close\r\n\r\n",
    )
    .await;
    assert_eq!(out, "");

    let result = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client")
        .get(format!("{}/v1/models", server.url()))
        .bearer_auth(KEY)
        .header("x-mock-fault", "hang")
        .send()
        .await;
    let err = result.expect_err("hang never answers");
    assert!(err.is_timeout(), "{err}");
    // The hung connection is released once the client goes away.
    wait_until("hung connection to close", || {
        server.connections_open() == 0
    })
    .await;
}

#[tokio::test]
async fn drop_mid_stream_truncates() {
    let server = start_default().await;
    for fault in ["drop-mid-stream", "reset-mid-stream"] {
        let resp = client()
            .post(format!("{}/v1/chat/completions", server.url()))
            .bearer_auth(KEY)
            .header("x-mock-fault", fault)
            .json(&chat_body(true))
            .send()
            .await
            .expect("the head arrives");
        assert_eq!(resp.status(), 200);
        let mut stream = resp.bytes_stream();
        let mut body = Vec::new();
        let mut failed = false;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => body.extend_from_slice(&bytes),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "{fault}: the body must end with an error");
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("[DONE]"), "{fault}: {text}");
        if fault == "drop-mid-stream" {
            assert_eq!(text.matches("data: ").count(), 3, "{text}");
        }
    }

    // x-mock-drop-after picks the cut.
    let resp = client()
        .post(format!("{}/v1/responses", server.url()))
        .bearer_auth(KEY)
        .header("x-mock-fault", "drop-mid-stream")
        .header("x-mock-drop-after", "5")
        .json(&json!({"model": "m", "input": "x", "stream": true}))
        .send()
        .await
        .expect("head");
    let mut stream = resp.bytes_stream();
    let mut body = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches("event: ").count(), 5);
    assert!(!text.contains("response.completed"));
}

#[tokio::test]
async fn large_bodies_are_recorded_intact() {
    let server = start_default().await;
    let big = "x".repeat(200_000);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": big}]});
    let bytes = serde_json::to_vec(&body).expect("serialize");

    // Content-Length.
    let resp = client()
        .post(format!("{}/v1/chat/completions?trace=1", server.url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(bytes.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.expect("JSON");
    assert_eq!(answer["usage"]["prompt_tokens"], 50_003);

    // Chunked, in uneven pieces.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(7_777).map(|c| Ok(c.to_vec())).collect();
    let resp = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);

    let recorded = server.requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].path, "/v1/chat/completions?trace=1");
    assert_eq!(
        recorded[0].header("content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(recorded[0].body.as_ref(), bytes.as_slice());
    assert_eq!(recorded[1].header("transfer-encoding"), Some("chunked"));
    assert_eq!(recorded[1].body.as_ref(), bytes.as_slice());
    assert_eq!(recorded[1].json(), Some(body));

    server.clear();
    assert_eq!(server.request_count(), 0);
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn oversized_body_is_rejected() {
    let server = start_default().await;
    let out = raw_exchange(
        &server,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\ncontent-length: 67108865\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    assert!(out.contains("\"type\":\"invalid_request_error\""));
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let server = start_default().await;
    let client = client();
    for i in 0..5 {
        let resp = client
            .post(format!("{}/v1/chat/completions", server.url()))
            .bearer_auth(KEY)
            .json(&chat_body(i % 2 == 1))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        resp.bytes().await.expect("body");
    }
    assert_eq!(server.request_count(), 5);
    assert_eq!(server.connections_accepted(), 1);
}

#[tokio::test]
async fn pipelined_requests_and_connection_close() {
    let server = start_default().await;
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\n\r\n\
         POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\n\
         transfer-encoding: chunked\r\n\r\n5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n\
         GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\nconnection: close\r\n\r\n",
        &body[..5],
        body.len() - 5,
        &body[5..]
    );
    let out = raw_exchange(&server, request.as_bytes()).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{out}");
    assert!(out.contains("connection: close\r\n"));
    assert!(out.contains("\"object\":\"chat.completion\""));
    let recorded = server.requests();
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[1].body.as_ref(), body.as_bytes());
}

#[tokio::test]
async fn vanished_streaming_client_releases_its_connection() {
    let server = start_default().await;
    {
        let client = client();
        let resp = client
            .post(format!("{}/v1/chat/completions", server.url()))
            .bearer_auth(KEY)
            .header("x-mock-itl-ms", "20")
            .header("x-mock-tokens", "10000")
            .json(&chat_body(true))
            .send()
            .await
            .expect("request");
        let mut stream = resp.bytes_stream();
        stream.next().await.expect("first event").expect("no error");
    }
    wait_until("streaming connection to close", || {
        server.connections_open() == 0
    })
    .await;
}

#[tokio::test]
async fn echo_headers_lists_names() {
    let server = start_default().await;
    let body: Value = client()
        .get(format!("{}/v1/models", server.url()))
        .bearer_auth(KEY)
        .header("x-mock-echo-headers", "1")
        .header("x-custom", "secret-value")
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    let names = body["mock_echo_headers"].as_array().expect("names");
    assert!(names.contains(&json!("x-custom")));
    assert!(names.contains(&json!("authorization")));
    assert!(!body.to_string().contains("secret-value"));
}

#[tokio::test]
async fn dropping_the_server_closes_everything() {
    let server = start_default().await;
    let addr = server.addr();
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let mut hung = TcpStream::connect(addr).await.expect("connect");
    hung.write_all(
        b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\nx-mock-fault: hang\r\n\r\n",
    )
    .await
    .expect("write");
    wait_until("the hung request", || server.request_count() == 1).await;
    drop(server);
    for stream in [&mut idle, &mut hung] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
            .await
            .expect("connection closed on drop");
        assert!(read.is_err() || buf.is_empty());
    }
    // Nothing listens any more.
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener closed");
}

#[tokio::test]
async fn invalid_knobs_are_reported() {
    let server = start_default().await;
    for (name, value) in [
        ("x-mock-tokens", "lots"),
        ("x-mock-tokens", "2000000"),
        ("x-mock-fault", "explode"),
        ("x-mock-status", "99"),
    ] {
        let resp = client()
            .get(format!("{}/v1/models", server.url()))
            .bearer_auth(KEY)
            .header(name, value)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 400, "{name}: {value}");
        let err: Value = resp.json().await.expect("JSON");
        assert!(err["error"]["message"]
            .as_str()
            .expect("message")
            .contains(name));
    }
}
