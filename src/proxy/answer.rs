//! The provider's answer on its way to the client: credential masking, the final error
//! event of a stream ended early, and the unified route's translation.

use super::*;

impl Gateway {
    /// Turns the provider's answer into the unified endpoint's: SSE translated event by event,
    /// unary answers normalized at the end, provider errors wrapped in the gateway's envelope.
    /// Drops credential and cookie headers from the provider's answer, masks its secrets in
    /// the other header values, and arms the body mask for an error answer.
    pub(super) fn redact_headers(resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        use crate::types::redact::{RedactStream, DENIED_RESPONSE_HEADERS};
        for h in &DENIED_RESPONSE_HEADERS {
            resp.remove_header(h);
        }
        let Some(r) = ctx
            .model
            .as_ref()
            .and_then(|m| m.provider.redactor.as_ref())
        else {
            return Ok(());
        };
        for (name, value) in r.masked_headers(&resp.headers) {
            resp.insert_header(name, value)?;
        }
        ctx.redact = (resp.status.as_u16() >= 400).then(RedactStream::default);
        Ok(())
    }

    /// A stream the provider ended cleanly but before its terminator (`[DONE]`,
    /// `message_stop`, Gemini's `finishReason`, `response.completed`): the client gets the
    /// family's final error event, as for a reset, instead of a silently truncated answer.
    pub(super) fn end_cut_stream(body: &mut Option<Bytes>, ctx: &mut Ctx) {
        let tap = &ctx.tap;
        if !matches!(tap.mode, TapMode::Sse { .. })
            || tap.done
            || tap.error_event
            || ctx.denied_by.is_some()
        {
            return;
        }
        let e = GatewayError::new(
            ErrorCode::UpstreamError,
            "the provider's stream ended before its normal end",
        );
        ctx.error_code = Some(e.code.as_str().to_string());
        let family = ctx.route.map(Route::family).unwrap_or(Family::OpenAi);
        let event = respond::sse_error(&e, family);
        ctx.tap.bytes_out += event.len() as u64;
        *body = Some(match body.take().filter(|b| !b.is_empty()) {
            Some(b) => {
                let mut out = BytesMut::with_capacity(b.len() + event.len());
                out.extend_from_slice(&b);
                out.extend_from_slice(&event);
                out.freeze()
            }
            None => event,
        });
    }

    pub(super) fn unified_body(&self, body: &mut Option<Bytes>, eos: bool, ctx: &mut Ctx) {
        let Some(u) = ctx.unified.as_mut() else {
            return;
        };
        if let Some(tr) = u.stream.as_mut() {
            let mut out = BytesMut::new();
            if let Some(b) = body.take() {
                tr.feed(&b, &mut out);
            }
            if eos {
                tr.finish(&mut out);
            }
            ctx.tap.tokens = tr.tokens();
            ctx.tap.final_usage = tr.final_usage();
            ctx.tap.done = tr.done();
            ctx.tap.content_events = tr.content_events();
            ctx.tap.bytes_out += out.len() as u64;
            *body = Some(out.freeze());
            return;
        }
        let Some(buf) = u.buffer.as_mut() else {
            return;
        };
        if let Some(b) = body.take() {
            if buf.len() + b.len() <= 16 * 1024 * 1024 {
                buf.extend_from_slice(&b);
            }
        }
        if !eos {
            *body = Some(Bytes::new());
            return;
        }
        let raw = std::mem::take(buf);
        let provider = ctx
            .model
            .as_ref()
            .map(|m| m.provider.name.clone())
            .unwrap_or_default();
        let model = ctx
            .model
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let out = if (200..300).contains(&u.upstream_status) {
            match translate::normalize_unary(u.target, &provider, &model, &raw) {
                Ok((v, tokens)) => {
                    ctx.tap.tokens = Some(tokens);
                    ctx.tap.final_usage = true;
                    ctx.tap.done = true;
                    ctx.provider_request_id = ctx
                        .provider_request_id
                        .clone()
                        .or_else(|| v["provider_request_id"].as_str().map(str::to_string));
                    Bytes::from(v.to_string())
                }
                Err(e) => {
                    // A 2xx the provider's format cannot be read from: a provider failure.
                    ctx.error_code = Some(e.code.as_str().to_string());
                    ctx.tap.invalid_body = true;
                    respond::error(&e).body
                }
            }
        } else {
            // The provider's error, in the gateway's envelope (its status is kept).
            let provider_error: serde_json::Value =
                serde_json::from_slice(&raw).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&raw).into())
                });
            let message = provider_error["error"]["message"]
                .as_str()
                .or_else(|| provider_error["message"].as_str())
                .unwrap_or("the provider returned an error")
                .to_string();
            let mut e = GatewayError::new(ErrorCode::UpstreamError, message);
            e.extra
                .push(("provider_status", serde_json::json!(u.upstream_status)));
            e.extra.push(("provider_error", provider_error));
            respond::error(&e).body
        };
        ctx.tap.bytes_out += out.len() as u64;
        *body = Some(out);
    }
}

impl Gateway {
    /// The provider's response head: ends the attempt, retries on a failover status (nothing
    /// reached the client yet), keeps the provider's request id, masks credentials, and
    /// chooses how the body is observed (the usage tap, or the unified route's translator).
    pub(super) fn upstream_head_in(&self, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        let status = resp.status.as_u16();
        if let Some(start) = ctx.attempt.start {
            let ttfb = start.elapsed();
            ctx.attempt.ttfb = Some(ttfb);
            if let Some(p) = ctx.provider_name() {
                metrics::TTFB
                    .with_label_values(&[p])
                    .observe(ttfb.as_secs_f64());
            }
        }
        ctx.attempt.upstream_status = Some(status);
        let class = match status {
            429 => Some("rate_limit"),
            500..=599 => Some("5xx"),
            _ => None,
        };
        Self::end_attempt(
            ctx,
            if status < 400 { "success" } else { "error" },
            class,
            Some(status),
        );
        if status >= 400 && self.retry_on_status(status, resp, ctx) {
            let mut e =
                Error::explain(ErrorType::HTTPStatus(status), "retrying on upstream status");
            e.set_retry(true);
            ctx.attempt.retry_pending = true;
            return Err(e);
        }
        if status < 400 || !matches!(status, 429 | 500..=599) {
            ctx.plan.success(ctx.attempt.ttfb.unwrap_or_default());
        }
        if let Some(id) = resp
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
        {
            ctx.provider_request_id = Some(id.to_string());
        }
        resp.remove_header("x-request-id");
        Self::redact_headers(resp, ctx)?;
        if let Some(fx) = ctx.filters.as_mut() {
            let ct = resp
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if fx.on_response_header(status, &ct) {
                resp.remove_header("content-length");
            }
        }
        let ct = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(u) = ctx.unified.as_mut() {
            u.upstream_status = status;
            let sse = ct.starts_with("text/event-stream");
            resp.remove_header("content-length");
            if (200..300).contains(&status) && sse {
                let (model, usage) = match (&ctx.model, &ctx.insp) {
                    (Some(m), Some(i)) => (m.name.as_str(), i.client_include_usage),
                    _ => ("", false),
                };
                u.stream = Some(translate::StreamTranslator::new(u.target, model, usage));
                ctx.tap = ResponseTap::with_format(
                    TapMode::Sse {
                        strip_usage_chunk: false,
                    },
                    WireFormat::OpenAi,
                );
            } else {
                u.buffer = Some(Vec::new());
                resp.insert_header("content-type", "application/json")?;
                ctx.tap = ResponseTap::with_format(TapMode::Off, WireFormat::OpenAi);
            }
            return Ok(());
        }
        let format = match ctx.route.map(Route::family) {
            Some(Family::Anthropic) => WireFormat::Anthropic,
            Some(Family::Gemini) => WireFormat::Gemini,
            _ => WireFormat::OpenAi,
        };
        let mode = if (200..300).contains(&status) && ct.starts_with("text/event-stream") {
            let strip = ctx
                .route
                .and_then(Route::body_kind)
                .is_some_and(|k| k.openai_stream_usage())
                && ctx.insp.as_ref().is_some_and(|i| !i.client_include_usage);
            // Events may be removed (the usage chunk) or added (a final error event).
            resp.remove_header("content-length");
            TapMode::Sse {
                strip_usage_chunk: strip,
            }
        } else if (200..300).contains(&status) && ct.contains("json") {
            TapMode::Unary
        } else {
            TapMode::Off
        };
        ctx.tap = ResponseTap::with_format(mode, format);
        Ok(())
    }

    /// The headers the client sees on a proxied answer: both request ids, the provider, the
    /// model, the provider's request id, the attempts and the limit headers.
    pub(super) fn client_head(resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
        resp.insert_header("x-request-id", ctx.echoed_request_id())?;
        resp.insert_header("x-wharf-request-id", ctx.request_id.as_str())?;
        if let Some(m) = &ctx.model {
            resp.insert_header("x-wharf-provider", m.provider.name.as_str())?;
            resp.insert_header("x-wharf-model", m.name.as_str())?;
        }
        if let Some(id) = &ctx.provider_request_id {
            resp.insert_header("x-wharf-upstream-request-id", id.as_str())?;
        }
        resp.insert_header("x-wharf-attempts", ctx.attempts.len().max(1).to_string())?;
        for (k, v) in ctx.gov.header_pairs() {
            resp.insert_header(k, v)?;
        }
        Ok(())
    }

    /// One chunk of the answer on its way to the client: credential mask, filters, then the
    /// usage tap (or the unified translator), and a final error event for a stream the
    /// provider ended early.
    pub(super) fn body_out(&self, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut Ctx) {
        if let Some(rs) = ctx.redact.as_mut() {
            if let Some(r) = ctx
                .model
                .as_ref()
                .and_then(|m| m.provider.redactor.as_ref())
            {
                rs.on_chunk(r, body, end_of_stream);
            }
        }
        if let Some(fx) = ctx.filters.as_mut() {
            let family = ctx.route.map(Route::family).unwrap_or(Family::OpenAi);
            if let Some(b) = fx.on_body(body, end_of_stream, family) {
                ctx.error_code = Some(b.code);
                ctx.denied_by = Some("filter");
            }
        }
        if ctx.unified.is_some() {
            self.unified_body(body, end_of_stream, ctx);
        } else {
            ctx.tap.on_chunk(body, end_of_stream);
            if end_of_stream {
                Self::end_cut_stream(body, ctx);
            }
        }
    }
}
