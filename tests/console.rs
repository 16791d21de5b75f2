//! The admin console end to end: a real `wharf` process in database mode (fresh database per
//! test), Redis for fan-out, the mock provider upstream. HTTP-level tests drive the console
//! like a browser (cookies, forms, CSRF tokens); the last test drives headless Chromium over
//! WebDriver.
#![allow(clippy::unwrap_used)]

mod common;

use common::db::TestDb;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ROOT: &str = "root@example.com";
const ROOT_PW: &str = "root-password-1";

async fn start(mock: &wharf_mock::MockServer, db: &TestDb) -> Gw {
    common::db::admin_node(mock, db).await
}

/// An admin API client acting with one token.
struct Api {
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rq = client().request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.base),
        );
        if !self.token.is_empty() {
            rq = rq.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let r = rq.send().await.unwrap();
        let st = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (st, v)
    }

    async fn create(&self, path: &str, body: Value) -> Value {
        let (st, v) = self.call("POST", path, Some(body.clone())).await;
        assert_eq!(st, 201, "POST {path} {body}: {v}");
        v
    }
}

fn id(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

/// A browser-like client: cookies kept by name, no automatic redirects.
struct Browser {
    base: String,
    http: reqwest::Client,
    cookies: HashMap<String, String>,
    /// Set-Cookie lines of the last answer.
    set_cookies: Vec<String>,
    extra: Vec<(&'static str, String)>,
}

struct Page {
    status: u16,
    location: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    /// The CSRF token of the page's first form.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"_csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field in {}", self.body));
        let rest = &self.body[at + "name=\"_csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

impl Browser {
    fn new(gw: &Gw) -> Browser {
        Browser {
            base: gw.admin_url(""),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            cookies: HashMap::new(),
            set_cookies: Vec::new(),
            extra: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, rq: reqwest::RequestBuilder) -> Page {
        let mut rq = rq.header("cookie", self.cookie_header());
        for (k, v) in &self.extra {
            rq = rq.header(*k, v);
        }
        let r = rq.send().await.unwrap();
        self.set_cookies = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for c in &self.set_cookies {
            let kv = c.split(';').next().unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            if c.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), v.to_string());
            }
        }
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let headers = r.headers().clone();
        let body = r.text().await.unwrap();
        Page {
            status,
            location,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let rq = self.http.get(format!("{}{path}", self.base));
        self.send(rq).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let rq = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(rq).await
    }

    /// Signs in through the login form; returns the answer to the form.
    async fn login(&mut self, email: &str, password: &str) -> Page {
        let p = self.get("/login").await;
        assert_eq!(p.status, 200, "{}", p.body);
        let csrf = p.csrf();
        self.post(
            "/login",
            &[("_csrf", &csrf), ("email", email), ("password", password)],
        )
        .await
    }

    /// Follows the 303 of a form that made a secret to its one-time page (200).
    async fn follow(&mut self, p: Page) -> Page {
        assert_eq!(p.status, 303, "{}", p.body);
        let at = p.location.expect("a redirect");
        assert!(at.contains("/once/"), "{at}");
        self.page(&at).await
    }

    /// GET, expecting 200; returns the page.
    async fn page(&mut self, path: &str) -> Page {
        let p = self.get(path).await;
        assert_eq!(p.status, 200, "GET {path}: {} {}", p.status, p.body);
        p
    }

    /// Submits a form found on `page_path` (its CSRF token) to `action`.
    async fn submit(&mut self, page_path: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.page(page_path).await.csrf();
        let mut form = vec![("_csrf", csrf.as_str())];
        form.extend_from_slice(fields);
        self.post(action, &form).await
    }
}

/// A migrated database, a gateway on it, the super admin with an API token and a console
/// password (set through the API).
struct Env {
    db: TestDb,
    gw: Gw,
    root: Api,
    _mock: wharf_mock::MockServer,
}

async fn env() -> Env {
    let db = TestDb::migrated().await;
    let mock = mock().await;
    let gw = start(&mock, &db).await;
    let token = wharf::api::bootstrap::bootstrap(&db.pool, Some(ROOT))
        .await
        .unwrap()
        .token;
    let root = Api {
        base: gw.admin_url(""),
        token,
    };
    let (st, v) = root
        .call(
            "PUT",
            "/api/me/password",
            Some(json!({"password": ROOT_PW})),
        )
        .await;
    assert_eq!(st, 204, "{v}");
    Env {
        db,
        gw,
        root,
        _mock: mock,
    }
}

/// An organisation (id) and a user in it with `role` and a console password.
async fn org_user(e: &Env, org: &str, email: &str, role: &str, password: &str) -> String {
    let u = e
        .root
        .create(
            "/api/admin/users",
            json!({"email": email, "organisation_id": org, "role": role}),
        )
        .await;
    let (st, v) = e
        .root
        .call(
            "PUT",
            &format!("/api/organisations/{org}/users/{}/password", id(&u)),
            Some(json!({ "password": password })),
        )
        .await;
    assert_eq!(st, 204, "{v}");
    id(&u)
}

async fn org(e: &Env, name: &str, slug: &str) -> String {
    id(&e
        .root
        .create(
            "/api/admin/organisations",
            json!({"name": name, "slug": slug}),
        )
        .await)
}

#[tokio::test]
async fn sign_in_session_cookie_and_logout() {
    let e = env().await;
    let mut b = Browser::new(&e.gw);

    // Signed out: pages redirect to the sign-in form.
    let p = b.get("/admin/dashboard").await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/login?next=/admin/dashboard"));
    let p = b.get("/").await;
    assert_eq!(p.location.as_deref(), Some("/login"));

    // The sign-in form carries a CSRF token bound to a cookie.
    let p = b.get("/login").await;
    assert_eq!(p.status, 200);
    assert!(p.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let csrf = p.csrf();
    assert!(b.set_cookies[0].contains("HttpOnly"), "{:?}", b.set_cookies);
    let no_csrf = b
        .post("/login", &[("email", ROOT), ("password", ROOT_PW)])
        .await;
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    assert!(!b.cookies.contains_key("wharf_session"));

    // Wrong password, unknown user: the same answer.
    let wrong = b
        .post(
            "/login",
            &[("_csrf", &csrf), ("email", ROOT), ("password", "nope-nope")],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("Wrong e-mail or password"),
        "{}",
        wrong.body
    );
    let unknown = b.login("ghost@example.com", ROOT_PW).await;
    assert_eq!(unknown.status, 401);
    assert!(!b.cookies.contains_key("wharf_session"));

    // Right password: a session cookie, HttpOnly, SameSite, not Secure over plain HTTP.
    let ok = b.login(ROOT, ROOT_PW).await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(ok.location.as_deref(), Some("/admin/dashboard"));
    let set = b
        .set_cookies
        .iter()
        .find(|c| c.starts_with("wharf_session="))
        .unwrap()
        .clone();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/"));
    assert!(!set.contains("Secure"), "{set}");
    let token = b.cookies["wharf_session"].clone();
    // Stored as a hash only.
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM console_sessions")
        .fetch_all(&e.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![sha(&token)]);

    let dash = b.page("/admin/dashboard").await;
    assert!(dash.body.contains(ROOT) && dash.body.contains("SUPER_ADMIN"));
    // `next` brings the user back where they were going, but only to this site.
    let mut b2 = Browser::new(&e.gw);
    let p = b2.get("/login?next=/admin/users").await;
    let csrf2 = p.csrf();
    let p = b2
        .post(
            "/login",
            &[
                ("_csrf", &csrf2),
                ("email", ROOT),
                ("password", ROOT_PW),
                ("next", "//evil.example.com/x"),
            ],
        )
        .await;
    assert_eq!(p.location.as_deref(), Some("/admin/dashboard"));

    // Behind a TLS-terminating proxy the cookie is Secure.
    let mut tls = Browser::new(&e.gw);
    tls.extra.push(("x-forwarded-proto", "https".into()));
    let p = tls.login(ROOT, ROOT_PW).await;
    assert_eq!(p.status, 303);
    assert!(
        tls.set_cookies
            .iter()
            .any(|c| c.starts_with("wharf_session=") && c.contains("; Secure")),
        "{:?}",
        tls.set_cookies
    );

    // Logout needs the CSRF token; it ends the session server-side.
    let p = b.post("/logout", &[]).await;
    assert_eq!(p.status, 403);
    assert_eq!(b.get("/admin/dashboard").await.status, 200);
    let csrf = b.page("/admin/dashboard").await.csrf();
    let p = b.post("/logout", &[("_csrf", &csrf)]).await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/login"));
    assert!(!b.cookies.contains_key("wharf_session"));
    b.cookies.insert("wharf_session".into(), token);
    let p = b.get("/admin/dashboard").await;
    assert_eq!(p.status, 303, "a logged-out session must not work again");

    // Repeated failures for one address are throttled, even with the right password then.
    let mut t = Browser::new(&e.gw);
    for _ in 0..10 {
        assert_eq!(t.login(ROOT, "wrong-password").await.status, 401);
    }
    let p = t.login(ROOT, ROOT_PW).await;
    assert_eq!(p.status, 429, "{}", p.body);
    assert!(p.body.contains("Too many failed sign-ins"));
    assert!(!t.cookies.contains_key("wharf_session"));

    // A session unused for two hours ends.
    let p = b2.get("/admin/dashboard").await;
    assert_eq!(p.status, 200);
    sqlx::query("UPDATE console_sessions SET last_seen_at = now() - interval '3 hours'")
        .execute(&e.db.pool)
        .await
        .unwrap();
    assert_eq!(b2.get("/admin/dashboard").await.status, 303, "idle session");
    assert_eq!(tls.get("/admin/dashboard").await.status, 303);
    sqlx::query("UPDATE console_sessions SET last_seen_at = now()")
        .execute(&e.db.pool)
        .await
        .unwrap();

    // A suspended user is signed out at once.
    let p = b2.get("/admin/dashboard").await;
    assert_eq!(p.status, 200);
    sqlx::query("UPDATE users SET status = 'SUSPENDED' WHERE email = $1")
        .bind(ROOT)
        .execute(&e.db.pool)
        .await
        .unwrap();
    assert_eq!(b2.get("/admin/dashboard").await.status, 303);
}

#[tokio::test]
async fn every_form_needs_the_csrf_token() {
    let e = env().await;
    let mut b = Browser::new(&e.gw);
    assert_eq!(b.login(ROOT, ROOT_PW).await.status, 303);
    let form = [("name", "Acme"), ("slug", "acme")];

    let p = b.post("/admin/organisations", &form).await;
    assert_eq!(p.status, 403, "missing token");
    assert!(p.body.contains("CSRF"), "{}", p.body);
    let p = b
        .post(
            "/admin/organisations",
            &[
                ("_csrf", "0".repeat(64).as_str()),
                ("name", "Acme"),
                ("slug", "acme"),
            ],
        )
        .await;
    assert_eq!(p.status, 403, "wrong token");
    // Another origin, right token: refused too.
    let csrf = b.page("/admin/organisations").await.csrf();
    b.extra.push(("origin", "http://evil.example.com".into()));
    let p = b
        .post(
            "/admin/organisations",
            &[("_csrf", &csrf), ("name", "Acme"), ("slug", "acme")],
        )
        .await;
    assert_eq!(p.status, 403, "cross-origin");
    b.extra.clear();
    let (_, list) = e.root.call("GET", "/api/admin/organisations", None).await;
    assert_eq!(list["total"], 0, "nothing was created: {list}");

    let p = b
        .post(
            "/admin/organisations",
            &[("_csrf", &csrf), ("name", "Acme"), ("slug", "acme")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let (_, list) = e.root.call("GET", "/api/admin/organisations", None).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["data"][0]["slug"], "acme");

    // The API's validation errors come back on the form, naming the field.
    let p = b
        .post(
            "/admin/organisations",
            &[("_csrf", &csrf), ("name", "Bad"), ("slug", "Not A Slug")],
        )
        .await;
    assert_eq!(p.status, 400);
    assert!(p.body.contains("slug: must match"), "{}", p.body);
    let p = b
        .post(
            "/admin/organisations",
            &[("_csrf", &csrf), ("name", "Dup"), ("slug", "acme")],
        )
        .await;
    assert_eq!(p.status, 409, "{}", p.body);
}

#[tokio::test]
async fn roles_are_enforced_as_in_the_api() {
    let e = env().await;
    let a = org(&e, "Alpha", "alpha").await;
    let bo = org(&e, "Beta", "beta").await;
    org_user(&e, &a, "admin@alpha.test", "ORG_ADMIN", "alpha-admin-pw").await;
    let user_id = org_user(&e, &a, "user@alpha.test", "USER", "alpha-user-pw").await;
    org_user(&e, &bo, "admin@beta.test", "ORG_ADMIN", "beta-admin-pw").await;

    // ORG_ADMIN: their organisation only; another one's pages are 404, as in the API.
    let mut adm = Browser::new(&e.gw);
    let p = adm.login("admin@alpha.test", "alpha-admin-pw").await;
    assert_eq!(p.location.as_deref(), Some("/alpha/dashboard"));
    for path in [
        "/alpha/dashboard",
        "/alpha/providers",
        "/alpha/users",
        "/alpha/budgets",
        "/alpha/invoices",
        "/alpha/apikeys",
    ] {
        adm.page(path).await;
    }
    for path in [
        "/beta/dashboard",
        "/beta/providers",
        "/beta/apikeys",
        "/admin/dashboard",
        "/admin/organisations",
    ] {
        let p = adm.get(path).await;
        assert_eq!(p.status, 404, "{path}: {}", p.body);
    }
    // Nor through a form aimed at the other organisation.
    let csrf = adm.page("/alpha/teams").await.csrf();
    let p = adm
        .post("/beta/teams", &[("_csrf", &csrf), ("name", "intruders")])
        .await;
    assert_eq!(p.status, 404);
    let p = adm
        .post("/alpha/teams", &[("_csrf", &csrf), ("name", "core")])
        .await;
    assert_eq!(p.status, 303, "{}", p.body);

    // USER: neither reads nor changes the catalog; budgets and invoices are forbidden.
    let mut usr = Browser::new(&e.gw);
    assert_eq!(
        usr.login("user@alpha.test", "alpha-user-pw").await.status,
        303
    );
    assert_eq!(usr.get("/alpha/providers").await.status, 403);
    let csrf = usr.page("/alpha/dashboard").await.csrf();
    let p = usr
        .post(
            "/alpha/providers",
            &[
                ("_csrf", &csrf),
                ("name", "p"),
                ("provider_type", "OPENAI"),
                ("base_url", "http://127.0.0.1:1/v1"),
            ],
        )
        .await;
    assert_eq!(p.status, 403, "{}", p.body);
    assert!(p.body.contains("USER may not"), "{}", p.body);
    assert_eq!(usr.get("/alpha/budgets").await.status, 403);
    assert_eq!(usr.get("/alpha/invoices").await.status, 403);
    // A USER sees only their own user row, and no invitations.
    let users = usr.page("/alpha/users").await;
    assert!(users.body.contains("user@alpha.test"));
    assert!(!users.body.contains("admin@alpha.test"), "{}", users.body);
    assert!(!users.body.contains("Invitations"));
    // …and may not set another user's password.
    let p = usr
        .post(
            &format!("/alpha/users/{user_id}/password"),
            &[("_csrf", &csrf), ("password", "another-password")],
        )
        .await;
    assert_eq!(p.status, 403, "{}", p.body);
    // MANAGER: keys for the teams they belong to, not for the others.
    let mgr = org_user(&e, &a, "manager@alpha.test", "MANAGER", "alpha-mgr-pw1").await;
    let mine = e
        .root
        .create(
            &format!("/api/organisations/{a}/teams"),
            json!({"name": "mine"}),
        )
        .await;
    let theirs = e
        .root
        .create(
            &format!("/api/organisations/{a}/teams"),
            json!({"name": "theirs"}),
        )
        .await;
    e.root
        .create(
            &format!("/api/organisations/{a}/teams/{}/members", id(&mine)),
            json!({ "user_id": mgr }),
        )
        .await;
    let mut m = Browser::new(&e.gw);
    assert_eq!(
        m.login("manager@alpha.test", "alpha-mgr-pw1").await.status,
        303
    );
    let p = m
        .submit(
            "/alpha/apikeys",
            "/alpha/apikeys",
            &[
                ("name", "k1"),
                ("key_type", "TEAM"),
                ("team_id", &id(&theirs)),
            ],
        )
        .await;
    assert_eq!(p.status, 403, "{}", p.body);
    assert!(p.body.contains("only for their own teams"), "{}", p.body);
    let p = m
        .submit(
            "/alpha/apikeys",
            "/alpha/apikeys",
            &[
                ("name", "k2"),
                ("key_type", "TEAM"),
                ("team_id", &id(&mine)),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    // Budgets: readable, not writable.
    let p = m
        .submit(
            "/alpha/budgets",
            "/alpha/budgets",
            &[("scope", "ORG"), ("amount_usd", "5"), ("period", "DAILY")],
        )
        .await;
    assert_eq!(p.status, 403, "{}", p.body);

    // The navigation leaves out what the role cannot open.
    let dash = usr.page("/alpha/dashboard").await;
    assert!(!dash.body.contains("/alpha/budgets"));
    assert!(dash.body.contains("/alpha/apikeys"));
}

/// Provider with a write-only key, a model, an API key created in the console: the secret is
/// shown exactly once, works against the gateway, and revocation and rotation take effect.
#[tokio::test]
async fn api_key_secret_is_shown_once_and_lifecycle_works() {
    let e = env().await;
    let a = org(&e, "Alpha", "alpha").await;
    org_user(&e, &a, "admin@alpha.test", "ORG_ADMIN", "alpha-admin-pw").await;
    let mut b = Browser::new(&e.gw);
    assert_eq!(
        b.login("admin@alpha.test", "alpha-admin-pw").await.status,
        303
    );

    // Provider, then its key (write-only).
    let base_url = format!("http://{}/v1", e.gw.mock_addr);
    let p = b
        .submit(
            "/alpha/providers",
            "/alpha/providers",
            &[
                ("name", "mockp"),
                ("provider_type", "OPENAI"),
                ("base_url", &base_url),
                ("enabled", "true"),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let provider_page = p.location.unwrap();
    let provider_page = provider_page.split('?').next().unwrap().to_string();
    let p = b
        .submit(
            &provider_page,
            &format!("{provider_page}/keys"),
            &[("name", "main"), ("secret", PROVIDER_KEY)],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let page = b.page(&provider_page).await;
    assert!(!page.body.contains(PROVIDER_KEY), "provider secret shown");
    assert!(page.body.contains("ACTIVE"));
    let provider_id = provider_page.rsplit('/').next().unwrap().to_string();

    // A model on it.
    let p = b
        .submit(
            "/alpha/models",
            "/alpha/models",
            &[
                ("name", "chat-x"),
                ("slug", "up-chat-x"),
                ("model_type", "chat"),
                ("provider_id", &provider_id),
                ("input_price_usd", "1.00"),
                ("output_price_usd", "$2"),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let model_id = p
        .location
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();

    // The API key: its secret is on the answer to the form, once.
    let p = b
        .submit(
            "/alpha/apikeys",
            "/alpha/apikeys",
            &[
                ("name", "ci"),
                ("key_type", "ORGANISATION"),
                ("models", &model_id),
            ],
        )
        .await;
    let p = b.follow(p).await;
    assert!(p.body.contains("data-copy=\"#secret\""), "copy button");
    let at = p.body.find("value=\"wharf_").expect("secret on the page");
    let rest = &p.body[at + 7..];
    let secret = rest[..rest.find('"').unwrap()].to_string();
    assert!(secret.len() > 20, "{secret}");
    let (_, keys) = e
        .root
        .call("GET", &format!("/api/organisations/{a}/api-keys"), None)
        .await;
    let key_id = id(&keys["data"][0]);
    for path in [
        "/alpha/apikeys".to_string(),
        format!("/alpha/apikeys/{key_id}"),
    ] {
        let page = b.page(&path).await;
        assert!(
            !page.body.contains(&secret),
            "{path} shows the secret again"
        );
    }
    assert!(b
        .page(&format!("/alpha/apikeys/{key_id}"))
        .await
        .body
        .contains("chat-x"));

    let chat = |key: String| {
        let url = e.gw.url("/v1/chat/completions");
        async move {
            client()
                .post(url)
                .bearer_auth(key)
                .json(&chat_body("chat-x", false))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let until = |want: u16, key: String| {
        let chat = &chat;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let st = chat(key.clone()).await;
                if st == want {
                    return;
                }
                assert!(Instant::now() < deadline, "still {st}, wanted {want}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    until(200, secret.clone()).await;

    // Revoke in the console: the gateway refuses the key; unrevoke: it works again.
    let key_page = format!("/alpha/apikeys/{key_id}");
    let p = b
        .submit(&key_page, &format!("{key_page}/revoke"), &[])
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(b.page(&key_page).await.body.contains("revoked"));
    until(401, secret.clone()).await;
    let p = b
        .submit(&key_page, &format!("{key_page}/unrevoke"), &[])
        .await;
    assert_eq!(p.status, 303);
    until(200, secret.clone()).await;

    // Rotation: a new secret, shown once; the old one stops working.
    let p = b
        .submit(&key_page, &format!("{key_page}/rotate"), &[])
        .await;
    let p = b.follow(p).await;
    let at = p.body.find("value=\"wharf_").expect("new secret");
    let rest = &p.body[at + 7..];
    let rotated = rest[..rest.find('"').unwrap()].to_string();
    assert_ne!(rotated, secret);
    until(200, rotated.clone()).await;
    until(401, secret.clone()).await;

    // Expiry and grants from the key page.
    let p = b
        .submit(&key_page, &format!("{key_page}/grants"), &[])
        .await;
    assert_eq!(p.status, 303);
    until(403, rotated.clone()).await;
    let p = b
        .submit(
            &key_page,
            &format!("{key_page}/grants"),
            &[("models", &model_id)],
        )
        .await;
    assert_eq!(p.status, 303);
    until(200, rotated.clone()).await;
    let p = b
        .submit(
            &key_page,
            &key_page,
            &[("name", "ci"), ("expires_at", "2020-01-01T00:00")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    until(401, rotated.clone()).await;
    assert!(b.page("/alpha/apikeys").await.body.contains("expired"));

    // Delete.
    let p = b
        .submit(&key_page, &format!("{key_page}/delete"), &[])
        .await;
    assert_eq!(p.status, 303);
    assert_eq!(b.get(&key_page).await.status, 404);
}

#[tokio::test]
async fn invitation_link_creates_a_signed_in_user() {
    let e = env().await;
    let a = org(&e, "Alpha", "alpha").await;
    org_user(&e, &a, "admin@alpha.test", "ORG_ADMIN", "alpha-admin-pw").await;
    let team = e
        .root
        .create(
            &format!("/api/organisations/{a}/teams"),
            json!({"name": "core"}),
        )
        .await;
    let mut adm = Browser::new(&e.gw);
    assert_eq!(
        adm.login("admin@alpha.test", "alpha-admin-pw").await.status,
        303
    );
    let p = adm
        .submit(
            "/alpha/users",
            "/alpha/users/invite",
            &[
                ("email", "new@alpha.test"),
                ("role", "MANAGER"),
                ("team_id", &id(&team)),
                ("team_role", "MANAGER"),
            ],
        )
        .await;
    let p = adm.follow(p).await;
    let at = p.body.find("/invite/").expect("invite link");
    let rest = &p.body[at..];
    let link = rest[..rest.find('"').unwrap()].to_string();
    assert!(adm.page("/alpha/users").await.body.contains("pending"));

    let mut new = Browser::new(&e.gw);
    let form = new.page(&link).await;
    assert!(form.body.contains("new@alpha.test") && form.body.contains("MANAGER"));
    let csrf = form.csrf();
    let p = new
        .post(
            &link,
            &[
                ("_csrf", &csrf),
                ("password", "first-pass-1"),
                ("confirm", "other-pass-1"),
            ],
        )
        .await;
    assert_eq!(p.status, 400, "passwords differ");
    let p = new
        .post(
            &link,
            &[
                ("_csrf", &csrf),
                ("password", "short"),
                ("confirm", "short"),
            ],
        )
        .await;
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(p.body.contains("at least 8"), "{}", p.body);
    let p = new
        .post(
            &link,
            &[("password", "first-pass-1"), ("confirm", "first-pass-1")],
        )
        .await;
    assert_eq!(p.status, 403, "no CSRF token");
    let p = new
        .post(
            &link,
            &[
                ("_csrf", &csrf),
                ("name", "New Person"),
                ("password", "first-pass-1"),
                ("confirm", "first-pass-1"),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location.as_deref(), Some("/alpha/dashboard"));
    let dash = new.page("/alpha/dashboard").await;
    assert!(
        dash.body.contains("new@alpha.test · MANAGER"),
        "{}",
        dash.body
    );
    // In the team, with the invited team role.
    let (_, members) = e
        .root
        .call(
            "GET",
            &format!("/api/organisations/{a}/teams/{}/members", id(&team)),
            None,
        )
        .await;
    assert_eq!(members["total"], 1, "{members}");
    assert_eq!(members["data"][0]["team_role"], "MANAGER");
    // The link works once; the password signs in.
    assert_eq!(Browser::new(&e.gw).get(&link).await.status, 404);
    assert_eq!(
        Browser::new(&e.gw)
            .login("new@alpha.test", "first-pass-1")
            .await
            .status,
        303
    );
    assert!(adm.page("/alpha/users").await.body.contains("accepted"));

    // An expired invitation is refused.
    let (_, inv) = e
        .root
        .call(
            "POST",
            &format!("/api/organisations/{a}/invitations"),
            Some(json!({"email": "late@alpha.test"})),
        )
        .await;
    sqlx::query(
        "UPDATE organisation_invitations SET created_at = now() - interval '2 days',
         expires_at = now() - interval '1 day' WHERE email = 'late@alpha.test'",
    )
    .execute(&e.db.pool)
    .await
    .unwrap();
    let p = Browser::new(&e.gw)
        .get(&format!("/invite/{}", inv["token"].as_str().unwrap()))
        .await;
    assert_eq!(p.status, 404);
    assert!(p.body.contains("expired"), "{}", p.body);
}

/// The API operations the console added: passwords and invitations.
#[tokio::test]
async fn password_and_invitation_api() {
    let e = env().await;
    let a = org(&e, "Alpha", "alpha").await;
    let bo = org(&e, "Beta", "beta").await;
    let adm_id = org_user(&e, &a, "admin@alpha.test", "ORG_ADMIN", "alpha-admin-pw").await;
    let beta_user = org_user(&e, &bo, "user@beta.test", "USER", "beta-user-pw1").await;
    let t = e
        .root
        .create(
            &format!("/api/admin/users/{adm_id}/tokens"),
            json!({"name": "t"}),
        )
        .await;
    let adm = Api {
        base: e.gw.admin_url(""),
        token: t["token"].as_str().unwrap().to_string(),
    };
    let (st, v) = adm
        .call(
            "PUT",
            "/api/me/password",
            Some(json!({"password": "short"})),
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["field"], "password");
    let (st, v) = adm
        .call(
            "PUT",
            "/api/me/password",
            Some(json!({"pass": "long-enough-1"})),
        )
        .await;
    assert_eq!((st, v["error"]["field"].as_str()), (400, Some("pass")));
    // Another organisation's user: 404; the platform route: 403.
    let (st, _) = adm
        .call(
            "PUT",
            &format!("/api/organisations/{bo}/users/{beta_user}/password"),
            Some(json!({"password": "long-enough-1"})),
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = adm
        .call(
            "PUT",
            &format!("/api/admin/users/{beta_user}/password"),
            Some(json!({"password": "long-enough-1"})),
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = adm
        .call(
            "PUT",
            &format!("/api/organisations/{a}/users/{beta_user}/password"),
            Some(json!({"password": "long-enough-1"})),
        )
        .await;
    assert_eq!(st, 404, "a user of another organisation is invisible");
    let hash: Option<String> =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE email = 'admin@alpha.test'")
            .fetch_one(&e.db.pool)
            .await
            .unwrap();
    assert!(hash.unwrap().starts_with("$argon2id$"));
    let (_, u) = adm
        .call(
            "GET",
            &format!("/api/organisations/{a}/users/{adm_id}"),
            None,
        )
        .await;
    assert!(u.get("password_hash").is_none(), "{u}");

    // Invitations: read and accepted with the token alone.
    let inv = adm
        .create(
            &format!("/api/organisations/{a}/invitations"),
            json!({"email": "inv@alpha.test", "role": "USER"}),
        )
        .await;
    let token = inv["token"].as_str().unwrap();
    let public = Api {
        base: e.gw.admin_url(""),
        token: String::new(),
    };
    let (st, v) = public
        .call("GET", &format!("/api/invitations/{token}"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["email"], "inv@alpha.test");
    assert_eq!(v["organisation"]["slug"], "alpha");
    let (st, _) = public
        .call("GET", "/api/invitations/wharf_inv_nope", None)
        .await;
    assert_eq!(st, 404);
    let (st, v) = public
        .call(
            "POST",
            &format!("/api/invitations/{token}/accept"),
            Some(json!({"password": "x"})),
        )
        .await;
    assert_eq!((st, v["error"]["field"].as_str()), (400, Some("password")));
    let (st, v) = public
        .call(
            "POST",
            &format!("/api/invitations/{token}/accept"),
            Some(json!({"name": "Inv", "password": "invited-pw-1"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["role"], "USER");
    let (st, _) = public
        .call(
            "POST",
            &format!("/api/invitations/{token}/accept"),
            Some(json!({"password": "invited-pw-1"})),
        )
        .await;
    assert_eq!(st, 404, "accepted once");
    // Slugs that are console or listener paths are refused.
    for slug in ["admin", "api", "login", "invite"] {
        let (st, v) = e
            .root
            .call(
                "POST",
                "/api/admin/organisations",
                Some(json!({"name": "X", "slug": slug})),
            )
            .await;
        assert_eq!(
            (st, v["error"]["field"].as_str()),
            (400, Some("slug")),
            "{slug}: {v}"
        );
    }
    // The OpenAPI document lists them; the invitation routes need no token.
    let (_, doc) = public.call("GET", "/api/openapi.json", None).await;
    assert!(doc["paths"]["/api/me/password"]["put"]["security"].is_array());
    assert!(doc["paths"]["/api/invitations/{token}/accept"]["post"]
        .get("security")
        .is_none());
}

/// Traffic through the gateway shows on the usage page, its CSV export, the dashboard, the
/// invoice; the playground relays a streamed chat and finds its usage record.
#[tokio::test]
async fn usage_dashboard_invoice_and_playground() {
    let e = env().await;
    let cat = common::db::seed_catalog(&e.db, &e._mock, "Alpha", "chat-x", "up-chat-x").await;
    let slug: String = sqlx::query_scalar("SELECT slug FROM organisations WHERE id = $1")
        .bind(cat.org)
        .fetch_one(&e.db.pool)
        .await
        .unwrap();
    let (_, secret) = common::db::seed_key(&e.db, cat.org, "ci", &[cat.model]).await;
    // The gateway learns the new catalog within a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rid = loop {
        let r = client()
            .post(e.gw.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&chat_body("chat-x", false))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break r.headers()["x-request-id"].to_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "{}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut b = Browser::new(&e.gw);
    assert_eq!(b.login(ROOT, ROOT_PW).await.status, 303);
    let usage_path = format!("/{slug}/usage");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = b.page(&usage_path).await;
        if p.body.contains(&rid) {
            break;
        }
        assert!(Instant::now() < deadline, "request not on the usage page");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Filtered by outcome: the successful request is there, not among the errors.
    let ok_page = b.page(&format!("{usage_path}?outcome=success")).await;
    assert!(ok_page.body.contains(&rid));
    let err_page = b.page(&format!("{usage_path}?outcome=error")).await;
    assert!(!err_page.body.contains(&rid));
    let csv = b
        .get(&format!("{usage_path}/export.csv?period=last_30_days"))
        .await;
    assert_eq!(csv.status, 200);
    assert!(csv.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert!(
        csv.body.starts_with("created_at,request_id"),
        "{}",
        csv.body
    );
    assert!(csv.body.contains(&rid));

    let dash = b.page(&format!("/{slug}/dashboard")).await;
    assert!(dash.body.contains("<svg"), "charts");
    let at = dash.body.find("stat-requests").expect("requests figure");
    let figure = &dash.body[at..];
    let figure = &figure[figure.find('>').unwrap() + 1..figure.find('<').unwrap()];
    // As many requests as usage records (a first call may have been refused while the new
    // catalog was propagating: it counts too).
    let (_, recs) = e
        .root
        .call(
            "GET",
            &format!(
                "/api/organisations/{}/usage/records?period=last_30_days",
                cat.org
            ),
            None,
        )
        .await;
    assert!(recs["total"].as_i64().unwrap() >= 1);
    assert_eq!(figure, recs["total"].to_string(), "{}", dash.body);
    assert!(dash.body.contains("chat-x"), "top models");
    // The last 24 hours are drawn from the hourly rollups: the same requests.
    let day = b
        .page(&format!("/{slug}/dashboard?period=last_24_hours"))
        .await;
    let at = day.body.find("stat-requests").expect("requests figure");
    let hourly = &day.body[at..];
    let hourly = &hourly[hourly.find('>').unwrap() + 1..hourly.find('<').unwrap()];
    assert_eq!(hourly, figure, "{}", day.body);
    assert!(day.body.contains("<svg"), "hourly charts");

    let inv = b.page(&format!("/{slug}/invoices")).await;
    assert!(inv.body.contains("chat-x") && inv.body.contains("By team"));
    let csv = b
        .get(&format!("/{slug}/invoices/export.csv?period=this_month"))
        .await;
    assert_eq!(csv.status, 200);
    assert!(csv.body.contains("model,chat-x"), "{}", csv.body);
    let print = b
        .page(&format!("/{slug}/invoices/print?period=this_month"))
        .await;
    assert!(print.body.contains("data-print") && !print.body.contains("nav class=\"side\""));

    // Playground: streamed through the gateway, then its usage record.
    let pg = b.page(&format!("/{slug}/playground")).await;
    let csrf = pg.csrf();
    let r = b
        .http
        .post(e.gw.admin_url(&format!("/{slug}/playground/chat")))
        .header("cookie", b.cookie_header())
        .form(&[
            ("_csrf", csrf.as_str()),
            ("key", secret.as_str()),
            ("model", "chat-x"),
            ("prompt", "Say hello"),
            ("stream", "true"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let prid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(sse_data(&body).len() > 2, "{body}");
    assert!(body.contains("[DONE]"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = b
            .get(&format!("/{slug}/playground/usage?request_id={prid}"))
            .await;
        let v: Value = serde_json::from_str(&p.body).unwrap();
        if v["request_id"] == prid.as_str() {
            assert!(v["cost_nanos"].as_i64().unwrap() > 0, "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no usage record for the playground"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The models of the pasted key, as the gateway lists them.
    let csrf = b.page(&format!("/{slug}/playground")).await.csrf();
    let p = b
        .post(
            &format!("/{slug}/playground/models"),
            &[("_csrf", csrf.as_str()), ("key", secret.as_str())],
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    let v: Value = serde_json::from_str(&p.body).unwrap();
    assert_eq!(v["data"][0]["id"], "chat-x", "{v}");
    let p = b
        .post(
            &format!("/{slug}/playground/models"),
            &[("_csrf", csrf.as_str()), ("key", "wharf_sk_unknown")],
        )
        .await;
    assert_eq!(p.status, 401, "{}", p.body);
    // Without the CSRF token the relay refuses.
    let r = b
        .http
        .post(e.gw.admin_url(&format!("/{slug}/playground/chat")))
        .header("cookie", b.cookie_header())
        .form(&[
            ("key", secret.as_str()),
            ("model", "chat-x"),
            ("prompt", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The API docs page names the gateway and the organisation's models.
    let docs = b.page(&format!("/{slug}/docs")).await;
    assert!(
        docs.body.contains(&format!("127.0.0.1:{}", e.gw.port)),
        "{}",
        docs.body
    );
    assert!(docs.body.contains("chat-x"));

    // The platform dashboard sums each organisation's month.
    let platform = b.page("/admin/dashboard").await;
    assert!(platform.body.contains("Organisations this month"));
    assert!(platform
        .body
        .contains(&format!("href=\"/{slug}/dashboard\"")));
    let at = platform.body.find("Requests this month").unwrap();
    let rest = &platform.body[at..];
    let rest = &rest[rest.find("class=\"v\">").unwrap() + 10..];
    let n: i64 = rest[..rest.find('<').unwrap()].parse().unwrap();
    assert!(n >= 2, "the chat and the playground request: {n}");

    // A budget burning down on the dashboard: the spend the gateway meters in its window
    // (traffic after it exists). One request like the first costs two thirds of it.
    let (st, recs) = e
        .root
        .call(
            "GET",
            &format!("/api/organisations/{}/usage/records?limit=500", cat.org),
            None,
        )
        .await;
    assert_eq!(st, 200, "{recs}");
    let cost = recs["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["request_id"] == rid.as_str())
        .and_then(|r| r["cost_nanos"].as_i64())
        .unwrap();
    assert!(cost > 0);
    let amount = cost * 3 / 2;
    let budget = e
        .root
        .create(
            &format!("/api/organisations/{}/budgets", cat.org),
            json!({"name": "org-monthly", "scope": "ORG", "amount_nanos": amount,
                "period": "MONTHLY", "warning_thresholds": [50]}),
        )
        .await;
    let marker = format!("data-budget-id=\"{}\"", id(&budget));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Refused once the gateway enforces the budget and it has no room: any answer will do.
        client()
            .post(e.gw.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&chat_body("chat-x", false))
            .send()
            .await
            .unwrap();
        let dash = b.page(&format!("/{slug}/dashboard")).await;
        let at = dash
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no burn-down of the budget: {}", dash.body));
        let row = &dash.body[at..at + dash.body[at..].find("</svg>").unwrap()];
        assert!(row.contains("org-monthly"), "{row}");
        assert!(row.contains(&format!("data-limit=\"{amount}\"")), "{row}");
        let spent: i64 = row
            .split("data-spent=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .parse()
            .unwrap();
        if spent * 2 >= amount {
            assert!(row.contains("1 threshold(s) crossed"), "{row}");
            assert!(row.contains("class=\"threshold crossed\""), "{row}");
            break;
        }
        assert!(Instant::now() < deadline, "no spend in the budget: {row}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The platform pages of organisation sections list every organisation's rows, with their
/// organisation, search and pages; create leads to the chosen organisation's form.
#[tokio::test]
async fn platform_lists_show_every_organisation() {
    let e = env().await;
    let mut ids = Vec::new();
    for (name, slug) in [("Alpha Org", "alpha"), ("Beta Org", "beta")] {
        let o = org(&e, name, slug).await;
        let p = e
            .root
            .create(
                &format!("/api/organisations/{o}/providers"),
                json!({"name": format!("{slug}-prov"), "provider_type": "OPENAI", "base_url": "http://127.0.0.1:9/v1"}),
            )
            .await;
        e.root
            .create(
                &format!("/api/organisations/{o}/models"),
                json!({"name": format!("{slug}-chat"), "slug": "up", "provider_id": id(&p)}),
            )
            .await;
        e.root
            .create(
                &format!("/api/organisations/{o}/api-keys"),
                json!({"name": format!("{slug}-key"), "key_type": "ORGANISATION"}),
            )
            .await;
        ids.push(o);
    }
    let mut b = Browser::new(&e.gw);
    assert_eq!(b.login(ROOT, ROOT_PW).await.status, 303);
    let p = b.page("/admin/models").await;
    for (slug, name) in [("alpha", "Alpha Org"), ("beta", "Beta Org")] {
        assert!(p.body.contains(&format!("{slug}-chat")), "{}", p.body);
        assert!(
            p.body
                .contains(&format!("<a href=\"/{slug}/models\">{name}</a>")),
            "{}",
            p.body
        );
        assert!(
            p.body.contains(&format!("href=\"/{slug}/models/")),
            "{}",
            p.body
        );
        // The provider column names the provider, across organisations.
        assert!(p.body.contains(&format!("{slug}-prov")), "{}", p.body);
    }
    assert!(!p.body.contains("Choose an organisation"), "{}", p.body);
    // Search: a row's text or its organisation.
    let p = b.page("/admin/models?q=BETA").await;
    assert!(
        p.body.contains("beta-chat") && !p.body.contains("alpha-chat"),
        "{}",
        p.body
    );
    let p = b.page("/admin/apikeys?q=alpha%20org").await;
    assert!(
        p.body.contains("alpha-key") && !p.body.contains("beta-key"),
        "{}",
        p.body
    );
    // Pages of the list keep the search.
    for i in 0..55 {
        e.root
            .create(
                &format!("/api/organisations/{}/teams", ids[i % 2]),
                json!({"name": format!("team-{i:02}")}),
            )
            .await;
    }
    let p = b.page("/admin/teams?q=team").await;
    assert!(p.body.contains("1–50 of 55"), "{}", p.body);
    assert!(
        p.body
            .contains("href=\"/admin/teams?q=team&amp;offset=50\""),
        "{}",
        p.body
    );
    let p = b.page("/admin/teams?q=team&offset=50").await;
    assert!(p.body.contains("51–55 of 55"), "{}", p.body);
    // Every platform list renders, with the Organisation column.
    for section in [
        "teams",
        "providers",
        "models",
        "mcp-servers",
        "apikeys",
        "budgets",
        "quotas",
    ] {
        let p = b.page(&format!("/admin/{section}")).await;
        assert!(
            p.body.contains("<th scope=\"col\">Organisation</th>"),
            "{section}: {}",
            p.body
        );
        assert!(
            p.body.contains("name=\"organisation\""),
            "{section}: {}",
            p.body
        );
    }
    // Usage, invoices and the playground stay organisation pages, through the picker.
    assert!(b
        .page("/admin/usage")
        .await
        .body
        .contains("Choose an organisation"));
    // Create: the chosen organisation's create form, opened.
    let p = b.get("/admin/models/new?organisation=beta").await;
    assert_eq!(p.status, 303);
    let to = p.location.unwrap();
    assert_eq!(to, "/beta/models?create=1#create");
    let p = b.page("/beta/models?create=1").await;
    assert!(
        p.body
            .contains("<details class=\"create\" id=\"create\" open"),
        "{}",
        p.body
    );
    let p = b.get("/admin/models/new?organisation=..%2Fevil").await;
    assert_eq!(p.location.as_deref(), Some("/admin/models"));
    // An ORG_ADMIN has no platform pages.
    org_user(
        &e,
        &ids[0],
        "admin@alpha.test",
        "ORG_ADMIN",
        "alpha-admin-pw",
    )
    .await;
    let mut adm = Browser::new(&e.gw);
    assert_eq!(
        adm.login("admin@alpha.test", "alpha-admin-pw").await.status,
        303
    );
    for path in [
        "/admin/models",
        "/admin/apikeys",
        "/admin/models/new?organisation=alpha",
    ] {
        assert_eq!(adm.get(path).await.status, 404, "{path}");
    }
}

/// A minimal WebDriver (W3C) client over the test's HTTP client: enough to drive Chromium.
mod webdriver {
    use serde_json::{json, Value};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

    pub struct Driver {
        child: Child,
        base: String,
        session: String,
        http: reqwest::Client,
        _profile: tempfile::TempDir,
    }

    fn find_binary(env: &str, names: &[&str]) -> Option<String> {
        if let Ok(p) = std::env::var(env) {
            return Some(p);
        }
        let path = std::env::var("PATH").unwrap_or_default();
        for n in names {
            for dir in path.split(':').chain(["/usr/bin", "/usr/lib/chromium"]) {
                let p = std::path::Path::new(dir).join(n);
                if p.is_file() {
                    return Some(p.display().to_string());
                }
            }
        }
        None
    }

    impl Driver {
        /// Starts chromedriver and a headless Chromium session. Panics (the test fails, it
        /// does not skip) when either is missing: `make deps` installs them.
        pub async fn start() -> Driver {
            let driver = find_binary("CHROMEDRIVER", &["chromedriver"]).expect(
                "chromedriver not found (set CHROMEDRIVER, or run `make deps` to install \
                 Debian's chromium and chromium-driver)",
            );
            let chrome = find_binary(
                "CHROME_BIN",
                &["chromium", "chromium-browser", "google-chrome"],
            )
            .expect("chromium not found (set CHROME_BIN, or run `make deps`)");
            let port = super::free_port();
            use std::os::unix::process::CommandExt;
            let child = Command::new(&driver)
                .arg(format!("--port={port}"))
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {driver}: {e}"));
            let base = format!("http://127.0.0.1:{port}");
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ready = http
                    .get(format!("{base}/status"))
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status() == 200)
                    .unwrap_or(false);
                if ready {
                    break;
                }
                assert!(Instant::now() < deadline, "chromedriver did not start");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let profile = tempfile::tempdir().unwrap();
            let caps = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chrome,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1280,1000",
                        format!("--user-data-dir={}", profile.path().display())],
                },
            }}});
            let r: Value = http
                .post(format!("{base}/session"))
                .json(&caps)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let session = r["value"]["sessionId"]
                .as_str()
                .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
                .to_string();
            Driver {
                child,
                base,
                session,
                http,
                _profile: profile,
            }
        }

        async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
            let url = format!("{}/session/{}{path}", self.base, self.session);
            let mut rq = self.http.request(method, url);
            if let Some(b) = body {
                rq = rq.json(&b);
            }
            let r: Value = rq.send().await.unwrap().json().await.unwrap();
            r["value"].clone()
        }

        pub async fn post(&self, path: &str, body: Value) -> Value {
            let v = self.cmd(reqwest::Method::POST, path, Some(body)).await;
            if let Some(e) = v.get("error") {
                panic!("WebDriver {path}: {e} {}", v["message"]);
            }
            v
        }

        async fn get(&self, path: &str) -> Value {
            self.cmd(reqwest::Method::GET, path, None).await
        }

        pub async fn goto(&self, url: &str) {
            self.post("/url", json!({ "url": url })).await;
        }

        pub async fn url(&self) -> String {
            self.get("/url")
                .await
                .as_str()
                .unwrap_or_default()
                .to_string()
        }

        pub async fn source(&self) -> String {
            self.get("/source")
                .await
                .as_str()
                .unwrap_or_default()
                .to_string()
        }

        pub async fn title(&self) -> String {
            self.get("/title")
                .await
                .as_str()
                .unwrap_or_default()
                .to_string()
        }

        /// The element matching `css`, waiting up to 15 s for it.
        pub async fn find(&self, css: &str) -> String {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let v = self
                    .cmd(
                        reqwest::Method::POST,
                        "/element",
                        Some(json!({"using": "css selector", "value": css})),
                    )
                    .await;
                if let Some(id) = v[ELEMENT].as_str() {
                    return id.to_string();
                }
                assert!(
                    Instant::now() < deadline,
                    "no element {css} on {}: {}",
                    self.url().await,
                    self.source().await
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        pub async fn click(&self, css: &str) {
            let e = self.find(css).await;
            self.post(&format!("/element/{e}/click"), json!({})).await;
        }

        pub async fn fill(&self, css: &str, text: &str) {
            let e = self.find(css).await;
            self.post(&format!("/element/{e}/clear"), json!({})).await;
            self.post(&format!("/element/{e}/value"), json!({ "text": text }))
                .await;
        }

        pub async fn property(&self, css: &str, name: &str) -> Value {
            let e = self.find(css).await;
            self.get(&format!("/element/{e}/property/{name}")).await
        }

        pub async fn text(&self, css: &str) -> String {
            let e = self.find(css).await;
            self.get(&format!("/element/{e}/text"))
                .await
                .as_str()
                .unwrap_or_default()
                .to_string()
        }

        pub async fn execute(&self, script: &str) -> Value {
            self.post("/execute/sync", json!({"script": script, "args": []}))
                .await
        }

        /// Accepts a `confirm()` dialog, waiting for it to open.
        pub async fn accept_dialog(&self) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let v = self
                    .cmd(reqwest::Method::POST, "/alert/accept", Some(json!({})))
                    .await;
                if v.get("error").is_none() {
                    return;
                }
                assert!(Instant::now() < deadline, "no dialog opened: {v}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// Presses a key (WebDriver key code) on the focused element.
        pub async fn press(&self, key: &str) {
            self.post(
                "/actions",
                json!({"actions": [{"type": "key", "id": "kb", "actions": [
                    {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]}),
            )
            .await;
        }

        /// Waits until the current URL contains `part`.
        pub async fn wait_url(&self, part: &str) -> String {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let u = self.url().await;
                if u.contains(part) {
                    return u;
                }
                if Instant::now() > deadline {
                    panic!("URL {u} never contained {part}: {}", self.source().await);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// Saves a PNG screenshot of the page.
        pub async fn screenshot(&self, path: &std::path::Path) {
            use base64::Engine;
            let b64 = self.get("/screenshot").await;
            let png = base64::engine::general_purpose::STANDARD
                .decode(b64.as_str().unwrap_or_default())
                .unwrap();
            assert!(png.starts_with(b"\x89PNG"), "not a PNG screenshot");
            std::fs::write(path, png).unwrap();
        }
    }

    impl Driver {
        /// Ends the browser session.
        pub async fn quit(&self) {
            let _ = self.cmd(reqwest::Method::DELETE, "", None).await;
        }
    }

    impl Drop for Driver {
        fn drop(&mut self) {
            // chromedriver runs in its own process group with the browser it started: end
            // the whole group, whatever state the test left it in.
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
                .status();
            let _ = self.child.wait();
        }
    }
}

fn artifacts_dir() -> std::path::PathBuf {
    let dir = std::env::var("WHARF_TEST_ARTIFACTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/console")
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headless Chromium, driven over WebDriver: sign in, create an organisation, a provider
/// with a key, a model and an API key (secret shown once), call the gateway with it, see the
/// request on the usage page and the dashboard, revoke the key; an ORG_ADMIN cannot reach
/// another organisation; a form without its CSRF token is refused; keyboard users get a skip
/// link. A screenshot of every page family is saved under target/test-artifacts/console.
#[tokio::test]
async fn browser_end_to_end() {
    let e = env().await;
    let shots = artifacts_dir();
    let wd = webdriver::Driver::start().await;
    let base = e.gw.admin_url("");
    let at = |p: &str| format!("{base}{p}");

    // Sign in.
    wd.goto(&at("/admin/dashboard")).await;
    wd.wait_url("/login").await;
    wd.screenshot(&shots.join("login.png")).await;
    wd.fill("#email", ROOT).await;
    wd.fill("#password", ROOT_PW).await;
    wd.click("button[type=submit]").await;
    wd.wait_url("/admin/dashboard").await;
    assert!(wd.text("header.top").await.contains(ROOT));

    // Keyboard: the first Tab reaches the skip link.
    wd.press("\u{E004}").await;
    let focused = wd
        .execute("return document.activeElement.getAttribute('href')")
        .await;
    assert_eq!(focused, "#main");

    // An organisation.
    wd.goto(&at("/admin/organisations")).await;
    wd.click("details.create summary").await;
    wd.fill("#c_name", "Acme").await;
    wd.fill("#c_slug", "acme").await;
    wd.click("details.create button[type=submit]").await;
    wd.wait_url("done=Created").await;

    // A provider on the mock, and its key (write-only).
    wd.goto(&at("/acme/providers")).await;
    wd.click("details.create summary").await;
    wd.fill("#c_name", "mockp").await;
    wd.click("#c_provider_type option[value=OPENAI]").await;
    wd.fill("#c_base_url", &format!("http://{}/v1", e.gw.mock_addr))
        .await;
    wd.click("details.create button[type=submit]").await;
    let provider_url = wd.wait_url("done=Created").await;
    let provider_id = provider_url
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    wd.fill("#pk_secret", PROVIDER_KEY).await;
    wd.click("form[action$='/keys'] button[type=submit]").await;
    wd.wait_url("done=Provider").await;
    assert!(!wd.source().await.contains(PROVIDER_KEY));
    wd.screenshot(&shots.join("provider.png")).await;

    // A model.
    wd.goto(&at("/acme/models")).await;
    wd.click("details.create summary").await;
    wd.fill("#c_name", "chat-x").await;
    wd.fill("#c_slug", "up-chat-x").await;
    wd.click("#c_model_type option[value=chat]").await;
    wd.click(&format!("#c_provider_id option[value='{provider_id}']"))
        .await;
    wd.fill("#c_input_price_usd", "1.00").await;
    wd.fill("#c_output_price_usd", "2").await;
    wd.click("details.create button[type=submit]").await;
    wd.wait_url("done=Created").await;

    // An API key: the secret is shown once, with a copy button.
    wd.goto(&at("/acme/apikeys")).await;
    wd.click("details.create summary").await;
    wd.fill("#c_name", "ci").await;
    wd.click("#c_key_type option[value=ORGANISATION]").await;
    wd.click("input[name=models]").await;
    wd.click("details.create > form > button[type=submit]")
        .await;
    let secret = wd.property("#secret", "value").await;
    let secret = secret.as_str().unwrap().to_string();
    assert!(secret.starts_with("wharf_"), "{secret}");
    wd.find("button[data-copy='#secret']").await;
    wd.screenshot(&shots.join("apikey-secret.png")).await;
    wd.click("a[href^='/acme/apikeys/']").await;
    wd.wait_url("/acme/apikeys/").await;
    let key_url = wd.url().await;
    assert!(!wd.source().await.contains(&secret), "secret shown twice");

    // The gateway takes it (once the catalog change has propagated).
    let deadline = Instant::now() + Duration::from_secs(10);
    let rid = loop {
        let r = client()
            .post(e.gw.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&chat_body("chat-x", false))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break r.headers()["x-request-id"].to_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "gateway answered {}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The request on the usage page and the dashboard.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        wd.goto(&at("/acme/usage")).await;
        if wd.source().await.contains(&rid) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "request {rid} not on the usage page"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wd.goto(&at("/acme/dashboard")).await;
    let acme: String = sqlx::query_scalar("SELECT id::text FROM organisations WHERE slug = 'acme'")
        .fetch_one(&e.db.pool)
        .await
        .unwrap();
    let (_, recs) = e
        .root
        .call(
            "GET",
            &format!("/api/organisations/{acme}/usage/records?period=last_30_days"),
            None,
        )
        .await;
    assert!(recs["total"].as_i64().unwrap() >= 1);
    assert_eq!(wd.text("#stat-requests").await, recs["total"].to_string());
    // The requests chart: one bar per day of the last 30 days (zero days included), both axes
    // labelled, a visible bar for today's traffic, the hover value of a bar.
    let chart = wd
        .execute(
            "var c = document.querySelector('#chart-requests');
             var bars = c.querySelectorAll('g.bar');
             var drawn = Array.from(bars).filter(function (g) {
                 return Array.from(g.querySelectorAll('rect')).some(function (r) {
                     return !r.classList.contains('hit') && r.getBoundingClientRect().height > 0; }); });
             return {bars: bars.length, buckets: Number(c.dataset.buckets),
                     labels: Array.from(c.querySelectorAll('text.axis-label')).map(function (t) { return t.textContent; }),
                     ticks: c.querySelectorAll('text.tick').length,
                     drawn: drawn.length,
                     title: bars[bars.length - 1].querySelector('title').textContent,
                     height: c.querySelector('svg').getBoundingClientRect().height};",
        )
        .await;
    assert_eq!(chart["bars"], 31, "{chart}");
    assert_eq!(chart["buckets"], 31, "{chart}");
    assert_eq!(chart["labels"], json!(["requests", "Day (UTC)"]), "{chart}");
    assert!(chart["ticks"].as_i64().unwrap() >= 5 + 4, "{chart}");
    assert!(chart["drawn"].as_i64().unwrap() >= 1, "{chart}");
    assert!(
        chart["title"].as_str().unwrap().contains(" · 2xx "),
        "{chart}"
    );
    assert!(chart["height"].as_f64().unwrap() > 100.0, "{chart}");
    wd.screenshot(&shots.join("dashboard-charts.png")).await;

    // The playground: the pasted key's models, a streamed answer, its usage record.
    wd.goto(&at("/acme/playground")).await;
    wd.fill("#pg_key", &secret).await;
    wd.click("#pg_prompt").await;
    wd.click("#playground button[type=submit]").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let usage = wd.text("#pg_usage").await;
        if usage.contains("cost") {
            assert!(usage.contains("chat-x"), "{usage}");
            break;
        }
        assert!(Instant::now() < deadline, "no usage record shown: {usage}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!wd.text("#pg_out").await.is_empty(), "no streamed answer");
    wd.screenshot(&shots.join("playground-answer.png")).await;
    // A second turn, with a system prompt and parameters: the transcript keeps both turns.
    let deadline = Instant::now() + Duration::from_secs(20);
    while wd
        .execute("return document.querySelectorAll('#pg_transcript li').length;")
        .await
        != 2
    {
        assert!(
            Instant::now() < deadline,
            "the first turn is not in the transcript"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wd.fill("#pg_system", "Answer briefly.").await;
    wd.fill("#pg_temperature", "0.2").await;
    wd.fill("#pg_max_tokens", "64").await;
    wd.fill("#pg_prompt", "And again?").await;
    wd.click("#playground button[type=submit]").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while wd
        .execute("return document.querySelectorAll('#pg_transcript li').length;")
        .await
        != 4
    {
        assert!(Instant::now() < deadline, "no second turn");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = wd.property("#pg_history", "value").await;
    let history: Vec<Value> = serde_json::from_str(history.as_str().unwrap()).unwrap();
    assert_eq!(history.len(), 4, "{history:?}");
    assert_eq!(history[2]["content"], "And again?");
    wd.screenshot(&shots.join("playground-conversation.png"))
        .await;
    // An error is shown readably: the status, Wharf's code and its message.
    wd.fill("#pg_key", "wharf_sk_not-a-key").await;
    wd.fill("#pg_prompt", "Hello?").await;
    wd.click("#playground button[type=submit]").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = wd
            .execute("var e = document.getElementById('pg_error'); return e.hidden ? '' : e.textContent;")
            .await;
        let shown = shown.as_str().unwrap_or("").to_string();
        if !shown.is_empty() {
            assert!(
                shown.starts_with("The gateway answered 401 — unauthorized: "),
                "{shown}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no readable error");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wd.screenshot(&shots.join("playground-error.png")).await;

    // Revoke from the key page (with its confirmation): the gateway refuses the key.
    wd.goto(&key_url).await;
    wd.click("form[action$='/revoke'] button").await;
    wd.accept_dialog().await;
    wd.wait_url("done=Key").await;
    assert_eq!(wd.text(".badge").await, "revoked");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = client()
            .post(e.gw.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&chat_body("chat-x", false))
            .send()
            .await
            .unwrap()
            .status();
        if st == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "revoked key still answered {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A narrow screen: the navigation stacks above the content.
    wd.post(
        "/window/rect",
        serde_json::json!({"width": 420, "height": 900}),
    )
    .await;
    wd.goto(&at("/acme/apikeys")).await;
    let stacked = wd
        .execute(
            "var n = document.querySelector('nav.side').getBoundingClientRect();
             var m = document.querySelector('main').getBoundingClientRect();
             return m.top >= n.bottom - 1 && m.width > 300;",
        )
        .await;
    assert_eq!(stacked, true, "layout is not responsive");
    let overflow = wd
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
        )
        .await;
    assert_eq!(overflow, 0, "the page scrolls sideways on a narrow screen");
    wd.screenshot(&shots.join("acme-apikeys-narrow.png")).await;
    wd.post(
        "/window/rect",
        serde_json::json!({"width": 1280, "height": 1000}),
    )
    .await;

    // A screenshot of every page family.
    for page in [
        "/admin/dashboard",
        "/admin/organisations",
        "/admin/users",
        "/admin/teams",
        "/admin/providers",
        "/admin/models",
        "/admin/mcp-servers",
        "/admin/apikeys",
        "/admin/budgets",
        "/admin/quotas",
        "/admin/settings",
        "/acme/dashboard",
        "/acme/teams",
        "/acme/users",
        "/acme/providers",
        "/acme/models",
        "/acme/mcp-servers",
        "/acme/apikeys",
        "/acme/budgets",
        "/acme/quotas",
        "/acme/usage",
        "/acme/invoices",
        "/acme/playground",
        "/acme/docs",
        "/acme/settings",
    ] {
        wd.goto(&at(page)).await;
        let title = wd.title().await;
        assert!(
            !title.starts_with("Not found") && !title.starts_with("Forbidden"),
            "{page}: {title}"
        );
        wd.find("main h1").await;
        let name = page.trim_start_matches('/').replace('/', "-");
        wd.screenshot(&shots.join(format!("{name}.png"))).await;
    }

    // The platform's list of models: every organisation's rows, with their organisation.
    let beta = org(&e, "Beta", "beta").await;
    let bp = e
        .root
        .create(
            &format!("/api/organisations/{beta}/providers"),
            json!({"name": "beta-prov", "provider_type": "OPENAI", "base_url": "http://127.0.0.1:9/v1"}),
        )
        .await;
    e.root
        .create(
            &format!("/api/organisations/{beta}/models"),
            json!({"name": "beta-chat", "slug": "up-beta", "provider_id": id(&bp)}),
        )
        .await;
    wd.goto(&at("/admin/models")).await;
    wd.find("main table tbody tr").await;
    let rows = wd
        .execute(
            "return Array.from(document.querySelectorAll('main table tbody tr'))
                 .map(function (r) { return Array.from(r.cells).map(function (c) { return c.innerText.trim(); }); });",
        )
        .await;
    let rows: Vec<Vec<String>> = serde_json::from_value(rows).unwrap();
    for (org_name, model) in [("Acme", "chat-x"), ("Beta", "beta-chat")] {
        assert!(
            rows.iter()
                .any(|r| r.first().map(String::as_str) == Some(org_name)
                    && r.contains(&model.to_string())),
            "no {model} row of {org_name}: {rows:?}"
        );
    }
    assert_eq!(
        wd.text("main table thead th:first-child").await,
        "Organisation"
    );
    wd.screenshot(&shots.join("admin-models-every-organisation.png"))
        .await;
    // Its organisation link leads to that organisation's models.
    wd.click("main table a[href='/beta/models']").await;
    wd.wait_url("/beta/models").await;

    // A form whose CSRF token was removed is refused.
    wd.goto(&at("/acme/teams")).await;
    wd.execute(
        "var f = document.querySelector('details.create form');
         f.querySelector('input[name=_csrf]').remove();
         f.querySelector('input[name=name]').value = 'no-token';
         f.submit(); return true;",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wd.source().await.contains("CSRF token is missing") {
        assert!(Instant::now() < deadline, "{}", wd.source().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An ORG_ADMIN of acme cannot reach another organisation's pages.
    let teams: i64 = sqlx::query_scalar("SELECT count(*) FROM teams WHERE name = 'no-token'")
        .fetch_one(&e.db.pool)
        .await
        .unwrap();
    assert_eq!(teams, 0, "the form without a token created a team");
    org_user(&e, &acme, "admin@acme.test", "ORG_ADMIN", "acme-admin-pw").await;
    wd.goto(&at("/acme/dashboard")).await;
    wd.click("header.top form button").await;
    wd.wait_url("/login").await;
    wd.fill("#email", "admin@acme.test").await;
    wd.fill("#password", "acme-admin-pw").await;
    wd.click("button[type=submit]").await;
    wd.wait_url("/acme/dashboard").await;
    wd.goto(&at("/beta/apikeys")).await;
    assert!(
        wd.title().await.starts_with("Not found"),
        "{}",
        wd.source().await
    );
    wd.screenshot(&shots.join("other-organisation.png")).await;
    wd.goto(&at("/admin/organisations")).await;
    assert!(wd.title().await.starts_with("Not found"));
    wd.quit().await;
}

/// `wharf admin bootstrap --password-env` gives the first super admin a console password.
#[tokio::test]
async fn bootstrap_sets_the_console_password() {
    let db = TestDb::migrated().await;
    let mock = mock().await;
    let gw = start(&mock, &db).await;
    let run = |var: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["admin", "bootstrap", "--database-url", &db.url()])
            .args(["--email", "ops@example.com", "--password-env", var])
            .env("WHARF_TEST_ADMIN_PW", "ops-password-1")
            .env("WHARF_TEST_SHORT_PW", "short")
            .output()
            .unwrap()
    };
    let out = run("WHARF_TEST_UNSET_PW");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("WHARF_TEST_UNSET_PW"));
    let out = run("WHARF_TEST_SHORT_PW");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 8"));
    let out = run("WHARF_TEST_ADMIN_PW");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("console password set") && stdout.contains("wharf_adm_"));
    assert!(!stdout.contains("ops-password-1"));
    let mut b = Browser::new(&gw);
    let p = b.login("ops@example.com", "ops-password-1").await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location.as_deref(), Some("/admin/dashboard"));
}

/// A raw HTTP/1.1 exchange on a fresh connection (`Connection: close`): the status, the
/// headers (names lower-cased) and every byte after the header block.
async fn raw_http(
    gw: &Gw,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = gw.admin_url("").trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut rq = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        rq.push_str(&format!("{k}: {v}\r\n"));
    }
    rq.push_str("\r\n");
    s.write_all(rq.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header block in {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, hs, buf[end + 4..].to_vec())
}

/// HEAD on the admin listener (console pages, the admin API, the listener's own routes):
/// GET's status and headers, no body bytes on the wire.
#[tokio::test]
async fn head_answers_have_no_body() {
    let e = env().await;
    let mut b = Browser::new(&e.gw);
    assert_eq!(b.login(ROOT, ROOT_PW).await.status, 303);
    let cookie = b.cookie_header();
    let bearer = format!("Bearer {}", e.root.token);
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/login", vec![]),
        ("/admin/dashboard", vec![("cookie", cookie.as_str())]),
        ("/console/static/app.css", vec![]),
        (
            "/api/admin/organisations",
            vec![("authorization", bearer.as_str())],
        ),
        ("/api/status", vec![]),
        ("/health", vec![]),
    ];
    for (path, headers) in cases {
        let (gst, ghs, gbody) = raw_http(&e.gw, "GET", path, &headers).await;
        assert_eq!(gst, 200, "GET {path}: {}", String::from_utf8_lossy(&gbody));
        assert!(!gbody.is_empty(), "GET {path} has a body");
        let (st, hs, body) = raw_http(&e.gw, "HEAD", path, &headers).await;
        assert_eq!(st, 200, "HEAD {path}");
        assert_eq!(
            body.len(),
            0,
            "HEAD {path} sent a body: {:?}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            hs.get("content-type"),
            ghs.get("content-type"),
            "HEAD {path}"
        );
        if let Some(len) = hs.get("content-length") {
            // The length the GET body has (pages carry per-request tokens: same order).
            assert!(len.parse::<usize>().unwrap() > 0, "HEAD {path}: {len}");
        }
    }
    // reqwest agrees, and the connection stays usable for the next request.
    let http = client();
    for _ in 0..2 {
        let r = http
            .head(e.gw.admin_url("/api/admin/organisations"))
            .bearer_auth(&e.root.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 0);
    }
}

/// The dashboard's budget burn-down shows each active budget's current window as the admin
/// API computes it (`GET …/usage/limits`): the period in the budget's time zone, the limit
/// with the amount rolled over, settled plus reserved spend; budgets outside their
/// `starts_at`/`ends_at` are left out.
#[tokio::test]
async fn budget_burn_down_uses_the_api_windows() {
    let e = env().await;
    let o = org(&e, "Alpha Org", "alpha").await;
    let budgets = format!("/api/organisations/{o}/budgets");
    let nz = e
        .root
        .create(
            &budgets,
            json!({"name": "nz-monthly", "scope": "ORG", "amount_nanos": 4_000_000_000i64,
                   "period": "MONTHLY", "timezone": "Pacific/Auckland", "rollover": true,
                   "warning_thresholds": [50, 90]}),
        )
        .await;
    let ended = e
        .root
        .create(
            &budgets,
            json!({"name": "ended", "scope": "ORG", "amount_nanos": 1_000_000_000i64,
                   "period": "DAILY", "starts_at": "2020-01-01T00:00:00Z",
                   "ends_at": "2020-02-01T00:00:00Z"}),
        )
        .await;
    let future = e
        .root
        .create(
            &budgets,
            json!({"name": "future", "scope": "ORG", "amount_nanos": 1_000_000_000i64,
                   "period": "DAILY", "starts_at": "2999-01-01T00:00:00Z"}),
        )
        .await;
    let limits = format!("/api/organisations/{o}/usage/limits");
    let meter = |v: &Value, id: &str| -> Value {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no meter {id} in {v}"))
            .clone()
    };
    let (st, v) = e.root.call("GET", &limits, None).await;
    assert_eq!(st, 200, "{v}");
    let m = meter(&v, &id(&nz));
    let start = m["window"]["start"].as_str().unwrap().to_string();
    let end = m["window"]["end"].as_str().unwrap().to_string();
    // The current window, with an amount carried in from the previous one and spend in it.
    sqlx::query(
        "INSERT INTO budget_windows (budget_id, window_start, window_end, used_nanos,
                                     reserved_nanos, rollover_nanos, warned_thresholds)
         VALUES ($1::uuid, $2::timestamptz, $3::timestamptz, 1500000000, 500000000,
                 2000000000, '{50}')",
    )
    .bind(id(&nz))
    .bind(&start)
    .bind(&end)
    .execute(&e.db.pool)
    .await
    .unwrap();
    let (st, v) = e.root.call("GET", &limits, None).await;
    assert_eq!(st, 200, "{v}");
    let m = meter(&v, &id(&nz));
    assert_eq!(m["limit"], 6_000_000_000i64, "{m}");
    assert_eq!(m["window"]["start"], start.as_str(), "{m}");
    assert_eq!(meter(&v, &id(&ended))["active"], false);
    assert_eq!(meter(&v, &id(&future))["active"], false);
    // The window starts at local midnight on the first of the month in Auckland, which is
    // not midnight UTC.
    let zone = jiff::tz::TimeZone::get("Pacific/Auckland").unwrap();
    let local = |s: &str| {
        s.parse::<jiff::Timestamp>()
            .unwrap()
            .to_zoned(zone.clone())
            .strftime("%Y-%m-%d %H:%M")
            .to_string()
    };
    assert!(local(&start).ends_with("-01 00:00"), "{start}");
    assert!(!start.contains("T00:00:00"), "{start}");

    let mut b = Browser::new(&e.gw);
    assert_eq!(b.login(ROOT, ROOT_PW).await.status, 303);
    let p = b.page("/alpha/dashboard").await;
    let at = p
        .body
        .find(&format!("data-budget-id=\"{}\"", id(&nz)))
        .unwrap_or_else(|| panic!("no burn-down of nz-monthly in {}", p.body));
    let row = &p.body[at..at + p.body[at..].find("</svg>").unwrap()];
    for want in [
        "data-limit=\"6000000000\"".to_string(),
        "data-spent=\"2000000000\"".to_string(),
        format!("data-window-start=\"{start}\""),
        format!("data-window-end=\"{end}\""),
        format!("<time datetime=\"{start}\">{}</time>", local(&start)),
        format!("<time datetime=\"{end}\">{}</time>", local(&end)),
        "Pacific/Auckland".to_string(),
        ": $2.00 ($0.500000 reserved) of $6.00 ($2.00 rolled over) (33%)".to_string(),
        "1 threshold(s) crossed".to_string(),
        "aria-label=\"33% of the budget used\"".to_string(),
        "width=\"33.33\"".to_string(),
        "x1=\"50\"".to_string(),
        "x1=\"90\"".to_string(),
    ] {
        assert!(row.contains(&want), "{want} not in {row}");
    }
    for gone in [id(&ended), id(&future)] {
        assert!(
            !p.body.contains(&gone),
            "inactive budget {gone} shown: {}",
            p.body
        );
    }
}

/// Suspension and password changes end the user's console sessions: reactivating a user does
/// not bring an old session back, and a new password signs out every other session (through
/// the API and the console alike); the session changing its own password stays signed in.
#[tokio::test]
async fn suspension_and_password_change_end_sessions() {
    let e = env().await;
    let a = org(&e, "Alpha", "alpha").await;
    let uid = org_user(&e, &a, "user@alpha.test", "USER", "alpha-user-pw").await;
    let sessions = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM console_sessions WHERE user_id = $1::uuid",
        )
        .bind(&uid)
        .fetch_one(&e.db.pool)
        .await
        .unwrap()
    };
    let user_path = format!("/api/organisations/{a}/users/{uid}");

    // Suspended through the API, then reactivated: the old session stays ended.
    let mut b1 = Browser::new(&e.gw);
    assert_eq!(
        b1.login("user@alpha.test", "alpha-user-pw").await.status,
        303
    );
    b1.page("/alpha/dashboard").await;
    let (st, v) = e
        .root
        .call("PATCH", &user_path, Some(json!({"status": "SUSPENDED"})))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(sessions().await, 0, "suspension deletes the sessions");
    let (st, _) = e
        .root
        .call("PATCH", &user_path, Some(json!({"status": "ACTIVE"})))
        .await;
    assert_eq!(st, 200);
    let p = b1.get("/alpha/dashboard").await;
    assert_eq!(
        p.status, 303,
        "reactivation must not revive the old session"
    );

    // Suspended on the console's user page by the super admin: the same.
    assert_eq!(
        b1.login("user@alpha.test", "alpha-user-pw").await.status,
        303
    );
    let mut root = Browser::new(&e.gw);
    assert_eq!(root.login(ROOT, ROOT_PW).await.status, 303);
    let p = root
        .submit(
            &format!("/alpha/users/{uid}"),
            &format!("/alpha/users/{uid}"),
            &[("status", "SUSPENDED")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(sessions().await, 0);
    e.root
        .call("PATCH", &user_path, Some(json!({"status": "ACTIVE"})))
        .await;
    assert_eq!(b1.get("/alpha/dashboard").await.status, 303);

    // A password set by an admin through the API ends the user's sessions.
    assert_eq!(
        b1.login("user@alpha.test", "alpha-user-pw").await.status,
        303
    );
    let (st, _) = e
        .root
        .call(
            "PUT",
            &format!("{user_path}/password"),
            Some(json!({"password": "second-password"})),
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(b1.get("/alpha/dashboard").await.status, 303);
    // …and on the console's user page.
    assert_eq!(
        b1.login("user@alpha.test", "second-password").await.status,
        303
    );
    let p = root
        .submit(
            &format!("/alpha/users/{uid}"),
            &format!("/alpha/users/{uid}/password"),
            &[("password", "third-password")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(b1.get("/alpha/dashboard").await.status, 303);

    // Changing one's own password on the settings page keeps that session, ends the others.
    let mut b2 = Browser::new(&e.gw);
    assert_eq!(
        b1.login("user@alpha.test", "third-password").await.status,
        303
    );
    assert_eq!(
        b2.login("user@alpha.test", "third-password").await.status,
        303
    );
    let p = b1
        .submit(
            "/alpha/settings",
            "/alpha/settings/password",
            &[
                ("current", "third-password"),
                ("password", "fourth-password"),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    b1.page("/alpha/dashboard").await;
    assert_eq!(b2.get("/alpha/dashboard").await.status, 303);
    assert_eq!(sessions().await, 1);
}

/// A USER reads only its own user row, keys and usage: providers (base URLs, extra headers),
/// models, MCP servers, filters, teams and other users answer 403/404, through the admin API
/// and the console pages alike. A MANAGER still reads the catalog.
#[tokio::test]
async fn a_user_reads_only_its_own_keys_and_usage() {
    let e = env().await;
    let a = org(&e, "Alpha", "alpha").await;
    let admin_id = org_user(&e, &a, "admin@alpha.test", "ORG_ADMIN", "alpha-admin-pw").await;
    let uid = org_user(&e, &a, "user@alpha.test", "USER", "alpha-user-pw").await;
    org_user(&e, &a, "manager@alpha.test", "MANAGER", "alpha-mgr-pw1").await;
    let o = format!("/api/organisations/{a}");
    let p = id(&e
        .root
        .create(
            &format!("{o}/providers"),
            json!({"name": "upstream", "provider_type": "OPENAI",
                   "base_url": "http://10.9.8.7/v1", "extra_headers": {"x-org-secret": "hdr-7731"}}),
        )
        .await);
    let m = id(&e
        .root
        .create(
            &format!("{o}/models"),
            json!({"name": "chat-granted", "slug": "up-chat", "model_type": "chat", "provider_id": p}),
        )
        .await);
    let t = id(&e
        .root
        .create(&format!("{o}/teams"), json!({"name": "core"}))
        .await);
    let mcp = id(&e
        .root
        .create(
            &format!("{o}/mcp-servers"),
            json!({"name": "docs", "slug": "docs", "transport": "STREAMABLE_HTTP",
                   "url": "http://10.9.8.7/mcp"}),
        )
        .await);
    let k = id(&e
        .root
        .create(
            &format!("{o}/api-keys"),
            json!({"name": "mine", "key_type": "USER", "user_id": uid, "models": [m]}),
        )
        .await);
    let token = e
        .root
        .create(&format!("{o}/users/{uid}/tokens"), json!({"name": "cli"}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let user = Api {
        base: e.root.base.clone(),
        token,
    };

    // The admin API.
    for path in [
        "/providers".to_string(),
        format!("/providers/{p}"),
        "/models".into(),
        format!("/models/{m}"),
        format!("/models/{m}/deployments"),
        "/mcp-servers".into(),
        format!("/mcp-servers/{mcp}"),
        "/filters".into(),
        "/teams".into(),
        format!("/teams/{t}"),
    ] {
        let (st, v) = user.call("GET", &format!("{o}{path}"), None).await;
        assert_eq!(st, 403, "GET {path}: {v}");
        assert!(!v.to_string().contains("10.9.8.7"), "{path}: {v}");
    }
    let (st, v) = user.call("GET", &format!("{o}/users"), None).await;
    assert_eq!(st, 200);
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["data"][0]["id"], uid.as_str());
    assert!(!v.to_string().contains("admin@alpha.test"));
    let (st, _) = user
        .call("GET", &format!("{o}/users/{admin_id}"), None)
        .await;
    assert_eq!(st, 404);
    let (st, v) = user.call("GET", &format!("{o}/api-keys"), None).await;
    assert_eq!((st, v["total"].clone()), (200, json!(1)), "{v}");
    let (st, v) = user
        .call("GET", &format!("{o}/api-keys/{k}/models"), None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["data"][0]["name"], "chat-granted");
    let (st, _) = user.call("GET", &format!("{o}/usage/records"), None).await;
    assert_eq!(st, 200);
    let (st, v) = user.call("GET", &o, None).await;
    assert_eq!(st, 200);
    assert_eq!(v["slug"], "alpha");
    assert!(
        v.get("settings").is_none() && v.get("policies").is_none(),
        "{v}"
    );

    // The console.
    let mut b = Browser::new(&e.gw);
    assert_eq!(
        b.login("user@alpha.test", "alpha-user-pw").await.status,
        303
    );
    for path in [
        "/alpha/providers".to_string(),
        format!("/alpha/providers/{p}"),
        "/alpha/models".into(),
        format!("/alpha/models/{m}"),
        "/alpha/mcp-servers".into(),
        "/alpha/teams".into(),
    ] {
        let pg = b.get(&path).await;
        assert_eq!(pg.status, 403, "{path}: {}", pg.body);
        assert!(
            !pg.body.contains("10.9.8.7") && !pg.body.contains("hdr-7731"),
            "{path}: {}",
            pg.body
        );
    }
    let users = b.page("/alpha/users").await;
    assert!(users.body.contains("user@alpha.test"));
    assert!(!users.body.contains("admin@alpha.test"), "{}", users.body);
    assert_eq!(b.get(&format!("/alpha/users/{admin_id}")).await.status, 404);
    let dash = b.page("/alpha/dashboard").await;
    for hidden in [
        "/alpha/providers",
        "/alpha/models",
        "/alpha/teams",
        "/alpha/mcp-servers",
    ] {
        assert!(
            !dash.body.contains(&format!("href=\"{hidden}\"")),
            "{hidden} in the navigation"
        );
    }
    // Its own key, with the models granted to it, and the playground offering them.
    let key = b.page(&format!("/alpha/apikeys/{k}")).await;
    assert!(key.body.contains("chat-granted"), "{}", key.body);
    let pg = b.page("/alpha/playground").await;
    assert!(pg.body.contains("chat-granted"), "{}", pg.body);
    b.page("/alpha/usage").await;
    b.page("/alpha/docs").await;

    // A MANAGER still reads the catalog.
    let mut mgr = Browser::new(&e.gw);
    assert_eq!(
        mgr.login("manager@alpha.test", "alpha-mgr-pw1")
            .await
            .status,
        303
    );
    let pg = mgr.page("/alpha/providers").await;
    assert!(pg.body.contains("10.9.8.7"));
    mgr.page("/alpha/models").await;
}

/// Secrets made by a form (API key created or rotated, invitation link) follow
/// post/redirect/get: the POST answers 303 to a one-time page of this session, which shows
/// the secret once; a reload of that page neither shows it again nor creates a second key.
#[tokio::test]
async fn secrets_are_shown_once_after_a_redirect() {
    let e = env().await;
    let a = org(&e, "Alpha", "alpha").await;
    org_user(&e, &a, "admin@alpha.test", "ORG_ADMIN", "alpha-admin-pw").await;
    let mut b = Browser::new(&e.gw);
    assert_eq!(
        b.login("admin@alpha.test", "alpha-admin-pw").await.status,
        303
    );
    let keys = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM api_keys")
            .fetch_one(&e.db.pool)
            .await
            .unwrap()
    };
    let secret_of = |body: &str| {
        let at = body.find("value=\"wharf_").expect("secret on the page");
        let rest = &body[at + 7..];
        rest[..rest.find('"').unwrap()].to_string()
    };

    let p = b
        .submit(
            "/alpha/apikeys",
            "/alpha/apikeys",
            &[("name", "ci"), ("key_type", "ORGANISATION")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(
        !p.body.contains("wharf_"),
        "the POST answer carries no secret"
    );
    let once = p.location.clone().unwrap();
    assert!(once.starts_with("/alpha/once/"), "{once}");
    assert_eq!(keys().await, 1);
    // Stored encrypted, never in plain text.
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT envelope::text FROM console_one_time_views")
            .fetch_all(&e.db.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].contains("wharf_"), "{}", stored[0]);
    // Another session cannot open it.
    let mut other = Browser::new(&e.gw);
    assert_eq!(
        other
            .login("admin@alpha.test", "alpha-admin-pw")
            .await
            .status,
        303
    );
    let p = other.get(&once).await;
    assert_eq!(p.status, 410, "{}", p.body);
    // Shown once to its session…
    let shown = b.page(&once).await;
    let secret = secret_of(&shown.body);
    assert!(shown.body.contains("API key created"));
    // …and never again: a reload shows neither the secret nor makes a second key.
    let again = b.get(&once).await;
    assert_eq!(again.status, 410, "{}", again.body);
    assert!(!again.body.contains(&secret) && !again.body.contains("value=\"wharf_"));
    assert_eq!(keys().await, 1);

    // Rotation: the same.
    let (_, list) = e
        .root
        .call("GET", &format!("/api/organisations/{a}/api-keys"), None)
        .await;
    let key_page = format!("/alpha/apikeys/{}", id(&list["data"][0]));
    let p = b
        .submit(&key_page, &format!("{key_page}/rotate"), &[])
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let once = p.location.clone().unwrap();
    let rotated = secret_of(&b.page(&once).await.body);
    assert_ne!(rotated, secret);
    let again = b.get(&once).await;
    assert_eq!(again.status, 410);
    assert!(!again.body.contains(&rotated));

    // An invitation link: the same.
    let p = b
        .submit(
            "/alpha/users",
            "/alpha/users/invite",
            &[("email", "new@alpha.test"), ("role", "USER")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let once = p.location.clone().unwrap();
    let shown = b.page(&once).await;
    let at = shown.body.find("/invite/wharf_inv_").expect("invite link");
    let link = shown.body[at..at + 20].to_string();
    let again = b.get(&once).await;
    assert_eq!(again.status, 410);
    assert!(!again.body.contains(&link));
    let invitations: i64 = sqlx::query_scalar("SELECT count(*) FROM organisation_invitations")
        .fetch_one(&e.db.pool)
        .await
        .unwrap();
    assert_eq!(invitations, 1);

    // A view nobody opened in time is gone.
    let p = b
        .submit(
            "/alpha/apikeys",
            "/alpha/apikeys",
            &[("name", "late"), ("key_type", "ORGANISATION")],
        )
        .await;
    let once = p.location.clone().unwrap();
    sqlx::query("UPDATE console_one_time_views SET created_at = now() - interval '1 hour', expires_at = now() - interval '1 minute'")
        .execute(&e.db.pool)
        .await
        .unwrap();
    assert_eq!(b.get(&once).await.status, 410);
}

/// One sign-in through a fresh form.
async fn attempt(b: &mut Browser, email: &str, pw: &str) -> Page {
    let csrf = b.get("/login").await.csrf();
    b.post(
        "/login",
        &[("_csrf", &csrf), ("email", email), ("password", pw)],
    )
    .await
}

/// Sign-in throttling: per client address (the peer, or X-Forwarded-For behind a trusted
/// proxy) and per client and e-mail, with a growing 429 + Retry-After; a stranger failing with
/// the super admin's e-mail does not lock it out for another client. Unknown and known
/// e-mails get the same answer.
#[tokio::test]
async fn sign_in_is_throttled_per_client_not_per_account() {
    let e = env().await;
    // Without trusted proxies the peer is the client: a changing X-Forwarded-For does not
    // make one client many. 30 different e-mails: throttled after 20 failures.
    let mut one = Browser::new(&e.gw);
    let mut statuses = Vec::new();
    for i in 0..30 {
        one.extra = vec![("x-forwarded-for", format!("192.0.2.{i}"))];
        let p = attempt(
            &mut one,
            &format!("nobody{i}@example.com"),
            "wrong-password",
        )
        .await;
        if p.status == 429 {
            let after: u64 = p.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=300).contains(&after), "{after}");
            assert!(p.body.contains("Too many failed sign-ins"), "{}", p.body);
        } else {
            assert!(p.body.contains("Wrong e-mail or password"), "{}", p.body);
        }
        statuses.push(p.status);
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");

    // Behind a trusted proxy, X-Forwarded-For names the client.
    let db2 = common::db::TestDb::migrated().await;
    let mock2 = mock().await;
    let gw =
        common::db::admin_node_with(&mock2, &db2, "trusted_proxies = [\"127.0.0.0/8\"]\n").await;
    let token = wharf::api::bootstrap::bootstrap(&db2.pool, Some(ROOT))
        .await
        .unwrap()
        .token;
    let root = Api {
        base: gw.admin_url(""),
        token,
    };
    let (st, _) = root
        .call(
            "PUT",
            "/api/me/password",
            Some(json!({"password": ROOT_PW})),
        )
        .await;
    assert_eq!(st, 204);

    // A stranger fails ten times with the super admin's e-mail: then it is refused…
    let mut stranger = Browser::new(&gw);
    stranger.extra = vec![("x-forwarded-for", "203.0.113.66".into())];
    for _ in 0..10 {
        let p = attempt(&mut stranger, ROOT, "guess-guess").await;
        assert_eq!(p.status, 401, "{}", p.body);
        assert!(p.body.contains("Wrong e-mail or password"));
    }
    let p = attempt(&mut stranger, ROOT, ROOT_PW).await;
    assert_eq!(
        p.status, 429,
        "even with the right password, from the failing client"
    );
    assert!(p.headers.contains_key("retry-after"));
    assert!(!stranger.cookies.contains_key("wharf_session"));
    // …an unknown e-mail from another stranger answers exactly like a known one…
    let mut other = Browser::new(&gw);
    other.extra = vec![("x-forwarded-for", "203.0.113.77".into())];
    let known = attempt(&mut other, ROOT, "guess-guess").await;
    let unknown = attempt(&mut other, "ghost@example.com", "guess-guess").await;
    assert_eq!((known.status, unknown.status), (401, 401));
    assert!(known.body.contains("Wrong e-mail or password."));
    assert!(unknown.body.contains("Wrong e-mail or password."));
    // …and the owner, from its own address, still signs in (at most briefly slowed).
    let mut owner = Browser::new(&gw);
    owner.extra = vec![("x-forwarded-for", "198.51.100.7".into())];
    let started = Instant::now();
    let p = attempt(&mut owner, ROOT, ROOT_PW).await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(owner.cookies.contains_key("wharf_session"));
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Prices and budgets are typed and shown in dollars (USD per 1M tokens, per image, per
/// call); the admin API keeps integer nanos-USD.
#[tokio::test]
async fn money_is_entered_and_shown_in_dollars() {
    let e = env().await;
    let a = org(&e, "Alpha", "alpha").await;
    let prov = e
        .root
        .create(
            &format!("/api/organisations/{a}/providers"),
            json!({"name": "p", "provider_type": "OPENAI", "base_url": "http://127.0.0.1:9/v1"}),
        )
        .await;
    let mut b = Browser::new(&e.gw);
    assert_eq!(b.login(ROOT, ROOT_PW).await.status, 303);
    let form = b.page("/alpha/models").await;
    for want in [
        "Input price (USD per 1M tokens)",
        "Image price (USD per image)",
        "name=\"input_price_usd\"",
    ] {
        assert!(form.body.contains(want), "{want} not in the model form");
    }
    assert!(!form.body.contains("nanos-USD"), "the form speaks nanos");
    let p = b
        .submit(
            "/alpha/models",
            "/alpha/models",
            &[
                ("name", "m1"),
                ("slug", "up-m1"),
                ("model_type", "chat"),
                ("provider_id", &id(&prov)),
                ("input_price_usd", "2.50"),
                ("output_price_usd", "$10"),
                ("cached_input_price_usd", "0.125"),
                ("image_price_usd", "0.04"),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let (_, models) = e
        .root
        .call("GET", &format!("/api/organisations/{a}/models"), None)
        .await;
    let m = &models["data"][0];
    assert_eq!(m["input_price_nanos"], 2_500_000_000i64, "{m}");
    assert_eq!(m["output_price_nanos"], 10_000_000_000i64, "{m}");
    assert_eq!(m["cached_input_price_nanos"], 125_000_000i64, "{m}");
    assert_eq!(m["image_price_nanos"], 40_000_000i64, "{m}");
    // The list and the item page show dollars; the edit form holds the exact amount.
    let list = b.page("/alpha/models").await;
    assert!(list.body.contains("<td>$2.50</td>"), "{}", list.body);
    assert!(list.body.contains("<td>$10.00</td>"), "{}", list.body);
    let item = b.page(&format!("/alpha/models/{}", id(m))).await;
    assert!(item.body.contains("value=\"0.125\""), "{}", item.body);
    assert!(item.body.contains("value=\"2.50\""), "{}", item.body);
    assert!(item.body.contains("$0.040000"), "{}", item.body);
    // A malformed amount is refused with the field's name, not stored.
    let p = b
        .submit(
            "/alpha/models",
            "/alpha/models",
            &[
                ("name", "m2"),
                ("slug", "up-m2"),
                ("provider_id", &id(&prov)),
                ("input_price_usd", "2,5.0.1"),
            ],
        )
        .await;
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(
        p.body.contains("Input price (USD per 1M tokens)"),
        "{}",
        p.body
    );
    // Budgets: the amount in dollars.
    let p = b
        .submit(
            "/alpha/budgets",
            "/alpha/budgets",
            &[
                ("name", "monthly"),
                ("scope", "ORG"),
                ("amount_usd", "250"),
                ("period", "MONTHLY"),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let (_, budgets) = e
        .root
        .call("GET", &format!("/api/organisations/{a}/budgets"), None)
        .await;
    assert_eq!(budgets["data"][0]["amount_nanos"], 250_000_000_000i64);
    let list = b.page("/alpha/budgets").await;
    assert!(list.body.contains("$250.00"), "{}", list.body);
}

/// Seed 002's `/api/auth/*` routes: JSON aliases of the console's sign-in, session and
/// sign-out, with the same session cookie, throttling answers and CSRF rules.
#[tokio::test]
async fn api_auth_routes_alias_the_console_sign_in() {
    let e = env().await;
    let mut b = Browser::new(&e.gw);
    let base = b.base.clone();
    let http = b.http.clone();
    let url = |p: &str| format!("{base}{p}");
    let login = |body: Value| http.post(url("/api/auth/login")).json(&body);
    // Not JSON (a cross-site form): refused before any password check.
    let p = b
        .send(
            http.post(url("/api/auth/login"))
                .form(&[("email", ROOT), ("password", ROOT_PW)]),
        )
        .await;
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(b.cookies.is_empty());
    // A foreign origin.
    let rq =
        login(json!({"email": ROOT, "password": ROOT_PW})).header("origin", "https://evil.example");
    let p = b.send(rq).await;
    assert_eq!(p.status, 403, "{}", p.body);
    // Wrong password: 401 in the admin API's envelope, no session.
    let p = b
        .send(login(json!({"email": ROOT, "password": "nope-nope"})))
        .await;
    assert_eq!(p.status, 401, "{}", p.body);
    let v: Value = serde_json::from_str(&p.body).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized", "{v}");
    assert!(!b.cookies.contains_key("wharf_session"));
    // No session yet.
    let p = b.get("/api/auth/session").await;
    assert_eq!(p.status, 401, "{}", p.body);
    // Signed in: the session cookie, the user, its home and the CSRF token.
    let p = b
        .send(login(json!({"email": ROOT, "password": ROOT_PW})))
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    let v: Value = serde_json::from_str(&p.body).unwrap();
    assert_eq!(v["user"]["email"], ROOT, "{v}");
    assert_eq!(v["user"]["role"], "SUPER_ADMIN", "{v}");
    assert_eq!(v["home"], "/admin/dashboard", "{v}");
    let csrf = v["csrf_token"].as_str().unwrap().to_string();
    assert!(b.set_cookies[0].contains("HttpOnly"), "{:?}", b.set_cookies);
    // The same session signs the console in, and both session routes answer it.
    b.page("/admin/dashboard").await;
    for path in ["/api/auth/session", "/api/auth/me"] {
        let p = b.page(path).await;
        let v: Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(v["user"]["email"], ROOT, "{path}: {v}");
        assert_eq!(v["csrf_token"], csrf.as_str(), "{path}: {v}");
    }
    // Unknown routes and methods answer JSON.
    let p = b.get("/api/auth/nope").await;
    assert_eq!(p.status, 404, "{}", p.body);
    assert!(p.body.contains("\"not_found\""), "{}", p.body);
    let p = b.get("/api/auth/login").await;
    assert_eq!(p.status, 405, "{}", p.body);
    // A password change needs the CSRF header, then keeps this session.
    let rq = b
        .http
        .put(url("/api/auth/password"))
        .json(&json!({"password": "new-root-password"}));
    let p = b.send(rq).await;
    assert_eq!(p.status, 403, "{}", p.body);
    let rq = b
        .http
        .put(url("/api/auth/password"))
        .header("x-csrf-token", &csrf)
        .json(&json!({"password": "new-root-password"}));
    let p = b.send(rq).await;
    assert_eq!(p.status, 204, "{}", p.body);
    b.page("/api/auth/session").await;
    // Sign-out: the CSRF header is required; afterwards the session is gone.
    let p = b
        .send(http.post(url("/api/auth/logout")).json(&json!({})))
        .await;
    assert_eq!(p.status, 403, "{}", p.body);
    let rq = b
        .http
        .post(url("/api/auth/logout"))
        .header("x-csrf-token", &csrf)
        .json(&json!({}));
    let p = b.send(rq).await;
    assert_eq!(p.status, 204, "{}", p.body);
    assert!(!b.cookies.contains_key("wharf_session"));
    let p = b.get("/admin/dashboard").await;
    assert_eq!(p.status, 303);
    // The new password signs in through the console form as well.
    let mut c = Browser::new(&e.gw);
    assert_eq!(c.login(ROOT, "new-root-password").await.status, 303);
}

fn wharf_cmd(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .output()
        .unwrap()
}

/// First run: `wharf secrets new-master-key` prints a key the gateway accepts, `wharf migrate`
/// says what it applied (then that nothing was left), and `conf/database.example.toml` serves the
/// console and the admin API on a fresh database once migrated and bootstrapped.
#[tokio::test]
async fn first_run_from_the_database_example() {
    // A master key entry, fresh each time, in the format WHARF_MASTER_KEYS reads.
    let a = wharf_cmd(&["secrets", "new-master-key"]);
    let b = wharf_cmd(&["secrets", "new-master-key", "--id", "prod-2"]);
    assert!(a.status.success() && b.status.success());
    let (a, b) = (
        String::from_utf8(a.stdout).unwrap().trim().to_string(),
        String::from_utf8(b.stdout).unwrap().trim().to_string(),
    );
    assert!(b.starts_with("prod-2:"), "{b}");
    assert_ne!(
        a.split(':').nth(1),
        b.split(':').nth(1),
        "the same key twice"
    );
    let keys = wharf::db::crypto::MasterKeys::parse(&format!("{a},{b}")).unwrap();
    assert_eq!(keys.newest_id(), "prod-2");
    assert!(!wharf_cmd(&["secrets", "new-master-key", "--id", "bad id"])
        .status
        .success());

    // `wharf migrate` on an empty database names each migration it applied.
    let db = TestDb::empty().await;
    let out = wharf_cmd(&["migrate", "--database-url", &db.url()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let applied: Vec<&str> = text.lines().filter(|l| l.starts_with("applied ")).collect();
    let embedded = wharf::db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .count();
    assert_eq!(applied.len(), embedded, "{text}");
    assert!(applied[0].starts_with("applied 0001 "), "{text}");
    assert!(text.contains("schema up to date"), "{text}");
    let again = wharf_cmd(&["migrate", "--database-url", &db.url()]);
    let again = String::from_utf8(again.stdout).unwrap();
    assert!(again.contains("nothing to apply"), "{again}");
    assert!(!again.contains("applied "), "{again}");

    // The example file, on its own ports, with the new master key.
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/database.example.toml"),
    )
    .unwrap();
    let mock = mock().await;
    let gw = Gw::start_custom(
        &mock,
        |port, admin, dir| {
            example
                .replace("0.0.0.0:8080", &format!("127.0.0.1:{port}"))
                .replace("127.0.0.1:9090", &format!("127.0.0.1:{admin}"))
                .replace("/tmp/wharf.pid", &format!("{}/wharf.pid", dir.display()))
                .replace(
                    "/tmp/wharf-upgrade.sock",
                    &format!("{}/upgrade.sock", dir.display()),
                )
                .replace(
                    "/tmp/wharf-usage-spill.jsonl",
                    &format!("{}/spill.jsonl", dir.display()),
                )
        },
        &[
            ("DATABASE_URL", db.url()),
            ("REDIS_URL", common::db::redis_url()),
            ("WHARF_MASTER_KEYS", a.clone()),
            ("WHARF_INVALIDATION_SECRET", "first-run-secret".into()),
            ("WHARF_OPERATOR_TOKEN", "first-run-operator".into()),
        ],
    )
    .await;
    let r = client()
        .get(gw.admin_url("/v1/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", gw.log());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["admin", "bootstrap", "--email", ROOT])
        .args(["--password-env", "FIRST_RUN_PASSWORD"])
        .env("DATABASE_URL", db.url())
        .env("FIRST_RUN_PASSWORD", ROOT_PW)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut br = Browser::new(&gw);
    assert_eq!(br.login(ROOT, ROOT_PW).await.status, 303);
    br.page("/admin/dashboard").await;
    // The operator token guards the metrics of the admin listener.
    let r = client().get(gw.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

/// `make demo` (scripts/demo.sh) on its own ports: throwaway Postgres and Redis, migrated, a
/// super admin with the printed password, a seeded organisation with traffic on its usage page
/// and dashboard; stopping it stops the services it started.
#[tokio::test]
async fn the_demo_script_seeds_a_console() {
    use tokio::io::AsyncBufReadExt;
    let mock = mock().await;
    let (proxy, admin, pg, redis) = (free_port(), free_port(), free_port(), free_port());
    let tmp = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new("bash")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo.sh"))
        .env("WHARF_BIN", env!("CARGO_BIN_EXE_wharf"))
        .env("DEMO_OWN_MOCK", "0")
        .env("DEMO_PROVIDER_KEY", PROVIDER_KEY)
        .env("MOCK_ADDR", mock.addr().to_string())
        .env("DEMO_PROXY_PORT", proxy.to_string())
        .env("DEMO_ADMIN_PORT", admin.to_string())
        .env("DEMO_PG_PORT", pg.to_string())
        .env("DEMO_REDIS_PORT", redis.to_string())
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Stops the demo (its own cleanup: gateway and throwaway services) however the test ends.
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let pid = self.0.to_string();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
            for _ in 0..300 {
                let alive = std::process::Command::new("kill")
                    .args(["-0", &pid])
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !alive {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let stop = Stop(child.id().unwrap());
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut password, mut key, mut text) = (None, None, String::new());
    let read = async {
        while let Some(l) = lines.next_line().await.unwrap() {
            text.push_str(&l);
            text.push('\n');
            if let Some(rest) = l.trim().strip_prefix("Sign in:") {
                password = rest.split(" / ").nth(1).map(|p| p.trim().to_string());
            }
            if let Some((_, k)) = l.split_once("virtual key: ") {
                key = Some(k.trim().to_string());
            }
            if l.starts_with("Ctrl-C stops") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(240), read)
        .await
        .unwrap_or_else(|_| panic!("the demo did not finish seeding: {text}"));
    let password = password.unwrap_or_else(|| panic!("no password in {text}"));
    assert!(key.unwrap_or_default().starts_with("wharf_"), "{text}");
    assert!(
        text.contains(&format!("http://127.0.0.1:{admin}/")),
        "no console URL in {text}"
    );
    let mut b = Browser {
        base: format!("http://127.0.0.1:{admin}"),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        cookies: HashMap::new(),
        set_cookies: Vec::new(),
        extra: Vec::new(),
    };
    assert_eq!(b.login("admin@demo.test", &password).await.status, 303);
    // The traffic is on the organisation's usage page: successes and provider errors.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = b.page("/demo/usage").await;
        if [
            ">gpt-4o-mini<",
            ">gpt-4o<",
            "active\">200<",
            "revoked\">500<",
        ]
        .iter()
        .all(|w| p.body.contains(w))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no demo traffic: {}", p.body);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for page in [
        "/demo/dashboard",
        "/demo/models",
        "/demo/apikeys",
        "/demo/budgets",
    ] {
        b.page(page).await;
    }
    // Stopping the demo stops the gateway and the throwaway services.
    let t = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &stop.0.to_string()])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the demo did not stop")
        .unwrap();
    assert!(!status.success(), "a stopped demo exits non-zero: {status}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "stopping took {:?}",
        t.elapsed()
    );
    std::mem::forget(stop);
    // (Redis is sent SIGTERM and exits moments later.)
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in [admin, pg, redis] {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            assert!(
                Instant::now() < deadline,
                "port {port} still open after the demo stopped (admin {admin}, Postgres {pg}, Redis {redis})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Inserts a usage record of `org` `minutes_ago`, with a status and a latency.
async fn record_at(db: &TestDb, org: &str, minutes_ago: i64, status: i16, latency: f64) {
    let outcome = if status < 400 { "success" } else { "error" };
    sqlx::query(
        "INSERT INTO usage_records (request_id, organisation_id, endpoint, model, provider, status,
                                    outcome, error_code, latency_ms, ttfb_ms, input_tokens,
                                    output_tokens, cost_nanos, stream, attempts, created_at)
         VALUES ($1, $2::uuid, '/v1/chat/completions', 'chat-x', 'mockp', $3, $4,
                 CASE WHEN $3 >= 400 THEN 'upstream_error' END, $5, $5 / 2, 10, 20, 1500, $3 = 200,
                 '[{\"provider\":\"mockp\",\"model\":\"chat-x\",\"outcome\":\"ok\"}]'::jsonb,
                 now() - make_interval(mins => $6::int))",
    )
    .bind(format!("rec-{}", uuid::Uuid::new_v4().simple()))
    .bind(org)
    .bind(status)
    .bind(outcome)
    .bind(latency)
    .bind(minutes_ago as i32)
    .execute(&db.pool)
    .await
    .unwrap();
}

/// The dashboard's charts: one bar per hour of the last 24 hours (or per day), zero buckets
/// included, labelled axes, requests stacked by status class, hover values, latency p50/p95;
/// the series come from the admin API's `usage/series`.
#[tokio::test]
async fn dashboard_charts_have_a_full_time_axis() {
    let e = env().await;
    let o = org(&e, "Alpha", "alpha").await;
    for (ago, status, lat) in [
        (125, 200, 100.0),
        (125, 200, 200.0),
        (125, 200, 300.0),
        (125, 500, 900.0),
        (300, 429, 50.0),
    ] {
        record_at(&e.db, &o, ago, status, lat).await;
    }
    let (st, v) = e
        .root
        .call(
            "GET",
            &format!("/api/organisations/{o}/usage/series?period=last_24_hours&granularity=HOUR"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let points = v["data"].as_array().unwrap();
    assert_eq!(points.len(), 25, "every hour the 24 hours touch: {v}");
    let busy: Vec<&Value> = points.iter().filter(|p| p["requests"] == 4).collect();
    assert_eq!(busy.len(), 1, "{v}");
    let busy = busy[0];
    assert_eq!(busy["status_2xx"], 3);
    assert_eq!(busy["status_5xx"], 1);
    assert_eq!(busy["errors"], 1);
    assert_eq!(busy["cost_nanos"], 6000);
    assert_eq!(busy["latency_p50_ms"].as_f64().unwrap(), 250.0);
    assert!(busy["latency_p95_ms"].as_f64().unwrap() > 800.0);
    assert_eq!(points.iter().filter(|p| p["requests"] == 0).count(), 23);
    let (st, v) = e
        .root
        .call(
            "GET",
            &format!("/api/organisations/{o}/usage/series?period=last_30_days"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 31, "{v}");
    let (st, _) = e
        .root
        .call(
            "GET",
            &format!("/api/organisations/{o}/usage/series?period=custom&from=2000-01-01&to=2026-01-01&granularity=HOUR"),
            None,
        )
        .await;
    assert_eq!(st, 400, "too many buckets");

    let mut b = Browser::new(&e.gw);
    assert_eq!(b.login(ROOT, ROOT_PW).await.status, 303);
    let dash = b.page("/alpha/dashboard?period=last_24_hours").await;
    let at = dash
        .body
        .find("id=\"chart-requests\"")
        .expect("requests chart");
    let chart = &dash.body[at..at + dash.body[at..].find("</figure>").unwrap()];
    assert!(chart.contains("data-buckets=\"25\""), "{chart}");
    assert_eq!(chart.matches("<g class=\"bar\"").count(), 25, "{chart}");
    for want in [
        "Hour (UTC)",
        ">requests</text>",
        "· 2xx 3 · 4xx 0 · 5xx 1 · other 0</title>",
        "class=\"s-5xx\"",
    ] {
        assert!(chart.contains(want), "{want} not in {chart}");
    }
    assert!(dash.body.contains("id=\"chart-latency\""));
    assert!(
        dash.body.contains("· p95 810 ms · p50 250 ms</title>"),
        "latency hover"
    );
    assert_eq!(
        dash.body[dash.body.find("stat-requests").unwrap()..]
            .split('>')
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap(),
        "5"
    );
    let month = b.page("/alpha/dashboard").await;
    let at = month.body.find("id=\"chart-requests\"").unwrap();
    let chart = &month.body[at..at + month.body[at..].find("</figure>").unwrap()];
    assert_eq!(chart.matches("<g class=\"bar\"").count(), 31);
    assert!(chart.contains("Day (UTC)"));
}

/// The usage log: one-line times, key, team and user by name, the error code, TTFB, the stream
/// flag and the attempts of each request; "errors only"; a row's detail page with its attempts,
/// pricing and verdicts.
#[tokio::test]
async fn usage_log_shows_who_what_failed_and_details() {
    let e = env().await;
    let o = org(&e, "Alpha", "alpha").await;
    let team = e
        .root
        .create(
            &format!("/api/organisations/{o}/teams"),
            json!({"name": "Search team"}),
        )
        .await;
    let key = e
        .root
        .create(
            &format!("/api/organisations/{o}/api-keys"),
            json!({"name": "search-bot", "key_type": "TEAM", "team_id": id(&team)}),
        )
        .await;
    record_at(&e.db, &o, 10, 200, 120.0).await;
    record_at(&e.db, &o, 5, 502, 40.0).await;
    sqlx::query(
        "UPDATE usage_records SET api_key_id = $1::uuid, team_id = $2::uuid,
                pricing = '{\"input\": 2500000000, \"output\": 10000000000}'::jsonb
          WHERE organisation_id = $3::uuid",
    )
    .bind(id(&key))
    .bind(id(&team))
    .bind(&o)
    .execute(&e.db.pool)
    .await
    .unwrap();
    let rid_of = |status: i16| {
        let pool = e.db.pool.clone();
        let o = o.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT request_id FROM usage_records WHERE organisation_id = $1::uuid AND status = $2",
            )
            .bind(o)
            .bind(status)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let failed = rid_of(502).await;
    let ok = rid_of(200).await;

    let mut b = Browser::new(&e.gw);
    assert_eq!(b.login(ROOT, ROOT_PW).await.status, 303);
    let p = b.page("/alpha/usage").await;
    for want in [
        "search-bot",
        "Search team",
        "<code>upstream_error</code>",
        ">60 ms<",
        ">120 ms<",
        "Errors only",
        "<td class=\"nowrap\"><time",
    ] {
        assert!(
            p.body.contains(want),
            "{want} not on the usage page: {}",
            p.body
        );
    }
    assert!(p.body.contains(&ok) && p.body.contains(&failed));
    // Errors only (the API's `errors=true`).
    let p = b.page("/alpha/usage?errors=true").await;
    assert!(p.body.contains(&failed), "{}", p.body);
    assert!(!p.body.contains(&ok), "a success among the errors");
    assert!(p
        .body
        .contains("id=\"f_errors\" type=\"checkbox\" name=\"errors\" value=\"true\" checked"));
    let (st, v) = e
        .root
        .call(
            "GET",
            &format!("/api/organisations/{o}/usage/records?errors=true"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["total"], 1, "{v}");
    let (st, _) = e
        .root
        .call(
            "GET",
            &format!("/api/organisations/{o}/usage/records?errors=maybe"),
            None,
        )
        .await;
    assert_eq!(st, 400);
    // A row's details.
    let d = b.page(&format!("/alpha/usage/{failed}")).await;
    for want in [
        "Attempts (1)",
        "mockp",
        "upstream_error",
        "search-bot",
        "Search team",
        "input $2.50 · output $10.00",
        "time to first byte 20 ms",
        "No filter or safety check acted on this request.",
    ] {
        assert!(d.body.contains(want), "{want} not in {}", d.body);
    }
    let p = b.get("/alpha/usage/no-such-request").await;
    assert_eq!(p.status, 404);
    // Another organisation's request is not found from this one.
    let beta = org(&e, "Beta", "beta").await;
    record_at(&e.db, &beta, 1, 200, 10.0).await;
    let theirs: String =
        sqlx::query_scalar("SELECT request_id FROM usage_records WHERE organisation_id = $1::uuid")
            .bind(&beta)
            .fetch_one(&e.db.pool)
            .await
            .unwrap();
    assert_eq!(b.get(&format!("/alpha/usage/{theirs}")).await.status, 404);
}

/// The budgets list and a budget's page: spend in the current window, what remains, the bar,
/// when it resets, the thresholds crossed and a link to the usage it counts.
#[tokio::test]
async fn budgets_page_shows_spend_remaining_and_reset() {
    let e = env().await;
    let o = org(&e, "Alpha", "alpha").await;
    let team = e
        .root
        .create(
            &format!("/api/organisations/{o}/teams"),
            json!({"name": "Search team"}),
        )
        .await;
    let budget = e
        .root
        .create(
            &format!("/api/organisations/{o}/budgets"),
            json!({"name": "search monthly", "scope": "TEAM", "scope_id": id(&team),
                   "amount_nanos": 10_000_000_000i64, "period": "MONTHLY",
                   "warning_thresholds": [50, 80]}),
        )
        .await;
    let (_, limits) = e
        .root
        .call("GET", &format!("/api/organisations/{o}/usage/limits"), None)
        .await;
    let m = limits["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == budget["id"])
        .unwrap()
        .clone();
    let (start, end) = (
        m["window"]["start"].as_str().unwrap().to_string(),
        m["window"]["end"].as_str().unwrap().to_string(),
    );
    sqlx::query(
        "INSERT INTO budget_windows (budget_id, window_start, window_end, used_nanos, reserved_nanos)
         VALUES ($1::uuid, $2::timestamptz, $3::timestamptz, 6000000000, 0)",
    )
    .bind(id(&budget))
    .bind(&start)
    .bind(&end)
    .execute(&e.db.pool)
    .await
    .unwrap();
    let mut b = Browser::new(&e.gw);
    assert_eq!(b.login(ROOT, ROOT_PW).await.status, 303);
    for path in [
        "/alpha/budgets".to_string(),
        format!("/alpha/budgets/{}", id(&budget)),
    ] {
        let p = b.page(&path).await;
        let at = p
            .body
            .find(&format!("<tr data-budget-id=\"{}\"", id(&budget)))
            .unwrap_or_else(|| panic!("no meter on {path}: {}", p.body));
        let row = &p.body[at..at + p.body[at..].find("</tr>").unwrap()];
        for want in [
            "team Search team".to_string(),
            "$6.00".to_string(),
            "$4.00".to_string(),
            "of $10.00".to_string(),
            "width=\"60.00\"".to_string(),
            "<span class=\"badge expired\">50%</span>".to_string(),
            format!("<time datetime=\"{end}\">"),
            format!("team_id={}", id(&team)),
            "period=custom".to_string(),
        ] {
            assert!(row.contains(&want), "{path}: {want} not in {row}");
        }
        assert!(!row.contains(">80%<"), "80% is not crossed: {row}");
    }
    // The usage link opens the usage page filtered to the team and the window.
    let p = b.page("/alpha/budgets").await;
    let at = p.body.find("Usage →").unwrap();
    let href_at = p.body[..at].rfind("href=\"").unwrap() + 6;
    let href = p.body[href_at..at]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let u = b.page(&href).await;
    assert!(
        u.body.contains(&format!(
            "<option value=\"{}\" selected>Search team</option>",
            id(&team)
        )),
        "{}",
        u.body
    );
}

/// The API keys list shows each key's model count, last use, this month's spend and budget;
/// the "created" page shows the gateway's base URL and a curl that works as pasted.
#[tokio::test]
async fn api_keys_list_and_created_page_are_ready_to_use() {
    let e = env().await;
    let cat = common::db::seed_catalog(&e.db, &e._mock, "Alpha", "chat-x", "up-chat-x").await;
    let o = cat.org.to_string();
    let slug: String = sqlx::query_scalar("SELECT slug FROM organisations WHERE id = $1")
        .bind(cat.org)
        .fetch_one(&e.db.pool)
        .await
        .unwrap();
    let mut b = Browser::new(&e.gw);
    assert_eq!(b.login(ROOT, ROOT_PW).await.status, 303);
    let p = b
        .submit(
            &format!("/{slug}/apikeys"),
            &format!("/{slug}/apikeys"),
            &[
                ("name", "ci"),
                ("key_type", "ORGANISATION"),
                ("models", &cat.model.to_string()),
            ],
        )
        .await;
    let p = b.follow(p).await;
    let secret = {
        let at = p.body.find("value=\"wharf_").expect("secret");
        let rest = &p.body[at + 7..];
        rest[..rest.find('"').unwrap()].to_string()
    };
    let base = e.gw.url("");
    let base = base.trim_end_matches('/');
    assert!(
        p.body
            .contains(&format!("<code id=\"once-base\">{base}/v1</code>")),
        "{}",
        p.body
    );
    let at = p.body.find("<pre id=\"once-curl\"><code>").expect("a curl");
    let curl = &p.body[at..at + p.body[at..].find("</code>").unwrap()];
    for want in [
        format!("curl {base}/v1/chat/completions"),
        format!("Authorization: Bearer {secret}"),
        "&quot;model&quot;: &quot;chat-x&quot;".to_string(),
    ] {
        assert!(curl.contains(&want), "{want} not in {curl}");
    }
    // What the curl sends works against the gateway.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client()
            .post(format!("{base}/v1/chat/completions"))
            .header("Authorization", format!("Bearer {secret}"))
            .json(&json!({"model": "chat-x", "messages": [{"role": "user", "content": "Hello!"}]}))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the curl answered {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A budget on the key; its spend and last use reach the list.
    let (_, keys) = e
        .root
        .call("GET", &format!("/api/organisations/{o}/api-keys"), None)
        .await;
    let key_id = id(&keys["data"][0]);
    e.root
        .create(
            &format!("/api/organisations/{o}/budgets"),
            json!({"name": "ci daily", "scope": "APIKEY", "scope_id": key_id,
                   "amount_nanos": 5_000_000_000i64, "period": "DAILY"}),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let row = loop {
        let p = b.page(&format!("/{slug}/apikeys")).await;
        let at = p
            .body
            .find(&format!("<tr data-key-id=\"{key_id}\""))
            .expect("the key's row");
        let row = p.body[at..at + p.body[at..].find("</tr>").unwrap()].to_string();
        if !row.contains("never") && row.contains("$0.0000") {
            break row;
        }
        assert!(Instant::now() < deadline, "no usage on the row: {row}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(row.contains("<td class=\"models\">1</td>"), "{row}");
    assert!(row.contains(" of $5.00 ("), "{row}");
    assert!(row.contains(" UTC</td>"), "last used: {row}");
}

/// The API docs page: a model picker, and for each model only the snippets it can serve as
/// pasted (its provider's family and its type); the Common Errors table with Wharf's codes; the
/// environment of IDE and CLI integrations.
#[tokio::test]
async fn docs_page_offers_only_snippets_a_model_can_serve() {
    let e = env().await;
    let o = org(&e, "Alpha", "alpha").await;
    let mut models = HashMap::new();
    let mut providers: HashMap<&str, Value> = HashMap::new();
    for (ptype, model, mtype) in [
        ("OPENAI", "gpt-x", "chat"),
        ("ANTHROPIC", "claude-x", "chat"),
        ("GOOGLE", "gem-x", "chat"),
        ("OPENAI", "emb-x", "embeddings"),
    ] {
        if !providers.contains_key(ptype) {
            let p = e
                .root
                .create(
                    &format!("/api/organisations/{o}/providers"),
                    json!({"name": format!("{model}-p"), "provider_type": ptype,
                           "base_url": "http://127.0.0.1:9/v1"}),
                )
                .await;
            providers.insert(ptype, p);
        }
        let p = &providers[ptype];
        let m = e
            .root
            .create(
                &format!("/api/organisations/{o}/models"),
                json!({"name": model, "slug": format!("up-{model}"), "model_type": mtype,
                       "provider_id": id(p)}),
            )
            .await;
        models.insert(model, id(&m));
    }
    let mut b = Browser::new(&e.gw);
    assert_eq!(b.login(ROOT, ROOT_PW).await.status, 303);
    let snippets = |body: &str| -> Vec<String> {
        body.match_indices("data-snippet=\"")
            .map(|(at, m)| {
                let rest = &body[at + m.len()..];
                rest[..rest.find('"').unwrap()].to_string()
            })
            .collect()
    };
    let page = b.page("/alpha/docs").await;
    assert!(page
        .body
        .contains("<select id=\"docs_model\" name=\"model\" data-autosubmit>"));
    assert_eq!(
        snippets(&page.body),
        [
            "chat-curl",
            "chat-py",
            "chat-js",
            "stream-curl",
            "unified-curl"
        ],
        "the first chat model (OpenAI)"
    );
    assert!(page.body.contains("/v1/chat/completions \\\n"));
    let claude = b.page("/alpha/docs?model=claude-x").await;
    assert_eq!(
        snippets(&claude.body),
        ["anthropic-curl", "anthropic-py", "unified-curl"]
    );
    assert!(claude.body.contains("/v1/messages"));
    assert!(claude
        .body
        .contains("&quot;model&quot;: &quot;claude-x&quot;"));
    assert!(
        !claude.body.contains("/v1/chat/completions \\\n"),
        "an OpenAI snippet for Claude"
    );
    let gem = b.page("/alpha/docs?model=gem-x").await;
    assert_eq!(
        snippets(&gem.body),
        ["gemini-curl", "gemini-py", "unified-curl"]
    );
    assert!(gem.body.contains("/v1beta/models/gem-x:generateContent"));
    let emb = b.page("/alpha/docs?model=emb-x").await;
    assert_eq!(snippets(&emb.body), ["embed-curl"]);
    assert!(emb.body.contains("&quot;model&quot;: &quot;emb-x&quot;"));
    // Common errors, from the gateway's codes.
    let at = page.body.find("id=\"common-errors\"").unwrap();
    let table = &page.body[at..at + page.body[at..].find("</table>").unwrap()];
    for (status, code) in [
        (401, "unauthorized"),
        (402, "budget_exceeded"),
        (403, "model_not_allowed"),
        (400, "model_not_found"),
        (429, "rpm_exceeded"),
        (429, "quota_exceeded"),
        (502, "upstream_error"),
        (503, "dependency_unavailable"),
        (504, "upstream_timeout"),
    ] {
        assert!(
            table.contains(&format!("<td>{status}</td><td><code>{code}</code>")),
            "{status} {code} not in {table}"
        );
    }
    // IDE and CLI integrations with the environment each needs.
    let base = e.gw.url("");
    let base = base.trim_end_matches('/');
    for want in [
        format!("ANTHROPIC_BASE_URL={base}\nANTHROPIC_AUTH_TOKEN=$WHARF_API_KEY"),
        format!("OPENAI_BASE_URL={base}/v1\nOPENAI_API_KEY=$WHARF_API_KEY\ncodex --model gpt-x"),
        format!("apiBase: {base}/v1"),
        "aider --model openai/gpt-x".to_string(),
        "data-tool=\"Cursor\"".to_string(),
    ] {
        assert!(page.body.contains(&want), "{want} not on the docs page");
    }
}

/// Pickers instead of UUID boxes: budget and quota owners and a model's provider key are chosen
/// by name, and lists and detail pages show names where the row holds ids.
#[tokio::test]
async fn owners_and_provider_keys_are_picked_by_name() {
    let e = env().await;
    let o = org(&e, "Alpha", "alpha").await;
    let team = e
        .root
        .create(
            &format!("/api/organisations/{o}/teams"),
            json!({"name": "Search team"}),
        )
        .await;
    let prov = e
        .root
        .create(
            &format!("/api/organisations/{o}/providers"),
            json!({"name": "mockp", "provider_type": "OPENAI", "base_url": "http://127.0.0.1:9/v1"}),
        )
        .await;
    let pkey = e
        .root
        .create(
            &format!("/api/organisations/{o}/providers/{}/keys", id(&prov)),
            json!({"name": "main", "secret": "sk-test-secret"}),
        )
        .await;
    let mut b = Browser::new(&e.gw);
    assert_eq!(b.login(ROOT, ROOT_PW).await.status, 303);
    let form = b.page("/alpha/budgets").await;
    assert!(
        form.body
            .contains("<select id=\"c_scope_id\" name=\"scope_id\""),
        "{}",
        form.body
    );
    assert!(form.body.contains(&format!(
        "<option value=\"{}\">Team · Search team</option>",
        id(&team)
    )));
    let p = b
        .submit(
            "/alpha/budgets",
            "/alpha/budgets",
            &[
                ("name", "team cap"),
                ("scope", "TEAM"),
                ("scope_id", &id(&team)),
                ("amount_usd", "20"),
                ("period", "MONTHLY"),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let item = p.location.unwrap();
    let list = b.page("/alpha/budgets").await;
    assert!(
        list.body.contains("<td>Team · Search team</td>"),
        "{}",
        list.body
    );
    let page = b.page(item.split('?').next().unwrap()).await;
    assert!(
        page.body.contains("<dd>Team · Search team</dd>"),
        "{}",
        page.body
    );
    // A model's provider key.
    let models = b.page("/alpha/models").await;
    assert!(
        models.body.contains(&format!(
            "<option value=\"{}\">mockp · main</option>",
            id(&pkey)
        )),
        "{}",
        models.body
    );
    assert!(!models.body.contains("sk-test-secret"));
}

/// The platform dashboard: every organisation's last 30 days as charts, the error rate,
/// provider health and the organisations by cost; the playground relay takes a system prompt,
/// earlier turns and parameters, and refuses bad ones readably.
#[tokio::test]
async fn platform_dashboard_and_playground_relay() {
    let e = env().await;
    let a = org(&e, "Alpha", "alpha").await;
    let bb = org(&e, "Beta", "beta").await;
    record_at(&e.db, &a, 30, 200, 10.0).await;
    record_at(&e.db, &bb, 30, 500, 10.0).await;
    record_at(&e.db, &bb, 40, 200, 10.0).await;
    sqlx::query(
        "UPDATE usage_records SET cost_nanos = 9000000000 WHERE organisation_id = $1::uuid",
    )
    .bind(&bb)
    .execute(&e.db.pool)
    .await
    .unwrap();
    e.root
        .create(
            &format!("/api/organisations/{a}/providers"),
            json!({"name": "alpha-prov", "provider_type": "OPENAI", "base_url": "http://127.0.0.1:9/v1"}),
        )
        .await;
    let mut b = Browser::new(&e.gw);
    assert_eq!(b.login(ROOT, ROOT_PW).await.status, 303);
    let deadline = Instant::now() + Duration::from_secs(10);
    let p = loop {
        let p = b.page("/admin/dashboard").await;
        if p.body.contains("<td>alpha-prov</td><td>Alpha</td>") {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "no provider health row: {}",
            p.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        p.body.contains("id=\"platform-error-rate\">33.3%<"),
        "{}",
        p.body
    );
    let at = p.body.find("id=\"chart-requests\"").expect("charts");
    let chart = &p.body[at..at + p.body[at..].find("</figure>").unwrap()];
    assert_eq!(chart.matches("<g class=\"bar\"").count(), 31);
    // (The three requests may straddle midnight: count them over the bars.)
    let count = |class: &str| -> i64 {
        chart
            .match_indices(&format!(" · {class} "))
            .map(|(at, m)| {
                let rest = &chart[at + m.len()..];
                rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap()]
                    .parse::<i64>()
                    .unwrap()
            })
            .sum()
    };
    assert_eq!((count("2xx"), count("5xx")), (2, 1), "{chart}");
    // Beta costs more: it comes first.
    let beta_at = p.body.find("href=\"/beta/dashboard\"").unwrap();
    let alpha_at = p.body.find("href=\"/alpha/dashboard\"").unwrap();
    assert!(beta_at < alpha_at, "organisations by cost");

    // The playground relay: parameters are checked before anything is sent.
    let cat = common::db::seed_catalog(&e.db, &e._mock, "Gamma", "chat-x", "up-chat-x").await;
    let slug: String = sqlx::query_scalar("SELECT slug FROM organisations WHERE id = $1")
        .bind(cat.org)
        .fetch_one(&e.db.pool)
        .await
        .unwrap();
    let (_, secret) = common::db::seed_key(&e.db, cat.org, "pg", &[cat.model]).await;
    let csrf = b.page(&format!("/{slug}/playground")).await.csrf();
    let relay = format!("/{slug}/playground/chat");
    let p = b
        .post(
            &relay,
            &[
                ("_csrf", &csrf),
                ("key", &secret),
                ("model", "chat-x"),
                ("prompt", "hi"),
                ("temperature", "5"),
            ],
        )
        .await;
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(
        p.body.contains("temperature: a number from 0 to 2"),
        "{}",
        p.body
    );
    let p = b
        .post(
            &relay,
            &[
                ("_csrf", &csrf),
                ("key", &secret),
                ("model", "chat-x"),
                ("prompt", "hi"),
                ("history", "[{\"role\": \"system\", \"content\": \"x\"}]"),
            ],
        )
        .await;
    assert_eq!(p.status, 400, "{}", p.body);
    // A system prompt and two earlier turns count as input.
    let send = |history: &'static str, system: &'static str| {
        let (relay, csrf, secret) = (relay.clone(), csrf.clone(), secret.clone());
        let http = b.http.clone();
        let base = b.base.clone();
        let cookie = b.cookie_header();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let r = http
                    .post(format!("{base}{relay}"))
                    .header("cookie", &cookie)
                    .form(&[
                        ("_csrf", csrf.as_str()),
                        ("key", secret.as_str()),
                        ("model", "chat-x"),
                        ("prompt", "And now?"),
                        ("history", history),
                        ("system", system),
                        ("temperature", "0.5"),
                        ("max_tokens", "32"),
                    ])
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    break r.headers()["x-request-id"].to_str().unwrap().to_string();
                }
                assert!(
                    Instant::now() < deadline,
                    "the relay answered {}",
                    r.status()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let short = send("[]", "").await;
    let long = send(
        "[{\"role\": \"user\", \"content\": \"What is the capital of France, in one word?\"}, {\"role\": \"assistant\", \"content\": \"Paris, the capital and largest city of France.\"}]",
        "You are a terse assistant that answers in as few words as possible.",
    )
    .await;
    let tokens = |rid: String| {
        let pool = e.db.pool.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let t: Option<i64> = sqlx::query_scalar(
                    "SELECT input_tokens FROM usage_records WHERE request_id = $1",
                )
                .bind(&rid)
                .fetch_optional(&pool)
                .await
                .unwrap();
                if let Some(t) = t {
                    break t;
                }
                assert!(Instant::now() < deadline, "no usage record of {rid}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let (s, l) = (tokens(short).await, tokens(long).await);
    assert!(
        l > s + 10,
        "the earlier turns and the system prompt were not sent: {s} vs {l}"
    );
}
