//! Soak: a bounded mixed workload through a real gateway — unary, streaming, failover, gateway
//! denials, rate limits, clients that vanish mid-stream, MCP tool calls (allowed and refused
//! by a guardrail), and the provider faults (a stream cut, ended early, or ended by an error
//! event; an Anthropic stream cut before its final usage) once per cycle — reporting
//! throughput, p99 latency, RSS over time and usage-record completeness. Memory must stay flat,
//! every answered request must leave exactly one usage record, and each faulted request must be
//! billed exactly the output tokens that passed before the fault.
//!
//! `SOAK_SECONDS` sets the duration (default 12: the short run of `make test`); `make soak` runs
//! it for longer in release mode and prints the report.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY_SOAK: &str = "wharf-test-soak";
const KEY_SOAK_LIMITED: &str = "wharf-test-soak-limited";

#[derive(Default)]
struct Stats {
    ids: HashSet<String>,
    latencies_us: Vec<u64>,
    unexpected: Vec<String>,
    /// Request id → the output tokens its record must bill (streams, faulted or not).
    expected_output: HashMap<String, u64>,
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A streamable-HTTP MCP server answering every JSON-RPC request with a JSON result (no
/// session); its endpoint URL.
async fn mcp_upstream() -> String {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let id = serde_json::from_slice::<serde_json::Value>(&body)
                            .map(|v| v["id"].clone())
                            .unwrap_or_default();
                        let answer = json!({"jsonrpc": "2.0", "id": id,
                            "result": {"content": [{"type": "text", "text": "ok"}]}});
                        Ok::<_, hyper::Error>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(bytes::Bytes::from(answer.to_string())))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/mcp")
}

/// One MCP `tools/call` through the gateway: `echo` is allowed, `rm` is refused by the
/// server's guardrail (403).
async fn mcp_call(
    c: &reqwest::Client,
    gw_url: &str,
    tool: &str,
    i: usize,
) -> reqwest::Result<reqwest::Response> {
    c.post(format!("{gw_url}/v1/mcp/soak-tools"))
        .bearer_auth(KEY_SOAK)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                      "params": {"name": tool, "arguments": {"text": format!("soak {i}")}}}))
        .send()
        .await
}

/// What the usage file holds, read line by line: a long soak writes millions of records, too
/// many to hold as JSON values at once.
#[derive(Default)]
struct UsageSummary {
    lines: usize,
    ids: HashSet<String>,
    /// Records of MCP requests.
    mcp: usize,
    /// Request ids of MCP records without exactly one MCP call (the first few).
    mcp_bad: Vec<String>,
    /// Request id → billed output tokens.
    output: HashMap<String, u64>,
}

fn usage_summary(path: &std::path::Path) -> UsageSummary {
    use std::io::BufRead;
    let mut s = UsageSummary::default();
    let Ok(f) = std::fs::File::open(path) else {
        return s;
    };
    for line in std::io::BufReader::new(f).lines() {
        let Ok(line) = line else { break };
        let Ok(r) = serde_json::from_str::<serde_json::Value>(&line) else {
            // A line still being written.
            continue;
        };
        s.lines += 1;
        let id = r["request_id"].as_str().unwrap_or_default().to_string();
        if r["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with("/v1/mcp"))
        {
            s.mcp += 1;
            if r["mcp_calls"].as_array().map(Vec::len) != Some(1) && s.mcp_bad.len() < 5 {
                s.mcp_bad.push(id.clone());
            }
        }
        s.output
            .insert(id.clone(), r["tokens"]["output"].as_u64().unwrap_or(0));
        s.ids.insert(id);
    }
    s
}

/// The provider faults of one cycle on the streaming chat worker (with `x-mock-drop-after: 5`
/// the stream carries the role chunk and 4 tokens before the fault).
const FAULTS: [Option<&str>; 4] = [
    None,
    Some("drop-mid-stream"),
    Some("end-early"),
    Some("error-event"),
];

async fn worker(n: usize, gw_url: String, stop: Arc<AtomicBool>, stats: Arc<Mutex<Stats>>) {
    let c = client();
    let mut i = n;
    while !stop.load(Ordering::Relaxed) {
        i += 9;
        let kind = i % 9;
        let (model, stream) = match kind {
            0 | 1 => ("chat-a", false),
            2 => ("chat-a", true),
            3 => ("soak-failover", false),
            4 => ("no-such-model", false),
            6 => ("chat-a", false), // a rate-limited key: 200 or 429
            _ => ("chat-a", true),  // the client vanishes after the first chunk
        };
        let cycle = (i / 9) % 4;
        let fault = if kind == 2 { FAULTS[cycle] } else { None };
        // Every other unary chat request of worker 1 is an Anthropic stream cut after its
        // third content delta, before `message_delta` (3 tokens passed).
        let anthropic_cut = kind == 1 && cycle % 2 == 1;
        let expected = match (kind, fault) {
            (2, Some(_)) => Some(4),
            (2, None) => Some(12),
            _ if anthropic_cut => Some(3),
            _ => None,
        };
        // Pingora closes the client's connection after an upstream failure mid-stream (the
        // answer itself ends cleanly with the error event): faulted requests get a connection
        // of their own so that the close cannot race the worker's next request.
        let own = reqwest::Client::new();
        let c = if fault.is_some_and(|f| f != "end-early" && f != "error-event") || anthropic_cut {
            &own
        } else {
            &c
        };
        let t = Instant::now();
        let r = if anthropic_cut {
            c.post(format!("{gw_url}/v1/messages"))
                .bearer_auth(KEY_SOAK)
                .header("x-mock-tokens", "12")
                .header("x-mock-fault", "drop-mid-stream")
                .header("x-mock-drop-after", "6")
                .json(
                    &json!({"model": "claude", "stream": true, "max_tokens": 100,
                          "messages": [{"role": "user", "content": format!("soak {i}")}]}),
                )
                .send()
                .await
        } else if kind >= 7 {
            mcp_call(c, &gw_url, if kind == 7 { "echo" } else { "rm" }, i).await
        } else {
            c.post(format!("{gw_url}/v1/chat/completions"))
                .bearer_auth(if kind == 6 {
                    KEY_SOAK_LIMITED
                } else {
                    KEY_SOAK
                })
                .header("x-mock-tokens", "12")
                .header("x-mock-itl-ms", if kind == 5 { "30" } else { "1" })
                .header("x-mock-fault", fault.unwrap_or("none"))
                .header("x-mock-drop-after", "5")
                .json(&json!({"model": model, "stream": stream,
                          "messages": [{"role": "user", "content": format!("soak {i}")}]}))
                .send()
                .await
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                stats.lock().unwrap().unexpected.push(format!("send: {e}"));
                continue;
            }
        };
        let status = r.status().as_u16();
        let id = r
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let want = match kind {
            4 => 400,
            6 if status == 429 => 429,
            8 => 403,
            _ => 200,
        };
        let ok = if kind == 5 {
            // Read one chunk, then drop the connection.
            let mut r = r;
            r.chunk().await.is_ok()
        } else if fault.is_some() || anthropic_cut {
            // A faulted stream ends with the family's error event, whatever the fault.
            read_to_end(r).await.contains("\"error\"")
        } else {
            r.bytes().await.is_ok()
        };
        let mut s = stats.lock().unwrap();
        if let Some(n) = expected {
            s.expected_output.insert(id.clone(), n);
        }
        if status != want || !ok || id.is_empty() {
            s.unexpected.push(format!(
                "kind {kind} ({model} stream={stream}): status {status}, body ok {ok}"
            ));
        }
        s.latencies_us.push(t.elapsed().as_micros() as u64);
        s.ids.insert(id);
    }
}

#[tokio::test]
async fn soak_mixed_workload_memory_flat_and_usage_complete() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mock = mock().await;
    let m = mock.addr().to_string();
    let mcp = mcp_upstream().await;
    let extra = format!(
        r#"
[[mcp_servers]]
slug = "soak-tools"
url = "{mcp}"
blocked_tools = ["rm"]
pricing = {{ per_call_nanos = 1000, per_input_byte_nanos = 1, per_output_byte_nanos = 1 }}

[routing]
failure_threshold = 1000000

[[providers]]
name = "soak-down"
type = "OPENAI"
base_url = "http://{m}/v1"
api_key_env = "WHARF_TEST_PROVIDER_KEY"
headers = {{ "x-mock-status" = "503" }}

[[models]]
name = "soak-failover"
slug = "up-soak"
provider = "soak-down"
deployments = [{{ provider = "mock", slug = "up-soak-ok" }}]

[[keys]]
id = "key_soak"
hash = "{soak}"
organisation_id = "org_1"
models = ["*"]
mcp_servers = ["soak-tools"]

[[keys]]
id = "key_soak_limited"
hash = "{limited}"
organisation_id = "org_1"
models = ["*"]
policies = {{ ratelimit = {{ requests = {{ per_second = 20 }} }} }}
"#,
        soak = sha(KEY_SOAK),
        limited = sha(KEY_SOAK_LIMITED)
    );
    let gw = Gw::start_custom(
        &mock,
        |port, admin, dir| {
            config_text(&m, port, admin, dir, &extra)
                .replace("log_level = \"warn\"", "log_level = \"error\"")
        },
        &[],
    )
    .await;
    let pid = gw.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(Stats::default()));
    let mut tasks = Vec::new();
    for n in 0..8 {
        tasks.push(tokio::spawn(worker(
            n,
            gw.url("").trim_end_matches('/').to_string(),
            stop.clone(),
            stats.clone(),
        )));
    }
    let start = Instant::now();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push((start.elapsed().as_secs_f64(), rss_kb(pid)));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (ids, mut lat, unexpected, expected_output) = {
        let s = stats.lock().unwrap();
        (
            s.ids.clone(),
            s.latencies_us.clone(),
            s.unexpected.clone(),
            s.expected_output.clone(),
        )
    };
    lat.sort_unstable();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    let usage_path = gw.dir.path().join("usage.jsonl");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut summary = usage_summary(&usage_path);
    while summary.lines < ids.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        summary = usage_summary(&usage_path);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let summary = usage_summary(&usage_path);
    let recorded = &summary.ids;
    // Memory: the mean of the last quarter against the mean after warm-up (second quarter).
    let q = samples.len() / 4;
    let mean = |s: &[(f64, u64)]| s.iter().map(|x| x.1).sum::<u64>() / s.len().max(1) as u64;
    let warm = mean(&samples[q..2 * q]);
    let last = mean(&samples[3 * q..]);
    let rss_line: Vec<String> = samples
        .iter()
        .step_by((samples.len() / 12).max(1))
        .map(|(t, kb)| format!("{t:.0}s:{:.1}MB", *kb as f64 / 1024.0))
        .collect();
    println!(
        "soak {seconds}s: {} requests, {:.0} req/s, p50 {} us, p99 {} us, records {}/{}, RSS {} (warm {:.1} MB → last {:.1} MB)",
        ids.len(),
        ids.len() as f64 / elapsed,
        p(0.5),
        p(0.99),
        recorded.len(),
        ids.len(),
        rss_line.join(" "),
        warm as f64 / 1024.0,
        last as f64 / 1024.0,
    );
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    assert!(ids.len() > 100, "too little traffic: {}", ids.len());
    assert_eq!(summary.lines, ids.len(), "one usage record per request");
    assert!(
        *recorded == ids,
        "usage records must match the requests one to one ({} recorded, {} requests)",
        recorded.len(),
        ids.len()
    );
    // Streams, faulted or not, bill exactly the output tokens that passed.
    let misbilled: Vec<String> = expected_output
        .iter()
        .filter(|(id, n)| summary.output.get(*id) != Some(n))
        .take(5)
        .map(|(id, n)| format!("{id}: billed {:?}, produced {n}", summary.output.get(id)))
        .collect();
    assert!(
        expected_output.len() >= 8,
        "too few streams checked: {}",
        expected_output.len()
    );
    assert!(misbilled.is_empty(), "misbilled streams: {misbilled:?}");
    // Every MCP request (one tools/call each) carries exactly one MCP call record.
    assert!(summary.mcp > 0, "no MCP traffic recorded");
    assert!(
        summary.mcp_bad.is_empty(),
        "MCP records without their one call: {:?}",
        summary.mcp_bad
    );
    assert!(
        last <= warm + warm / 5 + 8 * 1024,
        "memory grew: {warm} kB after warm-up, {last} kB at the end"
    );
}
