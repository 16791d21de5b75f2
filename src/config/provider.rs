//! Building a [`Provider`] from its settings: one set of rules for the TOML file and the
//! database, so both sources produce identical providers.

use super::{Provider, ProviderKind, Secret};
use http::{HeaderName, HeaderValue};
use std::net::SocketAddr;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Building providers: the same rules as `config::validate_provider`.
// ---------------------------------------------------------------------------------------------

/// Everything a [`Provider`] is built from, whatever its source (TOML entry or database row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSpec {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// Header carrying the credential; `None`: the family's default.
    pub auth_header: Option<String>,
    /// `api-version` for Azure OpenAI.
    pub api_version: Option<String>,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub enabled: bool,
    /// Extra upstream headers, in order.
    pub headers: Vec<(String, String)>,
}

/// Names of providers and models: the rule of the TOML file.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b))
}

/// Upstream model ids: the rule of the TOML file.
pub fn valid_slug(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.contains(['"', '\\'])
}

pub const NAME_RULE: &str = "must be 1-128 characters of letters, digits, - _ . : / @";

/// Builds a [`Provider`] from a spec, with exactly the rules and defaults of the TOML path
/// (`config::validate_provider`): scheme → TLS, port default 443/80, `authority` without a
/// default port, base path defaulting per family (`/v1`, `/v1beta` for GOOGLE, empty for
/// AZURE_OPENAI), credential header per family, lower-cased extra headers, addresses filled in
/// at once for IP literals. Every problem is returned, each prefixed with its field name.
pub fn build_provider(
    spec: &ProviderSpec,
    api_keys: Vec<Secret>,
    api_key_env: Option<String>,
) -> Result<Provider, Vec<String>> {
    let mut errs = Vec::new();
    if !valid_name(&spec.name) {
        errs.push(format!("name: `{}` {NAME_RULE}", spec.name));
    }
    let (mut tls, mut host, mut port, mut base_path) = (false, String::new(), 0u16, String::new());
    match spec.base_url.parse::<http::Uri>() {
        Ok(u) => {
            match u.scheme_str() {
                Some("http") => tls = false,
                Some("https") => tls = true,
                _ => errs.push(format!(
                    "base_url: `{}` must start with http:// or https://",
                    spec.base_url
                )),
            }
            match u.host() {
                Some(h) if !h.is_empty() => host = h.to_string(),
                _ => errs.push(format!("base_url: `{}` has no host", spec.base_url)),
            }
            if u.query().is_some() {
                errs.push("base_url: must not have a query string".to_string());
            }
            port = u.port_u16().unwrap_or(if tls { 443 } else { 80 });
            base_path = u.path().trim_end_matches('/').to_string();
        }
        Err(e) => errs.push(format!("base_url: `{}` is not a URL: {e}", spec.base_url)),
    }
    if base_path.is_empty() {
        base_path = match spec.kind {
            ProviderKind::AzureOpenAi => String::new(),
            ProviderKind::Google => "/v1beta".into(),
            _ => "/v1".into(),
        };
    }
    let default_port = if tls { 443 } else { 80 };
    let authority = if port == default_port {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let auth_header = match &spec.auth_header {
        Some(h) => match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                errs.push(format!("auth_header: `{h}` is not a header name"));
                http::header::AUTHORIZATION
            }
        },
        None => match spec.kind {
            ProviderKind::AzureOpenAi => HeaderName::from_static("api-key"),
            ProviderKind::Anthropic => HeaderName::from_static("x-api-key"),
            ProviderKind::Google => HeaderName::from_static("x-goog-api-key"),
            _ => http::header::AUTHORIZATION,
        },
    };
    let mut headers = Vec::new();
    for (k, v) in &spec.headers {
        match (
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(k), Ok(v)) => headers.push((k, v)),
            _ => errs.push(format!("headers.{k}: not a valid header")),
        }
    }
    for (k, v) in [
        ("timeout_ms", spec.timeout_ms),
        ("connect_timeout_ms", spec.connect_timeout_ms),
        ("idle_timeout_ms", spec.idle_timeout_ms),
    ] {
        if v == 0 {
            errs.push(format!("{k}: must be at least 1"));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let addrs = match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => Vec::new(),
    };
    // The credential header values, built once (Bearer for `authorization`, raw otherwise) and
    // marked sensitive so they are never logged by header dumps.
    let values = api_keys
        .iter()
        .filter_map(|k| {
            let raw = if auth_header == http::header::AUTHORIZATION {
                format!("Bearer {}", k.expose())
            } else {
                k.expose().to_string()
            };
            let mut v = HeaderValue::from_str(&raw).ok()?;
            v.set_sensitive(true);
            Some(v)
        })
        .collect();
    let redactor = crate::types::redact::Redactor::new(api_keys.iter().map(|k| k.expose()));
    let api_key = api_keys.into_iter().next();
    Ok(Provider {
        name: spec.name.clone(),
        credentials: crate::types::credentials::Credentials::new(values),
        redactor,
        kind: spec.kind,
        tls,
        host,
        port,
        authority,
        base_path,
        api_key,
        api_key_env,
        auth_header,
        api_version: spec.api_version.clone(),
        read_timeout: Duration::from_millis(spec.timeout_ms),
        connect_timeout: Duration::from_millis(spec.connect_timeout_ms),
        idle_timeout: Duration::from_millis(spec.idle_timeout_ms),
        enabled: spec.enabled,
        headers,
        addrs: arc_swap::ArcSwap::from_pointee(addrs),
        health_check: None,
        organisation_id: None,
    })
}
