//! Dashboard (SVG charts of the usage series, top lists from the rollups), usage records with CSV export, invoices
//! (CSV and printable HTML), the API docs page and the playground. All figures come from the
//! admin API's usage, rollup and invoice operations as the signed-in user, so a MANAGER sees
//! their teams' traffic and a USER their own.

use super::view::{self, Scope};
use super::{api_error_page, Cx, Resp};
use crate::api::Role;
use http::Method;
use maud::{html, Markup, DOCTYPE};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

fn str_of(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

/// The period and dimension filters of a report page, as API query pairs.
fn filters(cx: &Cx<'_>, default_period: &str, dims: &[&str]) -> Vec<(String, String)> {
    let mut q = Vec::new();
    let period = cx.req.q("period").unwrap_or(default_period);
    q.push(("period".into(), period.to_string()));
    if period == "custom" {
        for k in ["from", "to"] {
            if let Some(v) = cx.req.q(k) {
                q.push((k.into(), v.to_string()));
            }
        }
    }
    for d in dims {
        if let Some(v) = cx.req.q(d) {
            q.push((d.to_string(), v.to_string()));
        }
    }
    q
}

fn query_string(q: &[(String, String)]) -> String {
    q.iter()
        .map(|(k, v)| format!("{k}={}", view::url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Period and dimension filter form (GET).
async fn filter_form(
    cx: &Cx<'_>,
    org: Uuid,
    action: &str,
    dims: &[&str],
    periods: &[&str],
) -> Markup {
    let period = cx.req.q("period").unwrap_or(periods[0]).to_string();
    let list = |what: &'static str, label: &'static str| async move {
        cx.list(&format!("/api/organisations/{org}/{what}"))
            .await
            .iter()
            .map(|r| (str_of(r, "id"), str_of(r, label)))
            .collect::<Vec<_>>()
    };
    let mut selects: Vec<(&str, &str, view::Choices)> = Vec::new();
    for d in dims {
        match *d {
            "team_id" => selects.push(("team_id", "Team", list("teams", "name").await)),
            "api_key_id" => selects.push(("api_key_id", "API key", list("api-keys", "name").await)),
            "model" => {
                let m = list("models", "name").await;
                selects.push((
                    "model",
                    "Model",
                    m.into_iter().map(|(_, n)| (n.clone(), n)).collect(),
                ));
            }
            "provider" => {
                let p = list("providers", "name").await;
                selects.push((
                    "provider",
                    "Provider",
                    p.into_iter().map(|(_, n)| (n.clone(), n)).collect(),
                ));
            }
            "outcome" => selects.push((
                "outcome",
                "Outcome",
                [
                    "success",
                    "error",
                    "denied",
                    "upstream_error",
                    "client_disconnected",
                ]
                .iter()
                .map(|o| (o.to_string(), o.replace('_', " ")))
                .collect(),
            )),
            _ => {}
        }
    }
    html! {
        form.filters method="get" action=(action) {
            div.field {
                label for="f_period" { "Period" }
                select #f_period name="period" {
                    @for p in periods {
                        option value=(p) selected[*p == period] { (p.replace('_', " ")) }
                    }
                }
            }
            div.field {
                label for="f_from" { "From " span.muted { "(custom)" } }
                input #f_from type="date" name="from" value=[cx.req.q("from")];
            }
            div.field {
                label for="f_to" { "To " span.muted { "(custom, inclusive)" } }
                input #f_to type="date" name="to" value=[cx.req.q("to")];
            }
            @for (name, label, opts) in &selects {
                div.field {
                    label for=(format!("f_{name}")) { (label) }
                    select id=(format!("f_{name}")) name=(name) {
                        option value="" { "All" }
                        @for (v, l) in opts {
                            option value=(v) selected[cx.req.q(name) == Some(v.as_str())] { (l) }
                        }
                    }
                }
            }
            @if dims.contains(&"errors") {
                div.check {
                    input #f_errors type="checkbox" name="errors" value="true" checked[cx.req.q("errors") == Some("true")];
                    label for="f_errors" { "Errors only" }
                }
            }
            button type="submit" { "Apply" }
        }
    }
}

/// The usage series of the dashboard's period and filters (`…/usage/series`), one point per
/// bucket, zero buckets included.
async fn usage_series(
    cx: &Cx<'_>,
    org: Uuid,
    q: &[(String, String)],
) -> Result<Vec<Value>, crate::api::ApiError> {
    let v = cx
        .api(
            Method::GET,
            &format!("/api/organisations/{org}/usage/series"),
            q.to_vec(),
            None,
        )
        .await?;
    Ok(v["data"].as_array().cloned().unwrap_or_default())
}

/// The dashboard's charts of a usage series: requests stacked by status class, tokens by
/// kind, cost, error rate, and latency p50 inside p95.
pub(super) fn series_charts(points: &[Value], hourly: bool) -> Markup {
    use super::chart::{render, Chart, Mode, Series};
    let buckets: Vec<(String, String)> = points
        .iter()
        .map(|p| {
            let t = view::fmt_time_str(p["bucket_start"].as_str().unwrap_or(""));
            if hourly {
                let short = t.get(11..16).unwrap_or("").to_string();
                (t, short)
            } else {
                let day: String = t.chars().take(10).collect();
                let short = day.get(5..).unwrap_or("").to_string();
                (day, short)
            }
        })
        .collect();
    let col = |f: &str| -> Vec<f64> {
        points
            .iter()
            .map(|p| p[f].as_f64().unwrap_or(0.0))
            .collect()
    };
    let x_label = if hourly { "Hour (UTC)" } else { "Day (UTC)" };
    let requests = col("requests");
    let errors = col("errors");
    let rate: Vec<f64> = requests
        .iter()
        .zip(&errors)
        .map(|(r, e)| if *r > 0.0 { e / r * 100.0 } else { 0.0 })
        .collect();
    let usd = |v: f64| view::usd(v.round() as i64);
    let pct = |v: f64| format!("{v:.0}%");
    let ms = |v: f64| format!("{v:.0} ms");
    let charts = [
        Chart {
            id: "chart-requests",
            title: "Requests",
            y_label: "requests",
            x_label,
            buckets: &buckets,
            series: vec![
                Series {
                    name: "2xx",
                    class: "s-2xx",
                    values: col("status_2xx"),
                },
                Series {
                    name: "4xx",
                    class: "s-4xx",
                    values: col("status_4xx"),
                },
                Series {
                    name: "5xx",
                    class: "s-5xx",
                    values: col("status_5xx"),
                },
                Series {
                    name: "other",
                    class: "s-other",
                    values: col("status_other"),
                },
            ],
            mode: Mode::Stack,
            integer: true,
            fmt: &num,
        },
        Chart {
            id: "chart-tokens",
            title: "Tokens",
            y_label: "tokens",
            x_label,
            buckets: &buckets,
            series: vec![
                Series {
                    name: "input",
                    class: "s-in",
                    values: col("input_tokens"),
                },
                Series {
                    name: "output",
                    class: "s-out",
                    values: col("output_tokens"),
                },
            ],
            mode: Mode::Stack,
            integer: true,
            fmt: &num,
        },
        Chart {
            id: "chart-cost",
            title: "Cost",
            y_label: "USD",
            x_label,
            buckets: &buckets,
            series: vec![Series {
                name: "cost",
                class: "s-cost",
                values: col("cost_nanos"),
            }],
            mode: Mode::Stack,
            integer: false,
            fmt: &usd,
        },
        Chart {
            id: "chart-errors",
            title: "Error rate",
            y_label: "% of requests",
            x_label,
            buckets: &buckets,
            series: vec![Series {
                name: "errors",
                class: "s-5xx",
                values: rate,
            }],
            mode: Mode::Stack,
            integer: true,
            fmt: &pct,
        },
        Chart {
            id: "chart-latency",
            title: "Latency",
            y_label: "ms",
            x_label,
            buckets: &buckets,
            series: vec![
                Series {
                    name: "p95",
                    class: "s-p95",
                    values: col("latency_p95_ms"),
                },
                Series {
                    name: "p50",
                    class: "s-p50",
                    values: col("latency_p50_ms"),
                },
            ],
            mode: Mode::Overlay,
            integer: true,
            fmt: &ms,
        },
    ];
    let quiet = requests.iter().all(|r| *r == 0.0);
    html! {
        @if quiet { p.muted { "No traffic in this period." } }
        div.charts {
            @for c in &charts { (render(c)) }
        }
    }
}

/// Every rollup row of the query (pages of 500, at most 20 pages).
async fn rollups(
    cx: &Cx<'_>,
    org: Uuid,
    q: &[(String, String)],
) -> Result<(Vec<Value>, Value), crate::api::ApiError> {
    let mut rows = Vec::new();
    let mut totals = Value::Null;
    for page in 0..20 {
        let mut qq = q.to_vec();
        qq.push(("limit".into(), "500".into()));
        qq.push(("offset".into(), (page * 500).to_string()));
        let v = cx
            .api(
                Method::GET,
                &format!("/api/organisations/{org}/usage/rollups"),
                qq,
                None,
            )
            .await?;
        let data = v["data"].as_array().cloned().unwrap_or_default();
        let n = data.len();
        rows.extend(data);
        totals = v["totals"].clone();
        if n < 500 {
            break;
        }
    }
    Ok((rows, totals))
}

fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn num(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else if n.fract() == 0.0 {
        format!("{n:.0}")
    } else {
        format!("{n:.2}")
    }
}

/// One budget of the dashboard's burn-down: its current window as the admin API computes it
/// (`GET …/usage/limits`: the period in the budget's time zone, the limit with the amount
/// rolled over, the settled and reserved spend, the thresholds already warned about).
pub(super) struct Burn {
    id: String,
    name: String,
    scope: String,
    scope_id: String,
    period: String,
    timezone: String,
    start: String,
    /// `None` for a prepaid balance (one window that never ends).
    end: Option<String>,
    limit: i64,
    rollover: i64,
    used: i64,
    reserved: i64,
    /// The budget's configured warning thresholds (percent).
    thresholds: Vec<i64>,
    /// The thresholds the gateway has warned about in this window.
    warned: Vec<i64>,
}

impl Burn {
    /// The budget belongs to the API key `id`.
    pub(super) fn is_key(&self, id: &str) -> bool {
        self.scope == "APIKEY" && self.scope_id == id
    }

    /// `$1.20 of $5.00 (24%)`.
    pub(super) fn summary(&self) -> String {
        format!(
            "{} of {} ({:.0}%)",
            view::usd(self.spent()),
            view::usd(self.limit),
            self.pct()
        )
    }

    fn spent(&self) -> i64 {
        self.used.saturating_add(self.reserved)
    }

    /// The thresholds crossed in this window: reached by the spend, or already warned about
    /// by the gateway (a released reservation can take the spend back under one).
    fn crossed(&self) -> Vec<i64> {
        let pct = self.pct();
        let mut c: Vec<i64> = self
            .thresholds
            .iter()
            .chain(&self.warned)
            .copied()
            .filter(|t| pct >= *t as f64 || self.warned.contains(t))
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    fn pct(&self) -> f64 {
        if self.limit > 0 {
            self.spent() as f64 / self.limit as f64 * 100.0
        } else if self.spent() > 0 {
            100.0
        } else {
            0.0
        }
    }
}

/// An RFC 3339 instant as local time in the time zone `tz` (`YYYY-MM-DD HH:MM`).
fn local_time(s: &str, tz: &str) -> String {
    let zone = jiff::tz::TimeZone::get(tz).unwrap_or(jiff::tz::TimeZone::UTC);
    s.parse::<jiff::Timestamp>()
        .map(|t| t.to_zoned(zone).strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|_| s.to_string())
}

/// The active budgets of the organisation with their current windows (at most 20).
pub(super) async fn burn_down(cx: &Cx<'_>, org: Uuid) -> Vec<Burn> {
    let Ok(limits) = cx
        .api(
            Method::GET,
            &format!("/api/organisations/{org}/usage/limits"),
            Vec::new(),
            None,
        )
        .await
    else {
        return Vec::new();
    };
    // The configured thresholds (the markers), by budget.
    let mut thresholds: HashMap<String, Vec<i64>> = HashMap::new();
    for b in cx
        .list(&format!("/api/organisations/{org}/budgets"))
        .await
        .iter()
    {
        let t = b["warning_thresholds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(i)
            .collect();
        thresholds.insert(str_of(b, "id"), t);
    }

    let ints = |v: &Value| -> Vec<i64> { v.as_array().into_iter().flatten().map(i).collect() };
    limits["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["kind"] == "budget" && m["active"] == true)
        .take(20)
        .map(|m| {
            let id = str_of(m, "id");
            Burn {
                thresholds: thresholds.remove(&id).unwrap_or_default(),
                id,
                name: m["name"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("budget")
                    .to_string(),
                scope: str_of(m, "scope"),
                scope_id: str_of(m, "scope_id"),
                period: m["period"].as_str().unwrap_or("BALANCE").to_string(),
                timezone: m["timezone"].as_str().unwrap_or("UTC").to_string(),
                start: str_of(&m["window"], "start"),
                end: m["window"]["end"].as_str().map(str::to_string),
                limit: i(&m["limit"]),
                rollover: i(&m["rollover"]),
                used: i(&m["used"]),
                reserved: i(&m["reserved"]),
                warned: ints(&m["warned_thresholds"]),
            }
        })
        .collect()
}

/// `/{org}/dashboard`.
pub async fn dashboard(cx: &Cx<'_>, scope: &Scope, org: Uuid) -> Resp {
    let mut q = filters(
        cx,
        "last_30_days",
        &["team_id", "api_key_id", "model", "provider"],
    );
    // Hourly points for a day's worth of traffic, daily ones otherwise.
    let short = q.iter().any(|(k, v)| k == "period" && v == "last_24_hours");
    let gran = match cx.req.q("granularity") {
        Some("HOUR") => "HOUR",
        Some("DAY") => "DAY",
        _ if short => "HOUR",
        _ => "DAY",
    };
    q.push(("granularity".into(), gran.into()));
    let (rows, _) = match rollups(cx, org, &q).await {
        Ok(x) => x,
        Err(e) => return api_error_page(cx, &e),
    };
    let mut sq: Vec<(String, String)> = q
        .iter()
        .filter(|(k, _)| k != "granularity")
        .cloned()
        .collect();
    sq.push(("granularity".into(), gran.into()));
    let points = match usage_series(cx, org, &sq).await {
        Ok(p) => p,
        Err(e) => return api_error_page(cx, &e),
    };
    let sum = |f: &str| {
        points
            .iter()
            .map(|p| p[f].as_f64().unwrap_or(0.0))
            .sum::<f64>()
    };
    // Per bucket: requests, errors, tokens, cost, latency sum.
    let mut buckets: BTreeMap<String, [f64; 5]> = BTreeMap::new();
    let mut by: HashMap<&str, HashMap<String, [f64; 3]>> = HashMap::new();
    for r in &rows {
        let b = buckets.entry(str_of(r, "bucket_start")).or_default();
        let tokens = (i(&r["input_tokens"]) + i(&r["output_tokens"])) as f64;
        b[0] += i(&r["requests"]) as f64;
        b[1] += i(&r["errors"]) as f64;
        b[2] += tokens;
        b[3] += i(&r["cost_nanos"]) as f64;
        b[4] += r["latency_ms_sum"].as_f64().unwrap_or(0.0);
        for dim in ["model", "api_key_id", "team_id"] {
            let key = r[dim].as_str().unwrap_or("").to_string();
            let e = by.entry(dim).or_default().entry(key).or_default();
            e[0] += i(&r["requests"]) as f64;
            e[1] += tokens;
            e[2] += i(&r["cost_nanos"]) as f64;
        }
    }
    let tot = buckets.values().fold([0.0; 5], |mut a, b| {
        for (x, y) in a.iter_mut().zip(b) {
            *x += y;
        }
        a
    });
    let requests = sum("requests");
    let err_rate = if requests > 0.0 {
        sum("errors") / requests * 100.0
    } else {
        0.0
    };
    let avg_lat = if tot[0] > 0.0 { tot[4] / tot[0] } else { 0.0 };
    // Names of keys and teams for the top lists.
    let names = owner_names(cx, org).await;
    let top = |dim: &str| -> Vec<(String, [f64; 3])> {
        let mut v: Vec<(String, [f64; 3])> = by
            .get(dim)
            .map(|m| m.iter().map(|(k, x)| (k.clone(), *x)).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.1[2].total_cmp(&a.1[2]).then(b.1[0].total_cmp(&a.1[0])));
        v.truncate(5);
        v
    };
    let burn = if cx.caller().role >= Role::Manager {
        burn_down(cx, org).await
    } else {
        Vec::new()
    };
    let action = scope.href("dashboard");
    let usd = |v: f64| view::usd(v as i64);
    let body = html! {
        (filter_form(cx, org, &action, &["team_id", "api_key_id", "model", "provider"], &["last_30_days", "last_24_hours", "this_month", "last_month", "custom"]).await)
        div.cards {
            div.stat { span.k { "Requests" } span.v #stat-requests { (num(requests)) } }
            div.stat { span.k { "Tokens" } span.v { (num(sum("input_tokens") + sum("output_tokens"))) } }
            div.stat { span.k { "Cost" } span.v { (usd(sum("cost_nanos"))) } }
            div.stat { span.k { "Error rate" } span.v { (format!("{err_rate:.1}%")) } }
            div.stat { span.k { "Avg latency" } span.v { (format!("{avg_lat:.0} ms")) } }
        }
        (series_charts(&points, gran == "HOUR"))
        div.tops {
            @for (dim, title) in [("model", "Top models"), ("api_key_id", "Top API keys"), ("team_id", "Top teams")] {
                section {
                    h2 { (title) }
                    table {
                        thead { tr { th scope="col" { "Name" } th scope="col" { "Requests" } th scope="col" { "Tokens" } th scope="col" { "Cost" } } }
                        tbody {
                            @for (k, v) in top(dim) {
                                tr {
                                    td { (if k.is_empty() { "—".to_string() } else { names.get(&k).cloned().unwrap_or(k.clone()) }) }
                                    td { (num(v[0])) } td { (num(v[1])) } td { (usd(v[2])) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !burn.is_empty() {
            section aria-labelledby="bud-h" {
                h2 #bud-h { "Budgets" }
                p.muted { "Spend (settled and reserved) in each active budget's current window, in the budget's time zone, against its limit (rollover included); warning thresholds are marked." }
                @for b in &burn {
                    @let pct = b.pct();
                    @let crossed = b.crossed();
                    div.budget data-budget-id=(b.id) data-limit=(b.limit) data-spent=(b.spent()) data-window-start=(b.start) data-window-end=[b.end.as_deref()] {
                        span {
                            strong { (b.name) } " · " (b.scope) " · " (b.period) " · "
                            @match &b.end {
                                Some(end) => {
                                    time datetime=(b.start) { (local_time(&b.start, &b.timezone)) }
                                    " – "
                                    time datetime=(end) { (local_time(end, &b.timezone)) }
                                    " " (b.timezone)
                                }
                                None => { "prepaid balance" }
                            }
                            ": " (view::usd(b.spent()))
                            @if b.reserved > 0 { " (" (view::usd(b.reserved)) " reserved)" }
                            " of " (view::usd(b.limit))
                            @if b.rollover > 0 { " (" (view::usd(b.rollover)) " rolled over)" }
                            " (" (format!("{pct:.0}%")) ")"
                            @if !crossed.is_empty() { " " span.badge.expired { (crossed.len()) " threshold(s) crossed" } }
                        }
                        svg.burn viewBox="0 0 100 8" role="img" aria-label=(format!("{pct:.0}% of the budget used")) preserveAspectRatio="none" {
                            rect x="0" y="0" width="100" height="8" class="track" {}
                            rect x="0" y="0" width=(format!("{:.2}", pct.min(100.0))) height="8" class=(if pct >= 100.0 { "over" } else { "used" }) {}
                            @for t in &b.thresholds {
                                line x1=(t) x2=(t) y1="0" y2="8" class=(if crossed.contains(t) { "threshold crossed" } else { "threshold" }) {}
                            }
                        }
                    }
                }
            }
        }
    };
    Resp::html(200, view::layout(cx, scope, "dashboard", "Dashboard", body))
}

const USAGE_DIMS: &[&str] = &[
    "team_id",
    "api_key_id",
    "user_id",
    "model",
    "provider",
    "outcome",
    "errors",
];

/// Names of the organisation's keys, teams and users by id (what the caller may list).
async fn owner_names(cx: &Cx<'_>, org: Uuid) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for (what, label) in [("api-keys", "name"), ("teams", "name"), ("users", "email")] {
        for r in cx
            .list(&format!("/api/organisations/{org}/{what}"))
            .await
            .iter()
        {
            names.insert(str_of(r, "id"), str_of(r, label));
        }
    }
    names
}

/// `12:34:56` (UTC) and the date of an RFC 3339 instant.
fn time_parts(s: &str) -> (String, String) {
    let t = view::fmt_time_str(s);
    let precise = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| {
            t.to_offset(time::UtcOffset::UTC)
                .format(&time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second]"
                ))
                .ok()
        })
        .unwrap_or(t);
    let (d, h) = precise.split_once(' ').unwrap_or((&precise, ""));
    (d.to_string(), h.to_string())
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map(|m| format!("{m:.0} ms"))
        .unwrap_or_else(|| "—".into())
}

/// One usage record in full: `/{org}/usage/{request id}`.
async fn usage_record(cx: &Cx<'_>, scope: &Scope, org: Uuid, rid: &str) -> Resp {
    let v = match cx
        .api(
            Method::GET,
            &format!("/api/organisations/{org}/usage/records"),
            vec![("request_id".into(), rid.to_string())],
            None,
        )
        .await
    {
        Ok(v) => v,
        Err(e) => return api_error_page(cx, &e),
    };
    let Some(r) = v["data"].get(0).cloned() else {
        return view::error_page(Some(cx), 404, "Not found.");
    };
    let names = owner_names(cx, org).await;
    let name = |k: &str| {
        r[k].as_str()
            .map(|id| names.get(id).cloned().unwrap_or_else(|| id.to_string()))
            .unwrap_or_else(|| "—".into())
    };
    let attempts = r["attempts"].as_array().cloned().unwrap_or_default();
    let decisions: Vec<Value> = r["filter_decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(r["safety_decisions"].as_array().into_iter().flatten())
        .cloned()
        .collect();
    let (date, hms) = time_parts(r["created_at"].as_str().unwrap_or(""));
    let body = html! {
        p { a href=(scope.href("usage")) { "← All usage" } }
        dl.details #record {
            dt { "Time (UTC)" } dd { (date) " " (hms) }
            dt { "Request id" } dd { code { (str_of(&r, "request_id")) } }
            dt { "Endpoint" } dd { (str_of(&r, "method")) " " (str_of(&r, "endpoint")) }
            dt { "Model" } dd { (view::cell("model", &r["model"])) " → " (view::cell("upstream_model", &r["upstream_model"])) }
            dt { "Provider" } dd { (view::cell("provider", &r["provider"])) }
            dt { "API key" } dd { (name("api_key_id")) }
            dt { "Team" } dd { (name("team_id")) }
            dt { "User" } dd { (name("user_id")) }
            dt { "Status" } dd { (view::cell("status", &r["status"])) " · " (str_of(&r, "outcome")) }
            dt { "Error" } dd { (view::cell("error_code", &r["error_code"])) @if let Some(d) = r["denied_by"].as_str() { " (denied by " (d) ")" } }
            dt { "Stream" } dd { (view::cell("stream", &r["stream"])) @if r["stream_cut"] == true { " (cut)" } @if r["client_disconnected"] == true { " (client disconnected)" } }
            dt { "Latency" } dd { (ms(&r["latency_ms"])) " · time to first byte " (ms(&r["ttfb_ms"])) }
            dt { "Tokens" } dd { (view::cell("input_tokens", &r["input_tokens"])) " in (" (view::cell("x", &r["cached_input_tokens"])) " cached) · " (view::cell("output_tokens", &r["output_tokens"])) " out (" (view::cell("x", &r["reasoning_tokens"])) " reasoning)" }
            dt { "Cost" } dd { (view::cell("cost_nanos", &r["cost_nanos"])) }
            dt { "Pricing used" } dd {
                @match r["pricing"].as_object() {
                    Some(p) => {
                        @for (n, (k, v)) in p.iter().enumerate() {
                            @if n > 0 { " · " }
                            (k) " " (v.as_i64().map(view::usd).unwrap_or_else(|| v.to_string()))
                        }
                        span.muted { " (per 1M tokens; images per image)" }
                    }
                    None => { "—" }
                }
            }
        }
        section aria-labelledby="att-h" {
            h2 #att-h { "Attempts (" (attempts.len()) ")" }
            div.tablewrap { table {
                thead { tr { th scope="col" { "#" } th scope="col" { "Provider" } th scope="col" { "Model" } th scope="col" { "Outcome" } th scope="col" { "Error class" } th scope="col" { "Status" } th scope="col" { "Latency" } } }
                tbody {
                    @if attempts.is_empty() { tr { td.muted colspan="7" { "None (the request was answered before any upstream call)." } } }
                    @for (n, a) in attempts.iter().enumerate() {
                        tr {
                            td { (n + 1) }
                            td { (view::cell("provider", &a["provider"])) }
                            td { (view::cell("model", &a["model"])) }
                            td { (view::cell("outcome", &a["outcome"])) }
                            td { (view::cell("error_class", &a["error_class"])) }
                            td { (view::cell("status", &a["status"])) }
                            td { (ms(&a["latency_ms"])) }
                        }
                    }
                }
            } }
        }
        section aria-labelledby="dec-h" {
            h2 #dec-h { "Filter and safety verdicts" }
            @if decisions.is_empty() { p.muted { "No filter or safety check acted on this request." } }
            @else {
                ul { @for d in &decisions { li { code { (d.to_string()) } } } }
            }
        }
    };
    Resp::html(200, view::layout(cx, scope, "usage", "Usage record", body))
}

/// `/{org}/usage` and `/{org}/usage/export.csv`.
pub async fn usage(cx: &Cx<'_>, scope: &Scope, org: Uuid, tail: &[&str]) -> Resp {
    let q = filters(cx, "last_30_days", USAGE_DIMS);
    let path = format!("/api/organisations/{org}/usage/records");
    if let ["export.csv"] = tail {
        // Every matching record, in pages of 500.
        let mut rows = Vec::new();
        for page in 0..200 {
            let mut qq = q.clone();
            qq.push(("limit".into(), "500".into()));
            qq.push(("offset".into(), (page * 500).to_string()));
            match cx.api(Method::GET, &path, qq, None).await {
                Ok(v) => {
                    let data = v["data"].as_array().cloned().unwrap_or_default();
                    let n = data.len();
                    rows.extend(data);
                    if n < 500 {
                        break;
                    }
                }
                Err(e) => return api_error_page(cx, &e),
            }
        }
        let csv = crate::api::csv::from_objects(crate::api::usage::RECORD_CSV, &rows);
        return csv_resp(csv, "usage.csv");
    }
    match tail {
        [] => {}
        [rid] => return usage_record(cx, scope, org, rid).await,
        _ => return view::error_page(Some(cx), 404, "Not found."),
    }
    let limit = 50_i64;
    let offset: i64 = cx
        .req
        .q("offset")
        .and_then(|o| o.parse().ok())
        .filter(|o: &i64| *o >= 0)
        .unwrap_or(0);
    let mut qq = q.clone();
    qq.push(("limit".into(), limit.to_string()));
    qq.push(("offset".into(), offset.to_string()));
    let v = match cx.api(Method::GET, &path, qq, None).await {
        Ok(v) => v,
        Err(e) => return api_error_page(cx, &e),
    };
    let rows = v["data"].as_array().cloned().unwrap_or_default();
    let total = i(&v["total"]);
    let names = owner_names(cx, org).await;
    let href = scope.href("usage");
    let qs = query_string(&q);
    let body = html! {
        (filter_form(cx, org, &href, USAGE_DIMS, &["last_30_days", "last_24_hours", "this_month", "last_month", "custom"]).await)
        p { a.button href=(format!("{href}/export.csv?{qs}")) download { "Export CSV" } }
        div.tablewrap { table.usage {
            thead { tr {
                th scope="col" { "Time (UTC)" } th scope="col" { "Model" } th scope="col" { "Key · team · user" }
                th scope="col" { "Status" } th scope="col" { "Error" } th scope="col" { "Tokens in / out" }
                th scope="col" { "Cost" } th scope="col" { "Latency" } th scope="col" { "TTFB" }
                th scope="col" { "Stream" } th scope="col" { "Attempts" } th scope="col" { span.sr { "Details" } }
            } }
            tbody {
                @if rows.is_empty() { tr { td.muted colspan="12" { "No usage in this period." } } }
                @for r in &rows {
                    @let (date, hms) = time_parts(r["created_at"].as_str().unwrap_or(""));
                    @let failed = r["status"].as_i64().unwrap_or(0) >= 400 || r["outcome"] != "success";
                    tr class=[failed.then_some("failed")] {
                        td.nowrap { time datetime=(str_of(r, "created_at")) title=(date) { span.muted { (date.get(5..).unwrap_or("")) } " " (hms) } }
                        td { (view::cell("model", &r["model"])) br; span.muted { (view::cell("provider", &r["provider"])) " · " (str_of(r, "endpoint")) } }
                        td {
                            @for (n, k) in ["api_key_id", "team_id", "user_id"].iter().enumerate() {
                                @if n > 0 { span.muted { " · " } }
                                @match r[*k].as_str() {
                                    Some(id) => { (names.get(id).cloned().unwrap_or_else(|| id.chars().take(8).collect())) }
                                    None => { span.muted { "—" } }
                                }
                            }
                        }
                        td { span class=(if failed { "badge revoked" } else { "badge active" }) { (view::cell("status", &r["status"])) } }
                        td { @if let Some(code) = r["error_code"].as_str() { code { (code) } } @else { span.muted { "—" } }
                             @if let Some(d) = r["denied_by"].as_str() { br; span.muted { "denied by " (d) } } }
                        td.nowrap { (view::cell("input_tokens", &r["input_tokens"])) " / " (view::cell("output_tokens", &r["output_tokens"])) }
                        td.nowrap { (view::cell("cost_nanos", &r["cost_nanos"])) }
                        td.nowrap { (ms(&r["latency_ms"])) }
                        td.nowrap { (ms(&r["ttfb_ms"])) }
                        td { (if r["stream"] == true { "yes" } else { "no" }) }
                        td { (r["attempts"].as_array().map(Vec::len).unwrap_or(0)) }
                        td { a href=(format!("{href}/{}", view::url_encode(&str_of(r, "request_id")))) aria-label=(format!("Details of {}", str_of(r, "request_id"))) { "Details" } }
                    }
                }
            }
        } }
        (view::pager(&format!("{href}?{qs}"), offset, limit, total))
    };
    Resp::html(200, view::layout(cx, scope, "usage", "Usage", body))
}

fn csv_resp(csv: String, name: &str) -> Resp {
    Resp {
        status: 200,
        content_type: "text/csv; charset=utf-8",
        headers: vec![(
            "content-disposition",
            format!("attachment; filename=\"{name}\""),
        )],
        body: csv.into_bytes(),
    }
}

fn invoice_tables(inv: &Value) -> Markup {
    let section = |title: &str, key: &str, extra: Option<(&str, &str)>| {
        let rows = inv[key].as_array().cloned().unwrap_or_default();
        html! {
            section.invoice-part {
                h2 { (title) }
                table {
                    thead { tr {
                        th scope="col" { "Name" }
                        @if let Some((_, h)) = extra { th scope="col" { (h) } }
                        th scope="col" { "Requests" } th scope="col" { "Input tokens" } th scope="col" { "Output tokens" } th scope="col" { "Cost (USD)" }
                    } }
                    tbody {
                        @if rows.is_empty() { tr { td.muted colspan="6" { "None." } } }
                        @for r in &rows {
                            tr {
                                td { (r["name"].as_str().or(r["id"].as_str()).unwrap_or("(none)")) }
                                @if let Some((f, _)) = extra { td { (view::cell(f, &r[f])) } }
                                td { (view::cell("requests", &r["requests"])) }
                                td { (view::cell("input_tokens", &r["input_tokens"])) }
                                td { (view::cell("output_tokens", &r["output_tokens"])) }
                                td.num { (view::usd(i(&r["cost_nanos"]))) }
                            }
                        }
                    }
                }
            }
        }
    };
    let t = &inv["totals"];
    html! {
        dl.details {
            dt { "Period" } dd { (view::cell("from_at", &inv["period"]["from"])) " – " (view::cell("to_at", &inv["period"]["to"])) }
            dt { "Requests" } dd { (view::cell("requests", &t["requests"])) }
            dt { "Tokens (in / out)" } dd { (view::cell("x", &t["input_tokens"])) " / " (view::cell("x", &t["output_tokens"])) }
            dt { "MCP calls" } dd { (view::cell("x", &t["mcp_calls"])) }
            dt { "Total" } dd.total { (view::usd(i(&t["cost_nanos"]))) }
        }
        (section("By team", "teams", None))
        (section("By API key", "api_keys", Some(("prefix", "Key"))))
        (section("By model", "models", Some(("provider", "Provider"))))
        (section("By MCP server", "mcp_servers", None))
    }
}

/// `/{org}/invoices`, `/{org}/invoices/export.csv`, `/{org}/invoices/print`.
pub async fn invoices(cx: &Cx<'_>, scope: &Scope, org: Uuid, tail: &[&str]) -> Resp {
    let q = filters(cx, "this_month", &[]);
    let path = format!("/api/organisations/{org}/invoices");
    if let ["export.csv"] = tail {
        let mut qq = q.clone();
        qq.push(("format".into(), "csv".into()));
        return match cx.raw(&path, qq).await {
            Ok(r) => csv_resp(String::from_utf8_lossy(&r.body).into_owned(), "invoice.csv"),
            Err(e) => api_error_page(cx, &e),
        };
    }
    let inv = match cx.api(Method::GET, &path, q.clone(), None).await {
        Ok(v) => v,
        Err(e) => return api_error_page(cx, &e),
    };
    match tail {
        ["print"] => {
            let page = html! {
                (DOCTYPE)
                html lang="en" {
                    head {
                        meta charset="utf-8";
                        title { "Invoice · " (scope.name) }
                        link rel="icon" href="data:,";
                        link rel="stylesheet" href="/console/static/app.css";
                        script src="/console/static/app.js" defer {}
                    }
                    body.print {
                        main #main {
                            p.noprint { button type="button" data-print { "Print or save as PDF" } }
                            h1 { "Invoice — " (scope.name) }
                            (invoice_tables(&inv))
                        }
                    }
                }
            };
            Resp::html(200, page)
        }
        [] => {
            let href = scope.href("invoices");
            let qs = query_string(&q);
            let body = html! {
                (filter_form(cx, org, &href, &[], &["this_month", "last_month", "last_30_days", "custom"]).await)
                p.actions {
                    a.button href=(format!("{href}/export.csv?{qs}")) download { "Export CSV" }
                    " "
                    a.button href=(format!("{href}/print?{qs}")) target="_blank" rel="noopener" { "Printable invoice" }
                }
                (invoice_tables(&inv))
            };
            Resp::html(200, view::layout(cx, scope, "invoices", "Invoices", body))
        }
        _ => view::error_page(Some(cx), 404, "Not found."),
    }
}

/// The gateway's base URL as the browser can reach it: the proxy listener's port on the host
/// the console was reached by (unless the listener names a host).
pub(super) fn gateway_base(cx: &Cx<'_>) -> String {
    let listen = cx.state.current().config.server.listen.clone();
    let (host, port) = listen.rsplit_once(':').unwrap_or((listen.as_str(), "8080"));
    let host = if ["0.0.0.0", "[::]", "::", ""].contains(&host) {
        let h = cx.req.host.as_str();
        match h.rsplit_once(':') {
            Some((name, p)) if p.chars().all(|c| c.is_ascii_digit()) => name.to_string(),
            _ => h.to_string(),
        }
    } else {
        host.to_string()
    };
    let tls = cx.state.current().config.server.tls.is_some();
    format!("{}://{host}:{port}", if tls { "https" } else { "http" })
}

/// The organisation's enabled models; for a USER, who may not list the catalog, the enabled
/// models granted to its own keys.
async fn enabled_models(cx: &Cx<'_>, org: Uuid) -> Vec<Value> {
    if cx.caller().role < Role::Manager {
        return own_key_models(cx, org).await;
    }
    cx.api(
        Method::GET,
        &format!("/api/organisations/{org}/models"),
        vec![
            ("limit".into(), "500".into()),
            ("enabled".into(), "true".into()),
        ],
        None,
    )
    .await
    .ok()
    .and_then(|v| v["data"].as_array().cloned())
    .unwrap_or_default()
}

/// The enabled models granted to the caller's own keys (each once).
async fn own_key_models(cx: &Cx<'_>, org: Uuid) -> Vec<Value> {
    let base = format!("/api/organisations/{org}/api-keys");
    let keys = cx.list(&base).await;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for k in keys {
        let granted = cx
            .get(&format!("{base}/{}/models", str_of(&k, "id")))
            .await
            .ok()
            .and_then(|v| v["data"].as_array().cloned())
            .unwrap_or_default();
        for m in granted {
            if m["enabled"] == true && seen.insert(str_of(&m, "id")) {
                out.push(m);
            }
        }
    }
    out
}

/// The API family a model's provider speaks (`None` when the caller may not read providers).
fn family_of(provider_type: Option<&str>) -> Option<&'static str> {
    Some(match provider_type? {
        "OPENAI" | "AZURE_OPENAI" | "CUSTOM" => "openai",
        "ANTHROPIC" => "anthropic",
        "GOOGLE" => "gemini",
        "VLLM" => "vllm",
        _ => return None,
    })
}

/// The snippets a model can serve as pasted: `(id, title, code)`, by its type and family.
fn snippets_for(
    base: &str,
    model: &str,
    model_type: &str,
    family: Option<&str>,
) -> Vec<(&'static str, &'static str, String)> {
    let auth = "-H \"Authorization: Bearer $WHARF_API_KEY\"";
    let mut out: Vec<(&'static str, &'static str, String)> = Vec::new();
    let chatty = ["chat", "reasoning"].contains(&model_type);
    match (model_type, family) {
        (t, Some("openai")) if chatty || t.is_empty() => {
            out.push(("chat-curl", "Chat completions (curl)", format!(
                "curl {base}/v1/chat/completions \\\n  -H \"Content-Type: application/json\" \\\n  {auth} \\\n  -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'")));
            out.push(("chat-py", "Chat completions (Python, openai)", format!(
                "import os\nfrom openai import OpenAI\nclient = OpenAI(base_url=\"{base}/v1\", api_key=os.environ[\"WHARF_API_KEY\"])\nr = client.chat.completions.create(model=\"{model}\", messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}])\nprint(r.choices[0].message.content)")));
            out.push(("chat-js", "Chat completions (JavaScript, openai)", format!(
                "import OpenAI from \"openai\";\nconst client = new OpenAI({{ baseURL: \"{base}/v1\", apiKey: process.env.WHARF_API_KEY }});\nconst r = await client.chat.completions.create({{ model: \"{model}\", messages: [{{ role: \"user\", content: \"Hello!\" }}] }});\nconsole.log(r.choices[0].message.content);")));
            out.push(("stream-curl", "Streaming (curl, SSE)", format!(
                "curl -N {base}/v1/chat/completions \\\n  -H \"Content-Type: application/json\" \\\n  {auth} \\\n  -d '{{\"model\": \"{model}\", \"stream\": true, \"messages\": [{{\"role\": \"user\", \"content\": \"Stream a greeting.\"}}]}}'")));
        }
        (_, Some("anthropic")) if chatty => {
            out.push(("anthropic-curl", "Anthropic Messages (curl)", format!(
                "curl {base}/v1/messages \\\n  -H \"Content-Type: application/json\" \\\n  -H \"x-api-key: $WHARF_API_KEY\" \\\n  -H \"anthropic-version: 2023-06-01\" \\\n  -d '{{\"model\": \"{model}\", \"max_tokens\": 256, \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'")));
            out.push(("anthropic-py", "Anthropic Messages (Python, anthropic)", format!(
                "import os\nimport anthropic\nclaude = anthropic.Anthropic(base_url=\"{base}\", api_key=os.environ[\"WHARF_API_KEY\"])\nr = claude.messages.create(model=\"{model}\", max_tokens=256, messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}])\nprint(r.content[0].text)")));
        }
        (_, Some("gemini")) if chatty => {
            out.push(("gemini-curl", "Gemini generateContent (curl)", format!(
                "curl {base}/v1beta/models/{model}:generateContent \\\n  -H \"Content-Type: application/json\" \\\n  -H \"x-goog-api-key: $WHARF_API_KEY\" \\\n  -d '{{\"contents\": [{{\"parts\": [{{\"text\": \"Hello!\"}}]}}]}}'")));
            out.push(("gemini-py", "Gemini (Python, google-genai)", format!(
                "import os\nfrom google import genai\ngem = genai.Client(api_key=os.environ[\"WHARF_API_KEY\"], http_options={{\"base_url\": \"{base}\"}})\nprint(gem.models.generate_content(model=\"{model}\", contents=\"Hello!\").text)")));
        }
        (_, Some("vllm")) if chatty => {
            out.push(("vllm-curl", "vLLM chat completions (curl)", format!(
                "curl {base}/v1/vllm/chat/completions \\\n  -H \"Content-Type: application/json\" \\\n  {auth} \\\n  -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'")));
        }
        ("embeddings", Some("openai" | "vllm") | None) => {
            let path = if family == Some("vllm") {
                "/v1/vllm/embeddings"
            } else {
                "/v1/embeddings"
            };
            out.push(("embed-curl", "Embeddings (curl)", format!(
                "curl {base}{path} \\\n  -H \"Content-Type: application/json\" \\\n  {auth} \\\n  -d '{{\"model\": \"{model}\", \"input\": \"The quick brown fox\"}}'")));
        }
        ("image", Some("openai") | None) => {
            out.push(("image-curl", "Images (curl)", format!(
                "curl {base}/v1/images/generations \\\n  -H \"Content-Type: application/json\" \\\n  {auth} \\\n  -d '{{\"model\": \"{model}\", \"prompt\": \"a cat reading a book, watercolor\", \"size\": \"1024x1024\"}}'")));
        }
        _ => {}
    }
    // The unified endpoint translates an OpenAI-shaped chat to any family.
    if chatty {
        out.push(("unified-curl", "Unified chat, any provider (curl)", format!(
            "curl {base}/v1/llm/chat \\\n  -H \"Content-Type: application/json\" \\\n  {auth} \\\n  -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'")));
    }
    out
}

/// The errors a client of the gateway meets, from the gateway's own codes.
fn common_errors() -> Vec<(u16, &'static str, &'static str)> {
    use crate::error::ErrorCode as E;
    [
        (E::InvalidRequestBody, "The body is not valid JSON or lacks a required field."),
        (E::ModelNotFound, "No enabled model of that name in your organisation: check the name on this page."),
        (E::ProviderTypeUnsupported, "The route does not fit the model's provider (an Anthropic model on /v1/chat/completions): use its own snippet or /v1/llm/chat."),
        (E::Unauthorized, "No key, or an unknown one: send it as Authorization: Bearer (or x-api-key, x-goog-api-key)."),
        (E::ApiKeyExpired, "The key's expiry has passed: ask for a new key."),
        (E::ApiKeyRevoked, "The key was revoked."),
        (E::BudgetExceeded, "A budget of the key, its team, its user or the organisation is spent for this window."),
        (E::ModelNotAllowed, "The key has no grant for this model."),
        (E::IpNotAllowed, "Your address is outside the allowed ranges."),
        (E::PluginBlocked, "A filter of the organisation refused the request."),
        (E::PayloadTooLarge, "The body is larger than the gateway accepts."),
        (E::RpmExceeded, "A rate limit (requests, tokens or concurrency): wait for Retry-After."),
        (E::QuotaExceeded, "A quota of this window is used up."),
        (E::UpstreamError, "The provider failed or answered an error; fallbacks were tried first."),
        (E::DependencyUnavailable, "A store the gateway needs (Postgres, Redis) is unreachable."),
        (E::UpstreamTimeout, "The provider did not answer in time."),
    ]
    .into_iter()
    .map(|(c, why)| (c.status(), c.as_str(), why))
    .collect()
}

/// `/{org}/docs`: the gateway's base URL, a model picker and the snippets that model can
/// serve as pasted, the common errors, IDE and CLI integrations and the live gateway status.
pub async fn docs(cx: &Cx<'_>, scope: &Scope, org: Uuid) -> Resp {
    let base = gateway_base(cx);
    let models = enabled_models(cx, org).await;
    // Provider types, for who may read them (a USER may not: it gets the unified endpoint).
    let types: HashMap<String, String> = cx
        .list(&format!("/api/organisations/{org}/providers"))
        .await
        .iter()
        .map(|p| (str_of(p, "id"), str_of(p, "provider_type")))
        .collect();
    let chosen = cx
        .req
        .q("model")
        .and_then(|n| models.iter().find(|m| m["name"] == n))
        .or_else(|| {
            models
                .iter()
                .find(|m| ["chat", "reasoning"].contains(&m["model_type"].as_str().unwrap_or("")))
        })
        .or(models.first());
    let (name, model_type, family) = match chosen {
        Some(m) => (
            str_of(m, "name"),
            str_of(m, "model_type"),
            family_of(types.get(&str_of(m, "provider_id")).map(String::as_str)),
        ),
        None => ("MODEL".to_string(), "chat".to_string(), Some("openai")),
    };
    let snippets = snippets_for(&base, &name, &model_type, family);
    let href = scope.href("docs");
    let integrations: [(&str, String); 6] = [
        ("Claude Code", format!("ANTHROPIC_BASE_URL={base}\nANTHROPIC_AUTH_TOKEN=$WHARF_API_KEY\nANTHROPIC_MODEL={name}")),
        ("Codex CLI", format!("OPENAI_BASE_URL={base}/v1\nOPENAI_API_KEY=$WHARF_API_KEY\ncodex --model {name}")),
        ("Cursor", format!("Settings → Models → OpenAI API key: $WHARF_API_KEY\nOverride OpenAI base URL: {base}/v1\nAdd model: {name}")),
        ("Continue", format!("models:\n  - name: {name}\n    provider: openai\n    model: {name}\n    apiBase: {base}/v1\n    apiKey: $WHARF_API_KEY")),
        ("aider", format!("OPENAI_API_BASE={base}/v1\nOPENAI_API_KEY=$WHARF_API_KEY\naider --model openai/{name}")),
        ("OpenAI, Anthropic and Gemini SDKs", format!("OPENAI_BASE_URL={base}/v1   OPENAI_API_KEY=$WHARF_API_KEY\nANTHROPIC_BASE_URL={base}   ANTHROPIC_API_KEY=$WHARF_API_KEY\ngenai.Client(api_key=..., http_options={{\"base_url\": \"{base}\"}})")),
    ];
    let body = html! {
        dl.details {
            dt { "Base URL" } dd { code #base-url { (base) "/v1" } " " button type="button" data-copy="#base-url" { "Copy" } }
            dt { "Authorization header" } dd { code { "Authorization: Bearer YOUR_API_KEY" } " (also " code { "x-api-key" } " or " code { "x-goog-api-key" } ")" }
            dt { "Gateway status" } dd { span #gw-status data-status-url="/api/status" { "Checking…" } }
        }
        p { "Create a key under " a href=(scope.href("apikeys")) { "API keys" } " and export it as " code { "WHARF_API_KEY" } "." }
        form.filters #docs-models method="get" action=(href) {
            div.field {
                label for="docs_model" { "Model" }
                select #docs_model name="model" data-autosubmit {
                    @for m in &models {
                        option value=(str_of(m, "name")) selected[str_of(m, "name") == name] {
                            (str_of(m, "name")) " (" (str_of(m, "model_type"))
                            @if let Some(f) = family_of(types.get(&str_of(m, "provider_id")).map(String::as_str)) { ", " (f) }
                            ")"
                        }
                    }
                }
            }
            button type="submit" { "Show snippets" }
        }
        @if models.is_empty() { p.muted { "No model is enabled in this organisation yet." } }
        @if family.is_none() && chosen.is_some() {
            p.muted { "Your role cannot see this model's provider: the unified endpoint below works with any of them." }
        }
        @if snippets.is_empty() { p.muted { "No snippet for a " (model_type) " model yet." } }
        @for (id, title, code) in &snippets {
            section.snippet data-snippet=(id) {
                h2 { (title) }
                div.copyrow {
                    pre id=(id) { code { (code) } }
                    button type="button" data-copy=(format!("#{id}")) { "Copy" }
                }
            }
        }
        section aria-labelledby="errors-h" {
            h2 #errors-h { "Common errors" }
            p.muted { "Errors come as JSON in the calling API's own envelope, with Wharf's code; a streamed answer that fails midway ends with an error event." }
            div.tablewrap { table #common-errors {
                thead { tr { th scope="col" { "Status" } th scope="col" { "Code" } th scope="col" { "What to do" } } }
                tbody {
                    @for (status, code, why) in common_errors() {
                        tr { td { (status) } td { code { (code) } } td { (why) } }
                    }
                }
            } }
        }
        section aria-labelledby="ide-h" {
            h2 #ide-h { "IDE and CLI integrations" }
            @for (n, (tool, conf)) in integrations.iter().enumerate() {
                section.snippet data-tool=(tool) {
                    h3 { (tool) }
                    div.copyrow {
                        pre id=(format!("ide-{n}")) { code { (conf) } }
                        button type="button" data-copy=(format!("#ide-{n}")) { "Copy" }
                    }
                }
            }
        }
    };
    Resp::html(200, view::layout(cx, scope, "docs", "API docs", body))
}

/// `/{org}/playground`: a chat through the gateway itself with a key the user pastes (keys
/// are stored as hashes only, so the console cannot use one by itself).
pub async fn playground(cx: &Cx<'_>, scope: &Scope, org: Uuid, tail: &[&str]) -> Resp {
    let post = cx.req.method == Method::POST;
    match (tail, post) {
        ([], false) => {}
        (["usage"], false) => {
            // The usage record of a playground request, once written.
            let Some(rid) = cx.req.q("request_id") else {
                return view::error_page(Some(cx), 400, "request_id is required");
            };
            let v = cx
                .api(
                    Method::GET,
                    &format!("/api/organisations/{org}/usage/records"),
                    vec![("request_id".into(), rid.to_string())],
                    None,
                )
                .await;
            return match v {
                Ok(v) => json_resp(200, &v["data"].get(0).cloned().unwrap_or(Value::Null)),
                Err(e) => json_resp(e.status(), &json!({"error": e.message})),
            };
        }
        (["models"], true) => {
            // The models the pasted key may call, as the gateway itself answers.
            let key = cx.req.f("key").unwrap_or("").trim().to_string();
            let client = match super::loopback_client() {
                Ok(c) => c,
                Err(e) => return json_resp(500, &json!({"error": e})),
            };
            let r = client
                .get(format!("{}/v1/models", super::loopback_gateway(cx.state)))
                .bearer_auth(key)
                .timeout(std::time::Duration::from_secs(10))
                .send()
                .await;
            return match r {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    json_resp(status, &v)
                }
                Err(e) => json_resp(502, &json!({"error": e.to_string()})),
            };
        }
        _ => return view::error_page(Some(cx), 404, "Not found."),
    }
    let models = enabled_models(cx, org).await;
    let base = gateway_base(cx);
    let body = html! {
        p { "Messages go through the gateway at " code { (base) } " with the key you paste here; it stays in this page and is never stored." }
        form #playground method="post" action=(scope.href("playground/chat")) data-relay=(scope.href("playground/chat")) data-usage=(scope.href("playground/usage")) data-models=(scope.href("playground/models")) {
            (view::csrf(cx))
            div.field {
                label for="pg_key" { "API key" }
                input #pg_key type="password" name="key" required autocomplete="off" placeholder="wharf_sk_…";
            }
            div.field {
                label for="pg_model" { "Model" }
                select #pg_model name="model" {
                    @for m in models.iter().filter(|m| ["chat", "reasoning"].contains(&m["model_type"].as_str().unwrap_or(""))) {
                        option value=(str_of(m, "name")) { (str_of(m, "name")) }
                    }
                }
            }
            div.field {
                label for="pg_system" { "System prompt " span.muted { "(optional)" } }
                textarea #pg_system name="system" rows="2" placeholder="You are a helpful assistant." {}
            }
            div.params {
                div.field {
                    label for="pg_temperature" { "Temperature " span.muted { "(0–2, optional)" } }
                    input #pg_temperature type="number" name="temperature" min="0" max="2" step="0.1" inputmode="decimal";
                }
                div.field {
                    label for="pg_max_tokens" { "Max tokens " span.muted { "(optional)" } }
                    input #pg_max_tokens type="number" name="max_tokens" min="1" step="1";
                }
            }
            div.field {
                label for="pg_prompt" { "Message" }
                textarea #pg_prompt name="prompt" rows="4" required { "Say hello." }
            }
            input #pg_history type="hidden" name="history" value="[]";
            div.check {
                input #pg_stream type="checkbox" name="stream" checked;
                label for="pg_stream" { "Stream the answer" }
            }
            button.primary type="submit" { "Send" }
            " "
            button #pg_reset type="button" { "New conversation" }
        }
        section aria-live="polite" {
            h2 { "Conversation" }
            ol #pg_transcript.transcript {}
            h2 { "Answer" }
            p #pg_error.error role="alert" hidden {}
            pre #pg_out { }
            h2 { "Usage record" }
            pre #pg_usage.muted { "—" }
        }
    };
    Resp::html(
        200,
        view::layout(cx, scope, "playground", "Playground", body),
    )
}

fn json_resp(status: u16, v: &Value) -> Resp {
    Resp {
        status,
        content_type: "application/json",
        headers: Vec::new(),
        body: v.to_string().into_bytes(),
    }
}

/// The budgets page's meters (`only`: one budget, on its own page): spend in the current
/// window, what remains, a bar with the warning thresholds, when the window resets, the
/// thresholds crossed, and a link to the usage the budget counts (its owner, its window).
pub(super) async fn budget_meters(
    cx: &Cx<'_>,
    scope: &Scope,
    org: Uuid,
    only: Option<&str>,
) -> Markup {
    let burns: Vec<Burn> = burn_down(cx, org)
        .await
        .into_iter()
        .filter(|b| only.is_none_or(|id| b.id == id))
        .collect();
    let names = owner_names(cx, org).await;
    let usage = scope.href("usage");
    let link = |b: &Burn| {
        let mut q = vec![
            ("period".to_string(), "custom".to_string()),
            ("from".to_string(), b.start.clone()),
        ];
        if let Some(end) = &b.end {
            q.push(("to".into(), end.clone()));
        }
        match b.scope.as_str() {
            "TEAM" => q.push(("team_id".into(), b.scope_id.clone())),
            "APIKEY" => q.push(("api_key_id".into(), b.scope_id.clone())),
            "USER" => q.push(("user_id".into(), b.scope_id.clone())),
            _ => {}
        }
        format!("{usage}?{}", query_string(&q))
    };
    let owner = |b: &Burn| match b.scope.as_str() {
        "ORG" => "the organisation".to_string(),
        _ => format!(
            "{} {}",
            b.scope.to_lowercase().replace("apikey", "key"),
            names
                .get(&b.scope_id)
                .cloned()
                .unwrap_or_else(|| b.scope_id.chars().take(8).collect())
        ),
    };
    html! {
        section.meters aria-labelledby="meters-h" {
            h2 #meters-h { @if only.is_some() { "Current window" } @else { "Current windows" } }
            @if burns.is_empty() {
                p.muted { @if only.is_some() { "This budget is not active now (disabled, not started or ended)." } @else { "No active budget." } }
            } @else {
                div.tablewrap { table.meters {
                    thead { tr {
                        th scope="col" { "Budget" } th scope="col" { "Owner" } th scope="col" { "Spent" }
                        th scope="col" { "Remaining" } th scope="col" { "Used" } th scope="col" { "Resets" }
                        th scope="col" { "Thresholds crossed" } th scope="col" { span.sr { "Usage" } }
                    } }
                    tbody {
                        @for b in &burns {
                            @let pct = b.pct();
                            @let crossed = b.crossed();
                            tr data-budget-id=(b.id) {
                                td { a href=(format!("{}/{}", scope.href("budgets"), b.id)) { (b.name) } br; span.muted { (b.period.to_lowercase()) } }
                                td { (owner(b)) }
                                td.nowrap { (view::usd(b.spent())) @if b.reserved > 0 { br; span.muted { (view::usd(b.reserved)) " reserved" } } }
                                td.nowrap.remaining { (view::usd((b.limit - b.spent()).max(0))) br; span.muted { "of " (view::usd(b.limit)) } }
                                td {
                                    svg.burn viewBox="0 0 100 8" role="img" aria-label=(format!("{pct:.0}% of the budget used")) preserveAspectRatio="none" {
                                        rect x="0" y="0" width="100" height="8" class="track" {}
                                        rect x="0" y="0" width=(format!("{:.2}", pct.min(100.0))) height="8" class=(if pct >= 100.0 { "over" } else { "used" }) {}
                                        @for t in &b.thresholds {
                                            line x1=(t) x2=(t) y1="0" y2="8" class=(if crossed.contains(t) { "threshold crossed" } else { "threshold" }) {}
                                        }
                                    }
                                    span.muted { (format!("{pct:.0}%")) }
                                }
                                td.nowrap {
                                    @match &b.end {
                                        Some(end) => { time datetime=(end) { (local_time(end, &b.timezone)) } br; span.muted { (b.timezone) } }
                                        None => { "never (prepaid balance)" }
                                    }
                                }
                                td {
                                    @if crossed.is_empty() { span.muted { "none" } }
                                    @for t in &crossed { span.badge.expired { (t) "%" } " " }
                                }
                                td { a href=(link(b)) { "Usage →" } }
                            }
                        }
                    }
                } }
            }
        }
    }
}
