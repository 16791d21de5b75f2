//! One filter call per request for the shipped example filters (target: ≤ 20 µs each), plus
//! the built-in `pii_mask`, on a typical chat request.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};
use std::path::PathBuf;
use wharf::filters::lua::{Limits, LuaFilter, Script};
use wharf::filters::{Filter, Phase, Request};

fn request() -> Request {
    Request {
        route: "/v1/chat/completions",
        request_id: "0123456789abcdef0123456789abcdef".into(),
        organisation_id: "org_1".into(),
        team_id: Some("team_1".into()),
        key_id: "key_1".into(),
        model: "fast".into(),
        body: Some(json!({
            "model": "fast",
            "temperature": 0.7,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant that answers briefly."},
                {"role": "user", "content": "Summarise the plot of Hamlet in three sentences, please."}
            ]
        })),
        headers: [
            ("content-type", "application/json"),
            ("user-agent", "openai-python/1.40.0"),
            ("accept", "application/json"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Default::default()
    }
}

fn example(name: &str, vars: Value) -> LuaFilter {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("filters/examples")
        .join(name);
    let s = match Script::load(name, &path, Limits::default(), vars) {
        Ok(s) => s,
        Err(e) => panic!("{name}: {e}"),
    };
    let phases = s.phases();
    LuaFilter::new(s, phases)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("filter_call");
    let cases = [
        (
            "header_inject",
            Phase::PreUpstream,
            example("header_inject.lua", json!({"tenant": "acme"})),
        ),
        (
            "model_alias",
            Phase::PreRoute,
            example("model_alias.lua", json!({"team_1": {"fast": "chat-b"}})),
        ),
        (
            "keyword_block",
            Phase::PreRoute,
            example(
                "keyword_block.lua",
                json!({"words": ["project-x", "codename"]}),
            ),
        ),
        (
            "request_tag",
            Phase::PreRoute,
            example("request_tag.lua", Value::Null),
        ),
    ];
    let base = request();
    for (name, phase, f) in &cases {
        g.bench_function(*name, |b| {
            b.iter_batched_ref(
                || base.clone(),
                |r| black_box(f.on_request(*phase, r, true)),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    let pii = match wharf::filters::builtin::PiiMask::new(
        toml::from_str("").unwrap_or_else(|e| panic!("{e}")),
    ) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    g.bench_function("pii_mask_builtin", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |r| black_box(pii.on_request(Phase::PreUpstream, r, true)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
