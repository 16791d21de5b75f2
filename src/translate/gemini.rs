//! The Gemini `generateContent` target: request translation, unary answers, stream events.

use super::json::{invalid, unsupported, CowStr, Loc};
use super::request::{
    messages, text_only, unsupported_part, Media, Msg, Options, PartKind, ResponseFormat, Role,
    ToolChoice, Unified,
};
use super::stream::State;
use super::{upstream_error, Normalized};
use crate::error::GatewayError;
use crate::types::Tokens;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

const PROVIDER: &str = "gemini";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'m> {
    contents: Vec<Content<'m>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Content<'m>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolGroup<'m>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'m>>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    generation_config: GenerationConfig<'m>,
}

#[derive(Serialize)]
struct Content<'m> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    parts: Vec<Part<'m>>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Part<'m> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'m str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inline_data: Option<Blob<'m>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_data: Option<FileData<'m>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCall<'m>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_response: Option<FunctionResponse<'m>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought_signature: Option<&'m str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'m> {
    mime_type: &'m str,
    data: &'m str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileData<'m> {
    #[serde(skip_serializing_if = "Option::is_none")]
    mime_type: Option<&'static str>,
    file_uri: &'m str,
}

#[derive(Serialize)]
struct FunctionCall<'m> {
    name: &'m str,
    args: &'m RawValue,
}

#[derive(Serialize)]
struct FunctionResponse<'m> {
    name: &'m str,
    response: Box<RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolGroup<'m> {
    function_declarations: Vec<FunctionDecl<'m>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDecl<'m> {
    name: &'m str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'m str>,
    /// JSON Schema as OpenAI tools carry it (`parameters` would take only Gemini's OpenAPI
    /// subset and reject common keywords such as `additionalProperties`).
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<&'m RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'m> {
    function_calling_config: FunctionCallingConfig<'m>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig<'m> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_function_names: Vec<&'m str>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'m> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'m str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    /// Full JSON Schema (`responseSchema` takes only the OpenAPI subset).
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'m RawValue>,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.max_output_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.stop_sequences.is_empty()
            && self.seed.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.response_mime_type.is_none()
            && self.response_json_schema.is_none()
    }
}

/// Appends `parts` as a `role` turn, merged into the previous one when it has the same role.
fn push<'m>(out: &mut Vec<Content<'m>>, role: &'static str, parts: Vec<Part<'m>>) {
    match out.last_mut() {
        Some(last) if last.role == Some(role) => last.parts.extend(parts),
        _ => out.push(Content {
            role: Some(role),
            parts,
        }),
    }
}

/// The MIME type suggested by a URL's extension (Gemini wants one for `fileData`).
fn mime_from_url(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "wav" => "audio/wav",
        "mp3" => "audio/mp3",
        "mp4" => "video/mp4",
        _ => return None,
    })
}

fn media_part<'m>(m: &'m Media<'_>) -> Part<'m> {
    match m {
        Media::Inline { mime, data } => Part {
            inline_data: Some(Blob {
                mime_type: mime,
                data,
            }),
            ..Part::default()
        },
        Media::Url(url) => Part {
            file_data: Some(FileData {
                mime_type: mime_from_url(url),
                file_uri: url,
            }),
            ..Part::default()
        },
    }
}

/// The function name a tool result answers: the matching call in an earlier assistant
/// message (the nearest one, as generated ids may repeat across turns), else the message's
/// own `name`.
fn tool_name<'m>(msgs: &'m [Msg<'_>], at: usize) -> Result<&'m str, GatewayError> {
    let m = &msgs[at];
    let id = m.tool_call_id.as_deref().unwrap_or_default();
    let found = msgs[..at]
        .iter()
        .rev()
        .flat_map(|p| p.tool_calls.iter())
        .find(|c| c.id == id)
        .map(|c| c.name.as_ref());
    found.or(m.name.as_deref()).ok_or_else(|| {
        invalid(
            &Loc::Root("messages").index(m.index).field("tool_call_id"),
            format_args!(
                "{} matches no earlier tool call (gemini needs the function name)",
                super::json::clip(id)
            ),
        )
    })
}

/// `functionResponse.response`: a JSON object result as is, anything else as `{"output": …}`.
fn tool_response(text: &str) -> Result<Box<RawValue>, serde_json::Error> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        if let Ok(raw) = serde_json::from_str::<Box<RawValue>>(text) {
            return Ok(raw);
        }
    }
    let value = match serde_json::from_str::<Value>(text) {
        Ok(v) if !trimmed.is_empty() => v,
        _ => Value::String(text.to_owned()),
    };
    serde_json::value::to_raw_value(&json!({ "output": value }))
}

/// Builds the `generateContent` body.
pub(crate) fn build(u: &Unified<'_>) -> Result<Bytes, GatewayError> {
    let opts = Options::parse(u, PROVIDER)?;
    let msgs = messages(u, PROVIDER)?;

    if opts.user.is_some() {
        return Err(unsupported(&Loc::Root("user"), PROVIDER, "an end-user id"));
    }
    if let Some((key, _)) = opts
        .metadata
        .entries
        .iter()
        .find(|(_, v)| !super::json::is_null(v))
    {
        return Err(unsupported(
            &Loc::Root("metadata").field(key),
            PROVIDER,
            "request metadata",
        ));
    }
    if opts.parallel_tool_calls == Some(false) {
        return Err(unsupported(
            &Loc::Root("parallel_tool_calls"),
            PROVIDER,
            "disabling parallel tool calls",
        ));
    }

    let mut system = Vec::new();
    let mut contents: Vec<Content<'_>> = Vec::with_capacity(msgs.len());
    for (at, m) in msgs.iter().enumerate() {
        match m.role {
            Role::System => {
                for p in &m.parts {
                    match &p.kind {
                        PartKind::Text(t) if t.is_empty() => {}
                        PartKind::Text(t) => system.push(Part {
                            text: Some(t),
                            ..Part::default()
                        }),
                        _ => return Err(unsupported_part(m, p, PROVIDER, "this system content")),
                    }
                }
            }
            Role::User => {
                let mut parts = Vec::with_capacity(m.parts.len());
                for p in &m.parts {
                    parts.push(match &p.kind {
                        PartKind::Text(t) if t.is_empty() => continue,
                        PartKind::Text(t) => Part {
                            text: Some(t),
                            ..Part::default()
                        },
                        PartKind::Image(media) | PartKind::File(media) => media_part(media),
                        PartKind::Audio { data, mime } => Part {
                            inline_data: Some(Blob {
                                mime_type: mime,
                                data,
                            }),
                            ..Part::default()
                        },
                    });
                }
                if parts.is_empty() {
                    return Err(invalid(
                        &Loc::Root("messages").index(m.index).field("content"),
                        "must not be empty for gemini models",
                    ));
                }
                push(&mut contents, "user", parts);
            }
            Role::Assistant => {
                let mut parts = Vec::with_capacity(m.parts.len() + m.tool_calls.len());
                for p in &m.parts {
                    match &p.kind {
                        PartKind::Text(t) if t.is_empty() => {}
                        PartKind::Text(t) => parts.push(Part {
                            text: Some(t),
                            ..Part::default()
                        }),
                        _ => {
                            return Err(unsupported_part(m, p, PROVIDER, "this assistant content"))
                        }
                    }
                }
                for c in &m.tool_calls {
                    parts.push(Part {
                        function_call: Some(FunctionCall {
                            name: &c.name,
                            args: &c.arguments,
                        }),
                        thought_signature: c.signature.as_deref(),
                        ..Part::default()
                    });
                }
                if !parts.is_empty() {
                    push(&mut contents, "model", parts);
                }
            }
            Role::Tool => {
                let name = tool_name(&msgs, at)?;
                let text = text_only(m, PROVIDER, "non-text tool results")?;
                let response = tool_response(&text).map_err(|e| {
                    invalid(
                        &Loc::Root("messages").index(m.index).field("content"),
                        format_args!("cannot be encoded: {e}"),
                    )
                })?;
                push(
                    &mut contents,
                    "user",
                    vec![Part {
                        function_response: Some(FunctionResponse { name, response }),
                        ..Part::default()
                    }],
                );
            }
            Role::Function => {
                return Err(invalid(
                    &Loc::Root("messages").index(m.index).field("role"),
                    "the legacy \"function\" role is not supported (use \"tool\")",
                ))
            }
        }
    }
    if contents.is_empty() {
        return Err(invalid(
            &Loc::Root("messages"),
            "must contain at least one user or assistant message",
        ));
    }

    let decls: Vec<FunctionDecl<'_>> = opts
        .tools
        .iter()
        .map(|t| FunctionDecl {
            name: &t.name,
            description: t.description.as_deref(),
            parameters_json_schema: t.parameters,
        })
        .collect();
    let tool_config = match (&opts.tool_choice, decls.is_empty()) {
        (_, true) | (None, false) => None,
        (Some(choice), false) => {
            let (mode, allowed) = match choice {
                ToolChoice::Auto => ("AUTO", Vec::new()),
                ToolChoice::None => ("NONE", Vec::new()),
                ToolChoice::Required => ("ANY", Vec::new()),
                ToolChoice::Function(n) => ("ANY", vec![n.as_ref()]),
            };
            Some(ToolConfig {
                function_calling_config: FunctionCallingConfig {
                    mode,
                    allowed_function_names: allowed,
                },
            })
        }
    };
    let tools = if decls.is_empty() {
        Vec::new()
    } else {
        vec![ToolGroup {
            function_declarations: decls,
        }]
    };
    let (response_mime_type, response_json_schema) = match opts.response_format {
        None | Some(ResponseFormat::Text) => (None, None),
        Some(ResponseFormat::JsonObject) => (Some("application/json"), None),
        Some(ResponseFormat::JsonSchema { schema }) => (Some("application/json"), schema),
    };

    let body = Body {
        contents,
        system_instruction: (!system.is_empty()).then_some(Content {
            role: None,
            parts: system,
        }),
        tools,
        tool_config,
        generation_config: GenerationConfig {
            max_output_tokens: opts.max_tokens,
            temperature: opts.temperature,
            top_p: opts.top_p,
            top_k: opts.top_k,
            stop_sequences: opts.stop.iter().map(|s| s.as_ref()).collect(),
            seed: opts.seed,
            presence_penalty: opts.presence_penalty,
            frequency_penalty: opts.frequency_penalty,
            response_mime_type,
            response_json_schema,
        },
    };
    serde_json::to_vec(&body).map(Bytes::from).map_err(|e| {
        invalid(
            &Loc::Root("messages"),
            format_args!("cannot be encoded: {e}"),
        )
    })
}

/// Gemini `finishReason` → normalized (`STOP` with function calls is `tool_calls`).
fn finish_reason(r: &str, tool_calls: bool) -> &'static str {
    match r {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => "content_filter",
        _ if tool_calls => "tool_calls",
        _ => "stop",
    }
}

/// The id of the `n`th function call of a response when Gemini gives none.
fn call_id(n: u32) -> String {
    format!("call_{n}")
}

/// Normalizes a `generateContent` answer.
pub(crate) fn normalize(response: &[u8]) -> Result<Normalized, GatewayError> {
    let v: Value = serde_json::from_slice(response)
        .map_err(|_| upstream_error("the provider's answer is not valid JSON"))?;
    if !v.is_object() || v.get("error").is_some() {
        return Err(upstream_error("the provider answered with an error"));
    }
    let mut n = Normalized::default();
    let candidate = v
        .get("candidates")
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    let mut calls = 0u32;
    if let Some(parts) = candidate
        .and_then(|c| c.get("content"))
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
    {
        for p in parts {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                n.content.push_str(t);
                n.push_text_block(t.to_owned());
            } else if let Some(fc) = p.get("functionCall") {
                let id = fc
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| call_id(calls));
                calls += 1;
                let name = fc.get("name").and_then(Value::as_str).unwrap_or_default();
                let args = fc
                    .get("args")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".to_owned());
                let extra = p
                    .get("thoughtSignature")
                    .and_then(Value::as_str)
                    .map(|s| json!({"google": {"thought_signature": s}}));
                n.push_tool_call(id, name.to_owned(), args, extra);
            }
        }
    }
    n.stop_reason = match candidate
        .and_then(|c| c.get("finishReason"))
        .and_then(Value::as_str)
    {
        Some(r) => finish_reason(r, calls > 0),
        None if candidate.is_none()
            && v.get("promptFeedback")
                .and_then(|f| f.get("blockReason"))
                .is_some() =>
        {
            "content_filter"
        }
        None => finish_reason("STOP", calls > 0),
    };
    n.usage = v.get("usageMetadata").cloned().unwrap_or(Value::Null);
    n.tokens = Tokens::from_gemini_usage(&n.usage).unwrap_or_default();
    n.request_id = v
        .get("responseId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(n)
}

// ---------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    candidates: Vec<Candidate<'a>>,
    #[serde(rename = "usageMetadata", borrow)]
    usage: Option<&'a RawValue>,
    #[serde(rename = "responseId", borrow)]
    response_id: Option<CowStr<'a>>,
    #[serde(rename = "promptFeedback")]
    prompt_feedback: Option<Value>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Candidate<'a> {
    #[serde(borrow)]
    content: Option<ChunkContent<'a>>,
    #[serde(rename = "finishReason", borrow)]
    finish_reason: Option<CowStr<'a>>,
    #[serde(default)]
    index: u32,
}

#[derive(Deserialize)]
struct ChunkContent<'a> {
    #[serde(default, borrow)]
    parts: Vec<ChunkPart<'a>>,
}

#[derive(Deserialize)]
struct ChunkPart<'a> {
    #[serde(borrow)]
    text: Option<CowStr<'a>>,
    #[serde(default)]
    thought: bool,
    #[serde(rename = "functionCall", borrow)]
    function_call: Option<ChunkCall<'a>>,
    #[serde(rename = "thoughtSignature", borrow)]
    thought_signature: Option<CowStr<'a>>,
}

#[derive(Deserialize)]
struct ChunkCall<'a> {
    #[serde(borrow)]
    name: CowStr<'a>,
    #[serde(borrow)]
    args: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<CowStr<'a>>,
}

/// One upstream event of a `streamGenerateContent?alt=sse` stream.
pub(crate) fn on_event(st: &mut State, data: &[u8], out: &mut BytesMut) {
    let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(data) else {
        return;
    };
    if let Some(err) = chunk.error {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the provider reported an error")
            .to_owned();
        st.emit_error(out, &message, Some(&err));
        return;
    }
    st.set_id(chunk.response_id.as_ref().map(|s| s.0.as_ref()));
    if let Some(u) = chunk.usage {
        st.gemini_usage.clear();
        st.gemini_usage.push_str(u.get());
    }
    let Some(cand) = chunk.candidates.into_iter().find(|c| c.index == 0) else {
        let blocked = chunk
            .prompt_feedback
            .as_ref()
            .is_some_and(|f| f.get("blockReason").is_some());
        if blocked {
            st.emit_finish(out, "content_filter");
            st.done = true;
        }
        return;
    };
    st.ensure_role(out);
    for part in cand.content.map(|c| c.parts).unwrap_or_default() {
        if part.thought {
            continue;
        }
        if let Some(t) = &part.text {
            st.emit_text(out, &t.0);
        }
        if let Some(call) = part.function_call {
            let index = st.tool_calls;
            st.tool_calls += 1;
            let id = match &call.id {
                Some(id) => id.0.clone().into_owned(),
                None => call_id(index),
            };
            let args = call.args.map_or("{}", RawValue::get);
            let sig = part.thought_signature.as_ref().map(|s| s.0.as_ref());
            st.emit_tool_call(out, index, &id, &call.name.0, args, sig);
        }
    }
    if let Some(r) = cand.finish_reason {
        let reason = finish_reason(&r.0, st.tool_calls > 0);
        st.emit_finish(out, reason);
        st.done = true;
    }
}
