//! The data plane: Wharf's `ProxyHttp` implementation.
//!
//! Phase map (Pingora order):
//!
//! ```text
//! request_filter           request id → route → auth → bounded body read → decode → model,
//!                          grant, family → rewrite body (slug, include_usage)   [or answer: Ok(true)]
//! upstream_peer            provider address, TLS/SNI, timeouts (per attempt)
//! upstream_request_filter  path, Host, provider credential, strip client credentials, CL
//! request_body_filter      emit the rewritten body (replayable, any size)
//! upstream_response_filter status, provider request id, choose the response tap
//! response_filter          x-request-id, x-wharf-* headers
//! response_body_filter     usage tap (SSE events / unary JSON), usage-chunk removal
//! fail_to_proxy            Pingora errors → SPEC JSON errors (or a final SSE error event)
//! logging                  exactly one usage record, metrics, access log
//! ```
//!
//! Every function here is short and delegates to a module named after its concern.

pub mod body;
pub mod failover;
pub mod mcp;
pub mod routes;
pub mod tap;

use crate::admin;
use crate::config::{Model, ModelType, ProviderKind, VirtualKey};
use crate::error::{ErrorCode, GatewayError};
use crate::keys::{self, KeyHash};
use crate::metrics;
use crate::respond::{self, Reply};
use crate::routing::ErrorClass;
use crate::state::{Snapshot, State};
use crate::translate;
use crate::usage::{Attempt, Tokens, UsageRecord, UsageSource};
use async_trait::async_trait;
use body::Inspected;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType, RetryType};
use routes::{Family, Route};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tap::{ResponseTap, TapMode, WireFormat};

/// Pingora's retry-buffer capacity (`BODY_BUF_LIMIT`): the pre-read trick keeps only the tail.
const RETRY_BUF: usize = 64 * 1024;

/// The gateway service.
pub struct Gateway {
    pub state: Arc<State>,
}

/// Counts a request in flight for as long as its context lives.
pub struct InFlight;

impl InFlight {
    fn new() -> Self {
        metrics::IN_FLIGHT.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::IN_FLIGHT.dec();
    }
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    started_at: SystemTime,
    snap: Arc<Snapshot>,
    /// The gateway's own id of this request: the usage record's identity, sent upstream.
    request_id: String,
    /// The client's `X-Request-Id`, if it sent a well-formed one (echoed back).
    client_request_id: Option<String>,
    route: Option<Route>,
    key: Option<Arc<VirtualKey>>,
    model: Option<Arc<Model>>,
    /// The rewritten body sent upstream (replayed on every attempt).
    body: Option<Bytes>,
    request_bytes: u64,
    insp: Option<Inspected>,
    upstream_uri: Option<http::Uri>,
    tap: ResponseTap,
    /// Status the client got (set by gateway answers; else read from the session).
    status: Option<u16>,
    error_code: Option<String>,
    denied_by: Option<&'static str>,
    attempts: Vec<Attempt>,
    attempt_start: Option<Instant>,
    upstream_status: Option<u16>,
    ttfb: Option<Duration>,
    provider_request_id: Option<String>,
    overhead: Duration,
    recorded: bool,
    /// `/v1/llm/chat`: the target family and how its answer is turned back.
    unified: Option<Unified>,
    /// The client's body as received, kept while another target may need it rewritten.
    raw: Option<Bytes>,
    /// Which deployments are tried, in order (SPEC §5).
    plan: failover::Plan,
    /// The next `upstream_peer` moves to the plan's next target.
    advance: bool,
    /// `upstream_response_filter` asked for another attempt (failover or another credential).
    retry_pending: bool,
    /// Index of the provider credential used by the current attempt.
    cred: Option<usize>,
    /// The credential the next attempt must not use (it was just rejected).
    avoid_cred: Option<usize>,
    /// Trace context when tracing is on; stage timings and attempt starts for its spans.
    trace: Option<crate::telemetry::TraceContext>,
    marks: Vec<(&'static str, Instant, Instant)>,
    attempt_starts: Vec<Instant>,
    /// Filter state; `None` when no filter is configured.
    filters: Option<Box<crate::filters::RequestFilters>>,
    /// Rate-limit grant (leases, token reservation) and `x-ratelimit-*` values.
    gov: crate::governance::RequestGov,
    /// Masks the provider's secrets in an error body it sends (some echo the credential).
    redact: Option<crate::routing::redact::RedactStream>,
    /// MCP requests (`/v1/mcp/...`): the server and its calls.
    mcp: Option<Box<crate::mcp::McpCtx>>,
    _in_flight: InFlight,
}

/// State of a unified (`/v1/llm/chat`) request.
struct Unified {
    target: translate::Target,
    /// Streaming answers, translated event by event.
    stream: Option<translate::StreamTranslator>,
    /// Unary answers (and provider errors), kept whole and converted at the end.
    buffer: Option<Vec<u8>>,
    upstream_status: u16,
}

impl Ctx {
    /// The id the client sees in `x-request-id`: its own when it sent one, else the gateway's.
    fn echoed_request_id(&self) -> &str {
        self.client_request_id
            .as_deref()
            .unwrap_or(&self.request_id)
    }

    /// Records a stage that began at `start` and ends now (for the request's trace).
    fn mark(&mut self, stage: &'static str, start: Instant) {
        if self.trace.is_some_and(|t| t.sampled) {
            self.marks.push((stage, start, Instant::now()));
        }
    }

    fn provider_name(&self) -> Option<&str> {
        self.model.as_ref().map(|m| m.provider.name.as_str())
    }
}

/// The head of an answer the gateway writes itself (a reply, an error, `fail_to_proxy`'s):
/// content type and length, the echoed and the gateway's own request id, then `extra`.
fn reply_head(ctx: &Ctx, reply: &Reply, extra: &[(&str, String)]) -> Result<ResponseHeader> {
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
async fn write_reply(
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
async fn write_error(
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
async fn write_block(s: &mut Session, ctx: &mut Ctx, b: crate::filters::Block) -> Result<bool> {
    ctx.error_code = Some(b.code.clone());
    ctx.denied_by = Some("filter");
    let family = ctx.route.map(Route::family).unwrap_or(Family::OpenAi);
    let mut reply = respond::error_for(&b.to_error(), family);
    reply.status = b.status;
    write_reply(s, ctx, reply, &[]).await
}

/// A well-formed client request id is kept; anything else is replaced.
/// The client's `X-Request-Id`, when well formed: echoed back and kept in the usage record
/// for correlation. It is never the record's identity (clients reuse ids, and one tenant's
/// ids must not collide with another's): that is always [`next_request_id`].
fn client_request_id(h: &RequestHeader) -> Option<String> {
    let v = h.headers.get("x-request-id")?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| v.to_string())
}

/// A request id: 32 hex characters, time-ordered, unique per process (a random per-process
/// prefix plus a counter), generated without a system call.
fn next_request_id() -> String {
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
enum BodyRead {
    Ok(Bytes),
    Reject(GatewayError),
}

/// Reads the whole request body, bounded by `max`, so that Pingora replays exactly its last
/// ≤ 64 KiB (the retry buffer) and `request_body_filter` can substitute the full rewritten
/// body on every attempt, whatever the size (see the Pingora notes, "pre-read").
async fn read_body(s: &mut Session, max: usize, timeout: Duration) -> Result<BodyRead> {
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
fn is_framing_error(e: &Error) -> bool {
    matches!(
        e.etype().as_str(),
        "InvalidChunk" | "InvalidTrailerEnd" | "InvalidHTTPHeader"
    )
}

fn too_large(max: usize) -> GatewayError {
    GatewayError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body exceeds the limit of {max} bytes"),
    )
}

/// Finds and checks the key (SPEC §1.2); `Err` carries the 401 (or 503 when the key store is
/// down and the key is not cached).
async fn authenticate(
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
    let key = crate::store::find_key(&state.stores, snap, hash).await?;
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
fn resolve_model(
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

/// The upstream path and query for `route` on `model`'s provider.
fn upstream_uri(
    model: &Model,
    route: Route,
    client_query: Option<&str>,
) -> Result<http::Uri, GatewayError> {
    let query = client_query.and_then(keys::strip_key_param);
    if query.is_some() {
        return build_upstream_uri(model, route, query);
    }
    // The common case (no client query): built once per model and route.
    if let Some(u) = model
        .uri_cache
        .read()
        .ok()
        .and_then(|c| c.get(route.name()).cloned())
    {
        return Ok(u);
    }
    let u = build_upstream_uri(model, route, None)?;
    if let Ok(mut c) = model.uri_cache.write() {
        c.insert(route.name(), u.clone());
    }
    Ok(u)
}

fn build_upstream_uri(
    model: &Model,
    route: Route,
    mut query: Option<String>,
) -> Result<http::Uri, GatewayError> {
    let p = &model.provider;
    let path = if p.kind == ProviderKind::AzureOpenAi {
        let q = format!(
            "api-version={}",
            p.api_version.as_deref().unwrap_or("2024-10-21")
        );
        query = Some(match query {
            Some(cq) if !cq.contains("api-version=") => format!("{q}&{cq}"),
            Some(cq) => cq,
            None => q,
        });
        match route {
            Route::Responses => format!("{}/openai/responses", p.base_path),
            _ => format!(
                "{}/openai/deployments/{}{}",
                p.base_path,
                model.slug,
                route.upstream_suffix()
            ),
        }
    } else if let Route::Vllm(op) = route {
        let (under_api_root, suffix) = op.upstream_path();
        let root = if under_api_root {
            p.base_path.as_str()
        } else {
            p.base_path.strip_suffix("/v1").unwrap_or(&p.base_path)
        };
        format!("{root}{suffix}")
    } else if route.family() == Family::Gemini {
        format!(
            "{}/models/{}{}",
            p.base_path,
            model.slug,
            route.upstream_suffix()
        )
    } else {
        format!("{}{}", p.base_path, route.upstream_suffix())
    };
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    pq.parse::<http::Uri>()
        .map_err(|_| GatewayError::new(ErrorCode::InvalidRequest, "cannot build the upstream URL"))
}

impl Gateway {
    /// Everything before the upstream call. `Ok(true)`: an answer was written.
    async fn admit(&self, s: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let route = match routes::match_route(&s.req_header().method, s.req_header().uri.path()) {
            Ok(r) => r,
            Err(e) => return write_error(s, ctx, e, "route").await,
        };
        ctx.route = Some(route);
        let snap = ctx.snap.clone();
        match route {
            Route::Health => return write_reply(s, ctx, admin::health(), &[]).await,
            Route::Healthz => return write_reply(s, ctx, admin::healthz(&self.state), &[]).await,
            Route::Status => {
                let reply = match admin::status_view(&self.state, &s.req_header().headers).await {
                    Ok(view) => admin::status(&self.state, &view),
                    Err(r) => r,
                };
                return write_reply(s, ctx, reply, &[]).await;
            }
            // Per-model cost totals of every tenant: the operator's, never public.
            Route::Metrics
                if snap.config.server.metrics_on_proxy
                    && admin::is_operator(&snap, &s.req_header().headers) =>
            {
                return write_reply(s, ctx, admin::metrics_reply(), &[]).await
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
                return write_reply(s, ctx, admin::models(&snap, &key, None), &[]).await
            }
            Route::Vllm(routes::VllmOp::Models) => {
                let reply = admin::models(&snap, &key, Some(ProviderKind::Vllm));
                return write_reply(s, ctx, reply, &[]).await;
            }
            Route::KeysValidate => {
                let balances = gov.balances(&snap.config, &key).await;
                let reply = admin::key_info(&snap, &key, balances);
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
        if !snap.config.filters.is_empty() {
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
            match fx.pre_route(&snap.config.filters, &raw, json) {
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

    /// Points the request at `target`: its upstream URI, and the body rewritten for it (its
    /// slug; on the unified route, its wire format). Called for the first target and again on
    /// each failover.
    fn bind(
        &self,
        ctx: &mut Ctx,
        route: Route,
        target: Arc<Model>,
        raw: &[u8],
        query: Option<&str>,
    ) -> Result<(), (GatewayError, &'static str)> {
        let Some(insp) = ctx.insp.as_mut() else {
            return Err((
                GatewayError::new(ErrorCode::InternalError, "request not inspected"),
                "body",
            ));
        };
        if route == Route::Unified {
            let target_family = match target.provider.kind {
                ProviderKind::Anthropic => translate::Target::Anthropic,
                ProviderKind::Google => translate::Target::Gemini,
                _ => translate::Target::OpenAi,
            };
            let prepared =
                translate::prepare(target_family, raw, &target.slug).map_err(|e| (e, "body"))?;
            let uri = if target.provider.kind == ProviderKind::AzureOpenAi {
                upstream_uri(&target, Route::ChatCompletions, None)
            } else {
                format!(
                    "{}{}",
                    target.provider.base_path,
                    translate::target_path(target_family, &target.slug, prepared.stream)
                )
                .parse::<http::Uri>()
                .map_err(|_| {
                    GatewayError::new(ErrorCode::InvalidRequest, "cannot build the upstream URL")
                })
            }
            .map_err(|e| (e, "model"))?;
            insp.stream = prepared.stream;
            insp.client_include_usage = prepared.include_usage;
            ctx.body = Some(prepared.body);
            ctx.upstream_uri = Some(uri);
            ctx.unified = Some(Unified {
                target: target_family,
                stream: None,
                buffer: None,
                upstream_status: 0,
            });
            ctx.model = Some(target);
            return Ok(());
        }
        let uri = upstream_uri(&target, route, query).map_err(|e| (e, "model"))?;
        let force_usage = route.body_kind().is_some_and(|k| k.openai_stream_usage());
        ctx.body = Some(body::rewrite(raw, insp, &target.slug, force_usage));
        ctx.upstream_uri = Some(uri);
        ctx.model = Some(target);
        Ok(())
    }

    /// Moves to the plan's next target that can be bound (`false`: none left).
    fn next_target(&self, s: &Session, ctx: &mut Ctx) -> bool {
        let (Some(route), Some(raw)) = (ctx.route, ctx.raw.clone()) else {
            return false;
        };
        let query = s.req_header().uri.query().map(str::to_string);
        let json = route == Route::Unified || route.body_kind() != Some(body::BodyKind::Multipart);
        while let Some(t) = ctx.plan.advance() {
            match self.bind(ctx, route, t, &raw, query.as_deref()) {
                Ok(()) => {
                    // The rebuilt body goes through the `pre_upstream` filters again.
                    let set = ctx.snap.config.filters.clone();
                    let Some(fx) = ctx.filters.as_mut() else {
                        return true;
                    };
                    if let Some(m) = &ctx.model {
                        fx.resolved(&set, &m.name);
                    }
                    match fx.pre_upstream(&set, &mut ctx.body, json) {
                        Ok(()) => return true,
                        Err(_) => {
                            tracing::warn!(request_id = %ctx.request_id, "failover target blocked by a filter; skipped");
                        }
                    }
                }
                Err((e, _)) => {
                    tracing::warn!(request_id = %ctx.request_id, error = %e.message, "failover target skipped");
                }
            }
        }
        false
    }

    /// Decides whether a failed attempt moves on to the next target; records the failure.
    fn fail_over(ctx: &mut Ctx, class: ErrorClass, retry_after: Option<Duration>) -> bool {
        ctx.plan.failure(retry_after);
        if !ctx.plan.fails_over(class, ctx.attempts.len()) {
            return false;
        }
        if let Some(m) = &ctx.model {
            metrics::FAILOVERS
                .with_label_values(&[m.provider.name.as_str(), class_label(class)])
                .inc();
        }
        ctx.advance = true;
        true
    }

    /// Filters at `pre_upstream` (after limits and reservations), on the body the provider
    /// will get. `Ok(true)`: a filter blocked and the answer was written.
    async fn pre_upstream(&self, s: &mut Session, ctx: &mut Ctx, json: bool) -> Result<bool> {
        let Some(fx) = ctx.filters.as_mut() else {
            return Ok(false);
        };
        let t = Instant::now();
        let set = ctx.snap.config.filters.clone();
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
    async fn invalidate(&self, s: &mut Session, ctx: &mut Ctx) -> Result<bool> {
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
        if !admin::secret_matches(&given, secret) {
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

    /// Turns the provider's answer into the unified endpoint's: SSE translated event by event,
    /// unary answers normalized at the end, provider errors wrapped in the gateway's envelope.
    /// Drops credential and cookie headers from the provider's answer, masks its secrets in
    /// the other header values, and arms the body mask for an error answer.
    fn redact_headers(resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        use crate::routing::redact::{RedactStream, DENIED_RESPONSE_HEADERS};
        for h in DENIED_RESPONSE_HEADERS {
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
    fn end_cut_stream(body: &mut Option<Bytes>, ctx: &mut Ctx) {
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

    fn unified_body(&self, body: &mut Option<Bytes>, eos: bool, ctx: &mut Ctx) {
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

    /// After an upstream error status: sets a rejected or throttled credential aside, and
    /// decides whether to retry (another credential of the same provider after a 401, or the
    /// next deployment when the status is a failover trigger). Nothing has reached the client.
    fn retry_on_status(&self, status: u16, resp: &ResponseHeader, ctx: &mut Ctx) -> bool {
        let retry_after = failover::retry_after(&resp.headers);
        if let (Some(m), Some(i)) = (ctx.model.clone(), ctx.cred) {
            let creds = &m.provider.credentials;
            if creds.len() > 1 && matches!(status, 401 | 429) {
                let aside = retry_after.unwrap_or(if status == 429 {
                    Duration::from_secs(30)
                } else {
                    Duration::from_secs(300)
                });
                creds.set_aside(i, aside);
                tracing::warn!(provider = %m.provider.name, credential = i, status, "provider credential set aside");
                if status != 429
                    && creds.has_other(i)
                    && ctx.attempts.len() < failover::MAX_ATTEMPTS
                {
                    ctx.avoid_cred = Some(i);
                    return true;
                }
            }
        }
        Self::fail_over(ctx, ErrorClass::Status(status), retry_after)
    }

    /// Sends the request's spans to the trace exporter (sampled requests only): the request,
    /// its stages, each upstream attempt and the stream.
    fn export_trace(&self, ctx: &Ctx, rec: &UsageRecord, route_label: &str) {
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
        if let (Some(start), Some(ttfb)) = (ctx.attempt_starts.last(), ctx.ttfb) {
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

    /// Classifies a Pingora error as a gateway error (status + code).
    fn classify(e: &Error) -> Option<GatewayError> {
        use ErrorType::*;
        let (code, msg) = match e.etype() {
            HTTPStatus(c) if *c == 413 => (ErrorCode::PayloadTooLarge, "request body too large"),
            HTTPStatus(c) if *c < 500 => (ErrorCode::InvalidRequest, "invalid request"),
            ConnectTimedout => (
                ErrorCode::UpstreamTimeout,
                "connecting to the provider timed out",
            ),
            ReadTimedout if e.esource() == &ErrorSource::Upstream => (
                ErrorCode::UpstreamTimeout,
                "the provider did not answer in time",
            ),
            WriteTimedout if e.esource() == &ErrorSource::Upstream => (
                ErrorCode::UpstreamTimeout,
                "sending to the provider timed out",
            ),
            ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
            | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | BindError
            | SocketError => (
                ErrorCode::UpstreamUnreachable,
                "the provider could not be reached",
            ),
            _ => match e.esource() {
                ErrorSource::Upstream => {
                    (ErrorCode::UpstreamError, "the provider failed to answer")
                }
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed | ReadTimedout | WriteTimedout => {
                        return None
                    }
                    _ => (ErrorCode::InvalidRequest, "malformed request"),
                },
                _ => (ErrorCode::InternalError, "internal error"),
            },
        };
        Some(GatewayError::new(code, msg))
    }

    /// The routing class of a Pingora error before any response: what `failoverOn` matches.
    /// A connection that dies before answering (reset, closed) counts as `connect`.
    fn routing_class(e: &Error) -> Option<ErrorClass> {
        use ErrorType::*;
        match e.etype() {
            ConnectTimedout | TLSHandshakeTimedout => Some(ErrorClass::Timeout),
            ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
                Some(ErrorClass::Timeout)
            }
            ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
            | TLSHandshakeFailure | InvalidCert | SocketError | BindError => {
                Some(ErrorClass::Connect)
            }
            ConnectionClosed | ReadError | WriteError if e.esource() == &ErrorSource::Upstream => {
                Some(ErrorClass::Connect)
            }
            _ => None,
        }
    }

    fn error_class(e: &Error) -> &'static str {
        use ErrorType::*;
        if let Some(c) = Self::routing_class(e) {
            return class_label(c);
        }
        match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => "timeout",
            ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure | InvalidCert
            | SocketError | BindError | ConnectProxyFailure => "connect",
            HTTPStatus(s) if *s == 429 => "rate_limit",
            HTTPStatus(s) if *s >= 500 => "5xx",
            _ => "io",
        }
    }

    fn end_attempt(
        ctx: &mut Ctx,
        outcome: &'static str,
        class: Option<&'static str>,
        status: Option<u16>,
    ) {
        let Some(start) = ctx.attempt_start.take() else {
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
    fn produced(ctx: &Ctx) -> Tokens {
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
    fn usage_record(&self, s: &Session, e: Option<&Error>, ctx: &mut Ctx) -> UsageRecord {
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
        let invalid = ctx.tap.invalid_body && ctx.upstream_status.is_some_and(|s| s < 300);
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
        } else if ctx.upstream_status.is_some_and(|s| s < 300) {
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
            timestamp: admin::rfc3339(ctx.started_at),
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
            ttfb_ms: ctx.ttfb.map(|d| d.as_secs_f64() * 1000.0),
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
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            started_at: SystemTime::now(),
            snap: self.state.current(),
            request_id: String::new(),
            client_request_id: None,
            route: None,
            key: None,
            model: None,
            body: None,
            request_bytes: 0,
            insp: None,
            upstream_uri: None,
            tap: ResponseTap::default(),
            status: None,
            error_code: None,
            denied_by: None,
            attempts: Vec::new(),
            attempt_start: None,
            upstream_status: None,
            ttfb: None,
            provider_request_id: None,
            overhead: Duration::ZERO,
            recorded: false,
            unified: None,
            raw: None,
            plan: failover::Plan::default(),
            advance: false,
            retry_pending: false,
            cred: None,
            avoid_cred: None,
            trace: None,
            marks: Vec::new(),
            attempt_starts: Vec::new(),
            filters: None,
            gov: Default::default(),
            redact: None,
            mcp: None,
            _in_flight: InFlight::new(),
        }
    }

    async fn request_filter(&self, s: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let t = Instant::now();
        // HTTP/1.1 pipelining (RFC 9112 §9.3.2): a request sent before the previous answer is
        // served after it, in order, instead of being dropped with the connection.
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
        let r = self.admit(s, ctx).await;
        ctx.overhead += t.elapsed();
        r
    }

    async fn upstream_peer(&self, s: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if std::mem::take(&mut ctx.advance) {
            if !self.next_target(s, ctx) {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "no failover target left",
                ));
            }
            if !ctx.plan.retry_delay.is_zero() {
                tokio::time::sleep(ctx.plan.retry_delay).await;
            }
        }
        ctx.plan.start();
        let t = Instant::now();
        let model = ctx
            .model
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no model resolved"))?;
        let p = &model.provider;
        let addrs = p.addrs.load();
        if addrs.is_empty() {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                format!("provider host {} is not resolved", p.host),
            ));
        }
        let addr = addrs[ctx.attempts.len() % addrs.len()];
        let mut peer = HttpPeer::new(addr, p.tls, p.host.clone());
        peer.options.connection_timeout = Some(p.connect_timeout);
        peer.options.total_connection_timeout = Some(p.connect_timeout * 2);
        peer.options.read_timeout = Some(p.read_timeout);
        peer.options.write_timeout = Some(p.read_timeout.min(Duration::from_secs(60)));
        peer.options.idle_timeout = Some(p.idle_timeout);
        ctx.attempt_start = Some(Instant::now());
        ctx.overhead += t.elapsed();
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _s: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let t = Instant::now();
        let (Some(model), Some(uri), Some(body)) = (&ctx.model, &ctx.upstream_uri, &ctx.body)
        else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request not admitted",
            ));
        };
        let p = &model.provider;
        req.set_uri(uri.clone());
        for h in [
            "authorization",
            "x-api-key",
            "x-goog-api-key",
            "api-key",
            "accept-encoding",
            "cookie",
            "proxy-authorization",
            "transfer-encoding",
            "expect",
        ] {
            req.remove_header(h);
        }
        req.insert_header("host", p.authority.as_str())?;
        ctx.cred = None;
        if let Some((i, v)) = p.credentials.pick(ctx.avoid_cred.take()) {
            req.insert_header(p.auth_header.clone(), v.clone())?;
            ctx.cred = Some(i);
        }
        if p.kind == ProviderKind::Anthropic && req.headers.get("anthropic-version").is_none() {
            req.insert_header("anthropic-version", "2023-06-01")?;
        }
        for (k, v) in &p.headers {
            req.insert_header(k.clone(), v.clone())?;
        }
        let multipart = ctx.route.and_then(Route::body_kind) == Some(body::BodyKind::Multipart);
        if !multipart {
            req.insert_header("content-type", "application/json")?;
        }
        req.insert_header("content-length", body.len().to_string())?;
        req.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(fx) = &ctx.filters {
            fx.apply_headers(req)?;
        }
        ctx.overhead += t.elapsed();
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = &ctx.body {
            // Hold back whatever the client session replays; send the whole rewritten body at
            // the end (never `None` before the end: that would end the upstream body).
            *body = Some(if end_of_stream {
                b.clone()
            } else {
                Bytes::new()
            });
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _s: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let t = Instant::now();
        let status = resp.status.as_u16();
        if let Some(start) = ctx.attempt_start {
            let ttfb = start.elapsed();
            ctx.ttfb = Some(ttfb);
            if let Some(p) = ctx.provider_name() {
                metrics::TTFB
                    .with_label_values(&[p])
                    .observe(ttfb.as_secs_f64());
            }
        }
        ctx.upstream_status = Some(status);
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
            ctx.retry_pending = true;
            ctx.overhead += t.elapsed();
            return Err(e);
        }
        if status < 400 || !matches!(status, 429 | 500..=599) {
            ctx.plan.success(ctx.ttfb.unwrap_or_default());
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
            ctx.overhead += t.elapsed();
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
        ctx.overhead += t.elapsed();
        Ok(())
    }

    async fn response_filter(
        &self,
        _s: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
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

    fn response_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let t = Instant::now();
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
        ctx.overhead += t.elapsed();
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _s: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        Self::end_attempt(ctx, "error", Some(Self::error_class(&e)), None);
        let class = Self::routing_class(&e).unwrap_or(ErrorClass::Connect);
        if ctx.body.is_some() && Self::fail_over(ctx, class, None) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        s: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        Self::end_attempt(ctx, "error", Some(Self::error_class(&e)), None);
        if std::mem::take(&mut ctx.retry_pending) {
            // Our own status-driven retry (failover or another credential), decided in
            // `upstream_response_filter` before anything reached the client.
            e.set_retry(true);
        } else if s.response_written().is_some() || ctx.body.is_none() {
            e.set_retry(false);
        } else if matches!(e.retry, RetryType::ReusedOnly) && client_reused {
            // A pooled connection the provider had closed: replay the kept body, same target,
            // unless the operator turned replays off (a provider that did process the first
            // send generates twice).
            e.retry
                .decide_reuse(ctx.snap.config.server.retry_on_reused_connection);
        } else if let Some(class) = Self::routing_class(&e) {
            // Timed out or died before answering: the next deployment, if the plan allows.
            let over = Self::fail_over(ctx, class, None);
            e.set_retry(over);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn fail_to_proxy(&self, s: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
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

    async fn logging(&self, s: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.recorded {
            return;
        }
        ctx.recorded = true;
        let t = Instant::now();
        let route = ctx.route;
        let record_usage = route.is_none_or(Route::records_usage);
        let mut rec = self.usage_record(s, e, ctx);
        mcp::finish(ctx, &mut rec);
        crate::filters::hooks::finish(
            &ctx.snap.config.filters,
            ctx.filters.as_deref_mut(),
            &mut rec,
        );
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

    fn request_summary(&self, s: &Session, ctx: &Ctx) -> String {
        // Pingora logs this with errors: never the query string (it may carry `?key=`).
        format!(
            "{} {} request_id={}",
            s.req_header().method,
            s.req_header().uri.path(),
            ctx.request_id
        )
    }

    fn suppress_error_log(&self, _s: &Session, _ctx: &Ctx, e: &Error) -> bool {
        // Vanished clients are an outcome in the usage record, not an error.
        e.esource() == &ErrorSource::Downstream
    }
}

/// The metric label of a routing error class.
fn class_label(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::Status(429) => "rate_limit",
        ErrorClass::Status(s) if s >= 500 => "5xx",
        ErrorClass::Status(_) => "4xx",
        ErrorClass::Timeout => "timeout",
        ErrorClass::Connect => "connect",
    }
}
