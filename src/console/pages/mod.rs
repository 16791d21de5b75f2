//! The resource pages: list with search and pages, create, edit, delete, generated from the
//! admin API's resource table, plus API keys (secret shown once, grants, rotation,
//! revocation), provider keys (write-only), team members, user passwords, invitations and
//! settings. Every read and write is an admin API call as the signed-in user.
//!
//! `crud.rs`: the generic resource pages; `apikeys.rs`: API keys; `platform.rs`: the platform
//! scope; `settings.rs`: settings and the own password. This file routes a path to them.

mod apikeys;
mod crud;
mod platform;
mod settings;

use crate::api::resources::{
    Resource, ADMIN_USERS, BUDGETS, MCP_SERVERS, MODELS, ORGANISATIONS, PLATFORM_LISTS, PROVIDERS,
    QUOTAS, TEAMS, USERS,
};
use crate::api::Role;
use crate::console::view::{self, Scope};
use crate::console::{reports, Cx, Resp};
use apikeys::{apikeys, once_page};
use crud::crud;
use http::Method;
use platform::{org_picker, platform_dashboard, platform_list};
use serde_json::Value;
use settings::{settings, settings_platform};
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

fn str_of(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

/// Redirect with a flash message.
fn done(href: &str, msg: &str) -> Resp {
    let sep = if href.contains('?') { '&' } else { '?' };
    Resp::redirect(&format!("{href}{sep}done={}", view::url_encode(msg)))
}
