//! Criterion: unified-endpoint translation. Stream translation is measured per upstream event
//! (Anthropic and Gemini recorded streams, plus the OpenAI passthrough for reference), fed in
//! network-sized chunks; `prepare` is measured on a typical chat request for each target.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wharf::translate::{prepare, StreamTranslator, Target};

const ANTHROPIC: &str = include_str!("../tests/fixtures/anthropic_stream.sse");
const ANTHROPIC_TOOL: &str = include_str!("../tests/fixtures/anthropic_tool_stream.sse");
const GEMINI: &str = include_str!("../tests/fixtures/gemini_stream.sse");
const OPENAI: &str = include_str!("../tests/fixtures/openai_chat_stream.sse");

/// Upstream events in an SSE text (LF or CRLF framing).
fn event_count(s: &str) -> u64 {
    s.replace("\r\n", "\n").matches("\n\n").count() as u64
}

fn chunked(s: &str, size: usize) -> Vec<Bytes> {
    s.as_bytes()
        .chunks(size)
        .map(Bytes::copy_from_slice)
        .collect()
}

fn streams(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate_stream");
    for (name, target, fixture) in [
        ("anthropic_text", Target::Anthropic, ANTHROPIC),
        ("anthropic_tool", Target::Anthropic, ANTHROPIC_TOOL),
        ("gemini_text", Target::Gemini, GEMINI),
        ("openai_passthrough", Target::OpenAi, OPENAI),
    ] {
        // Throughput in upstream events: criterion reports the time per event.
        g.throughput(Throughput::Elements(event_count(fixture)));
        for size in [256usize, 16 * 1024] {
            let chunks = chunked(fixture, size);
            g.bench_with_input(BenchmarkId::new(name, size), &chunks, |b, chunks| {
                let mut out = BytesMut::with_capacity(16 * 1024);
                b.iter(|| {
                    out.clear();
                    let mut t = StreamTranslator::new(target, "wharf-model", true);
                    for c in chunks {
                        t.feed(c, &mut out);
                    }
                    t.finish(&mut out);
                    out.len()
                })
            });
        }
    }
    g.finish();
}

/// A typical unified request: system prompt, a short history, one tool, streaming.
fn typical_request() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "wharf-chat",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": "What's the weather like in Paris today?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":21,\"sky\":\"clear\"}"},
            {"role": "user", "content": "lorem ipsum ".repeat(100)}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}}],
        "temperature": 0.2,
        "max_tokens": 512,
        "stream": true,
        "include_usage": true
    }))
    .expect("request JSON")
}

fn prepare_bench(c: &mut Criterion) {
    let req = typical_request();
    let mut g = c.benchmark_group("translate_prepare");
    g.throughput(Throughput::Bytes(req.len() as u64));
    for (name, target) in [
        ("openai", Target::OpenAi),
        ("anthropic", Target::Anthropic),
        ("gemini", Target::Gemini),
    ] {
        g.bench_with_input(BenchmarkId::from_parameter(name), &req, |b, req| {
            b.iter(|| {
                prepare(target, req, "upstream-slug")
                    .expect("prepare")
                    .body
                    .len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, streams, prepare_bench);
criterion_main!(benches);
