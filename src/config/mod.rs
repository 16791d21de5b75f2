//! Validated configuration: the internal types the gateway runs on.
//!
//! `load(path)` = read → parse ([`raw`]) → validate (this file). Validation collects every
//! problem with its key path (`providers[1].base_url: ...`) instead of stopping at the first.
//! Start-up, `wharf check` and hot reload share this one path.

pub mod filters;
pub mod mcp;
pub mod provider;
pub mod raw;

use crate::keys::KeyHash;
use crate::types::routing::{RouterConfig, Strategy};
use crate::types::routing_policy::RoutingPolicy;
use raw::{RawConfig, RawKey, RawModel, RawProvider};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::types::{
    Deployments, HealthCheck, KeyType, Model, ModelType, Pricing, Provider, ProviderKind, Secret,
    VirtualKey,
};

/// `[telemetry]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// Share of requests traced when the client sent no sampling decision, in [0, 1].
    pub sample_ratio: f64,
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            service_name: "wharf".into(),
        }
    }
}

/// Problems found in a configuration file, each with its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(e)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub usage: UsageConfig,
    pub providers: Vec<Arc<Provider>>,
    pub models: HashMap<String, Arc<Model>>,
    /// Model names in file order (for `/v1/models`).
    pub model_order: Vec<String>,
    pub keys: HashMap<KeyHash, Arc<VirtualKey>>,
    /// Database mode: models per organisation (from Postgres), beside the file's global ones.
    pub org_models: HashMap<String, OrgModels>,
    pub database: Option<DatabaseConfig>,
    pub redis_url: Option<String>,
    /// Shared secret of the cache invalidation route (absent: no route).
    pub invalidation_secret: Option<Secret>,
    /// Non-fatal findings (e.g. a credential variable that is not set).
    pub warnings: Vec<String>,
    /// Circuit-breaker tuning of every router.
    pub routing: RouterConfig,
    /// Routing policies of organisations (from the file and, in database mode, Postgres).
    pub org_routing: HashMap<String, Arc<RoutingPolicy>>,
    pub telemetry: TelemetryConfig,
    /// Filter chains of the file (SPEC §9), as written: the control plane builds them into the
    /// snapshot's filter set.
    pub filters: Vec<filters::RawFilter>,
    /// Filter chains of the database (`filters` rows), in database mode.
    pub db_filters: Vec<filters::RawFilter>,
    /// Policies of the global, organisation and team scopes; trusted proxies.
    pub governance: crate::governance::GovConfig,
    /// MCP servers of the file and, in database mode, of every organisation (SPEC §8).
    pub mcp: mcp::McpCatalog,
}

/// One organisation's models (database mode).
#[derive(Debug, Default)]
pub struct OrgModels {
    pub by_name: HashMap<String, Arc<Model>>,
    pub order: Vec<String>,
}

/// `[database]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub url_env: String,
    pub key_cache_ttl: Duration,
    pub negative_cache_ttl: Duration,
    pub key_cache_capacity: u64,
    pub refresh_interval: Duration,
}

impl Config {
    /// The model `name` as the key's organisation sees it: its own model first, then a
    /// model of the file.
    pub fn model(&self, organisation_id: &str, name: &str) -> Option<&Arc<Model>> {
        self.org_models
            .get(organisation_id)
            .and_then(|o| o.by_name.get(name))
            .or_else(|| self.models.get(name))
    }

    /// Model names visible to an organisation, in order (its own, then the file's).
    pub fn model_names(&self, organisation_id: &str) -> Vec<&Arc<Model>> {
        let mut out: Vec<&Arc<Model>> = Vec::new();
        if let Some(o) = self.org_models.get(organisation_id) {
            out.extend(o.order.iter().filter_map(|n| o.by_name.get(n)));
        }
        out.extend(self.model_order.iter().filter_map(|n| self.models.get(n)));
        out
    }
}

/// `[server]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: String,
    pub admin_listen: Option<String>,
    pub threads: usize,
    pub max_request_bytes: usize,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub upstream_keepalive_pool_size: usize,
    pub log_level: String,
    pub log_json: bool,
    pub metrics_on_proxy: bool,
    /// Bearer token of the operator views: `/metrics` on the proxy listener (and on the admin
    /// listener once set), every provider in `/api/status`.
    pub operator_token: Option<Secret>,
    pub retry_on_reused_connection: bool,
    pub config_watch_interval: Duration,
    pub client_body_timeout: Duration,
    pub tls: Option<TlsConfig>,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub upstream_ca_file: Option<String>,
}

/// TLS on the client listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: String,
    pub key_file: String,
    pub h2: bool,
}

/// `[usage]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageConfig {
    pub path: Option<String>,
    pub spill_path: String,
    pub queue_capacity: usize,
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &str) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(vec![format!("{path}: cannot read: {e}")]))?;
    parse(&text)
}

/// Parses and validates configuration text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.message().to_string();
        let at = inner
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        if path.is_empty() || path == "." {
            ConfigError(vec![format!("{msg}{at}")])
        } else {
            ConfigError(vec![format!("{path}: {msg}{at}")])
        }
    })?;
    validate(raw)
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut errs = Vec::new();
    let mut warnings = Vec::new();
    let mut server = validate_server(&raw.server, &mut errs);
    if raw.usage.queue_capacity == 0 {
        errs.push("usage.queue_capacity: must be at least 1".into());
    }
    let usage = UsageConfig {
        path: raw.usage.path.clone(),
        spill_path: raw.usage.spill_path.clone(),
        queue_capacity: raw.usage.queue_capacity.max(1),
    };

    let mut providers: Vec<Arc<Provider>> = Vec::new();
    let mut by_name: HashMap<String, Arc<Provider>> = HashMap::new();
    for (i, p) in raw.providers.iter().enumerate() {
        let at = format!("providers[{i}]");
        if let Some(p) = validate_provider(&at, p, &mut errs, &mut warnings) {
            if by_name.contains_key(&p.name) {
                errs.push(format!("{at}.name: duplicate provider name `{}`", p.name));
                continue;
            }
            let p = Arc::new(p);
            by_name.insert(p.name.clone(), p.clone());
            providers.push(p);
        }
    }

    let r = &raw.routing;
    if r.failure_threshold == 0 {
        errs.push("routing.failure_threshold: must be at least 1".into());
    }
    for (k, v) in [
        ("failure_window_ms", r.failure_window_ms),
        ("cooldown_ms", r.cooldown_ms),
    ] {
        if v == 0 {
            errs.push(format!("routing.{k}: must be at least 1"));
        }
    }
    let routing = RouterConfig {
        failure_threshold: r.failure_threshold.max(1),
        failure_window: Duration::from_millis(r.failure_window_ms.max(1)),
        cooldown: Duration::from_millis(r.cooldown_ms.max(1)),
        probe_timeout: Duration::from_millis(r.cooldown_ms.clamp(1_000, 30_000)),
        ..RouterConfig::default()
    };
    let mut org_routing = HashMap::new();
    for (org, v) in &r.organisations {
        match RoutingPolicy::parse(v, &format!("routing.organisations.{org}")) {
            Ok(p) => {
                org_routing.insert(org.clone(), Arc::new(p));
            }
            Err(e) => errs.push(e),
        }
    }

    let t = &raw.telemetry;
    if !(0.0..=1.0).contains(&t.sample_ratio) || !t.sample_ratio.is_finite() {
        errs.push("telemetry.sample_ratio: must be between 0 and 1".into());
    }
    if let Some(e) = &t.otlp_endpoint {
        match e.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => errs.push(format!(
                "telemetry.otlp_endpoint: `{e}` is not an http(s) URL (e.g. http://127.0.0.1:4318/v1/traces)"
            )),
        }
    }
    let telemetry = TelemetryConfig {
        otlp_endpoint: t.otlp_endpoint.clone(),
        sample_ratio: t.sample_ratio.clamp(0.0, 1.0),
        service_name: t.service_name.clone(),
    };

    let mut models = HashMap::new();
    let mut model_order = Vec::new();
    for (i, m) in raw.models.iter().enumerate() {
        let at = format!("models[{i}]");
        if let Some(m) = validate_model(&at, m, &by_name, routing, &mut errs) {
            if models.contains_key(&m.name) {
                errs.push(format!("{at}.name: duplicate model name `{}`", m.name));
                continue;
            }
            model_order.push(m.name.clone());
            models.insert(m.name.clone(), Arc::new(m));
        }
    }

    let mcp = mcp::build_file_servers(&raw.mcp_servers, &mut errs, &mut warnings);
    let mcp_ids = mcp.file_ids();
    let mut keys = HashMap::new();
    let mut key_ids = HashSet::new();
    for (i, k) in raw.keys.iter().enumerate() {
        let at = format!("keys[{i}]");
        if let Some((hash, k)) = validate_key(&at, k, &models, &mcp_ids, &mut errs) {
            if !key_ids.insert(k.id.clone()) {
                errs.push(format!("{at}.id: duplicate key id `{}`", k.id));
                continue;
            }
            if keys.insert(hash, Arc::new(k)).is_some() {
                errs.push(format!("{at}.hash: duplicate key hash"));
            }
        }
    }

    let env_secret = |at: &str, var: &str, errs: &mut Vec<String>| -> Option<Secret> {
        if var.is_empty() {
            errs.push(format!("{at}: must name an environment variable"));
            return None;
        }
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .map(Secret::new)
    };
    let database = raw.database.as_ref().map(|d| {
        let url = env_secret("database.url_env", &d.url_env, &mut errs);
        if url.is_none() && !d.url_env.is_empty() {
            warnings.push(format!(
                "database.url_env: environment variable `{}` is not set; `wharf serve` needs it",
                d.url_env
            ));
        }
        for (k, v) in [
            ("key_cache_ttl_seconds", d.key_cache_ttl_seconds),
            ("refresh_interval_seconds", d.refresh_interval_seconds),
            ("key_cache_capacity", d.key_cache_capacity),
        ] {
            if v == 0 {
                errs.push(format!("database.{k}: must be at least 1"));
            }
        }
        DatabaseConfig {
            url: url.unwrap_or_else(|| Secret::new(String::new())),
            url_env: d.url_env.clone(),
            key_cache_ttl: Duration::from_secs(d.key_cache_ttl_seconds.max(1)),
            negative_cache_ttl: Duration::from_secs(d.negative_cache_ttl_seconds),
            key_cache_capacity: d.key_cache_capacity.max(1),
            refresh_interval: Duration::from_secs(d.refresh_interval_seconds.max(1)),
        }
    });
    let redis_url = raw.redis.as_ref().and_then(|r| {
        let v = env_secret("redis.url_env", &r.url_env, &mut errs);
        if v.is_none() && !r.url_env.is_empty() {
            warnings.push(format!(
                "redis.url_env: environment variable `{}` is not set; invalidations stay on this node",
                r.url_env
            ));
        }
        v.map(|s| s.expose().to_string())
    });
    server.operator_token = raw.server.operator_token_env.as_ref().and_then(|var| {
        let v = env_secret("server.operator_token_env", var, &mut errs);
        if v.is_none() && !var.is_empty() {
            warnings.push(format!(
                "server.operator_token_env: environment variable `{var}` is not set; operator views (metrics on the proxy listener, every provider in /api/status) answer 401"
            ));
        }
        v
    });
    if server.metrics_on_proxy && raw.server.operator_token_env.is_none() {
        warnings.push(
            "server.metrics_on_proxy: the proxy listener's /metrics needs server.operator_token_env and answers 401 without it"
                .into(),
        );
    }
    let invalidation_secret = raw
        .control
        .invalidation_secret_env
        .as_ref()
        .and_then(|var| {
            let v = env_secret("control.invalidation_secret_env", var, &mut errs);
            if v.is_none() && !var.is_empty() {
                warnings.push(format!(
                    "control.invalidation_secret_env: environment variable `{var}` is not set; the invalidation route is off"
                ));
            }
            v
        });
    let governance = crate::governance::build_config(
        &raw.policies,
        &raw.organisations,
        &raw.teams,
        &raw.governance,
        &raw.server.trusted_proxies,
        &mut errs,
    );
    let mut governance = governance;
    governance.meters = crate::governance::budget::build_meters(&raw.budgets, false, &mut errs);
    governance
        .meters
        .extend(crate::governance::budget::build_meters(
            &raw.quotas,
            true,
            &mut errs,
        ));
    if !errs.is_empty() {
        return Err(ConfigError(errs));
    }
    Ok(Config {
        server,
        usage,
        providers,
        models,
        model_order,
        keys,
        org_models: HashMap::new(),
        database,
        redis_url,
        invalidation_secret,
        warnings,
        routing,
        org_routing,
        telemetry,
        filters: raw.filters,
        db_filters: Vec::new(),
        governance,
        mcp,
    })
}

fn check_addr(at: &str, v: &str, errs: &mut Vec<String>) {
    if v.parse::<SocketAddr>().is_err() {
        errs.push(format!(
            "{at}: `{v}` is not a socket address (expected e.g. 0.0.0.0:8080)"
        ));
    }
}

fn validate_server(s: &raw::RawServer, errs: &mut Vec<String>) -> ServerConfig {
    check_addr("server.listen", &s.listen, errs);
    if let Some(a) = &s.admin_listen {
        check_addr("server.admin_listen", a, errs);
        if *a == s.listen {
            errs.push("server.admin_listen: must differ from server.listen".into());
        }
    }
    if s.threads == 0 || s.threads > 1024 {
        errs.push("server.threads: must be between 1 and 1024".into());
    }
    if s.max_request_bytes < 1024 {
        errs.push("server.max_request_bytes: must be at least 1024".into());
    }
    if !matches!(
        s.log_level.as_str(),
        "trace" | "debug" | "info" | "warn" | "error"
    ) {
        errs.push(format!(
            "server.log_level: `{}` is not one of trace, debug, info, warn, error",
            s.log_level
        ));
    }
    if !matches!(s.log_format.as_str(), "json" | "text") {
        errs.push(format!(
            "server.log_format: `{}` is not one of json, text",
            s.log_format
        ));
    }
    if s.config_watch_interval_ms == 0 {
        errs.push("server.config_watch_interval_ms: must be at least 1".into());
    }
    if let Some(f) = &s.upstream_ca_file {
        if std::fs::metadata(f).is_err() {
            errs.push(format!("server.upstream_ca_file: cannot read `{f}`"));
        }
    }
    let tls = s.tls.as_ref().map(|t| {
        for (k, f) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
            if std::fs::metadata(f).is_err() {
                errs.push(format!("server.tls.{k}: cannot read `{f}`"));
            }
        }
        TlsConfig {
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            h2: t.h2,
        }
    });
    ServerConfig {
        listen: s.listen.clone(),
        admin_listen: s.admin_listen.clone(),
        threads: s.threads.max(1),
        max_request_bytes: usize::try_from(s.max_request_bytes).unwrap_or(usize::MAX),
        grace_period_seconds: s.grace_period_seconds,
        graceful_shutdown_timeout_seconds: s.graceful_shutdown_timeout_seconds,
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        log_level: s.log_level.clone(),
        log_json: s.log_format == "json",
        metrics_on_proxy: s.metrics_on_proxy,
        operator_token: None,
        retry_on_reused_connection: s.retry_on_reused_connection,
        config_watch_interval: Duration::from_millis(s.config_watch_interval_ms.max(1)),
        client_body_timeout: Duration::from_millis(s.client_body_timeout_ms.max(1)),
        tls,
        pid_file: s
            .pid_file
            .clone()
            .unwrap_or_else(|| "/tmp/wharf.pid".into()),
        upgrade_sock: s
            .upgrade_sock
            .clone()
            .unwrap_or_else(|| "/tmp/wharf_upgrade.sock".into()),
        upstream_ca_file: s.upstream_ca_file.clone(),
    }
}

fn validate_provider(
    at: &str,
    p: &RawProvider,
    errs: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<Provider> {
    let before = errs.len();
    let kind = ProviderKind::parse(&p.kind);
    if kind.is_none() {
        errs.push(format!(
            "{at}.type: `{}` is not one of OPENAI, ANTHROPIC, GOOGLE, AZURE_OPENAI, VLLM, CUSTOM",
            p.kind
        ));
    }
    let api_key = match &p.api_key_env {
        Some(var) if var.is_empty() => {
            errs.push(format!(
                "{at}.api_key_env: must name an environment variable"
            ));
            None
        }
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                warnings.push(format!(
                    "{at}.api_key_env: environment variable `{var}` is not set; requests to provider `{}` will fail with provider_api_key_not_configured",
                    p.name
                ));
                None
            }
        },
        None => None,
    };
    let spec = provider::ProviderSpec {
        name: p.name.clone(),
        kind: kind.unwrap_or(ProviderKind::OpenAi),
        base_url: p.base_url.clone(),
        auth_header: p.auth_header.clone(),
        api_version: p.api_version.clone(),
        timeout_ms: p.timeout_ms,
        connect_timeout_ms: p.connect_timeout_ms,
        idle_timeout_ms: p.idle_timeout_ms,
        enabled: p.enabled,
        headers: p
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    let mut api_keys: Vec<Secret> = api_key.into_iter().collect();
    for (j, var) in p.api_key_envs.iter().enumerate() {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => api_keys.push(Secret::new(v)),
            _ if var.is_empty() => errs.push(format!(
                "{at}.api_key_envs[{j}]: must name an environment variable"
            )),
            _ => warnings.push(format!(
                "{at}.api_key_envs[{j}]: environment variable `{var}` is not set; provider `{}` uses its other credentials",
                p.name
            )),
        }
    }
    let health_check = p.health_check.as_ref().map(|h| {
        if !h.path.starts_with('/') {
            errs.push(format!("{at}.health_check.path: must start with `/`"));
        }
        if h.interval_ms == 0 || h.timeout_ms == 0 {
            errs.push(format!(
                "{at}.health_check: interval_ms and timeout_ms must be at least 1"
            ));
        }
        (
            h.path.clone(),
            Duration::from_millis(h.interval_ms.max(1)),
            Duration::from_millis(h.timeout_ms.max(1)),
        )
    });
    match provider::build_provider(&spec, api_keys, p.api_key_env.clone()) {
        Ok(mut built) if errs.len() == before => {
            built.health_check = health_check.map(|(path, interval, timeout)| HealthCheck {
                url: built.check_url(&path),
                path,
                interval,
                timeout,
            });
            Some(built)
        }
        Ok(_) => None,
        Err(problems) => {
            errs.extend(problems.into_iter().map(|e| format!("{at}.{e}")));
            None
        }
    }
}

/// USD per 1M tokens → nanos-USD per 1M tokens.
fn usd_to_nanos(at: &str, v: f64, errs: &mut Vec<String>) -> u64 {
    if !v.is_finite() || !(0.0..=1.0e6).contains(&v) {
        errs.push(format!(
            "{at}: must be a non-negative price in USD per 1M tokens"
        ));
        return 0;
    }
    (v * 1e9).round() as u64
}

fn validate_model(
    at: &str,
    m: &RawModel,
    providers: &HashMap<String, Arc<Provider>>,
    tuning: RouterConfig,
    errs: &mut Vec<String>,
) -> Option<Model> {
    let before = errs.len();
    if !provider::valid_name(&m.name) {
        errs.push(format!(
            "{at}.name: `{}` must be 1-128 characters of letters, digits, - _ . : / @",
            m.name
        ));
    }
    if m.slug.is_empty() || m.slug.len() > 256 || m.slug.contains(['"', '\\']) {
        errs.push(format!(
            "{at}.slug: `{}` is not a valid upstream model id",
            m.slug
        ));
    }
    let kind = ModelType::parse(&m.kind);
    if kind.is_none() {
        errs.push(format!(
            "{at}.type: `{}` is not one of chat, reasoning, image, embeddings, audio, moderation, transcription, tts",
            m.kind
        ));
    }
    let provider = providers.get(&m.provider).cloned();
    if provider.is_none() {
        errs.push(format!(
            "{at}.provider: no provider named `{}` is configured",
            m.provider
        ));
    }
    let pr = &m.pricing;
    let pricing = Pricing {
        input: usd_to_nanos(&format!("{at}.pricing.input"), pr.input, errs),
        output: usd_to_nanos(&format!("{at}.pricing.output"), pr.output, errs),
        cached: usd_to_nanos(
            &format!("{at}.pricing.cached"),
            pr.cached.unwrap_or(pr.input),
            errs,
        ),
        reasoning: usd_to_nanos(
            &format!("{at}.pricing.reasoning"),
            pr.reasoning.unwrap_or(pr.output),
            errs,
        ),
        // USD per image → nanos per image (the helper scales by 1e9 either way).
        image: usd_to_nanos(&format!("{at}.pricing.image"), pr.image, errs),
    };
    let strategy = match &m.strategy {
        Some(s) => s.parse::<Strategy>().unwrap_or_else(|e| {
            errs.push(format!("{at}.strategy: {e}"));
            Strategy::Failover
        }),
        None => Strategy::Failover,
    };
    let failover_on = match &m.failover_on {
        Some(list) => {
            crate::types::routing_policy::parse_triggers(list, &format!("{at}.failover_on"))
                .unwrap_or_else(|e| {
                    errs.push(e);
                    Vec::new()
                })
        }
        None => crate::types::routing_policy::DEFAULT_TRIGGERS.to_vec(),
    };
    if m.max_retries.is_some_and(|n| n > 8) {
        errs.push(format!("{at}.max_retries: at most 8"));
    }
    let mut extra = Vec::new();
    for (j, d) in m.deployments.iter().enumerate() {
        let dat = format!("{at}.deployments[{j}]");
        let Some(p) = providers.get(&d.provider) else {
            errs.push(format!(
                "{dat}.provider: no provider named `{}` is configured",
                d.provider
            ));
            continue;
        };
        let slug = d.slug.clone().unwrap_or_else(|| m.slug.clone());
        if !provider::valid_slug(&slug) {
            errs.push(format!(
                "{dat}.slug: `{slug}` is not a valid upstream model id"
            ));
        }
        if d.enabled {
            extra.push((
                p.clone(),
                slug,
                d.weight,
                d.priority.unwrap_or(j as u32 + 1),
            ));
        }
    }
    let policy = crate::types::policy::validated(at, &m.policies, errs);
    if errs.len() > before {
        return None;
    }
    let model = Model {
        name: m.name.clone(),
        slug: m.slug.clone(),
        kind: kind?,
        provider: provider?,
        pricing,
        enabled: m.enabled,
        uri_cache: Default::default(),
        weight: m.weight.unwrap_or(1),
        priority: m.priority.unwrap_or(0),
        deployments: None,
        policy,
    };
    let extra = extra
        .into_iter()
        .map(|(p, slug, w, prio)| model.deployment(p, slug, w, prio))
        .collect();
    Some(Model::with_deployments(
        model,
        "",
        extra,
        strategy,
        failover_on,
        m.max_retries,
        tuning,
    ))
}

fn validate_key(
    at: &str,
    k: &RawKey,
    models: &HashMap<String, Arc<Model>>,
    mcp_ids: &HashSet<&str>,
    errs: &mut Vec<String>,
) -> Option<(KeyHash, VirtualKey)> {
    let before = errs.len();
    if !provider::valid_name(&k.id) {
        errs.push(format!("{at}.id: `{}` is not a valid id", k.id));
    }
    let hash = KeyHash::from_hex(&k.hash);
    if hash.is_none() {
        errs.push(format!(
            "{at}.hash: must be the 64-character hex SHA-256 of the key (never the key itself)"
        ));
    }
    let kind = match k.kind.as_str() {
        "ORGANISATION" => Some(KeyType::Organisation),
        "TEAM" => Some(KeyType::Team),
        "USER" => Some(KeyType::User),
        other => {
            errs.push(format!(
                "{at}.type: `{other}` is not one of ORGANISATION, TEAM, USER"
            ));
            None
        }
    };
    if k.organisation_id.is_empty() {
        errs.push(format!("{at}.organisation_id: must not be empty"));
    }
    if kind == Some(KeyType::Team) && k.team_id.is_none() {
        errs.push(format!("{at}.team_id: a TEAM key needs a team_id"));
    }
    if kind == Some(KeyType::User) && k.user_id.is_none() {
        errs.push(format!("{at}.user_id: a USER key needs a user_id"));
    }
    let expires_at = k.expires_at.as_ref().and_then(|s| {
        match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
            Ok(t) => Some(t.unix_timestamp()),
            Err(e) => {
                errs.push(format!(
                    "{at}.expires_at: `{s}` is not an RFC 3339 timestamp: {e}"
                ));
                None
            }
        }
    });
    let routing = match &k.routing {
        Some(v) => match RoutingPolicy::parse(v, &format!("{at}.routing")) {
            Ok(p) if p.is_empty() => None,
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                errs.push(e);
                None
            }
        },
        None => None,
    };
    let mut all_models = false;
    let mut granted = HashSet::new();
    for (j, m) in k.models.iter().enumerate() {
        if m == "*" {
            all_models = true;
        } else if !models.contains_key(m) {
            errs.push(format!(
                "{at}.models[{j}]: no model named `{m}` is configured"
            ));
        } else {
            granted.insert(m.clone());
        }
    }
    let mut mcp_servers = HashSet::new();
    for (j, m) in k.mcp_servers.iter().enumerate() {
        if m != "*" && !mcp_ids.contains(m.as_str()) {
            errs.push(format!(
                "{at}.mcp_servers[{j}]: no MCP server with id `{m}` is configured"
            ));
        } else {
            mcp_servers.insert(m.clone());
        }
    }
    let key_policy = crate::types::policy::validated(at, &k.policies, errs);
    if errs.len() > before {
        return None;
    }
    Some((
        hash?,
        VirtualKey {
            id: k.id.clone(),
            name: k.name.clone(),
            prefix: k.prefix.clone(),
            kind: kind?,
            organisation_id: k.organisation_id.clone(),
            team_id: k.team_id.clone(),
            user_id: k.user_id.clone(),
            expires_at,
            revoked: k.revoked,
            all_models,
            models: granted,
            routing,
            policies: crate::types::policy::KeyPolicies {
                key: key_policy,
                ..Default::default()
            },
            mcp_servers,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[[providers]]
name = "p"
type = "OPENAI"
base_url = "http://127.0.0.1:1"

[[models]]
name = "m"
slug = "s"
provider = "p"
pricing = { input = 0.15, output = 0.6 }

[[keys]]
id = "k"
hash = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
organisation_id = "o"
models = ["m"]
"#;

    #[test]
    fn minimal_config_loads() {
        let c = parse(MIN).expect("valid");
        let m = &c.models["m"];
        assert_eq!(m.pricing.input, 150_000_000);
        assert_eq!(m.pricing.cached, 150_000_000);
        assert_eq!(m.pricing.reasoning, 600_000_000);
        assert_eq!(m.provider.base_path, "/v1");
        assert_eq!(m.provider.authority, "127.0.0.1:1");
        assert_eq!(c.server.listen, "0.0.0.0:8080");
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let bad = MIN.replace("base_url", "bse_url");
        let e = parse(&bad).expect_err("invalid");
        let s = e.to_string();
        assert!(s.contains("providers[0]"), "{s}");
        assert!(s.contains("bse_url"), "{s}");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_paths() {
        let bad = MIN
            .replace("provider = \"p\"", "provider = \"nope\"")
            .replace("models = [\"m\"]", "models = [\"m\", \"x\"]")
            .replace("OPENAI", "OPENAIX");
        let e = parse(&bad).expect_err("invalid");
        let s = e.to_string();
        assert!(s.contains("providers[0].type"), "{s}");
        assert!(s.contains("models[0].provider"), "{s}");
        assert!(s.contains("keys[0].models"), "{s}");
    }

    #[test]
    fn health_checks_parse_and_are_checked() {
        let with = |hc: &str| {
            MIN.replace(
                "base_url = \"http://127.0.0.1:1\"",
                &format!("base_url = \"http://127.0.0.1:1/v1\"\nhealth_check = {hc}"),
            )
        };
        let c = parse(&with("{ interval_ms = 250 }")).expect("valid");
        let p = &c.models["m"].provider;
        let h = p.health_check.clone().expect("a check");
        assert_eq!(h.path, "/health");
        assert_eq!(h.interval, Duration::from_millis(250));
        assert_eq!(
            h.url, "http://127.0.0.1:1/health",
            "on the server root, not under /v1"
        );
        let s = parse(&with("{ path = \"health\", timeout_ms = 0 }"))
            .expect_err("invalid")
            .to_string();
        assert!(s.contains("providers[0].health_check.path"), "{s}");
        assert!(s.contains("providers[0].health_check: interval_ms"), "{s}");
    }

    #[test]
    fn bad_hash_rejected() {
        let bad = MIN.replace("2cf24dba", "zzzz");
        let s = parse(&bad).expect_err("invalid").to_string();
        assert!(s.contains("keys[0].hash"), "{s}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("sk-1".into())), "Secret(***)");
    }
}
