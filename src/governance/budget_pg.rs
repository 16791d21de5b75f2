//! Budgets and quotas in database mode: the `budgets` / `quotas` rows are the meters, their
//! windows and the reservation ledger live in Postgres (`budget_windows`, `quota_windows`,
//! `budget_requests`, `budget_reservations`, `quota_reservations`), so every node shares them.
//!
//! Reserve is one transaction: for each meter (in id order, so concurrent requests lock windows
//! in the same order) the window row is created if missing, then
//! `UPDATE … SET reserved = reserved + est WHERE used + reserved + est <= limit` — the row lock
//! and the re-checked condition make the check atomic across nodes. Settle and release are
//! single statements keyed by the reservation's request id and state `RESERVED`, so running
//! them twice changes nothing. When Postgres cannot answer, a request that has a budget is
//! refused (503 `dependency_unavailable`): budgets are money, they do not fail open.
//!
//! A background pass on every node, run with each meter refresh, first settles stale
//! reservations whose request wrote its usage record ([`settle_stale`]), then expires the rest
//! ([`expire_stale`]), giving their amounts back to their windows.
//!
//! A budget without a period is a prepaid balance: its one window never ends, and the reserve
//! checks against the budget row's current `amount_nanos` (what has been credited, top-ups
//! included) rather than the cached list's, so a top-up counts from the moment it commits.

use super::budget::{Estimate, Meter, Metric, Owner, Period};
use crate::config::VirtualKey;
use crate::db::PoolSlot;
use crate::error::{ErrorCode, GatewayError};
use crate::types::UsageRecord;
use arc_swap::ArcSwapOption;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long the meter list is served from memory before a background refresh (the safety
/// net: a change to `budgets` or `quotas` reloads it at once through the change notification,
/// see [`PgBudgets::reload_meters`]).
const METERS_TTL: Duration = Duration::from_secs(5);
/// A reservation left unsettled this long is stale (crashed node).
pub const RESERVATION_TTL_SECONDS: i64 = 900;

pub(super) struct Tables {
    /// The meters' own table.
    pub(super) meters: &'static str,
    pub(super) windows: &'static str,
    reservations: &'static str,
    pub(super) fk: &'static str,
    pub(super) used: &'static str,
    reserved: &'static str,
    pub(super) rollover: &'static str,
    amount: &'static str,
    actual: &'static str,
}

const BUDGET: Tables = Tables {
    meters: "budgets",
    windows: "budget_windows",
    reservations: "budget_reservations",
    fk: "budget_id",
    used: "used_nanos",
    reserved: "reserved_nanos",
    rollover: "rollover_nanos",
    amount: "amount_nanos",
    actual: "actual_nanos",
};

const QUOTA: Tables = Tables {
    meters: "quotas",
    windows: "quota_windows",
    reservations: "quota_reservations",
    fk: "quota_id",
    used: "used",
    reserved: "reserved",
    rollover: "rollover",
    amount: "amount",
    actual: "actual",
};

pub(super) fn tables(m: &Meter) -> &'static Tables {
    tables_for(m.quota)
}

pub(super) fn tables_for(quota: bool) -> &'static Tables {
    if quota {
        &QUOTA
    } else {
        &BUDGET
    }
}

/// Creates a meter's window row when missing: `$1` meter, `$2`/`$3` start/end, `$4` the
/// meter's limit, `$5` rollover. A rollover meter's new window starts with what the previous
/// window (when it was opened at all) left unused.
pub(super) fn open_window_sql(t: &Tables) -> String {
    format!(
        "INSERT INTO {w} ({fk}, window_start, window_end, {ro})
         SELECT $1, $2, $3, CASE WHEN $5 THEN coalesce((
             SELECT GREATEST($4 + p.{ro} - p.{u}, 0) FROM {w} p
              WHERE p.{fk} = $1 AND p.window_end = $2), 0) ELSE 0 END
         ON CONFLICT ({fk}, window_start) DO NOTHING",
        w = t.windows,
        fk = t.fk,
        ro = t.rollover,
        u = t.used
    )
}

#[derive(sqlx::FromRow)]
struct MeterRow {
    id: Uuid,
    scope: String,
    scope_id: Uuid,
    limit_value: i64,
    metric: Option<String>,
    period: Option<String>,
    timezone: String,
    starts_at: Option<time::OffsetDateTime>,
    ends_at: Option<time::OffsetDateTime>,
    warning_thresholds: Vec<i32>,
    rollover: bool,
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> GatewayError {
    tracing::warn!(error = %e, "budgets: database unavailable");
    GatewayError::new(
        ErrorCode::DependencyUnavailable,
        "the budget store is unavailable",
    )
}

pub(super) fn to_ts(t: time::OffsetDateTime) -> Option<Timestamp> {
    Timestamp::from_second(t.unix_timestamp()).ok()
}

pub(super) fn to_odt(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

async fn load_meters(pool: &PgPool) -> Result<Vec<Arc<Meter>>, sqlx::Error> {
    let rows: Vec<(bool, MeterRow)> = {
        let b: Vec<MeterRow> = sqlx::query_as(
            "SELECT id, scope::text AS scope, scope_id, amount_nanos AS limit_value,
                    NULL::text AS metric, period::text AS period, timezone, starts_at, ends_at,
                    warning_thresholds, rollover
               FROM budgets WHERE enabled",
        )
        .fetch_all(pool)
        .await?;
        let q: Vec<MeterRow> = sqlx::query_as(
            "SELECT id, scope::text AS scope, scope_id, limit_value, metric::text AS metric,
                    period::text AS period, timezone, starts_at, ends_at, warning_thresholds,
                    rollover
               FROM quotas WHERE enabled",
        )
        .fetch_all(pool)
        .await?;
        b.into_iter()
            .map(|r| (false, r))
            .chain(q.into_iter().map(|r| (true, r)))
            .collect()
    };
    let mut out = Vec::new();
    for (quota, r) in rows {
        let owner = match r.scope.as_str() {
            "ORG" => Owner::Org,
            "TEAM" => Owner::Team,
            "USER" => Owner::User,
            _ => Owner::ApiKey,
        };
        let metric = match r.metric.as_deref() {
            None | Some("COST") => Metric::Cost,
            Some("REQUESTS") => Metric::Requests,
            Some("TOKENS") => Metric::Tokens,
            Some("TOKENS_IN") => Metric::TokensIn,
            Some("TOKENS_OUT") => Metric::TokensOut,
            Some("ERRORS") => Metric::Errors,
            _ => Metric::LatencyMs,
        };
        // No period: a prepaid balance (budgets only; a quota's period is NOT NULL).
        let period = match r.period.as_deref() {
            None => None,
            Some(p) => match Period::parse(p) {
                Some(p) => Some(p),
                None => continue,
            },
        };
        let tz = match TimeZone::get(&r.timezone) {
            Ok(tz) => tz,
            Err(_) => {
                tracing::warn!(id = %r.id, timezone = %r.timezone, "budget skipped: unknown time zone");
                continue;
            }
        };
        let mut warnings: Vec<u8> = r
            .warning_thresholds
            .iter()
            .filter_map(|t| u8::try_from(*t).ok())
            .collect();
        warnings.sort_unstable();
        out.push(Arc::new(Meter {
            id: r.id.to_string(),
            quota,
            metric,
            owner,
            owner_id: r.scope_id.to_string(),
            limit: r.limit_value.max(0) as u64,
            period,
            tz,
            starts_at: r.starts_at.and_then(to_ts),
            ends_at: r.ends_at.and_then(to_ts),
            warnings,
            rollover: r.rollover && period.is_some(),
        }));
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Settles reservations left `RESERVED` past their expiry whose request did write its usage
/// record (the node settled nothing, e.g. it died between the record and the settle, or the
/// settle failed): each is settled to the record's actual amount, as the node would have, or
/// released when the record shows the request never reached a provider. Runs before
/// [`expire_stale`], with every meter refresh; each row changes once. Returns how many
/// reservations were settled or released.
pub async fn settle_stale(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut n = 0;
    for (t, actual) in [
        (&BUDGET, "u.cost_nanos"),
        (
            &QUOTA,
            "CASE q.metric
                WHEN 'REQUESTS' THEN 1
                WHEN 'TOKENS' THEN u.input_tokens + u.output_tokens
                WHEN 'TOKENS_IN' THEN u.input_tokens
                WHEN 'TOKENS_OUT' THEN u.output_tokens
                WHEN 'ERRORS' THEN (u.status >= 400 OR u.outcome <> 'success')::int
                WHEN 'COST' THEN u.cost_nanos
                ELSE GREATEST(u.latency_ms, 0)::bigint END",
        ),
    ] {
        let quota_join = if std::ptr::eq(t, &QUOTA) {
            "JOIN quotas q ON q.id = res.quota_id"
        } else {
            ""
        };
        let row: Option<(i64,)> = sqlx::query_as(&format!(
            "WITH found AS (
                SELECT res.id,
                       CASE WHEN jsonb_array_length(u.attempts) = 0 THEN 0 ELSE {actual} END AS actual,
                       jsonb_array_length(u.attempts) > 0 AS reached
                  FROM {res} res
                  JOIN usage_records u
                    ON u.request_id = regexp_replace(res.request_id, '/[0-9a-f]{{32}}$', '')
                  {quota_join}
                 WHERE res.state = 'RESERVED' AND res.expires_at < now()),
             r AS (
                UPDATE {res} res
                   SET state = CASE WHEN f.reached THEN 'SETTLED' ELSE 'RELEASED' END::reservation_state,
                       {ac} = f.actual
                  FROM found f
                 WHERE res.id = f.id AND res.state = 'RESERVED'
                RETURNING res.window_id, res.{a} AS amount, f.actual),
             s AS (SELECT window_id, sum(amount)::bigint AS total, sum(actual)::bigint AS used,
                          count(*) AS n
                     FROM r GROUP BY window_id),
             w AS (UPDATE {w} SET {re} = GREATEST({w}.{re} - s.total, 0), {u} = {w}.{u} + s.used
                     FROM s WHERE {w}.id = s.window_id RETURNING s.n)
             SELECT coalesce(sum(n), 0)::bigint FROM w",
            res = t.reservations,
            a = t.amount,
            ac = t.actual,
            w = t.windows,
            re = t.reserved,
            u = t.used
        ))
        .fetch_optional(pool)
        .await?;
        n += row.map(|r| r.0.max(0) as u64).unwrap_or(0);
    }
    sqlx::query(
        "UPDATE budget_requests b
            SET state = CASE WHEN jsonb_array_length(u.attempts) > 0 THEN 'SETTLED' ELSE 'RELEASED' END::budget_request_state,
                actual_nanos = u.cost_nanos
           FROM usage_records u
          WHERE b.state = 'RESERVED' AND b.expires_at < now()
            AND u.request_id = regexp_replace(b.request_id, '/[0-9a-f]{32}$', '')",
    )
    .execute(pool)
    .await?;
    Ok(n)
}

/// Expires reservations left `RESERVED` past their expiry (a node that died before settling)
/// and gives their amounts back to their windows. Runs with every meter refresh, on every
/// node; each row changes once. Returns how many reservations expired.
pub async fn expire_stale(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut n = 0;
    for t in [&BUDGET, &QUOTA] {
        let row: Option<(i64,)> = sqlx::query_as(&format!(
            "WITH r AS (
                UPDATE {res} SET state = 'EXPIRED'
                 WHERE state = 'RESERVED' AND expires_at < now()
                RETURNING window_id, {a} AS amount),
             s AS (SELECT window_id, sum(amount)::bigint AS total, count(*) AS n
                     FROM r GROUP BY window_id),
             u AS (UPDATE {w} SET {re} = GREATEST({w}.{re} - s.total, 0)
                     FROM s WHERE {w}.id = s.window_id RETURNING s.n)
             SELECT coalesce(sum(n), 0)::bigint FROM u",
            res = t.reservations,
            a = t.amount,
            w = t.windows,
            re = t.reserved
        ))
        .fetch_optional(pool)
        .await?;
        n += row.map(|r| r.0.max(0) as u64).unwrap_or(0);
    }
    sqlx::query(
        "UPDATE budget_requests SET state = 'EXPIRED'
          WHERE state = 'RESERVED' AND expires_at < now()",
    )
    .execute(pool)
    .await?;
    Ok(n)
}

/// An amount a settle added to a window's used amount in Postgres.
#[derive(Debug, Clone)]
pub struct Settled {
    pub meter: Arc<Meter>,
    /// The window's start.
    pub start: Timestamp,
    pub amount: u64,
    /// The window row's `used_version` once the amount was added.
    pub version: i64,
}

/// The database-backed budget store.
pub struct PgBudgets {
    db: PoolSlot,
    notifier: Arc<super::webhook::Notifier>,
    meters: ArcSwapOption<(Instant, Vec<Arc<Meter>>)>,
    refreshing: Arc<AtomicBool>,
    /// Ticket of the latest load started, and of the list stored: a slower, older load never
    /// replaces the list of a newer one (a change notification racing the periodic refresh).
    load_tickets: AtomicU64,
    stored_ticket: Mutex<u64>,
    /// How often the stale-reservation pass runs on its own (it also runs with each meter
    /// refresh while requests flow).
    sweep_every: Duration,
    sweeper: std::sync::Once,
}

impl std::fmt::Debug for PgBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgBudgets")
    }
}

/// A request's reservations in Postgres; released in the background when dropped unsettled.
#[derive(Debug)]
pub struct PgGrant {
    store: Arc<PgBudgets>,
    id: String,
    held: Vec<Arc<Meter>>,
    done: bool,
}

impl PgGrant {
    /// The meters this grant holds reservations on.
    pub fn meters(&self) -> &[Arc<Meter>] {
        &self.held
    }
}

impl Drop for PgGrant {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (store, id, held) = (
            self.store.clone(),
            std::mem::take(&mut self.id),
            std::mem::take(&mut self.held),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = store.finish(&id, &held, None).await;
            });
        }
    }
}

impl PgBudgets {
    /// A store over the data plane's database connection.
    pub fn new(
        db: PoolSlot,
        notifier: Arc<super::webhook::Notifier>,
        sweep_every: Duration,
    ) -> Arc<PgBudgets> {
        Arc::new(PgBudgets {
            db,
            notifier,
            meters: ArcSwapOption::empty(),
            refreshing: Arc::new(AtomicBool::new(false)),
            load_tickets: AtomicU64::new(0),
            stored_ticket: Mutex::new(0),
            sweep_every,
            sweeper: std::sync::Once::new(),
        })
    }

    /// Starts the timer of the stale-reservation pass (once, from inside the serving
    /// runtime): a node left idle still gives a dead node's reservations back.
    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper.call_once(|| {
            let me = Arc::downgrade(self);
            let every = self.sweep_every;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(store) = me.upgrade() else { return };
                    let Some(pool) = store.pool() else { continue };
                    if let Err(e) = settle_stale(&pool).await {
                        tracing::warn!(error = %e, "budgets: cannot settle stale reservations");
                    }
                    if let Err(e) = expire_stale(&pool).await {
                        tracing::warn!(error = %e, "budgets: cannot expire stale reservations");
                    }
                }
            });
        });
    }

    pub(super) fn pool(&self) -> Option<Arc<PgPool>> {
        self.db.load_full()
    }

    pub(super) fn notifier(&self) -> &super::webhook::Notifier {
        &self.notifier
    }

    /// The meters loaded so far (none before the first request that needed them).
    pub(super) fn cached_meters(&self) -> Vec<Arc<Meter>> {
        self.meters
            .load_full()
            .map(|m| m.1.clone())
            .unwrap_or_default()
    }

    /// Records in the window's row that the warning at `threshold` was sent (in the
    /// background; the admin API shows it).
    pub(super) fn mark_warned(&self, m: &Meter, start: Timestamp, threshold: u8) {
        let (Some(pool), Ok(mid), Ok(rt)) = (
            self.pool(),
            Uuid::parse_str(&m.id),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        let t = tables(m);
        let sql = format!(
            "UPDATE {w} SET warned_thresholds = array_append(warned_thresholds, $3)
              WHERE {fk} = $1 AND window_start = $2 AND NOT ($3 = ANY (warned_thresholds))",
            w = t.windows,
            fk = t.fk
        );
        rt.spawn(async move {
            let r = sqlx::query(&sql)
                .bind(mid)
                .bind(to_odt(start))
                .bind(i32::from(threshold))
                .execute(&*pool)
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "budgets: cannot record a sent warning");
            }
        });
    }

    /// Loads the meter list and stores it unless a load started later has stored its own
    /// meanwhile; returns the list now current.
    async fn load(&self, pool: &PgPool) -> Result<Arc<(Instant, Vec<Arc<Meter>>)>, sqlx::Error> {
        let ticket = self.load_tickets.fetch_add(1, Ordering::AcqRel) + 1;
        let v = load_meters(pool).await?;
        let fresh = Arc::new((Instant::now(), v));
        let mut stored = self.stored_ticket.lock().unwrap_or_else(|e| e.into_inner());
        if ticket > *stored {
            *stored = ticket;
            self.meters.store(Some(fresh.clone()));
            return Ok(fresh);
        }
        drop(stored);
        Ok(self.meters.load_full().unwrap_or(fresh))
    }

    /// Reloads the meter list now: called by the control service when a `budgets` or `quotas`
    /// row changed (the change notification), so a new, changed or deleted budget counts on
    /// every node within moments, as a key change does. A node that has not needed its list
    /// yet keeps loading it on first use.
    pub async fn reload_meters(&self) {
        if self.meters.load().is_none() {
            return;
        }
        let Some(pool) = self.pool() else { return };
        if let Err(e) = self.load(&pool).await {
            tracing::warn!(error = %e, "budgets: reload after a change failed; keeping the cached list");
        }
    }

    /// The meters, from memory (reloaded on every change notification, and refreshed in the
    /// background every few seconds as a safety net); the very first call loads them.
    async fn meters(self: &Arc<Self>) -> Result<Arc<(Instant, Vec<Arc<Meter>>)>, GatewayError> {
        if let Some(m) = self.meters.load_full() {
            if m.0.elapsed() > METERS_TTL && !self.refreshing.swap(true, Ordering::AcqRel) {
                let me = self.clone();
                tokio::spawn(async move {
                    if let Some(pool) = me.pool() {
                        if let Err(e) = settle_stale(&pool).await {
                            tracing::warn!(error = %e, "budgets: cannot settle stale reservations");
                        }
                        if let Err(e) = expire_stale(&pool).await {
                            tracing::warn!(error = %e, "budgets: cannot expire stale reservations");
                        }
                        match me.load(&pool).await {
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "budgets: refresh failed; keeping the cached list")
                            }
                        }
                    }
                    me.refreshing.store(false, Ordering::Release);
                });
            }
            return Ok(m);
        }
        // Never loaded: a database that is not reachable yet must not stop requests that have
        // no budget (the list is retried on the next request).
        let Some(pool) = self.pool() else {
            return Ok(Arc::new((Instant::now(), Vec::new())));
        };
        let loaded = tokio::time::timeout(Duration::from_secs(2), self.load(&pool)).await;
        match loaded.unwrap_or(Err(sqlx::Error::PoolTimedOut)) {
            Ok(m) => Ok(m),
            Err(e) => {
                // Cached empty: the background refresh retries within METERS_TTL, and requests
                // do not each wait for an unreachable database meanwhile.
                tracing::warn!(error = %e, "budgets: cannot load the budget list yet");
                let m = Arc::new((Instant::now(), Vec::new()));
                self.meters.store(Some(m.clone()));
                Ok(m)
            }
        }
    }

    /// The meters that apply to `key` now (from memory once loaded).
    pub async fn applying(
        self: &Arc<Self>,
        key: &VirtualKey,
        now: Timestamp,
    ) -> Result<Vec<Arc<Meter>>, GatewayError> {
        self.start_sweeper();
        let all = self.meters().await?;
        Ok(all
            .1
            .iter()
            .filter(|m| m.applies(key, now))
            .cloned()
            .collect())
    }

    /// The prepaid balances that apply to `key`, read from their rows now (top-ups included).
    pub async fn balances(
        self: &Arc<Self>,
        key: &VirtualKey,
        now: Timestamp,
    ) -> Result<Vec<serde_json::Value>, GatewayError> {
        let balances: Vec<Arc<Meter>> = self
            .applying(key, now)
            .await?
            .into_iter()
            .filter(|m| m.is_balance() && !m.quota)
            .collect();
        if balances.is_empty() {
            return Ok(Vec::new());
        }
        let pool = self.pool().ok_or_else(|| unavailable("not connected"))?;
        let ids: Vec<Uuid> = balances
            .iter()
            .filter_map(|m| Uuid::parse_str(&m.id).ok())
            .collect();
        let rows: Vec<(Uuid, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT b.id, b.amount_nanos, w.used_nanos, w.reserved_nanos
               FROM budgets b
               LEFT JOIN budget_windows w ON w.budget_id = b.id AND w.window_start = $2
              WHERE b.id = ANY($1)",
        )
        .bind(&ids)
        .bind(to_odt(
            Timestamp::from_second(super::budget::BALANCE_START).unwrap_or_default(),
        ))
        .fetch_all(&*pool)
        .await
        .map_err(unavailable)?;
        Ok(balances
            .iter()
            .filter_map(|m| {
                let (_, credited, used, reserved) =
                    rows.iter().find(|r| r.0.to_string() == m.id)?;
                Some(super::budget::balance_json(
                    m,
                    (*credited).max(0) as u64,
                    used.unwrap_or(0).max(0) as u64,
                    reserved.unwrap_or(0).max(0) as u64,
                ))
            })
            .collect())
    }

    /// Reserves `est` on every meter of `applying`, all or none (pipeline step 8).
    pub async fn reserve(
        self: &Arc<Self>,
        applying: Vec<Arc<Meter>>,
        key: &VirtualKey,
        est: &Estimate,
        request_id: &str,
        now: Timestamp,
    ) -> Result<Option<PgGrant>, GatewayError> {
        if applying.is_empty() {
            return Ok(None);
        }
        let pool = self.pool().ok_or_else(|| unavailable("not connected"))?;
        // Unique per reservation even when a client reuses its X-Request-Id.
        let id = format!(
            "{}/{}",
            request_id.chars().take(160).collect::<String>(),
            Uuid::new_v4().simple()
        );
        let mut tx = pool.begin().await.map_err(unavailable)?;
        let expires = to_odt(now) + time::Duration::seconds(RESERVATION_TTL_SECONDS);
        sqlx::query(
            "INSERT INTO budget_requests (request_id, organisation_id, api_key_id, estimate_nanos, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(Uuid::parse_str(&key.organisation_id).ok())
        .bind(Uuid::parse_str(&key.id).ok())
        .bind(est.cost_nanos as i64)
        .bind(expires)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        for m in &applying {
            let t = tables(m);
            let (start, end) = m.window(now);
            let mid = Uuid::parse_str(&m.id).map_err(unavailable)?;
            let amount = m.metric.estimate(est) as i64;
            sqlx::query(&open_window_sql(t))
                .bind(mid)
                .bind(to_odt(start))
                .bind(to_odt(end))
                .bind(m.limit as i64)
                .bind(m.rollover)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            // A balance's limit is what the budget row says now (top-ups included).
            let limit = if m.is_balance() {
                "(SELECT amount_nanos FROM budgets WHERE id = $1)".to_string()
            } else {
                format!("$4 + {}", t.rollover)
            };
            let window_id: Option<Uuid> = sqlx::query_scalar(&format!(
                "UPDATE {w} SET {r} = {r} + $3
                  WHERE {fk} = $1 AND window_start = $2
                    AND {u} + {r} + GREATEST($3, 1) <= {limit}
                 RETURNING id",
                w = t.windows,
                r = t.reserved,
                u = t.used,
                fk = t.fk
            ))
            .bind(mid)
            .bind(to_odt(start))
            .bind(amount)
            .bind(m.limit as i64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            let Some(window_id) = window_id else {
                let limit = if m.is_balance() {
                    "(SELECT amount_nanos FROM budgets WHERE id = $1)".to_string()
                } else {
                    format!("$3 + {}", t.rollover)
                };
                let (used, reserved, limit): (i64, i64, i64) = sqlx::query_as(&format!(
                    "SELECT {u}, {r}, {limit} FROM {w} WHERE {fk} = $1 AND window_start = $2",
                    w = t.windows,
                    r = t.reserved,
                    u = t.used,
                    fk = t.fk
                ))
                .bind(mid)
                .bind(to_odt(start))
                .bind(m.limit as i64)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
                drop(tx);
                return Err(super::budget::denial(
                    m,
                    limit.max(0) as u64,
                    used.max(0) as u64,
                    reserved.max(0) as u64,
                    end,
                    now,
                ));
            };
            sqlx::query(&format!(
                "INSERT INTO {res} (request_id, {fk}, window_id, {a}, expires_at)
                 VALUES ($1, $2, $3, $4, $5)",
                res = t.reservations,
                fk = t.fk,
                a = t.amount
            ))
            .bind(&id)
            .bind(mid)
            .bind(window_id)
            .bind(amount)
            .bind(expires)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(PgGrant {
            store: self.clone(),
            id,
            held: applying,
            done: false,
        }))
    }

    /// Settles (`Some(record)`) or releases (`None`) every reservation of request `id`.
    /// Idempotent: only reservations still `RESERVED` change.
    async fn finish(
        &self,
        id: &str,
        held: &[Arc<Meter>],
        rec: Option<&UsageRecord>,
    ) -> Result<Vec<Settled>, sqlx::Error> {
        let Some(pool) = self.pool() else {
            return Ok(Vec::new());
        };
        let mut settled = Vec::new();
        let mut tx = pool.begin().await?;
        let state = if rec.is_some() { "SETTLED" } else { "RELEASED" };
        let mut crossed = Vec::new();
        for m in held {
            let t = tables(m);
            let actual = rec.map(|r| m.metric.actual(r)).unwrap_or(0) as i64;
            let mid = Uuid::parse_str(&m.id).unwrap_or_default();
            type Row = (Uuid, i64, time::OffsetDateTime, time::OffsetDateTime, i64);
            let row: Option<Row> = sqlx::query_as(&format!(
                "WITH r AS (
                    UPDATE {res} SET state = $3::reservation_state, {ac} = $4
                     WHERE request_id = $1 AND {fk} = $2 AND state = 'RESERVED'
                    RETURNING window_id, {a} AS amount)
                 UPDATE {w} SET {r} = GREATEST({w}.{r} - r.amount, 0), {u} = {w}.{u} + $4
                   FROM r WHERE {w}.id = r.window_id
                 RETURNING {w}.id, {w}.{u}, {w}.window_start, {w}.window_end, {w}.used_version",
                res = t.reservations,
                ac = t.actual,
                fk = t.fk,
                a = t.amount,
                w = t.windows,
                r = t.reserved,
                u = t.used
            ))
            .bind(id)
            .bind(mid)
            .bind(state)
            .bind(actual)
            .fetch_optional(&mut *tx)
            .await?;
            if let (Some((_, _, ws, _, version)), true) = (&row, actual > 0) {
                settled.push(Settled {
                    meter: m.clone(),
                    start: to_ts(*ws).unwrap_or_default(),
                    amount: actual as u64,
                    version: *version,
                });
            }
            if let (Some((wid, used, ws, we, _)), false) = (row, m.warnings.is_empty()) {
                let window = (to_ts(ws).unwrap_or_default(), to_ts(we).unwrap_or_default());
                let before = (used - actual).max(0) as u64;
                let limit = if m.is_balance() {
                    let credited: i64 =
                        sqlx::query_scalar("SELECT amount_nanos FROM budgets WHERE id = $1")
                            .bind(mid)
                            .fetch_optional(&mut *tx)
                            .await?
                            .unwrap_or(m.limit as i64);
                    credited.max(0) as u64
                } else {
                    m.limit
                };
                for th in &m.warnings {
                    let at = limit.saturating_mul(u64::from(*th)) / 100;
                    if before < at && used as u64 >= at {
                        let n = sqlx::query(&format!(
                            "UPDATE {w} SET warned_thresholds = array_append(warned_thresholds, $2)
                              WHERE id = $1 AND NOT ($2 = ANY (warned_thresholds))",
                            w = t.windows
                        ))
                        .bind(wid)
                        .bind(i32::from(*th))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        if n == 1 {
                            crossed.push((m.clone(), *th, used, limit, window));
                        }
                    }
                }
            }
        }
        sqlx::query(
            "UPDATE budget_requests SET state = $2::budget_request_state, actual_nanos = $3
              WHERE request_id = $1 AND state = 'RESERVED'",
        )
        .bind(id)
        .bind(state)
        .bind(rec.map(|r| r.cost_nanos as i64))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        for (m, th, used, limit, window) in crossed {
            super::budget::warned(&self.notifier, &m, th, used as u64, limit, window);
        }
        Ok(settled)
    }

    /// Post-flight: settles to the record (or releases when nothing reached the provider).
    /// Returns what was added to each window's used amount (with the row's new
    /// `used_version`), for the Redis fast path to reconcile after an outage.
    pub async fn settle(
        &self,
        mut g: PgGrant,
        rec: &UsageRecord,
        reached_provider: bool,
    ) -> Vec<Settled> {
        g.done = true;
        let r = self
            .finish(&g.id, &g.held, reached_provider.then_some(rec))
            .await;
        match r {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, request_id = %g.id, "budgets: settle failed; the reservation expires");
                Vec::new()
            }
        }
    }
}
