//! Per-sender risk score: a sender is (client IP, virtual key, user agent), hashed.
//!
//! [`MemoryRisk`] keeps scores in this process with exponential decay and a TTL after the last
//! increment. [`RedisRisk`] shares them across nodes: `INCRBYFLOAT` and `EXPIRE` in one
//! `MULTI`/`EXEC` transaction, so the TTL is refreshed atomically with every increment (no decay:
//! the score is forgotten `ttl` after the sender's last risky request).

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The sender identity: a hex SHA-256 prefix of IP, key and user agent (no raw key stored).
pub fn sender_id(ip: &str, key: &str, user_agent: &str) -> String {
    let mut h = Sha256::new();
    for part in [ip, key, user_agent] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Where risk scores live.
#[async_trait]
pub trait RiskStore: Send + Sync {
    /// Adds `delta` to the sender's score and returns the new score (and refreshes its TTL).
    async fn add(&self, sender: &str, delta: f64) -> Result<f64, String>;
    /// The sender's current score (0 when unknown or expired).
    async fn score(&self, sender: &str) -> Result<f64, String>;
}

/// In-process scores with decay (half-life) and expiry (TTL after the last increment).
#[derive(Debug)]
pub struct MemoryRisk {
    ttl: Duration,
    half_life: Duration,
    map: Mutex<HashMap<String, (f64, Instant)>>,
    max_entries: usize,
}

impl MemoryRisk {
    pub fn new(ttl: Duration, half_life: Duration) -> MemoryRisk {
        MemoryRisk {
            ttl,
            half_life,
            map: Mutex::new(HashMap::new()),
            max_entries: 100_000,
        }
    }

    fn decayed(&self, score: f64, since: Instant, now: Instant) -> Option<f64> {
        let age = now.saturating_duration_since(since);
        if age >= self.ttl {
            return None;
        }
        let hl = self.half_life.as_secs_f64().max(1e-9);
        Some(score * 0.5f64.powf(age.as_secs_f64() / hl))
    }

    /// [`RiskStore::add`] at an explicit time (for tests and replay).
    pub fn add_at(&self, sender: &str, delta: f64, now: Instant) -> f64 {
        let Ok(mut map) = self.map.lock() else {
            return delta;
        };
        if map.len() >= self.max_entries {
            map.retain(|_, (s, t)| self.decayed(*s, *t, now).is_some());
        }
        let prev = map
            .get(sender)
            .and_then(|(s, t)| self.decayed(*s, *t, now))
            .unwrap_or(0.0);
        let new = prev + delta;
        map.insert(sender.to_string(), (new, now));
        new
    }

    /// Raises the sender's score to at least `score` (a shared score read back from Redis).
    pub fn raise_to_at(&self, sender: &str, score: f64, now: Instant) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        let local = map
            .get(sender)
            .and_then(|(s, t)| self.decayed(*s, *t, now))
            .unwrap_or(0.0);
        if score > local {
            map.insert(sender.to_string(), (score, now));
        }
    }

    /// [`RiskStore::score`] at an explicit time.
    pub fn score_at(&self, sender: &str, now: Instant) -> f64 {
        self.map
            .lock()
            .ok()
            .and_then(|m| m.get(sender).and_then(|(s, t)| self.decayed(*s, *t, now)))
            .unwrap_or(0.0)
    }

    /// Senders currently stored (expired ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl RiskStore for MemoryRisk {
    async fn add(&self, sender: &str, delta: f64) -> Result<f64, String> {
        Ok(self.add_at(sender, delta, Instant::now()))
    }

    async fn score(&self, sender: &str) -> Result<f64, String> {
        Ok(self.score_at(sender, Instant::now()))
    }
}

/// Scores in Redis, shared by every node.
pub struct RedisRisk {
    client: fred::clients::Client,
    prefix: String,
    ttl: Duration,
}

impl std::fmt::Debug for RedisRisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRisk")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl RedisRisk {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`).
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> Result<RedisRisk, String> {
        use fred::prelude::*;
        let cfg = Config::from_url(url).map_err(|e| e.to_string())?;
        let client = Builder::from_config(cfg)
            .with_connection_config(|cc| {
                cc.connection_timeout = Duration::from_secs(2);
            })
            .build()
            .map_err(|e| e.to_string())?;
        client.init().await.map_err(|e| e.to_string())?;
        Ok(RedisRisk {
            client,
            prefix: prefix.to_string(),
            ttl,
        })
    }

    /// The Redis key of a sender.
    pub fn key(&self, sender: &str) -> String {
        format!("{}{}", self.prefix, sender)
    }

    /// The underlying client (e.g. to inspect TTLs in tests).
    pub fn client(&self) -> &fred::clients::Client {
        &self.client
    }
}

#[async_trait]
impl RiskStore for RedisRisk {
    async fn add(&self, sender: &str, delta: f64) -> Result<f64, String> {
        use fred::prelude::*;
        let key = self.key(sender);
        let ttl = i64::try_from(self.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let trx = self.client.multi();
        let _: () = trx
            .incr_by_float(&key, delta)
            .await
            .map_err(|e| e.to_string())?;
        let _: () = trx
            .expire(&key, ttl, None)
            .await
            .map_err(|e| e.to_string())?;
        let (score, _): (f64, i64) = trx.exec(true).await.map_err(|e| e.to_string())?;
        Ok(score)
    }

    async fn score(&self, sender: &str) -> Result<f64, String> {
        use fred::prelude::*;
        let v: Option<f64> = self
            .client
            .get(self.key(sender))
            .await
            .map_err(|e| e.to_string())?;
        Ok(v.unwrap_or(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_decays_and_expires() {
        let r = MemoryRisk::new(Duration::from_secs(60), Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.add_at("s", 4.0, t0), 4.0);
        let s = r.score_at("s", t0 + Duration::from_secs(10));
        assert!((s - 2.0).abs() < 1e-9, "{s}");
        assert_eq!(r.score_at("s", t0 + Duration::from_secs(60)), 0.0);
        assert_eq!(r.add_at("s", 1.0, t0 + Duration::from_secs(61)), 1.0);
    }
}
