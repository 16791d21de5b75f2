//! Routing and failover decisions (SPEC §5): which deployment of a model serves a request, in
//! which order the others are tried, and which deployments are ejected by the circuit breaker.
//!
//! Everything here is pure decision logic: no I/O and no clock reads. Callers pass `now` in, so the
//! behaviour is deterministic under test. Hot paths (`plan`, `start`, `record_success` on a healthy
//! deployment) only touch atomics; the per-deployment circuit lock is taken only once a deployment
//! has failed.

pub use crate::types::credentials;
pub mod health;
pub use crate::types::redact;
pub use crate::types::routing_policy as policy;
pub mod registry;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

pub use crate::types::routing::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    Closed,
    /// Ejected: no traffic before `until`.
    Open {
        until: Instant,
    },
    /// The single probe is out; no other traffic before `lease_until`.
    HalfOpen {
        lease_until: Instant,
    },
}

#[derive(Debug)]
struct Circuit {
    failures: VecDeque<Instant>,
    state: Breaker,
}

/// Sentinel for "no TTFB measured yet" (a NaN bit pattern, never produced by `f64::to_bits` of a
/// real measurement).
const UNMEASURED: u64 = u64::MAX;

#[derive(Debug)]
struct Slot {
    dep: Deployment,
    in_flight: AtomicUsize,
    /// EWMA of TTFB in nanoseconds, as `f64` bits, or [`UNMEASURED`].
    ewma_ttfb: AtomicU64,
    /// Fast path: false while the breaker is `Closed`.
    tripped: AtomicBool,
    circuit: Mutex<Circuit>,
}

impl Slot {
    fn circuit(&self) -> MutexGuard<'_, Circuit> {
        // A panic while holding this lock cannot leave the circuit inconsistent.
        self.circuit.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ewma(&self) -> Option<f64> {
        match self.ewma_ttfb.load(Ordering::Relaxed) {
            UNMEASURED => None,
            bits => Some(f64::from_bits(bits)),
        }
    }
}

/// Decrements the deployment's in-flight count when dropped.
#[derive(Debug)]
#[must_use = "the in-flight count drops as soon as the guard is dropped"]
pub struct InFlightGuard {
    slot: Option<Arc<Slot>>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Live routing state for the deployments of one model (or one routing group).
#[derive(Debug)]
pub struct Router {
    /// In failover order: priority ascending, then weight descending, then id.
    slots: Vec<Arc<Slot>>,
    index: HashMap<usize, usize>,
    cfg: RouterConfig,
    rng: AtomicU64,
    rr: RwLock<HashMap<String, AtomicUsize>>,
}

enum Admit {
    Yes,
    /// Ejected until this instant.
    No(Instant),
}

impl Router {
    pub fn new(deployments: Vec<Deployment>, cfg: RouterConfig) -> Router {
        let mut deps: Vec<Deployment> = Vec::with_capacity(deployments.len());
        for d in deployments {
            if !deps.iter().any(|e| e.id == d.id) {
                deps.push(d);
            }
        }
        deps.sort_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then(b.weight.cmp(&a.weight))
                .then(a.id.cmp(&b.id))
        });
        let slots: Vec<Arc<Slot>> = deps
            .into_iter()
            .map(|dep| {
                Arc::new(Slot {
                    dep,
                    in_flight: AtomicUsize::new(0),
                    ewma_ttfb: AtomicU64::new(UNMEASURED),
                    tripped: AtomicBool::new(false),
                    circuit: Mutex::new(Circuit {
                        failures: VecDeque::new(),
                        state: Breaker::Closed,
                    }),
                })
            })
            .collect();
        let index = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.dep.id, i))
            .collect();
        let cfg = RouterConfig {
            ewma_alpha: if cfg.ewma_alpha > 0.0 && cfg.ewma_alpha <= 1.0 {
                cfg.ewma_alpha
            } else {
                RouterConfig::default().ewma_alpha
            },
            failure_threshold: cfg.failure_threshold.max(1),
            ..cfg
        };
        let seed = cfg.seed.unwrap_or_else(rand::random);
        Router {
            slots,
            index,
            cfg,
            rng: AtomicU64::new(seed),
            rr: RwLock::new(HashMap::new()),
        }
    }

    /// The deployments, in failover order.
    pub fn deployments(&self) -> Vec<Deployment> {
        self.slots.iter().map(|s| s.dep).collect()
    }

    /// Ordered candidates for one request. `strategy` picks the first; the rest follow in failover
    /// order (priority, then weight). Ejected deployments and the ids in `exclude` (already tried)
    /// are left out. If every non-excluded deployment is ejected, the one that recovers soonest is
    /// returned alone, so a request always has a candidate unless `exclude` covers them all.
    ///
    /// A deployment whose cooldown has passed is half-open: the plan that first lists it claims its
    /// single probe, and later plans leave it out until an outcome is recorded (or the probe
    /// times out, see [`RouterConfig::probe_timeout`]).
    pub fn plan(
        &self,
        strategy: Strategy,
        rr_key: &str,
        exclude: &[usize],
        now: Instant,
    ) -> Vec<usize> {
        let mut avail: Vec<&Slot> = Vec::with_capacity(self.slots.len());
        let mut soonest: Option<(Instant, usize)> = None;
        for slot in &self.slots {
            if exclude.contains(&slot.dep.id) {
                continue;
            }
            match self.admit(slot, now) {
                Admit::Yes => avail.push(slot),
                Admit::No(until) => {
                    if soonest.is_none_or(|(t, _)| until < t) {
                        soonest = Some((until, slot.dep.id));
                    }
                }
            }
        }
        if avail.is_empty() {
            return soonest.map(|(_, id)| vec![id]).unwrap_or_default();
        }
        let first = match strategy {
            Strategy::Failover => 0,
            Strategy::RoundRobin => self.rr_next(rr_key) % avail.len(),
            Strategy::Weighted => self.pick_weighted(&avail),
            Strategy::LeastLatency => pick_fastest(&avail),
            Strategy::LeastBusy => self.pick_least_busy(&avail),
        };
        let mut out = Vec::with_capacity(avail.len());
        out.push(avail[first].dep.id);
        out.extend(
            avail
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != first)
                .map(|(_, s)| s.dep.id),
        );
        out
    }

    /// Marks a request as in flight on `id` until the guard is dropped.
    pub fn start(&self, id: usize) -> InFlightGuard {
        let slot = self.slot(id).cloned();
        if let Some(s) = &slot {
            s.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        InFlightGuard { slot }
    }

    /// Records a successful attempt: feeds the TTFB EWMA and closes a half-open circuit.
    pub fn record_success(&self, id: usize, ttfb: Duration, _now: Instant) {
        let Some(slot) = self.slot(id) else { return };
        let sample = ttfb.as_nanos() as f64;
        let alpha = self.cfg.ewma_alpha;
        let _ = slot
            .ewma_ttfb
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let next = if bits == UNMEASURED {
                    sample
                } else {
                    alpha * sample + (1.0 - alpha) * f64::from_bits(bits)
                };
                Some(next.to_bits())
            });
        if slot.tripped.load(Ordering::Acquire) {
            let mut c = slot.circuit();
            if let Breaker::HalfOpen { .. } = c.state {
                c.state = Breaker::Closed;
                c.failures.clear();
                slot.tripped.store(false, Ordering::Release);
            }
        }
    }

    /// Records a failed attempt. `threshold` failures within `window` eject the deployment for
    /// `cooldown`; a failed half-open probe re-ejects it. A provider `Retry-After` ejects at once
    /// for that long (it replaces the cooldown).
    pub fn record_failure(&self, id: usize, retry_after: Option<Duration>, now: Instant) {
        let Some(slot) = self.slot(id) else { return };
        let mut c = slot.circuit();
        let cooldown = retry_after.unwrap_or(self.cfg.cooldown);
        match c.state {
            Breaker::Open { until } => {
                // A straggler that started before the ejection; only a Retry-After extends it.
                if retry_after.is_some() && now + cooldown > until {
                    c.state = Breaker::Open {
                        until: now + cooldown,
                    };
                }
            }
            Breaker::HalfOpen { .. } => {
                c.failures.clear();
                c.state = Breaker::Open {
                    until: now + cooldown,
                };
            }
            Breaker::Closed => {
                let window = self.cfg.failure_window;
                while c
                    .failures
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) >= window)
                {
                    c.failures.pop_front();
                }
                c.failures.push_back(now);
                if retry_after.is_some() || c.failures.len() >= self.cfg.failure_threshold as usize
                {
                    c.failures.clear();
                    c.state = Breaker::Open {
                        until: now + cooldown,
                    };
                    slot.tripped.store(true, Ordering::Release);
                }
            }
        }
    }

    /// Whether `id` gets no traffic at `now` (in cooldown, or its half-open probe is out).
    /// A deployment whose cooldown has passed but whose probe is not yet claimed is not ejected.
    pub fn is_ejected(&self, id: usize, now: Instant) -> bool {
        let Some(slot) = self.slot(id) else {
            return false;
        };
        if !slot.tripped.load(Ordering::Acquire) {
            return false;
        }
        match slot.circuit().state {
            Breaker::Closed => false,
            Breaker::Open { until } => now < until,
            Breaker::HalfOpen { lease_until } => now < lease_until,
        }
    }

    /// Requests currently in flight on `id`.
    pub fn in_flight(&self, id: usize) -> usize {
        self.slot(id)
            .map_or(0, |s| s.in_flight.load(Ordering::Relaxed))
    }

    /// The EWMA of time to first byte of `id`, once measured.
    pub fn ewma_ttfb(&self, id: usize) -> Option<Duration> {
        self.slot(id)
            .and_then(|s| s.ewma())
            .map(|n| Duration::from_nanos(n as u64))
    }

    fn slot(&self, id: usize) -> Option<&Arc<Slot>> {
        self.index.get(&id).and_then(|&i| self.slots.get(i))
    }

    /// Whether `slot` may take traffic now; claims the half-open probe when the cooldown is over.
    fn admit(&self, slot: &Slot, now: Instant) -> Admit {
        if !slot.tripped.load(Ordering::Acquire) {
            return Admit::Yes;
        }
        let mut c = slot.circuit();
        match c.state {
            Breaker::Closed => Admit::Yes,
            Breaker::Open { until } | Breaker::HalfOpen { lease_until: until } if now < until => {
                Admit::No(until)
            }
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => {
                c.state = Breaker::HalfOpen {
                    lease_until: now + self.cfg.probe_timeout,
                };
                Admit::Yes
            }
        }
    }

    fn rr_next(&self, key: &str) -> usize {
        {
            let map = self.rr.read().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = map.get(key) {
                return c.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut map = self.rr.write().unwrap_or_else(|p| p.into_inner());
        map.entry(key.to_string())
            .or_insert_with(|| AtomicUsize::new(0))
            .fetch_add(1, Ordering::Relaxed)
    }

    /// SplitMix64 over an atomic counter: lock-free, and reproducible with a fixed seed.
    fn next_u64(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias worth speaking of for small `n`.
    fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    fn pick_weighted(&self, avail: &[&Slot]) -> usize {
        let total: u64 = avail.iter().map(|s| u64::from(s.dep.weight)).sum();
        if total == 0 {
            return self.below(avail.len());
        }
        let mut r = ((u128::from(self.next_u64()) * u128::from(total)) >> 64) as u64;
        for (i, s) in avail.iter().enumerate() {
            let w = u64::from(s.dep.weight);
            if r < w {
                return i;
            }
            r -= w;
        }
        avail.len() - 1
    }

    fn pick_least_busy(&self, avail: &[&Slot]) -> usize {
        let n = avail.len();
        if n == 1 {
            return 0;
        }
        let a = self.below(n);
        let b = (a + 1 + self.below(n - 1)) % n;
        let load = |i: usize| avail[i].in_flight.load(Ordering::Relaxed);
        match load(a).cmp(&load(b)) {
            std::cmp::Ordering::Less => a,
            std::cmp::Ordering::Greater => b,
            std::cmp::Ordering::Equal => a.min(b),
        }
    }
}

/// Unmeasured deployments first (in failover order), else the lowest EWMA TTFB.
fn pick_fastest(avail: &[&Slot]) -> usize {
    let mut best: Option<(usize, f64)> = None;
    for (i, s) in avail.iter().enumerate() {
        match s.ewma() {
            None => return i,
            Some(e) => {
                if best.is_none_or(|(_, b)| e < b) {
                    best = Some((i, e));
                }
            }
        }
    }
    best.map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests;
