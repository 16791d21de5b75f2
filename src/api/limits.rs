//! Budgets and quotas at run time (SPEC §7): the current window of each (used, reserved,
//! remaining, the reservations in flight), per budget, per quota and per owner, and the
//! top-ups of prepaid balances.
//!
//! * `GET …/budgets/{id}/usage`, `GET …/quotas/{id}/usage`: one meter's current window.
//! * `GET …/usage/limits?scope=&scope_id=`: every budget and quota of the organisation (or of
//!   one owner), each with its current window.
//! * `POST …/budgets/{id}/topups` `{"amount_nanos", "note"?}`: credits a prepaid balance (a
//!   budget without a period). The budget's `amount_nanos` grows by the amount and the top-up
//!   is recorded in `budget_topups`, in one transaction; the gateway checks reservations
//!   against the row, so the credit counts at once on every node. `GET` lists the top-ups.
//!
//! Windows are computed as the gateway computes them ([`crate::governance::budget`]): the
//! period in the meter's time zone; a balance has one window that never ends.

use super::resources::page;
use super::{json_reply, ApiError, ApiResult, Ctx};
use crate::governance::budget::{meter_window, Period, BALANCE_START};
use crate::respond::Reply;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// Reservations listed per meter (the count is always exact).
const MAX_RESERVATIONS: i64 = 100;

/// Which kind of meter a route is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meter {
    Budget,
    Quota,
}

struct Tables {
    meters: &'static str,
    windows: &'static str,
    reservations: &'static str,
    fk: &'static str,
    limit: &'static str,
    metric: &'static str,
    used: &'static str,
    reserved: &'static str,
    rollover: &'static str,
    amount: &'static str,
}

impl Meter {
    fn tables(self) -> Tables {
        match self {
            Meter::Budget => Tables {
                meters: "budgets",
                windows: "budget_windows",
                reservations: "budget_reservations",
                fk: "budget_id",
                limit: "amount_nanos",
                metric: "'COST'",
                used: "used_nanos",
                reserved: "reserved_nanos",
                rollover: "rollover_nanos",
                amount: "amount_nanos",
            },
            Meter::Quota => Tables {
                meters: "quotas",
                windows: "quota_windows",
                reservations: "quota_reservations",
                fk: "quota_id",
                limit: "limit_value",
                metric: "metric::text",
                used: "used",
                reserved: "reserved",
                rollover: "rollover",
                amount: "amount",
            },
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Meter::Budget => "budget",
            Meter::Quota => "quota",
        }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    scope: String,
    scope_id: Uuid,
    limit_value: i64,
    metric: String,
    period: Option<String>,
    timezone: String,
    starts_at: Option<OffsetDateTime>,
    ends_at: Option<OffsetDateTime>,
    enabled: bool,
}

fn rfc3339(t: OffsetDateTime) -> Value {
    t.format(&Rfc3339).map(Value::from).unwrap_or(Value::Null)
}

fn odt(t: jiff::Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.as_second()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

async fn meter_rows(
    ctx: &Ctx<'_>,
    kind: Meter,
    id: Option<Uuid>,
    scope: Option<&str>,
    scope_id: Option<Uuid>,
) -> ApiResult<Vec<Row>> {
    let t = kind.tables();
    let rows = sqlx::query_as::<_, Row>(&format!(
        "SELECT id, name, scope::text AS scope, scope_id, {limit} AS limit_value,
                {metric} AS metric, period::text AS period, timezone, starts_at, ends_at, enabled
           FROM {m}
          WHERE organisation_id = $1
            AND ($2::uuid IS NULL OR id = $2)
            AND ($3::text IS NULL OR scope::text = $3)
            AND ($4::uuid IS NULL OR scope_id = $4)
          ORDER BY created_at, id",
        limit = t.limit,
        metric = t.metric,
        m = t.meters,
    ))
    .bind(ctx.org()?)
    .bind(id)
    .bind(scope)
    .bind(scope_id)
    .fetch_all(&ctx.pool)
    .await?;
    Ok(rows)
}

/// One reservation in flight, as the window views list it.
fn reservation(
    request_id: &str,
    amount: i64,
    created: OffsetDateTime,
    expires: OffsetDateTime,
) -> Value {
    json!({
        "request_id": request_id,
        "amount": amount,
        "created_at": rfc3339(created),
        "expires_at": rfc3339(expires),
    })
}

/// One meter with its current window.
async fn with_window(ctx: &Ctx<'_>, kind: Meter, r: Row) -> ApiResult<Value> {
    let t = kind.tables();
    let now = jiff::Timestamp::now();
    let period = r.period.as_deref().and_then(Period::parse);
    let tz = jiff::tz::TimeZone::get(&r.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    let (start, end) = meter_window(period, &tz, now);
    let window: Option<(Uuid, i64, i64, i64, Vec<i32>)> = sqlx::query_as(&format!(
        "SELECT id, {u}, {re}, {ro}, warned_thresholds FROM {w}
          WHERE {fk} = $1 AND window_start = $2",
        u = t.used,
        re = t.reserved,
        ro = t.rollover,
        w = t.windows,
        fk = t.fk
    ))
    .bind(r.id)
    .bind(odt(start))
    .fetch_optional(&ctx.pool)
    .await?;
    let (used, reserved, rollover, warned) = window
        .as_ref()
        .map(|w| (w.1, w.2, w.3, w.4.clone()))
        .unwrap_or_default();
    let mut reservations = Vec::new();
    let mut in_flight = 0i64;
    if let Some((wid, ..)) = &window {
        in_flight = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {res} WHERE window_id = $1 AND state = 'RESERVED'",
            res = t.reservations
        ))
        .bind(wid)
        .fetch_one(&ctx.pool)
        .await?;
        let rows: Vec<(String, i64, OffsetDateTime, OffsetDateTime)> = sqlx::query_as(&format!(
            "SELECT regexp_replace(request_id, '/[0-9a-f]{{32}}$', ''), {a}, created_at, expires_at
               FROM {res} WHERE window_id = $1 AND state = 'RESERVED'
              ORDER BY created_at, id LIMIT $2",
            a = t.amount,
            res = t.reservations
        ))
        .bind(wid)
        .bind(MAX_RESERVATIONS)
        .fetch_all(&ctx.pool)
        .await?;
        reservations = rows
            .into_iter()
            .map(|(request_id, amount, created, expires)| {
                reservation(&request_id, amount, created, expires)
            })
            .collect();
    }
    // With Redis as the budgets' fast path, the window in flight is there: Postgres has
    // the settled amounts (moments behind) and none of the reservations.
    let live = match (period.is_some(), ctx.state.governance.redis_budgets()) {
        (true, Some(rb)) => {
            rb.live_window(
                kind == Meter::Quota,
                &r.id.to_string(),
                start,
                MAX_RESERVATIONS as usize,
            )
            .await
        }
        _ => None,
    };
    let (used, reserved, rollover) = match &live {
        Some(l) => {
            in_flight += l.in_flight;
            let ttl = crate::governance::budget_pg::RESERVATION_TTL_SECONDS * 1000;
            let at = |ms: i64| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            };
            reservations.extend(l.reservations.iter().map(|(id, amount, expires_ms)| {
                reservation(id, *amount, at(expires_ms - ttl), at(*expires_ms))
            }));
            (
                l.used.max(used),
                reserved + l.reserved,
                l.rollover.max(rollover),
            )
        }
        None => (used, reserved, rollover),
    };
    let limit = r.limit_value.saturating_add(rollover);
    let active = r.enabled
        && r.starts_at.is_none_or(|s| odt(now) >= s)
        && r.ends_at.is_none_or(|e| odt(now) < e);
    Ok(json!({
        "id": r.id.to_string(),
        "kind": kind.kind(),
        "name": r.name,
        "scope": r.scope,
        "scope_id": r.scope_id.to_string(),
        "metric": r.metric,
        "period": r.period,
        "balance": period.is_none(),
        "timezone": r.timezone,
        "enabled": r.enabled,
        "active": active,
        "window": {
            "start": rfc3339(odt(start)),
            "end": if period.is_none() { Value::Null } else { rfc3339(odt(end)) },
        },
        "limit": limit,
        "rollover": rollover,
        "used": used,
        "reserved": reserved,
        "remaining": (limit - used - reserved).max(0),
        "warned_thresholds": warned,
        "reservations_in_flight": in_flight,
        "reservations": reservations,
    }))
}

/// `GET …/budgets/{id}/usage`, `GET …/quotas/{id}/usage`.
pub async fn usage(ctx: &Ctx<'_>, kind: Meter, id: Uuid) -> ApiResult<Reply> {
    let mut rows = meter_rows(ctx, kind, Some(id), None, None).await?;
    let Some(r) = rows.pop() else {
        return Err(ApiError::not_found(kind.kind()));
    };
    Ok(json_reply(200, &with_window(ctx, kind, r).await?))
}

/// `GET …/usage/limits?scope=&scope_id=`: every budget and quota (of one owner).
pub async fn owner_usage(ctx: &Ctx<'_>) -> ApiResult<Reply> {
    let scope = ctx.req.q("scope").filter(|s| !s.is_empty());
    if let Some(s) = scope {
        if !["ORG", "TEAM", "USER", "APIKEY"].contains(&s) {
            return Err(ApiError::invalid(
                "scope",
                "must be one of ORG, TEAM, USER, APIKEY",
            ));
        }
    }
    let scope_id = match ctx.req.q("scope_id").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => {
            Some(Uuid::parse_str(s).map_err(|_| ApiError::invalid("scope_id", "must be a uuid"))?)
        }
    };
    let mut data = Vec::new();
    for kind in [Meter::Budget, Meter::Quota] {
        for r in meter_rows(ctx, kind, None, scope, scope_id).await? {
            data.push(with_window(ctx, kind, r).await?);
        }
    }
    let total = data.len();
    Ok(json_reply(200, &json!({"data": data, "total": total})))
}

/// `POST …/budgets/{id}/topups`.
pub async fn topup(ctx: &Ctx<'_>, id: Uuid) -> ApiResult<Reply> {
    let body = ctx.body_object()?;
    let (amount, note) = topup_fields(&body)?;
    let org = ctx.org()?;
    let mut tx = ctx.pool.begin().await?;
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT period::text FROM budgets WHERE id = $1 AND organisation_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(org)
    .fetch_optional(&mut *tx)
    .await?;
    match row {
        None => return Err(ApiError::not_found("budget")),
        Some((Some(_),)) => {
            return Err(ApiError::invalid(
                "period",
                "only a prepaid balance (a budget without a period) can be topped up",
            ))
        }
        Some((None,)) => {}
    }
    let credited: i64 = sqlx::query_scalar(
        "UPDATE budgets SET amount_nanos = amount_nanos + $2 WHERE id = $1 RETURNING amount_nanos",
    )
    .bind(id)
    .bind(amount)
    .fetch_one(&mut *tx)
    .await?;
    let balance_start =
        OffsetDateTime::from_unix_timestamp(BALANCE_START).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    // New credit: warning thresholds may fire again as it is spent.
    let window: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE budget_windows SET warned_thresholds = '{}'
          WHERE budget_id = $1 AND window_start = $2
         RETURNING used_nanos, reserved_nanos",
    )
    .bind(id)
    .bind(balance_start)
    .fetch_optional(&mut *tx)
    .await?;
    let (topup_id, created): (Uuid, OffsetDateTime) = sqlx::query_as(
        "INSERT INTO budget_topups (budget_id, organisation_id, amount_nanos, credited_after_nanos,
                                    note, created_by)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, created_at",
    )
    .bind(id)
    .bind(org)
    .bind(amount)
    .bind(credited)
    .bind(&note)
    .bind(ctx.caller.user_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let (used, reserved) = window.unwrap_or_default();
    Ok(json_reply(
        201,
        &json!({
            "id": topup_id.to_string(),
            "budget_id": id.to_string(),
            "amount_nanos": amount,
            "credited_after_nanos": credited,
            "note": note,
            "created_by": ctx.caller.user_id.to_string(),
            "created_at": rfc3339(created),
            "balance": {
                "credited_nanos": credited,
                "used_nanos": used,
                "reserved_nanos": reserved,
                "remaining_nanos": (credited - used - reserved).max(0),
            },
        }),
    ))
}

fn topup_fields(body: &Map<String, Value>) -> ApiResult<(i64, String)> {
    if let Some(k) = body
        .keys()
        .find(|k| !["amount_nanos", "note"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(k, "unknown field"));
    }
    let amount = match body.get("amount_nanos") {
        None | Some(Value::Null) => return Err(ApiError::invalid("amount_nanos", "is required")),
        Some(v) => match v.as_i64() {
            Some(n) if n > 0 => n,
            _ => {
                return Err(ApiError::invalid(
                    "amount_nanos",
                    "must be a positive integer (nanos-USD)",
                ))
            }
        },
    };
    let note = match body.get("note") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.chars().count() <= 1000 => s.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::invalid("note", "must be at most 1000 characters"))
        }
        Some(_) => return Err(ApiError::invalid("note", "must be a string")),
    };
    Ok((amount, note))
}

/// `GET …/budgets/{id}/topups`: newest first, paginated.
pub async fn topups(ctx: &Ctx<'_>, id: Uuid) -> ApiResult<Reply> {
    let org = ctx.org()?;
    let (limit, offset) = page(ctx)?;
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM budgets WHERE id = $1 AND organisation_id = $2")
            .bind(id)
            .bind(org)
            .fetch_optional(&ctx.pool)
            .await?;
    exists.ok_or_else(|| ApiError::not_found("budget"))?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM budget_topups WHERE budget_id = $1")
        .bind(id)
        .fetch_one(&ctx.pool)
        .await?;
    type TopupRow = (Uuid, i64, i64, String, Option<Uuid>, OffsetDateTime);
    let rows: Vec<TopupRow> = sqlx::query_as(
        "SELECT id, amount_nanos, credited_after_nanos, note, created_by, created_at
           FROM budget_topups WHERE budget_id = $1
          ORDER BY created_at DESC, id LIMIT $2 OFFSET $3",
    )
    .bind(id)
    .bind(limit)
    .bind(offset)
    .fetch_all(&ctx.pool)
    .await?;
    let data: Vec<Value> = rows
        .into_iter()
        .map(|(tid, amount, credited, note, by, at)| {
            json!({
                "id": tid.to_string(),
                "budget_id": id.to_string(),
                "amount_nanos": amount,
                "credited_after_nanos": credited,
                "note": note,
                "created_by": by.map(|u| u.to_string()),
                "created_at": rfc3339(at),
            })
        })
        .collect();
    Ok(json_reply(
        200,
        &json!({"data": data, "total": total, "limit": limit, "offset": offset}),
    ))
}
