//! HTML: the page layout, sign-in and invitation pages, error pages, value formatting and the
//! form fields generated from the admin API's column table. Compiled-in assets.

use super::{Cx, Resp};
use crate::api::auth::Invitation;
use crate::api::resources::{Col, Ty};
use crate::api::Role;
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

fn asset(content_type: &'static str, body: &str) -> Resp {
    Resp {
        status: 200,
        content_type,
        headers: vec![("cache-control", "public, max-age=300".into())],
        body: body.as_bytes().to_vec(),
    }
}

pub fn asset_css() -> Resp {
    asset("text/css; charset=utf-8", CSS)
}

pub fn asset_js() -> Resp {
    asset("text/javascript; charset=utf-8", JS)
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A section of the console.
pub struct Section {
    pub slug: &'static str,
    pub title: &'static str,
    pub platform: bool,
    pub org: bool,
    /// Weakest role that may open it in an organisation (the API decides in the end).
    pub min_role: Role,
}

const fn s(
    slug: &'static str,
    title: &'static str,
    platform: bool,
    org: bool,
    min_role: Role,
) -> Section {
    Section {
        slug,
        title,
        platform,
        org,
        min_role,
    }
}

pub const SECTIONS: &[Section] = &[
    s("dashboard", "Dashboard", true, true, Role::User),
    s(
        "organisations",
        "Organisations",
        true,
        false,
        Role::SuperAdmin,
    ),
    s("teams", "Teams", true, true, Role::Manager),
    s("users", "Users", true, true, Role::User),
    s("providers", "Providers", true, true, Role::Manager),
    s("models", "Models", true, true, Role::Manager),
    s("mcp-servers", "MCP servers", true, true, Role::Manager),
    s("apikeys", "API keys", true, true, Role::User),
    s("budgets", "Budgets", true, true, Role::Manager),
    s("quotas", "Quotas", true, true, Role::Manager),
    s("usage", "Usage", true, true, Role::User),
    s("invoices", "Invoices", true, true, Role::Manager),
    s("playground", "Playground", true, true, Role::User),
    s("docs", "API docs", false, true, Role::User),
    s("settings", "Settings", true, true, Role::User),
];

/// Where a page is: the platform (`/admin`) or an organisation.
#[derive(Debug, Clone)]
pub struct Scope {
    /// `admin` or the organisation's slug.
    pub slug: String,
    pub name: String,
    /// The organisation (`None` on platform pages).
    pub org: Option<uuid::Uuid>,
}

impl Scope {
    pub fn platform() -> Scope {
        Scope {
            slug: "admin".into(),
            name: "Platform".into(),
            org: None,
        }
    }

    pub fn href(&self, rest: &str) -> String {
        format!("/{}/{rest}", self.slug)
    }
}

/// The full page: header, navigation, main content.
pub fn layout(cx: &Cx<'_>, scope: &Scope, section: &str, title: &str, body: Markup) -> Markup {
    let role = cx.caller().role;
    let platform = scope.org.is_none();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (scope.name) " · Wharf" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/console/static/app.css";
                script src="/console/static/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href=(cx.session.home()) { "Wharf" }
                    span.scope { (scope.name) }
                    @if role == Role::SuperAdmin && !platform {
                        a href="/admin/dashboard" { "Platform" }
                    }
                    span.spacer {}
                    span.who { (cx.caller().email) " · " (role.as_str()) }
                    form.inline method="post" action="/logout" {
                        input type="hidden" name="_csrf" value=(cx.session.csrf);
                        button.link type="submit" { "Sign out" }
                    }
                }
                div.shell {
                    nav.side aria-label="Sections" {
                        ul {
                            @for sec in SECTIONS.iter().filter(|x| if platform { x.platform } else { x.org && role >= x.min_role }) {
                                li {
                                    a href=(scope.href(sec.slug)) aria-current=[(sec.slug == section).then_some("page")] { (sec.title) }
                                }
                            }
                        }
                    }
                    main #main tabindex="-1" {
                        h1 { (title) }
                        @if let Some(done) = cx.req.q("done") {
                            p.flash role="status" { (done) }
                        }
                        (body)
                    }
                }
            }
        }
    }
}

/// A page outside the signed-in layout.
fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Wharf" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/console/static/app.css";
                script src="/console/static/app.js" defer {}
            }
            body.bare {
                main #main.card {
                    p.brand { "Wharf" }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An error page (signed in: with a way home and out).
pub fn error_page(cx: Option<&Cx<'_>>, status: u16, message: &str) -> Resp {
    let title = match status {
        400 => "Invalid request",
        401 => "Sign-in required",
        403 => "Forbidden",
        404 => "Not found",
        405 => "Method not allowed",
        409 => "Conflict",
        413 => "Too large",
        503 => "Unavailable",
        _ => "Error",
    };
    Resp::html(
        status,
        bare(
            title,
            html! {
                p.error role="alert" { (message) }
                @if let Some(cx) = cx {
                    p { a href=(cx.session.home()) { "Back to the console" } }
                    form method="post" action="/logout" {
                        input type="hidden" name="_csrf" value=(cx.session.csrf);
                        button type="submit" { "Sign out" }
                    }
                } @else {
                    p { a href="/login" { "Sign in" } }
                }
            },
        ),
    )
}

/// The sign-in page.
pub fn login(csrf: &str, next: Option<&str>, email: &str, error: Option<&str>) -> Markup {
    bare(
        "Sign in",
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/login" {
                input type="hidden" name="_csrf" value=(csrf);
                @if let Some(n) = next { input type="hidden" name="next" value=(n); }
                label for="email" { "E-mail" }
                input #email type="email" name="email" value=(email) required autocomplete="username" autofocus;
                label for="password" { "Password" }
                input #password type="password" name="password" required autocomplete="current-password";
                button.primary type="submit" { "Sign in" }
            }
        },
    )
}

/// The invitation acceptance page.
pub fn invite(inv: &Invitation, csrf: &str, error: Option<&str>) -> Markup {
    bare(
        &format!("Join {}", inv.organisation_name),
        html! {
            p { "You are invited as " strong { (inv.role) } " with the e-mail " strong { (inv.email) } "." }
            p.muted { "This invitation expires " (fmt_time_str(&inv.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default())) "." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" {
                input type="hidden" name="_csrf" value=(csrf);
                label for="name" { "Your name" }
                input #name type="text" name="name" autocomplete="name";
                label for="password" { "Password (at least 8 characters)" }
                input #password type="password" name="password" required minlength="8" autocomplete="new-password";
                label for="confirm" { "Password again" }
                input #confirm type="password" name="confirm" required minlength="8" autocomplete="new-password";
                button.primary type="submit" { "Create my account" }
            }
        },
    )
}

/// The hidden CSRF field of a form.
pub fn csrf(cx: &Cx<'_>) -> Markup {
    html! { input type="hidden" name="_csrf" value=(cx.session.csrf); }
}

/// A POST button form (revoke, delete…), with an optional confirmation question.
pub fn action(cx: &Cx<'_>, href: &str, label: &str, confirm: Option<&str>, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(href) data-confirm=[confirm] {
            (csrf(cx))
            button class=(class) type="submit" { (label) }
        }
    }
}

/// `2026-11-26 05:21 UTC` of an RFC 3339 string (as is when unparsable).
pub fn fmt_time_str(s: &str) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| t.to_offset(time::UtcOffset::UTC).format(&fmt).ok())
        .unwrap_or_else(|| s.to_string())
}

/// `YYYY-MM-DDTHH:MM` (UTC) for a `datetime-local` input.
pub fn datetime_input(s: &str) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| t.to_offset(time::UtcOffset::UTC).format(&fmt).ok())
        .unwrap_or_default()
}

/// USD of nanos-USD, with as many decimals as useful.
pub fn usd(nanos: i64) -> String {
    let v = nanos as f64 / 1e9;
    if nanos == 0 {
        "$0".into()
    } else if v.abs() >= 1.0 {
        format!("${v:.2}")
    } else {
        format!("${v:.6}")
    }
}

/// The unit of a money column (`*_nanos`): what one entered or shown dollar amount counts.
/// Money is nanos-USD inside (1 USD = 10^9); the console reads and writes dollars.
pub fn money_unit(col: &str) -> Option<&'static str> {
    let base = col.strip_suffix("_nanos")?;
    Some(match base {
        "input_price" | "output_price" | "cached_input_price" | "reasoning_price" => {
            "USD per 1M tokens"
        }
        "image_price" => "USD per image",
        "unit_price" | "price_per_call" => "USD per call",
        "price_per_input_byte" | "price_per_output_byte" => "USD per byte",
        _ => "USD",
    })
}

/// The form field of a column: a money column is entered in dollars, under a name that says
/// so (`input_price_usd` for `input_price_nanos`).
pub fn form_name(col: &str) -> String {
    match col.strip_suffix("_nanos") {
        Some(base) => format!("{base}_usd"),
        None => col.to_string(),
    }
}

/// The label of a column with its unit (`Input price (USD per 1M tokens)`).
pub fn label_with_unit(col: &str) -> String {
    match (money_unit(col), col.strip_suffix("_nanos")) {
        (Some(unit), Some(base)) => format!("{} ({unit})", label(base)),
        _ => label(col),
    }
}

/// Nanos-USD as the exact dollar amount of a form field: at least two decimals, trailing
/// zeros dropped (`2.50`, `0.15`, `0.000000042`).
pub fn usd_input(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let frac = format!("{:09}", n % 1_000_000_000);
    let frac = frac.trim_end_matches('0');
    let frac = if frac.len() < 2 {
        format!("{frac:0<2}")
    } else {
        frac.to_string()
    };
    format!("{sign}{}.{frac}", n / 1_000_000_000)
}

/// A dollar amount typed in a form (`2.5`, `$0.15`, `1,000.00`) as nanos-USD, exactly (no
/// floating point): at most nine decimals.
pub fn parse_usd(raw: &str) -> Result<i64, String> {
    let s: String = raw
        .trim()
        .trim_start_matches('$')
        .trim()
        .chars()
        .filter(|c| *c != ',' && *c != '_')
        .collect();
    let (whole, frac) = s.split_once('.').unwrap_or((s.as_str(), ""));
    let digits = |x: &str| x.chars().all(|c| c.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
        return Err("must be a dollar amount such as 2.50".into());
    }
    if frac.len() > 9 {
        return Err("at most nine decimals (1 nano-dollar)".into());
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| "is too large".to_string())?
    };
    let frac: i64 = format!("{frac:0<9}").parse().unwrap_or(0);
    whole
        .checked_mul(1_000_000_000)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(|| "is too large".to_string())
}

/// A readable cell of a JSON value (column name decides money and time formats).
pub fn cell(col: &str, v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) if col.ends_with("_nanos") => usd(n.as_i64().unwrap_or(0)),
        Value::Number(n) if n.is_f64() => format!("{:.1}", n.as_f64().unwrap_or(0.0)),
        Value::Number(n) => n.to_string(),
        Value::String(s) if col.ends_with("_at") || col == "bucket_start" => fmt_time_str(s),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                o => o.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(_) => v.to_string(),
    }
}

/// A human label of a column name.
pub fn label(name: &str) -> String {
    let base = name
        .strip_suffix("_nanos")
        .map(|b| format!("{b} (USD)"))
        .unwrap_or_else(|| name.to_string());
    let mut s = base.replace('_', " ");
    if let Some(f) = s.get_mut(0..1) {
        f.make_ascii_uppercase();
    }
    s.replace(" id", "").replace("Mcp", "MCP")
}

/// Choices of a reference column: `(value, label)` pairs.
pub type Choices = Vec<(String, String)>;

/// The form control of a writable column, with its current value.
pub fn field(
    col: &Col,
    current: Option<&Value>,
    choices: Option<&Choices>,
    prefix: &str,
) -> Markup {
    let id = format!("{prefix}{}", col.name);
    let cur = current.filter(|v| !v.is_null());
    let text = cur
        .map(|v| match (col.ty, v) {
            (Ty::Time, Value::String(s)) => datetime_input(s),
            (Ty::Amount, Value::Number(n)) if money_unit(col.name).is_some() => {
                usd_input(n.as_i64().unwrap_or(0))
            }
            (Ty::Amount | Ty::PosInt, Value::Number(n)) => n.to_string(),
            (Ty::Object, v) => serde_json::to_string_pretty(v).unwrap_or_default(),
            (Ty::Strings | Ty::Percents, Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join(", "),
            (_, Value::String(s)) => s.clone(),
            (_, v) => v.to_string(),
        })
        .unwrap_or_default();
    let required = col.required && current.is_none();
    let hint = match col.ty {
        Ty::Time => Some("UTC"),
        Ty::Object => Some("JSON object"),
        Ty::Strings => Some("comma-separated"),
        Ty::Percents => Some("comma-separated percentages"),
        _ => None,
    };
    let money = col.ty == Ty::Amount && money_unit(col.name).is_some();
    let name = form_name(col.name);
    let id = if money { format!("{prefix}{name}") } else { id };
    html! {
        div.field {
            label for=(id) {
                (label_with_unit(col.name))
                @if required { " " abbr title="required" { "*" } }
                @if let Some(h) = hint { " " span.muted { "(" (h) ")" } }
            }
            @match (col.ty, choices) {
                (_, Some(ch)) => {
                    select id=(id) name=(col.name) required[required] {
                        @if col.nullable || !col.required { option value="" { "—" } }
                        @for (v, l) in ch {
                            option value=(v) selected[*v == text] { (l) }
                        }
                    }
                }
                (Ty::Enum(values), None) => {
                    select id=(id) name=(col.name) required[required] {
                        @if !col.required || col.nullable { option value="" { "—" } }
                        @for v in values.iter() {
                            option value=(v) selected[*v == text] { (v) }
                        }
                    }
                }
                (Ty::Bool, None) => {
                    select id=(id) name=(col.name) {
                        option value="" { "—" }
                        option value="true" selected[text == "true"] { "yes" }
                        option value="false" selected[text == "false"] { "no" }
                    }
                }
                (Ty::Object, None) => {
                    textarea id=(id) name=(col.name) rows="3" spellcheck="false" { (text) }
                }
                (Ty::Time, None) => {
                    input id=(id) type="datetime-local" name=(col.name) value=(text) required[required];
                }
                (Ty::Amount, None) if money => {
                    input id=(id) type="text" inputmode="decimal" name=(name) value=(text) placeholder="0.00" required[required];
                }
                (Ty::Amount | Ty::PosInt, None) => {
                    input id=(id) type="number" min="0" step="1" name=(col.name) value=(text) required[required];
                }
                (Ty::Email, None) => {
                    input id=(id) type="email" name=(col.name) value=(text) required[required];
                }
                (Ty::Url, None) => {
                    input id=(id) type="url" name=(col.name) value=(text) required[required];
                }
                _ => {
                    input id=(id) type="text" name=(col.name) value=(text) required[required];
                }
            }
        }
    }
}

/// Turns a submitted form field into the API's JSON value for the column: `Ok(None)` leaves
/// it out (empty and not clearable), `Err` names the problem.
pub fn form_value(col: &Col, raw: &str, updating: bool) -> Result<Option<Value>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(if updating && col.nullable {
            Some(Value::Null)
        } else {
            None
        });
    }
    let v = match col.ty {
        Ty::Bool => Value::Bool(raw == "true"),
        Ty::Amount if money_unit(col.name).is_some() => {
            Value::from(parse_usd(raw).map_err(|e| format!("{}: {e}", label_with_unit(col.name)))?)
        }
        Ty::Amount | Ty::PosInt => Value::from(
            raw.parse::<i64>()
                .map_err(|_| format!("{}: must be an integer", col.name))?,
        ),
        Ty::Object => serde_json::from_str::<Value>(raw)
            .map_err(|e| format!("{}: invalid JSON: {e}", col.name))?,
        Ty::Strings => Value::from(
            raw.split([',', '\n'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>(),
        ),
        Ty::Percents => {
            let mut out = Vec::new();
            for p in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                out.push(Value::from(p.parse::<i64>().map_err(|_| {
                    format!("{}: must be comma-separated integers", col.name)
                })?));
            }
            Value::from(out)
        }
        Ty::Time => {
            let t = if raw.len() == 16 {
                format!("{raw}:00Z")
            } else if raw.len() == 19 {
                format!("{raw}Z")
            } else {
                raw.to_string()
            };
            Value::from(t)
        }
        _ => Value::from(raw),
    };
    Ok(Some(v))
}

/// A table of rows: `(column, header)` pairs, and a link column.
pub fn table(
    rows: &[Value],
    cols: &[(&str, &str)],
    link: Option<&dyn Fn(&Value) -> String>,
    names: &dyn Fn(&str, &Value) -> Option<String>,
) -> Markup {
    table_with(rows, None, cols, link, names)
}

/// A first column drawn from the whole row as markup (a header and the cell of a row).
pub type Lead<'a> = (&'a str, &'a dyn Fn(&Value) -> Markup);

/// [`table`] with an optional leading column (the organisation of platform lists).
pub fn table_with(
    rows: &[Value],
    lead: Option<Lead<'_>>,
    cols: &[(&str, &str)],
    link: Option<&dyn Fn(&Value) -> String>,
    names: &dyn Fn(&str, &Value) -> Option<String>,
) -> Markup {
    let width = cols.len() + 1 + usize::from(lead.is_some());
    html! {
        div.tablewrap {
            table {
                thead { tr {
                    @if let Some((h, _)) = lead { th scope="col" { (h) } }
                    @for (_, h) in cols { th scope="col" { (h) } }
                    @if link.is_some() { th scope="col" { span.sr { "Actions" } } }
                } }
                tbody {
                    @if rows.is_empty() {
                        tr { td.muted colspan=(width) { "Nothing here yet." } }
                    }
                    @for r in rows {
                        tr {
                            @if let Some((_, cell_of)) = lead { td { (cell_of(r)) } }
                            @for (c, _) in cols {
                                td { (names(c, &r[*c]).unwrap_or_else(|| cell(c, &r[*c]))) }
                            }
                            @if let Some(l) = link {
                                td { a href=(l(r)) { "Open" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Previous/next links of a paged list.
pub fn pager(base: &str, offset: i64, limit: i64, total: i64) -> Markup {
    let sep = if base.contains('?') { '&' } else { '?' };
    html! {
        nav.pager aria-label="Pages" {
            @if offset > 0 {
                a href=(format!("{base}{sep}offset={}", (offset - limit).max(0))) rel="prev" { "← Previous" }
            }
            span.muted { (if total == 0 { 0 } else { offset + 1 }) "–" ((offset + limit).min(total)) " of " (total) }
            @if offset + limit < total {
                a href=(format!("{base}{sep}offset={}", offset + limit)) rel="next" { "Next →" }
            }
        }
    }
}

/// A secret shown once, with a copy button.
pub fn secret_once(label_text: &str, secret: &str) -> Markup {
    html! {
        div.secret role="alert" {
            p { strong { (label_text) } " It is shown only this once: copy it now." }
            div.copyrow {
                input #secret type="text" readonly value=(secret) aria-label=(label_text);
                button.primary type="button" data-copy="#secret" { "Copy" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::{API_KEYS, BUDGETS, MODELS, PROVIDERS};
    use serde_json::json;

    fn col(res: &crate::api::resources::Resource, name: &str) -> Col {
        *res.columns.iter().find(|c| c.name == name).expect("column")
    }

    #[test]
    fn form_values_become_api_json() {
        let v = |c: Col, raw: &str, upd: bool| form_value(&c, raw, upd);
        assert_eq!(
            v(col(&PROVIDERS, "enabled"), "false", false),
            Ok(Some(json!(false)))
        );
        assert_eq!(
            v(col(&PROVIDERS, "timeout_ms"), " 2500 ", false),
            Ok(Some(json!(2500)))
        );
        assert!(v(col(&PROVIDERS, "timeout_ms"), "soon", false)
            .expect_err("not a number")
            .starts_with("timeout_ms:"));
        assert_eq!(
            v(col(&PROVIDERS, "extra_headers"), r#"{"a": "b"}"#, false),
            Ok(Some(json!({"a": "b"})))
        );
        assert!(v(col(&PROVIDERS, "extra_headers"), "{", false).is_err());
        assert_eq!(
            v(col(&BUDGETS, "warning_thresholds"), "50, 80", false),
            Ok(Some(json!([50, 80])))
        );
        assert_eq!(
            v(col(&API_KEYS, "expires_at"), "2027-01-02T03:04", true),
            Ok(Some(json!("2027-01-02T03:04:00Z")))
        );
        // Empty: left out on create; cleared on update when the column may be null.
        assert_eq!(v(col(&API_KEYS, "expires_at"), "", false), Ok(None));
        assert_eq!(
            v(col(&API_KEYS, "expires_at"), "", true),
            Ok(Some(Value::Null))
        );
        assert_eq!(v(col(&MODELS, "name"), "", true), Ok(None));
    }

    #[test]
    fn money_is_entered_and_shown_in_dollars() {
        for (raw, nanos) in [
            ("2.50", 2_500_000_000),
            ("$0.15", 150_000_000),
            ("1,000", 1_000_000_000_000),
            (".5", 500_000_000),
            ("0.000000042", 42),
            ("3", 3_000_000_000),
        ] {
            assert_eq!(parse_usd(raw), Ok(nanos), "{raw}");
        }
        for bad in [
            "",
            "abc",
            "1.2.3",
            "0.0000000001",
            "-1",
            "99999999999999999999",
        ] {
            assert!(parse_usd(bad).is_err(), "{bad}");
        }
        assert_eq!(usd_input(2_500_000_000), "2.50");
        assert_eq!(usd_input(150_000_000), "0.15");
        assert_eq!(usd_input(42), "0.000000042");
        assert_eq!(usd_input(0), "0.00");
        // A price round-trips exactly through its form field.
        for n in [
            1,
            42,
            150_000_000,
            2_500_000_000,
            15_000_000_000,
            123_456_789_012,
        ] {
            assert_eq!(parse_usd(&usd_input(n)), Ok(n));
        }
        assert_eq!(money_unit("input_price_nanos"), Some("USD per 1M tokens"));
        assert_eq!(money_unit("image_price_nanos"), Some("USD per image"));
        assert_eq!(money_unit("amount_nanos"), Some("USD"));
        assert_eq!(money_unit("timeout_ms"), None);
        assert_eq!(form_name("input_price_nanos"), "input_price_usd");
        assert_eq!(
            label_with_unit("output_price_nanos"),
            "Output price (USD per 1M tokens)"
        );
        // The form value of a money column is nanos.
        assert_eq!(
            form_value(&col(&MODELS, "input_price_nanos"), "$2.50", false),
            Ok(Some(json!(2_500_000_000i64)))
        );
        assert!(form_value(
            &col(&MODELS, "input_price_nanos"),
            "2500000000 nanos",
            false
        )
        .is_err());
    }

    #[test]
    fn values_read_well() {
        assert_eq!(usd(0), "$0");
        assert_eq!(usd(38_000), "$0.000038");
        assert_eq!(usd(12_345_000_000), "$12.35");
        assert_eq!(cell("cost_nanos", &json!(1_500_000_000)), "$1.50");
        assert_eq!(
            cell("created_at", &json!("2026-11-26T05:21:09.5+01:00")),
            "2026-11-26 04:21 UTC"
        );
        assert_eq!(datetime_input("2026-11-26T05:21:09Z"), "2026-11-26T05:21");
        assert_eq!(cell("enabled", &json!(true)), "yes");
        assert_eq!(url_encode("/a b?c=d&e"), "/a%20b%3Fc%3Dd%26e");
        assert_eq!(label("input_price_nanos"), "Input price (USD)");
        assert_eq!(label("provider_id"), "Provider");
    }
}
