//! Zero-downtime binary upgrade under load: a new process started with `--upgrade` takes the
//! listening sockets over from the old one (SIGQUIT), which drains its in-flight requests. No
//! request may fail and no stream may be cut, and every request leaves exactly one usage record.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    cut: AtomicUsize,
    resent: AtomicUsize,
}

/// Sends like an SDK does: a request whose connection closed before any response byte (the old
/// process closes its idle keep-alive connections, and drops a connection it accepted but had not
/// read yet, when it stops) is sent once more. Such a request never reached the gateway's request
/// handling, so it leaves no usage record. Anything else is a failure.
async fn send(
    rb: impl Fn() -> reqwest::RequestBuilder,
    t: &Tally,
) -> Result<reqwest::Response, reqwest::Error> {
    match rb().send().await {
        Err(e) if e.is_request() && !e.is_timeout() => {
            t.resent.fetch_add(1, Ordering::Relaxed);
            rb().send().await
        }
        other => other,
    }
}

async fn unary_worker(url: String, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let c = client();
    while !stop.load(Ordering::Relaxed) {
        let r = send(
            || {
                c.post(&url)
                    .bearer_auth(KEY_GOOD)
                    .json(&chat_body("chat-a", false))
            },
            &t,
        )
        .await;
        match r {
            Ok(r) if r.status() == 200 => match r.json::<serde_json::Value>().await {
                Ok(_) => {
                    t.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    eprintln!("unary body failed: {e}");
                    t.failed.fetch_add(1, Ordering::Relaxed);
                }
            },
            Ok(r) => {
                eprintln!("unary failed: {}", r.status());
                t.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("unary failed: {e:?}");
                t.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn stream_worker(url: String, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let c = client();
    while !stop.load(Ordering::Relaxed) {
        let r = send(
            || {
                c.post(&url)
                    .bearer_auth(KEY_GOOD)
                    .header("x-mock-tokens", "20")
                    .header("x-mock-itl-ms", "40")
                    .json(&json!({"model": "chat-a", "stream": true,
                                  "messages": [{"role": "user", "content": "a long answer"}]}))
            },
            &t,
        )
        .await;
        let body = match r {
            Ok(r) if r.status() == 200 => r.text().await,
            Ok(r) => {
                eprintln!("stream failed: {}", r.status());
                t.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) => {
                eprintln!("stream failed: {e:?}");
                t.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        match body {
            Ok(b) if sse_data(&b).last().map(String::as_str) == Some("[DONE]") => {
                t.ok.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                eprintln!("stream cut: {other:?}");
                t.cut.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::test]
async fn upgrade_under_load_drops_nothing() {
    let mock = mock().await;
    // Streams in flight get the grace period to finish (a short one makes a slow machine cut
    // them, which is what this test is about).
    let m = mock.addr().to_string();
    let gw = Gw::start_custom(
        &mock,
        |port, admin, dir| {
            config_text(&m, port, admin, dir, "")
                .replace("grace_period_seconds = 1", "grace_period_seconds = 4")
        },
        &[],
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(unary_worker(
            url.clone(),
            stop.clone(),
            tally.clone(),
        )));
        tasks.push(tokio::spawn(stream_worker(
            url.clone(),
            stop.clone(),
            tally.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = tally.ok.load(Ordering::Relaxed);
    assert!(before > 0, "no traffic before the upgrade");

    // The new binary waits for the sockets; the old one hands them over on SIGQUIT.
    let mut next = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--upgrade", "-c"])
        .arg(gw.config_path())
        .env("WHARF_TEST_PROVIDER_KEY", PROVIDER_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(gw.dir.path().join("next.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old_pid = gw.child.id();
    gw.signal("QUIT");

    // The old process drains and exits on its own.
    let t = Instant::now();
    loop {
        let alive = Command::new("kill")
            .args(["-0", &old_pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        // A zombie still answers kill -0; `ps` tells an exited one apart.
        let state = Command::new("ps")
            .args(["-o", "stat=", "-p", &old_pid.to_string()])
            .output()
            .unwrap();
        let zombie = String::from_utf8_lossy(&state.stdout)
            .trim()
            .starts_with('Z');
        if !alive || zombie {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the old process did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = tally.ok.load(Ordering::Relaxed);
    // The new process keeps serving.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let cut = tally.cut.load(Ordering::Relaxed);
    let next_log = std::fs::read_to_string(gw.dir.path().join("next.log")).unwrap_or_default();
    eprintln!(
        "upgrade under load: {ok} answered, {} resent after a closed idle connection",
        tally.resent.load(Ordering::Relaxed)
    );
    assert_eq!(failed, 0, "failed requests; new process log: {next_log}");
    assert_eq!(cut, 0, "cut streams");
    assert!(ok > during, "the new process served nothing: {next_log}");
    // Both processes wrote their records: one per request.
    gw.usage(ok).await;
    let _ = next.kill();
    let _ = next.wait();
}
