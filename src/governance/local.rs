//! The in-process limiter (one node, or Redis unreachable in fail-open mode): exact sliding
//! windows for requests per second / minute and tokens per minute, a GCRA token bucket for
//! bursts, and counted concurrency leases.
//!
//! A check looks at every scope first and commits only when all of them admit, so a refused
//! request consumes nothing. Scope entries are locked one at a time in the order given; the
//! decision across scopes is made under all their locks (taken in a fixed order: the caller
//! always lists scopes broadest first), which keeps concurrent checks exact.

use super::limits::{Denial, Kind, RateHeaders, ScopeLimits};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

const SECOND: u64 = 1000;
const MINUTE: u64 = 60_000;

#[derive(Debug, Default)]
struct Entry {
    /// Admission times (ms) in the last second / minute, oldest first.
    rps: VecDeque<u64>,
    rpm: VecDeque<u64>,
    /// GCRA theoretical arrival time (ms).
    tat: f64,
    in_flight: u64,
    /// (time ms, reservation id, tokens), oldest first.
    tpm: VecDeque<(u64, u64, u64)>,
    tpm_sum: u64,
}

impl Entry {
    fn expire(&mut self, now: u64) {
        while self.rps.front().is_some_and(|t| *t + SECOND <= now) {
            self.rps.pop_front();
        }
        while self.rpm.front().is_some_and(|t| *t + MINUTE <= now) {
            self.rpm.pop_front();
        }
        while let Some((t, _, n)) = self.tpm.front().copied() {
            if t + MINUTE > now {
                break;
            }
            self.tpm.pop_front();
            self.tpm_sum = self.tpm_sum.saturating_sub(n);
        }
    }

    /// `Some(denial)` when `l` refuses one more request of `tokens` now.
    fn check(&self, l: &ScopeLimits, now: u64, tokens: u64) -> Option<Denial> {
        let deny = |kind, limit, retry: u64| {
            Some(Denial {
                kind,
                scope: l.scope,
                limit,
                retry_after_ms: retry,
            })
        };
        if l.concurrency > 0 && self.in_flight >= l.concurrency {
            return deny(Kind::Concurrency, l.concurrency, SECOND);
        }
        if l.burst > 0 {
            let iv = l.burst_interval_ms;
            let new_tat = self.tat.max(now as f64) + iv;
            let allow_at = new_tat - l.burst as f64 * iv;
            if allow_at > now as f64 {
                return deny(Kind::Burst, l.burst, (allow_at - now as f64).ceil() as u64);
            }
        }
        if l.rps > 0 && self.rps.len() as u64 >= l.rps {
            let i = self.rps.len() - l.rps as usize;
            let retry = (self.rps[i] + SECOND).saturating_sub(now);
            return deny(Kind::Rps, l.rps, retry);
        }
        if l.rpm > 0 && self.rpm.len() as u64 >= l.rpm {
            let i = self.rpm.len() - l.rpm as usize;
            let retry = (self.rpm[i] + MINUTE).saturating_sub(now);
            return deny(Kind::Rpm, l.rpm, retry);
        }
        if l.tpm > 0 && self.tpm_sum + tokens > l.tpm {
            let mut retry = MINUTE;
            if tokens <= l.tpm {
                let mut sum = self.tpm_sum;
                for (t, _, n) in &self.tpm {
                    sum = sum.saturating_sub(*n);
                    if sum + tokens <= l.tpm {
                        retry = (t + MINUTE).saturating_sub(now);
                        break;
                    }
                }
            }
            return deny(Kind::Tpm, l.tpm, retry);
        }
        None
    }

    fn commit(&mut self, l: &ScopeLimits, now: u64, id: u64, tokens: u64, h: &mut RateHeaders) {
        if l.concurrency > 0 {
            self.in_flight += 1;
        }
        if l.burst > 0 {
            self.tat = self.tat.max(now as f64) + l.burst_interval_ms;
        }
        if l.rps > 0 {
            self.rps.push_back(now);
        }
        if l.rpm > 0 {
            self.rpm.push_back(now);
            h.merge_requests((l.rpm, l.rpm.saturating_sub(self.rpm.len() as u64), MINUTE));
        } else if l.rps > 0 {
            h.merge_requests((l.rps, l.rps.saturating_sub(self.rps.len() as u64), SECOND));
        }
        if l.tpm > 0 {
            self.tpm.push_back((now, id, tokens));
            self.tpm_sum += tokens;
            h.merge_tokens((l.tpm, l.tpm.saturating_sub(self.tpm_sum), MINUTE));
        }
    }
}

/// The in-process limiter.
#[derive(Debug)]
pub struct Local {
    epoch: Instant,
    entries: Mutex<HashMap<String, Arc<Mutex<Entry>>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Default for Local {
    fn default() -> Self {
        Local {
            epoch: Instant::now(),
            entries: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What an admitted request holds: its concurrency slots and its token reservations. Dropping
/// it releases the slots (every path: success, error, client gone).
#[derive(Debug)]
pub struct LocalGrant {
    held: Vec<(Arc<Mutex<Entry>>, bool, bool)>,
    id: u64,
    released: bool,
}

impl LocalGrant {
    /// Settles the token reservations to `actual` tokens and releases the concurrency slots.
    pub fn finish(&mut self, actual: u64) {
        for (e, _, tpm) in &self.held {
            if !tpm {
                continue;
            }
            let mut e = lock(e);
            if let Some(r) = e.tpm.iter_mut().find(|r| r.1 == self.id) {
                let old = r.2;
                r.2 = actual;
                e.tpm_sum = e.tpm_sum.saturating_sub(old) + actual;
            }
        }
        self.release();
    }

    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        for (e, conc, _) in &self.held {
            if *conc {
                let mut e = lock(e);
                e.in_flight = e.in_flight.saturating_sub(1);
            }
        }
    }
}

impl Drop for LocalGrant {
    fn drop(&mut self) {
        self.release();
    }
}

impl Local {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn entry(&self, id: &str) -> Arc<Mutex<Entry>> {
        let mut m = lock(&self.entries);
        m.entry(id.to_string()).or_default().clone()
    }

    /// Checks every scope and, when all admit, commits `tokens` and one request to each.
    pub fn check(
        &self,
        scopes: &[ScopeLimits],
        tokens: u64,
    ) -> Result<(LocalGrant, RateHeaders), Denial> {
        let entries: Vec<Arc<Mutex<Entry>>> = scopes.iter().map(|s| self.entry(&s.id)).collect();
        let mut guards: Vec<MutexGuard<'_, Entry>> = entries.iter().map(|e| lock(e)).collect();
        let now = self.now();
        for (g, l) in guards.iter_mut().zip(scopes) {
            g.expire(now);
            if let Some(d) = g.check(l, now, tokens) {
                return Err(d);
            }
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut h = RateHeaders::default();
        for (g, l) in guards.iter_mut().zip(scopes) {
            g.commit(l, now, id, tokens, &mut h);
        }
        drop(guards);
        let held = entries
            .into_iter()
            .zip(scopes)
            .map(|(e, l)| (e, l.concurrency > 0, l.tpm > 0))
            .collect();
        Ok((
            LocalGrant {
                held,
                id,
                released: false,
            },
            h,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(f: impl FnOnce(&mut ScopeLimits)) -> ScopeLimits {
        let mut l = ScopeLimits {
            scope: "key",
            id: "key:k".into(),
            rps: 0,
            rpm: 0,
            burst: 0,
            burst_interval_ms: 0.0,
            concurrency: 0,
            tpm: 0,
        };
        f(&mut l);
        l
    }

    #[test]
    fn rpm_admits_exactly_the_limit() {
        let lim = Local::default();
        let s = [scope(|l| l.rpm = 3)];
        let mut grants = Vec::new();
        for i in 0..3 {
            let (g, h) = lim.check(&s, 0).expect("admitted");
            assert_eq!(h.requests, Some((3, 2 - i, MINUTE)));
            grants.push(g);
        }
        let d = lim.check(&s, 0).expect_err("denied");
        assert_eq!(d.kind, Kind::Rpm);
        assert!(d.retry_after_ms > 59_000 && d.retry_after_ms <= MINUTE);
    }

    #[test]
    fn refusal_consumes_nothing_in_any_scope() {
        let lim = Local::default();
        let broad = scope(|l| {
            l.scope = "organisation";
            l.id = "org:o".into();
            l.rpm = 10;
        });
        let narrow = scope(|l| l.rpm = 1);
        let both = [broad.clone(), narrow];
        lim.check(&both, 0).expect("first");
        assert_eq!(lim.check(&both, 0).expect_err("key full").scope, "key");
        // The organisation counted one request only.
        let (_, h) = lim.check(&[broad], 0).expect("org has room");
        assert_eq!(h.requests, Some((10, 8, MINUTE)));
    }

    #[test]
    fn burst_and_concurrency() {
        let lim = Local::default();
        let s = [scope(|l| {
            l.burst = 2;
            l.burst_interval_ms = 60_000.0;
            l.rpm = 100;
        })];
        let _a = lim.check(&s, 0).expect("1");
        let _b = lim.check(&s, 0).expect("2");
        let d = lim.check(&s, 0).expect_err("3");
        assert_eq!(d.kind, Kind::Burst);
        assert!(d.retry_after_ms > 50_000, "{d:?}");

        let c = [scope(|l| {
            l.id = "key:c".into();
            l.concurrency = 1;
        })];
        let g = lim.check(&c, 0).expect("slot");
        assert_eq!(lim.check(&c, 0).expect_err("busy").kind, Kind::Concurrency);
        drop(g);
        let mut g = lim.check(&c, 0).expect("slot freed by drop");
        g.0.finish(0);
        let _g = lim.check(&c, 0).expect("slot freed by finish");
    }

    #[test]
    fn tpm_reserves_then_refunds_to_actual() {
        let lim = Local::default();
        let s = [scope(|l| l.tpm = 100)];
        let (mut g, h) = lim.check(&s, 80).expect("80 of 100");
        assert_eq!(h.tokens, Some((100, 20, MINUTE)));
        assert_eq!(lim.check(&s, 30).expect_err("110").kind, Kind::Tpm);
        g.finish(10);
        let (_, h) = lim.check(&s, 30).expect("10 + 30 after the refund");
        assert_eq!(h.tokens, Some((100, 60, MINUTE)));
        assert_eq!(
            lim.check(&s, 101).expect_err("never fits").retry_after_ms,
            MINUTE
        );
    }
}
