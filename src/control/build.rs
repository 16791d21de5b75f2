//! The one way a snapshot's configuration is built: the file, validated, then every store's
//! catalog merged in (start-up, file reload, change notifications, the periodic refresh and the
//! invalidation route all go through [`build`]).

use super::store::{load_catalogs, Store};
use crate::config::{self, Config, ConfigError, OrgModels};
use crate::db::crypto::MasterKeys;
use crate::db::load::load_catalog;
use crate::db::{self};
use crate::filters::FilterSet;
use sqlx::PgPool;
use std::sync::Arc;

/// Adds the database catalog to a configuration loaded from the file.
pub async fn merge_catalog(
    cfg: &mut Config,
    pool: &PgPool,
    keys: &MasterKeys,
) -> Result<(), String> {
    let mut catalog = load_catalog(pool, keys).await.map_err(|e| e.to_string())?;
    catalog.apply_routing(cfg.routing);
    let parts = catalog.into_parts();
    for w in &parts.warnings {
        tracing::warn!(warning = %w, "database catalog");
    }
    let mut org_models: std::collections::HashMap<String, OrgModels> = Default::default();
    for qualified in &parts.model_order {
        let Some(model) = parts.models.get(qualified) else {
            continue;
        };
        let Some((org, name)) = qualified.split_once('/') else {
            continue;
        };
        let entry = org_models.entry(org.to_string()).or_default();
        entry.order.push(name.to_string());
        entry.by_name.insert(name.to_string(), model.clone());
    }
    cfg.providers.extend(parts.providers);
    cfg.org_models = org_models;
    // The file's organisation policies win over the database's for the same organisation.
    for (org, p) in parts.org_routing {
        cfg.org_routing.entry(org).or_insert(p);
    }
    cfg.warnings.extend(parts.warnings);
    let (mcp, mcp_warnings) = crate::db::load::mcp::load(pool, keys)
        .await
        .map_err(|e| format!("mcp servers: {e}"))?;
    for w in &mcp_warnings {
        tracing::warn!(warning = %w, "database catalog");
    }
    cfg.mcp.by_org = mcp;
    cfg.warnings.extend(mcp_warnings);
    if !parts.filter_rows.is_empty() {
        cfg.db_filters =
            crate::filters::config::from_db_rows(&parts.filter_rows).map_err(|e| e.join("; "))?;
    }
    Ok(())
}

/// Connects, checks the schema (a server refuses an outdated one) and loads the catalog into
/// `cfg`: the first load, done before any listener opens.
pub async fn initial_load(cfg: &mut Config, keys: &MasterKeys) -> Result<(), String> {
    let Some(d) = &cfg.database else {
        return Ok(());
    };
    if d.url.expose().is_empty() {
        return Err(format!(
            "database mode: environment variable `{}` is not set",
            d.url_env
        ));
    }
    let pool = db::connect(d.url.expose())
        .await
        .map_err(|e| format!("database: {e}"))?;
    db::check_schema(&pool)
        .await
        .map_err(|e| format!("database: {e}"))?;
    let r = merge_catalog(cfg, &pool, keys).await;
    pool.close().await;
    r
}

/// The filter chains of a configuration, built and checked: the file's, then the database's
/// (a database filter may not reuse a file filter's name).
pub fn filters(cfg: &Config) -> Result<Arc<FilterSet>, ConfigError> {
    let mut errs = Vec::new();
    let file = crate::filters::build(&cfg.filters, &mut errs);
    if !errs.is_empty() {
        return Err(ConfigError(errs));
    }
    if cfg.db_filters.is_empty() {
        return Ok(Arc::new(file));
    }
    crate::filters::config::merge_db(&file, &cfg.db_filters)
        .map(Arc::new)
        .map_err(ConfigError)
}

/// The file read and checked, filters included, with nothing of a database: `wharf check`.
pub fn check_file(path: &str) -> Result<Config, ConfigError> {
    let cfg = config::load(path)?;
    filters(&cfg)?;
    Ok(cfg)
}

/// A new configuration for a running gateway: the file read and validated again, then every
/// store's catalog merged in (file first), then the filter chains built. Reload, change
/// notifications, the periodic refresh and the invalidation route all come here; start-up does
/// the same with a short-lived pool ([`initial_load`]), because the long-lived one is made
/// inside the server's runtimes.
pub async fn build(
    path: &str,
    stores: &[Arc<dyn Store>],
) -> Result<(Config, Arc<FilterSet>), ConfigError> {
    let owned = path.to_string();
    let mut cfg = tokio::task::spawn_blocking(move || config::load(&owned))
        .await
        .map_err(|e| ConfigError(vec![format!("reload task failed: {e}")]))??;
    load_catalogs(stores, &mut cfg)
        .await
        .map_err(|e| ConfigError(vec![e]))?;
    // Lua scripts are read and compiled here: off the runtime's threads.
    tokio::task::spawn_blocking(move || filters(&cfg).map(|f| (cfg, f)))
        .await
        .map_err(|e| ConfigError(vec![format!("reload task failed: {e}")]))?
}
