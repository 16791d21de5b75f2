//! The filter host (SPEC §9): one [`Filter`] interface, four phases, chains configured by name
//! with order and scope.
//!
//! ```text
//! pre_route      after the body is decoded, before the model is resolved (may re-target it)
//! pre_upstream   after limits and reservations, on the body the provider will get
//! post_upstream  on the provider's answer: the whole unary JSON, or each SSE event
//! post_response  after the answer and the usage record are final; spawned, off the request path
//! ```
//!
//! A filter continues, mutates the request (JSON body, headers, metadata) or the response, or
//! blocks with its own status, code and message (default `403 plugin_blocked`). A filter error is
//! contained and counted; `on_error = "open"` continues, `"closed"` blocks.
//!
//! Kinds: `lua` (programmable, [`lua`]), and the built-ins `audit_log`, `request_transform`,
//! `pii_mask` ([`builtin`]). Every setting is checked when the configuration loads: an unknown
//! kind, setting or phase, or a script that does not compile, fails `wharf check` and a reload,
//! never a request.
//!
//! Execution styles: filters run in order (`order`, then file order). Filters marked
//! `read_only = true` cannot change the request: in the request phases, consecutive read-only
//! filters see the same snapshot and run in parallel ([`parallel`]); their results are applied in
//! chain order, so the first block by order wins. `post_response` runs asynchronously on a
//! spawned task.
//!
//! Cost: with no `[[filters]]` the proxy checks one boolean per phase and allocates nothing.

pub mod builtin;
pub mod config;
pub mod hooks;
pub mod lua;
pub mod parallel;
pub mod safety;

use crate::metrics;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use config::{build, RawFilter};
pub use hooks::RequestFilters;

/// The four phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    PreRoute,
    PreUpstream,
    PostUpstream,
    PostResponse,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::PreRoute,
        Phase::PreUpstream,
        Phase::PostUpstream,
        Phase::PostResponse,
    ];

    /// The name used in configuration, scripts and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::PreRoute => "pre_route",
            Phase::PreUpstream => "pre_upstream",
            Phase::PostUpstream => "post_upstream",
            Phase::PostResponse => "post_response",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PhaseSet(u8);

impl PhaseSet {
    pub fn of(phases: &[Phase]) -> PhaseSet {
        PhaseSet(phases.iter().fold(0, |a, p| a | p.bit()))
    }
    pub fn contains(self, p: Phase) -> bool {
        self.0 & p.bit() != 0
    }
    pub fn insert(&mut self, p: Phase) {
        self.0 |= p.bit();
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn intersect(self, o: PhaseSet) -> PhaseSet {
        PhaseSet(self.0 & o.0)
    }
    pub fn names(self) -> Vec<&'static str> {
        Phase::ALL
            .into_iter()
            .filter(|p| self.contains(*p))
            .map(Phase::as_str)
            .collect()
    }
}

/// A filter's answer to block the request (or the rest of the response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Block {
    /// A block with defaults filled in: status 403 unless a 4xx/5xx is given, code
    /// `plugin_blocked` unless a non-empty code of safe characters is given.
    pub fn new(status: Option<u16>, code: Option<&str>, message: Option<&str>) -> Block {
        let status = status.filter(|s| (400..=599).contains(s)).unwrap_or(403);
        let code = code
            .filter(|c| {
                !c.is_empty()
                    && c.len() <= 64
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
            })
            .unwrap_or("plugin_blocked")
            .to_string();
        let message: String = message
            .unwrap_or("the request was blocked by a filter")
            .chars()
            .take(512)
            .collect();
        Block {
            status,
            code,
            message,
        }
    }

    /// The gateway error for this block (the body's `code` is the filter's own).
    pub fn to_error(&self) -> crate::error::GatewayError {
        let mut e = crate::error::GatewayError::new(
            crate::error::ErrorCode::PluginBlocked,
            self.message.clone(),
        );
        if self.code != "plugin_blocked" {
            e.extra.push(("code", Value::String(self.code.clone())));
        }
        e
    }
}

/// What a filter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Continue,
    Mutated,
    Block(Block),
}

/// A contained filter failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct FilterError {
    /// `runtime`, `memory`, `instructions`, `timeout`, `load`, `io`.
    pub kind: &'static str,
    pub message: String,
}

impl FilterError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        FilterError {
            kind,
            message: message.into(),
        }
    }
}

/// The request as filters see it. Credentials are never in `headers`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Request {
    pub route: &'static str,
    pub request_id: String,
    pub organisation_id: String,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub key_id: String,
    /// The requested model (pre_route: may be changed to re-target); later phases: the
    /// resolved model name (read only).
    pub model: String,
    pub stream: bool,
    /// The JSON body (`None` for multipart bodies).
    pub body: Option<Value>,
    /// Request headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// Free-form tags set by filters; kept on the usage record.
    pub metadata: Map<String, Value>,
}

/// The provider's answer as `post_upstream` filters see it.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponsePart {
    /// A whole unary JSON answer.
    Json(Value),
    /// One SSE event: its `event:` name and `data:` payload.
    Event { name: Option<String>, data: String },
}

/// The provider's answer and its status.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub part: ResponsePart,
    /// On streams: events (`event:` name, `data:` payload) a filter sends ahead of this one,
    /// e.g. text it held back that must still reach the client before a block ends.
    pub before: Vec<(String, String)>,
}

/// The filter interface. Every method has a "continue" default, so a filter implements only
/// the phases it declares in [`Filter::phases`].
pub trait Filter: Send + Sync + std::fmt::Debug {
    /// `lua`, `audit_log`, ...
    fn kind(&self) -> &'static str;
    /// The phases this filter runs at.
    fn phases(&self) -> PhaseSet;
    /// `pre_route` / `pre_upstream`. With `write = false` (read-only filters) changes are
    /// not kept.
    fn on_request(
        &self,
        _phase: Phase,
        _req: &mut Request,
        _write: bool,
    ) -> Result<Action, FilterError> {
        Ok(Action::Continue)
    }
    /// A read-only look at the request (parallel groups of read-only filters run this, on
    /// worker threads). The default runs [`Filter::on_request`] on a copy.
    fn inspect_request(&self, phase: Phase, req: &Request) -> Result<Action, FilterError> {
        let mut copy = req.clone();
        self.on_request(phase, &mut copy, false)
    }
    /// `post_upstream`, once for a unary answer, once per SSE event.
    fn on_response(
        &self,
        _req: &Request,
        _resp: &mut Response,
        _write: bool,
    ) -> Result<Action, FilterError> {
        Ok(Action::Continue)
    }
    /// `post_response`: the final usage record (JSON). Runs off the request path.
    fn post_response(&self, _req: &Request, _record: &Value) -> Result<(), FilterError> {
        Ok(())
    }
}

pub use crate::config::filters::OnError;

/// Where a filter applies; empty lists match everything.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub organisations: Vec<String>,
    pub keys: Vec<String>,
    pub models: Vec<String>,
}

impl Scope {
    pub fn matches(&self, who: &Who<'_>) -> bool {
        fn ok(list: &[String], v: &str) -> bool {
            list.is_empty() || list.iter().any(|x| x == v || x == "*")
        }
        ok(&self.organisations, who.organisation_id)
            && ok(&self.keys, who.key_id)
            && ok(&self.models, who.model)
    }

    pub fn is_global(&self) -> bool {
        self.organisations.is_empty() && self.keys.is_empty() && self.models.is_empty()
    }
}

/// Who a request is for (scope matching).
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub organisation_id: &'a str,
    pub key_id: &'a str,
    pub model: &'a str,
}

/// One configured filter.
#[derive(Debug)]
pub struct Entry {
    pub name: String,
    pub filter: Arc<dyn Filter>,
    pub scope: Scope,
    pub on_error: OnError,
    pub read_only: bool,
    pub phases: PhaseSet,
    pub order: i64,
}

/// The configured filters, in execution order.
#[derive(Debug, Default)]
pub struct FilterSet {
    entries: Vec<Arc<Entry>>,
    phases: PhaseSet,
    scripts: Vec<Arc<lua::Script>>,
}

impl FilterSet {
    pub fn new(mut entries: Vec<Arc<Entry>>, scripts: Vec<Arc<lua::Script>>) -> FilterSet {
        // Stable: equal orders keep file order.
        entries.sort_by_key(|e| e.order);
        let mut phases = PhaseSet::default();
        for e in &entries {
            phases = PhaseSet(phases.0 | e.phases.0);
        }
        FilterSet {
            entries,
            phases,
            scripts,
        }
    }

    /// No filter configured at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Some filter runs at `phase`.
    pub fn has(&self, phase: Phase) -> bool {
        self.phases.contains(phase)
    }

    /// The chain for `phase` and `who`, in order.
    pub fn select(&self, phase: Phase, who: &Who<'_>) -> Vec<Arc<Entry>> {
        if !self.has(phase) {
            return Vec::new();
        }
        self.entries
            .iter()
            .filter(|e| e.phases.contains(phase) && e.scope.matches(who))
            .cloned()
            .collect()
    }

    pub fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }

    /// Scripts to watch for hot reload.
    pub fn scripts(&self) -> &[Arc<lua::Script>] {
        &self.scripts
    }
}

pub use crate::types::usage::{Decision, FilterReport};

impl FilterReport {
    pub fn is_empty(&self) -> bool {
        self.decisions.is_empty() && self.metadata.is_empty()
    }

    fn record(
        &mut self,
        e: &Entry,
        phase: Phase,
        action: &str,
        code: Option<&str>,
        err: Option<&str>,
    ) {
        metrics::FILTER_DECISIONS
            .with_label_values(&[&e.name, phase.as_str(), action])
            .inc();
        // Streams run post_upstream per event: keep one decision per filter, phase and action.
        if phase == Phase::PostUpstream
            && self
                .decisions
                .iter()
                .any(|d| d.filter == e.name && d.phase == phase.as_str() && d.action == action)
        {
            return;
        }
        if self.decisions.len() >= 64 {
            return;
        }
        self.decisions.push(Decision {
            filter: e.name.clone(),
            phase: phase.as_str().to_string(),
            action: action.to_string(),
            code: code.map(str::to_string),
            error: err.map(|s| s.chars().take(300).collect()),
        });
    }
}

/// Handles a filter's error: counted, logged, and either ignored (open) or turned into a
/// block (closed).
fn on_filter_error(
    e: &Entry,
    phase: Phase,
    err: &FilterError,
    report: &mut FilterReport,
) -> Option<Block> {
    metrics::FILTER_ERRORS
        .with_label_values(&[&e.name, err.kind])
        .inc();
    tracing::warn!(filter = %e.name, phase = phase.as_str(), error = %err, "filter failed");
    report.record(e, phase, "error", None, Some(&err.to_string()));
    match e.on_error {
        OnError::Open => None,
        OnError::Closed => Some(Block::new(
            Some(403),
            None,
            Some(&format!(
                "filter `{}` failed and is configured to fail closed",
                e.name
            )),
        )),
    }
}

/// Runs a request chain. `Ok(changed)` or the first block.
pub fn run_request(
    chain: &[Arc<Entry>],
    phase: Phase,
    req: &mut Request,
    report: &mut FilterReport,
) -> Result<bool, Block> {
    let mut changed = false;
    let mut i = 0;
    while i < chain.len() {
        let e = &chain[i];
        // A run of two or more read-only filters: in parallel, applied in order.
        let run = chain[i..].iter().take_while(|e| e.read_only).count();
        if run >= 2 {
            let group = &chain[i..i + run];
            for (e, r) in group.iter().zip(parallel::run_group(group, phase, req)) {
                apply(e, phase, r, report)?;
            }
            i += run;
            continue;
        }
        let r = e.filter.on_request(phase, req, !e.read_only);
        changed |= apply(e, phase, r, report)?;
        i += 1;
    }
    Ok(changed)
}

/// One filter's result in a chain: `Ok(mutated)`, or the block it (or its failure) causes.
fn apply(
    e: &Entry,
    phase: Phase,
    r: Result<Action, FilterError>,
    report: &mut FilterReport,
) -> Result<bool, Block> {
    match r {
        Ok(Action::Continue) => Ok(false),
        Ok(Action::Mutated) => {
            if e.read_only {
                return Ok(false);
            }
            report.record(e, phase, "mutate", None, None);
            Ok(true)
        }
        Ok(Action::Block(b)) => {
            report.record(e, phase, "block", Some(&b.code), None);
            Err(b)
        }
        Err(err) => match on_filter_error(e, phase, &err, report) {
            Some(b) => {
                report.record(e, phase, "block", Some(&b.code), None);
                Err(b)
            }
            None => Ok(false),
        },
    }
}

/// Runs a `post_upstream` chain on one response part. `Ok(changed)` or the first block.
pub fn run_response(
    chain: &[Arc<Entry>],
    req: &Request,
    resp: &mut Response,
    report: &mut FilterReport,
) -> Result<bool, Block> {
    let mut changed = false;
    for e in chain {
        let r = e.filter.on_response(req, resp, !e.read_only);
        changed |= apply(e, Phase::PostUpstream, r, report)?;
    }
    Ok(changed)
}

/// Runs a `post_response` chain (called on a spawned task).
pub fn run_post_response(chain: &[Arc<Entry>], req: &Request, record: &Value) {
    for e in chain {
        match e.filter.post_response(req, record) {
            Ok(()) => {
                metrics::FILTER_DECISIONS
                    .with_label_values(&[&e.name, "post_response", "continue"])
                    .inc();
            }
            Err(err) => {
                metrics::FILTER_ERRORS
                    .with_label_values(&[&e.name, err.kind])
                    .inc();
                tracing::warn!(filter = %e.name, phase = "post_response", error = %err, "filter failed");
            }
        }
    }
}

/// Checks the watched scripts and reloads the ones whose file changed (called by the
/// configuration watcher on every tick).
pub fn refresh_scripts(set: &FilterSet) {
    for s in set.scripts() {
        s.refresh();
    }
}
