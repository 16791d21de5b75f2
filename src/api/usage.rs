//! Usage and invoice queries (SPEC §1.3, §10): usage records and rollups filtered by period,
//! team, key, user, model and provider; an invoice is a period's cost broken down by team,
//! api key, model and MCP server. JSON, or CSV with `?format=csv`.
//!
//! Periods: `period=this_month` (the calendar month, UTC), `last_month`, `last_30_days`,
//! `last_24_hours`, or `custom` with `from` and `to` (RFC 3339, or `YYYY-MM-DD`; a date-only
//! `to` includes that day). `from`/`to` without `period` mean `custom`. Ranges are `[from, to)`.

use super::csv;
use super::resources::{page, visibility, Rows};
use super::sql::Sql;
use super::{json_reply, ApiError, ApiResult, Ctx};
use crate::respond::Reply;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{Date, Duration, Month, OffsetDateTime};
use uuid::Uuid;

/// A time range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub name: String,
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
}

fn parse_time(field: &str, s: &str, end: bool) -> ApiResult<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    match Date::parse(s, &fmt) {
        Ok(d) => {
            let t = d.midnight().assume_utc();
            Ok(if end { t + Duration::days(1) } else { t })
        }
        Err(_) => Err(ApiError::invalid(
            field,
            "must be an RFC 3339 timestamp or YYYY-MM-DD",
        )),
    }
}

fn month_start(d: Date) -> OffsetDateTime {
    d.replace_day(1).unwrap_or(d).midnight().assume_utc()
}

fn next_month(t: OffsetDateTime) -> OffsetDateTime {
    let (y, m) = if t.month() == Month::December {
        (t.year() + 1, Month::January)
    } else {
        (t.year(), t.month().next())
    };
    Date::from_calendar_date(y, m, 1)
        .map(|d| d.midnight().assume_utc())
        .unwrap_or(t)
}

/// The period of a request, relative to `now`.
pub fn period_at(
    name: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    default: Option<&str>,
    now: OffsetDateTime,
) -> ApiResult<Period> {
    let name = match (name, from.is_some() || to.is_some()) {
        (Some(n), _) => n,
        (None, true) => "custom",
        (None, false) => match default {
            Some(d) => d,
            None => {
                return Ok(Period {
                    name: "all".into(),
                    from: None,
                    to: None,
                })
            }
        },
    };
    let this_month = month_start(now.date());
    let (f, t) = match name {
        "this_month" => (this_month, next_month(this_month)),
        "last_month" => {
            let prev = month_start((this_month - Duration::days(1)).date());
            (prev, this_month)
        }
        "last_30_days" => (now - Duration::days(30), now),
        "last_24_hours" => (now - Duration::hours(24), now),
        "custom" => {
            let f = from
                .map(|s| parse_time("from", s, false))
                .transpose()?
                .ok_or_else(|| ApiError::invalid("from", "is required for a custom period"))?;
            let t = to
                .map(|s| parse_time("to", s, true))
                .transpose()?
                .ok_or_else(|| ApiError::invalid("to", "is required for a custom period"))?;
            (f, t)
        }
        _ => {
            return Err(ApiError::invalid(
                "period",
                "must be one of this_month, last_month, last_30_days, last_24_hours, custom",
            ))
        }
    };
    if t <= f {
        return Err(ApiError::invalid("to", "must be after from"));
    }
    Ok(Period {
        name: name.to_string(),
        from: Some(f),
        to: Some(t),
    })
}

fn period(ctx: &Ctx<'_>, default: Option<&str>) -> ApiResult<Period> {
    period_at(
        ctx.req.q("period"),
        ctx.req.q("from"),
        ctx.req.q("to"),
        default,
        OffsetDateTime::now_utc(),
    )
}

fn rfc(t: Option<OffsetDateTime>) -> Value {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .map(Value::String)
        .unwrap_or(Value::Null)
}

/// Exact decimal USD of nanos-USD.
pub fn usd(nanos: i64) -> String {
    format!(
        "{}.{:09}",
        nanos / 1_000_000_000,
        (nanos % 1_000_000_000).abs()
    )
}

/// Common filters of usage queries: organisation, visibility, time column in the period, and
/// the dimension filters present in the query.
fn usage_where(
    ctx: &Ctx<'_>,
    q: &mut Sql,
    alias: &str,
    time_col: &str,
    p: &Period,
    dims: &[(&str, &str, bool)],
    extra_allowed: &[&str],
) -> ApiResult<()> {
    let org = q.arg(ctx.org()?.to_string());
    q.push(&format!(" WHERE {alias}.organisation_id = {org}::uuid"));
    let vis = visibility(Rows::Owner, ctx.caller.role, ctx.caller.user_id, q, alias);
    q.push(&vis);
    if let Some(f) = p.from {
        let a = q.arg(rfc(Some(f)).as_str().map(str::to_string));
        q.push(&format!(" AND {alias}.{time_col} >= {a}::timestamptz"));
    }
    if let Some(t) = p.to {
        let a = q.arg(rfc(Some(t)).as_str().map(str::to_string));
        q.push(&format!(" AND {alias}.{time_col} < {a}::timestamptz"));
    }
    for (k, v) in &ctx.req.query {
        if ["period", "from", "to", "format", "limit", "offset"].contains(&k.as_str())
            || extra_allowed.contains(&k.as_str())
        {
            continue;
        }
        let Some((_, col, is_uuid)) = dims.iter().find(|(name, _, _)| name == k) else {
            let names: Vec<&str> = dims.iter().map(|d| d.0).collect();
            return Err(ApiError::invalid(
                k,
                format!("unknown filter (filters: {})", names.join(", ")),
            ));
        };
        if *is_uuid {
            if Uuid::parse_str(v).is_err() {
                return Err(ApiError::invalid(k, "must be a uuid"));
            }
            let a = q.arg(v.clone());
            q.push(&format!(" AND {alias}.{col} = {a}::uuid"));
        } else {
            let a = q.arg(v.clone());
            q.push(&format!(" AND {alias}.{col} = {a}"));
        }
    }
    Ok(())
}

const RECORD_DIMS: &[(&str, &str, bool)] = &[
    ("team_id", "team_id", true),
    ("api_key_id", "api_key_id", true),
    ("user_id", "user_id", true),
    ("model", "model", false),
    ("provider", "provider", false),
    ("endpoint", "endpoint", false),
    ("outcome", "outcome", false),
    ("request_id", "request_id", false),
];

/// Columns of the usage records CSV.
pub const RECORD_CSV: &[&str] = &[
    "created_at",
    "request_id",
    "organisation_id",
    "team_id",
    "user_id",
    "api_key_id",
    "endpoint",
    "provider",
    "model",
    "upstream_model",
    "stream",
    "status",
    "outcome",
    "error_code",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_nanos",
    "latency_ms",
];

fn csv_wanted(ctx: &Ctx<'_>) -> ApiResult<bool> {
    match ctx.req.q("format") {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(_) => Err(ApiError::invalid("format", "must be json or csv")),
    }
}

/// `GET /usage/records`.
pub async fn records(ctx: &Ctx<'_>) -> ApiResult<Reply> {
    let csv_out = csv_wanted(ctx)?;
    let p = period(ctx, None)?;
    let (limit, offset) = page(ctx)?;
    let mut q = Sql::new(String::new());
    usage_where(ctx, &mut q, "r", "created_at", &p, RECORD_DIMS, &["errors"])?;
    match ctx.req.q("errors") {
        None | Some("false") => {}
        Some("true") => {
            q.push(" AND (r.status >= 400 OR r.outcome <> 'success')");
        }
        Some(_) => return Err(ApiError::invalid("errors", "must be true or false")),
    }
    let mut conn = ctx.pool.acquire().await?;
    let total = q
        .with_text(format!("SELECT count(*) FROM usage_records r{}", q.text))
        .count(&mut conn)
        .await?;
    let lp = q.arg(limit.to_string());
    let op = q.arg(offset.to_string());
    let rows = q
        .with_text(format!(
            "SELECT to_jsonb(r) FROM usage_records r{} ORDER BY r.created_at DESC, r.id
             LIMIT {lp}::bigint OFFSET {op}::bigint",
            q.text
        ))
        .json_rows(&mut conn)
        .await?;
    if csv_out {
        return Ok(csv::reply(csv::from_objects(RECORD_CSV, &rows)));
    }
    Ok(json_reply(
        200,
        &json!({
            "data": rows, "total": total, "limit": limit, "offset": offset,
            "period": {"name": p.name, "from": rfc(p.from), "to": rfc(p.to)},
        }),
    ))
}

/// Longest series [`series`] answers.
pub const MAX_BUCKETS: i64 = 2000;

/// The bucket starts of `[from, to)` at `granularity` (`HOUR` or `DAY`, UTC): every bucket the
/// range touches, the first one truncated back to its boundary.
pub fn buckets(
    from: OffsetDateTime,
    to: OffsetDateTime,
    granularity: &str,
) -> ApiResult<Vec<OffsetDateTime>> {
    let from = from.to_offset(time::UtcOffset::UTC);
    let (start, step) = match granularity {
        "HOUR" => (
            from.replace_minute(0)
                .and_then(|t| t.replace_second(0))
                .and_then(|t| t.replace_nanosecond(0))
                .unwrap_or(from),
            Duration::hours(1),
        ),
        _ => (from.date().midnight().assume_utc(), Duration::days(1)),
    };
    let n = ((to - start).whole_seconds() + step.whole_seconds() - 1) / step.whole_seconds();
    if n > MAX_BUCKETS {
        return Err(ApiError::invalid(
            "granularity",
            format!("the period has {n} buckets at this granularity (at most {MAX_BUCKETS})"),
        ));
    }
    Ok((0..n.max(0)).map(|i| start + step * (i as i32)).collect())
}

/// `GET …/usage/series`: one point per hour (`granularity=HOUR`) or day (`DAY`, the default) of
/// the period, zero points included, from the usage records: requests by status class, errors,
/// tokens, cost, and latency and time-to-first-byte percentiles (p50, p95). Same filters and
/// visibility as the records.
pub async fn series(ctx: &Ctx<'_>) -> ApiResult<Reply> {
    let p = period(ctx, Some("last_30_days"))?;
    let granularity = ctx
        .req
        .q("granularity")
        .unwrap_or("DAY")
        .to_ascii_uppercase();
    if !["HOUR", "DAY"].contains(&granularity.as_str()) {
        return Err(ApiError::invalid("granularity", "must be HOUR or DAY"));
    }
    let (Some(from), Some(to)) = (p.from, p.to) else {
        return Err(ApiError::invalid("period", "a bounded period is required"));
    };
    let starts = buckets(from, to, &granularity)?;
    let mut q = Sql::new(String::new());
    usage_where(
        ctx,
        &mut q,
        "r",
        "created_at",
        &p,
        RECORD_DIMS,
        &["granularity"],
    )?;
    let unit = if granularity == "HOUR" { "hour" } else { "day" };
    let mut conn = ctx.pool.acquire().await?;
    let rows = q
        .with_text(format!(
            "SELECT jsonb_build_object(
                'bucket_start', to_char(date_trunc('{unit}', r.created_at, 'UTC') AT TIME ZONE 'UTC',
                                        'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                'requests', count(*),
                'status_2xx', count(*) FILTER (WHERE r.status BETWEEN 200 AND 299),
                'status_4xx', count(*) FILTER (WHERE r.status BETWEEN 400 AND 499),
                'status_5xx', count(*) FILTER (WHERE r.status BETWEEN 500 AND 599),
                'status_other', count(*) FILTER (WHERE r.status < 200 OR r.status BETWEEN 300 AND 399
                                                  OR r.status > 599),
                'errors', count(*) FILTER (WHERE r.status >= 400 OR r.outcome <> 'success'),
                'input_tokens', coalesce(sum(r.input_tokens), 0),
                'output_tokens', coalesce(sum(r.output_tokens), 0),
                'cost_nanos', coalesce(sum(r.cost_nanos), 0),
                'latency_p50_ms', percentile_cont(0.5) WITHIN GROUP (ORDER BY r.latency_ms),
                'latency_p95_ms', percentile_cont(0.95) WITHIN GROUP (ORDER BY r.latency_ms),
                'ttfb_p50_ms', percentile_cont(0.5) WITHIN GROUP (ORDER BY r.ttfb_ms),
                'ttfb_p95_ms', percentile_cont(0.95) WITHIN GROUP (ORDER BY r.ttfb_ms))
             FROM usage_records r{} GROUP BY date_trunc('{unit}', r.created_at, 'UTC')",
            q.text
        ))
        .json_rows(&mut conn)
        .await?;
    let mut by_start: std::collections::HashMap<String, Value> = rows
        .into_iter()
        .filter_map(|r| Some((r["bucket_start"].as_str()?.to_string(), r)))
        .collect();
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    let data: Vec<Value> = starts
        .iter()
        .map(|t| {
            let key = t.format(&fmt).unwrap_or_default();
            by_start.remove(&key).unwrap_or_else(|| {
                json!({"bucket_start": key, "requests": 0, "status_2xx": 0, "status_4xx": 0,
                       "status_5xx": 0, "status_other": 0, "errors": 0, "input_tokens": 0,
                       "output_tokens": 0, "cost_nanos": 0, "latency_p50_ms": null,
                       "latency_p95_ms": null, "ttfb_p50_ms": null, "ttfb_p95_ms": null})
            })
        })
        .collect();
    Ok(json_reply(
        200,
        &json!({
            "granularity": granularity, "data": data,
            "period": {"name": p.name, "from": rfc(p.from), "to": rfc(p.to)},
        }),
    ))
}

const ROLLUP_CSV: &[&str] = &[
    "granularity",
    "bucket_start",
    "team_id",
    "user_id",
    "api_key_id",
    "model",
    "provider",
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "mcp_calls",
    "mcp_cost_nanos",
];

/// `GET /usage/rollups` (`granularity=HOUR|DAY|MONTH`, default DAY).
pub async fn rollups(ctx: &Ctx<'_>) -> ApiResult<Reply> {
    let csv_out = csv_wanted(ctx)?;
    let p = period(ctx, None)?;
    let (limit, offset) = page(ctx)?;
    let granularity = ctx
        .req
        .q("granularity")
        .unwrap_or("DAY")
        .to_ascii_uppercase();
    if !["HOUR", "DAY", "MONTH"].contains(&granularity.as_str()) {
        return Err(ApiError::invalid(
            "granularity",
            "must be HOUR, DAY or MONTH",
        ));
    }
    let mut q = Sql::new(String::new());
    usage_where(
        ctx,
        &mut q,
        "r",
        "bucket_start",
        &p,
        RECORD_DIMS
            .iter()
            .filter(|d| !["endpoint", "outcome", "request_id"].contains(&d.0))
            .copied()
            .collect::<Vec<_>>()
            .as_slice(),
        &["granularity"],
    )?;
    let g = q.arg(granularity.clone());
    q.push(&format!(" AND r.granularity = {g}::usage_granularity"));
    let mut conn = ctx.pool.acquire().await?;
    let totals = q
        .with_text(format!(
            "SELECT jsonb_build_object('rows', count(*), 'requests', coalesce(sum(requests), 0),
                'errors', coalesce(sum(errors), 0), 'input_tokens', coalesce(sum(input_tokens), 0),
                'output_tokens', coalesce(sum(output_tokens), 0),
                'cost_nanos', coalesce(sum(cost_nanos), 0))
             FROM usage_rollups r{}",
            q.text
        ))
        .json_row(&mut conn)
        .await?
        .unwrap_or(Value::Null);
    let lp = q.arg(limit.to_string());
    let op = q.arg(offset.to_string());
    let rows = q
        .with_text(format!(
            "SELECT to_jsonb(r) - 'dims_key' FROM usage_rollups r{} ORDER BY r.bucket_start, r.dims_key
             LIMIT {lp}::bigint OFFSET {op}::bigint",
            q.text
        ))
        .json_rows(&mut conn)
        .await?;
    if csv_out {
        return Ok(csv::reply(csv::from_objects(ROLLUP_CSV, &rows)));
    }
    Ok(json_reply(
        200,
        &json!({
            "data": rows, "total": totals["rows"], "limit": limit, "offset": offset,
            "totals": totals,
            "period": {"name": p.name, "from": rfc(p.from), "to": rfc(p.to)},
        }),
    ))
}

/// One breakdown of an invoice: `(id, name, requests, input, output, cost)` rows.
async fn breakdown(
    ctx: &Ctx<'_>,
    conn: &mut sqlx::PgConnection,
    base: &Sql,
    select: &str,
) -> ApiResult<Vec<Value>> {
    let rows = base
        .with_text(format!("{select}{}", base.text))
        .json_rows(conn)
        .await?;
    let _ = ctx;
    Ok(rows
        .into_iter()
        .map(|mut r| {
            let cost = r["cost_nanos"].as_i64().unwrap_or(0);
            r["cost_usd"] = json!(usd(cost));
            r
        })
        .collect())
}

const LINE: &str = "'requests', count(*), 'input_tokens', coalesce(sum(r.input_tokens), 0),
    'output_tokens', coalesce(sum(r.output_tokens), 0), 'cost_nanos', coalesce(sum(r.cost_nanos), 0)";

/// `GET /invoices`: the period's cost by team, api key, model and MCP server.
pub async fn invoice(ctx: &Ctx<'_>) -> ApiResult<Reply> {
    let csv_out = csv_wanted(ctx)?;
    let p = period(ctx, Some("this_month"))?;
    let dims: &[(&str, &str, bool)] = &[
        ("team_id", "team_id", true),
        ("api_key_id", "api_key_id", true),
        ("user_id", "user_id", true),
    ];
    let mut q = Sql::new(String::new());
    usage_where(ctx, &mut q, "r", "created_at", &p, dims, &[])?;
    let mut conn = ctx.pool.acquire().await?;
    let mut qt = q.clone();
    qt.push(" GROUP BY r.team_id ORDER BY 1");
    let by_team = breakdown(
        ctx,
        &mut conn,
        &qt,
        &format!(
            "SELECT jsonb_build_object('id', r.team_id, 'name', min(tm.name), {LINE})
         FROM usage_records r LEFT JOIN teams tm ON tm.id = r.team_id"
        ),
    )
    .await?;
    let mut qk = q.clone();
    qk.push(" GROUP BY r.api_key_id ORDER BY 1");
    let by_key = breakdown(ctx, &mut conn, &qk, &format!(
        "SELECT jsonb_build_object('id', r.api_key_id, 'name', min(k.name), 'prefix', min(k.key_prefix), {LINE})
         FROM usage_records r LEFT JOIN api_keys k ON k.id = r.api_key_id"
    ))
    .await?;
    let mut qm = q.clone();
    qm.push(" GROUP BY r.model, r.provider ORDER BY 1");
    let by_model = breakdown(
        ctx,
        &mut conn,
        &qm,
        &format!(
        "SELECT jsonb_build_object('id', r.model, 'name', r.model, 'provider', r.provider, {LINE})
         FROM usage_records r"
    ),
    )
    .await?;
    let mut qs = Sql::new(String::new());
    usage_where(ctx, &mut qs, "r", "created_at", &p, dims, &[])?;
    qs.push(" GROUP BY r.mcp_server_id ORDER BY 1");
    let by_mcp = breakdown(ctx, &mut conn, &qs,
        "SELECT jsonb_build_object('id', r.mcp_server_id, 'name', coalesce(min(s.name), min(r.server_slug)),
            'requests', count(*), 'input_tokens', 0, 'output_tokens', 0,
            'cost_nanos', coalesce(sum(r.cost_nanos), 0))
         FROM mcp_usage_records r LEFT JOIN mcp_servers s ON s.id = r.mcp_server_id",
    )
    .await?;
    let sum =
        |rows: &[Value], f: &str| rows.iter().map(|r| r[f].as_i64().unwrap_or(0)).sum::<i64>();
    let llm_cost = sum(&by_model, "cost_nanos");
    let mcp_cost = sum(&by_mcp, "cost_nanos");
    let total = llm_cost + mcp_cost;
    let totals = json!({
        "requests": sum(&by_model, "requests"),
        "input_tokens": sum(&by_model, "input_tokens"),
        "output_tokens": sum(&by_model, "output_tokens"),
        "llm_cost_nanos": llm_cost,
        "mcp_calls": sum(&by_mcp, "requests"),
        "mcp_cost_nanos": mcp_cost,
        "cost_nanos": total,
        "cost_usd": usd(total),
    });
    if csv_out {
        let header = [
            "section",
            "id",
            "name",
            "requests",
            "input_tokens",
            "output_tokens",
            "cost_nanos",
            "cost_usd",
        ];
        let mut rows: Vec<Vec<String>> = Vec::new();
        for (section, lines) in [
            ("team", &by_team),
            ("api_key", &by_key),
            ("model", &by_model),
            ("mcp_server", &by_mcp),
        ] {
            for l in lines.iter() {
                rows.push(
                    std::iter::once(section.to_string())
                        .chain(header[1..].iter().map(|h| csv::value_text(&l[*h])))
                        .collect(),
                );
            }
        }
        rows.push(vec![
            "total".into(),
            String::new(),
            String::new(),
            csv::value_text(&totals["requests"]),
            csv::value_text(&totals["input_tokens"]),
            csv::value_text(&totals["output_tokens"]),
            csv::value_text(&totals["cost_nanos"]),
            csv::value_text(&totals["cost_usd"]),
        ]);
        return Ok(csv::reply(csv::document(&header, rows)));
    }
    Ok(json_reply(
        200,
        &json!({
            "organisation_id": ctx.org()?.to_string(),
            "currency": "USD",
            "period": {"name": p.name, "from": rfc(p.from), "to": rfc(p.to)},
            "totals": totals,
            "teams": by_team,
            "api_keys": by_key,
            "models": by_model,
            "mcp_servers": by_mcp,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &Rfc3339).expect("time")
    }

    #[test]
    fn periods() {
        let now = at("2026-01-15T10:00:00Z");
        let p = period_at(Some("this_month"), None, None, None, now).expect("this");
        assert_eq!(p.from, Some(at("2026-01-01T00:00:00Z")));
        assert_eq!(p.to, Some(at("2026-02-01T00:00:00Z")));
        let p = period_at(Some("last_month"), None, None, None, now).expect("last");
        assert_eq!(p.from, Some(at("2025-12-01T00:00:00Z")));
        assert_eq!(p.to, Some(at("2026-01-01T00:00:00Z")));
        let p = period_at(Some("last_30_days"), None, None, None, now).expect("30");
        assert_eq!(p.from, Some(at("2025-12-16T10:00:00Z")));
        let p = period_at(None, Some("2026-01-02"), Some("2026-01-03"), None, now).expect("custom");
        assert_eq!(p.name, "custom");
        assert_eq!(p.to, Some(at("2026-01-04T00:00:00Z")));
        let e = period_at(Some("custom"), Some("2026-01-02"), None, None, now).expect_err("to");
        assert_eq!(e.field.as_deref(), Some("to"));
        let e = period_at(Some("weekly"), None, None, None, now).expect_err("name");
        assert_eq!(e.field.as_deref(), Some("period"));
        let e = period_at(None, Some("soon"), Some("2026-01-03"), None, now).expect_err("from");
        assert_eq!(e.field.as_deref(), Some("from"));
        assert_eq!(
            period_at(None, None, None, None, now).expect("all").from,
            None
        );
    }

    #[test]
    fn series_buckets_cover_the_period() {
        let t = |s: &str| OffsetDateTime::parse(s, &Rfc3339).expect("a timestamp");
        // 24 hours from a time off the hour: the partial first hour and the current one.
        let b =
            buckets(t("2026-01-01T10:30:00Z"), t("2026-01-02T10:30:00Z"), "HOUR").expect("buckets");
        assert_eq!(b.len(), 25);
        assert_eq!(b[0], t("2026-01-01T10:00:00Z"));
        assert_eq!(b[24], t("2026-01-02T10:00:00Z"));
        // A calendar month by day.
        let b =
            buckets(t("2026-02-01T00:00:00Z"), t("2026-03-01T00:00:00Z"), "DAY").expect("buckets");
        assert_eq!(b.len(), 28);
        // Aligned hours: exactly 24.
        let b =
            buckets(t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z"), "HOUR").expect("buckets");
        assert_eq!(b.len(), 24);
        assert!(buckets(t("2020-01-01T00:00:00Z"), t("2026-01-01T00:00:00Z"), "HOUR").is_err());
    }

    #[test]
    fn usd_is_exact() {
        assert_eq!(usd(1_500_000_000), "1.500000000");
        assert_eq!(usd(42), "0.000000042");
    }
}
