//! Budgets and quotas as configured (`[[budgets]]`, `[[quotas]]`, and the database's meters):
//! who they count for, what, over which window, with which warnings. The governance domain
//! keeps and enforces them.

use crate::types::UsageRecord;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Deserialize;
use std::sync::Arc;

/// A window period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Daily,
    Weekly,
    Monthly,
    Quarterly,
}

impl Period {
    /// The SPEC spelling.
    pub fn parse(s: &str) -> Option<Period> {
        Some(match s {
            "DAILY" => Period::Daily,
            "WEEKLY" => Period::Weekly,
            "MONTHLY" => Period::Monthly,
            "QUARTERLY" => Period::Quarterly,
            _ => return None,
        })
    }

    fn first_day(self, d: Date) -> Date {
        match self {
            Period::Daily => d,
            Period::Weekly => {
                let back = i64::from(d.weekday().to_monday_zero_offset());
                d.checked_sub(back.days()).unwrap_or(d)
            }
            Period::Monthly => d.first_of_month(),
            Period::Quarterly => {
                let m = (d.month() - 1) / 3 * 3 + 1;
                Date::new(d.year(), m, 1).unwrap_or(d)
            }
        }
    }

    fn next(self, start: Date) -> Date {
        let span = match self {
            Period::Daily => 1.day(),
            Period::Weekly => 1.week(),
            Period::Monthly => 1.month(),
            Period::Quarterly => 3.months(),
        };
        start.checked_add(span).unwrap_or(start)
    }
}

/// The window of `period` in `tz` that contains `at`: `[start, end)`, both at local midnight
/// (or the first instant after it when a DST gap swallows midnight).
pub fn window(period: Period, tz: &TimeZone, at: Timestamp) -> (Timestamp, Timestamp) {
    let day = at.to_zoned(tz.clone()).date();
    let first = period.first_day(day);
    let midnight = |d: Date| d.to_zoned(tz.clone()).map(|z| z.timestamp()).unwrap_or(at);
    (midnight(first), midnight(period.next(first)))
}

/// Start of a prepaid balance's single window (the Unix epoch).
pub const BALANCE_START: i64 = 0;
/// End of a prepaid balance's single window (9999-01-01T00:00:00Z: never, in practice).
pub const BALANCE_END: i64 = 253_370_764_800;

/// The window of a meter with `period` (`None`: a prepaid balance, whose window never ends).
pub fn meter_window(
    period: Option<Period>,
    tz: &TimeZone,
    at: Timestamp,
) -> (Timestamp, Timestamp) {
    match period {
        Some(p) => window(p, tz, at),
        None => (
            Timestamp::from_second(BALANCE_START).unwrap_or(at),
            Timestamp::from_second(BALANCE_END).unwrap_or(at),
        ),
    }
}

/// What a meter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Cost,
    Requests,
    Tokens,
    TokensIn,
    TokensOut,
    Errors,
    LatencyMs,
}

impl Metric {
    fn parse(s: &str) -> Option<Metric> {
        Some(match s {
            "COST" => Metric::Cost,
            "REQUESTS" => Metric::Requests,
            "TOKENS" => Metric::Tokens,
            "TOKENS_IN" => Metric::TokensIn,
            "TOKENS_OUT" => Metric::TokensOut,
            "ERRORS" => Metric::Errors,
            "LATENCY_MS" => Metric::LatencyMs,
            _ => return None,
        })
    }

    pub(crate) fn estimate(self, e: &Estimate) -> u64 {
        match self {
            Metric::Cost => e.cost_nanos,
            Metric::Requests => 1,
            Metric::Tokens => e.input_tokens + e.output_tokens,
            Metric::TokensIn => e.input_tokens,
            Metric::TokensOut => e.output_tokens,
            Metric::Errors | Metric::LatencyMs => 0,
        }
    }

    pub(crate) fn actual(self, r: &UsageRecord) -> u64 {
        self.of(&Actual {
            cost_nanos: r.cost_nanos,
            input: r.tokens.input,
            output: r.tokens.output,
            error: r.status >= 400 || r.outcome != "success",
            latency_ms: r.latency_ms,
        })
    }

    /// The amount of a finished request this metric counts.
    pub(crate) fn of(self, a: &Actual) -> u64 {
        match self {
            Metric::Cost => a.cost_nanos,
            Metric::Requests => 1,
            Metric::Tokens => a.input + a.output,
            Metric::TokensIn => a.input,
            Metric::TokensOut => a.output,
            Metric::Errors => u64::from(a.error),
            Metric::LatencyMs => a.latency_ms.max(0.0) as u64,
        }
    }
}

/// What a finished request's usage record says, for [`Metric::of`].
pub(crate) struct Actual {
    pub cost_nanos: u64,
    pub input: u64,
    pub output: u64,
    /// Status 400 or more, or an outcome other than `success`.
    pub error: bool,
    pub latency_ms: f64,
}

/// Whose traffic a meter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Org,
    Team,
    User,
    ApiKey,
}

impl Owner {
    fn parse(s: &str) -> Option<Owner> {
        Some(match s {
            "ORG" => Owner::Org,
            "TEAM" => Owner::Team,
            "USER" => Owner::User,
            "APIKEY" => Owner::ApiKey,
            _ => return None,
        })
    }

    /// The SPEC spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Org => "ORG",
            Owner::Team => "TEAM",
            Owner::User => "USER",
            Owner::ApiKey => "APIKEY",
        }
    }
}

/// A budget (`Metric::Cost`, denial 402) or a quota (denial 429).
#[derive(Debug, Clone)]
pub struct Meter {
    pub id: String,
    pub quota: bool,
    pub metric: Metric,
    pub owner: Owner,
    pub owner_id: String,
    pub limit: u64,
    /// `None`: a prepaid balance (budgets only).
    pub period: Option<Period>,
    pub tz: TimeZone,
    pub starts_at: Option<Timestamp>,
    pub ends_at: Option<Timestamp>,
    /// Percentages, ascending.
    pub warnings: Vec<u8>,
    /// Carry the previous window's unused amount into the next one (periodic meters only).
    pub rollover: bool,
}

impl Meter {
    /// Whether this is a prepaid balance (no period).
    pub fn is_balance(&self) -> bool {
        self.period.is_none()
    }

    /// The window containing `at`.
    pub fn window(&self, at: Timestamp) -> (Timestamp, Timestamp) {
        meter_window(self.period, &self.tz, at)
    }

    pub(crate) fn applies(&self, key: &crate::config::VirtualKey, now: Timestamp) -> bool {
        let owner = match self.owner {
            Owner::Org => Some(&key.organisation_id),
            Owner::Team => key.team_id.as_ref(),
            Owner::User => key.user_id.as_ref(),
            Owner::ApiKey => Some(&key.id),
        };
        owner == Some(&self.owner_id)
            && self.starts_at.is_none_or(|s| now >= s)
            && self.ends_at.is_none_or(|e| now < e)
    }
}

/// `[[budgets]]` and `[[quotas]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeter {
    pub id: String,
    /// `ORG`, `TEAM`, `USER`, `APIKEY`.
    pub owner: String,
    pub owner_id: String,
    /// Budgets: the amount in USD (or `amount_nanos`); for a prepaid balance (no `period`),
    /// the initial balance.
    pub amount_usd: Option<f64>,
    pub amount_nanos: Option<u64>,
    /// Quotas: the metric and its limit.
    pub metric: Option<String>,
    pub limit: Option<u64>,
    /// `DAILY`, `WEEKLY`, `MONTHLY`, `QUARTERLY`; a budget without one is a prepaid balance.
    pub period: Option<String>,
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// RFC 3339.
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    #[serde(default)]
    pub warning_thresholds: Vec<u8>,
    /// Carry a window's unused amount into the next window (not for prepaid balances).
    #[serde(default)]
    pub rollover: bool,
}

fn default_tz() -> String {
    "UTC".into()
}

/// Validates `[[budgets]]` (`quota = false`) or `[[quotas]]`.
pub fn build_meters(raws: &[RawMeter], quota: bool, errs: &mut Vec<String>) -> Vec<Arc<Meter>> {
    let section = if quota { "quotas" } else { "budgets" };
    let mut out = Vec::new();
    for (i, r) in raws.iter().enumerate() {
        let at = format!("{section}[{i}]");
        let before = errs.len();
        let owner = Owner::parse(&r.owner);
        if owner.is_none() {
            errs.push(format!(
                "{at}.owner: `{}` is not one of ORG, TEAM, USER, APIKEY",
                r.owner
            ));
        }
        let period = match r.period.as_deref() {
            None if quota => {
                errs.push(format!(
                    "{at}.period: is required (one of DAILY, WEEKLY, MONTHLY, QUARTERLY)"
                ));
                None
            }
            // A budget without a period: a prepaid balance.
            None => Some(None),
            Some(p) => match Period::parse(p) {
                Some(p) => Some(Some(p)),
                None => {
                    errs.push(format!(
                        "{at}.period: `{p}` is not one of DAILY, WEEKLY, MONTHLY, QUARTERLY"
                    ));
                    None
                }
            },
        };
        let tz = match TimeZone::get(&r.timezone) {
            Ok(tz) => Some(tz),
            Err(_) => {
                errs.push(format!(
                    "{at}.timezone: `{}` is not an IANA time zone",
                    r.timezone
                ));
                None
            }
        };
        let (metric, limit) = if quota {
            if r.amount_usd.is_some() || r.amount_nanos.is_some() {
                errs.push(format!("{at}: a quota has metric and limit, not an amount"));
            }
            let m = r.metric.as_deref().and_then(Metric::parse);
            if m.is_none() {
                errs.push(format!(
                    "{at}.metric: must be one of REQUESTS, TOKENS, TOKENS_IN, TOKENS_OUT, ERRORS, COST, LATENCY_MS"
                ));
            }
            if r.limit.is_none() {
                errs.push(format!("{at}.limit: is required"));
            }
            (m, r.limit)
        } else {
            if r.metric.is_some() || r.limit.is_some() {
                errs.push(format!(
                    "{at}: a budget has amount_usd or amount_nanos, not metric and limit"
                ));
            }
            let amount = match (r.amount_usd, r.amount_nanos) {
                (Some(usd), None) if usd.is_finite() && usd >= 0.0 => {
                    Some((usd * 1e9).round() as u64)
                }
                (None, Some(n)) => Some(n),
                _ => {
                    errs.push(format!(
                        "{at}: exactly one of amount_usd (non-negative) or amount_nanos is required"
                    ));
                    None
                }
            };
            (Some(Metric::Cost), amount)
        };
        let ts = |field: &str, v: &Option<String>, errs: &mut Vec<String>| {
            v.as_ref().and_then(|s| match s.parse::<Timestamp>() {
                Ok(t) => Some(t),
                Err(_) => {
                    errs.push(format!("{at}.{field}: `{s}` is not an RFC 3339 timestamp"));
                    None
                }
            })
        };
        let starts_at = ts("starts_at", &r.starts_at, errs);
        let ends_at = ts("ends_at", &r.ends_at, errs);
        if let (Some(s), Some(e)) = (starts_at, ends_at) {
            if e <= s {
                errs.push(format!("{at}.ends_at: must be after starts_at"));
            }
        }
        let mut warnings = r.warning_thresholds.clone();
        if warnings.iter().any(|w| *w == 0 || *w > 100) {
            errs.push(format!("{at}.warning_thresholds: each must be 1-100"));
        }
        warnings.sort_unstable();
        warnings.dedup();
        if r.rollover && r.period.is_none() {
            errs.push(format!(
                "{at}.rollover: a prepaid balance (no period) has no next window to roll over into"
            ));
        }
        if out.iter().any(|m: &Arc<Meter>| m.id == r.id) {
            errs.push(format!("{at}.id: duplicate id `{}`", r.id));
        }
        if errs.len() > before {
            continue;
        }
        if let (Some(owner), Some(period), Some(tz), Some(metric), Some(limit)) =
            (owner, period, tz, metric, limit)
        {
            out.push(Arc::new(Meter {
                id: r.id.clone(),
                quota,
                metric,
                owner,
                owner_id: r.owner_id.clone(),
                limit,
                period,
                tz,
                starts_at,
                ends_at,
                warnings,
                rollover: r.rollover,
            }));
        }
    }
    out
}

/// What a request is expected to use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Estimate {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_nanos: u64,
}
