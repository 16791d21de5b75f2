//! SafetySec (SPEC §9): detectors, redaction (whole texts, JSON request/response bodies and
//! streams), prompt-injection heuristics, data-leakage check, per-sender risk score and the
//! [`Decision`] the filter host records on the usage record.
//!
//! This module is pure: it never touches the network except through a [`risk::RiskStore`] the host
//! hands it. The host maps a [`Decision`] whose action is [`Action::Block`] to `403 safety_blocked`.
//!
//! How a host uses it (one [`SafetySec`] per loaded configuration, shared behind an `Arc`):
//! - request: `let mut d = safety.check_request(&mut body)` (redacts in place unless blocked or in
//!   shadow mode), then `safety.apply_risk(store, &risk::sender_id(ip, key, ua), &mut d)`;
//!   refuse with `403 safety_blocked` when `d.blocked()`;
//! - complete response: `safety.check_response(&mut body, system_prompt)`;
//! - streamed response: one [`StreamRedactor`] per response from [`SafetySec::stream_redactor`];
//!   feed it the text delta of each event and put what it returns in the event instead (an event
//!   may carry an empty delta while a possible secret is held back), call `finish` at the end and
//!   send the rest in the last text event; [`SafetySec::decide_findings`] on
//!   `take_findings()` per event tells whether to stop the stream (a `block` kind), and
//!   [`SafetySec::check_response_text`] on the accumulated text gives the leakage verdict;
//! - record: `Decision` serialises to JSON for the usage record (`action`, `decided`, `shadow`,
//!   `findings` per kind, `injection_score`, `leakage`, `risk_score`, `reason`); merge request
//!   and response decisions with [`Decision::merge`].

pub mod config;
pub mod detect;
pub mod injection;
pub mod messages;
pub mod risk;
pub mod stream;

pub use config::{Action, SafetyConfig};
pub use detect::{Category, Detectors, Finding, Kind, KindSet};
pub use stream::{redact, Redacted, StreamRedactor};

use injection::{Injection, Leakage};
use messages::Role;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What SafetySec decided about one request or response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// What was done (in shadow mode at most `observe`).
    pub action: Action,
    /// What the policy decided (equal to `action` unless in shadow mode).
    pub decided: Action,
    pub shadow: bool,
    /// Findings per detector kind (kinds whose action is `allow` are not counted).
    pub findings: BTreeMap<Kind, u32>,
    /// Prompt-injection score (requests).
    pub injection_score: f32,
    /// Injection phrases found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub injection_phrases: Vec<String>,
    /// The response leaked its instructions or secrets.
    pub leakage: bool,
    /// The sender's risk score after this request, when checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_score: Option<f64>,
    /// Why the decision is what it is (e.g. `secret:openai_key`, `prompt_injection`), for
    /// `decided` of `block`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Default for Decision {
    fn default() -> Self {
        Decision {
            action: Action::Allow,
            decided: Action::Allow,
            shadow: false,
            findings: BTreeMap::new(),
            injection_score: 0.0,
            injection_phrases: Vec::new(),
            leakage: false,
            risk_score: None,
            reason: None,
        }
    }
}

impl Decision {
    /// The host must refuse (request) or stop (response) with `403 safety_blocked`.
    pub fn blocked(&self) -> bool {
        self.action == Action::Block
    }

    /// Total number of findings.
    pub fn finding_count(&self) -> u32 {
        self.findings.values().sum()
    }

    fn escalate(&mut self, a: Action, reason: impl FnOnce() -> String) {
        if a > self.decided {
            self.decided = a;
            if a == Action::Block {
                self.reason = Some(reason());
            }
        }
    }

    fn settle(&mut self, shadow: bool) {
        self.shadow = shadow;
        self.action = if shadow {
            self.decided.min(Action::Observe)
        } else {
            self.decided
        };
    }

    /// Folds another decision in (e.g. request and response of one call).
    pub fn merge(&mut self, other: &Decision) {
        for (k, n) in &other.findings {
            *self.findings.entry(*k).or_default() += n;
        }
        self.injection_score = self.injection_score.max(other.injection_score);
        for p in &other.injection_phrases {
            if !self.injection_phrases.contains(p) {
                self.injection_phrases.push(p.clone());
            }
        }
        self.leakage |= other.leakage;
        if other.risk_score.is_some() {
            self.risk_score = other.risk_score;
        }
        if other.decided > self.decided {
            self.decided = other.decided;
            self.reason = other.reason.clone();
        }
        self.action = self.action.max(other.action);
        self.shadow |= other.shadow;
    }
}

/// The compiled SafetySec policy. Build once per configuration, share behind an `Arc`.
#[derive(Debug)]
pub struct SafetySec {
    cfg: SafetyConfig,
    det: Arc<Detectors>,
    actions: [Action; Kind::ALL.len()],
    redact: KindSet,
    injection: Injection,
    leakage: Leakage,
}

impl SafetySec {
    /// Validates and compiles the settings.
    pub fn new(cfg: &SafetyConfig) -> Result<SafetySec, String> {
        cfg.validate()?;
        let det = Arc::new(Detectors::new(cfg.detector_options())?);
        let mut actions = [Action::Allow; Kind::ALL.len()];
        let mut redact = KindSet::none();
        for (i, k) in Kind::ALL.into_iter().enumerate() {
            actions[i] = cfg.actions.for_kind(k);
            if actions[i] == Action::Redact {
                redact.insert(k);
            }
        }
        Ok(SafetySec {
            cfg: cfg.clone(),
            det,
            actions,
            redact,
            injection: Injection::new(&cfg.injection)?,
            leakage: Leakage::new(&cfg.leakage)?,
        })
    }

    pub fn config(&self) -> &SafetyConfig {
        &self.cfg
    }

    pub fn detectors(&self) -> &Arc<Detectors> {
        &self.det
    }

    /// The action for one kind.
    pub fn action_for(&self, k: Kind) -> Action {
        self.actions[k as usize]
    }

    /// The kinds that are actually replaced (none in shadow mode).
    pub fn redacting(&self) -> KindSet {
        if self.cfg.shadow {
            KindSet::none()
        } else {
            self.redact
        }
    }

    fn record_findings(&self, d: &mut Decision, findings: &[Finding]) {
        for f in findings {
            let a = self.action_for(f.kind);
            if a == Action::Allow {
                continue;
            }
            *d.findings.entry(f.kind).or_default() += 1;
            let kind = f.kind;
            d.escalate(a, || format!("{}:{}", kind.category_str(), kind.as_str()));
        }
    }

    /// Checks one text; returns the redacted text when something was replaced.
    pub fn check_text(&self, text: &str) -> (Option<String>, Decision) {
        let mut d = Decision::default();
        let r = redact(&self.det, text, self.redact);
        self.record_findings(&mut d, &r.findings);
        if self.cfg.injection.enabled {
            let s = self.injection.score([text]);
            self.apply_injection(&mut d, s);
        }
        d.settle(self.cfg.shadow);
        let changed = match r.text {
            std::borrow::Cow::Owned(s) if d.action == Action::Redact => Some(s),
            _ => None,
        };
        (changed, d)
    }

    fn apply_injection(&self, d: &mut Decision, s: injection::InjectionScore) {
        d.injection_score = s.score;
        d.injection_phrases = s.phrases;
        if d.injection_score >= self.injection.threshold {
            d.escalate(self.cfg.actions.injection, || "prompt_injection".into());
        }
    }

    /// Checks a request body (any of the chat shapes) and, unless the decision is to block or the
    /// policy is in shadow mode, redacts it in place. Injection heuristics score the user and
    /// tool texts (not the system prompt).
    pub fn check_request(&self, body: &mut Value) -> Decision {
        let mut d = Decision::default();
        if !self.cfg.enabled || !self.cfg.scan_requests {
            return d;
        }
        // First pass: decide, without touching the body.
        let mut scored: Vec<String> = Vec::new();
        let mut any_redaction = false;
        messages::for_each_request_text(body, &mut |role, s| {
            let findings = self.det.scan(s);
            any_redaction |= findings.iter().any(|f| self.redact.contains(f.kind));
            self.record_findings(&mut d, &findings);
            if role != Role::System && self.cfg.injection.enabled {
                scored.push(s.clone());
            }
        });
        if self.cfg.injection.enabled {
            let s = self.injection.score(scored.iter().map(String::as_str));
            self.apply_injection(&mut d, s);
        }
        d.settle(self.cfg.shadow);
        if any_redaction && !self.cfg.shadow && d.action != Action::Block {
            messages::for_each_request_text(body, &mut |_, s| {
                if let std::borrow::Cow::Owned(r) = redact(&self.det, s, self.redact).text {
                    *s = r;
                }
            });
        }
        d
    }

    /// Checks a complete response body: findings (redacted in place unless blocked or shadow),
    /// and leakage (markers, echo of `system_prompt`, secrets).
    pub fn check_response(&self, body: &mut Value, system_prompt: Option<&str>) -> Decision {
        let mut d = Decision::default();
        if !self.cfg.enabled || !self.cfg.scan_responses {
            return d;
        }
        let mut texts = Vec::new();
        let mut any_redaction = false;
        messages::for_each_response_text(body, &mut |_, s| {
            let findings = self.det.scan(s);
            any_redaction |= findings.iter().any(|f| self.redact.contains(f.kind));
            self.record_findings(&mut d, &findings);
            texts.push(s.clone());
        });
        self.apply_leakage(&mut d, &texts.join("\n"), system_prompt);
        d.settle(self.cfg.shadow);
        if any_redaction && !self.cfg.shadow && d.action != Action::Block {
            messages::for_each_response_text(body, &mut |_, s| {
                if let std::borrow::Cow::Owned(r) = redact(&self.det, s, self.redact).text {
                    *s = r;
                }
            });
        }
        d
    }

    fn apply_leakage(&self, d: &mut Decision, text: &str, system_prompt: Option<&str>) {
        if !self.cfg.leakage.enabled {
            return;
        }
        let report = self.leakage.check(text, system_prompt);
        let secrets = self.cfg.leakage.secrets_in_responses
            && d.findings.keys().any(|k| k.category() == Category::Secret);
        if report.leaked() || secrets {
            d.leakage = true;
            d.escalate(self.cfg.actions.leakage, || "data_leakage".into());
        }
    }

    /// Leakage check of a whole streamed response (after the stream, or on the text so far).
    pub fn check_response_text(&self, text: &str, system_prompt: Option<&str>) -> Decision {
        let mut d = Decision::default();
        if !self.cfg.enabled || !self.cfg.scan_responses {
            return d;
        }
        self.record_findings(&mut d, &self.det.scan(text));
        self.apply_leakage(&mut d, text, system_prompt);
        d.settle(self.cfg.shadow);
        d
    }

    /// A redactor for one streamed response (replaces nothing in shadow mode, but still finds).
    pub fn stream_redactor(&self) -> StreamRedactor {
        StreamRedactor::new(
            self.det.clone(),
            self.redacting(),
            self.cfg.lookbehind_bytes,
        )
    }

    /// Folds stream findings into a decision (e.g. per event, to stop a stream on a `block` kind).
    pub fn decide_findings(&self, findings: &[Finding]) -> Decision {
        let mut d = Decision::default();
        self.record_findings(&mut d, findings);
        d.settle(self.cfg.shadow);
        d
    }

    /// How much a decision adds to its sender's risk score.
    pub fn risk_delta(&self, d: &Decision) -> f64 {
        let r = &self.cfg.risk;
        let mut delta = f64::from(d.finding_count()) * r.weight_finding
            + f64::from(d.injection_score) * r.weight_injection;
        if d.decided == Action::Block {
            delta += r.weight_block;
        }
        delta
    }

    /// Records a sender's risk `score` on the decision and escalates it at the threshold (for
    /// hosts that keep the score themselves, e.g. synchronously in memory).
    pub fn apply_score(&self, score: f64, d: &mut Decision) {
        if !self.cfg.enabled || !self.cfg.risk.enabled {
            return;
        }
        d.risk_score = Some(score);
        if score >= self.cfg.risk.threshold {
            d.escalate(self.cfg.actions.risk, || "sender_risk".into());
        }
        d.settle(self.cfg.shadow);
    }

    /// Adds the decision's weight to the sender's score and escalates when the score reaches the
    /// threshold. Store errors leave the decision as it is (fail open) and are returned.
    pub async fn apply_risk(
        &self,
        store: &dyn risk::RiskStore,
        sender: &str,
        d: &mut Decision,
    ) -> Result<(), String> {
        if !self.cfg.enabled || !self.cfg.risk.enabled {
            return Ok(());
        }
        let delta = self.risk_delta(d);
        let score = if delta > 0.0 {
            store.add(sender, delta).await?
        } else {
            store.score(sender).await?
        };
        d.risk_score = Some(score);
        if score >= self.cfg.risk.threshold {
            d.escalate(self.cfg.actions.risk, || "sender_risk".into());
        }
        d.settle(self.cfg.shadow);
        Ok(())
    }
}

impl Kind {
    fn category_str(self) -> &'static str {
        match self.category() {
            Category::Pii => "pii",
            Category::Secret => "secret",
        }
    }
}
