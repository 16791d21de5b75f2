//! Criterion: request body inspection and rewrite (model → slug, include_usage) against a
//! full parse-and-reserialise baseline.
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wharf::proxy::body::{inspect, rewrite, BodyKind};

fn body(content_bytes: usize, stream: bool) -> Vec<u8> {
    let text = "lorem ipsum ".repeat(content_bytes / 12 + 1);
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text}
        ],
        "temperature": 0.2,
        "stream": stream,
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("rewrite");
    for size in [1024usize, 64 * 1024, 1024 * 1024] {
        let b = body(size, true);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_with_input(BenchmarkId::new("inspect_and_splice", size), &b, |bn, b| {
            bn.iter(|| {
                let i = inspect(BodyKind::Chat, b).unwrap();
                rewrite(b, &i, "mock-gpt", true)
            })
        });
        g.bench_with_input(
            BenchmarkId::new("value_roundtrip_baseline", size),
            &b,
            |bn, b| {
                bn.iter(|| {
                    let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
                    v["model"] = "mock-gpt".into();
                    v["stream_options"] = serde_json::json!({"include_usage": true});
                    serde_json::to_vec(&v).unwrap()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
