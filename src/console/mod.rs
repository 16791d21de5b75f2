//! The admin web console: server-rendered HTML on the admin listener, in database mode.
//!
//! Its only back end is the admin API: every page and form calls [`crate::api::call`] with the
//! caller of the browser's session, so the console sees and changes exactly what that user's
//! admin token would (same organisation visibility, same role matrix, same validation). The
//! console itself only adds sign-in (argon2 passwords, [`crate::api::auth`]), sessions
//! (`console_sessions`, migration 0008), CSRF tokens and HTML.
//!
//! * `GET /login`, `POST /login`, `POST /logout`, `GET|POST /invite/{token}`.
//! * `/api/auth/{login, session, me, logout, password}`: the same sign-in as JSON.
//! * Platform pages (SUPER_ADMIN): `/admin/{dashboard, organisations, teams, users, …}`.
//! * Organisation pages: `/{organisation slug}/{dashboard, providers, models, …}`.
//! * Assets (compiled in): `/console/static/app.css`, `/console/static/app.js`.
//!
//! Templates are [maud] macros, checked and compiled into the binary; every interpolated value
//! is HTML-escaped. No external resource is loaded (the console works offline) and the
//! Content-Security-Policy allows only the console's own script and style.

mod auth_api;
mod chart;
mod once;
mod pages;
mod reports;
mod session;
mod view;

use crate::api::{ApiError, Caller};
use crate::control::state::State;
use crate::error::ErrorCode;
use http::Method;
use pingora::protocols::http::ServerSession;
use serde_json::Value;
use std::collections::HashMap;

pub use session::SESSION_COOKIE;

/// Largest form body the console reads.
const MAX_FORM_BYTES: usize = 1 << 20;

/// First path segments that are never console pages: the admin listener's own routes (the
/// API refuses them as organisation slugs, with the console's own, see
/// [`crate::api::resources::RESERVED_SLUGS`]).
const RESERVED: &[&str] = &["api", "v1", "v1beta", "metrics", "health", "healthz"];

/// Whether the console answers `path`: in database mode, every path of the admin listener
/// that is not one of its API or health routes, and the session routes `/api/auth/*`.
pub fn handles(state: &State, path: &str) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    state.db.is_some() && (!RESERVED.contains(&first) || auth_api::handles(path))
}

/// A parsed console request.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub cookies: HashMap<String, String>,
    pub form: Vec<(String, String)>,
    /// The request arrived over TLS (directly, or per `X-Forwarded-Proto` of a proxy).
    pub tls: bool,
    pub host: String,
    pub origin: Option<String>,
    pub user_agent: Option<String>,
    /// The client address: the TCP peer, or `X-Forwarded-For`'s client when the peer is one of
    /// `server.trusted_proxies` (as the proxy's governance reads it).
    pub client: Option<std::net::IpAddr>,
    /// `Content-Type` (the `/api/auth/*` routes take JSON).
    pub content_type: Option<String>,
    /// `X-CSRF-Token`: the session's CSRF token on `/api/auth/*` writes.
    pub csrf_header: Option<String>,
    /// The raw body of a POST or PUT.
    pub body: Vec<u8>,
}

impl Req {
    /// The last value of a query parameter (empty values count as absent).
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// The last value of a form field.
    pub fn f(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a form field (checkbox groups).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `http(s)://host` as the browser sees this listener.
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.host
        )
    }
}

/// A console answer.
pub struct Resp {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn html(status: u16, markup: maud::Markup) -> Resp {
        Resp {
            status,
            content_type: "text/html; charset=utf-8",
            headers: Vec::new(),
            body: markup.into_string().into_bytes(),
        }
    }

    /// 303 See Other to `location` (after a form, and for sign-in).
    pub fn redirect(location: &str) -> Resp {
        Resp {
            status: 303,
            content_type: "text/plain; charset=utf-8",
            headers: vec![("location", location.to_string())],
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: String) -> Resp {
        self.headers.push((name, value));
        self
    }

    fn into_http(self) -> http::Response<Vec<u8>> {
        let mut b = http::Response::builder()
            .status(self.status)
            .header("content-type", self.content_type)
            .header("content-length", self.body.len())
            .header("x-content-type-options", "nosniff")
            .header("referrer-policy", "same-origin")
            .header("x-frame-options", "DENY");
        if self.content_type.starts_with("text/html") {
            b = b
                .header(
                    "content-security-policy",
                    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                )
                .header("cache-control", "no-store");
        }
        for (k, v) in self.headers {
            b = b.header(k, v);
        }
        b.body(self.body).unwrap_or_default()
    }
}

fn percent_decode_form(s: &str) -> String {
    crate::api::parse_query(Some(&format!("x={s}")))
        .pop()
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn parse_cookies(header: Option<&str>) -> HashMap<String, String> {
    header
        .unwrap_or("")
        .split(';')
        .filter_map(|c| {
            let (k, v) = c.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

async fn read(state: &State, http: &mut ServerSession) -> Result<Req, Resp> {
    let peer = http.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
    let h = http.req_header();
    let client = peer.map(|p| {
        let xff = h
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        crate::types::policy::client_ip(p, xff, &state.current().config.governance.trusted_proxies)
    });
    let header = |name: &str| {
        h.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let forwarded_tls = header("x-forwarded-proto").is_some_and(|p| p == "https");
    let tls = forwarded_tls || http.digest().and_then(|d| d.ssl_digest.as_ref()).is_some();
    let h = http.req_header();
    let mut req = Req {
        method: h.method.clone(),
        path: h.uri.path().to_string(),
        query: crate::api::parse_query(h.uri.query()),
        cookies: parse_cookies(
            h.headers
                .get(http::header::COOKIE)
                .and_then(|v| v.to_str().ok()),
        ),
        form: Vec::new(),
        tls,
        host: header("host").unwrap_or_else(|| "localhost".into()),
        origin: header("origin"),
        user_agent: header("user-agent"),
        client,
        content_type: header("content-type"),
        csrf_header: header("x-csrf-token"),
        body: Vec::new(),
    };
    if req.method == Method::POST || req.method == Method::PUT {
        let mut body = Vec::new();
        loop {
            match http.read_request_body().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_FORM_BYTES {
                        return Err(view::error_page(None, 413, "The form is too large."));
                    }
                }
                Ok(None) => break,
                Err(_) => return Err(view::error_page(None, 400, "The form could not be read.")),
            }
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        req.body = body;
        req.form = text
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (percent_decode_form(k), percent_decode_form(v)),
                None => (percent_decode_form(p), String::new()),
            })
            .collect();
    }
    Ok(req)
}

/// Answers one console request.
pub async fn handle(state: &State, http: &mut ServerSession) -> http::Response<Vec<u8>> {
    let resp = match read(state, http).await {
        Ok(req) => route(state, req).await,
        Err(resp) => resp,
    };
    resp.into_http()
}

/// Whether a request is the playground relay, which [`stream`] answers.
pub fn streams(state: &State, h: &pingora::http::RequestHeader) -> bool {
    let segs: Vec<&str> = h.uri.path().trim_matches('/').split('/').collect();
    h.method == Method::POST
        && state.db.is_some()
        && segs.len() == 3
        && segs[1] == "playground"
        && segs[2] == "chat"
        && !RESERVED.contains(&segs[0])
}

/// `POST /{org}/playground/chat`: checks the session and its CSRF token, then sends the chat
/// to the gateway's own proxy listener with the key the user pasted, and streams the
/// gateway's answer back chunk by chunk (its status, content type and `x-request-id`).
pub async fn stream(state: &State, http: &mut ServerSession) {
    if let Err(resp) = relay(state, http).await {
        let (parts, body) = resp.into_http().into_parts();
        let header: pingora::http::ResponseHeader = parts.into();
        if http.write_response_header(Box::new(header)).await.is_ok() && !body.is_empty() {
            let _ = http.write_response_body(body.into(), true).await;
        }
    }
}

/// The gateway's proxy listener as seen from this process.
pub(crate) fn loopback_gateway(state: &State) -> String {
    let snap = state.current();
    let listen = &snap.config.server.listen;
    let port = listen.rsplit_once(':').map(|(_, p)| p).unwrap_or("8080");
    let scheme = if snap.config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://127.0.0.1:{port}")
}

/// An HTTP client for the gateway's own proxy listener.
pub(crate) fn loopback_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        // Our own listener on the loopback interface (its certificate names the public host).
        .danger_accept_invalid_certs(true)
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())
}

async fn relay(state: &State, http: &mut ServerSession) -> Result<(), Resp> {
    let req = read(state, http).await?;
    let session = match session::current(state, &req).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(view::error_page(None, 401, "Sign in again.")),
        Err(e) => return Err(view::error_page(None, e.status(), &e.message)),
    };
    session::check_csrf(&session, &req)?;
    let slug = req
        .path
        .trim_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let cx = Cx {
        state,
        session,
        req,
    };
    let scope = pages::resolve_scope(&cx, &slug).await?;
    if scope.org.is_none() {
        return Err(view::error_page(Some(&cx), 404, "Not found."));
    }
    let key = cx.req.f("key").unwrap_or("").trim().to_string();
    let stream = cx.req.f("stream") == Some("true");
    let body = match playground_body(&cx.req, stream) {
        Ok(b) => b,
        Err(msg) => {
            let e = ApiError::invalid("playground", msg);
            let r = e.reply();
            return Err(Resp {
                status: r.status,
                content_type: r.content_type,
                headers: Vec::new(),
                body: r.body.to_vec(),
            });
        }
    };
    let client = loopback_client().map_err(|e| view::error_page(Some(&cx), 500, &e))?;
    let mut up = client
        .post(format!("{}/v1/chat/completions", loopback_gateway(state)))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .map_err(|e| {
            view::error_page(Some(&cx), 502, &format!("the gateway did not answer: {e}"))
        })?;
    let mut header = pingora::http::ResponseHeader::build(up.status().as_u16(), Some(4))
        .map_err(|e| view::error_page(Some(&cx), 500, &e.to_string()))?;
    let ct = up
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let rid = up
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let _ = header.insert_header("content-type", ct);
    let _ = header.insert_header("x-request-id", rid);
    let _ = header.insert_header("cache-control", "no-store");
    let _ = header.insert_header("transfer-encoding", "chunked");
    if http.write_response_header(Box::new(header)).await.is_err() {
        return Ok(());
    }
    while let Ok(Some(chunk)) = up.chunk().await {
        if http.write_response_body(chunk, false).await.is_err() {
            return Ok(());
        }
    }
    let _ = http.finish_body().await;
    Ok(())
}

/// The chat request of a playground form: the system prompt, the earlier turns (`history`, a
/// JSON array of `{role, content}` with roles `user` and `assistant`), the new message, and
/// the parameters given (`temperature` 0–2, `max_tokens` ≥ 1).
fn playground_body(req: &Req, stream: bool) -> Result<Value, String> {
    let mut messages = Vec::new();
    if let Some(sys) = req.f("system").map(str::trim).filter(|s| !s.is_empty()) {
        messages.push(serde_json::json!({"role": "system", "content": sys}));
    }
    if let Some(h) = req.f("history").map(str::trim).filter(|s| !s.is_empty()) {
        let turns: Vec<Value> =
            serde_json::from_str(h).map_err(|e| format!("history: invalid JSON: {e}"))?;
        if turns.len() > 100 {
            return Err("history: at most 100 turns".into());
        }
        for t in turns {
            match (t["role"].as_str(), t["content"].as_str()) {
                (Some(role @ ("user" | "assistant")), Some(content)) => {
                    messages.push(serde_json::json!({"role": role, "content": content}))
                }
                _ => return Err("history: each turn is {role: user|assistant, content}".into()),
            }
        }
    }
    messages.push(serde_json::json!({"role": "user", "content": req.f("prompt").unwrap_or("")}));
    let mut body = serde_json::json!({
        "model": req.f("model").unwrap_or(""),
        "messages": messages,
        "stream": stream,
    });
    if let Some(t) = req
        .f("temperature")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let v: f64 = t
            .parse()
            .ok()
            .filter(|v: &f64| (0.0..=2.0).contains(v))
            .ok_or("temperature: a number from 0 to 2")?;
        body["temperature"] = serde_json::json!(v);
    }
    if let Some(m) = req.f("max_tokens").map(str::trim).filter(|s| !s.is_empty()) {
        let v: u32 = m
            .parse()
            .ok()
            .filter(|v: &u32| *v >= 1)
            .ok_or("max_tokens: a whole number of at least 1")?;
        body["max_tokens"] = serde_json::json!(v);
    }
    Ok(body)
}

/// A signed-in request: the session, its caller, and the request.
pub struct Cx<'a> {
    pub state: &'a State,
    pub session: session::Session,
    pub req: Req,
}

impl Cx<'_> {
    pub fn caller(&self) -> &Caller {
        &self.session.caller
    }

    /// One admin API call as the session's user; the JSON answer (`Null` for 204).
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        query: Vec<(String, String)>,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let reply = crate::api::call(self.state, self.caller(), method, path, query, body).await?;
        if reply.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&reply.body).map_err(ApiError::internal)
    }

    /// The first 500 rows of a list route (`GET path?limit=500`, its `data`), as the pages'
    /// pickers and name tables use them; empty when the caller may not list them.
    pub async fn list(&self, path: &str) -> Vec<Value> {
        self.api(
            Method::GET,
            path,
            vec![("limit".into(), "500".into())],
            None,
        )
        .await
        .ok()
        .and_then(|v| v["data"].as_array().cloned())
        .unwrap_or_default()
    }

    /// `GET` of an API path.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.api(Method::GET, path, Vec::new(), None).await
    }

    /// The raw reply of an API call (CSV exports).
    pub async fn raw(
        &self,
        path: &str,
        query: Vec<(String, String)>,
    ) -> Result<crate::respond::Reply, ApiError> {
        crate::api::call(self.state, self.caller(), Method::GET, path, query, None).await
    }
}

/// The page of an API error: its status and message.
pub fn api_error_page(cx: &Cx<'_>, e: &ApiError) -> Resp {
    let status = e.status();
    let msg = match e.code {
        ErrorCode::NotFound => "Not found.".to_string(),
        _ => e.message.clone(),
    };
    view::error_page(Some(cx), status, &msg)
}

async fn route(state: &State, req: Req) -> Resp {
    let segs: Vec<String> = req
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get = req.method == Method::GET || req.method == Method::HEAD;
    let post = req.method == Method::POST;
    if auth_api::handles(&req.path) {
        return auth_api::route(state, req, &segs).await;
    }
    match (segs.as_slice(), get, post) {
        (["console", "static", "app.css"], true, _) => return view::asset_css(),
        (["console", "static", "app.js"], true, _) => return view::asset_js(),
        (["favicon.ico"], true, _) => return view::error_page(None, 404, "No icon."),
        (["login"], true, _) => return session::login_page(state, &req, None).await,
        (["login"], _, true) => return session::login(state, req).await,
        (["invite", token], true, _) => return session::invite_page(state, &req, token).await,
        (["invite", token], _, true) => {
            let token = token.to_string();
            return session::invite_accept(state, req, &token).await;
        }
        _ => {}
    }
    if !get && !post {
        return view::error_page(None, 405, "Use GET or POST.");
    }
    // Everything else needs a session.
    let session = match session::current(state, &req).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            if get {
                let next = if req.path == "/" {
                    String::new()
                } else {
                    format!("?next={}", view::url_encode(&req.path))
                };
                return Resp::redirect(&format!("/login{next}"));
            }
            return view::error_page(None, 401, "Your session has ended: sign in again.");
        }
        Err(e) => return view::error_page(None, e.status(), &e.message),
    };
    if post {
        if let Err(resp) = session::check_csrf(&session, &req) {
            return resp;
        }
    }
    let cx = Cx {
        state,
        session,
        req,
    };
    match segs.as_slice() {
        [] => Resp::redirect(&cx.session.home()),
        ["logout"] if post => session::logout(&cx).await,
        [scope] => Resp::redirect(&format!("/{scope}/dashboard")),
        [scope, rest @ ..] => pages::dispatch(&cx, scope, rest).await,
    }
}
