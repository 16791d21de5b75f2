//! Built-in filters: `audit_log`, `request_transform`, `pii_mask`.

use super::{Action, Filter, FilterError, Phase, PhaseSet, Request};
use once_cell::sync::Lazy;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// `audit_log`: one JSON line per request (post_response), appended to `path`. Prompts are
/// written only with `include_prompts = true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLogSettings {
    pub path: String,
    #[serde(default)]
    pub include_prompts: bool,
}

#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    include_prompts: bool,
    file: Mutex<Option<std::fs::File>>,
}

impl AuditLog {
    pub fn new(s: AuditLogSettings) -> Result<AuditLog, String> {
        let path = PathBuf::from(&s.path);
        if s.path.is_empty() {
            return Err("settings.path: must not be empty".into());
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(format!(
                    "settings.path: directory {} does not exist",
                    dir.display()
                ));
            }
        }
        Ok(AuditLog {
            path,
            include_prompts: s.include_prompts,
            file: Mutex::new(None),
        })
    }

    /// The line written for one request.
    pub fn line(&self, req: &Request, rec: &Value) -> Value {
        let mut out = Map::new();
        for k in [
            "request_id",
            "timestamp",
            "organisation_id",
            "team_id",
            "user_id",
            "api_key_id",
            "endpoint",
            "model",
            "provider",
            "stream",
            "status",
            "outcome",
            "error_code",
            "denied_by",
            "latency_ms",
            "tokens",
            "cost_nanos",
            "filters",
        ] {
            if let Some(v) = rec.get(k).filter(|v| !v.is_null()) {
                out.insert(k.to_string(), v.clone());
            }
        }
        if !req.metadata.is_empty() {
            out.insert("metadata".into(), Value::Object(req.metadata.clone()));
        }
        if self.include_prompts {
            if let Some(b) = &req.body {
                for k in ["messages", "input", "prompt", "contents", "system"] {
                    if let Some(v) = b.get(k) {
                        out.insert(k.to_string(), v.clone());
                    }
                }
            }
        }
        Value::Object(out)
    }
}

impl Filter for AuditLog {
    fn kind(&self) -> &'static str {
        "audit_log"
    }
    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::PostResponse])
    }
    fn post_response(&self, req: &Request, record: &Value) -> Result<(), FilterError> {
        let mut line = self.line(req, record).to_string();
        line.push('\n');
        let mut g = self
            .file
            .lock()
            .map_err(|_| FilterError::new("io", "audit log lock poisoned"))?;
        if g.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| FilterError::new("io", format!("{}: {e}", self.path.display())))?;
            *g = Some(f);
        }
        if let Some(f) = g.as_mut() {
            if let Err(e) = f.write_all(line.as_bytes()) {
                *g = None;
                return Err(FilterError::new("io", e.to_string()));
            }
        }
        Ok(())
    }
}

fn default_request_phase() -> String {
    "pre_upstream".into()
}

fn request_phase(s: &str) -> Result<Phase, String> {
    match Phase::parse(s) {
        Some(p @ (Phase::PreRoute | Phase::PreUpstream)) => Ok(p),
        _ => Err(format!(
            "settings.phase: `{s}` is not a request phase (pre_route or pre_upstream)"
        )),
    }
}

/// `request_transform`: sets and removes JSON body fields (dotted paths) and headers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSettings {
    #[serde(default = "default_request_phase")]
    pub phase: String,
    /// Body fields to set: `"temperature" = 0.2`, `"metadata.team" = "a"`.
    #[serde(default)]
    pub set: BTreeMap<String, toml::Value>,
    /// Body fields to remove (dotted paths).
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub remove_headers: Vec<String>,
}

#[derive(Debug)]
pub struct RequestTransform {
    phase: Phase,
    set: Vec<(Vec<String>, Value)>,
    remove: Vec<Vec<String>>,
    set_headers: Vec<(String, String)>,
    remove_headers: Vec<String>,
}

fn path_of(p: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = p.split('.').map(str::to_string).collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!("`{p}` is not a field path"));
    }
    Ok(parts)
}

fn header_ok(name: &str) -> bool {
    http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

impl RequestTransform {
    pub fn new(s: TransformSettings) -> Result<RequestTransform, String> {
        let phase = request_phase(&s.phase)?;
        let mut set = Vec::new();
        for (k, v) in s.set {
            let path = path_of(&k).map_err(|e| format!("settings.set: {e}"))?;
            if path[0] == "model" {
                return Err("settings.set: `model` cannot be set here (use a pre_route script to alias models)".into());
            }
            let v = serde_json::to_value(v).map_err(|e| format!("settings.set.{k}: {e}"))?;
            set.push((path, v));
        }
        let mut remove = Vec::new();
        for k in s.remove {
            let path = path_of(&k).map_err(|e| format!("settings.remove: {e}"))?;
            if path[0] == "model" {
                return Err("settings.remove: `model` cannot be removed".into());
            }
            remove.push(path);
        }
        for (k, v) in &s.set_headers {
            if !header_ok(k) || http::HeaderValue::from_str(v).is_err() {
                return Err(format!("settings.set_headers: `{k}` is not a valid header"));
            }
        }
        for k in &s.remove_headers {
            if !header_ok(k) {
                return Err(format!(
                    "settings.remove_headers: `{k}` is not a header name"
                ));
            }
        }
        if set.is_empty()
            && remove.is_empty()
            && s.set_headers.is_empty()
            && s.remove_headers.is_empty()
        {
            return Err(
                "settings: nothing to do (set, remove, set_headers or remove_headers)".into(),
            );
        }
        Ok(RequestTransform {
            phase,
            set,
            remove,
            set_headers: s
                .set_headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            remove_headers: s
                .remove_headers
                .into_iter()
                .map(|k| k.to_ascii_lowercase())
                .collect(),
        })
    }
}

fn set_path(root: &mut Value, path: &[String], v: Value) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = root;
    for p in parents {
        let Some(obj) = cur.as_object_mut() else {
            return false;
        };
        cur = obj
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    match cur.as_object_mut() {
        Some(obj) => {
            if obj.get(last) == Some(&v) {
                return false;
            }
            obj.insert(last.clone(), v);
            true
        }
        None => false,
    }
}

fn remove_path(root: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = root;
    for p in parents {
        match cur.get_mut(p) {
            Some(c) => cur = c,
            None => return false,
        }
    }
    cur.as_object_mut().and_then(|o| o.remove(last)).is_some()
}

impl Filter for RequestTransform {
    fn kind(&self) -> &'static str {
        "request_transform"
    }
    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[self.phase])
    }
    fn on_request(&self, _: Phase, req: &mut Request, _write: bool) -> Result<Action, FilterError> {
        let mut changed = false;
        if let Some(body) = req.body.as_mut() {
            for (p, v) in &self.set {
                changed |= set_path(body, p, v.clone());
            }
            for p in &self.remove {
                changed |= remove_path(body, p);
            }
        }
        for (k, v) in &self.set_headers {
            if req.headers.get(k) != Some(v) {
                req.headers.insert(k.clone(), v.clone());
                changed = true;
            }
        }
        for k in &self.remove_headers {
            changed |= req.headers.remove(k).is_some();
        }
        Ok(if changed {
            Action::Mutated
        } else {
            Action::Continue
        })
    }
}

/// `pii_mask`: masks e-mail addresses and phone numbers in the request's messages (simple
/// regular expressions; SafetySec does the thorough job).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiSettings {
    #[serde(default = "default_request_phase")]
    pub phase: String,
    #[serde(default = "yes")]
    pub emails: bool,
    #[serde(default = "yes")]
    pub phones: bool,
    #[serde(default = "email_mask")]
    pub email_replacement: String,
    #[serde(default = "phone_mask")]
    pub phone_replacement: String,
}

fn yes() -> bool {
    true
}
fn email_mask() -> String {
    "[EMAIL]".into()
}
fn phone_mask() -> String {
    "[PHONE]".into()
}

#[allow(clippy::expect_used)]
static EMAIL: Lazy<regex::Regex> = Lazy::new(|| {
    regex::Regex::new(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
        .expect("valid regex")
});
/// International (`+33 6 12 34 56 78`) and North American (`(555) 123-4567`) shapes: at
/// least 9 digits in groups.
#[allow(clippy::expect_used)]
static PHONE: Lazy<regex::Regex> = Lazy::new(|| {
    regex::Regex::new(
        r"(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{1,4}\)[\s.\-]?)?\d{1,4}(?:[\s.\-]?\d{2,4}){2,5}",
    )
    .expect("valid regex")
});

#[derive(Debug)]
pub struct PiiMask {
    phase: Phase,
    emails: bool,
    phones: bool,
    email_replacement: String,
    phone_replacement: String,
}

impl PiiMask {
    pub fn new(s: PiiSettings) -> Result<PiiMask, String> {
        let phase = request_phase(&s.phase)?;
        if !s.emails && !s.phones {
            return Err("settings: emails and phones are both off".into());
        }
        Ok(PiiMask {
            phase,
            emails: s.emails,
            phones: s.phones,
            email_replacement: s.email_replacement,
            phone_replacement: s.phone_replacement,
        })
    }

    /// Masks one string; `None` when nothing matched.
    pub fn mask(&self, s: &str) -> Option<String> {
        let mut out: Option<String> = None;
        if self.emails && EMAIL.is_match(s) {
            out = Some(
                EMAIL
                    .replace_all(s, regex::NoExpand(&self.email_replacement))
                    .into_owned(),
            );
        }
        if self.phones {
            let cur = out.as_deref().unwrap_or(s);
            let digits_ok = |m: &str| m.bytes().filter(u8::is_ascii_digit).count() >= 9;
            if PHONE.find_iter(cur).any(|m| digits_ok(m.as_str())) {
                let replaced = PHONE
                    .replace_all(cur, |c: &regex::Captures<'_>| {
                        let m = &c[0];
                        if digits_ok(m) {
                            self.phone_replacement.clone()
                        } else {
                            m.to_string()
                        }
                    })
                    .into_owned();
                out = Some(replaced);
            }
        }
        out
    }

    fn walk(&self, v: &mut Value) -> bool {
        match v {
            Value::String(s) => match self.mask(s) {
                Some(m) => {
                    *s = m;
                    true
                }
                None => false,
            },
            Value::Array(a) => a.iter_mut().fold(false, |c, x| self.walk(x) | c),
            Value::Object(o) => o
                .iter_mut()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "role"
                            | "type"
                            | "id"
                            | "tool_call_id"
                            | "url"
                            | "image_url"
                            | "data"
                            | "mime_type"
                    )
                })
                .fold(false, |c, (_, x)| self.walk(x) | c),
            _ => false,
        }
    }
}

impl Filter for PiiMask {
    fn kind(&self) -> &'static str {
        "pii_mask"
    }
    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[self.phase])
    }
    fn on_request(&self, _: Phase, req: &mut Request, _write: bool) -> Result<Action, FilterError> {
        let Some(Value::Object(body)) = req.body.as_mut() else {
            return Ok(Action::Continue);
        };
        let mut changed = false;
        for k in [
            "messages",
            "input",
            "prompt",
            "contents",
            "system",
            "instructions",
        ] {
            if let Some(v) = body.get_mut(k) {
                changed |= self.walk(v);
            }
        }
        Ok(if changed {
            Action::Mutated
        } else {
            Action::Continue
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn pii() -> PiiMask {
        PiiMask::new(toml::from_str("").unwrap()).unwrap()
    }

    #[test]
    fn pii_masks_emails_and_phones_in_messages_only() {
        let f = pii();
        let mut req = Request {
            body: Some(json!({
                "model": "m",
                "user": "bob@example.com",
                "messages": [
                    {"role": "user", "content": "mail me at bob.smith@example.co.uk or call +33 6 12 34 56 78"},
                    {"role": "user", "content": [{"type": "text", "text": "(555) 123-4567 please"}]},
                    {"role": "user", "content": "order 12345 on 2024-01-02"}
                ]
            })),
            ..Default::default()
        };
        assert_eq!(
            f.on_request(Phase::PreUpstream, &mut req, true).unwrap(),
            Action::Mutated
        );
        let b = req.body.unwrap();
        assert_eq!(
            b["messages"][0]["content"],
            "mail me at [EMAIL] or call [PHONE]"
        );
        assert_eq!(b["messages"][1]["content"][0]["text"], "[PHONE] please");
        assert_eq!(b["messages"][2]["content"], "order 12345 on 2024-01-02");
        assert_eq!(b["user"], "bob@example.com");
    }

    #[test]
    fn transform_sets_and_removes() {
        let s: TransformSettings = toml::from_str(
            r#"set = { temperature = 0.5, "metadata.team" = "a" }
               remove = ["user"]
               set_headers = { "X-Team" = "a" }
               remove_headers = ["x-debug"]"#,
        )
        .unwrap();
        let f = RequestTransform::new(s).unwrap();
        let mut req = Request {
            body: Some(json!({"model": "m", "user": "u", "messages": []})),
            headers: [("x-debug".to_string(), "1".to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            f.on_request(Phase::PreUpstream, &mut req, true).unwrap(),
            Action::Mutated
        );
        let b = req.body.as_ref().unwrap();
        assert_eq!(b["temperature"], 0.5);
        assert_eq!(b["metadata"]["team"], "a");
        assert!(b.get("user").is_none());
        assert_eq!(req.headers.get("x-team").map(String::as_str), Some("a"));
        assert!(!req.headers.contains_key("x-debug"));
        // A second run changes nothing.
        assert_eq!(
            f.on_request(Phase::PreUpstream, &mut req, true).unwrap(),
            Action::Continue
        );
    }

    #[test]
    fn bad_settings_are_rejected() {
        let s: TransformSettings = toml::from_str(r#"set = { model = "x" }"#).unwrap();
        assert!(RequestTransform::new(s).is_err());
        let s: TransformSettings = toml::from_str(
            r#"phase = "post_upstream"
set = { a = 1 }"#,
        )
        .unwrap();
        assert!(RequestTransform::new(s).is_err());
        assert!(toml::from_str::<PiiSettings>("bogus = 1").is_err());
    }
}
