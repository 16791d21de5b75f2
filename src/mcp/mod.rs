//! The MCP gateway (SPEC §8): `/v1/mcp/{slug-or-id}[/path]`.
//!
//! The proxy authenticates the key and applies the common limits, then hands the request to
//! [`Request`] handling here: resolution of the server and the key's grant, guardrails on the
//! JSON-RPC messages, and the transport (`http` for streamable HTTP; `stdio`; `legacy` for
//! the HTTP+SSE transport). The answer is written straight to the client session (SSE
//! streamed event by event, never buffered whole). Every JSON-RPC request leaves an
//! [`McpUsageRecord`], carried by the request's usage record.
//!
//! ```text
//! client ──/v1/mcp/tools──▶ auth → limits → resolve(slug|id) → grant → guardrails
//!                                  → transport (streamable HTTP | SSE | STDIO) → client
//! ```

pub use crate::config::mcp as config;
pub mod guardrails;
pub mod http;
pub mod legacy;
pub mod oauth;
pub mod stdio;

use crate::config::VirtualKey;
use crate::error::{ErrorCode, GatewayError};
use bytes::Bytes;
use config::{McpCatalog, McpServer, Transport};
use once_cell::sync::Lazy;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::types::usage::McpUsageRecord;

/// A call in flight.
#[derive(Debug)]
struct Pending {
    call: guardrails::Call,
    started: Instant,
    latency: Option<Duration>,
    bytes_out: u64,
    outcome: Option<&'static str>,
    error_code: Option<String>,
}

/// MCP state of one HTTP request (lives in the proxy context).
#[derive(Debug)]
pub struct McpCtx {
    pub server: Arc<McpServer>,
    pub session_id: Option<String>,
    /// HTTP status of the answer (0 until written).
    pub status: u16,
    pub error_code: Option<String>,
    /// The answer is an event stream.
    pub stream: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Time spent waiting on the server and the client (not gateway overhead).
    pub io_time: Duration,
    /// Headers every answer carries (`x-ratelimit-*`).
    pub headers: Vec<(&'static str, String)>,
    calls: Vec<Pending>,
    by_id: HashMap<String, usize>,
}

impl McpCtx {
    pub fn new(server: Arc<McpServer>) -> McpCtx {
        McpCtx {
            server,
            session_id: None,
            status: 0,
            error_code: None,
            stream: false,
            bytes_in: 0,
            bytes_out: 0,
            io_time: Duration::ZERO,
            headers: Vec::new(),
            calls: Vec::new(),
            by_id: HashMap::new(),
        }
    }

    /// Starts the clock of the request's calls.
    fn track(&mut self, calls: Vec<guardrails::Call>) {
        let now = Instant::now();
        for c in calls {
            let blocked = c.blocked.is_some();
            if !blocked {
                self.by_id.insert(c.id.clone(), self.calls.len());
            }
            self.calls.push(Pending {
                call: c,
                started: now,
                latency: blocked.then_some(Duration::ZERO),
                bytes_out: 0,
                outcome: blocked.then_some("blocked"),
                error_code: blocked.then(|| ErrorCode::McpGuardrailBlock.as_str().to_string()),
            });
        }
    }

    /// Notes a JSON-RPC message of the answer (`len` bytes): completes the call it answers.
    fn answered(&mut self, msg: &serde_json::Value, len: u64) {
        match msg {
            serde_json::Value::Array(items) => {
                let n = items.len().max(1) as u64;
                for m in items {
                    self.answered(m, len / n);
                }
            }
            serde_json::Value::Object(o) => {
                let Some(id) = guardrails::id_key(msg) else {
                    return;
                };
                if o.contains_key("method") {
                    return; // a request of the server, not an answer
                }
                let Some(&i) = self.by_id.get(&id) else {
                    return;
                };
                let p = &mut self.calls[i];
                if p.outcome.is_some() {
                    return;
                }
                p.latency = Some(p.started.elapsed());
                p.bytes_out = len;
                if let Some(e) = o.get("error") {
                    p.outcome = Some("error");
                    p.error_code = Some(match &e["code"] {
                        serde_json::Value::Number(n) => format!("jsonrpc_{n}"),
                        _ => "jsonrpc_error".to_string(),
                    });
                } else {
                    p.outcome = Some("success");
                }
            }
            _ => {}
        }
    }

    /// Marks every unanswered call as accepted (its answer comes on another stream).
    fn accept_pending(&mut self) {
        for p in &mut self.calls {
            if p.outcome.is_none() {
                p.latency = Some(p.started.elapsed());
                p.outcome = Some("accepted");
            }
        }
    }

    /// Marks every unanswered call as failed with `code`.
    fn fail_pending(&mut self, code: &str) {
        for p in &mut self.calls {
            if p.outcome.is_none() {
                p.latency = Some(p.started.elapsed());
                p.outcome = Some("upstream_error");
                p.error_code = Some(code.to_string());
            }
        }
    }

    /// The per-call records (at the end of the request).
    pub fn records(&mut self, request_id: &str) -> Vec<McpUsageRecord> {
        let s = &self.server;
        let status = self.status;
        let session = self.session_id.clone();
        self.calls
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let outcome = p.outcome.unwrap_or("no_response");
                let charged = matches!(outcome, "success" | "error" | "accepted");
                McpUsageRecord {
                    request_id: request_id.to_string(),
                    call_index: i as u32,
                    mcp_server_id: s.id.clone(),
                    server_slug: s.slug.clone(),
                    transport: s.transport.as_str(),
                    method: Some(p.call.method.clone()),
                    tool: p.call.tool.clone(),
                    session_id: session.clone(),
                    status: if outcome == "blocked" { 403 } else { status },
                    outcome,
                    error_code: p.error_code.clone(),
                    latency_ms: p
                        .latency
                        .unwrap_or_else(|| p.started.elapsed())
                        .as_secs_f64()
                        * 1000.0,
                    bytes_in: p.call.bytes_in,
                    bytes_out: p.bytes_out,
                    cost_nanos: if charged {
                        s.pricing.cost(p.call.bytes_in, p.bytes_out)
                    } else {
                        0
                    },
                }
            })
            .collect()
    }
}

/// A budget estimate for a POST body: the per-call price for each request in it (one when
/// it cannot be told) plus its input bytes. Output bytes are settled afterwards.
pub fn estimate_nanos(server: &McpServer, body: &[u8]) -> u64 {
    if body.is_empty() {
        return 0;
    }
    let calls = if body.first() == Some(&b'[') {
        memchr::memmem::find_iter(body, b"\"method\"")
            .count()
            .max(1) as u64
    } else {
        1
    };
    let p = &server.pricing;
    p.per_call
        .saturating_mul(calls)
        .saturating_add(p.per_input_byte.saturating_mul(body.len() as u64))
}

/// `/v1/mcp/{ref}[/rest]` → (`ref`, `rest` with its leading slash or empty).
pub fn split_path(path: &str) -> Result<(&str, &str), GatewayError> {
    let rest = path
        .strip_prefix("/v1/mcp")
        .unwrap_or("")
        .trim_start_matches('/');
    let (reference, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !config::valid_ref(reference) {
        return Err(GatewayError::new(
            ErrorCode::InvalidMcpRef,
            "the MCP server reference must be a slug or an id: /v1/mcp/{slug-or-id}",
        ));
    }
    let tail = tail.trim_end_matches('/');
    if tail.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(GatewayError::new(
            ErrorCode::InvalidMcpRef,
            "the MCP path must not contain `.` or `..` segments",
        ));
    }
    Ok((reference, tail))
}

/// Finds the enabled server `reference` of the key's organisation and checks the grant.
pub fn resolve(
    catalog: &McpCatalog,
    key: &VirtualKey,
    reference: &str,
) -> Result<Arc<McpServer>, GatewayError> {
    let server = catalog
        .find(&key.organisation_id, reference)
        .filter(|s| s.enabled)
        .ok_or_else(|| {
            GatewayError::new(
                ErrorCode::McpNotFound,
                format!("MCP server `{reference}` does not exist"),
            )
        })?;
    if !key.may_use_mcp(&server.id) {
        return Err(GatewayError::new(
            ErrorCode::McpNotAllowed,
            format!("this API key may not use MCP server `{reference}`"),
        ));
    }
    Ok(server.clone())
}

/// The client's request, as the transports need it.
pub struct Request<'a> {
    pub method: &'a ::http::Method,
    /// Below the server's endpoint (`/x/y`, or empty).
    pub subpath: &'a str,
    /// The client's query string without any `key=` credential.
    pub query: Option<String>,
    pub headers: &'a ::http::HeaderMap,
    pub body: Bytes,
    pub request_id: &'a str,
    /// The caller's key id (STDIO sessions belong to the key that started them).
    pub key_id: &'a str,
}

/// The upstream HTTP client (one pool for every MCP server).
pub static CLIENT: Lazy<reqwest::Client> = Lazy::new(|| {
    reqwest::Client::builder()
        .no_proxy()
        // A redirect would carry the server's credential elsewhere: answers pass through.
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
});

/// Serves an MCP request on `server`'s transport. Writes the answer (errors included); `Err`
/// only for I/O errors of the client session.
pub async fn serve(s: &mut Session, m: &mut McpCtx, req: Request<'_>) -> pingora::Result<()> {
    let t = Instant::now();
    let r = match m.server.transport {
        Transport::StreamableHttp => http::serve(s, m, req).await,
        Transport::Stdio => stdio::serve(s, m, req).await,
        Transport::Sse => legacy::serve(s, m, req).await,
    };
    m.io_time = t.elapsed();
    r
}

/// Writes a complete answer.
pub(crate) async fn write_full(
    s: &mut Session,
    m: &mut McpCtx,
    status: u16,
    content_type: Option<&str>,
    headers: &[(&'static str, String)],
    request_id: &str,
    body: Bytes,
) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(status, Some(4 + headers.len()))?;
    if let Some(ct) = content_type {
        h.insert_header("content-type", ct)?;
    }
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("x-request-id", request_id)?;
    for (k, v) in &m.headers {
        h.insert_header(*k, v.as_str())?;
    }
    for (k, v) in headers {
        h.insert_header(*k, v.as_str())?;
    }
    if !s.as_mut().is_body_done() {
        s.set_keepalive(None);
    }
    m.status = status;
    m.bytes_out += body.len() as u64;
    s.write_response_header(Box::new(h), body.is_empty())
        .await?;
    if !body.is_empty() {
        s.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Writes a gateway error (`{"error":{..}}`).
pub(crate) async fn write_error(
    s: &mut Session,
    m: &mut McpCtx,
    request_id: &str,
    e: &GatewayError,
) -> pingora::Result<()> {
    m.error_code = Some(e.code.as_str().to_string());
    m.fail_pending(e.code.as_str());
    let reply = crate::respond::error(e);
    write_full(
        s,
        m,
        reply.status,
        Some(reply.content_type),
        &[],
        request_id,
        reply.body,
    )
    .await
}
