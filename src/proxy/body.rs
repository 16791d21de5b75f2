//! Request body inspection and rewriting: pure functions over bytes.
//!
//! [`inspect`] validates the JSON once (syntax, the types of the fields the gateway relies on)
//! and records *where* the `model` and `stream_options` values sit in the buffer. [`rewrite`]
//! then splices the upstream slug (and `stream_options.include_usage`) into the original bytes,
//! so every other byte the client sent reaches the provider unchanged and the rewrite costs one
//! copy of the body, with no re-serialisation.

use crate::error::{ErrorCode, GatewayError};
use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::ops::Range;

/// What the body rewrite needs to know about the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `/v1/chat/completions` (and legacy completions): `messages`, OpenAI stream usage opt-in.
    Chat,
    /// `/v1/responses`: `input`; usage always arrives in `response.completed`.
    Responses,
    /// `/v1/embeddings`: `input`, never streams.
    Embeddings,
    /// `/v1/completions` (legacy): `prompt`; OpenAI stream usage opt-in.
    Completions,
    /// Anthropic `/v1/messages`: `messages`, `max_tokens`.
    Anthropic,
    /// Anthropic `/v1/messages/count_tokens`: `messages`.
    AnthropicCount,
    /// Gemini `generateContent`: `contents`; the model is in the path.
    Gemini,
    /// `/v1/images/generations`: `prompt`.
    Image,
    /// Any JSON body with a `model` (vLLM's own endpoints).
    Generic,
    /// multipart/form-data with a `model` field (image edits, audio); see [`inspect_multipart`].
    Multipart,
}

impl BodyKind {
    /// Whether the OpenAI `stream_options.include_usage` opt-in applies.
    pub fn openai_stream_usage(self) -> bool {
        matches!(self, BodyKind::Chat | BodyKind::Completions)
    }
}

/// Facts about a decoded request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// The requested model name.
    pub model: String,
    /// Byte range of the `model` JSON value (quotes included); `None` when the model is not
    /// in the body (Gemini).
    pub model_span: Option<Range<usize>>,
    /// `stream: true`.
    pub stream: bool,
    /// Byte range of the `stream_options` value, when present.
    pub stream_options_span: Option<Range<usize>>,
    /// `stream_options.include_usage` as the client sent it.
    pub client_include_usage: bool,
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens`.
    pub max_tokens: Option<u64>,
    /// Offset just after the opening `{`.
    pub object_start: usize,
    /// The model value is raw text (a multipart field), not a JSON string.
    pub model_raw: bool,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    stream: Option<bool>,
    #[serde(borrow)]
    stream_options: Option<&'a RawValue>,
    messages: Option<Vec<IgnoredAny>>,
    input: Option<IgnoredAny>,
    prompt: Option<IgnoredAny>,
    contents: Option<Vec<IgnoredAny>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<u32>,
}

fn bad(code: ErrorCode, msg: impl Into<String>) -> GatewayError {
    GatewayError::new(code, msg)
}

fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    start..start + raw.get().len()
}

/// Validates `body` for `kind` and finds the values the gateway rewrites.
pub fn inspect(kind: BodyKind, body: &[u8]) -> Result<Inspected, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(
            ErrorCode::InvalidRequestBody,
            "request body is empty; send a JSON object",
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        bad(
            ErrorCode::InvalidRequestBody,
            format!(
                "request body is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    let object_start = match text.find(|c: char| !c.is_ascii_whitespace()) {
        Some(i) if text.as_bytes()[i] == b'{' => i + 1,
        _ => {
            return Err(bad(
                ErrorCode::InvalidRequest,
                "request body must be a JSON object",
            ))
        }
    };
    // The plain deserializer first: tracking the path of every value costs more than the
    // rest of the inspection, and it is only needed for the message of a body that fails.
    let mut de = serde_json::Deserializer::from_str(text);
    let peek = match Peek::deserialize(&mut de) {
        Ok(p) => p,
        Err(_) => {
            de = serde_json::Deserializer::from_str(text);
            peek_with_path(&mut de)?
        }
    };
    de.end().map_err(|e| {
        bad(
            ErrorCode::InvalidRequest,
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    finish_inspect(kind, body, object_start, peek)
}

/// The body's fields with the path of the value that failed in the error.
fn peek_with_path<'a>(
    de: &mut serde_json::Deserializer<serde_json::de::StrRead<'a>>,
) -> Result<Peek<'a>, GatewayError> {
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            bad(
                ErrorCode::InvalidRequest,
                format!("request body is not valid JSON: {inner}"),
            )
        } else {
            bad(
                ErrorCode::InvalidRequest,
                format!("invalid value for `{path}`: {inner}"),
            )
        }
    })
}

fn finish_inspect(
    kind: BodyKind,
    body: &[u8],
    object_start: usize,
    peek: Peek<'_>,
) -> Result<Inspected, GatewayError> {
    let (model, model_span) = if kind == BodyKind::Gemini {
        (String::new(), None)
    } else {
        let raw_model = peek
            .model
            .ok_or_else(|| bad(ErrorCode::InvalidRequest, "`model` is required"))?;
        let model: String = serde_json::from_str(raw_model.get()).map_err(|_| {
            bad(
                ErrorCode::InvalidRequest,
                format!(
                    "invalid value for `model`: expected a string, got {}",
                    raw_model.get()
                ),
            )
        })?;
        if model.is_empty() {
            return Err(bad(ErrorCode::InvalidRequest, "`model` must not be empty"));
        }
        (model, Some(span_of(body, raw_model)))
    };
    let required: Option<(&str, bool)> = match kind {
        BodyKind::Chat | BodyKind::AnthropicCount => Some(("messages", peek.messages.is_some())),
        BodyKind::Anthropic => {
            if peek.messages.is_none() {
                Some(("messages", false))
            } else {
                Some(("max_tokens", peek.max_tokens.is_some()))
            }
        }
        BodyKind::Responses | BodyKind::Embeddings => Some(("input", peek.input.is_some())),
        BodyKind::Completions | BodyKind::Image => Some(("prompt", peek.prompt.is_some())),
        BodyKind::Gemini => Some(("contents", peek.contents.is_some())),
        BodyKind::Generic | BodyKind::Multipart => None,
    };
    if let Some((field, false)) = required {
        return Err(bad(
            ErrorCode::InvalidRequest,
            format!("`{field}` is required"),
        ));
    }
    if let Some(t) = peek.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(bad(
                ErrorCode::InvalidRequest,
                "invalid value for `temperature`: must be between 0 and 2",
            ));
        }
    }
    let _ = (peek.top_p, peek.n);
    let stream = peek.stream.unwrap_or(false);
    if stream && kind == BodyKind::Embeddings {
        return Err(bad(
            ErrorCode::InvalidRequest,
            "invalid value for `stream`: embeddings do not stream",
        ));
    }
    let mut client_include_usage = false;
    let mut stream_options_span = None;
    if let Some(so) = peek.stream_options {
        let v: serde_json::Value = serde_json::from_str(so.get()).map_err(|e| {
            bad(
                ErrorCode::InvalidRequest,
                format!("invalid `stream_options`: {e}"),
            )
        })?;
        match &v {
            serde_json::Value::Null => {}
            serde_json::Value::Object(o) => match o.get("include_usage") {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::Bool(b)) => client_include_usage = *b,
                Some(_) => {
                    return Err(bad(
                        ErrorCode::InvalidRequest,
                        "invalid value for `stream_options.include_usage`: expected a boolean",
                    ))
                }
            },
            _ => {
                return Err(bad(
                    ErrorCode::InvalidRequest,
                    "invalid value for `stream_options`: expected an object",
                ))
            }
        }
        stream_options_span = Some(span_of(body, so));
    }
    Ok(Inspected {
        model,
        model_span,
        stream,
        stream_options_span,
        client_include_usage,
        max_tokens: peek
            .max_completion_tokens
            .or(peek.max_tokens)
            .or(peek.max_output_tokens),
        object_start,
        model_raw: false,
    })
}

/// The body for the upstream: `model` replaced by `slug`; with `force_usage`, a streaming chat
/// request also asks for `stream_options.include_usage`.
pub fn rewrite(body: &[u8], insp: &Inspected, slug: &str, force_usage: bool) -> Bytes {
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(2);
    if let Some(span) = &insp.model_span {
        let value = if insp.model_raw {
            slug.as_bytes().to_vec()
        } else {
            serde_json::to_string(slug)
                .unwrap_or_else(|_| format!("\"{slug}\""))
                .into_bytes()
        };
        edits.push((span.clone(), value));
    }
    if edits.is_empty() && !(force_usage && insp.stream && !insp.client_include_usage) {
        return Bytes::copy_from_slice(body);
    }
    if force_usage && insp.stream && !insp.client_include_usage {
        match &insp.stream_options_span {
            Some(span) => {
                let mut v: serde_json::Value =
                    serde_json::from_slice(&body[span.clone()]).unwrap_or(serde_json::Value::Null);
                if !v.is_object() {
                    v = serde_json::json!({});
                }
                if let Some(o) = v.as_object_mut() {
                    o.insert("include_usage".into(), serde_json::Value::Bool(true));
                }
                edits.push((span.clone(), v.to_string().into_bytes()));
            }
            None => edits.push((
                insp.object_start..insp.object_start,
                b"\"stream_options\":{\"include_usage\":true},".to_vec(),
            )),
        }
    }
    edits.sort_by_key(|(r, _)| r.start);
    let extra: usize = edits.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut pos = 0;
    for (r, b) in edits {
        out.extend_from_slice(&body[pos..r.start]);
        out.extend_from_slice(&b);
        pos = r.end;
    }
    out.extend_from_slice(&body[pos..]);
    Bytes::from(out)
}

/// Finds the `model` field of a multipart/form-data body. Only that field's value is ever
/// rewritten; files and every other part pass through byte for byte.
pub fn inspect_multipart(content_type: &str, body: &[u8]) -> Result<Inspected, GatewayError> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            bad(
                ErrorCode::InvalidRequestBody,
                "expected multipart/form-data with a boundary",
            )
        })?;
    if body.is_empty() {
        return Err(bad(ErrorCode::InvalidRequestBody, "request body is empty"));
    }
    let delim = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delim.as_bytes());
    let starts: Vec<usize> = finder.find_iter(body).collect();
    if starts.is_empty() {
        return Err(bad(
            ErrorCode::InvalidRequestBody,
            "multipart body has no part with the declared boundary",
        ));
    }
    for w in starts.windows(2) {
        let part = &body[w[0] + delim.len()..w[1]];
        let Some(head_end) = memchr::memmem::find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..head_end]).to_ascii_lowercase();
        let is_model = head.lines().any(|l| {
            l.starts_with("content-disposition:")
                && l.split(';')
                    .map(str::trim)
                    .any(|p| p == "name=\"model\"" || p == "name=model")
        });
        if !is_model {
            continue;
        }
        let value_start = w[0] + delim.len() + head_end + 4;
        // The value ends at the CRLF that precedes the next delimiter.
        let value_end = w[1].saturating_sub(2).max(value_start);
        let value = std::str::from_utf8(&body[value_start..value_end])
            .map_err(|_| bad(ErrorCode::InvalidRequestBody, "`model` is not valid UTF-8"))?
            .trim()
            .to_string();
        if value.is_empty() {
            return Err(bad(ErrorCode::InvalidRequest, "`model` must not be empty"));
        }
        return Ok(Inspected {
            model: value,
            model_span: Some(value_start..value_end),
            stream: false,
            stream_options_span: None,
            client_include_usage: false,
            max_tokens: None,
            object_start: 0,
            model_raw: true,
        });
    }
    Err(bad(
        ErrorCode::InvalidRequest,
        "the multipart form has no `model` field",
    ))
}

/// A rough input-token estimate (≈ 4 bytes a token over the body's string values), used only
/// when a provider reports no usage.
pub fn estimate_input_tokens(body: &[u8]) -> u64 {
    fn walk(v: &serde_json::Value, acc: &mut usize) {
        match v {
            serde_json::Value::String(s) => *acc += s.len(),
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, acc)),
            serde_json::Value::Object(o) => o
                .iter()
                .filter(|(k, _)| k.as_str() != "model")
                .for_each(|(_, x)| walk(x, acc)),
            _ => {}
        }
    }
    let mut chars = 0usize;
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        for key in [
            "messages",
            "input",
            "instructions",
            "prompt",
            "system",
            "contents",
            "systemInstruction",
        ] {
            if let Some(x) = v.get(key) {
                walk(x, &mut chars);
            }
        }
    }
    chars.div_ceil(4) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn chat(body: &str) -> Result<Inspected, GatewayError> {
        inspect(BodyKind::Chat, body.as_bytes())
    }

    #[test]
    fn model_is_spliced_and_rest_kept() {
        let b = r#" {"messages":[{"role":"user","content":"hi \"x\""}], "model" : "gpt-4o",  "temperature":0.5}"#;
        let i = chat(b).expect("ok");
        assert_eq!(i.model, "gpt-4o");
        let out = rewrite(b.as_bytes(), &i, "up-slug", true);
        let s = std::str::from_utf8(&out).expect("utf8");
        assert_eq!(s, b.replace("\"gpt-4o\"", "\"up-slug\""));
    }

    #[test]
    fn stream_usage_is_requested() {
        let b = r#"{"model":"m","messages":[],"stream":true}"#;
        let i = chat(b).expect("ok");
        assert!(i.stream && !i.client_include_usage);
        let v: Value = serde_json::from_slice(&rewrite(b.as_bytes(), &i, "s", true)).expect("json");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "s");

        let b = r#"{"model":"m","messages":[],"stream":true,"stream_options":{"foo":1}}"#;
        let i = chat(b).expect("ok");
        let v: Value = serde_json::from_slice(&rewrite(b.as_bytes(), &i, "s", true)).expect("json");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["foo"], 1);

        let b =
            r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#;
        let i = chat(b).expect("ok");
        assert!(i.client_include_usage);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = chat(r#"{"model":"m","messages":[],"stream":"yes"}"#).expect_err("bad");
        assert!(e.message.contains("stream"), "{}", e.message);
        let e = chat(r#"{"model":5,"messages":[]}"#).expect_err("bad");
        assert!(e.message.contains("model"), "{}", e.message);
        let e = chat(r#"{"model":"m","messages":{}}"#).expect_err("bad");
        assert!(e.message.contains("messages"), "{}", e.message);
        let e = chat(r#"{"model":"m","messages":[]"#).expect_err("bad");
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = chat(r#"{"messages":[]}"#).expect_err("bad");
        assert!(e.message.contains("`model` is required"), "{}", e.message);
        let e = chat("[1]").expect_err("bad");
        assert!(e.message.contains("JSON object"), "{}", e.message);
        let e = inspect(BodyKind::Chat, b"{\"model\":\"\xff\"}").expect_err("bad");
        assert_eq!(e.code, ErrorCode::InvalidRequestBody);
        let e = chat("").expect_err("bad");
        assert_eq!(e.code, ErrorCode::InvalidRequestBody);
        let e = chat(r#"{"model":"m","messages":[]} trailing"#).expect_err("bad");
        assert_eq!(e.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn multipart_model_is_rewritten_and_files_untouched() {
        let file: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let mut body = Vec::new();
        body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n");
        body.extend_from_slice(&file);
        body.extend_from_slice(b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-image\r\n--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na cat\r\n--XyZ--\r\n");
        let i = inspect_multipart("multipart/form-data; boundary=XyZ", &body).expect("ok");
        assert_eq!(i.model, "gpt-image");
        let out = rewrite(&body, &i, "up-image-1", false);
        let expect = {
            let s = body.clone();
            let pos = memchr::memmem::find(&s, b"gpt-image").expect("model");
            let mut e = s[..pos].to_vec();
            e.extend_from_slice(b"up-image-1");
            e.extend_from_slice(&s[pos + 9..]);
            e
        };
        assert_eq!(out.to_vec(), expect);
        let e = inspect_multipart(
            "multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n--XyZ--\r\n",
        )
        .expect_err("no model");
        assert!(e.message.contains("model"));
        assert!(inspect_multipart("application/json", b"{}").is_err());
    }

    #[test]
    fn estimate_counts_text() {
        let b = br#"{"model":"m","messages":[{"role":"user","content":"abcdefgh"}]}"#;
        assert_eq!(estimate_input_tokens(b), 3); // "user" + "abcdefgh" = 12 bytes
    }
}
