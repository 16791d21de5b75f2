//! Exactness at the edges, through real sockets: what a cut, ended-early or malformed answer
//! bills and shows the client, request identity, broken client framing, replays on reused
//! connections, and provider credentials echoed by an upstream.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// One streaming route of one family, and how its generated content is recognised.
#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    path: &'static str,
    shape: Shape,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Chat,
    Completions,
    Responses,
    Anthropic,
    Gemini,
}

impl Case {
    fn body(&self, stream: bool) -> Value {
        let msgs = json!([{"role": "user", "content": "Say hello to the edge cases"}]);
        match self.name {
            "chat" => json!({"model": "chat-a", "messages": msgs, "stream": stream}),
            "vllm" => json!({"model": "llama", "messages": msgs, "stream": stream}),
            "completions" => {
                json!({"model": "chat-a", "prompt": "Say hello to the edge cases", "stream": stream})
            }
            "responses" => {
                json!({"model": "chat-a", "input": "Say hello to the edge cases", "stream": stream})
            }
            "anthropic" => {
                json!({"model": "claude", "max_tokens": 400, "messages": msgs, "stream": stream})
            }
            "gemini" => json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}),
            "unified-anthropic" => json!({"model": "claude", "messages": msgs, "stream": stream}),
            "unified-gemini" => json!({"model": "gem", "messages": msgs, "stream": stream}),
            "unified-openai" => json!({"model": "chat-a", "messages": msgs, "stream": stream}),
            other => panic!("no case {other}"),
        }
    }
}

const STREAMS: [Case; 9] = [
    Case {
        name: "chat",
        path: "/v1/chat/completions",
        shape: Shape::Chat,
    },
    Case {
        name: "vllm",
        path: "/v1/vllm/chat/completions",
        shape: Shape::Chat,
    },
    Case {
        name: "completions",
        path: "/v1/completions",
        shape: Shape::Completions,
    },
    Case {
        name: "responses",
        path: "/v1/responses",
        shape: Shape::Responses,
    },
    Case {
        name: "anthropic",
        path: "/v1/messages",
        shape: Shape::Anthropic,
    },
    Case {
        name: "gemini",
        path: "/v1beta/models/gem:streamGenerateContent?alt=sse",
        shape: Shape::Gemini,
    },
    Case {
        name: "unified-anthropic",
        path: "/v1/llm/chat",
        shape: Shape::Chat,
    },
    Case {
        name: "unified-gemini",
        path: "/v1/llm/chat",
        shape: Shape::Chat,
    },
    Case {
        name: "unified-openai",
        path: "/v1/llm/chat",
        shape: Shape::Chat,
    },
];

/// The events of an SSE body: (event name, data).
fn events(body: &str) -> Vec<(Option<String>, String)> {
    body.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|ev| {
            let name = ev
                .lines()
                .find_map(|l| l.strip_prefix("event: ").map(str::to_string));
            let data: Vec<&str> = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .collect();
            (!data.is_empty()).then(|| (name, data.join("\n")))
        })
        .collect()
}

fn non_empty(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.is_empty())
}

/// Events that carried generated content, counted by parsing what the client received.
fn content_events(shape: Shape, body: &str) -> u64 {
    let mut n = 0;
    for (_, data) in events(body) {
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        let hit = match shape {
            Shape::Chat => v["choices"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    non_empty(&c["delta"]["content"])
                        || c["delta"]["tool_calls"].as_array().is_some_and(|t| {
                            t.iter().any(|t| non_empty(&t["function"]["arguments"]))
                        })
                })
            }),
            Shape::Completions => v["choices"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| non_empty(&c["text"]))),
            Shape::Responses => {
                v["type"].as_str().is_some_and(|t| t.ends_with(".delta")) && non_empty(&v["delta"])
            }
            Shape::Anthropic => {
                v["type"] == "content_block_delta"
                    && (non_empty(&v["delta"]["text"]) || non_empty(&v["delta"]["partial_json"]))
            }
            Shape::Gemini => v["candidates"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["content"]["parts"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| non_empty(&p["text"])))
                })
            }),
        };
        n += u64::from(hit);
    }
    n
}

async fn send(gw: &Gw, case: &Case, stream: bool, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut rb = client()
        .post(gw.url(case.path))
        .bearer_auth(KEY_GOOD)
        .json(&case.body(stream));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

fn id_of(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_string()
}

/// Checks that the body's last event is the family's final error event.
fn ends_with_error_event(case: &Case, body: &str) {
    let evs = events(body);
    let last = evs
        .iter()
        .rev()
        .find(|(_, d)| d != "[DONE]")
        .unwrap_or_else(|| panic!("{}: no events in {body}", case.name));
    let v: Value = serde_json::from_str(&last.1)
        .unwrap_or_else(|_| panic!("{}: last event is not JSON: {body}", case.name));
    match case.shape {
        Shape::Anthropic => {
            assert_eq!(last.0.as_deref(), Some("error"), "{}: {body}", case.name);
            assert_eq!(v["type"], "error", "{}: {body}", case.name);
            assert_eq!(
                v["error"]["code"], "upstream_error",
                "{}: {body}",
                case.name
            );
        }
        Shape::Gemini => {
            // google.rpc.Status: the HTTP status as a number, Wharf's code in an ErrorInfo.
            assert_eq!(v["error"]["code"], 502, "{}: {body}", case.name);
            assert_eq!(v["error"]["status"], "UNAVAILABLE", "{}: {body}", case.name);
            assert_eq!(
                v["error"]["details"][0]["reason"], "upstream_error",
                "{}: {body}",
                case.name
            );
        }
        _ => assert_eq!(
            v["error"]["code"], "upstream_error",
            "{}: {body}",
            case.name
        ),
    }
}

#[tokio::test]
async fn cut_streams_bill_exactly_the_content_deltas_that_passed_as_estimated() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    for case in STREAMS {
        for fault in ["drop-mid-stream", "end-early"] {
            let r = send(
                &gw,
                &case,
                true,
                &[
                    ("x-mock-fault", fault),
                    ("x-mock-drop-after", "7"),
                    ("x-mock-tokens", "30"),
                ],
            )
            .await;
            assert_eq!(r.status(), 200, "{} {fault}", case.name);
            let id = id_of(&r);
            let body = read_to_end(r).await;
            let produced = content_events(case.shape, &body);
            assert!(
                produced >= 1,
                "{} {fault}: nothing passed: {body}",
                case.name
            );
            // The client never gets a silently truncated answer.
            ends_with_error_event(&case, &body);
            let rec = gw.usage_of(&id).await;
            let what = format!("{} {fault}: {rec}", case.name);
            assert_eq!(rec["stream_cut"], true, "{what}");
            assert_eq!(rec["outcome"], "upstream_error", "{what}");
            assert_eq!(rec["error_code"], "upstream_error", "{what}");
            assert_eq!(rec["usage_source"], "estimated", "{what}");
            assert_eq!(rec["tokens"]["output"], produced, "{what}");
            assert!(rec["tokens"]["input"].as_u64().unwrap() > 0, "{what}");
        }
    }
}

#[tokio::test]
async fn an_openai_cut_does_not_count_the_role_chunk() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let chat = STREAMS[0];
    // Events 0..3: the role chunk (empty content), then two tokens.
    let r = send(
        &gw,
        &chat,
        true,
        &[
            ("x-mock-fault", "drop-mid-stream"),
            ("x-mock-drop-after", "3"),
        ],
    )
    .await;
    let id = id_of(&r);
    read_to_end(r).await;
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["tokens"]["output"], 2, "{rec}");
}

#[tokio::test]
async fn an_anthropic_client_that_hangs_up_pays_for_what_was_produced_not_the_placeholder() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let case = STREAMS[4];
    // The provider's input count, from an answer that completes.
    let full = send(&gw, &case, false, &[("x-mock-tokens", "200")]).await;
    let input = full.json::<Value>().await.unwrap()["usage"]["input_tokens"]
        .as_u64()
        .unwrap();
    let r = send(
        &gw,
        &case,
        true,
        &[("x-mock-tokens", "200"), ("x-mock-itl-ms", "20")],
    )
    .await;
    let id = id_of(&r);
    let mut s = r.bytes_stream();
    let mut got = String::new();
    while content_events(Shape::Anthropic, &got) < 5 {
        got.push_str(std::str::from_utf8(&s.next().await.unwrap().unwrap()).unwrap());
    }
    drop(s);
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["client_disconnected"], true, "{rec}");
    assert_eq!(rec["usage_source"], "estimated", "{rec}");
    let out = rec["tokens"]["output"].as_u64().unwrap();
    assert!((5..200).contains(&out), "billed {out} of 200: {rec}");
    assert_eq!(rec["tokens"]["input"], input, "{rec}");
}

#[tokio::test]
async fn a_complete_stream_still_bills_the_providers_final_usage() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    for case in STREAMS {
        let r = send(&gw, &case, true, &[("x-mock-tokens", "9")]).await;
        assert_eq!(r.status(), 200, "{}", case.name);
        let id = id_of(&r);
        let body = read_to_end(r).await;
        assert!(!body.contains("upstream_error"), "{}: {body}", case.name);
        let rec = gw.usage_of(&id).await;
        assert_eq!(rec["usage_source"], "provider", "{}: {rec}", case.name);
        assert_eq!(rec["tokens"]["output"], 9, "{}: {rec}", case.name);
        assert_eq!(rec["outcome"], "success", "{}: {rec}", case.name);
    }
}

#[tokio::test]
async fn a_malformed_unary_answer_is_passed_on_but_recorded_as_an_upstream_error() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    for case in [STREAMS[0], STREAMS[4], STREAMS[5], STREAMS[1], STREAMS[6]] {
        let path = case
            .path
            .replace(":streamGenerateContent?alt=sse", ":generateContent");
        let unified = case.path == "/v1/llm/chat";
        let r = client()
            .post(gw.url(&path))
            .bearer_auth(KEY_GOOD)
            .header("x-mock-fault", "end-early")
            .json(&case.body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", case.name);
        let id = id_of(&r);
        let body = r.bytes().await.unwrap();
        if unified {
            // The unified route translates, so it answers the gateway's error instead.
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert!(v["error"]["code"].is_string(), "{}: {v}", case.name);
        } else {
            assert!(
                serde_json::from_slice::<Value>(&body).is_err(),
                "{}: the provider's bytes are passed on as they came",
                case.name
            );
        }
        let rec = gw.usage_of(&id).await;
        assert_eq!(rec["outcome"], "upstream_error", "{}: {rec}", case.name);
        assert_eq!(rec["error_code"], "upstream_error", "{}: {rec}", case.name);
        assert_eq!(rec["usage_source"], "estimated", "{}: {rec}", case.name);
    }
}

#[tokio::test]
async fn a_reused_client_request_id_never_collapses_usage_records() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let mut own = std::collections::HashSet::new();
    for _ in 0..20 {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY_GOOD)
            .header("x-request-id", "same-id-every-time")
            .json(&chat_body("chat-a", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-request-id"], "same-id-every-time");
        own.insert(
            r.headers()["x-wharf-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(own.len(), 20, "the gateway's ids are unique");
    let records = poll(
        std::time::Duration::from_secs(10),
        "20 records",
        async || {
            let recs: Vec<Value> = gw
                .read_usage()
                .into_iter()
                .filter(|r| r["client_request_id"] == "same-id-every-time")
                .collect();
            (recs.len() == 20).then_some(recs)
        },
    )
    .await;
    for rec in &records {
        assert!(own.contains(rec["request_id"].as_str().unwrap()), "{rec}");
    }
    // The provider saw the gateway's own id.
    let seen = mock.last_request().unwrap();
    assert!(own.contains(seen.header("x-request-id").unwrap()));
}

#[tokio::test]
async fn broken_chunked_framing_is_a_client_error() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    for size in ["zz", "FFFFFFFFFFFFFFFFFFFF", "-1"] {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_GOOD}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\n{{}}\r\n0\r\n\r\n"
        );
        let out = raw(gw.port, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{size}: {out}");
        let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
        let v: Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("{out}"));
        assert_eq!(v["error"]["code"], "invalid_request_body", "{size}: {out}");
        let id = out
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap()
            .to_string();
        let rec = gw.usage_of(&id).await;
        assert_eq!(rec["status"], 400, "{rec}");
        assert_eq!(rec["outcome"], "denied", "{rec}");
        assert_eq!(rec["denied_by"], "body", "{rec}");
    }
    // In the caller's family envelope.
    let req = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY_GOOD}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
    );
    let out = raw(gw.port, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("{out}"));
    assert_eq!(v["type"], "error", "{out}");
    assert_eq!(v["error"]["code"], "invalid_request_body", "{out}");
    // Still up.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .json(&chat_body("chat-a", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn replays_on_a_reused_connection_can_be_turned_off() {
    let mock = mock().await;
    let gw = gw_with_server(&mock, "retry_on_reused_connection = false", &[]).await;
    let warm = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .json(&chat_body("chat-a", false))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    let before = mock.requests().len();
    let r = post_large_dropped_once(&gw, "no-replay-1").await;
    assert_eq!(r.status(), 502);
    let id = id_of(&r);
    assert_eq!(mock.requests().len(), before + 1, "sent once, not replayed");
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["attempts"].as_array().unwrap().len(), 1, "{rec}");
}

#[tokio::test]
async fn provider_credentials_echoed_upstream_never_reach_the_client() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let cases = [STREAMS[0], STREAMS[4], STREAMS[5], STREAMS[6], STREAMS[1]];
    for case in cases {
        for status in ["401", "500", ""] {
            let path = case
                .path
                .replace(":streamGenerateContent?alt=sse", ":generateContent");
            let mut rb = client()
                .post(gw.url(&path))
                .bearer_auth(KEY_GOOD)
                .header("x-mock-echo-auth", "1")
                .json(&case.body(false));
            if !status.is_empty() {
                rb = rb.header("x-mock-status", status);
            }
            let r = rb.send().await.unwrap();
            let what = format!("{} {status}", case.name);
            if !status.is_empty() {
                assert_eq!(r.status().as_str(), status, "{what}");
            }
            for (k, v) in r.headers() {
                let v = v.to_str().unwrap_or_default();
                assert!(!v.contains(PROVIDER_KEY), "{what}: header {k}: {v}");
            }
            let echoed = r.headers().get("x-mock-echo-authorization").cloned();
            let body = r.text().await.unwrap();
            assert!(!body.contains(PROVIDER_KEY), "{what}: {body}");
            if let Some(e) = echoed {
                assert!(e.to_str().unwrap().contains("*****"), "{what}: {e:?}");
            }
            if !status.is_empty() {
                assert!(body.contains("*****"), "{what}: the echo is masked: {body}");
            }
        }
    }
}

/// A request written as raw HTTP/1.1 with a JSON body.
fn raw_chat(key: &str) -> String {
    let body = chat_body("chat-a", false).to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The status lines and `connection` headers of the answers in `out`, in order.
fn answers(out: &str) -> Vec<(String, Option<String>)> {
    out.split("HTTP/1.1 ")
        .skip(1)
        .map(|a| {
            let status = a[..3].to_string();
            let conn = a.lines().take_while(|l| !l.is_empty()).find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("connection: ")
                    .map(str::to_string)
            });
            (status, conn)
        })
        .collect()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let three = raw_chat(KEY_GOOD).repeat(3);
    let close =
        "POST /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    let out = raw(gw.port, format!("{three}{close}").as_bytes()).await;
    let got = answers(&out);
    let statuses: Vec<&str> = got.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(statuses, ["200", "200", "200", "405"], "{out}");

    // A denial before the body was read ends the connection, and says so first.
    let mixed = format!(
        "{}{}{}",
        raw_chat(KEY_GOOD),
        raw_chat("wharf-no-such-key"),
        raw_chat(KEY_GOOD)
    );
    let out = raw(gw.port, mixed.as_bytes()).await;
    let got = answers(&out);
    assert_eq!(got.len(), 2, "{out}");
    assert_eq!(got[0].0, "200", "{out}");
    assert_eq!(
        got[1],
        ("401".to_string(), Some("close".to_string())),
        "{out}"
    );
}
