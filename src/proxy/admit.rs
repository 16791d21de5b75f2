//! Admission (everything before the upstream call): request ids, the bounded body read,
//! authentication, the model and its grant, limits, the failover plan, and the cache
//! invalidation route.

use super::*;

/// Pingora's retry-buffer capacity (`BODY_BUF_LIMIT`): the pre-read trick keeps only the tail.
pub(super) const RETRY_BUF: usize = 64 * 1024;

/// A well-formed client request id is kept; anything else is replaced.
/// The client's `X-Request-Id`, when well formed: echoed back and kept in the usage record
/// for correlation. It is never the record's identity (clients reuse ids, and one tenant's
/// ids must not collide with another's): that is always [`next_request_id`].
pub(super) fn client_request_id(h: &RequestHeader) -> Option<String> {
    let v = h.headers.get("x-request-id")?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| v.to_string())
}

/// A request id: 32 hex characters, time-ordered, unique per process (a random per-process
/// prefix plus a counter), generated without a system call.
pub(super) fn next_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: once_cell::sync::Lazy<u32> = once_cell::sync::Lazy::new(rand::random);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:012x}{:08x}{:012x}",
        ms & 0xffff_ffff_ffff,
        *PREFIX,
        n & 0xffff_ffff_ffff
    )
}

/// Outcome of the bounded body read.
pub(super) enum BodyRead {
    Ok(Bytes),
    Reject(GatewayError),
}

/// Reads the whole request body, bounded by `max`, so that Pingora replays exactly its last
/// ≤ 64 KiB (the retry buffer) and `request_body_filter` can substitute the full rewritten
/// body on every attempt, whatever the size (see the Pingora notes, "pre-read").
pub(super) async fn read_body(s: &mut Session, max: usize, timeout: Duration) -> Result<BodyRead> {
    let cl = match s.req_header().headers.get(http::header::CONTENT_LENGTH) {
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(n) => Some(n),
            None => {
                return Ok(BodyRead::Reject(GatewayError::new(
                    ErrorCode::InvalidRequestBody,
                    "invalid Content-Length header",
                )))
            }
        },
        None => None,
    };
    if let Some(n) = cl {
        if n > max {
            return Ok(BodyRead::Reject(too_large(max)));
        }
    }
    if s.as_mut().is_body_empty() {
        return Ok(BodyRead::Ok(Bytes::new()));
    }
    let mut buf = BytesMut::with_capacity(cl.unwrap_or(16 * 1024).min(max));
    if cl.is_none() {
        s.as_mut().enable_retry_buffering();
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(n) = cl {
            if n.saturating_sub(buf.len()) <= RETRY_BUF {
                s.as_mut().enable_retry_buffering();
            }
        }
        let chunk = match tokio::time::timeout_at(deadline, s.read_request_body()).await {
            Ok(Err(e)) if is_framing_error(&e) => {
                return Ok(BodyRead::Reject(GatewayError::new(
                    ErrorCode::InvalidRequestBody,
                    "malformed chunked request body (bad chunk size or terminator)",
                )))
            }
            Ok(r) => r?,
            Err(_) => {
                return Ok(BodyRead::Reject(GatewayError::new(
                    ErrorCode::RequestTimeout,
                    format!(
                        "the request body did not arrive within {} ms",
                        timeout.as_millis()
                    ),
                )))
            }
        };
        match chunk {
            Some(c) => {
                if buf.len() + c.len() > max {
                    return Ok(BodyRead::Reject(too_large(max)));
                }
                buf.extend_from_slice(&c);
            }
            None => break,
        }
    }
    if cl.is_none() && s.as_ref().retry_buffer_truncated() {
        return Ok(BodyRead::Reject(GatewayError::new(
            ErrorCode::LengthRequired,
            format!("a request body over {RETRY_BUF} bytes needs a Content-Length header"),
        )));
    }
    Ok(BodyRead::Ok(buf.freeze()))
}

/// Whether a body read failed on the client's broken framing (a bad chunk size such as `zz`,
/// an overlong or negative one, a bad terminator): the client's error, answered with 400.
pub(super) fn is_framing_error(e: &Error) -> bool {
    matches!(
        e.etype().as_str(),
        "InvalidChunk" | "InvalidTrailerEnd" | "InvalidHTTPHeader"
    )
}

pub(super) fn too_large(max: usize) -> GatewayError {
    GatewayError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body exceeds the limit of {max} bytes"),
    )
}

/// Finds and checks the key (SPEC §1.2); `Err` carries the 401 (or 503 when the key store is
/// down and the key is not cached).
pub(super) async fn authenticate(
    state: &State,
    snap: &Snapshot,
    req: &RequestHeader,
) -> Result<Arc<VirtualKey>, GatewayError> {
    let (secret, _src) =
        keys::extract_credential(&req.headers, req.uri.query()).ok_or_else(|| {
            GatewayError::new(
                ErrorCode::Unauthorized,
                "missing API key: send Authorization: Bearer <key>",
            )
        })?;
    let hash = KeyHash::of(secret);
    let key = crate::control::store::find_key(&state.stores, snap, hash).await?;
    let key = key.ok_or_else(|| GatewayError::new(ErrorCode::Unauthorized, "invalid API key"))?;
    if key.revoked {
        return Err(GatewayError::new(
            ErrorCode::ApiKeyRevoked,
            "this API key has been revoked",
        ));
    }
    if let Some(exp) = key.expires_at {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if now >= exp {
            return Err(GatewayError::new(
                ErrorCode::ApiKeyExpired,
                "this API key has expired",
            ));
        }
    }
    Ok(key)
}

/// Resolves the model for `route`, checking grant, family and type (pipeline step 5–6).
pub(super) fn resolve_model(
    snap: &Snapshot,
    key: &VirtualKey,
    route: Route,
    name: &str,
) -> Result<Arc<Model>, GatewayError> {
    let model = snap
        .config
        .model(&key.organisation_id, name)
        .filter(|m| m.enabled)
        .cloned()
        .ok_or_else(|| {
            GatewayError::new(
                ErrorCode::ModelNotFound,
                format!("model `{name}` does not exist"),
            )
        })?;
    if !key.may_use(name) {
        return Err(GatewayError::new(
            ErrorCode::ModelNotAllowed,
            format!("this API key may not use model `{name}`"),
        ));
    }
    let p = &model.provider;
    let family = route.family();
    if !family.admits(p.kind) {
        return Err(GatewayError::new(
            ErrorCode::ProviderNotAllowed,
            format!(
                "model `{name}` is served by a {} provider; {} only reaches {} providers",
                p.kind.as_str(),
                route.name(),
                family.label()
            ),
        ));
    }
    let type_ok = match route {
        Route::Embeddings => model.kind == ModelType::Embeddings,
        Route::ImagesGenerations | Route::ImagesEdits | Route::ImagesVariations => {
            model.kind == ModelType::Image
        }
        // vLLM serves whatever the replica was started with; the family pin is the check.
        Route::Vllm(_) => true,
        _ => matches!(model.kind, ModelType::Chat | ModelType::Reasoning),
    };
    if !type_ok {
        return Err(GatewayError::new(
            ErrorCode::InvalidRequest,
            format!(
                "model `{name}` is a {} model and cannot be used on {}",
                model.kind.as_str(),
                route.name()
            ),
        ));
    }
    if !p.enabled {
        return Err(GatewayError::new(
            ErrorCode::ProviderDisabled,
            format!("provider `{}` is disabled", p.name),
        ));
    }
    if p.api_key.is_none() && p.api_key_env.is_some() {
        return Err(GatewayError::new(
            ErrorCode::ProviderApiKeyNotConfigured,
            format!("provider `{}` has no credential configured", p.name),
        ));
    }
    Ok(model)
}

impl Gateway {
    /// The start of every request: HTTP/1.1 pipelining on (RFC 9112 §9.3.2: a request sent
    /// before the previous answer is served after it, in order, instead of being dropped with
    /// the connection), the gateway's own request id and the client's, the trace context.
    pub(super) fn begin(&self, s: &mut Session, ctx: &mut Ctx) {
        s.as_downstream_mut().set_pipelining_enabled(true);
        ctx.request_id = next_request_id();
        ctx.client_request_id = client_request_id(s.req_header());
        if self.state.traces.get().is_some() {
            let tp = s
                .req_header()
                .headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok());
            ctx.trace = Some(crate::telemetry::TraceContext::new(
                tp,
                &ctx.request_id,
                ctx.snap.config.telemetry.sample_ratio,
            ));
        }
    }

    /// Everything before the upstream call. `Ok(true)`: an answer was written.
    pub(super) async fn admit(&self, s: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let route = match routes::match_route(&s.req_header().method, s.req_header().uri.path()) {
            Ok(r) => r,
            Err(e) => return write_error(s, ctx, e, "route").await,
        };
        ctx.route = Some(route);
        let snap = ctx.snap.clone();
        match route {
            Route::Health => return write_reply(s, ctx, endpoints::health(), &[]).await,
            Route::Healthz => {
                return write_reply(s, ctx, endpoints::healthz(&self.state), &[]).await
            }
            Route::Status => {
                let reply = match endpoints::status_view(&self.state, &s.req_header().headers).await
                {
                    Ok(view) => endpoints::status(&self.state, &view),
                    Err(r) => r,
                };
                return write_reply(s, ctx, reply, &[]).await;
            }
            // Per-model cost totals of every tenant: the operator's, never public.
            Route::Metrics
                if snap.config.server.metrics_on_proxy
                    && endpoints::is_operator(&snap, &s.req_header().headers) =>
            {
                return write_reply(s, ctx, endpoints::metrics_reply(), &[]).await
            }
            Route::Metrics if snap.config.server.metrics_on_proxy => {
                let e = GatewayError::new(
                    ErrorCode::Unauthorized,
                    "send the operator token: Authorization: Bearer <token>",
                );
                return write_error(s, ctx, e, "auth").await;
            }
            Route::Metrics => {
                let e = GatewayError::new(ErrorCode::NotFound, "metrics are on the admin listener");
                return write_error(s, ctx, e, "route").await;
            }
            _ => {}
        }
        if route == Route::Invalidate {
            return self.invalidate(s, ctx).await;
        }
        let gov = &self.state.governance;
        let peer = s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let xff = s.req_header().headers.get("x-forwarded-for");
        let xff = xff.and_then(|v| v.to_str().ok());
        if let Err(e) = gov.pre_auth(&snap.config, peer, xff, &mut ctx.gov) {
            return write_error(s, ctx, e, "policy").await;
        }
        let t_auth = Instant::now();
        let key = authenticate(&self.state, &snap, s.req_header()).await;
        ctx.mark("auth", t_auth);
        let key = match key {
            Ok(k) => k,
            Err(e) => return write_error(s, ctx, e, "auth").await,
        };
        ctx.key = Some(key.clone());
        let declared = s.req_header().headers.get(http::header::CONTENT_LENGTH);
        let declared = declared.and_then(|v| v.to_str().ok()?.trim().parse().ok());
        if let Err(e) = gov.after_auth(&snap.config, &key, declared, &ctx.gov) {
            return write_error(s, ctx, e, "policy").await;
        }
        match route {
            Route::Models => {
                return write_reply(s, ctx, endpoints::models(&snap, &key, None), &[]).await
            }
            Route::Vllm(routes::VllmOp::Models) => {
                let reply = endpoints::models(&snap, &key, Some(ProviderKind::Vllm));
                return write_reply(s, ctx, reply, &[]).await;
            }
            Route::KeysValidate => {
                let balances = gov.balances(&snap.config, &key).await;
                let reply = endpoints::key_info(&snap, &key, balances);
                return write_reply(s, ctx, reply, &[]).await;
            }
            Route::Mcp => return self.mcp(s, ctx, key).await,
            _ => {}
        }
        let Some(kind) = route.body_kind() else {
            let e = GatewayError::new(ErrorCode::NotFound, "no such route");
            return write_error(s, ctx, e, "route").await;
        };

        let server = &snap.config.server;
        let t_read = Instant::now();
        let raw = match read_body(s, server.max_request_bytes, server.client_body_timeout).await? {
            BodyRead::Ok(b) => b,
            BodyRead::Reject(e) => return write_error(s, ctx, e, "body").await,
        };
        // The client's upload time is not gateway overhead.
        ctx.overhead = ctx.overhead.saturating_sub(t_read.elapsed());
        ctx.mark("body.read", t_read);
        ctx.request_bytes = raw.len() as u64;
        let inspected = if kind == body::BodyKind::Multipart {
            let ct = s
                .req_header()
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            body::inspect_multipart(ct, &raw)
        } else {
            body::inspect(kind, &raw)
        };
        let mut insp = match inspected {
            Ok(i) => i,
            Err(e) => return write_error(s, ctx, e, "body").await,
        };
        if route.family() == Family::Gemini {
            // The model is in the path; streaming is the route (SSE with `alt=sse`).
            let path = s.req_header().uri.path();
            insp.model = routes::gemini_model(path)
                .map(|(m, _)| m.to_string())
                .unwrap_or_default();
            insp.stream = route == Route::GeminiStream;
        }
        let mut raw = raw;
        if !snap.filters.is_empty() {
            let t_filters = Instant::now();
            let h = &s.req_header().headers;
            let fx = ctx.filters.insert(crate::filters::RequestFilters::new(
                &ctx.request_id,
                route.name(),
                &key,
                h,
                &insp.model,
                insp.stream,
            ));
            let json = kind != body::BodyKind::Multipart;
            match fx.pre_route(&snap.filters, &raw, json) {
                Ok(pre) => {
                    if let Some(b) = pre.body {
                        let mut again = match body::inspect(kind, &b) {
                            Ok(i) => i,
                            Err(e) => return write_error(s, ctx, e, "filter").await,
                        };
                        if route.family() == Family::Gemini {
                            again.model = insp.model.clone();
                            again.stream = insp.stream;
                        }
                        insp = again;
                        raw = b;
                    }
                    if let Some(m) = pre.model {
                        insp.model = m;
                    }
                }
                Err(b) => return write_block(s, ctx, b).await,
            }
            ctx.mark("filters.pre_route", t_filters);
        }
        let t_route = Instant::now();
        let model = match resolve_model(&snap, &key, route, &insp.model) {
            Ok(m) => m,
            Err(e) => return write_error(s, ctx, e, "model").await,
        };
        // Payload, token-rate and budget limits of the requested model (pipeline steps 7–8).
        let t_limits = Instant::now();
        let limited = gov
            .after_model(
                &snap.config,
                &key,
                &model,
                &raw,
                insp.max_tokens,
                body::estimate_input_tokens,
                &ctx.request_id,
                &mut ctx.gov,
            )
            .await;
        if let Err(e) = limited {
            ctx.model = Some(model);
            return write_error(s, ctx, e, "ratelimit").await;
        }
        ctx.mark("limits", t_limits);
        let plan = failover::plan(&snap, &key, route, &model, |name| {
            resolve_model(&snap, &key, route, name).ok()
        });
        let first = plan.current().cloned().unwrap_or(model);
        ctx.plan = plan;
        ctx.insp = Some(insp);
        let query = s.req_header().uri.query().map(str::to_string);
        if let Err((e, gate)) = self.bind(ctx, route, first, &raw, query.as_deref()) {
            return write_error(s, ctx, e, gate).await;
        }
        if ctx.plan.len() > 1 {
            ctx.raw = Some(raw);
        }
        ctx.mark("route", t_route);
        let json = route == Route::Unified || kind != body::BodyKind::Multipart;
        self.pre_upstream(s, ctx, json).await
    }

    /// Filters at `pre_upstream` (after limits and reservations), on the body the provider
    /// will get. `Ok(true)`: a filter blocked and the answer was written.
    pub(super) async fn pre_upstream(
        &self,
        s: &mut Session,
        ctx: &mut Ctx,
        json: bool,
    ) -> Result<bool> {
        let Some(fx) = ctx.filters.as_mut() else {
            return Ok(false);
        };
        let t = Instant::now();
        let set = ctx.snap.filters.clone();
        if let Some(m) = &ctx.model {
            fx.resolved(&set, &m.name);
        }
        let r = fx.pre_upstream(&set, &mut ctx.body, json);
        ctx.mark("filters.pre_upstream", t);
        match r {
            Ok(()) => Ok(false),
            Err(b) => write_block(s, ctx, b).await,
        }
    }

    /// `POST /v1/internal/cache/invalidate`: shared secret (constant-time check), then the
    /// invalidation applies here and is published to the other nodes.
    pub(super) async fn invalidate(&self, s: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = ctx.snap.clone();
        let Some(secret) = &snap.config.invalidation_secret else {
            let e = GatewayError::new(
                ErrorCode::NotFound,
                "no route for /v1/internal/cache/invalidate",
            );
            return write_error(s, ctx, e, "route").await;
        };
        let given = s
            .req_header()
            .headers
            .get("x-wharf-invalidation-secret")
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        if !endpoints::secret_matches(&given, secret) {
            let e = GatewayError::new(ErrorCode::Unauthorized, "invalid invalidation secret");
            return write_error(s, ctx, e, "auth").await;
        }
        let raw = match read_body(s, 1024 * 1024, snap.config.server.client_body_timeout).await? {
            BodyRead::Ok(b) => b,
            BodyRead::Reject(e) => return write_error(s, ctx, e, "body").await,
        };
        let inv: crate::control::Invalidation = if raw.is_empty() {
            crate::control::Invalidation {
                all_keys: true,
                reload: true,
                ..Default::default()
            }
        } else {
            match serde_json::from_slice(&raw) {
                Ok(i) => i,
                Err(e) => {
                    let e = GatewayError::new(
                        ErrorCode::InvalidRequest,
                        format!("invalid invalidation request: {e}"),
                    );
                    return write_error(s, ctx, e, "body").await;
                }
            }
        };
        crate::control::apply(&self.state, &inv).await;
        let published = crate::control::publish(&self.state, &inv).await;
        if let Err(e) = &published {
            tracing::warn!(error = %e, "invalidation not published to other nodes");
        }
        let body = serde_json::json!({
            "invalidated": true,
            "published": published.is_ok() && snap.config.redis_url.is_some(),
        });
        let reply = Reply {
            status: 200,
            content_type: "application/json",
            body: Bytes::from(body.to_string()),
        };
        write_reply(s, ctx, reply, &[]).await
    }
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A snapshot with an OpenAI and an Anthropic provider, three models and one key.
    pub(crate) fn snapshot() -> Snapshot {
        let toml = format!(
            r#"
[[providers]]
name = "oai"
type = "OPENAI"
base_url = "http://127.0.0.1:9/v1"

[[providers]]
name = "ant"
type = "ANTHROPIC"
base_url = "http://127.0.0.1:9"

[[providers]]
name = "az"
type = "AZURE_OPENAI"
base_url = "https://x.openai.azure.com"
api_version = "2025-01-01"

[[models]]
name = "chat"
slug = "gpt-x"
provider = "oai"

[[models]]
name = "emb"
slug = "emb-x"
type = "embeddings"
provider = "oai"

[[models]]
name = "claude"
slug = "claude-x"
provider = "ant"

[[models]]
name = "azchat"
slug = "dep-1"
provider = "az"

[[models]]
name = "secret"
slug = "s"
provider = "oai"

[[keys]]
id = "k1"
hash = "{}"
organisation_id = "org"
models = ["chat", "emb", "claude", "azchat"]
"#,
            KeyHash::of("vk").to_hex()
        );
        Snapshot::new(
            crate::config::parse(&toml).unwrap(),
            Arc::new(crate::filters::FilterSet::default()),
            1,
        )
    }

    pub(crate) fn key(snap: &Snapshot) -> Arc<VirtualKey> {
        snap.config.keys.get(&KeyHash::of("vk")).unwrap().clone()
    }

    #[test]
    fn a_model_is_found_granted_and_of_the_routes_family_and_type() {
        let snap = snapshot();
        let k = key(&snap);
        let code = |route, name| {
            resolve_model(&snap, &k, route, name)
                .err()
                .map(|e| e.code.as_str())
        };
        assert_eq!(code(Route::ChatCompletions, "chat"), None);
        assert_eq!(code(Route::Messages, "claude"), None);
        assert_eq!(
            code(Route::ChatCompletions, "nope"),
            Some("model_not_found")
        );
        assert_eq!(
            code(Route::ChatCompletions, "secret"),
            Some("model_not_allowed")
        );
        assert_eq!(
            code(Route::ChatCompletions, "claude"),
            Some("provider_not_allowed")
        );
        assert_eq!(code(Route::Messages, "chat"), Some("provider_not_allowed"));
        assert_eq!(code(Route::ChatCompletions, "emb"), Some("invalid_request"));
        assert_eq!(code(Route::Embeddings, "emb"), None);
    }

    #[test]
    fn the_clients_request_id_is_kept_only_when_well_formed() {
        let mut h = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        assert_eq!(client_request_id(&h), None);
        h.insert_header("x-request-id", "abc-123_x.y:z").unwrap();
        assert_eq!(client_request_id(&h).as_deref(), Some("abc-123_x.y:z"));
        h.insert_header("x-request-id", "no spaces").unwrap();
        assert_eq!(client_request_id(&h), None);
        h.insert_header("x-request-id", "a".repeat(129)).unwrap();
        assert_eq!(client_request_id(&h), None);
    }

    #[test]
    fn the_gateways_request_ids_are_unique_hex() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| next_request_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids
            .iter()
            .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
