//! The streamable HTTP transport: POST (JSON or SSE answers), GET (the server's stream),
//! DELETE (end of session), with `Mcp-Session-Id` carried both ways and the upstream
//! credential of the server in place of the caller's.

use super::config::{McpServer, UpstreamAuth};
use super::{guardrails, oauth, write_error, write_full, McpCtx, Request, CLIENT};
use crate::error::{ErrorCode, GatewayError};
use crate::sse::SseParser;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::Value;
use std::time::Duration;

/// Largest non-streamed answer kept in memory.
const MAX_JSON_ANSWER: usize = 16 * 1024 * 1024;
/// Largest SSE event inspected (guardrails, accounting); a larger one passes through as is.
const MAX_INSPECTED_EVENT: usize = 1024 * 1024;

/// Request headers passed to the server (everything else, credentials included, stays here).
const PASS_REQUEST: &[&str] = &[
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

fn upstream_error(msg: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorCode::McpUpstreamError, msg)
}

/// The `Authorization` value for `server` (`None`: no auth).
pub async fn authorization(server: &McpServer) -> Result<Option<String>, GatewayError> {
    Ok(match &server.auth {
        UpstreamAuth::None => None,
        UpstreamAuth::Bearer(t) if t.expose().is_empty() => {
            return Err(GatewayError::new(
                ErrorCode::McpAuthError,
                "the MCP server's bearer token is not configured",
            ))
        }
        UpstreamAuth::Bearer(t) => Some(format!("Bearer {}", t.expose())),
        UpstreamAuth::Basic(v) => Some(v.expose().to_string()),
        UpstreamAuth::OAuth2(o) => Some(format!("Bearer {}", oauth::token(&CLIENT, o).await?)),
    })
}

fn url_of(server: &McpServer, req: &Request<'_>) -> String {
    let base = server.url.as_deref().unwrap_or_default();
    match &req.query {
        Some(q) => format!("{base}{}?{q}", req.subpath),
        None => format!("{base}{}", req.subpath),
    }
}

/// Sends the request upstream once (with a fresh or cached credential).
async fn send(
    server: &McpServer,
    url: &str,
    req: &Request<'_>,
    body: Option<&Bytes>,
    auth: Option<&str>,
) -> Result<reqwest::Response, GatewayError> {
    let method = req.method.clone();
    let mut r = CLIENT.request(method.clone(), url);
    for name in PASS_REQUEST {
        if let Some(v) = req.headers.get(*name) {
            r = r.header(*name, v.clone());
        }
    }
    if method == ::http::Method::POST {
        r = r.header("content-type", "application/json");
        if req.headers.get("accept").is_none() {
            r = r.header("accept", "application/json, text/event-stream");
        }
    } else if method == ::http::Method::GET && req.headers.get("accept").is_none() {
        r = r.header("accept", "text/event-stream");
    }
    r = r.header("x-request-id", req.request_id);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    if let Some(b) = body {
        r = r.body(b.clone());
    }
    match tokio::time::timeout(server.timeout, r.send()).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) if e.is_connect() => Err(upstream_error(format!(
            "MCP server `{}` could not be reached",
            server.slug
        ))),
        Ok(Err(_)) => Err(upstream_error(format!(
            "MCP server `{}` failed to answer",
            server.slug
        ))),
        Err(_) => Err(upstream_error(format!(
            "MCP server `{}` did not answer within {} ms",
            server.slug,
            server.timeout.as_millis()
        ))),
    }
}

/// Sends to `url`, refreshing an OAuth2 token the server rejects (once).
pub(super) async fn send_to(
    server: &McpServer,
    url: &str,
    req: &Request<'_>,
    body: Option<&Bytes>,
) -> Result<reqwest::Response, GatewayError> {
    let auth = authorization(server).await?;
    let resp = send(server, url, req, body, auth.as_deref()).await?;
    if let (UpstreamAuth::OAuth2(o), 401, Some(a)) = (&server.auth, resp.status().as_u16(), &auth) {
        let token = a.strip_prefix("Bearer ").unwrap_or(a);
        oauth::invalidate(o, token).await;
        let fresh = authorization(server).await?;
        return send(server, url, req, body, fresh.as_deref()).await;
    }
    Ok(resp)
}

/// Serves one request on a streamable HTTP server.
pub async fn serve(s: &mut Session, m: &mut McpCtx, req: Request<'_>) -> pingora::Result<()> {
    let rid = req.request_id;
    m.session_id = req
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut refusals = Vec::new();
    let mut batch = false;
    let forward = if *req.method == ::http::Method::POST {
        m.bytes_in = req.body.len() as u64;
        let checked = match guardrails::check(&m.server, req.body.clone()) {
            Ok(c) => c,
            Err(e) => return write_error(s, m, rid, &e).await,
        };
        m.track(checked.calls);
        refusals = checked.refusals;
        batch = checked.batch;
        match checked.forward {
            Some(b) => Some(b),
            None => {
                // Every request was refused: 403 with the JSON-RPC errors.
                m.error_code = Some(ErrorCode::McpGuardrailBlock.as_str().to_string());
                let body = if batch {
                    Value::Array(refusals)
                } else {
                    refusals.pop().unwrap_or(Value::Null)
                };
                return write_full(
                    s,
                    m,
                    403,
                    Some("application/json"),
                    &[],
                    rid,
                    Bytes::from(body.to_string()),
                )
                .await;
            }
        }
    } else {
        None
    };
    let url = url_of(&m.server, &req);
    let resp = match send_to(&m.server, &url, &req, forward.as_ref()).await {
        Ok(r) => r,
        Err(e) => return write_error(s, m, rid, &e).await,
    };
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut extra: Vec<(&'static str, String)> = Vec::new();
    if let Some(sid) = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        m.session_id = Some(sid.to_string());
        extra.push(("mcp-session-id", sid.to_string()));
    }
    if let Some(v) = resp
        .headers()
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
    {
        extra.push(("mcp-protocol-version", v.to_string()));
    }
    if ct.starts_with("text/event-stream") {
        return stream(s, m, resp, status, extra, rid, refusals).await;
    }
    // A whole answer (JSON, 202, an error page): read it, bounded.
    let body = match read_all(&m.server, resp).await {
        Ok(b) => b,
        Err(e) => return write_error(s, m, rid, &e).await,
    };
    let json = ct.contains("json");
    let body = if json && !body.is_empty() {
        match serde_json::from_slice::<Value>(&body) {
            Ok(mut v) => {
                m.answered(&v, body.len() as u64);
                let changed = guardrails::filter_tools(&m.server, &mut v);
                if !refusals.is_empty() {
                    // Part of a batch was refused: its errors join the answer.
                    match &mut v {
                        Value::Array(items) => items.append(&mut refusals),
                        other => {
                            let first = std::mem::take(other);
                            refusals.insert(0, first);
                            *other = Value::Array(std::mem::take(&mut refusals));
                        }
                    }
                    Bytes::from(v.to_string())
                } else if changed {
                    Bytes::from(v.to_string())
                } else {
                    body
                }
            }
            Err(_) => body,
        }
    } else if !refusals.is_empty() && batch {
        // The server accepted the rest without answering (202): the refusals still need one.
        m.fail_pending("no_response");
        let b = Bytes::from(Value::Array(refusals).to_string());
        return write_full(s, m, 200, Some("application/json"), &extra, rid, b).await;
    } else {
        body
    };
    if status >= 400 {
        m.fail_pending("mcp_upstream_status");
    }
    let ct = (!ct.is_empty()).then_some(ct);
    write_full(s, m, status, ct.as_deref(), &extra, rid, body).await
}

pub(super) async fn read_all(
    server: &McpServer,
    mut resp: reqwest::Response,
) -> Result<Bytes, GatewayError> {
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout(server.timeout, resp.chunk()).await {
            Ok(Ok(Some(c))) => {
                if buf.len() + c.len() > MAX_JSON_ANSWER {
                    return Err(upstream_error("the MCP server's answer is too large"));
                }
                buf.extend_from_slice(&c);
            }
            Ok(Ok(None)) => return Ok(buf.freeze()),
            Ok(Err(_)) => return Err(upstream_error("the MCP server's answer was cut")),
            Err(_) => return Err(upstream_error("the MCP server stopped answering")),
        }
    }
}

/// Rewrites one SSE event whose `data` is a JSON-RPC message: tracks the call it answers and
/// removes refused tools from `tools/list` results. `None`: the event goes out unchanged.
pub fn rewrite_event(m: &mut McpCtx, raw: &[u8]) -> Option<Bytes> {
    let ev = crate::sse::parse_event(raw);
    if ev.data.is_empty() {
        return None;
    }
    let mut v: Value = serde_json::from_slice(&ev.data).ok()?;
    m.answered(&v, ev.data.len() as u64);
    if !guardrails::filter_tools(&m.server, &mut v) {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    for line in raw.split(|b| *b == b'\n' || *b == b'\r') {
        if line.is_empty() || line.starts_with(b"data") {
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    Some(Bytes::from(out))
}

/// An SSE event carrying one JSON-RPC message.
pub fn message_event(v: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {v}\n\n"))
}

/// Streams an SSE answer to the client event by event.
async fn stream(
    s: &mut Session,
    m: &mut McpCtx,
    mut resp: reqwest::Response,
    status: u16,
    extra: Vec<(&'static str, String)>,
    rid: &str,
    refusals: Vec<Value>,
) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(status, Some(5 + extra.len()))?;
    h.insert_header("content-type", "text/event-stream")?;
    h.insert_header("cache-control", "no-cache")?;
    h.insert_header("transfer-encoding", "chunked")?;
    h.insert_header("x-request-id", rid)?;
    for (k, v) in &m.headers {
        h.insert_header(*k, v.as_str())?;
    }
    for (k, v) in &extra {
        h.insert_header(*k, v.as_str())?;
    }
    m.status = status;
    m.stream = true;
    s.write_response_header(Box::new(h), false).await?;
    for r in &refusals {
        let ev = message_event(r);
        m.bytes_out += ev.len() as u64;
        s.write_response_body(Some(ev), false).await?;
    }
    // A POST's stream ends when its requests are answered; a GET stream may idle for long.
    let idle = if s.req_header().method == ::http::Method::GET {
        Duration::from_secs(24 * 3600)
    } else {
        m.server.timeout
    };
    let mut parser = SseParser::new();
    let mut raw_mode = false;
    loop {
        let chunk = match tokio::time::timeout(idle, resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => break,
            Ok(Err(_)) | Err(_) => {
                m.error_code = Some(ErrorCode::McpUpstreamError.as_str().to_string());
                m.fail_pending(ErrorCode::McpUpstreamError.as_str());
                break;
            }
        };
        if !raw_mode && parser.pending().len() + chunk.len() > MAX_INSPECTED_EVENT {
            // An event too large to hold: it, and the rest of the stream, pass through as they
            // come (never dropped; no longer inspected).
            raw_mode = true;
            let mut out = BytesMut::from(parser.pending());
            out.extend_from_slice(&chunk);
            parser = SseParser::new();
            m.bytes_out += out.len() as u64;
            s.write_response_body(Some(out.freeze()), false).await?;
            continue;
        }
        if raw_mode {
            m.bytes_out += chunk.len() as u64;
            s.write_response_body(Some(chunk), false).await?;
            continue;
        }
        // Whole events go out as they complete; an unfinished one waits for its end.
        let mut out = BytesMut::with_capacity(chunk.len());
        parser.feed(&chunk, |raw| match rewrite_event(m, raw) {
            Some(b) => out.extend_from_slice(&b),
            None => out.extend_from_slice(raw),
        });
        if !out.is_empty() {
            m.bytes_out += out.len() as u64;
            s.write_response_body(Some(out.freeze()), false).await?;
        }
    }
    let tail = parser.pending();
    if !tail.is_empty() {
        let t = Bytes::copy_from_slice(tail);
        m.bytes_out += t.len() as u64;
        s.write_response_body(Some(t), false).await?;
    }
    s.write_response_body(None, true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::config::{build_server, McpPricing, ServerSpec};
    use std::sync::Arc;

    fn ctx(blocked: &[&str]) -> McpCtx {
        let s = build_server(ServerSpec {
            id: "s".into(),
            organisation_id: None,
            name: "s".into(),
            slug: "s".into(),
            transport: "STREAMABLE_HTTP".into(),
            url: Some("http://h/mcp".into()),
            command: None,
            args: vec![],
            env: vec![],
            auth: UpstreamAuth::None,
            timeout_ms: 1000,
            allowed_tools: vec![],
            blocked_tools: blocked.iter().map(|s| s.to_string()).collect(),
            keywords: vec![],
            pricing: McpPricing {
                per_call: 100,
                per_input_byte: 1,
                per_output_byte: 1,
            },
            policy: None,
            enabled: true,
            max_sessions: 1,
            idle_timeout_ms: 1000,
        })
        .expect("server");
        McpCtx::new(Arc::new(s))
    }

    #[test]
    fn sse_tools_list_is_filtered_and_calls_complete() {
        let mut m = ctx(&["rm"]);
        let c = guardrails::check(
            &m.server,
            Bytes::from_static(br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#),
        )
        .expect("checked");
        m.track(c.calls);
        let ev = b"id: 5\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"echo\"},{\"name\":\"rm\"}]}}\n\n";
        let out = rewrite_event(&mut m, ev).expect("rewritten");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("id: 5\nevent: message\ndata: {"), "{text}");
        assert!(!text.contains("\"rm\""), "{text}");
        assert!(text.ends_with("\n\n"));
        let recs = m.records("r1");
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].outcome, "success");
        assert_eq!(recs[0].method.as_deref(), Some("tools/list"));
        assert!(recs[0].bytes_out > 0);
        assert_eq!(
            recs[0].cost_nanos,
            100 + recs[0].bytes_in + recs[0].bytes_out
        );
    }

    #[test]
    fn unrelated_events_pass_unchanged() {
        let mut m = ctx(&["rm"]);
        assert!(rewrite_event(&mut m, b": ping\n\n").is_none());
        assert!(rewrite_event(
            &mut m,
            b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"
        )
        .is_none());
    }
}
