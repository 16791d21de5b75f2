//! Background services: usage writer, configuration watcher (file change + SIGHUP), provider
//! monitor (DNS refresh and reachability probes). All run off the request path.

use crate::control::state::{resolve_providers, Reachability, State};
use crate::endpoints::rfc3339;
use crate::usage::{run_writer, UsageRecord};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Drains the usage queue into the configured sinks: the JSON Lines file, and in database
/// mode Postgres (spilling to `usage.spill_path` while it is down).
pub struct UsageWriter {
    pub rx: Mutex<Option<mpsc::Receiver<UsageRecord>>>,
    pub path: Option<String>,
    /// Postgres URL and spill file (database mode).
    pub database: Option<(String, String)>,
}

#[async_trait]
impl BackgroundService for UsageWriter {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Keeps draining through the shutdown grace period, so requests finishing during a
        // drain still leave their record; every batch is flushed as it is written.
        let rx = self.rx.lock().ok().and_then(|mut g| g.take());
        let Some(rx) = rx else {
            return;
        };
        let store = match &self.database {
            Some((url, spill)) => {
                // The pool lives in this service's runtime; connect lazily so an outage at
                // start-up still spills instead of blocking.
                match sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect_lazy(url)
                {
                    Ok(pool) => {
                        let store = Arc::new(crate::db::usage_store::PgUsageStore::new(
                            pool,
                            std::path::PathBuf::from(spill),
                        ));
                        let replay = store.clone();
                        tokio::spawn(async move {
                            let mut t = tokio::time::interval(Duration::from_secs(1));
                            loop {
                                t.tick().await;
                                if let Err(e) = replay.replay_spill().await {
                                    tracing::debug!(error = %e, "usage replay");
                                }
                            }
                        });
                        Some(store)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "usage store: invalid database URL");
                        None
                    }
                }
            }
            None => None,
        };
        run_writer(rx, self.path.clone(), store).await;
    }
}

/// Reloads the configuration when its file changes or on SIGHUP.
pub struct ConfigWatcher {
    pub state: Arc<State>,
}

fn file_stamp(path: &str) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let path = self.state.config_path.clone();
        let mut stamp = file_stamp(&path);
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; file watching only");
                None
            }
        };
        loop {
            let interval = self.state.current().config.server.config_watch_interval;
            let sighup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sighup => {
                    tracing::info!("SIGHUP: reloading configuration");
                    stamp = file_stamp(&path);
                    let _ = self.state.reload().await;
                }
                _ = tokio::time::sleep(interval) => {
                    crate::filters::refresh_scripts(&self.state.current().filters);
                    let now = file_stamp(&path);
                    if now.is_some() && now != stamp {
                        stamp = now;
                        // Let an editor finish writing before reading.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        stamp = file_stamp(&path).or(stamp);
                        tracing::info!(path = %path, "configuration file changed: reloading");
                        let _ = self.state.reload().await;
                    }
                }
            }
        }
    }
}

/// Refreshes provider addresses and probes reachability (TCP connect) every `every`.
pub struct ProviderMonitor {
    pub state: Arc<State>,
    pub every: Duration,
}

impl ProviderMonitor {
    async fn probe_all(&self) {
        let snap = self.state.current();
        resolve_providers(&snap.config, Some(&snap.config)).await;
        let mut results = Vec::new();
        for p in &snap.config.providers {
            let addrs = p.addrs.load_full();
            let t = Instant::now();
            let r = match addrs.first() {
                None => Err("host not resolved".to_string()),
                Some(a) => match tokio::time::timeout(
                    p.connect_timeout.min(Duration::from_secs(3)),
                    tokio::net::TcpStream::connect(a),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("connect timed out".to_string()),
                },
            };
            results.push((
                p.status_key(),
                Reachability {
                    reachable: r.is_ok(),
                    latency_ms: r.is_ok().then(|| t.elapsed().as_secs_f64() * 1000.0),
                    checked_at: rfc3339(SystemTime::now()),
                    error: r.err(),
                },
            ));
        }
        if let Ok(mut g) = self.state.reachability.write() {
            g.clear();
            g.extend(results);
        }
    }
}

#[async_trait]
impl BackgroundService for ProviderMonitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.probe_all().await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }
}

/// Gives the node's slices of the shared rate limits back to Redis when the server stops
/// (a node that dies instead leaves them to expire: see `governance::redis`).
pub struct SliceReturn {
    pub state: Arc<State>,
}

#[async_trait]
impl BackgroundService for SliceReturn {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        self.state.governance.give_back().await;
    }
}
