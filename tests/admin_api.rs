//! The admin API end to end: real `wharf` processes in database mode (fresh database per
//! test), Redis for fan-out, the mock provider upstream, requests over real sockets.
#![allow(clippy::unwrap_used)]

mod common;

use common::db::TestDb;
use common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};
use wharf::db::crypto::MasterKeys;

const MASTER: &str = common::db::TEST_MASTER_KEYS;

async fn start(mock: &wharf_mock::MockServer, db: &TestDb) -> Gw {
    common::db::admin_node(mock, db).await
}

/// An admin API client acting with one token.
#[derive(Clone)]
struct Api {
    base: String,
    token: String,
}

impl Api {
    fn new(gw: &Gw, token: &str) -> Api {
        Api {
            base: gw.admin_url(""),
            token: token.to_string(),
        }
    }

    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
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
        (st, r.text().await.unwrap())
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (st, text) = self.raw(method, path, body).await;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (st, v)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body)).await
    }

    async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("PATCH", path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("PUT", path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> u16 {
        self.call("DELETE", path, None).await.0
    }

    /// POST that must answer 201; returns the body.
    async fn create(&self, path: &str, body: Value) -> Value {
        let (st, v) = self.post(path, body.clone()).await;
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

async fn root_token(db: &TestDb) -> String {
    wharf::api::bootstrap::bootstrap(&db.pool, Some("root@example.com"))
        .await
        .unwrap()
        .token
}

/// A user of `org` with `role` and an admin token for it (created by the super admin).
async fn user_with_token(root: &Api, org: Option<&str>, email: &str, role: &str) -> (String, Api) {
    let u = root
        .create(
            "/api/admin/users",
            json!({"email": email, "organisation_id": org, "role": role}),
        )
        .await;
    let t = root
        .create(
            &format!("/api/admin/users/{}/tokens", id(&u)),
            json!({"name": "t"}),
        )
        .await;
    let token = t["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("wharf_adm_"), "{t}");
    assert!(t.get("token_hash").is_none(), "{t}");
    (
        id(&u),
        Api {
            base: root.base.clone(),
            token,
        },
    )
}

/// A provider of `org` (as `body` describes it) with the mock's key; its id.
async fn provider_with_key(root: &Api, org: &str, body: Value) -> String {
    let p = id(&root.create(&org_path(org, "/providers"), body).await);
    root.create(
        &org_path(org, &format!("/providers/{p}/keys")),
        json!({"secret": PROVIDER_KEY}),
    )
    .await;
    p
}

fn org_path(org: &str, rest: &str) -> String {
    format!("/api/organisations/{org}{rest}")
}

async fn chat(gw: &Gw, key: &str, model: &str) -> (u16, Value) {
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body(model, false))
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bootstrap_via_the_real_binary() {
    let mock = mock().await;
    let empty = TestDb::empty().await;
    let run = |url: String, email: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
        cmd.args(["admin", "bootstrap", "--database-url", &url]);
        if let Some(e) = email {
            cmd.args(["--email", e]);
        }
        cmd.env_remove("DATABASE_URL").output().unwrap()
    };
    let out = run(empty.url(), None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wharf migrate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let db = TestDb::migrated().await;
    let out = run(db.url(), Some("root@example.com"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let token = stdout
        .split_whitespace()
        .find(|w| w.starts_with("wharf_adm_"))
        .unwrap_or_else(|| panic!("no token in {stdout}"))
        .to_string();
    assert!(
        stdout.contains("created super admin root@example.com"),
        "{stdout}"
    );
    // Only the hash and a display prefix are stored.
    let (hash, prefix): (String, String) =
        sqlx::query_as("SELECT token_hash, token_prefix FROM admin_tokens")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(hash, sha(&token));
    assert_eq!(prefix, &token[..14]);
    let dump: String =
        sqlx::query_scalar("SELECT string_agg(to_jsonb(t)::text, '') FROM admin_tokens t")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!dump.contains(&token));

    // A second bootstrap does not create another super admin...
    let out = run(db.url(), None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = run(db.url(), Some("other@example.com"));
    assert!(!out.status.success());
    // ...but issues another token to the named one.
    let out = run(db.url(), Some("ROOT@example.com"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("wharf_adm_"))
        .unwrap()
        .to_string();
    assert_ne!(second, token);
    let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'SUPER_ADMIN'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(admins, 1);

    // The printed token authenticates against a running gateway.
    let gw = start(&mock, &db).await;
    for t in [&token, &second] {
        let (st, me) = Api::new(&gw, t).get("/api/me").await;
        assert_eq!(st, 200, "{me}");
        assert_eq!(me["role"], "SUPER_ADMIN");
        assert_eq!(me["email"], "root@example.com");
    }
    let (st, v) = Api::new(&gw, "wharf_adm_nope").get("/api/me").await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"]["code"], "unauthorized");
    assert_eq!(Api::new(&gw, "").get("/api/me").await.0, 401);
}

#[tokio::test]
async fn crud_through_the_api_for_every_resource() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let gw = start(&mock, &db).await;
    let root = Api::new(&gw, &root_token(&db).await);

    // Organisations (super admin).
    let org = root
        .create(
            "/api/admin/organisations",
            json!({"name": "Acme", "slug": "acme"}),
        )
        .await;
    let o = id(&org);
    assert_eq!(org["enabled"], true);
    let (st, v) = root
        .patch(
            &format!("/api/admin/organisations/{o}"),
            json!({"name": "Acme Corp"}),
        )
        .await;
    assert_eq!((st, v["name"].clone()), (200, json!("Acme Corp")));
    let (st, v) = root.get("/api/admin/organisations").await;
    assert_eq!((st, v["total"].clone()), (200, json!(1)));
    let (st, v) = root
        .patch(
            &org_path(&o, ""),
            json!({"policies": {"policies": {"ip": {"allowlist": ["10.0.0.0/8"]}}}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        root.get(&org_path(&o, "")).await.1["policies"]["policies"]["ip"]["allowlist"][0],
        "10.0.0.0/8"
    );

    // Users.
    let u = root
        .create(
            &org_path(&o, "/users"),
            json!({"email": "mgr@acme.test", "role": "MANAGER"}),
        )
        .await;
    let uid = id(&u);
    assert_eq!(u["organisation_id"], o.as_str());
    assert!(u.get("password_hash").is_none());
    let (st, v) = root
        .patch(
            &org_path(&o, &format!("/users/{uid}")),
            json!({"name": "Mia"}),
        )
        .await;
    assert_eq!((st, v["name"].clone()), (200, json!("Mia")));
    let (_, v) = root.get(&org_path(&o, "/users?role=MANAGER")).await;
    assert_eq!(v["total"], 1, "{v}");

    // Teams and members.
    let team = root
        .create(&org_path(&o, "/teams"), json!({"name": "core"}))
        .await;
    let t = id(&team);
    let (st, v) = root
        .patch(
            &org_path(&o, &format!("/teams/{t}")),
            json!({"description": "the core team"}),
        )
        .await;
    assert_eq!(
        (st, v["description"].clone()),
        (200, json!("the core team"))
    );
    let m = root
        .create(
            &org_path(&o, &format!("/teams/{t}/members")),
            json!({"user_id": uid}),
        )
        .await;
    assert_eq!(m["team_role"], "MEMBER");
    let (st, v) = root
        .patch(
            &org_path(&o, &format!("/teams/{t}/members/{}", id(&m))),
            json!({"team_role": "MANAGER"}),
        )
        .await;
    assert_eq!((st, v["team_role"].clone()), (200, json!("MANAGER")));
    assert_eq!(
        root.get(&org_path(&o, &format!("/teams/{t}/members")))
            .await
            .1["total"],
        1
    );

    // Invitations: the token is shown once, only its hash is stored.
    let inv = root
        .create(
            &org_path(&o, "/invitations"),
            json!({"email": "new@acme.test", "role": "USER", "team_id": t, "team_role": "MEMBER"}),
        )
        .await;
    assert!(inv["token"].as_str().unwrap().starts_with("wharf_inv_"));
    assert!(inv.get("token_hash").is_none());
    let (st, v) = root
        .get(&org_path(&o, &format!("/invitations/{}", id(&inv))))
        .await;
    assert_eq!(st, 200);
    assert!(
        v.get("token").is_none() && v.get("token_hash").is_none(),
        "{v}"
    );
    let (st, _) = root
        .patch(
            &org_path(&o, &format!("/invitations/{}", id(&inv))),
            json!({"role": "MANAGER"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        root.delete(&org_path(&o, &format!("/invitations/{}", id(&inv))))
            .await,
        204
    );
    assert_eq!(
        root.get(&org_path(&o, &format!("/invitations/{}", id(&inv))))
            .await
            .0,
        404
    );

    // Providers and their (write-only) keys.
    let p = root
        .create(
            &org_path(&o, "/providers"),
            json!({"name": "mockp", "provider_type": "OPENAI", "base_url": format!("http://{}/v1", mock.addr())}),
        )
        .await;
    let pid = id(&p);
    let (st, v) = root
        .patch(
            &org_path(&o, &format!("/providers/{pid}")),
            json!({"timeout_ms": 5000}),
        )
        .await;
    assert_eq!((st, v["timeout_ms"].clone()), (200, json!(5000)));
    let pk = root
        .create(
            &org_path(&o, &format!("/providers/{pid}/keys")),
            json!({"secret": "sk-first-secret-1234"}),
        )
        .await;
    assert_eq!(pk["status"], "ACTIVE");
    let (st, v) = root
        .patch(
            &org_path(&o, &format!("/providers/{pid}/keys/{}", id(&pk))),
            json!({"status": "REVOKED"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "REVOKED");
    assert!(v["revoked_at"].is_string());

    // Models.
    let model = root
        .create(
            &org_path(&o, "/models"),
            json!({"name": "api-chat", "slug": "up-chat", "provider_id": pid,
                   "input_price_nanos": 150_000_000, "output_price_nanos": 600_000_000}),
        )
        .await;
    let mid = id(&model);
    assert_eq!(model["model_type"], "chat");
    let (st, v) = root
        .patch(
            &org_path(&o, &format!("/models/{mid}")),
            json!({"enabled": false, "policies": {"x": 1}}),
        )
        .await;
    assert_eq!((st, v["enabled"].clone()), (200, json!(false)));
    assert_eq!(
        root.get(&org_path(&o, &format!("/models?provider_id={pid}")))
            .await
            .1["total"],
        1
    );

    // MCP servers: auth config and env are write-only.
    let mcp = root
        .create(
            &org_path(&o, "/mcp-servers"),
            json!({"name": "Docs", "slug": "docs", "transport": "STREAMABLE_HTTP",
                   "url": "http://127.0.0.1:9/mcp", "auth_type": "BEARER",
                   "auth_config": {"token": "mcp-sekret"}, "allowed_tools": ["search"]}),
        )
        .await;
    assert!(mcp.get("auth_config").is_none(), "{mcp}");
    let (st, v) = root
        .patch(
            &org_path(&o, &format!("/mcp-servers/{}", id(&mcp))),
            json!({"keywords": ["docs"]}),
        )
        .await;
    assert_eq!((st, v["keywords"].clone()), (200, json!(["docs"])));
    assert!(!v.to_string().contains("mcp-sekret"));

    // Api keys: secret once, hash never; grants; rotate keeps the id; revoke/unrevoke; expiry.
    let key = root
        .create(
            &org_path(&o, "/api-keys"),
            json!({"name": "ci", "key_type": "TEAM", "team_id": t, "models": [mid], "mcp_servers": [id(&mcp)]}),
        )
        .await;
    let kid = id(&key);
    let secret = key["key"].as_str().unwrap().to_string();
    assert!(secret.starts_with(wharf::keys::KEY_PREFIX));
    assert!(secret.starts_with(key["key_prefix"].as_str().unwrap()));
    assert!(key.get("key_hash").is_none());
    assert_eq!(key["models"][0]["id"], mid.as_str());
    assert_eq!(key["mcp_servers"][0]["id"], id(&mcp).as_str());
    let stored: String =
        sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE id = $1::text::uuid")
            .bind(&kid)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, sha(&secret));
    let (st, v) = root.get(&org_path(&o, &format!("/api-keys/{kid}"))).await;
    assert_eq!(st, 200);
    assert!(v.get("key").is_none() && v.get("key_hash").is_none(), "{v}");
    let (st, v) = root
        .patch(
            &org_path(&o, &format!("/api-keys/{kid}")),
            json!({"expires_at": "2099-01-01T00:00:00Z", "routing_policy": {"routing": {"strategy": "failover"}}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["expires_at"].as_str().unwrap().starts_with("2099-01-01"));
    let (st, v) = root
        .get(&org_path(&o, &format!("/api-keys/{kid}/models")))
        .await;
    assert_eq!((st, v["total"].clone()), (200, json!(1)));
    let (st, v) = root
        .put(
            &org_path(&o, &format!("/api-keys/{kid}/models")),
            json!({"models": []}),
        )
        .await;
    assert_eq!((st, v["total"].clone()), (200, json!(0)));
    let (st, v) = root
        .put(
            &org_path(&o, &format!("/api-keys/{kid}/mcp-servers")),
            json!({"mcp_servers": []}),
        )
        .await;
    assert_eq!((st, v["total"].clone()), (200, json!(0)));
    let (st, v) = root
        .post(&org_path(&o, &format!("/api-keys/{kid}/rotate")), json!({}))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], kid.as_str());
    let rotated = v["key"].as_str().unwrap();
    assert_ne!(rotated, secret);
    let (_, h) = root
        .get(&org_path(&o, &format!("/api-keys/{kid}/history")))
        .await;
    assert_eq!(h["total"], 1, "{h}");
    assert_eq!(h["data"][0]["rotated_by"], "root@example.com");
    let (st, v) = root
        .post(&org_path(&o, &format!("/api-keys/{kid}/revoke")), json!({}))
        .await;
    assert_eq!(st, 200);
    assert!(v["revoked_at"].is_string());
    let (st, v) = root
        .post(
            &org_path(&o, &format!("/api-keys/{kid}/unrevoke")),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    assert!(v["revoked_at"].is_null());

    // Budgets and quotas.
    let b = root
        .create(
            &org_path(&o, "/budgets"),
            json!({"scope": "TEAM", "scope_id": t, "amount_nanos": 5_000_000_000i64,
                   "period": "MONTHLY", "warning_thresholds": [50, 90]}),
        )
        .await;
    let (st, v) = root
        .patch(
            &org_path(&o, &format!("/budgets/{}", id(&b))),
            json!({"amount_nanos": 7}),
        )
        .await;
    assert_eq!((st, v["amount_nanos"].clone()), (200, json!(7)));
    let ob = root
        .create(
            &org_path(&o, "/budgets"),
            json!({"scope": "ORG", "amount_nanos": 1, "period": "DAILY"}),
        )
        .await;
    assert_eq!(ob["scope_id"], o.as_str());
    let q = root
        .create(
            &org_path(&o, "/quotas"),
            json!({"scope": "APIKEY", "scope_id": kid, "metric": "REQUESTS", "limit_value": 100, "period": "DAILY"}),
        )
        .await;
    let (st, v) = root
        .patch(
            &org_path(&o, &format!("/quotas/{}", id(&q))),
            json!({"enabled": false}),
        )
        .await;
    assert_eq!((st, v["enabled"].clone()), (200, json!(false)));
    assert_eq!(root.get(&org_path(&o, "/quotas")).await.1["total"], 1);

    // Admin users and tokens.
    let (st, v) = root.get("/api/admin/users?role=SUPER_ADMIN").await;
    assert_eq!((st, v["total"].clone()), (200, json!(1)));
    let root_id = id(&v["data"][0]);
    let (_, v) = root
        .get(&format!("/api/admin/users/{root_id}/tokens"))
        .await;
    assert_eq!(v["total"], 1);
    assert!(v["data"][0].get("token_hash").is_none());

    // Deletes, in dependency order; each row is gone afterwards.
    for path in [
        format!("/quotas/{}", id(&q)),
        format!("/budgets/{}", id(&b)),
        format!("/budgets/{}", id(&ob)),
        format!("/api-keys/{kid}"),
        format!("/mcp-servers/{}", id(&mcp)),
        format!("/models/{mid}"),
        format!("/providers/{pid}/keys/{}", id(&pk)),
        format!("/providers/{pid}"),
        format!("/teams/{t}/members/{}", id(&m)),
        format!("/teams/{t}"),
        format!("/users/{uid}"),
    ] {
        assert_eq!(
            root.delete(&org_path(&o, &path)).await,
            204,
            "DELETE {path}"
        );
        assert_eq!(root.get(&org_path(&o, &path)).await.0, 404, "GET {path}");
    }
    assert_eq!(
        root.delete(&format!("/api/admin/organisations/{o}")).await,
        204
    );
    assert_eq!(root.get(&org_path(&o, "")).await.0, 404);
}

#[tokio::test]
async fn pagination_filters_and_validation_errors_name_the_field() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let gw = start(&mock, &db).await;
    let root = Api::new(&gw, &root_token(&db).await);
    let o = id(&root
        .create(
            "/api/admin/organisations",
            json!({"name": "A", "slug": "a"}),
        )
        .await);
    let other = id(&root
        .create(
            "/api/admin/organisations",
            json!({"name": "B", "slug": "b"}),
        )
        .await);
    for i in 0..7 {
        root.create(
            &org_path(&o, "/teams"),
            json!({"name": format!("team-{i}")}),
        )
        .await;
    }
    root.create(&org_path(&other, "/teams"), json!({"name": "elsewhere"}))
        .await;

    let (st, v) = root.get(&org_path(&o, "/teams?limit=3")).await;
    assert_eq!(st, 200);
    assert_eq!(v["total"], 7);
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    assert_eq!(v["data"][0]["name"], "team-0");
    let (_, v) = root.get(&org_path(&o, "/teams?limit=3&offset=3")).await;
    assert_eq!(v["data"][0]["name"], "team-3");
    let (_, v) = root.get(&org_path(&o, "/teams?limit=3&offset=6")).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["total"], 7);
    let (_, v) = root.get(&org_path(&o, "/teams?name=team-5")).await;
    assert_eq!(v["total"], 1);
    assert_eq!(v["data"][0]["name"], "team-5");

    let expect_field = |st: u16, v: &Value, field: &str| {
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}: ")),
            "{v}"
        );
    };
    let (st, v) = root.get(&org_path(&o, "/teams?limit=0")).await;
    expect_field(st, &v, "limit");
    let (st, v) = root.get(&org_path(&o, "/teams?offset=-1")).await;
    expect_field(st, &v, "offset");
    let (st, v) = root.get(&org_path(&o, "/teams?colour=red")).await;
    expect_field(st, &v, "colour");

    let (st, v) = root
        .post(&org_path(&o, "/teams"), json!({"name": ""}))
        .await;
    expect_field(st, &v, "name");
    assert_eq!(
        v,
        json!({"error": {"code": "invalid_request", "message": "name: must not be empty",
                         "type": "invalid_request_error", "field": "name"}})
    );
    let (st, v) = root.post(&org_path(&o, "/teams"), json!({})).await;
    expect_field(st, &v, "name");
    let (st, v) = root
        .post(&org_path(&o, "/teams"), json!({"name": "x", "size": 3}))
        .await;
    expect_field(st, &v, "size");
    let (st, v) = root.call("POST", &org_path(&o, "/teams"), None).await;
    expect_field(st, &v, "body");
    let (st, v) = root.post(&org_path(&o, "/teams"), json!(["x"])).await;
    expect_field(st, &v, "body");
    let (st, v) = root
        .post(&org_path(&o, "/teams"), json!({"name": "team-1"}))
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"]["field"], "name", "{v}");
    let (st, v) = root
        .post(
            &org_path(&o, "/providers"),
            json!({"name": "p", "provider_type": "OPENAI", "base_url": "ftp://x"}),
        )
        .await;
    expect_field(st, &v, "base_url");
    let (st, v) = root
        .post(
            &org_path(&o, "/providers"),
            json!({"name": "p", "provider_type": "NOPE", "base_url": "http://x"}),
        )
        .await;
    expect_field(st, &v, "provider_type");
    // A provider of another organisation cannot be referenced.
    let foreign = root
        .create(
            &org_path(&other, "/providers"),
            json!({"name": "p", "provider_type": "OPENAI", "base_url": "http://x"}),
        )
        .await;
    let (st, v) = root
        .post(
            &org_path(&o, "/models"),
            json!({"name": "m", "slug": "s", "provider_id": id(&foreign)}),
        )
        .await;
    expect_field(st, &v, "provider_id");
    let (st, v) = root
        .post(
            &org_path(&o, "/models"),
            json!({"name": "m", "slug": "s", "provider_id": "nope"}),
        )
        .await;
    expect_field(st, &v, "provider_id");
    let (st, v) = root
        .post(&org_path(&o, "/budgets"), json!({"scope": "TEAM", "scope_id": uuid::Uuid::new_v4().to_string(), "amount_nanos": 1, "period": "DAILY"}))
        .await;
    expect_field(st, &v, "scope_id");
    let (st, v) = root
        .post(
            &org_path(&o, "/budgets"),
            json!({"scope": "ORG", "amount_nanos": -1, "period": "DAILY"}),
        )
        .await;
    expect_field(st, &v, "amount_nanos");
    let (st, v) = root
        .post(
            &org_path(&o, "/api-keys"),
            json!({"name": "k", "key_type": "TEAM"}),
        )
        .await;
    expect_field(st, &v, "team_id");
    let (st, v) = root
        .post(
            &org_path(&o, "/api-keys"),
            json!({"name": "k", "key_type": "ORGANISATION", "expires_at": "tomorrow"}),
        )
        .await;
    expect_field(st, &v, "expires_at");
    let (st, v) = root
        .post(&org_path(&o, "/api-keys"), json!({"name": "k", "key_type": "ORGANISATION", "models": [uuid::Uuid::new_v4().to_string()]}))
        .await;
    expect_field(st, &v, "models");
    let (st, v) = root.patch(&org_path(&o, "/"), json!({})).await;
    assert!(st == 400 || st == 404, "{v}");
    let (st, v) = root.get("/api/nothing-here").await;
    assert_eq!((st, v["error"]["code"].clone()), (404, json!("not_found")));
    let (st, v) = root
        .call("PUT", &org_path(&o, "/teams"), Some(json!({})))
        .await;
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (405, json!("method_not_allowed"))
    );
    // No route leaks into the status page.
    let (st, _) = Api::new(&gw, "").get("/api/status").await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn rbac_matrix_and_cross_organisation_isolation() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let gw = start(&mock, &db).await;
    let root = Api::new(&gw, &root_token(&db).await);
    let a = id(&root
        .create(
            "/api/admin/organisations",
            json!({"name": "A", "slug": "a"}),
        )
        .await);
    let b = id(&root
        .create(
            "/api/admin/organisations",
            json!({"name": "B", "slug": "b"}),
        )
        .await);
    let (_, a_admin) = user_with_token(&root, Some(&a), "admin@a.test", "ORG_ADMIN").await;
    let (mgr_id, mgr) = user_with_token(&root, Some(&a), "mgr@a.test", "MANAGER").await;
    let (user_id, user) = user_with_token(&root, Some(&a), "user@a.test", "USER").await;
    let (_, b_admin) = user_with_token(&root, Some(&b), "admin@b.test", "ORG_ADMIN").await;

    let t1 = id(&a_admin
        .create(&org_path(&a, "/teams"), json!({"name": "t1"}))
        .await);
    let t2 = id(&a_admin
        .create(&org_path(&a, "/teams"), json!({"name": "t2"}))
        .await);
    a_admin
        .create(
            &org_path(&a, &format!("/teams/{t1}/members")),
            json!({"user_id": mgr_id, "team_role": "MANAGER"}),
        )
        .await;
    a_admin
        .create(
            &org_path(&a, &format!("/teams/{t1}/members")),
            json!({"user_id": user_id}),
        )
        .await;
    let k1 = id(&a_admin
        .create(
            &org_path(&a, "/api-keys"),
            json!({"name": "k1", "key_type": "TEAM", "team_id": t1}),
        )
        .await);
    let k2 = id(&a_admin
        .create(
            &org_path(&a, "/api-keys"),
            json!({"name": "k2", "key_type": "TEAM", "team_id": t2}),
        )
        .await);
    let k3 = id(&a_admin
        .create(
            &org_path(&a, "/api-keys"),
            json!({"name": "k3", "key_type": "USER", "user_id": user_id}),
        )
        .await);
    a_admin
        .create(
            &org_path(&a, "/api-keys"),
            json!({"name": "k4", "key_type": "ORGANISATION"}),
        )
        .await;
    let p = id(&a_admin
        .create(
            &org_path(&a, "/providers"),
            json!({"name": "p", "provider_type": "OPENAI", "base_url": "http://x"}),
        )
        .await);

    // Another organisation's admin: 404 everywhere in A, never 403.
    for path in [
        org_path(&a, ""),
        org_path(&a, "/teams"),
        org_path(&a, &format!("/teams/{t1}")),
        org_path(&a, &format!("/api-keys/{k1}")),
        org_path(&a, "/usage/records"),
        org_path(&a, "/invoices"),
    ] {
        let (st, v) = b_admin.get(&path).await;
        assert_eq!(st, 404, "GET {path}: {v}");
        assert_eq!(v["error"]["code"], "not_found");
    }
    assert_eq!(
        b_admin
            .patch(&org_path(&a, &format!("/teams/{t1}")), json!({"name": "x"}))
            .await
            .0,
        404
    );
    assert_eq!(
        b_admin
            .post(&org_path(&a, &format!("/api-keys/{k1}/revoke")), json!({}))
            .await
            .0,
        404
    );
    // A's rows through B's path: not found either.
    assert_eq!(
        b_admin.get(&org_path(&b, &format!("/teams/{t1}"))).await.0,
        404
    );
    assert_eq!(
        b_admin
            .delete(&org_path(&b, &format!("/api-keys/{k1}")))
            .await,
        404
    );
    assert_eq!(
        b_admin
            .post(&org_path(&b, &format!("/api-keys/{k1}/rotate")), json!({}))
            .await
            .0,
        404
    );
    assert_eq!(b_admin.get(&org_path(&b, "/teams")).await.1["total"], 0);
    // ...and cannot point B's rows at A's.
    let (st, v) = b_admin
        .post(
            &org_path(&b, "/api-keys"),
            json!({"name": "x", "key_type": "TEAM", "team_id": t1}),
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].clone()),
        (400, json!("team_id")),
        "{v}"
    );
    // Admin routes are for SUPER_ADMIN only.
    for api in [&a_admin, &mgr, &user] {
        assert_eq!(api.get("/api/admin/organisations").await.0, 403);
        assert_eq!(
            api.post("/api/admin/users", json!({"email": "x@y.z"}))
                .await
                .0,
            403
        );
    }

    // ORG_ADMIN: everything in A, never a SUPER_ADMIN.
    assert_eq!(a_admin.get(&org_path(&a, "/api-keys")).await.1["total"], 4);
    let (st, v) = a_admin
        .post(
            &org_path(&a, "/users"),
            json!({"email": "s@a.test", "role": "SUPER_ADMIN"}),
        )
        .await;
    assert_eq!((st, v["error"]["field"].clone()), (400, json!("role")));
    assert_eq!(
        a_admin
            .get(&org_path(&a, &format!("/providers/{p}/keys")))
            .await
            .0,
        200
    );

    // MANAGER: their teams and those teams' keys; reads the catalog, budgets and usage.
    let (_, v) = mgr.get(&org_path(&a, "/teams")).await;
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["data"][0]["id"], t1.as_str());
    assert_eq!(mgr.get(&org_path(&a, &format!("/teams/{t2}"))).await.0, 404);
    assert_eq!(
        mgr.patch(
            &org_path(&a, &format!("/teams/{t1}")),
            json!({"description": "mine"})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        mgr.patch(
            &org_path(&a, &format!("/teams/{t2}")),
            json!({"description": "x"})
        )
        .await
        .0,
        404
    );
    assert_eq!(
        mgr.post(&org_path(&a, "/teams"), json!({"name": "t3"}))
            .await
            .0,
        403
    );
    assert_eq!(
        mgr.get(&org_path(&a, &format!("/teams/{t1}/members")))
            .await
            .1["total"],
        2
    );
    assert_eq!(
        mgr.get(&org_path(&a, &format!("/teams/{t2}/members")))
            .await
            .0,
        404
    );
    let (_, v) = mgr.get(&org_path(&a, "/api-keys")).await;
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["data"][0]["id"], k1.as_str());
    mgr.create(
        &org_path(&a, "/api-keys"),
        json!({"name": "mine", "key_type": "TEAM", "team_id": t1}),
    )
    .await;
    let (st, v) = mgr
        .post(
            &org_path(&a, "/api-keys"),
            json!({"name": "theirs", "key_type": "TEAM", "team_id": t2}),
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].clone()),
        (403, json!("team_id")),
        "{v}"
    );
    assert_eq!(
        mgr.post(
            &org_path(&a, "/api-keys"),
            json!({"name": "o", "key_type": "ORGANISATION"})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        mgr.post(&org_path(&a, &format!("/api-keys/{k1}/rotate")), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(
        mgr.post(&org_path(&a, &format!("/api-keys/{k2}/revoke")), json!({}))
            .await
            .0,
        404
    );
    assert_eq!(
        mgr.delete(&org_path(&a, &format!("/api-keys/{k3}"))).await,
        404
    );
    assert_eq!(
        mgr.post(
            &org_path(&a, "/providers"),
            json!({"name": "q", "provider_type": "VLLM", "base_url": "http://x"})
        )
        .await
        .0,
        403
    );
    assert_eq!(mgr.get(&org_path(&a, "/providers")).await.0, 200);
    assert_eq!(mgr.get(&org_path(&a, "/models")).await.0, 200);
    assert_eq!(
        mgr.get(&org_path(&a, &format!("/providers/{p}/keys")))
            .await
            .0,
        403
    );
    assert_eq!(mgr.get(&org_path(&a, "/budgets")).await.0, 200);
    assert_eq!(
        mgr.post(
            &org_path(&a, "/budgets"),
            json!({"scope": "ORG", "amount_nanos": 1, "period": "DAILY"})
        )
        .await
        .0,
        403
    );
    assert_eq!(mgr.get(&org_path(&a, "/invitations")).await.0, 403);
    assert_eq!(mgr.get(&org_path(&a, "/usage/records")).await.0, 200);
    assert_eq!(mgr.get(&org_path(&a, "/invoices")).await.0, 200);
    assert_eq!(
        mgr.patch(&org_path(&a, ""), json!({"name": "x"})).await.0,
        403
    );
    assert_eq!(mgr.get(&org_path(&a, "/users")).await.1["total"], 3);

    // USER: their own keys and usage, nothing else.
    let (_, v) = user.get(&org_path(&a, "/api-keys")).await;
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["data"][0]["id"], k3.as_str());
    assert_eq!(
        user.get(&org_path(&a, &format!("/api-keys/{k1}"))).await.0,
        404
    );
    assert_eq!(
        user.get(&org_path(&a, &format!("/api-keys/{k3}/models")))
            .await
            .0,
        200
    );
    assert_eq!(
        user.post(
            &org_path(&a, "/api-keys"),
            json!({"name": "u", "key_type": "USER", "user_id": user_id})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        user.post(&org_path(&a, &format!("/api-keys/{k3}/revoke")), json!({}))
            .await
            .0,
        403
    );
    let (_, v) = user.get(&org_path(&a, "/users")).await;
    assert_eq!(v["total"], 1);
    assert_eq!(v["data"][0]["id"], user_id.as_str());
    assert_eq!(user.get(&org_path(&a, "/models")).await.0, 403);
    assert_eq!(user.get(&org_path(&a, "/budgets")).await.0, 403);
    assert_eq!(
        user.get(&org_path(&a, &format!("/teams/{t1}/members")))
            .await
            .0,
        403
    );
    assert_eq!(user.get(&org_path(&a, "/usage/records")).await.0, 200);
    assert_eq!(user.get(&org_path(&a, "/invoices")).await.0, 403);
    assert_eq!(user.get(&org_path(&b, "/models")).await.0, 404);

    // ORG_ADMIN issues tokens to the users of their organisation only.
    let t = a_admin
        .create(
            &org_path(&a, &format!("/users/{user_id}/tokens")),
            json!({"name": "cli"}),
        )
        .await;
    let second_user = Api {
        base: root.base.clone(),
        token: t["token"].as_str().unwrap().to_string(),
    };
    assert_eq!(second_user.get("/api/me").await.1["id"], user_id.as_str());
    assert_eq!(
        mgr.post(
            &org_path(&a, &format!("/users/{user_id}/tokens")),
            json!({})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        b_admin
            .post(
                &org_path(&b, &format!("/users/{user_id}/tokens")),
                json!({})
            )
            .await
            .0,
        404
    );
    assert_eq!(
        b_admin
            .get(&org_path(&a, &format!("/users/{user_id}/tokens")))
            .await
            .0,
        404
    );
    // A super admin attached to A is not one of A's users for its admin.
    let (sa_id, _) = user_with_token(&root, Some(&a), "sa@a.test", "SUPER_ADMIN").await;
    assert_eq!(
        a_admin
            .get(&org_path(&a, &format!("/users/{sa_id}")))
            .await
            .0,
        404
    );
    assert_eq!(
        a_admin
            .patch(
                &org_path(&a, &format!("/users/{sa_id}")),
                json!({"role": "USER"})
            )
            .await
            .0,
        404
    );
    assert_eq!(
        a_admin
            .post(&org_path(&a, &format!("/users/{sa_id}/tokens")), json!({}))
            .await
            .0,
        404
    );

    // A revoked admin token stops working.
    let (st, me) = user.get("/api/me").await;
    assert_eq!((st, me["role"].clone()), (200, json!("USER")));
    let (st, _) = root
        .patch(
            &format!(
                "/api/admin/users/{user_id}/tokens/{}",
                me["token_id"].as_str().unwrap()
            ),
            json!({"revoked_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(user.get("/api/me").await.0, 401);
}

#[tokio::test]
async fn provider_key_is_never_returned_in_plain_text() {
    const SECRET: &str = "sk-live-very-secret-value-9f2c";
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let gw = start(&mock, &db).await;
    let root = Api::new(&gw, &root_token(&db).await);
    let o = id(&root
        .create(
            "/api/admin/organisations",
            json!({"name": "A", "slug": "a"}),
        )
        .await);
    let p = id(&root
        .create(
            &org_path(&o, "/providers"),
            json!({"name": "p", "provider_type": "OPENAI", "base_url": "http://x"}),
        )
        .await);
    let keys = org_path(&o, &format!("/providers/{p}/keys"));
    let (st, created) = root
        .raw(
            "POST",
            &keys,
            Some(json!({"name": "main", "secret": SECRET})),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    assert!(
        !created.contains(SECRET) && !created.contains("ciphertext"),
        "{created}"
    );
    let created: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["preview"], wharf::db::crypto::preview(SECRET));
    let kid = id(&created);
    let (st, new_body) = root
        .raw(
            "PATCH",
            &format!("{keys}/{kid}"),
            Some(json!({"secret": "sk-second-secret-abcd"})),
        )
        .await;
    assert_eq!(st, 200);
    assert!(!new_body.contains("sk-second-secret-abcd"));
    let patched: Value = serde_json::from_str(&new_body).unwrap();
    assert_eq!(
        patched["preview"],
        wharf::db::crypto::preview("sk-second-secret-abcd")
    );
    assert!(patched["rotated_at"].is_string());
    for path in [
        keys.clone(),
        format!("{keys}/{kid}"),
        org_path(&o, "/providers"),
    ] {
        let (st, body) = root.raw("GET", &path, None).await;
        assert_eq!(st, 200);
        assert!(
            !body.contains("sk-second-secret-abcd") && !body.contains(SECRET),
            "{body}"
        );
        assert!(!body.contains("envelope"), "{body}");
    }
    // Stored as an envelope that decrypts to the secret under the master keys.
    let envelope: Value = sqlx::query_scalar("SELECT envelope FROM provider_api_keys")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!envelope.to_string().contains("sk-second"));
    let m = MasterKeys::parse(MASTER).unwrap();
    assert_eq!(
        m.decrypt(&envelope).unwrap().expose(),
        "sk-second-secret-abcd"
    );
    let (st, v) = root.post(&keys, json!({"name": "nosecret"})).await;
    assert_eq!((st, v["error"]["field"].clone()), (400, json!("secret")));
}

#[tokio::test]
async fn an_api_key_created_through_the_api_works_on_two_nodes_within_a_second_and_revocation_too()
{
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let a = start(&mock, &db).await;
    let b = start(&mock, &db).await;
    let root = Api::new(&a, &root_token(&db).await);
    let o = id(&root
        .create(
            "/api/admin/organisations",
            json!({"name": "A", "slug": "a"}),
        )
        .await);
    let p = provider_with_key(
        &root,
        &o,
        json!({"name": "mockp", "provider_type": "OPENAI", "base_url": format!("http://{}/v1", mock.addr())}),
    )
    .await;
    let m = id(&root
        .create(
            &org_path(&o, "/models"),
            json!({"name": "api-chat", "slug": "up-chat", "provider_id": p}),
        )
        .await);

    let key = root
        .create(
            &org_path(&o, "/api-keys"),
            json!({"name": "k", "key_type": "ORGANISATION", "models": [m]}),
        )
        .await;
    let created = Instant::now();
    let secret = key["key"].as_str().unwrap().to_string();
    let kid = id(&key);
    for gw in [&a, &b] {
        within(
            Duration::from_secs(1).saturating_sub(created.elapsed()) + Duration::from_millis(1),
            "new key works",
            || async { chat(gw, &secret, "api-chat").await.0 == 200 },
        )
        .await;
    }
    assert!(
        created.elapsed() < Duration::from_secs(1),
        "{:?}",
        created.elapsed()
    );
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.json().unwrap()["model"], "up-chat");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );

    // Revoked through the API (on node b): rejected on both within a second.
    for gw in [&a, &b] {
        assert_eq!(chat(gw, &secret, "api-chat").await.0, 200);
    }
    let (st, _) = Api::new(&b, &root.token)
        .post(&org_path(&o, &format!("/api-keys/{kid}/revoke")), json!({}))
        .await;
    assert_eq!(st, 200);
    let revoked = Instant::now();
    for gw in [&a, &b] {
        within(Duration::from_secs(1), "revocation", || async {
            chat(gw, &secret, "api-chat").await.0 == 401
        })
        .await;
        let (_, v) = chat(gw, &secret, "api-chat").await;
        assert_eq!(v["error"]["code"], "api_key_revoked", "{v}");
    }
    assert!(revoked.elapsed() < Duration::from_secs(1));

    // Unrevoked and rotated: the new secret works on both, the old one nowhere.
    root.post(
        &org_path(&o, &format!("/api-keys/{kid}/unrevoke")),
        json!({}),
    )
    .await;
    let (st, v) = root
        .post(&org_path(&o, &format!("/api-keys/{kid}/rotate")), json!({}))
        .await;
    assert_eq!(st, 200);
    let rotated = v["key"].as_str().unwrap().to_string();
    for gw in [&a, &b] {
        within(Duration::from_secs(1), "rotation", || async {
            chat(gw, &rotated, "api-chat").await.0 == 200
                && chat(gw, &secret, "api-chat").await.0 == 401
        })
        .await;
    }
    // Grants replaced through the API apply on both nodes.
    root.put(
        &org_path(&o, &format!("/api-keys/{kid}/models")),
        json!({"models": []}),
    )
    .await;
    for gw in [&a, &b] {
        within(Duration::from_secs(1), "grant removal", || async {
            chat(gw, &rotated, "api-chat").await.0 == 403
        })
        .await;
    }
}

/// (request id, org, team, key, model, provider, cost, input, output, created_at SQL).
type UsageRow<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    i64,
    i64,
    i64,
    &'a str,
);

#[tokio::test]
async fn usage_and_invoice_queries_as_json_and_csv() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let gw = start(&mock, &db).await;
    let root = Api::new(&gw, &root_token(&db).await);
    let o = id(&root
        .create(
            "/api/admin/organisations",
            json!({"name": "A", "slug": "a"}),
        )
        .await);
    let other = id(&root
        .create(
            "/api/admin/organisations",
            json!({"name": "B", "slug": "b"}),
        )
        .await);
    let (mgr_id, mgr) = user_with_token(&root, Some(&o), "mgr@a.test", "MANAGER").await;
    let t1 = id(&root
        .create(&org_path(&o, "/teams"), json!({"name": "red"}))
        .await);
    let t2 = id(&root
        .create(&org_path(&o, "/teams"), json!({"name": "blue"}))
        .await);
    root.create(
        &org_path(&o, &format!("/teams/{t1}/members")),
        json!({"user_id": mgr_id}),
    )
    .await;
    let k1 = id(&root
        .create(
            &org_path(&o, "/api-keys"),
            json!({"name": "red-key", "key_type": "TEAM", "team_id": t1}),
        )
        .await);
    let k2 = id(&root
        .create(
            &org_path(&o, "/api-keys"),
            json!({"name": "blue-key", "key_type": "TEAM", "team_id": t2}),
        )
        .await);
    let mcp = id(&root
        .create(&org_path(&o, "/mcp-servers"), json!({"name": "Docs", "slug": "docs", "transport": "SSE", "url": "http://127.0.0.1:9/sse"}))
        .await);

    // (request id, org, team, key, model, provider, cost, input, output, when)
    let rows: &[UsageRow<'_>] = &[
        ("r1", &o, &t1, &k1, "gpt", "openai", 1_000, 10, 20, "now()"),
        (
            "r2",
            &o,
            &t1,
            &k1,
            "claude",
            "anthropic",
            2_000,
            30,
            40,
            "now()",
        ),
        ("r3", &o, &t2, &k2, "gpt", "openai", 4_000, 50, 60, "now()"),
        (
            "r4",
            &o,
            &t2,
            &k2,
            "gpt",
            "openai",
            8_000,
            1,
            1,
            "date_trunc('month', now()) - interval '1 day'",
        ),
        (
            "r5", &other, &t1, &k1, "gpt", "openai", 16_000, 1, 1, "now()",
        ),
    ];
    for (rid, org, team, key, model, provider, cost, inp, out, when) in rows {
        sqlx::query(&format!(
            "INSERT INTO usage_records (request_id, organisation_id, team_id, api_key_id, endpoint,
                 provider, model, status, outcome, cost_nanos, input_tokens, output_tokens, created_at)
             VALUES ($1, $2::text::uuid, $3::text::uuid, $4::text::uuid, '/v1/chat/completions',
                 $5, $6, 200, 'success', $7, $8, $9, {when})"
        ))
        .bind(rid).bind(org).bind(team).bind(key).bind(provider).bind(model).bind(cost).bind(inp).bind(out)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO mcp_usage_records (request_id, organisation_id, team_id, api_key_id, mcp_server_id,
             server_slug, status, outcome, cost_nanos)
         VALUES ('m1', $1::text::uuid, $2::text::uuid, $3::text::uuid, $4::text::uuid, 'docs', 200, 'success', 500)",
    )
    .bind(&o).bind(&t1).bind(&k1).bind(&mcp)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO usage_rollups (granularity, bucket_start, organisation_id, team_id, api_key_id, model, provider, requests, cost_nanos)
         VALUES ('DAY', date_trunc('day', now()), $1::text::uuid, $2::text::uuid, $3::text::uuid, 'gpt', 'openai', 1, 1000),
                ('DAY', date_trunc('day', now()), $1::text::uuid, $4::text::uuid, $5::text::uuid, 'gpt', 'openai', 1, 4000),
                ('DAY', date_trunc('day', now()), $6::text::uuid, NULL, NULL, 'gpt', 'openai', 9, 9)",
    )
    .bind(&o).bind(&t1).bind(&k1).bind(&t2).bind(&k2).bind(&other)
    .execute(&db.pool)
    .await
    .unwrap();

    let recs = |q: &str| org_path(&o, &format!("/usage/records{q}"));
    let (st, v) = root.get(&recs("")).await;
    assert_eq!((st, v["total"].clone()), (200, json!(4)), "{v}");
    assert_eq!(root.get(&recs("?period=this_month")).await.1["total"], 3);
    let (_, v) = root.get(&recs("?period=last_month")).await;
    assert_eq!(v["total"], 1);
    assert_eq!(v["data"][0]["request_id"], "r4");
    assert_eq!(root.get(&recs("?model=gpt")).await.1["total"], 3);
    assert_eq!(root.get(&recs("?provider=anthropic")).await.1["total"], 1);
    assert_eq!(
        root.get(&recs(&format!("?team_id={t2}"))).await.1["total"],
        2
    );
    assert_eq!(
        root.get(&recs(&format!("?api_key_id={k1}&period=last_30_days")))
            .await
            .1["total"],
        2
    );
    assert_eq!(
        root.get(&recs("?period=this_month&limit=2")).await.1["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (st, v) = root.get(&recs("?period=custom&from=2020-01-01")).await;
    assert_eq!((st, v["error"]["field"].clone()), (400, json!("to")));
    let (st, v) = root.get(&recs("?team_id=x")).await;
    assert_eq!((st, v["error"]["field"].clone()), (400, json!("team_id")));
    let (st, csv) = root
        .raw("GET", &recs("?period=this_month&format=csv"), None)
        .await;
    assert_eq!(st, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("created_at,request_id,"), "{csv}");
    assert!(
        csv.contains(",r3,") && !csv.contains(",r4,") && !csv.contains(",r5,"),
        "{csv}"
    );

    // A manager sees the usage of their team only.
    let (_, v) = mgr.get(&recs("")).await;
    assert_eq!(v["total"], 2, "{v}");

    // Rollups.
    let (st, v) = root
        .get(&org_path(&o, "/usage/rollups?period=this_month"))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["total"], 2);
    assert_eq!(v["totals"]["cost_nanos"], 5000);
    assert_eq!(
        root.get(&org_path(&o, &format!("/usage/rollups?team_id={t1}")))
            .await
            .1["total"],
        1
    );
    let (_, csv) = root
        .raw("GET", &org_path(&o, "/usage/rollups?format=csv"), None)
        .await;
    assert_eq!(csv.lines().count(), 3, "{csv}");

    // Invoices.
    let (st, inv) = root.get(&org_path(&o, "/invoices?period=this_month")).await;
    assert_eq!(st, 200, "{inv}");
    assert_eq!(inv["totals"]["llm_cost_nanos"], 7000, "{inv}");
    assert_eq!(inv["totals"]["mcp_cost_nanos"], 500);
    assert_eq!(inv["totals"]["cost_nanos"], 7500);
    assert_eq!(inv["totals"]["cost_usd"], "0.000007500");
    assert_eq!(inv["totals"]["requests"], 3);
    let team = |name: &str| {
        inv["teams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(team("red")["cost_nanos"], 3000);
    assert_eq!(team("blue")["cost_nanos"], 4000);
    let key = inv["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "red-key")
        .cloned()
        .unwrap();
    assert_eq!(key["requests"], 2);
    let gpt = inv["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "gpt")
        .cloned()
        .unwrap();
    assert_eq!(gpt["cost_nanos"], 5000);
    assert_eq!(inv["mcp_servers"][0]["name"], "Docs");
    assert_eq!(inv["mcp_servers"][0]["cost_nanos"], 500);
    let (_, last) = root.get(&org_path(&o, "/invoices?period=last_month")).await;
    assert_eq!(last["totals"]["cost_nanos"], 8000, "{last}");
    let (_, default) = root.get(&org_path(&o, "/invoices")).await;
    assert_eq!(default["period"]["name"], "this_month");
    let (st, csv) = root
        .raw(
            "GET",
            &org_path(&o, "/invoices?period=this_month&format=csv"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert!(
        csv.starts_with(
            "section,id,name,requests,input_tokens,output_tokens,cost_nanos,cost_usd\r\n"
        ),
        "{csv}"
    );
    assert!(
        csv.contains(&format!("team,{t1},red,2,40,60,3000,0.000003000")),
        "{csv}"
    );
    assert!(csv.contains("mcp_server,"), "{csv}");
    assert!(
        csv.trim_end()
            .ends_with("total,,,3,90,120,7500,0.000007500"),
        "{csv}"
    );
    let (st, v) = root.get(&org_path(&o, "/invoices?period=weekly")).await;
    assert_eq!((st, v["error"]["field"].clone()), (400, json!("period")));
    let (_, v) = mgr.get(&org_path(&o, "/invoices")).await;
    assert_eq!(v["totals"]["llm_cost_nanos"], 3000, "{v}");
}

#[tokio::test]
async fn openapi_document_covers_every_route() {
    let mock = mock().await;
    // Served without a token, even without a database.
    let gw = Gw::start(&mock).await;
    let r = client()
        .get(gw.admin_url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = wharf::api::routes::routes();
    assert!(routes.len() > 70, "{}", routes.len());
    for route in routes {
        let op = &doc["paths"][&route.path][route.method.as_str().to_lowercase()];
        assert!(
            op.is_object(),
            "{} {} is not documented",
            route.method,
            route.path
        );
        assert!(op["description"].as_str().unwrap().starts_with("Access: "));
    }
    // Every documented operation is routed.
    let mut documented = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented += 1;
            assert!(
                routes
                    .iter()
                    .any(|r| r.path == *path && r.method.as_str().eq_ignore_ascii_case(method)),
                "{method} {path} is documented but not routed"
            );
        }
    }
    assert_eq!(documented, routes.len());
    for resource in [
        "Team",
        "ApiKey",
        "ProviderKey",
        "Model",
        "McpServer",
        "Budget",
        "Quota",
        "Invitation",
        "User",
        "Organisation",
    ] {
        assert!(
            doc["components"]["schemas"][resource].is_object(),
            "{resource}"
        );
    }
    // The rest of the admin API needs database mode.
    let (st, v) = Api::new(&gw, "x").get("/api/me").await;
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (503, json!("dependency_unavailable"))
    );
    assert_eq!(
        client()
            .get(gw.admin_url("/api/status"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn model_deployments_and_filters_through_the_api() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let gw = start(&mock, &db).await;
    let root = Api::new(&gw, &root_token(&db).await);
    let o = id(&root
        .create(
            "/api/admin/organisations",
            json!({"name": "Dep", "slug": "dep"}),
        )
        .await);
    let url = format!("http://{}/v1", mock.addr());
    let down = provider_with_key(
        &root,
        &o,
        json!({"name": "down", "provider_type": "CUSTOM", "base_url": url,
               "extra_headers": {"x-mock-status": "503"}}),
    )
    .await;
    let up = provider_with_key(
        &root,
        &o,
        json!({"name": "up", "provider_type": "OPENAI", "base_url": url}),
    )
    .await;
    let m = id(&root
        .create(
            &org_path(&o, "/models"),
            json!({"name": "dep-chat", "slug": "first-slug", "provider_id": down}),
        )
        .await);
    let key = root
        .create(
            &org_path(&o, "/api-keys"),
            json!({"name": "k", "key_type": "ORGANISATION", "models": [m]}),
        )
        .await;
    let secret = key["key"].as_str().unwrap().to_string();
    within(Duration::from_secs(2), "the key", || async {
        chat(&gw, &secret, "dep-chat").await.0 == 503
    })
    .await;

    // A second deployment, through the API: the request fails over to it.
    let deps = org_path(&o, &format!("/models/{m}/deployments"));
    let (st, v) = root
        .post(
            &deps,
            json!({"provider_id": up, "slug": "second-slug", "weight": -1}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("weight"),
        "{v}"
    );
    let d = root
        .create(
            &deps,
            json!({"provider_id": up, "slug": "second-slug", "priority": 1}),
        )
        .await;
    assert_eq!(d["model_id"], m.as_str());
    within(Duration::from_secs(2), "the deployment", || async {
        chat(&gw, &secret, "dep-chat").await.0 == 200
    })
    .await;
    assert_eq!(
        mock.last_request().unwrap().json().unwrap()["model"],
        "second-slug"
    );
    assert_eq!(root.get(&deps).await.1["total"], 1);
    let (st, v) = root
        .patch(&format!("{deps}/{}", id(&d)), json!({"enabled": false}))
        .await;
    assert_eq!((st, v["enabled"].clone()), (200, json!(false)));
    within(
        Duration::from_secs(2),
        "the disabled deployment",
        || async { chat(&gw, &secret, "dep-chat").await.0 == 503 },
    )
    .await;

    // Filters: a row the gateway could not load is refused with its problem, nothing stored.
    let filters = org_path(&o, "/filters");
    let (st, v) = root
        .post(
            &filters,
            json!({"name": "kw", "kind": "pii_mask", "settings": {"bogus": 1}}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("bogus"),
        "{v}"
    );
    let (st, v) = root
        .post(
            &filters,
            json!({"name": "kw", "kind": "lua", "script": "/nonexistent/script.lua"}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(root.get(&filters).await.1["total"], 0);
    root.patch(&format!("{deps}/{}", id(&d)), json!({"enabled": true}))
        .await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("filters/examples/keyword_block.lua")
        .display()
        .to_string();
    let f = root
        .create(
            &filters,
            json!({"name": "kw", "kind": "lua", "script": script,
                   "settings": {"vars": {"words": ["hello"]}}}),
        )
        .await;
    within(Duration::from_secs(2), "the filter", || async {
        chat(&gw, &secret, "dep-chat").await.0 == 403
    })
    .await;
    let (st, v) = root
        .patch(
            &format!("{filters}/{}", id(&f)),
            json!({"settings": {"instruction_limit": 5}}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(root.delete(&format!("{filters}/{}", id(&f))).await, 204);
    within(Duration::from_secs(2), "the filter removal", || async {
        chat(&gw, &secret, "dep-chat").await.0 == 200
    })
    .await;
}

/// `GET /api/admin/{teams,providers,models,mcp-servers,apikeys,budgets,quotas}`: the rows of
/// every organisation for SUPER_ADMIN, each with its organisation; the same pages, filters
/// and `q` search as the organisation lists; no secret; refused to everyone else.
#[tokio::test]
async fn platform_lists_span_every_organisation() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let gw = start(&mock, &db).await;
    let root = Api::new(&gw, &root_token(&db).await);
    let mut orgs = Vec::new();
    let mut secrets = Vec::new();
    for (name, slug) in [("Alpha Org", "alpha"), ("Beta Org", "beta")] {
        let o = id(&root
            .create(
                "/api/admin/organisations",
                json!({"name": name, "slug": slug}),
            )
            .await);
        let p = provider_with_key(
            &root,
            &o,
            json!({"name": format!("{slug}-prov"), "provider_type": "OPENAI", "base_url": "http://127.0.0.1:9/v1"}),
        )
        .await;
        root.create(
            &org_path(&o, "/models"),
            json!({"name": format!("{slug}-chat"), "slug": format!("up-{slug}"), "provider_id": p}),
        )
        .await;
        root.create(
            &org_path(&o, "/teams"),
            json!({"name": format!("{slug}-team")}),
        )
        .await;
        let k = root
            .create(
                &org_path(&o, "/api-keys"),
                json!({"name": format!("{slug}-key"), "key_type": "ORGANISATION"}),
            )
            .await;
        secrets.push(k["key"].as_str().unwrap().to_string());
        root.create(
            &org_path(&o, "/budgets"),
            json!({"name": format!("{slug}-budget"), "scope": "ORG", "amount_nanos": 5, "period": "MONTHLY"}),
        )
        .await;
        orgs.push((o, slug));
    }
    let slug_of = |org: &str| {
        orgs.iter()
            .find(|(o, _)| o == org)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("row of an unknown organisation {org}"))
    };
    let by_slug = |v: &Value| -> std::collections::BTreeMap<String, String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let org = r["organisation_id"].as_str().unwrap();
                assert_eq!(r["organisation_slug"], slug_of(org), "{r}");
                assert!(r["organisation_name"].as_str().unwrap().ends_with(" Org"));
                (
                    r["organisation_slug"].as_str().unwrap().to_string(),
                    r["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let both = |what: &str| -> std::collections::BTreeMap<String, String> {
        [("alpha", "alpha"), ("beta", "beta")]
            .iter()
            .map(|(s, n)| (s.to_string(), format!("{n}-{what}")))
            .collect()
    };

    // Every organisation's rows, each named by its organisation.
    for (path, what) in [
        ("/api/admin/models", "chat"),
        ("/api/admin/teams", "team"),
        ("/api/admin/apikeys", "key"),
        ("/api/admin/providers", "prov"),
        ("/api/admin/budgets", "budget"),
    ] {
        let (st, v) = root.get(path).await;
        assert_eq!(st, 200, "{path}: {v}");
        assert_eq!(v["total"], 2, "{path}: {v}");
        assert_eq!(by_slug(&v), both(what), "{path}");
    }
    for path in ["/api/admin/mcp-servers", "/api/admin/quotas"] {
        let (st, v) = root.get(path).await;
        assert_eq!((st, v["total"].clone()), (200, json!(0)), "{path}: {v}");
    }

    // No secret: keys show their prefix only, provider credentials never.
    let (_, text) = root.raw("GET", "/api/admin/apikeys", None).await;
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "{text}");
    }
    let (_, keys) = root.get("/api/admin/apikeys").await;
    for k in keys["data"].as_array().unwrap() {
        assert!(k.get("key_hash").is_none() && k.get("key").is_none(), "{k}");
        assert!(k["key_prefix"].as_str().unwrap().len() < 20, "{k}");
    }
    let (_, text) = root.raw("GET", "/api/admin/providers", None).await;
    assert!(
        !text.contains(PROVIDER_KEY) && !text.contains("envelope"),
        "{text}"
    );
    // A hidden field is not searchable either.
    let hash: String = sqlx::query_scalar("SELECT key_hash FROM api_keys LIMIT 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let (st, v) = root
        .get(&format!("/api/admin/apikeys?q={}", &hash[..16]))
        .await;
    assert_eq!((st, v["total"].clone()), (200, json!(0)), "{v}");

    // `q`: any text field, case-insensitively, or the organisation's slug or name.
    let (_, v) = root.get("/api/admin/models?q=BETA-ch").await;
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["data"][0]["name"], "beta-chat");
    let (_, v) = root.get("/api/admin/teams?q=Alpha%20Org").await;
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["data"][0]["organisation_slug"], "alpha");
    let (_, v) = root.get("/api/admin/models?q=nothing-like-this").await;
    assert_eq!(v["total"], 0, "{v}");
    // ...and the organisation lists search the same way.
    let (a, _) = &orgs[0];
    let (_, v) = root.get(&org_path(a, "/models?q=ALPHA")).await;
    assert_eq!(v["total"], 1, "{v}");
    let (_, v) = root.get(&org_path(a, "/models?q=beta")).await;
    assert_eq!(v["total"], 0, "{v}");

    // Filters and pages as in the organisation lists, plus organisation_id.
    let (b, _) = &orgs[1];
    let (_, v) = root
        .get(&format!("/api/admin/models?organisation_id={b}"))
        .await;
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["data"][0]["organisation_slug"], "beta");
    let (_, v) = root.get("/api/admin/models?name=alpha-chat").await;
    assert_eq!(v["total"], 1, "{v}");
    let mut seen = std::collections::BTreeSet::new();
    for offset in [0, 1] {
        let (_, v) = root
            .get(&format!("/api/admin/models?limit=1&offset={offset}"))
            .await;
        assert_eq!(v["total"], 2, "{v}");
        assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
        seen.insert(v["data"][0]["organisation_slug"].to_string());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (st, v) = root.get("/api/admin/models?colour=red").await;
    assert_eq!(
        (st, v["error"]["field"].clone()),
        (400, json!("colour")),
        "{v}"
    );
    let (st, v) = root.get("/api/admin/models?limit=0").await;
    assert_eq!(
        (st, v["error"]["field"].clone()),
        (400, json!("limit")),
        "{v}"
    );
    // Read only: rows are written through their organisation.
    let (st, _) = root.post("/api/admin/models", json!({"name": "x"})).await;
    assert_eq!(st, 405);

    // Refused to everyone but SUPER_ADMIN, as the other /api/admin routes are.
    let (_, admin) = user_with_token(&root, Some(a), "admin@alpha.test", "ORG_ADMIN").await;
    let (_, mgr) = user_with_token(&root, Some(a), "mgr@alpha.test", "MANAGER").await;
    for api in [&admin, &mgr] {
        for path in [
            "/api/admin/teams",
            "/api/admin/providers",
            "/api/admin/models",
            "/api/admin/mcp-servers",
            "/api/admin/apikeys",
            "/api/admin/budgets",
            "/api/admin/quotas",
        ] {
            let (st, v) = api.get(path).await;
            assert_eq!(st, 403, "{path}: {v}");
            assert_eq!(v["error"]["code"], "forbidden", "{v}");
            assert_eq!(api.get("/api/admin/organisations").await.0, 403);
        }
    }
    let (st, _) = Api::new(&gw, "").get("/api/admin/models").await;
    assert_eq!(st, 401);
}

/// `/api/status` (either listener): without a credential nothing of any organisation; with an
/// organisation's admin token only its providers (even where another organisation reuses a
/// provider name); the super admin sees every one; any other token is refused.
#[tokio::test]
async fn status_shows_providers_only_to_their_own_organisation() {
    let mock = mock().await;
    let db = TestDb::migrated().await;
    let gw = start(&mock, &db).await;
    let root = Api::new(&gw, &root_token(&db).await);
    let a = id(&root
        .create(
            "/api/admin/organisations",
            json!({"name": "SA", "slug": "sa"}),
        )
        .await);
    let b = id(&root
        .create(
            "/api/admin/organisations",
            json!({"name": "SB", "slug": "sb"}),
        )
        .await);
    let url = format!("http://{}/v1", mock.addr());
    for (org, name, kind) in [
        (&a, "same-name", "OPENAI"),
        (&b, "same-name", "OPENAI"),
        (&b, "only-b", "ANTHROPIC"),
    ] {
        root.create(
            &org_path(org, "/providers"),
            json!({"name": name, "provider_type": kind, "base_url": url}),
        )
        .await;
    }
    let (_, a_admin) = user_with_token(&root, Some(&a), "admin@sa.test", "ORG_ADMIN").await;
    let (_, b_admin) = user_with_token(&root, Some(&b), "admin@sb.test", "ORG_ADMIN").await;
    let (_, b_user) = user_with_token(&root, Some(&b), "user@sb.test", "USER").await;
    let status = |base: String, token: Option<String>| async move {
        let mut rb = client().get(format!("{base}/api/status"));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let r = rb.send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json::<Value>().await.unwrap())
    };
    let names = |v: &Value| -> Vec<(String, String)> {
        let mut n: Vec<(String, String)> = v["providers"]
            .as_array()
            .unwrap_or_else(|| panic!("no providers in {v}"))
            .iter()
            .map(|p| {
                (
                    p["organisation_id"].as_str().unwrap_or("").to_string(),
                    p["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        n.sort();
        n
    };
    // The catalog reaches the node on its change notification.
    poll(Duration::from_secs(10), "three providers", async || {
        let (_, v) = status(gw.admin_url(""), Some(root.token.clone())).await;
        (v["providers"].as_array().map(Vec::len) == Some(3)).then_some(())
    })
    .await;
    for base in [gw.admin_url(""), gw.url("")] {
        let base = base.trim_end_matches('/').to_string();
        let (st, v) = status(base.clone(), None).await;
        assert_eq!(st, 200);
        assert!(
            v.get("providers").is_none(),
            "public status shows no provider: {v}"
        );
        assert!(v["version"].is_string(), "{v}");
        let (_, v) = status(base.clone(), Some(a_admin.token.clone())).await;
        assert_eq!(names(&v), vec![(a.clone(), "same-name".to_string())], "{v}");
        let (_, v) = status(base.clone(), Some(b_user.token.clone())).await;
        assert!(v.get("providers").is_none(), "a USER sees no provider: {v}");
        let (_, v) = status(base.clone(), Some(b_admin.token.clone())).await;
        let mut want = vec![
            (b.clone(), "only-b".to_string()),
            (b.clone(), "same-name".to_string()),
        ];
        want.sort();
        assert_eq!(names(&v), want, "{v}");
        let (_, v) = status(base.clone(), Some(root.token.clone())).await;
        assert_eq!(names(&v).len(), 3, "{v}");
        let (st, v) = status(base.clone(), Some("wharf_adm_not-a-token".into())).await;
        assert_eq!(st, 401, "{v}");
    }
}
