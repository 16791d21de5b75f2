//! The usage record every request leaves behind (SPEC §10), with the parts other domains
//! fill in: what the filters decided and the MCP calls of the request.

use super::{Pricing, Tokens};
use serde::Serialize;
use serde_json::{Map, Value};

/// Where the token counts came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// Nothing was produced or nothing could be read.
    #[default]
    None,
    /// Reported by the provider.
    Provider,
    /// Estimated by the gateway (the provider reported nothing).
    Estimated,
}

/// One upstream attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    pub outcome: &'static str,
    pub error_class: Option<&'static str>,
    pub status: Option<u16>,
    pub latency_ms: f64,
}

/// One record per request (SPEC §10 fields that apply).
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageRecord {
    pub request_id: String,
    /// RFC 3339 start time.
    pub timestamp: String,
    pub organisation_id: Option<String>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub api_key_id: Option<String>,
    pub method: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub provider_type: Option<&'static str>,
    pub upstream_model: Option<String>,
    pub stream: bool,
    pub status: u16,
    /// `success`, `error`, `upstream_error`, `client_disconnected`.
    pub outcome: &'static str,
    pub error_code: Option<String>,
    /// Which gate denied the request, if any (`auth`, `route`, `body`, `model`, ...).
    pub denied_by: Option<&'static str>,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub gateway_overhead_us: u64,
    pub tokens: Tokens,
    pub usage_source: UsageSource,
    pub cost_nanos: u64,
    pub pricing: Option<Pricing>,
    pub attempts: Vec<Attempt>,
    pub provider_request_id: Option<String>,
    /// The `X-Request-Id` the client sent, if any: kept for correlation, never an identity
    /// (`request_id` is always the gateway's own, unique per request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    /// The upstream stream ended before its normal end.
    pub stream_cut: bool,
    pub client_disconnected: bool,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// OpenTelemetry trace id (32 hex digits) when tracing is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// What filters decided (mutate, block, error) and the metadata they set; absent when
    /// no filter did anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<FilterReport>,
    /// MCP requests: the server's slug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_server: Option<String>,
    /// MCP requests: one record per JSON-RPC call (`mcp_usage_records`), linked by request id.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mcp_calls: Vec<McpUsageRecord>,
}

/// One filter decision, kept on the usage record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Decision {
    pub filter: String,
    pub phase: String,
    /// `mutate`, `block`, `error`.
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What filters did to one request: on the usage record as `filters`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct FilterReport {
    /// Decisions other than "continue", in order.
    pub decisions: Vec<Decision>,
    /// Metadata (tags) set by filters.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// One JSON-RPC call through the gateway (table `mcp_usage_records`), linked to the usage
/// record of its HTTP request by `request_id` and `call_index`.
#[derive(Debug, Clone, Serialize)]
pub struct McpUsageRecord {
    pub request_id: String,
    pub call_index: u32,
    pub mcp_server_id: String,
    pub server_slug: String,
    pub transport: &'static str,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub session_id: Option<String>,
    pub status: u16,
    /// `success`, `error` (a JSON-RPC error answer), `blocked` (guardrail), `accepted` (legacy
    /// SSE transport: the answer comes on the event stream), `upstream_error`, `no_response`.
    pub outcome: &'static str,
    pub error_code: Option<String>,
    pub latency_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cost_nanos: u64,
}
