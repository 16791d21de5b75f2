//! The route table: the router matches against it and the OpenAPI document is generated from
//! it, so the two cannot drift.

use super::auth::{self, PasswordOf};
use super::keys::{self, Grant};
use super::resources::{self, Access, Resource, ALL, ORGANISATIONS, PLATFORM_LISTS};
use super::{json_reply, ApiError, ApiResult, Ctx, Role};
use crate::error::ErrorCode;
use crate::respond::Reply;
use http::Method;
use once_cell::sync::Lazy;
use serde_json::json;
use std::collections::HashMap;

/// What a route does.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    OpenApi,
    Me,
    List(&'static Resource),
    /// The rows of an organisation resource across every organisation (SUPER_ADMIN).
    ListAll(&'static Resource),
    Get(&'static Resource),
    Create(&'static Resource),
    Update(&'static Resource),
    Delete(&'static Resource),
    OrgGet,
    OrgUpdate,
    KeyRotate,
    KeyRevoke,
    KeyUnrevoke,
    KeyHistory,
    GrantsGet(Grant),
    GrantsPut(Grant),
    UsageRecords,
    UsageSeries,
    UsageRollups,
    Invoice,
    PasswordPut(PasswordOf),
    InvitationGet,
    InvitationAccept,
    LimitUsage(super::limits::Meter),
    OwnerLimitUsage,
    BudgetTopup,
    BudgetTopups,
}

/// One route.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    /// OpenAPI-style template: `/api/organisations/{organisationId}/teams/{id}`.
    pub path: String,
    pub op: Op,
    pub access: Access,
    pub summary: String,
    pub tag: &'static str,
}

fn r(
    method: Method,
    path: &str,
    op: Op,
    access: Access,
    summary: &str,
    tag: &'static str,
) -> Route {
    Route {
        method,
        path: path.to_string(),
        op,
        access,
        summary: summary.to_string(),
        tag,
    }
}

const KEYS: &str = "/api/organisations/{organisationId}/api-keys/{id}";

static ROUTES: Lazy<Vec<Route>> = Lazy::new(|| {
    let mut v = vec![
        r(
            Method::GET,
            "/api/openapi.json",
            Op::OpenApi,
            Access::Public,
            "Get the OpenAPI document",
            "Meta",
        ),
        r(
            Method::GET,
            "/api/me",
            Op::Me,
            Access::Member,
            "Get the calling user",
            "Meta",
        ),
        r(
            Method::GET,
            "/api/organisations/{organisationId}",
            Op::OrgGet,
            Access::Member,
            "Get the organisation",
            "Organisation",
        ),
        r(
            Method::PATCH,
            "/api/organisations/{organisationId}",
            Op::OrgUpdate,
            Access::OrgAdmin,
            "Update the organisation",
            "Organisation",
        ),
    ];
    for res in ALL {
        let item = format!("{}/{{id}}", res.path);
        let s = res.schema;
        v.push(r(
            Method::GET,
            res.path,
            Op::List(res),
            res.read,
            &format!("List {s} rows"),
            s,
        ));
        v.push(r(
            Method::POST,
            res.path,
            Op::Create(res),
            res.create,
            &format!("Create a {s}"),
            s,
        ));
        v.push(r(
            Method::GET,
            &item,
            Op::Get(res),
            res.read,
            &format!("Get a {s}"),
            s,
        ));
        v.push(r(
            Method::PATCH,
            &item,
            Op::Update(res),
            res.update,
            &format!("Update a {s}"),
            s,
        ));
        v.push(r(
            Method::DELETE,
            &item,
            Op::Delete(res),
            res.delete,
            &format!("Delete a {s}"),
            s,
        ));
    }
    for (segment, res) in PLATFORM_LISTS {
        v.push(r(
            Method::GET,
            &format!("/api/admin/{segment}"),
            Op::ListAll(res),
            Access::SuperAdmin,
            &format!(
                "List {} rows of every organisation (each with organisation_slug and organisation_name)",
                res.schema
            ),
            res.schema,
        ));
    }
    let k = "ApiKey";
    v.extend([
        r(
            Method::POST,
            &format!("{KEYS}/rotate"),
            Op::KeyRotate,
            Access::Manager,
            "Rotate an api key (new secret, same id)",
            k,
        ),
        r(
            Method::POST,
            &format!("{KEYS}/revoke"),
            Op::KeyRevoke,
            Access::Manager,
            "Revoke an api key",
            k,
        ),
        r(
            Method::POST,
            &format!("{KEYS}/unrevoke"),
            Op::KeyUnrevoke,
            Access::Manager,
            "Unrevoke an api key",
            k,
        ),
        r(
            Method::GET,
            &format!("{KEYS}/history"),
            Op::KeyHistory,
            Access::Member,
            "List an api key's rotations",
            k,
        ),
        r(
            Method::GET,
            &format!("{KEYS}/models"),
            Op::GrantsGet(Grant::Models),
            Access::Member,
            "List an api key's model grants",
            k,
        ),
        r(
            Method::PUT,
            &format!("{KEYS}/models"),
            Op::GrantsPut(Grant::Models),
            Access::Manager,
            "Replace an api key's model grants",
            k,
        ),
        r(
            Method::GET,
            &format!("{KEYS}/mcp-servers"),
            Op::GrantsGet(Grant::McpServers),
            Access::Member,
            "List an api key's MCP grants",
            k,
        ),
        r(
            Method::PUT,
            &format!("{KEYS}/mcp-servers"),
            Op::GrantsPut(Grant::McpServers),
            Access::Manager,
            "Replace an api key's MCP grants",
            k,
        ),
        r(
            Method::GET,
            "/api/organisations/{organisationId}/usage/records",
            Op::UsageRecords,
            Access::Member,
            "List usage records",
            "Usage",
        ),
        r(
            Method::GET,
            "/api/organisations/{organisationId}/usage/series",
            Op::UsageSeries,
            Access::Member,
            "Get the usage series of a period, one point per hour or day",
            "Usage",
        ),
        r(
            Method::GET,
            "/api/organisations/{organisationId}/usage/rollups",
            Op::UsageRollups,
            Access::Member,
            "List usage rollups",
            "Usage",
        ),
        r(
            Method::GET,
            "/api/organisations/{organisationId}/invoices",
            Op::Invoice,
            Access::Manager,
            "Get the invoice of a period",
            "Usage",
        ),
        r(
            Method::PUT,
            "/api/me/password",
            Op::PasswordPut(PasswordOf::Me),
            Access::Member,
            "Set the calling user's password",
            "Auth",
        ),
        r(
            Method::PUT,
            "/api/organisations/{organisationId}/users/{id}/password",
            Op::PasswordPut(PasswordOf::OrgUser),
            Access::OrgAdmin,
            "Set a user's password",
            "Auth",
        ),
        r(
            Method::PUT,
            "/api/admin/users/{id}/password",
            Op::PasswordPut(PasswordOf::AnyUser),
            Access::SuperAdmin,
            "Set any user's password",
            "Auth",
        ),
        r(
            Method::GET,
            "/api/invitations/{token}",
            Op::InvitationGet,
            Access::Public,
            "Get a pending invitation by its token",
            "Auth",
        ),
        r(
            Method::POST,
            "/api/invitations/{token}/accept",
            Op::InvitationAccept,
            Access::Public,
            "Accept an invitation: create the user with a password",
            "Auth",
        ),
        r(
            Method::GET,
            "/api/organisations/{organisationId}/usage/limits",
            Op::OwnerLimitUsage,
            Access::Manager,
            "List every budget and quota (optionally of one owner: scope, scope_id) with its current window: used, reserved, remaining and the reservations in flight",
            "Usage",
        ),
        r(
            Method::GET,
            "/api/organisations/{organisationId}/budgets/{id}/usage",
            Op::LimitUsage(super::limits::Meter::Budget),
            Access::Manager,
            "Get a budget's current window: used, reserved, remaining and the reservations in flight",
            "Budget",
        ),
        r(
            Method::GET,
            "/api/organisations/{organisationId}/quotas/{id}/usage",
            Op::LimitUsage(super::limits::Meter::Quota),
            Access::Manager,
            "Get a quota's current window: used, reserved, remaining and the reservations in flight",
            "Quota",
        ),
        r(
            Method::POST,
            "/api/organisations/{organisationId}/budgets/{id}/topups",
            Op::BudgetTopup,
            Access::OrgAdmin,
            "Top up a prepaid balance (a budget without a period): body {amount_nanos, note?}",
            "Budget",
        ),
        r(
            Method::GET,
            "/api/organisations/{organisationId}/budgets/{id}/topups",
            Op::BudgetTopups,
            Access::Manager,
            "List a prepaid balance's top-ups, newest first",
            "Budget",
        ),
    ]);
    v
});

/// Every route.
pub fn routes() -> &'static [Route] {
    &ROUTES
}

fn matches(template: &'static str, path: &str) -> Option<HashMap<&'static str, String>> {
    let mut params = HashMap::new();
    let mut t = template.split('/');
    let mut p = path.trim_end_matches('/').split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some(ts), Some(ps)) => {
                if let Some(name) = ts.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    if ps.is_empty() {
                        return None;
                    }
                    params.insert(name, ps.to_string());
                } else if ts != ps {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// The route of a request and its path parameters: 404 for an unknown path, 405 for a known
/// path and another method.
pub fn find(
    method: &Method,
    path: &str,
) -> ApiResult<(&'static Route, HashMap<&'static str, String>)> {
    let mut path_known = false;
    for route in routes() {
        if let Some(params) = matches(route.path.as_str(), path) {
            if route.method == *method || (*method == Method::HEAD && route.method == Method::GET) {
                return Ok((route, params));
            }
            path_known = true;
        }
    }
    if path_known {
        Err(ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed on {path}"),
        ))
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no route for {path}"),
        ))
    }
}

/// Runs a matched route.
pub async fn dispatch(ctx: &Ctx<'_>, route: &Route) -> ApiResult<Reply> {
    let id = || ctx.id("id", "row");
    match route.op {
        Op::OpenApi => Ok(json_reply(200, super::openapi::document())),
        Op::Me => Ok(json_reply(
            200,
            &json!({
                "id": ctx.caller.user_id.to_string(),
                "email": ctx.caller.email,
                "role": ctx.caller.role.as_str(),
                "organisation_id": ctx.caller.organisation_id.map(|o| o.to_string()),
                "token_id": ctx.caller.token_id.to_string(),
            }),
        )),
        Op::List(res) => resources::list(ctx, res).await,
        Op::ListAll(res) => resources::list_all(ctx, res).await,
        Op::Get(res) => resources::get(ctx, res, ctx.id("id", res.schema)?).await,
        Op::Create(res) if std::ptr::eq(res, &resources::API_KEYS) => keys::create(ctx).await,
        Op::Create(res) => resources::create(ctx, res).await,
        Op::Update(res) => resources::update(ctx, res, ctx.id("id", res.schema)?).await,
        Op::Delete(res) => resources::delete(ctx, res, ctx.id("id", res.schema)?).await,
        Op::OrgGet if ctx.caller.role < Role::Manager => {
            // A USER reads its organisation's name only, not its policies and settings.
            let full = resources::get(ctx, &ORGANISATIONS, ctx.org()?).await?;
            let row: serde_json::Value =
                serde_json::from_slice(&full.body).map_err(ApiError::internal)?;
            let mut out = serde_json::Map::new();
            for k in ["id", "name", "slug", "enabled"] {
                out.insert(k.to_string(), row[k].clone());
            }
            Ok(json_reply(full.status, &serde_json::Value::Object(out)))
        }
        Op::OrgGet => resources::get(ctx, &ORGANISATIONS, ctx.org()?).await,
        Op::OrgUpdate => resources::update(ctx, &ORGANISATIONS, ctx.org()?).await,
        Op::KeyRotate => keys::rotate(ctx, id()?).await,
        Op::KeyRevoke => keys::set_revoked(ctx, id()?, true).await,
        Op::KeyUnrevoke => keys::set_revoked(ctx, id()?, false).await,
        Op::KeyHistory => keys::history(ctx, id()?).await,
        Op::GrantsGet(g) => keys::get_grants(ctx, id()?, g).await,
        Op::GrantsPut(g) => keys::put_grants(ctx, id()?, g).await,
        Op::UsageRecords => super::usage::records(ctx).await,
        Op::UsageSeries => super::usage::series(ctx).await,
        Op::UsageRollups => super::usage::rollups(ctx).await,
        Op::Invoice => super::usage::invoice(ctx).await,
        Op::LimitUsage(kind) => super::limits::usage(ctx, kind, id()?).await,
        Op::OwnerLimitUsage => super::limits::owner_usage(ctx).await,
        Op::BudgetTopup => super::limits::topup(ctx, id()?).await,
        Op::BudgetTopups => super::limits::topups(ctx, id()?).await,
        Op::PasswordPut(of) => auth::put_password(ctx, of).await,
        Op::InvitationGet | Op::InvitationAccept => {
            dispatch_public(&ctx.pool, route, &ctx.params, &ctx.req.body).await
        }
    }
}

/// Runs a route that needs no admin token (invitations: the token in the path is the
/// credential).
pub async fn dispatch_public(
    pool: &sqlx::PgPool,
    route: &Route,
    params: &HashMap<&'static str, String>,
    body: &[u8],
) -> ApiResult<Reply> {
    let token = params.get("token").map(String::as_str).unwrap_or_default();
    match route.op {
        Op::InvitationGet => auth::get_invitation(pool, token).await,
        Op::InvitationAccept => auth::post_accept(pool, token, body).await,
        _ => Err(ApiError::internal("not a public route")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_unique_and_match_themselves() {
        let mut seen = std::collections::HashSet::new();
        for r in routes() {
            assert!(
                seen.insert((r.method.clone(), r.path.clone())),
                "duplicate {} {}",
                r.method,
                r.path
            );
            let concrete = r.path.replace("{organisationId}", "o").replace("{id}", "i");
            let concrete = concrete
                .replace("{teamId}", "t")
                .replace("{providerId}", "p")
                .replace("{userId}", "u");
            let (found, _) = find(&r.method, &concrete).expect("routable");
            assert_eq!(found.path, r.path, "{concrete} routes to another template");
        }
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(
            find(&Method::GET, "/api/nope")
                .map(|_| ())
                .expect_err("404")
                .status(),
            404
        );
        assert_eq!(
            find(&Method::PUT, "/api/admin/organisations")
                .map(|_| ())
                .expect_err("405")
                .status(),
            405
        );
        let (r, p) =
            find(&Method::GET, "/api/organisations/abc/teams/t1/members/m1").expect("route");
        assert_eq!(
            r.path,
            "/api/organisations/{organisationId}/teams/{teamId}/members/{id}"
        );
        assert_eq!(p["organisationId"], "abc");
        assert_eq!(p["teamId"], "t1");
        assert_eq!(p["id"], "m1");
    }
}
