//! A small STDIO MCP server for the tests: JSON-RPC, one message per line on stdin/stdout.
//!
//! Tools: `echo` (returns `text`), `env` (the value of the environment variable `name`),
//! `pid` (its process id), `rm`, and `crash` (exits at once). After
//! `notifications/initialized` it sends a `notifications/message` (for the GET stream). Like a
//! strict server, it refuses `tools/*` before `initialize`.

use serde_json::{json, Value};
use std::io::{BufRead, Write};

fn text(s: impl Into<String>) -> Value {
    json!({"content": [{"type": "text", "text": s.into()}], "isError": false})
}

fn answer(msg: &Value, initialized: &mut bool, out: &mut Vec<Value>) {
    let method = msg["method"].as_str().unwrap_or("");
    let id = msg.get("id").cloned();
    if method == "initialize" {
        *initialized = true;
    } else if method.starts_with("tools/") && !*initialized {
        out.push(json!({"jsonrpc": "2.0", "id": id,
            "error": {"code": -32002, "message": "not initialized"}}));
        return;
    }
    let result = match method {
        "initialize" => json!({
            "protocolVersion": msg["params"]["protocolVersion"].as_str().unwrap_or("2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "wharf-test-stdio", "version": "1.0.0"}
        }),
        "notifications/initialized" => {
            out.push(json!({"jsonrpc": "2.0", "method": "notifications/message",
                "params": {"level": "info", "data": "ready"}}));
            return;
        }
        "ping" => json!({}),
        "tools/list" => {
            let tool =
                |n: &str| json!({"name": n, "description": n, "inputSchema": {"type": "object"}});
            json!({"tools": [tool("echo"), tool("env"), tool("pid"), tool("rm"), tool("crash")]})
        }
        "tools/call" => {
            let args = &msg["params"]["arguments"];
            match msg["params"]["name"].as_str().unwrap_or("") {
                "echo" => text(args["text"].as_str().unwrap_or("")),
                "env" => {
                    let name = args["name"].as_str().unwrap_or("");
                    text(std::env::var(name).unwrap_or_else(|_| "<unset>".into()))
                }
                "pid" => text(std::process::id().to_string()),
                "crash" => std::process::exit(3),
                other => text(format!("{other} ran")),
            }
        }
        _ if id.is_none() => return,
        _ => {
            out.push(json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": format!("unknown method {method}")}}));
            return;
        }
    };
    if let Some(id) = id {
        out.push(json!({"jsonrpc": "2.0", "id": id, "result": result}));
    }
}

fn main() {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut initialized = false;
    for line in stdin.lock().lines() {
        let Ok(line) = line else { return };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let mut out = Vec::new();
        match &v {
            Value::Array(items) => items
                .iter()
                .for_each(|m| answer(m, &mut initialized, &mut out)),
            m => answer(m, &mut initialized, &mut out),
        }
        for o in out {
            if writeln!(stdout, "{o}")
                .and_then(|_| stdout.flush())
                .is_err()
            {
                return;
            }
        }
    }
}
