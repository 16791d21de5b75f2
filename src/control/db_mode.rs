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

use crate::config::{DatabaseConfig, VirtualKey};
use crate::db::crypto::MasterKeys;
use crate::db::load::load_key;
use crate::error::{ErrorCode, GatewayError};
use crate::keys::KeyHash;
use arc_swap::ArcSwapOption;
use moka::future::Cache;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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
    pub(super) healthy: AtomicBool,
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
