//! Criterion: the whole per-request path of the gateway without sockets, phase by phase as
//! Pingora calls them — admission (request id, route, key, body read and rewrite, model,
//! plan), the peer and the upstream head, the provider's answer head and body through the
//! usage tap, and the end of the request (the usage record, metrics) — on an in-memory
//! stream, plus the writer's side of the record (the JSON line).
//!
//! A regression on the request path shows here before it shows in `make bench-load`, which
//! measures the same path with real sockets against the bare passthrough.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use tokio::io::AsyncWriteExt;
use wharf::config;
use wharf::control::State;
use wharf::proxy::Gateway;
use wharf::usage::{UsageRecord, UsageSink};

const CONFIG: &str = r#"
[[providers]]
name = "mock"
type = "OPENAI"
base_url = "http://127.0.0.1:18080"
api_key_env = "WHARF_HOTPATH_PROVIDER_KEY"

[[models]]
name = "bench-model"
slug = "mock-gpt"
type = "chat"
provider = "mock"
pricing = { input = 0.15, output = 0.60 }

[[keys]]
# sha256 of the string "wharf-bench-key"
id = "key_bench"
hash = "82c3f79f977835106a02822499c3be8f5efcca6d6f3389f5c73d0a5917c03543"
type = "ORGANISATION"
organisation_id = "org_bench"
models = ["bench-model"]
"#;

const BODY: &str = r#"{"model":"bench-model","messages":[{"role":"user","content":"Say hello"}]}"#;
const STREAM_BODY: &str =
    r#"{"model":"bench-model","stream":true,"messages":[{"role":"user","content":"Say hello"}]}"#;

/// The mock provider's unary answer (16 tokens), as the load benchmark gets it.
const ANSWER: &str = r#"{"id":"chatcmpl-mock-1","object":"chat.completion","created":1700000000,"model":"mock-gpt","choices":[{"index":0,"message":{"role":"assistant","content":"tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11 tok12 tok13 tok14 tok15"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":16,"total_tokens":25}}"#;

fn request(body: &str) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:18082\r\nAuthorization: Bearer wharf-bench-key\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The provider's SSE answer: a role chunk, `tokens` content chunks, the usage chunk the
/// gateway asked for, `[DONE]`.
fn sse_answer(tokens: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let chunk = |delta: &str| {
        format!("data: {{\"id\":\"chatcmpl-mock-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"mock-gpt\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":null}}],\"usage\":null}}\n\n")
    };
    out.push(Bytes::from(chunk(r#"{"role":"assistant","content":""}"#)));
    for i in 0..tokens {
        out.push(Bytes::from(chunk(&format!(r#"{{"content":"tok{i} "}}"#))));
    }
    out.push(Bytes::from_static(b"data: {\"id\":\"chatcmpl-mock-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"mock-gpt\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":16,\"total_tokens\":25}}\n\n"));
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

struct Bench {
    gw: Gateway,
    rx: tokio::sync::mpsc::Receiver<UsageRecord>,
}

fn gateway() -> Bench {
    std::env::set_var("WHARF_HOTPATH_PROVIDER_KEY", "sk-mock");
    let cfg = config::parse(CONFIG).expect("valid configuration");
    let (sink, rx) = UsageSink::new(1 << 16);
    let mut errors = Vec::new();
    let filters = std::sync::Arc::new(wharf::filters::build(&cfg.filters, &mut errors));
    assert!(errors.is_empty(), "filters: {errors:?}");
    let state = State::new(cfg, filters, String::new(), sink, None);
    Bench {
        gw: Gateway { state },
        rx,
    }
}

/// One request through every phase; `answer` is the provider's head and body chunks.
async fn one(b: &mut Bench, req: &[u8], head: &ResponseHeader, answer: &[Bytes]) -> UsageRecord {
    let gw = &b.gw;
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    client.write_all(req).await.expect("request written");
    let mut s = Session::new_h1(Box::new(server));
    assert!(s.read_request().await.expect("request read"));
    let mut ctx = gw.new_ctx();
    let answered = gw.request_filter(&mut s, &mut ctx).await.expect("admitted");
    assert!(!answered, "the gateway answered itself");
    let peer = gw.upstream_peer(&mut s, &mut ctx).await.expect("peer");
    black_box(&peer);
    let mut up = s.req_header().clone();
    gw.upstream_request_filter(&mut s, &mut up, &mut ctx)
        .await
        .expect("upstream head");
    let mut body = None;
    gw.request_body_filter(&mut s, &mut body, true, &mut ctx)
        .await
        .expect("request body");
    black_box(&body);
    let mut resp = head.clone();
    gw.upstream_response_filter(&mut s, &mut resp, &mut ctx)
        .await
        .expect("answer head");
    gw.response_filter(&mut s, &mut resp, &mut ctx)
        .await
        .expect("client head");
    s.write_response_header(Box::new(resp), false)
        .await
        .expect("head written");
    for (i, chunk) in answer.iter().enumerate() {
        let mut body = Some(chunk.clone());
        gw.response_body_filter(&mut s, &mut body, i + 1 == answer.len(), &mut ctx)
            .expect("answer body");
        black_box(&body);
    }
    gw.logging(&mut s, None, &mut ctx).await;
    drop(ctx);
    b.rx.try_recv().expect("one usage record")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut b = gateway();

    let unary_req = request(BODY);
    let mut unary_head = ResponseHeader::build(200, None).expect("head");
    unary_head
        .insert_header("content-type", "application/json")
        .expect("header");
    unary_head
        .insert_header("content-length", ANSWER.len().to_string())
        .expect("header");
    unary_head
        .insert_header("x-request-id", "req-mock-1")
        .expect("header");
    let unary_answer = vec![Bytes::from_static(ANSWER.as_bytes())];
    c.bench_function("hotpath/unary request, admission to usage record", |bn| {
        bn.iter(|| black_box(rt.block_on(one(&mut b, &unary_req, &unary_head, &unary_answer))))
    });

    let stream_req = request(STREAM_BODY);
    let mut sse_head = ResponseHeader::build(200, None).expect("head");
    sse_head
        .insert_header("content-type", "text/event-stream")
        .expect("header");
    sse_head
        .insert_header("transfer-encoding", "chunked")
        .expect("header");
    let sse = sse_answer(16);
    c.bench_function("hotpath/stream request, 16 events a chunk each", |bn| {
        bn.iter(|| black_box(rt.block_on(one(&mut b, &stream_req, &sse_head, &sse))))
    });

    // The writer's share: one record as its JSON line, into a reused buffer.
    let rec = rt.block_on(one(&mut b, &unary_req, &unary_head, &unary_answer));
    assert_eq!(rec.tokens.total, 25, "the tap read the answer's usage");
    let mut buf = Vec::with_capacity(4096);
    c.bench_function("hotpath/usage record to its JSON line (writer)", |bn| {
        bn.iter(|| {
            buf.clear();
            serde_json::to_writer(&mut buf, black_box(&rec)).expect("serialized");
            buf.push(b'\n');
            black_box(buf.len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
