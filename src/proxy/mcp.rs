//! `/v1/mcp/{slug-or-id}[/path]` in the proxy: after authentication and the common limits,
//! the request goes to [`crate::mcp`], which answers it itself (`request_filter` returns
//! `Ok(true)`); `logging` then writes its usage record with one MCP record per call.

use super::{read_body, write_error, BodyRead, Ctx, Gateway};
use crate::config::VirtualKey;
use crate::error::ErrorCode;
use crate::usage::UsageRecord;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::sync::Arc;

impl Gateway {
    /// Resolves the server, checks the grant and the MCP-scoped limits, reads the body and
    /// serves the request on the server's transport.
    pub(super) async fn mcp(
        &self,
        s: &mut Session,
        ctx: &mut Ctx,
        key: Arc<VirtualKey>,
    ) -> Result<bool> {
        let snap = ctx.snap.clone();
        let path = s.req_header().uri.path().to_string();
        let (reference, subpath) = match crate::mcp::split_path(&path) {
            Ok(v) => v,
            Err(e) => return write_error(s, ctx, e, "mcp").await,
        };
        let server = match crate::mcp::resolve(&snap.config.mcp, &key, reference) {
            Ok(v) => v,
            Err(e) => return write_error(s, ctx, e, "mcp").await,
        };
        let mut m = Box::new(crate::mcp::McpCtx::new(server));
        let method = s.req_header().method.clone();
        let body = if method == http::Method::POST {
            let cfg = &snap.config.server;
            match read_body(s, cfg.max_request_bytes, cfg.client_body_timeout).await? {
                BodyRead::Ok(b) => b,
                BodyRead::Reject(e) => {
                    ctx.mcp = Some(m);
                    return write_error(s, ctx, e, "body").await;
                }
            }
        } else {
            Bytes::new()
        };
        ctx.request_bytes = body.len() as u64;
        // Limits and budgets, as for a model request (the server's policy is one more scope).
        let estimate = crate::mcp::estimate_nanos(&m.server, &body);
        let limited = self
            .state
            .governance
            .after_mcp(
                &snap.config,
                &key,
                &m.server.id,
                m.server.policy.as_deref(),
                body.len() as u64,
                estimate,
                &ctx.request_id,
                &mut ctx.gov,
            )
            .await;
        if let Err(e) = limited {
            ctx.mcp = Some(m);
            return write_error(s, ctx, e, "ratelimit").await;
        }
        m.headers = ctx.gov.header_pairs();
        let headers = s.req_header().headers.clone();
        let query = s
            .req_header()
            .uri
            .query()
            .and_then(crate::keys::strip_key_param);
        let request_id = ctx.request_id.clone();
        let req = crate::mcp::Request {
            method: &method,
            subpath,
            query,
            headers: &headers,
            body,
            request_id: &request_id,
            key_id: &key.id,
        };
        let r = crate::mcp::serve(s, &mut m, req).await;
        if m.status > 0 {
            ctx.status = Some(m.status);
        }
        ctx.error_code = m.error_code.clone();
        if ctx.error_code.as_deref() == Some(ErrorCode::McpGuardrailBlock.as_str()) {
            ctx.denied_by = Some("mcp_guardrail");
        }
        ctx.mcp = Some(m);
        r.map(|()| true)
    }
}

/// Adds the MCP side of a request to its usage record: the server, one record per JSON-RPC
/// call, and their cost.
pub(super) fn finish(ctx: &mut Ctx, rec: &mut UsageRecord) {
    let Some(m) = ctx.mcp.as_mut() else {
        return;
    };
    rec.mcp_server = Some(m.server.slug.clone());
    rec.mcp_calls = m.records(&ctx.request_id);
    rec.cost_nanos = rec
        .cost_nanos
        .saturating_add(rec.mcp_calls.iter().map(|c| c.cost_nanos).sum::<u64>());
    rec.stream = m.stream;
    rec.response_bytes = m.bytes_out;
    // Waiting on the MCP server and the client is not gateway overhead.
    ctx.overhead = ctx.overhead.saturating_sub(m.io_time);
}
