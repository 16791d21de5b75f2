//! Budgets and quotas (SPEC §7): reserve → call → settle / release.
//!
//! A budget (amount in nanos-USD) or quota (metric `REQUESTS`, `TOKENS`, `TOKENS_IN`,
//! `TOKENS_OUT`, `ERRORS`, `COST`, `LATENCY_MS`) belongs to an owner (`ORG`, `TEAM`, `USER`,
//! `APIKEY`) and counts in windows of a period (`DAILY`, `WEEKLY` from Monday, `MONTHLY`,
//! `QUARTERLY`) that start at local midnight in its time zone. Before the upstream call every
//! matching meter reserves the request's estimate, only if `used + reserved + estimate <=
//! limit` for all of them at once; post-flight settles each to the actual amount (or releases
//! it when the request never reached the provider). A settled window that crosses a warning
//! threshold logs it, counts it in metrics and queues it for the optional webhook
//! ([`super::webhook`]), once per threshold and window.
//!
//! A meter with `rollover` starts each window with what the previous window left unused
//! (`limit + its rollover - used`), when that window was opened at all (a window nobody used
//! carries nothing, so a new meter does not start with a phantom credit).
//!
//! A budget without a period is a **prepaid balance**: one window that never ends, whose limit
//! is the amount credited so far (in database mode admins top it up through the admin API), so
//! what remains is `limit - used - reserved`.
//!
//! Time zones use `jiff` (its bundled tz database: no dependency on the host's zoneinfo), whose
//! zoned arithmetic gets DST-shortened and -lengthened days right.

use crate::error::{ErrorCode, GatewayError};
use crate::types::UsageRecord;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

#[derive(Debug, Default, Clone, serde::Serialize, Deserialize)]
struct WindowState {
    end: i64,
    used: u64,
    /// In-flight reservations are not persisted: after a restart they are gone (released).
    #[serde(skip)]
    reserved: u64,
    /// Carried in from the previous window (rollover meters).
    #[serde(default)]
    rollover: u64,
    warned: Vec<u8>,
}

/// One persisted window.
#[derive(serde::Serialize, Deserialize)]
struct Saved {
    meter: String,
    start: i64,
    #[serde(flatten)]
    state: WindowState,
}

/// Logs, counts and queues for the webhook a crossed warning threshold (the callers make sure
/// it is once per threshold and window).
pub(crate) fn warned(
    notifier: &super::webhook::Notifier,
    m: &Meter,
    threshold: u8,
    used: u64,
    limit: u64,
    window: (Timestamp, Timestamp),
) {
    crate::metrics::BUDGET_WARNINGS
        .with_label_values(&[
            if m.quota { "quota" } else { "budget" },
            &threshold.to_string(),
        ])
        .inc();
    tracing::warn!(
        meter = %m.id,
        owner = m.owner.as_str(),
        owner_id = %m.owner_id,
        threshold_percent = threshold,
        used,
        limit,
        "budget warning threshold crossed"
    );
    notifier.notify(super::webhook::Warning::new(
        m, threshold, used, limit, window,
    ));
}

/// A prepaid balance as its owner sees it (`/v1/keys/validate`).
pub fn balance_json(m: &Meter, credited: u64, used: u64, reserved: u64) -> serde_json::Value {
    let remaining = credited.saturating_sub(used.saturating_add(reserved));
    serde_json::json!({
        "id": m.id,
        "owner": m.owner.as_str(),
        "owner_id": m.owner_id,
        "credited_nanos": credited,
        "used_nanos": used,
        "reserved_nanos": reserved,
        "remaining_nanos": remaining,
        "remaining_usd": format!("{}.{:09}", remaining / 1_000_000_000, remaining % 1_000_000_000),
    })
}

/// In-memory budget state (the file-configured deployment), optionally persisted to a local
/// state file (written atomically shortly after each settle, read at start).
#[derive(Debug, Default)]
pub struct MemoryBudgets {
    windows: Mutex<HashMap<(String, i64), WindowState>>,
    path: Option<std::path::PathBuf>,
    flush_pending: std::sync::atomic::AtomicBool,
    notifier: Arc<super::webhook::Notifier>,
}

/// A request's reservations; released when dropped unsettled.
#[derive(Debug)]
pub struct BudgetGrant {
    store: Arc<MemoryBudgets>,
    held: Vec<(Arc<Meter>, i64, u64)>,
}

impl Drop for BudgetGrant {
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut w = self.store.lock();
        for (m, start, amount) in self.held.drain(..) {
            if let Some(s) = w.get_mut(&(m.id.clone(), start)) {
                s.reserved = s.reserved.saturating_sub(amount);
            }
        }
    }
}

pub(crate) fn denial(
    m: &Meter,
    limit: u64,
    used: u64,
    reserved: u64,
    end: Timestamp,
    now: Timestamp,
) -> GatewayError {
    let scope = m.owner.as_str();
    let secs = (end.as_second() - now.as_second()).max(1) as u64;
    let mut e = if m.quota {
        let mut e = GatewayError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "quota `{}` of this {} is exhausted for the current window",
                m.id,
                scope.to_ascii_lowercase()
            ),
        );
        e.retry_after = Some(secs);
        e.extra.push(("retry_after", serde_json::json!(secs)));
        e
    } else if m.is_balance() {
        GatewayError::new(
            ErrorCode::BudgetExceeded,
            format!(
                "the prepaid balance `{}` of this {} is too low for this request; top it up",
                m.id,
                scope.to_ascii_lowercase()
            ),
        )
    } else {
        GatewayError::new(
            ErrorCode::BudgetExceeded,
            format!(
                "budget `{}` of this {} has no capacity left in the current window",
                m.id,
                scope.to_ascii_lowercase()
            ),
        )
    };
    e.extra.push(("scope", serde_json::json!(scope)));
    e.extra.push(("limit", serde_json::json!(limit)));
    e.extra.push(("used", serde_json::json!(used + reserved)));
    if m.is_balance() {
        let remaining = limit.saturating_sub(used + reserved);
        e.extra.push(("remaining", serde_json::json!(remaining)));
    } else {
        e.extra
            .push(("window_end", serde_json::json!(end.to_string())));
    }
    e
}

impl MemoryBudgets {
    /// A store persisted at `path` (when given), starting from what the file holds.
    pub fn open(path: Option<&str>, notifier: Arc<super::webhook::Notifier>) -> Arc<MemoryBudgets> {
        let mut windows = HashMap::new();
        if let Some(p) = path {
            match std::fs::read(p) {
                Ok(bytes) => match serde_json::from_slice::<Vec<Saved>>(&bytes) {
                    Ok(saved) => {
                        for s in saved {
                            windows.insert((s.meter, s.start), s.state);
                        }
                    }
                    Err(e) => {
                        tracing::error!(path = p, error = %e, "budget state file unreadable; starting from zero")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(path = p, error = %e, "cannot read the budget state file; starting from zero")
                }
            }
        }
        Arc::new(MemoryBudgets {
            windows: Mutex::new(windows),
            path: path.map(Into::into),
            flush_pending: Default::default(),
            notifier,
        })
    }

    /// Schedules a write of the state file (coalescing the settles of the next 100 ms).
    fn schedule_flush(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.path.is_none() || self.flush_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.flush_pending.store(false, Ordering::Release);
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            me.flush_pending.store(false, Ordering::Release);
            let saved: Vec<Saved> = me
                .lock()
                .iter()
                .map(|((meter, start), s)| Saved {
                    meter: meter.clone(),
                    start: *start,
                    state: s.clone(),
                })
                .collect();
            let Some(path) = me.path.clone() else {
                return;
            };
            let r = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, serde_json::to_vec(&saved).unwrap_or_default())?;
                std::fs::rename(&tmp, &path)
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, "cannot write the budget state file");
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), WindowState>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `est` on every meter that applies to `key`, all or none.
    pub fn reserve(
        self: &Arc<Self>,
        meters: &[Arc<Meter>],
        key: &crate::config::VirtualKey,
        est: &Estimate,
        now: Timestamp,
    ) -> Result<Option<BudgetGrant>, GatewayError> {
        let applying: Vec<&Arc<Meter>> = meters.iter().filter(|m| m.applies(key, now)).collect();
        if applying.is_empty() {
            return Ok(None);
        }
        let mut w = self.lock();
        let mut plan = Vec::with_capacity(applying.len());
        for m in &applying {
            let (start, end) = m.window(now);
            let k = (m.id.clone(), start.as_second());
            if !w.contains_key(&k) {
                // A rollover meter's new window starts with what the previous one (when it
                // was opened at all) left unused.
                let rollover = match m
                    .rollover
                    .then(|| start.checked_sub(jiff::SignedDuration::from_secs(1)))
                {
                    Some(Ok(before)) => {
                        let (prev, _) = m.window(before);
                        w.get(&(m.id.clone(), prev.as_second()))
                            .map(|p| (m.limit + p.rollover).saturating_sub(p.used))
                            .unwrap_or(0)
                    }
                    _ => 0,
                };
                w.insert(
                    k.clone(),
                    WindowState {
                        end: end.as_second(),
                        rollover,
                        ..Default::default()
                    },
                );
            }
            let Some(s) = w.get(&k) else {
                continue;
            };
            let amount = m.metric.estimate(est);
            let limit = m.limit.saturating_add(s.rollover);
            if s.used + s.reserved + amount.max(1) > limit {
                return Err(denial(m, limit, s.used, s.reserved, end, now));
            }
            plan.push(((*m).clone(), start.as_second(), amount));
        }
        for (m, start, amount) in &plan {
            if let Some(s) = w.get_mut(&(m.id.clone(), *start)) {
                s.reserved += amount;
            }
        }
        // Forget windows that ended long ago (kept a quarter: a rollover meter's next window
        // reads the previous one).
        let now_s = now.as_second();
        if w.len() > 128 * meters.len() + 16 {
            w.retain(|_, s| s.end > now_s - 100 * 86_400);
        }
        Ok(Some(BudgetGrant {
            store: self.clone(),
            held: plan,
        }))
    }

    /// Settles every reservation of `g` to the record's actual amounts (or releases them when
    /// the request never reached the provider). Crossed warning thresholds are logged and
    /// counted.
    pub fn settle(self: &Arc<Self>, g: BudgetGrant, rec: &UsageRecord, reached_provider: bool) {
        self.settle_locked(g, rec, reached_provider);
        if reached_provider {
            self.schedule_flush();
        }
    }

    fn settle_locked(&self, mut g: BudgetGrant, rec: &UsageRecord, reached_provider: bool) {
        let mut w = self.lock();
        for (m, start, amount) in g.held.drain(..) {
            let Some(s) = w.get_mut(&(m.id.clone(), start)) else {
                continue;
            };
            s.reserved = s.reserved.saturating_sub(amount);
            if !reached_provider {
                continue;
            }
            let before = s.used;
            s.used = s.used.saturating_add(m.metric.actual(rec));
            for t in &m.warnings {
                let at = m.limit.saturating_mul(u64::from(*t)) / 100;
                if before < at && s.used >= at && !s.warned.contains(t) {
                    s.warned.push(*t);
                    let window = m.window(Timestamp::from_second(start).unwrap_or_default());
                    warned(&self.notifier, &m, *t, s.used, m.limit, window);
                }
            }
        }
    }

    /// `(used, reserved)` of `meter`'s current window.
    pub fn current(&self, m: &Meter, now: Timestamp) -> (u64, u64) {
        let (start, _) = m.window(now);
        self.lock()
            .get(&(m.id.clone(), start.as_second()))
            .map(|s| (s.used, s.reserved))
            .unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn tz(s: &str) -> TimeZone {
        TimeZone::get(s).expect("zone")
    }

    #[test]
    fn daily_windows_across_dst() {
        let ny = tz("America/New_York");
        // Spring forward: a 23-hour day.
        let (s, e) = window(Period::Daily, &ny, ts("2024-03-10T12:00:00Z"));
        assert_eq!(s, ts("2024-03-10T05:00:00Z"));
        assert_eq!(e, ts("2024-03-11T04:00:00Z"));
        assert_eq!(e.as_second() - s.as_second(), 23 * 3600);
        // Fall back: a 25-hour day.
        let (s, e) = window(Period::Daily, &ny, ts("2024-11-03T12:00:00Z"));
        assert_eq!(e.as_second() - s.as_second(), 25 * 3600);
        // Just before local midnight is still the old day.
        let (s, _) = window(Period::Daily, &ny, ts("2024-11-04T04:59:59Z"));
        assert_eq!(s, ts("2024-11-03T04:00:00Z"));
    }

    #[test]
    fn midnight_swallowed_by_a_dst_gap() {
        // Santiago springs forward at 24:00 → 01:00: the day starts at 01:00 local.
        let scl = tz("America/Santiago");
        let (s, _) = window(Period::Daily, &scl, ts("2024-09-08T12:00:00Z"));
        assert_eq!(s, ts("2024-09-08T04:00:00Z"));
    }

    #[test]
    fn weeks_start_on_monday() {
        let utc = tz("UTC");
        // Sunday 2024-06-02 belongs to the week of Monday 2024-05-27.
        let (s, e) = window(Period::Weekly, &utc, ts("2024-06-02T23:00:00Z"));
        assert_eq!(s, ts("2024-05-27T00:00:00Z"));
        assert_eq!(e, ts("2024-06-03T00:00:00Z"));
    }

    #[test]
    fn months_and_quarters_in_a_zone() {
        let tokyo = tz("Asia/Tokyo");
        // 2024-03-31T20:00Z is already April 1st in Tokyo: Q2 there.
        let (s, e) = window(Period::Quarterly, &tokyo, ts("2024-03-31T20:00:00Z"));
        assert_eq!(s, ts("2024-03-31T15:00:00Z"));
        assert_eq!(e, ts("2024-06-30T15:00:00Z"));
        // The same instant is still Q1 in New York, whose quarter ends in EDT.
        let ny = tz("America/New_York");
        let (s, e) = window(Period::Quarterly, &ny, ts("2024-03-31T20:00:00Z"));
        assert_eq!(s, ts("2024-01-01T05:00:00Z"));
        assert_eq!(e, ts("2024-04-01T04:00:00Z"));
        // Q4 ends at the year boundary.
        let (_, e) = window(Period::Quarterly, &tz("UTC"), ts("2024-12-31T23:59:59Z"));
        assert_eq!(e, ts("2025-01-01T00:00:00Z"));
        // February in a leap year.
        let (s, e) = window(Period::Monthly, &tz("UTC"), ts("2024-02-29T12:00:00Z"));
        assert_eq!(s, ts("2024-02-01T00:00:00Z"));
        assert_eq!(e, ts("2024-03-01T00:00:00Z"));
    }

    fn key() -> crate::config::VirtualKey {
        crate::config::VirtualKey {
            id: "k".into(),
            name: None,
            prefix: None,
            kind: crate::config::KeyType::Organisation,
            organisation_id: "o".into(),
            team_id: None,
            user_id: None,
            expires_at: None,
            revoked: false,
            all_models: true,
            models: Default::default(),
            policies: Default::default(),
            routing: None,
            mcp_servers: Default::default(),
        }
    }

    fn meter(limit: u64, quota: Option<Metric>) -> Arc<Meter> {
        Arc::new(Meter {
            id: if quota.is_some() { "q" } else { "b" }.into(),
            quota: quota.is_some(),
            metric: quota.unwrap_or(Metric::Cost),
            owner: Owner::ApiKey,
            owner_id: "k".into(),
            limit,
            period: Some(Period::Daily),
            tz: tz("UTC"),
            starts_at: None,
            ends_at: None,
            warnings: vec![50],
            rollover: false,
        })
    }

    #[test]
    fn reserve_settle_release() {
        let store = Arc::new(MemoryBudgets::default());
        let m = vec![meter(100, None)];
        let now = Timestamp::now();
        let est = Estimate {
            cost_nanos: 60,
            ..Default::default()
        };
        let g = store
            .reserve(&m, &key(), &est, now)
            .expect("fits")
            .expect("held");
        assert_eq!(store.current(&m[0], now), (0, 60));
        let e = store
            .reserve(&m, &key(), &est, now)
            .expect_err("60 + 60 > 100");
        assert_eq!(e.code, ErrorCode::BudgetExceeded);
        let rec = UsageRecord {
            status: 200,
            outcome: "success",
            cost_nanos: 30,
            ..Default::default()
        };
        store.settle(g, &rec, true);
        assert_eq!(store.current(&m[0], now), (30, 0));
        let g = store
            .reserve(&m, &key(), &est, now)
            .expect("30 + 60")
            .expect("held");
        drop(g);
        assert_eq!(store.current(&m[0], now), (30, 0), "released on drop");
        let q = vec![meter(1, Some(Metric::Requests))];
        let g = store
            .reserve(&q, &key(), &est, now)
            .expect("1")
            .expect("held");
        let e = store.reserve(&q, &key(), &est, now).expect_err("2 > 1");
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert!(e.retry_after.is_some());
        drop(g);
    }

    #[test]
    fn rollover_carries_the_unused_amount_into_the_next_window_only() {
        let store = Arc::new(MemoryBudgets::default());
        let mut m = (*meter(100, None)).clone();
        m.rollover = true;
        let m = vec![Arc::new(m)];
        let est = |n| Estimate {
            cost_nanos: n,
            ..Default::default()
        };
        let spent = |n| UsageRecord {
            status: 200,
            outcome: "success",
            cost_nanos: n,
            ..Default::default()
        };
        let day1 = ts("2024-05-01T12:00:00Z");
        let g = store.reserve(&m, &key(), &est(30), day1).expect("fits");
        store.settle(g.expect("held"), &spent(30), true);
        // Day 2: 100 + the 70 left on day 1.
        let day2 = ts("2024-05-02T08:00:00Z");
        let e = store
            .reserve(&m, &key(), &est(171), day2)
            .expect_err("over 170");
        assert_eq!(
            e.extra
                .iter()
                .find(|(k, _)| *k == "limit")
                .map(|x| x.1.clone()),
            Some(serde_json::json!(170))
        );
        let g = store
            .reserve(&m, &key(), &est(170), day2)
            .expect("170 fits");
        store.settle(g.expect("held"), &spent(160), true);
        // Day 3 gets the 10 day 2 left; day 5 follows an unused day 4 and gets nothing.
        let day3 = ts("2024-05-03T08:00:00Z");
        assert!(store.reserve(&m, &key(), &est(111), day3).is_err());
        assert!(store.reserve(&m, &key(), &est(110), day3).is_ok());
        let day5 = ts("2024-05-05T08:00:00Z");
        assert!(store.reserve(&m, &key(), &est(101), day5).is_err());
        // Without rollover, day 2 would have had 100.
        let plain = vec![meter(100, None)];
        let g = store.reserve(&plain, &key(), &est(30), day1).expect("fits");
        store.settle(g.expect("held"), &spent(30), true);
        assert!(store.reserve(&plain, &key(), &est(101), day2).is_err());
    }

    #[test]
    fn balances_have_one_window_that_never_ends() {
        let store = Arc::new(MemoryBudgets::default());
        let mut m = (*meter(100, None)).clone();
        m.period = None;
        let m = vec![Arc::new(m)];
        let est = Estimate {
            cost_nanos: 40,
            ..Default::default()
        };
        let rec = UsageRecord {
            status: 200,
            outcome: "success",
            cost_nanos: 40,
            ..Default::default()
        };
        for at in ["2024-01-01T00:00:00Z", "2031-07-01T00:00:00Z"] {
            let g = store.reserve(&m, &key(), &est, ts(at)).expect("fits");
            store.settle(g.expect("held"), &rec, true);
        }
        let e = store
            .reserve(&m, &key(), &est, ts("2040-01-01T00:00:00Z"))
            .expect_err("80 + 40 > 100 whatever the date");
        let remaining = e.extra.iter().find(|(k, _)| *k == "remaining");
        assert_eq!(remaining.map(|x| x.1.clone()), Some(serde_json::json!(20)));
        assert!(e.extra.iter().all(|(k, _)| *k != "window_end"));
        assert_eq!(m[0].window(Timestamp::now()).1.as_second(), BALANCE_END);
    }

    #[test]
    fn budget_config_rules() {
        let raw = |period: Option<&str>, rollover: bool| RawMeter {
            id: "b".into(),
            owner: "ORG".into(),
            owner_id: "o".into(),
            amount_usd: Some(1.0),
            amount_nanos: None,
            metric: None,
            limit: None,
            period: period.map(str::to_string),
            timezone: "UTC".into(),
            starts_at: None,
            ends_at: None,
            warning_thresholds: vec![],
            rollover,
        };
        let mut errs = Vec::new();
        let m = build_meters(&[raw(None, false)], false, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        assert!(m[0].is_balance());
        assert_eq!(m[0].limit, 1_000_000_000);
        build_meters(&[raw(None, true)], false, &mut errs);
        assert!(errs[0].contains("budgets[0].rollover"), "{errs:?}");
        let mut errs = Vec::new();
        let m = build_meters(&[raw(Some("WEEKLY"), true)], false, &mut errs);
        assert!(errs.is_empty() && m[0].rollover && !m[0].is_balance());
    }
}
