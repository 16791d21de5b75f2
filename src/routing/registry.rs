//! Live routers shared across configuration reloads.
//!
//! A [`Router`] carries health state (ejections, EWMA of time to first byte, in-flight counts).
//! A reload builds a new configuration, but a deployment that was ejected a second ago is still
//! ejected: routers are looked up here by a signature of their deployments and reused whenever
//! the new configuration has the same group.

use super::{Deployment, Router, RouterConfig};
use crate::types::Deployments;
use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Above this many entries, routers no one else holds are dropped.
const PRUNE_ABOVE: usize = 4096;

static ROUTERS: Lazy<Mutex<HashMap<String, Arc<Router>>>> = Lazy::new(Default::default);

/// The router of the group named by `signature`, created from `deployments` if there is none.
/// The signature must change whenever the deployments or the tuning change.
pub fn router(signature: &str, deployments: &[Deployment], cfg: RouterConfig) -> Arc<Router> {
    let mut map = match ROUTERS.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(r) = map.get(signature) {
        return r.clone();
    }
    if map.len() >= PRUNE_ABOVE {
        map.retain(|_, r| Arc::strong_count(r) > 1);
    }
    let r = Arc::new(Router::new(deployments.to_vec(), cfg));
    map.insert(signature.to_string(), r.clone());
    r
}

/// The routers of one snapshot's deployment groups, found by group without a lock or a string
/// hash. Built with the snapshot from the registry, so a group's health state survives reloads.
#[derive(Debug, Default)]
pub struct Routers {
    /// By the address of the group's `Deployments`: the snapshot's models hold those `Arc`s
    /// for as long as the snapshot lives, so an address names one group.
    by_group: HashMap<usize, Arc<Router>>,
}

fn group_key(d: &Arc<Deployments>) -> usize {
    Arc::as_ptr(d) as usize
}

impl Routers {
    /// The routers of `groups`.
    pub fn build<'a>(groups: impl Iterator<Item = &'a Arc<Deployments>>) -> Routers {
        let by_group = groups
            .map(|d| (group_key(d), router(&d.signature, &d.deps, d.tuning)))
            .collect();
        Routers { by_group }
    }

    /// The router of the group `d` (from the registry when `d` is not one of this snapshot's).
    pub fn of(&self, d: &Arc<Deployments>) -> Arc<Router> {
        match self.by_group.get(&group_key(d)) {
            Some(r) => r.clone(),
            None => router(&d.signature, &d.deps, d.tuning),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_signature_same_router() {
        let deps = [Deployment {
            id: 0,
            weight: 1,
            priority: 0,
        }];
        let a = router("test|same", &deps, RouterConfig::default());
        let b = router("test|same", &deps, RouterConfig::default());
        assert!(Arc::ptr_eq(&a, &b));
        let c = router("test|other", &deps, RouterConfig::default());
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
