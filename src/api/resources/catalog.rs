//! The table of resources: every resource of the admin API with its columns and rules.

use super::hooks;
use super::schema::{c, Access, Col, Hooks, Kind, Parent, Resource, Rows, Ty};

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
    hooks: &hooks::ORGANISATION,
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
    hooks: &hooks::USER,
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
    hooks: &hooks::ADMIN_TOKEN,
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
    hooks: &hooks::USER,
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
    hooks: &hooks::ADMIN_TOKEN,
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
    hooks: &Hooks::NONE,
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
    hooks: &Hooks::NONE,
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
    hooks: &hooks::INVITATION,
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
    hooks: &hooks::API_KEY,
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
    hooks: &Hooks::NONE,
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
    hooks: &hooks::PROVIDER_KEY,
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
    hooks: &Hooks::NONE,
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
    hooks: &Hooks::NONE,
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
    hooks: &hooks::FILTER,
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
    hooks: &Hooks::NONE,
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
    hooks: &hooks::BUDGET,
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
    hooks: &hooks::BUDGET,
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
