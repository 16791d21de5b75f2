//! Upstream providers as the gateway knows them.

use super::credentials::Credentials;
use super::redact::Redactor;
use super::{ProviderKind, Secret};
use http::{HeaderName, HeaderValue};
use std::net::SocketAddr;
use std::time::Duration;

/// An upstream provider.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `Host` header value (`host` or `host:port` for non-default ports).
    pub authority: String,
    /// Path prefix of the API root, e.g. `/v1` (no trailing slash).
    pub base_path: String,
    pub api_key: Option<Secret>,
    /// The credential header values, ready to insert (built at load), used in turn.
    pub credentials: Credentials,
    /// Masks the provider's secrets in what it answers (built at load).
    pub redactor: Option<Redactor>,
    pub api_key_env: Option<String>,
    /// Header carrying the credential (lower case).
    pub auth_header: HeaderName,
    /// `api-version` for Azure OpenAI.
    pub api_version: Option<String>,
    pub read_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub enabled: bool,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Resolved addresses, refreshed off the request path.
    pub addrs: arc_swap::ArcSwap<Vec<SocketAddr>>,
    /// Active health checks (run by the routing domain).
    pub health_check: Option<HealthCheck>,
    /// Database mode: the organisation that owns the provider (`None`: the file's, shared).
    pub organisation_id: Option<String>,
}

/// A provider's active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path on the server root, e.g. `/health`.
    pub path: String,
    /// The URL checked (scheme, the provider's authority, the path): what the health state
    /// is kept by, so two providers on one endpoint share it and names never collide.
    pub url: String,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Provider {
    /// The provider's key in the reachability table: organisations may reuse a name.
    pub fn status_key(&self) -> String {
        format!(
            "{}/{}",
            self.organisation_id.as_deref().unwrap_or(""),
            self.name
        )
    }

    /// The URL a check of this provider requests: its scheme and authority, then `path`.
    pub fn check_url(&self, path: &str) -> String {
        format!(
            "{}://{}{path}",
            if self.tls { "https" } else { "http" },
            self.authority,
        )
    }

    /// Whether `host` is an IP literal (no DNS needed).
    pub fn host_is_ip(&self) -> bool {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
    }
}
