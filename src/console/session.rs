//! Sign-in, sessions and CSRF.
//!
//! * A session is a random 256-bit token in the `wharf_session` cookie (`HttpOnly`,
//!   `SameSite=Lax`, `Secure` over TLS, 12 hours, ended after 2 idle hours); `console_sessions` stores its SHA-256, its
//!   user and its CSRF token. The session acts as its user: role, organisation and status are
//!   read from `users` on every request, so a suspended user is signed out at once; suspension
//!   and password changes delete the user's sessions ([`crate::api::auth::set_password`]).
//! * Every form carries the session's CSRF token (`_csrf`), compared in constant time; a POST
//!   without it, or from another origin, is refused with 403. The sign-in form, which has no
//!   session yet, uses a double-submit cookie instead.

use super::view;
use super::{Cx, Req, Resp};
use crate::api::bootstrap::random_token;
use crate::api::{auth, ApiError, ApiResult, Caller, Role};
use crate::keys::KeyHash;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// The session cookie.
pub const SESSION_COOKIE: &str = "wharf_session";
/// The sign-in form's double-submit cookie.
const LOGIN_CSRF_COOKIE: &str = "wharf_login_csrf";
/// Session lifetime.
const SESSION_SECONDS: i64 = 12 * 3600;
/// A session unused for this long ends.
const IDLE_SECONDS: i64 = 2 * 3600;

/// A signed-in session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: Uuid,
    pub csrf: String,
    pub caller: Caller,
    pub name: Option<String>,
    /// Slug of the user's organisation.
    pub org_slug: Option<String>,
}

impl Session {
    /// Where the user lands after signing in.
    pub fn home(&self) -> String {
        match (&self.caller.role, &self.org_slug) {
            (Role::SuperAdmin, _) => "/admin/dashboard".into(),
            (_, Some(slug)) => format!("/{slug}/dashboard"),
            // A user outside every organisation has no pages: a 404 with a sign-out button.
            _ => "/no-organisation/dashboard".into(),
        }
    }
}

fn pool(state: &crate::control::state::State) -> ApiResult<PgPool> {
    crate::api::pool(state)
}

pub(super) fn cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
    tls: bool,
    same_site: &str,
) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite={same_site}{}",
        if tls { "; Secure" } else { "" }
    )
}

type SessionRow = (
    Uuid,
    String,
    Uuid,
    String,
    String,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    time::OffsetDateTime,
);

/// The session of the request's cookie, if valid.
pub async fn current(
    state: &crate::control::state::State,
    req: &Req,
) -> ApiResult<Option<Session>> {
    let Some(token) = req.cookies.get(SESSION_COOKIE).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let pool = pool(state)?;
    let row: Option<SessionRow> = sqlx::query_as(
        "SELECT s.id, s.csrf_token, u.id, u.email, u.role::text, u.organisation_id, u.name,
                o.slug, s.last_seen_at
         FROM console_sessions s JOIN users u ON u.id = s.user_id
         LEFT JOIN organisations o ON o.id = u.organisation_id
         WHERE s.token_hash = $1 AND s.expires_at > now() AND u.status = 'ACTIVE'
           AND s.last_seen_at > now() - make_interval(secs => $2)",
    )
    .bind(KeyHash::of(token).to_hex())
    .bind(IDLE_SECONDS as f64)
    .fetch_optional(&pool)
    .await?;
    let Some((id, csrf, user_id, email, role, organisation_id, name, org_slug, seen)) = row else {
        return Ok(None);
    };
    let Some(role) = Role::parse(&role) else {
        return Ok(None);
    };
    if time::OffsetDateTime::now_utc() - seen > time::Duration::minutes(1) {
        sqlx::query("UPDATE console_sessions SET last_seen_at = now() WHERE id = $1")
            .bind(id)
            .execute(&pool)
            .await?;
    }
    Ok(Some(Session {
        id,
        csrf,
        caller: Caller {
            user_id,
            email,
            role,
            organisation_id,
            token_id: id,
        },
        name,
        org_slug,
    }))
}

/// Starts a session for `user`: the `Set-Cookie` value and the session's CSRF token.
async fn start(pool: &PgPool, user: Uuid, req: &Req) -> ApiResult<(String, String)> {
    let token = random_token("");
    let csrf = random_token("");
    sqlx::query(
        "INSERT INTO console_sessions (user_id, token_hash, csrf_token, expires_at, user_agent)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)",
    )
    .bind(user)
    .bind(KeyHash::of(&token).to_hex())
    .bind(&csrf)
    .bind(SESSION_SECONDS as f64)
    .bind(
        req.user_agent
            .as_deref()
            .map(|s| s.chars().take(300).collect::<String>()),
    )
    .execute(pool)
    .await?;
    // Expired sessions are removed as new ones start.
    sqlx::query("DELETE FROM console_sessions WHERE expires_at < now() - interval '1 day'")
        .execute(pool)
        .await?;
    Ok((
        cookie(SESSION_COOKIE, &token, "/", SESSION_SECONDS, req.tls, "Lax"),
        csrf,
    ))
}

pub(super) fn same_origin(req: &Req) -> bool {
    match &req.origin {
        None => true,
        Some(o) => {
            let host = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"))
                .unwrap_or(o);
            host.eq_ignore_ascii_case(&req.host)
        }
    }
}

pub(super) fn eq_ct(a: &str, b: &str) -> bool {
    !a.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// 403 unless the form carries the session's CSRF token and comes from this origin.
pub fn check_csrf(session: &Session, req: &Req) -> Result<(), Resp> {
    let token = req.f("_csrf").unwrap_or("");
    if !same_origin(req) || !eq_ct(token, &session.csrf) {
        return Err(view::error_page(
            None,
            403,
            "The form's CSRF token is missing or invalid. Reload the page and try again.",
        ));
    }
    Ok(())
}

/// A local path to go to after signing in (never another site: browsers drop control
/// characters and read `\\` as `/`, so `/\t/x` and `/\\x` would leave the site).
fn safe_next(next: Option<&str>) -> Option<String> {
    next.filter(|n| {
        n.starts_with('/')
            && !n.starts_with("//")
            && !n.contains('\\')
            && !n.chars().any(char::is_control)
    })
    .map(str::to_string)
}

/// The pre-session CSRF token: the browser's current one when well formed, else a new one.
fn reuse_or_new(current: Option<&String>) -> String {
    match current {
        Some(t) if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) => t.clone(),
        _ => random_token(""),
    }
}

/// `GET /login` (and the form again after a failed attempt).
pub async fn login_page(
    state: &crate::control::state::State,
    req: &Req,
    error: Option<&str>,
) -> Resp {
    if error.is_none() {
        if let Ok(Some(s)) = current(state, req).await {
            return Resp::redirect(&s.home());
        }
    }
    // The same token for every sign-in page of this browser (several tabs, or a request
    // the browser makes on its own, must not invalidate the form already shown).
    let csrf = reuse_or_new(req.cookies.get(LOGIN_CSRF_COOKIE));
    let next = safe_next(req.q("next").or(req.f("next")));
    let email = req.f("email").unwrap_or("");
    Resp::html(
        if error.is_some() { 401 } else { 200 },
        view::login(&csrf, next.as_deref(), email, error),
    )
    .header(
        "set-cookie",
        cookie(LOGIN_CSRF_COOKIE, &csrf, "/login", 3600, req.tls, "Strict"),
    )
}

/// Sign-in throttling (per node, in memory). Failures are counted per client address, per
/// client and e-mail address together, and per e-mail address alone; a count is forgotten
/// [`FAILURE_WINDOW`] after its last failure, and refused attempts are not counted.
///
/// * One client (any e-mail): after [`CLIENT_FREE`] failures it is refused (429 with
///   `Retry-After`) for a delay that doubles with each further failure, from
///   [`FIRST_DELAY`] up to [`MAX_DELAY`].
/// * One client and one e-mail address: the same after [`PAIR_FREE`] failures; a successful
///   sign-in of that client to that address clears it.
/// * One e-mail address from anywhere: never refused (a stranger must not lock an account
///   out), only slowed: after [`ACCOUNT_FREE`] failures every attempt waits a delay that
///   doubles up to [`MAX_SLOWDOWN`]; a successful sign-in clears it.
///
/// Unknown and known e-mail addresses are counted alike, get the same answers and run the
/// same password hash ([`auth::check_login`]).
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
const CLIENT_FREE: u32 = 20;
const PAIR_FREE: u32 = 10;
const ACCOUNT_FREE: u32 = 10;
const FIRST_DELAY: Duration = Duration::from_secs(5);
const MAX_DELAY: Duration = Duration::from_secs(5 * 60);
const FIRST_SLOWDOWN: Duration = Duration::from_millis(250);
const MAX_SLOWDOWN: Duration = Duration::from_secs(2);
/// Entries kept per table before expired ones are swept.
const MAX_ENTRIES: usize = 10_000;

/// A count of failures and the time of the last one.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Failures {
    fn live(&self, now: Instant) -> bool {
        now.duration_since(self.last) < FAILURE_WINDOW
    }
}

/// `first`, doubled for each failure beyond `free`, capped at `max` (zero up to `free`).
fn backoff(count: u32, free: u32, first: Duration, max: Duration) -> Duration {
    if count < free {
        return Duration::ZERO;
    }
    let doublings = (count - free).min(20);
    first.saturating_mul(1u32 << doublings).min(max)
}

#[derive(Default)]
struct Throttle {
    clients: HashMap<std::net::IpAddr, Failures>,
    pairs: HashMap<(std::net::IpAddr, String), Failures>,
    accounts: HashMap<String, Failures>,
}

static THROTTLE: std::sync::LazyLock<std::sync::Mutex<Throttle>> =
    std::sync::LazyLock::new(Default::default);

fn throttle() -> std::sync::MutexGuard<'static, Throttle> {
    THROTTLE.lock().unwrap_or_else(|e| e.into_inner())
}

fn count_of<K: std::hash::Hash + Eq>(
    m: &HashMap<K, Failures>,
    k: &K,
    now: Instant,
) -> Option<Failures> {
    m.get(k).copied().filter(|f| f.live(now))
}

fn bump<K: std::hash::Hash + Eq>(m: &mut HashMap<K, Failures>, k: K, now: Instant) {
    if m.len() >= MAX_ENTRIES {
        m.retain(|_, f| f.live(now));
    }
    let f = m.entry(k).or_insert(Failures {
        count: 0,
        last: now,
    });
    if !f.live(now) {
        f.count = 0;
    }
    f.count += 1;
    f.last = now;
}

impl Throttle {
    /// How long this client must wait before trying `email` again (`None`: it may try now).
    fn refused_for(
        &self,
        client: Option<std::net::IpAddr>,
        email: &str,
        now: Instant,
    ) -> Option<Duration> {
        let client = client?;
        let wait = |f: Option<Failures>, free: u32| {
            f.map(|f| {
                let until = f.last + backoff(f.count, free, FIRST_DELAY, MAX_DELAY);
                until.saturating_duration_since(now)
            })
            .unwrap_or(Duration::ZERO)
        };
        let w = wait(count_of(&self.clients, &client, now), CLIENT_FREE).max(wait(
            count_of(&self.pairs, &(client, email.to_string()), now),
            PAIR_FREE,
        ));
        (!w.is_zero()).then_some(w)
    }

    /// How long an attempt on `email` is slowed down.
    fn slowdown(&self, email: &str, now: Instant) -> Duration {
        count_of(&self.accounts, &email.to_string(), now)
            .map(|f| backoff(f.count, ACCOUNT_FREE, FIRST_SLOWDOWN, MAX_SLOWDOWN))
            .unwrap_or(Duration::ZERO)
    }

    fn failed(&mut self, client: Option<std::net::IpAddr>, email: &str, now: Instant) {
        if let Some(c) = client {
            bump(&mut self.clients, c, now);
            bump(&mut self.pairs, (c, email.to_string()), now);
        }
        bump(&mut self.accounts, email.to_string(), now);
    }

    fn succeeded(&mut self, client: Option<std::net::IpAddr>, email: &str) {
        if let Some(c) = client {
            self.pairs.remove(&(c, email.to_string()));
        }
        self.accounts.remove(email);
    }
}

/// The outcome of a sign-in attempt (the console form and `POST /api/auth/login` alike).
pub enum SignIn {
    /// Signed in: the session's `Set-Cookie` value, its CSRF token and the user's home.
    Started {
        set_cookie: String,
        csrf: String,
        user: Uuid,
        home: String,
    },
    /// Wrong e-mail or password (the same answer for unknown and known addresses).
    Wrong,
    /// Throttled: try again in this many seconds.
    Refused(u64),
    Failed(ApiError),
}

/// Checks a password with the throttling above and starts a session when it is right.
pub async fn sign_in(
    state: &crate::control::state::State,
    req: &Req,
    email: &str,
    password: &str,
) -> SignIn {
    let pool = match pool(state) {
        Ok(p) => p,
        Err(e) => return SignIn::Failed(e),
    };
    let email = email.trim();
    let who = email.to_lowercase();
    let (refused, slowdown) = {
        let t = throttle();
        let now = Instant::now();
        (t.refused_for(req.client, &who, now), t.slowdown(&who, now))
    };
    if let Some(wait) = refused {
        return SignIn::Refused(wait.as_secs_f64().ceil().max(1.0) as u64);
    }
    if !slowdown.is_zero() {
        tokio::time::sleep(slowdown).await;
    }
    let user = match auth::check_login(&pool, email, password).await {
        Ok(u) => u,
        Err(e) => return SignIn::Failed(e),
    };
    let Some(user) = user else {
        throttle().failed(req.client, &who, Instant::now());
        return SignIn::Wrong;
    };
    throttle().succeeded(req.client, &who);
    match start(&pool, user, req).await {
        Ok((set_cookie, csrf)) => SignIn::Started {
            set_cookie,
            csrf,
            user,
            home: home_of(&pool, user).await,
        },
        Err(e) => SignIn::Failed(e),
    }
}

/// The CSRF check of the forms posted before a session exists (sign-in, invitation): same
/// origin, and the form's token equal to the sign-in CSRF cookie. `Some`: the 403 to answer.
fn refuse_signed_out_form(req: &Req) -> Option<Resp> {
    let form_token = req.f("_csrf").unwrap_or("");
    let cookie_token = req
        .cookies
        .get(LOGIN_CSRF_COOKIE)
        .map(String::as_str)
        .unwrap_or("");
    if same_origin(req) && eq_ct(form_token, cookie_token) {
        return None;
    }
    Some(view::error_page(
        None,
        403,
        "The form's CSRF token is missing or invalid. Reload the page and try again.",
    ))
}

/// `POST /login`.
pub async fn login(state: &crate::control::state::State, req: Req) -> Resp {
    if let Some(refused) = refuse_signed_out_form(&req) {
        return refused;
    }
    let email = req.f("email").unwrap_or("").to_string();
    let password = req.f("password").unwrap_or("").to_string();
    match sign_in(state, &req, &email, &password).await {
        SignIn::Refused(secs) => {
            let mut r = login_page(
                state,
                &req,
                Some(&format!(
                    "Too many failed sign-ins from this address: try again in {secs} seconds."
                )),
            )
            .await;
            r.status = 429;
            r.header("retry-after", secs.to_string())
        }
        SignIn::Wrong => login_page(state, &req, Some("Wrong e-mail or password.")).await,
        SignIn::Failed(e) => view::error_page(None, e.status(), &e.message),
        SignIn::Started {
            set_cookie, home, ..
        } => {
            let target = safe_next(req.f("next")).unwrap_or(home);
            Resp::redirect(&target)
                .header("set-cookie", set_cookie)
                .header(
                    "set-cookie",
                    cookie(LOGIN_CSRF_COOKIE, "", "/login", 0, false, "Strict"),
                )
        }
    }
}

/// The landing page of a user (by role and organisation).
async fn home_of(pool: &PgPool, user: Uuid) -> String {
    let row: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT u.role::text, o.slug FROM users u
         LEFT JOIN organisations o ON o.id = u.organisation_id WHERE u.id = $1",
    )
    .bind(user)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    match row {
        Some((role, _)) if role == "SUPER_ADMIN" => "/admin/dashboard".into(),
        Some((_, Some(slug))) => format!("/{slug}/dashboard"),
        _ => "/no-organisation/dashboard".into(),
    }
}

/// `POST /logout`: ends the session.
pub async fn logout(cx: &Cx<'_>) -> Resp {
    if let Ok(pool) = pool(cx.state) {
        if let Err(e) = sqlx::query("DELETE FROM console_sessions WHERE id = $1")
            .bind(cx.session.id)
            .execute(&pool)
            .await
        {
            return view::error_page(None, 503, &ApiError::from(e).message);
        }
    }
    Resp::redirect("/login").header(
        "set-cookie",
        cookie(SESSION_COOKIE, "", "/", 0, cx.req.tls, "Lax"),
    )
}

/// `GET /invite/{token}`: the acceptance form.
pub async fn invite_page(state: &crate::control::state::State, req: &Req, token: &str) -> Resp {
    let pool = match pool(state) {
        Ok(p) => p,
        Err(e) => return view::error_page(None, e.status(), &e.message),
    };
    match auth::invitation(&pool, token).await {
        Ok(inv) => {
            let csrf = reuse_or_new(req.cookies.get(LOGIN_CSRF_COOKIE));
            Resp::html(200, view::invite(&inv, &csrf, None)).header(
                "set-cookie",
                cookie(LOGIN_CSRF_COOKIE, &csrf, "/invite", 3600, req.tls, "Strict"),
            )
        }
        Err(e) => view::error_page(None, e.status(), &e.message),
    }
}

/// `POST /invite/{token}`: creates the user, signs them in.
pub async fn invite_accept(state: &crate::control::state::State, req: Req, token: &str) -> Resp {
    if let Some(refused) = refuse_signed_out_form(&req) {
        return refused;
    }
    let form_token = req.f("_csrf").unwrap_or("");
    let pool = match pool(state) {
        Ok(p) => p,
        Err(e) => return view::error_page(None, e.status(), &e.message),
    };
    let password = req.f("password").unwrap_or("");
    if req.f("confirm").unwrap_or("") != password {
        return match auth::invitation(&pool, token).await {
            Ok(inv) => Resp::html(
                400,
                view::invite(&inv, form_token, Some("The two passwords differ.")),
            ),
            Err(e) => view::error_page(None, e.status(), &e.message),
        };
    }
    match auth::accept(&pool, token, req.f("name"), password).await {
        Ok((user, inv)) => match start(&pool, user, &req).await {
            Ok((set, _)) => Resp::redirect(&format!("/{}/dashboard", inv.organisation_slug))
                .header("set-cookie", set),
            Err(e) => view::error_page(None, e.status(), &e.message),
        },
        Err(e) if e.field.is_some() => match auth::invitation(&pool, token).await {
            Ok(inv) => Resp::html(e.status(), view::invite(&inv, form_token, Some(&e.message))),
            Err(e) => view::error_page(None, e.status(), &e.message),
        },
        Err(e) => view::error_page(None, e.status(), &e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_backs_off_per_client_and_only_slows_an_account() {
        let now = Instant::now();
        let mut t = Throttle::default();
        let stranger: std::net::IpAddr = "203.0.113.5".parse().expect("ip");
        let owner: std::net::IpAddr = "198.51.100.7".parse().expect("ip");
        for _ in 0..PAIR_FREE {
            assert_eq!(t.refused_for(Some(stranger), "root@x", now), None);
            t.failed(Some(stranger), "root@x", now);
        }
        assert_eq!(
            t.refused_for(Some(stranger), "root@x", now),
            Some(FIRST_DELAY)
        );
        // Another client is not refused for that address, only slowed down.
        assert_eq!(t.refused_for(Some(owner), "root@x", now), None);
        assert_eq!(t.slowdown("root@x", now), FIRST_SLOWDOWN);
        t.failed(Some(stranger), "root@x", now);
        assert_eq!(
            t.refused_for(Some(stranger), "root@x", now),
            Some(FIRST_DELAY * 2)
        );
        // The delay passes; the count is forgotten after the window.
        assert_eq!(
            t.refused_for(Some(stranger), "root@x", now + FIRST_DELAY * 2),
            None
        );
        assert_eq!(t.slowdown("root@x", now + FAILURE_WINDOW), Duration::ZERO);
        assert_eq!(backoff(100, 10, FIRST_DELAY, MAX_DELAY), MAX_DELAY);
        assert_eq!(backoff(100, 10, FIRST_SLOWDOWN, MAX_SLOWDOWN), MAX_SLOWDOWN);
        // Many addresses from one client: refused after CLIENT_FREE.
        let mut t = Throttle::default();
        for i in 0..CLIENT_FREE {
            assert_eq!(t.refused_for(Some(stranger), &format!("u{i}@x"), now), None);
            t.failed(Some(stranger), &format!("u{i}@x"), now);
        }
        assert!(t.refused_for(Some(stranger), "another@x", now).is_some());
        assert_eq!(t.refused_for(Some(owner), "another@x", now), None);
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(
            safe_next(Some("/acme/usage")).as_deref(),
            Some("/acme/usage")
        );
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "https://evil.example",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), None, "{bad:?}");
        }
    }
}
