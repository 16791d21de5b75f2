//! The data-plane route table (SPEC §1.1, the routes of the gateway core).

use super::body::BodyKind;
use crate::config::ProviderKind;
use crate::error::{ErrorCode, GatewayError};
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
}

/// The provider family a native route is pinned to (SPEC §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Family {
    /// Whether a provider of `kind` belongs to this family.
    pub fn admits(self, kind: ProviderKind) -> bool {
        match self {
            Family::OpenAi => kind.is_openai_family(),
            Family::Anthropic => kind == ProviderKind::Anthropic,
            Family::Gemini => kind == ProviderKind::Google,
        }
    }

    /// Human name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Family::OpenAi => "OpenAI-compatible",
            Family::Anthropic => "Anthropic",
            Family::Gemini => "Gemini",
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
        }
    }

    /// The family a proxied route is pinned to.
    pub fn family(self) -> Family {
        match self {
            Route::Messages | Route::CountTokens => Family::Anthropic,
            Route::GeminiGenerate | Route::GeminiStream => Family::Gemini,
            _ => Family::OpenAi,
        }
    }

    /// Probes and scrapes leave no usage record (they would drown the real traffic).
    pub fn records_usage(self) -> bool {
        !matches!(
            self,
            Route::Health | Route::Healthz | Route::Metrics | Route::Status
        )
    }

    /// Whether the route needs a virtual key.
    pub fn needs_key(self) -> bool {
        self.records_usage()
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
            _ => "",
        }
    }
}

/// The model name in a Gemini path (`/v1beta/models/{model}:action`), if the path is one.
pub fn gemini_model(path: &str) -> Option<(&str, Route)> {
    let rest = path.strip_prefix("/v1beta/models/")?;
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
        p if gemini_model(p).is_some() => match gemini_model(p) {
            Some((_, r)) => (r, &[Method::POST]),
            None => unreachable_route(p)?,
        },
        "/v1/responses" => (Route::Responses, &[Method::POST]),
        "/v1/embeddings" => (Route::Embeddings, &[Method::POST]),
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
    }
}
