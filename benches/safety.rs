//! Criterion: SafetySec scan throughput on prompt-like text (target ≥ 300 MB/s per core), whole-text
//! redaction, the full text check (detectors + injection heuristics) and the stream redactor fed
//! 16-byte deltas.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wharf::safety::detect::{DetectorOptions, Detectors, KindSet};
use wharf::safety::{redact, SafetyConfig, SafetySec, StreamRedactor};

/// About 256 KiB of prompt-like text: prose, a code snippet, numbers, a URL, identifiers, and a
/// few secrets and PII here and there (one paragraph in eight has one).
fn prompt_text() -> String {
    let paragraphs = [
        "You are a helpful assistant for the Acme engineering team. Answer concisely, cite the \
         relevant section of the handbook, and ask a clarifying question when the request is \
         ambiguous. The user is working on the billing service (version 2.14.3) and wants to \
         understand why invoices created on 2024-03-15 were rounded differently.\n",
        "Here is the function they are looking at:\n```rust\nfn round_invoice(total_cents: i64, \
         rate: f64) -> i64 {\n    let taxed = (total_cents as f64) * (1.0 + rate);\n    \
         taxed.round() as i64\n}\n```\nThe tests in billing/tests/rounding.rs pass locally but \
         fail in CI with 12 of 1,024 cases off by one cent.\n",
        "The documentation at https://docs.example.com/billing/rounding-rules explains that \
         half-even rounding was introduced in March. Our dashboards show 3.2 million invoices \
         per month, with a p99 latency of 180 ms for the create_invoice endpoint.\n",
        "Summarise the discussion below in three bullet points, then propose a fix and a test \
         that would have caught the regression before it reached production. Keep the tone \
         friendly and avoid jargon where a plain word will do.\n",
        "Meeting notes: Priya said the migration ran at 02:00 UTC; Tom confirmed the feature \
         flag billing.half_even was enabled for 40% of accounts; nobody checked the legacy \
         export job, which still uses the old formula. Action items were assigned to both.\n",
        "Customer ticket #48213: the customer reports that their March invoice shows 1,299.99 \
         instead of 1,300.00. They attached a screenshot and asked for a corrected PDF by \
         Friday. The account is on the enterprise plan with net-30 terms.\n",
        "Config excerpt: retries = 3, timeout_ms = 2500, region = \"eu-west-1\", \
         queue = \"invoices-high-priority\", batch_size = 500. The worker pool has 16 threads \
         and the database connection pool allows 32 connections.\n",
        "Contact the on-call engineer at oncall.billing@example.com or +1 415 555 0132 if the \
         job fails again; the staging key sk-proj-Ab3De5Gh7Jk9Mn1Pq3St5Vw7Yz9Bc1Df3 must be \
         rotated after the incident review.\n",
    ];
    let mut out = String::new();
    while out.len() < 256 * 1024 {
        for p in paragraphs {
            out.push_str(p);
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let text = prompt_text();
    let det = Arc::new(Detectors::new(DetectorOptions::default()).expect("detectors"));
    let engine = SafetySec::new(&SafetyConfig::default()).expect("engine");

    let mut g = c.benchmark_group("safety");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("scan", |b| b.iter(|| black_box(det.scan(black_box(&text)))));
    g.bench_function("redact", |b| {
        b.iter(|| black_box(redact(&det, black_box(&text), KindSet::all())))
    });
    g.bench_function("check_text", |b| {
        b.iter(|| black_box(engine.check_text(black_box(&text))))
    });
    g.bench_function("stream_16b_deltas", |b| {
        b.iter(|| {
            let mut s = StreamRedactor::new(det.clone(), KindSet::all(), 4096);
            let mut n = 0;
            for chunk in text.as_bytes().chunks(16) {
                // The text is ASCII, so every 16-byte chunk is a str.
                n += s.push(std::str::from_utf8(chunk).unwrap_or_default()).len();
            }
            n += s.finish().len();
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
