//! Test harness: a real `wharf` process on free ports, in front of an in-process mock provider.
#![allow(dead_code, clippy::unwrap_used)]

pub mod db;
pub mod seed;

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wharf_mock::{MockConfig, MockServer};

/// The provider credential the mock requires and the gateway injects.
pub const PROVIDER_KEY: &str = "sk-provider-secret";

/// Virtual keys of the test configuration.
pub const KEY_GOOD: &str = "wharf-test-good";
pub const KEY_LIMITED: &str = "wharf-test-limited";
pub const KEY_EXPIRED: &str = "wharf-test-expired";
pub const KEY_REVOKED: &str = "wharf-test-revoked";

/// A port nothing listens on now, never handed out before in this test process: the kernel
/// may give the same ephemeral port to two `bind(0)` calls in a row once the first is closed,
/// so ports already handed out are skipped.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.contains(&port) {
            seen.push(port);
            return port;
        }
    }
}

pub fn sha(s: &str) -> String {
    wharf::keys::KeyHash::of(s).to_hex()
}

pub async fn mock() -> MockServer {
    MockServer::start(
        "127.0.0.1:0",
        MockConfig {
            api_key: Some(PROVIDER_KEY.into()),
            ..MockConfig::default()
        },
    )
    .await
    .unwrap()
}

/// The standard test configuration, with `{MOCK}`, `{DEAD}` filled in and `extra` appended.
pub fn config_text(
    mock: &str,
    port: u16,
    admin: u16,
    dir: &std::path::Path,
    extra: &str,
) -> String {
    let dead = free_port();
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
threads = 2
max_request_bytes = 1048576
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 2
log_level = "warn"
config_watch_interval_ms = 200
client_body_timeout_ms = 2000
pid_file = "{dir}/wharf.pid"
upgrade_sock = "{dir}/upgrade.sock"

[usage]
path = "{dir}/usage.jsonl"

[[providers]]
name = "mock"
type = "OPENAI"
base_url = "http://{mock}/v1"
api_key_env = "WHARF_TEST_PROVIDER_KEY"
timeout_ms = 1500
connect_timeout_ms = 1000

[[providers]]
name = "dead"
type = "OPENAI"
base_url = "http://127.0.0.1:{dead}/v1"
api_key_env = "WHARF_TEST_PROVIDER_KEY"
connect_timeout_ms = 500

[[providers]]
name = "anthropic"
type = "ANTHROPIC"
base_url = "http://{mock}"
api_key_env = "WHARF_TEST_PROVIDER_KEY"

[[providers]]
name = "google"
type = "GOOGLE"
base_url = "http://{mock}"
api_key_env = "WHARF_TEST_PROVIDER_KEY"

[[models]]
name = "gem"
slug = "gem-up"
provider = "google"
pricing = {{ input = 1.25, output = 5.0 }}

[[providers]]
name = "vllm"
type = "VLLM"
base_url = "http://{mock}/v1"
api_key_env = "WHARF_TEST_PROVIDER_KEY"

[[models]]
name = "llama"
slug = "llama-up"
provider = "vllm"
pricing = {{ input = 0.1, output = 0.1 }}

[[models]]
name = "img"
slug = "gpt-image-up"
type = "image"
provider = "mock"
pricing = {{ image = 0.04 }}

[[models]]
name = "chat-a"
slug = "up-chat-a"
type = "chat"
provider = "mock"
pricing = {{ input = 0.15, output = 0.60 }}

[[models]]
name = "chat-b"
slug = "up-chat-b"
type = "chat"
provider = "mock"

[[models]]
name = "embed"
slug = "up-embed"
type = "embeddings"
provider = "mock"
pricing = {{ input = 0.02 }}

[[models]]
name = "dead-chat"
slug = "up-dead"
provider = "dead"

[[models]]
name = "claude"
slug = "claude-x"
provider = "anthropic"
pricing = {{ input = 3.0, output = 15.0, cached = 0.3 }}

[[keys]]
id = "key_good"
hash = "{good}"
type = "TEAM"
organisation_id = "org_1"
team_id = "team_1"
models = ["chat-a", "chat-b", "embed", "dead-chat", "claude", "gem", "llama", "img"]

[[keys]]
id = "key_limited"
hash = "{limited}"
type = "USER"
organisation_id = "org_1"
user_id = "user_1"
models = ["chat-a"]

[[keys]]
id = "key_expired"
hash = "{expired}"
organisation_id = "org_1"
expires_at = "2020-01-01T00:00:00Z"
models = ["*"]

[[keys]]
id = "key_revoked"
hash = "{revoked}"
organisation_id = "org_1"
revoked = true
models = ["*"]
{extra}
"#,
        dir = dir.display(),
        good = sha(KEY_GOOD),
        limited = sha(KEY_LIMITED),
        expired = sha(KEY_EXPIRED),
        revoked = sha(KEY_REVOKED),
    )
}

/// A running gateway process.
pub struct Gw {
    pub child: Child,
    pub port: u16,
    pub admin: u16,
    pub dir: tempfile::TempDir,
    pub mock_addr: String,
}

impl Gw {
    pub async fn start(mock: &MockServer) -> Gw {
        Self::start_with(mock, "").await
    }

    pub async fn start_with(mock: &MockServer, extra: &str) -> Gw {
        Self::start_custom(
            mock,
            |port, admin, dir| config_text(&mock.addr().to_string(), port, admin, dir, extra),
            &[],
        )
        .await
    }

    /// A gateway on a configuration built by `text(port, admin_port, dir)`, with extra
    /// environment variables.
    pub async fn start_custom(
        mock: &MockServer,
        text: impl FnOnce(u16, u16, &std::path::Path) -> String,
        env: &[(&str, String)],
    ) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin = free_port();
        let mock_addr = mock.addr().to_string();
        std::fs::write(dir.path().join("wharf.toml"), text(port, admin, dir.path())).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
        cmd.args(["serve", "-c"])
            .arg(dir.path().join("wharf.toml"))
            .env("WHARF_TEST_PROVIDER_KEY", PROVIDER_KEY);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("wharf.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let gw = Gw {
            child,
            port,
            admin,
            dir,
            mock_addr,
        };
        gw.wait_ready().await;
        gw
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let c = reqwest::Client::new();
        loop {
            let ok = c
                .get(format!("http://127.0.0.1:{}/v1/health", self.admin))
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
                && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok();
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin, path)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("wharf.toml")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("wharf.log")).unwrap_or_default()
    }

    pub fn read_usage(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("usage.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until `n` usage records exist, then checks that no more arrive.
    pub async fn usage(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let recs = self.read_usage();
            if recs.len() >= n {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let recs = self.read_usage();
                assert_eq!(
                    recs.len(),
                    n,
                    "expected exactly {n} usage records: {recs:#?}"
                );
                return recs;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} usage records arrived: {recs:#?}",
                recs.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The usage record of one request id.
    pub async fn usage_of(&self, request_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self
                .read_usage()
                .into_iter()
                .find(|r| r["request_id"] == request_id || r["client_request_id"] == request_id)
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no usage record for {request_id}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn chat_body(model: &str, stream: bool) -> Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    })
}

/// `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: ").map(str::to_string))
        })
        .collect()
}

/// Sends raw bytes over a fresh connection and returns the raw response.
pub async fn raw(port: u16, req: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// Polls until `f` holds (every 20 ms); returns how long it took.
pub async fn within<F, Fut>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        assert!(
            t.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

/// Polls `f` (every 50 ms) until it gives a value.
pub async fn poll<T>(within: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway on the standard configuration with `lines` added to its `[server]` table and
/// extra environment variables.
pub async fn gw_with_server(mock: &MockServer, lines: &str, env: &[(&str, String)]) -> Gw {
    let addr = mock.addr().to_string();
    Gw::start_custom(
        mock,
        |port, admin, dir| {
            config_text(&addr, port, admin, dir, "").replace(
                "client_body_timeout_ms = 2000",
                &format!("client_body_timeout_ms = 2000\n{lines}"),
            )
        },
        env,
    )
    .await
}

/// A 200 KiB chat request, sent with `x-mock-fault: close` once (token `once`): the mock drops
/// the pooled connection without answering while the body is sent (the idle-close race).
pub async fn post_large_dropped_once(gw: &Gw, once: &str) -> reqwest::Response {
    let text = "y".repeat(200 * 1024);
    let body = serde_json::json!({"model":"chat-a","messages":[{"role":"user","content":text}]});
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .header("x-mock-fault", "close")
        .header("x-mock-fault-once", once)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A response body to its end, keeping what arrived before a transport error (a stream the
/// gateway or the provider cut).
pub async fn read_to_end(mut r: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(c)) = r.chunk().await {
        body.extend_from_slice(&c);
    }
    String::from_utf8_lossy(&body).into_owned()
}
