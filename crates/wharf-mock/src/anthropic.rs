//! The Anthropic surface of the mock: `POST /v1/messages` (unary and
//! streamed, text and tool use) and `POST /v1/messages/count_tokens`, with
//! Anthropic's authentication, error envelope and headers.

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::common::{
    json_len, json_object, json_reply, pick_tool, random_alnum, sample_value, sse_named,
    stop_sequences, stream_reply, text_tokens, to_json, to_json_string, Knobs, Reply, Script,
    SseEvents, Stop, TimingHeader, ToolDecl, ToolMode,
};
use super::request::Request;
use super::MockConfig;

/// Content type of Anthropic's event streams.
const EVENT_STREAM: &str = "text/event-stream; charset=utf-8";
/// Input tokens charged for an image or document block.
const MEDIA_TOKENS: u64 = 1_600;
/// `anthropic-organization-id` of every answer.
const ORGANIZATION_ID: &str = "7a3e9c1d-5b2f-4e8a-9c6d-1f0e2d3c4b5a";

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// An Anthropic error answer:
/// `{"type":"error","error":{"type":KIND,"message":MESSAGE}}`.
#[derive(Debug)]
pub(crate) struct AnthropicError {
    status: u16,
    kind: &'static str,
    message: String,
    headers: Vec<(&'static str, String)>,
}

impl AnthropicError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> AnthropicError {
        AnthropicError {
            status,
            kind,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    fn invalid(message: impl Into<String>) -> AnthropicError {
        AnthropicError::new(400, "invalid_request_error", message)
    }

    fn required(field: &str) -> AnthropicError {
        AnthropicError::invalid(format!("{field}: Field required"))
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> AnthropicError {
        self.headers.push((name, value.into()));
        self
    }

    fn into_reply(self) -> Reply {
        let body = ErrorEnvelope::new(self.kind, &self.message);
        let mut reply = json_reply(self.status, to_json(&body));
        reply.headers.extend(self.headers);
        reply
    }
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

impl<'a> ErrorEnvelope<'a> {
    fn new(kind: &'a str, message: &'a str) -> ErrorEnvelope<'a> {
        ErrorEnvelope {
            kind: "error",
            error: ErrorBody { kind, message },
        }
    }
}

/// The error forced with `x-mock-status`.
fn forced_error(status: u16, knobs: &Knobs) -> AnthropicError {
    let err = match status {
        400 => AnthropicError::invalid("Bad request (forced by x-mock-status)."),
        401 => AnthropicError::new(401, "authentication_error", "invalid x-api-key"),
        403 => AnthropicError::new(
            403,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => AnthropicError::new(
            404,
            "not_found_error",
            "Not found (forced by x-mock-status).",
        ),
        413 => AnthropicError::new(
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => AnthropicError::new(
            429,
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests \
             per minute. Please try again later.",
        )
        .header("anthropic-ratelimit-requests-limit", "50")
        .header("anthropic-ratelimit-requests-remaining", "0")
        .header("anthropic-ratelimit-requests-reset", reset_time()),
        500 => AnthropicError::new(500, "api_error", "Internal server error"),
        529 => AnthropicError::new(529, "overloaded_error", "Overloaded"),
        s if s < 500 => AnthropicError::new(
            s,
            "invalid_request_error",
            format!("Request failed with status {s} (forced by x-mock-status)."),
        ),
        s => AnthropicError::new(s, "api_error", "Internal server error"),
    };
    let err = match (&knobs.retry_after, status) {
        (Some(value), _) => err.header("retry-after", value.clone()),
        (None, 429) => err.header("retry-after", "1"),
        (None, _) => err,
    };
    if status == 408 || status == 409 || status == 429 || status >= 500 {
        err.header("x-should-retry", "true")
    } else {
        err
    }
}

/// One second from now, in RFC 3339.
fn reset_time() -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------

/// Adds the headers every Anthropic answer carries.
pub(crate) fn finish(mut reply: Reply) -> Reply {
    reply.timing = TimingHeader::None;
    reply
        .headers
        .insert(0, ("request-id", format!("req_011C{}", random_alnum(20))));
    reply
        .headers
        .push(("anthropic-organization-id", ORGANIZATION_ID.to_owned()));
    reply
}

/// The answer to an invalid `x-mock-*` knob.
pub(crate) fn invalid_knob(message: String) -> Reply {
    AnthropicError::invalid(message).into_reply()
}

/// What `x-mock-fault: error-event` makes of a unary answer.
pub(crate) fn overloaded(knobs: &Knobs) -> Reply {
    forced_error(529, knobs).into_reply()
}

/// The error event that `x-mock-fault: error-event` puts in a stream.
fn stream_error_event() -> String {
    sse_named(
        "error",
        &ErrorEnvelope::new("overloaded_error", "Overloaded"),
    )
}

/// Answers a request for the Anthropic family.
pub(crate) fn route(cfg: &MockConfig, req: &Request, knobs: &Knobs) -> Reply {
    dispatch(cfg, req, knobs).unwrap_or_else(AnthropicError::into_reply)
}

fn dispatch(cfg: &MockConfig, req: &Request, knobs: &Knobs) -> Result<Reply, AnthropicError> {
    authenticate(cfg, req)?;
    if req.header("anthropic-version").is_none() {
        return Err(AnthropicError::invalid(
            "anthropic-version: header is required",
        ));
    }
    if let Some(status) = knobs.status {
        return Err(forced_error(status, knobs));
    }
    let handler = match req.route() {
        "/v1/messages" => messages,
        "/v1/messages/count_tokens" => count_tokens,
        _ => return Err(AnthropicError::new(404, "not_found_error", "Not Found")),
    };
    if req.method != "POST" {
        return Err(
            AnthropicError::new(405, "invalid_request_error", "Method Not Allowed")
                .header("allow", "POST"),
        );
    }
    handler(req, knobs)
}

fn authenticate(cfg: &MockConfig, req: &Request) -> Result<(), AnthropicError> {
    let key = req
        .header("x-api-key")
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let Some(key) = key else {
        return Err(AnthropicError::new(
            401,
            "authentication_error",
            "x-api-key header is required",
        ));
    };
    match &cfg.api_key {
        Some(expected) if expected != key => Err(AnthropicError::new(
            401,
            "authentication_error",
            "invalid x-api-key",
        )),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

fn parse(req: &Request) -> Result<Map<String, Value>, AnthropicError> {
    json_object(req).ok_or_else(|| {
        AnthropicError::invalid("There was an error parsing the body of your request as JSON.")
    })
}

fn require_model(obj: &Map<String, Value>) -> Result<String, AnthropicError> {
    match obj.get("model") {
        None | Some(Value::Null) => Err(AnthropicError::required("model")),
        Some(Value::String(model)) => Ok(model.clone()),
        Some(_) => Err(AnthropicError::invalid(
            "model: Input should be a valid string",
        )),
    }
}

/// Input tokens of a `content` (or `system`) value.
fn content_tokens(content: &Value) -> u64 {
    fn walk(value: &Value, chars: &mut usize, media: &mut u64) {
        match value {
            Value::String(s) => *chars += s.chars().count(),
            Value::Array(blocks) => {
                for block in blocks {
                    walk(block, chars, media);
                }
            }
            Value::Object(block) => match block.get("type").and_then(Value::as_str) {
                Some("image" | "document") => *media += 1,
                Some("tool_use") => {
                    *chars += block
                        .get("name")
                        .and_then(Value::as_str)
                        .map_or(0, str::len);
                    *chars += block.get("input").map_or(0, json_len);
                }
                Some("tool_result") => {
                    if let Some(inner) = block.get("content") {
                        walk(inner, chars, media);
                    }
                }
                Some("thinking") => {
                    *chars += block
                        .get("thinking")
                        .and_then(Value::as_str)
                        .map_or(0, |s| s.chars().count());
                }
                _ => {
                    *chars += block
                        .get("text")
                        .and_then(Value::as_str)
                        .map_or(0, |s| s.chars().count());
                }
            },
            _ => {}
        }
    }
    let mut chars = 0;
    let mut media = 0;
    walk(content, &mut chars, &mut media);
    text_tokens(chars) + media * MEDIA_TOKENS
}

/// Checks `messages` and `system` and counts the input tokens of a request.
fn input_tokens(obj: &Map<String, Value>) -> Result<u64, AnthropicError> {
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => return Err(AnthropicError::required("messages")),
        Some(Value::Array(messages)) if messages.is_empty() => {
            return Err(AnthropicError::invalid(
                "messages: at least one message is required",
            ))
        }
        Some(Value::Array(messages)) => messages,
        Some(_) => {
            return Err(AnthropicError::invalid(
                "messages: Input should be a valid list",
            ))
        }
    };
    let mut tokens = 0;
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(AnthropicError::invalid(format!(
                "messages.{i}: Input should be a valid dictionary"
            )));
        };
        match message.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            None => return Err(AnthropicError::required(&format!("messages.{i}.role"))),
            Some(_) => {
                return Err(AnthropicError::invalid(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                )))
            }
        }
        let content = message
            .get("content")
            .ok_or_else(|| AnthropicError::required(&format!("messages.{i}.content")))?;
        tokens += content_tokens(content) + 3;
    }
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(system @ (Value::String(_) | Value::Array(_))) => tokens += content_tokens(system),
        Some(_) => {
            return Err(AnthropicError::invalid(
                "system: Input should be a valid string",
            ))
        }
    }
    if let Some(tools) = obj.get("tools").filter(|t| !t.is_null()) {
        tokens += text_tokens(json_len(tools));
    }
    Ok(tokens)
}

/// Text of the last user turn (its text blocks; tool results do not count,
/// so the turn after a tool call gets a text answer).
fn last_user_text(obj: &Map<String, Value>) -> String {
    let Some(Value::Array(messages)) = obj.get("messages") else {
        return String::new();
    };
    let Some(last) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return String::new();
    };
    match last.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn tools(obj: &Map<String, Value>) -> Result<(Vec<ToolDecl>, ToolMode), AnthropicError> {
    let decls = match obj.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools
            .iter()
            .enumerate()
            .map(|(i, tool)| {
                let name = tool
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| AnthropicError::required(&format!("tools.{i}.name")))?;
                Ok(ToolDecl {
                    name: name.to_owned(),
                    description: tool
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    schema: tool.get("input_schema").cloned(),
                })
            })
            .collect::<Result<_, AnthropicError>>()?,
        Some(_) => {
            return Err(AnthropicError::invalid(
                "tools: Input should be a valid list",
            ))
        }
    };
    let choice = obj.get("tool_choice");
    let mode = match choice.and_then(|c| c.get("type")).and_then(Value::as_str) {
        None | Some("auto") => ToolMode::Auto,
        Some("any") => ToolMode::Any,
        Some("none") => ToolMode::None,
        Some("tool") => match choice.and_then(|c| c.get("name")).and_then(Value::as_str) {
            Some(name) => ToolMode::Named(name.to_owned()),
            None => return Err(AnthropicError::required("tool_choice.tool.name")),
        },
        Some(other) => {
            return Err(AnthropicError::invalid(format!(
                "tool_choice.type: Input tag '{other}' found using 'type' does not match any of \
                 the expected tags: 'auto', 'any', 'tool', 'none'"
            )))
        }
    };
    Ok((decls, mode))
}

fn count_tokens(req: &Request, _knobs: &Knobs) -> Result<Reply, AnthropicError> {
    let obj = parse(req)?;
    require_model(&obj)?;
    tools(&obj)?;
    let input_tokens = input_tokens(&obj)?;
    Ok(json_reply(
        200,
        to_json(&json!({"input_tokens": input_tokens})),
    ))
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

#[derive(Serialize, Clone, Copy)]
struct CacheCreation {
    ephemeral_5m_input_tokens: u64,
    ephemeral_1h_input_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct Usage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation: CacheCreation,
    output_tokens: u64,
    service_tier: &'static str,
}

/// The usage of `message_delta`: cumulative counts.
#[derive(Serialize, Clone, Copy)]
struct DeltaUsage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a Value,
    },
}

#[derive(Serialize)]
struct Message<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: &'a [Block<'a>],
    stop_reason: Option<&'a str>,
    stop_sequence: Option<&'a str>,
    usage: Usage,
}

#[derive(Serialize)]
struct BlockStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: Block<'a>,
}

#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: Delta<'a>,
}

#[derive(Serialize)]
struct MessageDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta<'a>,
    usage: DeltaUsage,
}

#[derive(Serialize)]
struct StopDelta<'a> {
    stop_reason: &'a str,
    stop_sequence: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

/// The tool call of an answer.
struct ToolCall {
    id: String,
    name: String,
    input: Value,
}

/// Everything needed to answer `/v1/messages`, unary or streamed.
struct Plan {
    id: String,
    model: String,
    input_tokens: u64,
    /// The text, or the tool input JSON in pieces.
    script: Script,
    tool: Option<ToolCall>,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
}

/// Events before the first content delta: message_start,
/// content_block_start, ping.
const EVENTS_BEFORE: u64 = 3;
/// Events after the last delta: content_block_stop, message_delta,
/// message_stop.
const EVENTS_AFTER: u64 = 3;

impl Plan {
    fn output_tokens(&self) -> u64 {
        self.script.len()
    }

    fn usage(&self, output_tokens: u64) -> Usage {
        Usage {
            input_tokens: self.input_tokens,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
            cache_creation: CacheCreation {
                ephemeral_5m_input_tokens: 0,
                ephemeral_1h_input_tokens: 0,
            },
            output_tokens,
            service_tier: "standard",
        }
    }

    fn message(&self, content: &[Block<'_>], done: bool) -> String {
        let message = Message {
            id: &self.id,
            kind: "message",
            role: "assistant",
            model: &self.model,
            content,
            stop_reason: done.then_some(self.stop_reason),
            stop_sequence: if done {
                self.stop_sequence.as_deref()
            } else {
                None
            },
            usage: self.usage(if done { self.output_tokens() } else { 1 }),
        };
        to_json_string(&message)
    }

    fn unary(&self) -> Vec<u8> {
        let text;
        let block = match &self.tool {
            Some(tool) => Block::ToolUse {
                id: &tool.id,
                name: &tool.name,
                input: &tool.input,
            },
            None => {
                text = self.script.text();
                Block::Text { text: &text }
            }
        };
        self.message(std::slice::from_ref(&block), true)
            .into_bytes()
    }

    /// Deltas: one per text token; for tool use an empty `partial_json`
    /// first (as the API sends it), then the input JSON in pieces.
    fn delta_count(&self) -> u64 {
        self.script.len() + u64::from(self.tool.is_some())
    }

    fn event_count(&self) -> u64 {
        EVENTS_BEFORE + self.delta_count() + EVENTS_AFTER
    }

    fn event(&self, i: u64) -> String {
        let deltas = self.delta_count();
        match i {
            0 => {
                let json = self.message(&[], false);
                let mut out = String::with_capacity(json.len() + 64);
                out.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":");
                out.push_str(&json);
                out.push_str("}\n\n");
                out
            }
            1 => {
                let empty = Value::Object(Map::new());
                let block = match &self.tool {
                    Some(tool) => Block::ToolUse {
                        id: &tool.id,
                        name: &tool.name,
                        input: &empty,
                    },
                    None => Block::Text { text: "" },
                };
                sse_named(
                    "content_block_start",
                    &BlockStart {
                        kind: "content_block_start",
                        index: 0,
                        content_block: block,
                    },
                )
            }
            2 => "event: ping\ndata: {\"type\": \"ping\"}\n\n".to_owned(),
            i if i < EVENTS_BEFORE + deltas => {
                let j = i - EVENTS_BEFORE;
                let piece;
                let delta = match &self.tool {
                    Some(_) if j == 0 => Delta::InputJsonDelta { partial_json: "" },
                    Some(_) => {
                        piece = self.script.token(j - 1);
                        Delta::InputJsonDelta {
                            partial_json: &piece,
                        }
                    }
                    None => {
                        piece = self.script.token(j);
                        Delta::TextDelta { text: &piece }
                    }
                };
                sse_named(
                    "content_block_delta",
                    &BlockDelta {
                        kind: "content_block_delta",
                        index: 0,
                        delta,
                    },
                )
            }
            i => match i - EVENTS_BEFORE - deltas {
                0 => "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
                    .to_owned(),
                1 => sse_named(
                    "message_delta",
                    &MessageDelta {
                        kind: "message_delta",
                        delta: StopDelta {
                            stop_reason: self.stop_reason,
                            stop_sequence: self.stop_sequence.as_deref(),
                        },
                        usage: DeltaUsage {
                            input_tokens: self.input_tokens,
                            cache_creation_input_tokens: 0,
                            cache_read_input_tokens: 0,
                            output_tokens: self.output_tokens(),
                        },
                    },
                ),
                _ => "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned(),
            },
        }
    }
}

fn messages(req: &Request, knobs: &Knobs) -> Result<Reply, AnthropicError> {
    let obj = parse(req)?;
    let model = require_model(&obj)?;
    let max_tokens = match obj.get("max_tokens") {
        None | Some(Value::Null) => return Err(AnthropicError::required("max_tokens")),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 => n as u64,
            Some(_) => {
                return Err(AnthropicError::invalid(
                    "max_tokens: Input should be greater than or equal to 1",
                ))
            }
            None => {
                return Err(AnthropicError::invalid(
                    "max_tokens: Input should be a valid integer",
                ))
            }
        },
    };
    let input_tokens = input_tokens(&obj)?;
    if let Some(t) = obj.get("temperature").filter(|t| !t.is_null()) {
        match t.as_f64() {
            Some(t) if (0.0..=1.0).contains(&t) => {}
            Some(_) => {
                return Err(AnthropicError::invalid(
                    "temperature: Input should be less than or equal to 1",
                ))
            }
            None => {
                return Err(AnthropicError::invalid(
                    "temperature: Input should be a valid number",
                ))
            }
        }
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(AnthropicError::invalid(
                "stream: Input should be a valid boolean",
            ))
        }
    };
    let (decls, mode) = tools(&obj)?;
    let tool = pick_tool(
        &decls,
        &mode,
        knobs.tool_call.as_deref(),
        &last_user_text(&obj),
    );
    let plan = match tool {
        Some(tool) => {
            let input = sample_value(tool.schema.as_ref(), "");
            let (script, _) = Script::pieces(&to_json_string(&input), None);
            Plan {
                id: message_id(),
                model,
                input_tokens,
                script,
                tool: Some(ToolCall {
                    id: format!("toolu_01{}", random_alnum(22)),
                    name: tool.name,
                    input,
                }),
                stop_reason: "tool_use",
                stop_sequence: None,
            }
        }
        None => {
            let stops = stop_sequences(obj.get("stop_sequences"));
            let (script, stop) = Script::words(knobs.tokens, Some(max_tokens), &stops);
            let (stop_reason, stop_sequence) = match stop {
                Stop::End => ("end_turn", None),
                Stop::MaxTokens => ("max_tokens", None),
                Stop::Sequence(s) => ("stop_sequence", Some(s)),
            };
            Plan {
                id: message_id(),
                model,
                input_tokens,
                script,
                tool: None,
                stop_reason,
                stop_sequence,
            }
        }
    };
    if !stream {
        return Ok(json_reply(200, plan.unary()));
    }
    Ok(stream_reply(
        EVENT_STREAM,
        SseEvents {
            count: plan.event_count() as usize,
            event: Box::new(move |i| plan.event(i as u64)),
            error: Some(stream_error_event()),
        },
    ))
}

fn message_id() -> String {
    format!("msg_01{}", random_alnum(22))
}
