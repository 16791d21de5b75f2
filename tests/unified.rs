//! The unified `/v1/llm/chat` through real sockets: one OpenAI-shaped request reaching OpenAI,
//! Anthropic and Gemini providers, translated both ways, unary and streaming, with tools.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

async fn unified(gw: &Gw, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/llm/chat"))
        .bearer_auth(KEY_GOOD)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn chunks(body: &str) -> Vec<Value> {
    sse_data(body)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn unary_to_every_family_gives_the_normalized_object() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    for (model, provider, path) in [
        ("chat-a", "mock", "/v1/chat/completions"),
        ("claude", "anthropic", "/v1/messages"),
        ("gem", "google", "/v1beta/models/gem-up:generateContent"),
    ] {
        let r = unified(
            &gw,
            &json!({"model": model, "messages": [
                {"role":"system","content":"Be brief."},
                {"role":"user","content":"Say hello"}],
                "max_tokens": 50, "temperature": 0.3}),
        )
        .await;
        assert_eq!(r.status(), 200, "{model}");
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["provider"], provider, "{v}");
        assert_eq!(v["model"], model);
        assert!(!v["content"].as_str().unwrap().is_empty(), "{v}");
        assert_eq!(v["stop_reason"], "stop", "{v}");
        assert!(v["input_tokens"].as_u64().unwrap() > 0);
        assert!(v["output_tokens"].as_u64().unwrap() > 0);
        assert!(v["usage"].is_object());
        let seen = mock.last_request().unwrap();
        assert_eq!(seen.path, path, "{model}");
        let rec = gw.usage_of(&id).await;
        assert_eq!(rec["usage_source"], "provider");
        assert_eq!(rec["tokens"]["output"], v["output_tokens"]);
        assert_eq!(rec["endpoint"], "/v1/llm/chat");
    }
    // The Anthropic request was translated: system on top, max_tokens, no OpenAI fields.
    let anth = mock
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/messages")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(anth["model"], "claude-x");
    assert_eq!(anth["max_tokens"], 50);
    assert!(
        anth["system"].is_string() || anth["system"].is_array(),
        "{anth}"
    );
    assert_eq!(anth["messages"][0]["role"], "user");
}

#[tokio::test]
async fn streams_are_translated_to_openai_chunks() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    for model in ["claude", "gem", "chat-a"] {
        let r = client()
            .post(gw.url("/v1/llm/chat"))
            .bearer_auth(KEY_GOOD)
            .header("x-mock-tokens", "7")
            .json(
                &json!({"model": model, "stream": true, "include_usage": true,
                "messages": [{"role":"user","content":"Say hello"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{model}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let body = r.text().await.unwrap();
        assert!(body.ends_with("data: [DONE]\n\n"), "{model}: {body}");
        let cs = chunks(&body);
        assert!(
            cs.iter().all(|c| c["object"] == "chat.completion.chunk"),
            "{body}"
        );
        assert!(!text_of(&cs).is_empty(), "{model}: {body}");
        let usage = cs
            .iter()
            .find(|c| c["usage"].is_object())
            .expect("usage chunk");
        assert_eq!(usage["usage"]["completion_tokens"], 7, "{model}");
        let rec = gw.usage_of(&id).await;
        assert_eq!(rec["tokens"]["output"], 7, "{model}");
        assert_eq!(rec["stream"], true);
        assert_eq!(rec["stream_cut"], false, "{model}");
    }
}

#[tokio::test]
async fn tool_calls_round_trip_through_anthropic() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let tools = json!([{"type":"function","function":{"name":"get_weather","description":"Weather",
        "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]);
    let r = unified(
        &gw,
        &json!({"model":"claude","tools": tools,
            "messages":[{"role":"user","content":"What is the weather in Paris?"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["stop_reason"], "tool_calls", "{v}");
    let call = &v["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args.is_object());
    let sent = mock.last_request().unwrap().json().unwrap();
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    assert!(sent["tools"][0]["input_schema"].is_object());

    // The result goes back as a tool message; Anthropic gets a tool_result block.
    let r = unified(
        &gw,
        &json!({"model":"claude","tools": tools, "messages":[
            {"role":"user","content":"What is the weather in Paris?"},
            {"role":"assistant","content":null,"tool_calls":[call]},
            {"role":"tool","tool_call_id": call["id"], "content":"18C and sunny"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sent = mock.last_request().unwrap().json().unwrap();
    let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "user");
    assert_eq!(last["content"][0]["type"], "tool_result", "{sent}");

    // Streaming: the tool-call argument deltas concatenate to valid JSON.
    let r = unified(
        &gw,
        &json!({"model":"claude","tools": tools, "stream": true,
            "messages":[{"role":"user","content":"What is the weather in Paris?"}]}),
    )
    .await;
    let body = r.text().await.unwrap();
    let cs = chunks(&body);
    let args: String = cs
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    let parsed: Value = serde_json::from_str(&args).unwrap();
    assert!(parsed.is_object(), "{args}");
    assert!(cs
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
}

#[tokio::test]
async fn untranslatable_fields_and_mismatches_are_400s_naming_the_field() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let cases = [
        (
            json!({"model":"claude","messages":[{"role":"user","content":"x"}],
            "response_format":{"type":"json_object"}}),
            "response_format",
        ),
        (
            json!({"model":"claude","messages":[{"role":"user","content":"x"}],"seed":4}),
            "seed",
        ),
        (
            json!({"model":"claude","provider":"gemini","messages":[{"role":"user","content":"x"}]}),
            "provider",
        ),
        (json!({"model":"gem","messages":"x"}), "messages"),
    ];
    for (body, field) in cases {
        let r = unified(&gw, &body).await;
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {v}"
        );
    }
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn provider_errors_keep_their_status_in_the_gateway_envelope() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let r = client()
        .post(gw.url("/v1/llm/chat"))
        .bearer_auth(KEY_GOOD)
        .header("x-mock-status", "429")
        .json(&json!({"model":"claude","messages":[{"role":"user","content":"x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");
    assert_eq!(v["error"]["provider_status"], 429);
    assert_eq!(
        v["error"]["provider_error"]["error"]["type"],
        "rate_limit_error"
    );
}

#[tokio::test]
async fn images_in_content_reach_anthropic_and_gemini_in_their_shapes() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let msg = json!([{"role":"user","content":[
        {"type":"text","text":"What is in this picture?"},
        {"type":"image_url","image_url":{"url": format!("data:image/png;base64,{png}")}}]}]);
    let r = unified(&gw, &json!({"model":"claude","messages": msg})).await;
    assert_eq!(r.status(), 200);
    let sent = mock.last_request().unwrap().json().unwrap();
    let block = &sent["messages"][0]["content"][1];
    assert_eq!(block["type"], "image", "{sent}");
    assert_eq!(block["source"]["type"], "base64");
    assert_eq!(block["source"]["media_type"], "image/png");
    assert_eq!(block["source"]["data"], png);

    let r = unified(&gw, &json!({"model":"gem","messages": msg})).await;
    assert_eq!(r.status(), 200);
    let sent = mock.last_request().unwrap().json().unwrap();
    let part = &sent["contents"][0]["parts"][1];
    assert_eq!(part["inlineData"]["mimeType"], "image/png", "{sent}");
    assert_eq!(part["inlineData"]["data"], png);
}

#[tokio::test]
async fn tool_calls_round_trip_through_gemini() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let tools = json!([{"type":"function","function":{"name":"get_weather",
        "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]);
    let r = unified(
        &gw,
        &json!({"model":"gem","tools": tools,
            "messages":[{"role":"user","content":"What is the weather in Paris?"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["stop_reason"], "tool_calls", "{v}");
    let call = v["tool_calls"][0].clone();
    assert_eq!(call["function"]["name"], "get_weather");
    let sent = mock.last_request().unwrap().json().unwrap();
    assert_eq!(
        sent["tools"][0]["functionDeclarations"][0]["name"], "get_weather",
        "{sent}"
    );
    let r = unified(
        &gw,
        &json!({"model":"gem","tools": tools, "messages":[
            {"role":"user","content":"What is the weather in Paris?"},
            {"role":"assistant","content":null,"tool_calls":[call]},
            {"role":"tool","tool_call_id": call["id"], "content":"18C and sunny"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sent = mock.last_request().unwrap().json().unwrap();
    let parts = &sent["contents"][2]["parts"][0];
    assert_eq!(parts["functionResponse"]["name"], "get_weather", "{sent}");
}
