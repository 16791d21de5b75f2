//! SafetySec settings, as they appear in the gateway TOML (e.g. under `[safety]`).

use super::detect::{DetectorOptions, Detectors, Kind, KindSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What to do about a finding or a score over its threshold. Ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing, not even recorded as a hit.
    Allow,
    /// Record the finding, change nothing.
    Observe,
    /// Replace the finding with a typed placeholder.
    Redact,
    /// Refuse the request (`403 safety_blocked`) or stop the response.
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Observe => "observe",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

/// SafetySec settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SafetyConfig {
    /// Master switch.
    pub enabled: bool,
    /// Decide and record, but never change or block anything.
    pub shadow: bool,
    /// Detectors to run (wire names, e.g. `"email"`); absent = all.
    pub detectors: Option<Vec<Kind>>,
    /// Scan request messages.
    pub scan_requests: bool,
    /// Scan responses (and streamed deltas).
    pub scan_responses: bool,
    /// The most bytes a stream redactor may hold back at the tail of a stream. Must be at least
    /// the longest possible match of the enabled detectors plus one.
    pub lookbehind_bytes: usize,
    /// Minimum length of a secret-like token.
    pub token_min_len: usize,
    /// Minimum Shannon entropy (bits per byte) of a secret-like token.
    pub token_min_entropy: f32,
    pub actions: ActionsConfig,
    pub injection: InjectionConfig,
    pub leakage: LeakageConfig,
    pub risk: RiskConfig,
}

impl Default for SafetyConfig {
    fn default() -> Self {
        SafetyConfig {
            enabled: true,
            shadow: false,
            detectors: None,
            scan_requests: true,
            scan_responses: true,
            lookbehind_bytes: 4096,
            token_min_len: 32,
            token_min_entropy: 4.0,
            actions: ActionsConfig::default(),
            injection: InjectionConfig::default(),
            leakage: LeakageConfig::default(),
            risk: RiskConfig::default(),
        }
    }
}

/// Actions per family, per detector (overrides the family), and for the heuristics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionsConfig {
    /// Emails, phone numbers, card numbers.
    pub pii: Action,
    /// Keys, JWTs, secret-like tokens.
    pub secret: Action,
    /// Per-detector overrides, e.g. `{ email = "observe", aws_secret_key = "block" }`.
    pub kinds: BTreeMap<Kind, Action>,
    /// Prompt-injection score at or over the threshold (allow / observe / block).
    pub injection: Action,
    /// Data leakage detected in a response (allow / observe / block).
    pub leakage: Action,
    /// Sender risk score at or over the threshold (allow / observe / block).
    pub risk: Action,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        ActionsConfig {
            pii: Action::Redact,
            secret: Action::Redact,
            kinds: BTreeMap::new(),
            injection: Action::Observe,
            leakage: Action::Observe,
            risk: Action::Block,
        }
    }
}

impl ActionsConfig {
    /// The action for one detector kind.
    pub fn for_kind(&self, k: Kind) -> Action {
        if let Some(a) = self.kinds.get(&k) {
            return *a;
        }
        match k.category() {
            super::detect::Category::Pii => self.pii,
            super::detect::Category::Secret => self.secret,
        }
    }
}

/// One weighted phrase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhraseConfig {
    pub phrase: String,
    pub weight: f32,
}

/// Prompt-injection and jailbreak heuristics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InjectionConfig {
    pub enabled: bool,
    /// Score at or over which the injection action applies.
    pub threshold: f32,
    /// Use the built-in phrase list.
    pub builtin_phrases: bool,
    /// Extra phrases.
    pub phrases: Vec<PhraseConfig>,
}

impl Default for InjectionConfig {
    fn default() -> Self {
        InjectionConfig {
            enabled: true,
            threshold: 1.0,
            builtin_phrases: true,
            phrases: Vec::new(),
        }
    }
}

/// Data-leakage check on responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeakageConfig {
    pub enabled: bool,
    /// Extra markers (e.g. canary strings planted in system prompts).
    pub markers: Vec<String>,
    /// Fraction of the system prompt's 8-word shingles found in a response that counts as an echo.
    pub echo_min_ratio: f32,
    /// Secrets (keys, tokens) in a response count as leakage.
    pub secrets_in_responses: bool,
}

impl Default for LeakageConfig {
    fn default() -> Self {
        LeakageConfig {
            enabled: true,
            markers: Vec::new(),
            echo_min_ratio: 0.5,
            secrets_in_responses: true,
        }
    }
}

/// Per-sender (IP + key + user agent) risk score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskConfig {
    pub enabled: bool,
    /// Score at or over which the risk action applies.
    pub threshold: f64,
    /// A sender's score is forgotten this long after its last increment.
    pub ttl_secs: u64,
    /// In memory, the score halves over this period (Redis keeps it until the TTL).
    pub half_life_secs: u64,
    /// Added per blocked request.
    pub weight_block: f64,
    /// Added per injection score point.
    pub weight_injection: f64,
    /// Added per secret or PII finding.
    pub weight_finding: f64,
    /// Redis key prefix.
    pub redis_prefix: String,
    /// Environment variable with a Redis URL: when set (and not empty), scores are shared by
    /// every node through Redis (no decay there: a score is forgotten `ttl_secs` after the
    /// sender's last risky request); the local scores mirror them, updated off the request path.
    pub redis_url_env: Option<String>,
}

impl Default for RiskConfig {
    fn default() -> Self {
        RiskConfig {
            enabled: true,
            threshold: 10.0,
            ttl_secs: 3600,
            half_life_secs: 600,
            weight_block: 3.0,
            weight_injection: 2.0,
            weight_finding: 0.25,
            redis_prefix: "wharf:risk:".into(),
            redis_url_env: None,
        }
    }
}

impl SafetyConfig {
    /// The enabled detector kinds.
    pub fn kinds(&self) -> KindSet {
        match &self.detectors {
            None => KindSet::all(),
            Some(v) => v.iter().copied().collect(),
        }
    }

    /// Detector options derived from these settings.
    pub fn detector_options(&self) -> DetectorOptions {
        DetectorOptions {
            kinds: self.kinds(),
            token_min_len: self.token_min_len,
            token_min_entropy: self.token_min_entropy,
        }
    }

    /// Checks the settings (and that the detectors compile); an error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        fn finite_pos(name: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("safety.{name} must be a positive number"))
            }
        }
        fn finite_nonneg(name: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("safety.{name} must be a non-negative number"))
            }
        }
        if !(16..=256).contains(&self.token_min_len) {
            return Err("safety.token_min_len must be between 16 and 256".into());
        }
        if !(self.token_min_entropy.is_finite() && (0.0..=8.0).contains(&self.token_min_entropy)) {
            return Err("safety.token_min_entropy must be between 0 and 8".into());
        }
        for (name, a) in [
            ("actions.injection", self.actions.injection),
            ("actions.leakage", self.actions.leakage),
            ("actions.risk", self.actions.risk),
        ] {
            if a == Action::Redact {
                return Err(format!(
                    "safety.{name}: redact is not an action for a score (allow, observe or block)"
                ));
            }
        }
        finite_pos("injection.threshold", f64::from(self.injection.threshold))?;
        for p in &self.injection.phrases {
            if super::injection::normalize(&p.phrase).trim().is_empty() {
                return Err("safety.injection.phrases: empty phrase".into());
            }
            if !p.weight.is_finite() {
                return Err(format!(
                    "safety.injection.phrases: weight of {:?} is not a number",
                    p.phrase
                ));
            }
        }
        if self.leakage.markers.iter().any(|m| m.trim().is_empty()) {
            return Err("safety.leakage.markers: empty marker".into());
        }
        let r = f64::from(self.leakage.echo_min_ratio);
        if !(r > 0.0 && r <= 1.0) {
            return Err("safety.leakage.echo_min_ratio must be in (0, 1]".into());
        }
        finite_pos("risk.threshold", self.risk.threshold)?;
        finite_nonneg("risk.weight_block", self.risk.weight_block)?;
        finite_nonneg("risk.weight_injection", self.risk.weight_injection)?;
        finite_nonneg("risk.weight_finding", self.risk.weight_finding)?;
        if self.risk.ttl_secs == 0 {
            return Err("safety.risk.ttl_secs must be positive".into());
        }
        if self.risk.half_life_secs == 0 {
            return Err("safety.risk.half_life_secs must be positive".into());
        }
        let det = Detectors::new(self.detector_options())?;
        let need = det.max_match_len() + 1;
        if self.lookbehind_bytes < need {
            return Err(format!(
                "safety.lookbehind_bytes must be at least {need} for the enabled detectors"
            ));
        }
        Ok(())
    }
}
