//! Pieces shared by every API family of the mock: the reply model handed to
//! the connection, the `x-mock-*` knobs, deterministic text and vector
//! generation, and small JSON / SSE helpers.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use super::request::Request;
use super::MockConfig;

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

/// What the connection should do with a request.
#[derive(Debug)]
pub(crate) enum Action {
    /// Abort the connection with a TCP RST, without answering.
    Reset,
    /// Close the connection cleanly, without answering.
    Close,
    /// Never answer; wait until the peer goes away.
    Hang,
    Reply(Reply),
}

/// Which processing-time header the response head carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimingHeader {
    /// `openai-processing-ms: N`
    OpenAi,
    /// `server-timing: gfet4t7; dur=N`, as Google APIs send it.
    ServerTiming,
    /// No timing header.
    None,
}

/// A response to write.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    /// Headers besides the framing ones (content-length / transfer-encoding,
    /// connection) and the timing header, which the writer adds.
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
    /// Delay before the head (unary bodies only).
    pub latency: Duration,
    /// Delay before the first streamed event.
    pub ttft: Duration,
    /// Delay between streamed events.
    pub itl: Duration,
    pub truncation: Option<Truncation>,
    pub timing: TimingHeader,
}

#[derive(Debug)]
pub(crate) enum Body {
    /// A body sent whole with `Content-Length` (JSON, text or empty).
    Json(Vec<u8>),
    /// A body streamed piece by piece with chunked transfer-encoding (SSE,
    /// or Gemini's streamed JSON array).
    Sse(SseEvents),
}

/// A stream of events, produced one at a time so that long streams cost no
/// memory up front.
pub(crate) struct SseEvents {
    /// How many events the stream has.
    pub count: usize,
    /// Event `i` (`0..count`), complete with its framing.
    pub event: Box<dyn Fn(usize) -> String + Send + Sync>,
    /// What `x-mock-fault: error-event` sends in place of the rest of the
    /// stream (the family's mid-stream error); `None` closes instead.
    pub error: Option<String>,
}

impl std::fmt::Debug for SseEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseEvents")
            .field("count", &self.count)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Cut the answer short after some events (unary bodies: after half the
/// body).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Truncation {
    /// Close the connection (FIN) without the terminating chunk.
    Close { after: usize },
    /// Abort the connection with RST.
    Reset { after: usize },
    /// Stop sending but keep the connection open until the peer leaves.
    Stall { after: usize },
    /// Send the stream's error event, then end the body properly.
    ErrorEvent { after: usize },
    /// End the body properly (the terminating chunk; for unary bodies a `Content-Length`
    /// that matches the half sent), without the stream's normal end.
    End { after: usize },
}

impl Truncation {
    pub fn after_events(self) -> usize {
        match self {
            Truncation::Close { after }
            | Truncation::Reset { after }
            | Truncation::Stall { after }
            | Truncation::ErrorEvent { after }
            | Truncation::End { after } => after,
        }
    }
}

pub(crate) const JSON: &str = "application/json";
pub(crate) const EVENT_STREAM: &str = "text/event-stream";

pub(crate) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("mock payloads always serialize")
}

pub(crate) fn to_json_string<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("mock payloads always serialize")
}

/// A unary reply with `content-type: application/json`.
pub(crate) fn json_reply(status: u16, body: Vec<u8>) -> Reply {
    body_reply(status, Some(JSON), body)
}

/// A unary reply with the given content type (none for an empty body).
pub(crate) fn body_reply(status: u16, content_type: Option<&str>, body: Vec<u8>) -> Reply {
    Reply {
        status,
        headers: content_type
            .map(|ct| vec![("content-type", ct.to_owned())])
            .unwrap_or_default(),
        body: Body::Json(body),
        latency: Duration::ZERO,
        ttft: Duration::ZERO,
        itl: Duration::ZERO,
        truncation: None,
        timing: TimingHeader::OpenAi,
    }
}

/// A streamed reply with `content-type: text/event-stream`.
pub(crate) fn sse_reply(events: SseEvents) -> Reply {
    stream_reply(EVENT_STREAM, events)
}

/// A streamed reply with the given content type.
pub(crate) fn stream_reply(content_type: &str, events: SseEvents) -> Reply {
    Reply {
        status: 200,
        headers: vec![
            ("content-type", content_type.to_owned()),
            ("cache-control", "no-cache".to_owned()),
        ],
        body: Body::Sse(events),
        latency: Duration::ZERO,
        ttft: Duration::ZERO,
        itl: Duration::ZERO,
        truncation: None,
        timing: TimingHeader::OpenAi,
    }
}

/// `data: <json>\n\n`
pub(crate) fn sse_data<T: Serialize>(value: &T) -> String {
    let json = to_json_string(value);
    let mut out = String::with_capacity(json.len() + 8);
    out.push_str("data: ");
    out.push_str(&json);
    out.push_str("\n\n");
    out
}

/// `event: <name>\ndata: <json>\n\n`
pub(crate) fn sse_named<T: Serialize>(name: &str, value: &T) -> String {
    let json = to_json_string(value);
    let mut out = String::with_capacity(json.len() + name.len() + 16);
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(&json);
    out.push_str("\n\n");
    out
}

/// Inserts `"key": value` as the last member of a serialized JSON object.
pub(crate) fn append_field<T: Serialize>(body: &mut Vec<u8>, key: &str, value: &T) {
    if body.last() != Some(&b'}') {
        return;
    }
    body.pop();
    if body.last() != Some(&b'{') {
        body.push(b',');
    }
    body.extend_from_slice(&to_json(&key));
    body.push(b':');
    body.extend_from_slice(&to_json(value));
    body.push(b'}');
}

/// Serializes as `[]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EmptyArray;

impl Serialize for EmptyArray {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_seq(Some(0))?.end()
    }
}

// ---------------------------------------------------------------------------
// Knobs
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Reset,
    Close,
    Hang,
    DropMidStream,
    ResetMidStream,
    StallMidStream,
    ErrorEvent,
    /// End the body with valid framing but early: a stream without its terminator, a unary
    /// JSON body cut in half (and so not JSON) with a matching `Content-Length`.
    EndEarly,
}

/// Upper bound for completion tokens per answer.
pub(crate) const MAX_TOKENS: u32 = 1_000_000;

#[derive(Debug)]
pub(crate) struct Knobs {
    pub latency: Duration,
    pub ttft: Duration,
    pub itl: Duration,
    pub tokens: u32,
    pub status: Option<u16>,
    pub retry_after: Option<String>,
    pub fault: Option<Fault>,
    pub drop_after: usize,
    pub echo_headers: bool,
    /// `x-mock-echo-auth`: echo the request's credential (header and error body).
    pub echo_auth: bool,
    /// `x-mock-tool-call`: answer with a call to this tool.
    pub tool_call: Option<String>,
}

impl Knobs {
    /// Reads the knobs; `Err` carries the message of the 400 answer.
    pub fn parse(cfg: &MockConfig, req: &Request) -> Result<Knobs, String> {
        fn number<T: std::str::FromStr>(req: &Request, name: &str) -> Result<Option<T>, String> {
            match req.header(name) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    format!("Invalid value for header '{name}': expected a non-negative integer.")
                }),
            }
        }
        let ms = |name: &str, default: u64| -> Result<Duration, String> {
            Ok(Duration::from_millis(number(req, name)?.unwrap_or(default)))
        };
        let fault = match req.header("x-mock-fault").map(str::trim) {
            None | Some("") | Some("none") => None,
            Some(v) => Some(match v.to_ascii_lowercase().as_str() {
                "reset" => Fault::Reset,
                "close" => Fault::Close,
                "hang" => Fault::Hang,
                "drop-mid-stream" => Fault::DropMidStream,
                "reset-mid-stream" => Fault::ResetMidStream,
                "stall-mid-stream" => Fault::StallMidStream,
                "error-event" => Fault::ErrorEvent,
                "end-early" => Fault::EndEarly,
                _ => {
                    return Err(format!(
                        "Invalid value for header 'x-mock-fault': '{v}'. Expected one of \
                         reset, close, hang, drop-mid-stream, reset-mid-stream, \
                         stall-mid-stream, error-event, end-early."
                    ))
                }
            }),
        };
        let status = match number::<u16>(req, "x-mock-status")? {
            None => None,
            Some(s) if (400..=599).contains(&s) => Some(s),
            Some(s) if (200..=299).contains(&s) => None,
            Some(_) => {
                return Err(
                    "Invalid value for header 'x-mock-status': expected a status \
                            between 400 and 599."
                        .to_owned(),
                )
            }
        };
        Ok(Knobs {
            latency: ms("x-mock-latency-ms", cfg.latency_ms)?,
            ttft: ms("x-mock-ttft-ms", cfg.ttft_ms)?,
            itl: ms("x-mock-itl-ms", cfg.itl_ms)?,
            tokens: match number::<u32>(req, "x-mock-tokens")? {
                Some(n) if n > MAX_TOKENS => {
                    return Err(format!(
                        "Invalid value for header 'x-mock-tokens': at most {MAX_TOKENS}."
                    ))
                }
                Some(n) => n,
                None => cfg.tokens.min(MAX_TOKENS),
            },
            status,
            retry_after: req.header("x-mock-retry-after").map(str::to_owned),
            fault,
            drop_after: number(req, "x-mock-drop-after")?.unwrap_or(3),
            echo_headers: req
                .header("x-mock-echo-headers")
                .is_some_and(|v| matches!(v, "1" | "true" | "yes" | "on")),
            echo_auth: req
                .header("x-mock-echo-auth")
                .is_some_and(|v| matches!(v, "1" | "true" | "yes" | "on")),
            tool_call: req
                .header("x-mock-tool-call")
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
        })
    }
}

/// `x-mock-fault-once: TOKEN` applies the fault only to the first request carrying TOKEN, so a
/// retry of the same request succeeds.
pub(crate) fn first_sighting(token: &str) -> bool {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    match seen.lock() {
        Ok(mut g) => g.insert(token.to_owned()),
        Err(_) => true,
    }
}

// ---------------------------------------------------------------------------
// Ids, time, request helpers
// ---------------------------------------------------------------------------

pub(crate) fn random_hex(len: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(len + 32);
    while out.len() < len {
        let _ = write!(out, "{:032x}", rand::random::<u128>());
    }
    out.truncate(len);
    out
}

/// Random letters and digits, as in Anthropic's and Google's ids.
pub(crate) fn random_alnum(len: usize) -> String {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(ALPHABET[rand::random::<usize>() % ALPHABET.len()]))
        .collect()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn flag(obj: &Map<String, Value>, name: &str) -> bool {
    obj.get(name).and_then(Value::as_bool).unwrap_or(false)
}

/// The body as a JSON object, or `None` when it is not one.
pub(crate) fn json_object(req: &Request) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// Rough token estimate: a quarter of the characters, rounded up.
pub(crate) fn text_tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

/// Characters of text in a message `content` (a string or content parts).
pub(crate) fn content_chars(content: &Value) -> usize {
    match content {
        Value::String(s) => s.chars().count(),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part {
                Value::String(s) => s.chars().count(),
                Value::Object(o) => o
                    .get("text")
                    .and_then(Value::as_str)
                    .map_or(0, |s| s.chars().count()),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Length of `value` serialized as JSON.
pub(crate) fn json_len(value: &Value) -> usize {
    to_json(value).len()
}

/// Reads a percent-encoded query parameter from the request target.
pub(crate) fn query_param(req: &Request, name: &str) -> Option<String> {
    let query = req.query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(bytes[i + 1]) * 16 + hex(bytes[i + 2]));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// Completion text
// ---------------------------------------------------------------------------

/// The completion text, one word per token, repeated as needed.
pub(crate) const WORDS: &[&str] = &[
    "Hello",
    "from",
    "the",
    "mock",
    "provider.",
    "This",
    "is",
    "a",
    "deterministic",
    "answer",
    "streamed",
    "one",
    "word",
    "per",
    "token",
    "so",
    "that",
    "gateways,",
    "benchmarks",
    "and",
    "demos",
    "see",
    "realistic",
    "traffic.",
];

/// How many completion tokens to produce and whether the cap cut them.
pub(crate) fn completion_plan(tokens: u32, cap: Option<u64>) -> (u64, bool) {
    let tokens = u64::from(tokens);
    match cap {
        Some(cap) if cap < tokens => (cap, true),
        _ => (tokens, false),
    }
}

/// The text of completion token `i` out of `n`: a word, followed by a space
/// unless it is the last one.
pub(crate) fn token_text(i: u64, n: u64) -> String {
    let word = WORDS[(i % WORDS.len() as u64) as usize];
    if i + 1 < n {
        let mut s = String::with_capacity(word.len() + 1);
        s.push_str(word);
        s.push(' ');
        s
    } else {
        word.to_owned()
    }
}

pub(crate) fn completion_text(n: u64) -> String {
    (0..n).map(|i| token_text(i, n)).collect()
}

/// Why generated output ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The answer is complete.
    End,
    /// The output token cap cut it.
    MaxTokens,
    /// A requested stop sequence was produced (and left out of the text).
    Sequence(String),
}

/// The output of one answer, produced one token at a time so that long
/// answers cost no memory up front.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    kind: ScriptKind,
    len: u64,
}

#[derive(Debug, Clone)]
enum ScriptKind {
    /// The mock's words; `total` is the uncut length (it decides where the
    /// trailing space goes) and `last` replaces the final token when a stop
    /// sequence cut into it.
    Words { total: u64, last: Option<String> },
    /// Fixed pieces, e.g. a JSON document.
    Pieces(Vec<String>),
}

/// Characters per piece when fixed text is streamed.
const PIECE_CHARS: usize = 4;

impl Script {
    /// `tokens` mock words, capped by `cap` and cut before the first of
    /// `stops` that occurs.
    pub fn words(tokens: u32, cap: Option<u64>, stops: &[String]) -> (Script, Stop) {
        let (n, capped) = completion_plan(tokens, cap);
        let script = Script {
            kind: ScriptKind::Words {
                total: n,
                last: None,
            },
            len: n,
        };
        let stop = if capped { Stop::MaxTokens } else { Stop::End };
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        if n == 0 || longest == 0 {
            return (script, stop);
        }
        // The text repeats every WORDS.len() tokens, so the first match (if
        // any) starts in the first cycle and ends within `longest` more bytes.
        let window = n.min(WORDS.len() as u64 + longest as u64 + 1);
        let prefix: String = (0..window).map(|i| token_text(i, n)).collect();
        let found = stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| prefix.find(s.as_str()).map(|pos| (pos, s)))
            .min_by_key(|(pos, _)| *pos);
        let Some((pos, sequence)) = found else {
            return (script, stop);
        };
        let mut start = 0;
        let mut kept = 0;
        let mut last = String::new();
        for i in 0..window {
            if start >= pos {
                break;
            }
            let text = token_text(i, n);
            let end = start + text.len();
            // The words are ASCII, so any byte offset is a char boundary.
            last = text[..pos.min(end) - start].to_owned();
            kept = i + 1;
            start = end;
        }
        let script = Script {
            kind: ScriptKind::Words {
                total: n,
                last: Some(last),
            },
            len: kept,
        };
        (script, Stop::Sequence(sequence.clone()))
    }

    /// `text` in pieces of a few characters, capped at `cap` pieces.
    pub fn pieces(text: &str, cap: Option<u64>) -> (Script, Stop) {
        let chars: Vec<char> = text.chars().collect();
        let mut pieces: Vec<String> = chars
            .chunks(PIECE_CHARS)
            .map(|c| c.iter().collect())
            .collect();
        let mut stop = Stop::End;
        if let Some(cap) = cap {
            if (cap as usize) < pieces.len() {
                pieces.truncate(cap as usize);
                stop = Stop::MaxTokens;
            }
        }
        let len = pieces.len() as u64;
        (
            Script {
                kind: ScriptKind::Pieces(pieces),
                len,
            },
            stop,
        )
    }

    /// Number of tokens.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Token `i` (`0..len`).
    pub fn token(&self, i: u64) -> Cow<'_, str> {
        match &self.kind {
            ScriptKind::Words { total, last } => match last {
                Some(last) if i + 1 == self.len => Cow::Borrowed(last.as_str()),
                _ => Cow::Owned(token_text(i, *total)),
            },
            ScriptKind::Pieces(pieces) => pieces
                .get(i as usize)
                .map_or(Cow::Borrowed(""), |p| Cow::Borrowed(p.as_str())),
        }
    }

    /// The whole text.
    pub fn text(&self) -> String {
        (0..self.len).map(|i| self.token(i)).collect()
    }
}

/// Stop sequences from a string-or-array field.
pub(crate) fn stop_sequences(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

/// A tool the client declared.
#[derive(Debug, Clone)]
pub(crate) struct ToolDecl {
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments.
    pub schema: Option<Value>,
}

/// How the client lets the model pick tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToolMode {
    Auto,
    /// Some tool must be called.
    Any,
    /// Tools must not be called.
    None,
    /// This tool must be called.
    Named(String),
}

/// The call the mock makes, if any: when `x-mock-tool-call` names a tool
/// (declared or not), when the client forces a call, or when the prompt
/// mentions "weather" and tools are declared.
pub(crate) fn pick_tool(
    tools: &[ToolDecl],
    mode: &ToolMode,
    forced: Option<&str>,
    prompt: &str,
) -> Option<ToolDecl> {
    let by_name = |name: &str| tools.iter().find(|t| t.name == name).cloned();
    if let Some(name) = forced {
        return Some(by_name(name).unwrap_or_else(|| ToolDecl {
            name: name.to_owned(),
            description: String::new(),
            schema: None,
        }));
    }
    if tools.is_empty() || *mode == ToolMode::None {
        return None;
    }
    let weather = || {
        tools
            .iter()
            .find(|t| {
                t.name.to_ascii_lowercase().contains("weather")
                    || t.description.to_ascii_lowercase().contains("weather")
            })
            .or_else(|| tools.first())
            .cloned()
    };
    match mode {
        ToolMode::Named(name) => by_name(name).or_else(weather),
        ToolMode::Any => weather(),
        _ if prompt.to_ascii_lowercase().contains("weather") => weather(),
        _ => None,
    }
}

/// Plausible arguments for a JSON schema (OpenAPI-style upper-case type
/// names, as Gemini uses, work too).
pub(crate) fn sample_value(schema: Option<&Value>, key: &str) -> Value {
    sample_at(schema, key, 0)
}

fn sample_at(schema: Option<&Value>, key: &str, depth: usize) -> Value {
    let Some(Value::Object(schema)) = schema else {
        return if depth == 0 {
            Value::Object(Map::new())
        } else {
            sample_string(key)
        };
    };
    if depth > 8 {
        return Value::Null;
    }
    if let Some(v) = schema.get("const").or_else(|| schema.get("default")) {
        return v.clone();
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for alt in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema
            .get(alt)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return sample_at(Some(first), key, depth + 1);
        }
    }
    let kind = match schema.get("type") {
        Some(Value::String(t)) => t.to_ascii_lowercase(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null")
            .to_ascii_lowercase(),
        _ if schema.contains_key("properties") => "object".to_owned(),
        _ => "string".to_owned(),
    };
    match kind.as_str() {
        "object" => {
            let mut out = Map::new();
            let Some(Value::Object(props)) = schema.get("properties") else {
                return Value::Object(out);
            };
            let required: Option<Vec<&str>> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect());
            for (name, prop) in props {
                if required.as_ref().is_none_or(|r| r.contains(&name.as_str())) {
                    out.insert(name.clone(), sample_at(Some(prop), name, depth + 1));
                }
            }
            Value::Object(out)
        }
        "array" => Value::Array(vec![sample_at(schema.get("items"), key, depth + 1)]),
        "integer" => Value::from(1),
        "number" => Value::from(1.5),
        "boolean" => Value::Bool(true),
        "null" => Value::Null,
        _ => sample_string(key),
    }
}

fn sample_string(key: &str) -> Value {
    let key = key.to_ascii_lowercase();
    let text = if ["location", "city", "place", "address"]
        .iter()
        .any(|k| key.contains(k))
    {
        "San Francisco, CA"
    } else if key.contains("unit") {
        "celsius"
    } else if key.contains("date") {
        "2025-01-01"
    } else {
        "mock"
    };
    Value::String(text.to_owned())
}

// ---------------------------------------------------------------------------
// Vectors and hashing
// ---------------------------------------------------------------------------

/// FNV-1a, continuing from `seed` (0 starts a fresh hash).
pub(crate) fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = if seed == 0 {
        0xcbf2_9ce4_8422_2325
    } else {
        seed
    };
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A deterministic number in `[0, 1)` derived from `seed`.
pub(crate) fn unit_fraction(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// A deterministic unit vector derived from `seed`.
pub(crate) fn embedding_vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut state = seed;
    let mut values: Vec<f32> = (0..dim)
        .map(|_| {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            // 24 random bits mapped onto [-1, 1).
            (z >> 40) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for v in &mut values {
            *v /= norm;
        }
    }
    values
}

/// Standard base64 with padding.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_reference() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding_vector(fnv1a(0, b"hello"), 32);
        let b = embedding_vector(fnv1a(0, b"hello"), 32);
        let c = embedding_vector(fnv1a(0, b"world"), 32);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        assert!(a.iter().all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn completion_text_concatenates_tokens() {
        assert_eq!(completion_text(0), "");
        assert_eq!(completion_text(1), "Hello");
        assert_eq!(completion_text(3), "Hello from the");
        let streamed: String = (0..40).map(|i| token_text(i, 40)).collect();
        assert_eq!(streamed, completion_text(40));
        assert_eq!(streamed.split(' ').count(), 40);
    }

    #[test]
    fn append_field_extends_objects() {
        let mut body = b"{\"a\":1}".to_vec();
        append_field(&mut body, "b", &["x"]);
        assert_eq!(body, b"{\"a\":1,\"b\":[\"x\"]}");
        let mut empty = b"{}".to_vec();
        append_field(&mut empty, "b", &2);
        assert_eq!(empty, b"{\"b\":2}");
    }

    #[test]
    fn scripts_honour_caps_and_stop_sequences() {
        let (s, stop) = Script::words(5, None, &[]);
        assert_eq!(
            (s.text().as_str(), stop),
            ("Hello from the mock provider.", Stop::End)
        );
        let (s, stop) = Script::words(5, Some(2), &[]);
        assert_eq!((s.text().as_str(), stop), ("Hello from", Stop::MaxTokens));
        let (s, stop) = Script::words(16, None, &["mock".to_owned(), "zzz".to_owned()]);
        assert_eq!(s.text(), "Hello from the ");
        assert_eq!(s.len(), 3);
        assert_eq!(stop, Stop::Sequence("mock".to_owned()));
        let (s, _) = Script::words(16, None, &["rom".to_owned()]);
        assert_eq!(s.text(), "Hello f");
        assert_eq!(s.len(), 2);
        assert_eq!(s.token(1), "f");
        let (s, stop) = Script::words(16, None, &["Hello".to_owned()]);
        assert_eq!((s.len(), stop), (0, Stop::Sequence("Hello".to_owned())));
        // A match far into a long answer is found in the first cycle.
        let (s, _) = Script::words(1000, None, &["traffic. Hello".to_owned()]);
        assert_eq!(s.len(), 23);
        assert!(s.text().ends_with("see realistic "));
        let (s, stop) = Script::pieces("{\"a\":\"bcdefgh\"}", Some(2));
        assert_eq!((s.text().as_str(), stop), ("{\"a\":\"bc", Stop::MaxTokens));
    }

    #[test]
    fn schema_samples() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["fahrenheit", "celsius"]},
                "days": {"type": "integer"},
                "extra": {"type": "boolean"}
            },
            "required": ["location", "unit", "days"]
        });
        assert_eq!(
            sample_value(Some(&schema), ""),
            serde_json::json!({"location": "San Francisco, CA", "unit": "fahrenheit", "days": 1})
        );
        let gemini =
            serde_json::json!({"type": "OBJECT", "properties": {"city": {"type": "STRING"}}});
        assert_eq!(
            sample_value(Some(&gemini), ""),
            serde_json::json!({"city": "San Francisco, CA"})
        );
        assert_eq!(sample_value(None, ""), serde_json::json!({}));
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(percent_decode("a%20b+c%2"), "a b c%2");
        assert_eq!(percent_decode("%41%4a"), "AJ");
    }
}
