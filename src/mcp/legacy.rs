//! The legacy HTTP+SSE transport (MCP 2024-11-05): the client GETs the server's event stream,
//! whose first `endpoint` event names the URL to POST messages to; answers come on the
//! stream. Wharf rewrites that event so the client posts back through Wharf
//! (`/v1/mcp/{slug}/{path}?{query}` → the server's origin + `/{path}?{query}`), checks every
//! POST against the guardrails, filters `tools/list` answers on the stream, and delivers its
//! own refusals of blocked calls on the stream too (as the client expects its answers there).

use super::config::McpServer;
use super::{guardrails, http, write_error, write_full, McpCtx, Request};
use crate::error::{ErrorCode, GatewayError};
use crate::sse::SseParser;
use bytes::{Bytes, BytesMut};
use once_cell::sync::Lazy;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

/// Open client streams by (server id, upstream message endpoint): where refusals go.
type Streams = HashMap<(String, String), mpsc::Sender<Bytes>>;
static STREAMS: Lazy<Mutex<Streams>> = Lazy::new(Default::default);

fn streams() -> std::sync::MutexGuard<'static, Streams> {
    STREAMS.lock().unwrap_or_else(|e| e.into_inner())
}

/// `scheme://authority` of a URL.
fn origin(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

/// Where a request goes: the stream itself (`/v1/mcp/{slug}`), else the server's origin plus
/// the path below the slug.
pub fn upstream_url(server: &McpServer, subpath: &str, query: Option<&str>) -> String {
    let base = server.url.as_deref().unwrap_or_default();
    let mut u = if subpath.is_empty() {
        base.to_string()
    } else {
        format!("{}{subpath}", origin(base))
    };
    if let Some(q) = query {
        u.push('?');
        u.push_str(q);
    }
    u
}

/// The server's message endpoint (`endpoint` event data) as a path on its origin, or `None`
/// when it points elsewhere.
pub fn endpoint_path(server: &McpServer, data: &str) -> Option<String> {
    let base = server.url.as_deref().unwrap_or_default();
    let data = data.trim();
    if data.starts_with("http://") || data.starts_with("https://") {
        if origin(data) != origin(base) {
            return None;
        }
        let rest = &data[origin(data).len()..];
        return Some(if rest.is_empty() {
            "/".into()
        } else {
            rest.into()
        });
    }
    if data.starts_with('/') {
        return Some(data.to_string());
    }
    // Relative to the stream's URL.
    let path = &base[origin(base).len()..];
    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    Some(format!("{dir}/{data}"))
}

/// Serves one request on a legacy SSE server.
pub async fn serve(s: &mut Session, m: &mut McpCtx, req: Request<'_>) -> pingora::Result<()> {
    let rid = req.request_id;
    if *req.method == ::http::Method::GET {
        return stream(s, m, req).await;
    }
    if *req.method != ::http::Method::POST {
        let e = GatewayError::new(
            ErrorCode::InvalidTransport,
            "the SSE transport ends a session by closing its stream, not with DELETE",
        );
        return write_error(s, m, rid, &e).await;
    }
    m.bytes_in = req.body.len() as u64;
    let checked = match guardrails::check(&m.server, req.body.clone()) {
        Ok(c) => c,
        Err(e) => return write_error(s, m, rid, &e).await,
    };
    m.track(checked.calls);
    let endpoint = match &req.query {
        Some(q) => format!("{}?{q}", req.subpath),
        None => req.subpath.to_string(),
    };
    if !checked.refusals.is_empty() {
        // The client waits for its answers on the stream: the refusals go there too.
        let tx = streams()
            .get(&(m.server.id.clone(), endpoint.clone()))
            .cloned();
        if let Some(tx) = tx {
            for r in &checked.refusals {
                let _ = tx.try_send(http::message_event(r));
            }
        }
    }
    let Some(forward) = checked.forward else {
        m.error_code = Some(ErrorCode::McpGuardrailBlock.as_str().to_string());
        let mut refusals = checked.refusals;
        let body = if checked.batch {
            Value::Array(refusals)
        } else {
            refusals.pop().unwrap_or(Value::Null)
        };
        let b = Bytes::from(body.to_string());
        return write_full(s, m, 403, Some("application/json"), &[], rid, b).await;
    };
    let url = upstream_url(&m.server, req.subpath, req.query.as_deref());
    let resp = match http::send_to(&m.server, &url, &req, Some(&forward)).await {
        Ok(r) => r,
        Err(e) => return write_error(s, m, rid, &e).await,
    };
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match http::read_all(&m.server, resp).await {
        Ok(b) => b,
        Err(e) => return write_error(s, m, rid, &e).await,
    };
    if (200..300).contains(&status) {
        // Answers come on the stream; the calls were accepted.
        m.accept_pending();
    } else {
        m.fail_pending("mcp_upstream_status");
    }
    write_full(s, m, status, ct.as_deref(), &[], rid, body).await
}

/// The server's event stream, with the `endpoint` event pointed back at Wharf.
async fn stream(s: &mut Session, m: &mut McpCtx, req: Request<'_>) -> pingora::Result<()> {
    let rid = req.request_id;
    let url = upstream_url(&m.server, req.subpath, req.query.as_deref());
    let mut resp = match http::send_to(&m.server, &url, &req, None).await {
        Ok(r) => r,
        Err(e) => return write_error(s, m, rid, &e).await,
    };
    let status = resp.status().as_u16();
    let sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if status != 200 || !sse {
        let e = GatewayError::new(
            ErrorCode::McpUpstreamError,
            format!(
                "MCP server `{}` answered {status} instead of an event stream",
                m.server.slug
            ),
        );
        return write_error(s, m, rid, &e).await;
    }
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("content-type", "text/event-stream")?;
    h.insert_header("cache-control", "no-cache")?;
    h.insert_header("transfer-encoding", "chunked")?;
    h.insert_header("x-request-id", rid)?;
    for (k, v) in &m.headers {
        h.insert_header(*k, v.as_str())?;
    }
    m.status = 200;
    m.stream = true;
    s.write_response_header(Box::new(h), false).await?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let mut registered: Option<(String, String)> = None;
    let mut parser = SseParser::new();
    let prefix = format!("/v1/mcp/{}", m.server.slug);
    let result = loop {
        let chunk = tokio::select! {
            c = tokio::time::timeout(Duration::from_secs(24 * 3600), resp.chunk()) => c,
            Some(inj) = rx.recv() => {
                m.bytes_out += inj.len() as u64;
                if let Err(e) = s.write_response_body(Some(inj), false).await {
                    break Err(e);
                }
                continue;
            }
        };
        let chunk = match chunk {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => break Ok(()),
            Ok(Err(_)) | Err(_) => {
                m.error_code = Some(ErrorCode::McpUpstreamError.as_str().to_string());
                break Ok(());
            }
        };
        let mut out = BytesMut::with_capacity(chunk.len());
        parser.feed(&chunk, |raw| {
            let ev = crate::sse::parse_event(raw);
            if ev.event == Some("endpoint") {
                let data = String::from_utf8_lossy(&ev.data).to_string();
                match endpoint_path(&m.server, &data) {
                    Some(path) => {
                        let key = (m.server.id.clone(), path.clone());
                        streams().insert(key.clone(), tx.clone());
                        registered = Some(key);
                        out.extend_from_slice(
                            format!("event: endpoint\ndata: {prefix}{path}\n\n").as_bytes(),
                        );
                    }
                    None => {
                        tracing::warn!(server = %m.server.slug, "MCP endpoint on another origin dropped");
                    }
                }
                return;
            }
            match http::rewrite_event(m, raw) {
                Some(b) => out.extend_from_slice(&b),
                None => out.extend_from_slice(raw),
            }
        });
        if !out.is_empty() {
            m.bytes_out += out.len() as u64;
            if let Err(e) = s.write_response_body(Some(out.freeze()), false).await {
                break Err(e);
            }
        }
    };
    if let Some(k) = registered {
        streams().remove(&k);
    }
    result?;
    s.write_response_body(None, true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::config::{build_server, McpPricing, ServerSpec, UpstreamAuth};

    fn server(url: &str) -> McpServer {
        build_server(ServerSpec {
            id: "s".into(),
            organisation_id: None,
            name: "s".into(),
            slug: "s".into(),
            transport: "SSE".into(),
            url: Some(url.into()),
            command: None,
            args: vec![],
            env: vec![],
            auth: UpstreamAuth::None,
            timeout_ms: 1000,
            allowed_tools: vec![],
            blocked_tools: vec![],
            keywords: vec![],
            pricing: McpPricing::default(),
            policy: None,
            enabled: true,
            max_sessions: 1,
            idle_timeout_ms: 1000,
        })
        .expect("server")
    }

    #[test]
    fn endpoints_map_onto_the_origin() {
        let s = server("http://h:9/api/sse");
        assert_eq!(
            endpoint_path(&s, "/messages?sessionId=1").as_deref(),
            Some("/messages?sessionId=1")
        );
        assert_eq!(
            endpoint_path(&s, "http://h:9/api/messages?x=1").as_deref(),
            Some("/api/messages?x=1")
        );
        assert_eq!(endpoint_path(&s, "http://evil:9/messages"), None);
        assert_eq!(
            endpoint_path(&s, "messages?x").as_deref(),
            Some("/api/messages?x")
        );
        assert_eq!(upstream_url(&s, "", None), "http://h:9/api/sse");
        assert_eq!(
            upstream_url(&s, "/messages", Some("sessionId=1")),
            "http://h:9/messages?sessionId=1"
        );
    }
}
