//! Governance (SPEC §2 steps 2, 4, 7, 13; §7): policies on every scope, rate limits on one node
//! (in process) or across nodes (Redis), and their answers.
//!
//! Scopes, broadest first: `global` (`[policies]`), `organisation`, `team`, `key`, `model`. Every
//! scope applies: a scope's request and token limits count that scope's whole traffic (an
//! organisation's `per_minute` is shared by all its keys, a model's by all its callers, the
//! global one by the whole gateway), so a narrower scope can only refuse more, never loosen a
//! broader one. IP lists and payload limits of every scope apply to each request.
//!
//! Hooks in the proxy: [`Governance::pre_auth`] (global IP lists), [`Governance::after_auth`]
//! (the key's IP lists, declared body size), [`Governance::after_model`] (payload, `max_tokens`,
//! one atomic check of every counter — requests, burst, concurrency lease, token reservation —
//! then the budget and quota reservation, see [`budget`] and [`budget_pg`]) and
//! [`Governance::finish`] in post-flight (budget settle or release, token refund, lease
//! release; leases and reservations are also released when the request context is dropped,
//! whatever the path).
//!
//! Stores: in-process counters ([`local`]) or Redis ([`redis`], one script per check) for rate
//! limits; in memory with an optional state file (file-configured budgets) or Postgres
//! (database budgets and quotas) for budgets.

pub mod budget;
pub mod budget_pg;
pub mod budget_redis;
pub mod limits;
pub mod local;
pub use crate::types::policy;
pub mod redis;
pub mod webhook;

use crate::config::{Config, Model, VirtualKey};
use crate::error::{ErrorCode, GatewayError};
use limits::{Denial, RateHeaders, ScopeLimits};
pub use policy::{validated, KeyPolicies};
use policy::{Cidr, Policy};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

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
    budget_redis::SWEEP_EVERY.as_millis() as u64
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
    pub meters: Vec<Arc<budget::Meter>>,
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
            stale_sweep: budget_redis::SWEEP_EVERY,
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

/// One scope of a request and every policy that applies to it.
struct Scope<'a> {
    name: &'static str,
    id: String,
    policies: Vec<&'a Policy>,
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Scope<'_> {
    fn limits(&self) -> ScopeLimits {
        let mut rps = None;
        let mut rpm = None;
        let mut burst = None;
        let mut conc = None;
        let mut tpm = None;
        for p in &self.policies {
            let r = &p.ratelimit;
            rps = min_opt(rps, r.requests.per_second);
            rpm = min_opt(rpm, r.requests.per_minute);
            burst = min_opt(burst, r.requests.burst);
            conc = min_opt(conc, r.concurrency.max);
            tpm = min_opt(tpm, r.tokens.per_minute);
        }
        // The bucket refills at the per-second rate, else at the per-minute rate.
        let interval = match (rps, rpm) {
            (Some(s), _) => 1000.0 / s as f64,
            (None, Some(m)) => 60_000.0 / m as f64,
            (None, None) => 0.0,
        };
        ScopeLimits {
            scope: self.name,
            id: self.id.clone(),
            rps: rps.unwrap_or(0),
            rpm: rpm.unwrap_or(0),
            burst: if interval > 0.0 {
                burst.unwrap_or(0)
            } else {
                0
            },
            burst_interval_ms: interval,
            concurrency: conc.unwrap_or(0),
            tpm: tpm.unwrap_or(0),
        }
    }
}

/// Every scope of a request (the model's only once it is known), broadest first.
fn scopes<'a>(cfg: &'a Config, key: &'a VirtualKey, model: Option<&'a Model>) -> Vec<Scope<'a>> {
    let g = &cfg.governance;
    let mut out = Vec::new();
    // The scope's counter id is built only when the scope has a policy: most requests have
    // none, and this runs twice per request.
    let mut push = |name, id: &dyn Fn() -> String, ps: [Option<&'a Arc<Policy>>; 2]| {
        if ps.iter().all(Option::is_none) {
            return;
        }
        let policies: Vec<&Policy> = ps.into_iter().flatten().map(|p| p.as_ref()).collect();
        out.push(Scope {
            name,
            id: id(),
            policies,
        });
    };
    push("global", &|| "global".into(), [g.global.as_ref(), None]);
    push(
        "organisation",
        &|| format!("org:{}", key.organisation_id),
        [
            g.organisations.get(&key.organisation_id),
            key.policies.organisation.as_ref(),
        ],
    );
    if let Some(t) = &key.team_id {
        push(
            "team",
            &|| format!("team:{t}"),
            [g.teams.get(t), key.policies.team.as_ref()],
        );
    }
    push(
        "key",
        &|| format!("key:{}", key.id),
        [key.policies.key.as_ref(), None],
    );
    if let Some(m) = model {
        let id = || {
            // A model of the organisation and a model of the file may share a name.
            if cfg
                .org_models
                .get(&key.organisation_id)
                .is_some_and(|o| o.by_name.contains_key(&m.name))
            {
                format!("model:{}:{}", key.organisation_id, m.name)
            } else {
                format!("model:{}", m.name)
            }
        };
        push("model", &id, [m.policy.as_ref(), None]);
    }
    out
}

/// The policies of the key's scopes in the order of [`scopes`] (without the model's), with
/// their scope's name; builds no counter ids, for the checks that need none.
fn key_scope_policies<'a>(
    cfg: &'a Config,
    key: &'a VirtualKey,
) -> impl Iterator<Item = (&'static str, &'a Policy)> {
    let g = &cfg.governance;
    let team = key.team_id.as_ref();
    [
        ("global", g.global.as_ref()),
        ("organisation", g.organisations.get(&key.organisation_id)),
        ("organisation", key.policies.organisation.as_ref()),
        ("team", team.and_then(|t| g.teams.get(t))),
        ("team", team.and(key.policies.team.as_ref())),
        ("key", key.policies.key.as_ref()),
    ]
    .into_iter()
    .filter_map(|(name, p)| p.map(|p| (name, p.as_ref())))
}

fn ip_check(ip: IpAddr, scope: &str, p: &Policy) -> Result<(), GatewayError> {
    p.ip_allows(ip).map_err(|list| {
        let mut e = GatewayError::new(
            ErrorCode::IpNotAllowed,
            match list {
                "blocklist" => format!("client address {ip} is blocked by the {scope} policy"),
                _ => format!("client address {ip} is not in the {scope} policy's allowlist"),
            },
        );
        e.extra.push(("scope", serde_json::json!(scope)));
        e
    })
}

fn payload_error(scope: &str, limit: u64) -> GatewayError {
    let mut e = GatewayError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body exceeds the {scope} policy's limit of {limit} bytes"),
    );
    e.extra.push(("scope", serde_json::json!(scope)));
    e.extra.push(("limit", serde_json::json!(limit)));
    e
}

/// What a request asks of its limits and budgets: its input tokens (estimated on demand),
/// the output it asks for, and how its cost is estimated.
struct Ask<'a> {
    input_tokens: &'a mut (dyn FnMut() -> u64 + Send),
    output: u64,
    cost: Cost<'a>,
}

#[derive(Clone, Copy)]
enum Cost<'a> {
    /// A model call: its tokens at the model's prices.
    Priced(&'a crate::config::Pricing),
    /// An MCP call: a fixed estimate.
    Fixed(u64),
}

/// An admitted request's hold on the limiter.
#[derive(Debug)]
enum Grant {
    Local(local::LocalGrant),
    Redis(redis::RedisGrant),
}

/// Governance state of one request (lives in the proxy context; dropping it releases leases).
#[derive(Debug, Default)]
pub struct RequestGov {
    client_ip: Option<IpAddr>,
    grant: Option<Grant>,
    headers: RateHeaders,
    budget: Option<budget::BudgetGrant>,
    pg_budget: Option<budget_pg::PgGrant>,
    redis_budget: Option<budget_redis::RedisBudgetGrant>,
    /// The database meters were reserved in Postgres because Redis could not answer.
    pg_fallback: bool,
}

impl RequestGov {
    /// The `x-ratelimit-*` headers for the answer (none when no limit applies).
    pub fn header_pairs(&self) -> Vec<(&'static str, String)> {
        self.headers.pairs()
    }

    /// The client address used for IP policies.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }
}

/// The node's limiter: in-process counters, and the Redis limiter when Redis is configured.
pub struct Governance {
    local: local::Local,
    redis: Option<Arc<redis::RedisLimiter>>,
    started: std::sync::Once,
    budgets: Arc<budget::MemoryBudgets>,
    /// Database mode: budgets and quotas of the `budgets` / `quotas` tables.
    pg: Option<Arc<budget_pg::PgBudgets>>,
    /// Database mode with Redis: the fast path of the database's periodic meters.
    redis_budgets: Option<Arc<budget_redis::RedisBudgets>>,
}

impl std::fmt::Debug for Governance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governance")
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

impl Governance {
    /// A limiter for `cfg` (Redis mode when a Redis URL is configured).
    pub fn new(cfg: &Config, db: Option<crate::db::PoolSlot>) -> Governance {
        let redis = cfg.redis_url.as_deref().and_then(|url| {
            match redis::RedisLimiter::new(url, cfg.governance.redis_timeout) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "rate limits: invalid redis URL; counting on this node only");
                    None
                }
            }
        });
        let g = &cfg.governance;
        let secret = g.warning_webhook_secret_env.as_deref().and_then(|var| {
            match std::env::var(var) {
                Ok(s) if !s.is_empty() => Some(s),
                _ => {
                    tracing::error!(
                        variable = var,
                        "budget webhook: the signing secret's variable is not set; deliveries go unsigned"
                    );
                    None
                }
            }
        });
        let notifier = Arc::new(webhook::Notifier::start(
            g.warning_webhook_url.as_deref(),
            g.warning_webhook_timeout,
            secret,
        ));
        let pg = db.map(|db| budget_pg::PgBudgets::new(db, notifier.clone(), g.stale_sweep));
        let redis_budgets = match (&redis, &pg) {
            (Some(r), Some(p)) => Some(budget_redis::RedisBudgets::new(
                r.clone(),
                p.clone(),
                g.stale_sweep,
            )),
            _ => None,
        };
        Governance {
            local: local::Local::default(),
            redis,
            started: std::sync::Once::new(),
            budgets: budget::MemoryBudgets::open(g.budget_state_path.as_deref(), notifier.clone()),
            pg,
            redis_budgets,
        }
    }

    /// Database mode: reloads the budget and quota list now (a `budgets` or `quotas` row
    /// changed). No-op in file mode.
    pub async fn reload_db_meters(&self) {
        if let Some(pg) = &self.pg {
            pg.reload_meters().await;
        }
    }

    /// The node stops: every slice of the shared limits it holds goes back to Redis (what
    /// it did not spend, and its idle concurrency slots). No-op without Redis.
    pub async fn give_back(&self) {
        if let Some(r) = &self.redis {
            r.give_back().await;
        }
    }

    /// The Redis fast path of the database's budgets and quotas, when configured.
    pub fn redis_budgets(&self) -> Option<&Arc<budget_redis::RedisBudgets>> {
        self.redis_budgets.as_ref()
    }

    /// Pipeline step 2: the global IP lists (before authentication).
    pub fn pre_auth(
        &self,
        cfg: &Config,
        peer: Option<IpAddr>,
        forwarded_for: Option<&str>,
        g: &mut RequestGov,
    ) -> Result<(), GatewayError> {
        let ip = peer.map(|p| policy::client_ip(p, forwarded_for, &cfg.governance.trusted_proxies));
        g.client_ip = ip;
        if let (Some(ip), Some(p)) = (ip, &cfg.governance.global) {
            ip_check(ip, "global", p)?;
        }
        Ok(())
    }

    /// Pipeline step 4 (before the body is read): the IP lists of the key's scopes and the
    /// declared body size.
    pub fn after_auth(
        &self,
        cfg: &Config,
        key: &VirtualKey,
        content_length: Option<u64>,
        g: &RequestGov,
    ) -> Result<(), GatewayError> {
        for (name, p) in key_scope_policies(cfg, key) {
            if let Some(ip) = g.client_ip {
                ip_check(ip, name, p)?;
            }
            if let (Some(n), Some(max)) = (content_length, p.ratelimit.payload.max_request_bytes) {
                if n > max {
                    return Err(payload_error(name, max));
                }
            }
        }
        Ok(())
    }

    /// Pipeline steps 4–8 once the model is known: the model's IP lists, body size and
    /// `max_tokens` on every scope, then one atomic check of every counter (requests per
    /// second / minute, burst, concurrency lease, tokens per minute reserving
    /// `estimate_input(body)` + the requested `max_tokens`), then the reservation on every
    /// budget and quota of the key's owners (priced with the model's pricing).
    #[allow(clippy::too_many_arguments)]
    pub async fn after_model(
        &self,
        cfg: &Config,
        key: &VirtualKey,
        model: &Model,
        body: &[u8],
        max_tokens: Option<u64>,
        estimate_input: impl FnOnce(&[u8]) -> u64 + Send,
        request_id: &str,
        g: &mut RequestGov,
    ) -> Result<(), GatewayError> {
        let all = scopes(cfg, key, Some(model));
        if all.is_empty() && cfg.governance.meters.is_empty() && self.pg.is_none() {
            return Ok(());
        }
        let mut max_tokens_cap: Option<u64> = None;
        for s in &all {
            for p in &s.policies {
                if s.name == "model" {
                    if let Some(ip) = g.client_ip {
                        ip_check(ip, s.name, p)?;
                    }
                }
                if let Some(max) = p.ratelimit.payload.max_request_bytes {
                    if body.len() as u64 > max {
                        return Err(payload_error(s.name, max));
                    }
                }
                if let Some(cap) = p.ratelimit.payload.max_tokens {
                    if let Some(asked) = max_tokens.filter(|m| *m > cap) {
                        let mut e = GatewayError::new(
                            ErrorCode::MaxTokensExceeded,
                            format!(
                                "max_tokens {asked} exceeds the {} policy's limit of {cap}",
                                s.name
                            ),
                        );
                        e.extra.push(("scope", serde_json::json!(s.name)));
                        e.extra.push(("limit", serde_json::json!(cap)));
                        crate::metrics::RATE_LIMITED
                            .with_label_values(&["max_tokens_exceeded", s.name])
                            .inc();
                        return Err(e);
                    }
                    max_tokens_cap = min_opt(max_tokens_cap, Some(cap));
                }
            }
        }
        let limits: Vec<ScopeLimits> = all.iter().map(Scope::limits).filter(|l| l.any()).collect();
        let mut input = None;
        let mut estimate_input = Some(estimate_input);
        let mut input_tokens =
            || *input.get_or_insert_with(|| estimate_input.take().map(|f| f(body)).unwrap_or(0));
        let ask = Ask {
            input_tokens: &mut input_tokens,
            output: max_tokens.or(max_tokens_cap).unwrap_or(0),
            cost: Cost::Priced(&model.pricing),
        };
        self.admit(cfg, key, &limits, ask, request_id, g).await
    }

    /// Pipeline steps 4–8 for an MCP request (no model): the MCP server's IP lists and body
    /// size, then the request counters of every scope (global, organisation, team, key, and
    /// the server's own `mcp:<id>` scope), then a reservation of `estimate_nanos` on the
    /// key's budgets and quotas. Released or settled by [`Governance::finish`].
    #[allow(clippy::too_many_arguments)]
    pub async fn after_mcp(
        &self,
        cfg: &Config,
        key: &VirtualKey,
        server_id: &str,
        server_policy: Option<&Policy>,
        body_len: u64,
        estimate_nanos: u64,
        request_id: &str,
        g: &mut RequestGov,
    ) -> Result<(), GatewayError> {
        let mut all = scopes(cfg, key, None);
        if let Some(p) = server_policy {
            all.push(Scope {
                name: "mcp",
                id: format!("mcp:{server_id}"),
                policies: vec![p],
            });
        }
        if all.is_empty() && cfg.governance.meters.is_empty() && self.pg.is_none() {
            return Ok(());
        }
        for s in &all {
            for p in &s.policies {
                if s.name == "mcp" {
                    if let Some(ip) = g.client_ip {
                        ip_check(ip, s.name, p)?;
                    }
                }
                if let Some(max) = p.ratelimit.payload.max_request_bytes {
                    if body_len > max {
                        return Err(payload_error(s.name, max));
                    }
                }
            }
        }
        let limits: Vec<ScopeLimits> = all.iter().map(Scope::limits).filter(|l| l.any()).collect();
        let ask = Ask {
            input_tokens: &mut || 0,
            output: 0,
            cost: Cost::Fixed(estimate_nanos),
        };
        self.admit(cfg, key, &limits, ask, request_id, g).await
    }

    /// Pipeline steps 7–8: one atomic check of every counter (requests per second / minute,
    /// burst, concurrency lease, tokens per minute reserving the input estimate + the output
    /// asked for), then a reservation on every budget and quota of the key's owners. With
    /// Redis, the database's periodic meters are reserved by the same script as the limits
    /// (one round trip); the file's meters are reserved in memory, prepaid balances in
    /// Postgres, and every database meter in Postgres when Redis cannot answer. All or none:
    /// on a refusal every hold is given back.
    async fn admit(
        &self,
        cfg: &Config,
        key: &VirtualKey,
        limits: &[ScopeLimits],
        ask: Ask<'_>,
        request_id: &str,
        g: &mut RequestGov,
    ) -> Result<(), GatewayError> {
        let Ask {
            input_tokens,
            output,
            cost,
        } = ask;
        let now = jiff::Timestamp::now();
        let file_meters = &cfg.governance.meters;
        let in_file = file_meters.iter().any(|m| m.applies(key, now));
        let db_meters = match &self.pg {
            Some(pg) => pg.applying(key, now).await?,
            None => Vec::new(),
        };
        let est = (in_file || !db_meters.is_empty()).then(|| {
            let (input, output) = match cost {
                Cost::Priced(_) => (input_tokens(), output),
                Cost::Fixed(_) => (0, 0),
            };
            budget::Estimate {
                input_tokens: input,
                output_tokens: output,
                cost_nanos: match cost {
                    Cost::Priced(pricing) => crate::types::Tokens {
                        input,
                        output,
                        total: input + output,
                        ..Default::default()
                    }
                    .cost_nanos(pricing),
                    Cost::Fixed(n) => n,
                },
            }
        });
        let (mut for_pg, mut part) = match (&self.redis_budgets, &self.redis, &est) {
            (Some(rb), Some(_), Some(est)) => {
                let (balances, periodic): (Vec<_>, Vec<_>) =
                    db_meters.into_iter().partition(|m| m.is_balance());
                let part =
                    (!periodic.is_empty()).then(|| rb.prepare(periodic, est, request_id, now));
                (balances, part)
            }
            _ => (db_meters, None),
        };
        let mut fallback = false;
        if !limits.is_empty() || part.is_some() {
            let tokens = if limits.iter().any(|l| l.tpm > 0) {
                input_tokens() + output
            } else {
                0
            };
            match self.check(cfg, limits, tokens, part.as_ref()).await? {
                Ok((grant, headers, budget_held)) => {
                    g.grant = grant;
                    g.headers = headers;
                    match (part.take(), &self.redis_budgets) {
                        (Some(p), Some(rb)) if budget_held => g.redis_budget = Some(rb.grant(p)),
                        (Some(p), rb) => {
                            // Redis could not answer: the Postgres ledger holds these too (and
                            // should the check have run in Redis all the same, its
                            // reservation there is taken out once Redis answers).
                            fallback = true;
                            if let Some(rb) = rb {
                                rb.release_later(&p);
                            }
                            for_pg.extend(p.into_meters());
                        }
                        (None, _) => {}
                    }
                }
                Err(d) => {
                    // The refused answer says which window is full and when it frees up.
                    let full = Some((d.limit, 0, d.retry_after_ms));
                    match d.kind {
                        limits::Kind::Rpm | limits::Kind::Rps => g.headers.requests = full,
                        limits::Kind::Tpm => g.headers.tokens = full,
                        _ => {}
                    }
                    let e = d.to_error();
                    crate::metrics::RATE_LIMITED
                        .with_label_values(&[e.code.as_str(), d.scope])
                        .inc();
                    return Err(e);
                }
            }
        }
        let Some(est) = est else {
            return Ok(());
        };
        let r = async {
            let file = self.budgets.reserve(file_meters, key, &est, now)?;
            let in_pg = match &self.pg {
                Some(pg) => pg.reserve(for_pg, key, &est, request_id, now).await?,
                None => None,
            };
            Ok((file, in_pg))
        }
        .await;
        match r {
            Ok((file, in_pg)) => {
                g.budget = file;
                g.pg_budget = in_pg;
                g.pg_fallback = fallback;
                Ok(())
            }
            Err(e) => {
                // Nothing reaches the provider: give every hold back now (reservations are
                // released when dropped).
                g.redis_budget = None;
                self.release(g).await;
                Err(e)
            }
        }
    }

    async fn release(&self, g: &mut RequestGov) {
        match g.grant.take() {
            Some(Grant::Local(mut l)) => l.finish(0),
            Some(Grant::Redis(mut r)) => redis::RedisLimiter::finish(&mut r, 0).await,
            None => {}
        }
    }

    /// The limits' check, with the budget part when Redis is the budgets' fast path: the
    /// grant, the rate headers, and whether the budget part was reserved (not when Redis
    /// could not answer). A refusal by a budget is an error; a full limit the inner `Err`.
    async fn check(
        &self,
        cfg: &Config,
        limits: &[ScopeLimits],
        tokens: u64,
        part: Option<&budget_redis::Prepared>,
    ) -> Result<Result<(Option<Grant>, RateHeaders, bool), Denial>, GatewayError> {
        if let Some(r) = &self.redis {
            self.started.call_once(|| r.connect());
            // A budget window missing from Redis is seeded and the check runs again.
            let mut seeds = part.map_or(0, |p| p.check_part().0.len());
            loop {
                let checked = r
                    .check(
                        limits,
                        tokens,
                        cfg.governance.lease_ttl,
                        part.map(|p| p.check_part()),
                    )
                    .await;
                match checked {
                    Ok(redis::Checked::Admitted(grant, h)) => {
                        let grant = (!limits.is_empty()).then_some(Grant::Redis(grant));
                        return Ok(Ok((grant, h, part.is_some())));
                    }
                    Ok(redis::Checked::Limited(d)) => return Ok(Err(d)),
                    Ok(redis::Checked::BudgetDenied {
                        index,
                        used,
                        reserved,
                        limit,
                    }) => {
                        let p = part.ok_or_else(|| budget_pg::unavailable("no budget part"))?;
                        return Err(p.refusal(index, used, reserved, limit));
                    }
                    Ok(redis::Checked::BudgetMissing(index)) => {
                        let (Some(p), Some(rb), true) = (part, &self.redis_budgets, seeds > 0)
                        else {
                            return Err(budget_pg::unavailable("budget windows not seeded"));
                        };
                        seeds -= 1;
                        rb.seed_missing(p, index).await?;
                    }
                    Err(e) => {
                        crate::metrics::RATE_LIMIT_STORE_ERRORS.inc();
                        if cfg.governance.fail_closed && !limits.is_empty() {
                            tracing::warn!(error = %e.0, "rate limits: redis unavailable; refusing (fail closed)");
                            return Err(GatewayError::new(
                                ErrorCode::DependencyUnavailable,
                                "the rate-limit store is unavailable",
                            ));
                        }
                        tracing::debug!(error = %e.0, "rate limits and budgets: redis unavailable; counting on this node and in Postgres");
                        break;
                    }
                }
            }
        }
        if limits.is_empty() {
            return Ok(Ok((None, RateHeaders::default(), false)));
        }
        Ok(self
            .local
            .check(limits, tokens)
            .map(|(gr, h)| (Some(Grant::Local(gr)), h, false)))
    }

    /// The prepaid balances that apply to `key` (its own, its user's, its team's, its
    /// organisation's), from the file and the database, as `/v1/keys/validate` shows them. A
    /// database that cannot answer leaves its balances out (logged).
    pub async fn balances(&self, cfg: &Config, key: &VirtualKey) -> Vec<serde_json::Value> {
        let now = jiff::Timestamp::now();
        let mut out: Vec<serde_json::Value> = cfg
            .governance
            .meters
            .iter()
            .filter(|m| m.is_balance() && m.applies(key, now))
            .map(|m| {
                let (used, reserved) = self.budgets.current(m, now);
                budget::balance_json(m, m.limit, used, reserved)
            })
            .collect();
        if let Some(pg) = &self.pg {
            match pg.balances(key, now).await {
                Ok(v) => out.extend(v),
                Err(e) => tracing::warn!(error = %e.message, "balances: database unavailable"),
            }
        }
        out
    }

    /// Post-flight (step 13): settles budgets and quotas to the record's actual amounts (or
    /// releases them when nothing reached the provider), refunds the token reservation to the
    /// actual count and releases the concurrency leases. Idempotent.
    pub async fn finish(&self, g: &mut RequestGov, rec: &crate::types::UsageRecord) {
        // MCP requests reach their server without a routing attempt.
        let reached = !rec.attempts.is_empty() || !rec.mcp_calls.is_empty();
        if let Some(b) = g.budget.take() {
            self.budgets.settle(b, rec, reached);
        }
        if let (Some(b), Some(rb)) = (g.redis_budget.take(), &self.redis_budgets) {
            rb.settle(b, rec, reached).await;
        }
        if let (Some(b), Some(pg)) = (g.pg_budget.take(), &self.pg) {
            let settled = pg.settle(b, rec, reached).await;
            if let (true, Some(rb)) = (g.pg_fallback, &self.redis_budgets) {
                // Admitted while Redis could not answer: squared with the Redis windows later.
                rb.settled_in_postgres(&settled);
            }
        }
        let t = &rec.tokens;
        let actual_tokens = t.total.max(t.input + t.output);
        match g.grant.take() {
            Some(Grant::Local(mut l)) => l.finish(actual_tokens),
            Some(Grant::Redis(mut r)) => redis::RedisLimiter::finish(&mut r, actual_tokens).await,
            None => {}
        }
    }
}
