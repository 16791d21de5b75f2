//! Several credentials for one provider, used in turn; one the provider rejected (401) or
//! throttled (429) is set aside for a while.

use http::HeaderValue;
use once_cell::sync::Lazy;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Process start: set-aside deadlines are stored as milliseconds since then.
static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// The credential header values of a provider, ready to insert.
#[derive(Debug, Default)]
pub struct Credentials {
    values: Vec<HeaderValue>,
    next: AtomicUsize,
    /// Per credential: set aside until this many ms after [`EPOCH`] (0: usable).
    aside_until: Vec<AtomicU64>,
}

impl Credentials {
    pub fn new(values: Vec<HeaderValue>) -> Credentials {
        let aside_until = values.iter().map(|_| AtomicU64::new(0)).collect();
        Credentials {
            values,
            next: AtomicUsize::new(0),
            aside_until,
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The next usable credential in turn, skipping those set aside and `avoid` (the one that
    /// just failed). When every credential is set aside, the one that comes back soonest.
    pub fn pick(&self, avoid: Option<usize>) -> Option<(usize, &HeaderValue)> {
        let n = self.values.len();
        match n {
            0 => return None,
            1 => return Some((0, &self.values[0])),
            _ => {}
        }
        let now = now_ms();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let idx = (start + i) % n;
            if Some(idx) != avoid && self.aside_until[idx].load(Ordering::Relaxed) <= now {
                return Some((idx, &self.values[idx]));
            }
        }
        let idx = (0..n)
            .filter(|i| Some(*i) != avoid)
            .min_by_key(|i| self.aside_until[*i].load(Ordering::Relaxed))
            .unwrap_or(0);
        Some((idx, &self.values[idx]))
    }

    /// Whether a credential other than `idx` is usable now.
    pub fn has_other(&self, idx: usize) -> bool {
        let now = now_ms();
        (0..self.values.len())
            .any(|i| i != idx && self.aside_until[i].load(Ordering::Relaxed) <= now)
    }

    /// Sets credential `idx` aside for `d`.
    pub fn set_aside(&self, idx: usize, d: Duration) {
        if let Some(a) = self.aside_until.get(idx) {
            a.store(now_ms() + d.as_millis() as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn creds(n: usize) -> Credentials {
        Credentials::new(
            (0..n)
                .map(|i| HeaderValue::from_str(&format!("k{i}")).unwrap())
                .collect(),
        )
    }

    #[test]
    fn in_turn_and_set_aside() {
        let c = creds(3);
        let seen: Vec<usize> = (0..6).map(|_| c.pick(None).unwrap().0).collect();
        assert_eq!(seen, vec![0, 1, 2, 0, 1, 2]);
        c.set_aside(1, Duration::from_secs(60));
        assert!((0..6).all(|_| c.pick(None).unwrap().0 != 1));
        assert!(c.has_other(0));
        c.set_aside(0, Duration::from_secs(60));
        c.set_aside(2, Duration::from_secs(30));
        // All aside: the one back soonest.
        assert_eq!(c.pick(None).unwrap().0, 2);
        assert!(!c.has_other(2));
    }

    #[test]
    fn avoid_skips_the_failed_one() {
        let c = creds(2);
        for _ in 0..4 {
            assert_eq!(c.pick(Some(0)).unwrap().0, 1);
        }
        assert_eq!(creds(1).pick(Some(0)).unwrap().0, 0);
        assert!(creds(0).pick(None).is_none());
    }
}
