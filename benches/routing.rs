//! Criterion: the cost of `Router::plan` for each strategy over four deployments.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use wharf::routing::{Deployment, Router, RouterConfig, Strategy};

const STRATEGIES: [(&str, Strategy); 5] = [
    ("failover", Strategy::Failover),
    ("round_robin", Strategy::RoundRobin),
    ("weighted", Strategy::Weighted),
    ("least_latency", Strategy::LeastLatency),
    ("least_busy", Strategy::LeastBusy),
];

fn router() -> Router {
    let deployments = (0..4)
        .map(|id| Deployment {
            id,
            weight: 1 + id as u32,
            priority: (id % 2) as u32,
        })
        .collect();
    let r = Router::new(
        deployments,
        RouterConfig {
            seed: Some(7),
            ..RouterConfig::default()
        },
    );
    let now = Instant::now();
    for id in 0..4 {
        r.record_success(id, Duration::from_millis(100 + 20 * id as u64), now);
    }
    r
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing_plan");
    let r = router();
    let now = Instant::now();
    for (name, strategy) in STRATEGIES {
        g.bench_with_input(BenchmarkId::new("healthy", name), &strategy, |b, s| {
            b.iter(|| black_box(r.plan(*s, black_box("key"), &[], now)))
        });
    }
    // One deployment ejected and one already tried: the circuit slow path and the exclude filter.
    let degraded = router();
    for _ in 0..5 {
        degraded.record_failure(3, None, now);
    }
    for (name, strategy) in STRATEGIES {
        g.bench_with_input(BenchmarkId::new("degraded", name), &strategy, |b, s| {
            b.iter(|| black_box(degraded.plan(*s, black_box("key"), &[0], now)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
