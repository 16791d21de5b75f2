//! Request traces exported as OpenTelemetry spans over OTLP/HTTP (JSON encoding).
//!
//! Each request is one trace (or joins the client's, from a W3C `traceparent` header). Its root
//! span covers the whole request; child spans cover the gateway's stages (authentication, body,
//! routing, limits, each upstream attempt, the stream, the usage write). Spans are assembled
//! after the request from timestamps the proxy recorded, so tracing adds no work to the request
//! path beyond a few `Instant::now()` calls, and none at all for unsampled requests.
//!
//! The exporter is a background task: spans go through a bounded queue (full: dropped and
//! counted) and leave in batches (`POST {endpoint}` with `Content-Type: application/json`, the
//! OTLP/HTTP JSON form that every collector accepts). The encoding is small and documented, so it
//! is written here rather than pulling in the OpenTelemetry SDK and its runtime.

use crate::metrics;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Spans waiting for export; above this they are dropped.
const QUEUE: usize = 8192;
/// Spans per export request.
const BATCH: usize = 512;

pub use crate::config::TelemetryConfig;

/// The trace context of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The client's span, when it sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl TraceContext {
    /// From the client's `traceparent` (W3C Trace Context), else a new trace whose id is the
    /// request id when that is 32 hex digits (Wharf's own ids are), else random. The sampling
    /// decision is the client's when it sent one, else `ratio` applied to the trace id.
    pub fn new(traceparent: Option<&str>, request_id: &str, ratio: f64) -> TraceContext {
        if let Some(tp) = traceparent {
            let parts: Vec<&str> = tp.trim().split('-').collect();
            if let [version, trace, span, flags] = parts[..] {
                if let (Some(t), Some(p), Some(f)) =
                    (unhex::<16>(trace), unhex::<8>(span), unhex::<1>(flags))
                {
                    if version != "ff" && t != [0; 16] && p != [0; 8] {
                        return TraceContext {
                            trace_id: t,
                            parent: Some(p),
                            sampled: f[0] & 1 == 1,
                        };
                    }
                }
            }
        }
        let trace_id = unhex::<16>(request_id)
            .filter(|t| *t != [0; 16])
            .unwrap_or_else(rand::random);
        let head = u64::from_be_bytes([
            trace_id[8],
            trace_id[9],
            trace_id[10],
            trace_id[11],
            trace_id[12],
            trace_id[13],
            trace_id[14],
            trace_id[15],
        ]);
        // The low half of the id: Wharf's own ids put a counter there, so the ratio holds even
        // for ids generated in the same millisecond.
        let h = head.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let sampled = ratio >= 1.0 || (ratio > 0.0 && (h as f64) < ratio * u64::MAX as f64);
        TraceContext {
            trace_id,
            parent: None,
            sampled,
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Attr {
    fn from(s: &str) -> Attr {
        Attr::Str(s.to_string())
    }
}
impl From<String> for Attr {
    fn from(s: String) -> Attr {
        Attr::Str(s)
    }
}
impl From<i64> for Attr {
    fn from(v: i64) -> Attr {
        Attr::Int(v)
    }
}
impl From<u64> for Attr {
    fn from(v: u64) -> Attr {
        Attr::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Attr {
    fn from(v: bool) -> Attr {
        Attr::Bool(v)
    }
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attrs: Vec<(&'static str, Attr)>,
    pub error: bool,
    /// `SERVER` for the root span, `CLIENT` for upstream calls, `INTERNAL` otherwise.
    pub kind: u8,
}

pub const KIND_INTERNAL: u8 = 1;
pub const KIND_SERVER: u8 = 2;
pub const KIND_CLIENT: u8 = 3;

/// Builds the spans of one request: a root span and its children, each placed on the wall
/// clock from monotonic instants (`anchor` is the request's start on both clocks).
pub struct TraceBuilder {
    ctx: TraceContext,
    anchor: (Instant, SystemTime),
    root: [u8; 8],
    pub spans: Vec<Span>,
}

impl TraceBuilder {
    pub fn new(ctx: TraceContext, start: Instant, started_at: SystemTime) -> TraceBuilder {
        TraceBuilder {
            ctx,
            anchor: (start, started_at),
            root: rand::random(),
            spans: Vec::new(),
        }
    }

    fn wall(&self, t: Instant) -> SystemTime {
        self.anchor.1 + t.saturating_duration_since(self.anchor.0)
    }

    /// The root span (the whole request), parented to the client's span if any.
    pub fn root(
        &mut self,
        name: &str,
        end: Instant,
        attrs: Vec<(&'static str, Attr)>,
        error: bool,
    ) {
        self.spans.push(Span {
            trace_id: self.ctx.trace_id,
            span_id: self.root,
            parent: self.ctx.parent,
            name: name.to_string(),
            start: self.anchor.1,
            end: self.wall(end),
            attrs,
            error,
            kind: KIND_SERVER,
        });
    }

    /// A child of the root span.
    pub fn child(
        &mut self,
        name: &str,
        kind: u8,
        start: Instant,
        end: Instant,
        attrs: Vec<(&'static str, Attr)>,
        error: bool,
    ) {
        self.spans.push(Span {
            trace_id: self.ctx.trace_id,
            span_id: rand::random(),
            parent: Some(self.root),
            name: name.to_string(),
            start: self.wall(start),
            end: self.wall(end.max(start)),
            attrs,
            error,
            kind,
        });
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .to_string()
}

fn attr_json(k: &str, v: &Attr) -> Value {
    let value = match v {
        Attr::Str(s) => json!({ "stringValue": s }),
        // OTLP/JSON carries 64-bit integers as strings.
        Attr::Int(i) => json!({ "intValue": i.to_string() }),
        Attr::Bool(b) => json!({ "boolValue": b }),
    };
    json!({ "key": k, "value": value })
}

/// The OTLP/HTTP JSON body (`ExportTraceServiceRequest`) for `spans`.
pub fn otlp_body(service_name: &str, spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut v = json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "name": s.name,
                "kind": s.kind,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": s.attrs.iter().map(|(k, v)| attr_json(k, v)).collect::<Vec<_>>(),
                "status": { "code": if s.error { 2 } else { 1 } },
            });
            if let Some(p) = s.parent {
                v["parentSpanId"] = json!(hex(&p));
            }
            v
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                attr_json("service.name", &Attr::Str(service_name.to_string())),
                attr_json("service.version", &Attr::Str(env!("CARGO_PKG_VERSION").to_string())),
            ]},
            "scopeSpans": [{
                "scope": { "name": "wharf", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

/// The exporter's handle: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Exporter {
    tx: mpsc::Sender<Vec<Span>>,
}

/// The export task, run as a background service.
pub struct ExportTask {
    endpoint: String,
    service: String,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Vec<Span>>>>,
}

impl Exporter {
    /// The handle and its export task for `cfg`; `None` without an endpoint.
    pub fn new(cfg: &TelemetryConfig) -> Option<(Exporter, ExportTask)> {
        let endpoint = cfg.otlp_endpoint.clone()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        Some((
            Exporter { tx },
            ExportTask {
                endpoint,
                service: cfg.service_name.clone(),
                rx: std::sync::Mutex::new(Some(rx)),
            },
        ))
    }

    /// Queues the spans of one request; dropped (and counted) when the queue is full.
    pub fn export(&self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        if self.tx.try_send(spans).is_err() {
            metrics::SPANS_DROPPED.inc_by(n);
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ExportTask {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        let rx = self.rx.lock().ok().and_then(|mut g| g.take());
        if let Some(rx) = rx {
            run(self.endpoint.clone(), self.service.clone(), rx).await;
        }
    }
}

async fn run(endpoint: String, service: String, mut rx: mpsc::Receiver<Vec<Span>>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "trace exporter disabled: no HTTP client");
            return;
        }
    };
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    loop {
        let first = match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(spans)) => Some(spans),
            Ok(None) => None,
            Err(_) => Some(Vec::new()),
        };
        let closed = first.is_none();
        if let Some(s) = first {
            batch.extend(s);
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(s) => batch.extend(s),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let body = otlp_body(&service, &batch).to_string();
            let n = batch.len() as u64;
            batch.clear();
            let sent = client
                .post(&endpoint)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => metrics::SPANS_EXPORTED.inc_by(n),
                Ok(r) => {
                    metrics::SPANS_DROPPED.inc_by(n);
                    tracing::warn!(status = r.status().as_u16(), "trace export refused");
                }
                Err(e) => {
                    metrics::SPANS_DROPPED.inc_by(n);
                    tracing::warn!(error = %e, "trace export failed");
                }
            }
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn traceparent_is_joined() {
        let c = TraceContext::new(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            "whatever",
            0.0,
        );
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            c.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert!(c.sampled, "the client's decision wins over the ratio");
        let c = TraceContext::new(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            "x",
            1.0,
        );
        assert!(!c.sampled);
    }

    #[test]
    fn invalid_traceparent_starts_a_new_trace_from_the_request_id() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let c = TraceContext::new(Some(bad), "0123456789abcdef0123456789abcdef", 1.0);
            assert_eq!(
                c.trace_id_hex(),
                "0123456789abcdef0123456789abcdef",
                "{bad}"
            );
            assert_eq!(c.parent, None);
        }
        let c = TraceContext::new(None, "not-hex", 1.0);
        assert_ne!(c.trace_id, [0; 16]);
    }

    #[test]
    fn ratio_samples_about_that_share() {
        let n = 20_000;
        let sampled = (0..n)
            .filter(|i| {
                let id = format!("{:012x}{:08x}{:012x}", 1_700_000_000_000u64, 7, i);
                TraceContext::new(None, &id, 0.25).sampled
            })
            .count();
        assert!((4_500..=5_500).contains(&sampled), "{sampled}");
        assert!(!TraceContext::new(None, "0123456789abcdef0123456789abcdef", 0.0).sampled);
    }

    #[test]
    fn otlp_json_shape() {
        let ctx = TraceContext::new(None, "0123456789abcdef0123456789abcdef", 1.0);
        let t0 = Instant::now();
        let mut b = TraceBuilder::new(ctx, t0, SystemTime::UNIX_EPOCH + Duration::from_secs(1));
        b.root(
            "POST /v1/chat/completions",
            t0 + Duration::from_millis(5),
            vec![("http.status_code", Attr::Int(200))],
            false,
        );
        b.child(
            "auth",
            KIND_INTERNAL,
            t0,
            t0 + Duration::from_millis(1),
            vec![],
            false,
        );
        let v = otlp_body("wharf", &b.spans);
        let spans = &v["resourceSpans"][0]["scopeSpans"][0]["spans"];
        assert_eq!(spans[0]["traceId"], "0123456789abcdef0123456789abcdef");
        assert_eq!(spans[0]["startTimeUnixNano"], "1000000000");
        assert_eq!(spans[0]["endTimeUnixNano"], "1005000000");
        assert_eq!(spans[0]["attributes"][0]["value"]["intValue"], "200");
        assert_eq!(spans[1]["parentSpanId"], spans[0]["spanId"]);
        assert!(spans[0].get("parentSpanId").is_none());
    }
}
