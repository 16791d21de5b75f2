//! Warning-threshold notifications (SPEC §7): each crossing of a budget's or quota's warning
//! threshold is logged, counted (`wharf_budget_warnings_total`) and, when
//! `governance.warning_webhook_url` is set, POSTed to that URL as JSON.
//!
//! Crossings are detected once per threshold and window by the stores (in memory for file
//! budgets, with a row update in Postgres that only one node wins), so each one is delivered
//! once. Delivery is off the request path: the settle only queues the event (a bounded queue;
//! when it is full the event is dropped and counted), and one worker thread posts the queue in
//! order, retrying a failed delivery a few times.
//!
//! With `governance.warning_webhook_secret_env`, each delivery carries
//! `x-wharf-signature: sha256=<hex>`, the HMAC-SHA256 of the exact body under that secret
//! ([`sign`]); the body's `at` lets the receiver refuse old replays.

use super::budget::Meter;
use jiff::Timestamp;
use serde::Serialize;
use std::time::Duration;

/// Events queued for the webhook before new ones are dropped.
const QUEUE: usize = 1024;
/// Attempts per event.
const ATTEMPTS: u32 = 3;

/// One crossed threshold, as posted to the webhook.
#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    /// Always `budget.warning`.
    pub event: &'static str,
    /// `budget` or `quota`.
    pub kind: &'static str,
    /// The budget's or quota's id.
    pub id: String,
    /// `ORG`, `TEAM`, `USER`, `APIKEY`.
    pub owner: &'static str,
    pub owner_id: String,
    /// Whether the budget is a prepaid balance.
    pub balance: bool,
    pub threshold_percent: u8,
    /// Used in the window once the crossing request settled (nanos-USD for budgets, the
    /// metric's unit for quotas).
    pub used: u64,
    pub limit: u64,
    /// RFC 3339; a balance's window is its whole life.
    pub window_start: String,
    pub window_end: String,
    /// When the crossing was detected (RFC 3339).
    pub at: String,
}

impl Warning {
    /// The event for `m` crossing `threshold` with `used` in the window `[start, end)`.
    pub fn new(
        m: &Meter,
        threshold: u8,
        used: u64,
        limit: u64,
        (start, end): (Timestamp, Timestamp),
    ) -> Warning {
        Warning {
            event: "budget.warning",
            kind: if m.quota { "quota" } else { "budget" },
            id: m.id.clone(),
            owner: m.owner.as_str(),
            owner_id: m.owner_id.clone(),
            balance: m.is_balance(),
            threshold_percent: threshold,
            used,
            limit,
            window_start: start.to_string(),
            window_end: end.to_string(),
            at: Timestamp::now().to_string(),
        }
    }
}

/// The queue to the webhook worker (none when no URL is configured).
#[derive(Debug, Default)]
pub struct Notifier {
    tx: Option<tokio::sync::mpsc::Sender<Warning>>,
}

impl Notifier {
    /// A notifier posting to `url` (`None`: crossings are only logged and counted). The worker
    /// runs on its own thread, so it needs no runtime from the caller.
    pub fn start(url: Option<&str>, timeout: Duration, secret: Option<String>) -> Notifier {
        let Some(url) = url.map(str::to_string) else {
            return Notifier::default();
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Warning>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("wharf-budget-webhook".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "budget webhook: cannot start its runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let client = match reqwest::Client::builder().timeout(timeout).build() {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(error = %e, "budget webhook: cannot build its client");
                            return;
                        }
                    };
                    while let Some(w) = rx.recv().await {
                        deliver(&client, &url, secret.as_deref(), &w).await;
                    }
                });
            });
        match spawned {
            Ok(_) => Notifier { tx: Some(tx) },
            Err(e) => {
                tracing::error!(error = %e, "budget webhook: cannot start its worker");
                Notifier::default()
            }
        }
    }

    /// Queues `w` for the webhook; never waits.
    pub fn notify(&self, w: Warning) {
        let Some(tx) = &self.tx else {
            return;
        };
        if tx.try_send(w).is_err() {
            crate::metrics::BUDGET_WARNING_WEBHOOKS
                .with_label_values(&["dropped"])
                .inc();
            tracing::warn!("budget webhook: queue full; warning dropped");
        }
    }
}

/// `sha256=<hex>`: the HMAC-SHA256 (RFC 2104) of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut key = [0u8; 64];
    if secret.len() > key.len() {
        key[..32].copy_from_slice(&Sha256::digest(secret));
    } else {
        key[..secret.len()].copy_from_slice(secret);
    }
    let pad = |b: u8| key.map(|k| k ^ b);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(body)
        .finalize();
    let mac = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn deliver(client: &reqwest::Client, url: &str, secret: Option<&str>, w: &Warning) {
    let body = match serde_json::to_vec(w) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "budget webhook: cannot encode a warning");
            return;
        }
    };
    let signature = secret.map(|s| sign(s.as_bytes(), &body));
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        let mut rq = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some(sig) = &signature {
            rq = rq.header("x-wharf-signature", sig.as_str());
        }
        match rq.send().await {
            Ok(r) if r.status().is_success() => {
                crate::metrics::BUDGET_WARNING_WEBHOOKS
                    .with_label_values(&["sent"])
                    .inc();
                return;
            }
            Ok(r) => last = format!("status {}", r.status().as_u16()),
            Err(e) => last = e.to_string(),
        }
    }
    crate::metrics::BUDGET_WARNING_WEBHOOKS
        .with_label_values(&["failed"])
        .inc();
    tracing::warn!(id = %w.id, threshold_percent = w.threshold_percent, error = %last,
        "budget webhook: delivery failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_rfc_4231_hmac_sha256() {
        // RFC 4231 test cases 2 (short key) and 6 (a key longer than the block).
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            sign(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            "sha256=60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
