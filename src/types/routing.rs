//! Routing's plain data: deployments, strategies, failover triggers, error classes and the
//! breaker settings. The router that acts on them lives in the routing domain.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One deployment of a model. `id` is opaque here; the proxy maps it to provider, slug and
/// credential. Ids should be unique; on duplicates the first one wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deployment {
    pub id: usize,
    /// Relative share for [`Strategy::Weighted`]; also the tie-break in failover order (higher first).
    pub weight: u32,
    /// Failover order: lower is tried first.
    pub priority: u32,
}

/// How the first candidate of a plan is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Strict failover order (priority, then weight).
    Failover,
    /// Rotates over the available deployments, one counter per routing key.
    RoundRobin,
    /// Random, proportional to weight.
    Weighted,
    /// Lowest EWMA of time to first byte; unmeasured deployments first.
    LeastLatency,
    /// Power of two choices on in-flight requests.
    LeastBusy,
}

/// A routing keyword that could not be parsed; names the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseRoutingError {
    what: &'static str,
    value: String,
}

impl fmt::Display for ParseRoutingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} `{}`", self.what, self.value)
    }
}

impl std::error::Error for ParseRoutingError {}

impl FromStr for Strategy {
    type Err = ParseRoutingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "failover" | "priority" => Ok(Strategy::Failover),
            "round_robin" => Ok(Strategy::RoundRobin),
            "weighted" => Ok(Strategy::Weighted),
            "least_latency" => Ok(Strategy::LeastLatency),
            "least_busy" => Ok(Strategy::LeastBusy),
            _ => Err(ParseRoutingError {
                what: "routing strategy",
                value: s.to_string(),
            }),
        }
    }
}

/// A `failoverOn` trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailoverOn {
    /// `5xx`: upstream status 500..=599.
    ServerError,
    /// `timeout`: the upstream did not answer in time.
    Timeout,
    /// `rate_limit`: upstream 429.
    RateLimit,
    /// `connect`: the connection (or TLS handshake) failed.
    Connect,
    /// `any`: every error class, including any upstream status >= 400.
    Any,
}

impl FromStr for FailoverOn {
    type Err = ParseRoutingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "5xx" => Ok(FailoverOn::ServerError),
            "timeout" => Ok(FailoverOn::Timeout),
            "rate_limit" => Ok(FailoverOn::RateLimit),
            "connect" => Ok(FailoverOn::Connect),
            "any" => Ok(FailoverOn::Any),
            _ => Err(ParseRoutingError {
                what: "failover trigger",
                value: s.to_string(),
            }),
        }
    }
}

/// What went wrong with one upstream attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The upstream answered with this status.
    Status(u16),
    Timeout,
    Connect,
}

/// Whether an attempt that failed with `class` should be retried on the next candidate.
/// A status below 400 is never a failure.
pub fn should_fail_over(triggers: &[FailoverOn], class: ErrorClass) -> bool {
    triggers.iter().any(|t| match (t, class) {
        (_, ErrorClass::Status(s)) if s < 400 => false,
        (FailoverOn::Any, _) => true,
        (FailoverOn::ServerError, ErrorClass::Status(s)) => (500..=599).contains(&s),
        (FailoverOn::RateLimit, ErrorClass::Status(s)) => s == 429,
        (FailoverOn::Timeout, ErrorClass::Timeout) => true,
        (FailoverOn::Connect, ErrorClass::Connect) => true,
        _ => false,
    })
}

/// Tuning of a [`Router`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterConfig {
    /// EWMA smoothing of time to first byte, in (0, 1]: weight of the newest sample.
    pub ewma_alpha: f64,
    /// Failures within `failure_window` that eject a deployment (at least 1).
    pub failure_threshold: u32,
    pub failure_window: Duration,
    /// How long an ejected deployment gets no traffic, unless a `Retry-After` says otherwise.
    pub cooldown: Duration,
    /// After the cooldown one probe is let through; if no outcome is recorded for it within this
    /// time (the plan listed it but the request never reached it), another probe is allowed.
    pub probe_timeout: Duration,
    /// Seed of the generator behind `Weighted` and `LeastBusy`; `None` draws one at random.
    pub seed: Option<u64>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            ewma_alpha: 0.3,
            failure_threshold: 5,
            failure_window: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(30),
            seed: None,
        }
    }
}
