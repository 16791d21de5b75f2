//! `wharf-mock`: a fast, faithful mock of the OpenAI, Anthropic, Gemini and
//! vLLM HTTP APIs.
//!
//! The mock stands in for real providers in tests, benchmarks and demos. It
//! speaks each provider's wire format (JSON bodies, SSE framing, error
//! envelopes and the usual response headers) over HTTP/1.1 served by hyper,
//! with a small raw-socket layer for the faults that break HTTP on purpose
//! (resets, stalls, bodies cut off), and is light enough never to be the
//! bottleneck of a load test. One server answers every family; the path
//! picks it.
//!
//! # OpenAI (and vLLM's OpenAI-compatible routes)
//!
//! * `POST /v1/chat/completions` (unary and `"stream": true`, with
//!   `stream_options.include_usage`)
//! * `POST /v1/responses` (unary and streaming with named events)
//! * `POST /v1/completions` (legacy text completions: string, string-array
//!   or token-id prompts, `n`, `max_tokens`, `stop`; unary and SSE with
//!   `[DONE]` and `stream_options.include_usage`)
//! * `POST /v1/embeddings` (`float` and `base64` encodings)
//! * `POST /v1/audio/transcriptions`, `POST /v1/audio/translations`
//!   (`multipart/form-data` with `file` and `model`; `response_format` `json`,
//!   `text`, `srt`, `vtt` or `verbose_json`; audio length is taken as one
//!   second per 32,000 bytes)
//! * `POST /v1/images/generations` (JSON) and `POST /v1/images/edits`,
//!   `POST /v1/images/variations` (`multipart/form-data` with `model` and
//!   `image` or `image[]`, plus `prompt` for edits): `data` holds `b64_json`
//!   (a 1x1 PNG) or `url` items and `usage` is billed like gpt-image-1
//! * `GET /v1/models` and `GET /v1/models/{id}`
//!
//! These need `Authorization: Bearer <token>` (checked against
//! [`MockConfig::api_key`] when set). Every answer carries
//! `x-request-id: req_<32 hex>`, `openai-processing-ms` and `openai-version`;
//! errors use OpenAI's `{"error":{"message","type","param","code"}}`.
//! Upload routes also send `x-mock-file-sizes: <field>=<bytes>, ...` listing
//! the files they received.
//!
//! vLLM serves these at the root, without authentication (as vLLM checks the
//! key only under `/v1`):
//!
//! * `POST /tokenize` (`prompt`, or `messages` rendered with a simple chat
//!   template; `{"count","max_model_len","tokens","token_strs"}`) and
//!   `POST /detokenize` (`{"prompt"}`); token ids encode up to four
//!   characters each, so `/detokenize` inverts `/tokenize` exactly
//! * `POST /pooling`, `POST /classify`, `POST /score` (also `/v1/score`) and
//!   `POST /rerank` (also `/v1/rerank`, `/v2/rerank`), with usage
//!   `{"prompt_tokens","total_tokens",...}`; scores favour word overlap and
//!   are deterministic
//! * `GET /health` (200, empty body) and `GET /version`
//!
//! # Anthropic
//!
//! * `POST /v1/messages`: unary, or `"stream": true` with `message_start`,
//!   `content_block_start`, `ping`, `content_block_delta` (`text_delta` per
//!   token, or `input_json_delta` pieces for tool use), `content_block_stop`,
//!   `message_delta` (stop reason and cumulative usage) and `message_stop`.
//!   `max_tokens` caps the answer (`stop_reason: "max_tokens"`) and
//!   `stop_sequences` cut it (`"stop_sequence"`).
//! * `POST /v1/messages/count_tokens` -> `{"input_tokens": N}` (the same
//!   count `/v1/messages` reports).
//!
//! These need `x-api-key` (checked against [`MockConfig::api_key`] when set)
//! and `anthropic-version`. Answers carry `request-id: req_...`; errors use
//! `{"type":"error","error":{"type","message"}}` (`x-mock-status: 429` gives
//! `rate_limit_error` with `retry-after`, `500` `api_error`, `529`
//! `overloaded_error`).
//!
//! # Gemini
//!
//! * `POST /v1beta/models/{model}:generateContent`
//! * `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`: one
//!   `data: {chunk}\r\n\r\n` per token, each with cumulative
//!   `usageMetadata`, the last with `finishReason`. Without `alt=sse` the same
//!   chunks are streamed as a JSON array, as the real API does.
//! * `POST /v1beta/models/{model}:countTokens`, `:embedContent`,
//!   `:batchEmbedContents`, `GET /v1beta/models` and
//!   `GET /v1beta/models/{model}`
//!
//! The `:method` routes also answer under `/v1/models/`. They need an API key
//! in `x-goog-api-key` or `?key=` (403 `PERMISSION_DENIED` when missing, 400
//! `INVALID_ARGUMENT` when it does not match [`MockConfig::api_key`]); errors
//! use `{"error":{"code","message","status"}}`. `generationConfig`
//! (`maxOutputTokens` -> `MAX_TOKENS`, `stopSequences`,
//! `responseMimeType: application/json` with an optional `responseSchema`)
//! is honoured.
//!
//! # Tool use
//!
//! Anthropic and Gemini answer with a tool call (`tool_use` block /
//! `functionCall` part) when tools are declared and the last user turn
//! mentions "weather" (the call goes to a tool with "weather" in its name or
//! description, else the first one), when the request forces a call
//! (`tool_choice` / `toolConfig`), or when `x-mock-tool-call: <name>` is
//! sent. Arguments are generated from the tool's JSON schema.
//!
//! # Knobs
//!
//! Behaviour can be tuned per request with headers, for every family
//! (defaults come from [`MockConfig`]):
//!
//! | header | effect |
//! |---|---|
//! | `x-mock-latency-ms: N` | delay before the head of non-streaming answers |
//! | `x-mock-ttft-ms: N` | delay between the streamed head and the first event |
//! | `x-mock-itl-ms: N` | delay between streamed events |
//! | `x-mock-tokens: N` | completion tokens (at most 1,000,000) |
//! | `x-mock-status: 4xx/5xx` | answer that status with the family's error body |
//! | `x-mock-retry-after: S` | `Retry-After` value (429 sends `1` by default; Gemini puts it in `RetryInfo`) |
//! | `x-mock-fault: reset` | close with a TCP RST without answering |
//! | `x-mock-fault: close` | close cleanly without answering |
//! | `x-mock-fault: hang` | never answer; keep the socket until the client leaves |
//! | `x-mock-fault: drop-mid-stream` | send the head and `x-mock-drop-after` events (default 3), then close without the terminating chunk (unary: half the body) |
//! | `x-mock-fault: reset-mid-stream` | same, but abort with RST |
//! | `x-mock-fault: stall-mid-stream` | same, but then go silent and keep the socket open |
//! | `x-mock-fault: error-event` | after `x-mock-drop-after` events send the family's mid-stream error (Anthropic `event: error` with `overloaded_error`, Gemini `UNAVAILABLE`, OpenAI `server_error`) and end the stream cleanly; a unary answer becomes a 529 / 503 / 500 error |
//! | `x-mock-fault: end-early` | after `x-mock-drop-after` events end the body cleanly (terminating chunk) without the stream's normal end; a unary answer sends half its JSON with a matching `Content-Length` |
//! | `x-mock-fault-once: TOKEN` | apply `x-mock-fault` only to the first request carrying TOKEN |
//! | `x-mock-drop-after: N` | events sent before a `*-mid-stream` or `error-event` fault |
//! | `x-mock-tool-call: NAME` | Anthropic / Gemini: answer with a call to tool NAME |
//! | `x-mock-echo-headers: 1` | JSON answers get a `mock_echo_headers` list of the request's header names |
//! | `x-mock-echo-auth: 1` | echo the request's credential in an `x-mock-echo-authorization` header and, for errors, a `mock_echo_authorization` body field (as some proxies do) |
//!
//! An invalid knob value is answered with `400` in the family's error shape.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use wharf_mock::{MockConfig, MockServer};
//! let server = MockServer::start("127.0.0.1:0", MockConfig::default()).await?;
//! println!("mock provider at {}", server.url());
//! // ... point the gateway at server.addr() ...
//! assert_eq!(server.request_count(), 0);
//! # Ok(())
//! # }
//! ```

mod anthropic;
mod common;
mod gemini;
mod images;
mod multipart;
mod openai;
mod raw;
mod request;
mod router;
mod server;
mod vllm;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How many requests [`MockServer::requests`] keeps (the oldest are dropped).
pub const MAX_RECORDED_REQUESTS: usize = 10_000;

/// Largest request body the mock accepts; bigger bodies get `413`.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Defaults for the mock provider. Most values can be overridden per request
/// with `x-mock-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockConfig {
    /// When set, the API key must match exactly: `Authorization: Bearer`
    /// (OpenAI routes under `/v1`), `x-api-key` (Anthropic) or
    /// `x-goog-api-key` / `?key=` (Gemini). A key is always required on those
    /// routes, even when this is `None`.
    pub api_key: Option<String>,
    /// Delay before the response head of non-streaming answers
    /// (`x-mock-latency-ms`).
    pub latency_ms: u64,
    /// Delay between the response head and the first SSE event
    /// (`x-mock-ttft-ms`).
    pub ttft_ms: u64,
    /// Delay between consecutive SSE events (`x-mock-itl-ms`).
    pub itl_ms: u64,
    /// Completion tokens (words) per answer (`x-mock-tokens`); the request's
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens` cap it.
    /// At most 1,000,000 are produced.
    pub tokens: u32,
    /// Length of the vectors returned by `/v1/embeddings` (a request's
    /// `dimensions` overrides it).
    pub embedding_dim: usize,
    /// Keep a copy of every request for [`MockServer::requests`]. Turn it off
    /// for benchmarks.
    pub record: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            api_key: None,
            latency_ms: 0,
            ttft_ms: 0,
            itl_ms: 0,
            tokens: 16,
            embedding_dim: 8,
            record: true,
        }
    }
}

/// A request as the mock received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Request method, e.g. `POST`.
    pub method: String,
    /// Request target including the query string, e.g. `/v1/models?x=1`.
    pub path: String,
    /// Headers in arrival order; names are lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, with any chunked transfer-encoding removed.
    pub body: Bytes,
}

impl RecordedRequest {
    /// First value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// State shared between the server handle and the connection tasks.
pub(crate) struct Shared {
    pub(crate) cfg: MockConfig,
    log: Mutex<VecDeque<RecordedRequest>>,
    count: AtomicUsize,
    connections_accepted: AtomicUsize,
    connections_open: AtomicUsize,
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn new(shared: Arc<Shared>) -> OpenConnection {
        shared.connections_accepted.fetch_add(1, Ordering::Relaxed);
        shared.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(shared)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, VecDeque<RecordedRequest>> {
        // A panic while holding the lock cannot leave the queue in an
        // inconsistent state, so a poisoned lock is still usable.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn record(&self, req: &request::Request) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if !self.cfg.record {
            return;
        }
        // A small body is copied so that the log does not pin the read
        // buffer it was sliced from.
        let body = if req.body.len() <= 64 * 1024 {
            Bytes::copy_from_slice(&req.body)
        } else {
            req.body.clone()
        };
        let rec = RecordedRequest {
            method: req.method.clone(),
            path: req.path.clone(),
            headers: req.headers.clone(),
            body,
        };
        let mut log = self.log();
        if log.len() >= MAX_RECORDED_REQUESTS {
            log.pop_front();
        }
        log.push_back(rec);
    }
}

/// A running mock provider. Dropping it stops the listener and closes every
/// connection it opened.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    // Dropping the sender wakes every task waiting on the receivers.
    _shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("config", &self.shared.cfg)
            .finish()
    }
}

impl MockServer {
    /// Binds `addr` (e.g. `127.0.0.1:0`) and serves on the current tokio
    /// runtime until the returned handle is dropped.
    pub async fn start(addr: &str, cfg: MockConfig) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            cfg,
            log: Mutex::new(VecDeque::new()),
            count: AtomicUsize::new(0),
            connections_accepted: AtomicUsize::new(0),
            connections_open: AtomicUsize::new(0),
        });
        let (tx, rx) = watch::channel(());
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), rx));
        Ok(MockServer {
            addr,
            shared,
            _shutdown: tx,
        })
    }

    /// The address the server listens on (with the real port when bound to
    /// port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, handy as an upstream base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &MockConfig {
        &self.shared.cfg
    }

    /// Every request received so far, oldest first (bounded to the last
    /// [`MAX_RECORDED_REQUESTS`]; empty when recording is off).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log().iter().cloned().collect()
    }

    /// The most recent request, if any was recorded.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.log().back().cloned()
    }

    /// Forgets the recorded requests and resets [`MockServer::request_count`].
    pub fn clear(&self) {
        let mut log = self.shared.log();
        log.clear();
        self.shared.count.store(0, Ordering::Relaxed);
    }

    /// Requests received since start (or the last [`MockServer::clear`]),
    /// counted even when recording is off or the log is full.
    pub fn request_count(&self) -> usize {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// TCP connections accepted since start (not reset by
    /// [`MockServer::clear`]); useful to check connection reuse.
    pub fn connections_accepted(&self) -> usize {
        self.shared.connections_accepted.load(Ordering::Relaxed)
    }

    /// TCP connections currently being served.
    pub fn connections_open(&self) -> usize {
        self.shared.connections_open.load(Ordering::Relaxed)
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            res = listener.accept() => res,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let guard = OpenConnection::new(Arc::clone(&shared));
                let shared = Arc::clone(&shared);
                let mut shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    tokio::select! {
                        _ = server::serve(stream, shared) => {}
                        _ = shutdown.changed() => {}
                    }
                });
            }
            Err(err) => {
                // Typically EMFILE/ENFILE: back off instead of spinning.
                tracing::warn!(error = %err, "wharf-mock: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
