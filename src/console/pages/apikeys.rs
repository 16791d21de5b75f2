//! The API key pages: list, create with grants, edit, rotate, revoke, and the page that shows a
//! secret once.

use super::crud::{
    body_of, choices, error_box, form_error, form_fields, list_rows, names_of, pager_base,
    search_box, submitted,
};
use super::{done, not_found, str_of};
use crate::api::resources::{Col, API_KEYS};
use crate::api::{ApiError, Role};
use crate::console::view::{self, Scope};
use crate::console::{api_error_page, Cx, Resp};
use http::Method;
use maud::{html, Markup};
use serde_json::{json, Value};
use uuid::Uuid;

/// Columns of the platform's list of API keys (`owner` and `state` are worked out per row).
pub(super) const APIKEY_COLS: &[(&str, &str)] = &[
    ("name", "Name"),
    ("key_prefix", "Key"),
    ("key_type", "Type"),
    ("owner", "Owner"),
    ("expires_at", "Expires"),
    ("state", "State"),
];

pub(super) fn key_state(k: &Value) -> &'static str {
    if !k["revoked_at"].is_null() {
        return "revoked";
    }
    if let Some(exp) = k["expires_at"].as_str() {
        if time::OffsetDateTime::parse(exp, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|t| t <= time::OffsetDateTime::now_utc())
        {
            return "expired";
        }
    }
    "active"
}

pub(super) async fn grant_choices(cx: &Cx<'_>, org: Uuid) -> (Vec<Value>, Vec<Value>) {
    let list = |what: &'static str| async move {
        cx.list(&format!("/api/organisations/{org}/{what}")).await
    };
    (list("models").await, list("mcp-servers").await)
}

pub(super) fn grant_boxes(
    legend: &str,
    name: &str,
    options: &[Value],
    granted: &[String],
    detail: &str,
) -> Markup {
    html! {
        fieldset.grants {
            legend { (legend) }
            @if options.is_empty() { p.muted { "None defined." } }
            @for o in options {
                @let id = str_of(o, "id");
                @let fid = format!("{name}_{id}");
                div.check {
                    input id=(fid) type="checkbox" name=(name) value=(id) checked[granted.contains(&id)];
                    label for=(fid) { (str_of(o, "name")) " " span.muted { (str_of(o, detail)) } }
                }
            }
        }
    }
}

pub(super) fn ids(cx: &Cx<'_>, name: &str) -> Vec<Value> {
    cx.req
        .all(name)
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| json!(s))
        .collect()
}

/// What the keys list shows of each key beyond its row.
pub(super) struct KeyStats {
    models: usize,
    last_used: Option<String>,
    /// This month's spend (`None` when the caller may not read invoices).
    spend: Option<i64>,
    /// `spent of limit` of the key's own active budget.
    budget: Option<String>,
}

/// Per key of `rows`: its model grants, its last request, this month's spend (one invoice) and
/// its active budget, all read through the admin API as the caller.
pub(super) async fn key_stats(cx: &Cx<'_>, org: Uuid, rows: &[Value]) -> Vec<KeyStats> {
    let base = format!("/api/organisations/{org}");
    let spend: Option<std::collections::HashMap<String, i64>> = cx
        .api(
            Method::GET,
            &format!("{base}/invoices"),
            vec![("period".into(), "this_month".into())],
            None,
        )
        .await
        .ok()
        .map(|inv| {
            inv["api_keys"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| (str_of(r, "id"), r["cost_nanos"].as_i64().unwrap_or(0)))
                .collect()
        });
    let budgets = if cx.caller().role >= Role::Manager {
        crate::console::reports::burn_down(cx, org).await
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(rows.len());
    for k in rows {
        let id = str_of(k, "id");
        let models = cx
            .get(&format!("{base}/api-keys/{id}/models"))
            .await
            .ok()
            .and_then(|v| v["data"].as_array().map(Vec::len))
            .unwrap_or(0);
        let last_used = cx
            .api(
                Method::GET,
                &format!("{base}/usage/records"),
                vec![
                    ("api_key_id".into(), id.clone()),
                    ("limit".into(), "1".into()),
                ],
                None,
            )
            .await
            .ok()
            .and_then(|v| v["data"][0]["created_at"].as_str().map(str::to_string));
        let budget = budgets.iter().find(|b| b.is_key(&id)).map(|b| b.summary());
        out.push(KeyStats {
            models,
            last_used,
            spend: spend.as_ref().map(|m| m.get(&id).copied().unwrap_or(0)),
            budget,
        });
    }
    out
}

pub(super) async fn apikeys_list(
    cx: &Cx<'_>,
    scope: &Scope,
    org: Uuid,
    error: Option<&ApiError>,
) -> Resp {
    let base = format!("/api/organisations/{org}/api-keys");
    let (rows, total, offset, limit) = match list_rows(cx, &base, Vec::new()).await {
        Ok(x) => x,
        Err(e) => return api_error_page(cx, &e),
    };
    let ch = choices(cx, scope, &["team_id", "user_id"]).await;
    let names = names_of(&ch);
    let (models, mcps) = grant_choices(cx, org).await;
    let href = scope.href("apikeys");
    let failed = error.map(|_| submitted(cx, &API_KEYS));
    let may_create = cx.caller().role >= Role::Manager;
    let stats = key_stats(cx, org, &rows).await;
    let body = html! {
        div.toolbar { (search_box(cx, &href)) }
        div.tablewrap { table.apikeys {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Key" } th scope="col" { "Type" }
                th scope="col" { "Owner" } th scope="col" { "Models" } th scope="col" { "Last used" }
                th scope="col" { "Spend this month" } th scope="col" { "Budget" }
                th scope="col" { "Expires" } th scope="col" { "State" }
                th scope="col" { span.sr { "Actions" } }
            } }
            tbody {
                @if rows.is_empty() { tr { td.muted colspan="11" { "No API key yet." } } }
                @for (k, st) in rows.iter().zip(&stats) {
                    @let owner = k["team_id"].as_str().or(k["user_id"].as_str()).map(|s| names.get(s).cloned().unwrap_or(s.to_string())).unwrap_or("organisation".into());
                    tr data-key-id=(str_of(k, "id")) {
                        td { (str_of(k, "name")) }
                        td { code { (str_of(k, "key_prefix")) "…" } }
                        td { (str_of(k, "key_type")) }
                        td { (owner) }
                        td.models { (st.models) }
                        td.nowrap.last-used { @match &st.last_used { Some(t) => { (view::fmt_time_str(t)) } None => { span.muted { "never" } } } }
                        td.nowrap.spend { @match st.spend { Some(n) => { (view::usd(n)) } None => { span.muted { "—" } } } }
                        td.nowrap.budget { @match &st.budget { Some(b) => { (b) } None => { span.muted { "none" } } } }
                        td { (view::cell("expires_at", &k["expires_at"])) }
                        td { span class=(format!("badge {}", key_state(k))) { (key_state(k)) } }
                        td { a href=(format!("{href}/{}", str_of(k, "id"))) { "Manage" } }
                    }
                }
            }
        } }
        (view::pager(&pager_base(cx, &href), offset, limit, total))
        @if may_create {
            details.create #create open[error.is_some() || cx.req.q("create").is_some()] {
                summary { "Create an API key" }
                form method="post" action=(href) {
                    (view::csrf(cx))
                    (error_box(error))
                    (form_fields(&API_KEYS, false, failed.as_ref(), &ch, &["routing_policy", "policies", "metadata"]))
                    (grant_boxes("Models this key may use", "models", &models, &[], "model_type"))
                    (grant_boxes("MCP servers this key may use", "mcp_servers", &mcps, &[], "slug"))
                    details {
                        summary { "Routing policy, limits, metadata" }
                        @for c in API_KEYS.columns.iter().filter(|c| ["routing_policy", "policies", "metadata"].contains(&c.name)) {
                            (view::field(c, failed.as_ref().map(|f| &f[c.name]), None, "c_"))
                        }
                    }
                    button.primary type="submit" { "Create key" }
                }
            }
        }
    };
    Resp::html(
        error.map(|e| e.status()).unwrap_or(200),
        view::layout(cx, scope, "apikeys", "API keys", body),
    )
}

pub(super) async fn apikey_page(
    cx: &Cx<'_>,
    scope: &Scope,
    org: Uuid,
    id: &str,
    error: Option<&ApiError>,
) -> Resp {
    let base = format!("/api/organisations/{org}/api-keys/{id}");
    let key = match cx.get(&base).await {
        Ok(k) => k,
        Err(e) => return api_error_page(cx, &e),
    };
    let rows = |v: Result<Value, ApiError>| -> Vec<Value> {
        v.ok()
            .and_then(|v| v["data"].as_array().cloned())
            .unwrap_or_default()
    };
    let ids = |rows: &[Value]| -> Vec<String> { rows.iter().map(|g| str_of(g, "id")).collect() };
    // The granted rows name themselves: a USER, who may not list the catalog, sees them too.
    let gm_rows = rows(cx.get(&format!("{base}/models")).await);
    let gm = ids(&gm_rows);
    let gs = ids(&rows(cx.get(&format!("{base}/mcp-servers")).await));
    let history = cx
        .get(&format!("{base}/history"))
        .await
        .ok()
        .and_then(|v| v["data"].as_array().cloned())
        .unwrap_or_default();
    let may = cx.caller().role >= Role::Manager;
    let (models, mcps) = if may {
        grant_choices(cx, org).await
    } else {
        (Vec::new(), Vec::new())
    };
    let href = format!("{}/{id}", scope.href("apikeys"));
    let state = key_state(&key);
    let edit_cols: Vec<&Col> = API_KEYS
        .columns
        .iter()
        .filter(|c| c.update && !c.virtual_field)
        .collect();
    let body = html! {
        p { a href=(scope.href("apikeys")) { "← All API keys" } }
        dl.details {
            dt { "Key" } dd { code { (str_of(&key, "key_prefix")) "…" } }
            dt { "Type" } dd { (str_of(&key, "key_type")) }
            dt { "State" } dd { span class=(format!("badge {state}")) { (state) } }
            dt { "Expires" } dd { (view::cell("expires_at", &key["expires_at"])) }
            dt { "Created" } dd { (view::cell("created_at", &key["created_at"])) }
            dt { "Rotated" } dd { (view::cell("rotated_at", &key["rotated_at"])) }
        }
        (error_box(error))
        @if may {
            section aria-labelledby="act-h" {
                h2 #act-h { "Actions" }
                div.actions {
                    (view::action(cx, &format!("{href}/rotate"), "Rotate secret", Some("Rotate the secret? The current one stops working at once."), "secondary"))
                    @if state == "revoked" {
                        (view::action(cx, &format!("{href}/unrevoke"), "Unrevoke", None, "secondary"))
                    } @else {
                        (view::action(cx, &format!("{href}/revoke"), "Revoke", Some("Revoke this key? Requests with it are refused within a second."), "danger"))
                    }
                    (view::action(cx, &format!("{href}/delete"), "Delete", Some("Delete this key? This cannot be undone."), "danger"))
                }
            }
            section aria-labelledby="edit-h" {
                h2 #edit-h { "Settings" }
                form method="post" action=(href) {
                    (view::csrf(cx))
                    @for c in &edit_cols { (view::field(c, Some(&key[c.name]), None, "e_")) }
                    button.primary type="submit" { "Save" }
                }
            }
            section aria-labelledby="grants-h" {
                h2 #grants-h { "Grants" }
                form method="post" action=(format!("{href}/grants")) {
                    (view::csrf(cx))
                    (grant_boxes("Models", "models", &models, &gm, "model_type"))
                    (grant_boxes("MCP servers", "mcp_servers", &mcps, &gs, "slug"))
                    button.primary type="submit" { "Save grants" }
                }
            }
        } @else {
            h2 { "Models" }
            ul.plain {
                @if gm_rows.is_empty() { li.muted { "None granted." } }
                @for m in &gm_rows { li { (str_of(m, "name")) } }
            }
        }
        section aria-labelledby="hist-h" {
            h2 #hist-h { "Rotations" }
            ul.plain {
                @if history.is_empty() { li.muted { "Never rotated." } }
                @for h in &history {
                    li { code { (str_of(h, "previous_prefix")) "…" } " replaced " (view::cell("rotated_at", &h["rotated_at"])) }
                }
            }
        }
    };
    let title = str_of(&key, "name");
    Resp::html(
        error.map(|e| e.status()).unwrap_or(200),
        view::layout(cx, scope, "apikeys", &title, body),
    )
}

/// Answers a form that made a secret: stores it for one showing by this session and
/// redirects (303) to the page that shows it (post/redirect/get).
pub(super) async fn show_once(cx: &Cx<'_>, scope: &Scope, view: Value) -> Resp {
    match crate::console::once::redirect_to(cx, &scope.slug, &view).await {
        Ok(r) => r,
        Err(e) => api_error_page(cx, &e),
    }
}

/// The one-time view of an API key's secret.
pub(super) fn key_view(key: &Value, what: &str) -> Value {
    json!({
        "kind": "apikey",
        "title": what,
        "id": str_of(key, "id"),
        "name": str_of(key, "name"),
        "secret": str_of(key, "key"),
    })
}

/// `GET /{org}/once/{id}`: a secret made by this session's last form, shown this once.
pub(super) async fn once_page(cx: &Cx<'_>, scope: &Scope, id: &str) -> Resp {
    let v = match crate::console::once::take(cx, id).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return view::error_page(
                Some(cx),
                410,
                "This secret was shown once and is no longer available. Rotate the key, or \
                 create a new invitation, if you did not copy it.",
            )
        }
        Err(e) => return api_error_page(cx, &e),
    };
    let title = str_of(&v, "title");
    if v["kind"] == "invitation" {
        let body = html! {
            (view::secret_once("Invitation link for the new user.", &str_of(&v, "link")))
            p { "Send this link to " strong { (str_of(&v, "email")) } ". It expires " (view::cell("expires_at", &v["expires_at"])) "." }
            p { a href=(scope.href("users")) { "← Users" } }
        };
        return Resp::html(200, view::layout(cx, scope, "users", &title, body));
    }
    let href = format!("{}/{}", scope.href("apikeys"), str_of(&v, "id"));
    let gateway = crate::console::reports::gateway_base(cx);
    // A model the key may call, for a curl that works as pasted.
    let model = match scope.org {
        Some(org) => cx
            .get(&format!(
                "/api/organisations/{org}/api-keys/{}/models",
                str_of(&v, "id")
            ))
            .await
            .ok()
            .and_then(|m| {
                m["data"].as_array().and_then(|a| {
                    a.iter()
                        .find(|m| {
                            ["chat", "reasoning"].contains(&m["model_type"].as_str().unwrap_or(""))
                        })
                        .map(|m| str_of(m, "name"))
                })
            }),
        None => None,
    };
    let curl = format!(
        "curl {gateway}/v1/chat/completions \\\n  -H \"Authorization: Bearer {}\" \\\n  -H \"Content-Type: application/json\" \\\n  -d '{{\"model\": \"{}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'",
        str_of(&v, "secret"),
        model.as_deref().unwrap_or("MODEL")
    );
    let body = html! {
        (view::secret_once(&format!("The secret of “{}”.", str_of(&v, "name")), &str_of(&v, "secret")))
        dl.details {
            dt { "Base URL" } dd { code #once-base { (gateway) "/v1" } " " button type="button" data-copy="#once-base" { "Copy" } }
            dt { "Header" } dd { code { "Authorization: Bearer <key>" } }
        }
        section.snippet {
            h2 { "Try it" }
            @if model.is_none() { p.muted { "This key has no chat model granted yet: grant one on its page and replace MODEL." } }
            div.copyrow {
                pre #once-curl { code { (curl) } }
                button type="button" data-copy="#once-curl" { "Copy" }
            }
        }
        p { a href=(href) { "Manage this key" } " · " a href=(scope.href("apikeys")) { "All API keys" } }
    };
    Resp::html(200, view::layout(cx, scope, "apikeys", &title, body))
}

pub(super) async fn apikeys(cx: &Cx<'_>, scope: &Scope, org: Uuid, tail: &[&str]) -> Resp {
    let post = cx.req.method == Method::POST;
    let base = format!("/api/organisations/{org}/api-keys");
    let href = scope.href("apikeys");
    match (tail, post) {
        ([], false) => apikeys_list(cx, scope, org, None).await,
        ([], true) => {
            let mut body = match body_of(cx, &API_KEYS, false) {
                Ok(b) => b,
                Err(e) => return apikeys_list(cx, scope, org, Some(&form_error(&e))).await,
            };
            body.insert("models".into(), Value::from(ids(cx, "models")));
            body.insert("mcp_servers".into(), Value::from(ids(cx, "mcp_servers")));
            match cx
                .api(Method::POST, &base, Vec::new(), Some(&Value::Object(body)))
                .await
            {
                Ok(key) => show_once(cx, scope, key_view(&key, "API key created")).await,
                Err(e) => apikeys_list(cx, scope, org, Some(&e)).await,
            }
        }
        ([id], false) => apikey_page(cx, scope, org, id, None).await,
        ([id], true) => {
            let r = match body_of(cx, &API_KEYS, true) {
                Ok(b) => {
                    cx.api(
                        Method::PATCH,
                        &format!("{base}/{id}"),
                        Vec::new(),
                        Some(&Value::Object(b)),
                    )
                    .await
                }
                Err(e) => Err(form_error(&e)),
            };
            match r {
                Ok(_) => done(&format!("{href}/{id}"), "Saved."),
                Err(e) => apikey_page(cx, scope, org, id, Some(&e)).await,
            }
        }
        ([id, "grants"], true) => {
            let models = json!({"models": ids(cx, "models")});
            let mcp = json!({"mcp_servers": ids(cx, "mcp_servers")});
            let r = match cx
                .api(
                    Method::PUT,
                    &format!("{base}/{id}/models"),
                    Vec::new(),
                    Some(&models),
                )
                .await
            {
                Ok(_) => {
                    cx.api(
                        Method::PUT,
                        &format!("{base}/{id}/mcp-servers"),
                        Vec::new(),
                        Some(&mcp),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(_) => done(&format!("{href}/{id}"), "Grants saved."),
                Err(e) => apikey_page(cx, scope, org, id, Some(&e)).await,
            }
        }
        ([id, "rotate"], true) => {
            match cx
                .api(
                    Method::POST,
                    &format!("{base}/{id}/rotate"),
                    Vec::new(),
                    None,
                )
                .await
            {
                Ok(key) => show_once(cx, scope, key_view(&key, "API key rotated")).await,
                Err(e) => api_error_page(cx, &e),
            }
        }
        ([id, action @ ("revoke" | "unrevoke")], true) => {
            match cx
                .api(
                    Method::POST,
                    &format!("{base}/{id}/{action}"),
                    Vec::new(),
                    None,
                )
                .await
            {
                Ok(_) => done(
                    &format!("{href}/{id}"),
                    if *action == "revoke" {
                        "Key revoked."
                    } else {
                        "Key unrevoked."
                    },
                ),
                Err(e) => api_error_page(cx, &e),
            }
        }
        ([id, "delete"], true) => {
            match cx
                .api(Method::DELETE, &format!("{base}/{id}"), Vec::new(), None)
                .await
            {
                Ok(_) => done(&href, "Key deleted."),
                Err(e) => api_error_page(cx, &e),
            }
        }
        _ => not_found(cx),
    }
}
