//! `wharf-mock`: a mock LLM provider (OpenAI, Anthropic, Gemini and vLLM
//! wire formats) for tests, benchmarks and demos.
//!
//! ```text
//! wharf-mock --listen 127.0.0.1:9999 [--api-key KEY] [--latency-ms N]
//!            [--ttft-ms N] [--itl-ms N] [--tokens N] [--embedding-dim N]
//!            [--record] [--threads N]
//! ```
//!
//! Prints `wharf-mock listening on <addr>` once it accepts connections.
//!
//! Routes (the path picks the API family):
//!
//! * OpenAI: `POST /v1/chat/completions`, `/v1/responses`,
//!   `/v1/completions`, `/v1/embeddings`, `/v1/audio/transcriptions`,
//!   `/v1/audio/translations`, `/v1/images/generations`,
//!   `/v1/images/edits`, `/v1/images/variations`; `GET /v1/models`,
//!   `/v1/models/{id}` (`Authorization: Bearer`).
//! * vLLM (no auth): `POST /tokenize`, `/detokenize`, `/pooling`,
//!   `/classify`, `/score`, `/rerank` (also `/v1/score`, `/v1/rerank`,
//!   `/v2/rerank`); `GET /health`, `/version`.
//! * Anthropic: `POST /v1/messages`, `/v1/messages/count_tokens`
//!   (`x-api-key`, `anthropic-version`).
//! * Gemini: `POST /v1beta/models/{model}:generateContent`,
//!   `:streamGenerateContent[?alt=sse]`, `:countTokens`, `:embedContent`,
//!   `:batchEmbedContents`; `GET /v1beta/models[/{model}]`
//!   (`x-goog-api-key` or `?key=`).
//!
//! Per-request knobs (request headers): `x-mock-latency-ms`,
//! `x-mock-ttft-ms`, `x-mock-itl-ms`, `x-mock-tokens`, `x-mock-status`,
//! `x-mock-retry-after`, `x-mock-fault` (`reset`, `close`, `hang`,
//! `drop-mid-stream`, `reset-mid-stream`, `stall-mid-stream`,
//! `error-event`, `end-early`), `x-mock-fault-once`, `x-mock-drop-after`,
//! `x-mock-tool-call`, `x-mock-echo-headers` and `x-mock-echo-auth`.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use wharf_mock::{MockConfig, MockServer};

/// jemalloc, as the gateway: the per-request allocations of the HTTP layer
/// (header maps, body channels) are many and short-lived.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Routes and knobs, shown after the options by `--help`.
const AFTER_HELP: &str = r"Routes (the path picks the API family):
  OpenAI     POST /v1/chat/completions, /v1/responses, /v1/completions, /v1/embeddings,
             /v1/audio/transcriptions, /v1/audio/translations, /v1/images/generations,
             /v1/images/edits, /v1/images/variations; GET /v1/models[/{id}]
             (Authorization: Bearer KEY)
  vLLM       POST /tokenize, /detokenize, /pooling, /classify, /score, /rerank
             (also /v1/score, /v1/rerank, /v2/rerank); GET /health, /version (no auth)
  Anthropic  POST /v1/messages, /v1/messages/count_tokens
             (x-api-key: KEY, anthropic-version: 2023-06-01)
  Gemini     POST /v1beta/models/{model}:generateContent, :streamGenerateContent[?alt=sse],
             :countTokens, :embedContent, :batchEmbedContents; GET /v1beta/models[/{model}]
             (x-goog-api-key: KEY or ?key=KEY)

Request-header knobs:
  x-mock-latency-ms, x-mock-ttft-ms, x-mock-itl-ms  delays in milliseconds
  x-mock-tokens: N                                  completion tokens
  x-mock-status: 4xx|5xx, x-mock-retry-after: S     forced error in the family's shape
  x-mock-fault: reset | close | hang | drop-mid-stream | reset-mid-stream |
                stall-mid-stream | error-event | end-early
  x-mock-fault-once: TOKEN                          fault only the first request with TOKEN
  x-mock-drop-after: N                              events before a mid-stream fault
  x-mock-tool-call: NAME                            Anthropic/Gemini: call tool NAME
  x-mock-echo-headers: 1                            list request header names in JSON answers";

#[derive(Debug, Parser)]
#[command(
    name = "wharf-mock",
    version,
    about = "Mock LLM provider speaking the OpenAI, Anthropic, Gemini and vLLM APIs",
    after_help = AFTER_HELP
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9999")]
    listen: String,
    /// Require this API key (`Authorization: Bearer`, `x-api-key` or
    /// `x-goog-api-key`); any key is accepted when unset.
    #[arg(long)]
    api_key: Option<String>,
    /// Delay before the head of non-streaming responses, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Delay before the first SSE event, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    /// Delay between SSE events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    itl_ms: u64,
    /// Completion tokens per answer.
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Length of embedding vectors.
    #[arg(long, default_value_t = 8)]
    embedding_dim: usize,
    /// Keep received requests in memory and print them as JSON lines on
    /// stderr at shutdown.
    #[arg(long)]
    record: bool,
    /// Worker threads (default: one per CPU; 1 runs a single-threaded
    /// runtime).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("wharf-mock: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let cfg = MockConfig {
        api_key: args.api_key,
        latency_ms: args.latency_ms,
        ttft_ms: args.ttft_ms,
        itl_ms: args.itl_ms,
        tokens: args.tokens,
        embedding_dim: args.embedding_dim,
        record: args.record,
    };
    let server = match MockServer::start(&args.listen, cfg).await {
        Ok(server) => server,
        Err(err) => {
            eprintln!("wharf-mock: cannot listen on {}: {err}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "wharf-mock listening on {}", server.addr());
        let _ = stdout.flush();
    }
    shutdown_signal().await;

    let count = server.request_count();
    if args.record {
        let mut stderr = std::io::stderr().lock();
        for req in server.requests() {
            let line = serde_json::json!({
                "method": req.method,
                "path": req.path,
                "headers": req.headers,
                "body": String::from_utf8_lossy(&req.body),
            });
            let _ = writeln!(stderr, "{line}");
        }
    }
    eprintln!("wharf-mock: served {count} requests");
    ExitCode::SUCCESS
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
