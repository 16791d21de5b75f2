//! The response tap: reads usage from the provider's answer as it passes through.
//!
//! Streams are observed event by event with the incremental [`SseParser`]; chunks pass through
//! untouched (zero-copy) unless the usage-only chunk that the gateway asked for must be removed,
//! in which case whole events are re-emitted and the one usage chunk dropped. Unary JSON bodies
//! are kept (bounded) and parsed once at the end.

use crate::sse::{parse_event, SseParser};
use crate::types::Tokens;
use aho_corasick::AhoCorasick;
use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use once_cell::sync::Lazy;

/// Substring searchers built once (building one per event would dominate the per-event cost).
static USAGE: Lazy<Finder<'static>> = Lazy::new(|| Finder::new(b"\"usage\""));
/// Keys whose non-empty string value is generated content: one automaton a wire format, so
/// that an event is scanned once whatever the number of keys.
static OPENAI_CONTENT: Lazy<AhoCorasick> = Lazy::new(|| {
    keys(&[
        "\"content\":",
        "\"arguments\":",
        "\"text\":",
        "\"reasoning_content\":",
    ])
});
static RESPONSES_CONTENT: Lazy<AhoCorasick> = Lazy::new(|| keys(&["\"delta\":"]));
static ANTHROPIC_CONTENT: Lazy<AhoCorasick> =
    Lazy::new(|| keys(&["\"text\":", "\"partial_json\":", "\"thinking\":"]));
static GEMINI_CONTENT: Lazy<AhoCorasick> = Lazy::new(|| keys(&["\"text\":"]));

/// Every key begins with `"` and ends with `":`, so no match can start inside another one:
/// the non-overlapping matches are all the places any of the keys occurs.
fn keys(patterns: &[&str]) -> AhoCorasick {
    AhoCorasick::new(patterns).expect("valid key patterns")
}
static FUNCTION_CALL: Lazy<Finder<'static>> = Lazy::new(|| Finder::new(b"\"functionCall\""));
static RESPONSES_EVENT: Lazy<Finder<'static>> = Lazy::new(|| Finder::new(b"\"type\":\"response."));
static COMPLETED: Lazy<Finder<'static>> =
    Lazy::new(|| Finder::new(b"\"type\":\"response.completed\""));
static USAGE_NULL: Lazy<Finder<'static>> = Lazy::new(|| Finder::new(b"\"usage\":null"));
static NO_CHOICES: Lazy<Finder<'static>> = Lazy::new(|| Finder::new(b"\"choices\":[]"));

/// Unary bodies larger than this are not kept; usage is then read from the kept tail.
const UNARY_KEEP: usize = 1024 * 1024;
/// Bytes of tail kept once a unary body overflows [`UNARY_KEEP`].
const UNARY_TAIL: usize = 64 * 1024;

/// How the response is observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TapMode {
    /// Not observed (errors, non-JSON answers).
    #[default]
    Off,
    /// A JSON body, parsed at the end.
    Unary,
    /// An SSE stream; with `strip_usage_chunk`, the usage-only chunk is removed.
    Sse { strip_usage_chunk: bool },
}

/// Whose wire format the response is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireFormat {
    #[default]
    OpenAi,
    Anthropic,
    Gemini,
}

/// Usage read from a response.
#[derive(Debug, Default)]
pub struct ResponseTap {
    pub mode: TapMode,
    pub format: WireFormat,
    parser: SseParser,
    /// Usage reported by the provider, if any.
    pub tokens: Option<Tokens>,
    /// Events that carried generated content (non-empty text, tool-call arguments or
    /// reasoning): the output estimate, one token an event, when no final usage arrived.
    pub content_events: u64,
    /// The stream reached its normal end (`[DONE]`, `response.completed`, `message_stop`,
    /// Gemini's `finishReason`).
    pub done: bool,
    /// `tokens` is the provider's final count (OpenAI's usage chunk, `response.completed`,
    /// Anthropic's `message_delta`, Gemini's last chunk, a unary body). Anthropic's
    /// `message_start` placeholder and Gemini's running counts are not final.
    pub final_usage: bool,
    /// A unary answer with a 2xx status whose body is not valid JSON (or is empty).
    pub invalid_body: bool,
    /// A provider error event arrived inside the stream.
    pub error_event: bool,
    /// Provider response id (`id` of the first chunk / response).
    pub response_id: Option<String>,
    unary: Vec<u8>,
    unary_overflow: bool,
    /// Bytes written towards the client.
    pub bytes_out: u64,
    /// Items in a unary answer's `data` array (generated images, embeddings).
    pub data_items: u64,
}

impl ResponseTap {
    /// A tap in `mode` for OpenAI-format responses.
    pub fn new(mode: TapMode) -> Self {
        Self::with_format(mode, WireFormat::OpenAi)
    }

    /// A tap in `mode` for responses in `format`.
    pub fn with_format(mode: TapMode, format: WireFormat) -> Self {
        ResponseTap {
            mode,
            format,
            parser: SseParser::new(),
            ..Default::default()
        }
    }

    /// Observes (and in strip mode, rewrites) one response chunk.
    pub fn on_chunk(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) {
        match self.mode {
            TapMode::Off => {}
            TapMode::Unary => {
                if let Some(b) = body.as_ref() {
                    self.keep_unary(b);
                }
                if end_of_stream {
                    self.finish_unary();
                }
            }
            TapMode::Sse { strip_usage_chunk } => {
                if strip_usage_chunk {
                    let mut out = BytesMut::new();
                    if let Some(b) = body.as_ref() {
                        let mut parser = std::mem::take(&mut self.parser);
                        parser.feed(b, |ev| {
                            if !self.on_event(ev) {
                                out.extend_from_slice(ev);
                            }
                        });
                        self.parser = parser;
                    }
                    if end_of_stream && !self.parser.pending().is_empty() {
                        // The stream was cut mid-event: pass the fragment on unchanged.
                        out.extend_from_slice(self.parser.pending());
                        self.parser = SseParser::new();
                    }
                    if body.is_some() || !out.is_empty() {
                        *body = Some(out.freeze());
                    }
                } else if let Some(b) = body.as_ref() {
                    let mut parser = std::mem::take(&mut self.parser);
                    parser.feed(b, |ev| {
                        self.on_event(ev);
                    });
                    self.parser = parser;
                }
            }
        }
        if let Some(b) = body.as_ref() {
            self.bytes_out += b.len() as u64;
        }
    }

    /// Handles one complete SSE event; returns true when the event is the usage-only chunk.
    fn on_event(&mut self, raw: &[u8]) -> bool {
        match self.format {
            WireFormat::OpenAi => self.on_openai_event(raw),
            WireFormat::Anthropic => {
                self.on_anthropic_event(raw);
                false
            }
            WireFormat::Gemini => {
                self.on_gemini_event(raw);
                false
            }
        }
    }

    /// Anthropic: `message_start` carries input (and cache) usage, `message_delta` the
    /// cumulative output; `message_stop` ends the stream.
    fn on_anthropic_event(&mut self, raw: &[u8]) {
        let ev = parse_event(raw);
        match ev.event {
            Some("content_block_delta") if has_content(&ev.data, &ANTHROPIC_CONTENT) => {
                self.content_events += 1;
            }
            Some("message_stop") => self.done = true,
            Some("error") => self.error_event = true,
            Some("message_start") | Some("message_delta") => {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&ev.data) else {
                    return;
                };
                if let Some(m) = v.get("message") {
                    self.response_id = m.get("id").and_then(|i| i.as_str()).map(str::to_string);
                    self.tokens = m.get("usage").and_then(Tokens::from_anthropic_usage);
                } else if let Some(u) = v.get("usage") {
                    let mut t = self.tokens.unwrap_or_default();
                    if let Some(out) = u.get("output_tokens").and_then(|x| x.as_u64()) {
                        t.output = out;
                    }
                    // Newer API versions repeat the input counts in message_delta.
                    if let Some(full) = Tokens::from_anthropic_usage(u) {
                        if full.input > 0 {
                            t.input = full.input;
                            t.cached_input = full.cached_input;
                        }
                    }
                    t.total = t.input + t.output;
                    self.tokens = Some(t);
                    self.final_usage = true;
                }
            }
            _ => {}
        }
    }

    /// Gemini: every chunk repeats the cumulative `usageMetadata`; the last one wins.
    fn on_gemini_event(&mut self, raw: &[u8]) {
        let ev = parse_event(raw);
        let data: &[u8] = &ev.data;
        if data.starts_with(b"{\"error\"") {
            self.error_event = true;
            return;
        }
        if has_content(data, &GEMINI_CONTENT) || FUNCTION_CALL.find(data).is_some() {
            self.content_events += 1;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
            return;
        };
        self.take_gemini(&v);
    }

    fn take_gemini(&mut self, v: &serde_json::Value) {
        if let Some(t) = v.get("usageMetadata").and_then(Tokens::from_gemini_usage) {
            self.tokens = Some(t);
        }
        if self.response_id.is_none() {
            self.response_id = v
                .get("responseId")
                .and_then(|i| i.as_str())
                .map(str::to_string);
        }
        let finished = v
            .get("candidates")
            .and_then(|c| c.as_array())
            .is_some_and(|c| c.iter().any(|x| x.get("finishReason").is_some()));
        if finished {
            self.done = true;
            self.final_usage = self.tokens.is_some();
        }
    }

    fn on_openai_event(&mut self, raw: &[u8]) -> bool {
        let ev = parse_event(raw);
        let data: &[u8] = &ev.data;
        if data == b"[DONE]" {
            self.done = true;
            return false;
        }
        if matches!(ev.event, Some("error")) || data.starts_with(b"{\"error\"") {
            self.error_event = true;
        }
        let has_usage = USAGE.find(data).is_some();
        // Responses API events repeat the whole text in their `*.done` events: only deltas
        // count there. Chat and legacy completions chunks count when they carry text.
        let is_content = if RESPONSES_EVENT.find(data).is_some() {
            has_content(data, &RESPONSES_CONTENT)
        } else {
            has_content(data, &OPENAI_CONTENT)
        };
        if is_content {
            self.content_events += 1;
        }
        let completed = matches!(ev.event, Some("response.completed"))
            || (ev.event.is_none() && COMPLETED.find(data).is_some());
        if !(has_usage || completed || self.response_id.is_none()) {
            return false;
        }
        // Cheap gate: a chat chunk with `"usage":null` carries nothing to read.
        if !completed
            && self.response_id.is_some()
            && USAGE_NULL.find(data).is_some()
            && NO_CHOICES.find(data).is_none()
        {
            return false;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
            return false;
        };
        if self.response_id.is_none() {
            let id = v
                .get("id")
                .or_else(|| v.get("response").and_then(|r| r.get("id")));
            self.response_id = id.and_then(|i| i.as_str()).map(str::to_string);
        }
        if completed {
            self.done = true;
            if let Some(t) = v
                .get("response")
                .and_then(|r| r.get("usage"))
                .and_then(Tokens::from_openai_usage)
            {
                self.tokens = Some(t);
                self.final_usage = true;
            }
            return false;
        }
        if let Some(t) = v.get("usage").and_then(Tokens::from_openai_usage) {
            self.tokens = Some(t);
            self.final_usage = true;
            return v
                .get("choices")
                .and_then(|c| c.as_array())
                .is_some_and(|c| c.is_empty());
        }
        false
    }

    fn keep_unary(&mut self, b: &[u8]) {
        if self.unary_overflow {
            self.unary.extend_from_slice(b);
            if self.unary.len() > 2 * UNARY_TAIL {
                let cut = self.unary.len() - UNARY_TAIL;
                self.unary.drain(..cut);
            }
        } else if self.unary.len() + b.len() > UNARY_KEEP {
            self.unary_overflow = true;
            self.keep_unary(b);
        } else {
            self.unary.extend_from_slice(b);
        }
    }

    fn finish_unary(&mut self) {
        if self.unary.is_empty() {
            self.invalid_body = true;
            return;
        }
        if !self.unary_overflow {
            match self.format {
                WireFormat::OpenAi | WireFormat::Anthropic => {
                    /// Only what the tap needs; every other field is skipped without building a
                    /// tree.
                    #[derive(serde::Deserialize)]
                    struct Unary {
                        id: Option<String>,
                        usage: Option<UsageCounts>,
                        data: Option<Vec<serde::de::IgnoredAny>>,
                    }
                    if let Ok(v) = serde_json::from_slice::<Unary>(&self.unary) {
                        self.tokens = v.usage.as_ref().and_then(|u| {
                            if self.format == WireFormat::Anthropic {
                                u.anthropic()
                            } else {
                                u.openai()
                            }
                        });
                        self.response_id = v.id;
                        self.data_items = v.data.map(|d| d.len() as u64).unwrap_or(0);
                        self.done = true;
                        self.final_usage = self.tokens.is_some();
                    } else {
                        self.invalid_body = true;
                    }
                }
                WireFormat::Gemini => {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&self.unary) {
                        // streamGenerateContent without alt=sse answers a JSON array.
                        match v.as_array() {
                            Some(chunks) => chunks.iter().for_each(|c| self.take_gemini(c)),
                            None => self.take_gemini(&v),
                        }
                        self.done = true;
                        self.final_usage = self.tokens.is_some();
                    } else {
                        self.invalid_body = true;
                    }
                }
            }
        } else if let Some(pos) = memchr::memmem::rfind(&self.unary, b"\"usage\"") {
            // Large body (e.g. many embeddings): read the usage object from the tail.
            let rest = &self.unary[pos + 7..];
            let rest = rest
                .iter()
                .position(|c| *c == b':')
                .map(|p| &rest[p + 1..])
                .unwrap_or(rest);
            let mut it =
                serde_json::Deserializer::from_slice(rest).into_iter::<serde_json::Value>();
            if let Some(Ok(v)) = it.next() {
                self.tokens = Tokens::from_openai_usage(&v);
                self.done = true;
                self.final_usage = self.tokens.is_some();
            }
        }
        self.unary = Vec::new();
    }
}

/// The counts of a unary answer's `usage` object, read as the parser passes them (no JSON
/// tree): exactly what [`Tokens::from_openai_usage`] and [`Tokens::from_anthropic_usage`] read
/// from the object, with their leniency — a count that is not a non-negative integer is
/// absent, a details value that is not an object has no counts, the last of repeated keys
/// wins, and a `usage` that is not an object gives no tokens.
#[derive(Debug, Default, PartialEq)]
struct UsageCounts {
    object: bool,
    prompt_tokens: Option<u64>,
    input_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    prompt_tokens_details: Details,
    input_tokens_details: Details,
    completion_tokens_details: Details,
    output_tokens_details: Details,
}

/// `*_tokens_details`: the cached and reasoning counts.
#[derive(Debug, Default, PartialEq, Clone, Copy)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

impl UsageCounts {
    /// As [`Tokens::from_openai_usage`].
    fn openai(&self) -> Option<Tokens> {
        if !self.object {
            return None;
        }
        let input = self.prompt_tokens.or(self.input_tokens)?;
        let output = self.completion_tokens.or(self.output_tokens).unwrap_or(0);
        let cached_input = (self.prompt_tokens_details.cached_tokens)
            .or(self.input_tokens_details.cached_tokens)
            .unwrap_or(0);
        let reasoning = (self.completion_tokens_details.reasoning_tokens)
            .or(self.output_tokens_details.reasoning_tokens)
            .unwrap_or(0);
        Some(Tokens::openai(
            input,
            output,
            cached_input,
            reasoning,
            self.total_tokens,
        ))
    }

    /// As [`Tokens::from_anthropic_usage`].
    fn anthropic(&self) -> Option<Tokens> {
        if !self.object {
            return None;
        }
        Some(Tokens::anthropic(
            self.input_tokens.unwrap_or(0),
            self.cache_creation_input_tokens.unwrap_or(0),
            self.cache_read_input_tokens.unwrap_or(0),
            self.output_tokens.unwrap_or(0),
        ))
    }
}

/// A value read as a count: `Some` for a non-negative integer, `None` for anything else
/// (which is skipped whole).
struct Count(Option<u64>);

impl<'de> serde::Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Count, E> {
                Ok(Count(Some(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Count, E> {
                Ok(Count(u64::try_from(v).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_unit<E>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_none<E>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Count, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Count, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Count(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The keys of a `usage` object the tap reads (others are skipped unread).
enum UsageKey {
    PromptTokens,
    InputTokens,
    CompletionTokens,
    OutputTokens,
    TotalTokens,
    CacheCreation,
    CacheRead,
    PromptDetails,
    InputDetails,
    CompletionDetails,
    OutputDetails,
    CachedTokens,
    ReasoningTokens,
    Other,
}

impl<'de> serde::Deserialize<'de> for UsageKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UsageKey, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = UsageKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, k: &str) -> Result<UsageKey, E> {
                Ok(match k {
                    "prompt_tokens" => UsageKey::PromptTokens,
                    "input_tokens" => UsageKey::InputTokens,
                    "completion_tokens" => UsageKey::CompletionTokens,
                    "output_tokens" => UsageKey::OutputTokens,
                    "total_tokens" => UsageKey::TotalTokens,
                    "cache_creation_input_tokens" => UsageKey::CacheCreation,
                    "cache_read_input_tokens" => UsageKey::CacheRead,
                    "prompt_tokens_details" => UsageKey::PromptDetails,
                    "input_tokens_details" => UsageKey::InputDetails,
                    "completion_tokens_details" => UsageKey::CompletionDetails,
                    "output_tokens_details" => UsageKey::OutputDetails,
                    "cached_tokens" => UsageKey::CachedTokens,
                    "reasoning_tokens" => UsageKey::ReasoningTokens,
                    _ => UsageKey::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> serde::Deserialize<'de> for Details {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Details, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Details;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Details, A::Error> {
                let mut out = Details::default();
                while let Some(k) = a.next_key::<UsageKey>()? {
                    match k {
                        UsageKey::CachedTokens => out.cached_tokens = a.next_value::<Count>()?.0,
                        UsageKey::ReasoningTokens => {
                            out.reasoning_tokens = a.next_value::<Count>()?.0
                        }
                        _ => {
                            a.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Details, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Details::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Details, E> {
                Ok(Details::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Details, E> {
                Ok(Details::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Details, E> {
                Ok(Details::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Details, E> {
                Ok(Details::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Details, E> {
                Ok(Details::default())
            }
            fn visit_unit<E>(self) -> Result<Details, E> {
                Ok(Details::default())
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> serde::Deserialize<'de> for UsageCounts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UsageCounts, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UsageCounts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<UsageCounts, A::Error> {
                let mut c = UsageCounts {
                    object: true,
                    ..Default::default()
                };
                while let Some(k) = a.next_key::<UsageKey>()? {
                    match k {
                        UsageKey::PromptTokens => c.prompt_tokens = a.next_value::<Count>()?.0,
                        UsageKey::InputTokens => c.input_tokens = a.next_value::<Count>()?.0,
                        UsageKey::CompletionTokens => {
                            c.completion_tokens = a.next_value::<Count>()?.0
                        }
                        UsageKey::OutputTokens => c.output_tokens = a.next_value::<Count>()?.0,
                        UsageKey::TotalTokens => c.total_tokens = a.next_value::<Count>()?.0,
                        UsageKey::CacheCreation => {
                            c.cache_creation_input_tokens = a.next_value::<Count>()?.0
                        }
                        UsageKey::CacheRead => {
                            c.cache_read_input_tokens = a.next_value::<Count>()?.0
                        }
                        UsageKey::PromptDetails => c.prompt_tokens_details = a.next_value()?,
                        UsageKey::InputDetails => c.input_tokens_details = a.next_value()?,
                        UsageKey::CompletionDetails => {
                            c.completion_tokens_details = a.next_value()?
                        }
                        UsageKey::OutputDetails => c.output_tokens_details = a.next_value()?,
                        _ => {
                            a.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(c)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<UsageCounts, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(UsageCounts::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<UsageCounts, E> {
                Ok(UsageCounts::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<UsageCounts, E> {
                Ok(UsageCounts::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<UsageCounts, E> {
                Ok(UsageCounts::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<UsageCounts, E> {
                Ok(UsageCounts::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<UsageCounts, E> {
                Ok(UsageCounts::default())
            }
            fn visit_unit<E>(self) -> Result<UsageCounts, E> {
                Ok(UsageCounts::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether `data` has one of `keys` (each `"key":`) with a non-empty string value.
fn has_content(data: &[u8], keys: &AhoCorasick) -> bool {
    keys.find_iter(data).any(|m| {
        let mut i = m.end();
        while data.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        data.get(i) == Some(&b'"') && data.get(i + 1).is_some_and(|c| *c != b'"')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
        "data: [DONE]\n\n"
    );

    fn run(mode: TapMode, chunks: &[&[u8]]) -> (ResponseTap, Vec<u8>) {
        let mut tap = ResponseTap::new(mode);
        let mut out = Vec::new();
        for c in chunks {
            let mut b = Some(Bytes::copy_from_slice(c));
            tap.on_chunk(&mut b, false);
            out.extend_from_slice(b.as_deref().unwrap_or_default());
        }
        let mut b = None;
        tap.on_chunk(&mut b, true);
        out.extend_from_slice(b.as_deref().unwrap_or_default());
        (tap, out)
    }

    #[test]
    fn passthrough_reads_usage_and_keeps_bytes() {
        let (tap, out) = run(
            TapMode::Sse {
                strip_usage_chunk: false,
            },
            &[STREAM.as_bytes()],
        );
        assert_eq!(out, STREAM.as_bytes());
        let t = tap.tokens.expect("usage");
        assert_eq!((t.input, t.output), (9, 2));
        assert!(tap.done);
        assert_eq!(tap.response_id.as_deref(), Some("c1"));
    }

    #[test]
    fn strip_removes_only_the_usage_chunk_at_any_split() {
        let s = STREAM.as_bytes();
        for cut in 0..s.len() {
            let (tap, out) = run(
                TapMode::Sse {
                    strip_usage_chunk: true,
                },
                &[&s[..cut], &s[cut..]],
            );
            let out = String::from_utf8(out).expect("utf8");
            assert!(!out.contains("prompt_tokens"), "cut {cut}");
            assert!(out.ends_with("data: [DONE]\n\n"), "cut {cut}");
            assert_eq!(out.matches("data: ").count(), 3, "cut {cut}");
            assert_eq!(tap.tokens.map(|t| t.total), Some(11), "cut {cut}");
        }
    }

    #[test]
    fn unary_usage() {
        let body = br#"{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let (tap, out) = run(TapMode::Unary, &[&body[..10], &body[10..]]);
        assert_eq!(out, body.to_vec());
        assert_eq!(tap.tokens.map(|t| t.total), Some(7));
    }

    #[test]
    fn large_unary_usage_from_tail() {
        let mut body = br#"{"object":"list","data":[{"embedding":["#.to_vec();
        for i in 0..400_000 {
            body.extend_from_slice(format!("{}.5,", i % 10).as_bytes());
        }
        body.extend_from_slice(br#"0.1]}],"usage":{"prompt_tokens":12,"total_tokens":12}}"#);
        let chunks: Vec<&[u8]> = body.chunks(16 * 1024).collect();
        let (tap, _) = run(TapMode::Unary, &chunks);
        assert_eq!(tap.tokens.map(|t| t.input), Some(12));
    }

    #[test]
    fn content_is_counted_only_where_text_was_generated() {
        let sse = TapMode::Sse {
            strip_usage_chunk: false,
        };
        // OpenAI chat cut after the role chunk and one token: one, not two.
        let cut = STREAM
            .split("\n\n")
            .take(2)
            .collect::<Vec<_>>()
            .join("\n\n")
            + "\n\n";
        let (tap, _) = run(sse, &[cut.as_bytes()]);
        assert_eq!(tap.content_events, 1);
        assert!(tap.tokens.is_none() && !tap.final_usage);
        // Legacy completions carry `text`, not `delta`.
        let c = "data: {\"object\":\"text_completion\",\"choices\":[{\"text\":\"Hi\",\"index\":0}]}\n\n\
                 data: {\"object\":\"text_completion\",\"choices\":[{\"text\":\"\",\"index\":0,\"finish_reason\":\"stop\"}]}\n\n";
        assert_eq!(run(sse, &[c.as_bytes()]).0.content_events, 1);
        // Anthropic: message_start's output is a placeholder, not a final count; an empty
        // partial_json is not content.
        let a = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}\n\n",
        );
        let mut tap = ResponseTap::with_format(sse, WireFormat::Anthropic);
        tap.on_chunk(&mut Some(Bytes::from_static(a.as_bytes())), false);
        assert_eq!(tap.content_events, 1);
        assert_eq!(tap.tokens.map(|t| t.input), Some(12));
        assert!(!tap.final_usage);
        let d = "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":1}}\n\n";
        tap.on_chunk(&mut Some(Bytes::from_static(d.as_bytes())), false);
        assert!(tap.final_usage);
    }

    #[test]
    fn unary_usage_counts_read_as_the_json_tree_reads_them() {
        let cases = [
            r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}"#,
            r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":2,"accepted_prediction_tokens":0}}"#,
            r#"{"input_tokens":7,"output_tokens":3,"total_tokens":10,"input_tokens_details":{"cached_tokens":99},"output_tokens_details":{"reasoning_tokens":9}}"#,
            r#"{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":20,"output_tokens":7,"service_tier":"standard"}"#,
            r#"{"prompt_tokens":-1,"input_tokens":3,"completion_tokens":2.5,"output_tokens":"4"}"#,
            r#"{"prompt_tokens":null,"completion_tokens":true,"total_tokens":[1,2],"prompt_tokens_details":[{"cached_tokens":1}]}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":8,"prompt_tokens_details":{"cached_tokens":3},"prompt_tokens_details":{"other":1}}"#,
            r#"{"prompt_\u0074okens":6,"completion_tokens":{"x":[1,{"y":2}]},"nested":{"prompt_tokens":100}}"#,
            r#"{"prompt_tokens":18446744073709551615,"completion_tokens":0}"#,
            r#"{"prompt_tokens":3,"prompt_tokens_details":5,"completion_tokens_details":"x","output_tokens_details":null}"#,
            r#"{"prompt_tokens":3,"completion_tokens":9,"completion_tokens_details":{"reasoning_tokens":50}}"#,
            r#"{}"#,
            r#"null"#,
            r#"[{"prompt_tokens":1}]"#,
            r#"12"#,
            r#""usage""#,
        ];
        for case in cases {
            let tree: serde_json::Value = serde_json::from_str(case).expect("json");
            let counts: UsageCounts = serde_json::from_str(case).expect("counts");
            assert_eq!(
                counts.openai(),
                Tokens::from_openai_usage(&tree),
                "openai: {case}"
            );
            assert_eq!(
                counts.anthropic(),
                Tokens::from_anthropic_usage(&tree),
                "anthropic: {case}"
            );
        }
        // In a whole answer, through the tap.
        let body = r#"{"id":"r1","choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":1}"}}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        let (tap, _) = run(TapMode::Unary, &[body.as_bytes()]);
        assert_eq!(tap.response_id.as_deref(), Some("r1"));
        let t = tap.tokens.expect("usage");
        assert_eq!((t.input, t.output, t.total, t.cached_input), (9, 2, 11, 4));
        assert!(tap.final_usage && !tap.invalid_body);
    }

    #[test]
    fn a_unary_body_that_is_not_json_is_flagged() {
        let (tap, out) = run(TapMode::Unary, &[b"{\"id\":\"x\",\"choi"]);
        assert_eq!(out, b"{\"id\":\"x\",\"choi".to_vec());
        assert!(tap.invalid_body && tap.tokens.is_none());
        assert!(!run(TapMode::Unary, &[b"{\"id\":\"x\"}"]).0.invalid_body);
    }

    #[test]
    fn responses_completed_event() {
        let s = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"a\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r1\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1,\"total_tokens\":6}}}\n\n";
        let (tap, _) = run(
            TapMode::Sse {
                strip_usage_chunk: false,
            },
            &[s.as_bytes()],
        );
        assert_eq!(tap.tokens.map(|t| t.total), Some(6));
        assert!(tap.done);
        assert_eq!(tap.content_events, 1);
    }
}
