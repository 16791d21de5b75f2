//! `/api/auth/*`: the console's sign-in as JSON, for scripts and single-page clients. Each
//! route is an alias of what the console's own pages do, with the same rules:
//!
//! * `POST /api/auth/login` `{"email","password"}`: the sign-in form (same throttling, same
//!   answer for unknown and known addresses); sets the session cookie and answers the user,
//!   its home page and the session's CSRF token.
//! * `GET /api/auth/session` (also `GET /api/auth/me`): the signed-in user, or 401.
//! * `POST /api/auth/logout`: ends the session (`POST /logout`).
//! * `PUT /api/auth/password` `{"password"}`: the own password (`PUT /api/me/password` as the
//!   session's user; other sessions end).
//!
//! Writes need `Content-Type: application/json` (a cross-site form cannot send it without a
//! CORS preflight, which this listener never grants) and no foreign `Origin`; writes with a
//! session also need its CSRF token in `X-CSRF-Token`. Errors use the admin API's envelope.

use super::session::{self, SignIn, SESSION_COOKIE};
use super::{Req, Resp};
use crate::api::{ApiError, Role};
use crate::control::state::State;
use crate::error::ErrorCode;
use http::Method;
use serde_json::{json, Value};

/// Whether `path` is one of these routes.
pub fn handles(path: &str) -> bool {
    path == "/api/auth" || path.starts_with("/api/auth/")
}

fn json(status: u16, v: &Value) -> Resp {
    Resp {
        status,
        content_type: "application/json",
        headers: vec![("cache-control", "no-store".into())],
        body: v.to_string().into_bytes(),
    }
}

fn error(e: &ApiError) -> Resp {
    let r = e.reply();
    Resp {
        status: r.status,
        content_type: r.content_type,
        headers: vec![("cache-control", "no-store".into())],
        body: r.body.to_vec(),
    }
}

fn fail(code: ErrorCode, message: &str) -> Resp {
    error(&ApiError::new(code, message))
}

/// 400/403 unless a write is JSON from this origin.
fn check_write(req: &Req) -> Result<(), Resp> {
    let json_body = req
        .content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/json"));
    if !json_body {
        return Err(fail(
            ErrorCode::InvalidRequest,
            "Content-Type must be application/json",
        ));
    }
    if !session::same_origin(req) {
        return Err(fail(ErrorCode::Forbidden, "cross-origin request refused"));
    }
    Ok(())
}

fn body(req: &Req) -> Result<serde_json::Map<String, Value>, Resp> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(error(&ApiError::invalid("body", "must be a JSON object"))),
        Err(e) => Err(error(&ApiError::invalid(
            "body",
            format!("invalid JSON: {e}"),
        ))),
    }
}

fn unauthorized() -> Resp {
    fail(ErrorCode::Unauthorized, "no session: sign in first")
}

fn user_json(s: &session::Session) -> Value {
    json!({
        "id": s.caller.user_id.to_string(),
        "email": s.caller.email,
        "name": s.name,
        "role": s.caller.role.as_str(),
        "organisation_id": s.caller.organisation_id.map(|o| o.to_string()),
        "organisation_slug": s.org_slug,
    })
}

/// Answers `/api/auth/*` (`segs`: the path's segments).
pub async fn route(state: &State, req: Req, segs: &[&str]) -> Resp {
    let Some(what) = segs.get(2).copied().filter(|_| segs.len() == 3) else {
        return fail(ErrorCode::NotFound, &format!("no route for {}", req.path));
    };
    match (what, &req.method) {
        ("login", &Method::POST) => login(state, &req).await,
        ("session" | "me", &Method::GET) => match session::current(state, &req).await {
            Ok(Some(s)) => json(
                200,
                &json!({"user": user_json(&s), "home": s.home(), "csrf_token": s.csrf}),
            ),
            Ok(None) => unauthorized(),
            Err(e) => error(&e),
        },
        ("logout", &Method::POST) => logout(state, &req).await,
        ("password", &Method::PUT) => password(state, &req).await,
        ("login" | "session" | "me" | "logout" | "password", m) => fail(
            ErrorCode::MethodNotAllowed,
            &format!("{m} is not allowed on {}", req.path),
        ),
        _ => fail(ErrorCode::NotFound, &format!("no route for {}", req.path)),
    }
}

async fn login(state: &State, req: &Req) -> Resp {
    if let Err(r) = check_write(req) {
        return r;
    }
    let b = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let field = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (email, password) = (field("email"), field("password"));
    if email.trim().is_empty() {
        return error(&ApiError::invalid("email", "is required"));
    }
    match session::sign_in(state, req, &email, &password).await {
        SignIn::Started {
            set_cookie,
            csrf,
            user,
            home,
        } => {
            let who = crate::api::pool(state).ok();
            let row: Option<(String, String, Option<uuid::Uuid>)> = match who {
                Some(pool) => sqlx::query_as(
                    "SELECT email, role::text, organisation_id FROM users WHERE id = $1",
                )
                .bind(user)
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten(),
                None => None,
            };
            let (email, role, org) = row.unwrap_or_default();
            json(
                200,
                &json!({
                    "user": {"id": user.to_string(), "email": email,
                             "role": Role::parse(&role).map(Role::as_str),
                             "organisation_id": org.map(|o| o.to_string())},
                    "home": home,
                    "csrf_token": csrf,
                }),
            )
            .header("set-cookie", set_cookie)
        }
        SignIn::Wrong => fail(ErrorCode::Unauthorized, "wrong e-mail or password"),
        SignIn::Refused(secs) => fail(
            ErrorCode::RpmExceeded,
            &format!("too many failed sign-ins from this address: try again in {secs} seconds"),
        )
        .header("retry-after", secs.to_string()),
        SignIn::Failed(e) => error(&e),
    }
}

/// The session of a write, with its CSRF token checked.
async fn session_of_write(state: &State, req: &Req) -> Result<session::Session, Resp> {
    check_write(req)?;
    let s = match session::current(state, req).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(unauthorized()),
        Err(e) => return Err(error(&e)),
    };
    if !session::eq_ct(req.csrf_header.as_deref().unwrap_or(""), &s.csrf) {
        return Err(fail(
            ErrorCode::Forbidden,
            "the X-CSRF-Token header is missing or invalid (GET /api/auth/session gives it)",
        ));
    }
    Ok(s)
}

async fn logout(state: &State, req: &Req) -> Resp {
    let s = match session_of_write(state, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let pool = match crate::api::pool(state) {
        Ok(p) => p,
        Err(e) => return error(&e),
    };
    if let Err(e) = sqlx::query("DELETE FROM console_sessions WHERE id = $1")
        .bind(s.id)
        .execute(&pool)
        .await
    {
        return error(&ApiError::from(e));
    }
    Resp {
        status: 204,
        content_type: "application/json",
        headers: vec![
            ("cache-control", "no-store".into()),
            (
                "set-cookie",
                session::cookie(SESSION_COOKIE, "", "/", 0, req.tls, "Lax"),
            ),
        ],
        body: Vec::new(),
    }
}

async fn password(state: &State, req: &Req) -> Resp {
    let s = match session_of_write(state, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let b = match body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match crate::api::call(
        state,
        &s.caller,
        Method::PUT,
        "/api/me/password",
        Vec::new(),
        Some(&Value::Object(b)),
    )
    .await
    {
        Ok(r) => Resp {
            status: r.status,
            content_type: r.content_type,
            headers: vec![("cache-control", "no-store".into())],
            body: r.body.to_vec(),
        },
        Err(e) => error(&e),
    }
}
