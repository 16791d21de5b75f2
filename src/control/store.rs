//! Where the gateway's catalog and virtual keys come from (SPEC §6): one interface, two
//! implementations. The TOML file is always a store; in database mode Postgres is a second one,
//! consulted after the file. Both produce the same internal structures (`Config`, `Model`,
//! `VirtualKey`), so the request path does not know which store answered.
//!
//! - [`TomlStore`]: the catalog is the validated file itself; keys are looked up in the snapshot.
//! - [`PgStore`]: the catalog is loaded from Postgres in one consistent snapshot and merged into
//!   the configuration; keys are looked up by hash through the moka cache of [`DbMode`]
//!   (positive entries bounded by the key's expiry, negative entries for unknown hashes, the
//!   last known copy served while Postgres is down).

use super::DbMode;
use super::Snapshot;
use crate::config::{Config, VirtualKey};
use crate::error::GatewayError;
use crate::keys::KeyHash;
use async_trait::async_trait;
use std::sync::Arc;

/// A source of catalog and keys.
#[async_trait]
pub trait Store: Send + Sync {
    /// For logs and health reports.
    fn name(&self) -> &'static str;

    /// Adds this store's catalog (providers, models, deployments, organisation routing
    /// policies) to a configuration freshly read from the file.
    async fn load_catalog(&self, cfg: &mut Config) -> Result<(), String>;

    /// The key with this hash, if this store has it. `Err`: the store cannot answer (down and
    /// nothing cached): `503 dependency_unavailable`.
    async fn key(
        &self,
        snap: &Snapshot,
        hash: KeyHash,
    ) -> Result<Option<Arc<VirtualKey>>, GatewayError>;
}

/// The TOML file.
pub struct TomlStore;

#[async_trait]
impl Store for TomlStore {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn load_catalog(&self, _cfg: &mut Config) -> Result<(), String> {
        // The file is the configuration: `config::load` already validated it.
        Ok(())
    }

    async fn key(
        &self,
        snap: &Snapshot,
        hash: KeyHash,
    ) -> Result<Option<Arc<VirtualKey>>, GatewayError> {
        Ok(snap.config.keys.get(&hash).cloned())
    }
}

/// Postgres, through the caches of [`DbMode`].
pub struct PgStore {
    pub db: Arc<DbMode>,
}

#[async_trait]
impl Store for PgStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn load_catalog(&self, cfg: &mut Config) -> Result<(), String> {
        let Some(pool) = self.db.pool.load_full() else {
            return Err("not connected yet".to_string());
        };
        crate::control::merge_catalog(cfg, &pool, &self.db.master_keys).await
    }

    async fn key(
        &self,
        _snap: &Snapshot,
        hash: KeyHash,
    ) -> Result<Option<Arc<VirtualKey>>, GatewayError> {
        self.db.key(hash).await
    }
}

/// The stores of a deployment, in lookup order: the file, then Postgres when configured.
pub fn stores(db: Option<&Arc<DbMode>>) -> Vec<Arc<dyn Store>> {
    let mut v: Vec<Arc<dyn Store>> = vec![Arc::new(TomlStore)];
    if let Some(db) = db {
        v.push(Arc::new(PgStore { db: db.clone() }));
    }
    v
}

/// Looks `hash` up in each store in turn; the first that has it answers.
pub async fn find_key(
    stores: &[Arc<dyn Store>],
    snap: &Snapshot,
    hash: KeyHash,
) -> Result<Option<Arc<VirtualKey>>, GatewayError> {
    for s in stores {
        if let Some(k) = s.key(snap, hash).await? {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

/// Reads the catalog of every store into `cfg` (file first).
pub async fn load_catalogs(stores: &[Arc<dyn Store>], cfg: &mut Config) -> Result<(), String> {
    for s in stores {
        s.load_catalog(cfg)
            .await
            .map_err(|e| format!("{} catalog: {e}", s.name()))?;
    }
    Ok(())
}
