//! Raw configuration: the TOML file exactly as written, nothing validated yet.
//!
//! Every struct denies unknown fields so that a typo is an error with its path, never a silently
//! ignored setting. Defaults live in named `default_*` functions.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listeners, workers, limits.
    #[serde(default)]
    pub server: RawServer,
    /// Usage record sink.
    #[serde(default)]
    pub usage: RawUsage,
    /// Upstream providers.
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    /// Client-facing models.
    #[serde(default)]
    pub models: Vec<RawModel>,
    /// Virtual keys (SHA-256 hashes only).
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// Database mode: Postgres holds providers, models, keys and grants.
    pub database: Option<RawDatabase>,
    /// Redis: fan-out of cache invalidations between nodes.
    pub redis: Option<RawRedis>,
    /// Control-plane settings of the data plane.
    #[serde(default)]
    pub control: RawControl,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// Filter chains (`[[filters]]`, see `super::filters`).
    #[serde(default)]
    pub filters: Vec<super::filters::RawFilter>,
    /// Global policy (SPEC §7).
    pub policies: Option<crate::types::policy::Policy>,
    /// Policies of organisations and teams, by id.
    #[serde(default)]
    pub organisations: BTreeMap<String, crate::governance::RawScope>,
    #[serde(default)]
    pub teams: BTreeMap<String, crate::governance::RawScope>,
    /// Rate-limit store behaviour.
    #[serde(default)]
    pub governance: crate::governance::RawGovernance,
    /// Budgets and quotas (SPEC §7).
    #[serde(default)]
    pub budgets: Vec<crate::governance::budget::RawMeter>,
    #[serde(default)]
    pub quotas: Vec<crate::governance::budget::RawMeter>,
    /// MCP servers (SPEC §8, see `super::mcp`).
    #[serde(default)]
    pub mcp_servers: Vec<super::mcp::RawMcpServer>,
}

/// `[telemetry]`: OpenTelemetry traces over OTLP/HTTP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// OTLP/HTTP traces endpoint (e.g. `http://127.0.0.1:4318/v1/traces`); none: no export.
    pub otlp_endpoint: Option<String>,
    /// Share of requests traced when the client sent no `traceparent` decision.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        RawTelemetry {
            otlp_endpoint: None,
            sample_ratio: default_sample_ratio(),
            service_name: default_service_name(),
        }
    }
}

fn default_sample_ratio() -> f64 {
    1.0
}
fn default_service_name() -> String {
    "wharf".into()
}

/// `[routing]`: circuit-breaker tuning and organisation routing policies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// Failures within `failure_window_ms` that eject a deployment.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "default_failure_window_ms")]
    pub failure_window_ms: u64,
    /// How long an ejected deployment gets no traffic (an upstream `Retry-After` overrides it).
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
    /// Organisation id → routing policy in Odock's shape (SPEC §5).
    #[serde(default)]
    pub organisations: BTreeMap<String, serde_json::Value>,
}

impl Default for RawRouting {
    fn default() -> Self {
        RawRouting {
            failure_threshold: default_failure_threshold(),
            failure_window_ms: default_failure_window_ms(),
            cooldown_ms: default_cooldown_ms(),
            organisations: BTreeMap::new(),
        }
    }
}

fn default_failure_threshold() -> u32 {
    3
}
fn default_failure_window_ms() -> u64 {
    10_000
}
fn default_cooldown_ms() -> u64 {
    30_000
}

/// `[database]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// Environment variable holding the Postgres URL (default `DATABASE_URL`).
    #[serde(default = "default_database_env")]
    pub url_env: String,
    /// How long a key lookup stays cached (bounded by the key's own expiry).
    #[serde(default = "default_key_ttl")]
    pub key_cache_ttl_seconds: u64,
    /// How long an unknown key stays cached as unknown.
    #[serde(default = "default_negative_ttl")]
    pub negative_cache_ttl_seconds: u64,
    /// Keys kept in memory at most.
    #[serde(default = "default_key_cache_capacity")]
    pub key_cache_capacity: u64,
    /// Safety net: full reload of the catalog every so often.
    #[serde(default = "default_refresh")]
    pub refresh_interval_seconds: u64,
}

/// `[redis]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// Environment variable holding the Redis URL (default `REDIS_URL`).
    #[serde(default = "default_redis_env")]
    pub url_env: String,
}

/// `[control]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    /// Environment variable holding the shared secret of `POST /v1/internal/cache/invalidate`;
    /// without it the route does not exist.
    pub invalidation_secret_env: Option<String>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: Option<String>,
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u64,
    #[serde(default = "default_grace_period")]
    pub grace_period_seconds: u64,
    #[serde(default = "default_shutdown_timeout")]
    pub graceful_shutdown_timeout_seconds: u64,
    #[serde(default = "default_keepalive_pool")]
    pub upstream_keepalive_pool_size: usize,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// Also serve `/metrics` on the proxy listener (with the operator token only).
    #[serde(default)]
    pub metrics_on_proxy: bool,
    /// Environment variable holding the operator's bearer token: `/metrics` on the proxy
    /// listener, and every provider's reachability in `/api/status`.
    pub operator_token_env: Option<String>,
    /// Replay a request, to the same provider, when a pooled upstream connection fails before
    /// the response headers (the provider had closed it). A provider that did process the
    /// first send then generates twice; `false` answers 502 instead.
    #[serde(default = "default_true")]
    pub retry_on_reused_connection: bool,
    #[serde(default = "default_watch_ms")]
    pub config_watch_interval_ms: u64,
    /// Longest wait for a client's request body.
    #[serde(default = "default_body_timeout_ms")]
    pub client_body_timeout_ms: u64,
    #[serde(default)]
    pub tls: Option<RawTls>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    /// CA bundle (PEM) for verifying https providers; the system roots when absent.
    pub upstream_ca_file: Option<String>,
    /// Peers (CIDR) whose `X-Forwarded-For` header names the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            threads: default_threads(),
            max_request_bytes: default_max_request_bytes(),
            grace_period_seconds: default_grace_period(),
            graceful_shutdown_timeout_seconds: default_shutdown_timeout(),
            upstream_keepalive_pool_size: default_keepalive_pool(),
            log_level: default_log_level(),
            log_format: default_log_format(),
            metrics_on_proxy: false,
            operator_token_env: None,
            retry_on_reused_connection: true,
            config_watch_interval_ms: default_watch_ms(),
            client_body_timeout_ms: default_body_timeout_ms(),
            tls: None,
            pid_file: None,
            upgrade_sock: None,
            upstream_ca_file: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[server.tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: String,
    pub key_file: String,
    #[serde(default = "default_true")]
    pub h2: bool,
}

/// `[usage]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    /// JSON Lines file the usage records are appended to.
    pub path: Option<String>,
    /// Database mode: where records wait while Postgres is unreachable.
    #[serde(default = "default_spill_path")]
    pub spill_path: String,
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

impl Default for RawUsage {
    fn default() -> Self {
        RawUsage {
            path: None,
            spill_path: default_spill_path(),
            queue_capacity: default_queue_capacity(),
        }
    }
}

/// `[[providers]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub base_url: String,
    /// Name of the environment variable that holds the provider credential.
    pub api_key_env: Option<String>,
    /// Further credentials (environment variable names), used in turn with `api_key_env`; one the
    /// provider rejects (401) or throttles (429) is set aside for a while.
    #[serde(default)]
    pub api_key_envs: Vec<String>,
    /// Header that carries the credential for `CUSTOM` providers (default `authorization`).
    pub auth_header: Option<String>,
    /// `api-version` query parameter for `AZURE_OPENAI`.
    pub api_version: Option<String>,
    /// Longest wait for one read from the provider: the first byte, or the gap between two
    /// streamed chunks.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Extra headers sent with every upstream request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Active health checks (e.g. a vLLM replica's `GET /health`).
    pub health_check: Option<RawHealthCheck>,
}

/// `[providers.health_check]`: a `GET` of `path` (on the server root, not under the API base
/// path) every `interval_ms`; an answer other than 2xx within `timeout_ms` takes the provider
/// out of routing until a check passes again.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_health_path() -> String {
    "/health".into()
}
fn default_health_interval_ms() -> u64 {
    5000
}
fn default_health_timeout_ms() -> u64 {
    1000
}

/// `[[models]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: String,
    pub slug: String,
    #[serde(rename = "type", default = "default_model_type")]
    pub kind: String,
    pub provider: String,
    #[serde(default)]
    pub pricing: RawPricing,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Share of traffic of the model's own deployment (`weighted`), and its failover rank.
    pub weight: Option<u32>,
    pub priority: Option<u32>,
    /// Further deployments (SPEC §5): the same model on other providers, slugs or credentials.
    #[serde(default)]
    pub deployments: Vec<RawDeployment>,
    /// How a deployment is chosen: failover (default), round_robin, weighted, least_latency,
    /// least_busy.
    pub strategy: Option<String>,
    /// When to try the next deployment: 5xx, timeout, rate_limit, connect, any.
    pub failover_on: Option<Vec<String>>,
    /// Further attempts after the first (default: every other deployment once).
    pub max_retries: Option<u32>,
    pub policies: Option<crate::types::policy::Policy>,
}

/// `[[models.deployments]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    pub provider: String,
    /// Upstream model id on that provider (default: the model's slug).
    pub slug: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Failover rank, lower first (default: after the model's own deployment, in file order).
    pub priority: Option<u32>,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_weight() -> u32 {
    1
}

/// Prices in USD per 1M tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPricing {
    #[serde(default)]
    pub input: f64,
    #[serde(default)]
    pub output: f64,
    /// Cached input tokens; defaults to the input price.
    pub cached: Option<f64>,
    /// Reasoning tokens; defaults to the output price.
    pub reasoning: Option<f64>,
    /// USD per generated image.
    #[serde(default)]
    pub image: f64,
}

/// `[[keys]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: String,
    pub name: Option<String>,
    /// Lower-case hex SHA-256 of the secret.
    pub hash: String,
    /// Short display prefix of the secret (never the secret).
    pub prefix: Option<String>,
    #[serde(rename = "type", default = "default_key_type")]
    pub kind: String,
    pub organisation_id: String,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    /// RFC 3339 timestamp.
    pub expires_at: Option<String>,
    #[serde(default)]
    pub revoked: bool,
    /// Granted model names; `"*"` grants every model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Routing policy in Odock's shape (SPEC §5); overrides the organisation's.
    pub routing: Option<serde_json::Value>,
    pub policies: Option<crate::types::policy::Policy>,
    /// Granted MCP servers (ids or slugs of `[[mcp_servers]]`); `"*"` grants every one.
    #[serde(default)]
    pub mcp_servers: Vec<String>,
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_admin_listen() -> Option<String> {
    Some("127.0.0.1:9090".into())
}
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}
fn default_max_request_bytes() -> u64 {
    8 * 1024 * 1024
}
fn default_grace_period() -> u64 {
    5
}
fn default_shutdown_timeout() -> u64 {
    5
}
fn default_keepalive_pool() -> usize {
    256
}
fn default_log_level() -> String {
    "info".into()
}
fn default_log_format() -> String {
    "json".into()
}
fn default_true() -> bool {
    true
}
fn default_watch_ms() -> u64 {
    1000
}
fn default_spill_path() -> String {
    "usage-spill.jsonl".into()
}
fn default_database_env() -> String {
    "DATABASE_URL".into()
}
fn default_redis_env() -> String {
    "REDIS_URL".into()
}
fn default_key_ttl() -> u64 {
    300
}
fn default_negative_ttl() -> u64 {
    5
}
fn default_key_cache_capacity() -> u64 {
    100_000
}
fn default_refresh() -> u64 {
    60
}
fn default_body_timeout_ms() -> u64 {
    30_000
}
fn default_queue_capacity() -> usize {
    65536
}
fn default_timeout_ms() -> u64 {
    300_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_model_type() -> String {
    "chat".into()
}
fn default_key_type() -> String {
    "ORGANISATION".into()
}
