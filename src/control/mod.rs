//! The control plane: the only writer of the configuration snapshot.
//!
//! - [`snapshot`]: one immutable generation of the configuration;
//! - [`build`]: the file plus every store's catalog → a configuration (one function for
//!   start-up, reload, change notifications, refresh and invalidations);
//! - [`store`]: where catalog and keys come from (the file, Postgres);
//! - [`db_mode`]: database mode's key caches;
//! - [`state`]: what the services share, with the `ArcSwap` that holds the snapshot;
//! - here: invalidations (local and fanned out through Redis) and the control service
//!   (pool, `LISTEN`/`NOTIFY`, periodic refresh).

pub mod build;
pub mod db_mode;
pub mod snapshot;
pub mod state;
pub mod store;

pub use build::{initial_load, merge_catalog};
pub use db_mode::DbMode;
pub use snapshot::Snapshot;
pub use state::State;

use crate::db::{self, ChangeOp, ConfigChange};
use crate::keys::KeyHash;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use sqlx::PgPool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Redis channel carrying invalidations between nodes.
pub const REDIS_CHANNEL: &str = "wharf:invalidate";

/// What an invalidation message asks for.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Invalidation {
    /// Key hashes (hex) to forget.
    #[serde(default)]
    pub key_hashes: Vec<String>,
    /// Forget every cached key.
    #[serde(default)]
    pub all_keys: bool,
    /// Reload the catalog (providers, models).
    #[serde(default)]
    pub reload: bool,
}

/// Applies an invalidation on this node.
pub async fn apply(state: &State, inv: &Invalidation) {
    if let Some(db) = &state.db {
        for h in &inv.key_hashes {
            if let Some(hash) = KeyHash::from_hex(h) {
                db.invalidate_key(&hash).await;
            }
        }
        if inv.all_keys {
            db.invalidate_all_keys();
        }
    }
    if inv.reload {
        let _ = state.reload().await;
        state.governance.reload_db_meters().await;
    }
}

/// Publishes an invalidation to the other nodes (no-op without Redis).
pub async fn publish(state: &State, inv: &Invalidation) -> Result<(), String> {
    let Some(url) = state.current().config.redis_url.clone() else {
        return Ok(());
    };
    use fred::prelude::*;
    let cfg = Config::from_url(&url).map_err(|e| e.to_string())?;
    let client = Builder::from_config(cfg)
        .build()
        .map_err(|e| e.to_string())?;
    client.init().await.map_err(|e| e.to_string())?;
    let payload = serde_json::to_string(inv).map_err(|e| e.to_string())?;
    let r: Result<i64, _> = client.publish(REDIS_CHANNEL, payload).await;
    let _ = client.quit().await;
    r.map(|_| ()).map_err(|e| e.to_string())
}

/// Probes Redis every two seconds for `/v1/healthz`.
pub struct RedisProbe {
    pub state: Arc<State>,
    pub url: String,
}

#[async_trait]
impl BackgroundService for RedisProbe {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use fred::prelude::*;
        let Some(flag) = &self.state.redis_healthy else {
            return;
        };
        let client = Config::from_url(&self.url).ok().and_then(|c| {
            Builder::from_config(c)
                .with_connection_config(|cc| {
                    cc.connection_timeout = Duration::from_secs(2);
                })
                .build()
                .ok()
        });
        let Some(client) = client else {
            tracing::error!("redis: invalid URL");
            return;
        };
        let _conn = client.init().await;
        loop {
            let ok = tokio::time::timeout(Duration::from_secs(2), client.ping::<String>(None))
                .await
                .is_ok_and(|r| r.is_ok());
            flag.store(ok, Ordering::Relaxed);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
}

/// The control service (database mode): owns the pool, listens for changes, refreshes, probes.
pub struct ControlSync {
    pub state: Arc<State>,
}

impl ControlSync {
    async fn connect_pool(&self, db: &DbMode) -> PgPool {
        loop {
            match db::connect(db.settings.url.expose()).await {
                Ok(p) => return p,
                Err(e) => {
                    db.healthy.store(false, Ordering::Relaxed);
                    tracing::error!(error = %e, "cannot connect to Postgres; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn on_change(&self, db: &DbMode, payload: &str) {
        let change = match ConfigChange::parse(payload) {
            Ok(c) => c,
            Err(_) => {
                self.full_refresh(db).await;
                return;
            }
        };
        if change.table == "api_keys" && change.op != ChangeOp::Truncate {
            for h in [&change.key_hash, &change.old_key_hash]
                .into_iter()
                .flatten()
            {
                if let Some(hash) = KeyHash::from_hex(h) {
                    db.invalidate_key(&hash).await;
                }
            }
            return;
        }
        // Budgets and quotas (prepaid balances and their top-ups included) are the governance
        // meter list, not the catalog: reload just that list.
        if change.table == "budgets" || change.table == "quotas" {
            self.state.governance.reload_db_meters().await;
            return;
        }
        // Grants, memberships, organisations, providers, models: reload the catalog and drop
        // cached key lookups (their grants may have changed).
        db.invalidate_all_keys();
        let _ = self.state.reload().await;
    }

    async fn full_refresh(&self, db: &DbMode) {
        if self.state.reload().await.is_ok() {
            db.invalidate_all_keys();
        }
        self.state.governance.reload_db_meters().await;
    }

    async fn redis_listener(state: Arc<State>, url: String) {
        use fred::prelude::*;
        loop {
            let run = async {
                let cfg = Config::from_url(&url).map_err(|e| e.to_string())?;
                let sub = Builder::from_config(cfg)
                    .build_subscriber_client()
                    .map_err(|e| e.to_string())?;
                sub.init().await.map_err(|e| e.to_string())?;
                let _resubscribe = sub.manage_subscriptions();
                let mut rx = sub.message_rx();
                sub.subscribe(REDIS_CHANNEL)
                    .await
                    .map_err(|e| e.to_string())?;
                while let Ok(msg) = rx.recv().await {
                    let text: Option<String> = msg.value.convert().ok();
                    if let Some(inv) =
                        text.and_then(|t| serde_json::from_str::<Invalidation>(&t).ok())
                    {
                        apply(&state, &inv).await;
                    }
                }
                Ok::<(), String>(())
            };
            if let Err(e) = run.await {
                tracing::warn!(error = %e, "Redis subscription lost; retrying");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[async_trait]
impl BackgroundService for ControlSync {
    /// The proxy service depends on this one: it opens its listener only once the pool exists.
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let Some(db) = self.state.db.clone() else {
            ready.notify_ready();
            return;
        };
        if let Some(url) = self.state.current().config.redis_url.clone() {
            tokio::spawn(Self::redis_listener(self.state.clone(), url));
        }
        let pool = self.connect_pool(&db).await;
        db.pool.store(Some(Arc::new(pool.clone())));
        db.healthy.store(true, Ordering::Relaxed);
        // Traffic starts once the first LISTEN and its catch-up refresh are done (or the first
        // attempt failed: an outage must not keep the listener closed), so no key cached by an
        // early request is dropped by that refresh.
        let mut ready = Some(ready);
        let mut refresh = tokio::time::interval(db.settings.refresh_interval);
        refresh.tick().await;
        let mut probe = tokio::time::interval(Duration::from_secs(2));
        'listen: loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    db.healthy.store(false, Ordering::Relaxed);
                    if let Some(r) = ready.take() {
                        r.notify_ready();
                    }
                    tracing::warn!(error = %e, "cannot LISTEN; retrying");
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'listen,
                    }
                }
            };
            if let Err(e) = listener.listen(db::CONFIG_CHANNEL).await {
                if let Some(r) = ready.take() {
                    r.notify_ready();
                }
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // Changes may have been missed while not listening.
            self.full_refresh(&db).await;
            if let Some(r) = ready.take() {
                r.notify_ready();
            }
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    n = listener.try_recv() => match n {
                        Ok(Some(n)) => self.on_change(&db, n.payload()).await,
                        Ok(None) | Err(_) => {
                            db.healthy.store(false, Ordering::Relaxed);
                            continue 'listen;
                        }
                    },
                    _ = refresh.tick() => self.full_refresh(&db).await,
                    _ = probe.tick() => {
                        let ok = tokio::time::timeout(
                            Duration::from_secs(2),
                            sqlx::query("SELECT 1").execute(&pool),
                        )
                        .await
                        .is_ok_and(|r| r.is_ok());
                        db.healthy.store(ok, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}
