//! The attempt plan of one request (SPEC §5): which deployments are tried, in which order, and
//! when a failure moves on to the next one.
//!
//! A plan is built once, after the model is resolved. Its targets are single-deployment models:
//! the requested model's own deployments, and the candidates of a routing policy (organisation or
//! key) when one applies. Health lives in a [`Router`] shared by every request of the same group,
//! so outcomes recorded here eject failing deployments for everyone.

use super::routes::{Family, Route};
use crate::config::{Model, VirtualKey};
use crate::control::Snapshot;
use crate::metrics;
use crate::routing::{
    registry, should_fail_over, Deployment, ErrorClass, FailoverOn, InFlightGuard, Router,
    RouterConfig, Strategy,
};
use crate::types::routing_policy::RoutingRule;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Hard cap on attempts per request, whatever a policy says.
pub const MAX_ATTEMPTS: usize = 9;

/// The attempt plan of one request.
pub struct Plan {
    /// In attempt order; `targets[pos]` is the current one.
    targets: Vec<Arc<Model>>,
    /// Router deployment ids, parallel to `targets` (empty without a router).
    ids: Vec<usize>,
    router: Option<Arc<Router>>,
    pos: usize,
    triggers: Vec<FailoverOn>,
    max_attempts: usize,
    pub retry_delay: Duration,
    guard: Option<InFlightGuard>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            targets: Vec::new(),
            ids: Vec::new(),
            router: None,
            pos: 0,
            triggers: Vec::new(),
            max_attempts: 1,
            retry_delay: Duration::ZERO,
            guard: None,
        }
    }
}

impl Plan {
    /// One target, no failover (the common case: no deployments, no policy).
    pub fn single(model: Arc<Model>) -> Plan {
        Plan {
            targets: vec![model],
            ..Plan::default()
        }
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn current(&self) -> Option<&Arc<Model>> {
        self.targets.get(self.pos)
    }

    /// Whether a failure of `class`, after `attempts` attempts in all, moves on to another target.
    pub fn fails_over(&self, class: ErrorClass, attempts: usize) -> bool {
        // `pos` counts failovers; `attempts` also counts same-target retries (a stale pooled
        // connection, another credential), which do not use up the policy's retries.
        self.pos + 1 < self.targets.len()
            && self.pos + 1 < self.max_attempts
            && attempts < MAX_ATTEMPTS
            && should_fail_over(&self.triggers, class)
    }

    /// Moves to the next target.
    pub fn advance(&mut self) -> Option<Arc<Model>> {
        if self.pos + 1 >= self.targets.len() {
            return None;
        }
        self.pos += 1;
        self.guard = None;
        self.targets.get(self.pos).cloned()
    }

    /// The current target's attempt begins (counted as in flight for `least_busy`).
    pub fn start(&mut self) {
        if let (Some(r), Some(id)) = (&self.router, self.ids.get(self.pos)) {
            self.guard = Some(r.start(*id));
        }
    }

    /// The current target answered (any status that is not a failover trigger).
    pub fn success(&self, ttfb: Duration) {
        if let (Some(r), Some(id)) = (&self.router, self.ids.get(self.pos)) {
            r.record_success(*id, ttfb, Instant::now());
        }
    }

    /// The current target failed; `retry_after` (from a 429/503) ejects it for that long.
    pub fn failure(&self, retry_after: Option<Duration>) {
        let (Some(r), Some(id)) = (&self.router, self.ids.get(self.pos)) else {
            return;
        };
        let now = Instant::now();
        let was = r.is_ejected(*id, now);
        r.record_failure(*id, retry_after, now);
        if !was && r.is_ejected(*id, now) {
            if let Some(t) = self.targets.get(self.pos) {
                metrics::EJECTIONS
                    .with_label_values(&[t.provider.name.as_str(), t.name.as_str()])
                    .inc();
                tracing::warn!(
                    provider = %t.provider.name,
                    model = %t.name,
                    slug = %t.slug,
                    "deployment ejected"
                );
            }
        }
    }
}

/// The family label of `nativeFallback`.
fn family_label(f: Family) -> Option<&'static str> {
    match f {
        Family::OpenAi => Some("openai"),
        Family::Anthropic => Some("anthropic"),
        Family::Gemini => Some("gemini"),
        Family::Vllm => Some("vllm"),
        Family::Unified => None,
    }
}

/// The deployments of one model: its group's targets, or itself.
fn targets_of(m: &Arc<Model>) -> Vec<Arc<Model>> {
    match &m.deployments {
        Some(d) => d.targets.clone(),
        None => vec![m.clone()],
    }
}

/// The targets whose provider fails its active health check (none are held out when all
/// fail: passive detection and the attempts' errors decide then).
fn held_out(targets: &[Arc<Model>]) -> Vec<usize> {
    if !crate::routing::health::any() {
        return Vec::new();
    }
    let down: Vec<usize> = targets
        .iter()
        .enumerate()
        .filter(|(_, t)| crate::routing::health::is_down(&t.provider))
        .map(|(i, _)| i)
        .collect();
    if down.len() == targets.len() {
        Vec::new()
    } else {
        down
    }
}

/// Builds the plan for a request for `model` (already resolved and checked) on `route`.
/// `resolve` checks a candidate exactly as the requested model was checked (grant, family,
/// type, provider state).
pub fn plan(
    snap: &Snapshot,
    key: &VirtualKey,
    route: Route,
    model: &Arc<Model>,
    resolve: impl Fn(&str) -> Option<Arc<Model>>,
) -> Plan {
    let cfg = &snap.config;
    let kind = model.kind.as_str();
    let rule = key
        .routing
        .as_deref()
        .and_then(|p| p.rule(kind))
        .or_else(|| {
            if cfg.org_routing.is_empty() {
                return None;
            }
            cfg.org_routing
                .get(&key.organisation_id)
                .and_then(|p| p.rule(kind))
        });
    if let Some(rule) = rule {
        if let Some(p) = policy_plan(cfg.routing, key, route, model, rule, resolve) {
            return p;
        }
    }
    let Some(d) = &model.deployments else {
        return Plan::single(model.clone());
    };
    let router = snap.routers.of(d);
    let order = router.plan(d.strategy, &key.id, &held_out(&d.targets), Instant::now());
    metrics::ROUTING_DECISIONS
        .with_label_values(&[strategy_name(d.strategy)])
        .inc();
    // Native routes stay within their family, whatever the deployments say.
    let family = route.family();
    let (ids, targets): (Vec<usize>, Vec<Arc<Model>>) = order
        .iter()
        .filter_map(|id| d.targets.get(*id).map(|t| (*id, t.clone())))
        .filter(|(_, t)| family == Family::Unified || family.admits(t.provider.kind))
        .unzip();
    if targets.is_empty() {
        return Plan::single(model.clone());
    }
    let n = targets.len();
    Plan {
        targets,
        ids,
        router: Some(router),
        triggers: d.failover_on.clone(),
        max_attempts: 1 + d.max_retries.map_or(n - 1, |r| r as usize),
        ..Plan::default()
    }
}

/// A routing policy's plan, when the requested model takes part in the rule.
fn policy_plan(
    tuning: RouterConfig,
    key: &VirtualKey,
    route: Route,
    model: &Arc<Model>,
    rule: &RoutingRule,
    resolve: impl Fn(&str) -> Option<Arc<Model>>,
) -> Option<Plan> {
    let family = route.family();
    // (model, candidate priority, candidate weight)
    let mut members: Vec<(Arc<Model>, u32, u32)> = Vec::new();
    if let Some(c) = rule.candidates.iter().find(|c| c.model == model.name) {
        members.push((model.clone(), c.priority, c.weight));
        for c in &rule.candidates {
            if c.model == model.name {
                continue;
            }
            if let Some(m) = resolve(&c.model).filter(|m| m.kind == model.kind) {
                members.push((m, c.priority, c.weight));
            }
        }
    } else {
        members.push((model.clone(), 0, 1));
    }
    if family != Family::Unified {
        let last = members.iter().map(|m| m.1).max().unwrap_or(0);
        let extra = family_label(family)
            .and_then(|l| rule.native_fallback.get(l))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for (i, name) in extra.iter().enumerate() {
            if members.iter().any(|m| &m.0.name == name) {
                continue;
            }
            if let Some(m) = resolve(name).filter(|m| m.kind == model.kind) {
                members.push((m, last + 1 + i as u32, 1));
            }
        }
    }
    if members.len() == 1 && model.deployments.is_none() {
        return None;
    }
    let mut targets = Vec::new();
    let mut deps = Vec::new();
    let mut sig = format!(
        "policy|{}|{}|{tuning:?}",
        key.id,
        family_label(family).unwrap_or("unified")
    );
    for (m, prio, weight) in &members {
        for t in targets_of(m) {
            let id = targets.len();
            let d = Deployment {
                id,
                weight: t.weight.saturating_mul(*weight),
                priority: prio.saturating_mul(1000).saturating_add(t.priority),
            };
            sig.push_str(&format!(
                "|{}@{}:{}:{}:{}",
                t.name, t.provider.name, t.slug, d.weight, d.priority
            ));
            deps.push(d);
            targets.push(t);
        }
    }
    let router = registry::router(&sig, &deps, tuning);
    let order = router.plan(rule.strategy, &key.id, &held_out(&targets), Instant::now());
    metrics::ROUTING_DECISIONS
        .with_label_values(&[strategy_name(rule.strategy)])
        .inc();
    let ordered: Vec<Arc<Model>> = order
        .iter()
        .filter_map(|id| targets.get(*id).cloned())
        .collect();
    if ordered.is_empty() {
        return None;
    }
    let n = ordered.len();
    Some(Plan {
        targets: ordered,
        ids: order,
        router: Some(router),
        triggers: rule.failover_on.clone(),
        max_attempts: 1 + rule.max_retries.map_or(n - 1, |r| r as usize),
        retry_delay: rule.retry_delay,
        ..Plan::default()
    })
}

pub fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Failover => "failover",
        Strategy::RoundRobin => "round_robin",
        Strategy::Weighted => "weighted",
        Strategy::LeastLatency => "least_latency",
        Strategy::LeastBusy => "least_busy",
    }
}

/// `Retry-After` in seconds (an HTTP date is not honoured), bounded to 10 minutes.
pub fn retry_after(h: &http::HeaderMap) -> Option<Duration> {
    let v = h.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(secs.min(600.0)))
}
