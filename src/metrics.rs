//! Prometheus metrics (default registry), served at `/metrics`.

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
];

macro_rules! lazy_metric {
    ($name:ident : $ty:ty = $init:expr) => {
        #[allow(clippy::expect_used)]
        pub static $name: Lazy<$ty> = Lazy::new(|| $init.expect("metric registers once"));
    };
}

lazy_metric!(REQUESTS: IntCounterVec = register_int_counter_vec!(
    "wharf_requests_total", "Requests by route, status class and provider",
    &["route", "status_class", "provider"]));
lazy_metric!(REQUEST_DURATION: HistogramVec = register_histogram_vec!(
    "wharf_request_duration_seconds", "Whole request duration", &["route"], LATENCY_BUCKETS.to_vec()));
lazy_metric!(GATEWAY_OVERHEAD: HistogramVec = register_histogram_vec!(
    "wharf_gateway_overhead_seconds", "Time spent in Wharf itself, excluding the upstream wait",
    &["route"], OVERHEAD_BUCKETS.to_vec()));
lazy_metric!(TTFB: HistogramVec = register_histogram_vec!(
    "wharf_upstream_ttfb_seconds", "Time to the first upstream response byte", &["provider"],
    LATENCY_BUCKETS.to_vec()));
lazy_metric!(TOKENS: IntCounterVec = register_int_counter_vec!(
    "wharf_tokens_total", "Tokens by class", &["class", "provider", "model"]));
lazy_metric!(COST: IntCounterVec = register_int_counter_vec!(
    "wharf_cost_nanos_usd_total", "Cost in nanos-USD", &["provider", "model"]));
lazy_metric!(UPSTREAM_ERRORS: IntCounterVec = register_int_counter_vec!(
    "wharf_upstream_errors_total", "Upstream failures by provider and class", &["provider", "class"]));
lazy_metric!(ROUTING_DECISIONS: IntCounterVec = register_int_counter_vec!(
    "wharf_routing_decisions_total", "Routing plans made, by strategy", &["strategy"]));
lazy_metric!(FAILOVERS: IntCounterVec = register_int_counter_vec!(
    "wharf_failovers_total", "Attempts abandoned for another deployment, by failed provider and class",
    &["provider", "class"]));
lazy_metric!(EJECTIONS: IntCounterVec = register_int_counter_vec!(
    "wharf_deployment_ejections_total", "Deployments ejected by the circuit breaker",
    &["provider", "model"]));
lazy_metric!(SPANS_EXPORTED: IntCounter = register_int_counter!(
    "wharf_trace_spans_exported_total", "Spans accepted by the OTLP endpoint"));
lazy_metric!(SPANS_DROPPED: IntCounter = register_int_counter!(
    "wharf_trace_spans_dropped_total", "Spans dropped: queue full or export failed"));
lazy_metric!(SAFETY_DECISIONS: IntCounterVec = register_int_counter_vec!(
    "wharf_safety_decisions_total", "SafetySec decisions with a finding, by action and reason",
    &["action", "reason"]));
lazy_metric!(IN_FLIGHT: IntGauge = register_int_gauge!(
    "wharf_requests_in_flight", "Requests being served"));
lazy_metric!(USAGE_QUEUE_DEPTH: IntGauge = register_int_gauge!(
    "wharf_usage_queue_depth", "Usage records waiting to be written"));
lazy_metric!(USAGE_DROPPED: IntCounter = register_int_counter!(
    "wharf_usage_records_dropped_total", "Usage records dropped because the queue was full"));
lazy_metric!(USAGE_WRITTEN: IntCounter = register_int_counter!(
    "wharf_usage_records_written_total", "Usage records written by the sink"));
lazy_metric!(USAGE_WRITE_ERRORS: IntCounter = register_int_counter!(
    "wharf_usage_write_errors_total", "Usage records the sink failed to write"));
lazy_metric!(RATE_LIMITED: IntCounterVec = register_int_counter_vec!(
    "wharf_rate_limited_total", "Requests refused by a rate or payload limit", &["code", "scope"]));
lazy_metric!(RATE_LIMIT_STORE_ERRORS: IntCounter = register_int_counter!(
    "wharf_rate_limit_store_errors_total", "Rate-limit checks Redis could not answer"));
lazy_metric!(RATE_LIMIT_SLICE_CHECKS: IntCounter = register_int_counter!(
    "wharf_rate_limit_slice_checks_total",
    "Shared rate-limit checks answered from a slice this node holds (no Redis round trip)"));
lazy_metric!(RATE_LIMIT_LEASES: IntCounter = register_int_counter!(
    "wharf_rate_limit_lease_scripts_total",
    "Lease scripts sent to Redis (checks that needed Redis, and slices given back)"));
lazy_metric!(BUDGET_WARNINGS: IntCounterVec = register_int_counter_vec!(
    "wharf_budget_warnings_total", "Budget and quota warning thresholds crossed", &["kind", "threshold"]));
lazy_metric!(BUDGET_WARNING_WEBHOOKS: IntCounterVec = register_int_counter_vec!(
    "wharf_budget_warning_webhooks_total",
    "Warning-threshold webhook deliveries by result (sent, failed, dropped)", &["result"]));
lazy_metric!(CONFIG_RELOADS: IntCounterVec = register_int_counter_vec!(
    "wharf_config_reloads_total", "Configuration reloads by result", &["result"]));
lazy_metric!(CONFIG_VERSION: IntGauge = register_int_gauge!(
    "wharf_config_version", "Generation of the configuration being served"));
lazy_metric!(FILTER_DECISIONS: IntCounterVec = register_int_counter_vec!(
    "wharf_filter_decisions_total", "Filter decisions by filter, phase and action (continue, mutate, block, error)",
    &["filter", "phase", "action"]));
lazy_metric!(FILTER_ERRORS: IntCounterVec = register_int_counter_vec!(
    "wharf_filter_errors_total", "Contained filter failures by filter and kind (runtime, memory, instructions, timeout, io)",
    &["filter", "kind"]));
lazy_metric!(FILTER_SCRIPT_RELOADS: IntCounterVec = register_int_counter_vec!(
    "wharf_filter_script_reloads_total", "Hot reloads of filter scripts by result", &["filter", "result"]));
lazy_metric!(FILTER_SCRIPT_HEALTHY: IntGaugeVec = register_int_gauge_vec!(
    "wharf_filter_script_healthy", "0 while the script file on disk fails to load (the previous version runs)",
    &["filter"]));
lazy_metric!(UPSTREAM_HEALTHY: IntGaugeVec = register_int_gauge_vec!(
    "wharf_upstream_healthy", "Active health check of a provider: 1 passing, 0 failing (out of routing)",
    &["provider"]));

/// `2xx`, `4xx`, ...
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Registers every metric so `/metrics` lists them before the first request.
pub fn init() {
    Lazy::force(&REQUESTS);
    Lazy::force(&REQUEST_DURATION);
    Lazy::force(&GATEWAY_OVERHEAD);
    Lazy::force(&TTFB);
    Lazy::force(&TOKENS);
    Lazy::force(&COST);
    Lazy::force(&UPSTREAM_ERRORS);
    Lazy::force(&IN_FLIGHT);
    Lazy::force(&USAGE_QUEUE_DEPTH);
    Lazy::force(&USAGE_DROPPED);
    Lazy::force(&USAGE_WRITTEN);
    Lazy::force(&USAGE_WRITE_ERRORS);
    Lazy::force(&CONFIG_RELOADS);
    Lazy::force(&CONFIG_VERSION);
    Lazy::force(&FILTER_DECISIONS);
    Lazy::force(&FILTER_ERRORS);
    Lazy::force(&FILTER_SCRIPT_RELOADS);
    Lazy::force(&FILTER_SCRIPT_HEALTHY);
}

/// The text exposition of the default registry.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    let mut buf = Vec::with_capacity(16 * 1024);
    let enc = prometheus::TextEncoder::new();
    if enc.encode(&prometheus::gather(), &mut buf).is_err() {
        buf.clear();
    }
    buf
}
