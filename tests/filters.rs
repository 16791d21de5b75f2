//! Filters (SPEC §9) through real sockets: a gateway process in front of the mock provider.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wharf_mock::{MockConfig, MockServer};

async fn recording_mock() -> MockServer {
    MockServer::start(
        "127.0.0.1:0",
        MockConfig {
            api_key: Some(PROVIDER_KEY.into()),
            record: true,
            ..MockConfig::default()
        },
    )
    .await
    .unwrap()
}

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("filters/examples")
        .join(name)
        .display()
        .to_string()
}

fn write_script(dir: &Path, name: &str, src: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, src).unwrap();
    p.display().to_string()
}

async fn chat(gw: &Gw, key: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

fn rid(h: &reqwest::header::HeaderMap) -> String {
    h["x-request-id"].to_str().unwrap().to_string()
}

async fn metrics(gw: &Gw) -> String {
    client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn chat_with(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn example_filters_alias_inject_and_tag() {
    let mock = recording_mock().await;
    let extra = format!(
        r#"
[[filters]]
name = "alias"
kind = "lua"
script = "{alias}"
settings = {{ vars = {{ team_1 = {{ fast = "chat-b" }}, default = {{ fast = "chat-a" }} }} }}

[[filters]]
name = "tag"
kind = "lua"
script = "{tag}"

[[filters]]
name = "inject"
kind = "lua"
script = "{inject}"
settings = {{ vars = {{ tenant = "acme" }} }}
"#,
        alias = example("model_alias.lua"),
        tag = example("request_tag.lua"),
        inject = example("header_inject.lua"),
    );
    let gw = Gw::start_with(&mock, &extra).await;

    // Team key: "fast" is chat-b for team_1.
    let (st, h, body) = chat(&gw, KEY_GOOD, chat_body("fast", false)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(h["x-wharf-model"], "chat-b");
    let up = mock.last_request().unwrap();
    assert_eq!(up.json().unwrap()["model"], "up-chat-b");
    assert_eq!(up.header("x-tenant"), Some("acme"));
    assert_eq!(up.header("x-wharf-team"), Some("team_1"));
    // The provider credential is the gateway's, whatever filters do.
    assert_eq!(
        up.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    let rec = gw.usage_of(&rid(&h)).await;
    assert_eq!(rec["model"], "chat-b");
    assert_eq!(rec["filters"]["metadata"]["team"], "team_1");
    assert_eq!(rec["filters"]["metadata"]["size"], "short");
    let decisions = rec["filters"]["decisions"].as_array().unwrap();
    assert!(decisions
        .iter()
        .any(|d| d["filter"] == "alias" && d["action"] == "mutate" && d["phase"] == "pre_route"));
    assert!(decisions
        .iter()
        .any(|d| d["filter"] == "inject" && d["phase"] == "pre_upstream"));

    // The user key (no team) falls back to the default table, which its grant allows.
    let (st, h, body) = chat(&gw, KEY_LIMITED, chat_body("fast", true)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(h["x-wharf-model"], "chat-a");
    assert_eq!(
        mock.last_request().unwrap().header("x-wharf-team"),
        Some("none")
    );

    // A name that is no alias goes through unchanged.
    let (st, h, _) = chat(&gw, KEY_GOOD, chat_body("chat-a", false)).await;
    assert_eq!(st, 200);
    assert_eq!(h["x-wharf-model"], "chat-a");
    assert!(metrics(&gw).await.contains(
        r#"wharf_filter_decisions_total{action="mutate",filter="alias",phase="pre_route"}"#
    ));
}

#[tokio::test]
async fn blocks_answer_with_the_filters_status_and_code_in_the_family_shape() {
    let mock = recording_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let teapot = write_script(
        dir.path(),
        "teapot.lua",
        "function pre_upstream(req) if req.headers['x-brew'] then wharf.block(418, 'teapot', 'short and stout') end end",
    );
    let extra = format!(
        r#"
[[filters]]
name = "keywords"
kind = "lua"
script = "{kw}"
settings = {{ vars = {{ words = ["project-x"] }} }}

[[filters]]
name = "teapot"
kind = "lua"
script = "{teapot}"
"#,
        kw = example("keyword_block.lua"),
    );
    let gw = Gw::start_with(&mock, &extra).await;
    let before = mock.request_count();

    let (st, h, body) = chat(
        &gw,
        KEY_GOOD,
        chat_with("chat-a", "Tell me about Project-X"),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["error"]["code"], "keyword_blocked");
    assert_eq!(
        body["error"]["message"],
        "the prompt contains a blocked keyword"
    );
    let rec = gw.usage_of(&rid(&h)).await;
    assert_eq!(rec["error_code"], "keyword_blocked");
    assert_eq!(rec["denied_by"], "filter");
    assert_eq!(rec["outcome"], "denied");
    assert_eq!(rec["filters"]["decisions"][0]["action"], "block");

    // Anthropic route: Anthropic's error envelope.
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY_GOOD)
        .json(&json!({"model": "claude", "max_tokens": 10,
            "messages": [{"role": "user", "content": "project-x plans"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["code"], "keyword_blocked");

    // pre_upstream block with its own status.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .header("x-brew", "1")
        .json(&chat_body("chat-a", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 418);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "teapot");
    assert_eq!(
        mock.request_count(),
        before,
        "a blocked request never reaches the provider"
    );

    // Everything else passes.
    let (st, _, _) = chat(&gw, KEY_GOOD, chat_with("chat-a", "hello")).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn post_upstream_rewrites_unary_answers_and_stream_events() {
    let mock = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let upper = write_script(
        dir.path(),
        "upper.lua",
        r#"
function post_upstream(req, resp)
  if resp.body and resp.body.choices then
    local m = resp.body.choices[1].message
    m.content = string.upper(m.content)
    resp.body.filtered = true
  elseif resp.json and resp.json.choices and resp.json.choices[1] and resp.json.choices[1].delta then
    local d = resp.json.choices[1].delta
    if type(d.content) == "string" then d.content = string.upper(d.content) end
  end
end
"#,
    );
    let extra = format!(
        "[[filters]]\nname = \"upper\"\nkind = \"lua\"\nscript = \"{upper}\"\nscope = {{ models = [\"chat-a\"] }}\n"
    );
    let gw = Gw::start_with(&mock, &extra).await;

    let (st, h, body) = chat(&gw, KEY_GOOD, chat_body("chat-a", false)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["filtered"], true);
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty() && text == text.to_uppercase(), "{text}");
    let rec = gw.usage_of(&rid(&h)).await;
    assert!(rec["tokens"]["output"].as_u64().unwrap() > 0, "{rec}");

    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .json(&chat_body("chat-a", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let text = r.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let content: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(
        !content.is_empty() && content == content.to_uppercase(),
        "{content}"
    );
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert_eq!(rec["stream_cut"], false);

    // Out of scope (chat-b): untouched.
    let (_, _, body) = chat(&gw, KEY_GOOD, chat_body("chat-b", false)).await;
    assert!(body.get("filtered").is_none());
}

#[tokio::test]
async fn post_response_audit_log_and_builtins() {
    let mock = recording_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let extra = format!(
        r#"
[[filters]]
name = "audit"
kind = "audit_log"
settings = {{ path = "{audit}" }}

[[filters]]
name = "pii"
kind = "pii_mask"

[[filters]]
name = "transform"
kind = "request_transform"
settings = {{ set = {{ temperature = 0.25 }}, remove = ["user"], set_headers = {{ "x-route" = "blue", "host" = "evil.example" }} }}
"#,
        audit = audit.display()
    );
    let gw = Gw::start_with(&mock, &extra).await;
    let body = json!({"model": "chat-a", "user": "u-1",
        "messages": [{"role": "user", "content": "I am jane@example.com, call +1 415 555 0100"}]});
    let (st, h, _) = chat(&gw, KEY_GOOD, body).await;
    assert_eq!(st, 200);
    let up = mock.last_request().unwrap();
    let sent = up.json().unwrap();
    assert_eq!(sent["messages"][0]["content"], "I am [EMAIL], call [PHONE]");
    assert_eq!(sent["temperature"], 0.25);
    assert!(sent.get("user").is_none());
    assert_eq!(up.header("x-route"), Some("blue"));
    assert_ne!(up.header("host"), Some("evil.example"));

    let id = rid(&h);
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(&id)) {
            break serde_json::from_str::<Value>(l).unwrap();
        }
        assert!(Instant::now() < deadline, "no audit line for {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["status"], 200);
    assert_eq!(line["model"], "chat-a");
    assert_eq!(line["api_key_id"], "key_good");
    assert!(
        line.get("messages").is_none(),
        "prompts are not logged by default"
    );
    assert!(!line.to_string().contains("jane"));

    // A denied request is audited too.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("wharf-unknown")
        .json(&chat_body("chat-a", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .contains(&id)
    {
        assert!(
            Instant::now() < deadline,
            "no audit line for the denied request"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn scripts_hot_reload_and_a_broken_version_keeps_the_previous_one() {
    let mock = recording_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let v = |n: u32| format!("function pre_upstream(req) req.headers['x-version'] = '{n}' end");
    let path = write_script(dir.path(), "v.lua", &v(1));
    let extra = format!("[[filters]]\nname = \"ver\"\nkind = \"lua\"\nscript = \"{path}\"\n");
    let gw = Gw::start_with(&mock, &extra).await;

    let version = |m: &MockServer| {
        m.last_request()
            .unwrap()
            .header("x-version")
            .map(str::to_string)
    };
    let (st, _, _) = chat(&gw, KEY_GOOD, chat_body("chat-a", false)).await;
    assert_eq!(st, 200);
    assert_eq!(version(&mock).as_deref(), Some("1"));

    let wait_for = |want: &'static str| {
        let gw = &gw;
        let mock = &mock;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (st, _, _) = chat(gw, KEY_GOOD, chat_body("chat-a", false)).await;
                assert_eq!(st, 200);
                if version(mock).as_deref() == Some(want) {
                    return;
                }
                assert!(Instant::now() < deadline, "version {want} never ran");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    std::fs::write(&path, v(2)).unwrap();
    wait_for("2").await;

    // A broken version is reported and the running one stays.
    std::fs::write(&path, "function pre_upstream(req) this is not lua").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics(&gw)
        .await
        .contains(r#"wharf_filter_script_reloads_total{filter="ver",result="error"} 1"#)
    {
        assert!(
            Instant::now() < deadline,
            "the broken script was not reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics(&gw)
        .await
        .contains(r#"wharf_filter_script_healthy{filter="ver"} 0"#));
    let (st, _, _) = chat(&gw, KEY_GOOD, chat_body("chat-a", false)).await;
    assert_eq!(st, 200);
    assert_eq!(version(&mock).as_deref(), Some("2"));
    assert!(gw.log().contains("failed to load"), "{}", gw.log());

    // Fixed again: the new version runs.
    std::fs::write(&path, v(3)).unwrap();
    wait_for("3").await;
}

#[tokio::test]
async fn sandbox_escapes_are_contained_and_the_gateway_keeps_serving() {
    let mock = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let attacks = r#"
local attacks = {
  os = function() os.execute("touch /tmp/wharf-filter-pwned") end,
  io = function() io.open("/etc/passwd") end,
  require = function() require("os") end,
  bytecode = function() load("\27Lua") end,
  dump = function() string.dump(function() end) end,
  loop = function() while true do end end,
  bomb = function() local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 4096) .. i end end,
}
function pre_route(req)
  local a = attacks[req.headers["x-attack"] or ""]
  if a then a() end
end
"#;
    let open = write_script(dir.path(), "open.lua", attacks);
    let closed = write_script(dir.path(), "closed.lua", attacks);
    let extra = format!(
        r#"
[[filters]]
name = "open"
kind = "lua"
script = "{open}"
on_error = "open"
scope = {{ keys = ["key_good"] }}
settings = {{ memory_limit_kb = 2048, instruction_limit = 200000 }}

[[filters]]
name = "closed"
kind = "lua"
script = "{closed}"
on_error = "closed"
scope = {{ keys = ["key_limited"] }}
settings = {{ memory_limit_kb = 2048, instruction_limit = 200000 }}
"#
    );
    let gw = Gw::start_with(&mock, &extra).await;
    let send = |key: &'static str, attack: &'static str| {
        let gw = &gw;
        async move {
            let r = client()
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(key)
                .header("x-attack", attack)
                .json(&chat_body("chat-a", false))
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap())
        }
    };
    for attack in ["os", "io", "require", "bytecode", "dump", "loop", "bomb"] {
        let (st, body) = send(KEY_GOOD, attack).await;
        assert_eq!(st, 200, "fail-open {attack}: {body}");
        let (st, body) = send(KEY_LIMITED, attack).await;
        assert_eq!(st, 403, "fail-closed {attack}: {body}");
        assert_eq!(body["error"]["code"], "plugin_blocked");
    }
    assert!(!Path::new("/tmp/wharf-filter-pwned").exists());
    let m = metrics(&gw).await;
    for kind in ["runtime", "instructions", "memory"] {
        assert!(
            m.contains(&format!(
                r#"wharf_filter_errors_total{{filter="open",kind="{kind}"}}"#
            )),
            "{kind}: {m}"
        );
    }
    // Still serving, on both keys.
    let (st, _) = send(KEY_GOOD, "none").await;
    assert_eq!(st, 200);
    let (st, _) = send(KEY_LIMITED, "none").await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn chain_order_and_scoping() {
    let mock = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let tracer = |name: &str| {
        write_script(
            dir.path(),
            &format!("{name}.lua"),
            &format!(
                "function pre_route(req) req.metadata.trace = (req.metadata.trace or '') .. '{name};' end"
            ),
        )
    };
    let extra = format!(
        r#"
[[filters]]
name = "global-late"
kind = "lua"
script = "{gl}"
order = 30

[[filters]]
name = "org"
kind = "lua"
script = "{org}"
order = 20
scope = {{ organisations = ["org_1"] }}

[[filters]]
name = "other-org"
kind = "lua"
script = "{other}"
order = 10
scope = {{ organisations = ["org_2"] }}

[[filters]]
name = "key"
kind = "lua"
script = "{key}"
order = 10
scope = {{ keys = ["key_limited"] }}

[[filters]]
name = "model"
kind = "lua"
script = "{model}"
order = 5
scope = {{ models = ["chat-b"] }}
"#,
        gl = tracer("global-late"),
        org = tracer("org"),
        other = tracer("other-org"),
        key = tracer("key"),
        model = tracer("model"),
    );
    let gw = Gw::start_with(&mock, &extra).await;
    let trace = |h: reqwest::header::HeaderMap| {
        let gw = &gw;
        async move {
            let rec = gw.usage_of(&rid(&h)).await;
            rec["filters"]["metadata"]["trace"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let (_, h, _) = chat(&gw, KEY_GOOD, chat_body("chat-a", false)).await;
    assert_eq!(trace(h).await, "org;global-late;");
    let (_, h, _) = chat(&gw, KEY_GOOD, chat_body("chat-b", false)).await;
    assert_eq!(trace(h).await, "model;org;global-late;");
    let (_, h, _) = chat(&gw, KEY_LIMITED, chat_body("chat-a", false)).await;
    assert_eq!(trace(h).await, "key;org;global-late;");
}

#[tokio::test]
async fn no_filters_means_no_filter_field() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    let (st, h, _) = chat(&gw, KEY_GOOD, chat_body("chat-a", false)).await;
    assert_eq!(st, 200);
    let rec = gw.usage_of(&rid(&h)).await;
    assert!(rec.get("filters").is_none());
}

#[test]
fn configuration_errors_fail_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write_script(dir.path(), "broken.lua", "function pre_route(req");
    let good = write_script(dir.path(), "good.lua", "function pre_route(req) end");
    let cases = [
        (
            "[[filters]]\nname = \"x\"\nkind = \"nope\"\n".to_string(),
            "unknown filter kind",
        ),
        (
            "[[filters]]\nname = \"x\"\nkind = \"pii_mask\"\nsettings = { emails = true, bogus = 1 }\n"
                .to_string(),
            "bogus",
        ),
        (
            format!("[[filters]]\nname = \"x\"\nkind = \"lua\"\nscript = \"{broken}\"\n"),
            "broken.lua",
        ),
        (
            format!("[[filters]]\nname = \"x\"\nkind = \"lua\"\nscript = \"{good}\"\nphases = [\"post_upstream\"]\n"),
            "does not define",
        ),
        (
            format!("[[filters]]\nname = \"x\"\nkind = \"lua\"\nscript = \"{good}\"\non_error = \"maybe\"\n"),
            "on_error",
        ),
        (
            format!("[[filters]]\nname = \"x\"\nkind = \"lua\"\nscript = \"{good}\"\n[[filters]]\nname = \"x\"\nkind = \"lua\"\nscript = \"{good}\"\n"),
            "duplicate filter name",
        ),
    ];
    for (text, want) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{want}: accepted");
        assert!(all.contains(want), "{want}: {all}");
    }
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        format!("[[filters]]\nname = \"x\"\nkind = \"lua\"\nscript = \"{good}\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn read_only_filters_run_as_a_group_and_the_first_block_by_order_wins() {
    let mock = recording_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let blocker = |name: &str, word: &str| {
        write_script(
            dir.path(),
            &format!("{name}.lua"),
            &format!(
                r#"function pre_upstream(req)
  for _, m in ipairs(req.body.messages) do
    if string.find(m.content, "{word}", 1, true) then wharf.block(409, "{name}_block", "{name}") end
  end
  req.body.messages[1].content = "rewritten by {name}"
end"#
            ),
        )
    };
    let extra = format!(
        r#"
[[filters]]
name = "second"
kind = "lua"
script = "{b}"
order = 2
read_only = true

[[filters]]
name = "first"
kind = "lua"
script = "{a}"
order = 1
read_only = true

[[filters]]
name = "third"
kind = "lua"
script = "{c}"
order = 3
read_only = true
"#,
        a = blocker("first", "alpha"),
        b = blocker("second", "beta"),
        c = blocker("third", "gamma"),
    );
    let gw = Gw::start_with(&mock, &extra).await;
    let (st, _, v) = chat(&gw, KEY_GOOD, chat_with("chat-a", "beta then alpha")).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("first_block")),
        "{v}"
    );
    let (st, _, v) = chat(&gw, KEY_GOOD, chat_with("chat-a", "gamma and beta")).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("second_block")),
        "{v}"
    );
    let (st, _, v) = chat(&gw, KEY_GOOD, chat_with("chat-a", "only gamma")).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("third_block")),
        "{v}"
    );
    // Nothing blocks: the provider gets the request unchanged (read-only filters' changes are
    // not kept).
    let (st, _, _) = chat(&gw, KEY_GOOD, chat_with("chat-a", "delta")).await;
    assert_eq!(st, 200);
    let up = mock.last_request().unwrap().json().unwrap();
    assert_eq!(up["messages"][0]["content"], "delta");
}
