//! The request context: what one request carries through the phases (`Ctx`), the state of
//! a unified request, and the in-flight gauge.

use super::*;

/// Counts a request in flight for as long as its context lives.
pub struct InFlight;

impl InFlight {
    pub(super) fn new() -> Self {
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
    pub(super) start: Instant,
    pub(super) started_at: SystemTime,
    pub(super) snap: Arc<Snapshot>,
    /// The gateway's own id of this request: the usage record's identity, sent upstream.
    pub(super) request_id: String,
    /// The client's `X-Request-Id`, if it sent a well-formed one (echoed back).
    pub(super) client_request_id: Option<String>,
    pub(super) route: Option<Route>,
    pub(super) key: Option<Arc<VirtualKey>>,
    pub(super) model: Option<Arc<Model>>,
    /// The rewritten body sent upstream (replayed on every attempt).
    pub(super) body: Option<Bytes>,
    pub(super) request_bytes: u64,
    pub(super) insp: Option<Inspected>,
    pub(super) upstream_uri: Option<http::Uri>,
    pub(super) tap: ResponseTap,
    /// Status the client got (set by gateway answers; else read from the session).
    pub(super) status: Option<u16>,
    pub(super) error_code: Option<String>,
    pub(super) denied_by: Option<&'static str>,
    pub(super) attempts: Vec<Attempt>,
    /// The attempt under way (or the last one).
    pub(super) attempt: AttemptState,
    pub(super) provider_request_id: Option<String>,
    pub(super) overhead: Duration,
    pub(super) recorded: bool,
    /// `/v1/llm/chat`: the target family and how its answer is turned back.
    pub(super) unified: Option<Unified>,
    /// The client's body as received, kept while another target may need it rewritten.
    pub(super) raw: Option<Bytes>,
    /// Which deployments are tried, in order (SPEC §5).
    pub(super) plan: failover::Plan,
    /// Trace context when tracing is on; stage timings and attempt starts for its spans.
    pub(super) trace: Option<crate::telemetry::TraceContext>,
    pub(super) marks: Vec<(&'static str, Instant, Instant)>,
    pub(super) attempt_starts: Vec<Instant>,
    /// Filter state; `None` when no filter is configured.
    pub(super) filters: Option<Box<crate::filters::RequestFilters>>,
    /// Rate-limit grant (leases, token reservation) and `x-ratelimit-*` values.
    pub(super) gov: crate::governance::RequestGov,
    /// Masks the provider's secrets in an error body it sends (some echo the credential).
    pub(super) redact: Option<crate::types::redact::RedactStream>,
    /// MCP requests (`/v1/mcp/...`): the server and its calls.
    pub(super) mcp: Option<Box<crate::mcp::McpCtx>>,
    pub(super) _in_flight: InFlight,
}

/// What belongs to one upstream attempt (a request has one per target and replay).
#[derive(Debug, Default)]
pub(super) struct AttemptState {
    /// When `upstream_peer` started it.
    pub(super) start: Option<Instant>,
    /// The status the provider answered (the last attempt's).
    pub(super) upstream_status: Option<u16>,
    /// Time to the response head.
    pub(super) ttfb: Option<Duration>,
    /// The next `upstream_peer` moves to the plan's next target.
    pub(super) advance: bool,
    /// `upstream_response_filter` asked for another attempt (failover or another credential).
    pub(super) retry_pending: bool,
    /// Index of the provider credential this attempt uses.
    pub(super) cred: Option<usize>,
    /// The credential the next attempt must not use (it was just rejected).
    pub(super) avoid_cred: Option<usize>,
}

/// State of a unified (`/v1/llm/chat`) request.
pub(super) struct Unified {
    pub(super) target: translate::Target,
    /// Streaming answers, translated event by event.
    pub(super) stream: Option<translate::StreamTranslator>,
    /// Unary answers (and provider errors), kept whole and converted at the end.
    pub(super) buffer: Option<Vec<u8>>,
    pub(super) upstream_status: u16,
}

impl Ctx {
    /// The id the client sees in `x-request-id`: its own when it sent one, else the gateway's.
    pub(super) fn echoed_request_id(&self) -> &str {
        self.client_request_id
            .as_deref()
            .unwrap_or(&self.request_id)
    }

    /// Records a stage that began at `start` and ends now (for the request's trace).
    pub(super) fn mark(&mut self, stage: &'static str, start: Instant) {
        if self.trace.is_some_and(|t| t.sampled) {
            self.marks.push((stage, start, Instant::now()));
        }
    }

    pub(super) fn provider_name(&self) -> Option<&str> {
        self.model.as_ref().map(|m| m.provider.name.as_str())
    }
}

impl Ctx {
    /// A fresh context on the current snapshot.
    pub(super) fn new(snap: Arc<Snapshot>) -> Ctx {
        Ctx {
            start: Instant::now(),
            started_at: SystemTime::now(),
            snap,
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
            attempt: AttemptState::default(),
            provider_request_id: None,
            overhead: Duration::ZERO,
            recorded: false,
            unified: None,
            raw: None,
            plan: failover::Plan::default(),
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
}
