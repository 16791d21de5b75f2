//! Gateway errors: one enum, one place that turns it into an HTTP answer.
//!
//! Every gateway-originated error is JSON (`{"error":{"code","message","type"}}`, SPEC §3). The
//! code, status and OpenAI-style `type` are properties of the variant, so the mapping is
//! exhaustive and checked by the compiler.

use crate::types::Family;
use bytes::Bytes;
use serde_json::json;

/// A gateway-originated error: a SPEC §3 code plus a client-safe message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct GatewayError {
    /// The SPEC code, e.g. `model_not_allowed`.
    pub code: ErrorCode,
    /// A message safe to show the client (never a key, never a prompt).
    pub message: String,
    /// Extra JSON fields merged into the `error` object (e.g. rate-limit `scope`).
    pub extra: Vec<(&'static str, serde_json::Value)>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

/// The error codes of SPEC §3 that the gateway emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: unreadable body (empty, not UTF-8, truncated).
    InvalidRequestBody,
    /// 400: undecodable payload (bad JSON, wrong types).
    InvalidRequest,
    /// 400: model not configured.
    ModelNotFound,
    /// 400: a model of another family on a native route.
    ProviderNotAllowed,
    /// 400: the model's provider is not configured.
    ProviderNotConfigured,
    /// 400: the provider's credential is missing.
    ProviderApiKeyNotConfigured,
    /// 400: the provider type cannot serve this route.
    ProviderTypeUnsupported,
    /// 401: key missing or unknown.
    Unauthorized,
    /// 401: key expired.
    ApiKeyExpired,
    /// 401: key revoked.
    ApiKeyRevoked,
    /// 403: no grant for the model.
    ModelNotAllowed,
    /// 403: provider disabled.
    ProviderDisabled,
    /// 403: a filter blocked the request (a filter may answer with its own status and code).
    PluginBlocked,
    /// 403: the admin API caller's role may not do this.
    Forbidden,
    /// 404: unknown route.
    NotFound,
    /// 405: wrong method.
    MethodNotAllowed,
    /// 408: the request body did not arrive in time.
    RequestTimeout,
    /// 409: the admin API row conflicts with an existing one.
    Conflict,
    /// 411: a body of unknown length too large to replay.
    LengthRequired,
    /// 413: body over the limit.
    PayloadTooLarge,
    /// 402: a matching budget has no capacity.
    BudgetExceeded,
    /// 403: the client address is refused by an IP policy.
    IpNotAllowed,
    /// 429: rate limits (SPEC §7).
    RpsExceeded,
    RpmExceeded,
    BurstExceeded,
    TpmExceeded,
    ConcurrencyExceeded,
    MaxTokensExceeded,
    /// 429: a quota window is exhausted.
    QuotaExceeded,
    /// 501: the provider has no such endpoint.
    Unsupported,
    /// 502: the provider failed.
    UpstreamError,
    /// 502: the provider could not be reached.
    UpstreamUnreachable,
    /// 503: a dependency is down and nothing is cached.
    DependencyUnavailable,
    /// 504: the provider timed out.
    UpstreamTimeout,
    /// 500: a bug.
    InternalError,
    /// 400: `/v1/mcp/{ref}` with a reference that is neither a slug nor an id.
    InvalidMcpRef,
    /// 400: the MCP server's transport cannot serve this request.
    InvalidTransport,
    /// 403: no `ApiKeyMcpAccess` grant for the MCP server.
    McpNotAllowed,
    /// 403: an MCP guardrail (allowed/blocked tools, keywords) refused the call.
    McpGuardrailBlock,
    /// 404: no enabled MCP server of the key's organisation has this slug or id.
    McpNotFound,
    /// 502: the MCP server failed or could not be reached.
    McpUpstreamError,
    /// 502: the STDIO MCP server could not be started or died.
    McpStdioError,
    /// 502: the upstream credential of the MCP server could not be obtained.
    McpAuthError,
}

impl ErrorCode {
    /// The wire code.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidRequestBody => "invalid_request_body",
            InvalidRequest => "invalid_request",
            ModelNotFound => "model_not_found",
            ProviderNotAllowed => "provider_not_allowed",
            ProviderNotConfigured => "provider_not_configured",
            ProviderApiKeyNotConfigured => "provider_api_key_not_configured",
            ProviderTypeUnsupported => "provider_type_unsupported",
            Unauthorized => "unauthorized",
            ApiKeyExpired => "api_key_expired",
            ApiKeyRevoked => "api_key_revoked",
            ModelNotAllowed => "model_not_allowed",
            ProviderDisabled => "provider_disabled",
            PluginBlocked => "plugin_blocked",
            Forbidden => "forbidden",
            NotFound => "not_found",
            Conflict => "conflict",
            MethodNotAllowed => "method_not_allowed",
            RequestTimeout => "request_timeout",
            LengthRequired => "length_required",
            PayloadTooLarge => "payload_too_large",
            BudgetExceeded => "budget_exceeded",
            IpNotAllowed => "ip_not_allowed",
            RpsExceeded => "rps_exceeded",
            RpmExceeded => "rpm_exceeded",
            BurstExceeded => "burst_exceeded",
            TpmExceeded => "tpm_exceeded",
            ConcurrencyExceeded => "concurrency_exceeded",
            MaxTokensExceeded => "max_tokens_exceeded",
            QuotaExceeded => "quota_exceeded",
            Unsupported => "unsupported",
            UpstreamError => "upstream_error",
            UpstreamUnreachable => "upstream_unreachable",
            DependencyUnavailable => "dependency_unavailable",
            UpstreamTimeout => "upstream_timeout",
            InternalError => "internal_error",
            InvalidMcpRef => "invalid_mcp_ref",
            InvalidTransport => "invalid_transport",
            McpNotAllowed => "mcp_not_allowed",
            McpGuardrailBlock => "mcp_guardrail_block",
            McpNotFound => "mcp_not_found",
            McpUpstreamError => "mcp_upstream_error",
            McpStdioError => "mcp_stdio_error",
            McpAuthError => "mcp_auth_error",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidRequestBody
            | InvalidRequest
            | ModelNotFound
            | ProviderNotAllowed
            | ProviderNotConfigured
            | ProviderApiKeyNotConfigured
            | ProviderTypeUnsupported
            | InvalidMcpRef
            | InvalidTransport => 400,
            Unauthorized | ApiKeyExpired | ApiKeyRevoked => 401,
            ModelNotAllowed | ProviderDisabled | PluginBlocked | Forbidden => 403,
            McpNotAllowed | McpGuardrailBlock => 403,
            NotFound | McpNotFound => 404,
            MethodNotAllowed => 405,
            RequestTimeout => 408,
            Conflict => 409,
            LengthRequired => 411,
            PayloadTooLarge => 413,
            BudgetExceeded => 402,
            IpNotAllowed => 403,
            RpsExceeded | RpmExceeded | BurstExceeded | TpmExceeded | ConcurrencyExceeded
            | MaxTokensExceeded | QuotaExceeded => 429,
            InternalError => 500,
            Unsupported => 501,
            UpstreamError | UpstreamUnreachable => 502,
            McpUpstreamError | McpStdioError | McpAuthError => 502,
            DependencyUnavailable => 503,
            UpstreamTimeout => 504,
        }
    }

    /// The OpenAI-style error `type`, so OpenAI SDKs classify the error sensibly.
    pub fn kind(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Unauthorized | ApiKeyExpired | ApiKeyRevoked => "authentication_error",
            ModelNotAllowed | ProviderDisabled | PluginBlocked | Forbidden | IpNotAllowed
            | McpNotAllowed | McpGuardrailBlock => "permission_error",
            RpsExceeded | RpmExceeded | BurstExceeded | TpmExceeded | ConcurrencyExceeded
            | MaxTokensExceeded | QuotaExceeded => "rate_limit_error",
            BudgetExceeded => "insufficient_quota",
            NotFound | McpNotFound => "not_found_error",
            McpUpstreamError | McpStdioError | McpAuthError => "api_error",
            UpstreamError
            | UpstreamUnreachable
            | UpstreamTimeout
            | DependencyUnavailable
            | InternalError => "api_error",
            _ => "invalid_request_error",
        }
    }
}

impl ErrorCode {
    /// Google's canonical status name for this error.
    pub fn google_status(self) -> &'static str {
        match self.status() {
            400 | 411 | 413 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            402 => "RESOURCE_EXHAUSTED",
            403 => "PERMISSION_DENIED",
            404 | 405 => "NOT_FOUND",
            409 => "ALREADY_EXISTS",
            408 | 504 => "DEADLINE_EXCEEDED",
            429 => "RESOURCE_EXHAUSTED",
            501 => "UNIMPLEMENTED",
            503 | 502 => "UNAVAILABLE",
            _ => "INTERNAL",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl GatewayError {
    /// An error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        GatewayError {
            code,
            message: message.into(),
            extra: Vec::new(),
            retry_after: None,
        }
    }

    /// HTTP status of this error.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The JSON body `{"error":{"code","message","type",...}}`.
    pub fn body(&self) -> Bytes {
        let mut err = json!({
            "code": self.code.as_str(),
            "message": self.message,
            "type": self.code.kind(),
        });
        if let Some(obj) = err.as_object_mut() {
            for (k, v) in &self.extra {
                obj.insert((*k).to_string(), v.clone());
            }
        }
        Bytes::from(json!({ "error": err }).to_string())
    }

    /// The body in the shape the family's SDK parses: Anthropic's outer
    /// `{"type":"error","error":{..}}`; Google's `google.rpc.Status` (`code` the HTTP status,
    /// `status` the canonical name, Wharf's code as the `reason` of an `ErrorInfo` detail).
    pub fn body_for(&self, family: Family) -> Bytes {
        match family {
            Family::OpenAi | Family::Vllm | Family::Unified => self.body(),
            Family::Anthropic => {
                let mut err = json!({
                    "type": self.code.kind(),
                    "code": self.code.as_str(),
                    "message": self.message,
                });
                if let Some(obj) = err.as_object_mut() {
                    for (k, v) in &self.extra {
                        obj.insert((*k).to_string(), v.clone());
                    }
                }
                Bytes::from(json!({"type": "error", "error": err}).to_string())
            }
            Family::Gemini => {
                // google.rpc.Status: the HTTP status as a number, the canonical status name,
                // Wharf's own code in an ErrorInfo (its metadata: the error's extra fields, as
                // strings, which is what ErrorInfo allows).
                let metadata: serde_json::Map<String, serde_json::Value> = self
                    .extra
                    .iter()
                    .map(|(k, v)| {
                        let s = match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        ((*k).to_string(), serde_json::Value::String(s))
                    })
                    .collect();
                let mut info = json!({
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": self.code.as_str(),
                    "domain": "wharf",
                });
                if !metadata.is_empty() {
                    info["metadata"] = serde_json::Value::Object(metadata);
                }
                let err = json!({
                    "code": self.status(),
                    "message": self.message,
                    "status": self.code.google_status(),
                    "details": [info],
                });
                Bytes::from(json!({ "error": err }).to_string())
            }
        }
    }

    /// The same error as one SSE event, for failures after the first streamed byte.
    pub fn sse_event(&self) -> Bytes {
        self.sse_event_for(Family::OpenAi)
    }

    /// The final SSE error event in the family's stream format.
    pub fn sse_event_for(&self, family: Family) -> Bytes {
        let mut out = Vec::with_capacity(160);
        let (prefix, sep): (&[u8], &[u8]) = match family {
            Family::OpenAi | Family::Vllm | Family::Unified => (b"data: ", b"\n\n"),
            Family::Anthropic => (b"event: error\ndata: ", b"\n\n"),
            Family::Gemini => (b"data: ", b"\r\n\r\n"),
        };
        out.extend_from_slice(prefix);
        out.extend_from_slice(&self.body_for(family));
        out.extend_from_slice(sep);
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_body_is_google_rpc_status() {
        let mut e = GatewayError::new(ErrorCode::Unauthorized, "bad key");
        e.extra.push(("param", serde_json::json!("key")));
        let v: serde_json::Value =
            serde_json::from_slice(&e.body_for(Family::Gemini)).expect("json");
        assert_eq!(v["error"]["code"], 401, "{v}");
        assert_eq!(v["error"]["status"], "UNAUTHENTICATED", "{v}");
        assert_eq!(v["error"]["message"], "bad key");
        let d = &v["error"]["details"][0];
        assert_eq!(d["@type"], "type.googleapis.com/google.rpc.ErrorInfo");
        assert_eq!(d["reason"], "unauthorized");
        assert_eq!(d["domain"], "wharf");
        assert_eq!(d["metadata"]["param"], "key");
        // The SSE form carries the same body.
        let ev = e.sse_event_for(Family::Gemini);
        let body = ev.strip_prefix(b"data: ").expect("data line");
        let v2: serde_json::Value =
            serde_json::from_slice(body.strip_suffix(b"\r\n\r\n").expect("end")).expect("json");
        assert_eq!(v2, v);
    }

    #[test]
    fn body_is_spec_shaped() {
        let e = GatewayError::new(ErrorCode::ModelNotAllowed, "no grant");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).expect("json");
        assert_eq!(v["error"]["code"], "model_not_allowed");
        assert_eq!(v["error"]["type"], "permission_error");
        assert_eq!(v["error"]["message"], "no grant");
        assert_eq!(e.status(), 403);
    }

    #[test]
    fn sse_event_is_one_event() {
        let e = GatewayError::new(ErrorCode::UpstreamError, "cut");
        let ev = e.sse_event();
        assert!(ev.starts_with(b"data: {"));
        assert!(ev.ends_with(b"}\n\n"));
    }
}
