//! End-to-end tests of the mock provider (OpenAI, Anthropic, Gemini and vLLM
//! routes) over real sockets.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wharf_mock::{MockConfig, MockServer};

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
        .header("x-mock-ttft-ms", "1500")
        .header("x-mock-itl-ms", "20")
        .header("x-mock-tokens", "3")
        .json(&chat_body(true))
        .send()
        .await
        .expect("request");
    // The head comes before the first token.
    assert!(started.elapsed() < Duration::from_millis(1500));
    let mut stream = resp.bytes_stream();
    let first = stream
        .next()
        .await
        .expect("a first event")
        .expect("no error");
    let ttft = started.elapsed();
    assert!(ttft >= Duration::from_millis(1500), "{ttft:?}");
    assert!(String::from_utf8_lossy(&first).contains("\"role\":\"assistant\""));
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.expect("no error"));
    }
    // 6 events in total: role, 3 tokens, finish, [DONE] -> 5 gaps.
    assert!(started.elapsed() >= Duration::from_millis(1500 + 5 * 20));
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

/// A raw POST of `body` to `path` with extra header lines (each ending in CRLF).
fn raw_post(path: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\n{extra}\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const RAW_CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const RAW_CHAT_STREAM: &str =
    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// Reads until EOF, a reset, or `quiet` without a byte; says which.
async fn read_until_quiet(stream: &mut TcpStream, quiet: Duration) -> (Vec<u8>, &'static str) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(quiet, stream.read(&mut buf)).await {
            Err(_) => return (out, "silent"),
            Ok(Ok(0)) => return (out, "eof"),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(err)) => {
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
                return (out, "reset");
            }
        }
    }
}

/// Splits a raw response into its head and body; the head's `content-length`.
fn split_response(raw: &[u8]) -> (String, Vec<u8>, Option<usize>) {
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.parse().expect("numeric content-length"));
    (head, raw[at + 4..].to_vec(), length)
}

#[tokio::test]
async fn unary_cuts_send_half_the_promised_body() {
    let server = start_default().await;
    // The whole answer, for its length.
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream
        .write_all(&raw_post(
            "/v1/chat/completions",
            "connection: close\r\n",
            RAW_CHAT,
        ))
        .await
        .expect("write");
    let (whole, how) = read_until_quiet(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(how, "eof");
    let (_, whole_body, whole_len) = split_response(&whole);
    assert_eq!(whole_len, Some(whole_body.len()));

    for (fault, expected_end) in [
        ("drop-mid-stream", "eof"),
        ("reset-mid-stream", "reset"),
        ("stall-mid-stream", "silent"),
    ] {
        let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
        let extra = format!("x-mock-fault: {fault}\r\n");
        stream
            .write_all(&raw_post("/v1/chat/completions", &extra, RAW_CHAT))
            .await
            .expect("write");
        let (raw, how) = read_until_quiet(&mut stream, Duration::from_millis(700)).await;
        // A reset may come before every byte was read; the others never lose any.
        if fault != "reset-mid-stream" || !raw.is_empty() {
            let (head, body, length) = split_response(&raw);
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{fault}: {head}");
            // The head promises the whole body; half of it comes.
            assert_eq!(length, whole_len, "{fault}: {head}");
            if fault != "reset-mid-stream" {
                assert_eq!(body.len(), whole_body.len() / 2, "{fault}");
            }
            assert!(body.len() <= whole_body.len() / 2, "{fault}");
            // The start of the same answer (the ids differ), not JSON on its own.
            let n = body.len().min(8);
            assert_eq!(body[..n], whole_body[..n], "{fault}");
            assert!(serde_json::from_slice::<Value>(&body).is_err(), "{fault}");
        }
        assert_eq!(how, expected_end, "{fault}");
        if fault == "stall-mid-stream" {
            // The stalled connection stays open until the client leaves.
            assert!(server.connections_open() >= 1);
            drop(stream);
        }
    }
    wait_until("every connection to close", || {
        server.connections_open() == 0
    })
    .await;
}

#[tokio::test]
async fn stall_mid_stream_goes_silent_without_ending_the_body() {
    let server = start_default().await;
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream
        .write_all(&raw_post(
            "/v1/chat/completions",
            "x-mock-fault: stall-mid-stream\r\nx-mock-drop-after: 2\r\n",
            RAW_CHAT_STREAM,
        ))
        .await
        .expect("write");
    let (raw, how) = read_until_quiet(&mut stream, Duration::from_millis(700)).await;
    assert_eq!(how, "silent");
    let (head, body, _) = split_response(&raw);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(body.matches("data: ").count(), 2, "{body}");
    assert!(!body.contains("[DONE]"), "{body}");
    assert!(!body.ends_with("0\r\n\r\n"), "no terminating chunk: {body}");
    assert_eq!(server.connections_open(), 1);
    drop(stream);
    wait_until("the stalled connection to close", || {
        server.connections_open() == 0
    })
    .await;
}

#[tokio::test]
async fn clean_early_ends_keep_the_framing_and_the_connection() {
    let server = start_default().await;
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    for fault in ["end-early", "error-event"] {
        let extra = format!("x-mock-fault: {fault}\r\nx-mock-drop-after: 2\r\n");
        stream
            .write_all(&raw_post("/v1/chat/completions", &extra, RAW_CHAT_STREAM))
            .await
            .expect("write");
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        while !raw.ends_with(b"\r\n0\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("the body ends")
                .expect("read");
            assert!(n > 0, "{fault}: the connection stays open");
            raw.extend_from_slice(&buf[..n]);
        }
        let (head, body, _) = split_response(&raw);
        assert!(head.contains("connection: keep-alive"), "{head}");
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains("[DONE]"), "{fault}: {body}");
        let expected = if fault == "end-early" { 2 } else { 3 };
        assert_eq!(body.matches("data: ").count(), expected, "{fault}: {body}");
        if fault == "error-event" {
            assert!(body.contains("server_error"), "{body}");
        }
    }
    assert_eq!(server.request_count(), 2);
    assert_eq!(server.connections_accepted(), 1);
}

#[tokio::test]
async fn a_fault_after_an_answer_on_the_same_connection_leaves_the_answer_whole() {
    let server = start_default().await;
    // Pipelined: an answer, then a request that is cut mid-stream and one
    // that is closed without an answer.
    let mut request = raw_post("/v1/chat/completions", "", RAW_CHAT);
    request.extend(raw_post(
        "/v1/chat/completions",
        "x-mock-fault: drop-mid-stream\r\n",
        RAW_CHAT_STREAM,
    ));
    let out = raw_exchange(&server, &request).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{out}");
    let (_, rest, length) = split_response(out.as_bytes());
    let length = length.expect("the first answer has a length");
    let first: Value = serde_json::from_slice(&rest[..length]).expect("the first answer is whole");
    assert_eq!(first["object"], "chat.completion");
    let second = String::from_utf8_lossy(&rest[length..]);
    assert_eq!(second.matches("data: ").count(), 3, "{second}");
    assert!(!second.ends_with("0\r\n\r\n"), "{second}");

    let mut request = raw_post("/v1/chat/completions", "", RAW_CHAT);
    request.extend(raw_post(
        "/v1/chat/completions",
        "x-mock-fault: close\r\n",
        RAW_CHAT,
    ));
    let out = raw_exchange(&server, &request).await;
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    let (_, rest, length) = split_response(out.as_bytes());
    assert_eq!(Some(rest.len()), length, "{out}");
    assert_eq!(server.request_count(), 4);
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

// ---------------------------------------------------------------------------
// Anthropic
// ---------------------------------------------------------------------------

const ANTHROPIC_VERSION: &str = "2023-06-01";

fn anthropic(server: &MockServer, path: &str) -> reqwest::RequestBuilder {
    client()
        .post(format!("{}{}", server.url(), path))
        .header("x-api-key", KEY)
        .header("anthropic-version", ANTHROPIC_VERSION)
}

fn messages_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": "You are terse.",
        "messages": [
            {"role": "user", "content": "Say hello"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]},
            {"role": "user", "content": [{"type": "text", "text": "Again, to the gateway"}]}
        ],
        "stream": stream
    })
}

fn weather_tool_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "tools": [
            {
                "name": "get_time",
                "description": "Current time in a timezone",
                "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}}
            },
            {
                "name": "get_weather",
                "description": "Current weather for a location",
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "location": {"type": "string"},
                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                        "days": {"type": "integer"}
                    },
                    "required": ["location", "unit"]
                }
            }
        ],
        "messages": [{"role": "user", "content": "What's the weather like in Paris?"}],
        "stream": stream
    })
}

fn assert_anthropic_request_id(resp: &reqwest::Response) {
    let id = resp
        .headers()
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .expect("request-id header");
    assert!(id.starts_with("req_"), "{id}");
    assert!(id.len() > 20);
    assert!(!resp.headers().contains_key("openai-processing-ms"));
    assert!(!resp.headers().contains_key("x-request-id"));
}

/// Checks an Anthropic error envelope and returns the error type.
async fn anthropic_error(resp: reqwest::Response, status: u16) -> String {
    assert_eq!(resp.status().as_u16(), status);
    assert_anthropic_request_id(&resp);
    let body: Value = resp.json().await.expect("JSON error");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{body}");
    assert_eq!(
        body["error"].as_object().map(|o| o.len()),
        Some(2),
        "{body}"
    );
    assert!(body["error"]["message"].as_str().is_some(), "{body}");
    body["error"]["type"]
        .as_str()
        .expect("error type")
        .to_owned()
}

#[tokio::test]
async fn anthropic_unary_shape_and_usage() {
    let server = start_default().await;
    let resp = anthropic(&server, "/v1/messages")
        .json(&messages_body(false))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_anthropic_request_id(&resp);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.expect("JSON");
    let id = body["id"].as_str().expect("id");
    assert!(id.starts_with("msg_") && id.len() > 20, "{id}");
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-sonnet-4-5");
    let content = body["content"].as_array().expect("content");
    assert_eq!(content.len(), 1);
    assert_eq!(content[0]["type"], "text");
    let text = content[0]["text"].as_str().expect("text");
    assert!(text.starts_with("Hello from the mock provider."));
    assert_eq!(text.split(' ').count(), 16);
    assert_eq!(body["stop_reason"], "end_turn");
    assert!(body["stop_sequence"].is_null());
    assert!(body.get("stop_sequence").is_some());
    // "Say hello" 9 chars -> 3 + 3; "Hi!" -> 1 + 3; "Again, to the gateway" 21 -> 6 + 3;
    // system "You are terse." 14 -> 4.
    let usage = &body["usage"];
    assert_eq!(usage["input_tokens"], 23);
    assert_eq!(usage["cache_creation_input_tokens"], 0);
    assert_eq!(usage["cache_read_input_tokens"], 0);
    assert_eq!(usage["output_tokens"], 16);

    // count_tokens agrees with the usage.
    let mut count_body = messages_body(false);
    if let Some(obj) = count_body.as_object_mut() {
        obj.remove("max_tokens");
        obj.remove("stream");
    }
    let resp = anthropic(&server, "/v1/messages/count_tokens")
        .json(&count_body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let count: Value = resp.json().await.expect("JSON");
    assert_eq!(count, json!({"input_tokens": 23}));

    let recorded = server.requests();
    assert_eq!(recorded[0].path, "/v1/messages");
    assert_eq!(recorded[0].header("x-api-key"), Some(KEY));
    assert_eq!(recorded[0].json(), Some(messages_body(false)));
}

#[tokio::test]
async fn anthropic_caps_and_stop_sequences() {
    let server = start_default().await;
    let mut body = messages_body(false);
    body["max_tokens"] = json!(3);
    let answer: Value = anthropic(&server, "/v1/messages")
        .json(&body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["stop_reason"], "max_tokens");
    assert_eq!(answer["content"][0]["text"], "Hello from the");
    assert_eq!(answer["usage"]["output_tokens"], 3);

    let mut body = messages_body(false);
    body["stop_sequences"] = json!(["nothing here", "mock"]);
    let answer: Value = anthropic(&server, "/v1/messages")
        .json(&body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["stop_reason"], "stop_sequence");
    assert_eq!(answer["stop_sequence"], "mock");
    assert_eq!(answer["content"][0]["text"], "Hello from the ");
    assert_eq!(answer["usage"]["output_tokens"], 3);

    let answer: Value = anthropic(&server, "/v1/messages")
        .header("x-mock-tokens", "2")
        .json(&messages_body(false))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["content"][0]["text"], "Hello from");
    assert_eq!(answer["stop_reason"], "end_turn");
}

/// The names and parsed payloads of an Anthropic stream, checking that
/// every payload's `type` matches its event name.
fn anthropic_events(text: &str) -> (Vec<String>, Vec<Value>) {
    let events = sse_events(text);
    let names: Vec<String> = events
        .iter()
        .map(|(name, _)| name.clone().expect("named event"))
        .collect();
    let payloads: Vec<Value> = events.iter().map(|(_, data)| parse(data)).collect();
    for (name, payload) in names.iter().zip(&payloads) {
        assert_eq!(payload["type"], name.as_str(), "{payload}");
    }
    (names, payloads)
}

#[tokio::test]
async fn anthropic_stream_event_order() {
    let server = start_default().await;
    let resp = anthropic(&server, "/v1/messages")
        .header("x-mock-tokens", "4")
        .json(&messages_body(true))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_anthropic_request_id(&resp);
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let text = resp.text().await.expect("body");
    let (names, payloads) = anthropic_events(&text);
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let message = &payloads[0]["message"];
    assert!(message["id"].as_str().expect("id").starts_with("msg_"));
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["model"], "claude-sonnet-4-5");
    assert_eq!(message["content"], json!([]));
    assert!(message["stop_reason"].is_null());
    assert_eq!(message["usage"]["input_tokens"], 23);
    assert_eq!(message["usage"]["cache_creation_input_tokens"], 0);
    assert_eq!(message["usage"]["cache_read_input_tokens"], 0);
    assert_eq!(message["usage"]["output_tokens"], 1);
    assert_eq!(
        payloads[1],
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    let deltas: String = payloads[3..7]
        .iter()
        .map(|p| {
            assert_eq!(p["index"], 0);
            assert_eq!(p["delta"]["type"], "text_delta");
            p["delta"]["text"].as_str().expect("delta").to_owned()
        })
        .collect();
    assert_eq!(deltas, "Hello from the mock");
    assert_eq!(
        payloads[7],
        json!({"type": "content_block_stop", "index": 0})
    );
    assert_eq!(payloads[8]["delta"]["stop_reason"], "end_turn");
    assert!(payloads[8]["delta"]["stop_sequence"].is_null());
    assert_eq!(payloads[8]["usage"]["output_tokens"], 4);
    assert_eq!(payloads[9], json!({"type": "message_stop"}));
    // Framing is exactly `event: X\ndata: {json}\n\n`.
    assert!(text.starts_with("event: message_start\ndata: {\"type\":\"message_start\""));
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
}

#[tokio::test]
async fn anthropic_tool_use() {
    let server = start_default().await;
    let body: Value = anthropic(&server, "/v1/messages")
        .json(&weather_tool_body(false))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(body["stop_reason"], "tool_use");
    let block = &body["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().expect("id").starts_with("toolu_"));
    assert_eq!(block["name"], "get_weather");
    assert_eq!(
        block["input"],
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );
    let output_tokens = body["usage"]["output_tokens"].as_u64().expect("tokens");
    assert!(output_tokens > 0);

    // Streamed: the input arrives as input_json_delta pieces.
    let text = anthropic(&server, "/v1/messages")
        .json(&weather_tool_body(true))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    let (names, payloads) = anthropic_events(&text);
    assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let start = &payloads[1]["content_block"];
    assert_eq!(start["type"], "tool_use");
    assert_eq!(start["name"], "get_weather");
    assert_eq!(start["input"], json!({}));
    let deltas = &payloads[3..payloads.len() - 3];
    assert_eq!(
        deltas[0]["delta"],
        json!({"type": "input_json_delta", "partial_json": ""})
    );
    let json_text: String = deltas
        .iter()
        .map(|d| {
            assert_eq!(d["type"], "content_block_delta");
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"]
                .as_str()
                .expect("partial_json")
                .to_owned()
        })
        .collect();
    assert_eq!(
        parse(&json_text),
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );
    assert!(deltas.len() > 3, "the input comes in several pieces");
    let message_delta = &payloads[payloads.len() - 2];
    assert_eq!(message_delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(message_delta["usage"]["output_tokens"], output_tokens);

    // x-mock-tool-call picks the tool without any mention of the weather.
    let mut body = weather_tool_body(false);
    body["messages"] = json!([{"role": "user", "content": "What time is it?"}]);
    let answer: Value = anthropic(&server, "/v1/messages")
        .header("x-mock-tool-call", "get_time")
        .json(&body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["content"][0]["name"], "get_time");
    assert_eq!(answer["content"][0]["input"], json!({"tz": "mock"}));
    // ... and without it the answer is text.
    let answer: Value = anthropic(&server, "/v1/messages")
        .json(&body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["content"][0]["type"], "text");
    assert_eq!(answer["stop_reason"], "end_turn");

    // tool_choice none turns the call off; a tool result gets a text answer.
    let mut body = weather_tool_body(false);
    body["tool_choice"] = json!({"type": "none"});
    let answer: Value = anthropic(&server, "/v1/messages")
        .json(&body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["content"][0]["type"], "text");
    let mut body = weather_tool_body(false);
    body["messages"] = json!([
        {"role": "user", "content": "What's the weather like in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21C"}]}
    ]);
    let answer: Value = anthropic(&server, "/v1/messages")
        .json(&body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["content"][0]["type"], "text");
}

#[tokio::test]
async fn anthropic_auth_and_validation_errors() {
    let server = start(MockConfig {
        api_key: Some(KEY.to_owned()),
        ..MockConfig::default()
    })
    .await;
    let url = format!("{}/v1/messages", server.url());
    let resp = client()
        .post(&url)
        .header("anthropic-version", ANTHROPIC_VERSION)
        .json(&messages_body(false))
        .send()
        .await
        .expect("request");
    assert_eq!(anthropic_error(resp, 401).await, "authentication_error");
    let resp = client()
        .post(&url)
        .header("x-api-key", "sk-ant-wrong")
        .header("anthropic-version", ANTHROPIC_VERSION)
        .json(&messages_body(false))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(
        body,
        json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
    );
    // A bearer token is not what Anthropic wants.
    let resp = client()
        .post(&url)
        .bearer_auth(KEY)
        .header("anthropic-version", ANTHROPIC_VERSION)
        .json(&messages_body(false))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);

    let resp = client()
        .post(&url)
        .header("x-api-key", KEY)
        .json(&messages_body(false))
        .send()
        .await
        .expect("request");
    assert_eq!(anthropic_error(resp, 400).await, "invalid_request_error");

    let mut body = messages_body(false);
    if let Some(obj) = body.as_object_mut() {
        obj.remove("max_tokens");
    }
    let resp = anthropic(&server, "/v1/messages")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("JSON");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(err["error"]["message"]
        .as_str()
        .expect("message")
        .contains("max_tokens"));

    let mut body = messages_body(false);
    body["messages"][0]["role"] = json!("system");
    let resp = anthropic(&server, "/v1/messages")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(anthropic_error(resp, 400).await, "invalid_request_error");

    let resp = anthropic(&server, "/v1/messages")
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .expect("request");
    assert_eq!(anthropic_error(resp, 400).await, "invalid_request_error");

    let resp = anthropic(&server, "/v1/nope/messages")
        .json(&messages_body(false))
        .send()
        .await
        .expect("request");
    // Not an Anthropic path: the OpenAI family answers (and wants a bearer).
    assert_eq!(resp.status(), 401);

    let resp = client()
        .get(&url)
        .header("x-api-key", KEY)
        .header("anthropic-version", ANTHROPIC_VERSION)
        .send()
        .await
        .expect("request");
    assert_eq!(anthropic_error(resp, 405).await, "invalid_request_error");

    let resp = anthropic(&server, "/v1/messages")
        .header("x-mock-tokens", "many")
        .json(&messages_body(false))
        .send()
        .await
        .expect("request");
    assert_eq!(anthropic_error(resp, 400).await, "invalid_request_error");
}

#[tokio::test]
async fn anthropic_forced_errors() {
    let server = start_default().await;
    let resp = anthropic(&server, "/v1/messages")
        .header("x-mock-status", "429")
        .json(&messages_body(true))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp
        .headers()
        .contains_key("anthropic-ratelimit-requests-remaining"));
    assert_eq!(anthropic_error(resp, 429).await, "rate_limit_error");

    let resp = anthropic(&server, "/v1/messages")
        .header("x-mock-status", "429")
        .header("x-mock-retry-after", "9")
        .json(&messages_body(false))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers()["retry-after"], "9");

    for (status, kind) in [
        (500, "api_error"),
        (529, "overloaded_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
    ] {
        let resp = anthropic(&server, "/v1/messages")
            .header("x-mock-status", status.to_string())
            .json(&messages_body(false))
            .send()
            .await
            .expect("request");
        assert_eq!(anthropic_error(resp, status).await, kind);
    }
}

#[tokio::test]
async fn anthropic_error_event_mid_stream() {
    let server = start_default().await;
    let resp = anthropic(&server, "/v1/messages")
        .header("x-mock-fault", "error-event")
        .header("x-mock-drop-after", "4")
        .json(&messages_body(true))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    // The stream ends cleanly after the error event.
    let text = resp.text().await.expect("a complete body");
    let (names, payloads) = anthropic_events(&text);
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(
        payloads[4],
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    // The connection is still usable.
    assert_eq!(server.connections_accepted(), 1);

    // Unary: the whole answer becomes an overloaded error.
    let resp = anthropic(&server, "/v1/messages")
        .header("x-mock-fault", "error-event")
        .json(&messages_body(false))
        .send()
        .await
        .expect("request");
    assert_eq!(anthropic_error(resp, 529).await, "overloaded_error");

    // The other faults work the same as on OpenAI routes.
    let resp = anthropic(&server, "/v1/messages")
        .header("x-mock-fault", "drop-mid-stream")
        .json(&messages_body(true))
        .send()
        .await
        .expect("head");
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
    assert!(failed);
    assert_eq!(String::from_utf8_lossy(&body).matches("event: ").count(), 3);
}

#[tokio::test]
async fn anthropic_stream_timing_knobs() {
    let server = start_default().await;
    let started = Instant::now();
    let resp = anthropic(&server, "/v1/messages")
        .header("x-mock-ttft-ms", "1500")
        .header("x-mock-itl-ms", "10")
        .header("x-mock-tokens", "2")
        .json(&messages_body(true))
        .send()
        .await
        .expect("request");
    assert!(started.elapsed() < Duration::from_millis(1500));
    let text = resp.text().await.expect("body");
    // 8 events -> 7 gaps after the first.
    assert!(started.elapsed() >= Duration::from_millis(1500 + 7 * 10));
    assert_eq!(text.matches("event: ").count(), 8);

    let started = Instant::now();
    let resp = anthropic(&server, "/v1/messages")
        .header("x-mock-latency-ms", "120")
        .json(&messages_body(false))
        .send()
        .await
        .expect("request");
    assert!(started.elapsed() >= Duration::from_millis(120));
    assert_eq!(resp.status(), 200);
}

// ---------------------------------------------------------------------------
// Gemini
// ---------------------------------------------------------------------------

const GEMINI_MODEL: &str = "gemini-2.0-flash";

fn gemini(server: &MockServer, method_and_query: &str) -> reqwest::RequestBuilder {
    client()
        .post(format!(
            "{}/v1beta/models/{GEMINI_MODEL}:{method_and_query}",
            server.url()
        ))
        .header("x-goog-api-key", KEY)
}

fn gemini_body() -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Say hello"}]},
            {"role": "model", "parts": [{"text": "Hi!"}]},
            {"role": "user", "parts": [{"text": "Again, to the gateway"}]}
        ],
        "generationConfig": {"temperature": 0.2, "topP": 0.9, "topK": 40}
    })
}

fn gemini_weather_body() -> Value {
    json!({
        "contents": [{"role": "user", "parts": [{"text": "What is the weather in Paris?"}]}],
        "tools": [{"functionDeclarations": [{
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {
                "type": "OBJECT",
                "properties": {"city": {"type": "STRING"}, "days": {"type": "INTEGER"}},
                "required": ["city"]
            }
        }]}]
    })
}

/// Checks a Google error envelope and returns its status.
async fn google_error(resp: reqwest::Response, code: u16) -> String {
    assert_eq!(resp.status().as_u16(), code);
    let body: Value = resp.json().await.expect("JSON error");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(error["message"].as_str().is_some(), "{body}");
    error["status"].as_str().expect("status").to_owned()
}

fn assert_gemini_chunk(chunk: &Value, response_id: &Value) {
    assert_eq!(chunk["modelVersion"], GEMINI_MODEL);
    assert_eq!(&chunk["responseId"], response_id);
    let candidates = chunk["candidates"].as_array().expect("candidates");
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0]["content"]["role"], "model");
    assert_eq!(candidates[0]["index"], 0);
}

#[tokio::test]
async fn gemini_unary_shape_and_usage() {
    let server = start_default().await;
    let resp = gemini(&server, "generateContent")
        .json(&gemini_body())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json; charset=UTF-8"
    );
    assert!(resp.headers().contains_key("server-timing"));
    assert!(!resp.headers().contains_key("openai-processing-ms"));
    let body: Value = resp.json().await.expect("JSON");
    let response_id = body["responseId"].clone();
    assert!(response_id.as_str().is_some_and(|id| !id.is_empty()));
    assert_gemini_chunk(&body, &response_id);
    let candidate = &body["candidates"][0];
    assert_eq!(candidate["finishReason"], "STOP");
    let parts = candidate["content"]["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 1);
    let text = parts[0]["text"].as_str().expect("text");
    assert!(text.starts_with("Hello from the mock provider."));
    assert_eq!(text.split(' ').count(), 16);
    // "Say hello" 9 -> 3; "Hi!" -> 1; "Again, to the gateway" 21 -> 6; system 14 -> 4.
    let usage = &body["usageMetadata"];
    assert_eq!(usage["promptTokenCount"], 14);
    assert_eq!(usage["candidatesTokenCount"], 16);
    assert_eq!(usage["totalTokenCount"], 30);
    assert_eq!(usage["cachedContentTokenCount"], 0);
    assert_eq!(usage["thoughtsTokenCount"], 0);

    // countTokens agrees; the key may also come as ?key=.
    let resp = client()
        .post(format!(
            "{}/v1beta/models/{GEMINI_MODEL}:countTokens?key={KEY}",
            server.url()
        ))
        .json(&gemini_body())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let count: Value = resp.json().await.expect("JSON");
    assert_eq!(count["totalTokens"], 14);

    // maxOutputTokens caps the answer.
    let mut body = gemini_body();
    body["generationConfig"]["maxOutputTokens"] = json!(2);
    let answer: Value = gemini(&server, "generateContent")
        .json(&body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(
        answer["candidates"][0]["content"]["parts"][0]["text"],
        "Hello from"
    );
    assert_eq!(answer["usageMetadata"]["candidatesTokenCount"], 2);

    // stopSequences cut it.
    let mut body = gemini_body();
    body["generationConfig"]["stopSequences"] = json!(["provider"]);
    let answer: Value = gemini(&server, "generateContent")
        .json(&body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        answer["candidates"][0]["content"]["parts"][0]["text"],
        "Hello from the mock "
    );
}

/// Splits a Gemini SSE body on its CRLF framing and parses every chunk.
fn gemini_sse_chunks(text: &str) -> Vec<Value> {
    assert!(text.ends_with("\r\n\r\n"), "ends with CRLF CRLF");
    let events: Vec<&str> = text.split("\r\n\r\n").filter(|e| !e.is_empty()).collect();
    for event in &events {
        assert!(!event.contains('\n'), "one line per event: {event:?}");
    }
    events
        .iter()
        .map(|event| parse(event.strip_prefix("data: ").expect("data: prefix")))
        .collect()
}

#[tokio::test]
async fn gemini_sse_stream_with_crlf_framing() {
    let server = start_default().await;
    let resp = gemini(&server, "streamGenerateContent?alt=sse")
        .header("x-mock-tokens", "5")
        .json(&gemini_body())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.expect("body");
    // Every separator is CRLF CRLF; there are no bare LFs at all.
    assert_eq!(text.matches("\r\n\r\n").count(), 5);
    assert_eq!(text.matches('\n').count(), 10);
    let chunks = gemini_sse_chunks(&text);
    assert_eq!(chunks.len(), 5);
    let response_id = chunks[0]["responseId"].clone();
    let mut streamed = String::new();
    for (i, chunk) in chunks.iter().enumerate() {
        assert_gemini_chunk(chunk, &response_id);
        let candidate = &chunk["candidates"][0];
        streamed.push_str(
            candidate["content"]["parts"][0]["text"]
                .as_str()
                .expect("text"),
        );
        let usage = &chunk["usageMetadata"];
        assert_eq!(usage["promptTokenCount"], 14);
        assert_eq!(usage["candidatesTokenCount"], i + 1);
        assert_eq!(usage["totalTokenCount"], 14 + i + 1);
        if i + 1 < chunks.len() {
            assert!(candidate.get("finishReason").is_none(), "{chunk}");
        } else {
            assert_eq!(candidate["finishReason"], "STOP");
        }
    }
    assert_eq!(streamed, "Hello from the mock provider.");
}

#[tokio::test]
async fn gemini_stream_without_alt_sse_is_a_json_array() {
    let server = start_default().await;
    let resp = gemini(&server, "streamGenerateContent")
        .header("x-mock-tokens", "3")
        .json(&gemini_body())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json; charset=UTF-8"
    );
    let chunks: Vec<Value> = resp.json().await.expect("a JSON array");
    assert_eq!(chunks.len(), 3);
    let response_id = chunks[0]["responseId"].clone();
    for chunk in &chunks {
        assert_gemini_chunk(chunk, &response_id);
    }
    assert_eq!(chunks[2]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(chunks[2]["usageMetadata"]["candidatesTokenCount"], 3);
}

#[tokio::test]
async fn gemini_function_calls_and_json_mode() {
    let server = start_default().await;
    let body: Value = gemini(&server, "generateContent")
        .json(&gemini_weather_body())
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    let candidate = &body["candidates"][0];
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(
        candidate["content"]["parts"][0],
        json!({"functionCall": {"name": "get_weather", "args": {"city": "San Francisco, CA"}}})
    );
    assert!(body["usageMetadata"]["candidatesTokenCount"].as_u64() > Some(0));

    // Streamed: one chunk carrying the whole call.
    let text = gemini(&server, "streamGenerateContent?alt=sse")
        .json(&gemini_weather_body())
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    let chunks = gemini_sse_chunks(&text);
    assert_eq!(chunks.len(), 1);
    assert_eq!(
        chunks[0]["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
        "get_weather"
    );

    // x-mock-tool-call forces a call; mode NONE forbids it.
    let mut body = gemini_weather_body();
    body["contents"] = json!([{"parts": [{"text": "hello"}]}]);
    let answer: Value = gemini(&server, "generateContent")
        .header("x-mock-tool-call", "get_weather")
        .json(&body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert!(answer["candidates"][0]["content"]["parts"][0]
        .get("functionCall")
        .is_some());
    let mut body = gemini_weather_body();
    body["toolConfig"] = json!({"functionCallingConfig": {"mode": "NONE"}});
    let answer: Value = gemini(&server, "generateContent")
        .json(&body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert!(answer["candidates"][0]["content"]["parts"][0]["text"].is_string());

    // responseMimeType application/json with a schema.
    let body = json!({
        "contents": [{"parts": [{"text": "Give me JSON"}]}],
        "generationConfig": {
            "responseMimeType": "application/json",
            "responseSchema": {
                "type": "OBJECT",
                "properties": {"answer": {"type": "STRING"}, "count": {"type": "INTEGER"}}
            }
        }
    });
    let answer: Value = gemini(&server, "generateContent")
        .json(&body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    let text = answer["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .expect("text");
    assert_eq!(parse(text), json!({"answer": "mock", "count": 1}));
}

#[tokio::test]
async fn gemini_auth_errors() {
    let server = start(MockConfig {
        api_key: Some(KEY.to_owned()),
        ..MockConfig::default()
    })
    .await;
    let url = format!(
        "{}/v1beta/models/{GEMINI_MODEL}:generateContent",
        server.url()
    );
    let resp = client()
        .post(&url)
        .json(&gemini_body())
        .send()
        .await
        .expect("request");
    assert_eq!(
        resp.headers()["content-type"],
        "application/json; charset=UTF-8"
    );
    assert_eq!(google_error(resp, 403).await, "PERMISSION_DENIED");
    let resp = client()
        .post(&url)
        .header("x-goog-api-key", "AIza-wrong")
        .json(&gemini_body())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(body["error"]["details"][0]["reason"], "API_KEY_INVALID");
    let resp = client()
        .post(format!("{url}?key=AIza-wrong"))
        .json(&gemini_body())
        .send()
        .await
        .expect("request");
    assert_eq!(google_error(resp, 400).await, "INVALID_ARGUMENT");
    let resp = client()
        .post(format!("{url}?alt=json&key={KEY}"))
        .json(&gemini_body())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);

    // Request validation in Google's shape.
    let resp = gemini(&server, "generateContent")
        .json(&json!({"contents": []}))
        .send()
        .await
        .expect("request");
    assert_eq!(google_error(resp, 400).await, "INVALID_ARGUMENT");
    let resp = gemini(&server, "fooContent")
        .json(&gemini_body())
        .send()
        .await
        .expect("request");
    assert_eq!(google_error(resp, 404).await, "NOT_FOUND");
}

#[tokio::test]
async fn gemini_forced_errors() {
    let server = start_default().await;
    for (code, status) in [
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
    ] {
        let resp = gemini(&server, "streamGenerateContent?alt=sse")
            .header("x-mock-status", code.to_string())
            .json(&gemini_body())
            .send()
            .await
            .expect("request");
        assert_eq!(google_error(resp, code).await, status);
    }
    let resp = gemini(&server, "generateContent")
        .header("x-mock-status", "429")
        .header("x-mock-retry-after", "7")
        .json(&gemini_body())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers()["retry-after"], "7");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["details"][0]["retryDelay"], "7s");

    // A mid-stream error keeps the CRLF framing.
    let text = gemini(&server, "streamGenerateContent?alt=sse")
        .header("x-mock-fault", "error-event")
        .header("x-mock-drop-after", "2")
        .json(&gemini_body())
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    let chunks = gemini_sse_chunks(&text);
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[2]["error"]["status"], "UNAVAILABLE");
}

#[tokio::test]
async fn gemini_models_and_embeddings() {
    let server = start(MockConfig {
        embedding_dim: 6,
        ..MockConfig::default()
    })
    .await;
    let resp = client()
        .get(format!("{}/v1beta/models", server.url()))
        .header("x-goog-api-key", KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    let models = body["models"].as_array().expect("models");
    assert!(models
        .iter()
        .any(|m| m["name"] == format!("models/{GEMINI_MODEL}")));

    let resp = client()
        .post(format!(
            "{}/v1beta/models/text-embedding-004:embedContent",
            server.url()
        ))
        .header("x-goog-api-key", KEY)
        .json(&json!({"content": {"parts": [{"text": "hello"}]}}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(
        body["embedding"]["values"].as_array().map(Vec::len),
        Some(6)
    );

    // OpenAI fine-tuned model ids contain colons: GET stays with OpenAI.
    let resp = client()
        .get(format!(
            "{}/v1/models/ft:gpt-4o-mini:acme::abc123",
            server.url()
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 404);
    let err: Value = resp.json().await.expect("JSON");
    assert_eq!(err["error"]["code"], "model_not_found");

    // The v1 path works too.
    let resp = client()
        .post(format!(
            "{}/v1/models/{GEMINI_MODEL}:generateContent",
            server.url()
        ))
        .header("x-goog-api-key", KEY)
        .json(&gemini_body())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
}

// ---------------------------------------------------------------------------
// vLLM extras and OpenAI uploads
// ---------------------------------------------------------------------------

#[tokio::test]
async fn legacy_completions() {
    let server = start_default().await;
    let body = json!({"model": "mock-gpt", "prompt": ["abcdefgh", "xyz"], "max_tokens": 4});
    let resp = post(&server, "/v1/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_request_id(&resp);
    let answer: Value = resp.json().await.expect("JSON");
    assert!(answer["id"].as_str().expect("id").starts_with("cmpl-"));
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["model"], "mock-gpt");
    let choices = answer["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 2);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["text"], "Hello from the mock");
        assert!(choice["logprobs"].is_null());
        assert_eq!(choice["finish_reason"], "length");
    }
    // "abcdefgh" -> 2, "xyz" -> 1.
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11})
    );

    let body = json!({"model": "mock-gpt", "prompt": "abcd", "stop": ["mock"]});
    let answer: Value = post(&server, "/v1/completions", &body)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["choices"][0]["text"], "Hello from the ");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["choices"][0]["stop_reason"], "mock");

    // Streaming with usage.
    let body = json!({
        "model": "mock-gpt", "prompt": "abcd", "stream": true,
        "stream_options": {"include_usage": true}
    });
    let resp = client()
        .post(format!("{}/v1/completions", server.url()))
        .bearer_auth(KEY)
        .header("x-mock-tokens", "3")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.expect("body");
    let data = sse_data(&text);
    // 3 tokens + finish + usage + [DONE]
    assert_eq!(data.len(), 6);
    assert_eq!(data[5], "[DONE]");
    let chunks: Vec<Value> = data[..5].iter().map(|d| parse(d)).collect();
    let streamed: String = chunks[..3]
        .iter()
        .map(|c| {
            assert_eq!(c["object"], "text_completion");
            assert!(c["usage"].is_null() && c.get("usage").is_some());
            assert!(c["choices"][0]["finish_reason"].is_null());
            c["choices"][0]["text"].as_str().expect("text").to_owned()
        })
        .collect();
    assert_eq!(streamed, "Hello from the");
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(
        chunks[4]["usage"],
        json!({"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4})
    );

    // Without include_usage there is no usage field at all.
    let body = json!({"model": "m", "prompt": "abcd", "stream": true});
    let text = post(&server, "/v1/completions", &body)
        .await
        .text()
        .await
        .expect("body");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(data[..data.len() - 1]
        .iter()
        .all(|d| parse(d).get("usage").is_none()));

    let resp = post(&server, "/v1/completions", &json!({"model": "m"})).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("JSON");
    assert_eq!(err["error"]["param"], "prompt");
}

#[tokio::test]
async fn vllm_tokenize_and_detokenize() {
    let server = start_default().await;
    // vLLM serves these at the root and does not check the key there.
    let resp = client()
        .post(format!("{}/tokenize", server.url()))
        .json(&json!({"model": "m", "prompt": "Hello, wörld! 👋", "return_token_strs": true}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    let tokens = body["tokens"].as_array().expect("tokens").clone();
    assert_eq!(body["count"], tokens.len());
    assert!(body["max_model_len"].as_u64() > Some(0));
    let strs: String = body["token_strs"]
        .as_array()
        .expect("token_strs")
        .iter()
        .map(|s| s.as_str().expect("str").to_owned())
        .collect();
    assert_eq!(strs, "Hello, wörld! 👋");

    let resp = client()
        .post(format!("{}/detokenize", server.url()))
        .json(&json!({"model": "m", "tokens": tokens}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body, json!({"prompt": "Hello, wörld! 👋"}));

    // Token counts match the prompt_tokens of /v1/completions for ASCII.
    let body: Value = client()
        .post(format!("{}/tokenize", server.url()))
        .json(&json!({"prompt": "abcdefghij"}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(body["count"], 3);
    assert!(body["token_strs"].is_null());

    // Chat form.
    let body: Value = client()
        .post(format!("{}/tokenize", server.url()))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert!(body["count"].as_u64() > Some(1));

    // /v1 paths still need the key.
    let resp = client()
        .post(format!("{}/v1/completions", server.url()))
        .json(&json!({"model": "m", "prompt": "x"}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn vllm_pooling_classify_score_rerank_and_health() {
    let server = start(MockConfig {
        embedding_dim: 4,
        ..MockConfig::default()
    })
    .await;
    let url = |path: &str| format!("{}{path}", server.url());
    let resp = client().get(url("/health")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "0");
    assert!(resp.bytes().await.expect("body").is_empty());
    let resp = client()
        .get(url("/health"))
        .header("x-mock-status", "503")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 503);

    let body: Value = client()
        .post(url("/pooling"))
        .json(&json!({"model": "m", "input": ["abcd", "efghijkl"]}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert!(body["id"].as_str().expect("id").starts_with("pool-"));
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][1]["object"], "pooling");
    assert_eq!(body["data"][1]["data"].as_array().map(Vec::len), Some(4));
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["total_tokens"], 3);

    let body: Value = client()
        .post(url("/classify"))
        .json(&json!({"model": "m", "input": ["great", "awful"]}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    for item in data {
        assert_eq!(item["num_classes"], 2);
        let probs: Vec<f64> = item["probs"]
            .as_array()
            .expect("probs")
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(item["label"].as_str().is_some());
    }
    assert_eq!(body["usage"]["prompt_tokens"], 4);

    for path in ["/score", "/v1/score"] {
        let resp = client()
            .post(url(path))
            .bearer_auth(KEY)
            .json(&json!({
                "model": "m",
                "text_1": "capital of France",
                "text_2": ["The capital of France is Paris", "Bananas are yellow"]
            }))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{path}");
        let body: Value = resp.json().await.expect("JSON");
        let data = body["data"].as_array().expect("data");
        assert_eq!(data.len(), 2);
        assert_eq!(data[0]["object"], "score");
        let first = data[0]["score"].as_f64().expect("score");
        let second = data[1]["score"].as_f64().expect("score");
        assert!(first > second);
        assert!(body["usage"]["prompt_tokens"].as_u64() > Some(0));
    }

    for path in ["/rerank", "/v1/rerank", "/v2/rerank"] {
        let resp = client()
            .post(url(path))
            .bearer_auth(KEY)
            .json(&json!({
                "model": "reranker",
                "query": "capital of France",
                "documents": ["Bananas are yellow", "The capital of France is Paris", "Cats sleep"],
                "top_n": 2
            }))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{path}");
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(body["model"], "reranker");
        let results = body["results"].as_array().expect("results");
        assert_eq!(results.len(), 2);
        assert_eq!(results[0]["index"], 1);
        assert_eq!(
            results[0]["document"]["text"],
            "The capital of France is Paris"
        );
        assert!(results[0]["relevance_score"].as_f64() > results[1]["relevance_score"].as_f64());
        let tokens = body["usage"]["total_tokens"].as_u64().expect("tokens");
        assert!(tokens > 0);
        assert_eq!(body["usage"]["prompt_tokens"], tokens);
    }
}

const BOUNDARY: &str = "----wharf-mock-boundary-7MA4YWxkTrZu0gW";

/// A `multipart/form-data` body with text fields and files.
fn multipart(fields: &[(&str, &str)], files: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    for (name, filename, data) in files {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn post_form(server: &MockServer, path: &str, body: Vec<u8>) -> reqwest::Response {
    client()
        .post(format!("{}{}", server.url(), path))
        .bearer_auth(KEY)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn audio_transcriptions_and_translations() {
    let server = start_default().await;
    // Binary data that contains CRLFs and boundary-like bytes.
    let mut audio = b"RIFF\r\n--not-a-boundary\r\n".to_vec();
    audio.extend((0..70_000u32).map(|i| (i % 251) as u8));
    let body = multipart(
        &[("model", "whisper-1"), ("language", "en")],
        &[("file", "speech.wav", &audio)],
    );
    let resp = post_form(&server, "/v1/audio/transcriptions", body.clone()).await;
    assert_eq!(resp.status(), 200);
    assert_request_id(&resp);
    assert_eq!(
        resp.headers()["x-mock-file-sizes"],
        format!("file={}", audio.len())
    );
    let answer: Value = resp.json().await.expect("JSON");
    let text = answer["text"].as_str().expect("text");
    assert!(text.starts_with("Hello from the mock provider."));
    // 70,024 bytes at 32,000 bytes per second -> 3 s.
    assert_eq!(answer["usage"], json!({"type": "duration", "seconds": 3}));
    assert_eq!(server.last_request().map(|r| r.body.to_vec()), Some(body));

    let body = multipart(
        &[("model", "whisper-1"), ("response_format", "text")],
        &[("file", "speech.wav", b"abc")],
    );
    let resp = post_form(&server, "/v1/audio/translations", body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain"));
    assert!(resp
        .text()
        .await
        .expect("body")
        .starts_with("Hello from the mock provider."));

    let body = multipart(
        &[("model", "whisper-1"), ("response_format", "json")],
        &[("file", "speech.wav", b"abc")],
    );
    let answer: Value = post_form(&server, "/v1/audio/translations", body)
        .await
        .json()
        .await
        .expect("JSON");
    assert!(answer["text"].is_string());

    let body = multipart(&[("model", "whisper-1")], &[]);
    let resp = post_form(&server, "/v1/audio/transcriptions", body).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("JSON");
    assert_eq!(err["error"]["param"], "file");

    let body = multipart(&[], &[("file", "speech.wav", b"abc")]);
    let resp = post_form(&server, "/v1/audio/transcriptions", body).await;
    assert_eq!(resp.status(), 400);

    let resp = post(&server, "/v1/audio/transcriptions", &json!({"model": "m"})).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("JSON");
    assert!(err["error"]["message"]
        .as_str()
        .expect("message")
        .contains("multipart/form-data"));
}

#[tokio::test]
async fn images_generations_edits_and_variations() {
    let server = start_default().await;
    let body = json!({"model": "gpt-image-1", "prompt": "A lighthouse at dusk", "n": 2, "size": "1024x1024"});
    let resp = post(&server, "/v1/images/generations", &body).await;
    assert_eq!(resp.status(), 200);
    assert_request_id(&resp);
    let answer: Value = resp.json().await.expect("JSON");
    assert!(answer["created"].as_u64() > Some(1_600_000_000));
    let data = answer["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    for item in data {
        let b64 = item["b64_json"].as_str().expect("b64_json");
        assert!(b64.starts_with("iVBORw0KGgo"), "a PNG");
    }
    let usage = &answer["usage"];
    // "A lighthouse at dusk" = 20 chars -> 5.
    assert_eq!(usage["input_tokens"], 5);
    assert_eq!(usage["input_tokens_details"]["text_tokens"], 5);
    assert_eq!(usage["input_tokens_details"]["image_tokens"], 0);
    assert_eq!(usage["output_tokens"], 2 * 1056);
    assert_eq!(usage["total_tokens"], 5 + 2 * 1056);

    let body = json!({"model": "dall-e-3", "prompt": "A lighthouse", "response_format": "url"});
    let answer: Value = post(&server, "/v1/images/generations", &body)
        .await
        .json()
        .await
        .expect("JSON");
    assert!(answer["data"][0]["url"]
        .as_str()
        .expect("url")
        .starts_with("https://"));
    assert!(answer["data"][0].get("b64_json").is_none());

    let resp = post(
        &server,
        "/v1/images/generations",
        &json!({"model": "gpt-image-1"}),
    )
    .await;
    assert_eq!(resp.status(), 400);

    // Edits: multipart with image, mask and prompt.
    let image = vec![7u8; 10_000];
    let mask = vec![0u8; 1_234];
    let body = multipart(
        &[
            ("model", "gpt-image-1"),
            ("prompt", "Add a boat"),
            ("n", "1"),
        ],
        &[("image", "in.png", &image), ("mask", "mask.png", &mask)],
    );
    let resp = post_form(&server, "/v1/images/edits", body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-mock-file-sizes"],
        "image=10000, mask=1234"
    );
    let answer: Value = resp.json().await.expect("JSON");
    assert_eq!(answer["data"].as_array().map(Vec::len), Some(1));
    assert!(answer["usage"]["input_tokens_details"]["image_tokens"].as_u64() > Some(0));

    // Several images as image[].
    let body = multipart(
        &[("model", "gpt-image-1"), ("prompt", "Merge")],
        &[("image[]", "a.png", b"aaaa"), ("image[]", "b.png", b"bb")],
    );
    let resp = post_form(&server, "/v1/images/edits", body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-mock-file-sizes"], "image[]=4, image[]=2");

    // Variations need no prompt; edits and variations need model and image.
    let body = multipart(&[("model", "dall-e-2")], &[("image", "in.png", b"png")]);
    let resp = post_form(&server, "/v1/images/variations", body).await;
    assert_eq!(resp.status(), 200);
    let body = multipart(&[("prompt", "x")], &[("image", "in.png", b"png")]);
    let resp = post_form(&server, "/v1/images/edits", body).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("JSON");
    assert_eq!(err["error"]["param"], "model");
    let body = multipart(&[("model", "gpt-image-1"), ("prompt", "x")], &[]);
    let resp = post_form(&server, "/v1/images/edits", body).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("JSON");
    assert_eq!(err["error"]["param"], "image");

    // A broken multipart body is a 400.
    let resp = client()
        .post(format!("{}/v1/images/edits", server.url()))
        .bearer_auth(KEY)
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body("--xyz\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nno end")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn openai_error_event_mid_stream() {
    let server = start_default().await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(KEY)
        .header("x-mock-fault", "error-event")
        .header("x-mock-drop-after", "2")
        .json(&chat_body(true))
        .send()
        .await
        .expect("request");
    let text = resp.text().await.expect("complete body");
    let data = sse_data(&text);
    assert_eq!(data.len(), 3);
    assert_eq!(parse(&data[2])["error"]["type"], "server_error");
    assert!(!text.contains("[DONE]"));
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// Records the Anthropic and Gemini stream fixtures used by the SSE
/// property tests. Run with `cargo test --test mock_provider -- --ignored
/// record_fixtures`.
#[tokio::test]
#[ignore = "rewrites tests/fixtures"]
async fn record_fixtures() {
    let server = start_default().await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let text = anthropic(&server, "/v1/messages")
        .json(&messages_body(true))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    std::fs::write(format!("{dir}/anthropic_stream.sse"), text).expect("write fixture");
    let text = anthropic(&server, "/v1/messages")
        .json(&weather_tool_body(true))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    std::fs::write(format!("{dir}/anthropic_tool_stream.sse"), text).expect("write fixture");
    let text = gemini(&server, "streamGenerateContent?alt=sse")
        .json(&gemini_body())
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    std::fs::write(format!("{dir}/gemini_stream.sse"), text).expect("write fixture");
}

#[test]
fn recorded_fixtures_have_the_expected_shape() {
    let (names, payloads) = anthropic_events(include_str!("fixtures/anthropic_stream.sse"));
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert_eq!(
        payloads[payloads.len() - 2]["delta"]["stop_reason"],
        "end_turn"
    );

    let (names, payloads) = anthropic_events(include_str!("fixtures/anthropic_tool_stream.sse"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert_eq!(payloads[1]["content_block"]["type"], "tool_use");
    assert_eq!(
        payloads[payloads.len() - 2]["delta"]["stop_reason"],
        "tool_use"
    );

    let chunks = gemini_sse_chunks(include_str!("fixtures/gemini_stream.sse"));
    assert!(chunks.len() > 1);
    assert_eq!(
        chunks
            .last()
            .map(|c| c["candidates"][0]["finishReason"].clone()),
        Some(json!("STOP"))
    );
}
