//! Client-facing models and their deployments.

use super::policy::Policy;
use super::provider::Provider;
use super::routing::{Deployment, FailoverOn, RouterConfig, Strategy};
use super::{ModelType, Pricing};
use std::collections::HashMap;
use std::sync::Arc;

/// A client-facing model.
#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub slug: String,
    pub kind: ModelType,
    pub provider: Arc<Provider>,
    pub pricing: Pricing,
    pub enabled: bool,
    /// Upstream URIs already built for this model, by route name (requests without a client
    /// query string reuse them instead of formatting and parsing a URI each time).
    pub uri_cache: std::sync::RwLock<HashMap<&'static str, http::Uri>>,
    /// Share of traffic and failover rank of this deployment.
    pub weight: u32,
    pub priority: u32,
    /// Every deployment of the model (its own first); `None` when the model has only its own.
    /// The live routing state is the snapshot's (one router per group, by `signature`). Each target is a `Model` of one deployment (no `deployments`).
    pub deployments: Option<Arc<Deployments>>,
    /// The model's policy (SPEC §7).
    pub policy: Option<Arc<Policy>>,
}

/// The deployments of a model (SPEC §5) and how one is chosen.
#[derive(Debug)]
pub struct Deployments {
    /// Indexed by the router's deployment id.
    pub targets: Vec<Arc<Model>>,
    /// The router's view of `targets` (id, weight, priority).
    pub deps: Vec<Deployment>,
    /// Names the group: equal signatures share one router across reloads. It changes whenever
    /// the deployments or the tuning change.
    pub signature: String,
    /// The breaker settings of the group's router.
    pub tuning: RouterConfig,
    pub strategy: Strategy,
    pub failover_on: Vec<FailoverOn>,
    /// Further attempts after the first; `None`: every other deployment once.
    pub max_retries: Option<u32>,
}

impl Model {
    /// A deployment of `self` on another provider/slug: same name, type, pricing and state.
    pub fn deployment(
        &self,
        provider: Arc<Provider>,
        slug: String,
        weight: u32,
        priority: u32,
    ) -> Model {
        Model {
            name: self.name.clone(),
            slug,
            kind: self.kind,
            provider,
            pricing: self.pricing,
            enabled: self.enabled,
            uri_cache: Default::default(),
            weight,
            priority,
            deployments: None,
            policy: self.policy.clone(),
        }
    }

    /// Gives `model` its deployment group: `extra` are further deployments. The router is
    /// shared with the previous configuration when the group is unchanged (its health survives
    /// reloads); `scope` distinguishes organisations.
    pub fn with_deployments(
        mut model: Model,
        scope: &str,
        extra: Vec<Model>,
        strategy: Strategy,
        failover_on: Vec<FailoverOn>,
        max_retries: Option<u32>,
        tuning: RouterConfig,
    ) -> Model {
        if extra.is_empty() {
            return model;
        }
        let own = model.deployment(
            model.provider.clone(),
            model.slug.clone(),
            model.weight,
            model.priority,
        );
        let mut targets = vec![Arc::new(own)];
        targets.extend(extra.into_iter().map(Arc::new));
        let mut sig = format!("model|{scope}|{}|{tuning:?}", model.name);
        let deps: Vec<Deployment> = targets
            .iter()
            .enumerate()
            .map(|(id, t)| {
                sig.push_str(&format!(
                    "|{}:{}:{}:{}",
                    t.provider.name, t.slug, t.weight, t.priority
                ));
                Deployment {
                    id,
                    weight: t.weight,
                    priority: t.priority,
                }
            })
            .collect();
        model.deployments = Some(Arc::new(Deployments {
            targets,
            deps,
            signature: sig,
            tuning,
            strategy,
            failover_on,
            max_retries,
        }));
        model
    }
}
