//! Unit tests: request translation per target, unary normalization, stream translation.

use super::*;
use bytes::BytesMut;
use serde_json::{json, Value};

const ANTHROPIC_STREAM: &str = include_str!("../../tests/fixtures/anthropic_stream.sse");
const ANTHROPIC_TOOL_STREAM: &str = include_str!("../../tests/fixtures/anthropic_tool_stream.sse");
const GEMINI_STREAM: &str = include_str!("../../tests/fixtures/gemini_stream.sse");
const GEMINI_TOOL_STREAM: &str =
    include_str!("../../tests/fixtures/translate_gemini_tool_stream.sse");
const OPENAI_STREAM: &str = include_str!("../../tests/fixtures/openai_chat_stream.sse");

fn prep(target: Target, req: Value) -> Result<Prepared, GatewayError> {
    prepare(target, req.to_string().as_bytes(), "up-slug")
}

fn body(target: Target, req: Value) -> Value {
    let p = prep(target, req).expect("prepare");
    serde_json::from_slice(&p.body).expect("upstream body is JSON")
}

/// The error message of a rejected request.
fn rejected(target: Target, req: Value) -> String {
    let e = prep(target, req).expect_err("rejected");
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{}", e.message);
    assert_eq!(e.status(), 400);
    e.message
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// A conversation with a tool call and its (two) results.
fn tool_conversation() -> Value {
    json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\":21}"},
        {"role": "tool", "tool_call_id": "call_b", "content": "sunny"},
        {"role": "user", "content": "Thanks"}
    ])
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false}}})
}

// ---------------------------------------------------------------------------
// Validation (every target)
// ---------------------------------------------------------------------------

#[test]
fn validation_errors_name_the_field() {
    for target in [Target::OpenAi, Target::Anthropic, Target::Gemini] {
        let e = prepare(target, b"[1]", "s").expect_err("array");
        assert!(e.message.contains("JSON object"), "{}", e.message);
        let e = prepare(target, b"{\"model\":", "s").expect_err("truncated");
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let m = rejected(target, json!({"messages": [user("hi")]}));
        assert!(m.starts_with("model:"), "{m}");
        let m = rejected(target, json!({"model": "m"}));
        assert!(m.starts_with("messages:"), "{m}");
        let m = rejected(target, json!({"model": "m", "messages": []}));
        assert!(m.starts_with("messages:"), "{m}");
        let m = rejected(target, json!({"model": "m", "messages": "hi"}));
        assert_eq!(m, "messages: must be an array");
        let m = rejected(
            target,
            json!({"model": "m", "messages": [user("a"), {"role": "robot", "content": "x"}]}),
        );
        assert!(
            m.starts_with("messages[1].role: unknown role \"robot\""),
            "{m}"
        );
        let m = rejected(target, json!({"model": 3, "messages": [user("a")]}));
        assert_eq!(m, "model: must be a string");
        let m = rejected(
            target,
            json!({"model": "m", "messages": [user("a")], "temperature": "hot"}),
        );
        assert_eq!(m, "temperature: must be a number");
        let m = rejected(
            target,
            json!({"model": "m", "messages": [user("a")], "stream": "yes"}),
        );
        assert_eq!(m, "stream: must be a boolean");
        let m = rejected(
            target,
            json!({"model": "m", "messages": [user("a")], "max_tokens": -1}),
        );
        assert!(m.starts_with("max_tokens:"), "{m}");
        let m = rejected(
            target,
            json!({"model": "m", "messages": [user("a")], "provider": "bedrock"}),
        );
        assert!(m.starts_with("provider: unknown provider"), "{m}");
    }
}

#[test]
fn error_carries_param() {
    let e = prep(
        Target::Anthropic,
        json!({"model": "m", "messages": [user("a")], "seed": 1}),
    )
    .expect_err("seed");
    let body: Value = serde_json::from_slice(&e.body()).expect("json");
    assert_eq!(body["error"]["param"], "seed");
    assert_eq!(body["error"]["code"], "invalid_request");
}

#[test]
fn provider_must_match_target() {
    let req = |p: &str| json!({"model": "m", "messages": [user("a")], "provider": p});
    for (target, ok, bad) in [
        (
            Target::OpenAi,
            &["openai", "vllm", "OpenAI"][..],
            &["anthropic", "gemini"][..],
        ),
        (
            Target::Anthropic,
            &["anthropic"],
            &["openai", "vllm", "gemini"],
        ),
        (
            Target::Gemini,
            &["gemini", "google"],
            &["openai", "anthropic"],
        ),
    ] {
        for p in ok {
            assert!(prep(target, req(p)).is_ok(), "{p} on {target:?}");
        }
        for p in bad {
            let m = rejected(target, req(p));
            assert!(m.starts_with("provider:"), "{m}");
        }
    }
    let p = prep(Target::OpenAi, req("vllm")).expect("vllm");
    assert_eq!(p.provider, Some("vllm"));
}

#[test]
fn prepared_flags() {
    let p = prep(
        Target::Gemini,
        json!({"model": "wharf-m", "messages": [user("a")], "stream": true, "include_usage": true}),
    )
    .expect("prepare");
    assert!(p.stream && p.include_usage);
    assert_eq!(p.model, "wharf-m");
    let p = prep(
        Target::Anthropic,
        json!({"model": "m", "messages": [user("a")], "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .expect("prepare");
    assert!(p.stream && p.include_usage);
    let p = prep(
        Target::OpenAi,
        json!({"model": "m", "messages": [user("a")], "stream": true}),
    )
    .expect("prepare");
    assert!(p.stream && !p.include_usage);
}

#[test]
fn paths() {
    assert_eq!(
        target_path(Target::OpenAi, "gpt", true),
        "/chat/completions"
    );
    assert_eq!(target_path(Target::Anthropic, "claude", false), "/messages");
    assert_eq!(
        target_path(Target::Gemini, "gemini-2.0-flash", false),
        "/models/gemini-2.0-flash:generateContent"
    );
    assert_eq!(
        target_path(Target::Gemini, "models/gemini-2.0-flash", true),
        "/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    );
}

// ---------------------------------------------------------------------------
// OpenAI target
// ---------------------------------------------------------------------------

#[test]
fn openai_body_passes_through_with_rewrites() {
    let raw = br#"{"provider":"openai","model":"wharf-gpt","messages":[{"role":"user","content":"hi \u00e9"}],"temperature":0.70,"include_usage":true,"stream":true,"custom_field":{"a":[1,2]}}"#;
    let p = prepare(Target::OpenAi, raw, "gpt-4o-mini").expect("prepare");
    assert_eq!(
        std::str::from_utf8(&p.body).expect("utf8"),
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi \u00e9"}],"temperature":0.70,"stream":true,"custom_field":{"a":[1,2]},"stream_options":{"include_usage":true}}"#
    );
    assert!(p.stream && p.include_usage);
    assert_eq!(p.model, "wharf-gpt");

    // Client stream_options keep their other keys; include_usage is forced on.
    let raw = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1},"messages":[{"role":"user","content":"a"}]}"#;
    let p = prepare(Target::OpenAi, raw, "s").expect("prepare");
    let v: Value = serde_json::from_slice(&p.body).expect("json");
    assert_eq!(v["stream_options"], json!({"x": 1, "include_usage": true}));
    assert!(!p.include_usage);

    // Not streaming: stream_options is dropped (OpenAI rejects it without stream).
    let raw = br#"{"model":"m","stream_options":{"include_usage":true},"messages":[{"role":"user","content":"a"}]}"#;
    let v: Value =
        serde_json::from_slice(&prepare(Target::OpenAi, raw, "s").expect("p").body).expect("json");
    assert!(v.get("stream_options").is_none());
    assert_eq!(v["model"], "s");
}

#[test]
fn openai_target_keeps_openai_only_fields() {
    let v = body(
        Target::OpenAi,
        json!({"model": "m", "messages": [user("a")], "logprobs": true, "n": 3, "seed": 7,
               "response_format": {"type": "json_object"}}),
    );
    assert_eq!(v["n"], 3);
    assert_eq!(v["logprobs"], true);
    assert_eq!(v["response_format"]["type"], "json_object");
}

// ---------------------------------------------------------------------------
// Anthropic target
// ---------------------------------------------------------------------------

#[test]
fn anthropic_basic_request() {
    let v = body(
        Target::Anthropic,
        json!({"model": "wharf-claude", "provider": "anthropic",
               "messages": [{"role": "system", "content": "Be brief."},
                            {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                            user("Hello"),
                            {"role": "assistant", "content": "Hi!"},
                            user("Again")],
               "temperature": 0.2, "top_p": 0.9, "top_k": 40, "stop": "END",
               "stream": true, "include_usage": true, "user": "u-1"}),
    );
    assert_eq!(
        v,
        json!({
            "model": "up-slug",
            "max_tokens": 4096,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "No emoji."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]},
                {"role": "user", "content": [{"type": "text", "text": "Again"}]}
            ],
            "temperature": 0.2, "top_p": 0.9, "top_k": 40,
            "stop_sequences": ["END"],
            "stream": true,
            "metadata": {"user_id": "u-1"}
        })
    );
}

#[test]
fn anthropic_max_tokens_and_metadata() {
    let v = body(
        Target::Anthropic,
        json!({"model": "m", "messages": [user("a")], "max_completion_tokens": 99,
               "stop": ["a", "b"], "metadata": {"user_id": "abc"}}),
    );
    assert_eq!(v["max_tokens"], 99);
    assert_eq!(v["stop_sequences"], json!(["a", "b"]));
    assert_eq!(v["metadata"], json!({"user_id": "abc"}));
    assert!(v.get("stream").is_none());
    let v = body(
        Target::Anthropic,
        json!({"model": "m", "messages": [user("a")], "max_tokens": 12, "n": 1,
               "logprobs": false, "presence_penalty": 0, "response_format": {"type": "text"}}),
    );
    assert_eq!(v["max_tokens"], 12);
}

#[test]
fn anthropic_images() {
    let v = body(
        Target::Anthropic,
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "auto"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
        ]}]}),
    );
    assert_eq!(
        v["messages"][0]["content"],
        json!([
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
        ])
    );
}

#[test]
fn anthropic_tools_and_results() {
    let v = body(
        Target::Anthropic,
        json!({"model": "m", "messages": tool_conversation(), "tools": [weather_tool()],
               "tool_choice": "required", "parallel_tool_calls": false}),
    );
    assert_eq!(v["system"], json!([{"type": "text", "text": "Be brief."}]));
    assert_eq!(
        v["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {"city": "Rome"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "{\"temp\":21}"},
                {"type": "tool_result", "tool_use_id": "call_b", "content": "sunny"},
                {"type": "text", "text": "Thanks"}
            ]}
        ])
    );
    assert_eq!(
        v["tools"],
        json!([{"name": "get_weather", "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"], "additionalProperties": false}}])
    );
    assert_eq!(
        v["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
}

#[test]
fn anthropic_tool_choice_forms() {
    let choice = |c: Value| {
        body(
            Target::Anthropic,
            json!({"model": "m", "messages": [user("a")], "tools": [weather_tool()], "tool_choice": c}),
        )["tool_choice"]
            .clone()
    };
    assert_eq!(choice(json!("auto")), json!({"type": "auto"}));
    assert_eq!(choice(json!("none")), json!({"type": "none"}));
    assert_eq!(choice(json!("required")), json!({"type": "any"}));
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "get_weather"}})),
        json!({"type": "tool", "name": "get_weather"})
    );
    // A tool without parameters takes an empty object.
    let v = body(
        Target::Anthropic,
        json!({"model": "m", "messages": [user("a")],
               "tools": [{"type": "function", "function": {"name": "now"}}]}),
    );
    assert_eq!(
        v["tools"],
        json!([{"name": "now", "input_schema": {"type": "object", "properties": {}}}])
    );
    assert!(v.get("tool_choice").is_none());
    let m = rejected(
        Target::Anthropic,
        json!({"model": "m", "messages": [user("a")], "tool_choice": "required"}),
    );
    assert!(m.starts_with("tool_choice:"), "{m}");
    let m = rejected(
        Target::Anthropic,
        json!({"model": "m", "messages": [user("a")], "tools": [weather_tool()],
               "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    );
    assert!(m.starts_with("tool_choice:"), "{m}");
}

#[test]
fn anthropic_rejects_what_it_cannot_express() {
    let base = || json!({"model": "m", "messages": [user("a")]});
    let with = |k: &str, v: Value| {
        let mut r = base();
        r[k] = v;
        rejected(Target::Anthropic, r)
    };
    for (field, value) in [
        ("response_format", json!({"type": "json_object"})),
        (
            "response_format",
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}),
        ),
        ("seed", json!(42)),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(-0.5)),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(3)),
        ("n", json!(2)),
        ("logit_bias", json!({"50256": -100})),
        ("reasoning_effort", json!("high")),
        ("service_tier", json!("flex")),
        ("store", json!(true)),
    ] {
        let m = with(field, value);
        assert!(m.starts_with(&format!("{field}: ")), "{m}");
        assert!(m.contains("anthropic"), "{m}");
    }
    let m = with("temperature", json!(1.5));
    assert!(m.starts_with("temperature:"), "{m}");
    let m = with("metadata", json!({"trace": "x"}));
    assert!(m.starts_with("metadata.trace:"), "{m}");
    let m = with("stream_options", json!({"include_obfuscation": true}));
    assert!(m.starts_with("stream_options.include_obfuscation:"), "{m}");

    let m = rejected(
        Target::Anthropic,
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
    );
    assert!(m.starts_with("messages[0].content[0]:"), "{m}");
    let m = rejected(
        Target::Anthropic,
        json!({"model": "m", "messages": [{"role": "user", "name": "bob", "content": "a"}]}),
    );
    assert!(m.starts_with("messages[0].name:"), "{m}");
    let m = rejected(
        Target::Anthropic,
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}}]}]}),
    );
    assert!(
        m.starts_with("messages[0].content[0].image_url.detail:"),
        "{m}"
    );
    let m = rejected(
        Target::Anthropic,
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}),
    );
    assert!(
        m.starts_with("messages[0].content[0].image_url.url:"),
        "{m}"
    );
    let m = rejected(
        Target::Anthropic,
        json!({"model": "m", "messages": [user("a"), {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}),
    );
    assert!(
        m.starts_with("messages[1].tool_calls[0].function.arguments:"),
        "{m}"
    );
    let m = rejected(
        Target::Anthropic,
        json!({"model": "m", "messages": [user("a")], "tools": [weather_tool(),
            {"type": "function", "function": {"name": "f", "strict": true}}]}),
    );
    assert!(m.starts_with("tools[1].function.strict:"), "{m}");
    let m = rejected(
        Target::Anthropic,
        json!({"model": "m", "messages": [{"role": "system", "content": "only system"}]}),
    );
    assert!(m.starts_with("messages:"), "{m}");
    let m = rejected(
        Target::Anthropic,
        json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
    );
    assert_eq!(m, "messages[0].tool_call_id: is required");
}

// ---------------------------------------------------------------------------
// Gemini target
// ---------------------------------------------------------------------------

#[test]
fn gemini_basic_request() {
    let v = body(
        Target::Gemini,
        json!({"model": "wharf-gemini",
               "messages": [{"role": "system", "content": "Be brief."}, user("Hello"),
                            {"role": "assistant", "content": "Hi!"}, user("Again")],
               "max_tokens": 100, "temperature": 1.5, "top_p": 0.9, "top_k": 40,
               "stop": ["x"], "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.2,
               "stream": true}),
    );
    assert_eq!(
        v,
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "Hello"}]},
                {"role": "model", "parts": [{"text": "Hi!"}]},
                {"role": "user", "parts": [{"text": "Again"}]}
            ],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {
                "maxOutputTokens": 100, "temperature": 1.5, "topP": 0.9, "topK": 40,
                "stopSequences": ["x"], "seed": 7, "presencePenalty": 0.1, "frequencyPenalty": 0.2
            }
        })
    );
}

#[test]
fn gemini_media() {
    let v = body(
        Target::Gemini,
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
            {"type": "image_url", "image_url": "https://example.com/a/b.PNG?x=1"},
            {"type": "image_url", "image_url": {"url": "https://example.com/img"}},
            {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}}
        ]}]}),
    );
    assert_eq!(
        v["contents"][0]["parts"],
        json!([
            {"text": "Describe"},
            {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
            {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/a/b.PNG?x=1"}},
            {"fileData": {"fileUri": "https://example.com/img"}},
            {"inlineData": {"mimeType": "audio/wav", "data": "UklGR"}}
        ])
    );
    assert!(v.get("generationConfig").is_none());
}

#[test]
fn gemini_tools_and_results() {
    let v = body(
        Target::Gemini,
        json!({"model": "m", "messages": tool_conversation(), "tools": [weather_tool()],
               "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    );
    assert_eq!(
        v["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(
        v["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "get_weather", "response": {"output": "sunny"}}},
                {"text": "Thanks"}
            ]}
        ])
    );
    assert_eq!(
        v["tools"],
        json!([{"functionDeclarations": [{"name": "get_weather", "description": "Weather for a city",
            "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}},
                                     "required": ["city"], "additionalProperties": false}}]}])
    );
    assert_eq!(
        v["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
    );
    let mode = |c: &str| {
        body(
            Target::Gemini,
            json!({"model": "m", "messages": [user("a")], "tools": [weather_tool()], "tool_choice": c}),
        )["toolConfig"]["functionCallingConfig"]["mode"]
            .clone()
    };
    assert_eq!(mode("auto"), "AUTO");
    assert_eq!(mode("none"), "NONE");
    assert_eq!(mode("required"), "ANY");
}

#[test]
fn gemini_thought_signature_round_trip() {
    let v = body(
        Target::Gemini,
        json!({"model": "m", "messages": [user("a"),
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function",
              "function": {"name": "f", "arguments": ""},
              "extra_content": {"google": {"thought_signature": "c2ln"}}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "[1,2]"}]}),
    );
    assert_eq!(
        v["contents"][1]["parts"][0],
        json!({"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "c2ln"})
    );
    assert_eq!(
        v["contents"][2]["parts"][0]["functionResponse"]["response"],
        json!({"output": [1, 2]})
    );
}

#[test]
fn gemini_json_modes() {
    let v = body(
        Target::Gemini,
        json!({"model": "m", "messages": [user("a")], "response_format": {"type": "json_object"}}),
    );
    assert_eq!(
        v["generationConfig"],
        json!({"responseMimeType": "application/json"})
    );
    let v = body(
        Target::Gemini,
        json!({"model": "m", "messages": [user("a")], "response_format": {"type": "json_schema",
            "json_schema": {"name": "p", "strict": true, "schema": {"type": "object",
            "properties": {"n": {"type": "integer"}}, "additionalProperties": false}}}}),
    );
    assert_eq!(
        v["generationConfig"],
        json!({"responseMimeType": "application/json", "responseJsonSchema": {"type": "object",
            "properties": {"n": {"type": "integer"}}, "additionalProperties": false}})
    );
}

#[test]
fn gemini_rejects_what_it_cannot_express() {
    let base = || json!({"model": "m", "messages": [user("a")]});
    for (field, value) in [
        ("logprobs", json!(true)),
        ("n", json!(2)),
        ("user", json!("u-1")),
        ("parallel_tool_calls", json!(false)),
        ("modalities", json!(["text", "audio"])),
    ] {
        let mut r = base();
        r[field] = value;
        let m = rejected(Target::Gemini, r);
        assert!(m.starts_with(&format!("{field}: ")), "{m}");
        assert!(m.contains("gemini"), "{m}");
    }
    let mut r = base();
    r["metadata"] = json!({"user_id": "u"});
    let m = rejected(Target::Gemini, r);
    assert!(m.starts_with("metadata.user_id:"), "{m}");
    let m = rejected(
        Target::Gemini,
        json!({"model": "m", "messages": [user("a"),
            {"role": "tool", "tool_call_id": "call_x", "content": "1"}]}),
    );
    assert!(m.starts_with("messages[1].tool_call_id:"), "{m}");
    let m = rejected(
        Target::Gemini,
        json!({"model": "m", "messages": [user("a"),
            {"role": "function", "name": "f", "content": "1"}]}),
    );
    assert!(m.starts_with("messages[1].role:"), "{m}");
}

// ---------------------------------------------------------------------------
// Unary answers
// ---------------------------------------------------------------------------

#[test]
fn unary_openai() {
    let resp = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me check.",
            "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    });
    let (v, t) = normalize_unary(
        Target::OpenAi,
        "openai",
        "wharf-gpt",
        resp.to_string().as_bytes(),
    )
    .expect("normalize");
    assert_eq!(
        v,
        json!({
            "provider": "openai", "model": "wharf-gpt", "content": "Let me check.",
            "stop_reason": "tool_calls",
            "content_blocks": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}
            ],
            "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}],
            "input_tokens": 10, "output_tokens": 5,
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            "provider_request_id": "chatcmpl-1"
        })
    );
    assert_eq!((t.input, t.output, t.total), (10, 5, 15));
    let e = normalize_unary(Target::OpenAi, "openai", "m", b"nope").expect_err("bad");
    assert_eq!(e.code, ErrorCode::UpstreamError);
}

#[test]
fn unary_anthropic() {
    let resp = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [
            {"type": "text", "text": "Checking "},
            {"type": "text", "text": "now."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 7}
    });
    let (v, t) = normalize_unary(
        Target::Anthropic,
        "anthropic",
        "wharf-claude",
        resp.to_string().as_bytes(),
    )
    .expect("normalize");
    assert_eq!(v["content"], "Checking now.");
    assert_eq!(v["stop_reason"], "tool_calls");
    assert_eq!(
        v["content_blocks"],
        json!([
            {"type": "text", "text": "Checking "},
            {"type": "text", "text": "now."},
            {"type": "tool_call", "id": "toolu_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}
        ])
    );
    assert_eq!(
        v["tool_calls"],
        json!([{"id": "toolu_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
    );
    assert_eq!(
        (v["input_tokens"].clone(), v["output_tokens"].clone()),
        (json!(25), json!(7))
    );
    assert_eq!(v["usage"], resp["usage"]);
    assert_eq!(v["provider_request_id"], "msg_1");
    assert_eq!(t.cached_input, 5);

    for (reason, want) in [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
    ] {
        let r =
            json!({"id": "m", "content": [{"type": "text", "text": "x"}], "stop_reason": reason});
        let (v, t) = normalize_unary(
            Target::Anthropic,
            "anthropic",
            "m",
            r.to_string().as_bytes(),
        )
        .expect("normalize");
        assert_eq!(v["stop_reason"], want);
        assert_eq!(v["usage"], Value::Null);
        assert_eq!(t, Tokens::default());
    }
}

#[test]
fn unary_gemini() {
    let resp = json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "thinking...", "thought": true},
            {"text": "Here."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}, "thoughtSignature": "c2ln"}
        ]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4, "totalTokenCount": 13},
        "modelVersion": "gemini-2.0-flash", "responseId": "resp-1"
    });
    let (v, t) = normalize_unary(
        Target::Gemini,
        "gemini",
        "wharf-gemini",
        resp.to_string().as_bytes(),
    )
    .expect("normalize");
    assert_eq!(v["content"], "Here.");
    assert_eq!(v["stop_reason"], "tool_calls");
    assert_eq!(
        v["tool_calls"],
        json!([{"id": "call_0", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"},
                "extra_content": {"google": {"thought_signature": "c2ln"}}}])
    );
    assert_eq!(v["provider_request_id"], "resp-1");
    assert_eq!((t.input, t.output), (9, 4));

    let r = json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "MAX_TOKENS"}]});
    let (v, _) = normalize_unary(Target::Gemini, "gemini", "m", r.to_string().as_bytes())
        .expect("normalize");
    assert_eq!(v["stop_reason"], "length");
    let r = json!({"candidates": [{"finishReason": "SAFETY"}]});
    let (v, _) = normalize_unary(Target::Gemini, "gemini", "m", r.to_string().as_bytes())
        .expect("normalize");
    assert_eq!(
        (v["stop_reason"].clone(), v["content"].clone()),
        (json!("content_filter"), json!(""))
    );
    let r = json!({"promptFeedback": {"blockReason": "SAFETY"}});
    let (v, _) = normalize_unary(Target::Gemini, "gemini", "m", r.to_string().as_bytes())
        .expect("normalize");
    assert_eq!(v["stop_reason"], "content_filter");
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// Translates `input` fed in `chunk`-byte pieces; returns the `data:` payloads.
fn run(
    target: Target,
    input: &str,
    include_usage: bool,
    chunk: usize,
) -> (StreamTranslator, Vec<String>) {
    let mut t = StreamTranslator::new(target, "wharf-model", include_usage);
    let mut out = BytesMut::new();
    for piece in input.as_bytes().chunks(chunk.max(1)) {
        t.feed(piece, &mut out);
    }
    t.finish(&mut out);
    let text = String::from_utf8(out.to_vec()).expect("utf8");
    assert!(text.ends_with("\n\n"), "{text}");
    let events = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data event").to_owned())
        .collect();
    (t, events)
}

fn chunks_json(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).expect("chunk json"))
        .collect()
}

fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn finish_of(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn anthropic_stream_text() {
    let (t, events) = run(Target::Anthropic, ANTHROPIC_STREAM, true, 7);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = chunks_json(&events);
    let first = &chunks[0];
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let id = first["id"].as_str().expect("id");
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "wharf-model");
        assert_eq!(c["created"], first["created"]);
    }
    assert_eq!(
        text_of(&chunks),
        "Hello from the mock provider. This is a deterministic answer streamed one word per token so"
    );
    assert_eq!(finish_of(&chunks), ["stop"]);
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 23);
    assert_eq!(usage["usage"]["completion_tokens"], 16);
    assert_eq!(usage["usage"]["total_tokens"], 39);
    assert!(t.done());
    let tokens = t.tokens().expect("tokens");
    assert_eq!((tokens.input, tokens.output), (23, 16));
    assert_eq!(t.content_events(), 16);
    assert_eq!(
        t.provider_request_id(),
        Some("msg_01sptMfT2dcp50K0dkHpEYHw")
    );

    let (_, events) = run(Target::Anthropic, ANTHROPIC_STREAM, false, 4096);
    let chunks = chunks_json(&events);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(finish_of(&chunks), ["stop"]);
}

#[test]
fn anthropic_stream_tool_call() {
    let (t, events) = run(Target::Anthropic, ANTHROPIC_TOOL_STREAM, false, 13);
    let chunks = chunks_json(&events);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(
        calls[0],
        &json!([{"index": 0, "id": "toolu_01gT80dmLi5hrYL8VTOR38dq", "type": "function",
                 "function": {"name": "get_weather", "arguments": ""}}])
    );
    let args: String = calls
        .iter()
        .filter_map(|c| c[0]["function"]["arguments"].as_str())
        .collect();
    let args: Value = serde_json::from_str(&args).expect("arguments are JSON");
    assert_eq!(
        args,
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );
    assert!(calls.iter().all(|c| c[0]["index"] == 0));
    assert_eq!(finish_of(&chunks), ["tool_calls"]);
    assert_eq!(t.tokens().map(|t| (t.input, t.output)), Some((111, 13)));
}

#[test]
fn anthropic_stream_error_and_cut() {
    let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_x\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let (t, events) = run(Target::Anthropic, stream, true, 5);
    assert!(!t.done());
    assert!(t.errored());
    let n = events.len();
    assert_eq!(events[n - 1], "[DONE]");
    let err: Value = serde_json::from_str(&events[n - 2]).expect("error json");
    assert_eq!(err["error"]["message"], "Overloaded");
    assert_eq!(err["error"]["code"], "upstream_error");
    assert_eq!(err["error"]["provider_error"]["type"], "overloaded_error");
    assert_eq!(t.tokens().map(|t| t.input), Some(5));

    // Cut before message_stop: an error event, no finish chunk, no usage chunk.
    let cut = &ANTHROPIC_STREAM[..ANTHROPIC_STREAM.len() / 2];
    let (t, events) = run(Target::Anthropic, cut, true, 64);
    assert!(!t.done());
    let chunks = chunks_json(&events);
    assert!(finish_of(&chunks).is_empty());
    assert!(chunks.last().expect("error").get("error").is_some());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

#[test]
fn gemini_stream_text() {
    let (t, events) = run(Target::Gemini, GEMINI_STREAM, true, 11);
    let chunks = chunks_json(&events);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["id"], "chatcmpl-8m2IQDK6ArruQw0tEE4Dh4");
    assert_eq!(
        text_of(&chunks),
        "Hello from the mock provider. This is a deterministic answer streamed one word per token so"
    );
    assert_eq!(finish_of(&chunks), ["stop"]);
    let usage = chunks.last().expect("usage");
    assert_eq!(usage["usage"]["prompt_tokens"], 14);
    assert_eq!(usage["usage"]["completion_tokens"], 16);
    assert!(t.done());
    assert_eq!(t.content_events(), 16);
    assert_eq!(t.provider_request_id(), Some("8m2IQDK6ArruQw0tEE4Dh4"));
}

#[test]
fn gemini_stream_tool_call() {
    let (t, events) = run(Target::Gemini, GEMINI_TOOL_STREAM, false, 9);
    let chunks = chunks_json(&events);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0][0]["id"], "call_0");
    assert_eq!(calls[0][0]["index"], 0);
    assert_eq!(calls[0][0]["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(calls[0][0]["function"]["arguments"].as_str().expect("args"))
            .expect("json");
    assert_eq!(
        args,
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );
    assert_eq!(
        calls[0][0]["extra_content"]["google"]["thought_signature"],
        "Q2lRQjBkNmR"
    );
    assert_eq!(calls[1][0]["id"], "call_1");
    assert_eq!(calls[1][0]["index"], 1);
    assert_eq!(finish_of(&chunks), ["tool_calls"]);
    assert!(t.done());
    assert_eq!(t.tokens().map(|t| (t.input, t.output)), Some((52, 24)));
}

#[test]
fn gemini_stream_error() {
    let stream = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}],\"role\":\"model\"},\"index\":0}]}\r\n\r\n\
data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n";
    let (t, events) = run(Target::Gemini, stream, true, 3);
    assert!(t.errored() && !t.done());
    let chunks = chunks_json(&events);
    assert_eq!(text_of(&chunks), "Hi");
    let err = chunks.last().expect("error");
    assert_eq!(err["error"]["message"], "The model is overloaded.");
    assert_eq!(err["error"]["provider_error"]["status"], "UNAVAILABLE");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

#[test]
fn openai_stream_passthrough() {
    let (t, events) = run(Target::OpenAi, OPENAI_STREAM, false, 17);
    let chunks = chunks_json(&events);
    assert!(chunks
        .iter()
        .all(|c| !c["choices"].as_array().expect("choices").is_empty()));
    assert!(chunks.iter().all(|c| c["model"] == "wharf-model"));
    assert_eq!(
        text_of(&chunks),
        "Hello from the mock provider. This is a deterministic answer streamed one"
    );
    assert_eq!(finish_of(&chunks), ["stop"]);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(t.done());
    assert_eq!(t.tokens().map(|t| (t.input, t.output)), Some((8, 12)));
    assert_eq!(t.content_events(), 12);

    let (_, events) = run(Target::OpenAi, OPENAI_STREAM, true, 4096);
    let chunks = chunks_json(&events);
    let usage = chunks.last().expect("usage");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 8);
    assert_eq!(events.iter().filter(|e| *e == "[DONE]").count(), 1);

    // Without [DONE] the stream was cut.
    let cut = OPENAI_STREAM.replace("data: [DONE]\n\n", "");
    let (t, events) = run(Target::OpenAi, &cut, false, 4096);
    assert!(!t.done());
    let chunks = chunks_json(&events);
    assert!(chunks.last().expect("error").get("error").is_some());
}

#[test]
fn stream_round_trip_into_next_request() {
    // The tool call a client assembles from the Anthropic stream goes back as history.
    let (_, events) = run(Target::Anthropic, ANTHROPIC_TOOL_STREAM, false, 4096);
    let chunks = chunks_json(&events);
    let mut id = String::new();
    let mut name = String::new();
    let mut args = String::new();
    for c in &chunks {
        if let Some(call) = c["choices"][0]["delta"]["tool_calls"].get(0) {
            if let Some(i) = call["id"].as_str() {
                id = i.to_owned();
            }
            if let Some(n) = call["function"]["name"].as_str() {
                name = n.to_owned();
            }
            args.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    let history = json!([user("Weather?"),
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": name, "arguments": args}}]},
        {"role": "tool", "tool_call_id": id, "content": "18C"}]);
    let v = body(
        Target::Anthropic,
        json!({"model": "m", "messages": history.clone()}),
    );
    assert_eq!(
        v["messages"][1]["content"][0],
        json!({"type": "tool_use", "id": "toolu_01gT80dmLi5hrYL8VTOR38dq", "name": "get_weather",
               "input": {"location": "San Francisco, CA", "unit": "celsius"}})
    );
    assert_eq!(
        v["messages"][2]["content"][0]["tool_use_id"],
        "toolu_01gT80dmLi5hrYL8VTOR38dq"
    );
    let v = body(Target::Gemini, json!({"model": "m", "messages": history}));
    assert_eq!(
        v["contents"][2]["parts"][0]["functionResponse"],
        json!({"name": "get_weather", "response": {"output": "18C"}})
    );
}

#[test]
fn echoed_empty_fields_are_accepted() {
    // History echoed from an OpenAI answer carries empty or null extras.
    let req = json!({"model": "m", "messages": [user("a"),
        {"role": "assistant", "content": "b", "refusal": null, "annotations": [], "audio": null,
         "function_call": null},
        user("c")], "functions": [], "logit_bias": {}});
    for target in [Target::Anthropic, Target::Gemini] {
        assert!(prep(target, req.clone()).is_ok(), "{target:?}");
    }
    let m = rejected(
        Target::Anthropic,
        json!({"model": "m", "messages": [user("a"),
            {"role": "assistant", "content": "b", "annotations": [{"type": "url_citation"}]}]}),
    );
    assert!(m.starts_with("messages[1].annotations:"), "{m}");
}

#[test]
fn stream_edge_events() {
    // Text in content_block_start, an unknown block type, thinking deltas are skipped.
    let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_e\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"Hi\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\" \\\"there\\\"\\n\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":9}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let (t, events) = run(Target::Anthropic, stream, false, 1);
    let chunks = chunks_json(&events);
    assert_eq!(text_of(&chunks), "Hi \"there\"\n");
    assert_eq!(finish_of(&chunks), ["length"]);
    assert_eq!(t.tokens().map(|t| (t.input, t.output)), Some((3, 9)));
    assert_eq!(t.content_events(), 2);

    // A Gemini prompt blocked before any candidate.
    let stream = "data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"},\"usageMetadata\":{\"promptTokenCount\":4,\"totalTokenCount\":4}}\r\n\r\n";
    let (t, events) = run(Target::Gemini, stream, true, 8);
    let chunks = chunks_json(&events);
    assert_eq!(finish_of(&chunks), ["content_filter"]);
    assert!(t.done());
    assert_eq!(chunks.last().expect("usage")["usage"]["prompt_tokens"], 4);

    // An OpenAI-compatible error event passes through as is.
    let stream = "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n";
    let (t, events) = run(Target::OpenAi, stream, false, 4096);
    assert!(t.errored());
    assert_eq!(
        events,
        [
            "{\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}",
            "[DONE]"
        ]
    );
}
