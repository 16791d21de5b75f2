//! The Gemini surface of the mock: `generateContent`,
//! `streamGenerateContent` (SSE with `alt=sse`, a streamed JSON array
//! otherwise), `countTokens`, `embedContent`, `batchEmbedContents` and the
//! model list, with Google's authentication and error envelope.

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::common::{
    body_reply, completion_text, embedding_vector, fnv1a, json_len, json_object, pick_tool,
    query_param, random_alnum, sample_value, stop_sequences, stream_reply, text_tokens, to_json,
    to_json_string, Knobs, Reply, Script, SseEvents, Stop, TimingHeader, ToolDecl, ToolMode,
};
use super::request::Request;
use super::MockConfig;

const JSON_UTF8: &str = "application/json; charset=UTF-8";
/// Input tokens charged for an inline or file media part.
const MEDIA_TOKENS: u64 = 258;
/// Models listed by `GET /v1beta/models`: (id, display name, input limit,
/// output limit).
const MODELS: &[(&str, &str, u64, u64)] = &[
    ("gemini-2.5-pro", "Gemini 2.5 Pro", 1_048_576, 65_536),
    ("gemini-2.5-flash", "Gemini 2.5 Flash", 1_048_576, 65_536),
    ("gemini-2.0-flash", "Gemini 2.0 Flash", 1_048_576, 8_192),
    ("text-embedding-004", "Text Embedding 004", 2_048, 1),
];

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A Google API error answer:
/// `{"error":{"code":C,"message":M,"status":S[,"details":[...]]}}`.
#[derive(Debug)]
pub(crate) struct GoogleError {
    code: u16,
    message: String,
    details: Option<Value>,
    headers: Vec<(&'static str, String)>,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u16,
    message: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Value>,
}

/// The canonical status name of an HTTP status.
fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        c if c < 500 => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    }
}

impl GoogleError {
    fn new(code: u16, message: impl Into<String>) -> GoogleError {
        GoogleError {
            code,
            message: message.into(),
            details: None,
            headers: Vec::new(),
        }
    }

    fn invalid(message: impl Into<String>) -> GoogleError {
        GoogleError::new(400, message)
    }

    fn details(mut self, details: Value) -> GoogleError {
        self.details = Some(details);
        self
    }

    fn body(&self) -> Vec<u8> {
        to_json(&ErrorEnvelope {
            error: ErrorBody {
                code: self.code,
                message: &self.message,
                status: status_name(self.code),
                details: self.details.as_ref(),
            },
        })
    }

    fn into_reply(self) -> Reply {
        let mut reply = body_reply(self.code, Some(JSON_UTF8), self.body());
        reply.headers.extend(self.headers);
        reply
    }
}

/// The error forced with `x-mock-status`.
fn forced_error(status: u16, knobs: &Knobs) -> GoogleError {
    let message = match status {
        400 => "Request contains an invalid argument.",
        401 => "Request had invalid authentication credentials.",
        403 => "The caller does not have permission",
        404 => "Requested entity was not found.",
        429 => "Resource has been exhausted (e.g. check quota).",
        500 => {
            "An internal error has occurred. Please retry or report in \
             https://developers.generativeai.google/guide/troubleshooting"
        }
        503 => "The model is overloaded. Please try again later.",
        504 => "The request timed out. Please try again.",
        s if s < 500 => "The request failed (forced by x-mock-status).",
        _ => "An internal error has occurred (forced by x-mock-status).",
    };
    let mut err = GoogleError::new(status, message);
    if status == 429 {
        let delay = knobs
            .retry_after
            .as_deref()
            .map_or_else(|| "1s".to_owned(), |s| format!("{}s", s.trim()));
        err = err.details(json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": delay,
        }]));
    }
    if let Some(value) = &knobs.retry_after {
        err.headers.push(("retry-after", value.clone()));
    }
    err
}

// ---------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------

/// Adds the headers every Gemini answer carries.
pub(crate) fn finish(mut reply: Reply) -> Reply {
    reply.timing = TimingHeader::ServerTiming;
    reply
        .headers
        .push(("vary", "Origin, X-Origin, Referer".to_owned()));
    reply
}

/// The answer to an invalid `x-mock-*` knob.
pub(crate) fn invalid_knob(message: String) -> Reply {
    GoogleError::invalid(message).into_reply()
}

/// What `x-mock-fault: error-event` makes of a unary answer.
pub(crate) fn overloaded(knobs: &Knobs) -> Reply {
    forced_error(503, knobs).into_reply()
}

/// Answers a request for the Gemini family.
pub(crate) fn route(cfg: &MockConfig, req: &Request, knobs: &Knobs) -> Reply {
    dispatch(cfg, req, knobs).unwrap_or_else(GoogleError::into_reply)
}

fn dispatch(cfg: &MockConfig, req: &Request, knobs: &Knobs) -> Result<Reply, GoogleError> {
    authenticate(cfg, req)?;
    if let Some(status) = knobs.status {
        return Err(forced_error(status, knobs));
    }
    let path = req.route();
    let rest = path
        .strip_prefix("/v1beta/")
        .or_else(|| path.strip_prefix("/v1/"))
        .unwrap_or(path);
    let not_found = || GoogleError::new(404, format!("Method not found: {} {path}", req.method));
    let method = |expected: &str| {
        if req.method == expected || (expected == "GET" && req.method == "HEAD") {
            Ok(())
        } else {
            Err(not_found())
        }
    };
    if rest == "models" {
        method("GET")?;
        return Ok(list_models());
    }
    let Some(target) = rest.strip_prefix("models/") else {
        return Err(not_found());
    };
    let Some((model, action)) = target.rsplit_once(':') else {
        method("GET")?;
        return get_model(target);
    };
    if model.is_empty() || model.contains('/') {
        return Err(not_found());
    }
    method("POST")?;
    match action {
        "generateContent" => generate(req, knobs, model, None),
        "streamGenerateContent" => {
            let sse = query_param(req, "alt").as_deref() == Some("sse");
            generate(req, knobs, model, Some(sse))
        }
        "countTokens" => count_tokens(req),
        "embedContent" => embed_content(cfg, req),
        "batchEmbedContents" => batch_embed_contents(cfg, req),
        _ => Err(not_found()),
    }
}

fn authenticate(cfg: &MockConfig, req: &Request) -> Result<(), GoogleError> {
    let key = req
        .header("x-goog-api-key")
        .map(str::to_owned)
        .or_else(|| query_param(req, "key"))
        .filter(|k| !k.trim().is_empty());
    let Some(key) = key else {
        return Err(GoogleError::new(
            403,
            "Method doesn't allow unregistered callers (callers without established \
             identity). Please use API Key or other form of API consumer identity to call this \
             API.",
        ));
    };
    match &cfg.api_key {
        Some(expected) if *expected != key.trim() => Err(GoogleError::invalid(
            "API key not valid. Please pass a valid API key.",
        )
        .details(json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }]))),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// `obj[camel]`, or `obj[snake]` (the API accepts both spellings).
fn field<'a>(obj: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    obj.get(camel)
        .or_else(|| obj.get(snake))
        .filter(|v| !v.is_null())
}

fn parse(req: &Request) -> Result<Map<String, Value>, GoogleError> {
    json_object(req)
        .ok_or_else(|| GoogleError::invalid("Invalid JSON payload received. Unexpected token."))
}

/// Input tokens of one `Content` (`{role, parts}`).
fn content_tokens(content: &Value) -> u64 {
    let Some(Value::Array(parts)) = content.get("parts") else {
        return 0;
    };
    let mut chars = 0;
    let mut media = 0;
    for part in parts {
        let Value::Object(part) = part else { continue };
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            chars += text.chars().count();
        }
        for key in ["inlineData", "inline_data", "fileData", "file_data"] {
            if part.contains_key(key) {
                media += 1;
            }
        }
        for key in [
            "functionCall",
            "function_call",
            "functionResponse",
            "function_response",
        ] {
            if let Some(call) = part.get(key) {
                chars += json_len(call);
            }
        }
    }
    text_tokens(chars) + media * MEDIA_TOKENS
}

/// Checks `contents` and counts the prompt tokens of a
/// `GenerateContentRequest`.
fn prompt_tokens(obj: &Map<String, Value>) -> Result<u64, GoogleError> {
    let contents =
        match obj.get("contents") {
            None | Some(Value::Null) => {
                return Err(GoogleError::invalid(
                    "* GenerateContentRequest.contents: contents is not specified\n",
                ))
            }
            Some(Value::Array(contents)) if contents.is_empty() => {
                return Err(GoogleError::invalid(
                    "* GenerateContentRequest.contents: contents is not specified\n",
                ))
            }
            Some(Value::Array(contents)) => contents,
            Some(_) => return Err(GoogleError::invalid(
                "Invalid value at 'contents' (type.googleapis.com/google.ai.generativelanguage.\
                 v1beta.Content), expected a list.",
            )),
        };
    let mut tokens = 0;
    for (i, content) in contents.iter().enumerate() {
        match content.get("role").and_then(Value::as_str) {
            None | Some("user" | "model" | "function" | "tool") => {}
            Some(_) => {
                return Err(GoogleError::invalid(
                    "Please use a valid role: user, model.",
                ))
            }
        }
        match content.get("parts") {
            Some(Value::Array(parts)) if !parts.is_empty() => {}
            _ => {
                return Err(GoogleError::invalid(format!(
                    "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be \
                     empty.\n"
                )))
            }
        }
        tokens += content_tokens(content);
    }
    if let Some(system) = field(obj, "systemInstruction", "system_instruction") {
        tokens += content_tokens(system);
    }
    if let Some(tools) = obj.get("tools").filter(|t| !t.is_null()) {
        tokens += text_tokens(json_len(tools));
    }
    Ok(tokens)
}

/// Text of the last user turn (function responses do not count, so the turn
/// after a function call gets a text answer).
fn last_user_text(obj: &Map<String, Value>) -> String {
    let Some(Value::Array(contents)) = obj.get("contents") else {
        return String::new();
    };
    contents
        .iter()
        .rev()
        .find(|c| matches!(c.get("role").and_then(Value::as_str), None | Some("user")))
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn tools(obj: &Map<String, Value>) -> (Vec<ToolDecl>, ToolMode) {
    let mut decls = Vec::new();
    if let Some(Value::Array(tools)) = obj.get("tools") {
        for tool in tools.iter().filter_map(Value::as_object) {
            let Some(Value::Array(functions)) =
                field(tool, "functionDeclarations", "function_declarations")
            else {
                continue;
            };
            for function in functions.iter().filter_map(Value::as_object) {
                let Some(name) = function.get("name").and_then(Value::as_str) else {
                    continue;
                };
                decls.push(ToolDecl {
                    name: name.to_owned(),
                    description: function
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    schema: function
                        .get("parameters")
                        .filter(|p| !p.is_null())
                        .or_else(|| {
                            field(function, "parametersJsonSchema", "parameters_json_schema")
                        })
                        .cloned(),
                });
            }
        }
    }
    let config = field(obj, "toolConfig", "tool_config")
        .and_then(Value::as_object)
        .and_then(|c| field(c, "functionCallingConfig", "function_calling_config"))
        .and_then(Value::as_object);
    let allowed: Vec<&str> = config
        .and_then(|c| field(c, "allowedFunctionNames", "allowed_function_names"))
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mode = match config
        .and_then(|c| c.get("mode"))
        .and_then(Value::as_str)
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("NONE") => ToolMode::None,
        Some("ANY") => match allowed.first() {
            Some(name) => ToolMode::Named((*name).to_owned()),
            None => ToolMode::Any,
        },
        _ => ToolMode::Auto,
    };
    (decls, mode)
}

fn count_tokens(req: &Request) -> Result<Reply, GoogleError> {
    let obj = parse(req)?;
    let inner = field(&obj, "generateContentRequest", "generate_content_request")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or(obj);
    let tokens = prompt_tokens(&inner)?;
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct CountTokens {
        total_tokens: u64,
        prompt_tokens_details: [ModalityCount; 1],
    }
    let body = CountTokens {
        total_tokens: tokens,
        prompt_tokens_details: [ModalityCount {
            modality: "TEXT",
            token_count: tokens,
        }],
    };
    Ok(body_reply(200, Some(JSON_UTF8), to_json(&body)))
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct ModalityCount {
    modality: &'static str,
    token_count: u64,
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: u64,
    candidates_token_count: u64,
    total_token_count: u64,
    cached_content_token_count: u64,
    thoughts_token_count: u64,
    prompt_tokens_details: [ModalityCount; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCall<'a> {
    name: &'a str,
    args: &'a Value,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Part<'a> {
    Text {
        text: &'a str,
    },
    FunctionCall {
        #[serde(rename = "functionCall")]
        function_call: FunctionCall<'a>,
    },
}

#[derive(Serialize)]
struct Content<'a> {
    parts: [Part<'a>; 1],
    role: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
    index: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse<'a> {
    candidates: [Candidate<'a>; 1],
    usage_metadata: UsageMetadata,
    model_version: &'a str,
    response_id: &'a str,
}

struct Call {
    name: String,
    args: Value,
}

/// Everything needed to answer `generateContent`, unary or streamed.
struct Plan {
    model: String,
    response_id: String,
    prompt_tokens: u64,
    script: Script,
    call: Option<Call>,
    /// Output tokens of the function call.
    call_tokens: u64,
    finish_reason: &'static str,
    /// `Some(true)`: SSE; `Some(false)`: streamed JSON array; `None`: unary.
    stream: Option<bool>,
}

impl Plan {
    fn usage(&self, candidates: u64) -> UsageMetadata {
        UsageMetadata {
            prompt_token_count: self.prompt_tokens,
            candidates_token_count: candidates,
            total_token_count: self.prompt_tokens + candidates,
            cached_content_token_count: 0,
            thoughts_token_count: 0,
            prompt_tokens_details: [ModalityCount {
                modality: "TEXT",
                token_count: self.prompt_tokens,
            }],
        }
    }

    fn output_tokens(&self) -> u64 {
        match self.call {
            Some(_) => self.call_tokens,
            None => self.script.len(),
        }
    }

    fn response(&self, part: Part<'_>, finish: bool, candidates: u64) -> String {
        to_json_string(&GenerateContentResponse {
            candidates: [Candidate {
                content: Content {
                    parts: [part],
                    role: "model",
                },
                finish_reason: finish.then_some(self.finish_reason),
                index: 0,
            }],
            usage_metadata: self.usage(candidates),
            model_version: &self.model,
            response_id: &self.response_id,
        })
    }

    fn call_part(&self) -> Option<Part<'_>> {
        self.call.as_ref().map(|call| Part::FunctionCall {
            function_call: FunctionCall {
                name: &call.name,
                args: &call.args,
            },
        })
    }

    fn unary(&self) -> String {
        match self.call_part() {
            Some(part) => self.response(part, true, self.output_tokens()),
            None => {
                let text = self.script.text();
                self.response(Part::Text { text: &text }, true, self.output_tokens())
            }
        }
    }

    /// Response chunks: one per token (at least one), or one for a call.
    fn chunk_count(&self) -> u64 {
        match self.call {
            Some(_) => 1,
            None => self.script.len().max(1),
        }
    }

    fn chunk(&self, i: u64) -> String {
        let last = i + 1 == self.chunk_count();
        if let Some(part) = self.call_part() {
            return self.response(part, true, self.output_tokens());
        }
        let text = if i < self.script.len() {
            self.script.token(i)
        } else {
            "".into()
        };
        let candidates = (i + 1).min(self.script.len());
        self.response(Part::Text { text: &text }, last, candidates)
    }

    fn event_count(&self) -> u64 {
        // The JSON array ends with its own "]" event.
        self.chunk_count() + u64::from(self.stream == Some(false))
    }

    fn event(&self, i: u64) -> String {
        let n = self.chunk_count();
        match self.stream {
            Some(false) if i == n => "]".to_owned(),
            Some(false) => {
                let prefix = if i == 0 { "[" } else { ",\r\n" };
                let mut out = prefix.to_owned();
                out.push_str(&self.chunk(i));
                out
            }
            _ => {
                let json = self.chunk(i);
                let mut out = String::with_capacity(json.len() + 10);
                out.push_str("data: ");
                out.push_str(&json);
                out.push_str("\r\n\r\n");
                out
            }
        }
    }

    fn error_event(&self) -> String {
        let error = GoogleError::new(503, "The model is overloaded. Please try again later.");
        let body = String::from_utf8_lossy(&error.body()).into_owned();
        match self.stream {
            Some(false) => format!(",\r\n{body}]"),
            _ => format!("data: {body}\r\n\r\n"),
        }
    }
}

fn generate(
    req: &Request,
    knobs: &Knobs,
    model: &str,
    stream: Option<bool>,
) -> Result<Reply, GoogleError> {
    let obj = parse(req)?;
    let prompt_tokens = prompt_tokens(&obj)?;
    let empty = Map::new();
    let config = match field(&obj, "generationConfig", "generation_config") {
        None => &empty,
        Some(Value::Object(config)) => config,
        Some(_) => {
            return Err(GoogleError::invalid(
                "Invalid value at 'generation_config' (type.googleapis.com/google.ai.\
                 generativelanguage.v1beta.GenerationConfig), expected an object.",
            ))
        }
    };
    let cap = match field(config, "maxOutputTokens", "max_output_tokens") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            GoogleError::invalid(format!(
                "Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32), {v}"
            ))
        })?),
    };
    let stops = stop_sequences(field(config, "stopSequences", "stop_sequences"));
    let json_mode = field(config, "responseMimeType", "response_mime_type").and_then(Value::as_str)
        == Some("application/json");
    let (decls, mode) = tools(&obj);
    let tool = pick_tool(
        &decls,
        &mode,
        knobs.tool_call.as_deref(),
        &last_user_text(&obj),
    );
    let (script, stop) = if json_mode {
        let schema = field(config, "responseSchema", "response_schema")
            .or_else(|| field(config, "responseJsonSchema", "response_json_schema"));
        let value = match schema {
            Some(schema) => sample_value(Some(schema), ""),
            None => json!({"text": completion_text(u64::from(knobs.tokens))}),
        };
        Script::pieces(&to_json_string(&value), cap)
    } else {
        Script::words(knobs.tokens, cap, &stops)
    };
    let call = tool.map(|tool| Call {
        args: sample_value(tool.schema.as_ref(), ""),
        name: tool.name,
    });
    let call_tokens = call
        .as_ref()
        .map_or(0, |c| text_tokens(c.name.len() + json_len(&c.args)));
    let finish_reason = match (&call, stop) {
        (None, Stop::MaxTokens) => "MAX_TOKENS",
        _ => "STOP",
    };
    let plan = Plan {
        model: model.to_owned(),
        response_id: random_alnum(22),
        prompt_tokens,
        script,
        call,
        call_tokens,
        finish_reason,
        stream,
    };
    let Some(sse) = stream else {
        return Ok(body_reply(200, Some(JSON_UTF8), plan.unary().into_bytes()));
    };
    let content_type = if sse { "text/event-stream" } else { JSON_UTF8 };
    let error = plan.error_event();
    let mut reply = stream_reply(
        content_type,
        SseEvents {
            count: plan.event_count() as usize,
            event: Box::new(move |i| plan.event(i as u64)),
            error: Some(error),
        },
    );
    if !sse {
        reply.headers.retain(|(name, _)| *name != "cache-control");
    }
    Ok(reply)
}

// ---------------------------------------------------------------------------
// Embeddings and models
// ---------------------------------------------------------------------------

fn embedding(cfg: &MockConfig, request: &Map<String, Value>) -> Result<Value, GoogleError> {
    let Some(content) = request.get("content").filter(|c| c.is_object()) else {
        return Err(GoogleError::invalid(
            "* EmbedContentRequest.content: content is not specified\n",
        ));
    };
    let text: String = content
        .get("parts")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let dim = field(request, "outputDimensionality", "output_dimensionality")
        .and_then(Value::as_u64)
        .filter(|d| (1..=65_536).contains(d))
        .map_or(cfg.embedding_dim, |d| d as usize);
    Ok(json!({"values": embedding_vector(fnv1a(0, text.as_bytes()), dim)}))
}

fn embed_content(cfg: &MockConfig, req: &Request) -> Result<Reply, GoogleError> {
    let obj = parse(req)?;
    let body = json!({"embedding": embedding(cfg, &obj)?});
    Ok(body_reply(200, Some(JSON_UTF8), to_json(&body)))
}

fn batch_embed_contents(cfg: &MockConfig, req: &Request) -> Result<Reply, GoogleError> {
    let obj = parse(req)?;
    let Some(Value::Array(requests)) = obj.get("requests") else {
        return Err(GoogleError::invalid(
            "* BatchEmbedContentsRequest.requests: requests is not specified\n",
        ));
    };
    let embeddings = requests
        .iter()
        .map(|r| match r {
            Value::Object(r) => embedding(cfg, r),
            _ => Err(GoogleError::invalid("Invalid value at 'requests'.")),
        })
        .collect::<Result<Vec<Value>, GoogleError>>()?;
    let body = json!({"embeddings": embeddings});
    Ok(body_reply(200, Some(JSON_UTF8), to_json(&body)))
}

fn model_info(id: &str, display: &str, input: u64, output: u64) -> Value {
    let embedding = id.contains("embedding");
    let methods: &[&str] = if embedding {
        &["embedContent", "batchEmbedContents"]
    } else {
        &["generateContent", "countTokens", "streamGenerateContent"]
    };
    json!({
        "name": format!("models/{id}"),
        "version": "001",
        "displayName": display,
        "description": format!("{display} (wharf-mock)"),
        "inputTokenLimit": input,
        "outputTokenLimit": output,
        "supportedGenerationMethods": methods,
    })
}

fn list_models() -> Reply {
    let models: Vec<Value> = MODELS
        .iter()
        .map(|(id, display, input, output)| model_info(id, display, *input, *output))
        .collect();
    body_reply(200, Some(JSON_UTF8), to_json(&json!({"models": models})))
}

fn get_model(id: &str) -> Result<Reply, GoogleError> {
    MODELS
        .iter()
        .find(|(m, ..)| *m == id)
        .map(|(id, display, input, output)| {
            body_reply(
                200,
                Some(JSON_UTF8),
                to_json(&model_info(id, display, *input, *output)),
            )
        })
        .ok_or_else(|| GoogleError::new(404, format!("models/{id} is not found for API version v1beta, or is not supported for this method. Call ListModels to see the list of available models and their supported methods.")))
}
