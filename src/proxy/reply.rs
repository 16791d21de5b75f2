//! Answers the gateway writes itself: one header builder for replies, errors and filter
//! blocks (the bodies come from [`crate::respond`]).

use super::*;

/// The head of an answer the gateway writes itself (a reply, an error, `fail_to_proxy`'s):
/// content type and length, the echoed and the gateway's own request id, then `extra`.
pub(super) fn reply_head(
    ctx: &Ctx,
    reply: &Reply,
    extra: &[(&str, String)],
) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build(reply.status, Some(4 + extra.len()))?;
    h.insert_header("content-type", reply.content_type)?;
    h.insert_header("content-length", reply.body.len().to_string())?;
    h.insert_header("x-request-id", ctx.echoed_request_id())?;
    h.insert_header("x-wharf-request-id", ctx.request_id.as_str())?;
    for (k, v) in extra {
        h.insert_header(k.to_string(), v.as_str())?;
    }
    Ok(h)
}

/// Writes a complete JSON (or text) answer from the gateway itself.
pub(super) async fn write_reply(
    s: &mut Session,
    ctx: &mut Ctx,
    reply: Reply,
    extra: &[(&str, String)],
) -> Result<bool> {
    let h = reply_head(ctx, &reply, extra)?;
    // An unread request body would have to be drained before the connection could be reused.
    if !s.as_mut().is_body_done() {
        s.set_keepalive(None);
    }
    ctx.status = Some(reply.status);
    let head_only = s.req_header().method == http::Method::HEAD;
    s.write_response_header(Box::new(h), head_only).await?;
    if !head_only {
        s.write_response_body(Some(reply.body), true).await?;
    }
    Ok(true)
}

/// Answers with a gateway error and remembers it for the usage record.
pub(super) async fn write_error(
    s: &mut Session,
    ctx: &mut Ctx,
    e: GatewayError,
    gate: &'static str,
) -> Result<bool> {
    ctx.error_code = Some(e.code.as_str().to_string());
    ctx.denied_by = Some(gate);
    let mut extra = Vec::new();
    if let Some(r) = e.retry_after {
        extra.push(("retry-after", r.to_string()));
    }
    if e.code == ErrorCode::MethodNotAllowed {
        if let Some((_, v)) = e.extra.iter().find(|(k, _)| *k == "allow") {
            extra.push(("allow", v.as_str().unwrap_or_default().to_string()));
        }
    }
    if e.code == ErrorCode::Unauthorized {
        extra.push(("www-authenticate", "Bearer".to_string()));
    }
    extra.extend(ctx.gov.header_pairs());
    let family = ctx.route.map(Route::family).unwrap_or(Family::OpenAi);
    write_reply(s, ctx, respond::error_for(&e, family), &extra).await
}

/// Answers with a filter's block: the family's error shape, the filter's status and code.
pub(super) async fn write_block(
    s: &mut Session,
    ctx: &mut Ctx,
    b: crate::filters::Block,
) -> Result<bool> {
    ctx.error_code = Some(b.code.clone());
    ctx.denied_by = Some("filter");
    let family = ctx.route.map(Route::family).unwrap_or(Family::OpenAi);
    let mut reply = respond::error_for(&b.to_error(), family);
    reply.status = b.status;
    write_reply(s, ctx, reply, &[]).await
}

impl Gateway {
    /// Pingora's final error as the gateway's answer: the family's JSON error, or a final SSE
    /// event when the stream is already under way; nothing when the client is gone.
    pub(super) async fn answer_failure(s: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let Some(ge) = Self::classify(e) else {
            // The client is gone; nothing to write.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.error_code = Some(ge.code.as_str().to_string());
        if s.response_written().is_some() {
            // Mid-stream: a final SSE error event in the client's format, then a clean end.
            if matches!(ctx.tap.mode, TapMode::Sse { .. }) {
                let family = ctx.route.map(Route::family).unwrap_or(Family::OpenAi);
                let _ = s
                    .write_response_body(Some(respond::sse_error(&ge, family)), true)
                    .await;
            }
            return FailToProxy {
                error_code: ge.status(),
                can_reuse_downstream: false,
            };
        }
        ctx.status = Some(ge.status());
        let family = ctx.route.map(Route::family).unwrap_or(Family::OpenAi);
        let reply = respond::error_for(&ge, family);
        let mut extra = ctx.gov.header_pairs();
        if let Some(m) = &ctx.model {
            extra.push(("x-wharf-provider", m.provider.name.clone()));
            extra.push(("x-wharf-attempts", ctx.attempts.len().max(1).to_string()));
        }
        s.set_keepalive(None);
        if let Ok(h) = reply_head(ctx, &reply, &extra) {
            if s.write_response_header(Box::new(h), false).await.is_ok() {
                let _ = s.write_response_body(Some(reply.body), true).await;
            }
        }
        FailToProxy {
            error_code: ge.status(),
            can_reuse_downstream: false,
        }
    }
}
