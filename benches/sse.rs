//! Criterion: the SSE framer and the usage tap on a recorded OpenAI chat stream.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wharf::proxy::tap::{ResponseTap, TapMode};
use wharf::sse::SseParser;

const CHAT: &str = include_str!("../tests/fixtures/openai_chat_stream.sse");

fn chunked(size: usize) -> Vec<Bytes> {
    CHAT.as_bytes()
        .chunks(size)
        .map(Bytes::copy_from_slice)
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Bytes(CHAT.len() as u64));
    for size in [64usize, 512, 8192] {
        let chunks = chunked(size);
        g.bench_with_input(BenchmarkId::new("framer", size), &chunks, |b, chunks| {
            b.iter(|| {
                let mut p = SseParser::new();
                let mut n = 0usize;
                for c in chunks {
                    p.feed(c, |_| n += 1);
                }
                n
            })
        });
        for (name, strip) in [("tap_passthrough", false), ("tap_strip_usage", true)] {
            g.bench_with_input(BenchmarkId::new(name, size), &chunks, |b, chunks| {
                b.iter(|| {
                    let mut t = ResponseTap::new(TapMode::Sse {
                        strip_usage_chunk: strip,
                    });
                    for c in chunks {
                        let mut body = Some(c.clone());
                        t.on_chunk(&mut body, false);
                    }
                    t.on_chunk(&mut None, true);
                    t.tokens
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
