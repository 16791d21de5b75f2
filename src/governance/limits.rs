//! What one check asks and what it answers, shared by the in-process and the Redis limiter.

use crate::error::{ErrorCode, GatewayError};

/// The counters of one scope (`global`, `organisation`, `team`, `key`, `model`) and their limits
/// (0: not limited).
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeLimits {
    /// `organisation`, `team`, ... (reported as `scope` in denials).
    pub scope: &'static str,
    /// Counter identity, stable across nodes and reloads (e.g. `key:key_1`).
    pub id: String,
    pub rps: u64,
    pub rpm: u64,
    /// Token-bucket capacity (0: none) and its refill interval in milliseconds.
    pub burst: u64,
    pub burst_interval_ms: f64,
    pub concurrency: u64,
    pub tpm: u64,
}

impl ScopeLimits {
    /// Whether this scope limits anything.
    pub fn any(&self) -> bool {
        self.rps + self.rpm + self.burst + self.concurrency + self.tpm > 0
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Concurrency,
    Burst,
    Rps,
    Rpm,
    Tpm,
}

impl Kind {
    /// Wire index used by the Redis script.
    pub fn from_index(i: i64) -> Option<Kind> {
        Some(match i {
            1 => Kind::Concurrency,
            2 => Kind::Burst,
            3 => Kind::Rps,
            4 => Kind::Rpm,
            5 => Kind::Tpm,
            _ => return None,
        })
    }

    fn code(self) -> ErrorCode {
        match self {
            Kind::Concurrency => ErrorCode::ConcurrencyExceeded,
            Kind::Burst => ErrorCode::BurstExceeded,
            Kind::Rps => ErrorCode::RpsExceeded,
            Kind::Rpm => ErrorCode::RpmExceeded,
            Kind::Tpm => ErrorCode::TpmExceeded,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Concurrency => "concurrent requests",
            Kind::Burst => "requests in a burst",
            Kind::Rps => "requests per second",
            Kind::Rpm => "requests per minute",
            Kind::Tpm => "tokens per minute",
        }
    }
}

/// A refusal: which limit of which scope, and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub kind: Kind,
    pub scope: &'static str,
    pub limit: u64,
    pub retry_after_ms: u64,
}

impl Denial {
    /// The SPEC §3 answer: 429, `scope`, `limit`, `retry_after` (seconds, at least 1).
    pub fn to_error(&self) -> GatewayError {
        let secs = self.retry_after_ms.div_ceil(1000).max(1);
        let mut e = GatewayError::new(
            self.kind.code(),
            format!(
                "rate limit exceeded: at most {} {} for this {}; retry after {secs} s",
                self.limit,
                self.kind.what(),
                self.scope
            ),
        );
        e.extra.push(("scope", serde_json::json!(self.scope)));
        e.extra.push(("limit", serde_json::json!(self.limit)));
        e.extra.push(("retry_after", serde_json::json!(secs)));
        e.retry_after = Some(secs);
        e
    }
}

/// The `x-ratelimit-*` values of the most constrained scope (OpenAI's headers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    /// (limit, remaining, reset in ms) for requests per minute (or per second).
    pub requests: Option<(u64, u64, u64)>,
    /// The same for tokens per minute.
    pub tokens: Option<(u64, u64, u64)>,
}

impl RateHeaders {
    /// Keeps the tighter of two readings (fewer remaining).
    pub fn merge_requests(&mut self, v: (u64, u64, u64)) {
        if self.requests.is_none_or(|cur| v.1 < cur.1) {
            self.requests = Some(v);
        }
    }

    /// Same for tokens.
    pub fn merge_tokens(&mut self, v: (u64, u64, u64)) {
        if self.tokens.is_none_or(|cur| v.1 < cur.1) {
            self.tokens = Some(v);
        }
    }

    /// Header pairs, as OpenAI names them (`x-ratelimit-reset-*` as a duration like `1s`).
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some((l, r, reset)) = self.requests {
            out.push(("x-ratelimit-limit-requests", l.to_string()));
            out.push(("x-ratelimit-remaining-requests", r.to_string()));
            out.push(("x-ratelimit-reset-requests", duration(reset)));
        }
        if let Some((l, r, reset)) = self.tokens {
            out.push(("x-ratelimit-limit-tokens", l.to_string()));
            out.push(("x-ratelimit-remaining-tokens", r.to_string()));
            out.push(("x-ratelimit-reset-tokens", duration(reset)));
        }
        out
    }
}

/// `850ms`, `1s`, `59s`, `1m0s` in OpenAI's style.
fn duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms.div_ceil(1000);
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0ms");
        assert_eq!(duration(999), "999ms");
        assert_eq!(duration(1000), "1s");
        assert_eq!(duration(1001), "2s");
        assert_eq!(duration(60_000), "1m0s");
    }

    #[test]
    fn denial_is_spec_shaped() {
        let d = Denial {
            kind: Kind::Rpm,
            scope: "key",
            limit: 5,
            retry_after_ms: 1500,
        };
        let e = d.to_error();
        assert_eq!(e.status(), 429);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).expect("json");
        assert_eq!(v["error"]["code"], "rpm_exceeded");
        assert_eq!(v["error"]["scope"], "key");
        assert_eq!(v["error"]["limit"], 5);
        assert_eq!(v["error"]["retry_after"], 2);
        assert_eq!(e.retry_after, Some(2));
    }
}
