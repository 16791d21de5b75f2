//! The generic resource pages: list with search and pages, create, edit, delete, generated from
//! the admin API's resource table, with the blocks some items add (provider keys, team members,
//! user passwords, invitations).

use super::apikeys::show_once;
use super::{done, not_found, str_of, Page};
use crate::api::resources::{Resource, INVITATIONS, PROVIDER_KEYS, TEAM_MEMBERS};
use crate::api::{ApiError, Role};
use crate::console::view::{self, Choices, Scope};
use crate::console::{api_error_page, Cx, Resp};
use http::Method;
use maud::{html, Markup};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub(super) fn api_base(page: &Page, scope: &Scope) -> String {
    match scope.org {
        Some(org) => page.res.path.replace("{organisationId}", &org.to_string()),
        None => page.res.path.to_string(),
    }
}

/// Reference choices for the columns of a resource (ids → names), from the API lists the
/// user may read.
pub(super) async fn choices(
    cx: &Cx<'_>,
    scope: &Scope,
    cols: &[&str],
) -> HashMap<&'static str, Choices> {
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
    // Budget and quota owners: a team, a user or an API key of the organisation, by name.
    if let (true, Some(base)) = (cols.contains(&"scope_id"), &org) {
        let mut owners = Choices::new();
        for (what, label, kind) in [
            ("teams", "name", "Team"),
            ("users", "email", "User"),
            ("api-keys", "name", "API key"),
        ] {
            if let Some(c) = list(format!("{base}/{what}"), label).await {
                owners.extend(c.into_iter().map(|(id, n)| (id, format!("{kind} · {n}"))));
            }
        }
        out.insert("scope_id", owners);
    }
    // A model's provider key: every key of the organisation's providers, by provider and name.
    if let (true, Some(base)) = (cols.contains(&"provider_api_key_id"), &org) {
        let providers = list(format!("{base}/providers"), "name")
            .await
            .unwrap_or_default();
        let mut keys = Choices::new();
        for (pid, pname) in providers {
            if let Some(c) = list(format!("{base}/providers/{pid}/keys"), "name").await {
                keys.extend(c.into_iter().map(|(id, n)| (id, format!("{pname} · {n}"))));
            }
        }
        out.insert("provider_api_key_id", keys);
    }
    if cols.contains(&"organisation_id") && cx.caller().role == Role::SuperAdmin {
        if let Some(c) = list("/api/admin/organisations".into(), "name").await {
            out.insert("organisation_id", c);
        }
    }
    out
}

pub(super) fn names_of(ch: &HashMap<&'static str, Choices>) -> HashMap<String, String> {
    ch.values().flatten().cloned().collect()
}

/// The JSON body of a create/update form for `res`.
pub(super) fn body_of(
    cx: &Cx<'_>,
    res: &Resource,
    updating: bool,
) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for col in res.columns {
        let writable = if updating { col.update } else { col.create };
        if !writable || col.virtual_field {
            continue;
        }
        let Some(raw) = cx.req.f(&view::form_name(col.name)) else {
            continue;
        };
        if let Some(v) = view::form_value(col, raw, updating)? {
            out.insert(col.name.to_string(), v);
        }
    }
    Ok(out)
}

pub(super) fn form_error(e: &str) -> ApiError {
    ApiError::new(crate::error::ErrorCode::InvalidRequest, e.to_string())
}

/// A page of rows, with the `?q=` search (the API searches the rows' text fields) and the
/// `?offset=` of the console page.
pub(super) async fn list_rows(
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
pub(super) fn pager_base(cx: &Cx<'_>, href: &str) -> String {
    match cx.req.q("q") {
        Some(q) => format!("{href}?q={}", view::url_encode(q)),
        None => href.to_string(),
    }
}

pub(super) fn search_box(cx: &Cx<'_>, action: &str) -> Markup {
    html! {
        form.search role="search" method="get" action=(action) {
            label.sr for="q" { "Search" }
            input #q type="search" name="q" placeholder="Search…" value=[cx.req.q("q")];
            button type="submit" { "Search" }
        }
    }
}

pub(super) fn form_fields(
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

pub(super) fn error_box(e: Option<&ApiError>) -> Markup {
    html! {
        @if let Some(e) = e {
            p.error role="alert" { (e.message) }
        }
    }
}

/// The values a failed form was submitted with (re-shown with its error).
pub(super) fn submitted(cx: &Cx<'_>, res: &Resource) -> Value {
    let mut m = Map::new();
    for col in res.columns {
        if let Some(v) = cx.req.f(&view::form_name(col.name)) {
            if let Ok(Some(v)) = view::form_value(col, v, false) {
                m.insert(col.name.to_string(), v);
            }
        }
    }
    Value::Object(m)
}

/// List page of a resource, with its create form (`error`: a failed create).
pub(super) async fn list_page(
    cx: &Cx<'_>,
    scope: &Scope,
    page: &Page,
    error: Option<&ApiError>,
) -> Resp {
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
        @if let (true, Some(org)) = (page.section == "budgets", scope.org) {
            (crate::console::reports::budget_meters(cx, scope, org, None).await)
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
pub(super) async fn item_page(
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
    let names = names_of(&ch);
    let href = format!("{}/{id}", scope.href(page.section));
    let extra = match (page.section, scope.org) {
        ("providers", Some(_)) => provider_keys_block(cx, &base, id, &href).await,
        ("teams", Some(_)) => members_block(cx, scope, &base, id, &href).await,
        ("users", _) => password_block(cx, &href),
        ("budgets", Some(org)) => {
            crate::console::reports::budget_meters(cx, scope, org, Some(id)).await
        }
        _ => html! {},
    };
    let title = row[page.title].as_str().unwrap_or(id).to_string();
    let body = html! {
        p { a href=(scope.href(page.section)) { "← All " (page.section) } }
        dl.details {
            @for (k, v) in row.as_object().into_iter().flatten() {
                dt { (view::label_with_unit(k)) }
                dd { (v.as_str().filter(|_| k.ends_with("_id")).and_then(|id| names.get(id).cloned()).unwrap_or_else(|| view::cell(k, v))) }
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

pub(super) async fn crud(cx: &Cx<'_>, scope: &Scope, page: &Page, tail: &[&str]) -> Resp {
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
pub(super) async fn provider_keys_block(cx: &Cx<'_>, base: &str, id: &str, href: &str) -> Markup {
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
pub(super) async fn members_block(
    cx: &Cx<'_>,
    scope: &Scope,
    base: &str,
    id: &str,
    href: &str,
) -> Markup {
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

pub(super) fn password_block(cx: &Cx<'_>, href: &str) -> Markup {
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
pub(super) async fn invitations_block(cx: &Cx<'_>, scope: &Scope) -> Markup {
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
pub(super) async fn invite(cx: &Cx<'_>, scope: &Scope) -> Resp {
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
