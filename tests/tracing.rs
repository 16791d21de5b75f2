//! OpenTelemetry traces through a small OTLP/HTTP receiver: spans for the request and its stages,
//! joined to the client's `traceparent`, the trace id in the usage record and the access log,
//! and sampling.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An OTLP/HTTP receiver: keeps every JSON body posted to it.
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
}

async fn receiver() -> Receiver {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let b = bodies.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let b = b.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: headers, then Content-Length bytes.
                    let (head_len, cl) = loop {
                        let mut headers = [httparse::EMPTY_HEADER; 32];
                        let mut req = httparse::Request::new(&mut headers);
                        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                            assert_eq!(req.path, Some("/v1/traces"));
                            let ct = req
                                .headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case("content-type"))
                                .map(|h| String::from_utf8_lossy(h.value).to_string());
                            assert_eq!(ct.as_deref(), Some("application/json"));
                            let cl = req
                                .headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                                .map(|h| String::from_utf8_lossy(h.value).parse::<usize>().unwrap())
                                .unwrap_or(0);
                            break (n, cl);
                        }
                        let mut chunk = [0u8; 8192];
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    };
                    while buf.len() < head_len + cl {
                        let mut chunk = [0u8; 8192];
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body: Value =
                        serde_json::from_slice(&buf[head_len..head_len + cl]).unwrap();
                    b.lock().unwrap().push(body);
                    buf.drain(..head_len + cl);
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                        .await
                        .unwrap();
                }
            });
        }
    });
    Receiver { port, bodies }
}

impl Receiver {
    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for b in self.bodies.lock().unwrap().iter() {
            for rs in b["resourceSpans"].as_array().unwrap() {
                assert_eq!(
                    rs["resource"]["attributes"][0]["value"]["stringValue"],
                    "wharf-test"
                );
                for ss in rs["scopeSpans"].as_array().unwrap() {
                    out.extend(ss["spans"].as_array().unwrap().iter().cloned());
                }
            }
        }
        out
    }

    async fn spans_of(&self, trace_id: &str, at_least: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["traceId"] == trace_id)
                .collect();
            if s.len() >= at_least {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "only {} spans for {trace_id}: {s:#?}",
                s.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

async fn start(mock: &wharf_mock::MockServer, rx: &Receiver, ratio: f64) -> Gw {
    let m = mock.addr().to_string();
    let extra = format!(
        r#"
[telemetry]
otlp_endpoint = "http://127.0.0.1:{}/v1/traces"
sample_ratio = {ratio}
service_name = "wharf-test"

[[models]]
name = "fo"
slug = "fo-a"
provider = "dead"
deployments = [{{ provider = "mock", slug = "fo-b" }}]
"#,
        rx.port
    );
    Gw::start_custom(
        mock,
        |port, admin, dir| {
            config_text(&m, port, admin, dir, &extra)
                .replace(
                    r#"models = ["chat-a", "chat-b","#,
                    r#"models = ["fo", "chat-a", "chat-b","#,
                )
                .replace("log_level = \"warn\"", "log_level = \"info\"")
        },
        &[],
    )
    .await
}

#[tokio::test]
async fn spans_cover_the_request_and_join_the_clients_trace() {
    let mock = mock().await;
    let rx = receiver().await;
    let gw = start(&mock, &rx, 1.0).await;

    // A streaming request that fails over, inside the client's trace.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .json(&chat_body("fo", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let _ = r.text().await.unwrap();

    let spans = rx.spans_of(trace, 7).await;
    let by_name = |n: &str| spans.iter().find(|s| s["name"] == n).cloned();
    let root = by_name("POST /v1/chat/completions").expect("root span");
    assert_eq!(root["parentSpanId"], parent, "joined to the client's span");
    assert_eq!(root["kind"], 2);
    assert_eq!(attr(&root, "wharf.request_id").unwrap()["stringValue"], id);
    assert_eq!(
        attr(&root, "http.response.status_code").unwrap()["intValue"],
        "200"
    );
    assert_eq!(attr(&root, "wharf.attempts").unwrap()["intValue"], "2");
    for stage in ["auth", "body.read", "route", "stream", "usage.write"] {
        let s = by_name(stage).unwrap_or_else(|| panic!("no {stage} span: {spans:#?}"));
        assert_eq!(s["parentSpanId"], root["spanId"], "{stage}");
        let (a, b) = (
            s["startTimeUnixNano"]
                .as_str()
                .unwrap()
                .parse::<u128>()
                .unwrap(),
            s["endTimeUnixNano"]
                .as_str()
                .unwrap()
                .parse::<u128>()
                .unwrap(),
        );
        assert!(a <= b, "{stage}");
    }
    let dead = by_name("upstream dead").expect("failed attempt span");
    assert_eq!(
        attr(&dead, "wharf.error_class").unwrap()["stringValue"],
        "connect"
    );
    assert_eq!(dead["status"]["code"], 2);
    let ok = by_name("upstream mock").expect("answering attempt span");
    assert_eq!(ok["kind"], 3);
    assert_eq!(
        attr(&ok, "http.response.status_code").unwrap()["intValue"],
        "200"
    );

    // The trace id is in the usage record and the access log.
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["trace_id"], trace);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.log().contains(trace) {
        assert!(
            Instant::now() < deadline,
            "trace id not logged: {}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without a traceparent the trace id is the request id; a denial is traced too.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("wrong-key")
        .json(&chat_body("chat-a", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let spans = rx.spans_of(&id, 3).await;
    let root = spans
        .iter()
        .find(|s| s.get("parentSpanId").is_none())
        .unwrap();
    assert_eq!(
        attr(root, "wharf.denied_by").unwrap()["stringValue"],
        "auth"
    );
    assert_eq!(gw.usage_of(&id).await["trace_id"], id.as_str());
}

#[tokio::test]
async fn sampling_ratio_zero_exports_nothing_unless_the_client_samples() {
    let mock = mock().await;
    let rx = receiver().await;
    let gw = start(&mock, &rx, 0.0).await;
    for _ in 0..5 {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY_GOOD)
            .json(&chat_body("chat-a", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // The client's sampled flag wins over the ratio.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .json(&chat_body("chat-a", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    rx.spans_of(trace, 3).await;
    assert!(
        rx.spans().iter().all(|s| s["traceId"] == trace),
        "unsampled requests were exported"
    );
}
