//! The data-plane route table (SPEC §1.1, the routes of the gateway core).

use super::body::BodyKind;
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
    Responses,
    Embeddings,
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
            Route::Responses => "/v1/responses",
            Route::Embeddings => "/v1/embeddings",
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
            Route::Responses => Some(BodyKind::Responses),
            Route::Embeddings => Some(BodyKind::Embeddings),
            _ => None,
        }
    }

    /// The upstream path below the provider's API root.
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            Route::ChatCompletions => "/chat/completions",
            Route::Responses => "/responses",
            Route::Embeddings => "/embeddings",
            Route::Models => "/models",
            _ => "",
        }
    }
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
    }
}
