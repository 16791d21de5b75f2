//! The text of chat requests and responses in the OpenAI, Anthropic and Gemini shapes, visited
//! in place (so redaction edits the `serde_json::Value` directly).

use serde_json::Value;

/// Who wrote a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// Tool results and anything else.
    Other,
}

impl Role {
    fn parse(s: Option<&str>) -> Role {
        match s {
            Some("system" | "developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant" | "model") => Role::Assistant,
            _ => Role::Other,
        }
    }
}

/// Text parts: `{"type":"text"|"input_text"|"output_text", "text": …}` or Gemini `{"text": …}`.
fn visit_parts(parts: &mut [Value], role: Role, f: &mut dyn FnMut(Role, &mut String)) {
    for p in parts {
        let Some(obj) = p.as_object_mut() else {
            if let Value::String(s) = p {
                f(role, s);
            }
            continue;
        };
        let typ = obj.get("type").and_then(Value::as_str).map(str::to_owned);
        match typ.as_deref() {
            None | Some("text" | "input_text" | "output_text") => {
                if let Some(Value::String(s)) = obj.get_mut("text") {
                    f(role, s);
                }
            }
            Some("tool_result") => {
                // Anthropic tool results carry content of their own.
                match obj.get_mut("content") {
                    Some(Value::String(s)) => f(Role::Other, s),
                    Some(Value::Array(a)) => visit_parts(a, Role::Other, f),
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

fn visit_content(content: Option<&mut Value>, role: Role, f: &mut dyn FnMut(Role, &mut String)) {
    match content {
        Some(Value::String(s)) => f(role, s),
        Some(Value::Array(a)) => visit_parts(a, role, f),
        _ => {}
    }
}

/// Visits every text of a request body: OpenAI chat (`messages[].content`), OpenAI responses
/// (`instructions`, `input`), legacy completions (`prompt`), Anthropic (`system`,
/// `messages[].content`) and Gemini (`systemInstruction`, `contents[].parts[].text`).
pub fn for_each_request_text(body: &mut Value, f: &mut dyn FnMut(Role, &mut String)) {
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(msgs)) = obj.get_mut("messages") {
        for m in msgs {
            let role = Role::parse(m.get("role").and_then(Value::as_str));
            visit_content(m.get_mut("content"), role, f);
        }
    }
    visit_content(obj.get_mut("system"), Role::System, f);
    if let Some(Value::String(s)) = obj.get_mut("instructions") {
        f(Role::System, s);
    }
    match obj.get_mut("input") {
        Some(Value::String(s)) => f(Role::User, s),
        Some(Value::Array(items)) => {
            for it in items {
                let role = Role::parse(it.get("role").and_then(Value::as_str));
                match it {
                    Value::String(s) => f(Role::User, s),
                    Value::Object(_) => {
                        if it.get("content").is_some() {
                            visit_content(it.get_mut("content"), role, f);
                        } else {
                            visit_parts(std::slice::from_mut(it), role, f);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    if let Some(Value::String(s)) = obj.get_mut("prompt") {
        f(Role::User, s);
    }
    for key in ["systemInstruction", "system_instruction"] {
        if let Some(si) = obj.get_mut(key) {
            visit_content(si.get_mut("parts"), Role::System, f);
        }
    }
    if let Some(Value::Array(contents)) = obj.get_mut("contents") {
        for c in contents {
            let role = match c.get("role").and_then(Value::as_str) {
                None => Role::User,
                r => Role::parse(r),
            };
            visit_content(c.get_mut("parts"), role, f);
        }
    }
}

/// Visits every text of a (non-streamed) response body: OpenAI chat (`choices[].message`),
/// OpenAI responses (`output[].content[]`), Anthropic (`content[]`), Gemini
/// (`candidates[].content.parts[]`).
pub fn for_each_response_text(body: &mut Value, f: &mut dyn FnMut(Role, &mut String)) {
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(choices)) = obj.get_mut("choices") {
        for c in choices {
            if let Some(m) = c.get_mut("message") {
                visit_content(m.get_mut("content"), Role::Assistant, f);
            }
            if let Some(Value::String(s)) = c.get_mut("text") {
                f(Role::Assistant, s);
            }
        }
    }
    if let Some(Value::Array(out)) = obj.get_mut("output") {
        for it in out {
            visit_content(it.get_mut("content"), Role::Assistant, f);
        }
    }
    if let Some(Value::Array(parts)) = obj.get_mut("content") {
        visit_parts(parts, Role::Assistant, f);
    }
    if let Some(Value::Array(cands)) = obj.get_mut("candidates") {
        for c in cands {
            if let Some(content) = c.get_mut("content") {
                visit_content(content.get_mut("parts"), Role::Assistant, f);
            }
        }
    }
}
