//! The unified request: validation shared by every target, and a provider-neutral reading of
//! the messages and options for the targets that are not OpenAI-shaped.

use super::json::{
    array, boolean, clip, integer, invalid, number, object, string, unsigned, Loc, RawObject,
};
use crate::error::{ErrorCode, GatewayError};
use serde_json::value::RawValue;
use std::borrow::Cow;

const MESSAGES: Loc<'static> = Loc::Root("messages");

/// The top level of a unified request, validated.
pub(crate) struct Unified<'a> {
    /// Every top-level field, in order.
    pub fields: RawObject<'a>,
    /// The Wharf model name.
    pub model: Cow<'a, str>,
    /// `messages`, each checked to be an object with a known role.
    pub messages: Vec<(RawObject<'a>, Role)>,
    /// `provider`, normalized.
    pub provider: Option<&'static str>,
    /// `stream: true`.
    pub stream: bool,
    /// `include_usage` at the top level or in `stream_options`.
    pub include_usage: bool,
}

/// A message role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `system` or `developer`.
    System,
    User,
    Assistant,
    Tool,
    /// The legacy `function` role (OpenAI-compatible targets only).
    Function,
}

/// Reads the provider names the unified endpoint accepts.
fn provider_name(s: &str) -> Option<&'static str> {
    match s.to_ascii_lowercase().as_str() {
        "openai" => Some("openai"),
        "anthropic" => Some("anthropic"),
        "gemini" | "google" => Some("gemini"),
        "vllm" => Some("vllm"),
        _ => None,
    }
}

/// Decodes and validates the parts of a unified request that every target relies on.
pub(crate) fn parse(body: &[u8]) -> Result<Unified<'_>, GatewayError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first != Some(b'{') {
        return Err(GatewayError::new(
            ErrorCode::InvalidRequest,
            "the request body must be a JSON object",
        ));
    }
    let fields: RawObject<'_> = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorCode::InvalidRequest,
            format!("the request body is not valid JSON: {e}"),
        )
    })?;

    let loc = Loc::Root("model");
    let model = match fields.get("model") {
        Some(v) => string(v, &loc)?,
        None => return Err(invalid(&loc, "is required")),
    };
    if model.is_empty() {
        return Err(invalid(&loc, "must not be empty"));
    }

    let raw = fields
        .get("messages")
        .ok_or_else(|| invalid(&MESSAGES, "is required"))?;
    let raw = array(raw, &MESSAGES)?;
    if raw.is_empty() {
        return Err(invalid(&MESSAGES, "must contain at least one message"));
    }
    let mut messages = Vec::with_capacity(raw.len());
    for (i, m) in raw.into_iter().enumerate() {
        let mloc = MESSAGES.index(i);
        let obj = object(m, &mloc)?;
        let rloc = mloc.field("role");
        let role = match obj.get("role") {
            Some(r) => string(r, &rloc)?,
            None => return Err(invalid(&rloc, "is required")),
        };
        let role = match role.as_ref() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "function" => Role::Function,
            other => {
                return Err(invalid(
                    &rloc,
                    format_args!(
                        "unknown role {} (expected system, developer, user, assistant or tool)",
                        clip(other)
                    ),
                ))
            }
        };
        messages.push((obj, role));
    }

    let provider = match fields.get("provider") {
        None => None,
        Some(v) => {
            let loc = Loc::Root("provider");
            let s = string(v, &loc)?;
            Some(provider_name(&s).ok_or_else(|| {
                invalid(
                    &loc,
                    format_args!(
                        "unknown provider {} (expected openai, anthropic, gemini or vllm)",
                        clip(&s)
                    ),
                )
            })?)
        }
    };

    let stream = match fields.get("stream") {
        Some(v) => boolean(v, &Loc::Root("stream"))?,
        None => false,
    };
    let mut include_usage = match fields.get("include_usage") {
        Some(v) => boolean(v, &Loc::Root("include_usage"))?,
        None => false,
    };
    if let Some(v) = fields.get("stream_options") {
        let loc = Loc::Root("stream_options");
        let o = object(v, &loc)?;
        if let Some(v) = o.get("include_usage") {
            include_usage |= boolean(v, &loc.field("include_usage"))?;
        }
    }

    check_scalars(&fields)?;

    Ok(Unified {
        fields,
        model,
        messages,
        provider,
        stream,
        include_usage,
    })
}

/// Type checks of the common scalar fields (every target, so a wrong type is always a 400
/// from the gateway rather than whatever the provider makes of it).
fn check_scalars(fields: &RawObject<'_>) -> Result<(), GatewayError> {
    for key in [
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
    ] {
        if let Some(v) = fields.get(key) {
            number(v, &Loc::Root(key))?;
        }
    }
    for key in ["max_tokens", "max_completion_tokens", "top_k", "n"] {
        if let Some(v) = fields.get(key) {
            unsigned(v, &Loc::Root(key))?;
        }
    }
    if let Some(v) = fields.get("seed") {
        integer(v, &Loc::Root("seed"))?;
    }
    if let Some(v) = fields.get("stop") {
        stop_sequences(v)?;
    }
    for key in ["metadata", "response_format"] {
        if let Some(v) = fields.get(key) {
            object(v, &Loc::Root(key))?;
        }
    }
    if let Some(v) = fields.get("tools") {
        array(v, &Loc::Root("tools"))?;
    }
    if let Some(v) = fields.get("user") {
        string(v, &Loc::Root("user"))?;
    }
    for key in ["logprobs", "parallel_tool_calls", "store"] {
        if let Some(v) = fields.get(key) {
            boolean(v, &Loc::Root(key))?;
        }
    }
    Ok(())
}

/// `stop`: a string or an array of strings.
fn stop_sequences(v: &RawValue) -> Result<Vec<Cow<'_, str>>, GatewayError> {
    let loc = Loc::Root("stop");
    if v.get().starts_with('"') {
        return Ok(vec![string(v, &loc)?]);
    }
    let items =
        array(v, &loc).map_err(|_| invalid(&loc, "must be a string or an array of strings"))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, s)| string(s, &loc.index(i)))
        .collect()
}

// ---------------------------------------------------------------------------
// Options (non-OpenAI targets)
// ---------------------------------------------------------------------------

/// The top-level fields the translating targets understand.
const KNOWN: &[&str] = &[
    "model",
    "messages",
    "provider",
    "stream",
    "stream_options",
    "include_usage",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "metadata",
    "user",
    "n",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "store",
];

/// A function tool.
pub(crate) struct Tool<'a> {
    pub name: Cow<'a, str>,
    pub description: Option<Cow<'a, str>>,
    /// The JSON Schema of the arguments.
    pub parameters: Option<&'a RawValue>,
}

/// `tool_choice`.
pub(crate) enum ToolChoice<'a> {
    Auto,
    None,
    Required,
    Function(Cow<'a, str>),
}

/// `response_format`.
pub(crate) enum ResponseFormat<'a> {
    Text,
    JsonObject,
    JsonSchema { schema: Option<&'a RawValue> },
}

/// The generation options of a unified request, decoded and checked.
pub(crate) struct Options<'a> {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Vec<Cow<'a, str>>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub tools: Vec<Tool<'a>>,
    pub tool_choice: Option<ToolChoice<'a>>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat<'a>>,
    /// `metadata`, as raw pairs.
    pub metadata: RawObject<'a>,
    pub user: Option<Cow<'a, str>>,
}

impl<'a> Options<'a> {
    /// Decodes the options of `u`; `provider` names the target in messages. Fields outside the
    /// known set, and values no translating target can express (`n > 1`, `logprobs`,
    /// `logit_bias`, `store`), are a 400 naming them.
    pub fn parse(u: &Unified<'a>, provider: &str) -> Result<Options<'a>, GatewayError> {
        let f = &u.fields;
        if let Some(key) = f.unknown(KNOWN) {
            return Err(super::json::unsupported(
                &Loc::Root(key),
                provider,
                "this field",
            ));
        }
        if let Some(v) = f.get("stream_options") {
            let loc = Loc::Root("stream_options");
            let o = object(v, &loc)?;
            if let Some(key) = o.unknown(&["include_usage"]) {
                return Err(super::json::unsupported(
                    &loc.field(key),
                    provider,
                    "this option",
                ));
            }
        }
        if let Some(v) = f.get("n") {
            if unsigned(v, &Loc::Root("n"))? > 1 {
                return Err(super::json::unsupported(
                    &Loc::Root("n"),
                    provider,
                    "more than one choice",
                ));
            }
        }
        if let Some(v) = f.get("logprobs") {
            if boolean(v, &Loc::Root("logprobs"))? {
                return Err(super::json::unsupported(
                    &Loc::Root("logprobs"),
                    provider,
                    "log probabilities",
                ));
            }
        }
        if f.get("top_logprobs").is_some() {
            return Err(super::json::unsupported(
                &Loc::Root("top_logprobs"),
                provider,
                "log probabilities",
            ));
        }
        if let Some(v) = f.get("logit_bias") {
            let loc = Loc::Root("logit_bias");
            if !object(v, &loc)?.entries.is_empty() {
                return Err(super::json::unsupported(&loc, provider, "logit bias"));
            }
        }
        if let Some(v) = f.get("store") {
            if boolean(v, &Loc::Root("store"))? {
                return Err(super::json::unsupported(
                    &Loc::Root("store"),
                    provider,
                    "storing completions",
                ));
            }
        }

        let max_tokens = match (f.get("max_completion_tokens"), f.get("max_tokens")) {
            (Some(v), _) => Some(unsigned(v, &Loc::Root("max_completion_tokens"))?),
            (None, Some(v)) => Some(unsigned(v, &Loc::Root("max_tokens"))?),
            (None, None) => None,
        };
        if max_tokens == Some(0) {
            let key = if f.get("max_completion_tokens").is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(invalid(&Loc::Root(key), "must be at least 1"));
        }
        let num = |key: &'static str| -> Result<Option<f64>, GatewayError> {
            f.get(key).map(|v| number(v, &Loc::Root(key))).transpose()
        };
        let temperature = num("temperature")?;
        let top_p = num("top_p")?;
        let presence_penalty = num("presence_penalty")?;
        let frequency_penalty = num("frequency_penalty")?;
        let top_k = f
            .get("top_k")
            .map(|v| unsigned(v, &Loc::Root("top_k")))
            .transpose()?;
        let seed = f
            .get("seed")
            .map(|v| integer(v, &Loc::Root("seed")))
            .transpose()?;
        let stop = match f.get("stop") {
            Some(v) => stop_sequences(v)?,
            None => Vec::new(),
        };
        let tools = match f.get("tools") {
            Some(v) => tools(v, provider)?,
            None => Vec::new(),
        };
        let tool_choice = f.get("tool_choice").map(tool_choice).transpose()?;
        if let Some(choice) = &tool_choice {
            let needs_tools = match choice {
                ToolChoice::Required => true,
                ToolChoice::Function(name) => {
                    if !tools.is_empty() && !tools.iter().any(|t| t.name == *name) {
                        return Err(invalid(
                            &Loc::Root("tool_choice"),
                            format_args!("names {}, which is not in tools", clip(name)),
                        ));
                    }
                    true
                }
                ToolChoice::Auto | ToolChoice::None => false,
            };
            if needs_tools && tools.is_empty() {
                return Err(invalid(
                    &Loc::Root("tool_choice"),
                    "requires tools to be given",
                ));
            }
        }
        let parallel_tool_calls = f
            .get("parallel_tool_calls")
            .map(|v| boolean(v, &Loc::Root("parallel_tool_calls")))
            .transpose()?;
        let response_format = f.get("response_format").map(response_format).transpose()?;
        let metadata = match f.get("metadata") {
            Some(v) => object(v, &Loc::Root("metadata"))?,
            None => RawObject::default(),
        };
        let user = f
            .get("user")
            .map(|v| string(v, &Loc::Root("user")))
            .transpose()?;
        Ok(Options {
            max_tokens,
            temperature,
            top_p,
            top_k,
            stop,
            presence_penalty,
            frequency_penalty,
            seed,
            tools,
            tool_choice,
            parallel_tool_calls,
            response_format,
            metadata,
            user,
        })
    }
}

fn tools<'a>(v: &'a RawValue, provider: &str) -> Result<Vec<Tool<'a>>, GatewayError> {
    let root = Loc::Root("tools");
    let items = array(v, &root)?;
    let mut out = Vec::with_capacity(items.len());
    for (i, t) in items.into_iter().enumerate() {
        let tloc = root.index(i);
        let o = object(t, &tloc)?;
        let kind_loc = tloc.field("type");
        match o.get("type").map(|v| string(v, &kind_loc)).transpose()? {
            Some(k) if k == "function" => {}
            None => return Err(invalid(&kind_loc, "is required")),
            Some(k) => {
                return Err(super::json::unsupported(
                    &kind_loc,
                    provider,
                    format_args!("the tool type {}", clip(&k)),
                ))
            }
        }
        let floc = tloc.field("function");
        let func = match o.get("function") {
            Some(v) => object(v, &floc)?,
            None => return Err(invalid(&floc, "is required")),
        };
        if let Some(key) = func.unknown(&["name", "description", "parameters", "strict"]) {
            return Err(super::json::unsupported(
                &floc.field(key),
                provider,
                "this field",
            ));
        }
        let nloc = floc.field("name");
        let name = match func.get("name") {
            Some(v) => string(v, &nloc)?,
            None => return Err(invalid(&nloc, "is required")),
        };
        if name.is_empty() {
            return Err(invalid(&nloc, "must not be empty"));
        }
        let description = func
            .get("description")
            .map(|v| string(v, &floc.field("description")))
            .transpose()?;
        let ploc = floc.field("parameters");
        let parameters = match func.get("parameters") {
            Some(v) => {
                object(v, &ploc)?;
                Some(v)
            }
            None => None,
        };
        if let Some(v) = func.get("strict") {
            let sloc = floc.field("strict");
            if boolean(v, &sloc)? {
                return Err(super::json::unsupported(
                    &sloc,
                    provider,
                    "strict schema adherence for tools",
                ));
            }
        }
        out.push(Tool {
            name,
            description,
            parameters,
        });
    }
    Ok(out)
}

fn tool_choice(v: &RawValue) -> Result<ToolChoice<'_>, GatewayError> {
    let loc = Loc::Root("tool_choice");
    if v.get().starts_with('"') {
        return match string(v, &loc)?.as_ref() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(invalid(
                &loc,
                format_args!(
                    "unknown value {} (expected auto, none, required or a function)",
                    clip(other)
                ),
            )),
        };
    }
    let o = object(v, &loc).map_err(|_| invalid(&loc, "must be a string or an object"))?;
    let kloc = loc.field("type");
    match o.get("type").map(|t| string(t, &kloc)).transpose()? {
        Some(k) if k == "function" => {}
        _ => {
            return Err(invalid(
                &kloc,
                "must be \"function\" (the only tool_choice object these providers support)",
            ))
        }
    }
    let floc = loc.field("function");
    let func = match o.get("function") {
        Some(f) => object(f, &floc)?,
        None => return Err(invalid(&floc, "is required")),
    };
    let nloc = floc.field("name");
    match func.get("name") {
        Some(n) => Ok(ToolChoice::Function(string(n, &nloc)?)),
        None => Err(invalid(&nloc, "is required")),
    }
}

fn response_format(v: &RawValue) -> Result<ResponseFormat<'_>, GatewayError> {
    let loc = Loc::Root("response_format");
    let o = object(v, &loc)?;
    let kloc = loc.field("type");
    let kind = match o.get("type") {
        Some(t) => string(t, &kloc)?,
        None => return Err(invalid(&kloc, "is required")),
    };
    match kind.as_ref() {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let sloc = loc.field("json_schema");
            let schema = match o.get("json_schema") {
                Some(js) => {
                    let js = object(js, &sloc)?;
                    match js.get("schema") {
                        Some(s) => {
                            object(s, &sloc.field("schema"))?;
                            Some(s)
                        }
                        None => None,
                    }
                }
                None => return Err(invalid(&sloc, "is required")),
            };
            Ok(ResponseFormat::JsonSchema { schema })
        }
        other => Err(invalid(
            &kloc,
            format_args!(
                "unknown value {} (expected text, json_object or json_schema)",
                clip(other)
            ),
        )),
    }
}

// ---------------------------------------------------------------------------
// Messages (non-OpenAI targets)
// ---------------------------------------------------------------------------

/// A message in a provider-neutral shape.
pub(crate) struct Msg<'a> {
    /// Position in `messages` (for error messages).
    pub index: usize,
    pub role: Role,
    pub parts: Vec<Part<'a>>,
    /// Assistant tool calls.
    pub tool_calls: Vec<ToolCall<'a>>,
    /// Tool results: the call answered.
    pub tool_call_id: Option<Cow<'a, str>>,
    /// Tool results: the function name, when the client gave it.
    pub name: Option<Cow<'a, str>>,
}

/// One content part.
pub(crate) struct Part<'a> {
    /// Position in the content array; `None` when the content was a plain string.
    pub index: Option<usize>,
    pub kind: PartKind<'a>,
}

/// What a content part holds.
pub(crate) enum PartKind<'a> {
    Text(Cow<'a, str>),
    Image(Media<'a>),
    /// `input_audio`: base64 data and its MIME type.
    Audio {
        data: Cow<'a, str>,
        mime: &'static str,
    },
    /// `file` with inline `file_data`.
    File(Media<'a>),
}

/// Media given inline (a base64 `data:` URL) or by URL.
pub(crate) enum Media<'a> {
    Inline {
        mime: Cow<'a, str>,
        data: Cow<'a, str>,
    },
    Url(Cow<'a, str>),
}

/// An assistant tool call.
pub(crate) struct ToolCall<'a> {
    pub id: Cow<'a, str>,
    pub name: Cow<'a, str>,
    /// The arguments, decoded from their JSON string: always an object.
    pub arguments: Box<RawValue>,
    /// Gemini's thought signature (`extra_content.google.thought_signature`).
    pub signature: Option<Cow<'a, str>>,
}

impl Msg<'_> {
    /// The location of part `p` of this message, rendered.
    pub fn part_loc(&self, p: &Part<'_>) -> String {
        match p.index {
            Some(j) => format!("messages[{}].content[{j}]", self.index),
            None => format!("messages[{}].content", self.index),
        }
    }
}

/// A 400 for a part the target cannot express.
pub(crate) fn unsupported_part(
    m: &Msg<'_>,
    p: &Part<'_>,
    provider: &str,
    what: &str,
) -> GatewayError {
    let path = m.part_loc(p);
    super::json::unsupported(&Loc::Root(&path), provider, what)
}

/// Reads the messages of `u` into the neutral shape.
pub(crate) fn messages<'a>(u: &Unified<'a>, provider: &str) -> Result<Vec<Msg<'a>>, GatewayError> {
    let mut out = Vec::with_capacity(u.messages.len());
    for (i, (obj, role)) in u.messages.iter().enumerate() {
        out.push(message(i, obj, *role, provider)?);
    }
    Ok(out)
}

fn message<'a>(
    index: usize,
    obj: &RawObject<'a>,
    role: Role,
    provider: &str,
) -> Result<Msg<'a>, GatewayError> {
    let mloc = MESSAGES.index(index);
    let known: &[&str] = match role {
        Role::System | Role::User => &["role", "content"],
        Role::Assistant => &["role", "content", "tool_calls", "refusal"],
        Role::Tool => &["role", "content", "tool_call_id", "name"],
        Role::Function => {
            return Err(super::json::unsupported(
                &mloc.field("role"),
                provider,
                "the legacy \"function\" role (use \"tool\")",
            ))
        }
    };
    if let Some(key) = obj.unknown(known) {
        return Err(super::json::unsupported(
            &mloc.field(key),
            provider,
            "this field",
        ));
    }
    let mut msg = Msg {
        index,
        role,
        parts: Vec::new(),
        tool_calls: Vec::new(),
        tool_call_id: None,
        name: None,
    };
    let cloc = mloc.field("content");
    match obj.get("content") {
        None => {
            if role != Role::Assistant {
                return Err(invalid(&cloc, "is required"));
            }
        }
        Some(v) if v.get().starts_with('"') => {
            msg.parts.push(Part {
                index: None,
                kind: PartKind::Text(string(v, &cloc)?),
            });
        }
        Some(v) => {
            let items =
                array(v, &cloc).map_err(|_| invalid(&cloc, "must be a string or an array"))?;
            for (j, item) in items.into_iter().enumerate() {
                let kind = content_part(item, &cloc.index(j), role, provider)?;
                msg.parts.push(Part {
                    index: Some(j),
                    kind,
                });
            }
        }
    }
    if let Some(v) = obj.get("refusal") {
        msg.parts.push(Part {
            index: None,
            kind: PartKind::Text(string(v, &mloc.field("refusal"))?),
        });
    }
    if let Some(v) = obj.get("tool_calls") {
        let tloc = mloc.field("tool_calls");
        for (j, call) in array(v, &tloc)?.into_iter().enumerate() {
            msg.tool_calls
                .push(tool_call(call, &tloc.index(j), provider)?);
        }
    }
    if role == Role::Tool {
        let iloc = mloc.field("tool_call_id");
        msg.tool_call_id = match obj.get("tool_call_id") {
            Some(v) => Some(string(v, &iloc)?),
            None => return Err(invalid(&iloc, "is required")),
        };
        msg.name = obj
            .get("name")
            .map(|v| string(v, &mloc.field("name")))
            .transpose()?;
    }
    Ok(msg)
}

fn content_part<'a>(
    v: &'a RawValue,
    loc: &Loc<'_>,
    role: Role,
    provider: &str,
) -> Result<PartKind<'a>, GatewayError> {
    let o = object(v, loc)?;
    let kloc = loc.field("type");
    let kind = match o.get("type") {
        Some(k) => string(k, &kloc)?,
        None => return Err(invalid(&kloc, "is required")),
    };
    let allowed = match role {
        Role::User => matches!(kind.as_ref(), "text" | "image_url" | "input_audio" | "file"),
        Role::Assistant => matches!(kind.as_ref(), "text" | "refusal"),
        _ => kind == "text",
    };
    if !allowed {
        let known = matches!(
            kind.as_ref(),
            "text" | "image_url" | "input_audio" | "file" | "refusal"
        );
        return Err(if known {
            invalid(
                &kloc,
                format_args!("{} parts are not allowed in this message role", clip(&kind)),
            )
        } else {
            invalid(
                &kloc,
                format_args!("unknown content part type {}", clip(&kind)),
            )
        });
    }
    match kind.as_ref() {
        "text" | "refusal" => {
            let key = if kind == "text" { "text" } else { "refusal" };
            if let Some(k) = o.unknown(&["type", key]) {
                return Err(super::json::unsupported(
                    &loc.field(k),
                    provider,
                    "this field",
                ));
            }
            let tloc = loc.field(key);
            match o.get(key) {
                Some(t) => Ok(PartKind::Text(string(t, &tloc)?)),
                None => Err(invalid(&tloc, "is required")),
            }
        }
        "image_url" => {
            let iloc = loc.field("image_url");
            let raw = o
                .get("image_url")
                .ok_or_else(|| invalid(&iloc, "is required"))?;
            let url_loc = iloc.field("url");
            let url = if raw.get().starts_with('"') {
                string(raw, &iloc)?
            } else {
                let img = object(raw, &iloc)?;
                if let Some(d) = img.get("detail") {
                    let dloc = iloc.field("detail");
                    let detail = string(d, &dloc)?;
                    if detail != "auto" {
                        return Err(super::json::unsupported(
                            &dloc,
                            provider,
                            format_args!("image detail {}", clip(&detail)),
                        ));
                    }
                }
                if let Some(k) = img.unknown(&["url", "detail"]) {
                    return Err(super::json::unsupported(
                        &iloc.field(k),
                        provider,
                        "this field",
                    ));
                }
                match img.get("url") {
                    Some(u) => string(u, &url_loc)?,
                    None => return Err(invalid(&url_loc, "is required")),
                }
            };
            media(url, &url_loc).map(PartKind::Image)
        }
        "input_audio" => {
            let aloc = loc.field("input_audio");
            let audio = match o.get("input_audio") {
                Some(a) => object(a, &aloc)?,
                None => return Err(invalid(&aloc, "is required")),
            };
            let dloc = aloc.field("data");
            let data = match audio.get("data") {
                Some(d) => string(d, &dloc)?,
                None => return Err(invalid(&dloc, "is required")),
            };
            let floc = aloc.field("format");
            let format = match audio.get("format") {
                Some(f) => string(f, &floc)?,
                None => return Err(invalid(&floc, "is required")),
            };
            let mime = match format.as_ref() {
                "wav" => "audio/wav",
                "mp3" => "audio/mp3",
                other => {
                    return Err(invalid(
                        &floc,
                        format_args!("unknown audio format {} (expected wav or mp3)", clip(other)),
                    ))
                }
            };
            Ok(PartKind::Audio { data, mime })
        }
        _ => {
            // "file"
            let floc = loc.field("file");
            let file = match o.get("file") {
                Some(f) => object(f, &floc)?,
                None => return Err(invalid(&floc, "is required")),
            };
            if file.get("file_id").is_some() {
                return Err(super::json::unsupported(
                    &floc.field("file_id"),
                    provider,
                    "OpenAI file ids",
                ));
            }
            let dloc = floc.field("file_data");
            let data = match file.get("file_data") {
                Some(d) => string(d, &dloc)?,
                None => return Err(invalid(&dloc, "is required")),
            };
            match media(data, &dloc)? {
                m @ Media::Inline { .. } => Ok(PartKind::File(m)),
                Media::Url(_) => Err(invalid(&dloc, "must be a base64 data: URL")),
            }
        }
    }
}

/// Reads a `data:<mime>;base64,<data>` or `http(s)://` URL.
fn media<'a>(url: Cow<'a, str>, loc: &Loc<'_>) -> Result<Media<'a>, GatewayError> {
    let bad = || {
        invalid(
            loc,
            "must be a base64 data: URL (data:<type>;base64,...) or an http(s) URL",
        )
    };
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(bad)?;
        let mime = meta.strip_suffix(";base64").ok_or_else(bad)?;
        if mime.is_empty() || mime.contains(';') || data.is_empty() {
            return Err(bad());
        }
        let mime_end = "data:".len() + mime.len();
        let data_start = url.len() - data.len();
        return Ok(match url {
            Cow::Borrowed(s) => Media::Inline {
                mime: Cow::Borrowed(&s[5..mime_end]),
                data: Cow::Borrowed(&s[data_start..]),
            },
            Cow::Owned(s) => Media::Inline {
                mime: Cow::Owned(s[5..mime_end].to_owned()),
                data: Cow::Owned(s[data_start..].to_owned()),
            },
        });
    }
    let lower = url.get(..8).unwrap_or(&url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(Media::Url(url));
    }
    Err(bad())
}

fn tool_call<'a>(
    v: &'a RawValue,
    loc: &Loc<'_>,
    provider: &str,
) -> Result<ToolCall<'a>, GatewayError> {
    let o = object(v, loc)?;
    if let Some(k) = o.unknown(&["id", "type", "function", "extra_content", "index"]) {
        return Err(super::json::unsupported(
            &loc.field(k),
            provider,
            "this field",
        ));
    }
    let kloc = loc.field("type");
    if let Some(k) = o.get("type") {
        let k = string(k, &kloc)?;
        if k != "function" {
            return Err(super::json::unsupported(
                &kloc,
                provider,
                format_args!("the tool call type {}", clip(&k)),
            ));
        }
    }
    let iloc = loc.field("id");
    let id = match o.get("id") {
        Some(i) => string(i, &iloc)?,
        None => return Err(invalid(&iloc, "is required")),
    };
    let floc = loc.field("function");
    let func = match o.get("function") {
        Some(f) => object(f, &floc)?,
        None => return Err(invalid(&floc, "is required")),
    };
    let nloc = floc.field("name");
    let name = match func.get("name") {
        Some(n) => string(n, &nloc)?,
        None => return Err(invalid(&nloc, "is required")),
    };
    let aloc = floc.field("arguments");
    let args = match func.get("arguments") {
        Some(a) => string(a, &aloc)?,
        None => Cow::Borrowed(""),
    };
    let arguments = if args.trim().is_empty() {
        RawValue::from_string("{}".to_owned()).map_err(|_| invalid(&aloc, "is not valid"))?
    } else {
        let raw: Box<RawValue> = serde_json::from_str(&args)
            .map_err(|_| invalid(&aloc, "must be a JSON object encoded as a string"))?;
        if !raw.get().starts_with('{') {
            return Err(invalid(&aloc, "must be a JSON object encoded as a string"));
        }
        raw
    };
    let signature = match o.get("extra_content") {
        Some(x) => {
            let xloc = loc.field("extra_content");
            let x = object(x, &xloc)?;
            match x.get("google") {
                Some(g) => {
                    let gloc = xloc.field("google");
                    let g = object(g, &gloc)?;
                    g.get("thought_signature")
                        .map(|s| string(s, &gloc.field("thought_signature")))
                        .transpose()?
                }
                None => None,
            }
        }
        None => None,
    };
    Ok(ToolCall {
        id,
        name,
        arguments,
        signature,
    })
}

/// Concatenated text of a message whose parts must all be text (system prompts, tool
/// results); any other part is a 400 naming it.
pub(crate) fn text_only(m: &Msg<'_>, provider: &str, what: &str) -> Result<String, GatewayError> {
    let mut s = String::new();
    for p in &m.parts {
        match &p.kind {
            PartKind::Text(t) => s.push_str(t),
            _ => return Err(unsupported_part(m, p, provider, what)),
        }
    }
    Ok(s)
}
