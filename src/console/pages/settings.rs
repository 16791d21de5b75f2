//! The settings pages: the organisation's settings and the signed-in user's own password.

use super::crud::{body_of, error_box, form_error, form_fields};
use super::{done, not_found, str_of};
use crate::api::resources::ORGANISATIONS;
use crate::api::{ApiError, Role};
use crate::console::view::{self, Scope};
use crate::console::{api_error_page, Cx, Resp};
use http::Method;
use maud::{html, Markup};
use serde_json::{json, Value};
use std::collections::HashMap;
use uuid::Uuid;

pub(super) fn own_password_form(cx: &Cx<'_>, href: &str) -> Markup {
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
pub(super) async fn change_own_password(cx: &Cx<'_>, back: &str) -> Result<Resp, ApiError> {
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

pub(super) async fn settings_platform(cx: &Cx<'_>, scope: &Scope, tail: &[&str]) -> Resp {
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

pub(super) async fn settings(cx: &Cx<'_>, scope: &Scope, org: Uuid, tail: &[&str]) -> Resp {
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
