//! The catalog: providers and models of every organisation, assembled from one consistent
//! snapshot of their rows.

use super::rows::{
    column_of, describe_provider, model_type_from_db, pricing_from_nanos, provider_spec,
    DeploymentRow, FilterRow, ModelRow, ProviderKeyRow, ProviderRow,
};
use super::LoadError;
use crate::config::provider::{build_provider, valid_name, valid_slug, ProviderSpec, NAME_RULE};
use crate::config::{Model, Provider, Secret};
use crate::db::crypto::MasterKeys;
use crate::types::routing::{RouterConfig, Strategy};
use crate::types::routing_policy::{RoutingPolicy, DEFAULT_TRIGGERS};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

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
        let policy = match crate::types::policy::Policy::from_json(&m.policies) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
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
}
