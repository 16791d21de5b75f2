//! Routing policies in Odock's shape (SPEC §5), set on an organisation or a key:
//!
//! ```json
//! {"routing":{"chat":{"strategy":"failover","candidates":[{"modelName":"primary","priority":1},
//!   {"modelName":"backup","priority":2}],"failoverOn":["5xx","timeout"],"maxRetries":2,
//!   "retryDelayMs":100,"nativeFallback":{"openai":["openai-backup"]}}}}
//! ```
//!
//! The outer `{"routing": …}` wrapper is optional. Rules are keyed by model type (`chat`,
//! `embeddings`, …). Parsing is strict: unknown fields and unknown keywords are errors that name
//! their path, so a typo never silently disables failover.

use super::routing::{FailoverOn, Strategy};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A routing policy: one rule per model type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingPolicy {
    pub rules: HashMap<String, RoutingRule>,
}

/// How requests for models of one type are routed.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingRule {
    pub strategy: Strategy,
    /// Wharf model names, in the order they were written; `priority` orders failover.
    pub candidates: Vec<Candidate>,
    pub failover_on: Vec<FailoverOn>,
    /// Further attempts after the first; `None`: one per remaining candidate deployment.
    pub max_retries: Option<u32>,
    pub retry_delay: Duration,
    /// Native routes fall back only within their family: family label → model names.
    pub native_fallback: HashMap<String, Vec<String>>,
}

/// One candidate model of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub model: String,
    pub priority: u32,
    pub weight: u32,
}

/// The triggers used when a policy (or a model) does not name any.
pub const DEFAULT_TRIGGERS: [FailoverOn; 4] = [
    FailoverOn::ServerError,
    FailoverOn::Timeout,
    FailoverOn::RateLimit,
    FailoverOn::Connect,
];

/// Family labels accepted in `nativeFallback`.
pub const FAMILY_LABELS: [&str; 4] = ["openai", "anthropic", "gemini", "vllm"];

/// Model types a rule may be keyed by.
const RULE_KEYS: [&str; 8] = [
    "chat",
    "reasoning",
    "image",
    "embeddings",
    "audio",
    "moderation",
    "transcription",
    "tts",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    strategy: Option<String>,
    #[serde(default)]
    candidates: Vec<RawCandidate>,
    failover_on: Option<Vec<String>>,
    max_retries: Option<u32>,
    retry_delay_ms: Option<u64>,
    #[serde(default)]
    native_fallback: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCandidate {
    model_name: String,
    priority: Option<u32>,
    weight: Option<u32>,
}

/// Parses failover triggers, naming the bad one.
pub fn parse_triggers(list: &[String], path: &str) -> Result<Vec<FailoverOn>, String> {
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            t.parse::<FailoverOn>().map_err(|e| {
                format!("{path}[{i}]: {e} (expected 5xx, timeout, rate_limit, connect or any)")
            })
        })
        .collect()
}

impl RoutingPolicy {
    /// Parses a policy, with or without the `{"routing": …}` wrapper. `{}` is an empty policy.
    /// Errors name the offending path, prefixed with `path`.
    pub fn parse(v: &serde_json::Value, path: &str) -> Result<RoutingPolicy, String> {
        let obj = match v {
            serde_json::Value::Object(o) => o,
            serde_json::Value::Null => return Ok(RoutingPolicy::default()),
            _ => return Err(format!("{path}: must be an object")),
        };
        let (inner, path) = match obj.get("routing") {
            Some(r) if obj.len() == 1 => (r, format!("{path}.routing")),
            Some(_) => return Err(format!("{path}: only `routing` may sit beside the rules")),
            None => (v, path.to_string()),
        };
        let Some(rules) = inner.as_object() else {
            return Err(format!("{path}: must be an object"));
        };
        let mut out = RoutingPolicy::default();
        for (kind, raw) in rules {
            let p = format!("{path}.{kind}");
            if !RULE_KEYS.contains(&kind.as_str()) {
                return Err(format!(
                    "{p}: unknown model type (expected one of {})",
                    RULE_KEYS.join(", ")
                ));
            }
            let r: RawRule = serde_path_to_error::deserialize(raw)
                .map_err(|e| format!("{p}.{}: {}", e.path(), e.inner()))?;
            out.rules
                .insert(kind.clone(), RoutingRule::from_raw(r, &p)?);
        }
        Ok(out)
    }

    /// The rule for a model type, if any.
    pub fn rule(&self, model_type: &str) -> Option<&RoutingRule> {
        self.rules.get(model_type)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl RoutingRule {
    fn from_raw(r: RawRule, path: &str) -> Result<RoutingRule, String> {
        let strategy = match &r.strategy {
            Some(s) => s
                .parse::<Strategy>()
                .map_err(|e| format!("{path}.strategy: {e}"))?,
            None => Strategy::Failover,
        };
        let failover_on = match &r.failover_on {
            Some(list) => parse_triggers(list, &format!("{path}.failoverOn"))?,
            None => DEFAULT_TRIGGERS.to_vec(),
        };
        let mut candidates = Vec::with_capacity(r.candidates.len());
        for (i, c) in r.candidates.into_iter().enumerate() {
            if c.model_name.is_empty() {
                return Err(format!(
                    "{path}.candidates[{i}].modelName: must not be empty"
                ));
            }
            if candidates
                .iter()
                .any(|x: &Candidate| x.model == c.model_name)
            {
                return Err(format!(
                    "{path}.candidates[{i}].modelName: `{}` is listed twice",
                    c.model_name
                ));
            }
            candidates.push(Candidate {
                model: c.model_name,
                priority: c.priority.unwrap_or(i as u32 + 1),
                weight: c.weight.unwrap_or(1),
            });
        }
        let mut native_fallback = HashMap::new();
        for (family, models) in r.native_fallback {
            if !FAMILY_LABELS.contains(&family.as_str()) {
                return Err(format!(
                    "{path}.nativeFallback.{family}: unknown family (expected one of {})",
                    FAMILY_LABELS.join(", ")
                ));
            }
            native_fallback.insert(family, models);
        }
        if r.max_retries.is_some_and(|n| n > 8) {
            return Err(format!("{path}.maxRetries: at most 8"));
        }
        if r.retry_delay_ms.is_some_and(|n| n > 10_000) {
            return Err(format!("{path}.retryDelayMs: at most 10000"));
        }
        Ok(RoutingRule {
            strategy,
            candidates,
            failover_on,
            max_retries: r.max_retries,
            retry_delay: Duration::from_millis(r.retry_delay_ms.unwrap_or(0)),
            native_fallback,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_spec_example() {
        let v = json!({"routing":{"chat":{"strategy":"failover","candidates":[{"modelName":"primary","priority":1},{"modelName":"backup","priority":2}],
            "failoverOn":["5xx","timeout"],"maxRetries":2,"retryDelayMs":100,
            "nativeFallback":{"openai":["openai-backup"],"vllm":["local-backup"]}}}});
        let p = RoutingPolicy::parse(&v, "routing_policy").unwrap();
        let r = p.rule("chat").unwrap();
        assert_eq!(r.strategy, Strategy::Failover);
        assert_eq!(r.candidates.len(), 2);
        assert_eq!(r.candidates[1].priority, 2);
        assert_eq!(
            r.failover_on,
            vec![FailoverOn::ServerError, FailoverOn::Timeout]
        );
        assert_eq!(r.max_retries, Some(2));
        assert_eq!(r.retry_delay, Duration::from_millis(100));
        assert_eq!(r.native_fallback["openai"], vec!["openai-backup"]);
        assert!(p.rule("embeddings").is_none());
    }

    #[test]
    fn unwrapped_and_empty_policies() {
        let p = RoutingPolicy::parse(&json!({"chat":{"strategy":"round_robin"}}), "p").unwrap();
        assert_eq!(p.rule("chat").unwrap().strategy, Strategy::RoundRobin);
        assert_eq!(
            p.rule("chat").unwrap().failover_on,
            DEFAULT_TRIGGERS.to_vec()
        );
        assert!(RoutingPolicy::parse(&json!({}), "p").unwrap().is_empty());
        assert!(RoutingPolicy::parse(&json!({"routing":{}}), "p")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn errors_name_the_path() {
        let cases = [
            (json!({"chat":{"strategy":"fastest"}}), "p.chat.strategy"),
            (
                json!({"chat":{"failoverOn":["5xx","sometimes"]}}),
                "p.chat.failoverOn[1]",
            ),
            (
                json!({"chat":{"candidates":[{"model":"x"}]}}),
                "p.chat.candidates[0]",
            ),
            (json!({"chats":{}}), "p.chats"),
            (
                json!({"chat":{"nativeFallback":{"azure":["x"]}}}),
                "p.chat.nativeFallback.azure",
            ),
            (json!({"chat":{"maxRetries":99}}), "p.chat.maxRetries"),
            (
                json!({"chat":{"candidates":[{"modelName":"a"},{"modelName":"a"}]}}),
                "p.chat.candidates[1]",
            ),
            (json!([1]), "p"),
        ];
        for (v, want) in cases {
            let e = RoutingPolicy::parse(&v, "p").unwrap_err();
            assert!(e.starts_with(want), "{e} should start with {want}");
        }
    }
}
