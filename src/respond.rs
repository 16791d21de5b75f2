//! The one writer of the gateway's own answers: [`Reply`] (a complete answer) and every
//! [`GatewayError`] rendered in the caller's family envelope, as a JSON answer ([`error_for`])
//! or as the final event of a stream already under way ([`sse_error`]).
//!
//! The proxy, its `fail_to_proxy`, MCP, the admin API and the admin listener all answer
//! through here; only the bytes on the wire differ by transport. Depends on `error` and
//! `types` alone.

use crate::error::GatewayError;
use crate::types::Family;
use bytes::Bytes;

/// A complete answer: status, content type, body.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, v: serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: Bytes::from(v.to_string()),
        }
    }
}

/// A gateway error in OpenAI's envelope (the admin API's and the admin listener's).
pub fn error(e: &GatewayError) -> Reply {
    error_for(e, Family::OpenAi)
}

/// A gateway error in the envelope of the caller's family (OpenAI, Anthropic, Google).
pub fn error_for(e: &GatewayError, family: Family) -> Reply {
    Reply {
        status: e.status(),
        content_type: "application/json",
        body: e.body_for(family),
    }
}

/// A gateway error as the final SSE event of a stream in the caller's family.
pub fn sse_error(e: &GatewayError, family: Family) -> Bytes {
    e.sse_event_for(family)
}
