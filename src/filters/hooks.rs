//! The proxy's side of the filter host: per-request state and one call per phase, so the
//! proxy only adds a line at each phase. Nothing here runs when no filter is configured (the
//! proxy keeps `None` instead of a [`RequestFilters`]).

use super::{
    run_post_response, run_request, run_response, Block, Entry, FilterReport, FilterSet, Phase,
    Request, Response, ResponsePart, Who,
};
use crate::config::VirtualKey;
use crate::sse::{parse_event, SseParser};
use crate::types::Family;
use crate::types::UsageRecord;
use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest unary answer kept for `post_upstream` filters; a larger one passes unfiltered.
const MAX_UNARY: usize = 16 * 1024 * 1024;

/// Client headers filters never see, and the upstream headers they can never set.
const HIDDEN: &[&str] = &[
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "cookie",
    "proxy-authorization",
];
const PROTECTED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "expect",
    "x-request-id",
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "cookie",
    "proxy-authorization",
];

#[derive(Debug, Default)]
enum RespMode {
    #[default]
    Off,
    Unary(Vec<u8>),
    Sse(SseParser),
    /// A block ended the answer: whatever else the provider sends is dropped.
    Blocked,
}

/// Filter state of one request.
#[derive(Debug)]
pub struct RequestFilters {
    pub req: Request,
    pub report: FilterReport,
    /// The decoded request body, set aside after the request phases (post phases get the
    /// request without it; `post_response` gets it back).
    prompt: Option<Value>,
    orig_headers: BTreeMap<String, String>,
    header_ops: Vec<(String, Option<String>)>,
    post_upstream: Vec<Arc<Entry>>,
    status: u16,
    resp: RespMode,
    /// A block that happened while answering (for the usage record).
    pub response_block: Option<Block>,
}

/// What `pre_route` changed.
#[derive(Debug, Default)]
pub struct PreRoute {
    /// The re-serialised body, when a filter changed it.
    pub body: Option<Bytes>,
    /// The model to resolve instead of the requested one.
    pub model: Option<String>,
}

impl RequestFilters {
    pub fn new(
        request_id: &str,
        route: &'static str,
        key: &VirtualKey,
        headers: &http::HeaderMap,
        model: &str,
        stream: bool,
    ) -> Box<RequestFilters> {
        let mut h = BTreeMap::new();
        for (k, v) in headers {
            let k = k.as_str();
            if HIDDEN.contains(&k) {
                continue;
            }
            if let Ok(v) = v.to_str() {
                h.insert(k.to_string(), v.to_string());
            }
        }
        Box::new(RequestFilters {
            req: Request {
                route,
                request_id: request_id.to_string(),
                organisation_id: key.organisation_id.clone(),
                team_id: key.team_id.clone(),
                user_id: key.user_id.clone(),
                key_id: key.id.clone(),
                model: model.to_string(),
                stream,
                body: None,
                headers: h.clone(),
                metadata: Default::default(),
            },
            report: FilterReport::default(),
            prompt: None,
            orig_headers: h,
            header_ops: Vec::new(),
            post_upstream: Vec::new(),
            status: 0,
            resp: RespMode::Off,
            response_block: None,
        })
    }

    fn who<'a>(&'a self, model: &'a str) -> Who<'a> {
        Who {
            organisation_id: &self.req.organisation_id,
            key_id: &self.req.key_id,
            model,
        }
    }

    /// Runs a request phase on `body` (JSON unless `json` is false). `Ok(Some(bytes))` when
    /// a filter changed the body.
    fn request_phase(
        &mut self,
        set: &FilterSet,
        phase: Phase,
        body: &[u8],
        json: bool,
    ) -> Result<Option<Bytes>, Block> {
        let chain = set.select(phase, &self.who(&self.req.model));
        if chain.is_empty() {
            return Ok(None);
        }
        let orig: Option<Value> = if json {
            serde_json::from_slice(body).ok()
        } else {
            None
        };
        self.req.body = orig.clone();
        let changed = run_request(&chain, phase, &mut self.req, &mut self.report)?;
        self.header_ops = diff_headers(&self.orig_headers, &self.req.headers);
        let body = self.req.body.take();
        let out = match (changed, &body) {
            (true, Some(b)) if orig.as_ref() != Some(b) => {
                serde_json::to_vec(b).ok().map(Bytes::from)
            }
            _ => None,
        };
        self.prompt = body.or(orig);
        Ok(out)
    }

    /// `pre_route`, on the client's body, before the model is resolved.
    pub fn pre_route(
        &mut self,
        set: &FilterSet,
        raw: &[u8],
        json: bool,
    ) -> Result<PreRoute, Block> {
        let requested = self.req.model.clone();
        let mut body = self.request_phase(set, Phase::PreRoute, raw, json)?;
        let mut model = None;
        if self.req.model != requested {
            model = Some(self.req.model.clone());
            // Keep the body's `model` in step with the new target.
            let mut v = match &body {
                Some(b) => serde_json::from_slice::<Value>(b).ok(),
                None if json => serde_json::from_slice::<Value>(raw).ok(),
                None => None,
            };
            if let Some(Value::Object(o)) = v.as_mut() {
                if o.contains_key("model") {
                    o.insert("model".into(), Value::String(self.req.model.clone()));
                    body = serde_json::to_vec(&o).ok().map(Bytes::from);
                }
            }
        }
        Ok(PreRoute { body, model })
    }

    /// After model resolution: the resolved model name, and the `post_upstream` chain.
    pub fn resolved(&mut self, set: &FilterSet, model: &str) {
        self.req.model = model.to_string();
        self.post_upstream = set.select(Phase::PostUpstream, &self.who(model));
    }

    /// `pre_upstream`, on the body the provider will get; rewrites `body` when a filter
    /// changed it.
    pub fn pre_upstream(
        &mut self,
        set: &FilterSet,
        body: &mut Option<Bytes>,
        json: bool,
    ) -> Result<(), Block> {
        let Some(b) = body.as_ref() else {
            return Ok(());
        };
        if !set.has(Phase::PreUpstream) {
            return Ok(());
        }
        if let Some(new) = self.request_phase(set, Phase::PreUpstream, &b.clone(), json)? {
            *body = Some(new);
        }
        Ok(())
    }

    /// Applies the header changes filters made (never to protected headers).
    pub fn apply_headers(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        for (k, v) in &self.header_ops {
            if PROTECTED.contains(&k.as_str()) || k.starts_with("proxy-") {
                continue;
            }
            match v {
                Some(v) => {
                    if let (Ok(n), Ok(v)) = (
                        http::HeaderName::from_bytes(k.as_bytes()),
                        http::HeaderValue::from_str(v),
                    ) {
                        req.insert_header(n, v)?;
                    }
                }
                None => {
                    req.remove_header(k.as_str());
                }
            }
        }
        Ok(())
    }

    /// The provider's response header: decides whether the body is filtered. `true` when the
    /// body may change size (drop `Content-Length`).
    pub fn on_response_header(&mut self, status: u16, content_type: &str) -> bool {
        self.status = status;
        if self.post_upstream.is_empty() || !(200..300).contains(&status) {
            return false;
        }
        if content_type.starts_with("text/event-stream") {
            self.resp = RespMode::Sse(SseParser::new());
            true
        } else if content_type.contains("json") {
            self.resp = RespMode::Unary(Vec::new());
            true
        } else {
            false
        }
    }

    /// One chunk of the provider's answer (`post_upstream`). Returns a block that happened in
    /// this chunk, if any.
    pub fn on_body(
        &mut self,
        body: &mut Option<Bytes>,
        eos: bool,
        family: Family,
    ) -> Option<Block> {
        match &mut self.resp {
            RespMode::Off => None,
            RespMode::Blocked => {
                *body = if eos { None } else { Some(Bytes::new()) };
                None
            }
            RespMode::Unary(buf) => {
                if let Some(b) = body.take() {
                    buf.extend_from_slice(&b);
                }
                if buf.len() > MAX_UNARY {
                    // Too large to filter: let it through as it is.
                    let all = std::mem::take(buf);
                    self.resp = RespMode::Off;
                    *body = Some(Bytes::from(all));
                    return None;
                }
                if !eos {
                    *body = Some(Bytes::new());
                    return None;
                }
                let raw = std::mem::take(buf);
                let Ok(v) = serde_json::from_slice::<Value>(&raw) else {
                    *body = Some(Bytes::from(raw));
                    return None;
                };
                let mut resp = Response {
                    status: self.status,
                    part: ResponsePart::Json(v),
                    before: Vec::new(),
                };
                match run_response(&self.post_upstream, &self.req, &mut resp, &mut self.report) {
                    Ok(true) => {
                        if let ResponsePart::Json(v) = &resp.part {
                            *body = Some(Bytes::from(v.to_string()));
                        }
                        None
                    }
                    Ok(false) => {
                        *body = Some(Bytes::from(raw));
                        None
                    }
                    Err(b) => {
                        // The status line is already on its way: the body says what happened.
                        *body = Some(crate::respond::error_for(&b.to_error(), family).body);
                        self.resp = RespMode::Blocked;
                        self.response_block = Some(b.clone());
                        Some(b)
                    }
                }
            }
            RespMode::Sse(parser) => {
                let mut parser = std::mem::take(parser);
                let mut out = BytesMut::new();
                let mut blocked: Option<Block> = None;
                if let Some(b) = body.as_ref() {
                    let chain = &self.post_upstream;
                    let req = &self.req;
                    let report = &mut self.report;
                    let status = self.status;
                    parser.feed(b, |ev| {
                        if blocked.is_some() {
                            return;
                        }
                        match filter_event(chain, req, status, ev, report) {
                            Ok(None) => out.extend_from_slice(ev),
                            Ok(Some(new)) => out.extend_from_slice(&new),
                            Err(b) => blocked = Some(b),
                        }
                    });
                }
                if let Some(b) = blocked {
                    out.extend_from_slice(&crate::respond::sse_error(&b.to_error(), family));
                    self.resp = RespMode::Blocked;
                    self.response_block = Some(b.clone());
                    *body = Some(out.freeze());
                    return Some(b);
                }
                if eos && !parser.pending().is_empty() {
                    out.extend_from_slice(parser.pending());
                    parser = SseParser::new();
                }
                if body.is_some() || !out.is_empty() {
                    *body = Some(out.freeze());
                }
                self.resp = RespMode::Sse(parser);
                None
            }
        }
    }

    /// The report for the usage record.
    pub fn take_report(&mut self) -> Option<FilterReport> {
        let mut r = std::mem::take(&mut self.report);
        if r.metadata.is_empty() {
            r.metadata = self.req.metadata.clone();
        }
        (!r.is_empty()).then_some(r)
    }
}

/// Runs the chain on one raw SSE event: `Ok(None)` unchanged, `Ok(Some(bytes))` rewritten.
fn filter_event(
    chain: &[Arc<Entry>],
    req: &Request,
    status: u16,
    raw: &[u8],
    report: &mut FilterReport,
) -> Result<Option<Vec<u8>>, Block> {
    let ev = parse_event(raw);
    let Ok(data) = std::str::from_utf8(&ev.data) else {
        return Ok(None);
    };
    if data.is_empty() || data == "[DONE]" {
        return Ok(None);
    }
    let mut resp = Response {
        status,
        part: ResponsePart::Event {
            name: ev.event.map(str::to_string),
            data: data.to_string(),
        },
        before: Vec::new(),
    };
    if !run_response(chain, req, &mut resp, report)? {
        return Ok(None);
    }
    let ResponsePart::Event { name, data } = resp.part else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(data.len() + 32);
    for (n, d) in &resp.before {
        write_event(&mut out, Some(n), d);
    }
    write_event(&mut out, name.as_deref(), &data);
    Ok(Some(out))
}

fn write_event(out: &mut Vec<u8>, name: Option<&str>, data: &str) {
    if let Some(n) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(n.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

fn diff_headers(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>)> {
    let mut ops = Vec::new();
    for (k, v) in after {
        if before.get(k) != Some(v) {
            ops.push((k.clone(), Some(v.clone())));
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            ops.push((k.clone(), None));
        }
    }
    ops
}

/// After the usage record is built: puts the filter report on it and spawns the
/// `post_response` chain (off the request path).
pub fn finish(set: &Arc<FilterSet>, fx: Option<&mut RequestFilters>, rec: &mut UsageRecord) {
    if set.is_empty() {
        return;
    }
    let mut req = None;
    if let Some(fx) = fx {
        rec.filters = fx.take_report();
        let mut r = fx.req.clone();
        r.body = fx.prompt.take();
        req = Some(r);
    }
    if !set.has(Phase::PostResponse) {
        return;
    }
    let who = Who {
        organisation_id: rec.organisation_id.as_deref().unwrap_or(""),
        key_id: rec.api_key_id.as_deref().unwrap_or(""),
        model: rec.model.as_deref().unwrap_or(""),
    };
    let chain = set.select(Phase::PostResponse, &who);
    if chain.is_empty() {
        return;
    }
    let req = req.unwrap_or_else(|| Request {
        route: "",
        request_id: rec.request_id.clone(),
        organisation_id: who.organisation_id.to_string(),
        team_id: rec.team_id.clone(),
        user_id: rec.user_id.clone(),
        key_id: who.key_id.to_string(),
        model: who.model.to_string(),
        stream: rec.stream,
        ..Default::default()
    });
    let Ok(record) = serde_json::to_value(&*rec) else {
        return;
    };
    let run = move || run_post_response(&chain, &req, &record);
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(async move { run() });
        }
        Err(_) => run(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::KeyType;
    use crate::filters::lua::{Limits, LuaFilter, Script};
    use crate::filters::{OnError, Scope};

    fn set(src: &str) -> FilterSet {
        let s = Script::from_source("up", src, Limits::default(), Value::Null).unwrap();
        let phases = s.phases();
        FilterSet::new(
            vec![Arc::new(Entry {
                name: "up".into(),
                filter: Arc::new(LuaFilter::new(s, phases)),
                scope: Scope::default(),
                on_error: OnError::Open,
                read_only: false,
                phases,
                order: 0,
            })],
            Vec::new(),
        )
    }

    fn fx(set: &FilterSet) -> Box<RequestFilters> {
        let key = VirtualKey {
            id: "k".into(),
            name: None,
            prefix: None,
            kind: KeyType::Organisation,
            organisation_id: "o".into(),
            team_id: None,
            user_id: None,
            expires_at: None,
            revoked: false,
            all_models: true,
            models: Default::default(),
            routing: None,
            policies: Default::default(),
            mcp_servers: Default::default(),
        };
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer secret".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        let mut f = RequestFilters::new("r", "/v1/chat/completions", &key, &h, "m", true);
        assert!(!f.req.headers.contains_key("authorization"));
        f.resolved(set, "m");
        f
    }

    const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hello\"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\n\n\
        data: [DONE]\n\n";

    /// The stream is filtered event by event whatever the chunking.
    #[test]
    fn sse_events_are_filtered_across_every_split() {
        let set = set(
            "function post_upstream(req, resp) if resp.json then local d = resp.json.choices[1].delta d.content = string.upper(d.content) end end",
        );
        let want = "data: {\"choices\":[{\"delta\":{\"content\":\"HELLO\"}}]}\n\n\
            data: {\"choices\":[{\"delta\":{\"content\":\" WORLD\"}}]}\n\n\
            data: [DONE]\n\n";
        for split in 0..=STREAM.len() {
            let mut f = fx(&set);
            assert!(f.on_response_header(200, "text/event-stream"));
            let mut out = Vec::new();
            for (chunk, eos) in [(&STREAM[..split], false), (&STREAM[split..], true)] {
                let mut b = Some(Bytes::copy_from_slice(chunk.as_bytes()));
                assert!(f.on_body(&mut b, eos, Family::OpenAi).is_none());
                out.extend_from_slice(&b.unwrap_or_default());
            }
            assert_eq!(String::from_utf8(out).unwrap(), want, "split at {split}");
        }
    }

    #[test]
    fn a_block_ends_the_stream_with_an_error_event() {
        let set = set(
            "function post_upstream(req, resp) if resp.data:find('world') then wharf.block(403, 'leak', 'no') end end",
        );
        let mut f = fx(&set);
        f.on_response_header(200, "text/event-stream");
        let mut b = Some(Bytes::from_static(STREAM.as_bytes()));
        let blocked = f.on_body(&mut b, false, Family::OpenAi).unwrap();
        assert_eq!(blocked.code, "leak");
        let out = String::from_utf8(b.unwrap().to_vec()).unwrap();
        assert!(out.starts_with("data: {\"choices\":[{\"delta\":{\"content\":\"hello\"}}]}\n\n"));
        assert!(out.contains("\"code\":\"leak\""), "{out}");
        assert!(!out.contains("world"));
        // Anything after the block is dropped.
        let mut b = Some(Bytes::from_static(b"data: more\n\n"));
        f.on_body(&mut b, false, Family::OpenAi);
        assert_eq!(b.unwrap().len(), 0);
        let report = f.take_report().unwrap();
        assert_eq!(report.decisions[0].action, "block");
    }

    #[test]
    fn headers_diff_skips_protected_names() {
        let set = set(
            "function pre_upstream(req) req.headers['x-new'] = 'v'; req.headers['x-keep'] = nil; req.headers['host'] = 'evil' end",
        );
        let mut f = fx(&set);
        let mut body = Some(Bytes::from_static(b"{\"model\":\"m\",\"messages\":[]}"));
        f.pre_upstream(&set, &mut body, true).unwrap();
        let mut h = RequestHeader::build("POST", b"/", None).unwrap();
        h.insert_header("host", "provider").unwrap();
        h.insert_header("x-keep", "1").unwrap();
        f.apply_headers(&mut h).unwrap();
        assert_eq!(h.headers["x-new"], "v");
        assert!(h.headers.get("x-keep").is_none());
        assert_eq!(h.headers["host"], "provider");
        // The body did not change: not re-serialised.
        assert_eq!(&body.unwrap()[..], b"{\"model\":\"m\",\"messages\":[]}");
    }
}
