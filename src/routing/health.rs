//! Active health checks (SPEC §5, optional): providers with a `health_check` are probed with a
//! `GET` of its path on the server root (a vLLM replica's `/health`) every `interval`; one
//! that does not answer 2xx within `timeout` is left out of routing plans until a check passes
//! again. Passive outlier detection ([`super::Router`]) still applies on top.
//!
//! The state is one set of checked URLs (so providers of different organisations that share a
//! name never share a state), read on the request path only when some provider has a check.

use crate::config::{HealthCheck, Provider};
use async_trait::async_trait;
use once_cell::sync::Lazy;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// Whether any provider of the current configuration has a check (the request path's fast
/// path when none has).
static ANY: AtomicBool = AtomicBool::new(false);
static DOWN: Lazy<RwLock<HashSet<String>>> = Lazy::new(Default::default);

/// Whether any provider of the current configuration is checked (none can be down if not).
pub fn any() -> bool {
    ANY.load(Ordering::Relaxed)
}

/// Whether provider `p` failed its last active health check.
pub fn is_down(p: &Provider) -> bool {
    if !ANY.load(Ordering::Relaxed) {
        return false;
    }
    let Some(h) = &p.health_check else {
        return false;
    };
    DOWN.read().map(|d| d.contains(&h.url)).unwrap_or(false)
}

fn set(name: &str, url: &str, down: bool) {
    let Ok(mut d) = DOWN.write() else { return };
    let changed = if down {
        d.insert(url.to_string())
    } else {
        d.remove(url)
    };
    if changed {
        if down {
            tracing::warn!(
                provider = name,
                "health check failed: provider out of routing"
            );
        } else {
            tracing::info!(
                provider = name,
                "health check passed: provider back in routing"
            );
        }
    }
    crate::metrics::UPSTREAM_HEALTHY
        .with_label_values(&[name])
        .set(i64::from(!down));
}

async fn check(client: &reqwest::Client, h: &HealthCheck) -> bool {
    match tokio::time::timeout(h.timeout, client.get(&h.url).send()).await {
        Ok(Ok(r)) => r.status().is_success(),
        _ => false,
    }
}

/// The background service that runs the checks of the current configuration.
pub struct HealthChecks {
    /// The providers of the current configuration (a narrow handle on the snapshot).
    pub providers: Box<dyn Fn() -> Vec<Arc<Provider>> + Send + Sync>,
}

fn checked(providers: &[Arc<Provider>]) -> Vec<(Arc<Provider>, HealthCheck)> {
    providers
        .iter()
        .filter(|p| p.enabled)
        .filter_map(|p| p.health_check.clone().map(|h| (p.clone(), h)))
        .collect()
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "health checks: no HTTP client");
                return;
            }
        };
        let mut due: HashMap<String, Instant> = HashMap::new();
        loop {
            let providers = checked(&(self.providers)());
            ANY.store(!providers.is_empty(), Ordering::Relaxed);
            // Endpoints no longer checked are not held out.
            if let Ok(mut d) = DOWN.write() {
                d.retain(|u| providers.iter().any(|(_, h)| &h.url == u));
            }
            due.retain(|u, _| providers.iter().any(|(_, h)| &h.url == u));
            let now = Instant::now();
            let mut round = Vec::new();
            for (p, h) in &providers {
                if due.get(&h.url).is_none_or(|t| *t <= now) {
                    due.insert(h.url.clone(), now + h.interval);
                    let (client, p, h) = (client.clone(), p.clone(), h.clone());
                    round.push(tokio::spawn(async move {
                        let ok = check(&client, &h).await;
                        set(&p.name, &h.url, !ok);
                    }));
                }
            }
            for t in round {
                let _ = t.await;
            }
            let next = due
                .values()
                .min()
                .map_or(Duration::from_secs(1), |t| {
                    t.saturating_duration_since(Instant::now())
                })
                .clamp(Duration::from_millis(10), Duration::from_secs(1));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(next) => {}
            }
        }
    }
}
