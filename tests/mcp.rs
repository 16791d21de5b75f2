//! The MCP gateway end to end (SPEC §8): a real MCP server (the Rust MCP SDK, streamable
//! HTTP) behind a real `wharf` process, reached by a real MCP client (the same SDK) and by
//! plain JSON-RPC over HTTP where a test needs to look at the wire.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientConfig, ContentBlock,
    ListToolsResult, PaginatedRequestParams, ProtocolVersion, ServerCapabilities, ServerConfig,
    Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY_MCP: &str = "wharf-test-mcp";
const UPSTREAM_TOKEN: &str = "mcp-upstream-token";

/// What the MCP server saw.
#[derive(Clone, Default)]
struct Seen {
    /// `Authorization` of each tools/list and tools/call (and of each legacy request).
    authorization: Arc<Mutex<Vec<String>>>,
    /// `Authorization` of each HTTP request of the streamable-HTTP server.
    requests: Arc<Mutex<Vec<String>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct Tools {
    seen: Seen,
}

impl Tools {
    fn note(&self, ctx: &RequestContext<RoleServer>) {
        let auth = ctx
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.headers.get("authorization"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.seen.authorization.lock().unwrap().push(auth);
    }
}

fn tool(name: &'static str) -> Tool {
    let schema = json!({"type": "object", "properties": {"text": {"type": "string"}}});
    Tool::new(
        name,
        format!("the {name} tool"),
        Arc::new(schema.as_object().unwrap().clone()),
    )
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        self.note(&ctx);
        Ok(ListToolsResult::with_all_items(vec![
            tool("echo"),
            tool("add"),
            tool("rm"),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        self.note(&ctx);
        self.seen
            .calls
            .lock()
            .unwrap()
            .push(request.name.to_string());
        let args = request.arguments.unwrap_or_default();
        let text = match request.name.as_ref() {
            "echo" => args
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            "add" => {
                let a = args.get("a").and_then(Value::as_i64).unwrap_or(0);
                let b = args.get("b").and_then(Value::as_i64).unwrap_or(0);
                (a + b).to_string()
            }
            "big" => "x".repeat(args.get("n").and_then(Value::as_u64).unwrap_or(0) as usize),
            other => format!("{other} ran"),
        };
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

/// A streamable-HTTP MCP server on a free port; its endpoint is `/mcp`. Every HTTP request's
/// `Authorization` is noted in `seen.requests`.
async fn mcp_server(seen: Seen) -> String {
    let handler_seen = seen.clone();
    let service = StreamableHttpService::new(
        move || {
            Ok(Tools {
                seen: handler_seen.clone(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = listener.accept().await else {
                return;
            };
            let (svc, seen) = (service.clone(), seen.clone());
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(io);
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        seen.requests.lock().unwrap().push(auth);
                        let svc = svc.clone();
                        async move { Ok::<_, std::convert::Infallible>(svc.handle(req).await) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/mcp")
}

fn mcp_config(url: &str, extra: &str) -> String {
    format!(
        r#"
[[keys]]
id = "key_mcp"
hash = "{hash}"
organisation_id = "org_1"
models = []
mcp_servers = ["tools", "srv-off", "plain"]

[[mcp_servers]]
slug = "tools"
name = "Test tools"
url = "{url}"
blocked_tools = ["rm"]
keywords = ["forbidden-word"]
auth = {{ type = "BEARER", token_env = "WHARF_TEST_MCP_TOKEN" }}
pricing = {{ per_call_nanos = 1000, per_input_byte_nanos = 1, per_output_byte_nanos = 2 }}

[[mcp_servers]]
slug = "off"
id = "srv-off"
url = "{url}"
enabled = false

[[mcp_servers]]
slug = "plain"
url = "{url}"
organisation_id = "org_other"
{extra}
"#,
        hash = sha(KEY_MCP),
    )
}

async fn gateway(url: &str, extra: &str) -> (Gw, MockServerHolder) {
    let m = mock().await;
    let text = mcp_config(url, extra);
    let gw = Gw::start_custom(
        &m,
        |port, admin, dir| config_text(&m.addr().to_string(), port, admin, dir, &text),
        &[("WHARF_TEST_MCP_TOKEN", UPSTREAM_TOKEN.to_string())],
    )
    .await;
    (gw, MockServerHolder(m))
}

/// Keeps the LLM mock of the standard configuration alive.
struct MockServerHolder(#[allow(dead_code)] wharf_mock::MockServer);

fn mcp_client_config(url: String, key: &str) -> StreamableHttpClientTransportConfig {
    StreamableHttpClientTransportConfig::with_uri(url).auth_header(key)
}

/// Every usage record with MCP calls, by request id.
fn mcp_calls(recs: &[Value]) -> Vec<Value> {
    recs.iter()
        .flat_map(|r| r["mcp_calls"].as_array().cloned().unwrap_or_default())
        .collect()
}

async fn post(
    gw: &Gw,
    key: &str,
    path: &str,
    body: Value,
    session: Option<&str>,
) -> reqwest::Response {
    let mut r = client()
        .post(gw.url(path))
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if let Some(s) = session {
        r = r.header("mcp-session-id", s);
    }
    r.send().await.unwrap()
}

fn initialize() -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},
        "clientInfo":{"name":"raw","version":"1"}}})
}

/// The JSON-RPC messages of an answer (JSON or SSE).
async fn messages(resp: reqwest::Response) -> Vec<Value> {
    let sse = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    if sse {
        sse_data(&text)
            .iter()
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    } else {
        vec![serde_json::from_str(&text).unwrap()]
    }
}

#[tokio::test]
async fn mcp_client_through_wharf_lists_calls_and_is_refused_blocked_tools() {
    let seen = Seen::default();
    let url = mcp_server(seen.clone()).await;
    let (gw, _m) = gateway(&url, "").await;

    let transport = StreamableHttpClientTransport::from_config(mcp_client_config(
        gw.url("/v1/mcp/tools"),
        KEY_MCP,
    ));
    let client = ClientConfig::default()
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
        .serve(transport)
        .await
        .expect("initialize through wharf");

    let tools = client.list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, vec!["echo", "add"], "the blocked tool is hidden");

    let args = |v: Value| v.as_object().unwrap().clone();
    let r = client
        .call_tool(
            CallToolRequestParams::new("echo").with_arguments(args(json!({"text": "hi there"}))),
        )
        .await
        .expect("echo");
    assert_eq!(r.content[0].as_text().unwrap().text, "hi there");
    // The session carries several calls.
    for (a, b) in [(1, 2), (20, 22)] {
        let r = client
            .call_tool(
                CallToolRequestParams::new("add").with_arguments(args(json!({"a": a, "b": b}))),
            )
            .await
            .expect("add");
        assert_eq!(r.content[0].as_text().unwrap().text, (a + b).to_string());
    }

    let refused = client
        .call_tool(CallToolRequestParams::new("rm").with_arguments(args(json!({}))))
        .await;
    assert!(refused.is_err(), "a blocked tool is refused: {refused:?}");
    let refused = client
        .call_tool(
            CallToolRequestParams::new("echo")
                .with_arguments(args(json!({"text": "the FORBIDDEN-WORD here"}))),
        )
        .await;
    assert!(refused.is_err(), "the keyword filter refuses: {refused:?}");
    client.cancel().await.unwrap();

    // The server never saw the refused calls, nor the caller's key: only its own token.
    assert_eq!(*seen.calls.lock().unwrap(), vec!["echo", "add", "add"]);
    let auth = seen.authorization.lock().unwrap().clone();
    assert_eq!(auth.len(), 4, "tools/list and three calls: {auth:?}");
    let requests = seen.requests.lock().unwrap().clone();
    assert!(requests.len() > auth.len(), "{requests:?}");
    for a in auth.iter().chain(&requests) {
        assert_eq!(a, &format!("Bearer {UPSTREAM_TOKEN}"));
    }

    // One usage record per HTTP request; one MCP record per JSON-RPC call, priced.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let calls = loop {
        let recs: Vec<Value> = std::fs::read_to_string(gw.dir.path().join("usage.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let calls = mcp_calls(&recs);
        if calls.iter().filter(|c| c["method"] == "tools/call").count() >= 5 {
            for r in &recs {
                assert_eq!(r["endpoint"], "/v1/mcp");
                assert_eq!(r["mcp_server"], "tools");
                for c in r["mcp_calls"].as_array().into_iter().flatten() {
                    assert_eq!(c["request_id"], r["request_id"], "linked by request id");
                }
            }
            break calls;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "usage records: {recs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let tool_calls: Vec<&Value> = calls
        .iter()
        .filter(|c| c["method"] == "tools/call")
        .collect();
    // Records reach the file when each request's logging runs, which may be after the client
    // has sent its next request: compare without order.
    let mut outcomes: Vec<(&str, &str)> = tool_calls
        .iter()
        .map(|c| (c["tool"].as_str().unwrap(), c["outcome"].as_str().unwrap()))
        .collect();
    outcomes.sort_unstable();
    assert_eq!(
        outcomes,
        vec![
            ("add", "success"),
            ("add", "success"),
            ("echo", "blocked"),
            ("echo", "success"),
            ("rm", "blocked"),
        ]
    );
    for c in &tool_calls {
        assert_eq!(c["transport"], "STREAMABLE_HTTP");
        assert_eq!(c["mcp_server_id"], "tools");
        assert!(c["session_id"].is_string(), "{c}");
        if c["outcome"] == "success" {
            assert_eq!(c["status"], 200);
            let (i, o) = (
                c["bytes_in"].as_u64().unwrap(),
                c["bytes_out"].as_u64().unwrap(),
            );
            assert!(i > 0 && o > 0, "{c}");
            assert_eq!(c["cost_nanos"].as_u64().unwrap(), 1000 + i + 2 * o);
        } else {
            assert_eq!(c["status"], 403);
            assert_eq!(c["error_code"], "mcp_guardrail_block");
            assert_eq!(c["cost_nanos"], 0);
        }
    }
    assert!(calls.iter().any(|c| c["method"] == "initialize"));
    assert!(calls.iter().any(|c| c["method"] == "tools/list"));
}

#[tokio::test]
async fn resolution_grants_and_errors_are_json() {
    let url = mcp_server(Seen::default()).await;
    let (gw, _m) = gateway(&url, "").await;
    let c = client();
    let check = |r: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(r.headers().get("content-type").unwrap(), "application/json");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
    };
    check(
        post(&gw, KEY_MCP, "/v1/mcp/nope", initialize(), None).await,
        404,
        "mcp_not_found",
    )
    .await;
    // Disabled, by slug or by id.
    check(
        post(&gw, KEY_MCP, "/v1/mcp/off", initialize(), None).await,
        404,
        "mcp_not_found",
    )
    .await;
    check(
        post(&gw, KEY_MCP, "/v1/mcp/srv-off", initialize(), None).await,
        404,
        "mcp_not_found",
    )
    .await;
    // Another organisation's server does not exist for this key.
    check(
        post(&gw, KEY_MCP, "/v1/mcp/plain", initialize(), None).await,
        404,
        "mcp_not_found",
    )
    .await;
    // No grant.
    check(
        post(&gw, KEY_GOOD, "/v1/mcp/tools", initialize(), None).await,
        403,
        "mcp_not_allowed",
    )
    .await;
    // Not a reference.
    check(
        post(&gw, KEY_MCP, "/v1/mcp/b%20ad", initialize(), None).await,
        400,
        "invalid_mcp_ref",
    )
    .await;
    check(
        post(&gw, KEY_MCP, "/v1/mcp", initialize(), None).await,
        400,
        "invalid_mcp_ref",
    )
    .await;
    // No key, wrong method.
    let r = c
        .post(gw.url("/v1/mcp/tools"))
        .json(&initialize())
        .send()
        .await
        .unwrap();
    check(r, 401, "unauthorized").await;
    let r = c
        .put(gw.url("/v1/mcp/tools"))
        .bearer_auth(KEY_MCP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers().get("allow").unwrap(), "GET, POST, DELETE");
    check(r, 405, "method_not_allowed").await;
    // Not JSON.
    let r = c
        .post(gw.url("/v1/mcp/tools"))
        .bearer_auth(KEY_MCP)
        .body("not json")
        .send()
        .await
        .unwrap();
    check(r, 400, "invalid_request").await;

    // The same server by id and by slug answers.
    let r = post(&gw, KEY_MCP, "/v1/mcp/tools", initialize(), None).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("mcp-session-id").is_some());
    assert!(r.headers().get("x-request-id").is_some());
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let msgs = messages(r).await;
    assert_eq!(msgs[0]["id"], 1);
    assert!(msgs[0]["result"]["protocolVersion"].is_string());
    let rec = gw.usage_of(&rid).await;
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["api_key_id"], "key_mcp");
    assert_eq!(rec["mcp_calls"][0]["method"], "initialize");
    assert_eq!(rec["mcp_calls"][0]["outcome"], "success");

    // The key's grants are listed by /v1/keys/validate (disabled and foreign servers not).
    let v: Value = c
        .post(gw.url("/v1/keys/validate"))
        .bearer_auth(KEY_MCP)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["mcp_servers"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["mcp_servers"][0]["slug"], "tools");
    assert_eq!(v["mcp_servers"][0]["transport"], "STREAMABLE_HTTP");

    // A refused request's usage record says which gate denied it.
    let r = post(&gw, KEY_GOOD, "/v1/mcp/tools", initialize(), None).await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let rec = gw.usage_of(&rid).await;
    assert_eq!(rec["status"], 403);
    assert_eq!(rec["error_code"], "mcp_not_allowed");
}

#[tokio::test]
async fn raw_sessions_guardrails_and_delete() {
    let seen = Seen::default();
    let url = mcp_server(seen.clone()).await;
    let (gw, _m) = gateway(&url, "").await;

    let r = post(&gw, KEY_MCP, "/v1/mcp/tools", initialize(), None).await;
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    messages(r).await;
    let r = post(
        &gw,
        KEY_MCP,
        "/v1/mcp/tools",
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        Some(&session),
    )
    .await;
    assert_eq!(r.status(), 202);

    // tools/list in an SSE answer: the blocked tool is gone.
    let r = post(
        &gw,
        KEY_MCP,
        "/v1/mcp/tools",
        json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
        Some(&session),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let msgs = messages(r).await;
    let list = msgs.iter().find(|m| m["id"] == 2).unwrap();
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["echo", "add"]);

    // A refused call: 403 with a JSON-RPC error the client can show.
    let r = post(
        &gw,
        KEY_MCP,
        "/v1/mcp/tools",
        json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"rm","arguments":{}}}),
        Some(&session),
    )
    .await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], 3);
    assert_eq!(v["error"]["code"], -32001);
    assert_eq!(v["error"]["data"]["code"], "mcp_guardrail_block");
    assert!(v["error"]["message"].as_str().unwrap().contains("rm"));
    // A batch of refused calls: one error each.
    let call = |id: u64, name: &str| json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":{"text":"forbidden-word"}}});
    let r = post(
        &gw,
        KEY_MCP,
        "/v1/mcp/tools",
        json!([call(4, "rm"), call(5, "echo")]),
        Some(&session),
    )
    .await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["id"], 5);

    // An allowed call in the session.
    let add = |id: u64| json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3}}});
    let r = post(&gw, KEY_MCP, "/v1/mcp/tools", add(6), Some(&session)).await;
    assert_eq!(r.status(), 200);
    let msgs = messages(r).await;
    assert!(
        msgs.iter().any(|m| m["id"] == 6 && m["result"].is_object()),
        "{msgs:?}"
    );

    // An answer event larger than the gateway inspects still arrives whole.
    let r = post(
        &gw,
        KEY_MCP,
        "/v1/mcp/tools",
        json!({"jsonrpc":"2.0","id":10,"method":"tools/call",
            "params":{"name":"big","arguments":{"n": 3_000_000}}}),
        Some(&session),
    )
    .await;
    assert_eq!(r.status(), 200);
    let msgs = messages(r).await;
    let big = msgs.iter().find(|m| m["id"] == 10).expect("the big answer");
    assert_eq!(
        big["result"]["content"][0]["text"].as_str().unwrap().len(),
        3_000_000
    );

    // The server's stream (GET) opens through the gateway.
    let r = client()
        .get(gw.url("/v1/mcp/tools"))
        .bearer_auth(KEY_MCP)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    drop(r);

    // DELETE ends the session; the server then no longer knows it.
    let r = client()
        .delete(gw.url("/v1/mcp/tools"))
        .bearer_auth(KEY_MCP)
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = post(&gw, KEY_MCP, "/v1/mcp/tools", add(7), Some(&session)).await;
    assert_eq!(r.status(), 404, "the session is gone upstream");
    assert_eq!(*seen.calls.lock().unwrap(), vec!["add", "big"]);
}

/// A token endpoint that counts its requests and hands out `tok-N` for `lifetime` seconds.
async fn token_endpoint(lifetime: u64) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let count = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let n = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = n.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then the form body of Content-Length bytes.
                loop {
                    let Ok(k) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if k == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let cl: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + cl {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let ok = text.contains("grant_type=client_credentials")
                    && text.to_ascii_lowercase().contains("authorization: basic ");
                let i = n.fetch_add(1, Ordering::SeqCst) + 1;
                let body = if ok {
                    json!({"access_token": format!("tok-{i}"), "token_type": "Bearer", "expires_in": lifetime}).to_string()
                } else {
                    json!({"error": "invalid_client"}).to_string()
                };
                let status = if ok { "200 OK" } else { "401 Unauthorized" };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (format!("http://127.0.0.1:{port}/oauth/token"), count)
}

#[tokio::test]
async fn oauth2_client_credentials_token_is_cached_and_refreshed() {
    let seen = Seen::default();
    let url = mcp_server(seen.clone()).await;
    let (long_url, long_count) = token_endpoint(3600).await;
    let (short_url, short_count) = token_endpoint(1).await;
    let extra = format!(
        r#"
[[mcp_servers]]
slug = "oauth"
url = "{url}"
auth = {{ type = "OAUTH2", token_url = "{long_url}", client_id = "wharf", client_secret_env = "WHARF_TEST_MCP_TOKEN", scope = "tools" }}

[[mcp_servers]]
slug = "oauth-short"
url = "{url}"
auth = {{ type = "OAUTH2", token_url = "{short_url}", client_id = "wharf", client_secret_env = "WHARF_TEST_MCP_TOKEN" }}

[[mcp_servers]]
slug = "basic"
url = "{url}"
auth = {{ type = "BASIC", username = "wharf", password_env = "WHARF_TEST_MCP_TOKEN" }}

[[keys]]
id = "key_oauth"
hash = "{hash}"
organisation_id = "org_1"
mcp_servers = ["oauth", "oauth-short", "basic"]
"#,
        hash = sha("wharf-test-oauth"),
    );
    let (gw, _m) = gateway(&url, &extra).await;
    for _ in 0..3 {
        let r = post(&gw, "wharf-test-oauth", "/v1/mcp/oauth", initialize(), None).await;
        assert_eq!(r.status(), 200);
        messages(r).await;
    }
    assert_eq!(
        long_count.load(Ordering::SeqCst),
        1,
        "one token for three calls"
    );
    let auth = seen.requests.lock().unwrap().clone();
    assert_eq!(auth, vec!["Bearer tok-1"; 3]);

    // A token that expires is fetched again.
    let r = post(
        &gw,
        "wharf-test-oauth",
        "/v1/mcp/oauth-short",
        initialize(),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    messages(r).await;
    assert_eq!(short_count.load(Ordering::SeqCst), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while short_count.load(Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the token was never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = post(
            &gw,
            "wharf-test-oauth",
            "/v1/mcp/oauth-short",
            initialize(),
            None,
        )
        .await;
        assert_eq!(r.status(), 200);
        messages(r).await;
    }

    // BASIC: the configured user and the password from the environment.
    seen.requests.lock().unwrap().clear();
    let r = post(&gw, "wharf-test-oauth", "/v1/mcp/basic", initialize(), None).await;
    assert_eq!(r.status(), 200);
    messages(r).await;
    use base64::Engine;
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("wharf:{UPSTREAM_TOKEN}"))
    );
    assert_eq!(*seen.requests.lock().unwrap(), vec![want]);
}

#[tokio::test]
async fn unreachable_server_and_missing_credentials_are_502() {
    let dead = format!("http://127.0.0.1:{}/mcp", free_port());
    let extra = format!(
        r#"
[[mcp_servers]]
slug = "dead"
url = "{dead}"

[[mcp_servers]]
slug = "nocred"
url = "{dead}"
auth = {{ type = "BEARER", token_env = "WHARF_TEST_UNSET_VARIABLE" }}

[[mcp_servers]]
slug = "badtoken"
url = "{dead}"
auth = {{ type = "OAUTH2", token_url = "{dead}", client_id = "c", client_secret_env = "WHARF_TEST_MCP_TOKEN" }}

[[keys]]
id = "key_dead"
hash = "{hash}"
organisation_id = "org_1"
mcp_servers = ["*"]
"#,
        hash = sha("wharf-test-dead"),
    );
    let (gw, _m) = gateway(&dead, &extra).await;
    for (slug, code) in [
        ("dead", "mcp_upstream_error"),
        ("nocred", "mcp_auth_error"),
        ("badtoken", "mcp_auth_error"),
    ] {
        let r = post(
            &gw,
            "wharf-test-dead",
            &format!("/v1/mcp/{slug}"),
            initialize(),
            None,
        )
        .await;
        assert_eq!(r.status(), 502, "{slug}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{slug}: {v}");
    }
}

fn db_config(port: u16, admin: u16, dir: &std::path::Path) -> String {
    common::db::node_config(
        port,
        admin,
        dir,
        r#"refresh_interval_seconds = 30
"#,
    )
}

#[tokio::test]
async fn database_mode_servers_grants_and_mcp_usage_records() {
    use common::db::{seed_catalog, seed_key, TestDb, TEST_MASTER_KEYS};
    let seen = Seen::default();
    let url = mcp_server(seen.clone()).await;
    let db = TestDb::migrated().await;
    let m = mock().await;
    let cat = seed_catalog(&db, &m, "mcp-org", "chat", "up-chat").await;
    let keys = wharf::db::crypto::MasterKeys::parse(TEST_MASTER_KEYS).unwrap();
    let token = keys.encrypt("db-upstream-token").unwrap();
    let insert = |slug: &'static str, enabled: bool| {
        let (pool, url, token) = (db.pool.clone(), url.clone(), token.clone());
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>(
                "INSERT INTO mcp_servers (organisation_id, name, slug, transport, url, auth_type,
                        auth_config, blocked_tools, price_per_call_nanos, enabled)
                 VALUES ($1, $2, $2, 'STREAMABLE_HTTP', $3, 'BEARER', $4, '{rm}', 500, $5)
                 RETURNING id",
            )
            .bind(cat.org)
            .bind(slug)
            .bind(url)
            .bind(json!({ "token": token }))
            .bind(enabled)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let tools = insert("tools", true).await;
    let off = insert("off", false).await;
    let (key_id, secret) = seed_key(&db, cat.org, "mcp", &[]).await;
    let (_, ungranted) = seed_key(&db, cat.org, "plain", &[]).await;
    for s in [tools, off] {
        sqlx::query(
            "INSERT INTO api_key_mcp_access (organisation_id, api_key_id, mcp_server_id)
             VALUES ($1, $2, $3)",
        )
        .bind(cat.org)
        .bind(key_id)
        .bind(s)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let gw = Gw::start_custom(
        &m,
        db_config,
        &[
            ("WHARF_TEST_DATABASE_URL", db.url()),
            ("WHARF_MASTER_KEYS", TEST_MASTER_KEYS.to_string()),
        ],
    )
    .await;

    // By slug and by id.
    let r = post(&gw, &secret, "/v1/mcp/tools", initialize(), None).await;
    assert_eq!(r.status(), 200, "{}", gw.log());
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    messages(r).await;
    let r = post(
        &gw,
        &secret,
        &format!("/v1/mcp/{tools}"),
        json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
        Some(&session),
    )
    .await;
    assert_eq!(r.status(), 200);
    let msgs = messages(r).await;
    let names: Vec<&str> = msgs[0]["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["echo", "add"]);
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests, vec!["Bearer db-upstream-token"; 2]);

    let code = |r: reqwest::Response| async move {
        let s = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        (s, v["error"]["code"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(
        code(post(&gw, &ungranted, "/v1/mcp/tools", initialize(), None).await).await,
        (403, "mcp_not_allowed".into())
    );
    assert_eq!(
        code(post(&gw, &secret, "/v1/mcp/off", initialize(), None).await).await,
        (404, "mcp_not_found".into())
    );
    assert_eq!(
        code(post(&gw, &secret, &format!("/v1/mcp/{off}"), initialize(), None).await).await,
        (404, "mcp_not_found".into())
    );

    // The per-call record in Postgres, linked to the request's usage record.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        type CallRow = (
            String,
            Option<uuid::Uuid>,
            Option<uuid::Uuid>,
            String,
            i64,
            i64,
        );
        let row: Option<CallRow> = sqlx::query_as(
            "SELECT method, api_key_id, mcp_server_id, transport::text, cost_nanos, bytes_in
                   FROM mcp_usage_records WHERE request_id = $1 AND call_index = 0",
        )
        .bind(&rid)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        if let Some((method, key, server, transport, cost, bytes_in)) = row {
            assert_eq!(method, "initialize");
            assert_eq!(key, Some(key_id));
            assert_eq!(server, Some(tools));
            assert_eq!(transport, "STREAMABLE_HTTP");
            assert!(bytes_in > 0);
            assert_eq!(cost, 500, "per call only: no byte prices");
            let linked: i64 =
                sqlx::query_scalar("SELECT count(*) FROM usage_records WHERE request_id = $1")
                    .bind(&rid)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            assert_eq!(linked, 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no MCP usage record: {}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The usage rollups count the key's MCP calls and their cost, hourly and daily alike.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (calls, cost, day, hour): (i64, i64, (i64, i64), (i64, i64)) = (
            sqlx::query_scalar("SELECT count(*) FROM mcp_usage_records WHERE api_key_id = $1")
                .bind(key_id)
                .fetch_one(&db.pool)
                .await
                .unwrap(),
            sqlx::query_scalar(
                "SELECT coalesce(sum(cost_nanos), 0)::bigint FROM mcp_usage_records
                  WHERE api_key_id = $1",
            )
            .bind(key_id)
            .fetch_one(&db.pool)
            .await
            .unwrap(),
            rollup_mcp(&db, key_id, "DAY").await,
            rollup_mcp(&db, key_id, "HOUR").await,
        );
        if calls > 0 && day == (calls, cost) && hour == day {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollups {day:?} / {hour:?}, records ({calls}, {cost})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The MCP calls and their cost in a key's rollups of one granularity.
async fn rollup_mcp(db: &common::db::TestDb, key: uuid::Uuid, granularity: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(mcp_calls), 0)::bigint, coalesce(sum(mcp_cost_nanos), 0)::bigint
           FROM usage_rollups WHERE api_key_id = $1 AND granularity = $2::usage_granularity",
    )
    .bind(key)
    .bind(granularity)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn mcp_scoped_rate_limits_and_budgets_apply() {
    let url = mcp_server(Seen::default()).await;
    let extra = format!(
        r#"
[[mcp_servers]]
slug = "limited"
url = "{url}"
policies = {{ ratelimit = {{ requests = {{ per_minute = 2 }} }} }}

[[mcp_servers]]
slug = "priced"
url = "{url}"
pricing = {{ per_call_nanos = 1000 }}

[[keys]]
id = "key_gov"
hash = "{hash}"
organisation_id = "org_1"
mcp_servers = ["limited", "priced"]

[[budgets]]
id = "mcp-budget"
owner = "APIKEY"
owner_id = "key_gov"
amount_nanos = 1500
period = "DAILY"

[[keys]]
id = "key_quota"
hash = "{quota_hash}"
organisation_id = "org_1"
mcp_servers = ["priced"]

[[quotas]]
id = "mcp-quota"
owner = "APIKEY"
owner_id = "key_quota"
metric = "REQUESTS"
limit = 2
period = "DAILY"
"#,
        hash = sha("wharf-test-gov"),
        quota_hash = sha("wharf-test-quota"),
    );
    let (gw, _m) = gateway(&url, &extra).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = post(&gw, "wharf-test-gov", "/v1/mcp/limited", initialize(), None).await;
        let s = r.status().as_u16();
        // Rate-limit headers on MCP answers, as on model answers.
        assert_eq!(
            r.headers()
                .get("x-ratelimit-limit-requests")
                .map(|v| v.to_str().unwrap()),
            Some("2"),
            "{s}"
        );
        let body = r.text().await.unwrap();
        statuses.push(s);
        if s == 429 {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["code"], "rpm_exceeded", "{v}");
            assert_eq!(v["error"]["scope"], "mcp", "{v}");
        }
    }
    assert_eq!(
        statuses,
        vec![200, 200, 429],
        "the server's own scope limits"
    );

    // 1000 nanos per call against a 1500 budget: the first call fits, the second does not.
    let r = post(&gw, "wharf-test-gov", "/v1/mcp/priced", initialize(), None).await;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    messages(r).await;
    let rec = gw.usage_of(&rid).await;
    assert_eq!(rec["cost_nanos"], 1000, "{rec}");
    let r = post(&gw, "wharf-test-gov", "/v1/mcp/priced", initialize(), None).await;
    assert_eq!(r.status(), 402);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "budget_exceeded");

    // A request quota counts MCP requests like model requests: two a day, then 429.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = post(
            &gw,
            "wharf-test-quota",
            "/v1/mcp/priced",
            initialize(),
            None,
        )
        .await;
        let s = r.status().as_u16();
        let body = r.text().await.unwrap();
        if s == 429 {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
        }
        statuses.push(s);
    }
    assert_eq!(statuses, vec![200, 200, 429], "the key's request quota");
}

fn stdio_config(extra: &str) -> String {
    format!(
        r#"
[[mcp_servers]]
slug = "local"
transport = "STDIO"
command = "{bin}"
env = {{ GREETING = "hello from config" }}
blocked_tools = ["rm"]
pricing = {{ per_call_nanos = 7 }}

[[mcp_servers]]
slug = "tiny"
transport = "STDIO"
command = "{bin}"
max_sessions = 2
idle_timeout_ms = 2000

[[keys]]
id = "key_stdio"
hash = "{hash}"
organisation_id = "org_1"
mcp_servers = ["local", "tiny"]

[[keys]]
id = "key_stdio_other"
hash = "{other}"
organisation_id = "org_1"
mcp_servers = ["local", "tiny"]
{extra}
"#,
        bin = env!("CARGO_BIN_EXE_wharf-test-mcp-stdio"),
        hash = sha("wharf-test-stdio"),
        other = sha("wharf-test-stdio-other"),
    )
}

fn process_alive(pid: u32) -> bool {
    // A zombie counts as gone only once reaped: `/proc/<pid>` disappears then.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

async fn wait_gone(pid: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while process_alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The text of a tools/call answer.
fn tool_text(msgs: &[Value]) -> String {
    msgs[0]["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{msgs:?}"))
        .to_string()
}

fn call_msg(id: u64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
}

#[tokio::test]
async fn stdio_server_bridged_for_an_mcp_client_with_config_only_environment() {
    let url = mcp_server(Seen::default()).await;
    let (gw, _m) = gateway(&url, &stdio_config("")).await;
    let transport = StreamableHttpClientTransport::from_config(mcp_client_config(
        gw.url("/v1/mcp/local"),
        "wharf-test-stdio",
    ));
    let client = ClientConfig::default()
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
        .serve(transport)
        .await
        .expect("initialize a STDIO server through wharf");
    let names: Vec<String> = client
        .list_all_tools()
        .await
        .expect("tools/list")
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names, vec!["echo", "env", "pid", "crash"]);
    let args = |v: Value| v.as_object().unwrap().clone();
    let text = |r: CallToolResult| r.content[0].as_text().unwrap().text.clone();
    let r = client
        .call_tool(CallToolRequestParams::new("echo").with_arguments(args(json!({"text": "hi"}))))
        .await
        .unwrap();
    assert_eq!(text(r), "hi");
    // The environment is the configuration's only: nothing of the gateway's leaks in.
    for (var, want) in [
        ("GREETING", "hello from config"),
        ("WHARF_TEST_MCP_TOKEN", "<unset>"),
        ("HOME", "<unset>"),
    ] {
        let r = client
            .call_tool(CallToolRequestParams::new("env").with_arguments(args(json!({"name": var}))))
            .await
            .unwrap();
        assert_eq!(text(r), want, "{var}");
    }
    let r = client
        .call_tool(CallToolRequestParams::new("pid").with_arguments(args(json!({}))))
        .await
        .unwrap();
    let pid: u32 = text(r).parse().unwrap();
    assert!(process_alive(pid));
    assert!(client
        .call_tool(CallToolRequestParams::new("rm").with_arguments(args(json!({}))))
        .await
        .is_err());
    client.cancel().await.unwrap();
    // The client's DELETE ends the session; its process is stopped and reaped.
    wait_gone(pid).await;
}

#[tokio::test]
async fn stdio_sessions_are_per_process_bounded_reaped_and_restarted_on_crash() {
    let url = mcp_server(Seen::default()).await;
    let (gw, _m) = gateway(&url, &stdio_config("")).await;
    let key = "wharf-test-stdio";
    let mut sessions = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..2 {
        let r = post(&gw, key, "/v1/mcp/tiny", initialize(), None).await;
        assert_eq!(r.status(), 200);
        let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
        messages(r).await;
        let r = post(
            &gw,
            key,
            "/v1/mcp/tiny",
            call_msg(2, "pid", json!({})),
            Some(&sid),
        )
        .await;
        assert_eq!(r.status(), 200);
        pids.push(tool_text(&messages(r).await).parse::<u32>().unwrap());
        sessions.push(sid);
    }
    assert_ne!(sessions[0], sessions[1]);
    assert_ne!(pids[0], pids[1], "one process per session");
    // The bound: a third session is refused while two run.
    let r = post(&gw, key, "/v1/mcp/tiny", initialize(), None).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "mcp_stdio_error");
    // A request without a session that is not initialize.
    let r = post(
        &gw,
        key,
        "/v1/mcp/tiny",
        call_msg(3, "pid", json!({})),
        None,
    )
    .await;
    assert_eq!(r.status(), 400);
    // Idle sessions end and their processes are reaped; the session is then unknown.
    for pid in &pids {
        wait_gone(*pid).await;
    }
    let r = post(
        &gw,
        key,
        "/v1/mcp/tiny",
        call_msg(4, "pid", json!({})),
        Some(&sessions[0]),
    )
    .await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "mcp_not_found");

    let r = post(&gw, key, "/v1/mcp/local", initialize(), None).await;
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    messages(r).await;
    let r = post(
        &gw,
        key,
        "/v1/mcp/local",
        call_msg(5, "pid", json!({})),
        Some(&sid),
    )
    .await;
    let pid: u32 = tool_text(&messages(r).await).parse().unwrap();
    // The session is this server's and this key's only.
    for (k, path) in [
        ("wharf-test-stdio-other", "/v1/mcp/local"),
        (key, "/v1/mcp/tiny"),
    ] {
        let r = post(&gw, k, path, call_msg(9, "pid", json!({})), Some(&sid)).await;
        assert_eq!(r.status(), 404, "{k} {path}");
    }
    // A crash: the call in flight fails, the process is restarted in the same session with the
    // handshake replayed (the test server refuses tools before `initialize`), up to
    // MAX_RESTARTS times; the crash after that ends the session.
    let crash = |n: u64| {
        let (gw, sid) = (&gw, sid.clone());
        async move {
            let r = post(
                gw,
                key,
                "/v1/mcp/local",
                call_msg(n, "crash", json!({})),
                Some(&sid),
            )
            .await;
            assert_eq!(r.status(), 502);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "mcp_stdio_error");
        }
    };
    let mut pid = pid;
    for round in 0..wharf::mcp::stdio::MAX_RESTARTS as u64 {
        crash(100 + round).await;
        wait_gone(pid).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let next = loop {
            let r = post(
                &gw,
                key,
                "/v1/mcp/local",
                call_msg(200 + round, "pid", json!({})),
                Some(&sid),
            )
            .await;
            if r.status() == 200 {
                let msgs = messages(r).await;
                assert!(msgs[0].get("error").is_none(), "{msgs:?}");
                break tool_text(&msgs).parse::<u32>().unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the crashed process was not restarted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_ne!(next, pid, "a new process");
        pid = next;
    }
    crash(300).await;
    wait_gone(pid).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = post(
            &gw,
            key,
            "/v1/mcp/local",
            call_msg(7, "echo", json!({})),
            Some(&sid),
        )
        .await;
        if r.status() == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session outlived its restarts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A session's server messages come on its GET stream; DELETE ends it.
    let r = post(&gw, key, "/v1/mcp/local", initialize(), None).await;
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    messages(r).await;
    let mut stream = client()
        .get(gw.url("/v1/mcp/local"))
        .bearer_auth(key)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let r = post(
        &gw,
        key,
        "/v1/mcp/local",
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        Some(&sid),
    )
    .await;
    assert_eq!(r.status(), 202);
    let mut seen = String::new();
    while !seen.contains("notifications/message") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(stream);
    let r = client()
        .delete(gw.url("/v1/mcp/local"))
        .bearer_auth(key)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = post(
        &gw,
        key,
        "/v1/mcp/local",
        call_msg(8, "echo", json!({})),
        Some(&sid),
    )
    .await;
    assert_eq!(r.status(), 404);
}

/// A legacy HTTP+SSE MCP server (protocol 2024-11-05): `GET /sse` opens the stream, whose
/// `endpoint` event names `/messages?sessionId=N`; POSTs there are answered 202 and their
/// answers come on the stream.
async fn legacy_server(seen: Seen) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;
    type Streams = Arc<Mutex<std::collections::HashMap<String, mpsc::UnboundedSender<Value>>>>;
    let streams: Streams = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (streams, seen, next) = (streams.clone(), seen.clone(), next.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let Ok(k) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if k == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let cl: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + cl {
                            break (text[..end].to_string(), buf[end + 4..end + 4 + cl].to_vec());
                        }
                    }
                };
                let auth = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_string())
                    })
                    .unwrap_or_default();
                seen.authorization.lock().unwrap().push(auth);
                let target = head.split(' ').nth(1).unwrap_or("").to_string();
                if head.starts_with("GET /sse") {
                    let id = next.fetch_add(1, Ordering::SeqCst).to_string();
                    let (tx, mut rx) = mpsc::unbounded_channel();
                    streams.lock().unwrap().insert(id.clone(), tx);
                    let start = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\nevent: endpoint\ndata: /messages?sessionId={id}\n\n"
                    );
                    if sock.write_all(start.as_bytes()).await.is_err() {
                        return;
                    }
                    while let Some(v) = rx.recv().await {
                        let ev = format!("event: message\ndata: {v}\n\n");
                        if sock.write_all(ev.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                let session = target.split("sessionId=").nth(1).unwrap_or("").to_string();
                let tx = streams.lock().unwrap().get(&session).cloned();
                let ok = head.starts_with("POST /messages") && tx.is_some();
                let status = if ok { "202 Accepted" } else { "404 Not Found" };
                let resp =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = sock.write_all(resp.as_bytes()).await;
                let (Some(tx), Ok(msg)) = (tx, serde_json::from_slice::<Value>(&body)) else {
                    return;
                };
                let Some(id) = msg.get("id").cloned() else {
                    return;
                };
                let result = match msg["method"].as_str().unwrap_or("") {
                    "initialize" => json!({"protocolVersion": "2024-11-05",
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "legacy", "version": "1"}}),
                    "tools/list" => json!({"tools": [
                        {"name": "echo", "inputSchema": {"type": "object"}},
                        {"name": "rm", "inputSchema": {"type": "object"}}]}),
                    "tools/call" => {
                        let name = msg["params"]["name"].as_str().unwrap_or("").to_string();
                        seen.calls.lock().unwrap().push(name);
                        let t = msg["params"]["arguments"]["text"].as_str().unwrap_or("");
                        json!({"content": [{"type": "text", "text": t}]})
                    }
                    _ => json!({}),
                };
                let _ = tx.send(json!({"jsonrpc": "2.0", "id": id, "result": result}));
            });
        }
    });
    format!("http://127.0.0.1:{port}/sse")
}

/// Reads SSE events from `resp` until one satisfies `want`; returns (event, data).
async fn next_event(
    resp: &mut reqwest::Response,
    pending: &mut String,
    want: impl Fn(&str, &str) -> bool,
) -> (String, String) {
    loop {
        while let Some(end) = pending.find("\n\n") {
            let raw = pending[..end].to_string();
            pending.replace_range(..end + 2, "");
            let mut event = String::new();
            let mut data = String::new();
            for l in raw.lines() {
                if let Some(v) = l.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = l.strip_prefix("data: ") {
                    data = v.to_string();
                }
            }
            if want(&event, &data) {
                return (event, data);
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream stays open");
        pending.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn legacy_sse_server_with_the_endpoint_rewritten_through_wharf() {
    let seen = Seen::default();
    let legacy = legacy_server(seen.clone()).await;
    let extra = format!(
        r#"
[[mcp_servers]]
slug = "legacy"
transport = "SSE"
url = "{legacy}"
blocked_tools = ["rm"]
auth = {{ type = "BEARER", token_env = "WHARF_TEST_MCP_TOKEN" }}

[[keys]]
id = "key_legacy"
hash = "{hash}"
organisation_id = "org_1"
mcp_servers = ["legacy"]
"#,
        hash = sha("wharf-test-legacy"),
    );
    let url = mcp_server(Seen::default()).await;
    let (gw, _m) = gateway(&url, &extra).await;
    let key = "wharf-test-legacy";
    let mut stream = client()
        .get(gw.url("/v1/mcp/legacy"))
        .bearer_auth(key)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut pending = String::new();
    let (_, endpoint) = next_event(&mut stream, &mut pending, |e, _| e == "endpoint").await;
    assert!(
        endpoint.starts_with("/v1/mcp/legacy/messages?sessionId="),
        "{endpoint}"
    );
    let send = |body: Value| {
        let url = gw.url(&endpoint);
        async move {
            client()
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let answer = |id: u64| {
        move |_: &str, d: &str| serde_json::from_str::<Value>(d).is_ok_and(|v| v["id"] == id)
    };
    assert_eq!(send(initialize()).await.status(), 202);
    let (_, d) = next_event(&mut stream, &mut pending, answer(1)).await;
    assert_eq!(
        serde_json::from_str::<Value>(&d).unwrap()["result"]["serverInfo"]["name"],
        "legacy"
    );

    assert_eq!(
        send(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
            .await
            .status(),
        202
    );
    let (_, d) = next_event(&mut stream, &mut pending, answer(2)).await;
    let v: Value = serde_json::from_str(&d).unwrap();
    assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["result"]["tools"][0]["name"], "echo");

    // A refused call: 403 on the POST, and its JSON-RPC error on the stream.
    let r = send(call_msg(3, "rm", json!({}))).await;
    assert_eq!(r.status(), 403);
    let (_, d) = next_event(&mut stream, &mut pending, answer(3)).await;
    let v: Value = serde_json::from_str(&d).unwrap();
    assert_eq!(v["error"]["data"]["code"], "mcp_guardrail_block");

    assert_eq!(
        send(call_msg(4, "echo", json!({"text": "legacy hi"})))
            .await
            .status(),
        202
    );
    let (_, d) = next_event(&mut stream, &mut pending, answer(4)).await;
    let v: Value = serde_json::from_str(&d).unwrap();
    assert_eq!(v["result"]["content"][0]["text"], "legacy hi");

    assert_eq!(*seen.calls.lock().unwrap(), vec!["echo"]);
    let auth = seen.authorization.lock().unwrap().clone();
    assert_eq!(
        auth.len(),
        4,
        "the stream and three forwarded POSTs: {auth:?}"
    );
    assert!(
        auth.iter()
            .all(|a| a == &format!("Bearer {UPSTREAM_TOKEN}")),
        "{auth:?}"
    );
}

#[tokio::test]
async fn mcp_calls_survive_the_usage_spill_file() {
    use common::db::TestDb;
    use wharf::db::usage_store::PgUsageStore;
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill.jsonl");
    let server = uuid::Uuid::new_v4();
    let call = |i: u32| wharf::mcp::McpUsageRecord {
        request_id: "mcp-spilled-1".into(),
        call_index: i,
        mcp_server_id: server.to_string(),
        server_slug: "tools".into(),
        transport: "STREAMABLE_HTTP",
        method: Some("tools/call".into()),
        tool: Some("echo".into()),
        session_id: Some("s-1".into()),
        status: 200,
        outcome: "success",
        error_code: None,
        latency_ms: 1.5,
        bytes_in: 10,
        bytes_out: 20,
        cost_nanos: 1050,
    };
    let rec = wharf::usage::UsageRecord {
        request_id: "mcp-spilled-1".into(),
        timestamp: "2026-11-25T10:00:00Z".into(),
        method: "POST".into(),
        endpoint: "/v1/mcp".into(),
        status: 200,
        outcome: "success",
        cost_nanos: 2100,
        mcp_server: Some("tools".into()),
        mcp_calls: vec![call(0), call(1)],
        ..Default::default()
    };
    // Postgres unreachable: the batch goes to the spill file.
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&format!("postgres://postgres@127.0.0.1:{}/x", free_port()))
        .unwrap();
    let down = PgUsageStore::new(dead, spill.clone());
    down.write(std::slice::from_ref(&rec)).await.unwrap();
    assert!(std::fs::read_to_string(&spill)
        .unwrap()
        .contains("mcp_calls"));
    // Back up: the replay stores the record and its calls.
    let up = PgUsageStore::new(db.pool.clone(), spill.clone());
    assert_eq!(up.replay_spill().await.unwrap(), 1);
    let rows: Vec<(i32, Option<uuid::Uuid>, i64)> = sqlx::query_as(
        "SELECT call_index, mcp_server_id, cost_nanos FROM mcp_usage_records
          WHERE request_id = 'mcp-spilled-1' ORDER BY call_index",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows, vec![(0, Some(server), 1050), (1, Some(server), 1050)]);
}

/// A STDIO server configured in Postgres takes its session bound and idle timeout from its
/// row, as the file's servers do.
#[tokio::test]
async fn database_mode_stdio_sessions_bounded_and_reaped_as_the_row_says() {
    use common::db::{seed_catalog, seed_key, TestDb, TEST_MASTER_KEYS};
    let db = TestDb::migrated().await;
    let m = mock().await;
    let cat = seed_catalog(&db, &m, "stdio-org", "chat", "up-chat").await;
    let server: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO mcp_servers (organisation_id, name, slug, transport, command, max_sessions,
                                  idle_timeout_ms)
         VALUES ($1, 'solo', 'solo', 'STDIO', $2, 1, 1000) RETURNING id",
    )
    .bind(cat.org)
    .bind(env!("CARGO_BIN_EXE_wharf-test-mcp-stdio"))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let (key_id, secret) = seed_key(&db, cat.org, "stdio", &[]).await;
    sqlx::query(
        "INSERT INTO api_key_mcp_access (organisation_id, api_key_id, mcp_server_id)
         VALUES ($1, $2, $3)",
    )
    .bind(cat.org)
    .bind(key_id)
    .bind(server)
    .execute(&db.pool)
    .await
    .unwrap();
    let gw = Gw::start_custom(
        &m,
        db_config,
        &[
            ("WHARF_TEST_DATABASE_URL", db.url()),
            ("WHARF_MASTER_KEYS", TEST_MASTER_KEYS.to_string()),
        ],
    )
    .await;
    let r = post(&gw, &secret, "/v1/mcp/solo", initialize(), None).await;
    assert_eq!(r.status(), 200, "{}", gw.log());
    messages(r).await;
    // One session at most: a second is refused while the first lives.
    let r = post(&gw, &secret, "/v1/mcp/solo", initialize(), None).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "mcp_stdio_error", "{v}");
    // Idle for a second, the first session is reaped and a new one may start.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = post(&gw, &secret, "/v1/mcp/solo", initialize(), None).await;
        if r.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the idle session was not reaped: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
