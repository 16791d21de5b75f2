//! Database mode: Postgres is the source of truth; the data plane reads in-process caches.
//!
//! * The catalog (providers, models per organisation) is loaded into the configuration
//!   snapshot, at start (before the listener accepts traffic) and on every change.
//! * Keys are looked up by SHA-256 hash on first use and cached in moka: positive entries for
//!   `key_cache_ttl` (never past the key's own expiry), unknown keys for `negative_cache_ttl`.
//!   A last-known copy of every positive entry survives a Postgres outage, so cached keys keep
//!   working while it is down; an uncached key then gets `503 dependency_unavailable`.
//! * Changes reach every node within a second three ways: Postgres `NOTIFY` (triggers on every
//!   config table, so direct SQL changes count), the invalidation route (fanned out to the
//!   other nodes through Redis pub/sub), and a periodic full refresh as the safety net.

use crate::config::{Config, DatabaseConfig, OrgModels, VirtualKey};
use crate::db::crypto::MasterKeys;
use crate::db::load::{load_catalog, load_key};
use crate::db::{self, ChangeOp, ConfigChange};
use crate::error::{ErrorCode, GatewayError};
use crate::keys::KeyHash;
use crate::state::State;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use moka::future::Cache;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Redis channel carrying invalidations between nodes.
pub const REDIS_CHANNEL: &str = "wharf:invalidate";

/// A cached key lookup: `None` = unknown key.
type KeyEntry = Option<Arc<VirtualKey>>;

struct KeyExpiry {
    ttl: Duration,
    negative: Duration,
}

impl moka::Expiry<KeyHash, KeyEntry> for KeyExpiry {
    fn expire_after_create(&self, _k: &KeyHash, v: &KeyEntry, _at: Instant) -> Option<Duration> {
        Some(match v {
            None => self.negative,
            Some(k) => match k.expires_at {
                Some(exp) => {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0);
                    let left = Duration::from_secs(exp.saturating_sub(now).max(0) as u64);
                    // Past its expiry the key must be re-read (and then answer 401 expired).
                    self.ttl.min(left + Duration::from_secs(1))
                }
                None => self.ttl,
            },
        })
    }
}

/// Database mode state shared by the data plane and the control service.
pub struct DbMode {
    pub settings: DatabaseConfig,
    pub master_keys: MasterKeys,
    pub pool: crate::db::PoolSlot,
    keys: Cache<KeyHash, KeyEntry>,
    stale: Cache<KeyHash, Arc<VirtualKey>>,
    healthy: AtomicBool,
}

impl DbMode {
    /// Caches sized from the settings; the pool arrives later from the control service.
    pub fn new(settings: DatabaseConfig, master_keys: MasterKeys) -> DbMode {
        let keys = Cache::builder()
            .max_capacity(settings.key_cache_capacity)
            .expire_after(KeyExpiry {
                ttl: settings.key_cache_ttl,
                negative: settings.negative_cache_ttl,
            })
            .build();
        let stale = Cache::builder()
            .max_capacity(settings.key_cache_capacity)
            .build();
        DbMode {
            settings,
            master_keys,
            pool: Arc::new(ArcSwapOption::empty()),
            keys,
            stale,
            healthy: AtomicBool::new(true),
        }
    }

    /// Whether Postgres answered the last probe.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The key with this hash: from cache, else from Postgres (one query, shared by
    /// concurrent lookups of the same hash).
    pub async fn key(&self, hash: KeyHash) -> Result<KeyEntry, GatewayError> {
        let unavailable = || {
            GatewayError::new(
                ErrorCode::DependencyUnavailable,
                "the key store is unavailable",
            )
        };
        let Some(pool) = self.pool.load_full() else {
            return self
                .stale
                .get(&hash)
                .await
                .map(Some)
                .ok_or_else(unavailable);
        };
        // The last-known copy is refreshed when an entry is loaded, not on every cache hit (a
        // moka insert per request would cost more than the lookup itself).
        let stale = &self.stale;
        let loaded = self
            .keys
            .try_get_with(hash, async move {
                let k = load_key(&pool, &hash).await?.map(Arc::new);
                if let Some(k) = &k {
                    stale.insert(hash, k.clone()).await;
                }
                Ok::<_, crate::db::load::LoadError>(k)
            })
            .await;
        match loaded {
            Ok(entry) => Ok(entry),
            Err(e) => {
                tracing::warn!(error = %e, "key lookup failed; serving the last known entry if any");
                self.healthy.store(false, Ordering::Relaxed);
                self.stale
                    .get(&hash)
                    .await
                    .map(Some)
                    .ok_or_else(unavailable)
            }
        }
    }

    /// Puts an entry in the key cache as a lookup would (benchmarks and tests).
    #[doc(hidden)]
    pub async fn prime(&self, hash: KeyHash, key: Option<Arc<VirtualKey>>) {
        self.keys.insert(hash, key).await;
    }

    /// Forgets one key everywhere on this node.
    pub async fn invalidate_key(&self, hash: &KeyHash) {
        self.keys.invalidate(hash).await;
        self.stale.invalidate(hash).await;
    }

    /// Forgets every cached key lookup (grants may have changed). The last-known copies stay
    /// for outages, but only until the next successful lookup replaces them.
    pub fn invalidate_all_keys(&self) {
        self.keys.invalidate_all();
    }
}

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
    let (mcp, mcp_warnings) = crate::mcp::db::load(pool, keys)
        .await
        .map_err(|e| format!("mcp servers: {e}"))?;
    for w in &mcp_warnings {
        tracing::warn!(warning = %w, "database catalog");
    }
    cfg.mcp.by_org = mcp;
    cfg.warnings.extend(mcp_warnings);
    if !parts.filter_rows.is_empty() {
        let raw =
            crate::filters::config::from_db_rows(&parts.filter_rows).map_err(|e| e.join("; "))?;
        let set = crate::filters::config::merge_db(&cfg.filters, &raw).map_err(|e| e.join("; "))?;
        cfg.filters = Arc::new(set);
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
