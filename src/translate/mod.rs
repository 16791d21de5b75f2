//! Translation for the unified `/v1/llm/chat` endpoint (SPEC §4): pure functions, no I/O.
//!
//! The client sends an OpenAI chat-completions request (plus an optional `provider` and a
//! top-level `include_usage`). [`prepare`] validates it and builds the body for the target
//! family: OpenAI chat (passed through, model rewritten), Anthropic Messages or Gemini
//! `generateContent`. A field the target cannot express is a 400 naming it, never a silent
//! drop. Unary answers become the normalized object of [`normalize_unary`]; streams become
//! OpenAI `chat.completion.chunk` events through [`StreamTranslator`], incrementally.
//!
//! ```text
//!   client ──OpenAI chat──▶ prepare(target) ──▶ provider body + target_path()
//!   client ◀─normalized──── normalize_unary ◀── provider JSON
//!   client ◀─chunk SSE───── StreamTranslator ◀─ provider SSE
//! ```

mod anthropic;
mod gemini;
mod json;
mod openai;
mod request;
mod stream;

pub use stream::StreamTranslator;

use crate::error::{ErrorCode, GatewayError};
use crate::types::Tokens;
use bytes::Bytes;
use serde_json::{json, Value};

/// The provider family a unified request is translated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// OpenAI chat completions (OpenAI, Azure OpenAI, vLLM, any OpenAI-compatible server).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Gemini `generateContent`.
    Gemini,
}

impl Target {
    /// The provider name used in messages and in the unified `provider` field.
    pub fn name(self) -> &'static str {
        match self {
            Target::OpenAi => "openai",
            Target::Anthropic => "anthropic",
            Target::Gemini => "gemini",
        }
    }

    /// Whether a unified request's `provider` value (normalized) may be served by this target.
    fn admits(self, provider: &str) -> bool {
        match self {
            Target::OpenAi => matches!(provider, "openai" | "vllm"),
            Target::Anthropic => provider == "anthropic",
            Target::Gemini => provider == "gemini",
        }
    }
}

/// A unified request translated for its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The upstream request body.
    pub body: Bytes,
    /// The client asked for a stream (`stream: true`).
    pub stream: bool,
    /// The client asked for the usage-only chunk (top-level `include_usage` or
    /// `stream_options.include_usage`).
    pub include_usage: bool,
    /// The Wharf model name from the request.
    pub model: String,
    /// The `provider` the client named (`openai`, `anthropic`, `gemini`, `vllm`; `google` reads
    /// as `gemini`), if any. [`prepare`] checks it against the target's family; telling
    /// `openai` from `vllm` within the OpenAI family is left to the caller, who knows the
    /// provider type.
    pub provider: Option<&'static str>,
}

/// Validates a unified request and builds the upstream body for `target`, with `slug` as the
/// upstream model id.
///
/// Errors are `invalid_request` (400) naming the field: malformed or mistyped fields, an
/// unknown role, a `provider` of another family, or a field the target cannot express.
pub fn prepare(target: Target, request: &[u8], slug: &str) -> Result<Prepared, GatewayError> {
    let u = request::parse(request)?;
    if let Some(p) = u.provider {
        if !target.admits(p) {
            let served_by = match target {
                Target::OpenAi => "an OpenAI-compatible",
                Target::Anthropic => "an Anthropic",
                Target::Gemini => "a Gemini",
            };
            let mut e = GatewayError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "provider: the request names {p:?} but the model is served by {served_by} \
                     provider"
                ),
            );
            e.extra.push(("param", Value::String("provider".into())));
            return Err(e);
        }
    }
    let body = match target {
        Target::OpenAi => openai::build(&u, request.len(), slug)?,
        Target::Anthropic => anthropic::build(&u, slug)?,
        Target::Gemini => gemini::build(&u)?,
    };
    Ok(Prepared {
        body,
        stream: u.stream,
        include_usage: u.include_usage,
        model: u.model.into_owned(),
        provider: u.provider,
    })
}

/// The request path under the provider's API root (e.g. `https://api.openai.com/v1`,
/// `https://api.anthropic.com/v1`, `https://generativelanguage.googleapis.com/v1beta`).
pub fn target_path(target: Target, slug: &str, stream: bool) -> String {
    match target {
        Target::OpenAi => "/chat/completions".to_owned(),
        Target::Anthropic => "/messages".to_owned(),
        Target::Gemini => {
            let slug = slug.strip_prefix("models/").unwrap_or(slug);
            if stream {
                format!("/models/{slug}:streamGenerateContent?alt=sse")
            } else {
                format!("/models/{slug}:generateContent")
            }
        }
    }
}

/// Turns a provider's unary answer into the normalized object of SPEC §4:
///
/// ```json
/// {"provider": "anthropic", "model": "<wharf model>", "content": "…",
///  "stop_reason": "stop" | "length" | "tool_calls" | "content_filter",
///  "content_blocks": [{"type": "text", "text": "…"},
///                     {"type": "tool_call", "id": "…", "name": "…", "arguments": "{…}"}],
///  "tool_calls": [{"id": "…", "type": "function", "function": {"name": "…", "arguments": "{…}"}}],
///  "input_tokens": 12, "output_tokens": 34, "usage": {…raw provider usage…},
///  "provider_request_id": "msg_…"}
/// ```
///
/// `provider_name` is what the `provider` field says; `model` is the Wharf model name. When the
/// provider reported no usage, `usage` is `null` and the tokens are zero. An answer that is not
/// a JSON object of the target's shape is an `upstream_error`.
pub fn normalize_unary(
    target: Target,
    provider_name: &str,
    model: &str,
    response: &[u8],
) -> Result<(Value, Tokens), GatewayError> {
    let n = match target {
        Target::OpenAi => openai::normalize(response)?,
        Target::Anthropic => anthropic::normalize(response)?,
        Target::Gemini => gemini::normalize(response)?,
    };
    let tokens = n.tokens;
    let value = json!({
        "provider": provider_name,
        "model": model,
        "content": n.content,
        "stop_reason": n.stop_reason,
        "content_blocks": n.blocks,
        "tool_calls": n.tool_calls,
        "input_tokens": tokens.input,
        "output_tokens": tokens.output,
        "usage": n.usage,
        "provider_request_id": n.request_id,
    });
    Ok((value, tokens))
}

/// A unary answer read into the normalized fields.
#[derive(Default)]
pub(crate) struct Normalized {
    pub content: String,
    pub stop_reason: &'static str,
    pub blocks: Vec<Value>,
    pub tool_calls: Vec<Value>,
    pub usage: Value,
    pub tokens: Tokens,
    pub request_id: Option<String>,
}

impl Normalized {
    fn push_text_block(&mut self, text: String) {
        self.blocks.push(json!({"type": "text", "text": text}));
    }

    fn push_tool_call_block(&mut self, id: String, name: String, arguments: String) {
        self.blocks.push(json!({
            "type": "tool_call", "id": id, "name": name, "arguments": arguments,
        }));
    }

    /// Adds a tool call to both `content_blocks` and `tool_calls`.
    fn push_tool_call(
        &mut self,
        id: String,
        name: String,
        arguments: String,
        extra: Option<Value>,
    ) {
        let mut call = json!({
            "id": id, "type": "function", "function": {"name": name, "arguments": arguments},
        });
        if let (Some(extra), Some(obj)) = (extra, call.as_object_mut()) {
            obj.insert("extra_content".into(), extra);
        }
        self.tool_calls.push(call);
        self.push_tool_call_block(id, name, arguments);
    }
}

/// A 502 for an answer that cannot be read.
pub(crate) fn upstream_error(message: &str) -> GatewayError {
    GatewayError::new(ErrorCode::UpstreamError, message)
}

#[cfg(test)]
mod tests;
