//! Database mode: loading the gateway's configuration structures from Postgres (SPEC §6).
//!
//! The gateway runs on the same [`Provider`], [`Model`] and [`VirtualKey`] values whether they
//! come from the TOML file or from Postgres, so database mode serves exactly what TOML-only
//! mode serves:
//!
//! * [`load_catalog`] reads the providers and models of every organisation in one consistent
//!   snapshot, decrypting each provider's credential with the [`MasterKeys`]. A row that would
//!   be rejected in the TOML file (bad base URL, bad header, bad model name, ...) is skipped
//!   with a warning instead of failing the whole load; a credential that cannot be decrypted
//!   leaves its provider without one (`api_key: None`, requests answer
//!   `provider_api_key_not_configured`) plus a warning. Nothing here panics on data.
//! * [`load_key`] reads one virtual key by hash with its model grants: the hot path's cache
//!   miss.
//! * `create_*` and [`revoke_api_key`] write rows the way the admin API does.
//!
//! Model names are unique per organisation only, so the catalog is keyed by
//! `(organisation id, model name)`; [`model_key`] gives the flat `"<organisation id>/<name>"`
//! form used by [`DbSnapshotParts`].

use super::crypto::{self, CryptoError, MasterKeys};
use crate::config::provider::{build_provider, valid_name, valid_slug, ProviderSpec, NAME_RULE};
use crate::config::{
    KeyType, Model, ModelType, Pricing, Provider, ProviderKind, Secret, VirtualKey,
};
use crate::keys::{self, KeyHash};
use crate::routing::policy::{RoutingPolicy, DEFAULT_TRIGGERS};
use crate::routing::{RouterConfig, Strategy};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// Connect timeout of a provider whose options do not set `connect_timeout_ms` (as in TOML).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Idle timeout of a provider whose options do not set `idle_timeout_ms` (as in TOML).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Read timeout used by [`create_provider`] (the `providers.timeout_ms` column default).
pub const DEFAULT_DB_TIMEOUT_MS: u64 = 60_000;

/// Errors of loading and writing configuration rows.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A query failed (includes constraint violations such as a duplicate name).
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// Encrypting or decrypting a credential failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The values given to a `create_*` helper, or a row read back, are not valid.
    #[error("invalid {what}: {}", .problems.join("; "))]
    Invalid {
        /// What was being written or read (`provider`, `model`, `api key`, ...).
        what: &'static str,
        /// Every problem found, each naming its field.
        problems: Vec<String>,
    },
    /// The row to change does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// The kind of row.
        what: &'static str,
        /// Its id.
        id: Uuid,
    },
}

fn invalid(what: &'static str, problems: Vec<String>) -> LoadError {
    LoadError::Invalid { what, problems }
}

impl ProviderSpec {
    /// A spec with the TOML defaults for everything but the name, family and base URL.
    pub fn new(name: &str, kind: ProviderKind, base_url: &str) -> ProviderSpec {
        ProviderSpec {
            name: name.to_string(),
            kind,
            base_url: base_url.to_string(),
            auth_header: None,
            api_version: None,
            timeout_ms: DEFAULT_DB_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            enabled: true,
            headers: Vec::new(),
        }
    }
}

/// `provider_type` as stored (the TOML spelling).
pub fn provider_kind_from_db(s: &str) -> Option<ProviderKind> {
    [
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::Google,
        ProviderKind::AzureOpenAi,
        ProviderKind::Vllm,
        ProviderKind::Custom,
    ]
    .into_iter()
    .find(|k| k.as_str() == s)
}

/// `model_type` as stored (the TOML spelling, lower case).
pub fn model_type_from_db(s: &str) -> Option<ModelType> {
    [
        ModelType::Chat,
        ModelType::Reasoning,
        ModelType::Image,
        ModelType::Embeddings,
        ModelType::Audio,
        ModelType::Moderation,
        ModelType::Transcription,
        ModelType::Tts,
    ]
    .into_iter()
    .find(|k| k.as_str() == s)
}

/// `api_key_type` as stored.
pub fn key_type_from_db(s: &str) -> Option<KeyType> {
    [KeyType::Organisation, KeyType::Team, KeyType::User]
        .into_iter()
        .find(|k| k.as_str() == s)
}

/// The model prices of a row: nanos-USD per 1M tokens (per image for `image`), NULL
/// cached/reasoning prices meaning "same as input/output" (the TOML rule). Negative values
/// (excluded by the schema) read as 0.
pub fn pricing_from_nanos(
    input: i64,
    output: i64,
    cached: Option<i64>,
    reasoning: Option<i64>,
    image: i64,
) -> Pricing {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Pricing {
        input: n(input),
        output: n(output),
        cached: n(cached.unwrap_or(input)),
        reasoning: n(reasoning.unwrap_or(output)),
        image: n(image),
    }
}

// ---------------------------------------------------------------------------------------------
// The catalog: providers and models of every organisation.
// ---------------------------------------------------------------------------------------------

/// The flat key of a model in [`DbSnapshotParts::models`]: `"<organisation id>/<model name>"`.
/// Organisation ids are UUIDs (no `/`), so the first `/` separates the two parts.
pub fn model_key(organisation_id: &str, name: &str) -> String {
    format!("{organisation_id}/{name}")
}

/// The catalog in the shape of [`crate::config::Config`]'s provider and model fields, with
/// model names qualified by organisation ([`model_key`]).
#[derive(Debug, Default)]
pub struct DbSnapshotParts {
    pub providers: Vec<Arc<Provider>>,
    /// Keyed by [`model_key`].
    pub models: HashMap<String, Arc<Model>>,
    /// [`model_key`]s, per organisation in creation order.
    pub model_order: Vec<String>,
    pub warnings: Vec<String>,
    pub org_routing: HashMap<String, Arc<RoutingPolicy>>,
    pub filter_rows: Vec<FilterRow>,
}

/// Providers and models of every organisation, as loaded by [`load_catalog`].
#[derive(Debug, Default)]
pub struct Catalog {
    /// Every provider instance a model points to. A model pinned to a credential other than
    /// its provider's default (`models.provider_api_key_id`) gets a provider instance of its
    /// own carrying that credential, listed here too (addresses are resolved per instance).
    pub providers: Vec<Arc<Provider>>,
    /// Organisations whose `enabled` flag is off (their rows are still loaded).
    pub disabled_organisations: HashSet<String>,
    /// Rows skipped or loaded without credential, one line each; never secret.
    pub warnings: Vec<String>,
    /// Extra deployments of models (`model_deployments`), applied by [`Catalog::apply_routing`].
    pub deployment_rows: Vec<DeploymentRow>,
    /// Organisation routing policies (`organisations.routing_policy`), by organisation id.
    pub org_routing: HashMap<String, Arc<RoutingPolicy>>,
    /// Filters configured in the database (`filters`), built with the file's by the caller.
    pub filter_rows: Vec<FilterRow>,
    models_by_org: HashMap<(String, String), Arc<Model>>,
    model_order: Vec<(String, String)>,
    model_ids: HashMap<(String, String), Uuid>,
    providers_by_name: HashMap<(String, String), (Uuid, Arc<Provider>)>,
    providers_by_id: HashMap<Uuid, Arc<Provider>>,
}

impl Catalog {
    /// The model `name` of organisation `org` (its id as text).
    pub fn model(&self, org: &str, name: &str) -> Option<&Arc<Model>> {
        self.models_by_org.get(&(org.to_string(), name.to_string()))
    }

    /// The models of an organisation, in creation order.
    pub fn models_of(&self, org: &str) -> Vec<&Arc<Model>> {
        self.model_order
            .iter()
            .filter(|(o, _)| o == org)
            .filter_map(|k| self.models_by_org.get(k))
            .collect()
    }

    /// The database id of a model.
    pub fn model_id(&self, org: &str, name: &str) -> Option<Uuid> {
        self.model_ids
            .get(&(org.to_string(), name.to_string()))
            .copied()
    }

    /// An organisation's provider by name (its default-credential instance).
    pub fn provider(&self, org: &str, name: &str) -> Option<&Arc<Provider>> {
        self.providers_by_name
            .get(&(org.to_string(), name.to_string()))
            .map(|(_, p)| p)
    }

    /// The database id of an organisation's provider.
    pub fn provider_id(&self, org: &str, name: &str) -> Option<Uuid> {
        self.providers_by_name
            .get(&(org.to_string(), name.to_string()))
            .map(|(id, _)| *id)
    }

    /// A provider by database id (its default-credential instance).
    pub fn provider_by_id(&self, id: Uuid) -> Option<&Arc<Provider>> {
        self.providers_by_id.get(&id)
    }

    /// Whether the organisation is enabled (unknown organisations count as enabled: they
    /// simply have no rows).
    pub fn organisation_enabled(&self, org: &str) -> bool {
        !self.disabled_organisations.contains(org)
    }

    /// Number of models, all organisations together.
    pub fn model_count(&self) -> usize {
        self.models_by_org.len()
    }

    /// The flat form, for building a `Config`-shaped snapshot.
    /// Gives each model with rows in `model_deployments` its deployment group (routers tuned by
    /// `tuning`, shared across reloads while the group is unchanged).
    pub fn apply_routing(&mut self, tuning: RouterConfig) {
        let mut by_model: HashMap<Uuid, Vec<&DeploymentRow>> = HashMap::new();
        for d in &self.deployment_rows {
            by_model.entry(d.model_id).or_default().push(d);
        }
        if by_model.is_empty() {
            return;
        }
        let ids: Vec<((String, String), Uuid)> = self
            .model_ids
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (key, id) in ids {
            let Some(rows) = by_model.get(&id) else {
                continue;
            };
            let Some(model) = self.models_by_org.get(&key).cloned() else {
                continue;
            };
            let mut extra = Vec::new();
            for d in rows {
                match self.providers_by_id.get(&d.provider_id) {
                    Some(p) => extra.push(model.deployment(
                        p.clone(),
                        d.slug.clone(),
                        d.weight.max(0) as u32,
                        d.priority.max(0) as u32 + 1,
                    )),
                    None => self.warnings.push(format!(
                        "deployment of model `{}` (organisation {}) skipped: provider {} was not loaded",
                        key.1, key.0, d.provider_id
                    )),
                }
            }
            let rule = rows.first().and_then(|d| d.routing.as_ref()).and_then(|v| {
                match RoutingPolicy::parse(&serde_json::json!({ "chat": v }), "policies.routing") {
                    Ok(p) => p.rules.get("chat").cloned(),
                    Err(e) => {
                        self.warnings
                            .push(format!("model `{}` (organisation {}): {e}", key.1, key.0));
                        None
                    }
                }
            });
            let base = model.deployment(model.provider.clone(), model.slug.clone(), 1, 0);
            let built = Model::with_deployments(
                base,
                &key.0,
                extra,
                rule.as_ref().map_or(Strategy::Failover, |r| r.strategy),
                rule.as_ref()
                    .map_or_else(|| DEFAULT_TRIGGERS.to_vec(), |r| r.failover_on.clone()),
                rule.as_ref().and_then(|r| r.max_retries),
                tuning,
            );
            self.models_by_org.insert(key, Arc::new(built));
        }
    }

    pub fn into_parts(self) -> DbSnapshotParts {
        let model_order: Vec<String> = self
            .model_order
            .iter()
            .map(|(o, n)| model_key(o, n))
            .collect();
        let models = self
            .models_by_org
            .into_iter()
            .map(|((o, n), m)| (model_key(&o, &n), m))
            .collect();
        DbSnapshotParts {
            providers: self.providers,
            models,
            model_order,
            warnings: self.warnings,
            org_routing: self.org_routing,
            filter_rows: self.filter_rows,
        }
    }
}

/// An enabled row of `filters`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FilterRow {
    pub id: Uuid,
    pub organisation_id: Option<Uuid>,
    pub organisation_slug: Option<String>,
    pub name: String,
    pub kind: String,
    pub script: Option<String>,
    pub position: i32,
    pub on_error: String,
    pub read_only: bool,
    pub phases: Option<Vec<String>>,
    pub scope_keys: Vec<String>,
    pub scope_models: Vec<String>,
    pub settings: Value,
}

/// A row of `model_deployments` (enabled ones only), with the model's `policies->'routing'`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeploymentRow {
    pub model_id: Uuid,
    pub provider_id: Uuid,
    pub slug: String,
    pub weight: i32,
    pub priority: i32,
    pub routing: Option<serde_json::Value>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct ProviderRow {
    id: Uuid,
    organisation_id: Uuid,
    name: String,
    provider_type: String,
    base_url: String,
    timeout_ms: i32,
    enabled: bool,
    extra_headers: Value,
    options: Value,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct ProviderKeyRow {
    id: Uuid,
    provider_id: Uuid,
    envelope: Value,
    active: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct ModelRow {
    id: Uuid,
    organisation_id: Uuid,
    name: String,
    slug: String,
    model_type: String,
    provider_id: Uuid,
    provider_api_key_id: Option<Uuid>,
    input_price_nanos: i64,
    output_price_nanos: i64,
    cached_input_price_nanos: Option<i64>,
    reasoning_price_nanos: Option<i64>,
    image_price_nanos: i64,
    enabled: bool,
    /// SPEC §7 policy (`{}` when unset).
    policies: serde_json::Value,
}

/// The spec of a provider row; `Err` lists what is wrong with it.
fn provider_spec(row: &ProviderRow) -> Result<ProviderSpec, Vec<String>> {
    let mut errs = Vec::new();
    let kind = provider_kind_from_db(&row.provider_type).unwrap_or_else(|| {
        errs.push(format!(
            "provider_type: `{}` is not one of OPENAI, ANTHROPIC, GOOGLE, AZURE_OPENAI, VLLM, CUSTOM",
            row.provider_type
        ));
        ProviderKind::OpenAi
    });
    let mut spec = ProviderSpec::new(&row.name, kind, &row.base_url);
    spec.enabled = row.enabled;
    spec.timeout_ms = u64::try_from(row.timeout_ms).unwrap_or(0);
    let opt_str = |key: &str, errs: &mut Vec<String>| match row.options.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errs.push(format!("options.{key}: must be a string"));
            None
        }
    };
    spec.api_version = opt_str("api_version", &mut errs);
    spec.auth_header = opt_str("auth_header", &mut errs);
    for (key, slot) in [
        ("connect_timeout_ms", &mut spec.connect_timeout_ms),
        ("idle_timeout_ms", &mut spec.idle_timeout_ms),
    ] {
        match row.options.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(ms) => *slot = ms,
                None => errs.push(format!(
                    "options.{key}: must be a whole number of milliseconds"
                )),
            },
        }
    }
    match &row.extra_headers {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) => spec.headers.push((k.clone(), s.clone())),
                    _ => errs.push(format!("extra_headers.{k}: must be a string")),
                }
            }
        }
        _ => errs.push("extra_headers: must be an object".to_string()),
    }
    if errs.is_empty() {
        Ok(spec)
    } else {
        Err(errs)
    }
}

/// Renames the field of a [`build_provider`] problem to where it lives in the `providers` row.
fn column_of(problem: &str) -> String {
    for (field, column) in [
        ("headers.", "extra_headers."),
        ("auth_header:", "options.auth_header:"),
        ("connect_timeout_ms:", "options.connect_timeout_ms:"),
        ("idle_timeout_ms:", "options.idle_timeout_ms:"),
    ] {
        if let Some(rest) = problem.strip_prefix(field) {
            return format!("{column}{rest}");
        }
    }
    problem.to_string()
}

fn describe_provider(row: &ProviderRow) -> String {
    format!(
        "provider `{}` (id {}, organisation {})",
        row.name, row.id, row.organisation_id
    )
}

/// What [`assemble`] keeps per provider row while attaching models.
struct BuiltProvider<'a> {
    row: &'a ProviderRow,
    spec: ProviderSpec,
    default_key: Option<Uuid>,
    instance: Arc<Provider>,
    /// Instances for pinned credentials, by provider key id.
    pinned: HashMap<Uuid, Arc<Provider>>,
}

/// Opens a credential envelope; a failure becomes a warning and no credential.
fn open_credential(
    keys: &MasterKeys,
    key: &ProviderKeyRow,
    who: &str,
    warnings: &mut Vec<String>,
) -> Option<Secret> {
    match keys.decrypt(&key.envelope) {
        Ok(s) => Some(s),
        Err(e) => {
            warnings.push(format!(
                "{who}: cannot decrypt credential {}: {e}; the provider is loaded without a \
                 credential and requests to it will fail with provider_api_key_not_configured",
                key.id
            ));
            None
        }
    }
}

/// Turns the rows of one snapshot into a [`Catalog`]. Pure: no I/O, never fails.
fn assemble(
    keys: &MasterKeys,
    disabled: Vec<Uuid>,
    provider_rows: &[ProviderRow],
    key_rows: &[ProviderKeyRow],
    model_rows: &[ModelRow],
) -> Catalog {
    let mut cat = Catalog {
        disabled_organisations: disabled.iter().map(Uuid::to_string).collect(),
        ..Catalog::default()
    };
    // Keys per provider, newest first (the query's order).
    let mut keys_of: HashMap<Uuid, Vec<&ProviderKeyRow>> = HashMap::new();
    for k in key_rows {
        keys_of.entry(k.provider_id).or_default().push(k);
    }
    let key_by_id: HashMap<Uuid, &ProviderKeyRow> = key_rows.iter().map(|k| (k.id, k)).collect();

    let mut built: HashMap<Uuid, BuiltProvider<'_>> = HashMap::new();
    for row in provider_rows {
        let who = describe_provider(row);
        let spec = match provider_spec(row) {
            Ok(s) => s,
            Err(problems) => {
                cat.warnings
                    .push(format!("{who} skipped: {}", problems.join("; ")));
                continue;
            }
        };
        // The newest active credential (normally the only one).
        let default_key = keys_of
            .get(&row.id)
            .and_then(|ks| ks.iter().find(|k| k.active).copied());
        // Every active credential, newest first: used in turn, one that fails set aside.
        let secrets: Vec<_> = keys_of
            .get(&row.id)
            .map(|ks| {
                ks.iter()
                    .filter(|k| k.active)
                    .filter_map(|k| open_credential(keys, k, &who, &mut cat.warnings))
                    .collect()
            })
            .unwrap_or_default();
        match build_provider(&spec, secrets, None) {
            Ok(mut p) => {
                let org = row.organisation_id.to_string();
                p.organisation_id = Some(org.clone());
                let p = Arc::new(p);
                cat.providers.push(p.clone());
                cat.providers_by_id.insert(row.id, p.clone());
                cat.providers_by_name
                    .insert((org, row.name.clone()), (row.id, p.clone()));
                built.insert(
                    row.id,
                    BuiltProvider {
                        row,
                        spec,
                        default_key: default_key.map(|k| k.id),
                        instance: p,
                        pinned: HashMap::new(),
                    },
                );
            }
            Err(problems) => {
                let problems: Vec<String> = problems.iter().map(|p| column_of(p)).collect();
                cat.warnings
                    .push(format!("{who} skipped: {}", problems.join("; ")))
            }
        }
    }

    for m in model_rows {
        let org = m.organisation_id.to_string();
        let who = format!("model `{}` (id {}, organisation {org})", m.name, m.id);
        let mut problems = Vec::new();
        if !valid_name(&m.name) {
            problems.push(format!("name: `{}` {NAME_RULE}", m.name));
        }
        if !valid_slug(&m.slug) {
            problems.push(format!(
                "slug: `{}` is not a valid upstream model id",
                m.slug
            ));
        }
        let kind = model_type_from_db(&m.model_type);
        if kind.is_none() {
            problems.push(format!(
                "model_type: `{}` is not one of chat, reasoning, image, embeddings, audio, \
                 moderation, transcription, tts",
                m.model_type
            ));
        }
        let Some(bp) = built.get_mut(&m.provider_id) else {
            problems.push(format!(
                "provider {} was not loaded (see its warning)",
                m.provider_id
            ));
            cat.warnings
                .push(format!("{who} skipped: {}", problems.join("; ")));
            continue;
        };
        let policy = match crate::governance::policy::Policy::from_json(&m.policies) {
            Ok(p) => p.map(Arc::new),
            Err(e) => {
                problems.push(e);
                None
            }
        };
        let Some(kind) = kind.filter(|_| problems.is_empty()) else {
            cat.warnings
                .push(format!("{who} skipped: {}", problems.join("; ")));
            continue;
        };
        let provider = match m.provider_api_key_id {
            Some(kid) if Some(kid) != bp.default_key => {
                if let Some(p) = bp.pinned.get(&kid) {
                    p.clone()
                } else {
                    let pwho = describe_provider(bp.row);
                    let secret = match key_by_id.get(&kid) {
                        Some(k) if k.active && k.provider_id == m.provider_id => {
                            open_credential(keys, k, &pwho, &mut cat.warnings)
                        }
                        Some(k) if k.provider_id == m.provider_id => {
                            cat.warnings.push(format!(
                                "{who}: its pinned credential {kid} of {pwho} is revoked; \
                                 requests to it will fail with provider_api_key_not_configured"
                            ));
                            None
                        }
                        _ => {
                            cat.warnings.push(format!(
                                "{who}: its pinned credential {kid} does not belong to {pwho}; \
                                 requests to it will fail with provider_api_key_not_configured"
                            ));
                            None
                        }
                    };
                    match build_provider(&bp.spec, secret.into_iter().collect(), None) {
                        Ok(mut p) => {
                            p.organisation_id = Some(bp.row.organisation_id.to_string());
                            let p = Arc::new(p);
                            cat.providers.push(p.clone());
                            bp.pinned.insert(kid, p.clone());
                            p
                        }
                        // The spec built once already; keep the model on the default instance.
                        Err(_) => bp.instance.clone(),
                    }
                }
            }
            _ => bp.instance.clone(),
        };
        let key = (org, m.name.clone());
        if cat.models_by_org.contains_key(&key) {
            cat.warnings
                .push(format!("{who} skipped: duplicate model name"));
            continue;
        }
        let model = Model {
            name: m.name.clone(),
            slug: m.slug.clone(),
            kind,
            provider,
            pricing: pricing_from_nanos(
                m.input_price_nanos,
                m.output_price_nanos,
                m.cached_input_price_nanos,
                m.reasoning_price_nanos,
                m.image_price_nanos,
            ),
            enabled: m.enabled,
            uri_cache: Default::default(),
            weight: 1,
            priority: 0,
            deployments: None,
            policy,
        };
        cat.model_ids.insert(key.clone(), m.id);
        cat.model_order.push(key.clone());
        cat.models_by_org.insert(key, Arc::new(model));
    }
    cat
}

/// Loads the providers and models of all organisations in one consistent (repeatable-read,
/// read-only) snapshot. Each provider gets its newest active credential, decrypted with `keys`;
/// see the module documentation for what becomes a warning.
pub async fn load_catalog(pool: &PgPool, keys: &MasterKeys) -> Result<Catalog, LoadError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let disabled: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM organisations WHERE NOT enabled")
        .fetch_all(&mut *tx)
        .await?;
    let providers: Vec<ProviderRow> = sqlx::query_as(
        "SELECT id, organisation_id, name, provider_type::text AS provider_type, base_url,
                timeout_ms, enabled, extra_headers, options
           FROM providers
          ORDER BY organisation_id, created_at, id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let provider_keys: Vec<ProviderKeyRow> = sqlx::query_as(
        "SELECT id, provider_id, envelope, status = 'ACTIVE' AS active
           FROM provider_api_keys
          ORDER BY provider_id, created_at DESC, id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let models: Vec<ModelRow> = sqlx::query_as(
        "SELECT id, organisation_id, name, slug, model_type::text AS model_type, provider_id,
                provider_api_key_id, input_price_nanos, output_price_nanos,
                cached_input_price_nanos, reasoning_price_nanos, image_price_nanos, enabled,
                policies
           FROM models
          ORDER BY organisation_id, created_at, name",
    )
    .fetch_all(&mut *tx)
    .await?;
    let deployment_rows: Vec<DeploymentRow> = sqlx::query_as(
        "SELECT d.model_id, d.provider_id, d.slug, d.weight, d.priority,
                m.policies -> 'routing' AS routing
           FROM model_deployments d
           JOIN models m ON m.id = d.model_id
          WHERE d.enabled
          ORDER BY d.model_id, d.priority, d.created_at, d.id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let org_policies: Vec<(Uuid, serde_json::Value)> = sqlx::query_as(
        "SELECT id, routing_policy FROM organisations WHERE routing_policy <> '{}'::jsonb",
    )
    .fetch_all(&mut *tx)
    .await?;
    let filter_rows: Vec<FilterRow> = sqlx::query_as(
        "SELECT f.id, f.organisation_id, o.slug AS organisation_slug, f.name, f.kind, f.script,
                f.position, f.on_error, f.read_only, f.phases, f.scope_keys, f.scope_models,
                f.settings
           FROM filters f
           LEFT JOIN organisations o ON o.id = f.organisation_id
          WHERE f.enabled AND (o.id IS NULL OR o.enabled)
          ORDER BY f.position, f.created_at, f.id",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut cat = assemble(keys, disabled, &providers, &provider_keys, &models);
    cat.deployment_rows = deployment_rows;
    cat.filter_rows = filter_rows;
    for (org, v) in org_policies {
        match RoutingPolicy::parse(&v, "routing_policy") {
            Ok(p) => {
                cat.org_routing.insert(org.to_string(), Arc::new(p));
            }
            Err(e) => cat
                .warnings
                .push(format!("organisation {org}: routing policy ignored: {e}")),
        }
    }
    Ok(cat)
}

// ---------------------------------------------------------------------------------------------
// Virtual keys.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    organisation_id: Uuid,
    team_id: Option<Uuid>,
    user_id: Option<Uuid>,
    name: String,
    key_type: String,
    key_prefix: String,
    expires_at: Option<OffsetDateTime>,
    revoked: bool,
    routing_policy: serde_json::Value,
    models: Vec<String>,
    mcp_servers: Vec<String>,
    policies: serde_json::Value,
    team_policies: Option<serde_json::Value>,
    organisation_policies: Option<serde_json::Value>,
}

/// One virtual key by hash, with the names of the models it is granted (`all_models` is
/// false: database keys are granted model by model). `None` when no key has this hash.
/// Expired and revoked keys are returned as such (`expires_at`, `revoked`): deciding is the
/// caller's job, so that it can answer with the right error code.
pub async fn load_key(pool: &PgPool, hash: &KeyHash) -> Result<Option<VirtualKey>, LoadError> {
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT k.id, k.organisation_id, k.team_id, k.user_id, k.name,
                k.key_type::text AS key_type, k.key_prefix, k.expires_at,
                k.revoked_at IS NOT NULL AS revoked, k.routing_policy,
                ARRAY(SELECT m.name
                        FROM api_key_model_access a
                        JOIN models m ON m.id = a.model_id
                       WHERE a.api_key_id = k.id
                       ORDER BY m.name) AS models,
                ARRAY(SELECT a.mcp_server_id::text
                        FROM api_key_mcp_access a
                       WHERE a.api_key_id = k.id) AS mcp_servers,
                k.policies,
                (SELECT t.policies FROM teams t WHERE t.id = k.team_id) AS team_policies,
                (SELECT o.policies FROM organisations o WHERE o.id = k.organisation_id)
                    AS organisation_policies
           FROM api_keys k
          WHERE k.key_hash = $1",
    )
    .bind(hash.to_hex())
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let kind = key_type_from_db(&r.key_type).ok_or_else(|| {
        invalid(
            "api key",
            vec![format!("key_type: `{}` is not known", r.key_type)],
        )
    })?;
    let policy = |v: Option<&serde_json::Value>, what: &str| match v {
        None => Ok(None),
        Some(v) => crate::governance::policy::Policy::from_json(v)
            .map(|p| p.map(Arc::new))
            .map_err(|e| invalid("api key", vec![format!("{what}: {e}")])),
    };
    let policies = crate::governance::KeyPolicies {
        key: policy(Some(&r.policies), "policies")?,
        team: policy(r.team_policies.as_ref(), "team policies")?,
        organisation: policy(r.organisation_policies.as_ref(), "organisation policies")?,
    };
    Ok(Some(VirtualKey {
        id: r.id.to_string(),
        name: Some(r.name),
        prefix: Some(r.key_prefix),
        kind,
        organisation_id: r.organisation_id.to_string(),
        team_id: r.team_id.map(|t| t.to_string()),
        user_id: r.user_id.map(|u| u.to_string()),
        expires_at: r.expires_at.map(OffsetDateTime::unix_timestamp),
        revoked: r.revoked,
        all_models: false,
        models: r.models.into_iter().collect(),
        routing: match RoutingPolicy::parse(&r.routing_policy, "routing_policy") {
            Ok(p) if p.is_empty() => None,
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::warn!(key = %r.id, error = %e, "api key routing policy ignored");
                None
            }
        },
        policies,
        mcp_servers: r.mcp_servers.into_iter().collect(),
    }))
}

// ---------------------------------------------------------------------------------------------
// Writing rows (tests and the admin API).
// ---------------------------------------------------------------------------------------------

fn slugify(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-');
    let out: String = out.chars().take(48).collect();
    if out.is_empty() {
        "org".to_string()
    } else {
        out
    }
}

/// Creates an organisation; its slug is derived from the name (made unique with a random
/// suffix when taken).
pub async fn create_organisation(pool: &PgPool, name: &str) -> Result<Uuid, LoadError> {
    if name.trim().is_empty() {
        return Err(invalid(
            "organisation",
            vec!["name: must not be empty".to_string()],
        ));
    }
    let base = slugify(name);
    for attempt in 0..8 {
        let slug = if attempt == 0 {
            base.clone()
        } else {
            format!("{base}-{}", &Uuid::new_v4().simple().to_string()[..8])
        };
        let id: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO organisations (name, slug) VALUES ($1, $2)
             ON CONFLICT (slug) DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(&slug)
        .fetch_optional(pool)
        .await?;
        if let Some(id) = id {
            return Ok(id);
        }
    }
    Err(invalid(
        "organisation",
        vec![format!("slug: no free slug derived from `{base}`")],
    ))
}

/// Creates a provider (TOML defaults for everything not given) and, with `secret`, its
/// credential: the envelope sealed under the newest master key plus its [`crypto::preview`].
/// The values are checked with the rules of [`build_provider`] before anything is written.
pub async fn create_provider(
    pool: &PgPool,
    org: Uuid,
    name: &str,
    kind: ProviderKind,
    base_url: &str,
    keys: &MasterKeys,
    secret: Option<&str>,
) -> Result<Uuid, LoadError> {
    let spec = ProviderSpec::new(name, kind, base_url);
    build_provider(&spec, Vec::new(), None).map_err(|p| invalid("provider", p))?;
    let envelope = secret.map(|s| keys.encrypt(s)).transpose()?;
    let mut tx = pool.begin().await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO providers (organisation_id, name, provider_type, base_url, timeout_ms)
         VALUES ($1, $2, $3::provider_type, $4, $5) RETURNING id",
    )
    .bind(org)
    .bind(name)
    .bind(kind.as_str())
    .bind(base_url)
    .bind(i32::try_from(spec.timeout_ms).unwrap_or(i32::MAX))
    .fetch_one(&mut *tx)
    .await?;
    if let (Some(envelope), Some(secret)) = (envelope, secret) {
        sqlx::query(
            "INSERT INTO provider_api_keys (organisation_id, provider_id, envelope, preview)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(org)
        .bind(id)
        .bind(envelope)
        .bind(crypto::preview(secret))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

fn price_nanos(field: &str, v: u64, problems: &mut Vec<String>) -> i64 {
    i64::try_from(v).unwrap_or_else(|_| {
        problems.push(format!("pricing.{field}: {v} nanos-USD is too large"));
        0
    })
}

/// Creates a model of `org` served by `provider_id` (a provider of the same organisation).
/// All four prices are stored, so `pricing.cached`/`pricing.reasoning` are taken as given.
pub async fn create_model(
    pool: &PgPool,
    org: Uuid,
    name: &str,
    slug: &str,
    kind: ModelType,
    provider_id: Uuid,
    pricing: Pricing,
) -> Result<Uuid, LoadError> {
    let mut problems = Vec::new();
    if !valid_name(name) {
        problems.push(format!("name: `{name}` {NAME_RULE}"));
    }
    if !valid_slug(slug) {
        problems.push(format!("slug: `{slug}` is not a valid upstream model id"));
    }
    let input = price_nanos("input", pricing.input, &mut problems);
    let output = price_nanos("output", pricing.output, &mut problems);
    let cached = price_nanos("cached", pricing.cached, &mut problems);
    let reasoning = price_nanos("reasoning", pricing.reasoning, &mut problems);
    let image = price_nanos("image", pricing.image, &mut problems);
    if !problems.is_empty() {
        return Err(invalid("model", problems));
    }
    let id = sqlx::query_scalar(
        "INSERT INTO models (organisation_id, name, slug, model_type, provider_id,
                             input_price_nanos, output_price_nanos,
                             cached_input_price_nanos, reasoning_price_nanos, image_price_nanos)
         VALUES ($1, $2, $3, $4::model_type, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(org)
    .bind(name)
    .bind(slug)
    .bind(kind.as_str())
    .bind(provider_id)
    .bind(input)
    .bind(output)
    .bind(cached)
    .bind(reasoning)
    .bind(image)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// Length of the stored display prefix: [`keys::KEY_PREFIX`] plus 4 characters of the secret.
pub const DISPLAY_PREFIX_LEN: usize = keys::KEY_PREFIX.len() + 4;

/// Creates a virtual key of `org` granted `models` (models of the same organisation). Returns
/// its id and the secret, which is not stored anywhere (only its SHA-256 hash and a short
/// display prefix are) and must be shown to the caller once.
pub async fn create_api_key(
    pool: &PgPool,
    org: Uuid,
    kind: KeyType,
    team_id: Option<Uuid>,
    user_id: Option<Uuid>,
    name: &str,
    models: &[Uuid],
) -> Result<(Uuid, String), LoadError> {
    let mut problems = Vec::new();
    if name.trim().is_empty() {
        problems.push("name: must not be empty".to_string());
    }
    match kind {
        KeyType::Organisation if team_id.is_some() || user_id.is_some() => {
            problems.push("an ORGANISATION key belongs to no team or user".to_string())
        }
        KeyType::Team if team_id.is_none() || user_id.is_some() => {
            problems.push("a TEAM key needs a team_id and no user_id".to_string())
        }
        KeyType::User if user_id.is_none() => {
            problems.push("a USER key needs a user_id".to_string())
        }
        _ => {}
    }
    if !problems.is_empty() {
        return Err(invalid("api key", problems));
    }
    let mut grants: Vec<Uuid> = models.to_vec();
    grants.sort_unstable();
    grants.dedup();

    let (secret, hash) = keys::generate();
    let prefix: String = secret.chars().take(DISPLAY_PREFIX_LEN).collect();
    let mut tx = pool.begin().await?;
    let found: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM models WHERE organisation_id = $1 AND id = ANY($2)")
            .bind(org)
            .bind(&grants)
            .fetch_all(&mut *tx)
            .await?;
    let missing: Vec<String> = grants
        .iter()
        .filter(|g| !found.contains(g))
        .map(|g| format!("models: {g} is not a model of organisation {org}"))
        .collect();
    if !missing.is_empty() {
        return Err(invalid("api key", missing));
    }
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO api_keys (organisation_id, team_id, user_id, name, key_type, key_prefix, key_hash)
         VALUES ($1, $2, $3, $4, $5::api_key_type, $6, $7) RETURNING id",
    )
    .bind(org)
    .bind(team_id)
    .bind(user_id)
    .bind(name)
    .bind(kind.as_str())
    .bind(&prefix)
    .bind(hash.to_hex())
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO api_key_model_access (organisation_id, api_key_id, model_id)
         SELECT $1, $2, m FROM unnest($3::uuid[]) AS m",
    )
    .bind(org)
    .bind(id)
    .bind(&grants)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((id, secret))
}

/// Sets (or, with `None`, clears) a key's expiry.
pub async fn set_api_key_expiry(
    pool: &PgPool,
    id: Uuid,
    expires_at: Option<OffsetDateTime>,
) -> Result<(), LoadError> {
    let done = sqlx::query("UPDATE api_keys SET expires_at = $2 WHERE id = $1")
        .bind(id)
        .bind(expires_at)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(LoadError::NotFound {
            what: "api key",
            id,
        });
    }
    Ok(())
}

/// Revokes a key (idempotent: revoking a revoked key keeps its first revocation time).
pub async fn revoke_api_key(pool: &PgPool, id: Uuid) -> Result<(), LoadError> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    if done.rows_affected() == 0 {
        return Err(LoadError::NotFound {
            what: "api key",
            id,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::SocketAddr;
    use std::time::Duration;

    fn master() -> MasterKeys {
        MasterKeys::parse(&format!("t:{}", MasterKeys::generate_key())).expect("keys")
    }

    fn prow(name: &str, kind: &str, url: &str) -> ProviderRow {
        ProviderRow {
            id: Uuid::new_v4(),
            organisation_id: Uuid::new_v4(),
            name: name.into(),
            provider_type: kind.into(),
            base_url: url.into(),
            timeout_ms: 60_000,
            enabled: true,
            extra_headers: json!({}),
            options: json!({}),
        }
    }

    fn mrow(p: &ProviderRow, name: &str) -> ModelRow {
        ModelRow {
            id: Uuid::new_v4(),
            organisation_id: p.organisation_id,
            name: name.into(),
            slug: "up-1".into(),
            model_type: "chat".into(),
            provider_id: p.id,
            provider_api_key_id: None,
            input_price_nanos: 10,
            output_price_nanos: 20,
            cached_input_price_nanos: None,
            reasoning_price_nanos: Some(30),
            image_price_nanos: 40,
            enabled: true,
            policies: json!({}),
        }
    }

    /// The database path builds the same provider as the TOML path.
    #[test]
    fn providers_match_the_toml_path() {
        let toml = r#"
[[providers]]
name = "p"
type = "ANTHROPIC"
base_url = "https://api.example.com:8443/"
timeout_ms = 1234
api_version = "2024"
headers = { "X-Extra" = "1" }

[[providers]]
name = "g"
type = "GOOGLE"
base_url = "http://127.0.0.1:9000"

[[providers]]
name = "a"
type = "AZURE_OPENAI"
base_url = "https://x.openai.azure.com"
auth_header = "X-Custom-Key"
"#;
        let cfg = crate::config::parse(toml).expect("valid toml");
        let specs = [
            ProviderSpec {
                timeout_ms: 1234,
                api_version: Some("2024".into()),
                headers: vec![("X-Extra".into(), "1".into())],
                ..ProviderSpec::new(
                    "p",
                    ProviderKind::Anthropic,
                    "https://api.example.com:8443/",
                )
            },
            ProviderSpec {
                timeout_ms: 300_000,
                ..ProviderSpec::new("g", ProviderKind::Google, "http://127.0.0.1:9000")
            },
            ProviderSpec {
                timeout_ms: 300_000,
                auth_header: Some("X-Custom-Key".into()),
                ..ProviderSpec::new("a", ProviderKind::AzureOpenAi, "https://x.openai.azure.com")
            },
        ];
        for (spec, want) in specs.iter().zip(&cfg.providers) {
            let got = build_provider(spec, Vec::new(), None).expect("valid spec");
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{}", spec.name);
        }
        let g = build_provider(&specs[1], Vec::new(), None).expect("valid");
        assert_eq!(g.base_path, "/v1beta");
        assert_eq!(g.auth_header.as_str(), "x-goog-api-key");
        assert_eq!(
            g.addrs.load().as_slice(),
            &["127.0.0.1:9000".parse::<SocketAddr>().expect("addr")]
        );
    }

    #[test]
    fn bad_provider_specs_list_every_problem() {
        let spec = ProviderSpec {
            headers: vec![("bad header".into(), "v".into())],
            connect_timeout_ms: 0,
            ..ProviderSpec::new("bad name", ProviderKind::OpenAi, "ftp://x?y=1")
        };
        let errs = build_provider(&spec, Vec::new(), None).expect_err("invalid");
        let all = errs.join("\n");
        for needle in [
            "name:",
            "must start with http",
            "query string",
            "headers.bad header",
            "connect_timeout_ms",
        ] {
            assert!(all.contains(needle), "{needle} in {all}");
        }
    }

    #[test]
    fn enum_spellings() {
        for k in [
            "OPENAI",
            "ANTHROPIC",
            "GOOGLE",
            "AZURE_OPENAI",
            "VLLM",
            "CUSTOM",
        ] {
            assert_eq!(provider_kind_from_db(k).map(|k| k.as_str()), Some(k));
        }
        assert_eq!(provider_kind_from_db("openai"), None);
        assert_eq!(
            model_type_from_db("embeddings"),
            Some(ModelType::Embeddings)
        );
        assert_eq!(model_type_from_db("nope"), None);
        assert_eq!(key_type_from_db("TEAM"), Some(KeyType::Team));
        assert_eq!(
            pricing_from_nanos(1, 2, None, None, 3),
            Pricing {
                input: 1,
                output: 2,
                cached: 1,
                reasoning: 2,
                image: 3,
            }
        );
    }

    #[test]
    fn assembly_skips_bad_rows_with_warnings() {
        let keys = master();
        let mut good = prow("good", "OPENAI", "http://127.0.0.1:1");
        good.extra_headers = json!({"X-A": "b"});
        good.options = json!({"connect_timeout_ms": 7, "api_version": "v"});
        let mut bad_opts = prow("opts", "OPENAI", "http://127.0.0.1:1");
        bad_opts.options = json!({"idle_timeout_ms": "soon"});
        let bad_url = prow("url", "CUSTOM", "http://");
        let unknown_kind = prow("kind", "MISTRAL", "http://127.0.0.1:1");
        let k1 = ProviderKeyRow {
            id: Uuid::new_v4(),
            provider_id: good.id,
            envelope: keys.encrypt("sk-good").expect("encrypt"),
            active: true,
        };
        let revoked = ProviderKeyRow {
            id: Uuid::new_v4(),
            provider_id: good.id,
            envelope: keys.encrypt("sk-revoked").expect("encrypt"),
            active: false,
        };
        let m_ok = mrow(&good, "m");
        let mut m_bad_name = mrow(&good, "has space");
        m_bad_name.slug = "a\"b".into();
        let m_orphan = mrow(&bad_url, "orphan");
        let mut m_pinned = mrow(&good, "pinned");
        m_pinned.provider_api_key_id = Some(revoked.id);
        let cat = assemble(
            &keys,
            vec![bad_url.organisation_id],
            &[good.clone(), bad_opts, bad_url.clone(), unknown_kind],
            &[k1, revoked],
            &[m_ok, m_bad_name, m_orphan, m_pinned],
        );
        let w = cat.warnings.join("\n");
        assert_eq!(cat.warnings.len(), 6, "{w}");
        assert!(w.contains("options.idle_timeout_ms"), "{w}");
        assert!(w.contains("base_url: `http://`"), "{w}");
        assert!(w.contains("`MISTRAL`"), "{w}");
        assert!(w.contains("name: `has space`"), "{w}");
        assert!(w.contains("slug:"), "{w}");
        assert!(w.contains("orphan"), "{w}");
        assert!(w.contains("revoked"), "{w}");
        assert!(!w.contains("sk-"), "{w}");
        let org = good.organisation_id.to_string();
        let m = cat.model(&org, "m").expect("model m");
        assert_eq!(
            m.provider.api_key.as_ref().map(Secret::expose),
            Some("sk-good")
        );
        assert_eq!(m.provider.connect_timeout, Duration::from_millis(7));
        assert_eq!(m.provider.api_version.as_deref(), Some("v"));
        assert_eq!(m.provider.headers[0].0.as_str(), "x-a");
        assert_eq!(m.pricing.cached, 10);
        assert_eq!(m.pricing.reasoning, 30);
        assert_eq!(m.pricing.image, 40);
        let pinned = cat.model(&org, "pinned").expect("pinned model");
        assert!(pinned.provider.api_key.is_none());
        assert_eq!(cat.providers.len(), 2, "default + pinned instance");
        assert!(!cat.organisation_enabled(&bad_url.organisation_id.to_string()));
        assert!(cat.organisation_enabled(&org));
        assert_eq!(cat.models_of(&org).len(), 2);
        assert!(cat.provider(&org, "good").is_some());
        assert_eq!(cat.provider_id(&org, "good"), Some(good.id));
        let parts = cat.into_parts();
        assert_eq!(
            parts.model_order,
            vec![model_key(&org, "m"), model_key(&org, "pinned")]
        );
        assert!(parts.models.contains_key(&format!("{org}/m")));
    }

    #[test]
    fn organisation_slugs() {
        assert_eq!(slugify("Acme Corp."), "acme-corp");
        assert_eq!(slugify("  --Ünï  "), "n");
        assert_eq!(slugify("***"), "org");
    }
}
