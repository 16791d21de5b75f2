//! Guardrails on JSON-RPC (SPEC §8): `tools/call` against `allowed_tools` / `blocked_tools`
//! and the keyword filter, on single messages and batches; blocked tools removed from
//! `tools/list` answers. Pure functions of the bytes, so they are unit-tested here.

use super::config::McpServer;
use crate::error::{ErrorCode, GatewayError};
use bytes::Bytes;
use serde_json::{json, Value};

/// JSON-RPC error code of a guardrail block (implementation-defined server error range).
pub const GUARDRAIL_RPC_CODE: i64 = -32001;

/// One JSON-RPC request of the client's POST.
#[derive(Debug, Clone)]
pub struct Call {
    /// The request id, serialized (`1`, `"a"`), to match its response.
    pub id: String,
    pub method: String,
    /// The tool of a `tools/call`.
    pub tool: Option<String>,
    /// Size of the message as sent.
    pub bytes_in: u64,
    /// Why a guardrail refused it.
    pub blocked: Option<String>,
}

/// What the client posted, checked.
#[derive(Debug)]
pub struct Checked {
    /// The body to send upstream: the original bytes when nothing was removed, `None` when
    /// every message was refused.
    pub forward: Option<Bytes>,
    pub batch: bool,
    /// JSON-RPC requests (messages with `id` and `method`), in order.
    pub calls: Vec<Call>,
    /// JSON-RPC error answers for the refused requests.
    pub refusals: Vec<Value>,
}

/// The id of a message, serialized, when it has one.
pub fn id_key(msg: &Value) -> Option<String> {
    match msg.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.to_string()),
    }
}

/// Why `tools/call` of `tool` (with the raw message `text`) is refused, if it is.
pub fn refuse(server: &McpServer, tool: &str, text: &str) -> Option<String> {
    if !server.tool_allowed(tool) {
        return Some(format!("tool `{tool}` is not allowed on this MCP server"));
    }
    if !server.keywords.is_empty() {
        let lower = text.to_lowercase();
        if server.keywords.iter().any(|k| lower.contains(k.as_str())) {
            return Some(format!(
                "the call of tool `{tool}` contains a blocked keyword"
            ));
        }
    }
    None
}

/// The JSON-RPC error answer to a refused request.
pub fn refusal(id: &Value, tool: &str, reason: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": GUARDRAIL_RPC_CODE,
            "message": reason,
            "data": {
                "code": ErrorCode::McpGuardrailBlock.as_str(),
                "type": ErrorCode::McpGuardrailBlock.kind(),
                "tool": tool,
            }
        }
    })
}

fn check_one(server: &McpServer, msg: &Value, raw_len: usize) -> (Option<Call>, Option<Value>) {
    let (Some(method), Some(id)) = (msg.get("method").and_then(Value::as_str), id_key(msg)) else {
        return (None, None);
    };
    let tool = (method == "tools/call")
        .then(|| {
            msg.pointer("/params/name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .flatten();
    let mut call = Call {
        id,
        method: method.to_string(),
        tool: tool.clone(),
        bytes_in: raw_len as u64,
        blocked: None,
    };
    if method == "tools/call" {
        let name = tool.unwrap_or_default();
        let text = msg.get("params").map(Value::to_string).unwrap_or_default();
        if let Some(reason) = refuse(server, &name, &text) {
            let answer = refusal(msg.get("id").unwrap_or(&Value::Null), &name, &reason);
            call.blocked = Some(reason);
            return (Some(call), Some(answer));
        }
    }
    (Some(call), None)
}

/// Parses and checks a POST body (one message or a batch).
pub fn check(server: &McpServer, body: Bytes) -> Result<Checked, GatewayError> {
    let v: Value = serde_json::from_slice(&body).map_err(|e| {
        GatewayError::new(
            ErrorCode::InvalidRequest,
            format!("the MCP request body is not JSON: {e}"),
        )
    })?;
    match v {
        Value::Array(items) => {
            let mut calls = Vec::new();
            let mut refusals = Vec::new();
            let mut keep = Vec::with_capacity(items.len());
            for m in items {
                let len = m.to_string().len();
                let (call, refused) = check_one(server, &m, len);
                if let Some(c) = call {
                    calls.push(c);
                }
                match refused {
                    Some(r) => refusals.push(r),
                    None => keep.push(m),
                }
            }
            let forward = if refusals.is_empty() {
                Some(body)
            } else if keep.is_empty() {
                None
            } else {
                Some(Bytes::from(Value::Array(keep).to_string()))
            };
            Ok(Checked {
                forward,
                batch: true,
                calls,
                refusals,
            })
        }
        Value::Object(_) => {
            let (call, refused) = check_one(server, &v, body.len());
            let forward = refused.is_none().then_some(body);
            Ok(Checked {
                forward,
                batch: false,
                calls: call.into_iter().collect(),
                refusals: refused.into_iter().collect(),
            })
        }
        _ => Err(GatewayError::new(
            ErrorCode::InvalidRequest,
            "the MCP request body must be a JSON-RPC message or a batch of them",
        )),
    }
}

/// Removes tools the server's guardrails refuse from a `tools/list` result (in one message
/// or a batch). Returns whether anything changed.
pub fn filter_tools(server: &McpServer, msg: &mut Value) -> bool {
    if !server.filters_tools() {
        return false;
    }
    match msg {
        Value::Array(items) => {
            let mut changed = false;
            for m in items {
                changed |= filter_tools(server, m);
            }
            changed
        }
        Value::Object(_) => {
            let Some(Value::Array(tools)) = msg.pointer_mut("/result/tools") else {
                return false;
            };
            let before = tools.len();
            tools.retain(|t| {
                t.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| server.tool_allowed(n))
            });
            tools.len() != before
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::config::{build_server, McpPricing, ServerSpec, UpstreamAuth};

    fn server(allowed: &[&str], blocked: &[&str], keywords: &[&str]) -> McpServer {
        build_server(ServerSpec {
            id: "s".into(),
            organisation_id: None,
            name: "s".into(),
            slug: "s".into(),
            transport: "STREAMABLE_HTTP".into(),
            url: Some("http://h/mcp".into()),
            command: None,
            args: vec![],
            env: vec![],
            auth: UpstreamAuth::None,
            timeout_ms: 1000,
            allowed_tools: allowed.iter().map(|s| s.to_string()).collect(),
            blocked_tools: blocked.iter().map(|s| s.to_string()).collect(),
            keywords: keywords.iter().map(|s| s.to_string()).collect(),
            pricing: McpPricing::default(),
            policy: None,
            enabled: true,
            max_sessions: 1,
            idle_timeout_ms: 1000,
        })
        .expect("server")
    }

    fn call(id: u64, tool: &str, args: Value) -> Value {
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
    }

    #[test]
    fn single_allowed_call_forwards_the_original_bytes() {
        let s = server(&[], &["rm"], &[]);
        let body = Bytes::from(call(1, "echo", json!({"x":1})).to_string());
        let c = check(&s, body.clone()).expect("checked");
        assert_eq!(c.forward, Some(body));
        assert_eq!(c.calls.len(), 1);
        assert_eq!(c.calls[0].tool.as_deref(), Some("echo"));
        assert!(c.refusals.is_empty());
    }

    #[test]
    fn blocked_tool_and_keyword_are_refused() {
        let s = server(&[], &["rm"], &["Secret"]);
        let c = check(&s, Bytes::from(call(7, "rm", json!({})).to_string())).expect("checked");
        assert!(c.forward.is_none());
        assert_eq!(c.refusals[0]["id"], 7);
        assert_eq!(
            c.refusals[0]["error"]["data"]["code"],
            "mcp_guardrail_block"
        );
        let c = check(
            &s,
            Bytes::from(call(8, "echo", json!({"t":"my SECRET plan"})).to_string()),
        )
        .expect("checked");
        assert!(c.forward.is_none());
        assert!(c.calls[0].blocked.is_some());
    }

    #[test]
    fn whitelist_refuses_everything_else() {
        let s = server(&["echo"], &[], &[]);
        let c = check(&s, Bytes::from(call(1, "add", json!({})).to_string())).expect("checked");
        assert!(c.forward.is_none());
    }

    #[test]
    fn batch_keeps_the_allowed_part() {
        let s = server(&[], &["rm"], &[]);
        let batch = json!([call(1, "echo", json!({})), call(2, "rm", json!({})),
            {"jsonrpc":"2.0","method":"notifications/initialized"}]);
        let c = check(&s, Bytes::from(batch.to_string())).expect("checked");
        let fwd: Value = serde_json::from_slice(&c.forward.expect("forward")).expect("json");
        assert_eq!(fwd.as_array().map(Vec::len), Some(2));
        assert_eq!(fwd[0]["id"], 1);
        assert_eq!(c.calls.len(), 2, "notifications are not calls");
        assert_eq!(c.refusals.len(), 1);
        assert_eq!(c.refusals[0]["id"], 2);
    }

    #[test]
    fn not_json_is_an_invalid_request() {
        let s = server(&[], &[], &[]);
        let e = check(&s, Bytes::from_static(b"nope")).expect_err("invalid");
        assert_eq!(e.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn tools_list_answers_lose_blocked_tools() {
        let s = server(&[], &["rm"], &[]);
        let mut v =
            json!({"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo"},{"name":"rm"}]}});
        assert!(filter_tools(&s, &mut v));
        assert_eq!(v["result"]["tools"], json!([{"name":"echo"}]));
        let mut other = json!({"jsonrpc":"2.0","id":3,"result":{"content":[]}});
        assert!(!filter_tools(&s, &mut other));
    }
}
