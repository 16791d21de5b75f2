//! MCP tool-call round trip through Wharf versus direct, in one run (streamable HTTP).
//!
//! An in-process MCP endpoint answers `tools/call` with a small JSON result; a release
//! `wharf` process fronts it at `/v1/mcp/bench` (guardrails and per-call pricing on, as in
//! production). The same keep-alive client calls the server directly and through Wharf, in
//! alternating rounds; criterion reports both, and a percentile table (p50, p90, p99 and the
//! p50 Wharf adds) follows. Target: at most 0.3 ms added at p50.
//!
//! `cargo bench --bench mcp` (or `make bench`).
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "wharf-bench-mcp";

/// A minimal streamable-HTTP MCP endpoint: answers every POST with the JSON-RPC result of a
/// tool call (same id), `application/json`.
async fn upstream() -> u16 {
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = listener.accept().await else {
                return;
            };
            let _ = io.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    use http_body_util::BodyExt;
                    let body = req.into_body().collect().await?.to_bytes();
                    let id = serde_json::from_slice::<Value>(&body)
                        .map(|v| v["id"].clone())
                        .unwrap_or(Value::Null);
                    let out = json!({"jsonrpc": "2.0", "id": id,
                        "result": {"content": [{"type": "text", "text": "ok"}], "isError": false}})
                    .to_string();
                    Ok::<_, hyper::Error>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .header("mcp-session-id", "bench-session")
                            .body(http_body_util::Full::new(bytes::Bytes::from(out)))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    port
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Gateway {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway(upstream: u16, port: u16) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let d = dir.path().display();
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
threads = 2
log_level = "error"
pid_file = "{d}/wharf.pid"
upgrade_sock = "{d}/upgrade.sock"

[usage]
path = "{d}/usage.jsonl"

[[keys]]
id = "bench"
hash = "{hash}"
organisation_id = "org_bench"
mcp_servers = ["bench"]

[[mcp_servers]]
slug = "bench"
url = "http://127.0.0.1:{upstream}/mcp"
blocked_tools = ["rm"]
keywords = ["drop table"]
pricing = {{ per_call_nanos = 1000, per_output_byte_nanos = 1 }}
"#,
        hash = wharf::keys::KeyHash::of(KEY).to_hex(),
    );
    std::fs::write(dir.path().join("wharf.toml"), cfg).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "-c"])
        .arg(dir.path().join("wharf.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "wharf did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Gateway { child, _dir: dir }
}

fn call_body(id: u64) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hello"}}})
    .to_string()
    .into_bytes()
}

async fn round_trip(client: &reqwest::Client, url: &str, auth: bool, id: u64) {
    let mut r = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", "bench-session")
        .body(call_body(id));
    if auth {
        r = r.bearer_auth(KEY);
    }
    let resp = r.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.unwrap();
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let up = rt.block_on(upstream());
    let port = free_port();
    let _gw = gateway(up, port);
    let direct = format!("http://127.0.0.1:{up}/mcp");
    let through = format!("http://127.0.0.1:{port}/v1/mcp/bench");
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4)
        .build()
        .unwrap();
    // Warm both paths (connections, caches).
    rt.block_on(async {
        for i in 0..500 {
            round_trip(&client, &direct, false, i).await;
            round_trip(&client, &through, true, i).await;
        }
    });

    let mut g = c.benchmark_group("mcp_tools_call");
    let mut id = 0u64;
    g.bench_function("direct", |b| {
        b.iter(|| {
            id += 1;
            rt.block_on(round_trip(&client, &direct, false, id))
        })
    });
    g.bench_function("through_wharf", |b| {
        b.iter(|| {
            id += 1;
            rt.block_on(round_trip(&client, &through, true, id))
        })
    });
    g.finish();

    // Percentiles, measured in alternating rounds so that both see the same machine load.
    let (mut d, mut w) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for round in 0..40u64 {
            for i in 0..100u64 {
                let t = Instant::now();
                round_trip(&client, &direct, false, round * 100 + i).await;
                d.push(t.elapsed().as_secs_f64() * 1e3);
            }
            for i in 0..100u64 {
                let t = Instant::now();
                round_trip(&client, &through, true, round * 100 + i).await;
                w.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    });
    d.sort_by(f64::total_cmp);
    w.sort_by(f64::total_cmp);
    println!("\nMCP tools/call round trip, {} calls each (ms):", d.len());
    println!("| path | p50 | p90 | p99 |");
    println!("|---|---|---|---|");
    for (name, v) in [("direct", &d), ("through Wharf", &w)] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} |",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99)
        );
    }
    println!(
        "added by Wharf at p50: {:.3} ms (target <= 0.300)",
        pct(&w, 0.5) - pct(&d, 0.5)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
