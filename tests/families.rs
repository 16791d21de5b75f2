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
    // google.rpc.Status: the HTTP status as a number, Wharf's code in an ErrorInfo detail.
    assert_eq!(v["error"]["code"], 400, "{v}");
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(
        v["error"]["details"][0]["reason"], "provider_not_allowed",
        "{v}"
    );
    assert_eq!(v["error"]["details"][0]["domain"], "wharf", "{v}");
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

fn multipart(boundary: &str, model: &str, file: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"in.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
    b.extend_from_slice(file);
    b.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nadd a hat\r\n--{boundary}--\r\n").as_bytes());
    b
}

#[tokio::test]
async fn images_json_and_multipart_with_per_image_pricing() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let c = client();
    let r = c
        .post(gw.url("/v1/images/generations"))
        .bearer_auth(KEY_GOOD)
        .json(&json!({"model":"img","prompt":"a lighthouse","n":2,"response_format":"b64_json"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    let n = v["data"].as_array().unwrap().len() as u64;
    assert_eq!(
        mock.last_request().unwrap().json().unwrap()["model"],
        "gpt-image-up"
    );
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["tokens"]["images"], n);
    assert!(rec["cost_nanos"].as_u64().unwrap() >= n * 40_000_000);

    // multipart: the model field is rewritten, the file passes byte for byte.
    let file: Vec<u8> = (0..=255u8).cycle().take(150 * 1024).collect();
    let body = multipart("wharfB0undary", "img", &file);
    let r = c
        .post(gw.url("/v1/images/edits"))
        .bearer_auth(KEY_GOOD)
        .header(
            "content-type",
            "multipart/form-data; boundary=wharfB0undary",
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/images/edits");
    assert_eq!(
        seen.header("content-type"),
        Some("multipart/form-data; boundary=wharfB0undary")
    );
    let expect = multipart("wharfB0undary", "gpt-image-up", &file);
    assert_eq!(seen.body.len(), expect.len());
    assert!(
        seen.body == expect,
        "multipart body altered beyond the model field"
    );

    // A form without a model, and a chat model on the image route.
    let r = c
        .post(gw.url("/v1/images/variations"))
        .bearer_auth(KEY_GOOD)
        .header("content-type", "multipart/form-data; boundary=b")
        .body("--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nxx\r\n--b--\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("model"));
    let r = c
        .post(gw.url("/v1/images/generations"))
        .bearer_auth(KEY_GOOD)
        .json(&json!({"model":"chat-a","prompt":"x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn vllm_routes_pass_through_to_vllm_providers() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let c = client();
    // The models list shows only the key's vLLM models.
    let v: Value = c
        .get(gw.url("/v1/vllm/models"))
        .bearer_auth(KEY_GOOD)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["llama"]);

    let r = c
        .post(gw.url("/v1/vllm/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .header("x-mock-tokens", "3")
        .json(&chat_body("llama", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"));
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.json().unwrap()["model"], "llama-up");
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["tokens"]["output"], 3);
    assert_eq!(rec["provider_type"], "VLLM");

    // vLLM's own endpoints live at the server root.
    for (route, path, body) in [
        (
            "/v1/vllm/tokenize",
            "/tokenize",
            json!({"model":"llama","prompt":"hello world"}),
        ),
        (
            "/v1/vllm/detokenize",
            "/detokenize",
            json!({"model":"llama","tokens":[1,2,3]}),
        ),
        (
            "/v1/vllm/completions",
            "/v1/completions",
            json!({"model":"llama","prompt":"hi"}),
        ),
        (
            "/v1/vllm/embeddings",
            "/v1/embeddings",
            json!({"model":"llama","input":"hi"}),
        ),
        (
            "/v1/vllm/rerank",
            "/v1/rerank",
            json!({"model":"llama","query":"q","documents":["a","b"]}),
        ),
        (
            "/v1/vllm/score",
            "/v1/score",
            json!({"model":"llama","text_1":"a","text_2":"b"}),
        ),
        (
            "/v1/vllm/pooling",
            "/pooling",
            json!({"model":"llama","input":"hi"}),
        ),
        (
            "/v1/vllm/classify",
            "/classify",
            json!({"model":"llama","input":"hi"}),
        ),
    ] {
        let r = c
            .post(gw.url(route))
            .bearer_auth(KEY_GOOD)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "{route}: {}",
            r.text().await.unwrap_or_default()
        );
        let seen = mock.last_request().unwrap();
        assert_eq!(seen.path, path, "{route}");
        assert_eq!(seen.json().unwrap()["model"], "llama-up", "{route}");
    }
    // An OpenAI model is not a vLLM model; a vLLM model is not on the OpenAI route.
    let r = c
        .post(gw.url("/v1/vllm/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .json(&chat_body("chat-a", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn azure_deployments_and_custom_auth_header() {
    let mock = mock().await;
    let extra = format!(
        r#"
[[providers]]
name = "azure"
type = "AZURE_OPENAI"
base_url = "http://{m}"
api_key_env = "WHARF_TEST_PROVIDER_KEY"
api_version = "2024-10-21"

[[providers]]
name = "custom"
type = "CUSTOM"
base_url = "http://{m}/v1"
api_key_env = "WHARF_TEST_PROVIDER_KEY"
auth_header = "api-key"
headers = {{ "x-tenant" = "acme" }}

[[models]]
name = "az-chat"
slug = "my-gpt4o-deployment"
provider = "azure"

[[models]]
name = "custom-chat"
slug = "custom-up"
provider = "custom"

[[keys]]
id = "key_az"
hash = "{h}"
organisation_id = "org_1"
models = ["az-chat", "custom-chat"]
"#,
        m = mock.addr(),
        h = sha("wharf-test-azure")
    );
    let gw = Gw::start_with(&mock, &extra).await;
    let c = client();
    for stream in [false, true] {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("wharf-test-azure")
            .json(&chat_body("az-chat", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let _ = r.text().await.unwrap();
        let seen = mock.last_request().unwrap();
        assert_eq!(
            seen.path,
            "/openai/deployments/my-gpt4o-deployment/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(seen.header("api-key"), Some(PROVIDER_KEY));
        assert!(seen.header("authorization").is_none());
        let rec = gw.usage_of(&id).await;
        assert_eq!(rec["usage_source"], "provider");
    }
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("wharf-test-azure")
        .json(&chat_body("custom-chat", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.header("api-key"), Some(PROVIDER_KEY));
    assert_eq!(seen.header("x-tenant"), Some("acme"));
    assert!(seen.header("authorization").is_none());
}

#[tokio::test]
async fn gemini_and_vllm_provider_errors_pass_through() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let r = client()
        .post(gw.url("/v1beta/models/gem:generateContent"))
        .header("x-goog-api-key", KEY_GOOD)
        .header("x-mock-status", "503")
        .json(&gemini_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "UNAVAILABLE", "{v}");
    assert_eq!(v["error"]["code"], 503, "the provider's own body: {v}");
    let r = client()
        .post(gw.url("/v1/vllm/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .header("x-mock-status", "500")
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error", "{v}");
}
