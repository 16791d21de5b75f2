//! Governance as configured: `[governance]` (failure mode, Redis timeouts, leases, the warning
//! webhook), the policies of the global, organisation and team scopes, trusted proxies and the
//! file's meters. The governance domain enforces them.

use super::meters::Meter;
use crate::types::policy::{validated, Cidr, Policy};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// How often expired budget reservations are looked for, by default.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// `[governance]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGovernance {
    /// What a rate-limit check does when Redis cannot answer: `open` (fall back to the
    /// node's own counters) or `closed` (503 `dependency_unavailable`).
    #[serde(default = "default_failure")]
    pub redis_failure: String,
    /// Longest wait for one Redis check.
    #[serde(default = "default_redis_timeout")]
    pub redis_timeout_ms: u64,
    /// A concurrency lease held longer than this is considered abandoned (a crashed node).
    #[serde(default = "default_lease_ttl")]
    pub concurrency_lease_ttl_seconds: u64,
    /// File mode: where budget and quota windows are kept across restarts.
    pub budget_state_path: Option<String>,
    /// Database mode: how often each node looks for budget reservations left past their
    /// expiry by a node that died (settled from their usage records, or released).
    #[serde(default = "default_sweep")]
    pub stale_reservation_sweep_ms: u64,
    /// Where each crossed budget or quota warning threshold is POSTed (JSON), once per
    /// threshold and window. Read at start.
    pub warning_webhook_url: Option<String>,
    /// Longest wait for one webhook delivery.
    #[serde(default = "default_webhook_timeout")]
    pub warning_webhook_timeout_ms: u64,
    /// Environment variable holding a secret: each delivery then carries
    /// `x-wharf-signature: sha256=<hex HMAC-SHA256 of the body>`.
    pub warning_webhook_secret_env: Option<String>,
}

impl Default for RawGovernance {
    fn default() -> Self {
        RawGovernance {
            redis_failure: default_failure(),
            redis_timeout_ms: default_redis_timeout(),
            concurrency_lease_ttl_seconds: default_lease_ttl(),
            budget_state_path: None,
            stale_reservation_sweep_ms: default_sweep(),
            warning_webhook_url: None,
            warning_webhook_timeout_ms: default_webhook_timeout(),
            warning_webhook_secret_env: None,
        }
    }
}

fn default_webhook_timeout() -> u64 {
    5000
}

fn default_failure() -> String {
    "open".into()
}
fn default_redis_timeout() -> u64 {
    250
}
fn default_sweep() -> u64 {
    SWEEP_EVERY.as_millis() as u64
}
fn default_lease_ttl() -> u64 {
    600
}

/// `[organisations.<id>]` / `[teams.<id>]`: settings of a scope that the file does not
/// otherwise describe.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScope {
    pub policies: Option<Policy>,
}

/// Governance settings, validated.
#[derive(Debug, Clone)]
pub struct GovConfig {
    pub global: Option<Arc<Policy>>,
    pub organisations: HashMap<String, Arc<Policy>>,
    pub teams: HashMap<String, Arc<Policy>>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Redis unreachable: `true` → 503, `false` → local counters.
    pub fail_closed: bool,
    pub redis_timeout: Duration,
    pub lease_ttl: Duration,
    /// Budgets and quotas of the file.
    pub meters: Vec<Arc<Meter>>,
    /// Where the file's budget windows persist (read at start).
    pub budget_state_path: Option<String>,
    /// How often stale budget reservations are swept (read at start).
    pub stale_sweep: Duration,
    /// Where warning-threshold crossings are POSTed (read at start).
    pub warning_webhook_url: Option<String>,
    pub warning_webhook_timeout: Duration,
    /// The variable holding the webhook's signing secret (read at start).
    pub warning_webhook_secret_env: Option<String>,
}

impl Default for GovConfig {
    fn default() -> Self {
        GovConfig {
            global: None,
            organisations: HashMap::new(),
            teams: HashMap::new(),
            trusted_proxies: Vec::new(),
            fail_closed: false,
            redis_timeout: Duration::from_millis(default_redis_timeout()),
            lease_ttl: Duration::from_secs(default_lease_ttl()),
            meters: Vec::new(),
            budget_state_path: None,
            stale_sweep: SWEEP_EVERY,
            warning_webhook_url: None,
            warning_webhook_timeout: Duration::from_millis(default_webhook_timeout()),
            warning_webhook_secret_env: None,
        }
    }
}

/// Builds [`GovConfig`] from the file's sections.
pub fn build_config(
    global: &Option<Policy>,
    organisations: &BTreeMap<String, RawScope>,
    teams: &BTreeMap<String, RawScope>,
    raw: &RawGovernance,
    trusted_proxies: &[String],
    errs: &mut Vec<String>,
) -> GovConfig {
    let global = global.as_ref().and_then(|p| {
        p.validate("policies", errs);
        (!p.is_empty()).then(|| Arc::new(p.clone()))
    });
    let mut scoped = |kind: &str, m: &BTreeMap<String, RawScope>| {
        m.iter()
            .filter_map(|(id, s)| {
                validated(&format!("{kind}.{id}"), &s.policies, errs).map(|p| (id.clone(), p))
            })
            .collect::<HashMap<_, _>>()
    };
    let organisations = scoped("organisations", organisations);
    let teams = scoped("teams", teams);
    let mut trusted = Vec::new();
    for (i, t) in trusted_proxies.iter().enumerate() {
        match Cidr::parse(t) {
            Ok(c) => trusted.push(c),
            Err(e) => errs.push(format!("server.trusted_proxies[{i}]: {e}")),
        }
    }
    let fail_closed = match raw.redis_failure.as_str() {
        "open" => false,
        "closed" => true,
        other => {
            errs.push(format!(
                "governance.redis_failure: `{other}` is not one of open, closed"
            ));
            false
        }
    };
    if raw.redis_timeout_ms == 0 {
        errs.push("governance.redis_timeout_ms: must be at least 1".into());
    }
    if raw.stale_reservation_sweep_ms == 0 {
        errs.push("governance.stale_reservation_sweep_ms: must be at least 1".into());
    }
    if raw.concurrency_lease_ttl_seconds == 0 {
        errs.push("governance.concurrency_lease_ttl_seconds: must be at least 1".into());
    }
    if let Some(u) = &raw.warning_webhook_url {
        if !(u.starts_with("http://") || u.starts_with("https://"))
            || reqwest::Url::parse(u).is_err()
        {
            errs.push(format!(
                "governance.warning_webhook_url: `{u}` is not an http:// or https:// URL"
            ));
        }
    }
    if raw.warning_webhook_secret_env.is_some() && raw.warning_webhook_url.is_none() {
        errs.push(
            "governance.warning_webhook_secret_env: set without governance.warning_webhook_url"
                .into(),
        );
    }
    if raw.warning_webhook_timeout_ms == 0 {
        errs.push("governance.warning_webhook_timeout_ms: must be at least 1".into());
    }
    GovConfig {
        global,
        organisations,
        teams,
        trusted_proxies: trusted,
        fail_closed,
        redis_timeout: Duration::from_millis(raw.redis_timeout_ms.max(1)),
        lease_ttl: Duration::from_secs(raw.concurrency_lease_ttl_seconds.max(1)),
        meters: Vec::new(),
        budget_state_path: raw.budget_state_path.clone(),
        stale_sweep: Duration::from_millis(raw.stale_reservation_sweep_ms.max(1)),
        warning_webhook_url: raw.warning_webhook_url.clone(),
        warning_webhook_timeout: Duration::from_millis(raw.warning_webhook_timeout_ms.max(1)),
        warning_webhook_secret_env: raw.warning_webhook_secret_env.clone(),
    }
}
