//! The routes vLLM serves besides the OpenAI ones: legacy text completions,
//! audio transcription and translation (also OpenAI routes), tokenization,
//! pooling, classification, scoring, reranking, health and version.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::common::{
    body_reply, completion_text, embedding_vector, fnv1a, json_reply, random_hex, sse_data,
    sse_reply, stop_sequences, text_tokens, to_json, unit_fraction, unix_now, Knobs, Reply, Script,
    SseEvents, Stop, WORDS,
};
use super::openai::{
    embedding_inputs, file_sizes_header, form_field, optional_u64, parse_form, parse_object,
    ApiError,
};
use super::request::Request;
use super::MockConfig;

/// The context length `/tokenize` reports.
const MAX_MODEL_LEN: u64 = 32_768;
/// Assumed audio bitrate (16 kHz, 16-bit mono) to turn upload sizes into
/// durations.
const AUDIO_BYTES_PER_SECOND: usize = 32_000;
/// Default model name when a vLLM request leaves it out.
const SERVED_MODEL: &str = "mock-gpt";

/// `model`, which vLLM lets clients leave out.
fn model_of(obj: &Map<String, Value>) -> Result<String, ApiError> {
    match obj.get("model") {
        None | Some(Value::Null) => Ok(SERVED_MODEL.to_owned()),
        Some(Value::String(model)) => Ok(model.clone()),
        Some(other) => Err(ApiError::invalid_type("model", "a string", other)),
    }
}

#[derive(Serialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u64,
    total_tokens: u64,
    completion_tokens: u64,
    prompt_tokens_details: Option<()>,
}

impl Usage {
    fn prompt_only(prompt_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            total_tokens: prompt_tokens,
            completion_tokens: 0,
            prompt_tokens_details: None,
        }
    }
}

// ---------------------------------------------------------------------------
// Legacy completions
// ---------------------------------------------------------------------------

#[derive(Serialize, Clone, Copy)]
struct CompletionUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [CompletionChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<CompletionUsage>>,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u64,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
    /// vLLM's extra: the stop string that ended the choice.
    stop_reason: Option<&'a str>,
}

/// Token counts of the prompts of a completions request.
fn prompt_lengths(prompt: &Value) -> Option<Vec<u64>> {
    match prompt {
        Value::String(s) => Some(vec![text_tokens(s.chars().count())]),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) if items.iter().all(Value::is_u64) => Some(vec![items.len() as u64]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Some(text_tokens(s.chars().count())),
                Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64) => {
                    Some(ids.len() as u64)
                }
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

struct CompletionStream {
    id: String,
    created: u64,
    model: String,
    script: Script,
    choices: u64,
    finish_reason: &'static str,
    stop_reason: Option<String>,
    include_usage: bool,
    usage: CompletionUsage,
}

impl CompletionStream {
    fn per_choice(&self) -> u64 {
        self.script.len() + 1
    }

    fn event_count(&self) -> u64 {
        self.choices * self.per_choice() + u64::from(self.include_usage) + 1
    }

    /// Event `i`: for each choice its token chunks and a finish chunk, then
    /// the optional usage chunk, then `[DONE]`.
    fn event(&self, i: u64) -> String {
        let per_choice = self.per_choice();
        if i < self.choices * per_choice {
            let (index, j) = (i / per_choice, i % per_choice);
            let token;
            let choice = if j < self.script.len() {
                token = self.script.token(j);
                CompletionChoice {
                    index,
                    text: &token,
                    logprobs: None,
                    finish_reason: None,
                    stop_reason: None,
                }
            } else {
                CompletionChoice {
                    index,
                    text: "",
                    logprobs: None,
                    finish_reason: Some(self.finish_reason),
                    stop_reason: self.stop_reason.as_deref(),
                }
            };
            return self.chunk(&[choice], self.include_usage.then_some(None));
        }
        if i == self.choices * per_choice && self.include_usage {
            return self.chunk(&[], Some(Some(self.usage)));
        }
        "data: [DONE]\n\n".to_owned()
    }

    fn chunk(
        &self,
        choices: &[CompletionChoice<'_>],
        usage: Option<Option<CompletionUsage>>,
    ) -> String {
        sse_data(&Completion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            choices,
            usage,
            system_fingerprint: "fp_mock",
        })
    }
}

pub(crate) fn completions(
    _cfg: &MockConfig,
    req: &Request,
    knobs: &Knobs,
) -> Result<Reply, ApiError> {
    let obj = parse_object(req)?;
    let model = model_of(&obj)?;
    let prompts = match obj.get("prompt") {
        None | Some(Value::Null) => return Err(ApiError::missing("prompt")),
        Some(prompt) => prompt_lengths(prompt).ok_or_else(|| {
            ApiError::invalid_request(
                "Invalid 'prompt': expected a string, an array of strings, an array of token \
                 ids or an array of token id arrays.",
            )
            .param("prompt")
        })?,
    };
    let n = match optional_u64(&obj, "n")? {
        None => 1,
        Some(n) if (1..=128).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::invalid_request(format!(
                "Invalid value for 'n': {n}. Expected a value between 1 and 128."
            ))
            .param("n"))
        }
    };
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let stream_options = obj.get("stream_options").filter(|v| !v.is_null());
    if !stream && stream_options.is_some() {
        return Err(ApiError::invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        )
        .param("stream_options"));
    }
    let include_usage = stream_options
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let cap = optional_u64(&obj, "max_tokens")?;
    let (script, stop) = Script::words(knobs.tokens, cap, &stop_sequences(obj.get("stop")));
    let (finish_reason, stop_reason) = match stop {
        Stop::End => ("stop", None),
        Stop::MaxTokens => ("length", None),
        Stop::Sequence(s) => ("stop", Some(s)),
    };
    let choices = prompts.len() as u64 * n;
    let prompt_tokens: u64 = prompts.iter().sum();
    let completion_tokens = choices * script.len();
    let usage = CompletionUsage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    };
    let id = format!("cmpl-{}", random_hex(32));
    let created = unix_now();

    if !stream {
        let text = script.text();
        let items: Vec<CompletionChoice<'_>> = (0..choices)
            .map(|index| CompletionChoice {
                index,
                text: &text,
                logprobs: None,
                finish_reason: Some(finish_reason),
                stop_reason: stop_reason.as_deref(),
            })
            .collect();
        let body = Completion {
            id: &id,
            object: "text_completion",
            created,
            model: &model,
            choices: &items,
            usage: Some(Some(usage)),
            system_fingerprint: "fp_mock",
        };
        return Ok(json_reply(200, to_json(&body)));
    }
    let stream = CompletionStream {
        id,
        created,
        model,
        script,
        choices,
        finish_reason,
        stop_reason,
        include_usage,
        usage,
    };
    Ok(sse_reply(SseEvents {
        count: stream.event_count() as usize,
        event: Box::new(move |i| stream.event(i as u64)),
        error: Some(super::openai::stream_error_event()),
    }))
}

// ---------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------

/// Splits text into tokens of up to four characters (and four UTF-8 bytes),
/// so that ASCII text gets as many tokens as the usage estimates elsewhere.
/// Each id encodes its token's bytes, which makes `/detokenize` exact.
fn tokenize_text(text: &str) -> Vec<(u64, String)> {
    let mut out = Vec::with_capacity(text.len().div_ceil(4));
    let mut current = String::new();
    let mut chars = 0;
    for ch in text.chars() {
        if chars == 4 || current.len() + ch.len_utf8() > 4 {
            out.push(std::mem::take(&mut current));
            chars = 0;
        }
        current.push(ch);
        chars += 1;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out.into_iter()
        .map(|token| {
            let bytes = token.as_bytes();
            let id = bytes
                .iter()
                .enumerate()
                .fold(1u64 << (8 * bytes.len()), |id, (k, b)| {
                    id | (u64::from(*b) << (8 * k))
                });
            (id, token)
        })
        .collect()
}

/// The bytes of token `id`; ids the mock never hands out map onto its words.
fn detokenize_id(id: u64, out: &mut Vec<u8>) {
    if id == 0 {
        return;
    }
    let len = (63 - id.leading_zeros()) / 8;
    if (1..=4).contains(&len) && id >> (8 * len) == 1 {
        out.extend((0..len).map(|k| (id >> (8 * k)) as u8));
    } else if id > 1 {
        out.extend_from_slice(WORDS[(id % WORDS.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
}

/// A chat rendered the way a simple chat template would.
fn render_chat(messages: &[Value], add_generation_prompt: bool) -> Result<String, ApiError> {
    let mut out = String::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::missing(&format!("messages[{i}].role")))?;
        let content = match message.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
            _ => String::new(),
        };
        out.push_str(&format!("<|{role}|>\n{content}\n"));
    }
    if add_generation_prompt {
        out.push_str("<|assistant|>\n");
    }
    Ok(out)
}

pub(crate) fn tokenize(_cfg: &MockConfig, req: &Request, _: &Knobs) -> Result<Reply, ApiError> {
    let obj = parse_object(req)?;
    model_of(&obj)?;
    let text = match (obj.get("prompt"), obj.get("messages")) {
        (Some(Value::String(prompt)), _) => prompt.clone(),
        (Some(other), _) if !other.is_null() => {
            return Err(ApiError::invalid_type("prompt", "a string", other))
        }
        (_, Some(Value::Array(messages))) => render_chat(
            messages,
            obj.get("add_generation_prompt")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        )?,
        _ => return Err(ApiError::missing("prompt")),
    };
    let tokens = tokenize_text(&text);
    let token_strs = obj
        .get("return_token_strs")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        .then(|| tokens.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>());
    let ids: Vec<u64> = tokens.iter().map(|(id, _)| *id).collect();
    let body = json!({
        "count": ids.len(),
        "max_model_len": MAX_MODEL_LEN,
        "tokens": ids,
        "token_strs": token_strs,
    });
    Ok(json_reply(200, to_json(&body)))
}

pub(crate) fn detokenize(_cfg: &MockConfig, req: &Request, _: &Knobs) -> Result<Reply, ApiError> {
    let obj = parse_object(req)?;
    model_of(&obj)?;
    let ids = match obj.get("tokens") {
        None | Some(Value::Null) => return Err(ApiError::missing("tokens")),
        Some(Value::Array(ids)) => ids
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| {
                ApiError::invalid_request("Invalid 'tokens': expected an array of token ids.")
                    .param("tokens")
            })?,
        Some(other) => return Err(ApiError::invalid_type("tokens", "an array", other)),
    };
    let mut bytes = Vec::new();
    for id in ids {
        detokenize_id(id, &mut bytes);
    }
    let body = json!({"prompt": String::from_utf8_lossy(&bytes)});
    Ok(json_reply(200, to_json(&body)))
}

// ---------------------------------------------------------------------------
// Audio
// ---------------------------------------------------------------------------

/// `HH:MM:SS<sep>mmm`
fn timestamp(seconds: u64, sep: char) -> String {
    format!(
        "{:02}:{:02}:{:02}{sep}000",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

fn audio(req: &Request, knobs: &Knobs, task: &'static str) -> Result<Reply, ApiError> {
    let form = parse_form(req)?;
    let file = form
        .iter()
        .find(|p| p.name == "file" && p.filename.is_some())
        .ok_or_else(|| ApiError::missing("file"))?;
    form_field(&form, "model").ok_or_else(|| ApiError::missing("model"))?;
    let format = form_field(&form, "response_format").unwrap_or_else(|| "json".to_owned());
    let language = if task == "translate" {
        "english".to_owned()
    } else {
        form_field(&form, "language").unwrap_or_else(|| "english".to_owned())
    };
    let seconds = (file.data.len().div_ceil(AUDIO_BYTES_PER_SECOND)).max(1) as u64;
    let text = completion_text(u64::from(knobs.tokens));
    let usage = json!({"type": "duration", "seconds": seconds});
    let plain =
        |body: String| body_reply(200, Some("text/plain; charset=utf-8"), body.into_bytes());
    let mut reply = match format.as_str() {
        "json" if task == "transcribe" => {
            json_reply(200, to_json(&json!({"text": text, "usage": usage})))
        }
        "json" => json_reply(200, to_json(&json!({"text": text}))),
        "text" => plain(format!("{text}\n")),
        "srt" => plain(format!(
            "1\n{} --> {}\n{text}\n\n",
            timestamp(0, ','),
            timestamp(seconds, ',')
        )),
        "vtt" => plain(format!(
            "WEBVTT\n\n{} --> {}\n{text}\n\n",
            timestamp(0, '.'),
            timestamp(seconds, '.')
        )),
        "verbose_json" => {
            let tokens: Vec<u64> = tokenize_text(&text).into_iter().map(|(id, _)| id).collect();
            let mut body = json!({
                "task": task,
                "language": language,
                "duration": seconds as f64,
                "text": text,
                "segments": [{
                    "id": 0,
                    "seek": 0,
                    "start": 0.0,
                    "end": seconds as f64,
                    "text": text,
                    "tokens": tokens,
                    "temperature": 0.0,
                    "avg_logprob": -0.25,
                    "compression_ratio": 1.2,
                    "no_speech_prob": 0.01
                }]
            });
            if task == "transcribe" {
                body["usage"] = usage;
            }
            json_reply(200, to_json(&body))
        }
        other => {
            return Err(ApiError::invalid_request(format!(
                "Invalid value for 'response_format': '{other}'. Expected one of json, text, \
                 srt, verbose_json, vtt."
            ))
            .param("response_format"))
        }
    };
    reply.headers.extend(file_sizes_header(&form));
    Ok(reply)
}

pub(crate) fn transcriptions(
    _cfg: &MockConfig,
    req: &Request,
    knobs: &Knobs,
) -> Result<Reply, ApiError> {
    audio(req, knobs, "transcribe")
}

pub(crate) fn translations(
    _cfg: &MockConfig,
    req: &Request,
    knobs: &Knobs,
) -> Result<Reply, ApiError> {
    audio(req, knobs, "translate")
}

// ---------------------------------------------------------------------------
// Pooling, classification, scoring, reranking
// ---------------------------------------------------------------------------

/// The texts of a string-or-array-of-strings field.
fn texts(obj: &Map<String, Value>, name: &str) -> Result<Vec<String>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(ApiError::missing(name)),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("text").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "Invalid '{name}': expected a string or an array of strings."
                ))
                .param(name)
            }),
        Some(other) => Err(ApiError::invalid_type(
            name,
            "a string or an array of strings",
            other,
        )),
    }
}

fn str_tokens(s: &str) -> u64 {
    text_tokens(s.chars().count())
}

/// A deterministic relevance in `[0, 1)`: mostly word overlap, plus a little
/// noise so that ties are broken consistently.
fn relevance(query: &str, document: &str) -> f64 {
    fn words(s: &str) -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    }
    let query_words: HashSet<String> = words(query).into_iter().collect();
    let doc_words = words(document);
    let overlap = if doc_words.is_empty() {
        0.0
    } else {
        doc_words
            .iter()
            .filter(|w| query_words.contains(*w))
            .count() as f64
            / doc_words.len() as f64
    };
    let noise = unit_fraction(fnv1a(fnv1a(0, query.as_bytes()), document.as_bytes()));
    0.8 * overlap.min(1.0) + 0.199 * noise
}

pub(crate) fn pooling(cfg: &MockConfig, req: &Request, _: &Knobs) -> Result<Reply, ApiError> {
    let obj = parse_object(req)?;
    let model = model_of(&obj)?;
    let inputs = match (obj.get("input"), obj.get("messages")) {
        (Some(input), _) if !input.is_null() => embedding_inputs(input).ok_or_else(|| {
            ApiError::invalid_request("Invalid 'input': expected text or token ids.").param("input")
        })?,
        (_, Some(Value::Array(messages))) => {
            let text = render_chat(messages, false)?;
            embedding_inputs(&Value::String(text))
                .ok_or_else(|| ApiError::invalid_request("Invalid 'messages': empty chat."))?
        }
        _ => return Err(ApiError::missing("input")),
    };
    let prompt_tokens = inputs.iter().map(|i| i.tokens).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            json!({
                "index": index,
                "object": "pooling",
                "data": embedding_vector(input.seed, cfg.embedding_dim),
            })
        })
        .collect();
    let body = json!({
        "id": format!("pool-{}", random_hex(32)),
        "object": "list",
        "created": unix_now(),
        "model": model,
        "data": data,
        "usage": Usage::prompt_only(prompt_tokens),
    });
    Ok(json_reply(200, to_json(&body)))
}

pub(crate) fn classify(_cfg: &MockConfig, req: &Request, _: &Knobs) -> Result<Reply, ApiError> {
    const LABELS: [&str; 2] = ["negative", "positive"];
    let obj = parse_object(req)?;
    let model = model_of(&obj)?;
    let inputs = texts(&obj, "input")?;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let positive = unit_fraction(fnv1a(0, text.as_bytes()));
            let label = LABELS[usize::from(positive >= 0.5)];
            json!({
                "index": index,
                "label": label,
                "probs": [1.0 - positive, positive],
                "num_classes": LABELS.len(),
            })
        })
        .collect();
    let prompt_tokens = inputs.iter().map(|t| str_tokens(t)).sum();
    let body = json!({
        "id": format!("classify-{}", random_hex(32)),
        "object": "list",
        "created": unix_now(),
        "model": model,
        "data": data,
        "usage": Usage::prompt_only(prompt_tokens),
    });
    Ok(json_reply(200, to_json(&body)))
}

pub(crate) fn score(_cfg: &MockConfig, req: &Request, _: &Knobs) -> Result<Reply, ApiError> {
    let obj = parse_object(req)?;
    let model = model_of(&obj)?;
    let first = if obj.contains_key("text_1") {
        "text_1"
    } else {
        "queries"
    };
    let second = if obj.contains_key("text_2") {
        "text_2"
    } else {
        "documents"
    };
    let left = texts(&obj, first)?;
    let right = texts(&obj, second)?;
    let pairs: Vec<(&String, &String)> = match (left.len(), right.len()) {
        (1, _) => right.iter().map(|r| (&left[0], r)).collect(),
        (l, r) if l == r => left.iter().zip(&right).collect(),
        (l, r) => {
            return Err(ApiError::invalid_request(format!(
                "{first} and {second} must have the same length or {first} must hold a single \
                 text (got {l} and {r})."
            )))
        }
    };
    let prompt_tokens = pairs
        .iter()
        .map(|(q, d)| str_tokens(q) + str_tokens(d))
        .sum();
    let data: Vec<Value> = pairs
        .iter()
        .enumerate()
        .map(|(index, (q, d))| json!({"index": index, "object": "score", "score": relevance(q, d)}))
        .collect();
    let body = json!({
        "id": format!("score-{}", random_hex(32)),
        "object": "list",
        "created": unix_now(),
        "model": model,
        "data": data,
        "usage": Usage::prompt_only(prompt_tokens),
    });
    Ok(json_reply(200, to_json(&body)))
}

pub(crate) fn rerank(_cfg: &MockConfig, req: &Request, _: &Knobs) -> Result<Reply, ApiError> {
    let obj = parse_object(req)?;
    let model = model_of(&obj)?;
    let query = match obj.get("query") {
        Some(Value::String(q)) => q.clone(),
        None | Some(Value::Null) => return Err(ApiError::missing("query")),
        Some(other) => return Err(ApiError::invalid_type("query", "a string", other)),
    };
    let documents = texts(&obj, "documents")?;
    let top_n = optional_u64(&obj, "top_n")?.unwrap_or(0);
    let mut results: Vec<(usize, f64)> = documents
        .iter()
        .enumerate()
        .map(|(i, d)| (i, relevance(&query, d)))
        .collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if top_n > 0 {
        results.truncate(top_n as usize);
    }
    let prompt_tokens: u64 = documents
        .iter()
        .map(|d| str_tokens(&query) + str_tokens(d))
        .sum();
    let results: Vec<Value> = results
        .iter()
        .map(|(index, score)| {
            json!({
                "index": index,
                "document": {"text": documents[*index]},
                "relevance_score": score,
            })
        })
        .collect();
    let body = json!({
        "id": format!("rerank-{}", random_hex(32)),
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        "results": results,
    });
    Ok(json_reply(200, to_json(&body)))
}

// ---------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------

/// `GET /health`: 200 with an empty body.
pub(crate) fn health() -> Reply {
    body_reply(200, None, Vec::new())
}

/// `GET /version`.
pub(crate) fn version() -> Reply {
    json_reply(200, to_json(&json!({"version": "0.0.0+wharf-mock"})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_roundtrips() {
        for text in [
            "",
            "abc",
            "Hello, world!",
            "héllo wörld 👋 ok",
            "日本語のテキスト",
        ] {
            let tokens = tokenize_text(text);
            let mut bytes = Vec::new();
            for (id, _) in &tokens {
                detokenize_id(*id, &mut bytes);
            }
            assert_eq!(String::from_utf8_lossy(&bytes), text);
            let strs: String = tokens.iter().map(|(_, s)| s.as_str()).collect();
            assert_eq!(strs, text);
        }
        assert_eq!(tokenize_text("abcdefghi").len(), 3);
        assert_eq!(
            tokenize_text("abcdefghi").len() as u64,
            str_tokens("abcdefghi")
        );
    }

    #[test]
    fn relevance_prefers_overlap() {
        let q = "capital of France";
        assert!(
            relevance(q, "Paris is the capital of France") > relevance(q, "Bananas are yellow")
        );
        assert!((0.0..1.0).contains(&relevance(q, "capital France")));
    }
}
