//! The resource and column table types: what a resource of the admin API is made of.

use crate::api::Role;
use crate::api::{ApiResult, Ctx};
use serde_json::{json, Map, Value};
use sqlx::PgConnection;
use std::future::Future;
use std::pin::Pin;
use uuid::Uuid;

/// Type of a writable column (checked before any SQL runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// Any string.
    Text,
    /// A string that is not blank.
    Name,
    /// `^[a-z0-9][a-z0-9_.-]*$`.
    Slug,
    /// Contains `@` after the first character.
    Email,
    /// `http://` or `https://`.
    Url,
    Uuid,
    Enum(&'static [&'static str]),
    Bool,
    /// A positive 32-bit integer.
    PosInt,
    /// A non-negative integer amount (nanos-USD, tokens, requests).
    Amount,
    /// A JSON object.
    Object,
    /// An array of strings.
    Strings,
    /// An array of percentages (1–100).
    Percents,
    /// RFC 3339 timestamp.
    Time,
    /// An array of uuids (virtual fields: grants).
    Uuids,
}

impl Ty {
    /// Checks a (non-null) value.
    pub fn check(self, v: &Value) -> Result<(), String> {
        let s = v.as_str();
        match self {
            Ty::Text => s.map(|_| ()).ok_or_else(|| "must be a string".into()),
            Ty::Name => match s {
                Some(s) if !s.trim().is_empty() => Ok(()),
                Some(_) => Err("must not be empty".into()),
                None => Err("must be a string".into()),
            },
            Ty::Slug => match s {
                Some(s)
                    if s.chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                        && s.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c)
                        }) =>
                {
                    Ok(())
                }
                _ => Err("must match ^[a-z0-9][a-z0-9_.-]*$".into()),
            },
            Ty::Email => match s {
                Some(s) if s.find('@').is_some_and(|i| i > 0) && !s.ends_with('@') => Ok(()),
                _ => Err("must be an e-mail address".into()),
            },
            Ty::Url => match s {
                Some(s) if s.starts_with("http://") || s.starts_with("https://") => Ok(()),
                _ => Err("must be an http:// or https:// URL".into()),
            },
            Ty::Uuid => match s.map(Uuid::parse_str) {
                Some(Ok(_)) => Ok(()),
                _ => Err("must be a uuid".into()),
            },
            Ty::Enum(values) => match s {
                Some(s) if values.contains(&s) => Ok(()),
                _ => Err(format!("must be one of {}", values.join(", "))),
            },
            Ty::Bool => v
                .as_bool()
                .map(|_| ())
                .ok_or_else(|| "must be a boolean".into()),
            Ty::PosInt => match v.as_i64() {
                Some(n) if n > 0 && n <= i64::from(i32::MAX) => Ok(()),
                _ => Err("must be a positive integer".into()),
            },
            Ty::Amount => match v.as_i64() {
                Some(n) if n >= 0 => Ok(()),
                _ => Err("must be a non-negative integer".into()),
            },
            Ty::Object => v
                .as_object()
                .map(|_| ())
                .ok_or_else(|| "must be a JSON object".into()),
            Ty::Strings => match v.as_array() {
                Some(a) if a.iter().all(Value::is_string) => Ok(()),
                _ => Err("must be an array of strings".into()),
            },
            Ty::Percents => match v.as_array() {
                Some(a)
                    if a.iter()
                        .all(|x| x.as_i64().is_some_and(|n| (1..=100).contains(&n))) =>
                {
                    Ok(())
                }
                _ => Err("must be an array of integers between 1 and 100".into()),
            },
            Ty::Time => match s.map(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            }) {
                Some(Ok(_)) => Ok(()),
                _ => Err("must be an RFC 3339 timestamp".into()),
            },
            Ty::Uuids => match v.as_array() {
                Some(a)
                    if a.iter()
                        .all(|x| x.as_str().is_some_and(|s| Uuid::parse_str(s).is_ok())) =>
                {
                    Ok(())
                }
                _ => Err("must be an array of uuids".into()),
            },
        }
    }

    /// JSON schema of the type.
    pub fn schema(self) -> Value {
        match self {
            Ty::Text | Ty::Name => json!({"type": "string"}),
            Ty::Slug => json!({"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]*$"}),
            Ty::Email => json!({"type": "string", "format": "email"}),
            Ty::Url => json!({"type": "string", "format": "uri"}),
            Ty::Uuid => json!({"type": "string", "format": "uuid"}),
            Ty::Enum(v) => json!({"type": "string", "enum": v}),
            Ty::Bool => json!({"type": "boolean"}),
            Ty::PosInt => json!({"type": "integer", "minimum": 1}),
            Ty::Amount => json!({"type": "integer", "minimum": 0}),
            Ty::Object => json!({"type": "object"}),
            Ty::Strings => json!({"type": "array", "items": {"type": "string"}}),
            Ty::Percents => {
                json!({"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 100}})
            }
            Ty::Time => json!({"type": "string", "format": "date-time"}),
            Ty::Uuids => json!({"type": "array", "items": {"type": "string", "format": "uuid"}}),
        }
    }
}

/// A writable field of a resource.
#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub name: &'static str,
    pub ty: Ty,
    /// Needed on create.
    pub required: bool,
    /// May be `null`.
    pub nullable: bool,
    /// Writable on create / on update.
    pub create: bool,
    pub update: bool,
    /// Not a column: handled by the resource's own code (e.g. a secret to encrypt).
    pub virtual_field: bool,
}

pub(super) const fn c(name: &'static str, ty: Ty) -> Col {
    Col {
        name,
        ty,
        required: false,
        nullable: false,
        create: true,
        update: true,
        virtual_field: false,
    }
}

impl Col {
    pub(super) const fn req(mut self) -> Col {
        self.required = true;
        self
    }
    pub(super) const fn null(mut self) -> Col {
        self.nullable = true;
        self
    }
    /// Set on create only.
    pub(super) const fn fixed(mut self) -> Col {
        self.update = false;
        self
    }
    /// Changed on update only.
    pub(super) const fn later(mut self) -> Col {
        self.create = false;
        self
    }
    pub(super) const fn virt(mut self) -> Col {
        self.virtual_field = true;
        self
    }
}

/// Who may do something, by role (SUPER_ADMIN always may).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed (the OpenAPI document).
    Public,
    SuperAdmin,
    OrgAdmin,
    /// ORG_ADMIN and MANAGER.
    Manager,
    /// Any user of the organisation.
    Member,
}

impl Access {
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Public => true,
            Access::SuperAdmin => role == Role::SuperAdmin,
            Access::OrgAdmin => role >= Role::OrgAdmin,
            Access::Manager => role >= Role::Manager,
            Access::Member => true,
        }
    }

    /// Human description for the OpenAPI document.
    pub fn describe(self) -> &'static str {
        match self {
            Access::Public => "No authentication.",
            Access::SuperAdmin => "SUPER_ADMIN only.",
            Access::OrgAdmin => "SUPER_ADMIN, or ORG_ADMIN of the organisation.",
            Access::Manager => "SUPER_ADMIN, ORG_ADMIN, or MANAGER of the organisation (MANAGER: only rows of the teams they belong to, and their own).",
            Access::Member => "Any user of the organisation (MANAGER sees the rows of their teams and their own; USER only its own user row, keys and usage).",
        }
    }
}

/// Which rows MANAGER and USER callers see (ORG_ADMIN and SUPER_ADMIN see every row of the
/// organisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    All,
    /// Rows whose team (this column) the caller belongs to.
    Teams(&'static str),
    /// MANAGER: rows of their teams or their own (`team_id`, `user_id`); USER: their own.
    Owner,
    /// MANAGER: all; USER: their own user row.
    SelfUser,
}

/// Resource-specific behaviour beyond the column table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain,
    Users,
    Invitation,
    ApiKey,
    ProviderKey,
    Budget,
    AdminToken,
    /// A row of `filters`: built like a `[[filters]]` entry before it is committed.
    Filter,
}

/// A nested resource's parent (`/teams/{teamId}/members`).
#[derive(Debug, Clone, Copy)]
pub struct Parent {
    pub param: &'static str,
    pub column: &'static str,
    pub resource: &'static Resource,
}

/// One resource of the admin API.
#[derive(Debug)]
pub struct Resource {
    /// Schema and tag name, e.g. `Team`.
    pub schema: &'static str,
    /// Collection path (the item path adds `/{id}`).
    pub path: &'static str,
    pub table: &'static str,
    /// The column scoping rows to the route's organisation (`None`: global rows).
    pub org_column: Option<&'static str>,
    pub parent: Option<Parent>,
    pub columns: &'static [Col],
    /// Never returned (hashes, envelopes, write-only secrets).
    pub hidden: &'static [&'static str],
    /// Columns usable as `?column=value` list filters.
    pub filters: &'static [&'static str],
    pub read: Access,
    pub create: Access,
    pub update: Access,
    pub delete: Access,
    pub rows: Rows,
    /// What the OpenAPI document says of the resource beyond its columns (the secret its
    /// create answer shows once).
    pub kind: Kind,
    /// The resource's own behaviour in the generic CRUD.
    pub hooks: &'static Hooks,
}

/// The future of an asynchronous hook.
pub type HookFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Resource-specific preparation of checked fields before INSERT (`creating`) or UPDATE.
/// Returns fields to add to the answer (a secret shown once).
pub type Prepare = for<'a, 'c> fn(
    &'a Ctx<'c>,
    &'a Resource,
    &'a mut Map<String, Value>,
    bool,
    &'a mut PgConnection,
) -> HookFuture<'a, ApiResult<Map<String, Value>>>;

/// Runs after an UPDATE of the row with this id, inside its transaction.
pub type AfterUpdate =
    for<'a> fn(Uuid, &'a Value, &'a mut PgConnection) -> HookFuture<'a, ApiResult<()>>;

/// Runs after a committed UPDATE or DELETE, with the row written or removed.
pub type AfterChange = for<'a, 'c> fn(&'a Ctx<'c>, &'a Value) -> HookFuture<'a, ()>;

/// Kind-specific behaviour of a resource in the generic list, get, create, update and delete
/// (`None`: nothing beyond the column table).
#[derive(Debug)]
pub struct Hooks {
    /// A condition added to the ` WHERE` of the route's organisation (`" AND …"` over `t`).
    pub org_scope: Option<&'static str>,
    /// Before INSERT and UPDATE.
    pub prepare: Option<Prepare>,
    /// Checks a written row before its transaction commits (the caller rolls back on error).
    pub check_row: Option<fn(&Value) -> ApiResult<()>>,
    /// After UPDATE, before commit.
    pub after_update: Option<AfterUpdate>,
    /// Cache invalidation beyond the NOTIFY triggers, after commit.
    pub after_change: Option<AfterChange>,
}

impl Hooks {
    /// No behaviour beyond the column table.
    pub const NONE: Hooks = Hooks {
        org_scope: None,
        prepare: None,
        check_row: None,
        after_update: None,
        after_change: None,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_check_values() {
        assert!(Ty::Slug.check(&json!("ab-1")).is_ok());
        assert!(Ty::Slug.check(&json!("Ab")).is_err());
        assert!(Ty::Time.check(&json!("2026-01-01T00:00:00Z")).is_ok());
        assert!(Ty::Time.check(&json!("yesterday")).is_err());
        assert!(Ty::Amount.check(&json!(-1)).is_err());
        assert!(Ty::Percents.check(&json!([101])).is_err());
        assert!(Ty::Email.check(&json!("a@b")).is_ok());
        assert!(Ty::Email.check(&json!("@b")).is_err());
    }
}
