//! The resource pages: list with search and pages, create, edit, delete, generated from the
//! admin API's resource table, plus API keys (secret shown once, grants, rotation,
//! revocation), provider keys (write-only), team members, user passwords, invitations and
//! settings. Every read and write is an admin API call as the signed-in user.

use super::view::{self, Choices, Scope};
use super::{api_error_page, reports, Cx, Resp};
use crate::api::resources::{
    Col, Resource, ADMIN_USERS, API_KEYS, BUDGETS, INVITATIONS, MCP_SERVERS, MODELS, ORGANISATIONS,
    PLATFORM_LISTS, PROVIDERS, PROVIDER_KEYS, QUOTAS, TEAMS, TEAM_MEMBERS, USERS,
};
use crate::api::{ApiError, Role};
use http::Method;
use maud::{html, Markup};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use uuid::Uuid;

/// A generic resource page.
struct Page {
    section: &'static str,
    res: &'static Resource,
    /// Columns of the list: `(field, header)`.
    cols: &'static [(&'static str, &'static str)],
    /// The field naming a row.
    title: &'static str,
}

const ORG_PAGES: &[Page] = &[
    Page {
        section: "teams",
        res: &TEAMS,
        cols: &[
            ("name", "Name"),
            ("description", "Description"),
            ("created_at", "Created"),
        ],
        title: "name",
    },
    Page {
        section: "users",
        res: &USERS,
        cols: &[
            ("email", "E-mail"),
            ("name", "Name"),
            ("role", "Role"),
            ("status", "Status"),
            ("last_login_at", "Last sign-in"),
        ],
        title: "email",
    },
    Page {
        section: "providers",
        res: &PROVIDERS,
        cols: &[
            ("name", "Name"),
            ("provider_type", "Type"),
            ("base_url", "Base URL"),
            ("enabled", "Enabled"),
        ],
        title: "name",
    },
    Page {
        section: "models",
        res: &MODELS,
        cols: &[
            ("name", "Name"),
            ("slug", "Upstream slug"),
            ("model_type", "Type"),
            ("provider_id", "Provider"),
            ("input_price_nanos", "Input / 1M"),
            ("output_price_nanos", "Output / 1M"),
            ("enabled", "Enabled"),
        ],
        title: "name",
    },
    Page {
        section: "mcp-servers",
        res: &MCP_SERVERS,
        cols: &[
            ("name", "Name"),
            ("slug", "Slug"),
            ("transport", "Transport"),
            ("url", "URL"),
            ("enabled", "Enabled"),
        ],
        title: "name",
    },
    Page {
        section: "budgets",
        res: &BUDGETS,
        cols: &[
            ("name", "Name"),
            ("scope", "Scope"),
            ("scope_id", "Owner"),
            ("amount_nanos", "Amount"),
            ("period", "Period"),
            ("warning_thresholds", "Warnings (%)"),
            ("enabled", "Enabled"),
        ],
        title: "name",
    },
    Page {
        section: "quotas",
        res: &QUOTAS,
        cols: &[
            ("name", "Name"),
            ("scope", "Scope"),
            ("scope_id", "Owner"),
            ("metric", "Metric"),
            ("limit_value", "Limit"),
            ("period", "Period"),
            ("enabled", "Enabled"),
        ],
        title: "name",
    },
];

const PLATFORM_PAGES: &[Page] = &[
    Page {
        section: "organisations",
        res: &ORGANISATIONS,
        cols: &[
            ("name", "Name"),
            ("slug", "Slug"),
            ("enabled", "Enabled"),
            ("created_at", "Created"),
        ],
        title: "name",
    },
    Page {
        section: "users",
        res: &ADMIN_USERS,
        cols: &[
            ("email", "E-mail"),
            ("name", "Name"),
            ("role", "Role"),
            ("status", "Status"),
            ("organisation_id", "Organisation"),
            ("last_login_at", "Last sign-in"),
        ],
        title: "email",
    },
];

/// Columns of the platform's list of API keys (`owner` and `state` are worked out per row).
const APIKEY_COLS: &[(&str, &str)] = &[
    ("name", "Name"),
    ("key_prefix", "Key"),
    ("key_type", "Type"),
    ("owner", "Owner"),
    ("expires_at", "Expires"),
    ("state", "State"),
];

/// Organisation sections that the platform scope shows through an organisation picker (the
/// others of [`PLATFORM_LISTS`] list every organisation's rows).
const ORG_ONLY: &[&str] = &["usage", "invoices", "playground", "docs"];

fn not_found(cx: &Cx<'_>) -> Resp {
    view::error_page(Some(cx), 404, "Not found.")
}

/// The scope of a path's first segment: `admin` (SUPER_ADMIN only) or an organisation slug
/// visible to the user (404 otherwise, as the API answers).
pub(super) async fn resolve_scope(cx: &Cx<'_>, slug: &str) -> Result<Scope, Resp> {
    if slug == "admin" {
        return if cx.caller().role == Role::SuperAdmin {
            Ok(Scope::platform())
        } else {
            Err(not_found(cx))
        };
    }
    let row = if cx.caller().role == Role::SuperAdmin {
        cx.api(
            Method::GET,
            "/api/admin/organisations",
            vec![("slug".into(), slug.to_string())],
            None,
        )
        .await
        .ok()
        .and_then(|v| v["data"].get(0).cloned())
    } else {
        match cx.caller().organisation_id {
            Some(org) => cx.get(&format!("/api/organisations/{org}")).await.ok(),
            None => None,
        }
    };
    match row {
        Some(o) if o["slug"] == slug => Ok(Scope {
            slug: slug.to_string(),
            name: o["name"].as_str().unwrap_or(slug).to_string(),
            org: o["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()),
        }),
        _ => Err(not_found(cx)),
    }
}

/// Routes `/{scope}/{section}/…`.
pub async fn dispatch(cx: &Cx<'_>, scope: &str, rest: &[&str]) -> Resp {
    let scope = match resolve_scope(cx, scope).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let post = cx.req.method == Method::POST;
    let Some((section, tail)) = rest.split_first() else {
        return not_found(cx);
    };
    let section = *section;
    if let Some(org) = scope.org {
        match section {
            "dashboard" => return reports::dashboard(cx, &scope, org).await,
            "usage" if !post => return reports::usage(cx, &scope, org, tail).await,
            "invoices" if !post => return reports::invoices(cx, &scope, org, tail).await,
            "playground" => return reports::playground(cx, &scope, org, tail).await,
            "docs" if !post => return reports::docs(cx, &scope, org).await,
            "settings" => return settings(cx, &scope, org, tail).await,
            "apikeys" => return apikeys(cx, &scope, org, tail).await,
            "once" if !post => {
                return match tail {
                    [id] => once_page(cx, &scope, id).await,
                    _ => not_found(cx),
                }
            }
            _ => {}
        }
        if let Some(page) = ORG_PAGES.iter().find(|p| p.section == section) {
            return crud(cx, &scope, page, tail).await;
        }
        return not_found(cx);
    }
    match section {
        "dashboard" if !post => platform_dashboard(cx, &scope).await,
        "settings" => settings_platform(cx, &scope, tail).await,
        s if ORG_ONLY.contains(&s) && !post => org_picker(cx, &scope, s).await,
        s if PLATFORM_LISTS.iter().any(|(seg, _)| *seg == s) && !post => {
            platform_list(cx, &scope, s, tail).await
        }
        s => match PLATFORM_PAGES.iter().find(|p| p.section == s) {
            Some(page) => crud(cx, &scope, page, tail).await,
            None => not_found(cx),
        },
    }
}

fn api_base(page: &Page, scope: &Scope) -> String {
    match scope.org {
        Some(org) => page.res.path.replace("{organisationId}", &org.to_string()),
        None => page.res.path.to_string(),
    }
}

fn str_of(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

/// Reference choices for the columns of a resource (ids → names), from the API lists the
/// user may read.
async fn choices(cx: &Cx<'_>, scope: &Scope, cols: &[&str]) -> HashMap<&'static str, Choices> {
    let mut out = HashMap::new();
    let list = |path: String, label: &'static str| async move {
        cx.api(
            Method::GET,
            &path,
            vec![("limit".into(), "500".into())],
            None,
        )
        .await
        .ok()
        .map(|v| {
            v["data"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| (str_of(r, "id"), str_of(r, label)))
                        .collect::<Choices>()
                })
                .unwrap_or_default()
        })
    };
    let org = scope.org.map(|o| format!("/api/organisations/{o}"));
    for (col, what, label) in [
        ("provider_id", "providers", "name"),
        ("team_id", "teams", "name"),
        ("user_id", "users", "email"),
    ] {
        if let (true, Some(base)) = (cols.contains(&col), &org) {
            if let Some(c) = list(format!("{base}/{what}"), label).await {
                out.insert(col, c);
            }
        }
    }
    if cols.contains(&"organisation_id") && cx.caller().role == Role::SuperAdmin {
        if let Some(c) = list("/api/admin/organisations".into(), "name").await {
            out.insert("organisation_id", c);
        }
    }
    out
}

fn names_of(ch: &HashMap<&'static str, Choices>) -> HashMap<String, String> {
    ch.values().flatten().cloned().collect()
}

/// The JSON body of a create/update form for `res`.
fn body_of(cx: &Cx<'_>, res: &Resource, updating: bool) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for col in res.columns {
        let writable = if updating { col.update } else { col.create };
        if !writable || col.virtual_field {
            continue;
        }
        let Some(raw) = cx.req.f(col.name) else {
            continue;
        };
        if let Some(v) = view::form_value(col, raw, updating)? {
            out.insert(col.name.to_string(), v);
        }
    }
    Ok(out)
}

fn form_error(e: &str) -> ApiError {
    ApiError::new(crate::error::ErrorCode::InvalidRequest, e.to_string())
}

/// A page of rows, with the `?q=` search (the API searches the rows' text fields) and the
/// `?offset=` of the console page.
async fn list_rows(
    cx: &Cx<'_>,
    path: &str,
    mut query: Vec<(String, String)>,
) -> Result<(Vec<Value>, i64, i64, i64), ApiError> {
    let limit: i64 = 50;
    let offset: i64 = cx
        .req
        .q("offset")
        .and_then(|o| o.parse().ok())
        .filter(|o: &i64| *o >= 0)
        .unwrap_or(0);
    if let Some(needle) = cx.req.q("q") {
        query.push(("q".into(), needle.to_string()));
    }
    query.push(("limit".into(), limit.to_string()));
    query.push(("offset".into(), offset.to_string()));
    let v = cx.api(Method::GET, path, query, None).await?;
    let rows = v["data"].as_array().cloned().unwrap_or_default();
    Ok((rows, v["total"].as_i64().unwrap_or(0), offset, limit))
}

/// The list's link with its search, for the pager.
fn pager_base(cx: &Cx<'_>, href: &str) -> String {
    match cx.req.q("q") {
        Some(q) => format!("{href}?q={}", view::url_encode(q)),
        None => href.to_string(),
    }
}

fn search_box(cx: &Cx<'_>, action: &str) -> Markup {
    html! {
        form.search role="search" method="get" action=(action) {
            label.sr for="q" { "Search" }
            input #q type="search" name="q" placeholder="Search…" value=[cx.req.q("q")];
            button type="submit" { "Search" }
        }
    }
}

fn form_fields(
    res: &Resource,
    updating: bool,
    current: Option<&Value>,
    ch: &HashMap<&'static str, Choices>,
    skip: &[&str],
) -> Markup {
    html! {
        @for col in res.columns.iter().filter(|c| (if updating { c.update } else { c.create }) && !c.virtual_field && !skip.contains(&c.name)) {
            (view::field(col, current.map(|c| &c[col.name]), ch.get(col.name), if updating { "e_" } else { "c_" }))
        }
    }
}

fn error_box(e: Option<&ApiError>) -> Markup {
    html! {
        @if let Some(e) = e {
            p.error role="alert" { (e.message) }
        }
    }
}

/// The values a failed form was submitted with (re-shown with its error).
fn submitted(cx: &Cx<'_>, res: &Resource) -> Value {
    let mut m = Map::new();
    for col in res.columns {
        if let Some(v) = cx.req.f(col.name) {
            if let Ok(Some(v)) = view::form_value(col, v, false) {
                m.insert(col.name.to_string(), v);
            }
        }
    }
    Value::Object(m)
}

/// List page of a resource, with its create form (`error`: a failed create).
async fn list_page(cx: &Cx<'_>, scope: &Scope, page: &Page, error: Option<&ApiError>) -> Resp {
    let base = api_base(page, scope);
    let (rows, total, offset, limit) = match list_rows(cx, &base, Vec::new()).await {
        Ok(x) => x,
        Err(e) => return api_error_page(cx, &e),
    };
    let cols: Vec<&str> = page
        .res
        .columns
        .iter()
        .map(|c| c.name)
        .chain(page.cols.iter().map(|c| c.0))
        .collect();
    let ch = choices(cx, scope, &cols).await;
    let names = names_of(&ch);
    let href = scope.href(page.section);
    let item = |r: &Value| format!("{href}/{}", str_of(r, "id"));
    let lookup = |_c: &str, v: &Value| v.as_str().and_then(|s| names.get(s).cloned());
    let pager_base = pager_base(cx, &href);
    let failed = error.map(|_| submitted(cx, page.res));
    let title = view::SECTIONS
        .iter()
        .find(|s| s.slug == page.section)
        .map(|s| s.title)
        .unwrap_or(page.section);
    let body = html! {
        div.toolbar {
            (search_box(cx, &href))
        }
        (view::table(&rows, page.cols, Some(&item), &lookup))
        (view::pager(&pager_base, offset, limit, total))
        @if page.section == "users" && scope.org.is_some() {
            (invitations_block(cx, scope).await)
        }
        details.create #create open[error.is_some() || cx.req.q("create").is_some()] {
            summary { "Create" }
            form method="post" action=(href) {
                (view::csrf(cx))
                (error_box(error))
                (form_fields(page.res, false, failed.as_ref(), &ch, &[]))
                button.primary type="submit" { "Create" }
            }
        }
    };
    Resp::html(
        error.map(|e| e.status()).unwrap_or(200),
        view::layout(cx, scope, page.section, title, body),
    )
}

/// Item page: the row, its edit form, delete, and resource-specific parts.
async fn item_page(
    cx: &Cx<'_>,
    scope: &Scope,
    page: &Page,
    id: &str,
    error: Option<&ApiError>,
) -> Resp {
    let base = api_base(page, scope);
    let row = match cx.get(&format!("{base}/{id}")).await {
        Ok(r) => r,
        Err(e) => return api_error_page(cx, &e),
    };
    let cols: Vec<&str> = page.res.columns.iter().map(|c| c.name).collect();
    let ch = choices(cx, scope, &cols).await;
    let href = format!("{}/{id}", scope.href(page.section));
    let extra = match (page.section, scope.org) {
        ("providers", Some(_)) => provider_keys_block(cx, &base, id, &href).await,
        ("teams", Some(_)) => members_block(cx, scope, &base, id, &href).await,
        ("users", _) => password_block(cx, &href),
        _ => html! {},
    };
    let title = row[page.title].as_str().unwrap_or(id).to_string();
    let body = html! {
        p { a href=(scope.href(page.section)) { "← All " (page.section) } }
        dl.details {
            @for (k, v) in row.as_object().into_iter().flatten() {
                dt { (view::label(k)) } dd { (view::cell(k, v)) }
            }
        }
        section aria-labelledby="edit-h" {
            h2 #edit-h { "Edit" }
            form method="post" action=(href) {
                (view::csrf(cx))
                (error_box(error))
                (form_fields(page.res, true, Some(&row), &ch, &[]))
                button.primary type="submit" { "Save" }
            }
        }
        (extra)
        section aria-labelledby="danger-h" {
            h2 #danger-h { "Delete" }
            (view::action(cx, &format!("{href}/delete"), "Delete", Some("Delete this row? This cannot be undone."), "danger"))
        }
    };
    Resp::html(
        error.map(|e| e.status()).unwrap_or(200),
        view::layout(cx, scope, page.section, &title, body),
    )
}

/// Redirect with a flash message.
fn done(href: &str, msg: &str) -> Resp {
    let sep = if href.contains('?') { '&' } else { '?' };
    Resp::redirect(&format!("{href}{sep}done={}", view::url_encode(msg)))
}

async fn crud(cx: &Cx<'_>, scope: &Scope, page: &Page, tail: &[&str]) -> Resp {
    let post = cx.req.method == Method::POST;
    let base = api_base(page, scope);
    let list_href = scope.href(page.section);
    match (tail, post) {
        ([], false) => list_page(cx, scope, page, None).await,
        ([], true) => {
            let body = match body_of(cx, page.res, false) {
                Ok(b) => b,
                Err(e) => return list_page(cx, scope, page, Some(&form_error(&e))).await,
            };
            match cx
                .api(Method::POST, &base, Vec::new(), Some(&Value::Object(body)))
                .await
            {
                Ok(row) => done(&format!("{list_href}/{}", str_of(&row, "id")), "Created."),
                Err(e) => list_page(cx, scope, page, Some(&e)).await,
            }
        }
        (["invite"], true) if page.section == "users" && scope.org.is_some() => {
            invite(cx, scope).await
        }
        (["invitations", iid, "revoke"], true) if page.section == "users" => {
            let Some(org) = scope.org else {
                return not_found(cx);
            };
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            match cx
                .api(
                    Method::PATCH,
                    &format!("/api/organisations/{org}/invitations/{iid}"),
                    Vec::new(),
                    Some(&json!({"revoked_at": now})),
                )
                .await
            {
                Ok(_) => done(&list_href, "Invitation revoked."),
                Err(e) => api_error_page(cx, &e),
            }
        }
        ([id], false) => item_page(cx, scope, page, id, None).await,
        ([id], true) => {
            let body = match body_of(cx, page.res, true) {
                Ok(b) => b,
                Err(e) => return item_page(cx, scope, page, id, Some(&form_error(&e))).await,
            };
            match cx
                .api(
                    Method::PATCH,
                    &format!("{base}/{id}"),
                    Vec::new(),
                    Some(&Value::Object(body)),
                )
                .await
            {
                Ok(_) => done(&format!("{list_href}/{id}"), "Saved."),
                Err(e) => item_page(cx, scope, page, id, Some(&e)).await,
            }
        }
        ([id, "delete"], true) => {
            match cx
                .api(Method::DELETE, &format!("{base}/{id}"), Vec::new(), None)
                .await
            {
                Ok(_) => done(&list_href, "Deleted."),
                Err(e) => api_error_page(cx, &e),
            }
        }
        ([id, "password"], true) if page.section == "users" => {
            let pw = cx.req.f("password").unwrap_or("");
            match cx
                .api(
                    Method::PUT,
                    &format!("{base}/{id}/password"),
                    Vec::new(),
                    Some(&json!({ "password": pw })),
                )
                .await
            {
                Ok(_) => done(&format!("{list_href}/{id}"), "Password set."),
                Err(e) => item_page(cx, scope, page, id, Some(&e)).await,
            }
        }
        ([id, "keys"], true) if page.section == "providers" => {
            let mut body = json!({"secret": cx.req.f("secret").unwrap_or("")});
            if let Some(n) = cx.req.f("name").filter(|n| !n.trim().is_empty()) {
                body["name"] = json!(n);
            }
            match cx
                .api(
                    Method::POST,
                    &format!("{base}/{id}/keys"),
                    Vec::new(),
                    Some(&body),
                )
                .await
            {
                Ok(_) => done(&format!("{list_href}/{id}"), "Provider key added."),
                Err(e) => item_page(cx, scope, page, id, Some(&e)).await,
            }
        }
        ([id, "keys", kid, action], true) if page.section == "providers" => {
            let path = format!("{base}/{id}/keys/{kid}");
            let r = match *action {
                "delete" => cx.api(Method::DELETE, &path, Vec::new(), None).await,
                "revoke" | "activate" => {
                    let status = if *action == "revoke" {
                        "REVOKED"
                    } else {
                        "ACTIVE"
                    };
                    cx.api(
                        Method::PATCH,
                        &path,
                        Vec::new(),
                        Some(&json!({ "status": status })),
                    )
                    .await
                }
                _ => return not_found(cx),
            };
            match r {
                Ok(_) => done(&format!("{list_href}/{id}"), "Provider key updated."),
                Err(e) => api_error_page(cx, &e),
            }
        }
        ([id, "members"], true) if page.section == "teams" => {
            let mut body = json!({"user_id": cx.req.f("user_id").unwrap_or("")});
            if let Some(r) = cx.req.f("team_role").filter(|r| !r.is_empty()) {
                body["team_role"] = json!(r);
            }
            match cx
                .api(
                    Method::POST,
                    &format!("{base}/{id}/members"),
                    Vec::new(),
                    Some(&body),
                )
                .await
            {
                Ok(_) => done(&format!("{list_href}/{id}"), "Member added."),
                Err(e) => item_page(cx, scope, page, id, Some(&e)).await,
            }
        }
        ([id, "members", mid, "delete"], true) if page.section == "teams" => {
            match cx
                .api(
                    Method::DELETE,
                    &format!("{base}/{id}/members/{mid}"),
                    Vec::new(),
                    None,
                )
                .await
            {
                Ok(_) => done(&format!("{list_href}/{id}"), "Member removed."),
                Err(e) => api_error_page(cx, &e),
            }
        }
        _ => not_found(cx),
    }
}

/// Provider keys of a provider: write-only secrets, only their preview is shown.
async fn provider_keys_block(cx: &Cx<'_>, base: &str, id: &str, href: &str) -> Markup {
    let keys = cx.get(&format!("{base}/{id}/keys")).await;
    html! {
        section aria-labelledby="pk-h" {
            h2 #pk-h { "Provider keys" }
            @match &keys {
                Err(e) => { p.muted { (e.message) } }
                Ok(v) => {
                    div.tablewrap { table {
                        thead { tr { th scope="col" { "Name" } th scope="col" { "Preview" } th scope="col" { "Status" } th scope="col" { "Created" } th scope="col" { span.sr { "Actions" } } } }
                        tbody {
                            @for k in v["data"].as_array().into_iter().flatten() {
                                @let kid = str_of(k, "id");
                                tr {
                                    td { (view::cell("name", &k["name"])) }
                                    td { code { (view::cell("preview", &k["preview"])) } }
                                    td { (view::cell("status", &k["status"])) }
                                    td { (view::cell("created_at", &k["created_at"])) }
                                    td.actions {
                                        @if k["status"] == "ACTIVE" {
                                            (view::action(cx, &format!("{href}/keys/{kid}/revoke"), "Revoke", None, "link"))
                                        } @else {
                                            (view::action(cx, &format!("{href}/keys/{kid}/activate"), "Activate", None, "link"))
                                        }
                                        (view::action(cx, &format!("{href}/keys/{kid}/delete"), "Delete", Some("Delete this provider key?"), "link danger"))
                                    }
                                }
                            }
                        }
                    } }
                    form method="post" action=(format!("{href}/keys")) {
                        (view::csrf(cx))
                        (view::field(&PROVIDER_KEYS.columns[0], None, None, "pk_"))
                        div.field {
                            label for="pk_secret" { "Secret " span.muted { "(write-only: stored encrypted, never shown again)" } }
                            input #pk_secret type="password" name="secret" required autocomplete="off";
                        }
                        button.primary type="submit" { "Add provider key" }
                    }
                }
            }
        }
    }
}

/// Members of a team.
async fn members_block(cx: &Cx<'_>, scope: &Scope, base: &str, id: &str, href: &str) -> Markup {
    let members = cx.get(&format!("{base}/{id}/members")).await;
    let ch = choices(cx, scope, &["user_id"]).await;
    let names = names_of(&ch);
    html! {
        section aria-labelledby="tm-h" {
            h2 #tm-h { "Members" }
            @match &members {
                Err(e) => { p.muted { (e.message) } }
                Ok(v) => {
                    ul.plain {
                        @for m in v["data"].as_array().into_iter().flatten() {
                            @let uid = str_of(m, "user_id");
                            li {
                                (names.get(&uid).cloned().unwrap_or(uid.clone())) " · " (view::cell("team_role", &m["team_role"])) " "
                                (view::action(cx, &format!("{href}/members/{}/delete", str_of(m, "id")), "Remove", Some("Remove this member?"), "link danger"))
                            }
                        }
                    }
                    form method="post" action=(format!("{href}/members")) {
                        (view::csrf(cx))
                        (view::field(&TEAM_MEMBERS.columns[0], None, ch.get("user_id"), "tm_"))
                        (view::field(&TEAM_MEMBERS.columns[1], None, None, "tm_"))
                        button.primary type="submit" { "Add member" }
                    }
                }
            }
        }
    }
}

fn password_block(cx: &Cx<'_>, href: &str) -> Markup {
    html! {
        section aria-labelledby="pw-h" {
            h2 #pw-h { "Password" }
            form method="post" action=(format!("{href}/password")) {
                (view::csrf(cx))
                div.field {
                    label for="pw_password" { "New password " span.muted { "(at least 8 characters)" } }
                    input #pw_password type="password" name="password" required minlength="8" autocomplete="new-password";
                }
                button.primary type="submit" { "Set password" }
            }
        }
    }
}

/// Invitations of the organisation (ORG_ADMIN: the API answers 403 to others, and the block
/// is left out).
async fn invitations_block(cx: &Cx<'_>, scope: &Scope) -> Markup {
    let Some(org) = scope.org else {
        return html! {};
    };
    let Ok(v) = cx
        .api(
            Method::GET,
            &format!("/api/organisations/{org}/invitations"),
            vec![("limit".into(), "100".into())],
            None,
        )
        .await
    else {
        return html! {};
    };
    let href = scope.href("users");
    let ch = choices(cx, scope, &["team_id"]).await;
    html! {
        section aria-labelledby="inv-h" {
            h2 #inv-h { "Invitations" }
            div.tablewrap { table {
                thead { tr { th scope="col" { "E-mail" } th scope="col" { "Role" } th scope="col" { "Expires" } th scope="col" { "State" } th scope="col" { span.sr { "Actions" } } } }
                tbody {
                    @for i in v["data"].as_array().into_iter().flatten() {
                        @let state = if !i["accepted_at"].is_null() { "accepted" } else if !i["revoked_at"].is_null() { "revoked" } else { "pending" };
                        tr {
                            td { (str_of(i, "email")) }
                            td { (str_of(i, "role")) }
                            td { (view::cell("expires_at", &i["expires_at"])) }
                            td { (state) }
                            td { @if state == "pending" {
                                (view::action(cx, &format!("{href}/invitations/{}/revoke", str_of(i, "id")), "Revoke", Some("Revoke this invitation?"), "link danger"))
                            } }
                        }
                    }
                }
            } }
            details {
                summary { "Invite someone" }
                form method="post" action=(format!("{href}/invite")) {
                    (view::csrf(cx))
                    (form_fields(&INVITATIONS, false, None, &ch, &[]))
                    button.primary type="submit" { "Create invitation" }
                }
            }
        }
    }
}

/// `POST /{org}/users/invite`: the invitation link is shown once.
async fn invite(cx: &Cx<'_>, scope: &Scope) -> Resp {
    let Some(org) = scope.org else {
        return not_found(cx);
    };
    let body = match body_of(cx, &INVITATIONS, false) {
        Ok(b) => b,
        Err(e) => return api_error_page(cx, &form_error(&e)),
    };
    match cx
        .api(
            Method::POST,
            &format!("/api/organisations/{org}/invitations"),
            Vec::new(),
            Some(&Value::Object(body)),
        )
        .await
    {
        Ok(inv) => {
            let link = format!(
                "{}/invite/{}",
                cx.req.base_url(),
                inv["token"].as_str().unwrap_or_default()
            );
            let view = json!({
                "kind": "invitation",
                "title": "Invitation created",
                "link": link,
                "email": str_of(&inv, "email"),
                "expires_at": inv["expires_at"],
            });
            show_once(cx, scope, view).await
        }
        Err(e) => api_error_page(cx, &e),
    }
}

/// The organisations a platform page lists (the first 500).
async fn organisations(cx: &Cx<'_>) -> Result<Vec<Value>, ApiError> {
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
async fn org_picker(cx: &Cx<'_>, scope: &Scope, section: &str) -> Resp {
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
async fn names_from(cx: &Cx<'_>, path: &str, label: &str, into: &mut HashMap<String, String>) {
    if let Ok(v) = cx
        .api(
            Method::GET,
            path,
            vec![("limit".into(), "500".into())],
            None,
        )
        .await
    {
        for r in v["data"].as_array().into_iter().flatten() {
            into.insert(str_of(r, "id"), str_of(r, label));
        }
    }
}

/// `/admin/{section}` of an organisation section: the rows of every organisation (the
/// `/api/admin/{section}` list), with the organisation of each and the same search and pages
/// as an organisation's list. Rows open, and are created, on their organisation's pages:
/// `/admin/{section}/new?organisation={slug}` leads to that organisation's create form.
async fn platform_list(cx: &Cx<'_>, scope: &Scope, section: &str, tail: &[&str]) -> Resp {
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

async fn platform_dashboard(cx: &Cx<'_>, scope: &Scope) -> Resp {
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
    let mut month = Vec::new();
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
    let sum = |f: &str| {
        month
            .iter()
            .map(|(_, t)| t[f].as_i64().unwrap_or(0))
            .sum::<i64>()
    };
    let body = html! {
        div.cards {
            div.stat { span.k { "Organisations" } span.v { (orgs) } }
            div.stat { span.k { "Users" } span.v { (users) } }
            div.stat { span.k { "Requests this month" } span.v { (sum("requests")) } }
            div.stat { span.k { "Cost this month" } span.v { (view::usd(sum("cost_nanos"))) } }
        }
        h2 { "Organisations this month" }
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

fn own_password_form(cx: &Cx<'_>, href: &str) -> Markup {
    html! {
        section aria-labelledby="mypw-h" {
            h2 #mypw-h { "Your password" }
            form method="post" action=(href) {
                (view::csrf(cx))
                div.field {
                    label for="cur_pw" { "Current password" }
                    input #cur_pw type="password" name="current" required autocomplete="current-password";
                }
                div.field {
                    label for="new_pw" { "New password " span.muted { "(at least 8 characters)" } }
                    input #new_pw type="password" name="password" required minlength="8" autocomplete="new-password";
                }
                button.primary type="submit" { "Change password" }
            }
        }
    }
}

/// `POST …/settings/password`: the current password is checked before the API sets the new.
async fn change_own_password(cx: &Cx<'_>, back: &str) -> Result<Resp, ApiError> {
    let pool = crate::api::pool(cx.state)?;
    let ok =
        crate::api::auth::check_login(&pool, &cx.caller().email, cx.req.f("current").unwrap_or(""))
            .await?;
    if ok != Some(cx.caller().user_id) {
        return Err(ApiError::invalid("current", "is not your current password"));
    }
    cx.api(
        Method::PUT,
        "/api/me/password",
        Vec::new(),
        Some(&json!({"password": cx.req.f("password").unwrap_or("")})),
    )
    .await?;
    Ok(done(back, "Password changed."))
}

async fn settings_platform(cx: &Cx<'_>, scope: &Scope, tail: &[&str]) -> Resp {
    let href = scope.href("settings");
    if let (["password"], true) = (tail, cx.req.method == Method::POST) {
        return match change_own_password(cx, &href).await {
            Ok(r) => r,
            Err(e) => api_error_page(cx, &e),
        };
    }
    let body = html! {
        dl.details {
            dt { "Signed in as" } dd { (cx.caller().email) }
            dt { "Role" } dd { (cx.caller().role.as_str()) }
        }
        (own_password_form(cx, &format!("{href}/password")))
        p { a href="/api/openapi.json" { "Admin API (OpenAPI document)" } }
    };
    Resp::html(200, view::layout(cx, scope, "settings", "Settings", body))
}

async fn settings(cx: &Cx<'_>, scope: &Scope, org: Uuid, tail: &[&str]) -> Resp {
    let href = scope.href("settings");
    let path = format!("/api/organisations/{org}");
    let post = cx.req.method == Method::POST;
    let mut error = None;
    match (tail, post) {
        ([], false) => {}
        (["password"], true) => {
            return match change_own_password(cx, &href).await {
                Ok(r) => r,
                Err(e) => api_error_page(cx, &e),
            }
        }
        ([], true) => {
            let r = match body_of(cx, &ORGANISATIONS, true) {
                Ok(b) => {
                    cx.api(Method::PATCH, &path, Vec::new(), Some(&Value::Object(b)))
                        .await
                }
                Err(e) => Err(form_error(&e)),
            };
            match r {
                Ok(o) => {
                    return done(&format!("/{}/settings", str_of(&o, "slug")), "Saved.");
                }
                Err(e) => error = Some(e),
            }
        }
        _ => return not_found(cx),
    }
    let row = match cx.get(&path).await {
        Ok(r) => r,
        Err(e) => return api_error_page(cx, &e),
    };
    let admin = cx.caller().role >= Role::OrgAdmin;
    let body = html! {
        dl.details {
            dt { "Organisation" } dd { (str_of(&row, "name")) }
            dt { "Slug" } dd { code { (str_of(&row, "slug")) } }
            dt { "Signed in as" } dd { (cx.caller().email) " (" (cx.caller().role.as_str()) ")" }
        }
        @if admin {
            section aria-labelledby="org-h" {
                h2 #org-h { "Organisation settings" }
                form method="post" action=(href) {
                    (view::csrf(cx))
                    (error_box(error.as_ref()))
                    (form_fields(&ORGANISATIONS, true, Some(&row), &HashMap::new(), &["slug", "enabled"]))
                    button.primary type="submit" { "Save" }
                }
            }
        }
        (own_password_form(cx, &format!("{href}/password")))
    };
    Resp::html(
        error.as_ref().map(|e| e.status()).unwrap_or(200),
        view::layout(cx, scope, "settings", "Settings", body),
    )
}

// === API keys ===

fn key_state(k: &Value) -> &'static str {
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

async fn grant_choices(cx: &Cx<'_>, org: Uuid) -> (Vec<Value>, Vec<Value>) {
    let list = |what: &'static str| async move {
        cx.api(
            Method::GET,
            &format!("/api/organisations/{org}/{what}"),
            vec![("limit".into(), "500".into())],
            None,
        )
        .await
        .ok()
        .and_then(|v| v["data"].as_array().cloned())
        .unwrap_or_default()
    };
    (list("models").await, list("mcp-servers").await)
}

fn grant_boxes(
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

fn ids(cx: &Cx<'_>, name: &str) -> Vec<Value> {
    cx.req
        .all(name)
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| json!(s))
        .collect()
}

async fn apikeys_list(cx: &Cx<'_>, scope: &Scope, org: Uuid, error: Option<&ApiError>) -> Resp {
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
    let body = html! {
        div.toolbar { (search_box(cx, &href)) }
        div.tablewrap { table {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Key" } th scope="col" { "Type" }
                th scope="col" { "Owner" } th scope="col" { "Expires" } th scope="col" { "State" }
                th scope="col" { span.sr { "Actions" } }
            } }
            tbody {
                @if rows.is_empty() { tr { td.muted colspan="7" { "No API key yet." } } }
                @for k in &rows {
                    @let owner = k["team_id"].as_str().or(k["user_id"].as_str()).map(|s| names.get(s).cloned().unwrap_or(s.to_string())).unwrap_or("organisation".into());
                    tr {
                        td { (str_of(k, "name")) }
                        td { code { (str_of(k, "key_prefix")) "…" } }
                        td { (str_of(k, "key_type")) }
                        td { (owner) }
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

async fn apikey_page(
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
async fn show_once(cx: &Cx<'_>, scope: &Scope, view: Value) -> Resp {
    match super::once::redirect_to(cx, &scope.slug, &view).await {
        Ok(r) => r,
        Err(e) => api_error_page(cx, &e),
    }
}

/// The one-time view of an API key's secret.
fn key_view(key: &Value, what: &str) -> Value {
    json!({
        "kind": "apikey",
        "title": what,
        "id": str_of(key, "id"),
        "name": str_of(key, "name"),
        "secret": str_of(key, "key"),
    })
}

/// `GET /{org}/once/{id}`: a secret made by this session's last form, shown this once.
async fn once_page(cx: &Cx<'_>, scope: &Scope, id: &str) -> Resp {
    let v = match super::once::take(cx, id).await {
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
    let body = html! {
        (view::secret_once(&format!("The secret of “{}”.", str_of(&v, "name")), &str_of(&v, "secret")))
        p { "Use it as " code { "Authorization: Bearer <key>" } " against the gateway." }
        p { a href=(href) { "Manage this key" } " · " a href=(scope.href("apikeys")) { "All API keys" } }
    };
    Resp::html(200, view::layout(cx, scope, "apikeys", &title, body))
}

async fn apikeys(cx: &Cx<'_>, scope: &Scope, org: Uuid, tail: &[&str]) -> Resp {
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
