//! The Anthropic Messages target: request translation, unary answers, stream events.

use super::json::{invalid, string, unsupported, CowStr, Loc};
use super::request::{
    messages, text_only, unsupported_part, Media, Options, PartKind, ResponseFormat, Role,
    ToolChoice, Unified,
};
use super::stream::State;
use super::{upstream_error, Normalized};
use crate::error::GatewayError;
use crate::types::Tokens;
use bytes::{Bytes, BytesMut};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

const PROVIDER: &str = "anthropic";

/// `max_tokens` when the client gives none (Anthropic requires it).
pub(crate) const DEFAULT_MAX_TOKENS: u64 = 4096;

#[derive(Serialize)]
struct Body<'m> {
    model: &'m str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Block<'m>>,
    messages: Vec<Message<'m>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'m str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolDef<'m>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut<'m>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'m>>,
}

#[derive(Serialize)]
struct Message<'m> {
    role: &'static str,
    content: Vec<Block<'m>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'m> {
    Text {
        text: &'m str,
    },
    Image {
        source: Source<'m>,
    },
    Document {
        source: Source<'m>,
    },
    ToolUse {
        id: &'m str,
        name: &'m str,
        input: &'m RawValue,
    },
    ToolResult {
        tool_use_id: &'m str,
        #[serde(skip_serializing_if = "String::is_empty")]
        content: String,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source<'m> {
    Base64 { media_type: &'m str, data: &'m str },
    Url { url: &'m str },
}

#[derive(Serialize)]
struct ToolDef<'m> {
    name: &'m str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'m str>,
    #[serde(serialize_with = "schema_or_empty")]
    input_schema: Option<&'m RawValue>,
}

/// A tool without `parameters` takes no arguments: `{"type":"object","properties":{}}`.
fn schema_or_empty<S: Serializer>(v: &Option<&RawValue>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(raw) => raw.serialize(s),
        None => {
            let mut m = s.serialize_map(Some(2))?;
            m.serialize_entry("type", "object")?;
            m.serialize_entry("properties", &serde_json::Map::new())?;
            m.end()
        }
    }
}

#[derive(Serialize)]
struct ToolChoiceOut<'m> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'m str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disable_parallel_tool_use: bool,
}

#[derive(Serialize)]
struct Metadata<'m> {
    user_id: &'m str,
}

/// Appends `blocks` as a `role` message, merged into the previous one when it has the same
/// role (consecutive tool results become one user message, as Anthropic requires).
fn push<'m>(out: &mut Vec<Message<'m>>, role: &'static str, blocks: Vec<Block<'m>>) {
    match out.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => out.push(Message {
            role,
            content: blocks,
        }),
    }
}

fn source<'m>(m: &'m Media<'_>) -> Source<'m> {
    match m {
        Media::Inline { mime, data } => Source::Base64 {
            media_type: mime,
            data,
        },
        Media::Url(url) => Source::Url { url },
    }
}

/// Builds the Messages API body.
pub(crate) fn build(u: &Unified<'_>, slug: &str) -> Result<Bytes, GatewayError> {
    let opts = Options::parse(u, PROVIDER)?;
    let msgs = messages(u, PROVIDER)?;

    if opts.seed.is_some() {
        return Err(unsupported(&Loc::Root("seed"), PROVIDER, "a sampling seed"));
    }
    for (key, value) in [
        ("presence_penalty", opts.presence_penalty),
        ("frequency_penalty", opts.frequency_penalty),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(unsupported(&Loc::Root(key), PROVIDER, "this penalty"));
        }
    }
    match opts.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. }) => {
            return Err(unsupported(
                &Loc::Root("response_format"),
                PROVIDER,
                "a JSON response format (Anthropic has no native JSON mode)",
            ))
        }
    }
    if let Some(t) = opts.temperature {
        if !(0.0..=1.0).contains(&t) {
            return Err(invalid(
                &Loc::Root("temperature"),
                "must be between 0 and 1 for anthropic models",
            ));
        }
    }

    let mloc = Loc::Root("metadata");
    let mut meta_user = None;
    for (key, value) in &opts.metadata.entries {
        if super::json::is_null(value) {
            continue;
        }
        if key != "user_id" {
            return Err(unsupported(
                &mloc.field(key),
                PROVIDER,
                "metadata other than user_id",
            ));
        }
        meta_user = Some(string(value, &mloc.field("user_id"))?);
    }
    let user_id = meta_user.as_deref().or(opts.user.as_deref());

    let mut system = Vec::new();
    let mut out: Vec<Message<'_>> = Vec::with_capacity(msgs.len());
    for m in &msgs {
        match m.role {
            Role::System => {
                for p in &m.parts {
                    match &p.kind {
                        PartKind::Text(t) if t.is_empty() => {}
                        PartKind::Text(t) => system.push(Block::Text { text: t }),
                        _ => return Err(unsupported_part(m, p, PROVIDER, "this system content")),
                    }
                }
            }
            Role::User => {
                let mut blocks = Vec::with_capacity(m.parts.len());
                for p in &m.parts {
                    blocks.push(match &p.kind {
                        PartKind::Text(t) if t.is_empty() => continue,
                        PartKind::Text(t) => Block::Text { text: t },
                        PartKind::Image(media) => Block::Image {
                            source: source(media),
                        },
                        PartKind::File(media @ Media::Inline { mime, .. })
                            if mime == "application/pdf" =>
                        {
                            Block::Document {
                                source: source(media),
                            }
                        }
                        PartKind::File(Media::Inline { mime, .. }) => {
                            return Err(unsupported_part(
                                m,
                                p,
                                PROVIDER,
                                &format!(
                                    "a file of type {} (only application/pdf)",
                                    super::json::clip(mime)
                                ),
                            ))
                        }
                        PartKind::File(Media::Url(_)) | PartKind::Audio { .. } => {
                            return Err(unsupported_part(m, p, PROVIDER, "audio or file input"))
                        }
                    });
                }
                if blocks.is_empty() {
                    return Err(invalid(
                        &Loc::Root("messages").index(m.index).field("content"),
                        "must not be empty for anthropic models",
                    ));
                }
                push(&mut out, "user", blocks);
            }
            Role::Assistant => {
                let mut blocks = Vec::with_capacity(m.parts.len() + m.tool_calls.len());
                for p in &m.parts {
                    match &p.kind {
                        PartKind::Text(t) if t.is_empty() => {}
                        PartKind::Text(t) => blocks.push(Block::Text { text: t }),
                        _ => {
                            return Err(unsupported_part(m, p, PROVIDER, "this assistant content"))
                        }
                    }
                }
                for c in &m.tool_calls {
                    blocks.push(Block::ToolUse {
                        id: &c.id,
                        name: &c.name,
                        input: &c.arguments,
                    });
                }
                if !blocks.is_empty() {
                    push(&mut out, "assistant", blocks);
                }
            }
            Role::Tool => {
                let content = text_only(m, PROVIDER, "non-text tool results")?;
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                push(
                    &mut out,
                    "user",
                    vec![Block::ToolResult {
                        tool_use_id: id,
                        content,
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
    if out.is_empty() {
        return Err(invalid(
            &Loc::Root("messages"),
            "must contain at least one user or assistant message",
        ));
    }

    let tools: Vec<ToolDef<'_>> = opts
        .tools
        .iter()
        .map(|t| ToolDef {
            name: &t.name,
            description: t.description.as_deref(),
            input_schema: t.parameters,
        })
        .collect();
    let no_parallel = opts.parallel_tool_calls == Some(false);
    let tool_choice = if tools.is_empty() {
        None
    } else {
        let (kind, name) = match &opts.tool_choice {
            None | Some(ToolChoice::Auto) => ("auto", None),
            Some(ToolChoice::None) => ("none", None),
            Some(ToolChoice::Required) => ("any", None),
            Some(ToolChoice::Function(n)) => ("tool", Some(n.as_ref())),
        };
        (opts.tool_choice.is_some() || no_parallel).then_some(ToolChoiceOut {
            kind,
            name,
            disable_parallel_tool_use: no_parallel && kind != "none",
        })
    };

    let body = Body {
        model: slug,
        max_tokens: opts.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system,
        messages: out,
        temperature: opts.temperature,
        top_p: opts.top_p,
        top_k: opts.top_k,
        stop_sequences: opts.stop.iter().map(|s| s.as_ref()).collect(),
        stream: u.stream,
        tools,
        tool_choice,
        metadata: user_id.map(|user_id| Metadata { user_id }),
    };
    serde_json::to_vec(&body).map(Bytes::from).map_err(|e| {
        invalid(
            &Loc::Root("messages"),
            format_args!("cannot be encoded: {e}"),
        )
    })
}

/// Anthropic `stop_reason` → normalized.
fn stop_reason(r: &str) -> &'static str {
    match r {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Normalizes a Messages API answer.
pub(crate) fn normalize(response: &[u8]) -> Result<Normalized, GatewayError> {
    let v: Value = serde_json::from_slice(response)
        .map_err(|_| upstream_error("the provider's answer is not valid JSON"))?;
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| upstream_error("the provider's answer has no content"))?;
    let mut n = Normalized::default();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = b.get("text").and_then(Value::as_str).unwrap_or_default();
                n.content.push_str(t);
                n.push_text_block(t.to_owned());
            }
            Some("tool_use") => {
                let s = |k: &str| {
                    b.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let args = b
                    .get("input")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".to_owned());
                n.push_tool_call(s("id"), s("name"), args, None);
            }
            _ => {}
        }
    }
    n.stop_reason = match v.get("stop_reason").and_then(Value::as_str) {
        Some(r) => stop_reason(r),
        None if !n.tool_calls.is_empty() => "tool_calls",
        None => "stop",
    };
    n.usage = v.get("usage").cloned().unwrap_or(Value::Null);
    n.tokens = Tokens::from_anthropic_usage(&n.usage).unwrap_or_default();
    n.request_id = v.get("id").and_then(Value::as_str).map(str::to_owned);
    Ok(n)
}

// ---------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: CowStr<'a>,
    #[serde(default)]
    index: u64,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    #[serde(borrow)]
    content_block: Option<StartBlock<'a>>,
    #[serde(borrow)]
    message: Option<StartMessage<'a>>,
    usage: Option<Value>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<CowStr<'a>>,
    #[serde(borrow)]
    text: Option<CowStr<'a>>,
    #[serde(borrow)]
    partial_json: Option<CowStr<'a>>,
    #[serde(borrow)]
    stop_reason: Option<CowStr<'a>>,
}

#[derive(Deserialize)]
struct StartBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: CowStr<'a>,
    #[serde(borrow)]
    id: Option<CowStr<'a>>,
    #[serde(borrow)]
    name: Option<CowStr<'a>>,
    #[serde(borrow)]
    text: Option<CowStr<'a>>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(borrow)]
    id: Option<CowStr<'a>>,
    usage: Option<Value>,
}

/// Merges `update` into the usage kept so far (later counts win).
fn merge_usage(st: &mut State, update: Value) {
    match (&mut st.anthropic_usage, update) {
        (Some(Value::Object(kept)), Value::Object(new)) => {
            for (k, v) in new {
                if !v.is_null() {
                    kept.insert(k, v);
                }
            }
        }
        (slot, update @ Value::Object(_)) => *slot = Some(update),
        _ => {}
    }
}

/// One upstream event of a Messages stream.
pub(crate) fn on_event(st: &mut State, name: Option<&str>, data: &[u8], out: &mut BytesMut) {
    if name == Some("ping") {
        return;
    }
    let Ok(ev) = serde_json::from_slice::<Event<'_>>(data) else {
        return;
    };
    match ev.kind.0.as_ref() {
        "message_start" => {
            let msg = ev.message;
            st.set_id(
                msg.as_ref()
                    .and_then(|m| m.id.as_ref())
                    .map(|i| i.0.as_ref()),
            );
            if let Some(u) = msg.and_then(|m| m.usage) {
                merge_usage(st, u);
            }
            st.ensure_role(out);
        }
        "content_block_start" => {
            let Some(block) = ev.content_block else {
                return;
            };
            match block.kind.0.as_ref() {
                "tool_use" => {
                    let tool = st.tool_calls;
                    st.tool_calls += 1;
                    st.blocks.push((ev.index, tool));
                    let id = block.id.as_ref().map(|s| s.0.as_ref()).unwrap_or_default();
                    let name = block
                        .name
                        .as_ref()
                        .map(|s| s.0.as_ref())
                        .unwrap_or_default();
                    st.emit_tool_call(out, tool, id, name, "", None);
                }
                "text" => {
                    if let Some(t) = &block.text {
                        st.emit_text(out, &t.0);
                    }
                }
                _ => {}
            }
        }
        "content_block_delta" => {
            let Some(delta) = ev.delta else {
                return;
            };
            match delta.kind.as_ref().map(|k| k.0.as_ref()) {
                Some("text_delta") => {
                    if let Some(t) = &delta.text {
                        st.emit_text(out, &t.0);
                    }
                }
                Some("input_json_delta") => {
                    let tool = st
                        .blocks
                        .iter()
                        .rev()
                        .find(|(b, _)| *b == ev.index)
                        .map(|(_, t)| *t);
                    if let (Some(tool), Some(j)) = (tool, &delta.partial_json) {
                        st.emit_tool_args(out, tool, &j.0);
                    }
                }
                _ => {}
            }
        }
        "message_delta" => {
            if let Some(u) = ev.usage {
                merge_usage(st, u);
                st.anthropic_final = true;
            }
            if let Some(r) = ev.delta.as_ref().and_then(|d| d.stop_reason.as_ref()) {
                st.emit_finish(out, stop_reason(&r.0));
            }
        }
        "message_stop" => st.done = true,
        "error" => {
            let err = ev.error.unwrap_or(Value::Null);
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the provider reported an error")
                .to_owned();
            st.emit_error(out, &message, Some(&err));
        }
        _ => {}
    }
}
