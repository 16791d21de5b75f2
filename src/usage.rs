//! Token usage, cost, and the usage record every request leaves behind (SPEC §10).
//!
//! Records leave the request path through a bounded queue ([`UsageSink::emit`] never waits);
//! a background writer appends them as JSON Lines. Queue depth and drops are metrics.

use crate::metrics;
use std::io::Write;
use tokio::sync::mpsc;

pub use crate::types::usage::{Attempt, UsageRecord, UsageSource};
pub use crate::types::Tokens;

/// The request-path end of the usage queue.
#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::Sender<UsageRecord>,
    capacity: usize,
}

impl UsageSink {
    /// A sink and the receiver its writer drains.
    pub fn new(capacity: usize) -> (UsageSink, mpsc::Receiver<UsageRecord>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            UsageSink {
                tx,
                capacity: capacity.max(1),
            },
            rx,
        )
    }

    /// Queues a record without waiting; a full queue drops it and counts the drop.
    pub fn emit(&self, rec: UsageRecord) {
        if self.tx.try_send(rec).is_err() {
            metrics::USAGE_DROPPED.inc();
        }
        metrics::USAGE_QUEUE_DEPTH.set((self.capacity - self.tx.capacity()) as i64);
    }
}

/// How often the writer collects queued records. The writer is never woken per record: a
/// cross-thread wake-up per request would cost more than everything else the gateway does.
pub const WRITER_TICK: std::time::Duration = std::time::Duration::from_millis(20);

/// Drains `rx` into a JSON Lines file (or discards when no path is configured) every
/// [`WRITER_TICK`], flushing after every batch. Returns when every sender is gone.
pub async fn run_writer(
    mut rx: mpsc::Receiver<UsageRecord>,
    path: Option<String>,
    store: Option<std::sync::Arc<crate::db::usage_store::PgUsageStore>>,
) {
    let mut file = match &path {
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Some(std::io::BufWriter::with_capacity(256 * 1024, f)),
            Err(e) => {
                tracing::error!(path = %p, error = %e, "cannot open usage file; records will be counted and dropped");
                None
            }
        },
        None => None,
    };
    let mut tick = tokio::time::interval(WRITER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<UsageRecord> = Vec::with_capacity(1024);
    loop {
        tick.tick().await;
        let mut closed = false;
        loop {
            match rx.try_recv() {
                Ok(rec) => batch.push(rec),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        metrics::USAGE_QUEUE_DEPTH.set(rx.len() as i64);
        if !batch.is_empty() {
            if let Some(f) = file.as_mut() {
                for rec in &batch {
                    let ok =
                        serde_json::to_writer(&mut *f, rec).is_ok() && f.write_all(b"\n").is_ok();
                    if !ok {
                        metrics::USAGE_WRITE_ERRORS.inc();
                    }
                }
                if let Err(e) = f.flush() {
                    metrics::USAGE_WRITE_ERRORS.inc();
                    tracing::error!(error = %e, "usage file flush failed");
                }
            }
            match &store {
                // Postgres (or its spill file when Postgres is down): nothing is lost unless
                // the spill file itself cannot be written.
                Some(st) => match st.write(&batch).await {
                    Ok(_) => metrics::USAGE_WRITTEN.inc_by(batch.len() as u64),
                    Err(e) => {
                        metrics::USAGE_WRITE_ERRORS.inc_by(batch.len() as u64);
                        tracing::error!(error = %e, lost = batch.len(), "usage records could not be stored or spilled");
                    }
                },
                None => metrics::USAGE_WRITTEN.inc_by(batch.len() as u64),
            }
            batch.clear();
        }
        if closed {
            if let Some(st) = &store {
                let _ = st.replay_spill().await;
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Pricing;
    use serde_json::json;
    use serde_json::Value;

    #[test]
    fn chat_usage() {
        let t = Tokens::from_openai_usage(&json!({"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,
            "prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}))
        .expect("usage");
        assert_eq!(
            t,
            Tokens {
                input: 10,
                output: 5,
                cached_input: 4,
                reasoning: 2,
                total: 15,
                images: 0,
            }
        );
    }

    #[test]
    fn responses_usage() {
        let t = Tokens::from_openai_usage(&json!({"input_tokens":7,"output_tokens":3,"total_tokens":10,
            "input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":1}}))
        .expect("usage");
        assert_eq!((t.input, t.output, t.reasoning), (7, 3, 1));
        assert!(Tokens::from_openai_usage(&Value::Null).is_none());
    }

    #[test]
    fn anthropic_and_gemini_usage() {
        let t = Tokens::from_anthropic_usage(
            &json!({"input_tokens":10,"cache_creation_input_tokens":5,
            "cache_read_input_tokens":20,"output_tokens":7}),
        )
        .expect("usage");
        assert_eq!(
            (t.input, t.cached_input, t.output, t.total),
            (35, 20, 7, 42)
        );
        let t = Tokens::from_gemini_usage(&json!({"promptTokenCount":12,"candidatesTokenCount":4,
            "thoughtsTokenCount":3,"cachedContentTokenCount":2,"totalTokenCount":19}))
        .expect("usage");
        assert_eq!(
            (t.input, t.output, t.reasoning, t.cached_input, t.total),
            (12, 7, 3, 2, 19)
        );
    }

    #[test]
    fn cost_in_nanos() {
        // $0.15 / 1M input, $0.60 / 1M output: 1000 in + 500 out = 150_000 + 300_000 nanos.
        let p = Pricing {
            input: 150_000_000,
            output: 600_000_000,
            cached: 75_000_000,
            reasoning: 600_000_000,
            image: 40_000_000,
        };
        let t = Tokens {
            input: 1000,
            output: 500,
            ..Default::default()
        };
        assert_eq!(t.cost_nanos(&p), 450_000);
        let t = Tokens {
            input: 1000,
            cached_input: 1000,
            ..Default::default()
        };
        assert_eq!(t.cost_nanos(&p), 75_000);
        let t = Tokens {
            images: 2,
            ..Default::default()
        };
        assert_eq!(t.cost_nanos(&p), 80_000_000);
    }
}
