//! The admin listener: the console, the admin API, and the answers both listeners give
//! (in [`crate::endpoints`]). Bind it to an internal address.

use crate::control::state::State;
use crate::endpoints::{health, healthz, is_operator, metrics_reply, status, status_view};
use crate::error::{ErrorCode, GatewayError};
use crate::respond::error as error_reply;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

/// The admin listener: health, readiness, metrics, status. Nothing here needs a key; bind it
/// to an internal address.
pub struct AdminApp {
    pub state: Arc<State>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, http: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = http.req_header().uri.path().to_string();
        if crate::console::handles(&self.state, &path) {
            return crate::console::handle(&self.state, http).await;
        }
        if crate::api::handles(&path) {
            let reply = crate::api::handle(&self.state, http).await;
            return http::Response::builder()
                .status(reply.status)
                .header("content-type", reply.content_type)
                .header("content-length", reply.body.len())
                .body(reply.body.to_vec())
                .unwrap_or_default();
        }
        let get = http.req_header().method == http::Method::GET
            || http.req_header().method == http::Method::HEAD;
        let reply = match path.as_str() {
            "/v1/health" | "/health" if get => health(),
            "/v1/healthz" | "/healthz" if get => healthz(&self.state),
            // With an operator token configured, the metrics need it here too (the console
            // shares this listener); without one they stay open, as an internal listener's.
            "/metrics" if get => {
                let snap = self.state.current();
                let h = &http.req_header().headers;
                if snap.config.server.operator_token.is_none() || is_operator(&snap, h) {
                    metrics_reply()
                } else {
                    error_reply(&GatewayError::new(
                        ErrorCode::Unauthorized,
                        "send the operator token: Authorization: Bearer <token>",
                    ))
                }
            }
            "/api/status" if get => {
                match status_view(&self.state, &http.req_header().headers).await {
                    Ok(view) => status(&self.state, &view),
                    Err(r) => r,
                }
            }
            "/v1/health" | "/health" | "/v1/healthz" | "/healthz" | "/metrics" | "/api/status" => {
                error_reply(&GatewayError::new(ErrorCode::MethodNotAllowed, "use GET"))
            }
            _ => error_reply(&GatewayError::new(
                ErrorCode::NotFound,
                format!("no route for {path}"),
            )),
        };
        http::Response::builder()
            .status(reply.status)
            .header("content-type", reply.content_type)
            .header("content-length", reply.body.len())
            .body(reply.body.to_vec())
            .unwrap_or_default()
    }
}

/// The admin listener's service: [`AdminApp`]'s complete answers, plus the one streamed
/// answer of the admin console (the playground relay), which a [`ServeHttp`] cannot write.
pub struct AdminListener {
    pub app: AdminApp,
}

#[async_trait]
impl pingora::apps::HttpServerApp for AdminListener {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &pingora::server::ShutdownWatch,
    ) -> Option<pingora::apps::ReusedHttpStream> {
        match http.read_request().await {
            Ok(true) => {}
            _ => return None,
        }
        if *shutdown.borrow() {
            http.set_keepalive(None);
        } else {
            http.set_keepalive(Some(60));
        }
        if crate::console::streams(&self.app.state, http.req_header()) {
            crate::console::stream(&self.app.state, &mut http).await;
        } else {
            // HEAD: GET's status and headers (its content-length included), never a body.
            // Every answer of this listener but the playground stream (a POST) passes here.
            let head = http.req_header().method == http::Method::HEAD;
            let (parts, body) = self.app.response(&mut http).await.into_parts();
            let header: pingora::http::ResponseHeader = parts.into();
            if http.write_response_header(Box::new(header)).await.is_err() {
                return None;
            }
            if !head
                && !body.is_empty()
                && http.write_response_body(body.into(), true).await.is_err()
            {
                return None;
            }
        }
        let settings = pingora::apps::HttpPersistentSettings::for_session(&http);
        match http.finish().await {
            Ok(c) => c.map(|s| pingora::apps::ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(_) => None,
        }
    }
}
