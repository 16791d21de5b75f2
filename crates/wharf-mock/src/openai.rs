//! The OpenAI surface of the mock, which is also what vLLM serves under
//! `/v1`: routing, authentication, error envelopes and the chat, responses,
//! embeddings and models payloads. The vLLM-only routes live in `vllm.rs`
//! and the image routes in `images.rs`.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use super::common::{
    base64, completion_plan, completion_text, content_chars, embedding_vector, flag, fnv1a,
    json_reply, random_hex, sse_data, sse_named, sse_reply, text_tokens, to_json, token_text,
    unix_now, EmptyArray, Knobs, Reply, SseEvents,
};
use super::multipart::{self, Part};
use super::request::Request;
use super::{images, vllm, MockConfig};

const FINGERPRINT: &str = "fp_mock";
const OWNER: &str = "wharf-mock";
/// Upper bound for `dimensions` on embeddings.
const MAX_EMBEDDING_DIM: usize = 65_536;
/// Models listed by `GET /v1/models`: (id, created).
const MODELS: &[(&str, u64)] = &[
    ("mock-gpt", 1_700_000_000),
    ("mock-gpt-mini", 1_700_000_000),
    ("mock-embedding", 1_700_000_000),
    ("gpt-4o", 1_715_367_049),
    ("gpt-4o-mini", 1_721_172_741),
    ("text-embedding-3-small", 1_705_948_997),
];

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// An OpenAI-style error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            headers: Vec::new(),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "invalid_request_error", message)
    }

    pub fn with_status(mut self, status: u16) -> ApiError {
        self.status = status;
        self
    }

    pub fn param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    pub fn invalid_json() -> ApiError {
        ApiError::invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but \
             what was sent was not valid JSON. If you have trouble figuring out how to fix this, \
             please contact us through our help center at help.openai.com.)",
        )
    }

    pub fn missing(param: &str) -> ApiError {
        ApiError::invalid_request(format!("Missing required parameter: '{param}'."))
            .param(param)
            .code("missing_required_parameter")
    }

    pub fn invalid_type(param: &str, expected: &str, got: &Value) -> ApiError {
        ApiError::invalid_request(format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            describe(got)
        ))
        .param(param)
        .code("invalid_type")
    }

    fn body(&self) -> Vec<u8> {
        to_json(&ErrorEnvelope {
            error: ErrorBody {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
    }

    pub fn into_reply(self) -> Reply {
        let mut reply = json_reply(self.status, self.body());
        reply.headers.extend(self.headers);
        reply
    }
}

/// "a string", "an array", ... as OpenAI phrases type mismatches.
pub(crate) fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The error for a request that could not even be parsed as HTTP.
pub(crate) fn protocol_error(status: u16, message: &str) -> Reply {
    let mut reply = ApiError::new(status, "invalid_request_error", message).into_reply();
    reply.headers.insert(0, ("x-request-id", new_request_id()));
    reply
}

/// The error forced with `x-mock-status`.
fn forced_error(status: u16, knobs: &Knobs, req: &Request) -> ApiError {
    let err = match status {
        400 => ApiError::invalid_request("Bad request (forced by x-mock-status)."),
        401 => ApiError::new(
            401,
            "invalid_request_error",
            "Incorrect API key provided: sk-mock***********. You can find your API key at \
             https://platform.openai.com/account/api-keys.",
        )
        .code("invalid_api_key"),
        403 => ApiError::new(
            403,
            "invalid_request_error",
            "You are not allowed to access this resource.",
        )
        .code("unsupported_country_region_territory"),
        404 => {
            let model = requested_model(req);
            ApiError::new(
                404,
                "invalid_request_error",
                format!("The model `{model}` does not exist or you do not have access to it."),
            )
            .code("model_not_found")
        }
        429 => ApiError::new(
            429,
            "requests",
            format!(
                "Rate limit reached for {} in organization org-wharfmock on requests per min \
                 (RPM): Limit 10000, Used 10000, Requested 1. Please try again in 1s. Visit \
                 https://platform.openai.com/account/rate-limits to learn more.",
                requested_model(req)
            ),
        )
        .code("rate_limit_exceeded")
        .header("x-ratelimit-limit-requests", "10000")
        .header("x-ratelimit-remaining-requests", "0")
        .header("x-ratelimit-reset-requests", "1s"),
        500 => ApiError::new(
            500,
            "server_error",
            "The server had an error while processing your request. Sorry about that!",
        ),
        502 => ApiError::new(502, "server_error", "Bad gateway."),
        503 => ApiError::new(
            503,
            "service_unavailable",
            "The server is overloaded or not ready yet.",
        )
        .code("service_unavailable"),
        504 => ApiError::new(504, "server_error", "Gateway timeout."),
        s if s < 500 => ApiError::new(
            s,
            "invalid_request_error",
            format!("Request failed with status {s} (forced by x-mock-status)."),
        ),
        s => ApiError::new(
            s,
            "server_error",
            format!("The server had an error processing your request (status {s})."),
        ),
    };
    match (&knobs.retry_after, status) {
        (Some(value), _) => err.header("retry-after", value.clone()),
        (None, 429) => err.header("retry-after", "1"),
        (None, _) => err,
    }
}

fn requested_model(req: &Request) -> String {
    serde_json::from_slice::<Value>(&req.body)
        .ok()
        .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "mock-gpt".to_owned())
}

// ---------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------

/// Adds the headers every OpenAI answer carries.
pub(crate) fn finish(mut reply: Reply) -> Reply {
    reply.headers.insert(0, ("x-request-id", new_request_id()));
    reply
        .headers
        .push(("openai-version", "2020-10-01".to_owned()));
    reply
}

/// The answer to an invalid `x-mock-*` knob.
pub(crate) fn invalid_knob(message: String) -> Reply {
    ApiError::invalid_request(message).into_reply()
}

/// What `x-mock-fault: error-event` makes of a unary answer.
pub(crate) fn overloaded(req: &Request, knobs: &Knobs) -> Reply {
    forced_error(500, knobs, req).into_reply()
}

/// The error event that `x-mock-fault: error-event` puts in a stream.
pub(crate) fn stream_error_event() -> String {
    sse_data(&ErrorEnvelope {
        error: ErrorBody {
            message: "The server had an error while processing your request. Sorry about that!",
            kind: "server_error",
            param: None,
            code: None,
        },
    })
}

/// Answers a request for the OpenAI family (and vLLM).
pub(crate) fn route(cfg: &MockConfig, req: &Request, knobs: &Knobs) -> Reply {
    dispatch(cfg, req, knobs).unwrap_or_else(ApiError::into_reply)
}

fn dispatch(cfg: &MockConfig, req: &Request, knobs: &Knobs) -> Result<Reply, ApiError> {
    let mut path = req.route();
    // Azure OpenAI: `/openai/deployments/{deployment}/{op}?api-version=...` with `api-key`.
    if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        if !req.path.contains("api-version=") {
            return Err(ApiError::new(
                404,
                "invalid_request_error",
                "Resource not found: the api-version query parameter is required",
            ));
        }
        if req.header("api-key").is_none() {
            return Err(ApiError::new(
                401,
                "invalid_request_error",
                "Access denied due to missing subscription key.",
            ));
        }
        path = match rest.split_once('/').map(|(_, op)| op) {
            Some("chat/completions") => "/v1/chat/completions",
            Some("completions") => "/v1/completions",
            Some("embeddings") => "/v1/embeddings",
            _ => "/azure/unknown",
        };
    }
    // Like vLLM, only the `/v1` routes need the API key.
    if path.starts_with("/v1/") {
        authenticate(cfg, req)?;
    }
    if let Some(status) = knobs.status {
        return Err(forced_error(status, knobs, req));
    }
    let method = req.method.as_str();
    let post = |handler: fn(&MockConfig, &Request, &Knobs) -> Result<Reply, ApiError>| {
        allow(req, "POST")?;
        handler(cfg, req, knobs)
    };
    match path {
        "/v1/chat/completions" => post(|_, req, knobs| chat_completions(req, knobs)),
        "/v1/responses" => post(|_, req, knobs| responses(req, knobs)),
        "/v1/embeddings" => post(|cfg, req, _| embeddings(cfg, req)),
        "/v1/completions" => post(vllm::completions),
        "/v1/audio/transcriptions" => post(vllm::transcriptions),
        "/v1/audio/translations" => post(vllm::translations),
        "/v1/images/generations" => post(images::generations),
        "/v1/images/edits" => post(images::edits),
        "/v1/images/variations" => post(images::variations),
        "/tokenize" => post(vllm::tokenize),
        "/detokenize" => post(vllm::detokenize),
        "/pooling" => post(vllm::pooling),
        "/classify" => post(vllm::classify),
        "/score" | "/v1/score" => post(vllm::score),
        "/rerank" | "/v1/rerank" | "/v2/rerank" => post(vllm::rerank),
        "/health" => {
            allow(req, "GET")?;
            Ok(vllm::health())
        }
        "/version" => {
            allow(req, "GET")?;
            Ok(vllm::version())
        }
        "/v1/models" => {
            allow(req, "GET")?;
            Ok(list_models())
        }
        _ => match path.strip_prefix("/v1/models/") {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                allow(req, "GET")?;
                retrieve_model(id)
            }
            _ => Err(not_found(method, path)),
        },
    }
}

pub(crate) fn not_found(method: &str, path: &str) -> ApiError {
    ApiError::invalid_request(format!("Invalid URL ({method} {path})")).with_status(404)
}

pub(crate) fn allow(req: &Request, method: &'static str) -> Result<(), ApiError> {
    if req.method == method || (method == "GET" && req.method == "HEAD") {
        return Ok(());
    }
    Err(ApiError::invalid_request(format!(
        "Invalid method for URL ({} {})",
        req.method,
        req.route()
    ))
    .with_status(405)
    .header("allow", method))
}

fn authenticate(cfg: &MockConfig, req: &Request) -> Result<(), ApiError> {
    // Bearer (OpenAI), or `api-key` (Azure OpenAI and servers configured that way).
    let token = req
        .header("authorization")
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            let token = token.trim();
            (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
        })
        .or_else(|| {
            req.header("api-key")
                .map(str::trim)
                .filter(|t| !t.is_empty())
        });
    let Some(token) = token else {
        return Err(ApiError::new(
            401,
            "invalid_request_error",
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as \
             the password field (with blank username) if you're accessing the API from your \
             browser and are prompted for a username. You can obtain an API key from \
             https://platform.openai.com/account/api-keys.",
        ));
    };
    match &cfg.api_key {
        Some(expected) if expected != token => Err(ApiError::new(
            401,
            "invalid_request_error",
            format!(
                "Incorrect API key provided: {}. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                mask_key(token)
            ),
        )
        .code("invalid_api_key")),
        _ => Ok(()),
    }
}

/// `sk-abc*****wxyz`, as OpenAI shows rejected keys.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 10 {
        return "*".repeat(chars.len());
    }
    let mut out: String = chars[..3].iter().collect();
    out.extend(std::iter::repeat_n('*', chars.len() - 7));
    out.extend(&chars[chars.len() - 4..]);
    out
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

pub(crate) fn new_request_id() -> String {
    format!("req_{}", random_hex(32))
}

pub(crate) fn parse_object(req: &Request) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::invalid_json()),
    }
}

pub(crate) fn require_model(obj: &Map<String, Value>) -> Result<&str, ApiError> {
    match obj.get("model") {
        None | Some(Value::Null) => Err(ApiError::invalid_request(
            "you must provide a model parameter",
        )),
        Some(Value::String(model)) => Ok(model),
        Some(other) => Err(ApiError::invalid_type("model", "a string", other)),
    }
}

pub(crate) fn optional_u64(obj: &Map<String, Value>, name: &str) -> Result<Option<u64>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid_type(name, "an integer", v)),
    }
}

// ---------------------------------------------------------------------------
// Chat completions
// ---------------------------------------------------------------------------

#[derive(Serialize, Clone, Copy)]
struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptTokensDetails,
    completion_tokens_details: CompletionTokensDetails,
}

#[derive(Serialize, Clone, Copy)]
struct PromptTokensDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct CompletionTokensDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

impl ChatUsage {
    fn new(prompt: u64, completion: u64) -> ChatUsage {
        ChatUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: 0,
                audio_tokens: 0,
            },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: 0,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
        }
    }
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChatChoice<'a>; 1],
    usage: ChatUsage,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<&'a str>,
    annotations: EmptyArray,
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: &'a [ChunkChoice<'a>],
    /// Absent unless `include_usage`; then `null` on every chunk but the
    /// last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<ChatUsage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<&'a str>>,
}

fn chat_completions(req: &Request, knobs: &Knobs) -> Result<Reply, ApiError> {
    let obj = parse_object(req)?;
    let model = require_model(&obj)?;
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => return Err(ApiError::missing("messages")),
        Some(Value::Array(messages)) if messages.is_empty() => {
            return Err(ApiError::invalid_request(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but \
                 got an empty array instead.",
            )
            .param("messages")
            .code("empty_array"))
        }
        Some(Value::Array(messages)) => messages,
        Some(other) => return Err(ApiError::invalid_type("messages", "an array", other)),
    };
    let mut prompt_tokens = 0;
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(ApiError::invalid_type(
                &format!("messages[{i}]"),
                "an object",
                message,
            ));
        };
        if !message.get("role").is_some_and(Value::is_string) {
            return Err(ApiError::missing(&format!("messages[{i}].role")));
        }
        let chars = message.get("content").map_or(0, content_chars);
        prompt_tokens += text_tokens(chars) + 3;
    }
    let stream = flag(&obj, "stream");
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
    let cap = match optional_u64(&obj, "max_completion_tokens")? {
        Some(cap) => Some(cap),
        None => optional_u64(&obj, "max_tokens")?,
    };
    let (completion_tokens, truncated) = completion_plan(knobs.tokens, cap);
    let finish_reason = if truncated { "length" } else { "stop" };
    let usage = ChatUsage::new(prompt_tokens, completion_tokens);
    let id = format!("chatcmpl-{}", random_hex(32));
    let created = unix_now();

    if !stream {
        let content = completion_text(completion_tokens);
        let body = ChatCompletion {
            id: &id,
            object: "chat.completion",
            created,
            model,
            choices: [ChatChoice {
                index: 0,
                message: ChatMessage {
                    role: "assistant",
                    content: &content,
                    refusal: None,
                    annotations: EmptyArray,
                },
                logprobs: None,
                finish_reason,
            }],
            usage,
            system_fingerprint: FINGERPRINT,
        };
        return Ok(json_reply(200, to_json(&body)));
    }

    let stream = ChatStream {
        id,
        created,
        model: model.to_owned(),
        include_usage,
        usage,
        tokens: completion_tokens,
        finish_reason,
    };
    let count = completion_tokens as usize + 3 + usize::from(include_usage);
    Ok(sse_reply(SseEvents {
        count,
        event: Box::new(move |i| stream.event(i as u64)),
        error: Some(stream_error_event()),
    }))
}

/// Everything needed to produce the chunks of a streamed chat completion.
struct ChatStream {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    usage: ChatUsage,
    tokens: u64,
    finish_reason: &'static str,
}

impl ChatStream {
    /// Event `i`: the role chunk, one chunk per token, the finish chunk, the
    /// optional usage chunk, then `[DONE]`.
    fn event(&self, i: u64) -> String {
        let n = self.tokens;
        if i == 0 {
            let delta = Delta {
                role: Some("assistant"),
                content: Some(""),
                refusal: Some(None),
            };
            self.chunk(delta, None)
        } else if i <= n {
            let text = token_text(i - 1, n);
            let delta = Delta {
                content: Some(&text),
                ..Delta::default()
            };
            self.chunk(delta, None)
        } else if i == n + 1 {
            self.chunk(Delta::default(), Some(self.finish_reason))
        } else if i == n + 2 && self.include_usage {
            sse_data(&ChatChunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                system_fingerprint: FINGERPRINT,
                choices: &[],
                usage: Some(Some(self.usage)),
            })
        } else {
            "data: [DONE]\n\n".to_owned()
        }
    }

    fn chunk(&self, delta: Delta<'_>, finish_reason: Option<&'static str>) -> String {
        sse_data(&ChatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: FINGERPRINT,
            choices: &[ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: self.include_usage.then_some(None),
        })
    }
}

// ---------------------------------------------------------------------------
// Responses API
// ---------------------------------------------------------------------------

#[derive(Serialize, Clone, Copy)]
struct ResponseUsage {
    input_tokens: u64,
    input_tokens_details: InputTokensDetails,
    output_tokens: u64,
    output_tokens_details: OutputTokensDetails,
    total_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct InputTokensDetails {
    cached_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct OutputTokensDetails {
    reasoning_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct IncompleteDetails {
    reason: &'static str,
}

#[derive(Serialize, Clone, Copy)]
struct Reasoning {
    effort: Option<()>,
    summary: Option<()>,
}

#[derive(Serialize, Clone, Copy)]
struct TextConfig {
    format: TextFormat,
}

#[derive(Serialize, Clone, Copy)]
struct TextFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

/// A JSON object from the request, or `{}`.
#[derive(Clone, Copy)]
struct ObjectOrEmpty<'a>(Option<&'a Value>);

impl Serialize for ObjectOrEmpty<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(v) => v.serialize(s),
            None => s.serialize_map(Some(0))?.end(),
        }
    }
}

#[derive(Serialize)]
struct ResponseObject<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    background: bool,
    error: Option<()>,
    incomplete_details: Option<IncompleteDetails>,
    instructions: Option<&'a Value>,
    max_output_tokens: Option<u64>,
    model: &'a str,
    output: &'a [MessageItem<'a>],
    parallel_tool_calls: bool,
    previous_response_id: Option<&'a str>,
    reasoning: Reasoning,
    store: bool,
    temperature: f64,
    text: TextConfig,
    tool_choice: &'static str,
    tools: EmptyArray,
    top_p: f64,
    truncation: &'static str,
    usage: Option<ResponseUsage>,
    user: Option<&'a str>,
    metadata: ObjectOrEmpty<'a>,
}

#[derive(Serialize)]
struct MessageItem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    status: &'static str,
    role: &'static str,
    content: &'a [OutputText<'a>],
}

#[derive(Serialize)]
struct OutputText<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    annotations: EmptyArray,
    logprobs: EmptyArray,
}

impl<'a> OutputText<'a> {
    fn new(text: &'a str) -> OutputText<'a> {
        OutputText {
            kind: "output_text",
            text,
            annotations: EmptyArray,
            logprobs: EmptyArray,
        }
    }
}

/// One streaming event of the Responses API; unused fields are left out.
#[derive(Serialize)]
struct ResponseEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a ResponseObject<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    item_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<&'a MessageItem<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<&'a OutputText<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<EmptyArray>,
}

impl<'a> ResponseEvent<'a> {
    fn new(kind: &'static str, sequence_number: u64) -> ResponseEvent<'a> {
        ResponseEvent {
            kind,
            sequence_number,
            response: None,
            item_id: None,
            output_index: None,
            content_index: None,
            item: None,
            part: None,
            delta: None,
            text: None,
            logprobs: None,
        }
    }
}

/// The `error` event of a Responses stream.
#[derive(Serialize)]
struct ResponseError {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: &'static str,
    param: Option<&'static str>,
    sequence_number: u64,
}

/// Characters of text in a Responses `input` item.
fn input_item_chars(item: &Value) -> usize {
    match item {
        Value::String(s) => s.chars().count(),
        Value::Object(o) => {
            o.get("content").map_or(0, content_chars)
                + ["output", "arguments"]
                    .iter()
                    .filter_map(|k| o.get(*k).and_then(Value::as_str))
                    .map(|s| s.chars().count())
                    .sum::<usize>()
        }
        _ => 0,
    }
}

/// A Responses API answer, from which both the unary body and the stream
/// events are built.
struct ResponsePlan {
    response_id: String,
    message_id: String,
    created_at: u64,
    model: String,
    instructions: Option<Value>,
    max_output_tokens: Option<u64>,
    parallel_tool_calls: bool,
    previous_response_id: Option<String>,
    store: bool,
    temperature: f64,
    top_p: f64,
    user: Option<String>,
    metadata: Option<Value>,
    usage: ResponseUsage,
    /// Stopped by `max_output_tokens`.
    truncated: bool,
    text: String,
}

/// Events before the first text delta and after the last one.
const RESPONSE_EVENTS_BEFORE: u64 = 4;
const RESPONSE_EVENTS_AFTER: u64 = 4;

impl ResponsePlan {
    fn object<'a>(
        &'a self,
        status: &'static str,
        output: &'a [MessageItem<'a>],
        usage: Option<ResponseUsage>,
    ) -> ResponseObject<'a> {
        let incomplete_details = (status == "incomplete").then_some(IncompleteDetails {
            reason: "max_output_tokens",
        });
        ResponseObject {
            id: &self.response_id,
            object: "response",
            created_at: self.created_at,
            status,
            background: false,
            error: None,
            incomplete_details,
            instructions: self.instructions.as_ref(),
            max_output_tokens: self.max_output_tokens,
            model: &self.model,
            output,
            parallel_tool_calls: self.parallel_tool_calls,
            previous_response_id: self.previous_response_id.as_deref(),
            reasoning: Reasoning {
                effort: None,
                summary: None,
            },
            store: self.store,
            temperature: self.temperature,
            text: TextConfig {
                format: TextFormat { kind: "text" },
            },
            tool_choice: "auto",
            tools: EmptyArray,
            top_p: self.top_p,
            truncation: "disabled",
            usage,
            user: self.user.as_deref(),
            metadata: ObjectOrEmpty(self.metadata.as_ref()),
        }
    }

    fn final_status(&self) -> &'static str {
        if self.truncated {
            "incomplete"
        } else {
            "completed"
        }
    }

    /// Calls `f` with the finished response object.
    fn with_final<R>(&self, f: impl FnOnce(&ResponseObject<'_>) -> R) -> R {
        let parts = [OutputText::new(&self.text)];
        let item = self.message_item(self.final_status(), &parts);
        let response = self.object(
            self.final_status(),
            std::slice::from_ref(&item),
            Some(self.usage),
        );
        f(&response)
    }

    fn message_item<'a>(
        &'a self,
        status: &'static str,
        content: &'a [OutputText<'a>],
    ) -> MessageItem<'a> {
        MessageItem {
            kind: "message",
            id: &self.message_id,
            status,
            role: "assistant",
            content,
        }
    }

    fn event_count(&self) -> u64 {
        RESPONSE_EVENTS_BEFORE + self.usage.output_tokens + RESPONSE_EVENTS_AFTER
    }

    /// Streaming event `seq` (which is also its `sequence_number`).
    fn event(&self, seq: u64) -> String {
        let n = self.usage.output_tokens;
        let text_event = |kind: &'static str| {
            let mut ev = ResponseEvent::new(kind, seq);
            ev.item_id = Some(&self.message_id);
            ev.output_index = Some(0);
            ev.content_index = Some(0);
            ev
        };
        match seq {
            0 | 1 => {
                let kind = if seq == 0 {
                    "response.created"
                } else {
                    "response.in_progress"
                };
                let response = self.object("in_progress", &[], None);
                let mut ev = ResponseEvent::new(kind, seq);
                ev.response = Some(&response);
                sse_named(kind, &ev)
            }
            2 => {
                let item = self.message_item("in_progress", &[]);
                let mut ev = ResponseEvent::new("response.output_item.added", seq);
                ev.output_index = Some(0);
                ev.item = Some(&item);
                sse_named(ev.kind, &ev)
            }
            3 => {
                let part = OutputText::new("");
                let mut ev = text_event("response.content_part.added");
                ev.part = Some(&part);
                sse_named(ev.kind, &ev)
            }
            s if s < RESPONSE_EVENTS_BEFORE + n => {
                let delta = token_text(s - RESPONSE_EVENTS_BEFORE, n);
                let mut ev = text_event("response.output_text.delta");
                ev.delta = Some(&delta);
                ev.logprobs = Some(EmptyArray);
                sse_named(ev.kind, &ev)
            }
            s => {
                let parts = [OutputText::new(&self.text)];
                match s - RESPONSE_EVENTS_BEFORE - n {
                    0 => {
                        let mut ev = text_event("response.output_text.done");
                        ev.text = Some(&self.text);
                        ev.logprobs = Some(EmptyArray);
                        sse_named(ev.kind, &ev)
                    }
                    1 => {
                        let mut ev = text_event("response.content_part.done");
                        ev.part = Some(&parts[0]);
                        sse_named(ev.kind, &ev)
                    }
                    2 => {
                        let item = self.message_item(self.final_status(), &parts);
                        let mut ev = ResponseEvent::new("response.output_item.done", seq);
                        ev.output_index = Some(0);
                        ev.item = Some(&item);
                        sse_named(ev.kind, &ev)
                    }
                    _ => self.with_final(|response| {
                        let kind = if self.truncated {
                            "response.incomplete"
                        } else {
                            "response.completed"
                        };
                        let mut ev = ResponseEvent::new(kind, seq);
                        ev.response = Some(response);
                        sse_named(kind, &ev)
                    }),
                }
            }
        }
    }
}

fn responses(req: &Request, knobs: &Knobs) -> Result<Reply, ApiError> {
    let mut obj = parse_object(req)?;
    let model = require_model(&obj)?.to_owned();
    let mut input_tokens = match obj.get("input") {
        None | Some(Value::Null) => return Err(ApiError::missing("input")),
        Some(Value::String(s)) => text_tokens(s.chars().count()) + 3,
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| text_tokens(input_item_chars(item)) + 3)
            .sum(),
        Some(other) => {
            return Err(ApiError::invalid_type(
                "input",
                "a string or an array",
                other,
            ))
        }
    };
    let instructions = obj.remove("instructions").filter(|v| !v.is_null());
    if let Some(instructions) = &instructions {
        input_tokens += text_tokens(content_chars(instructions)) + 3;
    }
    let max_output_tokens = optional_u64(&obj, "max_output_tokens")?;
    let (output_tokens, truncated) = completion_plan(knobs.tokens, max_output_tokens);
    let string = |obj: &Map<String, Value>, key: &str| {
        obj.get(key).and_then(Value::as_str).map(str::to_owned)
    };
    let plan = ResponsePlan {
        response_id: format!("resp_{}", random_hex(48)),
        message_id: format!("msg_{}", random_hex(48)),
        created_at: unix_now(),
        model,
        instructions,
        max_output_tokens,
        parallel_tool_calls: obj
            .get("parallel_tool_calls")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        previous_response_id: string(&obj, "previous_response_id"),
        store: obj.get("store").and_then(Value::as_bool).unwrap_or(true),
        temperature: obj
            .get("temperature")
            .and_then(Value::as_f64)
            .unwrap_or(1.0),
        top_p: obj.get("top_p").and_then(Value::as_f64).unwrap_or(1.0),
        user: string(&obj, "user"),
        metadata: obj.remove("metadata").filter(Value::is_object),
        usage: ResponseUsage {
            input_tokens,
            input_tokens_details: InputTokensDetails { cached_tokens: 0 },
            output_tokens,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: 0,
            },
            total_tokens: input_tokens + output_tokens,
        },
        truncated,
        text: completion_text(output_tokens),
    };

    if !flag(&obj, "stream") {
        let body = plan.with_final(|response| to_json(response));
        return Ok(json_reply(200, body));
    }
    let count = plan.event_count() as usize;
    // The error event takes the sequence number of the first event it
    // replaces.
    let error = sse_named(
        "error",
        &ResponseError {
            kind: "error",
            code: "server_error",
            message: "The server had an error while processing your request. Sorry about that!",
            param: None,
            sequence_number: knobs.drop_after.min(count.saturating_sub(1)) as u64,
        },
    );
    Ok(sse_reply(SseEvents {
        count,
        event: Box::new(move |i| plan.event(i as u64)),
        error: Some(error),
    }))
}

// ---------------------------------------------------------------------------
// Embeddings
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// One input to embed: its hash seed and its token count.
pub(crate) struct EmbeddingInput {
    pub seed: u64,
    pub tokens: u64,
}

pub(crate) fn embedding_inputs(input: &Value) -> Option<Vec<EmbeddingInput>> {
    fn text(s: &str) -> Option<EmbeddingInput> {
        (!s.is_empty()).then(|| EmbeddingInput {
            seed: fnv1a(0, s.as_bytes()),
            tokens: text_tokens(s.chars().count()),
        })
    }
    fn token_ids(ids: &[Value]) -> Option<EmbeddingInput> {
        if ids.is_empty() {
            return None;
        }
        let mut seed = fnv1a(0, b"tokens");
        for id in ids {
            seed = fnv1a(seed, &id.as_u64()?.to_le_bytes());
        }
        Some(EmbeddingInput {
            seed,
            tokens: ids.len() as u64,
        })
    }
    match input {
        Value::String(s) => Some(vec![text(s)?]),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) if items.iter().all(Value::is_number) => Some(vec![token_ids(items)?]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => text(s),
                Value::Array(ids) => token_ids(ids),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn embeddings(cfg: &MockConfig, req: &Request) -> Result<Reply, ApiError> {
    let obj = parse_object(req)?;
    let model = require_model(&obj)?;
    let inputs = match obj.get("input") {
        None | Some(Value::Null) => return Err(ApiError::missing("input")),
        Some(input) => embedding_inputs(input).ok_or_else(|| {
            ApiError::invalid_request(
                "'$.input' is invalid. Please check the API reference: \
                 https://platform.openai.com/docs/api-reference.",
            )
        })?,
    };
    let dim = match optional_u64(&obj, "dimensions")? {
        None => cfg.embedding_dim,
        Some(d) if d >= 1 && d <= MAX_EMBEDDING_DIM as u64 => d as usize,
        Some(d) => {
            return Err(ApiError::invalid_request(format!(
                "Invalid value for 'dimensions': {d}. Expected a value between 1 and \
                 {MAX_EMBEDDING_DIM}."
            ))
            .param("dimensions"))
        }
    };
    let base64_format = match obj.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(ApiError::invalid_request(
                "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
            )
            .param("encoding_format"))
        }
    };
    let prompt_tokens = inputs.iter().map(|i| i.tokens).sum();
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_vector(input.seed, dim);
            let embedding = if base64_format {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                EmbeddingValue::Base64(base64(&bytes))
            } else {
                EmbeddingValue::Float(vector)
            };
            EmbeddingItem {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let body = EmbeddingList {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    };
    Ok(json_reply(200, to_json(&body)))
}

// ---------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

fn list_models() -> Reply {
    let data = MODELS
        .iter()
        .map(|(id, created)| ModelObject {
            id,
            object: "model",
            created: *created,
            owned_by: OWNER,
        })
        .collect();
    json_reply(
        200,
        to_json(&ModelList {
            object: "list",
            data,
        }),
    )
}

fn retrieve_model(id: &str) -> Result<Reply, ApiError> {
    let Some((id, created)) = MODELS.iter().find(|(m, _)| *m == id) else {
        return Err(ApiError::new(
            404,
            "invalid_request_error",
            format!("The model '{id}' does not exist"),
        )
        .param("model")
        .code("model_not_found"));
    };
    Ok(json_reply(
        200,
        to_json(&ModelObject {
            id,
            object: "model",
            created: *created,
            owned_by: OWNER,
        }),
    ))
}

// ---------------------------------------------------------------------------
// Uploads
// ---------------------------------------------------------------------------

/// The parts of a `multipart/form-data` body.
pub(crate) fn parse_form(req: &Request) -> Result<Vec<Part<'_>>, ApiError> {
    let content_type = req.header("content-type").unwrap_or("");
    let Some(boundary) = multipart::boundary(content_type) else {
        return Err(ApiError::invalid_request(format!(
            "Invalid Content-Type header ({content_type}), expected multipart/form-data. \
             (HINT: If you're using curl, you can pass -H 'Content-Type: multipart/form-data')"
        )));
    };
    multipart::parse(&req.body, &boundary)
        .map_err(|why| ApiError::invalid_request(format!("Could not parse multipart form: {why}.")))
}

/// The value of the text field `name`.
pub(crate) fn form_field(parts: &[Part<'_>], name: &str) -> Option<String> {
    parts
        .iter()
        .find(|p| p.name == name && p.filename.is_none())
        .map(Part::text)
}

/// `x-mock-file-sizes: image=1234, mask=56`: the size of every uploaded file,
/// so tests can check that uploads arrive intact.
pub(crate) fn file_sizes_header(parts: &[Part<'_>]) -> Option<(&'static str, String)> {
    let sizes: Vec<String> = parts
        .iter()
        .filter(|p| p.filename.is_some())
        .map(|p| format!("{}={}", p.name, p.data.len()))
        .collect();
    (!sizes.is_empty()).then(|| ("x-mock-file-sizes", sizes.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_masked() {
        assert_eq!(mask_key("short"), "*****");
        assert_eq!(mask_key("sk-abcdefghijkl"), "sk-********ijkl");
    }
}
