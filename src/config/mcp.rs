//! MCP servers as the gateway knows them (SPEC §8), read from the TOML file (`[[mcp_servers]]`)
//! or from Postgres (`mcp_servers`): both end in the same [`McpServer`].

use super::Secret;
use crate::types::policy::Policy;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub use crate::types::mcp::Transport;

/// OAuth2 client-credentials settings of an MCP server.
#[derive(Debug)]
pub struct OAuth2 {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: Option<String>,
    pub audience: Option<String>,
    /// Send the client credentials as HTTP Basic (RFC 6749 §2.3.1) rather than in the form.
    pub basic_auth: bool,
}

/// How Wharf authenticates to the MCP server. The caller's credential is never forwarded.
#[derive(Debug)]
pub enum UpstreamAuth {
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: Basic base64(user:password)`, prepared at load.
    Basic(Secret),
    /// Client-credentials token, fetched and cached until it expires.
    OAuth2(OAuth2),
}

impl UpstreamAuth {
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamAuth::None => "NONE",
            UpstreamAuth::Bearer(_) => "BEARER",
            UpstreamAuth::Basic(_) => "BASIC",
            UpstreamAuth::OAuth2(_) => "OAUTH2",
        }
    }
}

/// Prices in nanos-USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct McpPricing {
    pub per_call: u64,
    pub per_input_byte: u64,
    pub per_output_byte: u64,
}

impl McpPricing {
    /// Cost of one call with `bytes_in` request and `bytes_out` response bytes.
    pub fn cost(&self, bytes_in: u64, bytes_out: u64) -> u64 {
        self.per_call
            .saturating_add(self.per_input_byte.saturating_mul(bytes_in))
            .saturating_add(self.per_output_byte.saturating_mul(bytes_out))
    }
}

/// One MCP server.
#[derive(Debug)]
pub struct McpServer {
    /// The database uuid, or in the file the configured `id` (default: the slug).
    pub id: String,
    /// `None`: a file server open to every organisation (keys still need a grant).
    pub organisation_id: Option<String>,
    pub name: String,
    pub slug: String,
    pub transport: Transport,
    /// Endpoint of HTTP transports, without a trailing slash.
    pub url: Option<String>,
    pub command: Option<String>,
    pub args: Vec<String>,
    /// Environment of a STDIO process (only this, plus a minimal `PATH`).
    pub env: Vec<(String, Secret)>,
    pub auth: UpstreamAuth,
    pub timeout: Duration,
    /// Whitelist of tools when non-empty.
    pub allowed_tools: HashSet<String>,
    pub blocked_tools: HashSet<String>,
    /// Lower-cased keywords that block a `tools/call` containing one.
    pub keywords: Vec<String>,
    pub pricing: McpPricing,
    pub policy: Option<Arc<Policy>>,
    pub enabled: bool,
    /// STDIO: most processes (sessions) at once.
    pub max_sessions: usize,
    /// STDIO: a session unused this long ends (its process is stopped).
    pub idle_timeout: Duration,
}

impl McpServer {
    /// Whether guardrails may remove tools from a `tools/list` answer.
    pub fn filters_tools(&self) -> bool {
        !self.allowed_tools.is_empty() || !self.blocked_tools.is_empty()
    }

    /// Whether `tool` may be listed and called.
    pub fn tool_allowed(&self, tool: &str) -> bool {
        (self.allowed_tools.is_empty() || self.allowed_tools.contains(tool))
            && !self.blocked_tools.contains(tool)
    }
}

/// Every MCP server of a snapshot.
#[derive(Debug, Default)]
pub struct McpCatalog {
    /// Servers of the file, in file order.
    pub file: Vec<Arc<McpServer>>,
    /// Servers of the database, by organisation id.
    pub by_org: HashMap<String, Vec<Arc<McpServer>>>,
}

impl McpCatalog {
    /// The server `reference` (slug or id) visible to organisation `org`, enabled or not.
    /// The organisation's own (database) servers come first.
    pub fn find(&self, org: &str, reference: &str) -> Option<&Arc<McpServer>> {
        let hit = |s: &&Arc<McpServer>| s.slug == reference || s.id == reference;
        self.by_org
            .get(org)
            .and_then(|v| v.iter().find(hit))
            .or_else(|| {
                self.file
                    .iter()
                    .filter(|s| s.organisation_id.as_deref().is_none_or(|o| o == org))
                    .find(hit)
            })
    }

    /// The enabled servers `key` may reach: `{"id","slug","name","transport"}`, by slug.
    pub fn granted(&self, key: &super::VirtualKey) -> Vec<serde_json::Value> {
        let org = key.organisation_id.as_str();
        let mut out: Vec<&Arc<McpServer>> = self
            .by_org
            .get(org)
            .into_iter()
            .flatten()
            .chain(
                self.file
                    .iter()
                    .filter(|s| s.organisation_id.as_deref().is_none_or(|o| o == org)),
            )
            .filter(|s| s.enabled && key.may_use_mcp(&s.id))
            .collect();
        out.sort_by(|a, b| a.slug.cmp(&b.slug));
        out.dedup_by(|a, b| a.slug == b.slug);
        out.iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id,
                    "slug": s.slug,
                    "name": s.name,
                    "transport": s.transport.as_str(),
                })
            })
            .collect()
    }

    /// Ids of the file's servers, for grant validation.
    pub fn file_ids(&self) -> HashSet<&str> {
        self.file.iter().map(|s| s.id.as_str()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.file.is_empty() && self.by_org.is_empty()
    }
}

/// Whether `s` may be a slug: lower-case letters, digits, `_ . -`, starting alphanumeric.
pub fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// Whether `s` is a canonical uuid.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

/// Whether `s` can name a server in `/v1/mcp/{ref}` (a slug, a uuid or a file id).
pub fn valid_ref(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-:@".contains(&b))
}

// === TOML ===

/// `[[mcp_servers]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpServer {
    pub slug: String,
    /// Id used by key grants and usage records (default: the slug).
    pub id: Option<String>,
    pub name: Option<String>,
    /// Only keys of this organisation may reach it (default: any organisation's, with a grant).
    pub organisation_id: Option<String>,
    #[serde(default = "default_transport")]
    pub transport: String,
    pub url: Option<String>,
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment of a STDIO process: literal values.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment of a STDIO process taken from Wharf's environment: `NAME = "WHARF_VAR"`.
    #[serde(default)]
    pub env_from: BTreeMap<String, String>,
    #[serde(default)]
    pub auth: RawMcpAuth,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub allowed_tools: Vec<String>,
    #[serde(default)]
    pub blocked_tools: Vec<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub pricing: RawMcpPricing,
    #[serde(default = "default_true")]
    pub enabled: bool,
    pub policies: Option<Policy>,
    /// STDIO: most processes (one per session) at once.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// STDIO: an unused session's process is stopped after this long.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

/// `auth` of an MCP server; secrets are names of environment variables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpAuth {
    #[serde(rename = "type", default = "default_auth")]
    pub kind: String,
    /// BEARER: the token's environment variable.
    pub token_env: Option<String>,
    /// BASIC.
    pub username: Option<String>,
    pub password_env: Option<String>,
    /// OAUTH2 client credentials.
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    /// `basic` (default) or `post`: how the client authenticates to the token endpoint.
    pub client_auth: Option<String>,
}

/// `pricing` of an MCP server, in nanos-USD (1 USD = 10^9).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpPricing {
    #[serde(default)]
    pub per_call_nanos: u64,
    #[serde(default)]
    pub per_input_byte_nanos: u64,
    #[serde(default)]
    pub per_output_byte_nanos: u64,
}

fn default_transport() -> String {
    "STREAMABLE_HTTP".into()
}
fn default_auth() -> String {
    "NONE".into()
}
fn default_timeout_ms() -> u64 {
    60_000
}
fn default_true() -> bool {
    true
}
pub fn default_max_sessions() -> usize {
    16
}
pub fn default_idle_timeout_ms() -> u64 {
    300_000
}

/// Settings common to both sources, before checks.
pub struct ServerSpec {
    pub id: String,
    pub organisation_id: Option<String>,
    pub name: String,
    pub slug: String,
    pub transport: String,
    pub url: Option<String>,
    pub command: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, Secret)>,
    pub auth: UpstreamAuth,
    pub timeout_ms: u64,
    pub allowed_tools: Vec<String>,
    pub blocked_tools: Vec<String>,
    pub keywords: Vec<String>,
    pub pricing: McpPricing,
    pub policy: Option<Arc<Policy>>,
    pub enabled: bool,
    pub max_sessions: usize,
    pub idle_timeout_ms: u64,
}

/// Checks a spec and builds the server; problems are `field: message`.
pub fn build_server(spec: ServerSpec) -> Result<McpServer, Vec<String>> {
    let mut errs = Vec::new();
    if !valid_slug(&spec.slug) || is_uuid(&spec.slug) {
        errs.push(format!(
            "slug: `{}` must be lower-case letters, digits, _ . - (and not a uuid)",
            spec.slug
        ));
    }
    if !valid_ref(&spec.id) {
        errs.push(format!("id: `{}` is not a valid id", spec.id));
    }
    let transport = Transport::parse(&spec.transport);
    let url = match transport {
        None => {
            errs.push(format!(
                "transport: `{}` is not one of STREAMABLE_HTTP, SSE, STDIO",
                spec.transport
            ));
            None
        }
        Some(Transport::Stdio) => {
            if spec.command.as_deref().is_none_or(str::is_empty) {
                errs.push("command: a STDIO server needs a command".into());
            }
            None
        }
        Some(_) => match spec.url.as_deref() {
            Some(u) => match u.parse::<http::Uri>() {
                Ok(p) if matches!(p.scheme_str(), Some("http" | "https")) && p.host().is_some() => {
                    Some(u.trim_end_matches('/').to_string())
                }
                _ => {
                    errs.push(format!("url: `{u}` is not an http(s) URL"));
                    None
                }
            },
            None => {
                errs.push(format!(
                    "url: a {} server needs a url",
                    spec.transport.as_str()
                ));
                None
            }
        },
    };
    if spec.timeout_ms == 0 {
        errs.push("timeout_ms: must be at least 1".into());
    }
    if spec.max_sessions == 0 {
        errs.push("max_sessions: must be at least 1".into());
    }
    if spec.idle_timeout_ms == 0 {
        errs.push("idle_timeout_ms: must be at least 1".into());
    }
    if let UpstreamAuth::OAuth2(o) = &spec.auth {
        match o.token_url.parse::<http::Uri>() {
            Ok(p) if matches!(p.scheme_str(), Some("http" | "https")) && p.host().is_some() => {}
            _ => errs.push(format!(
                "auth.token_url: `{}` is not an http(s) URL",
                o.token_url
            )),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(McpServer {
        id: spec.id,
        organisation_id: spec.organisation_id,
        name: spec.name,
        slug: spec.slug,
        transport: transport.unwrap_or(Transport::StreamableHttp),
        url,
        command: spec.command,
        args: spec.args,
        env: spec.env,
        auth: spec.auth,
        timeout: Duration::from_millis(spec.timeout_ms),
        allowed_tools: spec.allowed_tools.into_iter().collect(),
        blocked_tools: spec.blocked_tools.into_iter().collect(),
        keywords: spec
            .keywords
            .into_iter()
            .map(|k| k.to_lowercase())
            .filter(|k| !k.is_empty())
            .collect(),
        pricing: spec.pricing,
        policy: spec.policy,
        enabled: spec.enabled,
        max_sessions: spec.max_sessions,
        idle_timeout: Duration::from_millis(spec.idle_timeout_ms),
    })
}

/// The `Authorization` value of HTTP Basic.
pub fn basic_value(user: &str, password: &str) -> Secret {
    use base64::Engine;
    let raw = format!("{user}:{password}");
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
}

fn env_var(
    at: &str,
    var: Option<&String>,
    errs: &mut Vec<String>,
    warn: &mut Vec<String>,
) -> Secret {
    match var {
        None => {
            errs.push(format!("{at}: required"));
            Secret::new(String::new())
        }
        Some(v) if v.is_empty() => {
            errs.push(format!("{at}: must name an environment variable"));
            Secret::new(String::new())
        }
        Some(v) => match std::env::var(v) {
            Ok(s) if !s.is_empty() => Secret::new(s),
            _ => {
                warn.push(format!(
                    "{at}: environment variable `{v}` is not set; calls to this MCP server will fail with mcp_auth_error"
                ));
                Secret::new(String::new())
            }
        },
    }
}

/// Builds the file's MCP servers (`mcp_servers[i]` paths in errors).
pub fn build_file_servers(
    raw: &[RawMcpServer],
    errs: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> McpCatalog {
    let mut out = McpCatalog::default();
    let mut ids = HashSet::new();
    let mut slugs = HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        let at = format!("mcp_servers[{i}]");
        let before = errs.len();
        let a = &r.auth;
        let auth = match a.kind.as_str() {
            "" | "NONE" => UpstreamAuth::None,
            "BEARER" => UpstreamAuth::Bearer(env_var(
                &format!("{at}.auth.token_env"),
                a.token_env.as_ref(),
                errs,
                warnings,
            )),
            "BASIC" => {
                let pw = env_var(
                    &format!("{at}.auth.password_env"),
                    a.password_env.as_ref(),
                    errs,
                    warnings,
                );
                let user = a.username.clone().unwrap_or_default();
                if user.is_empty() {
                    errs.push(format!("{at}.auth.username: required for BASIC"));
                }
                UpstreamAuth::Basic(basic_value(&user, pw.expose()))
            }
            "OAUTH2" => {
                let secret = env_var(
                    &format!("{at}.auth.client_secret_env"),
                    a.client_secret_env.as_ref(),
                    errs,
                    warnings,
                );
                let basic_auth = match a.client_auth.as_deref() {
                    None | Some("basic") => true,
                    Some("post") => false,
                    Some(o) => {
                        errs.push(format!(
                            "{at}.auth.client_auth: `{o}` is not one of basic, post"
                        ));
                        true
                    }
                };
                UpstreamAuth::OAuth2(OAuth2 {
                    token_url: a.token_url.clone().unwrap_or_else(|| {
                        errs.push(format!("{at}.auth.token_url: required for OAUTH2"));
                        String::new()
                    }),
                    client_id: a.client_id.clone().unwrap_or_else(|| {
                        errs.push(format!("{at}.auth.client_id: required for OAUTH2"));
                        String::new()
                    }),
                    client_secret: secret,
                    scope: a.scope.clone(),
                    audience: a.audience.clone(),
                    basic_auth,
                })
            }
            other => {
                errs.push(format!(
                    "{at}.auth.type: `{other}` is not one of NONE, BEARER, BASIC, OAUTH2"
                ));
                UpstreamAuth::None
            }
        };
        let mut env: Vec<(String, Secret)> = r
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
            .collect();
        for (k, var) in &r.env_from {
            env.push((
                k.clone(),
                env_var(&format!("{at}.env_from.{k}"), Some(var), errs, warnings),
            ));
        }
        for (k, _) in &env {
            if k.is_empty() || k.contains(['=', '\0']) {
                errs.push(format!("{at}.env: `{k}` is not a variable name"));
            }
        }
        let policy = crate::types::policy::validated(&at, &r.policies, errs);
        let spec = ServerSpec {
            id: r.id.clone().unwrap_or_else(|| r.slug.clone()),
            organisation_id: r.organisation_id.clone(),
            name: r.name.clone().unwrap_or_else(|| r.slug.clone()),
            slug: r.slug.clone(),
            transport: r.transport.clone(),
            url: r.url.clone(),
            command: r.command.clone(),
            args: r.args.clone(),
            env,
            auth,
            timeout_ms: r.timeout_ms,
            allowed_tools: r.allowed_tools.clone(),
            blocked_tools: r.blocked_tools.clone(),
            keywords: r.keywords.clone(),
            pricing: McpPricing {
                per_call: r.pricing.per_call_nanos,
                per_input_byte: r.pricing.per_input_byte_nanos,
                per_output_byte: r.pricing.per_output_byte_nanos,
            },
            policy,
            enabled: r.enabled,
            max_sessions: r.max_sessions,
            idle_timeout_ms: r.idle_timeout_ms,
        };
        match build_server(spec) {
            Ok(s) if errs.len() == before => {
                if !ids.insert(s.id.clone()) {
                    errs.push(format!("{at}.id: duplicate MCP server id `{}`", s.id));
                    continue;
                }
                if !slugs.insert((s.organisation_id.clone(), s.slug.clone())) {
                    errs.push(format!("{at}.slug: duplicate MCP server slug `{}`", s.slug));
                    continue;
                }
                out.file.push(Arc::new(s));
            }
            Ok(_) => {}
            Err(problems) => errs.extend(problems.into_iter().map(|p| format!("{at}.{p}"))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (McpCatalog, Vec<String>) {
        #[derive(Deserialize)]
        struct Doc {
            mcp_servers: Vec<RawMcpServer>,
        }
        let d: Doc = toml::from_str(text).expect("toml");
        let mut errs = Vec::new();
        let mut warn = Vec::new();
        let c = build_file_servers(&d.mcp_servers, &mut errs, &mut warn);
        (c, errs)
    }

    #[test]
    fn servers_load_and_resolve_by_slug_or_id() {
        let (c, errs) = parse(
            r#"
[[mcp_servers]]
slug = "tools"
url = "http://127.0.0.1:9/mcp/"
blocked_tools = ["rm"]
keywords = ["DROP TABLE"]

[[mcp_servers]]
slug = "local"
id = "srv-local"
organisation_id = "org_2"
transport = "STDIO"
command = "/bin/cat"
"#,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let t = c.find("org_1", "tools").expect("tools");
        assert_eq!(t.url.as_deref(), Some("http://127.0.0.1:9/mcp"));
        assert!(!t.tool_allowed("rm"));
        assert!(t.tool_allowed("echo"));
        assert_eq!(t.keywords, vec!["drop table"]);
        assert!(c.find("org_1", "local").is_none(), "other organisation's");
        assert!(c.find("org_2", "srv-local").is_some());
        assert!(c.find("org_2", "local").is_some());
    }

    #[test]
    fn bad_servers_name_their_fields() {
        let (_, errs) = parse(
            r#"
[[mcp_servers]]
slug = "Bad Slug"
transport = "FTP"

[[mcp_servers]]
slug = "s"
transport = "STDIO"

[[mcp_servers]]
slug = "h"
url = "ftp://x"
auth = { type = "OAUTH2", client_id = "c", client_secret_env = "X" }
"#,
        );
        let s = errs.join("\n");
        assert!(s.contains("mcp_servers[0].slug"), "{s}");
        assert!(s.contains("mcp_servers[0].transport"), "{s}");
        assert!(s.contains("mcp_servers[1].command"), "{s}");
        assert!(s.contains("mcp_servers[2].url"), "{s}");
        assert!(s.contains("mcp_servers[2].auth.token_url"), "{s}");
    }

    #[test]
    fn allowed_tools_are_a_whitelist() {
        let (c, errs) = parse(
            r#"
[[mcp_servers]]
slug = "w"
url = "http://h/mcp"
allowed_tools = ["a", "b"]
blocked_tools = ["b"]
"#,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let s = c.find("o", "w").expect("w");
        assert!(s.tool_allowed("a"));
        assert!(!s.tool_allowed("b"));
        assert!(!s.tool_allowed("c"));
    }

    #[test]
    fn pricing_per_call_and_byte() {
        let p = McpPricing {
            per_call: 1000,
            per_input_byte: 2,
            per_output_byte: 3,
        };
        assert_eq!(p.cost(10, 100), 1000 + 20 + 300);
    }
}
