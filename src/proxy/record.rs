//! The end of a request: its attempts, what the provider produced, the usage record and the
//! trace.

use super::*;

impl Gateway {
    pub(super) fn end_attempt(
        ctx: &mut Ctx,
        outcome: &'static str,
        class: Option<&'static str>,
        status: Option<u16>,
    ) {
        let Some(start) = ctx.attempt.start.take() else {
            return;
        };
        let (provider, model) = match &ctx.model {
            Some(m) => (m.provider.name.clone(), m.name.clone()),
            None => return,
        };
        if let Some(c) = class {
            metrics::UPSTREAM_ERRORS
                .with_label_values(&[&provider, c])
                .inc();
        }
        ctx.attempt_starts.push(start);
        ctx.attempts.push(Attempt {
            provider,
            model,
            outcome,
            error_class: class,
            status,
            latency_ms: start.elapsed().as_secs_f64() * 1000.0,
        });
    }

    /// What the provider produced when it reported no final usage (a cut stream, a vanished
    /// client, a provider that never reports): the input it counted (Anthropic's
    /// `message_start`, Gemini's running counts), else an estimate from the body; the output
    /// counted from the content deltas that passed (one token each), or Gemini's running
    /// count. Never `message_start`'s placeholder output.
    pub(super) fn produced(ctx: &Ctx) -> Tokens {
        let partial = ctx.tap.tokens.unwrap_or_default();
        let mut t = Tokens {
            input: partial.input,
            cached_input: partial.cached_input,
            ..Tokens::default()
        };
        if t.input == 0 {
            t.input = ctx
                .body
                .as_deref()
                .map(body::estimate_input_tokens)
                .unwrap_or(0);
        }
        let gemini = match &ctx.unified {
            Some(u) => u.target == translate::Target::Gemini,
            None => ctx.tap.format == WireFormat::Gemini,
        };
        t.output = if gemini {
            partial.output.max(ctx.tap.content_events)
        } else {
            ctx.tap.content_events
        };
        t.total = t.input + t.output;
        t
    }

    /// Builds the usage record (pipeline step 13).
    pub(super) fn usage_record(
        &self,
        s: &Session,
        e: Option<&Error>,
        ctx: &mut Ctx,
    ) -> UsageRecord {
        let status = ctx
            .status
            .or_else(|| s.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        let client_gone = e.is_some_and(|e| {
            e.esource() == &ErrorSource::Downstream
                && matches!(
                    e.etype(),
                    ErrorType::ConnectionClosed
                        | ErrorType::ReadError
                        | ErrorType::WriteError
                        | ErrorType::WriteTimedout
                        | ErrorType::ReadTimedout
                )
        });
        let sse = matches!(ctx.tap.mode, TapMode::Sse { .. });
        let stream_cut = sse && !ctx.tap.done;
        // A 2xx unary answer that is not JSON: passed on as it came, but a provider failure.
        let invalid = ctx.tap.invalid_body && ctx.attempt.upstream_status.is_some_and(|s| s < 300);
        let outcome = if client_gone {
            "client_disconnected"
        } else if ctx.denied_by.is_some() {
            "denied"
        } else if e.is_some() || stream_cut || invalid {
            "upstream_error"
        } else if status >= 400 {
            "error"
        } else {
            "success"
        };
        let mut tokens = Tokens::default();
        let mut source = UsageSource::None;
        let images = matches!(
            ctx.route,
            Some(Route::ImagesGenerations | Route::ImagesEdits | Route::ImagesVariations)
        );
        let reported = ctx.tap.tokens.filter(|_| ctx.tap.final_usage || !sse);
        if let Some(t) = reported {
            tokens = t;
            source = UsageSource::Provider;
        } else if images && ctx.tap.data_items > 0 {
            source = UsageSource::Provider;
        } else if ctx.attempt.upstream_status.is_some_and(|s| s < 300) {
            tokens = Self::produced(ctx);
            source = UsageSource::Estimated;
        }
        if images {
            tokens.images = ctx.tap.data_items;
        }
        let pricing = ctx.model.as_ref().map(|m| m.pricing);
        let cost = pricing.map(|p| tokens.cost_nanos(&p)).unwrap_or(0);
        let key = ctx.key.as_deref();
        let model = ctx.model.as_deref();
        let latency = ctx.start.elapsed();
        let error_code = ctx.error_code.clone().or_else(|| {
            if (stream_cut || invalid) && !client_gone {
                Some("upstream_error".to_string())
            } else {
                None
            }
        });
        UsageRecord {
            request_id: ctx.request_id.clone(),
            timestamp: endpoints::rfc3339(ctx.started_at),
            organisation_id: key.map(|k| k.organisation_id.clone()),
            team_id: key.and_then(|k| k.team_id.clone()),
            user_id: key.and_then(|k| k.user_id.clone()),
            api_key_id: key.map(|k| k.id.clone()),
            method: s.req_header().method.to_string(),
            endpoint: ctx
                .route
                .map(|r| r.name().to_string())
                .unwrap_or_else(|| s.req_header().uri.path().chars().take(256).collect()),
            model: model.map(|m| m.name.clone()),
            provider: model.map(|m| m.provider.name.clone()),
            provider_type: model.map(|m| m.provider.kind.as_str()),
            upstream_model: model.map(|m| m.slug.clone()),
            stream: ctx.insp.as_ref().is_some_and(|i| i.stream),
            status,
            outcome,
            error_code,
            denied_by: ctx.denied_by,
            latency_ms: latency.as_secs_f64() * 1000.0,
            ttfb_ms: ctx.attempt.ttfb.map(|d| d.as_secs_f64() * 1000.0),
            gateway_overhead_us: ctx.overhead.as_micros() as u64,
            tokens,
            usage_source: source,
            cost_nanos: cost,
            pricing,
            attempts: std::mem::take(&mut ctx.attempts),
            provider_request_id: ctx
                .provider_request_id
                .clone()
                .or_else(|| ctx.tap.response_id.clone()),
            client_request_id: ctx.client_request_id.clone(),
            stream_cut,
            client_disconnected: client_gone,
            request_bytes: ctx.request_bytes,
            response_bytes: ctx.tap.bytes_out,
            trace_id: ctx.trace.map(|t| t.trace_id_hex()),
            filters: None,
            mcp_server: None,
            mcp_calls: Vec::new(),
        }
    }

    /// Sends the request's spans to the trace exporter (sampled requests only): the request,
    /// its stages, each upstream attempt and the stream.
    pub(super) fn export_trace(&self, ctx: &Ctx, rec: &UsageRecord, route_label: &str) {
        use crate::telemetry::{Attr, TraceBuilder, KIND_CLIENT, KIND_INTERNAL};
        let (Some(tc), Some(exporter)) = (ctx.trace, self.state.traces.get()) else {
            return;
        };
        if !tc.sampled {
            return;
        }
        let end = Instant::now();
        let mut b = TraceBuilder::new(tc, ctx.start, ctx.started_at);
        let mut attrs: Vec<(&'static str, Attr)> = vec![
            ("http.request.method", rec.method.as_str().into()),
            ("http.route", route_label.into()),
            ("http.response.status_code", i64::from(rec.status).into()),
            ("wharf.request_id", rec.request_id.as_str().into()),
            ("wharf.outcome", rec.outcome.into()),
            ("wharf.attempts", (rec.attempts.len() as u64).into()),
            ("wharf.stream", rec.stream.into()),
        ];
        for (k, v) in [
            ("wharf.model", &rec.model),
            ("wharf.provider", &rec.provider),
            ("wharf.organisation_id", &rec.organisation_id),
            ("wharf.api_key_id", &rec.api_key_id),
            ("wharf.error_code", &rec.error_code),
        ] {
            if let Some(v) = v {
                attrs.push((k, v.as_str().into()));
            }
        }
        if let Some(d) = rec.denied_by {
            attrs.push(("wharf.denied_by", d.into()));
        }
        attrs.push(("wharf.tokens.input", rec.tokens.input.into()));
        attrs.push(("wharf.tokens.output", rec.tokens.output.into()));
        attrs.push(("wharf.cost_nanos", rec.cost_nanos.into()));
        let error = rec.status >= 500 || rec.outcome == "upstream_error";
        let name = format!("{} {route_label}", rec.method);
        b.root(&name, end, attrs, error);
        for (stage, start, stop) in &ctx.marks {
            b.child(stage, KIND_INTERNAL, *start, *stop, Vec::new(), false);
        }
        for (a, start) in rec.attempts.iter().zip(&ctx.attempt_starts) {
            let stop = *start + Duration::from_secs_f64(a.latency_ms.max(0.0) / 1000.0);
            let mut attrs: Vec<(&'static str, Attr)> = vec![
                ("wharf.provider", a.provider.as_str().into()),
                ("wharf.model", a.model.as_str().into()),
                ("wharf.outcome", a.outcome.into()),
            ];
            if let Some(c) = a.error_class {
                attrs.push(("wharf.error_class", c.into()));
            }
            if let Some(s) = a.status {
                attrs.push(("http.response.status_code", i64::from(s).into()));
            }
            let name = format!("upstream {}", a.provider);
            b.child(
                &name,
                KIND_CLIENT,
                *start,
                stop,
                attrs,
                a.error_class.is_some(),
            );
        }
        if let (Some(start), Some(ttfb)) = (ctx.attempt_starts.last(), ctx.attempt.ttfb) {
            if rec.stream {
                let attrs = vec![
                    ("wharf.stream_cut", rec.stream_cut.into()),
                    ("wharf.response_bytes", rec.response_bytes.into()),
                ];
                b.child(
                    "stream",
                    KIND_INTERNAL,
                    *start + ttfb,
                    end,
                    attrs,
                    rec.stream_cut,
                );
            }
        }
        b.child("usage.write", KIND_INTERNAL, end, end, Vec::new(), false);
        exporter.export(b.spans);
    }
}

impl Gateway {
    /// The end of every request, whatever happened: exactly one usage record (MCP calls and
    /// filter verdicts included), the governance settlement, metrics, the access log line and
    /// the trace.
    pub(super) async fn finish(&self, s: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.recorded {
            return;
        }
        ctx.recorded = true;
        let t = Instant::now();
        let route = ctx.route;
        let record_usage = route.is_none_or(Route::records_usage);
        let mut rec = self.usage_record(s, e, ctx);
        mcp::finish(ctx, &mut rec);
        crate::filters::hooks::finish(&ctx.snap.filters, ctx.filters.as_deref_mut(), &mut rec);
        self.state.governance.finish(&mut ctx.gov, &rec).await;
        let route_label = route.map(Route::name).unwrap_or("unmatched");
        let provider = rec.provider.as_deref().unwrap_or("");
        metrics::REQUESTS
            .with_label_values(&[route_label, metrics::status_class(rec.status), provider])
            .inc();
        metrics::REQUEST_DURATION
            .with_label_values(&[route_label])
            .observe(rec.latency_ms / 1000.0);
        if let Some(m) = &rec.model {
            let t = &rec.tokens;
            for (class, n) in [
                ("input", t.input),
                ("output", t.output),
                ("cached_input", t.cached_input),
                ("reasoning", t.reasoning),
            ] {
                if n > 0 {
                    metrics::TOKENS
                        .with_label_values(&[class, provider, m])
                        .inc_by(n);
                }
            }
            if rec.cost_nanos > 0 {
                metrics::COST
                    .with_label_values(&[provider, m])
                    .inc_by(rec.cost_nanos);
            }
        }
        if rec.outcome == "upstream_error" && rec.attempts.iter().all(|a| a.error_class.is_none()) {
            metrics::UPSTREAM_ERRORS
                .with_label_values(&[provider, "stream"])
                .inc();
        }
        tracing::info!(
            request_id = %rec.request_id,
            route = route_label,
            method = %rec.method,
            status = rec.status,
            outcome = rec.outcome,
            error_code = rec.error_code.as_deref().unwrap_or(""),
            model = rec.model.as_deref().unwrap_or(""),
            provider,
            latency_ms = rec.latency_ms,
            input_tokens = rec.tokens.input,
            output_tokens = rec.tokens.output,
            trace_id = rec.trace_id.as_deref().unwrap_or(""),
            "request"
        );
        self.export_trace(ctx, &rec, route_label);
        if record_usage {
            let mut rec = rec;
            rec.gateway_overhead_us = (ctx.overhead + t.elapsed()).as_micros() as u64;
            metrics::GATEWAY_OVERHEAD
                .with_label_values(&[route_label])
                .observe(rec.gateway_overhead_us as f64 / 1e6);
            self.state.usage.emit(rec);
        }
    }
}
