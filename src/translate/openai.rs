//! The OpenAI-compatible target (OpenAI, Azure OpenAI, vLLM, custom servers): the request
//! passes through with the model rewritten, answers are read in their native shape.

use super::json::{object, write_str, Loc};
use super::request::Unified;
use super::stream::State;
use super::{upstream_error, Normalized};
use crate::error::GatewayError;
use crate::types::Tokens;
use bytes::{BufMut, Bytes, BytesMut};
use memchr::memmem::Finder;
use serde_json::Value;
use std::sync::LazyLock;

/// Builds the upstream body: the client's fields in order and byte for byte, except `model`
/// (the slug), `provider` and top-level `include_usage` (removed) and `stream_options`
/// (`include_usage: true` when streaming, so usage is always reported; removed otherwise).
pub(crate) fn build(u: &Unified<'_>, body_len: usize, slug: &str) -> Result<Bytes, GatewayError> {
    let mut out = Vec::with_capacity(body_len + slug.len() + 48);
    out.push(b'{');
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
    };
    let mut wrote_options = false;
    for (key, value) in &u.fields.entries {
        match key.as_ref() {
            "provider" | "include_usage" => continue,
            "model" => {
                sep(&mut out);
                out.extend_from_slice(b"\"model\":");
                write_str(&mut out, slug);
            }
            "stream_options" => {
                if !u.stream || wrote_options {
                    continue;
                }
                sep(&mut out);
                out.extend_from_slice(b"\"stream_options\":{");
                if !super::json::is_null(value) {
                    let o = object(value, &Loc::Root("stream_options"))?;
                    for (k, v) in o.entries.iter().filter(|(k, _)| k != "include_usage") {
                        write_str(&mut out, k);
                        out.push(b':');
                        out.extend_from_slice(v.get().as_bytes());
                        out.push(b',');
                    }
                }
                out.extend_from_slice(b"\"include_usage\":true}");
                wrote_options = true;
            }
            _ => {
                sep(&mut out);
                write_str(&mut out, key);
                out.push(b':');
                out.extend_from_slice(value.get().as_bytes());
            }
        }
    }
    if u.stream && !wrote_options {
        sep(&mut out);
        out.extend_from_slice(b"\"stream_options\":{\"include_usage\":true}");
    }
    out.push(b'}');
    Ok(Bytes::from(out))
}

/// Normalizes a chat-completion answer.
pub(crate) fn normalize(response: &[u8]) -> Result<Normalized, GatewayError> {
    let v: Value = serde_json::from_slice(response)
        .map_err(|_| upstream_error("the provider's answer is not valid JSON"))?;
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| upstream_error("the provider's answer has no choices"))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut n = Normalized::default();
    match message.get("content") {
        Some(Value::String(s)) => n.content.push_str(s),
        Some(Value::Array(parts)) => {
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    n.content.push_str(t);
                }
            }
        }
        _ => {}
    }
    if n.content.is_empty() {
        if let Some(r) = message.get("refusal").and_then(Value::as_str) {
            n.content.push_str(r);
        }
    }
    if !n.content.is_empty() {
        n.push_text_block(n.content.clone());
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let f = call.get("function").unwrap_or(&Value::Null);
            let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
            n.push_tool_call_block(s(call.get("id")), s(f.get("name")), s(f.get("arguments")));
            n.tool_calls.push(call.clone());
        }
    }
    n.stop_reason = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("length") => "length",
        Some("tool_calls" | "function_call") => "tool_calls",
        Some("content_filter") => "content_filter",
        _ if !n.tool_calls.is_empty() => "tool_calls",
        _ => "stop",
    };
    n.usage = v.get("usage").cloned().unwrap_or(Value::Null);
    n.tokens = Tokens::from_openai_usage(&n.usage).unwrap_or_default();
    n.request_id = v.get("id").and_then(Value::as_str).map(str::to_owned);
    Ok(n)
}

static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static MODEL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"model\""));
static CHOICES_EMPTY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"choices\":[]"));
static TOOL_CALLS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"tool_calls\""));
static CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\":\""));

fn skip_ws(data: &[u8], mut i: usize) -> usize {
    while i < data.len() && data[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Position just after the `:` that follows the key found at `at`, if the match is a key.
fn after_colon(data: &[u8], key_end: usize) -> Option<usize> {
    let i = skip_ws(data, key_end);
    (data.get(i) == Some(&b':')).then(|| skip_ws(data, i + 1))
}

/// End (exclusive) of the JSON string literal starting at `start` (a `"`).
fn string_end(data: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < data.len() {
        match data[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The byte range of the top-level `model` string value.
fn model_span(data: &[u8]) -> Option<std::ops::Range<usize>> {
    for at in MODEL.find_iter(data) {
        if let Some(v) = after_colon(data, at + b"\"model\"".len()) {
            if data.get(v) == Some(&b'"') {
                return string_end(data, v).map(|end| v..end);
            }
            return None;
        }
    }
    None
}

/// Whether the event carries a usage object (not `"usage":null`).
fn has_usage(data: &[u8]) -> bool {
    USAGE.find_iter(data).any(|at| {
        after_colon(data, at + b"\"usage\"".len()).and_then(|v| data.get(v)) == Some(&b'{')
    })
}

/// Whether the event carries generated content (non-empty text or a tool-call delta).
fn has_content(data: &[u8]) -> bool {
    if TOOL_CALLS.find(data).is_some() {
        return true;
    }
    CONTENT
        .find_iter(data)
        .any(|at| data.get(at + b"\"content\":\"".len()) != Some(&b'"'))
}

/// One upstream event of an OpenAI-compatible stream.
pub(crate) fn on_event(st: &mut State, data: &[u8], out: &mut BytesMut) {
    if data == b"[DONE]" {
        st.done = true;
        st.emit_done(out);
        return;
    }
    let body = skip_ws(data, 1);
    if data.first() == Some(&b'{') && data[body..].starts_with(b"\"error\"") {
        st.errored = true;
        State::emit_raw(out, data);
        return;
    }
    if st.provider_request_id.is_none() {
        #[derive(serde::Deserialize)]
        struct Head {
            id: Option<String>,
        }
        if let Ok(Head { id: Some(id) }) = serde_json::from_slice::<Head>(data) {
            st.provider_request_id = Some(id);
        }
    }
    if has_usage(data) {
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            if let Some(t) = v.get("usage").and_then(Tokens::from_openai_usage) {
                st.openai_tokens = Some(t);
            }
        }
        if !st.include_usage && CHOICES_EMPTY.find(data).is_some() {
            return;
        }
    }
    if has_content(data) {
        st.content_events += 1;
    }
    match model_span(data) {
        Some(span)
            if data[span.clone()] != st.model_json[..] && memchr::memchr(b'\n', data).is_none() =>
        {
            out.reserve(data.len() + st.model_json.len() + 8);
            out.put_slice(b"data: ");
            out.put_slice(&data[..span.start]);
            out.put_slice(&st.model_json);
            out.put_slice(&data[span.end..]);
            out.put_slice(b"\n\n");
        }
        Some(span) if data[span.clone()] != st.model_json[..] => {
            let mut d = Vec::with_capacity(data.len() + st.model_json.len());
            d.extend_from_slice(&data[..span.start]);
            d.extend_from_slice(&st.model_json);
            d.extend_from_slice(&data[span.end..]);
            State::emit_raw(out, &d);
        }
        _ => State::emit_raw(out, data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_span_skips_values_and_nested_text() {
        let d = br#"{"choices":[{"delta":{"content":"model"}}],"model" : "gpt-4o"}"#;
        let span = model_span(d).expect("span");
        assert_eq!(&d[span], b"\"gpt-4o\"");
        assert!(model_span(br#"{"content":"\"model\": \"x\""}"#).is_none());
    }

    #[test]
    fn usage_and_content_detection() {
        assert!(has_usage(br#"{"choices":[],"usage": {"prompt_tokens":1}}"#));
        assert!(!has_usage(br#"{"choices":[],"usage":null}"#));
        assert!(has_content(br#"{"delta":{"content":"hi"}}"#));
        assert!(!has_content(
            br#"{"delta":{"role":"assistant","content":""}}"#
        ));
        assert!(has_content(br#"{"delta":{"tool_calls":[]}}"#));
    }
}
