//! Streaming translation: provider SSE in, OpenAI `chat.completion.chunk` SSE out.
//!
//! [`StreamTranslator::feed`] frames the upstream bytes with the incremental [`SseParser`],
//! decodes each *complete* event once (borrowing from the network chunk where it can) and
//! appends the translated events to the caller's buffer. Every chunk it writes starts with the
//! same prefix (`id`, `object`, `created`, `model`), serialized once per stream, so the cost per
//! event is one small decode plus a few copies, independent of how long the stream has run.

use super::json::write_str;
use super::{anthropic, gemini, openai, Target};
use crate::sse::{parse_event, SseParser};
use crate::types::Tokens;
use bytes::{BufMut, BytesMut};

/// Translates one upstream stream into OpenAI chat-completion chunks.
pub struct StreamTranslator {
    parser: SseParser,
    state: State,
}

/// Everything but the framer (split so the framer's callback can borrow it).
pub(crate) struct State {
    pub target: Target,
    pub include_usage: bool,
    /// The Wharf model name as a JSON string literal.
    pub model_json: Vec<u8>,
    pub created: u64,
    /// `data: {"id":..,"object":..,"created":..,"model":..,"choices":[`, built on first use.
    prefix: Vec<u8>,
    /// The chunk id (`chatcmpl-...`), fixed by the first event.
    pub id: Option<String>,
    /// The provider's id of the response (message id, `responseId`, completion id).
    pub provider_request_id: Option<String>,
    pub role_sent: bool,
    pub finish_sent: bool,
    /// The finish reason to report (normalized).
    pub finish_reason: Option<&'static str>,
    /// The upstream reached its normal end.
    pub done: bool,
    /// An error event was written.
    pub errored: bool,
    /// `data: [DONE]` was written; nothing more is emitted.
    pub closed: bool,
    pub content_events: u64,
    /// Tool calls started so far (the next one's OpenAI `index`).
    pub tool_calls: u32,
    /// Anthropic: content block index → tool call index.
    pub blocks: Vec<(u64, u32)>,
    /// Anthropic: usage merged from `message_start` and `message_delta`.
    pub anthropic_usage: Option<serde_json::Value>,
    /// Anthropic: a `message_delta` carried the final output count (until then the output
    /// in `anthropic_usage` is `message_start`'s placeholder).
    pub anthropic_final: bool,
    /// Gemini: the last `usageMetadata`, raw (decoded only when asked for).
    pub gemini_usage: String,
    /// OpenAI: usage read from the usage chunk.
    pub openai_tokens: Option<Tokens>,
}

impl StreamTranslator {
    /// A translator for a stream from a `target` provider; `model` is the Wharf model name the
    /// client asked for, `include_usage` whether the client wants the usage-only chunk.
    pub fn new(target: Target, model: &str, include_usage: bool) -> Self {
        let mut model_json = Vec::with_capacity(model.len() + 2);
        write_str(&mut model_json, model);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        StreamTranslator {
            parser: SseParser::new(),
            state: State {
                target,
                include_usage,
                model_json,
                created,
                prefix: Vec::new(),
                id: None,
                provider_request_id: None,
                role_sent: false,
                finish_sent: false,
                finish_reason: None,
                done: false,
                errored: false,
                closed: false,
                content_events: 0,
                tool_calls: 0,
                blocks: Vec::new(),
                anthropic_usage: None,
                anthropic_final: false,
                gemini_usage: String::new(),
                openai_tokens: None,
            },
        }
    }

    /// Feeds one upstream chunk (any split); appends the translated events completed by it.
    pub fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) {
        let StreamTranslator { parser, state } = self;
        parser.feed(chunk, |raw| {
            if state.closed {
                return;
            }
            let ev = parse_event(raw);
            if ev.data.is_empty() {
                return;
            }
            match state.target {
                Target::OpenAi => openai::on_event(state, &ev.data, out),
                Target::Anthropic => anthropic::on_event(state, ev.event, &ev.data, out),
                Target::Gemini => gemini::on_event(state, &ev.data, out),
            }
        });
    }

    /// Ends the translated stream once the upstream body has ended: the final chunk with its
    /// `finish_reason` (if not sent yet), the usage-only chunk (`choices: []`) when the client
    /// asked for usage, and `data: [DONE]`. When the upstream stopped before its normal end
    /// (see [`Self::done`]) and no error event was written yet, an error event takes the place
    /// of the final and usage chunks. Calling it again writes nothing.
    pub fn finish(&mut self, out: &mut BytesMut) {
        let st = &mut self.state;
        if st.closed {
            return;
        }
        if !st.errored {
            if st.done {
                if st.target != Target::OpenAi {
                    if !st.finish_sent {
                        let reason = st.finish_reason.unwrap_or(if st.tool_calls > 0 {
                            "tool_calls"
                        } else {
                            "stop"
                        });
                        st.emit_finish(out, reason);
                    }
                    if st.include_usage {
                        if let Some(t) = st.tokens() {
                            st.emit_usage(out, &t);
                        }
                    }
                }
            } else {
                st.emit_error(
                    out,
                    "the provider's stream ended before its normal end",
                    None,
                );
            }
        }
        st.emit_done(out);
    }

    /// Usage reported by the provider so far (input, cumulative output).
    pub fn tokens(&self) -> Option<Tokens> {
        self.state.tokens()
    }

    /// Whether [`Self::tokens`] is the provider's final count, not a running or placeholder one.
    pub fn final_usage(&self) -> bool {
        let st = &self.state;
        match st.target {
            Target::OpenAi => st.openai_tokens.is_some(),
            Target::Anthropic => st.anthropic_final,
            Target::Gemini => st.done && !st.gemini_usage.is_empty(),
        }
    }

    /// Whether the upstream reached its normal end (`[DONE]`, `message_stop`, a Gemini
    /// `finishReason`).
    pub fn done(&self) -> bool {
        self.state.done
    }

    /// Translated events that carried generated content (text or tool-call deltas): an output
    /// estimate when the provider reports no usage.
    pub fn content_events(&self) -> u64 {
        self.state.content_events
    }

    /// Whether the provider sent an error event inside the stream.
    pub fn errored(&self) -> bool {
        self.state.errored
    }

    /// The provider's id of this response (Anthropic message id, Gemini `responseId`, OpenAI
    /// completion id), once seen.
    pub fn provider_request_id(&self) -> Option<&str> {
        self.state.provider_request_id.as_deref()
    }

    /// Bytes of an unfinished upstream event held back (non-empty at the end means the stream
    /// was cut mid-event).
    pub fn pending(&self) -> usize {
        self.parser.pending().len()
    }
}

/// Writes `s` as a JSON string literal.
fn put_str(out: &mut BytesMut, s: &str) {
    // Writing to a BytesMut cannot fail.
    let _ = serde_json::to_writer((&mut *out).writer(), s);
}

/// Writes a decimal number.
fn put_u32(out: &mut BytesMut, n: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
}

/// The OpenAI `usage` object for `t`.
pub(crate) fn openai_usage_json(out: &mut Vec<u8>, t: &Tokens) {
    use std::io::Write;
    let _ = write!(
        out,
        "{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{},\
         \"prompt_tokens_details\":{{\"cached_tokens\":{}}},\
         \"completion_tokens_details\":{{\"reasoning_tokens\":{}}}}}",
        t.input, t.output, t.total, t.cached_input, t.reasoning
    );
}

impl State {
    /// Usage so far, per target.
    pub fn tokens(&self) -> Option<Tokens> {
        match self.target {
            Target::OpenAi => self.openai_tokens,
            Target::Anthropic => self
                .anthropic_usage
                .as_ref()
                .and_then(Tokens::from_anthropic_usage),
            Target::Gemini => {
                if self.gemini_usage.is_empty() {
                    return None;
                }
                serde_json::from_str::<serde_json::Value>(&self.gemini_usage)
                    .ok()
                    .and_then(|v| Tokens::from_gemini_usage(&v))
            }
        }
    }

    /// Fixes the chunk id from the provider's response id (or a fresh one).
    pub fn set_id(&mut self, provider_id: Option<&str>) {
        if self.id.is_some() {
            return;
        }
        if let Some(p) = provider_id.filter(|p| !p.is_empty()) {
            self.provider_request_id = Some(p.to_owned());
        }
        self.id = Some(match provider_id.filter(|p| !p.is_empty()) {
            Some(p) => format!("chatcmpl-{p}"),
            None => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        });
    }

    fn prefix(&mut self) -> &[u8] {
        if self.prefix.is_empty() {
            self.set_id(None);
            let id = self.id.as_deref().unwrap_or_default();
            let mut p = Vec::with_capacity(96 + id.len() + self.model_json.len());
            p.extend_from_slice(b"data: {\"id\":");
            write_str(&mut p, id);
            p.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
            p.extend_from_slice(self.created.to_string().as_bytes());
            p.extend_from_slice(b",\"model\":");
            p.extend_from_slice(&self.model_json);
            p.extend_from_slice(b",\"choices\":[");
            self.prefix = p;
        }
        &self.prefix
    }

    /// Starts a chunk: the prefix and the opening of its single choice, up to `"delta":`.
    fn open(&mut self, out: &mut BytesMut, extra: usize) {
        let prefix_len = self.prefix().len();
        out.reserve(prefix_len + extra + 96);
        out.put_slice(&self.prefix);
        out.put_slice(b"{\"index\":0,\"delta\":");
    }

    /// Ends a chunk opened with [`Self::open`] once its delta is written.
    fn close(out: &mut BytesMut, finish: Option<&str>) {
        out.put_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(r) => {
                out.put_u8(b'"');
                out.put_slice(r.as_bytes());
                out.put_u8(b'"');
            }
            None => out.put_slice(b"null"),
        }
        out.put_slice(b"}]}\n\n");
    }

    /// The first chunk: `delta.role = "assistant"`.
    pub fn ensure_role(&mut self, out: &mut BytesMut) {
        if !self.role_sent {
            self.role_sent = true;
            self.open(out, 40);
            out.put_slice(b"{\"role\":\"assistant\",\"content\":\"\"}");
            Self::close(out, None);
        }
    }

    /// A text delta.
    pub fn emit_text(&mut self, out: &mut BytesMut, text: &str) {
        if text.is_empty() {
            return;
        }
        self.ensure_role(out);
        self.open(out, text.len() + 16);
        out.put_slice(b"{\"content\":");
        put_str(out, text);
        out.put_u8(b'}');
        Self::close(out, None);
        self.content_events += 1;
    }

    /// A tool call's first delta (`id`, `name`, and the arguments known so far).
    pub fn emit_tool_call(
        &mut self,
        out: &mut BytesMut,
        index: u32,
        id: &str,
        name: &str,
        arguments: &str,
        signature: Option<&str>,
    ) {
        self.ensure_role(out);
        let sig_len = signature.map_or(0, |s| s.len() + 48);
        self.open(out, 96 + id.len() + name.len() + arguments.len() + sig_len);
        out.put_slice(b"{\"tool_calls\":[{\"index\":");
        put_u32(out, index);
        out.put_slice(b",\"id\":");
        put_str(out, id);
        out.put_slice(b",\"type\":\"function\",\"function\":{\"name\":");
        put_str(out, name);
        out.put_slice(b",\"arguments\":");
        put_str(out, arguments);
        out.put_u8(b'}');
        if let Some(sig) = signature {
            out.put_slice(b",\"extra_content\":{\"google\":{\"thought_signature\":");
            put_str(out, sig);
            out.put_slice(b"}}");
        }
        out.put_slice(b"}]}");
        Self::close(out, None);
        self.content_events += 1;
    }

    /// A fragment of a tool call's arguments.
    pub fn emit_tool_args(&mut self, out: &mut BytesMut, index: u32, fragment: &str) {
        if fragment.is_empty() {
            return;
        }
        self.ensure_role(out);
        self.open(out, 64 + fragment.len());
        out.put_slice(b"{\"tool_calls\":[{\"index\":");
        put_u32(out, index);
        out.put_slice(b",\"function\":{\"arguments\":");
        put_str(out, fragment);
        out.put_slice(b"}}]}");
        Self::close(out, None);
        self.content_events += 1;
    }

    /// The chunk with `finish_reason` (empty delta).
    pub fn emit_finish(&mut self, out: &mut BytesMut, reason: &'static str) {
        if self.finish_sent {
            return;
        }
        self.ensure_role(out);
        self.finish_sent = true;
        self.finish_reason = Some(reason);
        self.open(out, 0);
        out.put_slice(b"{}");
        Self::close(out, Some(reason));
    }

    /// The usage-only chunk (`choices: []`).
    pub fn emit_usage(&mut self, out: &mut BytesMut, t: &Tokens) {
        let mut u = Vec::with_capacity(192);
        openai_usage_json(&mut u, t);
        let prefix_len = self.prefix().len();
        out.reserve(prefix_len + u.len() + 16);
        out.put_slice(&self.prefix);
        out.put_slice(b"],\"usage\":");
        out.put_slice(&u);
        out.put_slice(b"}\n\n");
    }

    /// An OpenAI-style error event; `provider_error` is the provider's own error object.
    pub fn emit_error(
        &mut self,
        out: &mut BytesMut,
        message: &str,
        provider_error: Option<&serde_json::Value>,
    ) {
        self.errored = true;
        let mut e = Vec::with_capacity(128 + message.len());
        e.extend_from_slice(b"data: {\"error\":{\"code\":\"upstream_error\",\"message\":");
        write_str(&mut e, message);
        e.extend_from_slice(b",\"type\":\"api_error\"");
        if let Some(p) = provider_error {
            e.extend_from_slice(b",\"provider_error\":");
            let _ = serde_json::to_writer(&mut e, p);
        }
        e.extend_from_slice(b"}}\n\n");
        out.put_slice(&e);
    }

    /// `data: [DONE]`.
    pub fn emit_done(&mut self, out: &mut BytesMut) {
        if !self.closed {
            self.closed = true;
            out.put_slice(b"data: [DONE]\n\n");
        }
    }

    /// Writes `data` as one SSE event (one `data:` line per line of `data`).
    pub fn emit_raw(out: &mut BytesMut, data: &[u8]) {
        out.reserve(data.len() + 8);
        for line in data.split(|b| *b == b'\n') {
            out.put_slice(b"data: ");
            out.put_slice(line);
            out.put_u8(b'\n');
        }
        out.put_u8(b'\n');
    }
}
