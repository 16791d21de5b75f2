//! The data-plane route table (SPEC §1.1, the routes of the gateway core).

use super::body::BodyKind;
use crate::error::{ErrorCode, GatewayError};
pub use crate::types::Family;
use http::Method;

/// A matched route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Healthz,
    Metrics,
    Status,
    Models,
    KeysValidate,
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Anthropic `POST /v1/messages/count_tokens`.
    CountTokens,
    /// Gemini `POST /v1beta/models/{model}:generateContent`.
    GeminiGenerate,
    /// Gemini `POST /v1beta/models/{model}:streamGenerateContent`.
    GeminiStream,
    /// `POST /v1/images/generations` (JSON).
    ImagesGenerations,
    /// `POST /v1/images/edits` (multipart).
    ImagesEdits,
    /// `POST /v1/images/variations` (multipart).
    ImagesVariations,
    /// `/v1/vllm/*`: raw pass-through to a VLLM provider.
    Vllm(VllmOp),
    /// `POST /v1/internal/cache/invalidate` (exists only with a configured secret).
    Invalidate,
    /// `POST /v1/llm/chat`: OpenAI-shaped request to any family, translated both ways.
    Unified,
    /// `/v1/mcp/{slug-or-id}[/path]`: the MCP gateway (`crate::mcp`).
    Mcp,
}

/// The `/v1/vllm/*` operations (SPEC §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VllmOp {
    Models,
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
    AudioTranscriptions,
    AudioTranslations,
    Tokenize,
    Detokenize,
    Pooling,
    Classify,
    Score,
    Rerank,
}

impl VllmOp {
    fn parse(rest: &str) -> Option<VllmOp> {
        Some(match rest {
            "models" => VllmOp::Models,
            "chat/completions" => VllmOp::ChatCompletions,
            "completions" => VllmOp::Completions,
            "responses" => VllmOp::Responses,
            "embeddings" => VllmOp::Embeddings,
            "audio/transcriptions" => VllmOp::AudioTranscriptions,
            "audio/translations" => VllmOp::AudioTranslations,
            "tokenize" => VllmOp::Tokenize,
            "detokenize" => VllmOp::Detokenize,
            "pooling" => VllmOp::Pooling,
            "classify" => VllmOp::Classify,
            "score" => VllmOp::Score,
            "rerank" => VllmOp::Rerank,
            _ => return None,
        })
    }

    /// The route label.
    pub fn name(self) -> &'static str {
        match self {
            VllmOp::Models => "/v1/vllm/models",
            VllmOp::ChatCompletions => "/v1/vllm/chat/completions",
            VllmOp::Completions => "/v1/vllm/completions",
            VllmOp::Responses => "/v1/vllm/responses",
            VllmOp::Embeddings => "/v1/vllm/embeddings",
            VllmOp::AudioTranscriptions => "/v1/vllm/audio/transcriptions",
            VllmOp::AudioTranslations => "/v1/vllm/audio/translations",
            VllmOp::Tokenize => "/v1/vllm/tokenize",
            VllmOp::Detokenize => "/v1/vllm/detokenize",
            VllmOp::Pooling => "/v1/vllm/pooling",
            VllmOp::Classify => "/v1/vllm/classify",
            VllmOp::Score => "/v1/vllm/score",
            VllmOp::Rerank => "/v1/vllm/rerank",
        }
    }

    /// Path on the vLLM server: OpenAI-compatible routes under the API root (`/v1`), vLLM's own
    /// (`/tokenize`, `/pooling`, ...) at the server root.
    pub fn upstream_path(self) -> (bool, &'static str) {
        match self {
            VllmOp::Models => (true, "/models"),
            VllmOp::ChatCompletions => (true, "/chat/completions"),
            VllmOp::Completions => (true, "/completions"),
            VllmOp::Responses => (true, "/responses"),
            VllmOp::Embeddings => (true, "/embeddings"),
            VllmOp::AudioTranscriptions => (true, "/audio/transcriptions"),
            VllmOp::AudioTranslations => (true, "/audio/translations"),
            VllmOp::Score => (true, "/score"),
            VllmOp::Rerank => (true, "/rerank"),
            VllmOp::Tokenize => (false, "/tokenize"),
            VllmOp::Detokenize => (false, "/detokenize"),
            VllmOp::Pooling => (false, "/pooling"),
            VllmOp::Classify => (false, "/classify"),
        }
    }
}

impl Route {
    /// Label for metrics and the usage record's `endpoint`.
    pub fn name(self) -> &'static str {
        match self {
            Route::Health => "/v1/health",
            Route::Healthz => "/v1/healthz",
            Route::Metrics => "/metrics",
            Route::Status => "/api/status",
            Route::Models => "/v1/models",
            Route::KeysValidate => "/v1/keys/validate",
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Responses => "/v1/responses",
            Route::Embeddings => "/v1/embeddings",
            Route::Messages => "/v1/messages",
            Route::CountTokens => "/v1/messages/count_tokens",
            Route::GeminiGenerate => "/v1beta/models/{model}:generateContent",
            Route::GeminiStream => "/v1beta/models/{model}:streamGenerateContent",
            Route::ImagesGenerations => "/v1/images/generations",
            Route::ImagesEdits => "/v1/images/edits",
            Route::ImagesVariations => "/v1/images/variations",
            Route::Vllm(op) => op.name(),
            Route::Invalidate => "/v1/internal/cache/invalidate",
            Route::Unified => "/v1/llm/chat",
            Route::Mcp => "/v1/mcp",
        }
    }

    /// The family a proxied route is pinned to.
    pub fn family(self) -> Family {
        match self {
            Route::Messages | Route::CountTokens => Family::Anthropic,
            Route::GeminiGenerate | Route::GeminiStream => Family::Gemini,
            Route::Vllm(_) => Family::Vllm,
            Route::Unified => Family::Unified,
            _ => Family::OpenAi,
        }
    }

    /// Probes and scrapes leave no usage record (they would drown the real traffic).
    pub fn records_usage(self) -> bool {
        !matches!(
            self,
            Route::Health | Route::Healthz | Route::Metrics | Route::Status | Route::Invalidate
        )
    }

    /// For proxied routes: how the body is inspected.
    pub fn body_kind(self) -> Option<BodyKind> {
        match self {
            Route::ChatCompletions => Some(BodyKind::Chat),
            Route::Completions => Some(BodyKind::Completions),
            Route::Responses => Some(BodyKind::Responses),
            Route::Embeddings => Some(BodyKind::Embeddings),
            Route::Messages => Some(BodyKind::Anthropic),
            Route::CountTokens => Some(BodyKind::AnthropicCount),
            Route::GeminiGenerate | Route::GeminiStream => Some(BodyKind::Gemini),
            Route::ImagesGenerations => Some(BodyKind::Image),
            Route::ImagesEdits | Route::ImagesVariations => Some(BodyKind::Multipart),
            Route::Vllm(VllmOp::ChatCompletions) => Some(BodyKind::Chat),
            Route::Vllm(VllmOp::Completions) => Some(BodyKind::Completions),
            Route::Vllm(VllmOp::AudioTranscriptions | VllmOp::AudioTranslations) => {
                Some(BodyKind::Multipart)
            }
            Route::Vllm(VllmOp::Models) => None,
            Route::Vllm(_) => Some(BodyKind::Generic),
            Route::Unified => Some(BodyKind::Generic),
            _ => None,
        }
    }

    /// The upstream path below the provider's API root.
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            Route::ChatCompletions => "/chat/completions",
            Route::Completions => "/completions",
            Route::Responses => "/responses",
            Route::Embeddings => "/embeddings",
            Route::Models => "/models",
            Route::Messages => "/messages",
            Route::CountTokens => "/messages/count_tokens",
            Route::GeminiGenerate => ":generateContent",
            Route::GeminiStream => ":streamGenerateContent",
            Route::ImagesGenerations => "/images/generations",
            Route::ImagesEdits => "/images/edits",
            Route::ImagesVariations => "/images/variations",
            Route::Vllm(op) => op.upstream_path().1,
            _ => "",
        }
    }
}

/// The model name in a Gemini path (`/v1beta/models/{model}:action`), if the path is one.
pub fn gemini_model(path: &str) -> Option<(&str, Route)> {
    // google-genai 3.x calls `v1` by default, earlier versions `v1beta`: both are Gemini routes
    // when the model carries a `:generateContent` / `:streamGenerateContent` action.
    let rest = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))?;
    let (model, action) = rest.rsplit_once(':')?;
    let route = match action {
        "generateContent" => Route::GeminiGenerate,
        "streamGenerateContent" => Route::GeminiStream,
        _ => return None,
    };
    (!model.is_empty() && !model.contains('/')).then_some((model, route))
}

fn unreachable_route(path: &str) -> Result<(Route, &'static [Method]), GatewayError> {
    Err(GatewayError::new(
        ErrorCode::NotFound,
        format!("no route for {path}"),
    ))
}

/// Matches a method and path; unknown paths are 404, known paths with another method 405.
pub fn match_route(method: &Method, path: &str) -> Result<Route, GatewayError> {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let (route, allowed): (Route, &[Method]) = match path {
        "/v1/health" | "/health" => (Route::Health, &[Method::GET, Method::HEAD]),
        "/v1/healthz" | "/healthz" => (Route::Healthz, &[Method::GET, Method::HEAD]),
        "/metrics" => (Route::Metrics, &[Method::GET]),
        "/api/status" => (Route::Status, &[Method::GET]),
        "/v1/models" => (Route::Models, &[Method::GET]),
        "/v1/keys/validate" => (Route::KeysValidate, &[Method::POST, Method::GET]),
        "/v1/chat/completions" => (Route::ChatCompletions, &[Method::POST]),
        "/v1/completions" => (Route::Completions, &[Method::POST]),
        "/v1/messages" => (Route::Messages, &[Method::POST]),
        "/v1/messages/count_tokens" => (Route::CountTokens, &[Method::POST]),
        "/v1/images/generations" => (Route::ImagesGenerations, &[Method::POST]),
        "/v1/internal/cache/invalidate" => (Route::Invalidate, &[Method::POST]),
        "/v1/llm/chat" => (Route::Unified, &[Method::POST]),
        "/v1/images/edits" => (Route::ImagesEdits, &[Method::POST]),
        "/v1/images/variations" => (Route::ImagesVariations, &[Method::POST]),
        "/v1/vllm/models" => (Route::Vllm(VllmOp::Models), &[Method::GET, Method::POST]),
        p if p.starts_with("/v1/vllm/") => match VllmOp::parse(&p["/v1/vllm/".len()..]) {
            Some(op) => (Route::Vllm(op), &[Method::POST]),
            None => unreachable_route(p)?,
        },
        p if gemini_model(p).is_some() => match gemini_model(p) {
            Some((_, r)) => (r, &[Method::POST]),
            None => unreachable_route(p)?,
        },
        "/v1/responses" => (Route::Responses, &[Method::POST]),
        "/v1/embeddings" => (Route::Embeddings, &[Method::POST]),
        p if p == "/v1/mcp" || p.starts_with("/v1/mcp/") => {
            (Route::Mcp, &[Method::GET, Method::POST, Method::DELETE])
        }
        _ => {
            return Err(GatewayError::new(
                ErrorCode::NotFound,
                format!("no route for {path}"),
            ))
        }
    };
    if allowed.contains(method) {
        Ok(route)
    } else {
        let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        let mut e = GatewayError::new(
            ErrorCode::MethodNotAllowed,
            format!(
                "{method} is not allowed on {path}; use {}",
                allow.join(", ")
            ),
        );
        e.extra.push(("allow", serde_json::json!(allow.join(", "))));
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches() {
        assert_eq!(
            match_route(&Method::POST, "/v1/chat/completions"),
            Ok(Route::ChatCompletions)
        );
        assert_eq!(
            match_route(&Method::GET, "/v1/chat/completions")
                .expect_err("405")
                .code,
            ErrorCode::MethodNotAllowed
        );
        assert_eq!(
            match_route(&Method::GET, "/v1/nope").expect_err("404").code,
            ErrorCode::NotFound
        );
        assert_eq!(
            match_route(&Method::POST, "/v1beta/models/gem-1:streamGenerateContent"),
            Ok(Route::GeminiStream)
        );
        assert_eq!(
            gemini_model("/v1beta/models/gem-1:generateContent"),
            Some(("gem-1", Route::GeminiGenerate))
        );
        assert_eq!(gemini_model("/v1beta/models/:generateContent"), None);
        assert_eq!(
            match_route(&Method::POST, "/v1/models/gem-1:generateContent"),
            Ok(Route::GeminiGenerate)
        );
        assert_eq!(
            match_route(&Method::GET, "/v1/models").map(|r| r.name()),
            Ok("/v1/models")
        );
    }
}
