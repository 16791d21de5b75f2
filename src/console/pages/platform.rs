//! The platform scope (`/admin/…`): the dashboard, lists across every organisation, and the
//! organisation picker for organisation-only sections.

use super::apikeys::{key_state, APIKEY_COLS};
use super::crud::{list_rows, pager_base, search_box};
use super::{not_found, str_of, ORG_PAGES};
use crate::api::ApiError;
use crate::console::view::{self, Scope};
use crate::console::{api_error_page, Cx, Resp};
use http::Method;
use maud::html;
use serde_json::{json, Value};
use std::collections::HashMap;

/// The organisations a platform page lists (the first 500).
pub(super) async fn organisations(cx: &Cx<'_>) -> Result<Vec<Value>, ApiError> {
    let v = cx
        .api(
            Method::GET,
            "/api/admin/organisations",
            vec![("limit".into(), "500".into())],
            None,
        )
        .await?;
    Ok(v["data"].as_array().cloned().unwrap_or_default())
}

/// The organisation picker of a platform page for an organisation section.
pub(super) async fn org_picker(cx: &Cx<'_>, scope: &Scope, section: &str) -> Resp {
    let orgs = match organisations(cx).await {
        Ok(v) => v,
        Err(e) => return api_error_page(cx, &e),
    };
    let title = view::SECTIONS
        .iter()
        .find(|s| s.slug == section)
        .map(|s| s.title)
        .unwrap_or(section);
    let body = html! {
        p { "Choose an organisation." }
        ul.plain {
            @for o in &orgs {
                li { a href=(format!("/{}/{section}", str_of(o, "slug"))) { (str_of(o, "name")) } " " span.muted { (str_of(o, "slug")) } }
            }
            @if orgs.is_empty() { li.muted { "No organisation yet: " a href="/admin/organisations" { "create one" } "." } }
        }
    };
    Resp::html(200, view::layout(cx, scope, section, title, body))
}

/// `id → name` of every row of an API list (up to 500), for reference columns.
pub(super) async fn names_from(
    cx: &Cx<'_>,
    path: &str,
    label: &str,
    into: &mut HashMap<String, String>,
) {
    for r in cx.list(path).await.iter() {
        into.insert(str_of(r, "id"), str_of(r, label));
    }
}

/// `/admin/{section}` of an organisation section: the rows of every organisation (the
/// `/api/admin/{section}` list), with the organisation of each and the same search and pages
/// as an organisation's list. Rows open, and are created, on their organisation's pages:
/// `/admin/{section}/new?organisation={slug}` leads to that organisation's create form.
pub(super) async fn platform_list(
    cx: &Cx<'_>,
    scope: &Scope,
    section: &str,
    tail: &[&str],
) -> Resp {
    match tail {
        [] => {}
        ["new"] => {
            return match cx.req.q("organisation") {
                Some(slug) if crate::api::resources::Ty::Slug.check(&json!(slug)).is_ok() => {
                    Resp::redirect(&format!("/{slug}/{section}?create=1#create"))
                }
                _ => Resp::redirect(&format!("/admin/{section}")),
            };
        }
        _ => return not_found(cx),
    }
    let path = format!("/api/admin/{section}");
    let (mut rows, total, offset, limit) = match list_rows(cx, &path, Vec::new()).await {
        Ok(x) => x,
        Err(e) => return api_error_page(cx, &e),
    };
    let cols: &[(&str, &str)] = match ORG_PAGES.iter().find(|p| p.section == section) {
        Some(p) => p.cols,
        None => APIKEY_COLS,
    };
    let orgs = organisations(cx).await.unwrap_or_default();
    // Names of the ids the columns show (owners of keys, budgets and quotas; providers).
    let mut names: HashMap<String, String> = HashMap::new();
    let shown: Vec<&str> = cols.iter().map(|c| c.0).collect();
    if shown.contains(&"provider_id") {
        names_from(cx, "/api/admin/providers", "name", &mut names).await;
    }
    if section == "apikeys" || shown.contains(&"scope_id") {
        names_from(cx, "/api/admin/teams", "name", &mut names).await;
        names_from(cx, "/api/admin/users", "email", &mut names).await;
    }
    if shown.contains(&"scope_id") {
        names_from(cx, "/api/admin/apikeys", "name", &mut names).await;
        for o in &orgs {
            names.insert(str_of(o, "id"), str_of(o, "name"));
        }
    }
    if section == "apikeys" {
        for k in &mut rows {
            let owner = k["team_id"]
                .as_str()
                .or(k["user_id"].as_str())
                .map(|s| names.get(s).cloned().unwrap_or(s.to_string()))
                .unwrap_or_else(|| "organisation".into());
            let state = key_state(k);
            let prefix = format!("{}…", str_of(k, "key_prefix"));
            k["owner"] = json!(owner);
            k["state"] = json!(state);
            k["key_prefix"] = json!(prefix);
        }
    }
    let href = scope.href(section);
    let org_cell = |r: &Value| {
        let slug = str_of(r, "organisation_slug");
        let name = r["organisation_name"].as_str().unwrap_or(&slug).to_string();
        html! { a href=(format!("/{slug}/{section}")) { (name) } }
    };
    let item = |r: &Value| {
        format!(
            "/{}/{section}/{}",
            str_of(r, "organisation_slug"),
            str_of(r, "id")
        )
    };
    let lookup = |c: &str, v: &Value| {
        if c == "owner" || c == "state" {
            return None;
        }
        v.as_str().and_then(|s| names.get(s).cloned())
    };
    let title = view::SECTIONS
        .iter()
        .find(|s| s.slug == section)
        .map(|s| s.title)
        .unwrap_or(section);
    let body = html! {
        p.muted { "Every organisation's rows. Open a row, or its organisation, to change it there." }
        div.toolbar { (search_box(cx, &href)) }
        (view::table_with(&rows, Some(("Organisation", &org_cell)), cols, Some(&item), &lookup))
        (view::pager(&pager_base(cx, &href), offset, limit, total))
        details.create #create {
            summary { "Create" }
            @if orgs.is_empty() {
                p.muted { "No organisation yet: " a href="/admin/organisations" { "create one" } " first." }
            } @else {
                form method="get" action=(format!("{href}/new")) {
                    div.field {
                        label for="c_organisation" { "Organisation" }
                        select #c_organisation name="organisation" required {
                            @for o in &orgs {
                                option value=(str_of(o, "slug")) { (str_of(o, "name")) " (" (str_of(o, "slug")) ")" }
                            }
                        }
                    }
                    button.primary type="submit" { "Continue to its create form" }
                }
            }
        }
    };
    Resp::html(200, view::layout(cx, scope, section, title, body))
}

pub(super) async fn platform_dashboard(cx: &Cx<'_>, scope: &Scope) -> Resp {
    let count = |path: &'static str| async move {
        cx.api(Method::GET, path, vec![("limit".into(), "1".into())], None)
            .await
            .ok()
            .and_then(|v| v["total"].as_i64())
            .unwrap_or(0)
    };
    let orgs = count("/api/admin/organisations").await;
    let users = count("/api/admin/users").await;
    let list = organisations(cx).await.unwrap_or_default();
    // This month's totals of each organisation (the first 50), from their invoices.
    let mut month: Vec<(&Value, Value)> = Vec::new();
    for o in list.iter().take(50) {
        let inv = cx
            .api(
                Method::GET,
                &format!("/api/organisations/{}/invoices", str_of(o, "id")),
                vec![("period".into(), "this_month".into())],
                None,
            )
            .await
            .ok()
            .map(|v| v["totals"].clone())
            .unwrap_or(Value::Null);
        month.push((o, inv));
    }
    // Top organisations by cost first.
    month.sort_by_key(|(_, t)| std::cmp::Reverse(t["cost_nanos"].as_i64().unwrap_or(0)));
    let sum = |f: &str| {
        month
            .iter()
            .map(|(_, t)| t[f].as_i64().unwrap_or(0))
            .sum::<i64>()
    };
    // The last 30 days of every organisation (the first 50), bucket by bucket.
    let mut points: Vec<Value> = Vec::new();
    for o in list.iter().take(50) {
        let Ok(v) = cx
            .api(
                Method::GET,
                &format!("/api/organisations/{}/usage/series", str_of(o, "id")),
                vec![("period".into(), "last_30_days".into())],
                None,
            )
            .await
        else {
            continue;
        };
        let data = v["data"].as_array().cloned().unwrap_or_default();
        if points.is_empty() {
            points = data;
            continue;
        }
        for (acc, p) in points.iter_mut().zip(&data) {
            for f in [
                "requests",
                "status_2xx",
                "status_4xx",
                "status_5xx",
                "status_other",
                "errors",
                "input_tokens",
                "output_tokens",
                "cost_nanos",
            ] {
                acc[f] = json!(acc[f].as_i64().unwrap_or(0) + p[f].as_i64().unwrap_or(0));
            }
            // Percentiles do not add up: the platform chart shows the slowest organisation's.
            for f in ["latency_p50_ms", "latency_p95_ms"] {
                let m = acc[f]
                    .as_f64()
                    .unwrap_or(0.0)
                    .max(p[f].as_f64().unwrap_or(0.0));
                acc[f] = json!(m);
            }
        }
    }
    let total = |f: &str| {
        points
            .iter()
            .map(|p| p[f].as_i64().unwrap_or(0))
            .sum::<i64>()
    };
    let err_rate = if total("requests") > 0 {
        total("errors") as f64 / total("requests") as f64 * 100.0
    } else {
        0.0
    };
    // Provider health: every organisation's providers, as the gateway probes them.
    let status = crate::endpoints::status(cx.state, &crate::endpoints::StatusView::Gateway);
    let providers: Vec<Value> = serde_json::from_slice::<Value>(&status.body)
        .ok()
        .and_then(|v| v["providers"].as_array().cloned())
        .unwrap_or_default();
    let org_names: HashMap<String, String> = list
        .iter()
        .map(|o| (str_of(o, "id"), str_of(o, "name")))
        .collect();
    let body = html! {
        div.cards {
            div.stat { span.k { "Organisations" } span.v { (orgs) } }
            div.stat { span.k { "Users" } span.v { (users) } }
            div.stat { span.k { "Requests this month" } span.v { (sum("requests")) } }
            div.stat { span.k { "Cost this month" } span.v { (view::usd(sum("cost_nanos"))) } }
            div.stat { span.k { "Error rate (30 days)" } span.v #platform-error-rate { (format!("{err_rate:.1}%")) } }
        }
        @if !points.is_empty() {
            h2 { "Last 30 days, every organisation" }
            (crate::console::reports::series_charts(&points, false))
        }
        h2 { "Provider health" }
        div.tablewrap { table #provider-health {
            thead { tr { th scope="col" { "Provider" } th scope="col" { "Organisation" } th scope="col" { "Type" } th scope="col" { "Reachable" } th scope="col" { "Latency" } th scope="col" { "Checked" } } }
            tbody {
                @if providers.is_empty() { tr { td.muted colspan="6" { "No provider yet." } } }
                @for p in &providers {
                    @let org = p["organisation_id"].as_str().map(|o| org_names.get(o).cloned().unwrap_or_else(|| o.to_string())).unwrap_or_else(|| "configuration file".into());
                    tr {
                        td { (str_of(p, "name")) }
                        td { (org) }
                        td { (str_of(p, "type")) }
                        td {
                            @match (p["enabled"].as_bool(), p["reachable"].as_bool()) {
                                (Some(false), _) => { span.badge.expired { "disabled" } }
                                (_, Some(true)) => { span.badge.active { "up" } }
                                (_, Some(false)) => { span.badge.revoked { "down" } @if let Some(e) = p["error"].as_str() { br; span.muted { (e) } } }
                                _ => { span.muted { "not probed yet" } }
                            }
                        }
                        td { (p["latency_ms"].as_f64().map(|l| format!("{l:.0} ms")).unwrap_or_else(|| "—".into())) }
                        td { (view::cell("checked_at", &p["checked_at"])) }
                    }
                }
            }
        } }
        h2 { "Organisations this month" }
        p.muted { "Top organisations by cost first." }
        div.tablewrap { table {
            thead { tr { th scope="col" { "Organisation" } th scope="col" { "Requests" } th scope="col" { "Input tokens" } th scope="col" { "Output tokens" } th scope="col" { "Cost" } } }
            tbody {
                @if month.is_empty() { tr { td.muted colspan="5" { "No organisation yet: " a href="/admin/organisations" { "create one" } "." } } }
                @for (o, t) in &month {
                    tr {
                        td { a href=(format!("/{}/dashboard", str_of(o, "slug"))) { (str_of(o, "name")) } }
                        td { (view::cell("requests", &t["requests"])) }
                        td { (view::cell("input_tokens", &t["input_tokens"])) }
                        td { (view::cell("output_tokens", &t["output_tokens"])) }
                        td { (view::cell("cost_nanos", &t["cost_nanos"])) }
                    }
                }
            }
        } }
    };
    Resp::html(200, view::layout(cx, scope, "dashboard", "Platform", body))
}
