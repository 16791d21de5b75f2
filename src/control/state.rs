//! Shared gateway state: the configuration snapshot (swapped atomically on reload), the usage
//! sink, and the provider reachability table.

use super::Snapshot;
use crate::config::{Config, ConfigError};
use crate::metrics;
use crate::usage::UsageSink;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

/// Last reachability probe of a provider.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reachability {
    pub reachable: bool,
    pub latency_ms: Option<f64>,
    pub checked_at: String,
    pub error: Option<String>,
}

/// Everything the services share.
pub struct State {
    pub snapshot: ArcSwap<Snapshot>,
    pub config_path: String,
    pub usage: UsageSink,
    pub started_at: SystemTime,
    pub started: Instant,
    pub reachability: RwLock<HashMap<String, Reachability>>,
    generation: AtomicU64,
    /// Last reload error, for `/v1/healthz`.
    pub last_reload_error: RwLock<Option<String>>,
    /// Database mode (Postgres holds the catalog and keys).
    pub db: Option<Arc<super::DbMode>>,
    /// Last Redis probe (`None` when Redis is not configured).
    pub redis_healthy: Option<std::sync::atomic::AtomicBool>,
    /// Where catalog and keys come from: the file, then Postgres in database mode.
    pub stores: Vec<Arc<dyn super::store::Store>>,
    /// The trace exporter, when `telemetry.otlp_endpoint` is set (fixed at start).
    pub traces: std::sync::OnceLock<crate::telemetry::Exporter>,
    /// Rate-limit counters (kept across reloads).
    pub governance: crate::governance::Governance,
}

impl State {
    /// State around a first, already validated configuration.
    pub fn new(
        config: Config,
        filters: Arc<crate::filters::FilterSet>,
        config_path: String,
        usage: UsageSink,
        db: Option<Arc<super::DbMode>>,
    ) -> Arc<State> {
        metrics::CONFIG_VERSION.set(1);
        let redis_healthy = config
            .redis_url
            .as_ref()
            .map(|_| std::sync::atomic::AtomicBool::new(false));
        let governance =
            crate::governance::Governance::new(&config, db.as_ref().map(|d| d.pool.clone()));
        Arc::new(State {
            governance,
            snapshot: ArcSwap::from_pointee(Snapshot::new(config, filters, 1)),
            config_path,
            usage,
            started_at: SystemTime::now(),
            started: Instant::now(),
            reachability: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(1),
            last_reload_error: RwLock::new(None),
            stores: super::store::stores(db.as_ref()),
            db,
            redis_healthy,
            traces: std::sync::OnceLock::new(),
        })
    }

    /// The snapshot requests start on.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Reloads the configuration file: validated first, resolved, then swapped in atomically.
    /// On any error the running configuration stays and the error is returned (and logged).
    pub async fn reload(&self) -> Result<u64, ConfigError> {
        let parsed = super::build::build(&self.config_path, &self.stores).await;
        let (cfg, filters) = match parsed {
            Ok(c) => c,
            Err(e) => {
                metrics::CONFIG_RELOADS.with_label_values(&["error"]).inc();
                tracing::error!(path = %self.config_path, error = %e, "configuration reload rejected; keeping the running configuration");
                if let Ok(mut g) = self.last_reload_error.write() {
                    *g = Some(e.to_string());
                }
                return Err(e);
            }
        };
        let old = self.current();
        if cfg.server.listen != old.config.server.listen
            || cfg.server.admin_listen != old.config.server.admin_listen
            || cfg.server.tls != old.config.server.tls
            || cfg.server.threads != old.config.server.threads
        {
            tracing::warn!(
                "listener, TLS and thread settings take effect on restart or upgrade only"
            );
        }
        for w in &cfg.warnings {
            tracing::warn!(warning = %w, "configuration");
        }
        resolve_providers(&cfg, Some(&old.config)).await;
        let version = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.snapshot
            .store(Arc::new(Snapshot::new(cfg, filters, version)));
        metrics::CONFIG_RELOADS.with_label_values(&["ok"]).inc();
        metrics::CONFIG_VERSION.set(version as i64);
        if let Ok(mut g) = self.last_reload_error.write() {
            *g = None;
        }
        tracing::info!(version, "configuration reloaded");
        Ok(version)
    }
}

/// Resolves the providers' host names (off the request path). A provider whose name does not
/// resolve keeps the addresses it had under `previous`, if any.
pub async fn resolve_providers(cfg: &Config, previous: Option<&Config>) {
    for p in &cfg.providers {
        if p.host_is_ip() {
            continue;
        }
        match tokio::net::lookup_host((p.host.as_str(), p.port)).await {
            Ok(addrs) => {
                let v: Vec<SocketAddr> = addrs.collect();
                if !v.is_empty() {
                    p.addrs.store(Arc::new(v));
                    continue;
                }
                tracing::warn!(provider = %p.name, host = %p.host, "host resolved to no address");
            }
            Err(e) => {
                tracing::warn!(provider = %p.name, host = %p.host, error = %e, "cannot resolve provider host");
            }
        }
        if let Some(prev) = previous.and_then(|c| {
            c.providers
                .iter()
                .find(|q| q.host == p.host && q.port == p.port)
        }) {
            p.addrs.store(prev.addrs.load_full());
        }
    }
}
