//! The OpenAPI 3.1 document of the admin API, generated from the route table and the
//! resources' columns (the router's own data, so it cannot drift from what is served).

use super::resources::{Kind, Resource, ALL};
use super::routes::{routes, Op, Route};
use once_cell::sync::Lazy;
use serde_json::{json, Map, Value};

static DOCUMENT: Lazy<Value> = Lazy::new(build);

/// The document.
pub fn document() -> &'static Value {
    &DOCUMENT
}

const RBAC: &str = "Roles: SUPER_ADMIN (everything, every organisation), ORG_ADMIN (everything \
inside their organisation), MANAGER (the teams they belong to: their members and keys; reads \
catalog, budgets, quotas and the usage of their teams), USER (reads their own keys and usage, \
and the catalog). A caller never sees another organisation's rows: 404, not 403. Validation \
errors are 400 `invalid_request` with the offending `field`.";

fn error_response(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn schema_of(res: &Resource, creating: Option<bool>) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for c in res.columns {
        if let Some(creating) = creating {
            if (creating && !c.create) || (!creating && !c.update) {
                continue;
            }
            if creating && c.required {
                required.push(json!(c.name));
            }
        } else if c.virtual_field || res.hidden.contains(&c.name) {
            continue;
        }
        let mut s = c.ty.schema();
        if c.nullable {
            if let Some(t) = s.get("type").cloned() {
                s["type"] = json!([t, "null"]);
            }
        }
        if res.hidden.contains(&c.name) || c.virtual_field {
            s["writeOnly"] = json!(true);
        }
        props.insert(c.name.to_string(), s);
    }
    if creating.is_none() {
        props.insert(
            "id".into(),
            json!({"type": "string", "format": "uuid", "readOnly": true}),
        );
        props.insert(
            "created_at".into(),
            json!({"type": "string", "format": "date-time", "readOnly": true}),
        );
    }
    if creating.is_none() {
        let once = match res.kind {
            Kind::ApiKey => Some((
                "key",
                "The virtual key: in the create and rotate answers only.",
            )),
            Kind::AdminToken => Some(("token", "The admin token: in the create answer only.")),
            Kind::Invitation => Some(("token", "The invitation token: in the create answer only.")),
            _ => None,
        };
        if let Some((name, desc)) = once {
            props.insert(
                name.into(),
                json!({"type": "string", "readOnly": true, "description": desc}),
            );
        }
    }
    let mut out = json!({"type": "object", "properties": props});
    if creating.is_none() {
        out["additionalProperties"] = json!(true);
    } else {
        out["additionalProperties"] = json!(false);
    }
    if !required.is_empty() {
        out["required"] = json!(required);
    }
    out
}

fn params(route: &Route) -> Vec<Value> {
    let mut out: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true,
                   "schema": {"type": "string", "format": "uuid"}})
        })
        .collect();
    let q = |name: &str, desc: &str| json!({"name": name, "in": "query", "required": false, "description": desc, "schema": {"type": "string"}});
    let paged = |out: &mut Vec<Value>| {
        out.push(json!({"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}}));
        out.push(json!({"name": "offset", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "default": 0}}));
    };
    let period = |out: &mut Vec<Value>| {
        out.push(json!({"name": "period", "in": "query", "required": false,
            "schema": {"type": "string", "enum": ["this_month", "last_month", "last_30_days", "last_24_hours", "custom"]}}));
        out.push(q("from", "RFC 3339 or YYYY-MM-DD (inclusive)"));
        out.push(q(
            "to",
            "RFC 3339 or YYYY-MM-DD (a date includes the day; exclusive otherwise)",
        ));
        out.push(json!({"name": "format", "in": "query", "required": false, "schema": {"type": "string", "enum": ["json", "csv"]}}));
        for f in ["team_id", "api_key_id", "user_id"] {
            out.push(q(f, "filter"));
        }
    };
    match route.op {
        Op::List(res) | Op::ListAll(res) => {
            paged(&mut out);
            out.push(q(
                "q",
                "search: rows with a text field containing this, case-insensitively",
            ));
            if matches!(route.op, Op::ListAll(_)) {
                out.push(json!({"name": "organisation_id", "in": "query", "required": false,
                    "description": "equality filter", "schema": {"type": "string", "format": "uuid"}}));
            }
            for f in res.filters {
                out.push(q(f, "equality filter"));
            }
        }
        Op::UsageRecords => {
            paged(&mut out);
            period(&mut out);
            for f in ["model", "provider", "endpoint", "outcome", "request_id"] {
                out.push(q(f, "filter"));
            }
        }
        Op::UsageRollups => {
            paged(&mut out);
            period(&mut out);
            for f in ["model", "provider"] {
                out.push(q(f, "filter"));
            }
            out.push(json!({"name": "granularity", "in": "query", "required": false, "schema": {"type": "string", "enum": ["HOUR", "DAY", "MONTH"]}}));
        }
        Op::Invoice => period(&mut out),
        Op::OwnerLimitUsage => {
            out.push(json!({"name": "scope", "in": "query", "required": false,
                "schema": {"type": "string", "enum": ["ORG", "TEAM", "USER", "APIKEY"]}}));
            out.push(json!({"name": "scope_id", "in": "query", "required": false,
                "description": "the owner's id", "schema": {"type": "string", "format": "uuid"}}));
        }
        Op::BudgetTopups => paged(&mut out),
        _ => {}
    }
    out
}

fn operation(route: &Route) -> Value {
    let mut op = json!({
        "summary": route.summary,
        "description": format!("Access: {}", route.access.describe()),
        "operationId": format!("{}{}", route.method.as_str().to_lowercase(),
            route.path.split('/').filter(|s| !s.is_empty() && *s != "api")
                .map(|s| s.trim_matches(|c| c == '{' || c == '}').replace(['-', '.'], "_"))
                .collect::<Vec<_>>().join("_")),
        "tags": [route.tag],
        "parameters": params(route),
    });
    if route.access != super::resources::Access::Public {
        op["security"] = json!([{"adminToken": []}]);
    }
    let schema_ref = |r: &Resource| json!({"$ref": format!("#/components/schemas/{}", r.schema)});
    let ok = |status: &str, schema: Value| json!({status: {"description": "OK", "content": {"application/json": {"schema": schema}}}});
    let list_of = |s: Value| {
        json!({"type": "object", "properties": {"data": {"type": "array", "items": s},
            "total": {"type": "integer"}, "limit": {"type": "integer"}, "offset": {"type": "integer"}}})
    };
    let mut responses = match route.op {
        Op::List(r) => ok("200", list_of(schema_ref(r))),
        Op::ListAll(r) => ok(
            "200",
            list_of(
                json!({"allOf": [schema_ref(r), {"type": "object", "properties": {
                "organisation_slug": {"type": "string"},
                "organisation_name": {"type": "string"}}}]}),
            ),
        ),
        Op::Get(r) | Op::Update(r) => ok("200", schema_ref(r)),
        Op::Create(r) => ok("201", schema_ref(r)),
        Op::Delete(_) => json!({"204": {"description": "Deleted"}}),
        Op::OrgGet | Op::OrgUpdate => {
            ok("200", json!({"$ref": "#/components/schemas/Organisation"}))
        }
        Op::UsageRecords | Op::UsageRollups | Op::Invoice => {
            json!({"200": {"description": "OK (CSV with format=csv)",
            "content": {"application/json": {"schema": {"type": "object"}}, "text/csv": {"schema": {"type": "string"}}}}})
        }
        Op::LimitUsage(_) => ok("200", json!({"$ref": "#/components/schemas/MeterWindow"})),
        Op::OwnerLimitUsage => ok(
            "200",
            json!({"type": "object", "properties": {
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/MeterWindow"}},
                "total": {"type": "integer"}}}),
        ),
        Op::BudgetTopup => ok("201", json!({"$ref": "#/components/schemas/BudgetTopup"})),
        Op::BudgetTopups => ok(
            "200",
            list_of(json!({"$ref": "#/components/schemas/BudgetTopup"})),
        ),
        _ => ok("200", json!({"type": "object"})),
    };
    if let Some(m) = responses.as_object_mut() {
        if route.access != super::resources::Access::Public {
            m.insert(
                "400".into(),
                error_response("Invalid request (names the field)"),
            );
            m.insert(
                "401".into(),
                error_response("Missing or unknown admin token"),
            );
            m.insert(
                "403".into(),
                error_response("The caller's role may not do this"),
            );
            m.insert(
                "404".into(),
                error_response("Not found, or not visible to the caller"),
            );
        }
    }
    op["responses"] = responses;
    let body = match route.op {
        Op::Create(r) => Some(json!({"$ref": format!("#/components/schemas/{}Create", r.schema)})),
        Op::Update(r) => Some(json!({"$ref": format!("#/components/schemas/{}Update", r.schema)})),
        Op::OrgUpdate => Some(json!({"$ref": "#/components/schemas/OrganisationUpdate"})),
        Op::PasswordPut(_) => Some(json!({"type": "object", "required": ["password"],
            "properties": {"password": {"type": "string", "minLength": super::auth::MIN_PASSWORD_CHARS}}})),
        Op::InvitationAccept => Some(json!({"type": "object", "required": ["password"],
            "properties": {"name": {"type": "string"},
                "password": {"type": "string", "minLength": super::auth::MIN_PASSWORD_CHARS}}})),
        Op::BudgetTopup => Some(json!({"type": "object", "required": ["amount_nanos"],
            "additionalProperties": false,
            "properties": {"amount_nanos": {"type": "integer", "minimum": 1,
                    "description": "credit in nanos-USD (1 USD = 10^9)"},
                "note": {"type": "string", "maxLength": 1000}}})),
        Op::GrantsPut(g) => Some(json!({"type": "object", "required": [g.field()],
            "properties": {g.field(): {"type": "array", "items": {"type": "string", "format": "uuid"}}}})),
        _ => None,
    };
    if let Some(schema) = body {
        op["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    op
}

fn build() -> Value {
    let mut paths = Map::new();
    for route in routes() {
        let entry = paths.entry(route.path.clone()).or_insert_with(|| json!({}));
        entry[route.method.as_str().to_lowercase()] = operation(route);
    }
    let mut schemas = Map::new();
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "properties": {"error": {"type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                "type": {"type": "string"}, "field": {"type": "string"}}}}}),
    );
    schemas.insert("MeterWindow".into(), meter_window_schema());
    schemas.insert(
        "BudgetTopup".into(),
        json!({"type": "object", "properties": {
            "id": {"type": "string", "format": "uuid"},
            "budget_id": {"type": "string", "format": "uuid"},
            "amount_nanos": {"type": "integer"},
            "credited_after_nanos": {"type": "integer", "description": "the budget's amount_nanos (total credited) after this top-up"},
            "note": {"type": "string"},
            "created_by": {"type": ["string", "null"], "format": "uuid"},
            "created_at": {"type": "string", "format": "date-time"},
            "balance": {"type": "object", "description": "in the POST answer only",
                "properties": {"credited_nanos": {"type": "integer"}, "used_nanos": {"type": "integer"},
                    "reserved_nanos": {"type": "integer"}, "remaining_nanos": {"type": "integer"}}}}}),
    );
    for res in ALL {
        schemas.insert(res.schema.to_string(), schema_of(res, None));
        schemas.insert(format!("{}Create", res.schema), schema_of(res, Some(true)));
        schemas.insert(format!("{}Update", res.schema), schema_of(res, Some(false)));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Wharf admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": RBAC,
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer",
                "description": "An admin token (wharf_adm_…), from `wharf admin bootstrap` or POST /api/admin/users/{userId}/tokens."}},
        },
    })
}

/// A budget or quota with its current window (`…/usage`, `/usage/limits`).
fn meter_window_schema() -> Value {
    let int = |d: &str| json!({"type": "integer", "description": d});
    json!({"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "kind": {"type": "string", "enum": ["budget", "quota"]},
        "name": {"type": "string"},
        "scope": {"type": "string", "enum": ["ORG", "TEAM", "USER", "APIKEY"]},
        "scope_id": {"type": "string", "format": "uuid"},
        "metric": {"type": "string", "description": "COST for budgets"},
        "period": {"type": ["string", "null"], "description": "null: a prepaid balance"},
        "balance": {"type": "boolean"},
        "timezone": {"type": "string"},
        "enabled": {"type": "boolean"},
        "active": {"type": "boolean", "description": "enabled and within starts_at/ends_at"},
        "window": {"type": "object", "properties": {
            "start": {"type": "string", "format": "date-time"},
            "end": {"type": ["string", "null"], "format": "date-time"}}},
        "limit": int("the window's limit (amount, limit_value or credited balance, plus rollover), in the metric's unit (nanos-USD for budgets)"),
        "rollover": int("carried in from the previous window"),
        "used": int("settled in the window"),
        "reserved": int("held by requests in flight"),
        "remaining": int("limit - used - reserved, at least 0"),
        "warned_thresholds": {"type": "array", "items": {"type": "integer"}},
        "reservations_in_flight": int("reservations not yet settled or released"),
        "reservations": {"type": "array", "description": "the oldest 100 in flight", "items": {"type": "object", "properties": {
            "request_id": {"type": "string"}, "amount": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": "string", "format": "date-time"}}}},
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_with_its_parameters() {
        let doc = document();
        for r in routes() {
            let op = &doc["paths"][&r.path][r.method.as_str().to_lowercase()];
            assert!(op.is_object(), "{} {} missing", r.method, r.path);
            let n = r.path.matches('{').count();
            let path_params = op["parameters"]
                .as_array()
                .map(|a| a.iter().filter(|p| p["in"] == "path").count())
                .unwrap_or(0);
            assert_eq!(path_params, n, "{}", r.path);
        }
        let ops: usize = doc["paths"]
            .as_object()
            .map(|p| {
                p.values()
                    .map(|v| v.as_object().map_or(0, |o| o.len()))
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(ops, routes().len(), "no operation without a route");
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
