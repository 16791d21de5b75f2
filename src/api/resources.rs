//! The resources of the admin API as data (table, columns, rules), and the generic list, get,
//! create, update and delete over them. Columns drive validation, the SQL and the OpenAPI
//! schemas alike.

use super::sql::{ident, Sql};
use super::{json_reply, ApiError, ApiResult, Ctx, Role};
use crate::respond::Reply;
use serde_json::{json, Map, Value};
use sqlx::PgConnection;
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

const fn c(name: &'static str, ty: Ty) -> Col {
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
    const fn req(mut self) -> Col {
        self.required = true;
        self
    }
    const fn null(mut self) -> Col {
        self.nullable = true;
        self
    }
    /// Set on create only.
    const fn fixed(mut self) -> Col {
        self.update = false;
        self
    }
    /// Changed on update only.
    const fn later(mut self) -> Col {
        self.create = false;
        self
    }
    const fn virt(mut self) -> Col {
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
    pub kind: Kind,
}

const ORG: Option<&str> = Some("organisation_id");

const USER_ROLES: &[&str] = &["ORG_ADMIN", "MANAGER", "USER"];
const ALL_ROLES: &[&str] = &["SUPER_ADMIN", "ORG_ADMIN", "MANAGER", "USER"];
const USER_STATUS: &[&str] = &["ACTIVE", "INVITED", "SUSPENDED", "DISABLED"];
const TEAM_ROLES: &[&str] = &["ADMIN", "MANAGER", "MEMBER"];
const KEY_TYPES: &[&str] = &["ORGANISATION", "TEAM", "USER"];
const PROVIDER_TYPES: &[&str] = &[
    "OPENAI",
    "ANTHROPIC",
    "GOOGLE",
    "AZURE_OPENAI",
    "VLLM",
    "CUSTOM",
];
const MODEL_TYPES: &[&str] = &[
    "chat",
    "reasoning",
    "image",
    "embeddings",
    "audio",
    "moderation",
    "transcription",
    "tts",
];
const TRANSPORTS: &[&str] = &["STREAMABLE_HTTP", "SSE", "STDIO"];
const FILTER_KINDS: &[&str] = &[
    "lua",
    "audit_log",
    "request_transform",
    "pii_mask",
    "safetysec",
];
const ON_ERROR: &[&str] = &["open", "closed"];
const MCP_AUTH: &[&str] = &["NONE", "BEARER", "BASIC", "OAUTH2"];
const SCOPES: &[&str] = &["ORG", "TEAM", "USER", "APIKEY"];
const PERIODS: &[&str] = &["DAILY", "WEEKLY", "MONTHLY", "QUARTERLY"];
const METRICS: &[&str] = &[
    "REQUESTS",
    "TOKENS",
    "TOKENS_IN",
    "TOKENS_OUT",
    "ERRORS",
    "COST",
    "LATENCY_MS",
];

/// Organisation slugs that name paths of the admin listener (the admin console serves
/// organisation pages at `/{slug}/…`).
pub const RESERVED_SLUGS: &[&str] = &[
    "admin",
    "api",
    "v1",
    "v1beta",
    "metrics",
    "health",
    "healthz",
    "login",
    "logout",
    "invite",
    "console",
    "favicon.ico",
];

pub static ORGANISATIONS: Resource = Resource {
    schema: "Organisation",
    path: "/api/admin/organisations",
    table: "organisations",
    org_column: None,
    parent: None,
    columns: &[
        c("name", Ty::Name).req(),
        c("slug", Ty::Slug).req(),
        c("enabled", Ty::Bool),
        c("routing_policy", Ty::Object),
        c("policies", Ty::Object),
        c("settings", Ty::Object),
    ],
    hidden: &[],
    filters: &["slug", "enabled", "name"],
    read: Access::SuperAdmin,
    create: Access::SuperAdmin,
    update: Access::SuperAdmin,
    delete: Access::SuperAdmin,
    rows: Rows::All,
    kind: Kind::Plain,
};

pub static ADMIN_USERS: Resource = Resource {
    schema: "AdminUser",
    path: "/api/admin/users",
    table: "users",
    org_column: None,
    parent: None,
    columns: &[
        c("email", Ty::Email).req(),
        c("name", Ty::Text).null(),
        c("organisation_id", Ty::Uuid).null(),
        c("role", Ty::Enum(ALL_ROLES)),
        c("status", Ty::Enum(USER_STATUS)),
    ],
    hidden: &["password_hash"],
    filters: &["organisation_id", "role", "status", "email"],
    read: Access::SuperAdmin,
    create: Access::SuperAdmin,
    update: Access::SuperAdmin,
    delete: Access::SuperAdmin,
    rows: Rows::All,
    kind: Kind::Users,
};

pub static ADMIN_TOKENS: Resource = Resource {
    schema: "AdminToken",
    path: "/api/admin/users/{userId}/tokens",
    table: "admin_tokens",
    org_column: None,
    parent: Some(Parent {
        param: "userId",
        column: "user_id",
        resource: &ADMIN_USERS,
    }),
    columns: &[
        c("name", Ty::Name),
        c("expires_at", Ty::Time).null(),
        c("revoked_at", Ty::Time).null().later(),
    ],
    hidden: &["token_hash"],
    filters: &[],
    read: Access::SuperAdmin,
    create: Access::SuperAdmin,
    update: Access::SuperAdmin,
    delete: Access::SuperAdmin,
    rows: Rows::All,
    kind: Kind::AdminToken,
};

pub static USERS: Resource = Resource {
    schema: "User",
    path: "/api/organisations/{organisationId}/users",
    table: "users",
    org_column: ORG,
    parent: None,
    columns: &[
        c("email", Ty::Email).req(),
        c("name", Ty::Text).null(),
        c("role", Ty::Enum(USER_ROLES)),
        c("status", Ty::Enum(USER_STATUS)),
    ],
    hidden: &["password_hash"],
    filters: &["role", "status", "email"],
    read: Access::Member,
    create: Access::OrgAdmin,
    update: Access::OrgAdmin,
    delete: Access::OrgAdmin,
    rows: Rows::SelfUser,
    kind: Kind::Users,
};

pub static ORG_USER_TOKENS: Resource = Resource {
    schema: "UserToken",
    path: "/api/organisations/{organisationId}/users/{userId}/tokens",
    table: "admin_tokens",
    org_column: None,
    parent: Some(Parent {
        param: "userId",
        column: "user_id",
        resource: &USERS,
    }),
    columns: ADMIN_TOKENS.columns,
    hidden: &["token_hash"],
    filters: &[],
    read: Access::OrgAdmin,
    create: Access::OrgAdmin,
    update: Access::OrgAdmin,
    delete: Access::OrgAdmin,
    rows: Rows::All,
    kind: Kind::AdminToken,
};

pub static TEAMS: Resource = Resource {
    schema: "Team",
    path: "/api/organisations/{organisationId}/teams",
    table: "teams",
    org_column: ORG,
    parent: None,
    columns: &[
        c("name", Ty::Name).req(),
        c("description", Ty::Text).null(),
        c("policies", Ty::Object),
    ],
    hidden: &[],
    filters: &["name"],
    // USER reads only its own keys and usage.
    read: Access::Manager,
    create: Access::OrgAdmin,
    update: Access::Manager,
    delete: Access::OrgAdmin,
    rows: Rows::Teams("id"),
    kind: Kind::Plain,
};

pub static TEAM_MEMBERS: Resource = Resource {
    schema: "TeamMember",
    path: "/api/organisations/{organisationId}/teams/{teamId}/members",
    table: "team_members",
    org_column: ORG,
    parent: Some(Parent {
        param: "teamId",
        column: "team_id",
        resource: &TEAMS,
    }),
    columns: &[
        c("user_id", Ty::Uuid).req().fixed(),
        c("team_role", Ty::Enum(TEAM_ROLES)),
    ],
    hidden: &[],
    filters: &["user_id", "team_role"],
    read: Access::Manager,
    create: Access::Manager,
    update: Access::Manager,
    delete: Access::Manager,
    rows: Rows::Teams("team_id"),
    kind: Kind::Plain,
};

pub static INVITATIONS: Resource = Resource {
    schema: "Invitation",
    path: "/api/organisations/{organisationId}/invitations",
    table: "organisation_invitations",
    org_column: ORG,
    parent: None,
    columns: &[
        c("email", Ty::Email).req().fixed(),
        c("role", Ty::Enum(USER_ROLES)),
        c("team_id", Ty::Uuid).null(),
        c("team_role", Ty::Enum(TEAM_ROLES)).null(),
        c("expires_at", Ty::Time),
        c("revoked_at", Ty::Time).null().later(),
    ],
    hidden: &["token_hash"],
    filters: &["email", "role", "team_id"],
    read: Access::OrgAdmin,
    create: Access::OrgAdmin,
    update: Access::OrgAdmin,
    delete: Access::OrgAdmin,
    rows: Rows::All,
    kind: Kind::Invitation,
};

pub static API_KEYS: Resource = Resource {
    schema: "ApiKey",
    path: "/api/organisations/{organisationId}/api-keys",
    table: "api_keys",
    org_column: ORG,
    parent: None,
    columns: &[
        c("name", Ty::Name).req(),
        c("key_type", Ty::Enum(KEY_TYPES)).req().fixed(),
        c("team_id", Ty::Uuid).null().fixed(),
        c("user_id", Ty::Uuid).null().fixed(),
        c("expires_at", Ty::Time).null(),
        c("routing_policy", Ty::Object),
        c("policies", Ty::Object),
        c("metadata", Ty::Object),
        c("models", Ty::Uuids).virt().fixed(),
        c("mcp_servers", Ty::Uuids).virt().fixed(),
    ],
    hidden: &["key_hash"],
    filters: &["key_type", "team_id", "user_id", "name", "key_prefix"],
    read: Access::Member,
    create: Access::Manager,
    update: Access::Manager,
    delete: Access::Manager,
    rows: Rows::Owner,
    kind: Kind::ApiKey,
};

pub static PROVIDERS: Resource = Resource {
    schema: "Provider",
    path: "/api/organisations/{organisationId}/providers",
    table: "providers",
    org_column: ORG,
    parent: None,
    columns: &[
        c("name", Ty::Name).req(),
        c("provider_type", Ty::Enum(PROVIDER_TYPES)).req(),
        c("base_url", Ty::Url).req(),
        c("timeout_ms", Ty::PosInt),
        c("enabled", Ty::Bool),
        c("extra_headers", Ty::Object),
        c("options", Ty::Object),
    ],
    hidden: &[],
    filters: &["provider_type", "enabled", "name"],
    // USER reads only its own keys and usage.
    read: Access::Manager,
    create: Access::OrgAdmin,
    update: Access::OrgAdmin,
    delete: Access::OrgAdmin,
    rows: Rows::All,
    kind: Kind::Plain,
};

pub static PROVIDER_KEYS: Resource = Resource {
    schema: "ProviderKey",
    path: "/api/organisations/{organisationId}/providers/{providerId}/keys",
    table: "provider_api_keys",
    org_column: ORG,
    parent: Some(Parent {
        param: "providerId",
        column: "provider_id",
        resource: &PROVIDERS,
    }),
    columns: &[
        c("name", Ty::Name),
        c("secret", Ty::Name).req().virt(),
        c("status", Ty::Enum(&["ACTIVE", "REVOKED"])).later(),
    ],
    hidden: &["envelope"],
    filters: &["status", "name"],
    read: Access::OrgAdmin,
    create: Access::OrgAdmin,
    update: Access::OrgAdmin,
    delete: Access::OrgAdmin,
    rows: Rows::All,
    kind: Kind::ProviderKey,
};

pub static MODELS: Resource = Resource {
    schema: "Model",
    path: "/api/organisations/{organisationId}/models",
    table: "models",
    org_column: ORG,
    parent: None,
    columns: &[
        c("name", Ty::Name).req(),
        c("slug", Ty::Name).req(),
        c("model_type", Ty::Enum(MODEL_TYPES)),
        c("description", Ty::Text).null(),
        c("provider_id", Ty::Uuid).req(),
        c("provider_api_key_id", Ty::Uuid).null(),
        c("capabilities", Ty::Object),
        c("input_price_nanos", Ty::Amount),
        c("output_price_nanos", Ty::Amount),
        c("cached_input_price_nanos", Ty::Amount).null(),
        c("reasoning_price_nanos", Ty::Amount).null(),
        c("image_price_nanos", Ty::Amount),
        c("unit_price_nanos", Ty::Amount),
        c("policies", Ty::Object),
        c("enabled", Ty::Bool),
    ],
    hidden: &[],
    filters: &["provider_id", "model_type", "enabled", "name", "slug"],
    // USER reads only its own keys and usage.
    read: Access::Manager,
    create: Access::OrgAdmin,
    update: Access::OrgAdmin,
    delete: Access::OrgAdmin,
    rows: Rows::All,
    kind: Kind::Plain,
};

/// Extra deployments of a model (SPEC §5): the model's own provider and slug come first.
pub static MODEL_DEPLOYMENTS: Resource = Resource {
    schema: "ModelDeployment",
    path: "/api/organisations/{organisationId}/models/{modelId}/deployments",
    table: "model_deployments",
    org_column: ORG,
    parent: Some(Parent {
        param: "modelId",
        column: "model_id",
        resource: &MODELS,
    }),
    columns: &[
        c("provider_id", Ty::Uuid).req(),
        c("provider_api_key_id", Ty::Uuid).null(),
        c("slug", Ty::Name).req(),
        c("weight", Ty::Amount),
        c("priority", Ty::Amount),
        c("enabled", Ty::Bool),
    ],
    hidden: &[],
    filters: &["provider_id", "enabled"],
    // USER reads only its own keys and usage.
    read: Access::Manager,
    create: Access::OrgAdmin,
    update: Access::OrgAdmin,
    delete: Access::OrgAdmin,
    rows: Rows::All,
    kind: Kind::Plain,
};

/// Filter chains of an organisation (SPEC §9), beside the file's `[[filters]]`.
pub static FILTERS: Resource = Resource {
    schema: "Filter",
    path: "/api/organisations/{organisationId}/filters",
    table: "filters",
    org_column: ORG,
    parent: None,
    columns: &[
        c("name", Ty::Name).req(),
        c("kind", Ty::Enum(FILTER_KINDS)).req(),
        c("script", Ty::Text).null(),
        c("position", Ty::Amount),
        c("on_error", Ty::Enum(ON_ERROR)),
        c("read_only", Ty::Bool),
        c("enabled", Ty::Bool),
        c("phases", Ty::Strings).null(),
        c("scope_keys", Ty::Strings),
        c("scope_models", Ty::Strings),
        c("settings", Ty::Object),
    ],
    hidden: &[],
    filters: &["kind", "enabled", "name"],
    // USER reads only its own keys and usage.
    read: Access::Manager,
    create: Access::OrgAdmin,
    update: Access::OrgAdmin,
    delete: Access::OrgAdmin,
    rows: Rows::All,
    kind: Kind::Filter,
};

pub static MCP_SERVERS: Resource = Resource {
    schema: "McpServer",
    path: "/api/organisations/{organisationId}/mcp-servers",
    table: "mcp_servers",
    org_column: ORG,
    parent: None,
    columns: &[
        c("name", Ty::Name).req(),
        c("slug", Ty::Slug).req(),
        c("description", Ty::Text).null(),
        c("transport", Ty::Enum(TRANSPORTS)).req(),
        c("url", Ty::Url).null(),
        c("command", Ty::Text).null(),
        c("args", Ty::Strings),
        c("env", Ty::Object),
        c("auth_type", Ty::Enum(MCP_AUTH)),
        c("auth_config", Ty::Object),
        c("timeout_ms", Ty::PosInt),
        c("max_sessions", Ty::PosInt),
        c("idle_timeout_ms", Ty::PosInt),
        c("allowed_tools", Ty::Strings),
        c("blocked_tools", Ty::Strings),
        c("keywords", Ty::Strings),
        c("price_per_call_nanos", Ty::Amount),
        c("price_per_input_byte_nanos", Ty::Amount),
        c("price_per_output_byte_nanos", Ty::Amount),
        c("policies", Ty::Object),
        c("enabled", Ty::Bool),
    ],
    // Write-only: may hold credentials.
    hidden: &["env", "auth_config"],
    filters: &["transport", "enabled", "slug", "name"],
    // USER reads only its own keys and usage.
    read: Access::Manager,
    create: Access::OrgAdmin,
    update: Access::OrgAdmin,
    delete: Access::OrgAdmin,
    rows: Rows::All,
    kind: Kind::Plain,
};

const LIMIT_COMMON: [Col; 9] = [
    c("name", Ty::Text),
    c("scope", Ty::Enum(SCOPES)).req().fixed(),
    c("scope_id", Ty::Uuid).fixed(),
    c("period", Ty::Enum(PERIODS)).req(),
    c("timezone", Ty::Name),
    c("starts_at", Ty::Time).null(),
    c("ends_at", Ty::Time).null(),
    c("rollover", Ty::Bool),
    c("warning_thresholds", Ty::Percents),
];

pub static BUDGETS: Resource = Resource {
    schema: "Budget",
    path: "/api/organisations/{organisationId}/budgets",
    table: "budgets",
    org_column: ORG,
    parent: None,
    columns: &[
        LIMIT_COMMON[0],
        LIMIT_COMMON[1],
        LIMIT_COMMON[2],
        c("amount_nanos", Ty::Amount).req(),
        // No period: a prepaid balance (amount_nanos is the initial credit; top-ups add).
        c("period", Ty::Enum(PERIODS)).null(),
        LIMIT_COMMON[4],
        LIMIT_COMMON[5],
        LIMIT_COMMON[6],
        LIMIT_COMMON[7],
        LIMIT_COMMON[8],
        c("enabled", Ty::Bool),
    ],
    hidden: &[],
    filters: &["scope", "scope_id", "period", "enabled"],
    read: Access::Manager,
    create: Access::OrgAdmin,
    update: Access::OrgAdmin,
    delete: Access::OrgAdmin,
    rows: Rows::All,
    kind: Kind::Budget,
};

pub static QUOTAS: Resource = Resource {
    schema: "Quota",
    path: "/api/organisations/{organisationId}/quotas",
    table: "quotas",
    org_column: ORG,
    parent: None,
    columns: &[
        LIMIT_COMMON[0],
        LIMIT_COMMON[1],
        LIMIT_COMMON[2],
        c("metric", Ty::Enum(METRICS)).req(),
        c("limit_value", Ty::Amount).req(),
        LIMIT_COMMON[3],
        LIMIT_COMMON[4],
        LIMIT_COMMON[5],
        LIMIT_COMMON[6],
        LIMIT_COMMON[7],
        LIMIT_COMMON[8],
        c("enabled", Ty::Bool),
    ],
    hidden: &[],
    filters: &["scope", "scope_id", "metric", "period", "enabled"],
    read: Access::Manager,
    create: Access::OrgAdmin,
    update: Access::OrgAdmin,
    delete: Access::OrgAdmin,
    rows: Rows::All,
    kind: Kind::Budget,
};

/// Every resource with generic routes.
pub static ALL: &[&Resource] = &[
    &ORGANISATIONS,
    &ADMIN_USERS,
    &ADMIN_TOKENS,
    &USERS,
    &ORG_USER_TOKENS,
    &TEAMS,
    &TEAM_MEMBERS,
    &INVITATIONS,
    &API_KEYS,
    &PROVIDERS,
    &PROVIDER_KEYS,
    &MODELS,
    &MODEL_DEPLOYMENTS,
    &FILTERS,
    &MCP_SERVERS,
    &BUDGETS,
    &QUOTAS,
];

/// Organisation resources that SUPER_ADMIN also lists across every organisation, at
/// `/api/admin/{segment}` (read only: rows are written through their organisation's routes).
/// Each row adds `organisation_slug` and `organisation_name`; `organisation_id` is a filter.
pub static PLATFORM_LISTS: &[(&str, &Resource)] = &[
    ("teams", &TEAMS),
    ("providers", &PROVIDERS),
    ("models", &MODELS),
    ("mcp-servers", &MCP_SERVERS),
    ("apikeys", &API_KEYS),
    ("budgets", &BUDGETS),
    ("quotas", &QUOTAS),
];

/// Checks a body against the columns: unknown fields, types, required fields. Returns the
/// checked fields (virtual ones included).
pub fn validate(
    res: &Resource,
    body: &Map<String, Value>,
    creating: bool,
) -> ApiResult<Map<String, Value>> {
    let mut out = Map::new();
    for (k, v) in body {
        let Some(col) = res.columns.iter().find(|c| c.name == k) else {
            return Err(ApiError::invalid(k, "unknown field"));
        };
        let writable = if creating { col.create } else { col.update };
        if !writable {
            return Err(ApiError::invalid(
                k,
                if creating {
                    "cannot be set on create"
                } else {
                    "cannot be changed"
                },
            ));
        }
        if v.is_null() {
            if !col.nullable {
                return Err(ApiError::invalid(k, "must not be null"));
            }
        } else {
            col.ty.check(v).map_err(|p| ApiError::invalid(k, p))?;
        }
        out.insert(k.clone(), v.clone());
    }
    if creating {
        for col in res.columns.iter().filter(|c| c.required) {
            if !out.contains_key(col.name) {
                return Err(ApiError::invalid(col.name, "is required"));
            }
        }
    } else if out.is_empty() {
        return Err(ApiError::invalid("body", "no field to change"));
    }
    Ok(out)
}

/// `SELECT` list of a table alias as one JSON value.
fn row_json(alias: &str) -> String {
    format!("to_jsonb({alias})")
}

/// Removes hidden fields.
pub fn strip(res: &Resource, mut row: Value) -> Value {
    if let Some(m) = row.as_object_mut() {
        for h in res.hidden {
            m.remove(*h);
        }
    }
    row
}

/// `(SELECT team_id FROM team_members WHERE user_id = $n)`.
fn my_teams(q: &mut Sql, user: Uuid) -> String {
    let p = q.arg(user.to_string());
    format!("(SELECT tm.team_id FROM team_members tm WHERE tm.user_id = {p}::uuid)")
}

/// The visibility condition of `rows` for the caller (empty for admins).
pub fn visibility(rows: Rows, role: Role, user: Uuid, q: &mut Sql, alias: &str) -> String {
    if role >= Role::OrgAdmin {
        return String::new();
    }
    match rows {
        Rows::All => String::new(),
        Rows::Teams(col) => {
            let teams = my_teams(q, user);
            format!(" AND {alias}.{} IN {teams}", ident(col))
        }
        Rows::Owner => {
            let me = q.arg(user.to_string());
            if role == Role::Manager {
                let teams = my_teams(q, user);
                format!(" AND ({alias}.team_id IN {teams} OR {alias}.user_id = {me}::uuid)")
            } else {
                format!(" AND {alias}.user_id = {me}::uuid")
            }
        }
        Rows::SelfUser => {
            if role == Role::Manager {
                String::new()
            } else {
                let me = q.arg(user.to_string());
                format!(" AND {alias}.id = {me}::uuid")
            }
        }
    }
}

/// Which rows a list spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The route's organisation (and parent).
    Route,
    /// Every organisation (`/api/admin/…` platform lists, SUPER_ADMIN only).
    Platform,
}

/// ` WHERE …` for rows of `res` visible to the caller under this route (organisation, parent,
/// visibility, and the id when given).
fn where_clause(ctx: &Ctx<'_>, res: &Resource, q: &mut Sql, id: Option<Uuid>) -> ApiResult<()> {
    where_in(ctx, res, q, id, Span::Route)
}

fn where_in(
    ctx: &Ctx<'_>,
    res: &Resource,
    q: &mut Sql,
    id: Option<Uuid>,
    span: Span,
) -> ApiResult<()> {
    q.push(" WHERE true");
    if let (Some(col), Span::Route) = (res.org_column, span) {
        let p = q.arg(ctx.org()?.to_string());
        q.push(&format!(" AND t.{} = {p}::uuid", ident(col)));
        // Super admins are nobody's organisation users: org admins neither see nor change them.
        if res.kind == Kind::Users {
            q.push(" AND t.role <> 'SUPER_ADMIN'");
        }
    }
    if let Some(parent) = &res.parent {
        let pid = ctx.id(parent.param, parent.resource.schema)?;
        let p = q.arg(pid.to_string());
        q.push(&format!(" AND t.{} = {p}::uuid", ident(parent.column)));
    }
    let vis = visibility(res.rows, ctx.caller.role, ctx.caller.user_id, q, "t");
    q.push(&vis);
    if let Some(id) = id {
        let p = q.arg(id.to_string());
        q.push(&format!(" AND t.id = {p}::uuid"));
    }
    Ok(())
}

/// 404 unless the route's parent row exists and is visible.
async fn check_parent(ctx: &Ctx<'_>, res: &Resource, conn: &mut PgConnection) -> ApiResult<()> {
    let Some(parent) = &res.parent else {
        return Ok(());
    };
    let pid = ctx.id(parent.param, parent.resource.schema)?;
    fetch(ctx, parent.resource, pid, conn).await.map(|_| ())
}

/// One visible row (full, hidden fields included) or 404.
pub async fn fetch(
    ctx: &Ctx<'_>,
    res: &Resource,
    id: Uuid,
    conn: &mut PgConnection,
) -> ApiResult<Value> {
    let mut q = Sql::new(format!(
        "SELECT {} FROM {} t",
        row_json("t"),
        ident(res.table)
    ));
    where_clause(ctx, res, &mut q, Some(id))?;
    q.json_row(conn)
        .await?
        .ok_or_else(|| ApiError::not_found(res.schema))
}

/// `limit` and `offset` of a list request.
pub fn page(ctx: &Ctx<'_>) -> ApiResult<(i64, i64)> {
    let limit = match ctx.req.q("limit") {
        None => 50,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    "must be an integer from 1 to 500",
                ))
            }
        },
    };
    let offset = match ctx.req.q("offset") {
        None => 0,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                return Err(ApiError::invalid(
                    "offset",
                    "must be a non-negative integer",
                ))
            }
        },
    };
    Ok((limit, offset))
}

/// ` AND …` for a `?q=` search: rows with a top-level string field (hidden fields left out)
/// that contains the needle, case-insensitively; on platform lists the organisation's slug
/// and name count as well. Blank needles match everything.
fn search_clause(res: &Resource, q: &mut Sql, needle: &str, span: Span) -> String {
    let needle = needle.trim();
    if needle.is_empty() {
        return String::new();
    }
    let n = q.arg(needle.to_lowercase());
    let hidden = q.arg(format!("{{{}}}", res.hidden.join(",")));
    let org = match span {
        Span::Route => String::new(),
        Span::Platform => {
            format!(" OR strpos(lower(o.slug), {n}) > 0 OR strpos(lower(o.name), {n}) > 0")
        }
    };
    format!(
        " AND (EXISTS (SELECT 1 FROM jsonb_each(to_jsonb(t) - {hidden}::text[]) AS f
                 WHERE jsonb_typeof(f.value) = 'string'
                   AND strpos(lower(f.value #>> '{{}}'), {n}) > 0){org})"
    )
}

/// `GET collection`: `{"data": [...], "total", "limit", "offset"}`.
pub async fn list(ctx: &Ctx<'_>, res: &Resource) -> ApiResult<Reply> {
    list_in(ctx, res, Span::Route).await
}

/// `GET /api/admin/{segment}` ([`PLATFORM_LISTS`]): rows of every organisation, each with
/// its organisation's slug and name.
pub async fn list_all(ctx: &Ctx<'_>, res: &Resource) -> ApiResult<Reply> {
    if res.org_column.is_none() || res.parent.is_some() || ctx.caller.role != Role::SuperAdmin {
        return Err(ApiError::forbidden(
            "only SUPER_ADMIN lists every organisation",
        ));
    }
    list_in(ctx, res, Span::Platform).await
}

async fn list_in(ctx: &Ctx<'_>, res: &Resource, span: Span) -> ApiResult<Reply> {
    let mut conn = ctx.pool.acquire().await?;
    check_parent(ctx, res, &mut conn).await?;
    let (limit, offset) = page(ctx)?;
    let mut q = Sql::new(String::new());
    where_in(ctx, res, &mut q, None, span)?;
    let by_org = span == Span::Platform;
    for (k, v) in &ctx.req.query {
        if k == "limit" || k == "offset" {
            continue;
        }
        if k == "q" {
            let cond = search_clause(res, &mut q, v, span);
            q.push(&cond);
            continue;
        }
        let known = res.filters.contains(&k.as_str()) || (by_org && k == "organisation_id");
        if !known {
            let mut names: Vec<&str> = res.filters.to_vec();
            if by_org {
                names.push("organisation_id");
            }
            return Err(ApiError::invalid(
                k,
                format!("unknown filter (filters: {}, and q)", names.join(", ")),
            ));
        }
        let p = q.arg(v.clone());
        q.push(&format!(" AND t.{}::text = {p}", ident(k)));
    }
    let (from, row) = match (span, res.org_column) {
        (Span::Platform, Some(col)) => (
            format!(
                " FROM {} t JOIN organisations o ON o.id = t.{}",
                ident(res.table),
                ident(col)
            ),
            format!(
                "{} || jsonb_build_object('organisation_slug', o.slug, 'organisation_name', o.name)",
                row_json("t")
            ),
        ),
        _ => (format!(" FROM {} t", ident(res.table)), row_json("t")),
    };
    let total = q
        .with_text(format!("SELECT count(*){from}{}", q.text))
        .count(&mut conn)
        .await?;
    let lp = q.arg(limit.to_string());
    let op = q.arg(offset.to_string());
    let rows = q
        .with_text(format!(
            "SELECT {row}{from}{} ORDER BY t.created_at, t.id LIMIT {lp}::bigint OFFSET {op}::bigint",
            q.text
        ))
        .json_rows(&mut conn)
        .await?;
    let data: Vec<Value> = rows.into_iter().map(|r| strip(res, r)).collect();
    Ok(json_reply(
        200,
        &json!({"data": data, "total": total, "limit": limit, "offset": offset}),
    ))
}

/// `GET item`.
pub async fn get(ctx: &Ctx<'_>, res: &Resource, id: Uuid) -> ApiResult<Reply> {
    let mut conn = ctx.pool.acquire().await?;
    check_parent(ctx, res, &mut conn).await?;
    let row = fetch(ctx, res, id, &mut conn).await?;
    Ok(json_reply(200, &strip(res, row)))
}

/// Inserts checked fields (organisation and parent added from the route). Returns the full
/// row.
pub async fn insert_row(
    ctx: &Ctx<'_>,
    res: &Resource,
    mut fields: Map<String, Value>,
    conn: &mut PgConnection,
) -> ApiResult<Value> {
    if let Some(col) = res.org_column {
        fields.insert(col.to_string(), json!(ctx.org()?.to_string()));
    }
    if let Some(parent) = &res.parent {
        let pid = ctx.id(parent.param, parent.resource.schema)?;
        fields.insert(parent.column.to_string(), json!(pid.to_string()));
    }
    let cols: Vec<String> = fields.keys().map(|k| ident(k)).collect();
    let cols = cols.join(", ");
    let table = ident(res.table);
    let mut q = Sql::new(String::new());
    let p = q.arg(Value::Object(fields).to_string());
    q.push(&format!(
        "INSERT INTO {table} AS t ({cols}) SELECT {cols} FROM jsonb_populate_record(NULL::{table}, {p}::jsonb) RETURNING {}",
        row_json("t")
    ));
    q.json_row(conn)
        .await?
        .ok_or_else(|| ApiError::internal("INSERT returned no row"))
}

/// Updates checked fields of a visible row. Returns the full row, or 404.
pub async fn update_row(
    ctx: &Ctx<'_>,
    res: &Resource,
    id: Uuid,
    fields: Map<String, Value>,
    conn: &mut PgConnection,
) -> ApiResult<Value> {
    let set: Vec<String> = fields
        .keys()
        .map(|k| format!("{} = r.{}", ident(k), ident(k)))
        .collect();
    let table = ident(res.table);
    let mut q = Sql::new(String::new());
    let p = q.arg(Value::Object(fields).to_string());
    q.push(&format!(
        "UPDATE {table} AS t SET {} FROM jsonb_populate_record(NULL::{table}, {p}::jsonb) AS r",
        set.join(", ")
    ));
    where_clause(ctx, res, &mut q, Some(id))?;
    q.push(&format!(" RETURNING {}", row_json("t")));
    q.json_row(conn)
        .await?
        .ok_or_else(|| ApiError::not_found(res.schema))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Resource-specific preparation of checked fields before INSERT/UPDATE. Returns fields to
/// add to the answer (a secret shown once).
async fn prepare(
    ctx: &Ctx<'_>,
    res: &Resource,
    fields: &mut Map<String, Value>,
    creating: bool,
    conn: &mut PgConnection,
) -> ApiResult<Map<String, Value>> {
    let mut extra = Map::new();
    if std::ptr::eq(res, &ORGANISATIONS) {
        if let Some(slug) = fields.get("slug").and_then(Value::as_str) {
            if RESERVED_SLUGS.contains(&slug) {
                return Err(ApiError::invalid(
                    "slug",
                    "is reserved (a path of the admin listener)",
                ));
            }
        }
    }
    match res.kind {
        Kind::Plain | Kind::ApiKey | Kind::Filter => {}
        Kind::Users => {
            if res.org_column.is_some()
                && fields.get("role").and_then(Value::as_str) == Some("SUPER_ADMIN")
            {
                return Err(ApiError::invalid("role", "must not be SUPER_ADMIN"));
            }
        }
        Kind::Invitation => {
            if creating {
                let token = super::bootstrap::random_token("wharf_inv_");
                fields.insert(
                    "token_hash".into(),
                    json!(crate::keys::KeyHash::of(&token).to_hex()),
                );
                fields.insert("invited_by".into(), json!(ctx.caller.user_id.to_string()));
                if !fields.contains_key("expires_at") {
                    let at = time::OffsetDateTime::now_utc() + time::Duration::days(7);
                    fields.insert(
                        "expires_at".into(),
                        json!(at
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default()),
                    );
                }
                extra.insert("token".into(), json!(token));
            }
        }
        Kind::AdminToken => {
            if creating {
                let token = super::bootstrap::random_token(super::bootstrap::TOKEN_PREFIX);
                fields.insert(
                    "token_hash".into(),
                    json!(crate::keys::KeyHash::of(&token).to_hex()),
                );
                fields.insert(
                    "token_prefix".into(),
                    json!(super::bootstrap::display_prefix(&token)),
                );
                extra.insert("token".into(), json!(token));
            }
        }
        Kind::ProviderKey => {
            if let Some(secret) = fields.remove("secret") {
                let secret = secret.as_str().unwrap_or_default().to_string();
                let keys = &ctx
                    .state
                    .db
                    .as_ref()
                    .ok_or_else(|| ApiError::internal("no database mode"))?
                    .master_keys;
                let envelope = keys.encrypt(&secret).map_err(ApiError::internal)?;
                fields.insert("envelope".into(), envelope);
                fields.insert("preview".into(), json!(crate::db::crypto::preview(&secret)));
                if !creating {
                    fields.insert("rotated_at".into(), json!(now_rfc3339()));
                }
            }
            match fields.get("status").and_then(Value::as_str) {
                Some("REVOKED") => {
                    fields.insert("revoked_at".into(), json!(now_rfc3339()));
                }
                Some(_) => {
                    fields.insert("revoked_at".into(), Value::Null);
                }
                None => {}
            }
        }
        Kind::Budget => {
            if creating {
                let org = ctx.org()?;
                let scope = fields
                    .get("scope")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let scope_id = fields
                    .get("scope_id")
                    .and_then(Value::as_str)
                    .and_then(|s| Uuid::parse_str(s).ok());
                let table = match scope.as_str() {
                    "ORG" => {
                        if scope_id.is_some_and(|s| s != org) {
                            return Err(ApiError::invalid(
                                "scope_id",
                                "an ORG scope is the organisation itself",
                            ));
                        }
                        fields.insert("scope_id".into(), json!(org.to_string()));
                        None
                    }
                    "TEAM" => Some("teams"),
                    "USER" => Some("users"),
                    _ => Some("api_keys"),
                };
                if let Some(table) = table {
                    let Some(sid) = scope_id else {
                        return Err(ApiError::invalid("scope_id", "is required for this scope"));
                    };
                    let found: Option<i32> = sqlx::query_scalar(&format!(
                        "SELECT 1 FROM {} WHERE id = $1 AND organisation_id = $2",
                        ident(table)
                    ))
                    .bind(sid)
                    .bind(org)
                    .fetch_optional(&mut *conn)
                    .await?;
                    if found.is_none() {
                        return Err(ApiError::invalid(
                            "scope_id",
                            format!("no such {scope} in this organisation"),
                        ));
                    }
                }
            }
        }
    }
    Ok(extra)
}

/// `POST collection`.
pub async fn create(ctx: &Ctx<'_>, res: &Resource) -> ApiResult<Reply> {
    let body = ctx.body_object()?;
    let mut fields = validate(res, &body, true)?;
    let mut tx = ctx.pool.begin().await?;
    check_parent(ctx, res, &mut tx).await?;
    let extra = prepare(ctx, res, &mut fields, true, &mut tx).await?;
    let row = insert_row(ctx, res, fields, &mut tx).await?;
    check_row(res, &row)?;
    tx.commit().await?;
    let mut out = strip(res, row);
    if let Some(m) = out.as_object_mut() {
        m.extend(extra);
    }
    Ok(json_reply(201, &out))
}

/// Checks a written row before its transaction commits (the caller rolls back on error).
fn check_row(res: &Resource, row: &Value) -> ApiResult<()> {
    match res.kind {
        // The gateway builds the row the way it builds `[[filters]]`: a filter it could not
        // load (unknown setting, script that does not compile) is refused here, not at the
        // next catalog refresh.
        Kind::Filter => {
            let text = |k: &str| row[k].as_str().map(str::to_string);
            let strings = |k: &str| -> Vec<String> {
                row[k]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let parsed = crate::db::load::FilterRow {
                id: Uuid::nil(),
                organisation_id: None,
                organisation_slug: None,
                name: text("name").unwrap_or_default(),
                kind: text("kind").unwrap_or_default(),
                script: text("script"),
                position: row["position"]
                    .as_i64()
                    .and_then(|p| i32::try_from(p).ok())
                    .unwrap_or(0),
                on_error: text("on_error").unwrap_or_default(),
                read_only: row["read_only"].as_bool().unwrap_or(false),
                phases: row["phases"].is_array().then(|| strings("phases")),
                scope_keys: strings("scope_keys"),
                scope_models: strings("scope_models"),
                settings: row["settings"].clone(),
            };
            let raw = crate::filters::config::from_db_rows(&[parsed])
                .map_err(|e| ApiError::invalid("filter", e.join("; ")))?;
            let mut errs = Vec::new();
            let _ = crate::filters::build(&raw, &mut errs);
            match errs.first() {
                None => Ok(()),
                Some(_) => Err(ApiError::invalid("filter", errs.join("; "))),
            }
        }
        _ => Ok(()),
    }
}

/// `PATCH item`.
pub async fn update(ctx: &Ctx<'_>, res: &Resource, id: Uuid) -> ApiResult<Reply> {
    let body = ctx.body_object()?;
    let mut fields = validate(res, &body, false)?;
    let mut tx = ctx.pool.begin().await?;
    check_parent(ctx, res, &mut tx).await?;
    prepare(ctx, res, &mut fields, false, &mut tx).await?;
    let row = update_row(ctx, res, id, fields, &mut tx).await?;
    check_row(res, &row)?;
    // A user that is no longer ACTIVE loses its console sessions, so that reactivating it
    // does not bring an old session back.
    if res.kind == Kind::Users && row.get("status").and_then(Value::as_str) != Some("ACTIVE") {
        sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    after_change(ctx, res, &row).await;
    Ok(json_reply(200, &strip(res, row)))
}

/// `DELETE item`: 204.
pub async fn delete(ctx: &Ctx<'_>, res: &Resource, id: Uuid) -> ApiResult<Reply> {
    let mut conn = ctx.pool.acquire().await?;
    check_parent(ctx, res, &mut conn).await?;
    let mut q = Sql::new(format!("DELETE FROM {} AS t", ident(res.table)));
    where_clause(ctx, res, &mut q, Some(id))?;
    q.push(&format!(" RETURNING {}", row_json("t")));
    let row = q
        .json_row(&mut conn)
        .await?
        .ok_or_else(|| ApiError::not_found(res.schema))?;
    drop(conn);
    after_change(ctx, res, &row).await;
    Ok(Reply {
        status: 204,
        content_type: "application/json",
        body: bytes::Bytes::new(),
    })
}

/// Cache invalidation beyond the NOTIFY triggers: a changed or deleted key leaves this node's
/// key cache at once and the other nodes' through Redis.
async fn after_change(ctx: &Ctx<'_>, res: &Resource, row: &Value) {
    if res.kind == Kind::ApiKey {
        if let Some(h) = row.get("key_hash").and_then(Value::as_str) {
            super::keys::invalidate(ctx.state, vec![h.to_string()]).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let body = json!({"name": " ", "description": null});
        let e = validate(&TEAMS, body.as_object().expect("object"), true).expect_err("blank");
        assert_eq!(e.field.as_deref(), Some("name"));
        assert_eq!(e.message, "name: must not be empty");
        let e = validate(&TEAMS, json!({"nope": 1}).as_object().expect("o"), true)
            .expect_err("unknown");
        assert_eq!(e.field.as_deref(), Some("nope"));
        let e = validate(&TEAMS, json!({}).as_object().expect("o"), true).expect_err("required");
        assert_eq!(e.field.as_deref(), Some("name"));
        let e = validate(
            &API_KEYS,
            json!({"key_type": "TEAM"}).as_object().expect("o"),
            false,
        )
        .expect_err("fixed");
        assert_eq!(e.field.as_deref(), Some("key_type"));
        let e = validate(
            &MODELS,
            json!({"name": "m", "slug": "s", "provider_id": "x"})
                .as_object()
                .expect("o"),
            true,
        )
        .expect_err("uuid");
        assert_eq!(e.field.as_deref(), Some("provider_id"));
        let ok = validate(
            &BUDGETS,
            json!({"scope": "ORG", "amount_nanos": 5, "period": "DAILY", "warning_thresholds": [50, 90]})
                .as_object()
                .expect("o"),
            true,
        )
        .expect("valid");
        assert_eq!(ok.len(), 4);
    }

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

    #[test]
    fn admins_see_everything_others_are_restricted() {
        let me = Uuid::new_v4();
        let mut q = Sql::new("");
        assert_eq!(visibility(Rows::Owner, Role::OrgAdmin, me, &mut q, "t"), "");
        let m = visibility(Rows::Owner, Role::Manager, me, &mut q, "t");
        assert!(m.contains("team_id IN") && m.contains("user_id ="), "{m}");
        let u = visibility(Rows::Owner, Role::User, me, &mut q, "t");
        assert!(u.contains("user_id =") && !u.contains("team_id"), "{u}");
    }
}
