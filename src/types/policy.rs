//! Policies (SPEC §7): IP allow/block lists, request and token rate limits, concurrency and
//! payload limits, in the JSON shape
//! `{"ip":{..},"ratelimit":{"requests":{..},"tokens":{..},"concurrency":{..},"payload":{..}}}`.
//!
//! The same types read the TOML file (`[policies]`, `policies` tables on keys, models,
//! organisations and teams) and the `policies` jsonb columns of the database. Unknown fields are
//! errors naming their path; semantic checks ([`Policy::validate`]) add their own paths.

use serde::{Deserialize, Deserializer};
use std::net::IpAddr;
use std::sync::Arc;

/// One scope's policy. Every field is optional: an absent limit does not limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub ip: IpPolicy,
    #[serde(default)]
    pub ratelimit: RateLimit,
}

/// `ip`: CIDR lists. A request must match the allowlist (when one is set) and must not match
/// the blocklist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpPolicy {
    pub allowlist: Option<Vec<Cidr>>,
    #[serde(default)]
    pub blocklist: Vec<Cidr>,
}

/// `ratelimit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(default)]
    pub requests: RequestLimits,
    #[serde(default)]
    pub tokens: TokenLimits,
    #[serde(default)]
    pub concurrency: ConcurrencyLimit,
    #[serde(default)]
    pub payload: PayloadLimits,
}

/// `ratelimit.requests`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLimits {
    /// At most this many requests in any sliding one-second window.
    pub per_second: Option<u64>,
    /// At most this many requests in any sliding sixty-second window.
    pub per_minute: Option<u64>,
    /// Token-bucket capacity: this many requests back to back, refilled at `per_second` (or
    /// `per_minute / 60` when only that is set).
    pub burst: Option<u64>,
}

/// `ratelimit.tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLimits {
    /// Tokens (input + output) in any sliding sixty-second window; reserved up front.
    pub per_minute: Option<u64>,
}

/// `ratelimit.concurrency`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimit {
    /// Requests in flight at once.
    pub max: Option<u64>,
}

/// `ratelimit.payload`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadLimits {
    pub max_request_bytes: Option<u64>,
    /// Largest `max_tokens` (or `max_completion_tokens`, `max_output_tokens`) a request may ask.
    pub max_tokens: Option<u64>,
}

impl Policy {
    /// Whether the policy sets nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// Semantic checks; problems are pushed with `at` (the policy's path) in front.
    pub fn validate(&self, at: &str, errs: &mut Vec<String>) {
        let r = &self.ratelimit;
        let mut positive = |name: &str, v: Option<u64>| {
            if v == Some(0) {
                errs.push(format!("{at}.ratelimit.{name}: must be at least 1"));
            }
        };
        positive("requests.per_second", r.requests.per_second);
        positive("requests.per_minute", r.requests.per_minute);
        positive("requests.burst", r.requests.burst);
        positive("tokens.per_minute", r.tokens.per_minute);
        positive("concurrency.max", r.concurrency.max);
        positive("payload.max_request_bytes", r.payload.max_request_bytes);
        positive("payload.max_tokens", r.payload.max_tokens);
        if r.requests.burst.is_some()
            && r.requests.per_second.is_none()
            && r.requests.per_minute.is_none()
        {
            errs.push(format!(
                "{at}.ratelimit.requests.burst: needs per_second or per_minute (the refill rate)"
            ));
        }
    }

    /// Parses a policy stored as JSON (database): either the policy itself or
    /// `{"policies": {...}}`; `{}` is the empty policy. Errors name the path.
    pub fn from_json(v: &serde_json::Value) -> Result<Option<Policy>, String> {
        let inner = match v.get("policies") {
            Some(p) => p,
            None => v,
        };
        if inner.as_object().is_some_and(|o| o.is_empty()) || inner.is_null() {
            return Ok(None);
        }
        let p: Policy = serde_path_to_error::deserialize(inner).map_err(|e| {
            let path = e.path().to_string();
            format!("policies.{path}: {}", e.into_inner())
        })?;
        let mut errs = Vec::new();
        p.validate("policies", &mut errs);
        if !errs.is_empty() {
            return Err(errs.join("; "));
        }
        Ok(if p.is_empty() { None } else { Some(p) })
    }

    /// Whether `ip` passes this policy's lists: `Err` names the list that refused it.
    pub fn ip_allows(&self, ip: IpAddr) -> Result<(), &'static str> {
        if self.ip.blocklist.iter().any(|c| c.contains(ip)) {
            return Err("blocklist");
        }
        if let Some(allow) = &self.ip.allowlist {
            if !allow.iter().any(|c| c.contains(ip)) {
                return Err("allowlist");
            }
        }
        Ok(())
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`); a bare address is a /32 or
/// /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `v6/n` or a bare address.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP network (expected e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("`{s}`: prefix length must be 0-{max}")),
            },
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The client address: the socket peer, or — when the peer is a trusted proxy — the right-most
/// address of `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, xff: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let Some(xff) = xff else {
        return peer;
    };
    let mut last = peer;
    for hop in xff.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // A malformed hop: nothing left of it can be trusted.
            return last;
        };
        last = ip;
        if !trusted.iter().any(|c| c.contains(ip)) {
            return ip;
        }
    }
    last
}

/// The policies a key carries. In database mode the key's organisation and team policies are
/// loaded with the key; in the file they live under `[organisations.<id>]` / `[teams.<id>]`.
#[derive(Debug, Clone, Default)]
pub struct KeyPolicies {
    pub key: Option<Arc<Policy>>,
    pub team: Option<Arc<Policy>>,
    pub organisation: Option<Arc<Policy>>,
}

/// Validates the policy part of a policy-bearing item (`at` is its path).
pub fn validated(at: &str, p: &Option<Policy>, errs: &mut Vec<String>) -> Option<Arc<Policy>> {
    let p = p.as_ref()?;
    p.validate(&format!("{at}.policies"), errs);
    (!p.is_empty()).then(|| Arc::new(p.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.0.0.0/8").expect("cidr");
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("cidr")
            .contains(ip("1.2.3.4")));
        let h = Cidr::parse("203.0.113.7").expect("cidr");
        assert!(h.contains(ip("203.0.113.7")) && !h.contains(ip("203.0.113.8")));
        let v6 = Cidr::parse("2001:db8::/32").expect("cidr");
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope/8").is_err());
    }

    #[test]
    fn json_policy_paths() {
        let v = serde_json::json!({"policies":{"ratelimit":{"requests":{"per_minut":5}}}});
        let e = Policy::from_json(&v).expect_err("unknown field");
        assert!(e.contains("ratelimit.requests"), "{e}");
        assert!(e.contains("per_minut"), "{e}");
        let v = serde_json::json!({"ip":{"blocklist":["300.0.0.0/8"]}});
        let e = Policy::from_json(&v).expect_err("bad cidr");
        assert!(e.contains("ip.blocklist"), "{e}");
        assert_eq!(Policy::from_json(&serde_json::json!({})), Ok(None));
        let p = Policy::from_json(
            &serde_json::json!({"policies":{"ratelimit":{"requests":{"per_minute":5}}}}),
        )
        .expect("valid")
        .expect("some");
        assert_eq!(p.ratelimit.requests.per_minute, Some(5));
        let e = Policy::from_json(&serde_json::json!({"ratelimit":{"requests":{"burst":5}}}))
            .expect_err("burst without rate");
        assert!(e.contains("burst"), "{e}");
    }

    #[test]
    fn ip_lists() {
        let p: Policy = serde_json::from_value(serde_json::json!({
            "ip": {"allowlist": ["10.0.0.0/8"], "blocklist": ["10.9.0.0/16"]}
        }))
        .expect("policy");
        assert_eq!(p.ip_allows(ip("10.1.0.1")), Ok(()));
        assert_eq!(p.ip_allows(ip("10.9.0.1")), Err("blocklist"));
        assert_eq!(p.ip_allows(ip("192.168.0.1")), Err("allowlist"));
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted = vec![Cidr::parse("127.0.0.0/8").expect("cidr")];
        // Untrusted peer: the header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.1"), Some("10.0.0.1"), &trusted),
            ip("198.51.100.1")
        );
        // Trusted peer: right-most untrusted hop.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                Some("1.1.1.1, 10.0.0.1, 127.0.0.2"),
                &trusted
            ),
            ip("10.0.0.1")
        );
        assert_eq!(client_ip(ip("127.0.0.1"), None, &trusted), ip("127.0.0.1"));
        assert_eq!(
            client_ip(ip("127.0.0.1"), Some("garbage"), &trusted),
            ip("127.0.0.1")
        );
    }
}
